"""Per-group coefficients in the data type, as the elementwise kernels of the CPU backends take them.

The float64 mean is never rounded to the data type before it is subtracted:
the contiguous-run kernels take it as a pair ``hi + lo`` and compute
``(x - hi) - lo``; the channels-last kernels, compute-bound, fold ``lo`` into
the additive coefficient instead (in float64), which saves a load and a
subtraction per value.
"""

from __future__ import annotations

import numpy as np


def _as(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=dtype)


def hi_lo(mean: np.ndarray, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Split a float64 mean into ``hi + lo`` of ``dtype`` (``lo = 0`` for float64)."""
    hi = _as(mean, dtype)
    return hi, _as(mean - hi, dtype)


def apply_folded(mean, scale, shift, dtype):
    """``(hi, scale, shift')`` with ``(x - hi) * scale + shift' = (x - mean) * scale + shift``."""
    hi = _as(mean, dtype)
    return hi, _as(scale, dtype), _as(shift - (mean - hi) * scale, dtype)


def backward_folded(mean, rstd, k1, k2, k3, dtype):
    """``(hi, rstd, k1, k2, k3')`` with ``lo`` folded into ``k3``: ``k3' = k3 - k2 * lo * rstd``."""
    hi = _as(mean, dtype)
    k3 = k3 - k2 * ((mean - hi) * rstd)
    return hi, _as(rstd, dtype), _as(k1, dtype), _as(k2, dtype), _as(k3, dtype)
