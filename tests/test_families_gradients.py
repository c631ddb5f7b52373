"""Layer ``backward`` of InstanceNorm, GroupNorm, LayerNorm and RMSNorm: against central finite
differences (float64) and the analytic oracle (which is itself checked against finite
differences of its own forward)."""

import naive
import numpy as np
import pytest
from conftest import (
    FAMILIES,
    FLOAT_DTYPES,
    assert_grad_close,
    channels_last_shape,
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
from gradcheck import assert_fd_close, central_differences  # noqa: E402



# (family, axis, shape, extra) -- extra: num_groups for group norm, trailing k for layer/rms
FD_CASES = [
    ("instance", 1, (2, 3, 5), None),
    ("instance", 1, (2, 2, 2, 3), None),
    ("instance", -1, (2, 5, 3), None),
    ("instance", -1, (2, 2, 3, 2), None),
    ("group", 1, (2, 4, 3), 2),
    ("group", 1, (2, 6, 2, 2), 3),
    ("group", -1, (2, 3, 4), 2),
    ("group", -1, (2, 2, 2, 6), 3),
    ("group", 1, (3, 4), 2),
    ("group", 1, (2, 3, 3), 1),
    ("group", -1, (2, 3, 3), 3),
    ("layer", None, (3, 5), 1),
    ("layer", None, (2, 3, 4), 2),
    ("layer", None, (2, 2, 3, 2), 1),
    ("layer", None, (6,), 1),
    ("rms", None, (3, 5), 1),
    ("rms", None, (2, 3, 4), 2),
    ("rms", None, (6,), 1),
]


def _ids(cases):
    return [f"{f}-{a}-{'x'.join(map(str, s))}-{e}" for f, a, s, e in cases]


def _spec(family, shape, axis, rng, affine, extra, eps=1e-3):
    if family == "group":
        return make_spec(family, shape, axis, np.float64, rng, affine, num_groups=extra, eps=eps)
    if family in ("layer", "rms"):
        return make_spec(family, shape, axis, np.float64, rng, affine, k=extra, eps=eps)
    return make_spec(family, shape, axis, np.float64, rng, affine, eps=eps)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("family, axis, shape, extra", FD_CASES, ids=_ids(FD_CASES))
def test_backward_matches_finite_differences(backend, rng, family, axis, shape, extra, affine):
    x = random_input(rng, shape, np.float64, offset=0.7, scale=1.3)
    g = rng.standard_normal(shape)
    spec = _spec(family, shape, axis, rng, affine, extra)
    layer = make_family_layer(family, shape, axis, np.float64, spec)

    def loss():
        return float(np.sum(layer(x) * g))

    fd_x = central_differences(loss, x)
    if affine:
        fd_w = central_differences(loss, layer.weight)
        if layer.bias is not None:
            fd_b = central_differences(loss, layer.bias)

    y = layer(x)
    assert y.dtype == np.float64 and y.shape == shape
    dx = layer.backward(g)
    assert isinstance(dx, np.ndarray) and dx.dtype == np.float64 and dx.shape == shape
    assert_fd_close(dx, fd_x, "dx")
    if affine:
        assert_fd_close(layer.grad_weight, fd_w, "grad_weight")
        if family == "rms":
            assert layer.bias is None and layer.grad_bias is None
        else:
            assert_fd_close(layer.grad_bias, fd_b, "grad_bias")
    else:
        assert layer.weight is None and layer.bias is None
        assert layer.grad_weight is None and layer.grad_bias is None


@pytest.mark.parametrize("axis, shape", [(1, (2, 3, 5)), (-1, (2, 2, 3, 3))])
@pytest.mark.parametrize("affine", [True, False])
def test_instance_norm_eval_running_stats_backward_fd(backend, rng, axis, shape, affine):
    """Eval with tracked running stats: constant statistics, dx = dy * w / sqrt(rv + eps)."""
    c = shape[naive.channel_axis(len(shape), axis)]
    layer = getattr(fastnorm, {3: "InstanceNorm1d", 4: "InstanceNorm2d"}[len(shape)])(
        c, eps=1e-3, affine=affine, track_running_stats=True, axis=axis, dtype=np.float64)
    if affine:
        layer.weight[...] = rng.uniform(0.5, 1.5, c)
        layer.bias[...] = rng.standard_normal(c)
    layer.running_mean[...] = rng.standard_normal(c)
    layer.running_var[...] = rng.uniform(0.5, 2.0, c)
    layer.eval()
    x = random_input(rng, shape, np.float64, offset=0.3)
    g = rng.standard_normal(shape)

    def loss():
        return float(np.sum(layer(x) * g))

    fd_x = central_differences(loss, x)
    layer(x)
    dx = layer.backward(g)
    assert_fd_close(dx, fd_x, "dx")
    mean = np.broadcast_to(layer.running_mean, (shape[0], c))
    var = np.broadcast_to(layer.running_var, (shape[0], c))
    ref_dx, ref_dw, ref_db = naive.instance_norm_backward(
        x, g, mean, var, layer.weight, eps=1e-3, axis=axis, input_stats=False)
    assert_grad_close(dx, ref_dx, np.float64)
    if affine:
        assert_fd_close(layer.grad_weight, central_differences(loss, layer.weight), "grad_weight")
        assert_fd_close(layer.grad_bias, central_differences(loss, layer.bias), "grad_bias")
        assert_grad_close(layer.grad_weight, ref_dw, np.float64)
        assert_grad_close(layer.grad_bias, ref_db, np.float64)


@pytest.mark.parametrize("family, axis, shape, extra", FD_CASES, ids=_ids(FD_CASES))
def test_oracle_backward_matches_finite_differences(rng, family, axis, shape, extra):
    """The oracle's analytic backward against finite differences of its own forward."""
    x = random_input(rng, shape, np.float64, offset=-0.4)
    g = rng.standard_normal(shape)
    spec = _spec(family, shape, axis, rng, True, extra)

    def y_of(xx, s):
        if family == "instance":
            return naive.instance_norm(xx, None, None, s["weight"], s["bias"], eps=1e-3,
                                       axis=axis)["y"]
        if family == "group":
            return naive.group_norm(xx, extra, s["weight"], s["bias"], eps=1e-3, axis=axis)["y"]
        if family == "layer":
            return naive.layer_norm(xx, s["normalized_shape"], s["weight"], s["bias"],
                                    eps=1e-3)["y"]
        return naive.rms_norm(xx, s["normalized_shape"], s["weight"], eps=1e-3)["y"]

    def loss():
        return float(np.sum(y_of(x, spec) * g))

    fd_x = central_differences(loss, x)
    fd_w = central_differences(loss, spec["weight"])
    dx, dw, db = reference_backward(family, x, g, spec, axis)
    assert_fd_close(dx, fd_x, "dx")
    assert_fd_close(dw, fd_w, "dweight")
    if family == "rms":
        assert db is None
    else:
        assert_fd_close(db, central_differences(loss, spec["bias"]), "dbias")


def test_oracle_instance_backward_running_stats_fd(rng):
    x = random_input(rng, (2, 3, 4), np.float64)
    g = rng.standard_normal(x.shape)
    rm, rv = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    w, b = rng.uniform(0.5, 1.5, 3), rng.standard_normal(3)

    def loss():
        return float(np.sum(naive.instance_norm(x, rm, rv, w, b, use_input_stats=False,
                                                eps=1e-3)["y"] * g))

    dx, dw, db = naive.instance_norm_backward(x, g, np.broadcast_to(rm, (2, 3)),
                                              np.broadcast_to(rv, (2, 3)), w, eps=1e-3,
                                              input_stats=False)
    assert_fd_close(dx, central_differences(loss, x), "dx")
    assert_fd_close(dw, central_differences(loss, w), "dweight")
    assert_fd_close(db, central_differences(loss, b), "dbias")


# ------------------------------------------------------------ all dtypes against the oracle


@st.composite
def family_grad_cases(draw):
    family = draw(st.sampled_from(FAMILIES))
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    affine = draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    offset = draw(st.floats(-3.0, 3.0))
    if family in ("instance", "group"):
        ndim = draw(st.integers(3 if family == "instance" else 2, 5))
        axis = draw(st.sampled_from([1, -1]))
        n = draw(st.integers(1, 3))
        groups = draw(st.integers(1, 3))
        per = 1 if family == "instance" else draw(st.integers(1, 3))
        spatial = draw(st.lists(st.integers(1, 4), min_size=ndim - 2, max_size=ndim - 2))
        if per * int(np.prod(spatial)) < 2:
            if spatial:
                spatial[0] = 2
            else:
                per = 2
        shape = (n, groups * per, *spatial)
        shape = shape if axis == 1 else channels_last_shape(shape)
        extra = groups if family == "group" else None
    else:
        axis = None
        ndim = draw(st.integers(1, 4))
        shape = draw(st.lists(st.integers(1, 5), min_size=ndim, max_size=ndim))
        extra = draw(st.integers(1, ndim))
        if int(np.prod(shape[ndim - extra:])) < 2:
            shape[-1] = 2
        shape = tuple(shape)
    return dict(family=family, dtype=dtype, affine=affine, seed=seed, offset=offset,
                axis=axis, shape=shape, extra=extra)


@given(case=family_grad_cases())
def test_backward_matches_oracle(backend, case):
    """Every family, layout and dtype: dx, grad_weight, grad_bias against the oracle, with the
    error measured against the magnitude of the terms each gradient sums."""
    rng = np.random.default_rng(case["seed"])
    family, dt, axis, shape = case["family"], case["dtype"], case["axis"], case["shape"]
    x = random_input(rng, shape, dt, offset=case["offset"])
    dy = random_input(rng, shape, dt)
    kw = {"num_groups": case["extra"]} if family == "group" else (
        {"k": case["extra"]} if family in ("layer", "rms") else {})
    spec = make_spec(family, shape, axis, dt, rng, case["affine"], **kw)
    layer = make_family_layer(family, shape, axis, param_dtype(dt), spec)
    y = layer(x)
    assert y.dtype == np.dtype(dt) and y.shape == shape
    dx = layer.backward(dy)
    ref_dx, ref_dw, ref_db = reference_backward(family, x, dy, spec, axis)
    assert isinstance(dx, np.ndarray) and dx.dtype == np.dtype(dt) and dx.shape == shape
    dx_terms, dw_terms, db_terms = grad_scales(family, x, dy, spec, axis)
    assert_grad_close(dx, ref_dx, dt, err_msg=str(case),
                      scale=max(float(np.max(np.abs(ref_dx))), dx_terms))
    gdt = coarser(dt, param_dtype(dt))
    if case["affine"]:
        assert_grad_close(layer.grad_weight, ref_dw, gdt, err_msg=str(case), scale=dw_terms)
        if family == "rms":
            assert layer.grad_bias is None
        else:
            assert_grad_close(layer.grad_bias, ref_db, gdt, err_msg=str(case), scale=db_terms)
    else:
        assert layer.grad_weight is None and layer.grad_bias is None


@pytest.mark.parametrize("family", FAMILIES)
def test_backward_refers_to_most_recent_forward(backend, rng, family):
    """Two forwards, then backward (twice): gradients of the second forward."""
    shape1, shape2 = (5, 4, 6), (2, 4, 6)
    axis = 1 if family in ("instance", "group") else None
    spec = make_spec(family, shape1, axis, np.float64, rng, True, num_groups=2) \
        if family == "group" else make_spec(family, shape1, axis, np.float64, rng, True)
    layer = make_family_layer(family, shape1, axis, np.float64, spec)
    layer(random_input(rng, shape1, np.float64))
    x2 = random_input(rng, shape2, np.float64, offset=2.0, scale=3.0)
    layer(x2)
    for _ in range(2):
        dy = rng.standard_normal(shape2)
        dx = layer.backward(dy)
        ref_dx, ref_dw, ref_db = reference_backward(family, x2, dy, spec, axis)
        assert_grad_close(dx, ref_dx, np.float64)
        assert_grad_close(layer.grad_weight, ref_dw, np.float64)
        if family != "rms":
            assert_grad_close(layer.grad_bias, ref_db, np.float64)


@pytest.mark.parametrize("family", ["group", "layer", "rms"])
def test_backward_same_in_eval(backend, rng, family):
    """GroupNorm/LayerNorm/RMSNorm have no running stats: eval backward == train backward."""
    shape = (3, 4, 5)
    axis = 1 if family == "group" else None
    spec = make_spec(family, shape, axis, np.float64, rng, True)
    layer = make_family_layer(family, shape, axis, np.float64, spec)
    x = random_input(rng, shape, np.float64, offset=1.0)
    dy = rng.standard_normal(shape)
    layer.eval()
    layer(x)
    dx = layer.backward(dy)
    ref_dx, ref_dw, ref_db = reference_backward(family, x, dy, spec, axis)
    assert_grad_close(dx, ref_dx, np.float64)
    assert_grad_close(layer.grad_weight, ref_dw, np.float64)
    if family != "rms":
        assert_grad_close(layer.grad_bias, ref_db, np.float64)


def test_layer_norm_bias_false_grads(backend, rng):
    layer = fastnorm.LayerNorm((3, 4), bias=False, dtype=np.float64)
    assert layer.bias is None and layer.weight.shape == (3, 4)
    layer.weight[...] = rng.uniform(0.5, 1.5, (3, 4))
    x = random_input(rng, (2, 3, 4), np.float64)
    dy = rng.standard_normal(x.shape)
    layer(x)
    dx = layer.backward(dy)
    ref_dx, ref_dw, _ = naive.layer_norm_backward(x, dy, (3, 4), layer.weight)
    assert_grad_close(dx, ref_dx, np.float64)
    assert_grad_close(layer.grad_weight, ref_dw, np.float64)
    assert layer.grad_bias is None
