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

    Parameters
    ----------
    problem : Problem
        The case's data: its parameters and running statistics are copied, its
        ``axis`` is the channel axis.
    momentum : float, default 0.1
        Weight of the batch statistics in the running update.
    eps : float, default 1e-5
        Added to the variance.

    Attributes
    ----------
    weight, bias, running_mean, running_var : ndarray, shape ``(C,)``
        Copies of the problem's.
    grad_weight, grad_bias : ndarray or None
        Set by :meth:`backward`.
    axis, momentum, eps
        The constructor's.

    See Also
    --------
    NaiveNumpyNorm : the other families.
    fastnorm.BatchNorm : the layer it is compared with.

    Examples
    --------
    >>> from fastnorm import benchmark
    >>> case = benchmark.Case("batch_norm", "forward", (4, 3, 2, 2), 1)
    >>> problem = benchmark.make_problem(case.shape, case.axis)
    >>> layer = benchmark.NaiveNumpyBatchNorm(problem)
    >>> y = layer.forward(problem.x, training=True)
    >>> y.dtype, benchmark.max_abs_diff(y, benchmark.reference_result(case, problem)) < 1e-5
    (dtype('float32'), True)
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
        """``y`` of ``x``, with batch statistics (``training``, updating the running ones) or the
        running statistics; keeps ``xhat`` for :meth:`backward`.

        Parameters
        ----------
        x : ndarray
            The input, channels on the problem's ``axis``.
        training : bool
            Batch statistics (True) or running statistics (False).

        Returns
        -------
        ndarray
            ``y``, of ``x``'s shape and dtype.

        Examples
        --------
        >>> from fastnorm import benchmark
        >>> problem = benchmark.make_problem((4, 3), 1)
        >>> y = benchmark.NaiveNumpyBatchNorm(problem).forward(problem.x, training=False)
        >>> y.shape
        (4, 3)
        """
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
        y: np.ndarray = xhat * w + b
        return y

    def _update_running_stats(self, mean: np.ndarray, var: np.ndarray, n: int) -> None:
        self.running_mean *= 1 - self.momentum
        self.running_mean += self.momentum * mean
        self.running_var *= 1 - self.momentum
        self.running_var += self.momentum * var * (n / max(n - 1, 1))

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """``dx`` for the last forward; sets ``grad_weight`` and ``grad_bias``.

        Parameters
        ----------
        dy : ndarray
            The gradient of the output, of the input's shape.

        Returns
        -------
        ndarray
            ``dx``, of ``dy``'s shape.

        Raises
        ------
        ValueError
            If no forward came before.

        Examples
        --------
        >>> from fastnorm import benchmark
        >>> problem = benchmark.make_problem((4, 3), 1)
        >>> layer = benchmark.NaiveNumpyBatchNorm(problem)
        >>> _ = layer.forward(problem.x, training=True)
        >>> layer.backward(problem.dy).shape, layer.grad_weight.shape
        ((4, 3), (3,))
        """
        if self._saved is None:
            raise ValueError("backward() called before forward()")
        xhat, std, training = self._saved
        axes = reduce_axes(dy.ndim, self.axis)
        self.grad_bias = dy.sum(axes)
        self.grad_weight = (dy * xhat).sum(axes)
        scale = channel_view(self.weight, dy.ndim, self.axis) / std
        if not training:
            dx: np.ndarray = dy * scale
            return dx
        n = dy.size // dy.shape[self.axis]
        db = channel_view(self.grad_bias, dy.ndim, self.axis)
        dw = channel_view(self.grad_weight, dy.ndim, self.axis)
        dx = (scale / n) * (n * dy - db - xhat * dw)
        return dx


class NaiveNumpyNorm:
    """LayerNorm, RMSNorm, GroupNorm and InstanceNorm as one writes them in plain NumPy.

    ``forward`` computes ``xhat = (x - x.mean(axes)) / np.sqrt(x.var(axes) + eps)`` (RMSNorm:
    ``x / np.sqrt((x * x).mean(axes) + eps)``) on the case's statistics view, then
    ``xhat * w + b``, and keeps ``xhat`` and ``rstd`` for the analytic ``backward``::

        dxhat = dy * w
        dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))  # RMSNorm: no mean(dxhat)

    Parameters
    ----------
    case : Case
        A case of any family but BatchNorm: its statistics view (:func:`stat_view`), eps and
        whether it has a bias.
    problem : Problem
        The case's data; its parameters are copied.
    dtype : dtype, default numpy.float32
        Of the parameters (float64 for the reference).

    Attributes
    ----------
    weight, bias : ndarray
        The parameters, shaped to broadcast on the statistics view (``bias`` None for RMSNorm).
    grad_weight, grad_bias : ndarray or None
        Set by :meth:`backward`, of shape ``(C,)``.
    view, axes, param_axes, center, eps
        The statistics view's shape and axes, the parameters' broadcast axes, whether the mean
        is subtracted, and eps.

    Examples
    --------
    >>> from fastnorm import benchmark
    >>> case = benchmark.Case("layer_norm", "backward", (8, 16), -1)
    >>> problem = benchmark.make_problem(case.shape, case.axis)
    >>> layer = benchmark.NaiveNumpyNorm(case, problem)
    >>> _ = layer.forward(problem.x)
    >>> dx = layer.backward(problem.dy)
    >>> benchmark.max_abs_diff(dx, benchmark.reference_result(case, problem)) < 1e-4
    True
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
        """``y`` of ``x`` with its own statistics; keeps ``xhat`` and ``rstd`` for :meth:`backward`.

        Parameters
        ----------
        x : ndarray
            The input, of the case's shape.

        Returns
        -------
        ndarray
            ``y``, of ``x``'s shape.

        Examples
        --------
        >>> from fastnorm import benchmark
        >>> case = benchmark.Case("rms_norm", "forward", (4, 8), -1)
        >>> problem = benchmark.make_problem(case.shape, case.axis)
        >>> benchmark.NaiveNumpyNorm(case, problem).forward(problem.x).shape
        (4, 8)
        """
        v = x.reshape(self.view)
        if self.center:
            rstd = 1 / np.sqrt(v.var(self.axes, keepdims=True) + self.eps)
            xhat = (v - v.mean(self.axes, keepdims=True)) * rstd
        else:
            rstd = 1 / np.sqrt((v * v).mean(self.axes, keepdims=True) + self.eps)
            xhat = v * rstd
        self._saved = (xhat, rstd)
        y: np.ndarray = xhat * self.weight
        if self.bias is not None:
            y += self.bias
        return y.reshape(x.shape)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """``dx`` for the last forward; sets ``grad_weight`` (and ``grad_bias``).

        Parameters
        ----------
        dy : ndarray
            The gradient of the output, of the input's shape.

        Returns
        -------
        ndarray
            ``dx``, of ``dy``'s shape.

        Raises
        ------
        ValueError
            If no forward came before.

        Examples
        --------
        >>> from fastnorm import benchmark
        >>> case = benchmark.Case("group_norm", "backward", (2, 64, 2, 2), 1)
        >>> problem = benchmark.make_problem(case.shape, case.axis)
        >>> layer = benchmark.NaiveNumpyNorm(case, problem)
        >>> _ = layer.forward(problem.x)
        >>> layer.backward(problem.dy).shape, layer.grad_weight.shape
        ((2, 64, 2, 2), (64,))
        """
        if self._saved is None:
            raise ValueError("backward() called before forward()")
        xhat, rstd = self._saved
        g = dy.reshape(self.view)
        self.grad_weight = (g * xhat).sum(self.param_axes).ravel()
        if self.bias is not None:
            self.grad_bias = g.sum(self.param_axes).ravel()
        dxhat = g * self.weight
        dx: np.ndarray = dxhat - xhat * (dxhat * xhat).mean(self.axes, keepdims=True)
        if self.center:
            dx -= dxhat.mean(self.axes, keepdims=True)
        dx *= rstd
        return dx.reshape(dy.shape)


def reference_result(case: Case, problem: Problem) -> np.ndarray:
    """The case's result (``y``, or ``dx`` for backward) computed in float64 NumPy.

    Parameters
    ----------
    case : Case
        Which family and kind.
    problem : Problem
        The case's data.

    Returns
    -------
    ndarray of float64
        Of the case's shape.

    See Also
    --------
    max_abs_diff : a result's distance from it.

    Examples
    --------
    >>> from fastnorm import benchmark
    >>> case = benchmark.Case("batch_norm", "eval", (4, 3), 1)
    >>> problem = benchmark.make_problem(case.shape, case.axis)
    >>> reference = benchmark.reference_result(case, problem)
    >>> reference.dtype
    dtype('float64')
    >>> y = fastnorm.batch_norm(problem.x, problem.running_mean, problem.running_var,
    ...                         problem.weight, problem.bias)
    >>> benchmark.max_abs_diff(y, reference) < 1e-5
    True
    """
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
        result: np.ndarray = xhat * w + per_channel(p.bias)
        return result
    dy = p.dy.astype(np.float64)
    db = dy.mean(axes, keepdims=True)
    dw = (dy * xhat).mean(axes, keepdims=True)
    dx: np.ndarray = w * rstd * (dy - db - xhat * dw)
    return dx


def max_abs_diff(result: np.ndarray, reference: np.ndarray) -> float:
    """Largest absolute difference, computed in float64.

    Parameters
    ----------
    result : array_like
        A result, any float dtype.
    reference : ndarray
        The reference, broadcastable with ``result``.

    Returns
    -------
    float

    Examples
    --------
    >>> from fastnorm import benchmark
    >>> benchmark.max_abs_diff(np.array([1.0, 2.0], np.float32), np.array([1.5, 2.0]))
    0.5
    """
    return float(np.max(np.abs(np.asarray(result, dtype=np.float64) - reference)))
