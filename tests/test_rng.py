"""Dropout's counter-based generator (scratchgpt/rng.py): the published SplitMix64 numbers,
uniform draws, a state that is plain JSON and continues exactly where it stopped."""
import copy
import json

import numpy as np
import pytest

import scratchgpt as sg
from scratchgpt.rng import GOLDEN, DropoutRNG, draw_key, mix64, uniform


def test_the_hash_is_splitmix64():
    # SplitMix64 seeded with 0 starts 0xe220a8397b1dcdaf, 0x6e789e6aa1b965f4, 0x06c45d188009454f
    # (the reference C code of Vigna's xoshiro page; the same numbers in Java's SplittableRandom)
    assert [mix64(k * GOLDEN) for k in (1, 2, 3)] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4,
                                                      0x06C45D188009454F]
    u = uniform(np, 0, (5,), np.dtype(np.float64))                  # the array code gives the same bits,
    z = [mix64(k * GOLDEN) for k in (1, 2, 3)]                      # two 24-bit numbers per hash
    assert list(u * 2 ** 24) == [z[0] >> 40, (z[0] >> 16) & 0xFFFFFF, z[1] >> 40, (z[1] >> 16) & 0xFFFFFF,
                                 z[2] >> 40]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_draws_are_uniform_and_independent(dtype):
    rng = DropoutRNG(7)
    a, b = rng.random((400, 500), dtype=dtype), rng.random((400, 500), dtype=dtype)
    assert a.dtype == dtype and a.shape == (400, 500)
    assert a.min() >= 0.0 and a.max() < 1.0
    # 200,000 uniforms: mean 1/2 and variance 1/12 within 5 standard errors
    assert abs(a.mean() - 0.5) < 5 * np.sqrt(1 / 12 / a.size)
    assert abs(a.var() - 1 / 12) < 5 * np.sqrt(1 / 180 / a.size)
    counts = np.bincount((a * 10).astype(int).ravel(), minlength=10)     # chi-square over 10 bins
    assert ((counts - a.size / 10) ** 2 / (a.size / 10)).sum() < 40     # 9 dof: p < 1e-5
    assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.02           # draw n vs draw n + 1
    assert abs(np.corrcoef(a.ravel()[:-1], a.ravel()[1:])[0, 1]) < 0.02  # neighbouring elements


def test_the_state_is_json_and_a_restored_generator_continues_exactly():
    rng = DropoutRNG(3)
    rng.random((5, 4))
    state = json.loads(json.dumps(rng.state_dict()))
    expected = [rng.random((5, 4), dtype=np.float32) for _ in range(3)]
    again = DropoutRNG(0)
    again.load_state_dict(state)
    for e in expected:
        np.testing.assert_array_equal(again.random((5, 4), dtype=np.float32), e)
    assert DropoutRNG(4).random(20).tolist() != DropoutRNG(3).random(20).tolist()     # the seed matters
    assert draw_key(3, 0) != draw_key(3, 1) != draw_key(4, 0)
    with pytest.raises(ValueError, match="not a DropoutRNG state"):
        again.load_state_dict(np.random.default_rng(0).bit_generator.state)


def test_float32_and_float64_draws_give_the_same_masks():
    a, b = DropoutRNG(5).random((64, 64), dtype=np.float32), DropoutRNG(5).random((64, 64), dtype=np.float64)
    np.testing.assert_array_equal(a >= 0.1, b >= 0.1)


def test_a_model_copy_continues_the_dropout_stream():
    cfg = sg.GPTConfig(vocab_size=11, context_length=8, emb_dim=8, n_heads=2, n_layers=1, drop_rate=0.5)
    model = sg.GPTModel(cfg, seed=0)
    idx = np.arange(8).reshape(1, 8) % 11
    model(idx)                                       # draws some masks
    twin = copy.deepcopy(model)
    np.testing.assert_array_equal(model(idx), twin(idx))
    assert model.rng.state_dict() == twin.rng.state_dict() and model.rng is not twin.rng


@pytest.mark.parametrize("start,n", [(0, 7), (1, 6), (2, 5), (3, 4), (5, 1)])
def test_a_slice_of_a_draw_is_the_same_numbers_as_the_whole_draw(start, n):
    # a data-parallel rank draws only its rows' part of a draw (scratchgpt/distributed.py)
    whole = uniform(np, draw_key(3, 4), (8,), np.dtype(np.float64))
    part = uniform(np, draw_key(3, 4), (n,), np.dtype(np.float64), start=start)
    np.testing.assert_array_equal(part, whole[start:start + n])
