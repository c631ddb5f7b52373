"""Arguments sharing memory with ``out``, infinities, ``num_batches_tracked`` in state dicts, and
per-call allocations: one test per rule, on every CPU backend.

(Forked processes and layers shared by threads: ``test_fork_threads.py``; the randomized search
over all of these: ``test_fuzz.py``.)
"""

from __future__ import annotations

import tracemalloc

import naive
import numpy as np
import pytest

import fastnorm
from fastnorm import _memory

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

# ----------------------------------------------------------------------------- sharing memory


@pytest.mark.parametrize("family", ["layer", "rms"])
@pytest.mark.parametrize("param", ["weight", "bias"])
def test_row_parameters_that_are_views_of_out(backend, family, param):
    """A weight or bias that is a view of ``out`` gives the result of reading it first (the
    kernels would otherwise read values they have just overwritten)."""
    if family == "rms" and param == "bias":
        pytest.skip("RMSNorm has no bias")
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    out = np.empty_like(x)
    out[0] = np.linspace(0.5, 2.0, 8)
    shared = out[0]
    kwargs = {param: shared}
    want_param = shared.copy()
    if family == "layer":
        y = fastnorm.layer_norm(x, 8, eps=1e-5, out=out, **kwargs)
        ref = naive.layer_norm(x, 8, **{param: want_param})["y"]
    else:
        y = fastnorm.rms_norm(x, 8, shared, out=out)
        ref = naive.rms_norm(x, 8, want_param)["y"]
    assert y is out
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["batch", "instance", "group"])
def test_channel_parameters_that_are_views_of_out(backend, family):
    x = np.random.default_rng(1).standard_normal((2, 4, 5)).astype(np.float64)
    out = np.zeros_like(x)
    out[0, :, 0] = [0.5, 1.0, 1.5, 2.0]
    out[1, :, 0] = [0.1, -0.2, 0.3, -0.4]
    w, b = out[0, :, 0], out[1, :, 0]
    w0, b0 = w.copy(), b.copy()
    if family == "batch":
        y = fastnorm.batch_norm(x, None, None, w, b, training=True, out=out)
        ref = naive.batch_norm(x, None, None, w0, b0, training=True)["y"]
    elif family == "instance":
        y = fastnorm.instance_norm(x, weight=w, bias=b, out=out)
        ref = naive.instance_norm(x, None, None, w0, b0)["y"]
    else:
        y = fastnorm.group_norm(x, 2, w, b, out=out)
        ref = naive.group_norm(x, 2, w0, b0)["y"]
    np.testing.assert_allclose(y, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("family", ["batch", "instance"])
@pytest.mark.parametrize("which", ["running_mean", "running_var"])
def test_updated_running_statistics_sharing_out_are_refused(backend, family, which):
    """Running statistics updated in place that share memory with ``out``: ``ValueError``, and
    nothing written (the update would overwrite the returned ``y``)."""
    x = np.random.default_rng(2).standard_normal((2, 4, 3)).astype(np.float32)
    out = np.full_like(x, 7.0)
    running = {"running_mean": np.zeros(4, np.float32), "running_var": np.ones(4, np.float32)}
    running[which] = out[0, :, 0]
    before = [a.copy() for a in (x, out, running["running_mean"], running["running_var"])]
    with pytest.raises(ValueError, match=f"out and {which} must not share memory"):
        if family == "batch":
            fastnorm.batch_norm(x, running["running_mean"], running["running_var"], training=True,
                                out=out)
        else:
            fastnorm.instance_norm(x, running["running_mean"], running["running_var"], out=out)
    for old, new in zip(before, (x, out, running["running_mean"], running["running_var"])):
        np.testing.assert_array_equal(new, old)


def test_running_statistics_read_in_evaluation_may_be_views_of_out(backend):
    """Statistics that only normalize (evaluation) are inputs like the others: read first."""
    x = np.random.default_rng(3).standard_normal((5, 3)).astype(np.float64)
    out = np.zeros_like(x)
    out[0] = [0.5, -0.5, 1.0]
    out[1] = [1.5, 2.0, 0.5]
    rm, rv = out[0], out[1]
    ref = naive.batch_norm(x, rm.copy(), rv.copy())["y"]
    np.testing.assert_allclose(fastnorm.batch_norm(x, rm, rv, out=out), ref, rtol=1e-12)


def test_running_mean_and_var_sharing_memory_are_refused(backend):
    x = np.random.default_rng(4).standard_normal((6, 3)).astype(np.float32)
    both = np.zeros(6, np.float32)
    with pytest.raises(ValueError, match="running_mean and running_var must not share memory"):
        fastnorm.batch_norm(x, both[:3], both[2:5], training=True)
    np.testing.assert_array_equal(both, 0)
    # interleaved views of one buffer share no element: accepted
    y = fastnorm.batch_norm(x, both[0::2], both[1::2], training=True)
    assert np.isfinite(y).all()


# ---------------------------------------------------------------------------------- infinities


def test_rms_norm_row_with_an_infinity(backend):
    """The mean square of a row holding an infinity is infinite: rstd 0, so the row's finite
    values become 0 and the infinity NaN (as in PyTorch); the other rows are untouched."""
    x = np.random.default_rng(5).standard_normal((3, 5000)).astype(np.float32)
    x[1, 17] = np.inf
    x[2, 5], x[2, 9] = -np.inf, np.inf
    y = fastnorm.rms_norm(x, 5000)
    ref = naive.rms_norm(x, 5000)["y"]
    np.testing.assert_allclose(y[0], ref[0], rtol=1e-5, atol=1e-5)
    for r in (1, 2):
        assert np.array_equal(np.isnan(y[r]), ~np.isfinite(x[r]))
        assert np.all(y[r][np.isfinite(x[r])] == 0)


@pytest.mark.parametrize("family", ["batch", "instance"])
@pytest.mark.parametrize("shape", [(8, 4, 100), (64, 4, 3000)])  # one block; many blocks, threads
@pytest.mark.parametrize("axis", [1, -1])
def test_channel_with_infinities_has_the_formula_statistics(backend, family, shape, axis):
    """A channel holding +inf has running mean +inf (-inf: -inf; both or a NaN: NaN) and
    running variance NaN, and NaN outputs, as ``sum(x) / n`` and PyTorch give; the other
    channels keep finite statistics, whatever the blocking of the reduction."""
    x = np.random.default_rng(6).standard_normal(shape).astype(np.float32)
    if axis == -1:
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    xc = np.moveaxis(x, 1 if axis == 1 else -1, 1)  # a channels-first view for planting values
    xc[3, 1, 7] = np.inf
    xc[-1, 1, -1] = np.inf  # +inf in the first and the last block of channel 1
    xc[2, 2, 3] = -np.inf
    xc[1, 3, 1], xc[-2, 3, 0] = np.inf, -np.inf
    rm, rv = np.zeros(4, np.float32), np.ones(4, np.float32)
    with np.errstate(all="ignore"):
        if family == "batch":
            y = fastnorm.batch_norm(x, rm, rv, training=True, axis=axis)
        else:
            y = fastnorm.instance_norm(x, rm, rv, axis=axis)
    np.testing.assert_array_equal(rm[1:], [np.inf, -np.inf, np.nan])
    assert np.isfinite(rm[0]) and np.isfinite(rv[0])
    assert np.all(np.isnan(rv[1:]))
    yc = np.moveaxis(y, 1 if axis == 1 else -1, 1)
    assert np.all(np.isfinite(yc[:, 0]))
    if family == "batch":
        assert np.all(np.isnan(yc[:, 1:]))


@pytest.mark.parametrize("family", ["batch", "instance", "group"])
def test_channels_last_infinities_at_segment_starts(backend, family):
    """Channels-last statistics of many channels (vectorized over channels) shift each segment
    of rows by its first row: infinities and NaNs in first rows, and elsewhere, give the
    formula's statistics."""
    x = np.random.default_rng(12).standard_normal((2, 700, 32)).astype(np.float32)
    x[0, 0, 3] = np.inf
    x[0, 64, 5] = -np.inf
    x[1, 640, 7] = np.nan
    x[1, 0, 9], x[1, 128, 9] = np.inf, -np.inf
    x[0, 0, 30] = np.inf
    with np.errstate(all="ignore"):
        if family == "batch":
            rm, rv = np.zeros(32), np.ones(32)
            y = fastnorm.batch_norm(x, rm, rv, training=True, axis=-1)
            ref = naive.batch_norm(x, np.zeros(32), np.ones(32), training=True, axis=-1)
            got, want = [y, rm, rv], [ref["y"], ref["running_mean"], ref["running_var"]]
        elif family == "instance":
            rm, rv = np.zeros(32), np.ones(32)
            y = fastnorm.instance_norm(x, rm, rv, axis=-1)
            ref = naive.instance_norm(x, np.zeros(32), np.ones(32), axis=-1)
            got, want = [y, rm, rv], [ref["y"], ref["running_mean"], ref["running_var"]]
        else:
            got, want = [fastnorm.group_norm(x, 8, axis=-1)], [naive.group_norm(x, 8, axis=-1)["y"]]
    for g, w in zip(got, want):
        g = np.asarray(g, np.float64)
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w))
        np.testing.assert_array_equal(g[np.isinf(w)], w[np.isinf(w)])
        finite = np.isfinite(w)
        np.testing.assert_allclose(g[finite], w[finite], rtol=1e-5, atol=1e-5)


def test_layer_norm_row_with_an_infinity_is_nan(backend):
    x = np.random.default_rng(7).standard_normal((2, 3000)).astype(np.float64)
    x[1, 2999] = np.inf
    with np.errstate(all="ignore"):
        y = fastnorm.layer_norm(x, 3000)
    assert np.all(np.isfinite(y[0])) and np.all(np.isnan(y[1]))


def test_infinities_match_pytorch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 5000)).astype(np.float32)
    x[1, 17], x[2, 5], x[2, 9] = np.inf, -np.inf, np.inf
    for backend in fastnorm.available_backends():
        if backend == "cuda":
            continue
        with fastnorm.use_backend(backend), np.errstate(all="ignore"):
            got, want = fastnorm.rms_norm(x, 5000), F.rms_norm(torch.from_numpy(x), (5000,)).numpy()
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
            xb = rng.standard_normal((8, 4, 100)).astype(np.float32)
            xb[3, 1, 7], xb[2, 2, 3], xb[1, 3, 1] = np.inf, -np.inf, np.nan
            rm, rv = np.zeros(4, np.float32), np.ones(4, np.float32)
            trm, trv = torch.zeros(4), torch.ones(4)
            y = fastnorm.batch_norm(xb, rm, rv, training=True)
            t = F.batch_norm(torch.from_numpy(xb), trm, trv, training=True).numpy()
        np.testing.assert_array_equal(np.isnan(y), np.isnan(t))
        np.testing.assert_allclose(y, t, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(rm[1:], trm.numpy()[1:])
        np.testing.assert_array_equal(np.isnan(rv), np.isnan(trv.numpy()))


# ------------------------------------------------------------------ num_batches_tracked loading


@pytest.mark.parametrize("bad, exc, text", [
    (-1, ValueError, "got -1"),
    (np.array(-3, np.int64), ValueError, "got -3"),
    (float("nan"), ValueError, "got nan"),
    (2.7, ValueError, "got 2.7"),
    (np.float32(np.inf), ValueError, "got inf"),
    (np.array(True), TypeError, "got dtype bool"),
    ("3", TypeError, "got dtype <U1"),
    (np.zeros(2, np.int64), ValueError, r"got shape \(2,\)"),
])
@pytest.mark.parametrize("cls", [fastnorm.BatchNorm1d, fastnorm.InstanceNorm1d])
def test_num_batches_tracked_must_be_a_count(cls, bad, exc, text):
    """An invalid count names the key and loads nothing (a negative one used to make the next
    cumulative-average step divide by zero)."""
    layer = cls(3, track_running_stats=True)
    state = {k: np.asarray(v) + 1 for k, v in layer.state_dict().items()}
    state["num_batches_tracked"] = bad
    before = layer.state_dict()
    with pytest.raises(exc, match=r"state_dict\['num_batches_tracked'\] must be a non-negative "
                                  r"integer count.*" + text):
        layer.load_state_dict(state)
    for k, v in layer.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


@pytest.mark.parametrize("good, want", [(5, 5), (np.array([7], np.int32), 7), (3.0, 3),
                                        (np.uint8(2), 2), (0, 0)])
def test_num_batches_tracked_whole_numbers_load(good, want):
    layer = fastnorm.BatchNorm1d(3, momentum=None)
    state = layer.state_dict()
    state["num_batches_tracked"] = good
    layer.load_state_dict(state)
    assert layer.num_batches_tracked == want and type(layer.num_batches_tracked) is int
    layer(np.random.default_rng(9).standard_normal((4, 3)).astype(np.float32))
    assert layer.num_batches_tracked == want + 1


# ------------------------------------------------------------------------ per-call allocations


@pytest.mark.parametrize("family", ["layer", "rms"])
@pytest.mark.parametrize("shape", [(4, 1 << 18), (1, 1 << 20)])
def test_rows_without_parameters_allocate_only_statistics(backend, family, shape):
    """``out=x`` without weight or bias allocates no ``(M,)`` array (all-ones weights, all-zeros
    biases): at most the per-row statistics and bookkeeping, far below one row."""
    if backend == "numpy":
        pytest.skip("the float64 reference computes in new arrays by design")
    x = np.random.default_rng(10).standard_normal(shape).astype(np.float32)
    fn = fastnorm.layer_norm if family == "layer" else fastnorm.rms_norm
    fn(x[:, :1024].copy(), 1024)  # compile (numba) and import everything first
    fn(x, shape[1], out=x)
    tracemalloc.start()
    try:
        fn(x, shape[1], out=x)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    row_bytes = shape[1] * 4
    assert peak < min(64 << 10, row_bytes // 16), f"{peak} bytes allocated for rows of {row_bytes}"


@pytest.mark.parametrize("family", ["layer", "rms"])
def test_row_layer_forward_keeps_no_copy_of_its_weight(backend, family):
    """The layer's forward saves its weight by reference for the backward, as its input:
    no per-call copy of an ``(M,)`` array."""
    if backend == "numpy":
        pytest.skip("the float64 reference computes in new arrays by design")
    m = 1 << 20
    layer = (fastnorm.LayerNorm if family == "layer" else fastnorm.RMSNorm)(m)
    x = np.random.default_rng(11).standard_normal((2, m)).astype(np.float32)
    layer(x)
    layer(x)
    tracemalloc.start()
    try:
        layer(x)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    output = 0 if _memory._enabled else x.nbytes  # a pooled output is reused: no new bytes
    assert peak < output + (64 << 10), peak
