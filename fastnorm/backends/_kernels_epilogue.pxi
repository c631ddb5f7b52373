# _epilogue: epilogues fused into the normalizing pass (included by _kernels.pyx)

# ----------------------------------------------------------------------------
# epilogues: the elementwise work after a normalization (a shortcut added, an
# activation, or in the gradient mode the activation's derivative), applied to
# a block of normalized values while it sits in L1, so that the output is
# written once
# ----------------------------------------------------------------------------

cdef extern from "fn_epilogue.h":
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
