"""Which array library owns an array: the one helper the reference ops need from the backend.

It lives apart from `scratchgpt.backend` so that the ops, which the backend chooses between,
import nothing that imports them back.
"""
import numpy


def array_module(x):
    """NumPy or CuPy, whichever owns the array `x` (NumPy for plain Python values)."""
    if type(x).__module__.startswith("cupy"):
        import cupy
        return cupy
    return numpy


def to_numpy(x):
    """A host (NumPy) copy of an array from either backend; NumPy arrays pass through."""
    if type(x).__module__.startswith("cupy"):
        return x.get()
    return numpy.asarray(x)
