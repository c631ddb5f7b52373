"""Inference mode: layers keep nothing of a forward for a backward."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["inference_mode", "is_inference_mode_enabled"]

_enabled: ContextVar[bool] = ContextVar("fastnorm_inference_mode", default=False)


@contextmanager
def inference_mode(enabled: bool = True) -> Iterator[None]:
    """Within this context, layers' forwards keep no reference to their input or statistics.

    A layer normally keeps its last input (by reference) and statistics for :meth:`backward`,
    also in evaluation mode (fine-tuning with frozen BatchNorm differentiates through eval-mode
    layers); an inference program that never calls backward would hold one input per layer.
    Inside ``inference_mode()`` a forward keeps nothing and drops what an earlier forward kept;
    ``backward`` then raises ``ValueError``.  Per layer, ``layer.retain_for_backward = False``
    does the same everywhere.  The setting is per thread (and per asyncio task);
    ``inference_mode(False)`` turns it off inside an enclosing one.

    Examples
    --------
    >>> with fastnorm.inference_mode():
    ...     y = model_forward(x)   # every fastnorm layer keeps nothing
    """
    token = _enabled.set(bool(enabled))
    try:
        yield
    finally:
        _enabled.reset(token)


def is_inference_mode_enabled() -> bool:
    """Whether the calling thread is inside :func:`inference_mode`."""
    return _enabled.get()
