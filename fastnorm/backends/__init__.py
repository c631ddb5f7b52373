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
import threading
import warnings
from types import ModuleType
from collections.abc import Iterator

__all__ = [
    "available_backends",
    "get_backend",
    "set_backend",
    "use_backend",
    "set_num_threads",
    "get_num_threads",
]

# Every name the API knows, in order of preference for the default.
KNOWN_BACKENDS = ("numba", "cython", "numpy", "cuda")
_MODULES = {
    "numba": "fastnorm.backends.numba_cpu",
    "numpy": "fastnorm.backends.numpy_ref",
}
# What must be importable for a backend to be available (checked without importing it).
_REQUIREMENTS = {"numba": "numba", "numpy": "numpy"}
_WHY_MISSING = {
    "cython": "the Cython backend is not part of this release yet",
    "cuda": "the CUDA backend is not part of this release yet",
}

_lock = threading.Lock()
_loaded: dict[str, ModuleType] = {}
_default_backend: str | None = None
_context_backend: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "fastnorm_backend", default=None
)
_num_threads: int | None = None


def available_backends() -> tuple[str, ...]:
    """Names of the backends usable in this installation, fastest first."""
    return tuple(
        name
        for name in KNOWN_BACKENDS
        if name in _REQUIREMENTS and importlib.util.find_spec(_REQUIREMENTS[name]) is not None
    )


def _check_name(name: object, argument: str = "name") -> str:
    if not isinstance(name, str):
        raise TypeError(f"{argument} must be a backend name (str), got {type(name).__name__}")
    if name not in KNOWN_BACKENDS:
        raise ValueError(
            f"{argument}: unknown backend {name!r}; expected one of {KNOWN_BACKENDS}"
        )
    if name not in available_backends():
        why = _WHY_MISSING.get(name, f"the package {_REQUIREMENTS.get(name)!r} is not installed")
        raise ValueError(f"{argument}: backend {name!r} is not available: {why}")
    return name


def _initial_backend() -> str:
    env = os.environ.get("FASTNORM_BACKEND")
    if env:
        try:
            return _check_name(env.strip().lower(), "FASTNORM_BACKEND")
        except (TypeError, ValueError) as exc:
            warnings.warn(f"ignoring FASTNORM_BACKEND: {exc}", RuntimeWarning, stacklevel=3)
    return available_backends()[0]


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
    if importlib.util.find_spec("numba") is not None:
        import numba

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
