"""ops/gqa.py (grouped-query attention) against torch autograd with Hugging Face's repeat_kv."""
import numpy as np
import pytest
import torch

from conftest import assert_close
from ops_helpers import DTYPES, randn, tt
from scratchgpt.ops.gqa import grouped_query_attention_backward, grouped_query_attention_forward

rng = np.random.default_rng(4)


def torch_gqa(q, k, v, start=0):
    """Each key/value head repeated for its G query heads (transformers' repeat_kv), then causal attention."""
    G = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)
    Tq, Tk = q.shape[2], k.shape[2]
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    future = torch.arange(Tk)[None, :] > start + torch.arange(Tq)[:, None]
    return torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1) @ v


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,H,KV,T,hd", [(1, 1, 1, 1, 2), (2, 4, 2, 5, 8), (1, 6, 1, 7, 4), (2, 3, 3, 4, 6)])
def test_gqa_matches_torch(dtype, B, H, KV, T, hd):
    q, k, v = randn(rng, B, H, T, hd, dtype=dtype), randn(rng, B, KV, T, hd, dtype=dtype), randn(rng, B, KV, T, hd, dtype=dtype)
    y, cache = grouped_query_attention_forward(q, k, v)
    dy = randn(rng, *y.shape, dtype=dtype)
    dq, dk, dv = grouped_query_attention_backward(dy, cache)
    qt, kt, vt = tt(q), tt(k), tt(v)
    ref = torch_gqa(qt, kt, vt)
    ref.backward(torch.tensor(dy, dtype=torch.float64))
    assert y.dtype == dq.dtype == dk.dtype == dv.dtype == dtype
    assert_close(y, ref, dtype, "forward")
    assert_close(dq, qt.grad, dtype, "dq")
    assert_close(dk, kt.grad, dtype, "dk (summed over each group)")
    assert_close(dv, vt.grad, dtype, "dv (summed over each group)")


def test_gqa_new_queries_after_cached_keys_match_the_full_sequence():
    """start > 0 is the KV cache's case: the last 2 queries against all 6 keys."""
    q, k, v = randn(rng, 1, 4, 6, 8), randn(rng, 1, 2, 6, 8), randn(rng, 1, 2, 6, 8)
    full, _ = grouped_query_attention_forward(q, k, v)
    tail, _ = grouped_query_attention_forward(q[:, :, 4:], k, v, start=4)
    np.testing.assert_allclose(tail, full[:, :, 4:], rtol=1e-13)


def test_gqa_refuses_heads_that_do_not_split_into_groups():
    with pytest.raises(ValueError, match="5 query heads cannot be split into 2"):
        grouped_query_attention_forward(randn(rng, 1, 5, 2, 4), randn(rng, 1, 2, 2, 4), randn(rng, 1, 2, 2, 4))
