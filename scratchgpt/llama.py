"""Llama 3 and Qwen3, the book's bonus chapters (ch05/07_gpt_to_llama, ch05/11_qwen3), with
hand-written backward passes and Hugging Face's parameter names.

What changes from GPT-2 (model.py), one piece at a time:

    GPT-2                                  Llama 3                              Qwen3
    LayerNorm (scale and shift)            RMSNorm (scale only)                 RMSNorm
    learned position embeddings (wpe)      rotary embeddings on q and k (RoPE)  RoPE
    GELU feed-forward, 4 x emb_dim         SwiGLU feed-forward, hidden_dim      SwiGLU
    multi-head attention, one fused c_attn grouped-query attention, q/k/v_proj  GQA + RMSNorm on each
                                                                                head's q and k (QK-norm)
    biases everywhere                      no biases                            no biases

The ops are in scratchgpt/ops/ (rmsnorm.py, rope.py, swiglu.py, gqa.py). As in model.py, every
parameter is a view into one flat buffer and every gradient a view into another, so AdamW,
gradient clipping and checkpoints work unchanged. Names and shapes are Hugging Face's
LlamaForCausalLM / Qwen3ForCausalLM exactly: linear weights are (out, in) as nn.Linear keeps
them (GPT-2's checkpoints are (in, out) because HF GPT-2 uses Conv1D), so a forward is x @ W^T.
"""
import math
from dataclasses import asdict, dataclass, field, fields

import numpy  # host-side only: the seeded init and the rotary tables

from scratchgpt import backend
from scratchgpt.model import GPTModel
from scratchgpt.ops import (cross_entropy_backward, embedding_backward, embedding_forward,
                            linear_backward, linear_forward)
from scratchgpt.ops.gqa import grouped_query_attention_backward, grouped_query_attention_forward
from scratchgpt.ops.rmsnorm import rmsnorm_backward, rmsnorm_forward
from scratchgpt.ops.rope import rope_backward, rope_cos_sin, rope_forward, rope_inv_freq
from scratchgpt.ops.swiglu import swiglu_backward, swiglu_forward


@dataclass
class Llama3Config:
    """The book's config keys; the defaults are Llama 3.2 1B's (LLAMA32_CONFIG_1B)."""
    vocab_size: int = 128_256
    context_length: int = 131_072
    emb_dim: int = 2048
    n_heads: int = 32
    n_layers: int = 16
    hidden_dim: int = 8192          # the SwiGLU's inner width (HF: intermediate_size)
    head_dim: int = 0               # 0: emb_dim // n_heads (Qwen3 sets it apart from emb_dim)
    n_kv_groups: int = 8            # key/value heads, shared by n_heads / n_kv_groups query heads each
    qk_norm: bool = False           # Qwen3: RMSNorm on each head's queries and keys
    rope_base: float = 500_000.0    # HF: rope_theta
    rope_scaling: dict = field(default_factory=lambda: {
        "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192})
    rms_norm_eps: float = 1e-5
    tie_weights: bool = True        # the head reuses model.embed_tokens.weight (HF: tie_word_embeddings)

    def __post_init__(self):
        for f in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers", "hidden_dim", "n_kv_groups"):
            if int(getattr(self, f)) < 1:
                raise ValueError(f"{type(self).__name__}.{f} must be a positive integer, got {getattr(self, f)!r}")
        if not self.head_dim:
            if self.emb_dim % self.n_heads:
                raise ValueError(f"emb_dim {self.emb_dim} is not divisible by n_heads {self.n_heads}; "
                                 "set head_dim")
            self.head_dim = self.emb_dim // self.n_heads
        if self.n_heads % self.n_kv_groups:
            raise ValueError(f"n_heads {self.n_heads} is not divisible by n_kv_groups {self.n_kv_groups}")
        self.rope_scaling = dict(self.rope_scaling) if self.rope_scaling else None
        rope_inv_freq(self.head_dim, self.rope_base, self.rope_scaling)     # refuses what it cannot do

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
        return cls(**d)


@dataclass
class Qwen3Config(Llama3Config):
    """The defaults are Qwen3 0.6B's (the book's QWEN_CONFIG_06_B)."""
    vocab_size: int = 151_936
    context_length: int = 40_960
    emb_dim: int = 1024
    n_heads: int = 16
    n_layers: int = 28
    hidden_dim: int = 3072
    head_dim: int = 128             # 16 heads x 128 = 2048, twice emb_dim
    n_kv_groups: int = 8
    qk_norm: bool = True
    rope_base: float = 1_000_000.0
    rope_scaling: dict = None
    rms_norm_eps: float = 1e-6
    tie_weights: bool = True


def parameter_shapes(cfg):
    """{name: shape} in Hugging Face LlamaForCausalLM / Qwen3ForCausalLM names, linear weights (out, in)."""
    C, V, F, hd = cfg.emb_dim, cfg.vocab_size, cfg.hidden_dim, cfg.head_dim
    Hq, Hkv = cfg.n_heads * hd, cfg.n_kv_groups * hd
    shapes = {"model.embed_tokens.weight": (V, C)}
    for i in range(cfg.n_layers):
        h = f"model.layers.{i}."
        shapes.update({
            h + "input_layernorm.weight": (C,),
            h + "self_attn.q_proj.weight": (Hq, C), h + "self_attn.k_proj.weight": (Hkv, C),
            h + "self_attn.v_proj.weight": (Hkv, C), h + "self_attn.o_proj.weight": (C, Hq),
        })
        if cfg.qk_norm:
            shapes.update({h + "self_attn.q_norm.weight": (hd,), h + "self_attn.k_norm.weight": (hd,)})
        shapes.update({
            h + "post_attention_layernorm.weight": (C,),
            h + "mlp.gate_proj.weight": (F, C), h + "mlp.up_proj.weight": (F, C),
            h + "mlp.down_proj.weight": (C, F),
        })
    shapes["model.norm.weight"] = (C,)
    if not cfg.tie_weights:
        shapes["lm_head.weight"] = (V, C)
    return shapes


def flat_buffers(shapes, dtype):
    """One zeroed parameter buffer and one gradient buffer, and {name: view} into each. The >= 2-D
    tensors come first, so weight decay is the slice [:n_decay] (as in GPTModel)."""
    xp = backend.xp
    order = sorted(shapes, key=lambda k: len(shapes[k]) < 2)
    sizes = {k: math.prod(shapes[k]) for k in shapes}
    flat_params = xp.zeros(sum(sizes.values()), dtype=dtype)
    flat_grads = xp.zeros_like(flat_params)
    params, grads, at = {}, {}, 0
    for k in order:
        params[k] = flat_params[at:at + sizes[k]].reshape(shapes[k])
        grads[k] = flat_grads[at:at + sizes[k]].reshape(shapes[k])
        at += sizes[k]
    n_decay = sum(sizes[k] for k in shapes if len(shapes[k]) >= 2)
    return flat_params, flat_grads, params, grads, n_decay


# ---- layers ------------------------------------------------------------------------------
class Layer:
    """Views of its parameters and gradients by Hugging Face name, without the prefix."""

    def __init__(self, model, prefix):
        n = len(prefix)
        self.p = {k[n:]: v for k, v in model.params.items() if k.startswith(prefix)}
        self.g = {k[n:]: v for k, v in model.grad.items() if k.startswith(prefix)}


class RMSNorm(Layer):
    def __init__(self, model, prefix, eps):
        super().__init__(model, prefix)
        self.eps = eps

    def forward(self, x):
        out, self.cache = rmsnorm_forward(x, self.p["weight"], self.eps)
        return out

    def backward(self, dout):
        dx, dw = rmsnorm_backward(dout, self.cache)
        self.g["weight"] += dw
        return dx


class Linear(Layer):
    """y = x @ weight^T, weight (out, in) as nn.Linear stores it; no bias."""

    def forward(self, x):
        out, self.cache = linear_forward(x, self.p["weight"].T)                   # (..., out)
        return out

    def backward(self, dout):
        # dW^T is added straight into the (out, in) gradient through its transposed view
        dx, _, _ = linear_backward(dout, self.cache, dw_out=self.g["weight"].T)
        return dx


class FeedForward(Layer):
    """SwiGLU: down_proj(silu(gate_proj(x)) * up_proj(x)), emb_dim -> hidden_dim -> emb_dim."""

    def forward(self, x):
        P = self.p
        out, self.cache = swiglu_forward(x, P["gate_proj.weight"].T, P["up_proj.weight"].T,
                                         P["down_proj.weight"].T)                # (B, T, C)
        return out

    def backward(self, dout):
        G = self.g
        dx, _ = swiglu_backward(dout, self.cache, dw_out=(G["gate_proj.weight"].T, G["up_proj.weight"].T,
                                                          G["down_proj.weight"].T))
        return dx


class GroupedQueryAttention:
    """q/k/v_proj -> (Qwen3: RMSNorm per head on q and k) -> RoPE on q and k -> causal GQA -> o_proj."""

    def __init__(self, model, prefix, cfg):
        self.q_proj, self.k_proj = Linear(model, prefix + "q_proj."), Linear(model, prefix + "k_proj.")
        self.v_proj, self.o_proj = Linear(model, prefix + "v_proj."), Linear(model, prefix + "o_proj.")
        if cfg.qk_norm:
            self.q_norm = RMSNorm(model, prefix + "q_norm.", cfg.rms_norm_eps)
            self.k_norm = RMSNorm(model, prefix + "k_norm.", cfg.rms_norm_eps)
        self.qk_norm, self.model = cfg.qk_norm, model
        self.n_heads, self.n_kv, self.head_dim = cfg.n_heads, cfg.n_kv_groups, cfg.head_dim

    def forward(self, x, start=0, kv=None):
        """x (B, T, C) at positions start..start+T-1; kv: this block's (keys, values) cache or None."""
        B, T, _ = x.shape
        hd = self.head_dim
        q = self.q_proj.forward(x).reshape(B, T, self.n_heads, hd)                # (B, T, H, hd)
        k = self.k_proj.forward(x).reshape(B, T, self.n_kv, hd)                   # (B, T, KV, hd)
        v = self.v_proj.forward(x).reshape(B, T, self.n_kv, hd)
        if self.qk_norm:
            q, k = self.q_norm.forward(q), self.k_norm.forward(k)
        cos, sin = self.model.rope_tables(start, T)                               # (T, hd) each
        q, self.q_rope = rope_forward(q.transpose(0, 2, 1, 3), cos, sin)          # (B, H, T, hd)
        k, self.k_rope = rope_forward(k.transpose(0, 2, 1, 3), cos, sin)          # (B, KV, T, hd)
        v = v.transpose(0, 2, 1, 3)
        if kv is not None:                      # keys and values of the earlier tokens come from the cache
            keys, values = kv
            keys[:, :, start:start + T], values[:, :, start:start + T] = k, v
            k, v = keys[:, :, :start + T], values[:, :, :start + T]
        y, self.att_cache = grouped_query_attention_forward(q, k, v, start)       # (B, H, T, hd)
        return self.o_proj.forward(y.transpose(0, 2, 1, 3).reshape(B, T, -1))     # (B, T, C)

    def backward(self, dout):
        B, T, _ = dout.shape
        dy = self.o_proj.backward(dout).reshape(B, T, self.n_heads, self.head_dim).transpose(0, 2, 1, 3)
        dq, dk, dv = grouped_query_attention_backward(dy, self.att_cache)         # dk, dv summed per group
        dq = rope_backward(dq, self.q_rope).transpose(0, 2, 1, 3)                 # (B, T, H, hd)
        dk = rope_backward(dk, self.k_rope).transpose(0, 2, 1, 3)                 # (B, T, KV, hd)
        if self.qk_norm:
            dq, dk = self.q_norm.backward(dq), self.k_norm.backward(dk)
        dx = self.q_proj.backward(dq.reshape(B, T, -1))
        dx += self.k_proj.backward(dk.reshape(B, T, -1))
        dx += self.v_proj.backward(dv.transpose(0, 2, 1, 3).reshape(B, T, -1))
        return dx


class TransformerBlock:
    """Pre-norm block with shortcuts, as GPT-2's, with RMSNorm and no dropout:

        x = x + attn(input_layernorm(x))
        x = x + mlp(post_attention_layernorm(x))
    """

    def __init__(self, model, i):
        cfg, prefix = model.cfg, f"model.layers.{i}."
        self.input_layernorm = RMSNorm(model, prefix + "input_layernorm.", cfg.rms_norm_eps)
        self.self_attn = GroupedQueryAttention(model, prefix + "self_attn.", cfg)
        self.post_attention_layernorm = RMSNorm(model, prefix + "post_attention_layernorm.", cfg.rms_norm_eps)
        self.mlp = FeedForward(model, prefix + "mlp.")

    def forward(self, x, start=0, kv=None):
        x = x + self.self_attn.forward(self.input_layernorm.forward(x), start, kv)      # shortcut
        return x + self.mlp.forward(self.post_attention_layernorm.forward(x))           # shortcut

    def backward(self, dout):
        d = dout + self.post_attention_layernorm.backward(self.mlp.backward(dout))
        return d + self.input_layernorm.backward(self.self_attn.backward(d))


class KVCache:
    """Keys (after RoPE) and values of every block for positions 0..length-1: (B, KV, context_length, hd)."""

    def __init__(self, model, batch_size):
        cfg, xp = model.cfg, backend.array_module(model.flat_params)
        shape = (batch_size, cfg.n_kv_groups, cfg.context_length, cfg.head_dim)
        self.layers = [(xp.zeros(shape, dtype=model.dtype), xp.zeros(shape, dtype=model.dtype))
                       for _ in range(cfg.n_layers)]
        self.length = 0


# ---- the model ---------------------------------------------------------------------------
class Llama3Model:
    """token embedding -> n_layers TransformerBlocks -> final RMSNorm -> head (tied or lm_head).

        model = Llama3Model(Llama3Config(vocab_size=256, context_length=64, emb_dim=64, n_heads=4,
                                         n_layers=2, hidden_dim=128, n_kv_groups=2), seed=0)
        logits = model(idx)                    # (B, T) ids -> (B, T, vocab_size)
        loss = model.loss(idx, targets); model.backward()
        cache = model.kv_cache(batch_size) # then model(idx, kv_cache=cache), a chunk at a time

    The same interface as GPTModel (flat_params / flat_grads / n_decay for the optimizer,
    state_dict, grads, load_state_dict, zero_grad, train / eval), with no dropout, LoRA or
    freezing.
    """
    config_class = Llama3Config
    arch = "llama3"

    def __init__(self, cfg, seed=0, dtype="float32", init=True):
        if isinstance(cfg, dict):
            cfg = self.config_class.from_dict(cfg)
        self.cfg, self.seed, self.training = cfg, seed, True
        self.rng = backend.rng(seed + 1)      # no dropout here; kept so a run's resume state has one
        self.dtype = backend.get_dtype(dtype)
        self.flat_params, self.flat_grads, self.params, self.grad, self.n_decay = \
            flat_buffers(parameter_shapes(cfg), self.dtype)
        self.frozen = set()                   # nothing is frozen (AdamW checks this)
        if init:
            self._init_weights(seed)
        cos, sin = rope_cos_sin(rope_inv_freq(cfg.head_dim, cfg.rope_base, cfg.rope_scaling), cfg.context_length)
        self.cos, self.sin = (backend.xp.asarray(t.astype(self.dtype)) for t in (cos, sin))
        self.blocks = [TransformerBlock(self, i) for i in range(cfg.n_layers)]
        self.norm = RMSNorm(self, "model.norm.", cfg.rms_norm_eps)
        self.head_name = "model.embed_tokens.weight" if cfg.tie_weights else "lm_head.weight"
        self._cache = self._loss_cache = None

    def _init_weights(self, seed):
        """N(0, 0.02) weights (HF's initializer_range), RMSNorm weights 1; drawn on the host."""
        rng = numpy.random.default_rng(seed)
        for name, p in self.params.items():
            if p.ndim == 1:
                p[...] = 1.0
            else:
                p[...] = backend.xp.asarray(rng.normal(0.0, 0.02, p.shape).astype(self.dtype))

    def rope_tables(self, start, T):
        """cos and sin (T, head_dim) for positions start..start+T-1."""
        return self.cos[start:start + T], self.sin[start:start + T]

    def kv_cache(self, batch_size):
        return KVCache(self, batch_size)

    # the same modes, bookkeeping, input checks and loss as GPTModel
    train, eval, num_parameters, zero_grad = GPTModel.train, GPTModel.eval, GPTModel.num_parameters, GPTModel.zero_grad
    state_dict, grads, load_state_dict = GPTModel.state_dict, GPTModel.grads, GPTModel.load_state_dict
    _check_ids, loss = GPTModel._check_ids, GPTModel.loss

    def trainable_names(self):
        return list(self.params)

    def forward(self, idx, kv_cache=None):
        """(B, T) token ids -> (B, T, vocab_size) logits. With kv_cache, the ids follow the
        cache's `length` earlier tokens, whose keys and values come from it (inference only)."""
        idx = self._check_ids(idx)
        start = 0 if kv_cache is None else kv_cache.length
        if start + idx.shape[1] > self.cfg.context_length:
            raise ValueError(f"the KV cache holds {start} tokens; {idx.shape[1]} more exceed the "
                             f"context length {self.cfg.context_length}")
        self._loss_cache = None
        x, emb_cache = embedding_forward(idx, self.params["model.embed_tokens.weight"])   # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block.forward(x, start, None if kv_cache is None else kv_cache.layers[i])
        x = self.norm.forward(x)
        logits, head_cache = linear_forward(x, self.params[self.head_name].T)          # (B, T, V)
        if kv_cache is not None:
            kv_cache.length = start + idx.shape[1]
            self._cache = None                       # no backward through a cached forward
        else:
            self._cache = (emb_cache, head_cache)
        return logits

    __call__ = forward

    def backward(self, dlogits=None):
        """Add the gradients of the last loss() (or of sum(dlogits * logits)) into grads()."""
        if self._cache is None:
            raise RuntimeError("backward() needs a forward pass without a KV cache first: call model.loss(...)")
        if dlogits is None:
            if self._loss_cache is None:
                raise RuntimeError("backward() without dlogits needs model.loss(idx, targets) first")
            dlogits = cross_entropy_backward(1.0, self._loss_cache)
        emb_cache, head_cache = self._cache
        dx, _, _ = linear_backward(dlogits, head_cache, dw_out=self.grad[self.head_name].T)
        dx = self.norm.backward(dx)
        for block in reversed(self.blocks):
            dx = block.backward(dx)
        embedding_backward(dx, emb_cache, out=self.grad["model.embed_tokens.weight"])   # scatter-add
        self._loss_cache = None


class Qwen3Model(Llama3Model):
    """Llama 3's model with Qwen3's config: QK-norm, head_dim set apart, another RoPE base."""
    config_class = Qwen3Config
    arch = "qwen3"
