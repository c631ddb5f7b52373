"""Extra figure 1: the memory bandwidth a BatchNorm training forward reaches.

:func:`bandwidth_figure` times fastnorm (and torch) on a 205 MB input against the copy bound
``3 * bytes / copy bandwidth``; :func:`bandwidth_report` prints it.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np

import fastnorm

from .cases import (
    BUSY_WARNING,
    EPS,
    EXTRA_SHAPE,
    MOMENTUM,
    TORCH_IMPL,
    Case,
    make_problem,
)
from .peers import Impl, Runtimes, torch_impl
from .report import format_table
from .timing import OtherCpuMeter, time_round_robin


def _threaded_copy(dst: np.ndarray, src: np.ndarray, pool: ThreadPoolExecutor, parts: int) -> None:
    """``np.copyto(dst, src)`` split into ``parts`` chunks copied in parallel (NumPy releases
    the GIL while copying)."""
    d, s = dst.reshape(-1), src.reshape(-1)
    bounds = np.linspace(0, d.size, parts + 1).astype(np.int64)
    list(pool.map(lambda i: np.copyto(d[bounds[i] : bounds[i + 1]], s[bounds[i] : bounds[i + 1]]),
                  range(parts)))  # fmt: skip


def bandwidth_figure(
    backends: Sequence[str],
    runtimes: Runtimes,
    rounds: int,
    shape: tuple[int, ...] = EXTRA_SHAPE,
) -> dict[str, Any]:
    """BatchNorm training forward on ``shape`` against ``3 * bytes / copy bandwidth``.

    The copy bandwidth is ``2 * bytes / median time of np.copyto`` (read + write) on the same
    array, measured round-robin with the BatchNorm calls (single-threaded, and split over the
    benchmark's threads when there are several; the faster one is the bound). fastnorm runs
    with a fresh output per call and with ``out=`` a preallocated array; torch (if present) with
    its fresh output.

    Parameters
    ----------
    backends : sequence of str
        fastnorm's backends to time.
    runtimes : Runtimes
        The optional peers (torch) and the thread count.
    rounds : int
        Round-robin rounds.
    shape : tuple of int, default (64, 64, 112, 112)
        The float32 input's shape (205 MB by default).

    Returns
    -------
    dict
        ``shape``, ``bytes``, ``rounds``, ``copy_ms`` (per copy variant), ``copy_used``,
        ``copy_GBps``, ``bound_ms``, ``others`` (other processes' CPU share) and ``impls``:
        name -> ``ms``, ``bound_ms``, ``fraction_of_bound``, ``effective_GBps``.

    See Also
    --------
    bandwidth_report : the figure as text.

    Examples
    --------
    >>> from fastnorm import benchmark
    >>> fig = benchmark.bandwidth_figure(["numpy"], benchmark.Runtimes(), rounds=2,
    ...                                  shape=(2, 64, 16, 16))
    >>> sorted(fig["impls"])
    ['fastnorm-numpy', 'fastnorm-numpy out=']
    >>> 0 < fig["impls"]["fastnorm-numpy"]["fraction_of_bound"]
    True
    """
    problem = make_problem(shape, 1)
    x, nbytes = problem.x, problem.x.nbytes
    dst = np.empty_like(x)
    dst[...] = 0
    impls: list[Impl] = [Impl("np.copyto", partial(np.copyto, dst, x))]
    threads = runtimes.threads
    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    if pool is not None:
        impls.append(
            Impl(f"np.copyto x{threads} threads", partial(_threaded_copy, dst, x, pool, threads))
        )
    for b in backends:
        rm, rv = problem.running_mean.copy(), problem.running_var.copy()
        out = np.zeros_like(x)
        fn = partial(
            fastnorm.batch_norm, x, rm, rv, problem.weight, problem.bias, True, MOMENTUM, EPS
        )
        context = partial(fastnorm.use_backend, b)
        impls.append(Impl(f"fastnorm-{b}", fn, context=context))
        impls.append(Impl(f"fastnorm-{b} out=", partial(fn, out=out), context=context))
    torch = runtimes.torch
    if torch is not None:
        case = Case("batch_norm", "forward", shape, 1)
        impls.append(Impl(TORCH_IMPL, torch_impl(case, problem, torch).call))
    for impl in impls:  # warm-up, first touch
        impl.run()
    meter = OtherCpuMeter()
    times = time_round_robin(impls, rounds, cache="shared")  # 205 MB: no cache to keep warm
    others = meter.share()
    if pool is not None:
        pool.shutdown()
    medians = {n: statistics.median(t) for n, t in times.items()}
    copies = {n: t for n, t in medians.items() if n.startswith("np.copyto")}
    copy_name = min(copies, key=lambda n: copies[n])
    copy_bw = 2 * nbytes / copies[copy_name]
    bound = 3 * nbytes / copy_bw
    rows = {
        n: {"ms": t * 1e3, "bound_ms": bound * 1e3, "fraction_of_bound": bound / t,
            "effective_GBps": 3 * nbytes / t / 1e9}
        for n, t in medians.items() if n not in copies
    }  # fmt: skip
    return {
        "shape": list(shape),
        "bytes": nbytes,
        "rounds": rounds,
        "copy_ms": {n: t * 1e3 for n, t in copies.items()},
        "copy_used": copy_name,
        "copy_GBps": copy_bw / 1e9,
        "bound_ms": bound * 1e3,
        "others": others,
        "impls": rows,
    }


def bandwidth_report(fig: dict[str, Any]) -> str:
    """The bandwidth figure as text: a heading, a table and a note.

    Parameters
    ----------
    fig : dict
        As :func:`bandwidth_figure` returns it.

    Returns
    -------
    str
        Several lines.

    Examples
    --------
    >>> from fastnorm import benchmark
    >>> fig = benchmark.bandwidth_figure(["numpy"], benchmark.Runtimes(), rounds=2,
    ...                                  shape=(2, 64, 16, 16))
    >>> print(benchmark.bandwidth_report(fig).splitlines()[0])
    Bandwidth: BatchNorm train forward on 2x64x16x16 float32 (0 MB), median of 2 ...
    """
    mb = fig["bytes"] / 1e6
    shape = "x".join(map(str, fig["shape"]))
    copies = ", ".join(f"{n} {ms:.1f} ms" for n, ms in fig["copy_ms"].items())
    head = (
        f"Bandwidth: BatchNorm train forward on {shape} float32 ({mb:.0f} MB), median of"
        f" {fig['rounds']} round-robin rounds\ncopy: {copies}; bandwidth {fig['copy_GBps']:.1f}"
        f" GB/s (read + write, {fig['copy_used']}); bound = 3 x bytes / copy bandwidth ="
        f" {fig['bound_ms']:.1f} ms (read for statistics, read + write to apply)"
    )
    rows = [
        [n, f"{r['ms']:.1f}", f"{r['bound_ms']:.1f}", f"{r['fraction_of_bound']:.0%}",
         f"{r['effective_GBps']:.1f}"]
        for n, r in fig["impls"].items()
    ]  # fmt: skip
    table = format_table(["impl", "ms", "bound ms", "of bound", "GB/s (3 passes)"], rows, left=1)
    note = (
        "fresh output: a new output array per call; out=: a preallocated one."
        " of bound: bound time / time (100%: at the copy bound)."
    )
    if fig.get("others") is not None and fig["others"] > BUSY_WARNING:
        note += f"\nwarning: other processes used {fig['others']:.0%} of the CPUs meanwhile"
    return f"{head}\n{table}\n{note}"
