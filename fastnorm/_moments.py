"""Public statistics: :func:`moments` of an array and the mergeable :class:`Moments` value.

The statistics core's per-group count, mean and sum of squared deviations (``M2``), in
float64, as a value that chunks, streams, processes and Dask blocks merge with Chan's formula
(:func:`fastnorm._core.merge_moments`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _core, _validate
from .backends import backend_module

__all__ = ["Moments", "moments"]


class Moments:
    """Count, mean and sum of squared deviations of values, per statistic, in float64.

    A mergeable summary: the moments of two disjoint sets of values merge into the moments
    of their union (:meth:`merge`, Chan's parallel formula), so the statistics of data read
    in chunks, on several threads, processes or machines, are those of the whole within
    float64 rounding, as for data read at once.  Never ``E[x^2] - E[x]^2``: offsets do not
    cost digits.

    Parameters
    ----------
    count : int
        Number of values behind each statistic (the same for all of them), ``>= 0``.
    mean : array_like of float, shape ``S``
        Mean of the values of each statistic (stored as float64).
    m2 : array_like of float, shape ``S``
        Sum of squared deviations from the mean of each statistic (float64, ``>= 0``).

    Attributes
    ----------
    count : int
        Number of values behind each statistic.
    mean : ndarray of float64, shape ``S``
        Mean of each statistic's values.
    m2 : ndarray of float64, shape ``S``
        Sum of squared deviations from the mean of each statistic's values.
    shape : tuple of int
        ``S``, the shape of the statistics.

    Raises
    ------
    TypeError
        If ``count`` is not an int (bool included).
    ValueError
        If ``count`` is negative or ``mean`` and ``m2`` differ in shape.

    See Also
    --------
    moments : the moments of an array.
    fastnorm.dask.moments : the moments of a Dask array.

    Notes
    -----
    Two parts with counts ``n_a``, ``n_b``, means ``mean_a``, ``mean_b`` and
    sums of squared deviations ``m2_a``, ``m2_b`` merge as (Chan et al.):

    .. math::

        n = n_a + n_b, \\quad \\delta = \\mathrm{mean}_b - \\mathrm{mean}_a, \\quad
        \\mathrm{mean} = \\mathrm{mean}_a + \\delta \\frac{n_b}{n}, \\quad
        m_2 = m_{2,a} + m_{2,b} + \\delta^2 \\frac{n_a n_b}{n}

    Examples
    --------
    >>> m = fastnorm.Moments(4, [1.0, 2.0], [8.0, 0.0])
    >>> m
    Moments(count=4, shape=(2,))
    >>> print(m.var(), m.var(ddof=1))
    [2. 0.] [2.66666667 0.        ]
    """

    __slots__ = ("count", "m2", "mean")
    count: int
    mean: NDArray[np.float64]
    m2: NDArray[np.float64]

    def __init__(self, count: int, mean: ArrayLike, m2: ArrayLike) -> None:
        if isinstance(count, (bool, np.bool_)) or not isinstance(count, numbers.Integral):
            raise TypeError(f"count must be an int, got {count!r}")
        if count < 0:
            raise ValueError(f"count must be non-negative, got {count}")
        mean = np.array(mean, dtype=np.float64)
        m2 = np.array(m2, dtype=np.float64)
        if mean.shape != m2.shape:
            raise ValueError(f"mean and m2 must have the same shape, got {mean.shape} and {m2.shape}")
        self.count = int(count)
        self.mean = mean
        self.m2 = m2

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the statistics (of :attr:`mean`), a tuple of int."""
        return self.mean.shape

    def merge(self, other: Moments) -> Moments:
        """The moments of the union of this value's data and ``other``'s (a new value).

        Chan's formula in float64: associative and commutative up to rounding.

        Parameters
        ----------
        other : Moments
            Moments of other values, of the same :attr:`shape`.

        Returns
        -------
        Moments
            A new value; neither operand changes.

        Raises
        ------
        TypeError
            If ``other`` is not a :class:`Moments`.
        ValueError
            If the shapes differ.

        See Also
        --------
        merge_all : any number of parts at once.

        Examples
        --------
        >>> x = np.arange(12, dtype=np.float64).reshape(2, 3, 2)
        >>> first, second = fastnorm.moments(x[:1]), fastnorm.moments(x[1:])
        >>> whole = first.merge(second)
        >>> whole.count, np.allclose(whole.mean, x.mean(axis=(0, 2)))
        (4, True)
        >>> np.allclose(whole.var(), x.var(axis=(0, 2)))
        True
        """
        return Moments.merge_all((self, other))

    @staticmethod
    def merge_all(parts: Iterable[Moments]) -> Moments:
        """The moments of the union of ``parts``' data, merged in their order (at least one).

        Parts with no values contribute nothing.  The same parts in the same order give
        bit-identical results wherever this runs.

        Parameters
        ----------
        parts : iterable of Moments
            At least one, all of the same :attr:`shape`.

        Returns
        -------
        Moments
            A new value (a copy for one part).

        Raises
        ------
        TypeError
            If a part is not a :class:`Moments`.
        ValueError
            If ``parts`` is empty or the shapes differ.

        Examples
        --------
        >>> x = np.random.default_rng(0).standard_normal((6, 4)) + 1000.0
        >>> parts = [fastnorm.moments(x[i:i + 2], axis=-1) for i in range(0, 6, 2)]
        >>> total = fastnorm.Moments.merge_all(parts)
        >>> total.count, total.shape
        (6, (4,))
        >>> np.allclose(total.mean, x.mean(axis=0)), np.allclose(total.var(), x.var(axis=0))
        (True, True)
        """
        parts = list(parts)
        if not parts:
            raise ValueError("parts must hold at least one Moments")
        for part in parts:
            if not isinstance(part, Moments):
                raise TypeError(f"parts must be Moments, got {type(part).__name__}")
            if part.shape != parts[0].shape:
                raise ValueError(f"cannot merge moments of shapes {parts[0].shape} and {part.shape}")
        if len(parts) == 1:
            return Moments(parts[0].count, parts[0].mean, parts[0].m2)
        shape = parts[0].shape
        _, mean, m2 = _core.merge_moments(
            np.array([p.count for p in parts], dtype=np.float64),
            np.stack([p.mean.reshape(-1) for p in parts]),
            np.stack([p.m2.reshape(-1) for p in parts]),
        )
        return Moments(sum(p.count for p in parts), mean.reshape(shape), m2.reshape(shape))

    def var(self, ddof: int = 0) -> NDArray[np.float64]:
        """Variance ``m2 / (count - ddof)``, float64 (NaN where ``count <= ddof``).

        Parameters
        ----------
        ddof : int, default 0
            Delta degrees of freedom, as NumPy's: 0 for the biased (population)
            variance normalization uses, 1 for the unbiased one.

        Returns
        -------
        ndarray of float64, shape :attr:`shape`

        Raises
        ------
        TypeError
            If ``ddof`` is not an int.
        ValueError
            If ``ddof`` is negative.

        Examples
        --------
        >>> m = fastnorm.moments(np.array([[1.0, 2.0, 3.0, 4.0]]), axis=0)
        >>> print(m.var(), m.var(ddof=1))
        [1.25] [1.66666667]
        """
        ddof = _non_negative_int(ddof, "ddof")
        if self.count <= ddof:
            return np.full(self.shape, np.nan)
        return self.m2 / (self.count - ddof)

    def std(self, ddof: int = 0) -> NDArray[np.float64]:
        """Standard deviation ``sqrt(var(ddof))``, float64.

        Parameters
        ----------
        ddof : int, default 0
            As for :meth:`var`.

        Returns
        -------
        ndarray of float64, shape :attr:`shape`

        Raises
        ------
        TypeError
            If ``ddof`` is not an int.
        ValueError
            If ``ddof`` is negative.

        Examples
        --------
        >>> m = fastnorm.moments(np.array([[1.0, 3.0, 5.0, 7.0]]), axis=0)
        >>> print(m.std().round(4), m.std(ddof=1).round(4))
        [2.2361] [2.582]
        """
        return np.sqrt(self.var(ddof))

    def coefficients(
        self, weight: ArrayLike | None = None, bias: ArrayLike | None = None, eps: float = 1e-5
    ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
        """Normalization coefficients: ``(mean, scale, shift)`` float64 of shape ``S`` with
        ``y = (x - mean) * scale + shift`` equal to ``(x - mean) / sqrt(var + eps) * weight + bias``.

        Subtract ``mean`` before scaling: folding it into ``shift`` would cost the digits of
        the offset on data far from zero.

        Parameters
        ----------
        weight, bias : array_like, optional
            Broadcast against the statistics' shape; None (the default): 1 and 0.
        eps : float, default 1e-5
            Added to the (biased) variance, ``>= 0``.

        Returns
        -------
        mean, scale, shift : ndarray of float64
            Of the statistics' shape broadcast with ``weight`` and ``bias``
            (``mean`` of the statistics' shape).

        Raises
        ------
        TypeError
            If ``eps`` is not a real number.
        ValueError
            If ``eps`` is negative or NaN, or ``weight``/``bias`` do not broadcast.

        Examples
        --------
        >>> x = np.arange(12, dtype=np.float64).reshape(2, 3, 2)
        >>> m = fastnorm.moments(x)
        >>> mean, scale, shift = m.coefficients(weight=np.array([1.0, 2.0, 3.0]), bias=0.5)
        >>> y = (x - mean[:, None]) * scale[:, None] + shift[:, None]
        >>> np.allclose(y, fastnorm.batch_norm(x, weight=[1.0, 2.0, 3.0], bias=[0.5] * 3,
        ...                                    training=True))
        True
        """
        eps = _validate.real_scalar(eps, "eps", minimum=0.0)
        scale = 1.0 / np.sqrt(self.var() + eps)
        if weight is not None:
            scale = scale * np.asarray(weight, dtype=np.float64)
        shift = np.zeros(np.broadcast_shapes(self.shape, np.shape(scale)))
        if bias is not None:
            shift = shift + np.asarray(bias, dtype=np.float64)
        return self.mean.copy(), np.broadcast_to(scale, shift.shape).copy(), shift

    def update_running(self, running_mean: np.ndarray, running_var: np.ndarray,
                       momentum: float = 0.1) -> None:
        """Update running statistics in place as a BatchNorm training step does:
        ``running = (1 - momentum) * running + momentum * batch``, with the *unbiased*
        variance (``ddof=1``); float64 arithmetic, rounded once to the buffers' dtype.

        Parameters
        ----------
        running_mean, running_var : ndarray
            Writable float arrays of the statistics' shape, updated in place.
        momentum : float, default 0.1
            Weight of these statistics in the update, in ``[0, 1]``.

        Returns
        -------
        None

        Raises
        ------
        TypeError
            If a buffer is not a float ndarray or ``momentum`` not a real number.
        ValueError
            If a buffer has another shape or is read-only, ``momentum`` is outside
            ``[0, 1]``, or ``count <= 1`` (no unbiased variance); nothing changes then.

        Examples
        --------
        >>> x = np.arange(12, dtype=np.float64).reshape(2, 3, 2)
        >>> running_mean, running_var = np.zeros(3), np.ones(3)
        >>> fastnorm.moments(x).update_running(running_mean, running_var)
        >>> print(running_mean, running_var.round(4))
        [0.35 0.55 0.75] [2.1333 2.1333 2.1333]
        """
        momentum = _validate.momentum(momentum)
        for name, buffer in (("running_mean", running_mean), ("running_var", running_var)):
            if not isinstance(buffer, np.ndarray) or buffer.dtype.kind != "f":
                raise TypeError(f"{name} must be a float ndarray")
            if buffer.shape != self.shape:
                raise ValueError(f"{name} must have shape {self.shape}, got {buffer.shape}")
            if not buffer.flags.writeable:
                raise ValueError(f"{name} must be writable")
        if self.count <= 1:
            raise ValueError(f"the unbiased variance needs more than 1 value, got count {self.count}")
        new_mean = (1.0 - momentum) * running_mean + momentum * self.mean
        new_var = (1.0 - momentum) * running_var + momentum * self.var(ddof=1)
        running_mean[...] = new_mean
        running_var[...] = new_var

    def __repr__(self) -> str:
        return f"Moments(count={self.count}, shape={self.shape})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Moments):
            return NotImplemented
        return (self.count == other.count and np.array_equal(self.mean, other.mean, equal_nan=True)
                and np.array_equal(self.m2, other.m2, equal_nan=True))

    __hash__ = None  # type: ignore[assignment]  # mutable arrays


def _non_negative_int(value: object, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be non-negative, got {value}")
    return int(value)


def kept_axes(axis: object, ndim: int) -> tuple[int, ...]:
    """``axis`` (an int or a tuple of ints) as sorted non-negative axes of an ``ndim``-D array."""
    axes = (axis,) if isinstance(axis, (int, np.integer)) and not isinstance(axis, bool) else axis
    if not isinstance(axes, tuple) or not all(
        isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in axes
    ):
        raise TypeError(f"axis must be an int or a tuple of ints, got {axis!r}")
    out = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {a} is out of bounds for an array of {ndim} dimensions")
        out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"axis must not repeat an axis, got {axis!r}")
    return tuple(sorted(out))


def _view(x: np.ndarray, kept: tuple[int, ...]) -> np.ndarray | None:
    """A canonical ``(N, A, C, B)`` view of C-contiguous ``x`` whose ``(n, c)`` groups are the
    statistics indexed by the ``kept`` axes, or None where the kept axes do not form a leading
    run and one more run (then the caller moves them to the front)."""
    shape = x.shape
    runs: list[list[int]] = []
    for a in kept:
        if runs and runs[-1][1] == a:
            runs[-1][1] = a + 1
        else:
            runs.append([a, a + 1])
    prod = math.prod
    if not runs:
        return x.reshape(1, 1, 1, x.size)
    if len(runs) == 1:
        (i, j), = runs
        return x.reshape(1, prod(shape[:i]), prod(shape[i:j]), prod(shape[j:]))
    if len(runs) == 2 and runs[0][0] == 0:
        (_, i), (j, k) = runs
        return x.reshape(prod(shape[:i]), prod(shape[i:j]), prod(shape[j:k]), prod(shape[k:]))
    return None


def moments(x: ArrayLike, axis: int | tuple[int, ...] = 1) -> Moments:
    """Count, mean and sum of squared deviations of ``x``, per index of the ``axis`` axes.

    Parameters
    ----------
    x : array_like
        float16, float32 or float64 (or ml_dtypes' bfloat16) values, any shape and
        memory layout; a NumPy (host) array.
    axis : int or tuple of int, default 1
        The axes that index the statistics; every other axis is reduced.  ``1`` (the
        default): per channel of channels-first data, BatchNorm's statistics; ``-1``: per
        channel of channels-last data; ``(0, 1)``: per sample and channel (InstanceNorm's);
        ``tuple(range(x.ndim - k))``: per row over the last ``k`` axes (LayerNorm's);
        ``()``: one statistic over everything.

    Returns
    -------
    Moments
        Statistics of shape ``tuple(x.shape[a] for a in sorted(axis))``, computed by the
        backend's blocked kernels (float64 across blocks).

    Raises
    ------
    TypeError
        If ``x`` does not hold float16, float32, float64 or bfloat16 values or is
        not a NumPy (host) array, or ``axis`` is not an int or a tuple of ints.
    ValueError
        If an axis is out of range or repeated.

    See Also
    --------
    Moments : the value returned, and how values merge.
    fastnorm.dask.moments : the same on a Dask array.

    Notes
    -----
    For the ``count`` values ``x_i`` behind each statistic:

    .. math::

        \\mathrm{mean} = \\frac{1}{n} \\sum_i x_i, \\qquad
        m_2 = \\sum_i (x_i - \\mathrm{mean})^2

    so that ``var = m2 / count`` (BatchNorm's biased variance) and
    ``m2 / (count - 1)`` is the unbiased one.

    Examples
    --------
    Per channel of ``(N, C, L)`` data, as BatchNorm's statistics:

    >>> x = np.arange(12, dtype=np.float32).reshape(2, 3, 2)
    >>> m = fastnorm.moments(x)
    >>> m.count, m.shape
    (4, (3,))
    >>> print(m.mean, m.var())
    [3.5 5.5 7.5] [9.25 9.25 9.25]

    Data read in chunks (here along the batch) merges to the statistics of
    the whole:

    >>> chunks = np.split(np.random.default_rng(0).standard_normal((8, 5)), 4)
    >>> total = fastnorm.moments(chunks[0], axis=-1)
    >>> for chunk in chunks[1:]:
    ...     total = total.merge(fastnorm.moments(chunk, axis=-1))
    >>> whole = np.concatenate(chunks)
    >>> np.allclose(total.mean, whole.mean(axis=0)), np.allclose(total.std(), whole.std(axis=0))
    (True, True)
    """
    x = _validate.float_array(x, "x")
    if not isinstance(x, np.ndarray):
        raise TypeError("x must be a NumPy array (a host array)")
    kept = kept_axes(axis, x.ndim)
    shape = tuple(x.shape[a] for a in kept)
    groups = math.prod(shape)
    count = x.size // groups if groups else 0
    if not x.size:
        return Moments(count, np.zeros(shape), np.zeros(shape))
    xc = _core.as_compute(x)
    view = _view(xc, kept)
    if view is None:  # kept axes scattered: move them to the front (a copy)
        xc = np.ascontiguousarray(np.moveaxis(xc, kept, range(len(kept))))
        view = xc.reshape(1, 1, groups, count)
    mean, m2 = backend_module().stats(view)
    return Moments(count, mean.reshape(shape), m2.reshape(shape))
