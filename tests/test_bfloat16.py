"""bfloat16 arrays of ml_dtypes: every family reads and writes them, computing in float32.

The reference is fastnorm's float64 computation on the same values (the bfloat16 input widened
exactly); results must match it within 1e-2 of the largest magnitude after rounding to
bfloat16 (whose unit roundoff is 2**-8 = 3.9e-3).  Skips where ml_dtypes is not installed.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import fastnorm

ml_dtypes = pytest.importorskip("ml_dtypes", reason="needs ml_dtypes (pip install ml_dtypes)")
BF16 = np.dtype(ml_dtypes.bfloat16)
REL = 1e-2


def close(got, ref, what=""):
    assert got.dtype == BF16, (what, got.dtype)
    ref = np.asarray(ref, dtype=np.float64)
    err = float(np.max(np.abs(got.astype(np.float64) - ref), initial=0.0))
    assert err <= REL * float(np.max(np.abs(ref), initial=0.0)), f"{what}: error {err:.3e}"


def ops(axis):
    """(name, call(x, **kw)) of every functional op for channels on ``axis``."""
    return [
        ("batch_norm", lambda x, **kw: fastnorm.batch_norm(x, None, None, training=True, axis=axis, **kw)),
        ("instance_norm", lambda x, **kw: fastnorm.instance_norm(x, axis=axis, **kw)),
        ("group_norm", lambda x, **kw: fastnorm.group_norm(x, 2, axis=axis, **kw)),
        ("layer_norm", lambda x, **kw: fastnorm.layer_norm(x, x.shape[-2:], **kw)),
        ("rms_norm", lambda x, **kw: fastnorm.rms_norm(x, x.shape[-1:], eps=1e-6, **kw)),
    ]


@pytest.mark.parametrize("axis", [1, -1])
@pytest.mark.parametrize("offset", [0.0, 50.0])
def test_every_op_reads_and_writes_bfloat16(rng, backend, axis, offset):
    shape = (4, 6, 5, 7) if axis == 1 else (4, 5, 7, 6)
    x = (offset + 3 * rng.standard_normal(shape)).astype(BF16)
    x64 = x.astype(np.float64)
    for name, op in ops(axis):
        close(op(x), op(x64), name)
        out = np.zeros_like(x)
        assert op(x, out=out) is out
        close(out, op(x64), f"{name} out=")


@pytest.mark.parametrize("axis", [1, -1])
def test_layers_forward_and_backward(rng, backend, axis):
    shape = (4, 6, 5, 7) if axis == 1 else (4, 5, 7, 6)
    x = (2 + 3 * rng.standard_normal(shape)).astype(BF16)
    dy = rng.standard_normal(shape).astype(BF16)
    makers = [lambda dt: fastnorm.BatchNorm2d(6, axis=axis, dtype=dt),
              lambda dt: fastnorm.InstanceNorm2d(6, affine=True, axis=axis, dtype=dt),
              lambda dt: fastnorm.GroupNorm(3, 6, axis=axis, dtype=dt),
              lambda dt: fastnorm.LayerNorm(shape[-2:], dtype=dt),
              lambda dt: fastnorm.RMSNorm(shape[-1], eps=1e-6, dtype=dt)]
    for make in makers:
        layer, reference = make(np.float32), make(np.float64)
        for training in (True, False):
            layer.train(training)
            reference.train(training)
            name = f"{type(layer).__name__} training={training}"
            close(layer(x), reference(x.astype(np.float64)), name)
            close(layer.backward(dy), reference.backward(dy.astype(np.float64)), f"{name} dx")
            np.testing.assert_allclose(layer.grad_weight, reference.grad_weight, rtol=REL,
                                       atol=REL * np.abs(reference.grad_weight).max())


def test_bfloat16_parameters_and_non_finite_values(rng):
    x = rng.standard_normal((3, 4, 5)).astype(BF16)
    w = np.linspace(0.5, 2, 4).astype(BF16)
    close(fastnorm.batch_norm(x, None, None, w, w, training=True),
          fastnorm.batch_norm(x.astype(np.float64), None, None, w.astype(np.float64), w.astype(np.float64),
                              training=True))
    x[0, 1, 2] = np.inf
    with np.errstate(all="ignore"):
        y = fastnorm.batch_norm(x, None, None, training=True)
    assert np.isnan(y[:, 1].astype(np.float32)).any() and np.isfinite(y[:, 0].astype(np.float32)).all()


def test_import_fastnorm_does_not_import_ml_dtypes():
    code = "import sys, fastnorm; print('ml_dtypes' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.stdout.strip() == "False", out.stderr
