"""How a kernel call is cut into parallel tasks; shared by the CPU backends."""

from __future__ import annotations

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
    work is cut into pieces of at least ``MIN_TASK`` values.
    """
    if threads == 1 or groups >= TASKS_PER_THREAD * threads:
        return 1
    return max(1, min(math.ceil(TASKS_PER_THREAD * threads / groups), size // MIN_TASK))


def row_tasks(rows: int, threads: int) -> int:
    """Tasks for a fused row kernel: ``TASKS_PER_THREAD`` per thread, at most one per row."""
    return max(1, min(rows, TASKS_PER_THREAD * threads))
