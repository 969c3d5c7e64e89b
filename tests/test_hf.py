"""load_hf and Llama3Model / Qwen3Model against Hugging Face transformers: random weights the test
writes with save_pretrained (safetensors), tiny configs; logits, loss and every gradient equal in
float64 to 1e-9 relative.

transformers keeps three float32 islands even in a float64 model: RMSNorm casts to float32, the
rotary tables are computed in float32, and eager attention's softmax runs in float32. They would
cap any float64 comparison near 1e-7, so `hf_float64` runs those three steps in float64 (the same
formulas, the same order) and uses SDPA attention, which stays in the tensors' dtype. The rotary
frequencies handed to transformers are ours, after checking they equal its own float32 ones to
float32 rounding (tests/test_ops_rope.py checks Llama 3's scaling the same way)."""
import json

import numpy as np
import pytest

import scratchgpt as sg
from conftest import assert_close
from ops_helpers import import_transformers
from scratchgpt.generate import generate
from scratchgpt.ops.rope import rope_inv_freq

transformers = import_transformers()
torch = pytest.importorskip("torch")
from transformers.models.llama import modeling_llama  # noqa: E402
from transformers.models.qwen3 import modeling_qwen3  # noqa: E402


def _rmsnorm_in_dtype(self, h):
    return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


def _rotary_in_dtype(self, x, position_ids):
    freqs = position_ids[..., None].to(self.inv_freq.dtype) * self.inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(x.dtype)


@pytest.fixture
def hf_float64(monkeypatch):
    for m, prefix in ((modeling_llama, "Llama"), (modeling_qwen3, "Qwen3")):
        monkeypatch.setattr(getattr(m, prefix + "RMSNorm"), "forward", _rmsnorm_in_dtype)
        monkeypatch.setattr(getattr(m, prefix + "RotaryEmbedding"), "forward", _rotary_in_dtype)


LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 16}


def hf_config(kind, tie, n_kv, head_dim=None, scaling=None):
    common = dict(vocab_size=61, hidden_size=24, intermediate_size=40, num_hidden_layers=2,
                  num_attention_heads=6, num_key_value_heads=n_kv, max_position_embeddings=32,
                  tie_word_embeddings=tie, attn_implementation="sdpa")
    if kind == "qwen3":
        return transformers.Qwen3Config(**common, head_dim=head_dim or 4, rms_norm_eps=1e-6,
                                        rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    rope = {"rope_theta": 5e5, **(scaling or {"rope_type": "default"})}
    return transformers.LlamaConfig(**common, rms_norm_eps=1e-5, rope_parameters=rope)


def write_hf_model(folder, kind, tie, n_kv, head_dim=None, scaling=None, max_shard_size=None):
    """A transformers model with random weights (norm weights near 1), saved as safetensors."""
    torch.manual_seed(0)
    cls = transformers.Qwen3ForCausalLM if kind == "qwen3" else transformers.LlamaForCausalLM
    hf = cls(hf_config(kind, tie, n_kv, head_dim, scaling)).double().eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_(1.0 + 0.2 * torch.randn_like(p) if name.endswith("norm.weight") else 0.3 * torch.randn_like(p))
    kw = {"max_shard_size": max_shard_size} if max_shard_size else {}
    hf.save_pretrained(folder, **kw)
    return hf


def use_our_inv_freq(hf, cfg):
    rot = hf.model.rotary_emb
    ours = rope_inv_freq(cfg.head_dim, cfg.rope_base, cfg.rope_scaling)
    np.testing.assert_allclose(ours, rot.inv_freq.double().numpy(), rtol=1e-6)   # transformers': float32
    rot.inv_freq = torch.tensor(ours)


def compare(hf, model, dtype=np.float64):
    rng = np.random.default_rng(1)
    idx = rng.integers(0, 61, size=(2, 9))
    idx, targets = idx[:, :-1], idx[:, 1:]
    use_our_inv_freq(hf, model.cfg)
    loss = model.loss(idx, targets)
    model.zero_grad()
    model.backward()
    logits = model(idx)
    ref_logits = hf(torch.tensor(idx)).logits
    ref_loss = torch.nn.functional.cross_entropy(ref_logits.reshape(-1, 61), torch.tensor(targets).reshape(-1))
    hf.zero_grad()
    ref_loss.backward()
    assert_close(logits, ref_logits, dtype, "logits")
    assert_close(np.array(loss), ref_loss, dtype, "loss")
    ref_grads = {k: p.grad for k, p in hf.named_parameters()}
    assert sorted(ref_grads) == sorted(model.grads())                # HF's names, nothing more or less
    for k, g in model.grads().items():
        assert tuple(g.shape) == tuple(ref_grads[k].shape), k
        assert_close(g, ref_grads[k], dtype, k)


CASES = {  # kind, tied head, key/value heads, head_dim, rope scaling
    "llama-gqa-tied": ("llama", True, 2, None, None),
    "llama-mha-untied-rope-scaling": ("llama", False, 6, None, LLAMA3_SCALING),
    "llama-mqa": ("llama", True, 1, None, None),
    "qwen3-qknorm-head_dim-apart-untied": ("qwen3", False, 3, 8, None),
    "qwen3-tied": ("qwen3", True, 2, 6, None),
}


@pytest.mark.parametrize("case", CASES)
def test_load_hf_matches_transformers_in_float64(tmp_path, hf_float64, case):
    kind, tie, n_kv, head_dim, scaling = CASES[case]
    hf = write_hf_model(tmp_path, kind, tie, n_kv, head_dim, scaling)
    model = sg.load_hf(tmp_path, dtype="float64")
    assert type(model) is (sg.Qwen3Model if kind == "qwen3" else sg.Llama3Model)
    assert ("lm_head.weight" in model.state_dict()) == (not tie)
    if head_dim:
        assert model.cfg.head_dim * model.cfg.n_heads != model.cfg.emb_dim
    for k, v in hf.state_dict().items():
        if k in model.state_dict():
            np.testing.assert_array_equal(model.state_dict()[k], v.numpy())
    compare(hf, model)


def test_float32_model_is_within_1e_4_of_float64_transformers(tmp_path, hf_float64):
    hf = write_hf_model(tmp_path, "qwen3", False, 2, 8)
    model = sg.load_hf(tmp_path, dtype="float32")
    assert model.flat_params.dtype == np.float32
    compare(hf, model, dtype=np.float32)


def test_sharded_folder_loads(tmp_path, hf_float64):
    hf = write_hf_model(tmp_path, "llama", False, 2, max_shard_size="20KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1 and not (tmp_path / "model.safetensors").exists()
    compare(hf, sg.load_hf(tmp_path, dtype="float64"))


def test_kv_cache_chunks_give_the_full_forward(tmp_path):
    write_hf_model(tmp_path, "qwen3", True, 2, 8)
    model = sg.load_hf(tmp_path, dtype="float64")
    idx = np.random.default_rng(2).integers(0, 61, size=(2, 10))
    cache = model.kv_cache(2)
    parts = [model(idx[:, :6], kv_cache=cache), model(idx[:, 6:7], kv_cache=cache), model(idx[:, 7:], kv_cache=cache)]
    np.testing.assert_allclose(np.concatenate(parts, axis=1), model(idx), rtol=1e-12, atol=1e-12)
    assert cache.length == 10
    with pytest.raises(RuntimeError, match="without a KV cache"):
        model(idx, kv_cache=model.kv_cache(2))
        model.backward(np.ones((2, 10, 61)))


def test_generate_greedy_matches_transformers(tmp_path, hf_float64):
    hf = write_hf_model(tmp_path, "llama", True, 2)
    model = sg.load_hf(tmp_path, dtype="float64")
    use_our_inv_freq(hf, model.cfg)
    prompt = np.array([[5, 17, 3, 42]])
    ours = generate(model, prompt, max_new_tokens=8)
    ref = hf.generate(torch.tensor(prompt), max_new_tokens=8, do_sample=False, pad_token_id=0)
    np.testing.assert_array_equal(ours, ref.numpy())


def test_missing_and_unsupported_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        sg.load_hf(tmp_path)
    hf_config("llama", True, 2).save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no model.safetensors and no model.safetensors.index.json"):
        sg.load_hf(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "architectures": ["MistralForCausalLM"]}))
    with pytest.raises(ValueError, match="MistralForCausalLM.*supports"):
        sg.load_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "attention_bias": True}))
    with pytest.raises(ValueError, match="attention_bias=True"):
        sg.load_hf(tmp_path)


def test_tied_folder_that_also_writes_lm_head_loads_tied(tmp_path):
    """Some published tied checkpoints store lm_head.weight too; the head is the embedding."""
    from scratchgpt.gpt2 import read_safetensors, write_safetensors
    write_hf_model(tmp_path, "qwen3", True, 2, 8)
    tensors = dict(read_safetensors(tmp_path / "model.safetensors"))
    assert "lm_head.weight" not in tensors
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].copy()
    write_safetensors(tmp_path / "model.safetensors", tensors, {"format": "pt"})
    model = sg.load_hf(tmp_path, dtype="float64")
    assert "lm_head.weight" not in model.state_dict() and model.cfg.tie_weights


def test_load_hf_reads_a_gpt2_folder_too(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=61, n_positions=32, n_embd=24, n_layer=2, n_head=4,
                                  attn_implementation="sdpa")
    hf = transformers.GPT2LMHeadModel(cfg).double().eval()
    hf.save_pretrained(tmp_path)
    model = sg.load_hf(tmp_path, dtype="float64")
    assert isinstance(model, sg.GPTModel)
    idx = np.random.default_rng(3).integers(0, 61, size=(2, 7))
    with torch.no_grad():
        assert_close(model(idx), hf(torch.tensor(idx)).logits, np.float64, "logits")
