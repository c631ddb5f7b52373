"""Train/eval state objects with PyTorch's names and state; no math of their own."""

from __future__ import annotations

from typing import Any
from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from . import _core, _validate
from .functional import _batch_norm, _normalization_backward

__all__ = ["BatchNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]


class _Layer:
    """Shared machinery: train/eval, backward bookkeeping, state dicts."""

    weight: np.ndarray | None
    bias: np.ndarray | None
    _saved: _core.Saved | None

    def __init__(self) -> None:
        self.training = True
        self._saved = None
        self.grad_weight: np.ndarray | None = None
        self.grad_bias: np.ndarray | None = None

    def train(self, mode: bool = True) -> _Layer:
        """Set training mode (``mode=False`` is :meth:`eval`); returns ``self``."""
        self.training = bool(mode)
        return self

    def eval(self) -> _Layer:
        """Set evaluation mode; returns ``self``."""
        return self.train(False)

    def __call__(self, x: ArrayLike) -> np.ndarray:
        return self.forward(x)

    def forward(self, x: ArrayLike) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, dy: ArrayLike) -> np.ndarray:
        """Gradient with respect to the input of the most recent :meth:`forward`.

        ``dy`` has the forward input's shape; returns ``dx`` of the input's shape
        and dtype, and sets ``grad_weight`` and ``grad_bias`` (``None`` when the
        layer has no such parameter) in the parameters' dtype.

        The forward input is kept by reference (no copy), as PyTorch saves it:
        modifying it in place between forward and backward gives wrong gradients.
        """
        if self._saved is None:
            raise ValueError("backward called before forward: there is no forward pass to differentiate")
        dx, grad_weight, grad_bias = _normalization_backward(self._saved, dy)
        self.grad_weight = None if self.weight is None else grad_weight.astype(self.weight.dtype)
        self.grad_bias = None if self.bias is None else grad_bias.astype(self.bias.dtype)
        return dx

    # -- state -----------------------------------------------------------------

    def _state_names(self) -> tuple[str, ...]:
        return ("weight", "bias") if self.weight is not None else ()

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the parameters and buffers, keyed like PyTorch's ``state_dict``."""
        state = {}
        for name in self._state_names():
            value = getattr(self, name)
            if value is None:
                continue
            state[name] = np.array(value, dtype=np.int64) if name == "num_batches_tracked" else value.copy()
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> None:
        """Load a state dict (NumPy arrays, PyTorch tensors, anything ``np.asarray`` takes).

        Shapes must match the layer's (``ValueError`` otherwise); with
        ``strict=True`` missing or unexpected keys are a ``ValueError`` too.
        Nothing is changed unless every entry is valid.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        expected = {name for name in self._state_names() if getattr(self, name) is not None}
        if strict:
            missing = sorted(expected - set(state_dict))
            unexpected = sorted(set(state_dict) - expected)
            if missing or unexpected:
                raise ValueError(
                    f"state_dict keys do not match: missing {missing}, unexpected {unexpected}"
                )
        updates: dict[str, Any] = {}
        for name in expected & set(state_dict):
            value = np.asarray(_to_numpy(state_dict[name]))
            current = getattr(self, name)
            if name == "num_batches_tracked":
                if value.shape not in ((), (1,)) or value.dtype.kind not in "iuf":
                    raise ValueError(f"num_batches_tracked must be a scalar count, got shape {value.shape}")
                updates[name] = int(value.reshape(()))
                continue
            if value.dtype.kind not in "fiu":
                raise TypeError(f"state_dict[{name!r}] must hold real numbers, got dtype {value.dtype}")
            if value.shape != current.shape:
                raise ValueError(
                    f"state_dict[{name!r}] has shape {value.shape}, expected {current.shape}"
                )
            updates[name] = value.astype(current.dtype, copy=True)
        for name, value in updates.items():  # in place, as PyTorch copies into its tensors
            if name == "num_batches_tracked":
                self.num_batches_tracked = value
            else:
                getattr(self, name)[...] = value


def _to_numpy(value: Any) -> Any:
    """Detach framework tensors (e.g. PyTorch) so ``np.asarray`` sees plain memory."""
    detach = getattr(value, "detach", None)
    if callable(detach):
        value = detach()
        cpu = getattr(value, "cpu", None)
        if callable(cpu):
            value = cpu()
    return value


class BatchNorm(_Layer):
    """Batch normalization over any input with at least 2 dimensions.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` per channel, with batch
    statistics in training (updating ``running_mean``/``running_var``) and the
    running ones in evaluation, as ``torch.nn.BatchNorm*d``.

    Parameters
    ----------
    num_features : int
        ``C``, the size of the channel axis.
    eps : float
        Added to the variance before the square root.
    momentum : float or None
        Weight of the batch statistic in the running update; ``None`` uses the
        cumulative average ``1 / num_batches_tracked``.
    affine : bool
        Learnable ``weight`` (ones) and ``bias`` (zeros), shape ``(C,)``.
    track_running_stats : bool
        Keep ``running_mean`` (zeros), ``running_var`` (ones) and
        ``num_batches_tracked``; without them batch statistics are used in
        evaluation too.
    axis : int
        Channel axis of the input: ``1`` (channels-first) or ``-1`` (channels-last).
    dtype : dtype
        Of the parameters and running statistics (float32 by default); the
        output always has the input's dtype.
    """

    _ndims: tuple[int, ...] | None = None

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
    ) -> None:
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, (int, np.integer)):
            raise TypeError(f"num_features must be an int, got {num_features!r}")
        if num_features < 1:
            raise ValueError(f"num_features must be positive, got {num_features}")
        dtype = np.dtype(dtype)
        if dtype not in _validate.FLOAT_DTYPES:
            raise TypeError(f"dtype must be float16, float32 or float64, got {dtype}")
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
            raise TypeError(f"axis must be an int, got {axis!r}")
        self.num_features = int(num_features)
        self.eps = _validate.real_scalar(eps, "eps", minimum=0.0)
        self.momentum = None if momentum is None else _validate.real_scalar(momentum, "momentum")
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        self.axis = int(axis)
        self.weight = np.ones(num_features, dtype) if affine else None
        self.bias = np.zeros(num_features, dtype) if affine else None
        if track_running_stats:
            self.running_mean: np.ndarray | None = np.zeros(num_features, dtype)
            self.running_var: np.ndarray | None = np.ones(num_features, dtype)
            self.num_batches_tracked: int | None = 0
        else:
            self.running_mean = self.running_var = None
            self.num_batches_tracked = None

    def reset_running_stats(self) -> None:
        """Running mean to 0, running variance to 1, batch count to 0."""
        if self.running_mean is not None and self.running_var is not None:
            self.running_mean[...] = 0
            self.running_var[...] = 1
            self.num_batches_tracked = 0

    def _state_names(self) -> tuple[str, ...]:
        names = super()._state_names()
        if self.track_running_stats:
            names += ("running_mean", "running_var", "num_batches_tracked")
        return names

    def _check_input(self, x: np.ndarray) -> None:
        if self._ndims is not None and x.ndim not in self._ndims:
            wanted = " or ".join(f"{d}D" for d in self._ndims)
            raise ValueError(f"x: {type(self).__name__} expected {wanted} input (got {x.ndim}D input)")
        _validate.min_ndim(x, "x", 2)
        axis = _validate.channel_axis(self.axis, x.ndim)
        if x.shape[axis] != self.num_features:
            raise ValueError(
                f"x: expected {self.num_features} channels on axis {self.axis}, "
                f"got shape {x.shape}"
            )

    def forward(self, x: ArrayLike) -> np.ndarray:
        """Normalize ``x`` (``(N, C, *)`` for ``axis=1``, ``(N, *, C)`` for ``axis=-1``)."""
        x = _validate.float_array(x, "x")
        self._check_input(x)
        use_batch_stats = self.training or not self.track_running_stats
        updating = self.training and self.track_running_stats
        if updating:
            batches = (self.num_batches_tracked or 0) + 1
            momentum = 1.0 / batches if self.momentum is None else self.momentum
        else:
            momentum = 0.0
        track = self.track_running_stats
        y, saved = _batch_norm(
            x,
            self.running_mean if track else None,
            self.running_var if track else None,
            self.weight,
            self.bias,
            use_batch_stats,
            momentum,
            self.eps,
            self.axis,
            None,
            save=True,
        )
        if updating:
            self.num_batches_tracked = batches
        self._saved = saved
        return y

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, track_running_stats={self.track_running_stats}, axis={self.axis})"
        )


class BatchNorm1d(BatchNorm):
    """:class:`BatchNorm` for ``(N, C)`` or ``(N, C, L)`` input (``(N, L, C)`` with ``axis=-1``)."""

    _ndims = (2, 3)


class BatchNorm2d(BatchNorm):
    """:class:`BatchNorm` for ``(N, C, H, W)`` input (``(N, H, W, C)`` with ``axis=-1``)."""

    _ndims = (4,)


class BatchNorm3d(BatchNorm):
    """:class:`BatchNorm` for ``(N, C, D, H, W)`` input (``(N, D, H, W, C)`` with ``axis=-1``)."""

    _ndims = (5,)
