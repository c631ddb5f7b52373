"""Memory layouts of the same values: strided, Fortran, negative strides, big-endian, ...

Each maps a C-contiguous array to an array with equal values in another layout.
"""

import numpy as np


def _strided(x):
    big = np.repeat(x, 2, axis=1)  # every other channel-axis entry is x again
    return big[:, ::2]


def _fortran(x):
    return np.asfortranarray(x)


def _neg_batch(x):
    return np.ascontiguousarray(x[::-1])[::-1]


def _neg_all(x):
    sl = tuple(slice(None, None, -1) for _ in range(x.ndim))
    return np.ascontiguousarray(x[sl])[sl]


def _big_endian(x):
    return x.astype(x.dtype.newbyteorder(">"))


def _read_only(x):
    x = x.copy()
    x.setflags(write=False)
    return x


def _transposed_view(x):
    # a channels-first array viewed through a transpose of its spatial axes
    t = np.ascontiguousarray(np.swapaxes(x, -1, -2))
    return np.swapaxes(t, -1, -2)


def _inner_strided(x):
    big = np.zeros(x.shape[:-1] + (3 * x.shape[-1],), x.dtype)
    big[..., ::3] = x
    return big[..., ::3]


def _broadcast(x):
    # zero strides along the batch axis (read-only view)
    return np.broadcast_to(x[:1], x.shape)


LAYOUTS = {
    "strided": _strided,
    "fortran": _fortran,
    "neg_batch": _neg_batch,
    "neg_all": _neg_all,
    "big_endian": _big_endian,
    "read_only": _read_only,
    "transposed": _transposed_view,
    "inner_strided": _inner_strided,
    "broadcast": _broadcast,
}
