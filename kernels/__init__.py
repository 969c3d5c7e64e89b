"""numba-fused kernels (installed as scratchgpt.kernels).

Each op is a pair of plain functions, forward and backward, on NumPy arrays (float32 or
float64, the dtype is kept): a small Python wrapper checks shapes and dtypes, then calls an
`@njit(parallel=True, cache=True)` core that loops over rows with `prange`.

    causal_softmax_forward(x) -> y                       causal_softmax_backward(dy, y) -> dx
    layernorm_forward(x, w, b, eps) -> out, mean, rstd   layernorm_backward(dout, x, mean, rstd, w) -> dx, dw, db
    gelu_forward(x) -> y                                 gelu_backward(dout, x) -> dx
    cross_entropy_forward_backward(logits, targets, ignore_index) -> loss, dlogits

numba compiles each core on its first call for a given dtype (a few seconds) and caches the
machine code on disk: in `__pycache__/` next to these sources, or under NUMBA_CACHE_DIR when that
environment variable is set (numba falls back to a per-user cache directory when the source
folder is read-only). Later processes load the cached code in milliseconds.
"""

from .cross_entropy import cross_entropy_forward_backward
from .gelu import gelu_backward, gelu_forward
from .layernorm import layernorm_backward, layernorm_forward
from .softmax import causal_softmax_backward, causal_softmax_forward

__all__ = [
    "causal_softmax_forward", "causal_softmax_backward",
    "layernorm_forward", "layernorm_backward",
    "gelu_forward", "gelu_backward",
    "cross_entropy_forward_backward",
]
