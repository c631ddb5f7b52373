"""Backend registry/selection, thread count, environment variables, cross-backend agreement."""

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import fastnorm
import naive
from conftest import (CPU_BACKENDS, assert_grad_close, assert_output_close, assert_stats_close,
                      random_input, random_params)

REPO = Path(__file__).resolve().parent.parent


def _cpus():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


needs_2_cpus = pytest.mark.skipif(_cpus() < 2, reason="needs 2 CPU threads")


def test_available_backends():
    avail = fastnorm.available_backends()
    assert isinstance(avail, tuple)
    assert "numpy" in avail and "numba" in avail
    assert len(set(avail)) == len(avail)
    assert set(avail) <= {"numba", "cython", "numpy", "cuda"}
    assert fastnorm.get_backend() in avail


@pytest.mark.parametrize("name", CPU_BACKENDS)
def test_set_get_backend(name):
    fastnorm.set_backend(name)
    assert fastnorm.get_backend() == name


def test_set_backend_unknown():
    before = fastnorm.get_backend()
    for bad in ("nope", "", "torch"):
        with pytest.raises(ValueError):
            fastnorm.set_backend(bad)
        assert fastnorm.get_backend() == before
    with pytest.raises(ValueError):
        with fastnorm.use_backend("nope"):
            pass  # pragma: no cover
    assert fastnorm.get_backend() == before


def test_set_backend_unavailable():
    """A known backend that this installation lacks is refused like an unknown one."""
    missing = [b for b in ("cython", "cuda") if b not in fastnorm.available_backends()]
    if not missing:
        pytest.skip("every known backend is available here")
    before = fastnorm.get_backend()
    for name in missing:
        with pytest.raises(ValueError, match=name):
            fastnorm.set_backend(name)
    assert fastnorm.get_backend() == before


def test_use_backend_restores():
    fastnorm.set_backend("numpy")
    with fastnorm.use_backend("numba"):
        assert fastnorm.get_backend() == "numba"
        with fastnorm.use_backend("numpy"):
            assert fastnorm.get_backend() == "numpy"
        assert fastnorm.get_backend() == "numba"
    assert fastnorm.get_backend() == "numpy"


def test_use_backend_restores_on_exception():
    fastnorm.set_backend("numba")
    with pytest.raises(RuntimeError, match="boom"):
        with fastnorm.use_backend("numpy"):
            assert fastnorm.get_backend() == "numpy"
            raise RuntimeError("boom")
    assert fastnorm.get_backend() == "numba"


@pytest.mark.parametrize("n", [1, pytest.param(2, marks=needs_2_cpus)])
def test_num_threads_round_trip(n):
    fastnorm.set_num_threads(n)
    assert fastnorm.get_num_threads() == n


def test_num_threads_is_process_wide():
    """set_num_threads in one thread is seen by calls from other threads."""
    fastnorm.set_num_threads(1)
    seen = []
    th = threading.Thread(target=lambda: seen.append(fastnorm.get_num_threads()))
    th.start()
    th.join()
    assert seen == [1]


@pytest.mark.parametrize("bad", [0, -1])
def test_num_threads_invalid(bad):
    before = fastnorm.get_num_threads()
    with pytest.raises(ValueError):
        fastnorm.set_num_threads(bad)
    assert fastnorm.get_num_threads() == before


def _run_python(code, **env_changes):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTNORM_")}
    env.update(env_changes)
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


@pytest.mark.parametrize("name", ["numpy", "numba"])
def test_env_backend(name):
    out = _run_python("import fastnorm; print(fastnorm.get_backend())", FASTNORM_BACKEND=name)
    assert out.splitlines()[-1] == name


@pytest.mark.parametrize("n", [1, pytest.param(2, marks=needs_2_cpus)])
def test_env_num_threads(n):
    code = ("import numpy as np, fastnorm; print(fastnorm.get_num_threads());"
            "x = np.random.default_rng(0).standard_normal((64, 3, 40)).astype(np.float32);"
            "fastnorm.batch_norm(x, training=True); print(fastnorm.get_num_threads())")
    out = _run_python(code, FASTNORM_NUM_THREADS=str(n), FASTNORM_BACKEND="numba")
    assert out.splitlines()[-2:] == [str(n), str(n)]


def test_default_backend_without_env():
    out = _run_python("import fastnorm; print(fastnorm.get_backend(), fastnorm.available_backends())")
    name = out.splitlines()[-1].split()[0]
    assert name in CPU_BACKENDS + ("cuda",)


# ------------------------------------------------------------------------ agreement


AGREE_CASES = [
    (1, (8, 4, 32, 32)),    # channels-first, long inner runs
    (-1, (8, 32, 32, 4)),   # channels-last, few channels
    (-1, (64, 7, 96)),      # channels-last, many channels
    (1, (2, 2, 128, 256)),  # few channels, long reductions
    (1, (4000, 6)),         # 2-D
]


def _compute(x, dy, axis, params, momentum=0.3):
    w, b, rm, rv = (p.copy() for p in params)
    y_train = fastnorm.batch_norm(x, rm, rv, w, b, training=True, momentum=momentum, axis=axis)
    y_eval = fastnorm.batch_norm(x, rm, rv, w, b, training=False, axis=axis)
    layer = fastnorm.BatchNorm(len(w), axis=axis, dtype=w.dtype)
    layer.weight[...] = w
    layer.bias[...] = b
    layer(x)
    dx = layer.backward(dy)
    return dict(y_train=y_train, rm=rm, rv=rv, y_eval=y_eval, dx=dx, gw=layer.grad_weight,
                gb=layer.grad_bias)


def _assert_same(a, b, dtype, label):
    for k in ("y_train", "y_eval"):
        assert_output_close(a[k], b[k].astype(np.float64), dtype, err_msg=f"{label} {k}")
    for k in ("rm", "rv"):
        assert_stats_close(a[k], b[k].astype(np.float64), err_msg=f"{label} {k}")
    for k in ("dx", "gw", "gb"):
        assert_grad_close(a[k], b[k].astype(np.float64), dtype, err_msg=f"{label} {k}")


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("axis, shape", AGREE_CASES)
def test_backends_agree(rng, dtype, axis, shape):
    """Every CPU backend matches the numpy backend and the oracle."""
    x = random_input(rng, shape, dtype, offset=1.0)
    c = shape[naive.channel_axis(len(shape), axis)]
    params = random_params(rng, c, np.float32 if dtype == np.float16 else dtype)
    dy = random_input(rng, shape, dtype)
    results = {}
    for name in CPU_BACKENDS:
        with fastnorm.use_backend(name):
            results[name] = _compute(x, dy, axis, params)
    ref = naive.batch_norm(x, params[2], params[3], params[0], params[1], training=True,
                           momentum=0.3, axis=axis)
    assert_output_close(results["numpy"]["y_train"], ref["y"], dtype)
    for name in CPU_BACKENDS:
        _assert_same(results[name], results["numpy"], dtype, name)


@needs_2_cpus
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("axis, shape", AGREE_CASES)
def test_thread_counts_agree(backend, rng, dtype, axis, shape):
    """One thread and two threads give the same results (to tolerance) on every backend."""
    x = random_input(rng, shape, dtype, offset=-2.0)
    c = shape[naive.channel_axis(len(shape), axis)]
    params = random_params(rng, c, dtype)
    dy = random_input(rng, shape, dtype)
    fastnorm.set_num_threads(1)
    one = _compute(x, dy, axis, params)
    fastnorm.set_num_threads(2)
    two = _compute(x, dy, axis, params)
    _assert_same(two, one, dtype, f"{backend} 2 vs 1 threads")
    ref = naive.batch_norm(x, params[2], params[3], params[0], params[1], training=True,
                           momentum=0.3, axis=axis)
    assert_output_close(one["y_train"], ref["y"], dtype)
    assert_output_close(two["y_train"], ref["y"], dtype)
