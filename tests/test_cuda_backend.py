"""The cuda backend, seen from the main test run.

The backend's own tests (``tests/cuda_sim/sim_*.py``) need Numba's CUDA simulator, which has to
be enabled (``NUMBA_ENABLE_CUDASIM=1``) before Numba is imported, and this process has imported
Numba without it.  So they run here in a second pytest process with the simulator (every
machine), and once more without it on the GPU when this machine has one.  A failure shows the
end of that run's output.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastnorm
from fastnorm.backends import _cuda_driver_present

REPO = Path(__file__).resolve().parent.parent
SUITE = REPO / "tests" / "cuda_sim"


def _gpu_here() -> bool:
    """A real GPU (not this process's simulator, if someone enabled it)."""
    if "cuda" not in fastnorm.available_backends():
        return False
    from numba import config

    return not config.ENABLE_CUDASIM


def _run(args, timeout, **env_changes):
    env = {k: v for k, v in os.environ.items()
           if k not in ("FASTNORM_BACKEND", "NUMBA_ENABLE_CUDASIM") and not k.startswith("FASTNORM_CUDA_")}
    env.update(env_changes)
    res = subprocess.run([sys.executable, *args], check=False, cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=timeout)
    return res.returncode, res.stdout + res.stderr


def _run_suite(**env_changes):
    rc, out = _run(["-m", "pytest", str(SUITE), "-o", "python_files=sim_*.py", "-q",
                    "-p", "no:cacheprovider"], 1500, **env_changes)
    tail = "\n".join(out.splitlines()[-80:])
    assert rc == 0, f"the cuda backend tests failed (exit status {rc}):\n{tail}"
    assert " passed" in out and "skipped" not in out.splitlines()[-1], tail
    print(out.splitlines()[-1])


def test_cuda_backend_in_the_simulator():
    _run_suite(NUMBA_ENABLE_CUDASIM="1")


@pytest.mark.skipif(not _gpu_here(), reason="no CUDA GPU on this machine")
def test_cuda_backend_on_the_gpu():
    _run_suite()


@pytest.mark.skipif(_gpu_here(), reason="a CUDA GPU is present")
def test_cuda_unavailable_without_gpu():
    assert "cuda" not in fastnorm.available_backends() or os.environ.get("NUMBA_ENABLE_CUDASIM")
    if "cuda" in fastnorm.available_backends():
        pytest.skip("the simulator is enabled in this process")
    before = fastnorm.get_backend()
    with pytest.raises(ValueError, match="backend 'cuda' is not available.*NUMBA_ENABLE_CUDASIM"):
        fastnorm.set_backend("cuda")
    assert fastnorm.get_backend() == before


def test_probing_cuda_is_lazy():
    """Listing the backends does not import Numba where no NVIDIA driver is visible."""
    code = ("import sys, fastnorm; print(fastnorm.available_backends()); fastnorm.build_info(); "
            "print('numba' in sys.modules)")
    rc, out = _run(["-c", code], 300)
    assert rc == 0, out
    names, numba_imported = out.strip().splitlines()[-2:]
    if not _cuda_driver_present():
        assert "cuda" not in names and numba_imported == "False", out


class _ForeignDeviceArray:
    """Looks like a CuPy array to fastnorm: only ``__cuda_array_interface__``."""

    def __init__(self, shape):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": "<f4", "data": (0, False),
                                         "version": 3, "strides": None}


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_device_arrays_need_the_cuda_backend(backend):
    """Under a CPU backend a device array is a TypeError naming the argument (never a silent copy)."""
    x = np.ones((2, 3, 4), np.float32)
    with fastnorm.use_backend(backend):
        with pytest.raises(TypeError, match=r"^x is a CUDA device array .*'cuda' backend"):
            fastnorm.batch_norm(_ForeignDeviceArray((2, 3, 4)), training=True)
        with pytest.raises(TypeError, match=r"^weight is a CUDA device array"):
            fastnorm.layer_norm(x, 4, weight=_ForeignDeviceArray((4,)))
        with pytest.raises(TypeError, match=r"^running_mean is a CUDA device array"):
            fastnorm.batch_norm(x, _ForeignDeviceArray((3,)), np.ones(3), training=True)


@pytest.mark.skipif(_gpu_here(), reason="a CUDA GPU is present")
def test_gpu_bench_without_gpu_exits_cleanly():
    rc, out = _run([str(REPO / "bench" / "gpu_bench.py")], 300)
    assert rc == 0 and "no GPU to benchmark on" in out, out
