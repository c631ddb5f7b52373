"""Output buffers that do not page-fault on every call.

glibc serves allocations above its mmap threshold (128 KiB, raised
dynamically up to 32 MiB) with a fresh ``mmap`` and returns them to the
kernel on ``free``, and it gives the top of its heap back to the kernel once
enough of it is free, so an output allocated per call is often zero-filled and
page-faulted by the kernel every time: on a 205 MB BatchNorm that costs about
a third of a copy's time; on a 25.7 MB one, interleaved with other large
allocations (PyTorch, the naive NumPy formula), it more than doubled the
call's time (1.5 to 3.4 ms).

:func:`empty` keeps a few large buffers and hands one out again once every
array that used it is gone.  An output is a view of its pool buffer (NumPy
collapses view chains, so every array derived from it references that
buffer), hence "free" is exactly "nobody but the pool holds the buffer",
which the reference count tells.  Small arrays go to ``np.empty``.

A pooled output also chooses where in a page it starts.  A kernel that reads
``x`` and writes ``y`` in step keeps recent stores to ``y`` in flight while it
loads ``x``; when ``y`` starts a little after ``x`` modulo the page size, those
loads look as if they depended on the stores (the CPU compares addresses
below 4 KiB first) and wait.  With stores that bypass the caches this cost
12-15% on a 25.7 MB GroupNorm (``y`` 32 to 112 bytes after ``x``); an output
half a page away from its input never meets it.  So :func:`empty` takes the
array the output will be read beside and starts the output on a cache line
half a page from it.

The pool keeps at most :data:`MAX_BYTES` alive; ``FASTNORM_MEMORY_POOL=0``
turns it off, :func:`release` empties it.
"""

from __future__ import annotations

import math
import os
import sys
import threading

import numpy as np

#: arrays from this size up are pooled (below it a page fault per 4 KiB costs
#: little next to the call itself)
MIN_BYTES = 1 << 20
#: the pool never keeps more than this many bytes of buffers
MAX_BYTES = 1 << 30
#: buffers are rounded up to a multiple of this (a huge page) ...
GRANULE = 2 << 20
#: ... or of this below :data:`HUGE_BYTES`
SMALL_GRANULE = 64 << 10
HUGE_BYTES = 32 << 20
#: pooled outputs start on a cache line (whole-vector stores that bypass the caches need
#: aligned addresses) ...
ALIGN = 64
#: ... half of this from the array they are read beside (the span within which the CPU
#: first compares a load's address with the stores in flight)
PAGE = 4096

_lock = threading.Lock()
_buffers: list[np.ndarray] = []  # most recently used last
_enabled = os.environ.get("FASTNORM_MEMORY_POOL", "1").strip() not in ("0", "false", "no", "off")


def _refcount_of_unshared() -> int:
    """What ``sys.getrefcount(a[i])`` reads for an object only the list ``a`` holds."""
    a = [object()]
    return sys.getrefcount(a[0])


_UNSHARED = _refcount_of_unshared()


def _free_at(i: int) -> bool:
    """Whether pool buffer ``i`` is referenced by the pool alone (no array uses it)."""
    return sys.getrefcount(_buffers[i]) == _UNSHARED


def empty(shape: tuple[int, ...], dtype: np.dtype, beside: np.ndarray | None = None) -> np.ndarray:
    """An uninitialised C-contiguous array, from the pool when it is large.

    ``beside``: an array that kernels will read in step with writing this one
    (the input of an elementwise pass); a pooled result starts half a page away
    from it.  Without it the result starts at a page boundary.
    """
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if not _enabled or nbytes < MIN_BYTES:
        return np.empty(shape, dtype)
    size = buffer_bytes(nbytes) - PAGE
    with _lock:
        # the most recently used free buffer first: its lines may still be in cache, and a
        # call that reuses it does not evict another (taking the least recent one would
        # alternate between two buffers of a size and always write the colder one)
        for i in range(len(_buffers) - 1, -1, -1):
            if _buffers[i].nbytes == size + PAGE and _free_at(i):
                _buffers.append(_buffers.pop(i))
                return _placed(_buffers[-1], nbytes, beside).view(dtype).reshape(shape)
        buffer = np.empty(size + PAGE, np.uint8)
        _buffers.append(buffer)
        _trim()
        return _placed(buffer, nbytes, beside).view(dtype).reshape(shape)


def buffer_bytes(nbytes: int) -> int:
    """The size of the pool buffer an array of ``nbytes`` bytes takes (0: none, it is not
    pooled)."""
    if not _enabled or nbytes < MIN_BYTES:
        return 0
    granule = GRANULE if nbytes >= HUGE_BYTES else SMALL_GRANULE
    return -(-nbytes // granule) * granule + PAGE


def pool() -> tuple[list[np.ndarray], threading.Lock] | None:
    """The pool's buffers (the most recently used last) and its lock, for a compiled caller
    that takes a free buffer as :func:`empty` does and places its array as :func:`empty`
    places one (see ``Plans`` in the Cython kernels); None where the pool is off."""
    return (_buffers, _lock) if _enabled else None


def page_offset(a: np.ndarray) -> int:
    """Where in its page ``a``'s first element lies, in bytes."""
    address: int = a.__array_interface__["data"][0]
    return address % PAGE


def _placed(buffer: np.ndarray, nbytes: int, beside: np.ndarray | None) -> np.ndarray:
    """``nbytes`` of ``buffer`` (which has :data:`PAGE` bytes to spare) from a cache line half a
    page from ``beside`` modulo :data:`PAGE`, or from a page boundary."""
    want = 0 if beside is None else (-(-page_offset(beside) // ALIGN) * ALIGN + PAGE // 2) % PAGE
    start = (want - page_offset(buffer)) % PAGE
    return buffer[start:start + nbytes]


def empty_like(a: np.ndarray) -> np.ndarray:
    """:func:`empty` with the shape and dtype of ``a`` (C order), placed beside ``a``."""
    if not _enabled or a.nbytes < MIN_BYTES:
        return np.empty(a.shape, a.dtype)
    return empty(a.shape, a.dtype, beside=a)


def cast(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``a.astype(dtype)`` into an array from :func:`empty`."""
    result = empty(a.shape, dtype, beside=a)
    np.copyto(result, a, casting="unsafe")
    return result


def _trim() -> None:
    """Drop free buffers, least recently used first, until the pool fits MAX_BYTES."""
    total = sum(b.nbytes for b in _buffers)
    i = 0
    while total > MAX_BYTES and i < len(_buffers):
        if _free_at(i):
            total -= _buffers.pop(i).nbytes
        else:
            i += 1


def release() -> int:
    """Free every pooled buffer not in use; return the bytes released."""
    total = 0
    with _lock:
        i = 0
        while i < len(_buffers):
            if _free_at(i):
                total += _buffers.pop(i).nbytes
            else:
                i += 1
    return total


def pooled_bytes() -> int:
    """Bytes currently held by the pool (in use or free)."""
    with _lock:
        return sum(b.nbytes for b in _buffers)


def set_enabled(enabled: bool) -> None:
    """Turn pooling of large outputs on or off (off also releases the free buffers)."""
    global _enabled
    _enabled = bool(enabled)
    if not _enabled:
        release()
