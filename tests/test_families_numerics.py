"""Numerical accuracy of InstanceNorm, GroupNorm, LayerNorm and RMSNorm on hard inputs, forward
AND backward, every family and layout (the issue's spec tolerances; never widen them).

Every comparison is against the float64 oracle evaluated on the very same (rounded) input values;
nothing here is compared with PyTorch (whose GroupNorm is off by more than 100 on channels-last
float32 data at offset 1e4)."""

import naive
import numpy as np
import pytest
from conftest import (
    assert_abs_within,
    assert_rel_to_max_within,
    assert_stats_close,
    call_functional,
    make_family_layer,
    make_spec,
    param_dtype,
    reference_backward,
    reference_forward,
)

import fastnorm

# (family, axis, shape, extra): extra = num_groups (group) / number of trailing axes (layer, rms)
CASES = [
    ("instance", 1, (8, 4, 32, 32), None),
    ("instance", -1, (8, 32, 32, 4), None),
    ("instance", 1, (4, 3, 3000), None),
    ("instance", -1, (4, 3000, 3), None),
    ("group", 1, (8, 8, 16, 16), 4),
    ("group", -1, (8, 16, 16, 8), 4),
    ("group", -1, (4, 8, 8, 64), 8),
    ("group", 1, (256, 64), 8),
    ("group", -1, (4, 500, 6), 3),
    ("layer", None, (64, 1000), 1),
    ("layer", None, (8, 16, 64), 2),
    ("layer", None, (4, 2, 3, 500), 3),
    ("rms", None, (64, 1000), 1),
    ("rms", None, (8, 16, 64), 2),
]
IDS = [f"{f}-{a}-{'x'.join(map(str, s))}" for f, a, s, _ in CASES]


def _spec(family, shape, axis, dtype, rng, extra, affine):
    kw = {}
    if family == "group":
        kw["num_groups"] = extra
    elif family in ("layer", "rms"):
        kw["k"] = extra
    return make_spec(family, shape, axis, dtype, rng, affine=affine, **kw)


def check_forward_backward(family, axis, x, spec, rng, tol=2e-3):
    """Functional and layer forward within ``tol`` absolute; dx, grad_weight and grad_bias
    within ``tol`` of their largest magnitude -- all against the oracle on the same values."""
    ref_y = reference_forward(family, x, spec, axis)
    y = call_functional(family, x, spec, axis)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert_abs_within(y, ref_y, tol, "functional y")

    layer = make_family_layer(family, x.shape, axis, param_dtype(x.dtype), spec)
    y = layer(x)
    assert y.dtype == x.dtype
    assert_abs_within(y, ref_y, tol, "layer y")
    dy = rng.standard_normal(x.shape).astype(x.dtype)
    dx = layer.backward(dy)
    assert dx.dtype == x.dtype and dx.shape == x.shape
    ref_dx, ref_dw, ref_db = reference_backward(family, x, dy, spec, axis)
    assert_rel_to_max_within(dx, ref_dx, tol, "dx")
    if "weight" in spec:
        assert_rel_to_max_within(layer.grad_weight, ref_dw, tol, "grad_weight")
    if "bias" in spec:
        assert_rel_to_max_within(layer.grad_bias, ref_db, tol, "grad_bias")


@pytest.mark.parametrize("family, axis, shape, extra", CASES, ids=IDS)
def test_large_offset_float32(backend, rng, family, axis, shape, extra):
    """1e4 + 0.1 * N(0, 1) in float32 (for RMSNorm not special, tested all the same)."""
    x = (1e4 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    spec = _spec(family, shape, axis, np.float32, rng, extra, affine=True)
    check_forward_backward(family, axis, x, spec, rng)


@pytest.mark.parametrize("family, axis, shape, extra", CASES, ids=IDS)
def test_huge_magnitude_float32(backend, rng, family, axis, shape, extra):
    """1e30 * N(0, 1) in float32: squares overflow float32; outputs finite and accurate."""
    x = (1e30 * rng.standard_normal(shape)).astype(np.float32)
    assert np.all(np.isfinite(x))
    spec = _spec(family, shape, axis, np.float32, rng, extra, affine=True)
    check_forward_backward(family, axis, x, spec, rng)



@pytest.mark.parametrize("family, axis, shape, extra", CASES, ids=IDS)
def test_tiny_magnitude_float32_no_eps(backend, rng, family, axis, shape, extra):
    """1e-24 * N(0, 1) in float32 with eps=0: the squared deviations (1e-48) underflow float32
    to zero, so a float32 sum of squares would lose them; the output must still be xhat."""
    x = (1e-24 * rng.standard_normal(shape)).astype(np.float32)
    spec = _spec(family, shape, axis, np.float32, rng, extra, affine=True)
    spec["eps"] = 0.0
    check_forward_backward(family, axis, x, spec, rng)

@pytest.mark.parametrize("family, axis, shape, extra", CASES, ids=IDS)
@pytest.mark.parametrize("offset, scale", [(0.0, 1.0), (50.0, 1.0), (0.0, 2e4)],
                         ids=["std", "offset50", "scale2e4"])
def test_float16(backend, rng, family, axis, shape, extra, offset, scale):
    """float16 in -> float16 out within 2e-3 of the oracle on the same float16 values; dx within
    2e-3 of max|dx| (at scale 2e4 dx is in float16's subnormal range: error relative to the
    largest magnitude, as in conftest.assert_grad_close).  Draws clipped to 3 sigma, no affine,
    so |y| < 4 where float16's spacing is 2**-9."""
    z = np.clip(rng.standard_normal(shape), -3.0, 3.0)
    x = (offset + scale * z).astype(np.float16)
    assert np.all(np.isfinite(x))
    spec = _spec(family, shape, axis, np.float16, rng, extra, affine=False)
    check_forward_backward(family, axis, x, spec, rng)


@pytest.mark.parametrize("family, axis, shape, extra", [c for c in CASES if c[0] == "rms"],
                         ids=[i for i in IDS if i.startswith("rms")])
def test_rms_float16_default_eps_small_values(backend, rng, family, axis, shape, extra):
    """float16 RMSNorm with eps=None (2**-10) on values of rms ~ 0.03: eps is a large part of
    the denominator, so the right eps matters at the 2e-3 level."""
    x = (0.03 * np.clip(rng.standard_normal(shape), -3, 3)).astype(np.float16)
    spec = _spec(family, shape, axis, np.float16, rng, extra, affine=False)
    check_forward_backward(family, axis, x, spec, rng)


@pytest.mark.parametrize("family, axis, shape", [("layer", None, (2**22,)),
                                                 ("rms", None, (2**22,)),
                                                 ("layer", None, (2, 2**21))])
def test_long_reduction(backend, rng, family, axis, shape):
    """A row of 2**22 (or 2 rows of 2**21) float32 values at 1e4 + 0.1 * N(0, 1): outputs
    within 2e-3 need the mean to 1e-5 relative (naive float32 accumulation stalls)."""
    x = rng.standard_normal(shape, dtype=np.float32)
    x *= np.float32(0.1)
    x += np.float32(1e4)
    spec = make_spec(family, shape, axis, np.float32, rng, affine=True, k=1)
    check_forward_backward(family, axis, x, spec, rng)


def test_channels_last_group_norm_at_offset(backend, rng):
    """The case PyTorch gets wrong (errors > 100): NHWC GroupNorm at 1e4 + 0.1 * N(0, 1)."""
    shape = (8, 16, 16, 64)
    x = (1e4 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    w = rng.uniform(0.5, 1.5, 64).astype(np.float32)
    b = rng.standard_normal(64).astype(np.float32)
    ref = naive.group_norm(x, 8, w, b, axis=-1)["y"]
    assert_abs_within(fastnorm.group_norm(x, 8, w, b, axis=-1), ref, 2e-3, "group_norm NHWC")
    layer = fastnorm.GroupNorm(8, 64, axis=-1)
    layer.weight[...] = w
    layer.bias[...] = b
    assert_abs_within(layer(x), ref, 2e-3, "GroupNorm NHWC")
    dy = rng.standard_normal(shape).astype(np.float32)
    ref_dx, ref_dw, ref_db = naive.group_norm_backward(x, dy, 8, w, axis=-1)
    assert_rel_to_max_within(layer.backward(dy), ref_dx, 2e-3, "dx")
    assert_rel_to_max_within(layer.grad_weight, ref_dw, 2e-3, "grad_weight")
    assert_rel_to_max_within(layer.grad_bias, ref_db, 2e-3, "grad_bias")


@pytest.mark.parametrize("axis, shape", [(1, (8, 4, 16, 16)), (-1, (8, 16, 16, 4))])
def test_instance_norm_running_stats_at_offset(backend, rng, axis, shape):
    """Running statistics of data at 1e4 + 0.1 * N(0, 1): running_var (~0.01 * momentum) to
    1e-5 relative, which E[x^2] - E[x]^2 in float32 cannot give."""
    x = (1e4 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    rm = np.zeros(4, np.float32)
    rv = np.zeros(4, np.float32)
    ref = naive.instance_norm(x, rm, rv, momentum=0.5, axis=axis)
    y = fastnorm.instance_norm(x, rm, rv, momentum=0.5, axis=axis)
    assert_abs_within(y, ref["y"], 2e-3, "y")
    assert_stats_close(rm, ref["running_mean"])
    assert_stats_close(rv, ref["running_var"])


@pytest.mark.parametrize("axis, shape", [(1, (8, 4, 16, 16)), (-1, (8, 16, 16, 4))])
def test_instance_norm_eval_at_offset(backend, rng, axis, shape):
    """Eval with running stats near 1e4: forward and dx within the spec tolerance."""
    x = (1e4 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    rm = (1e4 + 0.01 * rng.standard_normal(4)).astype(np.float32)
    rv = rng.uniform(0.005, 0.02, 4).astype(np.float32)
    w = rng.uniform(0.5, 1.5, 4).astype(np.float32)
    b = rng.uniform(-1, 1, 4).astype(np.float32)
    ref = naive.instance_norm(x, rm, rv, w, b, use_input_stats=False, axis=axis)
    y = fastnorm.instance_norm(x, rm, rv, w, b, use_input_stats=False, axis=axis)
    assert_abs_within(y, ref["y"], 2e-3, "functional eval y")
    # float64 running stats (not float32 numbers: the mean must not be rounded to float32
    # before subtracting) with float32 data; 32 channels
    shape32 = (2, 32, 8, 8) if axis == 1 else (2, 8, 8, 32)
    x32 = (1e4 + 0.1 * rng.standard_normal(shape32)).astype(np.float32)
    rm64 = 1e4 + 0.01 * rng.standard_normal(32)
    rv64 = rng.uniform(0.005, 0.02, 32)
    ref64 = naive.instance_norm(x32, rm64, rv64, use_input_stats=False, axis=axis)
    y = fastnorm.instance_norm(x32, rm64, rv64, use_input_stats=False, axis=axis)
    assert y.dtype == np.float32
    assert_abs_within(y, ref64["y"], 2e-3, "functional eval y, float64 running stats")
    layer = fastnorm.InstanceNorm2d(4, affine=True, track_running_stats=True, axis=axis)
    layer.weight[...] = w
    layer.bias[...] = b
    layer.running_mean[...] = rm
    layer.running_var[...] = rv
    layer.eval()
    assert_abs_within(layer(x), ref["y"], 2e-3, "layer eval y")
    dy = rng.standard_normal(shape).astype(np.float32)
    ref_dx, ref_dw, ref_db = naive.instance_norm_backward(
        x, dy, ref["mean"], ref["var"], w, axis=axis, input_stats=False)
    assert_rel_to_max_within(layer.backward(dy), ref_dx, 2e-3, "eval dx")
    assert_rel_to_max_within(layer.grad_weight, ref_dw, 2e-3, "eval grad_weight")
    assert_rel_to_max_within(layer.grad_bias, ref_db, 2e-3, "eval grad_bias")


@pytest.mark.parametrize("family, axis", [("instance", 1), ("instance", -1), ("group", 1),
                                          ("group", -1), ("layer", None)])
def test_constant_group_at_offset(backend, family, axis):
    """Identical float32 values far from zero in a normalization group: var 0, y == bias
    exactly to the tolerance (no spurious variance from rounding)."""
    shape = (2, 4, 300) if axis in (1, None) else (2, 300, 4)
    x = np.full(shape, 1e4 + 0.1, dtype=np.float32)
    b = np.array([0.25, -0.5, 1.0, 2.0], np.float32)
    if family == "layer":
        x = x.reshape(8, 300)
        bias = np.full(300, 0.25, np.float32)
        y = fastnorm.layer_norm(x, 300, None, bias)
        assert_abs_within(y, np.full(x.shape, 0.25), 2e-3, "y")
        return
    if family == "instance":
        y = fastnorm.instance_norm(x, bias=b, axis=axis)
    else:
        y = fastnorm.group_norm(x, 2, bias=b, axis=axis)
    exp = np.broadcast_to(naive.per_channel(b, 3, axis), shape)
    assert_abs_within(y, exp, 2e-3, "y")


@pytest.mark.parametrize("axis, shape", [(1, (8, 4, 16, 16)), (-1, (8, 16, 16, 4)),
                                         (-1, (4, 300, 6))])
def test_instance_norm_float16_eval(backend, rng, axis, shape):
    """float16 data normalized with float32 running stats near 20 (use_input_stats=False and
    the eval layer): the running mean is not a float16 number, output within 2e-3; dx too."""
    z = np.clip(rng.standard_normal(shape), -3.0, 3.0)
    x = (20.0 + z).astype(np.float16)
    c = shape[naive.channel_axis(len(shape), axis)]
    rm = (20.0 + 0.05 * rng.standard_normal(c)).astype(np.float32)
    rv = rng.uniform(0.9, 1.1, c).astype(np.float32)
    ref = naive.instance_norm(x, rm, rv, use_input_stats=False, axis=axis)
    y = fastnorm.instance_norm(x, rm, rv, use_input_stats=False, axis=axis)
    assert y.dtype == np.float16
    assert_abs_within(y, ref["y"], 2e-3, "functional float16 eval y")
    layer = fastnorm.InstanceNorm(c, track_running_stats=True, axis=axis)
    layer.running_mean[...] = rm
    layer.running_var[...] = rv
    layer.eval()
    assert_abs_within(layer(x), ref["y"], 2e-3, "layer float16 eval y")
    dy = rng.standard_normal(shape).astype(np.float16)
    ref_dx, _, _ = naive.instance_norm_backward(x, dy, ref["mean"], ref["var"], axis=axis,
                                                input_stats=False)
    assert_rel_to_max_within(layer.backward(dy), ref_dx, 2e-3, "float16 eval dx")


@pytest.mark.parametrize("family, axis, shape, extra", [c for c in CASES if c[2][-1] >= 500],
                         ids=[i for c, i in zip(CASES, IDS) if c[2][-1] >= 500])
def test_outlier_at_block_start(backend, rng, family, axis, shape, extra):
    """Offset data whose first value in every 2048-value block is a far outlier: the Cython
    kernels shift each block's sums by its first value, so this is their worst case."""
    x = 1e4 + 0.1 * rng.standard_normal(shape)
    flat = x.reshape(-1)
    flat[::2048] += 1e3
    x = x.astype(np.float32)
    spec = _spec(family, shape, axis, np.float32, rng, extra, affine=True)
    check_forward_backward(family, axis, x, spec, rng)
