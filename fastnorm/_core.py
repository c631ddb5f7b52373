"""The statistics core shared by every normalization.

Two paths, both on canonical views (see :mod:`fastnorm._views`):

* **channels** (BatchNorm, InstanceNorm, GroupNorm): on ``(N, A, C, B)``,
  ``moments`` gives mean and biased variance per ``(n, c)``; GroupNorm merges
  them over its ``C/G`` adjacent channels (Chan's formula, equal counts);
  ``normalize`` applies ``(x - mean) * rstd * w[c] + b[c]``; ``backward``
  makes one reduction pass and one elementwise pass.
* **rows** (LayerNorm, RMSNorm): on ``(R, M)``, a fused kernel reduces and
  normalizes each row while it sits in cache, with the affine along the row.
* **samples** (channels-last InstanceNorm/GroupNorm with batch statistics):
  per-channel statistics of one sample, merged per group, then the sample
  (which fits in L2 for typical images) is normalized while still in cache;
  its backward is the channels path.
* **grouped** (channels-first InstanceNorm/GroupNorm with batch statistics,
  where a statistics group is one contiguous run ``(K channels, S values)``
  of the ``(N, 1, C, S)`` view): the same fused pass per group, per-channel
  affine.  It reads ``x`` once instead of twice; it is used when there are
  enough groups to keep every thread busy.

The backend kernels do the per-element work; this module only does O(N*C)
arithmetic on float64 statistics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeAlias

import numpy as np

from . import _memory, _validate


@dataclass(slots=True)  # not frozen: a frozen dataclass costs 1 us more per forward
class Saved:
    """What a backward pass needs from its forward.

    ``x`` is the C-contiguous input in compute dtype: ``(N, A, C, B)`` on the
    channels path, ``(R, M)`` on the rows path.  ``mean`` and ``rstd`` are
    float64, ``(N, C)`` (a group's statistics repeated on each of its
    channels) or ``(R,)``.  ``weight`` is float64 ``(C,)``, or on the rows
    path the layer's ``(M,)`` parameter itself (any float dtype), or None.
    ``batch_stats``: the statistics came from ``x`` (the gradient flows
    through them).  ``group``: channels per statistics group.  ``center``:
    the mean was subtracted (False for RMSNorm).  ``reduce`` (channels path
    only): where the statistics are those of a batch spread over several
    processes, the map from this process's ``(sum_dy, sum_dy_xmu)`` ``(1, C)``
    to the sums and the value count of the whole batch.  ``epilogue``: the
    forward's epilogue, whose gradient the backward applies first.  ``prenorm``
    (rows path): ``x`` is ``h = input + residual``, whose own gradient the backward
    may be given.  ``renorm``: Batch Renormalization's ``(r, d)`` (float64 ``(C,)``,
    constants of the gradient); ``weight`` is then ``r * weight``.  ``mask`` (a masked
    forward): bool, broadcastable to ``x``, the values the statistics were taken over (the
    others may hold anything); ``count`` (float64, ``mean``'s shape, or None where every kept
    statistic has all its values) the values behind each statistic.  ``perm`` (rows path): ``x`` is the input with its axes in this
    order, the reduced ones last.  ``param_fold``: ``(reduced_shape, axes)``, the parameters
    are broadcast along ``axes`` of the reduced shape (their gradients are summed over them).
    """

    x: np.ndarray
    mean: np.ndarray
    rstd: np.ndarray
    weight: np.ndarray | None
    batch_stats: bool
    shape: tuple[int, ...]
    dtype: np.dtype
    path: str = "channels"  # "channels", "rows" or "grouped"
    group: int = 1
    center: bool = True
    num_groups: int = 1
    channel_len: int = 1
    reduce: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, int]] | None = None
    epilogue: Epilogue | None = None
    prenorm: bool = False
    renorm: tuple[np.ndarray, np.ndarray] | None = None
    mask: np.ndarray | None = None
    count: np.ndarray | None = None
    perm: tuple[int, ...] | None = None
    param_fold: tuple[tuple[int, ...], tuple[int, ...]] | None = None

    @property
    def param_size(self) -> int:
        """Length of the (flattened) weight and bias gradients."""
        size: int
        if self.path == "rows":
            size = self.x.shape[1]
        elif self.path == "grouped":
            size = self.num_groups * (self.x.shape[1] // self.channel_len)
        else:
            size = self.x.shape[2]
        return size


_NATIVE_COMPUTE = (np.dtype(np.float32), np.dtype(np.float64))

#: the kernels' codes of the activations
ACTIVATIONS = {"relu": 1, "leaky_relu": 2, "gelu": 3, "gelu_tanh": 4, "silu": 5}

#: the kernels' ``epi`` argument (see :meth:`Epilogue.args`): ``(act, slope, shortcut, dy)``
EpiArgs: TypeAlias = tuple[int, float, np.ndarray | None, np.ndarray | None]


@dataclass(slots=True)
class Epilogue:
    """Elementwise work done in a normalization's own pass over memory.

    With ``z`` the normalized value: ``y = act(z + shortcut)`` (``act`` a code of
    :data:`ACTIVATIONS`, 0 for none; ``slope`` leaky ReLU's negative slope;
    ``shortcut`` None or a C-contiguous array of the output's shape and compute dtype).
    For the backward, ``bias`` (as the forward's kernels took it) and ``eps`` let the
    pre-activation be formed again from the saved input and statistics.
    """

    act: int = 0
    slope: float = 0.01
    shortcut: np.ndarray | None = None
    bias: np.ndarray | None = None
    eps: float = 0.0

    def args(self, dy: np.ndarray | None = None) -> EpiArgs:
        """The kernels' ``epi`` argument: ``y = act(z + shortcut)``, or with ``dy`` its
        gradient mode, ``y = dy * act'(z + shortcut)``."""
        return (self.act, self.slope, self.shortcut, dy)


def epi_args(epilogue: Epilogue | None) -> EpiArgs | None:
    """The kernels' ``epi`` argument of a forward (None: no epilogue)."""
    return None if epilogue is None else epilogue.args()


def _call(backend: ModuleType, fn: Callable[..., Any], args: tuple[Any, ...], epi: EpiArgs | None,
          out: np.ndarray, optional: bool = False) -> Any:
    """``fn(*args)`` with the epilogue ``epi`` on ``out``: inside the kernels' pass where the
    backend fuses epilogues, else by the backend's own elementwise pass afterwards.
    ``optional``: ``fn`` returns None where it did not serve the call (then nothing is done)."""
    if epi is None:
        return fn(*args)
    if getattr(backend, "FUSED_EPILOGUES", False):
        return fn(*args, epi=epi)
    result = fn(*args)
    if result is not None or not optional:
        backend.epilogue(out, epi)
    return result


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype kernels run in: float16 and bfloat16 widen to float32."""
    dtype = _validate.native(dtype)
    return np.dtype(np.float32) if dtype == np.float16 or _validate.is_bfloat16(dtype) else dtype


def as_compute(x: np.ndarray) -> np.ndarray:
    """C-contiguous, native-order array in compute dtype (no copy when already so)."""
    if x.dtype in _NATIVE_COMPUTE and x.flags.c_contiguous:
        return x
    return np.ascontiguousarray(x, dtype=compute_dtype(x.dtype))


def rstd_of(var: np.ndarray, eps: float) -> np.ndarray:
    return 1.0 / np.sqrt(var + eps)


#: inputs up to this many values take the one-call path of a backend that has one
SMALL_SIZE = 8192


def normalize_small(
    backend: ModuleType,
    x4: np.ndarray,
    mean: np.ndarray | None,
    var: np.ndarray | None,
    weight: np.ndarray | None,
    bias: np.ndarray | None,
    eps: float,
    out4: np.ndarray,
    epi: EpiArgs | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Statistics (unless ``mean``/``var`` are given) and normalization of a small ``x4`` in
    one backend call; returns ``(mean, var, rstd)`` ``(N, C)``, or None when the input is empty,
    not small
    or the backend has no such call (then the caller takes the general path).

    For a tiny tensor the general path's cost is per-call overhead: two kernel
    calls, their task planning and the O(C) NumPy arithmetic between them.
    """
    if not 0 < x4.size <= SMALL_SIZE:
        return None
    stats: tuple[np.ndarray, np.ndarray, np.ndarray] | None = _optional_call(
        backend, "channels_small", (x4, mean, var, weight, bias, eps, out4), epi)
    return stats


def normalize_given(
    backend: ModuleType,
    x4: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    weight: np.ndarray | None,
    bias: np.ndarray | None,
    eps: float,
    out4: np.ndarray,
    epi: EpiArgs | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Normalization of ``x4`` with given float64 ``(N, C)`` statistics (inference) in one
    backend call; returns ``(mean, var, rstd)``, or None when the input is empty or the
    backend has no such call.

    Inference is one elementwise pass; the general path adds the NumPy
    arithmetic that forms its coefficients, 10 to 20% of a call on a 13 MB
    input.  Small inputs take :func:`normalize_small`.
    """
    small = normalize_small(backend, x4, mean, var, weight, bias, eps, out4, epi)
    if small is not None or not x4.size:
        return small
    stats: tuple[np.ndarray, np.ndarray, np.ndarray] | None = _optional_call(
        backend, "channels_given", (x4, mean, var, weight, bias, eps, out4), epi)
    return stats


def _optional_call(backend: ModuleType, name: str, args: tuple[Any, ...], epi: EpiArgs | None) -> Any:
    """``backend.name(*args)`` with the epilogue ``epi`` on the output (the last of
    ``args``), or None where the backend does not have that call."""
    fused = getattr(backend, name, None)
    return None if fused is None else _call(backend, fused, args, epi, args[-1], optional=True)


def update_running(
    backend: ModuleType,
    run_mean: np.ndarray,
    run_var: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    factor: float,
    bessel: float,
) -> None:
    """``running = (1 - factor) * running + factor * batch`` (variance: ``var * bessel``), in place.

    float64 arithmetic, rounded once to the buffers' dtype; one compiled call
    where the backend has one for these buffers.
    """
    fused = getattr(backend, "running_update", None)
    if fused is not None and fused(run_mean, run_var, mean, var, factor, bessel):
        return
    new_mean = (1.0 - factor) * run_mean + factor * mean
    new_var = (1.0 - factor) * run_var + factor * (var * bessel)
    run_mean[...] = new_mean
    run_var[...] = new_var


# -- channels path ------------------------------------------------------------


def moments(backend: ModuleType, x4: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and biased variance per ``(n, c)``, both ``(N, C)`` float64."""
    count = x4.shape[1] * x4.shape[3]
    mean, m2 = backend.stats(x4)
    return mean, m2 / count


def masked_moments(
    backend: ModuleType, x4: np.ndarray, mask4: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and biased variance per ``(n, c)`` over the values of ``x4`` where ``mask4`` (bool,
    of ``x4``'s shape) is True; returns ``(mean, var, count)``, ``(N, C)`` float64.

    The kernels' moments are taken of the deviations ``x - m0`` (``m0`` a first estimate of
    the kept values' mean, from a float64 sum, rounded to the data type), 0 where left out:
    two parts, the kept deviations and ``k`` zeros, so Chan's formula solved for the first
    gives its moments without cancellation (the kept deviations' mean is near 0, and the
    large offset ``m0`` is added back once).  Whatever the values left out hold does not
    reach the result.  A statistic with no kept values has mean and variance 0.
    """
    n_all = x4.shape[1] * x4.shape[3]
    count = np.count_nonzero(mask4, axis=(1, 3)).astype(np.float64)
    kept = np.maximum(count, 1.0)
    dev = _memory.empty(x4.shape, x4.dtype, beside=x4)
    with np.errstate(invalid="ignore", over="ignore"):
        np.multiply(x4, mask4, out=dev)  # nan where a value left out is not finite
        m0 = moments(backend, dev)[0] * (n_all / kept)
        if not np.isfinite(m0).all():  # some value is inf or nan: leave out by selection
            np.copyto(dev, np.where(mask4, x4, x4.dtype.type(0)))
            m0 = dev.sum(axis=(1, 3), dtype=np.float64) / kept
        m0 = m0.astype(x4.dtype)
        np.subtract(dev, m0[:, None, :, None], out=dev)
        left_out_zero(dev, mask4)
        m0 = m0.astype(np.float64)
        mean_d, var_d = moments(backend, dev)
        mu_d = (n_all / kept) * mean_d
        m2 = n_all * var_d - mu_d * mu_d * (count * (n_all - count) / n_all)
        mean = m0 + mu_d
        var = np.maximum(m2, 0.0) / kept
    empty = count == 0
    if empty.any():
        mean = np.where(empty, 0.0, mean)
        var = np.where(empty, 0.0, var)
    return mean, var, count


def left_out_zero(a: np.ndarray, mask: np.ndarray) -> None:
    """Set ``a`` to 0 where ``mask`` (broadcastable) is False, in place.

    A product by the mask, unless it made a nan (an inf or nan left out): then a selection;
    for a mask of whole rows (``(R, 1)`` on ``(R, M)``), the rows left out are set.
    """
    if mask.ndim == 2 and mask.shape[1] == 1 and a.ndim == 2:
        a[~mask[:, 0]] = 0
        return
    with np.errstate(invalid="ignore", over="ignore"):
        a *= mask
        if np.isnan(a.sum()):
            np.copyto(a, 0, where=~mask)


def masked(dy: np.ndarray, mask: np.ndarray, select: bool = False) -> np.ndarray:
    """``dy`` with 0 where ``mask`` (broadcastable) is False, a new array: a product by the mask
    unless it made a nan, or ``select``, then a selection (rows set to 0, for whole rows)."""
    dz: np.ndarray
    if mask.ndim == 2 and mask.shape[1] == 1 and dy.ndim == 2:
        dz = dy.copy()
        dz[~mask[:, 0]] = 0
        return dz
    if not select:
        with np.errstate(invalid="ignore", over="ignore"):
            dz = dy * mask
            if not np.isnan(dz.sum()):
                return dz
    dz = np.where(mask, dy, dy.dtype.type(0))
    return dz


def fill_left_out(x: np.ndarray, mask: np.ndarray, value: np.ndarray) -> np.ndarray:
    """``x`` with ``value`` (broadcastable, rounded to ``x``'s dtype) where ``mask`` is False: a
    masked forward's input made harmless where it was left out, for its backward."""
    return np.where(mask, x, np.asarray(value).astype(x.dtype))


def merge_moments(
    counts: np.ndarray, means: np.ndarray, m2s: np.ndarray
) -> tuple[int | np.ndarray, np.ndarray, np.ndarray]:
    """Merge the statistics of parts, in their order, with Chan's formula in float64.

    ``means`` and ``m2s`` (sums of squared deviations) ``(P, K)``; ``counts`` ``(P,)`` (part
    ``p`` holds ``counts[p]`` values behind each of its ``K`` statistics) or ``(P, K)`` (a count
    per statistic).  Returns the whole's ``(count, mean, m2)``, ``mean`` and ``m2`` ``(K,)`` and
    ``count`` an int or, for ``(P, K)`` counts, ``(K,)`` float64.  Parts with no values
    contribute nothing (no values at all: mean and m2 are 0).  The same inputs give
    bit-identical results wherever this runs.

    Non-finite means merge as sums do (``inf`` with a finite mean stays ``inf``, ``inf``
    with ``-inf`` is ``nan``), as in the kernels' merges.
    """
    counts = np.asarray(counts, dtype=np.float64)
    means = np.asarray(means, dtype=np.float64)
    m2s = np.asarray(m2s, dtype=np.float64)
    if counts.ndim == 1:
        return _merge_parts(counts, means, m2s)
    k = means.shape[1]
    n = np.zeros(k)
    mean = np.zeros(k)
    m2 = np.zeros(k)
    for count, mb, m2b in zip(counts, means, m2s):
        count = np.broadcast_to(count, (k,))
        total = n + count
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            delta = mb - mean
            moved = mean + delta * (count / total)
            moved = np.where(np.isfinite(mean) & np.isfinite(mb), moved, mean + mb)
            grown = m2 + m2b + delta * delta * (n * count / total)
        mean = np.where(n == 0, mb, np.where(count == 0, mean, moved))
        m2 = np.where(n == 0, m2b, np.where(count == 0, m2, grown))
        n = total
    return n, np.where(n == 0, 0.0, mean), np.where(n == 0, 0.0, m2)


def _merge_parts(
    counts: np.ndarray, means: np.ndarray, m2s: np.ndarray
) -> tuple[int, np.ndarray, np.ndarray]:
    """:func:`merge_moments` with one count per part: empty parts are skipped, and the
    non-finite rule costs nothing where every mean is finite (SyncBatchNorm's merge runs on
    every training step)."""
    n = 0.0
    mean = np.zeros(means.shape[1])
    m2 = np.zeros(means.shape[1])
    with np.errstate(invalid="ignore", over="ignore"):
        for count, mb, m2b in zip(counts.tolist(), means, m2s):
            if count == 0:
                continue
            if n == 0:
                n, mean, m2 = count, mb.copy(), m2b.copy()
                continue
            total = n + count
            delta = mb - mean
            moved = mean + delta * (count / total)
            if not np.isfinite(moved).all():
                moved = np.where(np.isfinite(mean) & np.isfinite(mb), moved, mean + mb)
            m2 = m2 + m2b + delta * delta * (n * count / total)
            mean, n = moved, total
    return int(n), mean, m2


def group_sum(a: np.ndarray, group: int) -> np.ndarray:
    """Sum ``(N, C)`` over runs of ``group`` adjacent channels, repeated back to ``(N, C)``
    (``group`` is 0 only where there are no channels)."""
    if group <= 1:
        return a
    n, c = a.shape
    return np.repeat(a.reshape(n, c // group, group).sum(axis=2), group, axis=1)


def merge_groups(mean: np.ndarray, var: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-channel statistics over runs of ``group`` channels (equal counts).

    Chan's formula for equal counts: the group mean is the mean of the channel
    means, the group variance the mean of the channel variances plus the
    variance of the channel means.  Returned repeated to ``(N, C)``.
    """
    if group <= 1:  # one channel per group, or no channels
        return mean, var
    group_mean = group_sum(mean, group) / group
    spread = (mean - group_mean) ** 2
    return group_mean, group_sum(var + spread, group) / group


def normalize(
    backend: ModuleType,
    x4: np.ndarray,
    mean: np.ndarray,
    rstd: np.ndarray,
    weight: np.ndarray | None,
    bias: np.ndarray | None,
    out4: np.ndarray,
    epi: EpiArgs | None = None,
) -> None:
    """``out4 = (x4 - mean) * rstd * weight[c] + bias[c]`` with ``(N, C)`` statistics, and the
    epilogue ``epi`` (see :meth:`Epilogue.args`) in the same pass."""
    n, c = mean.shape
    scale = rstd if weight is None else rstd * weight
    if bias is None:
        shift = np.zeros((n, c))
    else:  # (N, C) contiguous; for BatchNorm's N = 1 a reshape, no copy
        shift = np.repeat(bias.reshape(1, c), n, axis=0) if n > 1 else bias.reshape(1, c)
    _call(backend, backend.apply, (x4, mean, np.ascontiguousarray(scale), shift, out4), epi, out4)


def backward(
    backend: ModuleType, saved: Saved, dy4: np.ndarray, dx4: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Write ``dx`` into ``dx4``; return ``(grad_weight, grad_bias)`` as ``(C,)`` float64.

    With ``xhat = (x - mean) * rstd`` and ``g = dy * w``, means taken over a
    statistics group: ``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))``
    when the statistics came from the batch, ``dx = rstd * g`` otherwise;
    ``grad_bias = sum(dy)``, ``grad_weight = sum(dy * xhat)`` over everything
    but the channel.
    """
    x4, mean, rstd = saved.x, saved.mean, saved.rstd
    samples = getattr(backend, "samples_backward", None)
    if samples is not None and saved.batch_stats and saved.reduce is None and saved.count is None:
        # statistics per sample: each sample's sums and dx while it is in cache
        grads: tuple[np.ndarray, np.ndarray] | None = samples(
            x4, dy4, mean, rstd, saved.group, saved.weight, saved.center, dx4)
        if grads is not None:
            return grads
    count = x4.shape[1] * x4.shape[3] * saved.group if saved.count is None else np.maximum(saved.count, 1.0)
    sum_dy, sum_dy_xmu = backend.backward_reduce(x4, dy4, mean)
    grad_bias = sum_dy.sum(axis=0)
    grad_weight = (sum_dy_xmu * rstd).sum(axis=0)
    if saved.reduce is not None:  # the statistics are the whole batch's, over several processes
        sum_dy, sum_dy_xmu, count = saved.reduce(sum_dy, sum_dy_xmu)
    k1 = rstd if saved.weight is None else rstd * saved.weight
    # dx = k1 * dy + k2 * xhat + k3; every coefficient is O(rstd * w), so none
    # underflows where rstd is tiny (data of magnitude 1e30 in float32)
    if saved.batch_stats:
        w = 1.0 if saved.weight is None else saved.weight
        sum_g = group_sum(sum_dy * w, saved.group)
        sum_g_xmu = group_sum(sum_dy_xmu * w, saved.group)
        k2 = -rstd * (sum_g_xmu * rstd / count)
        k3 = -rstd * (sum_g / count) if saved.center else np.zeros_like(k1)
    else:
        k2 = np.zeros_like(k1)
        k3 = np.zeros_like(k1)
    backend.backward_apply(x4, dy4, mean, rstd, np.ascontiguousarray(k1), k2, k3, dx4)
    return grad_weight, grad_bias


# -- rows path ----------------------------------------------------------------


def normalize_rows(
    backend: ModuleType,
    x2: np.ndarray,
    weight: np.ndarray | None,
    bias: np.ndarray | None,
    eps: float,
    center: bool,
    out2: np.ndarray,
    epi: EpiArgs | None = None,
    residual: np.ndarray | None = None,
    hsum: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Normalize each row of ``x2`` ``(R, M)`` into ``out2``; return float64 ``(mean, rstd)``.

    ``weight`` and ``bias`` are ``(M,)`` of any float dtype (the kernels use
    them in the data type), or None.  ``epi``: the epilogue.  ``residual`` (``x2``'s
    shape and dtype): the rows normalized are ``x2 + residual``, also written to ``hsum``.
    """
    stats: tuple[np.ndarray, np.ndarray]
    if residual is not None:
        assert hsum is not None  # given with residual
        if getattr(backend, "FUSED_EPILOGUES", False):
            stats = backend.rows_forward(x2, weight, bias, eps, center, out2, epi=epi,
                                         res=residual, hsum=hsum)
            return stats
        np.add(x2, residual, out=hsum)
        x2 = hsum
    stats = _call(backend, backend.rows_forward, (x2, weight, bias, eps, center, out2), epi, out2)
    return stats


def normalize_rows_given(
    backend: ModuleType,
    x2: np.ndarray,
    mean: np.ndarray,
    rstd: np.ndarray,
    weight: np.ndarray | None,
    bias: np.ndarray | None,
    out2: np.ndarray,
    epi: EpiArgs | None = None,
) -> None:
    """``out2 = (x2 - mean) * rstd * weight + bias`` per row of ``x2`` ``(R, M)`` with given
    float64 ``(R,)`` statistics (``mean`` zeros for RMSNorm); ``epi``: the epilogue."""
    _call(backend, backend.rows_apply, (x2, mean, rstd, weight, bias, out2), epi, out2)


def grouped_ok(view: np.ndarray, num_groups: int, threads: int) -> bool:
    """Whether the grouped path serves this ``(N, A, C, B)`` view: contiguous groups, enough of them."""
    n, a, _, b = view.shape
    ok: bool = a == 1 and b > 1 and n * num_groups >= 2 * threads
    return ok


def normalize_grouped(
    backend: ModuleType,
    view: np.ndarray,
    num_groups: int,
    weight: np.ndarray | None,
    bias: np.ndarray | None,
    eps: float,
    out_view: np.ndarray,
    epi: EpiArgs | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Fused statistics + apply on an ``(N, 1, C, S)`` view; returns ``(N, G)`` ``(mean, var)``."""
    n, _, c, s = view.shape
    shape = (n * num_groups, (c // num_groups) * s)
    out2 = out_view.reshape(shape)
    mean, var = _call(backend, backend.grouped_forward,
                      (view.reshape(shape), num_groups, s, weight, bias, eps, out2), epi, out2)
    return mean.reshape(n, num_groups), var.reshape(n, num_groups)


def samples_ok(view: np.ndarray, threads: int) -> bool:
    """Whether the per-sample fused path serves a channels-last ``(N, S, C, 1)`` view."""
    n, _, _, b = view.shape
    ok: bool = b == 1 and n >= 2 * threads
    return ok


def normalize_samples(
    backend: ModuleType,
    view: np.ndarray,
    num_groups: int,
    weight: np.ndarray | None,
    bias: np.ndarray | None,
    eps: float,
    out_view: np.ndarray,
    epi: EpiArgs | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Fused statistics + apply per sample of an ``(N, S, C, 1)`` view; ``(N, G)`` ``(mean, var)``."""
    n, s, c, _ = view.shape
    out3 = out_view.reshape(n, s, c)
    stats: tuple[np.ndarray, np.ndarray] = _call(
        backend, backend.samples_forward, (view.reshape(n, s, c), num_groups, weight, bias, eps, out3),
        epi, out3)
    return stats


@dataclass(slots=True)
class ChannelForward:
    """What :func:`forward_channels` computed, and by which path.

    ``mean``, ``var`` and ``rstd`` are float64: ``(N, C)`` on the ``"channels"`` path (a
    group's statistics repeated on its channels), ``(N, G)`` on the fused ``"grouped"`` and
    ``"samples"`` paths.  ``group``: channels per statistics group.
    """

    mean: np.ndarray
    var: np.ndarray
    rstd: np.ndarray
    path: str
    group: int

    def saved(
        self, view: np.ndarray, weight: np.ndarray | None, batch_stats: bool, shape: tuple[int, ...],
        dtype: np.dtype, epilogue: Epilogue | None = None,
        reduce: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, int]] | None = None,
    ) -> Saved:
        """The backward's state for this forward of ``view`` ``(N, A, C, B)``."""
        if self.path == "grouped":
            n, _, c, s = view.shape
            num_groups = c // self.group
            return Saved(view.reshape(n * num_groups, self.group * s), self.mean.reshape(-1),
                         self.rstd.reshape(-1), weight, batch_stats, shape, dtype, path="grouped",
                         num_groups=num_groups, channel_len=s, epilogue=epilogue)
        mean, rstd = self.mean, self.rstd
        if self.path == "samples" and self.group > 1:
            mean, rstd = np.repeat(mean, self.group, axis=1), np.repeat(rstd, self.group, axis=1)
        return Saved(view, np.ascontiguousarray(mean), np.ascontiguousarray(rstd), weight, batch_stats,
                     shape, dtype, group=self.group, reduce=reduce, epilogue=epilogue)


def forward_channels(
    backend: ModuleType,
    view: np.ndarray,
    out_view: np.ndarray,
    group: int,
    weight: np.ndarray | None,
    bias: np.ndarray | None,
    eps: float,
    epi: EpiArgs | None = None,
    given: tuple[np.ndarray, np.ndarray] | None = None,
    per_sample: bool = False,
    threads: int = 1,
) -> ChannelForward:
    """The forward of the channel families on an ``(N, A, C, B)`` view, into ``out_view``.

    Statistics per sample ``n`` and group of ``group`` adjacent channels, or the ``given``
    float64 ``(N, C)`` ``(mean, var)``; then the normalization with the float64 ``(C,)``
    ``weight`` and ``bias`` and the epilogue ``epi``.  The path: one backend call for a
    small input or for given statistics; where ``per_sample`` (InstanceNorm, GroupNorm:
    ``N`` independent samples) the fused grouped (channels-first) or per-sample
    (channels-last) kernels when enough of them keep ``threads`` busy; else the statistics
    pass (Chan-merged across a group's channels), then the apply pass.
    """
    n, c = view.shape[0], view.shape[2]
    if view.size:
        if given is not None:
            fused = normalize_given(backend, view, *given, weight, bias, eps, out_view, epi)
        elif group == 1:
            fused = normalize_small(backend, view, None, None, weight, bias, eps, out_view, epi)
        else:
            fused = None
        if fused is not None:
            return ChannelForward(*fused, "channels", 1)
        if given is None and per_sample:
            num_groups = c // group
            if grouped_ok(view, num_groups, threads):
                mean, var = normalize_grouped(backend, view, num_groups, weight, bias, eps, out_view, epi)
                return ChannelForward(mean, var, rstd_of(var, eps), "grouped", group)
            if samples_ok(view, threads):
                mean, var = normalize_samples(backend, view, num_groups, weight, bias, eps, out_view, epi)
                return ChannelForward(mean, var, rstd_of(var, eps), "samples", group)
    if given is not None:
        mean, var = given
    elif view.size:
        mean, var = moments(backend, view)
    else:
        mean = var = np.zeros((n, c))
    return ChannelForward(*apply_stats(backend, view, out_view, mean, var, group, weight, bias, eps, epi),
                          "channels", group)


def apply_stats(
    backend: ModuleType,
    view: np.ndarray,
    out_view: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    group: int,
    weight: np.ndarray | None,
    bias: np.ndarray | None,
    eps: float,
    epi: EpiArgs | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The apply pass of the channel families with per-channel float64 ``(N, C)`` statistics:
    merged over runs of ``group`` channels, then ``out_view = (view - mean) * rstd * weight +
    bias`` and the epilogue.  Returns the merged ``(mean, var, rstd)``, ``(N, C)``."""
    mean, var = merge_groups(mean, var, group)
    rstd = rstd_of(var, eps)
    if view.size:
        normalize(backend, view, mean, rstd, weight, bias, out_view, epi)
    return mean, var, rstd


def backward_grouped(
    backend: ModuleType, saved: Saved, dy: np.ndarray, dx: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Write ``dx`` into ``dx``; return per-channel ``(grad_weight, grad_bias)``."""
    grads: tuple[np.ndarray, np.ndarray] = backend.grouped_backward(
        saved.x, dy, saved.mean, saved.rstd, saved.num_groups, saved.channel_len, saved.weight, dx
    )
    return grads


def backward_rows(
    backend: ModuleType, saved: Saved, dy2: np.ndarray, dx2: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Write ``dx`` into ``dx2``; return ``(grad_weight, grad_bias)`` as ``(M,)`` float64."""
    grads: tuple[np.ndarray, np.ndarray]
    if saved.count is not None:
        grads = backend.rows_backward(
            saved.x, dy2, saved.mean, saved.rstd, saved.weight, saved.center, dx2, count=saved.count
        )
        return grads
    grads = backend.rows_backward(
        saved.x, dy2, saved.mean, saved.rstd, saved.weight, saved.center, dx2
    )
    return grads


def epilogue_gradient(backend: ModuleType, saved: Saved, dy: np.ndarray) -> np.ndarray:
    """``dy * act'(z + shortcut)``, the gradient at the epilogue's input, in one pass that
    forms the normalized ``z`` again from the saved input (statistics given on the channels
    path, formed again, to the same bits, on the rows and grouped paths)."""
    ep = saved.epilogue
    assert ep is not None  # called for a forward with an epilogue only
    g = _memory.empty(saved.x.shape, saved.x.dtype, beside=saved.x)
    epi = ep.args(dy)
    if saved.path == "rows" and saved.mask is not None:  # statistics of the kept values
        normalize_rows_given(backend, saved.x, saved.mean, saved.rstd, saved.weight, ep.bias, g, epi)
    elif saved.path == "rows":
        _call(backend, backend.rows_forward,
              (saved.x, saved.weight, ep.bias, ep.eps, saved.center, g), epi, g)
    elif saved.path == "grouped":
        _call(backend, backend.grouped_forward,
              (saved.x, saved.num_groups, saved.channel_len, saved.weight, ep.bias, ep.eps, g), epi, g)
    else:
        normalize(backend, saved.x, saved.mean, saved.rstd, saved.weight, ep.bias, g, epi)
    return g


def backward_any(
    backend: ModuleType, saved: Saved, dy: np.ndarray, dx: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Dispatch a saved forward's backward to its path."""
    if saved.path == "rows":
        return backward_rows(backend, saved, dy, dx)
    if saved.path == "grouped":
        return backward_grouped(backend, saved, dy, dx)
    return backward(backend, saved, dy, dx)
