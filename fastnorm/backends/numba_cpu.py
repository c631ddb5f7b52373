"""The Numba backend: parallel, cached JIT kernels of the core.

Implements the contract of :mod:`fastnorm.backends.numpy_ref` with two loop
shapes per step:

* ``*_runs`` for ``B > 1``: the contiguous run is the reduction axis ``b``;
  each task reduces a slice of one group's ``A*B`` values, vectorized along
  ``b``.
* ``*_lanes`` for ``B == 1`` (channels-last): the contiguous run is ``C``; each
  task keeps per-channel partial statistics for a slice of rows, vectorized
  along ``c``.

Work is split into tasks over groups and, when there are too few groups for
the threads, inside each group; partial statistics are merged with Chan's
formula in float64.  Inputs too small to repay waking the worker threads
run on one thread.

Inner loops index a sliced segment from 0 (``seg[i]``, not ``x[..., b0 + i]``):
Numba's negative-index wraparound on a start LLVM cannot prove non-negative
turns contiguous loads into gathers.

Precision: reductions widen every value to float64 and use float64
deviations, so no mean is ever rounded to the data type.  Elementwise kernels
compute in the data type but subtract the float64 mean as a hi/lo pair,
``(x - hi) - lo``; they are compiled without ``reassoc`` precisely so the
compiler cannot fold that into ``x - (hi + lo)``.
"""

from __future__ import annotations

import contextlib
import math
import threading
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import numba
import numpy as np
from numba import njit, prange
from numba.np.ufunc import threading_layer

from . import _openmp, get_num_threads
from ._coefficients import apply_folded, backward_folded, hi_lo
from ._plan import row_tasks, split, threads_for
from ._types import F64, Epi, Floats, Scalar

if TYPE_CHECKING:
    from numba.core.dispatcher import Dispatcher

NAME = "numba"

# Reductions may reassociate (that is what lets them vectorize); no nnan/ninf,
# so NaN and inf propagate as in the reference.
_REDUCE_MATH = {"reassoc", "contract"}
_ELEMENTWISE_MATH = {"contract"}

BLOCK = 2048  # values per two-pass block (8-16 KiB: stays in L1 between the passes)
LANE_BLOCK = 16384  # values per block of rows in the channels-last kernels
LANE_MIN_ROWS = 64  # rows per block at least, so wide rows amortize the per-channel merge
COLUMN_FLUSH = 8  # rows summed in the data type before a float64 flush (LayerNorm weight grads)

#: the parallel kernels (module-level names) and their fastmath flags
_PARALLEL: dict[str, set[str]] = {}


_Fn = TypeVar("_Fn", bound=Callable[..., Any])


def _parallel(fastmath: set[str]) -> Callable[[_Fn], Dispatcher[_Fn]]:
    """``@njit(parallel=True, cache=True, fastmath=...)``, the kernel listed in :data:`_PARALLEL`."""

    def wrap(fn: _Fn) -> Dispatcher[_Fn]:
        _PARALLEL[fn.__name__] = fastmath
        return njit(parallel=True, cache=True, fastmath=fastmath)(fn)

    return wrap


# ----------------------------------------------------------------------------
# statistics
# ----------------------------------------------------------------------------


@njit(inline="always")
def _chan_mean(ma: float, mb: float, f: float) -> float:
    """Chan's update of a mean ``ma`` by a part's mean ``mb`` of weight ``f``.

    Non-finite means merge as sums do (``inf + 1 = inf``, ``inf - inf = nan``):
    a group's mean is ``sum(x) / n`` in IEEE arithmetic however its values are
    blocked, where ``ma + (mb - ma) * f`` would turn ``inf`` into ``nan``.
    """
    if np.isfinite(ma) and np.isfinite(mb):
        return ma + (mb - ma) * f
    return ma + mb


@_parallel(_REDUCE_MATH)
def _stats_runs(x: Floats, nsplit: int) -> tuple[F64, F64]:
    N, A, C, B = x.shape
    M = A * B
    ngroup = N * C
    chunk = (M + nsplit - 1) // nsplit
    part = np.zeros((ngroup * nsplit, 3))
    for t in prange(ngroup * nsplit):
        g = t // nsplit
        k = t - g * nsplit
        n = g // C
        c = g - n * C
        j0 = k * chunk
        j1 = min(M, j0 + chunk)
        cnt = 0.0
        mean = 0.0
        m2 = 0.0
        j = j0
        while j < j1:
            je = min(j1, j + BLOCK)
            s = 0.0
            jj = j
            while jj < je:
                a = jj // B
                b0 = jj - a * B
                b1 = min(B, b0 + (je - jj))
                seg = x[n, a, c, b0:b1]
                for i in range(b1 - b0):
                    s += np.float64(seg[i])
                jj += b1 - b0
            nb = np.float64(je - j)
            mb = s / nb
            q = 0.0
            jj = j
            while jj < je:
                a = jj // B
                b0 = jj - a * B
                b1 = min(B, b0 + (je - jj))
                seg = x[n, a, c, b0:b1]
                for i in range(b1 - b0):
                    d = np.float64(seg[i]) - mb
                    q += d * d
                jj += b1 - b0
            tot = cnt + nb
            d = mb - mean
            mean = _chan_mean(mean, mb, nb / tot)
            m2 += q + d * d * (cnt * nb / tot)
            cnt = tot
            j = je
        part[t, 0] = cnt
        part[t, 1] = mean
        part[t, 2] = m2
    return _merge_parts(part.reshape(N, C, nsplit, 3))


@_parallel(_REDUCE_MATH)
def _stats_lanes(x: Floats, nsplit: int) -> tuple[F64, F64]:
    N, A, C = x.shape
    chunk = (A + nsplit - 1) // nsplit
    part = np.zeros((N, C, nsplit, 3))
    for t in prange(N * nsplit):
        n = t // nsplit
        k = t - n * nsplit
        mean = np.empty(C)
        m2 = np.empty(C)
        cnt = _lane_moments(x, n, k * chunk, min(A, (k + 1) * chunk), mean, m2)
        for c in range(C):
            part[n, c, k, 0] = cnt
            part[n, c, k, 1] = mean[c]
            part[n, c, k, 2] = m2[c]
    return _merge_parts(part)


@njit(cache=True)
def _merge_parts(part: F64) -> tuple[F64, F64]:
    """Chan-merge ``part[n, c, k] = (count, mean, M2)`` over ``k``."""
    N, C, K, _ = part.shape
    mean = np.zeros((N, C))
    m2 = np.zeros((N, C))
    for n in range(N):
        for c in range(C):
            cnt = 0.0
            mu = 0.0
            q = 0.0
            for k in range(K):
                nb = part[n, c, k, 0]
                if nb == 0.0:
                    continue
                tot = cnt + nb
                d = part[n, c, k, 1] - mu
                mu = _chan_mean(mu, part[n, c, k, 1], nb / tot)
                q += part[n, c, k, 2] + d * d * (cnt * nb / tot)
                cnt = tot
            mean[n, c] = mu
            m2[n, c] = q
    return mean, m2


# ----------------------------------------------------------------------------
# apply: y = ((x - hi) - lo) * scale + shift
# ----------------------------------------------------------------------------


@njit(inline="always")
def _row_task(t: int, nsplit: int, A: int, C: int, B: int) -> tuple[int, int, int, int, int]:
    """Task ``t`` of an elementwise pass: row ``(n, a, c)`` and its piece ``[b0, b1)``."""
    r = t // nsplit
    k = t - r * nsplit
    n = r // (A * C)
    rem = r - n * (A * C)
    a = rem // C
    c = rem - a * C
    chunk = (B + nsplit - 1) // nsplit
    b0 = k * chunk
    return n, a, c, b0, min(B, b0 + chunk)


# The kernels that write a normalization's output take an epilogue (see epilogue below):
# ``res`` and ``dy`` (arrays of the output's shape; the output itself where absent), ``act``,
# ``slope``, ``has_res``, ``has_dy``.  It is applied to each run or row just written, while
# it is in cache.


@_parallel(_ELEMENTWISE_MATH)
def _apply_runs(x: Floats, hi: Floats, lo: Floats, scale: Floats, shift: Floats, out: Floats, nsplit: int,
                res: Floats, dy: Floats, act: int, slope: float, has_res: bool, has_dy: bool) -> None:
    N, A, C, B = x.shape
    epi = act != 0 or has_res or has_dy
    for t in prange(N * A * C * nsplit):
        n, a, c, b0, b1 = _row_task(t, nsplit, A, C, B)
        h = hi[n, c]
        lw = lo[n, c]
        s = scale[n, c]
        o = shift[n, c]
        xs = x[n, a, c, b0:b1]
        ys = out[n, a, c, b0:b1]
        for i in range(b1 - b0):
            ys[i] = ((xs[i] - h) - lw) * s + o
        if epi:
            _epi_run(ys, res[n, a, c, b0:b1], dy[n, a, c, b0:b1], act, slope, has_res, has_dy)


@_parallel(_ELEMENTWISE_MATH)
def _apply_lanes(x: Floats, hi: Floats, scale: Floats, shift: Floats, out: Floats,
                 res: Floats, dy: Floats, act: int, slope: float, has_res: bool, has_dy: bool) -> None:
    # lo is folded into shift (see apply): one load and one subtraction fewer
    # per value, which the channels-last loop, compute-bound, notices
    N, A, C = x.shape
    epi = act != 0 or has_res or has_dy
    for r in prange(N * A):
        n = r // A
        a = r - n * A
        xs = x[n, a]
        ys = out[n, a]
        h = hi[n]
        s = scale[n]
        o = shift[n]
        for c in range(C):
            ys[c] = (xs[c] - h[c]) * s[c] + o[c]
        if epi:
            _epi_run(ys, res[n, a], dy[n, a], act, slope, has_res, has_dy)


# ----------------------------------------------------------------------------
# backward: sums per group, then dx = k1 * dy + k2 * ((x - hi) - lo) * rstd + k3
# ----------------------------------------------------------------------------


@_parallel(_REDUCE_MATH)
def _backward_reduce_runs(x: Floats, dy: Floats, mean: F64, nsplit: int) -> tuple[F64, F64]:
    N, A, C, B = x.shape
    M = A * B
    ngroup = N * C
    chunk = (M + nsplit - 1) // nsplit
    part = np.zeros((2, ngroup, nsplit))
    for t in prange(ngroup * nsplit):
        g = t // nsplit
        k = t - g * nsplit
        n = g // C
        c = g - n * C
        mu = mean[n, c]
        s1 = 0.0
        s2 = 0.0
        jj = k * chunk
        je = min(M, jj + chunk)
        while jj < je:
            a = jj // B
            b0 = jj - a * B
            b1 = min(B, b0 + (je - jj))
            xs = x[n, a, c, b0:b1]
            gs = dy[n, a, c, b0:b1]
            for i in range(b1 - b0):
                gv = np.float64(gs[i])
                s1 += gv
                s2 += gv * (np.float64(xs[i]) - mu)
            jj += b1 - b0
        part[0, g, k] = s1
        part[1, g, k] = s2
    sums = part.sum(axis=2)
    return sums[0].reshape(N, C), sums[1].reshape(N, C)


@_parallel(_REDUCE_MATH)
def _backward_reduce_lanes(x: Floats, dy: Floats, mean: F64, nsplit: int) -> tuple[F64, F64]:
    N, A, C = x.shape
    chunk = (A + nsplit - 1) // nsplit
    part = np.zeros((2, N, nsplit, C))
    for t in prange(N * nsplit):
        n = t // nsplit
        k = t - n * nsplit
        mu = mean[n]
        s1 = np.zeros(C)
        s2 = np.zeros(C)
        for i in range(k * chunk, min(A, (k + 1) * chunk)):
            xs = x[n, i]
            gs = dy[n, i]
            for c in range(C):
                gv = np.float64(gs[c])
                s1[c] += gv
                s2[c] += gv * (np.float64(xs[c]) - mu[c])
        part[0, n, k] = s1
        part[1, n, k] = s2
    sums = part.sum(axis=2)
    return sums[0].copy(), sums[1].copy()


@_parallel(_ELEMENTWISE_MATH)
def _backward_apply_runs(x: Floats, dy: Floats, hi: Floats, lo: Floats, rstd: Floats, k1: Floats,
                         k2: Floats, k3: Floats, dx: Floats, nsplit: int) -> None:
    N, A, C, B = x.shape
    for t in prange(N * A * C * nsplit):
        n, a, c, b0, b1 = _row_task(t, nsplit, A, C, B)
        h = hi[n, c]
        lw = lo[n, c]
        rs = rstd[n, c]
        p = k1[n, c]
        q = k2[n, c]
        o = k3[n, c]
        xs = x[n, a, c, b0:b1]
        gs = dy[n, a, c, b0:b1]
        ds = dx[n, a, c, b0:b1]
        for i in range(b1 - b0):
            ds[i] = p * gs[i] + q * (((xs[i] - h) - lw) * rs) + o


@_parallel(_ELEMENTWISE_MATH)
def _backward_apply_lanes(x: Floats, dy: Floats, hi: Floats, rstd: Floats, k1: Floats, k2: Floats,
                          k3: Floats, dx: Floats) -> None:
    # lo folded into k3, as in _apply_lanes
    N, A, C = x.shape
    for r in prange(N * A):
        n = r // A
        a = r - n * A
        xs = x[n, a]
        gs = dy[n, a]
        ds = dx[n, a]
        h = hi[n]
        rs = rstd[n]
        p = k1[n]
        q = k2[n]
        o = k3[n]
        for c in range(C):
            ds[c] = p[c] * gs[c] + q[c] * ((xs[c] - h[c]) * rs[c]) + o[c]


# ----------------------------------------------------------------------------
# rows (LayerNorm / RMSNorm): one fused pass per row while it sits in cache
# ----------------------------------------------------------------------------
#
# A row is reduced (two-pass per block, Chan merge) and normalized before the
# next is touched, so each byte is read from memory once.  The reduction and
# the elementwise halves are separate functions because fastmath flags are
# per function: only the reductions may reassociate.  A one-element array per
# task rounds float64 scalars to the data type (``_rounded``); it is never the
# output, which may be the input itself (``out=x``).


@njit()
def _rounded(tmp: Floats, value: float | Scalar) -> Scalar:
    """``value`` rounded to ``tmp``'s dtype."""
    tmp[0] = value
    rounded: Scalar = tmp[0]
    return rounded


@njit(fastmath=_REDUCE_MATH)
def _squares_about(seg: Floats, mb: float) -> float:
    """``sum((seg - mb)**2)`` in float64."""
    q = 0.0
    for i in range(seg.shape[0]):
        d = np.float64(seg[i]) - mb
        q += d * d
    return q


@njit(fastmath=_REDUCE_MATH)
def _row_moments(row: Floats, center: bool) -> tuple[float, float]:
    """(mean, variance) of a 1-D row in float64; ``center=False``: (0, mean of squares),
    summed directly per block (terms of one sign: nothing cancels, and a row holding an
    infinity has an infinite mean square, as the formula says)."""
    M = row.shape[0]
    if not center:
        sq = 0.0
        for j0 in range(0, M, BLOCK):
            sq += _squares_about(row[j0:min(M, j0 + BLOCK)], 0.0)
        return 0.0, sq / M
    cnt = 0.0
    mean = 0.0
    m2 = 0.0
    for j0 in range(0, M, BLOCK):
        j1 = min(M, j0 + BLOCK)
        seg = row[j0:j1]
        s = 0.0
        for i in range(j1 - j0):
            s += np.float64(seg[i])
        nb = np.float64(j1 - j0)
        mb = s / nb
        q = _squares_about(seg, mb)
        tot = cnt + nb
        d = mb - mean
        mean = _chan_mean(mean, mb, nb / tot)
        m2 += q + d * d * (cnt * nb / tot)
        cnt = tot
    return mean, m2 / M


@njit(fastmath=_ELEMENTWISE_MATH)
def _row_normalize(row: Floats, out: Floats, h: Scalar, lw: Scalar, s: Scalar, w: Floats,
                   b: Floats) -> None:
    """``out = (((row - h) - lw) * s) * w + b``; an empty ``w`` or ``b`` is not applied."""
    n = row.shape[0]
    if w.shape[0] and b.shape[0]:
        for i in range(n):
            out[i] = (((row[i] - h) - lw) * s) * w[i] + b[i]
    elif w.shape[0]:
        for i in range(n):
            out[i] = (((row[i] - h) - lw) * s) * w[i]
    elif b.shape[0]:
        for i in range(n):
            out[i] = ((row[i] - h) - lw) * s + b[i]
    else:
        for i in range(n):
            out[i] = ((row[i] - h) - lw) * s


@njit(fastmath=_REDUCE_MATH)
def _row_grad_sums(xrow: Floats, gyrow: Floats, w: F64, mu: float, rs: float) -> tuple[float, float]:
    """``(sum(g), sum(g * xhat))`` of a row in float64, with ``g = dy * w``."""
    sg = 0.0
    sgx = 0.0
    for i in range(xrow.shape[0]):
        xh = (np.float64(xrow[i]) - mu) * rs
        g = np.float64(gyrow[i]) * w[i]
        sg += g
        sgx += g * xh
    return sg, sgx


@njit(fastmath=_ELEMENTWISE_MATH)
def _row_grad_apply(xrow: Floats, gyrow: Floats, dxrow: Floats, h: Scalar, lw: Scalar, s: Scalar,
                    w: Floats, k2: Scalar, k3: Scalar, gw: Floats, gb: Floats) -> None:
    """``dx`` of a row; adds the row's ``dy * xhat`` and ``dy`` into the column sums ``gw``, ``gb``."""
    for i in range(xrow.shape[0]):
        xh = ((xrow[i] - h) - lw) * s
        g = gyrow[i]
        dxrow[i] = (s * w[i]) * g + k2 * xh + k3
        gw[i] += g * xh
        gb[i] += g


@njit(fastmath=_ELEMENTWISE_MATH)
def _row_one(row: Floats, out: Floats, w: Floats, b: Floats, eps: float, center: bool,
             tmp: Floats) -> tuple[float, float]:
    """Normalize one row into ``out``; returns ``(mean, rstd)``."""
    mu, var = _row_moments(row, center)
    rs = 1.0 / np.sqrt(var + eps)
    h = _rounded(tmp, mu)
    _row_normalize(row, out, h, _rounded(tmp, mu - h), _rounded(tmp, rs), w, b)
    return mu, rs


@_parallel(_ELEMENTWISE_MATH)
def _rows_forward(x: Floats, w: Floats, b: Floats, eps: float, center: bool, out: Floats, ntask: int,
                  res: Floats, dy: Floats, act: int, slope: float, has_res: bool, has_dy: bool,
                  pre: Floats, hsum: Floats, has_pre: bool) -> tuple[F64, F64]:
    """``has_pre``: the rows normalized are ``x + pre``, written to ``hsum`` first."""
    R, M = x.shape
    mean = np.empty(R)
    rstd = np.empty(R)
    chunk = (R + ntask - 1) // ntask
    epi = act != 0 or has_res or has_dy
    for t in prange(ntask):
        tmp = np.empty(1, x.dtype)
        for r in range(t * chunk, min(R, (t + 1) * chunk)):
            if has_pre:
                hs = hsum[r]
                xr = x[r]
                pr = pre[r]
                for i in range(M):
                    hs[i] = xr[i] + pr[i]
                mu, rs = _row_one(hs, out[r], w, b, eps, center, tmp)
            else:
                mu, rs = _row_one(x[r], out[r], w, b, eps, center, tmp)
            mean[r] = mu
            rstd[r] = rs
            if epi:
                _epi_run(out[r], res[r], dy[r], act, slope, has_res, has_dy)
    return mean, rstd


@_parallel(_ELEMENTWISE_MATH)
def _rows_apply(x: Floats, mean: F64, rstd: F64, w: Floats, b: Floats, out: Floats, ntask: int,
                res: Floats, dy: Floats, act: int, slope: float, has_res: bool, has_dy: bool) -> None:
    """Rows normalized with given float64 statistics (nothing reduced)."""
    R = x.shape[0]
    chunk = (R + ntask - 1) // ntask
    epi = act != 0 or has_res or has_dy
    for t in prange(ntask):
        tmp = np.empty(1, x.dtype)
        for r in range(t * chunk, min(R, (t + 1) * chunk)):
            mu = mean[r]
            h = _rounded(tmp, mu)
            _row_normalize(x[r], out[r], h, _rounded(tmp, mu - h), _rounded(tmp, rstd[r]), w, b)
            if epi:
                _epi_run(out[r], res[r], dy[r], act, slope, has_res, has_dy)


@_parallel(_ELEMENTWISE_MATH)
def _rows_backward(x: Floats, dy: Floats, mean: F64, rstd: F64, w64: F64, w: Floats, center: bool,
                   dx: Floats, ntask: int, count: F64, has_count: bool) -> tuple[F64, F64]:
    # The weight/bias gradients are column sums over rows: each task adds a
    # few rows into data-type buffers while it writes dx (the values are in
    # registers then), and flushes them into float64 every COLUMN_FLUSH rows.
    R, M = x.shape
    gw = np.zeros((ntask, M))
    gb = np.zeros((ntask, M))
    chunk = (R + ntask - 1) // ntask
    for t in prange(ntask):
        tmp = np.empty(1, x.dtype)
        gw_t = np.zeros(M, x.dtype)
        gb_t = np.zeros(M, x.dtype)
        pending = 0
        for r in range(t * chunk, min(R, (t + 1) * chunk)):
            mu = mean[r]
            rs = rstd[r]
            sg, sgx = _row_grad_sums(x[r], dy[r], w64, mu, rs)
            cnt = np.float64(M)
            if has_count:
                cnt = count[r] if count[r] > 0 else 1.0
            k2 = _rounded(tmp, -rs * (sgx / cnt))
            k3 = _rounded(tmp, -rs * (sg / cnt) if center else 0.0)
            h = _rounded(tmp, mu)
            _row_grad_apply(
                x[r], dy[r], dx[r], h, _rounded(tmp, mu - h), _rounded(tmp, rs), w, k2, k3, gw_t, gb_t
            )
            pending += 1
            if pending == COLUMN_FLUSH:
                for i in range(M):
                    gw[t, i] += gw_t[i]
                    gb[t, i] += gb_t[i]
                gw_t[:] = 0
                gb_t[:] = 0
                pending = 0
        for i in range(M):
            gw[t, i] += gw_t[i]
            gb[t, i] += gb_t[i]
    return gw.sum(axis=0), gb.sum(axis=0)


# ----------------------------------------------------------------------------
# grouped rows (channels-first InstanceNorm / GroupNorm): a statistics group is
# one contiguous row of K channels x S values; reduce and normalize it in one
# pass while it sits in cache, per-channel affine
# ----------------------------------------------------------------------------


@njit(fastmath=_ELEMENTWISE_MATH)
def _seg_normalize(seg: Floats, out: Floats, h: Scalar, lw: Scalar, s: Scalar, o: Scalar) -> None:
    for i in range(seg.shape[0]):
        out[i] = ((seg[i] - h) - lw) * s + o


@njit(fastmath=_REDUCE_MATH)
def _seg_grad_sums(xseg: Floats, gyseg: Floats, mu: float) -> tuple[float, float]:
    """``(sum(dy), sum(dy * (x - mu)))`` over a segment, in float64."""
    s1 = 0.0
    s2 = 0.0
    for i in range(xseg.shape[0]):
        d = np.float64(gyseg[i])
        s1 += d
        s2 += d * (np.float64(xseg[i]) - mu)
    return s1, s2


@njit(fastmath=_ELEMENTWISE_MATH)
def _seg_grad_apply(xseg: Floats, gyseg: Floats, dxseg: Floats, h: Scalar, lw: Scalar, rs: Scalar,
                    p: Scalar, k2: Scalar, k3: Scalar) -> None:
    for i in range(xseg.shape[0]):
        dxseg[i] = p * gyseg[i] + k2 * (((xseg[i] - h) - lw) * rs) + k3


@_parallel(_ELEMENTWISE_MATH)
def _grouped_forward(x: Floats, G: int, S: int, w: F64, b: Floats, eps: float, out: Floats, ntask: int,
                     res: Floats, dy: Floats, act: int, slope: float, has_res: bool,
                     has_dy: bool) -> tuple[F64, F64]:
    R, L = x.shape
    K = L // S
    mean = np.empty(R)
    variance = np.empty(R)
    chunk = (R + ntask - 1) // ntask
    epi = act != 0 or has_res or has_dy
    for t in prange(ntask):
        tmp = np.empty(1, x.dtype)
        for r in range(t * chunk, min(R, (t + 1) * chunk)):
            mu, var = _row_moments(x[r], True)
            rs = 1.0 / np.sqrt(var + eps)
            mean[r] = mu
            variance[r] = var
            h = _rounded(tmp, mu)
            lw = _rounded(tmp, mu - h)
            c0 = (r % G) * K
            for k in range(K):
                _seg_normalize(
                    x[r, k * S:(k + 1) * S], out[r, k * S:(k + 1) * S],
                    h, lw, _rounded(tmp, rs * w[c0 + k]), b[c0 + k],
                )
                if epi:
                    _epi_run(out[r, k * S:(k + 1) * S], res[r, k * S:(k + 1) * S],
                             dy[r, k * S:(k + 1) * S], act, slope, has_res, has_dy)
    return mean, variance


@_parallel(_ELEMENTWISE_MATH)
def _grouped_backward(x: Floats, dy: Floats, mean: F64, rstd: F64, G: int, S: int, w64: F64, dx: Floats,
                      ntask: int) -> tuple[F64, F64]:
    R, L = x.shape
    K = L // S
    C = G * K
    gw = np.zeros((ntask, C))
    gb = np.zeros((ntask, C))
    chunk = (R + ntask - 1) // ntask
    for t in prange(ntask):
        tmp = np.empty(1, x.dtype)
        for r in range(t * chunk, min(R, (t + 1) * chunk)):
            mu = mean[r]
            rs = rstd[r]
            c0 = (r % G) * K
            sg = 0.0
            sgx = 0.0
            for k in range(K):
                s1, s2 = _seg_grad_sums(x[r, k * S:(k + 1) * S], dy[r, k * S:(k + 1) * S], mu)
                gb[t, c0 + k] += s1
                gw[t, c0 + k] += s2 * rs
                sg += w64[c0 + k] * s1
                sgx += w64[c0 + k] * s2
            k2 = _rounded(tmp, -rs * (sgx * rs / L))
            k3 = _rounded(tmp, -rs * (sg / L))
            h = _rounded(tmp, mu)
            lw = _rounded(tmp, mu - h)
            rs_t = _rounded(tmp, rs)
            for k in range(K):
                _seg_grad_apply(
                    x[r, k * S:(k + 1) * S], dy[r, k * S:(k + 1) * S], dx[r, k * S:(k + 1) * S],
                    h, lw, rs_t, _rounded(tmp, rs * w64[c0 + k]), k2, k3,
                )
    return gw.sum(axis=0), gb.sum(axis=0)


# ----------------------------------------------------------------------------
# channels-last samples (InstanceNorm / GroupNorm, B == 1): per-channel
# statistics of one sample, merged per group, then the sample is normalized
# while it is still in cache
# ----------------------------------------------------------------------------


@njit(fastmath=_REDUCE_MATH)
def _lane_moments(x: Floats, n: int, a0: int, a1: int, mean: F64, m2: F64) -> float:
    """Per-channel (mean, M2) of rows ``a0..a1`` of sample ``n`` into ``mean``/``m2``; returns the count.

    Per block of rows (at least LANE_MIN_ROWS, so that wide rows amortize the
    per-channel merge): float64 block means, float64 squared deviations about
    them, then a vectorized Chan merge.
    """
    C = x.shape[2]
    rows = max(LANE_MIN_ROWS, LANE_BLOCK // max(C, 1))
    s = np.empty(C)
    q = np.empty(C)
    mean[:] = 0.0
    m2[:] = 0.0
    cnt = 0.0
    a = a0
    while a < a1:
        ae = min(a1, a + rows)
        s[:] = 0.0
        for i in range(a, ae):
            xs = x[n, i]
            for k in range(C):
                s[k] += np.float64(xs[k])
        nb = np.float64(ae - a)
        for k in range(C):
            s[k] /= nb
        q[:] = 0.0
        for i in range(a, ae):
            xs = x[n, i]
            for k in range(C):
                d = np.float64(xs[k]) - s[k]
                q[k] += d * d
        tot = cnt + nb
        f = nb / tot
        w = cnt * nb / tot
        for k in range(C):
            d = s[k] - mean[k]
            mean[k] = _chan_mean(mean[k], s[k], f)
            m2[k] += q[k] + d * d * w
        cnt = tot
        a = ae
    return cnt


@njit(fastmath=_ELEMENTWISE_MATH)
def _lanes_normalize(x: Floats, n: int, hi: Floats, scale: Floats, shift: Floats, out: Floats,
                     res: Floats, dy: Floats, act: int, slope: float, has_res: bool, has_dy: bool) -> None:
    A = x.shape[1]
    C = x.shape[2]
    epi = act != 0 or has_res or has_dy
    for i in range(A):
        xs = x[n, i]
        ys = out[n, i]
        for c in range(C):
            ys[c] = (xs[c] - hi[c]) * scale[c] + shift[c]
        if epi:
            _epi_run(ys, res[n, i], dy[n, i], act, slope, has_res, has_dy)


@_parallel(_ELEMENTWISE_MATH)
def _samples_forward(x: Floats, G: int, w: F64, b: Floats, eps: float, out: Floats,
                     res: Floats, dy: Floats, act: int, slope: float, has_res: bool,
                     has_dy: bool) -> tuple[F64, F64]:
    N, A, C = x.shape
    K = C // G
    gmean = np.empty((N, G))
    gvar = np.empty((N, G))
    for n in prange(N):
        mean = np.empty(C)
        m2 = np.empty(C)
        cnt = _lane_moments(x, n, 0, A, mean, m2)
        hi = np.empty(C, x.dtype)
        shift = np.empty(C, x.dtype)
        scale = np.empty(C, x.dtype)
        for g in range(G):
            mu = 0.0
            for k in range(K):
                mu += mean[g * K + k]
            mu /= K
            var = 0.0
            for k in range(K):
                d = mean[g * K + k] - mu
                var += m2[g * K + k] / cnt + d * d
            var /= K
            gmean[n, g] = mu
            gvar[n, g] = var
            rs = 1.0 / np.sqrt(var + eps)
            for k in range(K):
                c = g * K + k
                hi[c] = mu
                sc = rs * w[c]
                scale[c] = sc
                shift[c] = b[c] - (mu - np.float64(hi[c])) * sc
        _lanes_normalize(x, n, hi, scale, shift, out, res, dy, act, slope, has_res, has_dy)
    return gmean, gvar


# ----------------------------------------------------------------------------
# host side: splitting, precision of coefficients, thread count
# ----------------------------------------------------------------------------

_serial = threading.Lock()
_no_threads = False  # the kernels are the serial builds (see _after_fork)


def _serial_build(name: str) -> Dispatcher[Callable[..., Any]]:
    """The kernel ``name`` compiled without ``parallel`` (its ``prange`` loops run in order).

    A copy of the function under another name, so that Numba's on-disk cache, which
    tells compilations apart by function and types but not by options, keeps both.
    """
    fn = globals()[name].py_func
    twin = types.FunctionType(fn.__code__, fn.__globals__, f"{name}_serial", fn.__defaults__,
                              fn.__closure__)
    twin.__qualname__ = f"{fn.__qualname__}_serial"
    twin.__doc__ = fn.__doc__
    return njit(cache=True, fastmath=_PARALLEL[name])(twin)


def _after_fork() -> None:
    """In a forked process (:mod:`fastnorm.backends._openmp`).

    Where Numba had started its ``omp`` layer before the fork, a parallel kernel
    would end the process: the kernels are replaced by their serial builds
    (compiled on first use).  Where Numba had not started a layer but the
    process inherited a GNU OpenMP pool, Numba is kept off ``omp`` (TBB or
    workqueue instead, both fork-safe) where the choice is its own, so that the
    kernels stay parallel; where it was told to use ``omp``, the serial builds.
    """
    global _no_threads
    if _no_threads:
        return
    if not _openmp.numba_omp_inherited():
        if not _openmp.gomp_unusable() or _openmp.numba_layer() is not None:
            return
        config: Any = numba.config  # its settings are made at run time, unknown to mypy
        chosen = str(config.THREADING_LAYER).lower()
        if chosen in ("safe", "forksafe", "tbb", "workqueue"):
            return
        if chosen == "default":
            priority = list(config.THREADING_LAYER_PRIORITY)
            config.THREADING_LAYER_PRIORITY = [p for p in priority if p != "omp"] + ["omp"]
            return
    for name in _PARALLEL:
        globals()[name] = _serial_build(name)
    _no_threads = True


_openmp.on_fork_in_child(_after_fork)
_after_fork()  # imported in a forked child


def _threads(size: int) -> int:
    return threads_for(size, get_num_threads())


def _launch(threads: int) -> contextlib.AbstractContextManager[object]:
    """Set this thread's Numba thread count; serialize launches on a non-threadsafe layer."""
    if _no_threads:
        _openmp.warn_serial("numba", stacklevel=4)
        return contextlib.nullcontext()
    numba.set_num_threads(threads)
    try:
        layer = threading_layer()
    except ValueError:  # no parallel kernel has run yet
        return _serial
    return _serial if layer == "workqueue" else contextlib.nullcontext()


def stats(x4: Floats) -> tuple[F64, F64]:
    N, A, C, B = x4.shape
    threads = _threads(x4.size)
    with _launch(threads):
        if B == 1:
            return _stats_lanes(x4.reshape(N, A, C), split(N, A * C, threads))
        return _stats_runs(x4, split(N * C, A * B, threads))


#: epilogues (:class:`fastnorm._core.Epilogue`) run in the kernels' pass, on each run or row
#: just written (``epi=``)
FUSED_EPILOGUES = True


def _epi_args(epi: Epi | None, out: Floats) -> tuple[Floats, Floats, int, float, bool, bool]:
    """The kernels' epilogue arguments ``(res, dy, act, slope, has_res, has_dy)``, arrays of
    ``out``'s shape (``out`` itself standing for an absent one)."""
    if epi is None:
        return out, out, 0, 0.0, False, False
    act, slope, res, dy = epi
    return (out if res is None else res.reshape(out.shape), out if dy is None else dy.reshape(out.shape),
            int(act), float(slope), res is not None, dy is not None)


def apply(x4: Floats, mean: F64, scale: F64, shift: F64, out4: Floats, epi: Epi | None = None) -> None:
    N, A, C, B = x4.shape
    dt = x4.dtype
    threads = _threads(x4.size)
    with _launch(threads):
        if B == 1:
            shape = (N, A, C)
            hi, scale_t, shift_t = apply_folded(mean, scale, shift, dt)
            out3 = out4.reshape(shape)
            _apply_lanes(x4.reshape(shape), hi, scale_t, shift_t, out3, *_epi_args(epi, out3))
        else:
            hi, lo = hi_lo(mean, dt)
            _apply_runs(x4, hi, lo, scale.astype(dt), shift.astype(dt), out4, split(N * A * C, B, threads),
                        *_epi_args(epi, out4))


def backward_reduce(x4: Floats, dy4: Floats, mean: F64) -> tuple[F64, F64]:
    N, A, C, B = x4.shape
    threads = _threads(x4.size)
    with _launch(threads):
        if B == 1:
            shape = (N, A, C)
            return _backward_reduce_lanes(
                x4.reshape(shape), dy4.reshape(shape), mean, split(N, A * C, threads)
            )
        return _backward_reduce_runs(x4, dy4, mean, split(N * C, A * B, threads))


def backward_apply(x4: Floats, dy4: Floats, mean: F64, rstd: F64, k1: F64, k2: F64, k3: F64,
                   dx4: Floats) -> None:
    N, A, C, B = x4.shape
    dt = x4.dtype
    threads = _threads(x4.size)
    with _launch(threads):
        if B == 1:
            shape = (N, A, C)
            hi, rstd_t, k1_t, k2_t, k3_t = backward_folded(mean, rstd, k1, k2, k3, dt)
            _backward_apply_lanes(
                x4.reshape(shape), dy4.reshape(shape), hi, rstd_t, k1_t, k2_t, k3_t, dx4.reshape(shape)
            )
        else:
            hi, lo = hi_lo(mean, dt)
            rstd_t, k1_t, k2_t, k3_t = rstd.astype(dt), k1.astype(dt), k2.astype(dt), k3.astype(dt)
            _backward_apply_runs(
                x4, dy4, hi, lo, rstd_t, k1_t, k2_t, k3_t, dx4, split(N * A * C, B, threads)
            )


def _row_tasks(rows: int, size: int) -> tuple[int, int]:
    threads = _threads(size)
    return threads, row_tasks(rows, threads)


#: stands for an absent weight or bias of the row kernels (no all-ones or all-zeros array per call)
_ABSENT = {np.dtype(t): np.empty(0, t) for t in (np.float32, np.float64)}


def rows_forward(x2: Floats, weight: Floats | None, bias: Floats | None, eps: float, center: bool,
                 out2: Floats, epi: Epi | None = None, res: Floats | None = None,
                 hsum: Floats | None = None) -> tuple[F64, F64]:
    """``res``: the rows normalized are ``x2 + res``, also written to ``hsum``."""
    R = x2.shape[0]
    dt = x2.dtype
    w = _ABSENT[dt] if weight is None else np.asarray(weight, dt)
    b = _ABSENT[dt] if bias is None else np.asarray(bias, dt)
    threads, ntask = _row_tasks(R, x2.size)
    if res is None:
        pre = (out2, out2, False)
    else:
        assert hsum is not None, "hsum is given with res"
        pre = (res, hsum, True)
    with _launch(threads):
        return _rows_forward(x2, w, b, float(eps), bool(center), out2, ntask, *_epi_args(epi, out2), *pre)


def rows_apply(x2: Floats, mean: F64, rstd: F64, weight: Floats | None, bias: Floats | None,
               out2: Floats, epi: Epi | None = None) -> None:
    """Normalize each row of ``x2`` ``(R, M)`` with given float64 ``(R,)`` statistics."""
    R = x2.shape[0]
    dt = x2.dtype
    w = _ABSENT[dt] if weight is None else np.asarray(weight, dt)
    b = _ABSENT[dt] if bias is None else np.asarray(bias, dt)
    threads, ntask = _row_tasks(R, x2.size)
    with _launch(threads):
        _rows_apply(x2, np.ascontiguousarray(mean, np.float64), np.ascontiguousarray(rstd, np.float64),
                    w, b, out2, ntask, *_epi_args(epi, out2))


def rows_backward(x2: Floats, dy2: Floats, mean: F64, rstd: F64, weight: Floats | None, center: bool,
                  dx2: Floats, count: F64 | None = None) -> tuple[F64, F64]:
    """``count``: float64 ``(R,)`` values per row's statistics (a masked forward's), else ``M``."""
    R, M = x2.shape
    dt = x2.dtype
    w64 = np.ones(M) if weight is None else weight.astype(np.float64)
    threads, ntask = _row_tasks(R, x2.size)
    has_count = count is not None
    count = np.ascontiguousarray(count, np.float64) if has_count else mean
    with _launch(threads):
        return _rows_backward(x2, dy2, mean, rstd, w64, w64.astype(dt), bool(center), dx2, ntask,
                              count, has_count)


def grouped_forward(x2: Floats, groups: int, channel_len: int, weight: F64 | None, bias: F64 | None,
                    eps: float, out2: Floats, epi: Epi | None = None) -> tuple[F64, F64]:
    R, L = x2.shape
    C = groups * (L // channel_len)
    dt = x2.dtype
    w = np.ones(C) if weight is None else weight
    b = np.zeros(C, dt) if bias is None else bias.astype(dt)
    threads, ntask = _row_tasks(R, x2.size)
    with _launch(threads):
        return _grouped_forward(x2, groups, channel_len, w, b, float(eps), out2, ntask, *_epi_args(epi, out2))


def grouped_backward(x2: Floats, dy2: Floats, mean: F64, rstd: F64, groups: int, channel_len: int,
                     weight: F64 | None, dx2: Floats) -> tuple[F64, F64]:
    R, L = x2.shape
    C = groups * (L // channel_len)
    w64 = np.ones(C) if weight is None else weight.astype(np.float64)
    threads, ntask = _row_tasks(R, x2.size)
    with _launch(threads):
        return _grouped_backward(x2, dy2, mean, rstd, groups, channel_len, w64, dx2, ntask)


def samples_forward(x3: Floats, groups: int, weight: F64 | None, bias: F64 | None, eps: float,
                    out3: Floats, epi: Epi | None = None) -> tuple[F64, F64]:
    C = x3.shape[2]
    dt = x3.dtype
    w = np.ones(C) if weight is None else weight
    b = np.zeros(C, dt) if bias is None else bias.astype(dt)
    with _launch(_threads(x3.size)):
        return _samples_forward(x3, groups, w, b, float(eps), out3, *_epi_args(epi, out3))


# ----------------------------------------------------------------------------
# epilogues: on a run just written by a normalization kernel, in cache
# ----------------------------------------------------------------------------

_SQRT1_2 = math.sqrt(0.5)
_SQRT2_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@njit(inline="always")
def _sigmoid(t: float) -> float:
    if t < -708.0:
        return 0.0
    return 1.0 / (1.0 + math.exp(-t))


@njit(inline="always")
def _act(v: float, act: int) -> float:
    """The smooth activation ``act`` (3 GELU, 4 GELU tanh, 5 SiLU) of float64 ``v``."""
    if act == 3:
        return 0.5 * v * math.erfc(-v * _SQRT1_2)
    if act == 4:
        return v * _sigmoid(2.0 * _SQRT2_PI * (v + 0.044715 * v * v * v))
    if act == 5:
        return v * _sigmoid(v)
    return v


@njit(inline="always")
def _dact(v: float, act: int) -> float:
    """The derivative of :func:`_act`."""
    if act == 3:
        return 0.5 * math.erfc(-v * _SQRT1_2) + v * math.exp(-0.5 * v * v) * _INV_SQRT_2PI
    if act == 4:
        s = _sigmoid(2.0 * _SQRT2_PI * (v + 0.044715 * v * v * v))
        return s + v * (s * (1.0 - s)) * (2.0 * _SQRT2_PI * (1.0 + 3.0 * 0.044715 * v * v))
    if act == 5:
        s = _sigmoid(v)
        return s * (1.0 + v * (1.0 - s))
    return 1.0


@njit(fastmath=_ELEMENTWISE_MATH)
def _epi_run(out: Floats, res: Floats, dy: Floats, act: int, slope: float, has_res: bool,
             has_dy: bool) -> None:
    """``out = act(out + res)``, or with ``has_dy`` ``dy * act'(out + res)``: the add and ReLU
    in the data type, the smooth activations in float64, rounded once."""
    slope_t = out.dtype.type(slope)
    for i in range(out.shape[0]):
        v = out[i]
        if has_res:
            v = v + res[i]
        if act == 1 or act == 2:  # in the data type, as the unfused sequence
            if has_dy:
                out[i] = dy[i] if v > 0 else (dy[i] * slope_t if act == 2 else 0)
            else:
                out[i] = v if not v < 0 else (v * slope_t if act == 2 else 0)
        elif has_dy:
            out[i] = dy[i] * _dact(float(v), act)
        else:
            out[i] = _act(float(v), act)


