"""The GPT model of the book's chapter 4, with GPT-2's parameter names.

    GPTModel: token + position embeddings -> dropout -> n_layers TransformerBlocks
              -> final LayerNorm -> output head (tied to the token embedding, as GPT-2's)

Every layer is a thin object around a forward/backward pair of ops (`backend.ops`, the
reference code in scratchgpt/ops or the same functions on fast kernels): `forward` keeps the
op's cache, `backward` hands it back and *adds* the parameter gradients into the model's
gradient buffer (as torch's `.grad` does, so gradient accumulation and the tied head need
nothing special; `zero_grad()` clears it).

All parameters live in one flat array and all gradients in another (scratchgpt/params.py); the
names in `state_dict()` / `grads()` are views into them, so the optimizer updates everything
in one vectorised step.
"""
import copy
import math
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import numpy  # host-side only: input checks and the seeded init

from scratchgpt import backend
from scratchgpt.params import ParamBuffer
from scratchgpt.rng import DropoutRNG


class ConfigDict:
    """A config dataclass's JSON form (checkpoints store it): to_dict, and a strict from_dict."""

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
        return cls(**d)


@dataclass
class GPTConfig(ConfigDict):
    vocab_size: int = 50257
    context_length: int = 1024
    emb_dim: int = 768
    n_heads: int = 12
    n_layers: int = 12
    drop_rate: float = 0.0
    qkv_bias: bool = False
    tie_weights: bool = True        # the head reuses transformer.wte.weight, as GPT-2 does
    post_norm: bool = False         # the original Transformer's order, for chapter 4's comparison
    gelu_approximate: str = "tanh"  # "tanh" (GPT-2) or "none" (exact erf)

    def __post_init__(self):
        for f in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers"):
            if int(getattr(self, f)) < 1:
                raise ValueError(f"GPTConfig.{f} must be a positive integer, got {getattr(self, f)!r}")
        if self.emb_dim % self.n_heads:
            raise ValueError(f"emb_dim {self.emb_dim} is not divisible by n_heads {self.n_heads}")
        if not 0.0 <= self.drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {self.drop_rate}")
        if self.gelu_approximate not in ("tanh", "none"):
            raise ValueError(f"gelu_approximate must be 'tanh' or 'none', got {self.gelu_approximate!r}")


def parameter_shapes(cfg):
    """{name: shape} in Hugging Face GPT2LMHeadModel's names and layouts (linear weights (in, out))."""
    C, V = cfg.emb_dim, cfg.vocab_size
    shapes = {"transformer.wte.weight": (V, C), "transformer.wpe.weight": (cfg.context_length, C)}
    for i in range(cfg.n_layers):
        h = f"transformer.h.{i}."
        shapes.update({
            h + "ln_1.weight": (C,), h + "ln_1.bias": (C,),
            h + "attn.c_attn.weight": (C, 3 * C), h + "attn.c_attn.bias": (3 * C,),
            h + "attn.c_proj.weight": (C, C), h + "attn.c_proj.bias": (C,),
            h + "ln_2.weight": (C,), h + "ln_2.bias": (C,),
            h + "mlp.c_fc.weight": (C, 4 * C), h + "mlp.c_fc.bias": (4 * C,),
            h + "mlp.c_proj.weight": (4 * C, C), h + "mlp.c_proj.bias": (C,),
        })
        if not cfg.qkv_bias:
            del shapes[h + "attn.c_attn.bias"]
    shapes.update({"transformer.ln_f.weight": (C,), "transformer.ln_f.bias": (C,)})
    if not cfg.tie_weights:
        shapes["lm_head.weight"] = (V, C)
    return shapes


# ---- layers ------------------------------------------------------------------------------
class Layer:
    """Holds views of its parameters and gradients (by GPT-2 name, without the prefix)."""

    def __init__(self, model, prefix):
        n = len(prefix)
        self.p = {k[n:]: v for k, v in model.params.items() if k.startswith(prefix)}
        self.g = {k[n:]: v for k, v in model.grad.items() if k.startswith(prefix)}
        self.model, self.prefix = model, prefix

    def trains(self, name):
        """Is parameter `name` (without the prefix) trainable? See GPTModel.set_trainable."""
        return self.prefix + name not in self.model.frozen


class Embedding(Layer):
    """Token embedding: a row of the (V, C) table per token id."""

    def forward(self, idx):
        out, self.cache = backend.ops.embedding_forward(idx, self.p["weight"])       # (B, T, C)
        return out

    def backward(self, dout):
        if self.trains("weight"):
            backend.ops.embedding_backward(dout, self.cache, out=self.g["weight"])    # scatter-add into it


class PositionEmbedding(Layer):
    """Absolute position embedding: row t of the (context_length, C) table for position t."""

    def forward(self, T, start=0):
        out, self.cache = backend.ops.position_embedding_forward(T, self.p["weight"], start)   # (T, C)
        return out

    def backward(self, dout):
        if self.trains("weight"):
            backend.ops.position_embedding_backward(dout, self.cache, out=self.g["weight"])


class Dropout:
    """Inverted dropout with the model's generator; the identity in eval mode."""

    def __init__(self, model, drop_rate):
        self.model, self.drop_rate = model, drop_rate

    def forward(self, x):
        out, self.mask = backend.ops.dropout_forward(x, self.drop_rate, self.model.dropout_rng())
        return out

    def backward(self, dout):
        return backend.ops.dropout_backward(dout, self.mask)


class LayerNorm(Layer):
    """The book's LayerNorm: `scale` and `shift` are GPT-2's `weight` and `bias`."""

    def forward(self, x):
        out, self.cache = backend.ops.layernorm_forward(x, self.p["weight"], self.p["bias"])
        return out

    def backward(self, dout):
        dx, dw, db = backend.ops.layernorm_backward(dout, self.cache)
        if self.trains("weight"):
            self.g["weight"] += dw
        if self.trains("bias"):
            self.g["bias"] += db
        return dx


class Linear(Layer):
    """y = x @ weight + bias, weight (in, out) as GPT-2 stores it; transposed=True for a weight
    stored (out, in), as the output head's (V, C) (the token embedding when tied)."""

    def __init__(self, model, prefix, transposed=False):
        super().__init__(model, prefix)
        self.transposed = transposed

    def weight(self):
        return self.p["weight"].T if self.transposed else self.p["weight"]

    def forward(self, x):
        out, self.cache = backend.ops.linear_forward(x, self.weight(), self.p.get("bias"))   # (..., out)
        return out

    def backward(self, dout):
        if self.trains("weight"):   # dW is added straight into the gradient buffer
            dw = self.g["weight"].T if self.transposed else self.g["weight"]
            dx, _, db = backend.ops.linear_backward(dout, self.cache, dw_out=dw)
        else:                       # a frozen weight: only dx = dout @ W^T, no dW product
            dout2 = dout.reshape(-1, dout.shape[-1])                                  # (N, out)
            dx = (dout2 @ self.cache.w.T).reshape(self.cache.x.shape)                 # (..., in)
            db = dout2.sum(axis=0) if self.cache.has_bias else None
        if db is not None and self.trains("bias"):
            self.g["bias"] += db
        return dx


class GELU:
    def __init__(self, approximate="tanh"):
        self.approximate = approximate

    def forward(self, x):
        out, self.cache = backend.ops.gelu_forward(x, self.approximate)
        return out

    def backward(self, dout):
        return backend.ops.gelu_backward(dout, self.cache, self.approximate)


class FeedForward:
    """emb_dim -> 4 emb_dim -> GELU -> emb_dim (GPT-2's c_fc and c_proj)."""

    def __init__(self, model, prefix, approximate="tanh"):
        self.c_fc = Linear(model, prefix + "c_fc.")
        self.gelu = GELU(approximate)
        self.c_proj = Linear(model, prefix + "c_proj.")

    def forward(self, x):
        h = self.gelu.forward(self.c_fc.forward(x))                   # (B, T, 4C)
        return self.c_proj.forward(h)                                 # (B, T, C)

    def backward(self, dout):
        return self.c_fc.backward(self.gelu.backward(self.c_proj.backward(dout)))


class KVCache:
    """Keys and values of every block for the tokens seen so far (generation, chapter 4's KV
    cache): per block two buffers of `shape` (B, heads, context_length, head_dim); `length`
    tokens are filled in. A model makes its own with model.kv_cache(batch_size)."""

    class Block(NamedTuple):
        k: object            # (B, heads, context_length, hd)
        v: object
        start: int           # how many tokens the buffers hold before this forward

    def __init__(self, n_layers, shape, dtype, xp):
        self.k = [xp.zeros(shape, dtype=dtype) for _ in range(n_layers)]
        self.v = [xp.zeros(shape, dtype=dtype) for _ in range(n_layers)]
        self.length = 0

    def block(self, i):
        return KVCache.Block(self.k[i], self.v[i], self.length)


class MultiHeadAttention:
    """c_attn (q, k, v in one product) -> causal multi-head attention -> c_proj (ops/attention.py)."""

    def __init__(self, model, prefix, n_heads, drop_rate):
        self.c_attn = Linear(model, prefix + "c_attn.")
        self.c_proj = Linear(model, prefix + "c_proj.")
        self.n_heads, self.drop_rate, self.model = n_heads, drop_rate, model

    def forward(self, x, kv=None):
        qkv = self.c_attn.forward(x)                                  # (B, T, 3C)
        if kv is None:
            y, self.cache = backend.ops.attention_forward(qkv, self.n_heads, self.drop_rate,
                                                          self.model.dropout_rng())   # (B, T, C)
        else:   # generation: the earlier tokens' keys and values come from the cache
            y = backend.ops.cached_attention_forward(qkv, kv.k, kv.v, kv.start, self.n_heads)
        return self.c_proj.forward(y)                                 # (B, T, C)

    def backward(self, dout):
        dqkv = backend.ops.attention_backward(self.c_proj.backward(dout), self.cache)   # (B, T, 3C)
        return self.c_attn.backward(dqkv)

    @property
    def dropout_mask(self):
        """The mask dropout put on the attention weights in the last forward (None: no dropout)."""
        return self.cache.drop_mask


class TransformerBlock:
    """Pre-LayerNorm block with shortcut connections (GPT-2 and the book):

        x = x + drop(attn(ln_1(x)))
        x = x + drop(ff(ln_2(x)))

    With cfg.post_norm the norm comes after each residual add instead (the 2017 Transformer).
    """

    def __init__(self, model, i):
        cfg, prefix = model.cfg, f"transformer.h.{i}."
        self.norm1 = LayerNorm(model, prefix + "ln_1.")
        self.att = MultiHeadAttention(model, prefix + "attn.", cfg.n_heads, cfg.drop_rate)
        self.norm2 = LayerNorm(model, prefix + "ln_2.")
        self.ff = FeedForward(model, prefix + "mlp.", cfg.gelu_approximate)
        self.drop_shortcut1 = Dropout(model, cfg.drop_rate)
        self.drop_shortcut2 = Dropout(model, cfg.drop_rate)
        self.post_norm = cfg.post_norm

    def forward(self, x, kv=None):
        if self.post_norm:      # x = ln_1(x + drop(attn(x))); x = ln_2(x + drop(ff(x)))
            x = self.norm1.forward(x + self.drop_shortcut1.forward(self.att.forward(x, kv)))
            return self.norm2.forward(x + self.drop_shortcut2.forward(self.ff.forward(x)))
        x = x + self.drop_shortcut1.forward(self.att.forward(self.norm1.forward(x), kv))   # shortcut
        return x + self.drop_shortcut2.forward(self.ff.forward(self.norm2.forward(x)))     # shortcut

    def backward(self, dout):
        # A shortcut y = x + f(x) passes dout straight through: dx = dout + f'(x)^T dout.
        if self.post_norm:
            d = self.norm2.backward(dout)
            d = self.norm1.backward(d + self.ff.backward(self.drop_shortcut2.backward(d)))
            return d + self.att.backward(self.drop_shortcut1.backward(d))
        d = dout + self.norm2.backward(self.ff.backward(self.drop_shortcut2.backward(dout)))
        return d + self.norm1.backward(self.att.backward(self.drop_shortcut1.backward(d)))


# ---- the model ---------------------------------------------------------------------------
class GPTModel:
    """token + position embeddings -> dropout -> n_layers TransformerBlocks -> final LayerNorm -> head.

        model = GPTModel(cfg, seed=0, dtype="float32")
        logits = model(idx)                    # (B, T) ids -> (B, T, vocab_size)
        loss = model.loss(idx, targets)        # mean cross-entropy (ignore_index=-100)
        model.backward()                       # adds d loss / d params into model.grads()
    """

    def __init__(self, cfg, seed=0, dtype="float32", init=True):
        if isinstance(cfg, dict):
            cfg = GPTConfig.from_dict(cfg)
        self.cfg, self.seed = cfg, seed
        self.dtype = backend.get_dtype(dtype)
        self.training = True
        self.rng = DropoutRNG(seed + 1)           # dropout masks (scratchgpt/rng.py); the init has its own
        self.extensions = {}                      # what fine-tuning added (saved with the config)
        self._bind(ParamBuffer(parameter_shapes(cfg), self.dtype, backend.xp))
        if init:                  # init=False: all zeros, for a loader that overwrites every weight
            self._init_weights(seed)

        self.tok_emb = Embedding(self, "transformer.wte.")
        self.pos_emb = PositionEmbedding(self, "transformer.wpe.")
        self.drop_emb = Dropout(self, cfg.drop_rate)
        self.trf_blocks = [TransformerBlock(self, i) for i in range(cfg.n_layers)]
        self.final_norm = LayerNorm(self, "transformer.ln_f.")
        self.out_head = Linear(self, "transformer.wte." if cfg.tie_weights else "lm_head.", transposed=True)
        self.set_trainable(None)

    def _bind(self, buf):
        self.buffer = buf
        self.flat_params, self.flat_grads, self.n_decay = buf.flat, buf.grad_flat, buf.n_decay
        self.params, self.grad = buf.params, buf.grads

    def _init_weights(self, seed, names=None):
        """GPT-2's init: N(0, 0.02) weights, residual projections scaled by 1/sqrt(2 n_layers),
        zero biases, LayerNorm weights 1. Drawn on the host so every backend gets the same model."""
        rng = numpy.random.default_rng(seed)
        for name in names or self.params:
            p = self.params[name]
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p[...] = 1.0
            elif p.ndim == 1:
                p[...] = 0.0
            else:
                std = 0.02 / math.sqrt(2 * self.cfg.n_layers) if name.endswith("c_proj.weight") else 0.02
                p[...] = backend.xp.asarray(rng.normal(0.0, std, p.shape).astype(self.dtype))

    # -- forward and backward
    def forward(self, idx, kv_cache=None):
        """(B, T) token ids -> (B, T, vocab_size) logits; keeps what backward needs.

        With a KVCache (generation) the tokens follow the kv_cache.length ones it holds."""
        start = 0 if kv_cache is None else kv_cache.length
        return self._forward(self._check_ids(idx, start), kv_cache)

    def _forward(self, idx, kv_cache=None):
        """forward() of checked token ids (a device array on a GPU): no host synchronisation."""
        start = 0 if kv_cache is None else kv_cache.length
        x = self.tok_emb.forward(idx) + self.pos_emb.forward(idx.shape[1], start)   # (B, T, C)
        x = self.drop_emb.forward(x)
        for i, block in enumerate(self.trf_blocks):
            x = block.forward(x, None if kv_cache is None else kv_cache.block(i))    # (B, T, C)
        if kv_cache is not None:
            kv_cache.length += idx.shape[1]
        x = self.final_norm.forward(x)
        self._loss_cache = None
        return self.out_head.forward(x)                                  # (B, T, vocab_size)

    __call__ = forward

    def loss(self, idx, targets, ignore_index=-100):
        """Forward pass and mean cross-entropy against `targets` (B, T); returns a float."""
        targets = self._check_targets(targets, idx, ignore_index)
        return float(self._loss(self._check_ids(idx), targets, ignore_index))   # the one device-to-host transfer

    def _loss(self, idx, targets, ignore_index=-100):
        """loss() of checked ids and targets, as a 0-d array (on the device on a GPU: no synchronisation)."""
        loss, self._loss_cache = backend.ops.cross_entropy_forward(self._forward(idx), targets, ignore_index)
        return loss

    def backward(self, dlogits=None):
        """Add the gradients into model.grads(): of the last `loss()` when dlogits is None,
        otherwise of sum(dlogits * logits) for any upstream gradient (B, T, V) of the last forward."""
        if getattr(self.final_norm, "cache", None) is None:
            raise RuntimeError("backward() needs a forward pass first: call model.loss(...) or model(idx)")
        if dlogits is None:
            if getattr(self, "_loss_cache", None) is None:
                raise RuntimeError("backward() without dlogits needs model.loss(idx, targets) first")
            dlogits = backend.ops.cross_entropy_backward(1.0, self._loss_cache)
        dx = self.final_norm.backward(self.out_head.backward(dlogits))  # (B, T, C)
        for block in reversed(self.trf_blocks[self.lowest_block:]):     # frozen blocks below: skipped
            dx = block.backward(dx)
        if self.lowest_block == 0:
            dx = self.drop_emb.backward(dx)
            self.pos_emb.backward(dx)
            self.tok_emb.backward(dx)
        self._loss_cache = None

    def kv_cache(self, batch_size):
        """An empty KVCache for `batch_size` sequences: pass it to forward, chunk after chunk."""
        cfg = self.cfg
        return KVCache(cfg.n_layers, (batch_size, cfg.n_heads, cfg.context_length, cfg.emb_dim // cfg.n_heads),
                       self.dtype, backend.array_module(self.flat_params))

    # -- modes
    def train(self, mode=True):
        self.training = mode
        return self

    def eval(self):
        return self.train(False)

    def dropout_masks(self):
        """The dropout masks of the last forward, in the order they were drawn (None: nothing dropped)."""
        masks = [self.drop_emb.mask]
        for b in self.trf_blocks:
            masks += [b.att.dropout_mask, b.drop_shortcut1.mask, b.drop_shortcut2.mask]
        return masks

    def dropout_rng(self):
        """The generator for dropout masks, or None when dropout is off (eval mode or p = 0)."""
        return self.rng if self.training and self.cfg.drop_rate > 0 else None

    # -- parameters (the bookkeeping is scratchgpt/params.py's)
    def num_parameters(self):
        """Every parameter once (the tied head is the token embedding, so it counts once)."""
        return int(self.flat_params.size)

    def zero_grad(self):
        self.buffer.zero_grad()

    def state_dict(self):
        """{name: array} views of the parameters (copy them to keep a snapshot)."""
        return dict(self.params)

    def grads(self):
        """{name: array} views of the gradients, the same names and shapes as state_dict()."""
        return dict(self.grad)

    def load_state_dict(self, d):
        """Copy arrays into the parameters; strict: names, shapes and dtypes must match."""
        self.buffer.load_state_dict(d, backend.xp)

    @property
    def frozen(self):
        return self.buffer.frozen

    def set_trainable(self, names=None):
        """Train only the parameters `names` selects (a full name, a dotted prefix such as
        "transformer.h.11", or a glob such as "*.lora_A"); None trains all of them.

        Frozen parameters get no gradient: backward() stops below the lowest block that holds
        a trainable parameter and skips a frozen weight's dW product. Pass AdamW a
        scratchgpt.optim.TrainableParams(model), which holds only the trainable ones.
        """
        self.buffer.set_trainable(names)
        trains = [any(k not in self.frozen for k in self.params if k.startswith(f"transformer.h.{i}."))
                  for i in range(self.cfg.n_layers)]
        embeddings = {"transformer.wte.weight", "transformer.wpe.weight"}
        self.lowest_block = 0 if not embeddings <= self.frozen else next(
            (i for i, t in enumerate(trains) if t), self.cfg.n_layers)
        return self

    def freeze(self, trainable=()):
        """Freeze every parameter except `trainable`. The book's chapter 6 recipe:
        model.freeze(["transformer.h.11", "transformer.ln_f", "score"])."""
        return self.set_trainable(list(trainable))

    def trainable_names(self):
        return self.buffer.trainable_names()

    def num_trainable_parameters(self):
        return sum(int(self.params[k].size) for k in self.trainable_names())

    # -- copies
    def with_extra_params(self, shapes):
        """A copy of this model whose buffers also hold `shapes` (zeros), after its own
        parameters: how fine-tuning adds a classification head or LoRA adapters."""
        return self._copy_onto(ParamBuffer({**self.buffer.shapes, **shapes}, self.dtype, backend.xp))

    def __deepcopy__(self, memo):
        """A true copy, whose layers view *its own* flat buffers."""
        return self._copy_onto(ParamBuffer(self.buffer.shapes, self.dtype, backend.xp), memo)

    def _copy_onto(self, buf, memo=None):
        """Copy the model with `buf` as its buffers: each view of the old buffers is mapped to the
        same name's view of the new ones, then everything else (layers included) is deep-copied."""
        memo = {} if memo is None else memo
        old = self.buffer
        memo.update({id(old): buf, id(old.flat): buf.flat, id(old.grad_flat): buf.grad_flat})
        for k in old.shapes:
            buf.params[k][...] = old.params[k]
            buf.grads[k][...] = old.grads[k]
            memo[id(old.params[k])], memo[id(old.grads[k])] = buf.params[k], buf.grads[k]
        buf.frozen = set(old.frozen)
        new = copy.copy(self)
        memo[id(self)] = new
        for k, v in vars(self).items():
            setattr(new, k, copy.deepcopy(v, memo))
        new._bind(buf)
        return new

    # -- input checks
    def _check_ids(self, idx, start=0, what="token ids"):
        if isinstance(idx, (list, tuple)):
            idx = numpy.asarray(idx)
        if idx.dtype.kind not in "iu":
            raise ValueError(f"{what} must be integers, got dtype {idx.dtype}")
        if idx.ndim != 2:
            raise ValueError(f"{what} must have shape (batch, time), got shape {tuple(idx.shape)}")
        T = idx.shape[1]
        if start + T > self.cfg.context_length:
            raise ValueError(f"sequence length {start + T} is longer than the context length {self.cfg.context_length}")
        if T == 0:
            raise ValueError(f"{what} are empty: need at least one token per sequence")
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= self.cfg.vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"token id {bad} is outside the vocabulary (size {self.cfg.vocab_size})")
        return backend.xp.asarray(idx)

    def _check_targets(self, targets, idx, ignore_index):
        t = numpy.asarray(targets) if isinstance(targets, (list, tuple)) else targets
        if t.dtype.kind not in "iu":
            raise ValueError(f"targets must be integers, got dtype {t.dtype}")
        if tuple(t.shape) != tuple(numpy.shape(idx)):
            raise ValueError(f"targets have shape {tuple(t.shape)}, the inputs {tuple(numpy.shape(idx))}")
        bad = (t != ignore_index) & ((t < 0) | (t >= self.cfg.vocab_size))
        if bool(bad.any()):
            v = int(t[bad].reshape(-1)[0])
            raise ValueError(f"target id {v} is outside the vocabulary (size {self.cfg.vocab_size}) "
                             f"and is not ignore_index ({ignore_index})")
        return backend.xp.asarray(t)
