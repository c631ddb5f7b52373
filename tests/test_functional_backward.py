"""The functional backward: ``return_stats=True`` forwards and ``*_backward`` functions, against
the float64 oracle (tests/naive.py), finite differences and the layers' backward."""

from __future__ import annotations

import naive
import numpy as np
import pytest
from conftest import assert_grad_close
from gradcheck import assert_fd_close, central_differences

import fastnorm

EPS = 1e-5


def _layout(shape, axis):
    return shape if axis == 1 else (shape[0], *shape[2:], shape[1])


@pytest.mark.parametrize("axis", [1, -1])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("shape", [(4, 6, 5, 7), (16, 8, 30, 30)], ids=["small", "large"])
def test_batch_norm(backend, rng, axis, training, dtype, shape):
    shape = _layout(shape, axis)
    c = shape[axis]
    x = (2 * rng.standard_normal(shape) + 1).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    pdt = np.float64 if dtype == np.float64 else np.float32
    w, b = rng.uniform(0.5, 1.5, c).astype(pdt), rng.standard_normal(c).astype(pdt)
    rm, rv = rng.standard_normal(c).astype(pdt), rng.uniform(0.5, 2, c).astype(pdt)
    y, mean, rstd = fastnorm.batch_norm(x, rm.copy(), rv.copy(), w, b, training=training, axis=axis,
                                        return_stats=True)
    np.testing.assert_array_equal(y, fastnorm.batch_norm(x, rm.copy(), rv.copy(), w, b, training=training,
                                                         axis=axis))
    if training:
        ref_mean, ref_var, _ = naive.batch_stats(x, axis)
    else:
        ref_mean, ref_var = rm.astype(np.float64), rv.astype(np.float64)
    assert mean.dtype == rstd.dtype == np.float64 and mean.shape == (c,)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-6 if dtype != np.float64 else 1e-12, atol=1e-12)
    np.testing.assert_allclose(rstd, 1 / np.sqrt(ref_var + EPS), rtol=1e-5 if dtype != np.float64 else 1e-10)
    dx, dw, db = fastnorm.batch_norm_backward(dy, x, mean, rstd, w, training=training, axis=axis)
    rdx, rdw, rdb = naive.batch_norm_backward(x, dy, ref_mean, ref_var, w, EPS, axis, training)
    assert dx.dtype == x.dtype and dw.dtype == db.dtype == np.dtype(pdt)
    assert_grad_close(dx, rdx, dtype)
    assert_grad_close(dw, rdw, dtype)
    assert_grad_close(db, rdb, dtype)
    layer = fastnorm.BatchNorm(c, axis=axis, dtype=pdt).train(training)
    layer.weight[...], layer.bias[...] = w, b
    layer.running_mean[...], layer.running_var[...] = rm, rv
    layer(x)
    np.testing.assert_array_equal(layer.backward(dy), dx)  # one backward path


@pytest.mark.parametrize("axis", [1, -1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("family", ["instance", "group"])
def test_instance_and_group_norm(backend, rng, axis, dtype, family):
    for shape in ((2, 8, 5, 6), (8, 16, 20, 20)):  # the general and the fused paths
        shape = _layout(shape, axis)
        c = shape[axis]
        x = (3 * rng.standard_normal(shape) - 2).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        w, b = rng.uniform(0.5, 1.5, c), rng.standard_normal(c)
        if family == "instance":
            y, mean, rstd = fastnorm.instance_norm(x, None, None, w, b, axis=axis, return_stats=True)
            np.testing.assert_array_equal(y, fastnorm.instance_norm(x, None, None, w, b, axis=axis))
            ref_mean, ref_var, _ = naive.instance_stats(x, axis)
            dx, dw, db = fastnorm.instance_norm_backward(dy, x, mean, rstd, w, axis=axis)
            ref = naive.instance_norm_backward(x, dy, ref_mean, ref_var, w, EPS, axis)
        else:
            y, mean, rstd = fastnorm.group_norm(x, 4, w, b, axis=axis, return_stats=True)
            np.testing.assert_array_equal(y, fastnorm.group_norm(x, 4, w, b, axis=axis))
            ref_stats = naive.group_norm(x, 4, axis=axis)
            ref_mean, ref_var = ref_stats["mean"], ref_stats["var"]
            dx, dw, db = fastnorm.group_norm_backward(dy, x, 4, mean, rstd, w, axis=axis)
            ref = naive.group_norm_backward(x, dy, 4, w, EPS, axis)
        np.testing.assert_allclose(mean, ref_mean, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(rstd, 1 / np.sqrt(ref_var + EPS), rtol=1e-5)
        for got, want in zip((dx, dw, db), ref):
            assert_grad_close(got, want, dtype)
        assert dw.dtype == np.float64  # the weight's dtype


def test_instance_norm_with_running_statistics(rng):
    x = rng.standard_normal((3, 4, 5))
    dy = rng.standard_normal(x.shape)
    rm, rv = rng.standard_normal(4), rng.uniform(0.5, 2, 4)
    y, mean, rstd = fastnorm.instance_norm(x, rm, rv, use_input_stats=False, return_stats=True)
    np.testing.assert_array_equal(y, fastnorm.instance_norm(x, rm, rv, use_input_stats=False))
    np.testing.assert_array_equal(mean, np.broadcast_to(rm, (3, 4)))
    dx, _, _ = fastnorm.instance_norm_backward(dy, x, mean, rstd, use_input_stats=False)
    fd = central_differences(lambda: float(np.sum(fastnorm.instance_norm(x, rm, rv, use_input_stats=False) * dy)), x)
    assert_fd_close(dx, fd, "dx")


@pytest.mark.parametrize("family", ["layer", "rms"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("shape", [(2, 3, 16), (512, 700)], ids=["small", "large"])
def test_layer_and_rms_norm(backend, rng, family, dtype, shape):
    m = shape[-1]
    x = (rng.standard_normal(shape) + 0.5).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w, b = rng.uniform(0.5, 1.5, m).astype(dtype), rng.standard_normal(m).astype(dtype)
    lead = shape[:-1]
    x64 = x.astype(np.float64)
    if family == "layer":
        y, mean, rstd = fastnorm.layer_norm(x, m, w, b, return_stats=True)
        np.testing.assert_array_equal(y, fastnorm.layer_norm(x, m, w, b))
        assert mean.shape == rstd.shape == lead
        np.testing.assert_allclose(mean, x64.mean(axis=-1), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(rstd, 1 / np.sqrt(x64.var(axis=-1) + EPS), rtol=1e-5)
        dx, dw, db = fastnorm.layer_norm_backward(dy, x, m, mean, rstd, w)
        ref = naive.layer_norm_backward(x, dy, (m,), w, EPS)
        layer = fastnorm.LayerNorm(m, dtype=dtype)
        layer.weight[...], layer.bias[...] = w, b
    else:
        y, rstd = fastnorm.rms_norm(x, m, w, return_stats=True)
        np.testing.assert_array_equal(y, fastnorm.rms_norm(x, m, w))
        eps = naive.rms_eps(x)
        np.testing.assert_allclose(rstd, 1 / np.sqrt((x64 * x64).mean(axis=-1) + eps), rtol=1e-5)
        dx, dw = fastnorm.rms_norm_backward(dy, x, m, rstd, w)
        db = None
        ref = (*naive.rms_norm_backward(x, dy, (m,), w), None)
        layer = fastnorm.RMSNorm(m, dtype=dtype)
        layer.weight[...] = w
    for got, want in zip((dx, dw, db), ref):
        if want is not None:
            assert_grad_close(got, want, dtype)
    assert dx.dtype == dw.dtype == np.dtype(dtype)
    layer(x)
    np.testing.assert_array_equal(layer.backward(dy), dx)


def test_gradients_by_finite_differences(rng):
    """Every family, float64, against finite differences of the functional forward."""
    x = rng.standard_normal((3, 4, 5))
    dy = rng.standard_normal(x.shape)
    w, b = rng.uniform(0.5, 1.5, 4), rng.standard_normal(4)
    wr = rng.uniform(0.5, 1.5, 5)
    cases = [
        (lambda: fastnorm.batch_norm(x, None, None, w, b, training=True),
         lambda s: fastnorm.batch_norm_backward(dy, x, *s, w)),
        (lambda: fastnorm.instance_norm(x, None, None, w, b),
         lambda s: fastnorm.instance_norm_backward(dy, x, *s, w)),
        (lambda: fastnorm.group_norm(x, 2, w, b),
         lambda s: fastnorm.group_norm_backward(dy, x, 2, *s, w)),
        (lambda: fastnorm.layer_norm(x, 5, wr, wr),
         lambda s: fastnorm.layer_norm_backward(dy, x, 5, *s, wr)),
        (lambda: fastnorm.rms_norm(x, 5, wr),
         lambda s: fastnorm.rms_norm_backward(dy, x, 5, *s, wr)),
    ]
    calls = [lambda: fastnorm.batch_norm(x, None, None, w, b, training=True, return_stats=True),
             lambda: fastnorm.instance_norm(x, None, None, w, b, return_stats=True),
             lambda: fastnorm.group_norm(x, 2, w, b, return_stats=True),
             lambda: fastnorm.layer_norm(x, 5, wr, wr, return_stats=True),
             lambda: fastnorm.rms_norm(x, 5, wr, return_stats=True)]
    for (forward, backward), with_stats in zip(cases, calls):
        stats = with_stats()[1:]
        dx = backward(stats)[0]
        assert_fd_close(dx, central_differences(lambda f=forward: float(np.sum(f() * dy)), x), "dx")


def test_out_and_errors(rng):
    x = rng.standard_normal((4, 3, 5)).astype(np.float32)
    dy = np.ones_like(x)
    _, mean, rstd = fastnorm.batch_norm(x, training=True, return_stats=True)
    out = np.empty_like(x)
    dx, _, _ = fastnorm.batch_norm_backward(dy, x, mean, rstd, out=out)
    assert dx is out
    np.testing.assert_array_equal(out, fastnorm.batch_norm_backward(dy, x, mean, rstd)[0])
    with pytest.raises(ValueError, match="mean"):
        fastnorm.batch_norm_backward(dy, x, mean[:2], rstd)
    with pytest.raises(ValueError, match="rstd"):
        fastnorm.layer_norm_backward(dy, x, 5, np.zeros((4, 3)), np.zeros(4))
    with pytest.raises(ValueError, match="dy"):
        fastnorm.batch_norm_backward(dy[:1], x, mean, rstd)
    with pytest.raises(ValueError, match="weight"):
        fastnorm.batch_norm_backward(dy, x, mean, rstd, np.ones(4))
    with pytest.raises(ValueError, match="num_groups"):
        fastnorm.group_norm_backward(dy, x, 2, np.zeros((4, 2)), np.ones((4, 2)))
    with pytest.raises(TypeError, match="x"):
        fastnorm.batch_norm_backward(dy, x.astype(np.int32), mean, rstd)


def _backward_calls(x, dy, rng):
    """Each family's functional backward as ``call(out=...)`` on ``x`` (N, C, L)."""
    c, m = x.shape[1], x.shape[-1]
    w = rng.uniform(0.5, 1.5, c).astype(np.float32)
    wr = rng.uniform(0.5, 1.5, m).astype(np.float32)
    keep = rng.random(x.shape) < 0.8
    _, bm, br = fastnorm.batch_norm(x, None, None, w, None, training=True, return_stats=True)
    _, im, ir = fastnorm.instance_norm(x, None, None, w, None, return_stats=True)
    _, gm, gr = fastnorm.group_norm(x, 2, w, None, return_stats=True)
    _, lm, lr = fastnorm.layer_norm(x, m, wr, None, return_stats=True)
    _, rr = fastnorm.rms_norm(x, m, wr, return_stats=True)
    _, am, ar = fastnorm.layer_norm(x, None, axis=1, return_stats=True)
    _, km, kr = fastnorm.layer_norm(x, m, wr, None, mask=keep, return_stats=True)
    return {
        "batch": lambda **o: fastnorm.batch_norm_backward(dy, x, bm, br, w, **o),
        "instance": lambda **o: fastnorm.instance_norm_backward(dy, x, im, ir, w, **o),
        "group": lambda **o: fastnorm.group_norm_backward(dy, x, 2, gm, gr, w, **o),
        "layer": lambda **o: fastnorm.layer_norm_backward(dy, x, m, lm, lr, wr, **o),
        "rms": lambda **o: fastnorm.rms_norm_backward(dy, x, m, rr, wr, **o),
        "layer_axis": lambda **o: fastnorm.layer_norm_backward(dy, x, None, am, ar, axis=1, **o),
        "layer_mask": lambda **o: fastnorm.layer_norm_backward(dy, x, m, km, kr, wr, mask=keep, **o),
    }


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_backward_out_is_written_whatever_its_layout(backend, dtype, rng):
    """dx into ``out``: written by the kernels when it is C-contiguous in the compute dtype and
    apart from the inputs, copied otherwise (another layout, float16, ``out`` = ``dy``); the
    same bits as without ``out``, and the weight and bias gradients unchanged."""
    x = (3.0 + rng.standard_normal((4, 6, 40))).astype(dtype)
    for name, call in _backward_calls(x, rng.standard_normal(x.shape).astype(dtype), rng).items():
        want = call()
        for out in (np.empty_like(x), np.empty(x.shape, x.dtype, order="F"),
                    np.empty((4, 6, 80), x.dtype)[:, :, ::2]):
            got = call(out=out)
            assert got[0] is out, name
            for a, b in zip(got, want):
                np.testing.assert_array_equal(a, b, err_msg=name)
    # out is dy itself: dy is read before it is overwritten
    x = (3.0 + rng.standard_normal((4, 6, 40))).astype(np.float32)
    for name in ("batch", "layer", "group"):
        dy = rng.standard_normal(x.shape).astype(np.float32)
        want = _backward_calls(x, dy.copy(), np.random.default_rng(0))[name]()
        got = _backward_calls(x, dy, np.random.default_rng(0))[name](out=dy)
        assert got[0] is dy
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b, err_msg=name)


# -- PyTorch parity of edge cases ------------------------------------------------------------


EMPTY = [("batch", (0, 3)), ("batch", (0, 3, 4, 4)), ("batch", (2, 3, 0)), ("instance", (2, 3, 0)),
         ("instance", (0, 3, 4)), ("group", (2, 0, 4)), ("group", (0, 4, 4))]


@pytest.mark.parametrize(("family", "shape"), EMPTY, ids=[f"{f}-{s}" for f, s in EMPTY])
def test_empty_inputs_give_empty_outputs_in_training(backend, family, shape):
    x = np.empty(shape, np.float32)
    c = shape[1]
    rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
    if family == "batch":
        y = fastnorm.batch_norm(x, rm, rv, training=True)
    elif family == "instance":
        y = fastnorm.instance_norm(x, rm, rv)
    else:
        y = fastnorm.group_norm(x, 1 if c == 0 else 2)
    assert y.shape == shape and y.dtype == x.dtype
    np.testing.assert_array_equal(rm, 0.0)  # unchanged
    np.testing.assert_array_equal(rv, 1.0)
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    t = torch.from_numpy(x)
    if family == "batch":
        want = F.batch_norm(t, None, None, training=True)
    elif family == "instance":
        want = F.instance_norm(t)
    else:
        want = F.group_norm(t, 1 if c == 0 else 2)
    assert tuple(want.shape) == shape


def test_momentum_outside_zero_one_is_refused():
    x = np.ones((4, 3), np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    for bad in (1.5, -0.5):
        with pytest.raises(ValueError, match="momentum"):
            fastnorm.batch_norm(x, rm, rv, training=True, momentum=bad)
        with pytest.raises(ValueError, match="momentum"):
            fastnorm.BatchNorm1d(3, momentum=bad)
        with pytest.raises(ValueError, match="momentum"):
            fastnorm.moments(x, axis=0).update_running(rm, rv, momentum=bad)
    np.testing.assert_array_equal(rm, 0.0)
    for good in (0.0, 1.0):
        fastnorm.batch_norm(x, rm.copy(), rv.copy(), training=True, momentum=good)
    with pytest.raises(ValueError, match="eps"):
        fastnorm.batch_norm(x, rm, rv, training=True, eps=-1e-5)


def test_stats_of_zero_channels(rng):
    x = np.zeros((2, 0, 4), np.float32)
    y, mean, rstd = fastnorm.group_norm(x, 1, return_stats=True)
    assert y.shape == x.shape and mean.shape == rstd.shape == (2, 1)
