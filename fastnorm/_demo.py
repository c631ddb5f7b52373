"""The ``python -m fastnorm bench`` demonstration: how fast is fastnorm's BatchNorm?

Times ``BatchNorm2d`` (training forward, backward after a training forward, eval forward) on
float32 batches in both layouts, NCHW ``(32, 64, 56, 56)`` with ``axis=1`` and NHWC
``(32, 56, 56, 64)`` with ``axis=-1``, for

* fastnorm on every fast CPU backend (all available ones except the slow ``"numpy"`` reference),
* the naive NumPy formula ``(x - mean) / sqrt(var + eps) * w + b`` in float32, with its analytic
  backward (what one writes without fastnorm),
* PyTorch CPU (``torch.nn.functional.batch_norm`` and autograd), when torch is installed,

alternating the implementations inside each round (round-robin) so that machine drift hits all of
them alike, and prints the median time per call, the speed-up ratios and, as a correctness sanity
check, the largest absolute difference of fastnorm's result from a float64 NumPy computation.

The building blocks (cases, problem data, the naive NumPy layer, the float64 reference and the
per-implementation runners) are shared with the pytest-benchmark suite in ``bench/``.

Only NumPy and fastnorm are imported with this module; torch is imported lazily and is optional.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from types import ModuleType
from typing import Any

import numpy as np

import fastnorm

EPS = 1e-5
MOMENTUM = 0.1

#: layout name -> (input shape, channel axis)
LAYOUTS: dict[str, tuple[tuple[int, ...], int]] = {
    "NCHW": ((32, 64, 56, 56), 1),
    "NHWC": ((32, 56, 56, 64), -1),
}

#: case kind -> label shown in tables
KINDS: dict[str, str] = {
    "train": "train forward",
    "backward": "backward",
    "eval": "eval forward",
}

#: backends that are not timed: the slow float64 oracle and the GPU one
SLOW_OR_DEVICE_BACKENDS = ("numpy", "cuda")

NUMPY_IMPL = "numpy"
TORCH_IMPL = "torch"
FASTNORM_PREFIX = "fastnorm-"

DEFAULT_ROUNDS = 30
QUICK_ROUNDS = 5


# --------------------------------------------------------------------------------------------
# Cases and data
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One benchmark case: what is timed (``kind``) on which layout."""

    kind: str  # a key of KINDS
    layout: str  # a key of LAYOUTS

    @property
    def shape(self) -> tuple[int, ...]:
        return LAYOUTS[self.layout][0]

    @property
    def axis(self) -> int:
        return LAYOUTS[self.layout][1]

    @property
    def label(self) -> str:
        """Human-readable name, e.g. ``"train forward NCHW"``."""
        return f"{KINDS[self.kind]} {self.layout}"

    def __str__(self) -> str:
        return self.label

    @property
    def id(self) -> str:
        """Short identifier for test ids, e.g. ``"train-NCHW"``."""
        return f"{self.kind}-{self.layout}"


CASES: tuple[Case, ...] = tuple(Case(kind, layout) for kind in KINDS for layout in LAYOUTS)


@dataclass(frozen=True)
class Problem:
    """Input data for one layout: activations, upstream gradient, parameters and running stats.

    Every implementation copies the parameters and running statistics it may change, so one
    ``Problem`` can feed all of them.
    """

    x: np.ndarray
    dy: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    running_mean: np.ndarray
    running_var: np.ndarray
    axis: int

    @property
    def num_features(self) -> int:
        return self.x.shape[self.axis]


def make_problem(shape: Sequence[int], axis: int, seed: int = 0) -> Problem:
    """Random float32 data with a different mean and scale in every channel."""
    rng = np.random.default_rng(seed)
    shape = tuple(shape)
    channels = shape[axis]
    shift = channel_view(rng.uniform(-1.0, 1.0, channels).astype(np.float32), len(shape), axis)
    scale = channel_view(rng.uniform(0.5, 2.0, channels).astype(np.float32), len(shape), axis)
    x = rng.standard_normal(shape, dtype=np.float32)
    x *= scale
    x += shift
    return Problem(
        x=x,
        dy=rng.standard_normal(shape, dtype=np.float32),
        weight=rng.uniform(0.5, 1.5, channels).astype(np.float32),
        bias=rng.uniform(-0.5, 0.5, channels).astype(np.float32),
        running_mean=rng.uniform(-1.0, 1.0, channels).astype(np.float32),
        running_var=rng.uniform(0.5, 2.0, channels).astype(np.float32),
        axis=axis,
    )


def reduce_axes(ndim: int, axis: int) -> tuple[int, ...]:
    """All axes except the channel axis: the ones BatchNorm reduces over."""
    channel = axis % ndim
    return tuple(i for i in range(ndim) if i != channel)


def channel_view(v: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """Reshape a per-channel vector so it broadcasts against an ``ndim``-d input."""
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return v.reshape(shape)


# --------------------------------------------------------------------------------------------
# The naive NumPy formula and the float64 reference
# --------------------------------------------------------------------------------------------


class NaiveNumpyBatchNorm:
    """BatchNorm as one writes it in plain NumPy: the textbook formula, in the data's dtype.

    ``forward`` computes ``(x - m) / np.sqrt(v + eps) * w + b`` with ``m = x.mean(axes)`` and
    ``v = x.var(axes)`` (training) or the running statistics (eval), and keeps ``xhat`` for the
    analytic ``backward``.
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
        return xhat * w + b

    def _update_running_stats(self, mean: np.ndarray, var: np.ndarray, n: int) -> None:
        self.running_mean *= 1 - self.momentum
        self.running_mean += self.momentum * mean
        self.running_var *= 1 - self.momentum
        self.running_var += self.momentum * var * (n / (n - 1))

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """``dx`` for the last forward; sets ``grad_weight`` and ``grad_bias``."""
        if self._saved is None:
            raise ValueError("backward() called before forward()")
        xhat, std, training = self._saved
        axes = reduce_axes(dy.ndim, self.axis)
        self.grad_bias = dy.sum(axes)
        self.grad_weight = (dy * xhat).sum(axes)
        scale = channel_view(self.weight, dy.ndim, self.axis) / std
        if not training:
            return dy * scale
        n = dy.size // dy.shape[self.axis]
        db = channel_view(self.grad_bias, dy.ndim, self.axis)
        dw = channel_view(self.grad_weight, dy.ndim, self.axis)
        return (scale / n) * (n * dy - db - xhat * dw)


def reference_result(case: Case, problem: Problem) -> np.ndarray:
    """The case's result (``y``, or ``dx`` for backward) computed in float64 NumPy."""
    p = problem
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
        return xhat * w + per_channel(p.bias)
    dy = p.dy.astype(np.float64)
    db = dy.mean(axes, keepdims=True)
    dw = (dy * xhat).mean(axes, keepdims=True)
    return w * rstd * (dy - db - xhat * dw)


def max_abs_diff(result: np.ndarray, reference: np.ndarray) -> float:
    """Largest absolute difference, computed in float64."""
    return float(np.max(np.abs(np.asarray(result, dtype=np.float64) - reference)))


# --------------------------------------------------------------------------------------------
# Implementations under test
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Impl:
    """One implementation prepared for one case.

    ``call()`` does exactly the work that is timed and returns the result (``y`` or ``dx``);
    ``to_numpy`` turns that result into a NumPy array in the case's layout.
    """

    name: str
    call: Callable[[], Any]
    to_numpy: Callable[[Any], np.ndarray] = field(default=np.asarray)


def fast_backends() -> tuple[str, ...]:
    """fastnorm's available CPU backends except the slow float64 ``"numpy"`` reference."""
    return tuple(b for b in fastnorm.available_backends() if b not in SLOW_OR_DEVICE_BACKENDS)


def import_torch() -> ModuleType | None:
    """PyTorch if it is installed and imports, else ``None``."""
    try:
        import torch
    except (ImportError, OSError):
        return None
    return torch


def impl_names(backends: Sequence[str], with_torch: bool) -> list[str]:
    """Names of the implementations compared: fastnorm per backend, NumPy, then torch."""
    names = [FASTNORM_PREFIX + b for b in backends] + [NUMPY_IMPL]
    return [*names, TORCH_IMPL] if with_torch else names


def build_impl(name: str, case: Case, problem: Problem, torch: ModuleType | None = None) -> Impl:
    """Prepare implementation ``name`` (see :func:`impl_names`) for ``case``.

    For the backward case this runs the (untimed) training forward that backward needs.
    """
    if name.startswith(FASTNORM_PREFIX):
        return fastnorm_impl(case, problem, name.removeprefix(FASTNORM_PREFIX))
    if name == NUMPY_IMPL:
        return numpy_impl(case, problem)
    if name == TORCH_IMPL:
        if torch is None:
            raise ValueError("the torch implementation needs torch installed")
        return torch_impl(case, problem, torch)
    raise ValueError(f"unknown implementation {name!r}")


def _in_backend(backend: str, fn: Callable[..., Any], *args: Any) -> Any:
    with fastnorm.use_backend(backend):
        return fn(*args)


def fastnorm_impl(case: Case, problem: Problem, backend: str) -> Impl:
    """``fastnorm.BatchNorm2d`` on ``backend``."""
    p = problem
    layer = fastnorm.BatchNorm2d(
        p.num_features, eps=EPS, momentum=MOMENTUM, axis=p.axis, dtype=np.float32
    )
    layer.load_state_dict(
        {
            "weight": p.weight,
            "bias": p.bias,
            "running_mean": p.running_mean,
            "running_var": p.running_var,
            "num_batches_tracked": np.asarray(0),
        }
    )
    layer.train(case.kind != "eval")
    call = partial(_in_backend, backend, layer, p.x)
    if case.kind == "backward":
        call()  # the training forward whose backward is timed
        call = partial(_in_backend, backend, layer.backward, p.dy)
    return Impl(FASTNORM_PREFIX + backend, call)


def numpy_impl(case: Case, problem: Problem) -> Impl:
    """The naive float32 NumPy formula (:class:`NaiveNumpyBatchNorm`)."""
    bn = NaiveNumpyBatchNorm(problem)
    call = partial(bn.forward, problem.x, case.kind != "eval")
    if case.kind == "backward":
        call()
        call = partial(bn.backward, problem.dy)
    return Impl(NUMPY_IMPL, call)


def _to_torch(torch: ModuleType, a: np.ndarray, axis: int) -> Any:
    """A torch NCHW tensor sharing ``a``'s memory; NHWC data becomes a channels_last tensor."""
    t = torch.from_numpy(a)
    return t if axis % a.ndim == 1 else t.permute(0, 3, 1, 2)


def _from_torch(t: Any, axis: int) -> np.ndarray:
    """The inverse of :func:`_to_torch`: a NumPy array in the original layout."""
    t = t.detach()
    return t.numpy() if axis % t.ndim == 1 else t.permute(0, 2, 3, 1).numpy()


def torch_impl(case: Case, problem: Problem, torch: ModuleType) -> Impl:
    """``torch.nn.functional.batch_norm`` on the CPU; backward through autograd."""
    p = problem
    batch_norm = torch.nn.functional.batch_norm
    x = _to_torch(torch, p.x, p.axis)
    weight, bias = torch.from_numpy(p.weight.copy()), torch.from_numpy(p.bias.copy())
    rmean, rvar = torch.from_numpy(p.running_mean.copy()), torch.from_numpy(p.running_var.copy())
    to_numpy = partial(_from_torch, axis=p.axis)
    if case.kind != "backward":
        training = case.kind == "train"
        call = partial(batch_norm, x, rmean, rvar, weight, bias, training, MOMENTUM, EPS)
        return Impl(TORCH_IMPL, call, to_numpy)

    leaves = (x.detach().requires_grad_(), weight.requires_grad_(), bias.requires_grad_())
    y = batch_norm(leaves[0], rmean, rvar, leaves[1], leaves[2], True, MOMENTUM, EPS)
    dy = _to_torch(torch, p.dy, p.axis)

    def backward() -> Any:  # dx, grad_weight and grad_bias, as fastnorm's backward computes
        return torch.autograd.grad(y, leaves, dy, retain_graph=True)[0]

    return Impl(TORCH_IMPL, backward, to_numpy)


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def time_round_robin(impls: Sequence[Impl], rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each implementation, alternating them inside every round.

    The starting implementation rotates from round to round, so none always runs first (or
    right after the slow one). The garbage collector is paused while timing.
    """
    times: dict[str, list[float]] = {impl.name: [] for impl in impls}
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for r in range(rounds):
            start = r % len(impls)
            for impl in [*impls[start:], *impls[:start]]:
                t0 = time.perf_counter()
                impl.call()
                times[impl.name].append(time.perf_counter() - t0)
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


@dataclass
class CaseResult:
    """Median seconds per implementation and fastnorm's error per backend, for one case."""

    case: Case
    medians: dict[str, float]
    errors: dict[str, float]

    def best_fastnorm(self) -> float:
        """Median time of the fastest fastnorm backend."""
        return min(t for n, t in self.medians.items() if n.startswith(FASTNORM_PREFIX))


def run_case(
    case: Case, problem: Problem, names: Sequence[str], torch: ModuleType | None, rounds: int
) -> CaseResult:
    """Prepare, warm up, check and time every implementation on one case."""
    impls = [build_impl(name, case, problem, torch) for name in names]
    first = {impl.name: impl.to_numpy(impl.call()) for impl in impls}  # warm-up (JIT), untimed
    reference = reference_result(case, problem)
    errors = {
        name: max_abs_diff(result, reference)
        for name, result in first.items()
        if name.startswith(FASTNORM_PREFIX)
    }
    del first, reference
    times = time_round_robin(impls, rounds)
    return CaseResult(case, {n: statistics.median(t) for n, t in times.items()}, errors)


def warm_up_jit(backends: Sequence[str]) -> float:
    """Compile (or load from the on-disk cache) every kernel the demo uses; returns seconds.

    Runs the three BatchNorm2d calls on small arrays of both layouts on each backend.
    """
    t0 = time.perf_counter()
    for layout, (shape, axis) in LAYOUTS.items():
        small = tuple(2 if i != axis % len(shape) else s for i, s in enumerate(shape))
        problem = make_problem(small, axis, seed=1)
        for backend in backends:
            for kind in KINDS:
                fastnorm_impl(Case(kind, layout), problem, backend).call()
    return time.perf_counter() - t0


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cpu_name() -> str:
    """The CPU model name, best effort."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_counts() -> str:
    """``os.cpu_count()``, plus how many of those this process may use where that differs."""
    total = os.cpu_count() or 0
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = total
    return f"{total}" if usable == total else f"{total} ({usable} usable by this process)"


def _cpu_times() -> tuple[int, int]:
    """(total, idle) CPU time of the whole machine so far, in clock ticks (Linux)."""
    with open("/proc/stat", encoding="ascii") as f:
        ticks = [int(v) for v in f.readline().split()[1:9]]  # user .. steal
    return sum(ticks), ticks[3] + ticks[4]  # idle + iowait


def busy_note(interval: float = 0.5) -> str | None:
    """A warning when other processes keep the CPUs busy (timings will be noisy), else None.

    Samples the machine's CPU use for ``interval`` seconds while this process sleeps; Linux only.
    """
    try:
        total0, idle0 = _cpu_times()
        time.sleep(interval)
        total1, idle1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return None
    busy = 1.0 - (idle1 - idle0) / max(total1 - total0, 1)
    if busy < 0.2:
        return None
    return (
        f"other processes kept {busy:.0%} of the CPUs busy when the demo started:"
        " timings are noisy (and multi-threaded ones suffer most)"
    )


def header_lines(backends: Sequence[str], threads: int, torch: ModuleType | None) -> list[str]:
    """Versions, backends, threads and the machine."""
    fastnorm_version = getattr(fastnorm, "__version__", None) or _version("fastnorm")
    versions = [
        f"fastnorm {fastnorm_version}",
        f"numpy {np.__version__}",
        f"numba {_version('numba')}",
        f"torch {torch.__version__}" if torch is not None else "torch not installed",
        f"Python {platform.python_version()}",
    ]
    return [
        " | ".join(versions),
        f"backend: {fastnorm.get_backend()} (available: {', '.join(fastnorm.available_backends())};"
        f" timed: {', '.join(backends)})",
        f"threads: {threads} for fastnorm"
        + (" and torch" if torch is not None else "")
        + " (NumPy reductions are single-threaded)",
        f"CPU: {cpu_name()}, {cpu_counts()} CPUs ({platform.system()} {platform.machine()})",
    ]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 2) -> str:
    """A plain-text table; the first ``left`` columns are left-aligned, the rest right-aligned."""
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        padded = (
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        return "  ".join(padded).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def _ratio(numerator: float | None, denominator: float) -> str:
    return "-" if numerator is None else f"{numerator / denominator:.1f}x"


def results_table(results: Sequence[CaseResult], names: Sequence[str]) -> str:
    """Median ms per call, speed-up ratios and fastnorm's max abs error, one row per case."""
    fast = [n for n in names if n.startswith(FASTNORM_PREFIX)]
    headers = ["case", "layout", *(f"{n} ms" for n in names), "numpy/fn"]
    if TORCH_IMPL in names:
        headers.append("torch/fn")
    headers += [f"max|err| {n.removeprefix(FASTNORM_PREFIX)}" for n in fast]
    rows = []
    for res in results:
        best = res.best_fastnorm()
        row = [KINDS[res.case.kind], res.case.layout, *(_ms(res.medians[n]) for n in names)]
        row.append(_ratio(res.medians[NUMPY_IMPL], best))
        if TORCH_IMPL in names:
            row.append(_ratio(res.medians[TORCH_IMPL], best))
        row += [f"{res.errors[n]:.1e}" for n in fast]
        rows.append(row)
    return format_table(headers, rows)


def legend(names: Sequence[str]) -> str:
    """What the table's columns mean."""
    ratios = "numpy/fn, torch/fn" if TORCH_IMPL in names else "numpy/fn"
    return (
        f"ms: median time per call. {ratios}: time ratio against the fastest fastnorm backend"
        " (> 1 means fastnorm is faster).\nmax|err|: largest absolute difference of fastnorm's"
        " result (y, or dx for backward) from a float64 NumPy computation."
    )


def geometric_mean(values: Sequence[float]) -> float:
    return float(np.exp(np.mean(np.log(values))))


def summary_lines(results: Sequence[CaseResult], names: Sequence[str]) -> list[str]:
    """Geometric-mean speed-ups of fastnorm over each peer."""
    lines = []
    for peer in (NUMPY_IMPL, TORCH_IMPL):
        if peer in names:
            speedup = geometric_mean([r.medians[peer] / r.best_fastnorm() for r in results])
            if f"{speedup:.2f}" == f"{1 / speedup:.2f}" == "1.00":
                verdict = "about as fast as"
            elif speedup > 1:
                verdict = f"{speedup:.2f}x faster than"
            else:
                verdict = f"{1 / speedup:.2f}x slower than"
            lines.append(f"fastnorm is {verdict} {peer} (geometric mean over the cases)")
    return lines


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fastnorm",
        description=(
            "Benchmark demo: time fastnorm's BatchNorm2d (train forward, backward, eval forward;"
            " NCHW (32, 64, 56, 56) and NHWC (32, 56, 56, 64); float32) against the naive NumPy"
            " formula and PyTorch CPU (when installed), and check fastnorm against float64."
        ),
    )
    parser.add_argument(
        "command",
        nargs="?",
        default="bench",
        choices=["bench"],
        help="what to run (default and only choice: bench)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="threads for fastnorm and torch (default: fastnorm.get_num_threads(),"
        " i.e. $FASTNORM_NUM_THREADS or all CPUs)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        metavar="R",
        help=f"timed rounds per case; medians are reported (default {DEFAULT_ROUNDS},"
        f" {QUICK_ROUNDS} with --quick)",
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"only {QUICK_ROUNDS} rounds: a fast smoke run"
    )
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = QUICK_ROUNDS if args.quick else DEFAULT_ROUNDS
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    return args


def configure_threads(threads: int | None, torch: ModuleType | None) -> int:
    """Set fastnorm's (and torch's) thread count; returns the count in use."""
    if threads is not None:
        fastnorm.set_num_threads(threads)
    n = fastnorm.get_num_threads()
    if torch is not None:
        torch.set_num_threads(n)
    return n


def progress(message: str) -> None:
    """Show a transient status line on stderr when it is a terminal (empty: clear it)."""
    if sys.stderr.isatty():
        sys.stderr.write(f"\r{message:<60}\r" if message else f"\r{'':<60}\r")
        sys.stderr.flush()


def time_all_cases(names: Sequence[str], torch: ModuleType | None, rounds: int) -> list[CaseResult]:
    """Run every case of :data:`CASES`, one layout's data in memory at a time."""
    results = []
    for layout, (shape, axis) in LAYOUTS.items():
        problem = make_problem(shape, axis)
        for case in (c for c in CASES if c.layout == layout):
            progress(f"timing {case.label} ...")
            results.append(run_case(case, problem, names, torch, rounds))
        del problem
    progress("")
    return results


def bench(rounds: int, threads: int | None = None) -> int:
    """Run the demonstration and print the report; returns a process exit code."""
    torch = import_torch()
    try:
        n_threads = configure_threads(threads, torch)
    except ValueError as exc:
        print(f"error: --threads: {exc}", file=sys.stderr)
        return 2
    notes = [busy] if (busy := busy_note()) else []
    backends = fast_backends()
    if not backends:
        backends = (fastnorm.get_backend(),)
        notes.append(f"no fast CPU backend available: timing the {backends[0]!r} backend")
    if torch is None:
        notes.append("torch is not installed: install torch to compare (pip install torch)")
    names = impl_names(backends, with_torch=torch is not None)

    print("fastnorm benchmark demo: BatchNorm2d, float32")
    print(*header_lines(backends, n_threads, torch), sep="\n")
    print("warming up (JIT compile on first use, cached on disk after) ...", end=" ", flush=True)
    print(f"{warm_up_jit(backends):.1f} s")

    t0 = time.perf_counter()
    results = time_all_cases(names, torch, rounds)
    elapsed = time.perf_counter() - t0

    shapes = "; ".join(f"{lay} = {shape} axis={axis}" for lay, (shape, axis) in LAYOUTS.items())
    print(f"\n{shapes}; median of {rounds} round-robin rounds ({elapsed:.1f} s)")
    print(results_table(results, names))
    print(legend(names))
    print(*summary_lines(results, names), sep="\n")
    for note in notes:
        print(f"note: {note}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m fastnorm [bench] [--threads N] [--rounds R] [--quick]``."""
    args = parse_args(argv)
    return bench(args.rounds, args.threads)
