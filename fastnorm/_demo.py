"""``python -m fastnorm bench``: fastnorm against its peers, in one table.

Times every normalization family of fastnorm (BatchNorm, LayerNorm, RMSNorm, GroupNorm,
InstanceNorm) on float32 data of the benchmark matrix's shapes, forward and backward, on each fast CPU backend
(every available one except the float64 ``"numpy"`` reference and ``"cuda"``), against

* ``numpy``: the naive formula ``(x - mean) / sqrt(var + eps) * w + b`` in float32 and its
  analytic backward (what one writes without fastnorm; single-threaded, as NumPy reductions are),
* ``torch``: PyTorch CPU, ``torch.nn.functional`` forward and ``torch.autograd.grad`` backward,
  when torch is installed,
* ``ort``: ONNX Runtime (CPU), forward only, on models built with the ``onnx`` helper package,
  when both are installed,

with the same thread count for all, the implementations alternated inside every round
(round-robin, the first one rotating, garbage collector paused) so that machine drift hits all
alike, and prints the median time per call, the ratios ``fastnorm time / peer time`` (lower is
better) and fastnorm's largest deviation from a float64 computation; then the geometric means and
the worst case. Two extra figures follow: the memory bandwidth a 205 MB BatchNorm reaches against
the copy bound, and the peak resident memory of one training forward (and forward + backward)
against the ideal ``input + output (+ dy + dx)``.

Only NumPy and fastnorm are imported with this module (by ``fastnorm.__main__``, never by
``import fastnorm``); torch, onnx, onnxruntime and matplotlib are imported lazily and are optional.
The cases, data, naive NumPy layers, float64 references and per-implementation runners are shared
with the pytest-benchmark suite in ``bench/``.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import importlib.metadata
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from types import ModuleType
from typing import Any

import numpy as np

import fastnorm
from fastnorm.backends._plan import last_level_cache_bytes

EPS = 1e-5
RMS_EPS = float(np.finfo(np.float32).eps)  # what rms_norm's eps=None means for float32
MOMENTUM = 0.1
GROUPS = 32

#: family -> name shown in tables
FAMILIES: dict[str, str] = {
    "batch_norm": "BatchNorm",
    "layer_norm": "LayerNorm",
    "rms_norm": "RMSNorm",
    "group_norm": "GroupNorm",
    "instance_norm": "InstanceNorm",
}

#: what is timed -> short label ("forward" is BatchNorm's training forward)
KINDS: dict[str, str] = {"forward": "fwd", "backward": "bwd", "eval": "eval fwd"}

#: backends that are not timed: the slow float64 oracle and the GPU one
SLOW_OR_DEVICE_BACKENDS = ("numpy", "cuda")

NUMPY_IMPL = "numpy"
TORCH_IMPL = "torch"
ORT_IMPL = "ort"
FASTNORM_PREFIX = "fastnorm-"
#: the peers, in table order
PEERS = (NUMPY_IMPL, TORCH_IMPL, ORT_IMPL)

DEFAULT_ROUNDS = 15
QUICK_ROUNDS = 3
DEFAULT_RETRIES = 1
#: a case during which other processes used more than this share of the CPUs is flagged
BUSY_WARNING = 0.05
#: seconds to wait before timing a disturbed case again
RETRY_PAUSE = 2.0
#: at most this many seconds of retries in one run
RETRY_BUDGET = 60.0
#: calls shorter than this are repeated inside one timed sample (the time is per call)
MIN_SAMPLE = 1e-3
MAX_NUMBER = 200

#: the performance bar: geometric mean of fastnorm/torch at most this, and no case above this ratio
TARGET_GEOMEAN = 0.8
TARGET_WORST = 1.25
#: the memory bar: peak resident within this share of input + output (+ dy + dx)
TARGET_MEMORY = 0.05

#: the two extra figures' BatchNorm input: (64, 64, 112, 112) float32, 205 MB
EXTRA_SHAPE = (64, 64, 112, 112)
SMOKE_EXTRA_SHAPE = (2, 64, 16, 16)
EXTRA_ROUNDS = 10
PARTS = ("table", "bandwidth", "memory")


# --------------------------------------------------------------------------------------------
# Cases and data
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One benchmark case: ``kind`` of ``family`` on float32 data of ``shape``.

    ``axis`` is the channel axis (1: channels first, -1: channels last) for BatchNorm, GroupNorm
    and InstanceNorm; LayerNorm and RMSNorm normalize over the last dimension, and their
    per-feature parameters lie along ``axis=-1``. ``kind`` is ``"forward"`` (BatchNorm: training
    forward), ``"backward"`` (after one untimed training forward) or ``"eval"`` (BatchNorm with
    its running statistics).
    """

    family: str  # a key of FAMILIES
    kind: str  # a key of KINDS
    shape: tuple[int, ...]
    axis: int

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
        """Channel-axis data (4-D) with the channels last: a ``channels_last`` tensor for torch."""
        rows = self.family in ("layer_norm", "rms_norm")
        return not rows and len(self.shape) > 2 and self.axis % len(self.shape) != 1

    @property
    def layout(self) -> str:
        """``"NCHW"`` or ``"NHWC"`` for image data, ``""`` for 2-D data."""
        if self.family in ("layer_norm", "rms_norm") or len(self.shape) < 3:
            return ""
        return "NHWC" if self.channels_last else "NCHW"

    @property
    def dims(self) -> str:
        return "x".join(map(str, self.shape))

    @property
    def kind_label(self) -> str:
        return (
            "train fwd"
            if self.family == "batch_norm" and self.kind == "forward"
            else (KINDS[self.kind])
        )

    @property
    def label(self) -> str:
        """Human-readable name, e.g. ``"GroupNorm bwd NHWC 32x56x56x64"``."""
        layout = f"{self.layout} " if self.layout else ""
        return f"{FAMILIES[self.family]} {self.kind_label} {layout}{self.dims}"

    def __str__(self) -> str:
        return self.label

    @property
    def id(self) -> str:
        """Short identifier for test ids, e.g. ``"group_norm-backward-NHWC-32x56x56x64"``."""
        return "-".join(p for p in (self.family, self.kind, self.layout, self.dims) if p)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * 4


def _c(family: str, kind: str, shape: tuple[int, ...], axis: int = 1) -> Case:
    return Case(family, kind, shape, axis)


NCHW, NHWC = (32, 64, 56, 56), (32, 56, 56, 64)

#: the benchmark matrix (float32): every family, forward and backward of every shape
MATRIX: tuple[Case, ...] = (
    _c("batch_norm", "forward", NCHW),
    _c("batch_norm", "backward", NCHW),
    _c("batch_norm", "forward", NHWC, -1),
    _c("batch_norm", "backward", NHWC, -1),
    _c("batch_norm", "forward", (128, 512, 7, 7)),
    _c("batch_norm", "forward", (4096, 1024)),
    _c("batch_norm", "eval", (64, 256, 14, 14)),
    _c("batch_norm", "forward", (32, 10)),
    *(
        _c(family, kind, shape, -1)
        for family in ("layer_norm", "rms_norm")
        for kind, shape in (
            ("forward", (8192, 1024)),
            ("forward", (6304, 768)),
            ("forward", (64, 10)),
            ("backward", (8192, 1024)),
            ("backward", (6304, 768)),
        )
    ),
    _c("group_norm", "forward", NCHW),
    _c("group_norm", "backward", NCHW),
    _c("group_norm", "forward", NHWC, -1),
    _c("group_norm", "backward", NHWC, -1),
    _c("instance_norm", "forward", (16, 64, 64, 64)),
    _c("instance_norm", "backward", (16, 64, 64, 64)),
)

#: BatchNorm layouts of the pytest-benchmark suite (``bench/test_batch_norm.py``):
#: layout name -> (input shape, channel axis)
LAYOUTS: dict[str, tuple[tuple[int, ...], int]] = {"NCHW": (NCHW, 1), "NHWC": (NHWC, -1)}

#: the BatchNorm cases of the pytest-benchmark suite: every kind on both layouts
CASES: tuple[Case, ...] = tuple(
    Case("batch_norm", kind, shape, axis) for kind in KINDS for shape, axis in LAYOUTS.values()
)


def smoke_shape(case: Case) -> tuple[int, ...]:
    """A tiny shape of the same layout, channels and kernel path (for ``--smoke``)."""
    if len(case.shape) == 2:
        n, d = case.shape
        return (min(n, 16), d if d <= 64 else d // 16)
    c = case.axis % len(case.shape)
    return tuple(s if i == c else (2 if i == 0 else 4) for i, s in enumerate(case.shape))


def smoke_case(case: Case) -> Case:
    return Case(case.family, case.kind, smoke_shape(case), case.axis)


@dataclass(frozen=True)
class Problem:
    """Input data: activations, upstream gradient, parameters and running statistics.

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
    """Random float32 data with a different mean and scale in every feature along ``axis``."""
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


def stat_view(case: Case) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """How the naive formula sees the data: ``(view shape, statistics axes, parameter shape)``.

    For every family but BatchNorm. The input is reshaped (a view, no copy) so that statistics are
    taken over ``statistics axes`` and the parameters broadcast as ``parameter shape``:
    LayerNorm/RMSNorm over the last axis; InstanceNorm over the spatial axes; GroupNorm splits the
    channel axis into ``(groups, channels per group)`` and reduces over everything but the batch
    and group axes.
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
# The naive NumPy formulas and the float64 reference
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
        self.running_var += self.momentum * var * (n / max(n - 1, 1))

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


class NaiveNumpyNorm:
    """LayerNorm, RMSNorm, GroupNorm and InstanceNorm as one writes them in plain NumPy.

    ``forward`` computes ``xhat = (x - x.mean(axes)) / np.sqrt(x.var(axes) + eps)`` (RMSNorm:
    ``x / np.sqrt((x * x).mean(axes) + eps)``) on the view of :func:`stat_view`, then
    ``xhat * w + b``, and keeps ``xhat`` and ``rstd`` for the analytic ``backward``::

        dxhat = dy * w
        dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))  # RMSNorm: no mean(dxhat)
    """

    def __init__(self, case: Case, problem: Problem, dtype: Any = np.float32) -> None:
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


def reference_result(case: Case, problem: Problem) -> np.ndarray:
    """The case's result (``y``, or ``dx`` for backward) computed in float64 NumPy."""
    p = problem
    if case.family != "batch_norm":
        norm = NaiveNumpyNorm(case, p, dtype=np.float64)
        y = norm.forward(p.x.astype(np.float64))
        return y if case.kind != "backward" else norm.backward(p.dy.astype(np.float64))
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
    ``to_numpy`` turns that result into a NumPy array in the case's layout. ``context()``, when
    given, is entered around every sample (fastnorm: ``use_backend``), as a user selects a backend
    once for many calls; a bare ``call()`` outside the timing enters it itself.
    """

    name: str
    call: Callable[[], Any]
    to_numpy: Callable[[Any], np.ndarray] = field(default=np.asarray)
    context: Callable[[], AbstractContextManager[Any]] | None = None

    def entered(self) -> AbstractContextManager[Any]:
        """:attr:`context` entered (a no-op context when there is none)."""
        return self.context() if self.context is not None else nullcontext()

    def run(self) -> Any:
        """One call, inside :attr:`context`."""
        with self.entered():
            return self.call()


class Unsupported(Exception):
    """An implementation does not run a case (the message says why)."""


@dataclass
class Runtimes:
    """The optional peers that import (``None`` where not), and why those that do not."""

    torch: ModuleType | None = None
    ort: ModuleType | None = None
    onnx: ModuleType | None = None
    threads: int = 1
    notes: dict[str, str] = field(default_factory=dict)


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


def import_ort() -> tuple[ModuleType | None, ModuleType | None, str | None]:
    """``(onnxruntime, onnx, None)``, or ``(None, None, why not)``.

    ONNX Runtime runs models; the ``onnx`` package builds them (``onnx.helper``).
    """
    try:
        import onnxruntime  # type: ignore[import-untyped]
    except (ImportError, OSError):
        return None, None, "onnxruntime is not installed (pip install onnxruntime onnx)"
    try:
        import onnx
        import onnx.helper
    except (ImportError, OSError):
        return None, None, "the onnx package (needed to build the models) is not installed"
    return onnxruntime, onnx, None


def impl_names(backends: Sequence[str], with_torch: bool, with_ort: bool = False) -> list[str]:
    """Names of the implementations compared: fastnorm per backend, NumPy, torch, then ORT."""
    names = [FASTNORM_PREFIX + b for b in backends] + [NUMPY_IMPL]
    if with_torch:
        names.append(TORCH_IMPL)
    if with_ort:
        names.append(ORT_IMPL)
    return names


def build_impl(
    name: str,
    case: Case,
    problem: Problem,
    torch: ModuleType | None = None,
    runtimes: Runtimes | None = None,
) -> Impl:
    """Prepare implementation ``name`` (see :func:`impl_names`) for ``case``.

    For the backward case this runs the (untimed) training forward that backward needs. Raises
    :class:`Unsupported` when the implementation does not run the case.
    """
    if name.startswith(FASTNORM_PREFIX):
        return fastnorm_impl(case, problem, name.removeprefix(FASTNORM_PREFIX))
    if name == NUMPY_IMPL:
        return numpy_impl(case, problem)
    if name == TORCH_IMPL:
        torch = torch if torch is not None else (runtimes.torch if runtimes else None)
        if torch is None:
            raise ValueError("the torch implementation needs torch installed")
        return torch_impl(case, problem, torch)
    if name == ORT_IMPL:
        if runtimes is None or runtimes.ort is None or runtimes.onnx is None:
            raise ValueError("the ort implementation needs onnxruntime and onnx installed")
        return ort_impl(case, problem, runtimes)
    raise ValueError(f"unknown implementation {name!r}")


def make_layer(case: Case) -> Any:
    """The fastnorm layer of ``case`` (float32, with a weight, and a bias but for RMSNorm)."""
    f = case.family
    if f == "batch_norm":
        return fastnorm.BatchNorm(
            case.num_features, eps=EPS, momentum=MOMENTUM, axis=case.axis, dtype=np.float32
        )
    if f == "layer_norm":
        return fastnorm.LayerNorm(case.shape[-1], eps=case.eps, dtype=np.float32)
    if f == "rms_norm":
        return fastnorm.RMSNorm(case.shape[-1], eps=case.eps, dtype=np.float32)
    if f == "group_norm":
        return fastnorm.GroupNorm(
            case.num_groups, case.num_features, eps=case.eps, axis=case.axis, dtype=np.float32
        )
    if f == "instance_norm":
        return fastnorm.InstanceNorm2d(
            case.num_features, eps=case.eps, momentum=MOMENTUM, affine=True, axis=case.axis,
            dtype=np.float32,
        )  # fmt: skip
    raise ValueError(f"unknown family {f!r}")


def fastnorm_impl(case: Case, problem: Problem, backend: str) -> Impl:
    """The fastnorm layer on ``backend``: ``layer(x)``, or ``layer.backward(dy)``."""
    p = problem
    layer = make_layer(case)
    values = {
        "weight": p.weight,
        "bias": p.bias,
        "running_mean": p.running_mean,
        "running_var": p.running_var,
        "num_batches_tracked": np.asarray(0),
    }
    layer.load_state_dict({k: values[k] for k in layer.state_dict() if k in values})
    layer.train(case.kind != "eval")
    context = partial(fastnorm.use_backend, backend)
    call: Callable[[], Any] = partial(layer, p.x)
    if case.kind == "backward":
        with context():
            call()  # the training forward whose backward is timed
        call = partial(layer.backward, p.dy)
    return Impl(FASTNORM_PREFIX + backend, call, context=context)


def numpy_impl(case: Case, problem: Problem) -> Impl:
    """The naive float32 NumPy formula (:class:`NaiveNumpyBatchNorm`, :class:`NaiveNumpyNorm`)."""
    if case.family == "batch_norm":
        bn = NaiveNumpyBatchNorm(problem)
        call = partial(bn.forward, problem.x, case.kind != "eval")
        backward = bn.backward
    else:
        norm = NaiveNumpyNorm(case, problem)
        call = partial(norm.forward, problem.x)
        backward = norm.backward
    if case.kind == "backward":
        call()
        call = partial(backward, problem.dy)
    return Impl(NUMPY_IMPL, call)


def _to_torch(torch: ModuleType, a: np.ndarray, channels_last: bool) -> Any:
    """A torch tensor sharing ``a``'s memory; NHWC data becomes a channels_last NCHW tensor."""
    t = torch.from_numpy(a)
    return t.permute(0, 3, 1, 2) if channels_last else t


def _from_torch(t: Any, channels_last: bool) -> np.ndarray:
    """The inverse of :func:`_to_torch`: a NumPy array in the original layout."""
    t = t.detach()
    return t.permute(0, 2, 3, 1).numpy() if channels_last else t.numpy()


def torch_forward(torch: ModuleType, case: Case, problem: Problem) -> Callable[..., Any]:
    """``forward(x, weight, bias)`` with ``torch.nn.functional`` (``bias`` unused by RMSNorm)."""
    F = torch.nn.functional
    normalized = (case.shape[-1],)
    f = case.family
    if f == "batch_norm":
        rmean = torch.from_numpy(problem.running_mean.copy())
        rvar = torch.from_numpy(problem.running_var.copy())
        training = case.kind != "eval"
        return lambda x, w, b: F.batch_norm(x, rmean, rvar, w, b, training, MOMENTUM, EPS)
    if f == "layer_norm":
        return lambda x, w, b: F.layer_norm(x, normalized, w, b, case.eps)
    if f == "rms_norm":
        return lambda x, w, b: F.rms_norm(x, normalized, w, case.eps)
    if f == "group_norm":
        return lambda x, w, b: F.group_norm(x, case.num_groups, w, b, case.eps)
    if f == "instance_norm":
        return lambda x, w, b: F.instance_norm(x, None, None, w, b, True, MOMENTUM, case.eps)
    raise ValueError(f"unknown family {f!r}")


def torch_impl(case: Case, problem: Problem, torch: ModuleType) -> Impl:
    """PyTorch CPU: ``torch.nn.functional`` forward; backward through ``autograd.grad``.

    Backward: the forward runs once here, untimed, with the input, weight and bias requiring
    grad; each call then runs ``torch.autograd.grad(y, (x, weight, bias), dy,
    retain_graph=True)`` (``dx``, ``grad_weight`` and ``grad_bias``, what fastnorm's backward
    computes) on that kept graph, so only the backward is timed.
    """
    p = problem
    forward = torch_forward(torch, case, p)
    x = _to_torch(torch, p.x, case.channels_last)
    weight, bias = torch.from_numpy(p.weight.copy()), torch.from_numpy(p.bias.copy())
    if not case.has_bias:
        bias = None
    to_numpy = partial(_from_torch, channels_last=case.channels_last)
    if case.kind != "backward":
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


#: ONNX operator and opset per family (GroupNormalization: opset 21's per-channel scale and bias)
ORT_OPS: dict[str, tuple[str, int]] = {
    "batch_norm": ("BatchNormalization", 15),
    "instance_norm": ("InstanceNormalization", 17),
    "group_norm": ("GroupNormalization", 21),
    "layer_norm": ("LayerNormalization", 17),
    "rms_norm": ("RMSNormalization", 23),
}


def ort_unsupported(case: Case) -> str | None:
    """Why ONNX Runtime does not run ``case`` (``None`` when it does)."""
    if case.kind == "backward":
        return "ONNX Runtime: forward only"
    if case.channels_last:
        return "ONNX normalization ops are channels-first (NCHW only)"
    return None


def ort_model(case: Case, problem: Problem, onnx: ModuleType) -> bytes:
    """A one-node ONNX model computing ``case``'s forward on input ``x``, output ``y``.

    BatchNormalization with ``training_mode=1`` (batch statistics; the running ones come out as
    extra outputs, ONNX's ``momentum`` being the weight of the old running value) for the training
    forward, ``training_mode=0`` for eval; the other families with their ONNX operator of
    :data:`ORT_OPS`, normalizing over the last axis (LayerNorm, RMSNorm) or per channel/group.
    """
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    op, opset = ORT_OPS[case.family]
    p = problem
    f32 = onnx.TensorProto.FLOAT
    shape = list(case.shape)
    inputs = [helper.make_tensor_value_info("x", f32, shape)]
    outputs = [helper.make_tensor_value_info("y", f32, shape)]
    params = {"scale": p.weight}
    if case.has_bias:
        params["bias"] = p.bias
    attrs: dict[str, Any] = {"epsilon": case.eps}
    node_outputs = ["y"]
    if case.family == "batch_norm":
        params["mean"], params["var"] = p.running_mean, p.running_var
        if case.kind == "forward":
            attrs.update(momentum=1.0 - MOMENTUM, training_mode=1)
            node_outputs += ["running_mean", "running_var"]
            c = case.num_features
            outputs += [helper.make_tensor_value_info(n, f32, [c]) for n in node_outputs[1:]]
    elif case.family == "group_norm":
        attrs["num_groups"] = case.num_groups
    elif case.family in ("layer_norm", "rms_norm"):
        attrs["axis"] = -1
    inits = [numpy_helper.from_array(np.ascontiguousarray(v), k) for k, v in params.items()]
    node = helper.make_node(op, ["x", *params], node_outputs, **attrs)
    graph = helper.make_graph([node], f"fastnorm_{case.family}", inputs, outputs, inits)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets)
    try:
        model.ir_version = helper.find_min_ir_version_for(opsets)
    except (AttributeError, ValueError, KeyError):
        pass  # keep the onnx package's default
    return model.SerializeToString()


def ort_session(model: bytes, runtimes: Runtimes) -> Any:
    """A CPU session with ``intra_op_num_threads`` = the benchmark's threads, inter-op 1.

    Its thread pool does not spin after a run (``session.intra_op.allow_spinning=0``): spinning
    threads would steal the CPUs from the implementation timed next in the round.
    """
    ort: Any = runtimes.ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = runtimes.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def ort_impl(case: Case, problem: Problem, runtimes: Runtimes) -> Impl:
    """ONNX Runtime CPU, forward only: ``session.run(["y"], {"x": x})``."""
    reason = ort_unsupported(case)
    if reason:
        raise Unsupported(reason)
    try:
        assert runtimes.onnx is not None
        session = ort_session(ort_model(case, problem, runtimes.onnx), runtimes)
    except Exception as exc:  # an operator this onnxruntime lacks, an opset it does not know
        op, opset = ORT_OPS[case.family]
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Unsupported(f"{op} (opset {opset}) not supported here: {first[:120]}") from exc
    feeds = {"x": problem.x}
    return Impl(ORT_IMPL, lambda: session.run(["y"], feeds)[0])


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


#: how the caches stand when a sample starts (``--cache``)
CACHE_MODES: dict[str, str] = {
    "warm": "one untimed call of the same implementation right before each sample",
    "cold": "caches flushed (a buffer of twice the last-level cache written) before each sample",
    "shared": "as the previous implementation in the round left them",
}


_flush_buffer: np.ndarray | None = None


def flush_caches() -> None:
    """Evict the data of the last calls from the CPU caches: write twice the last-level cache."""
    global _flush_buffer
    if _flush_buffer is None:
        _flush_buffer = np.zeros(2 * last_level_cache_bytes() // 8)
    _flush_buffer += 1.0


def time_round_robin(
    impls: Sequence[Impl],
    rounds: int,
    numbers: dict[str, int] | None = None,
    cache: str = "warm",
) -> dict[str, list[float]]:
    """Seconds per call of each implementation, alternating them inside every round.

    The starting implementation rotates from round to round, so none always runs first (or
    right after the slow one). ``numbers[name]`` calls (default 1) make one sample of ``name``;
    the sample's time is divided by it. ``cache`` (:data:`CACHE_MODES`) sets how the caches
    stand when a sample starts: ``"warm"`` runs the implementation once, untimed, right
    before (each one then meets the caches as repeated calls of itself leave them, rather than
    always the state its fixed predecessor in the rotation leaves, which for a tensor near the
    cache size favours whoever follows a peer that just read the same input); ``"cold"``
    flushes them. The garbage collector is paused while timing.
    """
    if cache not in CACHE_MODES:
        raise ValueError(f"cache must be one of {', '.join(CACHE_MODES)}, got {cache!r}")
    times: dict[str, list[float]] = {impl.name: [] for impl in impls}
    numbers = numbers or {}
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for r in range(rounds):
            start = r % len(impls)
            for impl in [*impls[start:], *impls[:start]]:
                number = numbers.get(impl.name, 1)
                call = impl.call
                with impl.entered():
                    if cache == "warm":
                        call()
                    elif cache == "cold":
                        flush_caches()
                    t0 = time.perf_counter()
                    for _ in range(number):
                        call()
                    times[impl.name].append((time.perf_counter() - t0) / number)
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


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
class CaseResult:
    """One case: per-call seconds of every implementation, fastnorm's (and the peers') error
    against float64, how busy other processes kept the CPUs meanwhile (a share, ``None`` where
    unknown), the calls per sample, and the implementations that did not run (and why)."""

    case: Case
    times: dict[str, list[float]]
    errors: dict[str, float]
    others: float | None = None
    numbers: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    attempts: int = 1
    #: the statistic of the times that is reported and compared: "median" or "min"
    stat: str = "median"

    def value(self, name: str) -> float | None:
        """The median (or, with ``stat="min"``, minimum) seconds per call of ``name``."""
        t = self.times.get(name)
        if not t:
            return None
        return min(t) if self.stat == "min" else statistics.median(t)

    def ratio(self, backend: str, peer: str) -> float | None:
        """``fastnorm-<backend>`` time / ``peer`` time (``None`` where either did not run)."""
        fn, other = self.value(FASTNORM_PREFIX + backend), self.value(peer)
        return None if fn is None or other is None or other <= 0 else fn / other

    def best_fastnorm(self) -> float:
        """Time of the fastest fastnorm backend."""
        return min(v for n in self.times if n.startswith(FASTNORM_PREFIX) and (v := self.value(n)))


def _calibrate(impl: Impl, first_call: float) -> int:
    """Calls per sample so that a sample lasts about :data:`MIN_SAMPLE` (1 for slow calls)."""
    if first_call >= 10 * MIN_SAMPLE:
        return 1
    with impl.entered():
        t0 = time.perf_counter()
        impl.call()
        seconds = time.perf_counter() - t0
    return int(min(MAX_NUMBER, max(1, math.ceil(MIN_SAMPLE / max(seconds, 1e-7)))))


def run_case(
    case: Case,
    problem: Problem,
    names: Sequence[str],
    runtimes: Runtimes,
    rounds: int,
    cache: str = "warm",
) -> CaseResult:
    """Prepare, warm up (JIT, first touch), check and time every implementation on one case."""
    impls, skipped = [], {}
    for name in names:
        try:
            impls.append(build_impl(name, case, problem, runtimes.torch, runtimes))
        except Unsupported as exc:
            skipped[name] = str(exc)
    first, numbers = {}, {}
    for impl in impls:  # warm-up, untimed
        t0 = time.perf_counter()
        first[impl.name] = impl.to_numpy(impl.run())
        numbers[impl.name] = _calibrate(impl, time.perf_counter() - t0)
    reference = reference_result(case, problem)
    errors = {name: max_abs_diff(result, reference) for name, result in first.items()}
    del first, reference
    meter = OtherCpuMeter()
    times = time_round_robin(impls, rounds, numbers, cache)
    return CaseResult(case, times, errors, meter.share(), numbers, skipped)


class RetryBudget:
    """Seconds of retries left in this run."""

    def __init__(self, seconds: float = RETRY_BUDGET) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> bool:
        return time.monotonic() < self.deadline


def time_case(
    case: Case,
    problem: Problem,
    names: Sequence[str],
    runtimes: Runtimes,
    rounds: int,
    retries: int,
    budget: RetryBudget | None = None,
    cache: str = "warm",
) -> CaseResult:
    """:func:`run_case`, run again (up to ``retries`` times, after a pause, while the run's retry
    budget lasts) while other processes disturbed it; returns the least disturbed attempt."""
    best: CaseResult | None = None
    for attempt in range(retries + 1):
        if attempt:
            if budget is not None and not budget.left():
                break
            progress(f"{case.label}: others busy, retry {attempt}/{retries} ...")
            time.sleep(RETRY_PAUSE)
        else:
            progress(f"timing {case.label} ...")
        res = run_case(case, problem, names, runtimes, rounds, cache)
        if best is None or (res.others or 0.0) < (best.others or 0.0):
            best = res
        best.attempts = attempt + 1
        if best.others is None or best.others <= BUSY_WARNING:
            break
    assert best is not None
    return best


def warm_up_jit(backends: Sequence[str], cases: Iterable[Case] = MATRIX) -> float:
    """Compile (or load from the on-disk cache) every kernel the cases use; returns seconds.

    ``fastnorm.warmup()`` on each backend, then every case on a tiny input of its layout.
    """
    t0 = time.perf_counter()
    for backend in backends:
        with fastnorm.use_backend(backend):
            fastnorm.warmup()
    for case in cases:
        small = smoke_case(case)
        problem = make_problem(small.shape, small.axis, seed=1)
        for backend in backends:
            fastnorm_impl(small, problem, backend).run()
    return time.perf_counter() - t0


# --------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------


def geometric_mean(values: Iterable[float]) -> float:
    """The geometric mean of positive numbers (``nan`` for none)."""
    logs = [math.log(v) for v in values]
    return math.exp(sum(logs) / len(logs)) if logs else math.nan


@dataclass(frozen=True)
class RatioSummary:
    """``fastnorm-<backend> / peer`` over the cases both ran."""

    backend: str
    peer: str
    geomean: float
    count: int
    worst: float
    worst_case: str
    above_limit: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "geomean": self.geomean,
            "cases": self.count,
            "worst": self.worst,
            "worst_case": self.worst_case,
            f"above_{TARGET_WORST}": self.above_limit,
        }


def summarize(results: Sequence[CaseResult], backend: str, peer: str) -> RatioSummary | None:
    pairs = [(r.case.label, q) for r in results if (q := r.ratio(backend, peer)) is not None]
    if not pairs:
        return None
    worst_case, worst = max(pairs, key=lambda p: p[1])
    return RatioSummary(
        backend,
        peer,
        geometric_mean(q for _, q in pairs),
        len(pairs),
        worst,
        worst_case,
        sum(q > TARGET_WORST for _, q in pairs),
    )


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
        f"other processes kept {busy:.0%} of the CPUs busy when the benchmark started:"
        " timings are noisy (and multi-threaded ones suffer most)"
    )


def load_average() -> str:
    try:
        return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "load average unknown"


def versions(runtimes: Runtimes | None = None) -> dict[str, str]:
    rt = runtimes or Runtimes()
    return {
        "fastnorm": getattr(fastnorm, "__version__", None) or _version("fastnorm-kernels"),
        "numpy": np.__version__,
        "numba": _version("numba"),
        "torch": rt.torch.__version__ if rt.torch is not None else "-",
        "onnxruntime": rt.ort.__version__ if rt.ort is not None else "-",
        "onnx": rt.onnx.__version__ if rt.onnx is not None else "-",
        "python": platform.python_version(),
    }


def header_lines(
    backends: Sequence[str],
    threads: int,
    torch: ModuleType | None,
    runtimes: Runtimes | None = None,
) -> list[str]:
    """Versions, backends, threads and the machine."""
    rt = runtimes or Runtimes(torch=torch, threads=threads)
    v = versions(rt)
    shown = [
        f"fastnorm {v['fastnorm']}",
        f"numpy {v['numpy']}",
        f"numba {v['numba']}",
        f"torch {v['torch']}" if rt.torch is not None else "torch: not used",
        f"onnxruntime {v['onnxruntime']} (onnx {v['onnx']})"
        if rt.ort is not None
        else "ort: not used",
        f"Python {v['python']}",
    ]
    peers = [p for p, m in ((TORCH_IMPL, rt.torch), (ORT_IMPL, rt.ort)) if m is not None]
    return [
        " | ".join(shown),
        (
            f"backend: {fastnorm.get_backend()} (available:"
            f" {', '.join(fastnorm.available_backends())}; timed: {', '.join(backends)})"
        ),
        f"threads: {threads} for fastnorm"
        + "".join(f", {p}" for p in peers)
        + " (the naive NumPy formula is single-threaded)",
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


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1e3:.3f}" if seconds < 1e-3 else f"{seconds * 1e3:.2f}"


def _q(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.2f}"


def results_table(
    results: Sequence[CaseResult], backends: Sequence[str], peers: Sequence[str]
) -> str:
    """One row per case and fastnorm backend: median ms of fastnorm and of each peer (on the
    case's first row), the ratios fastnorm / peer, fastnorm's max abs error, others' CPU share."""
    headers = ["case", "backend", "fastnorm ms", *(f"{p} ms" for p in peers)]
    headers += [f"fn/{p}" for p in peers] + ["max|err|", "others"]
    rows = []
    for res in results:
        for i, b in enumerate(backends):
            name = FASTNORM_PREFIX + b
            row = [res.case.label if i == 0 else "", b, _ms(res.value(name))]
            row += [_ms(res.value(p)) if i == 0 else "" for p in peers]
            row += [_q(res.ratio(b, p)) for p in peers]
            err = res.errors.get(name)
            row.append("-" if err is None else f"{err:.1e}")
            if i == 0:
                busy = "?" if res.others is None else f"{res.others:.0%}"
                flag = res.others is not None and res.others > BUSY_WARNING
                row.append(busy + ("!" if flag else ""))
            else:
                row.append("")
            rows.append(row)
    return format_table(headers, rows)


def legend(peers: Sequence[str], rounds: int, stat: str = "median", cache: str = "warm") -> str:
    what = "minimum" if stat == "min" else "median"
    lines = [
        (
            f"ms: {what} time per call over {rounds} round-robin rounds (short calls repeated"
            f" inside a sample; caches {cache}: {CACHE_MODES[cache]}). fn/<peer>: fastnorm time /"
            " peer time, lower is better (< 1: fastnorm faster)."
        ),
        (
            "max|err|: fastnorm's largest absolute deviation (y, or dx for backward) from float64."
            " others: CPU share used by other processes while the case was timed (! above"
            f" {BUSY_WARNING:.0%})."
        ),
        (
            "backward: fastnorm layer.backward(dy) after one untimed training forward; numpy: the"
            " analytic backward"
        ),
    ]
    if TORCH_IMPL in peers:
        lines[-1] += "; torch: autograd.grad(y, (x, w, b), dy, retain_graph=True)"
    lines[-1] += "."
    if ORT_IMPL in peers:
        lines.append(
            "ort: ONNX Runtime CPU, forward only (no training backward); NHWC not run (the ONNX"
            " normalization ops are channels-first); thread pool not spinning between runs."
        )
    return "\n".join(lines)


def summary_lines(
    results: Sequence[CaseResult], backends: Sequence[str], peers: Sequence[str]
) -> list[str]:
    """Geometric means of fastnorm / torch, / numpy, / ort per backend, the worst case, the
    verdict against the performance bar, and a warning about disturbed cases."""
    lines = []
    for b in backends:
        for peer in (TORCH_IMPL, NUMPY_IMPL, ORT_IMPL):
            if peer not in peers or (s := summarize(results, b, peer)) is None:
                continue
            text = (
                f"fastnorm-{b} / {peer}: geometric mean {s.geomean:.2f} over {s.count}"
                f" case{'s' if s.count != 1 else ''};"
                f" worst {s.worst:.2f} ({s.worst_case})"
            )
            if peer == TORCH_IMPL:
                met = s.geomean <= TARGET_GEOMEAN and s.above_limit == 0
                text += (
                    f"; {s.above_limit} above {TARGET_WORST}"
                    f" -> target (geomean <= {TARGET_GEOMEAN}, none above {TARGET_WORST}):"
                    f" {'met' if met else 'not met'}"
                )
            lines.append(text)
    busy = [r for r in results if r.others is not None and r.others > BUSY_WARNING]
    if busy:
        lines.append(
            f"warning: other processes used more than {BUSY_WARNING:.0%} of the CPUs during"
            f" {len(busy)} case(s) (marked !): those timings are disturbed; rerun on a quiet"
            " machine"
        )
    return lines


def progress(message: str) -> None:
    """Show a transient status line on stderr when it is a terminal (empty: clear it)."""
    if sys.stderr.isatty():
        sys.stderr.write(f"\r{message:<70.70}\r" if message else f"\r{'':<70}\r")
        sys.stderr.flush()


# --------------------------------------------------------------------------------------------
# Extra figure 1: bandwidth against the copy bound
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Extra figure 2: peak resident memory, in fresh subprocesses
# --------------------------------------------------------------------------------------------


def _proc_status() -> dict[str, int]:
    """VmRSS and VmHWM of this process in bytes (Linux), else ``{}``."""
    values = {}
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError):
        return {}
    return values


def _rss() -> tuple[int, int]:
    """(current RSS, peak RSS) in bytes; current is ``-1`` where only the peak is known."""
    status = _proc_status()
    if "VmRSS" in status and "VmHWM" in status:
        return status["VmRSS"], status["VmHWM"]
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return -1, peak * (1 if sys.platform == "darwin" else 1024)


def _reset_peak() -> bool:
    """Reset the peak RSS (VmHWM) to the current RSS (Linux ``clear_refs``); ``False`` if not."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return False
    return True


def memory_child(spec_json: str) -> None:
    """Run in a fresh interpreter: one BatchNorm training forward (``mode="forward"``:
    functional ``batch_norm``) or layer forward + backward (``mode="layer"``) on the figure's
    input, printing the resident memory before and the peak during it as JSON."""
    spec = json.loads(spec_json)
    shape, impl, mode, threads = tuple(spec["shape"]), spec["impl"], spec["mode"], spec["threads"]
    c = shape[1]
    fastnorm.set_num_threads(threads)
    torch: Any = None
    if impl == TORCH_IMPL:
        torch = import_torch()
        torch.set_num_threads(threads)
    else:
        fastnorm.set_backend(impl.removeprefix(FASTNORM_PREFIX))
        fastnorm.warmup()
    w, b = np.ones(c, np.float32), np.zeros(c, np.float32)

    def run(x: np.ndarray, dy: np.ndarray | None) -> tuple[Any, ...]:
        rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
        if torch is not None:
            F = torch.nn.functional
            xt, wt, bt = torch.from_numpy(x), torch.from_numpy(w.copy()), torch.from_numpy(b.copy())
            if dy is None:
                return (F.batch_norm(xt, torch.from_numpy(rm), torch.from_numpy(rv), wt, bt, True),)
            leaves = (xt.requires_grad_(), wt.requires_grad_(), bt.requires_grad_())
            y = F.batch_norm(
                *leaves[:1], torch.from_numpy(rm), torch.from_numpy(rv), *leaves[1:], True
            )
            return (y, *torch.autograd.grad(y, leaves, torch.from_numpy(dy)))
        if dy is None:
            return (fastnorm.batch_norm(x, rm, rv, w, b, training=True, axis=1),)
        layer = fastnorm.BatchNorm(c, axis=1)
        y = layer(x)
        return (y, layer.backward(dy))

    small = (2, c, 4, 4)  # warm-up (JIT, lazy imports) on a tiny input
    run(np.ones(small, np.float32), None if mode == "forward" else np.ones(small, np.float32))
    gc.collect()
    rng = np.random.default_rng(0)
    x = np.empty(shape, np.float32)
    rng.standard_normal(dtype=np.float32, out=x)  # no temporaries
    dy = None
    if mode == "layer":
        dy = np.empty(shape, np.float32)
        rng.standard_normal(dtype=np.float32, out=dy)
    reset = _reset_peak()
    rss0, hwm0 = _rss()
    results = run(x, dy)
    rss1, hwm1 = _rss()
    kept = sum(int(np.asarray(r.detach() if hasattr(r, "detach") else r).nbytes) for r in results
               if r is not None and getattr(r, "ndim", 0) == len(shape))  # fmt: skip
    print(json.dumps({"rss_before": rss0, "peak_before": hwm0, "peak_after": hwm1,
                      "rss_after": rss1, "reset": reset, "outputs_bytes": kept}))  # fmt: skip


def _run_memory_child(spec: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
    code = "import sys; from fastnorm._demo import memory_child; memory_child(sys.argv[1])"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, json.dumps(spec)],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {proc.returncode}: {tail[:200]}"}
    return json.loads(lines[-1])


def memory_figure(
    backends: Sequence[str], runtimes: Runtimes, shape: tuple[int, ...] = EXTRA_SHAPE
) -> dict[str, Any]:
    """Peak resident memory of a BatchNorm training forward (and layer forward + backward) per
    implementation, each in a fresh subprocess, against the ideal ``input + output (+ dy + dx)``.

    The increase of the peak over the resident memory just before the call (input, and dy, in
    place; the peak reset there with ``clear_refs`` where Linux allows, else the warm-up's peak
    is checked to stay below) is compared with the outputs the call must create: ``y`` (and
    ``dx``). "over ideal" is the extra, ``increase - outputs``, as a share of the ideal
    ``input + output (+ dy + dx)``.
    """
    nbytes = math.prod(shape) * 4
    names = [FASTNORM_PREFIX + b for b in backends]
    if runtimes.torch is not None:
        names.append(TORCH_IMPL)
    rows = []
    for name in names:
        for mode in ("forward", "layer"):
            progress(f"memory: {name} {mode} ...")
            spec = {"shape": list(shape), "impl": name, "mode": mode, "threads": runtimes.threads}
            res = _run_memory_child(spec)
            row: dict[str, Any] = {"impl": name, "mode": mode, **res}
            if "error" not in res:
                outputs = nbytes * (1 if mode == "forward" else 2)
                ideal = nbytes * (2 if mode == "forward" else 4)
                base = res["rss_before"] if res["rss_before"] >= 0 else res["peak_before"]
                increase = res["peak_after"] - base
                row.update(
                    ideal_increase=outputs,
                    increase=increase,
                    extra=increase - outputs,
                    ideal=ideal,
                    over_ideal=(increase - outputs) / ideal,
                    baseline_ok=res["reset"] or res["peak_before"] <= base + nbytes // 100,
                )
            rows.append(row)
    progress("")
    return {"shape": list(shape), "bytes": nbytes, "rows": rows}


def memory_report(fig: dict[str, Any]) -> str:
    mb = fig["bytes"] / 1e6
    shape = "x".join(map(str, fig["shape"]))
    head = (
        f"Memory: peak resident set of one BatchNorm training call on {shape} float32"
        f" ({mb:.0f} MB), each in a fresh process\n(forward: functional batch_norm, ideal = input +"
        " output; layer fwd+bwd: BatchNorm layer(x) then .backward(dy), ideal = input + dy +"
        " output + dx)"
    )
    rows = []
    for r in fig["rows"]:
        what = "forward" if r["mode"] == "forward" else "layer fwd+bwd"
        if "error" in r:
            rows.append([r["impl"], what, "-", "-", "-", "-", "failed: " + r["error"]])
            continue
        within = r["over_ideal"] <= TARGET_MEMORY
        rows.append([
            r["impl"], what, f"{r['rss_before'] / 1e6:.0f}", f"{r['increase'] / 1e6:.1f}",
            f"{r['ideal_increase'] / 1e6:.1f}", f"{r['extra'] / 1e6:+.1f}",
            f"{r['over_ideal']:+.1%}" + ("" if within else " (above 5%)")
            + ("" if r["baseline_ok"] else " ?"),
        ])  # fmt: skip
    table = format_table(
        ["impl", "call", "RSS before MB", "peak increase MB", "outputs MB", "extra MB",
         "over ideal"], rows,
    )  # fmt: skip
    note = (
        "peak increase: peak RSS during the call minus RSS before it (input, and dy, resident);"
        " outputs: y (and dx) that the call must create;\nover ideal: extra / ideal, the"
        f" bar is at most {TARGET_MEMORY:.0%}. ?: the peak could not be reset before the call"
        " and the warm-up's peak was higher."
    )
    return f"{head}\n{table}\n{note}"


# --------------------------------------------------------------------------------------------
# Plot and JSON
# --------------------------------------------------------------------------------------------


def import_pyplot() -> ModuleType | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except (ImportError, OSError):
        return None
    return plt


def plot_results(
    path: str,
    results: Sequence[CaseResult],
    backends: Sequence[str],
    peers: Sequence[str],
    plt: Any,
) -> None:
    """Horizontal bars of fastnorm / peer per case (log scale), one panel per backend."""
    labels = [r.case.label for r in results]
    n_peers = max(len(peers), 1)
    fig, axes = plt.subplots(
        1, len(backends), figsize=(6 * len(backends) + 2, 0.32 * len(labels) * n_peers / 2 + 2),
        sharey=True, squeeze=False,
    )  # fmt: skip
    height = 0.8 / n_peers
    for ax, b in zip(axes[0], backends, strict=True):
        for j, peer in enumerate(peers):
            ys = [i + (j - (n_peers - 1) / 2) * height for i in range(len(labels))]
            qs = [r.ratio(b, peer) for r in results]
            kept = [(y, q) for y, q in zip(ys, qs, strict=True) if q is not None]
            ax.barh(
                [y for y, _ in kept],
                [q for _, q in kept],
                height=height,
                label=f"fastnorm / {peer}",
            )
        ax.set_xscale("log")
        for x, style in ((1.0, "-"), (TARGET_GEOMEAN, ":"), (TARGET_WORST, "--")):
            ax.axvline(x, color="k", linestyle=style, linewidth=0.8)
        ax.set_title(f"fastnorm-{b} (lower is better)")
        ax.set_xlabel("time ratio fastnorm / peer")
    axes[0][0].set_yticks(range(len(labels)))
    axes[0][0].set_yticklabels(labels, fontsize="small")
    axes[0][0].invert_yaxis()
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="upper center", ncol=n_peers, fontsize="small")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / fig.get_figheight()))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def results_json(
    results: Sequence[CaseResult],
    backends: Sequence[str],
    peers: Sequence[str],
    meta: dict[str, Any],
    extras: dict[str, Any],
) -> dict[str, Any]:
    names = [FASTNORM_PREFIX + b for b in backends] + list(peers)
    cases = []
    for r in results:
        impls = {}
        for n in names:
            t = r.times.get(n)
            if t:
                impls[n] = {
                    "median_s": statistics.median(t),
                    "min_s": min(t),
                    "times_s": t,
                    "calls_per_sample": r.numbers.get(n, 1),
                    "max_abs_err": r.errors.get(n),
                }
            else:
                impls[n] = {"skipped": r.skipped.get(n, "not run")}
        cases.append({
            "label": r.case.label, "id": r.case.id, "family": r.case.family, "kind": r.case.kind,
            "shape": list(r.case.shape), "axis": r.case.axis, "layout": r.case.layout or None,
            "impls": impls, "others_cpu_share": r.others, "attempts": r.attempts,
            "ratios": {b: {p: r.ratio(b, p) for p in peers} for b in backends},
        })  # fmt: skip
    summary = {
        b: {p: s.as_dict() for p in peers if (s := summarize(results, b, p)) is not None}
        for b in backends
    }
    return {"meta": meta, "cases": cases, "summary": summary, **extras}


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None, prog: str = "python -m fastnorm") -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Time fastnorm (every fast CPU backend) against the naive NumPy formula, PyTorch CPU"
            " and ONNX Runtime (when installed) on BatchNorm, LayerNorm, RMSNorm, GroupNorm and"
            " InstanceNorm (float32, forward and backward), round-robin with the same threads for"
            " all; print time per call, ratios fastnorm/peer (lower is better), geometric means,"
            " then a bandwidth figure and a peak-memory figure on a 205 MB BatchNorm."
        ),
    )
    parser.add_argument("command", nargs="?", default="bench", choices=["bench"],
                        help="what to run (default and only choice: bench)")  # fmt: skip
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
        " about a minute on 2 cores",
    )  # fmt: skip
    parser.add_argument(
        "--filter", default="", metavar="TEXT",
        help='only the cases whose label contains TEXT (case-insensitive; commas: any of them),'
        ' e.g. "GroupNorm", "bwd", "NHWC", "LayerNorm,RMSNorm"',
    )  # fmt: skip
    parser.add_argument(
        "--backends", metavar="LIST",
        help="comma-separated fastnorm backends to time (default: every available one but"
        " numpy and cuda)",
    )  # fmt: skip
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
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
        help="with --quick: include the two extra figures (bandwidth, memory) on 205 MB",
    )  # fmt: skip
    parser.add_argument("--no-extras", action="store_true", help="leave the extra figures out")
    parser.add_argument(
        "--only", metavar="PARTS",
        help="comma-separated parts to run: table, bandwidth, memory (e.g. --only memory)",
    )  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
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
        ok = libc.mallopt(_M_MMAP_THRESHOLD, _REUSE_LIMIT) == 1
        return ok and libc.mallopt(_M_TRIM_THRESHOLD, _REUSE_LIMIT) == 1
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
    """The backends of ``--backends`` (all fast ones by default); ``ValueError`` if unknown."""
    if not text:
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
    for shape, axis in dict.fromkeys((c.shape, c.axis) for c in cases):
        problem = make_problem(shape, axis)
        for case in (c for c in cases if (c.shape, c.axis) == (shape, axis)):
            results.append(
                time_case(case, problem, names, runtimes, rounds, retries, budget, cache)
            )
        del problem
    progress("")
    results.sort(key=lambda r: cases.index(r.case))
    return results


def main(
    argv: Sequence[str] | None = None,
    *,
    families: Sequence[str] | None = None,
    prog: str = "python -m fastnorm",
) -> int:
    """Entry point of ``python -m fastnorm [bench] [options]`` (see ``--help``); returns the exit
    code. ``families`` restricts the table to those families (``bench/compare_families.py``)."""
    args = parse_args(argv, prog)
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
    peers = [NUMPY_IMPL]
    peers += [
        p for p, m in ((TORCH_IMPL, runtimes.torch), (ORT_IMPL, runtimes.ort)) if m is not None
    ]
    names = impl_names(backends, runtimes.torch is not None, runtimes.ort is not None)

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
