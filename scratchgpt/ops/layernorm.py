"""LayerNorm over the last axis, biased variance (as GPT-2 and the book), eps 1e-5."""
from scratchgpt import backend
from scratchgpt.backend import array_module


def layernorm_forward(x, w, b, eps=1e-5):
    """y = (x - mean) / sqrt(var + eps) * w + b, with var = mean((x - mean)^2) (no Bessel correction).

    Saves what the backward needs: x, w and the per-row mean and rstd = 1/sqrt(var + eps).
    """
    k = backend.fused(x)
    if k is not None:
        C = x.shape[-1]
        out, mean, rstd = k.layernorm_forward(x.reshape(-1, C), w, b, eps)
        return out.reshape(x.shape), (x, w, mean, rstd)
    xp = array_module(x)
    mean = x.mean(axis=-1, keepdims=True)                       # (..., 1)
    xc = x - mean
    var = (xc * xc).mean(axis=-1, keepdims=True)                # biased: divide by C, not C - 1
    rstd = 1.0 / xp.sqrt(var + eps)
    out = xc * rstd * w + b                                     # (..., C)
    return out, (x, w, mean.reshape(-1), rstd.reshape(-1))


def layernorm_backward(dout, cache):
    """With xhat = (x - mean) * rstd and dxhat = dout * w:

        dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
        dw = sum over rows of dout * xhat,   db = sum over rows of dout
    """
    x, w, mean, rstd = cache
    C = x.shape[-1]
    k = backend.fused(x)
    if k is not None:
        dx, dw, db = k.layernorm_backward(dout.reshape(-1, C), x.reshape(-1, C), mean, rstd, w)
        return dx.reshape(x.shape), dw, db
    x2, dout2 = x.reshape(-1, C), dout.reshape(-1, C)           # (N, C)
    rstd, mean = rstd[:, None], mean[:, None]                   # (N, 1)
    xhat = (x2 - mean) * rstd
    dw = (dout2 * xhat).sum(axis=0)
    db = dout2.sum(axis=0)
    dxhat = dout2 * w
    dx = rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True)
                 - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
    return dx.reshape(x.shape), dw, db
