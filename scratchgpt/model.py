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
import fnmatch
import math
from dataclasses import asdict, dataclass, fields

import numpy  # host-side only: input checks and the seeded init

from scratchgpt import backend
from scratchgpt.lora import lora_backward, lora_forward
from scratchgpt.ops import (attention_backward, attention_forward, cross_entropy_backward,
                            cross_entropy_forward, dropout_backward, dropout_forward,
                            embedding_backward, embedding_forward, gelu_backward, gelu_forward,
                            layernorm_backward, layernorm_forward, linear_backward, linear_forward)

LORA_TARGETS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")   # every linear of a block


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
    num_classes: int = 0            # > 0: chapter 6's classification head `score` replaces the LM head
    lora_rank: int = 0              # > 0: appendix E's LoRA adapters on the linears in lora_targets
    lora_alpha: float = 0.0         # LoRA scale alpha / rank
    lora_targets: tuple = LORA_TARGETS

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
        if self.num_classes < 0 or self.lora_rank < 0:
            raise ValueError(f"num_classes and lora_rank must be >= 0, got {self.num_classes}, {self.lora_rank}")
        if self.lora_rank and self.lora_alpha <= 0:
            raise ValueError(f"lora_alpha must be > 0 with lora_rank {self.lora_rank}, got {self.lora_alpha} "
                             f"(alpha = rank scales the update by 1)")
        self.lora_targets = tuple(self.lora_targets)          # JSON gives back a list
        unknown = sorted(set(self.lora_targets) - set(LORA_TARGETS))
        if unknown:
            raise ValueError(f"unknown lora_targets {unknown}: choose from {list(LORA_TARGETS)}")

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
    if cfg.num_classes:             # chapter 6: emb_dim -> num_classes, laid out like lm_head (out, in)
        shapes.update({"score.weight": (cfg.num_classes, C), "score.bias": (cfg.num_classes,)})
    elif not cfg.tie_weights:
        shapes["lm_head.weight"] = (V, C)
    # appendix E: W (in, out) gets A (in, r) and B (r, out); last, so a base model's init is unchanged
    for i in range(cfg.n_layers if cfg.lora_rank else 0):
        for t in cfg.lora_targets:
            d_in, d_out = shapes[f"transformer.h.{i}.{t}.weight"]
            shapes[f"transformer.h.{i}.{t}.lora_A"] = (d_in, cfg.lora_rank)
            shapes[f"transformer.h.{i}.{t}.lora_B"] = (cfg.lora_rank, d_out)
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


class LayerNorm(Layer):
    """The book's LayerNorm: `scale` and `shift` are GPT-2's `weight` and `bias`."""

    def forward(self, x):
        out, self.cache = layernorm_forward(x, self.p["weight"], self.p["bias"])
        return out

    def backward(self, dout):
        dx, dw, db = layernorm_backward(dout, self.cache)
        if self.trains("weight"):
            self.g["weight"] += dw
        if self.trains("bias"):
            self.g["bias"] += db
        return dx


class Linear(Layer):
    """y = x @ weight + bias (GPT-2's layout: weight (in, out)); with LoRA (appendix E)
    also + (alpha / r) (x @ lora_A) @ lora_B, see scratchgpt.lora."""

    def forward(self, x):
        out, self.cache = linear_forward(x, self.p["weight"], self.p.get("bias"))   # (..., out)
        if "lora_A" in self.p:
            cfg = self.model.cfg
            y, self.lora_cache = lora_forward(x, self.p["lora_A"], self.p["lora_B"],
                                              cfg.lora_alpha / cfg.lora_rank)
            out += y
        return out

    def backward(self, dout):
        if self.trains("weight"):
            # dW is added straight into the gradient buffer (no weight-sized temporary)
            dx, _, db = linear_backward(dout, self.cache, dw_out=self.g["weight"])
        else:   # a frozen weight: only dx = dout @ W^T, no dW GEMM
            x, w, _ = self.cache
            dout2 = dout.reshape(-1, dout.shape[-1])                                 # (N, out)
            dx = (dout2 @ w.T).reshape(x.shape)                                      # (..., in)
            db = dout2.sum(axis=0) if "bias" in self.p else None
        if db is not None and self.trains("bias"):
            self.g["bias"] += db
        if "lora_A" in self.p:
            dx_lora, da, dbb = lora_backward(dout, self.lora_cache)
            dx += dx_lora
            if self.trains("lora_A"):
                self.g["lora_A"] += da
            if self.trains("lora_B"):
                self.g["lora_B"] += dbb
        return dx


class GELU:
    def __init__(self, approximate="tanh"):
        self.approximate = approximate

    def forward(self, x):
        out, self.cache = gelu_forward(x, self.approximate)
        return out

    def backward(self, dout):
        return gelu_backward(dout, self.cache, self.approximate)


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


class MultiHeadAttention:
    """c_attn (fused q, k, v) -> causal multi-head attention -> c_proj (ops/attention.py)."""

    def __init__(self, model, prefix, n_heads, drop_rate):
        self.c_attn = Linear(model, prefix + "c_attn.")
        self.c_proj = Linear(model, prefix + "c_proj.")
        self.n_heads, self.drop_rate, self.model = n_heads, drop_rate, model

    def forward(self, x):
        qkv = self.c_attn.forward(x)                                  # (B, T, 3C)
        y, core_cache = attention_forward(qkv, self.n_heads, self.drop_rate, self.model.dropout_rng())
        out = self.c_proj.forward(y)                                  # (B, T, C)
        self.cache = (self.c_attn.cache, core_cache, self.c_proj.cache)   # multihead_attention_forward's layout
        return out

    def backward(self, dout):
        dqkv = attention_backward(self.c_proj.backward(dout), self.cache[1])
        return self.c_attn.backward(dqkv)


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
        model.freeze(["transformer.h.11", "transformer.ln_f"])   # fine-tuning: only these train
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

        self.frozen = set()       # names that get no gradient, see set_trainable
        self.blocks = [TransformerBlock(self, i) for i in range(cfg.n_layers)]
        self.ln_f = LayerNorm(self, "transformer.ln_f.")
        if cfg.num_classes:
            self.head_name = "score.weight"
        else:
            self.head_name = "transformer.wte.weight" if cfg.tie_weights else "lm_head.weight"
        self.set_trainable(None)
        self._cache = None

    def _init_weights(self, seed):
        """GPT-2's init: N(0, 0.02) weights, residual projections scaled by 1/sqrt(2 n_layers),
        zero biases, LayerNorm weights 1. Drawn on the host so every backend gets the same model."""
        rng = numpy.random.default_rng(seed)
        for name, p in self.params.items():
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
                p[...] = 1.0
            elif p.ndim == 1 or name.endswith("lora_B"):     # LoRA starts as the identity: B = 0
                p[...] = 0.0
            elif name.endswith("lora_A"):   # the book's kaiming_uniform_(A, a=sqrt(5)): fan_in = rank
                bound = 1.0 / math.sqrt(p.shape[1])
                p[...] = backend.xp.asarray(rng.uniform(-bound, bound, p.shape).astype(self.dtype))
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

    def __deepcopy__(self, memo):
        """A true copy: a new model whose layers view *its own* flat buffers (a field-by-field
        deepcopy would leave the layers pointing at copies that no longer share memory)."""
        new = GPTModel(self.cfg, seed=self.seed, dtype=self.dtype, init=False)
        new.flat_params[...] = self.flat_params
        new.flat_grads[...] = self.flat_grads
        new.rng.bit_generator.state = self.rng.bit_generator.state
        if self.frozen:
            new.set_trainable([k for k in self.params if k not in self.frozen])
        return new.train(self.training)

    def num_parameters(self):
        """Every parameter once (the tied head is the token embedding, so it counts once)."""
        return int(self.flat_params.size)

    def zero_grad(self):
        if not self.frozen:
            self.flat_grads[...] = 0
            return
        for k in self.trainable_names():      # frozen gradients are never written: they stay 0
            self.grad[k][...] = 0

    # -- freezing (chapters 6 and 7, appendix E)
    def set_trainable(self, names=None):
        """Train only the parameters `names` selects; None trains all of them (the default).

        An entry selects a parameter by its full name, a prefix ending at a dot
        ("transformer.h.1" selects block 1, not blocks 10 and 11) or a glob ("*.lora_A").
        Frozen parameters get no gradient at all: backward() never goes below the lowest block
        that holds a trainable parameter, skips the dW GEMM of a frozen linear weight, and
        leaves their entries in grads() exactly zero. The optimizer must not touch them either:
        pass AdamW a scratchgpt.optim.TrainableParams(model), which holds only the trainable
        ones (AdamW(model) refuses a model with frozen parameters).
        """
        self.flat_grads[...] = 0
        if names is None:
            self.frozen = set()
        else:
            names = [names] if isinstance(names, str) else list(names)
            picked = {n: {k for k in self.params if _selects(n, k)} for n in names}
            unknown = [n for n, ks in picked.items() if not ks]
            if unknown:
                raise ValueError(f"no parameter is named or starts with {unknown[0]!r} "
                                 f"(names look like {next(iter(self.params))!r})")
            self.frozen = set(self.params) - set().union(*picked.values())
        trains = [any(k not in self.frozen for k in self.params if k.startswith(f"transformer.h.{i}."))
                  for i in range(self.cfg.n_layers)]
        self._train_embeddings = not {"transformer.wte.weight", "transformer.wpe.weight"} <= self.frozen
        # backward runs blocks lowest_block..n_layers-1; everything below them is frozen
        self.lowest_block = 0 if self._train_embeddings else next(
            (i for i, t in enumerate(trains) if t), self.cfg.n_layers)
        return self

    def freeze(self, trainable=()):
        """Freeze every parameter except `trainable` (as in set_trainable). The book's chapter 6
        recipe: model.freeze(["transformer.h.11", "transformer.ln_f", "score"])."""
        return self.set_trainable(list(trainable))

    def trainable_names(self):
        return [k for k in self.params if k not in self.frozen]

    def num_trainable_parameters(self):
        return sum(int(self.params[k].size) for k in self.trainable_names())

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
        """(B, T) token ids -> (B, T, vocab_size) logits (num_classes with a classification
        head); keeps what backward needs."""
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
        logits, head_cache = linear_forward(x, P[self.head_name].T, P.get("score.bias"))  # (B, T, V)
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
        (i = 0: the embeddings after dropout; i = l + 1: the output of block l); with frozen
        parameters (set_trainable) the backward stops at the input of model.lowest_block and
        the entries below it stay None.
        """
        if self._cache is None:
            raise RuntimeError("backward() needs a forward pass first: call model.loss(...) or model(idx)")
        if dlogits is None:
            if getattr(self, "_loss_cache", None) is None:
                raise RuntimeError("backward() without dlogits needs model.loss(idx, targets) first")
            dlogits = cross_entropy_backward(1.0, self._loss_cache)
        T, emb_cache, drop_cache, head_cache = self._cache
        if self.head_name in self.frozen:                                         # only dx, no dW GEMM
            B, _, V = dlogits.shape
            dx = (dlogits.reshape(-1, V) @ self.params[self.head_name]).reshape(B, T, -1)   # (B, T, C)
        else:
            # dW (C, V) added straight into the (V, C) gradient of wte (tied) through a
            # transposed view: no 154 MB temporary for GPT-2's head
            dx, _, db = linear_backward(dlogits, head_cache, dw_out=self.grad[self.head_name].T)
            if db is not None and "score.bias" not in self.frozen:
                self.grad["score.bias"] += db
        dx = self.ln_f.backward(dx)
        self.activation_grads = [None] * (len(self.blocks) + 1)
        for i in reversed(range(self.lowest_block, len(self.blocks))):
            self.activation_grads[i + 1] = dx
            dx = self.blocks[i].backward(dx)
        self.activation_grads[self.lowest_block] = dx
        if self._train_embeddings:
            dx = dropout_backward(dx, drop_cache)
            if "transformer.wpe.weight" not in self.frozen:
                self.grad["transformer.wpe.weight"][:T] += dx.sum(axis=0)          # (B, T, C) -> (T, C)
            if "transformer.wte.weight" not in self.frozen:
                embedding_backward(dx, emb_cache, out=self.grad["transformer.wte.weight"])  # scatter-add into it
        self._loss_cache = None


def _selects(entry, name):
    """set_trainable's rule: the full name, a dotted prefix, or a glob pattern."""
    if any(c in entry for c in "*?["):
        return fnmatch.fnmatchcase(name, entry)
    return name == entry or name.startswith(entry.rstrip(".") + ".")
