"""The implementations under test: fastnorm on each backend and its peers.

:class:`Impl` is one implementation prepared for one case; :func:`build_impl` prepares one by
name (:func:`impl_names`): fastnorm on a backend (:func:`fastnorm_impl`), the naive NumPy
formula (:func:`numpy_impl`), PyTorch CPU (:func:`torch_impl`) and ONNX Runtime
(:func:`ort_impl`). torch, onnx and onnxruntime are imported only by :func:`import_torch` and
:func:`import_ort`; :class:`Runtimes` holds those that import.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from types import ModuleType
from typing import Any

import numpy as np

import fastnorm

from .cases import (
    COMPILE_IMPL,
    EPS,
    FASTNORM_PREFIX,
    JAX_IMPL,
    MOMENTUM,
    NUMPY_IMPL,
    ORT_IMPL,
    SLOW_OR_DEVICE_BACKENDS,
    TORCH_IMPL,
    Case,
    Problem,
)
from .naive import NaiveNumpyBatchNorm, NaiveNumpyNorm


@dataclass(frozen=True)
class Impl:
    """One implementation prepared for one case.

    ``call()`` does exactly the work that is timed and returns the result (``y`` or ``dx``);
    ``to_numpy`` turns that result into a NumPy array in the case's layout. ``context()``, when
    given, is entered around every sample (fastnorm: ``use_backend``), as a user selects a backend
    once for many calls; a bare ``call()`` outside the timing enters it itself.

    Parameters
    ----------
    name : str
        The implementation's name: ``"fastnorm-<backend>"`` or a peer's.
    call : callable
        Takes no argument, does the timed work and returns its result.
    to_numpy : callable, default numpy.asarray
        The result as a NumPy array in the case's layout.
    context : callable, optional
        Returns a context manager entered around every sample; None (the default): none.

    Attributes
    ----------
    name, call, to_numpy, context
        The constructor's arguments (a frozen dataclass).

    See Also
    --------
    build_impl : prepares one by name.

    Examples
    --------
    >>> from fastnorm import benchmark
    >>> impl = benchmark.Impl("double", lambda: np.arange(3) * 2)
    >>> impl.run()
    array([0, 2, 4])
    """

    #: the implementation's name: ``"fastnorm-<backend>"`` or a peer's
    name: str
    #: does the timed work and returns its result
    call: Callable[[], Any]
    #: the result as a NumPy array in the case's layout (default ``np.asarray``)
    to_numpy: Callable[[Any], np.ndarray] = field(default=np.asarray)
    #: a context entered around every sample (``None``: none)
    context: Callable[[], AbstractContextManager[Any]] | None = None

    def entered(self) -> AbstractContextManager[Any]:
        """:attr:`context` entered (a no-op context when there is none).

        Returns
        -------
        contextlib.AbstractContextManager
            A new context manager, to use in a ``with`` statement.

        Examples
        --------
        >>> from fastnorm import benchmark
        >>> impl = benchmark.Impl("numpy-backend", lambda: fastnorm.get_backend(),
        ...                       context=lambda: fastnorm.use_backend("numpy"))
        >>> with impl.entered():
        ...     impl.call()
        'numpy'
        """
        return self.context() if self.context is not None else nullcontext()

    def run(self) -> Any:
        """One call, inside :attr:`context`.

        Returns
        -------
        object
            What ``call()`` returns.

        Examples
        --------
        >>> from fastnorm import benchmark
        >>> benchmark.Impl("one", lambda: 1).run()
        1
        """
        with self.entered():
            return self.call()


class Unsupported(Exception):
    """An implementation does not run a case (the message says why).

    Raised by :func:`build_impl`; the benchmark reports the case as skipped for that
    implementation.

    Parameters
    ----------
    *args
        As for :class:`Exception`: the message.

    Examples
    --------
    >>> from fastnorm import benchmark
    >>> issubclass(benchmark.Unsupported, Exception)
    True
    """


@dataclass
class Runtimes:
    """The optional peers that import (``None`` where not), and why those that do not.

    Parameters
    ----------
    torch : module, optional
        PyTorch, or None.
    compile : bool, default False
        Whether ``torch.compile`` is timed (torch imports and it was not left out).
    jax : module, optional
        JAX, or None.
    ort, onnx : module, optional
        ONNX Runtime and the ``onnx`` package, or None.
    threads : int, default 1
        The thread count every implementation uses.
    notes : dict of str to str, optional
        Peer name -> why it does not run.

    Attributes
    ----------
    torch, compile, jax, ort, onnx, threads, notes
        The constructor's arguments (a dataclass).

    Examples
    --------
    >>> from fastnorm import benchmark
    >>> runtimes = benchmark.Runtimes(threads=2)
    >>> runtimes.torch is None, runtimes.threads
    (True, 2)
    """

    torch: ModuleType | None = None
    compile: bool = False  # torch.compile is timed (torch imports and it was not left out)
    jax: ModuleType | None = None
    ort: ModuleType | None = None
    onnx: ModuleType | None = None
    threads: int = 1
    notes: dict[str, str] = field(default_factory=dict)


def fast_backends() -> tuple[str, ...]:
    """fastnorm's available CPU backends except the slow float64 ``"numpy"`` reference.

    Returns
    -------
    tuple of str
        Of :func:`fastnorm.available_backends`, without ``"numpy"`` and ``"cuda"``.

    Examples
    --------
    >>> from fastnorm import benchmark
    >>> set(benchmark.fast_backends()) <= {"cython", "numba"}
    True
    """
    return tuple(b for b in fastnorm.available_backends() if b not in SLOW_OR_DEVICE_BACKENDS)


def import_torch() -> ModuleType | None:
    """PyTorch if it is installed and imports, else ``None``.

    Returns
    -------
    module or None
        ``torch``.

    Examples
    --------
    >>> from fastnorm import benchmark
    >>> torch = benchmark.import_torch()
    >>> torch is None or torch.__name__ == "torch"
    True
    """
    try:
        import torch
    except (ImportError, OSError):
        return None
    module: ModuleType = torch  # typed whether or not torch's own types are installed
    return module


def import_ort() -> tuple[ModuleType | None, ModuleType | None, str | None]:
    """``(onnxruntime, onnx, None)``, or ``(None, None, why not)``.

    ONNX Runtime runs models; the ``onnx`` package builds them (``onnx.helper``).

    Returns
    -------
    onnxruntime : module or None
    onnx : module or None
    why : str or None
        Why they are not both usable (None when they are).

    Examples
    --------
    >>> from fastnorm import benchmark
    >>> ort, onnx, why = benchmark.import_ort()
    >>> (ort is None) == (why is not None)
    True
    """
    try:
        import onnxruntime
    except (ImportError, OSError):
        return None, None, "onnxruntime is not installed (pip install onnxruntime onnx)"
    try:
        import onnx
        import onnx.helper
    except (ImportError, OSError):
        return None, None, "the onnx package (needed to build the models) is not installed"
    return onnxruntime, onnx, None


def impl_names(backends: Sequence[str], with_torch: bool, with_ort: bool = False,
               with_compile: bool = False, with_jax: bool = False) -> list[str]:
    """Names of the implementations compared: fastnorm per backend, NumPy, torch,
    torch.compile, JAX, then ORT.

    Parameters
    ----------
    backends : sequence of str
        fastnorm's backends to time (``"fastnorm-<backend>"`` each).
    with_torch : bool
        Include PyTorch (``"torch"``).
    with_ort : bool, default False
        Include ONNX Runtime (``"ort"``).
    with_compile : bool, default False
        Include ``torch.compile`` (``"compile"``; only with ``with_torch``).
    with_jax : bool, default False
        Include JAX (``"jax"``).

    Returns
    -------
    list of str
        In table order.

    Examples
    --------
    >>> from fastnorm import benchmark
    >>> benchmark.impl_names(["cython"], with_torch=True, with_ort=True)
    ['fastnorm-cython', 'numpy', 'torch', 'ort']
    """
    names = [FASTNORM_PREFIX + b for b in backends] + [NUMPY_IMPL]
    for name, wanted in ((TORCH_IMPL, with_torch), (COMPILE_IMPL, with_compile and with_torch),
                         (JAX_IMPL, with_jax), (ORT_IMPL, with_ort)):
        if wanted:
            names.append(name)
    return names


def build_impl(
    name: str,
    case: Case,
    problem: Problem,
    torch: ModuleType | None = None,
    runtimes: Runtimes | None = None,
) -> Impl:
    """Prepare implementation ``name`` (see :func:`impl_names`) for ``case``.

    For the backward case this runs the (untimed) training forward that backward needs.

    Parameters
    ----------
    name : str
        ``"fastnorm-<backend>"``, ``"numpy"``, ``"torch"``, ``"compile"``, ``"jax"`` or
        ``"ort"``.
    case : Case
        What to run.
    problem : Problem
        The case's data.
    torch : module, optional
        PyTorch, for ``"torch"`` and ``"compile"`` (else ``runtimes.torch``).
    runtimes : Runtimes, optional
        The optional peers (needed for ``"ort"``).

    Returns
    -------
    Impl
        Ready to time.

    Raises
    ------
    Unsupported
        When the implementation does not run the case.
    ValueError
        For an unknown name, or a peer whose package is not installed.

    Examples
    --------
    >>> from fastnorm import benchmark
    >>> case = benchmark.Case("layer_norm", "forward", (4, 8), -1)
    >>> problem = benchmark.make_problem(case.shape, case.axis)
    >>> impl = benchmark.build_impl("numpy", case, problem)
    >>> impl.name, impl.run().shape
    ('numpy', (4, 8))
    """
    if name.startswith(FASTNORM_PREFIX):
        return fastnorm_impl(case, problem, name.removeprefix(FASTNORM_PREFIX))
    if name == NUMPY_IMPL:
        return numpy_impl(case, problem)
    if name == TORCH_IMPL:
        torch = torch if torch is not None else (runtimes.torch if runtimes else None)
        if torch is None:
            raise ValueError("the torch implementation needs torch installed")
        return torch_impl(case, problem, torch)
    if name == COMPILE_IMPL:
        torch = torch if torch is not None else (runtimes.torch if runtimes else None)
        if torch is None:
            raise ValueError("the compile implementation needs torch installed")
        from .compiled import compile_impl

        return compile_impl(case, problem, torch)
    if name == JAX_IMPL:
        jax = runtimes.jax if runtimes is not None else None
        if jax is None:
            from .compiled import import_jax

            jax = import_jax()
        if jax is None:
            raise ValueError("the jax implementation needs jax installed")
        from .compiled import jax_impl

        return jax_impl(case, problem, jax)
    if name == ORT_IMPL:
        if runtimes is None or runtimes.ort is None or runtimes.onnx is None:
            raise ValueError("the ort implementation needs onnxruntime and onnx installed")
        return ort_impl(case, problem, runtimes)
    raise ValueError(f"unknown implementation {name!r}")


def make_layer(case: Case) -> Any:
    """The fastnorm layer of ``case`` (float32, with a weight, and a bias but for RMSNorm).

    Parameters
    ----------
    case : Case
        Its family, shape and axis choose the layer.

    Returns
    -------
    BatchNorm, LayerNorm, RMSNorm, GroupNorm or InstanceNorm2d
        A new layer, in training mode.

    Raises
    ------
    ValueError
        For an unknown family.

    Examples
    --------
    >>> from fastnorm import benchmark
    >>> benchmark.make_layer(benchmark.Case("layer_norm", "forward", (4, 8), -1))
    LayerNorm((8,), eps=1e-05, elementwise_affine=True, bias=True)
    """
    f = case.family
    if f == "batch_norm":
        return fastnorm.BatchNorm(
            case.num_features, eps=EPS, momentum=MOMENTUM, axis=case.axis, dtype=np.float32
        )
    if f == "layer_norm":
        return fastnorm.LayerNorm(case.shape[-1], eps=case.eps, dtype=np.float32)
    if f == "rms_norm":
        return fastnorm.RMSNorm(case.shape[-1], eps=case.eps, dtype=np.float32)
    if f == "group_norm":
        return fastnorm.GroupNorm(
            case.num_groups, case.num_features, eps=case.eps, axis=case.axis, dtype=np.float32
        )
    if f == "instance_norm":
        return fastnorm.InstanceNorm2d(
            case.num_features, eps=case.eps, momentum=MOMENTUM, affine=True, axis=case.axis,
            dtype=np.float32,
        )  # fmt: skip
    raise ValueError(f"unknown family {f!r}")


def fastnorm_forward(case: Case, problem: Problem) -> Callable[[], Any]:
    """The forward as a fastnorm function with the case's arguments, as the PyTorch peer calls
    ``torch.nn.functional`` (BatchNorm in training updates copies of the running statistics)."""
    p = problem
    f = case.family
    w, b = p.weight.copy(), p.bias.copy()
    if f == "batch_norm":
        rmean, rvar = p.running_mean.copy(), p.running_var.copy()
        return partial(fastnorm.batch_norm, p.x, rmean, rvar, w, b, case.kind != "eval", MOMENTUM,
                       EPS, axis=case.axis)
    if f == "layer_norm":
        return partial(fastnorm.layer_norm, p.x, (case.shape[-1],), w, b, case.eps)
    if f == "rms_norm":
        return partial(fastnorm.rms_norm, p.x, (case.shape[-1],), w, case.eps)
    if f == "group_norm":
        return partial(fastnorm.group_norm, p.x, case.num_groups, w, b, case.eps, axis=case.axis)
    if f == "instance_norm":
        return partial(fastnorm.instance_norm, p.x, None, None, w, b, True, MOMENTUM, case.eps,
                       axis=case.axis)
    raise ValueError(f"unknown family {f!r}")


def fastnorm_impl(case: Case, problem: Problem, backend: str) -> Impl:
    """fastnorm on ``backend``: the function of :func:`fastnorm_forward` for a forward case;
    for a backward case ``layer.backward(dy)`` after one training forward of the layer."""
    p = problem
    context = partial(fastnorm.use_backend, backend)
    if case.kind != "backward":
        return Impl(FASTNORM_PREFIX + backend, fastnorm_forward(case, p), context=context)
    layer = make_layer(case)
    values = {
        "weight": p.weight,
        "bias": p.bias,
        "running_mean": p.running_mean,
        "running_var": p.running_var,
        "num_batches_tracked": np.asarray(0),
    }
    layer.load_state_dict({k: values[k] for k in layer.state_dict() if k in values})
    with context():
        layer(p.x)  # the training forward whose backward is timed
    return Impl(FASTNORM_PREFIX + backend, partial(layer.backward, p.dy), context=context)


def numpy_impl(case: Case, problem: Problem) -> Impl:
    """The naive float32 NumPy formula (:class:`NaiveNumpyBatchNorm`, :class:`NaiveNumpyNorm`)."""
    if case.family == "batch_norm":
        bn = NaiveNumpyBatchNorm(problem)
        call = partial(bn.forward, problem.x, case.kind != "eval")
        backward = bn.backward
    else:
        norm = NaiveNumpyNorm(case, problem)
        call = partial(norm.forward, problem.x)
        backward = norm.backward
    if case.kind == "backward":
        call()
        call = partial(backward, problem.dy)
    return Impl(NUMPY_IMPL, call)


def _to_torch(torch: ModuleType, a: np.ndarray, channels_last: bool) -> Any:
    """A torch tensor sharing ``a``'s memory; NHWC data becomes a channels_last NCHW tensor."""
    t = torch.from_numpy(a)
    return t.permute(0, 3, 1, 2) if channels_last else t


def _from_torch(t: Any, channels_last: bool) -> np.ndarray:
    """The inverse of :func:`_to_torch`: a NumPy array in the original layout."""
    t = t.detach()
    a: np.ndarray = t.permute(0, 2, 3, 1).numpy() if channels_last else t.numpy()
    return a


def torch_forward(torch: ModuleType, case: Case, problem: Problem) -> Callable[..., Any]:
    """``forward(x, weight, bias)`` with ``torch.nn.functional`` (``bias`` unused by RMSNorm)."""
    F = torch.nn.functional
    normalized = (case.shape[-1],)
    f = case.family
    if f == "batch_norm":
        rmean = torch.from_numpy(problem.running_mean.copy())
        rvar = torch.from_numpy(problem.running_var.copy())
        training = case.kind != "eval"
        return lambda x, w, b: F.batch_norm(x, rmean, rvar, w, b, training, MOMENTUM, EPS)
    if f == "layer_norm":
        return lambda x, w, b: F.layer_norm(x, normalized, w, b, case.eps)
    if f == "rms_norm":
        return lambda x, w, b: F.rms_norm(x, normalized, w, case.eps)
    if f == "group_norm":
        return lambda x, w, b: F.group_norm(x, case.num_groups, w, b, case.eps)
    if f == "instance_norm":
        return lambda x, w, b: F.instance_norm(x, None, None, w, b, True, MOMENTUM, case.eps)
    raise ValueError(f"unknown family {f!r}")


def torch_impl(case: Case, problem: Problem, torch: ModuleType, forward: Callable[..., Any] | None = None,
               name: str = TORCH_IMPL,
               prepare: Callable[[], AbstractContextManager[Any]] = nullcontext) -> Impl:
    """PyTorch CPU: ``torch.nn.functional`` forward; backward through ``autograd.grad``.

    Backward: the forward runs once here, untimed, with the input, weight and bias requiring
    grad; each call then runs ``torch.autograd.grad(y, (x, weight, bias), dy,
    retain_graph=True)`` (``dx``, ``grad_weight`` and ``grad_bias``, what fastnorm's backward
    computes) on that kept graph, so only the backward is timed.  ``forward`` (default
    :func:`torch_forward`) and ``name``: another peer through the same steps (``torch.compile``),
    run once here, untimed, forward and backward, inside ``prepare()``.
    """
    p = problem
    forward = torch_forward(torch, case, p) if forward is None else forward
    x = _to_torch(torch, p.x, case.channels_last)
    weight, bias = torch.from_numpy(p.weight.copy()), torch.from_numpy(p.bias.copy())
    if not case.has_bias:
        bias = None
    to_numpy = partial(_from_torch, channels_last=case.channels_last)
    if case.kind != "backward":
        call = partial(forward, x, weight, bias)
        with prepare():
            call()
        return Impl(name, call, to_numpy)

    leaves = [x.detach().requires_grad_(), weight.requires_grad_()]
    if bias is not None:
        leaves.append(bias.requires_grad_())
        bias = leaves[2]
    dy = _to_torch(torch, p.dy, case.channels_last)
    inputs = tuple(leaves)

    def backward() -> Any:
        return torch.autograd.grad(y, inputs, dy, retain_graph=True)[0]

    with prepare():
        y = forward(leaves[0], leaves[1], bias)
        backward()
    return Impl(name, backward, to_numpy)


#: ONNX operator and opset per family (GroupNormalization: opset 21's per-channel scale and bias)
ORT_OPS: dict[str, tuple[str, int]] = {
    "batch_norm": ("BatchNormalization", 15),
    "instance_norm": ("InstanceNormalization", 17),
    "group_norm": ("GroupNormalization", 21),
    "layer_norm": ("LayerNormalization", 17),
    "rms_norm": ("RMSNormalization", 23),
}


def ort_unsupported(case: Case) -> str | None:
    """Why ONNX Runtime does not run ``case`` (``None`` when it does)."""
    if case.kind == "backward":
        return "ONNX Runtime: forward only"
    if case.channels_last:
        return "ONNX normalization ops are channels-first (NCHW only)"
    return None


def ort_model(case: Case, problem: Problem, onnx: ModuleType) -> bytes:
    """A one-node ONNX model computing ``case``'s forward on input ``x``, output ``y``.

    BatchNormalization with ``training_mode=1`` (batch statistics; the running ones come out as
    extra outputs, ONNX's ``momentum`` being the weight of the old running value) for the training
    forward, ``training_mode=0`` for eval; the other families with their ONNX operator of
    :data:`ORT_OPS`, normalizing over the last axis (LayerNorm, RMSNorm) or per channel/group.
    """
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    op, opset = ORT_OPS[case.family]
    p = problem
    f32 = onnx.TensorProto.FLOAT
    shape = list(case.shape)
    inputs = [helper.make_tensor_value_info("x", f32, shape)]
    outputs = [helper.make_tensor_value_info("y", f32, shape)]
    params = {"scale": p.weight}
    if case.has_bias:
        params["bias"] = p.bias
    attrs: dict[str, Any] = {"epsilon": case.eps}
    node_outputs = ["y"]
    if case.family == "batch_norm":
        params["mean"], params["var"] = p.running_mean, p.running_var
        if case.kind == "forward":
            attrs.update(momentum=1.0 - MOMENTUM, training_mode=1)
            node_outputs += ["running_mean", "running_var"]
            c = case.num_features
            outputs += [helper.make_tensor_value_info(n, f32, [c]) for n in node_outputs[1:]]
    elif case.family == "group_norm":
        attrs["num_groups"] = case.num_groups
    elif case.family in ("layer_norm", "rms_norm"):
        attrs["axis"] = -1
    inits = [numpy_helper.from_array(np.ascontiguousarray(v), k) for k, v in params.items()]
    node = helper.make_node(op, ["x", *params], node_outputs, **attrs)
    graph = helper.make_graph([node], f"fastnorm_{case.family}", inputs, outputs, inits)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets)
    try:
        model.ir_version = helper.find_min_ir_version_for(opsets)
    except (AttributeError, ValueError, KeyError):
        pass  # keep the onnx package's default
    serialized: bytes = model.SerializeToString()
    return serialized


def ort_session(model: bytes, runtimes: Runtimes) -> Any:
    """A CPU session with ``intra_op_num_threads`` = the benchmark's threads, inter-op 1.

    Its thread pool does not spin after a run (``session.intra_op.allow_spinning=0``): spinning
    threads would steal the CPUs from the implementation timed next in the round.
    """
    ort: Any = runtimes.ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = runtimes.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def ort_impl(case: Case, problem: Problem, runtimes: Runtimes) -> Impl:
    """ONNX Runtime CPU, forward only: ``session.run(["y"], {"x": x})``."""
    reason = ort_unsupported(case)
    if reason:
        raise Unsupported(reason)
    try:
        assert runtimes.onnx is not None
        session = ort_session(ort_model(case, problem, runtimes.onnx), runtimes)
    except Exception as exc:  # an operator this onnxruntime lacks, an opset it does not know
        op, opset = ORT_OPS[case.family]
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Unsupported(f"{op} (opset {opset}) not supported here: {first[:120]}") from exc
    feeds = {"x": problem.x}
    return Impl(ORT_IMPL, lambda: session.run(["y"], feeds)[0])
