"""LayerNorm, RMSNorm, GroupNorm, InstanceNorm: the families' part of ``python -m fastnorm bench``.

Usage::

    python bench/compare_families.py [python -m fastnorm bench options]

runs ``python -m fastnorm bench`` (:mod:`fastnorm._demo`) restricted to the four families, without
the extra figures unless asked (``--only``, ``--extras``): see ``bench/README.md``.

The building blocks of the pytest-benchmark suite ``bench/test_families.py`` (cases, data, the
naive NumPy layer, the float64 reference and the per-implementation runners) live in
:mod:`fastnorm._demo` and are re-exported here.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from fastnorm import _demo
from fastnorm._demo import (  # noqa: F401  (re-exported for bench/conftest.py, test_families.py)
    BUSY_WARNING,
    EPS,
    GROUPS,
    MOMENTUM,
    RMS_EPS,
    NaiveNumpyNorm,
    OtherCpuMeter,
    build_impl,
    fastnorm_impl,
    make_layer,
    make_problem,
    numpy_impl,
    reference_result,
    reuse_memory,
    stat_view,
    torch_impl,
)
from fastnorm._demo import Case as FamilyCase

#: the families compared here (every family of the matrix but BatchNorm)
FAMILY_NAMES = ("layer_norm", "rms_norm", "group_norm", "instance_norm")
FAMILIES = {k: v for k, v in _demo.FAMILIES.items() if k in FAMILY_NAMES}

#: the families' cases of ``python -m fastnorm bench``
CASES: tuple[FamilyCase, ...] = tuple(c for c in _demo.MATRIX if c.family in FAMILY_NAMES)


def torch_installed() -> bool:
    """Whether torch can be found, without importing it."""
    import importlib.util

    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # ValueError: sys.modules["torch"] is None
        return False


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--only" or a.startswith("--only=") or a == "--extras" for a in args):
        args.append("--no-extras")
    return _demo.main(args, families=FAMILY_NAMES, prog="python bench/compare_families.py")


if __name__ == "__main__":
    sys.exit(main())
