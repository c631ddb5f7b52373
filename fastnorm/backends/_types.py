"""Array types of the backend contract (:mod:`fastnorm.backends.numpy_ref`), for annotations."""

from __future__ import annotations

from typing import Any, TypeAlias

import numpy as np
from numpy.typing import NDArray

#: data: ``x``, ``dy``, outputs, shortcuts (float32 or float64 for the CPU kernels; the core
#: widens float16)
Floats: TypeAlias = NDArray[np.floating[Any]]
#: statistics, coefficients, parameter gradients: float64
F64: TypeAlias = NDArray[np.float64]
#: the kernels' epilogue argument ``(act, slope, res, dy)`` (:meth:`fastnorm._core.Epilogue.args`)
Epi: TypeAlias = tuple[int, float, "Floats | None", "Floats | None"]
#: the running statistics a small training call updates in place:
#: ``(running_mean, running_var, factor, bessel)``
Running: TypeAlias = tuple[NDArray[Any], NDArray[Any], float, float]
#: a value rounded to the data type (the compiled kernels' coefficients, in registers)
Scalar: TypeAlias = np.floating[Any]
