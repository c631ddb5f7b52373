"""Every error case: the right exception, a message naming the argument, and nothing written."""

import numpy as np
import pytest

import fastnorm
from error_cases import _astype, _read_only, _set  # noqa: E402

C = 3
SHAPE = (4, C, 5)


def valid_call(rng):
    """Arguments of a valid training call with running stats (float32)."""
    return dict(
        x=rng.standard_normal(SHAPE).astype(np.float32),
        running_mean=rng.standard_normal(C).astype(np.float32),
        running_var=rng.uniform(0.5, 2, C).astype(np.float32),
        weight=rng.standard_normal(C).astype(np.float32),
        bias=rng.standard_normal(C).astype(np.float32),
        training=True,
        momentum=0.1,
        eps=1e-5,
        axis=1,
    )


def _resize(name, n):
    return lambda kw: kw.update({name: np.ones(n, dtype=kw[name].dtype)})


def _read_only_arg(name):
    return lambda kw: kw.update({name: _read_only(kw[name])})


ONE_PER_CHANNEL = r"^Expected more than 1 value per channel when training"

# (id, how to break the valid call, exception types, message regex)
CASES = [
    ("x_int32", _astype("x", np.int32), TypeError, r"\bx\b"),
    ("x_int64", _astype("x", np.int64), TypeError, r"\bx\b"),
    ("x_uint8", _astype("x", np.uint8), TypeError, r"\bx\b"),
    ("x_bool", _astype("x", bool), TypeError, r"\bx\b"),
    ("x_complex64", _astype("x", np.complex64), TypeError, r"\bx\b"),
    ("x_complex128", _astype("x", np.complex128), TypeError, r"\bx\b"),
    ("x_object", _astype("x", object), TypeError, r"\bx\b"),
    ("x_1d", lambda kw: kw.update(x=kw["x"][:, 0, 0]), ValueError, r"\bx\b"),
    ("x_0d", lambda kw: kw.update(x=np.float32(1.0)), ValueError, r"\bx\b"),
    ("weight_long", _resize("weight", C + 1), ValueError, "weight"),
    ("weight_short", _resize("weight", C - 1), ValueError, "weight"),
    ("bias_long", _resize("bias", C + 1), ValueError, "bias"),
    ("bias_2d", lambda kw: kw.update(bias=np.ones((C, 2), np.float32)), ValueError, "bias"),
    ("running_mean_long", _resize("running_mean", C + 1), ValueError, "running_mean"),
    ("running_var_short", _resize("running_var", C - 1), ValueError, "running_var"),
    ("running_mean_only", _set(running_var=None), ValueError, "running_(mean|var)"),
    ("running_var_only", _set(running_mean=None), ValueError, "running_(mean|var)"),
    ("running_mean_only_eval", _set(running_var=None, training=False), ValueError,
     "running_(mean|var)"),
    ("eval_without_running_stats", _set(running_mean=None, running_var=None, training=False),
     ValueError, "running_(mean|var)"),
    ("running_mean_read_only", _read_only_arg("running_mean"), ValueError, "running_mean"),
    ("running_var_read_only", _read_only_arg("running_var"), ValueError, "running_var"),
    ("one_value_per_channel_2d", lambda kw: kw.update(x=kw["x"][:1, :, 0]), ValueError,
     ONE_PER_CHANNEL),
    ("one_value_per_channel_3d", lambda kw: kw.update(x=kw["x"][:1, :, :1]), ValueError,
     ONE_PER_CHANNEL),
    ("one_value_per_channel_last", lambda kw: kw.update(x=kw["x"][:1, :, :1].reshape(1, 1, C), axis=-1),
     ValueError, ONE_PER_CHANNEL),
    ("one_value_per_channel_no_stats", lambda kw: kw.update(x=kw["x"][:1, :, 0], running_mean=None,
                                                            running_var=None),
     ValueError, ONE_PER_CHANNEL),
    ("axis_too_big", _set(axis=3), (ValueError, TypeError), "axis"),
    ("axis_too_small", _set(axis=-4), (ValueError, TypeError), "axis"),
    ("axis_float", _set(axis=1.5), (ValueError, TypeError), "axis"),
    ("axis_str", _set(axis="1"), (ValueError, TypeError), "axis"),
    ("axis_none", _set(axis=None), (ValueError, TypeError), "axis"),
]

OUT_CASES = [
    ("out_wrong_shape", lambda kw: np.zeros((4, 5, C), np.float32), (ValueError, TypeError)),
    ("out_wrong_size", lambda kw: np.zeros((4, C, 6), np.float32), (ValueError, TypeError)),
    ("out_wrong_dtype", lambda kw: np.zeros(SHAPE, np.float64), (ValueError, TypeError)),
    ("out_float16", lambda kw: np.zeros(SHAPE, np.float16), (ValueError, TypeError)),
    ("out_read_only", lambda kw: _read_only(np.zeros(SHAPE, np.float32)), (ValueError, TypeError)),
    ("out_list", lambda kw: [[[0.0] * 5] * C] * 4, (ValueError, TypeError)),
]


def _snapshot(kw, out):
    arrays = {k: np.array(v, copy=True) for k, v in kw.items() if isinstance(v, np.ndarray)}
    if isinstance(out, np.ndarray):
        arrays["out"] = out.copy()
    return arrays


def _assert_unchanged(kw, out, before):
    for k, v in before.items():
        cur = out if k == "out" else kw[k]
        np.testing.assert_array_equal(cur, v, err_msg=f"{k} was modified by a failing call")


@pytest.mark.parametrize("name, breaker, exc, match", CASES, ids=[c[0] for c in CASES])
def test_functional_errors(backend, rng, name, breaker, exc, match):
    kw = valid_call(rng)
    breaker(kw)
    with pytest.raises(exc, match=match):
        fastnorm.batch_norm(**kw)


@pytest.mark.parametrize("name, make_out, exc", OUT_CASES, ids=[c[0] for c in OUT_CASES])
def test_out_errors(backend, rng, name, make_out, exc):
    kw = valid_call(rng)
    out = make_out(kw)
    before = _snapshot(kw, out)
    with pytest.raises(exc, match="out"):
        fastnorm.batch_norm(**kw, out=out)
    _assert_unchanged(kw, out, before)


@pytest.mark.parametrize("name, breaker, exc, match", CASES, ids=[c[0] for c in CASES])
def test_failed_call_writes_nothing(backend, rng, name, breaker, exc, match):
    """Running stats, out and inputs are untouched by a call that fails (in every case)."""
    kw = valid_call(rng)
    breaker(kw)
    x = np.asarray(kw["x"])
    out = np.full(x.shape, 7.0, dtype=np.float32) if x.ndim >= 1 else None
    before = _snapshot(kw, out)
    with pytest.raises((ValueError, TypeError)):
        fastnorm.batch_norm(**kw, out=out)
    _assert_unchanged(kw, out, before)


def test_in_place_failure_leaves_x(backend, rng):
    """out=x with a bad weight: x (== out) unchanged."""
    kw = valid_call(rng)
    kw["weight"] = np.ones(C + 1, np.float32)
    before = _snapshot(kw, None)
    with pytest.raises(ValueError, match="weight"):
        fastnorm.batch_norm(**kw, out=kw["x"])
    _assert_unchanged(kw, None, before)


# ------------------------------------------------------------------------------------- layers


LAYER_NDIM_CASES = [
    ("BatchNorm1d", (4, C, 5, 2)),
    ("BatchNorm1d", (C,)),
    ("BatchNorm2d", (4, C, 5)),
    ("BatchNorm2d", (4, C, 5, 2, 2)),
    ("BatchNorm2d", (4, C)),
    ("BatchNorm3d", (4, C, 5, 2)),
    ("BatchNorm3d", (4, C, 5, 2, 2, 2)),
    ("BatchNorm", (C,)),
]


@pytest.mark.parametrize("cls, shape", LAYER_NDIM_CASES)
@pytest.mark.parametrize("training", [True, False])
def test_layer_wrong_ndim(backend, rng, cls, shape, training):
    layer = getattr(fastnorm, cls)(C).train(training)
    state = {k: np.array(v, copy=True) for k, v in layer.state_dict().items()}
    with pytest.raises(ValueError, match=r"(?i)dim|\bx\b|input"):
        layer(rng.standard_normal(shape).astype(np.float32))
    for k, v in layer.state_dict().items():
        np.testing.assert_array_equal(v, state[k], err_msg=k)


@pytest.mark.parametrize("cls, shape, axis", [
    ("BatchNorm2d", (2, C + 1, 5, 5), 1),
    ("BatchNorm2d", (2, 5, 5, C + 1), -1),
    ("BatchNorm2d", (2, C, 5, C + 1), -1),
    ("BatchNorm1d", (5, C - 1), 1),
    ("BatchNorm1d", (5, 2, C + 2), -1),
    ("BatchNorm3d", (2, C + 1, 2, 2, 2), 1),
    ("BatchNorm", (2, C + 1), 1),
])
@pytest.mark.parametrize("training", [True, False])
def test_layer_wrong_num_features(backend, rng, cls, shape, axis, training):
    layer = getattr(fastnorm, cls)(C, axis=axis).train(training)
    state = {k: np.array(v, copy=True) for k, v in layer.state_dict().items()}
    with pytest.raises(ValueError, match=r"(?i)channel|feature|weight|running|shape"):
        layer(rng.standard_normal(shape).astype(np.float32))
    for k, v in layer.state_dict().items():
        np.testing.assert_array_equal(v, state[k], err_msg=k)
    assert layer.num_batches_tracked == 0


@pytest.mark.parametrize("dtype", [np.int32, np.int64, bool, np.complex64, object])
def test_layer_non_float_input(backend, rng, dtype):
    layer = fastnorm.BatchNorm1d(C)
    with pytest.raises(TypeError):
        layer(rng.standard_normal((4, C)).astype(dtype))
    assert layer.num_batches_tracked == 0


def test_layer_one_value_per_channel(backend, rng):
    layer = fastnorm.BatchNorm1d(C)
    with pytest.raises(ValueError, match=ONE_PER_CHANNEL):
        layer(rng.standard_normal((1, C)).astype(np.float32))
    np.testing.assert_array_equal(layer.running_mean, 0.0)
    np.testing.assert_array_equal(layer.running_var, 1.0)
    assert layer.num_batches_tracked == 0
    # eval mode with running stats: a single sample is fine
    layer.eval()
    y = layer(rng.standard_normal((1, C)).astype(np.float32))
    assert y.shape == (1, C)


def test_backward_before_forward(backend, rng):
    for layer in (fastnorm.BatchNorm2d(C), fastnorm.BatchNorm2d(C).eval(),
                  fastnorm.BatchNorm(C, affine=False)):
        with pytest.raises(ValueError, match=r"(?i)forward"):
            layer.backward(rng.standard_normal((2, C, 3, 3)).astype(np.float32))


@pytest.mark.parametrize("dy_shape", [(2, C, 3, 4), (2, C, 4, 3, 1), (2, C, 12), (4, C, 3, 3)])
@pytest.mark.parametrize("training", [True, False])
def test_backward_wrong_dy_shape(backend, rng, dy_shape, training):
    layer = fastnorm.BatchNorm2d(C).train(training)
    layer(rng.standard_normal((2, C, 4, 3)).astype(np.float32))
    with pytest.raises(ValueError, match=r"\bdy\b"):
        layer.backward(rng.standard_normal(dy_shape).astype(np.float32))


@pytest.mark.parametrize("key, shape", [("weight", (C + 1,)), ("bias", (C - 1,)),
                                        ("running_mean", (C + 1,)), ("running_var", (1, C)),
                                        ("weight", ()), ("running_var", (2 * C,))])
def test_load_state_dict_wrong_shape(key, shape, rng):
    layer = fastnorm.BatchNorm2d(C)
    good = {k: np.array(v, copy=True) for k, v in layer.state_dict().items()}
    bad = {k: rng.standard_normal(np.shape(v)).astype(np.float32) if k != "num_batches_tracked"
           else np.asarray(5) for k, v in good.items()}
    bad[key] = np.ones(shape, np.float32)
    with pytest.raises(ValueError, match=key):
        layer.load_state_dict(bad)
    # nothing was loaded, not even the well-shaped entries
    for k, v in layer.state_dict().items():
        np.testing.assert_array_equal(v, good[k], err_msg=k)
