"""Extra figure 2: peak resident memory of a BatchNorm training call, in fresh subprocesses.

:func:`memory_figure` runs :func:`memory_child` in a fresh interpreter per implementation and
mode and compares the peak's increase with the ideal ``input + output (+ dy + dx)``;
:func:`memory_report` prints it.
"""

from __future__ import annotations

import gc
import json
import math
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

import fastnorm

from .cases import EXTRA_SHAPE, FASTNORM_PREFIX, TORCH_IMPL
from .peers import Runtimes, import_torch
from .report import format_table
from .timing import progress


def _proc_status() -> dict[str, int]:
    """VmRSS and VmHWM of this process in bytes (Linux), else ``{}``."""
    values = {}
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError):
        return {}
    return values


def _rss() -> tuple[int, int]:
    """(current RSS, peak RSS) in bytes; current is ``-1`` where only the peak is known."""
    status = _proc_status()
    if "VmRSS" in status and "VmHWM" in status:
        return status["VmRSS"], status["VmHWM"]
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return -1, peak * (1 if sys.platform == "darwin" else 1024)


def _reset_peak() -> bool:
    """Reset the peak RSS (VmHWM) to the current RSS (Linux ``clear_refs``); ``False`` if not."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return False
    return True


def memory_child(spec_json: str) -> None:
    """Run in a fresh interpreter: one BatchNorm training forward (``mode="forward"``:
    functional ``batch_norm``) or layer forward + backward (``mode="layer"``) on the figure's
    input, printing the resident memory before and the peak during it as JSON."""
    spec = json.loads(spec_json)
    shape, impl, mode, threads = tuple(spec["shape"]), spec["impl"], spec["mode"], spec["threads"]
    c = shape[1]
    fastnorm.set_num_threads(threads)
    torch: Any = None
    if impl == TORCH_IMPL:
        torch = import_torch()
        torch.set_num_threads(threads)
    else:
        fastnorm.set_backend(impl.removeprefix(FASTNORM_PREFIX))
        fastnorm.warmup()
    w, b = np.ones(c, np.float32), np.zeros(c, np.float32)

    def run(x: np.ndarray, dy: np.ndarray | None) -> tuple[Any, ...]:
        rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
        if torch is not None:
            F = torch.nn.functional
            xt, wt, bt = torch.from_numpy(x), torch.from_numpy(w.copy()), torch.from_numpy(b.copy())
            if dy is None:
                return (F.batch_norm(xt, torch.from_numpy(rm), torch.from_numpy(rv), wt, bt, True),)
            leaves = (xt.requires_grad_(), wt.requires_grad_(), bt.requires_grad_())
            y = F.batch_norm(
                *leaves[:1], torch.from_numpy(rm), torch.from_numpy(rv), *leaves[1:], True
            )
            return (y, *torch.autograd.grad(y, leaves, torch.from_numpy(dy)))
        if dy is None:
            return (fastnorm.batch_norm(x, rm, rv, w, b, training=True, axis=1),)
        layer = fastnorm.BatchNorm(c, axis=1)
        y = layer(x)
        return (y, layer.backward(dy))

    small = (2, c, 4, 4)  # warm-up (JIT, lazy imports) on a tiny input
    run(np.ones(small, np.float32), None if mode == "forward" else np.ones(small, np.float32))
    gc.collect()
    rng = np.random.default_rng(0)
    x = np.empty(shape, np.float32)
    rng.standard_normal(dtype=np.float32, out=x)  # no temporaries
    dy = None
    if mode == "layer":
        dy = np.empty(shape, np.float32)
        rng.standard_normal(dtype=np.float32, out=dy)
    reset = _reset_peak()
    rss0, hwm0 = _rss()
    results = run(x, dy)
    rss1, hwm1 = _rss()
    kept = sum(int(np.asarray(r.detach() if hasattr(r, "detach") else r).nbytes) for r in results
               if r is not None and getattr(r, "ndim", 0) == len(shape))  # fmt: skip
    print(json.dumps({"rss_before": rss0, "peak_before": hwm0, "peak_after": hwm1,
                      "rss_after": rss1, "reset": reset, "outputs_bytes": kept}))  # fmt: skip


def _run_memory_child(spec: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
    code = (
        "import sys; from fastnorm.benchmark.memory import memory_child;"
        " memory_child(sys.argv[1])"
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, json.dumps(spec)],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {proc.returncode}: {tail[:200]}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def memory_figure(
    backends: Sequence[str], runtimes: Runtimes, shape: tuple[int, ...] = EXTRA_SHAPE
) -> dict[str, Any]:
    """Peak resident memory of a BatchNorm training forward (and layer forward + backward) per
    implementation, each in a fresh subprocess, against the ideal ``input + output (+ dy + dx)``.

    The increase of the peak over the resident memory just before the call (input, and dy, in
    place; the peak reset there with ``clear_refs`` where Linux allows, else the warm-up's peak
    is checked to stay below) is compared with the outputs the call must create: ``y`` (and
    ``dx``). "over ideal" is the extra, ``increase - outputs``, as a share of the ideal
    ``input + output (+ dy + dx)``.

    Parameters
    ----------
    backends : sequence of str
        fastnorm's backends to measure.
    runtimes : Runtimes
        The optional peers (torch) and the thread count.
    shape : tuple of int, default (64, 64, 112, 112)
        The float32 input's shape.

    Returns
    -------
    dict
        ``shape``, ``bytes`` and ``rows``: per implementation and mode (``"forward"``,
        ``"layer"``) the measured resident sizes, ``increase``, ``ideal_increase``,
        ``extra``, ``ideal``, ``over_ideal`` and ``baseline_ok``, or ``error``.

    See Also
    --------
    memory_report : the figure as text.

    Examples
    --------
    >>> from fastnorm import benchmark
    >>> fig = benchmark.memory_figure(["numpy"], benchmark.Runtimes(), shape=(2, 64, 16, 16))
    >>> [(row["impl"], row["mode"]) for row in fig["rows"]]
    [('fastnorm-numpy', 'forward'), ('fastnorm-numpy', 'layer')]
    """
    nbytes = math.prod(shape) * 4
    names = [FASTNORM_PREFIX + b for b in backends]
    if runtimes.torch is not None:
        names.append(TORCH_IMPL)
    rows = []
    for name in names:
        for mode in ("forward", "layer"):
            progress(f"memory: {name} {mode} ...")
            spec = {"shape": list(shape), "impl": name, "mode": mode, "threads": runtimes.threads}
            res = _run_memory_child(spec)
            row: dict[str, Any] = {"impl": name, "mode": mode, **res}
            if "error" not in res:
                outputs = nbytes * (1 if mode == "forward" else 2)
                ideal = nbytes * (2 if mode == "forward" else 4)
                base = res["rss_before"] if res["rss_before"] >= 0 else res["peak_before"]
                increase = res["peak_after"] - base
                row.update(
                    ideal_increase=outputs,
                    increase=increase,
                    extra=increase - outputs,
                    ideal=ideal,
                    over_ideal=(increase - outputs) / ideal,
                    baseline_ok=res["reset"] or res["peak_before"] <= base + nbytes // 100,
                )
            rows.append(row)
    progress("")
    return {"shape": list(shape), "bytes": nbytes, "rows": rows}


def memory_report(fig: dict[str, Any]) -> str:
    """The memory figure as text: a heading, a table and a note.

    Parameters
    ----------
    fig : dict
        As :func:`memory_figure` returns it.

    Returns
    -------
    str
        Several lines.

    Examples
    --------
    >>> from fastnorm import benchmark
    >>> fig = {"shape": [2, 64, 16, 16], "bytes": 131072, "rows": []}
    >>> print(benchmark.memory_report(fig).splitlines()[0])
    Memory: peak resident set of one BatchNorm training call on 2x64x16x16 float32 (0 MB), ...
    """
    mb = fig["bytes"] / 1e6
    shape = "x".join(map(str, fig["shape"]))
    head = (
        f"Memory: peak resident set of one BatchNorm training call on {shape} float32"
        f" ({mb:.0f} MB), each in a fresh process\n(forward: functional batch_norm, ideal = input +"
        " output; layer fwd+bwd: BatchNorm layer(x) then .backward(dy), ideal = input + dy +"
        " output + dx)"
    )
    rows = []
    for r in fig["rows"]:
        what = "forward" if r["mode"] == "forward" else "layer fwd+bwd"
        if "error" in r:
            rows.append([r["impl"], what, "-", "-", "-", "-", "failed: " + r["error"]])
            continue
        rows.append([
            r["impl"], what, f"{r['rss_before'] / 1e6:.0f}", f"{r['increase'] / 1e6:.1f}",
            f"{r['ideal_increase'] / 1e6:.1f}", f"{r['extra'] / 1e6:+.1f}",
            f"{r['over_ideal']:+.1%}" + ("" if r["baseline_ok"] else " ?"),
        ])  # fmt: skip
    table = format_table(
        ["impl", "call", "RSS before MB", "peak increase MB", "outputs MB", "extra MB",
         "over ideal"], rows,
    )  # fmt: skip
    note = (
        "peak increase: peak RSS during the call minus RSS before it (input, and dy, resident);"
        " outputs: y (and dx) that the call must create;\nover ideal: extra / ideal."
        " ?: the peak could not be reset before the call and the warm-up's peak was higher."
    )
    return f"{head}\n{table}\n{note}"
