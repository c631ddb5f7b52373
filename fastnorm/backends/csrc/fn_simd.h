/* fn_simd.h: the build's vector types and loads, FMA-proof accumulation, non-finite
   handling and prefetching, shared by every kernel header.

   A reduction only vectorizes if the compiler may reorder it, and the
   extension is compiled without -ffast-math; so each contiguous reduction is
   written with 4 independent vectors of partial sums (GCC/Clang vector
   extensions; the vector width is that of the build's ISA: 2 doubles for SSE2,
   4 for AVX, 8 for AVX-512), added up at the end; other compilers get the same
   code with scalars.  The order of the additions is fixed by the source, so a
   build always gives the same bits.  Loops that update scratch arrays next to
   the data (LayerNorm column sums, channels-last per-channel sums) declare the
   scratch ``restrict``, which Cython cannot, so that they vectorize without
   run-time alias checks. */
#ifndef FASTNORM_FN_SIMD_H
#define FASTNORM_FN_SIMD_H

#include <Python.h>
#include <math.h>
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

#endif  /* FASTNORM_FN_SIMD_H */
