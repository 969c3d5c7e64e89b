"""Causal multi-head self-attention.

    qkv = x @ W_attn + b_attn                  one GEMM for q, k and v (GPT-2's fused c_attn)
    att = softmax(mask(q @ k^T / sqrt(hd)))    per head; query t attends to keys 0..t
    y   = dropout(att) @ v                     heads concatenated again
    out = y @ W_proj + b_proj                  c_proj

With the numba kernels on and no dropout, attention_forward/backward hand the whole core to
one fused kernel (kernels/attention.py): it takes qkv as c_attn made it, computes only the
causal half of the scores and keeps the weights packed; the array code below is the
reference it is tested against.
"""
import math

from scratchgpt import backend
from scratchgpt.backend import array_module
from scratchgpt.ops.dropout import dropout_backward, dropout_forward
from scratchgpt.ops.linear import linear_backward, linear_forward
from scratchgpt.ops.softmax import causal_softmax_backward, causal_softmax_forward


def attention_forward(qkv, n_heads, drop_rate=0.0, rng=None):
    """The core: fused (B, T, 3C) projections -> (B, T, C) per-head weighted sums of values."""
    k = backend.fused(qkv)
    fused = getattr(k, "causal_attention_forward", None)              # CPU kernels only, for now
    if fused is not None and (drop_rate == 0.0 or rng is None):
        y, att = fused(qkv, n_heads)                                 # att: packed, (B*H, T(T+1)/2)
        return y, ("fused", k, qkv, att, n_heads)
    B, T, C3 = qkv.shape
    C = C3 // 3
    hd = C // n_heads
    # (B, T, 3C) -> (3, B, H, T, hd): q, k, v with heads as a batch axis
    q, k, v = qkv.reshape(B, T, 3, n_heads, hd).transpose(2, 0, 3, 1, 4)
    scores = (q @ k.transpose(0, 1, 3, 2)) * (1.0 / math.sqrt(hd))   # (B, H, T, T)
    att, _ = causal_softmax_forward(scores)                          # (B, H, T, T)
    att_drop, drop_cache = dropout_forward(att, drop_rate, rng)
    y = att_drop @ v                                                 # (B, H, T, hd)
    y = y.transpose(0, 2, 1, 3).reshape(B, T, C)                     # heads side by side
    return y, (q, k, v, att, att_drop, drop_cache, n_heads)


def attention_backward(dy, cache):
    """With y = A v, A = dropout(softmax(S)), S = q k^T / sqrt(hd):

        dA = dy v^T,  dv = A^T dy,  dS = softmax_backward(dropout_backward(dA)),
        dq = dS k / sqrt(hd),  dk = dS^T q / sqrt(hd)
    """
    if isinstance(cache[0], str):                                    # the forward ran fused
        _, k, qkv, att, n_heads = cache
        return k.causal_attention_backward(dy, qkv, att, n_heads)     # (B, T, 3C)
    q, k, v, att, att_drop, drop_cache, n_heads = cache
    B, H, T, hd = q.shape
    dy = dy.reshape(B, T, H, hd).transpose(0, 2, 1, 3)              # (B, H, T, hd)
    datt_drop = dy @ v.transpose(0, 1, 3, 2)                         # (B, H, T, T)
    dv = att_drop.transpose(0, 1, 3, 2) @ dy                         # (B, H, T, hd)
    datt = dropout_backward(datt_drop, drop_cache)
    dscores = causal_softmax_backward(datt, att) * (1.0 / math.sqrt(hd))
    dq = dscores @ k                                                 # (B, H, T, hd)
    dk = dscores.transpose(0, 1, 3, 2) @ q                           # (B, H, T, hd)
    dqkv = array_module(dq).stack((dq, dk, dv))                      # (3, B, H, T, hd)
    return dqkv.transpose(1, 3, 0, 2, 4).reshape(B, T, 3 * H * hd)   # (B, T, 3C)


def multihead_attention_forward(x, w_attn, b_attn, w_proj, b_proj, n_heads,
                                drop_rate=0.0, rng=None):
    """(B, T, C) -> (B, T, C): c_attn, attention core, c_proj."""
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
