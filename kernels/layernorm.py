"""LayerNorm over the last axis, forward and backward, fused with numba.

x is (N, C): N = batch * time rows, C = emb_dim features. Biased variance and eps = 1e-5,
as GPT-2 and the book. The forward keeps what the backward needs, mean and rstd = 1/std per
row (as llm.c does). Rows are independent, so both passes run in parallel over rows; the
parameter gradients dw, db sum over rows, so the backward gives each chunk of rows its own
partial sums and adds the chunks at the end (no two threads ever write the same element).
"""

import numpy as np
from numba import prange

from ._common import as_float_array, check_same, twins

# Fixed number of row chunks for the dw/db partial sums: the sum order (hence the result,
# bit for bit) does not depend on how many threads numba happens to use.
_N_CHUNKS = 64


# mean = sum(x) / C,  var = sum((x - mean)^2) / C,  rstd = 1 / sqrt(var + eps)
# out  = (x - mean) * rstd * w + b
@twins()
def _layernorm_forward(x, w, b, eps, out, mean, rstd):
    N, C = x.shape
    for i in prange(N):
        row = x[i]  # (C,)
        s = 0.0  # float64 accumulators, also for float32 inputs
        for c in range(C):
            s += row[c]
        m = s / C
        v = 0.0
        for c in range(C):
            d = row[c] - m
            v += d * d
        r = 1.0 / np.sqrt(v / C + eps)
        mean[i] = m
        rstd[i] = r
        mi, ri = mean[i], rstd[i]  # in x's dtype, as the backward will see them
        for c in range(C):
            out[i, c] = (row[c] - mi) * ri * w[c] + b[c]


def layernorm_forward(x, w, b, eps=1e-5):
    """LayerNorm of rows x (N, C) with weight w (C,) and bias b (C,) -> (out, mean, rstd).

    out is (N, C); mean and rstd are (N,), in x's dtype, for layernorm_backward.
    """
    x = as_float_array(x, "x", ndim=2)
    w = as_float_array(w, "w", ndim=1)
    b = as_float_array(b, "b", ndim=1)
    check_same(w, b, "w", "b")
    if w.shape[0] != x.shape[1] or w.dtype != x.dtype:
        raise ValueError(f"w and b must be ({x.shape[1]},) {x.dtype} for x of shape {x.shape}, "
                         f"got {w.shape} {w.dtype}")
    N, C = x.shape
    if C == 0:
        raise ValueError(f"x must have at least one feature to normalize, got shape {x.shape}")
    out = np.empty_like(x)
    mean = np.empty(N, dtype=x.dtype)
    rstd = np.empty(N, dtype=x.dtype)
    if x.size:
        _layernorm_forward(x, w, b, float(eps), out, mean, rstd, work=x.size)
    return out, mean, rstd


# xhat = (x - mean) * rstd,  dxhat = dout * w
# dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))       (means over the C features)
# dw = sum_rows(dout * xhat),  db = sum_rows(dout)
@twins()
def _layernorm_backward(dout, x, mean, rstd, w, dx, dw_parts, db_parts):
    N, C = x.shape
    n_chunks = dw_parts.shape[0]
    for k in prange(n_chunks):
        # chunk k owns rows [lo, hi) and row k of the partial sums (float64)
        lo = k * N // n_chunks
        hi = (k + 1) * N // n_chunks
        for i in range(lo, hi):
            m, r = mean[i], rstd[i]
            g, row = dout[i], x[i]  # (C,), (C,)
            s1 = 0.0  # sum(dxhat), float64
            s2 = 0.0  # sum(dxhat * xhat), float64
            for c in range(C):
                xhat = (row[c] - m) * r
                dxhat = g[c] * w[c]
                s1 += dxhat
                s2 += dxhat * xhat
                dw_parts[k, c] += g[c] * xhat
                db_parts[k, c] += g[c]
            m1 = x.dtype.type(s1 / C)
            m2 = x.dtype.type(s2 / C)
            for c in range(C):
                xhat = (row[c] - m) * r
                dx[i, c] = r * (g[c] * w[c] - m1 - xhat * m2)


def layernorm_backward(dout, x, mean, rstd, w):
    """Gradients of layernorm_forward: dout (N, C) -> (dx (N, C), dw (C,), db (C,))."""
    dout = as_float_array(dout, "dout", ndim=2)
    x = as_float_array(x, "x", ndim=2)
    check_same(dout, x, "dout", "x")
    mean = as_float_array(mean, "mean", ndim=1)
    rstd = as_float_array(rstd, "rstd", ndim=1)
    w = as_float_array(w, "w", ndim=1)
    N, C = x.shape
    if mean.shape != (N,) or rstd.shape != (N,):
        raise ValueError(f"mean and rstd must be ({N},) for x of shape {x.shape}, "
                         f"got {mean.shape} and {rstd.shape}")
    if w.shape != (C,):
        raise ValueError(f"w must be ({C},) for x of shape {x.shape}, got {w.shape}")
    dx = np.empty_like(x)
    n_chunks = max(1, min(N, _N_CHUNKS))
    dw_parts = np.zeros((n_chunks, C), dtype=np.float64)  # partial sums in float64
    db_parts = np.zeros((n_chunks, C), dtype=np.float64)
    if x.size:
        _layernorm_backward(dout, x, mean.astype(x.dtype, copy=False), rstd.astype(x.dtype, copy=False),
                            w.astype(x.dtype, copy=False), dx, dw_parts, db_parts, work=x.size)
    dw = dw_parts.sum(axis=0).astype(x.dtype)  # (C,)
    db = db_parts.sum(axis=0).astype(x.dtype)  # (C,)
    return dx, dw, db
