"""InstanceNorm / GroupNorm / LayerNorm / RMSNorm: every CPU backend and thread count agrees
with the oracle (the work splits differ: many small groups, few long ones, rows), and
concurrent calls from Python threads give the sequential results."""

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import (
    CPU_BACKENDS,
    assert_grad_close,
    assert_output_close,
    call_functional,
    grad_scales,
    make_family_layer,
    make_spec,
    param_dtype,
    random_input,
    reference_backward,
    reference_forward,
)

import fastnorm


def _cpus():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# (family, axis, shape, extra)
AGREE = [
    ("instance", 1, (8, 4, 32, 32), None),   # long inner runs
    ("instance", -1, (8, 32, 32, 4), None),  # channels-last, few channels
    ("instance", -1, (4, 7, 96), None),      # channels-last, many channels
    ("instance", 1, (1, 2, 300, 256), None),  # few instances, long reductions
    ("group", 1, (8, 8, 16, 16), 4),
    ("group", -1, (8, 16, 16, 8), 2),
    ("group", -1, (2, 40, 96), 32),
    ("group", 1, (1, 4, 256, 300), 1),       # one long group
    ("group", 1, (4000, 6), 3),
    ("layer", None, (4000, 6), 1),           # many short rows
    ("layer", None, (2, 300000), 1),         # few long rows
    ("layer", None, (16, 8, 96), 2),
    ("rms", None, (4000, 6), 1),
    ("rms", None, (2, 300000), 1),
]
IDS = [f"{f}-{a}-{'x'.join(map(str, s))}" for f, a, s, _ in AGREE]


def _spec(family, shape, axis, dtype, rng, extra):
    kw = {"num_groups": extra} if family == "group" else (
        {"k": extra} if family in ("layer", "rms") else {})
    return make_spec(family, shape, axis, dtype, rng, **kw)


def _compute(family, x, dy, spec, axis):
    y = call_functional(family, x, spec, axis)
    layer = make_family_layer(family, x.shape, axis, param_dtype(x.dtype), spec)
    layer(x)
    dx = layer.backward(dy)
    return y, dx, layer.grad_weight, layer.grad_bias


def _check(res, family, x, dy, spec, axis, label):
    y, dx, gw, gb = res
    dt = x.dtype
    assert_output_close(y, reference_forward(family, x, spec, axis), dt, err_msg=label)
    ref_dx, ref_dw, ref_db = reference_backward(family, x, dy, spec, axis)
    sx, sw, sb = grad_scales(family, x, dy, spec, axis)
    assert_grad_close(dx, ref_dx, dt, err_msg=label, scale=max(sx, np.max(np.abs(ref_dx))))
    gdt = max(np.dtype(dt), param_dtype(dt), key=lambda d: np.finfo(d).eps)
    assert_grad_close(gw, ref_dw, gdt, err_msg=label, scale=sw)
    if ref_db is not None:
        assert_grad_close(gb, ref_db, gdt, err_msg=label, scale=sb)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("family, axis, shape, extra", AGREE, ids=IDS)
def test_backends_match_oracle(rng, dtype, family, axis, shape, extra):
    x = random_input(rng, shape, dtype, offset=1.0)
    dy = random_input(rng, shape, dtype)
    spec = _spec(family, shape, axis, dtype, rng, extra)
    for name in CPU_BACKENDS:
        with fastnorm.use_backend(name):
            _check(_compute(family, x, dy, spec, axis), family, x, dy, spec, axis, name)


@pytest.mark.skipif(_cpus() < 2, reason="needs 2 CPU threads")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("family, axis, shape, extra", AGREE, ids=IDS)
def test_thread_counts_match_oracle(backend, rng, dtype, family, axis, shape, extra):
    x = random_input(rng, shape, dtype, offset=-2.0)
    dy = random_input(rng, shape, dtype)
    spec = _spec(family, shape, axis, dtype, rng, extra)
    for n in (1, 2):
        fastnorm.set_num_threads(n)
        _check(_compute(family, x, dy, spec, axis), family, x, dy, spec, axis, f"{n} threads")


def test_thread_safety(backend):
    """Concurrent calls (functional and layers) give the sequential results."""
    cases = [("instance", 1, (8, 4, 32, 32), None), ("group", -1, (8, 16, 16, 8), 4),
             ("layer", None, (300, 200), 1), ("rms", None, (16, 8, 96), 2)]

    def inputs(i):
        rng = np.random.default_rng(2000 + i)
        family, axis, shape, extra = cases[(i // 4) % len(cases)]
        dt = np.float32 if i % 2 else np.float64
        x = random_input(rng, shape, dt, offset=i)
        return family, axis, x, random_input(rng, shape, dt), _spec(family, shape, axis, dt,
                                                                    rng, extra)

    def job(i):
        family, axis, x, dy, spec = inputs(i)
        with fastnorm.use_backend(backend):
            return _compute(family, x, dy, spec, axis)

    n = 16
    sequential = [job(i) for i in range(n)]
    with ThreadPoolExecutor(max_workers=4) as ex:
        concurrent = list(ex.map(job, range(n)))
    for i in range(n):
        family, axis, x, dy, spec = inputs(i)
        _check(sequential[i], family, x, dy, spec, axis, f"job {i}")
        for got, exp in zip(concurrent[i], sequential[i], strict=True):
            if exp is None:
                assert got is None
            else:
                assert got.dtype == exp.dtype
                assert_output_close(got, exp.astype(np.float64), exp.dtype, err_msg=f"job {i}")
