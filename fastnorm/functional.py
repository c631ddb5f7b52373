"""Functional normalization ops: validate, take the canonical view, dispatch.

Each op checks every argument first, then computes, then writes running
statistics last, so a call that fails changes nothing.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from numpy.typing import ArrayLike

from . import _axes, _core, _memory, _validate, _views
from ._docs import fill_doc
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

    def views(self, view: Callable[..., np.ndarray], *args: Any) -> tuple[np.ndarray, np.ndarray]:
        """The canonical views ``view(a, *args)`` of the input and of the result."""
        return view(self.xc, *args), view(self.result, *args)

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


def _cuda() -> ModuleType:
    return backend_module("cuda")


def _as64(a: np.ndarray | None) -> np.ndarray | None:
    return None if a is None else a.astype(np.float64)


def _running_pair(running_mean: ArrayLike | None, running_var: ArrayLike | None, channels: int,
                  updated: bool) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
    """Validate optional running statistics; returns ``(mean, var)`` arrays or ``(None, None)``."""
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together (or both None)")
    if running_mean is None:
        return None, None
    run_mean = _validate.running_buffer(running_mean, "running_mean", channels, updated=updated)
    run_var = _validate.running_buffer(running_var, "running_var", channels, updated=updated)
    return run_mean, run_var


def _apart(
    out: np.ndarray | None, weight: np.ndarray | None, bias: np.ndarray | None,
    run_mean: np.ndarray | None = None, run_var: np.ndarray | None = None, updated: bool = False,
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
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
        result: tuple[np.ndarray, _core.Saved | None] = _cuda().channel_forward(
            x, cview, 1, training, run_mean, run_var, factor, bessel, weight, bias, eps, out, save)
        return result

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
    view, result_view = target.views(_views.batch_norm_view, axis)
    given = None
    if sync is not None:
        local_mean, local_m2 = backend.stats(view) if x.size else (np.zeros((1, channels)),) * 2
        count, sync_mean, m2 = sync.stats(count, local_mean[0], local_m2[0])
        if count <= 1:
            raise ValueError(ONE_VALUE_MESSAGE.format(f"{x.shape} (the batch of every rank: {count})"))
        given = (sync_mean.reshape(1, channels), (m2 / count).reshape(1, channels))
    elif not training:
        assert run_mean is not None and run_var is not None  # required in inference (checked above)
        given = (run_mean.astype(np.float64).reshape(1, channels),
                 run_var.astype(np.float64).reshape(1, channels))
    fwd = _core.forward_channels(backend, view, result_view, 1, w64, b64, eps, _core.epi_args(ep), given)
    y = target.finish()
    if training and run_mean is not None and count:  # the whole batch's count (every rank's)
        assert run_var is not None  # given with run_mean
        _core.update_running(backend, run_mean, run_var, fwd.mean[0], fwd.var[0], factor,
                             count / (count - 1))
    saved = None
    if save:
        saved = fwd.saved(view, w64, training, x.shape, target.dtype, ep,
                          reduce=None if sync is None else sync.grads)
    return y, saved


#: a whole plain call: the output, or None for a call it does not take
_WholeCall = Callable[..., "np.ndarray | None"]
#: backend name -> its whole plain calls ``(rows, channels)`` (Nones: it has none); see
#: :func:`fastnorm.backends.cython_cpu.plain_calls`
_PLAIN_CALLS: dict[str, tuple[_WholeCall | None, _WholeCall | None]] = {}


def _plain_calls(name: str) -> tuple[_WholeCall | None, _WholeCall | None]:
    """Backend ``name``'s compiled whole plain calls ``(rows, channels)``: each returns a
    call's output, or None for a call it does not take (nor checks), which the caller then
    runs as before."""
    calls = _PLAIN_CALLS.get(name)
    if calls is None:
        make = getattr(backend_module(name), "plain_calls", None)
        calls = _PLAIN_CALLS[name] = (make(_memory) if make is not None else None) or (None, None)
    return calls


def _batch_norm_plain(x: ArrayLike, running_mean: ArrayLike | None, running_var: ArrayLike | None,
                      weight: ArrayLike | None, bias: ArrayLike | None, training: bool,
                      momentum: float | None, eps: float, axis: int,
                      save: bool) -> tuple[np.ndarray, _core.Saved | None] | None:
    """:func:`_batch_norm` of a plain call: a non-empty C-contiguous float32 or float64 ndarray,
    float32/float64 ``(C,)`` parameters, running statistics that own their memory (so they
    cannot overlap) and ``momentum`` and ``eps`` floats, on a CPU backend.  None for any other
    call, which the general path validates.  Such a call passes each of the general path's
    checks by construction; here it makes the same core calls after comparing types: one
    backend call for a small input (on a backend with one), else :func:`_core.forward_channels`
    and the running statistics' update.
    """
    if type(x) is not np.ndarray or not x.size or x.ndim < 2 \
            or type(axis) is not int or not -x.ndim <= axis < x.ndim:
        return None
    training = bool(training)
    small = x.size <= _core.SMALL_SIZE
    if x.dtype not in _core._NATIVE_COMPUTE or not x.flags.c_contiguous:
        return None
    axis = axis % x.ndim
    channels = x.shape[axis]
    count = x.size // channels
    if type(eps) is not float or not eps >= 0.0 or (training and count <= 1):
        return None
    plain = (channels,)
    for a in (weight, bias, running_mean, running_var):
        if a is not None and (type(a) is not np.ndarray or a.shape != plain
                              or a.dtype not in _core._NATIVE_COMPUTE):
            return None
    if TYPE_CHECKING:  # the loop let exact ndarrays (or None) through; a cast free at run time
        weight, bias, running_mean, running_var = cast(
            "tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None, np.ndarray | None]",
            (weight, bias, running_mean, running_var))
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
    if name == "cuda":
        return None
    backend = backend_module(name)
    one_call = getattr(backend, "channels_small", None) if small else None
    if small and one_call is None:
        return None
    lead = math.prod(x.shape[:axis])
    shape4 = (1, lead, channels, count // lead)
    view = x.reshape(shape4)
    w64 = None if weight is None else weight.astype(np.float64)
    b64 = None if bias is None else bias.astype(np.float64)
    given = None
    if not training:
        assert running_mean is not None and running_var is not None  # inference: given (checked above)
        given = (running_mean.astype(np.float64).reshape(1, channels),
                 running_var.astype(np.float64).reshape(1, channels))
    bessel = count / (count - 1) if training else 1.0
    if one_call is None:
        y = _memory.empty_like(x)
        fwd = _core.forward_channels(backend, view, y.reshape(shape4), 1, w64, b64, eps, None, given)
        if training and running_mean is not None:
            assert running_var is not None  # given with running_mean (checked above)
            _core.update_running(backend, running_mean, running_var, fwd.mean[0], fwd.var[0], factor,
                                 bessel)
        return y, fwd.saved(view, w64, training, x.shape, x.dtype) if save else None
    y = np.empty_like(x)
    if training:  # the running statistics updated in the same call
        running = None if running_mean is None else (running_mean, running_var, factor, bessel)
        mean, var, rstd = one_call(view, None, None, w64, b64, eps, y.reshape(shape4), running=running)
    else:
        assert given is not None
        mean, var, rstd = one_call(view, *given, w64, b64, eps, y.reshape(shape4))
    saved = _core.Saved(view, mean, rstd, w64, training, x.shape, x.dtype) if save else None
    return y, saved


def _masked_batch_norm(target: _Target, axis: int, mask: np.ndarray, training: bool,
                       run_mean: np.ndarray | None, run_var: np.ndarray | None, factor: float,
                       eps: float, w64: np.ndarray | None, b64: np.ndarray | None, save: bool,
                       ep: _core.Epilogue | None) -> tuple[np.ndarray, _core.Saved | None]:
    """Batch normalization with the statistics of the values where ``mask`` is True (the
    running ones in inference), 0 in the output elsewhere."""
    backend = backend_module()
    view, result_view = target.views(_views.batch_norm_view, axis)
    m4 = np.ascontiguousarray(mask).reshape(view.shape)
    channels = view.shape[2]
    count = None
    if training:
        mean, var, count = _core.masked_moments(backend, view, m4)
        if count.min() <= 1:
            raise ValueError(ONE_VALUE_MESSAGE.format(
                f"{target.xc.shape} (values the mask keeps in a channel: {int(count.min())})"))
    else:
        assert run_mean is not None and run_var is not None  # required in inference
        mean = run_mean.astype(np.float64).reshape(1, channels)
        var = run_var.astype(np.float64).reshape(1, channels)
    with np.errstate(invalid="ignore", over="ignore"):  # values left out may be anything
        mean, var, rstd = _core.apply_stats(backend, view, result_view, mean, var, 1, w64, b64, eps,
                                            _core.epi_args(ep))
    _core.left_out_zero(result_view, m4)
    y = target.finish()
    if training and run_mean is not None:  # the unbiased variance of each channel's kept values
        assert count is not None and run_var is not None  # training: counted; given with run_mean
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


def _ghost_batch_norm(target: _Target, axis: int, vbs: int, run_mean: np.ndarray | None,
                      run_var: np.ndarray | None, factor: float, count: int, eps: float,
                      w64: np.ndarray | None, b64: np.ndarray | None, save: bool,
                      ep: _core.Epilogue | None) -> tuple[np.ndarray, _core.Saved | None]:
    """Ghost batch normalization: the channels path on the ``(G, A, C, B)`` view of the
    virtual batches; running statistics updated with the mean over virtual batches of their
    mean and unbiased variance."""
    backend = backend_module()
    view, result_view = target.views(_views.ghost_view, axis, vbs)
    c = view.shape[2]
    if view.size:
        mean, var = _core.moments(backend, view)
    else:
        mean = var = np.zeros((view.shape[0], c))
    mean, var, rstd = _core.apply_stats(backend, view, result_view, mean, var, 1, w64, b64, eps,
                                        _core.epi_args(ep))
    y = target.finish()
    if run_mean is not None and view.size:
        assert run_var is not None  # given with run_mean
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


def _renormalized(target: _Target, axis: int, run_mean: np.ndarray | None,
                  run_var: np.ndarray | None, factor: float, count: int, eps: float,
                  w64: np.ndarray | None, b64: np.ndarray | None, fuse: _Fuse | None, save: bool,
                  renorm: _Renorm) -> tuple[np.ndarray, _core.Saved | None]:
    """Batch Renormalization's training step: ``y = ((x - mean_B) / sigma_B * r + d) * w + b``,
    the channels path with weight ``w * r`` and bias ``b + w * d`` (``r``, ``d`` constants of
    the gradient); the running statistics as BatchNorm's, then the renorm state."""
    backend = backend_module()
    view, result_view = target.views(_views.batch_norm_view, axis)
    c = view.shape[2]
    mean, var = _core.moments(backend, view) if view.size else (np.zeros((1, c)),) * 2
    r, d = renorm.correction(mean[0], var[0], eps)
    w = np.ones(c) if w64 is None else w64
    w_eff = w * r
    b_eff = (0.0 if b64 is None else b64) + w * d
    ep = None if fuse is None else fuse.epilogue(target, save, b_eff, eps)
    mean, var, rstd = _core.apply_stats(backend, view, result_view, mean, var, 1, w_eff, b_eff, eps,
                                        _core.epi_args(ep))
    y = target.finish()
    if run_mean is not None and count:
        assert run_var is not None  # given with run_mean
        _core.update_running(backend, run_mean, run_var, mean[0], var[0], factor, count / (count - 1))
    if view.size:
        renorm.update(mean[0], var[0], eps)
    saved = None
    if save:
        saved = _core.Saved(view, mean, rstd, w_eff, True, target.xc.shape, target.dtype, epilogue=ep,
                            renorm=(r, d))
    return y, saved


@fill_doc
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

    Normalizes each channel over every other axis (the batch and the spatial
    axes) with the batch's statistics (``training=True``) or the running ones,
    then applies the per-channel affine.

    Parameters
    ----------
    x : array_like, shape ``(N, C, *)`` for ``axis=1`` or ``(N, *, C)`` for ``axis=-1``
        float16, float32 or float64 (or ml_dtypes' bfloat16); at least 2-D.
        On the ``cuda`` backend also a CUDA device array (the result is then
        one too).
    running_mean, running_var : ndarray, shape ``(C,)``, optional
        Given together or not at all.  With ``training=False`` they normalize
        (then they are required).  With ``training=True`` they are updated in
        place (so they must be writable float ndarrays) with the batch mean
        and the *unbiased* batch variance:
        ``running = (1 - momentum) * running + momentum * batch_stat``.  None
        (the default): no running statistics.
    weight, bias : array_like, shape ``(C,)``, optional
        Per-channel scale and shift, real numbers.  None (the default): scale
        1 and shift 0.
    training : bool, default False
        Normalize with the statistics of ``x`` (and update the running ones);
        False: with the running statistics.
    %(momentum)s
    %(eps)s
    axis : int, default 1
        The channel axis, NumPy style: ``1`` for channels-first data (``NCL``,
        ``NCHW``, ``NCDHW``), ``-1`` for channels-last data (``NLC``,
        ``NHWC``, ``NDHWC``), or any other axis of ``x``.
    %(out)s
    %(epilogue)s
    return_stats : bool, default False
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
        channel must keep more than one value.  None (the default): every
        value counts.

    Returns
    -------
    y : ndarray
        Same shape and dtype as ``x`` (``out`` when given).
    mean, rstd : ndarray of float64, shape ``(C,)``
        Only with ``return_stats=True`` (then the call returns ``(y, mean,
        rstd)``); ``(G, C)`` with ``virtual_batch_size`` in training.

    Raises
    ------
    TypeError
        If ``x`` does not hold float16, float32, float64 or bfloat16 values;
        ``axis`` or ``virtual_batch_size`` is not an int; ``weight``, ``bias``
        or the running statistics do not hold real numbers (in training, the
        running statistics are not float ndarrays); ``eps``, ``momentum`` or
        ``negative_slope`` is not a real number (``momentum=None`` included:
        the cumulative average is the layers'); ``out`` is not an ndarray of
        ``x``'s dtype; ``activation`` is not a str; ``shortcut`` is not a float
        array; ``mask`` is not a bool array.
    ValueError
        If ``x`` has fewer than 2 dimensions or ``axis`` is out of range;
        only one of ``running_mean`` and ``running_var`` is given, or neither
        with ``training=False``; a parameter or running statistic is not of
        shape ``(C,)``; a running statistic updated in training is read-only;
        ``eps < 0``, ``momentum`` is outside ``[0, 1]`` or either is NaN;
        training with one value per channel (``"Expected more than 1 value
        per channel when training, ..."``); ``out`` or ``shortcut`` does not
        have ``x``'s shape, ``out`` is read-only or shares memory with a
        running statistic updated in place; ``activation`` is not one of the
        names above; ``virtual_batch_size`` is not positive, does not divide
        ``N`` or ``axis`` is 0; ``mask`` does not broadcast to ``x`` or is
        combined with ``virtual_batch_size``.  Nothing is written by a call
        that raises.
    NotImplementedError
        For ``activation``, ``shortcut`` or ``mask`` on the ``cuda`` backend.

    See Also
    --------
    BatchNorm : the layer, which keeps the running statistics and differentiates.
    batch_norm_backward : the gradients, from ``return_stats=True``'s statistics.
    fastnorm.dask.batch_norm : the same on a Dask array.

    Notes
    -----
    With ``mean`` and ``var`` the biased statistics of each channel (of the
    batch in training, else the running ones):

    .. math::

        y = \\frac{x - \\mathrm{mean}}{\\sqrt{\\mathrm{var} + \\epsilon}}
            \\cdot \\mathrm{weight} + \\mathrm{bias}

    Statistics are exact to float64 accuracy (blocked Welford/Chan) whatever
    the offset of the data; float16 and bfloat16 are computed in float32 and
    rounded once.

    Examples
    --------
    A training step on ``(N, C, L) = (3, 2, 2)`` data updates the running
    statistics in place:

    >>> x = np.arange(12, dtype=np.float32).reshape(3, 2, 2)
    >>> running_mean, running_var = np.zeros(2, np.float32), np.ones(2, np.float32)
    >>> y = fastnorm.batch_norm(x, running_mean, running_var, training=True)
    >>> y.shape, y.dtype
    ((3, 2, 2), dtype('float32'))
    >>> mean = x.mean(axis=(0, 2), keepdims=True)
    >>> var = x.var(axis=(0, 2), keepdims=True)
    >>> np.allclose(y, (x - mean) / np.sqrt(var + 1e-5), atol=1e-6)
    True
    >>> print(running_mean, running_var)
    [0.45 0.65] [2.21 2.21]

    Evaluation normalizes with the running statistics; channels-last data
    takes ``axis=-1``:

    >>> y = fastnorm.batch_norm(x, running_mean, running_var)
    >>> np.allclose(y, (x - running_mean[:, None]) / np.sqrt(running_var[:, None] + 1e-5))
    True
    >>> x_last = np.ascontiguousarray(np.moveaxis(x, 1, -1))  # (N, L, C)
    >>> y_last, mean, rstd = fastnorm.batch_norm(x_last, training=True, axis=-1,
    ...                                          return_stats=True)
    >>> print(mean, rstd.round(4))
    [4.5 6.5] [0.3027 0.3027]
    """
    if out is None and activation is None and shortcut is None and return_stats is False \
            and virtual_batch_size is None and mask is None and type(negative_slope) is float:
        whole = _plain_calls(get_backend())[1]
        if whole is not None:
            served = whole(x, running_mean, running_var, weight, bias, training, momentum, eps, axis,
                           _core.SMALL_SIZE)
            if served is not None:
                return served
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
        result: tuple[np.ndarray, _core.Saved | None] = _cuda().channel_forward(
            x, cview, 1, use_input_stats, run_mean, run_var, factor, bessel, weight, bias, eps, out,
            save)
        return result

    target = _Target.make(x, out, save)
    view, result_view = target.views(_views.instance_view, axis)
    n = x.shape[0]
    w64, b64 = _as64(weight), _as64(bias)
    ep = None if fuse is None else fuse.epilogue(target, save, b64, eps)
    given = None
    if not use_input_stats:
        assert run_mean is not None and run_var is not None  # required then (checked above)
        given = (np.repeat(run_mean.astype(np.float64).reshape(1, channels), n, axis=0),
                 np.repeat(run_var.astype(np.float64).reshape(1, channels), n, axis=0))
    fwd = _core.forward_channels(backend_module(), view, result_view, 1, w64, b64, eps,
                                 _core.epi_args(ep), given, per_sample=True, threads=get_num_threads())
    y = target.finish()
    if use_input_stats and run_mean is not None and x.size:
        assert run_var is not None  # given with run_mean
        _core.update_running(backend_module(), run_mean, run_var, fwd.mean.mean(axis=0),
                             fwd.var.mean(axis=0), factor, spatial / (spatial - 1))
    saved = fwd.saved(view, w64, use_input_stats, x.shape, target.dtype, ep) if save else None
    return y, saved


@fill_doc
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

    Normalizes each channel of each sample over its spatial positions, then
    applies the per-channel affine.

    Parameters
    ----------
    x : array_like, shape ``(N, C, *spatial)`` (``axis=1``) or ``(N, *spatial, C)`` (``axis=-1``)
        float16, float32 or float64 (or ml_dtypes' bfloat16); at least 3-D.
        On the ``cuda`` backend also a CUDA device array.
    running_mean, running_var : ndarray, shape ``(C,)``, optional
        Given together or not at all.  With ``use_input_stats=True`` they are
        updated in place (writable float ndarrays) with the mean over the
        batch of the per-instance mean and *unbiased* variance; with
        ``use_input_stats=False`` they normalize (then they are required).
        None (the default): no running statistics.
    weight, bias : array_like, shape ``(C,)``, optional
        Per-channel scale and shift.  None (the default): scale 1, shift 0.
    use_input_stats : bool, default True
        Normalize with each instance's own statistics; False: with the
        running statistics.
    %(momentum)s
    %(eps)s
    axis : int, default 1
        The channel axis, ``1`` (channels-first) or ``-1`` (channels-last);
        any axis but 0, which is the batch.
    %(out)s
    %(epilogue)s
    return_stats : bool, default False
        Also return ``(mean, rstd)``, float64 ``(N, C)``, for
        :func:`instance_norm_backward`.

    Returns
    -------
    y : ndarray
        Same shape and dtype as ``x`` (``out`` when given).  Channels-last
        input is normalized in its layout (no transposition).
    mean, rstd : ndarray of float64, shape ``(N, C)``
        Only with ``return_stats=True``: the call returns ``(y, mean, rstd)``,
        ``rstd = 1 / sqrt(var + eps)``.

    Raises
    ------
    TypeError
        If ``x`` does not hold float16, float32, float64 or bfloat16 values;
        ``axis`` is not an int; a parameter or running statistic does not
        hold real numbers (updated in place: is not a float ndarray);
        ``eps``, ``momentum`` or ``negative_slope`` is not a real number;
        ``out`` is not an ndarray of ``x``'s dtype; ``activation`` is not a
        str.
    ValueError
        If ``x`` has fewer than 3 dimensions; ``axis`` is out of range or 0;
        only one running statistic is given, or none with
        ``use_input_stats=False``; a parameter or running statistic is not of
        shape ``(C,)`` (or is read-only where it is updated); ``eps < 0`` or
        ``momentum`` outside ``[0, 1]``; normalizing with the input's
        statistics with one spatial element (``"Expected more than 1 spatial
        element when training, ..."``); ``out`` or ``shortcut`` does not have
        ``x``'s shape, or ``out`` is read-only or shares memory with a
        running statistic updated in place; ``activation`` is not one of the
        names above.
    NotImplementedError
        For ``activation`` or ``shortcut`` on the ``cuda`` backend.

    See Also
    --------
    InstanceNorm : the layer.
    instance_norm_backward : the gradients.
    group_norm : statistics over groups of channels.

    Notes
    -----
    With ``mean[n, c]`` and ``var[n, c]`` the mean and biased variance of
    ``x[n, c]`` over its spatial positions:

    .. math::

        y_{n,c} = \\frac{x_{n,c} - \\mathrm{mean}_{n,c}}
                        {\\sqrt{\\mathrm{var}_{n,c} + \\epsilon}}
                  \\cdot \\mathrm{weight}_c + \\mathrm{bias}_c

    Examples
    --------
    >>> x = np.random.default_rng(0).standard_normal((2, 3, 8)).astype(np.float32)
    >>> y = fastnorm.instance_norm(x)
    >>> y.shape, y.dtype
    ((2, 3, 8), dtype('float32'))
    >>> mean, var = x.mean(axis=2, keepdims=True), x.var(axis=2, keepdims=True)
    >>> np.allclose(y, (x - mean) / np.sqrt(var + 1e-5), atol=1e-5)
    True

    The statistics come back with ``return_stats=True``, one per sample and
    channel:

    >>> x = (np.arange(16, dtype=np.float64) ** 2).reshape(2, 2, 4)
    >>> y, mean, rstd = fastnorm.instance_norm(x, return_stats=True)
    >>> print(mean)
    [[  3.5  31.5]
     [ 91.5 183.5]]
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
        result: tuple[np.ndarray, _core.Saved | None] = _cuda().channel_forward(
            x, cview, channels // groups, True, None, None, 0.0, 1.0, weight, bias, eps, out, save)
        return result

    target = _Target.make(x, out, save)
    view, result_view = target.views(_views.instance_view, axis)
    w64, b64 = _as64(weight), _as64(bias)
    ep = None if fuse is None else fuse.epilogue(target, save, b64, eps)
    fwd = _core.forward_channels(backend_module(), view, result_view, channels // groups, w64, b64, eps,
                                 _core.epi_args(ep), per_sample=True, threads=get_num_threads())
    y = target.finish()
    return y, fwd.saved(view, w64, True, x.shape, target.dtype, ep) if save else None


@fill_doc
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
        float16, float32 or float64 (or ml_dtypes' bfloat16); at least 2-D.
        On the ``cuda`` backend also a CUDA device array.
    num_groups : int
        The number of groups ``G``; a positive divisor of ``C``.
    weight, bias : array_like, shape ``(C,)``, optional
        Per-channel scale and shift.  None (the default): scale 1, shift 0.
    %(eps)s
    axis : int, default 1
        The channel axis, ``1`` (channels-first) or ``-1`` (channels-last);
        any axis but 0, which is the batch.  Channels-last input is
        normalized in its layout (no transposition), with statistics merged
        per group in float64.
    %(out)s
    %(epilogue)s
    return_stats : bool, default False
        Also return ``(mean, rstd)``, float64 ``(N, num_groups)``, for
        :func:`group_norm_backward`.

    Returns
    -------
    y : ndarray
        Same shape and dtype as ``x`` (``out`` when given).
    mean, rstd : ndarray of float64, shape ``(N, num_groups)``
        Only with ``return_stats=True``: the call returns ``(y, mean, rstd)``.

    Raises
    ------
    TypeError
        If ``x`` does not hold float16, float32, float64 or bfloat16 values;
        ``num_groups`` or ``axis`` is not an int; ``weight`` or ``bias`` does
        not hold real numbers; ``eps`` or ``negative_slope`` is not a real
        number; ``out`` is not an ndarray of ``x``'s dtype; ``activation`` is
        not a str.
    ValueError
        If ``x`` has fewer than 2 dimensions; ``axis`` is out of range or 0;
        ``num_groups`` is not positive or does not divide ``C``; ``weight`` or
        ``bias`` is not of shape ``(C,)``; ``eps < 0``; each group holds one
        value (``"Expected more than 1 value per channel when training,
        ..."``); ``out`` or ``shortcut`` does not have ``x``'s shape, or
        ``out`` is read-only; ``activation`` is not one of the names above.
    NotImplementedError
        For ``activation`` or ``shortcut`` on the ``cuda`` backend.

    See Also
    --------
    GroupNorm : the layer.
    group_norm_backward : the gradients.
    instance_norm : one channel per group.
    layer_norm : one group over the trailing axes.

    Notes
    -----
    With ``mean[n, g]`` and ``var[n, g]`` the mean and biased variance of the
    values of group ``g`` (channels ``g * C/G`` to ``(g + 1) * C/G - 1``, every
    spatial position) of sample ``n``, and ``c`` in group ``g``:

    .. math::

        y_{n,c} = \\frac{x_{n,c} - \\mathrm{mean}_{n,g}}
                        {\\sqrt{\\mathrm{var}_{n,g} + \\epsilon}}
                  \\cdot \\mathrm{weight}_c + \\mathrm{bias}_c

    Examples
    --------
    Six channels in three groups of two:

    >>> x = np.arange(24, dtype=np.float64).reshape(2, 6, 2)
    >>> y, mean, rstd = fastnorm.group_norm(x, 3, return_stats=True)
    >>> print(mean)
    [[ 1.5  5.5  9.5]
     [13.5 17.5 21.5]]
    >>> groups = x.reshape(2, 3, 4)
    >>> expected = (groups - groups.mean(axis=-1, keepdims=True)) / np.sqrt(
    ...     groups.var(axis=-1, keepdims=True) + 1e-5)
    >>> np.allclose(y, expected.reshape(x.shape))
    True

    Channels-last data, with a per-channel affine:

    >>> x_last = np.ascontiguousarray(np.moveaxis(x, 1, -1)).astype(np.float32)
    >>> weight, bias = np.full(6, 2.0, np.float32), np.ones(6, np.float32)
    >>> y_last = fastnorm.group_norm(x_last, 3, weight, bias, axis=-1)
    >>> np.allclose(y_last, np.moveaxis(y, 1, -1) * 2 + 1, atol=1e-5)
    True
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
        shape: tuple[int, ...] = (int(normalized_shape),)
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
) -> tuple[np.ndarray | tuple[np.ndarray, np.ndarray], _core.Saved | None]:
    """``residual`` (validated, ``x``'s shape): the rows normalized are ``x + residual``;
    the result is then ``((y, h), saved)`` with ``h = x + residual``.  ``axis``,
    ``feature_axis``: see :mod:`fastnorm._axes`; ``mask``: statistics over its True values.
    The general path: callers try :func:`_rows_plain` first where the call may be plain."""
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
        result: tuple[np.ndarray | tuple[np.ndarray, np.ndarray], _core.Saved | None] = \
            _cuda().rows_forward_device(x, len(shape), weight, bias, eps, center, out, save)
        return result
    w = weight if weight is None or weight.ndim == 1 else weight.reshape(-1)
    b = bias if bias is None or bias.ndim == 1 else bias.reshape(-1)
    return _rows_trailing(x, len(shape), w, b, eps, center, out, save, fuse, residual)


_MACHINE_EPS = {dt: float(np.finfo(dt).eps) for dt in _core._NATIVE_COMPUTE}


def _rows_plain(x: ArrayLike, normalized_shape: object, weight: ArrayLike | None,
                bias: ArrayLike | None, eps: object, center: bool,
                save: bool) -> tuple[np.ndarray, _core.Saved | None] | None:
    """:func:`_rows_norm` of a plain call: a non-empty C-contiguous float32 or float64 ndarray
    normalized over its last axis, parameters ``(M,)`` arrays of its dtype or None, a float
    ``eps``, on a CPU backend.  None for any other call, which the general path validates.

    The general path's checks and views cost a small input most of its time, and a large one
    tens of microseconds; such a call passes each of them by construction, and this one makes
    the same kernel call after comparing types.
    """
    if type(x) is not np.ndarray or not x.size or x.ndim == 0:
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
    if TYPE_CHECKING:  # the loop let exact ndarrays (or None) through; a cast free at run time
        weight, bias = cast("tuple[np.ndarray | None, np.ndarray | None]", (weight, bias))
    name = get_backend()
    if name == "cuda":
        return None
    x2 = x.reshape(-1, m)
    if x.size <= _core.SMALL_SIZE:
        y = np.empty_like(x)
        mean, rstd = backend_module(name).rows_forward(x2, weight, bias, eps, center, y.reshape(-1, m))
    else:
        y = _memory.empty_like(x)
        mean, rstd = _core.normalize_rows(backend_module(name), x2, weight, bias, eps, center,
                                          y.reshape(-1, m))
    saved = None
    if save:  # weight: an exact ndarray or None (checked above)
        saved = _core.Saved(x2, mean, rstd, weight, True, x.shape, dt, path="rows", center=center)
    return y, saved


def _rows_eps(eps: object, x: np.ndarray) -> float:
    if eps is None:
        eps = default_rms_eps(x.dtype)
    return _validate.real_scalar(eps, "eps", minimum=0.0)


def _rows_general(x: np.ndarray, normalized_shape: object, weight: ArrayLike | None,
                  bias: ArrayLike | None, eps: object, center: bool, out: np.ndarray | None,
                  save: bool, fuse: _Fuse | None, residual: np.ndarray | None, axis: object,
                  feature_axis: object,
                  mask: object) -> tuple[np.ndarray | tuple[np.ndarray, np.ndarray], _core.Saved | None]:
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
    assert inverse is not None  # as perm
    if saved is not None:
        saved.perm = perm
        saved.shape = tuple(saved.shape[i] for i in inverse)
    if isinstance(y, tuple):  # with a residual: (y, h)
        return (y[0].transpose(inverse) if out0 is None else out0, y[1].transpose(inverse)), saved
    return y.transpose(inverse) if out0 is None else out0, saved


def _one_group(geo: _axes.RowAxes, shape: tuple[int, ...], center: bool, residual: object,
               mask: object, out: np.ndarray | None) -> bool:
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


def _as_one_group(x: np.ndarray, geo: _axes.RowAxes, weight: np.ndarray | None,
                  bias: np.ndarray | None, eps: float, out: np.ndarray | None, save: bool,
                  fuse: _Fuse | None) -> tuple[np.ndarray, _core.Saved | None]:
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


def _rows_trailing(x: np.ndarray, trailing: int, w: np.ndarray | None, b: np.ndarray | None,
                   eps: float, center: bool, out: np.ndarray | None, save: bool,
                   fuse: _Fuse | None, residual: np.ndarray | None,
                   mask: np.ndarray | None = None,
                   ) -> tuple[np.ndarray | tuple[np.ndarray, np.ndarray], _core.Saved | None]:
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
    if hsum is not None:  # with a residual
        h = hsum.reshape(x.shape)
        return (y, h if h.dtype == target.dtype else _memory.cast(h, target.dtype)), saved
    return y, saved


def _masked_rows(
    x2: np.ndarray, mask: np.ndarray, trailing: int, w: np.ndarray | None, b: np.ndarray | None,
    eps: float, center: bool, out2: np.ndarray, ep: _core.Epilogue | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
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


@fill_doc
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

    Normalizes each sample over the trailing ``normalized_shape`` dimensions
    (or over any ``axis``) with its own mean and biased variance, then applies
    the elementwise affine.

    Parameters
    ----------
    x : array_like, shape ``(*, *normalized_shape)``
        float16, float32 or float64 (or ml_dtypes' bfloat16); any shape with
        ``axis``.  On the ``cuda`` backend also a CUDA device array.
    normalized_shape : int or tuple of int, or None
        The trailing shape normalized over (the sizes on ``axis`` when given;
        None only with ``axis``).  An int ``M`` means ``(M,)``.
    weight, bias : array_like, shape ``normalized_shape``, optional
        Elementwise scale and shift (of the ``feature_axis`` sizes when
        given).  None (the default): scale 1, shift 0.
    %(eps)s
    %(out)s
    %(epilogue)s
    %(residual)s
    return_stats : bool, default False
        Also return ``mean`` and ``rstd``, float64 of ``x``'s shape without
        the normalized axes (ONNX LayerNormalization's ``Mean`` and ``InvStdDev``), for
        :func:`layer_norm_backward`: ``(y, mean, rstd)`` (``((y, h), mean,
        rstd)`` with ``residual``, the statistics of ``h``).
    %(rows_axis)s
    feature_axis : int or tuple of int, optional
        The axes ``weight`` and ``bias`` span (Flax's ``feature_axes``), a
        subset of ``axis`` (None, the default: all of them); they are
        broadcast along the other normalized axes.  ``layer_norm(x, (C, H,
        W), w, b, feature_axis=1)`` on ``(N, C, H, W)`` normalizes each sample
        with per-channel ``w`` and ``b`` of shape ``(C,)``.
    %(rows_mask)s

    Returns
    -------
    y : ndarray, or (ndarray, ndarray) with ``residual``
        Same shape and dtype as ``x`` (``out`` when given); with ``residual``,
        ``(y, h)``.  Each row is reduced and normalized in one pass while it
        sits in cache.
    mean, rstd : ndarray of float64
        Only with ``return_stats=True``: of ``x``'s shape without the
        normalized axes, ``rstd = 1 / sqrt(var + eps)``.

    Raises
    ------
    TypeError
        If ``x`` (or ``shortcut``, ``residual``) does not hold float16,
        float32, float64 or bfloat16 values; ``normalized_shape``, ``axis`` or
        ``feature_axis`` is not an int or a sequence of ints; ``weight`` or
        ``bias`` does not hold real numbers; ``eps`` or ``negative_slope`` is
        not a real number; ``out`` is not an ndarray of ``x``'s dtype;
        ``activation`` is not a str; ``mask`` is not a bool array.
    ValueError
        If ``normalized_shape`` is empty, negative or does not equal ``x``'s
        trailing dimensions (its sizes on ``axis``); ``axis`` or
        ``feature_axis`` is out of range or repeats an axis, or
        ``feature_axis`` is not a subset of ``axis``; ``weight`` or ``bias``
        has another shape; ``eps < 0``; ``out``, ``shortcut`` or ``residual``
        does not have ``x``'s shape, or ``out`` is read-only; ``activation`` is
        not one of the names above; ``mask`` does not broadcast to ``x`` or
        is combined with ``residual``.
    NotImplementedError
        For ``activation``, ``shortcut``, ``residual``, ``axis``,
        ``feature_axis`` or ``mask`` on the ``cuda`` backend.

    See Also
    --------
    LayerNorm : the layer.
    layer_norm_backward : the gradients.
    rms_norm : without the mean.

    Notes
    -----
    With ``mean`` and ``var`` the mean and biased variance of each sample's
    values on the normalized axes:

    .. math::

        y = \\frac{x - \\mathrm{mean}}{\\sqrt{\\mathrm{var} + \\epsilon}}
            \\cdot \\mathrm{weight} + \\mathrm{bias}

    Examples
    --------
    >>> x = (np.arange(12, dtype=np.float32) ** 2).reshape(2, 2, 3)
    >>> y, mean, rstd = fastnorm.layer_norm(x, 3, return_stats=True)
    >>> y.shape, mean.shape
    ((2, 2, 3), (2, 2))
    >>> m, v = x.mean(axis=-1, keepdims=True), x.var(axis=-1, keepdims=True)
    >>> np.allclose(y, (x - m) / np.sqrt(v + 1e-5), atol=1e-5)
    True

    Over two trailing axes, with a weight and a bias of their shape:

    >>> y = fastnorm.layer_norm(x, (2, 3), np.full((2, 3), 2.0), np.ones((2, 3)))
    >>> m, v = x.mean(axis=(1, 2), keepdims=True), x.var(axis=(1, 2), keepdims=True)
    >>> np.allclose(y, (x - m) / np.sqrt(v + 1e-5) * 2 + 1, atol=1e-5)
    True

    The channels-first LayerNorm of ConvNeXt, over the channel axis of
    ``(N, C, H, W)``:

    >>> x = np.random.default_rng(0).standard_normal((2, 4, 3, 3)).astype(np.float32)
    >>> y = fastnorm.layer_norm(x, 4, axis=1)
    >>> m, v = x.mean(axis=1, keepdims=True), x.var(axis=1, keepdims=True)
    >>> np.allclose(y, (x - m) / np.sqrt(v + 1e-5), atol=1e-5)
    True

    A masked row takes the statistics of its kept values, and is 0 elsewhere:

    >>> x = np.array([[1.0, 2.0, 3.0, 100.0]])
    >>> y = fastnorm.layer_norm(x, 4, mask=np.array([True, True, True, False]))
    >>> print(y[0, :3].round(4), y[0, 3] == 0)
    [-1.2247  0.      1.2247] True
    """
    return _rows_call(x, normalized_shape, weight, bias, eps, True, out, return_stats, activation,
                      negative_slope, shortcut, residual, axis, feature_axis, mask)


@fill_doc
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

    Scales each sample's values on the trailing ``normalized_shape``
    dimensions (or on any ``axis``) by the inverse of their root mean square,
    then by ``weight``; no mean is subtracted and there is no bias.

    Parameters
    ----------
    x : array_like, shape ``(*, *normalized_shape)``
        float16, float32 or float64 (or ml_dtypes' bfloat16); any shape with
        ``axis``.  On the ``cuda`` backend also a CUDA device array.
    normalized_shape : int or tuple of int, or None
        The trailing shape normalized over (the sizes on ``axis`` when given;
        None only with ``axis``).  An int ``M`` means ``(M,)``.
    weight : array_like, shape ``normalized_shape``, optional
        Elementwise scale (of the ``feature_axis`` sizes when given).  None
        (the default): scale 1.
    eps : float or None, default None
        Added to the mean square before the square root, ``>= 0``.  None
        means the machine epsilon of the compute dtype, as PyTorch:
        ``np.finfo(np.float32).eps`` for float16, bfloat16 and float32
        input, ``np.finfo(np.float64).eps`` for float64.
    %(out)s
    %(epilogue)s
    %(residual)s
    return_stats : bool, default False
        Also return ``rstd = 1 / sqrt(mean(x**2) + eps)``, float64 of ``x``'s
        shape without the normalized axes, for :func:`rms_norm_backward`: ``(y, rstd)``
        (``((y, h), rstd)`` with ``residual``, the statistics of ``h``).
    %(rows_axis)s
    feature_axis : int or tuple of int, optional
        The axes ``weight`` spans (Flax's ``feature_axes``), a subset of
        ``axis`` (None, the default: all of them); it is broadcast along the
        other normalized axes.  ``rms_norm(x, (C, H, W), w, feature_axis=1)``
        on ``(N, C, H, W)`` normalizes each sample with a per-channel ``w`` of
        shape ``(C,)``.
    %(rows_mask)s

    Returns
    -------
    y : ndarray, or (ndarray, ndarray) with ``residual``
        Same shape and dtype as ``x`` (``out`` when given); with ``residual``,
        ``(y, h)``.
    rstd : ndarray of float64
        Only with ``return_stats=True``: of ``x``'s shape without the
        normalized axes.

    Raises
    ------
    TypeError
        If ``x`` (or ``shortcut``, ``residual``) does not hold float16,
        float32, float64 or bfloat16 values; ``normalized_shape``, ``axis`` or
        ``feature_axis`` is not an int or a sequence of ints; ``weight`` does
        not hold real numbers; ``eps`` (other than None) or
        ``negative_slope`` is not a real number; ``out`` is not an ndarray of
        ``x``'s dtype; ``activation`` is not a str; ``mask`` is not a bool
        array.
    ValueError
        If ``normalized_shape`` is empty, negative or does not equal ``x``'s
        trailing dimensions (its sizes on ``axis``); ``axis`` or
        ``feature_axis`` is out of range or repeats an axis, or
        ``feature_axis`` is not a subset of ``axis``; ``weight`` has another
        shape; ``eps < 0``; ``out``, ``shortcut`` or ``residual`` does not
        have ``x``'s shape, or ``out`` is read-only; ``activation`` is not one
        of the names above; ``mask`` does not broadcast to ``x`` or is
        combined with ``residual``.
    NotImplementedError
        For ``activation``, ``shortcut``, ``residual``, ``axis``,
        ``feature_axis`` or ``mask`` on the ``cuda`` backend.

    See Also
    --------
    RMSNorm : the layer.
    rms_norm_backward : the gradients.
    layer_norm : with the mean subtracted, and a bias.

    Notes
    -----
    With the mean taken over each sample's values on the normalized axes:

    .. math::

        y = \\frac{x}{\\sqrt{\\mathrm{mean}(x^2) + \\epsilon}} \\cdot \\mathrm{weight}

    Examples
    --------
    >>> x = np.array([[3.0, 4.0], [1.0, -1.0]])
    >>> y = fastnorm.rms_norm(x, 2, eps=0.0)
    >>> print(y.round(4))
    [[ 0.8485  1.1314]
     [ 1.     -1.    ]]
    >>> np.allclose(y, x / np.sqrt((x ** 2).mean(axis=-1, keepdims=True)))
    True

    A transformer block's fused add-and-norm: ``h = x + residual`` is
    returned with its normalization.

    >>> x = np.random.default_rng(0).standard_normal((2, 5, 8)).astype(np.float32)
    >>> residual = np.ones_like(x)
    >>> weight = np.linspace(0.5, 1.5, 8, dtype=np.float32)
    >>> y, h = fastnorm.rms_norm(x, 8, weight, residual=residual)
    >>> np.array_equal(h, x + residual)
    True
    >>> eps = np.finfo(np.float32).eps
    >>> np.allclose(y, h / np.sqrt((h ** 2).mean(axis=-1, keepdims=True) + eps) * weight,
    ...             atol=1e-5)
    True
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
                    axis: object = None) -> tuple[Any, ...]:
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


def _rows_call(x: ArrayLike, normalized_shape: object, weight: ArrayLike | None,
               bias: ArrayLike | None, eps: float | None, center: bool, out: np.ndarray | None,
               return_stats: bool, activation: str | None, negative_slope: float,
               shortcut: ArrayLike | None, residual: ArrayLike | None, axis: object,
               feature_axis: object, mask: ArrayLike | None) -> Any:
    """:func:`layer_norm` (``center``) or :func:`rms_norm`."""
    plain: tuple[np.ndarray | tuple[np.ndarray, np.ndarray], _core.Saved | None] | None = None
    if activation is None and shortcut is None and residual is None and out is None \
            and axis is None and feature_axis is None and mask is None and type(negative_slope) is float:
        if return_stats is False:
            whole = _plain_calls(get_backend())[0]
            if whole is not None:
                served = whole(x, normalized_shape, weight, bias, eps, center, _core.SMALL_SIZE)
                if served is not None:
                    return served
        plain = _rows_plain(x, normalized_shape, weight, bias, eps, center, bool(return_stats))
    save = bool(return_stats)
    if plain is None:
        x, fuse, residual = _rows_options(x, activation, negative_slope, shortcut, residual)
        plain = _rows_norm(x, normalized_shape, weight, bias, eps, center, out, save=save, fuse=fuse,
                           residual=residual, axis=axis, feature_axis=feature_axis, mask=mask)
    y, saved = plain
    if return_stats:
        return _with_row_stats(y, saved, x, normalized_shape, center, axis)
    return y


def _rows_options(x: ArrayLike, activation: object, negative_slope: object, shortcut: object,
                  residual: object) -> tuple[np.ndarray, _Fuse | None, np.ndarray | None]:
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
        dy = cast(np.ndarray, dy.transpose(perm))
        inverse = tuple(int(i) for i in np.argsort(perm))
        moved = tuple(saved.shape[p] for p in perm)
    else:
        inverse, moved = None, saved.shape

    def laid_out(a: np.ndarray) -> np.ndarray:
        a = a.reshape(moved)
        return a if inverse is None else a.transpose(inverse)

    dyc = np.ascontiguousarray(dy, dtype=saved.x.dtype).reshape(saved.x.shape)
    mask = getattr(saved, "mask", None)  # broadcastable to x
    # out where dx is written to it directly, else None
    direct = out if (out is not None and mask is None and perm is None and dh is None
                     and out.flags.c_contiguous and out.dtype == saved.x.dtype
                     and not np.may_share_memory(out, saved.x)
                     and not np.may_share_memory(out, dyc)) else None
    if mask is None:
        dx, grad_weight, grad_bias, grad_shortcut = _gradients(
            saved, dyc, dy, reduce, None if direct is None else direct.reshape(saved.x.shape))
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
    if direct is not None:
        return direct, grad_weight, grad_bias, grad_shortcut
    if dx.dtype != saved.dtype:
        dx = _memory.cast(dx, saved.dtype)
    return dx, grad_weight, grad_bias, grad_shortcut


def _gradients(saved: _core.Saved, dyc: np.ndarray, dy: np.ndarray, reduce: Any = None,
               dx: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
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
