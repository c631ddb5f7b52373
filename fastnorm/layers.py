"""Train/eval state objects with PyTorch's names and state; no math of their own."""

from __future__ import annotations

import copy
import os
import threading
import warnings
from collections.abc import Mapping
from types import ModuleType
from typing import Any, NamedTuple, TypeVar, cast, overload

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from . import _core, _inference, _mpi, _validate
from ._axes import layer_axes
from ._docs import fill_doc
from .backends import backend_module, get_backend
from ._device import is_device_array
from .functional import (
    _batch_norm,
    _Fuse,
    _group_norm,
    _instance_norm,
    _normalization_backward,
    _plain_calls,
    _Renorm,
    _rows_norm,
    _rows_plain,
    normalized_shape_tuple,
)

__all__ = [
    "BatchNorm",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "SyncBatchNorm",
    "InstanceNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "GroupNorm",
    "LayerNorm",
    "RMSNorm",
]


# A lock held by another thread when the process forks stays held in the child, where that
# thread does not exist: layers make their lock anew in a process forked since it was made.
_forks = 0


def _count_fork() -> None:
    global _forks
    _forks += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_count_fork)


def _param_dtype(dtype: DTypeLike) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in _validate.FLOAT_DTYPES:
        raise TypeError(f"dtype must be float16, float32 or float64, got {dtype}")
    return dtype


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be positive, got {value}")
    return int(value)


def _cuda() -> ModuleType:
    return backend_module("cuda")


def _expand0(a: np.ndarray) -> np.ndarray:
    """``a[None]`` for a NumPy or a device array."""
    return _cuda().expand0(a) if is_device_array(a) else a[None]


def _like_param(grad: Any, param: Any) -> Any:
    """A float64 gradient in ``param``'s shape and dtype (on the gradient's side)."""
    if is_device_array(grad):
        return _cuda().astype(grad, param.dtype, tuple(param.shape))
    return grad.reshape(param.shape).astype(param.dtype)


def _assign(array: Any, value: Any) -> None:
    """``array[...] = value`` for a NumPy or a device array."""
    if is_device_array(array):
        _cuda().fill(array, value)
    else:
        array[...] = value


def _renorm_clipping(value: Mapping[str, float] | None) -> dict[str, float]:
    """Keras's ``renorm_clipping``: ``rmax``, ``rmin``, ``dmax``; absent (or None) ones are
    inf, 0 and inf, as in Keras."""
    value = {k: v for k, v in dict(value or {}).items() if v is not None}
    unknown = set(value) - {"rmax", "rmin", "dmax"}
    if unknown:
        raise ValueError(f"renorm_clipping takes the keys rmax, rmin and dmax, got {sorted(unknown)}")
    rmax = _validate.real_scalar(value.get("rmax", np.inf), "renorm_clipping['rmax']", minimum=1.0)
    rmin = _validate.real_scalar(value.get("rmin", 0.0), "renorm_clipping['rmin']", minimum=0.0)
    dmax = _validate.real_scalar(value.get("dmax", np.inf), "renorm_clipping['dmax']", minimum=0.0)
    if rmin > 1.0:
        raise ValueError(f"renorm_clipping['rmin'] must be at most 1, got {rmin}")
    return {"rmax": rmax, "rmin": rmin, "dmax": dmax}


def _axis(axis: object) -> int:
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"axis must be an int, got {axis!r}")
    return int(axis)


#: a layer class, for the methods that return ``self``
_L = TypeVar("_L", bound="_Layer")


class _Layer:
    """Shared machinery: train/eval, backward bookkeeping, state dicts."""

    weight: np.ndarray | None
    bias: np.ndarray | None
    _saved: _core.Saved | None
    #: keep each forward's input and statistics for :meth:`backward` (see
    #: :func:`fastnorm.inference_mode`, which overrides it to False in its context)
    retain_for_backward: bool = True
    _activation: str | None = None
    _negative_slope: float = 0.01

    @property
    def activation(self) -> str | None:
        """The activation applied in the normalization's pass over memory (None, ``"relu"``,
        ``"leaky_relu"``, ``"gelu"``, ``"gelu_tanh"``, ``"silu"``); settable."""
        return self._activation

    @activation.setter
    def activation(self, value: str | None) -> None:
        self._activation = _validate.activation(value)

    @property
    def negative_slope(self) -> float:
        """The slope of ``"leaky_relu"`` for negative values; settable."""
        return self._negative_slope

    @negative_slope.setter
    def negative_slope(self, value: float) -> None:
        self._negative_slope = _validate.real_scalar(value, "negative_slope")

    def __init__(self, activation: str | None = None, negative_slope: float = 0.01) -> None:
        self.training = True
        self._saved = None
        self._dropped = False  # the last forward kept nothing (inference)
        self._unbatched = False
        self.grad_weight: np.ndarray | None = None
        self.grad_bias: np.ndarray | None = None
        self.activation = activation
        self.negative_slope = negative_slope
        self._new_lock()

    def _fuse(self, x: np.ndarray, shortcut: ArrayLike | None) -> _Fuse | None:
        """This call's epilogue options: the layer's activation and the call's shortcut."""
        return _Fuse.make(x, self.activation, self.negative_slope, shortcut)

    def _rows_step(self, x: ArrayLike, out: np.ndarray | None, shortcut: ArrayLike | None,
                   residual: ArrayLike | None, center: bool,
                   mask: ArrayLike | None = None) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """A LayerNorm (``center``) or RMSNorm forward."""
        rows = cast("LayerNorm | RMSNorm", self)
        if out is None and shortcut is None and residual is None and mask is None \
                and self.activation is None and rows.axis is None and rows.feature_axis is None:
            keeps = self._keeps
            if not keeps:  # nothing to keep: the compiled whole call, where it takes the call
                whole = _plain_calls(get_backend())[0]
                if whole is not None:
                    served = whole(x, rows.normalized_shape, self.weight,
                                   getattr(self, "bias", None), rows.eps, center, _core.SMALL_SIZE)
                    if served is not None:
                        return self._remember(served, None)
            plain = _rows_plain(x, rows.normalized_shape, self.weight, getattr(self, "bias", None),
                                rows.eps, center, keeps)
            if plain is not None:
                return self._remember(*plain)
        fuse = None
        if shortcut is not None or residual is not None or self.activation is not None:
            x = _validate.float_array(x, "x")  # else _rows_norm validates it
            fuse = self._fuse(x, shortcut)
            residual = _validate.like_input(residual, "residual", x)
        p = self._placed(x)
        y, saved = _rows_norm(x, rows.normalized_shape, p["weight"], p.get("bias"), rows.eps, center,
                              out, save=self._keeps, fuse=fuse, residual=residual, axis=rows.axis,
                              feature_axis=rows.feature_axis, mask=mask)
        self._adopt(p)
        return self._remember(y, saved, out=out if residual is None else None)

    def _extra_repr(self) -> str:
        parts = []
        if isinstance(self, BatchNorm) and self.virtual_batch_size is not None:
            parts.append(f", virtual_batch_size={self.virtual_batch_size}")
        if isinstance(self, BatchNorm) and self.renorm:
            parts.append(f", renorm=True, renorm_clipping={self.renorm_clipping}, "
                         f"renorm_momentum={self.renorm_momentum}")
        return "".join(parts)

    def _axes_repr(self) -> str:
        parts = ""
        if isinstance(self, (LayerNorm, RMSNorm)) and self.axis is not None:
            parts += f", axis={self.axis}"
        if isinstance(self, (LayerNorm, RMSNorm)) and self.feature_axis is not None:
            parts += f", feature_axis={self.feature_axis}"
        return parts

    def _activation_repr(self) -> str:
        if self.activation is None:
            return ""
        slope = f", negative_slope={self.negative_slope}" if self.activation == "leaky_relu" else ""
        return f", activation={self.activation!r}{slope}"

    def _new_lock(self) -> None:
        # held while the layer's state changes (a training step's running statistics and
        # batch count, a state dict loading), so that calls from several threads each
        # make a whole step
        self._lock_ = threading.Lock()
        self._lock_forks = _forks

    @property
    def _lock(self) -> threading.Lock:
        if self._lock_forks != _forks:  # forked since: the lock may be held by a thread gone
            self._new_lock()
        return self._lock_

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock_"]  # a lock is not copied or pickled: the copy gets its own
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._new_lock()

    def train(self: _L, mode: bool = True) -> _L:
        """Set training mode (``mode=False`` is :meth:`eval`); returns ``self``.

        In training mode BatchNorm and InstanceNorm normalize with the batch's
        statistics and update the running ones; in evaluation mode they
        normalize with the running statistics (where they track them).
        GroupNorm, LayerNorm and RMSNorm compute the same in both modes.

        Parameters
        ----------
        mode : bool, default True
            True for training mode, False for evaluation mode.

        Returns
        -------
        layer
            ``self`` (of its own type), for chaining.

        Examples
        --------
        >>> layer = fastnorm.BatchNorm1d(3).eval()
        >>> layer.training
        False
        >>> layer.train().training
        True
        """
        self.training = bool(mode)
        return self

    def eval(self: _L) -> _L:
        """Set evaluation mode; returns ``self``.

        The same as ``train(False)``.

        Returns
        -------
        layer
            ``self`` (of its own type), for chaining.

        Examples
        --------
        >>> layer = fastnorm.BatchNorm1d(3)
        >>> layer.eval() is layer, layer.training
        (True, False)
        """
        return self.train(False)

    def __call__(self, x: ArrayLike, **kwargs: Any) -> Any:
        """Normalize ``x``: the same as :meth:`forward`, as calling a PyTorch module.

        Parameters
        ----------
        x : array_like
            The input, as :meth:`forward` takes it.
        **kwargs
            The keyword arguments of the layer's :meth:`forward` (``out``,
            ``shortcut``, and ``residual`` or ``mask`` where it takes them).

        Returns
        -------
        ndarray or tuple
            What :meth:`forward` returns.

        Examples
        --------
        >>> layer = fastnorm.LayerNorm(3)
        >>> x = np.array([[1.0, 2.0, 3.0]], np.float32)
        >>> np.array_equal(layer(x), layer.forward(x))
        True
        """
        return self.forward(x, **kwargs)

    def forward(self, x: ArrayLike, *, out: np.ndarray | None = None,
                shortcut: ArrayLike | None = None) -> np.ndarray:  # pragma: no cover
        """Normalize ``x``; each layer class defines it.

        Parameters
        ----------
        x : array_like
            The input.
        out : ndarray, optional
            Where to write the result.
        shortcut : array_like, optional
            Added before the activation.

        Returns
        -------
        ndarray
            The normalized input.
        """
        raise NotImplementedError

    @property
    def _keeps(self) -> bool:
        """Whether this forward keeps what a backward needs."""
        return self.retain_for_backward and not _inference.is_inference_mode_enabled()

    _ARRAYS = ("weight", "bias", "running_mean", "running_var")
    _on_device = False  # where the arrays above live (moved by forward to where its input lives)

    def _placed(self, x: Any) -> dict[str, Any]:
        """The layer's arrays where ``x`` lives: on the device for a device ``x``, else on the host.

        Arrays on the other side are copied; :meth:`_adopt` keeps the copies
        once the call has succeeded (a failed call changes nothing).
        """
        on_device = is_device_array(x)
        if on_device == self._on_device:
            return self.__dict__
        placed: dict[str, Any] = {"_on_device": on_device}
        for name in self._ARRAYS:
            value = getattr(self, name, None)
            if value is not None and is_device_array(value) != on_device:
                value = _cuda().to_device(value) if on_device else _cuda().to_host(value)
            placed[name] = value
        return placed

    def _adopt(self, placed: dict[str, Any]) -> None:
        if placed is not self.__dict__:
            for name, value in placed.items():
                if value is not None:
                    setattr(self, name, value)

    @overload
    def _remember(self, y: np.ndarray, saved: _core.Saved | None, unbatched: bool = False,
                  out: np.ndarray | None = None) -> np.ndarray: ...
    @overload
    def _remember(self, y: tuple[np.ndarray, np.ndarray], saved: _core.Saved | None,
                  unbatched: bool = False,
                  out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray] | np.ndarray: ...

    def _remember(self, y: np.ndarray | tuple[np.ndarray, np.ndarray], saved: _core.Saved | None,
                  unbatched: bool = False,
                  out: np.ndarray | None = None) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        self._saved = saved
        self._dropped = saved is None
        self._unbatched = unbatched
        if out is not None:
            return out
        return y[0] if unbatched else y

    def backward(self, dy: ArrayLike, dh: ArrayLike | None = None) -> Any:
        """Gradient with respect to the input of the most recent :meth:`forward`.

        Sets ``grad_weight`` and ``grad_bias`` (``None`` when the layer has no
        such parameter) in the parameters' dtype and shape.  The gradient flows
        through the layer's activation.  Works after a forward in training or
        evaluation mode (with running statistics, the gradient does not flow
        through them).

        The forward input and the parameters are kept by reference (no copy), as
        PyTorch saves them: modifying them in place between forward and backward
        gives wrong gradients.  A layer called from several threads differentiates
        the most recent forward of any of them.

        Parameters
        ----------
        dy : array_like
            The gradient of the output, float, of the forward input's shape.
        dh : array_like, optional
            After a forward with a ``residual`` (LayerNorm, RMSNorm): the
            gradient of its ``h``, of the input's shape.  None (the default):
            zero.

        Returns
        -------
        dx : ndarray
            The gradient of the input, of its shape and dtype (after a forward
            with ``residual``, the gradient of both ``x`` and ``residual``).
        grad_shortcut : ndarray
            Only after a forward with a ``shortcut``: the call returns ``(dx,
            grad_shortcut)``, the gradient of the shortcut, of its shape.

        Raises
        ------
        ValueError
            If no forward came before, the last forward ran in inference mode
            (:func:`fastnorm.inference_mode` or ``retain_for_backward=False``)
            and kept nothing, ``dy`` (or ``dh``) does not have the forward
            input's shape, or ``dh`` is given after a forward without
            ``residual``.
        TypeError
            If ``dy`` or ``dh`` does not hold float values.

        See Also
        --------
        batch_norm_backward, layer_norm_backward : the functional gradients.

        Examples
        --------
        >>> layer = fastnorm.BatchNorm1d(2)
        >>> x = np.array([[0.0, 1.0], [2.0, 5.0], [4.0, 9.0]], np.float32)
        >>> y = layer(x)
        >>> dx = layer.backward(np.ones_like(x))
        >>> dx.shape, np.allclose(dx, 0, atol=1e-6)
        ((3, 2), True)
        >>> print(layer.grad_bias, layer.grad_weight.dtype)
        [3. 3.] float32
        """
        if self._saved is None:
            if self._dropped:
                raise ValueError(
                    "backward needs what the last forward kept, and it ran in inference mode "
                    "(fastnorm.inference_mode() or retain_for_backward=False), which keeps nothing"
                )
            raise ValueError("backward called before forward: there is no forward pass to differentiate")
        if self._unbatched:
            dy = _expand0(_validate.float_array(dy, "dy"))
            if dh is not None:
                dh = _expand0(_validate.float_array(dh, "dh"))
        dx, grad_weight, grad_bias, grad_shortcut = _normalization_backward(self._saved, dy, dh)
        self.grad_weight = None
        self.grad_bias = None
        if self.weight is not None:
            self.grad_weight = _like_param(grad_weight, self.weight)
        if self.bias is not None:
            self.grad_bias = _like_param(grad_bias, self.bias)
        if self._unbatched:
            dx = dx[0]
            grad_shortcut = None if grad_shortcut is None else grad_shortcut[0]
        epilogue = getattr(self._saved, "epilogue", None)
        if epilogue is not None and epilogue.shortcut is not None:
            return dx, grad_shortcut
        return dx

    # -- state -----------------------------------------------------------------

    def _state_names(self) -> tuple[str, ...]:
        return ("weight", "bias")

    def state_dict(self, prefix: str = "") -> dict[str, np.ndarray]:
        """Copies of the parameters and buffers, keyed like PyTorch's ``state_dict``.

        Always NumPy arrays, also for a layer whose arrays live on a CUDA device;
        ``num_batches_tracked`` is an int64 array of shape ``()``.  They load into
        the matching PyTorch module with
        ``module.load_state_dict({k: torch.as_tensor(v) for k, v in layer.state_dict().items()})``.

        Parameters
        ----------
        prefix : str, default ""
            Put before every key (``"layer1.0.bn1."``: the keys of this layer in a
            whole model's state dict).

        Returns
        -------
        dict of str to ndarray
            ``weight`` and ``bias`` (where the layer has them), ``running_mean``,
            ``running_var`` and ``num_batches_tracked`` (where it tracks running
            statistics), ``renorm_mean`` and ``renorm_std`` (BatchNorm with
            ``renorm=True``); copies, in the layer's dtype.

        See Also
        --------
        load_state_dict : the converse.

        Examples
        --------
        >>> layer = fastnorm.BatchNorm1d(2)
        >>> for key, value in layer.state_dict().items():
        ...     print(key, value.shape, value.dtype)
        weight (2,) float32
        bias (2,) float32
        running_mean (2,) float32
        running_var (2,) float32
        num_batches_tracked () int64
        >>> sorted(fastnorm.LayerNorm(4).state_dict(prefix="norm."))
        ['norm.bias', 'norm.weight']
        """
        state = {}
        for name in self._state_names():
            value = getattr(self, name)
            if value is None:
                continue
            if name == "num_batches_tracked":
                state[prefix + name] = np.array(value, dtype=np.int64)
            else:
                state[prefix + name] = _cuda().to_host(value) if is_device_array(value) else value.copy()
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True,
                        prefix: str = "") -> IncompatibleKeys:
        """Load a state dict (NumPy arrays of any float dtype, PyTorch tensors of any float
        dtype, bfloat16 included, anything ``np.asarray`` takes).

        Values are copied into the layer's existing arrays, as PyTorch does.  Shapes
        must match the layer's.  A missing ``num_batches_tracked`` (checkpoints of
        older PyTorch) keeps the layer's count, as PyTorch does; present, it must be a
        non-negative whole number of shape ``()`` or ``(1,)``.  Errors name the key.
        Nothing is changed unless every entry is valid; the load is atomic with respect
        to training steps of other threads.

        Parameters
        ----------
        state_dict : mapping
            This layer's entries, or a whole model's with ``prefix``.
        strict : bool, default True
            Missing or unexpected keys are a ``ValueError``; False: they are
            returned, and the keys present are loaded.
        prefix : str, default ""
            The layer's entries are the keys that start with ``prefix``
            (``"layer1.0.bn1."``); other keys are ignored.

        Returns
        -------
        IncompatibleKeys
            ``(missing_keys, unexpected_keys)``, full keys (prefix included), sorted,
            as PyTorch's.

        Raises
        ------
        TypeError
            If ``state_dict`` is not a mapping or ``prefix`` not a str, or an
            entry cannot be read as an array of real numbers.
        ValueError
            If ``strict`` and keys are missing or unexpected, an entry's shape
            differs from the layer's, or ``num_batches_tracked`` is not a
            non-negative whole number of shape ``()`` or ``(1,)``.

        See Also
        --------
        state_dict : the converse.
        fastnorm.from_torch : a new layer from a PyTorch module.

        Examples
        --------
        >>> trained = fastnorm.BatchNorm1d(2)
        >>> _ = trained(np.array([[0.0, 1.0], [2.0, 5.0]], np.float32))
        >>> layer = fastnorm.BatchNorm1d(2)
        >>> layer.load_state_dict(trained.state_dict())
        IncompatibleKeys(missing_keys=[], unexpected_keys=[])
        >>> print(layer.running_mean, layer.num_batches_tracked)
        [0.1 0.3] 1
        >>> layer.load_state_dict({"weight": np.ones(2), "extra": 0}, strict=False)
        IncompatibleKeys(missing_keys=['bias', 'running_mean', 'running_var'], unexpected_keys=['extra'])
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
        with self._lock:
            return self._load_state_dict(state_dict, strict, prefix)

    def _load_state_dict(self, state_dict: Mapping[str, Any], strict: bool, prefix: str = "") -> IncompatibleKeys:
        expected = {name for name in self._state_names() if getattr(self, name) is not None}
        mine = {key[len(prefix):]: key for key in state_dict
                if isinstance(key, str) and key.startswith(prefix)}
        missing = sorted(prefix + name for name in expected - set(mine)
                         if name != "num_batches_tracked")
        unexpected = sorted(mine[name] for name in set(mine) - expected)
        if strict and (missing or unexpected):
            raise ValueError(
                f"state_dict keys do not match: missing {missing}, unexpected {unexpected}"
            )
        updates: dict[str, Any] = {}
        for name in expected & set(mine):
            key = mine[name]
            value = _state_value(state_dict[key], key)
            current = getattr(self, name)
            if name == "num_batches_tracked":
                updates[name] = _batch_count(value, key)
                continue
            if value.dtype.kind not in "fiu":
                raise TypeError(f"state_dict[{key!r}] must hold real numbers, got dtype {value.dtype}")
            if value.shape != tuple(current.shape):
                raise ValueError(
                    f"state_dict[{key!r}] has shape {value.shape}, expected {tuple(current.shape)}"
                )
            updates[name] = value.astype(current.dtype, copy=True)
        for name, value in updates.items():  # in place, as PyTorch copies into its tensors
            if name == "num_batches_tracked":
                self.num_batches_tracked = value
            else:
                _assign(getattr(self, name), value)
        return IncompatibleKeys(missing, unexpected)


class IncompatibleKeys(NamedTuple):
    """What :meth:`load_state_dict` did not match: full keys, sorted.

    A named tuple, as PyTorch's ``load_state_dict`` returns.

    Attributes
    ----------
    missing_keys : list of str
        The layer's keys the state dict lacks (prefix included).
    unexpected_keys : list of str
        The state dict's keys (under the prefix) that the layer does not have.
    """

    missing_keys: list[str]
    unexpected_keys: list[str]


def _state_value(value: Any, key: str) -> np.ndarray:
    """A state dict entry as a NumPy array: tensors detached and moved to the host, bfloat16
    (PyTorch's, or ml_dtypes' in NumPy) widened to float32; errors name the key."""
    try:
        value = _to_numpy(value)
        array = np.asarray(value)
    except Exception as error:
        raise TypeError(f"state_dict[{key!r}] cannot be read as an array: {error}") from error
    if array.dtype.kind == "V" and array.dtype.name == "bfloat16":  # ml_dtypes
        array = array.astype(np.float32)
    return array


def _batch_count(value: np.ndarray, key: str) -> int:
    """A state dict's ``num_batches_tracked``: a non-negative whole number (any int or float
    dtype holding one), of shape ``()`` or ``(1,)``."""
    what = f"state_dict[{key!r}] must be a non-negative integer count"
    if value.shape not in ((), (1,)):
        raise ValueError(f"{what} (shape () or (1,)), got shape {value.shape}")
    if value.dtype.kind not in "iuf":  # bool included: True is no count of batches
        raise TypeError(f"{what}, got dtype {value.dtype}")
    count = value.reshape(())[()]
    if value.dtype.kind == "f" and not (np.isfinite(count) and count == np.floor(count)):
        raise ValueError(f"{what}, got {count}")
    if count < 0:
        raise ValueError(f"{what}, got {count}")
    return int(count)


def _to_numpy(value: Any) -> Any:
    """Detach framework tensors (e.g. PyTorch) so ``np.asarray`` sees plain memory; PyTorch's
    bfloat16, which NumPy has no type for, is widened to float32 first."""
    detach = getattr(value, "detach", None)
    if callable(detach):
        value = detach()
        cpu = getattr(value, "cpu", None)
        if callable(cpu):
            value = cpu()
        if str(getattr(value, "dtype", "")) == "torch.bfloat16":
            value = value.float()
    if is_device_array(value):  # Numba / CuPy device arrays: a host copy
        return _cuda().to_host(value)
    return value


class _RunningStatsNorm(_Layer):
    """Channel normalizations with optional running statistics (BatchNorm, InstanceNorm)."""

    _ndims: tuple[int, ...] | None = None

    def __init__(
        self,
        num_features: int,
        eps: float,
        momentum: float | None,
        affine: bool,
        track_running_stats: bool,
        axis: int,
        dtype: DTypeLike,
        activation: str | None = None,
        negative_slope: float = 0.01,
    ) -> None:
        super().__init__(activation, negative_slope)
        num_features = _positive_int(num_features, "num_features")
        dtype = _param_dtype(dtype)
        self.num_features = num_features
        self.eps = _validate.real_scalar(eps, "eps", minimum=0.0)
        self.momentum = None if momentum is None else _validate.momentum(momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        self.axis = _axis(axis)
        self.weight = np.ones(num_features, dtype) if affine else None
        self.bias = np.zeros(num_features, dtype) if affine else None
        self.running_mean: np.ndarray | None = None
        self.running_var: np.ndarray | None = None
        self.num_batches_tracked: int | None = None
        if track_running_stats:
            self.running_mean = np.zeros(num_features, dtype)
            self.running_var = np.ones(num_features, dtype)
            self.num_batches_tracked = 0

    def reset_running_stats(self) -> None:
        """Running mean to 0, running variance to 1, batch count to 0.

        In place, in the existing arrays; nothing happens without running
        statistics (``track_running_stats=False``).  The parameters are kept.

        Returns
        -------
        None

        Examples
        --------
        >>> layer = fastnorm.InstanceNorm1d(2, track_running_stats=True)
        >>> _ = layer(np.arange(12, dtype=np.float32).reshape(2, 2, 3))
        >>> layer.num_batches_tracked
        1
        >>> layer.reset_running_stats()
        >>> print(layer.running_mean, layer.running_var, layer.num_batches_tracked)
        [0. 0.] [1. 1.] 0
        """
        if self.running_mean is not None and self.running_var is not None:
            with self._lock:
                _assign(self.running_mean, 0)
                _assign(self.running_var, 1)
                self.num_batches_tracked = 0

    def _state_names(self) -> tuple[str, ...]:
        names = super()._state_names()
        if self.track_running_stats:
            names += ("running_mean", "running_var", "num_batches_tracked")
        return names

    def _check_ndim(self, x: np.ndarray) -> None:
        if self._ndims is not None and x.ndim not in self._ndims:
            wanted = " or ".join(f"{d}D" for d in self._ndims)
            raise ValueError(f"x: {type(self).__name__} expected {wanted} input (got {x.ndim}D input)")

    def _step(self, x: np.ndarray, forward: Any) -> tuple[np.ndarray, _core.Saved | None]:
        """One forward of the layer: ``forward(arrays, use_batch_stats, momentum_factor)`` is the
        functional op on the layer's arrays (placed where ``x`` lives), returning ``(y, saved)``.

        A training step that updates the running statistics holds the layer's lock from reading
        ``num_batches_tracked`` to counting the batch, so that concurrent steps neither lose
        counts nor mix the cumulative average's factors.
        """
        if not (self.training and self.track_running_stats):
            p = self._placed(x)
            y, saved = forward(p, self.training or not self.track_running_stats, 0.0)
            self._adopt(p)
            return y, saved
        with self._lock:
            batches = (self.num_batches_tracked or 0) + 1
            factor = 1.0 / batches if self.momentum is None else self.momentum
            p = self._placed(x)
            y, saved = forward(p, True, factor)
            self._adopt(p)
            self.num_batches_tracked = batches
        return y, saved

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, track_running_stats={self.track_running_stats}, axis={self.axis}"
            f"{self._activation_repr()}{self._extra_repr()})"
        )


@fill_doc
class BatchNorm(_RunningStatsNorm):
    """Batch normalization over any input with at least 2 dimensions, as ``torch.nn.BatchNorm*d``.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` per channel, with batch
    statistics in training (updating ``running_mean``/``running_var``) and the
    running ones in evaluation.  Calls take ``shortcut=`` (an array of the
    input's shape, added before the activation: ``activation(bn(x) +
    shortcut)``, a residual block's tail) and ``mask=``.

    Parameters
    ----------
    %(bn_params)s

    Attributes
    ----------
    %(running_attributes)s
    renorm_mean, renorm_std : ndarray, shape ``(C,)``
        Batch Renormalization's state (only with ``renorm=True``).
    %(layer_attributes)s

    Raises
    ------
    %(bn_raises)s

    See Also
    --------
    BatchNorm1d, BatchNorm2d, BatchNorm3d : the same, checking the input's dimensions.
    SyncBatchNorm : statistics of a batch spread over MPI processes.
    batch_norm : the functional form.
    fold_batch_norm : fold an evaluation-mode layer into the linear layer before it.

    Notes
    -----
    In training, with ``mean_B`` and ``var_B`` the mean and biased variance of
    each channel over the batch and spatial axes (``n`` values), and ``m`` the
    momentum (``1 / num_batches_tracked`` for ``momentum=None``):

    .. math::

        y = \\frac{x - \\mathrm{mean}_B}{\\sqrt{\\mathrm{var}_B + \\epsilon}}
            \\cdot \\mathrm{weight} + \\mathrm{bias}

        \\mathrm{running\\_mean} \\leftarrow (1 - m)\\,\\mathrm{running\\_mean} + m\\,\\mathrm{mean}_B

        \\mathrm{running\\_var} \\leftarrow (1 - m)\\,\\mathrm{running\\_var}
            + m\\,\\frac{n}{n - 1}\\mathrm{var}_B

    In evaluation the running statistics take the place of the batch's.

    Examples
    --------
    >>> layer = fastnorm.BatchNorm(3)
    >>> layer
    BatchNorm(3, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True, axis=1)
    >>> x = np.random.default_rng(0).standard_normal((8, 3, 4)).astype(np.float32)
    >>> y = layer(x)  # training: batch statistics, running ones updated
    >>> mean, var = x.mean(axis=(0, 2), keepdims=True), x.var(axis=(0, 2), keepdims=True)
    >>> np.allclose(y, (x - mean) / np.sqrt(var + 1e-5), atol=1e-5)
    True
    >>> layer.num_batches_tracked, np.allclose(layer.running_mean, 0.1 * mean.ravel())
    (1, True)
    >>> y = layer.eval()(x)  # evaluation: running statistics
    >>> rm, rv = layer.running_mean[:, None], layer.running_var[:, None]
    >>> np.allclose(y, (x - rm) / np.sqrt(rv + 1e-5), atol=1e-5)
    True

    Channels-last data, with a fused ReLU:

    >>> layer = fastnorm.BatchNorm(3, axis=-1, activation="relu")
    >>> y = layer(np.ascontiguousarray(np.moveaxis(x, 1, -1)))
    >>> y.shape, bool((y >= 0).all())
    ((8, 4, 3), True)
    """

    virtual_batch_size: int | None = None
    renorm: bool = False

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        axis: int = 1,
        dtype: DTypeLike = np.float32,
        activation: str | None = None,
        negative_slope: float = 0.01,
        virtual_batch_size: int | None = None,
        renorm: bool = False,
        renorm_clipping: Mapping[str, float] | None = None,
        renorm_momentum: float = 0.01,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, axis, dtype,
                         activation, negative_slope)
        if virtual_batch_size is not None:
            virtual_batch_size = _positive_int(virtual_batch_size, "virtual_batch_size")
        self.virtual_batch_size = virtual_batch_size
        self.renorm = bool(renorm)
        renorm_momentum = _validate.momentum(renorm_momentum, "renorm_momentum")
        if self.renorm:
            if not self.track_running_stats:
                raise ValueError("renorm=True needs track_running_stats=True (evaluation uses them)")
            if virtual_batch_size is not None:
                raise ValueError("renorm=True takes no virtual_batch_size")
            self.renorm_clipping = _renorm_clipping(renorm_clipping)
            self.renorm_momentum = renorm_momentum
            assert self.running_mean is not None  # track_running_stats
            self.renorm_mean = np.zeros(num_features, self.running_mean.dtype)
            self.renorm_std = np.ones(num_features, self.running_mean.dtype)

    def _state_names(self) -> tuple[str, ...]:
        names = super()._state_names()
        return names + ("renorm_mean", "renorm_std") if self.renorm else names

    def reset_running_stats(self) -> None:
        """Running mean to 0, running variance to 1, batch count to 0 (and the renorm state
        to mean 0, standard deviation 1).

        In place, in the existing arrays; nothing happens without running
        statistics (``track_running_stats=False``).  The parameters are kept.

        Returns
        -------
        None

        Examples
        --------
        >>> layer = fastnorm.BatchNorm1d(2)
        >>> _ = layer(np.array([[0.0, 1.0], [2.0, 5.0]], np.float32))
        >>> print(layer.running_mean, layer.num_batches_tracked)
        [0.1 0.3] 1
        >>> layer.reset_running_stats()
        >>> print(layer.running_mean, layer.running_var, layer.num_batches_tracked)
        [0. 0.] [1. 1.] 0
        """
        super().reset_running_stats()
        if self.renorm:
            with self._lock:
                _assign(self.renorm_mean, 0)
                _assign(self.renorm_std, 1)

    def _renorm_state(self, sync: Any) -> Any:
        if not (self.renorm and self.training and sync is None):
            return None
        c = self.renorm_clipping
        return _Renorm(self.renorm_mean, self.renorm_std, self.renorm_momentum,
                       c["rmax"], c["rmin"], c["dmax"])

    def _check_input(self, x: np.ndarray) -> None:
        self._check_ndim(x)
        _validate.min_ndim(x, "x", 2)
        axis = _validate.channel_axis(self.axis, x.ndim)
        if x.shape[axis] != self.num_features:
            raise ValueError(
                f"x: expected {self.num_features} channels on axis {self.axis}, got shape {x.shape}"
            )

    def forward(self, x: ArrayLike, *, out: np.ndarray | None = None,
                shortcut: ArrayLike | None = None, mask: ArrayLike | None = None) -> np.ndarray:
        """Normalize ``x`` with the batch's statistics (training) or the running ones.

        In training mode, with running statistics, updates ``running_mean``,
        ``running_var`` and ``num_batches_tracked``.  Keeps what
        :meth:`backward` needs (unless in :func:`fastnorm.inference_mode`).

        Parameters
        ----------
        x : array_like, shape ``(N, C, *)`` for ``axis=1``, ``(N, *, C)`` for ``axis=-1``
            float16, float32, float64 or bfloat16 values (on the ``cuda``
            backend also a CUDA device array; the layer's arrays then move
            to the device).
        %(forward_out)s
        mask : array_like of bool, optional
            Broadcastable to ``x``: in training, each channel's statistics and
            the running update are taken over its True values only; the output
            is 0 where it is False (see :func:`fastnorm.batch_norm`).  None (the
            default): every value counts.

        Returns
        -------
        ndarray
            ``x``'s shape and dtype (``out`` when given).

        Raises
        ------
        %(forward_raises)s
        ValueError
            Also when training with one value per channel (``"Expected more
            than 1 value per channel when training, ..."``), or for an invalid
            ``mask`` or virtual batch size (see :func:`fastnorm.batch_norm`).
            Nothing is changed by a call that raises.

        Examples
        --------
        >>> layer = fastnorm.BatchNorm1d(2)
        >>> x = np.array([[0.0, 1.0], [2.0, 5.0], [4.0, 9.0]], np.float32)
        >>> print(layer.forward(x).round(4))
        [[-1.2247 -1.2247]
         [ 0.      0.    ]
         [ 1.2247  1.2247]]
        >>> print(layer.running_mean, layer.running_var)
        [0.2 0.5] [1.3 2.5]
        """
        x = _validate.float_array(x, "x")
        self._check_input(x)
        if out is None and shortcut is None and mask is None and self.activation is None \
                and not self.training and self.track_running_stats and not self._keeps:
            whole = _plain_calls(get_backend())[1]  # inference keeping nothing: the compiled call
            if whole is not None:
                served = whole(x, self.running_mean, self.running_var, self.weight, self.bias,
                               False, 0.0, self.eps, self.axis, _core.SMALL_SIZE)
                if served is not None:
                    return self._remember(served, None)
        fuse = None if shortcut is None and self.activation is None else self._fuse(x, shortcut)
        return self._normalize(x, out, fuse=fuse, mask=mask)

    def _normalize(self, x: np.ndarray, out: np.ndarray | None, sync: Any = None,
                   fuse: _Fuse | None = None, mask: ArrayLike | None = None) -> np.ndarray:
        """The step on a validated ``x`` (``sync``: see :func:`fastnorm.functional._batch_norm`)."""
        keep = self._keeps
        y, saved = self._step(x, lambda p, batch_stats, factor: _batch_norm(
            x, p["running_mean"], p["running_var"], p["weight"], p["bias"], batch_stats, factor,
            self.eps, self.axis, out, save=keep, sync=sync, fuse=fuse,
            virtual_batch_size=self.virtual_batch_size if sync is None else None,
            renorm=self._renorm_state(sync), mask=mask,
        ))
        return self._remember(y, saved, out=out)


@fill_doc
class BatchNorm1d(BatchNorm):
    """Batch normalization of ``(N, C)`` or ``(N, C, L)`` input, as ``torch.nn.BatchNorm1d``.

    (``(N, L, C)`` with ``axis=-1``.)  The same layer as :class:`BatchNorm`, whose
    :meth:`forward` also checks that the input has 2 or 3 dimensions.

    Parameters
    ----------
    %(bn_params)s

    Attributes
    ----------
    %(running_attributes)s
    renorm_mean, renorm_std : ndarray, shape ``(C,)``
        Batch Renormalization's state (only with ``renorm=True``).
    %(layer_attributes)s

    Raises
    ------
    %(bn_raises)s

    See Also
    --------
    BatchNorm : any number of dimensions.
    batch_norm : the functional form.

    Notes
    -----
    As :class:`BatchNorm`: per channel, ``y = (x - mean) / sqrt(var + eps) *
    weight + bias`` with the batch's statistics in training and the running
    ones in evaluation.

    Examples
    --------
    >>> layer = fastnorm.BatchNorm1d(3)
    >>> x = np.random.default_rng(0).standard_normal((4, 3, 5)).astype(np.float32)
    >>> layer(x).shape
    (4, 3, 5)
    >>> layer(np.zeros((2, 3, 2, 2), np.float32))
    Traceback (most recent call last):
        ...
    ValueError: x: BatchNorm1d expected 2D or 3D input (got 4D input)
    """

    _ndims = (2, 3)


@fill_doc
class BatchNorm2d(BatchNorm):
    """Batch normalization of ``(N, C, H, W)`` input, as ``torch.nn.BatchNorm2d``.

    (``(N, H, W, C)`` with ``axis=-1``.)  The same layer as :class:`BatchNorm`, whose
    :meth:`forward` also checks that the input has 4 dimensions.

    Parameters
    ----------
    %(bn_params)s

    Attributes
    ----------
    %(running_attributes)s
    renorm_mean, renorm_std : ndarray, shape ``(C,)``
        Batch Renormalization's state (only with ``renorm=True``).
    %(layer_attributes)s

    Raises
    ------
    %(bn_raises)s

    See Also
    --------
    BatchNorm : any number of dimensions.
    batch_norm : the functional form.

    Notes
    -----
    As :class:`BatchNorm`: per channel, ``y = (x - mean) / sqrt(var + eps) *
    weight + bias`` with the batch's statistics in training and the running
    ones in evaluation.

    Examples
    --------
    >>> layer = fastnorm.BatchNorm2d(3)
    >>> x = np.random.default_rng(0).standard_normal((2, 3, 2, 2)).astype(np.float32)
    >>> layer(x).shape
    (2, 3, 2, 2)
    >>> layer(np.zeros((4, 3, 5), np.float32))
    Traceback (most recent call last):
        ...
    ValueError: x: BatchNorm2d expected 4D input (got 3D input)
    """

    _ndims = (4,)


@fill_doc
class BatchNorm3d(BatchNorm):
    """Batch normalization of ``(N, C, D, H, W)`` input, as ``torch.nn.BatchNorm3d``.

    (``(N, D, H, W, C)`` with ``axis=-1``.)  The same layer as :class:`BatchNorm`, whose
    :meth:`forward` also checks that the input has 5 dimensions.

    Parameters
    ----------
    %(bn_params)s

    Attributes
    ----------
    %(running_attributes)s
    renorm_mean, renorm_std : ndarray, shape ``(C,)``
        Batch Renormalization's state (only with ``renorm=True``).
    %(layer_attributes)s

    Raises
    ------
    %(bn_raises)s

    See Also
    --------
    BatchNorm : any number of dimensions.
    batch_norm : the functional form.

    Notes
    -----
    As :class:`BatchNorm`: per channel, ``y = (x - mean) / sqrt(var + eps) *
    weight + bias`` with the batch's statistics in training and the running
    ones in evaluation.

    Examples
    --------
    >>> layer = fastnorm.BatchNorm3d(3)
    >>> x = np.random.default_rng(0).standard_normal((2, 3, 2, 2, 2)).astype(np.float32)
    >>> layer(x).shape
    (2, 3, 2, 2, 2)
    >>> layer(np.zeros((4, 3, 5), np.float32))
    Traceback (most recent call last):
        ...
    ValueError: x: BatchNorm3d expected 5D input (got 3D input)
    """

    _ndims = (5,)


@fill_doc
class SyncBatchNorm(BatchNorm):
    """:class:`BatchNorm` whose training statistics are those of the batch of every process of
    an MPI communicator, as ``torch.nn.SyncBatchNorm``.

    In training each rank normalizes its own input ``x`` (of any shape and batch size, also
    empty) with the mean and variance of the *global* batch, the union of every rank's input,
    and every rank updates ``running_mean``/``running_var`` (unbiased with the global count)
    with bit-identical values.  Evaluation uses the running statistics and communicates
    nothing.  With ``track_running_stats=False`` evaluation normalizes with the statistics
    of the rank's own input, as PyTorch does.

    Every rank must call :meth:`forward` in training mode together, and :meth:`backward`
    together, like any MPI collective; a rank in evaluation mode makes no call, so a
    training forward waits for every rank of ``comm``.  A call that fails on one rank (an
    input of the wrong shape or dtype) or on which the ranks disagree (``num_features``,
    input dtype, parameter dtype, ``axis``) raises ``ValueError`` on every rank (the failing
    rank raises its own error) and changes nothing on any rank.

    Parameters
    ----------
    %(bn_core_params)s
    comm : mpi4py intra-communicator, optional
        The processes whose batches make the global batch: ``MPI.COMM_WORLD`` (the default),
        or any sub-communicator (``comm.Split``), like PyTorch's ``process_group``.  A
        communicator of one process gives exactly :class:`BatchNorm`'s results.

    Attributes
    ----------
    comm : mpi4py intra-communicator
        The communicator (settable).
    %(running_attributes)s
    %(layer_attributes)s

    Raises
    ------
    ImportError
        If mpi4py is not installed (``pip install 'fastnorm-kernels[mpi]'``).
    TypeError
        If ``comm`` is not an mpi4py intra-communicator, or a constructor
        argument has the wrong type (as for :class:`BatchNorm`).
    ValueError
        If a constructor argument is out of range (as for :class:`BatchNorm`).

    See Also
    --------
    BatchNorm : one process.
    SyncBatchNorm.from_batch_norm : convert a :class:`BatchNorm`.

    Notes
    -----
    A training forward makes one collective (``Allgather`` of ``8 * (6 + 2 * C)`` bytes from
    each rank: count, mean and sum of squared deviations per channel in float64, merged on
    every rank in rank order with Chan's formula); a layer's first training forward makes one
    more, of 8 bytes per rank, that checks ``num_features``.  :meth:`backward` makes one
    ``Allreduce`` of ``8 * (1 + 2 * C)`` bytes (``sum(dy)`` and ``sum(dy * xhat)`` per
    channel) and computes ``dx`` locally.  ``grad_weight`` and ``grad_bias`` are this rank's
    own, from its own ``x`` and ``dy``: average them over the ranks with the other parameter
    gradients (``comm.Allreduce``), as a data-parallel wrapper does in PyTorch.

    Requires mpi4py (``pip install 'fastnorm-kernels[mpi]'``), imported when the layer is
    made; the CPU backends (``numba``, ``cython``, ``numpy``).

    Examples
    --------
    Run the same script on every rank (``mpiexec -n 4 python train.py``); each
    rank passes its own part of the batch.  With one process (as here) the
    results are :class:`BatchNorm`'s:

    >>> layer = fastnorm.SyncBatchNorm(3)
    >>> x = np.random.default_rng(0).standard_normal((4, 3, 2)).astype(np.float32)
    >>> np.allclose(layer(x), fastnorm.BatchNorm(3)(x))
    True
    >>> dx = layer.backward(np.ones_like(x))  # collective too
    >>> dx.shape
    (4, 3, 2)
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        axis: int = 1,
        dtype: DTypeLike = np.float32,
        comm: Any = None,
        activation: str | None = None,
        negative_slope: float = 0.01,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         axis=axis, dtype=dtype, activation=activation, negative_slope=negative_slope)
        self.comm = comm

    @property
    def comm(self) -> Any:
        """The communicator whose processes' batches make the global batch (settable)."""
        return self._sync.comm

    @comm.setter
    def comm(self, comm: Any) -> None:
        self._sync = _mpi.RankSync(_mpi.communicator(comm), self.num_features)

    def __deepcopy__(self, memo: dict[int, Any]) -> SyncBatchNorm:
        """A copy of the arrays and state that takes part in the same communicator."""
        memo[id(self.comm)] = self.comm  # communicators are shared, as process groups in PyTorch
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.__setstate__(copy.deepcopy(self.__getstate__(), memo))
        return new

    @classmethod
    def from_batch_norm(cls, bn: BatchNorm, comm: Any = None) -> SyncBatchNorm:
        """A :class:`SyncBatchNorm` with a copy of ``bn``'s configuration, parameters, running
        statistics, batch count and training mode (the counterpart of PyTorch's
        ``convert_sync_batchnorm``).

        Parameters
        ----------
        bn : BatchNorm
            Any :class:`BatchNorm` (``BatchNorm1d/2d/3d`` included) without Batch
            Renormalization or virtual batches; it is left unchanged.
        comm : mpi4py intra-communicator, optional
            As in the constructor; None (the default): ``MPI.COMM_WORLD``.

        Returns
        -------
        SyncBatchNorm
            A new layer (of ``cls``), its arrays copies of ``bn``'s.

        Raises
        ------
        TypeError
            If ``bn`` is not a :class:`BatchNorm` or ``comm`` not a communicator.
        ValueError
            If ``bn`` has ``renorm=True`` or a ``virtual_batch_size``.

        Examples
        --------
        >>> bn = fastnorm.BatchNorm2d(4, momentum=0.2).eval()
        >>> layer = fastnorm.SyncBatchNorm.from_batch_norm(bn)
        >>> layer.momentum, layer.training, layer.num_features
        (0.2, False, 4)
        """
        if not isinstance(bn, BatchNorm):
            raise TypeError(f"bn must be a BatchNorm layer, got {type(bn).__name__}")
        if bn.renorm or bn.virtual_batch_size is not None:
            raise ValueError("SyncBatchNorm has neither Batch Renormalization nor virtual batches")
        arrays = [a for a in (bn.weight, bn.running_mean) if a is not None]
        dtype = arrays[0].dtype if arrays else np.float32
        layer = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                    axis=bn.axis, dtype=dtype, comm=comm, activation=bn.activation,
                    negative_slope=bn.negative_slope)
        layer.load_state_dict(bn.state_dict())
        layer.training = bn.training
        return layer

    def forward(self, x: ArrayLike, *, out: np.ndarray | None = None,  # type: ignore[override]  # no mask=
                shortcut: ArrayLike | None = None) -> np.ndarray:
        """Normalize ``x`` with the statistics of every rank's batch (training) or the running ones.

        In training mode a collective call: every rank of :attr:`comm` calls it
        together, each with its own part of the batch (any batch size, also
        empty; the same channels, dtype and ``axis``).  In evaluation mode a
        local call.

        Parameters
        ----------
        x : ndarray, shape ``(N, C, *)`` for ``axis=1``, ``(N, *, C)`` for ``axis=-1``
            This rank's input: a NumPy array of float16, float32, float64 or
            bfloat16 values.
        %(forward_out)s

        Returns
        -------
        ndarray
            ``x``'s shape and dtype (``out`` when given).

        Raises
        ------
        %(forward_raises)s
        TypeError
            Also for input that is not a NumPy array, or the ``cuda`` backend.
        ValueError
            Also, on every rank, when one rank's call fails or the ranks
            disagree on ``num_features``, the input dtype, the parameter dtype
            or ``axis``; when the whole batch holds one value per channel.

        Examples
        --------
        >>> layer = fastnorm.SyncBatchNorm(2)
        >>> x = np.array([[0.0, 1.0], [2.0, 5.0], [4.0, 9.0]], np.float32)
        >>> print(layer.forward(x).round(4))
        [[-1.2247 -1.2247]
         [ 0.      0.    ]
         [ 1.2247  1.2247]]
        """
        sync = self._sync
        self._exchange = None
        if not self.training or sync.size == 1:
            return super().forward(x, out=out, shortcut=shortcut)
        params = self.weight if self.weight is not None else self.running_mean
        exchange = sync.begin(params.dtype if params is not None else np.dtype(np.float32), self.axis)
        try:
            x = _validate.float_array(x, "x")
            if not isinstance(x, np.ndarray) or backend_module().NAME == "cuda":
                raise TypeError("SyncBatchNorm runs on the CPU backends, with NumPy input")
            self._check_input(x)
            exchange.input_dtype = x.dtype
            y = self._normalize(x, out, exchange, fuse=self._fuse(x, shortcut))
        except BaseException as error:
            if not exchange.done:  # the other ranks wait for this one's record
                exchange.fail(error)
            raise
        self._exchange = exchange
        return y

    _exchange: _mpi.Exchange | None = None  # the last forward's, when it synchronized

    def backward(self, dy: ArrayLike, dh: ArrayLike | None = None) -> Any:
        """As :meth:`BatchNorm.backward`; after a synchronized forward, a collective call.

        A rank whose forward kept nothing (inference mode) still takes part, so that every
        rank raises instead of waiting for it.  ``grad_weight`` and ``grad_bias`` are this
        rank's own.

        Parameters
        ----------
        dy : array_like
            The gradient of the output, of this rank's input's shape.
        dh : None
            Not used by this layer (no ``residual``); None.

        Returns
        -------
        dx : ndarray
            The gradient of this rank's input, of its shape and dtype.
        grad_shortcut : ndarray
            Only after a forward with a ``shortcut``: the call returns ``(dx,
            grad_shortcut)``.

        Raises
        ------
        ValueError
            As :meth:`BatchNorm.backward`, on every rank when one rank fails.

        Examples
        --------
        >>> layer = fastnorm.SyncBatchNorm(2)
        >>> x = np.array([[0.0, 1.0], [2.0, 5.0], [4.0, 9.0]], np.float32)
        >>> dx = layer.backward(np.ones_like(layer(x)))
        >>> np.allclose(dx, 0, atol=1e-6), layer.grad_bias
        (True, array([3., 3.], dtype=float32))
        """
        if self._saved is None and self._exchange is not None:
            self._exchange.grads(None, None)  # the other ranks wait for this one's sums
        return super().backward(dy, dh)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", comm size={self._sync.size})"


@fill_doc
class InstanceNorm(_RunningStatsNorm):
    """Instance normalization: each channel of each sample over its spatial positions.

    As ``torch.nn.InstanceNorm*d``: by default no affine and no running
    statistics.  With ``track_running_stats=True`` training updates
    ``running_mean``/``running_var`` with the batch mean of the per-instance
    statistics and evaluation normalizes with them.  The input is ``(N, C,
    *spatial)`` for ``axis=1``, ``(N, *spatial, C)`` for ``axis=-1``, with at
    least one spatial axis.

    Unlike PyTorch, whose InstanceNorm treats ``momentum=None`` as 0 and never
    counts batches, ``num_batches_tracked`` counts training steps and
    ``momentum=None`` is the cumulative average, as for BatchNorm.

    Parameters
    ----------
    %(in_params)s

    Attributes
    ----------
    %(running_attributes)s
    %(layer_attributes)s

    Raises
    ------
    %(in_raises)s

    See Also
    --------
    InstanceNorm1d, InstanceNorm2d, InstanceNorm3d : the same, checking the input's dimensions.
    instance_norm : the functional form.
    GroupNorm : statistics over groups of channels.

    Notes
    -----
    With ``mean[n, c]`` and ``var[n, c]`` the mean and biased variance of
    ``x[n, c]`` over its spatial positions (or the running statistics):

    .. math::

        y_{n,c} = \\frac{x_{n,c} - \\mathrm{mean}_{n,c}}
                        {\\sqrt{\\mathrm{var}_{n,c} + \\epsilon}}
                  \\cdot \\mathrm{weight}_c + \\mathrm{bias}_c

    Examples
    --------
    >>> layer = fastnorm.InstanceNorm(3)
    >>> x = np.random.default_rng(0).standard_normal((2, 3, 5)).astype(np.float32)
    >>> y = layer(x)
    >>> mean, var = x.mean(axis=-1, keepdims=True), x.var(axis=-1, keepdims=True)
    >>> np.allclose(y, (x - mean) / np.sqrt(var + 1e-5), atol=1e-5)
    True

    With running statistics:

    >>> layer = fastnorm.InstanceNorm(3, affine=True, track_running_stats=True)
    >>> _ = layer(x)
    >>> layer.num_batches_tracked, np.allclose(layer.running_mean, 0.1 * x.mean(axis=(0, 2)))
    (1, True)
    """

    _no_batch_ndim: int | None = None

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = False,
        track_running_stats: bool = False,
        *,
        axis: int = 1,
        dtype: DTypeLike = np.float32,
        activation: str | None = None,
        negative_slope: float = 0.01,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, axis, dtype,
                         activation, negative_slope)

    def forward(self, x: ArrayLike, *, out: np.ndarray | None = None,
                shortcut: ArrayLike | None = None) -> np.ndarray:
        """Normalize ``x``, each channel of each sample over its spatial positions.

        In training mode, with running statistics, updates ``running_mean``,
        ``running_var`` and ``num_batches_tracked``; in evaluation mode with
        running statistics, normalizes with them.

        Parameters
        ----------
        x : array_like, shape ``(N, C, *spatial)`` (``axis=1``) or ``(N, *spatial, C)`` (``axis=-1``)
            float16, float32, float64 or bfloat16 values.  The ``1d``/``2d``/``3d``
            classes also take one unbatched sample (``(C, *spatial)``), and
            return one.
        %(forward_out)s

        Returns
        -------
        ndarray
            ``x``'s shape and dtype (``out`` when given).

        Raises
        ------
        %(forward_raises)s
        ValueError
            Also if ``axis`` is 0, or with one spatial element when normalizing
            with the input's statistics.  A wrong channel count is only a
            ``UserWarning`` for a layer without ``affine`` and running
            statistics (``num_features`` is unused then).

        Examples
        --------
        >>> layer = fastnorm.InstanceNorm1d(2)
        >>> x = np.array([[[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]]], np.float32)
        >>> print(layer.forward(x).round(4))
        [[[-1.2247  0.      1.2247]
          [-0.7071 -0.7071  1.4142]]]
        """
        x = _validate.float_array(x, "x")
        self._check_ndim(x)
        fuse = self._fuse(x, shortcut)
        unbatched = x.ndim == self._no_batch_ndim
        target = out
        if unbatched:
            x = _expand0(x)
            if fuse is not None and fuse.shortcut is not None:
                fuse.shortcut = _expand0(fuse.shortcut)
            if isinstance(out, np.ndarray):
                target = out[None]
        _validate.min_ndim(x, "x", 3)
        axis = _validate.channel_axis(self.axis, x.ndim)
        if x.shape[axis] != self.num_features:
            message = (
                f"x: expected {self.num_features} channels on axis {self.axis}, got shape {x.shape}"
            )
            if self.affine or self.track_running_stats:
                raise ValueError(message)
            warnings.warn(message + " (num_features is unused without affine or running stats)",
                          UserWarning, stacklevel=2)
        keep = self._keeps
        y, saved = self._step(x, lambda p, input_stats, factor: _instance_norm(
            x, p["running_mean"], p["running_var"], p["weight"], p["bias"], input_stats, factor,
            self.eps, self.axis, target, save=keep, fuse=fuse,
        ))
        return self._remember(y, saved, unbatched, out=out)


@fill_doc
class InstanceNorm1d(InstanceNorm):
    """Instance normalization of ``(N, C, L)`` or unbatched ``(C, L)`` input, as ``torch.nn.InstanceNorm1d``.

    (``(N, L, C)`` with ``axis=-1``.)  The same layer as :class:`InstanceNorm`, whose
    :meth:`forward` also checks that the input has 2 or 3 dimensions; an
    unbatched sample gives an unbatched result.

    Parameters
    ----------
    %(in_params)s

    Attributes
    ----------
    %(running_attributes)s
    %(layer_attributes)s

    Raises
    ------
    %(in_raises)s

    See Also
    --------
    InstanceNorm : any number of dimensions.
    instance_norm : the functional form.

    Notes
    -----
    As :class:`InstanceNorm`: each channel of each sample normalized over its
    spatial positions, ``y = (x - mean) / sqrt(var + eps) * weight + bias``.

    Examples
    --------
    >>> layer = fastnorm.InstanceNorm1d(3)
    >>> x = np.random.default_rng(0).standard_normal((2, 3, 5)).astype(np.float32)
    >>> layer(x).shape, layer(x[0]).shape
    ((2, 3, 5), (3, 5))
    """

    _ndims = (2, 3)
    _no_batch_ndim = 2


@fill_doc
class InstanceNorm2d(InstanceNorm):
    """Instance normalization of ``(N, C, H, W)`` or unbatched ``(C, H, W)`` input, as ``torch.nn.InstanceNorm2d``.

    (``(N, H, W, C)`` with ``axis=-1``.)  The same layer as :class:`InstanceNorm`, whose
    :meth:`forward` also checks that the input has 3 or 4 dimensions; an
    unbatched sample gives an unbatched result.

    Parameters
    ----------
    %(in_params)s

    Attributes
    ----------
    %(running_attributes)s
    %(layer_attributes)s

    Raises
    ------
    %(in_raises)s

    See Also
    --------
    InstanceNorm : any number of dimensions.
    instance_norm : the functional form.

    Notes
    -----
    As :class:`InstanceNorm`: each channel of each sample normalized over its
    spatial positions, ``y = (x - mean) / sqrt(var + eps) * weight + bias``.

    Examples
    --------
    >>> layer = fastnorm.InstanceNorm2d(3)
    >>> x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    >>> layer(x).shape, layer(x[0]).shape
    ((2, 3, 4, 4), (3, 4, 4))
    """

    _ndims = (3, 4)
    _no_batch_ndim = 3


@fill_doc
class InstanceNorm3d(InstanceNorm):
    """Instance normalization of ``(N, C, D, H, W)`` or unbatched ``(C, D, H, W)`` input, as ``torch.nn.InstanceNorm3d``.

    (``(N, D, H, W, C)`` with ``axis=-1``.)  The same layer as :class:`InstanceNorm`, whose
    :meth:`forward` also checks that the input has 4 or 5 dimensions; an
    unbatched sample gives an unbatched result.

    Parameters
    ----------
    %(in_params)s

    Attributes
    ----------
    %(running_attributes)s
    %(layer_attributes)s

    Raises
    ------
    %(in_raises)s

    See Also
    --------
    InstanceNorm : any number of dimensions.
    instance_norm : the functional form.

    Notes
    -----
    As :class:`InstanceNorm`: each channel of each sample normalized over its
    spatial positions, ``y = (x - mean) / sqrt(var + eps) * weight + bias``.

    Examples
    --------
    >>> layer = fastnorm.InstanceNorm3d(3)
    >>> x = np.random.default_rng(0).standard_normal((2, 3, 2, 3, 3)).astype(np.float32)
    >>> layer(x).shape, layer(x[0]).shape
    ((2, 3, 2, 3, 3), (3, 2, 3, 3))
    """

    _ndims = (4, 5)
    _no_batch_ndim = 4


@fill_doc
class GroupNorm(_Layer):
    """Group normalization, as ``torch.nn.GroupNorm``.

    Splits the ``C`` channels into ``num_groups`` groups of adjacent channels
    and normalizes each group of each sample over its channels and spatial
    positions, then applies the per-channel affine.  The same in training and
    evaluation mode (no running statistics).

    Parameters
    ----------
    num_groups : int
        Number of groups of adjacent channels ``G``; positive, must divide
        ``num_channels``.
    num_channels : int
        ``C``, the size of the channel axis; positive.
    eps : float, default 1e-5
        Added to the variance before the square root, ``>= 0``.
    affine : bool, default True
        Learnable per-channel ``weight`` (ones) and ``bias`` (zeros), shape ``(C,)``.
    axis : int, default 1
        Channel axis: ``1`` for ``(N, C, *)``, ``-1`` for ``(N, *, C)``; any
        axis but 0, the batch (checked at the forward).
    %(layer_dtype)s
    %(layer_activation)s

    Attributes
    ----------
    weight, bias : ndarray, shape ``(C,)``, or None
        The learnable affine parameters, of ``dtype`` (None without ``affine``).
    num_groups, num_channels, eps, affine, axis
        The constructor's arguments, validated.
    %(layer_attributes)s

    Raises
    ------
    TypeError
        If ``num_groups``, ``num_channels`` or ``axis`` is not an int, ``eps``
        or ``negative_slope`` is not a real number, ``dtype`` is not float16,
        float32 or float64, or ``activation`` is not a str.
    ValueError
        If ``num_groups`` or ``num_channels`` is not positive, ``num_groups``
        does not divide ``num_channels``, ``eps < 0`` or ``activation`` is not
        a known name.

    See Also
    --------
    group_norm : the functional form.
    InstanceNorm : one channel per group.

    Notes
    -----
    With ``mean[n, g]`` and ``var[n, g]`` the mean and biased variance of
    group ``g`` of sample ``n``, and ``c`` a channel of group ``g``:

    .. math::

        y_{n,c} = \\frac{x_{n,c} - \\mathrm{mean}_{n,g}}
                        {\\sqrt{\\mathrm{var}_{n,g} + \\epsilon}}
                  \\cdot \\mathrm{weight}_c + \\mathrm{bias}_c

    Examples
    --------
    >>> layer = fastnorm.GroupNorm(2, 4)
    >>> layer
    GroupNorm(2, 4, eps=1e-05, affine=True, axis=1)
    >>> x = np.random.default_rng(0).standard_normal((2, 4, 3)).astype(np.float32)
    >>> y = layer(x)
    >>> groups = x.reshape(2, 2, 6)
    >>> expected = (groups - groups.mean(axis=-1, keepdims=True)) / np.sqrt(
    ...     groups.var(axis=-1, keepdims=True) + 1e-5)
    >>> np.allclose(y, expected.reshape(x.shape), atol=1e-5)
    True
    """

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        *,
        axis: int = 1,
        dtype: DTypeLike = np.float32,
        activation: str | None = None,
        negative_slope: float = 0.01,
    ) -> None:
        super().__init__(activation, negative_slope)
        self.num_groups = _positive_int(num_groups, "num_groups")
        self.num_channels = _positive_int(num_channels, "num_channels")
        if self.num_channels % self.num_groups:
            raise ValueError(
                f"num_channels ({num_channels}) must be divisible by num_groups ({num_groups})"
            )
        dtype = _param_dtype(dtype)
        self.eps = _validate.real_scalar(eps, "eps", minimum=0.0)
        self.affine = bool(affine)
        self.axis = _axis(axis)
        self.weight = np.ones(self.num_channels, dtype) if affine else None
        self.bias = np.zeros(self.num_channels, dtype) if affine else None

    def forward(self, x: ArrayLike, *, out: np.ndarray | None = None,
                shortcut: ArrayLike | None = None) -> np.ndarray:
        """Normalize ``x``, each group of channels of each sample.

        Parameters
        ----------
        x : array_like, shape ``(N, C, *)`` (``axis=1``) or ``(N, *, C)`` (``axis=-1``)
            float16, float32, float64 or bfloat16 values, at least 2-D.
        %(forward_out)s

        Returns
        -------
        ndarray
            ``x``'s shape and dtype (``out`` when given).

        Raises
        ------
        %(forward_raises)s
        ValueError
            Also if ``axis`` is 0, or each group holds one value.

        Examples
        --------
        >>> layer = fastnorm.GroupNorm(1, 2)
        >>> x = np.array([[[1.0, 2.0], [3.0, 4.0]]], np.float32)
        >>> print(layer.forward(x).round(4))
        [[[-1.3416 -0.4472]
          [ 0.4472  1.3416]]]
        """
        x = _validate.float_array(x, "x")
        _validate.min_ndim(x, "x", 2)
        axis = _validate.channel_axis(self.axis, x.ndim)
        if x.shape[axis] != self.num_channels:
            raise ValueError(
                f"x: expected {self.num_channels} channels on axis {self.axis}, got shape {x.shape}"
            )
        fuse = self._fuse(x, shortcut)
        p = self._placed(x)
        y, saved = _group_norm(x, self.num_groups, p["weight"], p["bias"], self.eps, self.axis,
                               out, save=self._keeps, fuse=fuse)
        self._adopt(p)
        return self._remember(y, saved, out=out)

    def __repr__(self) -> str:
        return (f"GroupNorm({self.num_groups}, {self.num_channels}, eps={self.eps}, "
                f"affine={self.affine}, axis={self.axis}{self._activation_repr()})")


@fill_doc
class LayerNorm(_Layer):
    """Layer normalization, as ``torch.nn.LayerNorm``, over the trailing ``normalized_shape``
    or any axes.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with the mean and the
    biased variance of each sample's values on the normalized axes.  The same
    in training and evaluation mode.

    Parameters
    ----------
    normalized_shape : int or tuple of int
        The sizes of the normalized axes (an int ``M`` means ``(M,)``).
    eps : float, default 1e-5
        Added to the variance before the square root, ``>= 0``.
    elementwise_affine : bool, default True
        Learnable ``weight`` (ones) and, if ``bias``, ``bias`` (zeros), both of
        shape ``normalized_shape`` (or of the ``feature_axis`` sizes).
    bias : bool, default True
        With ``elementwise_affine``, also a learnable ``bias``; False: ``weight`` only.
    %(layer_dtype)s
    %(layer_activation)s
    axis : int or tuple of int, optional
        The axes normalized over, one per dimension of ``normalized_shape``
        (None, the default: the trailing ones, as PyTorch).  ``axis=1`` with
        ``normalized_shape=C`` is the channels-first LayerNorm of ConvNeXt on
        ``(N, C, H, W)``.  Axes that are not the trailing ones cost one
        transposed copy of the input; the result is then laid out in memory with
        those axes last (see :func:`fastnorm.layer_norm`).
    feature_axis : int or tuple of int, optional
        The axes the parameters span, a subset of ``axis`` (None, the default:
        all of them); the parameters are broadcast along the others.
        ``LayerNorm((C, H, W), feature_axis=-3)`` normalizes each sample over
        ``(C, H, W)`` with a per-channel ``weight`` and ``bias``.  ``axis`` and
        ``feature_axis`` are both non-negative or both negative.

    Attributes
    ----------
    weight : ndarray, shape ``normalized_shape`` (or the ``feature_axis`` sizes), or None
        The learnable scale, of ``dtype`` (None without ``elementwise_affine``).
    bias : ndarray, same shape as ``weight``, or None
        The learnable shift (None without ``elementwise_affine`` or ``bias``).
    normalized_shape : tuple of int
        The sizes of the normalized axes.
    eps, elementwise_affine, axis, feature_axis
        The constructor's arguments, validated (``axis`` and ``feature_axis`` as
        sorted tuples, or None).
    %(layer_attributes)s

    Raises
    ------
    TypeError
        If ``normalized_shape``, ``axis`` or ``feature_axis`` is not an int or a
        sequence of ints, ``eps`` or ``negative_slope`` is not a real number,
        ``dtype`` is not float16, float32 or float64, or ``activation`` is not
        a str.
    ValueError
        If ``normalized_shape`` is empty or negative; ``axis`` does not name one
        axis per dimension of ``normalized_shape`` or repeats one;
        ``feature_axis`` is not a subset of ``axis``; ``axis`` and
        ``feature_axis`` mix negative and non-negative axes; ``eps < 0``;
        ``activation`` is not a known name.

    See Also
    --------
    layer_norm : the functional form.
    RMSNorm : without the mean.
    GroupNorm : ``GroupNorm(1, C)`` normalizes each sample over ``(C, *)`` with per-channel parameters.

    Notes
    -----
    :meth:`forward` takes ``mask=`` (bool, broadcastable to ``x``): the
    statistics are those of the True values, and the output is 0 elsewhere;
    and ``residual=`` (a fused add-and-norm, returning ``(y, h)``).

    .. math::

        y = \\frac{x - \\mathrm{mean}}{\\sqrt{\\mathrm{var} + \\epsilon}}
            \\cdot \\mathrm{weight} + \\mathrm{bias}

    Examples
    --------
    >>> layer = fastnorm.LayerNorm(3)
    >>> layer
    LayerNorm((3,), eps=1e-05, elementwise_affine=True, bias=True)
    >>> x = np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 9.0]], np.float32)
    >>> print(layer(x).round(4))
    [[-1.2247  0.      1.2247]
     [-1.019  -0.3397  1.3587]]

    The channels-first LayerNorm of ConvNeXt, over the channel axis:

    >>> layer = fastnorm.LayerNorm(4, axis=1)
    >>> x = np.random.default_rng(0).standard_normal((2, 4, 3, 3)).astype(np.float32)
    >>> y = layer(x)
    >>> mean, var = x.mean(axis=1, keepdims=True), x.var(axis=1, keepdims=True)
    >>> layer.weight.shape, np.allclose(y, (x - mean) / np.sqrt(var + 1e-5), atol=1e-5)
    ((4,), True)
    """

    def __init__(
        self,
        normalized_shape: int | tuple[int, ...],
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        *,
        dtype: DTypeLike = np.float32,
        activation: str | None = None,
        negative_slope: float = 0.01,
        axis: int | tuple[int, ...] | None = None,
        feature_axis: int | tuple[int, ...] | None = None,
    ) -> None:
        super().__init__(activation, negative_slope)
        self.normalized_shape = normalized_shape_tuple(normalized_shape)
        self.axis, self.feature_axis, pshape = layer_axes(self.normalized_shape, axis, feature_axis)
        dtype = _param_dtype(dtype)
        self.eps = _validate.real_scalar(eps, "eps", minimum=0.0)
        self.elementwise_affine = bool(elementwise_affine)
        self.weight = np.ones(pshape, dtype) if elementwise_affine else None
        self.bias = np.zeros(pshape, dtype) if elementwise_affine and bias else None

    @overload
    def forward(self, x: ArrayLike, *, out: np.ndarray | None = None,
                shortcut: ArrayLike | None = None, residual: None = None,
                mask: ArrayLike | None = None) -> np.ndarray: ...
    @overload
    def forward(self, x: ArrayLike, *, out: np.ndarray | None = None,
                shortcut: ArrayLike | None = None, residual: ArrayLike,
                mask: ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray]: ...

    def forward(self, x: ArrayLike, *, out: np.ndarray | None = None,
                shortcut: ArrayLike | None = None, residual: ArrayLike | None = None,
                mask: ArrayLike | None = None) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Normalize ``x`` (``normalized_shape`` on the normalized axes), into ``out`` when given.

        Parameters
        ----------
        x : array_like, shape ``(*, *normalized_shape)``
            float16, float32, float64 or bfloat16 values, of ``normalized_shape``
            on the normalized axes (the trailing ones, or the layer's ``axis``).
        %(forward_out)s
        residual : array_like, shape of ``x``, optional
            ``h = x + residual`` is normalized in the same pass and the call
            returns ``(y, h)`` (a transformer block's fused add-and-norm); the
            backward's ``dx`` is then also the gradient of ``residual``.  None
            (the default): ``x`` is normalized.
        mask : array_like of bool, optional
            Broadcastable to ``x``: statistics over its True values, 0 in the
            output elsewhere (see :func:`fastnorm.layer_norm`).  Not with
            ``residual``.  None (the default): every value counts.

        Returns
        -------
        ndarray, or (ndarray, ndarray) with ``residual``
            ``y`` of ``x``'s shape and dtype (``out`` when given); with
            ``residual``, ``(y, h)``.

        Raises
        ------
        %(forward_raises)s
        ValueError
            Also if ``x``'s sizes on the normalized axes are not
            ``normalized_shape``, or for an invalid ``residual`` or ``mask``.
        NotImplementedError
            For the options the ``cuda`` backend does not have (see
            :func:`fastnorm.layer_norm`).

        Examples
        --------
        >>> layer = fastnorm.LayerNorm(3)
        >>> x = np.array([[1.0, 2.0, 3.0]], np.float32)
        >>> y, h = layer.forward(x, residual=np.ones_like(x))
        >>> print(h, y.round(4))
        [[2. 3. 4.]] [[-1.2247  0.      1.2247]]
        """
        return self._rows_step(x, out, shortcut, residual, center=True, mask=mask)

    def __repr__(self) -> str:
        return (f"LayerNorm({self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}, bias={self.bias is not None}"
                f"{self._axes_repr()}{self._activation_repr()})")


@fill_doc
class RMSNorm(_Layer):
    """Root-mean-square normalization, as ``torch.nn.RMSNorm``, over the trailing
    ``normalized_shape`` or any axes.

    ``y = x / sqrt(mean(x**2) + eps) * weight`` over each sample's values on
    the normalized axes; no mean is subtracted and there is no bias.  The same
    in training and evaluation mode.

    Parameters
    ----------
    normalized_shape : int or tuple of int
        The sizes of the normalized axes (an int ``M`` means ``(M,)``).
    eps : float or None, default None
        Added to the mean square before the square root, ``>= 0``.  None means
        the machine epsilon of each input's compute dtype (float32 for float16
        and bfloat16 input), as PyTorch.
    elementwise_affine : bool, default True
        Learnable ``weight`` (ones) of shape ``normalized_shape`` (or of the
        ``feature_axis`` sizes).
    %(layer_dtype)s
    %(layer_activation)s
    axis : int or tuple of int, optional
        The axes normalized over, one per dimension of ``normalized_shape``
        (None, the default: the trailing ones, as PyTorch).  ``axis=1`` with
        ``normalized_shape=C`` normalizes the channels of ``(N, C, H, W)`` at
        each position.  Axes that are not the trailing ones cost one
        transposed copy of the input; the result is then laid out in memory with
        those axes last (see :func:`fastnorm.rms_norm`).
    feature_axis : int or tuple of int, optional
        The axes ``weight`` spans, a subset of ``axis`` (None, the default: all
        of them); it is broadcast along the others.  ``RMSNorm((C, H, W),
        feature_axis=-3)`` normalizes each sample over ``(C, H, W)`` with a
        per-channel ``weight``.  ``axis`` and ``feature_axis`` are both
        non-negative or both negative.

    Attributes
    ----------
    weight : ndarray, shape ``normalized_shape`` (or the ``feature_axis`` sizes), or None
        The learnable scale, of ``dtype`` (None without ``elementwise_affine``).
    bias : None
        Always None (RMSNorm has no shift); :attr:`grad_bias` stays None.
    normalized_shape : tuple of int
        The sizes of the normalized axes.
    eps, elementwise_affine, axis, feature_axis
        The constructor's arguments, validated.
    %(layer_attributes)s

    Raises
    ------
    TypeError
        If ``normalized_shape``, ``axis`` or ``feature_axis`` is not an int or a
        sequence of ints, ``eps`` (other than None) or ``negative_slope`` is not
        a real number, ``dtype`` is not float16, float32 or float64, or
        ``activation`` is not a str.
    ValueError
        If ``normalized_shape`` is empty or negative; ``axis`` does not name one
        axis per dimension of ``normalized_shape`` or repeats one;
        ``feature_axis`` is not a subset of ``axis``; ``axis`` and
        ``feature_axis`` mix negative and non-negative axes; ``eps < 0``;
        ``activation`` is not a known name.

    See Also
    --------
    rms_norm : the functional form.
    LayerNorm : with the mean subtracted, and a bias.

    Notes
    -----
    :meth:`forward` takes ``mask=`` and ``residual=`` as :class:`LayerNorm`.

    .. math::

        y = \\frac{x}{\\sqrt{\\mathrm{mean}(x^2) + \\epsilon}} \\cdot \\mathrm{weight}

    Examples
    --------
    >>> layer = fastnorm.RMSNorm(2)
    >>> layer
    RMSNorm((2,), eps=None, elementwise_affine=True)
    >>> print(layer(np.array([[3.0, 4.0], [1.0, -1.0]], np.float32)).round(4))
    [[ 0.8485  1.1314]
     [ 1.     -1.    ]]
    """

    def __init__(
        self,
        normalized_shape: int | tuple[int, ...],
        eps: float | None = None,
        elementwise_affine: bool = True,
        *,
        dtype: DTypeLike = np.float32,
        activation: str | None = None,
        negative_slope: float = 0.01,
        axis: int | tuple[int, ...] | None = None,
        feature_axis: int | tuple[int, ...] | None = None,
    ) -> None:
        super().__init__(activation, negative_slope)
        self.normalized_shape = normalized_shape_tuple(normalized_shape)
        self.axis, self.feature_axis, pshape = layer_axes(self.normalized_shape, axis, feature_axis)
        dtype = _param_dtype(dtype)
        self.eps = None if eps is None else _validate.real_scalar(eps, "eps", minimum=0.0)
        self.elementwise_affine = bool(elementwise_affine)
        self.weight = np.ones(pshape, dtype) if elementwise_affine else None
        self.bias = None

    def _state_names(self) -> tuple[str, ...]:
        return ("weight",)

    @overload
    def forward(self, x: ArrayLike, *, out: np.ndarray | None = None,
                shortcut: ArrayLike | None = None, residual: None = None,
                mask: ArrayLike | None = None) -> np.ndarray: ...
    @overload
    def forward(self, x: ArrayLike, *, out: np.ndarray | None = None,
                shortcut: ArrayLike | None = None, residual: ArrayLike,
                mask: ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray]: ...

    def forward(self, x: ArrayLike, *, out: np.ndarray | None = None,
                shortcut: ArrayLike | None = None, residual: ArrayLike | None = None,
                mask: ArrayLike | None = None) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Normalize ``x`` (``normalized_shape`` on the normalized axes), into ``out`` when given.

        Parameters
        ----------
        x : array_like, shape ``(*, *normalized_shape)``
            float16, float32, float64 or bfloat16 values, of ``normalized_shape``
            on the normalized axes (the trailing ones, or the layer's ``axis``).
        %(forward_out)s
        residual : array_like, shape of ``x``, optional
            ``h = x + residual`` is normalized in the same pass and the call
            returns ``(y, h)`` (a transformer block's fused add-and-norm); the
            backward's ``dx`` is then also the gradient of ``residual``.  None
            (the default): ``x`` is normalized.
        mask : array_like of bool, optional
            Broadcastable to ``x``: statistics over its True values, 0 in the
            output elsewhere (see :func:`fastnorm.rms_norm`).  Not with
            ``residual``.  None (the default): every value counts.

        Returns
        -------
        ndarray, or (ndarray, ndarray) with ``residual``
            ``y`` of ``x``'s shape and dtype (``out`` when given); with
            ``residual``, ``(y, h)``.

        Raises
        ------
        %(forward_raises)s
        ValueError
            Also if ``x``'s sizes on the normalized axes are not
            ``normalized_shape``, or for an invalid ``residual`` or ``mask``.
        NotImplementedError
            For the options the ``cuda`` backend does not have (see
            :func:`fastnorm.rms_norm`).

        Examples
        --------
        >>> layer = fastnorm.RMSNorm(4)
        >>> x = np.array([[1.0, -1.0, 1.0, -1.0]], np.float32)
        >>> y, h = layer.forward(x, residual=x)
        >>> print(h, y.round(4))
        [[ 2. -2.  2. -2.]] [[ 1. -1.  1. -1.]]
        """
        return self._rows_step(x, out, shortcut, residual, center=False, mask=mask)

    def __repr__(self) -> str:
        return (f"RMSNorm({self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}{self._axes_repr()}"
                f"{self._activation_repr()})")
