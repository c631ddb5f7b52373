"""Identities between the families, checked on fastnorm alone (forward and, via the layers,
backward): each side is computed by a different code path."""

import naive
import numpy as np
import pytest
from conftest import (
    FLOAT_DTYPES,
    assert_grad_close,
    assert_output_close,
    call_functional,
    coarser,
    grad_scales,
    make_family_layer,
    make_spec,
    param_dtype,
    random_input,
    reference_backward,
)
from hypothesis import given
from hypothesis import strategies as st

import fastnorm

# Same-dtype identities: the two results are both within the output tolerance of the float64
# truth, so they agree to twice it.
_TOL = {np.dtype(np.float16): (2e-3, 4e-3), np.dtype(np.float32): (2e-5, 2e-5),
        np.dtype(np.float64): (1e-12, 1e-12)}


def assert_same(a, b, dtype, what=""):
    dtype = np.dtype(dtype)
    assert a.dtype == dtype and b.dtype == dtype, (a.dtype, b.dtype)
    assert a.shape == b.shape, (a.shape, b.shape)
    rtol, atol = _TOL[dtype]
    np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64), rtol=rtol, atol=atol,
                               err_msg=what)


@st.composite
def cf_shapes(draw, min_ndim=2):
    ndim = draw(st.integers(min_ndim, 5))
    n = draw(st.integers(1, 3))
    c = draw(st.integers(1, 6))
    spatial = draw(st.lists(st.integers(1, 4), min_size=ndim - 2, max_size=ndim - 2))
    if c * int(np.prod(spatial)) < 2:
        c = 2
    if min_ndim == 3 and int(np.prod(spatial)) < 2:
        spatial[0] = 2
    return (n, c, *spatial)


@given(shape=cf_shapes(), dtype=st.sampled_from(FLOAT_DTYPES), seed=st.integers(0, 2**32 - 1),
       eps=st.sampled_from([1e-5, 1e-2]))
def test_group_norm_one_group_is_layer_norm(backend, shape, dtype, seed, eps):
    """group_norm(x, 1) == layer_norm over all non-batch axes (channels-first, no affine)."""
    x = random_input(np.random.default_rng(seed), shape, dtype, offset=1.0, scale=2.0)
    g = fastnorm.group_norm(x, 1, eps=eps)
    ln = fastnorm.layer_norm(x, shape[1:], eps=eps)
    assert_same(g, ln, dtype, str(shape))


@given(shape=cf_shapes(min_ndim=3), dtype=st.sampled_from(FLOAT_DTYPES),
       axis=st.sampled_from([1, -1]), seed=st.integers(0, 2**32 - 1))
def test_group_norm_c_groups_is_instance_norm(backend, shape, dtype, axis, seed):
    """group_norm with C groups == instance_norm (both layouts, with affine)."""
    rng = np.random.default_rng(seed)
    if axis == -1:
        shape = (shape[0], *shape[2:], shape[1])
    x = random_input(rng, shape, dtype, offset=-1.0, scale=3.0)
    c = shape[naive.channel_axis(len(shape), axis)]
    pdt = np.float32 if dtype == np.float16 else dtype
    w = rng.uniform(0.5, 1.5, c).astype(pdt)
    b = rng.standard_normal(c).astype(pdt)
    g = fastnorm.group_norm(x, c, w, b, axis=axis)
    i = fastnorm.instance_norm(x, None, None, w, b, axis=axis)
    assert_same(g, i, dtype, str(shape))


@pytest.mark.parametrize("shape, groups", [((3, 6, 5), 3), ((2, 8, 3, 4), 4), ((2, 6, 2, 3, 2), 2),
                                           ((5, 6), 3), ((4, 4, 7), 1), ((4, 4, 7), 4)])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_group_norm_is_layer_norm_of_reshaped_groups(backend, rng, shape, groups, dtype):
    """Channels-first: (N, C, *S) -> (N, G, C/G * S) and layer norm over the last axis."""
    x = random_input(rng, shape, dtype, offset=2.0)
    g = fastnorm.group_norm(x, groups)
    ln = fastnorm.layer_norm(x.reshape(shape[0], groups, -1), x.size // (shape[0] * groups))
    assert_same(g, ln.reshape(shape), dtype)


@given(shape=cf_shapes(), dtype=st.sampled_from(FLOAT_DTYPES), seed=st.integers(0, 2**32 - 1),
       family=st.sampled_from(["instance", "group"]))
def test_channels_last_is_transposed_channels_first(backend, shape, dtype, seed, family):
    """Channels-last result == the channels-first result moved to the last axis (functional
    and layer); the layers' gradients in both layouts match the channels-first oracle."""
    rng = np.random.default_rng(seed)
    if family == "instance" and int(np.prod(shape[2:])) < 2:
        shape = shape[:2] + (2,) + shape[3:]  # ndim >= 3 with more than one spatial element
    c = shape[1]
    groups = max([g for g in range(1, c) if c % g == 0] or [1])
    x = random_input(rng, shape, dtype, offset=0.5, scale=2.0)
    dy = random_input(rng, shape, dtype)
    xl = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    dyl = np.ascontiguousarray(np.moveaxis(dy, 1, -1))
    spec = make_spec(family, shape, 1, dtype, rng, num_groups=groups)
    y1 = call_functional(family, x, spec, axis=1)
    y2 = call_functional(family, xl, spec, axis=-1)
    assert_same(y2, np.moveaxis(y1, 1, -1), dtype, f"{family} {shape}")
    l1 = make_family_layer(family, shape, 1, param_dtype(dtype), spec)
    l2 = make_family_layer(family, xl.shape, -1, param_dtype(dtype), spec)
    assert_same(l2(xl), np.moveaxis(l1(x), 1, -1), dtype, "layer y")
    dx1, dx2 = l1.backward(dy), l2.backward(dyl)
    ref_dx, ref_dw, ref_db = reference_backward(family, x, dy, spec, 1)
    dx_terms, dw_terms, db_terms = grad_scales(family, x, dy, spec, 1)
    gdt = coarser(dtype, param_dtype(dtype))
    for dx, layer in ((dx1, l1), (np.moveaxis(dx2, -1, 1), l2)):
        assert dx.dtype == np.dtype(dtype)
        assert_grad_close(dx, ref_dx, dtype, scale=max(dx_terms, np.max(np.abs(ref_dx))))
        assert_grad_close(layer.grad_weight, ref_dw, gdt, scale=dw_terms)
        assert_grad_close(layer.grad_bias, ref_db, gdt, scale=db_terms)


@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=4),
       seed=st.integers(0, 2**32 - 1), eps=st.sampled_from([1e-6, 1e-3]))
def test_rms_norm_of_centered_rows_is_layer_norm(backend, shape, seed, eps):
    """For rows with mean 0, mean(x**2) is the variance: rms_norm == layer_norm (same eps),
    with weight; checked in float64 so the centering is exact to rounding."""
    rng = np.random.default_rng(seed)
    shape = tuple(shape)
    if shape[-1] < 2:
        shape = shape[:-1] + (2,)
    x = rng.standard_normal(shape) * 2.0
    x -= np.mean(x, axis=-1, keepdims=True)
    w = rng.uniform(0.5, 1.5, shape[-1])
    r = fastnorm.rms_norm(x, shape[-1], w, eps=eps)
    ln = fastnorm.layer_norm(x, shape[-1], w, None, eps=eps)
    np.testing.assert_allclose(r, ln, rtol=1e-10, atol=1e-10)


@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=4),
       dtype=st.sampled_from(FLOAT_DTYPES), seed=st.integers(0, 2**32 - 1),
       offset=st.floats(-5.0, 5.0))
def test_rms_norm_is_uncentered_layer_norm_formula(backend, shape, dtype, seed, offset):
    """rms_norm(x) == x / sqrt(mean(x**2) + eps) * w: the layer-norm formula without the
    mean, written out here (not via the oracle)."""
    rng = np.random.default_rng(seed)
    x = random_input(rng, tuple(shape), dtype, offset=offset)
    w = rng.uniform(0.5, 1.5, shape[-1]).astype(np.float32 if dtype == np.float16 else dtype)
    x64 = x.astype(np.float64)
    eps = float(np.finfo(np.float64 if dtype == np.float64 else np.float32).eps)  # compute dtype's
    exp = x64 / np.sqrt(np.mean(x64**2, axis=-1, keepdims=True) + eps) * w
    assert_output_close(fastnorm.rms_norm(x, shape[-1], w), exp, dtype)
    # the layer-norm formula with the mean put back would differ whenever the mean is not 0
    ln = fastnorm.layer_norm(x, shape[-1], w)
    cen = x64 - np.mean(x64, axis=-1, keepdims=True)
    assert_output_close(ln, cen / np.sqrt(np.mean(cen**2, axis=-1, keepdims=True) + 1e-5) * w,
                        dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_layer_norm_of_1d_and_batched_agree(backend, rng, dtype):
    """A single row (x.shape == normalized_shape) equals that row of a batched call."""
    x = random_input(rng, (4, 3, 5), dtype, offset=1.0)
    full = fastnorm.layer_norm(x, (3, 5))
    for i in range(4):
        np.testing.assert_array_equal(fastnorm.layer_norm(x[i], (3, 5)), full[i])
    full = fastnorm.rms_norm(x, (3, 5))
    for i in range(4):
        np.testing.assert_array_equal(fastnorm.rms_norm(x[i], (3, 5)), full[i])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_instance_norm_is_batch_norm_per_sample(backend, rng, dtype):
    """instance_norm of (N, C, *S) == batch_norm (training) of each sample seen as a batch of
    one (1, C, *S), running stats included (batch mean over n of the per-sample updates)."""
    x = random_input(rng, (3, 4, 5, 2), dtype, offset=1.0)
    rm = np.zeros(4, dtype)
    rv = np.ones(4, dtype)
    y = fastnorm.instance_norm(x, rm, rv, momentum=0.5)
    rms, rvs = [], []
    for i in range(3):
        brm, brv = np.zeros(4, dtype), np.ones(4, dtype)
        yi = fastnorm.batch_norm(x[i:i + 1], brm, brv, training=True, momentum=0.5)
        assert_same(y[i:i + 1], yi, dtype)
        rms.append(brm)
        rvs.append(brv)
    assert_same(rm, np.mean(rms, axis=0).astype(dtype), dtype)
    assert_same(rv, np.mean(rvs, axis=0).astype(dtype), dtype)
