"""fastnorm.dask: every function equals the NumPy function on the computed array, for several
chunkings per layout, on the threaded scheduler and on a two-worker LocalCluster.

Skips, saying so, where dask is missing (``pip install -e ".[dask]"``; CI installs it).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

import fastnorm

da = pytest.importorskip("dask.array", reason="needs dask (pip install -e '.[dask]')")
import dask

import fastnorm.dask as fd

HAVE_DISTRIBUTED = importlib.util.find_spec("distributed") is not None
CLUSTER_TIMEOUT = 120  # seconds for one computation on the cluster

# (shape, chunkings): whole, split along the batch, along the statistics' reduced axes, along
# the channel axis, and uneven in every axis
FIRST = ((6, 8, 10, 12), [(6, 8, 10, 12), (2, 8, 10, 12), (6, 8, 4, 5), (6, 3, 10, 12), (4, 5, 3, 7)])
LAST = ((6, 10, 12, 8), [(6, 10, 12, 8), (1, 10, 12, 8), (3, 4, 12, 8), (6, 10, 12, 3), (4, 3, 7, 5)])
# float32 within 1e-5, float64 within 1e-12 relative to the largest output magnitude
REL = {np.float32: 1e-5, np.float64: 1e-12}


def data(rng, shape, dtype, offset=0.0, std=1.0):
    return (offset + std * rng.standard_normal(shape)).astype(dtype)


def assert_same(got, ref, dtype, floor=0.0, what=""):
    assert got.dtype == ref.dtype and got.shape == ref.shape, (what, got.dtype, got.shape)
    err = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64)), initial=0.0))
    bound = REL[dtype] * float(np.max(np.abs(ref.astype(np.float64)), initial=0.0)) + floor
    assert err <= bound, f"{what}: max error {err:.3e} > {bound:.3e}"


def cases(rng, dtype):
    """(name, dask call, NumPy call) for every op, on both layouts and every chunking."""
    out = []
    for (shape, chunkings), axis in ((FIRST, 1), (LAST, -1)):
        c = shape[axis]
        x = data(rng, shape, dtype)
        w, b = rng.uniform(0.5, 2, c), rng.standard_normal(c)
        rm, rv = rng.standard_normal(c), rng.uniform(0.5, 2, c)
        for chunks in chunkings:
            xd = da.from_array(x, chunks=chunks)
            tag = f"axis={axis} chunks={chunks}"
            out += [
                (f"batch_norm train {tag}", lambda xd=xd, w=w, b=b, axis=axis: fd.batch_norm(
                    xd, None, None, w, b, training=True, axis=axis),
                 lambda x=x, w=w, b=b, axis=axis: fastnorm.batch_norm(x, None, None, w, b, training=True,
                                                                      axis=axis)),
                (f"batch_norm eval {tag}", lambda xd=xd, w=w, b=b, rm=rm, rv=rv, axis=axis: fd.batch_norm(
                    xd, rm, rv, w, b, axis=axis),
                 lambda x=x, w=w, b=b, rm=rm, rv=rv, axis=axis: fastnorm.batch_norm(x, rm, rv, w, b, axis=axis)),
                (f"instance_norm {tag}", lambda xd=xd, w=w, b=b, axis=axis: fd.instance_norm(
                    xd, weight=w, bias=b, axis=axis),
                 lambda x=x, w=w, b=b, axis=axis: fastnorm.instance_norm(x, weight=w, bias=b, axis=axis)),
                (f"group_norm {tag}", lambda xd=xd, w=w, b=b, axis=axis: fd.group_norm(xd, 4, w, b, axis=axis),
                 lambda x=x, w=w, b=b, axis=axis: fastnorm.group_norm(x, 4, w, b, axis=axis)),
            ]
            tail = shape[-2:]
            lw, lb = rng.uniform(0.5, 2, tail), rng.standard_normal(tail)
            out += [
                (f"layer_norm {tag}", lambda xd=xd, lw=lw, lb=lb, tail=tail: fd.layer_norm(xd, tail, lw, lb),
                 lambda x=x, lw=lw, lb=lb, tail=tail: fastnorm.layer_norm(x, tail, lw, lb)),
                (f"rms_norm {tag}", lambda xd=xd, lw=lw: fd.rms_norm(xd, lw.shape[-1:], lw[0]),
                 lambda x=x, lw=lw: fastnorm.rms_norm(x, lw.shape[-1:], lw[0])),
            ]
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_op_matches_numpy_on_the_threaded_scheduler(rng, backend, dtype):
    """All cases in one ``dask.compute``: graphs of different calls must not share keys."""
    chosen = cases(rng, dtype)
    lazy = [make() for _, make, _ in chosen]
    assert all(isinstance(y, da.Array) for y in lazy)
    for (name, _, eager), y in zip(chosen, dask.compute(*lazy, scheduler="threads")):
        assert_same(y, eager(), dtype, what=name)


@pytest.mark.parametrize("axis", [1, -1])
def test_offset_data_keeps_the_digits(rng, axis):
    """Data at 1e4 with std 0.1 (float64): fastnorm.dask stays within the rounding of a float64
    mean (one unit of 1e4 times rstd * |w|) of the NumPy function, while the Dask expression
    users write, ``(x - x.mean()) / x.std()``, is no better and its E[x^2]-based variants worse."""
    shape, chunkings = FIRST if axis == 1 else LAST
    x = data(rng, shape, np.float64, 1e4, 0.1)
    ref = fastnorm.batch_norm(x, None, None, training=True, axis=axis)
    floor = 8 * float(np.spacing(1e4)) / 0.1 * 1.2
    for chunks in chunkings:
        xd = da.from_array(x, chunks=chunks)
        assert_same(fd.batch_norm(xd, training=True, axis=axis).compute(), ref, np.float64, floor, str(chunks))
        assert_same(fd.group_norm(xd, 2, axis=axis).compute(), fastnorm.group_norm(x, 2, axis=axis),
                    np.float64, floor, str(chunks))


def test_running_statistics_are_returned(rng):
    x = data(rng, FIRST[0], np.float32, 3.0, 2.0)
    rm, rv = np.zeros(8, np.float32), np.ones(8, np.float32)
    for chunks in FIRST[1]:
        xd = da.from_array(x, chunks=chunks)
        y, new_mean, new_var = fd.batch_norm(xd, rm, rv, training=True, momentum=0.3)
        assert not rm.any() and (rv == 1).all()  # lazy: the buffers are not touched
        y, new_mean, new_var = dask.compute(y, new_mean, new_var)
        ref_mean, ref_var = rm.copy(), rv.copy()
        ref = fastnorm.batch_norm(x, ref_mean, ref_var, training=True, momentum=0.3)
        assert_same(y, ref, np.float32)
        assert new_mean.dtype == np.float32
        np.testing.assert_allclose(new_mean, ref_mean, rtol=1e-6)
        np.testing.assert_allclose(new_var, ref_var, rtol=1e-6)
        y, im, iv = fd.instance_norm(xd, rm, rv, use_input_stats=True, momentum=0.3)
        im, iv = dask.compute(im, iv)
        ref_mean, ref_var = rm.copy(), rv.copy()
        fastnorm.instance_norm(x, ref_mean, ref_var, use_input_stats=True, momentum=0.3)
        np.testing.assert_allclose(im, ref_mean, rtol=1e-6)
        np.testing.assert_allclose(iv, ref_var, rtol=1e-6)


def test_moments_of_a_dask_array(rng):
    x = data(rng, LAST[0], np.float64, 1e4, 0.1)
    for chunks in LAST[1]:
        for axis in (-1, (0, 3), ()):
            got = fd.moments(da.from_array(x, chunks=chunks), axis, split_every=2).compute()
            want = fastnorm.moments(x, axis)
            assert got.count == want.count and got.shape == want.shape
            np.testing.assert_allclose(got.mean, want.mean, rtol=0, atol=4 * np.spacing(1e4))
            np.testing.assert_allclose(got.var(), want.var(), rtol=2e-10)


def test_float16(rng):
    x = data(rng, FIRST[0], np.float16)
    xd = da.from_array(x, chunks=(2, 3, 4, 5))
    y = fd.batch_norm(xd, training=True).compute()
    assert y.dtype == np.float16
    np.testing.assert_allclose(y.astype(np.float64), fastnorm.batch_norm(x, training=True).astype(np.float64),
                               rtol=1e-3, atol=2e-3)


def _unreachable():
    raise AssertionError("the input was computed")


def test_bad_input_fails_before_any_computation():
    x = da.from_delayed(dask.delayed(_unreachable)(), (4, 3, 5), np.float32)  # computing it fails
    with pytest.raises(TypeError, match="x must be a dask.array.Array"):
        fd.batch_norm(np.ones((4, 3, 5), np.float32), training=True)
    with pytest.raises(TypeError, match="x must have dtype"):
        fd.layer_norm(da.ones((4, 3), dtype=np.int32), 3)
    with pytest.raises(ValueError, match="weight"):
        fd.batch_norm(x, weight=np.ones(4), training=True)
    with pytest.raises(ValueError, match="running_mean and running_var are required"):
        fd.batch_norm(x)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        fd.batch_norm(x[:1, :, :1], training=True)
    with pytest.raises(ValueError, match="num_groups"):
        fd.group_norm(x, 2)
    with pytest.raises(ValueError, match="normalized_shape"):
        fd.layer_norm(x, (3,))
    with pytest.raises(ValueError, match="axis 0 is the batch axis"):
        fd.instance_norm(x, axis=0)
    with pytest.raises(ValueError, match="out of bounds"):
        fd.moments(x, 3)


def test_import_fastnorm_does_not_import_dask():
    code = "import sys, fastnorm; print('dask' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.stdout.strip() == "False", out.stderr


# -- dask.distributed ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client():
    if not HAVE_DISTRIBUTED:
        pytest.skip("needs dask.distributed (pip install -e '.[dask]')")
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      timeout=CLUSTER_TIMEOUT, memory_limit="2GiB") as cluster, Client(
            cluster, timeout=CLUSTER_TIMEOUT) as c:
        yield c


def test_every_op_matches_numpy_on_a_local_cluster(rng, client):
    """Two worker processes: the graphs (functions, parameters, statistics) pickle."""
    chosen = [c for i, c in enumerate(cases(rng, np.float64)) if i % 5 == 0]
    futures = client.compute([lazy() for _, lazy, _ in chosen])
    for (name, _, eager), future in zip(chosen, futures):
        assert_same(future.result(timeout=CLUSTER_TIMEOUT), eager(), np.float64, what=name)
    x = data(rng, FIRST[0], np.float64)
    m = client.compute(fd.moments(da.from_array(x, chunks=(2, 3, 4, 5)), 1)).result(timeout=CLUSTER_TIMEOUT)
    np.testing.assert_allclose(m.var(), fastnorm.moments(x, 1).var(), rtol=1e-13)


def test_example_runs(tmp_path):
    """examples/dask_normalize.py: streamed statistics and fastnorm.dask agree."""
    from pathlib import Path

    example = Path(__file__).resolve().parent.parent / "examples" / "dask_normalize.py"
    out = subprocess.run([sys.executable, str(example), "--gb", "0.05", "--dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "running mean == streamed mean: True, running var == streamed unbiased var: True" in out.stdout


def test_unknown_chunk_sizes(rng):
    """A boolean selection leaves the batch's chunk sizes unknown until computed."""
    x = rng.standard_normal((10, 6, 7, 5))
    keep = np.ones(10, bool)
    keep[2] = False
    xu = da.from_array(x, chunks=(3, 4, 3, 2))[da.from_array(keep, chunks=3)]
    assert np.isnan(xu.shape[0])
    assert fd.moments(xu, 0).compute().shape == (9,)
    assert fd.moments(xu, (0, 1)).compute().shape == (9, 6)
    for op, eager in ((fd.batch_norm, fastnorm.batch_norm), (fd.instance_norm, fastnorm.instance_norm)):
        kwargs = {"training": True} if op is fd.batch_norm else {}
        rm, rv = np.zeros(6), np.ones(6)
        y, new_mean, new_var = dask.compute(*op(xu, rm, rv, **kwargs))
        ref = eager(x[keep], rm, rv, **kwargs)
        np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(new_mean, rm, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(new_var, rv, rtol=1e-12)
    one = da.from_array(x[:2, :, :1, :1], chunks=1)[da.from_array(np.array([True, False]), chunks=1)]
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        fd.batch_norm(one, training=True).compute()
