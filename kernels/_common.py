"""What the kernels share: numba's compile options, and the argument checks their wrappers run."""

import types

import numba
import numpy as np
from numba import njit

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

# Below this much work (elements touched, or multiply-adds for attention) a kernel runs on the
# calling thread. What a hand-off to numba's thread pool costs depends on its threading layer
# (measured on a 2-core VM, an empty prange loop): ~2 us with OpenMP, whose threads wait
# spinning for the next loop, and ~120 us with workqueue, whose threads sleep; on workqueue only
# the large kernels are worth splitting. scratchgpt.backend picks OpenMP where numba has it
# (tune_threads). benchmarks/kernels.py times both versions of each kernel.
PARALLEL_MIN_WORK = {"omp": 1 << 14, "workqueue": 1 << 22}


def parallel_min_work(thresholds=None):
    """The threshold of `thresholds` (default PARALLEL_MIN_WORK) for the threading layer numba
    is set to; a layer not named there (numba's "default", which it resolves only at the first
    parallel loop) gets workqueue's, the safe side."""
    thresholds = PARALLEL_MIN_WORK if thresholds is None else thresholds
    return thresholds.get(_threading_layer(), thresholds["workqueue"])


_layer = None


def _threading_layer():
    """The layer numba's pool runs on once it has started, else the one it is set to start."""
    global _layer
    if _layer is None:
        try:
            _layer = numba.threading_layer()
        except ValueError:                      # no parallel loop has run yet
            return numba.config.THREADING_LAYER
    return _layer


# "auto": pick by parallel_min_work(); "parallel" / "serial": always that version (for tests and
# benchmarks, which must run both).
PARALLEL = "auto"


class twins:
    """Decorator: compile one `prange` core twice, parallel and serial, and pick per call.

        @twins(options)
        def _gelu_forward(x, y):
            for i in prange(x.size): ...

        _gelu_forward(x, y, work=x.size)        # serial below min_work, parallel above

    The serial twin is the same Python code compiled with parallel=False (prange is then a
    plain range), so both compute the same thing (LLVM may round a few results differently in
    the last bit); only who runs the loop differs. It is a copy
    of the function under another name because numba's disk cache keys a kernel by its name,
    not by its options.
    """

    def __init__(self, options=KERNEL_OPTIONS, min_work=None):
        self.options, self.min_work = options, min_work

    def __call__(self, fn):
        serial = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial",
                                    fn.__defaults__, fn.__closure__)
        serial.__qualname__ = fn.__qualname__ + "_serial"
        return _Twins(njit(**dict(self.options, parallel=True))(fn),
                      njit(**dict(self.options, parallel=False))(serial), self.min_work)


class _Twins:
    def __init__(self, parallel, serial, min_work):
        self.parallel, self.serial, self.min_work = parallel, serial, min_work

    def __call__(self, *args, work):
        if PARALLEL == "auto":
            big = work >= parallel_min_work(self.min_work)
        else:
            big = PARALLEL == "parallel"
        return (self.parallel if big else self.serial)(*args)

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
