"""The pool of large output buffers (fastnorm._memory): reuse only when nobody holds a buffer."""

import threading

import numpy as np
import pytest

import fastnorm
from fastnorm import _memory

BIG = (_memory.MIN_BYTES // 4 + 1024,)  # just over the pooling threshold in float32


@pytest.fixture(autouse=True)
def clean_pool():
    enabled = _memory._enabled
    _memory.set_enabled(True)
    _memory.release()
    yield
    _memory.set_enabled(enabled)
    _memory.release()


def address(a):
    return a.__array_interface__["data"][0]


def test_small_arrays_are_not_pooled():
    a = _memory.empty((1000,), np.float32)
    assert a.shape == (1000,) and a.dtype == np.float32 and a.flags.c_contiguous
    assert _memory.pooled_bytes() == 0


def test_buffer_reused_once_released():
    a = _memory.empty(BIG, np.float32)
    assert a.shape == BIG and a.dtype == np.float32 and a.flags.c_contiguous and a.flags.writeable
    where = address(a)
    del a
    b = _memory.empty(BIG, np.float32)
    assert address(b) == where
    assert _memory.pooled_bytes() >= b.nbytes


def test_the_most_recently_used_free_buffer_is_reused():
    """With two free buffers of a size, repeated calls keep taking the one used last (still in
    cache), never alternating between the two."""
    a, b = _memory.empty(BIG, np.float32), _memory.empty(BIG, np.float32)
    first, second = address(a), address(b)
    del a, b  # b was handed out last
    for _ in range(3):
        c = _memory.empty(BIG, np.float32)
        assert address(c) == second
        del c
    a, b = _memory.empty(BIG, np.float32), _memory.empty(BIG, np.float32)
    assert {address(a), address(b)} == {first, second}


@pytest.mark.parametrize("offset", [0, 16, 48, 64, 2048, 2064, 4080])
def test_output_starts_on_a_cache_line_half_a_page_from_its_input(offset):
    """A pooled output lies half a page (to the next cache line) from ``beside`` modulo the
    page, wherever that array starts, and still fits inside its buffer."""
    raw = np.empty(_memory.MIN_BYTES + 2 * _memory.PAGE, np.uint8)
    start = (offset - address(raw)) % _memory.PAGE
    x = raw[start:start + _memory.MIN_BYTES].view(np.float32)
    assert address(x) % _memory.PAGE == offset
    for _ in range(2):  # a new buffer, then the same one reused
        y = _memory.empty(x.shape, x.dtype, beside=x)
        assert address(y) % _memory.ALIGN == 0
        assert (address(y) - address(x)) % _memory.PAGE == (_memory.PAGE // 2 + (-offset % 64)) % _memory.PAGE
        assert address(y) + y.nbytes <= address(y.base) + y.base.nbytes
        y[...] = 1.0  # the whole array is writable memory of the buffer
        del y


def test_output_without_a_neighbour_starts_at_a_page():
    y = _memory.empty(BIG, np.float32)
    assert address(y) % _memory.PAGE == 0


def test_outputs_of_the_api_are_placed_beside_their_input():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 8, 64, 1024)).astype(np.float32)  # 8 MiB
    half = _memory.PAGE // 2 + (-address(x) % _memory.ALIGN)
    layer = fastnorm.GroupNorm(4, 8)
    y = layer(x)
    assert (address(y) - address(x)) % _memory.PAGE == half
    dx = layer.backward(np.ones_like(x))
    assert (address(dx) - address(x)) % _memory.PAGE == half


@pytest.mark.parametrize("keep", ["array", "view", "slice", "reshape", "memoryview"])
def test_buffer_not_reused_while_anything_references_it(keep):
    def hold(a):
        return {"array": lambda: a, "view": lambda: a.view(np.int32), "slice": lambda: a[10:20],
                "reshape": lambda: a[: a.size // 2 * 2].reshape(-1, 2),
                "memoryview": lambda: memoryview(a)}[keep]()

    a = _memory.empty(BIG, np.float32)
    a[:] = 1.0
    held = hold(a)
    where = address(a)
    del a
    b = _memory.empty(BIG, np.float32)
    assert address(b) != where
    b[:] = 2.0
    assert np.all(np.asarray(held).view(np.float32) == 1.0)  # b's fill did not land in it


def test_different_sizes_and_dtypes_get_their_own_buffers():
    a = _memory.empty(BIG, np.float32)
    b = _memory.empty((BIG[0] * 2,), np.float32)
    c = _memory.empty(BIG, np.float64)
    assert len({address(a), address(b), address(c)}) == 3


def test_pool_is_capped(monkeypatch):
    monkeypatch.setattr(_memory, "MAX_BYTES", 3 * _memory.MIN_BYTES)
    base = _memory.pooled_bytes()  # buffers that arrays of other tests still use
    sizes = []
    for n in range(6):  # each released at once: the pool keeps at most MAX_BYTES
        sizes.append(_memory.empty((BIG[0] + n * (1 << 20),), np.float32).nbytes)
    # all six would be 84 MiB; the cap leaves (besides buffers in use) the last one, which was
    # in use while the pool was trimmed for it
    assert _memory.pooled_bytes() - base <= 3 * _memory.MIN_BYTES + sizes[-1] + _memory.GRANULE
    assert sum(sizes) > 3 * _memory.MIN_BYTES + sizes[-1] + _memory.GRANULE


def test_disabled_pool_allocates_fresh():
    _memory.set_enabled(False)
    a = _memory.empty(BIG, np.float32)
    assert _memory.pooled_bytes() == 0 and a.base is None


def test_concurrent_callers_never_share_a_buffer():
    first = _memory.empty(BIG, np.float32)
    del first  # one free buffer: two threads race for it
    got = []
    barrier = threading.Barrier(4)

    def take():
        barrier.wait()
        got.append(_memory.empty(BIG, np.float32))

    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({address(a) for a in got}) == 4


def test_outputs_of_the_api_are_independent():
    """Two live outputs never alias; a freed one's memory comes back with correct results."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 8, 64, 8 * 1024)).astype(np.float32)  # 64 MiB
    y1 = fastnorm.batch_norm(x, None, None, training=True)
    y2 = fastnorm.batch_norm(x * 2.0 + 1.0, None, None, training=True)
    assert address(y1) != address(y2)
    np.testing.assert_allclose(y1, y2, atol=1e-4)
    where = address(y2)
    expected = y1.copy()
    del y1, y2
    y3 = fastnorm.batch_norm(x, None, None, training=True)
    assert address(y3) == where  # the most recently used free buffer is taken first
    np.testing.assert_array_equal(y3, expected)


@pytest.mark.parametrize("call", ["batch_norm", "layer_norm"])
def test_compiled_plain_calls_in_threads_never_share_an_output(call):
    """Large plain calls taking pool buffers from compiled code (the Cython backend), from
    several threads at once beside Python callers of the pool: no two live outputs overlap, and
    each is its call's result."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((32, 64, 28, 28)).astype(np.float32)  # 6.4 MB: pooled
    rm, rv = np.zeros(64, np.float32), np.ones(64, np.float32)
    if call == "batch_norm":
        run = lambda: fastnorm.batch_norm(x, rm, rv, None, None, False, 0.1, 1e-5, axis=1)
        want = fastnorm.batch_norm(x, rm, rv, eps=np.float64(1e-5))
    else:
        run = lambda: fastnorm.layer_norm(x, (28,), None, None, 1e-5)
        want = fastnorm.layer_norm(x, (28,), None, None, np.float64(1e-5))
    barrier = threading.Barrier(4)
    held: list[list[np.ndarray]] = [[] for _ in range(4)]
    errors = []

    def work(k):
        try:
            barrier.wait()
            for i in range(12):
                if k == 3 and i % 2:  # a Python caller of the pool between them
                    held[k].append(_memory.empty(x.shape, np.float32, beside=x))
                else:
                    held[k].append(run())
                if i % 3 == 2:
                    held[k].pop(0)  # some freed, to be taken again
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and not any(t.is_alive() for t in threads)
    live = [a for h in held for a in h]
    assert len({address(a) for a in live}) == len(live)
    for k in range(3):
        for a in held[k]:
            np.testing.assert_array_equal(a, want)
