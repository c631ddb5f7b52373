"""fastnorm: fast, exact normalization layers for NumPy.

Functional ops (``batch_norm``, ``instance_norm``, ``group_norm``,
``layer_norm``, ``rms_norm``) and train/eval layers (``BatchNorm1d/2d/3d``,
``InstanceNorm1d/2d/3d``, ``GroupNorm``, ``LayerNorm``, ``RMSNorm``, and
``SyncBatchNorm`` over MPI) with PyTorch's names and semantics, plus a
NumPy-style channel ``axis`` and ``out=``; mergeable float64 statistics
(``moments``, ``Moments``); Dask arrays in :mod:`fastnorm.dask`.  Kernels run
on a selectable backend (``cython`` by default where it is built, ``numba``,
``numpy`` as the float64 reference); see :func:`available_backends`.

.. rubric:: Examples

>>> import numpy as np
>>> import fastnorm
>>> x = np.random.default_rng(0).standard_normal((8, 3, 4, 4)).astype(np.float32)
>>> bn = fastnorm.BatchNorm2d(3)
>>> y = bn(x)  # training: batch statistics, running ones updated
>>> dx = bn.backward(np.ones_like(y))
>>> y.shape, dx.dtype, bn.num_batches_tracked
((8, 3, 4, 4), dtype('float32'), 1)
>>> y_last = fastnorm.batch_norm(np.moveaxis(x, 1, -1), training=True, axis=-1)
>>> np.allclose(y_last, np.moveaxis(y, 1, -1), atol=1e-5)
True
"""

from ._backward import (
    batch_norm_backward,
    group_norm_backward,
    instance_norm_backward,
    layer_norm_backward,
    rms_norm_backward,
)
from ._fold import fold_batch_norm
from ._inference import inference_mode, is_inference_mode_enabled
from ._moments import Moments, moments
from ._torch import from_torch, from_torch_modules
from ._weight_norm import weight_norm, weight_norm_backward
from .backends import (
    available_backends,
    build_info,
    get_backend,
    get_num_threads,
    set_backend,
    set_num_threads,
    use_backend,
)
from .functional import batch_norm, group_norm, instance_norm, layer_norm, rms_norm
from .layers import (
    BatchNorm,
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    GroupNorm,
    InstanceNorm,
    InstanceNorm1d,
    InstanceNorm2d,
    InstanceNorm3d,
    LayerNorm,
    RMSNorm,
    SyncBatchNorm,
)

__version__ = "0.1.0"

__all__ = [
    "batch_norm",
    "instance_norm",
    "group_norm",
    "layer_norm",
    "rms_norm",
    "batch_norm_backward",
    "instance_norm_backward",
    "group_norm_backward",
    "layer_norm_backward",
    "rms_norm_backward",
    "weight_norm",
    "weight_norm_backward",
    "moments",
    "Moments",
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
    "available_backends",
    "get_backend",
    "set_backend",
    "use_backend",
    "set_num_threads",
    "get_num_threads",
    "build_info",
    "from_torch",
    "from_torch_modules",
    "fold_batch_norm",
    "inference_mode",
    "is_inference_mode_enabled",
    "warmup",
]


def warmup() -> None:
    """Compile (or load from the on-disk cache) the current backend's kernels.

    The ``numba`` backend JIT-compiles each kernel on first use; call this once
    at start-up to move that cost out of the first real call.  Every kernel
    path is exercised: the general channel kernels (BatchNorm), the fused
    channels-first and channels-last group kernels (GroupNorm on a batch large
    enough for any thread count) and the row kernels (LayerNorm, RMSNorm), in
    float32 and float64, forward and backward.  On the other backends it only
    costs a few small calls.

    Returns
    -------
    None

    See Also
    --------
    use_backend : warm up another backend inside it.

    Examples
    --------
    >>> fastnorm.warmup()
    >>> with fastnorm.use_backend("numpy"):
    ...     fastnorm.warmup()
    """
    import numpy as np

    from .backends import _max_threads

    batch = 2 * _max_threads()  # enough samples/groups for the fused paths at any thread count
    for dtype in (np.float32, np.float64):
        x = np.linspace(-1.0, 1.0, batch * 3 * 4, dtype=dtype).reshape(batch, 3, 4)
        for axis in (1, -1):
            xa = x if axis == 1 else np.ascontiguousarray(x.transpose(0, 2, 1))
            for layer in (BatchNorm(3, axis=axis, dtype=dtype), GroupNorm(1, 3, axis=axis, dtype=dtype)):
                layer.backward(layer(xa))
            BatchNorm(3, axis=axis, dtype=dtype).eval()(xa)
        for rows_layer in (LayerNorm(4, dtype=dtype), RMSNorm(4, dtype=dtype)):
            rows_layer.backward(rows_layer(x))
