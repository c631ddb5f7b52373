"""Small builders of bad calls for the error tests: each returns a mutation of a kwargs dict."""

import numpy as np


def _read_only(a):
    a = np.array(a)
    a.setflags(write=False)
    return a


def _set(**changes):
    return lambda kw: kw.update(changes)


def _astype(name, dtype):
    return lambda kw: kw.update({name: kw[name].astype(dtype)})
