"""The command line: ``python -m fastnorm [bench] [options]``.

:func:`main` parses the options (:func:`parse_args`), selects the cases, backends and peers
(:func:`select_cases`, :func:`select_backends`, :func:`load_runtimes`), times the cases
(:func:`time_cases`) and prints the table and the extra figures; :func:`reuse_memory` and
:func:`configure_threads` set up the process.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import fastnorm

from .bandwidth import bandwidth_figure, bandwidth_report
from .cases import (
    BUSY_WARNING,
    COMPILE_IMPL,
    DEFAULT_RETRIES,
    DEFAULT_ROUNDS,
    EXTRA_ROUNDS,
    EXTRA_SHAPE,
    FASTNORM_PREFIX,
    JAX_IMPL,
    MATRIX,
    ORT_IMPL,
    PARTS,
    QUICK_ROUNDS,
    RETRY_BUDGET,
    SMOKE_EXTRA_SHAPE,
    TORCH_IMPL,
    Case,
    make_problem,
    smoke_case,
)
from .compiled import import_jax
from .memory import memory_figure, memory_report
from .peers import Runtimes, fast_backends, impl_names, import_ort, import_torch
from .report import (
    busy_note,
    cpu_name,
    header_lines,
    import_pyplot,
    legend,
    load_average,
    plot_results,
    results_json,
    results_table,
    summary_lines,
    versions,
)
from .roofline import roofline_figure, roofline_report
from .timing import (
    CACHE_MODES,
    CaseResult,
    OtherCpuMeter,
    RetryBudget,
    progress,
    progress_bar,
    time_case,
    warm_up_jit,
)

#: the roofline's inputs in a smoke run: 1/32 of the 419 MB
ROOFLINE_SMOKE_SCALE = 1 / 32


def parse_args(argv: Sequence[str] | None, prog: str = "python -m fastnorm") -> argparse.Namespace:
    """The options of ``python -m fastnorm bench`` (see ``--help``), with their defaults filled in.

    Parameters
    ----------
    argv : sequence of str or None
        The command line after the program name; None: ``sys.argv[1:]``.
    prog : str, default "python -m fastnorm"
        The program name shown in the help.

    Returns
    -------
    argparse.Namespace
        The options; ``rounds`` and ``retries`` resolved from ``--quick``/``--smoke``,
        ``parts`` the parts to run (of ``"table"``, ``"bandwidth"``, ``"memory"``,
        ``"roofline"``), and ``print_help``.

    Raises
    ------
    SystemExit
        For invalid options (after printing the usage on stderr), and for ``--help`` and
        ``--version``.

    Examples
    --------
    >>> from fastnorm import benchmark
    >>> args = benchmark.parse_args(["bench", "--quick"])
    >>> args.command, args.rounds, args.retries, args.parts
    ('bench', 3, 0, ('table',))
    """
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Time fastnorm (the default backend; --backends all: every CPU backend) against the"
            " naive NumPy formula, PyTorch CPU (eager and torch.compile), JAX jit and ONNX Runtime"
            " (each when installed; the compiling ones compiled first) on BatchNorm, LayerNorm,"
            " RMSNorm, GroupNorm and InstanceNorm (float32, forward and backward), round-robin"
            " with the same threads for all (JAX: XLA's own pool); print time per call, ratios"
            " fastnorm/peer and fastnorm/best peer (lower is better), geometric means; then a"
            " bandwidth and a peak-memory figure on a 205 MB BatchNorm and every family's"
            " roofline on 419 MB."
        ),
    )
    parser.add_argument("command", nargs="?", choices=["bench"],
                        help="bench: run the benchmark (without it, this help is printed)")
    parser.add_argument("--version", action="version",
                        version=f"fastnorm {fastnorm.__version__}")  # fmt: skip
    parser.add_argument(
        "--threads", type=int, metavar="N",
        help="threads for fastnorm, torch and ORT (default: fastnorm.get_num_threads(),"
        " i.e. $FASTNORM_NUM_THREADS or all CPUs)",
    )  # fmt: skip
    parser.add_argument(
        "--rounds", type=int, metavar="R",
        help=f"timed round-robin rounds per case (default {DEFAULT_ROUNDS},"
        f" {QUICK_ROUNDS} with --quick)",
    )  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true",
        help=f"{QUICK_ROUNDS} rounds, no retries, no extra figures unless --extras:"
        " about a minute on 2 cores (torch.compile adds its compile time: --no-compile)",
    )  # fmt: skip
    parser.add_argument(
        "--filter", default="", metavar="TEXT",
        help='only the cases whose label contains TEXT (case-insensitive; commas: any of them),'
        ' e.g. "GroupNorm", "bwd", "NHWC", "LayerNorm,RMSNorm"',
    )  # fmt: skip
    parser.add_argument(
        "--backends", metavar="LIST",
        help="comma-separated fastnorm backends to time, or all (every available one but"
        " numpy and cuda); default: the default backend (fastnorm.get_backend()); only these"
        " are warmed up",
    )  # fmt: skip
    parser.add_argument("--no-torch", action="store_true",
                        help="leave PyTorch out (torch.compile too)")
    parser.add_argument("--no-compile", action="store_true",
                        help="leave torch.compile out (it compiles every case first: about"
                        " 1-5 s each)")
    parser.add_argument("--no-jax", action="store_true", help="leave JAX out")
    parser.add_argument("--no-ort", action="store_true", help="leave ONNX Runtime out")
    parser.add_argument(
        "--reuse-memory", action="store_true",
        help="make glibc's malloc reuse freed memory (mallopt) so that no implementation"
        " page-faults fresh output memory on every call (default: glibc's behaviour, which maps"
        " blocks over 32 MiB afresh each time)",
    )  # fmt: skip
    parser.add_argument(
        "--retries", type=int, metavar="K",
        help="time a case again, up to K times, while other processes used more than"
        f" {BUSY_WARNING * 100:.0f}%% of the CPUs during it; the least disturbed attempt is"
        f" reported (default {DEFAULT_RETRIES}, 0 with --quick; at most {RETRY_BUDGET:.0f} s of"
        " retries)",
    )  # fmt: skip
    parser.add_argument(
        "--stat", choices=("median", "min"), default="median",
        help="the statistic of each implementation's times that the table and the ratios use"
        " (default median; min: the least disturbed call, for a noisy machine)",
    )  # fmt: skip
    parser.add_argument(
        "--cache", choices=tuple(CACHE_MODES), default="warm",
        help="how the CPU caches stand when a timed sample starts: "
        + "; ".join(f"{k}: {v}" for k, v in CACHE_MODES.items())
        + " (default warm)",
    )  # fmt: skip
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    parser.add_argument(
        "--plot", metavar="FILE.png",
        help="also plot the ratios fastnorm/peer per case to FILE.png (needs matplotlib)",
    )  # fmt: skip
    parser.add_argument(
        "--extras", action="store_true",
        help="with --quick: include the extra figures (bandwidth and memory on 205 MB, the"
        " roofline on 419 MB per case)",
    )  # fmt: skip
    parser.add_argument("--no-extras", action="store_true", help="leave the extra figures out")
    parser.add_argument(
        "--only", metavar="PARTS",
        help="comma-separated parts to run: table, bandwidth, memory, roofline (e.g. --only"
        " roofline: every family's forward and backward on 419 MB against its least memory"
        " traffic)",
    )  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.print_help = parser.print_help
    if args.rounds is None:
        args.rounds = 1 if args.smoke else QUICK_ROUNDS if args.quick else DEFAULT_ROUNDS
    if args.retries is None:
        args.retries = 0 if (args.quick or args.smoke) else DEFAULT_RETRIES
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.retries < 0:
        parser.error("--retries must be at least 0")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.only:
        parts = [p.strip() for p in args.only.split(",") if p.strip()]
        unknown = [p for p in parts if p not in PARTS]
        if unknown or not parts:
            parser.error(f"--only: choose among {', '.join(PARTS)} (got {args.only!r})")
        args.parts = tuple(p for p in PARTS if p in parts)
    elif args.no_extras or ((args.quick or args.smoke) and not args.extras):
        args.parts = ("table",)
    else:
        args.parts = PARTS
    return args


#: glibc's mallopt parameters
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_REUSE_LIMIT = 1 << 30


def reuse_memory() -> bool:
    """Make glibc's malloc keep and reuse freed memory; ``False`` where that is not possible.

    By default glibc serves a block of more than 32 MiB (at most; the threshold adapts up to
    that) with a fresh ``mmap`` and unmaps it on ``free``, so an implementation that returns a new
    33.5 MB array (LayerNorm/RMSNorm on ``(8192, 1024)``) page-faults it in on every call; on a VM
    whose balloon reports free pages to the host, those faults are slow and irregular. With
    ``mmap`` and ``trim`` thresholds of 1 GiB, freed blocks stay in the heap and the next call
    reuses them: the timings then measure the kernels, not the kernel's page-fault path. It
    applies to every implementation alike (NumPy and torch CPU tensors both use malloc).
    """
    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(name)
        ok: bool = libc.mallopt(_M_MMAP_THRESHOLD, _REUSE_LIMIT) == 1
        return ok and bool(libc.mallopt(_M_TRIM_THRESHOLD, _REUSE_LIMIT) == 1)
    except (OSError, AttributeError):  # not glibc
        return False


def configure_threads(threads: int | None, torch: ModuleType | None) -> int:
    """Set fastnorm's (and torch's) thread count; returns the count in use."""
    if threads is not None:
        fastnorm.set_num_threads(threads)
    n = fastnorm.get_num_threads()
    if torch is not None:
        torch.set_num_threads(n)
    return n


def select_cases(
    text: str, families: Sequence[str] | None = None, smoke: bool = False
) -> list[Case]:
    """The matrix's cases whose label contains any comma-separated part of ``text``."""
    terms = [t.strip().lower() for t in text.split(",") if t.strip()]
    cases = [smoke_case(c) for c in MATRIX] if smoke else list(MATRIX)
    return [
        c for c in cases
        if (families is None or c.family in families)
        and (not terms or any(t in c.label.lower() or t in c.family for t in terms))
    ]  # fmt: skip


def select_backends(text: str | None) -> tuple[str, ...]:
    """The backends of ``--backends``: by default the default backend (the first fast one if
    that is the float64 reference or cuda), ``all``: every fast one; ``ValueError`` if unknown."""
    if not text:
        default = fastnorm.get_backend()
        fast = fast_backends()
        return (default,) if default in fast or not fast else fast[:1]
    if text.strip() == "all":
        return fast_backends() or (fastnorm.get_backend(),)
    available = [b for b in fastnorm.available_backends() if b != "cuda"]
    chosen = tuple(dict.fromkeys(b.strip() for b in text.split(",") if b.strip()))
    bad = [b for b in chosen if b not in available]
    if bad or not chosen:
        raise ValueError(f"unknown or unavailable backend(s) {bad or text!r}; available:"
                         f" {', '.join(available)}")  # fmt: skip
    return chosen


def load_runtimes(args: argparse.Namespace) -> Runtimes:
    rt = Runtimes()
    if args.no_torch:
        rt.notes[TORCH_IMPL] = "left out (--no-torch)"
    else:
        rt.torch = import_torch()
        if rt.torch is None:
            rt.notes[TORCH_IMPL] = "not installed: install torch to compare (pip install torch)"
    if rt.torch is not None:
        rt.compile = not args.no_compile
        if args.no_compile:
            rt.notes[COMPILE_IMPL] = "left out (--no-compile)"
    if args.no_jax:
        rt.notes[JAX_IMPL] = "left out (--no-jax)"
    else:
        rt.jax = import_jax()
        if rt.jax is None:
            rt.notes[JAX_IMPL] = "not installed: install jax to compare (pip install jax)"
    if args.no_ort:
        rt.notes[ORT_IMPL] = "left out (--no-ort)"
    else:
        rt.ort, rt.onnx, why = import_ort()
        if why:
            rt.notes[ORT_IMPL] = why
    return rt


def time_cases(
    cases: Sequence[Case],
    names: Sequence[str],
    runtimes: Runtimes,
    rounds: int,
    retries: int,
    cache: str = "warm",
) -> list[CaseResult]:
    """Every case, one input in memory at a time; results in the order of ``cases``."""
    budget = RetryBudget()
    results = []
    with progress_bar(len(cases)) as bar:
        for shape, axis in dict.fromkeys((c.shape, c.axis) for c in cases):
            problem = make_problem(shape, axis)
            for case in (c for c in cases if (c.shape, c.axis) == (shape, axis)):
                bar.describe(case.label)
                results.append(
                    time_case(case, problem, names, runtimes, rounds, retries, budget, cache)
                )
                bar.advance()
            del problem
    progress("")
    results.sort(key=lambda r: cases.index(r.case))
    return results


def main(
    argv: Sequence[str] | None = None,
    *,
    families: Sequence[str] | None = None,
    prog: str = "python -m fastnorm",
    command_required: bool = True,
) -> int:
    """Entry point of ``python -m fastnorm bench [options]`` (see ``--help``); returns the exit
    code.

    Without the ``bench`` command it prints the help (``command_required=False``: runs the
    benchmark anyway, as scripts built on it do).  Errors in the options print a message on
    stderr and return 2; the output goes to stdout.

    Parameters
    ----------
    argv : sequence of str, optional
        The command line after the program name; None (the default): ``sys.argv[1:]``.
    families : sequence of str, optional
        Restricts the table to those families (keys of :data:`FAMILIES`, as
        ``bench/compare_families.py`` does); None (the default): every family.
    prog : str, default "python -m fastnorm"
        The program name shown in the help.
    command_required : bool, default True
        Whether the ``bench`` command is needed to run the benchmark.

    Returns
    -------
    int
        The exit code: 0 on success, 2 for bad options or a missing optional package.

    See Also
    --------
    parse_args : the options.

    Examples
    --------
    A smoke run (tiny shapes, one round) of the LayerNorm forward cases against
    the NumPy formula:

    >>> import contextlib, io
    >>> from fastnorm import benchmark
    >>> output = io.StringIO()
    >>> with contextlib.redirect_stdout(output):
    ...     code = benchmark.main(["bench", "--smoke", "--filter", "LayerNorm fwd", "--no-torch",
    ...                            "--no-compile", "--no-jax", "--no-ort"])
    >>> code, "LayerNorm fwd 16x64" in output.getvalue()
    (0, True)
    >>> benchmark.main(["bench", "--filter", "no such case"])
    2
    """
    args = parse_args(argv, prog)
    if args.command is None and command_required:
        args.print_help()
        return 0
    plt = None
    if args.plot:
        plt = import_pyplot()
        if plt is None:
            print("error: --plot needs matplotlib (pip install matplotlib)", file=sys.stderr)
            return 2
        if "table" not in args.parts:
            print(
                "error: --plot draws the table's ratios: drop --only or add table", file=sys.stderr
            )
            return 2
    if args.reuse_memory and not reuse_memory():
        print("error: --reuse-memory needs glibc (Linux)", file=sys.stderr)
        return 2
    try:
        backends = select_backends(args.backends)
    except ValueError as exc:
        print(f"error: --backends: {exc}", file=sys.stderr)
        return 2
    cases = select_cases(args.filter, families, args.smoke)
    if "table" in args.parts and not cases:
        print(f"error: no case matches --filter {args.filter!r}", file=sys.stderr)
        return 2
    runtimes = load_runtimes(args)
    try:
        runtimes.threads = configure_threads(args.threads, runtimes.torch)
    except ValueError as exc:
        print(f"error: --threads: {exc}", file=sys.stderr)
        return 2
    notes = [busy] if (busy := busy_note()) else []
    notes += [f"{name}: {why}" for name, why in runtimes.notes.items()]
    names = impl_names(backends, runtimes.torch is not None, runtimes.ort is not None,
                       runtimes.compile, runtimes.jax is not None)
    peers = [n for n in names if not n.startswith(FASTNORM_PREFIX)]

    t_start = time.perf_counter()
    print("fastnorm benchmark: fastnorm vs " + ", ".join(peers) + "; float32")
    print(*header_lines(backends, runtimes.threads, runtimes.torch, runtimes), sep="\n")
    print(
        "memory: "
        + ("reused (--reuse-memory: glibc keeps freed blocks)" if args.reuse_memory
           else "glibc default (blocks over 32 MiB are mapped afresh per call)")
        + f"; {load_average()} at the start"
    )  # fmt: skip
    meta: dict[str, Any] = {
        "versions": versions(runtimes), "backends": list(backends), "peers": peers,
        "threads": runtimes.threads, "rounds": args.rounds, "retries": args.retries,
        "reuse_memory": args.reuse_memory, "cpu": cpu_name(), "cpus": os.cpu_count(),
        "platform": f"{platform.system()} {platform.machine()}", "quick": args.quick,
        "smoke": args.smoke, "notes": notes, "load_average_start": load_average(),
        "stat": args.stat, "cache": args.cache,
        "ratio": f"fastnorm {args.stat} time / peer {args.stat} time (lower is better)",
    }  # fmt: skip
    results: list[CaseResult] = []
    extras: dict[str, Any] = {}
    if "table" in args.parts:
        print(
            "warming up (JIT compile on first use, cached on disk after) ...", end=" ", flush=True
        )
        warm = warm_up_jit(backends, cases)
        print(f"{warm:.1f} s")
        meta["warmup_s"] = warm
        t0 = time.perf_counter()
        meter = OtherCpuMeter()
        results = time_cases(cases, names, runtimes, args.rounds, args.retries, args.cache)
        for res in results:
            res.stat = args.stat
        others = meter.share()
        elapsed = time.perf_counter() - t0
        meta["table_s"], meta["others_cpu_share"] = elapsed, others
        print(
            f"\n{len(cases)} cases, {args.rounds} round-robin rounds each ({elapsed:.1f} s);"
            f" {load_average()}"
            + ("" if others is None else f"; other processes used {others:.0%} of the CPUs")
        )
        print(results_table(results, backends, peers))
        print(legend(peers, args.rounds, args.stat, args.cache))
        print(*summary_lines(results, backends, peers), sep="\n")
    extra_shape = SMOKE_EXTRA_SHAPE if args.smoke else EXTRA_SHAPE
    if "bandwidth" in args.parts:
        progress("bandwidth figure ...")
        rounds = args.rounds if args.smoke or args.quick else min(args.rounds, EXTRA_ROUNDS)
        fig = bandwidth_figure(backends, runtimes, max(rounds, 1), extra_shape)
        progress("")
        extras["bandwidth"] = fig
        print("\n" + bandwidth_report(fig))
    if "memory" in args.parts:
        fig = memory_figure(backends, runtimes, extra_shape)
        extras["memory"] = fig
        print("\n" + memory_report(fig))
    if "roofline" in args.parts:
        progress("roofline ...")
        rounds = args.rounds if args.smoke or args.quick else min(args.rounds, EXTRA_ROUNDS)
        fig = roofline_figure(backends[0], runtimes, max(rounds, 1),
                              ROOFLINE_SMOKE_SCALE if args.smoke else 1.0, args.filter)
        progress("")
        extras["roofline"] = fig
        print("\n" + roofline_report(fig))
    total = time.perf_counter() - t_start
    meta["total_s"] = total
    for note in notes:
        print(f"note: {note}")
    print(f"total {total:.0f} s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results_json(results, backends, peers, meta, extras), f, indent=1)
        print(f"results written to {args.json}")
    if plt is not None and results:
        plot_results(args.plot, results, backends, peers, plt)
        print(f"plot written to {args.plot}")
    return 0
