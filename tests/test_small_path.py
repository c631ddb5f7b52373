"""The one-call paths for small inputs and the compiled O(C) helpers.

``channels_small`` (statistics + normalization in one call), ``rows_forward_small`` (the row
kernel without an OpenMP region, arrays through NumPy's C API), ``running_update`` and
``stats_planes`` (the statistics read in memory order), each against an independent float64
formula, and the functional ops with the small path against the general one.
"""

import os
import types
import warnings

import numpy as np
import pytest

import fastnorm
from fastnorm import _core, _memory, functional
from fastnorm.backends import cython_cpu, numpy_ref

needs_cython = pytest.mark.skipif(
    "cython" not in fastnorm.available_backends(), reason="the Cython extension is not built"
)
SMALL_BACKENDS = [numpy_ref, pytest.param(cython_cpu, marks=needs_cython)]
TOL = {np.float32: 2e-6, np.float64: 1e-13}


def _reference(x4, mean, var, w, b, eps):
    """The float64 formula, statistics over axes (1, 3) unless given."""
    x = x4.astype(np.float64)
    if mean is None:
        mean = x.mean(axis=(1, 3))
        var = x.var(axis=(1, 3))
    g = lambda a: a[:, None, :, None]
    y = (x - g(mean)) / np.sqrt(g(var) + eps)
    if w is not None:
        y = y * w[None, None, :, None]
    if b is not None:
        y = y + b[None, None, :, None]
    return y, mean, var


@pytest.mark.parametrize("module", SMALL_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 32, 10, 1), (3, 16, 10, 1), (1, 4, 3, 7), (3, 1, 5, 9), (2, 6, 1, 1)])
@pytest.mark.parametrize("given", [False, True])
@pytest.mark.parametrize("affine", [False, True])
def test_channels_small_matches_formula(module, dtype, shape, given, affine, rng):
    n, _, c, _ = shape
    x = (1e3 + rng.standard_normal(shape)).astype(dtype)  # an offset: needs exact statistics
    w = 1.0 + 0.3 * rng.standard_normal(c) if affine else None
    b = rng.standard_normal(c) if affine else None
    mean = var = None
    if given:
        mean, var = rng.standard_normal((n, c)), rng.uniform(0.5, 2.0, (n, c))
    out = np.empty_like(x)
    got_mean, got_var, got_rstd = module.channels_small(x, mean, var, w, b, 1e-5, out)
    ref, ref_mean, ref_var = _reference(x, mean, var, w, b, 1e-5)
    tol = TOL[dtype]
    atol = tol * np.abs(ref).max()
    if not given:
        # a sum of `count` values carries up to count * eps * max|x| of rounding, whatever the
        # order of its additions (the SIMD width of the build sets that order); the mean's
        # error is then scaled by rstd * |w|
        count = shape[1] * shape[3]
        scale = np.abs(1.0 / np.sqrt(ref_var + 1e-5) * (1.0 if w is None else w)).max()
        atol = max(atol, count * np.finfo(np.float64).eps * np.abs(x).max() * scale)
    np.testing.assert_allclose(out, ref, rtol=tol, atol=atol)
    np.testing.assert_allclose(got_mean, ref_mean, rtol=1e-14)
    np.testing.assert_allclose(got_var, ref_var, rtol=1e-9)
    np.testing.assert_allclose(got_rstd, 1.0 / np.sqrt(ref_var + 1e-5), rtol=1e-9)
    assert got_mean.shape == got_var.shape == got_rstd.shape == (n, c)


@pytest.mark.parametrize("module", SMALL_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 32, 10, 1), (1, 4, 3, 7)])
def test_channels_small_updates_running(module, dtype, shape, rng):
    """``running=``: the running statistics updated in the same call, as the float64 formula
    with the batch's statistics, rounded once to the buffers' dtype."""
    c = shape[2]
    x = (1e3 + rng.standard_normal(shape)).astype(dtype)
    run_mean = rng.standard_normal(c).astype(dtype)
    run_var = rng.uniform(0.5, 2.0, c).astype(dtype)
    old_mean, old_var = run_mean.astype(np.float64), run_var.astype(np.float64)
    count = shape[1] * shape[3]
    bessel = count / (count - 1)
    out = np.empty_like(x)
    module.channels_small(x, None, None, None, None, 1e-5, out, running=(run_mean, run_var, 0.1, bessel))
    _, ref_mean, ref_var = _reference(x, None, None, None, None, 1e-5)
    want_mean = (0.9 * old_mean + 0.1 * ref_mean[0]).astype(dtype)
    want_var = (0.9 * old_var + 0.1 * ref_var[0] * bessel).astype(dtype)
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(run_mean, want_mean, rtol=rtol)
    np.testing.assert_allclose(run_var, want_var, rtol=rtol)


@needs_cython
def test_channels_small_running_refused_changes_nothing(rng):
    """Running statistics the kernel cannot write are refused before anything is written."""
    k = cython_cpu._need()
    x = rng.standard_normal((1, 8, 3, 1)).astype(np.float32)
    ro = np.ones(3, np.float32)
    ro.flags.writeable = False
    bad = {
        "dtypes differ": (np.zeros(3, np.float32), np.ones(3, np.float64)),
        "wrong length": (np.zeros(4, np.float32), np.ones(4, np.float32)),
        "read-only": (np.zeros(3, np.float32), ro),
        "not contiguous": (np.zeros(6, np.float32)[::2], np.ones(3, np.float32)),
        "float16": (np.zeros(3, np.float16), np.ones(3, np.float16)),
    }
    for why, (run_mean, run_var) in bad.items():
        out = np.full_like(x, 7.0)
        before = run_mean.copy(), run_var.copy()
        with pytest.raises(ValueError, match="running statistics"):
            k.channels_small(x, None, None, None, None, 1e-5, out, None, (run_mean, run_var, 0.1, 1.0))
        assert (out == 7.0).all(), why
        np.testing.assert_array_equal(run_mean, before[0], err_msg=why)
        np.testing.assert_array_equal(run_var, before[1], err_msg=why)
    x2 = rng.standard_normal((2, 8, 3, 1)).astype(np.float32)
    with pytest.raises(ValueError, match="N == 1"):
        k.channels_small(x2, None, None, None, None, 1e-5, np.empty_like(x2), None,
                         (np.zeros(3, np.float32), np.ones(3, np.float32), 0.1, 1.0))


@needs_cython
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_channels_small_in_place(dtype, rng):
    x = rng.standard_normal((1, 8, 4, 5)).astype(dtype)
    ref, _, _ = _reference(x, None, None, None, None, 1e-5)
    cython_cpu.channels_small(x, None, None, None, None, 1e-5, x)  # out=x
    np.testing.assert_allclose(x, ref, rtol=TOL[dtype], atol=TOL[dtype])


@needs_cython
def test_small_entry_points_reject_what_they_cannot_read():
    k = cython_cpu._need()
    x = np.zeros((1, 2, 3, 4), np.float32)
    with pytest.raises(ValueError, match="dtype of x"):
        k.channels_small(x, None, None, None, None, 1e-5, np.zeros_like(x, np.float64))
    with pytest.raises(ValueError, match="C-contiguous"):
        k.channels_small(x, None, None, None, None, 1e-5, np.zeros((1, 2, 4, 3), np.float32).transpose(0, 1, 3, 2))
    with pytest.raises(ValueError, match="shape of x"):
        k.channels_small(x, None, None, None, None, 1e-5, np.zeros((1, 2, 3, 5), np.float32))
    with pytest.raises(ValueError, match="w must be"):
        k.channels_small(x, None, None, np.ones(2), None, 1e-5, np.zeros_like(x))
    with pytest.raises(ValueError, match="given_mean and given_var"):
        k.channels_small(x, np.zeros((1, 3)), None, None, None, 1e-5, np.zeros_like(x))
    with pytest.raises(ValueError, match="float32 or float64"):
        k.channels_small(x.astype(np.float16), None, None, None, None, 1e-5, x.astype(np.float16))
    x2 = np.zeros((4, 3), np.float32)
    w = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="dtype of x"):
        k.rows_forward_small(x2, w.astype(np.float64), w, 1e-5, True, np.zeros_like(x2))
    with pytest.raises(ValueError, match="w must be a 1-D array"):
        k.rows_forward_small(x2, np.ones(4, np.float32), w, 1e-5, True, np.zeros_like(x2))
    with pytest.raises(ValueError, match="b must be a 1-D array"):
        k.rows_forward_small(x2, w, [1.0, 1.0, 1.0], 1e-5, True, np.zeros_like(x2))
    with pytest.raises(ValueError, match="do not match"):
        k.rows_forward_small(x2, w, w, 1e-5, True, np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="2-D"):
        k.rows_forward_small(x2.ravel(), w, w, 1e-5, True, np.zeros_like(x2))
    with pytest.raises(TypeError):  # None where an array is read: refused, not dereferenced
        k.rows_forward_small(x2, w, w, 1e-5, True, None)
    with pytest.raises(TypeError):
        k.channels_small(None, None, None, None, None, 1e-5, x)


@needs_cython
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("shape", [(64, 10), (3, 2500), (1, 1)])
def test_rows_small_entry_is_the_threaded_kernel(dtype, center, shape, rng):
    """Same task function: bit-identical to the prange kernel, on one or two threads."""
    k = cython_cpu._need()
    x = (5.0 + rng.standard_normal(shape)).astype(dtype)
    w, b = rng.standard_normal(shape[1]).astype(dtype), rng.standard_normal(shape[1]).astype(dtype)
    y_small, y_par = np.empty_like(x), np.empty_like(x)
    m_small, r_small = k.rows_forward_small(x, w, b, 1e-5, center, y_small)
    m_par, r_par = k.rows_forward(x, w, b, 1e-5, center, y_par, min(2, shape[0]), 2)
    np.testing.assert_array_equal(y_small, y_par)
    np.testing.assert_array_equal(m_small, m_par)
    np.testing.assert_array_equal(r_small, r_par)
    ref = x.astype(np.float64)
    mu = ref.mean(axis=1) if center else np.zeros(shape[0])
    var = ((ref - mu[:, None]) ** 2).mean(axis=1)
    np.testing.assert_allclose(r_small, 1.0 / np.sqrt(var + 1e-5), rtol=1e-9)


@needs_cython
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_running_update_compiled_matches_formula(dtype, rng):
    rm = rng.standard_normal(7).astype(dtype)
    rv = rng.uniform(0.5, 2.0, 7).astype(dtype)
    mean, var = rng.standard_normal(7), rng.uniform(0.5, 2.0, 7)
    want_m = ((1 - 0.1) * rm.astype(np.float64) + 0.1 * mean).astype(dtype)
    want_v = ((1 - 0.1) * rv.astype(np.float64) + 0.1 * (var * 1.25)).astype(dtype)
    assert cython_cpu.running_update(rm, rv, mean, var, 0.1, 1.25)
    ulp = np.finfo(dtype).eps  # the C code may fuse a multiply-add: within an ulp of NumPy
    np.testing.assert_allclose(rm, want_m, rtol=ulp, atol=0)
    np.testing.assert_allclose(rv, want_v, rtol=ulp, atol=0)


@needs_cython
def test_running_update_declines_other_buffers(rng):
    """float16 or mixed-dtype buffers are left to NumPy (nothing changed by the compiled call)."""
    for rm, rv in [(np.zeros(3, np.float16), np.ones(3, np.float16)),
                   (np.zeros(3, np.float32), np.ones(3, np.float64))]:
        before = rm.copy(), rv.copy()
        assert not cython_cpu.running_update(rm, rv, np.ones(3), np.ones(3), 0.5, 2.0)
        np.testing.assert_array_equal(rm, before[0])
        np.testing.assert_array_equal(rv, before[1])
        _core.update_running(cython_cpu, rm, rv, np.ones(3), np.ones(3), 0.5, 2.0)
        np.testing.assert_allclose(rm, 0.5)
        np.testing.assert_allclose(rv, 1.5)


@needs_cython
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 8, 4, 300), (2, 3, 5, 1000), (1, 5, 2, 4097)])
def test_stats_planes_matches_stats_runs(dtype, shape, rng):
    k = cython_cpu._need()
    x = (1e4 + 0.1 * rng.standard_normal(shape)).astype(dtype)
    mean_p, m2_p = k.stats_planes(x, 2)
    mean_r, m2_r = k.stats_runs(x, 1, 1)
    np.testing.assert_allclose(mean_p, mean_r, rtol=1e-14)
    np.testing.assert_allclose(m2_p, m2_r, rtol=1e-9)
    ref = x.astype(np.float64)
    np.testing.assert_allclose(m2_p, ref.var(axis=(1, 3)) * shape[1] * shape[3], rtol=1e-9)


@needs_cython
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("op", ["batch", "instance"])
@pytest.mark.parametrize("axis", [1, -1])
def test_small_path_agrees_with_general_path(op, axis, dtype, rng, monkeypatch):
    """Layers on the cython backend: forward, running statistics and backward, small path vs
    general path (forced with SMALL_SIZE = 0)."""
    shape = (4, 6, 5) if axis == 1 else (4, 5, 6)
    x = (3.0 + rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    results = []
    for small in (True, False):
        monkeypatch.setattr(_core, "SMALL_SIZE", 8192 if small else 0)
        layer = (fastnorm.BatchNorm1d(6, axis=axis) if op == "batch"
                 else fastnorm.InstanceNorm1d(6, affine=True, track_running_stats=True, axis=axis))
        layer.weight[...] = np.linspace(0.5, 1.5, 6)
        layer.bias[...] = np.linspace(-1.0, 1.0, 6)
        with fastnorm.use_backend("cython"):
            y = layer(x)
            dx = layer.backward(dy)
            layer.eval()
            y_eval = layer(x)
        results.append((y, dx, y_eval, layer.running_mean.copy(), layer.running_var.copy()))
    tol = 2e-3 if dtype == np.float16 else 1e-5 if dtype == np.float32 else 1e-12
    for got, want in zip(*results):
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=tol, atol=tol)


# -- inference in one call: channels_given --------------------------------------------------


@needs_cython
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 64, 16, 49), (1, 3000, 24, 1), (3, 2, 5, 700), (2, 900, 7, 1)])
@pytest.mark.parametrize("affine", [False, True])
def test_channels_given_is_the_general_path_to_the_bit(dtype, shape, affine, rng):
    """Same coefficients, same apply loops: identical bits to statistics -> coefficients in
    NumPy -> apply, on runs (B > 1) and on channels-last rows (B == 1)."""
    n, _, c, _ = shape
    x = (1e3 + rng.standard_normal(shape)).astype(dtype)  # an offset: the hi/lo split matters
    mean = 1e3 + rng.standard_normal((n, c))
    var = rng.uniform(0.5, 2.0, (n, c))
    w = 1.0 + 0.3 * rng.standard_normal(c) if affine else None
    b = rng.standard_normal(c) if affine else None
    got = np.empty_like(x)
    g_mean, g_var, g_rstd = cython_cpu.channels_given(x, mean, var, w, b, 1e-5, got)
    want = np.empty_like(x)
    rstd = _core.rstd_of(var, 1e-5)
    _core.normalize(cython_cpu, x, mean, rstd, w, b, want)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(g_rstd, rstd)
    assert g_mean is mean and g_var is var
    ref, _, _ = _reference(x, mean, var, w, b, 1e-5)
    np.testing.assert_allclose(got, ref, rtol=0, atol=TOL[dtype] * np.abs(ref).max())


@needs_cython
def test_channels_given_in_place_and_entry_checks(rng):
    x = rng.standard_normal((1, 40, 8, 30)).astype(np.float32)
    mean, var = rng.standard_normal((1, 8)), rng.uniform(0.5, 2.0, (1, 8))
    ref, _, _ = _reference(x, mean, var, None, None, 1e-5)
    cython_cpu.channels_given(x, mean, var, None, None, 1e-5, x)  # out=x
    np.testing.assert_allclose(x, ref, rtol=2e-6, atol=2e-6)
    k = cython_cpu._need()
    with pytest.raises(ValueError, match="given_mean must be"):
        k.channels_given(x, mean.astype(np.float32), var, None, None, 1e-5, x, 1, 1)
    with pytest.raises(ValueError, match="given_var must be"):
        k.channels_given(x, mean, var[:, :4], None, None, 1e-5, x, 1, 1)
    with pytest.raises(ValueError, match="nsplit"):
        k.channels_given(x, mean, var, None, None, 1e-5, x, 0, 1)
    with pytest.raises(ValueError, match="dtype of x"):
        k.channels_given(x, mean, var, None, None, 1e-5, x.astype(np.float64), 1, 1)
    with pytest.raises(TypeError):
        k.channels_given(x, None, var, None, None, 1e-5, x, 1, 1)


@needs_cython
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("axis", [1, -1])
def test_batch_norm_inference_takes_the_one_call_path(dtype, axis, rng, monkeypatch):
    """batch_norm(training=False) on cython goes through channels_given above SMALL_SIZE (float16
    computed in float32) and returns what the general path returns (``eps`` a NumPy float: a
    call the compiled whole call leaves to this path)."""
    shape = (8, 16, 12, 12) if axis == 1 else (8, 12, 12, 16)
    x = (5.0 + rng.standard_normal(shape)).astype(dtype)
    rm, rv = rng.standard_normal(16), rng.uniform(0.5, 2.0, 16)
    w, b = rng.uniform(0.5, 1.5, 16), rng.standard_normal(16)
    calls = []
    monkeypatch.setattr(cython_cpu, "channels_given", _counting(cython_cpu.channels_given, calls))
    with fastnorm.use_backend("cython"):
        got = fastnorm.batch_norm(x, rm, rv, w, b, training=False, eps=np.float64(1e-5), axis=axis)
        monkeypatch.delattr(cython_cpu, "channels_given")
        want = fastnorm.batch_norm(x, rm, rv, w, b, training=False, eps=np.float64(1e-5), axis=axis)
    assert len(calls) == 1
    np.testing.assert_array_equal(got, want)


@needs_cython
@pytest.mark.parametrize("axis", [1, -1])
def test_instance_norm_inference_takes_the_one_call_path(axis, rng, monkeypatch):
    """InstanceNorm with running statistics (use_input_stats=False), the layer in eval mode:
    one channels_given call, the general path's output and backward."""
    shape = (4, 16, 20, 20) if axis == 1 else (4, 20, 20, 16)
    x = (5.0 + rng.standard_normal(shape)).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    calls = []
    monkeypatch.setattr(cython_cpu, "channels_given", _counting(cython_cpu.channels_given, calls))
    results = []
    for fused in (True, False):
        if not fused:
            monkeypatch.delattr(cython_cpu, "channels_given")
        layer = fastnorm.InstanceNorm2d(16, affine=True, track_running_stats=True, axis=axis)
        layer.running_mean[...] = np.linspace(4.0, 6.0, 16)
        layer.running_var[...] = np.linspace(0.5, 2.0, 16)
        layer.weight[...] = np.linspace(0.5, 1.5, 16)
        layer.eval()
        with fastnorm.use_backend("cython"):
            results.append((layer(x), layer.backward(dy), layer.grad_weight, layer.grad_bias))
    assert len(calls) == 1
    for got, want in zip(*results):
        np.testing.assert_array_equal(got, want)


def _counting(f, calls):
    def wrapper(*args):
        calls.append(args)
        return f(*args)
    return wrapper


# -- plain calls: the small path without the general checks ---------------------------------


def _plain_and_general(fn, *args, **kwargs):
    """``fn`` called twice on fresh copies of its array arguments: as given, and with ``eps``
    a NumPy float (same value; not a plain call, so the general path takes it)."""
    results = []
    for eps in (kwargs["eps"], np.float64(kwargs["eps"])):
        copies = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
        out = fn(*copies, **{**kwargs, "eps": eps})
        results.append((out, copies))
    return results


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("shape", [(64, 10), (3, 5, 7), (9,), (40, 24, 20), (300, 96)])
def test_plain_rows_call_is_the_general_path_to_the_bit(backend, op, dtype, shape, rng):
    """Small and large plain calls (past the small path's size: the kernel call without the
    general checks) give the general path's results to the bit."""
    x = (1e3 + rng.standard_normal(shape)).astype(dtype)
    m = shape[-1]
    w = rng.uniform(0.5, 1.5, m).astype(dtype)
    fn = getattr(fastnorm, op)
    args = (x, (m,), w) + ((rng.standard_normal(m).astype(dtype),) if op == "layer_norm" else ())
    center = op == "layer_norm"
    bias = args[3] if center else None
    assert functional._rows_plain(x, (m,), w, bias, 1e-5, center, False) is not None
    assert functional._rows_plain(x, (m,), w, bias, np.float64(1e-5), center, False) is None
    (plain, _), (general, _) = _plain_and_general(fn, *args, eps=1e-5, return_stats=True)
    for got, want in zip(plain, general):
        np.testing.assert_array_equal(got, want)
    ref = x.astype(np.float64)
    mean = ref.mean(-1, keepdims=True) if op == "layer_norm" else 0.0
    var = ((ref - mean) ** 2).mean(-1, keepdims=True)
    want = (ref - mean) / np.sqrt(var + 1e-5) * w + (args[3] if op == "layer_norm" else 0.0)
    np.testing.assert_allclose(plain[0], want, rtol=0, atol=TOL[dtype] * np.abs(want).max() * 10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("axis", [1, -1])
@pytest.mark.parametrize("large", [False, True])
def test_plain_batch_norm_call_is_the_general_path_to_the_bit(backend, dtype, training, axis, large,
                                                              rng):
    """Plain calls in training and inference, small (one backend call) and large (runs of 196
    and 49 values past the small path's size: the core's passes without the general checks)."""
    if large:
        shape = (16, 10, 14, 14) if axis == 1 else (32, 7, 7, 10)
    else:
        shape = (32, 10) if axis == 1 else (4, 6, 10)
    x = (50.0 + rng.standard_normal(shape)).astype(dtype)
    rm, rv = rng.standard_normal(10).astype(dtype), rng.uniform(0.5, 2.0, 10).astype(dtype)
    w, b = rng.uniform(0.5, 1.5, 10).astype(dtype), rng.standard_normal(10).astype(dtype)
    served = functional._batch_norm_plain(x, rm.copy(), rv.copy(), w, b, training, 0.1, 1e-5, axis,
                                          False)
    assert (served is not None) == (large or backend != "numba")  # numba has no one-call path
    (plain, pargs), (general, gargs) = _plain_and_general(
        fastnorm.batch_norm, x, rm, rv, w, b, training, 0.1, eps=1e-5, axis=axis, return_stats=True)
    for got, want in zip(plain, general):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(pargs[1], gargs[1])  # the running statistics, updated
    np.testing.assert_array_equal(pargs[2], gargs[2])
    if training:
        assert not np.array_equal(pargs[1], rm)


def test_plain_calls_keep_the_general_checks(backend, rng):
    """Arguments a plain call would take without a look go to the general path, which refuses
    them as before, and a refused call changes nothing."""
    x = rng.standard_normal((8, 4)).astype(np.float32)
    rm, rv = np.zeros(4, np.float32), np.ones(4, np.float32)
    with pytest.raises(ValueError, match="eps"):
        fastnorm.layer_norm(x, (4,), None, None, -1.0)
    with pytest.raises(ValueError, match="normalized_shape"):
        fastnorm.layer_norm(x, (5,))
    with pytest.raises(ValueError, match="weight"):
        fastnorm.rms_norm(x, (4,), np.ones(5, np.float32))
    with pytest.raises(ValueError, match="momentum"):
        fastnorm.batch_norm(x, rm, rv, training=True, momentum=2.0)
    with pytest.raises(ValueError, match="more than 1 value"):
        fastnorm.batch_norm(x[:1], rm, rv, training=True)
    buf = np.zeros(8, np.float32)
    with pytest.raises(ValueError, match="running"):
        fastnorm.batch_norm(x, buf[:4], buf[2:6], training=True)  # overlapping buffers
    frozen = rv.copy()
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="running_var"):
        fastnorm.batch_norm(x, rm, frozen, training=True)
    np.testing.assert_array_equal(rm, 0.0)
    np.testing.assert_array_equal(buf, 0.0)
    # a running view updated in place: the general path, the same update
    whole = np.zeros((2, 4), np.float32)
    fastnorm.batch_norm(x, whole[0], whole[1], training=True, momentum=1.0)
    np.testing.assert_allclose(whole[0], x.astype(np.float64).mean(0), rtol=1e-6, atol=1e-7)


# -- whole plain calls: the checks and the kernel of a plain small call in one compiled call ----


def _whole_calls():
    calls = functional._plain_calls("cython")
    assert calls[0] is not None and calls[1] is not None
    return calls


@needs_cython
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("param_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape, axis", [((32, 10), 1), ((4, 6, 10), -1), ((3, 10, 7), 1),
                                         ((2, 10, 3, 5), 1), ((10, 9), 0), ((5, 3, 10), 2)])
@pytest.mark.parametrize("running", [True, False])
def test_whole_plain_batch_norm_call_is_the_general_path_to_the_bit(dtype, param_dtype, training,
                                                                    shape, axis, running, rng):
    """The compiled whole call serves a plain small ``batch_norm`` (checked by calling it) and
    gives the general path's output and running statistics to the bit; the general path is
    taken with ``eps`` a NumPy float, which the whole call declines."""
    if not training and not running:
        pytest.skip("inference needs running statistics")
    x = (50.0 + rng.standard_normal(shape)).astype(dtype)
    c = shape[axis]
    stats = (rng.standard_normal(c).astype(param_dtype), rng.uniform(0.5, 2.0, c).astype(param_dtype))
    w = rng.uniform(0.5, 1.5, 2 * c).astype(param_dtype)[::2]  # a strided weight is plain too
    b = rng.standard_normal(c).astype(param_dtype)
    rows_plain, channels_plain = _whole_calls()
    fresh = lambda: (stats[0].copy(), stats[1].copy()) if running else (None, None)
    assert channels_plain(x, *fresh(), w, b, training, 0.1, 1e-5, axis, _core.SMALL_SIZE) is not None
    with fastnorm.use_backend("cython"):
        results = []
        for eps in (1e-5, np.float64(1e-5)):
            rm, rv = fresh()
            y = fastnorm.batch_norm(x, rm, rv, w, b, training, 0.1, eps, axis=axis)
            results.append((y, rm, rv))
    (y, rm, rv), (want, want_rm, want_rv) = results
    assert y.dtype == x.dtype and y.shape == x.shape
    np.testing.assert_array_equal(y, want)
    if running:
        np.testing.assert_array_equal(rm, want_rm)
        np.testing.assert_array_equal(rv, want_rv)
        assert training != np.array_equal(rm, stats[0])
    ref = x.astype(np.float64)
    red = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    bshape = [1] * x.ndim
    bshape[axis] = c
    if training:
        mean, var = ref.mean(red, keepdims=True), ref.var(red, keepdims=True)
    else:
        mean, var = (s.astype(np.float64).reshape(bshape) for s in stats)
    ref = (ref - mean) / np.sqrt(var + 1e-5) * w.reshape(bshape) + b.reshape(bshape)
    np.testing.assert_allclose(y, ref, rtol=0, atol=TOL[dtype] * np.abs(ref).max() * 10)


@needs_cython
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("shape", [(64, 10), (3, 5, 7), (9,), (8, 1)])
@pytest.mark.parametrize("normalized_shape", ["int", "tuple"])
@pytest.mark.parametrize("affine", [True, False])
def test_whole_plain_rows_call_is_the_general_path_to_the_bit(dtype, op, shape, normalized_shape,
                                                              affine, rng):
    x = (1e3 + rng.standard_normal(shape)).astype(dtype)
    m = shape[-1]
    ns = m if normalized_shape == "int" else (m,)
    w = rng.uniform(0.5, 1.5, m).astype(dtype) if affine else None
    b = rng.standard_normal(m).astype(dtype) if affine and op == "layer_norm" else None
    center = op == "layer_norm"
    args = (x, ns, w) + ((b,) if center else ())
    rows_plain, _ = _whole_calls()
    assert rows_plain(x, ns, w, b, 1e-5, center, _core.SMALL_SIZE) is not None
    with fastnorm.use_backend("cython"):
        y = getattr(fastnorm, op)(*args, eps=1e-5)
        want = getattr(fastnorm, op)(*args, eps=np.float64(1e-5))
    assert y.dtype == x.dtype and y.shape == x.shape
    np.testing.assert_array_equal(y, want)
    ref = x.astype(np.float64)
    mean = ref.mean(-1, keepdims=True) if center else 0.0
    ref = (ref - mean) / np.sqrt(((ref - mean) ** 2).mean(-1, keepdims=True) + 1e-5)
    ref = ref * (1.0 if w is None else w) + (0.0 if b is None else b)
    np.testing.assert_allclose(y, ref, rtol=0, atol=TOL[dtype] * np.abs(ref).max() * 10)


@needs_cython
def test_whole_plain_calls_serve_plain_calls(rng, monkeypatch):
    """Plain small calls on the cython backend never reach the Python plain paths."""
    def unreachable(*args, **kwargs):
        raise AssertionError("the whole compiled call should have served this call")

    monkeypatch.setattr(functional, "_batch_norm_plain", unreachable)
    monkeypatch.setattr(functional, "_rows_plain", unreachable)
    x = rng.standard_normal((16, 8)).astype(np.float32)
    rm, rv, w = np.zeros(8, np.float32), np.ones(8, np.float32), np.ones(8, np.float32)
    with fastnorm.use_backend("cython"):
        fastnorm.batch_norm(x, rm, rv, w, None, True, 0.1, 1e-5)
        fastnorm.batch_norm(x, rm, rv, training=False)
        big = rng.standard_normal((_core.SMALL_SIZE // 8 + 1, 8)).astype(np.float32)
        fastnorm.batch_norm(big, rm, rv, w, None, False, 0.1, 1e-5)  # inference of any size
        fastnorm.layer_norm(x, (8,), w, None, 1e-5)
        fastnorm.rms_norm(x, 8, w, 1e-6)
        with pytest.raises(AssertionError, match="whole compiled call"):
            fastnorm.layer_norm(x, (8,), w, None, 1e-5, return_stats=True)  # not a plain call
    assert not np.array_equal(rm, 0.0)


def _declined_batch_norm_calls(rng):
    """``(why, args)`` of ``batch_norm`` calls the whole call declines: ``(x, running_mean,
    running_var, weight, bias, training, momentum, eps, axis)``."""
    x = rng.standard_normal((16, 4)).astype(np.float32)
    rm, rv = np.zeros(4, np.float32), np.ones(4, np.float32)
    base = (x, rm, rv, None, None, True, 0.1, 1e-5, 1)
    frozen = rv.copy()
    frozen.flags.writeable = False
    whole = np.zeros((2, 4), np.float32)

    def with_(**kw):
        names = ("x", "rm", "rv", "w", "b", "training", "momentum", "eps", "axis")
        return tuple(kw.get(n, a) for n, a in zip(names, base))

    return [
        ("a list", with_(x=x.tolist())),
        ("float16", with_(x=x.astype(np.float16))),
        ("not contiguous", with_(x=np.asfortranarray(x))),
        ("big-endian", with_(x=x.astype(">f4"))),
        ("1-D", with_(x=x[:, 0])),
        ("empty", with_(x=x[:0])),
        ("past the limit", with_(x=np.zeros((_core.SMALL_SIZE // 4 + 1, 4), np.float32))),
        ("eps a NumPy float", with_(eps=np.float64(1e-5))),
        ("eps negative", with_(eps=-1.0)),
        ("eps NaN", with_(eps=float("nan"))),
        ("axis a NumPy int", with_(axis=np.int64(1))),
        ("axis out of range", with_(axis=2)),
        ("training an int", with_(training=1)),
        ("momentum None", with_(momentum=None)),
        ("momentum a NumPy float", with_(momentum=np.float64(0.1))),
        ("momentum above 1", with_(momentum=2.0)),
        ("one value per channel", with_(x=x[:1])),
        ("running views", with_(rm=whole[0], rv=whole[1])),
        ("running read-only", with_(rv=frozen)),
        ("running the same array", with_(rv=rm)),
        ("running of two dtypes", with_(rv=rv.astype(np.float64))),
        ("one running array", with_(rv=None)),
        ("inference without running", with_(rm=None, rv=None, training=False)),
        ("weight of another size", with_(w=np.ones(5, np.float32))),
        ("weight a list", with_(w=[1.0] * 4)),
        ("bias float16", with_(b=np.zeros(4, np.float16))),
    ]


@needs_cython
def test_whole_plain_batch_norm_declines_what_is_not_plain(rng):
    """Each call that is not plain gets None and changes nothing (its general path validates it
    or serves it)."""
    _, channels_plain = _whole_calls()
    for why, args in _declined_batch_norm_calls(rng):
        before = [a.copy() if isinstance(a, np.ndarray) else a for a in args[1:3]]
        assert channels_plain(*args, _core.SMALL_SIZE) is None, why
        for a, b in zip(args[1:3], before):
            if isinstance(a, np.ndarray):
                np.testing.assert_array_equal(a, b, err_msg=why)


@needs_cython
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("param_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, axis", [((16, 64, 14, 14), 1), ((8, 28, 28, 32), -1), ((3, 5, 4000), 1),
                                         ((9000, 3), 1), ((40, 300), 0), ((2, 3, 70, 70), 1),
                                         ((50, 9, 30), 2)])
@pytest.mark.parametrize("threads", [1, 2])
def test_whole_plain_batch_norm_inference_of_any_size(dtype, param_dtype, shape, axis, threads, rng):
    """A large plain ``batch_norm`` in inference (past the small path) is the compiled whole
    call too (checked by calling it): the general path's output to the bit, within the float64
    oracle's tolerance, with the running statistics and the input unchanged."""
    x = (50.0 + 3.0 * rng.standard_normal(shape)).astype(dtype)
    c = shape[axis]
    assert x.size > _core.SMALL_SIZE
    rm, rv = rng.standard_normal(c).astype(param_dtype), rng.uniform(0.5, 2.0, c).astype(param_dtype)
    w = rng.uniform(0.5, 1.5, 2 * c).astype(param_dtype)[::2]
    b = rng.standard_normal(c).astype(param_dtype)
    before = (x.copy(), rm.copy(), rv.copy())
    _, channels_plain = _whole_calls()
    fastnorm.set_num_threads(min(threads, fastnorm.get_num_threads()))  # restored by conftest
    with fastnorm.use_backend("cython"):
        served = channels_plain(x, rm, rv, w, b, False, 0.1, 1e-5, axis, _core.SMALL_SIZE)
        y = fastnorm.batch_norm(x, rm, rv, w, b, False, 0.1, 1e-5, axis=axis)
        want = fastnorm.batch_norm(x, rm, rv, w, b, False, 0.1, np.float64(1e-5), axis=axis)
    assert served is not None and served.dtype == x.dtype and served.shape == x.shape
    np.testing.assert_array_equal(served, want)
    np.testing.assert_array_equal(y, want)
    for a, a0 in zip((x, rm, rv), before):
        np.testing.assert_array_equal(a, a0)
    bshape = [1] * x.ndim
    bshape[axis] = c
    col = lambda v: v.astype(np.float64).reshape(bshape)
    ref = (x.astype(np.float64) - col(rm)) / np.sqrt(col(rv) + 1e-5) * col(w) + col(b)
    np.testing.assert_allclose(y, ref, rtol=0, atol=TOL[dtype] * np.abs(ref).max() * 10)


def _given_plans(compute, empty=None, pool=None, settings=()):
    from fastnorm.backends import _kernels  # the extension, present where needs_cython passes

    return _kernels.Plans(compute, empty or np.empty_like, settings, pool, _memory.PAGE, _memory.ALIGN)


@needs_cython
def test_whole_plain_batch_norm_inference_plan(rng):
    """Without a plan the compiled call takes small calls only; a plan is computed once per
    shape while its settings stay, and its output is checked."""
    from fastnorm.backends import _kernels

    x = rng.standard_normal((_core.SMALL_SIZE // 4 + 100, 4)).astype(np.float32)
    rm, rv = np.zeros(4, np.float32), np.ones(4, np.float32)
    args = (x, rm, rv, None, None, False, 0.1, 1e-5, 1, _core.SMALL_SIZE)
    want = fastnorm.batch_norm(x, rm, rv, eps=np.float64(1e-5))
    assert x[1:].size > _core.SMALL_SIZE
    assert _kernels.channels_plain(None, *args) is None
    assert _kernels.channels_plain(None, x[:8], *args[1:]) is not None
    with pytest.raises(TypeError, match="plan"):
        _kernels.channels_plain(lambda a, g, r: (np.empty_like(a), 1, 1, False), *args)
    computed = []
    setting = types.SimpleNamespace(threads=1)

    def compute(a, groups, run):
        computed.append((a.shape, groups, run))
        return 1, setting.threads, False, 0

    plans = _given_plans(compute, settings=((setting, "threads"),))
    for _ in range(3):
        np.testing.assert_array_equal(_kernels.channels_plain(plans, *args), want)
    assert computed == [(x.shape, x.size, 1)]  # channels-last: every value a run of its own
    setting.threads = 2  # another setting object: computed again
    np.testing.assert_array_equal(_kernels.channels_plain(plans, *args), want)
    assert len(computed) == 2
    np.testing.assert_array_equal(_kernels.channels_plain(plans, x[1:], *args[1:]), want[1:])
    assert len(computed) == 3  # another shape
    plans.clear()
    _kernels.channels_plain(plans, *args)
    assert len(computed) == 4 and len(plans) == 1
    for rows in range(x.shape[0] + 1, x.shape[0] + 1101):  # many shapes: a bounded number kept
        _kernels.channels_plain(plans, np.zeros((rows, 4), np.float32), *args[1:])
    assert 0 < len(plans) <= 1024 and len(computed) == 1104
    bad = [(lambda a: np.empty_like(a, dtype=np.float64), (1, 1, False, 0)),
           (lambda a: np.empty_like(a)[:-1], (1, 1, False, 0)),
           (lambda a: np.empty_like(a, order="F"), (1, 1, False, 0)),
           (np.empty_like, (0, 1, False, 0))]
    for empty, plan in bad:
        with pytest.raises(ValueError, match="plan"):
            _kernels.channels_plain(_given_plans(lambda a, g, r, p=plan: p, empty), *args)
    training = (x, rm, rv, None, None, True, 0.1, 1e-5, 1, _core.SMALL_SIZE)
    assert _kernels.channels_plain(plans, *training) is None


@needs_cython
def test_whole_plain_batch_norm_inference_output_from_the_pool(rng, monkeypatch):
    """A large inference call's output is a pool buffer, taken and placed as
    :func:`fastnorm._memory.empty_like` takes and places one: reused once free, never while
    held; with the pool off, outputs of their own."""
    x = rng.standard_normal((40, 30, 20, 20)).astype(np.float32)
    assert x.nbytes >= _memory.MIN_BYTES
    rm, rv = np.zeros(30, np.float32), rng.uniform(0.5, 2.0, 30).astype(np.float32)
    ref = fastnorm.batch_norm(x, rm, rv, eps=np.float64(1e-5))

    def unreachable(*args, **kwargs):
        raise AssertionError("the whole compiled call should have served this call")

    monkeypatch.setattr(functional, "_batch_norm_plain", unreachable)
    _memory.release()
    with fastnorm.use_backend("cython"):
        call = lambda: fastnorm.batch_norm(x, rm, rv, None, None, False, 0.1, 1e-5)
        placed = _memory.empty_like(x)
        offset = _memory.page_offset(placed)
        del placed
        held = [call() for _ in range(3)]
        bases = [y.base for y in held]
        assert all(any(b is p for p in _memory._buffers) for b in bases)
        assert len({id(b) for b in bases}) == 3  # held outputs are not handed out again
        assert all(_memory.page_offset(y) == offset for y in held)
        last = id(bases[-1])
        del held, bases
        again = call()
        assert id(again.base) == last  # the most recently used free buffer
        assert again.flags.c_contiguous and again.flags.writeable and again.flags.owndata is False
        np.testing.assert_array_equal(again, ref)
        del again
        monkeypatch.setattr(_memory, "_enabled", False)
        off = call()
        assert off.base is None or not any(off.base is p for p in _memory._buffers)
        np.testing.assert_array_equal(off, ref)
    _memory.release()


@needs_cython
def test_whole_plain_batch_norm_inference_follows_the_thread_settings(rng, monkeypatch):
    """The kept plans follow ``set_num_threads`` and a fork that left OpenMP unusable."""
    from fastnorm.backends import _openmp

    x = rng.standard_normal((64, 32, 16, 16)).astype(np.float32)
    rm, rv = np.zeros(32, np.float32), np.ones(32, np.float32)
    seen = []
    real = cython_cpu._threads
    monkeypatch.setattr(cython_cpu, "_threads", lambda size: seen.append(real(size)) or seen[-1])
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs to change the thread count")
    monkeypatch.setattr(functional, "_PLAIN_CALLS", {})  # plans made afresh, with the patched _threads
    with fastnorm.use_backend("cython"):
        fastnorm.set_num_threads(1)
        fastnorm.batch_norm(x, rm, rv, eps=1e-5)
        fastnorm.batch_norm(x, rm, rv, eps=1e-5)
        assert seen == [1]
        fastnorm.set_num_threads(2)
        fastnorm.batch_norm(x, rm, rv, eps=1e-5)
        assert len(seen) == 2
        monkeypatch.setattr(_openmp, "_unusable", not _openmp._unusable)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            fastnorm.batch_norm(x, rm, rv, eps=1e-5)
        assert len(seen) == 3


@needs_cython
def test_whole_plain_rows_declines_what_is_not_plain(rng):
    rows_plain, _ = _whole_calls()
    x = rng.standard_normal((16, 4)).astype(np.float32)
    w = np.ones(4, np.float32)
    declined = [
        ("a list", (x.tolist(), 4, None, None, 1e-5)),
        ("float16", (x.astype(np.float16), 4, None, None, 1e-5)),
        ("not contiguous", (x[:, :2].T.copy().T, 2, None, None, 1e-5)),
        ("big-endian", (x.astype(">f4"), 4, None, None, 1e-5)),
        ("empty", (x[:0], 4, None, None, 1e-5)),
        ("eps a NumPy float", (x, 4, None, None, np.float32(1e-5))),
        ("eps negative", (x, 4, None, None, -1.0)),
        ("normalized_shape of two", (x, (16, 4), None, None, 1e-5)),
        ("normalized_shape another size", (x, (5,), None, None, 1e-5)),
        ("normalized_shape a NumPy int", (x, np.int64(4), None, None, 1e-5)),
        ("normalized_shape a list", (x, [4], None, None, 1e-5)),
        ("weight of another dtype", (x, 4, w.astype(np.float64), None, 1e-5)),
        ("weight strided", (x, 4, np.ones(8, np.float32)[::2], None, 1e-5)),
        ("bias of another size", (x, 4, None, np.zeros(3, np.float32), 1e-5)),
        ("bias a list", (x, 4, None, [0.0] * 4, 1e-5)),
    ]
    for why, args in declined:
        for center in (True, False):
            assert rows_plain(*args, center, _core.SMALL_SIZE) is None, why
    from fastnorm.backends import _kernels  # without plans: small calls only

    big = np.zeros((_core.SMALL_SIZE // 4 + 1, 4), np.float32)
    assert _kernels.rows_plain(None, big, 4, None, None, 1e-5, True, _core.SMALL_SIZE) is None
    assert _kernels.rows_plain(None, big[:8], 4, None, None, 1e-5, True, _core.SMALL_SIZE) is not None
    with pytest.raises(TypeError, match="plans"):
        _kernels.rows_plain(object(), big, 4, None, None, 1e-5, True, _core.SMALL_SIZE)


@needs_cython
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("shape", [(640, 768), (3, 7, 999), (5, 4000), (40000, 3)])
@pytest.mark.parametrize("threads", [1, 2])
def test_whole_plain_rows_call_of_any_size(dtype, op, shape, threads, rng, monkeypatch):
    """A large plain LayerNorm/RMSNorm is the compiled whole call too (the Python plain path
    patched to raise): the general path's output to the bit, within the float64 oracle's
    tolerance, the input unchanged; the output of a pooled size comes from the pool.  (Offset
    data are the numerics tests' concern: this output is the general path's to the bit.)"""
    x = (10.0 + rng.standard_normal(shape)).astype(dtype)
    assert x.size > _core.SMALL_SIZE
    m = shape[-1]
    w = rng.uniform(0.5, 1.5, m).astype(dtype)
    b = rng.standard_normal(m).astype(dtype)
    args = (x, (m,), w) + ((b,) if op == "layer_norm" else ())
    before = x.copy()
    fastnorm.set_num_threads(min(threads, fastnorm.get_num_threads()))  # restored by conftest
    with fastnorm.use_backend("cython"):
        want = getattr(fastnorm, op)(*args, eps=np.float64(1e-5))

        def unreachable(*a, **k):
            raise AssertionError("the whole compiled call should have served this call")

        monkeypatch.setattr(functional, "_rows_plain", unreachable)
        y = getattr(fastnorm, op)(*args, eps=1e-5)
    assert y.dtype == x.dtype and y.shape == x.shape and y.flags.c_contiguous
    np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(x, before)
    if y.nbytes >= _memory.MIN_BYTES:
        assert any(y.base is p for p in _memory._buffers)
    ref = x.astype(np.float64)
    mean = ref.mean(-1, keepdims=True) if op == "layer_norm" else 0.0
    ref = (ref - mean) / np.sqrt(((ref - mean) ** 2).mean(-1, keepdims=True) + 1e-5) * w
    ref = ref + (b if op == "layer_norm" else 0.0)
    np.testing.assert_allclose(y, ref, rtol=0, atol=TOL[dtype] * np.abs(ref).max() * 10)


@needs_cython
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("center", [True, False])
def test_whole_plain_rows_eps_none_is_the_machine_epsilon(dtype, center, rng):
    """``eps=None`` (RMSNorm's default) is the dtype's machine epsilon, as on the Python path;
    the data's variance is of the epsilon's order, so a different epsilon would show."""
    x = (np.sqrt(np.finfo(dtype).eps) * rng.standard_normal((12, 16))).astype(dtype)
    rows_plain, _ = _whole_calls()
    y = rows_plain(x, 16, None, None, None, center, _core.SMALL_SIZE)
    want, _ = functional._rows_plain(x, (16,), None, None, None, center, False)
    np.testing.assert_array_equal(y, want)
    other = rows_plain(x, 16, None, None, 0.0, center, _core.SMALL_SIZE)
    assert not np.allclose(y, other, rtol=1e-3)


@needs_cython
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layers_keeping_nothing_take_the_whole_call(dtype, rng, monkeypatch):
    """Layers that keep nothing for a backward (inference mode, BatchNorm in evaluation) give
    the results of the same layers keeping their statistics, to the bit, through the compiled
    whole call; they still check their input as before."""
    x = (20.0 + rng.standard_normal((6, 4, 5))).astype(dtype)
    layers = [fastnorm.BatchNorm1d(4, dtype=dtype), fastnorm.LayerNorm(5, dtype=dtype),
              fastnorm.RMSNorm(5, dtype=dtype), fastnorm.RMSNorm(5, eps=1e-3, dtype=dtype)]
    bn = layers[0]
    bn.running_mean[:] = rng.standard_normal(4)
    bn.running_var[:] = rng.uniform(0.5, 2.0, 4)
    bn.weight[:] = rng.uniform(0.5, 1.5, 4)
    bn.eval()
    stats = (bn.running_mean.copy(), bn.running_var.copy())
    with fastnorm.use_backend("cython"):
        want = [layer(x) for layer in layers]
        calls = []
        real = functional._plain_calls

        def counted(name):
            rows, channels = real(name)
            wrap = lambda f: lambda *a: calls.append(f(*a)) or calls[-1]
            return wrap(rows), wrap(channels)

        monkeypatch.setattr(fastnorm.layers, "_plain_calls", counted)
        with fastnorm.inference_mode():
            got = [layer(x) for layer in layers]
            with pytest.raises(ValueError, match="3D"):
                fastnorm.BatchNorm2d(4, dtype=dtype).eval()(x)
    assert len(calls) == len(layers) and all(c is not None for c in calls)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    np.testing.assert_array_equal(bn.running_mean, stats[0])  # inference: not updated
    np.testing.assert_array_equal(bn.running_var, stats[1])
    with pytest.raises(ValueError, match="inference mode"):
        layers[1].backward(np.ones_like(x))  # nothing was kept
