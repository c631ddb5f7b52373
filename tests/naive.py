"""Independent float64 reference for BatchNorm, InstanceNorm, GroupNorm, LayerNorm and RMSNorm:
the test oracle.

Plain, obviously-correct formulas written on the original array shape with
``np.mean`` / ``np.var`` over the non-channel axes.  Slow on purpose; it must
never import fastnorm.
"""

import numpy as np


def channel_axis(ndim, axis=1):
    """Index of the channel axis for ``axis`` in {1, -1} (ndim 2: both are axis 1)."""
    if ndim < 2:
        raise ValueError("BatchNorm needs ndim >= 2")
    if axis not in (1, -1):
        raise ValueError("axis must be 1 or -1")
    return 1 if axis == 1 else ndim - 1


def reduce_axes(ndim, axis=1):
    """All axes except the channel axis."""
    c = channel_axis(ndim, axis)
    return tuple(i for i in range(ndim) if i != c)


def per_channel(v, ndim, axis=1):
    """A length-C vector as float64, shaped to broadcast against the input."""
    shape = [1] * ndim
    shape[channel_axis(ndim, axis)] = -1
    return np.asarray(v, dtype=np.float64).reshape(shape)


def batch_stats(x, axis=1):
    """Per-channel (mean, biased variance, count) in float64."""
    x = np.asarray(x, dtype=np.float64)
    red = reduce_axes(x.ndim, axis)
    c = x.shape[channel_axis(x.ndim, axis)]
    count = x.size // c if c else 0
    return np.mean(x, axis=red), np.var(x, axis=red), count


def batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None,
               training=False, momentum=0.1, eps=1e-5, axis=1):
    """BatchNorm forward with PyTorch semantics, everything in float64.

    Returns a dict with
      y              the output (float64, the input's shape),
      mean, var      the statistics used to normalize (biased variance),
      batch_stats    True when the batch statistics were used,
      running_mean, running_var
                     the updated running statistics (new float64 arrays; the
                     inputs are not modified) or the given ones unchanged.
    """
    x = np.asarray(x, dtype=np.float64)
    nd = x.ndim
    use_batch = training or running_mean is None
    new_rm = None if running_mean is None else np.array(running_mean, dtype=np.float64)
    new_rv = None if running_var is None else np.array(running_var, dtype=np.float64)
    if use_batch:
        with np.errstate(invalid="ignore", divide="ignore"):  # an empty x: NaN statistics
            mean, var, n = batch_stats(x, axis)
        if training and running_mean is not None and x.size:  # empty: unchanged, as PyTorch
            new_rm = (1.0 - momentum) * new_rm + momentum * mean
            new_rv = (1.0 - momentum) * new_rv + momentum * var * n / (n - 1)
    else:
        mean = np.array(running_mean, dtype=np.float64)
        var = np.array(running_var, dtype=np.float64)
    y = (x - per_channel(mean, nd, axis)) / np.sqrt(per_channel(var, nd, axis) + eps)
    if weight is not None:
        y = y * per_channel(weight, nd, axis)
    if bias is not None:
        y = y + per_channel(bias, nd, axis)
    return dict(y=y, mean=mean, var=var, batch_stats=use_batch,
                running_mean=new_rm, running_var=new_rv)


def batch_norm_backward(x, dy, mean, var, weight=None, eps=1e-5, axis=1, batch_stats=True):
    """Analytic gradients of y = (x - mean) / sqrt(var + eps) * weight + bias.

    ``batch_stats=True``: mean/var are the (biased) batch statistics of x and
    depend on x; otherwise they are constants (eval with running statistics).
    Returns (dx, dweight, dbias) in float64.
    """
    x = np.asarray(x, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    nd = x.ndim
    red = reduce_axes(nd, axis)
    std = np.sqrt(per_channel(var, nd, axis) + eps)
    xhat = (x - per_channel(mean, nd, axis)) / std
    dweight = np.sum(dy * xhat, axis=red)
    dbias = np.sum(dy, axis=red)
    w = per_channel(np.ones(x.shape[channel_axis(nd, axis)]) if weight is None else weight, nd, axis)
    g = dy * w
    if batch_stats:
        dx = (g - np.mean(g, axis=red, keepdims=True)
              - xhat * np.mean(g * xhat, axis=red, keepdims=True)) / std
    else:
        dx = g / std
    return dx, dweight, dbias


# =============================================================================================
# InstanceNorm, GroupNorm, LayerNorm, RMSNorm: the same style of oracle, float64 throughout.
#
# Every family normalizes ``x`` over a set of axes of (a view of) the original array:
#   y = (x - mean) / sqrt(var + eps) * weight + bias      (RMSNorm: no mean, mean(x**2) for var)
# and its gradient, with the statistics depending on x, is
#   g = dy * weight;  dx = (g - mean(g) - xhat * mean(g * xhat)) / std
# (RMSNorm: dx = (g - xhat * mean(g * xhat)) / rms), means over the same axes.


def _normalize_backward(x, dy, red, mean, std, w, centered=True):
    """dx of y = (x - mean) / std * w with mean/std the statistics of x over ``red`` (keepdims
    arrays); ``mean`` is ignored when ``centered`` is False (RMS)."""
    xhat = (x - mean) / std if centered else x / std
    g = dy * w
    dx = g - xhat * np.mean(g * xhat, axis=red, keepdims=True)
    if centered:
        dx = dx - np.mean(g, axis=red, keepdims=True)
    return dx / std


# ---------------------------------------------------------------------------- instance norm


def instance_axes(ndim, axis=1):
    """(channel axis, spatial axes) of an (N, C, *S) or (N, *S, C) array."""
    if ndim < 3:
        raise ValueError("InstanceNorm needs ndim >= 3")
    c = channel_axis(ndim, axis)
    return c, tuple(i for i in range(1, ndim) if i != c)


def instance_stats(x, axis=1):
    """Per-(n, c) mean and biased variance, each of shape (N, C), and the spatial size S."""
    x = np.asarray(x, dtype=np.float64)
    c, sp = instance_axes(x.ndim, axis)
    mean = np.mean(x, axis=sp)
    var = np.var(x, axis=sp)
    if c != 1:  # (N, C) whatever the layout
        mean, var = mean.reshape(x.shape[0], x.shape[c]), var.reshape(x.shape[0], x.shape[c])
    return mean, var, int(np.prod([x.shape[i] for i in sp]))


def per_instance(v, ndim, axis=1):
    """An (N, C) array shaped to broadcast against the input."""
    v = np.asarray(v, dtype=np.float64)
    shape = [1] * ndim
    shape[0] = v.shape[0]
    shape[channel_axis(ndim, axis)] = v.shape[1]
    return v.reshape(shape)


def instance_norm(x, running_mean=None, running_var=None, weight=None, bias=None,
                  use_input_stats=True, momentum=0.1, eps=1e-5, axis=1):
    """InstanceNorm forward (PyTorch semantics) in float64.

    Returns dict(y, mean, var (both (N, C), the statistics used, broadcast over n for running
    stats), input_stats, running_mean, running_var (new arrays, or the given ones))."""
    x = np.asarray(x, dtype=np.float64)
    nd = x.ndim
    n = x.shape[0]
    new_rm = None if running_mean is None else np.array(running_mean, dtype=np.float64)
    new_rv = None if running_var is None else np.array(running_var, dtype=np.float64)
    if use_input_stats:
        with np.errstate(invalid="ignore", divide="ignore"):
            mean, var, s = instance_stats(x, axis)
        if running_mean is not None and x.size:  # empty: unchanged, as PyTorch
            new_rm = (1.0 - momentum) * new_rm + momentum * np.mean(mean, axis=0)
            new_rv = (1.0 - momentum) * new_rv + momentum * np.mean(var * s / (s - 1), axis=0)
    else:
        mean = np.broadcast_to(np.asarray(running_mean, dtype=np.float64), (n, len(running_mean)))
        var = np.broadcast_to(np.asarray(running_var, dtype=np.float64), (n, len(running_var)))
    y = (x - per_instance(mean, nd, axis)) / np.sqrt(per_instance(var, nd, axis) + eps)
    if weight is not None:
        y = y * per_channel(weight, nd, axis)
    if bias is not None:
        y = y + per_channel(bias, nd, axis)
    return dict(y=y, mean=mean, var=var, input_stats=use_input_stats,
                running_mean=new_rm, running_var=new_rv)


def instance_norm_backward(x, dy, mean, var, weight=None, eps=1e-5, axis=1, input_stats=True):
    """(dx, dweight, dbias) of instance norm; mean/var (N, C) are the per-instance statistics
    of x (``input_stats``) or constants (running statistics)."""
    x = np.asarray(x, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    nd = x.ndim
    c, sp = instance_axes(nd, axis)
    m = per_instance(mean, nd, axis)
    std = np.sqrt(per_instance(var, nd, axis) + eps)
    red = reduce_axes(nd, axis)  # every axis but the channel axis
    xhat = (x - m) / std
    dweight = np.sum(dy * xhat, axis=red)
    dbias = np.sum(dy, axis=red)
    w = per_channel(np.ones(x.shape[c]) if weight is None else weight, nd, axis)
    if input_stats:
        dx = _normalize_backward(x, dy, sp, m, std, w)
    else:
        dx = dy * w / std
    return dx, dweight, dbias


# ------------------------------------------------------------------------------- group norm


def _group_view(x, num_groups, axis=1):
    """x (N, C, *S) or (N, *S, C) viewed with C split into (G, C // G); returns the view, the
    axes to reduce over (the group's channels and all spatial axes) and the group axis."""
    c = channel_axis(x.ndim, axis)
    C = x.shape[c]
    if C % num_groups:
        raise ValueError("num_groups must divide the channels")
    shape = x.shape[:c] + (num_groups, C // num_groups) + x.shape[c + 1:]
    v = x.reshape(shape)
    red = tuple(i for i in range(1, v.ndim) if i != c)
    return v, red, c


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5, axis=1):
    """GroupNorm forward in float64.  Returns dict(y, mean, var) with mean/var of shape (N, G)."""
    x = np.asarray(x, dtype=np.float64)
    v, red, gax = _group_view(x, num_groups, axis)
    mean = np.mean(v, axis=red, keepdims=True)
    var = np.var(v, axis=red, keepdims=True)
    y = ((v - mean) / np.sqrt(var + eps)).reshape(x.shape)
    if weight is not None:
        y = y * per_channel(weight, x.ndim, axis)
    if bias is not None:
        y = y + per_channel(bias, x.ndim, axis)
    return dict(y=y, mean=mean.reshape(x.shape[0], num_groups),
                var=var.reshape(x.shape[0], num_groups))


def group_norm_backward(x, dy, num_groups, weight=None, eps=1e-5, axis=1):
    """(dx, dweight, dbias) of group norm (statistics of x, per-channel affine)."""
    x = np.asarray(x, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    nd = x.ndim
    C = x.shape[channel_axis(nd, axis)]
    v, red, _ = _group_view(x, num_groups, axis)
    dyv = dy.reshape(v.shape)
    mean = np.mean(v, axis=red, keepdims=True)
    std = np.sqrt(np.var(v, axis=red, keepdims=True) + eps)
    xhat = ((v - mean) / std).reshape(x.shape)
    credu = reduce_axes(nd, axis)
    dweight = np.sum(dy * xhat, axis=credu)
    dbias = np.sum(dy, axis=credu)
    w = per_channel(np.ones(C) if weight is None else weight, nd, axis)
    wv = np.broadcast_to(w, x.shape).reshape(v.shape)
    dx = _normalize_backward(v, dyv, red, mean, std, wv).reshape(x.shape)
    return dx, dweight, dbias


# ------------------------------------------------------------------------ layer / RMS norm


def trailing_axes(ndim, normalized_shape):
    ns = (normalized_shape,) if np.isscalar(normalized_shape) else tuple(normalized_shape)
    k = len(ns)
    if k == 0 or k > ndim:
        raise ValueError("bad normalized_shape")
    return ns, tuple(range(ndim - k, ndim))


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """LayerNorm forward in float64: dict(y, mean, var), mean/var of the leading shape."""
    x = np.asarray(x, dtype=np.float64)
    ns, red = trailing_axes(x.ndim, normalized_shape)
    if x.shape[x.ndim - len(ns):] != ns:
        raise ValueError("normalized_shape does not match")
    mean = np.mean(x, axis=red, keepdims=True)
    var = np.var(x, axis=red, keepdims=True)
    y = (x - mean) / np.sqrt(var + eps)
    if weight is not None:
        y = y * np.asarray(weight, dtype=np.float64)
    if bias is not None:
        y = y + np.asarray(bias, dtype=np.float64)
    lead = x.shape[:x.ndim - len(ns)]
    return dict(y=y, mean=mean.reshape(lead), var=var.reshape(lead))


def layer_norm_backward(x, dy, normalized_shape, weight=None, eps=1e-5):
    """(dx, dweight, dbias) of layer norm; dweight/dbias have normalized_shape."""
    x = np.asarray(x, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    ns, red = trailing_axes(x.ndim, normalized_shape)
    lead = tuple(range(x.ndim - len(ns)))
    mean = np.mean(x, axis=red, keepdims=True)
    std = np.sqrt(np.var(x, axis=red, keepdims=True) + eps)
    xhat = (x - mean) / std
    dweight = np.sum(dy * xhat, axis=lead)
    dbias = np.sum(dy, axis=lead)
    w = np.ones(ns) if weight is None else np.asarray(weight, dtype=np.float64)
    return _normalize_backward(x, dy, red, mean, std, w), dweight, dbias


def rms_eps(x, eps=None):
    """RMSNorm's eps: ``None`` means the machine epsilon of the INPUT's dtype."""
    if eps is not None:
        return float(eps)
    wide = np.asarray(x).dtype.itemsize == 8  # PyTorch: the compute dtype's (float32 for float16)
    return float(np.finfo(np.float64 if wide else np.float32).eps)


def rms_norm(x, normalized_shape, weight=None, eps=None):
    """RMSNorm forward in float64: dict(y, rms) with rms = sqrt(mean(x**2) + eps) (leading
    shape).  ``eps=None`` uses the machine epsilon of x's compute dtype (float32 for float16)."""
    eps = rms_eps(x, eps)
    x = np.asarray(x, dtype=np.float64)
    ns, red = trailing_axes(x.ndim, normalized_shape)
    if x.shape[x.ndim - len(ns):] != ns:
        raise ValueError("normalized_shape does not match")
    rms = np.sqrt(np.mean(x * x, axis=red, keepdims=True) + eps)
    y = x / rms
    if weight is not None:
        y = y * np.asarray(weight, dtype=np.float64)
    return dict(y=y, rms=rms.reshape(x.shape[:x.ndim - len(ns)]))


def rms_norm_backward(x, dy, normalized_shape, weight=None, eps=None):
    """(dx, dweight) of RMSNorm (``eps=None``: as :func:`rms_eps`)."""
    eps = rms_eps(x, eps)
    x = np.asarray(x, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    ns, red = trailing_axes(x.ndim, normalized_shape)
    lead = tuple(range(x.ndim - len(ns)))
    rms = np.sqrt(np.mean(x * x, axis=red, keepdims=True) + eps)
    dweight = np.sum(dy * x / rms, axis=lead)
    w = np.ones(ns) if weight is None else np.asarray(weight, dtype=np.float64)
    return _normalize_backward(x, dy, red, None, rms, w, centered=False), dweight
