"""How a kernel call is cut into parallel tasks; shared by the CPU backends."""

from __future__ import annotations

import functools
import math

TASKS_PER_THREAD = 4  # tasks per thread when work is split, for balance
MIN_TASK = 16384  # fewest values worth a task of their own
PARALLEL_MIN = 1 << 16  # fewest values worth waking worker threads for


def threads_for(size: int, threads: int) -> int:
    """Threads for a call touching ``size`` values: one when waking more costs more."""
    return threads if size >= PARALLEL_MIN else 1


def split(groups: int, size: int, threads: int) -> int:
    """Tasks per group, so that ``groups`` groups of ``size`` values keep ``threads`` busy.

    One task per group when there are enough groups; otherwise each group's
    work is cut into pieces of at least ``MIN_TASK`` values: the fewest pieces
    that give every thread the same number of tasks under the kernels' static
    schedule, else ``TASKS_PER_THREAD`` tasks per thread.  Every task costs a
    merge of its partial statistics (4 µs per 1024 channels-last channels), so
    more tasks than the balance needs only cost time.
    """
    if threads == 1 or groups >= TASKS_PER_THREAD * threads:
        return 1
    most = math.ceil(TASKS_PER_THREAD * threads / groups)
    balanced = next((n for n in range(math.ceil(threads / groups), most) if groups * n % threads == 0), most)
    return max(1, min(balanced, size // MIN_TASK))


def row_tasks(rows: int, threads: int) -> int:
    """Tasks for a fused row kernel: ``TASKS_PER_THREAD`` per thread, at most one per row."""
    return max(1, min(rows, TASKS_PER_THREAD * threads))


@functools.cache
def last_level_cache_bytes() -> int:
    """Size of the CPU's last-level cache (from Linux sysfs; 32 MiB where unknown)."""
    sizes = []
    for index in range(8):
        path = f"/sys/devices/system/cpu/cpu0/cache/index{index}/size"
        try:
            with open(path, encoding="ascii") as f:
                text = f.read().strip()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes, default=32 << 20)


STREAM_MIN_RUN = 128  # fewest bytes of a contiguous output run worth streaming stores


def stream_output(in_bytes: int, out_bytes: int, run_bytes: int | None = None) -> bool:
    """Whether an elementwise pass should write its output past the caches.

    When input and output together fill the last-level cache, the output
    cannot stay there next to its input: written through the caches, every
    output line is first read from memory (read for ownership) and later
    written back, and it evicts input lines still to be read.  Streaming
    stores skip both.  ``run_bytes``: the length of the output's contiguous
    runs that take one coefficient each (channels-first BatchNorm: a channel's
    spatial values); runs shorter than ``STREAM_MIN_RUN`` are written value
    by value, slower past the caches than in them.
    """
    if run_bytes is not None and run_bytes < STREAM_MIN_RUN:
        return False
    return in_bytes + out_bytes >= last_level_cache_bytes()


def prefetch_ahead(in_bytes: int) -> bool:
    """Whether a fused row kernel should prefetch ahead of its first pass over each row.

    Inputs that fit in the last-level cache (within a quarter of it) come back from there
    on repeated calls, and prefetching them only costs instructions (InstanceNorm forward
    (16, 64, 64, 64), 16.8 MB, ran 1.2x slower with it); larger ones come from memory,
    where the hardware prefetchers alone keep too few lines in flight.
    """
    return 4 * in_bytes > 3 * last_level_cache_bytes()
