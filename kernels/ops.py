"""The fast ops: scratchgpt.ops' functions, with the same signatures and caches, on fused kernels.

CS231n keeps `layers.py` and `fast_layers.py` apart; this is our fast_layers. Each method
reshapes its arguments for a kernel (kernels/*.py on the CPU, kernels/cuda.py on a GPU) and
packs the kernel's results into the reference op's cache. An op without a fast version here,
or a case a kernel does not cover (dropout inside attention, the exact-erf GELU), runs the
reference code. scratchgpt.backend picks between this and scratchgpt.ops, in one place:

    backend.ops.layernorm_forward(x, w, b)   ->  FastOps(kernels).layernorm_forward, or
                                                 scratchgpt.ops.layernorm_forward

On the GPU the attention core has two versions, chosen by the environment variable
SCRATCHGPT_ATTENTION (read on every call):
    gemm   (the default) cuBLAS batched products and the softmax kernel; the (B, H, T, T)
           weights are kept for the backward
    flash  kernels/cuda_flash.py: tiles and an online softmax, no T x T matrix in memory; the
           cache keeps qkv, y and each row's log-sum-exp, and the backward recomputes the weights.
           Attention dropout (drop_rate > 0 while training) keeps the gemm version.
"""
import math
import os
from typing import NamedTuple

from scratchgpt import ops as reference
from scratchgpt.arrays import array_module
from scratchgpt.ops import AttentionCache, LayerNormCache


# Generation's attention runs the CPU kernel for at most this many new tokens per call (one, while
# sampling); longer prompts run the reference's batched products. Measured (2 threads, Intel Xeon):
# 6 heads after 200 cached tokens, kernel / products 18 / 31 us for 1 token and 103 / 162 us for 16;
# 12 heads after 500, 530 / 790 us for 16 tokens, but 4.6 / 1.3 ms for 32.
CACHED_KERNEL_MAX_TOKENS = 16


class FusedCrossEntropyCache(NamedTuple):
    dlogits: object      # (N, V) (softmax - onehot) / n, formed in the forward's one pass
    shape: tuple         # the logits' original shape


class FlashAttentionCache(NamedTuple):
    qkv: object          # (B, T, 3C) the fused projections
    y: object            # (B, T, C) the attention's output
    lse: object          # (B * H, T) log-sum-exp of each query row's scaled scores
    n_heads: int
    drop_mask = None     # never dropout here (model.dropout_masks() asks)


def attention_kind():
    """'gemm' or 'flash': the GPU's attention core, from SCRATCHGPT_ATTENTION (see the module's docstring)."""
    kind = os.environ.get("SCRATCHGPT_ATTENTION", "").lower() or "gemm"
    if kind not in ("gemm", "flash"):
        raise ValueError(f"SCRATCHGPT_ATTENTION={kind!r} is not known: 'gemm' (the default, cuBLAS products, "
                         "the weights stored) or 'flash' (kernels/cuda_flash.py)")
    return kind


class FastOps:
    """The op set over one kernel module (the CPU kernels or the GPU ones)."""

    def __init__(self, kernels):
        self.kernels = kernels
        # the linear layers' products: the GPU's cuBLAS calls (which a CUDA graph can capture) or
        # the CPU's kernels/blas.py (MKL where installed); None: the reference code's `x @ w`
        self.gemm = getattr(kernels, "gemm", None) or getattr(kernels, "blas_gemm", None)
        # the bias's add and gradient on every thread (the CPU's kernels/bias.py); None: NumPy's
        self.add_bias = getattr(kernels, "add_bias", None)
        self.bias_grad = getattr(kernels, "bias_grad", None)
        for name in dir(reference):               # an op with no fast version: the reference one
            if name.endswith(("_forward", "_backward")) and not hasattr(type(self), name):
                setattr(self, name, getattr(reference, name))

    def __repr__(self):
        return f"FastOps({self.kernels.__name__})"

    # -- LayerNorm: one pass per row for mean and rstd, one for the output
    def layernorm_forward(self, x, w, b, eps=1e-5):
        C = x.shape[-1]
        out, mean, rstd = self.kernels.layernorm_forward(x.reshape(-1, C), w, b, eps)
        return out.reshape(x.shape), LayerNormCache(x, w, mean, rstd)

    def layernorm_backward(self, dout, cache):
        x, w, mean, rstd = cache
        C = x.shape[-1]
        dx, dw, db = self.kernels.layernorm_backward(dout.reshape(-1, C), x.reshape(-1, C), mean, rstd, w)
        return dx.reshape(x.shape), dw, db

    # -- GELU (tanh form): no temporaries for t and its derivative
    def gelu_forward(self, x, approximate="tanh"):
        if approximate != "tanh":
            return reference.gelu_forward(x, approximate)
        return self.kernels.gelu_forward(x), x

    def gelu_backward(self, dout, cache, approximate="tanh"):
        if approximate != "tanh":
            return reference.gelu_backward(dout, cache, approximate)
        return self.kernels.gelu_backward(dout, cache)

    # -- the causal softmax: only the lower triangle is read and written
    def causal_softmax_forward(self, x):
        T = x.shape[-1]
        y = self.kernels.causal_softmax_forward(x.reshape(-1, T, T)).reshape(x.shape)
        return y, y

    def causal_softmax_backward(self, dy, cache):
        T = cache.shape[-1]
        return self.kernels.causal_softmax_backward(dy.reshape(-1, T, T), cache.reshape(-1, T, T)).reshape(cache.shape)

    # -- cross-entropy: the loss and (softmax - onehot) / n in one pass over the logits
    def cross_entropy_forward(self, logits, targets, ignore_index=-100):
        V = logits.shape[-1]
        loss, dlogits = self.kernels.cross_entropy_forward_backward(logits.reshape(-1, V), targets.reshape(-1),
                                                                    ignore_index)
        return loss, FusedCrossEntropyCache(dlogits, logits.shape)

    def cross_entropy_inference(self, logits, targets, ignore_index=-100):
        """The loss alone (backend.inference()): no (N, V) gradient written."""
        kernel = getattr(self.kernels, "cross_entropy_loss", None)
        if kernel is None:
            return self.cross_entropy_forward(logits, targets, ignore_index)[0]
        V = logits.shape[-1]
        return kernel(logits.reshape(-1, V), targets.reshape(-1), ignore_index)

    def cross_entropy_backward(self, dloss, cache):
        if not isinstance(cache, FusedCrossEntropyCache):     # the forward ran the reference code
            return reference.cross_entropy_backward(dloss, cache)
        dlogits = cache.dlogits if dloss == 1.0 else cache.dlogits * dloss
        return dlogits.reshape(cache.shape)

    # -- the linear layer on the kernel module's own products (self.gemm)
    def linear_forward(self, x, w, b=None):
        gemm = self.gemm
        if gemm is None:
            return reference.linear_forward(x, w, b)
        x2 = x.reshape(-1, x.shape[-1])
        out = _gemm_any(gemm, x2, w)                                    # (N, in) @ (in, out)
        if b is not None:
            if self.add_bias is None:
                out += b
            else:
                self.add_bias(out, b)
        return out.reshape(*x.shape[:-1], w.shape[-1]), reference.LinearCache(x, w, b is not None)

    def linear_backward(self, dout, cache, dw_out=None):
        gemm = self.gemm
        if gemm is None:
            return reference.linear_backward(dout, cache, dw_out)
        x, w, has_bias = cache
        dout2, x2 = dout.reshape(-1, dout.shape[-1]), x.reshape(-1, x.shape[-1])
        dx = _gemm_any(gemm, dout2, w.T).reshape(x.shape)                # dout @ W^T
        if dw_out is None:
            dw = _gemm_any(gemm, x2.T, dout2)                            # x^T @ dout
        elif dw_out.flags.c_contiguous:
            dw = gemm(x2, dout2, out=dw_out, trans_a=True, beta=1.0)     # dW += x^T @ dout, in place
        else:                                                            # a transposed view (the tied head)
            gemm(dout2, x2, out=dw_out.T, trans_a=True, beta=1.0)        # dW^T += dout^T @ x
            dw = dw_out
        db = None if not has_bias else dout2.sum(axis=0) if self.bias_grad is None else self.bias_grad(dout2)
        return dx, dw, db

    # -- attention: one kernel for the whole core, only the causal half of the scores
    def attention_forward(self, qkv, n_heads, drop_rate=0.0, rng=None):
        if self._flash(drop_rate, rng):               # the GPU, opted in: no (B, H, T, T) weights kept
            y, lse = self.kernels.flash_attention_forward(qkv, n_heads)
            return y, FlashAttentionCache(qkv, y, lse, n_heads)
        if hasattr(self.kernels, "gemm"):             # the GPU: cuBLAS products, the softmax kernel
            return _gemm_attention_forward(self, qkv, n_heads, drop_rate, rng)
        kernel = getattr(self.kernels, "causal_attention_forward", None)
        if kernel is None or (drop_rate > 0.0 and rng is not None):   # the kernel has no dropout
            return reference.attention_forward(qkv, n_heads, drop_rate, rng)
        y, att = kernel(qkv, n_heads)                 # att packed: (B * H, T (T + 1) / 2)
        return y, AttentionCache(qkv, att, None, n_heads)

    def attention_inference(self, qkv, n_heads, drop_rate=0.0, rng=None):
        """attention_forward's output alone (backend.inference()): the weights are not stored."""
        if self._flash(drop_rate, rng):
            return self.kernels.flash_attention_forward(qkv, n_heads)[0]
        kernel = getattr(self.kernels, "causal_attention_forward", None)
        if kernel is None or (drop_rate > 0.0 and rng is not None):
            return reference.attention_forward(qkv, n_heads, drop_rate, rng)[0]
        return kernel(qkv, n_heads, keep_att=False)[0]

    def attention_backward(self, dy, cache):
        if isinstance(cache, FlashAttentionCache):
            return self.kernels.flash_attention_backward(dy, cache.qkv, cache.y, cache.lse, cache.n_heads)
        if cache.att.ndim == 4 and hasattr(self.kernels, "gemm"):
            return _gemm_attention_backward(self, dy, cache)
        if cache.att.ndim == 4:                       # (B, H, T, T): the forward ran the reference code
            return reference.attention_backward(dy, cache)
        return self.kernels.causal_attention_backward(dy, cache.qkv, cache.att, cache.n_heads)

    def cached_attention_forward(self, qkv, k_cache, v_cache, start, n_heads):
        """Generation's attention: the kernel for a few new tokens; a long prompt (or the GPU) runs
        the reference's batched products, faster there than the kernel's dot product per key."""
        kernel = getattr(self.kernels, "cached_attention_forward", None)
        if kernel is None or qkv.shape[1] > CACHED_KERNEL_MAX_TOKENS:
            return reference.cached_attention_forward(qkv, k_cache, v_cache, start, n_heads)
        return kernel(qkv, k_cache, v_cache, start, n_heads)

    def _flash(self, drop_rate, rng):
        """Whether attention runs kernels/cuda_flash.py: on the GPU, asked for, and no dropout to draw."""
        return hasattr(self.kernels, "flash_attention_forward") and attention_kind() == "flash" \
            and not (drop_rate > 0.0 and rng is not None)

    # -- the embedding's scatter-add: one loop over the ids (np.add.at is ~80x slower)
    def embedding_backward(self, dout, cache, out=None):
        kernel = getattr(self.kernels, "embedding_backward", None)
        ids, shape = cache
        if out is None:
            out = array_module(dout).zeros(shape, dtype=dout.dtype)          # (V, C)
        if kernel is None or tuple(out.shape) != tuple(shape) or out.dtype != dout.dtype \
                or not out.flags.c_contiguous:
            return reference.embedding_backward(dout, cache, out=out)
        kernel(dout.reshape(-1, shape[1]), ids.reshape(-1), out=out)
        return out

    # -- AdamW (used by scratchgpt.optim when present): one pass over the flat buffers
    @property
    def adamw_step(self):
        kernel = getattr(self.kernels, "adamw_step", None)
        if kernel is None:
            raise AttributeError("adamw_step")
        return kernel


# ---------------------------------------------------------------- the GPU's products
def _gemm_any(gemm, a, b, out=None):
    """a @ b for 2-D a and b that are C-contiguous or transposes of C-contiguous arrays."""
    ta, tb = not a.flags.c_contiguous, not b.flags.c_contiguous
    return gemm(a.T if ta else a, b.T if tb else b, out=out, trans_a=ta, trans_b=tb)


def _heads(qkv, n_heads):
    """(B, T, 3C) -> q, k, v as C-contiguous (B * H, T, hd) arrays (the reference's split_heads, copied)."""
    xp = array_module(qkv)
    B, T, C3 = qkv.shape
    q, k, v = reference.split_heads(qkv, n_heads)                      # (B, H, T, hd) views
    return [xp.ascontiguousarray(a).reshape(B * n_heads, T, C3 // 3 // n_heads) for a in (q, k, v)]


def _gemm_attention_forward(fast, qkv, n_heads, drop_rate, rng):
    """The reference attention_forward's math, with its products as cuBLAS batched GEMMs."""
    gemm = fast.kernels.gemm
    B, T, _ = qkv.shape
    q, k, v = _heads(qkv, n_heads)                                     # (BH, T, hd)
    scores = gemm(q, k, trans_b=True, alpha=1.0 / math.sqrt(q.shape[-1]))   # (BH, T, T) = q k^T / sqrt(hd)
    att, _ = fast.causal_softmax_forward(scores)
    att_drop, drop_mask = fast.dropout_forward(att, drop_rate, rng)
    y = gemm(att_drop, v)                                              # (BH, T, hd)
    y = reference.merge_heads(y.reshape(B, n_heads, T, -1))            # (B, T, C)
    return y, AttentionCache(qkv, att.reshape(B, n_heads, T, T),
                             None if drop_mask is None else drop_mask.reshape(B, n_heads, T, T), n_heads)


def _gemm_attention_backward(fast, dy, cache):
    """The reference attention_backward's math (dA = dy v^T, dv = A^T dy, dS, dq = dS k, dk = dS^T q)."""
    gemm = fast.kernels.gemm
    xp = array_module(dy)
    qkv, att, drop_mask, n_heads = cache
    B, H, T, _ = att.shape
    q, k, v = _heads(qkv, n_heads)                                     # (BH, T, hd)
    hd = q.shape[-1]
    att = att.reshape(B * H, T, T)
    mask = None if drop_mask is None else drop_mask.reshape(B * H, T, T)
    att_drop = att if mask is None else att * mask
    dy = xp.ascontiguousarray(dy.reshape(B, T, H, hd).transpose(0, 2, 1, 3)).reshape(B * H, T, hd)
    datt_drop = gemm(dy, v, trans_b=True)                              # (BH, T, T) = dy v^T
    dqkv = xp.empty((3, B * H, T, hd), dtype=dy.dtype)
    gemm(att_drop, dy, out=dqkv[2], trans_a=True)                      # dv = A^T dy
    datt = fast.dropout_backward(datt_drop, mask)
    dscores = fast.causal_softmax_backward(datt, att)                  # dS, S = q k^T / sqrt(hd)
    gemm(dscores, k, out=dqkv[0], alpha=1.0 / math.sqrt(hd))           # dq = dS k / sqrt(hd)
    gemm(dscores, q, out=dqkv[1], trans_a=True, alpha=1.0 / math.sqrt(hd))   # dk = dS^T q / sqrt(hd)
    return dqkv.reshape(3, B, H, T, hd).transpose(1, 3, 0, 2, 4).reshape(B, T, 3 * H * hd)
