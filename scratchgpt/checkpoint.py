"""Checkpoints: arrays and JSON in one `.npz` file, never pickle.

A checkpoint holds the parameters (`param/<GPT-2 name>`), optionally the AdamW moments
(`optim/m`, `optim/v`), and one JSON document (`meta.json`, stored as bytes) with the
config, the tokenizer, the optimizer's scalars, the names of frozen parameters (fine-tuning)
and the training state (iteration, RNG and data-sampler state), so a run can stop and
resume bit-exactly.

Writes are atomic: the file is written next to its destination under a temporary name,
flushed to disk, then renamed over the old one, so a kill at any moment leaves either the
old checkpoint or the new one, never half of one. Loads use `allow_pickle=False` and turn
anything unreadable into one `CheckpointError` that says which file and why.
"""
import json
import os
import zipfile
from dataclasses import dataclass

import numpy

from scratchgpt import backend
from scratchgpt.classifier import add_classification_head
from scratchgpt.files import atomic_write  # noqa: F401  (also used as checkpoint.atomic_write)
from scratchgpt.lora import add_lora
from scratchgpt.model import GPTConfig, GPTModel

FORMAT = "scratchgpt-checkpoint-v1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, truncated, corrupt, foreign or mismatched."""


@dataclass
class Checkpoint:
    model: GPTModel
    tokenizer: object            # CharTokenizer / BPETokenizer, or None
    optimizer_state: dict        # for AdamW.load_state_dict, or None
    train_state: dict            # iteration, RNG and sampler state, or None
    meta: dict


def save(path, model, tokenizer=None, optimizer=None, train_state=None):
    """Write a checkpoint atomically; `optimizer` and `train_state` are what `--resume` needs."""
    meta = {"format": FORMAT, "arch": getattr(model, "arch", "gpt2"), "config": model_config(model),
            "dtype": str(model.dtype),
            "tokenizer": tokenizer.to_dict() if tokenizer is not None else None,
            "frozen": sorted(model.frozen), "train_state": train_state}
    arrays = {f"param/{k}": backend.to_numpy(v) for k, v in model.state_dict().items()}
    if optimizer is not None:
        state = optimizer.state_dict()
        arrays["optim/m"] = backend.to_numpy(state.pop("m"))
        arrays["optim/v"] = backend.to_numpy(state.pop("v"))
        meta["optimizer"] = state
    arrays["meta.json"] = numpy.frombuffer(json.dumps(meta).encode("utf-8"), dtype=numpy.uint8)
    atomic_write(path, lambda f: numpy.savez(f, **arrays))


def read(path):
    """(meta, {name: array}) from a checkpoint file, or CheckpointError."""
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with numpy.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, zipfile.LargeZipFile) as e:
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt?): {e}") from None
    if "meta.json" not in arrays:
        raise CheckpointError(f"{path} is not a scratchgpt checkpoint (it has no meta.json entry)")
    try:
        meta = json.loads(arrays.pop("meta.json").tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} has an unreadable meta.json: {e}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} has format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta, arrays


def load(path, dtype=None, config=None):
    """Rebuild the model (and tokenizer, optimizer and training state) from a checkpoint.

    `config`, when given, must equal the checkpoint's (a resumed run may not change the model).
    """
    meta, arrays = read(path)
    arch = meta.get("arch", "gpt2")                 # no "arch": written before Llama 3 and Qwen3
    if arch not in ("gpt2", "llama3", "qwen3"):
        raise CheckpointError(f"{path} holds a {arch!r} model; known: gpt2, llama3, qwen3")
    try:
        if arch == "gpt2":
            cfg, extensions = split_config(meta["config"])
        else:
            cfg = llama_classes()[arch].config_class.from_dict(meta["config"])
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path} has an invalid model config: {e}") from None
    if config is not None and config != cfg:
        diff = {k: (v, getattr(config, k)) for k, v in cfg.to_dict().items() if getattr(config, k) != v}
        raise CheckpointError(f"{path} was trained with a different model config "
                              f"(checkpoint vs asked: {diff})")
    dtype = dtype or meta.get("dtype", "float32")
    if arch == "gpt2":
        model = build_model(cfg, extensions, dtype=dtype)
    else:
        model = llama_classes()[arch](cfg, dtype=dtype, init=False)
    params = {k[len("param/"):]: v.astype(model.dtype, copy=False)
              for k, v in arrays.items() if k.startswith("param/")}
    try:
        model.load_state_dict(params)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    frozen = set(meta.get("frozen") or ())          # none (or an older file): everything trains
    if frozen:                                      # fine-tuning froze these: keep them frozen
        unknown = sorted(frozen - set(model.params))
        if unknown:
            raise CheckpointError(f"{path} freezes {unknown[:2]}, which the model does not have")
        model.set_trainable([k for k in model.params if k not in frozen])
    tokenizer = None
    if meta.get("tokenizer") is not None:
        from scratchgpt.tokenizer import tokenizer_from_dict
        try:
            tokenizer = tokenizer_from_dict(meta["tokenizer"])
        except (KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"{path} has an unreadable tokenizer: {e}") from None
        if tokenizer.vocab_size > cfg.vocab_size:
            raise CheckpointError(f"{path}: the tokenizer has {tokenizer.vocab_size} tokens but the "
                                  f"model only {cfg.vocab_size}")
    optimizer_state = None
    if "optim/m" in arrays and "optimizer" in meta:
        optimizer_state = dict(meta["optimizer"], m=arrays["optim/m"], v=arrays["optim/v"])
    return Checkpoint(model, tokenizer, optimizer_state, meta.get("train_state"), meta)


def llama_classes():
    """The "arch" of a Llama 3 / Qwen3 checkpoint -> its model class (config: .config_class)."""
    from scratchgpt.llama import Llama3Model, Qwen3Model
    return {"llama3": Llama3Model, "qwen3": Qwen3Model}


# ---- the config: the book's GPTConfig plus what fine-tuning added -----------------------------
EXTENSION_KEYS = ("num_classes", "lora_rank", "lora_alpha", "lora_targets")


def model_config(model):
    """The JSON config of a model: GPTConfig's fields, and a classifier's or LoRA's settings."""
    return {**model.cfg.to_dict(), **model.extensions}


def split_config(d):
    """(GPTConfig, extensions) from a saved config; a zero num_classes / lora_rank means none."""
    d = dict(d)
    ext = {k: d.pop(k) for k in EXTENSION_KEYS if k in d}
    if not ext.get("lora_rank"):
        for k in ("lora_rank", "lora_alpha", "lora_targets"):
            ext.pop(k, None)
    if not ext.get("num_classes"):
        ext.pop("num_classes", None)
    return GPTConfig.from_dict(d), ext


def build_model(cfg, extensions=None, dtype="float32", seed=0):
    """A GPTModel (zeros, for a loader) with a classification head and/or LoRA adapters."""
    ext = extensions or {}
    model = GPTModel(cfg, seed=seed, dtype=dtype, init=False)
    if ext.get("num_classes"):
        model = add_classification_head(model, int(ext["num_classes"]))
    if ext.get("lora_rank"):
        model = add_lora(model, int(ext["lora_rank"]), float(ext["lora_alpha"]), ext.get("lora_targets", "all"),
                         freeze=False)
    return model
