"""LayerNorm over the last axis, biased variance (as GPT-2 and the book), eps 1e-5."""
from typing import NamedTuple

from scratchgpt.arrays import array_module


class LayerNormCache(NamedTuple):
    x: object        # (..., C) the input
    w: object        # (C,) the scale
    mean: object     # (N,) per-row mean, N = rows of x
    rstd: object     # (N,) per-row 1 / sqrt(var + eps)


def layernorm_forward(x, w, b, eps=1e-5):
    """y = (x - mean) / sqrt(var + eps) * w + b, with var = mean((x - mean)^2) (no Bessel correction)."""
    xp = array_module(x)
    mean = x.mean(axis=-1, keepdims=True)                       # (..., 1)
    xc = x - mean
    var = (xc * xc).mean(axis=-1, keepdims=True)                # biased: divide by C, not C - 1
    rstd = 1.0 / xp.sqrt(var + eps)
    out = xc * rstd * w + b                                     # (..., C)
    return out, LayerNormCache(x, w, mean.reshape(-1), rstd.reshape(-1))


def layernorm_backward(dout, cache):
    """With xhat = (x - mean) * rstd and dxhat = dout * w:

        dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
        dw = sum over rows of dout * xhat,   db = sum over rows of dout
    """
    x, w, mean, rstd = cache
    C = x.shape[-1]
    x2, dout2 = x.reshape(-1, C), dout.reshape(-1, C)           # (N, C)
    rstd, mean = rstd[:, None], mean[:, None]                   # (N, 1)
    xhat = (x2 - mean) * rstd
    dw = (dout2 * xhat).sum(axis=0)                             # (C,)
    db = dout2.sum(axis=0)                                      # (C,)
    dxhat = dout2 * w
    dx = rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True)
                 - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
    return dx.reshape(x.shape), dw, db
