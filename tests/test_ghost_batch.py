"""Ghost batch normalization (``virtual_batch_size``): each virtual batch normalized with its
own statistics, against the float64 oracle applied to each virtual batch, finite differences
and the running statistics' definition."""

from __future__ import annotations

import naive
import numpy as np
import pytest
from conftest import assert_grad_close, assert_output_close
from gradcheck import assert_fd_close, central_differences

import fastnorm


@pytest.mark.parametrize("axis", [1, -1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("shape", [(8, 4, 5, 6), (32, 16, 20, 20)], ids=["small", "large"])
def test_ghost_batches_match_the_oracle_per_virtual_batch(backend, rng, axis, dtype, shape):
    if axis == -1:
        shape = (shape[0], *shape[2:], shape[1])
    vbs = 4
    c = shape[axis]
    x = (2 * rng.standard_normal(shape) + 1).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w, b = rng.uniform(0.5, 1.5, c), rng.standard_normal(c)
    rm, rv = np.zeros(c), np.ones(c)
    y, mean, rstd = fastnorm.batch_norm(x, rm, rv, w, b, training=True, momentum=0.3, axis=axis,
                                        virtual_batch_size=vbs, return_stats=True)
    g = shape[0] // vbs
    parts = [x[i * vbs:(i + 1) * vbs] for i in range(g)]
    ref = np.concatenate([naive.batch_norm(p, None, None, w, b, True, axis=axis)["y"] for p in parts])
    assert y.dtype == x.dtype
    assert_output_close(y, ref, dtype)
    stats = [naive.batch_stats(p, axis) for p in parts]
    assert mean.shape == rstd.shape == (g, c)
    np.testing.assert_allclose(mean, [s[0] for s in stats], rtol=1e-6, atol=1e-7)
    n = stats[0][2]
    np.testing.assert_allclose(rm, 0.3 * np.mean([s[0] for s in stats], axis=0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(rv, 0.7 + 0.3 * np.mean([s[1] * n / (n - 1) for s in stats], axis=0),
                               rtol=1e-6)
    dx, dw, db = fastnorm.batch_norm_backward(dy, x, mean, rstd, w, axis=axis, virtual_batch_size=vbs)
    refs = [naive.batch_norm_backward(p, dy[i * vbs:(i + 1) * vbs], s[0], s[1], w, 1e-5, axis)
            for i, (p, s) in enumerate(zip(parts, stats))]
    assert_grad_close(dx, np.concatenate([r[0] for r in refs]), dtype)
    assert_grad_close(dw, sum(r[1] for r in refs), dtype)
    assert_grad_close(db, sum(r[2] for r in refs), dtype)
    layer = fastnorm.BatchNorm(c, axis=axis, virtual_batch_size=vbs, dtype=np.float64)
    layer.weight[...], layer.bias[...] = w, b
    np.testing.assert_array_equal(layer(x), y)
    np.testing.assert_array_equal(layer.backward(dy), dx)
    layer.eval()  # evaluation: the running statistics, no ghost batches
    np.testing.assert_array_equal(layer(x), fastnorm.batch_norm(x, layer.running_mean, layer.running_var,
                                                                w, b, axis=axis))


def test_backward_by_finite_differences(rng):
    x = rng.standard_normal((6, 3, 4))
    w, b = rng.uniform(0.5, 1.5, 3), rng.standard_normal(3)
    dy = rng.standard_normal(x.shape)
    sc = rng.standard_normal(x.shape)
    bn = fastnorm.BatchNorm1d(3, virtual_batch_size=3, activation="silu", dtype=np.float64)
    bn.weight[...], bn.bias[...] = w, b

    def loss():
        return float(np.sum(bn(x, shortcut=sc) * dy))

    loss()
    dx, dsc = bn.backward(dy)
    assert_fd_close(dx, central_differences(loss, x), "dx")
    assert_fd_close(dsc, central_differences(loss, sc), "grad_shortcut")
    assert_fd_close(bn.grad_weight, central_differences(loss, bn.weight), "grad_weight")


def test_virtual_batch_errors(rng):
    x = rng.standard_normal((6, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="virtual_batch_size .4. must divide"):
        fastnorm.batch_norm(x, training=True, virtual_batch_size=4)
    with pytest.raises(ValueError, match="virtual_batch_size must be positive"):
        fastnorm.batch_norm(x, training=True, virtual_batch_size=0)
    with pytest.raises(TypeError, match="virtual_batch_size"):
        fastnorm.batch_norm(x, training=True, virtual_batch_size=2.0)
    with pytest.raises(ValueError, match="Expected more than 1 value"):
        fastnorm.batch_norm(x, training=True, virtual_batch_size=1)  # one value per statistic
    with pytest.raises(ValueError, match="virtual_batch_size"):
        fastnorm.BatchNorm1d(3, virtual_batch_size=0)
    # inference ignores it (the running statistics normalize)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    np.testing.assert_array_equal(fastnorm.batch_norm(x, rm, rv, virtual_batch_size=4),
                                  fastnorm.batch_norm(x, rm, rv))
