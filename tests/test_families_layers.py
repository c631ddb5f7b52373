"""InstanceNorm / GroupNorm / LayerNorm / RMSNorm layers: state, train/eval, running statistics
(InstanceNorm), unbatched input, state_dict, against the oracle."""

import numbers
import warnings

import naive
import numpy as np
import pytest
from conftest import (
    assert_grad_close,
    assert_output_close,
    assert_stats_close,
    coarser,
    random_input,
    random_params,
    set_layer_arrays,
)

import fastnorm


def to_layout(shape, axis):
    return shape if axis == 1 else (shape[0],) + shape[2:] + (shape[1],)


# --------------------------------------------------------------------------- initial state


@pytest.mark.parametrize("cls", ["InstanceNorm", "InstanceNorm1d", "InstanceNorm2d",
                                 "InstanceNorm3d"])
@pytest.mark.parametrize("dtype", [None, np.float32, np.float64])
def test_instance_initial_state(cls, dtype):
    kw = {} if dtype is None else {"dtype": dtype}
    dt = np.dtype(np.float32 if dtype is None else dtype)
    layer = getattr(fastnorm, cls)(4, **kw)
    assert layer.training is True
    assert layer.weight is None and layer.bias is None  # affine=False by default
    assert layer.running_mean is None and layer.running_var is None  # no tracking by default
    assert set(layer.state_dict()) == set()
    layer = getattr(fastnorm, cls)(4, affine=True, track_running_stats=True, **kw)
    for name, value in [("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0),
                        ("running_var", 1.0)]:
        arr = getattr(layer, name)
        assert isinstance(arr, np.ndarray), name
        assert arr.shape == (4,) and arr.dtype == dt, (name, arr.shape, arr.dtype)
        np.testing.assert_array_equal(arr, value)
    assert isinstance(layer.num_batches_tracked, numbers.Integral)
    assert layer.num_batches_tracked == 0
    assert set(layer.state_dict()) == {"weight", "bias", "running_mean", "running_var",
                                       "num_batches_tracked"}
    assert set(getattr(fastnorm, cls)(4, track_running_stats=True).state_dict()) == {
        "running_mean", "running_var", "num_batches_tracked"}
    assert set(getattr(fastnorm, cls)(4, affine=True).state_dict()) == {"weight", "bias"}


@pytest.mark.parametrize("dtype", [None, np.float32, np.float64])
def test_group_layer_norm_rms_initial_state(dtype):
    kw = {} if dtype is None else {"dtype": dtype}
    dt = np.dtype(np.float32 if dtype is None else dtype)
    g = fastnorm.GroupNorm(2, 6, **kw)
    assert g.training is True
    assert g.weight.shape == (6,) and g.weight.dtype == dt and np.all(g.weight == 1.0)
    assert g.bias.shape == (6,) and g.bias.dtype == dt and np.all(g.bias == 0.0)
    assert set(g.state_dict()) == {"weight", "bias"}
    g = fastnorm.GroupNorm(2, 6, affine=False, **kw)
    assert g.weight is None and g.bias is None and set(g.state_dict()) == set()

    for ns, shape in [(5, (5,)), ((3, 4), (3, 4)), ([2, 3], (2, 3))]:
        ln = fastnorm.LayerNorm(ns, **kw)
        assert ln.weight.shape == shape and ln.weight.dtype == dt and np.all(ln.weight == 1.0)
        assert ln.bias.shape == shape and ln.bias.dtype == dt and np.all(ln.bias == 0.0)
        assert set(ln.state_dict()) == {"weight", "bias"}
        ln = fastnorm.LayerNorm(ns, bias=False, **kw)
        assert ln.weight.shape == shape and ln.bias is None
        assert set(ln.state_dict()) == {"weight"}
        ln = fastnorm.LayerNorm(ns, elementwise_affine=False, **kw)
        assert ln.weight is None and ln.bias is None and set(ln.state_dict()) == set()
        r = fastnorm.RMSNorm(ns, **kw)
        assert r.weight.shape == shape and r.weight.dtype == dt and np.all(r.weight == 1.0)
        assert r.bias is None
        assert set(r.state_dict()) == {"weight"}
        r = fastnorm.RMSNorm(ns, elementwise_affine=False, **kw)
        assert r.weight is None and set(r.state_dict()) == set()


@pytest.mark.parametrize("make", [lambda: fastnorm.InstanceNorm2d(2),
                                  lambda: fastnorm.GroupNorm(1, 2), lambda: fastnorm.LayerNorm(2),
                                  lambda: fastnorm.RMSNorm(2)])
def test_train_eval_return_self(make):
    layer = make()
    assert layer.eval() is layer and layer.training is False
    assert layer.train() is layer and layer.training is True
    assert layer.train(False) is layer and layer.training is False


# ------------------------------------------------------------------------------ InstanceNorm

INSTANCE_SHAPES = [("InstanceNorm1d", (4, 3, 7)), ("InstanceNorm2d", (4, 3, 5, 6)),
                   ("InstanceNorm3d", (2, 3, 4, 3, 5)), ("InstanceNorm", (3, 3, 2, 5))]


@pytest.mark.parametrize("cls, shape", INSTANCE_SHAPES)
@pytest.mark.parametrize("axis", [1, -1])
@pytest.mark.parametrize("momentum", [0.1, 0.7, None])
@pytest.mark.parametrize("affine", [True, False])
def test_instance_training_steps_then_eval(backend, rng, cls, shape, axis, momentum, affine):
    """track_running_stats=True: outputs use instance stats in training; running stats follow
    the oracle (momentum=None: cumulative average 1 / num_batches_tracked, API.md's choice);
    num_batches_tracked counts training forwards; eval uses the running stats; backward in
    both modes matches the oracle."""
    shape = to_layout(shape, axis)
    c = 3
    layer = getattr(fastnorm, cls)(c, momentum=momentum, affine=affine, track_running_stats=True,
                                   axis=axis, dtype=np.float64)
    w = b = None
    if affine:
        w, b, _, _ = random_params(rng, c, np.float64)
        set_layer_arrays(layer, weight=w, bias=b)
    rm, rv = np.zeros(c), np.ones(c)
    batch_means = []
    for step in range(1, 5):
        x = random_input(rng, shape, np.float64, offset=step, scale=step)
        factor = 1.0 / step if momentum is None else momentum
        ref = naive.instance_norm(x, rm, rv, w, b, momentum=factor, axis=axis)
        rm, rv = ref["running_mean"], ref["running_var"]
        batch_means.append(np.mean(ref["mean"], axis=0))
        y = layer(x)
        assert_output_close(y, ref["y"], np.float64, err_msg=f"step {step}")
        assert_stats_close(layer.running_mean, rm, err_msg=f"step {step}")
        assert_stats_close(layer.running_var, rv, err_msg=f"step {step}")
        assert layer.num_batches_tracked == step
    dy = rng.standard_normal(shape)
    dx = layer.backward(dy)
    ref_dx, ref_dw, ref_db = naive.instance_norm_backward(x, dy, ref["mean"], ref["var"], w,
                                                          axis=axis)
    assert_grad_close(dx, ref_dx, np.float64)
    if momentum is None:
        np.testing.assert_allclose(layer.running_mean, np.mean(batch_means, axis=0), rtol=1e-12,
                                   atol=1e-14)

    layer.eval()
    x = random_input(rng, shape, np.float64, offset=2.0)
    ref = naive.instance_norm(x, rm, rv, w, b, use_input_stats=False, axis=axis)
    assert_output_close(layer.forward(x), ref["y"], np.float64)
    assert_stats_close(layer.running_mean, rm)  # eval changes nothing
    assert_stats_close(layer.running_var, rv)
    assert layer.num_batches_tracked == 4
    dx = layer.backward(dy)
    ref_dx, ref_dw, ref_db = naive.instance_norm_backward(x, dy, ref["mean"], ref["var"], w,
                                                          axis=axis, input_stats=False)
    assert_grad_close(dx, ref_dx, np.float64)
    if affine:
        assert_grad_close(layer.grad_weight, ref_dw, np.float64)
        assert_grad_close(layer.grad_bias, ref_db, np.float64)
    else:
        assert layer.grad_weight is None and layer.grad_bias is None


@pytest.mark.parametrize("axis", [1, -1])
def test_instance_no_tracking_uses_instance_stats_in_eval(backend, rng, axis):
    layer = fastnorm.InstanceNorm2d(3, affine=True, axis=axis, dtype=np.float64)
    w, b, _, _ = random_params(rng, 3, np.float64)
    set_layer_arrays(layer, weight=w, bias=b)
    x = random_input(rng, to_layout((4, 3, 5, 2), axis), np.float64, offset=3.0)
    ref = naive.instance_norm(x, None, None, w, b, axis=axis)
    assert_output_close(layer(x), ref["y"], np.float64)
    layer.eval()
    assert_output_close(layer(x), ref["y"], np.float64)
    assert layer.running_mean is None and layer.running_var is None
    dy = rng.standard_normal(x.shape)
    dx = layer.backward(dy)
    ref_dx, ref_dw, ref_db = naive.instance_norm_backward(x, dy, ref["mean"], ref["var"], w,
                                                          axis=axis)
    assert_grad_close(dx, ref_dx, np.float64)
    assert_grad_close(layer.grad_weight, ref_dw, np.float64)
    assert_grad_close(layer.grad_bias, ref_db, np.float64)


@pytest.mark.parametrize("cls, batched", [("InstanceNorm1d", (2, 3, 7)),
                                          ("InstanceNorm2d", (2, 3, 4, 5)),
                                          ("InstanceNorm3d", (2, 3, 2, 3, 4))])
@pytest.mark.parametrize("axis", [1, -1])
@pytest.mark.parametrize("track", [True, False])
def test_instance_unbatched_input(backend, rng, cls, batched, axis, track):
    """(C, *S) (or (*S, C) with axis=-1) is one sample: same result as the batch of one,
    unbatched output shape, running stats updated the same, backward too."""
    shape = to_layout(batched, axis)[1:]
    a = getattr(fastnorm, cls)(3, affine=True, track_running_stats=track, momentum=0.4,
                               axis=axis, dtype=np.float64)
    bl = getattr(fastnorm, cls)(3, affine=True, track_running_stats=track, momentum=0.4,
                                axis=axis, dtype=np.float64)
    w, b, _, _ = random_params(rng, 3, np.float64)
    set_layer_arrays(a, weight=w, bias=b)
    set_layer_arrays(bl, weight=w, bias=b)
    x = random_input(rng, shape, np.float64, offset=1.0)
    y = a(x)
    assert y.shape == shape and y.dtype == np.float64
    y1 = bl(x[None])
    ref = naive.instance_norm(x[None], np.zeros(3), np.ones(3), w, b, momentum=0.4, axis=axis)
    assert_output_close(y, ref["y"][0], np.float64)
    assert_output_close(y1, ref["y"], np.float64)
    if track:
        assert_stats_close(a.running_mean, ref["running_mean"])
        assert_stats_close(a.running_var, ref["running_var"])
        assert a.num_batches_tracked == 1
    dy = rng.standard_normal(shape)
    dx = a.backward(dy)
    assert dx.shape == shape
    ref_dx, ref_dw, ref_db = naive.instance_norm_backward(x[None], dy[None], ref["mean"],
                                                          ref["var"], w, axis=axis)
    assert_grad_close(dx, ref_dx[0], np.float64)
    assert_grad_close(a.grad_weight, ref_dw, np.float64)
    assert_grad_close(a.grad_bias, ref_db, np.float64)
    if track:  # eval on unbatched input uses the running stats
        a.eval()
        ref = naive.instance_norm(x[None], a.running_mean, a.running_var, w, b,
                                  use_input_stats=False, axis=axis)
        assert_output_close(a(x), ref["y"][0], np.float64)


def test_instance_channel_mismatch_warns_without_affine_and_tracking(backend, rng):
    """Like PyTorch: affine=False, track_running_stats=False and C != num_features only warns,
    then normalizes per instance anyway."""
    layer = fastnorm.InstanceNorm1d(3)
    x = random_input(rng, (2, 5, 6), np.float32)
    with pytest.warns(UserWarning):
        y = layer(x)
    assert_output_close(y, naive.instance_norm(x)["y"], np.float32)
    layer = fastnorm.InstanceNorm2d(3, axis=-1)
    x = random_input(rng, (2, 4, 4, 2), np.float32)
    with pytest.warns(UserWarning):
        y = layer(x)
    assert_output_close(y, naive.instance_norm(x, axis=-1)["y"], np.float32)


def test_instance_matching_channels_do_not_warn(backend, rng):
    layer = fastnorm.InstanceNorm1d(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(random_input(rng, (2, 3, 6), np.float32))


def test_instance_float16_input(backend, rng):
    layer = fastnorm.InstanceNorm2d(3, affine=True, track_running_stats=True)
    x = random_input(rng, (4, 3, 5, 6), np.float16, offset=0.5)
    ref = naive.instance_norm(x, np.zeros(3), np.ones(3))
    y = layer(x)
    assert_output_close(y, ref["y"], np.float16)
    assert layer.running_mean.dtype == np.float32
    assert_stats_close(layer.running_mean, ref["running_mean"])
    assert_stats_close(layer.running_var, ref["running_var"])
    dy = random_input(rng, x.shape, np.float16)
    dx = layer.backward(dy)
    assert dx.dtype == np.float16 and dx.shape == x.shape
    ref_dx, ref_dw, ref_db = naive.instance_norm_backward(x, dy, ref["mean"], ref["var"])
    assert_grad_close(dx, ref_dx, np.float16)
    assert_grad_close(layer.grad_weight, ref_dw, coarser(np.float16, np.float32))
    assert_grad_close(layer.grad_bias, ref_db, coarser(np.float16, np.float32))


def test_instance_failed_forward_leaves_state(backend, rng):
    layer = fastnorm.InstanceNorm1d(3, track_running_stats=True)
    layer(random_input(rng, (2, 3, 5), np.float32, offset=1.0))
    state = {k: np.array(v, copy=True) for k, v in layer.state_dict().items()}
    for bad in (np.ones((2, 3, 1), np.float32), np.ones((2, 4, 5), np.float32),
                np.ones((2, 3, 5), np.int32), np.ones((2, 3, 5, 2), np.float32)):
        with pytest.raises((ValueError, TypeError)):
            layer(bad)
    for k, v in layer.state_dict().items():
        np.testing.assert_array_equal(v, state[k], err_msg=k)
    assert layer.num_batches_tracked == 1


# -------------------------------------------------------------- GroupNorm/LayerNorm/RMSNorm


@pytest.mark.parametrize("axis, shape", [(1, (4, 6, 5)), (-1, (4, 5, 6)), (1, (3, 6)),
                                         (1, (2, 6, 3, 2, 2)), (-1, (2, 3, 2, 6))])
@pytest.mark.parametrize("affine", [True, False])
def test_group_layer(backend, rng, axis, shape, affine):
    layer = fastnorm.GroupNorm(3, 6, eps=1e-3, affine=affine, axis=axis, dtype=np.float64)
    w = b = None
    if affine:
        w, b, _, _ = random_params(rng, 6, np.float64)
        set_layer_arrays(layer, weight=w, bias=b)
    x = random_input(rng, shape, np.float64, offset=-1.0, scale=2.0)
    ref = naive.group_norm(x, 3, w, b, eps=1e-3, axis=axis)
    assert_output_close(layer(x), ref["y"], np.float64)
    layer.eval()  # no running stats: the same
    assert_output_close(layer(x), ref["y"], np.float64)
    dy = rng.standard_normal(shape)
    dx = layer.backward(dy)
    ref_dx, ref_dw, ref_db = naive.group_norm_backward(x, dy, 3, w, eps=1e-3, axis=axis)
    assert_grad_close(dx, ref_dx, np.float64)
    if affine:
        assert_grad_close(layer.grad_weight, ref_dw, np.float64)
        assert_grad_close(layer.grad_bias, ref_db, np.float64)
    else:
        assert layer.grad_weight is None and layer.grad_bias is None


@pytest.mark.parametrize("ns, shape", [(5, (4, 5)), ((5,), (2, 3, 5)), ((3, 5), (2, 3, 5)),
                                       ((2, 3, 5), (2, 3, 5)), ((3, 5), (3, 5)), (7, (7,))])
@pytest.mark.parametrize("mode", ["affine", "no_bias", "none"])
def test_layer_norm_layer(backend, rng, ns, shape, mode):
    layer = fastnorm.LayerNorm(ns, eps=1e-4, elementwise_affine=mode != "none",
                               bias=mode == "affine", dtype=np.float64)
    pshape = (ns,) if isinstance(ns, int) else ns
    w = rng.uniform(0.5, 1.5, pshape) if mode != "none" else None
    b = rng.standard_normal(pshape) if mode == "affine" else None
    if w is not None:
        layer.weight[...] = w
    if b is not None:
        layer.bias[...] = b
    x = random_input(rng, shape, np.float64, offset=2.0)
    ref = naive.layer_norm(x, ns, w, b, eps=1e-4)
    assert_output_close(layer(x), ref["y"], np.float64)
    layer.eval()
    assert_output_close(layer(x), ref["y"], np.float64)
    dy = rng.standard_normal(shape)
    dx = layer.backward(dy)
    ref_dx, ref_dw, ref_db = naive.layer_norm_backward(x, dy, ns, w, eps=1e-4)
    assert_grad_close(dx, ref_dx, np.float64)
    if w is not None:
        assert layer.grad_weight.shape == pshape
        assert_grad_close(layer.grad_weight, ref_dw, np.float64)
    else:
        assert layer.grad_weight is None
    if b is not None:
        assert_grad_close(layer.grad_bias, ref_db, np.float64)
    else:
        assert layer.grad_bias is None


@pytest.mark.parametrize("ns, shape", [(5, (4, 5)), ((3, 5), (2, 3, 5)), (7, (7,))])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("eps", [None, 1e-3])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_rms_norm_layer(backend, rng, ns, shape, affine, eps, dtype):
    pdt = np.float32 if dtype == np.float16 else dtype
    layer = fastnorm.RMSNorm(ns, eps=eps, elementwise_affine=affine, dtype=pdt)
    pshape = (ns,) if isinstance(ns, int) else ns
    w = rng.uniform(0.5, 1.5, pshape).astype(pdt) if affine else None
    if affine:
        layer.weight[...] = w
    # small values so that the default eps (the compute dtype's) matters
    x = random_input(rng, shape, dtype, scale=np.sqrt(np.finfo(dtype).eps))
    ref = naive.rms_norm(x, ns, w, eps=eps)
    y = layer(x)
    assert y.dtype == np.dtype(dtype)
    assert_output_close(y, ref["y"], dtype)
    dy = random_input(rng, shape, dtype)
    dx = layer.backward(dy)
    assert dx.dtype == np.dtype(dtype)
    ref_dx, ref_dw = naive.rms_norm_backward(x, dy, ns, w, eps=eps)
    rms = np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=tuple(range(-len(pshape), 0)),
                          keepdims=True) + naive.rms_eps(x, eps))
    scale = max(np.max(np.abs(ref_dx)),
                np.max(np.abs(dy.astype(np.float64) * (1.0 if w is None else w) / rms)))
    assert_grad_close(dx, ref_dx, dtype, scale=scale)
    assert layer.grad_bias is None
    if affine:
        assert_grad_close(layer.grad_weight, ref_dw, coarser(dtype, pdt),
                          scale=np.max(np.sum(np.abs(dy.astype(np.float64) * x / rms),
                                              axis=tuple(range(len(shape) - len(pshape))))))
    else:
        assert layer.grad_weight is None


@pytest.mark.parametrize("make, shape", [(lambda d: fastnorm.GroupNorm(2, 4, dtype=d), (3, 4, 5)),
                                         (lambda d: fastnorm.LayerNorm((4, 5), dtype=d),
                                          (3, 4, 5)),
                                         (lambda d: fastnorm.RMSNorm(5, dtype=d), (3, 4, 5)),
                                         (lambda d: fastnorm.InstanceNorm1d(
                                             4, affine=True, track_running_stats=True, dtype=d),
                                          (3, 4, 5))])
@pytest.mark.parametrize("in_dtype", [np.float16, np.float32, np.float64])
def test_layer_keeps_input_dtype(backend, rng, make, shape, in_dtype):
    """A float32 layer returns the input's dtype (float16 data: float16 out and dx)."""
    layer = make(np.float32)
    x = random_input(rng, shape, in_dtype, offset=0.5)
    y = layer(x)
    assert y.dtype == np.dtype(in_dtype) and y.shape == shape
    dx = layer.backward(random_input(rng, shape, in_dtype))
    assert dx.dtype == np.dtype(in_dtype) and dx.shape == shape
    assert layer.weight.dtype == np.float32
    assert layer.grad_weight.shape == layer.weight.shape


def test_call_equals_forward(backend, rng):
    for make, shape in [(lambda: fastnorm.GroupNorm(2, 4), (3, 4, 5)),
                        (lambda: fastnorm.LayerNorm(5), (3, 4, 5)),
                        (lambda: fastnorm.RMSNorm(5), (3, 4, 5)),
                        (lambda: fastnorm.InstanceNorm1d(4, track_running_stats=True),
                         (3, 4, 5))]:
        a, b = make(), make()
        x = random_input(rng, shape, np.float32, offset=1.0)
        np.testing.assert_allclose(a(x), b.forward(x), rtol=1e-6, atol=1e-6)
        if isinstance(a, fastnorm.InstanceNorm1d):
            np.testing.assert_allclose(a.running_mean, b.running_mean, rtol=1e-6, atol=1e-7)
            assert a.num_batches_tracked == b.num_batches_tracked == 1


# ------------------------------------------------------------------------------ state_dict


STATEFUL = [
    (lambda: fastnorm.InstanceNorm2d(3, affine=True, track_running_stats=True, momentum=0.3),
     (4, 3, 2, 5)),
    (lambda: fastnorm.InstanceNorm2d(3, track_running_stats=True, momentum=None), (4, 3, 2, 5)),
    (lambda: fastnorm.GroupNorm(3, 6), (4, 6, 5)),
    (lambda: fastnorm.LayerNorm((2, 5)), (4, 2, 5)),
    (lambda: fastnorm.LayerNorm(5, bias=False), (4, 2, 5)),
    (lambda: fastnorm.RMSNorm((2, 5)), (4, 2, 5)),
]


@pytest.mark.parametrize("make, shape", STATEFUL)
def test_state_dict_round_trip(backend, rng, make, shape):
    """Load a trained layer's state into a fresh one: identical outputs in eval, and training
    continues identically (num_batches_tracked drives momentum=None)."""
    a = make()
    for name in ("weight", "bias"):
        if getattr(a, name, None) is not None:
            getattr(a, name)[...] = rng.uniform(0.5, 2.0, getattr(a, name).shape)
    for _ in range(3):
        a(random_input(rng, shape, np.float32, offset=2.0))
    sd = a.state_dict()
    for k, v in sd.items():
        assert isinstance(v, np.ndarray), (k, type(v))
    b = make()
    b.load_state_dict(sd)
    for k in sd:
        np.testing.assert_array_equal(b.state_dict()[k], sd[k], err_msg=k)
    if "num_batches_tracked" in sd:
        assert int(sd["num_batches_tracked"]) == 3 and b.num_batches_tracked == 3
    x = random_input(rng, shape, np.float32, offset=2.0)
    np.testing.assert_allclose(b(x), a(x), rtol=1e-6, atol=1e-6)  # one more training step
    if "running_mean" in sd:
        np.testing.assert_allclose(b.running_mean, a.running_mean, rtol=1e-6)
        np.testing.assert_allclose(b.running_var, a.running_var, rtol=1e-6)
    a.eval()
    b.eval()
    np.testing.assert_allclose(b(x), a(x), rtol=1e-6, atol=1e-6)


def test_load_state_dict_copies_into_existing_arrays(rng):
    """Like PyTorch's ``param.copy_``: references to the layer's arrays stay live."""
    for layer, names in [(fastnorm.LayerNorm((2, 3)), ("weight", "bias")),
                         (fastnorm.RMSNorm(4), ("weight",)),
                         (fastnorm.GroupNorm(2, 4), ("weight", "bias")),
                         (fastnorm.InstanceNorm1d(4, affine=True, track_running_stats=True),
                          ("weight", "bias", "running_mean", "running_var"))]:
        arrays = {n: getattr(layer, n) for n in names}
        state = {n: np.abs(rng.standard_normal(a.shape)) for n, a in arrays.items()}
        if "running_mean" in names:
            state["num_batches_tracked"] = np.array(7)
        layer.load_state_dict(state)
        for n, a in arrays.items():
            assert getattr(layer, n) is a
            assert a.dtype == np.float32
            np.testing.assert_array_equal(a, state[n].astype(np.float32))
        if "running_mean" in names:
            assert layer.num_batches_tracked == 7


def test_instance_momentum_none_after_loading(backend, rng):
    """momentum=None with a loaded num_batches_tracked=k: the next factor is 1 / (k + 1)."""
    layer = fastnorm.InstanceNorm1d(2, track_running_stats=True, momentum=None,
                                    dtype=np.float64)
    layer.load_state_dict({"running_mean": [1.0, -1.0], "running_var": [2.0, 0.5],
                           "num_batches_tracked": 3})
    x = random_input(rng, (3, 2, 6), np.float64, offset=1.0)
    ref = naive.instance_norm(x, [1.0, -1.0], [2.0, 0.5], momentum=0.25)
    layer(x)
    assert layer.num_batches_tracked == 4
    assert_stats_close(layer.running_mean, ref["running_mean"])
    assert_stats_close(layer.running_var, ref["running_var"])
