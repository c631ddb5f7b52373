"""The README's idioms as typical user code, for ``mypy --strict`` (tests/test_typing.py runs it;
the file also runs as a script).  Torch-, MPI-, Dask- and CUDA-free."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

import fastnorm

rng = np.random.default_rng(0)
x = rng.standard_normal((4, 8, 5, 5), dtype=np.float32)
running_mean = np.zeros(8, np.float32)
running_var = np.ones(8, np.float32)
weight, bias = np.ones(8, np.float32), np.zeros(8, np.float32)

# -- functional ----------------------------------------------------------------------------

y = fastnorm.batch_norm(x, running_mean, running_var, weight, bias,
                        training=True, momentum=0.1, eps=1e-5)
y = fastnorm.batch_norm(x, running_mean, running_var, weight, bias)
x_nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
y_nhwc = fastnorm.batch_norm(x_nhwc, running_mean, running_var, axis=-1)
buffer = np.empty_like(x)
fastnorm.batch_norm(x, running_mean, running_var, out=buffer)
fastnorm.batch_norm(buffer, running_mean, running_var, out=buffer)  # in place

y = fastnorm.instance_norm(x, weight=weight, bias=bias)
y = fastnorm.group_norm(x, 4, weight, bias)
y = fastnorm.group_norm(x_nhwc, 4, weight, bias, axis=-1)
h = rng.standard_normal((2, 3, 16), dtype=np.float32)
w16, b16 = np.ones(16, np.float32), np.zeros(16, np.float32)
y = fastnorm.layer_norm(h, 16, w16, b16)
y = fastnorm.rms_norm(h, (16,), w16)
y = fastnorm.layer_norm(x, 8, weight, bias, axis=1)
y = fastnorm.layer_norm(x, (8, 5, 5), weight, bias, feature_axis=1)

# masks: statistics of the real tokens
tokens = rng.standard_normal((4, 10, 16), dtype=np.float32)
lengths = np.array([10, 7, 3, 9])
mask = (np.arange(10) < lengths[:, None])[:, :, None]
y = fastnorm.batch_norm(tokens, training=True, axis=-1, mask=mask)
y = fastnorm.layer_norm(tokens, 16, mask=mask)

# epilogues: activation(norm(x) + shortcut), and the fused pre-norm add
s = rng.standard_normal(x.shape, dtype=np.float32)
y = fastnorm.batch_norm(x, running_mean, running_var, weight, bias, training=True,
                        activation="relu", shortcut=s)
y, h_sum = fastnorm.rms_norm(h, 16, w16, eps=1e-6, residual=h)

# statistics for the functional backward
dy = np.ones_like(x)
y, mean, rstd = fastnorm.batch_norm(x, running_mean, running_var, weight, bias,
                                    training=True, return_stats=True)
dx, dweight, dbias = fastnorm.batch_norm_backward(dy, x, mean, rstd, weight)
dx_buffer = np.empty_like(h)
y, mean, rstd = fastnorm.layer_norm(h, 16, w16, b16, return_stats=True)
dx, dweight, dbias = fastnorm.layer_norm_backward(np.ones_like(h), h, 16, mean, rstd, w16,
                                                  out=dx_buffer)


def normalize(batch: npt.NDArray[np.float32], gamma: npt.ArrayLike) -> np.ndarray:
    """User code with annotations: the layers' ``forward`` returns an ndarray."""
    layer = fastnorm.LayerNorm(batch.shape[-1])
    out: np.ndarray = fastnorm.layer_norm(batch, batch.shape[-1], gamma)
    return layer.forward(out)


normalize(h, w16)

# -- layers --------------------------------------------------------------------------------

bn = fastnorm.BatchNorm2d(8)
y = bn(x)  # training mode: batch statistics, running statistics updated
dx = bn.backward(np.ones_like(y))
if bn.weight is not None and bn.grad_weight is not None:  # None without affine
    bn.weight -= 0.1 * bn.grad_weight

bn.eval()
y = bn(x)
dx = bn.backward(np.ones_like(y))
state = bn.state_dict()
missing, unexpected = bn.load_state_dict(state)
bn.load_state_dict(state, strict=False, prefix="")
running: np.ndarray | None = fastnorm.BatchNorm2d(64).eval().running_mean
layer2d: fastnorm.BatchNorm2d = fastnorm.BatchNorm2d(8).train()

fastnorm.InstanceNorm2d(64, affine=True, track_running_stats=True)
fastnorm.GroupNorm(32, 64, axis=-1)
fastnorm.LayerNorm((768,), bias=False)
fastnorm.RMSNorm(768)
block = fastnorm.LayerNorm(8, axis=1)

bn = fastnorm.BatchNorm2d(8, activation="relu")
y = bn(x, shortcut=s)
dx, d_shortcut = bn.backward(dy)
ln = fastnorm.LayerNorm(16)
y, h_sum = ln(h, residual=h)
dx = ln.backward(np.ones_like(h), dh=np.zeros_like(h))

with fastnorm.inference_mode():
    y = fastnorm.BatchNorm2d(8).eval()(x)

conv_w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
conv_b = np.zeros(8, np.float32)
fold_bn = fastnorm.BatchNorm2d(8).eval()
w2, b2 = fastnorm.fold_batch_norm(conv_w, conv_b, fold_bn)
w2, b2 = fastnorm.fold_batch_norm(conv_w, conv_b, running_mean=running_mean,
                                  running_var=running_var, bn_weight=weight, bn_bias=bias, eps=1e-5)

# -- moments -------------------------------------------------------------------------------


def total_moments(chunks: Iterable[np.ndarray]) -> fastnorm.Moments:
    total: fastnorm.Moments | None = None
    for chunk in chunks:
        part = fastnorm.moments(chunk, axis=-1)  # per channel, over everything else
        total = part if total is None else total.merge(part)
    if total is None:
        raise ValueError("no chunks")
    return total


total = total_moments([x_nhwc[:2], x_nhwc[2:]])
count: int = total.count
std: npt.NDArray[np.float64] = total.std(ddof=1)
stats = (total.mean, total.var())
y = fastnorm.batch_norm(x_nhwc, total.mean, total.var(), weight, bias, axis=-1)
total.update_running(running_mean, running_var, momentum=0.1)
centre, scale, shift = total.coefficients(weight, bias, eps=1e-5)

# -- backends ------------------------------------------------------------------------------

names: tuple[str, ...] = fastnorm.available_backends()
previous = fastnorm.get_backend()
fastnorm.set_backend("numpy")
with fastnorm.use_backend("numba"):
    y = fastnorm.batch_norm(x, training=True)
fastnorm.set_backend(previous)
fastnorm.set_num_threads(2)
info = fastnorm.build_info()
