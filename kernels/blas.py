"""The matrix products of the linear layers: Intel MKL's sgemm/dgemm when the optional `mkl`
wheel is installed (pip install -e ".[mkl]"), NumPy's matmul (its OpenBLAS) otherwise.

    matmul(a, b, out=None, add=False)       out = a @ b, or out += a @ b with add=True

a (M, K) and b (K, N) are 2-D float arrays of one dtype, each C-contiguous or the transpose of
a C-contiguous array (as `w.T` is): BLAS reads either layout directly, so no transposed copy is
made. out (M, N) may be either layout too (a transposed gradient view, as the tied head's).

Why MKL: at the shapes of a small GPT ((768, 128) @ (128, 512) and the like) NumPy's OpenBLAS
spends 15-20% more time per product than MKL on the Intel Xeons we measured (torch ships MKL),
and the products are most of a training step. It is a 700 MB wheel, so it stays optional.
`add=True` is one call with beta = 1: dW += x^T @ dout needs no temporary of dW's size.
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
    # MKL's OpenMP threads would otherwise spin for 200 ms after each product, taking the cores
    # from the numba kernel that follows (read when the library loads; a value you set wins)
    os.environ.setdefault("KMP_BLOCKTIME", "0")
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        for path in sorted(glob.glob(os.path.join(prefix, "lib", "libmkl_rt.so*"))):
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            args = [ctypes.c_int] * 6
            for name, real in (("cblas_sgemm", ctypes.c_float), ("cblas_dgemm", ctypes.c_double)):
                fn = getattr(lib, name)
                fn.restype = None
                #   layout, transa, transb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc
                fn.argtypes = args + [real, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int,
                                      real, ctypes.c_void_p, ctypes.c_int]
            return lib
    return None


_mkl = None          # loaded on first use: see library()
_looked = False


def library():
    """"mkl" when the products run on MKL, else "numpy"."""
    return "mkl" if _get_mkl() is not None else "numpy"


def _get_mkl():
    global _mkl, _looked
    if not _looked:
        _looked = True
        _mkl = _load_mkl()
    return _mkl


def _operand(a):
    """(array, transposed, leading dimension) as CBLAS wants it, or None for another layout."""
    if a.flags.c_contiguous:
        return a, _NO_TRANS, max(1, a.shape[1])
    if a.flags.f_contiguous:                 # a.T is C-contiguous: a is (rows, cols) read transposed
        return a, _TRANS, max(1, a.shape[0])
    return None


def matmul(a, b, out=None, add=False):
    """out = a @ b (add=False) or out += a @ b (add=True) for 2-D a (M, K), b (K, N); returns out."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"matmul needs (M, K) @ (K, N), got {a.shape} @ {b.shape}")
    M, N = a.shape[0], b.shape[1]
    if out is not None and out.shape != (M, N):
        raise ValueError(f"out has shape {out.shape}, the product is {(M, N)}")
    if add and out is None:
        raise ValueError("add=True needs out, the array to add the product into")
    lib = _get_mkl()
    dtype = a.dtype
    ok = (lib is not None and dtype in (np.float32, np.float64) and b.dtype == dtype
          and (out is None or (out.dtype == dtype and out.flags.writeable)))
    A, B = (_operand(a), _operand(b)) if ok else (None, None)
    if A is None or B is None or (out is not None and not (out.flags.c_contiguous or out.flags.f_contiguous)):
        return _numpy_matmul(a, b, out, add)
    if out is None:
        out = np.empty((M, N), dtype=dtype)
    if not out.flags.c_contiguous:           # out.T is C-contiguous: out^T = b^T @ a^T
        _gemm(lib, _flip(B), _flip(A), out.T, add)
    else:
        _gemm(lib, A, B, out, add)
    return out


def _flip(op):
    """The same matrix, read as its transpose."""
    arr, trans, ld = op
    return arr.T, _TRANS if trans == _NO_TRANS else _NO_TRANS, ld


def _gemm(lib, A, B, out, add):
    (a, ta, lda), (b, tb, ldb) = A, B
    M, K, N = a.shape[0], a.shape[1], b.shape[1]
    if M == 0 or N == 0:
        return
    if K == 0:                               # an empty sum: BLAS may not touch out
        if not add:
            out[...] = 0
        return
    fn = lib.cblas_sgemm if a.dtype == np.float32 else lib.cblas_dgemm
    fn(_ROW_MAJOR, ta, tb, M, N, K, 1.0, a.ctypes.data, lda, b.ctypes.data, ldb,
       1.0 if add else 0.0, out.ctypes.data, max(1, N))


def _numpy_matmul(a, b, out, add):
    if not add:
        return np.matmul(a, b, out=out) if out is not None else a @ b
    _add_xt_dout(out, a.T, b)        # out += a @ b a block of rows at a time (no out-sized temporary)
    return out
