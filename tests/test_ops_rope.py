"""ops/rope.py: the rotation against torch autograd, the frequencies against Hugging Face's."""
import math

import numpy as np
import pytest
import torch

from conftest import assert_close
from ops_helpers import DTYPES, import_transformers, randn, tt
from scratchgpt.ops.rope import rope_backward, rope_cos_sin, rope_forward, rope_inv_freq

rng = np.random.default_rng(2)


def torch_rope(x, cos, sin):
    """Hugging Face's apply_rotary_pos_emb, written out."""
    h = x.shape[-1] // 2
    rotated = torch.cat((-x[..., h:], x[..., :h]), dim=-1)
    return x * cos + rotated * sin


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,H,T,hd", [(1, 1, 1, 2), (2, 3, 5, 8), (1, 4, 9, 16)])
def test_rope_matches_torch(dtype, B, H, T, hd):
    cos, sin = rope_cos_sin(rope_inv_freq(hd, 500.0), T)
    cos, sin = cos.astype(dtype), sin.astype(dtype)
    x = randn(rng, B, H, T, hd, dtype=dtype)
    out, cache = rope_forward(x, cos, sin)
    dout = randn(rng, *x.shape, dtype=dtype)
    dx = rope_backward(dout, cache)
    xt = tt(x)
    ref = torch_rope(xt, torch.tensor(cos, dtype=torch.float64), torch.tensor(sin, dtype=torch.float64))
    ref.backward(torch.tensor(dout, dtype=torch.float64))
    assert out.dtype == dx.dtype == dtype
    assert_close(out, ref, dtype, "forward")
    assert_close(dx, xt.grad, dtype, "dx")


def test_rope_backward_is_the_inverse_rotation():
    cos, sin = rope_cos_sin(rope_inv_freq(8), 6)
    x = randn(rng, 2, 6, 8)
    out, cache = rope_forward(x, cos, sin)
    np.testing.assert_allclose(rope_backward(out, cache), x, atol=1e-14)       # R^T R x = x
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-14)


def test_rope_scores_depend_only_on_the_distance():
    cos, sin = rope_cos_sin(rope_inv_freq(8), 12)
    q, k = randn(rng, 8), randn(rng, 8)
    qs, _ = rope_forward(np.tile(q, (12, 1)), cos, sin)
    ks, _ = rope_forward(np.tile(k, (12, 1)), cos, sin)
    np.testing.assert_allclose(qs[7] @ ks[4], qs[3] @ ks[0], rtol=1e-12)


def test_inv_freq_is_base_to_the_minus_2i_over_d():
    np.testing.assert_allclose(rope_inv_freq(8, 10_000.0), [10_000.0 ** (-i / 8) for i in (0, 2, 4, 6)],
                               rtol=1e-15)


LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 64}


@pytest.mark.parametrize("head_dim,base", [(64, 500_000.0), (16, 10_000.0)])
def test_llama3_rope_scaling_matches_hugging_face(head_dim, base):
    """transformers computes the frequencies in float32, so the match is to float32 rounding;
    the chosen small original context puts frequencies in all three bands."""
    transformers = import_transformers()
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    cfg = transformers.LlamaConfig(hidden_size=head_dim * 2, num_attention_heads=2, max_position_embeddings=512,
                      rope_parameters={"rope_theta": base, **LLAMA3_SCALING})
    ref, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg)
    ours = rope_inv_freq(head_dim, base, LLAMA3_SCALING)
    wavelen = 2 * math.pi / rope_inv_freq(head_dim, base)
    bands = [(wavelen < 16).any(), ((wavelen >= 16) & (wavelen <= 64)).any(), (wavelen > 64).any()]
    assert all(bands), "the test should cover the kept, the blended and the divided frequencies"
    np.testing.assert_allclose(ours, ref.double().numpy(), rtol=1e-6)
    assert not np.allclose(ours, rope_inv_freq(head_dim, base))


def test_unknown_rope_scaling_is_refused():
    with pytest.raises(ValueError, match="'yarn' is not supported"):
        rope_inv_freq(8, 10_000.0, {"rope_type": "yarn", "factor": 4.0})


def test_the_tables_turn_pair_i_at_position_p_by_p_times_base_to_the_minus_2i_over_d():
    cos, sin = rope_cos_sin(rope_inv_freq(8), 5)               # base 10,000 by default
    assert cos.shape == sin.shape == (5, 8)
    for p in range(5):
        for i in range(4):
            angle = p * 10_000.0 ** (-2 * i / 8)
            for col in (i, i + 4):                             # pair i is (i, i + hd/2)
                assert abs(cos[p, col] - math.cos(angle)) < 1e-15 and abs(sin[p, col] - math.sin(angle)) < 1e-15


def test_llama3_scaling_is_the_books_formula_for_any_band_factors():
    """The book's Llama 3.1 frequency adjustment, written out here, with low_freq_factor 2 (not
    Llama's 1, where old / low and old * low agree); "type" is the older config key."""
    scaling = {"factor": 8.0, "low_freq_factor": 2.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    inv = 1.0 / 10_000.0 ** (np.arange(0, 16, 2) / 16)
    low_wavelen, high_wavelen, wavelen = 64 / 2.0, 64 / 4.0, 2 * np.pi / inv
    want = np.where(wavelen > low_wavelen, inv / 8.0, inv)
    smooth = (64 / wavelen - 2.0) / (4.0 - 2.0)
    medium = (wavelen <= low_wavelen) & (wavelen >= high_wavelen)
    want = np.where(medium, (1 - smooth) * inv / 8.0 + smooth * inv, want)
    assert medium.any() and (wavelen > low_wavelen).any() and (wavelen < high_wavelen).any()
    for key in ("rope_type", "type"):
        np.testing.assert_allclose(rope_inv_freq(16, 10_000.0, {key: "llama3", **scaling}), want, rtol=1e-14)


def test_an_odd_head_dim_is_refused():
    with pytest.raises(ValueError, match=r"^rotary embeddings need an even head_dim, got 7$"):
        rope_inv_freq(7)
