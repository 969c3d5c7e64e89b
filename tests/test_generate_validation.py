"""scratchgpt/generate.py at its edges: bad sampling settings, several rows reaching the
end-of-sequence token at different steps, the model's training mode, empty and over-long prompts."""
import numpy as np
import pytest

import scratchgpt as sg
from scratchgpt.generate import generate, generate_text, sample_next
from scratchgpt.tokenizer import CharTokenizer


def tiny():
    cfg = sg.GPTConfig(vocab_size=13, context_length=10, emb_dim=16, n_heads=2, n_layers=2, qkv_bias=True)
    return sg.GPTModel(cfg, seed=0, dtype="float64").eval()


@pytest.mark.parametrize("settings,message", [
    (dict(temperature=-0.5), "temperature must be >= 0, got -0.5"),
    (dict(temperature=1.0, top_k=0), "top_k must be >= 1, got 0"),
    (dict(temperature=1.0, top_p=0.0), r"top_p must be in \(0, 1\], got 0.0"),
    (dict(temperature=1.0, top_p=1.5), r"top_p must be in \(0, 1\], got 1.5"),
])
def test_bad_sampling_settings_are_refused_with_the_value(settings, message):
    logits = np.zeros((2, 5))
    with pytest.raises(ValueError, match=message):
        sample_next(logits, rng=np.random.default_rng(0), **settings)
    model = tiny().train()
    with pytest.raises(ValueError, match=message):
        generate(model, np.array([[1, 2]]), 3, rng=np.random.default_rng(0), **settings)
    assert model.training                                   # restored on the way out of an error


def test_top_p_of_one_keeps_every_token_and_top_k_of_v_changes_nothing():
    logits = np.random.default_rng(1).normal(size=(4, 7))
    draws = {}
    for name, kw in (("plain", {}), ("top_p=1", dict(top_p=1.0)), ("top_k=V", dict(top_k=7))):
        draws[name] = sample_next(logits, temperature=1.0, rng=np.random.default_rng(5), **kw)
    np.testing.assert_array_equal(draws["plain"], draws["top_p=1"])
    np.testing.assert_array_equal(draws["plain"], draws["top_k=V"])


@pytest.mark.parametrize("start", [True, False])
def test_generation_restores_the_training_mode_it_found(start):
    model = tiny().train(start)
    generate(model, np.array([[1, 2]]), 3)
    assert model.training is start


def test_rows_that_reach_the_end_token_keep_it_while_the_others_go_on():
    model = tiny()
    greedy = lambda row, n: [int(t) for t in generate(model, np.array([row]), n)[0, len(row):]]
    # a row that produces `eos` at once, and another whose greedy path avoids it for 6 steps
    for first in range(13):
        eos = greedy([first], 1)[0]
        after = greedy([first], 6)
        if any(t != eos for t in after[1:]):        # without the eos rule this row would go on differently
            others = [r for r in range(13) if eos not in greedy([r], 6)]
            if others:
                break
    else:
        pytest.fail("this model has no pair of prompts to tell the rows apart: pick another seed")
    other = others[0]
    out = generate(model, np.array([[first], [other]]), 6, eos_id=eos)
    assert out.shape == (2, 7)                              # no row was done before the 6th token
    assert [int(t) for t in out[0, 1:]] == [eos] * 6        # the finished row only repeats eos
    assert [int(t) for t in out[1, 1:]] == greedy([other], 6)
    both = generate(model, np.array([[first], [first]]), 6, eos_id=eos)
    assert both.shape == (2, 2)                             # every row done: it stops early


def test_an_empty_prompt_is_refused():
    tok = CharTokenizer.from_text("abcdefghijklm")
    with pytest.raises(ValueError, match="the prompt is empty"):
        generate_text(tiny(), tok, "", 3)
    with pytest.raises(ValueError, match="empty"):
        generate(tiny(), np.zeros((1, 0), dtype=np.int64), 3)


def test_a_prompt_longer_than_the_context_continues_from_its_last_window():
    model = tiny()
    prompt = (np.arange(13)[None, :] * 5) % 13               # 13 tokens, context 10
    out = generate(model, prompt, 3)
    np.testing.assert_array_equal(out[:, :13], prompt)       # the prompt is returned whole
    window = generate(model, prompt[:, -10:], 3)             # what the book's cropping means
    np.testing.assert_array_equal(out[:, 13:], window[:, 10:])
    head = generate(model, prompt[:, :10], 3)
    assert not np.array_equal(out[:, 13:], head[:, 10:])     # (the start of the prompt would differ)
    uncached = generate(model, prompt, 3, use_cache=False)
    np.testing.assert_array_equal(out, uncached)


# ---- the sampler's edges (each test below was written for a mutant that survived) ----------
def test_the_default_is_greedy_and_top_k_of_one_is_argmax():
    logits = np.random.default_rng(2).normal(size=(5, 9))
    np.testing.assert_array_equal(sample_next(logits), logits.argmax(axis=-1))
    rng = np.random.default_rng(0)
    for _ in range(20):
        np.testing.assert_array_equal(sample_next(logits, temperature=3.0, top_k=1, rng=rng),
                                      logits.argmax(axis=-1))


def test_top_k_keeps_k_tokens_per_row_whatever_the_batch_size():
    logits = np.random.default_rng(3).normal(size=(2, 12))          # B = 2 < top_k = 5 < V = 12
    rng = np.random.default_rng(1)
    seen = [set(), set()]
    for _ in range(400):
        for row, t in enumerate(sample_next(logits, temperature=5.0, top_k=5, rng=rng)):
            seen[row].add(int(t))
    for row in range(2):
        assert seen[row] == set(np.argsort(-logits[row])[:5].tolist())


def test_top_p_drops_a_token_whose_mass_above_reaches_top_p_exactly():
    logits = np.zeros((1, 2))                                        # probabilities exactly 0.5, 0.5
    rng = np.random.default_rng(4)
    draws = [int(sample_next(logits, temperature=1.0, top_p=0.5, rng=rng)[0]) for _ in range(50)]
    assert set(draws) == {0}                                         # token 1 has 0.5 above it: dropped
    both = {int(sample_next(logits, temperature=1.0, top_p=0.51, rng=rng)[0]) for _ in range(50)}
    assert both == {0, 1}


def test_every_token_can_be_drawn_from_a_single_row_without_a_generator():
    logits = np.zeros((1, 4))
    draws = {int(sample_next(logits, temperature=1.0)[0]) for _ in range(200)}     # rng=None: fresh entropy
    assert draws == {0, 1, 2, 3}                                      # the first and the last included
    last = np.array([[0.0, 0.0, 0.0, 8.0]])
    rng = np.random.default_rng(5)
    assert np.mean([int(sample_next(last, temperature=1.0, rng=rng)[0]) == 3 for _ in range(200)]) > 0.95
