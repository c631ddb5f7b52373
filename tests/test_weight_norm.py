"""Weight normalization: ``w = g * v / ||v||`` against a float64 formula, finite differences,
PyTorch's ``torch._weight_norm``, and at norms where a plain sum of squares fails."""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import assert_fd_close, central_differences

import fastnorm


def formula(v, g, axis):
    """The definition in float64, summing squares directly (fine at moderate magnitudes)."""
    v = np.asarray(v, dtype=np.float64)
    others = tuple(i for i in range(v.ndim) if i != axis)
    keep = tuple(v.shape[axis] if i == axis else 1 for i in range(v.ndim))
    norm = np.sqrt(np.sum(v * v, axis=others, keepdims=True))
    return np.asarray(g, dtype=np.float64).reshape(keep) * v / norm


@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_forward_matches_the_formula(rng, axis, dtype):
    v = rng.standard_normal((5, 4, 3)).astype(dtype)
    c = v.shape[axis]
    g = rng.uniform(0.5, 2.0, c).astype(dtype)
    w = fastnorm.weight_norm(v, g, axis)
    assert w.dtype == v.dtype and w.shape == v.shape
    tol = {np.float16: 1e-3, np.float32: 1e-6, np.float64: 1e-14}[dtype]
    np.testing.assert_allclose(w, formula(v, g, axis % 3), rtol=tol, atol=tol)
    keep = tuple(c if i == axis % 3 else 1 for i in range(3))
    np.testing.assert_array_equal(fastnorm.weight_norm(v, g.reshape(keep), axis), w)


@pytest.mark.parametrize("axis", [0, 2])
def test_backward_by_finite_differences(rng, axis):
    v = rng.standard_normal((3, 4, 5))
    g = rng.uniform(0.5, 2.0, v.shape[axis])
    probe = rng.standard_normal(v.shape)

    def loss():
        return float(np.sum(fastnorm.weight_norm(v, g, axis) * probe))

    dv, dg = fastnorm.weight_norm_backward(probe, v, g, axis)
    assert dv.shape == v.shape and dg.shape == g.shape
    assert_fd_close(dv, central_differences(loss, v), "dv")
    assert_fd_close(dg, central_differences(loss, g), "dg")


@pytest.mark.parametrize("scale", [1e-200, 1e-160, 1e160, 1e200])
def test_tiny_and_huge_norms_are_exact(rng, scale):
    """A sum of squares underflows to 0 (1e-200) or overflows to inf (1e200); scaled by the
    largest magnitude first, w and the gradients are those of the unscaled v."""
    v = rng.standard_normal((4, 6))
    g = rng.uniform(0.5, 2.0, (4, 1))
    dw = rng.standard_normal(v.shape)
    w = fastnorm.weight_norm(v, g)
    dv, dg = fastnorm.weight_norm_backward(dw, v, g)
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        naive = formula(v * scale, g, 0)
    assert not np.allclose(naive, w)  # the plain formula fails at this scale
    np.testing.assert_allclose(fastnorm.weight_norm(v * scale, g), w, rtol=1e-15, atol=1e-15)
    dv_s, dg_s = fastnorm.weight_norm_backward(dw, v * scale, g)
    np.testing.assert_allclose(dv_s * scale, dv, rtol=1e-14, atol=1e-15)  # dv scales as 1/scale
    np.testing.assert_allclose(dg_s, dg, rtol=1e-14, atol=1e-15)


def test_matches_pytorch(rng):
    torch = pytest.importorskip("torch")
    v = rng.standard_normal((8, 3, 3, 3))
    g = rng.uniform(0.5, 2.0, (8, 1, 1, 1))
    dw = rng.standard_normal(v.shape)
    tv = torch.tensor(v, requires_grad=True)
    tg = torch.tensor(g, requires_grad=True)
    tw = torch._weight_norm(tv, tg, 0)
    tw.backward(torch.tensor(dw))
    np.testing.assert_allclose(fastnorm.weight_norm(v, g, 0), tw.detach().numpy(), rtol=1e-14, atol=1e-15)
    dv, dg = fastnorm.weight_norm_backward(dw, v, g, 0)
    np.testing.assert_allclose(dv, tv.grad.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dg, tg.grad.numpy(), rtol=1e-12, atol=1e-14)


def test_errors(rng):
    v = rng.standard_normal((3, 4))
    with pytest.raises(ValueError, match="g must have shape"):
        fastnorm.weight_norm(v, np.ones(4))
    with pytest.raises(TypeError, match="v"):
        fastnorm.weight_norm(v.astype(np.int64), np.ones(3))
    with pytest.raises(ValueError, match="dw"):
        fastnorm.weight_norm_backward(np.ones((3, 5)), v, np.ones(3))
    with pytest.raises(ValueError, match="axis"):
        fastnorm.weight_norm(v, np.ones(3), axis=2)
    w = fastnorm.weight_norm(np.zeros((2, 3)), np.ones(2))  # a zero direction: NaN, as PyTorch
    assert np.isnan(w).all()


def test_whole_array_norm_matches_pytorch_dim_minus_one(rng):
    torch = pytest.importorskip("torch")
    v = rng.standard_normal((4, 3, 2))
    g = np.array(1.7)
    dw = rng.standard_normal(v.shape)
    tv = torch.tensor(v, requires_grad=True)
    tg = torch.tensor(g, requires_grad=True)
    tw = torch._weight_norm(tv, tg, -1)  # torch's spelling of the whole tensor
    tw.backward(torch.tensor(dw))
    np.testing.assert_allclose(fastnorm.weight_norm(v, g, axis=None), tw.detach().numpy(), rtol=1e-14)
    dv, dg = fastnorm.weight_norm_backward(dw, v, g, axis=None)
    np.testing.assert_allclose(dv, tv.grad.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dg, tg.grad.numpy(), rtol=1e-12)
    assert dg.shape == ()


def test_whole_array_norm_against_the_formula(rng):
    v = rng.standard_normal((3, 5))
    w = fastnorm.weight_norm(v, [2.0], axis=None)
    np.testing.assert_allclose(w, 2.0 * v / np.sqrt(np.sum(v * v)), rtol=1e-14)
    with pytest.raises(ValueError, match="one value"):
        fastnorm.weight_norm(v, np.ones(3), axis=None)


def test_bfloat16_g_keeps_its_dtype(rng):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    v = rng.standard_normal((3, 4)).astype(ml_dtypes.bfloat16)
    g = np.ones(3, ml_dtypes.bfloat16)
    dv, dg = fastnorm.weight_norm_backward(np.ones((3, 4), np.float32), v, g)
    assert dv.dtype == v.dtype and dg.dtype == g.dtype
