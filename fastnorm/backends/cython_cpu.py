"""Thin wrapper over the compiled module :mod:`fastnorm.backends._kernels`.

In this release the compiled module holds the statistics kernels only, so
``cython`` is not yet a selectable backend; :func:`stats` follows the backend
contract of :mod:`fastnorm.backends.numpy_ref` and is tested against it.
"""

from __future__ import annotations

import numpy as np

from . import get_num_threads
from ._plan import split, threads_for

try:
    from . import _kernels  # type: ignore[attr-defined]
except ImportError as exc:  # a source tree that was never built, or a pure-Python install
    _kernels = None
    IMPORT_ERROR: str | None = str(exc)
else:
    IMPORT_ERROR = None

NAME = "cython"


def is_built() -> bool:
    """Whether the compiled extension imports."""
    return _kernels is not None


def has_openmp() -> bool:
    """Whether the compiled extension was built with OpenMP."""
    return bool(_kernels is not None and _kernels.OPENMP)


def stats(x4: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-group mean and M2 of a non-empty C-contiguous float32/float64 ``(N, A, C, B)`` array."""
    if _kernels is None:
        raise RuntimeError(f"the compiled extension is not available: {IMPORT_ERROR}")
    N, A, C, B = x4.shape
    threads = threads_for(x4.size, get_num_threads())
    if B == 1:
        return _kernels.stats_lanes(x4.reshape(N, A, C), split(N, A * C, threads), threads)
    return _kernels.stats_runs(x4, split(N * C, A * B, threads), threads)
