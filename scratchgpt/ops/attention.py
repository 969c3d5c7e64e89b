"""Causal multi-head self-attention.

    qkv = x @ W_attn + b_attn                  one GEMM for q, k and v (GPT-2's fused c_attn)
    att = softmax(mask(q @ k^T / sqrt(hd)))    per head; query t attends to keys 0..t
    y   = dropout(att) @ v                     heads concatenated again
    out = y @ W_proj + b_proj                  c_proj

attention_forward / attention_backward are the core between the two linears.
cached_attention_forward is the same math for generation, with the keys and values of the
earlier tokens kept in a KV cache.
"""
import math
from typing import NamedTuple

from scratchgpt.arrays import array_module
from scratchgpt.ops.dropout import dropout_backward, dropout_forward
from scratchgpt.ops.linear import linear_backward, linear_forward
from scratchgpt.ops.softmax import causal_softmax_backward, causal_softmax_forward, softmax_forward


class AttentionCache(NamedTuple):
    qkv: object        # (B, T, 3C) the fused projections
    att: object        # the attention weights softmax(mask(q k^T / sqrt(hd))), before dropout:
                       # (B, H, T, T) here; a fast version may keep them in its own layout
    drop_mask: object  # dropout's mask on att, or None
    n_heads: int


def split_heads(qkv, n_heads):
    """(B, T, 3C) -> q, k, v, each (B, H, T, hd): heads become a batch axis (views, no copy)."""
    B, T, C3 = qkv.shape
    hd = C3 // 3 // n_heads
    return qkv.reshape(B, T, 3, n_heads, hd).transpose(2, 0, 3, 1, 4)


def merge_heads(y):
    """(B, H, T, hd) -> (B, T, C): the heads side by side again."""
    B, H, T, hd = y.shape
    return y.transpose(0, 2, 1, 3).reshape(B, T, H * hd)


def attention_forward(qkv, n_heads, drop_rate=0.0, rng=None):
    """(B, T, 3C) fused projections -> (B, T, C) per-head weighted sums of the values."""
    q, k, v = split_heads(qkv, n_heads)                              # (B, H, T, hd) each
    scores = (q @ k.transpose(0, 1, 3, 2)) * (1.0 / math.sqrt(q.shape[-1]))   # (B, H, T, T)
    att, _ = causal_softmax_forward(scores)                          # (B, H, T, T)
    att_drop, drop_mask = dropout_forward(att, drop_rate, rng)
    y = merge_heads(att_drop @ v)                                    # (B, H, T, hd) -> (B, T, C)
    return y, AttentionCache(qkv, att, drop_mask, n_heads)


def attention_backward(dy, cache):
    """With y = A v, A = dropout(softmax(S)), S = q k^T / sqrt(hd):

        dA = dy v^T,  dv = A^T dy,  dS = softmax_backward(dropout_backward(dA)),
        dq = dS k / sqrt(hd),  dk = dS^T q / sqrt(hd)
    """
    qkv, att, drop_mask, n_heads = cache
    q, k, v = split_heads(qkv, n_heads)                              # (B, H, T, hd) each
    B, H, T, hd = q.shape
    att_drop = att if drop_mask is None else att * drop_mask         # the A that multiplied v
    dy = dy.reshape(B, T, H, hd).transpose(0, 2, 1, 3)              # (B, H, T, hd)
    datt_drop = dy @ v.transpose(0, 1, 3, 2)                         # (B, H, T, T)
    dv = att_drop.transpose(0, 1, 3, 2) @ dy                         # (B, H, T, hd)
    datt = dropout_backward(datt_drop, drop_mask)
    dscores = causal_softmax_backward(datt, att) * (1.0 / math.sqrt(hd))
    dq = dscores @ k                                                 # (B, H, T, hd)
    dk = dscores.transpose(0, 1, 3, 2) @ q                           # (B, H, T, hd)
    dqkv = array_module(dq).stack((dq, dk, dv))                      # (3, B, H, T, hd)
    return dqkv.transpose(1, 3, 0, 2, 4).reshape(B, T, 3 * H * hd)   # (B, T, 3C)


def cached_attention_forward(qkv, k_cache, v_cache, start, n_heads):
    """Attention for T new tokens that follow `start` earlier ones (generation; no backward).

    k_cache, v_cache: (B, H, context_length, hd) buffers holding the keys and values of
    positions 0..start-1; the new tokens' keys and values are written into start..start+T-1.
    New query i (position start + i) sees every key j <= start + i.
    """
    xp = array_module(qkv)
    q, k, v = split_heads(qkv, n_heads)                              # (B, H, T, hd) each
    T, end = q.shape[2], start + q.shape[2]
    k_cache[:, :, start:end], v_cache[:, :, start:end] = k, v
    keys, values = k_cache[:, :, :end], v_cache[:, :, :end]          # (B, H, end, hd)
    scores = (q @ keys.transpose(0, 1, 3, 2)) * (1.0 / math.sqrt(q.shape[-1]))   # (B, H, T, end)
    future = xp.arange(end)[None, :] > (start + xp.arange(T))[:, None]          # (T, end)
    att, _ = softmax_forward(xp.where(future, -xp.inf, scores))
    return merge_heads(att @ values)                                 # (B, T, C)


def multihead_attention_forward(x, w_attn, b_attn, w_proj, b_proj, n_heads,
                                drop_rate=0.0, rng=None):
    """(B, T, C) -> (B, T, C): c_attn, attention core, c_proj, as one function (chapter 3)."""
    qkv, attn_cache = linear_forward(x, w_attn, b_attn)             # (B, T, 3C)
    y, core_cache = attention_forward(qkv, n_heads, drop_rate, rng)  # (B, T, C)
    out, proj_cache = linear_forward(y, w_proj, b_proj)              # (B, T, C)
    return out, (attn_cache, core_cache, proj_cache)


def multihead_attention_backward(dout, cache):
    """Returns dx and the gradients (dw_attn, db_attn, dw_proj, db_proj)."""
    attn_cache, core_cache, proj_cache = cache
    dy, dw_proj, db_proj = linear_backward(dout, proj_cache)
    dqkv = attention_backward(dy, core_cache)
    dx, dw_attn, db_attn = linear_backward(dqkv, attn_cache)
    return dx, (dw_attn, db_attn, dw_proj, db_proj)
