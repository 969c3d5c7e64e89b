"""LoRA, low-rank adaptation (the book's appendix E; Hu et al. 2021).

A frozen linear layer y = x W + b (W stored (in, out), GPT-2's layout) learns a low-rank
update instead of a new W:

    y = x W + b + (alpha / r) (x A) B          A (in, r), B (r, out), r << min(in, out)

A starts random (the book's kaiming_uniform_(A, a=sqrt(5)): U(-1/sqrt(r), 1/sqrt(r)), since
torch takes fan_in = A.shape[1] = r) and B at zero, so training starts from exactly the
pretrained model. Only A and B train: r (in + out) numbers per layer instead of in * out.
The book's printed code scales by alpha; we scale by alpha / r as the LoRA paper (and the
book's later code) does, so the book's rank 16, alpha 16 is alpha / r = 1 here.

For inference the update folds into the weight, W' = W + (alpha / r) A B (still (in, out):
x W' = x W + (alpha / r) (x A) B), and the model is a plain GPT again.

    model = add_lora(model, rank=16, alpha=16)       # a new model: base weights + fresh adapters
    model.freeze(lora_names(model))                  # (add_lora does this) only A and B train
    save_adapters(model, "adapters.npz")             # A and B only (a few MB for GPT-2)
    plain = merge_lora(model)                        # W + (alpha / r) A B, no adapters left

The adapters are parameters of the model itself (`...c_attn.lora_A` / `lora_B` join the flat
buffer and the state dict), so the optimizer, gradient checks and checkpoints need nothing
special; add_lora swaps each target Linear of the model for a LoRALinear, which adds the pair
below to the plain linear's forward and backward.
"""
import math
import os

import numpy

from scratchgpt import backend
from scratchgpt.files import atomic_write
from scratchgpt.model import GPTModel, Linear
from scratchgpt.ops.linear import linear_forward

TARGET_ALIASES = {"c_attn": ("attn.c_attn",), "c_fc": ("mlp.c_fc",), "c_proj": ("attn.c_proj", "mlp.c_proj"),
                  "attn.c_attn": ("attn.c_attn",), "attn.c_proj": ("attn.c_proj",),
                  "mlp.c_fc": ("mlp.c_fc",), "mlp.c_proj": ("mlp.c_proj",),
                  "attn": ("attn.c_attn", "attn.c_proj"), "mlp": ("mlp.c_fc", "mlp.c_proj"),
                  "all": ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}


# ---- the op ------------------------------------------------------------------------------
def lora_forward(x, A, B, scale):
    """y = scale * (x @ A) @ B      (..., in) -> (..., r) -> (..., out)"""
    h, _ = linear_forward(x, A)                        # (..., r)   (one BLAS call over all rows)
    y, _ = linear_forward(h, B)                        # (..., out)
    y *= scale
    return y, (x, h, A, B, scale)


def lora_backward(dy, cache):
    """With g = scale * dy:  dB = h^T g,  dh = g B^T,  dA = x^T dh,  dx = dh A^T   (h = x A)."""
    x, h, A, B, scale = cache
    g = dy.reshape(-1, dy.shape[-1]) * scale           # (N, out)
    h2, x2 = h.reshape(-1, h.shape[-1]), x.reshape(-1, x.shape[-1])
    dB = h2.T @ g                                      # (r, N) @ (N, out) -> (r, out)
    dh = g @ B.T                                       # (N, out) @ (out, r) -> (N, r)
    dA = x2.T @ dh                                     # (in, N) @ (N, r) -> (in, r)
    dx = (dh @ A.T).reshape(x.shape)                   # (N, r) @ (r, in) -> (..., in)
    return dx, dA, dB


class LoRALinear(Linear):
    """A Linear with adapters: y = x W + b + scale (x A) B, scale = alpha / r."""

    def __init__(self, model, prefix, scale):
        super().__init__(model, prefix)
        self.scale = scale

    def forward(self, x):
        out = super().forward(x)                                      # x W + b
        y, self.lora_cache = lora_forward(x, self.p["lora_A"], self.p["lora_B"], self.scale)
        return out + y

    def backward(self, dout):
        dx = super().backward(dout)                                   # through x W + b (W frozen or not)
        dx_lora, dA, dB = lora_backward(dout, self.lora_cache)
        if self.trains("lora_A"):
            self.g["lora_A"] += dA
        if self.trains("lora_B"):
            self.g["lora_B"] += dB
        return dx + dx_lora


# ---- adding, counting, saving and merging adapters ---------------------------------------
def parse_targets(spec):
    """"c_attn,c_fc" / ["attn.c_proj"] / "all" -> the block-relative names of the linears."""
    items = [t.strip() for t in spec.split(",")] if isinstance(spec, str) else list(spec)
    out = []
    for t in items:
        if t not in TARGET_ALIASES:
            raise ValueError(f"unknown LoRA target {t!r}: use any of {', '.join(TARGET_ALIASES)}")
        out += [n for n in TARGET_ALIASES[t] if n not in out]
    return tuple(out)


def lora_names(model):
    """The names of the adapter matrices (what trains in LoRA fine-tuning)."""
    return [k for k in model.params if k.endswith(".lora_A") or k.endswith(".lora_B")]


def adapter_shapes(cfg, rank, targets="all"):
    """{name: shape} of the adapters: W (in, out) gets A (in, r) and B (r, out)."""
    C = cfg.emb_dim
    sizes = {"attn.c_attn": (C, 3 * C), "attn.c_proj": (C, C), "mlp.c_fc": (C, 4 * C), "mlp.c_proj": (4 * C, C)}
    shapes = {}
    for i in range(cfg.n_layers):
        for t in parse_targets(targets):
            d_in, d_out = sizes[t]
            shapes[f"transformer.h.{i}.{t}.lora_A"] = (d_in, rank)
            shapes[f"transformer.h.{i}.{t}.lora_B"] = (rank, d_out)
    return shapes


def lora_parameter_count(cfg, rank, targets="all"):
    """Adapter parameters for a config, from shapes only (no 124M model is built)."""
    return sum(math.prod(s) for s in adapter_shapes(cfg, rank, targets).values())


def _slot(block, target):
    """(layer, attribute) holding the linear `target` ("attn.c_attn", ...) of a TransformerBlock."""
    part, name = target.split(".")
    return (block.att if part == "attn" else block.ff), name


def add_lora(model, rank, alpha=None, targets="all", seed=0, freeze=True, trainable=()):
    """A new model: `model`'s weights plus LoRA adapters (A random, B = 0) on `targets`.

    It computes exactly what `model` computes until B moves. With freeze=True every base
    weight is frozen and only the adapters (and the names in `trainable`, e.g. a new
    classification head "score") train.
    """
    if model.extensions.get("lora_rank"):
        raise ValueError(f"the model already has LoRA adapters (rank {model.extensions['lora_rank']}); "
                         "merge_lora(model) first to stack another set")
    if int(rank) != rank or rank < 1:
        raise ValueError(f"LoRA rank must be a positive integer, got {rank}")
    rank, alpha, targets = int(rank), float(rank if alpha is None else alpha), parse_targets(targets)
    if alpha <= 0:
        raise ValueError(f"lora_alpha must be > 0, got {alpha} (alpha = rank scales the update by 1)")
    new = model.with_extra_params(adapter_shapes(model.cfg, rank, targets))
    rng = numpy.random.default_rng(seed)
    bound = 1.0 / math.sqrt(rank)           # the book's kaiming_uniform_(A, a=sqrt(5)): fan_in = rank
    for i, block in enumerate(new.trf_blocks):
        for t in targets:
            prefix = f"transformer.h.{i}.{t}."
            A = new.params[prefix + "lora_A"]
            A[...] = backend.xp.asarray(rng.uniform(-bound, bound, A.shape).astype(new.dtype))   # B stays 0
            layer, attr = _slot(block, t)
            setattr(layer, attr, LoRALinear(new, prefix, alpha / rank))
    new.extensions.update(lora_rank=rank, lora_alpha=alpha, lora_targets=list(targets))
    if freeze:
        new.freeze(lora_names(new) + list(trainable))
    return new


def merge_lora(model):
    """A plain model (no adapters) whose weights are W + (alpha / r) A B: the same logits."""
    ext = model.extensions
    if not ext.get("lora_rank"):
        return model
    from scratchgpt.classifier import add_classification_head
    scale = ext["lora_alpha"] / ext["lora_rank"]
    plain = GPTModel(model.cfg, seed=model.seed, dtype=model.dtype, init=False)
    if ext.get("num_classes"):
        plain = add_classification_head(plain, ext["num_classes"])
    for k, p in plain.params.items():
        p[...] = model.params[k]
        stem = k[:-len("weight")]
        if stem + "lora_A" in model.params:                        # W (in, out) += s A (in, r) B (r, out)
            p += scale * (model.params[stem + "lora_A"] @ model.params[stem + "lora_B"])
    plain.rng = model.rng
    return plain.train(model.training)


def save_adapters(model, path):
    """The adapters alone, with what else trains (a classification head) and what is needed to
    re-attach them: an .npz without pickle, a few MB where the model is hundreds. Returns its size."""
    ext = model.extensions
    if not ext.get("lora_rank"):
        raise ValueError("the model has no LoRA adapters to save")
    names = lora_names(model) + [k for k in model.trainable_names() if ".lora_" not in k]
    arrays = {k: backend.to_numpy(model.params[k]) for k in names}
    arrays["lora_rank"] = numpy.array(ext["lora_rank"])
    arrays["lora_alpha"] = numpy.array(ext["lora_alpha"])
    arrays["lora_targets"] = numpy.array(",".join(ext["lora_targets"]))
    atomic_write(path, lambda f: numpy.savez(f, **arrays))
    return os.path.getsize(path)


def load_adapters(model, path):
    """`model` (the base, with a classification head if one was trained) with the adapters saved
    in `path` attached (unmerged) and any other saved parameters (that head) restored."""
    with numpy.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    try:
        rank, alpha = int(arrays.pop("lora_rank")), float(arrays.pop("lora_alpha"))
        targets = str(arrays.pop("lora_targets"))
    except KeyError as e:
        raise ValueError(f"{path} is not a LoRA adapter file (no {e.args[0]} entry)") from None
    new = add_lora(model, rank, alpha, targets.split(","), freeze=False)
    missing = sorted(set(lora_names(new)) - set(arrays))
    unknown = sorted(set(arrays) - set(new.params))
    if missing or unknown:
        raise ValueError(f"{path} does not fit this model: "
                         + (f"it lacks {missing[:2]} " if missing else "")
                         + (f"it has {unknown[:2]}, which the model does not" if unknown else ""))
    for k, a in arrays.items():
        if a.shape != new.params[k].shape:
            raise ValueError(f"{path}: {k} has shape {a.shape}, the model expects {new.params[k].shape}")
        new.params[k][...] = backend.xp.asarray(a.astype(new.dtype))
    return new
