"""Finite-difference gradient checks in float64."""

import numpy as np

H = 1e-6


def central_differences(loss, arr, h=H):
    """d loss / d arr by central differences; ``loss()`` reads ``arr``, which is perturbed in
    place and restored."""
    grad = np.zeros(arr.shape, dtype=np.float64)
    for idx in np.ndindex(arr.shape):
        orig = arr[idx]
        arr[idx] = orig + h
        lp = loss()
        arr[idx] = orig - h
        lm = loss()
        arr[idx] = orig
        grad[idx] = (lp - lm) / (2 * h)
    return grad


def assert_fd_close(got, fd, name):
    assert got is not None, f"{name} is None"
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == fd.shape, (name, got.shape, fd.shape)
    scale = max(1.0, float(np.max(np.abs(fd))))
    np.testing.assert_allclose(got, fd, rtol=1e-5, atol=1e-6 * scale, err_msg=name)
