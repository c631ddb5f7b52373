"""Device arrays on the cuda backend: where results go, out=, layouts, foreign arrays, errors
(identical to the CPU path; a failed call changes nothing), device arrays under a CPU backend."""

import naive
import numpy as np
import pytest
from conftest import assert_grad_close, assert_output_close
from numba import cuda
from simhelp import CAIArray, dev, host, is_device

import fastnorm


@pytest.fixture
def on_cuda():
    fastnorm.set_backend("cuda")


def test_cuda_is_listed():
    assert "cuda" in fastnorm.available_backends()
    with fastnorm.use_backend("cuda"):
        assert fastnorm.get_backend() == "cuda"


def test_numpy_in_numpy_out_device_in_device_out(on_cuda, rng):
    x = rng.standard_normal((4, 3, 5)).astype(np.float32)
    y = fastnorm.group_norm(x, 3)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    yd = fastnorm.group_norm(dev(x), 3)
    assert is_device(yd) and yd.dtype == np.float32 and tuple(yd.shape) == x.shape
    np.testing.assert_array_equal(host(yd), y)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_out_device_and_in_place(on_cuda, rng, dtype):
    x = rng.standard_normal((4, 6, 5)).astype(dtype)
    ref = naive.layer_norm(x, 5)["y"]
    out = cuda.device_array(x.shape, dtype)
    got = fastnorm.layer_norm(dev(x), 5, out=out)
    assert got is out
    assert_output_close(host(out), ref, dtype)
    xd = dev(x)
    got = fastnorm.layer_norm(xd, 5, out=xd)  # in place
    assert got is xd
    assert_output_close(host(xd), ref, dtype)
    # a strided out: written through, values right
    big = cuda.device_array((4, 6, 10), dtype)
    strided = big[:, :, ::2]
    got = fastnorm.layer_norm(dev(x), 5, out=strided)
    assert got is strided
    assert_output_close(host(big)[:, :, ::2], ref, dtype)
    # NumPy x with NumPy out on the cuda backend
    out_np = np.empty_like(x)
    assert fastnorm.layer_norm(x, 5, out=out_np) is out_np
    assert_output_close(out_np, ref, dtype)


def test_out_overlapping_input(on_cuda, rng):
    """out overlapping x but not equal to it: computed into a scratch buffer first."""
    x = rng.standard_normal((2, 3, 8)).astype(np.float64)
    buf = dev(np.concatenate([x.reshape(-1), np.zeros(4)]))
    xd = buf[:x.size].reshape(x.shape)
    out = buf[4:4 + x.size].reshape(x.shape)
    ref = naive.batch_norm(x, None, None, training=True)["y"]
    fastnorm.batch_norm(xd, training=True, out=out)
    assert_output_close(host(out), ref, np.float64)


def test_non_contiguous_device_input(on_cuda, rng):
    x = rng.standard_normal((4, 3, 10)).astype(np.float32)
    big = dev(np.repeat(x, 2, axis=2))
    xs = big[:, :, ::2]  # equal to x, strided
    assert not xs.is_c_contiguous()
    ref = naive.instance_norm(x, axis=1)["y"]
    assert_output_close(host(fastnorm.instance_norm(xs)), ref, np.float32)
    # channels-last view of the same values
    xt = dev(np.ascontiguousarray(x.transpose(0, 2, 1)))
    ref = naive.instance_norm(np.ascontiguousarray(x.transpose(0, 2, 1)), axis=-1)["y"]
    assert_output_close(host(fastnorm.instance_norm(xt, axis=-1)), ref, np.float32)


def test_foreign_cuda_array_interface(on_cuda, rng):
    """A CuPy-like object: read in place, result a Numba device array; out= written through."""
    x = rng.standard_normal((3, 4, 6)).astype(np.float32)
    w = rng.standard_normal(6).astype(np.float32)
    y = fastnorm.rms_norm(CAIArray(x), 6, CAIArray(w))
    assert is_device(y)
    assert_output_close(host(y), naive.rms_norm(x, 6, w)["y"], np.float32)
    out = CAIArray(np.zeros_like(x))
    assert fastnorm.rms_norm(CAIArray(x), 6, w, out=out) is out
    assert_output_close(out.values(), naive.rms_norm(x, 6, w)["y"], np.float32)


def test_zero_size(on_cuda):
    y = fastnorm.batch_norm(dev(np.zeros((0, 3, 4), np.float32)), np.zeros(3), np.ones(3))
    assert is_device(y) and tuple(y.shape) == (0, 3, 4)
    y = fastnorm.layer_norm(np.zeros((0, 5), np.float32), 5)
    assert isinstance(y, np.ndarray) and y.shape == (0, 5)
    ln = fastnorm.LayerNorm(5)
    y = ln(dev(np.zeros((0, 5), np.float32)))
    dx = ln.backward(dev(np.zeros((0, 5), np.float32)))
    assert tuple(dx.shape) == (0, 5)
    np.testing.assert_array_equal(host(ln.grad_weight), np.zeros(5, np.float32))


def test_cpu_forward_then_cuda_backward(rng):
    """A forward saved by a CPU backend, differentiated while cuda is selected, uses the cuda
    backend's host-array contract (channels, grouped, samples and rows paths)."""
    cases = [
        (fastnorm.BatchNorm(3), (4, 3, 8)),
        (fastnorm.GroupNorm(2, 4), (8, 4, 6)),            # grouped (channels-first) path
        (fastnorm.GroupNorm(2, 4, axis=-1), (8, 6, 4)),   # samples (channels-last) path
        (fastnorm.LayerNorm(6), (5, 6)),
    ]
    for layer, shape in cases:
        x = rng.standard_normal(shape).astype(np.float32)
        dy = rng.standard_normal(shape).astype(np.float32)
        with fastnorm.use_backend("numpy"):
            layer(x)
            ref = layer.backward(dy), layer.grad_weight
        layer(x)  # the default CPU backend makes the saved state
        with fastnorm.use_backend("cuda"):
            dx = layer.backward(dy)
            assert isinstance(dx, np.ndarray)
            assert_grad_close(dx, ref[0].astype(np.float64), np.float32)
            assert_grad_close(layer.grad_weight, ref[1].astype(np.float64), np.float32)


# -- errors ---------------------------------------------------------------------------


def _bad_calls(make):
    """(function, kwargs) pairs that must fail; ``make`` turns arrays into the tested kind."""
    x4 = np.ones((2, 3, 4, 5), np.float32)
    c3 = np.ones(3, np.float32)
    return [
        (fastnorm.batch_norm, {"x": make(x4.astype(np.int32))}),
        (fastnorm.batch_norm, {"x": make(x4), "training": False}),
        (fastnorm.batch_norm, {"x": make(x4), "weight": make(np.ones(4, np.float32)), "training": True}),
        (fastnorm.batch_norm, {"x": make(x4), "running_mean": make(c3),
                                   "running_var": make(c3.astype(np.int64)), "training": True}),
        (fastnorm.batch_norm, {"x": make(x4), "running_mean": make(c3), "running_var": None}),
        (fastnorm.batch_norm, {"x": make(x4), "training": True, "eps": -1.0}),
        (fastnorm.batch_norm, {"x": make(np.ones((1, 3), np.float32)), "training": True}),
        (fastnorm.batch_norm, {"x": make(x4), "training": True, "out": make(np.ones((2, 3, 4), np.float32))}),
        (fastnorm.batch_norm, {"x": make(x4), "training": True, "out": make(np.ones(x4.shape))}),
        (fastnorm.batch_norm, {"x": make(x4), "training": True, "axis": 4}),
        (fastnorm.instance_norm, {"x": make(np.ones((2, 3, 1), np.float32))}),
        (fastnorm.group_norm, {"x": make(x4), "num_groups": 2}),
        (fastnorm.layer_norm, {"x": make(x4), "normalized_shape": (4,)}),
        (fastnorm.layer_norm, {"x": make(x4), "normalized_shape": 5, "bias": make(np.ones(4))}),
        (fastnorm.rms_norm, {"x": make(x4), "normalized_shape": 5, "weight": make(np.ones((5, 1)))}),
    ]


def _raise(fn, kw):
    with pytest.raises((TypeError, ValueError)) as info:
        fn(**kw)
    return info.type, str(info.value)


def test_errors_identical_to_the_cpu_path():
    expected = [_raise(fn, kw) for fn, kw in _bad_calls(lambda a: a)]
    with fastnorm.use_backend("cuda"):
        got = [_raise(fn, kw) for fn, kw in _bad_calls(dev)]
    assert got == expected


def test_failed_call_changes_nothing(on_cuda, rng):
    x = dev(rng.standard_normal((4, 3, 5)).astype(np.float32))
    rm, rv = dev(np.zeros(3, np.float32)), dev(np.ones(3, np.float32))
    out = dev(np.full((4, 3, 5), 7.0, np.float32))
    with pytest.raises(ValueError, match="eps"):
        fastnorm.batch_norm(x, rm, rv, training=True, eps=-1.0, out=out)
    np.testing.assert_array_equal(host(rm), 0)
    np.testing.assert_array_equal(host(rv), 1)
    np.testing.assert_array_equal(host(out), 7)
    with pytest.raises(ValueError, match="must not share memory"):
        fastnorm.batch_norm(x, rm, rm, training=True)
    # a layer whose forward fails keeps its arrays where they were
    bn = fastnorm.BatchNorm1d(3)
    with pytest.raises(ValueError):
        bn(dev(np.ones((1, 3), np.float32)))  # one value per channel
    assert isinstance(bn.weight, np.ndarray) and isinstance(bn.running_mean, np.ndarray)
    assert bn.num_batches_tracked == 0


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_device_arrays_under_a_cpu_backend_raise(backend, rng):
    x = rng.standard_normal((4, 3, 5)).astype(np.float32)
    c = np.ones(3, np.float32)
    with fastnorm.use_backend(backend):
        for kw, name in (({"x": dev(x)}, "x"), ({"x": x, "weight": dev(c), "training": True}, "weight"),
                         ({"x": x, "running_mean": dev(c), "running_var": c, "training": True},
                          "running_mean"),
                         ({"x": x, "running_mean": c, "running_var": dev(c)}, "running_var")):
            with pytest.raises(TypeError, match=f"^{name} is a CUDA device array.*'cuda' backend"):
                fastnorm.batch_norm(**kw)
        with pytest.raises(TypeError, match="out must be a numpy.ndarray"):
            fastnorm.batch_norm(x, training=True, out=dev(x))
        with pytest.raises(TypeError, match="^x is a CUDA device array"):
            fastnorm.LayerNorm(5)(CAIArray(x))
        ln = fastnorm.LayerNorm(5)
        ln(x)
        with pytest.raises(TypeError, match="^dy is a CUDA device array"):
            ln.backward(dev(x))


# -- layers ---------------------------------------------------------------------------


def test_layer_arrays_follow_the_data(on_cuda, rng):
    bn = fastnorm.BatchNorm2d(3, momentum=None)
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    bn(dev(x))
    assert all(is_device(getattr(bn, n)) for n in ("weight", "bias", "running_mean", "running_var"))
    assert bn.num_batches_tracked == 1
    state = bn.state_dict()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    assert state["num_batches_tracked"].dtype == np.int64
    # load_state_dict copies into the device arrays in place
    rm_before = bn.running_mean
    new = {**state, "running_mean": np.full(3, 2.0), "weight": np.full(3, 3.0, np.float32)}
    bn.load_state_dict(new)
    assert bn.running_mean is rm_before
    np.testing.assert_array_equal(host(bn.running_mean), 2.0)
    # device values load too
    bn.load_state_dict({**state, "running_var": dev(np.full(3, 5.0, np.float32))})
    np.testing.assert_array_equal(host(bn.running_var), 5.0)
    bn.reset_running_stats()
    np.testing.assert_array_equal(host(bn.running_mean), 0.0)
    np.testing.assert_array_equal(host(bn.running_var), 1.0)
    # a NumPy input brings them back to the host
    y = bn(x)
    assert isinstance(y, np.ndarray) and isinstance(bn.weight, np.ndarray)
    assert isinstance(bn.running_mean, np.ndarray)
    bn(dev(x))  # counted across moves (reset_running_stats set the count to 0)
    assert bn.num_batches_tracked == 2 and is_device(bn.running_var)


def test_unbatched_instance_norm_on_device(on_cuda, rng):
    x = rng.standard_normal((3, 4, 5)).astype(np.float32)
    layer = fastnorm.InstanceNorm2d(3, affine=True)
    y = layer(dev(x))
    assert is_device(y) and tuple(y.shape) == x.shape
    ref = naive.instance_norm(x[None], axis=1)["y"][0]
    assert_output_close(host(y), ref, np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dx = layer.backward(dev(dy))
    r = naive.instance_norm(x[None], axis=1)
    ref_dx = naive.instance_norm_backward(x[None], dy[None], r["mean"], r["var"], axis=1)[0][0]
    assert_grad_close(host(dx), ref_dx, np.float32)


def test_arguments_sharing_memory_with_out(on_cuda, rng):
    """The CPU path's rules on the device: a weight that is a view of ``out`` is read first;
    running statistics updated in place that share memory with ``out`` are refused."""
    x = rng.standard_normal((4, 6)).astype(np.float32)
    out = dev(np.zeros((4, 6), np.float32))
    w = np.linspace(0.5, 2.0, 6).astype(np.float32)
    out[0] = w
    got = fastnorm.layer_norm(dev(x), 6, out[0], None, out=out)
    np.testing.assert_allclose(host(got), naive.layer_norm(x, 6, w)["y"], rtol=1e-5, atol=1e-5)
    out = dev(np.full((4, 6), 7.0, np.float32))
    with pytest.raises(ValueError, match="out and running_mean must not share memory"):
        fastnorm.batch_norm(dev(x), out[0], dev(np.ones(6, np.float32)), training=True, out=out)
    np.testing.assert_array_equal(host(out), 7)


def test_infinities_as_on_the_cpu(on_cuda, rng):
    """A channel holding +inf: running mean inf, variance NaN; an RMSNorm row holding an
    infinity: 0 at its finite values, NaN at the infinity."""
    x = rng.standard_normal((6, 3, 40)).astype(np.float32)
    x[1, 1, 3], x[5, 1, 39] = np.inf, np.inf
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    with np.errstate(all="ignore"):
        fastnorm.batch_norm(x, rm, rv, training=True)
    assert np.isfinite(rm[0]) and rm[1] == np.inf and np.isnan(rv[1])
    r = rng.standard_normal((3, 50)).astype(np.float32)
    r[1, 7] = -np.inf
    with np.errstate(all="ignore"):
        y = fastnorm.rms_norm(r, 50)
    assert np.all(np.isfinite(y[0])) and np.isnan(y[1, 7])
    assert np.all(np.delete(y[1], 7) == 0)
