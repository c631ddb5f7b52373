"""Build the Cython extension ``fastnorm.backends._kernels`` (the ``cython`` backend).

* OpenMP is used when the C compiler compiles and links a tiny ``-fopenmp``
  program; otherwise the extension is built serial and
  ``fastnorm.backends._kernels.OPENMP`` is ``False`` (``FASTNORM_NO_OPENMP=1``
  forces that).
* Optimization is ``-O3`` (``/O2`` with MSVC), never ``-ffast-math``: the
  kernels rely on the compiler keeping the order of floating-point operations.
* Sources: ``_kernels.pyx`` includes one ``_kernels_*.pxi`` file per loop shape
  and declares the C helpers of the headers in ``fastnorm/backends/csrc/``.
* SIMD: on x86-64 with GCC or Clang the same ``_kernels.pyx`` is also compiled
  for the x86-64-v3 ISA level (AVX2, FMA, ``-march=x86-64-v3``) as the module
  ``_kernels_x86_64_v3``, and for x86-64-v4 (AVX-512) as ``_kernels_x86_64_v4``; the
  baseline ``_kernels`` runs anywhere.  At import,
  :mod:`fastnorm.backends.cython_cpu` loads the best one the running CPU
  supports, so wheels stay portable.  ``FASTNORM_CPU_VARIANTS``
  (comma-separated: ``baseline``, ``x86_64_v3``, ``x86_64_v4``; ``all``;
  default ``baseline,x86_64_v3,x86_64_v4``) chooses which are built; the baseline always
  is.  A level the compiler does not accept is skipped.
* The extensions compile in parallel (one job per CPU).  Each embeds a digest of
  those sources (``SOURCE_DIGEST``, :mod:`fastnorm.backends._sources`): a build
  older than the sources is not loaded.  In-place builds of variants not built
  this time are deleted.
"""

import glob
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE_DIR = os.path.join("fastnorm", "backends")
SOURCE = os.path.join(PACKAGE_DIR, "_kernels.pyx")
HEADER_DIR = os.path.join(PACKAGE_DIR, "csrc")
SHIM_DIR = os.path.join("build", "fastnorm_variants")

OPENMP_PROBE = r"""
#include <omp.h>
int main(void) { int n = 0;
#pragma omp parallel reduction(+:n)
  n += 1;
  return omp_get_max_threads() > 0 ? 0 : 1; }
"""
PLAIN_PROBE = "int main(void) { return 0; }\n"

# name -> extra compiler flags; the baseline first
X86_VARIANTS = {
    "baseline": [],
    "x86_64_v3": ["-march=x86-64-v3"],
    "x86_64_v4": ["-march=x86-64-v4"],
}
# Built unless FASTNORM_CPU_VARIANTS says otherwise.  x86-64-v3 is 1.2-1.6x faster than the
# baseline (SSE2) on most kernels.  x86-64-v4 measured within noise of v3 on the normalizations
# alone (geometric mean 0.98 over the benchmark matrix, AMD Zen 4), but its 8-wide float64
# vectors make the smooth activation epilogues (GELU, SiLU), evaluated in float64, 1.3-1.7x
# faster; it is built by default.
DEFAULT_VARIANTS = ["baseline", "x86_64_v3", "x86_64_v4"]


def _compiler() -> str | None:
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    cc = cc.split()[0]
    return cc if shutil.which(cc) is not None else None


def compiler_accepts(flags: list[str], source: str = PLAIN_PROBE) -> bool:
    """Return True if the C compiler compiles and links ``source`` with ``flags``."""
    cc = _compiler()
    if cc is None:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(source)
        cmd = [cc, *flags, src, "-o", os.path.join(tmp, "probe")]
        try:
            result = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
        except (OSError, subprocess.SubprocessError):
            return False
        return result.returncode == 0


def compiler_has_openmp() -> bool:
    """Return True if the C compiler compiles and links an OpenMP program."""
    if os.environ.get("FASTNORM_NO_OPENMP"):
        return False
    return compiler_accepts(["-fopenmp"], OPENMP_PROBE)


def wanted_variants() -> list[str]:
    """The SIMD variants to build (``FASTNORM_CPU_VARIANTS``, default all), baseline first."""
    if sys.platform == "win32" or platform.machine().lower() not in ("x86_64", "amd64"):
        return ["baseline"]
    if len(os.environ.get("ARCHFLAGS", "").split("-arch")) > 2:  # macOS universal build
        return ["baseline"]
    text = os.environ.get("FASTNORM_CPU_VARIANTS", "").strip().lower().replace("-", "_")
    if not text:
        names = DEFAULT_VARIANTS
    elif text == "all":
        names = list(X86_VARIANTS)
    else:
        names = [v.strip() for v in text.split(",")]
    unknown = [v for v in names if v not in X86_VARIANTS]
    if unknown:
        raise SystemExit(f"FASTNORM_CPU_VARIANTS: unknown variant(s) {unknown}; expected {list(X86_VARIANTS)}")
    chosen = ["baseline"]
    for name, flags in X86_VARIANTS.items():
        if name != "baseline" and name in names:
            if compiler_accepts(flags):
                chosen.append(name)
            else:
                print(f"fastnorm: the C compiler does not accept {flags}; skipping {name}")
    return chosen


def _shim(variant: str) -> str:
    """A ``.pyx`` for the variant's module that includes the one source."""
    if variant == "baseline":
        return SOURCE
    os.makedirs(SHIM_DIR, exist_ok=True)
    path = os.path.join(SHIM_DIR, f"_kernels_{variant}.pyx")
    text = (
        "# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False\n"
        f"# Generated by setup.py: the {variant} build of fastnorm/backends/_kernels.pyx\n"
        'include "_kernels.pyx"\n'
    )
    old = None
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
    if old != text:  # rewritten only when it changes, so that Cython does not rebuild it
        with open(path, "w") as f:
            f.write(text)
    return path


def _sources_module():
    """``fastnorm/backends/_sources.py``, loaded by path (fastnorm itself is not importable yet)."""
    spec = importlib.util.spec_from_file_location("_fastnorm_sources", os.path.join(HERE, PACKAGE_DIR, "_sources.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def source_digest() -> str:
    """The digest of the kernel sources compiled into every build (``SOURCE_DIGEST``)."""
    return _sources_module().source_digest(os.path.join(HERE, PACKAGE_DIR))


def remove_stale_variants(built: list[str]) -> None:
    """Delete in-place builds of variants not built now: they would be loaded with old code."""
    for name in X86_VARIANTS:
        if name != "baseline" and name not in built:
            for path in glob.glob(os.path.join(PACKAGE_DIR, f"_kernels_{name}.*")):
                if path.endswith((".so", ".pyd")):
                    os.remove(path)


def numpy_include() -> str:
    """NumPy's C headers (the small-input entry points use its C API; ``numpy`` is a build
    requirement in ``pyproject.toml``)."""
    import numpy

    return numpy.get_include()


def make_extensions() -> list[Extension]:
    msvc = sys.platform == "win32"
    openmp = not msvc and compiler_has_openmp()
    # -Werror=implicit-function-declaration: a C helper missing from the headers must not
    # build into a module that fails to import
    base = ["/O2"] if msvc else ["-O3", "-g0", "-Werror=implicit-function-declaration"]
    link = []
    if openmp:
        base.append("-fopenmp")
        link.append("-fopenmp")
    extensions = []
    variants = wanted_variants()
    remove_stale_variants(variants)
    digest = source_digest()
    for variant in variants:
        flags = base + X86_VARIANTS[variant]
        name = "_kernels" if variant == "baseline" else f"_kernels_{variant}"
        extensions.append(
            Extension(
                f"fastnorm.backends.{name}",
                [_shim(variant)],
                include_dirs=[HEADER_DIR, numpy_include()],
                depends=_sources_module().kernel_sources(PACKAGE_DIR),
                extra_compile_args=flags,
                extra_link_args=link,
                define_macros=[
                    ("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
                    ("FASTNORM_VARIANT", f'"{variant}"'),
                    ("FASTNORM_CFLAGS", '"' + " ".join(flags) + '"'),
                    ("FASTNORM_SOURCE_DIGEST", f'"{digest}"'),
                ],
            )
        )
    return extensions


def cythonized() -> list[Extension]:
    from Cython.Build import cythonize

    return cythonize(
        make_extensions(),
        include_path=[PACKAGE_DIR],
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    )


class ParallelBuildExt(build_ext):
    """Compile the variants side by side; a variant that fails to compile is skipped.

    The baseline extension failing is an error with ``FASTNORM_REQUIRE_EXTENSION=1``
    (as in CI); otherwise fastnorm installs without it (the ``cython`` backend is
    then unavailable, and ``fastnorm.build_info()`` says why).
    """

    def finalize_options(self) -> None:
        super().finalize_options()
        if not self.parallel:
            self.parallel = max(1, os.cpu_count() or 1)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # compiler and linker errors have no common base class
            baseline = ext.name == "fastnorm.backends._kernels"
            if baseline and os.environ.get("FASTNORM_REQUIRE_EXTENSION"):
                raise
            print(f"fastnorm: building {ext.name} failed ({exc}); installing without it", file=sys.stderr)


setup(ext_modules=cythonized(), cmdclass={"build_ext": ParallelBuildExt})
