# _runs: runs: channels-first data, B > 1 contiguous values per (sample, channel) run (included by _kernels.pyx)

# ----------------------------------------------------------------------------
# statistics
# ----------------------------------------------------------------------------


cdef void _stats_run_task(
    const floating_t* group, Py_ssize_t stride, Py_ssize_t B,
    Py_ssize_t j0, Py_ssize_t j1, double* result,
) noexcept nogil:
    """(count, mean, M2) of values j0..j1 of a group whose row a starts at group + a*stride."""
    cdef double cnt = 0.0, mean = 0.0, s, q, nb, mb
    cdef double m2 = 0.0
    cdef Py_ssize_t j = j0, je, jj, a, b0, b1
    while j < j1:
        je = _imin(j1, j + BLOCK)
        s = 0.0
        jj = j
        while jj < je:
            a = jj // B
            b0 = jj - a * B
            b1 = _imin(B, b0 + (je - jj))
            s += _sum(group + a * stride + b0, b1 - b0)
            jj += b1 - b0
        nb = <double>(je - j)
        mb = s / nb
        q = 0.0
        jj = j
        while jj < je:
            a = jj // B
            b0 = jj - a * B
            b1 = _imin(B, b0 + (je - jj))
            q += _sum_sq_dev(group + a * stride + b0, b1 - b0, mb)
            jj += b1 - b0
        _chan(&cnt, &mean, &m2, nb, mb, q)
        j = je
    result[0] = cnt
    result[1] = mean
    result[2] = m2


cdef void _merge_parts(const double[:, :, :, ::1] part, double[:, ::1] mean, double[:, ::1] m2) noexcept nogil:
    """Chan-merge ``part[n, c, k] = (count, mean, M2)`` over ``k``."""
    cdef Py_ssize_t n, c, k
    cdef double cnt, mu, q, nb, tot, d
    for n in range(part.shape[0]):
        for c in range(part.shape[1]):
            cnt = 0.0
            mu = 0.0
            q = 0.0
            for k in range(part.shape[2]):
                nb = part[n, c, k, 0]
                if nb == 0.0:
                    continue
                tot = cnt + nb
                d = part[n, c, k, 1] - mu
                mu = fn_chan_mean(mu, part[n, c, k, 1], nb / tot)
                q += part[n, c, k, 2] + d * d * (cnt * nb / tot)
                cnt = tot
            mean[n, c] = mu
            m2[n, c] = q


def stats_runs(const floating_t[:, :, :, ::1] x, Py_ssize_t nsplit, int num_threads):
    """Mean and M2 per group of a non-empty ``(N, A, C, B)`` array, each group split in ``nsplit`` tasks."""
    cdef Py_ssize_t N = x.shape[0], A = x.shape[1], C = x.shape[2], B = x.shape[3]
    cdef Py_ssize_t M = A * B, chunk = (M + nsplit - 1) // nsplit
    cdef Py_ssize_t t, g, k, n, c, j0
    part_arr = np.zeros((N, C, nsplit, 3))
    cdef double[:, :, :, ::1] part = part_arr
    cdef const floating_t* base = &x[0, 0, 0, 0]
    with nogil:
        for t in prange(N * C * nsplit, num_threads=num_threads, schedule="static"):
            g = t // nsplit
            k = t - g * nsplit
            n = g // C
            c = g - n * C
            j0 = k * chunk
            _stats_run_task(base + (n * A * C + c) * B, C * B, B, j0, _imin(M, j0 + chunk), &part[n, c, k, 0])
    mean = np.empty((N, C))
    m2 = np.empty((N, C))
    _merge_parts(part, mean, m2)
    return mean, m2


def stats_planes(const floating_t[:, :, :, ::1] x, int num_threads):
    """Mean and M2 per ``(n, c)`` of a non-empty ``(N, A, C, B)`` array, reading it in memory order.

    One task per run ``(n, a, c)`` of ``B`` values, in the order the runs lie
    in memory, so each thread streams through one contiguous part of the
    array (the prefetchers keep up; :func:`stats_runs` walks a group's ``A``
    runs, ``C * B`` values apart); a run's statistics are the row kernels'
    shifted one-pass blocks.  The ``A`` partial statistics of each group are
    Chan-merged in order afterwards.
    """
    cdef Py_ssize_t N = x.shape[0], A = x.shape[1], C = x.shape[2], B = x.shape[3]
    cdef Py_ssize_t t, n, a, c, na
    part_arr = np.empty((N, C, A, 3))
    cdef double[:, :, :, ::1] part = part_arr
    cdef const floating_t* base = &x[0, 0, 0, 0]
    with nogil:
        for t in prange(N * A * C, num_threads=num_threads, schedule="static"):
            na = t // C
            c = t - na * C
            n = na // A
            a = na - n * A
            part[n, c, a, 0] = <double>B
            _run_moments(base + t * B, B, &part[n, c, a, 1], &part[n, c, a, 2], False)
    mean = np.empty((N, C))
    m2 = np.empty((N, C))
    _merge_parts(part, mean, m2)
    return mean, m2


def stats_short_runs(const floating_t[:, :, :, ::1] x, Py_ssize_t nsplit, int num_threads):
    """Mean and M2 per ``(n, c)`` of a non-empty ``(N, A, C, B)`` array of short runs, reading it
    in memory order.

    One task per ``(n, chunk of A)``: it goes through its rows ``a`` in order, and through
    each row's ``C`` runs of ``B`` values, adding each run's sums shifted by its channel's
    first value (:c:func:`fn_shifted_f`) into per-channel accumulators, so no per-run
    statistics are stored and merged (:func:`stats_planes`) and no group is walked ``C * B``
    values at a time (:func:`stats_runs`).  ``M2 = S2 - S1**2 / n`` per task, as a row block's
    (``n = chunk * B``, the caller keeps it within ``4 * BLOCK``); the tasks are Chan-merged.
    """
    cdef Py_ssize_t N = x.shape[0], A = x.shape[1], C = x.shape[2], B = x.shape[3]
    cdef Py_ssize_t chunk = (A + nsplit - 1) // nsplit
    cdef Py_ssize_t t, n, k, a, a0, a1, c, tid
    cdef double s1, s2, cnt, v
    cdef double* K
    cdef double* S
    cdef double* Q
    cdef const floating_t* p
    part_arr = np.zeros((N, C, nsplit, 3))
    cdef double[:, :, :, ::1] part = part_arr
    cdef double[:, ::1] s64 = _scratch(max(num_threads, 1), 3 * C)
    with nogil:
        for t in prange(N * nsplit, num_threads=num_threads, schedule="static"):
            tid = threadid()
            n = t // nsplit
            k = t - n * nsplit
            a0 = k * chunk
            a1 = _imin(A, a0 + chunk)
            if a0 >= a1:
                continue
            K = &s64[tid, 0]
            S = &s64[tid, C]
            Q = &s64[tid, 2 * C]
            p = &x[n, a0, 0, 0]
            for c in range(C):
                K[c] = fn_shift(<double>p[c * B])
                S[c] = 0.0
                Q[c] = 0.0
            s1 = 0.0  # assigned in the loop: private to the thread (their addresses are passed)
            s2 = 0.0
            for a in range(a0, a1):
                p = &x[n, a, 0, 0]
                for c in range(C):
                    if floating_t is float:
                        fn_shifted_f(p + c * B, B, K[c], &s1, &s2)
                    else:
                        fn_shifted_d(p + c * B, B, K[c], &s1, &s2)
                    S[c] += s1
                    Q[c] += s2
            cnt = <double>((a1 - a0) * B)
            for c in range(C):
                part[n, c, k, 0] = cnt
                part[n, c, k, 1] = K[c] + S[c] / cnt
                v = Q[c] - S[c] * (S[c] / cnt)
                part[n, c, k, 2] = 0.0 if v < 0.0 else v  # rounding below 0 clamped; NaN kept
    mean = np.empty((N, C))
    m2 = np.empty((N, C))
    _merge_parts(part, mean, m2)
    return mean, m2


# ----------------------------------------------------------------------------
# apply: y = ((x - hi) - lo) * scale + shift
# ----------------------------------------------------------------------------


cdef void _apply_runs_range(
    const floating_t* x, floating_t* out, const floating_t* hi, const floating_t* lo,
    const floating_t* scale, const floating_t* shift,
    Py_ssize_t A, Py_ssize_t C, Py_ssize_t B, Py_ssize_t nsplit, Py_ssize_t u0, Py_ssize_t u1,
    bint stream, const fn_epi* ep,
) noexcept nogil:
    """Tasks ``u0..u1``: task ``u`` is piece ``u % nsplit`` of row ``u // nsplit`` (rows ``(n, a, c)``)."""
    cdef Py_ssize_t piece = (B + nsplit - 1) // nsplit
    cdef Py_ssize_t r = u0 // nsplit, k = u0 - (u0 // nsplit) * nsplit
    cdef Py_ssize_t c = r % C, n = r // (A * C), rem = r - n * A * C
    cdef Py_ssize_t u, b0, b1, g
    for u in range(u0, u1):
        b0 = k * piece
        b1 = _imin(B, b0 + piece)
        g = n * C + c
        if b1 > b0:
            _seg_normalize_ep(
                x + r * B + b0, out + r * B + b0, b1 - b0, hi[g], lo[g], scale[g], shift[g], stream, ep
            )
        k += 1
        if k == nsplit:
            k = 0
            r += 1
            c += 1
            if c == C:
                c = 0
            rem += 1
            if rem == A * C:
                rem = 0
                n += 1


cdef void _apply_runs_parallel(
    const floating_t* x, floating_t* out, const floating_t* hi, const floating_t* lo,
    const floating_t* scale, const floating_t* shift, Py_ssize_t N, Py_ssize_t A, Py_ssize_t C,
    Py_ssize_t B, Py_ssize_t nsplit, int num_threads, bint stream, const fn_epi* ep,
) noexcept nogil:
    """:func:`_apply_runs_range` over all ``N * A * C * nsplit`` tasks, one range per thread."""
    cdef Py_ssize_t ntask = N * A * C * nsplit
    cdef Py_ssize_t T = _imax(1, _imin(num_threads, ntask)), per = (ntask + T - 1) // T, t
    for t in prange(T, num_threads=T, schedule="static"):
        _apply_runs_range(
            x, out, hi, lo, scale, shift, A, C, B, nsplit, t * per, _imin(ntask, (t + 1) * per), stream, ep,
        )
        if stream:
            fn_sfence()


def apply_runs(
    const floating_t[:, :, :, ::1] x, const floating_t[:, ::1] hi, const floating_t[:, ::1] lo,
    const floating_t[:, ::1] scale, const floating_t[:, ::1] shift, floating_t[:, :, :, ::1] out,
    Py_ssize_t nsplit, int num_threads, bint stream=False, object epi=None,
):
    """``out = ((x - hi) - lo) * scale + shift`` on ``(N, A, C, B)`` with ``(N, C)`` coefficients;
    ``epi``: an epilogue ``(act, slope, res, dy)`` (see :func:`_epi_of`) applied in the same pass."""
    cdef fn_epi ep_
    cdef const fn_epi* ep = _epi_of(epi, &ep_, out)
    with nogil:
        _apply_runs_parallel(
            &x[0, 0, 0, 0], &out[0, 0, 0, 0], &hi[0, 0], &lo[0, 0], &scale[0, 0], &shift[0, 0],
            x.shape[0], x.shape[1], x.shape[2], x.shape[3], nsplit, num_threads, stream, ep,
        )


# ----------------------------------------------------------------------------
# backward: sums per group, then dx = k1 * dy + k2 * ((x - hi) - lo) * rstd + k3
# ----------------------------------------------------------------------------


cdef void _grad_sums_run_task(
    const floating_t* x, const floating_t* gy, Py_ssize_t stride, Py_ssize_t B,
    Py_ssize_t j0, Py_ssize_t j1, double mu, double* s1, double* s2,
) noexcept nogil:
    """``sum(dy)``, ``sum(dy * (x - mu))`` of values j0..j1 of a group whose row a starts at a*stride."""
    cdef Py_ssize_t jj = j0, a, b0, b1
    s1[0] = 0.0
    s2[0] = 0.0
    while jj < j1:
        a = jj // B
        b0 = jj - a * B
        b1 = _imin(B, b0 + (j1 - jj))
        _seg_grad_sums(x + a * stride + b0, gy + a * stride + b0, b1 - b0, mu, s1, s2, False)
        jj += b1 - b0


def backward_reduce_runs(
    const floating_t[:, :, :, ::1] x, const floating_t[:, :, :, ::1] dy, const double[:, ::1] mean,
    Py_ssize_t nsplit, int num_threads,
):
    """Per-group ``sum(dy)`` and ``sum(dy * (x - mean))`` of ``(N, A, C, B)``, both ``(N, C)``."""
    cdef Py_ssize_t N = x.shape[0], A = x.shape[1], C = x.shape[2], B = x.shape[3]
    cdef Py_ssize_t M = A * B, chunk = (M + nsplit - 1) // nsplit
    cdef Py_ssize_t t, g, k, n, c, off
    part_arr = np.zeros((2, N * C, nsplit))
    cdef double[:, :, ::1] part = part_arr
    cdef const floating_t* xb = &x[0, 0, 0, 0]
    cdef const floating_t* gb = &dy[0, 0, 0, 0]
    with nogil:
        for t in prange(N * C * nsplit, num_threads=num_threads, schedule="static"):
            g = t // nsplit
            k = t - g * nsplit
            n = g // C
            c = g - n * C
            off = (n * A * C + c) * B
            _grad_sums_run_task(
                xb + off, gb + off, C * B, B, k * chunk, _imin(M, (k + 1) * chunk), mean[n, c],
                &part[0, g, k], &part[1, g, k],
            )
    sums = part_arr.sum(axis=2)
    return sums[0].reshape(N, C), sums[1].reshape(N, C)


cdef void _backward_apply_runs_range(
    const floating_t* x, const floating_t* dy, floating_t* dx,
    const floating_t* hi, const floating_t* lo, const floating_t* rstd,
    const floating_t* k1, const floating_t* k2, const floating_t* k3,
    Py_ssize_t A, Py_ssize_t C, Py_ssize_t B, Py_ssize_t nsplit, Py_ssize_t u0, Py_ssize_t u1,
    bint stream,
) noexcept nogil:
    cdef Py_ssize_t piece = (B + nsplit - 1) // nsplit
    cdef Py_ssize_t r = u0 // nsplit, k = u0 - (u0 // nsplit) * nsplit
    cdef Py_ssize_t c = r % C, n = r // (A * C), rem = r - n * A * C
    cdef Py_ssize_t u, b0, b1, g, off
    for u in range(u0, u1):
        b0 = k * piece
        b1 = _imin(B, b0 + piece)
        g = n * C + c
        off = r * B + b0
        if b1 > b0:
            _seg_grad_apply(
                x + off, dy + off, dx + off, b1 - b0, hi[g], lo[g], rstd[g], k1[g], k2[g], k3[g], stream
            )
        k += 1
        if k == nsplit:
            k = 0
            r += 1
            c += 1
            if c == C:
                c = 0
            rem += 1
            if rem == A * C:
                rem = 0
                n += 1


def backward_apply_runs(
    const floating_t[:, :, :, ::1] x, const floating_t[:, :, :, ::1] dy,
    const floating_t[:, ::1] hi, const floating_t[:, ::1] lo, const floating_t[:, ::1] rstd,
    const floating_t[:, ::1] k1, const floating_t[:, ::1] k2, const floating_t[:, ::1] k3,
    floating_t[:, :, :, ::1] dx, Py_ssize_t nsplit, int num_threads, bint stream=False,
):
    """``dx = k1 * dy + k2 * ((x - hi) - lo) * rstd + k3`` on ``(N, A, C, B)``; ``stream``: ``dx``
    written past the caches."""
    cdef Py_ssize_t A = x.shape[1], C = x.shape[2], B = x.shape[3]
    cdef Py_ssize_t ntask = x.shape[0] * A * C * nsplit
    cdef Py_ssize_t T = _imax(1, _imin(num_threads, ntask)), per = (ntask + T - 1) // T, t
    with nogil:
        for t in prange(T, num_threads=T, schedule="static"):
            _backward_apply_runs_range(
                &x[0, 0, 0, 0], &dy[0, 0, 0, 0], &dx[0, 0, 0, 0], &hi[0, 0], &lo[0, 0], &rstd[0, 0],
                &k1[0, 0], &k2[0, 0], &k3[0, 0], A, C, B, nsplit, t * per, _imin(ntask, (t + 1) * per),
                stream,
            )
            if stream:
                fn_sfence()
