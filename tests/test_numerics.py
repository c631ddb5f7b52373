"""Numerical accuracy on hard inputs (the issue's spec tolerances; never widen them).

Every comparison is against the float64 oracle evaluated on the very same (rounded) input values.
"""

import numpy as np
import pytest

import fastnorm
import naive

SHAPES = [(1, (32, 4, 16, 16)), (-1, (32, 16, 16, 4)), (1, (20000, 3)), (-1, (64, 50, 3))]


def assert_abs_within(got, ref, tol, what):
    got64 = np.asarray(got, dtype=np.float64)
    assert np.all(np.isfinite(got64)), f"{what}: non-finite values"
    err = float(np.max(np.abs(got64 - ref)))
    assert err <= tol, f"{what}: max abs error {err:.3e} > {tol:.1e}"


def assert_rel_to_max_within(got, ref, tol, what):
    got64 = np.asarray(got, dtype=np.float64)
    assert np.all(np.isfinite(got64)), f"{what}: non-finite values"
    scale = float(np.max(np.abs(ref)))
    assert scale > 0
    err = float(np.max(np.abs(got64 - ref)))
    assert err <= tol * scale, f"{what}: max abs error {err:.3e} > {tol:.1e} * max|ref| ({scale:.3e})"


def check_train_forward_backward(x, axis, rng, tol=2e-3):
    """Training forward (functional and layer) within ``tol`` absolute, dx within ``tol`` of
    max|dx|, all against the float64 oracle on the same values."""
    ref = naive.batch_norm(x, training=True, axis=axis)
    y = fastnorm.batch_norm(x, training=True, axis=axis)
    assert y.dtype == x.dtype
    assert_abs_within(y, ref["y"], tol, "functional y")

    c = x.shape[naive.channel_axis(x.ndim, axis)]
    layer = fastnorm.BatchNorm(c, axis=axis, track_running_stats=False)
    y = layer(x)
    assert y.dtype == x.dtype
    assert_abs_within(y, ref["y"], tol, "layer y")
    dy = rng.standard_normal(x.shape).astype(x.dtype)
    dx = layer.backward(dy)
    assert dx.dtype == x.dtype
    ref_dx, ref_dw, ref_db = naive.batch_norm_backward(x, dy, ref["mean"], ref["var"], axis=axis)
    assert_rel_to_max_within(dx, ref_dx, tol, "dx")
    assert_rel_to_max_within(layer.grad_weight, ref_dw, tol, "grad_weight")
    assert_rel_to_max_within(layer.grad_bias, ref_db, tol, "grad_bias")


@pytest.mark.parametrize("axis, shape", SHAPES)
def test_large_offset_float32(backend, rng, axis, shape):
    """1e4 + 0.1 * N(0, 1) in float32: outputs within 2e-3, dx within 2e-3 of max|dx|."""
    x = (1e4 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    check_train_forward_backward(x, axis, rng)


@pytest.mark.parametrize("axis, shape", SHAPES[:2])
def test_large_offset_float32_eval(backend, rng, axis, shape):
    """Eval with running stats near 1e4: no folding of the mean into a float32 shift."""
    x = (1e4 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    c = x.shape[naive.channel_axis(x.ndim, axis)]
    rm = (1e4 + 0.01 * rng.standard_normal(c)).astype(np.float32)
    rv = rng.uniform(0.005, 0.02, c).astype(np.float32)
    w = rng.uniform(0.5, 1.5, c).astype(np.float32)
    b = rng.uniform(-1, 1, c).astype(np.float32)
    ref = naive.batch_norm(x, rm, rv, w, b, training=False, axis=axis)
    y = fastnorm.batch_norm(x, rm, rv, w, b, training=False, axis=axis)
    assert_abs_within(y, ref["y"], 2e-3, "eval y")

    layer = fastnorm.BatchNorm(c, axis=axis)
    layer.weight[...] = w
    layer.bias[...] = b
    layer.running_mean[...] = rm
    layer.running_var[...] = rv
    layer.eval()
    assert_abs_within(layer(x), ref["y"], 2e-3, "layer eval y")
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dx = layer.backward(dy)
    ref_dx, _, _ = naive.batch_norm_backward(x, dy, rm, rv, w, axis=axis, batch_stats=False)
    assert_rel_to_max_within(dx, ref_dx, 2e-3, "eval dx")


@pytest.mark.parametrize("axis, shape", SHAPES)
def test_huge_magnitude_float32(backend, rng, axis, shape):
    """1e30 * N(0, 1) in float32: squares overflow float32, outputs must stay finite and exact."""
    x = (1e30 * rng.standard_normal(shape)).astype(np.float32)
    assert np.all(np.isfinite(x))
    check_train_forward_backward(x, axis, rng)


@pytest.mark.parametrize("axis, shape", SHAPES)
@pytest.mark.parametrize("offset, scale", [(0.0, 1.0), (50.0, 1.0), (0.0, 2e4)],
                         ids=["std", "offset50", "scale2e4"])
def test_float16(backend, rng, axis, shape, offset, scale):
    """float16 in -> float16 out within 2e-3 of the oracle on the same float16 values; dx too.
    Draws are clipped to 3 sigma so |y| < 4 (float16 spacing there is 2**-9)."""
    z = np.clip(rng.standard_normal(shape), -3.0, 3.0)
    x = (offset + scale * z).astype(np.float16)
    assert np.all(np.isfinite(x))
    check_train_forward_backward(x, axis, rng)


@pytest.mark.parametrize("axis, shape", SHAPES[:2])
def test_float16_eval(backend, rng, axis, shape):
    z = np.clip(rng.standard_normal(shape), -3.0, 3.0)
    x = (20.0 + z).astype(np.float16)
    c = x.shape[naive.channel_axis(x.ndim, axis)]
    rm = (20.0 + 0.05 * rng.standard_normal(c)).astype(np.float32)
    rv = rng.uniform(0.9, 1.1, c).astype(np.float32)
    ref = naive.batch_norm(x, rm, rv, training=False, axis=axis)
    y = fastnorm.batch_norm(x, rm, rv, training=False, axis=axis)
    assert y.dtype == np.float16
    assert_abs_within(y, ref["y"], 2e-3, "float16 eval y")


def test_constant_channel_at_offset(backend):
    """A channel of identical float32 values far from zero: mean exact, var 0, y == bias."""
    x = np.full((10000, 2), 1e4 + 0.1, dtype=np.float32)
    x[:, 1] = np.float32(-3.3)
    x[::2, 1] = np.float32(3.3)
    b = np.array([0.25, -0.5], dtype=np.float32)
    ref = naive.batch_norm(x, None, None, None, b, training=True, axis=1)
    y = fastnorm.batch_norm(x, None, None, None, b, training=True, axis=1)
    assert_abs_within(y, ref["y"], 2e-3, "constant channel y")
    np.testing.assert_allclose(y[:, 0], 0.25, atol=2e-3)


BIG = [
    (1, (4096, 1, 4096), 1.0),
    (-1, (4096, 4096, 1), 1.0),
    (-1, (2**24, 1), 0.1),
]


@pytest.mark.parametrize("axis, shape, momentum", BIG)
def test_running_stats_of_2_24_values(backend, rng, axis, shape, momentum):
    """A channel with 2**24 float32 values (3 + N(0, 1)): running mean (and var) to 1e-5
    relative; naive float32 accumulation stalls at 2**24 and fails this."""
    x = rng.standard_normal(shape, dtype=np.float32)
    x += np.float32(3.0)
    rm = np.full(1, 0.5, dtype=np.float32)
    rv = np.full(1, 2.0, dtype=np.float32)
    mean, var, n = naive.batch_stats(x, axis)
    assert n == 2**24
    exp_rm = (1 - momentum) * 0.5 + momentum * mean
    exp_rv = (1 - momentum) * 2.0 + momentum * var * n / (n - 1)
    y = fastnorm.batch_norm(x, rm, rv, training=True, momentum=momentum, axis=axis)
    np.testing.assert_allclose(rm.astype(np.float64), exp_rm, rtol=1e-5)
    np.testing.assert_allclose(rv.astype(np.float64), exp_rv, rtol=1e-5)
    # the output is normalized with the same statistics: mean 0, std sqrt(var / (var + eps))
    assert y.dtype == np.float32 and y.shape == shape
    assert abs(float(np.mean(y, dtype=np.float64))) < 1e-4
    assert abs(float(np.std(y, dtype=np.float64)) - np.sqrt(var[0] / (var[0] + 1e-5))) < 1e-4
