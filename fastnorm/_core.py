"""The statistics core shared by every normalization.

Three steps on a canonical ``(N, A, C, B)`` view (see :mod:`fastnorm._views`):
``moments`` (mean and biased variance per group ``(n, c)``), ``normalize``
(``y = (x - mean) * rstd * w + b``) and ``backward`` (one reduction pass, one
elementwise pass).  The backend kernels do the per-element work; this module
only does O(N*C) arithmetic on float64 statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import numpy as np

from . import _validate


@dataclass(frozen=True)
class Saved:
    """What a backward pass needs from its forward.

    ``x4`` is the C-contiguous input in compute dtype, shaped ``(N, A, C, B)``;
    ``mean`` and ``rstd`` are ``(N, C)`` float64; ``weight`` is ``(C,)`` float64
    or None; ``batch_stats`` says whether the statistics came from ``x`` itself
    (then the gradient flows through them).
    """

    x4: np.ndarray
    mean: np.ndarray
    rstd: np.ndarray
    weight: np.ndarray | None
    batch_stats: bool
    shape: tuple[int, ...]
    dtype: np.dtype


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype kernels run in: float16 widens to float32."""
    dtype = _validate.native(dtype)
    return np.dtype(np.float32) if dtype == np.float16 else dtype


def as_compute(x: np.ndarray) -> np.ndarray:
    """C-contiguous, native-order array in compute dtype (no copy when already so)."""
    return np.ascontiguousarray(x, dtype=compute_dtype(x.dtype))


def moments(backend: ModuleType, x4: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and biased variance per group ``(n, c)``, both ``(N, C)`` float64."""
    count = x4.shape[1] * x4.shape[3]
    mean, m2 = backend.stats(x4)
    return mean, m2 / count


def rstd_of(var: np.ndarray, eps: float) -> np.ndarray:
    return 1.0 / np.sqrt(var + eps)


def normalize(
    backend: ModuleType,
    x4: np.ndarray,
    mean: np.ndarray,
    rstd: np.ndarray,
    weight: np.ndarray | None,
    bias: np.ndarray | None,
    out4: np.ndarray,
) -> None:
    """``out4 = (x4 - mean) * rstd * weight + bias`` with per-channel affine."""
    N, C = mean.shape
    scale = rstd if weight is None else rstd * weight
    shift = np.zeros((N, C)) if bias is None else np.broadcast_to(bias, (N, C))
    backend.apply(x4, mean, np.ascontiguousarray(scale), np.ascontiguousarray(shift), out4)


def backward(
    backend: ModuleType, saved: Saved, dy4: np.ndarray, dx4: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Write ``dx`` into ``dx4``; return ``(grad_weight, grad_bias)`` as ``(C,)`` float64.

    With ``xhat = (x - mean) * rstd`` and ``g = dy * w``:
    ``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))`` when the statistics
    came from the batch, ``dx = rstd * g`` otherwise; ``grad_bias = sum(dy)``,
    ``grad_weight = sum(dy * xhat)``, sums over everything but the channel.
    """
    x4, mean, rstd = saved.x4, saved.mean, saved.rstd
    count = x4.shape[1] * x4.shape[3]
    sum_dy, sum_dy_xmu = backend.backward_reduce(x4, dy4, mean)
    grad_bias = sum_dy.sum(axis=0)
    grad_weight = (sum_dy_xmu * rstd).sum(axis=0)
    k1 = rstd if saved.weight is None else rstd * saved.weight
    # dx = k1 * dy + k2 * xhat + k3; every coefficient is O(rstd * w), so none
    # underflows where rstd is tiny (data of magnitude 1e30 in float32)
    if saved.batch_stats:
        k3 = -k1 * (sum_dy / count)
        k2 = -k1 * (sum_dy_xmu * rstd / count)
    else:
        k2 = np.zeros_like(k1)
        k3 = np.zeros_like(k1)
    backend.backward_apply(x4, dy4, mean, rstd, np.ascontiguousarray(k1), k2, k3, dx4)
    return grad_weight, grad_bias
