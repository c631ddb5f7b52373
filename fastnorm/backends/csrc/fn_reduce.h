/* fn_reduce.h: contiguous reductions in float64 (sums, shifted sums, gradient sums),
   with 4 independent vectors of partial sums in a fixed order. */
#ifndef FASTNORM_FN_REDUCE_H
#define FASTNORM_FN_REDUCE_H

#include "fn_simd.h"

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

#endif  /* FASTNORM_FN_REDUCE_H */
