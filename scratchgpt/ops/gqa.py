"""Causal grouped-query attention (GQA), the core of Llama 3's and Qwen3's attention.

H query heads share KV = n_kv_groups key/value heads: query head h reads key/value head
h // G, with G = H / KV (Hugging Face's repeat_kv order). KV = H is ordinary multi-head
attention; KV = 1 is multi-query attention. Queries are grouped as (B, KV, G, T, hd), so each
group's G heads meet their one key head by broadcasting, with no copies of the keys.

    S = q k^T / sqrt(hd),   A = softmax(mask(S)),   y = A v
"""
import math
from typing import NamedTuple

from scratchgpt.arrays import array_module
from scratchgpt.ops.softmax import softmax_backward, softmax_forward


class GQACache(NamedTuple):
    q: object        # (B, KV, G, Tq, hd) queries, grouped by the key/value head they read
    k: object        # (B, KV, Tk, hd)
    v: object        # (B, KV, Tk, hd)
    att: object      # (B, KV, G, Tq, Tk) attention weights (0 on masked keys)


def grouped_query_attention_forward(q, k, v, start=0):
    """q (B, H, Tq, hd), k and v (B, KV, Tk, hd) -> y (B, H, Tq, hd).

    Query i sits at position start + i and sees keys 0..start + i (start > 0: new tokens after
    `start` cached ones; training has start = 0 and Tk = Tq).
    """
    xp = array_module(q)
    B, H, Tq, hd = q.shape
    KV, Tk = k.shape[1], k.shape[2]
    if H % KV:
        raise ValueError(f"{H} query heads cannot be split into {KV} key/value groups")
    qg = q.reshape(B, KV, H // KV, Tq, hd)                                   # (B, KV, G, Tq, hd)
    scores = (qg @ k[:, :, None].swapaxes(-1, -2)) * (1.0 / math.sqrt(hd))   # (B, KV, G, Tq, Tk)
    future = xp.arange(Tk)[None, :] > start + xp.arange(Tq)[:, None]         # (Tq, Tk)
    att, _ = softmax_forward(xp.where(future, -xp.inf, scores))
    y = att @ v[:, :, None]                                                  # (B, KV, G, Tq, hd)
    return y.reshape(B, H, Tq, hd), GQACache(qg, k, v, att)


def grouped_query_attention_backward(dy, cache):
    """As multi-head attention, but one key/value head serves G query heads, so its gradient
    is the sum of theirs:

        dA = dy v^T,   dS = softmax_backward(dA) / sqrt(hd),   dq = dS k
        dk = sum over the group of dS^T q,   dv = sum over the group of A^T dy
    """
    qg, k, v, att = cache
    B, KV, G, Tq, hd = qg.shape
    dy = dy.reshape(B, KV, G, Tq, hd)
    datt = dy @ v[:, :, None].swapaxes(-1, -2)                               # (B, KV, G, Tq, Tk)
    dv = (att.swapaxes(-1, -2) @ dy).sum(axis=2)                             # (B, KV, Tk, hd)
    dscores = softmax_backward(datt, att) * (1.0 / math.sqrt(hd))
    dq = dscores @ k[:, :, None]                                             # (B, KV, G, Tq, hd)
    dk = (dscores.swapaxes(-1, -2) @ qg).sum(axis=2)                         # (B, KV, Tk, hd)
    return dq.reshape(B, KV * G, Tq, hd), dk, dv
