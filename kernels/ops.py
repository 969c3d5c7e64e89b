"""The fast ops: scratchgpt.ops' functions, with the same signatures and caches, on fused kernels.

CS231n keeps `layers.py` and `fast_layers.py` apart; this is our fast_layers. Each method
reshapes its arguments for a kernel (kernels/*.py on the CPU, kernels/cuda.py on a GPU) and
packs the kernel's results into the reference op's cache. An op without a fast version here,
or a case a kernel does not cover (dropout inside attention, the exact-erf GELU), runs the
reference code. scratchgpt.backend picks between this and scratchgpt.ops, in one place:

    backend.ops.layernorm_forward(x, w, b)   ->  FastOps(kernels).layernorm_forward, or
                                                 scratchgpt.ops.layernorm_forward
"""
from typing import NamedTuple

from scratchgpt import ops as reference
from scratchgpt.arrays import array_module
from scratchgpt.ops import AttentionCache, LayerNormCache


class FusedCrossEntropyCache(NamedTuple):
    dlogits: object      # (N, V) (softmax - onehot) / n, formed in the forward's one pass
    shape: tuple         # the logits' original shape


class FastOps:
    """The op set over one kernel module (the CPU kernels or the GPU ones)."""

    def __init__(self, kernels):
        self.kernels = kernels
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

    def cross_entropy_backward(self, dloss, cache):
        if not isinstance(cache, FusedCrossEntropyCache):     # the forward ran the reference code
            return reference.cross_entropy_backward(dloss, cache)
        dlogits = cache.dlogits if dloss == 1.0 else cache.dlogits * dloss
        return dlogits.reshape(cache.shape)

    # -- attention: one kernel for the whole core, only the causal half of the scores
    def attention_forward(self, qkv, n_heads, drop_rate=0.0, rng=None):
        kernel = getattr(self.kernels, "causal_attention_forward", None)
        if kernel is None or (drop_rate > 0.0 and rng is not None):   # the kernel has no dropout
            return reference.attention_forward(qkv, n_heads, drop_rate, rng)
        y, att = kernel(qkv, n_heads)                 # att packed: (B * H, T (T + 1) / 2)
        return y, AttentionCache(qkv, att, None, n_heads)

    def attention_backward(self, dy, cache):
        if cache.att.ndim == 4:                       # (B, H, T, T): the forward ran the reference code
            return reference.attention_backward(dy, cache)
        return self.kernels.causal_attention_backward(dy, cache.qkv, cache.att, cache.n_heads)

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
