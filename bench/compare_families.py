"""LayerNorm, RMSNorm, GroupNorm, InstanceNorm: the families' part of ``python -m fastnorm bench``.

Usage::

    python bench/compare_families.py [python -m fastnorm bench options]

runs ``python -m fastnorm bench`` (:mod:`fastnorm.benchmark`) restricted to the four families,
without the extra figures unless asked (``--only``, ``--extras``): see ``bench/README.md``.

The building blocks of the pytest-benchmark suite ``bench/test_families.py`` (cases, data, the
naive NumPy layer, the float64 reference and the per-implementation runners) live in
:mod:`fastnorm.benchmark` and are re-exported here.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from fastnorm import benchmark

# re-exported for bench/conftest.py and test_families.py (hence the noqa: F401)
from fastnorm.benchmark.cases import (  # noqa: F401
    BUSY_WARNING,
    EPS,
    GROUPS,
    MOMENTUM,
    RMS_EPS,
    make_problem,
    stat_view,
)
from fastnorm.benchmark.cases import Case as FamilyCase
from fastnorm.benchmark.cli import reuse_memory  # noqa: F401
from fastnorm.benchmark.naive import NaiveNumpyNorm, reference_result  # noqa: F401
from fastnorm.benchmark.peers import (  # noqa: F401
    build_impl,
    fastnorm_impl,
    make_layer,
    numpy_impl,
    torch_impl,
)
from fastnorm.benchmark.timing import OtherCpuMeter  # noqa: F401

#: the families compared here (every family of the matrix but BatchNorm)
FAMILY_NAMES = ("layer_norm", "rms_norm", "group_norm", "instance_norm")
FAMILIES = {k: v for k, v in benchmark.FAMILIES.items() if k in FAMILY_NAMES}

#: the families' cases of ``python -m fastnorm bench``
CASES: tuple[FamilyCase, ...] = tuple(c for c in benchmark.MATRIX if c.family in FAMILY_NAMES)


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
    return benchmark.main(args, families=FAMILY_NAMES, prog="python bench/compare_families.py",
                          command_required=False)


if __name__ == "__main__":
    sys.exit(main())
