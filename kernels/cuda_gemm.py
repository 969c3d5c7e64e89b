"""Matrix products on the GPU through cuBLAS itself (ctypes), on CuPy's current stream.

    gemm(a, b, out=None, trans_a=False, trans_b=False, alpha=1.0, beta=0.0)
        -> out = alpha * op(a) @ op(b) + beta * out

a and b are C-contiguous CuPy arrays, 2-D or batched 3-D (a 2-D operand is shared by every batch
entry, as a weight is); op transposes the last two axes. The result is what `a @ b` gives.

Why not CuPy's own `a @ b`: the whole training step can be recorded once as a CUDA graph and
replayed (scratchgpt.cuda_graph), which removes the launch cost of its hundreds of small kernels.
CuPy refuses any cuBLAS call while a stream is being captured (its cublas.setStream raises
NotImplementedError: "calling cuBLAS API during stream capture is currently unsupported"),
although cuBLAS supports capture when it is given its workspace up front (cuBLAS docs, "CUDA
Graphs Support"). So this module keeps one cuBLAS handle of its own, with a workspace it owns,
and calls cublasGemmEx / cublasGemmStridedBatchedEx through ctypes from the libcublas CuPy has
already loaded. Outside capture it is used too, so a captured step and an eager one run the same
products.

Row-major arrays through a column-major library: a row-major (r, c) array is, to cuBLAS, the
column-major (c, r) matrix X^T. So C = op(A) op(B) is asked for as C^T = op(B)^T op(A)^T: cuBLAS
gets B first, then A, and writes C^T column-major, which is C row-major.

Precision (`set_precision`, from --precision): float64 always computes in float64. float32:
    fp32   full float32 products (CUBLAS_COMPUTE_32F)
    tf32   TF32 tensor cores: inputs rounded to a 10-bit mantissa by the hardware, float32 sums
    bf16   mixed precision: both inputs rounded to bfloat16 here (to_bf16: 8-bit mantissa, float32's
           exponent range, so no loss scaling is needed), multiplied on bf16 tensor cores with
           float32 sums, the result float32. Everything outside the products stays float32: the
           weights, their gradients and AdamW's state (the "master" copy), LayerNorm's and the
           softmax's statistics, the loss.
"""
import ctypes
import os

import numpy as np

from scratchgpt.arrays import array_module

# enums from cublas_api.h and library_types.h
_OP_N, _OP_T = 0, 1
_CUDA_R_32F, _CUDA_R_64F, _CUDA_R_16BF = 0, 1, 14
_COMPUTE_32F, _COMPUTE_32F_FAST_TF32, _COMPUTE_64F = 68, 77, 70
_GEMM_DEFAULT = -1
WORKSPACE_BYTES = 32 * 2 ** 20     # NVIDIA's suggestion for Hopper; the handle never allocates its own

_lib = None                        # the ctypes library, its handle, the workspace (per process, one GPU)
_handle = None
_workspace = None
_stream = None                     # the stream the handle is set to now
_precision = "fp32"


def set_precision(precision):
    """How float32 products compute: 'fp32', 'tf32' or 'bf16' (see the module's docstring)."""
    global _precision
    if precision not in ("fp32", "tf32", "bf16"):
        raise ValueError(f"unknown precision {precision!r}")
    _precision = precision


# ---------------------------------------------------------------- bfloat16
# bfloat16 is float32's top 16 bits. Rounding to nearest, ties to even, on the float32 bits u:
#     bf16 = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
# (adding just under half of the dropped part, plus one when the kept part is odd, carries into
# the kept bits exactly when the dropped part is over half, or half with an odd kept part).
# A NaN could carry into the sign bit that way, so NaN maps to bfloat16's NaN 0x7FC0 instead.

def to_bf16(a):
    """A float32 array's bfloat16 values, as a uint16 array of the same shape (their bits)."""
    xp = array_module(a)
    u = a.reshape(-1).view(xp.uint32)
    if xp is not np and _cuda_ready():                   # one pass, one kernel
        from . import cuda
        out = xp.empty(u.shape, dtype=xp.uint16)
        cuda._launch(cuda._to_bf16, cuda._grid_blocks(u.size, 256), 256, u, out)
        return out.reshape(a.shape)
    w = u.astype(xp.uint64)                              # the array code: the same bits
    r = ((w + 0x7FFF + ((w >> 16) & 1)) >> 16).astype(xp.uint16)
    return xp.where(xp.isnan(a.reshape(-1)), xp.uint16(0x7FC0), r).reshape(a.shape)


def from_bf16(bits):
    """bfloat16 bits (uint16) -> the float32 values they stand for (exact)."""
    xp = array_module(bits)
    return (bits.astype(xp.uint32) << 16).view(xp.float32)


def _cuda_ready():
    from . import cuda
    return cuda.cuda is not None and cuda.available()


def _find_libcublas():
    """The path of the libcublas CuPy loaded (read from /proc/self/maps), so that ours is the same."""
    import cupy
    cupy.cuda.device.get_cublas_handle()          # makes CuPy load libcublas if it has not yet
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split()[-1]
            if "libcublas.so" in os.path.basename(path) and "Lt" not in os.path.basename(path):
                return path
    return "libcublas.so"


def _setup():
    global _lib, _handle, _workspace
    import cupy
    lib = ctypes.CDLL(_find_libcublas())
    i, p, sz, ll = ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_longlong
    lib.cublasCreate_v2.argtypes = [ctypes.POINTER(p)]
    lib.cublasSetStream_v2.argtypes = [p, p]
    lib.cublasSetWorkspace_v2.argtypes = [p, p, sz]
    lib.cublasGemmEx.argtypes = [p, i, i, i, i, i, p, p, i, i, p, i, i, p, p, i, i, i, i]
    lib.cublasGemmStridedBatchedEx.argtypes = [p, i, i, i, i, i, p, p, i, i, ll, p, i, i, ll,
                                               p, p, i, i, ll, i, i, i]
    handle = p()
    _check(lib.cublasCreate_v2(ctypes.byref(handle)), "cublasCreate")
    workspace = cupy.empty(WORKSPACE_BYTES, dtype=cupy.uint8)
    _check(lib.cublasSetWorkspace_v2(handle, p(workspace.data.ptr), WORKSPACE_BYTES), "cublasSetWorkspace")
    _lib, _handle, _workspace = lib, handle, workspace


def _usable():
    """Whether cuBLAS could be loaded here (found once). Where not (the CPU's CuPy stand-in in the
    tests, a CuPy without the library), gemm computes the same result with CuPy's matmul."""
    global _lib, why_not
    if _lib is None:
        try:
            _setup()
        except Exception as e:
            _lib, why_not = False, f"{type(e).__name__}: {e}"
    return bool(_lib)


why_not = ""


def _check(status, what):
    if status != 0:
        raise RuntimeError(f"{what} failed with cuBLAS status {status}")


def _matrix(a, name):
    """(batch, rows, cols, batch stride) of a C-contiguous 2-D or 3-D array; batch 1 and stride 0 for 2-D."""
    if a.ndim not in (2, 3):
        raise ValueError(f"{name} must be 2-D or 3-D, got shape {tuple(a.shape)}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if a.ndim == 2:
        return 1, a.shape[0], a.shape[1], 0
    return a.shape[0], a.shape[1], a.shape[2], a.shape[1] * a.shape[2]


def gemm(a, b, out=None, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
    """out = alpha * op(a) @ op(b) + beta * out on the current CuPy stream (see the module's docstring).
    alpha folds a scale into the product (attention's 1 / sqrt(hd)) instead of a pass of its own."""
    global _stream
    import cupy
    if a.dtype != b.dtype or a.dtype not in (np.float32, np.float64):
        raise TypeError(f"gemm takes two float32 or two float64 arrays, got {a.dtype} and {b.dtype}")
    ba, ra, ca, sa = _matrix(a, "a")
    bb, rb, cb, sb = _matrix(b, "b")
    m, k = (ca, ra) if trans_a else (ra, ca)
    k2, n = (cb, rb) if trans_b else (rb, cb)
    if k != k2 or (ba != bb and 1 not in (ba, bb)):
        raise ValueError(f"gemm: shapes {tuple(a.shape)}{'^T' * trans_a} and {tuple(b.shape)}{'^T' * trans_b} do not multiply")
    batch = max(ba, bb)
    shape = (m, n) if a.ndim == b.ndim == 2 else (batch, m, n)
    if out is None:
        if beta != 0.0:
            raise ValueError("beta != 0 needs out")
        out = cupy.empty(shape, dtype=a.dtype)
    elif tuple(out.shape) != shape or out.dtype != a.dtype or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous {a.dtype} array of shape {shape}, got "
                         f"{out.dtype} {tuple(out.shape)}")
    bf16 = _precision == "bf16" and a.dtype == np.float32
    if not _usable():                              # the same result through CuPy's own products
        if bf16:                                   # bf16 inputs, float32 sums
            a, b = from_bf16(to_bf16(a)), from_bf16(to_bf16(b))
        opa, opb = (a.swapaxes(-1, -2) if trans_a else a), (b.swapaxes(-1, -2) if trans_b else b)
        product = cupy.matmul(opa, opb)
        if alpha != 1.0:
            product *= alpha
        if beta == 0.0:
            out[...] = product
        else:
            out *= beta
            out += product
        return out
    if m == 0 or n == 0:
        return out
    if k == 0:                                     # an empty sum: op(a) @ op(b) is all zeros
        out *= beta
        return out
    stream = cupy.cuda.get_current_stream().ptr
    if stream != _stream:
        _check(_lib.cublasSetStream_v2(_handle, ctypes.c_void_p(stream)), "cublasSetStream")
        _stream = stream
    in_type = None
    if a.dtype == np.float64:
        dtype, compute, scalar = _CUDA_R_64F, _COMPUTE_64F, ctypes.c_double
    else:
        dtype, compute, scalar = _CUDA_R_32F, (_COMPUTE_32F_FAST_TF32 if _precision == "tf32" else _COMPUTE_32F), ctypes.c_float
        if bf16:
            a, b, in_type = to_bf16(a), to_bf16(b), _CUDA_R_16BF
    in_type = in_type if in_type is not None else dtype
    alpha_, beta_ = scalar(alpha), scalar(beta)
    # C^T (n, m) = op(B)^T (n, k) @ op(A)^T (k, m), everything column-major to cuBLAS
    op_b, op_a = (_OP_T if trans_b else _OP_N), (_OP_T if trans_a else _OP_N)
    args = (_handle, op_b, op_a, n, m, k, ctypes.byref(alpha_))
    if batch == 1:
        status = _lib.cublasGemmEx(*args, b.data.ptr, in_type, cb, a.data.ptr, in_type, ca,
                                   ctypes.byref(beta_), out.data.ptr, dtype, n, compute, _GEMM_DEFAULT)
    else:
        status = _lib.cublasGemmStridedBatchedEx(*args, b.data.ptr, in_type, cb, sb, a.data.ptr, in_type, ca, sa,
                                                 ctypes.byref(beta_), out.data.ptr, dtype, n, m * n, batch,
                                                 compute, _GEMM_DEFAULT)
    _check(status, "cublasGemmEx")
    return out
