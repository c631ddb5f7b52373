"""Parameter descriptions shared by several docstrings, written once.

A docstring names a shared entry with a placeholder line ``%(name)s`` (alone on its line,
indented as the entry should be); :func:`fill_doc` replaces it, at import time, with the text
of :data:`PARAMS` indented the same way (entries may hold placeholders too), so that
``help()``, ``inspect.getdoc`` and Sphinx's autodoc all show the final text.  An unknown name
is an error at import.
"""

from __future__ import annotations

import re
import textwrap
from types import FunctionType
from typing import TypeVar

__all__ = ["PARAMS", "fill_doc"]

_T = TypeVar("_T")

#: name -> numpydoc entries (``name : type`` lines with their descriptions), unindented
PARAMS: dict[str, str] = {
    "eps": """\
eps : float, default 1e-5
    Added to the variance before the square root; a real number ``>= 0``.""",
    "momentum": """\
momentum : float, default 0.1
    Weight of the batch statistic in the running update, in ``[0, 1]``:
    ``running = (1 - momentum) * running + momentum * batch_stat``.""",
    "channel_axis": """\
axis : int, default 1
    The channel axis, NumPy style: ``1`` for channels-first data (``NCL``,
    ``NCHW``, ``NCDHW``), ``-1`` for channels-last data (``NLC``, ``NHWC``,
    ``NDHWC``); a negative axis counts from the end.""",
    "out": """\
out : ndarray, optional
    Where to write the result: a writable ``numpy.ndarray`` of ``x``'s shape
    and dtype, which is returned.  It may be ``x`` itself (in-place
    normalization).  None (the default): a new array.""",
    "backward_out": """\
out : ndarray, optional
    Where to write ``dx``: a writable ``numpy.ndarray`` of ``x``'s shape and
    dtype, which is returned as ``dx``.  The kernels write there directly
    when it is C-contiguous in the compute dtype and shares no memory with
    ``x`` or ``dy``, the call has no ``mask`` and (LayerNorm, RMSNorm) the
    normalized axes are trailing; otherwise ``dx`` is copied there.  None
    (the default): a new array.""",
    "backward_raises": """\
TypeError
    If ``x``, ``dy``, ``mean`` or ``rstd`` does not hold float values or
    is not a NumPy array (the functional backward runs on the CPU
    backends); ``weight`` does not hold real numbers; an axis is not an
    int; ``out`` is not an ndarray of ``x``'s dtype.
ValueError
    If ``dy`` does not have ``x``'s shape; ``mean``, ``rstd`` or ``weight``
    does not have the shape stated above; an axis is out of range; ``out``
    does not have ``x``'s shape or is read-only.""",
    "epilogue": """\
activation : {None, "relu", "leaky_relu", "gelu", "gelu_tanh", "silu"}, optional
    Applied to the result in the same pass over memory as the
    normalization: ``y = activation(norm(x) + shortcut)``.  ``"gelu"`` is
    the exact (erf) form, ``"gelu_tanh"`` the tanh approximation.  None
    (the default): no activation.
negative_slope : float, default 0.01
    The slope of ``"leaky_relu"`` for negative values.
shortcut : array_like, shape of ``x``, optional
    Added after the normalization and before the activation (the tail of
    a residual block), in the same pass; cast to ``x``'s dtype.  It may be
    ``out``.  None (the default): nothing is added.""",
    "residual": """\
residual : array_like, shape of ``x``, optional
    The pre-norm residual stream: ``h = x + residual`` is formed and
    normalized in the same pass, and the call returns ``(y, h)`` (``h`` of
    ``x``'s dtype), as a transformer block's fused add-and-norm.  float16
    and bfloat16 input: ``h`` is summed in float32, normalized, then
    rounded.  None (the default): ``x`` itself is normalized.""",
    "rows_axis": """\
axis : int or tuple of int, optional
    The axes normalized over (Keras' ``axis``, Flax's ``reduction_axes``);
    None (the default): the trailing ``len(normalized_shape)`` axes, as
    PyTorch.  ``normalized_shape`` may then be None; given, it must equal
    ``x``'s sizes on those axes.  Trailing axes are a reshape of ``x``; any
    other axes cost one transposed copy of ``x`` (none when ``x`` is already
    laid out with them last, as a previous such result is), and the result
    is an array of ``x``'s shape laid out in memory with the normalized axes
    last (not C-contiguous; ``out=`` of another layout costs a second copy).""",
    "rows_mask": """\
mask : array_like of bool, optional
    Broadcastable to ``x``: the statistics are taken over the values where
    it is True only (padding tokens, invalid pixels), and the output is 0
    where it is False; the backward gives those values a zero gradient.  A
    row with no True value gives 0.  Not with ``residual``.  None (the
    default): every value counts.""",
    # -- fastnorm.dask ------------------------------------------------------------
    "split_every": """\
split_every : int, optional
    Fan-in of the statistics' merge tree (``dask.array.reduction``'s); None
    (the default): Dask's.""",
    "dask_raises": """\
TypeError
    If ``x`` is not a ``dask.array.Array`` of float16, float32 or float64,
    or an argument has the wrong type, as for the NumPy function.
ValueError
    If an argument is invalid, as for the NumPy function (checked when the
    graph is built; a statistic of one value in training when the sizes
    are only known at compute time raises then).""",
    # -- layers ------------------------------------------------------------------
    "running_params": """\
num_features : int
    ``C``, the size of the channel axis; positive.
eps : float, default 1e-5
    Added to the variance before the square root, ``>= 0``.
momentum : float or None, default 0.1
    Weight of the batch statistic in the running update, in ``[0, 1]``:
    ``running = (1 - momentum) * running + momentum * batch_stat``; None
    uses the cumulative average, ``momentum = 1 / num_batches_tracked``.""",
    "layer_dtype": """\
dtype : dtype, default numpy.float32
    Of the parameters (and running statistics): float16, float32 or float64.
    The output always has the input's dtype.""",
    "layer_activation": """\
activation : {None, "relu", "leaky_relu", "gelu", "gelu_tanh", "silu"}, optional
    Applied to the output in the same pass over memory as the
    normalization (``"gelu"``: exact, ``"gelu_tanh"``: the tanh
    approximation); :meth:`backward` differentiates through it.  None (the
    default): no activation.  Settable later (:attr:`activation`).
negative_slope : float, default 0.01
    The slope of ``"leaky_relu"`` for negative values.""",
    "bn_params": """\
%(bn_core_params)s
%(bn_extra_params)s""",
    "bn_core_params": """\
%(running_params)s
affine : bool, default True
    Learnable ``weight`` (ones) and ``bias`` (zeros), shape ``(C,)``.
track_running_stats : bool, default True
    Keep ``running_mean`` (zeros), ``running_var`` (ones) and
    ``num_batches_tracked``; without them batch statistics are used in
    evaluation too.
axis : int, default 1
    Channel axis of the input: ``1`` (channels-first) or ``-1``
    (channels-last), or any other axis.
%(layer_dtype)s
%(layer_activation)s""",
    "bn_extra_params": """\
virtual_batch_size : int, optional
    Ghost batch normalization wherever batch statistics normalize (in
    training, and in evaluation without running statistics): statistics
    per consecutive virtual batch of this many samples, which must divide
    the batch (see :func:`fastnorm.batch_norm`).  None (the default): the
    whole batch.
renorm : bool, default False
    Batch Renormalization (Ioffe 2017, Keras's ``renorm=True``): in training
    ``y = ((x - mean_B) / sigma_B * r + d) * weight + bias`` with
    ``r = clip(sigma_B / renorm_std, rmin, rmax)`` and ``d = clip((mean_B -
    renorm_mean) / renorm_std, -dmax, dmax)``, ``sigma_B = sqrt(var_B +
    eps)``, both constants of the gradient; then ``renorm_mean`` and
    ``renorm_std`` (buffers in the state dict) move toward ``mean_B`` and
    ``sigma_B`` by ``renorm_momentum``.  Evaluation uses the running
    statistics, updated as without renorm.  Needs
    ``track_running_stats=True`` and no ``virtual_batch_size``.
renorm_clipping : dict, optional
    ``{"rmax": ..., "rmin": ..., "dmax": ...}`` (Keras's keys); absent keys
    (or None) are inf, 0 and inf, as in Keras (the paper clips ``r`` to
    ``[1/rmax, rmax]``: give ``rmin`` for that).  ``rmax >= 1``,
    ``0 <= rmin <= 1``, ``dmax >= 0``.
renorm_momentum : float, default 0.01
    Weight of the batch statistic in the renorm state's update, in ``[0,
    1]``, in this library's convention (Keras's ``renorm_momentum=0.99`` is
    0.01 here).""",
    "in_params": """\
%(running_params)s
affine : bool, default False
    Learnable ``weight`` (ones) and ``bias`` (zeros), shape ``(C,)``.
track_running_stats : bool, default False
    Keep ``running_mean`` (zeros), ``running_var`` (ones) and
    ``num_batches_tracked``: training updates them with the batch mean of
    the per-instance statistics, and evaluation normalizes with them.
    Without them each instance's statistics are used in evaluation too.
axis : int, default 1
    Channel axis of the input: ``1`` (channels-first) or ``-1``
    (channels-last); any axis but 0, the batch (checked at the forward).
%(layer_dtype)s
%(layer_activation)s""",
    "in_raises": """\
TypeError
    If ``num_features`` or ``axis`` is not an int, ``eps``, ``momentum`` or
    ``negative_slope`` is not a real number, ``dtype`` is not float16,
    float32 or float64, or ``activation`` is not a str.
ValueError
    If ``num_features`` is not positive, ``eps < 0``, ``momentum`` is
    outside ``[0, 1]`` or ``activation`` is not a known name.""",
    "running_attributes": """\
weight, bias : ndarray, shape ``(C,)``, or None
    The learnable affine parameters, of ``dtype`` (None without
    ``affine``).
running_mean, running_var : ndarray, shape ``(C,)``, or None
    The running statistics, of ``dtype`` (None without
    ``track_running_stats``); the variance is the unbiased one.
num_batches_tracked : int or None
    Training steps taken (None without ``track_running_stats``).
num_features, eps, momentum, affine, track_running_stats, axis
    The constructor's arguments, validated.""",
    "layer_attributes": """\
training : bool
    Training mode (True after construction); see :meth:`train` and
    :meth:`eval`.
grad_weight, grad_bias : ndarray or None
    Set by :meth:`backward`: the gradients of ``weight`` and ``bias``, of
    their shape and dtype (None where there is no such parameter, or
    before any backward).
activation : str or None
    The activation applied in the forward pass (settable).
negative_slope : float
    The slope of ``"leaky_relu"`` (settable).
retain_for_backward : bool
    Keep each forward's input (by reference) and statistics for
    :meth:`backward` (True by default); see :func:`fastnorm.inference_mode`.""",
    "forward_out": """\
out : ndarray, optional
    Where to write the result: a writable ``numpy.ndarray`` of ``x``'s shape
    and dtype (it may be ``x`` itself), which is returned.  None (the
    default): a new array.
shortcut : array_like, shape of ``x``, optional
    Added to the normalized result before the layer's activation
    (``activation(norm(x) + shortcut)``); :meth:`backward` then also returns
    its gradient.  None (the default): nothing is added.""",
    "forward_raises": """\
TypeError
    If ``x`` or ``shortcut`` does not hold float16, float32, float64 or
    bfloat16 values, or ``out`` is not an ndarray of ``x``'s dtype.
ValueError
    If ``x`` has too few dimensions (for the ``1d``/``2d``/``3d`` classes:
    another number of dimensions) or another size on the channel axis;
    ``out`` or ``shortcut`` does not have ``x``'s shape, or ``out`` is
    read-only.""",
    "bn_raises": """\
TypeError
    If ``num_features`` or ``virtual_batch_size`` is not an int, ``eps``,
    ``momentum``, ``negative_slope`` or ``renorm_momentum`` is not a real
    number, ``axis`` is not an int, ``dtype`` is not float16, float32 or
    float64, or ``activation`` is not a str.
ValueError
    If ``num_features`` or ``virtual_batch_size`` is not positive, ``eps <
    0``, ``momentum`` or ``renorm_momentum`` is outside ``[0, 1]``,
    ``activation`` is not a known name, ``renorm=True`` without
    ``track_running_stats`` or with ``virtual_batch_size``, or
    ``renorm_clipping`` has unknown keys or values out of range.""",
}

_PLACEHOLDER = re.compile(r"^([ \t]*)%\((\w+)\)s[ \t]*$", re.MULTILINE)


def _fill(doc: str) -> str:
    def entry(match: re.Match[str]) -> str:
        indent, name = match.groups()
        return textwrap.indent(_fill(PARAMS[name]), indent)  # entries may name entries

    return _PLACEHOLDER.sub(entry, doc)


def fill_doc(obj: _T) -> _T:
    """Replace the ``%(name)s`` placeholder lines of ``obj``'s docstring with :data:`PARAMS`.

    A decorator for functions and classes; returns ``obj`` itself.  For a class,
    the docstrings of the functions it defines (methods, class and static
    methods) are filled in too.  Docstrings stripped by ``python -OO`` (None)
    are left alone.

    Parameters
    ----------
    obj : function or class
        Whose ``__doc__`` to fill in.

    Returns
    -------
    function or class
        ``obj``, its ``__doc__`` filled in.

    Raises
    ------
    KeyError
        For a placeholder naming no entry of :data:`PARAMS`.
    """
    doc = getattr(obj, "__doc__", None)
    if doc:
        obj.__doc__ = _fill(doc)
    if isinstance(obj, type):
        for member in vars(obj).values():
            function = getattr(member, "__func__", member)  # classmethod, staticmethod
            if isinstance(function, FunctionType) and function.__doc__:
                function.__doc__ = _fill(function.__doc__)
    return obj
