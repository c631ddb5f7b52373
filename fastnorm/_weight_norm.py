"""Weight normalization (Salimans & Kingma 2016): ``w = g * v / ||v||``, PyTorch's
``torch._weight_norm`` / ``nn.utils.parametrizations.weight_norm``.

The norm of each slice of ``v`` along ``axis`` is taken over all the other axes, scaled by the
slice's largest magnitude first (as BLAS ``nrm2`` and ``hypot`` do), so that norms near the
float64 range's ends (1e-200, 1e200) are exact where the sum of squares would underflow or
overflow; everything is computed in float64 and rounded once to ``v``'s dtype.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from . import _validate

__all__ = ["weight_norm", "weight_norm_backward"]


def _arrays(v: ArrayLike, g: ArrayLike,
            axis: object) -> tuple[np.ndarray, np.ndarray, int | None, tuple[int, ...]]:
    v = _validate.float_array(v, "v")
    if not isinstance(v, np.ndarray):
        raise TypeError("v must be a NumPy array")
    _validate.min_ndim(v, "v", 1)
    g = _validate.float_array(g, "g")
    if axis is None:  # the whole tensor: one g
        keep = (1,) * v.ndim
        if g.size != 1:
            raise ValueError(f"g must hold one value with axis=None, got shape {g.shape}")
        return v, g, None, keep
    axis = _validate.channel_axis(axis, v.ndim)
    keep = tuple(v.shape[axis] if i == axis else 1 for i in range(v.ndim))
    if g.shape not in (keep, (v.shape[axis],)) and not (g.ndim == 0 and v.shape[axis] == 1):
        raise ValueError(
            f"g must have shape {keep} or ({v.shape[axis]},) (one value per slice of v along "
            f"axis {axis}), got {g.shape}"
        )
    return v, g, axis, keep


def _unit(v64: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """``(||v||, v / ||v||)`` per slice along ``axis`` (None: the whole array), the norm kept
    as ``(1, .., C, .., 1)``."""
    others = tuple(i for i in range(v64.ndim) if i != axis)
    big = np.max(np.abs(v64), axis=others, keepdims=True) if v64.size else np.zeros(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = np.where(big > 0, v64 / np.where(big > 0, big, 1.0), 0.0)
        norm = big * np.sqrt(np.sum(scaled * scaled, axis=others, keepdims=True))
        unit = scaled / np.sqrt(np.sum(scaled * scaled, axis=others, keepdims=True))
    return norm, unit


def weight_norm(v: ArrayLike, g: ArrayLike, axis: int | None = 0) -> np.ndarray:
    """Weight normalization: ``w = g * v / ||v||``, the norm over every axis but ``axis``.

    Parameters
    ----------
    v : ndarray
        The direction, at least 1-D, any float dtype (float16, float32,
        float64, bfloat16).
    g : array_like, shape ``(C,)`` or ``v``'s with 1 on every axis but ``axis``
        The magnitude of each slice (``C = v.shape[axis]``), as PyTorch keeps
        it; float.  With ``axis=None``, one value (any shape of size 1).
    axis : int or None, default 0
        The axis whose slices are normalized (0 for the output channels of a
        linear or convolution weight; a negative axis counts from the end, as in
        NumPy); None: the whole array, with one ``g`` (PyTorch's ``dim=None``, which
        ``torch._weight_norm`` spells ``dim=-1``).

    Returns
    -------
    ndarray
        ``w``, of ``v``'s shape and dtype.  A slice of ``v`` that is all zeros gives NaN,
        as in PyTorch.

    Raises
    ------
    TypeError
        If ``v`` or ``g`` does not hold float values, ``v`` is not a NumPy
        array, or ``axis`` is not an int or None.
    ValueError
        If ``v`` is 0-D, ``axis`` is out of range, or ``g`` does not have one
        of the shapes above.

    See Also
    --------
    weight_norm_backward : the gradients.

    Notes
    -----
    For each slice ``v_c`` of ``v`` along ``axis``:

    .. math::

        w_c = g_c \\frac{v_c}{\\lVert v_c \\rVert_2}

    The norm is scaled by the slice's largest magnitude first (as BLAS
    ``nrm2`` does), so that norms near the ends of the float64 range are
    exact; everything is computed in float64 and rounded once to ``v``'s
    dtype.

    Examples
    --------
    >>> v = np.array([[3.0, 4.0], [0.0, 2.0]])
    >>> w = fastnorm.weight_norm(v, np.array([1.0, 3.0]))
    >>> print(w)
    [[0.6 0.8]
     [0.  3. ]]
    >>> np.allclose(np.linalg.norm(w, axis=1), [1.0, 3.0])
    True

    One magnitude for the whole array:

    >>> w = fastnorm.weight_norm(v, 2.0, axis=None)
    >>> print(round(float(np.linalg.norm(w)), 6))
    2.0
    """
    v, g, axis, keep = _arrays(v, g, axis)
    _, unit = _unit(v.astype(np.float64), axis)
    w: np.ndarray = np.asarray(g, dtype=np.float64).reshape(keep) * unit
    return w.astype(_validate.native(v.dtype), copy=False)


def weight_norm_backward(
    dw: ArrayLike, v: ArrayLike, g: ArrayLike, axis: int | None = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Gradients of :func:`weight_norm`: ``(dv, dg)``.

    Parameters
    ----------
    dw : array_like, shape of ``v``
        The gradient of ``w``, float.
    v, g, axis
        As for :func:`weight_norm`.

    Returns
    -------
    dv : ndarray, shape and dtype of ``v``
        The gradient of ``v``.
    dg : ndarray, shape and dtype of ``g``
        The gradient of ``g``.

    Raises
    ------
    TypeError
        As :func:`weight_norm`, or if ``dw`` does not hold float values.
    ValueError
        As :func:`weight_norm`, or if ``dw`` does not have ``v``'s shape.

    See Also
    --------
    weight_norm : the forward.

    Notes
    -----
    With ``u = v / ||v||`` per slice:

    .. math::

        dg = \\sum dw \\cdot u, \\qquad
        dv = \\frac{g}{\\lVert v \\rVert} \\left(dw - u \\, dg\\right)

    formed from the unit vector so that tiny and huge norms lose nothing to
    underflow or overflow.

    Examples
    --------
    >>> v, g = np.array([[3.0, 4.0], [0.0, 2.0]]), np.array([1.0, 3.0])
    >>> dv, dg = fastnorm.weight_norm_backward(np.ones_like(v), v, g)
    >>> print(dg)
    [1.4 1. ]
    >>> print(dv)
    [[ 0.032 -0.024]
     [ 1.5    0.   ]]

    ``dv`` is orthogonal to ``v`` in each slice (the norm of ``w`` does not
    depend on ``v``):

    >>> np.allclose((dv * v).sum(axis=1), 0)
    True
    """
    v, g, axis, keep = _arrays(v, g, axis)
    dw = _validate.float_array(dw, "dw")
    _validate.same_shape(dw, v.shape, "dw")
    v64 = v.astype(np.float64)
    norm, unit = _unit(v64, axis)
    others = tuple(i for i in range(v.ndim) if i != axis)
    dw64 = np.asarray(dw, dtype=np.float64)
    dg = np.sum(dw64 * unit, axis=others, keepdims=True)
    g64 = np.asarray(g, dtype=np.float64).reshape(keep)
    with np.errstate(invalid="ignore", divide="ignore"):
        dv = (g64 / norm) * (dw64 - unit * dg)
    return (dv.astype(_validate.native(v.dtype), copy=False),
            dg.reshape(np.shape(g)).astype(_validate.native(g.dtype), copy=False))
