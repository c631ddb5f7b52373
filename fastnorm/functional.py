"""Functional normalization ops: validate, take the canonical view, dispatch.

Each op checks every argument first, then computes, then writes running
statistics last, so a call that fails changes nothing.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from . import _axes, _core, _memory, _validate, _views
from .backends import backend_module, get_backend, get_num_threads

__all__ = ["batch_norm", "instance_norm", "group_norm", "layer_norm", "rms_norm"]

ONE_VALUE_MESSAGE = "Expected more than 1 value per channel when training, got input size {}"
ONE_SPATIAL_MESSAGE = "Expected more than 1 spatial element when training, got input size {}"


# -- shared plumbing ----------------------------------------------------------


@dataclass(slots=True)
class _Target:
    """The compute-dtype input and where results go.

    Kernels write into ``result``: the user's ``out`` when it is C-contiguous
    in compute dtype and either does not overlap the input or is exactly the
    input (elementwise in place is safe), otherwise a fresh buffer that
    :meth:`finish` copies into ``out``.
    """

    xc: np.ndarray
    result: np.ndarray
    out: np.ndarray | None
    dtype: np.dtype

    @classmethod
    def make(cls, x: np.ndarray, out: np.ndarray | None, save: bool = False) -> _Target:
        """``save``: the backward keeps ``xc``, so it must not be memory the call writes."""
        xc = _core.as_compute(x)
        if save and out is not None and xc is x and np.may_share_memory(out, x):
            xc = x.copy()
        if out is None:
            dtype = xc.dtype if xc is x else _validate.native(x.dtype)
            return cls(xc, _memory.empty_like(xc), None, dtype)
        dtype = _validate.native(x.dtype)
        direct = out.flags.c_contiguous and out.dtype == xc.dtype
        if direct and np.may_share_memory(out, xc):
            direct = (
                out.__array_interface__["data"][0] == xc.__array_interface__["data"][0]
                and out.strides == xc.strides
            )
        result = out if direct else _memory.empty(xc.shape, xc.dtype, beside=xc)
        return cls(xc, result, out, dtype)

    def finish(self) -> np.ndarray:
        if self.out is not None:
            if self.result is not self.out:
                np.copyto(self.out, self.result, casting="unsafe")
            return self.out
        if self.result.dtype != self.dtype:
            return _memory.cast(self.result, self.dtype)
        return self.result


@dataclass(slots=True)
class _Fuse:
    """The validated epilogue options of a call: ``activation`` name or None, its
    ``negative_slope``, the ``shortcut`` added before it (an array of ``x``'s shape) or None."""

    activation: str | None = None
    negative_slope: float = 0.01
    shortcut: np.ndarray | None = None

    @classmethod
    def make(cls, x: np.ndarray, activation: object, negative_slope: object, shortcut: object) -> _Fuse | None:
        act = _validate.activation(activation)
        slope = _validate.real_scalar(negative_slope, "negative_slope")
        sc = _validate.like_input(shortcut, "shortcut", x)
        if act is None and sc is None:
            return None
        return cls(act, slope, sc)

    def epilogue(self, target: _Target, save: bool, bias: np.ndarray | None, eps: float) -> _core.Epilogue:
        """The core's epilogue for a call writing ``target.result``: the shortcut in compute
        dtype, copied where it shares memory with the result (unless it is the result
        itself, on a backend whose kernels read each shortcut value before they write that
        output value, and it is not kept for a backward)."""
        sc = self.shortcut
        if sc is not None:
            res = target.result
            sc_c = np.ascontiguousarray(sc, dtype=res.dtype)
            if np.may_share_memory(sc_c, res):
                same = (sc_c.__array_interface__["data"][0] == res.__array_interface__["data"][0]
                        and sc_c.strides == res.strides)
                if save or not same or not getattr(backend_module(), "SHORTCUT_MAY_BE_OUT", False):
                    sc_c = sc_c.copy()
            sc = sc_c
        act = 0 if self.activation is None else _core.ACTIVATIONS[self.activation]
        return _core.Epilogue(act, self.negative_slope, sc, bias, eps)


def _host64(a: Any) -> np.ndarray:
    return np.asarray(a if isinstance(a, np.ndarray) else _cuda().to_host(a), dtype=np.float64)


def _channel_stats(saved: Any, n: int, c: int, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """A channel op's ``(mean, rstd)`` as ``(n, groups)`` float64, from its saved forward."""
    if not c:
        return np.zeros((n, groups)), np.zeros((n, groups))
    group = c // groups if groups else 1
    out = []
    for a in (saved.mean, saved.rstd):
        a = _host64(a)
        out.append(a.reshape(n, groups) if a.size == n * groups else a.reshape(n, c)[:, ::group])
    return out[0], out[1]


def _fuse_on_cuda(fuse: _Fuse | None, residual: object = None) -> None:
    if fuse is not None or residual is not None:
        raise NotImplementedError(
            "activation=, shortcut= and residual= run on the CPU backends (cython, numba, numpy); "
            "the cuda backend does not have them"
        )


def _check_out(out: np.ndarray | None, x: np.ndarray) -> np.ndarray | None:
    if out is None:
        return None
    return _validate.out_array(out, x.shape, x.dtype, device=not isinstance(x, np.ndarray))


def _on_cuda() -> bool:
    """Whether the ``cuda`` backend runs this call (validated arguments are then handed to it)."""
    return get_backend() == "cuda"


def _cuda():
    return backend_module("cuda")


def _as64(a: np.ndarray | None) -> np.ndarray | None:
    return None if a is None else a.astype(np.float64)


def _normalize_channels(
    view: np.ndarray, result_view: np.ndarray, mean, var, eps, weight, bias, *, group: int = 1,
    ep: _core.Epilogue | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Shared tail of the channel ops: rstd, apply; returns ``(mean, rstd)`` ``(N, C)``."""
    mean, var = _core.merge_groups(mean, var, group)
    rstd = _core.rstd_of(var, eps)
    if view.size:
        _core.normalize(backend_module(), view, mean, rstd, weight, bias, result_view, _core.epi_args(ep))
    return mean, rstd


def _grouped_forward(target, view, axis, num_groups, eps, w64, b64, save, ep=None):
    """Fused channels-first path; returns ``(mean, var)`` ``(N, G)`` and the saved state."""
    result_view = _views.instance_view(target.result, axis)
    mean, var = _core.normalize_grouped(backend_module(), view, num_groups, w64, b64, eps, result_view,
                                        _core.epi_args(ep))
    saved = None
    if save:
        n, _, c, s = view.shape
        rows = (n * num_groups, (c // num_groups) * s)
        saved = _core.Saved(
            view.reshape(rows), mean.reshape(-1), _core.rstd_of(var, eps).reshape(-1), w64, True,
            target.xc.shape, target.dtype, path="grouped", num_groups=num_groups, channel_len=s,
            epilogue=ep,
        )
    return mean, var, saved


def _samples_forward(target, view, axis, num_groups, eps, w64, b64, save, ep=None):
    """Fused channels-last path; returns ``(mean, var)`` ``(N, G)`` and the saved state."""
    result_view = _views.instance_view(target.result, axis)
    mean, var = _core.normalize_samples(backend_module(), view, num_groups, w64, b64, eps, result_view,
                                        _core.epi_args(ep))
    saved = None
    if save:
        group = view.shape[2] // num_groups
        saved = _core.Saved(
            view, np.repeat(mean, group, axis=1), np.repeat(_core.rstd_of(var, eps), group, axis=1),
            w64, True, target.xc.shape, target.dtype, group=group, epilogue=ep,
        )
    return mean, var, saved


def _one_call_forward(target, view, axis, given, eps, w64, b64, save, ep=None):
    """Normalization in one backend call, or None where the backend has none for this input:
    statistics and apply of a small input (``given`` None), or inference with ``given`` float64
    ``(N, C)`` ``(mean, var)``.  Returns ``(mean, var)`` ``(N, C)`` and the saved state."""
    result_view = _views.instance_view(target.result, axis)
    epi = _core.epi_args(ep)
    if given is None:
        fused = _core.normalize_small(backend_module(), view, None, None, w64, b64, eps, result_view, epi)
    else:
        fused = _core.normalize_given(backend_module(), view, *given, w64, b64, eps, result_view, epi)
    if fused is None:
        return None
    mean, var, rstd = fused
    saved = None
    if save:
        saved = _core.Saved(view, mean, rstd, w64, given is None, target.xc.shape, target.dtype,
                            epilogue=ep)
    return mean, var, saved


def _fused_forward(target, view, axis, num_groups, eps, w64, b64, save, ep=None):
    """The fused path for this view, or None when the general channels path serves it better."""
    if num_groups == view.shape[2]:
        small = _one_call_forward(target, view, axis, None, eps, w64, b64, save, ep)
        if small is not None:
            return small
    threads = get_num_threads()
    if _core.grouped_ok(view, num_groups, threads):
        return _grouped_forward(target, view, axis, num_groups, eps, w64, b64, save, ep)
    if _core.samples_ok(view, threads):
        return _samples_forward(target, view, axis, num_groups, eps, w64, b64, save, ep)
    return None


def _running_pair(running_mean, running_var, channels: int, updated: bool):
    """Validate optional running statistics; returns ``(mean, var)`` arrays or ``(None, None)``."""
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together (or both None)")
    if running_mean is None:
        return None, None
    run_mean = _validate.running_buffer(running_mean, "running_mean", channels, updated=updated)
    run_var = _validate.running_buffer(running_var, "running_var", channels, updated=updated)
    return run_mean, run_var


def _apart(out, weight, bias, run_mean=None, run_var=None, updated=False):
    """The arrays of a call made safe beside ``out`` (:func:`fastnorm._validate.apart_from_out`):
    running statistics updated in place must not share memory with ``out`` or each other; the
    arrays only read are copied where they share memory with ``out``.  Returns
    ``(weight, bias, run_mean, run_var)``."""
    if out is None and not (updated and _validate.may_share_memory(run_mean, run_var)):
        return weight, bias, run_mean, run_var
    running = {"running_mean": run_mean, "running_var": run_var}
    read = {"weight": weight, "bias": bias}
    if not updated:
        read.update(running)
    safe = _validate.apart_from_out(out, running if updated else {}, read)
    return safe["weight"], safe["bias"], safe.get("running_mean", run_mean), safe.get("running_var", run_var)


def _momentum(momentum: object) -> float:
    if momentum is None:
        raise TypeError(
            "momentum must be a real number; momentum=None (cumulative average) "
            "is a feature of the layers, which count the batches"
        )
    return _validate.momentum(momentum)


def _channel_input(x: ArrayLike, axis: object, min_ndim: int) -> tuple[np.ndarray, int]:
    x = _validate.float_array(x, "x")
    _validate.min_ndim(x, "x", min_ndim)
    return x, _validate.channel_axis(axis, x.ndim)


# -- batch norm ---------------------------------------------------------------


def _batch_norm(
    x: ArrayLike,
    running_mean: ArrayLike | None,
    running_var: ArrayLike | None,
    weight: ArrayLike | None,
    bias: ArrayLike | None,
    training: bool,
    momentum: float | None,
    eps: float,
    axis: int,
    out: np.ndarray | None,
    save: bool,
    sync: Any = None,
    fuse: _Fuse | None = None,
    virtual_batch_size: int | None = None,
    renorm: Any = None,
    mask: object = None,
) -> tuple[np.ndarray, _core.Saved | None]:
    """``batch_norm``; ``sync`` (training only) makes the batch statistics those of a batch
    spread over several processes: ``sync.stats(count, mean, m2)`` maps this process's
    float64 ``(C,)`` moments to the whole batch's, ``sync.grads`` is the backward's
    :attr:`fastnorm._core.Saved.reduce`.  ``virtual_batch_size`` (training only): ghost
    batch normalization, statistics per virtual batch.  ``renorm`` (training only): Batch
    Renormalization's state, :class:`_Renorm`.  ``mask``: statistics over its True values."""
    if out is None and sync is None and fuse is None and virtual_batch_size is None \
            and renorm is None and mask is None:
        plain = _batch_norm_plain(x, running_mean, running_var, weight, bias, training, momentum,
                                  eps, axis, save)
        if plain is not None:
            return plain
    x, axis = _channel_input(x, axis, 2)
    channels = x.shape[axis]
    training = bool(training)
    if mask is not None:
        mask = _axes.as_mask(mask, x.shape)
        if training and (virtual_batch_size is not None or sync is not None or renorm is not None):
            raise ValueError("mask cannot be combined with virtual_batch_size, Batch Renormalization "
                             "or synchronization across processes")
        if not x.size:
            mask = None
    vbs = _virtual_batch(virtual_batch_size, x, axis, used=training)
    if vbs is not None and sync is not None:
        raise ValueError("virtual_batch_size: ghost batches are not synchronized across processes")
    renorm = renorm if training else None
    if renorm is not None and (vbs is not None or sync is not None):
        raise ValueError("Batch Renormalization takes neither virtual batches nor synchronization")
    run_mean, run_var = _running_pair(running_mean, running_var, channels, training)
    if not training and run_mean is None:
        raise ValueError(
            "running_mean and running_var are required when training=False "
            "(pass training=True to normalize with batch statistics)"
        )
    weight = _validate.param_vector(weight, "weight", channels)
    bias = _validate.param_vector(bias, "bias", channels)
    eps = _validate.real_scalar(eps, "eps", minimum=0.0)
    factor = _momentum(momentum) if training and run_mean is not None else 0.0
    count = x.size // channels if channels else 0
    if vbs is not None:  # the values behind each statistic: one virtual batch's
        count = count // (x.shape[0] // vbs) if x.shape[0] else 0
    sync = sync if training else None
    if training and count <= 1 and sync is None and x.size and mask is None:  # empty: empty, as PyTorch
        raise ValueError(ONE_VALUE_MESSAGE.format(x.shape))
    out = _check_out(out, x)
    weight, bias, run_mean, run_var = _apart(out, weight, bias, run_mean, run_var,
                                             updated=training and run_mean is not None)
    if _on_cuda():
        _fuse_on_cuda(fuse)
        if mask is not None:
            raise NotImplementedError("mask= runs on the CPU backends (cython, numba, numpy)")
        if renorm is not None:
            raise NotImplementedError("Batch Renormalization runs on the CPU backends")
        shape = tuple(x.shape)
        cview = (1, math.prod(shape[:axis]), channels, math.prod(shape[axis + 1:]))
        if vbs is not None:
            cview = (shape[0] // vbs, vbs * math.prod(shape[1:axis]), channels, math.prod(shape[axis + 1:]))
        bessel = count / (count - 1) if training else 1.0
        return _cuda().channel_forward(x, cview, 1, training, run_mean, run_var, factor, bessel,
                                       weight, bias, eps, out, save)

    backend = backend_module()
    target = _Target.make(x, out, save)
    w64, b64 = _as64(weight), _as64(bias)
    if renorm is not None:
        return _renormalized(target, axis, run_mean, run_var, factor, count, eps, w64, b64, fuse, save,
                             renorm)
    ep = None if fuse is None else fuse.epilogue(target, save, b64, eps)
    if mask is not None:
        return _masked_batch_norm(target, axis, mask, training, run_mean, run_var, factor, eps, w64,
                                  b64, save, ep)
    if vbs is not None:
        return _ghost_batch_norm(target, axis, vbs, run_mean, run_var, factor, count, eps, w64, b64,
                                 save, ep)
    view = _views.batch_norm_view(target.xc, axis)
    result_view = _views.batch_norm_view(target.result, axis)
    epi = _core.epi_args(ep)
    if sync is not None:
        local_mean, local_m2 = backend.stats(view) if x.size else (np.zeros((1, channels)),) * 2
        count, given_mean, m2 = sync.stats(count, local_mean[0], local_m2[0])
        if count <= 1:
            raise ValueError(ONE_VALUE_MESSAGE.format(f"{x.shape} (the batch of every rank: {count})"))
        given_mean = given_mean.reshape(1, channels)
        given_var = (m2 / count).reshape(1, channels)
        fused = _core.normalize_given(backend, view, given_mean, given_var, w64, b64, eps, result_view, epi)
    elif training:
        fused = _core.normalize_small(backend, view, None, None, w64, b64, eps, result_view, epi)
    else:
        given_mean = run_mean.astype(np.float64).reshape(1, channels)
        given_var = run_var.astype(np.float64).reshape(1, channels)
        fused = _core.normalize_given(backend, view, given_mean, given_var, w64, b64, eps, result_view, epi)
    if fused is not None:
        mean, var, rstd = fused
    else:
        if training and sync is None:
            mean, var = _core.moments(backend, view) if x.size else (np.zeros((1, channels)),) * 2
        else:
            mean, var = given_mean, given_var
        mean, rstd = _normalize_channels(view, result_view, mean, var, eps, w64, b64, ep=ep)
    y = target.finish()
    if training and run_mean is not None and count:  # the whole batch's count (every rank's)
        _core.update_running(backend, run_mean, run_var, mean[0], var[0], factor, count / (count - 1))
    saved = None
    if save:
        saved = _core.Saved(view, mean, rstd, w64, training, x.shape, target.dtype,
                            reduce=None if sync is None else sync.grads, epilogue=ep)
    return y, saved


def _batch_norm_plain(x, running_mean, running_var, weight, bias, training, momentum, eps, axis,
                      save):
    """:func:`_batch_norm` of a small plain call in one backend call: a C-contiguous float32 or
    float64 ndarray, float32/float64 ``(C,)`` parameters, running statistics that own their
    memory (so they cannot overlap) and ``momentum`` and ``eps`` floats, on a backend with a
    one-call path.  None for any other call, which the general path validates."""
    if type(x) is not np.ndarray or not 0 < x.size <= _core.SMALL_SIZE or x.ndim < 2 \
            or type(axis) is not int or not -x.ndim <= axis < x.ndim:
        return None
    if x.dtype not in _core._NATIVE_COMPUTE or not x.flags.c_contiguous:
        return None
    axis = axis % x.ndim
    channels = x.shape[axis]
    training = bool(training)
    count = x.size // channels
    if type(eps) is not float or not eps >= 0.0 or (training and count <= 1):
        return None
    plain = (channels,)
    for a in (weight, bias, running_mean, running_var):
        if a is not None and (type(a) is not np.ndarray or a.shape != plain
                              or a.dtype not in _core._NATIVE_COMPUTE):
            return None
    if running_mean is None or running_var is None:
        if not training or running_mean is not running_var:
            return None
        factor = 0.0
    else:
        if running_mean.dtype != running_var.dtype or running_mean is running_var:
            return None
        if training and not (running_mean.base is None and running_var.base is None
                             and running_mean.flags.writeable and running_var.flags.writeable):
            return None
        if type(momentum) is not float or not 0.0 <= momentum <= 1.0:
            return None
        factor = momentum if training else 0.0
    name = get_backend()
    small = None if name == "cuda" else getattr(backend_module(name), "channels_small", None)
    if small is None:
        return None
    shape = x.shape
    shape4 = (1, math.prod(shape[:axis]), channels, math.prod(shape[axis + 1:]))
    view = x.reshape(shape4)
    y = np.empty_like(x)
    w64 = None if weight is None else weight.astype(np.float64)
    b64 = None if bias is None else bias.astype(np.float64)
    if training:
        mean, var, rstd = small(view, None, None, w64, b64, eps, y.reshape(shape4))
        if running_mean is not None:
            _core.update_running(backend_module(name), running_mean, running_var, mean[0], var[0],
                                 factor, count / (count - 1))
    else:
        mean, var, rstd = small(view, running_mean.astype(np.float64).reshape(1, channels),
                                running_var.astype(np.float64).reshape(1, channels), w64, b64, eps,
                                y.reshape(shape4))
    saved = _core.Saved(view, mean, rstd, w64, training, x.shape, x.dtype) if save else None
    return y, saved


def _masked_batch_norm(target, axis, mask, training, run_mean, run_var, factor, eps, w64, b64, save, ep):
    """Batch normalization with the statistics of the values where ``mask`` is True (the
    running ones in inference), 0 in the output elsewhere."""
    backend = backend_module()
    view = _views.batch_norm_view(target.xc, axis)
    result_view = _views.batch_norm_view(target.result, axis)
    m4 = np.ascontiguousarray(mask).reshape(view.shape)
    channels = view.shape[2]
    count = None
    if training:
        mean, var, count = _core.masked_moments(backend, view, m4)
        if count.min() <= 1:
            raise ValueError(ONE_VALUE_MESSAGE.format(
                f"{target.xc.shape} (values the mask keeps in a channel: {int(count.min())})"))
    else:
        mean = run_mean.astype(np.float64).reshape(1, channels)
        var = run_var.astype(np.float64).reshape(1, channels)
    with np.errstate(invalid="ignore", over="ignore"):  # values left out may be anything
        mean, rstd = _normalize_channels(view, result_view, mean, var, eps, w64, b64, ep=ep)
    _core.left_out_zero(result_view, m4)
    y = target.finish()
    if training and run_mean is not None:  # the unbiased variance of each channel's kept values
        unbiased = var[0] * (count[0] / (count[0] - 1))
        _core.update_running(backend, run_mean, run_var, mean[0], unbiased, factor, 1.0)
    saved = None
    if save:
        saved = _core.Saved(view, mean, rstd, w64, training, target.xc.shape, target.dtype, epilogue=ep,
                            mask=m4, count=count)
    return y, saved


def _virtual_batch(value: object, x: np.ndarray, axis: int, used: bool = True) -> int | None:
    """``virtual_batch_size``: None, or a positive int; where the call ``used`` it (batch
    statistics), it must divide the batch (axis 0, which must not be the channel axis), and
    is returned (None otherwise)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"virtual_batch_size must be an int or None, got {value!r}")
    value = int(value)
    if value < 1:
        raise ValueError(f"virtual_batch_size must be positive, got {value}")
    if not used:
        return None
    if axis == 0:
        raise ValueError("virtual_batch_size: the batch is axis 0, which here is the channel axis")
    if x.shape[0] % value:
        raise ValueError(f"virtual_batch_size ({value}) must divide the batch size ({x.shape[0]})")
    return value


def _ghost_batch_norm(target, axis, vbs, run_mean, run_var, factor, count, eps, w64, b64, save, ep):
    """Ghost batch normalization: the channels path on the ``(G, A, C, B)`` view of the
    virtual batches; running statistics updated with the mean over virtual batches of their
    mean and unbiased variance."""
    backend = backend_module()
    view = _views.ghost_view(target.xc, axis, vbs)
    c = view.shape[2]
    if view.size:
        mean, var = _core.moments(backend, view)
    else:
        mean = var = np.zeros((view.shape[0], c))
    mean, rstd = _normalize_channels(view, _views.ghost_view(target.result, axis, vbs), mean, var,
                                     eps, w64, b64, ep=ep)
    y = target.finish()
    if run_mean is not None and view.size:
        _core.update_running(backend, run_mean, run_var, mean.mean(axis=0), var.mean(axis=0), factor,
                             count / (count - 1))
    saved = None
    if save:
        saved = _core.Saved(view, np.ascontiguousarray(mean), np.ascontiguousarray(rstd), w64, True,
                            target.xc.shape, target.dtype, epilogue=ep)
    return y, saved


@dataclass(slots=True)
class _Renorm:
    """Batch Renormalization's state (Ioffe 2017): the moving mean and standard deviation the
    corrections are taken against (updated in place, with ``factor``, after a successful
    step) and the clipping ``r`` in ``[rmin, rmax]``, ``d`` in ``[-dmax, dmax]``."""

    mean: np.ndarray
    std: np.ndarray
    factor: float
    rmax: float
    rmin: float
    dmax: float

    def correction(self, mean: np.ndarray, var: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
        """``r = clip(sigma_B / std, rmin, rmax)``, ``d = clip((mean_B - mean) / std, -dmax,
        dmax)``, float64, with the state before this step."""
        sigma = np.sqrt(var + eps)
        std = self.std.astype(np.float64)
        r = np.clip(sigma / std, self.rmin, self.rmax)
        d = np.clip((mean - self.mean.astype(np.float64)) / std, -self.dmax, self.dmax)
        return r, d

    def update(self, mean: np.ndarray, var: np.ndarray, eps: float) -> None:
        f = self.factor
        new_mean = (1.0 - f) * self.mean.astype(np.float64) + f * mean
        new_std = (1.0 - f) * self.std.astype(np.float64) + f * np.sqrt(var + eps)
        self.mean[...] = new_mean
        self.std[...] = new_std


def _renormalized(target, axis, run_mean, run_var, factor, count, eps, w64, b64, fuse, save, renorm):
    """Batch Renormalization's training step: ``y = ((x - mean_B) / sigma_B * r + d) * w + b``,
    the channels path with weight ``w * r`` and bias ``b + w * d`` (``r``, ``d`` constants of
    the gradient); the running statistics as BatchNorm's, then the renorm state."""
    backend = backend_module()
    view = _views.batch_norm_view(target.xc, axis)
    c = view.shape[2]
    mean, var = _core.moments(backend, view) if view.size else (np.zeros((1, c)),) * 2
    r, d = renorm.correction(mean[0], var[0], eps)
    w = np.ones(c) if w64 is None else w64
    w_eff = w * r
    b_eff = (0.0 if b64 is None else b64) + w * d
    ep = None if fuse is None else fuse.epilogue(target, save, b_eff, eps)
    mean, rstd = _normalize_channels(view, _views.batch_norm_view(target.result, axis), mean, var, eps,
                                     w_eff, b_eff, ep=ep)
    y = target.finish()
    if run_mean is not None and count:
        _core.update_running(backend, run_mean, run_var, mean[0], var[0], factor, count / (count - 1))
    if view.size:
        renorm.update(mean[0], var[0], eps)
    saved = None
    if save:
        saved = _core.Saved(view, mean, rstd, w_eff, True, target.xc.shape, target.dtype, epilogue=ep,
                            renorm=(r, d))
    return y, saved


def batch_norm(
    x: ArrayLike,
    running_mean: ArrayLike | None = None,
    running_var: ArrayLike | None = None,
    weight: ArrayLike | None = None,
    bias: ArrayLike | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    axis: int = 1,
    out: np.ndarray | None = None,
    activation: str | None = None,
    negative_slope: float = 0.01,
    shortcut: ArrayLike | None = None,
    return_stats: bool = False,
    virtual_batch_size: int | None = None,
    mask: ArrayLike | None = None,
) -> Any:
    """Batch normalization, as ``torch.nn.functional.batch_norm``.

    Normalizes each channel over every other axis:
    ``y = (x - mean) / sqrt(var + eps) * weight + bias``.

    Parameters
    ----------
    x : array_like, shape ``(N, C, *)`` for ``axis=1`` or ``(N, *, C)`` for ``axis=-1``
        float16, float32 or float64; at least 2-D.
    running_mean, running_var : ndarray, shape ``(C,)``, optional
        Used to normalize when ``training=False`` (then required).  When
        ``training=True`` they are updated in place with the batch mean and
        the *unbiased* batch variance:
        ``running = (1 - momentum) * running + momentum * batch_stat``.
    weight, bias : array_like, shape ``(C,)``, optional
        Per-channel scale and shift.
    training : bool
        Normalize with the statistics of ``x`` (and update the running ones).
    momentum : float
        Weight of the batch statistic in the running update.
    eps : float
        Added to the variance before the square root.
    axis : int
        The channel axis: ``1`` (channels-first), ``-1`` (channels-last) or any
        other axis of ``x``.
    out : ndarray, optional
        Of ``x``'s shape and dtype; may be ``x`` itself.
    activation : {None, "relu", "leaky_relu", "gelu", "gelu_tanh", "silu"}
        Applied to the result in the same pass over memory as the
        normalization: ``y = activation(norm(x) + shortcut)``.  ``"gelu"`` is
        the exact (erf) form, ``"gelu_tanh"`` the tanh approximation.
    negative_slope : float
        The slope of ``"leaky_relu"`` for negative values.
    shortcut : array_like, shape of ``x``, optional
        Added after the normalization and before the activation (the tail of
        a residual block), in the same pass.  May be ``out``.

    return_stats : bool
        Also return the statistics the call normalized with: ``(y, mean,
        rstd)``, float64 NumPy arrays of shape ``(C,)``, ``rstd = 1 / sqrt(var +
        eps)`` (the batch's in training, the running ones otherwise), for
        :func:`batch_norm_backward`; ``(G, C)`` with ``virtual_batch_size``.
    virtual_batch_size : int, optional
        Ghost batch normalization (training only, as Keras's option of that
        name): the batch (axis 0) is split into ``G = N / virtual_batch_size``
        consecutive virtual batches, each normalized with its own statistics;
        the running statistics are updated with the mean over virtual batches
        of their mean and unbiased variance.  Must divide ``N``.
    mask : array_like of bool, optional
        Broadcastable to ``x``: in training, each channel's statistics (and the
        running update, with the unbiased variance of the values kept) are
        taken over the values where it is True only: padding positions of a
        sequence batch, invalid pixels.  The output is 0 where it is False,
        and the backward gives those values a zero gradient.  In training each
        channel must keep more than one value.

    Returns
    -------
    ndarray
        Same shape and dtype as ``x`` (``out`` when given).

    Statistics are exact to float64 accuracy (blocked Welford/Chan); float16
    is computed in float32 and rounded once.
    """
    x = _validate.float_array(x, "x")
    fuse = None
    if activation is not None or shortcut is not None or type(negative_slope) is not float:
        fuse = _Fuse.make(x, activation, negative_slope, shortcut)
    y, saved = _batch_norm(
        x, running_mean, running_var, weight, bias, training, momentum, eps, axis, out,
        save=bool(return_stats), fuse=fuse, virtual_batch_size=virtual_batch_size, mask=mask,
    )
    if return_stats:
        c = x.shape[_validate.channel_axis(axis, x.ndim)]
        if training and virtual_batch_size is not None:
            return (y, *_channel_stats(saved, x.shape[0] // int(virtual_batch_size), c, c))
        mean, rstd = _channel_stats(saved, 1, c, c)
        return y, mean[0], rstd[0]
    return y


# -- instance norm ------------------------------------------------------------


def _instance_axis(x: np.ndarray, axis: object) -> int:
    axis = _validate.channel_axis(axis, x.ndim)
    if axis == 0:
        raise ValueError("axis 0 is the batch axis; the channel axis of instance/group norm must be >= 1")
    return axis


def _instance_norm(
    x: ArrayLike,
    running_mean: ArrayLike | None,
    running_var: ArrayLike | None,
    weight: ArrayLike | None,
    bias: ArrayLike | None,
    use_input_stats: bool,
    momentum: float | None,
    eps: float,
    axis: int,
    out: np.ndarray | None,
    save: bool,
    fuse: _Fuse | None = None,
) -> tuple[np.ndarray, _core.Saved | None]:
    x = _validate.float_array(x, "x")
    _validate.min_ndim(x, "x", 3)
    axis = _instance_axis(x, axis)
    channels = x.shape[axis]
    use_input_stats = bool(use_input_stats)
    run_mean, run_var = _running_pair(running_mean, running_var, channels, use_input_stats)
    if not use_input_stats and run_mean is None:
        raise ValueError("running_mean and running_var are required when use_input_stats=False")
    weight = _validate.param_vector(weight, "weight", channels)
    bias = _validate.param_vector(bias, "bias", channels)
    eps = _validate.real_scalar(eps, "eps", minimum=0.0)
    factor = _momentum(momentum) if use_input_stats and run_mean is not None else 0.0
    spatial = x.size // (x.shape[0] * channels) if x.shape[0] * channels else 0
    if use_input_stats and spatial <= 1 and x.size:  # empty input: empty output, as PyTorch
        raise ValueError(ONE_SPATIAL_MESSAGE.format(x.shape))
    out = _check_out(out, x)
    weight, bias, run_mean, run_var = _apart(out, weight, bias, run_mean, run_var,
                                             updated=use_input_stats and run_mean is not None)
    if _on_cuda():
        _fuse_on_cuda(fuse)
        shape = tuple(x.shape)
        cview = (shape[0], math.prod(shape[1:axis]), channels, math.prod(shape[axis + 1:]))
        bessel = spatial / (spatial - 1) if use_input_stats else 1.0
        return _cuda().channel_forward(x, cview, 1, use_input_stats, run_mean, run_var, factor,
                                       bessel, weight, bias, eps, out, save)

    target = _Target.make(x, out, save)
    view = _views.instance_view(target.xc, axis)
    n = x.shape[0]
    w64, b64 = _as64(weight), _as64(bias)
    ep = None if fuse is None else fuse.epilogue(target, save, b64, eps)
    saved = None
    fused = None
    if use_input_stats and x.size:
        fused = _fused_forward(target, view, axis, channels, eps, w64, b64, save, ep)
    elif x.size:
        given = (np.repeat(run_mean.astype(np.float64).reshape(1, channels), n, axis=0),
                 np.repeat(run_var.astype(np.float64).reshape(1, channels), n, axis=0))
        fused = _one_call_forward(target, view, axis, given, eps, w64, b64, save, ep)
    if fused is not None:
        mean, var, saved = fused
    else:
        if use_input_stats:
            mean, var = _core.moments(backend_module(), view) if x.size else (np.zeros((n, channels)),) * 2
        else:
            mean = np.broadcast_to(run_mean.astype(np.float64), (n, channels))
            var = np.broadcast_to(run_var.astype(np.float64), (n, channels))
        mean, rstd = _normalize_channels(
            view, _views.instance_view(target.result, axis), mean, var, eps, w64, b64, ep=ep
        )
        if save:
            saved = _core.Saved(view, np.ascontiguousarray(mean), np.ascontiguousarray(rstd), w64,
                                use_input_stats, x.shape, target.dtype, epilogue=ep)
    y = target.finish()
    if use_input_stats and run_mean is not None and x.size:
        _core.update_running(backend_module(), run_mean, run_var, mean.mean(axis=0),
                             var.mean(axis=0), factor, spatial / (spatial - 1))
    return y, saved


def instance_norm(
    x: ArrayLike,
    running_mean: ArrayLike | None = None,
    running_var: ArrayLike | None = None,
    weight: ArrayLike | None = None,
    bias: ArrayLike | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    axis: int = 1,
    out: np.ndarray | None = None,
    activation: str | None = None,
    negative_slope: float = 0.01,
    shortcut: ArrayLike | None = None,
    return_stats: bool = False,
) -> Any:
    """Instance normalization, as ``torch.nn.functional.instance_norm``.

    Normalizes each channel of each sample over its spatial positions.

    Parameters
    ----------
    x : array_like, shape ``(N, C, *spatial)`` (``axis=1``) or ``(N, *spatial, C)`` (``axis=-1``)
        float16, float32 or float64; at least 3-D.
    running_mean, running_var : ndarray, shape ``(C,)``, optional
        With ``use_input_stats=True`` they are updated in place with the mean
        over the batch of the per-instance mean and *unbiased* variance; with
        ``use_input_stats=False`` they normalize (then required).
    weight, bias : array_like, shape ``(C,)``, optional
        Per-channel scale and shift.
    use_input_stats : bool
        Normalize with each instance's own statistics.
    momentum, eps : float
        As in :func:`batch_norm`.
    axis : int
        The channel axis (``>= 1``; axis 0 is the batch).
    out : ndarray, optional
        Of ``x``'s shape and dtype; may be ``x`` itself.
    activation : {None, "relu", "leaky_relu", "gelu", "gelu_tanh", "silu"}
        Applied to the result in the same pass over memory as the
        normalization: ``y = activation(norm(x) + shortcut)``.  ``"gelu"`` is
        the exact (erf) form, ``"gelu_tanh"`` the tanh approximation.
    negative_slope : float
        The slope of ``"leaky_relu"`` for negative values.
    shortcut : array_like, shape of ``x``, optional
        Added after the normalization and before the activation (the tail of
        a residual block), in the same pass.  May be ``out``.

    return_stats : bool
        Also return ``(mean, rstd)``, float64 ``(N, C)``, for
        :func:`instance_norm_backward`.

    Returns
    -------
    ndarray
        Same shape and dtype as ``x``.  Channels-last input is normalized in
        place in its layout (no transposition).
    """
    x = _validate.float_array(x, "x")
    fuse = _Fuse.make(x, activation, negative_slope, shortcut)
    y, saved = _instance_norm(
        x, running_mean, running_var, weight, bias, use_input_stats, momentum, eps, axis, out,
        save=bool(return_stats), fuse=fuse,
    )
    if return_stats:
        c = x.shape[_validate.channel_axis(axis, x.ndim)]
        return (y, *_channel_stats(saved, x.shape[0], c, c))
    return y


# -- group norm ---------------------------------------------------------------


def _group_count(num_groups: object, channels: int) -> int:
    if isinstance(num_groups, bool) or not isinstance(num_groups, numbers.Integral):
        raise TypeError(f"num_groups must be an int, got {num_groups!r}")
    groups = int(num_groups)
    if groups < 1:
        raise ValueError(f"num_groups must be positive, got {groups}")
    if channels % groups:
        raise ValueError(
            f"num_groups ({groups}) must divide the number of channels ({channels})"
        )
    return groups


def _group_norm(
    x: ArrayLike,
    num_groups: int,
    weight: ArrayLike | None,
    bias: ArrayLike | None,
    eps: float,
    axis: int,
    out: np.ndarray | None,
    save: bool,
    fuse: _Fuse | None = None,
) -> tuple[np.ndarray, _core.Saved | None]:
    x = _validate.float_array(x, "x")
    _validate.min_ndim(x, "x", 2)
    axis = _instance_axis(x, axis)
    channels = x.shape[axis]
    groups = _group_count(num_groups, channels)
    weight = _validate.param_vector(weight, "weight", channels)
    bias = _validate.param_vector(bias, "bias", channels)
    eps = _validate.real_scalar(eps, "eps", minimum=0.0)
    n = x.shape[0]
    spatial = x.size // (n * channels) if n * channels else 0
    if n * (channels // groups) * spatial == 1:
        raise ValueError(ONE_VALUE_MESSAGE.format(x.shape))
    out = _check_out(out, x)
    weight, bias, _, _ = _apart(out, weight, bias)
    if _on_cuda():
        _fuse_on_cuda(fuse)
        shape = tuple(x.shape)
        cview = (n, math.prod(shape[1:axis]), channels, math.prod(shape[axis + 1:]))
        return _cuda().channel_forward(x, cview, channels // groups, True, None, None, 0.0, 1.0,
                                       weight, bias, eps, out, save)

    target = _Target.make(x, out, save)
    view = _views.instance_view(target.xc, axis)
    w64, b64 = _as64(weight), _as64(bias)
    group = channels // groups
    ep = None if fuse is None else fuse.epilogue(target, save, b64, eps)
    saved = None
    fused = _fused_forward(target, view, axis, groups, eps, w64, b64, save, ep) if x.size else None
    if fused is not None:
        saved = fused[2]
    else:
        mean, var = _core.moments(backend_module(), view) if x.size else (np.zeros((n, channels)),) * 2
        mean, rstd = _normalize_channels(
            view, _views.instance_view(target.result, axis), mean, var, eps, w64, b64, group=group, ep=ep
        )
        if save:
            saved = _core.Saved(view, mean, rstd, w64, True, x.shape, target.dtype, group=group,
                                epilogue=ep)
    y = target.finish()
    return y, saved


def group_norm(
    x: ArrayLike,
    num_groups: int,
    weight: ArrayLike | None = None,
    bias: ArrayLike | None = None,
    eps: float = 1e-5,
    *,
    axis: int = 1,
    out: np.ndarray | None = None,
    activation: str | None = None,
    negative_slope: float = 0.01,
    shortcut: ArrayLike | None = None,
    return_stats: bool = False,
) -> Any:
    """Group normalization, as ``torch.nn.functional.group_norm``.

    Splits the ``C`` channels into ``num_groups`` groups of adjacent channels
    and normalizes each group of each sample over its channels and spatial
    positions; then applies the per-channel affine.

    Parameters
    ----------
    x : array_like, shape ``(N, C, *spatial)`` (``axis=1``) or ``(N, *spatial, C)`` (``axis=-1``)
        float16, float32 or float64; at least 2-D.
    num_groups : int
        Must divide ``C``.
    weight, bias : array_like, shape ``(C,)``, optional
    eps : float
    axis : int
        The channel axis (``>= 1``).  Channels-last input is normalized in its
        layout (no transposition), with statistics merged per group in float64.
    out : ndarray, optional
    activation : {None, "relu", "leaky_relu", "gelu", "gelu_tanh", "silu"}
        Applied to the result in the same pass over memory as the
        normalization: ``y = activation(norm(x) + shortcut)``.  ``"gelu"`` is
        the exact (erf) form, ``"gelu_tanh"`` the tanh approximation.
    negative_slope : float
        The slope of ``"leaky_relu"`` for negative values.
    shortcut : array_like, shape of ``x``, optional
        Added after the normalization and before the activation (the tail of
        a residual block), in the same pass.  May be ``out``.

    return_stats : bool
        Also return ``(mean, rstd)``, float64 ``(N, num_groups)``, for
        :func:`group_norm_backward`.

    Returns
    -------
    ndarray
        Same shape and dtype as ``x``.
    """
    x = _validate.float_array(x, "x")
    fuse = _Fuse.make(x, activation, negative_slope, shortcut)
    y, saved = _group_norm(x, num_groups, weight, bias, eps, axis, out, save=bool(return_stats),
                           fuse=fuse)
    if return_stats:
        c = x.shape[_validate.channel_axis(axis, x.ndim)]
        return (y, *_channel_stats(saved, x.shape[0], c, int(num_groups)))
    return y


# -- layer norm and rms norm ----------------------------------------------------


def default_rms_eps(dtype: np.dtype) -> float:
    """RMSNorm's ``eps=None``: the machine epsilon of the dtype the kernels compute in (float32
    for float16 and bfloat16 data), as PyTorch."""
    return float(np.finfo(_core.compute_dtype(np.dtype(dtype))).eps)


def normalized_shape_tuple(normalized_shape: object) -> tuple[int, ...]:
    """``normalized_shape`` as a tuple of non-negative ints (an int means a 1-tuple)."""
    if type(normalized_shape) is int and normalized_shape >= 0:
        return (normalized_shape,)
    if type(normalized_shape) is tuple and len(normalized_shape) == 1:  # a layer's, mostly
        (d,) = normalized_shape
        if type(d) is int and d >= 0:
            return normalized_shape
    if type(normalized_shape) is tuple and normalized_shape and all(
        type(d) is int and d >= 0 for d in normalized_shape
    ):
        return normalized_shape
    if isinstance(normalized_shape, numbers.Integral) and not isinstance(normalized_shape, bool):
        shape: tuple = (int(normalized_shape),)
    else:
        try:
            shape = tuple(normalized_shape)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError(
                f"normalized_shape must be an int or a sequence of ints, got {normalized_shape!r}"
            ) from None
        if not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) for d in shape):
            raise TypeError(f"normalized_shape must hold ints, got {normalized_shape!r}")
        shape = tuple(int(d) for d in shape)
    if not shape:
        raise ValueError("normalized_shape must name at least one dimension")
    if any(d < 0 for d in shape):
        raise ValueError(f"normalized_shape must be non-negative, got {shape}")
    return shape


def _rows_norm(
    x: ArrayLike,
    normalized_shape: object,
    weight: ArrayLike | None,
    bias: ArrayLike | None,
    eps: object,
    center: bool,
    out: np.ndarray | None,
    save: bool,
    fuse: _Fuse | None = None,
    residual: np.ndarray | None = None,
    axis: object = None,
    feature_axis: object = None,
    mask: object = None,
) -> tuple[np.ndarray, _core.Saved | None]:
    """``residual`` (validated, ``x``'s shape): the rows normalized are ``x + residual``;
    the result is then ``((y, h), saved)`` with ``h = x + residual``.  ``axis``,
    ``feature_axis``: see :mod:`fastnorm._axes`; ``mask``: statistics over its True values."""
    if axis is None and feature_axis is None and mask is None and out is None and fuse is None \
            and residual is None:
        plain = _rows_plain(x, normalized_shape, weight, bias, eps, center, save)
        if plain is not None:
            return plain
    x = _validate.float_array(x, "x")
    if axis is not None or feature_axis is not None or mask is not None:
        return _rows_general(x, normalized_shape, weight, bias, eps, center, out, save, fuse,
                             residual, axis, feature_axis, mask)
    shape = normalized_shape_tuple(normalized_shape)
    if x.shape[x.ndim - len(shape):] != shape or x.ndim < len(shape):
        raise ValueError(
            f"normalized_shape {shape} must equal the trailing dimensions of x, got x.shape {x.shape}"
        )
    weight = _validate.param_array(weight, "weight", shape)
    bias = _validate.param_array(bias, "bias", shape)
    eps = _rows_eps(eps, x)
    out = _check_out(out, x)
    weight, bias, _, _ = _apart(out, weight, bias)
    if _on_cuda():
        _fuse_on_cuda(fuse, residual)
        return _cuda().rows_forward_device(x, len(shape), weight, bias, eps, center, out, save)
    w = weight if weight is None or weight.ndim == 1 else weight.reshape(-1)
    b = bias if bias is None or bias.ndim == 1 else bias.reshape(-1)
    return _rows_trailing(x, len(shape), w, b, eps, center, out, save, fuse, residual)


_MACHINE_EPS = {dt: float(np.finfo(dt).eps) for dt in _core._NATIVE_COMPUTE}


def _rows_plain(x, normalized_shape, weight, bias, eps, center, save):
    """:func:`_rows_norm` of a small plain call: a C-contiguous float32 or float64 ndarray
    normalized over its last axis, parameters ``(M,)`` arrays of its dtype or None, a float
    ``eps``, on a CPU backend.  None for any other call, which the general path validates.

    For a small input the general path's cost is its checks, each of which such a call
    passes by construction; this one makes the same kernel call after comparing types.
    """
    if type(x) is not np.ndarray or not 0 < x.size <= _core.SMALL_SIZE or x.ndim == 0:
        return None
    dt = x.dtype
    m = x.shape[-1]
    if dt not in _core._NATIVE_COMPUTE or not x.flags.c_contiguous:
        return None
    if eps is None:
        eps = _MACHINE_EPS[dt]
    elif type(eps) is not float or not eps >= 0.0:
        return None
    if type(normalized_shape) is tuple and len(normalized_shape) == 1:
        normalized_shape = normalized_shape[0]
    if type(normalized_shape) is not int or normalized_shape != m:
        return None
    for p in (weight, bias):
        if p is not None and (type(p) is not np.ndarray or p.dtype != dt or p.shape != (m,)):
            return None
    name = get_backend()
    if name == "cuda":
        return None
    x2 = x.reshape(-1, m)
    y = np.empty_like(x)
    mean, rstd = backend_module(name).rows_forward(x2, weight, bias, eps, center, y.reshape(-1, m))
    saved = None
    if save:
        saved = _core.Saved(x2, mean, rstd, weight, True, x.shape, dt, path="rows", center=center)
    return y, saved


def _rows_eps(eps: object, x: np.ndarray) -> float:
    if eps is None:
        eps = default_rms_eps(x.dtype)
    return _validate.real_scalar(eps, "eps", minimum=0.0)


def _rows_general(x, normalized_shape, weight, bias, eps, center, out, save, fuse, residual, axis,
                  feature_axis, mask):
    """:func:`_rows_norm` over any axes, with parameters on a subset of them, or masked:
    the rows view of the input transposed to put the reduced axes last (one copy where they
    are not), the parameters broadcast to the reduced shape."""
    shape = None if normalized_shape is None and axis is not None else \
        normalized_shape_tuple(normalized_shape)
    geo = _axes.resolve(x.shape, shape, axis, feature_axis)
    pshape = geo.param_shape(x.shape)
    weight = _validate.param_array(weight, "weight", pshape)
    bias = _validate.param_array(bias, "bias", pshape)
    eps = _rows_eps(eps, x)
    out = _check_out(out, x)
    m = None
    if mask is not None:
        m = _axes.as_mask(mask, x.shape)
        if residual is not None:
            raise ValueError("mask cannot be combined with residual: normalize x + residual "
                             "with a mask in two steps")
    weight, bias, _, _ = _apart(out, weight, bias)
    if _on_cuda():
        raise NotImplementedError("axis=, feature_axis= and mask= run on the CPU backends (cython, "
                                  "numba, numpy); the cuda backend normalizes the trailing axes")
    if _one_group(geo, x.shape, center, residual, m, out):
        return _as_one_group(x, geo, weight, bias, eps, out, save, fuse)
    w, b = geo.expand(weight, x.shape), geo.expand(bias, x.shape)
    perm, shape0, out0 = geo.perm, x.shape, out
    if perm is not None:  # the reduced axes last: views here, one copy in _Target
        x = x.transpose(perm)
        out = None if out is None else out.transpose(perm)
        m = None if m is None else m.transpose(perm)
        residual = None if residual is None else residual.transpose(perm)
        if fuse is not None and fuse.shortcut is not None:
            fuse = _Fuse(fuse.activation, fuse.negative_slope, fuse.shortcut.transpose(perm))
    y, saved = _rows_trailing(x, len(geo.reduced), w, b, eps, center, out, save, fuse, residual, m)
    if saved is not None:
        saved.param_fold = None if geo.fold is None else (geo.reduced_shape(shape0), geo.fold)
    if perm is None:
        return y, saved
    inverse = geo.inverse
    if saved is not None:
        saved.perm = perm
        saved.shape = tuple(saved.shape[i] for i in inverse)
    if residual is not None:
        return (y[0].transpose(inverse) if out0 is None else out0, y[1].transpose(inverse)), saved
    return y.transpose(inverse) if out0 is None else out0, saved


def _one_group(geo, shape, center, residual, mask, out) -> bool:
    """Whether a LayerNorm over trailing axes with parameters on the leading ones of them is
    GroupNorm with one group (``(R, C, S)``: ``C`` the parameters' size, ``S`` the rest), whose
    fused per-channel pass serves it (the rows view would broadcast the parameters to the
    whole ``(C, S)``, and its backward sum columns that long)."""
    if not center or residual is not None or mask is not None or geo.perm is not None:
        return False
    if geo.fold is None or geo.feature != geo.reduced[: len(geo.feature)]:
        return False
    if out is not None and not (out.flags.c_contiguous and out.dtype == out.dtype.newbyteorder("=")):
        return False
    return math.prod(geo.reduced_shape(shape)) > 1


def _as_one_group(x, geo, weight, bias, eps, out, save, fuse):
    """:func:`_rows_general` as GroupNorm with one group on ``(R, C, S)``."""
    shape = x.shape
    c = math.prod(geo.param_shape(shape))
    view = (-1 if math.prod(shape) else math.prod(shape[: geo.reduced[0]]), c,
            math.prod(geo.reduced_shape(shape)) // c)
    if fuse is not None and fuse.shortcut is not None:
        fuse = _Fuse(fuse.activation, fuse.negative_slope, fuse.shortcut.reshape(view))
    y, saved = _group_norm(x.reshape(view), 1, None if weight is None else weight.reshape(-1),
                           None if bias is None else bias.reshape(-1), eps, 1,
                           None if out is None else out.reshape(view), save, fuse)
    if saved is not None:
        saved.shape = shape
    return (y.reshape(shape) if out is None else out), saved


def _rows_trailing(x, trailing, w, b, eps, center, out, save, fuse, residual, mask=None):
    """LayerNorm (``center``) or RMSNorm of validated ``x`` over its last ``trailing`` axes on
    a CPU backend, with ``(M,)`` (or None) ``w``, ``b``; ``mask``: bool of ``x``'s shape."""
    target = _Target.make(x, out, save)
    x2 = _views.rows_view(target.xc, trailing)
    ep = None if fuse is None else fuse.epilogue(target, save, b, eps)
    res2 = hsum = None
    if residual is not None:
        res2 = np.ascontiguousarray(residual, dtype=x2.dtype).reshape(x2.shape)
        if np.may_share_memory(res2, target.result) and not (
            res2.__array_interface__["data"][0] == target.result.__array_interface__["data"][0]
            and res2.strides == target.result.strides
        ):  # a row of out is written while a later row of residual is still to be read
            res2 = res2.copy()
        hsum = _memory.empty(x2.shape, x2.dtype, beside=x2)
    out2 = _views.rows_view(target.result, trailing)
    m2 = count = None
    if mask is not None:
        mean, rstd, count, m2 = _masked_rows(x2, mask, trailing, w, b, eps, center, out2, ep)
    elif x2.size:
        mean, rstd = _core.normalize_rows(backend_module(), x2, w, b, eps, center, out2,
                                          _core.epi_args(ep), res2, hsum)
    else:
        mean = rstd = np.zeros(x2.shape[0])
    y = target.finish()
    saved = None
    if save:  # the weight by reference, as the input (no per-call copy of an (M,) array)
        saved = _core.Saved(x2 if hsum is None else hsum, mean, rstd, w, True, x.shape, target.dtype,
                            path="rows", center=center, epilogue=ep, prenorm=hsum is not None,
                            mask=m2, count=count)
    if residual is not None:
        h = hsum.reshape(x.shape)
        return (y, h if h.dtype == target.dtype else _memory.cast(h, target.dtype)), saved
    return y, saved


def _masked_rows(x2, mask, trailing, w, b, eps, center, out2, ep):
    """Rows normalized with the statistics of their values where ``mask`` (bool, of the input's
    shape, a broadcast view maybe) is True, 0 elsewhere.  Returns ``(mean, rstd, count,
    keep)``: ``count`` None where every kept row is whole; ``keep`` the mask as an array
    broadcastable to ``x2``, ``(R, 1)`` for whole rows."""
    r, m = x2.shape
    backend = backend_module()
    epi = _core.epi_args(ep)
    if not x2.size:
        return np.zeros(r), np.zeros(r), np.zeros(r), np.ones((r, 1), bool)
    whole = all(st == 0 or d == 1 for st, d in zip(mask.strides[mask.ndim - trailing:],
                                                 mask.shape[mask.ndim - trailing:]))
    if whole:  # padding tokens: each row kept or left out whole, its statistics its own
        keep = np.ascontiguousarray(mask[(Ellipsis,) + (0,) * trailing]).reshape(r, 1)
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            mean, rstd = _core.normalize_rows(backend, x2, w, b, eps, center, out2, epi)
        out_rows = np.flatnonzero(~keep[:, 0])
        if out_rows.size:  # statistics 0: the backward gives these rows 0
            out2[out_rows] = 0
            mean[out_rows] = 0.0
            rstd[out_rows] = 0.0
        return mean, rstd, None, keep
    keep = np.ascontiguousarray(mask).reshape(r, m)
    mean, var, count = _core.masked_moments(backend, x2.reshape(r, 1, 1, m), keep.reshape(r, 1, 1, m))
    mean, var, count = mean[:, 0], var[:, 0], count[:, 0]
    if not center:  # the mean square of the kept values
        var = var + mean * mean
        mean = np.zeros(r)
    with np.errstate(divide="ignore"):
        rstd = np.where(count > 0, _core.rstd_of(var, eps), 0.0)  # a row with nothing kept is 0
    with np.errstate(invalid="ignore", over="ignore"):  # values left out may be anything
        _core.normalize_rows_given(backend, x2, mean, rstd, w, b, out2, epi)
    _core.left_out_zero(out2, keep)
    return mean, rstd, count, keep


def layer_norm(
    x: ArrayLike,
    normalized_shape: int | tuple[int, ...] | None,
    weight: ArrayLike | None = None,
    bias: ArrayLike | None = None,
    eps: float = 1e-5,
    *,
    out: np.ndarray | None = None,
    activation: str | None = None,
    negative_slope: float = 0.01,
    shortcut: ArrayLike | None = None,
    residual: ArrayLike | None = None,
    return_stats: bool = False,
    axis: int | tuple[int, ...] | None = None,
    feature_axis: int | tuple[int, ...] | None = None,
    mask: ArrayLike | None = None,
) -> Any:
    """Layer normalization, as ``torch.nn.functional.layer_norm``.

    Normalizes over the trailing ``normalized_shape`` dimensions:
    ``y = (x - mean) / sqrt(var + eps) * weight + bias``.

    Parameters
    ----------
    x : array_like, shape ``(*, *normalized_shape)``
        float16, float32 or float64 (any shape with ``axis``).
    normalized_shape : int or tuple of int, or None
        The trailing shape normalized over (the sizes on ``axis`` when given).
    weight, bias : array_like, shape ``normalized_shape``, optional
        Elementwise scale and shift (of the ``feature_axis`` sizes when given).
    eps : float
    out : ndarray, optional
    activation : {None, "relu", "leaky_relu", "gelu", "gelu_tanh", "silu"}
        Applied to the result in the same pass over memory as the
        normalization: ``y = activation(norm(x) + shortcut)``.  ``"gelu"`` is
        the exact (erf) form, ``"gelu_tanh"`` the tanh approximation.
    negative_slope : float
        The slope of ``"leaky_relu"`` for negative values.
    shortcut : array_like, shape of ``x``, optional
        Added after the normalization and before the activation (the tail of
        a residual block), in the same pass.  May be ``out``.
    residual : array_like, shape of ``x``, optional
        The pre-norm residual stream: ``h = x + residual`` is formed and
        normalized in the same pass, and the call returns ``(y, h)`` (``h`` of
        ``x``'s dtype), as a transformer block's fused add-and-norm.  float16
        and bfloat16 input: ``h`` is summed in float32, normalized, then
        rounded.  ``shortcut`` and ``residual`` are cast to ``x``'s dtype.
    return_stats : bool
        Also return ``mean`` and ``rstd``, float64 of ``x``'s shape without
        the normalized axes (ONNX LayerNormalization's ``Mean`` and ``InvStdDev``), for
        :func:`layer_norm_backward`: ``(y, mean, rstd)`` (``((y, h), mean,
        rstd)`` with ``residual``, the statistics of ``h``).
    axis : int or tuple of int, optional
        The axes normalized over (Keras' ``axis``, Flax's ``reduction_axes``);
        default: the trailing ``len(normalized_shape)`` axes, as PyTorch.
        ``normalized_shape`` may then be None; given, it must equal ``x``'s
        sizes on those axes.  Trailing axes are a reshape of ``x``; any other
        axes cost one transposed copy of ``x`` (none when ``x`` is already laid
        out with them last, as a previous such result is), and the result is an
        array of ``x``'s shape laid out in memory with the normalized axes last
        (not C-contiguous; ``out=`` of another layout costs a second copy).
    feature_axis : int or tuple of int, optional
        The axes ``weight`` and ``bias`` span (Flax's ``feature_axes``), a
        subset of ``axis`` (default: all of them); they are broadcast along the
        other normalized axes.  ``layer_norm(x, (C, H, W), w, b,
        feature_axis=1)`` on ``(N, C, H, W)`` normalizes each sample with
        per-channel ``w`` and ``b`` of shape ``(C,)``.
    mask : array_like of bool, optional
        Broadcastable to ``x``: the statistics are taken over the values where
        it is True only (padding tokens, invalid pixels), and the output is 0
        where it is False; the backward gives those values a zero gradient.  A
        row with no True value gives 0.  Not with ``residual``.

    Returns
    -------
    ndarray, or (ndarray, ndarray) with ``residual``
        Same shape and dtype as ``x``.  Each row is reduced and normalized in
        one pass while it sits in cache.
    """
    return _rows_call(x, normalized_shape, weight, bias, eps, True, out, return_stats, activation,
                      negative_slope, shortcut, residual, axis, feature_axis, mask)


def rms_norm(
    x: ArrayLike,
    normalized_shape: int | tuple[int, ...] | None,
    weight: ArrayLike | None = None,
    eps: float | None = None,
    *,
    out: np.ndarray | None = None,
    activation: str | None = None,
    negative_slope: float = 0.01,
    shortcut: ArrayLike | None = None,
    residual: ArrayLike | None = None,
    return_stats: bool = False,
    axis: int | tuple[int, ...] | None = None,
    feature_axis: int | tuple[int, ...] | None = None,
    mask: ArrayLike | None = None,
) -> Any:
    """Root-mean-square normalization, as ``torch.nn.functional.rms_norm``.

    ``y = x / sqrt(mean(x**2) + eps) * weight`` over the trailing
    ``normalized_shape`` dimensions.

    Parameters
    ----------
    x : array_like, shape ``(*, *normalized_shape)``
        float16, float32 or float64 (any shape with ``axis``).
    normalized_shape : int or tuple of int, or None
        The trailing shape normalized over (the sizes on ``axis`` when given).
    weight : array_like, shape ``normalized_shape``, optional
        Of the ``feature_axis`` sizes when given.
    eps : float or None
        ``None`` means the machine epsilon of the compute dtype, as
        PyTorch: ``np.finfo(np.float32).eps`` for float16, bfloat16 and
        float32 input, ``np.finfo(np.float64).eps`` for float64.
    out : ndarray, optional
    activation : {None, "relu", "leaky_relu", "gelu", "gelu_tanh", "silu"}
        Applied to the result in the same pass over memory as the
        normalization: ``y = activation(norm(x) + shortcut)``.  ``"gelu"`` is
        the exact (erf) form, ``"gelu_tanh"`` the tanh approximation.
    negative_slope : float
        The slope of ``"leaky_relu"`` for negative values.
    shortcut : array_like, shape of ``x``, optional
        Added after the normalization and before the activation (the tail of
        a residual block), in the same pass.  May be ``out``.
    residual : array_like, shape of ``x``, optional
        The pre-norm residual stream: ``h = x + residual`` is formed and
        normalized in the same pass, and the call returns ``(y, h)`` (``h`` of
        ``x``'s dtype), as a transformer block's fused add-and-norm.
    return_stats : bool
        Also return ``rstd = 1 / sqrt(mean(x**2) + eps)``, float64 of ``x``'s
        shape without the normalized axes, for :func:`rms_norm_backward`: ``(y, rstd)``
        (``((y, h), rstd)`` with ``residual``, the statistics of ``h``).
    axis : int or tuple of int, optional
        The axes normalized over (Keras' ``axis``, Flax's ``reduction_axes``);
        default: the trailing ``len(normalized_shape)`` axes, as PyTorch.
        ``normalized_shape`` may then be None; given, it must equal ``x``'s
        sizes on those axes.  Trailing axes are a reshape of ``x``; any other
        axes cost one transposed copy of ``x`` (none when ``x`` is already laid
        out with them last, as a previous such result is), and the result is an
        array of ``x``'s shape laid out in memory with the normalized axes last
        (not C-contiguous; ``out=`` of another layout costs a second copy).
    feature_axis : int or tuple of int, optional
        The axes ``weight`` spans (Flax's ``feature_axes``), a subset of
        ``axis`` (default: all of them); it is broadcast along the other
        normalized axes.  ``rms_norm(x, (C, H, W), w, feature_axis=1)`` on
        ``(N, C, H, W)`` normalizes each sample with a per-channel ``w`` of
        shape ``(C,)``.
    mask : array_like of bool, optional
        Broadcastable to ``x``: the statistics are taken over the values where
        it is True only (padding tokens, invalid pixels), and the output is 0
        where it is False; the backward gives those values a zero gradient.  A
        row with no True value gives 0.  Not with ``residual``.

    Returns
    -------
    ndarray, or (ndarray, ndarray) with ``residual``
        Same shape and dtype as ``x``.
    """
    return _rows_call(x, normalized_shape, weight, None, eps, False, out, return_stats, activation,
                      negative_slope, shortcut, residual, axis, feature_axis, mask)


def row_stats_shape(shape: tuple[int, ...], normalized_shape: Any, axis: object) -> tuple[int, ...]:
    """The shape of a LayerNorm/RMSNorm's statistics: ``shape`` without the reduced axes."""
    if axis is None:
        return tuple(shape[: len(shape) - len(normalized_shape_tuple(normalized_shape))])
    reduced = _axes.resolve(shape, None, axis, None).reduced
    return tuple(d for i, d in enumerate(shape) if i not in reduced)


def _with_row_stats(y: Any, saved: Any, x: Any, normalized_shape: Any, center: bool,
                    axis: object = None) -> tuple:
    """``(y, mean, rstd)`` (``(y, rstd)`` for RMSNorm; with a residual, ``y`` is ``(y, h)``),
    the statistics of the shape of ``x`` without its reduced axes."""
    lead = row_stats_shape(tuple(x.shape), normalized_shape, axis)
    if saved.path == "rows" and type(saved.rstd) is np.ndarray:  # (R,) float64
        rstd, mean = saved.rstd.reshape(lead), saved.mean.reshape(lead)
    elif not math.prod(lead):
        rstd = mean = np.zeros(lead)
    else:  # a device's, or a GroupNorm path's (maybe repeated on each channel)
        rows = math.prod(lead)
        rstd = _host64(saved.rstd).reshape(rows, -1)[:, 0].reshape(lead)
        mean = _host64(saved.mean).reshape(rows, -1)[:, 0].reshape(lead)
    return (y, rstd) if not center else (y, mean, rstd)


def _rows_call(x, normalized_shape, weight, bias, eps, center, out, return_stats, activation,
               negative_slope, shortcut, residual, axis, feature_axis, mask):
    """:func:`layer_norm` (``center``) or :func:`rms_norm`."""
    save = bool(return_stats)
    plain = None
    if activation is None and shortcut is None and residual is None and out is None \
            and axis is None and feature_axis is None and mask is None and type(negative_slope) is float:
        plain = _rows_plain(x, normalized_shape, weight, bias, eps, center, save)
    if plain is None:
        x, fuse, residual = _rows_options(x, activation, negative_slope, shortcut, residual)
        plain = _rows_norm(x, normalized_shape, weight, bias, eps, center, out, save=save, fuse=fuse,
                           residual=residual, axis=axis, feature_axis=feature_axis, mask=mask)
    y, saved = plain
    if return_stats:
        return _with_row_stats(y, saved, x, normalized_shape, center, axis)
    return y


def _rows_options(x, activation, negative_slope, shortcut, residual):
    """The validated ``x``, epilogue options and ``residual`` of a LayerNorm/RMSNorm call."""
    x = _validate.float_array(x, "x")
    fuse = _Fuse.make(x, activation, negative_slope, shortcut)
    return x, fuse, _validate.like_input(residual, "residual", x)


# -- backward -----------------------------------------------------------------


def _normalization_backward(
    saved: _core.Saved, dy: ArrayLike, dh: ArrayLike | None = None, out: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Gradients of a saved forward: ``(dx, grad_weight, grad_bias, grad_shortcut)``.

    ``dx`` has the forward input's shape and dtype; the weight/bias gradients
    are float64, ``(C,)`` or ``(M,)`` (computed even when there is no weight).
    ``grad_shortcut`` (of the input's shape and dtype) where the forward added a
    shortcut, else None.  ``dh``: the gradient of a pre-norm forward's ``h``, added
    to ``dx`` (which is also the gradient of the residual).  ``out`` (validated, of the
    input's shape and dtype): the kernels write ``dx`` there where it is C-contiguous in
    the compute dtype and apart from the input and ``dy`` (``dx`` is then ``out``); the
    caller copies it there otherwise.
    """
    reduce = getattr(saved, "reduce", None)
    try:
        dy = _validate.float_array(dy, "dy")
        _validate.same_shape(dy, saved.shape)
        if dh is not None:
            if not getattr(saved, "prenorm", False):
                raise ValueError("dh is the gradient of h, which only a forward with residual= "
                                 "(LayerNorm, RMSNorm) returns; this forward had none")
            dh = _validate.float_array(dh, "dh")
            _validate.same_shape(dh, saved.shape, "dh")
    except (TypeError, ValueError):
        if reduce is not None:  # the other processes wait for this one's sums: send none
            reduce(None, None)
        raise
    if getattr(saved, "device", False):  # a forward of the cuda backend: its arrays are there
        return (*_cuda().backward(saved, dy), None)
    if not isinstance(dy, np.ndarray):  # a device dy for a forward that ran on the CPU
        dy = _cuda().to_host(dy)
    if dh is not None and not isinstance(dh, np.ndarray):
        dh = _cuda().to_host(dh)
    perm = getattr(saved, "perm", None)
    if perm is not None:  # the forward ran on the input with its reduced axes last
        dy = dy.transpose(perm)
        inverse = tuple(int(i) for i in np.argsort(perm))
        moved = tuple(saved.shape[p] for p in perm)
    else:
        inverse, moved = None, saved.shape

    def laid_out(a: np.ndarray) -> np.ndarray:
        a = a.reshape(moved)
        return a if inverse is None else a.transpose(inverse)

    dyc = np.ascontiguousarray(dy, dtype=saved.x.dtype).reshape(saved.x.shape)
    mask = getattr(saved, "mask", None)  # broadcastable to x
    direct = (out is not None and mask is None and perm is None and dh is None
              and out.flags.c_contiguous and out.dtype == saved.x.dtype
              and not np.may_share_memory(out, saved.x) and not np.may_share_memory(out, dyc))
    if mask is None:
        dx, grad_weight, grad_bias, grad_shortcut = _gradients(
            saved, dyc, dy, reduce, out.reshape(saved.x.shape) if direct else None)
    else:  # the output is 0 where the mask is False, whatever the input held there
        with np.errstate(invalid="ignore", over="ignore"):  # values left out may be inf
            dx, grad_weight, grad_bias, grad_shortcut = _gradients(saved, _core.masked(dyc, mask), dy)
        if not (np.isfinite(grad_weight).all() and np.isfinite(grad_bias).all()):
            # a value left out, or dy there, is not finite or normalizes past the largest
            # float: again on a copy of the input holding the statistics' mean there
            mean = saved.mean[:, None] if saved.path == "rows" else saved.mean[:, None, :, None]
            filled = dataclasses.replace(saved, x=_core.fill_left_out(saved.x, mask, mean))
            dx, grad_weight, grad_bias, grad_shortcut = _gradients(
                filled, _core.masked(dyc, mask, select=True), dy)
        _core.left_out_zero(dx, mask)
    fold = getattr(saved, "param_fold", None)
    if fold is not None:  # parameters broadcast along some reduced axes
        grad_weight = grad_weight.reshape(fold[0]).sum(axis=fold[1]).reshape(-1)
        grad_bias = grad_bias.reshape(fold[0]).sum(axis=fold[1]).reshape(-1)
    dx = laid_out(dx)
    if grad_shortcut is not None:
        grad_shortcut = laid_out(grad_shortcut)
        if grad_shortcut.dtype != saved.dtype:
            grad_shortcut = _memory.cast(grad_shortcut, saved.dtype)
    if dh is not None:
        dx += dh
    if direct:
        return out, grad_weight, grad_bias, grad_shortcut
    if dx.dtype != saved.dtype:
        dx = _memory.cast(dx, saved.dtype)
    return dx, grad_weight, grad_bias, grad_shortcut


def _gradients(saved: _core.Saved, dyc: np.ndarray, dy: np.ndarray, reduce: Any = None,
               dx: np.ndarray | None = None):
    """``(dx, grad_weight, grad_bias, grad_shortcut)`` of ``saved`` for ``dyc`` (``dy`` as
    ``saved.x``'s view and dtype; ``dy`` the caller's), all in the view's layout; ``dx``
    into the given array (``saved.x``'s shape and dtype) when there is one."""
    x = saved.x
    ep = getattr(saved, "epilogue", None)
    grad_shortcut = None
    if ep is not None:
        if ep.act and dyc.size:
            dyc = _core.epilogue_gradient(backend_module(), saved, dyc)
        if ep.shortcut is not None:
            grad_shortcut = dyc.copy() if np.may_share_memory(dyc, dy) else dyc
    if dx is None:
        dx = _memory.empty(x.shape, x.dtype, beside=x)
    if math.prod(x.shape):
        grad_weight, grad_bias = _core.backward_any(backend_module(), saved, dyc, dx)
    else:
        grad_weight = grad_bias = np.zeros(saved.param_size)
        if reduce is not None:  # no values here, but the other processes wait for its sums
            reduce(np.zeros((1, saved.param_size)), np.zeros((1, saved.param_size)))
    renorm = getattr(saved, "renorm", None)
    if renorm is not None:  # y = xhat * (r w) + (d w + b): d/dw = r * xhat + d
        grad_weight = renorm[0] * grad_weight + renorm[1] * grad_bias
    return dx, grad_weight, grad_bias, grad_shortcut
