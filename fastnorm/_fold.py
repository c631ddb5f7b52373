"""Folding an inference-mode BatchNorm into the linear layer (convolution, matrix) before it."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from . import _validate

__all__ = ["fold_batch_norm"]


def fold_batch_norm(
    weight: ArrayLike,
    bias: ArrayLike | None,
    bn: Any = None,
    *,
    running_mean: ArrayLike | None = None,
    running_var: ArrayLike | None = None,
    bn_weight: ArrayLike | None = None,
    bn_bias: ArrayLike | None = None,
    eps: float | None = None,
    out_axis: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Weight and bias of a linear layer followed by an evaluation-mode BatchNorm, folded.

    ``bn(linear(x)) == linear'(x)`` with ``W' = W * s`` along the output-channel axis and
    ``b' = (b - running_mean) * s + bn_bias``, ``s = bn_weight / sqrt(running_var + eps)``,
    computed in float64 and cast to the weight's dtype.

    Parameters
    ----------
    weight : array_like
        The linear layer's weight; its output channels (BatchNorm's ``C``) on ``out_axis``:
        ``0`` for PyTorch's convolutions ``(C, C_in/groups, *k)`` and linear layers
        ``(C, in)``, ``-1`` for channels-last kernels ``(*k, C_in, C)`` and NumPy's
        ``x @ W`` with ``W`` of shape ``(in, C)``, ``1`` for transposed convolutions
        ``(C_in, C/groups, *k)`` with one group.
    bias : array_like of shape ``(C,)``, or None
        The linear layer's bias (None: zeros).
    bn : fastnorm.BatchNorm, optional
        The BatchNorm whose running statistics, parameters and ``eps`` to fold (it
        must track running statistics); or None (the default) and its arrays below.
    running_mean, running_var : array_like, shape ``(C,)``, optional
        The running statistics, without ``bn`` (then required).
    bn_weight, bn_bias : array_like, shape ``(C,)``, optional
        The BatchNorm's affine, without ``bn``; None (the default): ones and zeros.
    eps : float, optional
        The BatchNorm's ``eps``, without ``bn``; None (the default): 1e-5.
    out_axis : int, default 0
        The output-channel axis of ``weight``.

    Returns
    -------
    weight : ndarray
        The folded weight, of ``weight``'s shape and dtype.
    bias : ndarray, shape ``(C,)``
        The folded bias, in the weight's dtype.

    Raises
    ------
    TypeError
        If ``weight`` is not a float array, a vector does not hold real numbers,
        ``out_axis`` is not an int, ``eps`` is not a real number, or both ``bn``
        and any of its arrays are given.
    ValueError
        If ``weight`` is 0-D or ``out_axis`` out of range; ``bn`` does not track
        running statistics or has another number of channels; the running
        statistics are missing; a vector is not of shape ``(C,)``; ``eps < 0``.

    See Also
    --------
    BatchNorm : whose evaluation mode this folds.

    Notes
    -----
    With ``s = bn_weight / sqrt(running_var + eps)`` per output channel:

    .. math::

        W' = W \\cdot s, \\qquad b' = (b - \\mathrm{running\\_mean}) \\cdot s + \\mathrm{bn\\_bias}

    Examples
    --------
    A linear layer ``x @ W.T + b`` followed by an evaluation-mode BatchNorm
    is one linear layer:

    >>> rng = np.random.default_rng(0)
    >>> W, b = rng.standard_normal((3, 4)), rng.standard_normal(3)
    >>> bn = fastnorm.BatchNorm1d(3, dtype=np.float64).eval()
    >>> bn.running_mean[:] = [0.5, -1.0, 2.0]
    >>> bn.running_var[:] = [1.0, 4.0, 0.25]
    >>> W2, b2 = fastnorm.fold_batch_norm(W, b, bn)
    >>> x = rng.standard_normal((5, 4))
    >>> np.allclose(x @ W2.T + b2, bn(x @ W.T + b))
    True

    With the arrays instead of a layer:

    >>> W2, b2 = fastnorm.fold_batch_norm(W, None, running_mean=np.zeros(3),
    ...                                   running_var=np.full(3, 4.0), eps=0.0)
    >>> np.allclose(W2, W / 2), np.allclose(b2, 0)
    (True, True)
    """
    w = np.asarray(weight)
    if w.dtype.kind != "f":
        raise TypeError(f"weight must be a float array, got dtype {w.dtype}")
    if w.ndim < 1:
        raise ValueError("weight must have at least 1 dimension")
    axis = _validate.channel_axis(out_axis, w.ndim)
    c = w.shape[axis]
    if bn is not None:
        if any(v is not None for v in (running_mean, running_var, bn_weight, bn_bias, eps)):
            raise TypeError("give either bn or its arrays (running_mean, running_var, ...), not both")
        if getattr(bn, "running_mean", None) is None:
            raise ValueError("bn must track running statistics (track_running_stats=True)")
        if bn.num_features != c:
            raise ValueError(f"bn has {bn.num_features} channels, weight has {c} on axis {out_axis}")
        running_mean, running_var, bn_weight, bn_bias, eps = (
            bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)
    if running_mean is None or running_var is None:
        raise ValueError("running_mean and running_var are required (or a BatchNorm as bn)")
    mean = _vector(running_mean, "running_mean", c)
    var = _vector(running_var, "running_var", c)
    gamma = np.ones(c) if bn_weight is None else _vector(bn_weight, "bn_weight", c)
    beta = np.zeros(c) if bn_bias is None else _vector(bn_bias, "bn_bias", c)
    b = np.zeros(c) if bias is None else _vector(bias, "bias", c)
    eps = 1e-5 if eps is None else _validate.real_scalar(eps, "eps", minimum=0.0)
    scale = gamma / np.sqrt(var + eps)
    shape = [1] * w.ndim
    shape[axis] = c
    new_weight = (w.astype(np.float64) * scale.reshape(shape)).astype(w.dtype)
    new_bias = ((b - mean) * scale + beta).astype(w.dtype)
    return new_weight, new_bias


def _vector(value: ArrayLike, name: str, size: int) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")
    if array.shape != (size,):
        raise ValueError(f"{name} must have shape ({size},), got {array.shape}")
    return array.astype(np.float64)
