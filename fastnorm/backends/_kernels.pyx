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
  this file) with 4 independent vectors of partial sums, written out so that
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
from libc.math cimport sqrt

cnp.import_array()

cdef extern from *:
    """
    #ifdef _OPENMP
    #define FASTNORM_OPENMP 1
    #else
    #define FASTNORM_OPENMP 0
    #endif
    #ifndef FASTNORM_VARIANT
    #define FASTNORM_VARIANT "baseline"
    #endif
    #ifndef FASTNORM_CFLAGS
    #define FASTNORM_CFLAGS ""
    #endif
    #ifndef FASTNORM_SOURCE_DIGEST
    #define FASTNORM_SOURCE_DIGEST ""
    #endif
    #if defined(__clang__)
    #define FASTNORM_COMPILER "clang " __clang_version__
    #elif defined(__GNUC__)
    #define FASTNORM_COMPILER "gcc " __VERSION__
    #elif defined(_MSC_VER)
    #define FASTNORM_COMPILER "msvc"
    #else
    #define FASTNORM_COMPILER "unknown"
    #endif
    """
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


cdef extern from *:
    """
    /* OpenMP 5.0's omp_pause_resource_all releases the calling thread's thread pool, so that
       a process forked afterwards starts a fresh one (GNU OpenMP's pool does not survive a
       fork: the child would hang in its first parallel region).  It is looked up at run time
       in the OpenMP runtime this module uses (the library holding omp_get_max_threads): a
       link-time reference would carry the OMP_5.0 symbol version, which a runtime without it
       (GCC < 9) refuses, and the module would not import.  The soft pause: libgomp treats
       both kinds alike, and LLVM's libomp, which survives fork by itself, keeps its threads. */
    #if defined(_OPENMP) && defined(__ELF__)
      #include <dlfcn.h>
      #include <omp.h>
      static int fn_openmp_pause(void) {
          static int (*pause_all)(int) = NULL;
          static int looked_up = 0;
          if (!looked_up) {
              Dl_info info;
              void* runtime;
              if (dladdr((void*)&omp_get_max_threads, &info) && info.dli_fname != NULL
                      && (runtime = dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD)) != NULL)
                  *(void**)&pause_all = dlsym(runtime, "omp_pause_resource_all");
              looked_up = 1;
          }
          return pause_all != NULL ? pause_all(1 /* omp_pause_soft */) : -1;
      }
    #else
      static int fn_openmp_pause(void) { return -1; }
    #endif
    """
    int fn_openmp_pause() nogil


def openmp_pause():
    """Release the calling thread's OpenMP thread pool (``omp_pause_resource_all``); returns
    whether it was released (False without OpenMP 5.0's pause, or inside a parallel region).

    Called before ``fork`` (:mod:`fastnorm.backends._openmp`): the child then starts threads
    of its own, and this process starts its pool again at its next parallel region.
    """
    return fn_openmp_pause() == 0

ctypedef fused floating_t:
    float
    double

cdef enum:
    BLOCK = 2048  # values per two-pass block (8-16 KiB: stays in L1 between the passes)
    LANE_SEGMENT = 64  # rows per shifted-sum segment of the channels-last statistics
    LANE_BLOCK = 8192  # values per block read at a time within a segment (32 KiB of float32: L1)
    LANE_MIN_ROWS = 8  # rows per block at least
    COLUMN_FLUSH = 8  # rows summed in the data type before a float64 flush (LayerNorm weight grads)



def _scratch(Py_ssize_t rows, Py_ssize_t n, dtype=np.float64):
    """Zeroed C-contiguous ``(rows, n')`` scratch, ``n' >= n``, one row per thread or task.

    Rows start on 64-byte boundaries and are a whole number of lines long, so
    threads updating their own row for every value they read never share a
    cache line (false sharing).  Only the first ``n`` values of a row are used.
    """
    cdef Py_ssize_t item = 8 if dtype is np.float64 else np.dtype(dtype).itemsize
    cdef Py_ssize_t line = 64 // item
    cdef Py_ssize_t stride = (n + line - 1) // line * line
    cdef Py_ssize_t count = max(rows, 1) * stride
    buf = np.zeros(count + line, dtype=dtype)
    cdef char[::1] raw = buf.view(np.uint8)
    cdef Py_ssize_t off = ((64 - <Py_ssize_t>(<size_t>&raw[0] % 64)) % 64) // item
    return buf[off:off + count].reshape(max(rows, 1), stride)[:rows]


cdef inline Py_ssize_t _imin(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return a if a < b else b


cdef inline Py_ssize_t _imax(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return a if a > b else b


# ----------------------------------------------------------------------------
# the innermost loops that need C: reductions, and loops with restrict pointers
# ----------------------------------------------------------------------------
#
# A reduction only vectorizes if the compiler may reorder it, and the
# extension is compiled without -ffast-math; so each contiguous reduction is
# written with 4 independent vectors of partial sums (GCC/Clang vector
# extensions; the vector width is that of the build's ISA: 2 doubles for SSE2,
# 4 for AVX, 8 for AVX-512), added up at the end; other compilers get the same
# code with scalars.  The order of the additions is fixed by the source, so a
# build always gives the same bits.  Loops that update scratch arrays next to
# the data (LayerNorm column sums, channels-last per-channel sums) declare the
# scratch ``restrict``, which Cython cannot, so that they vectorize without
# run-time alias checks.

cdef extern from *:
    """
    #include <string.h>
    #if (defined(__GNUC__) && __GNUC__ >= 9 || defined(__clang__)) && !defined(FASTNORM_SCALAR)
      #if defined(__AVX512F__)
        #define FN_VW 8
      #elif defined(__AVX__)
        #define FN_VW 4
      #else
        #define FN_VW 2
      #endif
      typedef double fn_vd __attribute__((vector_size(FN_VW * 8)));  /* FN_VW doubles */
      typedef float fn_vh __attribute__((vector_size(FN_VW * 4)));   /* FN_VW floats, widened to fn_vd */
      typedef float fn_vf __attribute__((vector_size(FN_VW * 8)));   /* 2 * FN_VW floats */
      #define FN_FW (2 * FN_VW)
      static inline fn_vd fn_ld_d(const double* p) { fn_vd v; memcpy(&v, p, sizeof v); return v; }
      /* FN_VW floats widened to doubles: one conversion from memory where the ISA has it
         (GCC splits __builtin_convertvector at 512 bits) */
      #if defined(__AVX512F__)
        #include <immintrin.h>
        static inline fn_vd fn_ld_f(const float* p) { return (fn_vd)_mm512_cvtps_pd(_mm256_loadu_ps(p)); }
      #elif defined(__AVX__)
        #include <immintrin.h>
        static inline fn_vd fn_ld_f(const float* p) { return (fn_vd)_mm256_cvtps_pd(_mm_loadu_ps(p)); }
      #elif defined(__SSE2__)
        #include <emmintrin.h>
        static inline fn_vd fn_ld_f(const float* p) {
            return (fn_vd)_mm_cvtps_pd(_mm_castsi128_ps(_mm_loadl_epi64((const __m128i*)p))); }
      #else
        static inline fn_vd fn_ld_f(const float* p) {
            fn_vh v; memcpy(&v, p, sizeof v); return __builtin_convertvector(v, fn_vd); }
      #endif
      static inline fn_vf fn_ldf(const float* p) { fn_vf v; memcpy(&v, p, sizeof v); return v; }
      static inline double fn_hsum_d(fn_vd v) {
          double s = 0.0; int k; for (k = 0; k < FN_VW; k++) s += v[k]; return s; }
      static inline double fn_hsum_f(fn_vf v) {
          double s = 0.0; int k; for (k = 0; k < FN_FW; k++) s += (double)v[k]; return s; }
    #else
      #define FN_VW 1
      #define FN_FW 1
      typedef double fn_vd;
      typedef float fn_vf;
      static inline fn_vd fn_ld_d(const double* p) { return *p; }
      static inline fn_vd fn_ld_f(const float* p) { return (double)*p; }
      static inline fn_vf fn_ldf(const float* p) { return *p; }
      static inline double fn_hsum_d(fn_vd v) { return v; }
      static inline double fn_hsum_f(fn_vf v) { return (double)v; }
    #endif
    #if defined(__GNUC__) || defined(__clang__) || defined(_MSC_VER)
      #define FN_RESTRICT __restrict
    #else
      #define FN_RESTRICT
    #endif
    #include <math.h>
    /* Non-finite data.  A statistics group's mean is sum(x) / n in IEEE arithmetic however
       the values are blocked: +inf where the group holds +inf (and no -inf or NaN), NaN where
       it holds both infinities or a NaN; its variance is then NaN.  Two things keep that
       across blocks: a Chan merge of two means where either is not finite adds them as sums
       do (inf + 1 = inf, inf - inf = NaN) instead of forming mb - ma, whose product with the
       weight would turn inf into NaN; and the shift of the shifted sums is 0 where the value
       it would be is not finite (x - inf would be NaN for every value). */
    static inline double fn_chan_mean(double ma, double mb, double f) {
        return (isfinite(ma) && isfinite(mb)) ? ma + (mb - ma) * f : ma + mb;
    }
    static inline double fn_shift(double k) { return isfinite(k) ? k : 0.0; }
    #if FN_VW > 1
      typedef long long fn_vl __attribute__((vector_size(FN_VW * 8)));
      /* fn_shift per lane: k - k is 0 exactly where k is finite */
      static inline fn_vd fn_shift_v(fn_vd k) {
          fn_vd z = k - k; fn_vl finite = (z == z); return (fn_vd)((fn_vl)k & finite); }
    #else
      #define fn_shift_v fn_shift
    #endif

    #if FN_VW > 1 && defined(__FMA__) && (defined(__x86_64__) || defined(__i386__))
      /* s + d as fma(d, 1, s): bit for bit the same sum, but on the FMA units beside the
         squares rather than on the adders, which also convert and subtract (1.45x on data in
         L2).  The asm hides the 1 from the compiler, which would
         otherwise fold the product away. */
      static inline fn_vd fn_one(void) { double one = 1.0; __asm__("" : "+x"(one)); return (fn_vd){0} + one; }
      #define FN_ACC(s, d, O) ((d) * (O) + (s))
    #else
      static inline fn_vd fn_one(void) { return (fn_vd){0} + 1.0; }
      #define FN_ACC(s, d, O) ((void)(O), (s) + (d))
    #endif
    /* Prefetching.  fn_prefetch asks for bytes from p into L2.  The fused row kernels
       (LayerNorm/RMSNorm, channels-first GroupNorm/InstanceNorm), whose first pass over a row
       reads it from memory and whose second finds it in cache, also ask in that first pass,
       line by line, for what they will read FN_PF_AHEAD bytes later: the hardware
       prefetchers see no misses while the second pass runs, and on the machine measured
       they keep too few lines in flight (LayerNorm backward (6304, 768) took 1.55x the time
       without, GroupNorm forward 1.1x).  The BatchNorm kernels, whose inputs the benchmarks
       find in the last-level cache more often, ran 1.1-1.3x slower with it and go without.
       Asking for lines past the end of an array is harmless: a prefetch never faults. */
    #ifndef FN_PF_AHEAD
      #define FN_PF_AHEAD 16384
    #endif
    static inline void fn_prefetch_at(size_t a, Py_ssize_t bytes) {  /* an address, maybe past an array */
    #if defined(__GNUC__) || defined(__clang__)
        Py_ssize_t o;
        for (o = 0; o < bytes; o += 64) __builtin_prefetch((const void*)(a + (size_t)o), 0, 2);  /* to L2 */
    #endif
    }
    static inline void fn_prefetch(const char* p, Py_ssize_t bytes) { fn_prefetch_at((size_t)p, bytes); }
    /* the lines of a loop step of `bytes` bytes from p, FN_PF_AHEAD bytes on (integer
       arithmetic: the address may lie past the end of the array) */
    #define FN_PF(p, bytes) fn_prefetch_at((size_t)(p) + FN_PF_AHEAD, (Py_ssize_t)(bytes))
    /* T: element type; S: suffix; LD: load FN_VW values as fn_vd; PF: 1 to prefetch ahead
       (FN_PF) in the reductions that read data from memory for the first time */
    #define FN_DEFINE(T, S, LD, PF)                                                              \
    /* sum(p[:n]) in float64 */                                                              \
    static inline double fn_sum_##S(const T* p, Py_ssize_t n) {                              \
        fn_vd a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};                                        \
        Py_ssize_t i = 0; double s;                                                          \
        for (; i + 4 * FN_VW <= n; i += 4 * FN_VW) {                                         \
            a0 += LD(p + i); a1 += LD(p + i + FN_VW);                                        \
            a2 += LD(p + i + 2 * FN_VW); a3 += LD(p + i + 3 * FN_VW);                        \
        }                                                                                    \
        for (; i + FN_VW <= n; i += FN_VW) a0 += LD(p + i);                                  \
        s = fn_hsum_d((a0 + a1) + (a2 + a3));                                                \
        for (; i < n; i++) s += (double)p[i];                                                \
        return s;                                                                            \
    }                                                                                        \
    /* sum((p[:n] - mu)**2) in float64 */                                                    \
    static inline double fn_sqdev_##S(const T* p, Py_ssize_t n, double mu) {                 \
        fn_vd a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, d0, d1, d2, d3;                        \
        Py_ssize_t i = 0; double s, d;                                                       \
        for (; i + 4 * FN_VW <= n; i += 4 * FN_VW) {                                         \
            d0 = LD(p + i) - mu; d1 = LD(p + i + FN_VW) - mu;                                \
            d2 = LD(p + i + 2 * FN_VW) - mu; d3 = LD(p + i + 3 * FN_VW) - mu;                \
            a0 += d0 * d0; a1 += d1 * d1; a2 += d2 * d2; a3 += d3 * d3;                      \
        }                                                                                    \
        for (; i + FN_VW <= n; i += FN_VW) { d0 = LD(p + i) - mu; a0 += d0 * d0; }           \
        s = fn_hsum_d((a0 + a1) + (a2 + a3));                                                \
        for (; i < n; i++) { d = (double)p[i] - mu; s += d * d; }                            \
        return s;                                                                            \
    }                                                                                        \
    /* s1 = sum(p - K), s2 = sum((p - K)**2), in float64 (one pass) */                       \
    static inline void fn_shifted_##S(const T* p, Py_ssize_t n, double K, double* s1,        \
                                      double* s2) {                                          \
        fn_vd a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, b0 = {0}, b1 = {0}, b2 = {0}, b3 = {0}; \
        fn_vd d0, d1, d2, d3, O = fn_one();                                                  \
        Py_ssize_t i = 0; double t1, t2, d;                                                  \
        for (; i + 4 * FN_VW <= n; i += 4 * FN_VW) {                                         \
            if (PF) FN_PF(p + i, 4 * FN_VW * sizeof(T));                                     \
            d0 = LD(p + i) - K; d1 = LD(p + i + FN_VW) - K;                                  \
            d2 = LD(p + i + 2 * FN_VW) - K; d3 = LD(p + i + 3 * FN_VW) - K;                  \
            a0 = FN_ACC(a0, d0, O); a1 = FN_ACC(a1, d1, O);                                  \
            a2 = FN_ACC(a2, d2, O); a3 = FN_ACC(a3, d3, O);                                  \
            b0 += d0 * d0; b1 += d1 * d1; b2 += d2 * d2; b3 += d3 * d3;                      \
        }                                                                                    \
        for (; i + FN_VW <= n; i += FN_VW) { d0 = LD(p + i) - K; a0 += d0; b0 += d0 * d0; }  \
        t1 = fn_hsum_d((a0 + a1) + (a2 + a3)); t2 = fn_hsum_d((b0 + b1) + (b2 + b3));        \
        for (; i < n; i++) { d = (double)p[i] - K; t1 += d; t2 += d * d; }                   \
        *s1 = t1; *s2 = t2;                                                                  \
    }                                                                                        \
    /* s1 += sum(dy), s2 += sum(dy * (x - mu)), in float64 */                                \
    static inline void fn_gsums_##S(const T* x, const T* gy, Py_ssize_t n, double mu,        \
                                    double* s1, double* s2) {                                \
        fn_vd a0 = {0}, a1 = {0}, b0 = {0}, b1 = {0}, g0, g1;                                \
        Py_ssize_t i = 0; double t1, t2, g;                                                  \
        for (; i + 2 * FN_VW <= n; i += 2 * FN_VW) {                                         \
            if (PF) { FN_PF(x + i, 2 * FN_VW * sizeof(T)); FN_PF(gy + i, 2 * FN_VW * sizeof(T)); } \
            g0 = LD(gy + i); g1 = LD(gy + i + FN_VW);                                        \
            a0 += g0; a1 += g1;                                                              \
            b0 += g0 * (LD(x + i) - mu); b1 += g1 * (LD(x + i + FN_VW) - mu);                \
        }                                                                                    \
        t1 = fn_hsum_d(a0 + a1); t2 = fn_hsum_d(b0 + b1);                                    \
        for (; i < n; i++) { g = (double)gy[i]; t1 += g; t2 += g * ((double)x[i] - mu); }    \
        *s1 += t1; *s2 += t2;                                                                \
    }                                                                                        \
    /* sum(g), sum(g * (x - mu) * rs) of a row in float64, g = dy * w */                     \
    static inline void fn_rgsums_##S(const T* x, const T* gy, const double* w, Py_ssize_t n, \
                                     double mu, double rs, double* sg, double* sgx) {        \
        fn_vd a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, b0 = {0}, b1 = {0}, b2 = {0}, b3 = {0}; \
        fn_vd g0, g1, g2, g3;                                                                \
        Py_ssize_t i = 0; double t1, t2, g;                                                  \
        for (; i + 4 * FN_VW <= n; i += 4 * FN_VW) {                                         \
            if (PF) { FN_PF(x + i, 4 * FN_VW * sizeof(T)); FN_PF(gy + i, 4 * FN_VW * sizeof(T)); } \
            g0 = LD(gy + i) * fn_ld_d(w + i); g1 = LD(gy + i + FN_VW) * fn_ld_d(w + i + FN_VW); \
            g2 = LD(gy + i + 2 * FN_VW) * fn_ld_d(w + i + 2 * FN_VW);                        \
            g3 = LD(gy + i + 3 * FN_VW) * fn_ld_d(w + i + 3 * FN_VW);                        \
            a0 += g0; a1 += g1; a2 += g2; a3 += g3;                                          \
            b0 += g0 * ((LD(x + i) - mu) * rs); b1 += g1 * ((LD(x + i + FN_VW) - mu) * rs);  \
            b2 += g2 * ((LD(x + i + 2 * FN_VW) - mu) * rs);                                  \
            b3 += g3 * ((LD(x + i + 3 * FN_VW) - mu) * rs);                                  \
        }                                                                                    \
        for (; i + FN_VW <= n; i += FN_VW) {                                                 \
            g0 = LD(gy + i) * fn_ld_d(w + i); a0 += g0; b0 += g0 * ((LD(x + i) - mu) * rs);  \
        }                                                                                    \
        t1 = fn_hsum_d((a0 + a1) + (a2 + a3)); t2 = fn_hsum_d((b0 + b1) + (b2 + b3));        \
        for (; i < n; i++) {                                                                 \
            g = (double)gy[i] * w[i]; t1 += g; t2 += g * (((double)x[i] - mu) * rs); }       \
        *sg = t1; *sgx = t2;                                                                 \
    }
    FN_DEFINE(float, f, fn_ld_f, 0)
    FN_DEFINE(double, d, fn_ld_d, 0)
    FN_DEFINE(float, pf_f, fn_ld_f, 1)
    FN_DEFINE(double, pf_d, fn_ld_d, 1)

    /* Channels-last slabs (rows of C values): per-channel sums over rows; the per-channel
       accumulators never alias the data. */
    /* The register blocks read a block of rows one channel block at a time, a stride the
       hardware prefetchers follow badly (1.3 to 4x slower from DRAM): the loop asks for the
       next block of rows in memory order instead, a few lines per row it visits, into L2
       (in L1 they would evict the block's own lines when rows are a multiple of 4 KiB). */
    #define FN_LANES(T, S, LD)                                                               \
    /* s[k] += sum over rows of (x[i, k] - K[k]), q[k] += sum of its squares, in float64,  */ \
    /* one pass (the row path's shifted sums, per channel); first: start afresh with       */ \
    /* K[k] = x[0, k], s = q = 0.  Blocks of 4 * FN_VW channels keep K, s and q in          */ \
    /* registers while the rows stream past; the last C % (4 * FN_VW) channels go four rows */ \
    /* at a time, the channel loop innermost.  ahead: bytes after the slab (the caller's    */ \
    /* next block) to prefetch meanwhile. */                                                 \
    static inline void fn_lanes_shifted_##S(const T* x, Py_ssize_t rows, Py_ssize_t C,       \
                                            double* FN_RESTRICT K, double* FN_RESTRICT s,    \
                                            double* FN_RESTRICT q, Py_ssize_t ahead,         \
                                            int first) {                                     \
        /* as many bytes per row visit as the visit reads: the next block by the last one */ \
        const Py_ssize_t step = (4 * FN_VW * (Py_ssize_t)sizeof(T) + 63) / 64 * 64;           \
        Py_ssize_t i, k = 0, k0; double d, e, f, g; const T* p;                              \
        const char* pf = (const char*)(x + rows * C);                                        \
        const char* pf_end = pf + ahead;                                                      \
        fn_vd O = fn_one(), K0, K1, K2, K3, s0, s1, s2, s3, q0, q1, q2, q3, d0, d1, d2, d3;  \
        for (; FN_VW > 1 && k + 4 * FN_VW <= C; k += 4 * FN_VW) {                            \
            if (first) {                                                                     \
                K0 = fn_shift_v(LD(x + k)); K1 = fn_shift_v(LD(x + k + FN_VW));              \
                K2 = fn_shift_v(LD(x + k + 2 * FN_VW)); K3 = fn_shift_v(LD(x + k + 3 * FN_VW)); \
                s0 = s1 = s2 = s3 = q0 = q1 = q2 = q3 = O - O;                               \
            } else {                                                                         \
                K0 = fn_ld_d(K + k); K1 = fn_ld_d(K + k + FN_VW);                            \
                K2 = fn_ld_d(K + k + 2 * FN_VW); K3 = fn_ld_d(K + k + 3 * FN_VW);            \
                s0 = fn_ld_d(s + k); s1 = fn_ld_d(s + k + FN_VW);                            \
                s2 = fn_ld_d(s + k + 2 * FN_VW); s3 = fn_ld_d(s + k + 3 * FN_VW);            \
                q0 = fn_ld_d(q + k); q1 = fn_ld_d(q + k + FN_VW);                            \
                q2 = fn_ld_d(q + k + 2 * FN_VW); q3 = fn_ld_d(q + k + 3 * FN_VW);            \
            }                                                                                \
            for (i = 0, p = x + k; i < rows; i++, p += C) {                                  \
                if (pf < pf_end) { fn_prefetch(pf, step); pf += step; }                      \
                d0 = LD(p) - K0; d1 = LD(p + FN_VW) - K1;                                    \
                d2 = LD(p + 2 * FN_VW) - K2; d3 = LD(p + 3 * FN_VW) - K3;                    \
                s0 = FN_ACC(s0, d0, O); s1 = FN_ACC(s1, d1, O);                              \
                s2 = FN_ACC(s2, d2, O); s3 = FN_ACC(s3, d3, O);                              \
                q0 += d0 * d0; q1 += d1 * d1; q2 += d2 * d2; q3 += d3 * d3;                  \
            }                                                                                \
            memcpy(K + k, &K0, sizeof K0); memcpy(K + k + FN_VW, &K1, sizeof K0);            \
            memcpy(K + k + 2 * FN_VW, &K2, sizeof K0); memcpy(K + k + 3 * FN_VW, &K3, sizeof K0); \
            memcpy(s + k, &s0, sizeof s0); memcpy(s + k + FN_VW, &s1, sizeof s0);            \
            memcpy(s + k + 2 * FN_VW, &s2, sizeof s0); memcpy(s + k + 3 * FN_VW, &s3, sizeof s0); \
            memcpy(q + k, &q0, sizeof q0); memcpy(q + k + FN_VW, &q1, sizeof q0);            \
            memcpy(q + k + 2 * FN_VW, &q2, sizeof q0); memcpy(q + k + 3 * FN_VW, &q3, sizeof q0); \
        }                                                                                    \
        k0 = k;                                                                              \
        if (k0 == C) return;                                                                 \
        if (first)                                                                           \
            for (k = k0; k < C; k++) { K[k] = fn_shift((double)x[k]); s[k] = 0.0; q[k] = 0.0; } \
        for (i = 0, p = x; i + 4 <= rows; i += 4, p += 4 * C)  /* four rows per pass, in order */ \
            for (k = k0; k < C; k++) {                                                       \
                d = (double)p[k] - K[k]; e = (double)p[k + C] - K[k];                        \
                f = (double)p[k + 2 * C] - K[k]; g = (double)p[k + 3 * C] - K[k];            \
                s[k] = (((s[k] + d) + e) + f) + g;                                           \
                q[k] = (((q[k] + d * d) + e * e) + f * f) + g * g; }                         \
        for (; i < rows; i++, p += C)                                                        \
            for (k = k0; k < C; k++) { d = (double)p[k] - K[k]; s[k] += d; q[k] += d * d; } \
    }                                                                                        \
    /* p0[k] += sum of dy[i, k], p1[k] += sum of dy[i, k] * (x[i, k] - mu[k]), in float64 */ \
    static inline void fn_lanes_gsums_##S(const T* x, const T* gy, Py_ssize_t rows,          \
                                          Py_ssize_t C, const double* FN_RESTRICT mu,        \
                                          double* FN_RESTRICT p0, double* FN_RESTRICT p1) {  \
        Py_ssize_t i = 0, k; double g0, g1, g2, g3, m;                                       \
        for (; i + 4 <= rows; i += 4, x += 4 * C, gy += 4 * C) {  /* four rows a pass, in order */ \
            for (k = 0; k < C; k++) {                                                        \
                g0 = (double)gy[k]; g1 = (double)gy[k + C];                                  \
                g2 = (double)gy[k + 2 * C]; g3 = (double)gy[k + 3 * C]; m = mu[k];           \
                p0[k] = (((p0[k] + g0) + g1) + g2) + g3;                                     \
                p1[k] = (((p1[k] + g0 * ((double)x[k] - m)) + g1 * ((double)x[k + C] - m))    \
                         + g2 * ((double)x[k + 2 * C] - m)) + g3 * ((double)x[k + 3 * C] - m); \
            }                                                                                \
        }                                                                                    \
        for (; i < rows; i++, x += C, gy += C)                                               \
            for (k = 0; k < C; k++) {                                                        \
                g0 = (double)gy[k]; p0[k] += g0; p1[k] += g0 * ((double)x[k] - mu[k]); }    \
    }
    FN_LANES(float, f, fn_ld_f)
    FN_LANES(double, d, fn_ld_d)
    /* Chan merge of a segment's per-channel shifted sums (n rows; g = count / total, f = n /
       total, w = count * n / total) into the running mean and M2, vectorized (restrict).  The
       mean as the weighted sum mean * g + mb * f, the same merge as fn_chan_mean's: it keeps
       infinities as sums do by itself, where a select between fn_chan_mean's two forms would
       keep the loop from vectorizing (the compiler may not compute both under trapping math;
       the merge took 1.1x the time of the whole statistics pass that way). */
    static inline void fn_lanes_merge(Py_ssize_t C, double n, double g, double f, double w,
                                      const double* FN_RESTRICT K, const double* FN_RESTRICT s,
                                      const double* FN_RESTRICT q, double* FN_RESTRICT mean,
                                      double* FN_RESTRICT m2) {
        Py_ssize_t k; double inv = 1.0 / n, mb, qb, d;
        for (k = 0; k < C; k++) {
            mb = K[k] + s[k] * inv;
            qb = q[k] - s[k] * (s[k] * inv);
            qb = qb < 0.0 ? 0.0 : qb;
            d = mb - mean[k];
            mean[k] = mean[k] * g + mb * f;
            m2[k] += qb + d * d * w;
        }
    }

    static inline void fn_stf(float* p, fn_vf v) { memcpy(p, &v, sizeof v); }
    static inline void fn_std(double* p, fn_vd v) { memcpy(p, &v, sizeof v); }
    /* Stores that bypass the caches (whole aligned vectors), for outputs too large to stay in
       cache: no read for ownership of lines that are overwritten whole. */
    #if FN_VW > 1 && defined(__AVX512F__)
      static inline void fn_stf_nt(float* p, fn_vf v) { _mm512_stream_ps(p, (__m512)v); }
      static inline void fn_std_nt(double* p, fn_vd v) { _mm512_stream_pd(p, (__m512d)v); }
      #define FN_NT_BYTES 64
    #elif FN_VW > 1 && defined(__AVX__)
      static inline void fn_stf_nt(float* p, fn_vf v) { _mm256_stream_ps(p, (__m256)v); }
      static inline void fn_std_nt(double* p, fn_vd v) { _mm256_stream_pd(p, (__m256d)v); }
      #define FN_NT_BYTES 32
    #elif FN_VW > 1 && defined(__SSE2__)
      static inline void fn_stf_nt(float* p, fn_vf v) { _mm_stream_ps(p, (__m128)v); }
      static inline void fn_std_nt(double* p, fn_vd v) { _mm_stream_pd(p, (__m128d)v); }
      #define FN_NT_BYTES 16
    #else
      #define fn_stf_nt fn_stf
      #define fn_std_nt fn_std
      #define FN_NT_BYTES 1
    #endif
    static inline void fn_sfence(void) {
    #if FN_VW > 1 && defined(__SSE2__)
        _mm_sfence();
    #endif
    }
    /* how many values from y to write one by one before y + head sits on an ALIGN-byte
       boundary (all n when it never does): ALIGN > 1 for the streaming stores, which need
       whole aligned vectors */
    static inline Py_ssize_t fn_head(const void* y, Py_ssize_t n, size_t size, size_t align) {
        Py_ssize_t head;
        if (align <= 1) return 0;
        head = (Py_ssize_t)(((align - (size_t)y % align) % align) / size);
        return ((size_t)y % size || head > n) ? n : head;
    }

    /* Elementwise passes, in the data type.  Each handles several vectors at a time and
       loads all of them before it stores any: a store to y then never stalls the next loads
       of x when y sits a little after x modulo 4 KiB (false store-forwarding dependencies,
       up to 1.3x).  The output may be the input (same index), never a coefficient or scratch
       array (restrict).  T: element type; S: suffix; V, W: its vector type and width; LDV:
       unaligned vector load; STV: the vector store of the output, with ALIGN its alignment
       (1: any; rows of several values: the caller checks fn_nt_ok). */
    #define FN_ELEMENTWISE(T, S, V, W, LDV, STV, ALIGN)                                      \
    /* dx = p * dy + k2 * ((x - h) - lw) * rs + k3 */                                        \
    static inline void fn_seg_grad_apply_##S(const T* x, const T* gy, T* dx, Py_ssize_t n,   \
                                             T h, T lw, T rs, T p, T k2, T k3) {             \
        Py_ssize_t i = 0, head = fn_head(dx, n, sizeof(T), ALIGN);                           \
        V a0, a1, a2, a3, g0, g1, g2, g3;                                                    \
        for (; i < head; i++) dx[i] = p * gy[i] + k2 * (((x[i] - h) - lw) * rs) + k3;        \
        for (; i + 4 * W <= n; i += 4 * W) {                                                 \
            a0 = LDV(x + i); a1 = LDV(x + i + W); a2 = LDV(x + i + 2 * W); a3 = LDV(x + i + 3 * W); \
            g0 = LDV(gy + i); g1 = LDV(gy + i + W); g2 = LDV(gy + i + 2 * W); g3 = LDV(gy + i + 3 * W); \
            a0 = p * g0 + k2 * (((a0 - h) - lw) * rs) + k3;                                  \
            a1 = p * g1 + k2 * (((a1 - h) - lw) * rs) + k3;                                  \
            a2 = p * g2 + k2 * (((a2 - h) - lw) * rs) + k3;                                  \
            a3 = p * g3 + k2 * (((a3 - h) - lw) * rs) + k3;                                  \
            STV(dx + i, a0); STV(dx + i + W, a1); STV(dx + i + 2 * W, a2); STV(dx + i + 3 * W, a3); \
        }                                                                                    \
        for (; i + W <= n; i += W) {                                                         \
            a0 = LDV(x + i); g0 = LDV(gy + i);                                               \
            STV(dx + i, p * g0 + k2 * (((a0 - h) - lw) * rs) + k3); }                        \
        for (; i < n; i++) dx[i] = p * gy[i] + k2 * (((x[i] - h) - lw) * rs) + k3;           \
    }                                                                                        \
    /* channels-last rows: dx = k1 * dy + k2 * (x - hi) * rstd + k3 (low part in k3) */      \
    static inline void fn_lanes_grad_apply_##S(                                              \
            const T* x, const T* gy, T* dx, Py_ssize_t rows, Py_ssize_t C,                   \
            const T* FN_RESTRICT hi, const T* FN_RESTRICT rs,                                \
            const T* FN_RESTRICT k1, const T* FN_RESTRICT k2, const T* FN_RESTRICT k3) {     \
        Py_ssize_t r, k; V a0, a1, g0, g1;                                                   \
        for (r = 0; r < rows; r++, x += C, gy += C, dx += C) {                               \
            k = 0;                                                                           \
            for (; k + 2 * W <= C; k += 2 * W) {                                             \
                a0 = LDV(x + k); a1 = LDV(x + k + W); g0 = LDV(gy + k); g1 = LDV(gy + k + W); \
                a0 = LDV(k1 + k) * g0 + LDV(k2 + k) * ((a0 - LDV(hi + k)) * LDV(rs + k)) + LDV(k3 + k); \
                a1 = LDV(k1 + k + W) * g1                                                    \
                     + LDV(k2 + k + W) * ((a1 - LDV(hi + k + W)) * LDV(rs + k + W)) + LDV(k3 + k + W); \
                STV(dx + k, a0); STV(dx + k + W, a1);                                        \
            }                                                                                \
            for (; k + W <= C; k += W) {                                                     \
                a0 = LDV(x + k); g0 = LDV(gy + k);                                           \
                STV(dx + k, LDV(k1 + k) * g0 + LDV(k2 + k) * ((a0 - LDV(hi + k)) * LDV(rs + k)) + LDV(k3 + k)); \
            }                                                                                \
            for (; k < C; k++) dx[k] = k1[k] * gy[k] + k2[k] * ((x[k] - hi[k]) * rs[k]) + k3[k]; \
        }                                                                                    \
    }
    FN_ELEMENTWISE(float, f, fn_vf, FN_FW, fn_ldf, fn_stf, 1)
    FN_ELEMENTWISE(double, d, fn_vd, FN_VW, fn_ld_d, fn_std, 1)
    FN_ELEMENTWISE(float, nt_f, fn_vf, FN_FW, fn_ldf, fn_stf_nt, FN_NT_BYTES)
    FN_ELEMENTWISE(double, nt_d, fn_vd, FN_VW, fn_ld_d, fn_std_nt, FN_NT_BYTES)
    /* y = AFF(((x - h) - lw) * s, w, b) along a row: the elementwise affine of LayerNorm
       and RMSNorm with a weight and a bias, a weight only, a bias only or neither (whose
       array is then never read: no all-ones or all-zeros array is made for it) */
    #define FN_ROW_AFFINE(T, NAME, V, W, LDV, STV, ALIGN, AFF)                              \
    static inline void NAME(const T* x, T* y, Py_ssize_t n, T h, T lw, T s,                 \
                            const T* FN_RESTRICT w, const T* FN_RESTRICT b) {               \
        Py_ssize_t i = 0, head = fn_head(y, n, sizeof(T), ALIGN); V a0, a1, a2, a3;         \
        (void)w; (void)b;                                                                   \
        for (; i < head; i++) y[i] = AFF(((x[i] - h) - lw) * s, w[i], b[i]);                \
        for (; i + 4 * W <= n; i += 4 * W) {                                                \
            a0 = LDV(x + i); a1 = LDV(x + i + W); a2 = LDV(x + i + 2 * W); a3 = LDV(x + i + 3 * W); \
            a0 = AFF(((a0 - h) - lw) * s, LDV(w + i), LDV(b + i));                          \
            a1 = AFF(((a1 - h) - lw) * s, LDV(w + i + W), LDV(b + i + W));                  \
            a2 = AFF(((a2 - h) - lw) * s, LDV(w + i + 2 * W), LDV(b + i + 2 * W));          \
            a3 = AFF(((a3 - h) - lw) * s, LDV(w + i + 3 * W), LDV(b + i + 3 * W));          \
            STV(y + i, a0); STV(y + i + W, a1); STV(y + i + 2 * W, a2); STV(y + i + 3 * W, a3); \
        }                                                                                   \
        for (; i + W <= n; i += W) {                                                        \
            a0 = LDV(x + i); STV(y + i, AFF(((a0 - h) - lw) * s, LDV(w + i), LDV(b + i))); } \
        for (; i < n; i++) y[i] = AFF(((x[i] - h) - lw) * s, w[i], b[i]);                   \
    }
    #define FN_AFF_WB(a, wv, bv) ((a) * (wv) + (bv))
    #define FN_AFF_W(a, wv, bv) ((a) * (wv))
    #define FN_AFF_B(a, wv, bv) ((a) + (bv))
    #define FN_AFF_NONE(a, wv, bv) (a)
    /* y = (((x - h) - lw) * s) * w + b along a row; w or b NULL: not applied */
    #define FN_ROW_NORMALIZE(T, S, V, W, LDV, STV, ALIGN)                                   \
    FN_ROW_AFFINE(T, fn_row_wb_##S, V, W, LDV, STV, ALIGN, FN_AFF_WB)                       \
    FN_ROW_AFFINE(T, fn_row_w_##S, V, W, LDV, STV, ALIGN, FN_AFF_W)                         \
    FN_ROW_AFFINE(T, fn_row_b_##S, V, W, LDV, STV, ALIGN, FN_AFF_B)                         \
    FN_ROW_AFFINE(T, fn_row_1_##S, V, W, LDV, STV, ALIGN, FN_AFF_NONE)                      \
    static inline void fn_row_normalize_##S(const T* x, T* y, Py_ssize_t n, T h, T lw, T s, \
                                            const T* w, const T* b) {                       \
        if (w != NULL && b != NULL) fn_row_wb_##S(x, y, n, h, lw, s, w, b);                 \
        else if (w != NULL) fn_row_w_##S(x, y, n, h, lw, s, w, b);                          \
        else if (b != NULL) fn_row_b_##S(x, y, n, h, lw, s, w, b);                          \
        else fn_row_1_##S(x, y, n, h, lw, s, w, b);                                         \
    }
    FN_ROW_NORMALIZE(float, f, fn_vf, FN_FW, fn_ldf, fn_stf, 1)
    FN_ROW_NORMALIZE(double, d, fn_vd, FN_VW, fn_ld_d, fn_std, 1)
    FN_ROW_NORMALIZE(float, nt_f, fn_vf, FN_FW, fn_ldf, fn_stf_nt, FN_NT_BYTES)
    FN_ROW_NORMALIZE(double, nt_d, fn_vd, FN_VW, fn_ld_d, fn_std_nt, FN_NT_BYTES)
    /* y = ((x - h) - lw) * s + o; with ALIGN > 1 the first values up to an ALIGN-byte
       boundary of y are written one by one, so that every vector store is aligned (what
       the streaming stores need) */
    #define FN_SEG_NORMALIZE(T, NAME, V, W, LDV, STV, ALIGN)                                 \
    static inline void NAME(const T* x, T* y, Py_ssize_t n, T h, T lw, T s, T o) {          \
        Py_ssize_t i = 0, head = fn_head(y, n, sizeof(T), ALIGN); V a0, a1, a2, a3;          \
        for (; i < head; i++) y[i] = ((x[i] - h) - lw) * s + o;                              \
        for (; i + 4 * W <= n; i += 4 * W) {                                                 \
            a0 = LDV(x + i); a1 = LDV(x + i + W); a2 = LDV(x + i + 2 * W); a3 = LDV(x + i + 3 * W); \
            a0 = ((a0 - h) - lw) * s + o; a1 = ((a1 - h) - lw) * s + o;                      \
            a2 = ((a2 - h) - lw) * s + o; a3 = ((a3 - h) - lw) * s + o;                      \
            STV(y + i, a0); STV(y + i + W, a1); STV(y + i + 2 * W, a2); STV(y + i + 3 * W, a3); \
        }                                                                                    \
        for (; i + W <= n; i += W) { a0 = LDV(x + i); STV(y + i, ((a0 - h) - lw) * s + o); } \
        for (; i < n; i++) y[i] = ((x[i] - h) - lw) * s + o;                                 \
    }
    FN_SEG_NORMALIZE(float, fn_seg_normalize_f, fn_vf, FN_FW, fn_ldf, fn_stf, 1)
    FN_SEG_NORMALIZE(double, fn_seg_normalize_d, fn_vd, FN_VW, fn_ld_d, fn_std, 1)
    FN_SEG_NORMALIZE(float, fn_seg_normalize_nt_f, fn_vf, FN_FW, fn_ldf, fn_stf_nt, FN_NT_BYTES)
    FN_SEG_NORMALIZE(double, fn_seg_normalize_nt_d, fn_vd, FN_VW, fn_ld_d, fn_std_nt, FN_NT_BYTES)
    /* T: element type; NAME: the function; V, W, LDV: as below; STV: the vector store */
    #define FN_LANES_NORMALIZE(T, NAME, V, W, LDV, STV)                                        \
    /* channels-last rows of C values: y = (x - hi) * scale + shift per channel (the low   \
       part of the mean is folded into shift by the caller, in float64) */                   \
    static inline void NAME(                                                                 \
            const T* x, T* y, Py_ssize_t rows, Py_ssize_t C, const T* FN_RESTRICT hi,        \
            const T* FN_RESTRICT sc, const T* FN_RESTRICT sh) {                              \
        Py_ssize_t r, k; V a0, a1, a2, a3;                                                   \
        for (r = 0; r < rows; r++, x += C, y += C) {                                         \
            k = 0;                                                                           \
            for (; k + 4 * W <= C; k += 4 * W) {                                             \
                a0 = LDV(x + k); a1 = LDV(x + k + W); a2 = LDV(x + k + 2 * W); a3 = LDV(x + k + 3 * W); \
                a0 = (a0 - LDV(hi + k)) * LDV(sc + k) + LDV(sh + k);                         \
                a1 = (a1 - LDV(hi + k + W)) * LDV(sc + k + W) + LDV(sh + k + W);             \
                a2 = (a2 - LDV(hi + k + 2 * W)) * LDV(sc + k + 2 * W) + LDV(sh + k + 2 * W); \
                a3 = (a3 - LDV(hi + k + 3 * W)) * LDV(sc + k + 3 * W) + LDV(sh + k + 3 * W); \
                STV(y + k, a0); STV(y + k + W, a1); STV(y + k + 2 * W, a2); STV(y + k + 3 * W, a3); \
            }                                                                                \
            for (; k + W <= C; k += W) {                                                     \
                a0 = LDV(x + k); STV(y + k, (a0 - LDV(hi + k)) * LDV(sc + k) + LDV(sh + k)); } \
            for (; k < C; k++) y[k] = (x[k] - hi[k]) * sc[k] + sh[k];                        \
        }                                                                                    \
    }
    FN_LANES_NORMALIZE(float, fn_lanes_normalize_f, fn_vf, FN_FW, fn_ldf, fn_stf)
    FN_LANES_NORMALIZE(double, fn_lanes_normalize_d, fn_vd, FN_VW, fn_ld_d, fn_std)
    /* the same with y written past the caches: rows of whole aligned vectors (fn_nt_ok) */
    FN_LANES_NORMALIZE(float, fn_lanes_normalize_nt_f, fn_vf, FN_FW, fn_ldf, fn_stf_nt)
    FN_LANES_NORMALIZE(double, fn_lanes_normalize_nt_d, fn_vd, FN_VW, fn_ld_d, fn_std_nt)
    /* T: element type; NAME: the function; V, W, LDV: as above; STV: the store of dx, STS:
       the store of the column sums */
    #define FN_ROW_GRAD_APPLY(T, NAME, V, W, LDV, STV, STS)                                   \
    /* dx of a LayerNorm row; adds dy * xhat and dy into the column sums gw, gb */           \
    static inline void NAME(                                                                 \
            const T* x, const T* gy, T* dx, Py_ssize_t n, T h, T lw, T s,                    \
            const T* FN_RESTRICT w, T k2, T k3, T* FN_RESTRICT gw, T* FN_RESTRICT gb) {      \
        Py_ssize_t i = 0; V x0, x1, g0, g1; T xs, gs;                                        \
        for (; i + 2 * W <= n; i += 2 * W) {                                                 \
            x0 = LDV(x + i); x1 = LDV(x + i + W); g0 = LDV(gy + i); g1 = LDV(gy + i + W);    \
            x0 = ((x0 - h) - lw) * s; x1 = ((x1 - h) - lw) * s;                              \
            STV(dx + i, (s * LDV(w + i)) * g0 + k2 * x0 + k3);                               \
            STV(dx + i + W, (s * LDV(w + i + W)) * g1 + k2 * x1 + k3);                       \
            STS(gw + i, LDV(gw + i) + g0 * x0); STS(gw + i + W, LDV(gw + i + W) + g1 * x1);  \
            STS(gb + i, LDV(gb + i) + g0); STS(gb + i + W, LDV(gb + i + W) + g1);            \
        }                                                                                    \
        for (; i < n; i++) {                                                                 \
            xs = ((x[i] - h) - lw) * s; gs = gy[i];                                          \
            dx[i] = (s * w[i]) * gs + k2 * xs + k3; gw[i] += gs * xs; gb[i] += gs;           \
        }                                                                                    \
    }
    FN_ROW_GRAD_APPLY(float, fn_row_grad_apply_f, fn_vf, FN_FW, fn_ldf, fn_stf, fn_stf)
    FN_ROW_GRAD_APPLY(double, fn_row_grad_apply_d, fn_vd, FN_VW, fn_ld_d, fn_std, fn_std)
    FN_ROW_GRAD_APPLY(float, fn_row_grad_apply_nt_f, fn_vf, FN_FW, fn_ldf, fn_stf_nt, fn_stf)
    FN_ROW_GRAD_APPLY(double, fn_row_grad_apply_nt_d, fn_vd, FN_VW, fn_ld_d, fn_std_nt, fn_std)
    #define FN_ROW_GRAD_APPLY2(T, NAME, V, W, LDV, STV, STS)                                  \
    /* the same for two rows, x[:n] and x[n:2n] (gy and dx alike), with coefficients       \
       c = (h, lw, s, k2, k3) of each in turn: per value of the column sums one load and   \
       one store for both rows (the first row's terms are added first, as row by row) */   \
    static inline void NAME(                                                                 \
            const T* x, const T* gy, T* dx, Py_ssize_t n, const T* FN_RESTRICT c,            \
            const T* FN_RESTRICT w, T* FN_RESTRICT gw, T* FN_RESTRICT gb) {                  \
        Py_ssize_t i = 0; V x0, x1, g0, g1, wv;                                              \
        const T h0 = c[0], l0 = c[1], s0 = c[2], a0 = c[3], b0 = c[4];                       \
        const T h1 = c[5], l1 = c[6], s1 = c[7], a1 = c[8], b1 = c[9];                       \
        T xs, xt, gs, gt;                                                                    \
        for (; i + W <= n; i += W) {                                                         \
            wv = LDV(w + i);                                                                 \
            x0 = LDV(x + i); x1 = LDV(x + n + i); g0 = LDV(gy + i); g1 = LDV(gy + n + i);    \
            x0 = ((x0 - h0) - l0) * s0; x1 = ((x1 - h1) - l1) * s1;                          \
            STV(dx + i, (s0 * wv) * g0 + a0 * x0 + b0);                                      \
            STV(dx + n + i, (s1 * wv) * g1 + a1 * x1 + b1);                                  \
            STS(gw + i, (LDV(gw + i) + g0 * x0) + g1 * x1);                                  \
            STS(gb + i, (LDV(gb + i) + g0) + g1);                                            \
        }                                                                                    \
        for (; i < n; i++) {                                                                 \
            xs = ((x[i] - h0) - l0) * s0; gs = gy[i];                                        \
            xt = ((x[n + i] - h1) - l1) * s1; gt = gy[n + i];                                \
            dx[i] = (s0 * w[i]) * gs + a0 * xs + b0;                                         \
            dx[n + i] = (s1 * w[i]) * gt + a1 * xt + b1;                                     \
            gw[i] = (gw[i] + gs * xs) + gt * xt; gb[i] = (gb[i] + gs) + gt;                  \
        }                                                                                    \
    }
    FN_ROW_GRAD_APPLY2(float, fn_row_grad_apply2_f, fn_vf, FN_FW, fn_ldf, fn_stf, fn_stf)
    FN_ROW_GRAD_APPLY2(double, fn_row_grad_apply2_d, fn_vd, FN_VW, fn_ld_d, fn_std, fn_std)
    FN_ROW_GRAD_APPLY2(float, fn_row_grad_apply2_nt_f, fn_vf, FN_FW, fn_ldf, fn_stf_nt, fn_stf)
    FN_ROW_GRAD_APPLY2(double, fn_row_grad_apply2_nt_d, fn_vd, FN_VW, fn_ld_d, fn_std_nt, fn_std)
    /* whether rows of row_bytes from y take only whole aligned vector stores */
    static inline int fn_nt_ok(const void* y, Py_ssize_t row_bytes) {
        return FN_NT_BYTES > 1 && (size_t)y % FN_NT_BYTES == 0 && row_bytes % FN_NT_BYTES == 0;
    }

    """
    double fn_sum_f(const float* p, Py_ssize_t n) nogil
    double fn_sum_d(const double* p, Py_ssize_t n) nogil
    double fn_sqdev_f(const float* p, Py_ssize_t n, double mu) nogil
    double fn_sqdev_d(const double* p, Py_ssize_t n, double mu) nogil
    void fn_shifted_f(const float* p, Py_ssize_t n, double K, double* s1, double* s2) nogil
    void fn_shifted_d(const double* p, Py_ssize_t n, double K, double* s1, double* s2) nogil
    void fn_shifted_pf_f(const float* p, Py_ssize_t n, double K, double* s1, double* s2) nogil
    void fn_shifted_pf_d(const double* p, Py_ssize_t n, double K, double* s1, double* s2) nogil
    void fn_gsums_f(const float* x, const float* gy, Py_ssize_t n, double mu, double* s1, double* s2) nogil
    void fn_gsums_d(const double* x, const double* gy, Py_ssize_t n, double mu, double* s1, double* s2) nogil
    void fn_gsums_pf_f(const float* x, const float* gy, Py_ssize_t n, double mu, double* s1, double* s2) nogil
    void fn_gsums_pf_d(const double* x, const double* gy, Py_ssize_t n, double mu, double* s1, double* s2) nogil
    void fn_rgsums_f(const float* x, const float* gy, const double* w, Py_ssize_t n,
                     double mu, double rs, double* sg, double* sgx) nogil
    void fn_rgsums_d(const double* x, const double* gy, const double* w, Py_ssize_t n,
                     double mu, double rs, double* sg, double* sgx) nogil
    void fn_rgsums_pf_f(const float* x, const float* gy, const double* w, Py_ssize_t n,
                     double mu, double rs, double* sg, double* sgx) nogil
    void fn_rgsums_pf_d(const double* x, const double* gy, const double* w, Py_ssize_t n,
                     double mu, double rs, double* sg, double* sgx) nogil
    void fn_row_grad_apply2_f(const float* x, const float* gy, float* dx, Py_ssize_t n, const float* c,
                              const float* w, float* gw, float* gb) nogil
    void fn_row_grad_apply2_nt_f(const float* x, const float* gy, float* dx, Py_ssize_t n, const float* c,
                                 const float* w, float* gw, float* gb) nogil
    void fn_row_grad_apply2_d(const double* x, const double* gy, double* dx, Py_ssize_t n, const double* c,
                              const double* w, double* gw, double* gb) nogil
    void fn_row_grad_apply2_nt_d(const double* x, const double* gy, double* dx, Py_ssize_t n, const double* c,
                                 const double* w, double* gw, double* gb) nogil
    void fn_row_grad_apply_f(const float* x, const float* gy, float* dx, Py_ssize_t n, float h, float lw,
                             float s, const float* w, float k2, float k3, float* gw, float* gb) nogil
    void fn_row_grad_apply_nt_f(const float* x, const float* gy, float* dx, Py_ssize_t n, float h, float lw,
                             float s, const float* w, float k2, float k3, float* gw, float* gb) nogil
    void fn_lanes_shifted_f(const float* x, Py_ssize_t rows, Py_ssize_t C, double* K, double* s, double* q,
                            Py_ssize_t ahead, bint first) nogil
    void fn_lanes_shifted_d(const double* x, Py_ssize_t rows, Py_ssize_t C, double* K, double* s, double* q,
                            Py_ssize_t ahead, bint first) nogil
    double fn_chan_mean(double ma, double mb, double f) nogil
    void fn_prefetch(const char* p, Py_ssize_t bytes) nogil
    double fn_shift(double k) nogil
    void fn_lanes_merge(Py_ssize_t C, double n, double g, double f, double w, const double* K, const double* s,
                        const double* q, double* mean, double* m2) nogil
    void fn_lanes_gsums_f(const float* x, const float* gy, Py_ssize_t rows, Py_ssize_t C,
                          const double* mu, double* p0, double* p1) nogil
    void fn_lanes_gsums_d(const double* x, const double* gy, Py_ssize_t rows, Py_ssize_t C,
                          const double* mu, double* p0, double* p1) nogil
    void fn_lanes_normalize_f(const float* x, float* y, Py_ssize_t rows, Py_ssize_t C, const float* hi,
                              const float* scale, const float* shift) nogil
    void fn_lanes_normalize_d(const double* x, double* y, Py_ssize_t rows, Py_ssize_t C, const double* hi,
                              const double* scale, const double* shift) nogil
    void fn_lanes_grad_apply_f(const float* x, const float* gy, float* dx, Py_ssize_t rows, Py_ssize_t C,
                               const float* hi, const float* rstd,
                               const float* k1, const float* k2, const float* k3) nogil
    void fn_lanes_grad_apply_nt_f(const float* x, const float* gy, float* dx, Py_ssize_t rows, Py_ssize_t C,
                               const float* hi, const float* rstd,
                               const float* k1, const float* k2, const float* k3) nogil
    void fn_lanes_grad_apply_d(const double* x, const double* gy, double* dx, Py_ssize_t rows, Py_ssize_t C,
                               const double* hi, const double* rstd,
                               const double* k1, const double* k2, const double* k3) nogil
    void fn_lanes_grad_apply_nt_d(const double* x, const double* gy, double* dx, Py_ssize_t rows, Py_ssize_t C,
                               const double* hi, const double* rstd,
                               const double* k1, const double* k2, const double* k3) nogil
    void fn_seg_normalize_f(const float* x, float* y, Py_ssize_t n, float h, float lw, float s, float o) nogil
    void fn_seg_normalize_d(const double* x, double* y, Py_ssize_t n, double h, double lw, double s,
                            double o) nogil
    void fn_seg_normalize_nt_f(const float* x, float* y, Py_ssize_t n, float h, float lw, float s,
                               float o) nogil
    void fn_seg_normalize_nt_d(const double* x, double* y, Py_ssize_t n, double h, double lw, double s,
                               double o) nogil
    void fn_sfence() nogil
    void fn_lanes_normalize_nt_f(const float* x, float* y, Py_ssize_t rows, Py_ssize_t C, const float* hi,
                                 const float* scale, const float* shift) nogil
    void fn_lanes_normalize_nt_d(const double* x, double* y, Py_ssize_t rows, Py_ssize_t C, const double* hi,
                                 const double* scale, const double* shift) nogil
    bint fn_nt_ok(const void* y, Py_ssize_t row_bytes) nogil
    void fn_seg_grad_apply_f(const float* x, const float* gy, float* dx, Py_ssize_t n, float h, float lw,
                             float rs, float p, float k2, float k3) nogil
    void fn_seg_grad_apply_nt_f(const float* x, const float* gy, float* dx, Py_ssize_t n, float h, float lw,
                             float rs, float p, float k2, float k3) nogil
    void fn_seg_grad_apply_d(const double* x, const double* gy, double* dx, Py_ssize_t n, double h,
                             double lw, double rs, double p, double k2, double k3) nogil
    void fn_seg_grad_apply_nt_d(const double* x, const double* gy, double* dx, Py_ssize_t n, double h,
                             double lw, double rs, double p, double k2, double k3) nogil
    void fn_row_normalize_f(const float* x, float* y, Py_ssize_t n, float h, float lw, float s,
                            const float* w, const float* b) nogil
    void fn_row_normalize_nt_f(const float* x, float* y, Py_ssize_t n, float h, float lw, float s,
                            const float* w, const float* b) nogil
    void fn_row_normalize_d(const double* x, double* y, Py_ssize_t n, double h, double lw, double s,
                            const double* w, const double* b) nogil
    void fn_row_normalize_nt_d(const double* x, double* y, Py_ssize_t n, double h, double lw, double s,
                            const double* w, const double* b) nogil
    void fn_row_grad_apply_d(const double* x, const double* gy, double* dx, Py_ssize_t n, double h, double lw,
                             double s, const double* w, double k2, double k3, double* gw, double* gb) nogil
    void fn_row_grad_apply_nt_d(const double* x, const double* gy, double* dx, Py_ssize_t n, double h, double lw,
                             double s, const double* w, double k2, double k3, double* gw, double* gb) nogil


cdef inline double _sum(const floating_t* p, Py_ssize_t n) noexcept nogil:
    """``sum(p[:n])`` in float64."""
    if floating_t is float:
        return fn_sum_f(p, n)
    else:
        return fn_sum_d(p, n)


cdef inline double _sum_sq_dev(const floating_t* p, Py_ssize_t n, double mu) noexcept nogil:
    """``sum((p[:n] - mu)**2)`` in float64."""
    if floating_t is float:
        return fn_sqdev_f(p, n, mu)
    else:
        return fn_sqdev_d(p, n, mu)


cdef inline void _seg_grad_sums(
    const floating_t* x, const floating_t* gy, Py_ssize_t n, double mu, double* s1, double* s2,
    bint pf,
) noexcept nogil:
    """Add ``sum(dy)`` to ``s1`` and ``sum(dy * (x - mu))`` to ``s2``, in float64; ``pf``:
    prefetch ahead (``FN_PF``)."""
    if floating_t is float:
        if pf:
            fn_gsums_pf_f(x, gy, n, mu, s1, s2)
        else:
            fn_gsums_f(x, gy, n, mu, s1, s2)
    else:
        if pf:
            fn_gsums_pf_d(x, gy, n, mu, s1, s2)
        else:
            fn_gsums_d(x, gy, n, mu, s1, s2)


cdef inline void _row_grad_sums(
    const floating_t* x, const floating_t* gy, const double* w, Py_ssize_t n,
    double mu, double rs, double* sg, double* sgx, bint pf,
) noexcept nogil:
    """``sum(g)`` and ``sum(g * xhat)`` of a row in float64, ``g = dy * w``, ``xhat = (x - mu) * rs``;
    ``pf``: prefetch ahead (``FN_PF``)."""
    if floating_t is float:
        if pf:
            fn_rgsums_pf_f(x, gy, w, n, mu, rs, sg, sgx)
        else:
            fn_rgsums_f(x, gy, w, n, mu, rs, sg, sgx)
    else:
        if pf:
            fn_rgsums_pf_d(x, gy, w, n, mu, rs, sg, sgx)
        else:
            fn_rgsums_d(x, gy, w, n, mu, rs, sg, sgx)


cdef inline void _lanes_grad_sums(
    const floating_t* x, const floating_t* gy, Py_ssize_t rows, Py_ssize_t C, const double* mu,
    double* p0, double* p1,
) noexcept nogil:
    """Per channel of ``rows`` rows of ``C`` values: ``p0 += sum(dy)``, ``p1 += sum(dy * (x - mu))``."""
    if floating_t is float:
        fn_lanes_gsums_f(x, gy, rows, C, mu, p0, p1)
    else:
        fn_lanes_gsums_d(x, gy, rows, C, mu, p0, p1)


cdef inline void _chan(double* cnt, double* mean, double* m2, double nb, double mb, double q) noexcept nogil:
    """Merge a block's (count, mean, M2) into the running (cnt, mean, m2) (Chan et al.;
    non-finite means merge as sums do: :c:func:`fn_chan_mean`)."""
    cdef double tot = cnt[0] + nb
    cdef double d = mb - mean[0]
    mean[0] = fn_chan_mean(mean[0], mb, nb / tot)
    m2[0] += q + d * d * (cnt[0] * nb / tot)
    cnt[0] = tot


cdef inline void _block_moments(const floating_t* p, Py_ssize_t n, double* mb, double* q, bint pf) noexcept nogil:
    """Mean and M2 of a block ``p[:n]`` (``n <= BLOCK``) in one pass, in float64.

    The sums are shifted by ``K = p[0]`` (0 where ``p[0]`` is not finite: :c:func:`fn_shift`):
    ``M2 = S2 - S1**2 / n`` with
    ``S1 = sum(x - K)``, ``S2 = sum((x - K)**2)``.  Its cancellation error is at
    most about ``eps64 * (1 + n * (mean - K)**2 / M2)`` relative, and since ``K``
    is one of the values, ``M2 >= (mean - K)**2``: the bound is ``(1 + n) * eps64``
    (2e-13 for a block of 2048), the same order as a two-pass sum's rounding,
    whatever the offset or magnitude of the data.  Not ``E[x^2] - E[x]^2``.
    """
    cdef double s1, s2, v, K = fn_shift(<double>p[0])
    if floating_t is float:
        if pf:
            fn_shifted_pf_f(p, n, K, &s1, &s2)
        else:
            fn_shifted_f(p, n, K, &s1, &s2)
    else:
        if pf:
            fn_shifted_pf_d(p, n, K, &s1, &s2)
        else:
            fn_shifted_d(p, n, K, &s1, &s2)
    mb[0] = K + s1 / n
    v = s2 - s1 * (s1 / n)
    q[0] = 0.0 if v < 0.0 else v  # rounding below 0 clamped; NaN kept


cdef inline void _run_moments(
    const floating_t* row, Py_ssize_t M, double* mean_out, double* m2_out, bint pf,
) noexcept nogil:
    """(mean, M2) of a contiguous run of ``M > 0`` values in float64: shifted one-pass blocks
    (:func:`_block_moments`), Chan-merged; ``pf``: prefetch ahead."""
    cdef double cnt = 0.0, mean = 0.0, m2 = 0.0, nb, mb, q
    cdef Py_ssize_t j0 = 0, j1
    if M <= BLOCK:  # one block: the merge below would give these same bits, with 2 divisions
        _block_moments(row, M, &mean, &m2, pf)
        j0 = M
    while j0 < M:
        j1 = _imin(M, j0 + BLOCK)
        nb = <double>(j1 - j0)
        _block_moments(row + j0, j1 - j0, &mb, &q, pf)
        _chan(&cnt, &mean, &m2, nb, mb, q)
        j0 = j1
    mean_out[0] = mean
    m2_out[0] = m2


cdef inline void _row_moments(
    const floating_t* row, Py_ssize_t M, bint center, double* mean_out, double* var_out, bint pf,
) noexcept nogil:
    """(mean, variance) of a contiguous row in float64; ``center=False``: (0, mean of squares),
    summed directly per block (terms of one sign: nothing cancels, and a row holding an
    infinity has an infinite mean square, as the formula says); ``pf``: prefetch ahead."""
    cdef double mean, m2
    cdef Py_ssize_t j0
    if center:
        _run_moments(row, M, &mean, &m2, pf)
        mean_out[0] = mean
        var_out[0] = m2 / M
    else:
        m2 = 0.0
        j0 = 0
        while j0 < M:
            m2 = m2 + _sum_sq_dev(row + j0, _imin(BLOCK, M - j0), 0.0)
            j0 = j0 + BLOCK
        mean_out[0] = 0.0
        var_out[0] = m2 / M


cdef double _lane_moments(
    const floating_t* x, Py_ssize_t C, Py_ssize_t a0, Py_ssize_t a1,
    double* s, double* q, double* mean, double* m2, double* shift,
) noexcept nogil:
    """Per-channel (mean, M2) of rows ``a0..a1`` of an ``(A, C)`` slab into ``mean``/``m2``; returns the count.

    Scratch: ``s``, ``q`` and ``shift``, float64 ``(C,)``.  Per segment of
    LANE_SEGMENT rows: one pass of float64 sums shifted by the segment's first
    row, ``S1 = sum(x - K)``, ``S2 = sum((x - K)**2)``, ``M2 = S2 - S1**2 / n``
    (relative error at most about ``(1 + n) * eps64``, as for a row block:
    ``K`` is one of the values), then a Chan merge.  The pass reads a segment
    in blocks of about LANE_BLOCK values (at least LANE_MIN_ROWS rows), which
    stay in L1 while it goes through them channel block by channel block.
    """
    cdef Py_ssize_t rows = _imax(LANE_MIN_ROWS, _imin(LANE_SEGMENT, LANE_BLOCK // _imax(C, 1)))
    cdef Py_ssize_t a = a0, ae, be, b, k, ahead
    cdef double cnt = 0.0, nb, tot, f, w
    for k in range(C):
        mean[k] = 0.0
        m2[k] = 0.0
    while a < a1:
        ae = _imin(a1, a + LANE_SEGMENT)
        b = a
        while b < ae:
            be = _imin(ae, b + rows)
            ahead = (_imin(a1, be + rows) - be) * C * <Py_ssize_t>sizeof(floating_t)
            if floating_t is float:
                fn_lanes_shifted_f(x + b * C, be - b, C, shift, s, q, ahead, b == a)
            else:
                fn_lanes_shifted_d(x + b * C, be - b, C, shift, s, q, ahead, b == a)
            b = be
        nb = <double>(ae - a)
        tot = cnt + nb
        f = nb / tot
        w = cnt * nb / tot
        fn_lanes_merge(C, nb, cnt / tot, f, w, shift, s, q, mean, m2)
        cnt = tot
        a = ae
    return cnt


# ----------------------------------------------------------------------------
# elementwise pieces, in the data type
# ----------------------------------------------------------------------------


cdef inline void _seg_normalize(
    const floating_t* x, floating_t* y, Py_ssize_t n,
    floating_t h, floating_t lw, floating_t s, floating_t o, bint stream,
) noexcept nogil:
    """``y = ((x - h) - lw) * s + o``; ``stream``: ``y`` written past the caches (the caller
    issues ``fn_sfence``)."""
    if floating_t is float:
        if stream:
            fn_seg_normalize_nt_f(x, y, n, h, lw, s, o)
        else:
            fn_seg_normalize_f(x, y, n, h, lw, s, o)
    else:
        if stream:
            fn_seg_normalize_nt_d(x, y, n, h, lw, s, o)
        else:
            fn_seg_normalize_d(x, y, n, h, lw, s, o)


cdef inline void _seg_grad_apply(
    const floating_t* x, const floating_t* gy, floating_t* dx, Py_ssize_t n,
    floating_t h, floating_t lw, floating_t rs, floating_t p, floating_t k2, floating_t k3, bint stream,
) noexcept nogil:
    """``stream``: ``dx`` written past the caches (the caller issues ``fn_sfence``)."""
    if floating_t is float:
        if stream:
            fn_seg_grad_apply_nt_f(x, gy, dx, n, h, lw, rs, p, k2, k3)
        else:
            fn_seg_grad_apply_f(x, gy, dx, n, h, lw, rs, p, k2, k3)
    else:
        if stream:
            fn_seg_grad_apply_nt_d(x, gy, dx, n, h, lw, rs, p, k2, k3)
        else:
            fn_seg_grad_apply_d(x, gy, dx, n, h, lw, rs, p, k2, k3)


cdef inline void _row_normalize(
    const floating_t* x, floating_t* y, Py_ssize_t n, floating_t h, floating_t lw, floating_t s,
    const floating_t* w, const floating_t* b, bint stream,
) noexcept nogil:
    """``stream``: ``y`` written past the caches (the caller issues ``fn_sfence``)."""
    if floating_t is float:
        if stream:
            fn_row_normalize_nt_f(x, y, n, h, lw, s, w, b)
        else:
            fn_row_normalize_f(x, y, n, h, lw, s, w, b)
    else:
        if stream:
            fn_row_normalize_nt_d(x, y, n, h, lw, s, w, b)
        else:
            fn_row_normalize_d(x, y, n, h, lw, s, w, b)


cdef inline void _row_grad_apply(
    const floating_t* x, const floating_t* gy, floating_t* dx, Py_ssize_t n,
    floating_t h, floating_t lw, floating_t s, const floating_t* w, floating_t k2, floating_t k3,
    floating_t* gw, floating_t* gb, bint stream,
) noexcept nogil:
    """``dx`` of a row; adds the row's ``dy * xhat`` and ``dy`` into the column sums ``gw``, ``gb``.

    In C: ``w``, ``gw`` and ``gb`` are declared not to alias, so the loop vectorizes.
    ``stream``: write ``dx`` past the caches (whole aligned vectors: :c:func:`fn_nt_ok`;
    the caller issues ``fn_sfence``).
    """
    if floating_t is float:
        if stream:
            fn_row_grad_apply_nt_f(x, gy, dx, n, h, lw, s, w, k2, k3, gw, gb)
        else:
            fn_row_grad_apply_f(x, gy, dx, n, h, lw, s, w, k2, k3, gw, gb)
    else:
        if stream:
            fn_row_grad_apply_nt_d(x, gy, dx, n, h, lw, s, w, k2, k3, gw, gb)
        else:
            fn_row_grad_apply_d(x, gy, dx, n, h, lw, s, w, k2, k3, gw, gb)


cdef inline void _row_grad_apply2(
    const floating_t* x, const floating_t* gy, floating_t* dx, Py_ssize_t n, const floating_t* c,
    const floating_t* w, floating_t* gw, floating_t* gb, bint stream,
) noexcept nogil:
    """:func:`_row_grad_apply` of two consecutive rows (``x[:n]``, ``x[n:2n]``), ``c`` their
    coefficients ``(h, lw, s, k2, k3)`` one row after the other."""
    if floating_t is float:
        if stream:
            fn_row_grad_apply2_nt_f(x, gy, dx, n, c, w, gw, gb)
        else:
            fn_row_grad_apply2_f(x, gy, dx, n, c, w, gw, gb)
    else:
        if stream:
            fn_row_grad_apply2_nt_d(x, gy, dx, n, c, w, gw, gb)
        else:
            fn_row_grad_apply2_d(x, gy, dx, n, c, w, gw, gb)


cdef inline void _lanes_normalize(
    const floating_t* x, floating_t* y, Py_ssize_t A, Py_ssize_t C,
    const floating_t* hi, const floating_t* scale, const floating_t* shift, bint stream=False,
) noexcept nogil:
    """``y = (x - hi) * scale + shift`` on ``A`` rows of ``C`` values, coefficients per channel.

    The low part of the mean is in ``shift`` (``shift - lo * scale``, formed in float64).
    ``stream``: ``y`` written past the caches (``fn_nt_ok(y, C * itemsize)`` must hold; the
    caller issues ``fn_sfence``).
    """
    if floating_t is float:
        if stream:
            fn_lanes_normalize_nt_f(x, y, A, C, hi, scale, shift)
        else:
            fn_lanes_normalize_f(x, y, A, C, hi, scale, shift)
    else:
        if stream:
            fn_lanes_normalize_nt_d(x, y, A, C, hi, scale, shift)
        else:
            fn_lanes_normalize_d(x, y, A, C, hi, scale, shift)


cdef inline void _lanes_grad_apply(
    const floating_t* x, const floating_t* gy, floating_t* dx, Py_ssize_t A, Py_ssize_t C,
    const floating_t* hi, const floating_t* rstd,
    const floating_t* k1, const floating_t* k2, const floating_t* k3, bint stream,
) noexcept nogil:
    """``dx = k1 * dy + k2 * (x - hi) * rstd + k3`` on ``A`` rows of ``C`` values (lo folded into ``k3``).

    ``stream``: ``dx`` written past the caches; its rows must take whole aligned vectors
    (``fn_nt_ok``); the caller issues ``fn_sfence``.
    """
    if floating_t is float:
        if stream:
            fn_lanes_grad_apply_nt_f(x, gy, dx, A, C, hi, rstd, k1, k2, k3)
        else:
            fn_lanes_grad_apply_f(x, gy, dx, A, C, hi, rstd, k1, k2, k3)
    else:
        if stream:
            fn_lanes_grad_apply_nt_d(x, gy, dx, A, C, hi, rstd, k1, k2, k3)
        else:
            fn_lanes_grad_apply_d(x, gy, dx, A, C, hi, rstd, k1, k2, k3)


# ----------------------------------------------------------------------------
# epilogues: the elementwise work after a normalization (a shortcut added, an
# activation, or in the gradient mode the activation's derivative), applied to
# a block of normalized values while it sits in L1, so that the output is
# written once
# ----------------------------------------------------------------------------

cdef extern from *:
    """
    #define FN_EPI_BLOCK 1024
    enum { FN_ACT_NONE = 0, FN_ACT_RELU = 1, FN_ACT_LEAKY = 2, FN_ACT_GELU = 3,
           FN_ACT_GELU_TANH = 4, FN_ACT_SILU = 5 };
    /* act: FN_ACT_*; slope: leaky_relu's negative slope; res: added to the normalized value
       before the activation (NULL: nothing); dy: NULL for the forward, y = act(z + res), else
       the gradient mode, y = dy * act'(z + res); out: the output array, whose layout res and
       dy share (an output value at out + i takes res[i] and dy[i]). */
    typedef struct { int act; double slope; const void* res; const void* dy; const void* out; } fn_epi;

    #if FN_VW > 1
      #define FN_SEL(m, a, b) ((fn_vd)(((fn_vl)(a) & (m)) | ((fn_vl)(b) & ~(m))))
      static inline fn_vd fn_splat(double c) { return (fn_vd){0} + c; }
      static inline fn_vd fn_pow2_of(fn_vd shifted) {  /* 2**k from k + 1.5 * 2**52 */
          fn_vl b = (fn_vl)shifted; b = ((b - 0x4338000000000000LL) + 1023) << 52; return (fn_vd)b; }
      typedef float fn_vh_st __attribute__((vector_size(FN_VW * 4)));
      static inline void fn_st_h(float* p, fn_vd v) {
          fn_vh_st h = __builtin_convertvector(v, fn_vh_st); memcpy(p, &h, sizeof h); }
      static inline fn_vd fn_absd(fn_vd v) {
          fn_vl m = (fn_vl){0} + 0x7fffffffffffffffLL; return (fn_vd)((fn_vl)v & m); }
    #else
      #define FN_SEL(m, a, b) ((m) ? (a) : (b))
      static inline fn_vd fn_splat(double c) { return c; }
      static inline fn_vd fn_pow2_of(double shifted) {
          long long b; double s; memcpy(&b, &shifted, sizeof b);
          b = ((b - 0x4338000000000000LL) + 1023) << 52; memcpy(&s, &b, sizeof s); return s; }
      static inline void fn_st_h(float* p, fn_vd v) { *p = (float)v; }
      static inline fn_vd fn_absd(fn_vd v) { return fabs(v); }
    #endif
    /* exp(x) for float32 results, with neither branches nor calls, so that its loops
       vectorize: x clamped to [-708, 708], reduced by ln 2 (Cody-Waite), a degree-9 Taylor
       polynomial on |r| <= ln(2) / 2; relative error below 1e-11 */
    static inline fn_vd fn_exp_v(fn_vd x) {
        const double shifter = 6755399441055744.0;  /* 1.5 * 2**52: adding it rounds to an integer */
        fn_vd kd, r, p, lo = fn_splat(-708.0), hi = fn_splat(708.0);
        x = FN_SEL(x < lo, lo, x);
        x = FN_SEL(x > hi, hi, x);
        kd = x * 1.4426950408889634 + shifter;
        p = fn_pow2_of(kd);
        kd = kd - shifter;
        r = (x - kd * 0.6931471805598903) - kd * 5.497923018708371e-14;
        return p * (((((((((r * (1.0 / 362880.0) + 1.0 / 40320.0) * r + 1.0 / 5040.0) * r + 1.0 / 720.0) * r
                       + 1.0 / 120.0) * r + 1.0 / 24.0) * r + 1.0 / 6.0) * r + 0.5) * r + 1.0) * r + 1.0);
    }
    /* erfc(a) for a >= 0 and float32 results: exp(-a**2) * t * P(u), t = 2 / (2 + a), u = t
       mapped from [2/13, 1] to [-1, 1], P of degree 12 fitted (Chebyshev, then in powers of u)
       to erfcx(a) / t on a in [0, 11] (relative error below 1e-9); a is clamped to 11, past
       which GELU's float32 value is 0 */
    static inline fn_vd fn_erfc_v(fn_vd a) {
        const double tmin = 2.0 / 13.0;
        fn_vd t, u, p, top = fn_splat(11.0);
        a = FN_SEL(a > top, top, a);
        t = 2.0 / (a + 2.0);
        u = (t * 2.0 - (1.0 + tmin)) * (1.0 / (1.0 - tmin));
        p = u * -4.380501917472733e-07 - 2.4099092070161246e-06;
        p = p * u + 7.558935153986504e-06; p = p * u + 1.307854411144275e-05;
        p = p * u - 7.736941116504336e-05; p = p * u + 8.275034296243754e-06;
        p = p * u + 0.0006533057997458946; p = p * u - 0.0007256661275277697;
        p = p * u - 0.006489026872036286; p = p * u + 0.0066367474009129766;
        p = p * u + 0.10490060760189608; p = p * u + 0.3280580417073712;
        p = p * u + 0.5670172947011811;
        return fn_exp_v(-(a * a)) * t * p;
    }
    #define FN_SQRT1_2 0.70710678118654752440
    #define FN_SQRT2_PI 0.79788456080286535588   /* sqrt(2 / pi) */
    #define FN_INV_SQRT_2PI 0.39894228040143267794
    /* the smooth activations of v and their derivatives, in float64 vectors */
    static inline fn_vd fn_gelu_v(fn_vd v) {
        fn_vd e = fn_erfc_v(fn_absd(v) * FN_SQRT1_2) * 0.5, zero = fn_splat(0.0);
        return v * FN_SEL(v >= zero, 1.0 - e, e);
    }
    static inline fn_vd fn_dgelu_v(fn_vd v) {
        fn_vd e = fn_erfc_v(fn_absd(v) * FN_SQRT1_2) * 0.5, zero = fn_splat(0.0);
        return FN_SEL(v >= zero, 1.0 - e, e) + v * fn_exp_v(v * v * -0.5) * FN_INV_SQRT_2PI;
    }
    static inline fn_vd fn_sigmoid_v(fn_vd t) { return 1.0 / (fn_exp_v(-t) + 1.0); }
    static inline fn_vd fn_gelu_tanh_v(fn_vd v) {  /* 0.5 v (1 + tanh(u)) = v sigmoid(2 u) */
        return v * fn_sigmoid_v((v + v * v * v * 0.044715) * (2.0 * FN_SQRT2_PI));
    }
    static inline fn_vd fn_dgelu_tanh_v(fn_vd v) {
        fn_vd s = fn_sigmoid_v((v + v * v * v * 0.044715) * (2.0 * FN_SQRT2_PI));
        return s + v * (s * (1.0 - s)) * ((v * v * (3.0 * 0.044715) + 1.0) * (2.0 * FN_SQRT2_PI));
    }
    static inline fn_vd fn_silu_v(fn_vd v) { return v * fn_sigmoid_v(v); }
    static inline fn_vd fn_dsilu_v(fn_vd v) { fn_vd s = fn_sigmoid_v(v); return s * (v * (1.0 - s) + 1.0); }
    /* the same in float64 with the C library, for float64 data */
    static inline double fn_gelu_d(double v) { return 0.5 * v * erfc(-v * FN_SQRT1_2); }
    static inline double fn_dgelu_d(double v) {
        return 0.5 * erfc(-v * FN_SQRT1_2) + v * exp(-0.5 * v * v) * FN_INV_SQRT_2PI; }
    static inline double fn_sigmoid_d(double t) { return 1.0 / (1.0 + exp(-t)); }
    static inline double fn_gelu_tanh_d(double v) {
        return v * fn_sigmoid_d(2.0 * FN_SQRT2_PI * (v + 0.044715 * v * v * v)); }
    static inline double fn_dgelu_tanh_d(double v) {
        double s = fn_sigmoid_d(2.0 * FN_SQRT2_PI * (v + 0.044715 * v * v * v));
        return s + v * (s * (1.0 - s)) * (2.0 * FN_SQRT2_PI * (1.0 + 3.0 * 0.044715 * v * v)); }
    static inline double fn_silu_d(double v) { return v * fn_sigmoid_d(v); }
    static inline double fn_dsilu_d(double v) { double s = fn_sigmoid_d(v); return s * (1.0 + v * (1.0 - s)); }

    /* a smooth activation (or, with G, dy times its derivative) over z[:n] in place, float32
       data in float64 vectors, rounded once */
    #define FN_EPI_SMOOTH_F(FN, G)                                                          \
        for (i = 0; i + 2 * FN_VW <= n; i += 2 * FN_VW) {  /* two chains in flight */       \
            fn_vd v = FN(fn_ld_f(z + i)), w = FN(fn_ld_f(z + i + FN_VW));                   \
            if (G) { v = v * fn_ld_f(g + i); w = w * fn_ld_f(g + i + FN_VW); }              \
            fn_st_h(z + i, v); fn_st_h(z + i + FN_VW, w);                                   \
        }                                                                                   \
        for (; i + FN_VW <= n; i += FN_VW) {                                                \
            fn_vd v = FN(fn_ld_f(z + i));                                                   \
            if (G) v = v * fn_ld_f(g + i);                                                  \
            fn_st_h(z + i, v);                                                              \
        }                                                                                   \
        if (i < n) {                                                                        \
            float tz[FN_VW] = {0}, tg[FN_VW] = {0}; fn_vd v; Py_ssize_t m = n - i;          \
            memcpy(tz, z + i, (size_t)m * sizeof(float));                                  \
            if (G) memcpy(tg, g + i, (size_t)m * sizeof(float));                            \
            v = FN(fn_ld_f(tz));                                                            \
            if (G) v = v * fn_ld_f(tg);                                                     \
            fn_st_h(tz, v);                                                                 \
            memcpy(z + i, tz, (size_t)m * sizeof(float));                                   \
        }
    static void fn_epi_act_f(const fn_epi* ep, float* FN_RESTRICT z, Py_ssize_t off, Py_ssize_t n) {
        const float* FN_RESTRICT r = ep->res ? (const float*)ep->res + off : NULL;
        const float* FN_RESTRICT g = ep->dy ? (const float*)ep->dy + off : NULL;
        float slope = (float)ep->slope;
        Py_ssize_t i;
        if (r) for (i = 0; i < n; i++) z[i] = z[i] + r[i];
        if (!g) {
            switch (ep->act) {
            case FN_ACT_RELU: for (i = 0; i < n; i++) z[i] = z[i] < 0.0f ? 0.0f : z[i]; break;
            case FN_ACT_LEAKY: for (i = 0; i < n; i++) z[i] = z[i] < 0.0f ? z[i] * slope : z[i]; break;
            case FN_ACT_GELU: FN_EPI_SMOOTH_F(fn_gelu_v, 0) break;
            case FN_ACT_GELU_TANH: FN_EPI_SMOOTH_F(fn_gelu_tanh_v, 0) break;
            case FN_ACT_SILU: FN_EPI_SMOOTH_F(fn_silu_v, 0) break;
            default: break;
            }
        } else {
            switch (ep->act) {
            case FN_ACT_RELU: for (i = 0; i < n; i++) z[i] = z[i] > 0.0f ? g[i] : 0.0f; break;
            case FN_ACT_LEAKY: for (i = 0; i < n; i++) z[i] = z[i] > 0.0f ? g[i] : g[i] * slope; break;
            case FN_ACT_GELU: FN_EPI_SMOOTH_F(fn_dgelu_v, 1) break;
            case FN_ACT_GELU_TANH: FN_EPI_SMOOTH_F(fn_dgelu_tanh_v, 1) break;
            case FN_ACT_SILU: FN_EPI_SMOOTH_F(fn_dsilu_v, 1) break;
            default: for (i = 0; i < n; i++) z[i] = g[i]; break;
            }
        }
    }
    #define FN_EPI_SMOOTH_D(FN, DFN)                                                        \
        if (!g) for (i = 0; i < n; i++) z[i] = FN(z[i]);                                    \
        else for (i = 0; i < n; i++) z[i] = g[i] * DFN(z[i]);
    static void fn_epi_act_d(const fn_epi* ep, double* FN_RESTRICT z, Py_ssize_t off, Py_ssize_t n) {
        const double* FN_RESTRICT r = ep->res ? (const double*)ep->res + off : NULL;
        const double* FN_RESTRICT g = ep->dy ? (const double*)ep->dy + off : NULL;
        double slope = ep->slope;
        Py_ssize_t i;
        if (r) for (i = 0; i < n; i++) z[i] = z[i] + r[i];
        switch (ep->act) {
        case FN_ACT_RELU:
            if (!g) for (i = 0; i < n; i++) z[i] = z[i] < 0.0 ? 0.0 : z[i];
            else for (i = 0; i < n; i++) z[i] = z[i] > 0.0 ? g[i] : 0.0;
            break;
        case FN_ACT_LEAKY:
            if (!g) for (i = 0; i < n; i++) z[i] = z[i] < 0.0 ? z[i] * slope : z[i];
            else for (i = 0; i < n; i++) z[i] = z[i] > 0.0 ? g[i] : g[i] * slope;
            break;
        case FN_ACT_GELU: FN_EPI_SMOOTH_D(fn_gelu_d, fn_dgelu_d) break;
        case FN_ACT_GELU_TANH: FN_EPI_SMOOTH_D(fn_gelu_tanh_d, fn_dgelu_tanh_d) break;
        case FN_ACT_SILU: FN_EPI_SMOOTH_D(fn_silu_d, fn_dsilu_d) break;
        default: if (g) for (i = 0; i < n; i++) z[i] = g[i]; break;
        }
    }
    /* y[:n] = z[:n]; stream: past the caches (the caller issues fn_sfence) */
    #define FN_COPY_OUT(T, S, V, W, LDV, STNT)                                              \
    static inline void fn_copy_out_##S(T* y, const T* z, Py_ssize_t n, int stream) {        \
        Py_ssize_t i = 0, head;                                                             \
        if (y == z) return;                                                                 \
        if (!stream) { memcpy(y, z, (size_t)n * sizeof(T)); return; }                       \
        head = fn_head(y, n, sizeof(T), FN_NT_BYTES);                                       \
        for (; i < head; i++) y[i] = z[i];                                                  \
        for (; i + W <= n; i += W) STNT(y + i, LDV(z + i));                                 \
        for (; i < n; i++) y[i] = z[i];                                                     \
    }
    FN_COPY_OUT(float, f, fn_vf, FN_FW, fn_ldf, fn_stf_nt)
    FN_COPY_OUT(double, d, fn_vd, FN_VW, fn_ld_d, fn_std_nt)
    /* the epilogue of z[:n], normalized values of y[:n] (z may be y): y = act(z + res) or
       dy * act'(z + res) */
    static void fn_epilogue_f(const fn_epi* ep, float* z, float* y, Py_ssize_t n, int stream) {
        fn_epi_act_f(ep, z, y - (const float*)ep->out, n);
        fn_copy_out_f(y, z, n, stream);
    }
    static void fn_epilogue_d(const fn_epi* ep, double* z, double* y, Py_ssize_t n, int stream) {
        fn_epi_act_d(ep, z, y - (const double*)ep->out, n);
        fn_copy_out_d(y, z, n, stream);
    }
    /* In-register epilogues of the channel kernels, for the kinds that cost no more than the
       store (kind 0: + res; 1: relu; 2: leaky relu; 3: relu of + res; 4: leaky relu of + res):
       applied to each vector of normalized values before it is stored, so that these common
       cases (a residual block's tail) add no pass at all, not even in cache.  ReLU keeps NaN
       (as max(x, 0) in PyTorch); the sums and products are in the data type. */
    #if FN_VW > 1
      typedef int fn_vfi __attribute__((vector_size(FN_VW * 8)));
      static inline fn_vf fn_relu_vf(fn_vf a) { fn_vf z = {0}; fn_vfi m = a < z; return (fn_vf)((fn_vfi)a & ~m); }
      static inline fn_vf fn_leaky_vf(fn_vf a, float sl) {
          fn_vf z = {0}; fn_vfi m = a < z; return (fn_vf)(((fn_vfi)(a * sl) & m) | ((fn_vfi)a & ~m)); }
      static inline fn_vd fn_relu_vd(fn_vd a) { fn_vd z = {0}; fn_vl m = a < z; return (fn_vd)((fn_vl)a & ~m); }
      static inline fn_vd fn_leaky_vd(fn_vd a, double sl) {
          fn_vd z = {0}; fn_vl m = a < z; return (fn_vd)(((fn_vl)(a * sl) & m) | ((fn_vl)a & ~m)); }
    #else
      #define fn_relu_vf FN_RELU1
      #define fn_leaky_vf FN_LEAKY1
      #define fn_relu_vd FN_RELU1
      #define fn_leaky_vd FN_LEAKY1
    #endif
    #define FN_LD1(p) (*(p))
    #define FN_RELU1(a) ((a) < 0 ? 0 : (a))
    #define FN_LEAKY1(a, sl) ((a) < 0 ? (a) * (sl) : (a))
    /* K(a, i, LD, RELU, LEAKY): kind K on the value(s) a at index i (res: r + i) */
    #define FN_EK_ADD(a, i, LD, RELU, LEAKY) ((a) + LD(r + (i)))
    #define FN_EK_RELU(a, i, LD, RELU, LEAKY) RELU(a)
    #define FN_EK_LEAKY(a, i, LD, RELU, LEAKY) LEAKY((a), sl)
    #define FN_EK_ADD_RELU(a, i, LD, RELU, LEAKY) RELU((a) + LD(r + (i)))
    #define FN_EK_ADD_LEAKY(a, i, LD, RELU, LEAKY) LEAKY((a) + LD(r + (i)), sl)
    #define FN_EK_SWITCH(BODY, ...)                                                         \
        switch (kind) {                                                                     \
        case 0: BODY(__VA_ARGS__, FN_EK_ADD) break;                                         \
        case 1: BODY(__VA_ARGS__, FN_EK_RELU) break;                                        \
        case 2: BODY(__VA_ARGS__, FN_EK_LEAKY) break;                                       \
        case 3: BODY(__VA_ARGS__, FN_EK_ADD_RELU) break;                                    \
        default: BODY(__VA_ARGS__, FN_EK_ADD_LEAKY) break;                                  \
        }
    /* y = K(((x - h) - lw) * s + o) along a run (FN_SEG_NORMALIZE's loop) */
    #define FN_SEG_EPI_BODY(T, V, W, LDV, STV, ALIGN, RELUV, LEAKYV, K)                     \
        { Py_ssize_t i = 0, head = fn_head(y, n, sizeof(T), ALIGN); V a0, a1, a2, a3; T b;  \
          for (; i < head; i++) { b = ((x[i] - h) - lw) * s + o; y[i] = K(b, i, FN_LD1, FN_RELU1, FN_LEAKY1); } \
          for (; i + 4 * W <= n; i += 4 * W) {                                              \
              a0 = LDV(x + i); a1 = LDV(x + i + W); a2 = LDV(x + i + 2 * W); a3 = LDV(x + i + 3 * W); \
              a0 = ((a0 - h) - lw) * s + o; a1 = ((a1 - h) - lw) * s + o;                   \
              a2 = ((a2 - h) - lw) * s + o; a3 = ((a3 - h) - lw) * s + o;                   \
              a0 = K(a0, i, LDV, RELUV, LEAKYV); a1 = K(a1, i + W, LDV, RELUV, LEAKYV);      \
              a2 = K(a2, i + 2 * W, LDV, RELUV, LEAKYV); a3 = K(a3, i + 3 * W, LDV, RELUV, LEAKYV); \
              STV(y + i, a0); STV(y + i + W, a1); STV(y + i + 2 * W, a2); STV(y + i + 3 * W, a3); \
          }                                                                                 \
          for (; i + W <= n; i += W) {                                                      \
              a0 = LDV(x + i); a0 = ((a0 - h) - lw) * s + o; STV(y + i, K(a0, i, LDV, RELUV, LEAKYV)); } \
          for (; i < n; i++) { b = ((x[i] - h) - lw) * s + o; y[i] = K(b, i, FN_LD1, FN_RELU1, FN_LEAKY1); } }
    #define FN_SEG_EPI(T, NAME, V, W, LDV, STV, ALIGN, RELUV, LEAKYV)                       \
    static void NAME(const T* x, T* y, Py_ssize_t n, T h, T lw, T s, T o,                   \
                     const T* r, int kind, T sl) {  /* r may be y: read before written */  \
        FN_EK_SWITCH(FN_SEG_EPI_BODY, T, V, W, LDV, STV, ALIGN, RELUV, LEAKYV)              \
    }
    FN_SEG_EPI(float, fn_seg_epi_f, fn_vf, FN_FW, fn_ldf, fn_stf, 1, fn_relu_vf, fn_leaky_vf)
    FN_SEG_EPI(double, fn_seg_epi_d, fn_vd, FN_VW, fn_ld_d, fn_std, 1, fn_relu_vd, fn_leaky_vd)
    FN_SEG_EPI(float, fn_seg_epi_nt_f, fn_vf, FN_FW, fn_ldf, fn_stf_nt, FN_NT_BYTES, fn_relu_vf, fn_leaky_vf)
    FN_SEG_EPI(double, fn_seg_epi_nt_d, fn_vd, FN_VW, fn_ld_d, fn_std_nt, FN_NT_BYTES, fn_relu_vd, fn_leaky_vd)
    /* y = K((x - hi) * sc + sh) on rows of C values (FN_LANES_NORMALIZE's loop) */
    #define FN_LANES_EPI_BODY(T, V, W, LDV, STV, RELUV, LEAKYV, K)                          \
        { Py_ssize_t row, k; V a0, a1, a2, a3; T b;                                         \
          for (row = 0; row < rows; row++, x += C, y += C, r += C) {                        \
              k = 0;                                                                        \
              for (; k + 4 * W <= C; k += 4 * W) {                                          \
                  a0 = LDV(x + k); a1 = LDV(x + k + W); a2 = LDV(x + k + 2 * W); a3 = LDV(x + k + 3 * W); \
                  a0 = (a0 - LDV(hi + k)) * LDV(sc + k) + LDV(sh + k);                      \
                  a1 = (a1 - LDV(hi + k + W)) * LDV(sc + k + W) + LDV(sh + k + W);          \
                  a2 = (a2 - LDV(hi + k + 2 * W)) * LDV(sc + k + 2 * W) + LDV(sh + k + 2 * W); \
                  a3 = (a3 - LDV(hi + k + 3 * W)) * LDV(sc + k + 3 * W) + LDV(sh + k + 3 * W); \
                  a0 = K(a0, k, LDV, RELUV, LEAKYV); a1 = K(a1, k + W, LDV, RELUV, LEAKYV);  \
                  a2 = K(a2, k + 2 * W, LDV, RELUV, LEAKYV); a3 = K(a3, k + 3 * W, LDV, RELUV, LEAKYV); \
                  STV(y + k, a0); STV(y + k + W, a1); STV(y + k + 2 * W, a2); STV(y + k + 3 * W, a3); \
              }                                                                             \
              for (; k + W <= C; k += W) {                                                  \
                  a0 = LDV(x + k); a0 = (a0 - LDV(hi + k)) * LDV(sc + k) + LDV(sh + k);     \
                  STV(y + k, K(a0, k, LDV, RELUV, LEAKYV)); }                               \
              for (; k < C; k++) { b = (x[k] - hi[k]) * sc[k] + sh[k]; y[k] = K(b, k, FN_LD1, FN_RELU1, FN_LEAKY1); } \
          } }
    #define FN_LANES_EPI(T, NAME, V, W, LDV, STV, RELUV, LEAKYV)                            \
    static void NAME(const T* x, T* y, Py_ssize_t rows, Py_ssize_t C, const T* FN_RESTRICT hi, \
                     const T* FN_RESTRICT sc, const T* FN_RESTRICT sh,                      \
                     const T* r, int kind, T sl) {  /* r may be y: read before written */  \
        FN_EK_SWITCH(FN_LANES_EPI_BODY, T, V, W, LDV, STV, RELUV, LEAKYV)                   \
    }
    FN_LANES_EPI(float, fn_lanes_epi_f, fn_vf, FN_FW, fn_ldf, fn_stf, fn_relu_vf, fn_leaky_vf)
    FN_LANES_EPI(double, fn_lanes_epi_d, fn_vd, FN_VW, fn_ld_d, fn_std, fn_relu_vd, fn_leaky_vd)
    FN_LANES_EPI(float, fn_lanes_epi_nt_f, fn_vf, FN_FW, fn_ldf, fn_stf_nt, fn_relu_vf, fn_leaky_vf)
    FN_LANES_EPI(double, fn_lanes_epi_nt_d, fn_vd, FN_VW, fn_ld_d, fn_std_nt, fn_relu_vd, fn_leaky_vd)
    /* the kind of in-register epilogue of ep (-1: none, the blocked path serves it) */
    static inline int fn_epi_kind(const fn_epi* ep) {
        if (ep->dy != NULL || ep->act > 2) return -1;
        if (ep->act == 0) return ep->res != NULL ? 0 : -1;
        return ep->act + (ep->res != NULL ? 2 : 0);
    }
    /* y = a + b, the residual added before a normalization */
    static void fn_add_f(const float* a, const float* b, float* y, Py_ssize_t n) {
        Py_ssize_t i; for (i = 0; i < n; i++) y[i] = a[i] + b[i]; }
    static void fn_add_d(const double* a, const double* b, double* y, Py_ssize_t n) {
        Py_ssize_t i; for (i = 0; i < n; i++) y[i] = a[i] + b[i]; }
    """
    enum: FN_EPI_BLOCK
    ctypedef struct fn_epi:
        int act
        double slope
        const void* res
        const void* dy
        const void* out
    void fn_epilogue_f(const fn_epi* ep, float* z, float* y, Py_ssize_t n, bint stream) nogil
    void fn_epilogue_d(const fn_epi* ep, double* z, double* y, Py_ssize_t n, bint stream) nogil
    void fn_add_f(const float* a, const float* b, float* y, Py_ssize_t n) nogil
    void fn_add_d(const double* a, const double* b, double* y, Py_ssize_t n) nogil
    int fn_epi_kind(const fn_epi* ep) nogil
    void fn_copy_out_f(float* y, const float* z, Py_ssize_t n, bint stream) nogil
    void fn_copy_out_d(double* y, const double* z, Py_ssize_t n, bint stream) nogil
    void fn_seg_epi_f(const float* x, float* y, Py_ssize_t n, float h, float lw, float s, float o,
                      const float* r, int kind, float sl) nogil
    void fn_seg_epi_nt_f(const float* x, float* y, Py_ssize_t n, float h, float lw, float s, float o,
                         const float* r, int kind, float sl) nogil
    void fn_seg_epi_d(const double* x, double* y, Py_ssize_t n, double h, double lw, double s, double o,
                      const double* r, int kind, double sl) nogil
    void fn_seg_epi_nt_d(const double* x, double* y, Py_ssize_t n, double h, double lw, double s, double o,
                         const double* r, int kind, double sl) nogil
    void fn_lanes_epi_f(const float* x, float* y, Py_ssize_t rows, Py_ssize_t C, const float* hi,
                        const float* sc, const float* sh, const float* r, int kind, float sl) nogil
    void fn_lanes_epi_nt_f(const float* x, float* y, Py_ssize_t rows, Py_ssize_t C, const float* hi,
                           const float* sc, const float* sh, const float* r, int kind, float sl) nogil
    void fn_lanes_epi_d(const double* x, double* y, Py_ssize_t rows, Py_ssize_t C, const double* hi,
                        const double* sc, const double* sh, const double* r, int kind, double sl) nogil
    void fn_lanes_epi_nt_d(const double* x, double* y, Py_ssize_t rows, Py_ssize_t C, const double* hi,
                           const double* sc, const double* sh, const double* r, int kind, double sl) nogil


cdef inline void _epilogue(const fn_epi* ep, floating_t* z, floating_t* y, Py_ssize_t n, bint stream) noexcept nogil:
    """``y[:n] = act(z + res)`` (or ``dy * act'(z + res)``), ``z`` normalized values in cache."""
    if floating_t is float:
        fn_epilogue_f(ep, z, y, n, stream)
    else:
        fn_epilogue_d(ep, z, y, n, stream)


cdef inline void _add(const floating_t* a, const floating_t* b, floating_t* y, Py_ssize_t n) noexcept nogil:
    if floating_t is float:
        fn_add_f(a, b, y, n)
    else:
        fn_add_d(a, b, y, n)


cdef inline void _copy_out(floating_t* y, const floating_t* z, Py_ssize_t n, bint stream) noexcept nogil:
    """``y[:n] = z[:n]``; ``stream``: past the caches (the caller issues ``fn_sfence``)."""
    if floating_t is float:
        fn_copy_out_f(y, z, n, stream)
    else:
        fn_copy_out_d(y, z, n, stream)


cdef void _seg_normalize_ep(
    const floating_t* x, floating_t* y, Py_ssize_t n,
    floating_t h, floating_t lw, floating_t s, floating_t o, bint stream, const fn_epi* ep,
) noexcept nogil:
    """:func:`_seg_normalize` followed by the epilogue ``ep`` (NULL: none), block by block."""
    cdef floating_t buf[FN_EPI_BLOCK]
    cdef Py_ssize_t i = 0, m
    cdef int kind
    cdef const floating_t* r
    if ep == NULL:
        _seg_normalize(x, y, n, h, lw, s, o, stream)
        return
    kind = fn_epi_kind(ep)
    if kind >= 0:  # in registers
        r = NULL
        if ep.res != NULL:
            r = <const floating_t*>ep.res + (y - <const floating_t*>ep.out)
        if floating_t is float:
            if stream:
                fn_seg_epi_nt_f(x, y, n, h, lw, s, o, r, kind, <float>ep.slope)
            else:
                fn_seg_epi_f(x, y, n, h, lw, s, o, r, kind, <float>ep.slope)
        else:
            if stream:
                fn_seg_epi_nt_d(x, y, n, h, lw, s, o, r, kind, ep.slope)
            else:
                fn_seg_epi_d(x, y, n, h, lw, s, o, r, kind, ep.slope)
        return
    while i < n:
        m = _imin(FN_EPI_BLOCK, n - i)
        _seg_normalize(x + i, buf, m, h, lw, s, o, False)
        _epilogue(ep, buf, y + i, m, stream)
        i += m


cdef void _row_normalize_ep(
    const floating_t* x, floating_t* y, Py_ssize_t n, floating_t h, floating_t lw, floating_t s,
    const floating_t* w, const floating_t* b, bint stream, const fn_epi* ep,
) noexcept nogil:
    """:func:`_row_normalize` followed by the epilogue ``ep`` (NULL: none), block by block."""
    cdef floating_t buf[FN_EPI_BLOCK]
    cdef Py_ssize_t i = 0, m
    cdef const floating_t* wi = NULL
    cdef const floating_t* bi = NULL
    if ep == NULL:
        _row_normalize(x, y, n, h, lw, s, w, b, stream)
        return
    while i < n:
        m = _imin(FN_EPI_BLOCK, n - i)
        if w != NULL:
            wi = w + i
        if b != NULL:
            bi = b + i
        _row_normalize(x + i, buf, m, h, lw, s, wi, bi, False)
        _epilogue(ep, buf, y + i, m, stream)
        i += m


cdef void _lanes_normalize_ep(
    const floating_t* x, floating_t* y, Py_ssize_t A, Py_ssize_t C,
    const floating_t* hi, const floating_t* scale, const floating_t* shift, bint stream,
    const fn_epi* ep,
) noexcept nogil:
    """:func:`_lanes_normalize` followed by the epilogue ``ep`` (NULL: none): whole rows per
    block where ``C`` fits one, else pieces of a row."""
    cdef floating_t buf[FN_EPI_BLOCK]
    cdef Py_ssize_t a = 0, k, m, rows
    cdef int kind
    cdef const floating_t* r
    if ep == NULL:
        _lanes_normalize(x, y, A, C, hi, scale, shift, stream)
        return
    kind = fn_epi_kind(ep)
    if kind >= 0:  # in registers
        r = NULL
        if ep.res != NULL:
            r = <const floating_t*>ep.res + (y - <const floating_t*>ep.out)
        if floating_t is float:
            if stream:
                fn_lanes_epi_nt_f(x, y, A, C, hi, scale, shift, r, kind, <float>ep.slope)
            else:
                fn_lanes_epi_f(x, y, A, C, hi, scale, shift, r, kind, <float>ep.slope)
        else:
            if stream:
                fn_lanes_epi_nt_d(x, y, A, C, hi, scale, shift, r, kind, ep.slope)
            else:
                fn_lanes_epi_d(x, y, A, C, hi, scale, shift, r, kind, ep.slope)
        return
    if C <= FN_EPI_BLOCK:
        rows = FN_EPI_BLOCK // C
        while a < A:
            m = _imin(rows, A - a)
            _lanes_normalize(x + a * C, buf, m, C, hi, scale, shift, False)
            _epilogue(ep, buf, y + a * C, m * C, stream)
            a += m
        return
    for a in range(A):
        k = 0
        while k < C:
            m = _imin(FN_EPI_BLOCK, C - k)
            _lanes_normalize(x + a * C + k, buf, 1, m, hi + k, scale + k, shift + k, False)
            _epilogue(ep, buf, y + a * C + k, m, stream)
            k += m


cdef const fn_epi* _epi_of(object epi, fn_epi* ep, object out_obj) except? NULL:
    """``ep`` filled from ``epi`` = ``(act, slope, res, dy)`` (``res``/``dy`` None or
    C-contiguous arrays of ``out``'s dtype and size), or NULL where ``epi`` is None."""
    if epi is None:
        return NULL
    cdef cnp.ndarray out = np.asarray(out_obj)
    act, slope, res, dy = epi
    ep.act = act
    ep.slope = slope
    ep.out = cnp.PyArray_DATA(out)
    ep.res = _epi_array(res, out, "res")
    ep.dy = _epi_array(dy, out, "dy")
    return ep


cdef const void* _epi_array(object a, cnp.ndarray out, str name) except? NULL:
    if a is None:
        return NULL
    if (
        not isinstance(a, np.ndarray)
        or cnp.PyArray_TYPE(<cnp.ndarray>a) != cnp.PyArray_TYPE(out)
        or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a)
        or cnp.PyArray_SIZE(<cnp.ndarray>a) != cnp.PyArray_SIZE(out)
    ):
        raise ValueError(f"{name} must be a C-contiguous array of the output's dtype and size")
    return cnp.PyArray_DATA(<cnp.ndarray>a)


# ----------------------------------------------------------------------------
# statistics
# ----------------------------------------------------------------------------


cdef void _stats_run_task(
    const floating_t* group, Py_ssize_t stride, Py_ssize_t B,
    Py_ssize_t j0, Py_ssize_t j1, double* result,
) noexcept nogil:
    """(count, mean, M2) of values j0..j1 of a group whose row a starts at group + a*stride."""
    cdef double cnt = 0.0, mean = 0.0, s, q, nb, mb
    cdef double m2 = 0.0
    cdef Py_ssize_t j = j0, je, jj, a, b0, b1
    while j < j1:
        je = _imin(j1, j + BLOCK)
        s = 0.0
        jj = j
        while jj < je:
            a = jj // B
            b0 = jj - a * B
            b1 = _imin(B, b0 + (je - jj))
            s += _sum(group + a * stride + b0, b1 - b0)
            jj += b1 - b0
        nb = <double>(je - j)
        mb = s / nb
        q = 0.0
        jj = j
        while jj < je:
            a = jj // B
            b0 = jj - a * B
            b1 = _imin(B, b0 + (je - jj))
            q += _sum_sq_dev(group + a * stride + b0, b1 - b0, mb)
            jj += b1 - b0
        _chan(&cnt, &mean, &m2, nb, mb, q)
        j = je
    result[0] = cnt
    result[1] = mean
    result[2] = m2


cdef void _merge_parts(const double[:, :, :, ::1] part, double[:, ::1] mean, double[:, ::1] m2) noexcept nogil:
    """Chan-merge ``part[n, c, k] = (count, mean, M2)`` over ``k``."""
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
                mu = fn_chan_mean(mu, part[n, c, k, 1], nb / tot)
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
            _stats_run_task(base + (n * A * C + c) * B, C * B, B, j0, _imin(M, j0 + chunk), &part[n, c, k, 0])
    mean = np.empty((N, C))
    m2 = np.empty((N, C))
    _merge_parts(part, mean, m2)
    return mean, m2


def stats_planes(const floating_t[:, :, :, ::1] x, int num_threads):
    """Mean and M2 per ``(n, c)`` of a non-empty ``(N, A, C, B)`` array, reading it in memory order.

    One task per run ``(n, a, c)`` of ``B`` values, in the order the runs lie
    in memory, so each thread streams through one contiguous part of the
    array (the prefetchers keep up; :func:`stats_runs` walks a group's ``A``
    runs, ``C * B`` values apart); a run's statistics are the row kernels'
    shifted one-pass blocks.  The ``A`` partial statistics of each group are
    Chan-merged in order afterwards.
    """
    cdef Py_ssize_t N = x.shape[0], A = x.shape[1], C = x.shape[2], B = x.shape[3]
    cdef Py_ssize_t t, n, a, c, na
    part_arr = np.empty((N, C, A, 3))
    cdef double[:, :, :, ::1] part = part_arr
    cdef const floating_t* base = &x[0, 0, 0, 0]
    with nogil:
        for t in prange(N * A * C, num_threads=num_threads, schedule="static"):
            na = t // C
            c = t - na * C
            n = na // A
            a = na - n * A
            part[n, c, a, 0] = <double>B
            _run_moments(base + t * B, B, &part[n, c, a, 1], &part[n, c, a, 2], False)
    mean = np.empty((N, C))
    m2 = np.empty((N, C))
    _merge_parts(part, mean, m2)
    return mean, m2


def stats_short_runs(const floating_t[:, :, :, ::1] x, Py_ssize_t nsplit, int num_threads):
    """Mean and M2 per ``(n, c)`` of a non-empty ``(N, A, C, B)`` array of short runs, reading it
    in memory order.

    One task per ``(n, chunk of A)``: it goes through its rows ``a`` in order, and through
    each row's ``C`` runs of ``B`` values, adding each run's sums shifted by its channel's
    first value (:c:func:`fn_shifted_f`) into per-channel accumulators, so no per-run
    statistics are stored and merged (:func:`stats_planes`) and no group is walked ``C * B``
    values at a time (:func:`stats_runs`).  ``M2 = S2 - S1**2 / n`` per task, as a row block's
    (``n = chunk * B``, the caller keeps it within ``4 * BLOCK``); the tasks are Chan-merged.
    """
    cdef Py_ssize_t N = x.shape[0], A = x.shape[1], C = x.shape[2], B = x.shape[3]
    cdef Py_ssize_t chunk = (A + nsplit - 1) // nsplit
    cdef Py_ssize_t t, n, k, a, a0, a1, c, tid
    cdef double s1, s2, cnt, v
    cdef double* K
    cdef double* S
    cdef double* Q
    cdef const floating_t* p
    part_arr = np.zeros((N, C, nsplit, 3))
    cdef double[:, :, :, ::1] part = part_arr
    cdef double[:, ::1] s64 = _scratch(max(num_threads, 1), 3 * C)
    with nogil:
        for t in prange(N * nsplit, num_threads=num_threads, schedule="static"):
            tid = threadid()
            n = t // nsplit
            k = t - n * nsplit
            a0 = k * chunk
            a1 = _imin(A, a0 + chunk)
            if a0 >= a1:
                continue
            K = &s64[tid, 0]
            S = &s64[tid, C]
            Q = &s64[tid, 2 * C]
            p = &x[n, a0, 0, 0]
            for c in range(C):
                K[c] = fn_shift(<double>p[c * B])
                S[c] = 0.0
                Q[c] = 0.0
            s1 = 0.0  # assigned in the loop: private to the thread (their addresses are passed)
            s2 = 0.0
            for a in range(a0, a1):
                p = &x[n, a, 0, 0]
                for c in range(C):
                    if floating_t is float:
                        fn_shifted_f(p + c * B, B, K[c], &s1, &s2)
                    else:
                        fn_shifted_d(p + c * B, B, K[c], &s1, &s2)
                    S[c] += s1
                    Q[c] += s2
            cnt = <double>((a1 - a0) * B)
            for c in range(C):
                part[n, c, k, 0] = cnt
                part[n, c, k, 1] = K[c] + S[c] / cnt
                v = Q[c] - S[c] * (S[c] / cnt)
                part[n, c, k, 2] = 0.0 if v < 0.0 else v  # rounding below 0 clamped; NaN kept
    mean = np.empty((N, C))
    m2 = np.empty((N, C))
    _merge_parts(part, mean, m2)
    return mean, m2


def stats_lanes(const floating_t[:, :, ::1] x, Py_ssize_t nsplit, int num_threads):
    """Mean and M2 per ``(n, c)`` of a non-empty channels-last ``(N, A, C)`` array."""
    cdef Py_ssize_t N = x.shape[0], A = x.shape[1], C = x.shape[2]
    cdef Py_ssize_t chunk = (A + nsplit - 1) // nsplit
    cdef Py_ssize_t t, n, k, a0, c, tid
    cdef double cnt
    part_arr = np.zeros((N, C, nsplit, 3))
    cdef double[:, :, :, ::1] part = part_arr
    cdef double[:, ::1] s64 = _scratch(max(num_threads, 1), 5 * C)
    cdef const floating_t* base = &x[0, 0, 0]
    with nogil:
        for t in prange(N * nsplit, num_threads=num_threads, schedule="static"):
            tid = threadid()
            n = t // nsplit
            k = t - n * nsplit
            a0 = k * chunk
            cnt = _lane_moments(
                base + n * A * C, C, a0, _imin(A, a0 + chunk),
                &s64[tid, 0], &s64[tid, 3 * C], &s64[tid, C], &s64[tid, 2 * C], &s64[tid, 4 * C],
            )
            for c in range(C):
                part[n, c, k, 0] = cnt
                part[n, c, k, 1] = s64[tid, C + c]
                part[n, c, k, 2] = s64[tid, 2 * C + c]
    mean = np.empty((N, C))
    m2 = np.empty((N, C))
    _merge_parts(part, mean, m2)
    return mean, m2


# ----------------------------------------------------------------------------
# apply: y = ((x - hi) - lo) * scale + shift
# ----------------------------------------------------------------------------


cdef void _apply_runs_range(
    const floating_t* x, floating_t* out, const floating_t* hi, const floating_t* lo,
    const floating_t* scale, const floating_t* shift,
    Py_ssize_t A, Py_ssize_t C, Py_ssize_t B, Py_ssize_t nsplit, Py_ssize_t u0, Py_ssize_t u1,
    bint stream, const fn_epi* ep,
) noexcept nogil:
    """Tasks ``u0..u1``: task ``u`` is piece ``u % nsplit`` of row ``u // nsplit`` (rows ``(n, a, c)``)."""
    cdef Py_ssize_t piece = (B + nsplit - 1) // nsplit
    cdef Py_ssize_t r = u0 // nsplit, k = u0 - (u0 // nsplit) * nsplit
    cdef Py_ssize_t c = r % C, n = r // (A * C), rem = r - n * A * C
    cdef Py_ssize_t u, b0, b1, g
    for u in range(u0, u1):
        b0 = k * piece
        b1 = _imin(B, b0 + piece)
        g = n * C + c
        if b1 > b0:
            _seg_normalize_ep(
                x + r * B + b0, out + r * B + b0, b1 - b0, hi[g], lo[g], scale[g], shift[g], stream, ep
            )
        k += 1
        if k == nsplit:
            k = 0
            r += 1
            c += 1
            if c == C:
                c = 0
            rem += 1
            if rem == A * C:
                rem = 0
                n += 1


cdef void _apply_runs_parallel(
    const floating_t* x, floating_t* out, const floating_t* hi, const floating_t* lo,
    const floating_t* scale, const floating_t* shift, Py_ssize_t N, Py_ssize_t A, Py_ssize_t C,
    Py_ssize_t B, Py_ssize_t nsplit, int num_threads, bint stream, const fn_epi* ep,
) noexcept nogil:
    """:func:`_apply_runs_range` over all ``N * A * C * nsplit`` tasks, one range per thread."""
    cdef Py_ssize_t ntask = N * A * C * nsplit
    cdef Py_ssize_t T = _imax(1, _imin(num_threads, ntask)), per = (ntask + T - 1) // T, t
    for t in prange(T, num_threads=T, schedule="static"):
        _apply_runs_range(
            x, out, hi, lo, scale, shift, A, C, B, nsplit, t * per, _imin(ntask, (t + 1) * per), stream, ep,
        )
        if stream:
            fn_sfence()


cdef void _apply_lanes_parallel(
    const floating_t* x, floating_t* out, const floating_t* hi, const floating_t* scale,
    const floating_t* shift, Py_ssize_t N, Py_ssize_t A, Py_ssize_t C, int num_threads, bint stream,
    const fn_epi* ep,
) noexcept nogil:
    """:func:`_lanes_normalize` of ``(N, A, C)`` split over rows ``(n, a)``, ``(N, C)``
    coefficients; ``stream`` is honoured where ``fn_nt_ok`` allows it."""
    cdef Py_ssize_t R = N * A, T = _imax(1, _imin(num_threads, R)), per = (R + T - 1) // T
    cdef Py_ssize_t t, r0, r1, n, a0, a1
    stream = stream and fn_nt_ok(out, C * <Py_ssize_t>sizeof(floating_t))
    for t in prange(T, num_threads=T, schedule="static"):
        r0 = t * per
        r1 = _imin(R, r0 + per)
        while r0 < r1:  # the rows of one sample at a time
            n = r0 // A
            a0 = r0 - n * A
            a1 = _imin(A, a0 + (r1 - r0))
            _lanes_normalize_ep(
                x + (n * A + a0) * C, out + (n * A + a0) * C, a1 - a0, C,
                hi + n * C, scale + n * C, shift + n * C, stream, ep,
            )
            r0 = r0 + (a1 - a0)
        if stream:
            fn_sfence()


def apply_runs(
    const floating_t[:, :, :, ::1] x, const floating_t[:, ::1] hi, const floating_t[:, ::1] lo,
    const floating_t[:, ::1] scale, const floating_t[:, ::1] shift, floating_t[:, :, :, ::1] out,
    Py_ssize_t nsplit, int num_threads, bint stream=False, object epi=None,
):
    """``out = ((x - hi) - lo) * scale + shift`` on ``(N, A, C, B)`` with ``(N, C)`` coefficients;
    ``epi``: an epilogue ``(act, slope, res, dy)`` (see :func:`_epi_of`) applied in the same pass."""
    cdef fn_epi ep_
    cdef const fn_epi* ep = _epi_of(epi, &ep_, out)
    with nogil:
        _apply_runs_parallel(
            &x[0, 0, 0, 0], &out[0, 0, 0, 0], &hi[0, 0], &lo[0, 0], &scale[0, 0], &shift[0, 0],
            x.shape[0], x.shape[1], x.shape[2], x.shape[3], nsplit, num_threads, stream, ep,
        )


def apply_lanes(
    const floating_t[:, :, ::1] x, const floating_t[:, ::1] hi,
    const floating_t[:, ::1] scale, const floating_t[:, ::1] shift, floating_t[:, :, ::1] out,
    int num_threads, bint stream=False, object epi=None,
):
    """Channels-last ``(N, A, C)`` ``out = (x - hi) * scale + shift``, split over rows ``(n, a)``.

    ``shift`` holds the low part of the mean: ``shift - (mean - hi) * scale``.  ``epi``: an
    epilogue applied in the same pass.
    """
    cdef fn_epi ep_
    cdef const fn_epi* ep = _epi_of(epi, &ep_, out)
    with nogil:
        _apply_lanes_parallel(
            &x[0, 0, 0], &out[0, 0, 0], &hi[0, 0], &scale[0, 0], &shift[0, 0],
            x.shape[0], x.shape[1], x.shape[2], num_threads, stream, ep,
        )


# ----------------------------------------------------------------------------
# backward: sums per group, then dx = k1 * dy + k2 * ((x - hi) - lo) * rstd + k3
# ----------------------------------------------------------------------------


cdef void _grad_sums_run_task(
    const floating_t* x, const floating_t* gy, Py_ssize_t stride, Py_ssize_t B,
    Py_ssize_t j0, Py_ssize_t j1, double mu, double* s1, double* s2,
) noexcept nogil:
    """``sum(dy)``, ``sum(dy * (x - mu))`` of values j0..j1 of a group whose row a starts at a*stride."""
    cdef Py_ssize_t jj = j0, a, b0, b1
    s1[0] = 0.0
    s2[0] = 0.0
    while jj < j1:
        a = jj // B
        b0 = jj - a * B
        b1 = _imin(B, b0 + (j1 - jj))
        _seg_grad_sums(x + a * stride + b0, gy + a * stride + b0, b1 - b0, mu, s1, s2, False)
        jj += b1 - b0


def backward_reduce_runs(
    const floating_t[:, :, :, ::1] x, const floating_t[:, :, :, ::1] dy, const double[:, ::1] mean,
    Py_ssize_t nsplit, int num_threads,
):
    """Per-group ``sum(dy)`` and ``sum(dy * (x - mean))`` of ``(N, A, C, B)``, both ``(N, C)``."""
    cdef Py_ssize_t N = x.shape[0], A = x.shape[1], C = x.shape[2], B = x.shape[3]
    cdef Py_ssize_t M = A * B, chunk = (M + nsplit - 1) // nsplit
    cdef Py_ssize_t t, g, k, n, c, off
    part_arr = np.zeros((2, N * C, nsplit))
    cdef double[:, :, ::1] part = part_arr
    cdef const floating_t* xb = &x[0, 0, 0, 0]
    cdef const floating_t* gb = &dy[0, 0, 0, 0]
    with nogil:
        for t in prange(N * C * nsplit, num_threads=num_threads, schedule="static"):
            g = t // nsplit
            k = t - g * nsplit
            n = g // C
            c = g - n * C
            off = (n * A * C + c) * B
            _grad_sums_run_task(
                xb + off, gb + off, C * B, B, k * chunk, _imin(M, (k + 1) * chunk), mean[n, c],
                &part[0, g, k], &part[1, g, k],
            )
    sums = part_arr.sum(axis=2)
    return sums[0].reshape(N, C), sums[1].reshape(N, C)


def backward_reduce_lanes(
    const floating_t[:, :, ::1] x, const floating_t[:, :, ::1] dy, const double[:, ::1] mean,
    Py_ssize_t nsplit, int num_threads,
):
    """Channels-last ``(N, A, C)`` version of :func:`backward_reduce_runs`."""
    cdef Py_ssize_t N = x.shape[0], A = x.shape[1], C = x.shape[2]
    cdef Py_ssize_t chunk = (A + nsplit - 1) // nsplit
    cdef Py_ssize_t t, n, k, i
    part_arr = _scratch(N * nsplit, 2 * C)  # task t = (n, k): sum(dy) then sum(dy * (x - mean))
    cdef double[:, ::1] part = part_arr
    with nogil:
        for t in prange(N * nsplit, num_threads=num_threads, schedule="static"):
            n = t // nsplit
            k = t - n * nsplit
            i = k * chunk
            if i < A:
                _lanes_grad_sums(&x[n, i, 0], &dy[n, i, 0], _imin(A, i + chunk) - i, C, &mean[n, 0],
                                 &part[t, 0], &part[t, C])
    sums = part_arr[:, :2 * C].reshape(N, nsplit, 2 * C).sum(axis=1)
    return np.ascontiguousarray(sums[:, :C]), np.ascontiguousarray(sums[:, C:])


cdef void _backward_apply_runs_range(
    const floating_t* x, const floating_t* dy, floating_t* dx,
    const floating_t* hi, const floating_t* lo, const floating_t* rstd,
    const floating_t* k1, const floating_t* k2, const floating_t* k3,
    Py_ssize_t A, Py_ssize_t C, Py_ssize_t B, Py_ssize_t nsplit, Py_ssize_t u0, Py_ssize_t u1,
    bint stream,
) noexcept nogil:
    cdef Py_ssize_t piece = (B + nsplit - 1) // nsplit
    cdef Py_ssize_t r = u0 // nsplit, k = u0 - (u0 // nsplit) * nsplit
    cdef Py_ssize_t c = r % C, n = r // (A * C), rem = r - n * A * C
    cdef Py_ssize_t u, b0, b1, g, off
    for u in range(u0, u1):
        b0 = k * piece
        b1 = _imin(B, b0 + piece)
        g = n * C + c
        off = r * B + b0
        if b1 > b0:
            _seg_grad_apply(
                x + off, dy + off, dx + off, b1 - b0, hi[g], lo[g], rstd[g], k1[g], k2[g], k3[g], stream
            )
        k += 1
        if k == nsplit:
            k = 0
            r += 1
            c += 1
            if c == C:
                c = 0
            rem += 1
            if rem == A * C:
                rem = 0
                n += 1


def backward_apply_runs(
    const floating_t[:, :, :, ::1] x, const floating_t[:, :, :, ::1] dy,
    const floating_t[:, ::1] hi, const floating_t[:, ::1] lo, const floating_t[:, ::1] rstd,
    const floating_t[:, ::1] k1, const floating_t[:, ::1] k2, const floating_t[:, ::1] k3,
    floating_t[:, :, :, ::1] dx, Py_ssize_t nsplit, int num_threads, bint stream=False,
):
    """``dx = k1 * dy + k2 * ((x - hi) - lo) * rstd + k3`` on ``(N, A, C, B)``; ``stream``: ``dx``
    written past the caches."""
    cdef Py_ssize_t A = x.shape[1], C = x.shape[2], B = x.shape[3]
    cdef Py_ssize_t ntask = x.shape[0] * A * C * nsplit
    cdef Py_ssize_t T = _imax(1, _imin(num_threads, ntask)), per = (ntask + T - 1) // T, t
    with nogil:
        for t in prange(T, num_threads=T, schedule="static"):
            _backward_apply_runs_range(
                &x[0, 0, 0, 0], &dy[0, 0, 0, 0], &dx[0, 0, 0, 0], &hi[0, 0], &lo[0, 0], &rstd[0, 0],
                &k1[0, 0], &k2[0, 0], &k3[0, 0], A, C, B, nsplit, t * per, _imin(ntask, (t + 1) * per),
                stream,
            )
            if stream:
                fn_sfence()


def backward_apply_lanes(
    const floating_t[:, :, ::1] x, const floating_t[:, :, ::1] dy,
    const floating_t[:, ::1] hi, const floating_t[:, ::1] rstd,
    const floating_t[:, ::1] k1, const floating_t[:, ::1] k2, const floating_t[:, ::1] k3,
    floating_t[:, :, ::1] dx, int num_threads, bint stream=False,
):
    """Channels-last ``(N, A, C)`` ``dx = k1 * dy + k2 * (x - hi) * rstd + k3``, split over rows.

    ``k3`` holds the low part of the mean: ``k3 - k2 * (mean - hi) * rstd``.  ``stream``:
    ``dx`` written past the caches (where its rows allow whole aligned vectors).
    """
    cdef Py_ssize_t N = x.shape[0], A = x.shape[1], C = x.shape[2]
    cdef Py_ssize_t R = N * A, T = _imax(1, _imin(num_threads, R)), per = (R + T - 1) // T
    cdef Py_ssize_t t, r0, r1, n, a0, a1
    stream = stream and fn_nt_ok(&dx[0, 0, 0], C * sizeof(floating_t))
    with nogil:
        for t in prange(T, num_threads=T, schedule="static"):
            r0 = t * per
            r1 = _imin(R, r0 + per)
            while r0 < r1:
                n = r0 // A
                a0 = r0 - n * A
                a1 = _imin(A, a0 + (r1 - r0))
                _lanes_grad_apply(
                    &x[n, a0, 0], &dy[n, a0, 0], &dx[n, a0, 0], a1 - a0, C,
                    &hi[n, 0], &rstd[n, 0], &k1[n, 0], &k2[n, 0], &k3[n, 0], stream,
                )
                r0 = r0 + (a1 - a0)
            if stream:
                fn_sfence()


# ----------------------------------------------------------------------------
# rows (LayerNorm / RMSNorm): one fused pass per row while it sits in cache
# ----------------------------------------------------------------------------


cdef void _rows_forward_task(
    const floating_t* x, floating_t* out, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t M,
    const floating_t* w, const floating_t* b, double eps, bint center, double* mean, double* rstd,
    bint stream, const floating_t* res, floating_t* hsum, const fn_epi* ep, bint given,
) noexcept nogil:
    """Rows ``r0..r1``; ``res`` (not NULL): the rows normalized are ``x + res``, also written to
    ``hsum`` (a row that fits :data:`FN_EPI_BLOCK` values is summed into a buffer, normalized
    from it and copied out as ``stream`` says; a longer one is summed into ``hsum`` and read
    back from cache); ``ep``: the epilogue (NULL: none).  ``given``: ``mean`` and ``rstd``
    hold the statistics to normalize with (nothing is reduced)."""
    cdef double mu = 0.0, var = 0.0, rs
    cdef floating_t h
    cdef Py_ssize_t r
    cdef const floating_t* src
    cdef floating_t buf[4 * FN_EPI_BLOCK]
    for r in range(r0, r1):
        src = x + r * M
        if res != NULL:
            if M <= 4 * FN_EPI_BLOCK:
                _add(src, res + r * M, buf, M)
                _copy_out(hsum + r * M, buf, M, stream)
                src = buf
            else:
                _add(src, res + r * M, hsum + r * M, M)
                src = hsum + r * M
        if given:
            mu = mean[r]
            rs = rstd[r]
        else:
            _row_moments(src, M, center, &mu, &var, False)
            rs = 1.0 / sqrt(var + eps)
            mean[r] = mu
            rstd[r] = rs
        h = <floating_t>mu
        _row_normalize_ep(
            src, out + r * M, M, h, <floating_t>(mu - <double>h), <floating_t>rs, w, b, stream, ep
        )
    if stream:
        fn_sfence()


cdef const void* _residual_of(object res, object hsum, object x_obj) except? NULL:
    """The data of ``res`` (None: NULL); ``hsum`` must then be given, both C-contiguous of
    ``x``'s dtype and size."""
    if res is None:
        return NULL
    cdef cnp.ndarray x = np.asarray(x_obj)
    _epi_array(hsum, x, "hsum")
    return _epi_array(res, x, "res")


def rows_forward(
    const floating_t[:, ::1] x, const floating_t[::1] w, const floating_t[::1] b, double eps,
    bint center, floating_t[:, ::1] out, Py_ssize_t ntask, int num_threads, bint stream=False,
    object epi=None, object res=None, object hsum=None,
):
    """Normalize each row of ``(R, M)``; returns float64 ``(mean, rstd)`` ``(R,)``.

    ``w``/``b``: ``(M,)`` or None (not applied).  ``num_threads == 1`` runs on
    the calling thread without entering an OpenMP region (which costs about a
    microsecond even for one thread).  ``stream``: ``out`` written past the caches.
    ``epi``: an epilogue applied in the same pass.  ``res``: the rows normalized are
    ``x + res``, also written to ``hsum`` (both of ``x``'s dtype and size).
    """
    cdef fn_epi ep_
    cdef const fn_epi* ep = _epi_of(epi, &ep_, out)
    cdef const floating_t* pres = <const floating_t*>_residual_of(res, hsum, x)
    cdef floating_t* phs = NULL
    if pres != NULL:
        phs = <floating_t*>cnp.PyArray_DATA(<cnp.ndarray>hsum)
    cdef Py_ssize_t R = x.shape[0], M = x.shape[1]
    cdef Py_ssize_t chunk = (R + ntask - 1) // ntask, t
    cdef const floating_t* pw = NULL
    cdef const floating_t* pb = NULL
    if w is not None:
        pw = &w[0]
    if b is not None:
        pb = &b[0]
    mean_arr = np.empty(R)
    rstd_arr = np.empty(R)
    cdef double[::1] mean = mean_arr
    cdef double[::1] rstd = rstd_arr
    with nogil:
        if num_threads == 1:
            _rows_forward_task(
                &x[0, 0], &out[0, 0], 0, R, M, pw, pb, eps, center, &mean[0], &rstd[0], stream,
                pres, phs, ep, False,
            )
        else:
            for t in prange(ntask, num_threads=num_threads, schedule="static"):
                _rows_forward_task(
                    &x[0, 0], &out[0, 0], t * chunk, _imin(R, (t + 1) * chunk), M, pw, pb, eps,
                    center, &mean[0], &rstd[0], stream, pres, phs, ep, False,
                )
    return mean_arr, rstd_arr


def rows_apply(
    const floating_t[:, ::1] x, double[::1] mean, double[::1] rstd, const floating_t[::1] w,
    const floating_t[::1] b, floating_t[:, ::1] out, Py_ssize_t ntask, int num_threads,
    bint stream=False, object epi=None,
):
    """:func:`rows_forward` with given float64 ``(R,)`` statistics: ``out = (x - mean) * rstd
    * w + b`` per row (``mean`` zeros for RMSNorm), nothing reduced; ``epi`` as there."""
    cdef fn_epi ep_
    cdef const fn_epi* ep = _epi_of(epi, &ep_, out)
    cdef Py_ssize_t R = x.shape[0], M = x.shape[1]
    cdef Py_ssize_t chunk = (R + ntask - 1) // ntask, t
    cdef const floating_t* pw = NULL
    cdef const floating_t* pb = NULL
    if mean.shape[0] != R or rstd.shape[0] != R:
        raise ValueError("mean and rstd must have one value per row")
    if w is not None:
        pw = &w[0]
    if b is not None:
        pb = &b[0]
    with nogil:
        if num_threads == 1:
            _rows_forward_task(
                &x[0, 0], &out[0, 0], 0, R, M, pw, pb, 0.0, True, &mean[0], &rstd[0], stream,
                NULL, NULL, ep, True,
            )
        else:
            for t in prange(ntask, num_threads=num_threads, schedule="static"):
                _rows_forward_task(
                    &x[0, 0], &out[0, 0], t * chunk, _imin(R, (t + 1) * chunk), M, pw, pb, 0.0,
                    True, &mean[0], &rstd[0], stream, NULL, NULL, ep, True,
                )


# ----------------------------------------------------------------------------
# small inputs: one call on the calling thread, arrays taken through NumPy's C
# API (a typed memoryview costs about 0.12 us to acquire, a sizable part of a
# call on a tiny tensor)
# ----------------------------------------------------------------------------


cdef inline void _check_same(cnp.ndarray a, cnp.ndarray x, str name) except *:
    """``a`` must be a C-contiguous array of ``x``'s type (these entry points read raw memory)."""
    if not cnp.PyArray_IS_C_CONTIGUOUS(a) or cnp.PyArray_TYPE(a) != cnp.PyArray_TYPE(x):
        raise ValueError(f"{name} must be C-contiguous with the dtype of x")


cdef inline cnp.ndarray _empty_f64(int ndim, cnp.npy_intp* dims):
    return cnp.PyArray_EMPTY(ndim, dims, cnp.NPY_DOUBLE, 0)


cdef const void* _row_param(object a, cnp.ndarray x, str name) except? NULL:
    """The data of an optional ``(M,)`` parameter of ``x``'s dtype, C-contiguous (NULL for None)."""
    if a is None:
        return NULL
    if not isinstance(a, np.ndarray) or cnp.PyArray_NDIM(<cnp.ndarray>a) != 1 or a.shape[0] != x.shape[1]:
        raise ValueError(f"{name} must be a 1-D array of x.shape[1] values")
    _check_same(<cnp.ndarray>a, x, name)
    return cnp.PyArray_DATA(<cnp.ndarray>a)


def rows_forward_small(
    cnp.ndarray x not None, object w, object b, double eps, bint center, cnp.ndarray out not None,
    object epi=None, object res=None, object hsum=None,
):
    """:func:`rows_forward` on the calling thread for a 2-D C-contiguous float32 or float64
    ``x``, with ``w``, ``b`` ``(M,)`` of its dtype or None, and ``out`` of its dtype; returns
    ``(mean, rstd)``.  ``epi``, ``res``, ``hsum``: as for :func:`rows_forward`."""
    if cnp.PyArray_NDIM(x) != 2 or cnp.PyArray_NDIM(out) != 2:
        raise ValueError("x and out must be 2-D")
    cdef Py_ssize_t R = x.shape[0], M = x.shape[1]
    if out.shape[0] != R or out.shape[1] != M:
        raise ValueError("shapes of x and out do not match")
    _check_same(x, x, "x")
    _check_same(out, x, "out")
    cdef const void* pw = _row_param(w, x, "w")
    cdef const void* pb = _row_param(b, x, "b")
    cdef cnp.npy_intp dims[1]
    dims[0] = R
    mean_arr = _empty_f64(1, dims)
    rstd_arr = _empty_f64(1, dims)
    cdef double* mean = <double*>cnp.PyArray_DATA(mean_arr)
    cdef double* rstd = <double*>cnp.PyArray_DATA(rstd_arr)
    cdef int typenum = cnp.PyArray_TYPE(x)
    cdef fn_epi ep_
    cdef const fn_epi* ep = _epi_of(epi, &ep_, out)
    cdef const void* pres = _residual_of(res, hsum, x)
    cdef void* phs = NULL if pres == NULL else cnp.PyArray_DATA(<cnp.ndarray>hsum)
    if typenum == cnp.NPY_FLOAT:
        with nogil:
            _rows_forward_task(
                <const float*>cnp.PyArray_DATA(x), <float*>cnp.PyArray_DATA(out), 0, R, M,
                <const float*>pw, <const float*>pb, eps, center, mean, rstd, False,
                <const float*>pres, <float*>phs, ep, False,
            )
    elif typenum == cnp.NPY_DOUBLE:
        with nogil:
            _rows_forward_task(
                <const double*>cnp.PyArray_DATA(x), <double*>cnp.PyArray_DATA(out), 0, R, M,
                <const double*>pw, <const double*>pb, eps, center, mean, rstd, False,
                <const double*>pres, <double*>phs, ep, False,
            )
    else:
        raise ValueError("x must be float32 or float64")
    return mean_arr, rstd_arr



cdef void _channels_small_task(
    const floating_t* x, Py_ssize_t N, Py_ssize_t A, Py_ssize_t C, Py_ssize_t B,
    const double* given_mean, const double* given_var, const double* w, const double* b,
    double eps, floating_t* out, double* mean, double* var, double* rstd,
) noexcept nogil:
    cdef Py_ssize_t n, a, c, j, g
    cdef double cnt = <double>(A * B), mu, q, sc, sh
    cdef const floating_t* p
    cdef floating_t* o
    for n in range(N):
        for c in range(C):
            g = n * C + c
            if given_mean == NULL:
                mu = 0.0
                for a in range(A):
                    mu += _sum(x + ((n * A + a) * C + c) * B, B)
                mu = mu / cnt
                q = 0.0
                for a in range(A):
                    q += _sum_sq_dev(x + ((n * A + a) * C + c) * B, B, mu)
                mean[g] = mu
                var[g] = q / cnt
            else:
                mean[g] = given_mean[g]
                var[g] = given_var[g]
            mu = mean[g]
            sc = 1.0 / sqrt(var[g] + eps)
            rstd[g] = sc
            if w != NULL:
                sc = sc * w[c]
            sh = b[c] if b != NULL else 0.0
            for a in range(A):
                p = x + ((n * A + a) * C + c) * B
                o = out + ((n * A + a) * C + c) * B
                for j in range(B):
                    o[j] = <floating_t>((<double>p[j] - mu) * sc + sh)


cdef const double* _f64_data(object a, Py_ssize_t size, str name) except? NULL:
    """The data of an optional C-contiguous float64 array of ``size`` values (NULL for None)."""
    if a is None:
        return NULL
    if (
        not isinstance(a, np.ndarray)
        or cnp.PyArray_TYPE(<cnp.ndarray>a) != cnp.NPY_DOUBLE
        or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a)
        or cnp.PyArray_SIZE(<cnp.ndarray>a) != size
    ):
        raise ValueError(f"{name} must be a C-contiguous float64 array of {size} values")
    return <const double*>cnp.PyArray_DATA(<cnp.ndarray>a)


def channels_small(
    cnp.ndarray x not None, object given_mean, object given_var, object w, object b, double eps,
    cnp.ndarray out not None, object epi=None,
):
    """Statistics and normalization of a small ``(N, A, C, B)`` array in one call, one thread.

    ``x`` and ``out``: C-contiguous float32 or float64 of one dtype.  Returns
    float64 ``(mean, var, rstd)`` ``(N, C)``: the statistics of ``x`` (exact
    two-pass sums in float64) or, when given, ``given_mean``/``given_var``
    (float64 ``(N, C)``).  ``y = (x - mean) * (rstd * w) + b`` is computed in
    float64 and rounded once; ``w``/``b`` (float64 ``(C,)``) may be None.  For
    inputs whose per-call cost is all overhead: it saves the separate
    statistics and apply calls, their task planning and the NumPy coefficient
    arithmetic between them.
    """
    if cnp.PyArray_NDIM(x) != 4 or cnp.PyArray_NDIM(out) != 4:
        raise ValueError("x and out must be 4-D")
    cdef Py_ssize_t N = x.shape[0], A = x.shape[1], C = x.shape[2], B = x.shape[3]
    if out.shape[0] != N or out.shape[1] != A or out.shape[2] != C or out.shape[3] != B:
        raise ValueError("out must have the shape of x")
    _check_same(x, x, "x")
    _check_same(out, x, "out")
    if (given_mean is None) != (given_var is None):
        raise ValueError("given_mean and given_var go together")
    cdef const double* gm = _f64_data(given_mean, N * C, "given_mean")
    cdef const double* gv = _f64_data(given_var, N * C, "given_var")
    cdef const double* pw = _f64_data(w, C, "w")
    cdef const double* pb = _f64_data(b, C, "b")
    cdef cnp.npy_intp dims[2]
    dims[0] = N
    dims[1] = C
    mean_arr = _empty_f64(2, dims)
    var_arr = _empty_f64(2, dims)
    rstd_arr = _empty_f64(2, dims)
    cdef double* mean = <double*>cnp.PyArray_DATA(mean_arr)
    cdef double* var = <double*>cnp.PyArray_DATA(var_arr)
    cdef double* rstd = <double*>cnp.PyArray_DATA(rstd_arr)
    cdef int typenum = cnp.PyArray_TYPE(x)
    cdef fn_epi ep_
    cdef const fn_epi* ep = _epi_of(epi, &ep_, out)
    cdef Py_ssize_t size = N * A * C * B
    if typenum == cnp.NPY_FLOAT:
        with nogil:
            _channels_small_task(
                <const float*>cnp.PyArray_DATA(x), N, A, C, B, gm, gv, pw, pb, eps,
                <float*>cnp.PyArray_DATA(out), mean, var, rstd,
            )
            if ep != NULL:  # the output is small: the epilogue finds it in cache
                fn_epilogue_f(ep, <float*>cnp.PyArray_DATA(out), <float*>cnp.PyArray_DATA(out), size, False)
    elif typenum == cnp.NPY_DOUBLE:
        with nogil:
            _channels_small_task(
                <const double*>cnp.PyArray_DATA(x), N, A, C, B, gm, gv, pw, pb, eps,
                <double*>cnp.PyArray_DATA(out), mean, var, rstd,
            )
            if ep != NULL:
                fn_epilogue_d(ep, <double*>cnp.PyArray_DATA(out), <double*>cnp.PyArray_DATA(out), size, False)
    else:
        raise ValueError("x must be float32 or float64")
    return mean_arr, var_arr, rstd_arr


cdef void _given_coefficients(
    const double* gm, const double* gv, const double* w, const double* b, double eps,
    Py_ssize_t N, Py_ssize_t C, bint folded, double* rstd,
    floating_t* hi, floating_t* lo, floating_t* scale, floating_t* shift,
) noexcept nogil:
    """The apply kernels' coefficients of given ``(N, C)`` float64 statistics, as the general
    path forms them (:mod:`fastnorm.backends._coefficients`): ``folded`` puts ``lo`` into ``shift``."""
    cdef Py_ssize_t g, c
    cdef double mu, rs, sc, sh
    cdef floating_t h
    for g in range(N * C):
        c = g % C
        mu = gm[g]
        rs = 1.0 / sqrt(gv[g] + eps)
        rstd[g] = rs
        sc = rs * w[c] if w != NULL else rs
        sh = b[c] if b != NULL else 0.0
        h = <floating_t>mu
        hi[g] = h
        scale[g] = <floating_t>sc
        if folded:
            lo[g] = 0
            shift[g] = <floating_t>(sh - (mu - <double>h) * sc)
        else:
            lo[g] = <floating_t>(mu - <double>h)
            shift[g] = <floating_t>sh


cdef void _given_apply(
    const floating_t* x, floating_t* out, Py_ssize_t N, Py_ssize_t A, Py_ssize_t C, Py_ssize_t B,
    const double* gm, const double* gv, const double* w, const double* b, double eps,
    double* rstd, floating_t* coef, Py_ssize_t nsplit, int num_threads, bint stream,
    const fn_epi* ep,
) noexcept nogil:
    cdef floating_t* hi = coef
    cdef floating_t* lo = coef + N * C
    cdef floating_t* scale = coef + 2 * N * C
    cdef floating_t* shift = coef + 3 * N * C
    _given_coefficients(gm, gv, w, b, eps, N, C, B == 1, rstd, hi, lo, scale, shift)
    if B == 1:
        _apply_lanes_parallel(x, out, hi, scale, shift, N, A, C, num_threads, stream, ep)
    else:
        _apply_runs_parallel(x, out, hi, lo, scale, shift, N, A, C, B, nsplit, num_threads, stream, ep)


def channels_given(
    cnp.ndarray x not None, cnp.ndarray given_mean not None, cnp.ndarray given_var not None,
    object w, object b, double eps, cnp.ndarray out not None, Py_ssize_t nsplit, int num_threads,
    bint stream=False, object epi=None,
):
    """Normalization of ``(N, A, C, B)`` with given statistics (inference) in one call.

    ``x`` and ``out``: C-contiguous float32 or float64 of one dtype;
    ``given_mean``/``given_var``: float64 ``(N, C)``; ``w``/``b``: float64
    ``(C,)`` or None.  The coefficients are formed as the general path forms
    them and applied by the same parallel loops (``nsplit`` pieces per run,
    ``num_threads``), so the result is the general path's to the bit; the call
    saves its NumPy arithmetic on ``(N, C)`` vectors and its second kernel
    call.  Returns float64 ``(mean, var, rstd)`` ``(N, C)`` (the given arrays
    and the computed ``rstd``).
    """
    if cnp.PyArray_NDIM(x) != 4 or cnp.PyArray_NDIM(out) != 4:
        raise ValueError("x and out must be 4-D")
    cdef Py_ssize_t N = x.shape[0], A = x.shape[1], C = x.shape[2], B = x.shape[3]
    if out.shape[0] != N or out.shape[1] != A or out.shape[2] != C or out.shape[3] != B:
        raise ValueError("out must have the shape of x")
    _check_same(x, x, "x")
    _check_same(out, x, "out")
    if nsplit < 1:
        raise ValueError("nsplit must be at least 1")
    cdef const double* gm = _f64_data(given_mean, N * C, "given_mean")
    cdef const double* gv = _f64_data(given_var, N * C, "given_var")
    cdef const double* pw = _f64_data(w, C, "w")
    cdef const double* pb = _f64_data(b, C, "b")
    cdef cnp.npy_intp dims[2]
    dims[0] = N
    dims[1] = C
    rstd_arr = _empty_f64(2, dims)
    cdef double* rstd = <double*>cnp.PyArray_DATA(rstd_arr)
    cdef int typenum = cnp.PyArray_TYPE(x)
    coef_arr = np.empty(4 * N * C, dtype=x.dtype)
    cdef void* coef = cnp.PyArray_DATA(coef_arr)
    cdef fn_epi ep_
    cdef const fn_epi* ep = _epi_of(epi, &ep_, out)
    if typenum == cnp.NPY_FLOAT:
        with nogil:
            _given_apply(
                <const float*>cnp.PyArray_DATA(x), <float*>cnp.PyArray_DATA(out), N, A, C, B,
                gm, gv, pw, pb, eps, rstd, <float*>coef, nsplit, num_threads, stream, ep,
            )
    elif typenum == cnp.NPY_DOUBLE:
        with nogil:
            _given_apply(
                <const double*>cnp.PyArray_DATA(x), <double*>cnp.PyArray_DATA(out), N, A, C, B,
                gm, gv, pw, pb, eps, rstd, <double*>coef, nsplit, num_threads, stream, ep,
            )
    else:
        raise ValueError("x must be float32 or float64")
    return given_mean, given_var, rstd_arr


def running_update(
    floating_t[::1] running_mean, floating_t[::1] running_var, const double[::1] mean,
    const double[::1] var, double factor, double bessel,
):
    """``running = (1 - factor) * running + factor * batch`` in float64, the variance's batch
    value being ``var * bessel`` (unbiased); rounded once to the buffers' dtype."""
    cdef Py_ssize_t c
    with nogil:
        for c in range(running_mean.shape[0]):
            running_mean[c] = <floating_t>((1.0 - factor) * running_mean[c] + factor * mean[c])
            running_var[c] = <floating_t>((1.0 - factor) * running_var[c] + factor * (var[c] * bessel))


def rows_backward(
    const floating_t[:, ::1] x, const floating_t[:, ::1] dy, const double[::1] mean,
    const double[::1] rstd, const double[::1] w64, const floating_t[::1] w, bint center,
    floating_t[:, ::1] dx, Py_ssize_t ntask, int num_threads, bint stream=False, bint prefetch=False,
    object count=None,
):
    """``dx`` of :func:`rows_forward`; returns the float64 column sums ``(sum(dy * xhat), sum(dy))``.

    ``count``: float64 ``(R,)``, the number of values each row's statistics were taken over
    (a masked forward's; ``dy`` is zero at the values left out), instead of ``M``.

    The column sums are taken while ``dx`` is written (the values are in
    registers then) into data-type buffers per task, flushed into float64
    every ``COLUMN_FLUSH`` rows.  ``stream``: write ``dx`` past the caches
    (where its rows allow whole aligned vectors); ``prefetch``: ask for the
    data ahead of the first pass over each row.
    """
    cdef Py_ssize_t R = x.shape[0], M = x.shape[1]
    cdef Py_ssize_t chunk = (R + ntask - 1) // ntask, t, r, r_end, i, j, pair, pending
    cdef double mu, rs, sg, sgx, cnt
    cdef floating_t h
    cdef floating_t* co
    cdef const double* pcount = NULL
    cdef double[::1] count_v
    if count is not None:
        count_v = count
        if count_v.shape[0] != R:
            raise ValueError("count must have one value per row")
        pcount = &count_v[0]
    cdef floating_t* gw_t
    cdef floating_t* gb_t
    cdef double* gw_r
    cdef double* gb_r
    dtype = np.float32 if floating_t is float else np.float64
    gw_arr = _scratch(ntask, M)
    gb_arr = _scratch(ntask, M)
    cdef double[:, ::1] gw = gw_arr
    cdef double[:, ::1] gb = gb_arr
    cdef floating_t[:, ::1] buf = _scratch(ntask, 2 * M, dtype)
    cdef floating_t[:, ::1] coef = _scratch(ntask, 16, dtype)  # two rows' (h, lw, s, k2, k3)
    stream = stream and fn_nt_ok(&dx[0, 0], M * sizeof(floating_t))
    with nogil:
        for t in prange(ntask, num_threads=num_threads, schedule="static"):
            gw_t = &buf[t, 0]
            gb_t = &buf[t, M]
            gw_r = &gw[t, 0]
            gb_r = &gb[t, 0]
            co = &coef[t, 0]
            pending = 0
            r = t * chunk
            r_end = _imin(R, (t + 1) * chunk)
            while r < r_end:
                pair = 2 if r + 1 < r_end else 1
                for j in range(pair):  # each row's sums and coefficients
                    mu = mean[r + j]
                    rs = rstd[r + j]
                    sg = 0.0  # assigned in the loop: private to the thread (its address is passed)
                    sgx = 0.0
                    _row_grad_sums(&x[r + j, 0], &dy[r + j, 0], &w64[0], M, mu, rs, &sg, &sgx, prefetch)
                    cnt = M
                    if pcount != NULL:
                        cnt = pcount[r + j] if pcount[r + j] > 0 else 1.0
                    h = <floating_t>mu
                    co[5 * j] = h
                    co[5 * j + 1] = <floating_t>(mu - <double>h)
                    co[5 * j + 2] = <floating_t>rs
                    co[5 * j + 3] = <floating_t>(-rs * (sgx / cnt))
                    co[5 * j + 4] = <floating_t>(-rs * (sg / cnt) if center else 0.0)
                if prefetch and r + pair < R:  # the next rows, on their way while these are written
                    fn_prefetch(<const char*>&x[r + pair, 0], pair * M * sizeof(floating_t))
                    fn_prefetch(<const char*>&dy[r + pair, 0], pair * M * sizeof(floating_t))
                if pair == 2:
                    _row_grad_apply2(&x[r, 0], &dy[r, 0], &dx[r, 0], M, co, &w[0], gw_t, gb_t, stream)
                else:
                    _row_grad_apply(&x[r, 0], &dy[r, 0], &dx[r, 0], M, co[0], co[1], co[2], &w[0],
                                    co[3], co[4], gw_t, gb_t, stream)
                r = r + pair
                pending = pending + pair
                if pending >= COLUMN_FLUSH:
                    for i in range(M):
                        gw_r[i] += gw_t[i]
                        gb_r[i] += gb_t[i]
                        gw_t[i] = 0
                        gb_t[i] = 0
                    pending = 0
            for i in range(M):
                gw_r[i] += gw_t[i]
                gb_r[i] += gb_t[i]
            if stream:
                fn_sfence()
    return gw_arr[:, :M].sum(axis=0), gb_arr[:, :M].sum(axis=0)


# ----------------------------------------------------------------------------
# grouped rows (channels-first InstanceNorm / GroupNorm): a statistics group is
# one contiguous row of K channels x S values; reduce and normalize it in one
# pass while it sits in cache, per-channel affine
# ----------------------------------------------------------------------------


def grouped_forward(
    const floating_t[:, ::1] x, Py_ssize_t G, Py_ssize_t S, const double[::1] w,
    const floating_t[::1] b, double eps, floating_t[:, ::1] out, Py_ssize_t ntask, int num_threads,
    bint stream=False, bint prefetch=False, object epi=None,
):
    """Normalize rows of ``(N*G, K*S)``; row ``r`` holds channels ``(r % G) * K + k``.

    ``stream``: ``out`` written past the caches; ``prefetch``: ask for the data ahead of
    the statistics pass; ``epi``: an epilogue applied in the same pass.
    """
    cdef fn_epi ep_
    cdef const fn_epi* ep = _epi_of(epi, &ep_, out)
    cdef Py_ssize_t R = x.shape[0], L = x.shape[1], K = L // S
    cdef Py_ssize_t chunk = (R + ntask - 1) // ntask, t, r, k, c0
    cdef double mu, var, rs
    cdef floating_t h, lw
    mean_arr = np.empty(R)
    var_arr = np.empty(R)
    cdef double[::1] mean = mean_arr
    cdef double[::1] variance = var_arr
    with nogil:
        for t in prange(ntask, num_threads=num_threads, schedule="static"):
            for r in range(t * chunk, _imin(R, (t + 1) * chunk)):
                mu = 0.0  # assigned in the loop: private to the thread (its address is passed)
                var = 0.0
                _row_moments(&x[r, 0], L, True, &mu, &var, prefetch)
                rs = 1.0 / sqrt(var + eps)
                mean[r] = mu
                variance[r] = var
                h = <floating_t>mu
                lw = <floating_t>(mu - <double>h)
                c0 = (r % G) * K
                for k in range(K):
                    _seg_normalize_ep(
                        &x[r, k * S], &out[r, k * S], S, h, lw, <floating_t>(rs * w[c0 + k]), b[c0 + k],
                        stream, ep,
                    )
            if stream:
                fn_sfence()
    return mean_arr, var_arr


def grouped_backward(
    const floating_t[:, ::1] x, const floating_t[:, ::1] dy, const double[::1] mean,
    const double[::1] rstd, Py_ssize_t G, Py_ssize_t S, const double[::1] w64,
    floating_t[:, ::1] dx, Py_ssize_t ntask, int num_threads, bint stream=False, bint prefetch=False,
):
    """``dx`` of :func:`grouped_forward`; returns per-channel ``(sum(dy * xhat), sum(dy))``;
    ``stream``: ``dx`` written past the caches; ``prefetch``: ask for the data ahead of the
    sums pass."""
    cdef Py_ssize_t R = x.shape[0], L = x.shape[1], K = L // S, C = G * K
    cdef Py_ssize_t chunk = (R + ntask - 1) // ntask, t, r, k, c0
    cdef double mu, rs, sg, sgx, s1, s2
    cdef floating_t h, lw, rs_t, k2, k3
    gw_arr = _scratch(ntask, C)
    gb_arr = _scratch(ntask, C)
    cdef double[:, ::1] gw = gw_arr
    cdef double[:, ::1] gb = gb_arr
    with nogil:
        for t in prange(ntask, num_threads=num_threads, schedule="static"):
            for r in range(t * chunk, _imin(R, (t + 1) * chunk)):
                mu = mean[r]
                rs = rstd[r]
                c0 = (r % G) * K
                sg = 0.0
                sgx = 0.0
                for k in range(K):
                    s1 = 0.0
                    s2 = 0.0
                    _seg_grad_sums(&x[r, k * S], &dy[r, k * S], S, mu, &s1, &s2, prefetch)
                    gb[t, c0 + k] += s1
                    gw[t, c0 + k] += s2 * rs
                    sg = sg + w64[c0 + k] * s1
                    sgx = sgx + w64[c0 + k] * s2
                k2 = <floating_t>(-rs * (sgx * rs / L))
                k3 = <floating_t>(-rs * (sg / L))
                h = <floating_t>mu
                lw = <floating_t>(mu - <double>h)
                rs_t = <floating_t>rs
                for k in range(K):
                    _seg_grad_apply(
                        &x[r, k * S], &dy[r, k * S], &dx[r, k * S], S,
                        h, lw, rs_t, <floating_t>(rs * w64[c0 + k]), k2, k3, stream,
                    )
            if stream:
                fn_sfence()
    return gw_arr[:, :C].sum(axis=0), gb_arr[:, :C].sum(axis=0)


# ----------------------------------------------------------------------------
# channels-last samples (InstanceNorm / GroupNorm, B == 1): per-channel
# statistics of one sample, merged per group, then the sample is normalized
# while it is still in cache
# ----------------------------------------------------------------------------


def samples_forward(
    const floating_t[:, :, ::1] x, Py_ssize_t G, const double[::1] w, const floating_t[::1] b,
    double eps, floating_t[:, :, ::1] out, int num_threads, bint stream=False, object epi=None,
):
    """Normalize channels-last ``(N, S, C)`` per sample and group; returns ``(N, G)`` ``(mean, var)``;
    ``epi``: an epilogue applied in the same pass."""
    cdef fn_epi ep_
    cdef const fn_epi* ep = _epi_of(epi, &ep_, out)
    cdef Py_ssize_t N = x.shape[0], A = x.shape[1], C = x.shape[2], K = C // G
    cdef Py_ssize_t n, g, k, c, tid
    cdef double cnt, mu, var, d, rs, sc
    cdef double* mean
    cdef double* m2
    cdef floating_t* hi
    cdef floating_t* shift
    cdef floating_t* scale
    dtype = np.float32 if floating_t is float else np.float64
    gmean_arr = np.empty((N, G))
    gvar_arr = np.empty((N, G))
    cdef double[:, ::1] gmean = gmean_arr
    cdef double[:, ::1] gvar = gvar_arr
    cdef double[:, ::1] s64 = _scratch(max(num_threads, 1), 5 * C)
    cdef floating_t[:, ::1] sdt = _scratch(max(num_threads, 1), 3 * C, dtype)
    stream = stream and fn_nt_ok(&out[0, 0, 0], C * <Py_ssize_t>sizeof(floating_t))
    with nogil:
        for n in prange(N, num_threads=num_threads, schedule="static"):
            tid = threadid()
            mean = &s64[tid, C]
            m2 = &s64[tid, 2 * C]
            hi = &sdt[tid, 0]
            shift = &sdt[tid, C]
            scale = &sdt[tid, 2 * C]
            cnt = _lane_moments(
                &x[n, 0, 0], C, 0, A, &s64[tid, 0], &s64[tid, 3 * C], mean, m2, &s64[tid, 4 * C]
            )
            for g in range(G):
                mu = 0.0
                for k in range(K):
                    mu = mu + mean[g * K + k]
                mu = mu / K
                var = 0.0
                for k in range(K):
                    d = mean[g * K + k] - mu
                    var = var + (m2[g * K + k] / cnt + d * d)
                var = var / K
                gmean[n, g] = mu
                gvar[n, g] = var
                rs = 1.0 / sqrt(var + eps)
                for k in range(K):
                    c = g * K + k
                    hi[c] = <floating_t>mu
                    sc = rs * w[c]
                    scale[c] = <floating_t>sc
                    shift[c] = <floating_t>(<double>b[c] - (mu - <double>hi[c]) * sc)
            _lanes_normalize_ep(&x[n, 0, 0], &out[n, 0, 0], A, C, hi, scale, shift, stream, ep)
            if stream:
                fn_sfence()
    return gmean_arr, gvar_arr


cdef void _samples_grad_coefficients(
    const double* p0, const double* p1, const double* mean, const double* rstd, const double* w,
    Py_ssize_t C, Py_ssize_t K, double cnt, bint center, floating_t* co, double* acc,
) noexcept nogil:
    """From one sample's per-channel ``p0 = sum(dy)``, ``p1 = sum(dy * (x - mean))``: adds
    ``(grad_weight, grad_bias)`` into ``acc`` (``2 C``) and writes the ``dx`` coefficients
    ``(hi, rstd, k1, k2, k3)`` (``C`` each, the mean's low part folded into ``k3``) to ``co``."""
    cdef Py_ssize_t g, k, c
    cdef double sg, sgx, rs, mu, k2, k3
    cdef floating_t h
    for g in range(C // K):
        sg = 0.0
        sgx = 0.0
        for k in range(K):
            c = g * K + k
            acc[c] += p1[c] * rstd[c]
            acc[C + c] += p0[c]
            sg = sg + w[c] * p0[c]
            sgx = sgx + w[c] * p1[c]
        for k in range(K):
            c = g * K + k
            rs = rstd[c]
            mu = mean[c]
            h = <floating_t>mu
            k2 = -rs * (sgx * rs / cnt)
            k3 = -rs * (sg / cnt) if center else 0.0
            co[c] = h
            co[C + c] = <floating_t>rs
            co[2 * C + c] = <floating_t>(rs * w[c])
            co[3 * C + c] = <floating_t>k2
            co[4 * C + c] = <floating_t>(k3 - k2 * ((mu - <double>h) * rs))


def samples_backward(
    const floating_t[:, :, ::1] x, const floating_t[:, :, ::1] dy, const double[:, ::1] mean,
    const double[:, ::1] rstd, Py_ssize_t K, const double[::1] w, bint center,
    floating_t[:, :, ::1] dx, int num_threads, bint stream=False, bint split=False,
):
    """``dx`` of channels-last ``(N, S, C)`` statistics per sample and group of ``K``
    channels (``mean``, ``rstd``: float64 ``(N, C)``, a group's on each of its channels), a
    sample at a time while it sits in cache: its per-channel sums of ``dy`` and
    ``dy * (x - mean)``, the group's coefficients, then ``dx``.  Returns float64 ``(C,)``
    ``(grad_weight, grad_bias)``.  ``split``: the threads share each sample (its rows split
    between them), for samples too large for one per thread in cache; else each thread takes
    whole samples.  ``stream``: ``dx`` written past the caches."""
    cdef Py_ssize_t N = x.shape[0], A = x.shape[1], C = x.shape[2]
    cdef Py_ssize_t n, c, t, tid, a0, a1
    cdef Py_ssize_t T = _imax(1, _imin(num_threads, A)) if split else _imax(num_threads, 1)
    cdef Py_ssize_t per = (A + T - 1) // T
    cdef double cnt = <double>(A * K)
    cdef double* p0
    cdef floating_t* co
    dtype = np.float32 if floating_t is float else np.float64
    cdef double[:, ::1] part = _scratch(T, 2 * C)
    cdef double[:, ::1] acc = _scratch(T, 2 * C)  # grad_weight, then grad_bias
    cdef floating_t[:, ::1] sdt = _scratch(T, 5 * C, dtype)
    stream = stream and fn_nt_ok(&dx[0, 0, 0], C * <Py_ssize_t>sizeof(floating_t))
    with nogil:
        if split:
            for n in range(N):
                for t in prange(T, num_threads=T, schedule="static"):
                    for c in range(2 * C):
                        part[t, c] = 0.0
                    a0 = t * per
                    a1 = _imin(A, a0 + per)
                    if a1 > a0:
                        _lanes_grad_sums(&x[n, a0, 0], &dy[n, a0, 0], a1 - a0, C, &mean[n, 0],
                                         &part[t, 0], &part[t, C])
                for t in range(1, T):
                    for c in range(2 * C):
                        part[0, c] += part[t, c]
                _samples_grad_coefficients(&part[0, 0], &part[0, C], &mean[n, 0], &rstd[n, 0], &w[0],
                                           C, K, cnt, center, &sdt[0, 0], &acc[0, 0])
                co = &sdt[0, 0]
                for t in prange(T, num_threads=T, schedule="static"):
                    a0 = t * per
                    a1 = _imin(A, a0 + per)
                    if a1 > a0:
                        _lanes_grad_apply(&x[n, a0, 0], &dy[n, a0, 0], &dx[n, a0, 0], a1 - a0, C, co,
                                          &co[C], &co[2 * C], &co[3 * C], &co[4 * C], stream)
                    if stream:
                        fn_sfence()
        else:
            for n in prange(N, num_threads=T, schedule="static"):
                tid = threadid()
                p0 = &part[tid, 0]
                co = &sdt[tid, 0]
                for c in range(2 * C):
                    p0[c] = 0.0
                _lanes_grad_sums(&x[n, 0, 0], &dy[n, 0, 0], A, C, &mean[n, 0], p0, &p0[C])
                _samples_grad_coefficients(p0, &p0[C], &mean[n, 0], &rstd[n, 0], &w[0], C, K, cnt,
                                           center, co, &acc[tid, 0])
                _lanes_grad_apply(&x[n, 0, 0], &dy[n, 0, 0], &dx[n, 0, 0], A, C, co, &co[C],
                                  &co[2 * C], &co[3 * C], &co[4 * C], stream)
                if stream:
                    fn_sfence()
    sums = np.asarray(acc)[:, :2 * C].sum(axis=0)
    return np.ascontiguousarray(sums[:C]), np.ascontiguousarray(sums[C:])
