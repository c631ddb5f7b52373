"""Cold start: the first normalization of a fresh Python process, per backend.

Each round starts a new interpreter that imports NumPy, makes a float32 ``(32, 64, 28, 28)`` array
and then runs, timed inside the process::

    import fastnorm
    fastnorm.set_backend(B)
    fastnorm.batch_norm(x, None, None, training=True)

Implementations (one benchmark group, ``cold start``):

* ``cython``: the ahead-of-time compiled backend; Numba must not even be imported;
* ``numba-warm-cache``: Numba with its on-disk cache filled by an earlier (untimed) process;
* ``numba-cold-cache``: Numba with a fresh, empty ``NUMBA_CACHE_DIR`` every round (JIT compiles);
* ``python+numpy``: the interpreter, ``import numpy`` and the array alone, for reference.

pytest-benchmark times the whole subprocess (interpreter start to exit); ``extra_info`` holds the
medians of the in-process split (``numpy_s``: interpreter-side NumPy import and array,
``fastnorm_s``: the three statements above) and whether Numba was imported.  The target: the
``cython`` backend's ``fastnorm_s`` under 0.5 s, without importing Numba.

Rounds: ``FASTNORM_BENCH_COLD_ROUNDS`` (default 5; 3 for the cold Numba cache, whose rounds take
seconds).  Also a plain script: ``python bench/test_cold_start.py [--rounds N]`` prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHAPE = (32, 64, 28, 28)
TARGET_S = 0.5  # the cython backend's import + first call
IMPLS = ("python+numpy", "cython", "numba-warm-cache", "numba-cold-cache")

_PREFIX = f"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
x = np.random.default_rng(0).standard_normal({SHAPE!r}).astype(np.float32)
t1 = time.perf_counter()
"""
_FASTNORM = """
import fastnorm
fastnorm.set_backend({backend!r})
y = fastnorm.batch_norm(x, None, None, training=True)
t2 = time.perf_counter()
assert y.shape == x.shape and bool(np.isfinite(y).all())
"""
_SUFFIX = """
print(json.dumps({"numpy_s": t1 - t0, "fastnorm_s": t2 - t1,
                  "numba_imported": "numba" in sys.modules}))
"""


def script(impl: str) -> str:
    """The program a round of ``impl`` runs."""
    if impl == "python+numpy":
        return _PREFIX + "t2 = t1\n" + _SUFFIX
    backend = "cython" if impl == "cython" else "numba"
    return _PREFIX + _FASTNORM.format(backend=backend) + _SUFFIX


def environment(numba_cache: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "FASTNORM_BACKEND"}
    if numba_cache is not None:
        env["NUMBA_CACHE_DIR"] = numba_cache
    return env


def run_once(impl: str, numba_cache: str | None = None) -> dict:
    """One fresh process; returns its in-process split plus ``wall_s`` (the whole process)."""
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", script(impl)], cwd=REPO, env=environment(numba_cache),
                         capture_output=True, text=True, timeout=600, check=False)
    wall = time.perf_counter() - start
    if res.returncode != 0:
        raise RuntimeError(f"{impl}: the subprocess failed:\n{res.stderr}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out["wall_s"] = wall
    return out


def default_rounds(impl: str) -> int:
    text = os.environ.get("FASTNORM_BENCH_COLD_ROUNDS", "").strip()
    if text:
        return max(1, int(text))
    return 3 if impl == "numba-cold-cache" else 5


def available(impl: str) -> bool:
    import fastnorm

    return impl == "python+numpy" or ("cython" if impl == "cython" else "numba") in (
        fastnorm.available_backends()
    )


class Runner:
    """Rounds of one implementation, with the Numba cache each needs."""

    def __init__(self, impl: str, tmp: Path) -> None:
        self.impl = impl
        self.tmp = tmp
        self.results: list[dict] = []
        self.warm_cache = None
        if impl == "numba-warm-cache":
            self.warm_cache = str(tmp / "numba-warm")
            run_once(impl, self.warm_cache)  # fill the cache, untimed
        self._fresh = 0

    def cache(self) -> str | None:
        if self.impl == "numba-cold-cache":
            self._fresh += 1
            return str(self.tmp / f"numba-cold-{self._fresh}")  # a new, empty directory
        return self.warm_cache

    def __call__(self, cache: str | None = None) -> dict:
        result = run_once(self.impl, cache if cache is not None else self.cache())
        self.results.append(result)
        return result

    def summary(self) -> dict:
        def med(key):
            return statistics.median(r[key] for r in self.results)

        return {
            "wall_s": med("wall_s"),
            "numpy_s": med("numpy_s"),
            "fastnorm_s": med("fastnorm_s"),
            "numba_imported": any(r["numba_imported"] for r in self.results),
            "rounds": len(self.results),
        }


@pytest.mark.parametrize("impl", IMPLS)
def test_cold_start(benchmark, impl: str, tmp_path: Path) -> None:
    if not available(impl):
        pytest.skip(f"{impl}: backend not available")
    runner = Runner(impl, tmp_path)
    benchmark.group = f"cold start: import + first batch_norm {SHAPE}"
    if benchmark.enabled:
        benchmark.pedantic(
            runner, setup=lambda: ((runner.cache(),), {}), rounds=default_rounds(impl), iterations=1
        )
    else:
        benchmark.pedantic(runner)
    info = runner.summary()
    benchmark.extra_info.update(impl=impl, shape=list(SHAPE), **info)
    if impl == "cython":
        assert not info["numba_imported"], "the cython backend imported Numba"
        assert info["fastnorm_s"] < TARGET_S, (
            f"cython cold start {info['fastnorm_s']:.3f} s (median) >= {TARGET_S} s"
        )
    if impl.startswith("numba"):
        assert info["numba_imported"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="cold-start times per backend (fresh processes)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per implementation")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for impl in IMPLS:
            if not available(impl):
                continue
            runner = Runner(impl, Path(tmp))
            for _ in range(args.rounds or default_rounds(impl)):
                runner()
            rows.append((impl, runner.summary()))
    print(f"cold start: fresh process, import fastnorm + set_backend + batch_norm on {SHAPE} float32"
          " (medians)")
    print(f"{'implementation':18s} {'process s':>10s} {'numpy s':>8s} {'fastnorm s':>10s}  numba imported")
    for impl, s in rows:
        print(f"{impl:18s} {s['wall_s']:10.3f} {s['numpy_s']:8.3f} {s['fastnorm_s']:10.3f}  "
              f"{s['numba_imported']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
