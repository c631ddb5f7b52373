"""Every family on the cuda backend, both layouts, forward and backward, train and eval,
float32/float64/float16, NumPy and device arrays, against the float64 reference (tests/naive.py).

The shapes are tiny (the simulator runs a Python thread per CUDA thread) but chosen so that
every kernel path runs: reductions split across blocks and merged, several tasks per block,
channels-last lane blocks narrower than C, fused and split row kernels.
"""

import naive
import numpy as np
import pytest
from conftest import (
    assert_grad_close,
    assert_output_close,
    assert_stats_close,
    param_dtype,
)
from simhelp import DTYPES, dev, host, is_device

import fastnorm

# (family, shape, axis-or-trailing-dims, extra)
CASES = [
    ("batch", (4, 3, 4, 8), 1, {}),          # runs, split across blocks
    ("batch", (4, 4, 8, 3), -1, {}),         # lanes (C=3 < lane block), split across blocks
    ("batch", (16, 6), -1, {}),              # (N, C): lanes, C=6 > lane block of 4
    ("instance", (3, 4, 5, 6), 1, {}),       # many groups, no split
    ("instance", (3, 5, 6, 4), -1, {}),      # lanes, split
    ("group", (2, 6, 4, 5), 1, {"groups": 3}),
    ("group", (2, 4, 5, 6), -1, {"groups": 3}),  # a group spans two lane blocks
    ("layer", (5, 7, 12), 1, {}),            # fused rows (R >= blocks)
    ("layer", (2, 5, 20), 2, {}),            # few long rows: split rows
    ("rms", (5, 7, 12), 1, {}),
    ("rms", (2, 100), 1, {}),
]


def _ids(case):
    family, shape, ax, _ = case
    return f"{family}-{'x'.join(map(str, shape))}-{ax}"


def _layer(family, shape, ax, extra, pdt):
    if family == "batch":
        return fastnorm.BatchNorm(shape[ax], axis=ax, dtype=pdt)
    if family == "instance":
        return fastnorm.InstanceNorm(shape[ax], affine=True, track_running_stats=True, axis=ax,
                                     dtype=pdt)
    if family == "group":
        return fastnorm.GroupNorm(extra["groups"], shape[ax], axis=ax, dtype=pdt)
    if family == "layer":
        return fastnorm.LayerNorm(shape[-ax:], dtype=pdt)
    return fastnorm.RMSNorm(shape[-ax:], dtype=pdt)


def _reference(family, x, dy, ax, extra, w, b, rm, rv, training):
    """(y, dx, dw, db, new running mean, new running var) of the float64 oracle."""
    if family == "batch":
        r = naive.batch_norm(x, rm, rv, w, b, training=training, axis=ax)
        g = naive.batch_norm_backward(x, dy, r["mean"], r["var"], w, axis=ax, batch_stats=training)
        return (r["y"], *g, r["running_mean"], r["running_var"])
    if family == "instance":
        r = naive.instance_norm(x, rm, rv, w, b, use_input_stats=training, axis=ax)
        g = naive.instance_norm_backward(x, dy, r["mean"], r["var"], w, axis=ax,
                                         input_stats=training)
        return (r["y"], *g, r["running_mean"], r["running_var"])
    if family == "group":
        r = naive.group_norm(x, extra["groups"], w, b, axis=ax)
        return (r["y"], *naive.group_norm_backward(x, dy, extra["groups"], w, axis=ax), None, None)
    ns = x.shape[-ax:]
    if family == "layer":
        y = naive.layer_norm(x, ns, w, b)["y"]
        return (y, *naive.layer_norm_backward(x, dy, ns, w), None, None)
    y = naive.rms_norm(x, ns, w)["y"]
    dx, dw = naive.rms_norm_backward(x, dy, ns, w)
    return y, dx, dw, None, None, None


@pytest.mark.parametrize("device", [False, True], ids=["numpy", "device"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_layer_train_and_eval(case, dtype, device, rng):
    family, shape, ax, extra = case
    fastnorm.set_backend("cuda")
    pdt = param_dtype(dtype)
    layer = _layer(family, shape, ax, extra, pdt)
    pshape = tuple(layer.weight.shape)
    w = (1.0 + 0.3 * rng.standard_normal(pshape)).astype(pdt)
    b = (0.5 * rng.standard_normal(pshape)).astype(pdt) if layer.bias is not None else None
    layer.weight[...] = w
    if b is not None:
        layer.bias[...] = b
    has_running = getattr(layer, "running_mean", None) is not None
    if has_running:
        rm = (0.5 * rng.standard_normal(pshape)).astype(pdt)
        rv = rng.uniform(0.5, 2.0, pshape).astype(pdt)
        layer.running_mean[...] = rm
        layer.running_var[...] = rv
    else:
        rm = rv = None
    x = (0.5 + 2.0 * rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    wrap = dev if device else (lambda a: a)

    modes = (True, False) if has_running else (True,)
    for training in modes:
        layer.train(training)
        before_rm = None if rm is None else host(layer.running_mean).astype(np.float64)
        before_rv = None if rv is None else host(layer.running_var).astype(np.float64)
        y = layer(wrap(x))
        dx = layer.backward(wrap(dy))
        ref_y, ref_dx, ref_dw, ref_db, ref_rm, ref_rv = _reference(
            family, x, dy, ax, extra, w, b, before_rm, before_rv, training)
        assert is_device(y) == device and is_device(dx) == device
        msg = f"{family} training={training}"
        assert_output_close(host(y), ref_y, dtype, err_msg=msg)
        assert_grad_close(host(dx), ref_dx, dtype, err_msg=msg)
        assert is_device(layer.grad_weight) == device
        assert host(layer.grad_weight).dtype == pdt
        assert_grad_close(host(layer.grad_weight), ref_dw, dtype, err_msg=msg)
        if b is not None:
            assert_grad_close(host(layer.grad_bias), ref_db, dtype, err_msg=msg)
        # parameters and running statistics live where the data does; state_dict is NumPy
        assert is_device(layer.weight) == device
        state = layer.state_dict()
        assert all(isinstance(v, np.ndarray) for v in state.values())
        if has_running:
            assert is_device(layer.running_mean) == device
            assert_stats_close(state["running_mean"], ref_rm, err_msg=msg)
            assert_stats_close(state["running_var"], ref_rv, err_msg=msg)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("axis", [1, -1])
def test_functional_batch_norm_device_running_stats(axis, dtype, rng):
    """Functional form with device running buffers: updated in place, on the device."""
    fastnorm.set_backend("cuda")
    shape = (4, 3, 4, 8) if axis == 1 else (4, 4, 8, 3)
    pdt = param_dtype(dtype)
    x = rng.standard_normal(shape).astype(dtype)
    rm, rv = np.zeros(3, pdt), np.ones(3, pdt)
    d_rm, d_rv = dev(rm), dev(rv)
    y = fastnorm.batch_norm(dev(x), d_rm, d_rv, training=True, momentum=0.2, axis=axis)
    ref = naive.batch_norm(x, rm, rv, training=True, momentum=0.2, axis=axis)
    assert_output_close(host(y), ref["y"], dtype)
    assert_stats_close(host(d_rm), ref["running_mean"])
    assert_stats_close(host(d_rv), ref["running_var"])
    # NumPy running buffers with device data: updated in place on the host
    y = fastnorm.batch_norm(dev(x), rm, rv, training=True, momentum=0.2, axis=axis)
    assert_stats_close(rm, ref["running_mean"])
    assert_stats_close(rv, ref["running_var"])
    # eval with device buffers
    y = fastnorm.batch_norm(dev(x), d_rm, d_rv, axis=axis)
    ref = naive.batch_norm(x, host(d_rm), host(d_rv), axis=axis)
    assert_output_close(host(y), ref["y"], dtype)


@pytest.mark.parametrize("axis", [1, -1])
def test_functional_instance_norm_running_stats(axis, rng):
    fastnorm.set_backend("cuda")
    shape = (3, 4, 5, 6) if axis == 1 else (3, 5, 6, 4)
    x = rng.standard_normal(shape).astype(np.float32)
    rm, rv = np.zeros(4, np.float32), np.ones(4, np.float32)
    d_rm, d_rv = dev(rm), dev(rv)
    y = fastnorm.instance_norm(dev(x), d_rm, d_rv, use_input_stats=True, axis=axis)
    ref = naive.instance_norm(x, rm, rv, use_input_stats=True, axis=axis)
    assert_output_close(host(y), ref["y"], np.float32)
    assert_stats_close(host(d_rm), ref["running_mean"])
    assert_stats_close(host(d_rv), ref["running_var"])
    y = fastnorm.instance_norm(x, d_rm, d_rv, use_input_stats=False, axis=axis)
    assert isinstance(y, np.ndarray)
    ref = naive.instance_norm(x, host(d_rm), host(d_rv), use_input_stats=False, axis=axis)
    assert_output_close(y, ref["y"], np.float32)


def test_offset_data_keeps_precision(rng):
    """float32 data at 1e4 with std 0.1: the mean is subtracted as a hi/lo pair."""
    fastnorm.set_backend("cuda")
    for axis, shape in ((1, (4, 3, 4, 8)), (-1, (4, 4, 8, 3))):
        x = (1e4 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        bn = fastnorm.BatchNorm(3, axis=axis)
        y = bn(dev(x))
        ref = naive.batch_norm(x, None, None, training=True, axis=axis)["y"]
        assert np.max(np.abs(host(y) - ref)) < 2e-3
        dy = rng.standard_normal(shape).astype(np.float32)
        dx = host(bn.backward(dev(dy)))
        r = naive.batch_norm(x, None, None, training=True, axis=axis)
        ref_dx = naive.batch_norm_backward(x, dy, r["mean"], r["var"], axis=axis)[0]
        assert np.max(np.abs(dx - ref_dx)) < 2e-3 * np.max(np.abs(ref_dx))
    x = (1e4 + 0.1 * rng.standard_normal((6, 40))).astype(np.float32)
    y = fastnorm.layer_norm(dev(x), 40)
    assert np.max(np.abs(host(y) - naive.layer_norm(x, 40)["y"])) < 2e-3


def test_huge_magnitudes_stay_finite(rng):
    fastnorm.set_backend("cuda")
    x = (1e30 * rng.standard_normal((4, 3, 4, 8))).astype(np.float32)
    y = host(fastnorm.batch_norm(dev(x), training=True))
    ref = naive.batch_norm(x, None, None, training=True)["y"]
    assert np.all(np.isfinite(y)) and np.max(np.abs(y - ref)) < 2e-3
