"""fastnorm.moments and fastnorm.Moments: chunked statistics equal the whole array's.

The oracle is a two-pass long-double computation of the whole array.  Tolerances are float64
rounding: the mean within a few units of ``max|x|`` in the last place; the variance within
1e-12 relative plus what the rounding of chunk means (one unit of ``max|x|`` each) does to
the deltas of Chan's merge, ``16 * ulp(max|x|) / std`` relative (1.8e-11 at offset 1e4 with
std 0.1, 3e-15 for data of unit scale).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import fastnorm

LAYOUTS = {  # name: (shape, statistics axes)
    "channels-first": ((6, 3, 5, 4), 1),
    "channels-last": ((6, 5, 4, 3), -1),
    "per sample and channel": ((6, 3, 5, 4), (0, 1)),
    "per sample, channels-last": ((6, 5, 4, 3), (0, -1)),
    "rows": ((6, 3, 20), (0, 1)),
    "scattered axes": ((6, 3, 5, 4), (1, 3)),
    "everything": ((6, 3, 5), ()),
}
DATA = {"unit": (0.0, 1.0, np.float64), "offset": (1e4, 0.1, np.float64),
        "offset float32": (1e4, 0.1, np.float32), "huge float32": (1e30, 1e29, np.float32),
        "float16": (2.0, 0.5, np.float16)}


def reference(x: np.ndarray, axis) -> tuple[np.ndarray, np.ndarray]:
    kept = fastnorm._moments.kept_axes(axis, x.ndim)
    reduced = tuple(a for a in range(x.ndim) if a not in kept)
    xl = x.astype(np.longdouble)
    mean = xl.mean(axis=reduced, keepdims=True)
    var = ((xl - mean) ** 2).mean(axis=reduced)
    return mean.reshape(var.shape).astype(np.float64), var.astype(np.float64)


def assert_moments(m: fastnorm.Moments, x: np.ndarray, axis) -> None:
    mean, var = reference(x, axis)
    assert m.shape == mean.shape and m.mean.dtype == m.m2.dtype == np.float64
    big = float(np.max(np.abs(x.astype(np.float64)), initial=0.0))
    ulp = float(np.spacing(np.float64(big)))
    np.testing.assert_allclose(m.mean, mean, rtol=0, atol=4 * ulp)
    std = np.sqrt(var)
    np.testing.assert_allclose(m.var(), var, rtol=0, atol=1e-12 * var.max() + 16 * ulp * std.max())


def chunks_of(rng, x: np.ndarray, axis) -> list[np.ndarray]:
    """``x`` cut into random pieces along one of its reduced axes (some empty)."""
    kept = fastnorm._moments.kept_axes(axis, x.ndim)
    reduced = [a for a in range(x.ndim) if a not in kept]
    along = int(rng.choice(reduced))
    cuts = np.sort(rng.integers(0, x.shape[along] + 1, size=3))
    return np.split(x, cuts, axis=along)


@pytest.mark.parametrize("data", DATA)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_merged_chunks_are_the_whole(rng, backend, layout, data):
    shape, axis = LAYOUTS[layout]
    offset, std, dtype = DATA[data]
    x = (offset + std * rng.standard_normal(shape)).astype(dtype)
    assert_moments(fastnorm.moments(x, axis), x, axis)
    for _ in range(3):
        parts = [fastnorm.moments(c, axis) for c in chunks_of(rng, x, axis)]
        total = parts[0]
        for part in parts[1:]:
            total = total.merge(part)
        assert total.count == x.size // max(1, int(np.prod(total.shape)))
        assert_moments(total, x, axis)
        assert_moments(fastnorm.Moments.merge_all(parts), x, axis)


def test_merge_order_matters_only_to_rounding(rng):
    x = 1e4 + 0.1 * rng.standard_normal((40, 3, 7))
    parts = [fastnorm.moments(c, 1) for c in np.array_split(x, 5)]
    first = fastnorm.Moments.merge_all(parts)
    for order in itertools.islice(itertools.permutations(parts), 0, 120, 7):
        other = fastnorm.Moments.merge_all(order)
        assert other.count == first.count
        np.testing.assert_allclose(other.mean, first.mean, rtol=0, atol=4 * np.spacing(1e4))
        np.testing.assert_allclose(other.m2, first.m2, rtol=2e-10)
    tree = parts[0].merge(parts[1]).merge(parts[2].merge(parts[3].merge(parts[4])))
    np.testing.assert_allclose(tree.m2, first.m2, rtol=2e-10)


def test_memory_layouts_give_the_contiguous_result(rng):
    x = rng.standard_normal((5, 4, 6, 3))
    for view in (np.asfortranarray(x), x[:, :, ::-1], np.broadcast_to(x[:1], x.shape)):
        for axis in (1, -1, (0, 1)):
            got = fastnorm.moments(view, axis)
            want = fastnorm.moments(np.ascontiguousarray(view), axis)
            np.testing.assert_allclose(got.mean, want.mean, rtol=0, atol=1e-15)
            np.testing.assert_allclose(got.m2, want.m2, rtol=1e-13, atol=1e-13)


def test_statistics_drive_batch_norm(rng):
    """coefficients() and update_running() agree with fastnorm.batch_norm in training."""
    x = (3.0 + 2.0 * rng.standard_normal((8, 4, 5))).astype(np.float32)
    w, b = rng.standard_normal(4), rng.standard_normal(4)
    run_mean, run_var = np.zeros(4, np.float32), np.ones(4, np.float32)
    y = fastnorm.batch_norm(x, run_mean, run_var, w, b, training=True, momentum=0.3)
    m = fastnorm.moments(x, 1)
    mean, scale, shift = m.coefficients(w, b, eps=1e-5)
    y64 = (x.astype(np.float64) - mean[:, None]) * scale[:, None] + shift[:, None]
    np.testing.assert_allclose(y, y64, rtol=1e-5, atol=1e-5)
    mine_mean, mine_var = np.zeros(4, np.float32), np.ones(4, np.float32)
    m.update_running(mine_mean, mine_var, momentum=0.3)
    np.testing.assert_allclose(mine_mean, run_mean, rtol=1e-6)
    np.testing.assert_allclose(mine_var, run_var, rtol=1e-6)
    # and the statistics normalize through batch_norm's evaluation mode, in float64
    y_eval = fastnorm.batch_norm(x, m.mean, m.var(), w, b, training=False)
    np.testing.assert_allclose(y_eval, y, rtol=1e-5, atol=1e-5)


def test_var_std_ddof_and_empty():
    m = fastnorm.moments(np.array([[1.0], [2.0], [4.0]]), -1)
    assert m.count == 3
    np.testing.assert_allclose(m.var(), [np.var([1, 2, 4])])
    np.testing.assert_allclose(m.std(ddof=1), [np.std([1, 2, 4], ddof=1)])
    assert np.isnan(m.var(ddof=3)).all()
    empty = fastnorm.moments(np.zeros((0, 3)), -1)
    assert empty.count == 0 and empty.shape == (3,) and not empty.mean.any()
    both = fastnorm.moments(np.zeros((0, 1)), -1).merge(m)
    assert both == m


def test_non_finite_values_propagate():
    x = np.array([[1.0, np.inf], [2.0, 1.0]])
    m = fastnorm.Moments.merge_all([fastnorm.moments(x[:1], 1), fastnorm.moments(x[1:], 1)])
    assert m.mean[1] == np.inf and not np.isfinite(m.m2[1]) and np.isfinite(m.mean[0])


def test_bad_arguments():
    x = np.ones((3, 4))
    with pytest.raises(TypeError, match="axis must be an int or a tuple"):
        fastnorm.moments(x, [0])
    with pytest.raises(ValueError, match="axis 2 is out of bounds"):
        fastnorm.moments(x, 2)
    with pytest.raises(ValueError, match="must not repeat"):
        fastnorm.moments(x, (1, -1))
    with pytest.raises(TypeError, match="x must have dtype"):
        fastnorm.moments(np.ones(3, np.int64), 0)
    with pytest.raises(ValueError, match="cannot merge moments of shapes"):
        fastnorm.moments(x, 1).merge(fastnorm.moments(x, 0))
    with pytest.raises(TypeError, match="parts must be Moments"):
        fastnorm.Moments.merge_all([fastnorm.moments(x, 1), (1, 2, 3)])
    with pytest.raises(ValueError, match="at least one"):
        fastnorm.Moments.merge_all([])
    with pytest.raises(TypeError, match="count must be an int"):
        fastnorm.Moments(1.5, [0.0], [0.0])
    with pytest.raises(ValueError, match="same shape"):
        fastnorm.Moments(2, [0.0], [0.0, 1.0])
    m = fastnorm.moments(x, 1)
    buffers = np.zeros(4), np.ones(4)
    with pytest.raises(ValueError, match="running_var must have shape"):
        m.update_running(buffers[0], np.ones(3))
    single = fastnorm.moments(np.ones((1, 4)), 1)
    with pytest.raises(ValueError, match="more than 1 value"):
        single.update_running(*buffers)
    assert not buffers[0].any() and (buffers[1] == 1).all()  # a failed update changes nothing
