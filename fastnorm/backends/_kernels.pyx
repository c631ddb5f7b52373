# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled kernels of the core, built at install time (the ``cython`` backend).

The same algorithms and precision design as :mod:`fastnorm.backends.numba_cpu`,
for float32 and float64 (fused types), in both loop shapes (``*_runs`` for
``B > 1``, ``*_lanes`` for channels-last ``B == 1``) and the fused row, grouped
and samples kernels.  :mod:`fastnorm.backends.cython_cpu` is the host side
(task splitting, coefficients); the arrays it passes are C-contiguous and
non-empty.

Precision:

* reductions widen every value to float64.  They are small C functions (in
  ``csrc/fn_reduce.h``) with 4 independent vectors of partial sums, written out so that
  the compiler vectorizes them without being allowed to reassociate anything;
* statistics are blocked and merged with Chan's formula in float64; never
  ``E[x^2] - E[x]^2``.  Within a block: two passes (block mean, then sum of
  squared deviations) for the runs of the channel kernels; one pass of sums
  shifted by one of the block's values, ``M2 = S2 - S1**2 / n`` (relative
  error at most ``(1 + n) * eps64``), for a row block and, per channel, for a
  channels-last block; small inputs (``channels_small``): exact two-pass sums;
* elementwise kernels compute in the data type and subtract the float64 mean
  as a hi/lo pair, ``((x - hi) - lo) * scale + shift``.  The extension is
  built with ``-O3`` and never with ``-ffast-math``, so the compiler keeps that
  order (contracting a multiply-add into an FMA is allowed, as in Numba).

Threads: every parallel loop is a ``prange`` over tasks with ``nogil`` and a
static schedule (the same contiguous task ranges per thread as Numba's
``prange``), run by OpenMP when the build has it (``OPENMP``) and serially
otherwise.  ``num_threads == 1`` runs on the calling thread.  The output may
be the input itself (``out=x``): each value is read before its output is
written, and outputs are never used as scratch.

The same source is compiled once per SIMD level (``VARIANT``: ``baseline``,
``x86_64_v3``, ``x86_64_v4``); ``CFLAGS`` holds the flags of this build,
``COMPILER`` the C compiler, ``SOURCE_DIGEST`` a digest of the ``.pyx`` it was
built from.
"""

import numpy as np

cimport numpy as cnp
from cython.parallel cimport prange, threadid
from cpython.list cimport PyList_GET_ITEM
from cpython.pyport cimport PY_SSIZE_T_MAX
from cpython.ref cimport Py_REFCNT
from libc.float cimport DBL_EPSILON, FLT_EPSILON
from libc.math cimport sqrt
from libc.stdlib cimport free, malloc

cnp.import_array()

cdef extern from "fn_build.h":
    int FASTNORM_OPENMP
    const char* FASTNORM_VARIANT
    const char* FASTNORM_CFLAGS
    const char* FASTNORM_SOURCE_DIGEST
    const char* FASTNORM_COMPILER

OPENMP = bool(FASTNORM_OPENMP)

VARIANT = FASTNORM_VARIANT.decode()
CFLAGS = FASTNORM_CFLAGS.decode()
SOURCE_DIGEST = FASTNORM_SOURCE_DIGEST.decode()
COMPILER = FASTNORM_COMPILER.decode()

cdef extern from "fn_openmp.h":
    int fn_openmp_pause() nogil


def openmp_pause():
    """Release the calling thread's OpenMP thread pool (``omp_pause_resource_all``); returns
    whether it was released (False without OpenMP 5.0's pause, or inside a parallel region).

    Called before ``fork`` (:mod:`fastnorm.backends._openmp`): the child then starts threads
    of its own, and this process starts its pool again at its next parallel region.
    """
    return fn_openmp_pause() == 0


# The kernels, by loop shape; the C they call is in csrc/*.h.
include "_kernels_base.pxi"
include "_kernels_reductions.pxi"
include "_kernels_elementwise.pxi"
include "_kernels_epilogue.pxi"
include "_kernels_runs.pxi"
include "_kernels_lanes.pxi"
include "_kernels_rows.pxi"
include "_kernels_small.pxi"
include "_kernels_groups.pxi"
