"""Load a Hugging Face causal-LM folder: GPT-2, Llama (LlamaForCausalLM) or Qwen3 (Qwen3ForCausalLM).

    model = sg.load_hf("models/Llama-3.2-1B")          # config.json + model.safetensors
    model = sg.load_hf("models/Qwen3-0.6B", dtype="float64")

The weights come from `model.safetensors`, or from the shards a `model.safetensors.index.json`
lists; they are read without torch and without pickle (gpt2.read_safetensors). The state dict
keeps Hugging Face's names and shapes, so `model.state_dict()` and `model.grads()` line up with
the folder's tensors one to one. What our models cannot compute the same way (biases in the
attention, another activation, sliding-window attention, another RoPE scaling) is refused with
the setting's name rather than silently changed.
"""
import json
from pathlib import Path

import numpy as np

from scratchgpt.gpt2 import load_gpt2, read_safetensors
from scratchgpt.llama import Llama3Config, Llama3Model, Qwen3Config, Qwen3Model
from scratchgpt.tokenizer import BPETokenizer

ARCHITECTURES = {"GPT2LMHeadModel": "gpt2", "LlamaForCausalLM": "llama", "Qwen3ForCausalLM": "qwen3"}


def load_hf(folder, dtype="float32"):
    """A GPTModel, Llama3Model or Qwen3Model with the weights of a Hugging Face folder."""
    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"Hugging Face folder {path} does not exist (or is not a folder)")
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} has no config.json: a Hugging Face model folder holds config.json "
                                "next to model.safetensors")
    config = json.loads((path / "config.json").read_text())
    kind = _architecture(config, path)
    if kind == "gpt2":
        return load_gpt2(path, dtype=dtype)
    cls = Qwen3Model if kind == "qwen3" else Llama3Model
    cfg = config_from_hf(config, kind)
    tensors = _read_weights(path)
    if cfg.tie_weights:                  # a tied head may still be written out; it is the embedding
        tensors.pop("lm_head.weight", None)
    tensors = {k: v for k, v in tensors.items() if not k.endswith("rotary_emb.inv_freq")}
    model = cls(cfg, dtype=dtype, init=False)
    missing = sorted(set(model.params) - set(tensors))
    extra = sorted(set(tensors) - set(model.params))
    if missing or extra:
        raise ValueError(f"{path}'s weights do not match its config.json ({kind}, {cfg.n_layers} layers, "
                         f"tie_word_embeddings={cfg.tie_weights}): missing {missing[:5]}, unexpected {extra[:5]}")
    model.load_state_dict({k: np.asarray(v).astype(model.dtype) for k, v in tensors.items()})
    return model


def load_hf_tokenizer(folder):
    """The tokenizer of a Hugging Face folder: its tokenizer.json (Llama 3, Qwen3), or GPT-2's own
    vocabulary for a GPT-2 folder that has none."""
    path = Path(folder)
    if (path / "tokenizer.json").exists():
        return BPETokenizer.from_tokenizer_json(path / "tokenizer.json")
    config = json.loads((path / "config.json").read_text()) if (path / "config.json").exists() else {}
    if _architecture(config, path) == "gpt2":
        return BPETokenizer.gpt2()
    raise FileNotFoundError(f"{path} has no tokenizer.json (the Llama 3 / Qwen3 folders ship one)")


def load_hf_with_tokenizer(folder, dtype="float32"):
    """(model, tokenizer) for `sample`, `chat` and `eval --hf-dir`; checks they fit each other."""
    model, tok = load_hf(folder, dtype), load_hf_tokenizer(folder)
    if tok.vocab_size > model.cfg.vocab_size:
        raise ValueError(f"{folder}: the tokenizer has {tok.vocab_size} tokens, the model only {model.cfg.vocab_size}")
    return model, tok


def _architecture(config, path):
    names = config.get("architectures") or []
    for name in names:
        if name in ARCHITECTURES:
            return ARCHITECTURES[name]
    by_type = {"gpt2": "gpt2", "llama": "llama", "qwen3": "qwen3"}
    if not names and config.get("model_type") in by_type:
        return by_type[config["model_type"]]
    raise ValueError(f"{path}/config.json describes {names or config.get('model_type')!r}; "
                     f"load_hf supports {sorted(ARCHITECTURES)}")


def config_from_hf(config, kind):
    """config.json (LlamaConfig / Qwen3Config keys) -> Llama3Config / Qwen3Config (the book's keys)."""
    d = dict(config)
    unsupported = {"attention_bias": True, "mlp_bias": True, "use_sliding_window": True}
    for key, bad in unsupported.items():
        if d.get(key) == bad:
            raise ValueError(f"config.json sets {key}={bad}, which this model does not implement")
    if d.get("hidden_act", "silu") != "silu":
        raise ValueError(f"config.json's hidden_act is {d['hidden_act']!r}; only 'silu' (SwiGLU) is implemented")
    if d.get("pretraining_tp", 1) != 1:
        raise ValueError(f"config.json's pretraining_tp is {d['pretraining_tp']}; only 1 is implemented")
    missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                           "num_attention_heads") if k not in d]
    if missing:
        raise ValueError(f"config.json is missing {missing}")
    # transformers 5 writes rope_parameters {"rope_type", "rope_theta", ...}; older files rope_theta
    # and rope_scaling {"rope_type" (or "type"), ...}
    rope = dict(d.get("rope_parameters") or d.get("rope_scaling") or {})
    base = rope.pop("rope_theta", d.get("rope_theta", 10_000.0))
    kind_of_rope = rope.get("rope_type", rope.get("type", "default"))
    scaling = rope if kind_of_rope != "default" else None
    if scaling is not None and "original_max_position_embeddings" not in scaling:
        scaling["original_max_position_embeddings"] = d.get("max_position_embeddings")
    cfg_class = Qwen3Config if kind == "qwen3" else Llama3Config
    return cfg_class(
        vocab_size=d["vocab_size"], context_length=d.get("max_position_embeddings", 2048),
        emb_dim=d["hidden_size"], n_heads=d["num_attention_heads"], n_layers=d["num_hidden_layers"],
        hidden_dim=d["intermediate_size"], head_dim=d.get("head_dim") or 0,
        n_kv_groups=d.get("num_key_value_heads") or d["num_attention_heads"],
        qk_norm=kind == "qwen3", rope_base=float(base), rope_scaling=scaling,
        rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
        tie_weights=bool(d.get("tie_word_embeddings", kind == "qwen3")))


def _read_weights(path):
    """{name: array} from model.safetensors or every shard model.safetensors.index.json lists."""
    if (path / "model.safetensors").exists():
        return dict(read_safetensors(path / "model.safetensors"))
    if not (path / "model.safetensors.index.json").exists():
        have = sorted(p.name for p in path.iterdir())
        hint = (" pytorch_model.bin is a pickle file, which scratchgpt never loads: use the repository's "
                "safetensors files." if (path / "pytorch_model.bin").exists() else "")
        raise FileNotFoundError(f"{path} has no model.safetensors and no model.safetensors.index.json "
                                f"(it has {have[:10]}).{hint}")
    index = json.loads((path / "model.safetensors.index.json").read_text())
    weight_map = index.get("weight_map") or {}
    tensors = {}
    for f in sorted(set(weight_map.values())):
        if not (path / f).exists():
            raise FileNotFoundError(f"{path / f} is missing (model.safetensors.index.json lists it)")
        shard = read_safetensors(path / f)
        tensors.update({k: v for k, v in shard.items() if weight_map.get(k) == f})
    lost = sorted(set(weight_map) - set(tensors))
    if lost:
        raise ValueError(f"model.safetensors.index.json lists tensors its shards do not hold: {lost[:5]}")
    return tensors
