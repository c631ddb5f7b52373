"""Argument checks and their error messages, in one place.

Every check raises before anything is written, so a failed call leaves
running statistics, ``out`` and the inputs as they were.
"""

from __future__ import annotations

import numbers
import operator

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def native(dtype: np.dtype) -> np.dtype:
    """``dtype`` in native byte order."""
    return dtype.newbyteorder("=")


def float_array(x: object, name: str) -> np.ndarray:
    """``np.asarray(x)``, which must hold float16, float32 or float64 values."""
    try:
        arr = np.asarray(x)
    except Exception as exc:  # e.g. ragged nested sequences
        raise TypeError(f"{name} must be an array of floats; np.asarray failed: {exc}") from exc
    if arr.dtype.kind != "f" or native(arr.dtype) not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must have dtype float16, float32 or float64, got {arr.dtype}"
        )
    return arr


def min_ndim(x: np.ndarray, name: str, ndim: int) -> None:
    if x.ndim < ndim:
        raise ValueError(f"{name} must have at least {ndim} dimensions, got shape {x.shape}")


def channel_axis(axis: object, ndim: int) -> int:
    """Normalize the channel ``axis`` to ``0 <= axis < ndim``."""
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"axis must be an int, got {type(axis).__name__}")
    axis = operator.index(axis)
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of bounds for an input with {ndim} dimensions")
    return axis % ndim


def real_scalar(value: object, name: str, *, minimum: float | None = None) -> float:
    """A real number (not bool), optionally ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if np.isnan(value) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ValueError(f"{name} must be a number{bound}, got {value}")
    return value


def param_array(value: object, name: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """An optional parameter array of the given ``shape`` with real values."""
    if value is None:
        return None
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    return arr


def param_vector(value: object, name: str, size: int) -> np.ndarray | None:
    """An optional per-channel array of shape ``(size,)`` with real values."""
    return param_array(value, name, (size,))


def running_buffer(value: object, name: str, size: int, *, updated: bool) -> np.ndarray:
    """A running statistic of shape ``(size,)``; a writable float ndarray if ``updated``."""
    if updated:
        if not isinstance(value, np.ndarray):
            raise TypeError(
                f"{name} is updated in place when training, so it must be a numpy.ndarray, "
                f"got {type(value).__name__}"
            )
        if value.dtype.kind != "f":
            raise TypeError(f"{name} must have a float dtype, got {value.dtype}")
        if not value.flags.writeable:
            raise ValueError(f"{name} is updated in place when training, but it is read-only")
    arr = param_vector(value, name, size)
    assert arr is not None
    return arr


def out_array(out: object, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """``out`` must be a writable ndarray with the result's shape and dtype."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != shape:
        raise ValueError(f"out must have shape {shape}, got {out.shape}")
    if native(out.dtype) != native(dtype):
        raise TypeError(f"out must have dtype {native(dtype)} (the input's), got {out.dtype}")
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    return out


def same_shape(dy: np.ndarray, shape: tuple[int, ...], name: str = "dy") -> None:
    if dy.shape != shape:
        raise ValueError(f"{name} must have the shape of the forward input {shape}, got {dy.shape}")
