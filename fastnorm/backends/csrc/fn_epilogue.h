/* fn_epilogue.h: the elementwise work after a normalization (a shortcut added, an
   activation, or in the gradient mode the activation's derivative), applied to
   a block of normalized values while it sits in L1, so that the output is
   written once */
#ifndef FASTNORM_FN_EPILOGUE_H
#define FASTNORM_FN_EPILOGUE_H

#include "fn_simd.h"
#include "fn_elementwise.h"

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
    for (; i < head; i++) FN_ST1(T, FN_NT_BYTES, y + i, z[i]);                          \
    for (; i + W <= n; i += W) STNT(y + i, LDV(z + i));                                 \
    for (; i < n; i++) FN_ST1(T, FN_NT_BYTES, y + i, z[i]);                             \
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
      for (; i < head; i++) { b = ((x[i] - h) - lw) * s + o; FN_ST1(T, ALIGN, y + i, K(b, i, FN_LD1, FN_RELU1, FN_LEAKY1)); } \
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
      for (; i < n; i++) { b = ((x[i] - h) - lw) * s + o; FN_ST1(T, ALIGN, y + i, K(b, i, FN_LD1, FN_RELU1, FN_LEAKY1)); } }
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

#endif  /* FASTNORM_FN_EPILOGUE_H */
