/* fn_elementwise.h: elementwise passes in the data type: normalize, gradient apply,
   with cached or cache-bypassing (non-temporal) stores. */
#ifndef FASTNORM_FN_ELEMENTWISE_H
#define FASTNORM_FN_ELEMENTWISE_H

#include "fn_simd.h"

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
/* One value written past the caches (MOVNTI) where the vectors are: the values before
   and after a run's aligned vectors then fill the same write-combining buffers as the
   vectors, so a line shared by two runs still leaves whole, with no read for ownership
   (a cached store to it would fetch the line and then flush it); elsewhere a plain store.
   FN_ST1 picks by ALIGN (1: cached variant), a compile-time constant. */
#if FN_VW > 1 && defined(__SSE2__) && defined(__x86_64__)
  static inline void fn_st1nt_float(float* p, float v) { int b; memcpy(&b, &v, sizeof b); _mm_stream_si32((int*)p, b); }
  static inline void fn_st1nt_double(double* p, double v) {
      long long b; memcpy(&b, &v, sizeof b); _mm_stream_si64((long long*)p, b); }
#else
  static inline void fn_st1nt_float(float* p, float v) { *p = v; }
  static inline void fn_st1nt_double(double* p, double v) { *p = v; }
#endif
#define FN_ST1(T, ALIGN, p, v) do { if ((ALIGN) > 1) fn_st1nt_##T((p), (v)); else *(p) = (v); } while (0)
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
    for (; i < head; i++) FN_ST1(T, ALIGN, dx + i, p * gy[i] + k2 * (((x[i] - h) - lw) * rs) + k3); \
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
    for (; i < n; i++) FN_ST1(T, ALIGN, dx + i, p * gy[i] + k2 * (((x[i] - h) - lw) * rs) + k3); \
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
    for (; i < head; i++) FN_ST1(T, ALIGN, y + i, AFF(((x[i] - h) - lw) * s, w[i], b[i])); \
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
    for (; i < n; i++) FN_ST1(T, ALIGN, y + i, AFF(((x[i] - h) - lw) * s, w[i], b[i])); \
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
    for (; i < head; i++) FN_ST1(T, ALIGN, y + i, ((x[i] - h) - lw) * s + o);            \
    for (; i + 4 * W <= n; i += 4 * W) {                                                 \
        a0 = LDV(x + i); a1 = LDV(x + i + W); a2 = LDV(x + i + 2 * W); a3 = LDV(x + i + 3 * W); \
        a0 = ((a0 - h) - lw) * s + o; a1 = ((a1 - h) - lw) * s + o;                      \
        a2 = ((a2 - h) - lw) * s + o; a3 = ((a3 - h) - lw) * s + o;                      \
        STV(y + i, a0); STV(y + i + W, a1); STV(y + i + 2 * W, a2); STV(y + i + 3 * W, a3); \
    }                                                                                    \
    for (; i + W <= n; i += W) { a0 = LDV(x + i); STV(y + i, ((a0 - h) - lw) * s + o); } \
    for (; i < n; i++) FN_ST1(T, ALIGN, y + i, ((x[i] - h) - lw) * s + o);               \
}
/* The cached-store normalize of runs takes vectors of at most 256 bits.  On the AVX-512
   machine measured (AMD EPYC, Zen 4), its 512-bit form took 1.06-1.18x the time of the
   256-bit one where the data came from memory (BatchNorm inference on channels-first
   float32 and float64 data, runs of 196 and 3136 values; the same time on runs of 49) and
   no less where they sat in cache; the stores that bypass the caches keep whole-line
   vectors. */
#if FN_VW > 4
  typedef float fn_vf8 __attribute__((vector_size(32)));
  typedef double fn_vd4 __attribute__((vector_size(32)));
  static inline fn_vf8 fn_ldf8(const float* p) { fn_vf8 v; memcpy(&v, p, sizeof v); return v; }
  static inline void fn_stf8(float* p, fn_vf8 v) { memcpy(p, &v, sizeof v); }
  static inline fn_vd4 fn_ldd4(const double* p) { fn_vd4 v; memcpy(&v, p, sizeof v); return v; }
  static inline void fn_std4(double* p, fn_vd4 v) { memcpy(p, &v, sizeof v); }
  FN_SEG_NORMALIZE(float, fn_seg_normalize_f, fn_vf8, 8, fn_ldf8, fn_stf8, 1)
  FN_SEG_NORMALIZE(double, fn_seg_normalize_d, fn_vd4, 4, fn_ldd4, fn_std4, 1)
#else
  FN_SEG_NORMALIZE(float, fn_seg_normalize_f, fn_vf, FN_FW, fn_ldf, fn_stf, 1)
  FN_SEG_NORMALIZE(double, fn_seg_normalize_d, fn_vd, FN_VW, fn_ld_d, fn_std, 1)
#endif
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
#define FN_ROW_GRAD_APPLY2(T, NAME, V, W, LDV, STV, STS, CENTER)                          \
/* the same for two rows, x[:n] and x[n:2n] (gy and dx alike), with coefficients       \
   c = (h, lw, s, k2, k3) of each in turn: per value of the column sums one load and   \
   one store for both rows (the first row's terms are added first, as row by row).     \
   Without CENTER (RMSNorm: h = lw = k3 = 0) xhat = x * s and dx has no k3 term, the   \
   same values with three operations per value fewer. */                                \
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
        if (CENTER) {                                                                    \
            x0 = ((x0 - h0) - l0) * s0; x1 = ((x1 - h1) - l1) * s1;                      \
            STV(dx + i, (s0 * wv) * g0 + a0 * x0 + b0);                                  \
            STV(dx + n + i, (s1 * wv) * g1 + a1 * x1 + b1);                              \
        } else {                                                                         \
            x0 = x0 * s0; x1 = x1 * s1;                                                  \
            STV(dx + i, (s0 * wv) * g0 + a0 * x0);                                       \
            STV(dx + n + i, (s1 * wv) * g1 + a1 * x1);                                   \
        }                                                                                \
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
FN_ROW_GRAD_APPLY2(float, fn_row_grad_apply2_f, fn_vf, FN_FW, fn_ldf, fn_stf, fn_stf, 1)
FN_ROW_GRAD_APPLY2(double, fn_row_grad_apply2_d, fn_vd, FN_VW, fn_ld_d, fn_std, fn_std, 1)
FN_ROW_GRAD_APPLY2(float, fn_row_grad_apply2_nt_f, fn_vf, FN_FW, fn_ldf, fn_stf_nt, fn_stf, 1)
FN_ROW_GRAD_APPLY2(double, fn_row_grad_apply2_nt_d, fn_vd, FN_VW, fn_ld_d, fn_std_nt, fn_std, 1)
FN_ROW_GRAD_APPLY2(float, fn_row_grad_apply2_nc_f, fn_vf, FN_FW, fn_ldf, fn_stf, fn_stf, 0)
FN_ROW_GRAD_APPLY2(double, fn_row_grad_apply2_nc_d, fn_vd, FN_VW, fn_ld_d, fn_std, fn_std, 0)
FN_ROW_GRAD_APPLY2(float, fn_row_grad_apply2_nc_nt_f, fn_vf, FN_FW, fn_ldf, fn_stf_nt, fn_stf, 0)
FN_ROW_GRAD_APPLY2(double, fn_row_grad_apply2_nc_nt_d, fn_vd, FN_VW, fn_ld_d, fn_std_nt, fn_std, 0)
/* whether rows of row_bytes from y take only whole aligned vector stores */
static inline int fn_nt_ok(const void* y, Py_ssize_t row_bytes) {
    return FN_NT_BYTES > 1 && (size_t)y % FN_NT_BYTES == 0 && row_bytes % FN_NT_BYTES == 0;
}

#endif  /* FASTNORM_FN_ELEMENTWISE_H */
