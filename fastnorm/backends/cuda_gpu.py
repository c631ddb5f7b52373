"""The CUDA backend: :mod:`numba.cuda` kernels (``_cuda_kernels``) and their host drivers.

Two entry levels:

* **device drivers** (:func:`channel_forward`, :func:`rows_forward_device`,
  :func:`backward`), which the functional ops call once they have validated
  their arguments.  Data, statistics and coefficients stay on the device; the
  small per-(n, c) steps (merging split statistics and channel groups, rstd,
  the apply and backward coefficients, running-statistics updates) are tiny
  kernels too, so a call makes no host round trip unless its input, output or
  running buffers are NumPy arrays.
* the **host-array contract** of :mod:`fastnorm.backends.numpy_ref`
  (:func:`stats`, :func:`apply`, :func:`backward_reduce`, ...), which copies
  NumPy arrays over and back; it makes this module a complete backend for
  :mod:`fastnorm._core` and is what the contract tests compare.

Arrays: anything with ``__cuda_array_interface__`` (Numba device arrays, CuPy,
PyTorch CUDA tensors) stays on the device and results are Numba device arrays
(wrap them with ``cupy.asarray``/``torch.as_tensor`` without a copy); NumPy
input is copied to the device and results are copied back.  Kernels run on
Numba's default stream.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numba import cuda

from .._device import is_device_array
from . import _cuda_kernels as K
from ._types import F64 as F64Array
from ._types import Floats

NAME = "cuda"
SIMULATOR = K.SIMULATOR
F64 = np.dtype(np.float64)

__all__ = [
    "NAME",
    "SIMULATOR",
    "DeviceSaved",
    "apply",
    "as_numba",
    "astype",
    "backward",
    "backward_apply",
    "backward_reduce",
    "channel_forward",
    "expand0",
    "fill",
    "grouped_backward",
    "grouped_forward",
    "max_blocks",
    "rows_backward",
    "rows_forward",
    "rows_forward_device",
    "samples_forward",
    "shares_memory",
    "stats",
    "to_device",
    "to_host",
]


# ----------------------------------------------------------------------------
# launch configuration
# ----------------------------------------------------------------------------

_max_blocks: int | None = None


def max_blocks() -> int:
    """Blocks per launch (grid-stride loops cover the rest): 8 per SM; 3 in the simulator."""
    global _max_blocks
    if _max_blocks is None:
        if SIMULATOR:
            default = 3
        else:
            default = 8 * int(cuda.get_current_device().MULTIPROCESSOR_COUNT)
        _max_blocks = K._setting("FASTNORM_CUDA_BLOCKS", default, 1, 1 << 20)
    return _max_blocks


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _grid(tasks: int) -> int:
    return max(1, min(tasks, max_blocks()))


def _item_grid(items: int) -> int:
    """Grid for the one-thread-per-item kernels."""
    return max(1, min(_ceil(items, K.THREADS), max_blocks()))


def _runs_plan(groups: int, size: int, factor: int = 2) -> tuple[int, int]:
    """``(nsplit, chunk)``: blocks per group of ``size`` values, so ``groups`` fill the GPU."""
    nsplit = 1
    if groups < factor * max_blocks():
        nsplit = max(1, min(_ceil(factor * max_blocks(), max(groups, 1)),
                            size // (K.THREADS * K.VALUES)))
    return nsplit, _ceil(size, nsplit)


def _lanes_block(C: int) -> tuple[int, int]:
    """``(TX, TY)``: lanes along C (at most a warp, a power of two), rows along y."""
    tx = 1
    while tx < C and tx < min(32, max(1, K.THREADS // 4)):
        tx *= 2
    return tx, K.THREADS // tx


def _lanes_plan(N: int, A: int, C: int, factor: int = 2) -> tuple[tuple[int, int], int, int, int]:
    """Block shape, ``nsplit`` row pieces, rows per piece and task count of a channels-last launch."""
    tx, ty = _lanes_block(C)
    tasks = N * _ceil(C, tx)
    nsplit = 1
    if tasks < factor * max_blocks():
        nsplit = max(1, min(_ceil(factor * max_blocks(), max(tasks, 1)), A // (ty * K.VALUES)))
    return (tx, ty), nsplit, _ceil(A, nsplit), tasks * nsplit


def compute_dtype(dtype: np.dtype) -> np.dtype:
    return F64 if dtype == F64 else np.dtype(np.float32)


# ----------------------------------------------------------------------------
# device arrays
# ----------------------------------------------------------------------------


def as_numba(obj: Any) -> Any:
    """A Numba device array viewing ``obj`` (no copy)."""
    if getattr(type(obj), "__cuda_ndarray__", False):
        return obj
    if SIMULATOR:  # "device" pointers of the simulator are host pointers
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

        cai = obj.__cuda_array_interface__

        class _Host:
            __array_interface__: ClassVar[dict[str, Any]] = {
                "shape": tuple(cai["shape"]), "typestr": cai["typestr"], "data": cai["data"],
                "strides": cai.get("strides"), "version": 3,
            }

        return FakeCUDAArray(np.asarray(_Host()))
    return cuda.as_cuda_array(obj)


def _span(a: Any) -> tuple[int, int]:
    """Byte range ``[start, end)`` that device array ``a`` touches."""
    if SIMULATOR:
        host = a._ary
        start = host.__array_interface__["data"][0]
    else:
        start = a.__cuda_array_interface__["data"][0]
    lo = hi = start
    for n, s in zip(a.shape, a.strides):
        if n > 1:
            if s < 0:
                lo += (n - 1) * s
            else:
                hi += (n - 1) * s
    return lo, hi + a.dtype.itemsize


def shares_memory(a: Any, b: Any) -> bool:
    """Whether two device arrays' byte ranges overlap (a conservative test, like ``np.may_share_memory``)."""
    a, b = as_numba(a), as_numba(b)
    if a.size == 0 or b.size == 0:
        return False
    (a0, a1), (b0, b1) = _span(a), _span(b)
    return a0 < b1 and b0 < a1


def _same_memory(a: Any, b: Any) -> bool:
    return _span(a) == _span(b) and tuple(a.strides) == tuple(b.strides) and tuple(a.shape) == tuple(b.shape)


def _copy_into(dst: Any, src: Any) -> None:
    """``dst[...] = src`` for device arrays of one shape (any strides and dtypes)."""
    if dst.size:
        dst[...] = src


def to_device(a: Any, dtype: Any = None) -> Any:
    """C-contiguous device array of ``dtype`` (default: ``a``'s, native order) holding ``a``'s values.

    No copy when ``a`` already is one.
    """
    if is_device_array(a):
        d = as_numba(a)
        if (dtype is None or d.dtype == dtype) and d.is_c_contiguous():
            return d
        out = cuda.device_array(tuple(d.shape), dtype or d.dtype)
        _copy_into(out, d)
        return out
    a = np.asarray(a)
    return cuda.to_device(np.ascontiguousarray(a, dtype=dtype or a.dtype.newbyteorder("=")))


def to_host(a: Any) -> np.ndarray:
    """A NumPy copy of device array ``a`` (``np.asarray`` for anything else)."""
    if not is_device_array(a):
        return np.asarray(a)
    d = as_numba(a)
    if not d.is_c_contiguous():
        d = to_device(d)
    host: np.ndarray = d.copy_to_host()
    return host


def astype(a: Any, dtype: Any, shape: tuple[int, ...]) -> Any:
    """Device array ``a`` reshaped and converted (a new array)."""
    out = cuda.device_array(shape, np.dtype(dtype))
    _copy_into(out, to_device(a).reshape(shape))
    return out


def fill(a: Any, value: Any) -> None:
    """Write ``value`` (a scalar or host array broadcastable to ``a``) into device array ``a``."""
    d = as_numba(a)
    _copy_into(d, cuda.to_device(np.ascontiguousarray(np.broadcast_to(value, tuple(d.shape)),
                                                      dtype=d.dtype)))


def expand0(a: Any) -> Any:
    """``a[None]`` for a device array."""
    d = to_device(a)
    return d.reshape((1,) + tuple(d.shape))


def _flat(a: Any) -> Any:
    return a.reshape(a.size)


_dummies: dict[np.dtype, Any] = {}


def _dummy(dtype: Any) -> Any:
    """A one-element device array standing in for an absent parameter."""
    dtype = np.dtype(dtype)
    if dtype not in _dummies:
        _dummies[dtype] = cuda.to_device(np.zeros(1, dtype))
    return _dummies[dtype]


def _param(value: Any, dtype: Any = None) -> Any:
    """A 1-D device parameter: device arrays as they are (``dtype`` if given), host ones as float64."""
    if value is None:
        return None
    if is_device_array(value):
        d = as_numba(value)
        if d.ndim != 1 or (dtype is not None and d.dtype != dtype):
            d = _flat(to_device(d, dtype))
        return d
    return cuda.to_device(np.ascontiguousarray(np.asarray(value).reshape(-1), dtype=dtype or F64))


def _empty(n: int, dtype: Any = F64) -> Any:
    return cuda.device_array(n, dtype)


_local = threading.local()


def _scratch(tag: str, shape: int | tuple[int, ...], dtype: Any = F64) -> Any:
    """A device buffer for values that die with this call, reused by later calls of this thread.

    Numba's default allocator calls ``cuMemAlloc`` for every array; these
    small buffers are kept instead.  Reuse is safe: every launch and copy goes
    to the default stream in call order, so a later call's kernels run after
    this call's are done with the buffer.  Per thread, because two threads'
    launches would interleave.
    """
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    key = (tag, np.dtype(dtype))
    pool = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = {}
    entry: tuple[Any, dict[tuple[int, ...], Any]] | None = pool.get(key)  # (buffer, views by shape)
    if entry is not None and shape in entry[1]:
        return entry[1][shape]
    n = math.prod(shape)
    if entry is None or entry[0].size < n:
        entry = pool[key] = (cuda.device_array(max(n, 1), key[1]), {})
    if len(entry[1]) > 64:
        entry[1].clear()
    view = entry[1][shape] = entry[0][:n].reshape(shape)  # a view costs microseconds to make
    return view


# ----------------------------------------------------------------------------
# the steps, on flat device arrays and a canonical (N, A, C, B) view
# ----------------------------------------------------------------------------


def _stats_part(xf: Any, view: tuple[int, ...], runs: bool = False, absval: bool = False) -> tuple[Any, int]:
    """Partial ``(count, mean, M2)`` per ``(n, c, piece)`` (of ``|x|`` where ``absval``, which
    needs ``runs``); returns ``(part, nsplit)``."""
    N, A, C, B = view
    if B == 1 and not runs:
        block, nsplit, chunk, tasks = _lanes_plan(N, A, C)
        part = _scratch("stats", (N * C * nsplit, 3))
        K.stats_lanes[_grid(tasks), block](xf, N, A, C, nsplit, chunk, part)
    else:
        nsplit, chunk = _runs_plan(N * C, A * B)
        part = _scratch("stats", (N * C * nsplit, 3))
        K.stats_runs[_grid(N * C * nsplit), K.THREADS](xf, A, C, B, nsplit, chunk, int(absval), part)
    return part, nsplit


def _apply(xf: Any, view: tuple[int, ...], hi: Any, lo: Any, scale: Any, shift: Any, outf: Any) -> None:
    N, A, C, B = view
    if B == 1:
        block, nsplit, chunk, tasks = _lanes_plan(N, A, C, factor=4)
        K.apply_lanes[_grid(tasks), block](xf, N, A, C, nsplit, chunk, hi, lo, scale, shift, outf)
    else:
        nsplit, chunk = _runs_plan(N * C, A * B, factor=4)
        K.apply_runs[_grid(N * C * nsplit), K.THREADS](xf, A, C, B, nsplit, chunk, hi, lo, scale,
                                                      shift, outf)


def _bwd_reduce(xf: Any, dyf: Any, view: tuple[int, ...], mean_c: Any, wb: Any = None,
                runs: bool = False) -> tuple[Any, int]:
    """Partial ``(sum(g), sum(g * (x - mean)))`` per ``(n, c, piece)``, ``g = dy * wb[b]``."""
    N, A, C, B = view
    if B == 1 and not runs:
        block, nsplit, chunk, tasks = _lanes_plan(N, A, C)
        part = _scratch("sums", (N * C * nsplit, 2))
        K.bwd_reduce_lanes[_grid(tasks), block](xf, dyf, N, A, C, nsplit, chunk, mean_c, mean_c, 0,
                                                part)
    else:
        nsplit, chunk = _runs_plan(N * C, A * B)
        part = _scratch("sums", (N * C * nsplit, 2))
        has_wb = int(wb is not None)
        K.bwd_reduce_runs[_grid(N * C * nsplit), K.THREADS](
            xf, dyf, A, C, B, nsplit, chunk, mean_c, wb if has_wb else _dummy(F64), has_wb, part)
    return part, nsplit


def _bwd_apply(xf: Any, dyf: Any, view: tuple[int, ...], hi: Any, lo: Any, rs: Any, k1: Any, k2: Any,
               k3: Any, dxf: Any) -> None:
    N, A, C, B = view
    if B == 1:
        block, nsplit, chunk, tasks = _lanes_plan(N, A, C, factor=4)
        K.bwd_apply_lanes[_grid(tasks), block](xf, dyf, N, A, C, nsplit, chunk, hi, lo, rs, k1, k2,
                                               k3, dxf)
    else:
        nsplit, chunk = _runs_plan(N * C, A * B, factor=4)
        K.bwd_apply_runs[_grid(N * C * nsplit), K.THREADS](xf, dyf, A, C, B, nsplit, chunk, hi, lo,
                                                          rs, k1, k2, k3, dxf)


def _affine_args(w: Any, b: Any, dtype: Any = F64) -> tuple[Any, int, Any, int]:
    return (w if w is not None else _dummy(dtype), int(w is not None),
            b if b is not None else _dummy(dtype), int(b is not None))


# ----------------------------------------------------------------------------
# device drivers (called by fastnorm.functional after validation)
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceSaved:
    """What a backward pass needs from a forward run on the device (cf. ``_core.Saved``).

    ``x`` is the flat, C-contiguous device input in its own dtype; ``view`` its
    ``(N, A, C, B)`` view (``(R, 1, 1, M)`` for rows); ``mean``/``rstd`` float64
    device arrays per ``(n, c)`` or row; ``weight`` the 1-D device weight (any
    real dtype) or None, ``weight_ct`` its compute-dtype copy (rows only).
    """

    device: ClassVar[bool] = True

    x: Any
    view: tuple[int, int, int, int]
    mean: Any
    rstd: Any
    weight: Any
    batch_stats: bool
    shape: tuple[int, ...]
    dtype: np.dtype
    path: str = "channels"
    group: int = 1
    center: bool = True
    weight_ct: Any = None

    @property
    def param_size(self) -> int:
        return self.view[3] if self.path == "rows" else self.view[2]


def _output(xd: Any, out: Any, host: bool) -> tuple[Any, Any]:
    """``(result, out_device)``: where kernels write, and ``out`` as a device array (or None)."""
    shape = tuple(xd.shape)
    if host:  # copied to the host before the call returns
        return _scratch("result", shape, xd.dtype), None
    if out is None:
        return cuda.device_array(shape, xd.dtype), None
    od = as_numba(out)
    direct = od.is_c_contiguous() and (not shares_memory(od, xd) or _same_memory(od, xd))
    return (od if direct else _scratch("result", shape, xd.dtype)), od


def _finish(res: Any, host: bool, out: Any, out_dev: Any) -> Any:
    if host:
        y = res.copy_to_host()
        if out is None:
            return y
        np.copyto(out, y, casting="unsafe")
        return out
    if out is None:
        return res
    if res is not out_dev:
        _copy_into(out_dev, res)
    return out


@dataclass
class _Forward:
    y: Any
    mean: Any  # per (n, c) / row, float64 device
    rstd: Any
    var: Any  # per (n, group) / row, float64 device (None for running statistics)
    xf: Any
    weight: Any
    weight_ct: Any = None


def _channels(x: Any, view: tuple[int, ...], group: int, batch_stats: bool, run_mean: Any, run_var: Any,
              weight: Any, bias: Any, eps: float, out: Any) -> _Forward:
    host = not is_device_array(x)
    xd = to_device(x)
    res, out_dev = _output(xd, out, host)
    N, _, C, _ = view
    NC, G = N * C, N * (C // group) if C else 0
    w, b = _param(weight), _param(bias)
    mean_c, rstd_c = _empty(NC), _empty(NC)
    var_g = _scratch("var", G) if batch_stats else None
    xf = _flat(xd)
    if xd.size:
        ct = compute_dtype(xd.dtype)
        hi, lo, scale, shift = (_scratch(t, NC, ct) for t in ("hi", "lo", "scale", "shift"))
        if batch_stats:
            assert var_g is not None
            part, nsplit = _stats_part(xf, view)
            K.fin_stats[_item_grid(G), K.THREADS](part, nsplit, C, group, eps, 1, *_affine_args(w, b),
                                                  mean_c, rstd_c, var_g, hi, lo, scale, shift)
        else:
            K.fin_running[_item_grid(NC), K.THREADS](_param(run_mean), _param(run_var), C, eps,
                                                     *_affine_args(w, b), mean_c, rstd_c, hi, lo,
                                                     scale, shift)
        _apply(xf, view, hi, lo, scale, shift, _flat(res))
    y = _finish(res, host, out, out_dev)
    return _Forward(y, mean_c, rstd_c, var_g, xf, w)


def _update_running(run_mean: Any, run_var: Any, mean_c: Any, var_c: Any, N: int, factor: float,
                    bessel: float) -> None:
    """``running = (1 - factor) * running + factor * batch_stat`` (mean over ``N`` instances)."""
    if is_device_array(run_mean) and is_device_array(run_var):
        rm, rv = as_numba(run_mean), as_numba(run_var)
        K.running_update[_item_grid(rm.shape[0]), K.THREADS](rm, rv, mean_c, var_c, N, factor, bessel)
        return
    C = run_mean.shape[0]
    mean = mean_c.copy_to_host().reshape(N, C).mean(axis=0)
    var = (var_c.copy_to_host().reshape(N, C) * bessel).mean(axis=0)
    for buf, stat in ((run_mean, mean), (run_var, var)):
        current = to_host(buf)
        new = (1.0 - factor) * current + factor * stat
        if is_device_array(buf):
            fill(buf, new)
        else:
            buf[...] = new


def channel_forward(x: Any, view: tuple[int, int, int, int], group: int, batch_stats: bool, run_mean: Any,
                    run_var: Any, factor: float, bessel: float, weight: Any, bias: Any, eps: float,
                    out: Any, save: bool) -> tuple[Any, DeviceSaved | None]:
    """BatchNorm/InstanceNorm/GroupNorm forward on ``view = (N, A, C, B)``; returns ``(y, saved)``.

    ``batch_stats``: statistics of ``x`` (merged over ``group`` adjacent
    channels), updating the running buffers when given (mean over ``N`` of the
    per-instance statistics, variance times ``bessel``); otherwise the running
    buffers normalize.
    """
    f = _channels(x, view, group, batch_stats, run_mean, run_var, weight, bias, eps, out)
    if batch_stats and run_mean is not None and f.xf.size:
        _update_running(run_mean, run_var, f.mean, f.var, view[0], factor, bessel)
    saved = None
    if save:
        saved = DeviceSaved(f.xf, view, f.mean, f.rstd, f.weight, bool(batch_stats),
                            tuple(x.shape), np.dtype(x.dtype).newbyteorder("="), group=group)
    return f.y, saved


def _rows(x: Any, R: int, M: int, weight: Any, bias: Any, eps: float, center: bool, out: Any) -> _Forward:
    host = not is_device_array(x)
    xd = to_device(x)
    res, out_dev = _output(xd, out, host)
    size = xd.size
    ct = compute_dtype(xd.dtype)
    w = _param(weight)
    wct = _param(weight, ct)
    bct = _param(bias, ct)
    mean_r, rstd_r, var_r = _empty(R), _empty(R), _scratch("var", R)
    xf = _flat(xd)
    if size:
        hi, lo, rsc = (_scratch(t, R, ct) for t in ("hi", "lo", "scale"))
        affine = _affine_args(wct, bct, ct)
        if R >= max_blocks():
            K.rows_forward_fused[_grid(R), K.THREADS](xf, M, int(center), eps, *affine, _flat(res),
                                                     mean_r, rstd_r, var_r, hi, lo, rsc)
        else:  # few long rows: split each over blocks
            part, nsplit = _stats_part(xf, (R, 1, 1, M), runs=True, absval=not center)
            K.fin_stats[_item_grid(R), K.THREADS](part, nsplit, 1, 1, eps, int(center),
                                                  *_affine_args(None, None), mean_r, rstd_r, var_r,
                                                  hi, lo, rsc, _scratch("shift", R, ct))
            nsplit, chunk = _runs_plan(R, M, factor=4)
            K.rows_apply[_grid(R * nsplit), K.THREADS](xf, M, nsplit, chunk, hi, lo, rsc, *affine,
                                                      _flat(res))
    y = _finish(res, host, out, out_dev)
    return _Forward(y, mean_r, rstd_r, var_r, xf, w, wct)


def rows_forward_device(x: Any, trailing: int, weight: Any, bias: Any, eps: float, center: bool, out: Any,
                        save: bool) -> tuple[Any, DeviceSaved | None]:
    """LayerNorm/RMSNorm over the last ``trailing`` axes; returns ``(y, saved)``."""
    shape = tuple(x.shape)
    M = math.prod(shape[len(shape) - trailing:])
    R = math.prod(shape[: len(shape) - trailing])
    f = _rows(x, R, M, weight, bias, eps, center, out)
    saved = None
    if save:
        saved = DeviceSaved(f.xf, (R, 1, 1, M), f.mean, f.rstd, f.weight, True, shape,
                            np.dtype(x.dtype).newbyteorder("="), path="rows", center=bool(center),
                            weight_ct=f.weight_ct)
    return f.y, saved


def _backward_device(saved: DeviceSaved, dyf: Any) -> tuple[Any, Any, Any]:
    """``(dx, grad_weight, grad_bias)`` as flat device arrays."""
    xf = saved.x
    size = xf.size
    dxf = _empty(size, xf.dtype)
    P = saved.param_size
    if size == 0:
        return dxf, cuda.to_device(np.zeros(P)), cuda.to_device(np.zeros(P))
    ct = compute_dtype(xf.dtype)
    N, A, C, B = saved.view
    w = saved.weight
    gw, gb = _empty(P), _empty(P)
    if saved.path == "rows":
        R, M = N, B
        wct = saved.weight_ct
        has_w = int(w is not None)
        w64 = w if has_w else _dummy(F64)
        wct = wct if has_w else _dummy(ct)
        hi, lo, rsc, k2, k3 = (_scratch(t, R, ct) for t in ("hi", "lo", "scale", "k2", "k3"))
        if R >= max_blocks():
            K.rows_backward_fused[_grid(R), K.THREADS](xf, dyf, M, int(saved.center), saved.mean,
                                                      saved.rstd, w64, wct, has_w, dxf, hi, lo, rsc,
                                                      k2, k3)
        else:
            part, nsplit = _bwd_reduce(xf, dyf, saved.view, saved.mean, w, runs=True)
            K.bwd_fin[_item_grid(R), K.THREADS](part, nsplit, 1, 1, M, saved.mean, saved.rstd,
                                                _dummy(F64), 0, 1, int(saved.center),
                                                _scratch("sdy", R), _scratch("sdyx", R), hi, lo,
                                                rsc, _scratch("k1", R, ct), k2, k3)
            nsplit, chunk = _runs_plan(R, M, factor=4)
            K.rows_bwd_apply[_grid(R * nsplit), K.THREADS](xf, dyf, M, nsplit, chunk, hi, lo, rsc,
                                                          k2, k3, wct, has_w, dxf)
        block, nsplit, chunk, tasks = _lanes_plan(1, R, M)
        part = _scratch("columns", (M * nsplit, 2))
        K.bwd_reduce_lanes[_grid(tasks), block](xf, dyf, 1, R, M, nsplit, chunk, saved.mean,
                                                saved.rstd, 1, part)
        K.sum_parts[_item_grid(M), K.THREADS](part, nsplit, gb, gw)
        return dxf, gw, gb
    NC = N * C
    group = saved.group
    part, nsplit = _bwd_reduce(xf, dyf, saved.view, saved.mean)
    sdy, sdyx = _scratch("sdy", NC), _scratch("sdyx", NC)
    hi, lo, rs, k1, k2, k3 = (_scratch(t, NC, ct) for t in ("hi", "lo", "scale", "k1", "k2", "k3"))
    K.bwd_fin[_item_grid(N * (C // group)), K.THREADS](
        part, nsplit, C, group, A * B * group, saved.mean, saved.rstd,
        w if w is not None else _dummy(F64), int(w is not None), int(saved.batch_stats),
        int(saved.center), sdy, sdyx, hi, lo, rs, k1, k2, k3)
    _bwd_apply(xf, dyf, saved.view, hi, lo, rs, k1, k2, k3, dxf)
    K.grad_sums[_item_grid(C), K.THREADS](sdy, sdyx, saved.rstd, N, gw, gb)
    return dxf, gw, gb


def backward(saved: DeviceSaved, dy: Any) -> tuple[Any, Any, Any]:
    """Gradients of a device forward: ``(dx, grad_weight, grad_bias)`` (float64 parameter grads).

    ``dy`` (validated: float, the forward input's shape) may be a device or a
    NumPy array; the results are of the same kind.
    """
    host = not is_device_array(dy)
    dyd = to_device(dy, saved.x.dtype)
    dxf, gw, gb = _backward_device(saved, _flat(dyd))
    dx = dxf.reshape(saved.shape)
    if host:
        return dx.copy_to_host(), gw.copy_to_host(), gb.copy_to_host()
    return dx, gw, gb


# ----------------------------------------------------------------------------
# the host-array contract of numpy_ref (copies over and back)
# ----------------------------------------------------------------------------


def _host_coeffs(mean: F64Array, dtype: np.dtype[Any], *others: F64Array) -> list[Any]:
    hi = mean.astype(dtype)
    lo = (mean - hi).astype(dtype)
    return [cuda.to_device(np.ascontiguousarray(a.reshape(-1), dtype=dtype))
            for a in (hi, lo, *others)]


def stats(x4: Floats) -> tuple[F64Array, F64Array]:
    N, _, C, _ = x4.shape
    part, nsplit = _stats_part(_flat(to_device(x4)), x4.shape)
    mean, m2 = _empty(N * C), _empty(N * C)
    K.merge_parts[_item_grid(N * C), K.THREADS](part, nsplit, mean, m2)
    return mean.copy_to_host().reshape(N, C), m2.copy_to_host().reshape(N, C)


def apply(x4: Floats, mean: F64Array, scale: F64Array, shift: F64Array, out4: Floats) -> None:
    dt = compute_dtype(x4.dtype)
    res = _empty(x4.size, x4.dtype)
    hi, lo, sc, sh = _host_coeffs(mean, dt, scale, shift)
    _apply(_flat(to_device(x4)), x4.shape, hi, lo, sc, sh, res)
    out4[...] = res.copy_to_host().reshape(x4.shape)


def backward_reduce(x4: Floats, dy4: Floats, mean: F64Array) -> tuple[F64Array, F64Array]:
    N, _, C, _ = x4.shape
    part, nsplit = _bwd_reduce(_flat(to_device(x4)), _flat(to_device(dy4, x4.dtype)), x4.shape,
                               cuda.to_device(np.ascontiguousarray(mean.reshape(-1), dtype=F64)))
    s1, s2 = _empty(N * C), _empty(N * C)
    K.sum_parts[_item_grid(N * C), K.THREADS](part, nsplit, s1, s2)
    return s1.copy_to_host().reshape(N, C), s2.copy_to_host().reshape(N, C)


def backward_apply(x4: Floats, dy4: Floats, mean: F64Array, rstd: F64Array, k1: F64Array,
                   k2: F64Array, k3: F64Array, dx4: Floats) -> None:
    dt = compute_dtype(x4.dtype)
    res = _empty(x4.size, x4.dtype)
    hi, lo, rs, c1, c2, c3 = _host_coeffs(mean, dt, rstd, k1, k2, k3)
    _bwd_apply(_flat(to_device(x4)), _flat(to_device(dy4, x4.dtype)), x4.shape, hi, lo, rs, c1, c2,
               c3, res)
    dx4[...] = res.copy_to_host().reshape(x4.shape)


def rows_forward(x2: Floats, weight: Floats | None, bias: Floats | None, eps: float, center: bool,
                 out2: Floats) -> tuple[F64Array, F64Array]:
    f = _rows(x2, x2.shape[0], x2.shape[1], weight, bias, eps, center, None)
    out2[...] = f.y
    return f.mean.copy_to_host(), 1.0 / np.sqrt(f.var.copy_to_host() + eps)


def _host_saved(x: Floats, view: tuple[int, int, int, int], mean: F64Array, rstd: F64Array,
                weight: Floats | None, batch_stats: bool = True, group: int = 1, center: bool = True,
                path: str = "channels") -> DeviceSaved:
    xd = to_device(x)
    ct = compute_dtype(xd.dtype)
    return DeviceSaved(_flat(xd), view, cuda.to_device(np.ascontiguousarray(mean, dtype=F64).reshape(-1)),
                       cuda.to_device(np.ascontiguousarray(rstd, dtype=F64).reshape(-1)),
                       _param(weight), batch_stats, tuple(x.shape), xd.dtype, path=path,
                       group=group, center=center, weight_ct=_param(weight, ct))


def rows_backward(x2: Floats, dy2: Floats, mean: F64Array, rstd: F64Array, weight: Floats | None,
                  center: bool, dx2: Floats) -> tuple[F64Array, F64Array]:
    R, M = x2.shape
    saved = _host_saved(x2, (R, 1, 1, M), mean, rstd, weight, center=center, path="rows")
    dx, gw, gb = backward(saved, dy2)
    dx2[...] = dx
    return gw, gb


def grouped_forward(x2: Floats, groups: int, channel_len: int, weight: F64Array | None,
                    bias: F64Array | None, eps: float, out2: Floats) -> tuple[F64Array, F64Array]:
    R, L = x2.shape
    k = L // channel_len
    view = (R // groups, 1, groups * k, channel_len)
    f = _channels(x2, view, k, True, None, None, weight, bias, eps, None)
    out2[...] = f.y
    return f.mean.copy_to_host()[::k], f.var.copy_to_host()


def grouped_backward(x2: Floats, dy2: Floats, mean: F64Array, rstd: F64Array, groups: int, channel_len: int,
                     weight: F64Array | None, dx2: Floats) -> tuple[F64Array, F64Array]:
    R, L = x2.shape
    k = L // channel_len
    view = (R // groups, 1, groups * k, channel_len)
    saved = _host_saved(x2, view, np.repeat(mean, k), np.repeat(rstd, k), weight, group=k)
    dx, gw, gb = backward(saved, dy2)
    dx2[...] = dx
    return gw, gb


def samples_forward(x3: Floats, groups: int, weight: F64Array | None, bias: F64Array | None, eps: float,
                    out3: Floats) -> tuple[F64Array, F64Array]:
    N, S, C = x3.shape
    k = C // groups
    f = _channels(x3, (N, S, C, 1), k, True, None, None, weight, bias, eps, None)
    out3[...] = f.y
    return f.mean.copy_to_host().reshape(N, C)[:, ::k], f.var.copy_to_host().reshape(N, groups)
