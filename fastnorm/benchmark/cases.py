"""Benchmark cases and their data.

The constants the other modules share (eps, momentum, the implementation names, the timing and
retry limits, the extra figures' shape); :class:`Case`, one timed case;
:data:`MATRIX`, the cases ``python -m fastnorm bench`` times, and :data:`CASES`, the BatchNorm
cases of the pytest-benchmark suite; :func:`smoke_case`, a tiny case of the same kernel path;
:class:`Problem` and :func:`make_problem`, a case's float32 input; :func:`reduce_axes`,
:func:`channel_view` and :func:`stat_view`, how the naive formulas see that input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: ``eps`` of every case but RMSNorm's
EPS = 1e-5
#: RMSNorm's ``eps``: what ``rms_norm``'s ``eps=None`` means for float32
RMS_EPS = float(np.finfo(np.float32).eps)
#: ``momentum`` of the training cases
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

#: name of the naive NumPy formula among the implementations
NUMPY_IMPL = "numpy"
#: name of PyTorch eager (``torch.nn.functional``, ``torch.autograd.grad``)
TORCH_IMPL = "torch"
COMPILE_IMPL = "compile"  # torch.compile
JAX_IMPL = "jax"
#: name of ONNX Runtime (forward only)
ORT_IMPL = "ort"
#: fastnorm's implementations are named ``FASTNORM_PREFIX + backend``, e.g. ``"fastnorm-cython"``
FASTNORM_PREFIX = "fastnorm-"
#: the peers, in table order
PEERS = (NUMPY_IMPL, TORCH_IMPL, COMPILE_IMPL, JAX_IMPL, ORT_IMPL)
#: stands for the fastest peer of each case in ratios and summaries
BEST_PEER = "best"

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

#: a ratio fastnorm / peer above this is a case where fastnorm is slower than the peer
SLOWER = 1.0

#: the two extra figures' BatchNorm input: (64, 64, 112, 112) float32, 205 MB
EXTRA_SHAPE = (64, 64, 112, 112)
SMOKE_EXTRA_SHAPE = (2, 64, 16, 16)
EXTRA_ROUNDS = 10
PARTS = ("table", "bandwidth", "memory", "roofline")


@dataclass(frozen=True)
class Case:
    """One benchmark case: ``kind`` of ``family`` on float32 data of ``shape``.

    ``axis`` is the channel axis (1: channels first, -1: channels last) for BatchNorm, GroupNorm
    and InstanceNorm; LayerNorm and RMSNorm normalize over the last dimension, and their
    per-feature parameters lie along ``axis=-1``. ``kind`` is ``"forward"`` (BatchNorm: training
    forward), ``"backward"`` (after one untimed training forward) or ``"eval"`` (BatchNorm with
    its running statistics).

    Parameters
    ----------
    family : str
        A key of :data:`FAMILIES`: ``"batch_norm"``, ``"layer_norm"``, ``"rms_norm"``,
        ``"group_norm"`` or ``"instance_norm"``.
    kind : str
        A key of :data:`KINDS`: ``"forward"``, ``"backward"`` or ``"eval"``.
    shape : tuple of int
        The input's shape.
    axis : int
        The channel (or feature) axis.

    Attributes
    ----------
    family, kind, shape, axis
        The constructor's arguments (a frozen dataclass).
    label, id, layout, dims, kind_label
        Names for tables and test ids (see the properties).
    num_features, num_groups, eps, has_bias, channels_last, nbytes
        What the case's layers and data are (see the properties).

    See Also
    --------
    MATRIX : the cases ``python -m fastnorm bench`` times.
    make_problem : a case's data.

    Examples
    --------
    >>> from fastnorm import benchmark
    >>> case = benchmark.Case("group_norm", "backward", (32, 56, 56, 64), -1)
    >>> case.label
    'GroupNorm bwd NHWC 32x56x56x64'
    >>> case.id, case.num_features, case.num_groups
    ('group_norm-backward-NHWC-32x56x56x64', 64, 32)
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
        """The case's ``eps``: :data:`RMS_EPS` for RMSNorm, :data:`EPS` otherwise."""
        return RMS_EPS if self.family == "rms_norm" else EPS

    @property
    def has_bias(self) -> bool:
        """Whether the family has a ``bias`` (all but RMSNorm)."""
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
        """The shape written ``"32x64x56x56"``."""
        return "x".join(map(str, self.shape))

    @property
    def kind_label(self) -> str:
        """The kind's short label: ``"train fwd"`` for BatchNorm's forward, else :data:`KINDS`'s."""
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
        """Bytes of one float32 array of the case's shape."""
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
    """A tiny case of the same family, kind, layout, channels and kernel path (for ``--smoke``).

    Parameters
    ----------
    case : Case
        Any case.

    Returns
    -------
    Case
        The same but for a small shape: batch 2 and spatial sizes 4 for channel data, at
        most 16 rows for 2-D data.

    Examples
    --------
    >>> from fastnorm import benchmark
    >>> print(benchmark.smoke_case(benchmark.MATRIX[0]))
    BatchNorm train fwd NCHW 2x64x4x4
    """
    return Case(case.family, case.kind, smoke_shape(case), case.axis)


@dataclass(frozen=True)
class Problem:
    """Input data: activations, upstream gradient, parameters and running statistics.

    Every implementation copies the parameters and running statistics it may change, so one
    ``Problem`` can feed all of them.

    Parameters
    ----------
    x, dy : ndarray
        The input and the upstream gradient, float32, of the case's shape.
    weight, bias, running_mean, running_var : ndarray, shape ``(C,)``
        float32, ``C`` the size of ``axis``.
    axis : int
        The channel (or feature) axis.

    Attributes
    ----------
    x, dy, weight, bias, running_mean, running_var, axis
        The constructor's arguments (a frozen dataclass).
    num_features : int
        ``C``.

    See Also
    --------
    make_problem : the usual way to make one.

    Examples
    --------
    >>> from fastnorm import benchmark
    >>> problem = benchmark.make_problem((4, 3, 2, 2), 1)
    >>> problem.x.shape, problem.x.dtype, problem.num_features
    ((4, 3, 2, 2), dtype('float32'), 3)
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
        """``C``, the size of ``x`` on ``axis``."""
        size: int = self.x.shape[self.axis]
        return size


def make_problem(shape: Sequence[int], axis: int, seed: int = 0) -> Problem:
    """Random float32 data with a different mean and scale in every feature along ``axis``.

    Parameters
    ----------
    shape : sequence of int
        The input's shape.
    axis : int
        The channel (or feature) axis.
    seed : int, default 0
        Of ``numpy.random.default_rng``: the same seed gives the same data.

    Returns
    -------
    Problem
        ``x`` with per-feature shifts in ``[-1, 1]`` and scales in ``[0.5, 2]``, standard
        normal ``dy``, ``weight`` in ``[0.5, 1.5]``, ``bias`` in ``[-0.5, 0.5]``, and
        running statistics, all float32.

    Examples
    --------
    >>> from fastnorm import benchmark
    >>> problem = benchmark.make_problem((8, 5), -1, seed=1)
    >>> problem.x.shape, problem.weight.shape, problem.axis
    ((8, 5), (5,), -1)
    >>> np.array_equal(problem.x, benchmark.make_problem((8, 5), -1, seed=1).x)
    True
    """
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
