# _elementwise: elementwise pieces, in the data type (included by _kernels.pyx)

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
    const floating_t* w, floating_t* gw, floating_t* gb, bint center, bint stream,
) noexcept nogil:
    """:func:`_row_grad_apply` of two consecutive rows (``x[:n]``, ``x[n:2n]``), ``c`` their
    coefficients ``(h, lw, s, k2, k3)`` one row after the other; without ``center`` (RMSNorm)
    ``h``, ``lw`` and ``k3`` are zero and not read."""
    if floating_t is float:
        if center:
            if stream:
                fn_row_grad_apply2_nt_f(x, gy, dx, n, c, w, gw, gb)
            else:
                fn_row_grad_apply2_f(x, gy, dx, n, c, w, gw, gb)
        elif stream:
            fn_row_grad_apply2_nc_nt_f(x, gy, dx, n, c, w, gw, gb)
        else:
            fn_row_grad_apply2_nc_f(x, gy, dx, n, c, w, gw, gb)
    else:
        if center:
            if stream:
                fn_row_grad_apply2_nt_d(x, gy, dx, n, c, w, gw, gb)
            else:
                fn_row_grad_apply2_d(x, gy, dx, n, c, w, gw, gb)
        elif stream:
            fn_row_grad_apply2_nc_nt_d(x, gy, dx, n, c, w, gw, gb)
        else:
            fn_row_grad_apply2_nc_d(x, gy, dx, n, c, w, gw, gb)


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
