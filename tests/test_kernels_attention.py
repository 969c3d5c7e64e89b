"""Tests of the fused causal attention kernel (kernels/attention.py) and its dispatch from
scratchgpt.ops.attention: forward and backward against torch autograd (float64 within 1e-9,
float32 within 1e-4, relative to the largest entry), including T = 1 and head sizes that are
not powers of two."""

import math

import numpy as np
import pytest
import torch

pytest.importorskip("numba")

import scratchgpt.kernels as K  # noqa: E402
from scratchgpt import ops  # noqa: E402
from scratchgpt.kernels.ops import FastOps  # noqa: E402

TOL = {np.float64: 1e-9, np.float32: 1e-4}

# every test here runs once with the serial and once with the parallel kernels
pytestmark = pytest.mark.usefixtures("kernel_threads")
SHAPES = [  # (B, T, n_heads, head_dim)
    (2, 7, 3, 5),       # odd everything
    (1, 1, 2, 4),       # a single token: attends to itself only
    (3, 16, 4, 8),
    (2, 33, 6, 12),     # T and head_dim not powers of two
    (2, 5, 2, 7),       # a tile of one query row past the full ones; head_dim % 4 == 3
    (1, 64, 12, 64),    # GPT-2's head size
]


def rel_err(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def torch_attention(qkv, n_heads):
    """The book's causal attention in torch: scores, -inf mask, softmax, weighted sum of v."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    hd = C // n_heads
    q, k, v = (t.reshape(B, T, n_heads, hd).transpose(1, 2) for t in qkv.split(C, dim=2))
    s = q @ k.transpose(-2, -1) / math.sqrt(hd)
    s = s.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
    a = torch.softmax(s, dim=-1)
    return (a @ v).transpose(1, 2).reshape(B, T, C), a


def unpack(att, B, H, T):
    """Packed lower-triangular weights (B*H, T(T+1)/2) -> (B, H, T, T) with zeros above the diagonal."""
    full = np.zeros((B * H, T, T), dtype=att.dtype)
    rows, cols = np.tril_indices(T)
    full[:, rows, cols] = att                       # tril_indices walks row by row, as the packing does
    return full.reshape(B, H, T, T)


def make(B, T, H, hd, dtype, seed=0):
    r = np.random.default_rng(seed)
    qkv = r.standard_normal((B, T, 3 * H * hd)).astype(dtype)
    dy = r.standard_normal((B, T, H * hd)).astype(dtype)
    return qkv, dy


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("B,T,H,hd", SHAPES)
def test_attention_forward_and_backward_match_torch(B, T, H, hd, dtype):
    qkv, dy = make(B, T, H, hd, dtype)
    y, att = K.causal_attention_forward(qkv, H)
    dqkv = K.causal_attention_backward(dy, qkv, att, H)
    assert y.dtype == dtype and att.dtype == dtype and dqkv.dtype == dtype
    assert y.shape == (B, T, H * hd) and att.shape == (B * H, T * (T + 1) // 2)

    tq = torch.tensor(qkv.astype(np.float64), requires_grad=True)
    ty, ta = torch_attention(tq, H)
    ty.backward(torch.tensor(dy.astype(np.float64)))
    tol = TOL[dtype]
    assert rel_err(y, ty.detach()) <= tol
    assert rel_err(unpack(att, B, H, T), ta.detach()) <= tol
    assert rel_err(dqkv, tq.grad) <= tol


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_attention_weights_rows_sum_to_one_and_single_token_copies_v(dtype):
    qkv, _ = make(2, 9, 3, 4, dtype)
    y, att = K.causal_attention_forward(qkv, 3)
    full = unpack(att, 2, 3, 9)
    np.testing.assert_allclose(full.sum(-1), 1.0, rtol=1e-6)
    y1, _ = K.causal_attention_forward(qkv[:, :1], 3)        # one token: y = its own v
    np.testing.assert_array_equal(y1, qkv[:, :1, 24:])


def test_attention_out_buffers_are_used_and_reusable():
    qkv, dy = make(2, 10, 2, 4, np.float32)
    y0, a0 = K.causal_attention_forward(qkv, 2)
    d0 = K.causal_attention_backward(dy, qkv, a0, 2)
    y, a, d = np.full_like(y0, np.nan), np.full_like(a0, np.nan), np.full_like(d0, np.nan)
    for _ in range(2):                                       # stale contents must not leak in
        y1, a1 = K.causal_attention_forward(qkv, 2, out=y, att_out=a)
        d1 = K.causal_attention_backward(dy, qkv, a1, 2, out=d)
        assert y1 is y and a1 is a and d1 is d
        np.testing.assert_array_equal(y, y0)
        np.testing.assert_array_equal(a, a0)
        np.testing.assert_array_equal(d, d0)


def test_attention_errors_say_what_is_wrong():
    qkv, dy = make(1, 4, 2, 3, np.float32)
    with pytest.raises(ValueError, match="n_heads = 4"):
        K.causal_attention_forward(qkv, 4)
    with pytest.raises(TypeError, match="float32 or float64"):
        K.causal_attention_forward(qkv.astype(np.int32), 2)
    _, att = K.causal_attention_forward(qkv, 2)
    with pytest.raises(ValueError, match="dy must be"):
        K.causal_attention_backward(dy[:, :3], qkv, att, 2)
    with pytest.raises(ValueError, match="packed weights"):
        K.causal_attention_backward(dy, qkv, att[:, :-1], 2)
    with pytest.raises(ValueError, match="out must be"):
        K.causal_attention_forward(qkv, 2, out=np.empty((1, 4, 5), np.float32))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fast_attention_op_uses_the_kernel_and_agrees_with_the_reference(dtype):
    qkv, dy = make(2, 12, 3, 5, dtype)
    fast = FastOps(K)
    y_ref, c_ref = ops.attention_forward(qkv, 3)
    d_ref = ops.attention_backward(dy, c_ref)
    y, c = fast.attention_forward(qkv, 3)
    assert isinstance(c, ops.AttentionCache) and c.att.shape == (2 * 3, 12 * 13 // 2)   # packed weights
    d = fast.attention_backward(dy, c)
    assert rel_err(y, y_ref) <= TOL[dtype]
    assert rel_err(d, d_ref) <= TOL[dtype]
    np.testing.assert_array_equal(fast.attention_backward(dy, c_ref), d_ref)   # a reference cache: reference backward


def test_fast_attention_op_with_dropout_takes_the_reference_path():
    qkv, dy = make(1, 6, 2, 4, np.float32)
    fast = FastOps(K)
    y, c = fast.attention_forward(qkv, 2, drop_rate=0.5, rng=np.random.default_rng(0))
    assert c.att.ndim == 4 and c.drop_mask is not None   # the array code, which applies the mask
    y_eval, c_eval = fast.attention_forward(qkv, 2, drop_rate=0.5, rng=None)
    assert c_eval.att.ndim == 2 and c_eval.drop_mask is None   # evaluation mode: no mask, fused


# ---------------------------------------------------------------- generation: cached_attention_forward
CACHED = [  # (B, H, hd, context_length, start, T)
    (1, 2, 4, 8, 0, 1),         # the first token of an empty cache: attends to itself only
    (2, 3, 5, 12, 7, 1),        # one new token, odd head size (the sampling loop's call)
    (1, 2, 8, 16, 0, 6),        # a prompt into an empty cache
    (2, 2, 6, 20, 9, 4),        # several new tokens after cached ones
    (1, 3, 4, 9, 5, 4),         # filling the cache to its last position
]


def torch_cached_attention(qkv, keys, values, start, H):
    """torch: the new queries against all keys so far (cached ones first), causally masked."""
    B, T, C3 = qkv.shape
    hd = C3 // 3 // H
    q = torch.tensor(qkv[..., :C3 // 3], dtype=torch.float64).reshape(B, T, H, hd).transpose(1, 2)
    k, v = (torch.tensor(a, dtype=torch.float64) for a in (keys, values))           # (B, H, start + T, hd)
    future = torch.arange(start + T)[None, :] > (start + torch.arange(T))[:, None]
    y = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=~future)
    return y.transpose(1, 2).reshape(B, T, C3 // 3)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("B,H,hd,ctx,start,T", CACHED)
def test_cached_attention_matches_torch_and_fills_the_cache(B, H, hd, ctx, start, T, dtype):
    r = np.random.default_rng(1)
    qkv = r.standard_normal((B, T, 3 * H * hd)).astype(dtype)
    k_cache = np.full((B, H, ctx, hd), np.nan, dtype)     # positions past start + T stay untouched
    v_cache = np.full((B, H, ctx, hd), np.nan, dtype)
    k_cache[:, :, :start] = r.standard_normal((B, H, start, hd))
    v_cache[:, :, :start] = r.standard_normal((B, H, start, hd))
    k_ref, v_ref = k_cache.copy(), v_cache.copy()
    y = K.cached_attention_forward(qkv, k_cache, v_cache, start, H)
    y_ref = ops.cached_attention_forward(qkv, k_ref, v_ref, start, H)
    assert y.dtype == dtype and y.shape == (B, T, H * hd)
    np.testing.assert_array_equal(k_cache, k_ref)          # the new keys and values, copied exactly
    np.testing.assert_array_equal(v_cache, v_ref)
    end = start + T
    assert rel_err(y, torch_cached_attention(qkv, k_cache[:, :, :end], v_cache[:, :, :end], start, H)) <= TOL[dtype]
    assert rel_err(y, y_ref) <= TOL[dtype]


def test_cached_attention_errors_say_what_is_wrong():
    qkv = np.zeros((1, 2, 3 * 2 * 4), np.float32)
    cache = np.zeros((1, 2, 6, 4), np.float32)
    with pytest.raises(ValueError, match="do not fit the cache's 6 positions"):
        K.cached_attention_forward(qkv, cache, cache.copy(), 5, 2)
    with pytest.raises(ValueError, match="k_cache must be"):
        K.cached_attention_forward(qkv, cache[:, :, :, :3], cache, 0, 2)
    with pytest.raises(ValueError, match="v_cache must be"):
        K.cached_attention_forward(qkv, cache, cache.astype(np.float64), 0, 2)
    with pytest.raises(ValueError, match="v_cache must be"):
        K.cached_attention_forward(qkv, cache, np.zeros((1, 2, 7, 4), np.float32), 0, 2)
    with pytest.raises(ValueError, match="k_cache must be"):
        K.cached_attention_forward(qkv, np.zeros((1, 2, 4, 6), np.float32).transpose(0, 1, 3, 2), cache, 0, 2)
    with pytest.raises(ValueError, match="n_heads = 3"):
        K.cached_attention_forward(qkv, cache, cache.copy(), 0, 3)


def test_fast_cached_attention_runs_the_kernel_for_a_few_tokens_only(monkeypatch):
    from scratchgpt.kernels import ops as fast_ops
    calls = []
    kernel = K.cached_attention_forward
    fast = FastOps(K)
    monkeypatch.setattr(K, "cached_attention_forward", lambda *a: calls.append(a[0].shape[1]) or kernel(*a))
    n = fast_ops.CACHED_KERNEL_MAX_TOKENS
    r = np.random.default_rng(2)
    for T in (1, n, n + 1):
        qkv = r.standard_normal((1, T, 3 * 2 * 4))
        k_cache, v_cache = np.zeros((2, 1, 2, 2 * n, 4))
        y = fast.cached_attention_forward(qkv, k_cache, v_cache, 3, 2)
        y_ref = ops.cached_attention_forward(qkv, np.zeros_like(k_cache), np.zeros_like(v_cache), 3, 2)
        assert rel_err(y, y_ref) <= 1e-12
    assert calls == [1, n]                                  # n + 1 new tokens: the reference's products
