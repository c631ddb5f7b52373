# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled kernels of the core, built at install time.

This release compiles the statistics step (blocked two-pass + Chan merge in
float64, both loop shapes) for float32 and float64; the rest of the Cython
backend follows.  ``OPENMP`` says whether the build has OpenMP (``prange`` is
serial without it).
"""

import numpy as np

from cython.parallel cimport prange

cdef extern from *:
    """
    #ifdef _OPENMP
    #define FASTNORM_OPENMP 1
    #else
    #define FASTNORM_OPENMP 0
    #endif
    """
    int FASTNORM_OPENMP

OPENMP = bool(FASTNORM_OPENMP)

ctypedef fused floating_t:
    float
    double

cdef Py_ssize_t BLOCK = 2048
cdef Py_ssize_t LANE_BLOCK = 8192


cdef void _stats_run_task(
    const floating_t* group, Py_ssize_t stride, Py_ssize_t B,
    Py_ssize_t j0, Py_ssize_t j1, double* result,
) noexcept nogil:
    """(count, mean, M2) of values j0..j1 of a group whose row a starts at group + a*stride."""
    cdef double cnt = 0.0, mean = 0.0, m2 = 0.0, s, q, d, nb, mb, tot
    cdef Py_ssize_t j = j0, je, jj, a, b, b0, b1
    cdef const floating_t* row
    while j < j1:
        je = min(j1, j + BLOCK)
        s = 0.0
        jj = j
        while jj < je:
            a = jj // B
            b0 = jj - a * B
            b1 = min(B, b0 + (je - jj))
            row = group + a * stride
            for b in range(b0, b1):
                s += <double>row[b]
            jj += b1 - b0
        nb = <double>(je - j)
        mb = s / nb
        q = 0.0
        jj = j
        while jj < je:
            a = jj // B
            b0 = jj - a * B
            b1 = min(B, b0 + (je - jj))
            row = group + a * stride
            for b in range(b0, b1):
                d = <double>row[b] - mb
                q += d * d
            jj += b1 - b0
        tot = cnt + nb
        d = mb - mean
        mean += d * (nb / tot)
        m2 += q + d * d * (cnt * nb / tot)
        cnt = tot
        j = je
    result[0] = cnt
    result[1] = mean
    result[2] = m2


cdef void _stats_lane_task(
    const floating_t* x, Py_ssize_t C, Py_ssize_t a0, Py_ssize_t a1,
    double* s, double* q, double* result, Py_ssize_t cstride,
) noexcept nogil:
    """(count, mean[C], M2[C]) of rows a0..a1 of an (A, C) slab.

    ``result[c * cstride + 0..2]`` receives channel c's (count, mean, M2).
    """
    cdef Py_ssize_t rows = max(4, LANE_BLOCK // max(C, 1))
    cdef Py_ssize_t a = a0, ae, i, c
    cdef double cnt = 0.0, nb, tot, f, w, d
    cdef const floating_t* r
    for c in range(C):
        result[c * cstride + 1] = 0.0
        result[c * cstride + 2] = 0.0
    while a < a1:
        ae = min(a1, a + rows)
        for c in range(C):
            s[c] = 0.0
            q[c] = 0.0
        for i in range(a, ae):
            r = x + i * C
            for c in range(C):
                s[c] += <double>r[c]
        nb = <double>(ae - a)
        for c in range(C):
            s[c] /= nb
        for i in range(a, ae):
            r = x + i * C
            for c in range(C):
                d = <double>r[c] - s[c]
                q[c] += d * d
        tot = cnt + nb
        f = nb / tot
        w = cnt * nb / tot
        for c in range(C):
            d = s[c] - result[c * cstride + 1]
            result[c * cstride + 1] += d * f
            result[c * cstride + 2] += q[c] + d * d * w
        cnt = tot
        a = ae
    for c in range(C):
        result[c * cstride] = cnt


cdef void _merge_parts(const double[:, :, :, ::1] part, double[:, ::1] mean, double[:, ::1] m2) noexcept nogil:
    cdef Py_ssize_t n, c, k
    cdef double cnt, mu, q, nb, tot, d
    for n in range(part.shape[0]):
        for c in range(part.shape[1]):
            cnt = 0.0
            mu = 0.0
            q = 0.0
            for k in range(part.shape[2]):
                nb = part[n, c, k, 0]
                if nb == 0.0:
                    continue
                tot = cnt + nb
                d = part[n, c, k, 1] - mu
                mu += d * (nb / tot)
                q += part[n, c, k, 2] + d * d * (cnt * nb / tot)
                cnt = tot
            mean[n, c] = mu
            m2[n, c] = q


def stats_runs(const floating_t[:, :, :, ::1] x, Py_ssize_t nsplit, int num_threads):
    """Mean and M2 per group of a non-empty ``(N, A, C, B)`` array, each group split in ``nsplit`` tasks."""
    cdef Py_ssize_t N = x.shape[0], A = x.shape[1], C = x.shape[2], B = x.shape[3]
    cdef Py_ssize_t M = A * B, chunk = (M + nsplit - 1) // nsplit
    cdef Py_ssize_t t, g, k, n, c, j0
    part_arr = np.zeros((N, C, nsplit, 3))
    cdef double[:, :, :, ::1] part = part_arr
    cdef const floating_t* base = &x[0, 0, 0, 0]
    with nogil:
        for t in prange(N * C * nsplit, num_threads=num_threads, schedule="static"):
            g = t // nsplit
            k = t - g * nsplit
            n = g // C
            c = g - n * C
            j0 = k * chunk
            _stats_run_task(base + (n * A * C + c) * B, C * B, B, j0, min(M, j0 + chunk), &part[n, c, k, 0])
    mean = np.empty((N, C))
    m2 = np.empty((N, C))
    _merge_parts(part, mean, m2)
    return mean, m2


def stats_lanes(const floating_t[:, :, ::1] x, Py_ssize_t nsplit, int num_threads):
    """Mean and M2 per ``(n, c)`` of a non-empty channels-last ``(N, A, C)`` array."""
    cdef Py_ssize_t N = x.shape[0], A = x.shape[1], C = x.shape[2]
    cdef Py_ssize_t chunk = (A + nsplit - 1) // nsplit
    cdef Py_ssize_t t, n, k, a0
    part_arr = np.zeros((N, C, nsplit, 3))
    scratch_arr = np.empty((N * nsplit, 2, C))
    cdef double[:, :, :, ::1] part = part_arr
    cdef double[:, :, ::1] scratch = scratch_arr
    cdef const floating_t* base = &x[0, 0, 0]
    with nogil:
        for t in prange(N * nsplit, num_threads=num_threads, schedule="static"):
            n = t // nsplit
            k = t - n * nsplit
            a0 = k * chunk
            _stats_lane_task(
                base + n * A * C, C, a0, min(A, a0 + chunk),
                &scratch[t, 0, 0], &scratch[t, 1, 0], &part[n, 0, k, 0], nsplit * 3,
            )
    mean = np.empty((N, C))
    m2 = np.empty((N, C))
    _merge_parts(part, mean, m2)
    return mean, m2
