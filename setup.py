"""Build the Cython extension ``fastnorm.backends._kernels``.

OpenMP is used when the C compiler accepts ``-fopenmp`` (checked by compiling
and linking a tiny program); otherwise the extension is built serial and
``fastnorm.backends._kernels.OPENMP`` is ``False``.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

from setuptools import Extension, setup

OPENMP_PROBE = r"""
#include <omp.h>
int main(void) { int n = 0;
#pragma omp parallel reduction(+:n)
  n += 1;
  return omp_get_max_threads() > 0 ? 0 : 1; }
"""


def compiler_has_openmp() -> bool:
    """Return True if the C compiler compiles and links an OpenMP program."""
    if os.environ.get("FASTNORM_NO_OPENMP"):
        return False
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    cc = cc.split()[0]
    if shutil.which(cc) is None:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(OPENMP_PROBE)
        cmd = [cc, "-fopenmp", src, "-o", os.path.join(tmp, "probe")]
        try:
            result = subprocess.run(cmd, capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return False
        return result.returncode == 0


def make_extension() -> Extension:
    openmp = sys.platform != "win32" and compiler_has_openmp()
    compile_args = ["-O3"] if sys.platform != "win32" else ["/O2"]
    link_args = []
    if openmp:
        compile_args.append("-fopenmp")
        link_args.append("-fopenmp")
    return Extension(
        "fastnorm.backends._kernels",
        ["fastnorm/backends/_kernels.pyx"],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    ), openmp


def cythonized():
    from Cython.Build import cythonize

    ext, _ = make_extension()
    return cythonize(
        [ext],
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    )


setup(ext_modules=cythonized())
