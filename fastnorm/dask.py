"""fastnorm on Dask arrays: lazy normalization of arrays larger than memory.

The functions take a ``dask.array.Array`` and return one (nothing is computed until the
result is), with the NumPy functions' names, arguments and semantics:

* statistics are a ``dask.array.reduction``: :func:`fastnorm.moments` of each block (the
  compiled kernels, which release the GIL), merged with Chan's formula in float64 as a tree;
* normalization is a ``map_blocks`` of the compiled kernels with those statistics;
* where every statistic's values lie inside one block (InstanceNorm and GroupNorm with whole
  spatial axes, LayerNorm and RMSNorm with whole normalized axes) each block is normalized by
  the NumPy function in one pass, without a reduction.

Any chunking works, along reduced axes and along the channel axis alike.  The graphs pickle,
so they run on the threaded scheduler and on ``dask.distributed`` clusters.

Requires dask (``pip install 'fastnorm-kernels[dask]'``); ``import fastnorm`` does not import
this module.

.. rubric:: Examples

>>> import dask.array as da
>>> import numpy as np
>>> import fastnorm.dask
>>> x = da.random.default_rng(0).standard_normal((64, 16, 100), chunks=(16, 16, 50))
>>> y = fastnorm.dask.layer_norm(x, 100)  # lazy: nothing computed yet
>>> y.chunks == x.chunks
True
>>> np.allclose(y.compute(), fastnorm.layer_norm(x.compute(), 100))
True
"""

from __future__ import annotations

import math
from functools import partial
from collections.abc import Callable
from typing import Any, TypeAlias

import numpy as np
from numpy.typing import ArrayLike

from . import _core, _validate, _views, functional
from ._docs import fill_doc
from ._moments import Moments, kept_axes
from ._moments import _view as _stats_view
from ._moments import moments as _numpy_moments
from .backends import backend_module

try:
    import dask.array as da
    from dask.base import tokenize
    from dask.delayed import Delayed, delayed
    from dask.graph_manipulation import bind
except ImportError as error:  # pragma: no cover - exercised where dask is absent
    raise ImportError(
        "fastnorm.dask needs dask: pip install 'fastnorm-kernels[dask]' (dask[array], and "
        "distributed for clusters)"
    ) from error

__all__ = ["batch_norm", "group_norm", "instance_norm", "layer_norm", "moments", "rms_norm"]

#: a block's (or a merge's) statistics: values behind each, their mean and M2
STATS = np.dtype([("count", "f8"), ("mean", "f8"), ("m2", "f8")])

#: ``map_blocks``'s ``block_info``: per input array (and None, the output), its block's place
_BlockInfo: TypeAlias = "dict[int | None, dict[str, Any]]"


# -- statistics ---------------------------------------------------------------


def _as_dask(x: Any, name: str = "x") -> da.Array:
    if not isinstance(x, da.Array):
        raise TypeError(
            f"{name} must be a dask.array.Array, got {type(x).__name__} "
            "(fastnorm's functions take NumPy arrays)"
        )
    if x.dtype not in _validate.FLOAT_DTYPES and x.dtype.newbyteorder("=") not in _validate.FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float16, float32 or float64, got {x.dtype}")
    return x


def _chunk_stats(block: np.ndarray, axis: tuple[int, ...], keepdims: bool,
                 kept: tuple[int, ...]) -> np.ndarray:
    """``reduction``'s chunk: the block's moments as a structured array (reduced axes kept as 1)."""
    m = _numpy_moments(block, kept)
    out = np.empty(m.shape, STATS)
    out["count"], out["mean"], out["m2"] = m.count, m.mean, m.m2
    return out.reshape([1 if a in axis else n for a, n in enumerate(block.shape)])


def _merge_stats(parts: np.ndarray, axis: tuple[int, ...], keepdims: bool) -> np.ndarray:
    """``reduction``'s combine and aggregate: Chan's merge of structured statistics along ``axis``."""
    kept = [a for a in range(parts.ndim) if a not in axis]
    moved = np.moveaxis(parts, list(axis), list(range(len(axis))))
    shape = moved.shape[len(axis):]
    flat = moved.reshape(math.prod(moved.shape[:len(axis)]), math.prod(shape))
    count, mean, m2 = _core.merge_moments(flat["count"], flat["mean"], flat["m2"])
    out: np.ndarray = np.empty(flat.shape[1], STATS)
    out["count"], out["mean"], out["m2"] = count, mean, m2
    out = out.reshape(shape)
    if keepdims:
        out = out.reshape([parts.shape[a] if a in kept else 1 for a in range(parts.ndim)])
    return out


def _stats(x: da.Array, kept: tuple[int, ...], split_every: int | None = None) -> da.Array:
    """Lazy structured statistics of ``x`` per index of the ``kept`` axes, with the reduced axes
    kept as 1 (so that they broadcast against ``x``, chunked as ``x`` along ``kept``)."""
    reduced = tuple(a for a in range(x.ndim) if a not in kept)
    stats: da.Array = da.reduction(
        x, partial(_chunk_stats, kept=kept), _merge_stats, combine=_merge_stats, axis=reduced,
        keepdims=True, dtype=STATS, split_every=split_every, concatenate=True,
        meta=np.empty((0,) * x.ndim, STATS), name="fastnorm-moments",
    )
    return stats


def _to_moments(stats: np.ndarray, kept: tuple[int, ...]) -> Moments:
    """Computed statistics (reduced axes kept as 1) as a :class:`fastnorm.Moments`."""
    stats = stats.reshape([stats.shape[a] for a in kept])
    counts = np.unique(stats["count"])
    count = int(counts[0]) if counts.size else 0
    return Moments(count, stats["mean"], stats["m2"])


@fill_doc
def moments(x: da.Array, axis: int | tuple[int, ...] = 1, *, split_every: int | None = None) -> Delayed:
    """Lazy :func:`fastnorm.moments` of a Dask array: a ``dask.delayed`` value that computes to
    a :class:`fastnorm.Moments` of shape ``tuple(x.shape[a] for a in sorted(axis))``.

    Each block's moments are computed by the compiled kernels, then merged with
    Chan's formula in float64 as a tree.

    Parameters
    ----------
    x : dask.array.Array
        float16, float32 or float64, any chunking.
    axis : int or tuple of int, default 1
        The axes that index the statistics (see :func:`fastnorm.moments`).
    %(split_every)s

    Returns
    -------
    dask.delayed.Delayed
        Computes to a :class:`fastnorm.Moments`.

    Raises
    ------
    TypeError
        If ``x`` is not a ``dask.array.Array`` of float16, float32 or float64,
        or ``axis`` is not an int or a tuple of ints.
    ValueError
        If an axis is out of range or repeated.

    See Also
    --------
    fastnorm.moments : the same on a NumPy array.

    Examples
    --------
    >>> import dask.array as da
    >>> import fastnorm.dask
    >>> x = np.random.default_rng(0).standard_normal((8, 3, 10))
    >>> m = fastnorm.dask.moments(da.from_array(x, chunks=(2, 3, 5)), axis=1).compute()
    >>> m
    Moments(count=80, shape=(3,))
    >>> np.allclose(m.mean, x.mean(axis=(0, 2))), np.allclose(m.std(), x.std(axis=(0, 2)))
    (True, True)
    """
    x = _as_dask(x)
    kept = kept_axes(axis, x.ndim)
    lazy: Delayed = delayed(_to_moments, pure=True)(_stats(x, kept, split_every), kept)
    return lazy


# -- normalization with given statistics --------------------------------------


def _location(block_info: _BlockInfo | None, axis: int) -> slice:
    assert block_info is not None  # map_blocks passes it
    start, stop = block_info[0]["array-location"][axis]
    return slice(start, stop)


def _apply_block(block: np.ndarray, stats: np.ndarray, *, kept: tuple[int, ...], axis: int | None,
                 weight: np.ndarray | None, bias: np.ndarray | None, eps: float, center: bool,
                 cast: bool = True, check: str | None = None,
                 block_info: _BlockInfo | None = None) -> np.ndarray:
    """Normalize one block with the structured statistics of its ``kept`` indices (broadcast
    shape); ``weight``/``bias`` are the whole per-channel arrays (``axis``), sliced here.
    ``cast=False`` returns the compute dtype (float32 for float16 blocks); ``check``: the
    error to raise where a statistic has at most one value (training)."""
    if check is not None and np.any(stats["count"] <= 1):  # sizes unknown when the graph was made
        raise ValueError(check)
    mean, var = _mean_var(stats, center)
    out = np.empty(block.shape, _core.compute_dtype(block.dtype))
    if not block.size:
        return _finish(out, block) if cast else out
    xc = _core.as_compute(block)
    view, out_view = _apply_view(xc, kept, axis), _apply_view(out, kept, axis)
    n, _, c, _ = view.shape
    mean2 = np.ascontiguousarray(mean, dtype=np.float64).reshape(n, c)
    var2 = np.ascontiguousarray(var, dtype=np.float64).reshape(n, c)
    w = b = None
    if axis is not None:
        where = _location(block_info, axis)
        w = None if weight is None else weight[where].astype(np.float64)
        b = None if bias is None else bias[where].astype(np.float64)
    backend = backend_module()
    fused = _core.normalize_given(backend, view, mean2, var2, w, b, eps, out_view)
    if fused is None:
        _core.normalize(backend, view, mean2, _core.rstd_of(var2, eps), w, b, out_view)
    return _finish(out, block) if cast else out


def _apply_view(x: np.ndarray, kept: tuple[int, ...], axis: int | None) -> np.ndarray:
    """The canonical view whose ``(n, c)`` groups are the statistics and whose ``c`` is the
    channel (``axis``) where there are per-channel parameters (the ops' ``kept`` axes: the
    channel, the batch and the channel, or the leading rows)."""
    if axis is not None and kept == (axis,):
        return _views.batch_norm_view(x, axis)
    if axis is not None and kept == (0, axis):
        return _views.instance_view(x, axis)
    view = _stats_view(x, kept)
    assert view is not None  # the leading rows: one run of kept axes
    return view


def _mean_var(stats: np.ndarray, center: bool) -> tuple[np.ndarray, np.ndarray]:
    count = stats["count"]
    with np.errstate(invalid="ignore", divide="ignore"):
        var = stats["m2"] / count
    if center:
        return stats["mean"], var
    return np.zeros(stats.shape), var + stats["mean"] ** 2  # the mean square, for RMSNorm


def _finish(y: np.ndarray, block: np.ndarray) -> np.ndarray:
    return y if y.dtype == block.dtype else y.astype(block.dtype)


def _second_pass(x: da.Array, stats: da.Array) -> da.Array:
    """``x`` computed again once ``stats`` are complete, for the normalizing pass.

    Sharing ``x``'s blocks between the statistics and the normalization would keep every
    block in memory until the statistics of the last one are known (all of ``x``); a copy of
    ``x``'s graph bound to the statistics reads (or computes) each block again when its turn
    comes, so that a few blocks per worker are in memory at a time.
    """
    return bind(x, stats, seed=tokenize(x, stats, "fastnorm-second-pass"))


def _normalize(x: da.Array, stats: da.Array, kept: tuple[int, ...], axis: int | None,
               weight: np.ndarray | None, bias: np.ndarray | None, eps: float, center: bool = True,
               second_pass: bool = True, check: str | None = None) -> da.Array:
    """``x`` normalized with ``stats``; ``second_pass``: the statistics come from ``x``."""
    y: da.Array = da.map_blocks(
        _apply_block, _second_pass(x, stats) if second_pass else x, stats, kept=kept, axis=axis,
        weight=weight, bias=bias, eps=eps, center=center, check=check, dtype=x.dtype,
        meta=np.empty((0,) * x.ndim, x.dtype), token="fastnorm-normalize",
    )
    return y


def _given_stats(mean: np.ndarray, var: np.ndarray, x: da.Array, axis: int) -> da.Array:
    """Structured statistics ``(mean, var)`` per channel as a Dask array broadcasting against
    ``x``, chunked as ``x`` along ``axis``."""
    stats = np.empty(mean.shape, STATS)
    stats["count"], stats["mean"], stats["m2"] = 1.0, mean, var  # m2 / count = var
    shape = [1] * x.ndim
    shape[axis] = -1
    chunks = tuple((1,) if a != axis else x.chunks[axis] for a in range(x.ndim))
    lazy: da.Array = da.from_array(stats.reshape(shape), chunks=chunks)
    return lazy


# -- the five ops -------------------------------------------------------------


def _channel_axis(x: da.Array, axis: object, min_ndim: int) -> int:
    if x.ndim < min_ndim:
        raise ValueError(f"x must have at least {min_ndim} dimensions, got shape {x.shape}")
    return _validate.channel_axis(axis, x.ndim)


def _known(n: float) -> bool:
    return not math.isnan(n)


@fill_doc
def batch_norm(
    x: da.Array,
    running_mean: ArrayLike | None = None,
    running_var: ArrayLike | None = None,
    weight: ArrayLike | None = None,
    bias: ArrayLike | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    axis: int = 1,
    split_every: int | None = None,
) -> da.Array | tuple[da.Array, da.Array, da.Array]:
    """:func:`fastnorm.batch_norm` of a Dask array, lazily.

    Training takes two passes over ``x``: a reduction of the per-channel
    statistics, then the normalization of every block with them.

    Parameters
    ----------
    x : dask.array.Array, shape ``(N, C, *)`` for ``axis=1`` or ``(N, *, C)`` for ``axis=-1``
        float16, float32 or float64; any chunking, along the channel axis too.
    running_mean, running_var : ndarray, shape ``(C,)``, optional
        NumPy arrays, given together or not at all.  Normalize with them when
        ``training=False`` (then required).  With ``training=True`` they are *not*
        changed in place (the result is lazy): the updated values are returned
        instead.
    weight, bias : array_like, shape ``(C,)``, optional
        Per-channel scale and shift (NumPy); None (the default): 1 and 0.
    training : bool, default False
        Normalize with the statistics of ``x``; False: with the running ones.
    %(momentum)s
    %(eps)s
    axis : int, default 1
        The channel axis (``1``: channels-first, ``-1``: channels-last).
    %(split_every)s

    Returns
    -------
    y : dask.array.Array
        ``x``'s shape, dtype and chunks.
    (y, new_running_mean, new_running_var) : tuple of dask.array.Array
        With ``training=True`` and running statistics: the updated running statistics
        (unbiased variance, the buffers' dtype) as Dask arrays of shape ``(C,)``.  Compute
        them together with ``y`` so that the statistics are computed once:
        ``y, rm, rv = dask.compute(y, rm, rv)``, or ``dask.array.store`` ``y`` and compute
        the two small arrays after (which computes the statistics again).

    Raises
    ------
    %(dask_raises)s

    See Also
    --------
    fastnorm.batch_norm : the same on a NumPy array.

    Examples
    --------
    >>> import dask
    >>> import dask.array as da
    >>> import fastnorm.dask
    >>> x = np.random.default_rng(0).standard_normal((8, 3, 10)).astype(np.float32)
    >>> lazy = da.from_array(x, chunks=(2, 3, 5))
    >>> running_mean, running_var = np.zeros(3, np.float32), np.ones(3, np.float32)
    >>> y, new_mean, new_var = fastnorm.dask.batch_norm(lazy, running_mean, running_var,
    ...                                                 training=True)
    >>> y.shape, y.chunks
    ((8, 3, 10), ((2, 2, 2, 2), (3,), (5, 5)))
    >>> y, new_mean, new_var = dask.compute(y, new_mean, new_var)
    >>> np.allclose(y, fastnorm.batch_norm(x, training=True), atol=1e-5)
    True
    >>> fastnorm.batch_norm(x, running_mean, running_var, training=True).shape
    (8, 3, 10)
    >>> np.allclose(new_mean, running_mean), np.allclose(new_var, running_var)
    (True, True)
    """
    x = _as_dask(x)
    axis = _channel_axis(x, axis, 2)
    channels = x.shape[axis]
    training = bool(training)
    run_mean, run_var = functional._running_pair(running_mean, running_var, channels, False)
    if not training and run_mean is None:
        raise ValueError(
            "running_mean and running_var are required when training=False "
            "(pass training=True to normalize with batch statistics)"
        )
    weight = _validate.param_vector(weight, "weight", channels)
    bias = _validate.param_vector(bias, "bias", channels)
    eps = _validate.real_scalar(eps, "eps", minimum=0.0)
    factor = functional._momentum(momentum) if training and run_mean is not None else 0.0
    if training:
        count = x.size / channels if channels else 0
        if _known(count) and count <= 1:
            raise ValueError(functional.ONE_VALUE_MESSAGE.format(x.shape))
        stats = _stats(x, (axis,), split_every)
    else:
        assert run_mean is not None and run_var is not None  # required above
        stats = _given_stats(run_mean.astype(np.float64), run_var.astype(np.float64), x, axis)
    y = _normalize(x, stats, (axis,), axis, weight, bias, eps, second_pass=training,
                   check=functional.ONE_VALUE_MESSAGE.format(x.shape) if training else None)
    if not (training and run_mean is not None):
        return y
    assert run_var is not None  # given with run_mean
    flat = da.squeeze(stats, axis=tuple(a for a in range(x.ndim) if a != axis))
    count = flat["count"]
    bessel = count / (count - 1)
    new_mean = ((1.0 - factor) * run_mean.astype(np.float64) + factor * flat["mean"]).astype(run_mean.dtype)
    new_var = ((1.0 - factor) * run_var.astype(np.float64)
               + factor * (flat["m2"] / count) * bessel).astype(run_var.dtype)
    return y, new_mean, new_var


def _whole(x: da.Array, axes: tuple[int, ...]) -> bool:
    """Whether every block holds the whole extent of ``axes``."""
    return all(len(x.chunks[a]) == 1 for a in axes)


def _per_block(block: np.ndarray, *, op: Callable[..., np.ndarray], weight: np.ndarray | None,
               bias: np.ndarray | None, axis: int | None, block_info: _BlockInfo | None = None,
               **kwargs: Any) -> np.ndarray:
    """A NumPy op on a block holding whole statistics groups; per-channel parameters sliced."""
    if axis is not None and block_info is not None:
        where = _location(block_info, axis)
        weight = None if weight is None else weight[where]
        bias = None if bias is None else bias[where]
    return op(block, weight=weight, bias=bias, **kwargs)


def _map_op(x: da.Array, op: Callable[..., np.ndarray], weight: np.ndarray | None,
            bias: np.ndarray | None, axis: int | None, **kwargs: Any) -> da.Array:
    y: da.Array = da.map_blocks(_per_block, x, op=op, weight=weight, bias=bias, axis=axis,
                                dtype=x.dtype, meta=np.empty((0,) * x.ndim, x.dtype),
                                token="fastnorm-blocks", **kwargs)
    return y


@fill_doc
def instance_norm(
    x: da.Array,
    running_mean: ArrayLike | None = None,
    running_var: ArrayLike | None = None,
    weight: ArrayLike | None = None,
    bias: ArrayLike | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    axis: int = 1,
    split_every: int | None = None,
) -> da.Array | tuple[da.Array, da.Array, da.Array]:
    """:func:`fastnorm.instance_norm` of a Dask array, lazily.

    Blocks holding whole spatial axes are normalized in one pass (no
    reduction); otherwise the per-instance statistics are reduced first.

    Parameters
    ----------
    x : dask.array.Array, shape ``(N, C, *spatial)`` (``axis=1``) or ``(N, *spatial, C)`` (``axis=-1``)
        float16, float32 or float64, at least 3-D; any chunking.
    running_mean, running_var : ndarray, shape ``(C,)``, optional
        NumPy arrays, given together or not at all; never changed in place (as
        in :func:`batch_norm`).  With ``use_input_stats=False`` they normalize
        (then required).
    weight, bias : array_like, shape ``(C,)``, optional
        Per-channel scale and shift (NumPy); None (the default): 1 and 0.
    use_input_stats : bool, default True
        Normalize with each instance's statistics; False: with the running ones.
    %(momentum)s
    %(eps)s
    axis : int, default 1
        The channel axis, any but 0.
    %(split_every)s

    Returns
    -------
    y : dask.array.Array
        ``x``'s shape, dtype and chunks.
    (y, new_running_mean, new_running_var) : tuple of dask.array.Array
        With ``use_input_stats=True`` and running statistics: the updated running
        statistics as Dask arrays of shape ``(C,)`` (compute them with ``y``).

    Raises
    ------
    %(dask_raises)s

    See Also
    --------
    fastnorm.instance_norm : the same on a NumPy array.

    Examples
    --------
    >>> import dask.array as da
    >>> import fastnorm.dask
    >>> x = np.random.default_rng(0).standard_normal((4, 3, 10)).astype(np.float32)
    >>> y = fastnorm.dask.instance_norm(da.from_array(x, chunks=(2, 3, 5)))
    >>> np.allclose(y.compute(), fastnorm.instance_norm(x), atol=1e-5)
    True
    """
    x = _as_dask(x)
    axis = _channel_axis(x, axis, 3)
    if axis == 0:
        raise ValueError("axis 0 is the batch axis; the channel axis of instance/group norm must be >= 1")
    channels = x.shape[axis]
    run_mean, run_var = functional._running_pair(running_mean, running_var, channels, False)
    if not use_input_stats and run_mean is None:
        raise ValueError("running_mean and running_var are required when use_input_stats=False")
    weight = _validate.param_vector(weight, "weight", channels)
    bias = _validate.param_vector(bias, "bias", channels)
    eps = _validate.real_scalar(eps, "eps", minimum=0.0)
    factor = functional._momentum(momentum) if use_input_stats and run_mean is not None else 0.0
    spatial = tuple(a for a in range(1, x.ndim) if a != axis)
    if not use_input_stats:
        assert run_mean is not None and run_var is not None  # required above
        stats = _given_stats(run_mean.astype(np.float64), run_var.astype(np.float64), x, axis)
        return _normalize(x, stats, (axis,), axis, weight, bias, eps, second_pass=False)
    count = math.prod(x.shape[a] for a in spatial)
    if _known(count) and count <= 1:
        raise ValueError(functional.ONE_SPATIAL_MESSAGE.format(x.shape))
    if run_mean is None and _whole(x, spatial):
        return _map_op(x, _instance_block, weight, bias, axis, eps=eps, channel_axis=axis)
    stats = _stats(x, (0, axis), split_every)
    y = _normalize(x, stats, (0, axis), axis, weight, bias, eps,
                   check=functional.ONE_SPATIAL_MESSAGE.format(x.shape))
    if run_mean is None:
        return y
    assert run_var is not None  # given with run_mean
    flat = da.squeeze(stats, axis=tuple(a for a in range(1, x.ndim) if a != axis))  # (N, C)
    mean = flat["mean"].mean(axis=0)
    var = (flat["m2"] / (flat["count"] - 1)).mean(axis=0)  # the mean unbiased variance
    new_mean = ((1.0 - factor) * run_mean.astype(np.float64) + factor * mean).astype(run_mean.dtype)
    new_var = ((1.0 - factor) * run_var.astype(np.float64) + factor * var).astype(run_var.dtype)
    return y, new_mean, new_var


def _instance_block(block: np.ndarray, *, weight: np.ndarray | None, bias: np.ndarray | None,
                    eps: float, channel_axis: int) -> np.ndarray:
    y: np.ndarray = functional.instance_norm(block, weight=weight, bias=bias, eps=eps,
                                             axis=channel_axis)
    return y


def _merge_groups_block(stats: np.ndarray, *, axis: int, group: int) -> np.ndarray:
    """Per-(n, c) statistics to their group's, repeated on each channel (whole channel axis)."""
    moved = np.moveaxis(stats, axis, -1)
    shape = moved.shape
    parts = moved.reshape(-1, shape[-1] // group, group)
    n = parts["count"]
    mean, var = _core.merge_groups(parts["mean"].reshape(-1, shape[-1]),
                                   (parts["m2"] / n).reshape(-1, shape[-1]), group)
    out = np.empty(moved.shape, STATS)
    out["count"] = np.repeat(n.sum(axis=-1), group, axis=-1).reshape(shape)
    out["mean"] = mean.reshape(shape)
    out["m2"] = (var * out["count"].reshape(var.shape)).reshape(shape)
    return np.moveaxis(out, -1, axis)


@fill_doc
def group_norm(
    x: da.Array,
    num_groups: int,
    weight: ArrayLike | None = None,
    bias: ArrayLike | None = None,
    eps: float = 1e-5,
    *,
    axis: int = 1,
    split_every: int | None = None,
) -> da.Array:
    """:func:`fastnorm.group_norm` of a Dask array, lazily.

    Any chunking works: groups may straddle blocks of the channel axis.  Blocks
    holding whole spatial axes and whole groups are normalized in one pass.

    Parameters
    ----------
    x : dask.array.Array, shape ``(N, C, *)`` (``axis=1``) or ``(N, *, C)`` (``axis=-1``)
        float16, float32 or float64, at least 2-D; any chunking.
    num_groups : int
        The number of groups, a positive divisor of ``C``.
    weight, bias : array_like, shape ``(C,)``, optional
        Per-channel scale and shift (NumPy); None (the default): 1 and 0.
    %(eps)s
    axis : int, default 1
        The channel axis, any but 0.
    %(split_every)s

    Returns
    -------
    dask.array.Array
        ``x``'s shape, dtype and chunks.

    Raises
    ------
    %(dask_raises)s

    See Also
    --------
    fastnorm.group_norm : the same on a NumPy array.

    Examples
    --------
    >>> import dask.array as da
    >>> import fastnorm.dask
    >>> x = np.random.default_rng(0).standard_normal((4, 6, 10)).astype(np.float32)
    >>> y = fastnorm.dask.group_norm(da.from_array(x, chunks=(2, 3, 5)), 2)
    >>> np.allclose(y.compute(), fastnorm.group_norm(x, 2), atol=1e-5)
    True
    """
    x = _as_dask(x)
    axis = _channel_axis(x, axis, 2)
    if axis == 0:
        raise ValueError("axis 0 is the batch axis; the channel axis of instance/group norm must be >= 1")
    channels = x.shape[axis]
    num_groups = functional._group_count(num_groups, channels)
    weight = _validate.param_vector(weight, "weight", channels)
    bias = _validate.param_vector(bias, "bias", channels)
    eps = _validate.real_scalar(eps, "eps", minimum=0.0)
    group = channels // num_groups
    spatial = tuple(a for a in range(1, x.ndim) if a != axis)
    if _whole(x, spatial) and all(c % group == 0 for c in x.chunks[axis]):
        return _map_op(x, _group_block, weight, bias, axis, eps=eps, channel_axis=axis,
                       group=group)
    stats = _stats(x, (0, axis), split_every)
    merged = stats.rechunk({axis: -1}).map_blocks(_merge_groups_block, axis=axis, group=group,
                                                  dtype=STATS, meta=np.empty((0,) * x.ndim, STATS))
    merged = merged.rechunk({axis: x.chunks[axis]})
    return _normalize(x, merged, (0, axis), axis, weight, bias, eps)


def _group_block(block: np.ndarray, *, weight: np.ndarray | None, bias: np.ndarray | None,
                 eps: float, channel_axis: int, group: int) -> np.ndarray:
    """A block of whole groups: GroupNorm with as many groups as it holds."""
    groups = max(block.shape[channel_axis] // group, 1)
    y: np.ndarray = functional.group_norm(block, groups, weight=weight, bias=bias, eps=eps,
                                          axis=channel_axis)
    return y


def _rows(x: da.Array, normalized_shape: object, weight: ArrayLike | None,
          bias: ArrayLike | None) -> tuple[tuple[int, ...], np.ndarray | None, np.ndarray | None]:
    shape = functional.normalized_shape_tuple(normalized_shape)
    if x.ndim < len(shape) or tuple(x.shape[x.ndim - len(shape):]) != shape:
        raise ValueError(
            f"normalized_shape {shape} must equal the trailing dimensions of x, got x.shape {x.shape}"
        )
    return shape, _validate.param_array(weight, "weight", shape), _validate.param_array(bias, "bias", shape)


def _rows_block(block: np.ndarray, *, weight: np.ndarray | None, bias: np.ndarray | None, eps: float,
                normalized_shape: tuple[int, ...], center: bool,
                block_info: _BlockInfo | None = None) -> np.ndarray:
    if block_info is not None and (weight is not None or bias is not None):
        k = len(normalized_shape)
        where = tuple(slice(*loc) for loc in block_info[0]["array-location"][block.ndim - k:])
        weight = None if weight is None else weight[where]
        bias = None if bias is None else bias[where]
    shape = block.shape[block.ndim - len(normalized_shape):]
    y: np.ndarray = (functional.layer_norm(block, shape, weight, bias, eps) if center
                     else functional.rms_norm(block, shape, weight, eps))
    return y


def _rows_apply(block: np.ndarray, stats: np.ndarray, *, weight: np.ndarray | None,
                bias: np.ndarray | None, eps: float, k: int, center: bool,
                block_info: _BlockInfo | None = None) -> np.ndarray:
    """A block of rows whose normalized axes are split over blocks: given row statistics."""
    kept = tuple(range(block.ndim - k))
    y = _apply_block(block, stats, kept=kept, axis=None, weight=None, bias=None, eps=eps,
                     center=center, cast=False, block_info=block_info)
    assert block_info is not None  # map_blocks passes it
    where = tuple(slice(*loc) for loc in block_info[0]["array-location"][block.ndim - k:])
    if weight is not None:
        y *= weight[where]
    if bias is not None:
        y += bias[where]
    return _finish(y, block)


def _rows_norm(x: da.Array, normalized_shape: object, weight: ArrayLike | None, bias: ArrayLike | None,
               eps: float | None, center: bool, split_every: int | None) -> da.Array:
    x = _as_dask(x)
    shape, weight, bias = _rows(x, normalized_shape, weight, bias)
    k = len(shape)
    if eps is None:
        eps = functional.default_rms_eps(x.dtype)
    eps = _validate.real_scalar(eps, "eps", minimum=0.0)
    trailing = tuple(range(x.ndim - k, x.ndim))
    if _whole(x, trailing):
        whole: da.Array = da.map_blocks(_rows_block, x, weight=weight, bias=bias, eps=eps,
                                        normalized_shape=shape, center=center, dtype=x.dtype,
                                        meta=np.empty((0,) * x.ndim, x.dtype), token="fastnorm-rows")
        return whole
    stats = _stats(x, tuple(range(x.ndim - k)), split_every)
    y: da.Array = da.map_blocks(_rows_apply, _second_pass(x, stats), stats, weight=weight, bias=bias,
                                eps=eps, k=k, center=center, dtype=x.dtype,
                                meta=np.empty((0,) * x.ndim, x.dtype), token="fastnorm-rows")
    return y


@fill_doc
def layer_norm(
    x: da.Array,
    normalized_shape: int | tuple[int, ...],
    weight: ArrayLike | None = None,
    bias: ArrayLike | None = None,
    eps: float = 1e-5,
    *,
    split_every: int | None = None,
) -> da.Array:
    """:func:`fastnorm.layer_norm` of a Dask array, lazily.

    Blocks holding whole normalized axes are normalized in one pass; otherwise
    the per-row statistics are reduced first.

    Parameters
    ----------
    x : dask.array.Array, shape ``(*, *normalized_shape)``
        float16, float32 or float64; any chunking.
    normalized_shape : int or tuple of int
        The trailing shape normalized over.
    weight, bias : array_like, shape ``normalized_shape``, optional
        Elementwise scale and shift (NumPy); None (the default): 1 and 0.
    %(eps)s
    %(split_every)s

    Returns
    -------
    dask.array.Array
        ``x``'s shape, dtype and chunks.

    Raises
    ------
    %(dask_raises)s

    See Also
    --------
    fastnorm.layer_norm : the same on a NumPy array.

    Examples
    --------
    >>> import dask.array as da
    >>> import fastnorm.dask
    >>> x = np.random.default_rng(0).standard_normal((8, 10)).astype(np.float32)
    >>> y = fastnorm.dask.layer_norm(da.from_array(x, chunks=(4, 5)), 10)
    >>> np.allclose(y.compute(), fastnorm.layer_norm(x, 10), atol=1e-5)
    True
    """
    return _rows_norm(x, normalized_shape, weight, bias, eps, True, split_every)


@fill_doc
def rms_norm(
    x: da.Array,
    normalized_shape: int | tuple[int, ...],
    weight: ArrayLike | None = None,
    eps: float | None = None,
    *,
    split_every: int | None = None,
) -> da.Array:
    """:func:`fastnorm.rms_norm` of a Dask array, lazily (see :func:`layer_norm`).

    Parameters
    ----------
    x : dask.array.Array, shape ``(*, *normalized_shape)``
        float16, float32 or float64; any chunking.
    normalized_shape : int or tuple of int
        The trailing shape normalized over.
    weight : array_like, shape ``normalized_shape``, optional
        Elementwise scale (NumPy); None (the default): 1.
    eps : float or None, default None
        Added to the mean square, ``>= 0``; None: the machine epsilon of the
        compute dtype, as :func:`fastnorm.rms_norm`.
    %(split_every)s

    Returns
    -------
    dask.array.Array
        ``x``'s shape, dtype and chunks.

    Raises
    ------
    %(dask_raises)s

    See Also
    --------
    fastnorm.rms_norm : the same on a NumPy array.

    Examples
    --------
    >>> import dask.array as da
    >>> import fastnorm.dask
    >>> x = np.random.default_rng(0).standard_normal((8, 10)).astype(np.float32)
    >>> y = fastnorm.dask.rms_norm(da.from_array(x, chunks=(4, 5)), 10)
    >>> np.allclose(y.compute(), fastnorm.rms_norm(x, 10), atol=1e-5)
    True
    """
    return _rows_norm(x, normalized_shape, weight, None, eps, False, split_every)
