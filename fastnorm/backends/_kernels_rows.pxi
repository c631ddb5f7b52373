# _rows: rows: LayerNorm and RMSNorm, one fused pass per row (included by _kernels.pyx)

# ----------------------------------------------------------------------------
# rows (LayerNorm / RMSNorm): one fused pass per row while it sits in cache
# ----------------------------------------------------------------------------


cdef void _rows_forward_task(
    const floating_t* x, floating_t* out, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t M,
    const floating_t* w, const floating_t* b, double eps, bint center, double* mean, double* rstd,
    bint stream, const floating_t* res, floating_t* hsum, const fn_epi* ep, bint given,
) noexcept nogil:
    """Rows ``r0..r1``; ``res`` (not NULL): the rows normalized are ``x + res``, also written to
    ``hsum`` (a row that fits :data:`FN_EPI_BLOCK` values is summed into a buffer, normalized
    from it and copied out as ``stream`` says; a longer one is summed into ``hsum`` and read
    back from cache); ``ep``: the epilogue (NULL: none).  ``given``: ``mean`` and ``rstd``
    hold the statistics to normalize with (nothing is reduced)."""
    cdef double mu = 0.0, var = 0.0, rs
    cdef floating_t h
    cdef Py_ssize_t r
    cdef const floating_t* src
    cdef floating_t buf[4 * FN_EPI_BLOCK]
    for r in range(r0, r1):
        src = x + r * M
        if res != NULL:
            if M <= 4 * FN_EPI_BLOCK:
                _add(src, res + r * M, buf, M)
                _copy_out(hsum + r * M, buf, M, stream)
                src = buf
            else:
                _add(src, res + r * M, hsum + r * M, M)
                src = hsum + r * M
        if given:
            mu = mean[r]
            rs = rstd[r]
        else:
            _row_moments(src, M, center, &mu, &var, False)
            rs = 1.0 / sqrt(var + eps)
            mean[r] = mu
            rstd[r] = rs
        h = <floating_t>mu
        _row_normalize_ep(
            src, out + r * M, M, h, <floating_t>(mu - <double>h), <floating_t>rs, w, b, stream, ep
        )
    if stream:
        fn_sfence()


cdef const void* _residual_of(object res, object hsum, object x_obj) except? NULL:
    """The data of ``res`` (None: NULL); ``hsum`` must then be given, both C-contiguous of
    ``x``'s dtype and size."""
    if res is None:
        return NULL
    cdef cnp.ndarray x = np.asarray(x_obj)
    _epi_array(hsum, x, "hsum")
    return _epi_array(res, x, "res")


def rows_forward(
    const floating_t[:, ::1] x, const floating_t[::1] w, const floating_t[::1] b, double eps,
    bint center, floating_t[:, ::1] out, Py_ssize_t ntask, int num_threads, bint stream=False,
    object epi=None, object res=None, object hsum=None,
):
    """Normalize each row of ``(R, M)``; returns float64 ``(mean, rstd)`` ``(R,)``.

    ``w``/``b``: ``(M,)`` or None (not applied).  ``num_threads == 1`` runs on
    the calling thread without entering an OpenMP region (which costs about a
    microsecond even for one thread).  ``stream``: ``out`` written past the caches.
    ``epi``: an epilogue applied in the same pass.  ``res``: the rows normalized are
    ``x + res``, also written to ``hsum`` (both of ``x``'s dtype and size).
    """
    cdef fn_epi ep_
    cdef const fn_epi* ep = _epi_of(epi, &ep_, out)
    cdef const floating_t* pres = <const floating_t*>_residual_of(res, hsum, x)
    cdef floating_t* phs = NULL
    if pres != NULL:
        phs = <floating_t*>cnp.PyArray_DATA(<cnp.ndarray>hsum)
    cdef Py_ssize_t R = x.shape[0], M = x.shape[1]
    cdef const floating_t* pw = NULL
    cdef const floating_t* pb = NULL
    if w is not None:
        pw = &w[0]
    if b is not None:
        pb = &b[0]
    mean_arr = np.empty(R)
    rstd_arr = np.empty(R)
    cdef double[::1] mean = mean_arr
    cdef double[::1] rstd = rstd_arr
    with nogil:
        _rows_forward_tasks(&x[0, 0], &out[0, 0], R, M, pw, pb, eps, center, &mean[0], &rstd[0],
                            stream, pres, phs, ep, ntask, num_threads)
    return mean_arr, rstd_arr


cdef void _rows_forward_tasks(
    const floating_t* x, floating_t* out, Py_ssize_t R, Py_ssize_t M, const floating_t* w,
    const floating_t* b, double eps, bint center, double* mean, double* rstd, bint stream,
    const floating_t* res, floating_t* hsum, const fn_epi* ep, Py_ssize_t ntask, int num_threads,
) noexcept nogil:
    """:func:`_rows_forward_task` over all ``R`` rows in ``ntask`` tasks on ``num_threads``
    threads (one: on the calling thread, without entering an OpenMP region)."""
    cdef Py_ssize_t chunk = (R + ntask - 1) // ntask, t
    if num_threads == 1:
        _rows_forward_task(x, out, 0, R, M, w, b, eps, center, mean, rstd, stream, res, hsum, ep, False)
    else:
        for t in prange(ntask, num_threads=num_threads, schedule="static"):
            _rows_forward_task(x, out, t * chunk, _imin(R, (t + 1) * chunk), M, w, b, eps, center,
                               mean, rstd, stream, res, hsum, ep, False)


def rows_apply(
    const floating_t[:, ::1] x, double[::1] mean, double[::1] rstd, const floating_t[::1] w,
    const floating_t[::1] b, floating_t[:, ::1] out, Py_ssize_t ntask, int num_threads,
    bint stream=False, object epi=None,
):
    """:func:`rows_forward` with given float64 ``(R,)`` statistics: ``out = (x - mean) * rstd
    * w + b`` per row (``mean`` zeros for RMSNorm), nothing reduced; ``epi`` as there."""
    cdef fn_epi ep_
    cdef const fn_epi* ep = _epi_of(epi, &ep_, out)
    cdef Py_ssize_t R = x.shape[0], M = x.shape[1]
    cdef Py_ssize_t chunk = (R + ntask - 1) // ntask, t
    cdef const floating_t* pw = NULL
    cdef const floating_t* pb = NULL
    if mean.shape[0] != R or rstd.shape[0] != R:
        raise ValueError("mean and rstd must have one value per row")
    if w is not None:
        pw = &w[0]
    if b is not None:
        pb = &b[0]
    with nogil:
        if num_threads == 1:
            _rows_forward_task(
                &x[0, 0], &out[0, 0], 0, R, M, pw, pb, 0.0, True, &mean[0], &rstd[0], stream,
                NULL, NULL, ep, True,
            )
        else:
            for t in prange(ntask, num_threads=num_threads, schedule="static"):
                _rows_forward_task(
                    &x[0, 0], &out[0, 0], t * chunk, _imin(R, (t + 1) * chunk), M, pw, pb, 0.0,
                    True, &mean[0], &rstd[0], stream, NULL, NULL, ep, True,
                )


def rows_backward(
    const floating_t[:, ::1] x, const floating_t[:, ::1] dy, const double[::1] mean,
    const double[::1] rstd, const double[::1] w64, const floating_t[::1] w, bint center,
    floating_t[:, ::1] dx, Py_ssize_t ntask, int num_threads, bint stream=False, bint prefetch=False,
    object count=None,
):
    """``dx`` of :func:`rows_forward`; returns the float64 column sums ``(sum(dy * xhat), sum(dy))``.

    ``count``: float64 ``(R,)``, the number of values each row's statistics were taken over
    (a masked forward's; ``dy`` is zero at the values left out), instead of ``M``.

    The column sums are taken while ``dx`` is written (the values are in
    registers then) into data-type buffers per task, flushed into float64
    every ``COLUMN_FLUSH`` rows.  ``stream``: write ``dx`` past the caches
    (where its rows allow whole aligned vectors); ``prefetch``: ask for the
    data ahead of the first pass over each row.
    """
    cdef Py_ssize_t R = x.shape[0], M = x.shape[1]
    cdef Py_ssize_t chunk = (R + ntask - 1) // ntask, t, r, r_end, i, j, pair, pending
    cdef double mu, rs, sg, sgx, cnt
    cdef floating_t h
    cdef floating_t* co
    cdef const double* pcount = NULL
    cdef double[::1] count_v
    if count is not None:
        count_v = count
        if count_v.shape[0] != R:
            raise ValueError("count must have one value per row")
        pcount = &count_v[0]
    cdef floating_t* gw_t
    cdef floating_t* gb_t
    cdef double* gw_r
    cdef double* gb_r
    dtype = np.float32 if floating_t is float else np.float64
    gw_arr = _scratch(ntask, M)
    gb_arr = _scratch(ntask, M)
    cdef double[:, ::1] gw = gw_arr
    cdef double[:, ::1] gb = gb_arr
    cdef floating_t[:, ::1] buf = _scratch(ntask, 2 * M, dtype)
    cdef floating_t[:, ::1] coef = _scratch(ntask, 16, dtype)  # two rows' (h, lw, s, k2, k3)
    stream = stream and fn_nt_ok(&dx[0, 0], M * sizeof(floating_t))
    with nogil:
        for t in prange(ntask, num_threads=num_threads, schedule="static"):
            gw_t = &buf[t, 0]
            gb_t = &buf[t, M]
            gw_r = &gw[t, 0]
            gb_r = &gb[t, 0]
            co = &coef[t, 0]
            pending = 0
            r = t * chunk
            r_end = _imin(R, (t + 1) * chunk)
            while r < r_end:
                pair = 2 if r + 1 < r_end else 1
                for j in range(pair):  # each row's sums and coefficients
                    mu = mean[r + j] if center else 0.0
                    rs = rstd[r + j]
                    sg = 0.0  # assigned in the loop: private to the thread (its address is passed)
                    sgx = 0.0
                    _row_grad_sums(&x[r + j, 0], &dy[r + j, 0], &w64[0], M, mu, rs, center, &sg, &sgx,
                                   prefetch)
                    cnt = M
                    if pcount != NULL:
                        cnt = pcount[r + j] if pcount[r + j] > 0 else 1.0
                    h = <floating_t>mu
                    co[5 * j] = h
                    co[5 * j + 1] = <floating_t>(mu - <double>h)
                    co[5 * j + 2] = <floating_t>rs
                    co[5 * j + 3] = <floating_t>(-rs * (sgx / cnt))
                    co[5 * j + 4] = <floating_t>(-rs * (sg / cnt) if center else 0.0)
                if prefetch and r + pair < R:  # the next rows, on their way while these are written
                    fn_prefetch(<const char*>&x[r + pair, 0], pair * M * sizeof(floating_t))
                    fn_prefetch(<const char*>&dy[r + pair, 0], pair * M * sizeof(floating_t))
                if pair == 2:
                    _row_grad_apply2(&x[r, 0], &dy[r, 0], &dx[r, 0], M, co, &w[0], gw_t, gb_t, center,
                                     stream)
                else:
                    _row_grad_apply(&x[r, 0], &dy[r, 0], &dx[r, 0], M, co[0], co[1], co[2], &w[0],
                                    co[3], co[4], gw_t, gb_t, stream)
                r = r + pair
                pending = pending + pair
                if pending >= COLUMN_FLUSH:
                    for i in range(M):
                        gw_r[i] += gw_t[i]
                        gb_r[i] += gb_t[i]
                        gw_t[i] = 0
                        gb_t[i] = 0
                    pending = 0
            for i in range(M):
                gw_r[i] += gw_t[i]
                gb_r[i] += gb_t[i]
            if stream:
                fn_sfence()
    return gw_arr[:, :M].sum(axis=0), gb_arr[:, :M].sum(axis=0)
