"""``python -m fastnorm [bench] [options]``: fastnorm against its peers (see :mod:`fastnorm._demo`).

The benchmark module, and through it torch, onnxruntime and matplotlib, are imported here only:
``import fastnorm`` stays free of them.
"""

from fastnorm._demo import main

if __name__ == "__main__":
    raise SystemExit(main())
