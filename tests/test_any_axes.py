"""LayerNorm and RMSNorm over any axes (Keras ``axis``, Flax ``reduction_axes`` and
``feature_axes``): against a float64 NumPy formula, PyTorch on the permuted input, and finite
differences for every gradient."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_grad_close, assert_output_close, param_dtype, random_input
from gradcheck import assert_fd_close, central_differences

import fastnorm


def formula(x, axes, weight=None, bias=None, eps=1e-5, feature=None, center=True):
    """The definition in float64: statistics over ``axes``, parameters on ``feature``."""
    x = np.asarray(x, dtype=np.float64)
    axes = tuple(sorted(a % x.ndim for a in axes))
    mean = x.mean(axis=axes, keepdims=True) if center else 0.0
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + eps)
    feature = axes if feature is None else tuple(sorted(a % x.ndim for a in feature))
    shape = [x.shape[i] if i in feature else 1 for i in range(x.ndim)]
    if weight is not None:
        y = y * np.asarray(weight, np.float64).reshape(shape)
    if bias is not None:
        y = y + np.asarray(bias, np.float64).reshape(shape)
    return y


# (input shape, axis, feature_axis): ConvNeXt's channels-first LayerNorm over C, Flax's
# reduction over (H, W, C) with per-channel parameters, axes split around others, axis 0
CASES = [
    ((2, 6, 5, 4), 1, None),
    ((2, 6, 5, 4), (1, 2, 3), 1),
    ((2, 5, 4, 6), (1, 2, 3), -1),
    ((2, 5, 4, 6), (1, 2), None),
    ((3, 4, 5), (0, 2), 2),
    ((3, 4, 5), 0, None),
    ((2, 3, 4, 5), (-3, -1), (-3, -1)),
    ((2, 3, 4), -1, None),
]


def _norm(center):
    return fastnorm.layer_norm if center else fastnorm.rms_norm


def _call(center, x, axis, feature, w, b, eps, **kw):
    if center:
        return fastnorm.layer_norm(x, None, w, b, eps, axis=axis, feature_axis=feature, **kw)
    return fastnorm.rms_norm(x, None, w, eps, axis=axis, feature_axis=feature, **kw)


def _params(rng, x_shape, axis, feature, dtype):
    ndim = len(x_shape)
    axes = (axis,) if isinstance(axis, int) else axis
    feat = axes if feature is None else ((feature,) if isinstance(feature, int) else feature)
    pshape = tuple(x_shape[a % ndim] for a in sorted(a % ndim for a in feat))
    w = (1 + 0.3 * rng.standard_normal(pshape)).astype(dtype)
    b = (0.5 * rng.standard_normal(pshape)).astype(dtype)
    return w, b, axes, feat


@pytest.mark.parametrize("shape, axis, feature", CASES)
@pytest.mark.parametrize("center", [True, False], ids=["layer", "rms"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_forward_matches_the_formula(backend, rng, shape, axis, feature, center, dtype):
    x = random_input(rng, shape, dtype, offset=3.0)
    w, b, axes, feat = _params(rng, shape, axis, feature, param_dtype(dtype))
    bias = b if center else None
    y = _call(center, x, axis, feature, w, bias, 1e-5)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert_output_close(y, formula(x, axes, w, bias, 1e-5, feat, center), dtype)


@pytest.mark.parametrize("shape, axis, feature", CASES)
@pytest.mark.parametrize("center", [True, False], ids=["layer", "rms"])
def test_gradients_by_finite_differences(backend, rng, shape, axis, feature, center):
    x = rng.standard_normal(shape)
    w, b, axes, feat = _params(rng, shape, axis, feature, np.float64)
    bias = b if center else None
    probe = rng.standard_normal(shape)

    def loss():
        return float(np.sum(_call(center, x, axis, feature, w, bias, 1e-5) * probe))

    layer = (fastnorm.LayerNorm if center else fastnorm.RMSNorm)(
        tuple(shape[a % len(shape)] for a in sorted(a % len(shape) for a in axes)),
        eps=1e-5, dtype=np.float64,
        axis=tuple(sorted(a % len(shape) for a in axes)),
        feature_axis=tuple(sorted(a % len(shape) for a in feat)),
    )
    layer.weight[...] = w
    if center:
        layer.bias[...] = b
    y = layer(x)
    np.testing.assert_array_equal(y, _call(center, x, axis, feature, w, bias, 1e-5))
    dx = layer.backward(probe)
    assert_fd_close(dx, central_differences(loss, x), "dx")
    assert_fd_close(layer.grad_weight, central_differences(loss, w), "grad_weight")
    if center:
        assert_fd_close(layer.grad_bias, central_differences(loss, b), "grad_bias")

    # the functional backward from the forward's statistics gives the layer's gradients
    if center:
        _, mean, rstd = fastnorm.layer_norm(x, None, w, b, 1e-5, axis=axis, feature_axis=feature,
                                            return_stats=True)
        got = fastnorm.layer_norm_backward(probe, x, None, mean, rstd, w, axis=axis, feature_axis=feature)
        want = (dx, layer.grad_weight, layer.grad_bias)
    else:
        _, rstd = fastnorm.rms_norm(x, None, w, 1e-5, axis=axis, feature_axis=feature, return_stats=True)
        got = fastnorm.rms_norm_backward(probe, x, None, rstd, w, axis=axis, feature_axis=feature)
        want = (dx, layer.grad_weight)
    kept = [d for i, d in enumerate(shape) if i not in {a % len(shape) for a in axes}]
    assert rstd.shape == tuple(kept)
    for g, ref in zip(got, want):
        np.testing.assert_allclose(g, ref, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gradients_against_the_formula_float32(backend, rng, dtype):
    """dx against the float64 formula's gradient (finite differences of it) in the data type."""
    shape, axis = (3, 8, 4, 5), 1
    x = random_input(rng, shape, dtype, offset=2.0)
    w = (1 + 0.3 * rng.standard_normal(8)).astype(dtype)
    b = rng.standard_normal(8).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    layer = fastnorm.LayerNorm(8, axis=1, dtype=dtype)
    layer.weight[...] = w
    layer.bias[...] = b
    layer(x)
    dx = layer.backward(dy)
    x64 = x.astype(np.float64)

    def loss():
        return float(np.sum(formula(x64, (axis,), w, b) * dy))

    ref = central_differences(loss, x64)
    assert_grad_close(dx, ref, dtype, "dx", floor=1e-7 if dtype == np.float64 else 0.0)


def test_the_trailing_case_is_layer_norm_itself(backend, rng):
    x = rng.standard_normal((4, 5, 6)).astype(np.float32)
    w = rng.standard_normal((5, 6)).astype(np.float32)
    b = rng.standard_normal((5, 6)).astype(np.float32)
    ref = fastnorm.layer_norm(x, (5, 6), w, b)
    np.testing.assert_array_equal(fastnorm.layer_norm(x, (5, 6), w, b, axis=(-2, -1)), ref)
    np.testing.assert_array_equal(fastnorm.layer_norm(x, None, w, b, axis=(1, 2)), ref)
    y = fastnorm.layer_norm(x, (5, 6), w, b, axis=(1, 2))
    assert y.flags.c_contiguous


def test_non_trailing_result_layout_and_chaining(backend, rng):
    """The result is laid out with the normalized axes last; normalizing it again over the
    same axes reads it in place and gives the same numbers as from a fresh copy."""
    x = rng.standard_normal((2, 6, 5, 4)).astype(np.float32)
    y = fastnorm.layer_norm(x, 6, axis=1)
    assert y.shape == x.shape
    assert y.transpose(0, 2, 3, 1).flags.c_contiguous
    again = fastnorm.layer_norm(y, 6, axis=1)
    np.testing.assert_array_equal(again, fastnorm.layer_norm(np.ascontiguousarray(y), 6, axis=1))
    assert_output_close(again, formula(y, (1,)), np.float32)


@pytest.mark.parametrize("layout", ["c", "moved"])
def test_out(backend, rng, layout):
    x = rng.standard_normal((2, 6, 5, 4))
    w = rng.standard_normal(6)
    ref = fastnorm.layer_norm(x, 6, w, axis=1)
    if layout == "c":
        out = np.empty_like(x)
    else:
        out = np.empty((2, 5, 4, 6)).transpose(0, 3, 1, 2)
    got = fastnorm.layer_norm(x, 6, w, axis=1, out=out)
    assert got is out
    np.testing.assert_array_equal(out, ref)


def test_epilogues_and_residual_over_other_axes(backend, rng):
    x = rng.standard_normal((2, 6, 5, 4))
    s = rng.standard_normal(x.shape)
    r = rng.standard_normal(x.shape)
    w = rng.standard_normal(6)
    y = fastnorm.layer_norm(x, 6, w, axis=1, activation="relu", shortcut=s)
    np.testing.assert_allclose(y, np.maximum(formula(x, (1,), w) + s, 0), rtol=1e-12, atol=1e-12)
    (y, h) = fastnorm.rms_norm(x, 6, w, 1e-6, axis=1, residual=r)
    np.testing.assert_array_equal(h, x + r)
    np.testing.assert_allclose(y, formula(x + r, (1,), w, eps=1e-6, center=False), rtol=1e-12, atol=1e-12)

    layer = fastnorm.LayerNorm(6, axis=1, activation="gelu", dtype=np.float64)
    layer.weight[...] = w
    probe = rng.standard_normal(x.shape)

    def loss():
        return float(np.sum(layer.forward(x, shortcut=s) * probe))

    layer.forward(x, shortcut=s)
    dx, ds = layer.backward(probe)
    assert_fd_close(dx, central_differences(loss, x), "dx")
    assert_fd_close(ds, central_differences(loss, s), "grad_shortcut")


def test_layers_state_and_repr():
    ln = fastnorm.LayerNorm((8, 5, 5), feature_axis=-3)
    assert ln.weight.shape == (8,) and ln.bias.shape == (8,)
    assert "feature_axis=(-3,)" in repr(ln)
    ln2 = fastnorm.LayerNorm(8, axis=1)
    assert ln2.weight.shape == (8,) and "axis=(1,)" in repr(ln2)
    ln2.load_state_dict({"weight": np.full(8, 2.0), "bias": np.zeros(8)})
    assert set(ln2.state_dict()) == {"weight", "bias"}
    rms = fastnorm.RMSNorm((4, 6), axis=(1, 3), feature_axis=3)
    assert rms.weight.shape == (6,)


@pytest.mark.parametrize("kwargs, exc, words", [
    ({"axis": 4}, ValueError, "axis 4 is out of range"),
    ({"axis": (1, 1)}, ValueError, "twice"),
    ({"axis": ()}, ValueError, "at least one"),
    ({"axis": 1.5}, TypeError, "axis"),
    ({"axis": 1, "feature_axis": 2}, ValueError, "feature_axis"),
    ({"axis": 1, "normalized_shape": 5}, ValueError, "normalized_shape"),
    ({"normalized_shape": None}, TypeError, "normalized_shape must be an int"),
])
def test_errors_name_the_argument(kwargs, exc, words):
    x = np.zeros((2, 6, 5, 4), np.float32)
    kw = {"normalized_shape": None if "axis" in kwargs else 4, **kwargs}
    shape = kw.pop("normalized_shape")
    with pytest.raises(exc, match=words):
        fastnorm.layer_norm(x, shape, **kw)


@pytest.mark.parametrize("kwargs, words", [
    ({"axis": (1, -1)}, "all non-negative or all negative"),
    ({"axis": (1, 2), "feature_axis": 3}, "feature_axis"),
    ({"axis": (1,)}, "one axis per dimension"),
    ({"feature_axis": 1}, "all non-negative or all negative"),
])
def test_layer_errors(kwargs, words):
    with pytest.raises(ValueError, match=words):
        fastnorm.LayerNorm((6, 5), **kwargs)


def test_weight_shape_error_names_it():
    x = np.zeros((2, 6, 5, 4), np.float32)
    with pytest.raises(ValueError, match="weight must have shape \\(6,\\)"):
        fastnorm.layer_norm(x, (6, 5, 4), np.ones((6, 5, 4)), feature_axis=1)


@pytest.mark.parametrize("shape, axis, feature", [c for c in CASES if c[2] is None])
@pytest.mark.parametrize("center", [True, False], ids=["layer", "rms"])
def test_matches_pytorch_on_the_permuted_input(backend, rng, shape, axis, feature, center):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    x = rng.standard_normal(shape).astype(np.float32)
    ndim = len(shape)
    axes = sorted(a % ndim for a in ((axis,) if isinstance(axis, int) else axis))
    perm = [a for a in range(ndim) if a not in axes] + axes
    nshape = tuple(shape[a] for a in axes)
    w = rng.standard_normal(nshape).astype(np.float32)
    b = rng.standard_normal(nshape).astype(np.float32)
    xt = torch.from_numpy(x).permute(*perm).contiguous().requires_grad_(True)
    wt = torch.from_numpy(w).requires_grad_(True)
    bt = torch.from_numpy(b).requires_grad_(True)
    if center:
        yt = torch.nn.functional.layer_norm(xt, nshape, wt, bt, 1e-5)
        layer = fastnorm.LayerNorm(nshape, axis=tuple(axes))
        layer.bias[...] = b
    else:
        yt = torch.nn.functional.rms_norm(xt, nshape, wt, 1e-6)
        layer = fastnorm.RMSNorm(nshape, 1e-6, axis=tuple(axes))
    layer.weight[...] = w
    y = layer(x)
    inverse = np.argsort(perm)
    np.testing.assert_allclose(y, yt.detach().numpy().transpose(inverse), rtol=1e-5, atol=1e-5)
    dy = rng.standard_normal(shape).astype(np.float32)
    yt.backward(torch.from_numpy(np.ascontiguousarray(dy.transpose(perm))))
    dx = layer.backward(dy)
    np.testing.assert_allclose(dx, xt.grad.numpy().transpose(inverse), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.grad_weight, wt.grad.numpy(), rtol=1e-4, atol=1e-4)
    if center:
        np.testing.assert_allclose(layer.grad_bias, bt.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_cuda_backend_refuses_other_axes(monkeypatch):
    from fastnorm import functional

    monkeypatch.setattr(functional, "_on_cuda", lambda: True)
    x = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(NotImplementedError, match="CPU backends"):
        fastnorm.layer_norm(x, 3, axis=1)


def test_per_channel_parameters_over_chw_is_group_norm_with_one_group(backend, rng):
    """Each sample over (C, H, W) with per-channel parameters: GroupNorm(1, C)'s numbers,
    with out=, an epilogue and the statistics."""
    x = rng.standard_normal((3, 6, 5, 4))
    w, b = rng.standard_normal(6), rng.standard_normal(6)
    s = rng.standard_normal(x.shape)
    y = fastnorm.layer_norm(x, (6, 5, 4), w, b, feature_axis=1)
    np.testing.assert_array_equal(y, fastnorm.group_norm(x, 1, w, b))
    out = np.empty_like(x)
    got, mean, rstd = fastnorm.layer_norm(x, (6, 5, 4), w, b, feature_axis=1, out=out,
                                          activation="relu", shortcut=s, return_stats=True)
    assert got is out and mean.shape == (3,) and rstd.shape == (3,)
    np.testing.assert_allclose(out, np.maximum(formula(x, (1, 2, 3), w, b, feature=(1,)) + s, 0),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mean, x.mean(axis=(1, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(rstd, 1 / np.sqrt(x.var(axis=(1, 2, 3)) + 1e-5), rtol=1e-12)
    dy = rng.standard_normal(x.shape)
    with pytest.raises(ValueError, match="dy"):
        fastnorm.layer_norm_backward(dy[:2], x, (6, 5, 4), mean, rstd, w, feature_axis=1)
    dx_out = np.empty_like(x)
    dx, dw, db = fastnorm.layer_norm_backward(dy, x, (6, 5, 4), mean, rstd, w, feature_axis=1,
                                              out=dx_out)
    assert dx is dx_out and dw.shape == (6,) and db.shape == (6,)
    ref = fastnorm.group_norm_backward(dy, x, 1, mean[:, None], rstd[:, None], w)
    for g, want in zip((dx, dw, db), ref):
        np.testing.assert_allclose(g, want, rtol=1e-13, atol=1e-13)
