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

The adapters are parameters of the model itself (config fields lora_rank, lora_alpha,
lora_targets add `...c_attn.lora_A` / `lora_B` to the state dict), so the optimizer, gradient
checks and checkpoints need nothing special; model.Linear calls the pair below.
"""
import dataclasses
import math
import os

import numpy

from scratchgpt import backend
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


# ---- adding, counting, saving and merging adapters ---------------------------------------
def parse_targets(spec):
    """"c_attn,c_fc" / ["attn.c_proj"] / "all" -> the block-relative names GPTConfig takes."""
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


def lora_parameter_count(cfg, rank, targets="all"):
    """Adapter parameters for a config, from shapes only (no 124M model is built)."""
    from scratchgpt.model import parameter_shapes
    shapes = parameter_shapes(dataclasses.replace(cfg, lora_rank=rank, lora_alpha=float(rank),
                                                  lora_targets=parse_targets(targets)))
    return sum(math.prod(s) for k, s in shapes.items() if ".lora_" in k)


def add_lora(model, rank, alpha=None, targets="all", seed=0, freeze=True, trainable=()):
    """A new model: `model`'s weights plus LoRA adapters (A random, B = 0) on `targets`.

    It computes exactly what `model` computes until B moves. With freeze=True every base
    weight is frozen and only the adapters (and the names in `trainable`, e.g. a new
    classification head "score") train.
    """
    if model.cfg.lora_rank:
        raise ValueError(f"the model already has LoRA adapters (rank {model.cfg.lora_rank}); "
                         "merge_lora(model) first to stack another set")
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    alpha = float(rank if alpha is None else alpha)
    cfg = dataclasses.replace(model.cfg, lora_rank=int(rank), lora_alpha=alpha,
                              lora_targets=parse_targets(targets))
    new = type(model)(cfg, seed=seed, dtype=model.dtype)        # adapters initialised here
    for k, v in model.params.items():
        new.params[k][...] = v
    new.rng = model.rng
    if freeze:
        new.freeze(lora_names(new) + list(trainable))
    return new


def merge_lora(model):
    """A plain model (no adapters) whose weights are W + (alpha / r) A B: the same logits."""
    cfg = model.cfg
    if not cfg.lora_rank:
        return model
    scale = cfg.lora_alpha / cfg.lora_rank
    plain = type(model)(dataclasses.replace(cfg, lora_rank=0, lora_alpha=0.0), dtype=model.dtype, init=False)
    for k, p in plain.params.items():
        p[...] = model.params[k]
        stem = k[:-len("weight")]
        if stem + "lora_A" in model.params:                        # W (in, out) += s A (in, r) B (r, out)
            p += scale * (model.params[stem + "lora_A"] @ model.params[stem + "lora_B"])
    return plain


def save_adapters(model, path):
    """The adapters alone, with what else trains (a classification head) and what is needed to
    re-attach them: an .npz without pickle, a few MB where the model is hundreds. Returns its size."""
    cfg = model.cfg
    if not cfg.lora_rank:
        raise ValueError("the model has no LoRA adapters to save")
    names = lora_names(model) + [k for k in model.trainable_names() if ".lora_" not in k]
    arrays = {k: backend.to_numpy(model.params[k]) for k in names}
    arrays["lora_rank"] = numpy.array(cfg.lora_rank)
    arrays["lora_alpha"] = numpy.array(cfg.lora_alpha)
    arrays["lora_targets"] = numpy.array(",".join(cfg.lora_targets))
    from scratchgpt.checkpoint import atomic_write
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
