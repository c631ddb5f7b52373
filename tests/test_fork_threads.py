"""Processes forked after the CPU backends ran their threads, and layers shared by threads.

GNU OpenMP's thread pool does not survive ``fork`` (a child would hang in its first parallel
region, or Numba's ``omp`` layer would end it): every combination of the backend the parent
ran and the one the child runs must work, in ``multiprocessing`` children, ``Pool`` workers
and grandchildren, in parallel wherever the OpenMP runtime can release its pool before the
fork (all but Numba's kernels after Numba's ``omp`` layer ran), and the parent must go on
computing afterwards.  Each scenario runs in a fresh interpreter with a time limit, and forks
its children with ``join`` time limits, so that a deadlock fails the test instead of stalling
the suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import CPU_BACKENDS

import fastnorm

REPO = Path(__file__).resolve().parent.parent
PARALLEL_BACKENDS = [b for b in ("cython", "numba") if b in CPU_BACKENDS]
needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")
SCENARIO_TIMEOUT = 420  # seconds for a whole scenario: interpreter, Numba compiles, children
CHILD_TIMEOUT = 300  # seconds a child may take (a serial Numba build compiles in the child)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# The scenario script: the parent runs `parent` (or nothing) on enough data for threads, then a
# forked child (and, with `depth` 2, its forked child) runs `child` on three families and sends
# back how its result compares with the reference, whether fastnorm warned that the child runs
# without OpenMP threads, how many threads the child process had, and the at-fork flags; then
# the parent computes once more.
SCENARIO = r"""
import json, multiprocessing as mp, os, sys, warnings
import numpy as np
import fastnorm
from fastnorm.backends import _openmp

parent, child, depth, pool = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "pool"
CHILD_TIMEOUT = float(sys.argv[5])
if sys.argv[6] == "nopause":  # as with an OpenMP runtime that cannot release its pool
    from fastnorm.backends import cython_cpu  # registers its pause first
    _openmp.set_pause(lambda: False)
fastnorm.set_num_threads(min(2, fastnorm.get_num_threads()))
x = np.random.default_rng(0).standard_normal((8, 16, 64, 64)).astype(np.float32)
with fastnorm.use_backend("numpy"):
    want = [fastnorm.batch_norm(x, training=True), fastnorm.group_norm(x, 4),
            fastnorm.layer_norm(x, 64)]
if parent != "none":
    with fastnorm.use_backend(parent):
        fastnorm.batch_norm(x, training=True)
        fastnorm.layer_norm(x, 64)

def compute(_=None):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with fastnorm.use_backend(child):
            got = [fastnorm.batch_norm(x, training=True), fastnorm.group_norm(x, 4),
                   fastnorm.layer_norm(x, 64)]
    err = max(float(np.max(np.abs(g - w))) for g, w in zip(got, want))
    serial = any("forked" in str(w.message) for w in caught)
    try:
        threads = len(os.listdir("/proc/self/task"))
    except OSError:  # not Linux
        threads = None
    return {"err": err, "serial": serial, "layer": _openmp.numba_layer(), "threads": threads,
            "paused": _openmp._paused, "unusable": _openmp.gomp_unusable(),
            "numba_omp": _openmp.numba_omp_inherited()}

def run(q, depth):
    if depth > 1:
        inner = mp.get_context("fork").Queue()
        p = mp.get_context("fork").Process(target=run, args=(inner, depth - 1))
        p.start()
        p.join(CHILD_TIMEOUT)
        alive = p.is_alive()
        if alive:
            p.kill()
        q.put(inner.get(timeout=5) if p.exitcode == 0 else {"alive": alive, "exitcode": p.exitcode})
        return
    if pool:
        with mp.get_context("fork").Pool(2) as workers:
            results = workers.map_async(compute, range(2)).get(CHILD_TIMEOUT)
        q.put(max(results, key=lambda r: r["err"]))
    else:
        q.put(compute())

q = mp.get_context("fork").Queue()
p = mp.get_context("fork").Process(target=run, args=(q, depth))
p.start()
p.join(CHILD_TIMEOUT * depth)
alive = p.is_alive()
if alive:
    p.kill()
result = q.get(timeout=5) if p.exitcode == 0 else {"alive": alive, "exitcode": p.exitcode}
result["parent_layer"] = _openmp.numba_layer()
if parent != "none":
    with fastnorm.use_backend(parent):
        after = fastnorm.batch_norm(x, training=True)
    result["parent_err"] = float(np.max(np.abs(after - want[0])))
print(json.dumps(result))
"""


def _scenario(parent: str, child: str, depth: int = 1, pool: bool = False, pause: bool = True) -> dict:
    env = dict(os.environ)
    env.pop("FASTNORM_BACKEND", None)
    try:
        done = subprocess.run(
            [sys.executable, "-c", SCENARIO, parent, child, str(depth), "pool" if pool else "process",
             str(CHILD_TIMEOUT), "pause" if pause else "nopause"],
            capture_output=True, text=True, timeout=SCENARIO_TIMEOUT, cwd=REPO, env=env,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"parent {parent}, child {child}: the scenario did not finish in "
                    f"{SCENARIO_TIMEOUT} s (a deadlock): {exc.stderr}")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _check(result: dict, parent: str, child: str, pause: bool = True) -> None:
    assert "err" in result, f"parent {parent}, child {child}: the child failed: {result}"
    assert result["err"] < 1e-4, result
    assert result.get("parent_err", 0.0) < 1e-4, "the parent computes after the fork"
    numba_omp = parent == "numba" and result["parent_layer"] == "omp"
    assert result["numba_omp"] == numba_omp, result
    if child == "numba" and numba_omp:  # Numba ends such a child at a parallel kernel
        assert result["serial"], "Numba's omp layer started before the fork: serial builds"
    elif result["unusable"]:  # a pool inherited (a runtime that cannot release it before the fork)
        if child == "cython":
            assert result["serial"], "GNU OpenMP unusable in the child: the Cython kernels run serially"
        else:  # Numba kept off omp: still parallel
            assert not result["serial"] and result["layer"] in ("workqueue", "tbb"), result
    else:  # the parent's pool released before the fork (or never started): threads as usual
        assert not result["serial"], result
        if _cpus() >= 2 and result["threads"] is not None:
            assert result["threads"] >= 2, f"the child computed on one thread: {result}"
    if pause and _cpus() >= 2 and parent == "cython" and cython_openmp_pause():
        assert result["paused"] and not result["unusable"], result


def cython_openmp_pause() -> bool:
    """Whether the compiled extension can release its OpenMP pool before a fork."""
    if "cython" not in CPU_BACKENDS:
        return False
    from fastnorm.backends import cython_cpu

    return bool(cython_cpu.has_openmp() and cython_cpu._kernels.openmp_pause())


@needs_fork
@pytest.mark.parametrize("child", PARALLEL_BACKENDS)
@pytest.mark.parametrize("parent", ["none", *PARALLEL_BACKENDS])
def test_forked_child_runs_every_backend(parent, child):
    """A forked child computes with either backend, whatever the parent ran before the fork."""
    _check(_scenario(parent, child), parent, child)


@needs_fork
@pytest.mark.skipif(_cpus() < 2, reason="OpenMP starts no threads on one CPU")
@pytest.mark.parametrize("child", PARALLEL_BACKENDS)
@pytest.mark.parametrize("parent", PARALLEL_BACKENDS)
def test_forked_child_where_the_pool_cannot_be_released(parent, child):
    """With an OpenMP runtime that cannot release its pool before the fork, the child still
    computes: the Cython kernels on one thread (with a warning), Numba off its omp layer."""
    result = _scenario(parent, child, pause=False)
    if parent == "cython" or result["parent_layer"] == "omp":
        assert result["unusable"], result
    _check(result, parent, child, pause=False)


@needs_fork
@pytest.mark.parametrize("child", PARALLEL_BACKENDS)
@pytest.mark.parametrize("parent", PARALLEL_BACKENDS)
def test_forked_pool_workers_and_grandchildren(parent, child):
    """``multiprocessing.Pool`` workers forked after OpenMP started, and a child of a child."""
    _check(_scenario(parent, child, pool=True), parent, child)
    _check(_scenario(parent, child, depth=2), parent, child)


# ------------------------------------------------------------------------------------- threads

JOIN_TIMEOUT = 120  # seconds for all threads of a test


def _run_threads(target, n: int) -> None:
    errors: list[BaseException] = []

    def guarded(k):
        try:
            target(k)
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(k,), daemon=True) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_TIMEOUT)
    assert not any(t.is_alive() for t in threads), "a thread did not finish (deadlock?)"
    if errors:
        raise errors[0]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layer_cls", ["BatchNorm1d", "InstanceNorm1d"])
def test_shared_layer_counts_every_training_step(backend, layer_cls):
    """8 threads x 10 training steps on one layer: 80 batches counted, and with
    ``momentum=None`` the running mean is the average of the 80 batch means."""
    layer = getattr(fastnorm, layer_cls)(16, momentum=None, track_running_stats=True,
                                          dtype=np.float64)
    rng = np.random.default_rng(0)
    shape = (32, 16) if layer_cls == "BatchNorm1d" else (4, 16, 8)
    batches = [rng.standard_normal(shape) + i for i in range(80)]

    def steps(k):
        with fastnorm.use_backend(backend):
            for j in range(10):
                layer(batches[10 * k + j])

    _run_threads(steps, 8)
    assert layer.num_batches_tracked == 80
    axes = 0 if layer_cls == "BatchNorm1d" else (0, 2)
    want = np.mean([b.mean(axis=axes) for b in batches], axis=0)
    np.testing.assert_allclose(layer.running_mean, want, rtol=1e-12, atol=1e-12)


@needs_fork
def test_layer_locked_by_another_thread_at_fork_works_in_the_child():
    """A thread in the middle of a training step when the process forks holds the layer's lock;
    in the child, where that thread does not exist, the layer still takes training steps."""
    code = (
        "import os, signal, threading, numpy as np, fastnorm\n"
        "layer = fastnorm.BatchNorm1d(4)\n"
        "x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)\n"
        "layer(x)\n"
        "held, release = threading.Event(), threading.Event()\n"
        "def hold():\n"
        "    with layer._lock:\n"
        "        held.set()\n"
        "        release.wait()\n"
        "t = threading.Thread(target=hold)\n"
        "t.start()\n"
        "held.wait()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    signal.alarm(60)\n"
        "    layer(x)\n"
        "    os._exit(0 if layer.num_batches_tracked == 2 else 3)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "release.set()\n"
        "t.join()\n"
        "print(status)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=SCENARIO_TIMEOUT, cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0", f"the child's training step failed or hung: {done.stdout}"
