"""Property-based search over every public function and layer, on every CPU backend.

Each property draws whole calls: the family, a shape of 1 to 6 dimensions (sizes 0 and 1
included, now and then one long axis so that the threaded and fused kernels run), the
channel axis or normalized shape, the dtype, a memory layout of the input (C or Fortran
order, negative and zero strides, strided views, unaligned, big-endian, read-only),
parameters of any float or integer dtype, running statistics, ``eps`` and ``momentum``, and
``out`` (fresh, strided, the input itself, overlapping the input or a parameter).  Results
are compared with the float64 NumPy oracle of ``naive.py``; calls that must fail are checked
to raise ``ValueError``/``TypeError`` and to change nothing.

The number of examples follows the Hypothesis profile: ``FUZZ_FACTOR`` times the profile's
``max_examples`` (300 per property with the default profile of the test suite).  A long
randomized search: ``python -m pytest tests/test_fuzz.py --hypothesis-profile=thorough``
(5000 per property; see docs/numerics.md).
"""

from __future__ import annotations

import math

import naive
import numpy as np
import pytest
from conftest import (
    CPU_BACKENDS,
    assert_grad_close,
    assert_output_close,
    assert_stats_close,
)
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from hypothesis.strategies import DataObject

import fastnorm

FUZZ_FACTOR = 5
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
FUZZ = settings(
    settings(),  # the loaded profile
    max_examples=FUZZ_FACTOR * settings().max_examples,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)

FAMILIES = ("batch", "instance", "group", "layer", "rms")
DTYPES = (np.float16, np.float32, np.float64)
PARAM_DTYPES = (np.float16, np.float32, np.float64, np.int32)
MAX_SMALL = 720  # values of an ordinary example
MAX_LARGE = 1 << 18  # values of an example with one long axis (threaded, fused kernels)


@pytest.fixture(params=CPU_BACKENDS)
def backend(request):
    with fastnorm.use_backend(request.param):
        yield request.param


# ---------------------------------------------------------------------------------------------
# drawing calls


def draw_shape(data: DataObject, min_ndim: int) -> tuple[int, ...]:
    ndim = data.draw(st.integers(min_ndim, 6), label="ndim")
    sizes = st.sampled_from([0, 1, 1, 2, 2, 3, 3, 4, 5, 7])
    shape = list(data.draw(st.lists(sizes, min_size=ndim, max_size=ndim), label="shape"))
    while math.prod(shape) > MAX_SMALL:
        shape[shape.index(max(shape))] -= 1
    if ndim and data.draw(st.integers(0, 7), label="long axis?") == 0:
        k = data.draw(st.integers(0, ndim - 1), label="long axis")
        shape[k] = data.draw(st.sampled_from([64, 257, 1024, 4099]), label="long size")
        while math.prod(shape) > MAX_LARGE:
            shape[shape.index(max(s for i, s in enumerate(shape) if i != k))] //= 2
    return tuple(shape)


def draw_values(data: DataObject, shape, dtype, nonfinite=False) -> np.ndarray:
    """Values of ``shape`` in ``dtype``: normal, sometimes offset or scaled, sometimes with a few
    infinities and NaNs (``nonfinite``)."""
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    offset = data.draw(st.sampled_from([0.0, 0.0, 3.0, -50.0]), label="offset")
    scale = data.draw(st.sampled_from([1.0, 1.0, 0.25, 8.0]), label="scale")
    x = offset + scale * rng.standard_normal(shape)
    if nonfinite and x.size:
        flat = x.reshape(-1)
        k = data.draw(st.integers(1, min(4, flat.size)), label="non-finite count")
        where = rng.choice(flat.size, size=k, replace=False)
        flat[where] = rng.choice([np.inf, -np.inf, np.nan], size=k)
    return x.astype(dtype)


def _unaligned(x: np.ndarray) -> np.ndarray:
    buf = np.empty(x.nbytes + 1, np.uint8)
    a = np.frombuffer(buf.data, dtype=x.dtype, count=x.size, offset=1).reshape(x.shape)
    a[...] = x
    return a


def _negative(x: np.ndarray, axis: int) -> np.ndarray:
    sl = [slice(None)] * x.ndim
    sl[axis] = slice(None, None, -1)
    return np.ascontiguousarray(x[tuple(sl)])[tuple(sl)]


def _strided(x: np.ndarray, axis: int) -> np.ndarray:
    big = np.repeat(x, 2, axis=axis)
    sl = [slice(None)] * x.ndim
    sl[axis] = slice(None, None, 2)
    return big[tuple(sl)]


def _permuted(x: np.ndarray, perm: list[int]) -> np.ndarray:
    """Equal values whose memory order is that of the axes in ``perm``."""
    return np.ascontiguousarray(x.transpose(perm)).transpose(np.argsort(perm))


def _broadcast(x: np.ndarray, axis: int) -> np.ndarray:
    """Zero strides along ``axis`` (read-only): every entry along it equals the first."""
    sl = [slice(None)] * x.ndim
    sl[axis] = slice(0, 1)
    return np.broadcast_to(x[tuple(sl)], x.shape)


LAYOUTS = ("C", "fortran", "negative", "strided", "permuted", "broadcast", "unaligned",
           "big_endian", "read_only")


def draw_layout(data: DataObject, x: np.ndarray) -> np.ndarray:
    """``x``'s values (or, for zero strides, values broadcast along an axis) in another layout."""
    for _ in range(data.draw(st.integers(1, 2), label="layouts")):
        layout = data.draw(st.sampled_from(LAYOUTS), label="layout")
        axis = data.draw(st.integers(0, max(0, x.ndim - 1)), label="layout axis")
        if layout == "fortran":
            x = np.asfortranarray(x)
        elif layout == "negative" and x.ndim:
            x = _negative(x, axis)
        elif layout == "strided" and x.ndim:
            x = _strided(x, axis)
        elif layout == "permuted" and x.ndim:
            x = _permuted(x, data.draw(st.permutations(range(x.ndim)), label="perm"))
        elif layout == "broadcast" and x.ndim:
            x = _broadcast(x, axis)
        elif layout == "unaligned":
            x = _unaligned(np.ascontiguousarray(x))
        elif layout == "big_endian":
            x = x.astype(x.dtype.newbyteorder(">"))
        elif layout == "read_only":
            x = x.copy()
            x.setflags(write=False)
    return x


def draw_param(data: DataObject, shape, label: str, present: bool | None = None):
    """An optional parameter array of ``shape`` (weight near 1, bias near 0), any real dtype."""
    if present is None:
        present = data.draw(st.booleans(), label=f"{label}?")
    if not present:
        return None
    dtype = data.draw(st.sampled_from(PARAM_DTYPES), label=f"{label} dtype")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label=f"{label} seed"))
    center = 1.0 if label == "weight" else 0.0
    values = center + 0.5 * rng.standard_normal(shape)
    if np.dtype(dtype).kind == "i":
        values = np.round(values + np.sign(values - center + 1e-9))
    return draw_layout(data, values.astype(dtype)) if len(shape) else values.astype(dtype)


# ---------------------------------------------------------------------------------------------
# the oracle, for any channel axis


def _to_end(x, axis):
    return np.moveaxis(np.asarray(x, dtype=np.float64), axis, -1)


def _from_end(y, axis):
    return np.moveaxis(y, -1, axis)


def _f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


def oracle(family, x, kw):
    """``(y, running_mean, running_var)`` of the call, float64 (running statistics None where
    the call has none)."""
    with np.errstate(all="ignore"):
        if family in ("batch", "instance"):
            axis = kw["axis"]
            fn, train = ((naive.batch_norm, kw["training"]) if family == "batch"
                         else (naive.instance_norm, kw["use_input_stats"]))
            r = fn(_to_end(x, axis), _f64(kw["running_mean"]), _f64(kw["running_var"]),
                   _f64(kw["weight"]), _f64(kw["bias"]), train, kw["momentum"], kw["eps"], axis=-1)
            return _from_end(r["y"], axis), r["running_mean"], r["running_var"]
        if family == "group":
            axis = kw["axis"]
            r = naive.group_norm(_to_end(x, axis), kw["num_groups"], _f64(kw["weight"]),
                                 _f64(kw["bias"]), kw["eps"], axis=-1)
            return _from_end(r["y"], axis), None, None
        if family == "layer":
            r = naive.layer_norm(x, kw["normalized_shape"], _f64(kw["weight"]), _f64(kw["bias"]),
                                 kw["eps"])
            return r["y"], None, None
        eps = naive.rms_eps(x, kw["eps"])
        r = naive.rms_norm(np.asarray(x, dtype=np.float64), kw["normalized_shape"],
                           _f64(kw["weight"]), eps)
        return r["y"], None, None


def must_fail(family, x, kw) -> bool:
    """Whether fastnorm refuses the (otherwise valid) call: one value per statistic in training
    (an empty input is no such call: its output is empty, as in PyTorch)."""
    if family == "batch":
        c = x.shape[kw["axis"]]
        return kw["training"] and x.size > 0 and x.size // c <= 1
    if family == "instance":
        nc = x.shape[0] * x.shape[kw["axis"]]
        return kw["use_input_stats"] and x.size > 0 and x.size // nc <= 1
    if family == "group":
        n, c = x.shape[0], x.shape[kw["axis"]]
        spatial = x.size // (n * c) if n * c else 0
        return n * (c // kw["num_groups"]) * spatial == 1
    return False


def ill_posed(family, x, kw) -> bool:
    """``eps == 0`` and a statistics group of equal values (zero strides make many): the output
    is ``0 / 0`` in exact arithmetic, and any two evaluations of the formula round it to NaN or
    to +-1 as they please."""
    if kw.get("eps") != 0 or family == "rms" or not x.size:
        return False
    x64 = np.asarray(x, dtype=np.float64)
    if family == "layer":
        k = len(np.atleast_1d(kw["normalized_shape"]))
        groups = x64.reshape(-1, math.prod(x.shape[x.ndim - k:]))
    else:
        if not kw.get("training", kw.get("use_input_stats", True)):
            return False  # normalized by the running statistics
        xe = _to_end(x64, kw["axis"])
        c = xe.shape[-1]
        if family == "batch":
            groups = xe.reshape(-1, c).T
        elif family == "instance":
            groups = xe.reshape(xe.shape[0], -1, c).transpose(0, 2, 1).reshape(-1, xe[0].size // max(c, 1))
        else:
            g = kw["num_groups"]
            groups = xe.reshape(xe.shape[0], -1, g, c // g).transpose(0, 2, 1, 3).reshape(xe.shape[0] * g, -1)
    if not groups.size:
        return False
    return bool(np.any(np.ptp(groups, axis=1) == 0))


def call(family, x, kw, out=None):
    """fastnorm's functional op with the drawn keyword arguments."""
    if family == "batch":
        return fastnorm.batch_norm(x, kw["running_mean"], kw["running_var"], kw["weight"], kw["bias"],
                                   kw["training"], kw["momentum"], kw["eps"], axis=kw["axis"], out=out)
    if family == "instance":
        return fastnorm.instance_norm(x, kw["running_mean"], kw["running_var"], kw["weight"],
                                      kw["bias"], kw["use_input_stats"], kw["momentum"], kw["eps"],
                                      axis=kw["axis"], out=out)
    if family == "group":
        return fastnorm.group_norm(x, kw["num_groups"], kw["weight"], kw["bias"], kw["eps"],
                                   axis=kw["axis"], out=out)
    if family == "layer":
        return fastnorm.layer_norm(x, kw["normalized_shape"], kw["weight"], kw["bias"], kw["eps"],
                                   out=out)
    return fastnorm.rms_norm(x, kw["normalized_shape"], kw["weight"], kw["eps"], out=out)


MIN_NDIM = {"batch": 2, "instance": 3, "group": 2, "layer": 1, "rms": 1}


def draw_call(data: DataObject, family: str | None = None, nonfinite: bool = False):
    """A valid call: ``(family, x, kwargs)``; running statistics are fresh writable arrays."""
    if family is None:
        family = data.draw(st.sampled_from(FAMILIES), label="family")
    shape = draw_shape(data, MIN_NDIM[family])
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    x = draw_layout(data, draw_values(data, shape, dtype, nonfinite))
    kw: dict = {"eps": data.draw(st.sampled_from([1e-5, 1e-5, 0.0, 1e-3, 0.5]), label="eps")}
    if family in ("batch", "instance", "group"):
        lo = 0 if family == "batch" else 1
        axis = data.draw(st.integers(lo, x.ndim - 1), label="axis")
        c = x.shape[axis]
        kw["axis"] = data.draw(st.sampled_from([axis, axis - x.ndim]), label="axis sign")
        if family == "group":
            divisors = [g for g in range(1, c + 1) if c % g == 0] or [1, 2]
            kw["num_groups"] = data.draw(st.sampled_from(divisors), label="num_groups")
        kw["weight"] = draw_param(data, (c,), "weight")
        kw["bias"] = draw_param(data, (c,), "bias")
        if family != "group":
            stats = data.draw(st.booleans(), label="running stats?")
            train_key = "training" if family == "batch" else "use_input_stats"
            kw[train_key] = data.draw(st.booleans(), label=train_key) if stats else True
            kw["momentum"] = data.draw(st.sampled_from([0.1, 0.0, 1.0, 0.37]), label="momentum")
            if stats:
                pdt = data.draw(st.sampled_from([np.float16, np.float32, np.float64]), label="stat dtype")
                rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="stat seed"))
                kw["running_mean"] = (0.5 * rng.standard_normal(c)).astype(pdt)
                kw["running_var"] = rng.uniform(0.5, 2.0, c).astype(pdt)
            else:
                kw["running_mean"] = kw["running_var"] = None
    else:
        k = data.draw(st.integers(1, x.ndim), label="normalized dims")
        ns = x.shape[x.ndim - k:]
        kw["normalized_shape"] = data.draw(st.sampled_from([ns, list(ns)] + ([ns[0]] if k == 1 else [])),
                                           label="normalized_shape")
        kw["weight"] = draw_param(data, ns, "weight")
        kw["bias"] = draw_param(data, ns, "bias") if family == "layer" else None
        if family == "rms":
            kw["eps"] = data.draw(st.sampled_from([None, 1e-6, 0.0]), label="rms eps")
    return family, x, kw


def snapshot(*arrays):
    return [None if a is None else np.array(a, copy=True) for a in arrays]


def assert_unchanged(before, arrays):
    for old, a in zip(before, arrays):
        if old is not None:
            np.testing.assert_array_equal(np.asarray(a), old)  # NaN equal to NaN


def check_result(family, x, kw, y, ref, run_before):
    batch_stats = kw.get("training", kw.get("use_input_stats", True))
    assert_output_close(y, ref[0], x.dtype.newbyteorder("="),
                        floor=xhat_floor(family, x, kw, batch_stats) * _weight_max(kw))
    if kw.get("running_mean") is not None:
        updated = kw.get("training", kw.get("use_input_stats"))
        if updated:
            assert_stats_close(kw["running_mean"], ref[1])
            assert_stats_close(kw["running_var"], ref[2])
        else:
            assert_unchanged(run_before, [kw["running_mean"], kw["running_var"]])


# ---------------------------------------------------------------------------------------------
# properties


@FUZZ
@given(data=st.data())
@pytest.mark.parametrize("family", FAMILIES)
def test_functional_matches_oracle(backend, family, data: DataObject):
    """Any valid call gives the oracle's output and running statistics, and leaves its inputs
    alone; a call with one value per statistic in training fails and changes nothing."""
    family, x, kw = draw_call(data, family)
    run_before = snapshot(kw.get("running_mean"), kw.get("running_var"))
    x_before = snapshot(x)
    if must_fail(family, x, kw):
        with pytest.raises(ValueError, match="Expected more than 1"):
            call(family, x, kw)
        assert_unchanged(run_before + x_before, [kw.get("running_mean"), kw.get("running_var"), x])
        return
    assume(not ill_posed(family, x, kw))
    ref = oracle(family, x, kw)
    y = call(family, x, kw)
    assert_unchanged(x_before, [x])
    check_result(family, x, kw, y, ref, run_before)


OUT_KINDS = ("fresh", "strided", "x", "overlap", "param", "param")


@FUZZ
@given(data=st.data())
def test_out_argument(backend, data: DataObject):
    """``out=`` of every kind gives the result of reading every input first: a fresh or strided
    array, the input itself, an array overlapping the input, or one a parameter is a view of."""
    family, x, kw = draw_call(data)
    assume(not must_fail(family, x, kw) and not ill_posed(family, x, kw))
    kind = data.draw(st.sampled_from(OUT_KINDS), label="out kind")
    event(f"out: {kind}")
    dtype = x.dtype.newbyteorder("=")
    if kind == "fresh":
        out = np.full(x.shape, np.nan, dtype)
    elif kind == "strided":
        out = np.full(x.shape + (2,), np.nan, dtype)[..., 0]
    elif kind == "x":
        x = np.array(x, dtype=dtype)  # writable, native
        out = x
    elif kind == "overlap":  # x and out: views of one buffer, out shifted by a few values
        shift = data.draw(st.integers(1, 3), label="shift")
        buf = np.zeros(x.size + shift, dtype)
        buf[:x.size] = x.reshape(-1)
        x = buf[:x.size].reshape(x.shape)
        out = buf[shift:].reshape(x.shape)
    else:  # a parameter is a view of out's memory, where out's first values (read before the
        # kernels write them) or later ones (overwritten before they are read) lie
        out = np.zeros(x.shape, dtype)
        name = data.draw(st.sampled_from(["weight"] if family == "rms" else ["weight", "bias"]),
                         label="shared parameter")
        shape = np.shape(kw[name]) if kw[name] is not None else (
            (x.shape[kw["axis"]],) if "axis" in kw else tuple(np.atleast_1d(kw["normalized_shape"])))
        assume(out.size >= math.prod(shape) > 0)
        p = kw[name] if kw[name] is not None else draw_param(data, shape, name, present=True)
        start = data.draw(st.sampled_from([0, 0, out.size - np.size(p), (out.size - np.size(p)) // 2]),
                          label="parameter offset in out")
        view = out.reshape(-1)[start:start + np.size(p)].reshape(np.shape(p))
        event(f"out: {name} of {family} at {'the start' if start == 0 else 'a later place'}")
        view[...] = np.asarray(p, dtype=np.float64)
        kw[name] = view
    copies = {k: np.array(kw[k]) for k in ("weight", "bias") if kw.get(k) is not None}
    ref = oracle(family, np.array(x), {**kw, **copies})
    run_before = snapshot(kw.get("running_mean"), kw.get("running_var"))
    y = call(family, x, kw, out=out)
    assert y is out
    check_result(family, x, kw, out, ref, run_before)


@FUZZ
@given(data=st.data())
def test_running_statistics_sharing_out_are_refused(backend, data: DataObject):
    """Running statistics updated in place that share memory with ``out`` (or each other) are
    refused before anything is written."""
    family = data.draw(st.sampled_from(["batch", "instance"]), label="family")
    _, x, kw = draw_call(data, family)
    train_key = "training" if family == "batch" else "use_input_stats"
    assume(not must_fail(family, x, kw) and kw["running_mean"] is not None and kw[train_key])
    c = x.shape[kw["axis"]]
    assume(c > 0)  # empty running statistics share no memory
    dtype = x.dtype.newbyteorder("=")
    out = np.zeros(x.shape, dtype)
    flat = out.reshape(-1)
    which = data.draw(st.sampled_from(["running_mean", "running_var", "both"]), label="shared")
    if which == "both":
        kw["running_var"] = kw["running_mean"]
    else:
        assume(flat.size >= c)
        kw[which] = flat[:c]
    before = snapshot(x, out, kw["running_mean"], kw["running_var"])
    with pytest.raises(ValueError, match="must not share memory"):
        call(family, x, kw, out=out)
    assert_unchanged(before, [x, out, kw["running_mean"], kw["running_var"]])


def _corruptions(family, x, kw):
    """``(description, changes to kw or 'x'/'out', expected exception, expected text)``."""
    c = x.shape[kw["axis"]] if "axis" in kw else None
    native = x.dtype.newbyteorder("=")
    cases = [
        ("integer x", {"x": np.ones(x.shape, np.int64)}, TypeError, "x must have dtype"),
        ("complex x", {"x": np.ones(x.shape, np.complex64)}, TypeError, "x must have dtype"),
        ("bool x", {"x": np.ones(x.shape, bool)}, TypeError, "x must have dtype"),
        ("ragged x", {"x": [[1.0, 2.0], [3.0]]}, (TypeError, ValueError), "x"),
        ("negative eps", {"eps": -1.0}, ValueError, "eps"),
        ("nan eps", {"eps": float("nan")}, ValueError, "eps"),
        ("text eps", {"eps": "1e-5"}, TypeError, "eps"),
        ("out of wrong shape", {"out": np.zeros(x.shape + (1,), x.dtype)}, ValueError, "out must have shape"),
        ("out of wrong dtype", {"out": np.zeros(x.shape, np.float32 if native == np.float64 else np.float64)},
         TypeError, "out must have dtype"),
        ("read-only out", {"out": np.zeros(x.shape, native)}, ValueError, "read-only"),
        ("list out", {"out": np.zeros(x.shape).tolist()}, TypeError, "out must be a numpy.ndarray"),
    ]
    if family in ("batch", "instance", "group"):
        cases += [
            ("axis out of range", {"axis": x.ndim}, ValueError, "axis"),
            ("float axis", {"axis": 1.0}, TypeError, "axis"),
            ("bool axis", {"axis": True}, TypeError, "axis"),
            ("weight of wrong length", {"weight": np.ones(c + 1)}, ValueError, "weight must have shape"),
            ("complex bias", {"bias": np.ones(c, np.complex128)}, TypeError, "bias must hold real"),
            ("2-D weight", {"weight": np.ones((1, c))}, ValueError, "weight must have shape"),
        ]
    if family == "group":
        cases += [
            ("zero groups", {"num_groups": 0}, ValueError, "num_groups"),
            ("float groups", {"num_groups": 1.0}, TypeError, "num_groups"),
        ]
        if c:
            cases.append(("groups not dividing", {"num_groups": c + 1}, ValueError, "num_groups"))
    if family in ("batch", "instance"):
        train_key = "training" if family == "batch" else "use_input_stats"
        if kw["running_mean"] is not None and kw[train_key]:
            ro = np.zeros(c)
            ro.setflags(write=False)
            cases += [
                ("text momentum", {"momentum": "0.1"}, TypeError, "momentum"),
                ("nan momentum", {"momentum": float("nan")}, ValueError, "momentum"),
                ("read-only running_mean", {"running_mean": ro}, ValueError, "running_mean"),
                ("list running_var", {"running_var": [1.0] * c}, TypeError, "running_var"),
                ("integer running_mean", {"running_mean": np.zeros(c, np.int64)}, TypeError, "running_mean"),
                ("running_var of wrong length", {"running_var": np.ones(c + 1)}, ValueError, "running_var"),
                ("running_mean alone", {"running_var": None}, ValueError, "running_mean and running_var"),
            ]
        if family == "batch" and not kw["training"]:
            cases.append(("eval without running stats", {"running_mean": None, "running_var": None},
                          ValueError, "running_mean and running_var are required"))
    if family in ("layer", "rms"):
        ns = tuple(np.atleast_1d(kw["normalized_shape"]))
        cases += [
            ("normalized_shape mismatch", {"normalized_shape": ns[:-1] + (ns[-1] + 1,)}, ValueError,
             "normalized_shape"),
            ("negative normalized_shape", {"normalized_shape": -1}, ValueError, "normalized_shape"),
            ("text normalized_shape", {"normalized_shape": "a"}, TypeError, "normalized_shape"),
            ("weight of wrong shape", {"weight": np.ones(ns + (1,))}, ValueError, "weight must have shape"),
        ]
    return cases


@FUZZ
@given(data=st.data())
def test_bad_arguments_raise_and_change_nothing(backend, data: DataObject):
    """One bad argument in an otherwise valid call: the documented exception, naming the
    argument, and no array of the call changed."""
    family, x, kw = draw_call(data)
    assume(not must_fail(family, x, kw))
    desc, change, exc, text = data.draw(st.sampled_from(_corruptions(family, x, kw)), label="corruption")
    kw = dict(kw)
    out = None
    if "out" in change:
        out = change.pop("out")
        if desc == "read-only out":
            out.setflags(write=False)
    if "x" in change:
        x = change.pop("x")
    kw.update(change)
    arrays = [x, out, kw.get("running_mean"), kw.get("running_var"), kw.get("weight"), kw.get("bias")]
    arrays = [a if isinstance(a, np.ndarray) else None for a in arrays]
    before = snapshot(*arrays)
    with pytest.raises(exc, match=text):
        call(family, x, kw, out=out)
    assert_unchanged(before, arrays)


@FUZZ
@given(data=st.data())
def test_nonfinite_values_propagate_as_the_formula_says(backend, data: DataObject):
    """Infinities and NaNs: NaN and inf exactly where the float64 formula puts them (outputs and
    running statistics), the finite values as close as for finite data."""
    family, x, kw = draw_call(data, nonfinite=True)
    assume(not must_fail(family, x, kw) and x.size and not ill_posed(family, x, kw))
    ref = oracle(family, x, kw)
    with np.errstate(all="ignore"):
        y = call(family, x, kw)
    got = [y]
    want = [ref[0]]
    if kw.get("running_mean") is not None and kw.get("training", kw.get("use_input_stats")):
        got += [kw["running_mean"], kw["running_var"]]
        want += [ref[1], ref[2]]
    for g, w in zip(got, want):
        g = np.asarray(g, dtype=np.float64)
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w))
        np.testing.assert_array_equal(g[np.isinf(g)], w[np.isinf(g)])
        np.testing.assert_array_equal(np.isinf(g), np.isinf(w))
    finite = np.isfinite(ref[0])
    if finite.any():
        assert_output_close(np.asarray(y)[finite], ref[0][finite], x.dtype.newbyteorder("="),
                            floor=xhat_floor(family, np.where(np.isfinite(x), x, 0), kw) * _weight_max(kw))


# ---------------------------------------------------------------------------------------------
# layers


_LAYER_FOR = {2: "1d", 3: "1d", 4: "2d", 5: "3d"}


def _layer(family, x, kw, data):
    if family == "batch":
        layer = fastnorm.BatchNorm(x.shape[kw["axis"]], kw["eps"], data.draw(st.sampled_from([0.1, None])),
                                   kw["weight"] is not None, kw["running_mean"] is not None,
                                   axis=kw["axis"])
    elif family == "instance":
        layer = fastnorm.InstanceNorm(x.shape[kw["axis"]], kw["eps"], 0.1, kw["weight"] is not None,
                                      kw["running_mean"] is not None, axis=kw["axis"])
    elif family == "group":
        layer = fastnorm.GroupNorm(kw["num_groups"], max(1, x.shape[kw["axis"]]), kw["eps"],
                                   kw["weight"] is not None, axis=kw["axis"])
    elif family == "layer":
        layer = fastnorm.LayerNorm(kw["normalized_shape"], kw["eps"], kw["weight"] is not None,
                                   kw["bias"] is not None)
    else:
        layer = fastnorm.RMSNorm(kw["normalized_shape"], kw["eps"], kw["weight"] is not None)
    if kw["weight"] is not None:
        layer.weight[...] = np.asarray(kw["weight"], np.float64).reshape(layer.weight.shape)
        if layer.bias is not None and kw.get("bias") is not None:
            layer.bias[...] = np.asarray(kw["bias"], np.float64).reshape(layer.bias.shape)
    return layer


def _grad_oracle(family, x, dy, layer, kw, batch_stats, running, eps):
    """(dx, dweight, dbias) float64 for the layer's last forward on ``x`` (``eps``: the one used)."""
    w = None if layer.weight is None else np.asarray(layer.weight, np.float64)
    with np.errstate(all="ignore"):
        if family in ("batch", "instance"):
            axis = kw["axis"]
            xe, dye = _to_end(x, axis), _to_end(dy, axis)
            if batch_stats:
                if family == "batch":
                    mean, var, _ = naive.batch_stats(xe, -1)
                    dx, gw, gb = naive.batch_norm_backward(xe, dye, mean, var, w, layer.eps, axis=-1)
                else:
                    mean, var, _ = naive.instance_stats(xe, -1)
                    dx, gw, gb = naive.instance_norm_backward(xe, dye, mean, var, w, layer.eps, axis=-1)
            else:
                mean, var = running
                if family == "batch":
                    dx, gw, gb = naive.batch_norm_backward(xe, dye, mean, var, w, layer.eps, axis=-1,
                                                           batch_stats=False)
                else:
                    n = x.shape[0]
                    dx, gw, gb = naive.instance_norm_backward(
                        xe, dye, np.broadcast_to(mean, (n, len(mean))), np.broadcast_to(var, (n, len(var))),
                        w, layer.eps, axis=-1, input_stats=False)
            return _from_end(dx, axis), gw, gb
        if family == "group":
            axis = kw["axis"]
            dx, gw, gb = naive.group_norm_backward(_to_end(x, axis), _to_end(dy, axis), layer.num_groups,
                                                   w, layer.eps, axis=-1)
            return _from_end(dx, axis), gw, gb
        if family == "layer":
            return naive.layer_norm_backward(x, dy, layer.normalized_shape, w, layer.eps)
        dx, gw = naive.rms_norm_backward(x, dy, layer.normalized_shape, w, eps)
        return dx, gw, None


@FUZZ
@given(data=st.data())
@pytest.mark.parametrize("family", FAMILIES)
def test_layers_forward_backward(backend, family, data: DataObject):
    """A layer of any configuration, in training or evaluation: forward as the oracle, backward
    as the analytic gradient of the oracle, running statistics and batch count updated once;
    ``state_dict`` round-trips into a new layer that gives the same output."""
    _, x, kw = draw_call(data, family)
    assume(not must_fail(family, x, kw) and x.size and not ill_posed(family, x, kw))
    layer = _layer(family, x, kw, data)
    training = data.draw(st.booleans(), label="layer training")
    layer.train(training)
    has_running = getattr(layer, "running_mean", None) is not None
    if family in ("batch", "instance") and has_running:
        layer.running_mean[...] = kw["running_mean"]
        layer.running_var[...] = kw["running_var"]
    batch_stats = family not in ("batch", "instance") or training or not has_running
    if family == "instance":
        assume(not (batch_stats and must_fail("instance", x, {**kw, "use_input_stats": True})))
    if family == "batch":
        assume(not (batch_stats and must_fail("batch", x, {**kw, "training": True})))
    running = snapshot(getattr(layer, "running_mean", None), getattr(layer, "running_var", None))
    count = getattr(layer, "num_batches_tracked", None)
    y = layer(x)
    layer_kw = dict(kw, weight=layer.weight, bias=layer.bias)
    if family == "batch":
        layer_kw.update(running_mean=running[0], running_var=running[1], training=batch_stats,
                        momentum=layer.momentum if layer.momentum is not None else 1.0 / ((count or 0) + 1))
    if family == "instance":
        layer_kw.update(running_mean=running[0], running_var=running[1], use_input_stats=batch_stats,
                        momentum=0.1)
    ref = oracle(family, x, layer_kw)
    eps = naive.rms_eps(x, layer.eps) if family == "rms" else layer.eps
    assert_output_close(y, ref[0], x.dtype.newbyteorder("="),
                        floor=xhat_floor(family, x, layer_kw, batch_stats, eps) * _weight_max(layer_kw))
    if has_running:
        if training:
            assert layer.num_batches_tracked == count + 1
            assert_stats_close(layer.running_mean, ref[1])
            assert_stats_close(layer.running_var, ref[2])
        else:
            assert layer.num_batches_tracked == count
            assert_unchanged(running, [layer.running_mean, layer.running_var])
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="dy seed"))
    dtype = np.dtype(x.dtype.newbyteorder("="))
    dy = rng.standard_normal(x.shape).astype(dtype)
    dx = layer.backward(dy)
    assert dx.dtype == dtype and dx.shape == x.shape
    if np.all(np.isfinite(ref[0])):
        x64, dy64 = np.asarray(x, np.float64), dy.astype(np.float64)
        grads = _grad_oracle(family, x64, dy64, layer, kw, batch_stats,
                             (_f64(running[0]), _f64(running[1])), eps)
        scales = _grad_scales(family, x64, dy64, layer, layer_kw, batch_stats, eps)
        assert_grad_close(dx, grads[0], dtype, scale=scales[0])
        for got, param, want, scale, floor in (
                (layer.grad_weight, layer.weight, grads[1], scales[1], scales[3]),
                (layer.grad_bias, layer.bias, grads[2], scales[2], 0.0)):
            if param is None:
                assert got is None
                continue
            assert got.shape == param.shape and got.dtype == param.dtype
            assert_grad_close(np.asarray(got, np.float64).reshape(-1), np.reshape(want, -1),
                              coarser(dtype, param.dtype), scale=scale, floor=floor)
    twin = _layer(family, x, kw, data)
    twin.load_state_dict(layer.state_dict())
    np.testing.assert_array_equal(twin.eval()(x), layer.eval()(x))


def coarser(*dtypes):
    return max((np.dtype(d) for d in dtypes), key=lambda d: np.finfo(d).eps)


def _grad_scales(family, x64, dy64, layer, layer_kw, batch_stats, eps):
    """Magnitudes of the terms each gradient is a sum of, which bound its rounding errors:
    ``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))`` with ``g = dy * w`` has terms up to
    ``max|g| * max(rstd) * (2 + max|xhat|)``; ``grad_weight`` and ``grad_bias`` are sums of
    ``dy * xhat`` and ``dy`` over the values of one parameter entry."""
    plain = dict(layer_kw, weight=None, bias=None)
    if family == "batch":
        plain.update(training=batch_stats, momentum=0.0)
    if family == "instance":
        plain.update(use_input_stats=batch_stats, momentum=0.0)
    with np.errstate(all="ignore"):
        xhat = oracle(family, x64, dict(plain, eps=eps) if family == "rms" else plain)[0]
    rstd = 1.0 / _min_std(family, x64, layer_kw, batch_stats, eps)
    floor = xhat_floor(family, x64, layer_kw, batch_stats, eps)
    if family in ("layer", "rms"):
        m = math.prod(layer.normalized_shape)
        w = 1.0 if layer.weight is None else np.asarray(layer.weight, np.float64)
        g = np.abs(dy64 * w)
        per_entry = lambda a: np.abs(a).reshape(-1, m).sum(axis=0)
    else:
        axis = layer_kw["axis"]
        g = np.abs(_to_end(dy64, axis))
        if layer.weight is not None:
            g = g * np.abs(np.asarray(layer.weight, np.float64))
        per_entry = lambda a: np.abs(_to_end(a, axis)).reshape(-1, x64.shape[axis]).sum(axis=0)
    dx_scale = float(np.max(g, initial=0.0)) * rstd * (2.0 + float(np.max(np.abs(xhat), initial=0.0)))
    sum_dy = float(np.max(per_entry(dy64), initial=0.0))
    return dx_scale, float(np.max(per_entry(dy64 * xhat), initial=0.0)), sum_dy, floor * sum_dy


def _min_std(family, x64, kw, batch_stats, eps):
    """The smallest normalizing ``sqrt(var + eps)`` of the call (``rms`` for RMSNorm)."""
    if family in ("batch", "instance") and not batch_stats:
        return float(np.sqrt(np.min(np.asarray(kw["running_var"], np.float64), initial=np.inf) + eps))
    if family == "batch":
        v = _to_end(x64, kw["axis"]).reshape(-1, x64.shape[kw["axis"]]).var(axis=0)
    elif family == "instance":
        xe = _to_end(x64, kw["axis"])
        v = xe.reshape(x64.shape[0], -1, xe.shape[-1]).var(axis=1)
    elif family == "group":
        xe = _to_end(x64, kw["axis"])
        g = kw["num_groups"]
        v = xe.reshape(x64.shape[0], -1, g, xe.shape[-1] // g).var(axis=(1, 3))
    else:
        m = math.prod(np.atleast_1d(kw["normalized_shape"]))
        rows = x64.reshape(-1, m)
        v = rows.var(axis=1) if family == "layer" else (rows ** 2).mean(axis=1)
    return float(np.sqrt(np.min(v, initial=np.inf) + eps))


def xhat_floor(family, x, kw, batch_stats=True, eps=None):
    """An absolute error every ``xhat = (x - mean) * rstd`` may carry, however small ``xhat``.

    A group's mean is a float64 sum of its values, rounded at each addition: the kernels add
    up to ``BLOCK = 2048`` values into one accumulator (NumPy's pairwise sums in the oracle,
    fewer), each addition off by at most half a unit in the last place of a partial sum of at
    most ``k * max|x|`` after ``k`` values, so a block mean is off by at most about
    ``1024 * u * max|x|``, and the merges of ``log2(n)`` levels add as many units; the
    difference to ``x`` carries that error times ``rstd``.  This bound, with ``2 u = eps64``,
    matters only where ``rstd`` is large against ``1 / max|x|``: groups of (nearly) equal
    values, where ``rstd`` approaches ``1 / sqrt(eps)`` (zero strides make many); elsewhere it
    is far below the float64 tolerance.  0 for RMSNorm, which does not subtract a mean."""
    if family == "rms" or not np.size(x):
        return 0.0
    x64 = np.asarray(x, np.float64)
    with np.errstate(all="ignore"):
        std = _min_std(family, x64, kw, batch_stats, kw["eps"] if eps is None else eps)
    big = float(np.max(np.abs(x64[np.isfinite(x64)]), initial=0.0))
    units = 2048 + math.log2(max(2, x64.size))
    return units * float(np.finfo(np.float64).eps) * big / std if std > 0 else np.inf


def _weight_max(kw):
    w = kw.get("weight")
    return 1.0 if w is None else max(1.0, float(np.max(np.abs(np.asarray(w, np.float64)), initial=0.0)))
