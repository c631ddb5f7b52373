"""fastnorm's benchmark suite (pytest-benchmark); see README.md."""
