"""Canonical ``(N, A, C, B)`` views.

Every normalization computes statistics per ``(n, c)`` over ``(a, b)`` of a
4-D view of its input, made by reshaping only (no copy for C-contiguous data).
With the channel axis ``k`` of a shape ``(d0, d1, ..., C, ...)``:

============  ===================================================  =========================
op            view                                                 axis=1 / axis=-1
============  ===================================================  =========================
BatchNorm     ``(1, prod(shape[:k]), C, prod(shape[k+1:]))``      ``(1, N, C, S)`` / ``(1, N*S, C, 1)``
InstanceNorm  ``(N, prod(shape[1:k]), C, prod(shape[k+1:]))``     ``(N, 1, C, S)`` / ``(N, S, C, 1)``
GroupNorm     InstanceNorm's view, statistics merged over the ``C/G`` channels of a group
LayerNorm     ``(R, 1, 1, M)``: ``R`` leading rows, ``M = prod(normalized_shape)``, affine on ``b``
RMSNorm       LayerNorm's view, no centering
============  ===================================================  =========================

``B > 1`` means the contiguous run is the reduction; ``B == 1`` (channels-last)
means the contiguous run is ``C``.
"""

from __future__ import annotations

import math

import numpy as np


def batch_norm_view(x: np.ndarray, axis: int) -> np.ndarray:
    """View C-contiguous ``x`` with channels on ``axis`` as ``(1, A, C, B)``."""
    shape = x.shape
    return x.reshape(1, math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:]))


def ghost_view(x: np.ndarray, axis: int, virtual_batch_size: int) -> np.ndarray:
    """View C-contiguous ``x`` (batch on axis 0, channels on ``axis >= 1``) as ``(G, A, C, B)``:
    ``G = N / virtual_batch_size`` virtual batches, each a statistics group per channel (ghost
    batch normalization: the instance view of the batch regrouped)."""
    shape = x.shape
    g = shape[0] // virtual_batch_size
    return x.reshape(g, virtual_batch_size * math.prod(shape[1:axis]), shape[axis],
                     math.prod(shape[axis + 1:]))


def instance_view(x: np.ndarray, axis: int) -> np.ndarray:
    """View C-contiguous ``x`` (batch on axis 0, channels on ``axis >= 1``) as ``(N, A, C, B)``."""
    shape = x.shape
    return x.reshape(shape[0], math.prod(shape[1:axis]), shape[axis], math.prod(shape[axis + 1:]))


def rows_view(x: np.ndarray, trailing: int) -> np.ndarray:
    """View C-contiguous ``x`` as ``(R, M)``: ``M`` is the product of the last ``trailing`` dims."""
    if trailing == 1 and x.ndim == 2:
        return x
    m = math.prod(x.shape[x.ndim - trailing:])
    return x.reshape(-1 if m else math.prod(x.shape[: x.ndim - trailing]), m)
