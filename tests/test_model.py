"""The whole model against an independent torch GPT-2 (tests/torch_gpt.py), plus finite differences."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import assert_close, rel_err
from torch_gpt import torch_gpt_logits, torch_params
import scratchgpt as sg

TINY = dict(vocab_size=11, context_length=8, emb_dim=12, n_heads=3, n_layers=2)


def batch(cfg, B, T, seed=0, ignore=False):
    r = np.random.default_rng(seed)
    idx = r.integers(0, cfg.vocab_size, size=(B, T))
    idx[0, : min(T, 3)] = 2                                  # repeated token ids
    tgt = r.integers(0, cfg.vocab_size, size=(B, T))
    if ignore:
        tgt[:, ::2] = -100
    return idx, tgt


def dropout_masks(model):
    """The dropout masks of the last forward, in the order they were drawn."""
    return [torch.tensor(m) for m in model.dropout_masks()]


def check_against_torch(cfg, dtype, B, T, ignore=False, seed=0):
    model = sg.GPTModel(cfg, seed=seed, dtype=dtype)
    idx, tgt = batch(cfg, B, T, seed, ignore)
    loss = model.loss(idx, tgt)
    model.zero_grad()
    model.backward()
    masks = dropout_masks(model) if cfg.drop_rate > 0 else None
    P = torch_params({k: np.asarray(v, dtype=np.float64) for k, v in model.state_dict().items()})
    ref_logits = torch_gpt_logits(P, torch.tensor(idx), cfg,
                                  masks=[m.double() for m in masks] if masks else None)
    ref_loss = F.cross_entropy(ref_logits.reshape(-1, cfg.vocab_size), torch.tensor(tgt).reshape(-1))
    ref_loss.backward()
    errs = {"loss": assert_close(np.array(loss), ref_loss, dtype, "loss")}
    for name, g in model.grads().items():
        errs[name] = assert_close(g, P[name].grad, dtype, name)
    if cfg.drop_rate == 0:
        errs["logits"] = assert_close(model.eval()(idx), ref_logits, dtype, "logits")
    return errs


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("variant", [
    dict(),                                            # tied head, no qkv bias
    dict(qkv_bias=True, tie_weights=False),
    dict(post_norm=True, qkv_bias=True),
    dict(gelu_approximate="none"),
])
@pytest.mark.parametrize("B,T", [(1, 1), (2, 5), (3, 8)])
def test_model_matches_torch_logits_loss_and_every_gradient(kernels, dtype, variant, B, T):
    cfg = sg.GPTConfig(**TINY, **variant)
    check_against_torch(cfg, dtype, B, T, ignore=(B == 2))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_model_with_dropout_matches_torch_replaying_the_same_masks(dtype):
    cfg = sg.GPTConfig(**TINY, drop_rate=0.3, qkv_bias=True)
    check_against_torch(cfg, dtype, 2, 8)


def test_dropout_is_off_in_eval_mode_and_seeded_in_train_mode():
    cfg = sg.GPTConfig(**TINY, drop_rate=0.5)
    idx, _ = batch(cfg, 2, 8)
    a, b = sg.GPTModel(cfg, seed=3), sg.GPTModel(cfg, seed=3)
    np.testing.assert_array_equal(a(idx), b(idx))                 # same seed, same masks
    assert not np.allclose(a(idx), a(idx))                        # fresh masks each call
    a.eval()
    np.testing.assert_array_equal(a(idx), a(idx))                 # eval: deterministic


def test_finite_differences_on_a_handful_of_parameters():
    cfg = sg.GPTConfig(**TINY, qkv_bias=True)
    model = sg.GPTModel(cfg, seed=1, dtype="float64")
    idx, tgt = batch(cfg, 2, 6, seed=1)
    model.loss(idx, tgt)
    model.zero_grad()
    model.backward()
    grads = {k: v.copy() for k, v in model.grads().items()}
    r = np.random.default_rng(0)
    for name in ["transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.attn.c_attn.weight",
                 "transformer.h.0.attn.c_attn.bias", "transformer.h.1.mlp.c_fc.weight",
                 "transformer.h.1.ln_2.weight", "transformer.ln_f.bias"]:
        p = model.state_dict()[name]
        for _ in range(3):
            i = tuple(r.integers(0, s) for s in p.shape)
            if name == "transformer.wpe.weight":
                i = (r.integers(0, 6),) + i[1:]          # only rows < T take part
            old, h = p[i], 1e-5
            p[i] = old + h
            up = model.loss(idx, tgt)
            p[i] = old - h
            down = model.loss(idx, tgt)
            p[i] = old
            numeric = (up - down) / (2 * h)
            assert abs(numeric - grads[name][i]) <= 1e-6 * max(1.0, abs(numeric)), (name, i)


def test_tied_head_gradient_holds_embedding_and_head_contributions():
    cfg = sg.GPTConfig(**TINY)
    model = sg.GPTModel(cfg, seed=0, dtype="float64")
    idx, tgt = batch(cfg, 2, 6)
    model.loss(idx, tgt)
    model.zero_grad()
    model.backward()
    P = torch_params({k: np.asarray(v) for k, v in model.state_dict().items()})
    wte = P["transformer.wte.weight"]
    # Split the tied table into two leaves: one used by the lookup, one by the head.
    emb_leaf, head_leaf = wte.detach().clone().requires_grad_(), wte.detach().clone().requires_grad_()
    P2 = dict(P)
    P2["transformer.wte.weight"] = emb_leaf
    cfg_untied = sg.GPTConfig(**TINY, tie_weights=False)
    P2["lm_head.weight"] = head_leaf
    logits = torch_gpt_logits(P2, torch.tensor(idx), cfg_untied)
    F.cross_entropy(logits.reshape(-1, cfg.vocab_size), torch.tensor(tgt).reshape(-1)).backward()
    g = model.grads()["transformer.wte.weight"]
    assert rel_err(g, emb_leaf.grad + head_leaf.grad) < 1e-10
    assert rel_err(g, head_leaf.grad) > 1e-3 and rel_err(g, emb_leaf.grad) > 1e-3   # both matter


def test_parameter_counts_of_gpt2_small():
    base = dict(vocab_size=50257, context_length=1024, emb_dim=768, n_heads=12, n_layers=12)
    shapes = sg.model.parameter_shapes
    count = lambda cfg: sum(int(np.prod(s)) for s in shapes(cfg).values())
    assert count(sg.GPTConfig(**base, qkv_bias=True)) == 124_439_808
    assert count(sg.GPTConfig(**base, qkv_bias=False)) == 124_412_160
    assert count(sg.GPTConfig(**base, qkv_bias=False, tie_weights=False)) - 124_412_160 == 38_597_376
    small = sg.GPTModel(sg.GPTConfig(**TINY))
    assert small.num_parameters() == count(small.cfg)


def test_state_dict_names_and_layouts_are_hugging_face_gpt2():
    cfg = sg.GPTConfig(**TINY, qkv_bias=True)
    sd = sg.GPTModel(cfg).state_dict()
    C = cfg.emb_dim
    assert sd["transformer.wte.weight"].shape == (11, C)
    assert sd["transformer.wpe.weight"].shape == (8, C)
    assert sd["transformer.h.1.attn.c_attn.weight"].shape == (C, 3 * C)
    assert sd["transformer.h.1.attn.c_attn.bias"].shape == (3 * C,)
    assert sd["transformer.h.0.mlp.c_fc.weight"].shape == (C, 4 * C)
    assert sd["transformer.h.0.mlp.c_proj.weight"].shape == (4 * C, C)
    assert "lm_head.weight" not in sd and "transformer.ln_f.bias" in sd
    assert "transformer.h.0.attn.c_attn.bias" not in sg.GPTModel(sg.GPTConfig(**TINY)).state_dict()
    assert set(sd) == set(sg.GPTModel(cfg).grads())


def test_load_state_dict_round_trip_and_strict_errors():
    cfg = sg.GPTConfig(**TINY)
    a, b = sg.GPTModel(cfg, seed=0), sg.GPTModel(cfg, seed=1)
    idx, _ = batch(cfg, 1, 5)
    b.load_state_dict({k: v.copy() for k, v in a.state_dict().items()})
    np.testing.assert_array_equal(a(idx), b(idx))
    sd = {k: v.copy() for k, v in a.state_dict().items()}
    with pytest.raises(ValueError, match="missing 1 entry.*ln_f.bias"):
        b.load_state_dict({k: v for k, v in sd.items() if k != "transformer.ln_f.bias"})
    with pytest.raises(ValueError, match="unexpected 1 entry.*lm_head.weight"):
        b.load_state_dict({**sd, "lm_head.weight": sd["transformer.wte.weight"]})
    with pytest.raises(ValueError, match=r"'transformer.wpe.weight' has shape \(9, 12\), the model expects \(8, 12\)"):
        b.load_state_dict({**sd, "transformer.wpe.weight": np.zeros((9, 12), np.float32)})
    with pytest.raises(ValueError, match="dtype float64, the model expects float32"):
        b.load_state_dict({**sd, "transformer.ln_f.bias": np.zeros(12)})


def test_bad_input_names_the_problem():
    model = sg.GPTModel(sg.GPTConfig(**TINY))
    with pytest.raises(ValueError, match=r"token id 11 is outside the vocabulary \(size 11\)"):
        model(np.array([[1, 11]]))
    with pytest.raises(ValueError, match="token id -1 is outside"):
        model(np.array([[-1, 2]]))
    with pytest.raises(ValueError, match="sequence length 9 is longer than the context length 8"):
        model(np.zeros((1, 9), dtype=np.int64))
    with pytest.raises(ValueError, match="must be integers, got dtype float64"):
        model(np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"shape \(batch, time\)"):
        model(np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="target id 12 is outside"):
        model.loss(np.zeros((1, 2), dtype=np.int64), np.array([[0, 12]]))
    with pytest.raises(ValueError, match="not divisible"):
        sg.GPTConfig(**{**TINY, "n_heads": 5})
    with pytest.raises(RuntimeError, match="needs a forward pass"):
        sg.GPTModel(sg.GPTConfig(**TINY)).backward()


def test_backward_from_an_arbitrary_upstream_gradient_and_block_by_block():
    """model.backward(dlogits) gives the gradient of sum(dlogits * logits); running the same
    layers block by block (what Grad-CAM does) gives the same gradients and the one at each
    block output."""
    from scratchgpt.analysis.gradcam import backward_blocks, forward_blocks
    cfg = sg.GPTConfig(**TINY)
    model = sg.GPTModel(cfg, seed=0, dtype="float64").eval()
    idx, _ = batch(cfg, 1, 6)
    logits = model(idx)
    d = np.zeros_like(logits)
    d[0, -1, 4] = 1.0                                        # select one logit
    model.zero_grad()
    model.backward(d)
    P = torch_params({k: np.asarray(v) for k, v in model.state_dict().items()})
    ref = torch_gpt_logits(P, torch.tensor(idx), cfg)
    ref[0, -1, 4].backward()
    for name, g in model.grads().items():
        assert rel_err(g, P[name].grad) < 1e-9, name
    full = {k: g.copy() for k, g in model.grads().items()}
    model.zero_grad()
    logits2, acts = forward_blocks(model, idx)
    np.testing.assert_array_equal(logits2, logits)
    stream = backward_blocks(model, d)
    assert len(acts) == len(stream) == cfg.n_layers + 1
    assert stream[-1][0, -1].any() and not stream[-1][0, :-1].any()   # the last block: only where d is
    assert stream[1][0, :-1].any()                         # lower down, attention spreads it back
    for name, g in model.grads().items():
        np.testing.assert_allclose(g, full[name], rtol=1e-12, atol=1e-15, err_msg=name)


def test_adamw_steps_lower_the_loss_on_a_fixed_batch():
    cfg = sg.GPTConfig(**TINY)
    model = sg.GPTModel(cfg, seed=0)
    opt = sg.AdamW(model, lr=1e-2, weight_decay=0.1)
    idx, tgt = batch(cfg, 4, 8)
    losses = []
    for _ in range(40):
        losses.append(model.loss(idx, tgt))
        model.zero_grad()
        model.backward()
        sg.clip_grad_norm(model, 1.0)
        opt.step()
    assert losses[-1] < 0.5 * losses[0]


def test_adamw_matches_torch_adamw_over_several_steps():
    cfg = sg.GPTConfig(**TINY, qkv_bias=True)
    model = sg.GPTModel(cfg, seed=0, dtype="float64")
    opt = sg.AdamW(model, lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    names = list(model.state_dict())
    P = {k: torch.tensor(np.array(model.state_dict()[k]), requires_grad=True) for k in names}
    decay = [P[k] for k in names if P[k].ndim >= 2]
    no_decay = [P[k] for k in names if P[k].ndim < 2]
    topt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=3e-3, betas=(0.9, 0.95), eps=1e-8)
    r = np.random.default_rng(0)
    for step in range(5):
        g = r.standard_normal(model.flat_grads.shape)
        model.flat_grads[...] = g
        for k in names:
            P[k].grad = torch.tensor(np.array(model.grads()[k]))
        opt.step()
        topt.step()
    for k in names:
        assert rel_err(model.state_dict()[k], P[k]) < 1e-6, k


def test_clip_grad_norm_matches_torch():
    cfg = sg.GPTConfig(**TINY)
    model = sg.GPTModel(cfg, dtype="float64")
    model.flat_grads[...] = np.random.default_rng(0).standard_normal(model.flat_grads.shape)
    ts = [torch.zeros(model.flat_grads.shape, dtype=torch.float64, requires_grad=True)]
    ts[0].grad = torch.tensor(np.array(model.flat_grads))
    ref_norm = torch.nn.utils.clip_grad_norm_(ts, 1.0)
    norm = sg.clip_grad_norm(model, 1.0)
    assert abs(norm - float(ref_norm)) < 1e-9 * norm
    assert rel_err(model.flat_grads, ts[0].grad) < 1e-12


def test_deepcopy_gives_an_independent_working_model():
    import copy
    cfg = sg.GPTConfig(**TINY)
    a = sg.GPTModel(cfg, seed=0)
    idx, tgt = batch(cfg, 2, 6)
    b = copy.deepcopy(a)
    np.testing.assert_array_equal(a(idx), b(idx))
    opt = sg.AdamW(b, lr=1e-2)
    b.loss(idx, tgt)
    b.zero_grad()
    b.backward()
    assert b.grads()["transformer.ln_f.bias"].any()         # the copy's layers write its own buffers
    opt.step()
    assert not np.array_equal(a(idx), b(idx))              # and the original is untouched


@pytest.mark.parametrize("trainable,lowest", [
    (["*.bias"], 0), (["*.weight"], 0), (["transformer.h.1", "transformer.ln_f"], 1),
    (["transformer.wpe", "transformer.h.0.attn.c_attn.weight"], 0), (["transformer.wte", "transformer.h.1"], 0),
    (["transformer.ln_f"], 2)])
def test_frozen_parameters_get_no_gradient_and_the_others_their_full_one(kernels, trainable, lowest):
    """Freezing changes which gradients are written, never their values: a frozen weight's
    layer still passes dx down (and its trainable bias gets db), a frozen LayerNorm weight
    leaves its bias training, frozen embeddings below a trainable position table stay zero.
    backward() stops below the lowest block holding a trainable parameter (at the bottom when
    an embedding trains)."""
    cfg = sg.GPTConfig(**TINY, qkv_bias=True, tie_weights=False)
    model = sg.GPTModel(cfg, seed=0, dtype="float64")
    idx, tgt = batch(cfg, 2, 6)
    model.loss(idx, tgt)
    model.backward()
    full = {k: g.copy() for k, g in model.grads().items()}
    model.set_trainable(trainable)
    assert model.frozen and model.trainable_names() and model.lowest_block == lowest
    assert model.num_trainable_parameters() == sum(full[k].size for k in model.trainable_names())
    model.loss(idx, tgt)
    model.backward()
    for k, g in model.grads().items():
        if k in model.frozen:
            assert not g.any(), f"{k} is frozen but got a gradient"
        else:
            np.testing.assert_allclose(g, full[k], rtol=1e-12, atol=1e-15, err_msg=k)


def test_backward_refuses_when_there_is_nothing_to_differentiate():
    cfg = sg.GPTConfig(**TINY)
    model = sg.GPTModel(cfg, seed=0)
    idx, tgt = batch(cfg, 1, 4)
    with pytest.raises(RuntimeError, match=r"^backward\(\) needs a forward pass first: "
                                           r"call model.loss\(\.\.\.\) or model\(idx\)$"):
        model.backward()
    no_loss = r"^backward\(\) without dlogits needs model.loss\(idx, targets\) first$"
    model.loss(idx, tgt)
    model(idx)                                   # a plain forward after the loss: no loss to differentiate
    with pytest.raises(RuntimeError, match=no_loss):
        model.backward()
    model.loss(idx, tgt)
    model.backward()
    with pytest.raises(RuntimeError, match=no_loss):          # a loss is differentiated once
        model.backward()
    model.backward(np.ones((1, 4, cfg.vocab_size), np.float32))   # with dlogits it still works


def test_loss_skips_the_targets_equal_to_its_ignore_index():
    cfg = sg.GPTConfig(**TINY)
    model = sg.GPTModel(cfg, seed=0, dtype="float64")
    idx, tgt = batch(cfg, 2, 6)
    tgt[:, 1::3] = -1
    logits = model(idx)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    keep = tgt != -1
    want = -np.take_along_axis(logp, np.where(keep, tgt, 0)[..., None], -1)[..., 0][keep].mean()
    assert abs(model.loss(idx, tgt, ignore_index=-1) - want) < 1e-12
    with pytest.raises(ValueError, match=r"target id -1 .* not ignore_index \(-100\)"):
        model.loss(idx, tgt)


def test_inputs_may_be_lists_and_bad_ones_get_exact_messages():
    cfg = sg.GPTConfig(**TINY)
    model = sg.GPTModel(cfg, seed=0, dtype="float64")
    idx, tgt = [[1, 2, 3], [4, 5, 6]], [[2, 3, 4], [5, 6, -100]]
    np.testing.assert_array_equal(model(idx), model(np.array(idx)))
    assert model.loss(idx, tgt) == model.loss(np.array(idx), np.array(tgt))
    ids = np.array([[0, 1, 2]])
    cases = [
        (lambda: model(np.array([[0, 11]])), r"^token id 11 is outside the vocabulary \(size 11\)$"),
        (lambda: model(np.zeros((1, 2))), r"^token ids must be integers, got dtype float64$"),
        (lambda: model(np.zeros((1, 0), np.int64)), r"^token ids are empty: need at least one token per sequence$"),
        (lambda: model.loss(ids, np.zeros((1, 3))), r"^targets must be integers, got dtype float64$"),
        (lambda: model.loss(ids, np.zeros((1, 2), np.int64)), r"^targets have shape \(1, 2\), the inputs \(1, 3\)$"),
        (lambda: model.loss(ids, np.array([[1, 11, 12]])),
         r"^target id 11 is outside the vocabulary \(size 11\) and is not ignore_index \(-100\)$"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


def test_train_and_eval_set_a_boolean_mode_and_return_the_model():
    model = sg.GPTModel(sg.GPTConfig(**TINY))
    assert model.training is True
    assert model.eval() is model and model.training is False
    assert model.train() is model and model.training is True
    assert model.train(False).training is False


def test_deepcopy_keeps_gradients_and_references_into_the_model():
    import copy
    cfg = sg.GPTConfig(**TINY)
    a = sg.GPTModel(cfg, seed=0)
    idx, tgt = batch(cfg, 2, 6)
    a.loss(idx, tgt)
    a.backward()
    wte = a.params["transformer.wte.weight"]
    b, b_wte = copy.deepcopy((a, wte))                     # one deepcopy: shared objects stay shared
    assert b_wte is b.params["transformer.wte.weight"] and b_wte is not wte
    for k, g in a.grads().items():
        np.testing.assert_array_equal(b.grads()[k], g, err_msg=k)


def test_config_errors_name_the_field_and_the_value():
    cases = [({"n_layers": 0}, r"^GPTConfig.n_layers must be a positive integer, got 0$"),
             ({"drop_rate": 1.0}, r"^drop_rate must be in \[0, 1\), got 1.0$"),
             ({"drop_rate": 1.5}, r"^drop_rate must be in \[0, 1\), got 1.5$"),
             ({"gelu_approximate": "erf"}, r"^gelu_approximate must be 'tanh' or 'none', got 'erf'$")]
    for change, message in cases:
        with pytest.raises(ValueError, match=message):
            sg.GPTConfig(**{**TINY, **change})
    with pytest.raises(ValueError, match=r"^unknown GPTConfig fields: \['n_embd'\]$"):
        sg.GPTConfig.from_dict({**TINY, "n_embd": 12})
    cfg = sg.GPTConfig(**TINY, drop_rate=0.999)
    assert sg.GPTConfig.from_dict(cfg.to_dict()) == cfg
    np.testing.assert_array_equal(sg.GPTModel(cfg.to_dict()).flat_params, sg.GPTModel(cfg).flat_params)


def test_the_init_is_gpt2s_and_the_seed_picks_it():
    """N(0, 0.02) weights, residual projections (c_proj) N(0, 0.02 / sqrt(2 n_layers)), biases 0,
    LayerNorm weights 1; seed 0 by default; dropout draws from its own generator, seed + 1 (the
    one train --init-from recreates)."""
    from scratchgpt.rng import DropoutRNG
    cfg = sg.GPTConfig(vocab_size=50, context_length=32, emb_dim=64, n_heads=4, n_layers=4, qkv_bias=True)
    model = sg.GPTModel(cfg, seed=0, dtype="float64")
    for k, p in model.params.items():
        if k.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            assert (p == 1).all(), k
        elif p.ndim == 1:
            assert not p.any(), k
        else:
            std = 0.02 / np.sqrt(2 * cfg.n_layers) if k.endswith("c_proj.weight") else 0.02
            assert abs(p.std() / std - 1) < 0.06 and abs(p.mean()) < 4 * std / np.sqrt(p.size), k
    np.testing.assert_array_equal(sg.GPTModel(cfg, dtype="float64").flat_params, model.flat_params)
    assert not np.array_equal(sg.GPTModel(cfg, seed=1, dtype="float64").flat_params, model.flat_params)
    for seed in (0, 5):
        a, b = sg.GPTModel(cfg, seed=seed).rng, DropoutRNG(seed + 1)
        np.testing.assert_array_equal(a.random((3, 4)), b.random((3, 4)))


def test_gelu_and_feed_forward_default_to_gpt2s_tanh_approximation():
    from scratchgpt.model import GELU, FeedForward
    x = np.linspace(-3, 3, 7)
    np.testing.assert_allclose(GELU().forward(x), sg.ops.gelu_forward(x, "tanh")[0], rtol=1e-12)   # erf: 1e-3 off
    model = sg.GPTModel(sg.GPTConfig(**TINY), seed=0, dtype="float64")
    h = np.random.default_rng(0).standard_normal((1, 3, TINY["emb_dim"]))
    np.testing.assert_array_equal(FeedForward(model, "transformer.h.0.mlp.").forward(h),
                                  model.trf_blocks[0].ff.forward(h))
