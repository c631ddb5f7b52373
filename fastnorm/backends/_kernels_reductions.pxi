# _reductions: reductions and block statistics in float64, over a run, a row or channels-last rows (included by _kernels.pyx)

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
    double mu, double rs, bint center, double* sg, double* sgx, bint pf,
) noexcept nogil:
    """``sum(g)`` and ``sum(g * xhat)`` of a row in float64, ``g = dy * w``, ``xhat = (x - mu) * rs``;
    without ``center`` the mean is zero and ``sg`` is left alone; ``pf``: prefetch ahead (``FN_PF``)."""
    if floating_t is float:
        if pf:
            fn_rgsums_pf_f(x, gy, w, n, mu, rs, center, sg, sgx)
        else:
            fn_rgsums_f(x, gy, w, n, mu, rs, center, sg, sgx)
    else:
        if pf:
            fn_rgsums_pf_d(x, gy, w, n, mu, rs, center, sg, sgx)
        else:
            fn_rgsums_d(x, gy, w, n, mu, rs, center, sg, sgx)


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
