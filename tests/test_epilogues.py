"""Fused epilogues: ``activation=``, ``shortcut=`` (``act(norm(x) + shortcut)``) and the
pre-norm ``residual=`` (``h = x + residual; y = norm(h)``), against the unfused sequence
(fastnorm's plain output, then the elementwise ops) with an independent float64 oracle of
the activations, and their backward against finite differences and PyTorch."""

from __future__ import annotations

import math

import numpy as np
import pytest
from gradcheck import assert_fd_close, central_differences

import fastnorm

ACTIVATIONS = (None, "relu", "leaky_relu", "gelu", "gelu_tanh", "silu")
SLOPE = 0.2
_erfc = np.vectorize(math.erfc, otypes=[np.float64])


def act64(v: np.ndarray, name: str | None, slope: float = SLOPE) -> np.ndarray:
    """The activation of float64 ``v``, written from the definitions (tails kept accurate:
    erfc rather than 1 + erf, and 1 + tanh(u) = 2 / (1 + exp(-2u)))."""
    if name is None:
        return v
    if name == "relu":
        return np.where(v < 0, 0.0, v)
    if name == "leaky_relu":
        return np.where(v < 0, v * slope, v)
    if name == "gelu":
        return 0.5 * v * _erfc(-v / math.sqrt(2.0))
    with np.errstate(over="ignore"):
        if name == "gelu_tanh":
            u = math.sqrt(2.0 / math.pi) * (v + 0.044715 * v**3)
            return v / (1.0 + np.exp(-2.0 * u))
        return v / (1.0 + np.exp(-v))  # silu


def unfused(y: np.ndarray, shortcut: np.ndarray | None, name: str | None) -> np.ndarray:
    """The unfused sequence on a plain normalization's output ``y``: the add in the data type,
    the activation rounded once from float64 (ReLU and leaky ReLU in the data type)."""
    v = y if shortcut is None else y + shortcut
    if name == "leaky_relu":
        return np.where(v < 0, v * v.dtype.type(SLOPE), v)
    return act64(v.astype(np.float64), name).astype(y.dtype)


def ulps(a: np.ndarray, b: np.ndarray) -> int:
    """The largest distance in units in the last place between same-dtype arrays."""
    it = {2: np.int16, 4: np.int32, 8: np.int64}[a.dtype.itemsize]
    ia = a.view(it).astype(np.int64)
    ib = b.view(it).astype(np.int64)
    ia = np.where(ia < 0, np.iinfo(it).min - ia, ia)  # sign-magnitude to a monotone order
    ib = np.where(ib < 0, np.iinfo(it).min - ib, ib)
    return int(np.max(np.abs(ia - ib), initial=0))


def assert_matches_unfused(got, ref, dtype, name, plain=None, shortcut=None):
    got, ref = np.asarray(got), np.asarray(ref)
    assert got.dtype == ref.dtype == np.dtype(dtype)
    if dtype == np.float64 and name in ("gelu", "gelu_tanh", "silu"):
        # float64 results within the conditioning of the function (x * f'(x) / f(x) ulps)
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-300)
        return
    if dtype == np.float16:
        # computed in float32 and rounded once, where the unfused sequence rounds the
        # normalized value and the sum to float16 first: within 2 float16 ulps of the operands
        operands = np.abs(plain.astype(np.float64))
        if shortcut is not None:
            operands = operands + np.abs(shortcut.astype(np.float64))
        err = np.abs(got.astype(np.float64) - ref.astype(np.float64))
        assert np.all(err <= 2 * 2.0**-10 * operands + 2.0**-24), (name, float(np.max(err)))
        return
    # float32: within 1 ulp (ReLU, leaky ReLU and the add: bit for bit)
    limit = 0 if name in (None, "relu", "leaky_relu") else 1
    assert ulps(got, ref) <= limit, (name, ulps(got, ref))


# -- the calls -----------------------------------------------------------------


def _params(rng, c, dtype=np.float32):
    return ((1.0 + 0.3 * rng.standard_normal(c)).astype(dtype),
            (0.5 * rng.standard_normal(c)).astype(dtype))


def channel_call(family, x, axis, w, b, training, run=None, **kw):
    if family == "batch":
        rm, rv = run if run is not None else (None, None)
        return fastnorm.batch_norm(x, rm, rv, w, b, training=training, axis=axis, **kw)
    if family == "instance":
        return fastnorm.instance_norm(x, None, None, w, b, axis=axis, **kw)
    return fastnorm.group_norm(x, 4, w, b, axis=axis, **kw)


# shapes: (N, C, H, W) channels-first; each family's small one-call path, its general path,
# and shapes that reach the fused kernels (grouped, samples) and the block splits of the
# epilogue (runs and rows longer than a block, channels-last rows wider than one)
CHANNEL_SHAPES = [(2, 8, 5, 7), (4, 8, 40, 50), (3, 8, 1, 3000), (2, 1500, 1, 9)]


@pytest.mark.parametrize("family", ["batch", "instance", "group"])
@pytest.mark.parametrize("axis", [1, -1])
@pytest.mark.parametrize("shape", CHANNEL_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_channel_families_match_the_unfused_sequence(backend, rng, family, axis, shape, dtype):
    if backend == "numpy" and math.prod(shape) > 50000:
        pytest.skip("the NumPy backend's float64 oracle is slow on large inputs")
    if axis == -1:
        shape = (shape[0], *shape[2:], shape[1])
    c = shape[axis]
    x = (3.0 * rng.standard_normal(shape) + 1.0).astype(dtype)
    sc = rng.standard_normal(shape).astype(dtype)
    w, b = _params(rng, c)
    plain = channel_call(family, x, axis, w, b, True)
    for name in ACTIVATIONS:
        for shortcut in (None, sc):
            if name is None and shortcut is None:
                continue
            got = channel_call(family, x, axis, w, b, True, activation=name, negative_slope=SLOPE,
                               shortcut=shortcut)
            assert_matches_unfused(got, unfused(plain, shortcut, name), dtype, name, plain, shortcut)


@pytest.mark.parametrize("axis", [1, -1])
@pytest.mark.parametrize("shape", [(2, 8, 5, 7), (4, 8, 40, 50)], ids=lambda s: "x".join(map(str, s)))
def test_batch_norm_inference_with_running_statistics(backend, rng, axis, shape):
    if axis == -1:
        shape = (shape[0], *shape[2:], shape[1])
    c = shape[axis]
    x = rng.standard_normal(shape).astype(np.float32)
    sc = rng.standard_normal(shape).astype(np.float32)
    w, b = _params(rng, c)
    run = (rng.standard_normal(c).astype(np.float32), (0.5 + rng.random(c)).astype(np.float32))
    plain = fastnorm.batch_norm(x, *run, w, b, training=False, axis=axis)
    for name in ACTIVATIONS[1:]:
        got = fastnorm.batch_norm(x, *run, w, b, training=False, axis=axis, activation=name,
                                  negative_slope=SLOPE, shortcut=sc)
        assert_matches_unfused(got, unfused(plain, sc, name), np.float32, name)


ROW_SHAPES = [(6, 40), (64, 768), (5, 3000)]


@pytest.mark.parametrize("family", ["layer", "rms"])
@pytest.mark.parametrize("shape", ROW_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_row_families_match_the_unfused_sequence(backend, rng, family, shape, dtype):
    m = shape[-1]
    x = (2.0 * rng.standard_normal(shape) - 1.0).astype(dtype)
    sc = rng.standard_normal(shape).astype(dtype)
    w, b = _params(rng, m)
    fn = fastnorm.layer_norm if family == "layer" else fastnorm.rms_norm
    args = (w, b) if family == "layer" else (w,)
    plain = fn(x, m, *args)
    for name in ACTIVATIONS:
        for shortcut in (None, sc):
            if name is None and shortcut is None:
                continue
            got = fn(x, m, *args, activation=name, negative_slope=SLOPE, shortcut=shortcut)
            assert_matches_unfused(got, unfused(plain, shortcut, name), dtype, name, plain, shortcut)


@pytest.mark.parametrize("family", ["layer", "rms"])
@pytest.mark.parametrize("shape", ROW_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pre_norm_residual_returns_the_sum_and_its_normalization(backend, rng, family, shape, dtype):
    m = shape[-1]
    x = rng.standard_normal(shape).astype(dtype)
    r = (3.0 * rng.standard_normal(shape)).astype(dtype)
    w, b = _params(rng, m)
    fn = fastnorm.layer_norm if family == "layer" else fastnorm.rms_norm
    args = (w, b) if family == "layer" else (w,)
    y, h = fn(x, m, *args, residual=r)
    h_ref = x + r
    np.testing.assert_array_equal(h, h_ref)
    np.testing.assert_array_equal(y, fn(h_ref, m, *args))
    y2, h2 = fn(x, m, *args, residual=r, activation="silu")
    np.testing.assert_array_equal(h2, h_ref)
    assert_matches_unfused(y2, unfused(fn(h_ref, m, *args), None, "silu"), dtype, "silu")


def test_float16_residual_sum_is_returned_in_float16(rng):
    x = rng.standard_normal((4, 64)).astype(np.float16)
    r = rng.standard_normal((4, 64)).astype(np.float16)
    y, h = fastnorm.rms_norm(x, 64, residual=r)
    assert y.dtype == h.dtype == np.float16
    np.testing.assert_array_equal(h, (x.astype(np.float32) + r).astype(np.float16))


def test_bfloat16_epilogue(rng):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    bf16 = ml_dtypes.bfloat16
    x = rng.standard_normal((4, 8, 6, 6)).astype(bf16)
    sc = rng.standard_normal(x.shape).astype(bf16)
    got = fastnorm.group_norm(x, 4, activation="gelu", shortcut=sc)
    assert got.dtype == bf16
    ref = act64(fastnorm.group_norm(x.astype(np.float64), 4) + sc.astype(np.float64), "gelu")
    np.testing.assert_allclose(got.astype(np.float64), ref, rtol=1e-2, atol=1e-2)


# -- in place and aliasing -------------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 8, 30, 30), (2, 4, 5, 5)], ids=["large", "small"])
def test_shortcut_may_be_out_the_in_place_residual_add(backend, rng, shape):
    x = rng.standard_normal(shape).astype(np.float32)
    sc = rng.standard_normal(x.shape).astype(np.float32)
    ref = fastnorm.batch_norm(x, training=True, activation="relu", shortcut=sc)
    buf = sc.copy()
    got = fastnorm.batch_norm(x, training=True, activation="relu", shortcut=buf, out=buf)
    assert got is buf
    np.testing.assert_array_equal(got, ref)


def test_shortcut_overlapping_out_at_an_offset_is_read_before_it_is_written(backend, rng):
    base = rng.standard_normal(2 * 4 * 8 * 100 + 37).astype(np.float32)
    x = rng.standard_normal((2, 4, 8, 100)).astype(np.float32)
    out = base[37:].reshape(x.shape)
    sc = base[:-37].reshape(x.shape)
    ref = fastnorm.instance_norm(x, activation="silu", shortcut=sc.copy())
    got = fastnorm.instance_norm(x, activation="silu", shortcut=sc, out=out)
    np.testing.assert_array_equal(got, ref)


def test_x_as_its_own_shortcut_and_out(backend, rng):
    x = rng.standard_normal((3, 5, 64)).astype(np.float64)
    ref = fastnorm.layer_norm(x, 64, activation="gelu", shortcut=x.copy())
    got = fastnorm.layer_norm(x, 64, activation="gelu", shortcut=x, out=x)
    assert got is x
    np.testing.assert_array_equal(got, ref)


# -- backward ---------------------------------------------------------------------


def _layer(family, c_or_m, axis, activation):
    kw = {"activation": activation, "negative_slope": SLOPE, "dtype": np.float64}
    if family == "batch":
        return fastnorm.BatchNorm2d(c_or_m, axis=axis, **kw)
    if family == "instance":
        return fastnorm.InstanceNorm2d(c_or_m, affine=True, axis=axis, **kw)
    if family == "group":
        return fastnorm.GroupNorm(2, c_or_m, axis=axis, **kw)
    if family == "layer":
        return fastnorm.LayerNorm(c_or_m, **kw)
    return fastnorm.RMSNorm(c_or_m, **kw)


CASES = [("batch", 1), ("batch", -1), ("instance", 1), ("instance", -1), ("group", 1),
         ("group", -1), ("layer", None), ("rms", None)]


@pytest.mark.parametrize(("family", "axis"), CASES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("with_shortcut", [False, True])
def test_backward_through_the_epilogue_by_finite_differences(backend, rng, family, axis, activation,
                                                             with_shortcut):
    if activation is None and not with_shortcut:
        pytest.skip("the plain normalization (tested elsewhere)")
    shape = (3, 4, 3, 5) if family not in ("layer", "rms") else (3, 4, 6)
    if axis == -1:
        shape = (3, 3, 5, 4)
    size = shape[1] if axis == 1 else shape[-1]
    layer = _layer(family, size, axis, activation)
    if layer.weight is not None:
        layer.weight[...] = 1.0 + 0.3 * rng.standard_normal(layer.weight.shape)
    if layer.bias is not None:
        layer.bias[...] = 0.3 * rng.standard_normal(layer.bias.shape)
    x = rng.standard_normal(shape)
    sc = rng.standard_normal(shape) if with_shortcut else None
    probe = rng.standard_normal(shape)

    def loss():
        layer.train()
        y = layer(x, shortcut=sc)
        return float(np.sum(y * probe))

    loss()
    res = layer.backward(probe)
    dx, dsc = res if with_shortcut else (res, None)
    gw, gb = layer.grad_weight, layer.grad_bias
    assert_fd_close(dx, central_differences(loss, x), "dx")
    if with_shortcut:
        assert_fd_close(dsc, central_differences(loss, sc), "grad_shortcut")
    if layer.weight is not None:
        assert_fd_close(gw, central_differences(loss, layer.weight), "grad_weight")
    if layer.bias is not None:
        assert_fd_close(gb, central_differences(loss, layer.bias), "grad_bias")


@pytest.mark.parametrize("family", ["layer", "rms"])
@pytest.mark.parametrize("activation", [None, "gelu"])
def test_pre_norm_backward_by_finite_differences(backend, rng, family, activation):
    m = 7
    layer = _layer(family, m, None, activation)
    layer.weight[...] = 1.0 + 0.3 * rng.standard_normal(m)
    x = rng.standard_normal((4, m))
    r = rng.standard_normal((4, m))
    py = rng.standard_normal((4, m))
    ph = rng.standard_normal((4, m))

    def loss():
        y, h = layer(x, residual=r)
        return float(np.sum(y * py) + np.sum(h * ph))

    loss()
    dx = layer.backward(py, dh=ph)
    assert_fd_close(dx, central_differences(loss, x), "dx")
    assert_fd_close(dx, central_differences(loss, r), "d residual")
    assert_fd_close(layer.grad_weight, central_differences(loss, layer.weight), "grad_weight")


def test_eval_mode_backward_through_the_activation(backend, rng):
    """Frozen BatchNorm (eval mode) in fine-tuning: the gradient of act(bn(x) + s) with the
    running statistics."""
    bn = _layer("batch", 4, 1, "silu").eval()
    bn.running_mean[...] = rng.standard_normal(4)
    bn.running_var[...] = 0.5 + rng.random(4)
    x = rng.standard_normal((2, 4, 3, 3))
    sc = rng.standard_normal(x.shape)
    probe = rng.standard_normal(x.shape)

    def loss():
        return float(np.sum(bn(x, shortcut=sc) * probe))

    loss()
    dx, dsc = bn.backward(probe)
    assert_fd_close(dx, central_differences(loss, x), "dx")
    assert_fd_close(dsc, central_differences(loss, sc), "grad_shortcut")


TORCH_ACT = {"relu": "relu", "leaky_relu": "leaky_relu", "gelu": "gelu", "gelu_tanh": "gelu",
             "silu": "silu"}


@pytest.mark.parametrize("activation", ACTIVATIONS[1:])
def test_resnet_tail_matches_pytorch_forward_and_backward(rng, activation):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = rng.standard_normal((4, 6, 5, 5))
    sc = rng.standard_normal(x.shape)
    probe = rng.standard_normal(x.shape)
    bn = fastnorm.BatchNorm2d(6, dtype=np.float64, activation=activation, negative_slope=SLOPE)
    bn.weight[...] = 1.0 + 0.3 * rng.standard_normal(6)
    bn.bias[...] = 0.3 * rng.standard_normal(6)
    y = bn(x, shortcut=sc)
    dx, dsc = bn.backward(probe)

    tx = torch.tensor(x, requires_grad=True)
    tsc = torch.tensor(sc, requires_grad=True)
    tbn = torch.nn.BatchNorm2d(6, dtype=torch.float64)
    with torch.no_grad():
        tbn.weight.copy_(torch.tensor(bn.weight))
        tbn.bias.copy_(torch.tensor(bn.bias))
    pre = tbn(tx) + tsc
    if activation == "leaky_relu":
        ty = F.leaky_relu(pre, SLOPE)
    elif activation == "gelu_tanh":
        ty = F.gelu(pre, approximate="tanh")
    else:
        ty = getattr(F, TORCH_ACT[activation])(pre)
    ty.backward(torch.tensor(probe))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(dsc, tsc.grad.numpy(), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(bn.grad_weight, tbn.weight.grad.numpy(), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(bn.running_var, tbn.running_var.numpy(), rtol=1e-12)


def test_fused_add_rms_norm_matches_pytorch(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((8, 32)).astype(np.float32)
    r = rng.standard_normal((8, 32)).astype(np.float32)
    w = (1.0 + 0.2 * rng.standard_normal(32)).astype(np.float32)
    y, h = fastnorm.rms_norm(x, 32, w, eps=1e-6, residual=r)
    th = torch.tensor(x) + torch.tensor(r)
    ty = torch.nn.functional.rms_norm(th, (32,), torch.tensor(w), eps=1e-6)
    np.testing.assert_array_equal(h, th.numpy())
    np.testing.assert_allclose(y, ty.numpy(), rtol=2e-6, atol=2e-6)


# -- layers -----------------------------------------------------------------------


def test_layers_take_activation_and_show_it(rng):
    bn = fastnorm.BatchNorm2d(4, activation="leaky_relu", negative_slope=0.1)
    assert "activation='leaky_relu'" in repr(bn) and "negative_slope=0.1" in repr(bn)
    ln = fastnorm.LayerNorm(8, activation="gelu_tanh")
    assert "activation='gelu_tanh'" in repr(ln)
    x = rng.standard_normal((2, 8)).astype(np.float32)
    np.testing.assert_array_equal(ln(x), fastnorm.layer_norm(x, 8, ln.weight, ln.bias,
                                                             activation="gelu_tanh"))


def test_epilogue_works_in_inference_mode(rng):
    layers = [fastnorm.GroupNorm(2, 8, activation="silu").eval(),
              fastnorm.RMSNorm(6, activation="relu").eval()]
    x = rng.standard_normal((3, 8, 6)).astype(np.float32)
    with fastnorm.inference_mode():
        y = layers[0](x, shortcut=x)
        y2, h = layers[1](y, residual=x)
    assert layers[0]._saved is None and layers[1]._saved is None
    np.testing.assert_array_equal(h, y + x)
    assert y2.min() >= 0


# -- errors -----------------------------------------------------------------------


def test_bad_options_raise_and_change_nothing(rng):
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    with pytest.raises(ValueError, match="activation"):
        fastnorm.batch_norm(x, rm, rv, training=True, activation="tanh")
    with pytest.raises(TypeError, match="activation"):
        fastnorm.batch_norm(x, rm, rv, training=True, activation=3)
    with pytest.raises(ValueError, match="shortcut"):
        fastnorm.batch_norm(x, rm, rv, training=True, shortcut=x[:1])
    with pytest.raises(TypeError, match="shortcut"):
        fastnorm.batch_norm(x, rm, rv, training=True, shortcut=x.astype(np.int32))
    with pytest.raises(TypeError, match="negative_slope"):
        fastnorm.batch_norm(x, rm, rv, training=True, activation="leaky_relu", negative_slope="a")
    with pytest.raises(ValueError, match="residual"):
        fastnorm.layer_norm(x, 4, residual=x[:, :2])
    np.testing.assert_array_equal(rm, 0.0)
    np.testing.assert_array_equal(rv, 1.0)
    with pytest.raises(ValueError, match="activation"):
        fastnorm.LayerNorm(4, activation="swish")
    bn = fastnorm.BatchNorm1d(3)
    with pytest.raises(ValueError, match="shortcut"):
        bn(x, shortcut=np.zeros((2, 3, 5), np.float32))
    assert bn.num_batches_tracked == 0
    np.testing.assert_array_equal(bn.running_mean, 0.0)
    with pytest.raises(ValueError, match="dh"):
        ln = fastnorm.LayerNorm(4)
        ln(x, residual=x)
        ln.backward(x, dh=x[:1])


def test_cuda_backend_refuses_epilogues():
    from fastnorm import functional

    with pytest.raises(NotImplementedError, match="cuda"):
        functional._fuse_on_cuda(functional._Fuse("relu"))
    with pytest.raises(NotImplementedError, match="cuda"):
        functional._fuse_on_cuda(None, np.zeros(1))
    functional._fuse_on_cuda(None)


def test_residual_overlapping_out_at_an_offset(backend, rng):
    r_, m = 64, 256
    x = rng.standard_normal((r_, m)).astype(np.float32)
    buf = rng.standard_normal((r_ + 1, m)).astype(np.float32)
    res, out = buf[:-1], buf[1:]
    y_ref, h_ref = fastnorm.layer_norm(x, m, residual=res.copy())
    y, h = fastnorm.layer_norm(x, m, residual=res, out=out)
    np.testing.assert_array_equal(h, h_ref)
    np.testing.assert_array_equal(y, y_ref)


def test_residual_may_be_out(backend, rng):
    x = rng.standard_normal((8, 300)).astype(np.float32)
    r = rng.standard_normal(x.shape).astype(np.float32)
    y_ref, h_ref = fastnorm.rms_norm(x, 300, residual=r.copy())
    y, h = fastnorm.rms_norm(x, 300, residual=r, out=r)
    assert y is r
    np.testing.assert_array_equal(h, h_ref)
    np.testing.assert_array_equal(y, y_ref)


def test_a_failed_call_keeps_the_last_forward_differentiable(rng):
    bn = fastnorm.BatchNorm2d(3, activation="relu", dtype=np.float64)
    x = rng.standard_normal((2, 3, 4, 4))
    s = rng.standard_normal(x.shape)
    bn(x, shortcut=s)
    with pytest.raises(ValueError, match="shortcut"):
        bn(x, shortcut=s[:1])
    dx, dsc = bn.backward(np.ones_like(x))
    assert dx.shape == dsc.shape == x.shape


def test_dh_needs_a_residual_forward(rng):
    ln = fastnorm.LayerNorm(6, dtype=np.float64)
    x = rng.standard_normal((3, 6))
    ln(x)
    with pytest.raises(ValueError, match="dh"):
        ln.backward(np.ones_like(x), dh=np.ones_like(x))
    bn = fastnorm.BatchNorm1d(6)
    bn(x.astype(np.float32))
    with pytest.raises(ValueError, match="dh"):
        bn.backward(np.ones((3, 6), np.float32), dh=np.ones((3, 6), np.float32))


def test_sync_batch_norm_from_batch_norm_keeps_the_activation():
    pytest.importorskip("mpi4py")
    bn = fastnorm.BatchNorm2d(3, activation="leaky_relu", negative_slope=0.2)
    sync = fastnorm.SyncBatchNorm.from_batch_norm(bn)
    assert sync.activation == "leaky_relu" and sync.negative_slope == 0.2
