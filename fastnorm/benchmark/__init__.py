"""fastnorm against its peers: the benchmark behind ``python -m fastnorm bench``.

Times every normalization family of fastnorm (BatchNorm, LayerNorm, RMSNorm, GroupNorm,
InstanceNorm) on float32 data of the benchmark matrix's shapes, forward and backward, on each
fast CPU backend (every available one except the float64 ``"numpy"`` reference and ``"cuda"``),
against

* ``numpy``: the naive formula ``(x - mean) / sqrt(var + eps) * w + b`` in float32 and its
  analytic backward (what one writes without fastnorm; single-threaded, as NumPy reductions are),
* ``torch``: PyTorch CPU, ``torch.nn.functional`` forward and ``torch.autograd.grad`` backward,
  and ``compile``: the same under ``torch.compile``, when torch is installed,
* ``jax``: JAX ``jit`` of the formula in ``jax.numpy``, backward by ``jax.vjp``, when JAX is
  installed,
* ``ort``: ONNX Runtime (CPU), forward only, on models built with the ``onnx`` helper package,
  when both are installed,

with the same thread count for all (JAX: XLA's own pool), the implementations alternated inside every round
(round-robin, the first one rotating, garbage collector paused) so that machine drift hits all
alike. It prints the median time per call, the ratios ``fastnorm time / peer time`` (lower is
better) and fastnorm's largest deviation from a float64 computation; then the geometric means
and the worst case. Two extra figures follow: the memory bandwidth a 205 MB BatchNorm reaches
against the copy bound, and the peak resident memory of one training forward (and forward +
backward) against the ideal ``input + output (+ dy + dx)``.

The cases, data, naive NumPy layers, float64 references and per-implementation runners are
shared with the pytest-benchmark suite in ``bench/``; the most used names are re-exported here.

Modules
-------
cases
    Shared constants, :class:`Case`, the benchmark matrix :data:`~fastnorm.benchmark.cases.MATRIX`, the smoke shapes,
    :class:`Problem` and :func:`make_problem` (a case's input data).
naive
    The naive NumPy layers :class:`NaiveNumpyBatchNorm` and :class:`NaiveNumpyNorm`, and the
    float64 references :func:`reference_result` and :func:`max_abs_diff`.
peers
    :class:`Impl`, one implementation prepared for one case, and :func:`build_impl`, which
    prepares fastnorm on a backend, the naive NumPy formula, PyTorch or ONNX Runtime.
compiled
    The compiling peers: ``torch.compile`` and JAX ``jit``.
timing
    :func:`time_round_robin`, the CPU-load meter, :func:`run_case` and :func:`time_case` (with
    retries), :class:`CaseResult`, :func:`geometric_mean` and :func:`summarize`.
report
    Machine and version lines, the results table, its legend and summary, JSON and the plot.
bandwidth
    The bandwidth figure: BatchNorm on 205 MB against the copy bound.
memory
    The memory figure: peak resident memory, measured in fresh subprocesses.
roofline
    Every family's forward and backward against the least memory traffic it must make.
cli
    The command line: :func:`parse_args` and :func:`main`.

Notes
-----
Only NumPy and fastnorm are imported with this package; torch, jax, onnx, onnxruntime, tqdm and
matplotlib are optional and imported lazily, when a run uses them.  The pytest plugin
(``fastnorm_pytest``, installed with fastnorm) gives these cases, data, references and peers to
pytest-benchmark tests as fixtures. ``import fastnorm`` does not import this
package (``python -m fastnorm`` does).

.. rubric:: Examples

>>> from fastnorm import benchmark
>>> case = benchmark.smoke_case(benchmark.MATRIX[0])
>>> problem = benchmark.make_problem(case.shape, case.axis)
>>> impl = benchmark.build_impl("numpy", case, problem)
>>> times = benchmark.time_round_robin([impl], rounds=3)
>>> len(times["numpy"])
3
>>> benchmark.max_abs_diff(impl.run(), benchmark.reference_result(case, problem)) < 1e-4
True
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> the module defining it (imported on first use: the pytest plugin, which
#: pytest loads in every run, imports this package without its modules)
_SOURCES = {
    "CACHE_MODES": "timing",
    "CASES": "cases",
    "Case": "cases",
    "CaseResult": "timing",
    "EPS": "cases",
    "FAMILIES": "cases",
    "FASTNORM_PREFIX": "cases",
    "Impl": "peers",
    "KINDS": "cases",
    "LAYOUTS": "cases",
    "MATRIX": "cases",
    "MOMENTUM": "cases",
    "NUMPY_IMPL": "cases",
    "NaiveNumpyBatchNorm": "naive",
    "NaiveNumpyNorm": "naive",
    "ORT_IMPL": "cases",
    "OtherCpuMeter": "timing",
    "PEERS": "cases",
    "Problem": "cases",
    "RMS_EPS": "cases",
    "RatioSummary": "timing",
    "Runtimes": "peers",
    "TORCH_IMPL": "cases",
    "Unsupported": "peers",
    "bandwidth_figure": "bandwidth",
    "bandwidth_report": "bandwidth",
    "build_impl": "peers",
    "cpu_name": "report",
    "fast_backends": "peers",
    "format_table": "report",
    "geometric_mean": "timing",
    "impl_names": "peers",
    "import_ort": "peers",
    "import_torch": "peers",
    "main": "cli",
    "make_layer": "peers",
    "make_problem": "cases",
    "max_abs_diff": "naive",
    "memory_figure": "memory",
    "memory_report": "memory",
    "parse_args": "cli",
    "reference_result": "naive",
    "results_json": "report",
    "results_table": "report",
    "run_case": "timing",
    "smoke_case": "cases",
    "summarize": "timing",
    "summary_lines": "report",
    "time_case": "timing",
    "time_round_robin": "timing",
}


def __getattr__(name: str) -> Any:
    module = _SOURCES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "CACHE_MODES",
    "CASES",
    "EPS",
    "FAMILIES",
    "FASTNORM_PREFIX",
    "KINDS",
    "LAYOUTS",
    "MATRIX",
    "MOMENTUM",
    "NUMPY_IMPL",
    "ORT_IMPL",
    "PEERS",
    "RMS_EPS",
    "TORCH_IMPL",
    "Case",
    "CaseResult",
    "Impl",
    "NaiveNumpyBatchNorm",
    "NaiveNumpyNorm",
    "OtherCpuMeter",
    "Problem",
    "RatioSummary",
    "Runtimes",
    "Unsupported",
    "bandwidth_figure",
    "bandwidth_report",
    "build_impl",
    "cpu_name",
    "fast_backends",
    "format_table",
    "geometric_mean",
    "impl_names",
    "import_ort",
    "import_torch",
    "main",
    "make_layer",
    "make_problem",
    "max_abs_diff",
    "memory_figure",
    "memory_report",
    "parse_args",
    "reference_result",
    "results_json",
    "results_table",
    "run_case",
    "smoke_case",
    "summarize",
    "summary_lines",
    "time_case",
    "time_round_robin",
]
