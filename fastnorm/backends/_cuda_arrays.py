"""Recognizing CUDA device arrays without importing Numba.

A device array is anything with ``__cuda_array_interface__`` (Numba device
arrays, CuPy, PyTorch CUDA tensors, ...) or a Numba (simulator) device array
(``__cuda_ndarray__``).  They are accepted only while the ``cuda`` backend is
selected; under a CPU backend they are a ``TypeError`` naming the argument
(fastnorm never copies device data to the host behind the user's back).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def is_device_array(obj: object) -> bool:
    """Whether ``obj`` lives on a CUDA device (cheap: no import, False for ndarrays)."""
    if isinstance(obj, np.ndarray):
        return False
    if getattr(type(obj), "__cuda_ndarray__", False):
        return True
    try:
        return hasattr(obj, "__cuda_array_interface__")
    except Exception:  # noqa: BLE001 - e.g. a PyTorch CUDA tensor that requires grad refuses
        return True


def device_argument(obj: object, name: str) -> Any:
    """``obj`` as a Numba device array, or ``TypeError`` when the current backend is not ``cuda``."""
    from . import get_backend

    backend = get_backend()
    if backend != "cuda":
        raise TypeError(
            f"{name} is a CUDA device array ({type(obj).__name__}), but the current backend "
            f"{backend!r} runs on the CPU: select the 'cuda' backend "
            f"(fastnorm.set_backend('cuda') or fastnorm.use_backend('cuda')), "
            f"or copy {name} to the host"
        )
    from . import cuda_gpu

    return cuda_gpu.as_numba(obj)
