"""The precision of the matrix products on a GPU: `--precision fp32 | tf32 | bf16`.

    fp32   (the default) every op in float32, the matrix products too: the same math as the CPU
    tf32   CuPy's float32 matrix products on TF32 tensor cores (inputs rounded to a 10-bit
           mantissa, sums in float32; Ampere GPUs and newer); every other op stays float32
    bf16   mixed precision: the products' inputs rounded to bfloat16 and multiplied on bf16
           tensor cores with float32 sums; the weights, gradients, AdamW's state, LayerNorm's and
           the softmax's statistics and the loss stay float32 (kernels/cuda_gemm.py)

NumPy has neither TF32 nor a bf16 matrix product, so on the CPU only fp32 exists and the other
two are refused with the reason. On CuPy the choice is made for the whole process: the model's
products (the linear layers and attention) go through kernels/cuda_gemm.py, which set_precision
tells; CuPy's own products elsewhere (a frozen layer's, LoRA's) follow CUPY_TF32, which CuPy reads
once, at its first float32 product, and keeps in cupy._core._routines_linalg, where
set_compute_type changes it (tf32 there under tf32, full float32 under fp32 and bf16).
"""
import os

import numpy

from scratchgpt import backend

PRECISIONS = ("fp32", "tf32", "bf16")
# CuPy's compute types for float32 products (cupy/_core/_routines_linalg.pxd: COMPUTE_TYPE_*)
CUPY_COMPUTE_TYPE = {"fp32": 1, "tf32": 7}          # DEFAULT (full float32), TF32


def use(precision, backend_name=None):
    """Check `precision` against the backend (the active one unless named) and apply it."""
    name = backend_name or backend.name
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if name != "cupy":
        if precision != "fp32":
            raise ValueError(f"--precision {precision} needs a GPU (--backend cupy; SCRATCHGPT_BACKEND=cupy "
                             f"for sample and eval): on the CPU NumPy computes in fp32 (or float64) only")
        return
    if precision == "bf16" and name == backend.name and not hasattr(backend.ops, "kernels"):
        raise ValueError("--precision bf16 needs scratchgpt's GPU kernels (numba.cuda), which are off here "
                         "(SCRATCHGPT_KERNELS=numpy, or numba.cuda cannot run): without them the products "
                         "would run in float32")
    os.environ["CUPY_TF32"] = "1" if precision == "tf32" else "0"     # before CuPy's first product
    try:                                                               # our own cuBLAS calls
        from scratchgpt.kernels import cuda_gemm
        cuda_gemm.set_precision(precision)
    except ImportError:
        pass
    try:                                                               # and after it
        from cupy._core import _routines_linalg
        _routines_linalg.set_compute_type(numpy.float32, CUPY_COMPUTE_TYPE.get(precision, 1))
    except (ImportError, AttributeError):       # a CuPy without it reads CUPY_TF32 (set above)
        pass
