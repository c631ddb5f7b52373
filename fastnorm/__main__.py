"""``python -m fastnorm [bench] [options]``: fastnorm against its peers (:mod:`fastnorm.benchmark`).

The benchmark package, and through it torch, onnxruntime and matplotlib, are imported here only:
``import fastnorm`` stays free of them.
"""

from fastnorm.benchmark.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
