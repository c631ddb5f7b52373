"""Input handling of instance_norm / group_norm / layer_norm / rms_norm: memory layouts, byte
order, read-only data, ``out=`` (fresh, strided, ``out=x``), and inputs never modified."""

import naive
import numpy as np
import pytest
from conftest import (
    FAMILIES,
    assert_grad_close,
    assert_output_close,
    assert_stats_close,
    call_functional,
    family_axes,
    make_family_layer,
    make_spec,
    param_dtype,
    random_input,
    random_params,
    reference_backward,
    reference_forward,
)

import fastnorm


from layouts import LAYOUTS  # noqa: E402


# (family, axis, shape)
SHAPES = [(f, a, s) for f in FAMILIES for a in family_axes(f)
          for s in ([(4, 6, 5, 3)] if a in (1, None) else [(4, 5, 3, 6)])]
SHAPES += [("group", 1, (7, 6)), ("layer", None, (7, 6)), ("rms", None, (7, 6))]
SHAPE_IDS = [f"{f}-{a}-{'x'.join(map(str, s))}" for f, a, s in SHAPES]


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("family, axis, shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_layouts(backend, rng, layout, family, axis, shape, dtype):
    base = random_input(rng, shape, dtype, offset=1.0, scale=2.0)
    if layout == "broadcast":
        base = np.broadcast_to(base[:1], shape).copy()
    x = LAYOUTS[layout](base)
    np.testing.assert_array_equal(x, base)
    spec = make_spec(family, shape, axis, dtype, rng, k=2 if family == "layer" else 1)
    y = call_functional(family, x, spec, axis)
    assert_output_close(y, reference_forward(family, base, spec, axis), np.dtype(dtype))
    np.testing.assert_array_equal(x, base)  # input unchanged


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("use_input_stats", [True, False])
def test_instance_norm_layouts_with_running_stats(backend, rng, layout, use_input_stats):
    base = random_input(rng, (4, 3, 5, 6), np.float32, offset=1.0, scale=2.0)
    if layout == "broadcast":
        base = np.broadcast_to(base[:1], base.shape).copy()
    x = LAYOUTS[layout](base)
    w, b, rm, rv = random_params(rng, 3, np.float32)
    ref = naive.instance_norm(base, rm, rv, w, b, use_input_stats=use_input_stats, momentum=0.3)
    y = fastnorm.instance_norm(x, rm, rv, w, b, use_input_stats=use_input_stats, momentum=0.3)
    assert_output_close(y, ref["y"], np.float32)
    assert_stats_close(rm, ref["running_mean"])
    assert_stats_close(rv, ref["running_var"])
    np.testing.assert_array_equal(x, base)


@pytest.mark.parametrize("layout", ["strided", "fortran", "neg_all", "big_endian", "read_only",
                                    "inner_strided"])
@pytest.mark.parametrize("family, axis, shape", SHAPES[:6], ids=SHAPE_IDS[:6])
def test_layouts_layer_backward(backend, rng, layout, family, axis, shape):
    base = random_input(rng, shape, np.float64, offset=-1.0)
    dy_base = rng.standard_normal(shape)
    x, dy = LAYOUTS[layout](base), LAYOUTS[layout](dy_base)
    spec = make_spec(family, shape, axis, np.float64, rng)
    layer = make_family_layer(family, shape, axis, np.float64, spec)
    assert_output_close(layer(x), reference_forward(family, base, spec, axis), np.float64)
    dx = layer.backward(dy)
    ref_dx, ref_dw, ref_db = reference_backward(family, base, dy_base, spec, axis)
    assert_grad_close(dx, ref_dx, np.float64)
    assert_grad_close(layer.grad_weight, ref_dw, np.float64)
    if ref_db is not None:
        assert_grad_close(layer.grad_bias, ref_db, np.float64)
    np.testing.assert_array_equal(x, base)
    np.testing.assert_array_equal(dy, dy_base)


@pytest.mark.parametrize("family", FAMILIES)
def test_parameter_layouts(backend, rng, family):
    """weight/bias as strided, negative-stride, big-endian or list; running stats as strided
    views updated in place (neighbours untouched)."""
    shape = (4, 6, 5)
    axis = 1 if family in ("instance", "group") else None
    spec = make_spec(family, shape, axis, np.float64, rng)
    x = random_input(rng, shape, np.float64, offset=0.5)
    ref = reference_forward(family, x, spec, axis)
    odd = dict(spec)
    odd["weight"] = spec["weight"].astype(">f8")
    if "bias" in spec:
        odd["bias"] = np.ascontiguousarray(spec["bias"][::-1])[::-1]
    assert_output_close(call_functional(family, x, odd, axis), ref, np.float64)
    odd["weight"] = np.repeat(spec["weight"], 2, axis=-1)[..., ::2]
    if "bias" in spec:
        odd["bias"] = spec["bias"].tolist()
    assert_output_close(call_functional(family, x, odd, axis), ref, np.float64)
    if family == "instance":
        _, _, rm, rv = random_params(rng, 6, np.float64)
        r = naive.instance_norm(x, rm, rv, spec["weight"], spec["bias"], momentum=0.4)
        rm_buf, rv_buf = np.zeros(12), np.zeros(12)
        rm_buf[::2], rv_buf[::2] = rm, rv
        y = fastnorm.instance_norm(x, rm_buf[::2], rv_buf[::2][::-1][::-1], spec["weight"],
                                   spec["bias"], momentum=0.4)
        assert_output_close(y, r["y"], np.float64)
        assert_stats_close(rm_buf[::2], r["running_mean"])
        assert_stats_close(rv_buf[::2], r["running_var"])
        np.testing.assert_array_equal(rm_buf[1::2], 0.0)
        np.testing.assert_array_equal(rv_buf[1::2], 0.0)


# ----------------------------------------------------------------------------------------- out=


@pytest.mark.parametrize("family, axis, shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_out_fresh_array(backend, rng, family, axis, shape, dtype):
    x = random_input(rng, shape, dtype)
    x0 = x.copy()
    spec = make_spec(family, shape, axis, dtype, rng)
    out = np.full(shape, np.nan, dtype=dtype)
    res = call_functional(family, x, spec, axis, out=out)
    assert res is out
    assert_output_close(out, reference_forward(family, x, spec, axis), np.dtype(dtype))
    np.testing.assert_array_equal(x, x0)


@pytest.mark.parametrize("family, axis, shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_out_is_x_in_place(backend, rng, family, axis, shape, dtype):
    x = random_input(rng, shape, dtype, offset=2.0)
    spec = make_spec(family, shape, axis, dtype, rng)
    ref = reference_forward(family, x, spec, axis)
    res = call_functional(family, x, spec, axis, out=x)
    assert res is x
    assert_output_close(x, ref, np.dtype(dtype))


@pytest.mark.parametrize("use_input_stats", [True, False])
def test_instance_out_is_x_with_running_stats(backend, rng, use_input_stats):
    x = random_input(rng, (4, 5, 3, 6), np.float32, offset=2.0)
    w, b, rm, rv = random_params(rng, 6, np.float32)
    ref = naive.instance_norm(x, rm, rv, w, b, use_input_stats=use_input_stats, momentum=0.5,
                              axis=-1)
    res = fastnorm.instance_norm(x, rm, rv, w, b, use_input_stats=use_input_stats,
                                 momentum=0.5, axis=-1, out=x)
    assert res is x
    assert_output_close(x, ref["y"], np.float32)
    assert_stats_close(rm, ref["running_mean"])
    assert_stats_close(rv, ref["running_var"])


@pytest.mark.parametrize("family", FAMILIES)
def test_out_non_contiguous(backend, rng, family):
    """out may be any writable array of the right shape and dtype, e.g. a strided view."""
    shape = (4, 6, 5)
    axis = 1 if family in ("instance", "group") else None
    x = random_input(rng, shape, np.float32)
    spec = make_spec(family, shape, axis, np.float32, rng)
    buf = np.zeros((4, 6, 10), np.float32)
    out = buf[:, :, ::2]
    assert call_functional(family, x, spec, axis, out=out) is out
    assert_output_close(out, reference_forward(family, x, spec, axis), np.float32)
    np.testing.assert_array_equal(buf[:, :, 1::2], 0.0)
    out = np.zeros(shape, np.float32, order="F")
    assert call_functional(family, x, spec, axis, out=out) is out
    assert_output_close(out, reference_forward(family, x, spec, axis), np.float32)


@pytest.mark.parametrize("family", FAMILIES)
def test_out_in_place_strided_x(backend, rng, family):
    """out=x where x is a non-contiguous view into a larger buffer."""
    buf = random_input(rng, (4, 12, 5), np.float64)
    buf0 = buf.copy()
    x = buf[:, ::2]
    axis = 1 if family in ("instance", "group") else None
    spec = make_spec(family, x.shape, axis, np.float64, rng)
    ref = reference_forward(family, x, spec, axis)
    assert call_functional(family, x, spec, axis, out=x) is x
    assert_output_close(x, ref, np.float64)
    np.testing.assert_array_equal(buf[:, 1::2], buf0[:, 1::2])


@pytest.mark.parametrize("family", FAMILIES)
def test_out_partially_overlapping_x(backend, rng, family):
    """out overlapping x but not identical (shifted by one row): the result must still be
    f(x) as x was before the call."""
    buf = random_input(rng, (5, 6, 4), np.float64, offset=1.0)
    x = buf[:4]
    x0 = x.copy()
    out = buf[1:]
    axis = 1 if family in ("instance", "group") else None
    spec = make_spec(family, x.shape, axis, np.float64, rng)
    ref = reference_forward(family, x0, spec, axis)
    res = call_functional(family, x, spec, axis, out=out)
    assert res is out
    assert_output_close(out, ref, np.float64)


# ---------------------------------------------------------------------------- immutability


@pytest.mark.parametrize("family", FAMILIES)
def test_inputs_not_modified(backend, rng, family):
    shape = (4, 6, 5, 2)
    axis = 1 if family in ("instance", "group") else None
    x = random_input(rng, shape, np.float32)
    spec = make_spec(family, shape, axis, np.float32, rng)
    before = {k: np.array(v, copy=True) for k, v in spec.items() if isinstance(v, np.ndarray)}
    x0 = x.copy()
    call_functional(family, x, spec, axis)
    np.testing.assert_array_equal(x, x0)
    for k, v in before.items():
        np.testing.assert_array_equal(spec[k], v, err_msg=k)


@pytest.mark.parametrize("family", FAMILIES)
def test_layer_does_not_modify_inputs(backend, rng, family):
    shape = (4, 6, 5, 2)
    axis = 1 if family in ("instance", "group") else None
    spec = make_spec(family, shape, axis, np.float32, rng)
    layer = make_family_layer(family, shape, axis, param_dtype(np.float32), spec)
    x = random_input(rng, shape, np.float32)
    dy = random_input(rng, shape, np.float32)
    x0, dy0 = x.copy(), dy.copy()
    y = layer(x)
    dx = layer.backward(dy)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(dy, dy0)
    assert not np.shares_memory(y, x) and not np.shares_memory(dx, dy)
    assert not np.shares_memory(dx, x) and not np.shares_memory(y, dy)
