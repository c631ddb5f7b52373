"""Functional ``batch_norm`` against the independent float64 oracle (tests/naive.py)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastnorm
import naive
from conftest import (FLOAT_DTYPES, assert_output_close, assert_stats_close, param_dtype,
                      random_input, random_params)


@st.composite
def bn_cases(draw):
    ndim = draw(st.integers(2, 5))
    axis = draw(st.sampled_from([1, -1]))
    c = draw(st.integers(1, 5))
    other = draw(st.lists(st.integers(1, 4), min_size=ndim - 1, max_size=ndim - 1))
    training = draw(st.booleans())
    if training and int(np.prod(other)) < 2:
        other[0] = 2  # training needs more than one value per channel
    cax = naive.channel_axis(ndim, axis)
    shape = list(other)
    shape.insert(cax, c)
    return dict(
        shape=tuple(shape),
        axis=axis,
        dtype=draw(st.sampled_from(FLOAT_DTYPES)),
        training=training,
        # eval needs running statistics; training may go without
        running=draw(st.booleans()) if training else True,
        use_weight=draw(st.booleans()),
        use_bias=draw(st.booleans()),
        momentum=draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]) | st.floats(0.0, 1.0)),
        eps=draw(st.sampled_from([1e-5, 1e-3, 0.1])),
        offset=draw(st.floats(-3.0, 3.0)),
        scale=draw(st.floats(0.5, 4.0)),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def run_case(case):
    """Call fastnorm.batch_norm and the oracle on the same values; return both."""
    rng = np.random.default_rng(case["seed"])
    dt = case["dtype"]
    pdt = param_dtype(dt)
    x = random_input(rng, case["shape"], dt, case["offset"], case["scale"])
    c = x.shape[naive.channel_axis(x.ndim, case["axis"])]
    w, b, rm, rv = random_params(rng, c, pdt)
    w = w if case["use_weight"] else None
    b = b if case["use_bias"] else None
    if not case["running"]:
        rm = rv = None
    ref = naive.batch_norm(x, rm, rv, w, b, training=case["training"],
                           momentum=case["momentum"], eps=case["eps"], axis=case["axis"])
    y = fastnorm.batch_norm(x, rm, rv, w, b, training=case["training"],
                            momentum=case["momentum"], eps=case["eps"], axis=case["axis"])
    return x, y, rm, rv, ref


@given(case=bn_cases())
def test_matches_reference(backend, case):
    x, y, rm, rv, ref = run_case(case)
    assert_output_close(y, ref["y"], x.dtype, err_msg=str(case))
    if rm is not None:
        assert_stats_close(rm, ref["running_mean"], err_msg=str(case))
        assert_stats_close(rv, ref["running_var"], err_msg=str(case))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("axis", [1, -1])
@pytest.mark.parametrize("shape", [(8, 3), (6, 4, 7), (4, 3, 5, 6), (2, 3, 4, 3, 5)])
@pytest.mark.parametrize("training", [True, False])
def test_fixed_shapes(backend, rng, dtype, axis, shape, training):
    """A deterministic grid (shapes of BatchNorm1d/2d/3d, both layouts, all dtypes)."""
    if axis == -1:
        shape = (shape[0],) + shape[2:] + (shape[1],)
    x = random_input(rng, shape, dtype, offset=1.5, scale=2.0)
    c = x.shape[naive.channel_axis(x.ndim, axis)]
    w, b, rm, rv = random_params(rng, c, param_dtype(dtype))
    ref = naive.batch_norm(x, rm, rv, w, b, training=training, momentum=0.3, eps=1e-4, axis=axis)
    y = fastnorm.batch_norm(x, rm, rv, w, b, training=training, momentum=0.3, eps=1e-4, axis=axis)
    assert_output_close(y, ref["y"], dtype)
    assert_stats_close(rm, ref["running_mean"])
    assert_stats_close(rv, ref["running_var"])


def test_defaults_are_eval_with_torch_defaults(backend, rng):
    """Default training=False, momentum=0.1, eps=1e-5, axis=1."""
    x = random_input(rng, (5, 3, 4), np.float64)
    _, _, rm, rv = random_params(rng, 3, np.float64)
    rm0, rv0 = rm.copy(), rv.copy()
    y = fastnorm.batch_norm(x, rm, rv)
    ref = naive.batch_norm(x, rm0, rv0, training=False, eps=1e-5, axis=1)
    assert_output_close(y, ref["y"], np.float64)
    np.testing.assert_array_equal(rm, rm0)  # eval leaves running stats alone
    np.testing.assert_array_equal(rv, rv0)
    # momentum default 0.1 when training
    fastnorm.batch_norm(x, rm, rv, training=True)
    ref = naive.batch_norm(x, rm0, rv0, training=True, momentum=0.1, axis=1)
    assert_stats_close(rm, ref["running_mean"])
    assert_stats_close(rv, ref["running_var"])


def test_training_uses_batch_stats_not_running(backend, rng):
    """In training the running stats do not enter the output (only get updated)."""
    x = random_input(rng, (6, 2, 5), np.float64, offset=4.0)
    rm = np.array([100.0, -100.0])
    rv = np.array([1e4, 1e-4])
    y1 = fastnorm.batch_norm(x, rm, rv, training=True)
    y2 = fastnorm.batch_norm(x, None, None, training=True)
    ref = naive.batch_norm(x, training=True)
    assert_output_close(y1, ref["y"], np.float64)
    assert_output_close(y2, ref["y"], np.float64)


def test_running_var_is_unbiased_and_momentum_formula(backend):
    """Hand-checkable: channel values [1, 2, 3, 6]: mean 3, biased var 3.5, unbiased 14/3."""
    x = np.array([[1.0], [2.0], [3.0], [6.0]])
    rm = np.array([1.0])
    rv = np.array([2.0])
    y = fastnorm.batch_norm(x, rm, rv, training=True, momentum=0.25, eps=0.0)
    np.testing.assert_allclose(rm, [0.75 * 1.0 + 0.25 * 3.0], rtol=1e-14)
    np.testing.assert_allclose(rv, [0.75 * 2.0 + 0.25 * 14.0 / 3.0], rtol=1e-14)
    np.testing.assert_allclose(y[:, 0], (x[:, 0] - 3.0) / np.sqrt(3.5), rtol=1e-14)


def test_large_channel_count(backend, rng):
    """Many channels, few values each: exercises the many-(n, c) work split."""
    for axis, shape in [(1, (3, 257, 5)), (-1, (3, 5, 257)), (1, (17, 300))]:
        x = random_input(rng, shape, np.float32, offset=-2.0)
        c = x.shape[naive.channel_axis(x.ndim, axis)]
        w, b, rm, rv = random_params(rng, c, np.float32)
        ref = naive.batch_norm(x, rm, rv, w, b, training=True, momentum=0.2, axis=axis)
        y = fastnorm.batch_norm(x, rm, rv, w, b, training=True, momentum=0.2, axis=axis)
        assert_output_close(y, ref["y"], np.float32)
        assert_stats_close(rm, ref["running_mean"])
        assert_stats_close(rv, ref["running_var"])


def test_few_channels_long_reduction(backend, rng):
    """Few channels, long reductions: exercises the split-inside-the-reduction path."""
    for axis, shape in [(1, (16, 2, 128, 130)), (-1, (16, 128, 130, 2)), (1, (40000, 3))]:
        x = random_input(rng, shape, np.float32, offset=5.0, scale=0.5)
        c = x.shape[naive.channel_axis(x.ndim, axis)]
        w, b, rm, rv = random_params(rng, c, np.float32)
        ref = naive.batch_norm(x, rm, rv, w, b, training=True, momentum=0.7, axis=axis)
        y = fastnorm.batch_norm(x, rm, rv, w, b, training=True, momentum=0.7, axis=axis)
        assert_output_close(y, ref["y"], np.float32)
        assert_stats_close(rm, ref["running_mean"])
        assert_stats_close(rv, ref["running_var"])


def test_2d_both_axes_are_the_channel_axis(backend, rng):
    """For (N, C) input, axis=1 and axis=-1 both mean C."""
    x = random_input(rng, (9, 4), np.float64, offset=1.0)
    w, b, rm, rv = random_params(rng, 4, np.float64)
    rm2, rv2 = rm.copy(), rv.copy()
    ref = naive.batch_norm(x, rm, rv, w, b, training=True, axis=1)
    y1 = fastnorm.batch_norm(x, rm, rv, w, b, training=True, axis=1)
    y2 = fastnorm.batch_norm(x, rm2, rv2, w, b, training=True, axis=-1)
    assert_output_close(y1, ref["y"], np.float64)
    assert_output_close(y2, ref["y"], np.float64)
    assert_stats_close(rm2, ref["running_mean"])
    assert_stats_close(rv2, ref["running_var"])
