"""Backend registry, selection and thread count.

A backend is a module exposing the kernels of the core (see
:mod:`fastnorm.backends.numpy_ref` for the contract).  Backends are imported
lazily, so ``import fastnorm`` does not import Numba.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import importlib.util
import numbers
import os
import sys
import threading
import warnings
from collections.abc import Iterator
from types import ModuleType

from . import _openmp  # noqa: F401  (registers its at-fork hook before any kernel runs)

__all__ = [
    "available_backends",
    "get_backend",
    "set_backend",
    "use_backend",
    "set_num_threads",
    "get_num_threads",
    "build_info",
]

# Every name the API knows, in order of preference for the default.  Cython
# first: compiled at install time (import + first call in milliseconds, no JIT,
# Numba never imported), lower per-call overhead, and as fast as or faster
# than Numba on every case of the benchmark matrix (see the README).
KNOWN_BACKENDS = ("cython", "numba", "numpy", "cuda")
_MODULES = {
    "numba": "fastnorm.backends.numba_cpu",
    "cython": "fastnorm.backends.cython_cpu",
    "numpy": "fastnorm.backends.numpy_ref",
    "cuda": "fastnorm.backends.cuda_gpu",
}
# What must be importable for a backend to be available (checked without importing it).
_REQUIREMENTS = {"numba": "numba", "numpy": "numpy"}
_WHY_MISSING: dict[str, str] = {}

_lock = threading.Lock()
_loaded: dict[str, ModuleType] = {}
_default_backend: str | None = None
_context_backend: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "fastnorm_backend", default=None
)
_num_threads: int | None = None


def _cython_missing() -> str | None:
    """Why the compiled extension does not import, or None when it does."""
    try:
        from . import cython_cpu
    except ImportError as exc:  # pragma: no cover - cython_cpu itself imports only numpy
        return f"fastnorm.backends.cython_cpu does not import: {exc}"
    if cython_cpu.IMPORT_ERROR is None:
        return None
    return f"the compiled extension fastnorm.backends._kernels is not usable: {cython_cpu.IMPORT_ERROR}"


def _cuda_driver_present() -> bool:
    """Whether this machine shows an NVIDIA driver (cheap: no import of Numba)."""
    if os.environ.get("NUMBA_CUDA_DRIVER"):
        return True
    if sys.platform.startswith("linux"):
        return any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg",
                                               "/proc/driver/nvidia/version"))
    if sys.platform == "win32":
        import ctypes.util

        return ctypes.util.find_library("nvcuda") is not None
    return False


def _cuda_simulator_requested() -> bool:
    numba = sys.modules.get("numba")
    if numba is not None:
        return bool(numba.config.ENABLE_CUDASIM)  # type: ignore[attr-defined]
    try:
        return int(os.environ.get("NUMBA_ENABLE_CUDASIM", "0")) != 0
    except ValueError:
        return False


_cuda_probe: list[str | None] = []


def _cuda_missing() -> str | None:
    """Why the CUDA backend is unavailable, or None (a GPU, or Numba's simulator).  Cached.

    Numba is imported only where a driver is visible or the simulator is
    requested; without a GPU the answer costs a few ``stat`` calls.
    """
    if not _cuda_probe:
        hint = ("install the 'cuda' extra (numba-cuda) on a machine with an NVIDIA GPU, or set "
                "NUMBA_ENABLE_CUDASIM=1 before Numba is imported to use the CUDA simulator")
        why: str | None = None
        if importlib.util.find_spec("numba") is None:
            why = "Numba is not installed"
        elif not _cuda_simulator_requested() and not _cuda_driver_present():
            why = f"no NVIDIA driver was found; {hint}"
        else:
            try:
                from numba import cuda

                if not cuda.is_available():
                    why = f"numba.cuda.is_available() is False (no usable GPU); {hint}"
            except Exception as exc:  # noqa: BLE001 - a broken driver or toolkit must not break fastnorm
                why = f"numba.cuda failed: {exc}; {hint}"
        _cuda_probe.append(why)
    return _cuda_probe[0]


# Backends whose availability is found by importing them: name -> why it is missing (None: available).
_PROBES = {"cython": _cython_missing, "cuda": _cuda_missing}


def available_backends() -> tuple[str, ...]:
    """Names of the backends usable in this installation, fastest first."""
    return tuple(
        name
        for name in KNOWN_BACKENDS
        if (name in _REQUIREMENTS and _is_installed(_REQUIREMENTS[name]))
        or (name in _PROBES and _PROBES[name]() is None)
    )


_installed: dict[str, bool] = {}  # requirement -> importable (find_spec costs tens of microseconds)


def _is_installed(package: str) -> bool:
    found = _installed.get(package)
    if found is None:
        found = _installed[package] = importlib.util.find_spec(package) is not None
    return found


def _is_available(name: str) -> bool:
    """Whether the known backend ``name`` is usable (probes only that backend)."""
    if name in _REQUIREMENTS:
        return _is_installed(_REQUIREMENTS[name])
    return name in _PROBES and _PROBES[name]() is None


def _why_missing(name: str) -> str:
    """Why the known backend ``name`` is not available."""
    why = _PROBES[name]() if name in _PROBES else None
    return why or _WHY_MISSING.get(name, f"the package {_REQUIREMENTS.get(name)!r} is not installed")


def _check_name(name: object, argument: str = "name") -> str:
    if not isinstance(name, str):
        raise TypeError(f"{argument} must be a backend name (str), got {type(name).__name__}")
    if name not in KNOWN_BACKENDS:
        raise ValueError(
            f"{argument}: unknown backend {name!r}; expected one of {KNOWN_BACKENDS}"
        )
    if not _is_available(name):
        why = _why_missing(name)
        raise ValueError(f"{argument}: backend {name!r} is not available: {why}")
    return name


def _initial_backend() -> str:
    env = os.environ.get("FASTNORM_BACKEND")
    if env:
        try:
            return _check_name(env.strip().lower(), "FASTNORM_BACKEND")
        except (TypeError, ValueError) as exc:
            warnings.warn(f"ignoring FASTNORM_BACKEND: {exc}", RuntimeWarning, stacklevel=3)
    return next(name for name in KNOWN_BACKENDS if _is_available(name))


def get_backend() -> str:
    """Name of the backend used by calls in the current context."""
    global _default_backend
    name = _context_backend.get()
    if name is not None:
        return name
    if _default_backend is None:
        _default_backend = _initial_backend()
    return _default_backend


def set_backend(name: str) -> None:
    """Select the backend for all later calls (``ValueError`` if unknown or unavailable)."""
    global _default_backend
    _default_backend = _check_name(name)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[str]:
    """Context manager selecting ``name`` for calls in this thread/context only."""
    token = _context_backend.set(_check_name(name))
    try:
        yield name
    finally:
        _context_backend.reset(token)


def backend_module(name: str | None = None) -> ModuleType:
    """The kernel module of ``name`` (default: the current backend), imported on first use."""
    name = get_backend() if name is None else name
    module = _loaded.get(name)
    if module is None:
        with _lock:
            module = _loaded.get(name)
            if module is None:
                module = importlib.import_module(_MODULES[name])
                _loaded[name] = module
    return module


def _max_threads() -> int:
    numba = sys.modules.get("numba")
    if numba is None and importlib.util.find_spec("numba") is not None:
        if "NUMBA_NUM_THREADS" not in os.environ and not os.path.exists(".numba_config.yaml"):
            # Numba's own default, without importing Numba (the cython backend never needs it)
            try:
                return max(1, len(os.sched_getaffinity(0)))
            except AttributeError:  # not Linux
                return max(1, os.cpu_count() or 1)
        import numba
    if numba is not None:
        return int(numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]
    return os.cpu_count() or 1


def _parse_threads(value: object, argument: str) -> int:
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ValueError(f"{argument} must be a positive integer, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{argument} must be a positive integer, got {value!r}")
    n = int(value)
    limit = _max_threads()
    if not 1 <= n <= limit:
        raise ValueError(
            f"{argument} must be between 1 and {limit} (the CPU threads available), got {n}"
        )
    return n


def set_num_threads(n: int) -> None:
    """Set the number of threads the CPU kernels use (1 .. number of CPU threads)."""
    global _num_threads
    _num_threads = _parse_threads(n, "n")


def get_num_threads() -> int:
    """Number of threads the CPU kernels use (default: all; ``FASTNORM_NUM_THREADS``)."""
    global _num_threads
    if _num_threads is None:
        env = os.environ.get("FASTNORM_NUM_THREADS")
        n = None
        if env:
            try:
                n = _parse_threads(env, "FASTNORM_NUM_THREADS")
            except (TypeError, ValueError) as exc:
                warnings.warn(f"ignoring FASTNORM_NUM_THREADS: {exc}", RuntimeWarning, stacklevel=2)
        _num_threads = n if n is not None else _max_threads()
    return _num_threads


def build_info() -> dict[str, object]:
    """How the compiled (Cython) extension was built and which backends are usable here.

    Keys: ``extension_built``, ``openmp``, ``simd_variant`` (``"baseline"``,
    ``"x86_64_v3"``, ``"x86_64_v4"``, or None), ``extension_module``,
    ``compile_flags``, ``compiler``, ``skipped_simd_variants`` (better variants
    not used, and why), ``extension_import_error``, ``available_backends`` and ``unavailable_backends``
    (name -> why).  Never imports Numba.
    """
    try:
        from . import cython_cpu

        info = cython_cpu.info()
    except ImportError as exc:  # pragma: no cover
        info = {"built": False, "openmp": False, "simd_variant": None, "module": None,
                "compile_flags": None, "compiler": None, "skipped_variants": {},
                "import_error": str(exc)}
    available = available_backends()
    unavailable = {}
    for name in KNOWN_BACKENDS:
        if name not in available:
            unavailable[name] = _why_missing(name)
    return {
        "extension_built": info["built"],
        "openmp": info["openmp"],
        "simd_variant": info["simd_variant"],
        "extension_module": info["module"],
        "compile_flags": info["compile_flags"],
        "compiler": info["compiler"],
        "skipped_simd_variants": info["skipped_variants"],
        "extension_import_error": info["import_error"],
        "available_backends": available,
        "unavailable_backends": unavailable,
    }
