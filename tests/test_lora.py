"""scratchgpt/lora.py: the LoRA op against torch autograd, adapters inside the model, merging, saving."""
import dataclasses

import numpy as np
import pytest
import torch

from conftest import rel_err
from torch_gpt import torch_gpt_logits, torch_params
import scratchgpt as sg
from scratchgpt import lora
from scratchgpt.finetune import TrainableParams

TINY = dict(vocab_size=11, context_length=8, emb_dim=12, n_heads=3, n_layers=2, qkv_bias=True)


@pytest.mark.parametrize("shape", [(5, 6), (2, 7, 6)])
def test_lora_backward_matches_torch_autograd(shape):
    r = np.random.default_rng(0)
    x = r.standard_normal(shape)
    A, B = r.standard_normal((6, 3)), r.standard_normal((3, 4))
    dy = r.standard_normal(shape[:-1] + (4,))
    y, cache = lora.lora_forward(x, A, B, 0.75)
    dx, dA, dB = lora.lora_backward(dy, cache)
    tx, tA, tB = (torch.tensor(a, requires_grad=True) for a in (x, A, B))
    ty = 0.75 * (tx @ tA) @ tB
    (ty * torch.tensor(dy)).sum().backward()
    assert rel_err(y, ty) <= 1e-12
    for ours, ref in ((dx, tx.grad), (dA, tA.grad), (dB, tB.grad)):
        assert rel_err(ours, ref) <= 1e-9


def lora_model(rank=2, alpha=3.0, targets="all", seed=0, dtype="float64"):
    base = sg.GPTModel(sg.GPTConfig(**TINY), seed=seed, dtype=dtype)
    model = lora.add_lora(base, rank, alpha, targets, seed=seed + 1)
    r = np.random.default_rng(seed)
    for k in lora.lora_names(model):               # B = 0 at init; move it so B matters
        model.params[k][...] = r.standard_normal(model.params[k].shape) * 0.3
    return base, model


def test_model_with_lora_matches_torch_in_every_adapter_gradient():
    _, model = lora_model()
    idx = np.random.default_rng(1).integers(0, 11, (2, 7))
    tgt = np.random.default_rng(2).integers(0, 11, (2, 7))
    model.set_trainable(None)                       # check every gradient, base weights too
    loss = model.loss(idx, tgt)
    model.zero_grad()
    model.backward()
    P = torch_params({k: np.array(v) for k, v in model.state_dict().items()})
    scale = model.extensions["lora_alpha"] / model.extensions["lora_rank"]
    eff = dict(P)
    for k in lora.lora_names(model):
        if k.endswith("lora_A"):                     # W_eff = W + (alpha/r) A B, inside the graph
            stem = k[:-len("lora_A")]
            eff[stem + "weight"] = P[stem + "weight"] + scale * P[k] @ P[stem + "lora_B"]
    logits = torch_gpt_logits(eff, torch.tensor(idx), model.cfg)
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, 11), torch.tensor(tgt).reshape(-1))
    ref.backward()
    assert abs(loss - ref.item()) < 1e-12
    for k, g in model.grads().items():
        assert rel_err(g, P[k].grad) <= 1e-9, k


def test_fresh_adapters_leave_the_model_unchanged_and_only_they_train():
    base = sg.GPTModel(sg.GPTConfig(**TINY), seed=0)
    model = lora.add_lora(base, rank=4, alpha=8)
    idx = np.random.default_rng(0).integers(0, 11, (2, 8))
    np.testing.assert_array_equal(model.eval()(idx), base.eval()(idx))     # B = 0
    A = model.params["transformer.h.0.attn.c_attn.lora_A"]
    assert A.shape == (12, 4) and 0 < np.abs(A).max() <= 0.5 and A.std() > 0.1   # U(-1/sqrt(r), 1/sqrt(r))
    assert sorted(model.trainable_names()) == sorted(lora.lora_names(model))
    frozen = {k: v.copy() for k, v in model.state_dict().items() if ".lora_" not in k}
    params = TrainableParams(model)
    opt = sg.AdamW(params, lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        model.train()
        model.zero_grad()
        model.loss(idx, idx)
        model.backward()
        for k in frozen:
            assert not model.grads()[k].any(), k
        params.step(opt)
    for k, v in frozen.items():
        np.testing.assert_array_equal(model.state_dict()[k], v)
    assert model.params["transformer.h.1.mlp.c_proj.lora_B"].any()


def test_merged_weights_give_the_unmerged_logits():
    for dtype, tol in (("float64", 1e-12), ("float32", 1e-5)):
        _, model = lora_model(rank=3, alpha=5.0, targets="c_attn,mlp", dtype=dtype)
        merged = lora.merge_lora(model)
        assert not merged.extensions and not any(".lora_" in k for k in merged.state_dict())
        assert merged.num_parameters() == sg.GPTModel(sg.GPTConfig(**TINY)).num_parameters()
        idx = np.random.default_rng(3).integers(0, 11, (2, 8))
        a, b = model.eval()(idx), merged.eval()(idx)
        assert rel_err(b, a) <= tol
        W = model.params["transformer.h.0.attn.c_attn.weight"]       # (in, out) + s A (in, r) B (r, out)
        A, B = model.params["transformer.h.0.attn.c_attn.lora_A"], model.params["transformer.h.0.attn.c_attn.lora_B"]
        np.testing.assert_allclose(merged.params["transformer.h.0.attn.c_attn.weight"], W + 5.0 / 3 * A @ B,
                                   rtol=tol, atol=tol)
        np.testing.assert_array_equal(merged.params["transformer.h.0.attn.c_proj.weight"],
                                      model.params["transformer.h.0.attn.c_proj.weight"])  # not a target


def test_adapters_save_alone_and_load_back(tmp_path):
    base, model = lora_model(rank=2, alpha=4.0, targets="c_proj", dtype="float32")
    path = tmp_path / "adapters.npz"
    lora.save_adapters(model, path)
    with np.load(path, allow_pickle=False) as z:
        names = set(z.files) - {"lora_rank", "lora_alpha", "lora_targets"}
    assert names == set(lora.lora_names(model)) and len(names) == 2 * 2 * 2     # 2 blocks x 2 c_proj x (A, B)
    again = lora.load_adapters(base, path)
    idx = np.random.default_rng(0).integers(0, 11, (1, 8))
    np.testing.assert_array_equal(again.eval()(idx), model.eval()(idx))
    other = sg.GPTModel(sg.GPTConfig(**{**TINY, "emb_dim": 6}))
    with pytest.raises(ValueError, match="shape"):
        lora.load_adapters(other, path)


def test_lora_parameter_count_of_gpt2_small_at_rank_16():
    cfg = sg.GPTConfig(vocab_size=50257, context_length=1024, emb_dim=768, n_heads=12, n_layers=12, qkv_bias=True)
    n = lora.lora_parameter_count(cfg, 16)
    # per block: c_attn 16 (768 + 2304) + attn.c_proj 16 (768 + 768) + c_fc 16 (768 + 3072) + mlp.c_proj 16 (3072 + 768)
    assert n == 12 * 16 * (3072 + 1536 + 3840 + 3840) == 2_359_296
    assert 0.0189 < n / 124_439_808 < 0.0190          # 1.90% of GPT-2 small
    assert lora.lora_parameter_count(cfg, 16, "c_attn") == 12 * 16 * 3072


def test_lora_targets_and_errors():
    assert lora.parse_targets("c_proj") == ("attn.c_proj", "mlp.c_proj")
    assert lora.parse_targets("all") == ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    with pytest.raises(ValueError, match="unknown LoRA target 'q_proj'"):
        lora.parse_targets("q_proj")
    base, model = lora_model()
    with pytest.raises(ValueError, match="already has LoRA"):
        lora.add_lora(model, 2)
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        lora.add_lora(base, 0)
    with pytest.raises(ValueError, match="lora_alpha must be > 0"):
        lora.add_lora(base, 2, alpha=-1.0)
    # the model itself knows nothing of LoRA: only the targets became LoRALinear layers
    one = lora.add_lora(base, 2, targets="mlp.c_fc")
    kinds = {type(layer).__name__ for b in one.trf_blocks for layer in (b.att.c_attn, b.att.c_proj, b.ff.c_fc, b.ff.c_proj)}
    assert kinds == {"Linear", "LoRALinear"} and all(type(b.ff.c_fc).__name__ == "LoRALinear" for b in one.trf_blocks)


def test_adapters_of_a_classifier_carry_its_trained_head(tmp_path):
    from scratchgpt.finetune import add_classification_head
    base = add_classification_head(sg.GPTModel(sg.GPTConfig(**TINY), seed=0), 3, seed=0)
    model = lora.add_lora(base, 2, trainable=["score"])
    for k in model.trainable_names():                # as if trained
        model.params[k][...] = np.random.default_rng(1).standard_normal(model.params[k].shape)
    lora.save_adapters(model, tmp_path / "a.npz")
    with np.load(tmp_path / "a.npz", allow_pickle=False) as z:
        assert {"score.weight", "score.bias"} <= set(z.files)
    other = add_classification_head(sg.GPTModel(sg.GPTConfig(**TINY), seed=0), 3, seed=5)   # another random head
    again = lora.load_adapters(other, tmp_path / "a.npz")
    idx = np.random.default_rng(0).integers(0, 11, (2, 8))
    np.testing.assert_array_equal(again.eval()(idx), model.eval()(idx))
