"""Per-group coefficients in the data type, as the elementwise kernels of the CPU backends take them.

The float64 mean is never rounded to the data type before it is subtracted:
the contiguous-run kernels take it as a pair ``hi + lo`` and compute
``(x - hi) - lo``; the channels-last kernels, compute-bound, fold ``lo`` into
the additive coefficient instead (in float64), which saves a load and a
subtraction per value.
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from ._types import F64

_S = TypeVar("_S", bound=np.floating[Any])  # float32 or float64


def _as(a: NDArray[Any], dtype: np.dtype[_S]) -> NDArray[_S]:
    return np.ascontiguousarray(a, dtype=dtype)


def hi_lo(mean: F64, dtype: np.dtype[_S]) -> tuple[NDArray[_S], NDArray[_S]]:
    """Split a float64 mean into ``hi + lo`` of ``dtype`` (``lo = 0`` for float64)."""
    hi = _as(mean, dtype)
    return hi, _as(mean - hi, dtype)


def apply_folded(mean: F64, scale: F64, shift: F64,
                 dtype: np.dtype[_S]) -> tuple[NDArray[_S], NDArray[_S], NDArray[_S]]:
    """``(hi, scale, shift')`` with ``(x - hi) * scale + shift' = (x - mean) * scale + shift``."""
    hi = _as(mean, dtype)
    return hi, _as(scale, dtype), _as(shift - (mean - hi) * scale, dtype)


def backward_folded(
    mean: F64, rstd: F64, k1: F64, k2: F64, k3: F64, dtype: np.dtype[_S]
) -> tuple[NDArray[_S], NDArray[_S], NDArray[_S], NDArray[_S], NDArray[_S]]:
    """``(hi, rstd, k1, k2, k3')`` with ``lo`` folded into ``k3``: ``k3' = k3 - k2 * lo * rstd``."""
    hi = _as(mean, dtype)
    k3 = k3 - k2 * ((mean - hi) * rstd)
    return hi, _as(rstd, dtype), _as(k1, dtype), _as(k2, dtype), _as(k3, dtype)
