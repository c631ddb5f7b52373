"""SyncBatchNorm over MPI: ranks launched with ``mpiexec -n 1/2/3`` (tests/sync_worker.py),
each rank's results compared with one single-process ``BatchNorm`` on the global batch.

Every launch has a time limit and its whole process group is killed past it, so that a
deadlocked collective fails the test instead of stalling the suite.  The tests that launch
ranks skip, with the reason, where mpi4py or ``mpiexec`` is missing (``pip install -e
".[mpi]"`` installs both).
"""

from __future__ import annotations

import copy
import importlib.util
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sync_worker as W
from conftest import assert_grad_close

import fastnorm

REPO = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "sync_worker.py"
RUN_TIMEOUT = 300  # seconds for one mpiexec launch: interpreters, Numba's cache, every case


def _mpiexec() -> str | None:
    beside = Path(sys.executable).parent / "mpiexec"  # the mpich wheel's, in this environment
    return str(beside) if beside.exists() else shutil.which("mpiexec")


MPIEXEC = _mpiexec()
HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None
needs_mpi = pytest.mark.skipif(
    not (HAVE_MPI4PY and MPIEXEC),
    reason="needs mpi4py and mpiexec (pip install -e '.[mpi]')"
    + ("" if HAVE_MPI4PY else ": mpi4py is missing")
    + ("" if MPIEXEC else ": mpiexec is missing"),
)


def mpiexec(ranks: int, *args: str) -> str:
    """``mpiexec -n ranks python args...``; returns its output.  Past ``RUN_TIMEOUT`` the whole
    process group is killed and the test fails."""
    # one thread per rank: the ranks share this machine's cores
    env = dict(os.environ, FASTNORM_NUM_THREADS="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [MPIEXEC, "-n", str(ranks), sys.executable, *args], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        log, _ = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        pytest.fail(f"mpiexec -n {ranks} {' '.join(args)} did not finish in {RUN_TIMEOUT} s "
                    f"(a collective that never completes?):\n{log[-4000:]}")
    assert proc.returncode == 0, f"mpiexec -n {ranks} {' '.join(args)} failed:\n{log[-4000:]}"
    return log


def run_ranks(ranks: int, scenario: str, out: Path) -> list:
    """Run the worker's ``scenario`` on ``ranks`` ranks; returns each rank's output."""
    out.mkdir(parents=True, exist_ok=True)
    mpiexec(ranks, str(WORKER), scenario, str(out))
    outputs = []
    for rank in range(ranks):
        npz = out / f"rank{rank}.npz"
        outputs.append(dict(np.load(npz)) if npz.exists()
                       else json.loads((out / f"rank{rank}.json").read_text()))
    return outputs


_PARITY: dict[int, list] = {}


def parity_run(ranks: int, tmp_path_factory) -> list:
    if ranks not in _PARITY:
        _PARITY[ranks] = run_ranks(ranks, "parity", tmp_path_factory.mktemp(f"parity{ranks}"))
    return _PARITY[ranks]


# -- tolerances ---------------------------------------------------------------

_REL = {"float16": 1e-3, "float32": 1e-5, "float64": 1e-12}


def _moments(x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 two-pass mean and biased variance per channel."""
    xc = np.moveaxis(x.astype(np.float64), axis, -1).reshape(-1, x.shape[axis])
    mean = xc.mean(axis=0)
    return mean, ((xc - mean) ** 2).mean(axis=0)


def _floor(x: np.ndarray, axis: int, weight: np.ndarray, eps: float, units: int = 8) -> float:
    """The absolute error of ``xhat * weight`` that float64 rounding allows, in units in the last
    place of ``max|x|`` times ``s = rstd * |weight|``: the mean's rounding (half a unit) and the
    apply's (``x * s`` and ``mean * s`` rounded at ``|x| * s``, a unit each) put each
    computation within 4 units of the exact result, and two computations within 8 of each
    other.  For data at 1e4 with std 0.1 that is ~3e-11 of an output of magnitude 1 (the
    input's condition number is 1e5); for data of unit scale it is far below 1e-12."""
    _, var = _moments(x, axis)
    scale = np.max(np.abs(weight.astype(np.float64)) / np.sqrt(var + eps))
    return float(units * np.spacing(np.max(np.abs(x.astype(np.float64)))) * scale)


def assert_parity(got: np.ndarray, ref: np.ndarray, dtype: str, floor: float, what: str) -> None:
    """``got`` matches ``ref`` within the dtype's relative tolerance of ``max|ref|`` plus ``floor``."""
    assert got.shape == ref.shape and got.dtype == ref.dtype, (what, got.shape, ref.shape, got.dtype)
    if not ref.size:
        return
    ref64 = ref.astype(np.float64)
    err = float(np.max(np.abs(got.astype(np.float64) - ref64)))
    bound = _REL[dtype] * float(np.max(np.abs(ref64))) + floor
    assert err <= bound, f"{what}: max error {err:.3e} > {bound:.3e}"


# -- parity with BatchNorm on the global batch -------------------------------


@needs_mpi
@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_parity_with_batch_norm_on_global_batch(ranks, tmp_path_factory):
    """Outputs, dx, running statistics, num_batches_tracked and evaluation outputs of each rank
    match one BatchNorm on the concatenated batch (exactly for one rank), for every CPU backend,
    float16/32/64, both layouts and 2-D input, uneven splits with an empty rank, and data at
    1e4 with std 0.1."""
    results = parity_run(ranks, tmp_path_factory)
    for case in W.cases(ranks):
        key, axis = f"c{case['index']}", W.axis_of(case)
        params = W.case_params(case)
        dtype = case["dtype"]
        with fastnorm.use_backend(case["backend"]):
            bn = fastnorm.BatchNorm(W.C, dtype=params["weight"].dtype, axis=axis)
            bn.load_state_dict(params)
            for step in range(W.STEPS):
                x, dy = W.case_batch(case, step)
                y, dx = bn(x), bn.backward(dy)
                floor = _floor(x, axis, params["weight"], bn.eps)
                mean, var = _moments(x, axis)
                xe = np.moveaxis(x.astype(np.float64), axis, -1)
                dye = np.moveaxis(dy.astype(np.float64), axis, -1)
                for rank in range(ranks):
                    part, r = W.rank_slice(case, rank), results[rank]
                    what = f"{case} rank {rank} step {step}"
                    if ranks == 1:  # a communicator of one process is BatchNorm
                        np.testing.assert_array_equal(r[f"{key}_y{step}"], y, err_msg=what)
                        np.testing.assert_array_equal(r[f"{key}_dx{step}"], dx, err_msg=what)
                        continue
                    assert_parity(r[f"{key}_y{step}"], y[part], dtype, floor, f"y {what}")
                    # dx = rstd * w * (dy - mean(dy) - xhat * mean(dy * xhat)): xhat's floor times
                    # rstd * |w| * |dy| for each term it enters
                    dx_floor = floor * 4 * float(np.max(np.abs(dy.astype(np.float64)))) / np.sqrt(
                        float(var.min()) + bn.eps)
                    assert_parity(r[f"{key}_dx{step}"], dx[part], dtype, dx_floor, f"dx {what}")
                    # each rank's own parameter gradients, from the global statistics
                    xhat = (xe[part] - mean) / np.sqrt(var + bn.eps)
                    dyp = dye[part].reshape(-1, W.C)
                    xhat = xhat.reshape(-1, W.C)
                    gdt = params["weight"].dtype
                    assert_grad_close(r[f"{key}_gb{step}"], dyp.sum(axis=0), gdt, what,
                                      scale=np.abs(dyp).sum(axis=0).max())
                    assert_grad_close(r[f"{key}_gw{step}"], (dyp * xhat).sum(axis=0), gdt, what,
                                      scale=np.abs(dyp * xhat).sum(axis=0).max(),
                                      floor=floor * np.abs(dyp).sum(axis=0).max())
            x, _ = W.case_batch(case, W.STEPS)
            y_eval = bn.eval()(x)
            state = bn.state_dict()
        for rank in range(ranks):
            r, what = results[rank], f"{case} rank {rank}"
            assert int(r[f"{key}_num_batches_tracked"]) == state["num_batches_tracked"] == W.STEPS
            for name in ("running_mean", "running_var"):
                got = r[f"{key}_{name}"]
                if ranks == 1:
                    np.testing.assert_array_equal(got, state[name], err_msg=what)
                else:
                    assert_parity(got, state[name], str(got.dtype), 0.0, f"{name} {what}")
            eval_floor = _floor(x, axis, params["weight"], 0.0) if ranks > 1 else 0.0
            assert_parity(r[f"{key}_eval"], y_eval[W.rank_slice(case, rank)], dtype, eval_floor,
                          f"eval {what}")


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_every_rank_holds_bit_identical_statistics(ranks, tmp_path_factory):
    results = parity_run(ranks, tmp_path_factory)
    for case in W.cases(ranks):
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            key = f"c{case['index']}_{name}"
            for rank in range(1, ranks):
                assert results[rank][key].tobytes() == results[0][key].tobytes(), (case, name, rank)


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_merge_keeps_accuracy_on_offset_data(ranks, tmp_path_factory):
    """On data at 1e4 with std 0.1 (float64), the error of the synchronized output against an
    exact oracle (long double, two passes) is within the rounding of a float64 mean, as
    BatchNorm's own on the whole batch; a merge of sums of squares would be off by ~1e-6."""
    results = parity_run(ranks, tmp_path_factory)
    hostile = [c for c in W.cases(ranks) if c["dtype"] == "float64" and c["offset"]]
    assert hostile
    for case in hostile:
        axis, params = W.axis_of(case), W.case_params(case)
        x, _ = W.case_batch(case, 0)
        xe = np.moveaxis(x, axis, -1).astype(np.longdouble)
        mean = xe.reshape(-1, W.C).mean(axis=0)
        var = ((xe.reshape(-1, W.C) - mean) ** 2).mean(axis=0)
        exact = (xe - mean) / np.sqrt(var + np.longdouble(1e-5)) * params["weight"] + params["bias"]
        exact = np.moveaxis(exact, -1, axis).astype(np.float64)
        got = np.concatenate([results[r][f"c{case['index']}_y0"] for r in range(ranks)])
        with fastnorm.use_backend(case["backend"]):
            bn = fastnorm.BatchNorm(W.C, dtype=np.float64, axis=axis)
            bn.load_state_dict(params)
            own = bn(x)
        floor = _floor(x, axis, params["weight"], 1e-5, units=4)
        sync_error = float(np.max(np.abs(got - exact)))
        assert sync_error <= 1e-12 * float(np.max(np.abs(exact))) + floor, (case, sync_error, floor)
        assert float(np.max(np.abs(own - exact))) <= floor  # the floor is BatchNorm's accuracy too


# -- communication ------------------------------------------------------------


@needs_mpi
def test_one_collective_per_forward_and_backward(tmp_path):
    """Training forward: one Allgather of 8 * (6 + 2C) bytes per rank (the layer's first adds
    one of 8 bytes, checking num_features); backward: one Allreduce of 8 * (1 + 2C) bytes;
    evaluation: nothing."""
    record, reduce = 8 * (6 + 2 * W.C), 8 * (1 + 2 * W.C)
    for log in run_ranks(2, "traffic", tmp_path):
        assert log["first forward"] == [["Allgather", 8], ["Allgather", record]]
        assert log["forward"] == [["Allgather", record]]
        assert log["backward"] == log["backward again"] == [["Allreduce", reduce]]
        assert log["eval forward"] == log["eval backward"] == []


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_mismatched_ranks_raise_on_every_rank(ranks, tmp_path):
    """Each failing call raises on every rank (the failing rank its own error, the others a
    ValueError that names it), changes nothing, and the ranks go on in step."""
    last = ranks - 1
    together = {"num_features": "disagree on num_features", "input dtype": "disagree on the input dtype",
                "parameter dtype": "disagree on the parameter dtype",
                "channel axis": "disagree on the channel axis",
                "one value": "Expected more than 1 value per channel when training"}
    alone = {  # step: (failing rank, its error type, its message, the others' message)
        "bad channels": (last, "ValueError", "expected 4 channels", f"failed on rank {last}"),
        "bad dtype": (0, "TypeError", "must have dtype", "failed on rank 0 (TypeError"),
        "bad ndim": (last, "ValueError", "at least 2 dimensions", f"failed on rank {last}"),
        "bad dy": (last, "ValueError", "dy", "backward failed on 1 other rank"),
        "bad dy dtype": (0, "TypeError", "dy must have dtype", "backward failed on 1 other rank"),
        "inference backward": (0, "ValueError", "ran in inference mode", "backward failed on 1 other rank"),
    }
    for rank, result in enumerate(run_ranks(ranks, "mismatch", tmp_path)):
        log = result["log"]
        for step, text in together.items():
            assert log[step]["error"] == "ValueError" and text in log[step]["message"], (rank, step, log[step])
        for step, (failing, kind, own, others) in alone.items():
            expected = (kind, own) if rank == failing else ("ValueError", others)
            assert log[step]["error"] == expected[0] and expected[1] in log[step]["message"], (
                rank, step, log[step])
        for step in ("good forward", "good backward", "good forward again", "inference forward"):
            assert log[step]["error"] is None, (rank, step, log[step])
        if "half dtypes" in log:  # float16 on rank 0, bfloat16 elsewhere
            assert "disagree on the input dtype" in log["half dtypes"]["message"], log["half dtypes"]
        assert all(result["unchanged"].values()), (rank, result["unchanged"])
        assert result["num_batches_tracked"] == 3


@needs_mpi
def test_sub_communicators(tmp_path):
    """comm.Split: ranks 0 and 2 share statistics; rank 1, alone, is a BatchNorm."""
    r = run_ranks(3, "split", tmp_path)
    for members in ([0, 2], [1]):
        x = np.concatenate([r[m]["x"] for m in members])
        dy = np.concatenate([r[m]["x"][::-1] for m in members])
        bn = fastnorm.BatchNorm(W.C, dtype=np.float64)
        y, dx = bn(x), bn.backward(dy)
        start = 0
        for m in members:
            n = len(r[m]["x"])
            assert_parity(r[m]["y"], y[start:start + n], "float64", 0.0, f"y rank {m}")
            assert_parity(r[m]["dx"], dx[start:start + n], "float64", 0.0, f"dx rank {m}")
            assert_parity(r[m]["running_var"], bn.running_var, "float64", 0.0, f"var rank {m}")
            start += n


@needs_mpi
def test_from_batch_norm_carries_state_over(tmp_path):
    r = run_ranks(2, "converted", tmp_path)
    for rank in range(2):
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            np.testing.assert_array_equal(r[rank][f"sync_{name}"], r[rank][f"bn_{name}"])
    # then a synchronized step (momentum None: the cumulative average over 4 batches)
    x = r[0]["x"]
    bn = fastnorm.BatchNorm2d(W.C, momentum=None, axis=-1, dtype=np.float64)
    bn.load_state_dict({k[3:]: v for k, v in r[0].items() if k.startswith("bn_")})
    y = bn(x)
    assert_parity(np.concatenate([r[0]["y"], r[1]["y"]]), y, "float64", 0.0, "y")
    assert_parity(r[0]["after_mean"], bn.running_mean, "float64", 0.0, "running_mean")
    assert int(r[0]["after_count"]) == bn.num_batches_tracked == 4


# -- without MPI --------------------------------------------------------------


class OneRank:
    """A communicator of one process that must never be used for a collective."""

    def Get_rank(self):
        return 0

    def Get_size(self):
        return 1

    def Allgather(self, *args):
        raise AssertionError("a communicator of one process needs no collective")

    Allreduce = Allgather


@pytest.mark.parametrize("axis", [1, -1])
def test_one_process_is_batch_norm(backend, rng, axis):
    sync = fastnorm.SyncBatchNorm(3, momentum=None, axis=axis, comm=OneRank())
    bn = fastnorm.BatchNorm(3, momentum=None, axis=axis)
    for _ in range(2):
        x = rng.standard_normal((4, 3, 5) if axis == 1 else (4, 5, 3)).astype(np.float32)
        np.testing.assert_array_equal(sync(x), bn(x))
        np.testing.assert_array_equal(sync.backward(x), bn.backward(x))
        np.testing.assert_array_equal(sync.grad_weight, bn.grad_weight)
    for name, value in bn.state_dict().items():
        np.testing.assert_array_equal(sync.state_dict()[name], value)


def test_import_fastnorm_does_not_import_mpi4py():
    code = "import sys, fastnorm; print('mpi4py' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.stdout.strip() == "False", out.stderr


def test_without_mpi4py_an_import_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'fastnorm-kernels\[mpi\]'"):
        fastnorm.SyncBatchNorm(4)
    fastnorm.SyncBatchNorm(4, comm=OneRank())  # a communicator given: no import needed


def test_bad_arguments():
    with pytest.raises(TypeError, match="comm must be an mpi4py intra-communicator"):
        fastnorm.SyncBatchNorm(4, comm=object())
    with pytest.raises(TypeError, match="bn must be a BatchNorm"):
        fastnorm.SyncBatchNorm.from_batch_norm(fastnorm.LayerNorm(4), comm=OneRank())
    with pytest.raises(ValueError, match="num_features"):
        fastnorm.SyncBatchNorm(0, comm=OneRank())


def test_a_deep_copy_shares_the_communicator(rng):
    sync = fastnorm.SyncBatchNorm(3, comm=OneRank())
    sync(rng.standard_normal((4, 3)))
    twin = copy.deepcopy(sync)
    assert twin.comm is sync.comm and twin.weight is not sync.weight
    for name, value in sync.state_dict().items():
        np.testing.assert_array_equal(twin.state_dict()[name], value)


def test_from_batch_norm_copies(rng):
    bn = fastnorm.BatchNorm1d(3, momentum=0.3, affine=True, axis=-1, dtype=np.float64).eval()
    bn.weight[:] = rng.standard_normal(3)
    bn(rng.standard_normal((4, 2, 3)))
    sync = fastnorm.SyncBatchNorm.from_batch_norm(bn, comm=OneRank())
    assert (sync.momentum, sync.axis, sync.training, sync.weight.dtype) == (0.3, -1, False, np.float64)
    np.testing.assert_array_equal(sync.weight, bn.weight)
    sync.weight[:] = 0
    assert np.all(bn.weight != 0)  # a copy: the BatchNorm is left as it was


@needs_mpi
def test_example_trains_data_parallel():
    """examples/sync_batch_norm_training.py on two ranks: it learns, and every rank ends with the
    same parameters and running statistics."""
    log = mpiexec(2, str(REPO / "examples" / "sync_batch_norm_training.py"))
    last = log.strip().splitlines()[-1]
    assert last.startswith("2 rank(s)") and last.endswith("identical state on every rank: True"), log
    assert float(last.split("accuracy ")[1].split(",")[0]) > 0.9, last


# -- the merge of the ranks' statistics ---------------------------------------------------------


@pytest.mark.parametrize("offset, rtol", [(0.0, 1e-13), (1e4, 1e-9)])
@pytest.mark.parametrize("parts", [[5], [3, 0, 4], [1, 1, 1, 1], [1000, 1], [0, 7, 0]])
def test_merge_moments_gives_the_whole_batchs(rng, parts, offset, rtol):
    """Chan's merge of parts equals the two-pass statistics of the concatenation; at offset 1e4
    with std 0.1 the deltas between part means carry the rounding of 1e4 (1.8e-12), ~1e-10 of
    M2."""
    x = offset + 0.1 * rng.standard_normal((sum(parts), 3))
    bounds = np.cumsum([0, *parts])
    pieces = [x[a:b] for a, b in itertools.pairwise(bounds)]
    means = np.array([p.mean(axis=0) if len(p) else np.zeros(3) for p in pieces])
    m2s = np.array([((p - p.mean(axis=0)) ** 2).sum(axis=0) if len(p) else np.zeros(3) for p in pieces])
    count, mean, m2 = fastnorm._core.merge_moments(np.array(parts), means, m2s)
    assert count == len(x)
    np.testing.assert_allclose(mean, x.mean(axis=0), rtol=0, atol=4 * np.spacing(np.abs(x).max()))
    np.testing.assert_allclose(m2, ((x - x.mean(axis=0)) ** 2).sum(axis=0), rtol=rtol)


def test_merge_moments_of_nothing_and_of_non_finite_values():
    count, mean, m2 = fastnorm._core.merge_moments(np.zeros(2), np.ones((2, 3)), np.ones((2, 3)))
    assert count == 0 and not mean.any() and not m2.any()
    inf = np.inf
    means = np.array([[inf, inf, 1.0], [1.0, -inf, np.nan]])
    _, mean, m2 = fastnorm._core.merge_moments(np.array([2, 3]), means, np.zeros((2, 3)))
    assert mean[0] == inf and np.isnan(mean[1]) and np.isnan(mean[2])  # as sums merge
    assert not np.isfinite(m2).any()  # non-finite statistics: non-finite outputs
