"""Argument checks and their error messages, in one place.

Every check raises before anything is written, so a failed call leaves
running statistics, ``out`` and the inputs as they were.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Mapping
from typing import Any

import numpy as np

from ._device import is_device_array

FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
_TOO_HARD = getattr(np, "exceptions", np).TooHardError  # np.TooHardError before NumPy 1.25
#: ``np.shares_memory``'s work bound (its stubs accept only the -1 and 0 modes, the function any bound)
_MAX_WORK: Any = 1 << 16

# The checks below start with a fast path for the common, valid case (exact
# builtin types, native dtypes): a tiny tensor's call should cost microseconds.


def native(dtype: np.dtype) -> np.dtype:
    """``dtype`` in native byte order."""
    swapped: np.dtype = dtype.newbyteorder("=")  # typed: NumPy's ``Self`` is Any for Python 3.10
    return swapped


def is_bfloat16(dtype: np.dtype) -> bool:
    """Whether ``dtype`` is ml_dtypes' ``bfloat16`` (computed in float32, as float16 is)."""
    return dtype.kind == "V" and dtype.name == "bfloat16"


def device_argument(obj: object, name: str) -> Any:
    """``obj`` as a Numba device array, or ``TypeError`` when the current backend is not ``cuda``."""
    from .backends import get_backend

    backend = get_backend()
    if backend != "cuda":
        raise TypeError(
            f"{name} is a CUDA device array ({type(obj).__name__}), but the current backend "
            f"{backend!r} runs on the CPU: select the 'cuda' backend "
            f"(fastnorm.set_backend('cuda') or fastnorm.use_backend('cuda')), "
            f"or copy {name} to the host"
        )
    from .backends import cuda_gpu

    return cuda_gpu.as_numba(obj)


def float_array(x: object, name: str) -> np.ndarray:
    """``np.asarray(x)``, which must hold float16, float32 or float64 values (or bfloat16
    values of ``ml_dtypes``).

    A CUDA device array is returned as a Numba device array (no copy) when the
    ``cuda`` backend is selected, and is a ``TypeError`` under a CPU backend.
    """
    if type(x) is np.ndarray and x.dtype in FLOAT_DTYPES:
        return x
    arr: np.ndarray  # or a Numba device array, which has the attributes used of an ndarray
    if is_device_array(x):
        arr = device_argument(x, name)
    else:
        try:
            arr = np.asarray(x)
        except Exception as exc:  # e.g. ragged nested sequences
            raise TypeError(f"{name} must be an array of floats; np.asarray failed: {exc}") from exc
    if arr.dtype.kind != "f" or native(arr.dtype) not in FLOAT_DTYPES:
        if is_bfloat16(arr.dtype) and isinstance(arr, np.ndarray):
            return arr
        raise TypeError(
            f"{name} must have dtype float16, float32 or float64, got {arr.dtype}"
        )
    return arr


def min_ndim(x: np.ndarray, name: str, ndim: int) -> None:
    if x.ndim < ndim:
        raise ValueError(f"{name} must have at least {ndim} dimensions, got shape {x.shape}")


def channel_axis(axis: object, ndim: int) -> int:
    """Normalize the channel ``axis`` to ``0 <= axis < ndim``."""
    if type(axis) is int and -ndim <= axis < ndim:
        return axis % ndim
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"axis must be an int, got {type(axis).__name__}")
    axis = operator.index(axis)
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of bounds for an input with {ndim} dimensions")
    return axis % ndim


def real_scalar(value: object, name: str, *, minimum: float | None = None) -> float:
    """A real number (not bool), optionally ``>= minimum``."""
    if type(value) is float and not math.isnan(value) and (minimum is None or value >= minimum):
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if np.isnan(value) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ValueError(f"{name} must be a number{bound}, got {value}")
    return value


def momentum(value: object, name: str = "momentum") -> float:
    """A running-statistics momentum: a real number in [0, 1] (outside it the running
    statistics are not a weighted average of batches, and they diverge)."""
    value = real_scalar(value, name)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def param_array(value: object, name: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """An optional parameter array of the given ``shape`` with real values."""
    if value is None:
        return None
    if type(value) is np.ndarray and value.shape == shape and value.dtype.kind == "f":
        return value
    arr = device_argument(value, name) if is_device_array(value) else np.asarray(value)
    if is_bfloat16(arr.dtype):
        arr = arr.astype(np.float32)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if tuple(arr.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(arr.shape)}")
    return arr


def param_vector(value: object, name: str, size: int) -> np.ndarray | None:
    """An optional per-channel array of shape ``(size,)`` with real values."""
    return param_array(value, name, (size,))


def running_buffer(value: object, name: str, size: int, *, updated: bool) -> np.ndarray:
    """A running statistic of shape ``(size,)``; a writable float ndarray (or, on the
    ``cuda`` backend, a float device array) if ``updated``."""
    if updated and is_device_array(value):
        device = device_argument(value, name)
        if device.dtype.kind != "f":
            raise TypeError(f"{name} must have a float dtype, got {device.dtype}")
        value = device
    elif updated:
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


def out_array(out: object, shape: tuple[int, ...], dtype: np.dtype, device: bool = False) -> np.ndarray:
    """``out`` must be a writable ndarray with the result's shape and dtype.

    ``device=True`` (the input is a CUDA device array): ``out`` must be a device
    array too; it is returned as given (results are written through a view).
    """
    if device:
        if not is_device_array(out):
            raise TypeError(f"out must be a CUDA device array (as x is one), got {type(out).__name__}")
        arr = device_argument(out, "out")
        if tuple(arr.shape) != tuple(shape):
            raise ValueError(f"out must have shape {tuple(shape)}, got {tuple(arr.shape)}")
        if native(arr.dtype) != native(dtype):
            raise TypeError(f"out must have dtype {native(dtype)} (the input's), got {arr.dtype}")
        return out  # type: ignore[return-value]
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != shape:
        raise ValueError(f"out must have shape {shape}, got {out.shape}")
    if native(out.dtype) != native(dtype):
        raise TypeError(f"out must have dtype {native(dtype)} (the input's), got {out.dtype}")
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    return out


def may_share_memory(a: object, b: object) -> bool:
    """``np.may_share_memory`` for two ndarrays or two CUDA device arrays (False for a mix)."""
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return bool(np.may_share_memory(a, b))
    if is_device_array(a) and is_device_array(b):
        from .backends import cuda_gpu

        return cuda_gpu.shares_memory(a, b)
    return False


def _share_memory(a: object, b: object) -> bool:
    """Whether two arrays share memory: exactly for ndarrays (``np.shares_memory``, taken as
    shared where the question is too hard to settle quickly), by byte ranges for device arrays."""
    if not may_share_memory(a, b):
        return False
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        try:
            return bool(np.shares_memory(a, b, max_work=_MAX_WORK))
        except _TOO_HARD:
            return True
    return True


def _copy(a: Any) -> Any:
    """A copy of an ndarray or a device array (on the device)."""
    if isinstance(a, np.ndarray):
        return a.copy()
    from .backends import cuda_gpu

    return cuda_gpu.astype(a, a.dtype, tuple(a.shape))


def apart_from_out(
    out: Any, written: Mapping[str, Any], read: Mapping[str, Any]
) -> dict[str, Any]:
    """Make a call's arrays safe to use beside ``out``, in one place for every family.

    ``written`` maps names to the arrays the call updates in place besides
    ``out`` (running statistics in training): no two of these and ``out`` may
    share memory, since the call would write both (``ValueError`` naming them).
    ``read`` maps names to arrays that are only read (``weight``, ``bias``,
    running statistics that normalize): they are returned as given, or copied
    where they may share memory with ``out`` (their memory bounds overlap:
    copying one small array needlessly costs less than the exact test), so that
    the result is the one of reading every input before writing anything (as
    NumPy's ufuncs do).  The
    input ``x`` itself is not among them: a partial overlap of ``x`` and ``out``
    is resolved by computing into a separate buffer.  ``None`` entries are skipped.
    """
    targets = [("out", out)] + [(name, a) for name, a in written.items()]
    targets = [(name, a) for name, a in targets if a is not None]
    for i, (name_a, a) in enumerate(targets):
        for name_b, b in targets[i + 1:]:
            if _share_memory(a, b):
                raise ValueError(
                    f"{name_a} and {name_b} must not share memory: this call writes both"
                )
    safe = dict(read)
    if out is not None:
        for name, a in read.items():
            if a is not None and may_share_memory(a, out):
                safe[name] = _copy(a)
    return safe


def same_shape(dy: np.ndarray, shape: tuple[int, ...], name: str = "dy") -> None:
    if dy.shape != shape:
        raise ValueError(f"{name} must have the shape of the forward input {shape}, got {dy.shape}")


#: the names ``activation=`` takes
ACTIVATION_NAMES = ("relu", "leaky_relu", "gelu", "gelu_tanh", "silu")


def activation(value: object) -> str | None:
    """``activation=``: None or one of :data:`ACTIVATION_NAMES`."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"activation must be None or a str, got {type(value).__name__}")
    if value not in ACTIVATION_NAMES:
        raise ValueError(
            f"activation must be None or one of {', '.join(map(repr, ACTIVATION_NAMES))}, got {value!r}"
        )
    return value


def like_input(value: object, name: str, x: np.ndarray) -> np.ndarray | None:
    """An optional float array of ``x``'s shape (``shortcut=``, ``residual=``)."""
    if value is None:
        return None
    arr = float_array(value, name)
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array on a CPU backend")
    if arr.shape != x.shape:
        raise ValueError(f"{name} must have the shape of x {x.shape}, got {arr.shape}")
    return arr
