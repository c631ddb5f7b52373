"""fastnorm against its peers: the benchmark behind ``python -m fastnorm bench``.

Times every normalization family of fastnorm (BatchNorm, LayerNorm, RMSNorm, GroupNorm,
InstanceNorm) on float32 data of the benchmark matrix's shapes, forward and backward, on each
fast CPU backend (every available one except the float64 ``"numpy"`` reference and ``"cuda"``),
against

* ``numpy``: the naive formula ``(x - mean) / sqrt(var + eps) * w + b`` in float32 and its
  analytic backward (what one writes without fastnorm; single-threaded, as NumPy reductions are),
* ``torch``: PyTorch CPU, ``torch.nn.functional`` forward and ``torch.autograd.grad`` backward,
  when torch is installed,
* ``ort``: ONNX Runtime (CPU), forward only, on models built with the ``onnx`` helper package,
  when both are installed,

with the same thread count for all, the implementations alternated inside every round
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
    Shared constants, :class:`Case`, the benchmark matrix :data:`MATRIX`, the smoke shapes,
    :class:`Problem` and :func:`make_problem` (a case's input data).
naive
    The naive NumPy layers :class:`NaiveNumpyBatchNorm` and :class:`NaiveNumpyNorm`, and the
    float64 references :func:`reference_result` and :func:`max_abs_diff`.
peers
    :class:`Impl`, one implementation prepared for one case, and :func:`build_impl`, which
    prepares fastnorm on a backend, the naive NumPy formula, PyTorch or ONNX Runtime.
timing
    :func:`time_round_robin`, the CPU-load meter, :func:`run_case` and :func:`time_case` (with
    retries), :class:`CaseResult`, :func:`geometric_mean` and :func:`summarize`.
report
    Machine and version lines, the results table, its legend and summary, JSON and the plot.
bandwidth
    The bandwidth figure: BatchNorm on 205 MB against the copy bound.
memory
    The memory figure: peak resident memory, measured in fresh subprocesses.
cli
    The command line: :func:`parse_args` and :func:`main`.

Notes
-----
Only NumPy and fastnorm are imported with this package; torch, onnx, onnxruntime and matplotlib
are optional and imported lazily, when a run uses them. ``import fastnorm`` does not import this
package (``python -m fastnorm`` does).

Examples
--------
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

from .bandwidth import bandwidth_figure, bandwidth_report
from .cases import (
    CASES,
    EPS,
    FAMILIES,
    FASTNORM_PREFIX,
    KINDS,
    LAYOUTS,
    MATRIX,
    MOMENTUM,
    NUMPY_IMPL,
    ORT_IMPL,
    PEERS,
    RMS_EPS,
    TORCH_IMPL,
    Case,
    Problem,
    make_problem,
    smoke_case,
)
from .cli import main, parse_args
from .memory import memory_figure, memory_report
from .naive import NaiveNumpyBatchNorm, NaiveNumpyNorm, max_abs_diff, reference_result
from .peers import (
    Impl,
    Runtimes,
    Unsupported,
    build_impl,
    fast_backends,
    impl_names,
    import_ort,
    import_torch,
    make_layer,
)
from .report import cpu_name, format_table, results_json, results_table, summary_lines
from .timing import (
    CACHE_MODES,
    CaseResult,
    OtherCpuMeter,
    RatioSummary,
    geometric_mean,
    run_case,
    summarize,
    time_case,
    time_round_robin,
)

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
