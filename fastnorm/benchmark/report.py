"""Reporting: the machine and versions, the results table, its legend and summary, JSON, plot.

:func:`header_lines` (with :func:`versions`, :func:`cpu_name`, :func:`cpu_counts`), and
:func:`busy_note` and :func:`load_average` on how busy the machine is; :func:`format_table`, the
plain-text tables; :func:`results_table`, :func:`legend` and :func:`summary_lines`, the table's
report; :func:`results_json` and :func:`plot_results` (matplotlib, imported lazily by
:func:`import_pyplot`).
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import statistics
import time
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np

import fastnorm

from .cases import (
    BEST_PEER,
    BUSY_WARNING,
    COMPILE_IMPL,
    FASTNORM_PREFIX,
    JAX_IMPL,
    ORT_IMPL,
    SLOWER,
    TORCH_IMPL,
)
from .peers import Runtimes
from .timing import CACHE_MODES, CaseResult, summarize


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cpu_name() -> str:
    """The CPU model name, best effort.

    Returns
    -------
    str
        ``model name`` of ``/proc/cpuinfo`` (Linux), else :func:`platform.processor` or
        :func:`platform.machine`.

    Examples
    --------
    >>> from fastnorm import benchmark
    >>> isinstance(benchmark.cpu_name(), str)
    True
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_counts() -> str:
    """``os.cpu_count()``, plus how many of those this process may use where that differs."""
    total = os.cpu_count() or 0
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = total
    return f"{total}" if usable == total else f"{total} ({usable} usable by this process)"


def _cpu_times() -> tuple[int, int]:
    """(total, idle) CPU time of the whole machine so far, in clock ticks (Linux)."""
    with open("/proc/stat", encoding="ascii") as f:
        ticks = [int(v) for v in f.readline().split()[1:9]]  # user .. steal
    return sum(ticks), ticks[3] + ticks[4]  # idle + iowait


def busy_note(interval: float = 0.5) -> str | None:
    """A warning when other processes keep the CPUs busy (timings will be noisy), else None.

    Samples the machine's CPU use for ``interval`` seconds while this process sleeps; Linux only.
    """
    try:
        total0, idle0 = _cpu_times()
        time.sleep(interval)
        total1, idle1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return None
    busy = 1.0 - (idle1 - idle0) / max(total1 - total0, 1)
    if busy < 0.2:
        return None
    return (
        f"other processes kept {busy:.0%} of the CPUs busy when the benchmark started:"
        " timings are noisy (and multi-threaded ones suffer most)"
    )


def load_average() -> str:
    try:
        return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "load average unknown"


def versions(runtimes: Runtimes | None = None) -> dict[str, str]:
    rt = runtimes or Runtimes()
    return {
        "fastnorm": getattr(fastnorm, "__version__", None) or _version("fastnorm-kernels"),
        "numpy": np.__version__,
        "numba": _version("numba"),
        "torch": rt.torch.__version__ if rt.torch is not None else "-",
        "onnxruntime": rt.ort.__version__ if rt.ort is not None else "-",
        "onnx": rt.onnx.__version__ if rt.onnx is not None else "-",
        "jax": rt.jax.__version__ if rt.jax is not None else "-",
        "python": platform.python_version(),
    }


def header_lines(
    backends: Sequence[str],
    threads: int,
    torch: ModuleType | None,
    runtimes: Runtimes | None = None,
) -> list[str]:
    """Versions, backends, threads and the machine."""
    rt = runtimes or Runtimes(torch=torch, threads=threads)
    v = versions(rt)
    shown = [
        f"fastnorm {v['fastnorm']}",
        f"numpy {v['numpy']}",
        f"numba {v['numba']}",
        f"torch {v['torch']}" if rt.torch is not None else "torch: not used",
        f"onnxruntime {v['onnxruntime']} (onnx {v['onnx']})"
        if rt.ort is not None
        else "ort: not used",
        f"jax {v['jax']}" if rt.jax is not None else "jax: not used",
        f"Python {v['python']}",
    ]
    peers = [p for p, m in ((TORCH_IMPL, rt.torch), (ORT_IMPL, rt.ort)) if m is not None]
    if rt.torch is not None and rt.compile:
        peers.insert(1, COMPILE_IMPL)
    return [
        " | ".join(shown),
        (
            f"backend: {fastnorm.get_backend()} (available:"
            f" {', '.join(fastnorm.available_backends())}; timed: {', '.join(backends)})"
        ),
        f"threads: {threads} for fastnorm"
        + "".join(f", {p}" for p in peers)
        + " (the naive NumPy formula is single-threaded"
        + ("; jax: XLA's own thread pool" if rt.jax is not None else "") + ")",
        f"CPU: {cpu_name()}, {cpu_counts()} CPUs ({platform.system()} {platform.machine()})",
    ]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 2) -> str:
    """A plain-text table; the first ``left`` columns are left-aligned, the rest right-aligned.

    Parameters
    ----------
    headers : sequence of str
        The column titles.
    rows : sequence of sequence of str
        The cells, as many per row as ``headers``.
    left : int, default 2
        How many leading columns are left-aligned.

    Returns
    -------
    str
        The header line, a rule of dashes, then one line per row (trailing spaces stripped).

    Raises
    ------
    ValueError
        If a row does not have as many cells as ``headers``.

    Examples
    --------
    >>> from fastnorm import benchmark
    >>> print(benchmark.format_table(["case", "impl", "time"],
    ...                              [["a", "numpy", "1 ms"], ["bb", "torch", "10 ms"]]))
    case  impl    time
    ----  -----  -----
    a     numpy   1 ms
    bb    torch  10 ms
    """
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        padded = (
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        return "  ".join(padded).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def format_time(seconds: float | None) -> str:
    """A time with the unit that fits, 3 significant digits: ``"850 ns"``, ``"12.3 µs"``,
    ``"4.56 ms"``, ``"1.00 ms"``, ``"1.23 s"``."""
    if seconds is None or math.isnan(seconds):
        return "-"
    seconds = float(f"{seconds:.3g}")  # rounded first: 999.6 µs is 1.00 ms
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs"), (1e-9, "ns")):
        if seconds >= scale or unit == "ns":
            value = seconds / scale
            digits = 2 if value < 10 else 1 if value < 100 else 0
            return f"{value:.{digits}f} {unit}"
    raise AssertionError("unreachable")


def _q(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.2f}"


def results_table(
    results: Sequence[CaseResult], backends: Sequence[str], peers: Sequence[str]
) -> str:
    """One row per case and fastnorm backend: the median time of fastnorm and of each peer (on the
    case's first row), the ratios fastnorm / peer, fastnorm's max abs error, others' CPU share.

    Parameters
    ----------
    results : sequence of CaseResult
        The timed cases.
    backends : sequence of str
        fastnorm's backends timed.
    peers : sequence of str
        The peers timed (``"numpy"``, ``"torch"``, ...).

    Returns
    -------
    str
        A table of :func:`format_table`.

    Examples
    --------
    >>> from fastnorm import benchmark
    >>> result = benchmark.CaseResult(benchmark.MATRIX[0], {
    ...     "fastnorm-cython": [1e-3], "numpy": [2e-3]}, {"fastnorm-cython": 1e-6})
    >>> print(benchmark.results_table([result], ["cython"], ["numpy"]))
    case                                  backend  fastnorm    numpy  fn/numpy  max|err|  others
    ------------------------------------  -------  --------  -------  --------  --------  ------
    BatchNorm train fwd NCHW 32x64x56x56  cython    1.00 ms  2.00 ms      0.50   1.0e-06       ?
    """
    ratios = [*peers, BEST_PEER] if len(peers) > 1 else list(peers)
    headers = ["case", "backend", "fastnorm", *peers]
    headers += [f"fn/{p}" for p in ratios] + ["max|err|", "others"]
    rows = []
    for res in results:
        for i, b in enumerate(backends):
            name = FASTNORM_PREFIX + b
            row = [res.case.label if i == 0 else "", b, format_time(res.value(name))]
            row += [format_time(res.value(p)) if i == 0 else "" for p in peers]
            row += [_q(res.ratio(b, p)) for p in ratios]
            err = res.errors.get(name)
            row.append("-" if err is None else f"{err:.1e}")
            if i == 0:
                busy = "?" if res.others is None else f"{res.others:.0%}"
                flag = res.others is not None and res.others > BUSY_WARNING
                row.append(busy + ("!" if flag else ""))
            else:
                row.append("")
            rows.append(row)
    return format_table(headers, rows)


def legend(peers: Sequence[str], rounds: int, stat: str = "median", cache: str = "warm") -> str:
    what = "minimum" if stat == "min" else "median"
    lines = [
        (
            f"times: {what} time per call over {rounds} round-robin rounds (short calls repeated"
            f" inside a sample; caches {cache}: {CACHE_MODES[cache]}). fn/<peer>: fastnorm time /"
            " peer time, lower is better (< 1: fastnorm faster)."
        ),
        (
            "max|err|: fastnorm's largest absolute deviation (y, or dx for backward) from float64."
            " others: CPU share used by other processes while the case was timed (! above"
            f" {BUSY_WARNING:.0%})."
        ),
        (
            "forward: fastnorm's function (fastnorm.batch_norm, layer_norm, ...) as torch.nn.functional."
        ),
        (
            "backward: fastnorm layer.backward(dy) after one untimed training forward; numpy: the"
            " analytic backward"
        ),
    ]
    if TORCH_IMPL in peers:
        lines[-1] += "; torch: autograd.grad(y, (x, w, b), dy, retain_graph=True)"
    if COMPILE_IMPL in peers:
        lines[-1] += "; compile: the same through torch.compile (default mode)"
    if JAX_IMPL in peers:
        lines[-1] += "; jax: jit of jax.vjp (dx, dw, db)"
    lines[-1] += "."
    if COMPILE_IMPL in peers or JAX_IMPL in peers:
        lines.append(
            "compile: torch.compile of torch.nn.functional; jax: jax.jit of the formula in"
            " jax.numpy (XLA CPU, its own thread pool); both compiled before timing."
        )
    if len(peers) > 1:
        lines.append("fn/best: fastnorm time / the fastest peer's time on the case.")
    if ORT_IMPL in peers:
        lines.append(
            "ort: ONNX Runtime CPU, forward only (no training backward); NHWC not run (the ONNX"
            " normalization ops are channels-first); thread pool not spinning between runs."
        )
    return "\n".join(lines)


def summary_lines(
    results: Sequence[CaseResult], backends: Sequence[str], peers: Sequence[str]
) -> list[str]:
    """Geometric means of fastnorm / torch, / numpy, / ort per backend, the worst case, the
    number of cases where fastnorm is slower, and a warning about disturbed cases.

    Parameters
    ----------
    results : sequence of CaseResult
        The timed cases.
    backends : sequence of str
        fastnorm's backends timed.
    peers : sequence of str
        The peers timed.

    Returns
    -------
    list of str
        One line per backend and peer (and the best peer), then the warning if any.

    Examples
    --------
    >>> from fastnorm import benchmark
    >>> result = benchmark.CaseResult(benchmark.MATRIX[0], {
    ...     "fastnorm-cython": [1e-3], "numpy": [2e-3]}, {})
    >>> print(benchmark.summary_lines([result], ["cython"], ["numpy"])[0])
    fastnorm-cython / numpy: geometric mean 0.50 over 1 case; worst 0.50 (...); slower than numpy in 0 cases
    """
    lines = []
    for b in backends:
        for peer in [*peers, BEST_PEER]:
            if (s := summarize(results, b, peer)) is None:
                continue
            text = (
                f"fastnorm-{b} / {'best peer' if peer == BEST_PEER else peer}: geometric mean {s.geomean:.2f} over {s.count}"
                f" case{'s' if s.count != 1 else ''};"
                f" worst {s.worst:.2f} ({s.worst_case})"
            )
            than = "the best peer" if peer == BEST_PEER else peer
            text += f"; slower than {than} in {s.slower} case{'s' if s.slower != 1 else ''}"
            lines.append(text)
    busy = [r for r in results if r.others is not None and r.others > BUSY_WARNING]
    if busy:
        lines.append(
            f"warning: other processes used more than {BUSY_WARNING:.0%} of the CPUs during"
            f" {len(busy)} case(s) (marked !): those timings are disturbed; rerun on a quiet"
            " machine"
        )
    return lines


# --------------------------------------------------------------------------------------------
# Plot and JSON
# --------------------------------------------------------------------------------------------


def import_pyplot() -> ModuleType | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except (ImportError, OSError):
        return None
    pyplot: ModuleType = plt
    return pyplot


def plot_results(
    path: str,
    results: Sequence[CaseResult],
    backends: Sequence[str],
    peers: Sequence[str],
    plt: Any,
) -> None:
    """Horizontal bars of fastnorm / peer per case (log scale, the same in every panel), one
    panel per backend, with the line of equal time and each peer's geometric mean, labelled."""
    labels = [r.case.label for r in results]
    n_peers = max(len(peers), 1)
    fig, axes = plt.subplots(
        1, len(backends), figsize=(6 * len(backends) + 2, 0.32 * len(labels) * n_peers / 2 + 2),
        sharey=True, sharex=True, squeeze=False,
    )  # fmt: skip
    height = 0.8 / n_peers
    for ax, b in zip(axes[0], backends, strict=True):
        for j, peer in enumerate(peers):
            ys = [i + (j - (n_peers - 1) / 2) * height for i in range(len(labels))]
            qs = [r.ratio(b, peer) for r in results]
            kept = [(y, q) for y, q in zip(ys, qs, strict=True) if q is not None]
            ax.barh(
                [y for y, _ in kept],
                [q for _, q in kept],
                height=height,
                label=f"fastnorm / {peer}",
            )
        ax.set_xscale("log")
        ax.axvline(SLOWER, color="k", linestyle="-", linewidth=0.8, label="same time (1.0)")
        for j, peer in enumerate(peers):
            s = summarize(results, b, peer)
            if s is not None:
                ax.axvline(s.geomean, color=f"C{j}", linestyle="--", linewidth=1.0,
                           label=f"geometric mean vs {peer} ({s.geomean:.2f})")
        lines = [h for h, n in zip(*ax.get_legend_handles_labels(), strict=True)
                 if not n.startswith("fastnorm / ")]
        ax.legend(handles=lines, loc="upper center", bbox_to_anchor=(0.5, -0.6 / fig.get_figheight()),
                  fontsize="x-small", ncol=2)  # the reference lines, below the panel
        ax.set_title(f"fastnorm-{b} (lower is better)")
        ax.set_xlabel("time ratio fastnorm / peer")
    axes[0][0].set_yticks(range(len(labels)))
    axes[0][0].set_yticklabels(labels, fontsize="small")
    axes[0][0].invert_yaxis()
    handles, names = axes[0][0].get_legend_handles_labels()
    bars = [(h, n) for h, n in zip(handles, names) if n.startswith("fastnorm / ")]
    fig.legend([h for h, _ in bars], [n for _, n in bars], loc="upper center", ncol=n_peers,
               fontsize="small")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / fig.get_figheight()))
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def results_json(
    results: Sequence[CaseResult],
    backends: Sequence[str],
    peers: Sequence[str],
    meta: dict[str, Any],
    extras: dict[str, Any],
) -> dict[str, Any]:
    """The results as a JSON-ready dict (``--json``).

    Parameters
    ----------
    results : sequence of CaseResult
        The timed cases.
    backends : sequence of str
        fastnorm's backends timed.
    peers : sequence of str
        The peers timed.
    meta : dict
        The run's description (machine, versions, options), stored under ``"meta"``.
    extras : dict
        More top-level entries (the bandwidth and memory figures).

    Returns
    -------
    dict
        ``meta``; ``cases``: per case its label, id, shape, layout, each implementation's
        times (median, minimum, all samples), calls per sample and error (or why it was
        skipped), the ratios and the best peer; ``summary``: backend -> peer ->
        :meth:`RatioSummary.as_dict`; and ``extras``.

    Examples
    --------
    >>> from fastnorm import benchmark
    >>> result = benchmark.CaseResult(benchmark.MATRIX[0], {
    ...     "fastnorm-cython": [1e-3], "numpy": [2e-3]}, {})
    >>> data = benchmark.results_json([result], ["cython"], ["numpy"], {"rounds": 1}, {})
    >>> sorted(data), data["cases"][0]["ratios"]
    (['cases', 'meta', 'summary'], {'cython': {'numpy': 0.5, 'best': 0.5}})
    """
    names = [FASTNORM_PREFIX + b for b in backends] + list(peers)
    cases = []
    for r in results:
        impls = {}
        for n in names:
            t = r.times.get(n)
            if t:
                impls[n] = {
                    "median_s": statistics.median(t),
                    "min_s": min(t),
                    "times_s": t,
                    "calls_per_sample": r.numbers.get(n, 1),
                    "max_abs_err": r.errors.get(n),
                }
            else:
                impls[n] = {"skipped": r.skipped.get(n, "not run")}
        cases.append({
            "label": r.case.label, "id": r.case.id, "family": r.case.family, "kind": r.case.kind,
            "shape": list(r.case.shape), "axis": r.case.axis, "layout": r.case.layout or None,
            "impls": impls, "others_cpu_share": r.others, "attempts": r.attempts,
            "ratios": {b: {p: r.ratio(b, p) for p in [*peers, BEST_PEER]} for b in backends},
            "best_peer": r.best_peer(),
        })  # fmt: skip
    summary = {
        b: {p: s.as_dict() for p in [*peers, BEST_PEER] if (s := summarize(results, b, p)) is not None}
        for b in backends
    }
    return {"meta": meta, "cases": cases, "summary": summary, **extras}
