"""The CPU's matrix products for the linear layers: Intel MKL's sgemm/dgemm when the `mkl` wheel
is installed (the `mkl` extra, which README's commands install), NumPy's matmul (its OpenBLAS)
otherwise.

    gemm(a, b, out=None, trans_a=False, trans_b=False, alpha=1.0, beta=0.0)
        -> out = alpha * op(a) @ op(b) + beta * out

The same call as the GPU's kernels/cuda_gemm.py, for 2-D arrays: a and b are NumPy arrays of one
float dtype (C-contiguous ones are read in place by MKL; others take NumPy's path), op transposes
(a weight's `w.T` is passed as w with trans=True, so no transposed copy is made), out is
C-contiguous. beta = 1 adds the product into out in the same call: dW += x^T @ dout needs no
temporary of dW's size.

Why MKL: at the shapes of a small GPT ((768, 128) @ (128, 512) and the like) NumPy's OpenBLAS
spends 10-20% more time per product than MKL on the Intel Xeon we measured (torch ships MKL),
and the products are most of a training step. It is a large wheel (~230 MB download, ~700 MB
installed), so it is an extra, not a requirement.
SCRATCHGPT_BLAS=numpy turns MKL off even where it is installed.
"""
import ctypes
import glob
import os
import sys

import numpy as np

from scratchgpt.ops.linear import _add_xt_dout

# CBLAS's enum values (cblas.h)
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112


def _load_mkl():
    """MKL's single dynamic library from the pip wheel (it installs into <prefix>/lib), or None."""
    if os.environ.get("SCRATCHGPT_BLAS", "mkl").lower() == "numpy":
        return None
    # Where numba runs on GNU OpenMP, scratchgpt.backend.tune_threads has set
    # MKL_THREADING_LAYER=GNU: MKL then shares those threads. Otherwise MKL starts Intel's OpenMP
    # threads, which would spin for 200 ms after each product, taking the cores from the numba
    # kernel that follows; at 0 they sleep at once and every product pays their wake-up:
    # KV-cache generation (small model, 2 threads) ran at 145 tok/s against 549 at 1 ms and 574
    # at 200 ms, training steps alike at 1 and 200. Read when the library loads; a value you set wins.
    os.environ.setdefault("KMP_BLOCKTIME", "1")
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        for path in sorted(glob.glob(os.path.join(prefix, "lib", "libmkl_rt.so*"))):
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for name, real in (("cblas_sgemm", ctypes.c_float), ("cblas_dgemm", ctypes.c_double)):
                fn = getattr(lib, name)
                fn.restype = None
                #   layout, transa, transb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc
                fn.argtypes = [ctypes.c_int] * 6 + [real, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                                                    ctypes.c_int, real, ctypes.c_void_p, ctypes.c_int]
            return lib
    return None


_mkl = None          # loaded on first use: see library()
_looked = False


def _get_mkl():
    global _mkl, _looked
    if not _looked:
        _looked = True
        _mkl = _load_mkl()
    return _mkl


def library():
    """"mkl" when the products run on MKL, else "numpy"."""
    return "mkl" if _get_mkl() is not None else "numpy"


def gemm(a, b, out=None, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
    """out = alpha * op(a) @ op(b) + beta * out for C-contiguous 2-D a and b; returns out."""
    for name, m in (("a", a), ("b", b)):
        if m.ndim != 2:
            raise ValueError(f"{name} must be a 2-D array, got shape {m.shape}")
    if a.dtype != b.dtype or a.dtype not in (np.float32, np.float64):
        raise TypeError(f"gemm takes two float32 or two float64 arrays, got {a.dtype} and {b.dtype}")
    M, K = a.shape[::-1] if trans_a else a.shape
    K2, N = b.shape[::-1] if trans_b else b.shape
    if K != K2:
        raise ValueError(f"gemm: shapes {a.shape}{'^T' * trans_a} and {b.shape}{'^T' * trans_b} do not multiply")
    if out is None:
        if beta != 0.0:
            raise ValueError("beta != 0 needs out")
        out = np.empty((M, N), dtype=a.dtype)
    elif out.shape != (M, N) or out.dtype != a.dtype or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous {a.dtype} array of shape {(M, N)}, got {out.dtype} {out.shape}")
    lib = _get_mkl()
    if lib is None or not (a.flags.c_contiguous and b.flags.c_contiguous):     # (BLAS needs rows in place)
        return _numpy_gemm(a.T if trans_a else a, b.T if trans_b else b, out, alpha, beta)
    if M and N:
        if K == 0:                           # an empty sum: BLAS may leave out as it was
            out *= beta
        else:
            fn = lib.cblas_sgemm if a.dtype == np.float32 else lib.cblas_dgemm
            fn(_ROW_MAJOR, _TRANS if trans_a else _NO_TRANS, _TRANS if trans_b else _NO_TRANS, M, N, K,
               alpha, a.ctypes.data, a.shape[1], b.ctypes.data, b.shape[1], beta, out.ctypes.data, N)
    return out


def _numpy_gemm(opa, opb, out, alpha, beta):
    if beta == 0.0:
        np.matmul(opa, opb, out=out)
        if alpha != 1.0:
            out *= alpha
        return out
    if beta != 1.0:
        out *= beta
    if alpha != 1.0:
        opa = opa * alpha
    _add_xt_dout(out, opa.T, opb)    # out += opa @ opb a block of rows at a time (no out-sized temporary)
    return out
