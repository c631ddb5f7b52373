"""Batch Renormalization (Ioffe 2017) as a BatchNorm option, against a hand-written NumPy
version of the paper's Algorithm 1, and its backward (r and d constants) against finite
differences of that algorithm with r and d frozen."""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import assert_fd_close, central_differences

import fastnorm


def algorithm1(x, mu, sigma, w, b, eps, rmax, rmin, dmax, axis=1, r=None, d=None):
    """Algorithm 1 in float64: ``(y, mean_B, sigma_B, r, d)``; ``r``/``d`` given: frozen."""
    x = np.asarray(x, dtype=np.float64)
    axis = axis % x.ndim
    red = tuple(i for i in range(x.ndim) if i != axis)
    shape = [1] * x.ndim
    shape[axis] = x.shape[axis]
    mb = x.mean(axis=red)
    sb = np.sqrt(x.var(axis=red) + eps)
    if r is None:
        r = np.clip(sb / sigma, rmin, rmax)
        d = np.clip((mb - mu) / sigma, -dmax, dmax)
    xhat = (x - mb.reshape(shape)) / sb.reshape(shape) * r.reshape(shape) + d.reshape(shape)
    return xhat * w.reshape(shape) + b.reshape(shape), mb, sb, r, d


@pytest.mark.parametrize("axis", [1, -1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("clipping", [{"rmax": 1.5, "rmin": 1 / 1.5, "dmax": 0.5}, {}],
                         ids=["clipped", "unclipped"])
def test_forward_follows_algorithm_1(backend, rng, axis, dtype, clipping):
    c = 4
    bn = fastnorm.BatchNorm(c, axis=axis, renorm=True, renorm_clipping=clipping, renorm_momentum=0.2,
                            momentum=0.1, dtype=np.float64)
    bn.weight[...] = rng.uniform(0.5, 1.5, c)
    bn.bias[...] = rng.standard_normal(c)
    rmax = clipping.get("rmax", np.inf)
    dmax = clipping.get("dmax", np.inf)
    mu, sigma = np.zeros(c), np.ones(c)
    run_mean, run_var = np.zeros(c), np.ones(c)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    clipped = False
    for _ in range(4):
        shape = (16, c, 6) if axis == 1 else (16, 6, c)
        x = (3 * rng.standard_normal(shape) + 2).astype(dtype)
        y = bn(x)
        ref, mb, sb, r, d = algorithm1(x, mu, sigma, bn.weight, bn.bias, bn.eps, rmax,
                                       clipping.get("rmin", 0.0), dmax, axis)
        clipped |= bool(np.any(r == rmax) or np.any(r == clipping.get("rmin")) or np.any(np.abs(d) == dmax))
        np.testing.assert_allclose(y, ref, rtol=tol, atol=tol)
        mu, sigma = mu + 0.2 * (mb - mu), sigma + 0.2 * (sb - sigma)
        n = x.size // c
        run_mean = 0.9 * run_mean + 0.1 * mb
        run_var = 0.9 * run_var + 0.1 * (sb**2 - bn.eps) * n / (n - 1)
        np.testing.assert_allclose(bn.renorm_mean, mu, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(bn.renorm_std, sigma, rtol=1e-6)
        np.testing.assert_allclose(bn.running_mean, run_mean, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(bn.running_var, run_var, rtol=1e-6)
    assert clipped == bool(clipping)  # the clipping was exercised where there is one
    bn.eval()  # inference: the running statistics
    np.testing.assert_array_equal(bn(x), fastnorm.batch_norm(x, bn.running_mean, bn.running_var, bn.weight,
                                                             bn.bias, axis=axis))


@pytest.mark.parametrize("activation", [None, "relu"])
def test_backward_treats_r_and_d_as_constants(backend, rng, activation):
    c = 3
    clip = {"rmax": 1.3, "rmin": 1 / 1.3, "dmax": 0.4}
    bn = fastnorm.BatchNorm1d(c, renorm=True, renorm_clipping=clip, dtype=np.float64, activation=activation)
    bn.weight[...] = rng.uniform(0.5, 1.5, c)
    bn.bias[...] = rng.standard_normal(c)
    bn.renorm_mean[...] = rng.standard_normal(c)
    bn.renorm_std[...] = rng.uniform(0.5, 2.0, c)
    x = 2 * rng.standard_normal((8, c, 4)) + 1
    sc = rng.standard_normal(x.shape) if activation else None
    probe = rng.standard_normal(x.shape)
    state = (bn.renorm_mean.copy(), bn.renorm_std.copy())
    _, _, _, r, d = algorithm1(x, *state, bn.weight, bn.bias, bn.eps, 1.3, 1 / 1.3, 0.4)

    def loss():  # Algorithm 1 with this step's r and d frozen
        y = algorithm1(x, *state, bn.weight, bn.bias, bn.eps, 1.3, 1 / 1.3, 0.4, r=r, d=d)[0]
        if activation:
            y = np.maximum(y + sc, 0)
        return float(np.sum(y * probe))

    bn(x, shortcut=sc)
    res = bn.backward(probe)
    dx = res[0] if activation else res
    assert_fd_close(dx, central_differences(loss, x), "dx")
    assert_fd_close(bn.grad_weight, central_differences(loss, bn.weight), "grad_weight")
    assert_fd_close(bn.grad_bias, central_differences(loss, bn.bias), "grad_bias")


def test_without_correction_it_is_batch_norm(backend, rng):
    """rmin = rmax = 1 and dmax = 0 make r = 1 and d = 0: BatchNorm's output and gradients."""
    x = rng.standard_normal((6, 4, 5))
    dy = rng.standard_normal(x.shape)
    plain = fastnorm.BatchNorm1d(4, dtype=np.float64)
    renorm = fastnorm.BatchNorm1d(4, renorm=True, renorm_clipping={"rmax": 1.0, "rmin": 1.0, "dmax": 0.0},
                                  dtype=np.float64)
    for layer in (plain, renorm):
        layer.weight[...] = np.arange(1, 5)
    np.testing.assert_allclose(renorm(x), plain(x), rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(renorm.backward(dy), plain.backward(dy), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(renorm.grad_weight, plain.grad_weight, rtol=1e-12)


def test_state_dict_and_errors(rng):
    bn = fastnorm.BatchNorm2d(3, renorm=True)
    bn(rng.standard_normal((4, 3, 2, 2)).astype(np.float32))
    state = bn.state_dict()
    assert {"renorm_mean", "renorm_std"} <= set(state)
    other = fastnorm.BatchNorm2d(3, renorm=True)
    other.load_state_dict(state)
    np.testing.assert_array_equal(other.renorm_std, bn.renorm_std)
    bn.reset_running_stats()
    np.testing.assert_array_equal(bn.renorm_std, 1.0)
    with pytest.raises(ValueError, match="track_running_stats"):
        fastnorm.BatchNorm2d(3, renorm=True, track_running_stats=False)
    with pytest.raises(ValueError, match="renorm_clipping takes"):
        fastnorm.BatchNorm2d(3, renorm=True, renorm_clipping={"r_max": 3})
    with pytest.raises(ValueError, match="rmax"):
        fastnorm.BatchNorm2d(3, renorm=True, renorm_clipping={"rmax": 0.5})
    with pytest.raises(ValueError, match="renorm_momentum"):
        fastnorm.BatchNorm2d(3, renorm=True, renorm_momentum=0.99 + 1)
    pytest.importorskip("mpi4py")
    with pytest.raises(ValueError, match="Renormalization"):
        fastnorm.SyncBatchNorm.from_batch_norm(bn)


def test_clipping_defaults_are_keras(rng):
    bn = fastnorm.BatchNorm1d(2, renorm=True, renorm_clipping={"rmax": 3.0, "dmax": None})
    assert bn.renorm_clipping == {"rmax": 3.0, "rmin": 0.0, "dmax": np.inf}
    assert "renorm=True" in repr(bn)
    with pytest.raises(ValueError, match="renorm_momentum"):
        fastnorm.BatchNorm1d(2, renorm_momentum=7)  # checked without renorm too
