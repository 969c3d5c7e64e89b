"""Llama3Model / Qwen3Model with the project's machinery: config checks, AdamW, checkpoints,
`scratchgpt train --arch`, and `sample` / `eval` / `chat --hf-dir` (HF parity is in test_hf.py)."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import scratchgpt as sg
from scratchgpt import checkpoint
from scratchgpt.llama import parameter_shapes
from scratchgpt.train import TrainConfig, train

TEXT = ("To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer "
        "the slings and arrows of outrageous fortune, or to take arms against a sea of troubles. ") * 40


def tiny(cls=sg.Llama3Model, **kw):
    cfg_class = sg.Qwen3Config if cls is sg.Qwen3Model else sg.Llama3Config
    base = dict(vocab_size=40, context_length=16, emb_dim=16, n_heads=4, n_layers=2, hidden_dim=24,
                n_kv_groups=2, rope_scaling=None)
    return cls(cfg_class(**{**base, **kw}), seed=0, dtype="float64")


def test_config_defaults_are_the_books():
    llama, qwen = sg.Llama3Config(), sg.Qwen3Config()
    assert (llama.emb_dim, llama.n_heads, llama.n_kv_groups, llama.head_dim, llama.hidden_dim) == (2048, 32, 8, 64, 8192)
    assert llama.rope_scaling["rope_type"] == "llama3" and not llama.qk_norm
    assert (qwen.emb_dim, qwen.head_dim, qwen.n_heads, qwen.qk_norm, qwen.rope_base) == (1024, 128, 16, True, 1e6)
    # the books' "unique parameters" (tied head): Llama 3.2 1B and Qwen3 0.6B (0.44B without the embedding)
    count = lambda cfg: sum(math.prod(s) for s in parameter_shapes(cfg).values())
    assert count(llama) == 1_235_814_400 and count(qwen) == 596_049_920


def test_config_errors_name_the_value():
    with pytest.raises(ValueError, match="n_heads 4 is not divisible by n_kv_groups 3"):
        sg.Llama3Config(emb_dim=16, n_heads=4, n_kv_groups=3)
    with pytest.raises(ValueError, match="emb_dim 18 is not divisible by n_heads 4; set head_dim"):
        sg.Llama3Config(emb_dim=18, n_heads=4, n_kv_groups=2)
    with pytest.raises(ValueError, match="'dynamic' is not supported"):
        sg.Llama3Config(emb_dim=16, n_heads=4, n_kv_groups=2, rope_scaling={"rope_type": "dynamic", "factor": 2.0})


def test_parameter_count_and_decay_first():
    m = tiny(sg.Qwen3Model, head_dim=8, tie_weights=False)
    C, V, F, hd, L = 16, 40, 24, 8, 2
    per_layer = C + 4 * hd * C + 2 * 2 * hd * C + 4 * hd * C + 2 * hd + C + 3 * F * C
    assert m.num_parameters() == V * C + L * per_layer + C + V * C
    one_d = sum(p.size for p in m.params.values() if p.ndim == 1)
    assert m.n_decay == m.num_parameters() - one_d
    assert all(np.shares_memory(p, m.flat_params) for p in m.params.values())


def test_backward_needs_a_loss_and_refuses_a_cached_forward():
    m = tiny()
    idx = np.zeros((1, 4), dtype=np.int64)
    with pytest.raises(RuntimeError, match="forward pass"):
        m.backward()
    m(idx, kv_cache=m.kv_cache(1))
    with pytest.raises(RuntimeError, match="without a KV cache"):
        m.backward(np.ones((1, 4, 40)))
    with pytest.raises(ValueError, match="token id 40 is outside the vocabulary"):
        m(np.array([[40]]))


def test_adamw_steps_lower_the_loss():
    m = tiny(sg.Qwen3Model)
    opt = sg.AdamW(m, lr=1e-2, weight_decay=0.1)
    idx = np.random.default_rng(0).integers(0, 40, size=(4, 9))
    first = m.loss(idx[:, :-1], idx[:, 1:])
    for _ in range(20):
        m.zero_grad()
        m.loss(idx[:, :-1], idx[:, 1:])
        m.backward()
        opt.step()
    assert m.loss(idx[:, :-1], idx[:, 1:]) < first - 1.0


def config(tmp_path, **kw):
    f = tmp_path / "text.txt"
    f.write_text(TEXT)
    base = dict(text_file=str(f), n_layers=2, n_heads=2, emb_dim=32, context_length=16, batch_size=8,
                max_iters=40, eval_interval=20, eval_iters=4, sample_tokens=20, lr=3e-3, warmup_iters=5,
                out_dir=str(tmp_path / "run"), seed=0)
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("arch", ["llama3", "qwen3"])
def test_training_lowers_the_loss_and_resumes_bit_exactly(tmp_path, monkeypatch, arch):
    monkeypatch.setenv("SCRATCHGPT_CACHE", str(tmp_path / "cache"))
    a = config(tmp_path, arch=arch, n_kv_groups=1, out_dir=str(tmp_path / "a"))
    b = config(tmp_path, arch=arch, n_kv_groups=1, out_dir=str(tmp_path / "b"))
    train(a, progress=False, log=lambda *x: None)
    with pytest.raises(sg.train.TrainingInterrupted):
        train(b, progress=False, log=lambda *x: None, stop_after=27)
    train(b, resume=True, progress=False, log=lambda *x: None)
    rows = [json.loads(line) for line in open(f"{a.out_dir}/metrics.jsonl")]
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] - 0.5
    ca, cb = checkpoint.load(f"{a.out_dir}/ckpt_latest.npz"), checkpoint.load(f"{b.out_dir}/ckpt_latest.npz")
    assert type(ca.model).__name__ == {"llama3": "Llama3Model", "qwen3": "Qwen3Model"}[arch]
    assert ca.model.cfg.n_kv_groups == 1 and "model.layers.1.mlp.gate_proj.weight" in ca.model.state_dict()
    for k, v in ca.model.state_dict().items():
        np.testing.assert_array_equal(v, cb.model.state_dict()[k], err_msg=k)


def test_llama_run_refuses_dropout(tmp_path):
    with pytest.raises(ValueError, match="llama3 has no dropout"):
        config(tmp_path, arch="llama3", drop_rate=0.1)


def cli(*args, cwd):
    env = dict(os.environ, SCRATCHGPT_CACHE=str(cwd / "cache"))
    return subprocess.run([sys.executable, "-m", "scratchgpt", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=300)


def test_cli_train_arch_qwen3_then_sample_and_eval(tmp_path):
    (tmp_path / "tiny.txt").write_text(TEXT)
    p = cli("train", "--arch", "qwen3", "--text-file", "tiny.txt", "--n-layers", "1", "--n-heads", "2",
            "--n-kv-groups", "1", "--hidden-dim", "40", "--emb-dim", "16", "--context-length", "16",
            "--batch-size", "4", "--max-iters", "10", "--eval-interval", "10", "--eval-iters", "2",
            "--sample-tokens", "10", "--out-dir", "run", "--no-progress", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    ck = checkpoint.load(tmp_path / "run" / "ckpt_latest.npz")
    assert isinstance(ck.model, sg.Qwen3Model) and ck.model.cfg.hidden_dim == 40
    p = cli("sample", "--out-dir", "run", "--prompt", "To be", "--max-new-tokens", "5", cwd=tmp_path)
    assert p.returncode == 0 and p.stdout.startswith("To be"), p.stderr
    p = cli("eval", "--out-dir", "run", "--text-file", "tiny.txt", "--max-batches", "2", cwd=tmp_path)
    assert p.returncode == 0 and "perplexity" in json.loads(p.stdout), p.stderr


def test_cli_sample_eval_chat_with_hf_dir(tmp_path):
    """A Qwen3 folder written by transformers, with a tokenizer.json trained here."""
    from ops_helpers import import_transformers
    transformers = import_transformers()
    from test_tokenizer_json import QWEN3_PATTERN, make_tokenizer_json
    (tmp_path / "hf").mkdir()
    tok = make_tokenizer_json(tmp_path / "hf" / "tokenizer.json", QWEN3_PATTERN, True, False)
    cfg = transformers.Qwen3Config(vocab_size=tok.get_vocab_size(), hidden_size=16, intermediate_size=24,
                                   num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                   max_position_embeddings=64)
    transformers.Qwen3ForCausalLM(cfg).save_pretrained(tmp_path / "hf")
    (tmp_path / "tiny.txt").write_text(TEXT)
    p = cli("sample", "--hf-dir", "hf", "--prompt", "Speak,", "--max-new-tokens", "4", "--temperature", "0", cwd=tmp_path)
    assert p.returncode == 0 and p.stdout.startswith("Speak,"), p.stderr
    p = cli("eval", "--hf-dir", "hf", "--text-file", "tiny.txt", "--max-batches", "1", "--batch-size", "2", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert abs(json.loads(p.stdout)["loss"] - np.log(tok.get_vocab_size())) < 0.5     # near-uniform at init
    p = subprocess.run([sys.executable, "-m", "scratchgpt", "chat", "--hf-dir", "hf", "--max-new-tokens", "3"],
                       cwd=tmp_path, input="hello\n", capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    p = cli("sample", "--hf-dir", "missing", cwd=tmp_path)
    assert p.returncode == 2 and "does not exist" in p.stderr


# config.json as the published Llama 3.2 1B and Qwen3 0.6B folders write it (transformers 4.x
# spelling: rope_theta and rope_scaling at the top level)
LLAMA32_1B_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": 128001, "head_dim": 64, "hidden_act": "silu", "hidden_size": 2048,
    "initializer_range": 0.02, "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": False,
    "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16", "use_cache": True,
    "vocab_size": 128256}
QWEN3_06B_CONFIG = {
    "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 1024,
    "initializer_range": 0.02, "intermediate_size": 3072, "max_position_embeddings": 40960,
    "max_window_layers": 28, "model_type": "qwen3", "num_attention_heads": 16, "num_hidden_layers": 28,
    "num_key_value_heads": 8, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000,
    "sliding_window": None, "tie_word_embeddings": True, "torch_dtype": "bfloat16", "use_cache": True,
    "use_sliding_window": False, "vocab_size": 151936}


def test_published_config_json_gives_the_books_configs():
    from scratchgpt.hf import config_from_hf
    assert config_from_hf(LLAMA32_1B_CONFIG, "llama") == sg.Llama3Config()
    assert config_from_hf(QWEN3_06B_CONFIG, "qwen3") == sg.Qwen3Config()
    with pytest.raises(ValueError, match="use_sliding_window=True"):
        config_from_hf({**QWEN3_06B_CONFIG, "use_sliding_window": True}, "qwen3")
    with pytest.raises(ValueError, match="'yarn' is not supported"):
        config_from_hf({**LLAMA32_1B_CONFIG, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "llama")


def test_chat_and_serve_take_a_qwen3_model():
    import io

    from scratchgpt.chat import Chat
    from scratchgpt.serve import ChatApp
    tok = sg.CharTokenizer.from_text(TEXT + "\n")
    m = tiny(sg.Qwen3Model, vocab_size=tok.vocab_size, context_length=32, head_dim=8)
    out = io.StringIO()
    reply = Chat(m, tok, False, max_new_tokens=5, temperature=0.0, out=out).reply("To be")
    assert len(tok.encode(reply)) <= 5 and out.getvalue().startswith(reply[:1])
    app = ChatApp(m, tok, False, max_new_tokens=5, name="qwen3")
    assert app.info()["parameters"] == m.num_parameters() and app.info()["context_length"] == 32


def test_fine_tuning_says_it_is_gpt2_only():
    from scratchgpt.classifier import add_classification_head
    from scratchgpt.lora import add_lora
    with pytest.raises(ValueError, match="GPT-2 models only; this is a Qwen3Model"):
        add_classification_head(tiny(sg.Qwen3Model), 2)
    with pytest.raises(ValueError, match="GPT-2 models only; this is a Llama3Model"):
        add_lora(tiny(), rank=2)
