"""The cuda backend's host-array contract (the functions of numpy_ref) against numpy_ref."""

import numpy as np
import pytest
from simhelp import cuda_gpu

from fastnorm.backends import numpy_ref

VIEWS = [(1, 4, 3, 32), (1, 128, 3, 1), (3, 1, 4, 30), (3, 30, 6, 1), (2, 3, 5, 7)]


def _close(got, ref, dtype):
    tol = 1e-5 if np.dtype(dtype) == np.float32 else 1e-12
    scale = max(1.0, float(np.max(np.abs(ref), initial=0.0)))
    np.testing.assert_allclose(np.asarray(got, np.float64), ref, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("view", VIEWS, ids=str)
def test_channel_contract(view, dtype, rng):
    x = (3.0 + rng.standard_normal(view)).astype(dtype)
    dy = rng.standard_normal(view).astype(dtype)
    N, _, C, _ = view
    for got, ref in zip(cuda_gpu.stats(x), numpy_ref.stats(x)):
        _close(got, ref, dtype)
    mean, m2 = numpy_ref.stats(x)
    scale, shift = rng.standard_normal((N, C)), rng.standard_normal((N, C))
    out_g, out_r = np.empty_like(x), np.empty_like(x)
    cuda_gpu.apply(x, mean, scale, shift, out_g)
    numpy_ref.apply(x, mean, scale, shift, out_r)
    _close(out_g, out_r.astype(np.float64), dtype)
    for got, ref in zip(cuda_gpu.backward_reduce(x, dy, mean), numpy_ref.backward_reduce(x, dy, mean)):
        _close(got, ref, dtype)
    rstd = 1.0 / np.sqrt(m2 / (view[1] * view[3]) + 1e-5)
    k1, k2, k3 = (rng.standard_normal((N, C)) for _ in range(3))
    cuda_gpu.backward_apply(x, dy, mean, rstd, k1, k2, k3, out_g)
    numpy_ref.backward_apply(x, dy, mean, rstd, k1, k2, k3, out_r)
    _close(out_g, out_r.astype(np.float64), dtype)


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("shape", [(7, 12), (2, 100)])
def test_rows_contract(shape, center, rng):
    x = (1.0 + rng.standard_normal(shape)).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    w, b = rng.standard_normal(shape[1]), rng.standard_normal(shape[1])
    out_g, out_r = np.empty_like(x), np.empty_like(x)
    got = cuda_gpu.rows_forward(x, w, b, 1e-5, center, out_g)
    ref = numpy_ref.rows_forward(x, w, b, 1e-5, center, out_r)
    _close(out_g, out_r.astype(np.float64), np.float32)
    for g, r in zip(got, ref):
        _close(g, r, np.float32)
    mean, rstd = ref
    got = cuda_gpu.rows_backward(x, dy, mean, rstd, w, center, out_g)
    ref = numpy_ref.rows_backward(x, dy, mean, rstd, w, center, out_r)
    _close(out_g, out_r.astype(np.float64), np.float32)
    for g, r in zip(got, ref):
        _close(g, r, np.float32)


def test_grouped_and_samples_contract(rng):
    groups, k, s, n = 2, 3, 5, 3
    x = rng.standard_normal((n * groups, k * s))
    w, b = rng.standard_normal(groups * k), rng.standard_normal(groups * k)
    out_g, out_r = np.empty_like(x), np.empty_like(x)
    for g, r in zip(cuda_gpu.grouped_forward(x, groups, s, w, b, 1e-5, out_g),
                    numpy_ref.grouped_forward(x, groups, s, w, b, 1e-5, out_r)):
        _close(g, r, np.float64)
    _close(out_g, out_r, np.float64)
    mean, var = numpy_ref.grouped_forward(x, groups, s, w, b, 1e-5, out_r)
    rstd = 1.0 / np.sqrt(var + 1e-5)
    dy = rng.standard_normal(x.shape)
    for g, r in zip(cuda_gpu.grouped_backward(x, dy, mean, rstd, groups, s, w, out_g),
                    numpy_ref.grouped_backward(x, dy, mean, rstd, groups, s, w, out_r)):
        _close(g, r, np.float64)
    _close(out_g, out_r, np.float64)
    x3 = rng.standard_normal((n, s, groups * k))
    o_g, o_r = np.empty_like(x3), np.empty_like(x3)
    for g, r in zip(cuda_gpu.samples_forward(x3, groups, w, b, 1e-5, o_g),
                    numpy_ref.samples_forward(x3, groups, w, b, 1e-5, o_r)):
        _close(g, r, np.float64)
    _close(o_g, o_r, np.float64)
