"""The NumPy backend: the plain formulas in float64, slow on purpose.

It is also the contract every backend implements.  All arrays are
C-contiguous; ``x4``, ``dy4``, ``out4`` and ``dx4`` are canonical
``(N, A, C, B)`` views of float32 or float64 data (float16 is widened by the
caller); per-group arrays are float64 of shape ``(N, C)``; statistics of a
group ``(n, c)`` run over its ``A*B`` values.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ._types import F64, Epi, Floats, Running

NAME = "numpy"


def stats(x4: Floats) -> tuple[F64, F64]:
    """Per-group mean and sum of squared deviations ``M2``, both ``(N, C)`` float64."""
    x = x4.astype(np.float64)
    mean = x.mean(axis=(1, 3))
    dev = x - mean[:, None, :, None]
    return mean, np.einsum("nacb,nacb->nc", dev, dev)


def apply(x4: Floats, mean: F64, scale: F64, shift: F64, out4: Floats) -> None:
    """``out = (x - mean) * scale + shift`` with ``(N, C)`` coefficients."""
    x = x4.astype(np.float64)
    y = (x - mean[:, None, :, None]) * scale[:, None, :, None] + shift[:, None, :, None]
    out4[...] = y


def backward_reduce(x4: Floats, dy4: Floats, mean: F64) -> tuple[F64, F64]:
    """Per-group ``sum(dy)`` and ``sum(dy * (x - mean))``, both ``(N, C)`` float64."""
    dy = dy4.astype(np.float64)
    dev = x4.astype(np.float64) - mean[:, None, :, None]
    return dy.sum(axis=(1, 3)), np.einsum("nacb,nacb->nc", dy, dev)


def backward_apply(x4: Floats, dy4: Floats, mean: F64, rstd: F64, k1: F64, k2: F64, k3: F64,
                   dx4: Floats) -> None:
    """``dx = k1 * dy + k2 * (x - mean) * rstd + k3`` with ``(N, C)`` coefficients."""
    g: Callable[[F64], F64] = lambda a: a[:, None, :, None]
    xhat = (x4.astype(np.float64) - g(mean)) * g(rstd)
    dx4[...] = g(k1) * dy4.astype(np.float64) + g(k2) * xhat + g(k3)


def channels_small(x4: Floats, mean: F64 | None, var: F64 | None, weight: F64 | None,
                   bias: F64 | None, eps: float, out4: Floats,
                   running: Running | None = None) -> tuple[F64, F64, F64]:
    """Statistics and normalization of a small ``x4`` in one call; returns ``(mean, var, rstd)``
    ``(N, C)``.

    The batch statistics of ``x4`` when ``mean`` and ``var`` are None, else
    those given (``(N, C)``); ``y = (x - mean) / sqrt(var + eps) * weight + bias``
    with ``weight``/``bias`` ``(C,)`` float64 or None.  ``running``: ``(running_mean,
    running_var, factor, bessel)``, ``(C,)`` buffers that a training call with ``N == 1``
    updates in place, ``running = (1 - factor) * running + factor * batch`` (the variance's
    batch value times ``bessel``).  Optional for a backend: the core uses it, where a
    backend has it, for inputs too small to split.
    """
    if mean is None:
        m, m2 = stats(x4)
        mean, var = m, m2 / (x4.shape[1] * x4.shape[3])
    assert var is not None, "var is given with mean"
    rstd = 1.0 / np.sqrt(var + eps)
    scale = rstd if weight is None else rstd * weight
    shift = np.zeros_like(scale) if bias is None else np.broadcast_to(bias, scale.shape)
    apply(x4, mean, scale, np.ascontiguousarray(shift), out4)
    if running is not None:
        run_mean, run_var, factor, bessel = running
        run_mean[...] = (1.0 - factor) * run_mean + factor * mean[0]
        run_var[...] = (1.0 - factor) * run_var + factor * (var[0] * bessel)
    return mean, var, rstd


# -- rows: LayerNorm / RMSNorm, statistics per row, affine along the row ----------------


def rows_forward(x2: Floats, weight: Floats | None, bias: Floats | None, eps: float, center: bool,
                 out2: Floats) -> tuple[F64, F64]:
    """Normalize each row of ``x2`` ``(R, M)`` into ``out2``; return ``(mean, rstd)`` ``(R,)``.

    ``y = (x - mean) * rstd * weight + bias`` with ``weight``/``bias`` ``(M,)``
    of any float dtype, or None; ``center=False`` (RMSNorm) uses ``mean = 0`` and the
    mean of squares for the variance.
    """
    x = x2.astype(np.float64)
    if center:
        mean = x.mean(axis=1)
        dev = x - mean[:, None]
    else:
        mean = np.zeros(x.shape[0])
        dev = x
    var = np.mean(dev * dev, axis=1)
    rstd = 1.0 / np.sqrt(var + eps)
    y = dev * rstd[:, None]
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    out2[...] = y
    return mean, rstd


def rows_apply(x2: Floats, mean: F64, rstd: F64, weight: Floats | None, bias: Floats | None,
               out2: Floats) -> None:
    """Normalize each row of ``x2`` ``(R, M)`` with given float64 ``(R,)`` ``mean`` (zeros for
    RMSNorm) and ``rstd``: ``y = (x - mean) * rstd * weight + bias``."""
    y = (x2.astype(np.float64) - mean[:, None]) * rstd[:, None]
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    out2[...] = y


def rows_backward(x2: Floats, dy2: Floats, mean: F64, rstd: F64, weight: Floats | None, center: bool,
                  dx2: Floats, count: F64 | None = None) -> tuple[F64, F64]:
    """Write ``dx`` of :func:`rows_forward` into ``dx2``; return ``(sum(dy*xhat), sum(dy))`` over rows.

    ``count``: float64 ``(R,)``, the values each row's statistics were taken over (a masked
    forward's, whose ``dy`` is zero at the values left out), instead of ``M``."""
    x = x2.astype(np.float64)
    dy = dy2.astype(np.float64)
    xhat = (x - mean[:, None]) * rstd[:, None]
    g = dy if weight is None else dy * weight
    n = np.full((x.shape[0], 1), x.shape[1], np.float64) if count is None else \
        np.maximum(np.asarray(count, np.float64), 1.0)[:, None]
    mean_g_xhat = np.sum(g * xhat, axis=1, keepdims=True) / n
    inner = g - xhat * mean_g_xhat
    if center:
        inner = inner - np.sum(g, axis=1, keepdims=True) / n
    dx2[...] = rstd[:, None] * inner
    return np.sum(dy * xhat, axis=0), np.sum(dy, axis=0)


# -- grouped rows: channels-first InstanceNorm / GroupNorm with batch statistics ------


def grouped_forward(x2: Floats, groups: int, channel_len: int, weight: F64 | None, bias: F64 | None,
                    eps: float, out2: Floats) -> tuple[F64, F64]:
    """Normalize rows of ``x2`` ``(N*G, K*S)``: row ``r`` is group ``r % G`` of a sample.

    A row holds the ``K`` channels ``(r % G) * K + k`` of its group, ``S =
    channel_len`` contiguous values each; ``weight``/``bias`` are float64
    ``(G*K,)`` per-channel or None.  Returns ``(mean, var)`` ``(N*G,)``.
    """
    R, L = x2.shape
    x = x2.astype(np.float64).reshape(R // groups, groups, L // channel_len, channel_len)
    mean = x.mean(axis=(2, 3))
    dev = x - mean[..., None, None]
    var = np.mean(dev * dev, axis=(2, 3))
    y = dev / np.sqrt(var + eps)[..., None, None]
    shape = (groups, L // channel_len, 1)
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    out2[...] = y.reshape(R, L)
    return mean.reshape(R), var.reshape(R)


def grouped_backward(x2: Floats, dy2: Floats, mean: F64, rstd: F64, groups: int, channel_len: int,
                     weight: F64 | None, dx2: Floats) -> tuple[F64, F64]:
    """``dx`` of :func:`grouped_forward` into ``dx2``; returns per-channel ``(sum(dy*xhat), sum(dy))``."""
    R, L = x2.shape
    shape = (R // groups, groups, L // channel_len, channel_len)
    x = x2.astype(np.float64).reshape(shape)
    dy = dy2.astype(np.float64).reshape(shape)
    xhat = (x - mean.reshape(shape[:2])[..., None, None]) * rstd.reshape(shape[:2])[..., None, None]
    w = np.ones((groups, shape[2], 1)) if weight is None else weight.reshape(groups, shape[2], 1)
    g = dy * w
    inner = g - g.mean(axis=(2, 3), keepdims=True) - xhat * (g * xhat).mean(axis=(2, 3), keepdims=True)
    dx2[...] = (rstd.reshape(shape[:2])[..., None, None] * inner).reshape(R, L)
    return (dy * xhat).sum(axis=(0, 3)).reshape(-1), dy.sum(axis=(0, 3)).reshape(-1)


# -- samples: channels-last InstanceNorm / GroupNorm with batch statistics ------------


def samples_forward(x3: Floats, groups: int, weight: F64 | None, bias: F64 | None, eps: float,
                    out3: Floats) -> tuple[F64, F64]:
    """Normalize channels-last ``x3`` ``(N, S, C)`` per sample and group of ``C/G`` channels.

    ``weight``/``bias`` float64 ``(C,)`` or None.  Returns ``(mean, var)`` ``(N, G)``.
    """
    N, S, C = x3.shape
    x = x3.astype(np.float64).reshape(N, S, groups, C // groups)
    mean = x.mean(axis=(1, 3))
    dev = x - mean[:, None, :, None]
    var = np.mean(dev * dev, axis=(1, 3))
    y = (dev / np.sqrt(var + eps)[:, None, :, None]).reshape(N, S, C)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    out3[...] = y
    return mean, var


def _erfc(v: F64) -> F64:
    erfc: F64 = np.vectorize(math.erfc, otypes=[np.float64])(v)
    return erfc


def _sigmoid(t: F64) -> F64:
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-t))


def activation(v: F64, act: int, slope: float) -> F64:
    """The activation of code ``act`` (:data:`fastnorm._core.ACTIVATIONS`) of float64 ``v``."""
    if act == 1:
        return np.where(v < 0, 0.0, v)
    if act == 2:
        return np.where(v < 0, v * slope, v)
    if act == 3:
        return 0.5 * v * _erfc(-v * _SQRT1_2)
    if act == 4:
        return v * _sigmoid(2.0 * _SQRT2_PI * (v + 0.044715 * v**3))
    if act == 5:
        return v * _sigmoid(v)
    return v


def activation_derivative(v: F64, act: int, slope: float) -> F64:
    """The derivative of :func:`activation` at float64 ``v`` (at 0: 0 for ReLU, ``slope``
    for leaky ReLU, as PyTorch)."""
    if act == 1:
        return np.where(v > 0, 1.0, 0.0)
    if act == 2:
        return np.where(v > 0, 1.0, slope)
    if act == 3:
        return 0.5 * _erfc(-v * _SQRT1_2) + v * np.exp(-0.5 * v * v) / math.sqrt(2.0 * math.pi)
    if act == 4:
        s = _sigmoid(2.0 * _SQRT2_PI * (v + 0.044715 * v**3))
        return s + v * s * (1.0 - s) * 2.0 * _SQRT2_PI * (1.0 + 3.0 * 0.044715 * v * v)
    if act == 5:
        s = _sigmoid(v)
        return s * (1.0 + v * (1.0 - s))
    return np.ones_like(v)


_SQRT1_2 = math.sqrt(0.5)
_SQRT2_PI = math.sqrt(2.0 / math.pi)


def epilogue(out: Floats, epi: Epi) -> None:
    """The epilogue ``epi = (act, slope, res, dy)`` on ``out`` (normalized values ``z``), in
    place: ``act(z + res)``, or with ``dy``, ``dy * act'(z + res)``; the add in the data type,
    the rest in float64, rounded once."""
    act, slope, res, dy = epi
    v = out if res is None else out + res.reshape(out.shape)
    if act in (1, 2):  # in the data type, as the compiled backends
        neg = v.dtype.type(slope if act == 2 else 0.0)
        if dy is None:
            out[...] = np.where(v < 0, v * neg, v)
        else:
            g = dy.reshape(out.shape)
            out[...] = np.where(v > 0, g, g * neg)
        return
    v = v.astype(np.float64)
    if dy is None:
        out[...] = activation(v, act, slope)
    else:
        out[...] = dy.reshape(out.shape) * activation_derivative(v, act, slope)
