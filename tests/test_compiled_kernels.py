"""The compiled (Cython) statistics kernels against the float64 NumPy reference."""

import os

import numpy as np
import pytest

import fastnorm
from fastnorm.backends import cython_cpu, numpy_ref

if not cython_cpu.is_built():
    if os.environ.get("FASTNORM_REQUIRE_EXTENSION"):
        pytest.fail(f"the compiled extension did not build: {cython_cpu.IMPORT_ERROR}", pytrace=False)
    pytest.skip("the compiled extension is not built", allow_module_level=True)

SHAPES = [
    (1, 8, 3, 5000),  # channels-first, long runs
    (1, 64, 16, 49),  # short runs, several rows per block
    (1, 3, 1, 100_003),  # one channel: split inside the reduction
    (2, 5, 4, 1),  # channels-last, tiny
    (1, 70_000, 3, 1),  # channels-last, split over rows
    (2, 300, 200, 1),  # channels-last, wide rows: segments read in several blocks, 8 channels left over
    (1, 131, 1030, 1),  # channels-last, rows of 4 KiB and more, a short last segment
    (3, 1, 2, 7),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_stats_match_reference(shape, dtype, threads, rng):
    fastnorm.set_num_threads(min(threads, os.cpu_count() or 1))
    x = (1e4 + 0.1 * rng.standard_normal(shape)).astype(dtype)
    mean_ref, m2_ref = numpy_ref.stats(x)
    mean, m2 = cython_cpu.stats(x)
    assert mean.shape == m2.shape == (shape[0], shape[2])
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-12, atol=0)  # float32 accumulation: ~1e-7
    np.testing.assert_allclose(m2, m2_ref, rtol=1e-9, atol=0)


def test_huge_magnitudes_stay_finite(rng):
    x = (1e30 * rng.standard_normal((1, 4, 3, 1000))).astype(np.float32)
    mean, m2 = cython_cpu.stats(x)
    mean_ref, m2_ref = numpy_ref.stats(x)
    assert np.isfinite(m2).all()
    np.testing.assert_allclose(m2, m2_ref, rtol=1e-12)


def test_openmp_flag_is_boolean():
    assert cython_cpu.has_openmp() in (True, False)
