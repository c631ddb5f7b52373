"""The files the compiled kernels are built from, and their digest.

``setup.py`` compiles the digest into every build of the extension
(``SOURCE_DIGEST``); :mod:`fastnorm.backends.cython_cpu` recomputes it from the
installed sources and refuses a build made from other ones.  This module
imports nothing outside the standard library, so that ``setup.py`` can load it
by path before NumPy or fastnorm are importable.
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Iterable
from typing import Any

#: the Cython module, the files it ``include``s and the C headers it declares from
PATTERNS = ("_kernels.pyx", "_kernels_*.pxi", os.path.join("csrc", "*.h"))


def kernel_sources(directory: str) -> list[str]:
    """The kernel source files under ``directory`` (``fastnorm/backends``), sorted."""
    return sorted(p for pattern in PATTERNS for p in glob.glob(os.path.join(directory, pattern)))


def source_digest(directory: str) -> str | None:
    """Digest of the kernel sources under ``directory``: their paths (relative, with ``/``) and
    contents; ``None`` when ``_kernels.pyx`` is absent (an installation without sources)."""
    paths = kernel_sources(directory)
    if not any(os.path.basename(p) == "_kernels.pyx" for p in paths):
        return None
    digest = hashlib.sha256()
    for path in paths:
        digest.update(os.path.relpath(path, directory).replace(os.sep, "/").encode() + b"\0")
        with open(path, "rb") as f:
            digest.update(f.read())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _is_extension(name: str) -> bool:
    return name.startswith("_kernels") and name.endswith((".so", ".pyd"))


def unbuilt_source_tree_note(directory: str, distributions: Iterable[Any] | None = None) -> str | None:
    """A warning's text when ``directory`` (the imported ``fastnorm/backends``) is a source
    tree whose compiled extension is not built while an installed build of fastnorm exists
    elsewhere (typically: ``pip install .``, then Python started in the checkout); else None.

    ``distributions``: the installed distributions to look in (default: every copy of
    ``fastnorm-kernels``'s metadata on ``sys.path``, read only when the extension is missing
    here; a source tree may hold its own, such as the ``egg-info`` a build leaves).  Metadata
    that cannot be read counts as no installed build: this never makes an import fail.
    """
    try:
        names = os.listdir(directory)
    except OSError:
        return None
    if "_kernels.pyx" not in names or any(_is_extension(n) for n in names):
        return None
    try:
        if distributions is None:
            from importlib import metadata

            distributions = metadata.distributions(name="fastnorm-kernels")
        here = os.path.normcase(os.path.realpath(directory))
        for distribution in distributions:
            for file in distribution.files or ():
                if not _is_extension(os.path.basename(str(file))):
                    continue
                path = os.path.normcase(os.path.realpath(str(distribution.locate_file(file))))
                if os.path.dirname(path) != here and os.path.exists(path):
                    package = os.path.dirname(os.path.dirname(path))
                    tree = os.path.dirname(os.path.dirname(here))
                    return (
                        f"fastnorm is imported from the source tree {tree}, whose compiled extension "
                        f"is not built, so the cython backend is unavailable; the installed build at "
                        f"{package} is not used. Run Python outside the source tree to use the "
                        f"installed build, or build this tree (pip install -e . or python setup.py "
                        f"build_ext --inplace)."
                    )
    except Exception:  # noqa: BLE001 - unreadable metadata: say nothing rather than fail the import
        return None
    return None
