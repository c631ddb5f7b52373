"""The collectives of :class:`fastnorm.SyncBatchNorm`: batch statistics of a batch spread over
the processes of an MPI communicator.

mpi4py is imported on first use, never by ``import fastnorm``.  Each synchronized call makes
one collective of float64 records, of O(C) values:

* **forward**: ``Allgather`` of ``[header, mean (C), m2 (C)]`` per rank, where the header holds
  the rank's value count, whether its call failed before the exchange, and what every rank
  must agree on (input dtype, parameter dtype, channel axis).  Every rank merges the records
  in rank order with Chan's formula (:func:`fastnorm._core.merge_moments`), so every rank
  holds bit-identical statistics.  A rank whose call failed sends its error text in place of
  statistics, and every rank raises.
* **backward**: ``Allreduce`` (sum) of ``[failures, sum_dy (C), sum_dy_xmu (C)]``.

Records have the same length on every rank only when the layers agree on ``num_features``:
a layer's first synchronized call checks that with one ``Allgather`` of one value per rank.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast, overload

import numpy as np

from . import _core

#: header slots of a forward record
_FAILED, _COUNT, _ERROR_BYTES, _INPUT_DTYPE, _PARAM_DTYPE, _AXIS = range(6)
_HEADER = 6
_AGREED = ((_INPUT_DTYPE, "the input dtype"), (_PARAM_DTYPE, "the parameter dtype"),
           (_AXIS, "the channel axis"))

_INSTALL = (
    "SyncBatchNorm needs mpi4py and an MPI library: pip install 'fastnorm-kernels[mpi]' "
    "installs both from wheels (MPICH, with mpiexec); on a cluster, install mpi4py built "
    "against the system's MPI (pip install mpi4py)"
)


def mpi() -> Any:
    """The ``mpi4py.MPI`` module, or an ``ImportError`` that says what to install."""
    try:
        from mpi4py import MPI
    except ImportError as error:
        raise ImportError(_INSTALL) from error
    return MPI


def communicator(comm: Any) -> Any:
    """``comm``, or ``MPI.COMM_WORLD`` for None; ``TypeError`` for anything that is not an
    intra-communicator (an object with mpi4py's ``Get_rank``, ``Get_size``, ``Allgather``
    and ``Allreduce``)."""
    if comm is None:
        return mpi().COMM_WORLD
    needed = ("Get_rank", "Get_size", "Allgather", "Allreduce")
    if not all(callable(getattr(comm, name, None)) for name in needed):
        raise TypeError(f"comm must be an mpi4py intra-communicator or None, got {type(comm).__name__}")
    if getattr(comm, "Is_inter", lambda: False)():
        raise TypeError("comm must be an intra-communicator, got an inter-communicator")
    return comm


_DTYPE_CODES = {"float16": 16.0, "bfloat16": 17.0, "float32": 32.0, "float64": 64.0}


def _dtype_code(dtype: np.dtype | None) -> float:
    return _DTYPE_CODES[np.dtype(dtype).newbyteorder("=").name]


def _dtype_name(code: float) -> str:
    return next(name for name, value in _DTYPE_CODES.items() if value == code)


class RankSync:
    """The synchronized statistics of one layer over one communicator.

    Parameters
    ----------
    comm : mpi4py intra-communicator
    num_features : int
        ``C``: every rank's layer must have the same.
    """

    def __init__(self, comm: Any, num_features: int) -> None:
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.num_features = num_features
        self._agreed = False

    def begin(self, parameter_dtype: np.dtype, axis: int) -> Exchange:
        """Start a synchronized training forward: a collective call on every rank.

        The layer's first call checks that every rank has the same ``num_features``
        (``ValueError`` on every rank otherwise).
        """
        if not self._agreed:
            mine = np.array([self.num_features], dtype=np.float64)
            every = np.empty(self.size, dtype=np.float64)
            self.comm.Allgather(mine, every)
            if np.any(every != every[0]):
                raise ValueError(
                    "SyncBatchNorm: the ranks' layers disagree on num_features: "
                    + _per_rank(every, lambda v: str(int(v)))
                )
            self._agreed = True
        return Exchange(self, parameter_dtype, axis)


def _per_rank(values: np.ndarray, show: Callable[[float], str]) -> str:
    return ", ".join(f"rank {r} has {show(v)}" for r, v in enumerate(values))


class Exchange:
    """One synchronized forward and the backward of its result (``Saved.reduce``)."""

    def __init__(self, sync: RankSync, parameter_dtype: np.dtype, axis: int) -> None:
        self.sync = sync
        self.done = False  # the forward's collective has been made
        c = sync.num_features
        self.record = np.zeros(_HEADER + 2 * c, dtype=np.float64)
        self.record[_PARAM_DTYPE] = _dtype_code(parameter_dtype)
        self.record[_AXIS] = axis
        self.input_dtype: np.dtype | None = None
        self.count = 0  # values per channel over every rank, once exchanged

    def _gather(self) -> np.ndarray:
        every = np.empty((self.sync.size, self.record.size), dtype=np.float64)
        self.done = True
        self.sync.comm.Allgather(self.record, every)
        return every

    def fail(self, error: BaseException) -> None:
        """Take part in the exchange for a call that failed on this rank before it, so that
        every other rank raises too; this rank then raises its own ``error``."""
        text = f"{type(error).__name__}: {error}".encode("utf-8", "replace")
        room = self.record[_HEADER:].view(np.uint8)
        if len(text) > room.size:
            text = text[: room.size - 3] + b"..."
        room[: len(text)] = np.frombuffer(text, dtype=np.uint8)
        self.record[_FAILED] = 1.0
        self.record[_ERROR_BYTES] = len(text)
        self._gather()

    def stats(self, count: int, mean: np.ndarray, m2: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
        """This rank's float64 ``(C,)`` moments of ``count`` values per channel to the whole
        batch's ``(count, mean, m2)``, identical on every rank; ``ValueError`` on every rank
        when any rank failed or the ranks disagree."""
        c = self.sync.num_features
        record = self.record
        record[_COUNT] = count
        record[_INPUT_DTYPE] = _dtype_code(self.input_dtype)
        record[_HEADER:_HEADER + c] = mean
        record[_HEADER + c:] = m2
        every = self._gather()
        failed = np.flatnonzero(every[:, _FAILED])
        if failed.size:
            first = every[failed[0]]
            text = first[_HEADER:].view(np.uint8)[: int(first[_ERROR_BYTES])].tobytes()
            ranks = ", ".join(str(r) for r in failed)
            raise ValueError(
                f"SyncBatchNorm: the call failed on rank {ranks} "
                f"({text.decode('utf-8', 'replace')}); no rank changed its state"
            )
        for slot, what in _AGREED:
            if np.any(every[:, slot] != every[0, slot]):
                show = (lambda v: str(int(v))) if slot == _AXIS else _dtype_name
                raise ValueError(
                    f"SyncBatchNorm: the ranks disagree on {what}: {_per_rank(every[:, slot], show)}"
                )
        merged, mean, m2 = _core.merge_moments(
            every[:, _COUNT], every[:, _HEADER:_HEADER + c], every[:, _HEADER + c:]
        )
        count = cast(int, merged)  # one count per rank: the merged count is an int
        self.count = count
        return count, mean, m2

    @overload
    def grads(self, sum_dy: None, sum_dy_xmu: None) -> None: ...
    @overload
    def grads(self, sum_dy: np.ndarray, sum_dy_xmu: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]: ...

    def grads(self, sum_dy: np.ndarray | None,
              sum_dy_xmu: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, int] | None:
        """The backward's sums over every rank: ``(sum_dy, sum_dy_xmu, count)`` with the sums
        ``(1, C)`` float64; ``None`` sums take part for a rank whose backward failed (it then
        raises its own error), and every other rank raises ``ValueError``."""
        c = self.sync.num_features
        record = np.zeros(1 + 2 * c, dtype=np.float64)
        if sum_dy is None:
            record[0] = 1.0
        else:
            assert sum_dy_xmu is not None  # both given, or both None
            record[1:1 + c] = sum_dy.reshape(c)
            record[1 + c:] = sum_dy_xmu.reshape(c)
        total = np.empty_like(record)
        self.sync.comm.Allreduce(record, total)
        if sum_dy is None:
            return None
        if total[0]:
            raise ValueError(
                f"SyncBatchNorm: the backward failed on {int(total[0])} other rank(s) (a dy "
                "that did not pass validation, or a forward that kept nothing); no rank changed "
                "its state"
            )
        return total[1:1 + c].reshape(1, c), total[1 + c:].reshape(1, c), self.count
