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
from ._sources import unbuilt_source_tree_note

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
# than Numba on every case of the benchmark matrix (docs/performance.md).
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
        return bool(numba.config.ENABLE_CUDASIM)
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
    """Names of the backends usable in this installation, fastest first.

    Of ``"cython"`` (the compiled extension, where it was built), ``"numba"``
    (where Numba is installed), ``"numpy"`` (the float64 reference, always)
    and ``"cuda"`` (an NVIDIA GPU with numba-cuda, or Numba's CUDA
    simulator).  Probing never fails: a backend that cannot be used is left
    out (:func:`build_info` says why).

    Returns
    -------
    tuple of str
        The usable names, in order of preference for the default backend.

    See Also
    --------
    set_backend, use_backend, get_backend, build_info

    Examples
    --------
    >>> names = fastnorm.available_backends()
    >>> "numpy" in names, fastnorm.get_backend() in names
    (True, True)
    """
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
    """Name of the backend used by calls in the current context.

    The innermost :func:`use_backend` of this thread or task, else the one
    :func:`set_backend` selected, else ``FASTNORM_BACKEND`` (when set to an
    available backend), else the first of :func:`available_backends`.

    Returns
    -------
    str
        One of ``"cython"``, ``"numba"``, ``"numpy"``, ``"cuda"``.

    Examples
    --------
    >>> with fastnorm.use_backend("numpy"):
    ...     print(fastnorm.get_backend())
    numpy
    """
    global _default_backend
    name = _context_backend.get()
    if name is not None:
        return name
    if _default_backend is None:
        _default_backend = _initial_backend()
    return _default_backend


def set_backend(name: str) -> None:
    """Select the backend for all later calls, in every thread.

    A :func:`use_backend` context still takes precedence inside it.  The
    results agree between backends to the rounding of the input's dtype.

    Parameters
    ----------
    name : {"cython", "numba", "numpy", "cuda"}
        An available backend (see :func:`available_backends`).

    Returns
    -------
    None

    Raises
    ------
    TypeError
        If ``name`` is not a str.
    ValueError
        If ``name`` is not a known backend, or is not available here (the
        message says why).

    See Also
    --------
    use_backend : for a block of code, in one thread.

    Examples
    --------
    >>> previous = fastnorm.get_backend()
    >>> fastnorm.set_backend("numpy")
    >>> fastnorm.get_backend()
    'numpy'
    >>> fastnorm.set_backend(previous)
    >>> fastnorm.set_backend("fortran")
    Traceback (most recent call last):
        ...
    ValueError: name: unknown backend 'fortran'; expected one of ('cython', 'numba', 'numpy', 'cuda')
    """
    global _default_backend
    _default_backend = _check_name(name)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[str]:
    """Context manager selecting ``name`` for calls in this thread/context only.

    Other threads (and asyncio tasks) keep their backend; the previous
    selection is restored on exit, also on an exception.

    Parameters
    ----------
    name : {"cython", "numba", "numpy", "cuda"}
        An available backend (see :func:`available_backends`).

    Returns
    -------
    context manager
        Yields ``name``.

    Raises
    ------
    TypeError
        If ``name`` is not a str.
    ValueError
        If ``name`` is not a known backend, or is not available here.

    See Also
    --------
    set_backend : for every later call.

    Examples
    --------
    >>> x = np.random.default_rng(0).standard_normal((4, 3))
    >>> with fastnorm.use_backend("numpy") as name:
    ...     reference = fastnorm.layer_norm(x, 3)
    >>> name
    'numpy'
    >>> np.allclose(fastnorm.layer_norm(x, 3), reference)
    True
    """
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
        return int(numba.config.NUMBA_NUM_THREADS)
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
    """Set the number of threads the CPU kernels use (1 .. number of CPU threads).

    Parameters
    ----------
    n : int
        From 1 to the number of CPU threads available to the process (Numba's
        ``NUMBA_NUM_THREADS`` where Numba is configured); a str holding such
        an int is accepted too.

    Returns
    -------
    None

    Raises
    ------
    TypeError
        If ``n`` is not an int (bool included).
    ValueError
        If ``n`` is out of range, or a str that is not an int.

    See Also
    --------
    get_num_threads

    Examples
    --------
    >>> previous = fastnorm.get_num_threads()
    >>> fastnorm.set_num_threads(1)
    >>> fastnorm.get_num_threads()
    1
    >>> fastnorm.set_num_threads(previous)
    >>> fastnorm.set_num_threads(0)
    Traceback (most recent call last):
        ...
    ValueError: n must be between 1 and ... (the CPU threads available), got 0
    """
    global _num_threads
    _num_threads = _parse_threads(n, "n")


def get_num_threads() -> int:
    """Number of threads the CPU kernels use (default: all; ``FASTNORM_NUM_THREADS``).

    Returns
    -------
    int
        The value of :func:`set_num_threads`, else ``FASTNORM_NUM_THREADS``
        (when valid), else every CPU thread available to the process.

    See Also
    --------
    set_num_threads

    Examples
    --------
    >>> fastnorm.get_num_threads() >= 1
    True
    """
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

    Never imports Numba.

    Returns
    -------
    dict
        With the keys ``extension_built`` (bool), ``openmp`` (bool),
        ``simd_variant`` (``"baseline"``, ``"x86_64_v3"``, ``"x86_64_v4"``, or
        None), ``extension_module`` (str or None), ``compile_flags``,
        ``compiler``, ``skipped_simd_variants`` (better variants not used,
        and why), ``extension_import_error`` (str or None),
        ``available_backends`` (tuple of str, as :func:`available_backends`)
        and ``unavailable_backends`` (dict: name -> why).

    See Also
    --------
    available_backends

    Examples
    --------
    >>> info = fastnorm.build_info()
    >>> sorted(info)  # doctest: +NORMALIZE_WHITESPACE
    ['available_backends', 'compile_flags', 'compiler', 'extension_built',
     'extension_import_error', 'extension_module', 'openmp', 'simd_variant',
     'skipped_simd_variants', 'unavailable_backends']
    >>> info["available_backends"] == fastnorm.available_backends()
    True
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


#: set when this import is a source tree without its compiled extension while an installed
#: build exists elsewhere (said once, at import, and in build_info()'s extension_import_error)
SOURCE_TREE_NOTE = unbuilt_source_tree_note(os.path.dirname(os.path.abspath(__file__)))
if SOURCE_TREE_NOTE is not None:
    _frame, _level = sys._getframe(0), 1
    _package = os.path.normcase(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    while _frame.f_back is not None and (os.path.normcase(_frame.f_code.co_filename).startswith(_package)
                                         or _frame.f_code.co_filename.startswith("<frozen")):
        _frame = _frame.f_back  # the warning names the user's import (warnings skips importlib's)
        _level += not _frame.f_code.co_filename.startswith("<frozen importlib")
    warnings.warn(SOURCE_TREE_NOTE, RuntimeWarning, stacklevel=_level)
    del _frame, _level, _package
