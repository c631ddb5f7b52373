"""Training from functions, LayerNorm over any axes and masked normalization.

    python bench/functional_training.py [--rounds 15] [--threads 2] [--no-torch] [--json out.json]

First table: a training step (forward with ``return_stats=True``, then the family's backward
function) against the layer's ``forward`` and ``backward``, for BatchNorm, GroupNorm and
LayerNorm on the array below, and a tiny LayerNorm ``(64, 10)`` (100 steps per timing).
The two are timed in alternate rounds.

On a ConvNeXt-sized float32 activation ``(32, 96, 56, 56)`` (38.5 MiB), timed round-robin
(each round runs every implementation once, in turn; the table gives medians):

* ``trailing``: ``layer_norm`` over the last axis of the channels-last array ``(N, H, W, C)``,
  the canonical rows view (reference);
* ``axis=1``: the channels-first array ``(N, C, H, W)`` normalized over ``C``: one transposed
  copy of the input (the result is laid out channels-last); ``copy`` times that copy alone
  (``np.ascontiguousarray`` of the transposition);
* ``axis=1 chained``: the same on an array already laid out channels-last (the previous
  result), which needs no copy;
* ``(C,H,W) feature_axis=1``: each sample over ``(C, H, W)`` with per-channel parameters (the
  rows view, parameters broadcast to ``(C, H, W)``), against ``(C,H,W) elementwise``, the
  trailing call with ``(C, H, W)`` parameters;
* ``masked``: the trailing call with a bool mask of ``(N, H, W, 1)`` (25% of the rows left
  out), ``masked elements`` with a mask of the input's shape (25% of the values left out);
* ``BatchNorm NHWC`` (training) without and with the ``(N, H, W, 1)`` mask;
* ``torch``: PyTorch eager, ``permute`` + ``layer_norm`` + ``permute`` back (how ConvNeXt's
  channels-first LayerNorm is written), where PyTorch is installed.

Forward and forward+backward (the layer's ``backward``) are both timed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

import fastnorm


def _layer(shape, **kw):
    layer = fastnorm.LayerNorm(shape, **kw)
    layer.weight[...] = 1.0 + 0.1 * np.random.default_rng(1).standard_normal(layer.weight.shape)
    return layer


def implementations(torch_ok: bool):
    rng = np.random.default_rng(0)
    n, c, h, w = 32, 96, 56, 56
    x_cf = rng.standard_normal((n, c, h, w), dtype=np.float32)
    x_cl = np.ascontiguousarray(x_cf.transpose(0, 2, 3, 1))
    x_chained = x_cl.transpose(0, 3, 1, 2)  # (N, C, H, W) laid out channels-last
    dy_cf = rng.standard_normal(x_cf.shape, dtype=np.float32)
    dy_cl = np.ascontiguousarray(dy_cf.transpose(0, 2, 3, 1))
    mask = rng.random((n, h, w, 1)) > 0.25
    emask = rng.random(x_cl.shape) > 0.25
    bn = fastnorm.BatchNorm2d(c, axis=-1)

    ln_last = _layer(c)
    ln_axis = _layer(c, axis=1)
    ln_feat = _layer((c, h, w), feature_axis=-3)
    ln_full = _layer((c, h, w))

    def fwd_bwd(layer, x, dy, **kw):
        def run():
            layer(x, **kw)
            layer.backward(dy)
        return run

    impls = {
        "trailing": (lambda: ln_last(x_cl), fwd_bwd(ln_last, x_cl, dy_cl)),
        "axis=1": (lambda: ln_axis(x_cf), fwd_bwd(ln_axis, x_cf, dy_cf)),
        "copy": (lambda: np.ascontiguousarray(x_cf.transpose(0, 2, 3, 1)), None),
        "axis=1 chained": (lambda: ln_axis(x_chained),
                           fwd_bwd(ln_axis, x_chained, dy_cl.transpose(0, 3, 1, 2))),
        "(C,H,W) feature_axis=1": (lambda: ln_feat(x_cf), fwd_bwd(ln_feat, x_cf, dy_cf)),
        "(C,H,W) elementwise": (lambda: ln_full(x_cf), fwd_bwd(ln_full, x_cf, dy_cf)),
        "masked": (lambda: ln_last(x_cl, mask=mask), fwd_bwd(ln_last, x_cl, dy_cl, mask=mask)),
        "masked elements": (lambda: ln_last(x_cl, mask=emask),
                            fwd_bwd(ln_last, x_cl, dy_cl, mask=emask)),
        "BatchNorm NHWC": (lambda: bn(x_cl), fwd_bwd(bn, x_cl, dy_cl)),
        "BatchNorm NHWC masked": (lambda: bn(x_cl, mask=mask), fwd_bwd(bn, x_cl, dy_cl, mask=mask)),
    }
    if torch_ok:
        import torch

        xt = torch.from_numpy(x_cf)
        wt = torch.from_numpy(ln_axis.weight).requires_grad_(True)
        bt = torch.from_numpy(ln_axis.bias).requires_grad_(True)
        dyt = torch.from_numpy(dy_cf)

        def t_fwd():
            with torch.no_grad():
                y = torch.nn.functional.layer_norm(xt.permute(0, 2, 3, 1), (c,), wt, bt, 1e-5)
                return y.permute(0, 3, 1, 2)

        def t_fb():
            xg = xt.detach().requires_grad_(True)
            y = torch.nn.functional.layer_norm(xg.permute(0, 2, 3, 1), (c,), wt, bt, 1e-5)
            torch.autograd.grad(y.permute(0, 3, 1, 2), (xg, wt, bt), dyt)

        impls["torch axis=1"] = (t_fwd, t_fb)
    return impls


def step_pairs():
    """(label, layer step, functional step) for the functional-backward table."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((32, 96, 56, 56), dtype=np.float32)
    dy = rng.standard_normal(x.shape, dtype=np.float32)
    x_cl = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    dy_cl = np.ascontiguousarray(dy.transpose(0, 2, 3, 1))
    tiny = rng.standard_normal((64, 10), dtype=np.float32)
    dtiny = rng.standard_normal(tiny.shape, dtype=np.float32)
    w = np.ones(96, np.float32)
    b = np.zeros(96, np.float32)
    rm, rv = np.zeros(96, np.float32), np.ones(96, np.float32)
    bn, gn, ln, lt = (fastnorm.BatchNorm2d(96), fastnorm.GroupNorm(8, 96), fastnorm.LayerNorm(96),
                      fastnorm.LayerNorm(10))
    wt, bt = np.ones(10, np.float32), np.zeros(10, np.float32)

    def layer(mod, data, grad, repeat=1):
        def run():
            for _ in range(repeat):
                mod(data)
                mod.backward(grad)
        return run

    def bn_f():
        _, mean, rstd = fastnorm.batch_norm(x, rm, rv, w, b, training=True, return_stats=True)
        fastnorm.batch_norm_backward(dy, x, mean, rstd, w)

    def gn_f():
        _, mean, rstd = fastnorm.group_norm(x, 8, w, b, return_stats=True)
        fastnorm.group_norm_backward(dy, x, 8, mean, rstd, w)

    def ln_f(data, grad, shape, wp, bp, repeat=1):
        def run():
            for _ in range(repeat):
                _, mean, rstd = fastnorm.layer_norm(data, shape, wp, bp, return_stats=True)
                fastnorm.layer_norm_backward(grad, data, shape, mean, rstd, wp)
        return run

    return [
        ("BatchNorm2d NCHW", layer(bn, x, dy), bn_f),
        ("GroupNorm NCHW", layer(gn, x, dy), gn_f),
        ("LayerNorm NHWC over C", layer(ln, x_cl, dy_cl), ln_f(x_cl, dy_cl, 96, w, b)),
        ("LayerNorm (64, 10) x100", layer(lt, tiny, dtiny, 100), ln_f(tiny, dtiny, 10, wt, bt, 100)),
    ]


def measure(impls, rounds: int, which: int) -> dict[str, float]:
    names = [k for k, v in impls.items() if v[which] is not None]
    for k in names:  # warm up (JIT, pools)
        impls[k][which]()
    times: dict[str, list[float]] = {k: [] for k in names}
    for _ in range(rounds):
        for k in names:
            t0 = time.perf_counter()
            impls[k][which]()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.threads:
        fastnorm.set_num_threads(args.threads)
    torch_ok = False
    if not args.no_torch:
        try:
            import torch

            torch.set_num_threads(fastnorm.get_num_threads())
            torch_ok = True
        except ImportError:
            pass
    result = {}
    print(f"backend {fastnorm.get_backend()}, {fastnorm.get_num_threads()} threads, "
          f"(32, 96, 56, 56) float32, medians of {args.rounds} rounds")
    pairs = {label: (layer_step, funcs_step) for label, layer_step, funcs_step in step_pairs()}
    both = {}
    for label, (layer_step, funcs_step) in pairs.items():
        both[label + " layer"] = (layer_step, None)
        both[label + " functions"] = (funcs_step, None)
    med = measure(both, args.rounds, 0)
    print("\ntraining step: the layer's forward + backward against the functions'")
    print(f"{'case':26s} {'layer ms':>9s} {'funcs ms':>9s} {'funcs / layer':>14s}")
    for label in pairs:
        lay, fun = med[label + " layer"], med[label + " functions"]
        print(f"{label:26s} {lay * 1e3:9.3f} {fun * 1e3:9.3f} {fun / lay:14.2f}")
    result["training step"] = med
    del pairs, both
    impls = implementations(torch_ok)
    for which, label in ((0, "forward"), (1, "forward + backward")):
        med = measure(impls, args.rounds, which)
        ref = med["trailing"]
        print(f"\n{label}")
        print(f"{'case':26s} {'ms':>8s} {'/ trailing':>11s}")
        for k, v in med.items():
            print(f"{k:26s} {v * 1e3:8.2f} {v / ref:11.2f}")
        if "(C,H,W) elementwise" in med:
            print(f"{'feature_axis / elementwise':26s} {'':8s} "
                  f"{med['(C,H,W) feature_axis=1'] / med['(C,H,W) elementwise']:11.2f}")
        result[label] = med
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
