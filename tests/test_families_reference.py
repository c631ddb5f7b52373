"""Functional ``instance_norm``, ``group_norm``, ``layer_norm`` and ``rms_norm`` against the
independent float64 oracle (tests/naive.py), on the same (rounded) input values."""

import naive
import numpy as np
import pytest
from conftest import (
    FLOAT_DTYPES,
    assert_output_close,
    assert_stats_close,
    channels_last_shape,
    param_dtype,
    random_input,
    random_params,
)
from hypothesis import given
from hypothesis import strategies as st

import fastnorm


def _opt(draw, arr):
    return arr if draw(st.booleans()) else None


# ------------------------------------------------------------------------------ instance norm


@st.composite
def instance_cases(draw):
    ndim = draw(st.integers(3, 5))
    axis = draw(st.sampled_from([1, -1]))
    n = draw(st.integers(1, 3))
    c = draw(st.integers(1, 5))
    spatial = draw(st.lists(st.integers(1, 4), min_size=ndim - 2, max_size=ndim - 2))
    use_input_stats = draw(st.booleans())
    if int(np.prod(spatial)) < 2:
        spatial[0] = 2  # instance stats need more than one spatial element
    shape = (n, c, *spatial)
    return dict(
        shape=shape if axis == 1 else channels_last_shape(shape),
        axis=axis,
        dtype=draw(st.sampled_from(FLOAT_DTYPES)),
        use_input_stats=use_input_stats,
        running=draw(st.booleans()) if use_input_stats else True,
        use_weight=draw(st.booleans()),
        use_bias=draw(st.booleans()),
        momentum=draw(st.sampled_from([0.0, 0.1, 1.0]) | st.floats(0.0, 1.0)),
        eps=draw(st.sampled_from([1e-5, 1e-3, 0.1])),
        offset=draw(st.floats(-3.0, 3.0)),
        scale=draw(st.floats(0.5, 4.0)),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


@given(case=instance_cases())
def test_instance_norm_matches_reference(backend, case):
    rng = np.random.default_rng(case["seed"])
    dt = case["dtype"]
    x = random_input(rng, case["shape"], dt, case["offset"], case["scale"])
    x0 = x.copy()
    c = x.shape[naive.channel_axis(x.ndim, case["axis"])]
    w, b, rm, rv = random_params(rng, c, param_dtype(dt))
    w = w if case["use_weight"] else None
    b = b if case["use_bias"] else None
    if not case["running"]:
        rm = rv = None
    kw = dict(use_input_stats=case["use_input_stats"], momentum=case["momentum"],
              eps=case["eps"], axis=case["axis"])
    ref = naive.instance_norm(x, rm, rv, w, b, **kw)
    y = fastnorm.instance_norm(x, rm, rv, w, b, **kw)
    assert_output_close(y, ref["y"], dt, err_msg=str(case))
    if rm is not None:
        assert_stats_close(rm, ref["running_mean"], err_msg=str(case))
        assert_stats_close(rv, ref["running_var"], err_msg=str(case))
    np.testing.assert_array_equal(x, x0)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("axis", [1, -1])
@pytest.mark.parametrize("shape", [(4, 3, 7), (3, 4, 5, 6), (2, 3, 4, 3, 5)])
@pytest.mark.parametrize("use_input_stats", [True, False])
def test_instance_norm_fixed_shapes(backend, rng, dtype, axis, shape, use_input_stats):
    if axis == -1:
        shape = channels_last_shape(shape)
    x = random_input(rng, shape, dtype, offset=1.5, scale=2.0)
    c = x.shape[naive.channel_axis(x.ndim, axis)]
    w, b, rm, rv = random_params(rng, c, param_dtype(dtype))
    kw = dict(use_input_stats=use_input_stats, momentum=0.3, eps=1e-4, axis=axis)
    ref = naive.instance_norm(x, rm, rv, w, b, **kw)
    y = fastnorm.instance_norm(x, rm, rv, w, b, **kw)
    assert_output_close(y, ref["y"], dtype)
    assert_stats_close(rm, ref["running_mean"])
    assert_stats_close(rv, ref["running_var"])


def test_instance_norm_running_stats_hand_checked(backend):
    """Two samples, one channel, spatial values [1, 2, 3, 6] and [0, 0, 4, 4]: per-instance
    means 3 and 2, unbiased variances 14/3 and 16/3; the buffers get their batch mean."""
    x = np.array([[[1.0, 2.0, 3.0, 6.0]], [[0.0, 0.0, 4.0, 4.0]]])
    rm = np.array([1.0])
    rv = np.array([2.0])
    y = fastnorm.instance_norm(x, rm, rv, momentum=0.25, eps=0.0)
    np.testing.assert_allclose(rm, [0.75 * 1.0 + 0.25 * 2.5], rtol=1e-14)
    np.testing.assert_allclose(rv, [0.75 * 2.0 + 0.25 * 5.0], rtol=1e-14)
    np.testing.assert_allclose(y[0, 0], (x[0, 0] - 3.0) / np.sqrt(3.5), rtol=1e-14)
    np.testing.assert_allclose(y[1, 0], (x[1, 0] - 2.0) / 2.0, rtol=1e-14)


def test_instance_norm_defaults(backend, rng):
    """Defaults: use_input_stats=True, momentum=0.1, eps=1e-5, axis=1, no affine."""
    x = random_input(rng, (3, 4, 6), np.float64, offset=2.0)
    _, _, rm, rv = random_params(rng, 4, np.float64)
    rm0, rv0 = rm.copy(), rv.copy()
    y = fastnorm.instance_norm(x)
    ref = naive.instance_norm(x, eps=1e-5)
    assert_output_close(y, ref["y"], np.float64)
    y = fastnorm.instance_norm(x, rm, rv)
    ref = naive.instance_norm(x, rm0, rv0, momentum=0.1, eps=1e-5)
    assert_output_close(y, ref["y"], np.float64)
    assert_stats_close(rm, ref["running_mean"])
    assert_stats_close(rv, ref["running_var"])


def test_instance_norm_running_stats_used_only_when_not_input_stats(backend, rng):
    """use_input_stats=True ignores the buffers' values for the output; False uses them and
    leaves them unchanged."""
    x = random_input(rng, (2, 3, 8), np.float64, offset=4.0)
    rm = np.array([100.0, -100.0, 3.0])
    rv = np.array([1e4, 1e-4, 2.0])
    ref = naive.instance_norm(x)
    assert_output_close(fastnorm.instance_norm(x, rm.copy(), rv.copy()), ref["y"], np.float64)
    rm0, rv0 = rm.copy(), rv.copy()
    y = fastnorm.instance_norm(x, rm, rv, use_input_stats=False)
    assert_output_close(y, naive.instance_norm(x, rm0, rv0, use_input_stats=False)["y"],
                        np.float64)
    np.testing.assert_array_equal(rm, rm0)
    np.testing.assert_array_equal(rv, rv0)


def test_instance_norm_many_channels_and_long_spatial(backend, rng):
    for axis, shape in [(1, (3, 257, 5)), (-1, (3, 5, 257)), (1, (2, 3, 128, 130)),
                        (-1, (2, 64, 130, 3))]:
        x = random_input(rng, shape, np.float32, offset=-2.0)
        c = x.shape[naive.channel_axis(x.ndim, axis)]
        w, b, rm, rv = random_params(rng, c, np.float32)
        ref = naive.instance_norm(x, rm, rv, w, b, momentum=0.2, axis=axis)
        y = fastnorm.instance_norm(x, rm, rv, w, b, momentum=0.2, axis=axis)
        assert_output_close(y, ref["y"], np.float32, err_msg=str(shape))
        assert_stats_close(rm, ref["running_mean"])
        assert_stats_close(rv, ref["running_var"])


# --------------------------------------------------------------------------------- group norm


@st.composite
def group_cases(draw):
    ndim = draw(st.integers(2, 5))
    axis = draw(st.sampled_from([1, -1]))
    n = draw(st.integers(1, 3))
    groups = draw(st.integers(1, 4))
    per_group = draw(st.integers(1, 3))
    spatial = draw(st.lists(st.integers(1, 4), min_size=ndim - 2, max_size=ndim - 2))
    if per_group * int(np.prod(spatial)) < 2:
        per_group = 2  # more than one value per group (per sample)
    shape = (n, groups * per_group, *spatial)
    return dict(
        shape=shape if axis == 1 else channels_last_shape(shape),
        axis=axis,
        num_groups=groups,
        dtype=draw(st.sampled_from(FLOAT_DTYPES)),
        use_weight=draw(st.booleans()),
        use_bias=draw(st.booleans()),
        eps=draw(st.sampled_from([1e-5, 1e-3, 0.1])),
        offset=draw(st.floats(-3.0, 3.0)),
        scale=draw(st.floats(0.5, 4.0)),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


@given(case=group_cases())
def test_group_norm_matches_reference(backend, case):
    rng = np.random.default_rng(case["seed"])
    dt = case["dtype"]
    x = random_input(rng, case["shape"], dt, case["offset"], case["scale"])
    x0 = x.copy()
    c = x.shape[naive.channel_axis(x.ndim, case["axis"])]
    w, b, _, _ = random_params(rng, c, param_dtype(dt))
    w = w if case["use_weight"] else None
    b = b if case["use_bias"] else None
    ref = naive.group_norm(x, case["num_groups"], w, b, eps=case["eps"], axis=case["axis"])
    y = fastnorm.group_norm(x, case["num_groups"], w, b, eps=case["eps"], axis=case["axis"])
    assert_output_close(y, ref["y"], dt, err_msg=str(case))
    np.testing.assert_array_equal(x, x0)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("axis", [1, -1])
@pytest.mark.parametrize("shape, groups", [((8, 6), 3), ((4, 6, 7), 2), ((3, 8, 5, 6), 4),
                                           ((2, 6, 4, 3, 5), 3), ((3, 4, 5, 6), 1),
                                           ((3, 4, 5, 6), 4)])
def test_group_norm_fixed_shapes(backend, rng, dtype, axis, shape, groups):
    if axis == -1:
        shape = channels_last_shape(shape)
    x = random_input(rng, shape, dtype, offset=1.5, scale=2.0)
    c = x.shape[naive.channel_axis(x.ndim, axis)]
    w, b, _, _ = random_params(rng, c, param_dtype(dtype))
    ref = naive.group_norm(x, groups, w, b, eps=1e-4, axis=axis)
    y = fastnorm.group_norm(x, groups, w, b, eps=1e-4, axis=axis)
    assert_output_close(y, ref["y"], dtype)


def test_group_norm_groups_are_adjacent_channels(backend):
    """C=4, G=2: channels {0, 1} and {2, 3} form the groups (not {0, 2} and {1, 3})."""
    x = np.array([[[0.0, 2.0], [4.0, 6.0], [10.0, 10.0], [20.0, 20.0]]])  # (1, 4, 2)
    y = fastnorm.group_norm(x, 2, eps=0.0)
    g0 = np.array([0.0, 2.0, 4.0, 6.0])
    g1 = np.array([10.0, 10.0, 20.0, 20.0])
    exp = np.concatenate([(g0 - 3.0) / np.sqrt(5.0), (g1 - 15.0) / 5.0]).reshape(1, 4, 2)
    np.testing.assert_allclose(y, exp, rtol=1e-14, atol=1e-14)
    # channels-last: the same groups of adjacent channels along the last axis
    y = fastnorm.group_norm(np.moveaxis(x, 1, -1), 2, eps=0.0, axis=-1)
    np.testing.assert_allclose(y, np.moveaxis(exp, 1, -1), rtol=1e-14, atol=1e-14)


def test_group_norm_default_eps(backend, rng):
    x = random_input(rng, (2, 4, 3), np.float64, scale=1e-3)  # var ~ 1e-6: eps matters
    ref = naive.group_norm(x, 2, eps=1e-5)
    assert_output_close(fastnorm.group_norm(x, 2), ref["y"], np.float64)


def test_group_norm_stats_per_sample(backend, rng):
    """Statistics are per sample: scaling/shifting one sample leaves the others' outputs."""
    x = random_input(rng, (3, 4, 5), np.float64)
    y = fastnorm.group_norm(x, 2)
    x2 = x.copy()
    x2[1] = 1000.0 + 50.0 * x2[1]
    y2 = fastnorm.group_norm(x2, 2)
    np.testing.assert_array_equal(y2[0], y[0])
    np.testing.assert_array_equal(y2[2], y[2])
    assert_output_close(y2, naive.group_norm(x2, 2)["y"], np.float64)


def test_group_norm_many_groups_and_long_groups(backend, rng):
    for axis, shape, g in [(1, (3, 256, 5), 64), (-1, (3, 5, 256), 128), (1, (2, 4, 128, 130), 2),
                           (-1, (2, 64, 130, 4), 2), (-1, (2, 16, 16, 96), 32)]:
        x = random_input(rng, shape, np.float32, offset=-2.0)
        c = x.shape[naive.channel_axis(x.ndim, axis)]
        w, b, _, _ = random_params(rng, c, np.float32)
        ref = naive.group_norm(x, g, w, b, axis=axis)
        y = fastnorm.group_norm(x, g, w, b, axis=axis)
        assert_output_close(y, ref["y"], np.float32, err_msg=str((shape, g)))


# --------------------------------------------------------------------------- layer/RMS norm


@st.composite
def trailing_cases(draw):
    ndim = draw(st.integers(1, 4))
    shape = draw(st.lists(st.integers(1, 5), min_size=ndim, max_size=ndim))
    k = draw(st.integers(1, ndim))
    if int(np.prod(shape[ndim - k:])) < 2 and draw(st.booleans()):
        shape[-1] = 2
    ns = tuple(shape[ndim - k:])
    return dict(
        shape=tuple(shape),
        normalized_shape=ns[0] if (k == 1 and draw(st.booleans())) else ns,
        dtype=draw(st.sampled_from(FLOAT_DTYPES)),
        use_weight=draw(st.booleans()),
        use_bias=draw(st.booleans()),
        eps=draw(st.sampled_from([1e-5, 1e-3, 0.1])),
        offset=draw(st.floats(-3.0, 3.0)),
        scale=draw(st.floats(0.5, 4.0)),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def _trailing_params(rng, case):
    ns = case["normalized_shape"]
    ns = (ns,) if isinstance(ns, int) else ns
    pdt = param_dtype(case["dtype"])
    w = (1.0 + 0.3 * rng.standard_normal(ns)).astype(pdt) if case["use_weight"] else None
    b = (0.5 * rng.standard_normal(ns)).astype(pdt) if case["use_bias"] else None
    return w, b


@given(case=trailing_cases())
def test_layer_norm_matches_reference(backend, case):
    rng = np.random.default_rng(case["seed"])
    dt = case["dtype"]
    x = random_input(rng, case["shape"], dt, case["offset"], case["scale"])
    x0 = x.copy()
    w, b = _trailing_params(rng, case)
    ref = naive.layer_norm(x, case["normalized_shape"], w, b, eps=case["eps"])
    y = fastnorm.layer_norm(x, case["normalized_shape"], w, b, eps=case["eps"])
    assert_output_close(y, ref["y"], dt, err_msg=str(case))
    np.testing.assert_array_equal(x, x0)


@given(case=trailing_cases(), default_eps=st.booleans())
def test_rms_norm_matches_reference(backend, case, default_eps):
    rng = np.random.default_rng(case["seed"])
    dt = case["dtype"]
    x = random_input(rng, case["shape"], dt, case["offset"], case["scale"])
    x0 = x.copy()
    w, _ = _trailing_params(rng, case)
    eps = None if default_eps else case["eps"]
    ref = naive.rms_norm(x, case["normalized_shape"], w, eps=eps)
    y = fastnorm.rms_norm(x, case["normalized_shape"], w, eps=eps)
    assert_output_close(y, ref["y"], dt, err_msg=str(case))
    np.testing.assert_array_equal(x, x0)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape, ns", [((8, 6), 6), ((8, 6), (6,)), ((4, 6, 7), (6, 7)),
                                       ((3, 4, 5, 6), (5, 6)), ((2, 3, 4, 5), (3, 4, 5)),
                                       ((7,), (7,)), ((3, 5), (3, 5)), ((5, 300), (300,))])
def test_layer_and_rms_norm_fixed_shapes(backend, rng, dtype, shape, ns):
    """Including x.shape == normalized_shape (a single row)."""
    x = random_input(rng, shape, dtype, offset=1.5, scale=2.0)
    pshape = (ns,) if isinstance(ns, int) else ns
    pdt = param_dtype(dtype)
    w = (1.0 + 0.3 * rng.standard_normal(pshape)).astype(pdt)
    b = (0.5 * rng.standard_normal(pshape)).astype(pdt)
    y = fastnorm.layer_norm(x, ns, w, b, eps=1e-4)
    assert_output_close(y, naive.layer_norm(x, ns, w, b, eps=1e-4)["y"], dtype)
    y = fastnorm.rms_norm(x, ns, w, eps=1e-4)
    assert_output_close(y, naive.rms_norm(x, ns, w, eps=1e-4)["y"], dtype)
    y = fastnorm.rms_norm(x, ns, w)
    assert_output_close(y, naive.rms_norm(x, ns, w, eps=None)["y"], dtype)


def test_layer_norm_elementwise_affine(backend):
    """weight/bias are elementwise over normalized_shape (not per leading index)."""
    x = np.array([[1.0, 2.0, 3.0], [10.0, 30.0, 20.0]])
    w = np.array([1.0, 2.0, 3.0])
    b = np.array([0.0, -1.0, 1.0])
    y = fastnorm.layer_norm(x, 3, w, b, eps=0.0)
    s = np.sqrt(2.0 / 3.0)
    exp = np.array([[-1.0, 0.0, 1.0], [-1.0, 1.0, 0.0]]) / s * w + b
    np.testing.assert_allclose(y, exp, rtol=1e-14, atol=1e-14)


def test_layer_norm_default_eps(backend, rng):
    x = random_input(rng, (3, 4), np.float64, scale=1e-3)  # var ~ 1e-6: eps matters
    assert_output_close(fastnorm.layer_norm(x, 4), naive.layer_norm(x, 4, eps=1e-5)["y"],
                        np.float64)
    assert_output_close(fastnorm.layer_norm(x, (4,)), naive.layer_norm(x, 4, eps=1e-5)["y"],
                        np.float64)


def test_rms_norm_hand_checked(backend):
    x = np.array([[3.0, 4.0], [0.0, -2.0]])
    y = fastnorm.rms_norm(x, 2, np.array([1.0, 10.0]), eps=0.0)
    exp = np.array([[3.0, 40.0] / np.sqrt(12.5), [0.0, -10.0 * np.sqrt(2.0)]])
    np.testing.assert_allclose(y, exp, rtol=1e-14)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_rms_norm_default_eps_is_the_compute_dtype_eps(backend, rng, dtype):
    """eps=None means the machine epsilon of the compute dtype, as PyTorch: float32's for
    float16 and float32 input, float64's for float64.  With mean(x**2) of the order of that eps
    the result tells 2**-23 and 2**-52 apart, and float16's own 2**-10 too."""
    e = float(np.finfo(np.float64 if dtype == np.float64 else np.float32).eps)
    x = (np.sqrt(e) * rng.uniform(0.5, 1.5, (4, 8))).astype(dtype)
    y = fastnorm.rms_norm(x, 8)
    ref = naive.rms_norm(x, 8, eps=e)["y"]
    assert_output_close(y, ref, dtype)
    # the alternatives differ by far more than the tolerance (rms changes by > 20 %)
    for other in (0.0, 1e-5, float(np.finfo(np.float16).eps), float(np.finfo(np.float32).eps)):
        if other != e:
            assert np.max(np.abs(naive.rms_norm(x, 8, eps=other)["y"] - ref)) > 0.1
    # float16 data, explicit eps: no use of the default
    y = fastnorm.rms_norm(x, 8, eps=0.5 * e)
    assert_output_close(y, naive.rms_norm(x, 8, eps=0.5 * e)["y"], dtype)


def test_rms_norm_no_centering(backend):
    """A constant row is not zeroed (unlike layer norm): y = sign * weight (eps tiny)."""
    x = np.full((2, 5), 7.0)
    x[1] = -3.0
    y = fastnorm.rms_norm(x, 5, eps=1e-12)
    np.testing.assert_allclose(y[0], 1.0, rtol=1e-12)
    np.testing.assert_allclose(y[1], -1.0, rtol=1e-12)
    y = fastnorm.layer_norm(x, 5)
    np.testing.assert_allclose(y, 0.0, atol=1e-12)


def test_layer_norm_many_rows_and_long_rows(backend, rng):
    for shape, ns in [((1000, 7), 7), ((3, 100000), 100000), ((4, 64, 130), (64, 130)),
                      ((2, 3, 3000), 3000)]:
        x = random_input(rng, shape, np.float32, offset=-2.0)
        pshape = (ns,) if isinstance(ns, int) else ns
        w = (1.0 + 0.3 * rng.standard_normal(pshape)).astype(np.float32)
        b = (0.5 * rng.standard_normal(pshape)).astype(np.float32)
        assert_output_close(fastnorm.layer_norm(x, ns, w, b),
                            naive.layer_norm(x, ns, w, b)["y"], np.float32, err_msg=str(shape))
        assert_output_close(fastnorm.rms_norm(x, ns, w), naive.rms_norm(x, ns, w)["y"],
                            np.float32, err_msg=str(shape))


@pytest.mark.parametrize("family", ["layer", "rms"])
def test_float32_params_with_float16_input(backend, rng, family):
    """float16 data with float32 (or float64) parameters: output float16, computed right."""
    x = random_input(rng, (6, 10), np.float16, offset=0.5)
    for pdt in (np.float32, np.float64, np.float16):
        w = (1.0 + 0.3 * rng.standard_normal(10)).astype(pdt)
        b = (0.5 * rng.standard_normal(10)).astype(pdt)
        if family == "layer":
            y, ref = fastnorm.layer_norm(x, 10, w, b), naive.layer_norm(x, 10, w, b)["y"]
        else:
            y, ref = fastnorm.rms_norm(x, 10, w), naive.rms_norm(x, 10, w)["y"]
        assert_output_close(y, ref, np.float16)


def test_list_inputs(backend, rng):
    """Arrays in are anything np.asarray accepts; a list of Python floats is float64."""
    x = random_input(rng, (3, 4, 5), np.float64)
    for y, ref in [
        (fastnorm.instance_norm(x.tolist()), naive.instance_norm(x)["y"]),
        (fastnorm.group_norm(x.tolist(), 2, [1.0, 2.0, 3.0, 4.0], [0.0] * 4),
         naive.group_norm(x, 2, [1.0, 2.0, 3.0, 4.0], [0.0] * 4)["y"]),
        (fastnorm.layer_norm(x.tolist(), [4, 5]), naive.layer_norm(x, (4, 5))["y"]),
        (fastnorm.rms_norm(x.tolist(), (5,), [2.0] * 5), naive.rms_norm(x, 5, [2.0] * 5)["y"]),
    ]:
        assert isinstance(y, np.ndarray) and y.dtype == np.float64
        assert_output_close(y, ref, np.float64)
