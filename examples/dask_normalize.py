"""Normalize an array larger than memory with fastnorm.dask, and stream its statistics.

    pip install -e ".[dask]"
    python examples/dask_normalize.py [--gb 1] [--dir /tmp]

Writes a channels-last float32 stack of tiles ``(N, 256, 256, 8)`` to a ``.npy`` file, then:

1. streams per-channel statistics over the file a chunk at a time with ``fastnorm.moments``
   and ``Moments.merge`` (what a data loader does in one pass over a dataset);
2. normalizes the whole file with ``fastnorm.dask.batch_norm`` in training mode, getting the
   new running statistics with the output, and writes the result to another ``.npy`` file;
3. checks that both agree and that the output has zero mean and unit variance per channel.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import dask
import dask.array as da
import numpy as np

import fastnorm
import fastnorm.dask

TILE = (256, 256, 8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--dir", default=os.environ.get("TMPDIR", "/tmp"))
    args = parser.parse_args()
    n = max(8, int(args.gb * 1e9 // (np.prod(TILE) * 4)))
    src, dst = Path(args.dir) / "fastnorm_tiles.npy", Path(args.dir) / "fastnorm_tiles_normalized.npy"

    # a stack of tiles with channel offsets (sensor-like data far from zero), written in pieces
    tiles = np.lib.format.open_memmap(src, mode="w+", dtype=np.float32, shape=(n, *TILE))
    rng = np.random.default_rng(0)
    offsets = np.linspace(100.0, 5000.0, TILE[-1])
    for start in range(0, n, 16):
        stop = min(n, start + 16)
        tiles[start:stop] = offsets + rng.standard_normal((stop - start, *TILE))
    tiles.flush()
    del tiles

    # 1. streaming statistics, one chunk in memory at a time
    tiles = np.load(src, mmap_mode="r")
    total = None
    for start in range(0, n, 32):
        part = fastnorm.moments(tiles[start:start + 32], axis=-1)
        total = part if total is None else total.merge(part)
    print(f"{n} tiles ({n * np.prod(TILE) * 4 / 1e9:.2f} GB): mean per channel {np.round(total.mean, 3)}")

    # 2. Dask: statistics as a tree reduction, then a second pass normalizing block by block
    x = da.from_array(tiles, chunks=(32, *TILE))
    running_mean, running_var = np.zeros(TILE[-1], np.float32), np.ones(TILE[-1], np.float32)
    y, new_mean, new_var = fastnorm.dask.batch_norm(
        x, running_mean, running_var, training=True, momentum=1.0, axis=-1
    )
    out = np.lib.format.open_memmap(dst, mode="w+", dtype=np.float32, shape=x.shape)
    stored = da.store(y, out, lock=False, compute=False)
    _, new_mean, new_var = dask.compute(stored, new_mean, new_var)
    out.flush()

    # 3. the two agree, and the output is standardized
    unbiased = total.var(ddof=1)
    print(f"running mean == streamed mean: {np.allclose(new_mean, total.mean, rtol=1e-6)}, "
          f"running var == streamed unbiased var: {np.allclose(new_var, unbiased, rtol=1e-5)}")
    check = fastnorm.moments(np.load(dst, mmap_mode="r")[: min(n, 64)], axis=-1)
    print(f"output of the first tiles: mean {np.abs(check.mean).max():.1e} at most, "
          f"std {check.std().min():.4f} to {check.std().max():.4f}")
    src.unlink()
    dst.unlink()


if __name__ == "__main__":
    main()
