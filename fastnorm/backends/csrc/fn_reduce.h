/* fn_reduce.h: contiguous reductions in float64 (sums, shifted sums, gradient sums),
   with 4 independent vectors of partial sums in a fixed order. */
#ifndef FASTNORM_FN_REDUCE_H
#define FASTNORM_FN_REDUCE_H

#include "fn_simd.h"

/* g_k = dy * w and d_k = x of four vectors from i on (fn_rgsums) */
#define FN_RG_TERMS(T, LD, i)                                                            \
    g0 = LD(gy + i) * fn_ld_d(w + i); g1 = LD(gy + i + FN_VW) * fn_ld_d(w + i + FN_VW);  \
    g2 = LD(gy + i + 2 * FN_VW) * fn_ld_d(w + i + 2 * FN_VW);                            \
    g3 = LD(gy + i + 3 * FN_VW) * fn_ld_d(w + i + 3 * FN_VW);                            \
    d0 = LD(x + i); d1 = LD(x + i + FN_VW); d2 = LD(x + i + 2 * FN_VW); d3 = LD(x + i + 3 * FN_VW)

/* T: element type; S: suffix; LD: load FN_VW values as fn_vd; PF: 1 to prefetch ahead
   (FN_PF) in the reductions that read data from memory for the first time; RS_EACH: see
   fn_rgsums */
#define FN_DEFINE(T, S, LD, PF, RS_EACH)                                                 \
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
/* sum(g) and sum(g * (x - mu) * rs) of a row in float64, g = dy * w.  Without center   */ \
/* (RMSNorm) the mean is zero and sum(g) is not taken (sg is left alone).  RS_EACH: rs   */ \
/* multiplies each term (float64 data, whose products could overflow), else the sum     */ \
/* (float32 data: a widened value times its gradient and weight stays far inside        */ \
/* float64's range), one multiplication per value fewer. */                              \
static inline void fn_rgsums_##S(const T* x, const T* gy, const double* w, Py_ssize_t n, \
                                 double mu, double rs, int center, double* sg,           \
                                 double* sgx) {                                          \
    fn_vd a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, b0 = {0}, b1 = {0}, b2 = {0}, b3 = {0}; \
    fn_vd g0, g1, g2, g3, d0, d1, d2, d3;                                                \
    Py_ssize_t i = 0; double t1, t2, g, d;                                               \
    if (!center) mu = 0.0;                                                               \
    if (center) {                                                                        \
        for (; i + 4 * FN_VW <= n; i += 4 * FN_VW) {                                     \
            if (PF) { FN_PF(x + i, 4 * FN_VW * sizeof(T)); FN_PF(gy + i, 4 * FN_VW * sizeof(T)); } \
            FN_RG_TERMS(T, LD, i);                                                       \
            a0 += g0; a1 += g1; a2 += g2; a3 += g3;                                      \
            d0 -= mu; d1 -= mu; d2 -= mu; d3 -= mu;                                      \
            if (RS_EACH) { d0 *= rs; d1 *= rs; d2 *= rs; d3 *= rs; }                     \
            b0 += g0 * d0; b1 += g1 * d1; b2 += g2 * d2; b3 += g3 * d3;                  \
        }                                                                                \
    } else {  /* the same loop without sum(g) and the mean */                            \
        for (; i + 4 * FN_VW <= n; i += 4 * FN_VW) {                                     \
            if (PF) { FN_PF(x + i, 4 * FN_VW * sizeof(T)); FN_PF(gy + i, 4 * FN_VW * sizeof(T)); } \
            FN_RG_TERMS(T, LD, i);                                                       \
            if (RS_EACH) { d0 *= rs; d1 *= rs; d2 *= rs; d3 *= rs; }                     \
            b0 += g0 * d0; b1 += g1 * d1; b2 += g2 * d2; b3 += g3 * d3;                  \
        }                                                                                \
    }                                                                                    \
    for (; i + FN_VW <= n; i += FN_VW) {                                                 \
        g0 = LD(gy + i) * fn_ld_d(w + i); d0 = LD(x + i) - mu; a0 += g0;                 \
        if (RS_EACH) d0 *= rs;                                                           \
        b0 += g0 * d0;                                                                   \
    }                                                                                    \
    t1 = fn_hsum_d((a0 + a1) + (a2 + a3)); t2 = fn_hsum_d((b0 + b1) + (b2 + b3));        \
    for (; i < n; i++) {                                                                 \
        g = (double)gy[i] * w[i]; t1 += g; d = (double)x[i] - mu;                        \
        t2 += g * (RS_EACH ? d * rs : d); }                                              \
    if (center) *sg = t1;                                                                \
    *sgx = RS_EACH ? t2 : t2 * rs;                                                       \
}
FN_DEFINE(float, f, fn_ld_f, 0, 0)
FN_DEFINE(double, d, fn_ld_d, 0, 1)
FN_DEFINE(float, pf_f, fn_ld_f, 1, 0)
FN_DEFINE(double, pf_d, fn_ld_d, 1, 1)

#endif  /* FASTNORM_FN_REDUCE_H */
