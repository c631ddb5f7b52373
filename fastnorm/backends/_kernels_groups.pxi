# _groups: groups and samples: InstanceNorm and GroupNorm (included by _kernels.pyx)

# ----------------------------------------------------------------------------
# grouped rows (channels-first InstanceNorm / GroupNorm): a statistics group is
# one contiguous row of K channels x S values; reduce and normalize it in one
# pass while it sits in cache, per-channel affine
# ----------------------------------------------------------------------------


def grouped_forward(
    const floating_t[:, ::1] x, Py_ssize_t G, Py_ssize_t S, const double[::1] w,
    const floating_t[::1] b, double eps, floating_t[:, ::1] out, Py_ssize_t ntask, int num_threads,
    bint stream=False, bint prefetch=False, object epi=None,
):
    """Normalize rows of ``(N*G, K*S)``; row ``r`` holds channels ``(r % G) * K + k``.

    ``stream``: ``out`` written past the caches; ``prefetch``: ask for the data ahead of
    the statistics pass; ``epi``: an epilogue applied in the same pass.
    """
    cdef fn_epi ep_
    cdef const fn_epi* ep = _epi_of(epi, &ep_, out)
    cdef Py_ssize_t R = x.shape[0], L = x.shape[1], K = L // S
    cdef Py_ssize_t chunk = (R + ntask - 1) // ntask, t, r, k, c0
    cdef double mu, var, rs
    cdef floating_t h, lw
    mean_arr = np.empty(R)
    var_arr = np.empty(R)
    cdef double[::1] mean = mean_arr
    cdef double[::1] variance = var_arr
    with nogil:
        for t in prange(ntask, num_threads=num_threads, schedule="static"):
            for r in range(t * chunk, _imin(R, (t + 1) * chunk)):
                mu = 0.0  # assigned in the loop: private to the thread (its address is passed)
                var = 0.0
                _row_moments(&x[r, 0], L, True, &mu, &var, prefetch)
                rs = 1.0 / sqrt(var + eps)
                mean[r] = mu
                variance[r] = var
                h = <floating_t>mu
                lw = <floating_t>(mu - <double>h)
                c0 = (r % G) * K
                for k in range(K):
                    _seg_normalize_ep(
                        &x[r, k * S], &out[r, k * S], S, h, lw, <floating_t>(rs * w[c0 + k]), b[c0 + k],
                        stream, ep,
                    )
            if stream:
                fn_sfence()
    return mean_arr, var_arr


def grouped_backward(
    const floating_t[:, ::1] x, const floating_t[:, ::1] dy, const double[::1] mean,
    const double[::1] rstd, Py_ssize_t G, Py_ssize_t S, const double[::1] w64,
    floating_t[:, ::1] dx, Py_ssize_t ntask, int num_threads, bint stream=False, bint prefetch=False,
):
    """``dx`` of :func:`grouped_forward`; returns per-channel ``(sum(dy * xhat), sum(dy))``;
    ``stream``: ``dx`` written past the caches; ``prefetch``: ask for the data ahead of the
    sums pass."""
    cdef Py_ssize_t R = x.shape[0], L = x.shape[1], K = L // S, C = G * K
    cdef Py_ssize_t chunk = (R + ntask - 1) // ntask, t, r, k, c0
    cdef double mu, rs, sg, sgx, s1, s2
    cdef floating_t h, lw, rs_t, k2, k3
    gw_arr = _scratch(ntask, C)
    gb_arr = _scratch(ntask, C)
    cdef double[:, ::1] gw = gw_arr
    cdef double[:, ::1] gb = gb_arr
    with nogil:
        for t in prange(ntask, num_threads=num_threads, schedule="static"):
            for r in range(t * chunk, _imin(R, (t + 1) * chunk)):
                mu = mean[r]
                rs = rstd[r]
                c0 = (r % G) * K
                sg = 0.0
                sgx = 0.0
                for k in range(K):
                    s1 = 0.0
                    s2 = 0.0
                    _seg_grad_sums(&x[r, k * S], &dy[r, k * S], S, mu, &s1, &s2, prefetch)
                    gb[t, c0 + k] += s1
                    gw[t, c0 + k] += s2 * rs
                    sg = sg + w64[c0 + k] * s1
                    sgx = sgx + w64[c0 + k] * s2
                k2 = <floating_t>(-rs * (sgx * rs / L))
                k3 = <floating_t>(-rs * (sg / L))
                h = <floating_t>mu
                lw = <floating_t>(mu - <double>h)
                rs_t = <floating_t>rs
                for k in range(K):
                    _seg_grad_apply(
                        &x[r, k * S], &dy[r, k * S], &dx[r, k * S], S,
                        h, lw, rs_t, <floating_t>(rs * w64[c0 + k]), k2, k3, stream,
                    )
            if stream:
                fn_sfence()
    return gw_arr[:, :C].sum(axis=0), gb_arr[:, :C].sum(axis=0)


# ----------------------------------------------------------------------------
# channels-last samples (InstanceNorm / GroupNorm, B == 1): per-channel
# statistics of one sample, merged per group, then the sample is normalized
# while it is still in cache
# ----------------------------------------------------------------------------


def samples_forward(
    const floating_t[:, :, ::1] x, Py_ssize_t G, const double[::1] w, const floating_t[::1] b,
    double eps, floating_t[:, :, ::1] out, int num_threads, bint stream=False, object epi=None,
):
    """Normalize channels-last ``(N, S, C)`` per sample and group; returns ``(N, G)`` ``(mean, var)``;
    ``epi``: an epilogue applied in the same pass."""
    cdef fn_epi ep_
    cdef const fn_epi* ep = _epi_of(epi, &ep_, out)
    cdef Py_ssize_t N = x.shape[0], A = x.shape[1], C = x.shape[2], K = C // G
    cdef Py_ssize_t n, g, k, c, tid
    cdef double cnt, mu, var, d, rs, sc
    cdef double* mean
    cdef double* m2
    cdef floating_t* hi
    cdef floating_t* shift
    cdef floating_t* scale
    dtype = np.float32 if floating_t is float else np.float64
    gmean_arr = np.empty((N, G))
    gvar_arr = np.empty((N, G))
    cdef double[:, ::1] gmean = gmean_arr
    cdef double[:, ::1] gvar = gvar_arr
    cdef double[:, ::1] s64 = _scratch(max(num_threads, 1), 5 * C)
    cdef floating_t[:, ::1] sdt = _scratch(max(num_threads, 1), 3 * C, dtype)
    stream = stream and fn_nt_ok(&out[0, 0, 0], C * <Py_ssize_t>sizeof(floating_t))
    with nogil:
        for n in prange(N, num_threads=num_threads, schedule="static"):
            tid = threadid()
            mean = &s64[tid, C]
            m2 = &s64[tid, 2 * C]
            hi = &sdt[tid, 0]
            shift = &sdt[tid, C]
            scale = &sdt[tid, 2 * C]
            cnt = _lane_moments(
                &x[n, 0, 0], C, 0, A, &s64[tid, 0], &s64[tid, 3 * C], mean, m2, &s64[tid, 4 * C]
            )
            for g in range(G):
                mu = 0.0
                for k in range(K):
                    mu = mu + mean[g * K + k]
                mu = mu / K
                var = 0.0
                for k in range(K):
                    d = mean[g * K + k] - mu
                    var = var + (m2[g * K + k] / cnt + d * d)
                var = var / K
                gmean[n, g] = mu
                gvar[n, g] = var
                rs = 1.0 / sqrt(var + eps)
                for k in range(K):
                    c = g * K + k
                    hi[c] = <floating_t>mu
                    sc = rs * w[c]
                    scale[c] = <floating_t>sc
                    shift[c] = <floating_t>(<double>b[c] - (mu - <double>hi[c]) * sc)
            _lanes_normalize_ep(&x[n, 0, 0], &out[n, 0, 0], A, C, hi, scale, shift, stream, ep)
            if stream:
                fn_sfence()
    return gmean_arr, gvar_arr


cdef void _samples_grad_coefficients(
    const double* p0, const double* p1, const double* mean, const double* rstd, const double* w,
    Py_ssize_t C, Py_ssize_t K, double cnt, bint center, floating_t* co, double* acc,
) noexcept nogil:
    """From one sample's per-channel ``p0 = sum(dy)``, ``p1 = sum(dy * (x - mean))``: adds
    ``(grad_weight, grad_bias)`` into ``acc`` (``2 C``) and writes the ``dx`` coefficients
    ``(hi, rstd, k1, k2, k3)`` (``C`` each, the mean's low part folded into ``k3``) to ``co``."""
    cdef Py_ssize_t g, k, c
    cdef double sg, sgx, rs, mu, k2, k3
    cdef floating_t h
    for g in range(C // K):
        sg = 0.0
        sgx = 0.0
        for k in range(K):
            c = g * K + k
            acc[c] += p1[c] * rstd[c]
            acc[C + c] += p0[c]
            sg = sg + w[c] * p0[c]
            sgx = sgx + w[c] * p1[c]
        for k in range(K):
            c = g * K + k
            rs = rstd[c]
            mu = mean[c]
            h = <floating_t>mu
            k2 = -rs * (sgx * rs / cnt)
            k3 = -rs * (sg / cnt) if center else 0.0
            co[c] = h
            co[C + c] = <floating_t>rs
            co[2 * C + c] = <floating_t>(rs * w[c])
            co[3 * C + c] = <floating_t>k2
            co[4 * C + c] = <floating_t>(k3 - k2 * ((mu - <double>h) * rs))


def samples_backward(
    const floating_t[:, :, ::1] x, const floating_t[:, :, ::1] dy, const double[:, ::1] mean,
    const double[:, ::1] rstd, Py_ssize_t K, const double[::1] w, bint center,
    floating_t[:, :, ::1] dx, int num_threads, bint stream=False, bint split=False,
):
    """``dx`` of channels-last ``(N, S, C)`` statistics per sample and group of ``K``
    channels (``mean``, ``rstd``: float64 ``(N, C)``, a group's on each of its channels), a
    sample at a time while it sits in cache: its per-channel sums of ``dy`` and
    ``dy * (x - mean)``, the group's coefficients, then ``dx``.  Returns float64 ``(C,)``
    ``(grad_weight, grad_bias)``.  ``split``: the threads share each sample (its rows split
    between them), for samples too large for one per thread in cache; else each thread takes
    whole samples.  ``stream``: ``dx`` written past the caches."""
    cdef Py_ssize_t N = x.shape[0], A = x.shape[1], C = x.shape[2]
    cdef Py_ssize_t n, c, t, tid, a0, a1
    cdef Py_ssize_t T = _imax(1, _imin(num_threads, A)) if split else _imax(num_threads, 1)
    cdef Py_ssize_t per = (A + T - 1) // T
    cdef double cnt = <double>(A * K)
    cdef double* p0
    cdef floating_t* co
    dtype = np.float32 if floating_t is float else np.float64
    cdef double[:, ::1] part = _scratch(T, 2 * C)
    cdef double[:, ::1] acc = _scratch(T, 2 * C)  # grad_weight, then grad_bias
    cdef floating_t[:, ::1] sdt = _scratch(T, 5 * C, dtype)
    stream = stream and fn_nt_ok(&dx[0, 0, 0], C * <Py_ssize_t>sizeof(floating_t))
    with nogil:
        if split:
            for n in range(N):
                for t in prange(T, num_threads=T, schedule="static"):
                    for c in range(2 * C):
                        part[t, c] = 0.0
                    a0 = t * per
                    a1 = _imin(A, a0 + per)
                    if a1 > a0:
                        _lanes_grad_sums(&x[n, a0, 0], &dy[n, a0, 0], a1 - a0, C, &mean[n, 0],
                                         &part[t, 0], &part[t, C])
                for t in range(1, T):
                    for c in range(2 * C):
                        part[0, c] += part[t, c]
                _samples_grad_coefficients(&part[0, 0], &part[0, C], &mean[n, 0], &rstd[n, 0], &w[0],
                                           C, K, cnt, center, &sdt[0, 0], &acc[0, 0])
                co = &sdt[0, 0]
                for t in prange(T, num_threads=T, schedule="static"):
                    a0 = t * per
                    a1 = _imin(A, a0 + per)
                    if a1 > a0:
                        _lanes_grad_apply(&x[n, a0, 0], &dy[n, a0, 0], &dx[n, a0, 0], a1 - a0, C, co,
                                          &co[C], &co[2 * C], &co[3 * C], &co[4 * C], stream)
                    if stream:
                        fn_sfence()
        else:
            for n in prange(N, num_threads=T, schedule="static"):
                tid = threadid()
                p0 = &part[tid, 0]
                co = &sdt[tid, 0]
                for c in range(2 * C):
                    p0[c] = 0.0
                _lanes_grad_sums(&x[n, 0, 0], &dy[n, 0, 0], A, C, &mean[n, 0], p0, &p0[C])
                _samples_grad_coefficients(p0, &p0[C], &mean[n, 0], &rstd[n, 0], &w[0], C, K, cnt,
                                           center, co, &acc[tid, 0])
                _lanes_grad_apply(&x[n, 0, 0], &dy[n, 0, 0], &dx[n, 0, 0], A, C, co, &co[C],
                                  &co[2 * C], &co[3 * C], &co[4 * C], stream)
                if stream:
                    fn_sfence()
    sums = np.asarray(acc)[:, :2 * C].sum(axis=0)
    return np.ascontiguousarray(sums[:C]), np.ascontiguousarray(sums[C:])
