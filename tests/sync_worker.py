"""The program each MPI rank runs for tests/test_sync_batch_norm.py (not a test module).

``mpiexec -n P python tests/sync_worker.py SCENARIO OUTDIR`` writes ``OUTDIR/rank{r}.npz``
(arrays) or ``OUTDIR/rank{r}.json`` (outcomes); the test compares them with single-process
``BatchNorm`` runs on the global batch.  The global batches come from :func:`case_batch`, which
the test calls too, so both sides see the same values without sending them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

import fastnorm

C = 4
STEPS = 2  # training steps per case: the second uses the running statistics of the first

# Per-rank batch sizes by number of ranks: uneven, and a rank with no samples.
SPLITS = {1: [(5,), (2,)], 2: [(3, 4), (0, 6)], 3: [(2, 0, 5), (1, 1, 1)]}
# (dtype, layout, offset, std): layouts "first" (N, C, 3, 5), "last" (N, 3, 5, C), "flat" (N, C)
DATA = [(dtype, layout, 0.0, 1.0) for dtype in ("float16", "float32", "float64")
        for layout in ("first", "last", "flat")]
DATA += [(dtype, layout, 1e4, 0.1) for dtype in ("float32", "float64") for layout in ("first", "last")]


def cases(ranks: int) -> list[dict]:
    """Every parity case run on ``ranks`` ranks, in the order the worker runs them."""
    out = []
    for backend in [b for b in fastnorm.available_backends() if b != "cuda"]:
        for sizes in SPLITS[ranks]:
            for dtype, layout, offset, std in DATA:
                out.append({"backend": backend, "sizes": list(sizes), "dtype": dtype,
                            "layout": layout, "offset": offset, "std": std, "index": len(out)})
    return out


def axis_of(case: dict) -> int:
    return -1 if case["layout"] == "last" else 1


def case_batch(case: dict, step: int) -> tuple[np.ndarray, np.ndarray]:
    """The global batch ``(x, dy)`` of a case's training step, every rank's samples in rank order."""
    rng = np.random.default_rng(1000 * case["index"] + step)
    n = sum(case["sizes"])
    shape = {"first": (n, C, 3, 5), "last": (n, 3, 5, C), "flat": (n, C)}[case["layout"]]
    x = (case["offset"] + case["std"] * rng.standard_normal(shape)).astype(case["dtype"])
    dy = rng.standard_normal(shape).astype(case["dtype"])
    return x, dy


def case_params(case: dict) -> dict[str, np.ndarray]:
    """The layer's starting state (parameters in float32 for float16 data, as in PyTorch)."""
    rng = np.random.default_rng(7 + case["index"])
    dtype = np.float32 if case["dtype"] == "float16" else case["dtype"]
    return {"weight": rng.uniform(0.5, 2.0, C).astype(dtype),
            "bias": rng.standard_normal(C).astype(dtype),
            "running_mean": np.zeros(C, dtype), "running_var": np.ones(C, dtype),
            "num_batches_tracked": np.array(0)}


def rank_slice(case: dict, rank: int) -> slice:
    start = sum(case["sizes"][:rank])
    return slice(start, start + case["sizes"][rank])


def parity(comm, out: Path) -> None:
    """Every case: two training steps (forward, backward), then an evaluation forward."""
    rank = comm.Get_rank()
    results: dict[str, np.ndarray] = {}
    for case in cases(comm.Get_size()):
        params = case_params(case)
        with fastnorm.use_backend(case["backend"]):
            layer = fastnorm.SyncBatchNorm(C, dtype=params["weight"].dtype, axis=axis_of(case), comm=comm)
            layer.load_state_dict(params)
            key = f"c{case['index']}"
            for step in range(STEPS):
                x, dy = case_batch(case, step)
                part = rank_slice(case, rank)
                results[f"{key}_y{step}"] = layer(x[part])
                results[f"{key}_dx{step}"] = layer.backward(dy[part])
                results[f"{key}_gw{step}"] = layer.grad_weight
                results[f"{key}_gb{step}"] = layer.grad_bias
            for name, value in layer.state_dict().items():
                results[f"{key}_{name}"] = value
            x, _ = case_batch(case, STEPS)
            results[f"{key}_eval"] = layer.eval()(x[rank_slice(case, rank)])
    np.savez(out / f"rank{rank}.npz", **results)


class CountingComm:
    """A communicator that counts the collectives made through it and the bytes each rank sends."""

    def __init__(self, comm) -> None:
        self.comm = comm
        self.calls: list[tuple[str, int]] = []

    def Get_rank(self):
        return self.comm.Get_rank()

    def Get_size(self):
        return self.comm.Get_size()

    def Allgather(self, send, recv):
        self.calls.append(("Allgather", np.asarray(send).nbytes))
        return self.comm.Allgather(send, recv)

    def Allreduce(self, send, recv, *args):
        self.calls.append(("Allreduce", np.asarray(send).nbytes))
        return self.comm.Allreduce(send, recv, *args)


def traffic(comm, out: Path) -> None:
    """The collectives of each kind of call: ``{call: [(collective, bytes sent), ...]}``."""
    counting = CountingComm(comm)
    layer = fastnorm.SyncBatchNorm(C, comm=counting)
    x = np.random.default_rng(comm.Get_rank()).standard_normal((3, C, 5)).astype(np.float32)
    log = {}
    for name, call in [("first forward", lambda: layer(x)), ("backward", lambda: layer.backward(x)),
                       ("forward", lambda: layer(x)), ("backward again", lambda: layer.backward(x)),
                       ("eval forward", lambda: layer.eval()(x)),
                       ("eval backward", lambda: layer.backward(x))]:
        counting.calls.clear()
        call()
        log[name] = list(counting.calls)
    (out / f"rank{comm.Get_rank()}.json").write_text(json.dumps(log))


def _outcome(call) -> dict:
    try:
        call()
    except Exception as error:  # noqa: BLE001 - the outcome is what the test checks
        return {"error": type(error).__name__, "message": str(error)}
    return {"error": None}


def mismatch(comm, out: Path) -> None:
    """Calls that fail on one rank, or on which the ranks disagree, one after another; each
    must raise on every rank and change nothing, and the ranks must go on in step."""
    rank, size = comm.Get_rank(), comm.Get_size()
    last = size - 1
    rng = np.random.default_rng(rank)

    def data(n=3, dtype=np.float32, channels=C, channels_last=False):
        shape = (n, 5, channels) if channels_last else (n, channels, 5)
        return rng.standard_normal(shape).astype(dtype)

    layer = fastnorm.SyncBatchNorm(C, comm=comm)
    layer.weight[:] = np.arange(1, C + 1)
    before = {k: v.copy() for k, v in layer.state_dict().items()}
    log: dict[str, dict] = {}
    log["num_features"] = _outcome(lambda: fastnorm.SyncBatchNorm(C + (rank == 0), comm=comm)(
        data(channels=C + (rank == 0))))
    log["input dtype"] = _outcome(lambda: layer(data(dtype=np.float64 if rank == 0 else np.float32)))
    other = fastnorm.SyncBatchNorm(C, dtype=np.float64 if rank == 0 else np.float32, comm=comm)
    log["parameter dtype"] = _outcome(lambda: other(data()))
    other = fastnorm.SyncBatchNorm(C, axis=-1 if rank == 0 else 1, comm=comm)
    log["channel axis"] = _outcome(lambda: other(data(channels_last=rank == 0)))
    log["bad channels"] = _outcome(lambda: layer(data(channels=C + 1 if rank == last else C)))
    log["bad dtype"] = _outcome(lambda: layer(np.ones((3, C, 5), np.int32) if rank == 0 else data()))
    log["bad ndim"] = _outcome(lambda: layer(np.ones(C, np.float32) if rank == last else data()))
    log["one value"] = _outcome(lambda: layer(data(n=1 if rank == 0 else 0)[..., :1]))
    unchanged = {k: bool(np.array_equal(v, before[k])) for k, v in layer.state_dict().items()}
    good = data()
    log["good forward"] = _outcome(lambda: layer(good))
    grads = layer.grad_weight, layer.grad_bias
    log["bad dy"] = _outcome(lambda: layer.backward(good[:2] if rank == last else good))
    log["bad dy dtype"] = _outcome(lambda: layer.backward(good.astype(np.int8) if rank == 0 else good))
    unchanged["grads"] = grads == (layer.grad_weight, layer.grad_bias)
    log["good backward"] = _outcome(lambda: layer.backward(good))
    with fastnorm.inference_mode(rank == 0):  # rank 0 keeps nothing for backward
        log["inference forward"] = _outcome(lambda: layer(good))
    log["inference backward"] = _outcome(lambda: layer.backward(good))
    try:
        import ml_dtypes
    except ImportError:
        pass
    else:  # two 16-bit dtypes
        half = np.float16 if rank == 0 else ml_dtypes.bfloat16
        log["half dtypes"] = _outcome(lambda: layer(good.astype(half)))
    log["good forward again"] = _outcome(lambda: layer(good))
    result = {"log": log, "unchanged": unchanged, "num_batches_tracked": layer.num_batches_tracked}
    (out / f"rank{rank}.json").write_text(json.dumps(result))


def split(comm, out: Path) -> None:
    """Sub-communicators: even and odd ranks normalize over their own halves of the batch."""
    rank = comm.Get_rank()
    sub = comm.Split(rank % 2, rank)
    x = np.random.default_rng(rank).standard_normal((2 + rank, C, 3))
    layer = fastnorm.SyncBatchNorm(C, dtype=np.float64, comm=sub)
    y = layer(x)
    dx = layer.backward(x[::-1].copy())
    np.savez(out / f"rank{rank}.npz", x=x, y=y, dx=dx, running_mean=layer.running_mean,
             running_var=layer.running_var)
    sub.Free()


def converted(comm, out: Path) -> None:
    """``from_batch_norm``: a BatchNorm trained on this rank's data, then synchronized steps."""
    rank = comm.Get_rank()
    rng = np.random.default_rng(0)  # the same trained BatchNorm on every rank
    bn = fastnorm.BatchNorm2d(C, momentum=None, axis=-1, dtype=np.float64)
    bn.weight[:] = rng.uniform(0.5, 2, C)
    for _ in range(3):
        bn(rng.standard_normal((2, 3, 3, C)))
    sync = fastnorm.SyncBatchNorm.from_batch_norm(bn, comm=comm)
    state = {f"bn_{k}": v for k, v in bn.state_dict().items()}
    state.update({f"sync_{k}": v for k, v in sync.state_dict().items()})
    x = np.random.default_rng(99).standard_normal((4 * comm.Get_size(), 3, 3, C))
    y = sync(x[4 * rank:4 * rank + 4])
    np.savez(out / f"rank{rank}.npz", **state, x=x, y=y,
             after_mean=sync.running_mean, after_var=sync.running_var,
             after_count=sync.num_batches_tracked)


SCENARIOS = {"parity": parity, "traffic": traffic, "mismatch": mismatch, "split": split,
             "converted": converted}


def main() -> None:
    from mpi4py import MPI

    scenario, out = sys.argv[1], Path(sys.argv[2])
    SCENARIOS[scenario](MPI.COMM_WORLD, out)


if __name__ == "__main__":
    main()
