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

    Parameters
    ----------
    enabled : bool, default True
        Turn inference mode on (True) or off (False) inside the context.

    Returns
    -------
    context manager
        Yields None; the previous setting is restored on exit, also on an exception.

    See Also
    --------
    is_inference_mode_enabled : the current setting.

    Examples
    --------
    >>> layer = fastnorm.LayerNorm(4)
    >>> x = np.ones((2, 4), np.float32)
    >>> with fastnorm.inference_mode():
    ...     y = layer(x)
    ...     fastnorm.is_inference_mode_enabled()
    True
    >>> fastnorm.is_inference_mode_enabled()
    False
    >>> layer.backward(np.ones_like(x))
    Traceback (most recent call last):
        ...
    ValueError: backward needs what the last forward kept, and it ran in inference mode ...
    """
    token = _enabled.set(bool(enabled))
    try:
        yield
    finally:
        _enabled.reset(token)


def is_inference_mode_enabled() -> bool:
    """Whether the calling thread is inside :func:`inference_mode`.

    Returns
    -------
    bool
        True inside ``inference_mode()`` (and not inside an inner
        ``inference_mode(False)``) in this thread or asyncio task.

    Examples
    --------
    >>> fastnorm.is_inference_mode_enabled()
    False
    >>> with fastnorm.inference_mode():
    ...     print(fastnorm.is_inference_mode_enabled())
    True
    """
    return _enabled.get()
