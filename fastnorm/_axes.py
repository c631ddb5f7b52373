"""Where LayerNorm and RMSNorm reduce: any set of axes, mapped onto the rows view.

The rows view ``(R, M)`` needs the reduced axes last.  When they are (PyTorch's
``normalized_shape``), the view is a reshape.  Otherwise the input is read
through a transposition that puts them last, made C-contiguous once (the one
copy), and the result is that array's transposition back: an array of the
input's shape whose memory is laid out with the reduced axes last.  An input
already laid out so (a previous such result) needs no copy.

The parameters span the ``feature`` axes, a subset of the reduced ones (all of
them by default); over the others they are broadcast, which the rows kernels
see as an ``(M,)`` parameter.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._device import is_device_array


@dataclass(frozen=True, slots=True)
class RowAxes:
    """A rows-family call's axes on an input of ``ndim`` dimensions.

    ``reduced``: the reduced axes, increasing; ``feature``: the parameters' axes, a subset
    of them; ``perm``: the transposition putting the reduced axes last (None when they
    already are); ``fold``: for parameters that do not span every reduced axis, the
    positions (within the reduced shape) they are broadcast along, else None.
    """

    reduced: tuple[int, ...]
    feature: tuple[int, ...]
    perm: tuple[int, ...] | None
    fold: tuple[int, ...] | None

    @property
    def inverse(self) -> tuple[int, ...] | None:
        """The transposition undoing :attr:`perm`."""
        return None if self.perm is None else tuple(int(i) for i in np.argsort(self.perm))

    def param_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape[a] for a in self.feature)

    def reduced_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape[a] for a in self.reduced)

    def expand(self, param: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
        """``param`` (:meth:`param_shape`) broadcast to the reduced shape, as a C-contiguous
        ``(M,)`` array (``param`` itself, flattened, when it spans every reduced axis)."""
        if param is None:
            return None
        if self.fold is None:
            return param if param.ndim == 1 else param.reshape(-1)
        red = self.reduced_shape(shape)
        kept = [1 if i in self.fold else d for i, d in enumerate(red)]
        return np.ascontiguousarray(np.broadcast_to(param.reshape(kept), red)).reshape(-1)

    def fold_grad(self, grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """An ``(M,)`` gradient of the expanded parameter, summed back to :meth:`param_shape`."""
        if self.fold is None:
            return grad
        summed: np.ndarray = grad.reshape(self.reduced_shape(shape)).sum(axis=self.fold)
        return summed.reshape(-1)


def _axes(value: object, ndim: int, name: str) -> tuple[int, ...]:
    """``value`` (an int or a sequence of ints) as increasing non-negative axes of ``ndim``."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        items: tuple[object, ...] = (value,)
    else:
        try:
            items = tuple(value)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError(f"{name} must be an int or a sequence of ints, got {value!r}") from None
        if not items:
            raise ValueError(f"{name} must name at least one axis")
    axes = []
    for a in items:
        if not isinstance(a, numbers.Integral) or isinstance(a, bool):
            raise TypeError(f"{name} must hold ints, got {value!r}")
        if not -ndim <= int(a) < ndim:
            raise ValueError(f"{name} {int(a)} is out of range for an input of {ndim} dimensions")
        axes.append(int(a) % ndim)
    if len(set(axes)) != len(axes):
        raise ValueError(f"{name} names an axis twice: {value!r}")
    return tuple(sorted(axes))


def resolve(shape: tuple[int, ...], normalized_shape: tuple[int, ...] | None, axis: object,
            feature_axis: object) -> RowAxes:
    """The axes of a LayerNorm/RMSNorm call on an input of ``shape``.

    ``axis`` None: the trailing ``len(normalized_shape)`` axes.  ``normalized_shape``
    (None only with ``axis``) must equal the input's shape on the reduced axes.
    ``feature_axis`` None: the reduced axes.
    """
    ndim = len(shape)
    if axis is None:
        if normalized_shape is None:
            raise ValueError("normalized_shape is required when axis is not given")
        k = len(normalized_shape)
        if ndim < k or shape[ndim - k:] != normalized_shape:
            raise ValueError(f"normalized_shape {normalized_shape} must equal the trailing "
                             f"dimensions of x, got x.shape {shape}")
        reduced = tuple(range(ndim - k, ndim))
    else:
        reduced = _axes(axis, ndim, "axis")
        if normalized_shape is not None and tuple(shape[a] for a in reduced) != normalized_shape:
            raise ValueError(f"normalized_shape {normalized_shape} must equal x's dimensions on "
                             f"axis {reduced}, got {tuple(shape[a] for a in reduced)}")
    if feature_axis is None:
        feature = reduced
    else:
        feature = _axes(feature_axis, ndim, "feature_axis")
        if not set(feature) <= set(reduced):
            raise ValueError(f"feature_axis {feature} must be among the reduced axes {reduced} "
                             "(per-channel parameters outside them: instance_norm, group_norm)")
    perm = None
    if reduced != tuple(range(ndim - len(reduced), ndim)):
        perm = tuple(a for a in range(ndim) if a not in reduced) + reduced
    fold = None
    if feature != reduced:
        fold = tuple(i for i, a in enumerate(reduced) if a not in feature)
    return RowAxes(reduced, feature, perm, fold)


def layer_axes(normalized_shape: tuple[int, ...], axis: object,
               feature_axis: object) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None, tuple[int, ...]]:
    """A layer's ``(axis, feature_axis, param_shape)``, checked without an input.

    ``axis`` (one entry per dimension of ``normalized_shape``, in the same order once
    sorted) and ``feature_axis`` (a subset of ``axis``) must be all non-negative or all
    negative, so that they are comparable before the input's ``ndim`` is known.
    """
    if axis is None and feature_axis is None:
        return None, None, normalized_shape
    k = len(normalized_shape)
    red = tuple(range(-k, 0)) if axis is None else _layer_list(axis, "axis")
    if len(red) != k:
        raise ValueError(f"axis {axis!r} must name one axis per dimension of normalized_shape "
                         f"{normalized_shape}")
    feat = red if feature_axis is None else _layer_list(feature_axis, "feature_axis")
    if (min(red) < 0) != (max(red) < 0) or (min(feat) < 0) != (min(red) < 0) or \
            (max(feat) < 0) != (max(red) < 0):
        raise ValueError("a layer's axis and feature_axis must be all non-negative or all negative")
    if not set(feat) <= set(red):
        raise ValueError(f"feature_axis {feat} must be among axis {red}")
    param_shape = tuple(normalized_shape[red.index(a)] for a in feat)
    return (None if axis is None else red), (None if feature_axis is None else feat), param_shape


def _layer_list(value: object, name: str) -> tuple[int, ...]:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return (int(value),)
    try:
        items: tuple[Any, ...] = tuple(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be an int or a sequence of ints, got {value!r}") from None
    if not items or not all(isinstance(a, numbers.Integral) and not isinstance(a, bool) for a in items):
        raise TypeError(f"{name} must be an int or a non-empty sequence of ints, got {value!r}")
    out = tuple(sorted(int(a) for a in items))
    if len(set(out)) != len(out):
        raise ValueError(f"{name} names an axis twice: {value!r}")
    return out


def as_mask(mask: object, shape: tuple[int, ...], name: str = "mask") -> np.ndarray:
    """``mask`` as a bool array broadcast to ``shape`` (a read-only view where it broadcasts)."""
    if isinstance(mask, np.ndarray) and mask.dtype == np.bool_ and mask.shape == shape:
        return mask
    if is_device_array(mask):
        raise TypeError(f"{name} must be a NumPy array: masks run on the CPU backends")
    arr = np.asarray(mask)
    if arr.dtype != np.bool_:
        raise TypeError(f"{name} must be a bool array (True: the value counts), got dtype {arr.dtype}")
    try:
        return np.broadcast_to(arr, shape)
    except ValueError:
        raise ValueError(f"{name} of shape {arr.shape} does not broadcast to x's shape {shape}") from None
