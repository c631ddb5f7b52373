"""``python -m fastnorm bench`` (:mod:`fastnorm.benchmark`): the peer comparison runs, reports and
degrades cleanly. Tiny shapes and one round (the hidden ``--smoke`` flag) keep this fast."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

import fastnorm
from fastnorm.benchmark import cases, cli, memory, peers, report, timing

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_ORT = (
    importlib.util.find_spec("onnxruntime") is not None
    and importlib.util.find_spec("onnx") is not None
)
HAS_MPL = importlib.util.find_spec("matplotlib") is not None
BACKENDS = cli.select_backends(None)  # the default: the default backend only


@pytest.fixture(autouse=True)
def _quiet_machine_check(monkeypatch):
    monkeypatch.setattr(cli, "busy_note", lambda interval=0.5: None)  # skips a 0.5 s sample


def run_main(args, capsys, compiling=False):
    """A smoke run; ``compiling``: with torch.compile and JAX (which compile every case)."""
    code = cli.main(["bench", "--smoke", "--threads", "1",
                     *(() if compiling else ("--no-compile", "--no-jax")), *args])
    out, err = capsys.readouterr()
    return code, out, err


# -- helpers ---------------------------------------------------------------------------------


def test_geometric_mean():
    assert timing.geometric_mean([1.0, 4.0]) == pytest.approx(2.0)
    assert timing.geometric_mean([0.5, 2.0]) == pytest.approx(1.0)
    assert timing.geometric_mean(iter([0.8])) == pytest.approx(0.8)
    assert timing.geometric_mean([0.1, 1.0, 10.0, 3.0]) == pytest.approx(3.0**0.25)
    assert math.isnan(timing.geometric_mean([]))


def _result(label_shape, fn, torch=None, numpy=1.0):
    case = cases.Case("layer_norm", "forward", label_shape, -1)
    times = {"fastnorm-numba": [fn, fn * 3, fn], "numpy": [numpy]}
    if torch is not None:
        times["torch"] = [torch]
    return timing.CaseResult(case, times, errors={})


def test_ratios_and_summary():
    results = [
        _result((4, 8), fn=1.0, torch=2.0),  # 0.5
        _result((4, 16), fn=3.0, torch=2.0),  # 1.5: the worst, above 1.25
        _result((4, 32), fn=1.0),  # no torch: left out of the torch summary
    ]
    assert results[0].ratio("numba", "torch") == pytest.approx(0.5)  # medians, fastnorm / peer
    assert results[2].ratio("numba", "torch") is None
    s = timing.summarize(results, "numba", "torch")
    assert s.count == 2
    assert s.geomean == pytest.approx(math.sqrt(0.5 * 1.5))
    assert s.worst == pytest.approx(1.5) and s.worst_case == results[1].case.label
    assert s.slower == 1
    assert timing.summarize(results, "numba", "ort") is None
    lines = report.summary_lines(results, ["numba"], ["numpy", "torch"])
    assert any(
        "/ torch: geometric mean 0.87 over 2 cases" in line and "slower than torch in 1 case" in line
        for line in lines
    )
    assert not any("target" in line or "met" in line.split() for line in lines)


def test_matrix_cases():
    labels = [c.label for c in cases.MATRIX]
    assert len(labels) == len(set(labels)) == 24
    assert "GroupNorm bwd NHWC 32x56x56x64" in labels
    assert "LayerNorm bwd 6304x768" in labels and "RMSNorm bwd 6304x768" in labels
    assert "BatchNorm train fwd 32x10" in labels
    smoke = [c.label for c in map(cases.smoke_case, cases.MATRIX)]
    assert len(set(smoke)) == len(smoke)  # tiny shapes stay distinguishable


def test_memory_figure_arithmetic(monkeypatch):
    mb = 10**6
    fake = {"rss_before": 300 * mb, "peak_before": 300 * mb, "peak_after": 404 * mb,
            "rss_after": 400 * mb, "reset": True, "outputs_bytes": 100 * mb}  # fmt: skip
    monkeypatch.setattr(memory, "_run_memory_child", lambda spec, timeout=300: dict(fake))
    fig = memory.memory_figure(["numba"], peers.Runtimes(threads=1), shape=(25 * mb,))
    forward, layer = fig["rows"]
    assert forward["increase"] == 104 * mb and forward["ideal_increase"] == 100 * mb
    assert forward["over_ideal"] == pytest.approx(4 / 200)  # extra over input + output
    assert layer["ideal_increase"] == 200 * mb and layer["over_ideal"] == pytest.approx(-96 / 400)
    assert "+2.0%" in memory.memory_report(fig)


# -- the tool --------------------------------------------------------------------------------


def test_smoke_run_prints_table_and_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    code, out, _ = run_main(["--json", str(path)], capsys)
    assert code == 0
    assert "fastnorm" in out and "fn/numpy" in out and ("µs" in out or "ms" in out)
    assert "GroupNorm bwd NHWC 2x4x4x64" in out
    assert f"fastnorm-{BACKENDS[0]} / numpy: geometric mean" in out
    data = json.loads(path.read_text())
    names = peers.impl_names(BACKENDS, HAS_TORCH, HAS_ORT)
    assert [c["label"] for c in data["cases"]] == [cases.smoke_case(c).label for c in cases.MATRIX]
    for case in data["cases"]:
        assert set(case["impls"]) == set(names), case["label"]
        for name, res in case["impls"].items():
            if "skipped" in res:  # only ORT skips: backward and channels-last cases
                assert name == cases.ORT_IMPL
                assert case["kind"] == "backward" or case["layout"] == "NHWC"
                continue
            assert res["median_s"] > 0 and len(res["times_s"]) == 1
            assert res["max_abs_err"] < 1e-4, (case["label"], name)  # every peer is correct
        assert set(case["ratios"]) == set(BACKENDS)
    assert set(data["summary"]) == set(BACKENDS)
    assert data["meta"]["threads"] == 1 and data["meta"]["smoke"]


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime and onnx are not installed")
def test_ort_operator_missing_is_skipped(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(peers.ORT_OPS, "rms_norm", ("NoSuchNormalization", 23))
    path = tmp_path / "bench.json"
    code, _, _ = run_main(["--filter", "RMSNorm fwd", "--no-torch", "--json", str(path)], capsys)
    assert code == 0
    for case in json.loads(path.read_text())["cases"]:
        assert "not supported here" in case["impls"]["ort"]["skipped"]
        assert case["ratios"][BACKENDS[0]]["ort"] is None


def test_without_torch_and_ort(monkeypatch, capsys, tmp_path):
    for module in ("torch", "onnxruntime", "onnx"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails
    path = tmp_path / "bench.json"
    code, out, _ = run_main(["--filter", "LayerNorm", "--json", str(path)], capsys)
    assert code == 0
    header = next(line for line in out.splitlines() if line.lstrip().startswith("case"))
    assert "torch" not in header and "ort" not in header
    assert "note: torch: not installed" in out and "note: ort: onnxruntime is not installed" in out
    data = json.loads(path.read_text())
    assert data["meta"]["peers"] == ["numpy"]
    assert all(set(c["impls"]) == {*(f"fastnorm-{b}" for b in BACKENDS), "numpy"}
               for c in data["cases"])  # fmt: skip


def test_plot_without_matplotlib(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    path = tmp_path / "ratios.png"
    code, out, err = run_main(["--plot", str(path)], capsys)
    assert code == 2
    assert "--plot needs matplotlib (pip install matplotlib)" in err
    assert out == "" and not path.exists()


@pytest.mark.skipif(not HAS_MPL, reason="matplotlib is not installed")
def test_plot(capsys, tmp_path):
    path = tmp_path / "ratios.png"
    code, out, _ = run_main(["--filter", "RMSNorm", "--no-ort", "--plot", str(path)], capsys)
    assert code == 0 and f"plot written to {path}" in out
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_help(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert all(opt in out for opt in ("--quick", "--no-ort", "--plot", "--only", "--extras"))
    assert "--smoke" not in out


def test_no_command_prints_usage_and_version(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m fastnorm") and "bench" in out
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"fastnorm {fastnorm.__version__}"


@pytest.mark.parametrize("seconds, text", [
    (4.2e-7, "420 ns"), (1.234e-5, "12.3 µs"), (2.5e-4, "250 µs"), (4.567e-3, "4.57 ms"),
    (0.1234, "123 ms"), (1.5, "1.50 s"), (1e-3, "1.00 ms"), (2e-3, "2.00 ms"),
    (999.6e-6, "1.00 ms"), (0.9996, "1.00 s"), (999.6e-9, "1.00 µs"), (9.996e-6, "10.0 µs"),
    (5e-10, "0.50 ns"), (None, "-"), (float("nan"), "-"),
])
def test_times_are_shown_in_a_unit_that_fits(seconds, text):
    assert report.format_time(seconds) == text


def test_default_backend_only_is_timed_and_warmed(monkeypatch):
    assert cli.select_backends(None) == (fastnorm.get_backend(),) or \
        fastnorm.get_backend() in ("numpy", "cuda")
    assert cli.select_backends("all") == (peers.fast_backends() or (fastnorm.get_backend(),))
    warmed = []
    monkeypatch.setattr(fastnorm, "warmup", lambda: warmed.append(fastnorm.get_backend()))
    timing.warm_up_jit(cli.select_backends(None), [])
    assert warmed == [fastnorm.get_backend()] or fastnorm.get_backend() in ("numpy", "cuda")


def test_bad_options(capsys):
    assert cli.main(["bench", "--smoke", "--backends", "nope"]) == 2
    assert "unknown or unavailable backend" in capsys.readouterr().err
    assert cli.main(["bench", "--smoke", "--filter", "no such case"]) == 2
    assert "no case matches" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["--only", "everything"])
    assert cli.parse_args(["--quick"]).parts == ("table",)
    assert cli.parse_args(["--quick", "--extras"]).parts == cases.PARTS
    assert cli.parse_args([]).parts == cases.PARTS
    assert cli.parse_args(["--only", "memory"]).parts == ("memory",)


def test_extras_smoke(capsys, tmp_path):
    """Both extra figures on a tiny array; the memory figure in fresh subprocesses."""
    path = tmp_path / "bench.json"
    code, out, _ = run_main(
        [
            "--only",
            "bandwidth,memory",
            "--backends",
            BACKENDS[0],
            "--no-torch",
            "--json",
            str(path),
        ],
        capsys,
    )
    assert code == 0
    assert "Bandwidth: BatchNorm train forward" in out and "Memory: peak resident" in out
    data = json.loads(path.read_text())
    assert data["cases"] == []
    bw = data["bandwidth"]
    assert set(bw["impls"]) == {f"fastnorm-{BACKENDS[0]}", f"fastnorm-{BACKENDS[0]} out="}
    assert bw["copy_GBps"] > 0 and all(r["fraction_of_bound"] > 0 for r in bw["impls"].values())
    rows = data["memory"]["rows"]
    assert [(r["impl"], r["mode"]) for r in rows] == [
        (f"fastnorm-{BACKENDS[0]}", "forward"),
        (f"fastnorm-{BACKENDS[0]}", "layer"),
    ]
    assert all("error" not in r and r["peak_after"] >= r["peak_before"] for r in rows), rows


def test_cli_and_lazy_import():
    """``python -m fastnorm bench`` runs; ``import fastnorm`` imports none of the tool, and
    ``import fastnorm.benchmark`` none of the optional peers."""
    env = {**os.environ, "FASTNORM_NUM_THREADS": "1"}
    probe = (
        "import sys, fastnorm; print(sorted(m for m in"
        " ('fastnorm.benchmark', 'torch', 'onnxruntime', 'matplotlib') if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True
    )
    assert proc.stdout.strip() == "[]"
    probe = (
        "import sys, fastnorm.benchmark; print(sorted(m for m in"
        " ('torch', 'onnx', 'onnxruntime', 'matplotlib') if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True
    )
    assert proc.stdout.strip() == "[]"  # the optional peers are imported lazily
    proc = subprocess.run(
        [sys.executable, "-m", "fastnorm", "bench", "--smoke", "--filter", "RMSNorm fwd 16x10",
         "--no-torch", "--no-ort"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "RMSNorm fwd 16x10" in proc.stdout and "geometric mean" in proc.stdout


def test_compiling_peers_and_the_best_peer(tmp_path, capsys):
    """torch.compile and JAX run forward and backward cases correctly, and fn/best is fastnorm
    against the fastest peer of each case."""
    pytest.importorskip("torch", reason="PyTorch is not installed")
    pytest.importorskip("jax", reason="JAX is not installed")
    path = tmp_path / "bench.json"
    code, out, _ = run_main(["--filter", "LayerNorm fwd 16x64,GroupNorm bwd NHWC", "--no-ort",
                             "--json", str(path)], capsys, compiling=True)
    assert code == 0
    header = next(line for line in out.splitlines() if line.lstrip().startswith("case"))
    assert all(col in header for col in ("compile", "jax", "fn/compile", "fn/jax", "fn/best"))
    assert "/ best peer: geometric mean" in out
    data = json.loads(path.read_text())
    assert [c["label"] for c in data["cases"]] == ["LayerNorm fwd 16x64", "GroupNorm bwd NHWC 2x4x4x64"]
    for case in data["cases"]:
        for name in ("compile", "jax"):
            assert case["impls"][name]["max_abs_err"] < 1e-4, (case["label"], name)
        times = {n: r["median_s"] for n, r in case["impls"].items() if not n.startswith("fastnorm")}
        best = min(times, key=times.get)
        assert case["best_peer"] == best
        b = BACKENDS[0]
        fn = case["impls"]["fastnorm-" + b]["median_s"]
        assert case["ratios"][b]["best"] == pytest.approx(fn / times[best])


def test_roofline_counts_the_least_traffic(tmp_path, capsys):
    from fastnorm.benchmark import roofline

    assert roofline.traffic("batch_norm", "forward") == (2, 1)
    assert roofline.traffic("batch_norm", "backward") == (4, 1)
    assert roofline.traffic("layer_norm", "forward") == (1, 1)
    assert roofline.traffic("group_norm", "backward") == (2, 1)
    path = tmp_path / "roofline.json"
    code, out, _ = run_main(["--only", "roofline", "--filter", "RMSNorm,BatchNorm NHWC fwd",
                             "--json", str(path)], capsys)
    assert code == 0
    assert "bound = (reads + writes) x S / max(read rate, copy rate)" in out
    rows = json.loads(path.read_text())["roofline"]["rows"]
    assert [r["case"] for r in rows] == ["BatchNorm NHWC fwd", "RMSNorm fwd", "RMSNorm bwd"]
    for r in rows:
        best = max(r["read_GBps"], r["copy_GBps"]) * 1e9
        assert r["bound_ms"] == pytest.approx((r["reads"] + r["writes"]) * r["bytes"] / best * 1e3)
        assert r["of_bound"] == pytest.approx(r["bound_ms"] / r["ms"])
        assert math.prod(r["cache_shape"]) < math.prod(r["shape"]) and r["cache_ms"] > 0
        assert r["limit"] == ("compute" if r["cache_ms"] > r["bound_ms"] else "memory")
    assert "in cache = the same call on a 4 MB input" in out
