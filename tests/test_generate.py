"""Sampling and the KV cache."""
import numpy as np
import pytest

import scratchgpt as sg
from scratchgpt.generate import generate, generate_text, sample_next
from scratchgpt.tokenizer import CharTokenizer


def tiny(dtype="float32", **kw):
    cfg = sg.GPTConfig(vocab_size=13, context_length=10, emb_dim=16, n_heads=2, n_layers=2, qkv_bias=True, **kw)
    return sg.GPTModel(cfg, seed=0, dtype=dtype).eval()


@pytest.mark.parametrize("post_norm", [False, True])
def test_kv_cache_equals_the_uncached_forward(post_norm):
    model = tiny(post_norm=post_norm)
    idx = np.random.default_rng(0).integers(0, 13, size=(3, 10))
    full = model(idx)
    cache = model.kv_cache(3)
    parts = [model(idx[:, :4], kv_cache=cache)]                        # prefill
    parts += [model(idx[:, t:t + 1], kv_cache=cache) for t in range(4, 10)]
    assert cache.length == 10
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="longer than the context length"):
        model(idx[:, :1], kv_cache=cache)                              # the cache is full


def test_kv_cache_runs_through_lora_layers_too():
    from scratchgpt.lora import add_lora
    model = add_lora(tiny("float64"), rank=2, freeze=False)
    for k in model.params:
        if k.endswith("lora_B"):
            model.params[k][...] = np.random.default_rng(1).normal(0, 0.1, model.params[k].shape)
    idx = np.random.default_rng(0).integers(0, 13, size=(2, 7))
    cache = model.kv_cache(2)
    parts = [model(idx[:, :3], kv_cache=cache)] + [model(idx[:, t:t + 1], kv_cache=cache) for t in range(3, 7)]
    np.testing.assert_allclose(np.concatenate(parts, axis=1), model(idx), rtol=1e-12, atol=1e-12)


def test_generation_with_and_without_cache_agree_past_the_context_window():
    model = tiny()
    prompt = np.array([[1, 2, 3], [4, 5, 6]])
    a = generate(model, prompt, 20, temperature=1.0, top_k=5, rng=np.random.default_rng(7))
    b = generate(model, prompt, 20, temperature=1.0, top_k=5, rng=np.random.default_rng(7), use_cache=False)
    assert a.shape == (2, 23)
    np.testing.assert_array_equal(a, b)


def test_greedy_is_argmax_and_seeded_sampling_is_reproducible():
    model = tiny()
    prompt = np.array([[1, 2]])
    g = generate(model, prompt, 1)
    assert g[0, -1] == model(prompt)[0, -1].argmax()
    s1 = generate(model, prompt, 8, temperature=1.0, rng=np.random.default_rng(3))
    s2 = generate(model, prompt, 8, temperature=1.0, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(s1, s2)


def test_top_k_and_top_p_restrict_the_choices():
    rng = np.random.default_rng(0)
    logits = np.tile(np.array([[3.0, 2.5, 2.0, -1.0, -2.0]], dtype=np.float32), (2000, 1))
    k2 = sample_next(logits, temperature=1.0, top_k=2, rng=rng)
    assert set(np.unique(k2)) == {0, 1}
    p = np.exp(logits[0]) / np.exp(logits[0]).sum()            # 0.49, 0.30, 0.18, ...
    tp = sample_next(logits, temperature=1.0, top_p=0.7, rng=rng)
    assert set(np.unique(tp)) == {0, 1}                         # 0.49 < 0.7 <= 0.49 + 0.30
    assert abs((tp == 0).mean() - p[0] / (p[0] + p[1])) < 0.05
    low = sample_next(logits, temperature=0.05, rng=rng)
    assert (low == 0).mean() > 0.99


def test_prompt_longer_than_context_is_cropped_and_unknown_chars_are_named():
    model = tiny()
    out = generate(model, np.arange(13)[None, :] % 13, 2)
    assert out.shape == (1, 15)
    tok = CharTokenizer.from_text("abcdefghijklm")
    with pytest.raises(ValueError, match="'z'"):
        generate_text(model, tok, "abz", 5)


def test_eos_stops_generation():
    model = tiny()
    first = int(generate(model, np.array([[1]]), 1)[0, -1])
    out = generate(model, np.array([[1]]), 10, eos_id=first)
    assert out.shape == (1, 2)
