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
from dataclasses import dataclass, field

import numpy  # host-side only: the seeded init and the rotary tables

from scratchgpt import backend
from scratchgpt.model import ConfigDict, Embedding, GPTModel, KVCache, Layer, Linear
from scratchgpt.ops.rope import rope_cos_sin, rope_inv_freq
from scratchgpt.params import ParamBuffer
from scratchgpt.rng import DropoutRNG


@dataclass
class Llama3Config(ConfigDict):
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


# ---- layers ------------------------------------------------------------------------------
class RMSNorm(Layer):
    """Scale only, no shift: y = x / sqrt(mean(x^2) + eps) * weight (ops/rmsnorm.py)."""

    def __init__(self, model, prefix, eps):
        super().__init__(model, prefix)
        self.eps = eps

    def forward(self, x):
        out, self.cache = backend.ops.rmsnorm_forward(x, self.p["weight"], self.eps)
        return out

    def backward(self, dout):
        dx, dw = backend.ops.rmsnorm_backward(dout, self.cache)
        self.g["weight"] += dw
        return dx


class FeedForward(Layer):
    """SwiGLU: down_proj(silu(gate_proj(x)) * up_proj(x)), emb_dim -> hidden_dim -> emb_dim
    (the book's fc1, fc2, fc3). The weights are (out, in): the op gets transposed views."""

    def forward(self, x):
        P = self.p
        out, self.cache = backend.ops.swiglu_forward(x, P["gate_proj.weight"].T, P["up_proj.weight"].T,
                                                     P["down_proj.weight"].T)           # (B, T, C)
        return out

    def backward(self, dout):
        G = self.g   # dW added straight into the (out, in) gradients through their transposed views
        dx, _ = backend.ops.swiglu_backward(dout, self.cache, dw_out=(G["gate_proj.weight"].T, G["up_proj.weight"].T,
                                                                      G["down_proj.weight"].T))
        return dx


class GroupedQueryAttention:
    """q/k/v_proj -> (Qwen3: RMSNorm on each head's q and k) -> RoPE on q and k -> causal GQA -> o_proj.

    The book's W_query, W_key, W_value and out_proj, under Hugging Face's names; nn.Linear's
    (out, in) weights, so each is a Linear with transposed=True."""

    def __init__(self, model, prefix, cfg):
        self.q_proj = Linear(model, prefix + "q_proj.", transposed=True)     # (B, T, C) -> (B, T, H hd)
        self.k_proj = Linear(model, prefix + "k_proj.", transposed=True)     # -> (B, T, KV hd)
        self.v_proj = Linear(model, prefix + "v_proj.", transposed=True)
        self.o_proj = Linear(model, prefix + "o_proj.", transposed=True)     # (B, T, H hd) -> (B, T, C)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(model, prefix + "q_norm.", cfg.rms_norm_eps)
            self.k_norm = RMSNorm(model, prefix + "k_norm.", cfg.rms_norm_eps)
        self.qk_norm, self.model = cfg.qk_norm, model
        self.n_heads, self.n_kv, self.head_dim = cfg.n_heads, cfg.n_kv_groups, cfg.head_dim

    def forward(self, x, kv=None):
        """x (B, T, C); kv: this block's model.KVCache.Block (generation) or None (training)."""
        ops = backend.ops
        B, T, _ = x.shape
        start = 0 if kv is None else kv.start                                     # position of x[:, 0]
        q = self.q_proj.forward(x).reshape(B, T, self.n_heads, self.head_dim)     # (B, T, H, hd)
        k = self.k_proj.forward(x).reshape(B, T, self.n_kv, self.head_dim)        # (B, T, KV, hd)
        v = self.v_proj.forward(x).reshape(B, T, self.n_kv, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm.forward(q), self.k_norm.forward(k)
        cos, sin = self.model.rope_tables(start, T)                               # (T, hd) each
        q, self.q_rope = ops.rope_forward(q.transpose(0, 2, 1, 3), cos, sin)      # (B, H, T, hd)
        k, self.k_rope = ops.rope_forward(k.transpose(0, 2, 1, 3), cos, sin)      # (B, KV, T, hd)
        v = v.transpose(0, 2, 1, 3)
        if kv is not None:                      # the earlier tokens' keys and values come from the cache
            kv.k[:, :, start:start + T], kv.v[:, :, start:start + T] = k, v
            k, v = kv.k[:, :, :start + T], kv.v[:, :, :start + T]
        y, self.cache = ops.grouped_query_attention_forward(q, k, v, start)       # (B, H, T, hd)
        return self.o_proj.forward(y.transpose(0, 2, 1, 3).reshape(B, T, -1))     # (B, T, C)

    def backward(self, dout):
        ops = backend.ops
        B, T, _ = dout.shape
        dy = self.o_proj.backward(dout).reshape(B, T, self.n_heads, self.head_dim).transpose(0, 2, 1, 3)
        dq, dk, dv = ops.grouped_query_attention_backward(dy, self.cache)         # dk, dv summed per group
        dq = ops.rope_backward(dq, self.q_rope).transpose(0, 2, 1, 3)             # (B, T, H, hd)
        dk = ops.rope_backward(dk, self.k_rope).transpose(0, 2, 1, 3)             # (B, T, KV, hd)
        if self.qk_norm:
            dq, dk = self.q_norm.backward(dq), self.k_norm.backward(dk)
        dx = self.q_proj.backward(dq.reshape(B, T, -1))
        dx += self.k_proj.backward(dk.reshape(B, T, -1))
        dx += self.v_proj.backward(dv.transpose(0, 2, 1, 3).reshape(B, T, -1))
        return dx


class TransformerBlock:
    """Pre-norm block with shortcuts, as GPT-2's, with RMSNorm and no dropout:

        x = x + att(norm1(x))          Hugging Face: input_layernorm, self_attn
        x = x + ff(norm2(x))           post_attention_layernorm, mlp
    """

    def __init__(self, model, i):
        cfg, prefix = model.cfg, f"model.layers.{i}."
        self.norm1 = RMSNorm(model, prefix + "input_layernorm.", cfg.rms_norm_eps)
        self.att = GroupedQueryAttention(model, prefix + "self_attn.", cfg)
        self.norm2 = RMSNorm(model, prefix + "post_attention_layernorm.", cfg.rms_norm_eps)
        self.ff = FeedForward(model, prefix + "mlp.")

    def forward(self, x, kv=None):
        x = x + self.att.forward(self.norm1.forward(x), kv)                # shortcut
        return x + self.ff.forward(self.norm2.forward(x))                   # shortcut

    def backward(self, dout):
        # a shortcut y = x + f(x) passes dout straight through: dx = dout + f'(x)^T dout
        d = dout + self.norm2.backward(self.ff.backward(dout))
        return d + self.norm1.backward(self.att.backward(d))


# ---- the model ---------------------------------------------------------------------------
class Llama3Model:
    """token embedding -> n_layers TransformerBlocks -> final RMSNorm -> head (tied or lm_head).

        model = Llama3Model(Llama3Config(vocab_size=256, context_length=64, emb_dim=64, n_heads=4,
                                         n_layers=2, hidden_dim=128, n_kv_groups=2), seed=0)
        logits = model(idx)                    # (B, T) ids -> (B, T, vocab_size)
        loss = model.loss(idx, targets); model.backward()
        cache = model.kv_cache(batch_size)     # then model(idx, kv_cache=cache), a chunk at a time

    The same interface as GPTModel (flat_params / flat_grads / n_decay for the optimizer,
    state_dict, grads, load_state_dict, zero_grad, train / eval), and the same parameter
    bookkeeping (scratchgpt/params.py); no dropout, LoRA or freezing.
    """
    config_class = Llama3Config
    arch = "llama3"

    def __init__(self, cfg, seed=0, dtype="float32", init=True):
        if isinstance(cfg, dict):
            cfg = self.config_class.from_dict(cfg)
        self.cfg, self.seed, self.training = cfg, seed, True
        self.dtype = backend.get_dtype(dtype)
        self.rng = DropoutRNG(seed + 1)       # no dropout here; kept so a run's resume state has one
        self.extensions = {}                  # fine-tuning adds nothing to these models
        self.buffer = ParamBuffer(parameter_shapes(cfg), self.dtype, backend.xp)
        self.flat_params, self.flat_grads, self.n_decay = self.buffer.flat, self.buffer.grad_flat, self.buffer.n_decay
        self.params, self.grad = self.buffer.params, self.buffer.grads
        if init:
            self._init_weights(seed)
        cos, sin = rope_cos_sin(rope_inv_freq(cfg.head_dim, cfg.rope_base, cfg.rope_scaling), cfg.context_length)
        self.cos, self.sin = (backend.xp.asarray(t.astype(self.dtype)) for t in (cos, sin))

        self.tok_emb = Embedding(self, "model.embed_tokens.")
        self.trf_blocks = [TransformerBlock(self, i) for i in range(cfg.n_layers)]
        self.final_norm = RMSNorm(self, "model.norm.", cfg.rms_norm_eps)
        self.out_head = Linear(self, "model.embed_tokens." if cfg.tie_weights else "lm_head.", transposed=True)
        self._loss_cache = None

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
        """An empty KVCache for `batch_size` sequences: pass it to forward, chunk after chunk."""
        cfg = self.cfg      # keys and values per key/value group: (B, n_kv_groups, context_length, head_dim)
        return KVCache(cfg.n_layers, (batch_size, cfg.n_kv_groups, cfg.context_length, cfg.head_dim),
                       self.dtype, backend.array_module(self.flat_params))

    # the same modes, parameter bookkeeping, input checks and loss as GPTModel
    train, eval, num_parameters, zero_grad = GPTModel.train, GPTModel.eval, GPTModel.num_parameters, GPTModel.zero_grad
    state_dict, grads, load_state_dict = GPTModel.state_dict, GPTModel.grads, GPTModel.load_state_dict
    frozen, trainable_names = GPTModel.frozen, GPTModel.trainable_names
    _check_ids, _check_targets, loss, _loss = GPTModel._check_ids, GPTModel._check_targets, GPTModel.loss, GPTModel._loss

    def with_extra_params(self, shapes):
        """What fine-tuning (chapter 6's head, appendix E's LoRA) builds on: not written for Llama 3 / Qwen3."""
        raise ValueError(f"fine-tuning with a classification head or LoRA runs on GPT-2 models only; this is a "
                         f"{type(self).__name__} (adding {sorted(shapes)[:2]})")

    def forward(self, idx, kv_cache=None):
        """(B, T) token ids -> (B, T, vocab_size) logits; keeps what backward needs. With a
        KVCache (generation) the tokens follow the kv_cache.length ones it holds."""
        start = 0 if kv_cache is None else kv_cache.length
        return self._forward(self._check_ids(idx, start), kv_cache)

    def _forward(self, idx, kv_cache=None):
        """forward() of checked token ids."""
        x = self.tok_emb.forward(idx)                                             # (B, T, C)
        for i, block in enumerate(self.trf_blocks):
            x = block.forward(x, None if kv_cache is None else kv_cache.block(i))  # (B, T, C)
        if kv_cache is not None:
            kv_cache.length += idx.shape[1]
        x = self.final_norm.forward(x)
        self._loss_cache = None
        self._backward_ready = kv_cache is None      # no backward through a cached forward
        return self.out_head.forward(x)                                           # (B, T, vocab_size)

    __call__ = forward

    def backward(self, dlogits=None):
        """Add the gradients into model.grads(): of the last `loss()` when dlogits is None,
        otherwise of sum(dlogits * logits) for any upstream gradient (B, T, V) of the last forward."""
        if not getattr(self, "_backward_ready", False):
            raise RuntimeError("backward() needs a forward pass without a KV cache first: call model.loss(...)")
        if dlogits is None:
            if self._loss_cache is None:
                raise RuntimeError("backward() without dlogits needs model.loss(idx, targets) first")
            dlogits = backend.ops.cross_entropy_backward(1.0, self._loss_cache)
        dx = self.final_norm.backward(self.out_head.backward(dlogits))           # (B, T, C)
        for block in reversed(self.trf_blocks):
            dx = block.backward(dx)
        self.tok_emb.backward(dx)                                                 # scatter-add into wte
        self._loss_cache = None


class Qwen3Model(Llama3Model):
    """Llama 3's model with Qwen3's config: QK-norm, head_dim set apart, another RoPE base."""
    config_class = Qwen3Config
    arch = "qwen3"
