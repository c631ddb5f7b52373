"""Shared helpers of the CUDA backend tests (``tests/cuda_sim/sim_*.py``).

These modules are not collected by the main test run (their names do not
match ``test_*.py``): ``tests/test_cuda_backend.py`` runs them in a separate
pytest process with ``NUMBA_ENABLE_CUDASIM=1`` (Numba's CUDA simulator, which
must be enabled before Numba is imported), and once more without it when a
GPU is present.  Run them by hand with::

    NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cuda_sim -o python_files="sim_*.py"
"""

import sys

import numpy as np
import pytest

import fastnorm

if "cuda" not in fastnorm.available_backends():
    pytest.skip("the cuda backend needs a GPU or NUMBA_ENABLE_CUDASIM=1", allow_module_level=True)

from numba import cuda

from fastnorm.backends import cuda_gpu

SIMULATOR = cuda_gpu.SIMULATOR


def _patch_simulator_shared_arrays():
    """Make the simulator's shared-array allocation atomic.

    ``FakeCUDAShared.array`` (Numba 0.68 and numba-cuda 0.30) looks an
    allocation up and stores a new one in two steps, without a lock, so two
    simulated threads of a launch's first block can each get their own
    "shared" array and a block reduction silently loses values (rarely: the
    window is a few bytecodes).  ``dict.setdefault`` is atomic under the GIL.
    The frame arithmetic is the original's: the caller's file and line
    identify the array.
    """
    import traceback

    from numba.core import types
    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support

    original = kernelapi.FakeCUDAShared.array

    def array(self, shape, dtype):
        if shape == 0:  # dynamic shared memory: one buffer, nothing to race on
            return original(self, shape, dtype)
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        caller = traceback.extract_stack(sys._getframe())[-2][0:2]
        return self._allocations.setdefault(caller, np.empty(shape, dtype))

    kernelapi.FakeCUDAShared.array = array


def _give_kernel_modules_a_warnings_registry():
    """Create the kernels' modules' ``__warningregistry__`` before any launch.

    The simulator's ``swapped_cuda_module`` iterates over a device function's module globals
    on every call, from every simulated thread.  The first NumPy floating-point warning in a
    simulated thread (non-finite data: NumPy's error state is per thread, so a test's
    ``np.errstate`` does not reach those threads) inserts ``__warningregistry__`` into the
    globals of the module that raised it, and a thread iterating them at that moment fails
    with "dictionary changed size during iteration".  With the registry there, the globals
    never change size.
    """
    from fastnorm.backends import _cuda_kernels

    vars(_cuda_kernels).setdefault("__warningregistry__", {})
    vars(cuda_gpu).setdefault("__warningregistry__", {})


if SIMULATOR:
    _patch_simulator_shared_arrays()
    _give_kernel_modules_a_warnings_registry()
    # The simulator runs one Python thread per CUDA thread and every
    # syncthreads() is a barrier across them: hand the GIL over faster.
    sys.setswitchinterval(1e-4)

DTYPES = (np.float32, np.float64, np.float16)


def is_device(a):
    return getattr(type(a), "__cuda_ndarray__", False)


def host(a):
    """A NumPy copy of a device array (NumPy arrays pass through)."""
    return a.copy_to_host() if is_device(a) else np.asarray(a)


def dev(a):
    return cuda.to_device(np.ascontiguousarray(a))


class CAIArray:
    """A foreign array exposing only ``__cuda_array_interface__`` (as CuPy does).

    In the simulator "device" pointers are host pointers, so it wraps a NumPy
    array's memory; on a GPU it wraps a Numba device array's.
    """

    def __init__(self, values):
        self._keep = np.ascontiguousarray(values) if SIMULATOR else cuda.to_device(values)
        if SIMULATOR:
            a = self._keep
            self.__cuda_array_interface__ = {
                "shape": a.shape, "typestr": a.dtype.str, "data": (a.ctypes.data, False),
                "strides": None, "version": 3,
            }
        else:
            self.__cuda_array_interface__ = self._keep.__cuda_array_interface__

    def values(self):
        return self._keep.copy() if SIMULATOR else self._keep.copy_to_host()
