"""Linear layer y = x @ W + b, with W stored (in, out) as in GPT-2's checkpoints."""
from typing import NamedTuple


class LinearCache(NamedTuple):
    x: object          # (..., in) the input
    w: object          # (in, out) the weight
    has_bias: bool


def linear_forward(x, w, b=None):
    """(..., in) @ (in, out) + (out,) -> (..., out)"""
    # One (N, in) @ (in, out) product over all N = B * T rows: given a (B, T, in) array, matmul
    # would make B separate (T, in) @ (in, out) BLAS calls instead (tiny model: 25-50% slower)
    out = (x.reshape(-1, x.shape[-1]) @ w).reshape(*x.shape[:-1], w.shape[-1])
    if b is not None:
        out += b
    return out, LinearCache(x, w, b is not None)


def linear_backward(dout, cache, dw_out=None):
    """dx = dout @ W^T,   dW = x^T @ dout,   db = sum of dout over all rows.

    Returns (dx, dw, db); db is None when the forward had no bias.
    dw_out: an optional (in, out) array, e.g. the model's gradient of W, to *add* dW into (it is
    returned as dw): no W-sized temporary is made, see _add_xt_dout.
    """
    x, w, has_bias = cache
    dout2 = dout.reshape(-1, dout.shape[-1])           # (N, out)
    x2 = x.reshape(-1, x.shape[-1])                    # (N, in)
    dx = (dout2 @ w.T).reshape(x.shape)                # (N, out) @ (out, in) -> (..., in)
    if dw_out is not None:
        _add_xt_dout(dw_out, x2, dout2)
        dw = dw_out
    else:
        dw = x2.T @ dout2                              # (in, N) @ (N, out) -> (in, out)
    db = dout2.sum(axis=0) if has_bias else None       # (out,)
    return dx, dw, db


def _add_xt_dout(dw, x2, dout2, block=1 << 21):
    """dw += x2^T @ dout2, a block of dw's rows at a time (in its memory order), so the product
    never needs a temporary larger than `block` elements: for the tied head's (768, 50257)
    gradient that is 8 MB instead of 154 MB, which would be freshly faulted in on every step."""
    if dw.shape != (x2.shape[1], dout2.shape[1]):
        raise ValueError(f"dw_out has shape {dw.shape}, the weight's gradient is {(x2.shape[1], dout2.shape[1])}")
    if not dw.flags.c_contiguous and dw.T.flags.c_contiguous:    # a transposed view, (out, in) in memory
        dw, x2, dout2 = dw.T, dout2, x2                          # dw^T += dout2^T @ x2
    rows = max(1, block // max(dw.shape[1], 1))
    for i in range(0, dw.shape[0], rows):
        dw[i:i + rows] += x2[:, i:i + rows].T @ dout2             # (rows, N) @ (N, cols)
