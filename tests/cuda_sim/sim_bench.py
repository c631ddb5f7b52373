"""bench/gpu_bench.py runs end to end (tiny shapes; in the simulator its timings mean nothing)."""

import importlib.util
import sys
from pathlib import Path

from simhelp import SIMULATOR

BENCH = Path(__file__).resolve().parents[2] / "bench" / "gpu_bench.py"


def test_gpu_bench_smoke(capsys):
    spec = importlib.util.spec_from_file_location("gpu_bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    sys.modules["gpu_bench"] = bench
    spec.loader.exec_module(bench)
    assert bench.main(["--smoke", "--no-torch"] if SIMULATOR else ["--smoke"]) == 0
    out = capsys.readouterr().out
    assert "copy bandwidth" in out
    for name, *_ in bench.SMOKE_CASES:
        assert name in out
