"""The naive NumPy layers (the peer ``numpy``) and the float64 references.

:class:`NaiveNumpyBatchNorm` and :class:`NaiveNumpyNorm` are the textbook formulas and their
analytic backward, as one writes them in plain NumPy; :func:`reference_result` computes a case's
result in float64, and :func:`max_abs_diff` measures a result against it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .cases import EPS, MOMENTUM, Case, Problem, channel_view, reduce_axes, stat_view


class NaiveNumpyBatchNorm:
    """BatchNorm as one writes it in plain NumPy: the textbook formula, in the data's dtype.

    ``forward`` computes ``(x - m) / np.sqrt(v + eps) * w + b`` with ``m = x.mean(axes)`` and
    ``v = x.var(axes)`` (training) or the running statistics (eval), and keeps ``xhat`` for the
    analytic ``backward``.
    """

    def __init__(self, problem: Problem, momentum: float = MOMENTUM, eps: float = EPS) -> None:
        self.axis = problem.axis
        self.momentum = momentum
        self.eps = eps
        self.weight = problem.weight.copy()
        self.bias = problem.bias.copy()
        self.running_mean = problem.running_mean.copy()
        self.running_var = problem.running_var.copy()
        self.grad_weight: np.ndarray | None = None
        self.grad_bias: np.ndarray | None = None
        self._saved: tuple[np.ndarray, np.ndarray, bool] | None = None

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        axes = reduce_axes(x.ndim, self.axis)
        if training:
            m = x.mean(axes, keepdims=True)
            v = x.var(axes, keepdims=True)
            self._update_running_stats(m.ravel(), v.ravel(), x.size // x.shape[self.axis])
        else:
            m = channel_view(self.running_mean, x.ndim, self.axis)
            v = channel_view(self.running_var, x.ndim, self.axis)
        std = np.sqrt(v + self.eps)
        xhat = (x - m) / std
        self._saved = (xhat, std, training)
        w = channel_view(self.weight, x.ndim, self.axis)
        b = channel_view(self.bias, x.ndim, self.axis)
        return xhat * w + b

    def _update_running_stats(self, mean: np.ndarray, var: np.ndarray, n: int) -> None:
        self.running_mean *= 1 - self.momentum
        self.running_mean += self.momentum * mean
        self.running_var *= 1 - self.momentum
        self.running_var += self.momentum * var * (n / max(n - 1, 1))

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """``dx`` for the last forward; sets ``grad_weight`` and ``grad_bias``."""
        if self._saved is None:
            raise ValueError("backward() called before forward()")
        xhat, std, training = self._saved
        axes = reduce_axes(dy.ndim, self.axis)
        self.grad_bias = dy.sum(axes)
        self.grad_weight = (dy * xhat).sum(axes)
        scale = channel_view(self.weight, dy.ndim, self.axis) / std
        if not training:
            return dy * scale
        n = dy.size // dy.shape[self.axis]
        db = channel_view(self.grad_bias, dy.ndim, self.axis)
        dw = channel_view(self.grad_weight, dy.ndim, self.axis)
        return (scale / n) * (n * dy - db - xhat * dw)


class NaiveNumpyNorm:
    """LayerNorm, RMSNorm, GroupNorm and InstanceNorm as one writes them in plain NumPy.

    ``forward`` computes ``xhat = (x - x.mean(axes)) / np.sqrt(x.var(axes) + eps)`` (RMSNorm:
    ``x / np.sqrt((x * x).mean(axes) + eps)``) on the view of :func:`stat_view`, then
    ``xhat * w + b``, and keeps ``xhat`` and ``rstd`` for the analytic ``backward``::

        dxhat = dy * w
        dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))  # RMSNorm: no mean(dxhat)
    """

    def __init__(self, case: Case, problem: Problem, dtype: Any = np.float32) -> None:
        self.view, self.axes, param_shape = stat_view(case)
        self.param_axes = tuple(i for i, s in enumerate(param_shape) if s == 1)
        self.center = case.family != "rms_norm"
        self.eps = case.eps
        self.weight = problem.weight.astype(dtype).reshape(param_shape)
        self.bias = problem.bias.astype(dtype).reshape(param_shape) if case.has_bias else None
        self.grad_weight: np.ndarray | None = None
        self.grad_bias: np.ndarray | None = None
        self._saved: tuple[np.ndarray, np.ndarray] | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        v = x.reshape(self.view)
        if self.center:
            rstd = 1 / np.sqrt(v.var(self.axes, keepdims=True) + self.eps)
            xhat = (v - v.mean(self.axes, keepdims=True)) * rstd
        else:
            rstd = 1 / np.sqrt((v * v).mean(self.axes, keepdims=True) + self.eps)
            xhat = v * rstd
        self._saved = (xhat, rstd)
        y = xhat * self.weight
        if self.bias is not None:
            y += self.bias
        return y.reshape(x.shape)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """``dx`` for the last forward; sets ``grad_weight`` (and ``grad_bias``)."""
        if self._saved is None:
            raise ValueError("backward() called before forward()")
        xhat, rstd = self._saved
        g = dy.reshape(self.view)
        self.grad_weight = (g * xhat).sum(self.param_axes).ravel()
        if self.bias is not None:
            self.grad_bias = g.sum(self.param_axes).ravel()
        dxhat = g * self.weight
        dx = dxhat - xhat * (dxhat * xhat).mean(self.axes, keepdims=True)
        if self.center:
            dx -= dxhat.mean(self.axes, keepdims=True)
        dx *= rstd
        return dx.reshape(dy.shape)


def reference_result(case: Case, problem: Problem) -> np.ndarray:
    """The case's result (``y``, or ``dx`` for backward) computed in float64 NumPy."""
    p = problem
    if case.family != "batch_norm":
        norm = NaiveNumpyNorm(case, p, dtype=np.float64)
        y = norm.forward(p.x.astype(np.float64))
        return y if case.kind != "backward" else norm.backward(p.dy.astype(np.float64))
    x = p.x.astype(np.float64)
    ndim, axes = x.ndim, reduce_axes(x.ndim, p.axis)

    def per_channel(v: np.ndarray) -> np.ndarray:
        return channel_view(v.astype(np.float64), ndim, p.axis)

    if case.kind == "eval":
        m, v = per_channel(p.running_mean), per_channel(p.running_var)
    else:
        m, v = x.mean(axes, keepdims=True), x.var(axes, keepdims=True)
    rstd = 1.0 / np.sqrt(v + EPS)
    xhat = (x - m) * rstd
    w = per_channel(p.weight)
    if case.kind != "backward":
        return xhat * w + per_channel(p.bias)
    dy = p.dy.astype(np.float64)
    db = dy.mean(axes, keepdims=True)
    dw = (dy * xhat).mean(axes, keepdims=True)
    return w * rstd * (dy - db - xhat * dw)


def max_abs_diff(result: np.ndarray, reference: np.ndarray) -> float:
    """Largest absolute difference, computed in float64."""
    return float(np.max(np.abs(np.asarray(result, dtype=np.float64) - reference)))
