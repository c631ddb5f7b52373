"""Timing: round-robin samples, disturbance checks, retries and the ratio summaries.

:func:`time_round_robin` alternates implementations inside every round (caches as
:data:`CACHE_MODES` says); :class:`OtherCpuMeter` measures how busy other processes kept the
CPUs; :func:`run_case` prepares, checks and times every implementation on one case, and
:func:`time_case` retries a disturbed case within a :class:`RetryBudget`; :func:`warm_up_jit`
compiles the kernels first. :class:`CaseResult` holds one case's times;
:func:`geometric_mean` and :func:`summarize` (:class:`RatioSummary`) condense the ratios;
:func:`progress` shows a transient status line meanwhile.
"""

from __future__ import annotations

import gc
import math
import os
import statistics
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import fastnorm
from fastnorm.backends._plan import last_level_cache_bytes

from .cases import (
    BEST_PEER,
    BUSY_WARNING,
    FASTNORM_PREFIX,
    MATRIX,
    MAX_NUMBER,
    MIN_SAMPLE,
    RETRY_BUDGET,
    RETRY_PAUSE,
    SLOWER,
    Case,
    Problem,
    make_problem,
    smoke_case,
)
from .naive import max_abs_diff, reference_result
from .peers import Impl, Runtimes, Unsupported, build_impl, fastnorm_impl

#: how the caches stand when a sample starts (``--cache``)
CACHE_MODES: dict[str, str] = {
    "warm": "one untimed call of the same implementation right before each sample",
    "cold": "caches flushed (a buffer of twice the last-level cache written) before each sample",
    "shared": "as the previous implementation in the round left them",
}


_flush_buffer: np.ndarray | None = None


def flush_caches() -> None:
    """Evict the data of the last calls from the CPU caches: write twice the last-level cache."""
    global _flush_buffer
    if _flush_buffer is None:
        _flush_buffer = np.zeros(2 * last_level_cache_bytes() // 8)
    _flush_buffer += 1.0


def time_round_robin(
    impls: Sequence[Impl],
    rounds: int,
    numbers: dict[str, int] | None = None,
    cache: str = "warm",
) -> dict[str, list[float]]:
    """Seconds per call of each implementation, alternating them inside every round.

    The starting implementation rotates from round to round, so none always runs first (or
    right after the slow one). ``numbers[name]`` calls (default 1) make one sample of ``name``;
    the sample's time is divided by it. ``cache`` (:data:`~fastnorm.benchmark.timing.CACHE_MODES`) sets how the caches
    stand when a sample starts: ``"warm"`` runs the implementation once, untimed, right
    before (each one then meets the caches as repeated calls of itself leave them, rather than
    always the state its fixed predecessor in the rotation leaves, which for a tensor near the
    cache size favours whoever follows a peer that just read the same input); ``"cold"``
    flushes them. The garbage collector is paused while timing.

    Parameters
    ----------
    impls : sequence of Impl
        The implementations, prepared for one case.
    rounds : int
        Samples of each implementation.
    numbers : dict of str to int, optional
        Implementation name -> calls per sample (default 1 for each).
    cache : {"warm", "cold", "shared"}, default "warm"
        How the caches stand when a sample starts (:data:`CACHE_MODES`).

    Returns
    -------
    dict of str to list of float
        Implementation name -> ``rounds`` seconds per call.

    Raises
    ------
    ValueError
        For an unknown ``cache``.

    Examples
    --------
    >>> from fastnorm import benchmark
    >>> impls = [benchmark.Impl("sum", lambda: sum(range(100))),
    ...          benchmark.Impl("numpy-sum", lambda: np.arange(100).sum())]
    >>> times = benchmark.time_round_robin(impls, rounds=3, numbers={"sum": 10})
    >>> sorted(times), [len(t) for t in times.values()]
    (['numpy-sum', 'sum'], [3, 3])
    >>> all(t > 0 for ts in times.values() for t in ts)
    True
    """
    if cache not in CACHE_MODES:
        raise ValueError(f"cache must be one of {', '.join(CACHE_MODES)}, got {cache!r}")
    times: dict[str, list[float]] = {impl.name: [] for impl in impls}
    numbers = numbers or {}
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for r in range(rounds):
            start = r % len(impls)
            for impl in [*impls[start:], *impls[:start]]:
                number = numbers.get(impl.name, 1)
                call = impl.call
                with impl.entered():
                    if cache == "warm":
                        call()
                    elif cache == "cold":
                        flush_caches()
                    t0 = time.perf_counter()
                    for _ in range(number):
                        call()
                    times[impl.name].append((time.perf_counter() - t0) / number)
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


class OtherCpuMeter:
    """The share of the machine's CPU time that *other* processes used since the meter started.

    Machine-wide busy time from ``/proc/stat`` (steal included: a VM's noisy neighbours) minus
    this process's own CPU time (``os.times``, all threads), over wall time times the CPU count.
    Linux only; elsewhere :meth:`share` returns ``None``.

    Attributes
    ----------
    start : tuple of float, or None
        The sample taken at construction: wall time, machine busy seconds, own CPU seconds
        (None where ``/proc/stat`` cannot be read).

    Examples
    --------
    >>> from fastnorm import benchmark
    >>> meter = benchmark.OtherCpuMeter()
    >>> _ = np.ones(10**5).sum()
    >>> share = meter.share()
    >>> share is None or 0.0 <= share
    True
    """

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat", encoding="ascii") as f:
                ticks = [int(v) for v in f.readline().split()[1:9]]  # user .. steal
        except (OSError, ValueError):
            return None
        busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait
        own = os.times()
        return time.perf_counter(), busy, own.user + own.system

    def share(self) -> float | None:
        """The share of CPU time other processes used since the meter started (0 to 1), or
        ``None`` where it cannot be measured.

        Returns
        -------
        float or None

        Examples
        --------
        >>> from fastnorm import benchmark
        >>> share = benchmark.OtherCpuMeter().share()
        >>> share is None or share >= 0.0
        True
        """
        end = self._sample()
        if self.start is None or end is None:
            return None
        wall = (end[0] - self.start[0]) * (os.cpu_count() or 1)
        others = (end[1] - self.start[1]) - (end[2] - self.start[2])
        return max(others, 0.0) / wall if wall > 0 else None


@dataclass
class CaseResult:
    """One case: per-call seconds of every implementation, fastnorm's (and the peers') error
    against float64, how busy other processes kept the CPUs meanwhile (a share, ``None`` where
    unknown), the calls per sample, and the implementations that did not run (and why).

    Parameters
    ----------
    case : Case
        The case timed.
    times : dict of str to list of float
        Implementation name -> seconds per call of each sample.
    errors : dict of str to float
        Implementation name -> largest absolute error against the float64 reference.
    others : float, optional
        The share of CPU time other processes used while timing (None: unknown).
    numbers : dict of str to int, optional
        Implementation name -> calls per sample.
    skipped : dict of str to str, optional
        Implementation name -> why it did not run the case.
    attempts : int, default 1
        How many times the case was timed (see :func:`time_case`).
    stat : {"median", "min"}, default "median"
        The statistic of the times that is reported and compared.

    Attributes
    ----------
    case, times, errors, others, numbers, skipped, attempts, stat
        The constructor's arguments (a dataclass).

    See Also
    --------
    run_case, time_case : make one.

    Examples
    --------
    >>> from fastnorm import benchmark
    >>> case = benchmark.MATRIX[0]
    >>> result = benchmark.CaseResult(case, {"fastnorm-cython": [1.0, 2.0, 3.0],
    ...                                      "numpy": [4.0, 4.0, 5.0]}, {})
    >>> result.value("numpy"), result.ratio("cython", "numpy"), result.best_peer()
    (4.0, 0.5, 'numpy')
    """

    case: Case
    times: dict[str, list[float]]
    errors: dict[str, float]
    others: float | None = None
    numbers: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    attempts: int = 1
    #: the statistic of the times that is reported and compared: "median" or "min"
    stat: str = "median"

    def value(self, name: str) -> float | None:
        """The median (or, with ``stat="min"``, minimum) seconds per call of ``name``.

        Parameters
        ----------
        name : str
            An implementation's name.

        Returns
        -------
        float or None
            None where ``name`` has no times.

        Examples
        --------
        >>> from fastnorm import benchmark
        >>> result = benchmark.CaseResult(benchmark.MATRIX[0], {"numpy": [3.0, 1.0, 2.0]}, {})
        >>> result.value("numpy"), result.value("torch")
        (2.0, None)
        """
        t = self.times.get(name)
        if not t:
            return None
        return min(t) if self.stat == "min" else statistics.median(t)

    def ratio(self, backend: str, peer: str) -> float | None:
        """``fastnorm-<backend>`` time / ``peer`` time (``None`` where either did not run);
        ``peer`` ``BEST_PEER`` (``"best"``): the fastest peer that ran the case.

        Parameters
        ----------
        backend : str
            A fastnorm backend (``"cython"``, ...).
        peer : str
            A peer's name, or ``"best"``.

        Returns
        -------
        float or None
            Below 1 where fastnorm is faster.

        Examples
        --------
        >>> from fastnorm import benchmark
        >>> result = benchmark.CaseResult(benchmark.MATRIX[0], {
        ...     "fastnorm-cython": [1.0], "numpy": [4.0], "torch": [2.0]}, {})
        >>> result.ratio("cython", "numpy"), result.ratio("cython", "best")
        (0.25, 0.5)
        """
        fn = self.value(FASTNORM_PREFIX + backend)
        other = self.best_peer_time() if peer == BEST_PEER else self.value(peer)
        return None if fn is None or other is None or other <= 0 else fn / other

    def best_peer(self) -> str | None:
        """The fastest peer of the case (None where no peer ran it).

        Returns
        -------
        str or None
            A peer's name.

        Examples
        --------
        >>> from fastnorm import benchmark
        >>> result = benchmark.CaseResult(benchmark.MATRIX[0], {
        ...     "fastnorm-cython": [1.0], "numpy": [4.0], "torch": [2.0]}, {})
        >>> result.best_peer()
        'torch'
        """
        ran = [(v, n) for n in self.times if not n.startswith(FASTNORM_PREFIX)
               and (v := self.value(n)) is not None]
        return min(ran)[1] if ran else None

    def best_peer_time(self) -> float | None:
        """The time of :meth:`best_peer` (None where no peer ran the case).

        Returns
        -------
        float or None
            Seconds per call.

        Examples
        --------
        >>> from fastnorm import benchmark
        >>> result = benchmark.CaseResult(benchmark.MATRIX[0], {
        ...     "fastnorm-cython": [1.0], "numpy": [4.0], "torch": [2.0]}, {})
        >>> result.best_peer_time()
        2.0
        """
        best = self.best_peer()
        return None if best is None else self.value(best)

    def best_fastnorm(self) -> float:
        """Time of the fastest fastnorm backend.

        Returns
        -------
        float
            Seconds per call.

        Raises
        ------
        ValueError
            Where no fastnorm backend ran the case.

        Examples
        --------
        >>> from fastnorm import benchmark
        >>> result = benchmark.CaseResult(benchmark.MATRIX[0], {
        ...     "fastnorm-cython": [1.0], "fastnorm-numba": [1.5], "numpy": [4.0]}, {})
        >>> result.best_fastnorm()
        1.0
        """
        return min(v for n in self.times if n.startswith(FASTNORM_PREFIX) and (v := self.value(n)))


def _calibrate(impl: Impl, first_call: float) -> int:
    """Calls per sample so that a sample lasts about :data:`MIN_SAMPLE` (1 for slow calls)."""
    if first_call >= 10 * MIN_SAMPLE:
        return 1
    with impl.entered():
        t0 = time.perf_counter()
        impl.call()
        seconds = time.perf_counter() - t0
    return int(min(MAX_NUMBER, max(1, math.ceil(MIN_SAMPLE / max(seconds, 1e-7)))))


def run_case(
    case: Case,
    problem: Problem,
    names: Sequence[str],
    runtimes: Runtimes,
    rounds: int,
    cache: str = "warm",
) -> CaseResult:
    """Prepare, warm up (JIT, first touch), check and time every implementation on one case.

    Each implementation is prepared (:func:`build_impl`; those that raise
    :class:`Unsupported` are skipped), called once untimed and checked against the float64
    reference, its calls per sample calibrated so that a sample lasts about a millisecond,
    then all are timed together by :func:`time_round_robin` while an :class:`OtherCpuMeter`
    runs.

    Parameters
    ----------
    case : Case
        The case.
    problem : Problem
        Its data.
    names : sequence of str
        The implementations (see :func:`impl_names`).
    runtimes : Runtimes
        The optional peers.
    rounds : int
        Samples of each implementation.
    cache : {"warm", "cold", "shared"}, default "warm"
        As for :func:`time_round_robin`.

    Returns
    -------
    CaseResult

    Raises
    ------
    ValueError
        For an unknown implementation or ``cache``, or a peer that is not installed.

    See Also
    --------
    time_case : the same, retried while other processes disturb it.

    Examples
    --------
    >>> from fastnorm import benchmark
    >>> case = benchmark.smoke_case(benchmark.MATRIX[0])
    >>> problem = benchmark.make_problem(case.shape, case.axis)
    >>> result = benchmark.run_case(case, problem, ["fastnorm-numpy", "numpy"],
    ...                             benchmark.Runtimes(), rounds=2)
    >>> sorted(result.times), result.errors["fastnorm-numpy"] < 1e-4
    (['fastnorm-numpy', 'numpy'], True)
    """
    impls, skipped = [], {}
    for name in names:
        try:
            impls.append(build_impl(name, case, problem, runtimes.torch, runtimes))
        except Unsupported as exc:
            skipped[name] = str(exc)
    first, numbers = {}, {}
    for impl in impls:  # warm-up, untimed
        t0 = time.perf_counter()
        first[impl.name] = impl.to_numpy(impl.run())
        numbers[impl.name] = _calibrate(impl, time.perf_counter() - t0)
    reference = reference_result(case, problem)
    errors = {name: max_abs_diff(result, reference) for name, result in first.items()}
    del first, reference
    meter = OtherCpuMeter()
    times = time_round_robin(impls, rounds, numbers, cache)
    return CaseResult(case, times, errors, meter.share(), numbers, skipped)


class RetryBudget:
    """Seconds of retries left in this run."""

    def __init__(self, seconds: float = RETRY_BUDGET) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> bool:
        return time.monotonic() < self.deadline


def time_case(
    case: Case,
    problem: Problem,
    names: Sequence[str],
    runtimes: Runtimes,
    rounds: int,
    retries: int,
    budget: RetryBudget | None = None,
    cache: str = "warm",
) -> CaseResult:
    """:func:`run_case`, run again (up to ``retries`` times, after a pause, while the run's retry
    budget lasts) while other processes disturbed it; returns the least disturbed attempt.

    Parameters
    ----------
    case, problem, names, runtimes, rounds, cache
        As for :func:`run_case`.
    retries : int
        At most this many more attempts, while other processes used more than
        ``BUSY_WARNING`` of the CPUs.
    budget : RetryBudget, optional
        The seconds of retries left in the whole run; None (the default): no limit.

    Returns
    -------
    CaseResult
        The least disturbed attempt, with ``attempts`` set.

    Raises
    ------
    ValueError
        As :func:`run_case`.

    Examples
    --------
    >>> from fastnorm import benchmark
    >>> case = benchmark.smoke_case(benchmark.MATRIX[0])
    >>> problem = benchmark.make_problem(case.shape, case.axis)
    >>> result = benchmark.time_case(case, problem, ["numpy"], benchmark.Runtimes(),
    ...                              rounds=2, retries=0)
    >>> result.attempts, len(result.times["numpy"])
    (1, 2)
    """
    best: CaseResult | None = None
    for attempt in range(retries + 1):
        if attempt:
            if budget is not None and not budget.left():
                break
            progress(f"{case.label}: others busy, retry {attempt}/{retries} ...")
            time.sleep(RETRY_PAUSE)
        else:
            progress(f"timing {case.label} ...")
        res = run_case(case, problem, names, runtimes, rounds, cache)
        if best is None or (res.others or 0.0) < (best.others or 0.0):
            best = res
        best.attempts = attempt + 1
        if best.others is None or best.others <= BUSY_WARNING:
            break
    assert best is not None
    return best


def warm_up_jit(backends: Sequence[str], cases: Iterable[Case] = MATRIX) -> float:
    """Compile (or load from the on-disk cache) every kernel the cases use; returns seconds.

    ``fastnorm.warmup()`` on each backend, then every case on a tiny input of its layout.
    """
    t0 = time.perf_counter()
    for backend in backends:
        with fastnorm.use_backend(backend):
            fastnorm.warmup()
    for case in cases:
        small = smoke_case(case)
        problem = make_problem(small.shape, small.axis, seed=1)
        for backend in backends:
            fastnorm_impl(small, problem, backend).run()
    return time.perf_counter() - t0


# --------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------


def geometric_mean(values: Iterable[float]) -> float:
    """The geometric mean of positive numbers (``nan`` for none).

    Parameters
    ----------
    values : iterable of float
        Positive numbers.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        For a value that is not positive.

    Examples
    --------
    >>> from fastnorm import benchmark
    >>> round(benchmark.geometric_mean([1.0, 4.0, 16.0]), 12)
    4.0
    >>> benchmark.geometric_mean([])
    nan
    """
    logs = [math.log(v) for v in values]
    return math.exp(sum(logs) / len(logs)) if logs else math.nan


@dataclass(frozen=True)
class RatioSummary:
    """``fastnorm-<backend> / peer`` over the cases both ran.

    Parameters
    ----------
    backend : str
        The fastnorm backend.
    peer : str
        The peer (or ``"best"``).
    geomean : float
        Geometric mean of the ratios.
    count : int
        Number of cases.
    worst : float
        The largest ratio.
    worst_case : str
        That case's label.
    slower : int
        Cases where fastnorm is slower (ratio above 1).

    Attributes
    ----------
    backend, peer, geomean, count, worst, worst_case, slower
        The constructor's arguments (a frozen dataclass).

    See Also
    --------
    summarize : makes one.

    Examples
    --------
    >>> from fastnorm import benchmark
    >>> summary = benchmark.RatioSummary("cython", "numpy", 0.5, 2, 0.8, "BatchNorm ...", 0)
    >>> summary.as_dict()["worst"]
    0.8
    """

    backend: str
    peer: str
    geomean: float
    count: int
    worst: float
    worst_case: str
    slower: int

    def as_dict(self) -> dict[str, Any]:
        """The figures as a JSON-ready dict.

        Returns
        -------
        dict
            ``geomean``, ``cases``, ``worst``, ``worst_case`` and ``slower_cases``.

        Examples
        --------
        >>> from fastnorm import benchmark
        >>> summary = benchmark.RatioSummary("cython", "numpy", 0.5, 2, 0.8, "BatchNorm ...", 0)
        >>> sorted(summary.as_dict())
        ['cases', 'geomean', 'slower_cases', 'worst', 'worst_case']
        """
        return {
            "geomean": self.geomean,
            "cases": self.count,
            "worst": self.worst,
            "worst_case": self.worst_case,
            "slower_cases": self.slower,
        }


def summarize(results: Sequence[CaseResult], backend: str, peer: str) -> RatioSummary | None:
    """The ratios ``fastnorm-<backend> / peer`` of ``results``, condensed.

    Parameters
    ----------
    results : sequence of CaseResult
        The timed cases.
    backend : str
        The fastnorm backend.
    peer : str
        A peer's name, or ``"best"`` (the fastest peer of each case).

    Returns
    -------
    RatioSummary or None
        None where no case has both times.

    Examples
    --------
    >>> from fastnorm import benchmark
    >>> results = [benchmark.CaseResult(case, {"fastnorm-cython": [1.0], "numpy": [q]}, {})
    ...            for case, q in zip(benchmark.MATRIX[:2], (2.0, 0.5))]
    >>> summary = benchmark.summarize(results, "cython", "numpy")
    >>> summary.count, summary.worst, summary.slower, round(summary.geomean, 12)
    (2, 2.0, 1, 1.0)
    """
    pairs = [(r.case.label, q) for r in results if (q := r.ratio(backend, peer)) is not None]
    if not pairs:
        return None
    worst_case, worst = max(pairs, key=lambda p: p[1])
    return RatioSummary(
        backend,
        peer,
        geometric_mean(q for _, q in pairs),
        len(pairs),
        worst,
        worst_case,
        sum(q > SLOWER for _, q in pairs),
    )


# --------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------


class _Bar:
    """:func:`progress_bar`'s handle: a tqdm bar, or a ``[i/n] case`` status line."""

    def __init__(self, total: int, tqdm: Any) -> None:
        self.total, self.done, self.label = total, 0, ""
        self.bar = None if tqdm is None else tqdm(total=total, file=sys.stderr, unit="case",
                                                   leave=False, dynamic_ncols=True)

    def describe(self, label: str) -> None:
        """Show ``label``: the current case, or what is being done for it."""
        self.label = label
        if self.bar is not None:
            self.bar.set_description_str(label)
        else:
            _status(f"[{self.done + 1}/{self.total}] {label}")

    def advance(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextmanager
def progress_bar(total: int) -> Iterator[_Bar]:
    """Progress over ``total`` cases on stderr when it is a terminal: a tqdm bar where tqdm is
    installed, else a ``[i/n] case`` status line; nothing otherwise."""
    tqdm: Any = None
    if sys.stderr.isatty():
        try:
            from tqdm import tqdm as tqdm_class
        except ImportError:
            tqdm = None
        else:
            tqdm = tqdm_class
    global _active
    bar = _Bar(total, tqdm)
    _active = bar
    try:
        yield bar
    finally:
        _active = None
        bar.close()


_active: _Bar | None = None


def progress(message: str) -> None:
    """Show a transient status line on stderr when it is a terminal (empty: clear it); within
    :func:`progress_bar`, as the bar's description."""
    if _active is not None and message:
        _active.describe(message)
    else:
        _status(message)


def _status(message: str) -> None:
    if sys.stderr.isatty():
        sys.stderr.write(f"\r{message:<70.70}\r" if message else f"\r{'':<70}\r")
        sys.stderr.flush()
