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


def _aligned_empty(shape, dtype, offset_bytes=0):
    """An uninitialised array starting ``offset_bytes`` after a 64-byte boundary."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.empty(nbytes + 128, np.uint8)
    start = -raw.ctypes.data % 64 + offset_bytes
    return raw[start:start + nbytes].view(dtype).reshape(shape)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("offset", [0, 4, 16])  # aligned, and off the vector boundary
def test_streaming_stores_write_the_same_bits(dtype, offset, rng):
    """The output paths that bypass the caches (taken for inputs beyond the last-level cache)
    give the bits of the regular ones, aligned or not, and in place."""
    k = cython_cpu._need()
    x3 = (3.0 + rng.standard_normal((3, 50, 40))).astype(dtype)  # samples / channels-last rows
    x4 = (3.0 + rng.standard_normal((2, 3, 5, 37))).astype(dtype)  # runs of 37 values
    x2 = (3.0 + rng.standard_normal((8, 2 * 150))).astype(dtype)  # GroupNorm rows, 2 channels
    w40, b40 = 1.0 + 0.1 * rng.standard_normal(40), rng.standard_normal(40).astype(dtype)
    coef = lambda shape: rng.standard_normal(shape).astype(dtype)
    hi3, sc3, sh3 = coef((3, 40)), coef((3, 40)), coef((3, 40))
    hi4, lo4, sc4, sh4 = coef((2, 5)), coef((2, 5)) * 1e-7, coef((2, 5)), coef((2, 5))
    w8, b8 = 1.0 + 0.1 * rng.standard_normal(8), rng.standard_normal(8).astype(dtype)
    res4 = rng.standard_normal(x4.shape).astype(dtype)
    calls = {
        "samples_forward": (x3, lambda o, s: k.samples_forward(x3, 4, w40, b40, 1e-5, o, 2, s)),
        "apply_lanes": (x3, lambda o, s: k.apply_lanes(x3, hi3, sc3, sh3, o, 2, s)),
        "apply_runs": (x4, lambda o, s: k.apply_runs(x4, hi4, lo4, sc4, sh4, o, 2, 2, s)),
        "grouped_forward": (x2, lambda o, s: k.grouped_forward(x2, 4, 150, w8, b8, 1e-5, o, 4, 2, s)),
        # epilogues: ReLU of + res in registers, GELU through a block copied out
        "apply_runs relu(+res)": (x4, lambda o, s: k.apply_runs(
            x4, hi4, lo4, sc4, sh4, o, 2, 2, s, (1, 0.0, res4, None))),
        "apply_runs gelu": (x4, lambda o, s: k.apply_runs(
            x4, hi4, lo4, sc4, sh4, o, 2, 2, s, (3, 0.0, None, None))),
    }
    for name, (x, call) in calls.items():
        want = np.empty_like(x)
        call(want, False)
        got = _aligned_empty(x.shape, dtype, offset)
        call(got, True)
        np.testing.assert_array_equal(got, want, err_msg=name)
    # in place: the input overwritten as it is read
    for name in ("apply_lanes", "apply_runs"):
        x, call = calls[name]
        want = np.empty_like(x)
        call(want, False)
        inplace = _aligned_empty(x.shape, dtype, offset)
        inplace[...] = x
        k.apply_lanes(inplace, hi3, sc3, sh3, inplace, 2, True) if name == "apply_lanes" else \
            k.apply_runs(inplace, hi4, lo4, sc4, sh4, inplace, 2, 2, True)
        np.testing.assert_array_equal(inplace, want, err_msg=name + " in place")
    mean, var = 3.0 + rng.standard_normal((2, 5)), rng.uniform(0.5, 2.0, (2, 5))
    want = np.empty_like(x4)
    k.channels_given(x4, mean, var, None, None, 1e-5, want, 2, 2, False)
    got = _aligned_empty(x4.shape, dtype, offset)
    k.channels_given(x4, mean, var, None, None, 1e-5, got, 2, 2, True)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("offset", [0, 4, 16])
def test_streaming_stores_write_the_same_bits_backward_and_rows(dtype, offset, rng):
    """The same for the row forward (LayerNorm) and every backward that writes ``dx``; the
    column or channel sums they return do not depend on how ``dx`` is written."""
    k = cython_cpu._need()
    data = lambda shape: (3.0 + rng.standard_normal(shape)).astype(dtype)
    coef = lambda shape: rng.standard_normal(shape).astype(dtype)
    xr, dyr = data((8, 296)), data((8, 296))  # rows of whole vectors, a partial last vector
    mean_r, rstd_r = xr.mean(axis=1, dtype=np.float64), rng.uniform(0.5, 2.0, 8)
    w_r, b_r = 1.0 + 0.1 * rng.standard_normal(296), coef(296)
    xg, dyg = data((8, 2 * 150)), data((8, 2 * 150))  # GroupNorm rows, 2 channels of 150
    w8, rstd_g = 1.0 + 0.1 * rng.standard_normal(8), rng.uniform(0.5, 2.0, 8)
    x4, dy4 = data((2, 3, 5, 37)), data((2, 3, 5, 37))  # runs of 37 values
    hi4, lo4 = coef((2, 5)), coef((2, 5)) * 1e-7
    rs4, k14, k24, k34 = coef((2, 5)), coef((2, 5)), coef((2, 5)), coef((2, 5))
    x3, dy3 = data((3, 50, 40)), data((3, 50, 40))  # channels-last rows of 40
    hi3, rs3, k13, k23, k33 = (coef((3, 40)) for _ in range(5))
    calls = {
        "rows_forward": (xr, lambda o, s: k.rows_forward(
            xr, w_r.astype(dtype), b_r, 1e-5, True, o, 4, 2, s)),
        "rows_backward": (xr, lambda o, s: k.rows_backward(
            xr, dyr, mean_r, rstd_r, w_r, w_r.astype(dtype), True, o, 4, 2, s)),
        "grouped_backward": (xg, lambda o, s: k.grouped_backward(
            xg, dyg, xg.mean(axis=1, dtype=np.float64), rstd_g, 4, 150, w8, o, 4, 2, s)),
        "backward_apply_runs": (x4, lambda o, s: k.backward_apply_runs(
            x4, dy4, hi4, lo4, rs4, k14, k24, k34, o, 2, 2, s)),
        "backward_apply_lanes": (x3, lambda o, s: k.backward_apply_lanes(
            x3, dy3, hi3, rs3, k13, k23, k33, o, 2, s)),
    }
    for name, (x, call) in calls.items():
        want = np.empty_like(x)
        sums_want = call(want, False)
        got = _aligned_empty(x.shape, dtype, offset)
        sums_got = call(got, True)
        np.testing.assert_array_equal(got, want, err_msg=name)
        if sums_want is not None:
            for a, b in zip(sums_got, sums_want):
                np.testing.assert_array_equal(a, b, err_msg=name + " sums")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_prefetching_changes_no_bit(dtype, rng):
    """The fused row kernels give the same bits whether or not they prefetch ahead."""
    k = cython_cpu._need()
    x, dy = (3.0 + rng.standard_normal((6, 3 * 1500))).astype(dtype), rng.standard_normal((6, 4500)).astype(dtype)
    mean, rstd = x.mean(axis=1, dtype=np.float64), rng.uniform(0.5, 2.0, 6)
    w3, b3 = 1.0 + 0.1 * rng.standard_normal(6), rng.standard_normal(6).astype(dtype)
    w_row = 1.0 + 0.1 * rng.standard_normal(4500)
    calls = {
        "grouped_forward": lambda o, p: k.grouped_forward(x, 2, 1500, w3, b3, 1e-5, o, 3, 2, False, p),
        "grouped_backward": lambda o, p: k.grouped_backward(x, dy, mean, rstd, 2, 1500, w3, o, 3, 2, False, p),
        "rows_backward": lambda o, p: k.rows_backward(
            x, dy, mean, rstd, w_row, w_row.astype(dtype), True, o, 3, 2, False, p),
    }
    for name, call in calls.items():
        want, got = np.empty_like(x), np.empty_like(x)
        r_want, r_got = call(want, False), call(got, True)
        np.testing.assert_array_equal(got, want, err_msg=name)
        for a, b in zip(r_got, r_want):
            np.testing.assert_array_equal(a, b, err_msg=name)


def test_prefetch_threshold():
    from fastnorm.backends import _plan
    llc = _plan.last_level_cache_bytes()
    assert not _plan.prefetch_ahead(llc // 2) and _plan.prefetch_ahead(llc)


def test_stream_output_threshold():
    from fastnorm.backends import _plan
    llc = _plan.last_level_cache_bytes()
    assert llc > 0
    assert not _plan.stream_output(llc // 4, llc // 4)
    assert not _plan.stream_output(llc // 2 - 64, llc // 2)  # input and output fit together
    assert _plan.stream_output(llc // 2, llc // 2)
    assert _plan.stream_output(llc, 1)
    # runs shorter than STREAM_MIN_RUN bytes (one coefficient each) are written through the caches
    assert _plan.stream_output(llc, llc, _plan.STREAM_MIN_RUN)
    assert not _plan.stream_output(llc, llc, _plan.STREAM_MIN_RUN - 4)
