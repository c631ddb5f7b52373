"""BatchNorm layers: state, train/eval, running statistics, state_dict, against the oracle."""

import numbers

import numpy as np
import pytest

import fastnorm
import naive
from conftest import (assert_grad_close, assert_output_close, assert_stats_close, coarser,
                      random_input, random_params, set_layer_arrays)

LAYER_SHAPES = [
    ("BatchNorm1d", (6, 3)),
    ("BatchNorm1d", (4, 3, 7)),
    ("BatchNorm2d", (4, 3, 5, 6)),
    ("BatchNorm3d", (2, 3, 4, 3, 5)),
    ("BatchNorm", (5, 3)),
    ("BatchNorm", (3, 3, 2, 2, 2, 2)),
]


def to_layout(shape, axis):
    return shape if axis == 1 else (shape[0],) + shape[2:] + (shape[1],)


@pytest.mark.parametrize("cls", ["BatchNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d"])
@pytest.mark.parametrize("dtype", [None, np.float32, np.float64])
def test_initial_state(cls, dtype):
    kw = {} if dtype is None else {"dtype": dtype}
    layer = getattr(fastnorm, cls)(4, **kw)
    dt = np.dtype(np.float32 if dtype is None else dtype)
    assert layer.training is True
    for name, value in [("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0),
                        ("running_var", 1.0)]:
        arr = getattr(layer, name)
        assert isinstance(arr, np.ndarray), name
        assert arr.shape == (4,) and arr.dtype == dt, (name, arr.shape, arr.dtype)
        np.testing.assert_array_equal(arr, value)
    assert isinstance(layer.num_batches_tracked, numbers.Integral)
    assert layer.num_batches_tracked == 0


def test_affine_false_and_no_running_stats():
    layer = fastnorm.BatchNorm2d(3, affine=False)
    assert layer.weight is None and layer.bias is None
    assert layer.running_mean is not None
    layer = fastnorm.BatchNorm2d(3, track_running_stats=False)
    assert layer.running_mean is None and layer.running_var is None
    assert layer.weight is not None


def test_train_eval_return_self():
    layer = fastnorm.BatchNorm1d(2)
    assert layer.eval() is layer and layer.training is False
    assert layer.train() is layer and layer.training is True
    assert layer.train(False) is layer and layer.training is False
    assert layer.train(True) is layer and layer.training is True


@pytest.mark.parametrize("cls, shape", LAYER_SHAPES)
@pytest.mark.parametrize("axis", [1, -1])
@pytest.mark.parametrize("momentum", [0.1, 0.7, None])
def test_training_steps_then_eval(backend, rng, cls, shape, axis, momentum):
    """Several training steps: outputs, running stats (EMA or cumulative average) and
    num_batches_tracked follow the oracle; eval then uses the running stats."""
    shape = to_layout(shape, axis)
    c = 3
    layer = getattr(fastnorm, cls)(c, momentum=momentum, axis=axis, dtype=np.float64)
    w, b, _, _ = random_params(rng, c, np.float64)
    set_layer_arrays(layer, weight=w, bias=b)
    rm, rv = np.zeros(c), np.ones(c)
    batch_means = []
    for step in range(1, 5):
        x = random_input(rng, shape, np.float64, offset=step, scale=step)
        factor = 1.0 / step if momentum is None else momentum
        ref = naive.batch_norm(x, rm, rv, w, b, training=True, momentum=factor, axis=axis)
        rm, rv = ref["running_mean"], ref["running_var"]
        batch_means.append(ref["mean"])
        y = layer(x)
        assert_output_close(y, ref["y"], np.float64, err_msg=f"step {step}")
        assert_stats_close(layer.running_mean, rm, err_msg=f"step {step}")
        assert_stats_close(layer.running_var, rv, err_msg=f"step {step}")
        assert layer.num_batches_tracked == step
    if momentum is None:  # cumulative moving average = plain average of the batch means
        np.testing.assert_allclose(layer.running_mean, np.mean(batch_means, axis=0), rtol=1e-12)

    layer.eval()
    x = random_input(rng, shape, np.float64, offset=2.0)
    ref = naive.batch_norm(x, rm, rv, w, b, training=False, axis=axis)
    y = layer.forward(x)
    assert_output_close(y, ref["y"], np.float64)
    assert_stats_close(layer.running_mean, rm)  # eval changes nothing
    assert_stats_close(layer.running_var, rv)
    assert layer.num_batches_tracked == 4


@pytest.mark.parametrize("axis", [1, -1])
def test_track_running_stats_false_uses_batch_stats_in_eval(backend, rng, axis):
    layer = fastnorm.BatchNorm2d(3, track_running_stats=False, axis=axis, dtype=np.float64)
    x = random_input(rng, to_layout((4, 3, 5, 2), axis), np.float64, offset=3.0)
    ref = naive.batch_norm(x, training=True, axis=axis)
    assert_output_close(layer(x), ref["y"], np.float64)
    layer.eval()
    assert_output_close(layer(x), ref["y"], np.float64)
    assert layer.running_mean is None and layer.running_var is None
    dy = rng.standard_normal(x.shape)
    dx = layer.backward(dy)
    ref_dx, ref_dw, ref_db = naive.batch_norm_backward(x, dy, ref["mean"], ref["var"], axis=axis)
    assert_grad_close(dx, ref_dx, np.float64)
    assert_grad_close(layer.grad_weight, ref_dw, np.float64)
    assert_grad_close(layer.grad_bias, ref_db, np.float64)


def test_affine_false_matches_oracle(backend, rng):
    layer = fastnorm.BatchNorm1d(3, affine=False, momentum=0.3)
    x = random_input(rng, (8, 3, 4), np.float32, offset=-1.0)
    ref = naive.batch_norm(x, np.zeros(3), np.ones(3), training=True, momentum=0.3)
    assert_output_close(layer(x), ref["y"], np.float32)
    assert_stats_close(layer.running_mean, ref["running_mean"])
    assert_stats_close(layer.running_var, ref["running_var"])
    dy = random_input(rng, x.shape, np.float32)
    dx = layer.backward(dy)
    ref_dx, _, _ = naive.batch_norm_backward(x, dy, ref["mean"], ref["var"])
    assert_grad_close(dx, ref_dx, np.float32)
    assert layer.grad_weight is None and layer.grad_bias is None


def test_call_equals_forward(backend, rng):
    a = fastnorm.BatchNorm2d(3)
    b = fastnorm.BatchNorm2d(3)
    x = random_input(rng, (2, 3, 4, 4), np.float32)
    np.testing.assert_allclose(a(x), b.forward(x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(a.running_mean, b.running_mean, rtol=1e-6, atol=1e-7)
    assert a.num_batches_tracked == b.num_batches_tracked == 1


@pytest.mark.parametrize("in_dtype", [np.float16, np.float32, np.float64])
def test_layer_keeps_input_dtype(backend, rng, in_dtype):
    """A float32 layer returns the input's dtype (float16 data: float16 out, float32 stats)."""
    layer = fastnorm.BatchNorm2d(3)
    x = random_input(rng, (4, 3, 3, 5), in_dtype, offset=0.5)
    ref = naive.batch_norm(x, np.zeros(3), np.ones(3), training=True)
    y = layer(x)
    assert_output_close(y, ref["y"], in_dtype)
    assert layer.running_mean.dtype == np.float32
    assert_stats_close(layer.running_mean, ref["running_mean"])
    assert_stats_close(layer.running_var, ref["running_var"])
    dy = random_input(rng, x.shape, in_dtype)
    dx = layer.backward(dy)
    assert dx.dtype == np.dtype(in_dtype) and dx.shape == x.shape
    ref_dx, ref_dw, ref_db = naive.batch_norm_backward(x, dy, ref["mean"], ref["var"])
    assert_grad_close(dx, ref_dx, in_dtype)
    assert layer.grad_weight.shape == (3,) and layer.grad_bias.shape == (3,)
    # parameter gradients may be kept in the parameters' dtype (float32 here)
    assert_grad_close(layer.grad_weight, ref_dw, coarser(in_dtype, np.float32))
    assert_grad_close(layer.grad_bias, ref_db, coarser(in_dtype, np.float32))


@pytest.mark.parametrize("cls, ndims", [("BatchNorm1d", (2, 3)), ("BatchNorm2d", (4,)),
                                        ("BatchNorm3d", (5,)), ("BatchNorm", (2, 3, 4, 5, 6))])
def test_accepted_ndims(backend, rng, cls, ndims):
    for nd in ndims:
        for axis in (1, -1):
            shape = to_layout((3, 2) + (2,) * (nd - 2), axis)
            layer = getattr(fastnorm, cls)(2, axis=axis, dtype=np.float64)
            x = random_input(rng, shape, np.float64)
            assert_output_close(layer(x), naive.batch_norm(x, training=True, axis=axis)["y"],
                                np.float64)


# ------------------------------------------------------------------------------ state_dict


def test_state_dict_keys_and_types(rng):
    layer = fastnorm.BatchNorm2d(3)
    layer(random_input(rng, (4, 3, 2, 2), np.float32))
    layer(random_input(rng, (4, 3, 2, 2), np.float32))
    sd = layer.state_dict()
    assert set(sd) == {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
    for k, v in sd.items():
        assert isinstance(v, np.ndarray), (k, type(v))
    assert int(sd["num_batches_tracked"]) == 2
    np.testing.assert_array_equal(sd["running_mean"], layer.running_mean)
    np.testing.assert_array_equal(sd["weight"], layer.weight)
    assert set(fastnorm.BatchNorm2d(3, affine=False).state_dict()) == {
        "running_mean", "running_var", "num_batches_tracked"}
    assert set(fastnorm.BatchNorm2d(3, track_running_stats=False).state_dict()) == {
        "weight", "bias"}


@pytest.mark.parametrize("momentum", [0.1, None])
def test_state_dict_round_trip(backend, rng, momentum):
    """Load a trained layer's state into a fresh one: identical eval outputs, and training
    continues identically (num_batches_tracked drives the cumulative average)."""
    a = fastnorm.BatchNorm1d(3, momentum=momentum)
    set_layer_arrays(a, weight=rng.uniform(0.5, 2, 3), bias=rng.standard_normal(3))
    for _ in range(3):
        a(random_input(rng, (8, 3, 4), np.float32, offset=2.0))
    b = fastnorm.BatchNorm1d(3, momentum=momentum)
    b.load_state_dict(a.state_dict())
    assert b.num_batches_tracked == 3
    for name in ("weight", "bias", "running_mean", "running_var"):
        np.testing.assert_array_equal(getattr(b, name), getattr(a, name))
    x = random_input(rng, (8, 3, 4), np.float32, offset=2.0)
    np.testing.assert_allclose(b(x), a(x), rtol=1e-6, atol=1e-6)  # both train one more step
    np.testing.assert_allclose(b.running_mean, a.running_mean, rtol=1e-6)
    np.testing.assert_allclose(b.running_var, a.running_var, rtol=1e-6)
    a.eval(), b.eval()
    np.testing.assert_allclose(b(x), a(x), rtol=1e-6, atol=1e-6)


def test_load_state_dict_accepts_array_likes(backend, rng):
    layer = fastnorm.BatchNorm1d(2)
    layer.load_state_dict({"weight": [2.0, 3.0], "bias": (0.5, -0.5), "running_mean": [1.0, -1.0],
                           "running_var": np.array([4.0, 0.25]), "num_batches_tracked": 7})
    assert layer.num_batches_tracked == 7
    assert layer.weight.dtype == np.float32  # keeps the layer dtype
    layer.eval()
    x = random_input(rng, (5, 2), np.float32)
    ref = naive.batch_norm(x, [1.0, -1.0], [4.0, 0.25], [2.0, 3.0], [0.5, -0.5])
    assert_output_close(layer(x), ref["y"], np.float32)


def test_load_state_dict_does_not_alias(rng):
    """The loaded arrays are copied: training the layer leaves the source dict unchanged."""
    src = fastnorm.BatchNorm1d(2).state_dict()
    src = {k: np.array(v, copy=True) for k, v in src.items()}
    keep = {k: v.copy() for k, v in src.items()}
    layer = fastnorm.BatchNorm1d(2)
    layer.load_state_dict(src)
    layer(random_input(rng, (4, 2), np.float32, offset=5.0))
    for k in src:
        np.testing.assert_array_equal(src[k], keep[k], err_msg=k)


def test_load_state_dict_copies_into_existing_arrays(rng):
    """Like PyTorch's ``param.copy_``: references to the layer's arrays stay live."""
    layer = fastnorm.BatchNorm2d(4)
    arrays = {name: getattr(layer, name) for name in ("weight", "bias", "running_mean", "running_var")}
    state = {name: rng.standard_normal(4).astype(np.float64) for name in arrays}
    state["running_var"] = np.abs(state["running_var"])
    state["num_batches_tracked"] = np.array(7)
    layer.load_state_dict(state)
    for name, array in arrays.items():
        assert getattr(layer, name) is array
        assert array.dtype == np.float32
        np.testing.assert_array_equal(array, state[name].astype(np.float32))
    assert layer.num_batches_tracked == 7 and isinstance(layer.num_batches_tracked, int)
