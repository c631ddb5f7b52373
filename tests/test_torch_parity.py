"""Parity with PyTorch (skipped when torch is not installed)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import fastnorm  # noqa: E402

RTOL, ATOL = 1e-5, 1e-5  # float32

CASES = [
    ("BatchNorm1d", (8, 3)),
    ("BatchNorm1d", (6, 3, 7)),
    ("BatchNorm2d", (4, 3, 5, 6)),
    ("BatchNorm3d", (2, 3, 4, 3, 5)),
]
C = 3


def to_torch_layout(a, axis):
    """fastnorm array in layout ``axis`` -> channels-first torch tensor."""
    a = np.asarray(a)
    if axis == -1 and a.ndim > 2:
        a = np.moveaxis(a, -1, 1)
    return torch.from_numpy(np.ascontiguousarray(a))


def from_torch_layout(t, axis):
    a = t.detach().numpy()
    if axis == -1 and a.ndim > 2:
        a = np.moveaxis(a, 1, -1)
    return a


def layout(shape, axis):
    return shape if axis == 1 else (shape[0],) + shape[2:] + (shape[1],)


def make_pair(cls, axis, rng, **kw):
    t = getattr(torch.nn, cls)(C, **kw)
    f = getattr(fastnorm, cls)(C, axis=axis, **kw)
    if t.affine:
        w = rng.uniform(0.5, 1.5, C).astype(np.float32)
        b = rng.standard_normal(C).astype(np.float32)
        with torch.no_grad():
            t.weight.copy_(torch.from_numpy(w))
            t.bias.copy_(torch.from_numpy(b))
        f.weight[...] = w
        f.bias[...] = b
    return t, f


def assert_close(got, exp, what, rtol=RTOL, atol=ATOL):
    exp = exp.detach().numpy() if isinstance(exp, torch.Tensor) else np.asarray(exp)
    got = np.asarray(got)
    assert got.shape == exp.shape, (what, got.shape, exp.shape)
    np.testing.assert_allclose(got, exp, rtol=rtol, atol=atol, err_msg=what)


def assert_grad(got, exp, what):
    exp = exp.detach().numpy()
    assert got is not None, what
    got = np.asarray(got)
    assert got.shape == exp.shape, (what, got.shape, exp.shape)
    scale = max(float(np.max(np.abs(exp))), 1e-30)
    np.testing.assert_allclose(got, exp, rtol=RTOL, atol=ATOL * scale, err_msg=what)


@pytest.mark.parametrize("cls, shape", CASES)
@pytest.mark.parametrize("axis", [1, -1])
@pytest.mark.parametrize("momentum", [0.1, 0.5, None])
@pytest.mark.parametrize("affine", [True, False])
def test_training_steps_match_torch(backend, rng, cls, shape, axis, momentum, affine):
    t, f = make_pair(cls, axis, rng, momentum=momentum, affine=affine)
    for step in range(1, 5):
        x = (step + step * rng.standard_normal(layout(shape, axis))).astype(np.float32)
        yt = t(to_torch_layout(x, axis))
        yf = f(x)
        assert yf.dtype == np.float32 and yf.shape == x.shape
        assert_close(yf, from_torch_layout(yt, axis), f"y step {step}")
        assert_close(f.running_mean, t.running_mean, f"running_mean step {step}", atol=1e-6)
        assert_close(f.running_var, t.running_var, f"running_var step {step}", atol=1e-6)
        assert f.num_batches_tracked == int(t.num_batches_tracked) == step
    t.eval()
    f.eval()
    x = (1 + rng.standard_normal(layout(shape, axis))).astype(np.float32)
    assert_close(f(x), from_torch_layout(t(to_torch_layout(x, axis)), axis), "eval y")


@pytest.mark.parametrize("cls, shape", CASES)
@pytest.mark.parametrize("axis", [1, -1])
@pytest.mark.parametrize("mode", ["train", "eval", "eval_no_tracking"])
@pytest.mark.parametrize("affine", [True, False])
def test_grads_match_autograd(backend, rng, cls, shape, axis, mode, affine):
    t, f = make_pair(cls, axis, rng, affine=affine,
                     track_running_stats=(mode != "eval_no_tracking"))
    if mode == "eval":  # make the running stats non-trivial first
        for _ in range(2):
            x = (2 + 3 * rng.standard_normal(layout(shape, axis))).astype(np.float32)
            t(to_torch_layout(x, axis))
            f(x)
    if mode != "train":
        t.eval()
        f.eval()
    x = (-1 + 2 * rng.standard_normal(layout(shape, axis))).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    xt = to_torch_layout(x, axis).requires_grad_(True)
    yt = t(xt)
    yt.backward(to_torch_layout(g, axis))
    yf = f(x)
    assert_close(yf, from_torch_layout(yt, axis), "y")
    dx = f.backward(g)
    assert dx.dtype == np.float32 and dx.shape == x.shape
    assert_grad(dx, torch.from_numpy(from_torch_layout(xt.grad, axis)), "dx")
    if affine:
        assert_grad(f.grad_weight, t.weight.grad, "grad_weight")
        assert_grad(f.grad_bias, t.bias.grad, "grad_bias")
    else:
        assert f.grad_weight is None and f.grad_bias is None


@pytest.mark.parametrize("cls, shape", CASES)
@pytest.mark.parametrize("momentum", [0.1, None])
def test_load_torch_state_dict(backend, rng, cls, shape, momentum):
    """A torch state_dict loads directly; eval and further training then agree."""
    t = getattr(torch.nn, cls)(C, momentum=momentum)
    with torch.no_grad():
        t.weight.uniform_(0.5, 1.5)
        t.bias.normal_()
    for _ in range(3):
        t(torch.from_numpy((1 + 2 * rng.standard_normal(shape)).astype(np.float32)))
    f = getattr(fastnorm, cls)(C, momentum=momentum)
    f.load_state_dict(t.state_dict())
    for name in ("weight", "bias", "running_mean", "running_var"):
        arr = getattr(f, name)
        assert isinstance(arr, np.ndarray) and arr.dtype == np.float32, name
        np.testing.assert_array_equal(arr, getattr(t, name).detach().numpy(), err_msg=name)
    assert f.num_batches_tracked == 3
    x = (1 + 2 * rng.standard_normal(shape)).astype(np.float32)
    # one more training step: with momentum=None the factor is 1/4 in both
    assert_close(f(x), t(torch.from_numpy(x)), "train y")
    assert_close(f.running_mean, t.running_mean, "running_mean", atol=1e-6)
    assert_close(f.running_var, t.running_var, "running_var", atol=1e-6)
    assert f.num_batches_tracked == int(t.num_batches_tracked) == 4
    t.eval()
    f.eval()
    assert_close(f(x), t(torch.from_numpy(x)), "eval y")


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("track", [True, False])
def test_state_dict_loads_into_torch(rng, affine, track):
    """fastnorm's state_dict has torch's keys and shapes: torch loads it strictly."""
    f = fastnorm.BatchNorm2d(C, affine=affine, track_running_stats=track)
    if affine:
        f.weight[...] = rng.uniform(0.5, 1.5, C)
        f.bias[...] = rng.standard_normal(C)
    for _ in range(2):
        f(rng.standard_normal((4, C, 3, 3)).astype(np.float32) + 1)
    t = torch.nn.BatchNorm2d(C, affine=affine, track_running_stats=track)
    sd = f.state_dict()
    assert set(sd) == set(t.state_dict())
    t.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in sd.items()}, strict=True)
    if track:
        assert int(t.num_batches_tracked) == 2
        np.testing.assert_array_equal(t.running_mean.numpy(), f.running_mean)
    f.eval()
    t.eval()
    x = rng.standard_normal((2, C, 3, 3)).astype(np.float32)
    assert_close(f(x), t(torch.from_numpy(x)), "eval y")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 5), (2, 3, 4, 5)])
def test_functional_matches_torch(backend, rng, dtype, training, shape):
    x = (0.5 + 2 * rng.standard_normal(shape)).astype(dtype)
    w = rng.uniform(0.5, 1.5, C).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    rm = rng.standard_normal(C).astype(dtype)
    rv = rng.uniform(0.5, 2, C).astype(dtype)
    rm_t, rv_t = torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy())
    yt = F.batch_norm(torch.from_numpy(x), rm_t, rv_t, torch.from_numpy(w), torch.from_numpy(b),
                      training=training, momentum=0.3, eps=1e-4)
    yf = fastnorm.batch_norm(x, rm, rv, w, b, training=training, momentum=0.3, eps=1e-4)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    assert yf.dtype == dtype
    np.testing.assert_allclose(yf, yt.numpy(), **tol)
    np.testing.assert_allclose(rm, rm_t.numpy(), **tol)
    np.testing.assert_allclose(rv, rv_t.numpy(), **tol)


def test_torch_tensor_input(backend, rng):
    """Anything np.asarray accepts: a CPU tensor goes in, a NumPy array comes out."""
    x = torch.from_numpy(rng.standard_normal((4, C, 5)).astype(np.float32))
    y = fastnorm.batch_norm(x, training=True)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    np.testing.assert_allclose(y, F.batch_norm(x, None, None, training=True).numpy(),
                               rtol=RTOL, atol=ATOL)


def test_one_value_per_channel_message_matches_torch(backend):
    x = np.ones((1, C), np.float32)
    with pytest.raises(ValueError) as exc_t:
        torch.nn.BatchNorm1d(C)(torch.from_numpy(x))
    with pytest.raises(ValueError) as exc_f:
        fastnorm.BatchNorm1d(C)(x)
    prefix = "Expected more than 1 value per channel when training"
    assert str(exc_t.value).startswith(prefix)
    assert str(exc_f.value).startswith(prefix)
