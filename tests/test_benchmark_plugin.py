"""The pytest plugin (``fastnorm_pytest``, entry point ``pytest11``): its fixtures in a user's
test file, the example in ``examples/``, and that it changes nothing for other tests."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fastnorm_pytest as plugin
from fastnorm.benchmark import cases

pytest.importorskip("pytest_benchmark", reason="pytest-benchmark is not installed")

ROOT = Path(__file__).resolve().parents[1]


def _pytest(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--benchmark-disable", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False,
    )


def _passed(out: str) -> int:
    m = re.search(r"(\d+) passed", out)
    return int(m.group(1)) if m else 0


def test_registered_as_a_pytest11_entry_point():
    eps = importlib.metadata.entry_points(group="pytest11")
    assert any(e.name == "fastnorm" and e.value == "fastnorm_pytest" for e in eps)


def test_the_example_runs():
    proc = _pytest(str(ROOT / "examples" / "benchmark_my_layer_norm.py"), cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    n_cases = len(plugin.selected_cases(family="layer_norm", kind="forward"))
    n_impls = len(plugin.implementation_names())
    assert _passed(proc.stdout) == n_cases * (1 + n_impls), proc.stdout


def test_fixtures_in_a_users_file_and_inert_elsewhere(tmp_path):
    (tmp_path / "test_user.py").write_text(textwrap.dedent('''
        import numpy as np
        import pytest
        import fastnorm

        def test_plain(tmp_path):
            assert tmp_path.exists()

        @pytest.mark.norm_cases(family="rms_norm", kind="backward", small=True)
        def test_rms_backward(norm_case, norm_problem, norm_reference, norm_check):
            p = norm_problem
            layer = fastnorm.RMSNorm(norm_case.num_features, norm_case.eps)
            layer.weight[...] = p.weight
            layer(p.x)
            norm_check(layer.backward(p.dy))
            with pytest.raises(AssertionError, match="largest absolute difference"):
                norm_check(norm_reference + 1.0)

        @pytest.mark.norm_cases(label="16x64", small=True)
        def test_impls(norm_case, norm_impl, norm_check):
            norm_check(norm_impl.to_numpy(norm_impl.run()))

        @pytest.mark.norm_cases(label="LayerNorm bwd", small=True, peers=["compile"])
        def test_compiled(norm_case, norm_impl, norm_check):
            norm_check(norm_impl.to_numpy(norm_impl.run()))
    '''))
    proc = _pytest("-rA", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rms = plugin.selected_cases(family="rms_norm", kind="backward", small=True)
    small = plugin.selected_cases(label="16x64", small=True)
    impls = plugin.implementation_names()
    assert rms and small
    compiled = plugin.selected_cases(label="LayerNorm bwd", small=True)
    assert _passed(proc.stdout) == (1 + len(rms) + len(small) * len(impls)
                                    + len(compiled) * len(plugin.implementation_names(["compile"]))), proc.stdout
    assert set(plugin.implementation_names(["compile"])) - {n for n in impls if n.startswith("fastnorm")} \
        <= {"compile"}
    assert "PASSED test_user.py::test_plain" in proc.stdout


def test_selected_cases():
    everything = plugin.selected_cases()
    assert [c.label for c in everything] == [c.label for c in cases.MATRIX]
    nhwc_bwd = plugin.selected_cases(layout="NHWC", kind=["backward"])
    assert nhwc_bwd and all(c.layout == "NHWC" and c.kind == "backward" for c in nhwc_bwd)
    small = plugin.selected_cases(family=("group_norm",), small=True)
    assert small and all(c.nbytes <= 64 * 1024 for c in small)
    assert plugin.selected_cases(family="no such family") == []


def test_a_marker_selecting_nothing_is_a_usage_error(tmp_path):
    (tmp_path / "test_none.py").write_text(textwrap.dedent('''
        import pytest

        @pytest.mark.norm_cases(family="layer_norm", kind="eval")
        def test_nothing(norm_case):
            pass
    '''))
    proc = _pytest(cwd=tmp_path)
    assert proc.returncode != 0
    assert "selects no case" in proc.stdout + proc.stderr


def test_inert_for_a_suite_with_fixtures_of_the_same_names(tmp_path):
    """A suite's own norm_case / norm_impl fixtures are left alone, nothing is added to other
    tests, and loading the plugin imports neither fastnorm nor NumPy."""
    (tmp_path / "conftest.py").write_text(textwrap.dedent('''
        import pytest

        @pytest.fixture
        def norm_case():
            return "my own case"
    '''))
    (tmp_path / "test_own.py").write_text(textwrap.dedent('''
        import sys

        def test_nothing_imported():
            assert "fastnorm" not in sys.modules and "numpy" not in sys.modules

        def test_own_fixture(norm_case, request):
            assert norm_case == "my own case"
            assert request.fixturenames == ["norm_case", "request"]
    '''))
    proc = _pytest(cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _passed(proc.stdout) == 2, proc.stdout
