"""GNU OpenMP and ``fork``: whether this process may still start OpenMP threads.

GNU OpenMP (libgomp) keeps a pool of threads that a forked child inherits
without the threads themselves: a child whose parent ran an OpenMP parallel
region hangs in its first one.  Both CPU backends can start libgomp's pool,
in one runtime shared by the process: the Cython kernels (``prange`` built with
``-fopenmp``) and Numba's ``omp`` threading layer (whose pool, in addition,
kills a forked child at its first parallel kernel).  ``multiprocessing``
forks by default on Linux before Python 3.14, so ``Pool`` workers meet this.

This module is imported with :mod:`fastnorm.backends`, so that its at-fork
hook is registered before any kernel runs.  In a child forked after GNU
OpenMP started, :func:`gomp_unusable` is True and the backends run without
it: the Cython kernels on the calling thread, Numba's kernels on another
threading layer (workqueue, which is fork-safe, or TBB) when Numba had not
started one yet, or else compiled without ``parallel``.  A child forked before
any OpenMP region ran is unaffected, and so are processes started with the
``spawn`` or ``forkserver`` methods.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable

_started = False  # this process ran a GNU OpenMP parallel region (or may have)
_unusable = False  # ... and was forked afterwards: libgomp's pool is gone here
_warned = False
_listeners: list[Callable[[], None]] = []


def note_started() -> None:
    """Record that this process is about to run an OpenMP parallel region."""
    global _started
    _started = True


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
    """Whether this process was forked after GNU OpenMP started (in it or an ancestor)."""
    return _unusable


def on_fork_in_child(listener: Callable[[], None]) -> None:
    """Call ``listener()`` in every forked child, after :func:`gomp_unusable` is settled."""
    _listeners.append(listener)


def _after_fork_in_child() -> None:
    global _unusable
    if _started or numba_layer() == "omp":
        _unusable = True
    for listener in _listeners:
        listener()


def warn_serial(backend: str, stacklevel: int = 3) -> None:
    """Say once per process that ``backend`` runs without GNU OpenMP threads here."""
    global _warned
    if _warned:
        return
    _warned = True
    warnings.warn(
        f"fastnorm: this process was forked after it (or its parent) ran GNU OpenMP threads, "
        f"which a forked child cannot use: the {backend} backend runs its kernels on one thread "
        "here. Use the 'spawn' or 'forkserver' multiprocessing start method for parallel "
        "kernels in child processes.",
        RuntimeWarning,
        stacklevel=stacklevel + 1,
    )


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
