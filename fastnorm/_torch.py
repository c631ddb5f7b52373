"""fastnorm layers from PyTorch normalization modules, duck-typed: torch is never imported here.

A module is recognized by the name of its class (or of a base class): ``BatchNorm1d/2d/3d``,
``SyncBatchNorm``, ``InstanceNorm1d/2d/3d``, ``GroupNorm``, ``LayerNorm``, ``RMSNorm``, and
torchvision's ``FrozenBatchNorm2d``; its hyperparameters are read from its attributes and its
state from ``module.state_dict()``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from . import layers

__all__ = ["from_torch", "from_torch_modules"]

_DTYPES = {"torch.float16": np.float16, "torch.float32": np.float32, "torch.float64": np.float64,
           "torch.bfloat16": np.float32}


def _dtype(module: Any) -> type:
    """The fastnorm parameter dtype for a module's tensors (bfloat16 becomes float32)."""
    for name in ("weight", "running_mean"):
        tensor = getattr(module, name, None)
        if tensor is not None:
            return _DTYPES.get(str(tensor.dtype), np.float32)
    return np.float32


def _batch_norm(cls: type[layers._RunningStatsNorm]) -> Callable[[Any, int], layers._Layer]:
    def make(m: Any, axis: int) -> layers._Layer:
        return cls(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats, axis=axis,
                   dtype=_dtype(m))
    return make


def _frozen_batch_norm(m: Any, axis: int) -> layers._Layer:
    layer = layers.BatchNorm2d(m.weight.shape[0], m.eps, axis=axis, dtype=_dtype(m))
    return layer.eval()


def _group_norm(m: Any, axis: int) -> layers._Layer:
    return layers.GroupNorm(m.num_groups, m.num_channels, m.eps, m.affine, axis=axis, dtype=_dtype(m))


def _layer_norm(m: Any, axis: int) -> layers._Layer:
    return layers.LayerNorm(tuple(m.normalized_shape), m.eps, m.elementwise_affine,
                            bias=getattr(m, "bias", None) is not None, dtype=_dtype(m))


def _rms_norm(m: Any, axis: int) -> layers._Layer:
    return layers.RMSNorm(tuple(m.normalized_shape), m.eps, m.elementwise_affine, dtype=_dtype(m))


_MAKERS: dict[str, Callable[[Any, int], layers._Layer]] = {
    "BatchNorm1d": _batch_norm(layers.BatchNorm1d),
    "BatchNorm2d": _batch_norm(layers.BatchNorm2d),
    "BatchNorm3d": _batch_norm(layers.BatchNorm3d),
    "SyncBatchNorm": _batch_norm(layers.BatchNorm),
    "InstanceNorm1d": _batch_norm(layers.InstanceNorm1d),
    "InstanceNorm2d": _batch_norm(layers.InstanceNorm2d),
    "InstanceNorm3d": _batch_norm(layers.InstanceNorm3d),
    "FrozenBatchNorm2d": _frozen_batch_norm,
    "GroupNorm": _group_norm,
    "LayerNorm": _layer_norm,
    "RMSNorm": _rms_norm,
}


def _maker(module: Any) -> Callable[[Any, int], layers._Layer] | None:
    for cls in type(module).__mro__:
        if cls.__name__ in _MAKERS:
            return _MAKERS[cls.__name__]
    return None


def from_torch(module: Any, *, axis: int = 1) -> layers._Layer:
    """The fastnorm layer equivalent to a PyTorch normalization module, with its state.

    Parameters
    ----------
    module : torch.nn.Module
        ``BatchNorm1d/2d/3d``, ``SyncBatchNorm`` (a :class:`fastnorm.BatchNorm`: one process
        in inference), ``InstanceNorm1d/2d/3d``, ``GroupNorm``, ``LayerNorm``, ``RMSNorm``,
        torchvision's ``FrozenBatchNorm2d`` (an eval-mode ``BatchNorm2d``), or subclasses.
    axis : int, default 1
        The channel axis of the data the layer will see (channel layers only): ``1`` as in
        PyTorch, or ``-1`` for channels-last NumPy arrays.  The parameters are the same.

    Returns
    -------
    BatchNorm, InstanceNorm, GroupNorm, LayerNorm or RMSNorm
        The layer of the module's kind (``BatchNorm2d`` for ``BatchNorm2d``, ...), with every hyperparameter (``eps``, ``momentum``, ``affine``,
        ``track_running_stats``, ``num_groups``, ``normalized_shape``,
        ``elementwise_affine``, ``bias``), the parameters, running statistics and batch
        count, and the module's training mode.  Parameters keep the module's dtype (float32
        for bfloat16).

    Raises
    ------
    TypeError
        For a module of another kind.

    See Also
    --------
    from_torch_modules : every normalization module of a model.
    BatchNorm.load_state_dict : loads a PyTorch state dict into an existing layer.

    Notes
    -----
    torch is not imported by fastnorm: the module is recognized by the name of
    its class (or of a base class), its hyperparameters are read from its
    attributes and its state from ``module.state_dict()``.

    Examples
    --------
    >>> import torch
    >>> module = torch.nn.BatchNorm2d(3).eval()
    >>> with torch.no_grad():
    ...     _ = module.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
    >>> layer = fastnorm.from_torch(module)
    >>> layer
    BatchNorm2d(3, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True, axis=1)
    >>> layer.training, layer.running_mean
    (False, array([ 0.5, -1. ,  2. ], dtype=float32))
    >>> x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    >>> np.allclose(layer(x), module(torch.from_numpy(x)).detach().numpy(), atol=1e-6)
    True
    """
    make = _maker(module)
    if make is None:
        raise TypeError(
            f"module must be a PyTorch normalization module ({', '.join(_MAKERS)}), "
            f"got {type(module).__name__}"
        )
    layer = make(module, axis)
    layer.load_state_dict(module.state_dict())
    if type(module).__name__ != "FrozenBatchNorm2d":
        layer.train(bool(getattr(module, "training", False)))
    return layer


def from_torch_modules(model: Any, *, axis: int = 1) -> dict[str, layers._Layer]:
    """Every normalization module of a PyTorch model as a fastnorm layer, keyed by module name.

    Parameters
    ----------
    model : torch.nn.Module
        Any module; its submodules (``model.named_modules()``, the model
        itself included) that :func:`from_torch` recognizes are converted.
    axis : int, default 1
        The channel axis of the data the channel layers will see, as in
        :func:`from_torch`.

    Returns
    -------
    dict of str to layer
        Keyed by module name (``"layer1.0.bn1"``, as in
        ``model.named_modules()``), in the model's order; each layer as
        :func:`from_torch` makes it.

    Raises
    ------
    TypeError
        If ``model`` has no ``named_modules`` method.

    See Also
    --------
    from_torch : one module.

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8),
    ...                             torch.nn.ReLU(), torch.nn.Linear(8, 8),
    ...                             torch.nn.BatchNorm1d(8))
    >>> layers = fastnorm.from_torch_modules(model)
    >>> for name, layer in layers.items():
    ...     print(name, type(layer).__name__)
    1 LayerNorm
    4 BatchNorm1d
    """
    named = getattr(model, "named_modules", None)
    if not callable(named):
        raise TypeError(f"model must be a PyTorch module, got {type(model).__name__}")
    return {name: from_torch(module, axis=axis) for name, module in named() if _maker(module) is not None}
