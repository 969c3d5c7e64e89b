"""The stand-in's cupyx (see tests/fakecupy/cupy): scatter_add, and scipy.special.erf."""
import numpy as _np

import cupy as _cupy


def scatter_add(a, slices, value):
    """a[slices] += value, adding repeated indices up (numpy.add.at), in place on device array a."""
    _cupy._refuse_host_arrays((slices, value), "cupyx.scatter_add")
    _np.add.at(a.view(_np.ndarray), _cupy._unwrap(slices), _cupy._unwrap(value))
