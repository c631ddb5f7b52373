/* fn_lanes.h: per-channel float64 sums of channels-last slabs (rows of C values),
   register-blocked over channels, and their Chan merge. */
#ifndef FASTNORM_FN_LANES_H
#define FASTNORM_FN_LANES_H

#include "fn_simd.h"

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

#endif  /* FASTNORM_FN_LANES_H */
