"""Fused epilogues against the plain normalization, the unfused sequence and PyTorch.

    python bench/epilogues.py [--rounds 15] [--threads 2] [--no-torch] [--no-compile]
                              [--filter relu,rms] [--json out.json]

Every case is a normalization followed by elementwise work, on inputs far larger than the
caches (51 to 64 MiB of float32), timed round-robin (each round runs every implementation once,
in turn, so that all see the same load; the table gives medians):

* ``plain``: the fastnorm normalization alone (into a preallocated ``out``);
* ``fused``: the same call with ``activation=`` / ``shortcut=`` / ``residual=``;
* ``unfused``: the plain call followed by the same work in NumPy, in place where NumPy can;
* ``torch``: PyTorch eager doing the same sequence (``torch.nn.functional``), and
  ``compile``: that function under ``torch.compile`` (warmed up first, untimed).

Ratios: ``fused / plain`` (what the epilogue costs on top of the normalization's own pass),
``unfused / fused`` and ``torch / fused``, ``compile / fused`` (how much faster fused is).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np

import fastnorm

SQRT_2_PI = math.sqrt(2.0 / math.pi)


def np_act(y: np.ndarray, name: str | None) -> None:
    """The activation in NumPy, in place (NumPy has no erf: exact GELU is not timed here)."""
    if name == "relu":
        np.maximum(y, 0, out=y)
    elif name == "leaky_relu":
        np.multiply(y, np.where(y < 0, np.float32(0.01), np.float32(1.0)), out=y)
    elif name == "silu":
        t = np.exp(-y)
        t += 1
        np.divide(y, t, out=y)
    elif name == "gelu_tanh":
        t = y * y
        t *= 0.044715
        t += 1
        t *= y
        t *= SQRT_2_PI
        np.tanh(t, out=t)
        t += 1
        t *= 0.5
        y *= t


def torch_act(F, y, name):
    if name is None:
        return y
    if name == "gelu_tanh":
        return F.gelu(y, approximate="tanh")
    if name == "leaky_relu":
        return F.leaky_relu(y, 0.01)
    return getattr(F, name)(y)


def cases(rng):
    """(label, make) pairs: ``make()`` returns a dict of callables for the implementations."""
    f32 = np.float32
    out = []

    def channel_case(label, family, shape, axis, activation, with_shortcut, training=True):
        def make(torch=None, compile_=False):
            x = rng.standard_normal(shape, dtype=f32)
            sc = rng.standard_normal(shape, dtype=f32) if with_shortcut else None
            c = shape[axis]
            w = (1 + 0.1 * rng.standard_normal(c)).astype(f32)
            b = (0.1 * rng.standard_normal(c)).astype(f32)
            rm, rv = np.zeros(c, f32), np.ones(c, f32)
            y = np.empty_like(x)

            def call(**kw):
                if family == "batch":
                    return fastnorm.batch_norm(x, rm, rv, w, b, training=training, axis=axis, out=y, **kw)
                return fastnorm.group_norm(x, 32, w, b, axis=axis, out=y, **kw)

            def unfused():
                call()
                if sc is not None:
                    np.add(y, sc, out=y)
                np_act(y, activation)

            impl = {"plain": call, "fused": lambda: call(activation=activation, shortcut=sc)}
            if activation != "gelu":
                impl["unfused"] = unfused
            if torch is not None:
                F = torch.nn.functional
                tx, tw, tb = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
                trm, trv = torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy())
                if axis == -1:  # the same memory as a channels_last NCHW tensor
                    tx = tx.permute(0, 3, 1, 2)
                tsc = None if sc is None else torch.from_numpy(sc)
                if tsc is not None and axis == -1:
                    tsc = tsc.permute(0, 3, 1, 2)

                def seq(t, s):
                    if family == "batch":
                        z = F.batch_norm(t, trm, trv, tw, tb, training=training)
                    else:
                        z = F.group_norm(t, 32, tw, tb)
                    if s is not None:
                        z = z + s
                    return torch_act(F, z, activation)

                impl["torch"] = lambda: seq(tx, tsc)
                if compile_:
                    torch._dynamo.reset()  # each case compiles afresh (no recompile limit)
                    compiled = torch.compile(seq)
                    compiled(tx, tsc)
                    compiled(tx, tsc)
                    impl["compile"] = lambda: compiled(tx, tsc)
            return impl

        out.append((label, make))

    def rows_case(label, family, shape, activation, residual):
        def make(torch=None, compile_=False):
            x = rng.standard_normal(shape, dtype=f32)
            r = rng.standard_normal(shape, dtype=f32) if residual else None
            m = shape[-1]
            w = (1 + 0.1 * rng.standard_normal(m)).astype(f32)
            b = (0.1 * rng.standard_normal(m)).astype(f32)
            y = np.empty_like(x)
            h = np.empty_like(x) if residual else None

            def call(src, **kw):
                if family == "layer":
                    return fastnorm.layer_norm(src, m, w, b, out=y, **kw)
                return fastnorm.rms_norm(src, m, w, eps=1e-6, out=y, **kw)

            def unfused():
                src = x
                if r is not None:
                    np.add(x, r, out=h)
                    src = h
                call(src)
                np_act(y, activation)

            impl = {"plain": lambda: call(x),
                    "fused": lambda: call(x, activation=activation, residual=r)}
            if activation != "gelu":
                impl["unfused"] = unfused
            if torch is not None:
                F = torch.nn.functional
                tx, tw, tb = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
                tr = None if r is None else torch.from_numpy(r)

                def seq(t, res):
                    if res is not None:
                        t = t + res
                    if family == "layer":
                        z = F.layer_norm(t, (m,), tw, tb)
                    else:
                        z = F.rms_norm(t, (m,), tw, eps=1e-6)
                    return torch_act(F, z, activation), t

                impl["torch"] = lambda: seq(tx, tr)
                if compile_:
                    torch._dynamo.reset()  # each case compiles afresh (no recompile limit)
                    compiled = torch.compile(seq)
                    compiled(tx, tr)
                    compiled(tx, tr)
                    impl["compile"] = lambda: compiled(tx, tr)
            return impl

        out.append((label, make))

    def step_case(label, shape, activation):
        """A training step, forward and backward, of ``act(bn(x) + shortcut)``: fastnorm's layer
        with the epilogue (``plain``: the layer alone, forward and backward), the layer
        followed by NumPy (the forward keeps the pre-activation for the backward), and
        PyTorch autograd."""
        def make(torch=None, compile_=False):
            x = rng.standard_normal(shape, dtype=f32)
            sc = rng.standard_normal(shape, dtype=f32)
            dy = rng.standard_normal(shape, dtype=f32)
            c = shape[1]
            fused_bn = fastnorm.BatchNorm2d(c, activation=activation)
            plain_bn = fastnorm.BatchNorm2d(c)

            def fused():
                fused_bn(x, shortcut=sc)
                return fused_bn.backward(dy)

            def plain():
                plain_bn(x)
                return plain_bn.backward(dy)

            def unfused():
                z = plain_bn(x)
                z += sc
                np.maximum(z, 0, out=dy_buf)  # the output the next layer reads
                g = np.where(z > 0, dy, np.float32(0))
                return plain_bn.backward(g), g

            dy_buf = np.empty_like(x)
            impl = {"plain": plain, "fused": fused, "unfused": unfused}
            if torch is not None:
                F = torch.nn.functional
                tx = torch.from_numpy(x).requires_grad_()
                tsc = torch.from_numpy(sc).requires_grad_()
                tdy = torch.from_numpy(dy)
                tbn = torch.nn.BatchNorm2d(c)

                def seq():
                    y = torch_act(F, tbn(tx) + tsc, activation)
                    return torch.autograd.grad(y, (tx, tsc, tbn.weight, tbn.bias), tdy)

                impl["torch"] = seq
            return impl

        out.append((label, make))

    nchw, nhwc = (32, 128, 56, 56), (32, 56, 56, 128)
    channel_case("BatchNorm NCHW + shortcut + relu", "batch", nchw, 1, "relu", True)
    channel_case("BatchNorm NHWC + shortcut + relu", "batch", nhwc, -1, "relu", True)
    channel_case("BatchNorm NCHW relu", "batch", nchw, 1, "relu", False)
    channel_case("BatchNorm NHWC relu", "batch", nhwc, -1, "relu", False)
    channel_case("BatchNorm NCHW leaky_relu", "batch", nchw, 1, "leaky_relu", False)
    channel_case("BatchNorm eval NCHW + shortcut + relu", "batch", nchw, 1, "relu", True, training=False)
    channel_case("BatchNorm NCHW silu", "batch", nchw, 1, "silu", False)
    channel_case("BatchNorm NCHW gelu", "batch", nchw, 1, "gelu", False)
    channel_case("GroupNorm NCHW silu", "group", (16, 256, 64, 64), 1, "silu", False)
    channel_case("GroupNorm NHWC silu", "group", (16, 64, 64, 256), -1, "silu", False)
    rows_case("LayerNorm gelu_tanh", "layer", (16384, 1024), "gelu_tanh", False)
    rows_case("RMSNorm + residual (pre-norm)", "rms", (16384, 1024), None, True)
    rows_case("LayerNorm + residual (pre-norm)", "layer", (16384, 1024), None, True)
    step_case("BatchNorm NCHW + shortcut + relu, fwd+bwd", nchw, "relu")
    return out


def run(rounds: int, torch, compile_: bool, selected) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for label, make in cases(rng):
        if selected and not any(s.lower() in label.lower() for s in selected):
            continue
        impl = make(torch, compile_)
        for fn in impl.values():  # warm-up (JIT, page faults)
            fn()
        times = {k: [] for k in impl}
        for _ in range(rounds):
            for k, fn in impl.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
        med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
        row = {"case": label, "ms": med}
        row["fused/plain"] = med["fused"] / med["plain"]
        for k in ("unfused", "torch", "compile"):
            if k in med:
                row[f"{k}/fused"] = med[k] / med["fused"]
        rows.append(row)
        print(_line(row), flush=True)
        del impl
    return rows


def _line(row: dict) -> str:
    ms = row["ms"]
    cells = [f"{row['case']:<40}"]
    for k in ("plain", "fused", "unfused", "torch", "compile"):
        cells.append(f"{ms[k]:8.2f}" if k in ms else f"{'-':>8}")
    cells.append(f"{row['fused/plain']:6.2f}")
    for k in ("unfused", "torch", "compile"):
        r = row.get(f"{k}/fused")
        cells.append(f"{r:6.2f}" if r is not None else f"{'-':>6}")
    return " ".join(cells)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--filter", default="", help="comma-separated substrings of case names")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        fastnorm.set_num_threads(args.threads)
    threads = fastnorm.get_num_threads()
    torch = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            torch = None
        else:
            torch.set_num_threads(threads)
    print(f"fastnorm {fastnorm.__version__} ({fastnorm.get_backend()}), {threads} threads, "
          f"torch {'-' if torch is None else torch.__version__}; medians of {args.rounds} rounds, ms")
    print(f"{'case':<40} {'plain':>8} {'fused':>8} {'unfused':>8} {'torch':>8} {'compile':>8} "
          f"{'f/pl':>6} {'unf/f':>6} {'tor/f':>6} {'cmp/f':>6}")
    selected = [s for s in args.filter.split(",") if s]
    rows = run(args.rounds, torch, torch is not None and not args.no_compile, selected)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": threads, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
