"""LayerNorm, RMSNorm, GroupNorm and InstanceNorm: fastnorm vs PyTorch CPU vs naive NumPy.

Usage::

    python bench/compare_families.py [--threads N] [--rounds R] [--filter TEXT] [--retries K]
                                     [--reuse-memory]

Times the forward (``layer(x)``) and the backward (``layer.backward(dy)`` after one forward, timed
alone) of each family in float32 on

* LayerNorm and RMSNorm: ``(8192, 1024)`` and ``(6304, 768)``, normalized over the last dimension,
  with a weight (and, for LayerNorm, a bias);
* GroupNorm: 32 groups, affine, NCHW ``(32, 64, 56, 56)`` with ``axis=1`` and NHWC
  ``(32, 56, 56, 64)`` with ``axis=-1`` (a ``channels_last`` tensor for torch);
* InstanceNorm2d: NCHW ``(16, 64, 64, 64)``, ``affine=True``, input statistics;

for fastnorm (each fast CPU backend), PyTorch CPU (``torch.nn.functional`` forward; backward
is ``torch.autograd.grad`` of the forward output w.r.t. the input, weight and bias with a fixed
``dy``, on a graph built once outside the timed region and kept with ``retain_graph=True``) and
the naive NumPy formula in float32 with its analytic backward. The implementations alternate
inside every round (round-robin, the first one rotating) and one table prints median times,
torch/fastnorm and numpy/fastnorm median ratios, the torch/fastnorm ratio of the minima (torch's
times on a small VM are noisy: page faults while it allocates its outputs) and fastnorm's largest
deviation from a float64 computation; then the geometric means. Each row also shows the share of
the CPUs that other processes used while the case was timed; a disturbed case is timed again
(``--retries``, default 2) and flagged when it stays disturbed.

This module also holds the building blocks of the pytest-benchmark suite
``bench/test_families.py`` (cases, data, the naive NumPy layer, the float64 reference and the
per-implementation runners), as :mod:`fastnorm._demo` does for BatchNorm.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import importlib.util
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from types import ModuleType
from typing import Any

import numpy as np

import fastnorm
from fastnorm import _demo
from fastnorm._demo import FASTNORM_PREFIX, NUMPY_IMPL, TORCH_IMPL, Impl, Problem

EPS = 1e-5
RMS_EPS = float(np.finfo(np.float32).eps)  # what rms_norm's eps=None means for float32
MOMENTUM = 0.1
GROUPS = 32

DEFAULT_ROUNDS = 30

#: family -> name shown in tables
FAMILIES: dict[str, str] = {
    "layer_norm": "LayerNorm",
    "rms_norm": "RMSNorm",
    "group_norm": "GroupNorm",
    "instance_norm": "InstanceNorm",
}

#: what is timed
KINDS = ("forward", "backward")


# --------------------------------------------------------------------------------------------
# Cases and data
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FamilyCase:
    """One case: ``kind`` of ``family`` on float32 data of ``shape``.

    ``axis`` is the channel axis for GroupNorm and InstanceNorm (1: NCHW, -1: NHWC); LayerNorm and
    RMSNorm normalize over the last dimension, and their per-feature parameters lie along
    ``axis=-1``.
    """

    family: str  # a key of FAMILIES
    shape: tuple[int, ...]
    axis: int
    kind: str  # one of KINDS

    @property
    def num_features(self) -> int:
        """Length of ``weight`` (and ``bias``): channels, or the normalized last dimension."""
        return self.shape[self.axis]

    @property
    def num_groups(self) -> int:
        """Groups of channels sharing statistics (1 for the per-row LayerNorm and RMSNorm)."""
        if self.family == "group_norm":
            return GROUPS
        return self.num_features if self.family == "instance_norm" else 1

    @property
    def eps(self) -> float:
        return RMS_EPS if self.family == "rms_norm" else EPS

    @property
    def has_bias(self) -> bool:
        return self.family != "rms_norm"

    @property
    def channels_last(self) -> bool:
        """Image data with the channels last (NHWC): a ``channels_last`` tensor for torch."""
        return self.family in ("group_norm", "instance_norm") and self.axis % len(self.shape) != 1

    @property
    def layout(self) -> str:
        """``"8192x1024"``, or ``"NCHW 32x64x56x56"`` for image data."""
        dims = "x".join(map(str, self.shape))
        if self.family in ("layer_norm", "rms_norm"):
            return dims
        return f"{'NHWC' if self.channels_last else 'NCHW'} {dims}"

    @property
    def label(self) -> str:
        """Human-readable name, e.g. ``"GroupNorm NHWC 32x56x56x64 backward"``."""
        return f"{FAMILIES[self.family]} {self.layout} {self.kind}"

    def __str__(self) -> str:
        return self.label

    @property
    def id(self) -> str:
        """Short identifier for test ids, e.g. ``"group_norm-NHWC-32x56x56x64-backward"``."""
        return f"{self.family}-{self.layout.replace(' ', '-')}-{self.kind}"


#: (family, shape, axis) of the issue's target shapes
SHAPES: tuple[tuple[str, tuple[int, ...], int], ...] = (
    ("layer_norm", (8192, 1024), -1),
    ("layer_norm", (6304, 768), -1),
    ("rms_norm", (8192, 1024), -1),
    ("rms_norm", (6304, 768), -1),
    ("group_norm", (32, 64, 56, 56), 1),
    ("group_norm", (32, 56, 56, 64), -1),
    ("instance_norm", (16, 64, 64, 64), 1),
)

CASES: tuple[FamilyCase, ...] = tuple(
    FamilyCase(family, shape, axis, kind) for family, shape, axis in SHAPES for kind in KINDS
)


def make_problem(shape: Sequence[int], axis: int, seed: int = 0) -> Problem:
    """Random float32 ``x``, ``dy``, ``weight`` and ``bias`` (per feature along ``axis``).

    The BatchNorm demo's data: every feature (channel, or column) has its own mean and scale.
    """
    return _demo.make_problem(shape, axis, seed)


def stat_view(case: FamilyCase) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """How the naive formula sees the data: ``(view shape, statistics axes, parameter shape)``.

    The input is reshaped (a view, no copy) so that statistics are taken over ``statistics axes``
    and the parameters broadcast as ``parameter shape``: LayerNorm/RMSNorm over the last axis;
    InstanceNorm over the spatial axes; GroupNorm splits the channel axis into
    ``(groups, channels per group)`` and reduces over everything but the batch and group axes.
    """
    shape, ndim = case.shape, len(case.shape)
    if case.family in ("layer_norm", "rms_norm"):
        return shape, (ndim - 1,), (1,) * (ndim - 1) + (shape[-1],)
    c = case.axis % ndim
    if case.family == "instance_norm":
        axes = tuple(i for i in range(1, ndim) if i != c)
        return shape, axes, tuple(s if i == c else 1 for i, s in enumerate(shape))
    groups = case.num_groups
    view = (*shape[:c], groups, shape[c] // groups, *shape[c + 1 :])
    axes = tuple(i for i in range(1, ndim + 1) if i != c)
    params = tuple(s if i in (c, c + 1) else 1 for i, s in enumerate(view))
    return view, axes, params


# --------------------------------------------------------------------------------------------
# The naive NumPy formula and the float64 reference
# --------------------------------------------------------------------------------------------


class NaiveNumpyNorm:
    """The four families as one writes them in plain NumPy, in the data's dtype.

    ``forward`` computes ``xhat = (x - x.mean(axes)) / np.sqrt(x.var(axes) + eps)`` (RMSNorm:
    ``x / np.sqrt((x * x).mean(axes) + eps)``) on the view of :func:`stat_view`, then
    ``xhat * w + b``, and keeps ``xhat`` and ``rstd`` for the analytic ``backward``::

        dxhat = dy * w
        dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))  # RMSNorm: no mean(dxhat)
    """

    def __init__(self, case: FamilyCase, problem: Problem, dtype: Any = np.float32) -> None:
        self.view, self.axes, param_shape = stat_view(case)
        self.param_axes = tuple(i for i, s in enumerate(param_shape) if s == 1)
        self.center = case.family != "rms_norm"
        self.eps = case.eps
        self.weight = problem.weight.astype(dtype).reshape(param_shape)
        self.bias = problem.bias.astype(dtype).reshape(param_shape) if case.has_bias else None
        self.grad_weight: np.ndarray | None = None
        self.grad_bias: np.ndarray | None = None
        self._saved: tuple[np.ndarray, np.ndarray] | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        v = x.reshape(self.view)
        if self.center:
            rstd = 1 / np.sqrt(v.var(self.axes, keepdims=True) + self.eps)
            xhat = (v - v.mean(self.axes, keepdims=True)) * rstd
        else:
            rstd = 1 / np.sqrt((v * v).mean(self.axes, keepdims=True) + self.eps)
            xhat = v * rstd
        self._saved = (xhat, rstd)
        y = xhat * self.weight
        if self.bias is not None:
            y += self.bias
        return y.reshape(x.shape)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """``dx`` for the last forward; sets ``grad_weight`` (and ``grad_bias``)."""
        if self._saved is None:
            raise ValueError("backward() called before forward()")
        xhat, rstd = self._saved
        g = dy.reshape(self.view)
        self.grad_weight = (g * xhat).sum(self.param_axes).ravel()
        if self.bias is not None:
            self.grad_bias = g.sum(self.param_axes).ravel()
        dxhat = g * self.weight
        dx = dxhat - xhat * (dxhat * xhat).mean(self.axes, keepdims=True)
        if self.center:
            dx -= dxhat.mean(self.axes, keepdims=True)
        dx *= rstd
        return dx.reshape(dy.shape)


def reference_result(case: FamilyCase, problem: Problem) -> np.ndarray:
    """The case's result (``y``, or ``dx`` for backward) computed in float64 NumPy."""
    norm = NaiveNumpyNorm(case, problem, dtype=np.float64)
    y = norm.forward(problem.x.astype(np.float64))
    return y if case.kind == "forward" else norm.backward(problem.dy.astype(np.float64))


# --------------------------------------------------------------------------------------------
# Implementations under test
# --------------------------------------------------------------------------------------------


def torch_installed() -> bool:
    """Whether torch can be found, without importing it."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # ValueError: sys.modules["torch"] is None
        return False


def build_impl(
    name: str, case: FamilyCase, problem: Problem, torch: ModuleType | None = None
) -> Impl:
    """Prepare implementation ``name`` (see :func:`fastnorm._demo.impl_names`) for ``case``.

    For the backward case this runs the (untimed) forward that backward needs.
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


def make_layer(case: FamilyCase) -> Any:
    """The fastnorm layer of ``case`` (float32, with a weight, and a bias but for RMSNorm)."""
    if case.family == "layer_norm":
        return fastnorm.LayerNorm(case.shape[-1], eps=case.eps, dtype=np.float32)
    if case.family == "rms_norm":
        return fastnorm.RMSNorm(case.shape[-1], eps=case.eps, dtype=np.float32)
    if case.family == "group_norm":
        return fastnorm.GroupNorm(
            case.num_groups, case.num_features, eps=case.eps, axis=case.axis, dtype=np.float32
        )
    if case.family == "instance_norm":
        return fastnorm.InstanceNorm2d(
            case.num_features, eps=case.eps, momentum=MOMENTUM, affine=True, axis=case.axis,
            dtype=np.float32,
        )  # fmt: skip
    raise ValueError(f"unknown family {case.family!r}")


def _in_backend(backend: str, fn: Callable[..., Any], *args: Any) -> Any:
    with fastnorm.use_backend(backend):
        return fn(*args)


def fastnorm_impl(case: FamilyCase, problem: Problem, backend: str) -> Impl:
    """The fastnorm layer on ``backend``: ``layer(x)``, or ``layer.backward(dy)``."""
    p = problem
    layer = make_layer(case)
    params = {"weight": p.weight, "bias": p.bias}
    layer.load_state_dict({k: params[k] for k in layer.state_dict() if k in params})
    call = partial(_in_backend, backend, layer, p.x)
    if case.kind == "backward":
        call()  # the forward whose backward is timed
        call = partial(_in_backend, backend, layer.backward, p.dy)
    return Impl(FASTNORM_PREFIX + backend, call)


def numpy_impl(case: FamilyCase, problem: Problem) -> Impl:
    """The naive float32 NumPy formula (:class:`NaiveNumpyNorm`)."""
    norm = NaiveNumpyNorm(case, problem)
    call = partial(norm.forward, problem.x)
    if case.kind == "backward":
        call()
        call = partial(norm.backward, problem.dy)
    return Impl(NUMPY_IMPL, call)


def _to_torch(torch: ModuleType, a: np.ndarray, channels_last: bool) -> Any:
    """A torch tensor sharing ``a``'s memory; NHWC data becomes a channels_last NCHW tensor."""
    t = torch.from_numpy(a)
    return t.permute(0, 3, 1, 2) if channels_last else t


def _from_torch(t: Any, channels_last: bool) -> np.ndarray:
    """The inverse of :func:`_to_torch`: a NumPy array in the original layout."""
    t = t.detach()
    return t.permute(0, 2, 3, 1).numpy() if channels_last else t.numpy()


def torch_forward(torch: ModuleType, case: FamilyCase) -> Callable[..., Any]:
    """``forward(x, weight, bias)`` with ``torch.nn.functional`` (``bias`` unused by RMSNorm)."""
    F = torch.nn.functional
    normalized = (case.shape[-1],)
    if case.family == "layer_norm":
        return lambda x, w, b: F.layer_norm(x, normalized, w, b, case.eps)
    if case.family == "rms_norm":
        return lambda x, w, b: F.rms_norm(x, normalized, w, case.eps)
    if case.family == "group_norm":
        return lambda x, w, b: F.group_norm(x, case.num_groups, w, b, case.eps)
    if case.family == "instance_norm":
        return lambda x, w, b: F.instance_norm(x, None, None, w, b, True, MOMENTUM, case.eps)
    raise ValueError(f"unknown family {case.family!r}")


def torch_impl(case: FamilyCase, problem: Problem, torch: ModuleType) -> Impl:
    """PyTorch CPU: ``torch.nn.functional`` forward; backward through ``autograd.grad``.

    Backward: the forward runs once here, untimed, with the input, weight and bias requiring
    grad; each call then runs ``torch.autograd.grad(y, (x, weight, bias), dy,
    retain_graph=True)`` (``dx``, ``grad_weight`` and ``grad_bias``, what fastnorm's backward
    computes) on that kept graph, so only the backward is timed.
    """
    p = problem
    forward = torch_forward(torch, case)
    x = _to_torch(torch, p.x, case.channels_last)
    weight, bias = torch.from_numpy(p.weight.copy()), torch.from_numpy(p.bias.copy())
    if not case.has_bias:
        bias = None
    to_numpy = partial(_from_torch, channels_last=case.channels_last)
    if case.kind == "forward":
        return Impl(TORCH_IMPL, partial(forward, x, weight, bias), to_numpy)

    leaves = [x.detach().requires_grad_(), weight.requires_grad_()]
    if bias is not None:
        leaves.append(bias.requires_grad_())
        bias = leaves[2]
    y = forward(leaves[0], leaves[1], bias)
    dy = _to_torch(torch, p.dy, case.channels_last)
    inputs = tuple(leaves)

    def backward() -> Any:
        return torch.autograd.grad(y, inputs, dy, retain_graph=True)[0]

    return Impl(TORCH_IMPL, backward, to_numpy)


# --------------------------------------------------------------------------------------------
# Timing and the report
# --------------------------------------------------------------------------------------------


#: a case during which other processes used more than this share of the CPUs is flagged
BUSY_WARNING = 0.05
#: seconds to wait before timing a disturbed case again
RETRY_PAUSE = 5.0
DEFAULT_RETRIES = 2


class OtherCpuMeter:
    """The share of the machine's CPU time that *other* processes used since the meter started.

    Machine-wide busy time from ``/proc/stat`` (steal included: a VM's noisy neighbours) minus
    this process's own CPU time (``os.times``, all threads), over wall time times the CPU count.
    Linux only; elsewhere :meth:`share` returns ``None``.
    """

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat", encoding="ascii") as f:
                ticks = [int(v) for v in f.readline().split()[1:9]]  # user .. steal
        except (OSError, ValueError):
            return None
        busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait
        own = os.times()
        return time.perf_counter(), busy, own.user + own.system

    def share(self) -> float | None:
        end = self._sample()
        if self.start is None or end is None:
            return None
        wall = (end[0] - self.start[0]) * (os.cpu_count() or 1)
        others = (end[1] - self.start[1]) - (end[2] - self.start[2])
        return max(others, 0.0) / wall if wall > 0 else None


@dataclass
class CaseTimes:
    """Per-call seconds of every implementation on one case, fastnorm's errors, and how busy
    other processes kept the CPUs meanwhile (a share, ``None`` where unknown)."""

    case: FamilyCase
    times: dict[str, list[float]]
    errors: dict[str, float]
    others: float | None = None

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])

    def minimum(self, name: str) -> float:
        return min(self.times[name])

    def best_fastnorm(self, stat: Callable[[str], float]) -> float:
        """``stat`` (median or minimum) of the fastest fastnorm backend by that statistic."""
        return min(stat(n) for n in self.times if n.startswith(FASTNORM_PREFIX))


def run_case(
    case: FamilyCase,
    problem: Problem,
    names: Sequence[str],
    torch: ModuleType | None,
    rounds: int,
) -> CaseTimes:
    """Prepare, warm up (JIT, first touch), check and time every implementation on one case."""
    impls = [build_impl(name, case, problem, torch) for name in names]
    first = {impl.name: impl.to_numpy(impl.call()) for impl in impls}  # warm-up, untimed
    reference = reference_result(case, problem)
    errors = {name: _demo.max_abs_diff(result, reference) for name, result in first.items()}
    del first, reference
    meter = OtherCpuMeter()
    times = _demo.time_round_robin(impls, rounds)
    return CaseTimes(case, times, errors, meter.share())


def time_case(
    case: FamilyCase,
    problem: Problem,
    names: Sequence[str],
    torch: ModuleType | None,
    rounds: int,
    retries: int,
) -> CaseTimes:
    """:func:`run_case`, run again (up to ``retries`` times, after a pause) while other processes
    disturbed it; returns the least disturbed attempt."""
    best: CaseTimes | None = None
    for attempt in range(retries + 1):
        if attempt:
            _demo.progress(f"{case.label}: others busy, retry {attempt}/{retries} ...")
            time.sleep(RETRY_PAUSE)
        else:
            _demo.progress(f"timing {case.label} ...")
        res = run_case(case, problem, names, torch, rounds)
        if best is None or (res.others or 0.0) < (best.others or 0.0):
            best = res
        if best.others is None or best.others <= BUSY_WARNING:
            break
    assert best is not None
    return best


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def _ratio(value: float) -> str:
    return f"{value:.2f}x"


def results_table(results: Sequence[CaseTimes], names: Sequence[str]) -> str:
    """One row per case: median ms, ratios against the fastest fastnorm backend, error."""
    fast = [n for n in names if n.startswith(FASTNORM_PREFIX)]
    has_torch = TORCH_IMPL in names

    def column(name: str) -> str:
        return "fastnorm" if name in fast and len(fast) == 1 else name

    ordered = [*fast, *(n for n in (TORCH_IMPL, NUMPY_IMPL) if n in names)]
    headers = ["case", *(f"{column(n)} ms" for n in ordered)]
    if has_torch:
        headers += ["torch/fn", "torch/fn min"]
    headers += ["numpy/fn", *(f"max|err| {column(n)}" for n in fast), "others"]
    rows = []
    for res in results:
        best = res.best_fastnorm(res.median)
        row = [res.case.label, *(_ms(res.median(n)) for n in ordered)]
        if has_torch:
            row.append(_ratio(res.median(TORCH_IMPL) / best))
            row.append(_ratio(res.minimum(TORCH_IMPL) / res.best_fastnorm(res.minimum)))
        row.append(_ratio(res.median(NUMPY_IMPL) / best))
        row += [f"{res.errors[n]:.1e}" for n in fast]
        busy = "?" if res.others is None else f"{res.others:.0%}"
        row.append(busy + ("!" if res.others is not None and res.others > BUSY_WARNING else ""))
        rows.append(row)
    return _demo.format_table(headers, rows, left=1)


def summary_lines(results: Sequence[CaseTimes], names: Sequence[str]) -> list[str]:
    """Geometric means of the ratio columns, and how many cases fastnorm wins against torch."""
    lines = []
    peers: list[tuple[str, str, Callable[[CaseTimes], float]]] = []
    if TORCH_IMPL in names:
        peers.append(
            ("torch/fn", "medians", lambda r: r.median(TORCH_IMPL) / r.best_fastnorm(r.median))
        )
        peers.append(
            ("torch/fn", "minima", lambda r: r.minimum(TORCH_IMPL) / r.best_fastnorm(r.minimum))
        )
    peers.append(
        ("numpy/fn", "medians", lambda r: r.median(NUMPY_IMPL) / r.best_fastnorm(r.median))
    )
    for label, stat, ratio in peers:
        values = [ratio(r) for r in results]
        wins = sum(v > 1 for v in values)
        lines.append(
            f"geometric mean {label} ({stat}): {_demo.geometric_mean(values):.2f}x"
            f" over {len(values)} cases (fastnorm faster in {wins}/{len(values)};"
            f" worst {min(values):.2f}x)"
        )
    busy = [r for r in results if r.others is not None and r.others > BUSY_WARNING]
    if busy:
        lines.append(
            f"warning: other processes used more than {BUSY_WARNING:.0%} of the CPUs during"
            f" {len(busy)} case(s) (marked !): those timings are disturbed; rerun on a quiet machine"
        )
    return lines


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
        ok = libc.mallopt(_M_MMAP_THRESHOLD, _REUSE_LIMIT) == 1
        return ok and libc.mallopt(_M_TRIM_THRESHOLD, _REUSE_LIMIT) == 1
    except (OSError, AttributeError):  # not glibc
        return False


def load_average() -> str:
    try:
        return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "load average unknown"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python bench/compare_families.py",
        description=(
            "Time fastnorm's LayerNorm, RMSNorm, GroupNorm and InstanceNorm2d (forward, backward;"
            " float32) against PyTorch CPU and the naive NumPy formula, round-robin, and print"
            " median times, ratios and geometric means."
        ),
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
        default=DEFAULT_ROUNDS,
        metavar="R",
        help=f"timed round-robin rounds per case (default {DEFAULT_ROUNDS})",
    )
    parser.add_argument(
        "--filter",
        default="",
        metavar="TEXT",
        help='only the cases whose label contains TEXT (case-insensitive), e.g. "GroupNorm",'
        ' "backward", "NHWC"',
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=DEFAULT_RETRIES,
        metavar="K",
        help="time a case again, up to K times, while other processes used more than"
        f" {BUSY_WARNING:.0%}% of the CPUs during it; the least disturbed attempt is reported"
        f" (default {DEFAULT_RETRIES}; 0: never)",
    )
    parser.add_argument(
        "--reuse-memory",
        action="store_true",
        help="make glibc's malloc reuse freed memory (mallopt) so that no implementation"
        " page-faults fresh output memory on every call (default: glibc's behaviour, which maps"
        " blocks over 32 MiB afresh each time)",
    )
    args = parser.parse_args(argv)
    if args.retries < 0:
        parser.error("--retries must be at least 0")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.reuse_memory and not reuse_memory():
        print("error: --reuse-memory needs glibc (Linux)", file=sys.stderr)
        return 2
    torch = _demo.import_torch()
    threads = _demo.configure_threads(args.threads, torch)
    notes = [busy] if (busy := _demo.busy_note()) else []
    backends = _demo.fast_backends() or (fastnorm.get_backend(),)
    if torch is None:
        notes.append("torch is not installed: install torch to compare (pip install torch)")
    names = _demo.impl_names(backends, with_torch=torch is not None)
    cases = [c for c in CASES if args.filter.lower() in c.label.lower()]
    if not cases:
        print(f"error: no case matches --filter {args.filter!r}", file=sys.stderr)
        return 2

    print("fastnorm families: LayerNorm, RMSNorm, GroupNorm, InstanceNorm2d; float32")
    print(*_demo.header_lines(backends, threads, torch), sep="\n")
    print(
        "memory: "
        + (
            "reused (--reuse-memory: glibc keeps freed blocks; no page faults on outputs)"
            if args.reuse_memory
            else "glibc default (blocks over 32 MiB are mapped afresh and page-faulted per call)"
        )
    )
    print(f"{load_average()} at the start")
    t0 = time.perf_counter()
    meter = OtherCpuMeter()
    results = []
    for shape, axis in dict.fromkeys((c.shape, c.axis) for c in cases):  # one input at a time
        problem = make_problem(shape, axis)
        for case in (c for c in cases if (c.shape, c.axis) == (shape, axis)):
            results.append(time_case(case, problem, names, torch, args.rounds, args.retries))
        del problem
    _demo.progress("")
    elapsed = time.perf_counter() - t0
    others = meter.share()
    results.sort(key=lambda r: cases.index(r.case))  # timed one input at a time; shown by family

    print(
        f"\nround-robin, {args.rounds} rounds per case ({elapsed:.1f} s, including JIT warm-up);"
        f" {load_average()} at the end"
        + ("" if others is None else f"; other processes used {others:.0%} of the CPUs")
    )
    print(results_table(results, names))
    print(
        "ms: median per call. torch/fn, numpy/fn: median-time ratios against fastnorm (> 1 means"
        " fastnorm is faster);\ntorch/fn min: the same ratio of the minimum times."
        " max|err|: fastnorm's largest absolute deviation from float64.\nothers: share of the"
        " CPUs used by other processes while the case was timed.\nbackward: fastnorm"
        " layer.backward(dy) and torch autograd.grad(y, (x, w, b), dy, retain_graph=True) after"
        " one untimed forward."
    )
    print(*summary_lines(results, names), sep="\n")
    for note in notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
