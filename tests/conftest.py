"""Shared fixtures and helpers for the fastnorm test suite."""

import os
import sys
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import fastnorm

sys.path.insert(0, os.path.dirname(__file__))  # make ``import naive`` work from every test module

# The CPU backends this installation has; every backend-dependent test runs on each of them.
CPU_BACKENDS = tuple(b for b in fastnorm.available_backends() if b != "cuda")

FLOAT_DTYPES = (np.float16, np.float32, np.float64)

settings.register_profile(
    "fastnorm",
    deadline=None,  # first calls JIT-compile
    max_examples=60,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)
# HYPOTHESIS_PROFILE=thorough for a long randomized search (not for CI)
settings.register_profile("thorough", parent=settings.get_profile("fastnorm"), max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fastnorm"))


@pytest.fixture(params=CPU_BACKENDS)
def backend(request):
    """Run the test under each available CPU backend."""
    with fastnorm.use_backend(request.param):
        yield request.param


@pytest.fixture(autouse=True)
def _restore_global_state():
    """No test leaks a backend or thread-count change into the next one."""
    backend, threads = fastnorm.get_backend(), fastnorm.get_num_threads()
    yield
    fastnorm.set_backend(backend)
    fastnorm.set_num_threads(threads)


@pytest.fixture
def rng(request):
    """A generator seeded from the test id: deterministic, different per test."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


# ---------------------------------------------------------------------------------------------
# helpers


def param_dtype(x_dtype):
    """Dtype of weight/bias/running buffers paired with data of ``x_dtype`` (as in PyTorch:
    float16 data uses float32 parameters, otherwise the data's own dtype)."""
    return np.dtype(np.float32) if np.dtype(x_dtype) == np.float16 else np.dtype(x_dtype)


# Output tolerances vs the float64 oracle on the same input values.  float16: the spec's 2e-3
# absolute, plus 1e-3 relative for the rounding of outputs above 4 in magnitude.
_OUT_TOL = {
    np.dtype(np.float16): (1e-3, 2e-3),
    np.dtype(np.float32): (1e-5, 1e-5),
    np.dtype(np.float64): (1e-10, 1e-10),
}
# Running statistics are stored in the buffer's dtype.
_STAT_TOL = {
    np.dtype(np.float16): (2e-3, 2e-3),
    np.dtype(np.float32): (1e-5, 1e-6),
    np.dtype(np.float64): (1e-10, 1e-12),
}


def assert_output_close(got, ref, dtype, err_msg=""):
    """``got`` has ``dtype`` and ``ref``'s shape and matches it to that dtype's tolerance."""
    dtype = np.dtype(dtype)
    assert isinstance(got, np.ndarray), type(got)
    assert got.dtype == dtype, (got.dtype, dtype)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    rtol, atol = _OUT_TOL[dtype]
    np.testing.assert_allclose(got.astype(np.float64), ref, rtol=rtol, atol=atol, err_msg=err_msg)


def assert_stats_close(got, ref, err_msg=""):
    """Running statistics ``got`` (updated in place, own dtype) match the float64 ``ref``."""
    rtol, atol = _STAT_TOL[np.dtype(got.dtype)]
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), ref, rtol=rtol, atol=atol,
                               err_msg=err_msg)


def assert_grad_close(got, ref, dtype, err_msg="", scale=None):
    """Gradients: error relative to ``scale``, by default the largest reference magnitude (sums
    cancel, so an elementwise relative tolerance is meaningless).  Where the exact gradient is
    itself a cancellation of larger terms, pass the magnitude of those terms as ``scale``."""
    dtype = np.dtype(dtype)
    rel = {np.dtype(np.float16): 2e-3, np.dtype(np.float32): 1e-5,
           np.dtype(np.float64): 1e-10}[dtype]
    assert got is not None, f"gradient is None {err_msg}"
    assert np.shape(got) == np.shape(ref), (np.shape(got), np.shape(ref))
    got = np.asarray(got, dtype=np.float64)
    if scale is None:
        scale = float(np.max(np.abs(ref), initial=0.0))
    scale = max(float(scale), 1e-300)
    err = float(np.max(np.abs(got - ref), initial=0.0))
    assert np.all(np.isfinite(got)), f"non-finite gradient {err_msg}"
    assert err <= rel * scale, f"max error {err:.3e} > {rel:g} * scale {scale:.3e} {err_msg}"


def coarser(*dtypes):
    """The least precise of the given float dtypes."""
    return max((np.dtype(d) for d in dtypes), key=lambda d: np.finfo(d).eps)


def random_input(rng, shape, dtype, offset=0.0, scale=1.0):
    return (offset + scale * rng.standard_normal(shape)).astype(dtype)


def random_params(rng, c, dtype):
    """Random weight, bias, running_mean, running_var (positive) of length c."""
    w = (1.0 + 0.3 * rng.standard_normal(c)).astype(dtype)
    b = (0.5 * rng.standard_normal(c)).astype(dtype)
    rm = (0.5 * rng.standard_normal(c)).astype(dtype)
    rv = rng.uniform(0.5, 2.0, c).astype(dtype)
    return w, b, rm, rv


def set_layer_arrays(layer, **arrays):
    """Overwrite a layer's array attributes in place (weight, bias, running_mean, running_var)."""
    for name, value in arrays.items():
        getattr(layer, name)[...] = value


def channels_last_shape(shape):
    """(N, C, *S) -> (N, *S, C)."""
    return (shape[0],) + tuple(shape[2:]) + (shape[1],)
