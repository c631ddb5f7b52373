"""GPU benchmark of fastnorm's ``cuda`` backend, against PyTorch CUDA when it is installed.

Usage::

    python bench/gpu_bench.py [--rounds R] [--warmup W] [--dtype float32] [--only SUBSTRING]
    NUMBA_ENABLE_CUDASIM=1 python bench/gpu_bench.py --smoke     # tiny shapes, in the simulator

For every case (BatchNorm, GroupNorm, InstanceNorm, LayerNorm, RMSNorm; training forward,
backward, evaluation forward; NCHW and NHWC) it prints the median time of each implementation
and its *effective bandwidth*: the bytes the operation must move at least (read ``x`` and write
``y`` once; backward: read ``x`` and ``dy``, write ``dx``), divided by the time, also as a
fraction of the device-to-device copy bandwidth measured at the start of the same run
(``cudaMemcpy`` D2D of a large buffer, counted as read + write).  All data stay on the device
(Numba device arrays for fastnorm, CUDA tensors for PyTorch); each implementation is timed
with CUDA events around one call, after warm-up (which also compiles the kernels), and the
outputs of the two are compared.

Without a GPU (and without ``NUMBA_ENABLE_CUDASIM=1``) it prints why and exits with status 0.
In the simulator the timings are meaningless: ``--smoke`` only checks that everything runs.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

# (name, family, shape, axis / trailing dims, groups); NHWC shapes are given channels-last
FULL_CASES = [
    ("BatchNorm2d NCHW", "batch", (32, 64, 56, 56), 1, None),
    ("BatchNorm2d NHWC", "batch", (32, 56, 56, 64), -1, None),
    ("BatchNorm2d NCHW C=256", "batch", (32, 256, 28, 28), 1, None),
    ("GroupNorm NCHW G=32", "group", (32, 64, 56, 56), 1, 32),
    ("GroupNorm NHWC G=32", "group", (32, 56, 56, 64), -1, 32),
    ("InstanceNorm2d NCHW", "instance", (16, 64, 64, 64), 1, None),
    ("LayerNorm (8192, 1024)", "layer", (8192, 1024), 1, None),
    ("LayerNorm (6304, 768)", "layer", (6304, 768), 1, None),
    ("LayerNorm (4, 1048576)", "layer", (4, 1 << 20), 1, None),
    ("RMSNorm (8192, 1024)", "rms", (8192, 1024), 1, None),
]
SMOKE_CASES = [
    ("BatchNorm NCHW", "batch", (2, 3, 4, 5), 1, None),
    ("BatchNorm NHWC", "batch", (2, 4, 5, 3), -1, None),
    ("GroupNorm NCHW", "group", (2, 4, 3, 3), 1, 2),
    ("InstanceNorm NHWC", "instance", (2, 3, 3, 4), -1, None),
    ("LayerNorm", "layer", (6, 8), 1, None),
    ("RMSNorm", "rms", (6, 8), 1, None),
]
EPS = 1e-5


def _gpu_message() -> str | None:
    """Why there is nothing to benchmark on, or None."""
    import fastnorm
    from fastnorm.backends import _why_missing

    if "cuda" in fastnorm.available_backends():
        return None
    return f"no GPU to benchmark on: {_why_missing('cuda')}"


class Timer:
    """Median wall time of ``fn()`` on the device: CUDA events (synchronize + perf_counter in
    the simulator, whose events are fake)."""

    def __init__(self, cuda, simulator: bool, rounds: int, warmup: int):
        self.cuda, self.simulator, self.rounds, self.warmup = cuda, simulator, rounds, warmup

    def __call__(self, fn: Callable[[], object], torch_sync: Callable[[], None] | None = None) -> float:
        cuda = self.cuda
        for _ in range(self.warmup):
            fn()
        times = []
        for _ in range(self.rounds):
            if self.simulator:
                cuda.synchronize()
                t0 = time.perf_counter()
                fn()
                cuda.synchronize()
                times.append((time.perf_counter() - t0) * 1e3)
                continue
            if torch_sync is not None:  # PyTorch: its own events on its current stream
                import torch

                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
                continue
            start, end = cuda.event(), cuda.event()
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(cuda.event_elapsed_time(start, end))
        return statistics.median(times)


def copy_bandwidth(cuda, timer: Timer, nbytes: int) -> float:
    """Device-to-device copy bandwidth in GB/s (read + write counted)."""
    src = cuda.to_device(np.ones(nbytes // 4, np.float32))
    dst = cuda.device_array(nbytes // 4, np.float32)
    ms = timer(lambda: dst.copy_to_device(src))
    return 2 * src.nbytes / (ms * 1e-3) / 1e9


def _problem(family, shape, ax, groups, dtype, rng):
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    if family in ("layer", "rms"):
        pshape = shape[-ax:]
    else:
        pshape = (shape[1] if ax == 1 else shape[-1],)
    w = (1 + 0.1 * rng.standard_normal(pshape)).astype(np.float32)
    b = (0.1 * rng.standard_normal(pshape)).astype(np.float32)
    return x, dy, w, b


def fastnorm_ops(family, shape, ax, groups, x, dy, w, b, cuda):
    """``{op: callable}`` on device arrays with fastnorm layers (parameters on the device)."""
    import fastnorm

    pdt = np.float32 if x.dtype == np.float16 else x.dtype
    if family == "batch":
        layer = fastnorm.BatchNorm(w.shape[0], axis=ax, dtype=pdt)
    elif family == "instance":
        layer = fastnorm.InstanceNorm(w.shape[0], affine=True, axis=ax, dtype=pdt)
    elif family == "group":
        layer = fastnorm.GroupNorm(groups, w.shape[0], axis=ax, dtype=pdt)
    elif family == "layer":
        layer = fastnorm.LayerNorm(w.shape, dtype=pdt)
    else:
        layer = fastnorm.RMSNorm(w.shape, eps=EPS, dtype=pdt)
    layer.weight[...] = w
    if getattr(layer, "bias", None) is not None:
        layer.bias[...] = b
    dx_, ddy = cuda.to_device(x), cuda.to_device(dy)
    layer(dx_)  # moves the parameters to the device
    ops = {"forward": lambda: layer(dx_), "backward": lambda: layer.backward(ddy)}
    if family == "batch":
        ev = fastnorm.BatchNorm(w.shape[0], axis=ax, dtype=pdt)
        ev.weight[...] = w
        ev.bias[...] = b
        ev.running_mean[...] = 0.1
        ev.running_var[...] = 2.0
        ev.eval()
        ev(dx_)
        ops["eval forward"] = lambda: ev(dx_)
    return layer, ops


def torch_ops(family, shape, ax, groups, x, dy, w, b):
    import torch
    import torch.nn.functional as F

    dev = torch.device("cuda")
    tx = torch.as_tensor(x, device=dev)
    if ax == -1 and family in ("batch", "instance", "group"):  # channels-last: NHWC memory
        tx = tx.permute(0, 3, 1, 2)  # logical NCHW view of NHWC memory (channels_last strides)
    tx = tx.detach().requires_grad_(True)
    tdy = torch.as_tensor(dy, device=dev)
    if ax == -1 and family in ("batch", "instance", "group"):
        tdy = tdy.permute(0, 3, 1, 2)
    tw = torch.as_tensor(w.astype(x.dtype), device=dev).requires_grad_(True)
    tb = torch.as_tensor(b.astype(x.dtype), device=dev).requires_grad_(True)
    if family == "batch":
        rm = torch.zeros_like(tw.detach())
        rv = torch.ones_like(tw.detach())
        ev_rm = torch.full_like(tw.detach(), 0.1)  # as fastnorm_ops' evaluation layer
        ev_rv = torch.full_like(tw.detach(), 2.0)

        def fwd():
            return F.batch_norm(tx, rm, rv, tw, tb, training=True, eps=EPS)

        def ev():
            return F.batch_norm(tx, ev_rm, ev_rv, tw, tb, training=False, eps=EPS)
    elif family == "instance":
        def fwd():
            return F.instance_norm(tx, weight=tw, bias=tb, eps=EPS)
        ev = None
    elif family == "group":
        def fwd():
            return F.group_norm(tx, groups, tw, tb, eps=EPS)
        ev = None
    elif family == "layer":
        def fwd():
            return F.layer_norm(tx, tw.shape, tw, tb, eps=EPS)
        ev = None
    else:
        def fwd():
            return F.rms_norm(tx, tw.shape, tw, eps=EPS)
        ev = None
    y = fwd()
    params = (tx, tw, tb) if family != "rms" else (tx, tw)

    def bwd():
        return torch.autograd.grad(y, params, tdy, retain_graph=True)

    ops = {"forward": fwd, "backward": bwd}
    if ev is not None:
        ops["eval forward"] = ev
    return ops, tx


def _to_host(a, nhwc: bool = False) -> np.ndarray:
    """Host float32 copy; a PyTorch result of a channels-last case is put back in NHWC order."""
    if hasattr(a, "detach"):  # torch
        t = a.detach()
        if nhwc:
            t = t.permute(0, 2, 3, 1)
        return t.float().cpu().numpy()
    return a.copy_to_host().astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per case (default 50)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default 5)")
    parser.add_argument("--dtype", default="float32", choices=["float16", "float32", "float64"])
    parser.add_argument("--only", default=None, help="run the cases whose name contains this")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes and 2 rounds: checks that the script runs (simulator too)")
    args = parser.parse_args(argv)

    why = _gpu_message()
    if why is not None:
        print(why)
        return 0
    from numba import cuda

    import fastnorm
    from fastnorm.backends import cuda_gpu

    fastnorm.set_backend("cuda")
    simulator = cuda_gpu.SIMULATOR
    rounds = args.rounds or (2 if args.smoke else 50)
    warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 5)
    timer = Timer(cuda, simulator, rounds, warmup)
    cases = SMOKE_CASES if args.smoke else FULL_CASES
    if args.only:
        cases = [c for c in cases if args.only.lower() in c[0].lower()]
    dtype = np.dtype(args.dtype)

    have_torch = False
    if not args.no_torch and not simulator:
        try:
            import torch

            have_torch = torch.cuda.is_available()
        except ImportError:
            pass

    if simulator:
        device_name = "Numba CUDA simulator (timings meaningless)"
    else:
        device_name = cuda.get_current_device().name
        device_name = device_name.decode() if isinstance(device_name, bytes) else device_name
    largest = max(math.prod(c[2]) for c in cases) * dtype.itemsize
    copy_gbs = copy_bandwidth(cuda, timer, max(largest, 1 << 12) if simulator else max(largest, 256 << 20))
    print(f"device: {device_name}")
    print(f"fastnorm {fastnorm.__version__} (cuda backend), dtype {dtype}, {rounds} rounds, "
          f"median; torch: {torch.__version__ if have_torch else 'not used'}")
    print(f"device-to-device copy bandwidth: {copy_gbs:.0f} GB/s (read + write)\n")

    head = (f"{'case':28} {'op':13} {'fastnorm':>10} {'GB/s':>7} {'%copy':>6}"
            + (f" {'torch':>10} {'GB/s':>7} {'%copy':>6} {'torch/fn':>8} {'max|diff|':>9}"
               if have_torch else ""))
    print(head)
    print("-" * len(head))
    rng = np.random.default_rng(0)
    for name, family, shape, ax, groups in cases:
        x, dy, w, b = _problem(family, shape, ax, groups, dtype, rng)
        _, ops = fastnorm_ops(family, shape, ax, groups, x, dy, w, b, cuda)
        tops = torch_ops(family, shape, ax, groups, x, dy, w, b)[0] if have_torch else {}
        for op, fn in ops.items():
            moved = (3 if op == "backward" else 2) * x.nbytes
            ms = timer(fn)
            gbs = moved / (ms * 1e-3) / 1e9
            line = f"{name:28} {op:13} {ms * 1e3:8.1f}us {gbs:7.0f} {100 * gbs / copy_gbs:5.0f}%"
            if op in tops:
                tms = timer(tops[op], torch_sync=lambda: None)
                tgbs = moved / (tms * 1e-3) / 1e9
                ours, theirs = fn(), tops[op]()
                ours = ours[0] if isinstance(ours, tuple) else ours
                theirs = theirs[0] if isinstance(theirs, tuple) else theirs
                nhwc = ax == -1 and family in ("batch", "instance", "group")
                diff = float(np.max(np.abs(_to_host(ours) - _to_host(theirs, nhwc))))
                line += (f" {tms * 1e3:8.1f}us {tgbs:7.0f} {100 * tgbs / copy_gbs:5.0f}% "
                         f"{tms / ms:7.2f}x {diff:9.1e}")
            print(line)
    if simulator:
        print("\n(simulator: the numbers above only show that every case ran)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
