"""The GPT model, with the book's class names and GPT-2's parameter names.

Every layer is a thin object around the pure forward/backward pairs in `scratchgpt.ops`:
`forward` keeps the op's cache, `backward` hands it back and *adds* the parameter
gradients into the model's gradient buffer (as torch's `.grad` does, so gradient
accumulation and the tied head need nothing special; `zero_grad()` clears it).

All parameters live in one flat array and all gradients in another; the names you see
in `state_dict()` / `grads()` are views into them, so the optimizer updates everything
in one vectorised step. Weights that get weight decay (the 2-D ones) come first in the
buffer, so "decay these" is a single slice.
"""
import math
from dataclasses import asdict, dataclass, fields

import numpy  # host-side only: input checks and the seeded init

from scratchgpt import backend
from scratchgpt.ops import (cross_entropy_backward, cross_entropy_forward, dropout_backward,
                            dropout_forward, embedding_backward, embedding_forward,
                            gelu_backward, gelu_forward, layernorm_backward, layernorm_forward,
                            linear_backward, linear_forward, multihead_attention_backward,
                            multihead_attention_forward)


@dataclass
class GPTConfig:
    vocab_size: int = 50257
    context_length: int = 1024
    emb_dim: int = 768
    n_heads: int = 12
    n_layers: int = 12
    drop_rate: float = 0.0
    qkv_bias: bool = False
    tie_weights: bool = True        # the head reuses transformer.wte.weight, as GPT-2 does
    post_norm: bool = False         # the original Transformer's order, for comparison only
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

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown GPTConfig fields: {sorted(unknown)}")
        return cls(**d)


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


class LayerNorm(Layer):
    """The book's LayerNorm: `scale` and `shift` are GPT-2's `weight` and `bias`."""

    def forward(self, x):
        out, self.cache = layernorm_forward(x, self.p["weight"], self.p["bias"])
        return out

    def backward(self, dout):
        dx, dw, db = layernorm_backward(dout, self.cache)
        self.g["weight"] += dw
        self.g["bias"] += db
        return dx


class GELU:
    def __init__(self, approximate="tanh"):
        self.approximate = approximate

    def forward(self, x):
        out, self.cache = gelu_forward(x, self.approximate)
        return out

    def backward(self, dout):
        return gelu_backward(dout, self.cache, self.approximate)


class FeedForward(Layer):
    """emb_dim -> 4 emb_dim -> GELU -> emb_dim (GPT-2's c_fc and c_proj)."""

    def __init__(self, model, prefix, approximate="tanh"):
        super().__init__(model, prefix)
        self.gelu = GELU(approximate)

    def forward(self, x):
        h, self.fc_cache = linear_forward(x, self.p["c_fc.weight"], self.p["c_fc.bias"])  # (B,T,4C)
        h = self.gelu.forward(h)
        out, self.proj_cache = linear_forward(h, self.p["c_proj.weight"], self.p["c_proj.bias"])  # (B,T,C)
        return out

    def backward(self, dout):
        dh, dw, db = linear_backward(dout, self.proj_cache)
        self.g["c_proj.weight"] += dw
        self.g["c_proj.bias"] += db
        dh = self.gelu.backward(dh)
        dx, dw, db = linear_backward(dh, self.fc_cache)
        self.g["c_fc.weight"] += dw
        self.g["c_fc.bias"] += db
        return dx


class MultiHeadAttention(Layer):
    def __init__(self, model, prefix, n_heads, drop_rate):
        super().__init__(model, prefix)
        self.n_heads, self.drop_rate, self.model = n_heads, drop_rate, model

    def forward(self, x):
        p = self.p
        out, self.cache = multihead_attention_forward(
            x, p["c_attn.weight"], p.get("c_attn.bias"), p["c_proj.weight"], p["c_proj.bias"],
            self.n_heads, self.drop_rate, self.model.dropout_rng())
        return out

    def backward(self, dout):
        dx, (dw_attn, db_attn, dw_proj, db_proj) = multihead_attention_backward(dout, self.cache)
        self.g["c_attn.weight"] += dw_attn
        if db_attn is not None:
            self.g["c_attn.bias"] += db_attn
        self.g["c_proj.weight"] += dw_proj
        self.g["c_proj.bias"] += db_proj
        return dx


class TransformerBlock:
    """Pre-LayerNorm block with shortcut connections (GPT-2 and the book):

        x = x + drop(attn(ln_1(x)))
        x = x + drop(ff(ln_2(x)))

    With cfg.post_norm the norm comes after each residual add instead (the 2017 Transformer):
    x = ln_1(x + drop(attn(x))); x = ln_2(x + drop(ff(x))).
    """

    def __init__(self, model, i):
        cfg, prefix = model.cfg, f"transformer.h.{i}."
        self.ln_1 = LayerNorm(model, prefix + "ln_1.")
        self.attn = MultiHeadAttention(model, prefix + "attn.", cfg.n_heads, cfg.drop_rate)
        self.ln_2 = LayerNorm(model, prefix + "ln_2.")
        self.ff = FeedForward(model, prefix + "mlp.", cfg.gelu_approximate)
        self.drop_rate, self.post_norm, self.model = cfg.drop_rate, cfg.post_norm, model

    def forward(self, x):
        rng = self.model.dropout_rng()
        if self.post_norm:
            h, self.drop1 = dropout_forward(self.attn.forward(x), self.drop_rate, rng)
            x = self.ln_1.forward(x + h)
            h, self.drop2 = dropout_forward(self.ff.forward(x), self.drop_rate, rng)
            return self.ln_2.forward(x + h)
        h, self.drop1 = dropout_forward(self.attn.forward(self.ln_1.forward(x)), self.drop_rate, rng)
        x = x + h                                                   # shortcut
        h, self.drop2 = dropout_forward(self.ff.forward(self.ln_2.forward(x)), self.drop_rate, rng)
        return x + h                                                # shortcut

    def backward(self, dout):
        # A shortcut y = x + f(x) passes dout straight through: dx = dout + f'(x)^T dout.
        if self.post_norm:
            d = self.ln_2.backward(dout)
            d = d + self.ff.backward(dropout_backward(d, self.drop2))
            d = self.ln_1.backward(d)
            return d + self.attn.backward(dropout_backward(d, self.drop1))
        d = dout + self.ln_2.backward(self.ff.backward(dropout_backward(dout, self.drop2)))
        return d + self.ln_1.backward(self.attn.backward(dropout_backward(d, self.drop1)))


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
        self.cfg = cfg
        self.dtype = backend.get_dtype(dtype)
        self.training = True
        self.seed = seed
        self.rng = backend.rng(seed + 1)          # dropout masks; the init uses its own stream
        xp = backend.xp

        shapes = parameter_shapes(cfg)
        # decayed (>= 2-D) tensors first, so weight decay applies to params[:n_decay]
        order = sorted(shapes, key=lambda k: len(shapes[k]) < 2)
        sizes = {k: math.prod(shapes[k]) for k in shapes}
        self.n_decay = sum(sizes[k] for k in shapes if len(shapes[k]) >= 2)
        total = sum(sizes.values())
        self.flat_params = xp.zeros(total, dtype=self.dtype)
        self.flat_grads = xp.zeros(total, dtype=self.dtype)
        offsets, at = {}, 0
        for k in order:
            offsets[k], at = at, at + sizes[k]
        self.params = {k: self.flat_params[offsets[k]:offsets[k] + sizes[k]].reshape(shapes[k]) for k in shapes}
        self.grad = {k: self.flat_grads[offsets[k]:offsets[k] + sizes[k]].reshape(shapes[k]) for k in shapes}
        if init:                  # init=False: all zeros, for a loader that overwrites every weight
            self._init_weights(seed)

        self.blocks = [TransformerBlock(self, i) for i in range(cfg.n_layers)]
        self.ln_f = LayerNorm(self, "transformer.ln_f.")
        self.head_name = "transformer.wte.weight" if cfg.tie_weights else "lm_head.weight"
        self._cache = None

    def _init_weights(self, seed):
        """GPT-2's init: N(0, 0.02) weights, residual projections scaled by 1/sqrt(2 n_layers),
        zero biases, LayerNorm weights 1. Drawn on the host so every backend gets the same model."""
        rng = numpy.random.default_rng(seed)
        for name, p in self.params.items():
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
                p[...] = 1.0
            elif p.ndim == 1:
                p[...] = 0.0
            else:
                std = 0.02 / math.sqrt(2 * self.cfg.n_layers) if name.endswith("c_proj.weight") else 0.02
                p[...] = backend.xp.asarray(rng.normal(0.0, std, p.shape).astype(self.dtype))

    # -- modes and bookkeeping
    def train(self, mode=True):
        self.training = mode
        return self

    def eval(self):
        return self.train(False)

    def dropout_rng(self):
        """The generator for dropout masks, or None when dropout is off (eval mode or p = 0)."""
        return self.rng if self.training and self.cfg.drop_rate > 0 else None

    def num_parameters(self):
        """Every parameter once (the tied head is the token embedding, so it counts once)."""
        return int(self.flat_params.size)

    def zero_grad(self):
        self.flat_grads[...] = 0

    def state_dict(self):
        """{name: array} views of the parameters (copy them to keep a snapshot)."""
        return dict(self.params)

    def grads(self):
        """{name: array} views of the gradients, the same names and shapes as state_dict()."""
        return dict(self.grad)

    def load_state_dict(self, d):
        """Copy arrays into the parameters; strict: names, shapes and dtypes must match."""
        missing = sorted(set(self.params) - set(d))
        extra = sorted(set(d) - set(self.params))
        if missing or extra:
            msg = []
            if missing:
                msg.append(f"missing {len(missing)} entr{'y' if len(missing) == 1 else 'ies'}: {missing[:5]}")
            if extra:
                msg.append(f"unexpected {len(extra)} entr{'y' if len(extra) == 1 else 'ies'}: {extra[:5]}")
            raise ValueError("state dict does not match the model: " + "; ".join(msg))
        for k, p in self.params.items():
            v = d[k]
            if tuple(v.shape) != p.shape:
                raise ValueError(f"state dict entry {k!r} has shape {tuple(v.shape)}, the model expects {p.shape}")
            if v.dtype != p.dtype:
                raise ValueError(f"state dict entry {k!r} has dtype {v.dtype}, the model expects {p.dtype}")
        for k, p in self.params.items():
            p[...] = backend.xp.asarray(d[k])

    # -- forward and backward
    def _check_ids(self, idx, what="token ids"):
        xp = backend.xp
        if isinstance(idx, (list, tuple)):
            idx = numpy.asarray(idx)
        if idx.dtype.kind not in "iu":
            raise ValueError(f"{what} must be integers, got dtype {idx.dtype}")
        if idx.ndim != 2:
            raise ValueError(f"{what} must have shape (batch, time), got shape {tuple(idx.shape)}")
        T = idx.shape[1]
        if T > self.cfg.context_length:
            raise ValueError(f"sequence length {T} is longer than the context length {self.cfg.context_length}")
        if T == 0:
            raise ValueError(f"{what} are empty: need at least one token per sequence")
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= self.cfg.vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"token id {bad} is outside the vocabulary (size {self.cfg.vocab_size})")
        return xp.asarray(idx)

    def forward(self, idx):
        """(B, T) token ids -> (B, T, vocab_size) logits; keeps what backward needs."""
        idx = self._check_ids(idx)
        self._loss_cache = None
        T = idx.shape[1]
        P = self.params
        tok, emb_cache = embedding_forward(idx, P["transformer.wte.weight"])   # (B, T, C)
        x = tok + P["transformer.wpe.weight"][:T]                              # + (T, C)
        x, drop_cache = dropout_forward(x, self.cfg.drop_rate, self.dropout_rng())
        self.activations = [x]              # the input to each block, then each block's output
        for block in self.blocks:
            x = block.forward(x)
            self.activations.append(x)
        x = self.ln_f.forward(x)
        logits, head_cache = linear_forward(x, P[self.head_name].T)             # (B, T, V)
        self._cache = (T, emb_cache, drop_cache, head_cache)
        return logits

    __call__ = forward

    def loss(self, idx, targets, ignore_index=-100):
        """Forward pass and mean cross-entropy against `targets` (B, T); returns a float."""
        t = targets if not isinstance(targets, (list, tuple)) else numpy.asarray(targets)
        if t.dtype.kind not in "iu":
            raise ValueError(f"targets must be integers, got dtype {t.dtype}")
        if tuple(t.shape) != tuple(numpy.shape(idx)):
            raise ValueError(f"targets have shape {tuple(t.shape)}, the inputs {tuple(numpy.shape(idx))}")
        bad = (t != ignore_index) & ((t < 0) | (t >= self.cfg.vocab_size))
        if bool(bad.any()):
            v = int(t[bad].reshape(-1)[0])
            raise ValueError(f"target id {v} is outside the vocabulary (size {self.cfg.vocab_size}) "
                             f"and is not ignore_index ({ignore_index})")
        logits = self.forward(idx)
        loss, self._loss_cache = cross_entropy_forward(logits, backend.xp.asarray(t), ignore_index)
        return float(loss)                  # the one device-to-host transfer of a training step

    def backward(self, dlogits=None):
        """Add the gradients into model.grads(): of the last `loss()` when dlogits is None,
        otherwise of sum(dlogits * logits) for any upstream gradient (B, T, V) of the last forward.

        Afterwards `self.activation_grads[i]` is the gradient at `self.activations[i]`
        (i = 0: the embeddings after dropout; i = l + 1: the output of block l).
        """
        if self._cache is None:
            raise RuntimeError("backward() needs a forward pass first: call model.loss(...) or model(idx)")
        if dlogits is None:
            if getattr(self, "_loss_cache", None) is None:
                raise RuntimeError("backward() without dlogits needs model.loss(idx, targets) first")
            dlogits = cross_entropy_backward(1.0, self._loss_cache)
        T, emb_cache, drop_cache, head_cache = self._cache
        dx, dw_head_t, _ = linear_backward(dlogits, head_cache)                  # dw: (C, V)
        self.grad[self.head_name] += dw_head_t.T                                  # tied: into wte
        dx = self.ln_f.backward(dx)
        self.activation_grads = [None] * (len(self.blocks) + 1)
        for i in reversed(range(len(self.blocks))):
            self.activation_grads[i + 1] = dx
            dx = self.blocks[i].backward(dx)
        self.activation_grads[0] = dx
        dx = dropout_backward(dx, drop_cache)
        self.grad["transformer.wpe.weight"][:T] += dx.sum(axis=0)                 # (B, T, C) -> (T, C)
        self.grad["transformer.wte.weight"] += embedding_backward(dx, emb_cache)  # scatter-add
        self._loss_cache = None
