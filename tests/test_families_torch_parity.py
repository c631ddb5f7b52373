"""InstanceNorm / GroupNorm / LayerNorm / RMSNorm parity with PyTorch (skipped without torch).

Where API.md departs from PyTorch these tests stay away: InstanceNorm parity uses a numeric
momentum and never compares num_batches_tracked (PyTorch's InstanceNorm treats momentum=None as
0 and never counts), RMSNorm's default eps is compared on float32 only (PyTorch computes float16
in float32 and takes float32's eps), and no data far from zero is compared (PyTorch's GroupNorm
is inaccurate there)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import fastnorm  # noqa: E402

RTOL, ATOL = 1e-5, 1e-5  # float32
C = 6


def t2n(t):
    return t.detach().numpy()


def cf_to_layout(a, axis):
    """channels-first array -> the fastnorm layout for ``axis``."""
    return np.ascontiguousarray(np.moveaxis(a, 1, -1)) if axis == -1 else a


def torch_input(x, axis, memory_format="permute"):
    """fastnorm array (layout ``axis``) -> channels-first torch tensor.  For axis=-1 either a
    permuted view of the NHWC data (``permute``) or a channels_last-contiguous copy."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    if axis == -1:
        t = t.permute(0, t.dim() - 1, *range(1, t.dim() - 1))
        if memory_format == "channels_last" and t.dim() in (4, 5):
            mf = torch.channels_last if t.dim() == 4 else torch.channels_last_3d
            t = t.contiguous(memory_format=mf)
    return t


def from_torch(t, axis):
    a = t2n(t)
    return np.ascontiguousarray(np.moveaxis(a, 1, -1)) if axis == -1 else a


def assert_close(got, exp, what, rtol=RTOL, atol=ATOL):
    exp = t2n(exp) if isinstance(exp, torch.Tensor) else np.asarray(exp)
    got = np.asarray(got)
    assert got.shape == exp.shape, (what, got.shape, exp.shape)
    np.testing.assert_allclose(got, exp, rtol=rtol, atol=atol, err_msg=what)


def assert_grad(got, exp, what):
    exp = t2n(exp) if isinstance(exp, torch.Tensor) else np.asarray(exp)
    assert got is not None, what
    got = np.asarray(got)
    assert got.shape == exp.shape, (what, got.shape, exp.shape)
    scale = max(float(np.max(np.abs(exp))), 1e-30)
    np.testing.assert_allclose(got, exp, rtol=RTOL, atol=ATOL * scale, err_msg=what)


def copy_params(t, f, rng):
    """Random weight (and bias) into both layers."""
    if getattr(t, "weight", None) is None:
        return
    w = rng.uniform(0.5, 1.5, tuple(t.weight.shape)).astype(np.float32)
    with torch.no_grad():
        t.weight.copy_(torch.from_numpy(w))
    f.weight[...] = w
    if getattr(t, "bias", None) is not None:
        b = rng.standard_normal(tuple(t.bias.shape)).astype(np.float32)
        with torch.no_grad():
            t.bias.copy_(torch.from_numpy(b))
        f.bias[...] = b


# (id, torch layer, fastnorm layer factory(axis), channels-first input shape, has axis)
PAIRS = [
    ("InstanceNorm1d", lambda: torch.nn.InstanceNorm1d(C, affine=True, track_running_stats=True,
                                                       momentum=0.3),
     lambda axis: fastnorm.InstanceNorm1d(C, affine=True, track_running_stats=True,
                                          momentum=0.3, axis=axis), (4, C, 7), True),
    ("InstanceNorm2d", lambda: torch.nn.InstanceNorm2d(C, track_running_stats=True),
     lambda axis: fastnorm.InstanceNorm2d(C, track_running_stats=True, axis=axis),
     (4, C, 5, 6), True),
    ("InstanceNorm3d", lambda: torch.nn.InstanceNorm3d(C, affine=True, track_running_stats=True,
                                                       momentum=0.7),
     lambda axis: fastnorm.InstanceNorm3d(C, affine=True, track_running_stats=True,
                                          momentum=0.7, axis=axis), (2, C, 3, 4, 5), True),
    ("InstanceNorm2d_notrack", lambda: torch.nn.InstanceNorm2d(C, affine=True),
     lambda axis: fastnorm.InstanceNorm2d(C, affine=True, axis=axis), (3, C, 4, 5), True),
    ("GroupNorm", lambda: torch.nn.GroupNorm(3, C),
     lambda axis: fastnorm.GroupNorm(3, C, axis=axis), (4, C, 5, 6), True),
    ("GroupNorm_1d", lambda: torch.nn.GroupNorm(2, C, affine=False),
     lambda axis: fastnorm.GroupNorm(2, C, affine=False, axis=axis), (4, C, 9), True),
    # 3 channels a group: with 2 values a group dx is a pure cancellation (~0), where torch's
    # float32 gradient is mostly rounding error
    ("GroupNorm_2d_input", lambda: torch.nn.GroupNorm(2, C),
     lambda axis: fastnorm.GroupNorm(2, C, axis=axis), (5, C), False),
    ("GroupNorm_3d", lambda: torch.nn.GroupNorm(6, C, eps=1e-3),
     lambda axis: fastnorm.GroupNorm(6, C, eps=1e-3, axis=axis), (2, C, 3, 2, 4), True),
    ("LayerNorm", lambda: torch.nn.LayerNorm((5, 6)),
     lambda axis: fastnorm.LayerNorm((5, 6)), (4, C, 5, 6), False),
    ("LayerNorm_nobias", lambda: torch.nn.LayerNorm(6, bias=False),
     lambda axis: fastnorm.LayerNorm(6, bias=False), (4, C, 5, 6), False),
    ("LayerNorm_noaffine", lambda: torch.nn.LayerNorm((C, 5), elementwise_affine=False),
     lambda axis: fastnorm.LayerNorm((C, 5), elementwise_affine=False), (3, C, 5), False),
    ("RMSNorm", lambda: torch.nn.RMSNorm((5, 6)),
     lambda axis: fastnorm.RMSNorm((5, 6)), (4, C, 5, 6), False),
    ("RMSNorm_eps", lambda: torch.nn.RMSNorm(7, eps=1e-3),
     lambda axis: fastnorm.RMSNorm(7, eps=1e-3), (4, C, 7), False),
    ("RMSNorm_noaffine", lambda: torch.nn.RMSNorm(5, elementwise_affine=False),
     lambda axis: fastnorm.RMSNorm(5, elementwise_affine=False), (3, C, 5), False),
]
PAIR_IDS = [p[0] for p in PAIRS]


def _axes(has_axis):
    return (1, -1) if has_axis else (1,)


def _cases():
    for name, tf, ff, shape, has_axis in PAIRS:
        for axis in _axes(has_axis):
            yield pytest.param(tf, ff, shape, axis, id=f"{name}-axis{axis}")


def _grad_cases():
    """As _cases, channels-last twice: a permuted view and a channels_last-contiguous copy."""
    for name, tf, ff, shape, has_axis in PAIRS:
        for axis, fmt in [(1, "permute")] + ([(-1, "permute"), (-1, "channels_last")]
                                             if has_axis else []):
            yield pytest.param(tf, ff, shape, axis, fmt, id=f"{name}-axis{axis}-{fmt}")


@pytest.mark.parametrize("make_t, make_f, shape, axis", list(_cases()))
def test_training_steps_then_eval_match_torch(backend, rng, make_t, make_f, shape, axis):
    """A few training steps (outputs, running stats where present) and eval."""
    t, f = make_t(), make_f(axis)
    copy_params(t, f, rng)
    tracking = getattr(t, "track_running_stats", False)
    for step in range(1, 4):
        x = (step + step * rng.standard_normal(shape)).astype(np.float32)
        xf = cf_to_layout(x, axis)
        yf = f(xf)
        assert yf.dtype == np.float32 and yf.shape == xf.shape
        assert_close(yf, from_torch(t(torch_input(xf, axis)), axis), f"y step {step}")
        if tracking:
            assert_close(f.running_mean, t.running_mean, f"running_mean {step}", atol=1e-6)
            assert_close(f.running_var, t.running_var, f"running_var {step}", atol=1e-6)
    t.eval()
    f.eval()
    x = cf_to_layout((1 + rng.standard_normal(shape)).astype(np.float32), axis)
    assert_close(f(x), from_torch(t(torch_input(x, axis)), axis), "eval y")


@pytest.mark.parametrize("make_t, make_f, shape, axis, memory_format", list(_grad_cases()))
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_grads_match_autograd(backend, rng, make_t, make_f, shape, axis, memory_format, mode):
    t, f = make_t(), make_f(axis)
    copy_params(t, f, rng)
    if mode == "eval" and getattr(t, "track_running_stats", False):
        for _ in range(2):  # non-trivial running stats
            x = cf_to_layout((2 + 3 * rng.standard_normal(shape)).astype(np.float32), axis)
            t(torch_input(x, axis))
            f(x)
    if mode == "eval":
        t.eval()
        f.eval()
    x = cf_to_layout((-1 + 2 * rng.standard_normal(shape)).astype(np.float32), axis)
    g = rng.standard_normal(x.shape).astype(np.float32)
    xt = torch_input(x, axis, memory_format).detach().requires_grad_(True)
    yt = t(xt)
    yt.backward(torch_input(g, axis, memory_format))
    yf = f(x)
    assert_close(yf, from_torch(yt, axis), "y")
    dx = f.backward(g)
    assert dx.dtype == np.float32 and dx.shape == x.shape
    assert_grad(dx, from_torch(xt.grad, axis), "dx")
    if getattr(t, "weight", None) is not None:
        assert_grad(f.grad_weight, t.weight.grad, "grad_weight")
    else:
        assert f.grad_weight is None
    if getattr(t, "bias", None) is not None:
        assert_grad(f.grad_bias, t.bias.grad, "grad_bias")
    else:
        assert f.grad_bias is None


@pytest.mark.parametrize("make_t, make_f, shape, axis", list(_cases()))
def test_load_torch_state_dict(backend, rng, make_t, make_f, shape, axis):
    """A torch state_dict (after some training) loads directly; eval and a further training
    step then agree (num_batches_tracked not compared for InstanceNorm)."""
    t = make_t()
    if getattr(t, "weight", None) is not None:
        with torch.no_grad():
            t.weight.uniform_(0.5, 1.5)
            if getattr(t, "bias", None) is not None:
                t.bias.normal_()
    for _ in range(3):
        t(torch.from_numpy((1 + 2 * rng.standard_normal(shape)).astype(np.float32)))
    f = make_f(axis)
    sd = t.state_dict()
    assert set(f.state_dict()) == set(sd)
    f.load_state_dict(sd)
    for name, value in sd.items():
        if name == "num_batches_tracked":
            continue
        arr = getattr(f, name)
        assert isinstance(arr, np.ndarray) and arr.dtype == np.float32, name
        np.testing.assert_array_equal(arr, t2n(value), err_msg=name)
    x = cf_to_layout((1 + 2 * rng.standard_normal(shape)).astype(np.float32), axis)
    assert_close(f(x), from_torch(t(torch_input(x, axis)), axis), "train y")
    if getattr(t, "track_running_stats", False):
        assert_close(f.running_mean, t.running_mean, "running_mean", atol=1e-6)
        assert_close(f.running_var, t.running_var, "running_var", atol=1e-6)
    t.eval()
    f.eval()
    assert_close(f(x), from_torch(t(torch_input(x, axis)), axis), "eval y")


@pytest.mark.parametrize("name, make_t, make_f, shape", [
    ("LayerNorm", lambda: torch.nn.LayerNorm((5, 6)), lambda: fastnorm.LayerNorm((5, 6)),
     (2, 5, 6)),
    ("LayerNorm_nobias", lambda: torch.nn.LayerNorm(6, bias=False),
     lambda: fastnorm.LayerNorm(6, bias=False), (2, 5, 6)),
    ("RMSNorm", lambda: torch.nn.RMSNorm(6), lambda: fastnorm.RMSNorm(6), (2, 5, 6)),
    ("GroupNorm", lambda: torch.nn.GroupNorm(2, C), lambda: fastnorm.GroupNorm(2, C),
     (2, C, 5)),
    ("InstanceNorm2d", lambda: torch.nn.InstanceNorm2d(C, affine=True, track_running_stats=True),
     lambda: fastnorm.InstanceNorm2d(C, affine=True, track_running_stats=True), (2, C, 3, 3)),
])
def test_state_dict_loads_into_torch(rng, name, make_t, make_f, shape):
    """fastnorm's state_dict has torch's keys and shapes: torch loads it strictly."""
    f, t = make_f(), make_t()
    for k in ("weight", "bias"):
        if getattr(f, k, None) is not None:
            getattr(f, k)[...] = rng.uniform(0.5, 1.5, getattr(f, k).shape)
    for _ in range(2):
        f(rng.standard_normal(shape).astype(np.float32) + 1)
    sd = f.state_dict()
    assert set(sd) == set(t.state_dict())
    t.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in sd.items()}, strict=True)
    f.eval()
    t.eval()
    x = rng.standard_normal(shape).astype(np.float32)
    assert_close(f(x), t(torch.from_numpy(x)), "eval y")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(4, C, 5), (2, C, 3, 4), (3, C, 2, 2, 3)])
@pytest.mark.parametrize("use_input_stats", [True, False])
def test_instance_norm_functional_matches_torch(backend, rng, dtype, shape, use_input_stats):
    x = (0.5 + 2 * rng.standard_normal(shape)).astype(dtype)
    w = rng.uniform(0.5, 1.5, C).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    rm = rng.standard_normal(C).astype(dtype)
    rv = rng.uniform(0.5, 2, C).astype(dtype)
    rm_t, rv_t = torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy())
    yt = F.instance_norm(torch.from_numpy(x), rm_t, rv_t, torch.from_numpy(w),
                         torch.from_numpy(b), use_input_stats=use_input_stats, momentum=0.3,
                         eps=1e-4)
    yf = fastnorm.instance_norm(x, rm, rv, w, b, use_input_stats=use_input_stats, momentum=0.3,
                                eps=1e-4)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    assert yf.dtype == dtype
    np.testing.assert_allclose(yf, t2n(yt), **tol)
    np.testing.assert_allclose(rm, t2n(rm_t), **tol)
    np.testing.assert_allclose(rv, t2n(rv_t), **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, groups", [((4, C), 3), ((4, C, 5), 2), ((2, C, 3, 4), 6),
                                           ((3, C, 2, 2, 3), 1)])
def test_group_norm_functional_matches_torch(backend, rng, dtype, shape, groups):
    x = (0.5 + 2 * rng.standard_normal(shape)).astype(dtype)
    w = rng.uniform(0.5, 1.5, C).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    yt = F.group_norm(torch.from_numpy(x), groups, torch.from_numpy(w), torch.from_numpy(b),
                      eps=1e-4)
    yf = fastnorm.group_norm(x, groups, w, b, eps=1e-4)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(yf, t2n(yt), **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, ns", [((4, 7), (7,)), ((4, 3, 5), (3, 5)), ((2, 3, 4, 5), (5,)),
                                       ((6,), (6,))])
@pytest.mark.parametrize("eps", [None, 1e-3])
def test_layer_and_rms_norm_functional_match_torch(backend, rng, dtype, shape, ns, eps):
    x = (0.5 + 2 * rng.standard_normal(shape)).astype(dtype)
    w = rng.uniform(0.5, 1.5, ns).astype(dtype)
    b = rng.standard_normal(ns).astype(dtype)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    xt, wt, bt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
    np.testing.assert_allclose(fastnorm.layer_norm(x, ns, w, b, eps=1e-5 if eps is None else eps),
                               t2n(F.layer_norm(xt, ns, wt, bt, eps=1e-5 if eps is None else eps)),
                               **tol)
    np.testing.assert_allclose(fastnorm.rms_norm(x, ns, w, eps=eps),
                               t2n(F.rms_norm(xt, ns, wt, eps=eps)), **tol)


def test_rms_norm_default_eps_matches_torch_float32(backend):
    """mean(x**2) ~ float32 eps: the default eps is float32's, as in torch."""
    x = np.full((2, 3), 1e-4, np.float32)
    x[1] = 3e-4
    np.testing.assert_allclose(fastnorm.rms_norm(x, 3), t2n(F.rms_norm(torch.from_numpy(x), (3,))),
                               rtol=1e-5)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_rms_norm_default_eps_of_half_precision_matches_torch(backend, rng, dtype):
    """float16 and bfloat16 compute in float32, and eps=None is float32's eps there (torch
    does the same); with mean(x**2) ~ 1e-6 the float16 eps (1e-3) would change the output
    by up to 0.9."""
    if dtype == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        np_dtype, t_dtype = ml_dtypes.bfloat16, torch.bfloat16
    else:
        np_dtype, t_dtype = np.float16, torch.float16
    x32 = (1e-3 * rng.standard_normal((4, 8))).astype(np.float32)
    xt = torch.from_numpy(x32).to(t_dtype)
    x = x32.astype(np_dtype)
    np.testing.assert_array_equal(xt.float().numpy(), x.astype(np.float32))
    want = F.rms_norm(xt, (8,)).float().numpy()
    got = fastnorm.rms_norm(x, 8).astype(np.float32)
    np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2)


def test_error_messages_match_torch(backend):
    """The ValueError prefixes fastnorm shares with PyTorch."""
    x = np.ones((2, C, 1), np.float32)
    with pytest.raises(ValueError) as exc_t:
        F.instance_norm(torch.from_numpy(x))
    with pytest.raises(ValueError) as exc_f:
        fastnorm.instance_norm(x)
    prefix = "Expected more than 1 spatial element when training"
    assert str(exc_t.value).startswith(prefix) and str(exc_f.value).startswith(prefix)
    x = np.ones((1, 3, 1), np.float32)
    with pytest.raises(ValueError) as exc_t:
        F.group_norm(torch.from_numpy(x), 3)
    with pytest.raises(ValueError) as exc_f:
        fastnorm.group_norm(x, 3)
    prefix = "Expected more than 1 value per channel when training"
    assert str(exc_t.value).startswith(prefix) and str(exc_f.value).startswith(prefix)


def test_torch_tensor_input(backend, rng):
    """Anything np.asarray accepts: CPU tensors in, NumPy arrays out."""
    x = torch.from_numpy(rng.standard_normal((4, C, 5)).astype(np.float32))
    for yf, yt in [(fastnorm.instance_norm(x), F.instance_norm(x)),
                   (fastnorm.group_norm(x, 2), F.group_norm(x, 2)),
                   (fastnorm.layer_norm(x, (C, 5)), F.layer_norm(x, (C, 5))),
                   (fastnorm.rms_norm(x, 5), F.rms_norm(x, (5,)))]:
        assert isinstance(yf, np.ndarray) and yf.dtype == np.float32
        np.testing.assert_allclose(yf, t2n(yt), rtol=RTOL, atol=ATOL)
