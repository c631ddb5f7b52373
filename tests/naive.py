"""Independent float64 reference for BatchNorm: the test oracle.

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
    count = x.size // x.shape[channel_axis(x.ndim, axis)]
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
        mean, var, n = batch_stats(x, axis)
        if training and running_mean is not None:
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
