"""Inference that retains nothing (fastnorm.inference_mode, retain_for_backward) and out= on
layer calls."""

from __future__ import annotations

import gc
import threading
import tracemalloc

import numpy as np
import pytest

import fastnorm
from fastnorm import _memory

MiB = 2**20


def every_layer(dtype=np.float32):
    """One layer of each family for ``(4, 8, 6, 10)`` input, and that input's shape."""
    return [
        fastnorm.BatchNorm2d(8, dtype=dtype),
        fastnorm.BatchNorm(8, momentum=None, axis=1, dtype=dtype),
        fastnorm.InstanceNorm2d(8, affine=True, track_running_stats=True, dtype=dtype),
        fastnorm.GroupNorm(4, 8, dtype=dtype),
        fastnorm.LayerNorm((6, 10), dtype=dtype),
        fastnorm.RMSNorm(10, dtype=dtype),
    ]


def held_after(run) -> float:
    """MiB still allocated (traced by NumPy) after ``run()`` returned and its results are gone,
    with fastnorm's output pool emptied."""
    _memory.release()
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        run()
        _memory.release()
        gc.collect()
        return (tracemalloc.get_traced_memory()[0] - base) / MiB
    finally:
        tracemalloc.stop()


def chain(layers, x):
    y = x
    for layer in layers:
        y = layer(y)


def test_twenty_layers_retain_nothing_in_inference_mode():
    """20 eval-mode LayerNorms chained on a 16 MiB input: each keeps its input (the previous
    output) for backward, 19 * 16 MiB and more; in inference mode nothing is held."""
    x = np.random.default_rng(0).standard_normal((4096, 1024)).astype(np.float32)
    layers = [fastnorm.LayerNorm(1024).eval() for _ in range(20)]
    assert held_after(lambda: chain(layers, x)) > 19 * 16
    for layer in layers:
        layer._saved = None
    with fastnorm.inference_mode():
        held = held_after(lambda: chain(layers, x))
    assert held < 0.1, held
    assert all(layer._saved is None for layer in layers)


@pytest.mark.parametrize("training", [True, False])
def test_every_family_retains_nothing(rng, backend, training):
    x = rng.standard_normal((4, 8, 6, 10)).astype(np.float32)
    layers = [layer.train(training) for layer in every_layer()]
    big = np.repeat(x, 2000, axis=0)  # 15 MiB
    kept = held_after(lambda: [layer(big.copy()) for layer in layers])
    assert kept > 5 * 14, kept  # each layer keeps its own copy of the input
    for layer in layers:
        layer.retain_for_backward = False
    assert held_after(lambda: [layer(big.copy()) for layer in layers]) < 0.1


def test_backward_after_an_inference_forward_says_why(rng):
    bn = fastnorm.BatchNorm2d(3).eval()
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    bn.backward(bn(x))  # eval-mode backward (frozen BatchNorm) works outside inference mode
    with fastnorm.inference_mode():
        bn(x)
    with pytest.raises(ValueError, match="ran in inference mode"):
        bn.backward(x)
    with fastnorm.inference_mode(), fastnorm.inference_mode(False):
        assert not fastnorm.is_inference_mode_enabled()
        bn(x)
    bn.backward(x)  # kept, inside inference_mode(False)


def test_inference_mode_is_per_thread(rng):
    ln = fastnorm.LayerNorm(5)
    x = rng.standard_normal((3, 5)).astype(np.float32)
    seen = []
    with fastnorm.inference_mode():
        worker = threading.Thread(target=lambda: seen.append(fastnorm.is_inference_mode_enabled()))
        worker.start()
        worker.join(60)
        assert fastnorm.is_inference_mode_enabled()
    assert seen == [False] and not fastnorm.is_inference_mode_enabled()
    ln(x)
    ln.backward(x)


@pytest.mark.parametrize("training", [True, False])
def test_out_on_layer_calls(rng, backend, training):
    x = rng.standard_normal((4, 8, 6, 10)).astype(np.float32)
    seen = []
    for reference, layer in zip(every_layer(), every_layer()):
        reference.train(training)
        layer.train(training)
        want = reference(x)
        out = np.full_like(x, np.nan)
        assert layer(x, out=out) is out
        np.testing.assert_array_equal(out, want)
        np.testing.assert_array_equal(layer.backward(x), reference.backward(x))
        if not training:  # in place (the running statistics are unchanged by the first call)
            inplace = x.copy()
            assert layer(inplace, out=inplace) is inplace
            np.testing.assert_array_equal(inplace, want)
        # in place, then backward: the layer must have kept the input, not the output
        inplace = x.copy()
        fresh, twin = every_layer()[len(seen)], every_layer()[len(seen)]
        fresh.train(training)
        twin.train(training)
        fresh(x.copy())
        twin(inplace, out=inplace)
        np.testing.assert_array_equal(twin.backward(x), fresh.backward(x), err_msg=type(layer).__name__)
        seen.append(layer)
    unbatched = fastnorm.InstanceNorm1d(8)
    y = rng.standard_normal((8, 12)).astype(np.float32)
    out = np.empty_like(y)
    assert unbatched(y, out=out) is out
    np.testing.assert_array_equal(out, fastnorm.InstanceNorm1d(8)(y))
    with pytest.raises(ValueError, match="out"):
        fastnorm.LayerNorm(10)(x, out=np.empty((4, 8, 6, 9), np.float32))
