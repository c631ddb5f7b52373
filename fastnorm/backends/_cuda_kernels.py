"""numba.cuda kernels of the CUDA backend (host side: :mod:`fastnorm.backends.cuda_gpu`).

Every kernel works on flat, C-contiguous device arrays and the canonical
``(N, A, C, B)`` view of :mod:`fastnorm._views`, with two loop shapes:

* ``*_runs`` (``B > 1``): a block reduces or maps a slice ``[j0, j1)`` of one
  group's ``A*B`` values; consecutive threads take consecutive values, so the
  loads are coalesced along ``b``.  A cursor ``(b, offset)`` advances by the
  block width without a division per value.
* ``*_lanes`` (``B == 1``, channels-last): a 2-D block, ``threadIdx.x`` along
  ``C`` (coalesced: ``C`` is the contiguous run), ``threadIdx.y`` along rows;
  each thread keeps statistics for one channel over a slice of rows, and the
  rows of the block are merged in shared memory.

When there are too few groups to fill the GPU, each group's reduction is cut
into ``nsplit`` pieces (one block each) whose partial statistics are merged at
the end (``fin_*`` kernels).  Every kernel loops over its tasks with a
grid-stride loop, so any grid size is correct; the host picks one.

Precision (as the CPU backends): statistics are float64 -- each thread takes
``VALUES`` values at a time into registers, two-pass (sum, then squared
deviations from that chunk's mean), and merges chunks, threads, blocks and
groups with Chan's formula.  ``E[x^2] - E[x]^2`` is never formed.  Elementwise
kernels compute in float32 for float16/float32 data (float64 for float64) and
subtract the float64 mean as a hi/lo pair ``(x - hi) - lo``.  float16 data is
read and written as float16 (widened on load, rounded once on store).

Block reductions use shared memory and ``cuda.syncthreads()`` only (no warp
shuffles), so the simulator (``NUMBA_ENABLE_CUDASIM=1``) runs exactly this
code.  Each ``cuda.shared.array`` is declared on its own line.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from typing import Any, ParamSpec, Protocol, TypeVar

import numpy as np
from numba import config, cuda, float64

from ._types import F64, Floats

SIMULATOR = bool(getattr(config, "ENABLE_CUDASIM", 0))


def _setting(name: str, default: int, low: int, high: int, pow2: bool = False) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
        if not low <= value <= high or (pow2 and value & (value - 1)):
            raise ValueError
    except ValueError:
        kind = "a power of two " if pow2 else ""
        warnings.warn(f"ignoring {name}={raw!r}: expected {kind}in [{low}, {high}]", RuntimeWarning,
                      stacklevel=2)
        return default
    return value


# Threads per block (a power of two: the shared-memory trees halve it), and
# values each thread holds in registers per two-pass chunk.  Read once, at
# import: the shared arrays are sized by THREADS at compile time.  The
# simulator runs one Python thread per CUDA thread, so its blocks are small.
THREADS = _setting("FASTNORM_CUDA_THREADS", 16 if SIMULATOR else 256, 4, 1024, pow2=True)
VALUES = _setting("FASTNORM_CUDA_VALUES", 2 if SIMULATOR else 8, 1, 64)


_P = ParamSpec("_P")
_Fn = TypeVar("_Fn", bound=Callable[..., Any])


class Kernel(Protocol[_P]):
    """A ``cuda.jit`` kernel: ``kernel[blocks, threads](*args)`` launches it (``threads``: an
    int, or the ``(x, y)`` shape of a block)."""

    def __getitem__(self, launch: tuple[int, int | tuple[int, int]]) -> Callable[_P, None]: ...


# numba.cuda is Any to mypy (pyproject.toml): the decorators of this module keep the
# signatures of the functions they compile
def _device(fn: _Fn) -> _Fn:
    """``@cuda.jit(device=True)``: a device function, called by kernels."""
    device: _Fn = cuda.jit(device=True)(fn)
    return device


def _kernel(fn: Callable[_P, None]) -> Kernel[_P]:
    """``@cuda.jit``: a kernel, launched by the host (:mod:`fastnorm.backends.cuda_gpu`)."""
    kernel: Kernel[_P] = cuda.jit(fn)
    return kernel


# ----------------------------------------------------------------------------
# device helpers
# ----------------------------------------------------------------------------


@_device
def _chan(na: float, ma: float, qa: float, nb: float, mb: float,
          qb: float) -> tuple[float, float, float]:
    """Chan's merge of (count, mean, M2) pairs, float64.

    Non-finite means merge as sums do (``inf + 1 = inf``, ``inf - inf = nan``),
    so a group's mean is ``sum(x) / n`` in IEEE arithmetic however it is split.
    """
    if nb == 0.0:
        return na, ma, qa
    if na == 0.0:
        return nb, mb, qb
    tot = na + nb
    d = mb - ma
    f = nb / tot
    if math.isfinite(ma) and math.isfinite(mb):
        mean = ma + d * f
    else:
        mean = ma + mb
    return tot, mean, qa + qb + d * d * (na * f)


@_device
def _tree_chan(sc: F64, sm: F64, sq: F64, i: int, lane: int, span: int, stride: int) -> None:
    """Merge ``span`` (a power of two) shared entries ``i * stride + lane`` into ``i = 0``.

    Every thread of the block calls it (it synchronizes); the caller has
    synchronized after writing its entry.
    """
    s = span // 2
    while s > 0:
        if i < s:
            p = i * stride + lane
            o = p + s * stride
            cnt, mu, q = _chan(sc[p], sm[p], sq[p], sc[o], sm[o], sq[o])
            sc[p] = cnt
            sm[p] = mu
            sq[p] = q
        cuda.syncthreads()
        s //= 2


@_device
def _tree_sum2(s1: F64, s2: F64, i: int, lane: int, span: int, stride: int) -> None:
    """Sum two shared arrays over ``span`` entries, as :func:`_tree_chan`."""
    s = span // 2
    while s > 0:
        if i < s:
            p = i * stride + lane
            o = p + s * stride
            s1[p] += s1[o]
            s2[p] += s2[o]
        cuda.syncthreads()
        s //= 2


@_device
def _cursor(j: int, B: int, CB: int, base: int) -> tuple[int, int]:
    """``(b, offset)`` of value ``j`` of a group whose first value is at ``base``."""
    a = j // B
    b = j - a * B
    return b, base + a * CB + b


@_device
def _advance(b: int, off: int, B: int, CB: int, qT: int, rT: int) -> tuple[int, int]:
    """Move a cursor ``T = qT * B + rT`` values on (``CB = C * B``)."""
    b += rT
    off += qT * CB + rT
    if b >= B:
        b -= B
        off += CB - B
    return b, off


@_device
def _chunk_moments(buf: F64, nb: int, cnt: float, mean: float,
                   m2: float) -> tuple[float, float, float]:
    """Merge the ``nb`` values in ``buf`` (two-pass) into ``(cnt, mean, m2)``."""
    s = 0.0
    for i in range(nb):
        s += buf[i]
    mb = s / nb
    q = 0.0
    for i in range(nb):
        d = buf[i] - mb
        q += d * d
    return _chan(cnt, mean, m2, np.float64(nb), mb, q)


@_device
def _mean_square(mean: float, m2: float, cnt: float) -> float:
    """``mean(x**2)`` from the moments of ``|x|``: ``M2 / n + mean**2`` (terms of one sign);
    ``mean**2`` where the mean is not finite: ``inf`` for a row holding infinities, ``nan``
    for one holding a NaN (whose ``M2`` is ``nan`` either way)."""
    if math.isfinite(mean):
        return m2 / cnt + mean * mean
    return mean * mean


@_device
def _coeffs(j: int, c: int, mu: float, rs: float, w: Floats, has_w: int, b: Floats, has_b: int,
            hi: Floats, lo: Floats, scale: Floats, shift: Floats) -> None:
    """Apply coefficients of entry ``j`` (channel ``c``): hi/lo mean, folded scale, shift."""
    hi[j] = mu
    lo[j] = mu - np.float64(hi[j])
    s = rs
    if has_w:
        s = rs * np.float64(w[c])
    scale[j] = s
    o = 0.0
    if has_b:
        o = np.float64(b[c])
    shift[j] = o


# ----------------------------------------------------------------------------
# statistics: partial (count, mean, M2) per (group, piece)
# ----------------------------------------------------------------------------


@_kernel
def stats_runs(x: Floats, A: int, C: int, B: int, nsplit: int, chunk: int, absval: int,
               part: F64) -> None:
    """``part[(n*C + c)*nsplit + k] = (count, mean, M2)`` of piece ``k`` of group ``(n, c)``;
    of ``|x|`` where ``absval`` (RMSNorm: :func:`_mean_square`)."""
    sc = cuda.shared.array(THREADS, float64)
    sm = cuda.shared.array(THREADS, float64)
    sq = cuda.shared.array(THREADS, float64)
    buf = cuda.local.array(VALUES, float64)
    tid = cuda.threadIdx.x
    T = cuda.blockDim.x
    M = A * B
    CB = C * B
    qT = T // B
    rT = T - qT * B
    for t in range(cuda.blockIdx.x, part.shape[0], cuda.gridDim.x):
        g = t // nsplit
        n = g // C
        j0 = (t - g * nsplit) * chunk
        j1 = min(M, j0 + chunk)
        j = j0 + tid
        b, off = _cursor(j, B, CB, n * A * CB + (g - n * C) * B)
        cnt = 0.0
        mean = 0.0
        m2 = 0.0
        while j < j1:
            nb = 0
            while nb < VALUES and j < j1:
                v = np.float64(x[off])
                buf[nb] = abs(v) if absval else v
                nb += 1
                j += T
                b, off = _advance(b, off, B, CB, qT, rT)
            cnt, mean, m2 = _chunk_moments(buf, nb, cnt, mean, m2)
        sc[tid] = cnt
        sm[tid] = mean
        sq[tid] = m2
        cuda.syncthreads()
        _tree_chan(sc, sm, sq, tid, 0, T, 1)
        if tid == 0:
            part[t, 0] = sc[0]
            part[t, 1] = sm[0]
            part[t, 2] = sq[0]


@_kernel
def stats_lanes(x: Floats, N: int, A: int, C: int, nsplit: int, chunk: int, part: F64) -> None:
    """Channels-last ``(N, A, C)``: ``part[(n*C + c)*nsplit + k]`` over rows piece ``k``."""
    sc = cuda.shared.array(THREADS, float64)
    sm = cuda.shared.array(THREADS, float64)
    sq = cuda.shared.array(THREADS, float64)
    buf = cuda.local.array(VALUES, float64)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    TX = cuda.blockDim.x
    TY = cuda.blockDim.y
    ncb = (C + TX - 1) // TX
    for t in range(cuda.blockIdx.x, N * ncb * nsplit, cuda.gridDim.x):
        r = t // nsplit
        k = t - r * nsplit
        n = r // ncb
        c = (r - n * ncb) * TX + tx
        a0 = k * chunk
        a1 = min(A, a0 + chunk)
        cnt = 0.0
        mean = 0.0
        m2 = 0.0
        if c < C:
            a = a0 + ty
            off = (n * A + a) * C + c
            step = TY * C
            while a < a1:
                nb = 0
                while nb < VALUES and a < a1:
                    buf[nb] = np.float64(x[off])
                    nb += 1
                    a += TY
                    off += step
                cnt, mean, m2 = _chunk_moments(buf, nb, cnt, mean, m2)
        i = ty * TX + tx
        sc[i] = cnt
        sm[i] = mean
        sq[i] = m2
        cuda.syncthreads()
        _tree_chan(sc, sm, sq, ty, tx, TY, TX)
        if ty == 0 and c < C:
            p = (n * C + c) * nsplit + k
            part[p, 0] = sc[tx]
            part[p, 1] = sm[tx]
            part[p, 2] = sq[tx]


@_kernel
def fin_stats(part: F64, nsplit: int, C: int, group: int, eps: float, center: int, w: Floats,
              has_w: int, b: Floats, has_b: int, mean_c: F64, rstd_c: F64, var_g: F64, hi: Floats,
              lo: Floats, scale: Floats, shift: Floats) -> None:
    """Merge pieces and the ``group`` channels of a statistics group; write per-(n, c) results.

    One thread per ``(n, g)``.  ``center=0`` (RMSNorm, ``part`` of ``|x|``): mean 0, variance =
    mean of squares.
    """
    G = C // group
    for i in range(cuda.grid(1), var_g.shape[0], cuda.gridsize(1)):
        n = i // G
        c0 = (i - n * G) * group
        cnt = 0.0
        mu = 0.0
        q = 0.0
        for cc in range(group):
            base = (n * C + c0 + cc) * nsplit
            for k in range(nsplit):
                cnt, mu, q = _chan(cnt, mu, q, part[base + k, 0], part[base + k, 1],
                                   part[base + k, 2])
        if center:
            var = q / cnt
        else:
            var = _mean_square(mu, q, cnt)
            mu = 0.0
        rs = 1.0 / math.sqrt(var + eps)
        var_g[i] = var
        for cc in range(group):
            j = n * C + c0 + cc
            mean_c[j] = mu
            rstd_c[j] = rs
            _coeffs(j, c0 + cc, mu, rs, w, has_w, b, has_b, hi, lo, scale, shift)


@_kernel
def fin_running(run_mean: Floats, run_var: Floats, C: int, eps: float, w: Floats, has_w: int,
                b: Floats, has_b: int, mean_c: F64, rstd_c: F64, hi: Floats, lo: Floats,
                scale: Floats, shift: Floats) -> None:
    """Coefficients from running statistics (evaluation), one thread per ``(n, c)``."""
    for j in range(cuda.grid(1), mean_c.shape[0], cuda.gridsize(1)):
        c = j % C
        mu = np.float64(run_mean[c])
        rs = 1.0 / math.sqrt(np.float64(run_var[c]) + eps)
        mean_c[j] = mu
        rstd_c[j] = rs
        _coeffs(j, c, mu, rs, w, has_w, b, has_b, hi, lo, scale, shift)


@_kernel
def running_update(run_mean: Floats, run_var: Floats, mean_c: F64, var_c: F64, N: int,
                   factor: float, bessel: float) -> None:
    """``running = (1 - factor) * running + factor * stat``; stat = mean over ``n`` (unbiased var)."""
    C = run_mean.shape[0]
    for c in range(cuda.grid(1), C, cuda.gridsize(1)):
        m = 0.0
        v = 0.0
        for n in range(N):
            m += mean_c[n * C + c]
            v += var_c[n * C + c]
        m /= N
        v = v / N * bessel
        run_mean[c] = (1.0 - factor) * np.float64(run_mean[c]) + factor * m
        run_var[c] = (1.0 - factor) * np.float64(run_var[c]) + factor * v


@_kernel
def merge_parts(part: F64, nsplit: int, mean: F64, m2: F64) -> None:
    """Chan-merge ``nsplit`` pieces per group into ``(mean, M2)`` (the host-array contract)."""
    for g in range(cuda.grid(1), mean.shape[0], cuda.gridsize(1)):
        cnt = 0.0
        mu = 0.0
        q = 0.0
        for k in range(nsplit):
            p = g * nsplit + k
            cnt, mu, q = _chan(cnt, mu, q, part[p, 0], part[p, 1], part[p, 2])
        mean[g] = mu
        m2[g] = q


# ----------------------------------------------------------------------------
# apply: y = ((x - hi) - lo) * scale + shift
# ----------------------------------------------------------------------------


@_kernel
def apply_runs(x: Floats, A: int, C: int, B: int, nsplit: int, chunk: int, hi: Floats, lo: Floats,
               scale: Floats, shift: Floats, out: Floats) -> None:
    tid = cuda.threadIdx.x
    T = cuda.blockDim.x
    M = A * B
    CB = C * B
    qT = T // B
    rT = T - qT * B
    for t in range(cuda.blockIdx.x, hi.shape[0] * nsplit, cuda.gridDim.x):
        g = t // nsplit
        n = g // C
        j0 = (t - g * nsplit) * chunk
        j1 = min(M, j0 + chunk)
        h = hi[g]
        lw = lo[g]
        s = scale[g]
        o = shift[g]
        j = j0 + tid
        b, off = _cursor(j, B, CB, n * A * CB + (g - n * C) * B)
        while j < j1:
            out[off] = ((x[off] - h) - lw) * s + o
            j += T
            b, off = _advance(b, off, B, CB, qT, rT)


@_kernel
def apply_lanes(x: Floats, N: int, A: int, C: int, nsplit: int, chunk: int, hi: Floats, lo: Floats,
                scale: Floats, shift: Floats, out: Floats) -> None:
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    TX = cuda.blockDim.x
    TY = cuda.blockDim.y
    ncb = (C + TX - 1) // TX
    for t in range(cuda.blockIdx.x, N * ncb * nsplit, cuda.gridDim.x):
        r = t // nsplit
        k = t - r * nsplit
        n = r // ncb
        c = (r - n * ncb) * TX + tx
        if c < C:
            g = n * C + c
            h = hi[g]
            lw = lo[g]
            s = scale[g]
            o = shift[g]
            a1 = min(A, (k + 1) * chunk)
            a = k * chunk + ty
            off = (n * A + a) * C + c
            while a < a1:
                out[off] = ((x[off] - h) - lw) * s + o
                a += TY
                off += TY * C


# ----------------------------------------------------------------------------
# backward: sums per group, then dx = k1 * dy + k2 * ((x - hi) - lo) * rstd + k3
# ----------------------------------------------------------------------------


@_kernel
def bwd_reduce_runs(x: Floats, dy: Floats, A: int, C: int, B: int, nsplit: int, chunk: int,
                    mean_c: F64, wb: Floats, has_wb: int, part: F64) -> None:
    """``part[t] = (sum(g), sum(g * (x - mean)))``, ``g = dy`` (``* wb[b]`` if ``has_wb``)."""
    s1 = cuda.shared.array(THREADS, float64)
    s2 = cuda.shared.array(THREADS, float64)
    tid = cuda.threadIdx.x
    T = cuda.blockDim.x
    M = A * B
    CB = C * B
    qT = T // B
    rT = T - qT * B
    for t in range(cuda.blockIdx.x, part.shape[0], cuda.gridDim.x):
        g = t // nsplit
        n = g // C
        j0 = (t - g * nsplit) * chunk
        j1 = min(M, j0 + chunk)
        mu = mean_c[g]
        j = j0 + tid
        b, off = _cursor(j, B, CB, n * A * CB + (g - n * C) * B)
        a1 = 0.0
        a2 = 0.0
        while j < j1:
            gv = np.float64(dy[off])
            if has_wb:
                gv *= np.float64(wb[b])
            a1 += gv
            a2 += gv * (np.float64(x[off]) - mu)
            j += T
            b, off = _advance(b, off, B, CB, qT, rT)
        s1[tid] = a1
        s2[tid] = a2
        cuda.syncthreads()
        _tree_sum2(s1, s2, tid, 0, T, 1)
        if tid == 0:
            part[t, 0] = s1[0]
            part[t, 1] = s2[0]


@_kernel
def bwd_reduce_lanes(x: Floats, dy: Floats, N: int, A: int, C: int, nsplit: int, chunk: int,
                     mean: F64, rstd: F64, per_row: int, part: F64) -> None:
    """Channels-last sums ``part[(n*C + c)*nsplit + k] = (sum(dy), sum(dy * dev))``.

    ``per_row=0``: ``dev = x - mean[n*C + c]``.  ``per_row=1`` (the column sums
    of LayerNorm/RMSNorm, ``N = 1``, rows ``a``): ``dev = (x - mean[a]) * rstd[a]``.
    """
    s1 = cuda.shared.array(THREADS, float64)
    s2 = cuda.shared.array(THREADS, float64)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    TX = cuda.blockDim.x
    TY = cuda.blockDim.y
    ncb = (C + TX - 1) // TX
    for t in range(cuda.blockIdx.x, N * ncb * nsplit, cuda.gridDim.x):
        r = t // nsplit
        k = t - r * nsplit
        n = r // ncb
        c = (r - n * ncb) * TX + tx
        a1 = 0.0
        a2 = 0.0
        if c < C:
            mu = 0.0
            if not per_row:
                mu = mean[n * C + c]
            a = k * chunk + ty
            ae = min(A, (k + 1) * chunk)
            off = (n * A + a) * C + c
            while a < ae:
                gv = np.float64(dy[off])
                a1 += gv
                if per_row:
                    a2 += gv * ((np.float64(x[off]) - mean[a]) * rstd[a])
                else:
                    a2 += gv * (np.float64(x[off]) - mu)
                a += TY
                off += TY * C
        i = ty * TX + tx
        s1[i] = a1
        s2[i] = a2
        cuda.syncthreads()
        _tree_sum2(s1, s2, ty, tx, TY, TX)
        if ty == 0 and c < C:
            p = (n * C + c) * nsplit + k
            part[p, 0] = s1[tx]
            part[p, 1] = s2[tx]


@_kernel
def bwd_fin(part: F64, nsplit: int, C: int, group: int, count: int, mean_c: F64, rstd_c: F64,
            w: Floats, has_w: int, batch_stats: int, center: int, sdy: F64, sdyx: F64, hi: Floats,
            lo: Floats, rs: Floats, k1: Floats, k2: Floats, k3: Floats) -> None:
    """Backward coefficients per ``(n, c)`` from the group sums; one thread per ``(n, g)``.

    With ``g = dy * w``: ``k1 = rstd * w``, and with batch statistics
    ``k2 = -rstd * sum(g * (x - mean)) * rstd / count``,
    ``k3 = -rstd * sum(g) / count`` (0 without centering).  ``sdy``/``sdyx``
    keep the per-channel sums for the weight and bias gradients.
    """
    G = C // group
    for i in range(cuda.grid(1), (mean_c.shape[0] // C) * G, cuda.gridsize(1)):
        n = i // G
        c0 = (i - n * G) * group
        sg = 0.0
        sgx = 0.0
        for cc in range(group):
            j = n * C + c0 + cc
            a1 = 0.0
            a2 = 0.0
            for k in range(nsplit):
                a1 += part[j * nsplit + k, 0]
                a2 += part[j * nsplit + k, 1]
            sdy[j] = a1
            sdyx[j] = a2
            wc = 1.0
            if has_w:
                wc = np.float64(w[c0 + cc])
            sg += wc * a1
            sgx += wc * a2
        for cc in range(group):
            j = n * C + c0 + cc
            r = rstd_c[j]
            mu = mean_c[j]
            wc = 1.0
            if has_w:
                wc = np.float64(w[c0 + cc])
            p = 0.0
            q = 0.0
            if batch_stats:
                p = -r * (sgx * r / count)
                if center:
                    q = -r * (sg / count)
            k1[j] = r * wc
            k2[j] = p
            k3[j] = q
            hi[j] = mu
            lo[j] = mu - np.float64(hi[j])
            rs[j] = r


@_kernel
def grad_sums(sdy: F64, sdyx: F64, rstd_c: F64, N: int, gw: F64, gb: F64) -> None:
    """Per channel: ``gb = sum_n sum(dy)``, ``gw = sum_n sum(dy * (x - mean)) * rstd``."""
    C = gw.shape[0]
    for c in range(cuda.grid(1), C, cuda.gridsize(1)):
        a = 0.0
        b = 0.0
        for n in range(N):
            b += sdy[n * C + c]
            a += sdyx[n * C + c] * rstd_c[n * C + c]
        gw[c] = a
        gb[c] = b


@_kernel
def sum_parts(part: F64, nsplit: int, out0: F64, out1: F64) -> None:
    """``out0[i] = sum_k part[i*nsplit + k, 0]``, ``out1`` likewise from column 1."""
    for i in range(cuda.grid(1), out0.shape[0], cuda.gridsize(1)):
        a = 0.0
        b = 0.0
        for k in range(nsplit):
            a += part[i * nsplit + k, 0]
            b += part[i * nsplit + k, 1]
        out0[i] = a
        out1[i] = b


@_kernel
def bwd_apply_runs(x: Floats, dy: Floats, A: int, C: int, B: int, nsplit: int, chunk: int,
                   hi: Floats, lo: Floats, rs: Floats, k1: Floats, k2: Floats, k3: Floats,
                   dx: Floats) -> None:
    tid = cuda.threadIdx.x
    T = cuda.blockDim.x
    M = A * B
    CB = C * B
    qT = T // B
    rT = T - qT * B
    for t in range(cuda.blockIdx.x, hi.shape[0] * nsplit, cuda.gridDim.x):
        g = t // nsplit
        n = g // C
        j0 = (t - g * nsplit) * chunk
        j1 = min(M, j0 + chunk)
        h = hi[g]
        lw = lo[g]
        r = rs[g]
        p = k1[g]
        q = k2[g]
        o = k3[g]
        j = j0 + tid
        b, off = _cursor(j, B, CB, n * A * CB + (g - n * C) * B)
        while j < j1:
            dx[off] = p * dy[off] + q * (((x[off] - h) - lw) * r) + o
            j += T
            b, off = _advance(b, off, B, CB, qT, rT)


@_kernel
def bwd_apply_lanes(x: Floats, dy: Floats, N: int, A: int, C: int, nsplit: int, chunk: int,
                    hi: Floats, lo: Floats, rs: Floats, k1: Floats, k2: Floats, k3: Floats,
                    dx: Floats) -> None:
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    TX = cuda.blockDim.x
    TY = cuda.blockDim.y
    ncb = (C + TX - 1) // TX
    for t in range(cuda.blockIdx.x, N * ncb * nsplit, cuda.gridDim.x):
        r = t // nsplit
        k = t - r * nsplit
        n = r // ncb
        c = (r - n * ncb) * TX + tx
        if c < C:
            g = n * C + c
            h = hi[g]
            lw = lo[g]
            rr = rs[g]
            p = k1[g]
            q = k2[g]
            o = k3[g]
            a1 = min(A, (k + 1) * chunk)
            a = k * chunk + ty
            off = (n * A + a) * C + c
            while a < a1:
                dx[off] = p * dy[off] + q * (((x[off] - h) - lw) * rr) + o
                a += TY
                off += TY * C


# ----------------------------------------------------------------------------
# rows (LayerNorm / RMSNorm): affine along the row
# ----------------------------------------------------------------------------


@_kernel
def rows_forward_fused(x: Floats, M: int, center: int, eps: float, w: Floats, has_w: int, b: Floats,
                       has_b: int, out: Floats, mean_r: F64, rstd_r: F64, var_r: F64, hi: Floats,
                       lo: Floats, rsc: Floats) -> None:
    """One block per row (grid-stride): reduce the row, then normalize it (second read hits cache)."""
    sc = cuda.shared.array(THREADS, float64)
    sm = cuda.shared.array(THREADS, float64)
    sq = cuda.shared.array(THREADS, float64)
    buf = cuda.local.array(VALUES, float64)
    tid = cuda.threadIdx.x
    T = cuda.blockDim.x
    for r in range(cuda.blockIdx.x, mean_r.shape[0], cuda.gridDim.x):
        base = r * M
        cnt = 0.0
        mean = 0.0
        m2 = 0.0
        j = tid
        while j < M:
            nb = 0
            while nb < VALUES and j < M:
                v = np.float64(x[base + j])
                buf[nb] = v if center else abs(v)  # RMSNorm: moments of |x|
                nb += 1
                j += T
            cnt, mean, m2 = _chunk_moments(buf, nb, cnt, mean, m2)
        sc[tid] = cnt
        sm[tid] = mean
        sq[tid] = m2
        cuda.syncthreads()
        _tree_chan(sc, sm, sq, tid, 0, T, 1)
        if tid == 0:
            mu = sm[0]
            if center:
                var = sq[0] / sc[0]
            else:
                var = _mean_square(mu, sq[0], sc[0])
                mu = 0.0
            rs = 1.0 / math.sqrt(var + eps)
            mean_r[r] = mu
            var_r[r] = var
            rstd_r[r] = rs
            hi[r] = mu
            lo[r] = mu - np.float64(hi[r])
            rsc[r] = rs
        cuda.syncthreads()
        h = hi[r]
        lw = lo[r]
        s = rsc[r]
        for m in range(tid, M, T):
            v = ((x[base + m] - h) - lw) * s
            if has_w:
                v = v * w[m]
            if has_b:
                v = v + b[m]
            out[base + m] = v


@_kernel
def rows_apply(x: Floats, M: int, nsplit: int, chunk: int, hi: Floats, lo: Floats, rsc: Floats,
               w: Floats, has_w: int, b: Floats, has_b: int, out: Floats) -> None:
    """Rows normalized with precomputed statistics, ``nsplit`` blocks per row."""
    tid = cuda.threadIdx.x
    T = cuda.blockDim.x
    for t in range(cuda.blockIdx.x, hi.shape[0] * nsplit, cuda.gridDim.x):
        r = t // nsplit
        m0 = (t - r * nsplit) * chunk
        m1 = min(M, m0 + chunk)
        h = hi[r]
        lw = lo[r]
        s = rsc[r]
        base = r * M
        for m in range(m0 + tid, m1, T):
            v = ((x[base + m] - h) - lw) * s
            if has_w:
                v = v * w[m]
            if has_b:
                v = v + b[m]
            out[base + m] = v


@_kernel
def rows_backward_fused(x: Floats, dy: Floats, M: int, center: int, mean_r: F64, rstd_r: F64,
                        w: Floats, wct: Floats, has_w: int, dx: Floats, hi: Floats, lo: Floats,
                        rsc: Floats, k2c: Floats, k3c: Floats) -> None:
    """One block per row: sums of ``g = dy * w`` and ``g * (x - mean)``, then ``dx``.

    ``dx = (rstd * wct) * dy + k2 * xhat + k3``: the sums read the weight ``w``
    in float64, the elementwise pass its compute-dtype copy ``wct``.
    """
    s1 = cuda.shared.array(THREADS, float64)
    s2 = cuda.shared.array(THREADS, float64)
    tid = cuda.threadIdx.x
    T = cuda.blockDim.x
    for r in range(cuda.blockIdx.x, mean_r.shape[0], cuda.gridDim.x):
        base = r * M
        mu = mean_r[r]
        a1 = 0.0
        a2 = 0.0
        for m in range(tid, M, T):
            gv = np.float64(dy[base + m])
            if has_w:
                gv *= np.float64(w[m])
            a1 += gv
            a2 += gv * (np.float64(x[base + m]) - mu)
        s1[tid] = a1
        s2[tid] = a2
        cuda.syncthreads()
        _tree_sum2(s1, s2, tid, 0, T, 1)
        if tid == 0:
            r_s = rstd_r[r]
            hi[r] = mu
            lo[r] = mu - np.float64(hi[r])
            rsc[r] = r_s
            k2c[r] = -r_s * (s2[0] * r_s / M)
            q = 0.0
            if center:
                q = -r_s * (s1[0] / M)
            k3c[r] = q
        cuda.syncthreads()
        h = hi[r]
        lw = lo[r]
        s = rsc[r]
        q2 = k2c[r]
        q3 = k3c[r]
        for m in range(tid, M, T):
            xh = ((x[base + m] - h) - lw) * s
            p = s
            if has_w:
                p = s * wct[m]
            dx[base + m] = p * dy[base + m] + q2 * xh + q3


@_kernel
def rows_bwd_apply(x: Floats, dy: Floats, M: int, nsplit: int, chunk: int, hi: Floats, lo: Floats,
                   rsc: Floats, k2c: Floats, k3c: Floats, w: Floats, has_w: int,
                   dx: Floats) -> None:
    """``dx`` of rows from precomputed coefficients, ``nsplit`` blocks per row."""
    tid = cuda.threadIdx.x
    T = cuda.blockDim.x
    for t in range(cuda.blockIdx.x, hi.shape[0] * nsplit, cuda.gridDim.x):
        r = t // nsplit
        m0 = (t - r * nsplit) * chunk
        m1 = min(M, m0 + chunk)
        h = hi[r]
        lw = lo[r]
        s = rsc[r]
        q2 = k2c[r]
        q3 = k3c[r]
        base = r * M
        for m in range(m0 + tid, m1, T):
            xh = ((x[base + m] - h) - lw) * s
            p = s
            if has_w:
                p = s * w[m]
            dx[base + m] = p * dy[base + m] + q2 * xh + q3
