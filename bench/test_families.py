"""LayerNorm, RMSNorm, GroupNorm and InstanceNorm2d benchmarks: fastnorm vs naive NumPy vs PyTorch.

Cases (float32), each timed as forward (``layer(x)``) and backward (``layer.backward(dy)`` after
one untimed forward; only backward is timed):

* LayerNorm and RMSNorm on ``(8192, 1024)`` and ``(6304, 768)``, normalized over the last
  dimension, with a weight (and a bias for LayerNorm);
* GroupNorm, 32 groups, affine, on NCHW ``(32, 64, 56, 56)`` with ``axis=1`` and NHWC
  ``(32, 56, 56, 64)`` with ``axis=-1`` (a ``channels_last`` tensor for torch);
* InstanceNorm2d, ``affine=True``, on NCHW ``(16, 64, 64, 64)``.

Every benchmark of a case lands in the same ``benchmark.group``, so the pytest-benchmark table
compares the implementations side by side; each result is also checked against a float64 NumPy
computation (``max_abs_err`` in ``extra_info``). Cases, data and implementations are shared with
``python bench/compare_families.py`` (:mod:`bench.compare_families`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from types import ModuleType

import numpy as np
import pytest

from fastnorm.benchmark import (
    TORCH_IMPL,
    Problem,
    fast_backends,
    impl_names,
    max_abs_diff,
)

from . import compare_families as families
from .compare_families import FamilyCase

IMPLS = [
    *impl_names(fast_backends(), with_torch=False),
    pytest.param(
        TORCH_IMPL,
        marks=pytest.mark.skipif(
            not families.torch_installed(), reason="torch not installed: install torch to compare"
        ),
    ),
]

#: a result passes when max|result - float64 reference| <= TOLERANCE * max(1, max|reference|)
TOLERANCE = 1e-3


@pytest.mark.parametrize("impl_name", IMPLS)
@pytest.mark.parametrize("case", families.CASES, ids=lambda case: case.id)
def test_family(
    benchmark,
    case: FamilyCase,
    impl_name: str,
    bench_threads: int,
    torch_module: ModuleType | None,
    choose_rounds: Callable[[Callable[[], object]], int],
    round_setup: Callable[[], None] | None,
    reuse_memory: bool,
    family_problem_for: Callable[[tuple[int, ...], int], Problem],
    family_reference_for: Callable[[FamilyCase], np.ndarray],
    bench_results: dict[tuple[str, str], float],
) -> None:
    if impl_name == TORCH_IMPL and torch_module is None:
        pytest.skip("torch does not import: install torch to compare")
    problem = family_problem_for(case.shape, case.axis)
    impl = families.build_impl(impl_name, case, problem, torch_module)

    benchmark.group = case.label
    benchmark.extra_info.update(
        case=case.label,
        family=case.family,
        kind=case.kind,
        shape=list(case.shape),
        axis=case.axis,
        num_groups=case.num_groups,
        dtype="float32",
        impl=impl_name,
        threads=bench_threads,
        flush_cache=round_setup is not None,
        reuse_memory=reuse_memory,
    )
    if benchmark.enabled:
        with impl.entered():  # fastnorm: its backend, selected once for all calls
            impl.call()  # warm-up outside the timed region: JIT compilation, first touch of memory
            rounds = choose_rounds(impl.call)
            meter = families.OtherCpuMeter()
            result = benchmark.pedantic(impl.call, setup=round_setup, rounds=rounds, iterations=1)
        bench_results[(case.label, impl_name)] = benchmark.stats.stats.median
        others = meter.share()
        benchmark.extra_info["others_cpu_share"] = others
        if others is not None and others > families.BUSY_WARNING:
            warnings.warn(
                f"{case.label} [{impl_name}]: other processes used {others:.0%} of the CPUs"
                " while it was timed: the timing is disturbed",
                stacklevel=1,
            )
    else:  # --benchmark-disable: a single call, a smoke run
        with impl.entered():
            result = benchmark.pedantic(impl.call)

    reference = family_reference_for(case)
    error = max_abs_diff(impl.to_numpy(result), reference)
    benchmark.extra_info["max_abs_err"] = error
    assert error <= TOLERANCE * max(1.0, float(np.max(np.abs(reference)))), (
        f"{impl_name} on {case.label}: max abs error {error:.3g} against float64"
    )
