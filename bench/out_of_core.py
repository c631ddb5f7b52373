"""Out-of-core BatchNorm with Dask: an on-disk array several times larger than the memory each
run may use, normalized chunk by chunk and written back to disk.

    python bench/out_of_core.py [--gb 4] [--chunk-mb 64] [--limit-gb 1] [--dir DIR]

The input is a float32 ``.npy`` file of shape ``(N, 64, 56, 56)`` (NCHW) at offset 1e4 with
std 0.1, read in chunks of about ``--chunk-mb`` along ``N`` with ``os.pread`` (no memory map, so
resident memory counts only what the run holds) and written to another ``.npy`` file with
``os.pwrite``.  Each method runs in a fresh process on Dask's threaded scheduler, with the page
cache of both files dropped first (``posix_fadvise``):

* ``copy``: read and write every chunk, the disk's (or the page cache's) bandwidth;
* ``fastnorm``: ``fastnorm.dask.batch_norm(x, training=True, weight, bias, eps=0)``;
* ``dask``: the expression users write, ``(x - x.mean(axes)) / x.std(axes) * w + b``.

Each run's private memory is limited to ``--limit-gb`` (``RLIMIT_DATA``): a run that needs more
fails, and the table says so; ``NAME-unlimited`` runs a method without the limit.  ``--warm``
reads the input into the page cache first, so that the figures are compute-bound.  Reported: wall time, throughput (input GB/s), the fraction of
the copy's throughput, peak resident memory, and the largest error of a sample of output
chunks against float64 statistics of the whole file (two passes in NumPy).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

C, H, W = 64, 56, 56
SAMPLE = C * H * W * 4  # bytes per sample


class NpyFile:
    """A C-ordered float32 ``.npy`` file read and written in slabs along axis 0 with
    ``pread``/``pwrite`` (``dask.array.from_array`` source and ``dask.array.store`` target).
    ``mode``: ``"r"`` read, ``"a"`` read and write, ``"w"`` create of ``shape``."""

    def __init__(self, path: Path, shape=None, mode: str = "r") -> None:
        if mode == "w":
            np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape).flush()
        with open(path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if major == 1
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(f)
            self.offset = f.tell()
        self.path, self.shape, self.dtype, self.ndim = path, shape, np.dtype(dtype), len(shape)
        self.fd = os.open(path, os.O_RDONLY if mode == "r" else os.O_RDWR)
        self.row = int(np.prod(shape[1:])) * self.dtype.itemsize

    def _rows(self, key) -> range:
        key = key if isinstance(key, tuple) else (key,)
        first = key[0]
        assert all(k == slice(None) or k == slice(0, n, None) for k, n in zip(key[1:], self.shape[1:]))
        return range(*first.indices(self.shape[0]))

    def __getitem__(self, key) -> np.ndarray:
        rows = self._rows(key)
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        view = memoryview(out).cast("B")
        done = 0
        while done < view.nbytes:
            done += os.preadv(self.fd, [view[done:]], self.offset + rows.start * self.row + done)
        return out

    def __setitem__(self, key, value) -> None:
        rows = self._rows(key)
        data = memoryview(np.ascontiguousarray(value, self.dtype)).cast("B")
        done = 0
        while done < data.nbytes:
            done += os.pwrite(self.fd, data[done:], self.offset + rows.start * self.row + done)

    def drop_cache(self) -> None:
        os.fsync(self.fd)
        os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)


def make_input(path: Path, n: int) -> None:
    if path.exists():  # written whole before (renamed into place when complete)
        return
    partial = path.with_suffix(".partial.npy")
    out = NpyFile(partial, (n, C, H, W), mode="w")
    rng = np.random.default_rng(0)
    for start in range(0, n, 64):
        stop = min(n, start + 64)
        out[start:stop] = (1e4 + 0.1 * rng.standard_normal((stop - start, C, H, W))).astype(np.float32)
    out.drop_cache()
    partial.rename(path)


def make_output(path: Path, n: int, rows: int) -> None:
    """The output file, written through once: writes into a file's holes would also time
    the file system's block allocation, which the first method run would pay alone."""
    if path.exists():
        return
    partial = path.with_suffix(".partial.npy")
    out = NpyFile(partial, (n, C, H, W), mode="w")
    zeros = np.zeros((rows, C, H, W), np.float32)
    for start in range(0, n, rows):
        out[start:start + rows] = zeros[: min(rows, n - start)]
    out.drop_cache()
    partial.rename(path)


def exact_stats(src: NpyFile, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel float64 mean and variance of the whole file, two passes in NumPy."""
    total = np.zeros(C)
    for s in range(0, src.shape[0], rows):
        total += src[s:s + rows].astype(np.float64).sum(axis=(0, 2, 3))
    count = src.shape[0] * H * W
    mean = total / count
    m2 = np.zeros(C)
    for s in range(0, src.shape[0], rows):
        m2 += ((src[s:s + rows].astype(np.float64) - mean[:, None, None]) ** 2).sum(axis=(0, 2, 3))
    return mean, m2 / count


def run(method: str, src_path: Path, dst_path: Path, rows: int, limit_gb: float, threads: int,
        warm: bool) -> dict:
    """One method in this process; returns its figures."""
    if not method.endswith("-unlimited"):
        resource.setrlimit(resource.RLIMIT_DATA, (int(limit_gb * 2**30),) * 2)
    import dask
    import dask.array as da

    import fastnorm
    import fastnorm.dask as fd

    fastnorm.set_num_threads(1)  # Dask's threads run the blocks in parallel
    src, dst = NpyFile(src_path), NpyFile(dst_path, mode="a")
    if warm:  # the input in the page cache: memory bandwidth instead of the disk's
        for s in range(0, src.shape[0], rows):
            src[s:s + rows]
    else:
        src.drop_cache()
    dst.drop_cache()
    x = da.from_array(src, chunks=(rows, C, H, W), asarray=False, fancy=False)
    w = np.linspace(0.5, 2.0, C).astype(np.float32)
    b = np.linspace(-1.0, 1.0, C).astype(np.float32)
    if method == "copy":
        y = x
    elif method.startswith("fastnorm"):
        y = fd.batch_norm(x, None, None, w, b, training=True, eps=0.0)
    else:
        axes = (0, 2, 3)
        y = (x - x.mean(axis=axes, keepdims=True)) / x.std(axis=axes, keepdims=True) \
            * w[:, None, None] + b[:, None, None]
    t0 = time.perf_counter()
    try:
        with dask.config.set(scheduler="threads", num_workers=threads):
            da.store(y, dst, lock=False)
        dst.drop_cache()  # written to the disk: part of the time
        failed = None
    except MemoryError as error:
        failed = f"MemoryError {error}"
    elapsed = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"method": method, "seconds": elapsed, "peak_rss": peak, "failed": failed}


def check(dst_path: Path, src_path: Path, mean, var, rows: int, method: str) -> float:
    """Largest absolute error of three output chunks against float64 statistics."""
    src, dst = NpyFile(src_path), NpyFile(dst_path)
    w = np.linspace(0.5, 2.0, C)[:, None, None]
    b = np.linspace(-1.0, 1.0, C)[:, None, None]
    err = 0.0
    for s in (0, (src.shape[0] // 2 // rows) * rows, src.shape[0] - rows):
        x = src[s:s + rows].astype(np.float64)
        want = x if method == "copy" else (x - mean[:, None, None]) / np.sqrt(var[:, None, None]) * w + b
        err = max(err, float(np.max(np.abs(dst[s:s + rows] - want))))
    return err


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=4.0, help="input size (GB)")
    parser.add_argument("--chunk-mb", type=float, default=64.0)
    parser.add_argument("--limit-gb", type=float, default=1.0, help="private memory per run (GiB)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--dir", default="/tmp/fastnorm-out-of-core")
    parser.add_argument("--methods", default="copy,fastnorm,dask,dask-unlimited",
                        help="copy, fastnorm, dask; NAME-unlimited runs without the memory limit")
    parser.add_argument("--warm", action="store_true",
                        help="read the input into the page cache first (compute-bound figures)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="runs of each method, in turn; the table gives the fastest")
    parser.add_argument("--json", default=None)
    parser.add_argument("--run", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    rows = max(1, int(args.chunk_mb * 1e6 // SAMPLE))
    n = max(rows, int(args.gb * 1e9 // SAMPLE) // rows * rows)
    src_path, dst_path = folder / f"x_{n}.npy", folder / f"y_{n}.npy"
    if args.run:
        print(json.dumps(run(args.run, src_path, dst_path, rows, args.limit_gb, args.threads, args.warm)))
        return
    make_input(src_path, n)
    make_output(dst_path, n, rows)
    mean, var = exact_stats(NpyFile(src_path), rows)
    size = n * SAMPLE
    results = {}
    for _ in range(args.rounds):
        for method in args.methods.split(","):
            result = run_child(args, folder, method)
            if not result["failed"]:
                result["max_error"] = check(dst_path, src_path, mean, var, rows, method)
            best = results.get(method)
            if best is None or (not result["failed"] and (best["failed"] or result["seconds"] < best["seconds"])):
                if best is not None:
                    result["peak_rss"] = max(result["peak_rss"], best["peak_rss"])
                results[method] = result
            elif not result["failed"]:
                best["peak_rss"] = max(result["peak_rss"], best["peak_rss"])
    results = list(results.values())
    print_table(args, results, n, rows, size)
    if args.json:
        Path(args.json).write_text(json.dumps({"n": n, "rows": rows, "bytes": size, "results": results}, indent=1))


def run_child(args, folder: Path, method: str) -> dict:
    """One method in a fresh process (its own peak RSS and memory limit)."""
    command = [sys.executable, __file__, "--gb", str(args.gb), "--chunk-mb", str(args.chunk_mb),
               "--limit-gb", str(args.limit_gb), "--threads", str(args.threads), "--dir", str(folder),
               "--run", method] + (["--warm"] if args.warm else [])
    proc = subprocess.run(command, capture_output=True, text=True, check=False, timeout=3600)
    if proc.returncode:
        return {"method": method, "seconds": float("nan"), "peak_rss": float("nan"),
                "failed": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_table(args, results: list[dict], n: int, rows: int, size: int) -> None:
    copy = next((r for r in results if r["method"] == "copy" and not r["failed"]), None)
    naive = next((r for r in results if r["method"].startswith("dask") and not r["failed"]), None)
    print(f"BatchNorm out of core: float32 ({n}, {C}, {H}, {W}) = {size / 1e9:.2f} GB on disk, "
          f"chunks of {rows} samples ({rows * SAMPLE / 1e6:.0f} MB), {args.threads} Dask threads, "
          f"private memory limited to {args.limit_gb:g} GiB per run (but -unlimited), "
          f"{'input in the page cache' if args.warm else 'page cache dropped'}; "
          f"fastest of {args.rounds} runs per method, run in turn")
    head = f"{'method':<16} {'time':>8} {'GB/s':>6} {'of copy':>8} {'vs dask':>8} {'peak RSS':>9} {'max error':>10}"
    print(head)
    print("-" * len(head))
    for r in results:
        if r["failed"]:
            print(f"{r['method']:<16} failed: {r['failed']}")
            continue
        rate = size / r["seconds"] / 1e9
        of_copy = f"{copy['seconds'] / r['seconds']:.0%}" if copy else "-"
        vs = f"{naive['seconds'] / r['seconds']:.2f}x" if naive else "-"
        print(f"{r['method']:<16} {r['seconds']:>7.1f}s {rate:>6.2f} {of_copy:>8} {vs:>8} "
              f"{r['peak_rss'] / 2**20:>7.0f}MB {r['max_error']:>10.2e}")


if __name__ == "__main__":
    main()
