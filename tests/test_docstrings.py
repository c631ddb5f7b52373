"""The public API's docstrings: their examples run as doctests, and each has a summary line and
the numpydoc sections it needs.

Public objects: the modules :mod:`fastnorm`, :mod:`fastnorm.dask` and :mod:`fastnorm.benchmark`
(their own examples), every callable of their ``__all__`` (constants, documented by ``#:``
comments, carry no docstring of their own), and the public methods and properties of their
classes.  Each object is one test case, named
after it, so a failing example names its object.  Objects whose examples need an optional extra
(torch, mpi4py, dask) skip their doctest where it is absent.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import inspect
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import fastnorm

#: public module -> the extra its objects need (None: none)
MODULES = {"fastnorm": None, "fastnorm.dask": "dask", "fastnorm.benchmark": None}

#: objects (qualified names, or their class's) whose examples need an optional package
NEEDS = {
    "fastnorm.from_torch": "torch",
    "fastnorm.from_torch_modules": "torch",
    "fastnorm.SyncBatchNorm": "mpi4py",
}

OPTIONS = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS

#: the numpydoc sections a docstring may hold
SECTIONS = ("Parameters", "Returns", "Yields", "Raises", "See Also", "Notes", "Examples", "Attributes")


@dataclass(frozen=True)
class Public:
    """One public object: ``name`` (qualified), the object, what kind it is and what it needs."""

    name: str
    obj: Any
    kind: str  # "module", "function", "class", "method" or "property"
    needs: str | None

    def __str__(self) -> str:
        return self.name


def _installed(package: str | None) -> bool:
    return package is None or importlib.util.find_spec(package) is not None


def _defined_in_fastnorm(cls: type, name: str) -> bool:
    """Whether ``cls``'s attribute ``name`` comes from a fastnorm class (not ``object``, tuples...)."""
    for klass in cls.__mro__:
        if name in vars(klass):
            return klass.__module__.split(".")[0] == "fastnorm"
    return False


def _members(cls: type, qualname: str, needs: str | None) -> Iterator[Public]:
    """The public methods and properties of ``cls`` (``__call__`` included)."""
    for name in sorted(dir(cls)):
        if (name.startswith("_") and name != "__call__") or not _defined_in_fastnorm(cls, name):
            continue
        static = inspect.getattr_static(cls, name)
        if isinstance(static, property):
            yield Public(f"{qualname}.{name}", static, "property", needs)
        elif isinstance(static, (staticmethod, classmethod)) or inspect.isfunction(static):
            yield Public(f"{qualname}.{name}", getattr(cls, name), "method", needs)


def public_objects() -> list[Public]:
    objects = []
    for module_name, extra in MODULES.items():
        if not _installed(extra):
            continue
        module = importlib.import_module(module_name)
        objects.append(Public(module_name, module, "module", extra))
        for name in module.__all__:
            obj = getattr(module, name)
            if not callable(obj):  # a constant
                continue
            qualname = f"{module_name}.{name}"
            needs = NEEDS.get(qualname, extra)
            if inspect.isclass(obj):
                objects.append(Public(qualname, obj, "class", needs))
                objects.extend(_members(obj, qualname, needs))
            else:
                objects.append(Public(qualname, obj, "function", needs))
    return objects


def all_public_names() -> dict[str, list[str]]:
    """Module -> every name of its ``__all__`` (constants included), for the count."""
    out = {}
    for module_name, extra in MODULES.items():
        if _installed(extra):
            out[module_name] = list(importlib.import_module(module_name).__all__)
    return out


PUBLIC = public_objects()


# -- (a) the examples run -------------------------------------------------------


def _doctests(public: Public) -> list[doctest.DocTest]:
    obj = public.obj.fget if public.kind == "property" else public.obj
    finder = doctest.DocTestFinder(recurse=False, exclude_empty=True)
    globs = {"np": np, "fastnorm": fastnorm}
    return [t for t in finder.find(obj, public.name, globs=globs) if t.examples]


@pytest.fixture
def _restored_settings() -> Iterator[None]:
    """Examples may select a backend or a thread count: put them back after each object."""
    backend, threads = fastnorm.get_backend(), fastnorm.get_num_threads()
    yield
    fastnorm.set_backend(backend)
    fastnorm.set_num_threads(threads)


@pytest.mark.usefixtures("_restored_settings")
@pytest.mark.parametrize("public", [p for p in PUBLIC if p.kind != "property"], ids=str)
def test_examples_run(public: Public) -> None:
    if not _installed(public.needs):
        pytest.skip(f"the examples of {public.name} need {public.needs}")
    tests = _doctests(public)
    if public.kind == "module" and not tests:
        pytest.skip(f"the docstring of {public.name} has no examples (its objects have)")
    assert tests, f"{public.name} has no examples"
    report: list[str] = []
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    for test in tests:
        runner.run(test, out=report.append, clear_globs=True)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{public.name}: {result.failed} of {result.attempted} examples failed\n" + "".join(report)


# -- (b) the sections -----------------------------------------------------------


def _parsed(public: Public) -> tuple[Any, list[str]]:
    """``public``'s docstring parsed by numpydoc, and what is wrong with it as a whole."""
    docscrape = pytest.importorskip("numpydoc.docscrape")
    doc = inspect.getdoc(public.obj)
    if not doc:
        return None, ["a docstring"]
    problems = []
    if "%(" in doc:
        problems.append("its shared text filled in (a %(name)s placeholder is left)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parsed = docscrape.NumpyDocString(doc)
    problems.extend(f"numpydoc's approval ({w.message})" for w in caught)
    return parsed, problems


def _signature(public: Public) -> inspect.Signature | None:
    try:
        return inspect.signature(public.obj)
    except (TypeError, ValueError):  # builtins without one
        return None


def _documented(parsed: Any) -> set[str]:
    names: set[str] = set()
    for entry in parsed["Parameters"]:
        names.update(part.strip().lstrip("*") for part in entry.name.split(","))
    return names


def _returns_something(public: Public, signature: inspect.Signature | None) -> bool:
    if signature is None:
        return True
    annotation = signature.return_annotation
    return annotation not in (None, "None")  # unannotated: assumed to return something


def missing_sections(public: Public) -> list[str]:
    """What ``public``'s docstring lacks: an empty list when it is complete."""
    parsed, missing = _parsed(public)
    if parsed is None:
        return missing
    if not "".join(parsed["Summary"]).strip():
        missing.append("a summary line")
    if public.kind == "property":
        return missing
    signature = _signature(public)
    params = [] if signature is None else [
        p.name for p in signature.parameters.values() if p.name not in ("self", "cls")
    ]
    if params:
        if not parsed["Parameters"]:
            missing.append("Parameters")
        else:
            undocumented = [p for p in params if p not in _documented(parsed)]
            if undocumented:
                missing.append(f"Parameters entries for {undocumented}")
    if public.kind != "class" and _returns_something(public, signature) \
            and not (parsed["Returns"] or parsed["Yields"]):
        missing.append("Returns")
    if public.kind == "class" and public.name.count(".") == 1 and not parsed["Attributes"]:
        missing.append("Attributes")  # the classes of the top-level API
    if not parsed["Examples"]:
        missing.append("Examples")
    return missing


@pytest.mark.parametrize("public", [p for p in PUBLIC if p.kind != "module"], ids=str)
def test_sections(public: Public) -> None:
    missing = missing_sections(public)
    assert not missing, f"{public.name}: the docstring lacks {', '.join(missing)}"


def test_every_public_name_is_documented() -> None:
    """The count: documented public names (of ``__all__``) out of all of them."""
    pytest.importorskip("numpydoc.docscrape")
    names = all_public_names()
    total = sum(len(v) for v in names.values())
    constants = [f"{m}.{n}" for m, ns in names.items() for n in ns
                 if not callable(getattr(importlib.import_module(m), n))]
    top = [p for p in PUBLIC if p.kind in ("function", "class")]
    documented = [p for p in top if not missing_sections(p)]
    undocumented = sorted(set(map(str, top)) - set(map(str, documented)))
    assert not undocumented, (
        f"{len(documented)} of {len(top)} public callables documented "
        f"({total} public names, {len(constants)} of them constants); missing: {undocumented}"
    )
