"""Memory layouts, byte orders, read-only data, ``out=``, input immutability and thread safety."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import fastnorm
import naive
from conftest import (assert_grad_close, assert_output_close, assert_stats_close, param_dtype,
                      random_input, random_params)


from layouts import LAYOUTS  # noqa: E402



@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("axis, shape", [(1, (4, 3, 5, 6)), (-1, (4, 5, 6, 3)), (1, (7, 3))])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("training", [True, False])
def test_layouts(backend, rng, layout, axis, shape, dtype, training):
    base = random_input(rng, shape, dtype, offset=1.0, scale=2.0)
    if layout == "broadcast":
        base = np.broadcast_to(base[:1], shape).copy()
    x = LAYOUTS[layout](base)
    np.testing.assert_array_equal(x, base)
    c = shape[naive.channel_axis(len(shape), axis)]
    w, b, rm, rv = random_params(rng, c, param_dtype(dtype))
    ref = naive.batch_norm(base, rm, rv, w, b, training=training, momentum=0.3, axis=axis)
    y = fastnorm.batch_norm(x, rm, rv, w, b, training=training, momentum=0.3, axis=axis)
    assert_output_close(y, ref["y"], np.dtype(dtype))
    assert_stats_close(rm, ref["running_mean"])
    assert_stats_close(rv, ref["running_var"])
    np.testing.assert_array_equal(x, base)  # input unchanged


@pytest.mark.parametrize("layout", ["strided", "fortran", "neg_all", "big_endian", "read_only"])
def test_layouts_layer_backward(backend, rng, layout):
    shape = (4, 3, 5)
    base = random_input(rng, shape, np.float64, offset=-1.0)
    dy_base = rng.standard_normal(shape)
    x, dy = LAYOUTS[layout](base), LAYOUTS[layout](dy_base)
    layer = fastnorm.BatchNorm1d(3, dtype=np.float64)
    y = layer(x)
    ref = naive.batch_norm(base, training=True)
    assert_output_close(y, ref["y"], np.float64)
    dx = layer.backward(dy)
    ref_dx, ref_dw, ref_db = naive.batch_norm_backward(base, dy_base, ref["mean"], ref["var"])
    assert_grad_close(dx, ref_dx, np.float64)
    assert_grad_close(layer.grad_weight, ref_dw, np.float64)
    assert_grad_close(layer.grad_bias, ref_db, np.float64)
    np.testing.assert_array_equal(x, base)
    np.testing.assert_array_equal(dy, dy_base)


def test_parameter_layouts(backend, rng):
    """weight/bias/running stats given as strided, negative-stride or big-endian arrays;
    strided running-stat views are updated in place (the underlying buffer changes)."""
    x = random_input(rng, (6, 4, 5), np.float64, offset=0.5)
    w, b, rm, rv = random_params(rng, 4, np.float64)
    ref = naive.batch_norm(x, rm, rv, w, b, training=True, momentum=0.4)
    rm_buf = np.zeros(8)
    rm_buf[::2] = rm
    rv_buf = np.zeros(8)
    rv_buf[::2] = rv
    rm_view, rv_view = rm_buf[::2], rv_buf[::2][::-1][::-1]
    y = fastnorm.batch_norm(x, rm_view, rv_view, w.astype(">f8"), np.ascontiguousarray(b[::-1])[::-1],
                            training=True, momentum=0.4)
    assert_output_close(y, ref["y"], np.float64)
    assert_stats_close(rm_buf[::2], ref["running_mean"])
    assert_stats_close(rv_buf[::2], ref["running_var"])
    np.testing.assert_array_equal(rm_buf[1::2], 0.0)  # neighbours untouched
    np.testing.assert_array_equal(rv_buf[1::2], 0.0)


def test_list_and_float64_params_with_float32_input(backend, rng):
    """Arrays in are anything np.asarray accepts: lists, float64 weight for float32 data."""
    x = random_input(rng, (5, 3), np.float32)
    w = [1.0, 2.0, 0.5]
    b = np.array([0.1, -0.2, 0.3])  # float64
    ref = naive.batch_norm(x, None, None, w, b, training=True)
    y = fastnorm.batch_norm(x, None, None, w, b, training=True)
    assert_output_close(y, ref["y"], np.float32)
    y = fastnorm.batch_norm(x.tolist(), training=True)
    ref = naive.batch_norm(x, training=True)
    assert isinstance(y, np.ndarray) and y.dtype == np.float64
    np.testing.assert_allclose(y, ref["y"], rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------- out=


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("axis, shape", [(1, (4, 3, 5, 6)), (-1, (4, 5, 6, 3))])
@pytest.mark.parametrize("training", [True, False])
def test_out_fresh_array(backend, rng, dtype, axis, shape, training):
    x = random_input(rng, shape, dtype)
    x0 = x.copy()
    c = shape[naive.channel_axis(len(shape), axis)]
    w, b, rm, rv = random_params(rng, c, param_dtype(dtype))
    ref = naive.batch_norm(x, rm, rv, w, b, training=training, axis=axis)
    out = np.full(shape, np.nan, dtype=dtype)
    res = fastnorm.batch_norm(x, rm, rv, w, b, training=training, axis=axis, out=out)
    assert res is out
    assert_output_close(out, ref["y"], np.dtype(dtype))
    assert_stats_close(rm, ref["running_mean"])
    assert_stats_close(rv, ref["running_var"])
    np.testing.assert_array_equal(x, x0)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("axis, shape", [(1, (4, 3, 5, 6)), (-1, (4, 5, 6, 3)), (1, (9, 2))])
@pytest.mark.parametrize("training", [True, False])
def test_out_is_x_in_place(backend, rng, dtype, axis, shape, training):
    x = random_input(rng, shape, dtype, offset=2.0)
    c = shape[naive.channel_axis(len(shape), axis)]
    w, b, rm, rv = random_params(rng, c, param_dtype(dtype))
    ref = naive.batch_norm(x, rm, rv, w, b, training=training, momentum=0.5, axis=axis)
    res = fastnorm.batch_norm(x, rm, rv, w, b, training=training, momentum=0.5, axis=axis, out=x)
    assert res is x
    assert_output_close(x, ref["y"], np.dtype(dtype))
    assert_stats_close(rm, ref["running_mean"])
    assert_stats_close(rv, ref["running_var"])


def test_out_non_contiguous(backend, rng):
    """NumPy-style out: any writable array of the right shape and dtype, e.g. a strided view."""
    x = random_input(rng, (4, 3, 5), np.float32)
    buf = np.zeros((4, 3, 10), np.float32)
    out = buf[:, :, ::2]
    res = fastnorm.batch_norm(x, training=True, out=out)
    assert res is out
    assert_output_close(out, naive.batch_norm(x, training=True)["y"], np.float32)
    np.testing.assert_array_equal(buf[:, :, 1::2], 0.0)


def test_out_in_place_strided_x(backend, rng):
    """out=x where x is a non-contiguous view into a larger buffer."""
    buf = random_input(rng, (4, 6, 5), np.float64)
    buf0 = buf.copy()
    x = buf[:, ::2]
    ref = naive.batch_norm(x, training=True)
    res = fastnorm.batch_norm(x, training=True, out=x)
    assert res is x
    assert_output_close(x, ref["y"], np.float64)
    np.testing.assert_array_equal(buf[:, 1::2], buf0[:, 1::2])


# ---------------------------------------------------------------------------- immutability


@pytest.mark.parametrize("training", [True, False])
def test_inputs_not_modified(backend, rng, training):
    x = random_input(rng, (4, 3, 5, 2), np.float32)
    w, b, rm, rv = random_params(rng, 3, np.float32)
    x0, w0, b0 = x.copy(), w.copy(), b.copy()
    fastnorm.batch_norm(x, rm, rv, w, b, training=training)
    fastnorm.batch_norm(x, None, None, w, b, training=True)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(w, w0)
    np.testing.assert_array_equal(b, b0)


def test_layer_does_not_modify_inputs(backend, rng):
    layer = fastnorm.BatchNorm2d(3)
    x = random_input(rng, (4, 3, 5, 2), np.float32)
    dy = random_input(rng, (4, 3, 5, 2), np.float32)
    x0, dy0 = x.copy(), dy.copy()
    y = layer(x)
    dx = layer.backward(dy)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(dy, dy0)
    assert not np.shares_memory(y, x) and not np.shares_memory(dx, dy)
    layer.eval()
    layer(x)
    layer.backward(dy)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(dy, dy0)


# ------------------------------------------------------------------------------------- threads


def test_thread_safety(backend):
    """Concurrent calls from several Python threads give the sequential results, which match
    the oracle."""
    cases = [((8, 4, 32, 32), 1), ((16, 64, 8), 1), ((3000, 5), 1), ((8, 16, 16, 6), -1)]

    def inputs(i):
        # runs of 6 consecutive jobs share a shape, so concurrent calls collide on any shared
        # per-shape state (scratch buffers, caches)
        rng = np.random.default_rng(1000 + i)
        shape, axis = cases[(i // 6) % len(cases)]
        x = random_input(rng, shape, np.float32 if i % 2 else np.float64, offset=i)
        c = shape[naive.channel_axis(len(shape), axis)]
        return (x, axis) + random_params(rng, c, x.dtype)

    def job(i):
        x, axis, w, b, rm, rv = inputs(i)
        # select the backend inside the worker: use_backend may be thread/context-local
        with fastnorm.use_backend(backend):
            assert fastnorm.get_backend() == backend
            y = fastnorm.batch_norm(x, rm, rv, w, b, training=True, momentum=0.2, axis=axis)
            layer = fastnorm.BatchNorm(len(w), axis=axis, dtype=x.dtype)
            layer(x)
            dx = layer.backward(y[::-1].copy())
        return y, rm, rv, dx

    n = 24
    sequential = [job(i) for i in range(n)]
    with ThreadPoolExecutor(max_workers=4) as ex:
        concurrent = list(ex.map(job, range(n)))
    for i in range(n):
        x, axis, w, b, rm, rv = inputs(i)
        ref = naive.batch_norm(x, rm, rv, w, b, training=True, momentum=0.2, axis=axis)
        y, rm1, rv1, _ = sequential[i]
        assert_output_close(y, ref["y"], x.dtype, err_msg=f"job {i}")
        assert_stats_close(rm1, ref["running_mean"], err_msg=f"job {i}")
        assert_stats_close(rv1, ref["running_var"], err_msg=f"job {i}")
        for got, exp in zip(concurrent[i], sequential[i], strict=True):
            assert got.dtype == exp.dtype
            assert_output_close(got, exp.astype(np.float64), exp.dtype, err_msg=f"job {i}")
