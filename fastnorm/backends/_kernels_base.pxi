# _base: ctypes, tuning constants, scratch and the C kernels' declarations (included by _kernels.pyx)

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
# the innermost loops, in C (csrc/): reductions, and loops with restrict pointers
# ----------------------------------------------------------------------------

cdef extern from "fn_simd.h":
    double fn_chan_mean(double ma, double mb, double f) nogil
    void fn_prefetch(const char* p, Py_ssize_t bytes) nogil
    double fn_shift(double k) nogil

cdef extern from "fn_reduce.h":
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
                     double mu, double rs, bint center, double* sg, double* sgx) nogil
    void fn_rgsums_d(const double* x, const double* gy, const double* w, Py_ssize_t n,
                     double mu, double rs, bint center, double* sg, double* sgx) nogil
    void fn_rgsums_pf_f(const float* x, const float* gy, const double* w, Py_ssize_t n,
                     double mu, double rs, bint center, double* sg, double* sgx) nogil
    void fn_rgsums_pf_d(const double* x, const double* gy, const double* w, Py_ssize_t n,
                     double mu, double rs, bint center, double* sg, double* sgx) nogil

cdef extern from "fn_lanes.h":
    void fn_lanes_shifted_f(const float* x, Py_ssize_t rows, Py_ssize_t C, double* K, double* s, double* q,
                            Py_ssize_t ahead, bint first) nogil
    void fn_lanes_shifted_d(const double* x, Py_ssize_t rows, Py_ssize_t C, double* K, double* s, double* q,
                            Py_ssize_t ahead, bint first) nogil
    void fn_lanes_merge(Py_ssize_t C, double n, double g, double f, double w, const double* K, const double* s,
                        const double* q, double* mean, double* m2) nogil
    void fn_lanes_gsums_f(const float* x, const float* gy, Py_ssize_t rows, Py_ssize_t C,
                          const double* mu, double* p0, double* p1) nogil
    void fn_lanes_gsums_d(const double* x, const double* gy, Py_ssize_t rows, Py_ssize_t C,
                          const double* mu, double* p0, double* p1) nogil

cdef extern from "fn_elementwise.h":
    void fn_row_grad_apply2_f(const float* x, const float* gy, float* dx, Py_ssize_t n, const float* c,
                              const float* w, float* gw, float* gb) nogil
    void fn_row_grad_apply2_nt_f(const float* x, const float* gy, float* dx, Py_ssize_t n, const float* c,
                                 const float* w, float* gw, float* gb) nogil
    void fn_row_grad_apply2_d(const double* x, const double* gy, double* dx, Py_ssize_t n, const double* c,
                              const double* w, double* gw, double* gb) nogil
    void fn_row_grad_apply2_nt_d(const double* x, const double* gy, double* dx, Py_ssize_t n, const double* c,
                                 const double* w, double* gw, double* gb) nogil
    void fn_row_grad_apply2_nc_f(const float* x, const float* gy, float* dx, Py_ssize_t n, const float* c,
                                 const float* w, float* gw, float* gb) nogil
    void fn_row_grad_apply2_nc_d(const double* x, const double* gy, double* dx, Py_ssize_t n, const double* c,
                                 const double* w, double* gw, double* gb) nogil
    void fn_row_grad_apply2_nc_nt_f(const float* x, const float* gy, float* dx, Py_ssize_t n, const float* c,
                                    const float* w, float* gw, float* gb) nogil
    void fn_row_grad_apply2_nc_nt_d(const double* x, const double* gy, double* dx, Py_ssize_t n, const double* c,
                                    const double* w, double* gw, double* gb) nogil
    void fn_row_grad_apply_f(const float* x, const float* gy, float* dx, Py_ssize_t n, float h, float lw,
                             float s, const float* w, float k2, float k3, float* gw, float* gb) nogil
    void fn_row_grad_apply_nt_f(const float* x, const float* gy, float* dx, Py_ssize_t n, float h, float lw,
                             float s, const float* w, float k2, float k3, float* gw, float* gb) nogil
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
