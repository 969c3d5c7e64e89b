"""A stand-in for CuPy, over NumPy, so that CI (no GPU) runs scratchgpt's CuPy code path.

For tests only: nothing in the package imports this. A test puts tests/fakecupy on PYTHONPATH
of a subprocess (see tests/test_cupy_standin.py), and `import cupy` there finds this module.

What it imitates, because scratchgpt's code depends on it:
- arrays whose type lives in the module "cupy" (backend.array_module, backend.to_numpy and
  kernels/cuda.py look at type(x).__module__), with .get() for the copy to the host;
- CuPy's refusals of implicit host <-> device mixing: an op between a device array and a host
  NumPy array, and `device[...] = host_array`, raise TypeError as CuPy does. (What it cannot
  catch: numpy.asarray(device_array) succeeds here, where CuPy raises.)
- reductions give 0-d device arrays (x.sum() is an array, not a NumPy scalar), as in CuPy;
- cupy.random.default_rng, whose bit_generator.state is a method (CuPy's), not a dict;
- cupy.cuda: is_available() True, streams (ptr 0) with stream capture that refuses host
  synchronisation while capturing, Device().synchronize(), memory pools with
  used_bytes/total_bytes, set_allocator, using_allocator, runtime.getDeviceProperties;
- cupyx.scatter_add and cupyx.scipy.special.erf.
With NUMBA_ENABLE_CUDASIM=1 the numba.cuda kernels run in numba's simulator: the hand-off
numba.cuda.as_cuda_array(cupy array) and cuda.external_stream, which the simulator lacks,
are added here, wrapping the array's memory without a copy.
"""
import builtins
import os
import sys
import types

import numpy as _np

__version__ = "0.0-standin"


class ndarray(_np.ndarray):
    """A NumPy array that says it is CuPy's (type(x).__module__ == "cupy")."""

    def get(self, stream=None, order="C", out=None):
        """The copy to the host: a plain NumPy array."""
        _refuse_while_capturing("a device-to-host copy")
        host = _np.array(self.view(_np.ndarray), order=order)
        if out is not None:
            out[...] = host
            return out
        return host

    def set(self, arr):
        self.view(_np.ndarray)[...] = arr

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        _refuse_host_arrays(inputs, f"numpy.{ufunc.__name__}")
        if out is not None:
            kwargs["out"] = tuple(_host_view(o) for o in out)
        result = getattr(ufunc, method)(*(_host_view(x) for x in inputs), **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _to_device(result)

    def __array_function__(self, func, types_, args, kwargs):
        _refuse_host_arrays((args, kwargs), f"numpy.{func.__name__}")
        return _to_device(func(*_unwrap(args), **_unwrap(kwargs)))

    def __setitem__(self, key, value):
        if type(value) is _np.ndarray and value.ndim > 0 or isinstance(value, (list, tuple)):
            raise TypeError(f"Unsupported type {type(value)}: copy host data to the device with "
                            "cupy.asarray first (the stand-in refuses as CuPy does)")
        self.view(_np.ndarray)[_host_view(key)] = _host_view(value)

    def __getitem__(self, key):
        return _to_device(self.view(_np.ndarray)[_unwrap(key)])

    def item(self, *args):
        _refuse_while_capturing("a device-to-host copy (item)")
        return self.view(_np.ndarray).item(*args)

    def __float__(self):
        _refuse_while_capturing("a device-to-host copy (float)")
        return float(self.view(_np.ndarray))

    def __int__(self):
        _refuse_while_capturing("a device-to-host copy (int)")
        return int(self.view(_np.ndarray))

    def __bool__(self):
        _refuse_while_capturing("a device-to-host copy (bool)")
        return bool(self.view(_np.ndarray))

    def __array__(self, dtype=None, copy=None):
        # NumPy calls this for numpy.asarray(x) only on non-ndarrays, so it rarely fires for a
        # subclass; where it does (e.g. numpy.array(x, dtype=...)) it refuses as CuPy does
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")


def _host_view(x):
    return x.view(_np.ndarray) if isinstance(x, ndarray) else x


def _unwrap(obj):
    if isinstance(obj, ndarray):
        return obj.view(_np.ndarray)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_unwrap(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _unwrap(v) for k, v in obj.items()}
    return obj


def _to_device(obj):
    """Results of NumPy calls as device arrays; NumPy scalars become 0-d arrays, as in CuPy."""
    if isinstance(obj, ndarray):
        return obj
    if isinstance(obj, _np.ndarray):
        return obj.view(ndarray)
    if isinstance(obj, _np.generic):
        return _np.asarray(obj).view(ndarray)
    if isinstance(obj, tuple):
        return tuple(_to_device(o) for o in obj)
    if isinstance(obj, list):
        return [_to_device(o) for o in obj]
    return obj


def _refuse_host_arrays(obj, what):
    if type(obj) is _np.ndarray and obj.ndim > 0:
        raise TypeError(f"{what}: Unsupported type {type(obj)} (a host NumPy array mixed with device "
                        "arrays; CuPy refuses this)")
    if isinstance(obj, (list, tuple)):
        for o in obj:
            _refuse_host_arrays(o, what)
    elif isinstance(obj, dict):
        for o in obj.values():
            _refuse_host_arrays(o, what)


# ---- the cupy namespace: NumPy's, with array results put on the "device" -----------------
_HOST_IN = {"asarray", "array", "ascontiguousarray", "asanyarray"}     # the host -> device copies


def _device_function(name, f):
    def call(*args, **kwargs):
        if name in _HOST_IN:
            if args and type(args[0]) is _np.ndarray:       # a copy, as a transfer to a GPU makes
                _refuse_while_capturing("a host-to-device copy")
                args = (args[0].copy(),) + args[1:]
        else:
            _refuse_host_arrays((args, kwargs), f"cupy.{name}")
        return _to_device(f(*_unwrap(args), **_unwrap(kwargs)))
    call.__name__ = name
    return call


class _Ufunc:
    """cupy.add and friends: callable, and with .at / .reduce / ... as CuPy's ufuncs have."""

    def __init__(self, name, ufunc):
        self.__name__, self._ufunc = name, ufunc
        self._call = _device_function(name, ufunc)

    def __call__(self, *args, **kwargs):
        return self._call(*args, **kwargs)

    def __getattr__(self, method):
        attr = getattr(self._ufunc, method)
        return _device_function(f"{self.__name__}.{method}", attr) if callable(attr) else attr


def __getattr__(name):
    attr = getattr(_np, name)                       # AttributeError for what NumPy lacks
    if isinstance(attr, _np.ufunc):
        attr = _Ufunc(name, attr)
    elif callable(attr) and not isinstance(attr, type) and not name.startswith("_"):
        attr = _device_function(name, attr)
    globals()[name] = attr
    return attr


def asnumpy(a, stream=None):
    return a.get() if isinstance(a, ndarray) else _np.asarray(a)


def get_array_module(*args):
    return builtins.__import__("cupy") if any(isinstance(a, ndarray) for a in args) else _np


# ---- cupy.random ---------------------------------------------------------------------------
class _BitGenerator:
    """CuPy's bit generators have a `state()` *method* (a device pointer), not NumPy's dict."""

    def __init__(self, seed):
        self._host = _np.random.PCG64(seed)

    def state(self):
        return id(self)


class Generator:
    def __init__(self, bit_generator):
        self.bit_generator = bit_generator
        self._rng = _np.random.Generator(bit_generator._host)

    def random(self, size=None, dtype=_np.float64, out=None):
        return _to_device(self._rng.random(size, dtype=dtype))

    def standard_normal(self, size=None, dtype=_np.float64, out=None):
        return _to_device(self._rng.standard_normal(size, dtype=dtype))

    def integers(self, low, high=None, size=None, dtype=_np.int64, endpoint=False):
        return _to_device(self._rng.integers(low, high, size, dtype=dtype, endpoint=endpoint))

    def uniform(self, low=0.0, high=1.0, size=None, dtype=_np.float64):
        return _to_device(self._rng.uniform(low, high, size).astype(dtype))


def _default_rng(seed=None):
    return Generator(_BitGenerator(seed))


random = types.SimpleNamespace(default_rng=_default_rng, Generator=Generator)


# ---- cupy.cuda -----------------------------------------------------------------------------
class _MemoryPool:
    def __init__(self):
        self.used = 0

    def malloc(self, size):
        return None

    def used_bytes(self):
        return self.used

    def total_bytes(self):
        return self.used

    def free_all_blocks(self):
        pass


_pool = _MemoryPool()


def get_default_memory_pool():
    return _pool


class _Stream:
    """CuPy's streams, enough for scratchgpt/cuda_graph.py: a context that makes the stream current,
    and stream capture. While a stream captures, the stand-in refuses what CUDA refuses then (a
    synchronising copy between host and device: get, float, item, asarray of a host array), so a
    test sees a synchronisation hidden in a recorded step. It cannot replay what it recorded (the
    NumPy work ran at once): Graph.launch raises NotImplementedError."""
    _current = []

    def __init__(self, null=False, non_blocking=False, ptr=0):
        self.ptr = ptr

    def synchronize(self):
        _refuse_while_capturing("a stream synchronisation")

    def __enter__(self):
        _Stream._current.append(self)
        return self

    def __exit__(self, *exc):
        _Stream._current.pop()

    def begin_capture(self, mode=None):
        global _capturing
        _capturing = True

    def end_capture(self):
        global _capturing
        _capturing = False
        return _Graph()


class _Graph:
    def launch(self, stream=None):
        raise NotImplementedError("the CuPy stand-in records a CUDA graph but cannot replay it")


_capturing = False


def _refuse_while_capturing(what):
    if _capturing:
        raise RuntimeError(f"cudaErrorStreamCaptureUnsupported: {what} is not permitted while a stream "
                           "is capturing (CuPy stand-in)")


def _current_stream():
    return _Stream._current[-1] if _Stream._current else _Stream()


class _UsingAllocator:
    def __init__(self, allocator=None):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


class _Device:
    def __init__(self, i=0):
        self.id = i

    def synchronize(self):
        pass


cuda = types.SimpleNamespace(
    is_available=lambda: True,
    get_current_stream=_current_stream,
    Stream=_Stream,
    MemoryPool=_MemoryPool,
    using_allocator=_UsingAllocator,
    Device=_Device,
    set_allocator=lambda f=None: None,
    runtime=types.SimpleNamespace(
        getDeviceCount=lambda: 1,
        getDeviceProperties=lambda i: {"name": b"CuPy stand-in (NumPy)", "totalGlobalMem": 0},
    ),
)


# ---- numba's CUDA simulator: the CuPy hand-off it lacks ------------------------------------
def _patch_numba_simulator():
    from numba import cuda as nbcuda
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    def as_cuda_array(obj, sync=True):
        return FakeCUDAArray(obj.view(_np.ndarray))          # the same memory: kernels write into it

    nbcuda.as_cuda_array = as_cuda_array
    nbcuda.external_stream = lambda ptr: 0


if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    _patch_numba_simulator()
    # the simulator's threads meet at every syncthreads; with Python's 5 ms switch interval each
    # meeting waits out time slices (tests/test_kernels_cuda.py measured 10x)
    sys.setswitchinterval(1e-4)
