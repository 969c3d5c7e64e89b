"""numba-fused kernels (installed as scratchgpt.kernels).

Each op is a pair of plain functions, forward and backward, on NumPy arrays (float32 or
float64, the dtype is kept): a small Python wrapper checks shapes and dtypes, then calls an
`@njit(cache=True)` core that loops over rows with `prange`.

    causal_softmax_forward(x) -> y                       causal_softmax_backward(dy, y) -> dx
    layernorm_forward(x, w, b, eps) -> out, mean, rstd   layernorm_backward(dout, x, mean, rstd, w) -> dx, dw, db
    gelu_forward(x) -> y                                 gelu_backward(dout, x) -> dx
    cross_entropy_forward_backward(logits, targets, ignore_index) -> loss, dlogits
    cross_entropy_loss(logits, targets, ignore_index) -> loss           (no gradient: evaluation)
    causal_attention_forward(qkv, n_heads, keep_att=True) -> y, att     causal_attention_backward(dy, qkv, att, n_heads) -> dqkv
    cached_attention_forward(qkv, k_cache, v_cache, start, n_heads) -> y   (generation: new tokens after cached ones)
    adamw_step(p, g, m, v, t, lr, betas, eps, weight_decay, n_decay)      (in place)
    embedding_backward(dout, ids, out) -> out                            (adds into out)
    add_bias(y, b) -> y  (y += b, in place)                             bias_grad(dout) -> db  (sum over rows)
    blas_gemm(a, b, out, trans_a, trans_b, alpha, beta) -> out   the linear layers' products (blas.py:
                                                    MKL when installed, else NumPy), as cuda_gemm.gemm

The softmax, GELU, cross-entropy and attention functions also take `out=`, an array to write
their result into: reusing one buffer across training steps saves faulting in fresh memory on
every call, which costs as much as the softmax itself at (96, 256, 256).

numba compiles each core on its first call for a given dtype (a few seconds) and caches the
machine code on disk: in `__pycache__/` next to these sources, or under NUMBA_CACHE_DIR when that
environment variable is set (numba falls back to a per-user cache directory when the source
folder is read-only). Later processes load the cached code in well under a second.
numba checks only the timestamp of the file that defines each kernel: after editing the shared
helpers (_common.py, _vmath.py), delete the cached *.nbi/*.nbc files so the kernels recompile.

Speed: softmax, cross-entropy and GELU need exp; numba's own np.exp is a scalar library call per
element, so _vmath.py supplies an exp (and a row max) that LLVM vectorizes. The loops are
compiled with fastmath="reassoc" only, so row sums become SIMD reductions; NaN and inf keep
their meaning. benchmarks/kernels.py compares each op with plain NumPy.

Threads: every core is compiled twice (_common.twins), parallel and serial. Inputs below
_common.PARALLEL_MIN_WORK run serially on the calling thread, where handing them to numba's pool
would cost more than it saves. The threshold depends on numba's threading layer: scratchgpt.backend
picks OpenMP where it loads (a hand-off costs ~2 us there; even the tiny model's kernels split
over the cores) and workqueue otherwise (~120 us: only large kernels split). Larger inputs run
on numba's pool of NUMBA_NUM_THREADS threads (default: one per core); see
scratchgpt.backend.tune_threads for how that pool and the BLAS's share the cores.
"""

if __name__ != "scratchgpt.kernels":
    # numba's disk cache is kept next to these files and records the module each kernel was
    # compiled in. Imported as a top-level `kernels` (from a checkout's root on sys.path), the
    # cache would get entries under that name, and scratchgpt.kernels would then fail to load
    # them ("No module named 'kernels.attention'").
    raise ImportError(f"import this package as scratchgpt.kernels, not as {__name__!r}")

from .cross_entropy import cross_entropy_forward_backward, cross_entropy_loss
from .gelu import gelu_backward, gelu_forward
from .layernorm import layernorm_backward, layernorm_forward
from .softmax import causal_softmax_backward, causal_softmax_forward

__all__ = [
    "causal_softmax_forward", "causal_softmax_backward",
    "layernorm_forward", "layernorm_backward",
    "gelu_forward", "gelu_backward",
    "cross_entropy_forward_backward", "cross_entropy_loss",
]

from .attention import cached_attention_forward, causal_attention_backward, causal_attention_forward  # noqa: E402

__all__ += ["causal_attention_forward", "causal_attention_backward", "cached_attention_forward"]

from .adamw import adamw_step  # noqa: E402

__all__ += ["adamw_step"]

from .embedding import embedding_backward  # noqa: E402

__all__ += ["embedding_backward"]

from .blas import gemm as blas_gemm  # noqa: E402
from .bias import add_bias, bias_grad  # noqa: E402

__all__ += ["blas_gemm", "add_bias", "bias_grad"]
