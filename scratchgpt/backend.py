"""The backend switch: which array library does the math, in which precision.

    import scratchgpt as sg
    sg.backend.use("numpy")     # the default; "cupy" runs the same code on a GPU
                                # (or set SCRATCHGPT_BACKEND=cupy before importing)

All math in `scratchgpt.ops` asks `array_module(x)` for the namespace of the arrays it
was given, so the ops never import NumPy or CuPy themselves; code that *creates* arrays
(model init, batches) uses `backend.xp`, the namespace chosen here.

The fused numba kernels are switched here too, in one place (`fused`):
SCRATCHGPT_KERNELS=numba (the default when numba imports) or numpy (the readable
reference code in the ops). NumPy arrays get the CPU kernels (`scratchgpt.kernels`),
CuPy arrays the GPU ones written with numba.cuda (`scratchgpt.kernels.cuda`) when
numba.cuda finds the GPU and its compiler, and the reference code otherwise.
"""
import os

import numpy

xp = numpy                      # the active array namespace
name = "numpy"
DTYPES = {"float32": numpy.float32, "float64": numpy.float64}


def use(backend_name):
    """Select the array library: "numpy" or "cupy". Returns the namespace."""
    global xp, name
    if backend_name == "numpy":
        xp, name = numpy, "numpy"
    elif backend_name == "cupy":
        xp, name = _import_cupy(), "cupy"
    else:
        raise ValueError(f"unknown backend {backend_name!r}: use 'numpy' or 'cupy'")
    return xp


def _import_cupy():
    try:
        import cupy
    except ImportError as e:
        raise RuntimeError(
            "the 'cupy' backend needs CuPy: pip install 'scratchgpt[gpu]' "
            "(cupy-cuda12x; for CUDA 13 use cupy-cuda13x)") from e
    if not cupy.cuda.is_available():
        raise RuntimeError("the 'cupy' backend needs a CUDA GPU, and CuPy sees none "
                           "(cupy.cuda.is_available() is False)")
    return cupy


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


def asarray(x, dtype=None):
    """Put `x` on the active backend (a host-to-device copy on CuPy)."""
    return xp.asarray(x, dtype=dtype)


def get_dtype(dtype):
    """'float32' / 'float64' (or the numpy dtype) -> numpy dtype object."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"unsupported dtype {dtype!r}: use 'float32' or 'float64'")
        return numpy.dtype(DTYPES[dtype])
    dt = numpy.dtype(dtype)
    if dt not in (numpy.float32, numpy.float64):
        raise ValueError(f"unsupported dtype {dt}: use float32 or float64")
    return dt


def rng(seed):
    """A seeded generator on the active backend (numpy.random.Generator / cupy's)."""
    return xp.random.default_rng(seed)


# ---- the kernel switch: read once, here ------------------------------------------------
def _load_kernels():
    choice = os.environ.get("SCRATCHGPT_KERNELS", "numba").lower()
    if choice not in ("numba", "numpy"):
        raise ValueError(f"SCRATCHGPT_KERNELS={choice!r}: use 'numba' or 'numpy'")
    if choice == "numpy":
        return None
    # numba's default OpenMP pool spins and fights OpenBLAS's threads for the 2 cores between
    # kernels (measured: 3 ms of kernels took 24 ms); the workqueue layer does not.
    user_choice = "NUMBA_THREADING_LAYER" in os.environ
    os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")
    try:
        import numba
        from scratchgpt import kernels
    except ImportError:          # numba missing: the reference code is used
        return None
    # numba reads the variable when it is first imported; if the user's script imported numba
    # before us, set its config directly (it takes effect at the first parallel launch).
    if not user_choice:
        numba.config.THREADING_LAYER = "workqueue"
    return kernels


_kernels = _load_kernels()


# ---- OpenBLAS's idle threads ---------------------------------------------------------------
def openblas_library():
    """NumPy's OpenBLAS as a ctypes library, or None (another BLAS, or not Linux)."""
    import ctypes
    try:
        paths = sorted({line.split()[-1] for line in open("/proc/self/maps") if "openblas" in line.lower()})
    except OSError:
        return None
    for path in paths:
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None


def _quiet_openblas(timeout=20):
    """After each matrix product, OpenBLAS's worker threads keep spinning for 2^28 cycles
    (~0.1 s) before they sleep. On 2 cores that takes a core from whatever runs next: the
    numba kernel after a linear layer, or another process. 2^20 cycles (~0.4 ms) still
    covers products that follow each other closely.

    Measured (tiny and small models, alternating in one process): training steps +1-9%,
    KV-cache generation +4-5% (2^4 cycles: generation -33%, each product then waits for its
    threads to wake). The worker pool is restarted so that it takes the new setting even when
    NumPy was imported before us. OPENBLAS_THREAD_TIMEOUT set by the user (4-30, a power of
    two of cycles) is left alone.
    """
    if "OPENBLAS_THREAD_TIMEOUT" in os.environ:
        return
    lib = openblas_library()
    if lib is None or not all(hasattr(lib, f) for f in ("openblas_read_env", "blas_thread_shutdown_")):
        return
    os.environ["OPENBLAS_THREAD_TIMEOUT"] = str(timeout)
    lib.openblas_read_env()          # re-read the environment into OpenBLAS's settings
    lib.blas_thread_shutdown_()      # the workers restart, with the new timeout, on the next product


_quiet_openblas()


def use_kernels(enabled):
    """Turn the numba kernels on or off at run time (tests compare both paths)."""
    global _kernels
    if enabled:
        from scratchgpt import kernels
        _kernels = kernels
    else:
        _kernels = None


def fused(x):
    """The fused kernels for array `x` while they are on, else None (the reference array code):
    the CPU kernels for a NumPy array, the numba.cuda kernels for a CuPy array."""
    if _kernels is None:
        return None
    if type(x).__module__.startswith("cupy"):
        return _cuda_kernels()
    if isinstance(x, numpy.ndarray):
        return _kernels
    return None


_cuda = None                    # scratchgpt.kernels.cuda once imported; False where it cannot run


def _cuda_kernels():
    """scratchgpt.kernels.cuda if numba.cuda works here (a GPU and its compiler), else None."""
    global _cuda
    if _cuda is None:
        try:
            from scratchgpt.kernels import cuda
            _cuda = cuda if cuda.available() else False
        except ImportError:
            _cuda = False
    return _cuda or None


if os.environ.get("SCRATCHGPT_BACKEND"):
    use(os.environ["SCRATCHGPT_BACKEND"])
