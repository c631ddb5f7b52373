"""The compiling peers: ``torch.compile`` (Inductor's generated C++/OpenMP kernels) and JAX ``jit``
(XLA CPU), forward and backward, compiled before timing.

:func:`compile_impl` compiles PyTorch's ``torch.nn.functional`` forward (:func:`.peers.
torch_forward`) with ``torch.compile`` (default mode); its backward is ``torch.autograd.grad``
through the compiled graph (AOTAutograd compiles the backward graph too).  :func:`jax_impl`
writes each family in ``jax.numpy`` (the mean, then the mean of squared deviations), jitted;
its backward is the ``jax.vjp`` function of that forward, formed once untimed (as the other
peers run their forward once), applied to ``dy`` under ``jit``.  Both are compiled when
prepared, each case on its own static shapes.  A peer that fails to compile (no C++ compiler
for Inductor, a JAX install that does not load) does not run the case, and says why.  JAX is
imported only by :func:`import_jax`.
"""

from __future__ import annotations

from contextlib import nullcontext
from functools import partial
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from .cases import COMPILE_IMPL, EPS, JAX_IMPL, MOMENTUM, Case, Problem, reduce_axes

if TYPE_CHECKING:
    from .peers import Impl


def import_jax() -> ModuleType | None:
    """JAX (``jax.numpy`` on the CPU) if it is installed and imports, else ``None``."""
    try:
        import jax
    except Exception:  # noqa: BLE001  (not installed, or jax and jaxlib that do not match)
        return None
    module: ModuleType = jax  # typed whether or not jax's own types are installed
    return module


def _unsupported(name: str, exc: Exception) -> Exception:
    from .peers import Unsupported

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return Unsupported(f"{name} failed: {type(exc).__name__}: {text[:160]}")


def compile_impl(case: Case, problem: Problem, torch: ModuleType) -> Impl:
    """``torch.compile`` of PyTorch's functional forward; backward by ``autograd.grad`` through
    the compiled graph.  Compiled here (one untimed call, and one backward for a backward case),
    for this case's shapes alone (``dynamic=False`` after a reset of what earlier cases
    compiled: a graph made generic over shapes by earlier cases would be slower)."""
    try:
        return _compile_impl(case, problem, torch)
    except Exception as exc:
        raise _unsupported("torch.compile", exc) from exc


def _compile_impl(case: Case, problem: Problem, torch: ModuleType) -> Impl:
    from .peers import torch_forward, torch_impl

    torch._dynamo.reset()
    forward = torch.compile(torch_forward(torch, case, problem), dynamic=False)
    # the graph is kept and differentiated again on every call (retain_graph, as for torch
    # eager): the backward, compiled at its first call, must not donate the saved tensors'
    # buffers
    config = torch._functorch.config
    patch = (partial(config.patch, donated_buffer=False) if hasattr(config, "donated_buffer")
             else nullcontext)
    return torch_impl(case, problem, torch, forward, COMPILE_IMPL, prepare=patch)


def _jax_forward(jnp: Any, case: Case, axis: int) -> Any:
    """``forward(x, weight, bias, running_mean, running_var)`` in ``jax.numpy``: ``y`` (and, for
    BatchNorm in training, the updated running statistics, as a training step returns them)."""
    ndim = len(case.shape)
    f = case.family
    eps = case.eps
    ax = axis % ndim

    def along(v: Any) -> Any:
        shape = [1] * ndim
        shape[ax] = -1
        return v.reshape(shape)

    if f == "batch_norm":
        axes = reduce_axes(ndim, axis)
        count = int(np.prod([case.shape[a] for a in axes]))

        def forward(x: Any, w: Any, b: Any, rm: Any, rv: Any) -> Any:
            if case.kind == "eval":
                return (x - along(rm)) * along(w / jnp.sqrt(rv + EPS)) + along(b)
            mean = x.mean(axis=axes)
            var = ((x - along(mean)) ** 2).mean(axis=axes)
            y = (x - along(mean)) * along(w / jnp.sqrt(var + EPS)) + along(b)
            new_rm = (1 - MOMENTUM) * rm + MOMENTUM * mean
            new_rv = (1 - MOMENTUM) * rv + MOMENTUM * var * (count / (count - 1))
            return y, new_rm, new_rv

        return forward
    if f in ("layer_norm", "rms_norm"):
        center = f == "layer_norm"

        def rows_forward(x: Any, w: Any, b: Any, rm: Any, rv: Any) -> Any:
            mean = x.mean(axis=-1, keepdims=True) if center else 0.0
            var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
            y = (x - mean) / jnp.sqrt(var + eps) * w
            return y + b if center else y

        return rows_forward
    groups = case.num_groups

    # GroupNorm, InstanceNorm: (N, ..., G, C/G, ...) statistics
    def group_forward(x: Any, w: Any, b: Any, rm: Any, rv: Any) -> Any:
        c = case.shape[ax]
        shape = list(case.shape)
        shape[ax:ax + 1] = [groups, c // groups]
        xg = x.reshape(shape)
        axes = tuple(i for i in range(1, len(shape)) if i != ax)
        mean = xg.mean(axis=axes, keepdims=True)
        var = ((xg - mean) ** 2).mean(axis=axes, keepdims=True)
        y = ((xg - mean) / jnp.sqrt(var + eps)).reshape(case.shape)
        return y * along(w) + along(b)

    return group_forward


def jax_impl(case: Case, problem: Problem, jax: ModuleType) -> Impl:
    """JAX ``jit`` on the CPU: the family in ``jax.numpy``; backward: the ``jax.vjp`` function
    of the forward, formed once untimed, applied to ``dy`` under ``jit`` (``dx``, ``dweight``,
    ``dbias``).  Compiled here (one untimed call)."""
    try:
        return _jax_impl(case, problem, jax)
    except Exception as exc:
        raise _unsupported("jax", exc) from exc


def _jax_impl(case: Case, problem: Problem, jax: ModuleType) -> Impl:
    from .peers import Impl

    jnp = jax.numpy
    p = problem
    forward = _jax_forward(jnp, case, p.axis)
    args = [jax.device_put(a) for a in (p.x, p.weight, p.bias, p.running_mean, p.running_var)]
    if case.kind != "backward":
        fn = jax.jit(forward)

        def call() -> Any:
            return jax.block_until_ready(fn(*args))

        first = call
    else:
        def y_of(x: Any, w: Any, b: Any) -> Any:
            out = forward(x, w, b, args[3], args[4])
            return out[0] if isinstance(out, tuple) else out

        # the forward runs here, untimed; the vjp function holds its residuals
        _, vjp = jax.vjp(jax.jit(y_of), args[0], args[1], args[2])
        apply = jax.jit(lambda vjp, dy: vjp(dy))
        dy = jax.device_put(p.dy)

        def call() -> Any:
            return jax.block_until_ready(apply(vjp, dy))

        first = call
    first()

    def to_numpy(result: Any) -> np.ndarray:
        if isinstance(result, tuple):
            result = result[0]
        return np.asarray(result)

    return Impl(JAX_IMPL, call, to_numpy)
