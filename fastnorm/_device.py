"""Recognizing CUDA device arrays without importing anything CUDA.

A device array is anything with ``__cuda_array_interface__`` (Numba device
arrays, CuPy, PyTorch CUDA tensors, ...) or a Numba (simulator) device array
(``__cuda_ndarray__``).  They are accepted only while the ``cuda`` backend is
selected; under a CPU backend they are a ``TypeError`` naming the argument
(fastnorm never copies device data to the host behind the user's back).  This
module imports nothing of fastnorm's, so every layer can ask it (validation,
layers, the CUDA backend) without an import cycle.
"""

from __future__ import annotations

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
