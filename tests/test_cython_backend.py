"""The ``cython`` backend: agreement with ``numba`` kernel by kernel, threads, SIMD variants,
in-place outputs, behaviour without the compiled extension, ``build_info`` and cold imports.

The family and BatchNorm suites run on every available backend already (``tests/conftest.py``);
this module checks what is specific to the compiled backend.
"""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastnorm
from fastnorm import backends
from fastnorm.backends import cython_cpu, numpy_ref

if not cython_cpu.is_built():
    if os.environ.get("FASTNORM_REQUIRE_EXTENSION"):
        pytest.fail(f"the compiled extension did not build: {cython_cpu.IMPORT_ERROR}", pytrace=False)
    pytest.skip("the compiled extension is not built", allow_module_level=True)

REPO = Path(__file__).resolve().parent.parent
HAS_NUMBA = "numba" in fastnorm.available_backends()
needs_numba = pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")


def _cpus():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


THREADS = [1, 2] if _cpus() >= 2 else [1]


def _numba():
    from fastnorm.backends import numba_cpu

    return numba_cpu


# ---------------------------------------------------------------------------------------------
# kernel by kernel against numba (same algorithms: only the order of float64 sums and of the
# float32 squares of a block differs, and where a multiply-add is fused)


def _tol(dtype):
    """(rtol of float64 statistics, output tolerance relative to the output's magnitude)."""
    return (1e-12, 1e-12) if np.dtype(dtype) == np.float64 else (2e-5, 4e-6)


def _close_out(got, want, dtype, what):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
    err = float(np.max(np.abs(got - want), initial=0.0))
    assert err <= _tol(dtype)[1] * scale, f"{what}: max|diff| {err:.3e} (scale {scale:.3e})"


def _close_stat(got, want, dtype, what):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    scale = max(1e-300, float(np.max(np.abs(want), initial=0.0)))
    err = float(np.max(np.abs(got - want), initial=0.0))
    assert err <= _tol(dtype)[0] * scale, f"{what}: max|diff| {err:.3e} (scale {scale:.3e})"


# (N, A, C, B): long runs, short runs, one channel split inside its reduction, channels-last
# (tiny, many channels, split over rows), 1-element edges, a group of one value
CHANNEL_SHAPES = [
    (1, 8, 3, 5000),
    (2, 64, 16, 49),
    (1, 3, 1, 100_003),
    (3, 7, 5, 13),
    (2, 5, 4, 1),
    (4, 33, 96, 1),
    (1, 70_000, 3, 1),
    (1, 1, 1, 1),
    (1, 1, 7, 1),
    (5, 1, 1, 3),
    (1, 2, 1, 1),
]


def _data(rng, shape, dtype, offset=0.5):
    return (offset + rng.standard_normal(shape)).astype(dtype)


def _each_backend(fn, threads):
    fastnorm.set_num_threads(threads)
    return fn(cython_cpu), fn(_numba())


@needs_numba
@pytest.mark.parametrize("shape", CHANNEL_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", THREADS)
def test_channel_kernels_match_numba(rng, shape, dtype, threads):
    x = _data(rng, shape, dtype)
    dy = _data(rng, shape, dtype, offset=-0.25)
    N, _, C, _ = shape
    mean = x.astype(np.float64).mean(axis=(1, 3))
    rstd = 1.0 / np.sqrt(x.astype(np.float64).var(axis=(1, 3)) + 1e-5)
    scale = rstd * (1.0 + 0.1 * rng.standard_normal((N, C)))
    shift = 0.3 * rng.standard_normal((N, C))
    k2 = 0.1 * rng.standard_normal((N, C))
    k3 = 0.1 * rng.standard_normal((N, C))

    (cm, cq), (nm, nq) = _each_backend(lambda b: b.stats(x), threads)
    _close_stat(cm, nm, dtype, "stats mean")
    _close_stat(cq, nq, dtype, "stats M2")

    def apply(b):
        out = np.empty_like(x)
        b.apply(x, mean, scale, shift, out)
        return out

    cy, nb = _each_backend(apply, threads)
    _close_out(cy, nb, dtype, "apply")

    (cs1, cs2), (ns1, ns2) = _each_backend(lambda b: b.backward_reduce(x, dy, mean), threads)
    _close_stat(cs1, ns1, dtype, "sum(dy)")
    _close_stat(cs2, ns2, dtype, "sum(dy * (x - mean))")

    def backward_apply(b):
        dx = np.empty_like(x)
        b.backward_apply(x, dy, mean, rstd, scale, k2, k3, dx)
        return dx

    cy, nb = _each_backend(backward_apply, threads)
    _close_out(cy, nb, dtype, "backward_apply")


ROW_SHAPES = [(64, 10), (3, 1), (1, 1), (1, 5000), (7, 4099), (300, 768), (2, 70_000)]


@needs_numba
@pytest.mark.parametrize("shape", ROW_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("center", [True, False], ids=["layer", "rms"])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("threads", THREADS)
def test_row_kernels_match_numba(rng, shape, dtype, center, affine, threads):
    x = _data(rng, shape, dtype, offset=2.0)
    dy = _data(rng, shape, dtype, offset=0.0)
    M = shape[1]
    w = 1.0 + 0.3 * rng.standard_normal(M) if affine else None
    b = 0.5 * rng.standard_normal(M) if affine and center else None

    def forward(backend):
        out = np.empty_like(x)
        mean, var = backend.rows_forward(x, w, b, 1e-5, center, out)
        return out, mean, var

    (cy, cm, cv), (nb, nm, nv) = _each_backend(forward, threads)
    _close_out(cy, nb, dtype, "rows_forward y")
    _close_stat(cm, nm, dtype, "rows mean")
    _close_stat(cv, nv, dtype, "rows var")
    rstd = 1.0 / np.sqrt(nv + 1e-5)

    def backward(backend):
        dx = np.empty_like(x)
        gw, gb = backend.rows_backward(x, dy, nm, rstd, w, center, dx)
        return dx, gw, gb

    (cdx, cgw, cgb), (ndx, ngw, ngb) = _each_backend(backward, threads)
    _close_out(cdx, ndx, dtype, "rows_backward dx")
    # column sums of float32 products, summed in the data type over a few rows
    _close_out(cgw, ngw, dtype, "rows grad_weight")
    _close_out(cgb, ngb, dtype, "rows grad_bias")


# (N, G, K, S): rows of K channels x S values
GROUPED_SHAPES = [(4, 2, 3, 50), (2, 4, 1, 4096), (8, 32, 2, 49), (3, 1, 5, 1), (1, 1, 1, 2)]


@needs_numba
@pytest.mark.parametrize("shape", GROUPED_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("threads", THREADS)
def test_grouped_kernels_match_numba(rng, shape, dtype, affine, threads):
    N, G, K, S = shape
    C = G * K
    x = _data(rng, (N * G, K * S), dtype, offset=-3.0)
    dy = _data(rng, (N * G, K * S), dtype, offset=0.1)
    w = 1.0 + 0.3 * rng.standard_normal(C) if affine else None
    b = 0.5 * rng.standard_normal(C) if affine else None

    def forward(backend):
        out = np.empty_like(x)
        mean, var = backend.grouped_forward(x, G, S, w, b, 1e-5, out)
        return out, mean, var

    (cy, cm, cv), (nb, nm, nv) = _each_backend(forward, threads)
    _close_out(cy, nb, dtype, "grouped_forward y")
    _close_stat(cm, nm, dtype, "grouped mean")
    _close_stat(cv, nv, dtype, "grouped var")
    rstd = 1.0 / np.sqrt(nv + 1e-5)

    def backward(backend):
        dx = np.empty_like(x)
        gw, gb = backend.grouped_backward(x, dy, nm, rstd, G, S, w, dx)
        return dx, gw, gb

    (cdx, cgw, cgb), (ndx, ngw, ngb) = _each_backend(backward, threads)
    _close_out(cdx, ndx, dtype, "grouped_backward dx")
    _close_stat(cgw, ngw, dtype, "grouped grad_weight")
    _close_stat(cgb, ngb, dtype, "grouped grad_bias")


# (N, S, C, G)
SAMPLE_SHAPES = [(4, 100, 6, 3), (2, 3136, 64, 32), (5, 1, 4, 2), (2, 9000, 1, 1), (3, 7, 12, 12)]


@needs_numba
@pytest.mark.parametrize("shape", SAMPLE_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("threads", THREADS)
def test_samples_kernel_matches_numba(rng, shape, dtype, affine, threads):
    N, S, C, G = shape
    x = _data(rng, (N, S, C), dtype, offset=1.5)
    w = 1.0 + 0.3 * rng.standard_normal(C) if affine else None
    b = 0.5 * rng.standard_normal(C) if affine else None

    def forward(backend):
        out = np.empty_like(x)
        mean, var = backend.samples_forward(x, G, w, b, 1e-5, out)
        return out, mean, var

    (cy, cm, cv), (nb, nm, nv) = _each_backend(forward, threads)
    _close_out(cy, nb, dtype, "samples_forward y")
    _close_stat(cm, nm, dtype, "samples mean")
    _close_stat(cv, nv, dtype, "samples var")


@pytest.mark.parametrize("shape", [(1, 128, 512, 49), (3, 40, 7, 9), (2, 5, 3, 255), (1, 300, 2, 1)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nsplit", [1, 3])
@pytest.mark.parametrize("threads", [1, 2])
def test_stats_short_runs_matches_formula(rng, shape, dtype, nsplit, threads):
    """Per-channel sums over short runs read in memory order: mean and M2 within float64
    rounding of the two-pass formula, at an offset of 1e4."""
    x = _data(rng, shape, dtype, offset=1e4)
    mean, m2 = cython_cpu._need().stats_short_runs(x, nsplit, threads)
    xd = x.astype(np.float64)
    want_mean = xd.mean(axis=(1, 3))
    want_m2 = ((xd - want_mean[:, None, :, None]) ** 2).sum(axis=(1, 3))
    np.testing.assert_allclose(mean, want_mean, rtol=1e-14)
    np.testing.assert_allclose(m2, want_m2, rtol=1e-10)
    x.reshape(-1)[0] = np.inf  # an infinity: the channel's statistics are not finite
    mean, m2 = cython_cpu._need().stats_short_runs(x, nsplit, threads)
    assert not np.isfinite(mean[0, 0]) and not np.isfinite(m2[0, 0])
    assert np.isfinite(mean[:, 1:]).all()


@pytest.mark.parametrize("shape", [(4, 100, 6, 3), (3, 700, 16, 4), (2, 50, 5, 5), (5, 9, 8, 1)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("share", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_samples_backward_matches_formula(rng, shape, dtype, share, threads):
    """The per-sample backward, whole samples per thread or each sample shared by the threads,
    against the float64 formula of GroupNorm's gradients."""
    N, S, C, G = shape
    K = C // G
    x = _data(rng, (N, S, C), dtype, offset=1e3)  # an offset: dx must subtract the mean exactly
    dy = rng.standard_normal((N, S, C)).astype(dtype)
    w = 1.0 + 0.3 * rng.standard_normal(C)
    xd = x.astype(np.float64).reshape(N, S, G, K)
    mean = xd.mean(axis=(1, 3))
    rstd = 1.0 / np.sqrt(xd.var(axis=(1, 3)) + 1e-5)
    xhat = (xd - mean[:, None, :, None]) * rstd[:, None, :, None]
    g = dy.astype(np.float64).reshape(N, S, G, K) * w.reshape(G, K)
    want = rstd[:, None, :, None] * (g - g.mean(axis=(1, 3), keepdims=True)
                                     - xhat * (g * xhat).mean(axis=(1, 3), keepdims=True))
    dx = np.empty_like(x)
    gw, gb = cython_cpu._need().samples_backward(
        x, dy, np.repeat(mean, K, axis=1), np.repeat(rstd, K, axis=1), K, w, True, dx, threads,
        False, share)
    tol = 2e-5 if dtype == np.float32 else 1e-11
    np.testing.assert_allclose(dx.reshape(want.shape), want, rtol=0, atol=tol * np.abs(want).max())
    dyd = dy.astype(np.float64).reshape(N, S, G, K)
    np.testing.assert_allclose(gb, dyd.sum(axis=(0, 1)).reshape(-1), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(gw, (dyd * xhat).sum(axis=(0, 1)).reshape(-1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernels_match_reference(rng, dtype):
    """Without Numba too: the fused kernels against the float64 contract module."""
    x = _data(rng, (6, 4, 3, 50), dtype)
    out = np.empty_like(x)
    scale, shift = rng.standard_normal((6, 3)), rng.standard_normal((6, 3))
    mean = x.astype(np.float64).mean(axis=(1, 3))
    cython_cpu.apply(x, mean, scale, shift, out)
    ref = np.empty((6, 4, 3, 50))
    numpy_ref.apply(x, mean, scale, shift, ref)
    _close_out(out, ref, dtype, "apply")
    x2 = _data(rng, (9, 700), dtype)
    for center in (True, False):
        y, y_ref = np.empty_like(x2), np.empty((9, 700))
        _, v = cython_cpu.rows_forward(x2, None, None, 1e-5, center, y)
        _, v_ref = numpy_ref.rows_forward(x2, None, None, 1e-5, center, y_ref)
        _close_out(y, y_ref, dtype, "rows")
        np.testing.assert_allclose(v, v_ref, rtol=1e-6 if dtype == np.float32 else 1e-12)


# ---------------------------------------------------------------------------------------------
# threads


@pytest.mark.skipif(_cpus() < 2, reason="needs 2 CPU threads")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_and_two_threads_agree(rng, dtype):
    """Shapes big enough to run on two threads (and to split single groups) give the results of
    the serial run: exactly for the elementwise passes, to float64 rounding for statistics."""
    cases = [
        ("batch", (8, 64, 1024), 1),   # runs, group split
        ("batch", (4096, 48), 1),      # lanes
        ("group", (16, 32, 40, 40), 1),  # grouped
        ("group", (16, 40, 40, 32), -1),  # samples
        ("layer", (512, 300), None),
    ]
    for family, shape, axis in cases:
        x = _data(rng, shape, dtype)
        dy = _data(rng, shape, dtype, offset=0.0)
        results = []
        for threads in (1, 2):
            fastnorm.set_num_threads(threads)
            with fastnorm.use_backend("cython"):
                if family == "batch":
                    layer = fastnorm.BatchNorm(shape[axis], axis=axis, dtype=dtype)
                elif family == "group":
                    layer = fastnorm.GroupNorm(8, shape[axis], axis=axis, dtype=dtype)
                else:
                    layer = fastnorm.LayerNorm(shape[-1], dtype=dtype)
                y = layer(x)
                dx = layer.backward(dy)
                results.append((y, dx, layer.grad_weight, layer.grad_bias))
        for name, one, two in zip(("y", "dx", "grad_weight", "grad_bias"), *results):
            _close_out(two, one, dtype, f"{family} {shape} {name}")


def test_repeatable(rng):
    """The same call twice gives the same bits (static schedule, fixed summation order)."""
    x = _data(rng, (8, 64, 1024), np.float32)
    with fastnorm.use_backend("cython"):
        a = fastnorm.batch_norm(x, training=True)
        b = fastnorm.batch_norm(x, training=True)
        c = fastnorm.layer_norm(x, 1024)
        d = fastnorm.layer_norm(x, 1024)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(c, d)


# ---------------------------------------------------------------------------------------------
# in place: out=x on every forward kernel


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", THREADS)
def test_out_is_x(rng, dtype, threads):
    fastnorm.set_num_threads(threads)
    calls = [
        ((8, 6, 300), lambda x, **kw: fastnorm.batch_norm(x, training=True, axis=1, **kw)),
        ((8, 300, 6), lambda x, **kw: fastnorm.batch_norm(x, training=True, axis=-1, **kw)),
        ((8, 6, 300), lambda x, **kw: fastnorm.group_norm(x, 3, axis=1, **kw)),  # grouped
        ((8, 300, 6), lambda x, **kw: fastnorm.group_norm(x, 3, axis=-1, **kw)),  # samples
        ((2, 6, 300), lambda x, **kw: fastnorm.group_norm(x, 3, axis=1, **kw)),  # channels path
        ((9, 3000), lambda x, **kw: fastnorm.layer_norm(x, 3000, **kw)),
        ((9, 3000), lambda x, **kw: fastnorm.rms_norm(x, 3000, **kw)),
    ]
    with fastnorm.use_backend("cython"):
        for shape, call in calls:
            x = _data(rng, shape, dtype)
            want = call(x)
            got = call(x, out=x)
            assert got is x
            np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------------------------
# SIMD variants


def test_variant_selection(monkeypatch):
    names = [v for v, _, _ in cython_cpu.VARIANTS]
    assert names[-1] == "baseline" and cython_cpu.cpu_supports("baseline")
    assert cython_cpu.VARIANT in names
    assert cython_cpu.cpu_supports(cython_cpu.VARIANT)
    # every better variant was skipped for a reason
    for name in names[: names.index(cython_cpu.VARIANT)]:
        assert name in cython_cpu.SKIPPED_VARIANTS
    monkeypatch.setattr(cython_cpu, "cpu_features", dict)
    monkeypatch.setattr(cython_cpu.platform, "machine", lambda: "x86_64")
    assert not cython_cpu.cpu_supports("x86_64_v3")
    assert not cython_cpu.cpu_supports("x86_64_v4")
    monkeypatch.setattr(cython_cpu, "cpu_features", lambda: {"X86_V3": True, "X86_V4": False})
    assert cython_cpu.cpu_supports("x86_64_v3") and not cython_cpu.cpu_supports("x86_64_v4")
    monkeypatch.setattr(cython_cpu.platform, "machine", lambda: "aarch64")
    assert not cython_cpu.cpu_supports("x86_64_v3")
    with pytest.raises(ValueError):
        cython_cpu.cpu_supports("sse9")


def test_build_matches_source(monkeypatch):
    """The loaded build embeds the digest of the installed kernel sources; a stale build (the
    sources changed since) is not loaded."""
    assert cython_cpu._kernels.SOURCE_DIGEST == cython_cpu.source_digest()
    monkeypatch.setattr(cython_cpu, "source_digest", lambda: "0" * 16)
    module, error, skipped = cython_cpu._load()
    assert module is None
    assert "another version of the kernel sources" in error and "rebuild" in error
    reasons = ("another version", "lacks", "not built", "capped")
    assert all(any(r in why for r in reasons) for why in skipped.values())
    assert any("another version" in why for why in skipped.values())


def test_source_digest_covers_every_kernel_source(tmp_path):
    """The digest changes with the module, each included .pxi and each C header, and is None
    without the module (an installation without sources)."""
    import shutil

    from fastnorm.backends import _sources

    here = os.path.dirname(cython_cpu.__file__)
    sources = _sources.kernel_sources(here)
    names = {os.path.relpath(p, here) for p in sources}
    assert "_kernels.pyx" in names
    assert any(n.endswith(".pxi") for n in names)
    assert any(n.startswith("csrc" + os.sep) and n.endswith(".h") for n in names)
    for path in sources:
        target = tmp_path / os.path.relpath(path, here)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    digest = _sources.source_digest(str(tmp_path))
    assert digest == cython_cpu.source_digest()
    seen = {digest}
    for rel in sorted(names):
        with open(tmp_path / rel, "a") as f:
            f.write("\n")
        seen.add(_sources.source_digest(str(tmp_path)))
    assert len(seen) == len(names) + 1
    (tmp_path / "_kernels.pyx").unlink()
    assert _sources.source_digest(str(tmp_path)) is None


def _built_variants():
    found = []
    for name, module, _ in cython_cpu.VARIANTS:
        if cython_cpu.cpu_supports(name) and importlib.util.find_spec(f"fastnorm.backends.{module}"):
            found.append((name, importlib.import_module(f"fastnorm.backends.{module}")))
    return found


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_variants_agree(rng, dtype, monkeypatch):
    """Each SIMD build this CPU runs gives the results of the one in use."""
    x = _data(rng, (4, 8, 5, 333), dtype)
    x2 = _data(rng, (40, 2100), dtype)
    results = {}
    for name, module in _built_variants():
        assert module.VARIANT == name
        monkeypatch.setattr(cython_cpu, "_kernels", module)
        y = np.empty_like(x2)
        _, v = cython_cpu.rows_forward(x2, None, None, 1e-5, True, y)
        results[name] = cython_cpu.stats(x) + (y, v)
    first = results[cython_cpu.VARIANT]
    for name, res in results.items():
        for what, got, want in zip(("mean", "M2", "rows y", "rows var"), res, first):
            if what.startswith("rows y"):
                _close_out(got, want, dtype, f"{name} {what}")
            else:
                _close_stat(got, want, dtype, f"{name} {what}")


def _run(code, **env_changes):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTNORM_")}
    env.update(env_changes)
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().splitlines()


def test_variant_cap_by_environment():
    out = _run("import fastnorm; print(fastnorm.build_info()['simd_variant'])",
               FASTNORM_CPU_VARIANT="baseline")
    assert out[-1] == "baseline"


# ---------------------------------------------------------------------------------------------
# without the compiled extension


def test_unavailable_extension_is_refused(monkeypatch):
    monkeypatch.setattr(cython_cpu, "_kernels", None)
    monkeypatch.setattr(cython_cpu, "IMPORT_ERROR", "No module named 'fastnorm.backends._kernels'")
    assert "cython" not in fastnorm.available_backends()
    with pytest.raises(ValueError, match="cython.*not available.*No module named"):
        fastnorm.set_backend("cython")
    with pytest.raises(ValueError, match="No module named"), fastnorm.use_backend("cython"):
        pass  # pragma: no cover
    info = fastnorm.build_info()
    assert info["extension_built"] is False and info["simd_variant"] is None
    assert "No module named" in info["unavailable_backends"]["cython"]
    with pytest.raises(RuntimeError, match="not available"):
        cython_cpu.stats(np.ones((1, 2, 1, 2), np.float32))


# An import hook that makes every build of the extension fail to import, as in a pure-Python
# installation or a source tree that was never built.
_NO_EXTENSION = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.startswith("fastnorm.backends._kernels"):
            raise ImportError(f"No module named {name!r} (blocked)")
        return None
sys.meta_path.insert(0, _Block())
"""


def test_import_without_extension():
    code = _NO_EXTENSION + (
        "import numpy as np, fastnorm\n"
        "print('cython' in fastnorm.available_backends())\n"
        "try:\n"
        "    fastnorm.set_backend('cython')\n"
        "except ValueError as exc:\n"
        "    print('refused:', exc)\n"
        "print(fastnorm.build_info()['extension_built'])\n"
        "fastnorm.set_backend('numpy')\n"
        "print(fastnorm.batch_norm(np.arange(6.0).reshape(3, 2), training=True).shape)\n"
    )
    out = _run(code)
    assert out[0] == "False"
    assert out[1].startswith("refused:") and "blocked" in out[1] and "cython" in out[1]
    assert out[2] == "False"
    assert out[3] == "(3, 2)"


def test_env_backend_without_extension_warns():
    code = _NO_EXTENSION + "import fastnorm, warnings\nprint(fastnorm.get_backend())\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTNORM_")}
    env["FASTNORM_BACKEND"] = "cython"
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr
    assert "ignoring FASTNORM_BACKEND" in res.stderr
    assert res.stdout.strip().splitlines()[-1] in fastnorm.available_backends()


# ---------------------------------------------------------------------------------------------
# build_info, registry, cold import


def test_build_info():
    info = fastnorm.build_info()
    assert info is not fastnorm.build_info()  # a fresh dict each time
    assert info["extension_built"] is True
    assert info["openmp"] is cython_cpu.has_openmp()
    assert info["simd_variant"] == cython_cpu.VARIANT
    assert info["extension_module"] == cython_cpu._kernels.__name__
    assert info["extension_import_error"] is None
    flags = info["compile_flags"]
    assert isinstance(flags, str) and isinstance(info["compiler"], str)
    assert "-ffast-math" not in flags and "-Ofast" not in flags  # the hi/lo split relies on it
    if sys.platform != "win32":
        assert "-O3" in flags
        assert ("-fopenmp" in flags) == info["openmp"]
        if info["simd_variant"] != "baseline":
            assert "-march=" + info["simd_variant"].replace("_", "-") in flags
    assert "cython" in info["available_backends"]
    assert set(info["unavailable_backends"]) == set(backends.KNOWN_BACKENDS) - set(
        info["available_backends"])
    assert all(isinstance(why, str) and why for why in info["unavailable_backends"].values())


def test_registry_order():
    """Cython is the preferred (default) backend when built: chosen by measurement, see docs/performance.md."""
    avail = fastnorm.available_backends()
    assert avail[0] == "cython"
    if "numba" in avail:
        assert avail.index("cython") < avail.index("numba")


def test_default_backend_is_cython_and_never_imports_numba():
    code = (
        "import sys, numpy as np, fastnorm\n"
        "assert fastnorm.get_backend() == 'cython', fastnorm.get_backend()\n"
        "x = np.random.default_rng(0).standard_normal((8, 4, 5, 5)).astype(np.float32)\n"
        "fastnorm.BatchNorm2d(4)(x); fastnorm.layer_norm(x, (5, 5)); fastnorm.group_norm(x, 2)\n"
        "assert 'numba' not in sys.modules, 'numba was imported'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "FASTNORM_BACKEND"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_cython_path_never_imports_numba():
    code = (
        "import sys, numpy as np, fastnorm\n"
        "assert 'numba' not in sys.modules\n"
        "fastnorm.set_backend('cython')\n"
        "x = np.random.default_rng(0).standard_normal((32, 64, 28, 28)).astype(np.float32)\n"
        "fastnorm.batch_norm(x, None, None, training=True)\n"
        "layer = fastnorm.GroupNorm(8, 64)\n"
        "layer.backward(layer(x))\n"
        "fastnorm.layer_norm(x, 28)\n"
        "fastnorm.build_info()\n"
        "print(fastnorm.get_num_threads(), 'numba' in sys.modules)\n"
    )
    threads, numba_loaded = _run(code)[-1].split()
    assert numba_loaded == "False"
    assert int(threads) >= 1


@needs_numba
def test_thread_limit_matches_numba():
    """The thread limit computed without importing Numba is Numba's own."""
    import numba

    code = "import fastnorm.backends as b; print(b._max_threads())"
    assert int(_run(code)[-1]) == int(numba.config.NUMBA_NUM_THREADS)


@pytest.mark.skipif(not hasattr(os, "fork") or not cython_cpu.has_openmp() or _cpus() < 2,
                    reason="needs fork, OpenMP and 2 CPU threads")
def test_fork_after_threads_keeps_threads_in_child():
    """GNU OpenMP's pool does not survive a fork (the child would hang): it is released before
    the fork, so that Pool workers compute in parallel, without a warning, and get the same
    results; where the runtime cannot release it, they run on one thread with a warning
    (both paths, and Numba's, in test_fork_threads.py)."""
    code = (
        "import multiprocessing as mp, os, warnings, numpy as np, fastnorm\n"
        "fastnorm.set_backend('cython')\n"
        "fastnorm.set_num_threads(2)\n"
        "x = np.random.default_rng(0).standard_normal((64, 64, 1000)).astype(np.float32)\n"
        "want = fastnorm.batch_norm(x, training=True)\n"
        "def work(_):\n"
        "    with warnings.catch_warnings(record=True) as caught:\n"
        "        warnings.simplefilter('always')\n"
        "        y = fastnorm.batch_norm(x, training=True)\n"
        "    warned = any('forked' in str(w.message) for w in caught)\n"
        "    return bool(np.allclose(y, want, atol=1e-5)), warned, len(os.listdir('/proc/self/task')) > 1\n"
        "with mp.get_context('fork').Pool(2) as pool:\n"
        "    results = pool.map_async(work, range(2)).get(120)\n"
        "print(fastnorm.backends.cython_cpu._kernels.openmp_pause(), results)\n"  # can it release?
    )
    paused, results = _run(code)[-1].split(" ", 1)
    if paused == "True":
        assert results == "[(True, False, True), (True, False, True)]"
    else:
        assert results.startswith("[(True, True")
