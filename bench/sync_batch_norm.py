"""SyncBatchNorm against BatchNorm on the same per-rank batch, under MPI.

    mpiexec -n 2 python bench/sync_batch_norm.py [--rounds 21] [--threads N] [--json out.json]

Every rank times a training forward + backward of ``BatchNorm`` and of ``SyncBatchNorm`` on its
own batch of the benchmark matrix's BatchNorm shapes (float32), alternating the two round by
round after a barrier, so both see the same load on the machine.  A round's time is its
slowest rank's (a synchronized step waits for it); the table gives medians, the overhead of
synchronization relative to the local computation, the collectives each call makes and the
bytes each rank sends in them (counted by a wrapper around the communicator, in a separate
call).  Threads per rank default to the cores divided by the ranks.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
from mpi4py import MPI

import fastnorm

# the training BatchNorm shapes of ``python -m fastnorm bench`` (per rank here)
SHAPES = [((32, 64, 56, 56), 1), ((32, 56, 56, 64), -1), ((128, 512, 7, 7), 1),
          ((4096, 1024), 1), ((32, 10), 1)]


class Counting:
    """A communicator that records each collective and the bytes this rank sends in it."""

    def __init__(self, comm) -> None:
        self.comm, self.calls = comm, []

    def Get_rank(self):
        return self.comm.Get_rank()

    def Get_size(self):
        return self.comm.Get_size()

    def Allgather(self, send, recv):
        self.calls.append(("Allgather", send.nbytes))
        self.comm.Allgather(send, recv)

    def Allreduce(self, send, recv, *args):
        self.calls.append(("Allreduce", send.nbytes))
        self.comm.Allreduce(send, recv, *args)


def traffic(shape, axis, comm) -> dict:
    """Collectives and bytes of a steady-state forward and backward (after the first call)."""
    counting = Counting(comm)
    layer = fastnorm.SyncBatchNorm(shape[axis], axis=axis, comm=counting)
    x = np.ones(shape, np.float32)
    layer.backward(layer(x))
    out = {}
    for name, call in (("forward", lambda: layer(x)), ("backward", lambda: layer.backward(x))):
        counting.calls.clear()
        call()
        out[name] = list(counting.calls)
    return out


def step(layer, x, dy) -> float:
    t0 = time.perf_counter()
    layer(x)
    layer.backward(dy)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None, help="write the results here (rank 0)")
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = args.threads or max(1, cores // size)
    fastnorm.set_num_threads(threads)
    rng = np.random.default_rng(rank)
    rows = []
    for shape, axis in SHAPES:
        x = rng.standard_normal(shape, dtype=np.float32)
        dy = rng.standard_normal(shape, dtype=np.float32)
        layers = {"BatchNorm": fastnorm.BatchNorm(shape[axis], axis=axis),
                  "SyncBatchNorm": fastnorm.SyncBatchNorm(shape[axis], axis=axis, comm=comm)}
        times: dict[str, list[float]] = {name: [] for name in layers}
        for round_ in range(args.rounds + 2):  # two warm-up rounds
            for name, layer in layers.items():
                comm.Barrier()
                elapsed = comm.allreduce(step(layer, x, dy), op=MPI.MAX)
                if round_ >= 2:
                    times[name].append(elapsed)
        local, synced = (float(np.median(times[n])) for n in ("BatchNorm", "SyncBatchNorm"))
        calls = traffic(shape, axis, comm)
        rows.append({"shape": list(shape), "axis": axis, "batch_norm_ms": local * 1e3,
                     "sync_batch_norm_ms": synced * 1e3, "overhead": synced / local - 1.0,
                     "forward": calls["forward"], "backward": calls["backward"]})
    if rank == 0:
        print(f"SyncBatchNorm vs BatchNorm: {size} ranks x {threads} thread(s), float32, training "
              f"forward + backward per rank, median of {args.rounds} rounds (slowest rank)")
        head = (f"{'shape per rank':<20} {'axis':>4} {'BatchNorm':>10} {'Sync':>10} {'overhead':>9}"
                f" {'collectives fwd/bwd':>20} {'bytes sent fwd/bwd':>19}")
        print(head)
        print("-" * len(head))
        for r in rows:
            fwd, bwd = r["forward"], r["backward"]
            print(f"{tuple(r['shape'])!s:<20} {r['axis']:>4} {r['batch_norm_ms']:>8.3f}ms"
                  f" {r['sync_batch_norm_ms']:>8.3f}ms {r['overhead']:>+8.1%}"
                  f" {f'{len(fwd)} / {len(bwd)}':>20}"
                  f" {f'{sum(b for _, b in fwd)} / {sum(b for _, b in bwd)}':>19}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"ranks": size, "threads": threads, "rounds": args.rounds, "rows": rows}, f,
                          indent=1)


if __name__ == "__main__":
    main()
