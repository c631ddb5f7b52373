"""Error cases of instance_norm / group_norm / layer_norm / rms_norm and their layers: the right
exception, a message naming the argument, and nothing written (running stats, out, inputs)."""

import warnings

import numpy as np
import pytest

import fastnorm
from error_cases import _astype, _read_only, _set  # noqa: E402

C = 6
X_SHAPE = (4, C, 5)


def _f32(a):
    return np.asarray(a, dtype=np.float32)


def valid_call(family, rng):
    """(function, kwargs) of a valid call of ``family`` (float32, running stats for instance)."""
    x = _f32(rng.standard_normal(X_SHAPE))
    if family == "instance":
        return fastnorm.instance_norm, dict(
            x=x, running_mean=_f32(rng.standard_normal(C)),
            running_var=_f32(rng.uniform(0.5, 2, C)), weight=_f32(rng.standard_normal(C)),
            bias=_f32(rng.standard_normal(C)), use_input_stats=True, momentum=0.1, eps=1e-5,
            axis=1)
    if family == "group":
        return fastnorm.group_norm, dict(
            x=x, num_groups=3, weight=_f32(rng.standard_normal(C)),
            bias=_f32(rng.standard_normal(C)), eps=1e-5, axis=1)
    if family == "layer":
        return fastnorm.layer_norm, dict(
            x=x, normalized_shape=(C, 5), weight=_f32(rng.standard_normal((C, 5))),
            bias=_f32(rng.standard_normal((C, 5))), eps=1e-5)
    return fastnorm.rms_norm, dict(x=x, normalized_shape=5, weight=_f32(rng.standard_normal(5)),
                                   eps=None)


def _resize(name, shape):
    return lambda kw: kw.update({name: np.ones(shape, dtype=np.float32)})


def _x(shape, **more):
    def f(kw):
        kw["x"] = np.ones(shape, np.float32) + np.arange(int(np.prod(shape)),
                                                         dtype=np.float32).reshape(shape)
        kw.update(more)
    return f


SPATIAL = r"^Expected more than 1 spatial element when training"
ONE_PER_CHANNEL = r"^Expected more than 1 value per channel when training"
TYPE_OR_VALUE = (TypeError, ValueError)

DTYPE_CASES = [(f"x_{np.dtype(d).name}", _astype("x", d), TypeError, r"\bx\b")
               for d in (np.int32, np.int64, np.uint8, bool, np.complex64, np.complex128, object)]

CASES = {
    "instance": DTYPE_CASES + [
        ("x_1d", _x((C,)), ValueError, r"\bx\b"),
        ("x_0d", _set(x=np.float32(1.0)), ValueError, r"\bx\b"),
        ("weight_long", _resize("weight", C + 1), ValueError, "weight"),
        ("weight_short", _resize("weight", C - 1), ValueError, "weight"),
        ("weight_2d", _resize("weight", (C, 1)), ValueError, "weight"),
        ("bias_long", _resize("bias", C + 1), ValueError, "bias"),
        ("running_mean_long", _resize("running_mean", C + 1), ValueError, "running_mean"),
        ("running_var_short", _resize("running_var", C - 1), ValueError, "running_var"),
        ("running_var_per_instance", _resize("running_var", (4, C)), ValueError, "running_var"),
        ("running_mean_only", _set(running_var=None), ValueError, "running_(mean|var)"),
        ("running_var_only", _set(running_mean=None), ValueError, "running_(mean|var)"),
        ("no_input_stats_without_running", _set(running_mean=None, running_var=None,
                                                use_input_stats=False),
         ValueError, "running_(mean|var)"),
        ("running_mean_read_only", lambda kw: kw.update(running_mean=_read_only(
            kw["running_mean"])), ValueError, "running_mean"),
        ("running_var_read_only", lambda kw: kw.update(running_var=_read_only(
            kw["running_var"])), ValueError, "running_var"),
        ("spatial_1", _x((4, C, 1)), ValueError, SPATIAL),
        ("spatial_1x1", _x((2, C, 1, 1)), ValueError, SPATIAL),
        ("spatial_1_channels_last", _x((2, 1, 1, C), axis=-1), ValueError, SPATIAL),
        ("spatial_1_no_running", _x((4, C, 1), running_mean=None, running_var=None),
         ValueError, SPATIAL),
        ("axis_0", _set(axis=0), ValueError, "axis"),
        ("axis_minus_ndim", _set(axis=-3), ValueError, "axis"),
        ("axis_too_big", _set(axis=3), TYPE_OR_VALUE, "axis"),
        ("axis_float", _set(axis=1.5), TYPE_OR_VALUE, "axis"),
        ("axis_str", _set(axis="1"), TYPE_OR_VALUE, "axis"),
        ("axis_none", _set(axis=None), TYPE_OR_VALUE, "axis"),
    ],
    "group": DTYPE_CASES + [
        ("x_1d", _x((C,)), ValueError, r"\bx\b"),
        ("x_0d", _set(x=np.float32(1.0)), ValueError, r"\bx\b"),
        ("groups_not_dividing", _set(num_groups=4), ValueError, "num_groups"),
        ("groups_more_than_channels", _set(num_groups=12), ValueError, "num_groups"),
        ("groups_not_dividing_channels_last", _x((2, 5, C), num_groups=4, axis=-1), ValueError,
         "num_groups"),
        ("groups_zero", _set(num_groups=0), ValueError, "num_groups"),
        ("groups_negative", _set(num_groups=-3), ValueError, "num_groups"),
        ("groups_float", _set(num_groups=1.5), TYPE_OR_VALUE, "num_groups"),
        ("groups_str", _set(num_groups="3"), TYPE_OR_VALUE, "num_groups"),
        ("groups_none", _set(num_groups=None), TYPE_OR_VALUE, "num_groups"),
        ("weight_per_group", _resize("weight", 3), ValueError, "weight"),
        ("weight_long", _resize("weight", C + 1), ValueError, "weight"),
        ("weight_2d", _resize("weight", (C, 1)), ValueError, "weight"),
        ("bias_per_group", _resize("bias", 3), ValueError, "bias"),
        ("bias_short", _resize("bias", C - 1), ValueError, "bias"),
        ("one_value_3d", _x((1, 3, 1), num_groups=3, weight=None, bias=None), ValueError,
         ONE_PER_CHANNEL),
        ("one_value_2d", _x((1, 2), num_groups=2, weight=None, bias=None), ValueError,
         ONE_PER_CHANNEL),
        ("one_value_channels_last", _x((1, 1, 3), num_groups=3, axis=-1, weight=None,
                                       bias=None), ValueError, ONE_PER_CHANNEL),
        ("one_value_4d", _x((1, 4, 1, 1), num_groups=4, weight=None, bias=None), ValueError,
         ONE_PER_CHANNEL),
        ("axis_0", _set(axis=0), ValueError, "axis"),
        ("axis_minus_ndim", _set(axis=-3), ValueError, "axis"),
        ("axis_too_big", _set(axis=3), TYPE_OR_VALUE, "axis"),
        ("axis_float", _set(axis=1.5), TYPE_OR_VALUE, "axis"),
        ("axis_none", _set(axis=None), TYPE_OR_VALUE, "axis"),
    ],
    "layer": DTYPE_CASES + [
        ("x_0d", _set(x=np.float32(1.0)), ValueError, "normalized_shape|x"),
        ("shape_swapped", _set(normalized_shape=(5, C)), ValueError, "normalized_shape"),
        ("shape_int_mismatch", _set(normalized_shape=C), ValueError, "normalized_shape"),
        ("shape_leading_mismatch", _set(normalized_shape=(9, C, 5)), ValueError,
         "normalized_shape"),
        ("shape_too_long", _set(normalized_shape=(1, 4, C, 5)), ValueError, "normalized_shape"),
        ("shape_empty", _set(normalized_shape=()), ValueError, "normalized_shape"),
        ("shape_negative", _set(normalized_shape=(-C, 5)), ValueError, "normalized_shape"),
        ("shape_float_entry", _set(normalized_shape=(C, 5.0)), TYPE_OR_VALUE,
         "normalized_shape"),
        ("shape_str_entry", _set(normalized_shape=(C, "5")), TYPE_OR_VALUE, "normalized_shape"),
        ("shape_float", _set(normalized_shape=5.0), TYPE_OR_VALUE, "normalized_shape"),
        ("shape_none", _set(normalized_shape=None), TYPE_OR_VALUE, "normalized_shape"),
        ("weight_trailing_only", _resize("weight", (5,)), ValueError, "weight"),
        ("weight_flat", _resize("weight", (C * 5,)), ValueError, "weight"),
        ("weight_extra_dim", _resize("weight", (C, 5, 1)), ValueError, "weight"),
        ("weight_transposed", _resize("weight", (5, C)), ValueError, "weight"),
        ("bias_trailing_only", _resize("bias", (5,)), ValueError, "bias"),
        ("bias_flat", _resize("bias", (C * 5,)), ValueError, "bias"),
    ],
    "rms": DTYPE_CASES + [
        ("x_0d", _set(x=np.float32(1.0)), ValueError, "normalized_shape|x"),
        ("shape_mismatch", _set(normalized_shape=4), ValueError, "normalized_shape"),
        ("shape_tuple_mismatch", _set(normalized_shape=(5, 5)), ValueError, "normalized_shape"),
        ("shape_too_long", _set(normalized_shape=(1, 4, C, 5)), ValueError, "normalized_shape"),
        ("shape_empty", _set(normalized_shape=()), ValueError, "normalized_shape"),
        ("shape_negative", _set(normalized_shape=-5), ValueError, "normalized_shape"),
        ("shape_float_entry", _set(normalized_shape=(5.0,)), TYPE_OR_VALUE, "normalized_shape"),
        ("shape_none", _set(normalized_shape=None), TYPE_OR_VALUE, "normalized_shape"),
        ("weight_long", _resize("weight", (6,)), ValueError, "weight"),
        ("weight_2d", _resize("weight", (C, 5)), ValueError, "weight"),
        ("weight_column", _resize("weight", (5, 1)), ValueError, "weight"),
    ],
}

ALL_CASES = [(fam, *case) for fam, cases in CASES.items() for case in cases]
ALL_IDS = [f"{fam}-{case[0]}" for fam, cases in CASES.items() for case in cases]


def _snapshot(kw, out):
    arrays = {k: np.array(v, copy=True) for k, v in kw.items() if isinstance(v, np.ndarray)}
    if isinstance(out, np.ndarray):
        arrays["out"] = out.copy()
    return arrays


def _assert_unchanged(kw, out, before):
    for k, v in before.items():
        cur = out if k == "out" else kw[k]
        np.testing.assert_array_equal(cur, v, err_msg=f"{k} was modified by a failing call")


@pytest.mark.parametrize("family, name, breaker, exc, match", ALL_CASES, ids=ALL_IDS)
def test_functional_errors(backend, rng, family, name, breaker, exc, match):
    fn, kw = valid_call(family, rng)
    fn(**{k: (np.array(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()})  # valid
    breaker(kw)
    with pytest.raises(exc, match=match):
        fn(**kw)


@pytest.mark.parametrize("family, name, breaker, exc, match", ALL_CASES, ids=ALL_IDS)
def test_failed_call_writes_nothing(backend, rng, family, name, breaker, exc, match):
    """Running stats, out and inputs are untouched by a call that fails (every case)."""
    fn, kw = valid_call(family, rng)
    breaker(kw)
    x = np.asarray(kw["x"])
    out = np.full(x.shape, 7.0, dtype=np.float32) if x.ndim >= 1 else None
    before = _snapshot(kw, out)
    with pytest.raises((ValueError, TypeError)):
        fn(**kw, out=out)
    _assert_unchanged(kw, out, before)


OUT_CASES = [
    ("out_wrong_shape", lambda x: np.zeros((4, 5, C), np.float32)),
    ("out_wrong_size", lambda x: np.zeros((4, C, 6), np.float32)),
    ("out_wrong_ndim", lambda x: np.zeros((4, C * 5), np.float32)),
    ("out_wrong_dtype", lambda x: np.zeros(X_SHAPE, np.float64)),
    ("out_float16", lambda x: np.zeros(X_SHAPE, np.float16)),
    ("out_int", lambda x: np.zeros(X_SHAPE, np.int32)),
    ("out_read_only", lambda x: _read_only(np.zeros(X_SHAPE, np.float32))),
    ("out_list", lambda x: np.zeros(X_SHAPE).tolist()),
]


@pytest.mark.parametrize("family", ["instance", "group", "layer", "rms"])
@pytest.mark.parametrize("name, make_out", OUT_CASES, ids=[c[0] for c in OUT_CASES])
def test_out_errors(backend, rng, family, name, make_out):
    fn, kw = valid_call(family, rng)
    out = make_out(kw["x"])
    before = _snapshot(kw, out)
    with pytest.raises((ValueError, TypeError), match="out"):
        fn(**kw, out=out)
    _assert_unchanged(kw, out, before)


@pytest.mark.parametrize("family", ["instance", "group", "layer", "rms"])
def test_in_place_failure_leaves_x(backend, rng, family):
    """out=x with a bad weight: x (== out) unchanged."""
    fn, kw = valid_call(family, rng)
    kw["weight"] = np.ones(7, np.float32)
    before = _snapshot(kw, None)
    with pytest.raises(ValueError, match="weight"):
        fn(**kw, out=kw["x"])
    _assert_unchanged(kw, None, before)


def test_spatial_size_1_is_fine_with_running_stats(backend, rng):
    """The spatial-size check is for training only: use_input_stats=False normalizes one
    spatial element with the running stats."""
    x = _f32(rng.standard_normal((4, C, 1)))
    rm, rv = _f32(rng.standard_normal(C)), _f32(rng.uniform(0.5, 2, C))
    y = fastnorm.instance_norm(x, rm, rv, use_input_stats=False)
    exp = (x - rm[:, None]) / np.sqrt(rv[:, None] + 1e-5)
    np.testing.assert_allclose(y, exp, rtol=1e-5, atol=1e-5)


def test_group_norm_one_value_per_group_but_several_samples(backend):
    """N * (C // G) * prod(spatial) == 2: no error (PyTorch's rule); each group is a constant."""
    x = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    y = fastnorm.group_norm(x, 3, bias=np.array([0.5, 0.25, -1.0]))
    np.testing.assert_allclose(y, np.tile([0.5, 0.25, -1.0], (2, 1)), atol=1e-12)


def test_numpy_integer_arguments_accepted(backend, rng):
    """num_groups / normalized_shape entries may be NumPy integers (e.g. from x.shape math)."""
    x = rng.standard_normal((2, 6, 5))
    np.testing.assert_array_equal(fastnorm.group_norm(x, np.int64(3)), fastnorm.group_norm(x, 3))
    np.testing.assert_array_equal(fastnorm.layer_norm(x, (np.int64(6), np.int32(5))),
                                  fastnorm.layer_norm(x, (6, 5)))
    np.testing.assert_array_equal(fastnorm.rms_norm(x, np.int64(5)), fastnorm.rms_norm(x, 5))


# ------------------------------------------------------------------------------------- layers


INSTANCE_NDIM_CASES = [
    ("InstanceNorm1d", (4, 3, 5, 2)),
    ("InstanceNorm1d", (3,)),
    ("InstanceNorm2d", (4, 3, 5, 2, 2)),
    ("InstanceNorm2d", (3, 5)),
    ("InstanceNorm3d", (4, 3, 5, 2, 2, 2)),
    ("InstanceNorm3d", (3, 5, 2)),
]


@pytest.mark.parametrize("cls, shape", INSTANCE_NDIM_CASES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("track", [True, False])
def test_instance_layer_wrong_ndim(backend, rng, cls, shape, training, track):
    layer = getattr(fastnorm, cls)(3, track_running_stats=track).train(training)
    state = {k: np.array(v, copy=True) for k, v in layer.state_dict().items()}
    with pytest.raises(ValueError, match=r"(?i)dim|\bx\b|input"):
        layer(_f32(rng.standard_normal(shape)))
    for k, v in layer.state_dict().items():
        np.testing.assert_array_equal(v, state[k], err_msg=k)


@pytest.mark.parametrize("cls, shape, axis", [
    ("InstanceNorm2d", (2, 4, 5, 5), 1),
    ("InstanceNorm2d", (2, 5, 5, 4), -1),
    ("InstanceNorm2d", (2, 3, 5, 4), -1),
    ("InstanceNorm1d", (2, 5), 1),
    ("InstanceNorm1d", (2, 7, 2), -1),
    ("InstanceNorm3d", (2, 2, 2, 2, 2), 1),
])
@pytest.mark.parametrize("affine, track", [(True, False), (True, True), (False, True)])
@pytest.mark.parametrize("training", [True, False])
def test_instance_layer_wrong_num_features(backend, rng, cls, shape, axis, affine, track,
                                           training):
    """Mismatched channels raise when the layer has per-channel arrays (weight or running
    stats); affine=False, track_running_stats=False only warns (see test_families_layers)."""
    layer = getattr(fastnorm, cls)(3, affine=affine, track_running_stats=track,
                                   axis=axis).train(training)
    state = {k: np.array(v, copy=True) for k, v in layer.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(ValueError):
            layer(_f32(rng.standard_normal(shape)))
    for k, v in layer.state_dict().items():
        np.testing.assert_array_equal(v, state[k], err_msg=k)


@pytest.mark.parametrize("shape, axis", [((2, 4, 5), 1), ((2, 5, 4), -1), ((2, 3, 5), -1),
                                         ((2, 12), 1)])
def test_group_layer_wrong_channels(backend, rng, shape, axis):
    layer = fastnorm.GroupNorm(2, 6, axis=axis)
    with pytest.raises(ValueError, match=r"(?i)channel|weight|shape|num_channels"):
        layer(_f32(rng.standard_normal(shape)))


def test_group_layer_affine_false_wrong_channels(backend, rng):
    """Without affine there is no weight to check, but C still must be num_channels."""
    layer = fastnorm.GroupNorm(2, 6, affine=False)
    with pytest.raises(ValueError):
        layer(_f32(rng.standard_normal((2, 4, 5))))


@pytest.mark.parametrize("groups, channels, exc", [(4, 6, ValueError), (0, 6, ValueError),
                                                   (-2, 6, ValueError), (12, 6, ValueError),
                                                   (1.5, 6, TYPE_OR_VALUE),
                                                   ("2", 6, TYPE_OR_VALUE)])
def test_group_layer_constructor_errors(groups, channels, exc):
    with pytest.raises(exc, match="num_groups"):
        fastnorm.GroupNorm(groups, channels)


@pytest.mark.parametrize("cls", ["LayerNorm", "RMSNorm"])
@pytest.mark.parametrize("shape", [(4, 5, 3), (4, 3), (3,), (4, 3, 5, 1)])
def test_trailing_layer_wrong_shape(backend, rng, cls, shape):
    layer = getattr(fastnorm, cls)((3, 5))
    with pytest.raises(ValueError, match="normalized_shape|shape"):
        layer(_f32(rng.standard_normal(shape)))


@pytest.mark.parametrize("make", [
    lambda: fastnorm.InstanceNorm1d(3), lambda: fastnorm.InstanceNorm2d(3, affine=True),
    lambda: fastnorm.GroupNorm(1, 3), lambda: fastnorm.LayerNorm(5), lambda: fastnorm.RMSNorm(5)])
@pytest.mark.parametrize("dtype", [np.int32, np.int64, bool, np.complex64, object])
def test_layer_non_float_input(backend, rng, make, dtype):
    layer = make()
    shape = (2, 3, 5) if not isinstance(layer, fastnorm.InstanceNorm2d) else (2, 3, 5, 5)
    with pytest.raises(TypeError):
        layer(rng.standard_normal(shape).astype(dtype))


def test_instance_layer_spatial_size_1(backend, rng):
    layer = fastnorm.InstanceNorm1d(3, affine=True, track_running_stats=True)
    with pytest.raises(ValueError, match=SPATIAL):
        layer(_f32(rng.standard_normal((4, 3, 1))))
    np.testing.assert_array_equal(layer.running_mean, 0.0)
    np.testing.assert_array_equal(layer.running_var, 1.0)
    assert layer.num_batches_tracked == 0
    # eval with running stats: one spatial element is fine
    layer.eval()
    assert layer(_f32(rng.standard_normal((4, 3, 1)))).shape == (4, 3, 1)
    # eval without tracking still uses instance stats: error
    layer = fastnorm.InstanceNorm1d(3).eval()
    with pytest.raises(ValueError, match=SPATIAL):
        layer(_f32(rng.standard_normal((4, 3, 1))))


def test_group_layer_one_value(backend, rng):
    layer = fastnorm.GroupNorm(3, 3)
    with pytest.raises(ValueError, match=ONE_PER_CHANNEL):
        layer(_f32(rng.standard_normal((1, 3))))
    layer.eval()  # no running stats: eval is no different
    with pytest.raises(ValueError, match=ONE_PER_CHANNEL):
        layer(_f32(rng.standard_normal((1, 3, 1))))


LAYER_MAKERS = {
    "InstanceNorm2d": (lambda: fastnorm.InstanceNorm2d(3, affine=True), (2, 3, 4, 3)),
    "InstanceNorm2d_tracking": (lambda: fastnorm.InstanceNorm2d(3, track_running_stats=True),
                                (2, 3, 4, 3)),
    "GroupNorm": (lambda: fastnorm.GroupNorm(3, 3), (2, 3, 4, 3)),
    "LayerNorm": (lambda: fastnorm.LayerNorm((4, 3)), (2, 3, 4, 3)),
    "RMSNorm": (lambda: fastnorm.RMSNorm(3), (2, 3, 4, 3)),
}


@pytest.mark.parametrize("name", list(LAYER_MAKERS))
@pytest.mark.parametrize("training", [True, False])
def test_backward_before_forward(backend, rng, name, training):
    make, shape = LAYER_MAKERS[name]
    layer = make().train(training)
    with pytest.raises(ValueError, match=r"(?i)forward"):
        layer.backward(_f32(rng.standard_normal(shape)))


@pytest.mark.parametrize("name", list(LAYER_MAKERS))
@pytest.mark.parametrize("dy_shape", [(2, 3, 4, 4), (2, 3, 12), (4, 3, 4, 3), (2, 3, 4, 3, 1)])
def test_backward_wrong_dy_shape(backend, rng, name, dy_shape):
    make, shape = LAYER_MAKERS[name]
    layer = make()
    layer(_f32(rng.standard_normal(shape)))
    with pytest.raises(ValueError, match=r"\bdy\b"):
        layer.backward(_f32(rng.standard_normal(dy_shape)))


@pytest.mark.parametrize("make, key, shape", [
    (lambda: fastnorm.InstanceNorm2d(3, affine=True, track_running_stats=True), "weight", (4,)),
    (lambda: fastnorm.InstanceNorm2d(3, affine=True, track_running_stats=True), "running_var",
     (1, 3)),
    (lambda: fastnorm.GroupNorm(3, 6), "weight", (3,)),
    (lambda: fastnorm.GroupNorm(3, 6), "bias", (7,)),
    (lambda: fastnorm.LayerNorm((2, 3)), "weight", (6,)),
    (lambda: fastnorm.LayerNorm((2, 3)), "bias", (3, 2)),
    (lambda: fastnorm.LayerNorm((2, 3), bias=False), "weight", (3,)),
    (lambda: fastnorm.RMSNorm((2, 3)), "weight", (2,)),
    (lambda: fastnorm.RMSNorm(4), "weight", ()),
])
def test_load_state_dict_wrong_shape(rng, make, key, shape):
    layer = make()
    good = {k: np.array(v, copy=True) for k, v in layer.state_dict().items()}
    bad = {k: (rng.uniform(0.5, 2.0, np.shape(v)).astype(np.float32)
               if k != "num_batches_tracked" else np.asarray(5)) for k, v in good.items()}
    bad[key] = np.ones(shape, np.float32)
    with pytest.raises(ValueError, match=key):
        layer.load_state_dict(bad)
    for k, v in layer.state_dict().items():  # nothing loaded, not even the good entries
        np.testing.assert_array_equal(v, good[k], err_msg=k)
