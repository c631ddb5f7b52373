"""Layer ``backward``: against central finite differences (float64) and the analytic oracle."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastnorm
from gradcheck import assert_fd_close, central_differences  # noqa: E402
import naive
from conftest import (FLOAT_DTYPES, assert_grad_close, coarser, param_dtype, random_input,
                      random_params, set_layer_arrays)



def make_layer(c, axis, mode, affine, rng, dtype=np.float64, momentum=0.1, eps=1e-3):
    """mode: 'train', 'eval' (running stats), 'eval_batch' (track_running_stats=False)."""
    layer = fastnorm.BatchNorm(c, eps=eps, momentum=momentum, affine=affine,
                               track_running_stats=(mode != "eval_batch"), axis=axis, dtype=dtype)
    w, b, rm, rv = random_params(rng, c, dtype)
    if affine:
        set_layer_arrays(layer, weight=w, bias=b)
    if mode == "eval":
        set_layer_arrays(layer, running_mean=rm, running_var=rv)
    if mode != "train":
        layer.eval()
    return layer


GRAD_CASES = [
    (1, (4, 3, 5)),
    (1, (3, 2, 2, 3)),
    (-1, (4, 5, 3)),
    (-1, (3, 2, 3, 2)),
    (1, (6, 3)),
    (-1, (6, 3)),
]


@pytest.mark.parametrize("mode", ["train", "eval", "eval_batch"])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("axis, shape", GRAD_CASES)
def test_backward_matches_finite_differences(backend, rng, mode, affine, axis, shape):
    x = random_input(rng, shape, np.float64, offset=0.7, scale=1.3)
    g = rng.standard_normal(shape)
    c = shape[naive.channel_axis(len(shape), axis)]
    layer = make_layer(c, axis, mode, affine, rng)

    def loss():
        return float(np.sum(layer(x) * g))

    fd_x = central_differences(loss, x)
    if affine:
        fd_w = central_differences(loss, layer.weight)
        fd_b = central_differences(loss, layer.bias)

    y = layer(x)
    assert y.dtype == np.float64
    dx = layer.backward(g)
    assert isinstance(dx, np.ndarray) and dx.dtype == np.float64 and dx.shape == shape
    assert_fd_close(dx, fd_x, "dx")
    if affine:
        assert_fd_close(layer.grad_weight, fd_w, "grad_weight")
        assert_fd_close(layer.grad_bias, fd_b, "grad_bias")
    else:
        assert layer.grad_weight is None
        assert layer.grad_bias is None


@pytest.mark.parametrize("batch_stats", [True, False])
@pytest.mark.parametrize("axis, shape", GRAD_CASES[:3])
def test_oracle_backward_matches_finite_differences(rng, batch_stats, axis, shape):
    """The oracle's own analytic backward is checked against finite differences of its forward."""
    x = random_input(rng, shape, np.float64, offset=-0.4)
    g = rng.standard_normal(shape)
    c = shape[naive.channel_axis(len(shape), axis)]
    w, b, rm, rv = random_params(rng, c, np.float64)

    def loss():
        r = naive.batch_norm(x, None if batch_stats else rm, None if batch_stats else rv,
                             w, b, training=batch_stats, eps=1e-3, axis=axis)
        return float(np.sum(r["y"] * g))

    fd_x = central_differences(loss, x)
    fd_w = central_differences(loss, w)
    fd_b = central_differences(loss, b)
    if batch_stats:
        mean, var, _ = naive.batch_stats(x, axis)
    else:
        mean, var = rm, rv
    dx, dw, db = naive.batch_norm_backward(x, g, mean, var, w, eps=1e-3, axis=axis,
                                           batch_stats=batch_stats)
    assert_fd_close(dx, fd_x, "dx")
    assert_fd_close(dw, fd_w, "dweight")
    assert_fd_close(db, fd_b, "dbias")


@st.composite
def grad_cases(draw):
    ndim = draw(st.integers(2, 5))
    axis = draw(st.sampled_from([1, -1]))
    c = draw(st.integers(1, 4))
    other = draw(st.lists(st.integers(1, 4), min_size=ndim - 1, max_size=ndim - 1))
    if int(np.prod(other)) < 2:
        other[0] = 2
    shape = list(other)
    shape.insert(naive.channel_axis(ndim, axis), c)
    return dict(shape=tuple(shape), axis=axis,
                dtype=draw(st.sampled_from(FLOAT_DTYPES)),
                mode=draw(st.sampled_from(["train", "eval", "eval_batch"])),
                affine=draw(st.booleans()),
                offset=draw(st.floats(-3.0, 3.0)),
                seed=draw(st.integers(0, 2**32 - 1)))


@given(case=grad_cases())
def test_backward_matches_oracle(backend, case):
    rng = np.random.default_rng(case["seed"])
    shape, axis, dt = case["shape"], case["axis"], case["dtype"]
    c = shape[naive.channel_axis(len(shape), axis)]
    x = random_input(rng, shape, dt, offset=case["offset"])
    dy = random_input(rng, shape, dt)
    layer = make_layer(c, axis, case["mode"], case["affine"], rng, dtype=param_dtype(dt),
                       eps=1e-5)
    w = layer.weight.copy() if case["affine"] else None
    if case["mode"] == "eval":
        mean, var = layer.running_mean.copy(), layer.running_var.copy()
    else:
        mean, var, _ = naive.batch_stats(x, axis)
    layer(x)
    dx = layer.backward(dy)
    ref_dx, ref_dw, ref_db = naive.batch_norm_backward(
        x, dy, mean, var, w, eps=1e-5, axis=axis, batch_stats=case["mode"] != "eval")
    assert isinstance(dx, np.ndarray) and dx.dtype == np.dtype(dt) and dx.shape == shape
    # Error scales: the magnitude of the terms each gradient is a (cancelling) sum of.  With two
    # values per channel, for instance, the exact training dx is ~0 while each term is |dy*w|/std.
    nd = len(shape)
    red = naive.reduce_axes(nd, axis)
    std = np.sqrt(naive.per_channel(var, nd, axis) + 1e-5)
    xhat = (x.astype(np.float64) - naive.per_channel(mean, nd, axis)) / std
    w_b = naive.per_channel(np.ones(c) if w is None else w, nd, axis)
    dy64 = dy.astype(np.float64)
    dx_scale = max(np.max(np.abs(ref_dx)), np.max(np.abs(dy64 * w_b / std)))
    assert_grad_close(dx, ref_dx, dt, err_msg=str(case), scale=dx_scale)
    gdt = coarser(dt, param_dtype(dt))
    if case["affine"]:
        assert_grad_close(layer.grad_weight, ref_dw, gdt, err_msg=str(case),
                          scale=np.max(np.sum(np.abs(dy64 * xhat), axis=red)))
        assert_grad_close(layer.grad_bias, ref_db, gdt, err_msg=str(case),
                          scale=np.max(np.sum(np.abs(dy64), axis=red)))
    else:
        assert layer.grad_weight is None and layer.grad_bias is None


def test_backward_refers_to_most_recent_forward(backend, rng):
    """Two forwards, one backward: the gradient is the one of the second forward."""
    layer = fastnorm.BatchNorm(3, axis=1, dtype=np.float64)
    x1 = random_input(rng, (5, 3, 4), np.float64)
    x2 = random_input(rng, (2, 3, 7), np.float64, offset=2.0, scale=3.0)
    dy = rng.standard_normal(x2.shape)
    layer(x1)
    layer(x2)
    dx = layer.backward(dy)
    mean, var, _ = naive.batch_stats(x2, 1)
    ref_dx, ref_dw, ref_db = naive.batch_norm_backward(x2, dy, mean, var, np.ones(3), axis=1)
    assert_grad_close(dx, ref_dx, np.float64)
    assert_grad_close(layer.grad_weight, ref_dw, np.float64)
    assert_grad_close(layer.grad_bias, ref_db, np.float64)
    # calling backward again with another dy is fine and uses the same forward
    dy2 = rng.standard_normal(x2.shape)
    dx2 = layer.backward(dy2)
    ref_dx2, _, _ = naive.batch_norm_backward(x2, dy2, mean, var, np.ones(3), axis=1)
    assert_grad_close(dx2, ref_dx2, np.float64)


def test_backward_eval_uses_stats_of_that_forward(backend, rng):
    """Train step, then eval forward: backward uses the running stats (after the update)."""
    layer = fastnorm.BatchNorm(2, axis=-1, dtype=np.float64, momentum=0.5)
    xt = random_input(rng, (6, 4, 2), np.float64, offset=1.0)
    layer(xt)
    rm, rv = layer.running_mean.copy(), layer.running_var.copy()
    layer.eval()
    x = random_input(rng, (3, 5, 2), np.float64)
    dy = rng.standard_normal(x.shape)
    layer(x)
    dx = layer.backward(dy)
    ref_dx, ref_dw, ref_db = naive.batch_norm_backward(x, dy, rm, rv, layer.weight, axis=-1,
                                                       batch_stats=False)
    assert_grad_close(dx, ref_dx, np.float64)
    assert_grad_close(layer.grad_weight, ref_dw, np.float64)
    assert_grad_close(layer.grad_bias, ref_db, np.float64)
