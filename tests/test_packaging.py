"""A source tree without its compiled extension, imported while an installed build exists,
says so (at import, and in ``build_info()``).  The wheel/sdist round trip itself runs in
``.ci/run`` (it builds the extension and a fresh virtual environment)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path, PurePosixPath

from fastnorm.backends import _sources

EXT = "_kernels.cpython-311-x86_64-linux-gnu.so"


class _Installed:
    """The parts of an ``importlib.metadata.Distribution`` the check reads (a list of them is
    what the check is given)."""

    def __init__(self, site: Path, names: list[str]) -> None:
        self.site = site
        self.files = [PurePosixPath(n) for n in names]

    def locate_file(self, file: PurePosixPath) -> Path:
        return self.site / file


def _tree(root: Path, built: bool) -> Path:
    backends = root / "fastnorm" / "backends"
    backends.mkdir(parents=True)
    (backends / "_kernels.pyx").write_text("# kernels\n")
    if built:
        (backends / EXT).write_bytes(b"")
    return backends


def _installed(root: Path) -> _Installed:
    backends = root / "fastnorm" / "backends"
    backends.mkdir(parents=True)
    (backends / EXT).write_bytes(b"")
    (backends / "__init__.py").write_text("")
    return _Installed(root, ["fastnorm/__init__.py", "fastnorm/backends/__init__.py",
                             f"fastnorm/backends/{EXT}"])


def test_unbuilt_source_tree_with_an_installed_build_is_named(tmp_path):
    tree = _tree(tmp_path / "checkout", built=False)
    site = tmp_path / "site-packages"
    note = _sources.unbuilt_source_tree_note(str(tree), [_installed(site)])
    assert note is not None
    assert str(tmp_path / "checkout") in note and str(site) in note
    assert "not built" in note and "pip install -e ." in note


def test_no_note_where_nothing_is_shadowed(tmp_path):
    site = _installed(tmp_path / "site-packages")
    # the source tree is built: its own extension is used
    assert _sources.unbuilt_source_tree_note(str(_tree(tmp_path / "built", True)), [site]) is None
    # no installed build: nothing better exists
    empty = _Installed(tmp_path / "nowhere", ["fastnorm/__init__.py"])
    assert _sources.unbuilt_source_tree_note(str(_tree(tmp_path / "bare", False)), [empty]) is None
    assert _sources.unbuilt_source_tree_note(str(_tree(tmp_path / "bare1", False)), []) is None
    # an installed build that lists its extension but lost the file
    gone = _Installed(tmp_path / "gone", [f"fastnorm/backends/{EXT}"])
    assert _sources.unbuilt_source_tree_note(str(_tree(tmp_path / "bare2", False)), [gone]) is None
    # an installation (no .pyx) rather than a source tree
    plain = tmp_path / "plain" / "fastnorm" / "backends"
    plain.mkdir(parents=True)
    assert _sources.unbuilt_source_tree_note(str(plain), [site]) is None
    # the installed build is this very directory
    assert _sources.unbuilt_source_tree_note(str(site.site / "fastnorm" / "backends"), [site]) is None


def test_metadata_in_the_tree_does_not_hide_the_installed_build(tmp_path):
    """A build leaves ``*.egg-info`` in the source tree, which lists no extension; it comes first
    on ``sys.path`` when Python starts in the tree, and the installed copy is still found."""
    tree = _tree(tmp_path / "checkout", built=False)
    in_tree = _Installed(tmp_path / "checkout", ["fastnorm/__init__.py", "fastnorm/backends/_kernels.pyx"])
    note = _sources.unbuilt_source_tree_note(str(tree), [in_tree, _installed(tmp_path / "site")])
    assert note is not None and str(tmp_path / "site") in note


def test_unreadable_metadata_is_no_installed_build(tmp_path):
    class Broken:
        @property
        def files(self):
            raise OSError("RECORD unreadable")

    tree = _tree(tmp_path / "checkout", built=False)
    assert _sources.unbuilt_source_tree_note(str(tree), [Broken()]) is None


def test_import_of_this_tree_warns_exactly_when_shadowed():
    """Importing the tree under test warns if and only if it lacks its extension while an
    installed build exists elsewhere (silent in a built checkout)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import warnings; warnings.simplefilter('error'); import fastnorm, os; "
            "print(os.path.dirname(fastnorm.__file__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=root)
    backends = os.path.join(root, "fastnorm", "backends")
    expected = _sources.unbuilt_source_tree_note(backends) if os.path.isdir(backends) else None
    if expected is None:
        assert out.returncode == 0, out.stderr
    else:
        assert out.returncode != 0 and "installed build" in out.stderr, out.stderr
