"""fastnorm's pytest plugin: the benchmark's cases, data, float64 references and peers as
fixtures (:mod:`fastnorm.benchmark`).

Installed with fastnorm and registered through the ``pytest11`` entry point (as ``fastnorm``).
It adds the fixtures and the marker below and nothing else: a module apart from the
``fastnorm`` package, so that pytest loading it imports neither fastnorm nor NumPy; a test that
asks for none of its fixtures runs exactly as without it.  ``-p no:fastnorm`` turns it off.

Fixtures
--------
norm_case : fastnorm.benchmark.Case
    The test runs once per case of the standard matrix (:data:`fastnorm.benchmark.MATRIX`:
    every family, forward and backward, both layouts), or the cases the ``norm_cases``
    marker selects.  (A ``norm_case`` fixture of the test suite's own, in a conftest or the
    test module, takes precedence and is left alone.)  Where the test also uses pytest-benchmark's ``benchmark`` fixture, its
    group is set to the case's label, so that implementations of one case compare side by side.
norm_problem : fastnorm.benchmark.Problem
    The case's float32 data: ``x``, ``dy``, ``weight``, ``bias``, ``running_mean``,
    ``running_var``, ``axis``.
norm_reference : numpy.ndarray
    The case's result computed in float64 NumPy: ``y``, or ``dx`` for a backward case.
norm_check : callable
    ``norm_check(result, atol=1e-4)`` asserts that ``result`` is within ``atol`` of
    ``norm_reference`` (largest absolute difference).
norm_impl : fastnorm.benchmark.Impl
    The test runs once per implementation: fastnorm on its default backend and the peers the
    marker names (``peers=``; by default the naive NumPy formula, PyTorch's
    ``torch.nn.functional`` with ``torch.autograd.grad`` for backward, and JAX ``jit`` with
    ``jax.vjp``, those installed; ``"compile"`` adds ``torch.compile`` and ``"ort"`` ONNX
    Runtime).  Compiling peers are compiled before the test.  ``norm_impl.run()`` does the timed work and returns the result;
    ``norm_impl.to_numpy(result)`` makes it a NumPy array in the case's layout.  An
    implementation that cannot run a case skips with the reason.

Marker
------
``@pytest.mark.norm_cases(family=None, kind=None, layout=None, label=None, small=False, peers=None)``
    Select cases: ``family`` (``"batch_norm"``, ``"layer_norm"``, ``"rms_norm"``,
    ``"group_norm"``, ``"instance_norm"``), ``kind`` (``"forward"``, ``"backward"``,
    ``"eval"``), ``layout`` (``"NCHW"``, ``"NHWC"``), ``label`` (a substring of the case's
    label, e.g. ``"8192x1024"``); ``small=True`` shrinks every case to a few kilobytes (for
    checking correctness quickly; ``label`` then matches the small case's label, e.g.
    ``"16x64"``); ``peers``: the implementations ``norm_impl`` runs besides fastnorm.  Each may
    be a string or a sequence of them.

Examples
--------
A user's LayerNorm against fastnorm and PyTorch, with pytest-benchmark::

    import numpy as np
    import pytest

    def my_layer_norm(x, w, b, eps):
        mean = x.mean(axis=-1, keepdims=True)
        return (x - mean) / np.sqrt(x.var(axis=-1, keepdims=True) + eps) * w + b

    @pytest.mark.norm_cases(family="layer_norm", kind="forward")
    def test_mine(benchmark, norm_case, norm_problem, norm_check):
        p = norm_problem
        norm_check(benchmark(my_layer_norm, p.x, p.weight, p.bias, norm_case.eps))

    @pytest.mark.norm_cases(family="layer_norm", kind="forward")
    def test_peers(benchmark, norm_impl, norm_check):
        norm_check(norm_impl.to_numpy(benchmark(norm_impl.run)))
"""

from __future__ import annotations

from typing import Any

import pytest

_MARKER = "norm_cases"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{_MARKER}(family=None, kind=None, layout=None, label=None, small=False, peers=None): "
        "the fastnorm benchmark cases (and peers) a test using norm_case (norm_impl) runs on",
    )


def _as_set(value: Any) -> set[str] | None:
    if value is None:
        return None
    return {value} if isinstance(value, str) else set(value)


def selected_cases(family: Any = None, kind: Any = None, layout: Any = None, label: Any = None,
                   small: bool = False) -> list[Any]:
    """The matrix's cases that match every given criterion (see the ``norm_cases`` marker)."""
    from fastnorm.benchmark.cases import MATRIX, smoke_case

    families, kinds, layouts, labels = map(_as_set, (family, kind, layout, label))
    chosen = []
    for case in MATRIX:
        case = smoke_case(case) if small else case
        if families is not None and case.family not in families:
            continue
        if kinds is not None and case.kind not in kinds:
            continue
        if layouts is not None and case.layout not in layouts:
            continue
        if labels is not None and not any(t in case.label for t in labels):
            continue
        chosen.append(case)
    return chosen


#: the peers ``norm_impl`` runs by default (those installed)
DEFAULT_PEERS = ("numpy", "torch", "jax")


def implementation_names(peers: Any = None) -> list[str]:
    """fastnorm on its default backend and the installed ``peers`` (by default the naive NumPy
    formula, PyTorch and JAX; ``"compile"``: torch.compile, ``"ort"``: ONNX Runtime)."""
    import importlib.util

    from fastnorm.benchmark.cli import select_backends
    from fastnorm.benchmark.peers import impl_names

    wanted = set(DEFAULT_PEERS if peers is None else _as_set(peers) or ())
    unknown = wanted - {"numpy", "torch", "compile", "jax", "ort"}
    if unknown:
        raise pytest.UsageError(f"{_MARKER}: unknown peers {sorted(unknown)}")

    def has(module: str) -> bool:
        return importlib.util.find_spec(module) is not None

    torch = has("torch")
    names = impl_names(select_backends(None), torch and bool(wanted & {"torch", "compile"}),
                       "ort" in wanted and has("onnxruntime") and has("onnx"),
                       "compile" in wanted and torch, "jax" in wanted and has("jax"))
    keep = {"numpy": "numpy" in wanted, "torch": "torch" in wanted}
    return [n for n in names if keep.get(n, True)]


def _ours(metafunc: pytest.Metafunc, name: str) -> bool:
    """Whether the fixture ``name`` the test gets is this plugin's (not one of the suite's own)."""
    defs = metafunc._arg2fixturedefs.get(name)
    return defs is not None and bool(defs) and getattr(defs[-1].func, "__module__", None) == __name__


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    names = metafunc.fixturenames
    case_ours = "norm_case" in names and _ours(metafunc, "norm_case")
    impl_ours = "norm_impl" in names and _ours(metafunc, "norm_impl")
    if not (case_ours or impl_ours):
        return
    marker = metafunc.definition.get_closest_marker(_MARKER)
    kwargs = dict(marker.kwargs) if marker is not None else {}
    if marker is not None and marker.args:
        raise pytest.UsageError(f"{_MARKER} takes keyword arguments only, got {marker.args!r}")
    peers = kwargs.pop("peers", None)
    try:
        cases = selected_cases(**kwargs)
    except TypeError as exc:
        raise pytest.UsageError(f"{_MARKER}: {exc}") from None
    if not cases:
        raise pytest.UsageError(f"{_MARKER}({kwargs}) selects no case of the benchmark matrix")
    if case_ours:
        metafunc.parametrize("norm_case", cases, ids=[c.id for c in cases], indirect=True)
    if impl_ours:
        impls = implementation_names(peers)
        metafunc.parametrize("norm_impl", impls, ids=impls, indirect=True)


@pytest.fixture
def norm_case(request: pytest.FixtureRequest) -> Any:
    """The case (parametrized by this plugin); a ``benchmark`` fixture's group is its label."""
    case = request.param
    if "benchmark" in request.fixturenames:
        request.getfixturevalue("benchmark").group = case.label
    return case


@pytest.fixture
def norm_problem(norm_case: Any) -> Any:
    from fastnorm.benchmark.cases import make_problem

    return make_problem(norm_case.shape, norm_case.axis)


@pytest.fixture
def norm_reference(norm_case: Any, norm_problem: Any) -> Any:
    from fastnorm.benchmark.naive import reference_result

    return reference_result(norm_case, norm_problem)


@pytest.fixture
def norm_check(norm_reference: Any) -> Any:
    from fastnorm.benchmark.naive import max_abs_diff

    def check(result: Any, atol: float = 1e-4) -> None:
        err = max_abs_diff(result, norm_reference)
        assert err <= atol, f"largest absolute difference from float64: {err:.3g} > {atol:g}"

    return check


@pytest.fixture
def norm_impl(request: pytest.FixtureRequest, norm_case: Any, norm_problem: Any) -> Any:
    """The implementation (parametrized by this plugin), prepared (and compiled) for the case,
    on fastnorm's thread count (PyTorch's and ONNX Runtime's set to it)."""
    import fastnorm
    from fastnorm.benchmark.compiled import import_jax
    from fastnorm.benchmark.peers import (
        Runtimes,
        Unsupported,
        build_impl,
        import_ort,
        import_torch,
    )

    name = request.param
    runtimes = Runtimes(threads=fastnorm.get_num_threads())
    if name in ("torch", "compile"):
        runtimes.torch = import_torch()
        if runtimes.torch is not None:
            runtimes.torch.set_num_threads(runtimes.threads)
    if name == "jax":
        runtimes.jax = import_jax()
    if name == "ort":
        runtimes.ort, runtimes.onnx, _ = import_ort()
    try:
        return build_impl(name, norm_case, norm_problem, runtimes.torch, runtimes)
    except Unsupported as exc:
        pytest.skip(f"{name}: {exc}")
