"""Canonical ``(N, A, C, B)`` views.

Every normalization computes statistics per ``(n, c)`` over ``(a, b)`` of a
4-D view of its input, made by reshaping only (no copy for C-contiguous data):

====================  =====================  ======================
op                    channel axis k         view
====================  =====================  ======================
BatchNorm             any                    ``(1, prod(shape[:k]), C, prod(shape[k+1:]))``
====================  =====================  ======================

For ``axis=1`` that is ``(1, N, C, S)`` (the contiguous run ``B = S`` is the
reduction); for ``axis=-1`` it is ``(1, N*S, C, 1)`` (the contiguous run is
``C``).  Later families add rows here, not kernels.
"""

from __future__ import annotations

import math

import numpy as np


def batch_norm_view(x: np.ndarray, axis: int) -> np.ndarray:
    """View C-contiguous ``x`` with channels on ``axis`` as ``(1, A, C, B)``."""
    shape = x.shape
    a = math.prod(shape[:axis])
    b = math.prod(shape[axis + 1:])
    return x.reshape(1, a, shape[axis], b)
