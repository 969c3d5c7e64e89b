"""What the kernels share: numba's compile options, and the argument checks their wrappers run."""

import numpy as np

# Options of every @njit core here:
#   parallel=True       `prange` loops run on numba's thread pool (NUMBA_NUM_THREADS threads)
#   cache=True          machine code is saved on disk and reused by later processes
#   fastmath            only "reassoc" (a sum may be added up in another order, which lets it
#                       use SIMD registers: several partial sums, added at the end) and
#                       "contract" (a*b + c may become one fused multiply-add, rounded once).
#                       Results move by a few ulp at most; nothing assumes away NaN or inf.
#   error_model=numpy   x / 0 gives inf or nan as in NumPy instead of raising, so a division
#                       in a loop needs no check and the loop can vectorize
KERNEL_OPTIONS = dict(parallel=True, cache=True, fastmath={"reassoc"}, error_model="numpy")

FLOAT_DTYPES = (np.float32, np.float64)


def as_float_array(a, name, ndim=None):
    """Return `a` as a C-contiguous float32/float64 array, or raise with what was wrong."""
    a = np.ascontiguousarray(a)
    if a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    return a


def check_same(a, b, name_a, name_b):
    """Raise unless `a` and `b` have the same shape and dtype."""
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has shape {a.shape} but {name_b} has shape {b.shape}")
    if a.dtype != b.dtype:
        raise TypeError(f"{name_a} is {a.dtype} but {name_b} is {b.dtype}")


def output_array(out, like):
    """`out` if given (checked: same shape and dtype as `like`, C-contiguous), else a new array."""
    if out is None:
        return np.empty_like(like)
    if not isinstance(out, np.ndarray) or out.shape != like.shape or out.dtype != like.dtype:
        raise ValueError(f"out must be a {like.dtype} array of shape {like.shape}, got "
                         f"{getattr(out, 'dtype', type(out).__name__)} {getattr(out, 'shape', '')}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be a writeable C-contiguous array")
    return out
