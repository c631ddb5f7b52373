"""GNU OpenMP and ``fork``: what a forked process may still run in parallel.

GNU OpenMP (libgomp) keeps a pool of threads per thread that starts parallel
regions; a forked child inherits the forking thread's pool without its
threads, and hangs in its first parallel region.  Both CPU backends start
such pools, in the one libgomp of the process: the Cython kernels (``prange``
built with ``-fopenmp``) and Numba's ``omp`` threading layer, which moreover
ends a forked child at its first parallel kernel.  ``multiprocessing`` forks
by default on Linux before Python 3.14, so ``Pool`` workers meet this.

This module is imported with :mod:`fastnorm.backends`, so its at-fork hooks are
registered before any kernel runs:

* before a fork, where this process started OpenMP threads, the forking
  thread's pool is released (OpenMP 5.0's ``omp_pause_resource_all``, through
  the compiled extension); the child then starts threads of its own, and this
  process starts its pool again at its next parallel region;
* in the child, :func:`gomp_unusable` says whether a pool was inherited all the
  same (a runtime without the pause): the Cython kernels then run on the
  calling thread; :func:`numba_omp_inherited` says whether Numba's ``omp`` layer
  was started before the fork: Numba's kernels then run their serial builds.
  Where Numba had not started a layer and libgomp is unusable, Numba is kept
  off ``omp`` (its workqueue or TBB layers are fork-safe): see
  :mod:`fastnorm.backends.numba_cpu`.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable

_started = False  # this process ran (or may have run) OpenMP parallel regions
_pause: Callable[[], bool] | None = None  # releases the calling thread's pool; True if it did
_paused = False  # the last fork happened after a successful pause
_unusable = False  # forked with a libgomp pool inherited: no OpenMP threads here
_numba_omp = False  # forked after Numba started its omp layer
_warned = False
_listeners: list[Callable[[], None]] = []


def note_started() -> None:
    """Record that this process is about to run an OpenMP parallel region."""
    global _started
    _started = True


def set_pause(pause: Callable[[], bool]) -> None:
    """Register the call that releases the calling thread's OpenMP pool (the compiled extension's)."""
    global _pause
    _pause = pause


def numba_layer() -> str | None:
    """The threading layer Numba has started in this process, or None (no parallel kernel yet)."""
    numba = sys.modules.get("numba")
    if numba is None:
        return None
    try:
        return str(numba.threading_layer())
    except (ValueError, AttributeError):  # not initialized yet
        return None


def gomp_unusable() -> bool:
    """Whether this process was forked while a GNU OpenMP pool was in use (in it or an ancestor)."""
    return _unusable


def numba_omp_inherited() -> bool:
    """Whether this process was forked after Numba started its ``omp`` threading layer."""
    return _numba_omp


def on_fork_in_child(listener: Callable[[], None]) -> None:
    """Call ``listener()`` in every forked child, once the flags above are settled."""
    _listeners.append(listener)


def _in_use() -> bool:
    return _started or numba_layer() == "omp"


def _before_fork() -> None:
    global _paused
    _paused = False
    if not _in_use():
        return
    if _pause is None:  # Numba's omp layer ran, the compiled extension was never imported
        try:
            from . import cython_cpu  # noqa: F401  (registers its pause)
        except ImportError:  # pragma: no cover - cython_cpu itself imports only numpy
            pass
    if _pause is not None:
        _paused = _pause()


def _after_fork_in_child() -> None:
    global _unusable, _numba_omp, _warned
    _warned = False  # the warning is this process's
    if _in_use() and not _paused:
        _unusable = True
    if numba_layer() == "omp":
        _numba_omp = True
    for listener in _listeners:
        listener()


def warn_serial(backend: str, stacklevel: int = 3) -> None:
    """Say once per process that ``backend`` runs without OpenMP threads here."""
    global _warned
    if _warned:
        return
    _warned = True
    warnings.warn(
        f"fastnorm: this process was forked after it (or its parent) ran OpenMP threads, which a "
        f"forked child cannot use: the {backend} backend runs its kernels on one thread here. "
        "Use the 'spawn' or 'forkserver' multiprocessing start method for parallel kernels in "
        "child processes.",
        RuntimeWarning,
        stacklevel=stacklevel + 1,
    )


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
