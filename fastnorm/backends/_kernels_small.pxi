# _small: small tensors: one call on the calling thread (included by _kernels.pyx)

# ----------------------------------------------------------------------------
# small inputs: one call on the calling thread, arrays taken through NumPy's C
# API (a typed memoryview costs about 0.12 us to acquire, a sizable part of a
# call on a tiny tensor)
# ----------------------------------------------------------------------------


cdef inline void _check_same(cnp.ndarray a, cnp.ndarray x, str name) except *:
    """``a`` must be a C-contiguous array of ``x``'s type (these entry points read raw memory)."""
    if not cnp.PyArray_IS_C_CONTIGUOUS(a) or cnp.PyArray_TYPE(a) != cnp.PyArray_TYPE(x):
        raise ValueError(f"{name} must be C-contiguous with the dtype of x")


cdef inline cnp.ndarray _empty_f64(int ndim, cnp.npy_intp* dims):
    return cnp.PyArray_EMPTY(ndim, dims, cnp.NPY_DOUBLE, 0)


cdef const void* _row_param(object a, cnp.ndarray x, str name) except? NULL:
    """The data of an optional ``(M,)`` parameter of ``x``'s dtype, C-contiguous (NULL for None)."""
    if a is None:
        return NULL
    if not isinstance(a, np.ndarray) or cnp.PyArray_NDIM(<cnp.ndarray>a) != 1 or a.shape[0] != x.shape[1]:
        raise ValueError(f"{name} must be a 1-D array of x.shape[1] values")
    _check_same(<cnp.ndarray>a, x, name)
    return cnp.PyArray_DATA(<cnp.ndarray>a)


def rows_forward_small(
    cnp.ndarray x not None, object w, object b, double eps, bint center, cnp.ndarray out not None,
    object epi=None, object res=None, object hsum=None,
):
    """:func:`rows_forward` on the calling thread for a 2-D C-contiguous float32 or float64
    ``x``, with ``w``, ``b`` ``(M,)`` of its dtype or None, and ``out`` of its dtype; returns
    ``(mean, rstd)``.  ``epi``, ``res``, ``hsum``: as for :func:`rows_forward`."""
    if cnp.PyArray_NDIM(x) != 2 or cnp.PyArray_NDIM(out) != 2:
        raise ValueError("x and out must be 2-D")
    cdef Py_ssize_t R = x.shape[0], M = x.shape[1]
    if out.shape[0] != R or out.shape[1] != M:
        raise ValueError("shapes of x and out do not match")
    _check_same(x, x, "x")
    _check_same(out, x, "out")
    cdef const void* pw = _row_param(w, x, "w")
    cdef const void* pb = _row_param(b, x, "b")
    cdef cnp.npy_intp dims[1]
    dims[0] = R
    mean_arr = _empty_f64(1, dims)
    rstd_arr = _empty_f64(1, dims)
    cdef double* mean = <double*>cnp.PyArray_DATA(mean_arr)
    cdef double* rstd = <double*>cnp.PyArray_DATA(rstd_arr)
    cdef int typenum = cnp.PyArray_TYPE(x)
    cdef fn_epi ep_
    cdef const fn_epi* ep = _epi_of(epi, &ep_, out)
    cdef const void* pres = _residual_of(res, hsum, x)
    cdef void* phs = NULL if pres == NULL else cnp.PyArray_DATA(<cnp.ndarray>hsum)
    if typenum == cnp.NPY_FLOAT:
        with nogil:
            _rows_forward_task(
                <const float*>cnp.PyArray_DATA(x), <float*>cnp.PyArray_DATA(out), 0, R, M,
                <const float*>pw, <const float*>pb, eps, center, mean, rstd, False,
                <const float*>pres, <float*>phs, ep, False,
            )
    elif typenum == cnp.NPY_DOUBLE:
        with nogil:
            _rows_forward_task(
                <const double*>cnp.PyArray_DATA(x), <double*>cnp.PyArray_DATA(out), 0, R, M,
                <const double*>pw, <const double*>pb, eps, center, mean, rstd, False,
                <const double*>pres, <double*>phs, ep, False,
            )
    else:
        raise ValueError("x must be float32 or float64")
    return mean_arr, rstd_arr



cdef void _channels_small_task(
    const floating_t* x, Py_ssize_t N, Py_ssize_t A, Py_ssize_t C, Py_ssize_t B,
    const double* given_mean, const double* given_var, const double* w, const double* b,
    double eps, floating_t* out, double* mean, double* var, double* rstd,
) noexcept nogil:
    cdef Py_ssize_t n, a, c, j, g
    cdef double cnt = <double>(A * B), mu, q, sc, sh
    cdef const floating_t* p
    cdef floating_t* o
    if B == 1:
        _channels_small_lanes(x, N, A, C, given_mean, given_var, w, b, eps, out, mean, var, rstd)
        return
    for n in range(N):
        for c in range(C):
            g = n * C + c
            if given_mean == NULL:
                mu = 0.0
                for a in range(A):
                    mu += _sum(x + ((n * A + a) * C + c) * B, B)
                mu = mu / cnt
                q = 0.0
                for a in range(A):
                    q += _sum_sq_dev(x + ((n * A + a) * C + c) * B, B, mu)
                mean[g] = mu
                var[g] = q / cnt
            else:
                mean[g] = given_mean[g]
                var[g] = given_var[g]
            mu = mean[g]
            sc = 1.0 / sqrt(var[g] + eps)
            rstd[g] = sc
            if w != NULL:
                sc = sc * w[c]
            sh = b[c] if b != NULL else 0.0
            for a in range(A):
                p = x + ((n * A + a) * C + c) * B
                o = out + ((n * A + a) * C + c) * B
                for j in range(B):
                    o[j] = <floating_t>((<double>p[j] - mu) * sc + sh)


cdef void _channels_small_lanes(
    const floating_t* x, Py_ssize_t N, Py_ssize_t A, Py_ssize_t C,
    const double* given_mean, const double* given_var, const double* w, const double* b,
    double eps, floating_t* out, double* mean, double* var, double* rstd,
) noexcept nogil:
    """:func:`_channels_small_task` of channels-last data (``B == 1``): the same sums, in the same
    order per channel, taken row by row in memory order."""
    cdef Py_ssize_t n, a, c, g
    cdef double cnt = <double>A, d, sh
    cdef double* m
    cdef double* v
    cdef const floating_t* p
    cdef floating_t* o
    for n in range(N):
        m = mean + n * C
        v = var + n * C
        if given_mean == NULL:
            for c in range(C):
                m[c] = 0.0
                v[c] = 0.0
            for a in range(A):
                p = x + (n * A + a) * C
                for c in range(C):
                    m[c] += <double>p[c]
            for c in range(C):
                m[c] = m[c] / cnt
            for a in range(A):
                p = x + (n * A + a) * C
                for c in range(C):
                    d = <double>p[c] - m[c]
                    v[c] += d * d
            for c in range(C):
                v[c] = v[c] / cnt
        else:
            for c in range(C):
                m[c] = given_mean[n * C + c]
                v[c] = given_var[n * C + c]
        for c in range(C):
            g = n * C + c
            rstd[g] = 1.0 / sqrt(var[g] + eps)
        for a in range(A):
            p = x + (n * A + a) * C
            o = out + (n * A + a) * C
            for c in range(C):
                g = n * C + c
                sh = b[c] if b != NULL else 0.0
                if w != NULL:
                    o[c] = <floating_t>((<double>p[c] - m[c]) * (rstd[g] * w[c]) + sh)
                else:
                    o[c] = <floating_t>((<double>p[c] - m[c]) * rstd[g] + sh)


cdef const double* _f64_data(object a, Py_ssize_t size, str name) except? NULL:
    """The data of an optional C-contiguous float64 array of ``size`` values (NULL for None)."""
    if a is None:
        return NULL
    if (
        not isinstance(a, np.ndarray)
        or cnp.PyArray_TYPE(<cnp.ndarray>a) != cnp.NPY_DOUBLE
        or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a)
        or cnp.PyArray_SIZE(<cnp.ndarray>a) != size
    ):
        raise ValueError(f"{name} must be a C-contiguous float64 array of {size} values")
    return <const double*>cnp.PyArray_DATA(<cnp.ndarray>a)


def channels_small(
    cnp.ndarray x not None, object given_mean, object given_var, object w, object b, double eps,
    cnp.ndarray out not None, object epi=None, object running=None,
):
    """Statistics and normalization of a small ``(N, A, C, B)`` array in one call, one thread.

    ``x`` and ``out``: C-contiguous float32 or float64 of one dtype.  Returns
    float64 ``(mean, var, rstd)`` ``(N, C)``: the statistics of ``x`` (exact
    two-pass sums in float64) or, when given, ``given_mean``/``given_var``
    (float64 ``(N, C)``).  ``y = (x - mean) * (rstd * w) + b`` is computed in
    float64 and rounded once; ``w``/``b`` (float64 ``(C,)``) may be None.  For
    inputs whose per-call cost is all overhead: it saves the separate
    statistics and apply calls, their task planning and the NumPy coefficient
    arithmetic between them.  ``running``: ``(running_mean, running_var, factor,
    bessel)`` with ``N == 1``, updated in place as :func:`running_update` does with
    the batch statistics (checked before anything is written).
    """
    if cnp.PyArray_NDIM(x) != 4 or cnp.PyArray_NDIM(out) != 4:
        raise ValueError("x and out must be 4-D")
    cdef Py_ssize_t N = x.shape[0], A = x.shape[1], C = x.shape[2], B = x.shape[3]
    if out.shape[0] != N or out.shape[1] != A or out.shape[2] != C or out.shape[3] != B:
        raise ValueError("out must have the shape of x")
    _check_same(x, x, "x")
    _check_same(out, x, "out")
    if (given_mean is None) != (given_var is None):
        raise ValueError("given_mean and given_var go together")
    cdef const double* gm = _f64_data(given_mean, N * C, "given_mean")
    cdef const double* gv = _f64_data(given_var, N * C, "given_var")
    cdef const double* pw = _f64_data(w, C, "w")
    cdef const double* pb = _f64_data(b, C, "b")
    cdef cnp.ndarray run_mean = None, run_var = None
    cdef double factor = 0.0, bessel = 1.0
    if running is not None:
        run_mean, run_var, factor, bessel = running
        if N != 1:
            raise ValueError("running statistics need N == 1")
        _check_running(run_mean, run_var, C)
    cdef cnp.npy_intp dims[2]
    dims[0] = N
    dims[1] = C
    mean_arr = _empty_f64(2, dims)
    var_arr = _empty_f64(2, dims)
    rstd_arr = _empty_f64(2, dims)
    cdef double* mean = <double*>cnp.PyArray_DATA(mean_arr)
    cdef double* var = <double*>cnp.PyArray_DATA(var_arr)
    cdef double* rstd = <double*>cnp.PyArray_DATA(rstd_arr)
    cdef int typenum = cnp.PyArray_TYPE(x)
    cdef fn_epi ep_
    cdef const fn_epi* ep = _epi_of(epi, &ep_, out)
    cdef Py_ssize_t size = N * A * C * B
    if typenum == cnp.NPY_FLOAT:
        with nogil:
            _channels_small_task(
                <const float*>cnp.PyArray_DATA(x), N, A, C, B, gm, gv, pw, pb, eps,
                <float*>cnp.PyArray_DATA(out), mean, var, rstd,
            )
            if ep != NULL:  # the output is small: the epilogue finds it in cache
                fn_epilogue_f(ep, <float*>cnp.PyArray_DATA(out), <float*>cnp.PyArray_DATA(out), size, False)
    elif typenum == cnp.NPY_DOUBLE:
        with nogil:
            _channels_small_task(
                <const double*>cnp.PyArray_DATA(x), N, A, C, B, gm, gv, pw, pb, eps,
                <double*>cnp.PyArray_DATA(out), mean, var, rstd,
            )
            if ep != NULL:
                fn_epilogue_d(ep, <double*>cnp.PyArray_DATA(out), <double*>cnp.PyArray_DATA(out), size, False)
    else:
        raise ValueError("x must be float32 or float64")
    if run_mean is not None:
        _update_running(run_mean, run_var, mean, var, C, factor, bessel)
    return mean_arr, var_arr, rstd_arr


cdef int _check_running(cnp.ndarray rm, cnp.ndarray rv, Py_ssize_t C) except -1:
    """Running statistics :func:`_update_running` can write: two writeable C-contiguous 1-D
    arrays of ``C`` values and one dtype, float32 or float64."""
    cdef cnp.ndarray a
    for a in (rm, rv):
        if (
            a is None or cnp.PyArray_NDIM(a) != 1 or a.shape[0] != C
            or not cnp.PyArray_IS_C_CONTIGUOUS(a) or not cnp.PyArray_ISWRITEABLE(a)
            or cnp.PyArray_TYPE(a) != cnp.PyArray_TYPE(rm)
            or cnp.PyArray_TYPE(a) not in (cnp.NPY_FLOAT, cnp.NPY_DOUBLE)
        ):
            raise ValueError(
                "running statistics must be writeable C-contiguous float32 or float64 arrays of "
                "one dtype with a value per channel")
    return 0


cdef void _update_running(
    cnp.ndarray rm, cnp.ndarray rv, const double* mean, const double* var, Py_ssize_t C,
    double factor, double bessel,
) noexcept:
    """:func:`running_update` on arrays :func:`_check_running` accepted."""
    if cnp.PyArray_TYPE(rm) == cnp.NPY_FLOAT:
        _running_task(<float*>cnp.PyArray_DATA(rm), <float*>cnp.PyArray_DATA(rv), mean, var, C,
                      factor, bessel)
    else:
        _running_task(<double*>cnp.PyArray_DATA(rm), <double*>cnp.PyArray_DATA(rv), mean, var, C,
                      factor, bessel)


cdef void _given_coefficients(
    const double* gm, const double* gv, const double* w, const double* b, double eps,
    Py_ssize_t N, Py_ssize_t C, bint folded, double* rstd,
    floating_t* hi, floating_t* lo, floating_t* scale, floating_t* shift,
) noexcept nogil:
    """The apply kernels' coefficients of given ``(N, C)`` float64 statistics, as the general
    path forms them (:mod:`fastnorm.backends._coefficients`): ``folded`` puts ``lo`` into ``shift``."""
    cdef Py_ssize_t g, c
    cdef double mu, rs, sc, sh
    cdef floating_t h
    for g in range(N * C):
        c = g % C
        mu = gm[g]
        rs = 1.0 / sqrt(gv[g] + eps)
        rstd[g] = rs
        sc = rs * w[c] if w != NULL else rs
        sh = b[c] if b != NULL else 0.0
        h = <floating_t>mu
        hi[g] = h
        scale[g] = <floating_t>sc
        if folded:
            lo[g] = 0
            shift[g] = <floating_t>(sh - (mu - <double>h) * sc)
        else:
            lo[g] = <floating_t>(mu - <double>h)
            shift[g] = <floating_t>sh


cdef void _given_apply(
    const floating_t* x, floating_t* out, Py_ssize_t N, Py_ssize_t A, Py_ssize_t C, Py_ssize_t B,
    const double* gm, const double* gv, const double* w, const double* b, double eps,
    double* rstd, floating_t* coef, Py_ssize_t nsplit, int num_threads, bint stream,
    const fn_epi* ep,
) noexcept nogil:
    cdef floating_t* hi = coef
    cdef floating_t* lo = coef + N * C
    cdef floating_t* scale = coef + 2 * N * C
    cdef floating_t* shift = coef + 3 * N * C
    _given_coefficients(gm, gv, w, b, eps, N, C, B == 1, rstd, hi, lo, scale, shift)
    if B == 1:
        _apply_lanes_parallel(x, out, hi, scale, shift, N, A, C, num_threads, stream, ep)
    else:
        _apply_runs_parallel(x, out, hi, lo, scale, shift, N, A, C, B, nsplit, num_threads, stream, ep)


def channels_given(
    cnp.ndarray x not None, cnp.ndarray given_mean not None, cnp.ndarray given_var not None,
    object w, object b, double eps, cnp.ndarray out not None, Py_ssize_t nsplit, int num_threads,
    bint stream=False, object epi=None,
):
    """Normalization of ``(N, A, C, B)`` with given statistics (inference) in one call.

    ``x`` and ``out``: C-contiguous float32 or float64 of one dtype;
    ``given_mean``/``given_var``: float64 ``(N, C)``; ``w``/``b``: float64
    ``(C,)`` or None.  The coefficients are formed as the general path forms
    them and applied by the same parallel loops (``nsplit`` pieces per run,
    ``num_threads``), so the result is the general path's to the bit; the call
    saves its NumPy arithmetic on ``(N, C)`` vectors and its second kernel
    call.  Returns float64 ``(mean, var, rstd)`` ``(N, C)`` (the given arrays
    and the computed ``rstd``).
    """
    if cnp.PyArray_NDIM(x) != 4 or cnp.PyArray_NDIM(out) != 4:
        raise ValueError("x and out must be 4-D")
    cdef Py_ssize_t N = x.shape[0], A = x.shape[1], C = x.shape[2], B = x.shape[3]
    if out.shape[0] != N or out.shape[1] != A or out.shape[2] != C or out.shape[3] != B:
        raise ValueError("out must have the shape of x")
    _check_same(x, x, "x")
    _check_same(out, x, "out")
    if nsplit < 1:
        raise ValueError("nsplit must be at least 1")
    cdef const double* gm = _f64_data(given_mean, N * C, "given_mean")
    cdef const double* gv = _f64_data(given_var, N * C, "given_var")
    cdef const double* pw = _f64_data(w, C, "w")
    cdef const double* pb = _f64_data(b, C, "b")
    cdef cnp.npy_intp dims[2]
    dims[0] = N
    dims[1] = C
    rstd_arr = _empty_f64(2, dims)
    cdef double* rstd = <double*>cnp.PyArray_DATA(rstd_arr)
    cdef int typenum = cnp.PyArray_TYPE(x)
    coef_arr = np.empty(4 * N * C, dtype=x.dtype)
    cdef void* coef = cnp.PyArray_DATA(coef_arr)
    cdef fn_epi ep_
    cdef const fn_epi* ep = _epi_of(epi, &ep_, out)
    if typenum == cnp.NPY_FLOAT:
        with nogil:
            _given_apply(
                <const float*>cnp.PyArray_DATA(x), <float*>cnp.PyArray_DATA(out), N, A, C, B,
                gm, gv, pw, pb, eps, rstd, <float*>coef, nsplit, num_threads, stream, ep,
            )
    elif typenum == cnp.NPY_DOUBLE:
        with nogil:
            _given_apply(
                <const double*>cnp.PyArray_DATA(x), <double*>cnp.PyArray_DATA(out), N, A, C, B,
                gm, gv, pw, pb, eps, rstd, <double*>coef, nsplit, num_threads, stream, ep,
            )
    else:
        raise ValueError("x must be float32 or float64")
    return given_mean, given_var, rstd_arr


def running_update(
    floating_t[::1] running_mean, floating_t[::1] running_var, const double[::1] mean,
    const double[::1] var, double factor, double bessel,
):
    """``running = (1 - factor) * running + factor * batch`` in float64, the variance's batch
    value being ``var * bessel`` (unbiased); rounded once to the buffers' dtype."""
    if running_mean.shape[0] == 0:
        return
    with nogil:
        _running_task(&running_mean[0], &running_var[0], &mean[0], &var[0], running_mean.shape[0],
                      factor, bessel)


cdef void _running_task(
    floating_t* rm, floating_t* rv, const double* mean, const double* var, Py_ssize_t C,
    double factor, double bessel,
) noexcept nogil:
    cdef Py_ssize_t c
    for c in range(C):
        rm[c] = <floating_t>((1.0 - factor) * rm[c] + factor * mean[c])
        rv[c] = <floating_t>((1.0 - factor) * rv[c] + factor * (var[c] * bessel))


# ----------------------------------------------------------------------------
# whole plain calls: the argument checks of a plain small call and its kernel in
# one compiled function (a tiny call's time is otherwise mostly the interpreter's)
# ----------------------------------------------------------------------------


cdef inline int _float_type(object a) noexcept:
    """``a``'s NumPy type number if it is an exact ndarray of native float32 or float64 (in the
    machine's byte order, aligned), else -1."""
    if not cnp.PyArray_CheckExact(a) or not cnp.PyArray_ISBEHAVED_RO(<cnp.ndarray>a):
        return -1
    cdef int t = cnp.PyArray_TYPE(<cnp.ndarray>a)
    return t if t == cnp.NPY_FLOAT or t == cnp.NPY_DOUBLE else -1


cdef inline bint _plain_input(object x, Py_ssize_t min_ndim, Py_ssize_t limit) noexcept:
    """``x`` is a C-contiguous float32/float64 exact ndarray of ``1..limit`` values and at
    least ``min_ndim`` dimensions."""
    if _float_type(x) < 0:
        return False
    cdef cnp.ndarray a = <cnp.ndarray>x
    cdef Py_ssize_t size = cnp.PyArray_SIZE(a)
    return (cnp.PyArray_NDIM(a) >= min_ndim and 0 < size <= limit
            and cnp.PyArray_IS_C_CONTIGUOUS(a))


cdef inline bint _plain_float(object v, double* out) noexcept:
    """``v`` is an exact float at or above 0 (``out``: its value)."""
    if type(v) is not float:
        return False
    out[0] = <double>v
    return out[0] >= 0.0


cdef inline bint _vector_of(object a, Py_ssize_t C) noexcept:
    """``a`` is None or a float32/float64 exact 1-D ndarray of ``C`` values."""
    return a is None or (_float_type(a) >= 0 and cnp.PyArray_NDIM(<cnp.ndarray>a) == 1
                         and cnp.PyArray_DIM(<cnp.ndarray>a, 0) == C)


cdef const double* _as_f64(object a, Py_ssize_t C, double* buf) noexcept:
    """The values of a :func:`_vector_of` array in float64 (``buf``, ``C`` values), NULL for None."""
    if a is None:
        return NULL
    cdef cnp.ndarray v = <cnp.ndarray>a
    cdef char* p = <char*>cnp.PyArray_DATA(v)
    cdef Py_ssize_t s = cnp.PyArray_STRIDE(v, 0), c
    if cnp.PyArray_TYPE(v) == cnp.NPY_FLOAT:
        for c in range(C):
            buf[c] = (<float*>(p + c * s))[0]
    else:
        for c in range(C):
            buf[c] = (<double*>(p + c * s))[0]
    return buf


def channels_plain(
    object plans, object x, object running_mean, object running_var, object weight, object bias,
    object training, object momentum, object eps, object axis, Py_ssize_t limit,
):
    """The whole of a plain ``batch_norm`` call, small or in inference: the output, or None
    where the call is not one (the caller then takes its general path, which validates it).

    Plain: ``x`` a C-contiguous float32/float64 ndarray of at least 2 dimensions and
    ``1..limit`` values (any number in inference where ``plans`` is given); ``axis`` an int
    within its dimensions; ``training`` a bool; ``eps`` a float at or above 0; ``weight``,
    ``bias``, ``running_mean``, ``running_var`` None or float32/float64 ``(C,)`` ndarrays
    (the running ones of one dtype); with training, running statistics that own their memory
    (so they cannot overlap) and are writeable, and ``momentum`` a float in ``[0, 1]``; more
    than one value per channel in training.  Up to ``limit`` values, the statistics and
    output come from :func:`channels_small`'s kernel with the float64 parameters, and the
    running statistics are updated as :func:`running_update` does.  A larger inference call
    is :func:`channels_given`'s, with the output and ``(nsplit, num_threads, stream)`` of
    ``plans`` (a :class:`Plans`) for the ``groups`` runs of ``run`` values that share a
    channel's coefficients.
    """
    cdef double e, factor = 0.0
    if type(training) is not bool:
        return None
    cdef bint train = training is True
    if plans is not None and type(plans) is not Plans:
        raise TypeError("plans must be a Plans or None")
    if (not _plain_input(x, 2, limit if train or plans is None else PY_SSIZE_T_MAX)
            or not _plain_float(eps, &e)):
        return None
    cdef cnp.ndarray xa = <cnp.ndarray>x
    cdef int nd = cnp.PyArray_NDIM(xa), k
    if type(axis) is not int or not -nd <= axis < nd:
        return None
    cdef int ax = <int>axis
    if ax < 0:
        ax += nd
    cdef Py_ssize_t C = cnp.PyArray_DIM(xa, ax), size = cnp.PyArray_SIZE(xa), lead = 1
    cdef Py_ssize_t count = size // C
    if train and count <= 1:
        return None
    if not (_vector_of(weight, C) and _vector_of(bias, C) and _vector_of(running_mean, C)
            and _vector_of(running_var, C)):
        return None
    if running_mean is None or running_var is None:
        if not train or running_mean is not running_var:
            return None
    else:
        if (running_mean is running_var or cnp.PyArray_TYPE(<cnp.ndarray>running_mean)
                != cnp.PyArray_TYPE(<cnp.ndarray>running_var)):
            return None
        if train:
            if (cnp.PyArray_BASE(<cnp.ndarray>running_mean) != NULL
                    or cnp.PyArray_BASE(<cnp.ndarray>running_var) != NULL
                    or not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>running_mean)
                    or not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>running_var)
                    or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>running_mean)
                    or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>running_var)
                    or type(momentum) is not float or not 0.0 <= <double>momentum <= 1.0):
                return None
            factor = <double>momentum
    for k in range(ax):
        lead *= cnp.PyArray_DIM(xa, k)
    if size > limit:
        return _given_plain(<Plans>plans, xa, lead, C, count // lead, running_mean, running_var,
                            weight, bias, e)
    y = cnp.PyArray_EMPTY(nd, cnp.PyArray_DIMS(xa), cnp.PyArray_TYPE(xa), 0)
    cdef double* buf = <double*>malloc(7 * C * sizeof(double))
    if buf == NULL:
        raise MemoryError()
    cdef const double* w = _as_f64(weight, C, buf)
    cdef const double* b = _as_f64(bias, C, buf + C)
    cdef const double* gm = NULL
    cdef const double* gv = NULL
    if not train:
        gm = _as_f64(running_mean, C, buf + 2 * C)
        gv = _as_f64(running_var, C, buf + 3 * C)
    cdef double* mean = buf + 4 * C
    cdef double* var = buf + 5 * C
    cdef double* rstd = buf + 6 * C
    if cnp.PyArray_TYPE(xa) == cnp.NPY_FLOAT:
        _channels_small_task(<const float*>cnp.PyArray_DATA(xa), 1, lead, C, count // lead, gm, gv,
                             w, b, e, <float*>cnp.PyArray_DATA(<cnp.ndarray>y), mean, var, rstd)
    else:
        _channels_small_task(<const double*>cnp.PyArray_DATA(xa), 1, lead, C, count // lead, gm, gv,
                             w, b, e, <double*>cnp.PyArray_DATA(<cnp.ndarray>y), mean, var, rstd)
    if train and running_mean is not None:
        _update_running(running_mean, running_var, mean, var, C, factor,
                        <double>count / <double>(count - 1))
    free(buf)
    return y


cdef enum:
    PLANS_KEPT = 1024  # shapes whose plans a Plans keeps at most


cdef class Plans:
    """The outputs and parallel plans of large plain calls (:func:`channels_plain` in
    inference, :func:`rows_plain`), with no Python code on a repeated shape: a call's time on
    cold caches is otherwise largely the interpreter's.

    ``compute(x, groups, run)``: the plan of an input like ``x`` (``groups`` runs of ``run``
    values: the rows of a row call), ``(tasks, num_threads, stream, pooled)``, kept per size,
    item size, ``groups`` and ``run`` while the settings it depends on stay the same objects
    (``settings``: their ``(module, attribute name)`` pairs).  ``pooled``: the byte size of
    the pool buffer an output of ``x``'s size takes (0: none).

    ``pool``: the output pool's ``(buffers, lock)`` (see :mod:`fastnorm._memory`), or None.
    A free buffer of ``pooled`` bytes is taken as the pool takes it (the most recent first,
    moved to the end), and the output placed on an ``align``-byte boundary half of ``page``
    from ``x`` modulo ``page``; ``empty(x)`` gives the output otherwise.
    """
    cdef object compute, empty, lock
    cdef tuple settings
    cdef list buffers
    cdef dict cache
    cdef Py_ssize_t page, align

    def __init__(self, compute, empty, tuple settings, object pool, Py_ssize_t page, Py_ssize_t align):
        self.compute = compute
        self.empty = empty
        self.settings = tuple((module, str(name)) for module, name in settings)
        self.buffers, self.lock = (None, None) if pool is None else pool
        self.cache = {}
        self.page = page
        self.align = align

    def clear(self):
        """Forget the plans kept."""
        self.cache.clear()

    def __len__(self):
        """The number of shapes whose plans are kept."""
        return len(self.cache)

    cdef tuple plan(self, cnp.ndarray x, Py_ssize_t groups, Py_ssize_t run):
        """``(out, nsplit, num_threads, stream)`` for ``x``."""
        key = (cnp.PyArray_SIZE(x), cnp.PyArray_ITEMSIZE(x), groups, run)
        entry = self.cache.get(key)
        if entry is None or not self._current(<tuple>(<tuple>entry)[0]):
            nsplit, threads, stream, pooled = self.compute(x, groups, run)
            entry = (self._now(), int(nsplit), int(threads), bool(stream), int(pooled))
            if len(self.cache) >= PLANS_KEPT:  # many shapes (varying lengths): start over
                self.cache.clear()
            self.cache[key] = entry
        cdef tuple e = <tuple>entry
        y = None
        if <Py_ssize_t>e[4] > 0 and self.buffers is not None:
            y = self._take(x, <Py_ssize_t>e[4])
        if y is None:
            y = self.empty(x)
        return y, e[1], e[2], e[3]

    cdef tuple _now(self):
        return tuple([getattr(module, name) for module, name in self.settings])

    cdef bint _current(self, tuple seen):
        cdef Py_ssize_t i
        for i in range(len(self.settings)):
            module, name = <tuple>self.settings[i]
            if getattr(module, name) is not seen[i]:
                return False
        return True

    cdef object _take(self, cnp.ndarray x, Py_ssize_t pooled):
        """A free pool buffer of ``pooled`` bytes as an array like ``x``, or None."""
        if not self.lock.acquire(False):
            return None
        cdef Py_ssize_t i, start, want, have
        cdef cnp.ndarray buf
        try:
            for i in range(len(self.buffers) - 1, -1, -1):
                item = <object>PyList_GET_ITEM(self.buffers, i)
                # free: held by the list and by `item` alone
                if cnp.PyArray_NBYTES(<cnp.ndarray>item) != pooled or Py_REFCNT(item) != 2:
                    continue
                buf = <cnp.ndarray>item
                del self.buffers[i]
                self.buffers.append(buf)
                have = <Py_ssize_t>(<size_t>cnp.PyArray_DATA(buf) % <size_t>self.page)
                want = <Py_ssize_t>(<size_t>cnp.PyArray_DATA(x) % <size_t>self.page)
                want = ((want + self.align - 1) // self.align * self.align + self.page // 2) % self.page
                start = (want - have) % self.page
                if start < 0:
                    start += self.page
                return _view_at(buf, start, x)
            return None
        finally:
            self.lock.release()


cdef object _view_at(cnp.ndarray buf, Py_ssize_t start, cnp.ndarray x):
    """An array of ``x``'s shape and dtype (C order) on the bytes of ``buf`` from ``start``,
    whose base is ``buf``."""
    y = cnp.PyArray_SimpleNewFromData(cnp.PyArray_NDIM(x), cnp.PyArray_DIMS(x), cnp.PyArray_TYPE(x),
                                      <char*>cnp.PyArray_DATA(buf) + start)
    cnp.set_array_base(<cnp.ndarray>y, buf)
    return y


cdef int _check_planned(object y, cnp.ndarray x, Py_ssize_t tasks, int num_threads) except -1:
    if (_float_type(y) != cnp.PyArray_TYPE(x) or not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>y)
            or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>y)
            or cnp.PyArray_SIZE(<cnp.ndarray>y) != cnp.PyArray_SIZE(x) or tasks < 1 or num_threads < 1):
        raise ValueError("plan must give a C-contiguous output like x, tasks >= 1 and num_threads >= 1")
    return 0


cdef object _given_plain(
    Plans plans, cnp.ndarray x, Py_ssize_t A, Py_ssize_t C, Py_ssize_t B, object running_mean,
    object running_var, object weight, object bias, double eps,
):
    """:func:`channels_plain` of an inference call on the ``(1, A, C, B)`` view of ``x``: the
    parameters' float64 values, then :func:`channels_given`'s kernel into ``plans``' output."""
    y, nsplit_, threads_, stream_ = plans.plan(x, A * C, B)
    cdef Py_ssize_t nsplit = nsplit_
    cdef int num_threads = threads_, t = cnp.PyArray_TYPE(x)
    cdef bint stream = stream_
    _check_planned(y, x, nsplit, num_threads)
    cdef double* buf = <double*>malloc(9 * C * sizeof(double))  # 4 * C coefficients last
    if buf == NULL:
        raise MemoryError()
    cdef const double* w = _as_f64(weight, C, buf)
    cdef const double* b = _as_f64(bias, C, buf + C)
    cdef const double* gm = _as_f64(running_mean, C, buf + 2 * C)
    cdef const double* gv = _as_f64(running_var, C, buf + 3 * C)
    cdef double* rstd = buf + 4 * C
    cdef void* coef = <void*>(buf + 5 * C)
    cdef const void* px = cnp.PyArray_DATA(x)
    cdef void* py = cnp.PyArray_DATA(<cnp.ndarray>y)
    with nogil:
        if t == cnp.NPY_FLOAT:
            _given_apply(<const float*>px, <float*>py, 1, A, C, B, gm, gv, w, b, eps, rstd,
                         <float*>coef, nsplit, num_threads, stream, NULL)
        else:
            _given_apply(<const double*>px, <double*>py, 1, A, C, B, gm, gv, w, b, eps, rstd,
                         <double*>coef, nsplit, num_threads, stream, NULL)
    free(buf)
    return y


def rows_plain(
    object plans, object x, object normalized_shape, object weight, object bias, object eps,
    bint center, Py_ssize_t limit,
):
    """The whole of a plain ``layer_norm`` (``center``) or ``rms_norm`` call over the last
    dimension: the output, or None where the call is not one (the caller then takes its
    general path, which validates it).

    Plain: ``x`` a C-contiguous float32/float64 ndarray of ``1..limit`` values (any number
    where ``plans``, a :class:`Plans`, is given); ``eps`` a float at or above 0, or None for
    the machine epsilon of ``x``'s dtype; ``normalized_shape`` ``M`` or ``(M,)`` (ints), ``M``
    being the last dimension; ``weight`` and ``bias`` None or C-contiguous ``(M,)`` ndarrays of
    ``x``'s dtype.  The output is :func:`rows_forward_small`'s, past ``limit`` values
    :func:`rows_forward`'s with the output and ``(ntask, num_threads, stream)`` of ``plans``
    for the rows of ``M`` values.
    """
    cdef double e
    if plans is not None and type(plans) is not Plans:
        raise TypeError("plans must be a Plans or None")
    if not _plain_input(x, 1, limit if plans is None else PY_SSIZE_T_MAX):
        return None
    cdef cnp.ndarray xa = <cnp.ndarray>x
    cdef int nd = cnp.PyArray_NDIM(xa), t = cnp.PyArray_TYPE(xa)
    if eps is None:
        e = FLT_EPSILON if t == cnp.NPY_FLOAT else DBL_EPSILON
    elif not _plain_float(eps, &e):
        return None
    cdef Py_ssize_t M = cnp.PyArray_DIM(xa, nd - 1), R = cnp.PyArray_SIZE(xa) // M
    if type(normalized_shape) is tuple and len(normalized_shape) == 1:
        normalized_shape = normalized_shape[0]
    if type(normalized_shape) is not int or normalized_shape != M:
        return None
    for p in (weight, bias):
        if p is not None and not (_float_type(p) == t and cnp.PyArray_NDIM(<cnp.ndarray>p) == 1
                                  and cnp.PyArray_DIM(<cnp.ndarray>p, 0) == M
                                  and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>p)):
            return None
    cdef const void* pw = NULL if weight is None else cnp.PyArray_DATA(<cnp.ndarray>weight)
    cdef const void* pb = NULL if bias is None else cnp.PyArray_DATA(<cnp.ndarray>bias)
    if cnp.PyArray_SIZE(xa) > limit:
        return _rows_planned(<Plans>plans, xa, R, M, pw, pb, e, center)
    y = cnp.PyArray_EMPTY(nd, cnp.PyArray_DIMS(xa), t, 0)
    cdef double* stats = <double*>malloc(2 * R * sizeof(double))
    if stats == NULL:
        raise MemoryError()
    if t == cnp.NPY_FLOAT:
        _rows_forward_task(<const float*>cnp.PyArray_DATA(xa), <float*>cnp.PyArray_DATA(<cnp.ndarray>y),
                           0, R, M, <const float*>pw, <const float*>pb, e, center, stats, stats + R,
                           False, NULL, NULL, NULL, False)
    else:
        _rows_forward_task(<const double*>cnp.PyArray_DATA(xa), <double*>cnp.PyArray_DATA(<cnp.ndarray>y),
                           0, R, M, <const double*>pw, <const double*>pb, e, center, stats, stats + R,
                           False, NULL, NULL, NULL, False)
    free(stats)
    return y


cdef object _rows_planned(
    Plans plans, cnp.ndarray x, Py_ssize_t R, Py_ssize_t M, const void* pw, const void* pb,
    double eps, bint center,
):
    """:func:`rows_plain` past the small path: :func:`_rows_forward_tasks` (``rows_forward``'s
    loop) into ``plans``' output."""
    y, ntask_, threads_, stream_ = plans.plan(x, R, M)
    cdef Py_ssize_t ntask = ntask_
    cdef int num_threads = threads_, t = cnp.PyArray_TYPE(x)
    cdef bint stream = stream_
    _check_planned(y, x, ntask, num_threads)
    cdef double* stats = <double*>malloc(2 * R * sizeof(double))
    if stats == NULL:
        raise MemoryError()
    cdef const void* px = cnp.PyArray_DATA(x)
    cdef void* py = cnp.PyArray_DATA(<cnp.ndarray>y)
    with nogil:
        if t == cnp.NPY_FLOAT:
            _rows_forward_tasks(<const float*>px, <float*>py, R, M, <const float*>pw, <const float*>pb,
                                eps, center, stats, stats + R, stream, NULL, NULL, NULL, ntask,
                                num_threads)
        else:
            _rows_forward_tasks(<const double*>px, <double*>py, R, M, <const double*>pw,
                                <const double*>pb, eps, center, stats, stats + R, stream, NULL, NULL,
                                NULL, ntask, num_threads)
    free(stats)
    return y
