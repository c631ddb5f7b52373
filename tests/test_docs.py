"""The documentation: the Sphinx site in ``docs/`` builds with warnings as errors, every public
name has its page in the API reference, and every Python example of the pages and of
``README.md`` runs.

Examples.  Every ```` ```python ```` block of ``docs/**/*.md`` and ``README.md`` runs.  The
blocks of one page run in order in one namespace (a page's examples build on each other),
each page in a fresh namespace, with a temporary directory as the working directory and the
backend and thread count restored afterwards.  A block may carry a marker: an HTML comment on
the line right above its opening fence (invisible on GitHub and in the built site)::

    <!-- docs-test: requires torch -->     runs only where these modules import
    <!-- docs-test: requires gpu -->       runs only with a CUDA GPU (the cuda backend,
                                           not Numba's simulator)
    <!-- docs-test: mpiexec 2 -->          runs as a script under ``mpiexec -n 2``
                                           (needs mpi4py and mpiexec)
    <!-- docs-test: skip: REASON -->       never runs

A marked block is a test of its own: it runs after the blocks of its page above it that are
unmarked or carry the same marker, in a namespace (or script) of its own, so that the page's
unmarked blocks never depend on it and skip nothing when it is skipped.  Examples that state a result check it (``assert``,
``np.testing``).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

import fastnorm

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
BUILD_TIMEOUT = 300  # seconds for the whole Sphinx build (about 10 s on 2 cores)
MPI_TIMEOUT = 120  # seconds for one mpiexec launch

MARKER = re.compile(r"<!--\s*docs-test:\s*(.*?)\s*-->")
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>[^\n`]*)$")


@dataclass(frozen=True)
class Block:
    page: str  # path relative to the repository
    line: int  # line of the opening fence (1-based)
    code: str
    marker: str | None  # the marker's text ("requires torch", ...), None without one

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def pages() -> list[Path]:
    found = sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts
                   and "generated" not in p.parts)
    return [REPO / "README.md", *found]


def python_blocks(path: Path) -> list[Block]:
    """The ```python blocks of a Markdown file (top-level fences, nested ones skipped)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, info = match.group("fence"), match.group("info").strip()
        end = i + 1
        while end < len(lines) and not (lines[end].strip().startswith(fence)
                                        and lines[end].strip().strip(fence[0]) == ""):
            end += 1
        if info.split()[:1] == ["python"]:
            marker = None
            above = i - 1
            if above >= 0 and MARKER.search(lines[above]):
                marker = MARKER.search(lines[above]).group(1)
            indent = len(match.group("indent"))
            code = "\n".join(line[indent:] for line in lines[i + 1:end])
            blocks.append(Block(str(path.relative_to(REPO)), i + 1, code + "\n", marker))
        i = end + 1
    return blocks


ALL_BLOCKS = {str(p.relative_to(REPO)): python_blocks(p) for p in pages()}


def _have_gpu() -> bool:
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return False  # the simulator lists "cuda" too, and would take minutes on these shapes
    return "cuda" in fastnorm.available_backends()


def _mpiexec() -> str | None:
    beside = Path(sys.executable).parent / "mpiexec"  # the mpich wheel's, in this environment
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def _missing(marker: str) -> str | None:
    """Why a marked block cannot run here (None: it can)."""
    kind, _, rest = marker.partition(" ")
    if kind == "skip:" or marker.startswith("skip"):
        return marker.partition(":")[2].strip() or "marked skip"
    if kind == "requires":
        for name in rest.replace(",", " ").split():
            if name == "gpu":
                if not _have_gpu():
                    return "needs a CUDA GPU (the cuda backend)"
            elif importlib.util.find_spec(name) is None:
                return f"needs {name}"
        return None
    if kind == "mpiexec":
        if importlib.util.find_spec("mpi4py") is None:
            return "needs mpi4py (pip install -e '.[mpi]')"
        if _mpiexec() is None:
            return "needs mpiexec (pip install -e '.[mpi]')"
        return None
    raise ValueError(f"unknown docs-test marker {marker!r}")


@pytest.fixture
def fresh_state(tmp_path, monkeypatch):
    """A temporary working directory; the backend and thread count restored afterwards."""
    monkeypatch.chdir(tmp_path)
    backend, threads = fastnorm.get_backend(), fastnorm.get_num_threads()
    try:
        yield tmp_path
    finally:
        fastnorm.set_backend(backend)
        fastnorm.set_num_threads(threads)


def _run(blocks: list[Block], namespace: dict) -> None:
    for block in blocks:
        try:
            exec(compile(block.code, block.id, "exec"), namespace)
        except Exception as error:
            # the line of the page that failed (the innermost frame of the block)
            lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__)
                     if frame.filename == block.id]
            where = f"{block.page}:{block.line + lines[-1]}" if lines else block.id
            source = block.code.splitlines()[lines[-1] - 1].strip() if lines else ""
            raise AssertionError(f"the example at {where} failed: {source}\n"
                                 f"{type(error).__name__}: {error}") from error


@pytest.mark.parametrize("page", [p for p, blocks in ALL_BLOCKS.items()
                                  if any(b.marker is None for b in blocks)])
def test_page_examples(page, fresh_state):
    """A page's unmarked blocks, in order, in one namespace."""
    _run([b for b in ALL_BLOCKS[page] if b.marker is None], {"__name__": "__docs__"})


MARKED = [(p, b) for p, blocks in ALL_BLOCKS.items() for b in blocks if b.marker is not None]


@pytest.mark.parametrize("page, block", MARKED, ids=[b.id for _, b in MARKED])
def test_marked_example(page, block, fresh_state):
    """A marked block, after its page's blocks above it that are unmarked or marked alike."""
    reason = _missing(block.marker)
    if reason:
        pytest.skip(f"{block.id} ({block.marker}): {reason}")
    setup = [b for b in ALL_BLOCKS[page]
             if b.marker in (None, block.marker) and b.line < block.line]
    if block.marker.startswith("mpiexec"):
        ranks = int(block.marker.split()[1])
        script = fresh_state / "example.py"
        script.write_text("".join(b.code for b in [*setup, block]), encoding="utf-8")
        # one thread per rank: the ranks share this machine's cores
        env = dict(os.environ, FASTNORM_NUM_THREADS="1", OMP_NUM_THREADS="1")
        proc = subprocess.Popen([_mpiexec(), "-n", str(ranks), sys.executable, str(script)],
                                cwd=fresh_state, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            log, _ = proc.communicate(timeout=MPI_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            log, _ = proc.communicate()
            pytest.fail(f"{block.id}: mpiexec -n {ranks} did not finish in {MPI_TIMEOUT} s:\n"
                        f"{log[-4000:]}")
        assert proc.returncode == 0, f"{block.id} under mpiexec -n {ranks} failed:\n{log[-4000:]}"
        return
    _run([*setup, block], {"__name__": "__docs__"})


def test_examples_found():
    """The pages hold examples, and every marker is one the runner knows."""
    total = sum(len(blocks) for blocks in ALL_BLOCKS.values())
    assert total >= 30, total
    assert ALL_BLOCKS["README.md"], "README.md has no python example"
    for _, block in MARKED:
        _missing(block.marker)  # raises on an unknown marker


# -- the API reference --------------------------------------------------------------------


def _documented_names() -> set[str]:
    names = set()
    for page in (DOCS / "api").glob("*.md"):
        text = page.read_text(encoding="utf-8")
        for directive in re.finditer(r"\.\. currentmodule:: (\S+)(.*?)(?=\.\. currentmodule::|\Z)",
                                     text, re.S):
            module = directive.group(1)
            for entry in re.finditer(r"\.\. autosummary::\n((?:   .*\n|\n)+)", directive.group(2)):
                for line in entry.group(1).splitlines():
                    line = line.strip()
                    if line and not line.startswith(":"):
                        names.add(f"{module}.{line}")
    return names


def test_api_reference_lists_every_public_name():
    import fastnorm.benchmark

    documented = _documented_names()
    # the benchmark's constants are documented where they are defined
    short = {name.replace("fastnorm.benchmark.cases.", "fastnorm.benchmark.")
                 .replace("fastnorm.benchmark.timing.", "fastnorm.benchmark.")
             for name in documented}
    wanted = {f"fastnorm.{name}" for name in fastnorm.__all__}
    wanted |= {f"fastnorm.benchmark.{name}" for name in fastnorm.benchmark.__all__}
    dask_all = ["batch_norm", "group_norm", "instance_norm", "layer_norm", "moments", "rms_norm"]
    if importlib.util.find_spec("dask") is not None:
        import fastnorm.dask

        dask_all = fastnorm.dask.__all__
    wanted |= {f"fastnorm.dask.{name}" for name in dask_all}
    assert not wanted - short, f"public names without an API page: {sorted(wanted - short)}"


# -- the Sphinx build ---------------------------------------------------------------------


def _build_requirements() -> str | None:
    for module, package in (("sphinx", "sphinx"), ("numpydoc", "numpydoc"),
                            ("pydata_sphinx_theme", "pydata-sphinx-theme"),
                            ("myst_parser", "myst-parser")):
        if importlib.util.find_spec(module) is None:
            return f"the docs build needs {package} (pip install -e '.[docs]')"
    if importlib.util.find_spec("dask") is None:
        return "the docs build needs dask for fastnorm.dask's API pages (pip install -e '.[dask]')"
    return None


def test_sphinx_build_without_warnings(tmp_path):
    """``python -m sphinx -W --keep-going -b html docs OUT`` on a copy of ``docs/`` (so that
    the API stubs autosummary writes stay out of the checkout)."""
    reason = _build_requirements()
    if reason:
        pytest.skip(reason)
    source = tmp_path / "docs"
    shutil.copytree(DOCS, source, ignore=shutil.ignore_patterns("_build", "generated"))
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", "-q",
               str(source), str(tmp_path / "html")]
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=BUILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        pytest.fail(f"the docs build did not finish in {BUILD_TIMEOUT} s:\n{log[-4000:]}")
    assert proc.returncode == 0, f"the docs build failed (warnings are errors):\n{log[-6000:]}"
    assert (tmp_path / "html" / "index.html").exists()
    assert (tmp_path / "html" / "api" / "generated" / "fastnorm.batch_norm.html").exists()
