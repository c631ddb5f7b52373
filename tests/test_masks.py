"""Masked normalization (Flax's ``mask``): statistics over the values where the mask is True,
0 in the output elsewhere, for LayerNorm, RMSNorm and BatchNorm; against the float64 formula
on the kept values, and finite differences for every gradient."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_output_close, assert_stats_close, param_dtype, random_input
from gradcheck import assert_fd_close, central_differences

import fastnorm


def masked_formula(x, mask, axes, weight=None, bias=None, eps=1e-5, feature=None, center=True):
    """The definition in float64 on the kept values, 0 elsewhere; statistics (mean, var,
    count) over ``axes`` keeping dimensions."""
    x = np.asarray(x, dtype=np.float64)
    m = np.broadcast_to(mask, x.shape)
    axes = tuple(sorted(a % x.ndim for a in axes))
    count = m.sum(axis=axes, keepdims=True)
    kept = np.maximum(count, 1)
    mean = np.where(m, x, 0).sum(axis=axes, keepdims=True) / kept
    if not center:
        mean = np.zeros_like(mean)
    dev = np.where(m, x - mean, 0)
    var = (dev * dev).sum(axis=axes, keepdims=True) / kept
    y = (x - mean) / np.sqrt(var + eps)
    feature = axes if feature is None else tuple(sorted(a % x.ndim for a in feature))
    shape = [x.shape[i] if i in feature else 1 for i in range(x.ndim)]
    if weight is not None:
        y = y * np.asarray(weight, np.float64).reshape(shape)
    if bias is not None:
        y = y + np.asarray(bias, np.float64).reshape(shape)
    return np.where(m, y, 0.0), (mean, var, count)


def _token_mask(rng, n, t):
    """A sequence batch's padding: the first ``length`` tokens of each row are real."""
    lengths = rng.integers(1, t + 1, n)
    return np.arange(t)[None, :] < lengths[:, None]


@pytest.mark.parametrize("center", [True, False], ids=["layer", "rms"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("kind", ["tokens", "elements", "axis1"])
def test_rows_forward(backend, rng, center, dtype, kind):
    if kind == "axis1":
        x = random_input(rng, (3, 8, 5, 4), dtype, offset=2.0)
        mask, axes, pshape, axis = rng.random(x.shape) > 0.3, (1,), (8,), 1
    else:
        x = random_input(rng, (4, 7, 16), dtype, offset=2.0)
        mask = _token_mask(rng, 4, 7)[:, :, None] if kind == "tokens" else rng.random(x.shape) > 0.3
        axes, pshape, axis = (2,), (16,), None
    pd = param_dtype(dtype)
    w = (1 + 0.3 * rng.standard_normal(pshape)).astype(pd)
    b = rng.standard_normal(pshape).astype(pd)
    if center:
        y = fastnorm.layer_norm(x, pshape, w, b, axis=axis, mask=mask)
        ref, _ = masked_formula(x, mask, axes, w, b)
    else:
        y = fastnorm.rms_norm(x, pshape, w, 1e-6, axis=axis, mask=mask)
        ref, _ = masked_formula(x, mask, axes, w, None, 1e-6, center=False)
    assert_output_close(y, ref, dtype)
    assert np.all(y[~np.broadcast_to(mask, x.shape)] == 0)


@pytest.mark.parametrize("center", [True, False], ids=["layer", "rms"])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_rows_gradients_by_finite_differences(backend, rng, center, activation):
    x = rng.standard_normal((3, 4, 6)) + 1.5
    mask = rng.random(x.shape) > 0.35
    mask[0, 1] = False  # a row with nothing kept
    w = 1 + 0.3 * rng.standard_normal(6)
    b = rng.standard_normal(6)
    probe = rng.standard_normal(x.shape)
    layer = (fastnorm.LayerNorm(6, dtype=np.float64, activation=activation) if center
             else fastnorm.RMSNorm(6, 1e-5, dtype=np.float64, activation=activation))
    layer.weight[...] = w
    if center:
        layer.bias[...] = b

    def loss():
        return float(np.sum(layer(x, mask=mask) * probe))

    y = layer(x, mask=mask)
    assert np.all(y[0, 1] == 0)
    dx = layer.backward(probe)
    assert_fd_close(dx, central_differences(loss, x), "dx")
    assert np.all(dx[~mask] == 0)
    assert_fd_close(layer.grad_weight, central_differences(loss, layer.weight), "grad_weight")
    if center:
        assert_fd_close(layer.grad_bias, central_differences(loss, layer.bias), "grad_bias")


def test_rows_functional_backward_matches_the_layer(backend, rng):
    x = rng.standard_normal((3, 8, 5, 4))
    mask = rng.random(x.shape) > 0.3
    w, b = rng.standard_normal(8), rng.standard_normal(8)
    dy = rng.standard_normal(x.shape)
    layer = fastnorm.LayerNorm(8, axis=1, dtype=np.float64)
    layer.weight[...], layer.bias[...] = w, b
    layer(x, mask=mask)
    dx = layer.backward(dy)
    _, mean, rstd = fastnorm.layer_norm(x, 8, w, b, axis=1, mask=mask, return_stats=True)
    _, (m_ref, v_ref, _) = masked_formula(x, mask, (1,), w, b)
    np.testing.assert_allclose(mean, m_ref[:, 0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(rstd, 1 / np.sqrt(v_ref[:, 0] + 1e-5), rtol=1e-12)
    got = fastnorm.layer_norm_backward(dy, x, 8, mean, rstd, w, axis=1, mask=mask)
    for g, want in zip(got, (dx, layer.grad_weight, layer.grad_bias)):
        np.testing.assert_allclose(g, want, rtol=1e-12, atol=1e-12)
    _, rstd = fastnorm.rms_norm(x, 8, w, 1e-6, axis=1, mask=mask, return_stats=True)
    rms = fastnorm.RMSNorm(8, 1e-6, axis=1, dtype=np.float64)
    rms.weight[...] = w
    rms(x, mask=mask)
    dx = rms.backward(dy)
    got = fastnorm.rms_norm_backward(dy, x, 8, rstd, w, axis=1, mask=mask)
    np.testing.assert_allclose(got[0], dx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got[1], rms.grad_weight, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("offset, dtype", [(1e4, np.float32), (1e8, np.float64)])
def test_hostile_offsets(backend, rng, offset, dtype):
    """Large offsets over long rows, most values masked out: the statistics of the kept
    values to the accuracy of unmasked normalization, not E[x^2] - E[x]^2's."""
    x = random_input(rng, (4, 20000), dtype, offset=offset)
    x[:, ::3] = np.nan  # masked out: whatever they hold does not reach the result
    mask = np.ones(x.shape, bool)
    mask[:, ::3] = False
    mask[1, 10:] = False
    y = fastnorm.layer_norm(x, 20000, mask=mask)
    xs = np.where(mask, x, 0.0)
    ref, _ = masked_formula(xs, mask, (1,))
    # the mean is a float64 number near the offset: its rounding (and the oracle's) is an
    # absolute error of a unit in its last place in every x - mean
    assert_output_close(y, ref, dtype, floor=2 * float(np.spacing(np.float64(offset))))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("axis", [1, -1])
def test_batch_norm_training_forward_and_running_stats(backend, rng, dtype, axis):
    shape = (4, 5, 6) if axis == 1 else (4, 6, 5)
    x = random_input(rng, shape, dtype, offset=1.0)
    mask = _token_mask(rng, 4, 6)
    mask = mask[:, None, :] if axis == 1 else mask[:, :, None]
    pd = param_dtype(dtype)
    w, b = rng.standard_normal(5).astype(pd), rng.standard_normal(5).astype(pd)
    rm, rv = np.zeros(5, pd), np.ones(5, pd)
    y = fastnorm.batch_norm(x, rm, rv, w, b, training=True, momentum=0.2, axis=axis, mask=mask)
    caxis = 1 if axis == 1 else 2
    axes = tuple(i for i in range(3) if i != caxis)
    ref, (mean, var, count) = masked_formula(x, mask, axes, w, b, feature=(caxis,))
    assert_output_close(y, ref, dtype)
    mean, var, count = mean.reshape(-1), var.reshape(-1), count.reshape(-1)
    assert_stats_close(rm, 0.2 * mean)
    assert_stats_close(rv, 0.8 + 0.2 * var * count / (count - 1))


def test_batch_norm_inference_and_layer(backend, rng):
    x = rng.standard_normal((4, 3, 7))
    mask = rng.random((4, 1, 7)) > 0.3
    rm, rv = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    y = fastnorm.batch_norm(x, rm, rv, training=False, mask=mask)
    ref = (x - rm[:, None]) / np.sqrt(rv[:, None] + 1e-5)
    np.testing.assert_allclose(y, np.where(mask, ref, 0), rtol=1e-12, atol=1e-12)

    bn = fastnorm.BatchNorm1d(3, dtype=np.float64)
    bn.weight[...] = rng.standard_normal(3)
    probe = rng.standard_normal(x.shape)
    for training in (True, False):
        bn.train(training)

        def loss():
            return float(np.sum(bn(x, mask=mask) * probe))

        bn(x, mask=mask)
        dx = bn.backward(probe)
        state = (bn.running_mean.copy(), bn.running_var.copy(), bn.num_batches_tracked)
        assert_fd_close(dx, central_differences(loss, x), f"dx training={training}")
        assert_fd_close(bn.grad_weight, central_differences(loss, bn.weight), "grad_weight")
        assert_fd_close(bn.grad_bias, central_differences(loss, bn.bias), "grad_bias")
        bn.running_mean[...], bn.running_var[...], bn.num_batches_tracked = state
        assert np.all(dx[~np.broadcast_to(mask, x.shape)] == 0)


def test_batch_norm_functional_backward_matches_the_layer(backend, rng):
    x = rng.standard_normal((5, 3, 4, 4))
    mask = rng.random((5, 1, 4, 4)) > 0.4
    w, b = rng.standard_normal(3), rng.standard_normal(3)
    dy = rng.standard_normal(x.shape)
    bn = fastnorm.BatchNorm2d(3, dtype=np.float64, activation="relu")
    bn.weight[...], bn.bias[...] = w, b
    bn(x, mask=mask)
    dx = bn.backward(dy)
    _, mean, rstd = fastnorm.batch_norm(x, None, None, w, b, training=True, mask=mask,
                                        return_stats=True)
    z = fastnorm.batch_norm(x, None, None, w, b, training=True, mask=mask)
    dz = np.where(z > 0, dy, 0)
    got = fastnorm.batch_norm_backward(dz, x, mean, rstd, w, mask=mask)
    for g, want in zip(got, (dx, bn.grad_weight, bn.grad_bias)):
        np.testing.assert_allclose(g, want, rtol=1e-12, atol=1e-12)


def test_batch_norm_against_torch_on_the_kept_values(backend, rng):
    """PyTorch's batch_norm on the kept positions alone (the padding removed) gives the same
    statistics, output and running update."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    x = rng.standard_normal((6, 9, 4)).astype(np.float32)  # (N, T, C), channels last
    mask = _token_mask(rng, 6, 9)
    rm, rv = np.zeros(4, np.float32), np.ones(4, np.float32)
    y = fastnorm.batch_norm(x, rm, rv, training=True, axis=-1, mask=mask[:, :, None])
    rmt, rvt = torch.zeros(4), torch.ones(4)
    yt = torch.nn.functional.batch_norm(torch.from_numpy(x[mask]), rmt, rvt, training=True)
    np.testing.assert_allclose(y[mask], yt.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rm, rmt.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(rv, rvt.numpy(), rtol=1e-6, atol=1e-6)


def test_layer_norm_against_torch_on_the_kept_tokens(backend, rng):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    x = rng.standard_normal((3, 5, 8)).astype(np.float32)
    mask = _token_mask(rng, 3, 5)
    w, b = rng.standard_normal(8).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    y = fastnorm.layer_norm(x, 8, w, b, mask=mask[:, :, None])
    yt = torch.nn.functional.layer_norm(torch.from_numpy(x[mask]), (8,), torch.from_numpy(w),
                                        torch.from_numpy(b))
    np.testing.assert_allclose(y[mask], yt.numpy(), rtol=1e-5, atol=1e-5)
    assert np.all(y[~mask] == 0)


def test_a_failed_call_changes_nothing(backend, rng):
    x = rng.standard_normal((3, 2, 4))
    mask = np.zeros((3, 1, 4), bool)
    mask[0, 0, 0] = True  # one value per channel
    rm, rv = np.zeros(2), np.ones(2)
    out = np.full_like(x, 7.0)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        fastnorm.batch_norm(x, rm, rv, training=True, mask=mask, out=out)
    assert np.all(rm == 0) and np.all(rv == 1) and np.all(out == 7.0)
    bn = fastnorm.BatchNorm1d(2, dtype=np.float64)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn(x, mask=mask)
    assert bn.num_batches_tracked == 0 and np.all(bn.running_mean == 0)


@pytest.mark.parametrize("call, exc, words", [
    (lambda x: fastnorm.layer_norm(x, 4, mask=np.ones(x.shape)), TypeError, "mask must be a bool"),
    (lambda x: fastnorm.layer_norm(x, 4, mask=np.ones((3, 3), bool)), ValueError, "does not broadcast"),
    (lambda x: fastnorm.rms_norm(x, 4, mask=np.ones(x.shape, bool), residual=x), ValueError,
     "residual"),
    (lambda x: fastnorm.batch_norm(x, training=True, mask=np.ones(x.shape, bool),
                                   virtual_batch_size=1), ValueError, "virtual_batch_size"),
])
def test_errors(call, exc, words):
    x = np.ones((2, 3, 4))
    with pytest.raises(exc, match=words):
        call(x)


def test_all_kept_is_the_unmasked_call(backend, rng):
    x = rng.standard_normal((4, 6, 8)).astype(np.float32)
    ones = np.ones(x.shape, bool)
    np.testing.assert_allclose(fastnorm.layer_norm(x, 8, mask=ones), fastnorm.layer_norm(x, 8),
                               rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(fastnorm.batch_norm(x, training=True, mask=ones),
                               fastnorm.batch_norm(x, training=True), rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("kind", ["tokens", "elements", "batch"])
def test_left_out_values_may_hold_anything(backend, rng, kind):
    """Padding holding nan and inf gives the results of padding holding zeros."""
    x = rng.standard_normal((4, 6, 8))
    if kind == "tokens":
        mask = _token_mask(rng, 4, 6)[:, :, None]
    elif kind == "batch":  # (N, C, L): padding along L
        mask = _token_mask(rng, 4, 8)[:, None, :]
    else:
        mask = rng.random(x.shape) > 0.3
    full = np.broadcast_to(mask, x.shape)
    bad = x.copy()
    bad[~full] = np.where(rng.random(int((~full).sum())) > 0.5, np.nan, np.inf)
    clean = np.where(full, x, 0.0)
    probe = rng.standard_normal(x.shape)
    results = []
    for data in (bad, clean):
        layer = (fastnorm.BatchNorm1d(6, dtype=np.float64) if kind == "batch"
                 else fastnorm.LayerNorm(8, dtype=np.float64))
        y = layer(data, mask=mask)
        dx = layer.backward(probe)
        results.append((y, dx, layer.grad_weight, layer.grad_bias))
    for got, want in zip(*results):
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("family", ["layer", "rows", "batch"])
def test_huge_values_left_out_do_not_overflow(backend, rng, family):
    """The largest float32 where the mask is False: 0 in the output and the gradient, finite
    parameter gradients (the backward then fills those values)."""
    x = (0.5 * rng.standard_normal((8, 8))).astype(np.float32)
    if family in ("rows", "batch"):  # whole rows (samples) left out
        mask = np.ones((8, 1), bool)
        mask[-2:] = False
        x[-2:] = np.finfo(np.float32).max
    else:
        mask = np.ones((8, 8), bool)
        mask[:, -2:] = False
        x[:, -2:] = np.finfo(np.float32).max
    layer = fastnorm.BatchNorm1d(8) if family == "batch" else fastnorm.LayerNorm(8)
    y = layer(x, mask=mask)
    dx = layer.backward(np.ones_like(x))
    full = np.broadcast_to(mask, x.shape)
    assert np.all(y[~full] == 0) and np.all(dx[~full] == 0)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx))
    assert np.all(np.isfinite(layer.grad_weight)) and np.all(np.isfinite(layer.grad_bias))


def test_whole_rows_left_out_keep_grad_bias_exact(backend, rng):
    """grad_bias sums the kept rows' dy only (no cancellation against the rows left out) and
    ignores nan there."""
    x = rng.standard_normal((1000, 8)).astype(np.float32)
    mask = np.zeros((1000, 1), bool)
    mask[:3] = True
    dy = np.full(x.shape, 1e4, np.float32)
    dy[:3] = 1e-3
    dy[500] = np.nan
    layer = fastnorm.LayerNorm(8)
    layer(x, mask=mask)
    dx = layer.backward(dy)
    np.testing.assert_allclose(layer.grad_bias, 3e-3, rtol=1e-6)
    assert np.all(np.isfinite(layer.grad_weight)) and np.all(dx[3:] == 0)


@pytest.mark.parametrize("shape, kw", [
    ((4, 0, 8), {"axis": 1}), ((4, 6, 0), {"axis": -1}), ((0, 6, 8), {"axis": (0, 1)}),
])
def test_empty_masked_inputs(backend, shape, kw):
    x = np.zeros(shape, np.float32)
    y = fastnorm.layer_norm(x, None, mask=np.ones(shape, bool), **kw)
    assert y.shape == shape


def test_empty_batch_statistics_of_one_group_path():
    x = np.zeros((0, 4, 3), np.float32)
    y, mean, rstd = fastnorm.layer_norm(x, (4, 3), np.ones(4, np.float32), np.zeros(4, np.float32),
                                        feature_axis=-2, return_stats=True)
    assert y.shape == x.shape and mean.shape == (0,) and rstd.shape == (0,)


def test_mask_in_inference_with_ghost_batches(backend, rng):
    x = rng.standard_normal((8, 4, 5))
    mask = rng.random((8, 1, 5)) > 0.3
    bn = fastnorm.BatchNorm1d(4, virtual_batch_size=4, dtype=np.float64).eval()
    y = bn(x, mask=mask)
    ref = x / np.sqrt(1 + 1e-5)
    np.testing.assert_allclose(y, np.where(mask, ref, 0), rtol=1e-12, atol=1e-12)
    bn.train()
    with pytest.raises(ValueError, match="virtual_batch_size"):
        bn(x, mask=mask)


def test_rows_with_nothing_kept_and_eps_zero_raise_no_warning(backend):
    x = np.array([[1.0, 2.0, 3.0, 5.0], [1.0, 2.0, 3.0, 4.0]])
    mask = np.array([[1, 0, 1, 0], [0, 0, 0, 0]], bool)
    with np.errstate(all="raise"):
        y = fastnorm.layer_norm(x, 4, eps=0.0, mask=mask)
    np.testing.assert_allclose(y[0], [-1, 0, 1, 0])
    assert np.all(y[1] == 0)
