"""Data-parallel training of a small NumPy model with SyncBatchNorm, on MPI.

Each rank holds its own shard of the data (a few samples per step), normalizes with the
statistics of the global batch (SyncBatchNorm), and averages the parameter gradients over
the ranks with ``comm.Allreduce``, so every rank keeps the same parameters::

    pip install -e ".[mpi]"
    mpiexec -n 2 python examples/sync_batch_norm_training.py

The model: ``Linear(8, 32) -> SyncBatchNorm(32) -> ReLU -> Linear(32, 3)``, trained with
softmax cross-entropy and SGD on three Gaussian classes.  It also runs as one process
(``python examples/sync_batch_norm_training.py``), where SyncBatchNorm is BatchNorm.
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

import fastnorm

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()

FEATURES, HIDDEN, CLASSES = 8, 32, 3
PER_RANK, STEPS, LR = 4, 300, 0.1  # 4 samples per rank and step: a noisy batch on its own

# The same initial parameters on every rank (same seed), each rank its own data (seed + rank).
init = np.random.default_rng(0)
params = {
    "w1": init.standard_normal((FEATURES, HIDDEN)) / np.sqrt(FEATURES),
    "b1": np.zeros(HIDDEN),
    "w2": init.standard_normal((HIDDEN, CLASSES)) / np.sqrt(HIDDEN),
    "b2": np.zeros(CLASSES),
}
centers = init.standard_normal((CLASSES, FEATURES)) * 1.5
bn = fastnorm.SyncBatchNorm(HIDDEN, dtype=np.float64, comm=comm)
data = np.random.default_rng(1 + rank)


def batch(n: int) -> tuple[np.ndarray, np.ndarray]:
    labels = data.integers(0, CLASSES, n)
    return centers[labels] + data.standard_normal((n, FEATURES)), labels


def forward_backward(x: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    """This rank's mean loss and its gradients (SyncBatchNorm's are its own, like the others)."""
    h = x @ params["w1"] + params["b1"]
    z = bn(h)
    a = np.maximum(z, 0.0)
    logits = a @ params["w2"] + params["b2"]
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    loss = -np.mean(np.log(p[np.arange(len(labels)), labels]))
    dlogits = p.copy()
    dlogits[np.arange(len(labels)), labels] -= 1.0
    dlogits /= len(labels)
    da = dlogits @ params["w2"].T
    dh = bn.backward(da * (z > 0))  # one Allreduce of the per-channel sums inside
    grads = {"w2": a.T @ dlogits, "b2": dlogits.sum(axis=0), "w1": x.T @ dh, "b1": dh.sum(axis=0),
             "bn_weight": bn.grad_weight, "bn_bias": bn.grad_bias}
    return float(loss), grads


for step in range(STEPS):
    x, labels = batch(PER_RANK)
    loss, grads = forward_backward(x, labels)
    for name, grad in grads.items():  # average every parameter gradient over the ranks
        total = np.empty_like(grad)
        comm.Allreduce(grad, total)
        grad = total / size
        target = bn.weight if name == "bn_weight" else bn.bias if name == "bn_bias" else params[name]
        target -= LR * grad
    losses = comm.allreduce(loss) / size
    if rank == 0 and step % 50 == 0:
        print(f"step {step:3d}  loss {losses:.4f}")

# Evaluation: the running statistics, no communication.
bn.eval()
x, labels = batch(200)
logits = np.maximum(bn(x @ params["w1"] + params["b1"]), 0.0) @ params["w2"] + params["b2"]
accuracy = comm.allreduce(float(np.mean(logits.argmax(axis=1) == labels))) / size
# Every rank holds the same parameters and running statistics, bit for bit.
mine = np.concatenate([a.ravel() for a in (*params.values(), bn.weight, bn.running_mean, bn.running_var)])
same = comm.allreduce(int(np.array_equal(comm.bcast(mine, root=0), mine)), op=MPI.MIN)
if rank == 0:
    print(f"{size} rank(s), {size * PER_RANK} samples per step: accuracy {accuracy:.3f}, "
          f"identical state on every rank: {bool(same)}")
