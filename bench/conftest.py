"""Configuration and fixtures for the fastnorm benchmarks (see README.md).

BatchNorm in ``test_batch_norm.py``; LayerNorm, RMSNorm, GroupNorm and InstanceNorm2d in
``test_families.py`` (building blocks in ``compare_families.py``).

Options (each with an environment-variable fallback):

* ``--bench-threads N`` / ``FASTNORM_BENCH_THREADS``: threads for fastnorm *and* torch
  (default: ``fastnorm.get_num_threads()``, which honours ``FASTNORM_NUM_THREADS``);
* ``--bench-rounds R`` / ``FASTNORM_BENCH_ROUNDS``: a fixed number of timed rounds per benchmark
  (default: calibrated so that each benchmark takes about ``--bench-time`` seconds);
* ``--bench-time S`` / ``FASTNORM_BENCH_TIME``: that target, default 0.5 s;
* ``--bench-flush-cache`` / ``FASTNORM_BENCH_FLUSH_CACHE=1``: evict the CPU caches (write a
  buffer larger than the last-level cache) before every timed round, untimed. By default rounds
  run back to back, so part of the input may still sit in the cache from the round before;
* ``--bench-reuse-memory`` / ``FASTNORM_BENCH_REUSE_MEMORY=1``: make glibc's malloc keep and reuse
  freed memory, so that outputs over 32 MiB are not mapped and page-faulted afresh on every call
  (see ``compare_families.reuse_memory``). By default glibc's behaviour is kept.

After the pytest-benchmark tables, a summary prints the median-time ratios per case, as
``python -m fastnorm bench`` does: fastnorm / naive NumPy and fastnorm / torch (< 1 means
fastnorm is faster).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from functools import cache, lru_cache
from types import ModuleType
from typing import TypeVar

import numpy as np
import pytest

import fastnorm
from fastnorm.benchmark import (
    CASES,
    FASTNORM_PREFIX,
    LAYOUTS,
    NUMPY_IMPL,
    TORCH_IMPL,
    Case,
    Impl,
    Problem,
    format_table,
    import_torch,
    make_problem,
    reference_result,
    time_round_robin,
)

from . import compare_families as families

T = TypeVar("T")

MIN_ROUNDS = 5
MAX_ROUNDS = 100
DEFAULT_TIME = 0.5  # target seconds per benchmark when calibrating rounds
FLUSH_BYTES = 128 * 2**20  # larger than any last-level cache we expect

#: (case label, implementation name) -> median seconds, filled by the benchmarks
RESULTS_KEY = pytest.StashKey[dict[tuple[str, str], float]]()
#: the thread count the benchmarks ran with
THREADS_KEY = pytest.StashKey[int]()
#: whether --bench-reuse-memory is in effect
REUSE_KEY = pytest.StashKey[bool]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fastnorm-bench", "fastnorm benchmarks")
    group.addoption(
        "--bench-threads",
        type=int,
        default=None,
        metavar="N",
        help="threads for fastnorm and torch (default: $FASTNORM_BENCH_THREADS, else"
        " fastnorm.get_num_threads())",
    )
    group.addoption(
        "--bench-rounds",
        type=int,
        default=None,
        metavar="R",
        help="fixed number of timed rounds per benchmark (default: $FASTNORM_BENCH_ROUNDS, else"
        f" calibrated to --bench-time, between {MIN_ROUNDS} and {MAX_ROUNDS})",
    )
    group.addoption(
        "--bench-time",
        type=float,
        default=None,
        metavar="S",
        help="target seconds per benchmark when calibrating rounds (default:"
        " $FASTNORM_BENCH_TIME, else 0.5)",
    )
    group.addoption(
        "--bench-flush-cache",
        action="store_true",
        default=None,
        help="evict the CPU caches before every timed round (untimed); default:"
        " $FASTNORM_BENCH_FLUSH_CACHE, else off",
    )
    group.addoption(
        "--bench-reuse-memory",
        action="store_true",
        default=None,
        help="make glibc's malloc reuse freed memory (no fresh page faults for outputs over"
        " 32 MiB); default: $FASTNORM_BENCH_REUSE_MEMORY, else off",
    )


def _setting(config: pytest.Config, option: str, env: str, cast: Callable[[str], T]) -> T | None:
    """Command-line option, else environment variable, else ``None``."""
    value = config.getoption(option)
    if value is not None:
        return cast(value)
    text = os.environ.get(env, "").strip()
    return cast(text) if text else None


def pytest_configure(config: pytest.Config) -> None:
    config.stash[RESULTS_KEY] = {}
    reuse = _setting(config, "--bench-reuse-memory", "FASTNORM_BENCH_REUSE_MEMORY", _flag)
    if reuse and not families.reuse_memory():
        raise pytest.UsageError("--bench-reuse-memory needs glibc (Linux)")
    config.stash[REUSE_KEY] = bool(reuse)


@pytest.fixture(scope="session")
def reuse_memory(request: pytest.FixtureRequest) -> bool:
    """Whether glibc was told to reuse freed memory (``--bench-reuse-memory``)."""
    return request.config.stash.get(REUSE_KEY, False)


@pytest.fixture(scope="session")
def torch_module() -> ModuleType | None:
    """PyTorch, or ``None`` when it is not installed."""
    return import_torch()


@pytest.fixture(scope="session")
def bench_threads(request: pytest.FixtureRequest, torch_module: ModuleType | None) -> Iterator[int]:
    """Set the same thread count for fastnorm and torch for the whole session."""
    config = request.config
    n = _setting(config, "--bench-threads", "FASTNORM_BENCH_THREADS", int)
    if n is None:
        n = fastnorm.get_num_threads()
    old = fastnorm.get_num_threads()
    old_torch = torch_module.get_num_threads() if torch_module is not None else None
    fastnorm.set_num_threads(n)
    if torch_module is not None:
        torch_module.set_num_threads(n)
    config.stash[THREADS_KEY] = n
    yield n
    fastnorm.set_num_threads(old)
    if torch_module is not None:
        torch_module.set_num_threads(old_torch)


@pytest.fixture(scope="session")
def choose_rounds(request: pytest.FixtureRequest) -> Callable[[Callable[[], object]], int]:
    """``choose_rounds(call) -> rounds``: fixed, or calibrated from one timed call."""
    config = request.config
    fixed = _setting(config, "--bench-rounds", "FASTNORM_BENCH_ROUNDS", int)
    target = _setting(config, "--bench-time", "FASTNORM_BENCH_TIME", float) or DEFAULT_TIME

    def choose(call: Callable[[], object]) -> int:
        if fixed is not None:
            return max(1, fixed)
        seconds = time_round_robin([Impl("calibration", call)], 1)["calibration"][0]
        return int(np.clip(round(target / max(seconds, 1e-9)), MIN_ROUNDS, MAX_ROUNDS))

    return choose


def _flag(value: str | bool) -> bool:
    """``True`` for the option, or an environment value other than 0/false/no/off."""
    return (
        value
        if isinstance(value, bool)
        else value.strip().lower() not in ("0", "false", "no", "off")
    )


@pytest.fixture(scope="session")
def round_setup(request: pytest.FixtureRequest) -> Callable[[], None] | None:
    """The untimed ``setup`` before each round: a cache flush when asked for, else ``None``."""
    if not _setting(request.config, "--bench-flush-cache", "FASTNORM_BENCH_FLUSH_CACHE", _flag):
        return None
    buffer = np.zeros(FLUSH_BYTES // 8)

    def flush_cache() -> None:
        np.add(buffer, 1.0, out=buffer)  # touch every cache line of a buffer bigger than the cache

    return flush_cache


@pytest.fixture(scope="session")
def problem_for() -> Callable[[str], Problem]:
    """``problem_for(layout)``: the (cached) input data of a layout."""

    @cache
    def make(layout: str) -> Problem:
        shape, axis = LAYOUTS[layout]
        return make_problem(shape, axis)

    return make


@pytest.fixture(scope="session")
def reference_for(
    problem_for: Callable[[str], Problem],
) -> Callable[[Case], np.ndarray]:
    """``reference_for(case)``: the (cached) float64 result of a case."""

    @cache
    def make(case: Case) -> np.ndarray:
        return reference_result(case, problem_for(case.layout))

    return make


@pytest.fixture(scope="session")
def family_problem_for() -> Callable[[tuple[int, ...], int], Problem]:
    """``family_problem_for(shape, axis)``: the (cached) input data of a family case."""

    @cache
    def make(shape: tuple[int, ...], axis: int) -> Problem:
        return families.make_problem(shape, axis)

    return make


@pytest.fixture(scope="session")
def family_reference_for(
    family_problem_for: Callable[[tuple[int, ...], int], Problem],
) -> Callable[[families.FamilyCase], np.ndarray]:
    """``family_reference_for(case)``: the float64 result of a family case.

    Cached for the last few cases only (the benchmarks run case by case; the float64 arrays are
    large).
    """

    @lru_cache(maxsize=2)
    def make(case: families.FamilyCase) -> np.ndarray:
        return families.reference_result(case, family_problem_for(case.shape, case.axis))

    return make


@pytest.fixture(scope="session")
def bench_results(request: pytest.FixtureRequest) -> dict[tuple[str, str], float]:
    """Where the benchmarks record their median times for the ratio summary."""
    return request.config.stash[RESULTS_KEY]


def _ratio_rows(results: dict[tuple[str, str], float]) -> tuple[list[str], list[list[str]]]:
    names = list(dict.fromkeys(name for _, name in results))
    fast = [n for n in names if n.startswith(FASTNORM_PREFIX)]
    peers = [n for n in (NUMPY_IMPL, TORCH_IMPL) if n in names]
    headers = ["case", *(f"{n} ms" for n in names), *(f"fastnorm/{p}" for p in peers)]
    rows = []
    recorded = dict.fromkeys(label for label, _ in results)
    known = [c.label for c in CASES] + [c.label for c in families.CASES]  # BN first
    labels = [label for label in known if label in recorded]
    for label in [*labels, *(label for label in recorded if label not in labels)]:
        medians = {n: results[(label, n)] for n in names if (label, n) in results}
        best = min((medians[n] for n in fast if n in medians), default=None)
        row = [label, *(f"{medians[n] * 1e3:.2f}" if n in medians else "-" for n in names)]
        row += [f"{best / medians[p]:.2f}" if best and p in medians else "-" for p in peers]
        if len(medians) > 0:
            rows.append(row)
    return headers, rows


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's tables
def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    results = config.stash.get(RESULTS_KEY, {})
    if not results:
        return
    headers, rows = _ratio_rows(results)
    terminalreporter.section("fastnorm: median-time ratios (fastnorm / peer; < 1 means fastnorm is faster)")
    terminalreporter.write_line(format_table(headers, rows, left=1))
    terminalreporter.write_line(
        "ratios are against the fastest fastnorm backend; threads: "
        f"{config.stash.get(THREADS_KEY, '?')} (fastnorm, torch); NumPy is single-threaded;"
        f" memory: {'reused' if config.stash.get(REUSE_KEY, False) else 'glibc default'}"
    )
