"""scratchgpt/checkpoint.py: every way a checkpoint can be wrong gets its own clear error, and
the round trip keeps what the default path does not look at (AdamW's v, scalars, the dtype)."""
import json

import numpy as np
import pytest

import scratchgpt as sg
from scratchgpt import checkpoint
from scratchgpt.checkpoint import CheckpointError
from scratchgpt.tokenizer import CharTokenizer


def saved(tmp_path, dtype="float32"):
    tok = CharTokenizer.from_text("hello world")
    cfg = sg.GPTConfig(vocab_size=tok.vocab_size, context_length=8, emb_dim=8, n_heads=2, n_layers=1)
    model = sg.GPTModel(cfg, seed=0, dtype=dtype)
    opt = sg.AdamW(model, lr=3e-3, betas=(0.8, 0.95), weight_decay=0.05)
    for _ in range(2):
        idx = np.array([[1, 2, 3, 4]])
        model.zero_grad()
        model.loss(idx, idx)
        model.backward()
        opt.step()
    path = tmp_path / "c.npz"
    checkpoint.save(path, model, tok, opt, train_state={"iter": 2})
    return path, model, opt


def rewrite(path, edit_meta=None, edit_arrays=None):
    """Change a saved checkpoint's meta.json and/or arrays in place."""
    meta, arrays = checkpoint.read(path)
    if edit_meta:
        edit_meta(meta)
    if edit_arrays:
        edit_arrays(arrays)
    arrays["meta.json"] = np.frombuffer(json.dumps(meta).encode("utf-8"), np.uint8)
    np.savez(path, **arrays)


def test_a_foreign_format_is_named(tmp_path):
    path, _, _ = saved(tmp_path)
    rewrite(path, lambda m: m.update(format="someone-elses-v3"))
    with pytest.raises(CheckpointError, match="format 'someone-elses-v3', expected 'scratchgpt-checkpoint-v1'"):
        checkpoint.load(path)


def test_meta_json_that_is_not_json_is_refused(tmp_path):
    path, _, _ = saved(tmp_path)
    _, arrays = checkpoint.read(path)
    arrays["meta.json"] = np.frombuffer(b"{not json", np.uint8)
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError, match="unreadable meta.json"):
        checkpoint.load(path)


@pytest.mark.parametrize("config", [{"vocab_size": 11, "emb_dim": 8}, {**dict(vocab_size=11, context_length=8,
                                    emb_dim=8, n_heads=3, n_layers=1)}, {"unknown_key": 1}])
def test_a_bad_model_config_is_refused(tmp_path, config):
    path, _, _ = saved(tmp_path)
    rewrite(path, lambda m: m.update(config=config))
    with pytest.raises(CheckpointError, match="c.npz has an invalid model config"):
        checkpoint.load(path)


def test_a_bad_tokenizer_is_refused(tmp_path):
    path, _, _ = saved(tmp_path)
    rewrite(path, lambda m: m.update(tokenizer={"type": "sentencepiece"}))
    with pytest.raises(CheckpointError, match="c.npz has an unreadable tokenizer.*sentencepiece"):
        checkpoint.load(path)


def test_a_tokenizer_larger_than_the_vocabulary_is_refused(tmp_path):
    path, model, _ = saved(tmp_path)
    big = CharTokenizer.from_text("hello world, and many more letters: xyzq").to_dict()
    rewrite(path, lambda m: m.update(tokenizer=big))
    n = CharTokenizer.from_dict(big).vocab_size
    with pytest.raises(CheckpointError, match=f"tokenizer has {n} tokens but the model only {model.cfg.vocab_size}"):
        checkpoint.load(path)


@pytest.mark.parametrize("stored,asked", [("float32", "float64"), ("float64", "float32"), ("float64", None)])
def test_load_with_a_dtype_converts_the_weights(tmp_path, stored, asked):
    path, model, _ = saved(tmp_path, dtype=stored)
    ck = checkpoint.load(path, dtype=asked)
    want = np.dtype(asked or stored)
    assert ck.model.dtype == want and ck.model.flat_params.dtype == want
    for name, w in model.state_dict().items():
        got = ck.model.state_dict()[name]
        assert got.dtype == want, name
        np.testing.assert_array_equal(got, w.astype(want), err_msg=name)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_optimizer_round_trip_keeps_both_moments_its_scalars_and_dtype(tmp_path, dtype):
    path, model, opt = saved(tmp_path, dtype=dtype)
    ck = checkpoint.load(path)
    state = ck.optimizer_state
    for name in ("m", "v"):
        assert state[name].dtype == np.dtype(dtype), name
        np.testing.assert_array_equal(state[name], getattr(opt, name), err_msg=name)
    assert not np.array_equal(state["m"], state["v"])
    assert (state["t"], state["lr"], tuple(state["betas"]), state["eps"], state["weight_decay"]) == \
        (2, 3e-3, (0.8, 0.95), opt.eps, 0.05)
    fresh = sg.AdamW(ck.model)
    fresh.load_state_dict(state)
    for model_now in (model, ck.model):                       # one more step on each: the same update
        idx = np.array([[4, 3, 2, 1]])
        model_now.zero_grad()
        model_now.loss(idx, idx)
        model_now.backward()
    opt.step()
    fresh.step()
    np.testing.assert_array_equal(ck.model.flat_params, model.flat_params)


def test_a_checkpoint_without_tokenizer_or_optimizer_loads_with_none(tmp_path):
    model = sg.GPTModel(sg.GPTConfig(vocab_size=7, context_length=4, emb_dim=8, n_heads=2, n_layers=1), seed=0)
    checkpoint.save(tmp_path / "bare.npz", model)
    ck = checkpoint.load(tmp_path / "bare.npz")
    assert ck.tokenizer is None and ck.optimizer_state is None and ck.train_state is None
    assert ck.meta["format"] == "scratchgpt-checkpoint-v1" and ck.meta["dtype"] == "float32"
    idx = np.array([[1, 2, 3]])
    np.testing.assert_array_equal(ck.model.eval()(idx), model.eval()(idx))


@pytest.mark.parametrize("kind", ["classifier", "lora", "classifier+lora"])
def test_fine_tuned_models_come_back_with_their_head_and_adapters(tmp_path, kind):
    from scratchgpt.classifier import add_classification_head
    from scratchgpt.lora import add_lora
    model = sg.GPTModel(sg.GPTConfig(vocab_size=7, context_length=4, emb_dim=8, n_heads=2, n_layers=1), seed=0)
    if "classifier" in kind:
        model = add_classification_head(model, 3, seed=1)
    if "lora" in kind:
        model = add_lora(model, 2, alpha=4.0, targets="c_attn", seed=2)
        for k in model.params:                                # B = 0 at first: move it so it counts
            if k.endswith("lora_B"):
                model.params[k][...] = 0.1
    checkpoint.save(tmp_path / "ft.npz", model)
    ck = checkpoint.load(tmp_path / "ft.npz")
    assert set(ck.model.params) == set(model.params)
    for k, v in model.params.items():
        np.testing.assert_array_equal(ck.model.params[k], v, err_msg=k)
    idx = np.array([[1, 2, 3]])
    out = ck.model.eval()(idx)
    np.testing.assert_array_equal(out, model.eval()(idx))
    assert out.shape[-1] == (3 if "classifier" in kind else 7)


@pytest.mark.parametrize("arch,dtype", [("llama3", "float32"), ("qwen3", "float64")])
def test_llama3_and_qwen3_come_back_as_the_model_they_were(tmp_path, arch, dtype):
    cls, cfg_class = {"llama3": (sg.Llama3Model, sg.Llama3Config), "qwen3": (sg.Qwen3Model, sg.Qwen3Config)}[arch]
    cfg = cfg_class(vocab_size=20, context_length=8, emb_dim=16, n_heads=4, n_layers=1, hidden_dim=24,
                    n_kv_groups=2, rope_scaling=None)
    model = cls(cfg, seed=0, dtype=dtype)
    idx = np.array([[1, 5, 9, 19]])
    checkpoint.save(tmp_path / "c.npz", model)
    assert checkpoint.read(tmp_path / "c.npz")[0]["arch"] == arch
    back = checkpoint.load(tmp_path / "c.npz").model
    assert type(back) is cls and back.cfg == cfg and back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back(idx), model(idx))


def test_an_unknown_architecture_is_refused_and_a_missing_one_is_gpt2(tmp_path):
    path, model, _ = saved(tmp_path)
    rewrite(path, lambda m: m.update(arch="mamba"))
    with pytest.raises(CheckpointError, match=r"c.npz holds a 'mamba' model; known: gpt2, llama3, qwen3$"):
        checkpoint.load(path)
    rewrite(path, lambda m: m.pop("arch"))                    # files from before Llama 3 and Qwen3
    back = checkpoint.load(path).model
    assert type(back) is sg.GPTModel
    np.testing.assert_array_equal(back.flat_params, model.flat_params)


def test_a_zero_head_or_rank_in_a_saved_config_means_none():
    """Older files store num_classes=0 and lora_rank=0 (with an alpha and targets) for a plain model."""
    cfg = dict(vocab_size=7, context_length=4, emb_dim=8, n_heads=2, n_layers=1)
    plain = {**cfg, "num_classes": 0, "lora_rank": 0, "lora_alpha": 16.0, "lora_targets": ["attn.c_attn"]}
    assert checkpoint.split_config(plain) == (sg.GPTConfig(**cfg), {})
    both = {**cfg, "num_classes": 3, "lora_rank": 2, "lora_alpha": 4.0, "lora_targets": ["mlp.c_fc"]}
    assert checkpoint.split_config(both)[1] == {"num_classes": 3, "lora_rank": 2, "lora_alpha": 4.0,
                                                "lora_targets": ["mlp.c_fc"]}


def test_build_model_gives_a_float32_model_of_zeros_for_a_loader_to_fill():
    cfg = sg.GPTConfig(vocab_size=7, context_length=4, emb_dim=8, n_heads=2, n_layers=1)
    model = checkpoint.build_model(cfg)
    assert model.dtype == np.float32 and not model.flat_params.any()     # no init drawn, to be overwritten


def test_a_lora_config_without_targets_means_all_four_linears(tmp_path):
    from scratchgpt.lora import add_lora
    model = add_lora(sg.GPTModel(sg.GPTConfig(vocab_size=7, context_length=4, emb_dim=8, n_heads=2, n_layers=1)), 2)
    checkpoint.save(tmp_path / "c.npz", model)
    rewrite(tmp_path / "c.npz", lambda m: m["config"].pop("lora_targets"))
    back = checkpoint.load(tmp_path / "c.npz").model
    assert back.extensions["lora_targets"] == ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
    np.testing.assert_array_equal(back.flat_params, model.flat_params)


def test_a_checkpoint_without_a_stored_dtype_loads_as_float32(tmp_path):
    path, model, _ = saved(tmp_path, dtype="float64")
    rewrite(path, lambda m: m.pop("dtype"))
    back = checkpoint.load(path).model
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back.flat_params, model.flat_params.astype(np.float32))


def test_the_optimizer_state_comes_back_only_with_its_moments(tmp_path):
    path, _, _ = saved(tmp_path)
    rewrite(path, edit_arrays=lambda a: [a.pop("optim/m"), a.pop("optim/v")])
    ck = checkpoint.load(path)
    assert ck.optimizer_state is None and ck.train_state == {"iter": 2}
