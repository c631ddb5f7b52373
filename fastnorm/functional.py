"""Functional normalization ops: validate, take the canonical view, dispatch.

Each op checks every argument first, then computes, then writes running
statistics last, so a call that fails changes nothing.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from . import _core, _validate, _views
from .backends import backend_module

__all__ = ["batch_norm"]

ONE_VALUE_MESSAGE = "Expected more than 1 value per channel when training, got input size {}"


def _result_buffer(xc: np.ndarray, out: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Where kernels write, and the user's ``out`` to copy into afterwards (or None).

    Kernels write straight into ``out`` when it is C-contiguous in compute
    dtype and either does not overlap the input or is exactly the input
    (elementwise in place is safe); otherwise into a fresh buffer.
    """
    if out is None:
        return np.empty(xc.shape, dtype=xc.dtype), None
    direct = out.flags.c_contiguous and out.dtype == xc.dtype
    if direct and np.may_share_memory(out, xc):
        same = (
            out.__array_interface__["data"][0] == xc.__array_interface__["data"][0]
            and out.strides == xc.strides
        )
        direct = same
    if direct:
        return out, None
    return np.empty(xc.shape, dtype=xc.dtype), out


def _finish(result: np.ndarray, out: np.ndarray | None, dtype: np.dtype) -> np.ndarray:
    if out is not None:
        if result is not out:
            np.copyto(out, result, casting="unsafe")
        return out
    if result.dtype != dtype:
        return result.astype(dtype)
    return result


def _batch_norm(
    x: ArrayLike,
    running_mean: ArrayLike | None,
    running_var: ArrayLike | None,
    weight: ArrayLike | None,
    bias: ArrayLike | None,
    training: bool,
    momentum: float | None,
    eps: float,
    axis: int,
    out: np.ndarray | None,
    save: bool,
) -> tuple[np.ndarray, _core.Saved | None]:
    x = _validate.float_array(x, "x")
    _validate.min_ndim(x, "x", 2)
    axis = _validate.channel_axis(axis, x.ndim)
    channels = x.shape[axis]
    training = bool(training)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together (or both None)")
    has_running = running_mean is not None
    if not training and not has_running:
        raise ValueError(
            "running_mean and running_var are required when training=False "
            "(pass training=True to normalize with batch statistics)"
        )
    run_mean = run_var = np.empty(0)
    if has_running:
        run_mean = _validate.running_buffer(running_mean, "running_mean", channels, updated=training)
        run_var = _validate.running_buffer(running_var, "running_var", channels, updated=training)
        if training and np.may_share_memory(run_mean, run_var):
            raise ValueError("running_mean and running_var must not share memory")
    weight = _validate.param_vector(weight, "weight", channels)
    bias = _validate.param_vector(bias, "bias", channels)
    eps = _validate.real_scalar(eps, "eps", minimum=0.0)
    factor = 0.0
    if training and has_running:
        if momentum is None:
            raise TypeError(
                "momentum must be a real number; momentum=None (cumulative average) "
                "is a feature of the BatchNorm layers, which count the batches"
            )
        factor = _validate.real_scalar(momentum, "momentum")
    count = x.size // channels if channels else 0
    if training and count <= 1:
        raise ValueError(ONE_VALUE_MESSAGE.format(x.shape))
    dtype = _validate.native(x.dtype)
    if out is not None:
        out = _validate.out_array(out, x.shape, dtype)

    backend = backend_module()
    xc = _core.as_compute(x)
    result, copy_to = _result_buffer(xc, out)
    x4 = _views.batch_norm_view(xc, axis)
    if training:
        if x.size:
            mean, var = _core.moments(backend, x4)
        else:
            mean = var = np.zeros((1, channels))
    else:
        mean = run_mean.astype(np.float64).reshape(1, channels)
        var = run_var.astype(np.float64).reshape(1, channels)
    rstd = _core.rstd_of(var, eps)
    w64 = None if weight is None else weight.astype(np.float64)
    b64 = None if bias is None else bias.astype(np.float64)
    if x.size:
        _core.normalize(backend, x4, mean, rstd, w64, b64, _views.batch_norm_view(result, axis))
    y = _finish(result, copy_to, dtype)

    if training and has_running:
        unbiased = var[0] * (count / (count - 1))
        new_mean = (1.0 - factor) * run_mean + factor * mean[0]
        new_var = (1.0 - factor) * run_var + factor * unbiased
        run_mean[...] = new_mean
        run_var[...] = new_var
    saved = None
    if save:
        saved = _core.Saved(x4, mean, rstd, w64, training, x.shape, dtype)
    return y, saved


def batch_norm(
    x: ArrayLike,
    running_mean: ArrayLike | None = None,
    running_var: ArrayLike | None = None,
    weight: ArrayLike | None = None,
    bias: ArrayLike | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    axis: int = 1,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Batch normalization, as ``torch.nn.functional.batch_norm``.

    Normalizes each channel over every other axis:
    ``y = (x - mean) / sqrt(var + eps) * weight + bias``.

    Parameters
    ----------
    x : array_like, shape ``(N, C, *)`` for ``axis=1`` or ``(N, *, C)`` for ``axis=-1``
        float16, float32 or float64; at least 2-D.
    running_mean, running_var : ndarray, shape ``(C,)``, optional
        Used to normalize when ``training=False`` (then required).  When
        ``training=True`` they are updated in place with the batch mean and
        the *unbiased* batch variance:
        ``running = (1 - momentum) * running + momentum * batch_stat``.
    weight, bias : array_like, shape ``(C,)``, optional
        Per-channel scale and shift.
    training : bool
        Normalize with the statistics of ``x`` (and update the running ones).
    momentum : float
        Weight of the batch statistic in the running update.
    eps : float
        Added to the variance before the square root.
    axis : int
        The channel axis: ``1`` (channels-first), ``-1`` (channels-last) or any
        other axis of ``x``.
    out : ndarray, optional
        C-contiguous or not, of ``x``'s shape and dtype; may be ``x`` itself.

    Returns
    -------
    ndarray
        Same shape and dtype as ``x`` (``out`` when given).

    Statistics are exact to float64 accuracy (blocked Welford/Chan); float16
    is computed in float32 and rounded once.
    """
    y, _ = _batch_norm(
        x, running_mean, running_var, weight, bias, training, momentum, eps, axis, out, save=False
    )
    return y


def _normalization_backward(saved: _core.Saved, dy: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of a saved forward: ``(dx, grad_weight, grad_bias)``.

    ``dx`` has the forward input's shape and dtype; the weight/bias gradients
    are float64 of shape ``(C,)`` (computed even when there is no weight).
    """
    dy = _validate.float_array(dy, "dy")
    _validate.same_shape(dy, saved.shape)
    x4 = saved.x4
    dyc = np.ascontiguousarray(dy, dtype=x4.dtype).reshape(x4.shape)
    dx = np.empty(x4.shape, dtype=x4.dtype)
    if math.prod(x4.shape):
        grad_weight, grad_bias = _core.backward(backend_module(), saved, dyc, dx)
    else:
        grad_weight = grad_bias = np.zeros(x4.shape[2])
    dx = dx.reshape(saved.shape)
    if dx.dtype != saved.dtype:
        dx = dx.astype(saved.dtype)
    return dx, grad_weight, grad_bias
