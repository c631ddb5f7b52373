"""``python -m fastnorm [bench]``: the benchmark demonstration (see :mod:`fastnorm._demo`)."""

from fastnorm._demo import main

if __name__ == "__main__":
    raise SystemExit(main())
