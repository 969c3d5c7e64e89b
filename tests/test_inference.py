"""backend.inference(): forward passes that keep no caches (evaluation, sampling) give the same
logits and losses as the ordinary forward, keep nothing a backward would need, and the
kernels' cheaper paths for it (attention without its weights, the loss without its gradient)
agree with the full ones."""
import numpy as np
import pytest

import scratchgpt as sg
import scratchgpt.kernels as K
from scratchgpt import backend
from scratchgpt.train import TrainConfig, estimate_loss

TINY = dict(vocab_size=13, context_length=8, emb_dim=12, n_heads=3, n_layers=2)
DTYPES = [np.float64, np.float32]


def caches(model):
    """Every cache the layers of a GPTModel hold after a forward."""
    out = [model.tok_emb.cache, model.pos_emb.cache, model.final_norm.cache, model.out_head.cache]
    for b in model.trf_blocks:
        out += [b.norm1.cache, b.norm2.cache, b.att.cache, b.att.c_attn.cache, b.att.c_proj.cache,
                b.ff.c_fc.cache, b.ff.gelu.cache, b.ff.c_proj.cache]
    return out


@pytest.mark.parametrize("dtype", DTYPES)
def test_inference_gives_the_same_logits_and_loss_and_keeps_no_cache(dtype, kernels):
    model = sg.GPTModel(sg.GPTConfig(**TINY), seed=0, dtype=dtype).eval()
    r = np.random.default_rng(0)
    idx, tgt = r.integers(0, 13, (3, 8)), r.integers(0, 13, (3, 8))
    tgt[0, :3] = -100
    logits, loss = model(idx), model.loss(idx, tgt)
    with backend.inference():
        fast_logits, fast_loss = model(idx), model.loss(idx, tgt)
        assert all(c is None for c in caches(model))
        with pytest.raises(RuntimeError, match="needs a forward pass first"):
            model.backward()
    np.testing.assert_array_equal(fast_logits, logits)
    assert fast_loss == pytest.approx(loss, rel=1e-12 if dtype == np.float64 else 1e-6)


def test_inference_restores_the_op_set_after_an_error_and_nests(kernels):
    before = backend.ops
    with pytest.raises(KeyError):
        with backend.inference():
            with backend.inference():
                assert isinstance(backend.ops, backend.InferenceOps)
            assert isinstance(backend.ops, backend.InferenceOps)
            raise KeyError("boom")
    assert backend.ops is before


def test_estimate_loss_keeps_no_caches_and_training_still_backpropagates(kernels):
    cfg = TrainConfig(batch_size=2, context_length=8, eval_iters=2, seed=0)
    corpus = type("Corpus", (), {"train": np.arange(100) % 13, "val": np.arange(50) % 13})()
    model = sg.GPTModel(sg.GPTConfig(**TINY), seed=0)
    losses = estimate_loss(model, corpus, cfg, it=0)
    assert all(c is None for c in caches(model))
    assert np.isfinite(losses["val"]) and model.training
    model.loss(np.zeros((1, 8), np.int64), np.ones((1, 8), np.int64))
    model.backward()                                   # an ordinary forward keeps its caches again


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_loss_kernel_is_the_fused_kernels_loss(dtype, kernel_threads):
    r = np.random.default_rng(1)
    logits = (r.standard_normal((9, 70)) * 5).astype(dtype)
    targets = r.integers(0, 70, 9)
    targets[[2, 5]] = -100
    full, _ = K.cross_entropy_forward_backward(logits, targets)
    assert K.cross_entropy_loss(logits, targets) == pytest.approx(full, rel=1e-12)
    assert K.cross_entropy_loss(logits, np.full(9, -100)) == 0.0
    with pytest.raises(ValueError, match="outside the vocabulary"):
        K.cross_entropy_loss(logits, np.full(9, 70))


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_without_stored_weights_gives_the_same_output(dtype, kernel_threads):
    qkv = np.random.default_rng(2).standard_normal((2, 7, 3 * 12)).astype(dtype)
    y, att = K.causal_attention_forward(qkv, 3)
    y2, att2 = K.causal_attention_forward(qkv, 3, keep_att=False)
    assert att2 is None and att.shape == (6, 28)
    np.testing.assert_array_equal(y2, y)
