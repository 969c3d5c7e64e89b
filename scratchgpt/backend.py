"""The backend switch: which array library does the math, and which version of the ops.

    import scratchgpt as sg
    sg.backend.use("numpy")     # the default; "cupy" runs the same code on a GPU
                                # (or set SCRATCHGPT_BACKEND=cupy before importing)

Code that *creates* arrays (model init, batches) uses `backend.xp`, the namespace chosen here.
The model calls its ops through `backend.ops`, chosen here too and nowhere else:

- `scratchgpt.ops`, the reference array code (the readable versions), or
- `scratchgpt.kernels.ops.FastOps`, the same functions with the same signatures and caches on
  fused kernels: numba CPU kernels for NumPy, numba.cuda kernels for CuPy where numba.cuda
  finds the GPU and its compiler.

SCRATCHGPT_KERNELS=numba (the default when numba imports) or numpy (the reference code
everywhere); `use_kernels(False)` switches at run time (the change applies from the next
forward pass: a backward uses the version its forward used).

Threads and memory. The first time the CPU kernels are chosen, `tune_threads()` runs: numba's
OpenMP threading layer with a short spin, MKL on the same OpenMP threads, and a short spin for
OpenBLAS's idle workers; and `tune_memory()`: freed arrays' memory stays in the process for the
next step's. They change process-wide settings, so SCRATCHGPT_TUNE_THREADS=0 and
SCRATCHGPT_TUNE_MEMORY=0 turn them off; a variable you set yourself (NUMBA_THREADING_LAYER,
GOMP_SPINCOUNT, MKL_THREADING_LAYER, OPENBLAS_THREAD_TIMEOUT) always wins.
"""
import contextlib
import os
import warnings

import numpy

from scratchgpt import ops as reference_ops
from scratchgpt.arrays import array_module, to_numpy  # noqa: F401  (re-exported)

xp = numpy                      # the active array namespace
name = "numpy"
DTYPES = {"float32": numpy.float32, "float64": numpy.float64}
_kernels_on = os.environ.get("SCRATCHGPT_KERNELS", "numba").lower()
if _kernels_on not in ("numba", "numpy"):
    raise ValueError(f"SCRATCHGPT_KERNELS={_kernels_on!r}: use 'numba' or 'numpy'")
_kernels_on = _kernels_on == "numba"


def use(backend_name):
    """Select the array library: "numpy" or "cupy". Returns the namespace."""
    global xp, name
    if backend_name == "numpy":
        xp, name = numpy, "numpy"
    elif backend_name == "cupy":
        xp, name = _import_cupy(), "cupy"
    else:
        raise ValueError(f"unknown backend {backend_name!r}: use 'numpy' or 'cupy'")
    globals().pop("ops", None)                  # chosen again on next use
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


# ---- the op switch: the one place that chooses reference or fast ops ----------------------
def use_kernels(enabled):
    """Turn the fused kernels on or off at run time (tests compare both paths)."""
    global _kernels_on
    _kernels_on = bool(enabled)
    globals().pop("ops", None)


def _select_ops():
    """scratchgpt.ops, or FastOps over the kernels for the active backend where they run."""
    if not _kernels_on:
        return reference_ops
    try:
        from scratchgpt.kernels.ops import FastOps
        if name == "cupy":
            from scratchgpt.kernels import cuda
            if cuda.available():
                return FastOps(cuda)
            _warn_once(f"the numba.cuda kernels cannot run here ({cuda.why_unavailable}); CuPy arrays "
                       "take the reference array code (SCRATCHGPT_KERNELS=numpy chooses it without this warning)")
            return reference_ops
        from scratchgpt import kernels
    except ImportError:          # numba missing: the reference code
        return reference_ops
    tune_threads()
    tune_memory()
    return FastOps(kernels)


# ---- forward passes that no backward follows ------------------------------------------------
class InferenceOps:
    """The active op set for forward passes only (see inference()): every `*_forward` returns
    its output and None for the cache, so nothing a backward would need is kept; an op set that
    has a cheaper `*_inference` version (the fast ops: attention without storing its weights,
    cross-entropy without its gradient) runs that instead."""

    def __init__(self, ops):
        self.ops = ops

    def __repr__(self):
        return f"InferenceOps({self.ops!r})"

    def __getattr__(self, attr):
        fn = getattr(self.ops, attr)
        if not attr.endswith("_forward") or attr == "cached_attention_forward":   # (it keeps no cache)
            return fn
        cheap = getattr(self.ops, attr[:-len("_forward")] + "_inference", None)
        if cheap is not None:
            return lambda *args, **kw: (cheap(*args, **kw), None)
        return lambda *args, **kw: (fn(*args, **kw)[0], None)


@contextlib.contextmanager
def inference():
    """Forward passes inside keep no caches, as under torch.no_grad(): for evaluation and
    sampling, where no backward follows. A layer's activations are freed as soon as the next
    layer has used them, and ops skip work only a backward needs. A model's backward() after
    such a forward raises. Process-wide, like the op switch itself.

        with backend.inference():
            loss = model.loss(x, y)
    """
    outer = globals()["ops"] if "ops" in globals() else __getattr__("ops")
    if isinstance(outer, InferenceOps):               # nested: already on
        yield
        return
    globals()["ops"] = InferenceOps(outer)
    try:
        yield
    finally:
        globals()["ops"] = outer


_warned = set()


def _warn_once(message):
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def __getattr__(attr):
    """`backend.ops` is chosen on first use (and again after use() or use_kernels())."""
    if attr == "ops":
        globals()["ops"] = chosen = _select_ops()
        return chosen
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


# ---- threads ---------------------------------------------------------------------------------
_tuned = False


def tune_threads():
    """Thread settings that keep numba's and the BLAS's pools from fighting over the cores.

    - numba's OpenMP threading layer where it loads (workqueue otherwise): a hand-off to its
      threads costs ~2 us against workqueue's ~120 us (an empty parallel loop, 2-core VM), so
      even a tiny model's kernels can use both cores (kernels/_common.PARALLEL_MIN_WORK).
    - Its idle threads spin 20,000 rounds (GOMP_SPINCOUNT; libgomp's default is 300,000) before
      they sleep: long enough to catch the next kernel across the Python between two ops (KV-cache
      generation, tiny model, 2 threads: 916 tok/s at 2,000 rounds, 1,718 at 20,000, 1,401 on
      workqueue), short enough to leave the cores to NumPy's OpenBLAS threads between kernels (at
      the default spin they fought: tiny model's forward at 0.51x torch's speed against 0.85x).
    - MKL (kernels/blas.py, when installed) on the same GNU OpenMP threads as numba
      (MKL_THREADING_LAYER=GNU): one pool for products and kernels, nothing to fight.
    - OpenBLAS's idle workers spin briefly (see _quiet_openblas).

    Runs once, the first time the CPU kernels are chosen; SCRATCHGPT_TUNE_THREADS=0 turns it
    off, and any of these variables you set yourself wins.
    """
    global _tuned
    if _tuned or os.environ.get("SCRATCHGPT_TUNE_THREADS", "1") == "0":
        return
    _tuned = True
    if "NUMBA_THREADING_LAYER" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", "20000")       # read when libgomp loads, just below
        layer = "omp" if _numba_has_openmp() else "workqueue"
        os.environ["NUMBA_THREADING_LAYER"] = layer
        import numba
        numba.config.THREADING_LAYER = layer          # numba read the variable at its import
        if layer == "omp":
            os.environ.setdefault("MKL_THREADING_LAYER", "GNU")   # read when MKL loads
    _quiet_openblas()


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3      # mallopt's parameters (glibc's malloc.h)


def tune_memory(mmap_threshold=32 << 20, trim_threshold=2**31 - 1):
    """Keep freed arrays' memory in the process for the next ones (glibc's malloc on Linux).

    A forward pass allocates the same activations every step. By default glibc's malloc maps
    blocks above its threshold (128 KiB at first, raised as big blocks are freed) straight from
    the kernel, and hands a heap's free top back to the kernel; either way the next step's
    arrays are fresh pages, faulted in one 4 KiB page at a time. Measured (small model,
    forward under inference(), 2 threads): runs with ~10,700 page faults per forward (454 ms)
    alternated with runs with none (389 ms), as malloc's thresholds moved. Fixed thresholds
    (blocks up to 32 MiB, glibc's largest, from the heap; its top never trimmed) keep every
    array of a small model's step in reused memory. Arrays above 32 MiB are still mapped afresh.
    Runs once with the CPU kernels; SCRATCHGPT_TUNE_MEMORY=0 turns it off.
    """
    global _memory_tuned
    if _memory_tuned or os.environ.get("SCRATCHGPT_TUNE_MEMORY", "1") == "0":
        return
    _memory_tuned = True
    import ctypes
    try:
        mallopt = ctypes.CDLL(None).mallopt          # glibc; not on macOS or musl builds
    except (OSError, AttributeError):
        return
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
    mallopt(_M_TRIM_THRESHOLD, trim_threshold)


_memory_tuned = False


def _numba_has_openmp():
    """Whether numba's OpenMP threading layer loads here (it needs the GNU OpenMP runtime)."""
    try:
        from numba.np.ufunc import omppool  # noqa: F401
    except ImportError:
        return False
    return True


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
    """OpenBLAS's idle workers spin 2^20 cycles (~0.4 ms) after a product instead of 2^28 (~0.1 s),
    so they do not take a core from the numba kernel that follows a linear layer. The worker
    pool is restarted so that it takes the setting even though NumPy was imported first."""
    if "OPENBLAS_THREAD_TIMEOUT" in os.environ:
        return
    lib = openblas_library()
    if lib is None or not all(hasattr(lib, f) for f in ("openblas_read_env", "blas_thread_shutdown_")):
        return
    os.environ["OPENBLAS_THREAD_TIMEOUT"] = str(timeout)
    lib.openblas_read_env()          # re-read the environment into OpenBLAS's settings
    lib.blas_thread_shutdown_()      # the workers restart, with the new timeout, on the next product


if os.environ.get("SCRATCHGPT_BACKEND"):
    use(os.environ["SCRATCHGPT_BACKEND"])
