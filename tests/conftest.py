"""Shared fixtures and helpers for the fastnorm test suite."""

import os
import sys
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

import fastnorm

sys.path.insert(0, os.path.dirname(__file__))  # make ``import naive`` work from every test module

# The CPU backends this installation has; every backend-dependent test runs on each of them.
CPU_BACKENDS = tuple(b for b in fastnorm.available_backends() if b != "cuda")

FLOAT_DTYPES = (np.float16, np.float32, np.float64)

# The test command's profile: the same examples on every run (a failure in CI is one that a
# rerun shows again).  tests/test_fuzz.py runs 5x max_examples per property.
settings.register_profile(
    "fastnorm",
    deadline=None,  # first calls JIT-compile
    max_examples=60,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)
# A long randomized search (not for CI): --hypothesis-profile=thorough (or
# HYPOTHESIS_PROFILE=thorough); new examples on every run, failures kept in .hypothesis/
settings.register_profile("thorough", parent=settings.get_profile("fastnorm"), max_examples=1000,
                          derandomize=False,
                          database=DirectoryBasedExampleDatabase(".hypothesis/examples"))
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


def assert_output_close(got, ref, dtype, err_msg="", floor=0.0):
    """``got`` has ``dtype`` and ``ref``'s shape and matches it to that dtype's tolerance, plus
    ``floor``: an absolute error that rounding of the statistics allows (see test_fuzz.py)."""
    dtype = np.dtype(dtype)
    assert isinstance(got, np.ndarray), type(got)
    assert got.dtype == dtype, (got.dtype, dtype)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    rtol, atol = _OUT_TOL[dtype]
    np.testing.assert_allclose(got.astype(np.float64), ref, rtol=rtol, atol=atol + floor,
                               err_msg=err_msg)


def assert_stats_close(got, ref, err_msg=""):
    """Running statistics ``got`` (updated in place, own dtype) match the float64 ``ref``."""
    rtol, atol = _STAT_TOL[np.dtype(got.dtype)]
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), ref, rtol=rtol, atol=atol,
                               err_msg=err_msg)


def assert_grad_close(got, ref, dtype, err_msg="", scale=None, floor=0.0):
    """Gradients: error relative to ``scale``, by default the largest reference magnitude (sums
    cancel, so an elementwise relative tolerance is meaningless).  Where the exact gradient is
    itself a cancellation of larger terms, pass the magnitude of those terms as ``scale``;
    ``floor``: an absolute error that rounding of the statistics allows besides."""
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
    assert err <= rel * scale + floor, (
        f"max error {err:.3e} > {rel:g} * scale {scale:.3e} + {floor:.3e} {err_msg}")


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


# ---------------------------------------------------------------------------------------------
# InstanceNorm / GroupNorm / LayerNorm / RMSNorm helpers: one calling convention for the four
# families so the numerics, input-handling and layer tests can loop over them.
#
# A "spec" is a dict of the family's parameters for an input of a given shape:
#   instance: weight, bias (per channel) | group: num_groups, weight, bias (per channel)
#   layer: normalized_shape, weight, bias (normalized_shape) | rms: normalized_shape, weight
# plus eps.  ``axis`` (1 or -1) is used by instance and group norm only.

FAMILIES = ("instance", "group", "layer", "rms")
CHANNEL_FAMILIES = ("instance", "group")


def family_axes(family):
    return (1, -1) if family in CHANNEL_FAMILIES else (None,)


def num_channels(shape, axis):
    return shape[1] if axis in (1, None) else shape[-1]


def make_spec(family, shape, axis, dtype, rng, affine=True, num_groups=None, k=1, eps="default",
              weight=True, bias=True):
    """Random valid parameters for ``family`` on an input of ``shape``.  ``k`` is the number of
    trailing axes normalized by layer/rms norm; ``num_groups`` defaults to the largest proper
    divisor of C (or 1).  ``affine=False`` leaves weight and bias out."""
    pdt = param_dtype(dtype)
    spec = {}
    if family in CHANNEL_FAMILIES:
        c = num_channels(shape, axis)
        pshape = (c,)
        if family == "group":
            if num_groups is None:
                num_groups = max([g for g in range(1, c) if c % g == 0] or [1])
            spec["num_groups"] = num_groups
    else:
        pshape = tuple(shape[len(shape) - k:])
        spec["normalized_shape"] = pshape
    if affine and weight:
        spec["weight"] = (1.0 + 0.3 * rng.standard_normal(pshape)).astype(pdt)
    if affine and bias and family != "rms":
        spec["bias"] = (0.5 * rng.standard_normal(pshape)).astype(pdt)
    if eps != "default":
        spec["eps"] = eps
    return spec


def default_eps(family, x_dtype):
    if family != "rms":
        return 1e-5
    return float(np.finfo(np.float64 if np.dtype(x_dtype).itemsize == 8 else np.float32).eps)


def call_functional(family, x, spec, axis=None, **kw):
    """fastnorm's functional form of ``family`` (``kw``: out=, running stats, ...)."""
    s = dict(spec)
    if family == "instance":
        return fastnorm.instance_norm(x, weight=s.get("weight"), bias=s.get("bias"),
                                      **({"eps": s["eps"]} if "eps" in s else {}), axis=axis,
                                      **kw)
    if family == "group":
        return fastnorm.group_norm(x, s.pop("num_groups"), axis=axis, **s, **kw)
    if family == "layer":
        return fastnorm.layer_norm(x, s.pop("normalized_shape"), **s, **kw)
    return fastnorm.rms_norm(x, s.pop("normalized_shape"), **s, **kw)


def reference_forward(family, x, spec, axis=None):
    """The float64 oracle's output for the same call (``x`` in its own dtype)."""
    import naive

    s = dict(spec)
    if family == "instance":
        return naive.instance_norm(x, None, None, s.get("weight"), s.get("bias"),
                                   eps=s.get("eps", 1e-5), axis=axis)["y"]
    if family == "group":
        return naive.group_norm(x, s["num_groups"], s.get("weight"), s.get("bias"),
                                eps=s.get("eps", 1e-5), axis=axis)["y"]
    if family == "layer":
        return naive.layer_norm(x, s["normalized_shape"], s.get("weight"), s.get("bias"),
                                eps=s.get("eps", 1e-5))["y"]
    return naive.rms_norm(x, s["normalized_shape"], s.get("weight"), eps=s.get("eps"))["y"]


def reference_backward(family, x, dy, spec, axis=None):
    """(dx, dweight, dbias) of the oracle; dbias is None for rms."""
    import naive

    s = dict(spec)
    if family == "instance":
        mean, var, _ = naive.instance_stats(x, axis)
        return naive.instance_norm_backward(x, dy, mean, var, s.get("weight"),
                                            eps=s.get("eps", 1e-5), axis=axis)
    if family == "group":
        return naive.group_norm_backward(x, dy, s["num_groups"], s.get("weight"),
                                         eps=s.get("eps", 1e-5), axis=axis)
    if family == "layer":
        return naive.layer_norm_backward(x, dy, s["normalized_shape"], s.get("weight"),
                                         eps=s.get("eps", 1e-5))
    dx, dw = naive.rms_norm_backward(x, dy, s["normalized_shape"], s.get("weight"),
                                     eps=s.get("eps"))
    return dx, dw, None


_INSTANCE_CLS = {3: "InstanceNorm1d", 4: "InstanceNorm2d", 5: "InstanceNorm3d"}


def make_family_layer(family, shape, axis, dtype, spec):
    """A fastnorm layer of ``family`` for a (batched) input of ``shape`` whose parameters
    are set from ``spec`` (affine iff spec has a weight)."""
    s = dict(spec)
    affine = "weight" in s
    eps = {"eps": s["eps"]} if "eps" in s else {}
    if family == "instance":
        layer = getattr(fastnorm, _INSTANCE_CLS[len(shape)])(
            num_channels(shape, axis), affine=affine, axis=axis, dtype=dtype, **eps)
    elif family == "group":
        layer = fastnorm.GroupNorm(s["num_groups"], num_channels(shape, axis), affine=affine,
                                   axis=axis, dtype=dtype, **eps)
    elif family == "layer":
        layer = fastnorm.LayerNorm(s["normalized_shape"], elementwise_affine=affine,
                                   bias=affine and "bias" in s, dtype=dtype, **eps)
    else:
        layer = fastnorm.RMSNorm(s["normalized_shape"], elementwise_affine=affine, dtype=dtype,
                                 **eps)
    if affine:
        layer.weight[...] = s["weight"]
        if "bias" in s:
            layer.bias[...] = s["bias"]
    return layer


def assert_abs_within(got, ref, tol, what):
    """Max absolute error <= tol, all finite."""
    got64 = np.asarray(got, dtype=np.float64)
    assert got64.shape == np.shape(ref), (what, got64.shape, np.shape(ref))
    assert np.all(np.isfinite(got64)), f"{what}: non-finite values"
    err = float(np.max(np.abs(got64 - ref), initial=0.0))
    assert err <= tol, f"{what}: max abs error {err:.3e} > {tol:.1e}"


def assert_rel_to_max_within(got, ref, tol, what, scale=None):
    """Max absolute error <= tol * max|ref| (or tol * scale), all finite."""
    got64 = np.asarray(got, dtype=np.float64)
    assert got64.shape == np.shape(ref), (what, got64.shape, np.shape(ref))
    assert np.all(np.isfinite(got64)), f"{what}: non-finite values"
    if scale is None:
        scale = float(np.max(np.abs(ref)))
    assert scale > 0
    err = float(np.max(np.abs(got64 - ref)))
    assert err <= tol * scale, f"{what}: max abs error {err:.3e} > {tol:.1e} * {scale:.3e}"


def grad_scales(family, x, dy, spec, axis):
    """Magnitudes of the terms the gradients are (cancelling) sums of: for dx |dy * w| / std,
    for dweight sum |dy * xhat|, for dbias sum |dy| (sums over the parameter's reduction)."""
    import naive

    x64 = np.asarray(x, dtype=np.float64)
    dy64 = np.asarray(dy, dtype=np.float64)
    plain = {k: v for k, v in spec.items() if k not in ("weight", "bias")}
    xhat = reference_forward(family, x, plain, axis)  # (x - mean) / std, or x / rms
    if family == "rms":
        _, red_stat = naive.trailing_axes(x.ndim, spec["normalized_shape"])
        std = np.sqrt(np.mean(x64 * x64, axis=red_stat, keepdims=True) + naive.rms_eps(x))
    elif family == "layer":
        _, red_stat = naive.trailing_axes(x.ndim, spec["normalized_shape"])
        std = np.sqrt(np.var(x64, axis=red_stat, keepdims=True) + spec.get("eps", 1e-5))
    elif family == "instance":
        _, var, _ = naive.instance_stats(x64, axis)
        std = np.sqrt(naive.per_instance(var, x.ndim, axis) + spec.get("eps", 1e-5))
    else:
        v, red_stat, _ = naive._group_view(x64, spec["num_groups"], axis)
        std = np.broadcast_to(np.sqrt(np.var(v, axis=red_stat, keepdims=True)
                                      + spec.get("eps", 1e-5)), v.shape).reshape(x.shape)
    if family in ("layer", "rms"):
        w = np.asarray(spec.get("weight", 1.0), dtype=np.float64)
        red = tuple(range(x.ndim - len(spec["normalized_shape"])))
    else:
        c = x.shape[naive.channel_axis(x.ndim, axis)]
        w = naive.per_channel(spec.get("weight", np.ones(c)), x.ndim, axis)
        red = naive.reduce_axes(x.ndim, axis)
    return (float(np.max(np.abs(dy64 * w / std))),
            float(np.max(np.sum(np.abs(dy64 * xhat), axis=red))),
            float(np.max(np.sum(np.abs(dy64), axis=red))))
