"""The functional backward of every family: gradients from the input and the statistics a
forward returned (``return_stats=True``).

Each function rebuilds what a layer keeps from its forward (:class:`fastnorm._core.Saved`: the
canonical view of the input, float64 statistics, the weight) and runs the one backward the
layers run, :func:`fastnorm.functional._normalization_backward`, on every CPU backend.

They differentiate the normalization alone: ``dy`` is the gradient at its output.  After a
forward with ``activation=`` or ``shortcut=``, apply the activation's gradient first (the
layers do that themselves); after one with ``residual=``, ``x`` is the sum ``h`` it returned.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from . import _core, _validate, _views
from ._docs import fill_doc
from .backends import get_num_threads
from .functional import (
    _check_out,
    _normalization_backward,
    _virtual_batch,
    normalized_shape_tuple,
)

__all__ = [
    "batch_norm_backward",
    "instance_norm_backward",
    "group_norm_backward",
    "layer_norm_backward",
    "rms_norm_backward",
]


def _stats(value: object, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Statistics as C-contiguous float64 of ``shape``."""
    if (type(value) is np.ndarray and value.dtype == np.float64 and value.shape == shape
            and value.flags.c_contiguous):
        return value
    arr = _validate.float_array(value, name)
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array on a CPU backend")
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float64)


def _input(x: ArrayLike, min_ndim: int) -> np.ndarray:
    x = _validate.float_array(x, "x")
    if not isinstance(x, np.ndarray):
        raise TypeError("x must be a NumPy array: the functional backward runs on the CPU backends")
    _validate.min_ndim(x, "x", min_ndim)
    return x


def _param_grad(grad: np.ndarray, weight: np.ndarray | None, x: np.ndarray,
                shape: tuple[int, ...]) -> np.ndarray:
    """A float64 parameter gradient in the weight's dtype (``x``'s without a weight) and shape."""
    dtype = weight.dtype if weight is not None else _validate.native(x.dtype)
    return np.asarray(grad).reshape(shape).astype(dtype, copy=False)


def _run(saved: _core.Saved, dy: ArrayLike, x: np.ndarray,
         out: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(dx, grad_weight, grad_bias)`` of ``saved``, ``dx`` into ``out`` when given."""
    out = _check_out(out, x)
    dx, grad_weight, grad_bias, _ = _normalization_backward(
        saved, dy, out=out if isinstance(out, np.ndarray) else None)
    if out is not None and dx is not out:
        np.copyto(out, dx, casting="unsafe")
        dx = out
    return dx, grad_weight, grad_bias


@fill_doc
def batch_norm_backward(
    dy: ArrayLike,
    x: ArrayLike,
    mean: ArrayLike,
    rstd: ArrayLike,
    weight: ArrayLike | None = None,
    *,
    training: bool = True,
    axis: int = 1,
    out: np.ndarray | None = None,
    virtual_batch_size: int | None = None,
    mask: ArrayLike | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of :func:`fastnorm.batch_norm`: ``(dx, dweight, dbias)``.

    Differentiates the normalization alone, from the forward's input and the
    statistics it normalized with (``return_stats=True``), on the CPU
    backends.

    Parameters
    ----------
    dy : array_like, shape of ``x``
        The gradient of the output, float.  After a forward with
        ``activation=``, apply the activation's gradient first.
    x : ndarray, shape ``(N, C, *)`` (``axis=1``) or ``(N, *, C)`` (``axis=-1``)
        The forward's input (float16, float32, float64 or bfloat16).
    mean, rstd : array_like, shape ``(C,)``
        The statistics the forward normalized with, as ``batch_norm(...,
        return_stats=True)`` returns them: the batch's (``training=True``) or
        the running mean and ``1 / sqrt(running_var + eps)``.
    weight : array_like, shape ``(C,)``, optional
        The forward's weight.  None (the default): scale 1.
    training : bool, default True
        The statistics came from ``x`` (the gradient flows through them);
        ``False`` for running statistics.
    %(channel_axis)s
    %(backward_out)s
    virtual_batch_size : int, optional
        The forward's ghost batches (``training=True``); ``mean`` and ``rstd``
        are then ``(N / virtual_batch_size, C)``.  None (the default): one
        batch.
    mask : array_like of bool, optional
        The forward's mask (statistics over its True values); None (the
        default): no mask.

    Returns
    -------
    dx : ndarray, shape and dtype of ``x``
        The gradient of the input (``out`` when given).
    dweight, dbias : ndarray, shape ``(C,)``
        In the weight's dtype (``x``'s without a weight); computed even when
        there is no weight.

    Raises
    ------
    %(backward_raises)s
    ValueError
        Also if ``x`` has fewer than 2 dimensions; ``virtual_batch_size`` is
        not positive, does not divide ``N`` or is given with ``mask``.

    See Also
    --------
    batch_norm : the forward.
    BatchNorm.backward : the layer's backward, which keeps what it needs.

    Notes
    -----
    With ``xhat = (x - mean) * rstd`` and the sums and means over every axis
    but the channel axis, in training:

    .. math::

        dbias = \\sum dy, \\quad dweight = \\sum dy \\cdot \\hat{x}, \\quad
        dx = weight \\cdot rstd \\cdot \\left(dy - \\overline{dy}
             - \\hat{x} \\, \\overline{dy \\cdot \\hat{x}}\\right)

    and ``dx = weight * rstd * dy`` with running statistics
    (``training=False``).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x, dy = rng.standard_normal((2, 4, 3, 5))
    >>> weight = np.array([1.0, 2.0, 0.5])
    >>> y, mean, rstd = fastnorm.batch_norm(x, weight=weight, training=True,
    ...                                     return_stats=True)
    >>> dx, dweight, dbias = fastnorm.batch_norm_backward(dy, x, mean, rstd, weight)
    >>> dx.shape, dweight.shape, dbias.shape
    ((4, 3, 5), (3,), (3,))
    >>> xhat = (x - mean[:, None]) * rstd[:, None]
    >>> np.allclose(dbias, dy.sum(axis=(0, 2)))
    True
    >>> np.allclose(dweight, (dy * xhat).sum(axis=(0, 2)))
    True
    >>> centred = (dy - dy.mean(axis=(0, 2), keepdims=True)
    ...            - xhat * (dy * xhat).mean(axis=(0, 2), keepdims=True))
    >>> np.allclose(dx, weight[:, None] * rstd[:, None] * centred)
    True
    """
    x = _input(x, 2)
    axis = _validate.channel_axis(axis, x.ndim)
    c = x.shape[axis]
    vbs = _virtual_batch(virtual_batch_size, x, axis, used=bool(training))
    if vbs is not None:
        if mask is not None:
            raise ValueError("mask cannot be combined with virtual_batch_size")
        return _channel_groups(x, axis, mean, rstd, weight, c, True, dy, out, ghost=vbs)
    weight = _validate.param_vector(weight, "weight", c)
    mean, rstd = _stats(mean, "mean", (c,)), _stats(rstd, "rstd", (c,))
    view = _views.batch_norm_view(_core.as_compute(x), axis)
    w64 = None if weight is None else weight.astype(np.float64)
    m4 = count = None
    if mask is not None:  # the counts of the kept values
        from ._axes import as_mask

        m4 = np.ascontiguousarray(as_mask(mask, x.shape)).reshape(view.shape)
        count = np.count_nonzero(m4, axis=(1, 3)).astype(np.float64) if training else None
    saved = _core.Saved(view, mean.reshape(1, c), rstd.reshape(1, c), w64, bool(training), x.shape,
                        _validate.native(x.dtype), mask=m4, count=count)
    dx, gw, gb = _run(saved, dy, x, out)
    return dx, _param_grad(gw, weight, x, (c,)), _param_grad(gb, weight, x, (c,))


def _channel_groups(x: np.ndarray, axis: int, mean: ArrayLike, rstd: ArrayLike,
                    weight: ArrayLike | None, groups: int, batch_stats: bool, dy: ArrayLike,
                    out: np.ndarray | None,
                    ghost: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """InstanceNorm (``groups == C``) and GroupNorm: ``(N, G)`` statistics; ``ghost``: ghost
    batch norm's virtual batch size (``(N / ghost, C)`` statistics)."""
    axis = _validate.channel_axis(axis, x.ndim)
    if axis == 0:
        raise ValueError("axis 0 is the batch axis; the channel axis must be >= 1")
    n, c = x.shape[0], x.shape[axis]
    weight = _validate.param_vector(weight, "weight", c)
    if ghost is not None:
        n = n // ghost
    mean, rstd = _stats(mean, "mean", (n, groups)), _stats(rstd, "rstd", (n, groups))
    group = c // groups if groups else 1
    xc = _core.as_compute(x)
    view = _views.instance_view(xc, axis) if ghost is None else _views.ghost_view(xc, axis, ghost)
    w64 = None if weight is None else weight.astype(np.float64)
    dtype = _validate.native(x.dtype)
    if batch_stats and x.size and _core.grouped_ok(view, groups, get_num_threads()):
        _, _, _, s = view.shape  # the forward's fused channels-first path, and its backward
        saved = _core.Saved(view.reshape(n * groups, group * s), mean.reshape(-1), rstd.reshape(-1),
                            w64, True, x.shape, dtype, path="grouped", num_groups=groups, channel_len=s)
    else:
        saved = _core.Saved(view, np.repeat(mean, group, axis=1), np.repeat(rstd, group, axis=1), w64,
                            bool(batch_stats), x.shape, dtype, group=group)
    dx, gw, gb = _run(saved, dy, x, out)
    return dx, _param_grad(gw, weight, x, (c,)), _param_grad(gb, weight, x, (c,))


@fill_doc
def instance_norm_backward(
    dy: ArrayLike,
    x: ArrayLike,
    mean: ArrayLike,
    rstd: ArrayLike,
    weight: ArrayLike | None = None,
    *,
    use_input_stats: bool = True,
    axis: int = 1,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of :func:`fastnorm.instance_norm`: ``(dx, dweight, dbias)``.

    Differentiates the normalization alone, from the forward's input and the
    statistics it normalized with (``return_stats=True``), on the CPU
    backends.

    Parameters
    ----------
    dy : array_like, shape of ``x``
        The gradient of the output, float.
    x : ndarray, shape ``(N, C, *spatial)`` (``axis=1``) or ``(N, *spatial, C)`` (``axis=-1``)
        The forward's input, at least 3-D.
    mean, rstd : array_like, shape ``(N, C)``
        Float, as ``instance_norm(..., return_stats=True)`` returns them; for
        running statistics (``use_input_stats=False``), repeated over the
        batch.
    weight : array_like, shape ``(C,)``, optional
        The forward's weight.  None (the default): scale 1.
    use_input_stats : bool, default True
        The statistics came from ``x`` (the gradient flows through them);
        ``False`` for running statistics.
    axis : int, default 1
        The channel axis, any but 0 (``1``: channels-first, ``-1``:
        channels-last).
    %(backward_out)s

    Returns
    -------
    dx : ndarray, shape and dtype of ``x``
        The gradient of the input (``out`` when given).
    dweight, dbias : ndarray, shape ``(C,)``
        In the weight's dtype (``x``'s without a weight); computed even when
        there is no weight.

    Raises
    ------
    %(backward_raises)s
    ValueError
        Also if ``x`` has fewer than 3 dimensions or ``axis`` is 0.

    See Also
    --------
    instance_norm : the forward.
    InstanceNorm.backward : the layer's backward.

    Notes
    -----
    As :func:`batch_norm_backward`, with the sums and means of each sample
    and channel over its spatial positions for ``dx``; ``dweight`` and
    ``dbias`` sum over the batch too.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x, dy = rng.standard_normal((2, 2, 3, 6))
    >>> y, mean, rstd = fastnorm.instance_norm(x, return_stats=True)
    >>> dx, dweight, dbias = fastnorm.instance_norm_backward(dy, x, mean, rstd)
    >>> mean.shape, dx.shape, dweight.shape
    ((2, 3), (2, 3, 6), (3,))
    >>> xhat = (x - mean[..., None]) * rstd[..., None]
    >>> centred = (dy - dy.mean(axis=2, keepdims=True)
    ...            - xhat * (dy * xhat).mean(axis=2, keepdims=True))
    >>> np.allclose(dx, rstd[..., None] * centred)
    True
    >>> np.allclose(dbias, dy.sum(axis=(0, 2)))
    True
    """
    x = _input(x, 3)
    c = x.shape[_validate.channel_axis(axis, x.ndim)]
    return _channel_groups(x, axis, mean, rstd, weight, c, use_input_stats, dy, out)


@fill_doc
def group_norm_backward(
    dy: ArrayLike,
    x: ArrayLike,
    num_groups: int,
    mean: ArrayLike,
    rstd: ArrayLike,
    weight: ArrayLike | None = None,
    *,
    axis: int = 1,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of :func:`fastnorm.group_norm`: ``(dx, dweight, dbias)``.

    Differentiates the normalization alone, from the forward's input and the
    statistics it normalized with (``return_stats=True``), on the CPU
    backends.

    Parameters
    ----------
    dy : array_like, shape of ``x``
        The gradient of the output, float.
    x : ndarray, shape ``(N, C, *spatial)`` (``axis=1``) or ``(N, *spatial, C)`` (``axis=-1``)
        The forward's input, at least 2-D.
    num_groups : int
        The forward's number of groups ``G``, a positive divisor of ``C``.
    mean, rstd : array_like, shape ``(N, num_groups)``
        Float, as ``group_norm(..., return_stats=True)`` returns them.
    weight : array_like, shape ``(C,)``, optional
        The forward's weight.  None (the default): scale 1.
    axis : int, default 1
        The channel axis, any but 0 (``1``: channels-first, ``-1``:
        channels-last).
    %(backward_out)s

    Returns
    -------
    dx : ndarray, shape and dtype of ``x``
        The gradient of the input (``out`` when given).
    dweight, dbias : ndarray, shape ``(C,)``
        Per channel, in the weight's dtype (``x``'s without a weight);
        computed even when there is no weight.

    Raises
    ------
    %(backward_raises)s
    ValueError
        Also if ``x`` has fewer than 2 dimensions or ``axis`` is 0;
        ``num_groups`` is not positive or does not divide ``C`` (a
        ``TypeError`` if it is not an int).

    See Also
    --------
    group_norm : the forward.
    GroupNorm.backward : the layer's backward.

    Notes
    -----
    As :func:`batch_norm_backward`, with the sums and means of each sample's
    group (its channels and spatial positions) for ``dx``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x, dy = rng.standard_normal((2, 2, 4, 3))
    >>> y, mean, rstd = fastnorm.group_norm(x, 2, return_stats=True)
    >>> dx, dweight, dbias = fastnorm.group_norm_backward(dy, x, 2, mean, rstd)
    >>> mean.shape, dx.shape, dweight.shape
    ((2, 2), (2, 4, 3), (4,))

    The gradient of the input sums to zero over each group:

    >>> np.allclose(dx.reshape(2, 2, -1).sum(axis=-1), 0)
    True
    """
    from .functional import _group_count

    x = _input(x, 2)
    c = x.shape[_validate.channel_axis(axis, x.ndim)]
    groups = _group_count(num_groups, c)
    return _channel_groups(x, axis, mean, rstd, weight, groups, True, dy, out)


def _dy_of(dy: ArrayLike, x: np.ndarray) -> np.ndarray:
    """``dy`` validated as a float array of ``x``'s shape."""
    dy = _validate.float_array(dy, "dy")
    if not isinstance(dy, np.ndarray):
        raise TypeError("dy must be a NumPy array: the functional backward runs on the CPU backends")
    _validate.same_shape(dy, x.shape)
    return dy


def _rows(dy: ArrayLike, x: ArrayLike, normalized_shape: int | tuple[int, ...] | None,
          mean: ArrayLike | None, rstd: ArrayLike, weight: ArrayLike | None, center: bool,
          out: np.ndarray | None, axis: int | tuple[int, ...] | None = None,
          feature_axis: int | tuple[int, ...] | None = None,
          mask: ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from . import _axes
    from .functional import _one_group, row_stats_shape

    x = _input(x, 1)
    if axis is None and feature_axis is None and mask is None:  # the trailing axes, PyTorch's
        return _trailing_rows(dy, x, normalized_shape, mean, rstd, weight, center, out)
    shape = None if normalized_shape is None and axis is not None else normalized_shape_tuple(normalized_shape)
    geo = _axes.resolve(x.shape, shape, axis, feature_axis)
    pshape = geo.param_shape(x.shape)
    lead = row_stats_shape(x.shape, shape, axis)
    weight = _validate.param_array(weight, "weight", pshape)
    rstd = _stats(rstd, "rstd", lead)
    mean = _stats(mean, "mean", lead) if center else np.zeros(lead)
    if _one_group(geo, x.shape, center, None, mask, out):  # the forward's GroupNorm path
        c = math.prod(pshape)
        view = (math.prod(lead), c, math.prod(geo.reduced_shape(x.shape)) // c)
        dx, gw, gb = _channel_groups(x.reshape(view), 1, mean.reshape(-1, 1), rstd.reshape(-1, 1),
                                     None if weight is None else weight.reshape(-1), 1, True,
                                     _dy_of(dy, x).reshape(view),
                                     None if out is None else out.reshape(view))
        return (dx.reshape(x.shape) if out is None else out, _param_grad(gw, weight, x, pshape),
                _param_grad(gb, weight, x, pshape))
    m = None if mask is None else _axes.as_mask(mask, x.shape)
    xm = x if geo.perm is None else x.transpose(geo.perm)
    x2 = _views.rows_view(_core.as_compute(xm), len(geo.reduced))
    count = None
    if m is not None:  # the counts of the kept values
        mm = m if geo.perm is None else m.transpose(geo.perm)
        m2 = np.ascontiguousarray(mm).reshape(x2.shape)
        count = np.count_nonzero(m2, axis=1).astype(np.float64)
        rstd = np.where(count.reshape(lead) > 0, rstd, 0.0)
    saved = _core.Saved(x2, mean.reshape(-1), rstd.reshape(-1), geo.expand(weight, x.shape), True,
                        x.shape, _validate.native(x.dtype), path="rows", center=center,
                        mask=None if m is None else m2, count=count, perm=geo.perm,
                        param_fold=None if geo.fold is None else (geo.reduced_shape(x.shape), geo.fold))
    dx, gw, gb = _run(saved, dy, x, out)
    return dx, _param_grad(gw, weight, x, pshape), _param_grad(gb, weight, x, pshape)


def _trailing_rows(dy: ArrayLike, x: np.ndarray, normalized_shape: int | tuple[int, ...] | None,
                   mean: ArrayLike | None, rstd: ArrayLike, weight: ArrayLike | None,
                   center: bool, out: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    shape = normalized_shape_tuple(normalized_shape)
    if x.shape[x.ndim - len(shape):] != shape or x.ndim < len(shape):
        raise ValueError(
            f"normalized_shape {shape} must equal the trailing dimensions of x, got x.shape {x.shape}"
        )
    lead = x.shape[: x.ndim - len(shape)]
    weight = _validate.param_array(weight, "weight", shape)
    rstd = _stats(rstd, "rstd", lead)
    mean = _stats(mean, "mean", lead) if center else np.zeros(lead)
    x2 = _views.rows_view(_core.as_compute(x), len(shape))
    w = None if weight is None else weight.reshape(-1)
    saved = _core.Saved(x2, mean.reshape(-1), rstd.reshape(-1), w, True, x.shape,
                        _validate.native(x.dtype), path="rows", center=center)
    dx, gw, gb = _run(saved, dy, x, out)
    return dx, _param_grad(gw, weight, x, shape), _param_grad(gb, weight, x, shape)


@fill_doc
def layer_norm_backward(
    dy: ArrayLike,
    x: ArrayLike,
    normalized_shape: int | tuple[int, ...] | None,
    mean: ArrayLike,
    rstd: ArrayLike,
    weight: ArrayLike | None = None,
    *,
    out: np.ndarray | None = None,
    axis: int | tuple[int, ...] | None = None,
    feature_axis: int | tuple[int, ...] | None = None,
    mask: ArrayLike | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of :func:`fastnorm.layer_norm`: ``(dx, dweight, dbias)``.

    Differentiates the normalization alone, from the forward's input and the
    statistics it normalized with (``return_stats=True``), on the CPU
    backends.  After a forward with ``residual=``, ``x`` is the sum ``h`` it
    returned.

    Parameters
    ----------
    dy : array_like, shape of ``x``
        The gradient of the output, float.
    x : ndarray
        The forward's input, at least 1-D.
    normalized_shape : int or tuple of int, or None
        As the forward's (None only with ``axis``).
    mean, rstd : array_like
        Float, of ``x``'s shape without the normalized axes, as
        ``layer_norm(..., return_stats=True)`` returns them (ONNX
        LayerNormalization's ``Mean`` and ``InvStdDev``).
    weight : array_like, optional
        As the forward's: of shape ``normalized_shape`` (or of the
        ``feature_axis`` sizes).  None (the default): scale 1.
    %(backward_out)s
    axis, feature_axis : int or tuple of int, optional
        As the forward's; None (the default): the trailing axes, and the
        parameters on all of them.
    mask : array_like of bool, optional
        As the forward's; None (the default): no mask.

    Returns
    -------
    dx : ndarray, shape and dtype of ``x``
        The gradient of the input (``out`` when given).
    dweight, dbias : ndarray
        Of the weight's shape (``normalized_shape``, or the ``feature_axis``
        sizes), in the weight's dtype (``x``'s without a weight); computed
        even when there is no weight.

    Raises
    ------
    %(backward_raises)s
    ValueError
        Also if ``normalized_shape`` does not match ``x`` (see
        :func:`fastnorm.layer_norm`), or ``axis``, ``feature_axis`` or
        ``mask`` is invalid as in the forward.

    See Also
    --------
    layer_norm : the forward.
    LayerNorm.backward : the layer's backward.

    Notes
    -----
    With ``xhat = (x - mean) * rstd``, ``g = dy * weight`` and the means over
    each row's normalized values:

    .. math::

        dx = rstd \\cdot \\left(g - \\overline{g}
             - \\hat{x} \\, \\overline{g \\cdot \\hat{x}}\\right), \\quad
        dweight = \\sum dy \\cdot \\hat{x}, \\quad dbias = \\sum dy

    the parameter gradients summed over the rows.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x, dy = rng.standard_normal((2, 3, 5))
    >>> weight = np.linspace(0.5, 1.5, 5)
    >>> y, mean, rstd = fastnorm.layer_norm(x, 5, weight, return_stats=True)
    >>> dx, dweight, dbias = fastnorm.layer_norm_backward(dy, x, 5, mean, rstd, weight)
    >>> dx.shape, dweight.shape, dbias.shape
    ((3, 5), (5,), (5,))
    >>> xhat = (x - mean[:, None]) * rstd[:, None]
    >>> np.allclose(dweight, (dy * xhat).sum(axis=0)), np.allclose(dbias, dy.sum(axis=0))
    (True, True)
    >>> np.allclose(dx.sum(axis=-1), 0)
    True
    """
    return _rows(dy, x, normalized_shape, mean, rstd, weight, True, out, axis, feature_axis, mask)


@fill_doc
def rms_norm_backward(
    dy: ArrayLike,
    x: ArrayLike,
    normalized_shape: int | tuple[int, ...] | None,
    rstd: ArrayLike,
    weight: ArrayLike | None = None,
    *,
    out: np.ndarray | None = None,
    axis: int | tuple[int, ...] | None = None,
    feature_axis: int | tuple[int, ...] | None = None,
    mask: ArrayLike | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Gradients of :func:`fastnorm.rms_norm`: ``(dx, dweight)``.

    Differentiates the normalization alone, from the forward's input and the
    statistic it normalized with (``return_stats=True``), on the CPU
    backends.  After a forward with ``residual=``, ``x`` is the sum ``h`` it
    returned.

    Parameters
    ----------
    dy : array_like, shape of ``x``
        The gradient of the output, float.
    x : ndarray
        The forward's input, at least 1-D.
    normalized_shape : int or tuple of int, or None
        As the forward's (None only with ``axis``).
    rstd : array_like
        ``1 / sqrt(mean(x**2) + eps)``, float, of ``x``'s shape without the
        normalized axes, as ``rms_norm(..., return_stats=True)`` returns it.
    weight : array_like, optional
        As the forward's: of shape ``normalized_shape`` (or of the
        ``feature_axis`` sizes).  None (the default): scale 1.
    %(backward_out)s
    axis, feature_axis : int or tuple of int, optional
        As the forward's; None (the default): the trailing axes, and the
        weight on all of them.
    mask : array_like of bool, optional
        As the forward's; None (the default): no mask.

    Returns
    -------
    dx : ndarray, shape and dtype of ``x``
        The gradient of the input (``out`` when given).
    dweight : ndarray
        Of the weight's shape, in the weight's dtype (``x``'s without a
        weight); computed even when there is no weight.

    Raises
    ------
    %(backward_raises)s
    ValueError
        Also if ``normalized_shape`` does not match ``x`` (see
        :func:`fastnorm.rms_norm`), or ``axis``, ``feature_axis`` or ``mask``
        is invalid as in the forward.

    See Also
    --------
    rms_norm : the forward.
    RMSNorm.backward : the layer's backward.

    Notes
    -----
    With ``xhat = x * rstd``, ``g = dy * weight`` and the mean over each
    row's normalized values:

    .. math::

        dx = rstd \\cdot \\left(g - \\hat{x} \\, \\overline{g \\cdot \\hat{x}}\\right),
        \\quad dweight = \\sum dy \\cdot \\hat{x}

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x, dy = rng.standard_normal((2, 3, 5))
    >>> weight = np.linspace(0.5, 1.5, 5)
    >>> y, rstd = fastnorm.rms_norm(x, 5, weight, return_stats=True)
    >>> dx, dweight = fastnorm.rms_norm_backward(dy, x, 5, rstd, weight)
    >>> rstd.shape, dx.shape, dweight.shape
    ((3,), (3, 5), (5,))
    >>> xhat, g = x * rstd[:, None], dy * weight
    >>> np.allclose(dx, rstd[:, None] * (g - xhat * (g * xhat).mean(axis=-1, keepdims=True)))
    True
    >>> np.allclose(dweight, (dy * xhat).sum(axis=0))
    True
    """
    dx, dweight, _ = _rows(dy, x, normalized_shape, None, rstd, weight, False, out, axis,
                           feature_axis, mask)
    return dx, dweight
