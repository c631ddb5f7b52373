"""My LayerNorm against fastnorm, the naive NumPy formula and PyTorch, with pytest-benchmark.

    python -m pytest examples/benchmark_my_layer_norm.py --benchmark-columns=median

The fixtures come from fastnorm's pytest plugin (installed with fastnorm): ``norm_case`` runs
each test on the benchmark's LayerNorm forward cases, ``norm_impl`` on each peer, and
``norm_check`` compares a result with the float64 reference.  The table groups by case.
"""

import numpy as np
import pytest


def my_layer_norm(x, weight, bias, eps):
    mean = x.mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(x.var(axis=-1, keepdims=True) + eps) * weight + bias


@pytest.mark.norm_cases(family="layer_norm", kind="forward")
def test_mine(benchmark, norm_case, norm_problem, norm_check):
    p = norm_problem
    norm_check(benchmark(my_layer_norm, p.x, p.weight, p.bias, norm_case.eps))


@pytest.mark.norm_cases(family="layer_norm", kind="forward")
def test_peers(benchmark, norm_impl, norm_check):
    norm_check(norm_impl.to_numpy(benchmark(norm_impl.run)))
