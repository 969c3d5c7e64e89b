"""RMSNorm over the last axis (Llama 3, Qwen3): LayerNorm without the mean and without a bias.

Qwen3 also applies it to each attention head's queries and keys ("QK-norm"): the same op over
the last axis of a (..., head_dim) array, with a weight of head_dim entries.
"""
from typing import NamedTuple

from scratchgpt.arrays import array_module


class RMSNormCache(NamedTuple):
    x: object        # (..., C) the input
    w: object        # (C,) the scale
    rstd: object     # (..., 1) per-row 1 / sqrt(mean(x^2) + eps)


def rmsnorm_forward(x, w, eps=1e-5):
    """y = x / sqrt(mean(x^2) + eps) * w      (..., C) -> (..., C), w (C,)"""
    xp = array_module(x)
    rstd = 1.0 / xp.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)   # (..., 1)
    return x * rstd * w, RMSNormCache(x, w, rstd)


def rmsnorm_backward(dout, cache):
    """With xhat = x * rstd and dxhat = dout * w (rstd depends on every x of the row):

        dx = rstd * (dxhat - xhat * mean(dxhat * xhat))
        dw = sum over rows of dout * xhat

    LayerNorm's backward without the mean(dxhat) term, because nothing is subtracted here.
    """
    x, w, rstd = cache
    xhat = x * rstd                                                     # (..., C)
    dxhat = dout * w
    dx = rstd * (dxhat - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
    dw = (dout * xhat).reshape(-1, x.shape[-1]).sum(axis=0)             # (C,)
    return dx, dw
