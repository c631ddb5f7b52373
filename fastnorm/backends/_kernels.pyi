# The compiled kernels (_kernels.pyx and the _kernels_*.pxi it includes): the functions
# fastnorm.backends.cython_cpu calls.  The SIMD variants (_kernels_x86_64_v3, _kernels_x86_64_v4)
# are the same source built with other flags.  Data arrays (x, dy, out, dx, res, hsum,
# coefficients in the data type) are C-contiguous float32 or float64 (Cython's fused
# floating_t; one dtype per call); statistics, float64 coefficients and sums are float64.

from collections.abc import Callable
from threading import Lock
from typing import Any

from numpy.typing import NDArray

from ._types import F64, Epi, Floats, Running

OPENMP: bool
VARIANT: str
CFLAGS: str
SOURCE_DIGEST: str
COMPILER: str

def openmp_pause() -> bool: ...

# _kernels_runs.pxi
def stats_runs(x: Floats, nsplit: int, num_threads: int) -> tuple[F64, F64]: ...
def stats_planes(x: Floats, num_threads: int) -> tuple[F64, F64]: ...
def stats_short_runs(x: Floats, nsplit: int, num_threads: int) -> tuple[F64, F64]: ...
def apply_runs(
    x: Floats, hi: Floats, lo: Floats, scale: Floats, shift: Floats, out: Floats, nsplit: int,
    num_threads: int, stream: bool = False, epi: Epi | None = None,
) -> None: ...
def backward_reduce_runs(
    x: Floats, dy: Floats, mean: F64, nsplit: int, num_threads: int
) -> tuple[F64, F64]: ...
def backward_apply_runs(
    x: Floats, dy: Floats, hi: Floats, lo: Floats, rstd: Floats, k1: Floats, k2: Floats,
    k3: Floats, dx: Floats, nsplit: int, num_threads: int, stream: bool = False,
) -> None: ...

# _kernels_lanes.pxi
def stats_lanes(x: Floats, nsplit: int, num_threads: int) -> tuple[F64, F64]: ...
def apply_lanes(
    x: Floats, hi: Floats, scale: Floats, shift: Floats, out: Floats, num_threads: int,
    stream: bool = False, epi: Epi | None = None,
) -> None: ...
def backward_reduce_lanes(
    x: Floats, dy: Floats, mean: F64, nsplit: int, num_threads: int
) -> tuple[F64, F64]: ...
def backward_apply_lanes(
    x: Floats, dy: Floats, hi: Floats, rstd: Floats, k1: Floats, k2: Floats, k3: Floats,
    dx: Floats, num_threads: int, stream: bool = False,
) -> None: ...

# _kernels_rows.pxi
def rows_forward(
    x: Floats, w: Floats | None, b: Floats | None, eps: float, center: bool, out: Floats,
    ntask: int, num_threads: int, stream: bool = False, epi: Epi | None = None,
    res: Floats | None = None, hsum: Floats | None = None,
) -> tuple[F64, F64]: ...
def rows_apply(
    x: Floats, mean: F64, rstd: F64, w: Floats | None, b: Floats | None, out: Floats, ntask: int,
    num_threads: int, stream: bool = False, epi: Epi | None = None,
) -> None: ...
def rows_backward(
    x: Floats, dy: Floats, mean: F64, rstd: F64, w64: F64, w: Floats, center: bool, dx: Floats,
    ntask: int, num_threads: int, stream: bool = False, prefetch: bool = False,
    count: F64 | None = None,
) -> tuple[F64, F64]: ...

# _kernels_small.pxi
def rows_forward_small(
    x: Floats, w: Floats | None, b: Floats | None, eps: float, center: bool, out: Floats,
    epi: Epi | None = None, res: Floats | None = None, hsum: Floats | None = None,
) -> tuple[F64, F64]: ...
def channels_small(
    x: Floats, given_mean: F64 | None, given_var: F64 | None, w: F64 | None, b: F64 | None,
    eps: float, out: Floats, epi: Epi | None = None, running: Running | None = None,
) -> tuple[F64, F64, F64]: ...
class Plans:
    def __init__(
        self, compute: Callable[[Floats, int, int], tuple[int, int, bool, int]],
        empty: Callable[[Floats], Floats], settings: tuple[tuple[object, str], ...],
        pool: tuple[list[NDArray[Any]], Lock] | None, page: int, align: int,
    ) -> None: ...
    def clear(self) -> None: ...
    def __len__(self) -> int: ...

def channels_plain(
    plans: Plans | None, x: object, running_mean: object, running_var: object, weight: object,
    bias: object, training: object, momentum: object, eps: object, axis: object, limit: int,
) -> Floats | None: ...
def rows_plain(
    plans: Plans | None, x: object, normalized_shape: object, weight: object, bias: object,
    eps: object, center: bool, limit: int,
) -> Floats | None: ...
def channels_given(
    x: Floats, given_mean: F64, given_var: F64, w: F64 | None, b: F64 | None, eps: float,
    out: Floats, nsplit: int, num_threads: int, stream: bool = False, epi: Epi | None = None,
) -> tuple[F64, F64, F64]: ...
def running_update(
    running_mean: Floats, running_var: Floats, mean: F64, var: F64, factor: float, bessel: float
) -> None: ...

# _kernels_groups.pxi
def grouped_forward(
    x: Floats, G: int, S: int, w: F64, b: Floats, eps: float, out: Floats, ntask: int,
    num_threads: int, stream: bool = False, prefetch: bool = False, epi: Epi | None = None,
) -> tuple[F64, F64]: ...
def grouped_backward(
    x: Floats, dy: Floats, mean: F64, rstd: F64, G: int, S: int, w64: F64, dx: Floats, ntask: int,
    num_threads: int, stream: bool = False, prefetch: bool = False,
) -> tuple[F64, F64]: ...
def samples_forward(
    x: Floats, G: int, w: F64, b: Floats, eps: float, out: Floats, num_threads: int,
    stream: bool = False, epi: Epi | None = None,
) -> tuple[F64, F64]: ...
def samples_backward(
    x: Floats, dy: Floats, mean: F64, rstd: F64, K: int, w: F64, center: bool, dx: Floats,
    num_threads: int, stream: bool = False, split: bool = False,
) -> tuple[F64, F64]: ...
