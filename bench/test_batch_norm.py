"""BatchNorm2d benchmarks: fastnorm (each fast CPU backend) vs naive NumPy vs PyTorch CPU.

Cases (float32): training forward, backward (after a training forward; only backward is timed)
and eval forward, on NCHW ``(32, 64, 56, 56)`` with ``axis=1`` and NHWC ``(32, 56, 56, 64)``
with ``axis=-1``. Every benchmark of a case lands in the same ``benchmark.group``, so the
pytest-benchmark table compares the implementations side by side. Each result is also checked
against a float64 NumPy computation. The cases, data and implementations are shared with
``python -m fastnorm bench`` (:mod:`fastnorm.benchmark`).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from types import ModuleType

import numpy as np
import pytest

from fastnorm.benchmark import (
    CASES,
    TORCH_IMPL,
    Case,
    Problem,
    build_impl,
    fast_backends,
    impl_names,
    max_abs_diff,
)


def _torch_installed() -> bool:
    """Whether torch can be found, without importing it at collection time."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # ValueError: sys.modules["torch"] is None
        return False


HAS_TORCH = _torch_installed()

IMPLS = [
    *impl_names(fast_backends(), with_torch=False),
    pytest.param(
        TORCH_IMPL,
        marks=pytest.mark.skipif(
            not HAS_TORCH, reason="torch not installed: install torch to compare"
        ),
    ),
]

#: a result passes when max|result - float64 reference| <= TOLERANCE * max(1, max|reference|)
TOLERANCE = 1e-3


@pytest.mark.parametrize("impl_name", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_batch_norm(
    benchmark,
    case: Case,
    impl_name: str,
    bench_threads: int,
    torch_module: ModuleType | None,
    choose_rounds: Callable[[Callable[[], object]], int],
    round_setup: Callable[[], None] | None,
    problem_for: Callable[[str], Problem],
    reference_for: Callable[[Case], np.ndarray],
    bench_results: dict[tuple[str, str], float],
) -> None:
    if impl_name == TORCH_IMPL and torch_module is None:
        pytest.skip("torch does not import: install torch to compare")
    problem = problem_for(case.layout)
    impl = build_impl(impl_name, case, problem, torch_module)

    benchmark.group = f"{case.label} {problem.x.shape}"
    benchmark.extra_info.update(
        case=case.label,
        kind=case.kind,
        layout=case.layout,
        shape=list(problem.x.shape),
        axis=case.axis,
        dtype="float32",
        impl=impl_name,
        threads=bench_threads,
        flush_cache=round_setup is not None,
    )
    if benchmark.enabled:
        with impl.entered():  # fastnorm: its backend, selected once for all calls
            impl.call()  # warm-up outside the timed region: JIT compilation, first touch of memory
            rounds = choose_rounds(impl.call)
            result = benchmark.pedantic(impl.call, setup=round_setup, rounds=rounds, iterations=1)
        bench_results[(case.label, impl_name)] = benchmark.stats.stats.median
    else:  # --benchmark-disable: a single call, a smoke run
        with impl.entered():
            result = benchmark.pedantic(impl.call)

    reference = reference_for(case)
    error = max_abs_diff(impl.to_numpy(result), reference)
    benchmark.extra_info["max_abs_err"] = error
    assert error <= TOLERANCE * max(1.0, float(np.max(np.abs(reference)))), (
        f"{impl_name} on {case.label}: max abs error {error:.3g} against float64"
    )
