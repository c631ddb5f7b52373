"""The Cython backend: ahead-of-time compiled kernels of the core.

Implements the contract of :mod:`fastnorm.backends.numpy_ref` with the
kernels of the compiled module :mod:`fastnorm.backends._kernels` (same
algorithms, task splitting and precision design as
:mod:`fastnorm.backends.numba_cpu`; nothing is compiled at run time and Numba
is not imported).

The extension is built once per SIMD level on x86-64 (``_kernels`` for the
baseline ISA, ``_kernels_x86_64_v3`` with ``-march=x86-64-v3`` (AVX2, FMA),
``_kernels_x86_64_v4`` with ``-march=x86-64-v4`` (AVX-512)); at import the
best one that this CPU supports (as NumPy's CPU dispatcher reports it) and
that was built is loaded, falling back to the baseline.
``FASTNORM_CPU_VARIANT=baseline`` (or ``x86_64_v3``, ``x86_64_v4``) caps the
choice at that level.  A build whose embedded digest of the kernel sources (``_kernels.pyx``, the
``.pxi`` files it includes and the C headers in ``csrc/``) is not the installed
sources' (a stale in-place build) is not loaded.
"""

from __future__ import annotations

import functools
import importlib
import os
import platform
import sys
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast, overload

import numpy as np
from numpy.typing import NDArray

from . import _openmp, _sources, get_num_threads
from ._coefficients import apply_folded, backward_folded, hi_lo
from ._plan import (
    PARALLEL_MIN,
    last_level_cache_bytes,
    prefetch_ahead,
    row_tasks,
    split,
    stream_output,
    threads_for,
)
from ._types import F64, Epi, Floats, Running

NAME = "cython"
#: runs of at least this many values are read in memory order when a group has several
#: (``stats_planes``, a merge per run); shorter ones are summed per channel in memory order
#: (``stats_short_runs``)
PLANE_MIN = 256
#: the most values of one channel a task of the short-runs statistics sums before a Chan merge
#: (the shifted sums' rounding grows with it, as a row block's)
SHORT_RUNS_MAX = 8192
_KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

#: SIMD variants, best first: (name, module, NumPy CPU features it needs)
VARIANTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("x86_64_v4", "_kernels_x86_64_v4",
     ("AVX512F", "AVX512CD", "AVX512VL", "AVX512BW", "AVX512DQ")),
    ("x86_64_v3", "_kernels_x86_64_v3",
     ("AVX", "AVX2", "FMA3", "F16C", "BMI", "BMI2", "LZCNT", "MOVBE")),
    ("baseline", "_kernels", ()),
)
_LEVEL_KEYS = {"x86_64_v4": "X86_V4", "x86_64_v3": "X86_V3"}
_CORE_FEATURES = ("AVX", "AVX2", "FMA3", "AVX512F")


def cpu_features() -> dict[str, bool]:
    """NumPy's runtime CPU feature table (empty when this NumPy has none)."""
    for name in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        features = getattr(module, "__cpu_features__", None)
        if isinstance(features, dict):
            return features
    return {}


def cpu_supports(variant: str) -> bool:
    """Whether this CPU (and OS) can run the SIMD ``variant``."""
    names = [name for name, _, _ in VARIANTS]
    if variant not in names:
        raise ValueError(f"unknown SIMD variant {variant!r}; expected one of {names}")
    if variant == "baseline":
        return True
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    features = cpu_features()
    level = _LEVEL_KEYS[variant]
    if level in features:  # NumPy >= 2 reports the whole ISA level
        return bool(features[level])
    # Older NumPy: the features of this level and of the levels below it.  One NumPy does not
    # know of is taken as present, except the vector extensions themselves.
    needs = [f for _, _, fs in VARIANTS[names.index(variant):] for f in fs]
    return all(features.get(f, f not in _CORE_FEATURES) for f in needs)


def source_digest() -> str | None:
    """Digest of the installed kernel sources (as setup.py computes it), None if they are absent."""
    return _sources.source_digest(os.path.dirname(os.path.abspath(__file__)))


class _Kernels(Protocol):
    """The compiled module, any SIMD variant: the functions of its stub ``_kernels.pyi`` (the
    variants are imported by name, so mypy knows them by this protocol, which the stub must
    satisfy: see the end of the module)."""

    __name__: str
    OPENMP: bool
    VARIANT: str
    CFLAGS: str
    SOURCE_DIGEST: str
    COMPILER: str

    def openmp_pause(self) -> bool: ...
    def stats_runs(self, x: Floats, nsplit: int, num_threads: int) -> tuple[F64, F64]: ...
    def stats_planes(self, x: Floats, num_threads: int) -> tuple[F64, F64]: ...
    def stats_short_runs(self, x: Floats, nsplit: int, num_threads: int) -> tuple[F64, F64]: ...
    def apply_runs(
        self, x: Floats, hi: Floats, lo: Floats, scale: Floats, shift: Floats, out: Floats,
        nsplit: int, num_threads: int, stream: bool = False, epi: Epi | None = None,
    ) -> None: ...
    def backward_reduce_runs(
        self, x: Floats, dy: Floats, mean: F64, nsplit: int, num_threads: int
    ) -> tuple[F64, F64]: ...
    def backward_apply_runs(
        self, x: Floats, dy: Floats, hi: Floats, lo: Floats, rstd: Floats, k1: Floats, k2: Floats,
        k3: Floats, dx: Floats, nsplit: int, num_threads: int, stream: bool = False,
    ) -> None: ...
    def stats_lanes(self, x: Floats, nsplit: int, num_threads: int) -> tuple[F64, F64]: ...
    def apply_lanes(
        self, x: Floats, hi: Floats, scale: Floats, shift: Floats, out: Floats, num_threads: int,
        stream: bool = False, epi: Epi | None = None,
    ) -> None: ...
    def backward_reduce_lanes(
        self, x: Floats, dy: Floats, mean: F64, nsplit: int, num_threads: int
    ) -> tuple[F64, F64]: ...
    def backward_apply_lanes(
        self, x: Floats, dy: Floats, hi: Floats, rstd: Floats, k1: Floats, k2: Floats, k3: Floats,
        dx: Floats, num_threads: int, stream: bool = False,
    ) -> None: ...
    def rows_forward(
        self, x: Floats, w: Floats | None, b: Floats | None, eps: float, center: bool, out: Floats,
        ntask: int, num_threads: int, stream: bool = False, epi: Epi | None = None,
        res: Floats | None = None, hsum: Floats | None = None,
    ) -> tuple[F64, F64]: ...
    def rows_apply(
        self, x: Floats, mean: F64, rstd: F64, w: Floats | None, b: Floats | None, out: Floats,
        ntask: int, num_threads: int, stream: bool = False, epi: Epi | None = None,
    ) -> None: ...
    def rows_backward(
        self, x: Floats, dy: Floats, mean: F64, rstd: F64, w64: F64, w: Floats, center: bool,
        dx: Floats, ntask: int, num_threads: int, stream: bool = False, prefetch: bool = False,
        count: F64 | None = None,
    ) -> tuple[F64, F64]: ...
    def rows_forward_small(
        self, x: Floats, w: Floats | None, b: Floats | None, eps: float, center: bool, out: Floats,
        epi: Epi | None = None, res: Floats | None = None, hsum: Floats | None = None,
    ) -> tuple[F64, F64]: ...
    def channels_small(
        self, x: Floats, given_mean: F64 | None, given_var: F64 | None, w: F64 | None,
        b: F64 | None, eps: float, out: Floats, epi: Epi | None = None,
        running: Running | None = None,
    ) -> tuple[F64, F64, F64]: ...
    @property
    def Plans(self) -> Callable[..., Any]: ...  # noqa: N802 (the extension's class)
    def channels_plain(
        self, plans: Any, x: object, running_mean: object, running_var: object,
        weight: object, bias: object, training: object, momentum: object, eps: object, axis: object,
        limit: int,
    ) -> Floats | None: ...
    def rows_plain(
        self, plans: Any, x: object, normalized_shape: object, weight: object, bias: object,
        eps: object, center: bool, limit: int,
    ) -> Floats | None: ...
    def channels_given(
        self, x: Floats, given_mean: F64, given_var: F64, w: F64 | None, b: F64 | None,
        eps: float, out: Floats, nsplit: int, num_threads: int, stream: bool = False,
        epi: Epi | None = None,
    ) -> tuple[F64, F64, F64]: ...
    def running_update(
        self, running_mean: Floats, running_var: Floats, mean: F64, var: F64, factor: float,
        bessel: float,
    ) -> None: ...
    def grouped_forward(
        self, x: Floats, G: int, S: int, w: F64, b: Floats, eps: float, out: Floats, ntask: int,
        num_threads: int, stream: bool = False, prefetch: bool = False, epi: Epi | None = None,
    ) -> tuple[F64, F64]: ...
    def grouped_backward(
        self, x: Floats, dy: Floats, mean: F64, rstd: F64, G: int, S: int, w64: F64, dx: Floats,
        ntask: int, num_threads: int, stream: bool = False, prefetch: bool = False,
    ) -> tuple[F64, F64]: ...
    def samples_forward(
        self, x: Floats, G: int, w: F64, b: Floats, eps: float, out: Floats, num_threads: int,
        stream: bool = False, epi: Epi | None = None,
    ) -> tuple[F64, F64]: ...
    def samples_backward(
        self, x: Floats, dy: Floats, mean: F64, rstd: F64, K: int, w: F64, center: bool,
        dx: Floats, num_threads: int, stream: bool = False, split: bool = False,
    ) -> tuple[F64, F64]: ...


def _load() -> tuple[_Kernels | None, str | None, dict[str, str]]:
    """Import the best variant; returns (module, variant, why each better variant was skipped)."""
    skipped: dict[str, str] = {}
    names = [v for v, _, _ in VARIANTS]
    cap = os.environ.get("FASTNORM_CPU_VARIANT", "").strip().lower().replace("-", "_")
    first = 0
    if cap:
        if cap in names:
            first = names.index(cap)
        else:
            warnings.warn(
                f"ignoring FASTNORM_CPU_VARIANT={cap!r}: expected one of {names}", RuntimeWarning, stacklevel=3
            )
    for variant, module_name, _ in VARIANTS[:first]:
        skipped[variant] = "capped by FASTNORM_CPU_VARIANT"
    error = None
    digest = source_digest()
    for variant, module_name, _ in VARIANTS[first:]:
        if not cpu_supports(variant):
            skipped[variant] = "this CPU lacks its instructions"
            continue
        try:
            module = importlib.import_module(f"{__package__}.{module_name}")
        except ImportError as exc:
            skipped[variant] = f"not built ({exc})"
            error = str(exc)
            continue
        built_from = getattr(module, "SOURCE_DIGEST", "")
        if digest is not None and built_from != digest:
            error = (
                f"{module.__name__} was built from another version of the kernel sources"
                f" (digest {built_from or 'unknown'}, the source's is {digest}): rebuild it"
                " (pip install -e . or python setup.py build_ext --inplace)"
            )
            skipped[variant] = error
            continue
        return cast("_Kernels", module), variant, skipped
    return None, error, skipped


_kernels, _variant_or_error, SKIPPED_VARIANTS = _load()
if _kernels is None:  # a source tree that was never built, or a pure-Python install
    VARIANT: str | None = None
    IMPORT_ERROR: str | None = _variant_or_error or "the compiled extension fastnorm.backends._kernels is missing"
    from . import SOURCE_TREE_NOTE  # where an installed build is shadowed by this source tree

    if SOURCE_TREE_NOTE is not None:
        IMPORT_ERROR = f"{IMPORT_ERROR} ({SOURCE_TREE_NOTE})"
else:
    VARIANT = _variant_or_error
    IMPORT_ERROR = None
    if _kernels.OPENMP:
        _openmp.set_pause(_kernels.openmp_pause)


def is_built() -> bool:
    """Whether a compiled extension imports."""
    return _kernels is not None


def has_openmp() -> bool:
    """Whether the compiled extension was built with OpenMP."""
    return bool(_kernels is not None and _kernels.OPENMP)


def info() -> dict[str, object]:
    """What was built and what is in use (see :func:`fastnorm.build_info`)."""
    return {
        "built": _kernels is not None,
        "openmp": has_openmp(),
        "simd_variant": None if _kernels is None else _kernels.VARIANT,
        "module": None if _kernels is None else _kernels.__name__,
        "compile_flags": None if _kernels is None else _kernels.CFLAGS,
        "compiler": None if _kernels is None else _kernels.COMPILER,
        "skipped_variants": dict(SKIPPED_VARIANTS),
        "import_error": IMPORT_ERROR,
    }


def _need() -> _Kernels:
    if _kernels is None:
        raise RuntimeError(f"the compiled extension is not available: {IMPORT_ERROR}")
    return _kernels


# ----------------------------------------------------------------------------
# the backend contract (host side as in numba_cpu)
# ----------------------------------------------------------------------------


def _threads(size: int) -> int:
    """Threads for a kernel call on ``size`` values: one where waking more costs more, and in a
    forked process that inherited a GNU OpenMP pool it cannot use (see
    :mod:`fastnorm.backends._openmp`)."""
    threads = threads_for(size, get_num_threads())
    if threads > 1 and _kernels is not None and _kernels.OPENMP:
        if _openmp.gomp_unusable():
            _openmp.warn_serial("cython", stacklevel=4)
            return 1
        _openmp.note_started()
    return threads


_S = TypeVar("_S", bound=np.floating[Any])


@overload
def _c(a: NDArray[Any]) -> F64: ...
@overload
def _c(a: NDArray[Any], dtype: np.dtype[_S]) -> NDArray[_S]: ...
def _c(a: NDArray[Any], dtype: type[np.float64] | np.dtype[Any] = np.float64) -> NDArray[Any]:
    if a.dtype == dtype and a.flags.c_contiguous:  # the common case, at a fifth of the cost
        return a
    return np.ascontiguousarray(a, dtype=dtype)


def stats(x4: Floats) -> tuple[F64, F64]:
    """Per-group mean and M2 of a non-empty C-contiguous float32/float64 ``(N, A, C, B)`` array."""
    k = _need()
    N, A, C, B = x4.shape
    threads = _threads(x4.size)
    if B == 1:
        return k.stats_lanes(x4.reshape(N, A, C), split(N, A * C, threads), threads)
    if A > 1 and B >= PLANE_MIN:
        return k.stats_planes(x4, threads)
    if A > 1:  # short runs: per-channel sums in memory order, a task's count within SHORT_RUNS_MAX
        nsplit = max(split(N, A * C * B, threads), -(-A * B // SHORT_RUNS_MAX))
        return k.stats_short_runs(x4, nsplit, threads)
    return k.stats_runs(x4, split(N * C, A * B, threads), threads)


#: epilogues (:class:`fastnorm._core.Epilogue`) run inside the kernels' pass (``epi=``)
FUSED_EPILOGUES = True
#: the kernels read each shortcut value before they write that output value (``shortcut`` may
#: be the output itself)
SHORTCUT_MAY_BE_OUT = True


def apply(x4: Floats, mean: F64, scale: F64, shift: F64, out4: Floats, epi: Epi | None = None) -> None:
    k = _need()
    N, A, C, B = x4.shape
    dt = x4.dtype
    mean = _c(mean)
    threads = _threads(x4.size)
    stream = stream_output(x4.nbytes, out4.nbytes, _run_bytes(x4))
    if B == 1:
        shape = (N, A, C)
        k.apply_lanes(
            x4.reshape(shape), *apply_folded(mean, scale, shift, dt), out4.reshape(shape), threads, stream,
            epi,
        )
    else:
        hi, lo = hi_lo(mean, dt)
        k.apply_runs(
            x4, hi, lo, _c(scale, dt), _c(shift, dt), out4, split(N * A * C, B, threads), threads, stream,
            epi,
        )


def _run_bytes(x4: Floats) -> int | None:
    """Bytes of the contiguous runs of a ``(N, A, C, B)`` view that take one coefficient each
    (None for channels-last, ``B == 1``: its rows of ``C`` channels are contiguous)."""
    B = x4.shape[3]
    return None if B == 1 else B * x4.itemsize


def backward_reduce(x4: Floats, dy4: Floats, mean: F64) -> tuple[F64, F64]:
    k = _need()
    N, A, C, B = x4.shape
    threads = _threads(x4.size)
    mean = _c(mean)
    if B == 1:
        shape = (N, A, C)
        return k.backward_reduce_lanes(
            x4.reshape(shape), dy4.reshape(shape), mean, split(N, A * C, threads), threads
        )
    return k.backward_reduce_runs(x4, dy4, mean, split(N * C, A * B, threads), threads)


def backward_apply(x4: Floats, dy4: Floats, mean: F64, rstd: F64, k1: F64, k2: F64, k3: F64,
                   dx4: Floats) -> None:
    k = _need()
    N, A, C, B = x4.shape
    dt = x4.dtype
    mean = _c(mean)
    threads = _threads(x4.size)
    stream = stream_output(x4.nbytes + dy4.nbytes, dx4.nbytes, _run_bytes(x4))
    if B == 1:
        shape = (N, A, C)
        k.backward_apply_lanes(
            x4.reshape(shape), dy4.reshape(shape), *backward_folded(mean, rstd, k1, k2, k3, dt),
            dx4.reshape(shape), threads, stream,
        )
    else:
        hi, lo = hi_lo(mean, dt)
        k.backward_apply_runs(
            x4, dy4, hi, lo, _c(rstd, dt), _c(k1, dt), _c(k2, dt), _c(k3, dt), dx4,
            split(N * A * C, B, threads), threads, stream,
        )


def _row_tasks(rows: int, size: int) -> tuple[int, int]:
    threads = _threads(size)
    return threads, row_tasks(rows, threads)


def rows_forward(x2: Floats, weight: Floats | None, bias: Floats | None, eps: float, center: bool,
                 out2: Floats, epi: Epi | None = None, res: Floats | None = None,
                 hsum: Floats | None = None) -> tuple[F64, F64]:
    """``res``: the rows normalized are ``x2 + res``, also written to ``hsum``."""
    k = _kernels or _need()
    R = x2.shape[0]
    dt = x2.dtype
    w = None if weight is None else _c(weight, dt)
    b = None if bias is None else _c(bias, dt)
    if x2.size < PARALLEL_MIN:
        if epi is None and res is None:
            return k.rows_forward_small(x2, w, b, eps, center, out2)
        return k.rows_forward_small(x2, w, b, eps, center, out2, epi, res, hsum)
    threads, ntask = _row_tasks(R, x2.size)
    stream = stream_output(x2.nbytes, out2.nbytes, x2.shape[1] * x2.itemsize)
    return k.rows_forward(x2, w, b, float(eps), bool(center), out2, ntask, threads, stream, epi, res, hsum)


def rows_apply(x2: Floats, mean: F64, rstd: F64, weight: Floats | None, bias: Floats | None,
               out2: Floats, epi: Epi | None = None) -> None:
    """Normalize each row of ``x2`` ``(R, M)`` with given float64 ``(R,)`` statistics."""
    k = _kernels or _need()
    R = x2.shape[0]
    dt = x2.dtype
    w = None if weight is None else _c(weight, dt)
    b = None if bias is None else _c(bias, dt)
    threads, ntask = _row_tasks(R, x2.size)
    stream = stream_output(x2.nbytes, out2.nbytes, x2.shape[1] * x2.itemsize)
    k.rows_apply(x2, _c(mean), _c(rstd), w, b, out2, ntask, threads, stream, epi)


def plain_calls(
    memory: ModuleType,
) -> tuple[Callable[..., Floats | None], Callable[..., Floats | None]] | None:
    """``(rows_plain, channels_plain)``: a whole plain ``layer_norm``/``rms_norm`` call of any
    size and a whole plain small ``batch_norm`` call, or one in inference of any size, in one
    compiled function each (None where the extension is not built).  Each returns the
    output, or None for a call that is not plain (see the kernels' docstrings), which then
    takes the general path.  ``memory``: :mod:`fastnorm._memory`, whose pool gives a large
    call its output."""
    if _kernels is None:
        return None
    pooled = memory.buffer_bytes

    def given_plan(x: Floats, groups: int, run: int) -> tuple[int, int, bool, int]:
        threads = _threads(x.size)
        nsplit = split(groups, run, threads) if run > 1 else 1
        stream = stream_output(x.nbytes, x.nbytes, run * x.itemsize if run > 1 else None)
        return nsplit, threads, stream, pooled(x.nbytes)

    def row_plan(x: Floats, rows: int, m: int) -> tuple[int, int, bool, int]:
        threads, ntask = _row_tasks(rows, x.size)
        return ntask, threads, stream_output(x.nbytes, x.nbytes, m * x.itemsize), pooled(x.nbytes)

    # a plan depends on the thread count, on whether a fork left OpenMP unusable and on
    # whether the pool is on
    settings = ((sys.modules[__package__], "_num_threads"), (_openmp, "_unusable"), (memory, "_enabled"))
    rows, channels = (
        _kernels.Plans(compute, memory.empty_like, settings, memory.pool(), memory.PAGE, memory.ALIGN)
        for compute in (row_plan, given_plan)
    )
    return (functools.partial(_kernels.rows_plain, rows),
            functools.partial(_kernels.channels_plain, channels))


def channels_small(x4: Floats, mean: F64 | None, var: F64 | None, weight: F64 | None,
                   bias: F64 | None, eps: float, out4: Floats, epi: Epi | None = None,
                   running: Running | None = None) -> tuple[F64, F64, F64]:
    """:func:`fastnorm.backends.numpy_ref.channels_small`: one compiled call on this thread."""
    k = _kernels or _need()
    if epi is None:
        return k.channels_small(x4, mean, var, weight, bias, float(eps), out4, None, running)
    act, slope, res, dy = epi
    if res is not None and np.may_share_memory(res, out4):  # its epilogue follows the whole output
        epi = (act, slope, res.copy(), dy)
    return k.channels_small(x4, mean, var, weight, bias, float(eps), out4, epi, running)


def channels_given(x4: Floats, mean: F64, var: F64, weight: F64 | None, bias: F64 | None,
                   eps: float, out4: Floats, epi: Epi | None = None) -> tuple[F64, F64, F64]:
    """Normalize ``x4`` with given ``(N, C)`` float64 statistics in one parallel compiled call:
    the coefficients and the apply of :func:`apply`, without the NumPy steps between them.
    Returns ``(mean, var, rstd)``."""
    k = _need()
    N, A, C, B = x4.shape
    threads = _threads(x4.size)
    nsplit = split(N * A * C, B, threads) if B > 1 else 1
    stream = stream_output(x4.nbytes, out4.nbytes, _run_bytes(x4))
    return k.channels_given(x4, mean, var, weight, bias, float(eps), out4, nsplit, threads, stream, epi)


def running_update(run_mean: NDArray[Any], run_var: NDArray[Any], mean: F64, var: F64, factor: float,
                   bessel: float) -> bool:
    """Update float32 or float64 running statistics in place in one compiled call (float64
    arithmetic, rounded once); False, with nothing changed, for other buffers."""
    k = _kernels
    if (
        k is None
        or run_mean.dtype != run_var.dtype
        or run_mean.dtype not in _KERNEL_DTYPES
        or not (run_mean.flags.c_contiguous and run_var.flags.c_contiguous)
    ):
        return False
    k.running_update(run_mean, run_var, mean, var, float(factor), float(bessel))
    return True


def rows_backward(x2: Floats, dy2: Floats, mean: F64, rstd: F64, weight: Floats | None, center: bool,
                  dx2: Floats, count: F64 | None = None) -> tuple[F64, F64]:
    """``count``: float64 ``(R,)`` values per row's statistics (a masked forward's), else ``M``."""
    k = _need()
    R, M = x2.shape
    dt = x2.dtype
    w64 = np.ones(M) if weight is None else _c(weight)
    threads, ntask = _row_tasks(R, x2.size)
    stream = stream_output(x2.nbytes + dy2.nbytes, dx2.nbytes, x2.shape[1] * x2.itemsize)
    prefetch = prefetch_ahead(x2.nbytes + dy2.nbytes)
    return k.rows_backward(
        x2, dy2, _c(mean), _c(rstd), w64, w64.astype(dt), bool(center), dx2, ntask, threads, stream,
        prefetch, None if count is None else _c(count),
    )


def grouped_forward(x2: Floats, groups: int, channel_len: int, weight: F64 | None, bias: F64 | None,
                    eps: float, out2: Floats, epi: Epi | None = None) -> tuple[F64, F64]:
    k = _need()
    R, L = x2.shape
    C = groups * (L // channel_len)
    dt = x2.dtype
    w = np.ones(C) if weight is None else _c(weight)
    b = np.zeros(C, dt) if bias is None else _c(bias, dt)
    threads, ntask = _row_tasks(R, x2.size)
    stream = stream_output(x2.nbytes, out2.nbytes, channel_len * x2.itemsize)
    prefetch = prefetch_ahead(x2.nbytes)
    return k.grouped_forward(
        x2, groups, channel_len, w, b, float(eps), out2, ntask, threads, stream, prefetch, epi
    )


def grouped_backward(x2: Floats, dy2: Floats, mean: F64, rstd: F64, groups: int, channel_len: int,
                     weight: F64 | None, dx2: Floats) -> tuple[F64, F64]:
    k = _need()
    R, L = x2.shape
    C = groups * (L // channel_len)
    w64 = np.ones(C) if weight is None else _c(weight)
    threads, ntask = _row_tasks(R, x2.size)
    stream = stream_output(x2.nbytes + dy2.nbytes, dx2.nbytes, channel_len * x2.itemsize)
    prefetch = prefetch_ahead(x2.nbytes + dy2.nbytes)
    return k.grouped_backward(
        x2, dy2, _c(mean), _c(rstd), groups, channel_len, w64, dx2, ntask, threads, stream, prefetch
    )


def samples_backward(x4: Floats, dy4: Floats, mean: F64, rstd: F64, group: int, weight: F64 | None,
                     center: bool, dx4: Floats) -> tuple[F64, F64] | None:
    """The channels backward of a channels-last ``(N, S, C, 1)`` view with statistics per
    sample and group of ``group`` channels, a sample at a time while it is in cache
    (``(grad_weight, grad_bias)``); None where the view is not channels-last or is one sample
    (BatchNorm's view: the general two-pass backward serves it)."""
    N, A, C, B = x4.shape
    threads = _threads(x4.size)
    if B != 1 or N < 2 or C % group:
        return None
    # a sample's x and dy per thread in half the last-level cache, else the threads share
    # each sample
    share = N < 2 * threads or 4 * threads * (x4.nbytes // N) > last_level_cache_bytes()
    k = _need()
    shape = (N, A, C)
    w64 = np.ones(C) if weight is None else _c(weight)
    stream = stream_output(x4.nbytes + dy4.nbytes, dx4.nbytes)
    return k.samples_backward(x4.reshape(shape), dy4.reshape(shape), _c(mean), _c(rstd), group, w64,
                              bool(center), dx4.reshape(shape), threads, stream, share)


def samples_forward(x3: Floats, groups: int, weight: F64 | None, bias: F64 | None, eps: float,
                    out3: Floats, epi: Epi | None = None) -> tuple[F64, F64]:
    k = _need()
    C = x3.shape[2]
    dt = x3.dtype
    w = np.ones(C) if weight is None else _c(weight)
    b = np.zeros(C, dt) if bias is None else _c(bias, dt)
    stream = stream_output(x3.nbytes, out3.nbytes)
    return k.samples_forward(x3, groups, w, b, float(eps), out3, _threads(x3.size), stream, epi)


if TYPE_CHECKING:  # the protocol the variants are known by is the stub's module
    from . import _kernels as _baseline

    _conforms: _Kernels = _baseline
