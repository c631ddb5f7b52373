# _lanes: lanes: channels-last data, rows of C channels (included by _kernels.pyx)

def stats_lanes(const floating_t[:, :, ::1] x, Py_ssize_t nsplit, int num_threads):
    """Mean and M2 per ``(n, c)`` of a non-empty channels-last ``(N, A, C)`` array."""
    cdef Py_ssize_t N = x.shape[0], A = x.shape[1], C = x.shape[2]
    cdef Py_ssize_t chunk = (A + nsplit - 1) // nsplit
    cdef Py_ssize_t t, n, k, a0, c, tid
    cdef double cnt
    part_arr = np.zeros((N, C, nsplit, 3))
    cdef double[:, :, :, ::1] part = part_arr
    cdef double[:, ::1] s64 = _scratch(max(num_threads, 1), 5 * C)
    cdef const floating_t* base = &x[0, 0, 0]
    with nogil:
        for t in prange(N * nsplit, num_threads=num_threads, schedule="static"):
            tid = threadid()
            n = t // nsplit
            k = t - n * nsplit
            a0 = k * chunk
            cnt = _lane_moments(
                base + n * A * C, C, a0, _imin(A, a0 + chunk),
                &s64[tid, 0], &s64[tid, 3 * C], &s64[tid, C], &s64[tid, 2 * C], &s64[tid, 4 * C],
            )
            for c in range(C):
                part[n, c, k, 0] = cnt
                part[n, c, k, 1] = s64[tid, C + c]
                part[n, c, k, 2] = s64[tid, 2 * C + c]
    mean = np.empty((N, C))
    m2 = np.empty((N, C))
    _merge_parts(part, mean, m2)
    return mean, m2


cdef void _apply_lanes_parallel(
    const floating_t* x, floating_t* out, const floating_t* hi, const floating_t* scale,
    const floating_t* shift, Py_ssize_t N, Py_ssize_t A, Py_ssize_t C, int num_threads, bint stream,
    const fn_epi* ep,
) noexcept nogil:
    """:func:`_lanes_normalize` of ``(N, A, C)`` split over rows ``(n, a)``, ``(N, C)``
    coefficients; ``stream`` is honoured where ``fn_nt_ok`` allows it."""
    cdef Py_ssize_t R = N * A, T = _imax(1, _imin(num_threads, R)), per = (R + T - 1) // T
    cdef Py_ssize_t t, r0, r1, n, a0, a1
    stream = stream and fn_nt_ok(out, C * <Py_ssize_t>sizeof(floating_t))
    for t in prange(T, num_threads=T, schedule="static"):
        r0 = t * per
        r1 = _imin(R, r0 + per)
        while r0 < r1:  # the rows of one sample at a time
            n = r0 // A
            a0 = r0 - n * A
            a1 = _imin(A, a0 + (r1 - r0))
            _lanes_normalize_ep(
                x + (n * A + a0) * C, out + (n * A + a0) * C, a1 - a0, C,
                hi + n * C, scale + n * C, shift + n * C, stream, ep,
            )
            r0 = r0 + (a1 - a0)
        if stream:
            fn_sfence()


def apply_lanes(
    const floating_t[:, :, ::1] x, const floating_t[:, ::1] hi,
    const floating_t[:, ::1] scale, const floating_t[:, ::1] shift, floating_t[:, :, ::1] out,
    int num_threads, bint stream=False, object epi=None,
):
    """Channels-last ``(N, A, C)`` ``out = (x - hi) * scale + shift``, split over rows ``(n, a)``.

    ``shift`` holds the low part of the mean: ``shift - (mean - hi) * scale``.  ``epi``: an
    epilogue applied in the same pass.
    """
    cdef fn_epi ep_
    cdef const fn_epi* ep = _epi_of(epi, &ep_, out)
    with nogil:
        _apply_lanes_parallel(
            &x[0, 0, 0], &out[0, 0, 0], &hi[0, 0], &scale[0, 0], &shift[0, 0],
            x.shape[0], x.shape[1], x.shape[2], num_threads, stream, ep,
        )


def backward_reduce_lanes(
    const floating_t[:, :, ::1] x, const floating_t[:, :, ::1] dy, const double[:, ::1] mean,
    Py_ssize_t nsplit, int num_threads,
):
    """Channels-last ``(N, A, C)`` version of :func:`backward_reduce_runs`."""
    cdef Py_ssize_t N = x.shape[0], A = x.shape[1], C = x.shape[2]
    cdef Py_ssize_t chunk = (A + nsplit - 1) // nsplit
    cdef Py_ssize_t t, n, k, i
    part_arr = _scratch(N * nsplit, 2 * C)  # task t = (n, k): sum(dy) then sum(dy * (x - mean))
    cdef double[:, ::1] part = part_arr
    with nogil:
        for t in prange(N * nsplit, num_threads=num_threads, schedule="static"):
            n = t // nsplit
            k = t - n * nsplit
            i = k * chunk
            if i < A:
                _lanes_grad_sums(&x[n, i, 0], &dy[n, i, 0], _imin(A, i + chunk) - i, C, &mean[n, 0],
                                 &part[t, 0], &part[t, C])
    sums = part_arr[:, :2 * C].reshape(N, nsplit, 2 * C).sum(axis=1)
    return np.ascontiguousarray(sums[:, :C]), np.ascontiguousarray(sums[:, C:])


def backward_apply_lanes(
    const floating_t[:, :, ::1] x, const floating_t[:, :, ::1] dy,
    const floating_t[:, ::1] hi, const floating_t[:, ::1] rstd,
    const floating_t[:, ::1] k1, const floating_t[:, ::1] k2, const floating_t[:, ::1] k3,
    floating_t[:, :, ::1] dx, int num_threads, bint stream=False,
):
    """Channels-last ``(N, A, C)`` ``dx = k1 * dy + k2 * (x - hi) * rstd + k3``, split over rows.

    ``k3`` holds the low part of the mean: ``k3 - k2 * (mean - hi) * rstd``.  ``stream``:
    ``dx`` written past the caches (where its rows allow whole aligned vectors).
    """
    cdef Py_ssize_t N = x.shape[0], A = x.shape[1], C = x.shape[2]
    cdef Py_ssize_t R = N * A, T = _imax(1, _imin(num_threads, R)), per = (R + T - 1) // T
    cdef Py_ssize_t t, r0, r1, n, a0, a1
    stream = stream and fn_nt_ok(&dx[0, 0, 0], C * sizeof(floating_t))
    with nogil:
        for t in prange(T, num_threads=T, schedule="static"):
            r0 = t * per
            r1 = _imin(R, r0 + per)
            while r0 < r1:
                n = r0 // A
                a0 = r0 - n * A
                a1 = _imin(A, a0 + (r1 - r0))
                _lanes_grad_apply(
                    &x[n, a0, 0], &dy[n, a0, 0], &dx[n, a0, 0], a1 - a0, C,
                    &hi[n, 0], &rstd[n, 0], &k1[n, 0], &k2[n, 0], &k3[n, 0], stream,
                )
                r0 = r0 + (a1 - a0)
            if stream:
                fn_sfence()
