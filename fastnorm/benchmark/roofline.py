"""The DRAM roofline of every family: each forward and backward on about 400 MB of float32
against the least memory traffic it must make, at the best rate this machine's memory moves.

For each case, :func:`roofline_figure` times three things round-robin (so that the machine's
bandwidth, which drifts, is measured beside the case it bounds):

* the case, fastnorm's functional call writing into a preallocated array (``out=``: no page
  faults of a fresh output are timed);
* a read-only pass: ``S`` bytes read by a sum over the input, split over the threads; its rate is
  ``S / time``;
* a large copy, ``np.copyto``, split over the threads: glibc's ``memcpy`` writes copies this large
  with streaming stores past the caches, so no read-for-ownership is made and its rate is
  ``2 S / time`` (one read, one write).

The bound of a case is ``bytes / max(read rate, copy rate)``, ``bytes`` the least traffic of the
computation, in units of the input's size ``S``:

==========================  =====================  ====================================
case                        bytes                  why
==========================  =====================  ====================================
BatchNorm training forward  ``3 S`` (2 R + 1 W)    the statistics need the whole batch
                                                   before any output: read, then read and
                                                   write
BatchNorm backward          ``5 S`` (4 R + 1 W)    the sums over ``dy`` and ``dy * xhat``
                                                   need the whole batch: read ``x`` and
                                                   ``dy``, then read both and write ``dx``
row and group families,     ``2 S`` (1 R + 1 W)    a row or a group fits in cache: read
forward                                            once, write once (channels-last GroupNorm
                                                   and InstanceNorm: a group spans the whole
                                                   sample, 6.5 MB here, which must stay in
                                                   the last-level cache)
row and group families,     ``3 S`` (2 R + 1 W)    read ``x`` and ``dy`` once, write ``dx``
backward
==========================  =====================  ====================================

The report gives each case's time, its bound and ``bound / time`` (100%: at the bound).

Beside them it times the same call on a cache-resident input of the same layout
(:data:`CACHE_VALUES` values, 4 MB: input, ``dy`` and output fit the last-level cache;
:data:`CACHE_CALLS` calls in a row per sample), takes its fastest sample (the least disturbed
by other work on the machine) and scales that time to the large input's size.  That is the case's compute ceiling: the time the kernels
take when memory does not limit them.  A case whose ceiling is above its memory bound is limited
by its arithmetic, not by DRAM (``limit`` column).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

import fastnorm

from .cases import BUSY_WARNING, GROUPS
from .peers import Impl, Runtimes
from .report import format_table
from .timing import OtherCpuMeter, time_round_robin

#: the input of every case: 104,857,600 float32 values (419 MB)
ROOFLINE_VALUES = 64 * 64 * 160 * 160
#: the input of the cache-resident run of each case: 1,048,576 float32 values (4 MB)
CACHE_VALUES = 64 * 64 * 16 * 16
#: calls per sample of the cache-resident run
CACHE_CALLS = 20
#: (family, label, shape, axis, cache shape): the cases, on ROOFLINE_VALUES values (scaled for
#: smoke runs), and the same layout on CACHE_VALUES values
ROOFLINE_CASES: tuple[tuple[str, str, tuple[int, ...], int, tuple[int, ...]], ...] = (
    ("batch_norm", "BatchNorm NCHW", (64, 64, 160, 160), 1, (4, 64, 64, 64)),
    ("batch_norm", "BatchNorm NHWC", (64, 160, 160, 64), -1, (4, 64, 64, 64)),
    ("layer_norm", "LayerNorm", (102400, 1024), -1, (1024, 1024)),
    ("rms_norm", "RMSNorm", (102400, 1024), -1, (1024, 1024)),
    ("group_norm", "GroupNorm NCHW", (64, 64, 160, 160), 1, (4, 64, 64, 64)),
    ("group_norm", "GroupNorm NHWC", (64, 160, 160, 64), -1, (4, 64, 64, 64)),
    ("instance_norm", "InstanceNorm NCHW", (64, 64, 160, 160), 1, (4, 64, 64, 64)),
)
#: least traffic in units of the input's size: (reads, writes) per family and kind
TRAFFIC = {
    ("batch_norm", "forward"): (2, 1),
    ("batch_norm", "backward"): (4, 1),
    ("forward",): (1, 1),
    ("backward",): (2, 1),
}


def traffic(family: str, kind: str) -> tuple[int, int]:
    """``(reads, writes)`` of the input's size a case must make at least (see the module)."""
    return TRAFFIC.get((family, kind), TRAFFIC[(kind,)])


@dataclass
class _Data:
    x: np.ndarray
    dy: np.ndarray
    out: np.ndarray
    weight: np.ndarray
    bias: np.ndarray


def _data(shape: tuple[int, ...], axis: int, rng: np.random.Generator) -> _Data:
    c = shape[axis]
    x = rng.standard_normal(shape, dtype=np.float32)
    dy = rng.standard_normal(shape, dtype=np.float32)
    out = np.zeros_like(x)  # touched: the timed calls write into mapped pages
    return _Data(x, dy, out, rng.uniform(0.5, 1.5, c).astype(np.float32),
                 rng.uniform(-0.5, 0.5, c).astype(np.float32))


def _calls(family: str, d: _Data, axis: int) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """The forward (training statistics) and the backward of ``family``, functional, ``out=``."""
    F = fastnorm
    x, dy, out, w, b = d.x, d.dy, d.out, d.weight, d.bias
    if family == "batch_norm":
        rm, rv = np.zeros_like(w), np.ones_like(w)
        _, mean, rstd = F.batch_norm(x, rm, rv, w, b, True, axis=axis, out=out, return_stats=True)
        return (partial(F.batch_norm, x, rm, rv, w, b, True, axis=axis, out=out),
                partial(F.batch_norm_backward, dy, x, mean, rstd, w, axis=axis, out=out))
    if family in ("layer_norm", "rms_norm"):
        m = x.shape[-1]
        if family == "layer_norm":
            _, mean, rstd = F.layer_norm(x, m, w, b, out=out, return_stats=True)
            return (partial(F.layer_norm, x, m, w, b, out=out),
                    partial(F.layer_norm_backward, dy, x, m, mean, rstd, w, out=out))
        _, rstd = F.rms_norm(x, m, w, out=out, return_stats=True)
        return (partial(F.rms_norm, x, m, w, out=out),
                partial(F.rms_norm_backward, dy, x, m, rstd, w, out=out))
    if family == "group_norm":
        _, mean, rstd = F.group_norm(x, GROUPS, w, b, axis=axis, out=out, return_stats=True)
        return (partial(F.group_norm, x, GROUPS, w, b, axis=axis, out=out),
                partial(F.group_norm_backward, dy, x, GROUPS, mean, rstd, w, axis=axis, out=out))
    _, mean, rstd = F.instance_norm(x, None, None, w, b, axis=axis, out=out, return_stats=True)
    return (partial(F.instance_norm, x, None, None, w, b, axis=axis, out=out),
            partial(F.instance_norm_backward, dy, x, mean, rstd, w, axis=axis, out=out))


def _label(label: str, kind: str) -> str:
    return f"{label} {'fwd' if kind == 'forward' else 'bwd'}"


def _wanted(text: str, label: str, kind: str) -> bool:
    terms = [t.strip().lower() for t in text.split(",") if t.strip()]
    return not terms or any(t in _label(label, kind).lower() for t in terms)


def _split(a: np.ndarray, parts: int) -> list[np.ndarray]:
    flat = a.reshape(-1)
    bounds = np.linspace(0, flat.size, parts + 1).astype(np.int64)
    return [flat[bounds[i]:bounds[i + 1]] for i in range(parts)]


def _read_pass(src: list[np.ndarray], pool: ThreadPoolExecutor | None) -> None:
    """Every byte of the input read once (NumPy's sums release the GIL)."""
    if pool is None:
        src[0].sum()
    else:
        list(pool.map(np.sum, src))


def _copy_pass(dst: list[np.ndarray], src: list[np.ndarray], pool: ThreadPoolExecutor | None) -> None:
    if pool is None:
        np.copyto(dst[0], src[0])
    else:
        list(pool.map(np.copyto, dst, src))


def roofline_figure(backend: str, runtimes: Runtimes, rounds: int, scale: float = 1.0,
                    filter_text: str = "") -> dict[str, Any]:
    """Every family's forward and backward on ``scale * ROOFLINE_VALUES`` float32 values
    against its traffic bound (see the module); ``filter_text``: only the cases whose label
    contains it."""
    threads = max(1, runtimes.threads)
    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    meter = OtherCpuMeter()
    try:
        for family, label, shape, axis, cache_shape in ROOFLINE_CASES:
            if scale != 1.0:
                shape = (max(2, round(shape[0] * scale)),) + shape[1:]
                cache_shape = (max(2, round(cache_shape[0] * min(1.0, 4 * scale))),) + cache_shape[1:]
            kinds = [k for k in ("forward", "backward") if _wanted(filter_text, label, k)]
            if kinds:  # one case's arrays at a time: freed when _measure returns
                rows += _measure(family, label, shape, cache_shape, axis, kinds, backend, rounds, rng,
                                 pool, threads)
    finally:
        if pool is not None:
            pool.shutdown()
    return {"backend": backend, "threads": threads, "rounds": rounds, "rows": rows,
            "others": meter.share()}


def _measure(family: str, label: str, shape: tuple[int, ...], cache_shape: tuple[int, ...],
             axis: int, kinds: list[str], backend: str, rounds: int, rng: np.random.Generator,
             pool: ThreadPoolExecutor | None, threads: int) -> list[dict[str, Any]]:
    """The rows of one family and layout: each kind round-robin with the two passes and the
    cache-resident run."""
    d = _data(shape, axis, rng)
    small = _data(cache_shape, axis, rng)
    parts = threads if pool is not None else 1
    src, dst = _split(d.x, parts), _split(d.out, parts)
    with fastnorm.use_backend(backend):
        forward, backward = _calls(family, d, axis)
        cached = dict(zip(("forward", "backward"), _calls(family, small, axis)))
    rows = []
    context = partial(fastnorm.use_backend, backend)
    for kind, call in (("forward", forward), ("backward", backward)):
        if kind not in kinds:
            continue
        impls = [
            Impl("case", call, context=context),
            Impl("read", partial(_read_pass, src, pool)),
            Impl("copy", partial(_copy_pass, dst, src, pool)),
            Impl("cache", cached[kind], context=context),
        ]
        for impl in impls:
            impl.run()
        # a sample of the cache-resident run is CACHE_CALLS calls: the first one finds the
        # data the previous step evicted, the others find it in cache
        times = time_round_robin(impls, rounds, numbers={"cache": CACHE_CALLS}, cache="shared")
        med = {n: statistics.median(t) for n, t in times.items()}
        size = d.x.nbytes
        read_bw, copy_bw = size / med["read"], 2 * size / med["copy"]
        reads, writes = traffic(family, kind)
        bound = (reads + writes) * size / max(read_bw, copy_bw)
        ceiling = min(times["cache"]) * size / small.x.nbytes  # the least disturbed sample
        rows.append({
            "case": _label(label, kind), "family": family, "kind": kind, "shape": list(shape),
            "bytes": size, "reads": reads, "writes": writes, "ms": med["case"] * 1e3,
            "read_GBps": read_bw / 1e9, "copy_GBps": copy_bw / 1e9, "bound_ms": bound * 1e3,
            "of_bound": bound / med["case"], "cache_shape": list(cache_shape),
            "cache_ms": ceiling * 1e3, "limit": "compute" if ceiling > bound else "memory",
        })  # fmt: skip
    return rows


def roofline_report(fig: dict[str, Any]) -> str:
    head = (
        f"Roofline: fastnorm-{fig['backend']} against the least memory traffic of each case,"
        f" float32, {fig['threads']} thread(s), medians of {fig['rounds']} round-robin rounds"
        " (case, read pass, copy)\n"
        "bound = (reads + writes) x S / max(read rate, copy rate); read rate = S / time of a"
        " read-only pass; copy rate = 2 S / time of np.copyto (memcpy's streaming stores: no"
        " read-for-ownership); S: the input's bytes\n"
        "in cache = the same call on a 4 MB input of the same layout (in the last-level cache),"
        " timed alongside (fastest sample), times the ratio of the sizes: the kernels' time when"
        " memory does not limit them"
    )
    rows = [
        [r["case"], "x".join(map(str, r["shape"])), f"{r['bytes'] / 1e6:.0f}",
         f"{r['reads']}R+{r['writes']}W", f"{r['ms']:.1f}", f"{r['read_GBps']:.1f}",
         f"{r['copy_GBps']:.1f}", f"{r['bound_ms']:.1f}", f"{r['of_bound']:.0%}",
         f"{r['cache_ms']:.1f}", r["limit"]]
        for r in fig["rows"]
    ]  # fmt: skip
    table = format_table(["case", "shape", "MB", "traffic", "ms", "read GB/s", "copy GB/s",
                          "bound ms", "of bound", "in cache ms", "limit"], rows, left=1)
    note = ("of bound: bound / time (100%: the case moves its bytes at the best rate measured)."
            "\nlimit: compute where the in-cache time exceeds the memory bound (the kernels'"
            " arithmetic, not DRAM, sets the time), else memory.")
    if fig.get("others") is not None and fig["others"] > BUSY_WARNING:
        note += f"\nwarning: other processes used {fig['others']:.0%} of the CPUs meanwhile"
    return f"{head}\n{table}\n{note}"
