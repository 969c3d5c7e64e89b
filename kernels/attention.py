"""Causal multi-head attention, forward and backward, fused with numba.

The input is c_attn's output as it comes, qkv (B, T, 3C) with C = n_heads * hd: for token t,
q is qkv[b, t, 0:C], k is qkv[b, t, C:2C], v is qkv[b, t, 2C:3C], head h owning hd
consecutive features of each. The kernels write y (B, T, C) and the gradient dqkv (B, T, 3C) in
the same layout, so the (B, H, T, hd) transposes and the stack of dq, dk, dv that the array code
needs are never made; each head's q, k, v (T x hd, a few tens of KB) are copied into
contiguous scratch, transposed where a product runs along the keys.

Per (batch, head) pair, in parallel over all B * H pairs:

    forward   s[t, j] = q[t] . k[j] / sqrt(hd)              for keys j <= t only
              a[t]    = softmax(s[t, 0..t])
              y[t]    = sum_{j <= t} a[t, j] v[j]
    backward  da[t, j] = dy[t] . v[j]
              ds[t, j] = a[t, j] (da[t, j] - sum_k a[t, k] da[t, k])     (softmax backward)
              dq[t] = sum_{j <= t} ds[t, j] k[j] / sqrt(hd)
              dk[j] = sum_{t >= j} ds[t, j] q[t] / sqrt(hd)
              dv[j] = sum_{t >= j} a[t, j] dy[t]

Above the diagonal only the small corners that the row tiles below straddle are computed (and
zeroed); the batched-matmul formulation computes the whole T x T square and masks half of it
away. The forward saves the attention weights for the backward in a packed lower-triangular
layout, (B * H, T (T + 1) / 2): row t of a matrix starts at t (t + 1) / 2 and holds its t + 1
weights, half the memory of (T, T).

Both passes walk down the query rows R = 4 at a time, a tile: the tile's scores (or da) for all
its keys, its softmax rows, then its outputs (or dq) and its rows' terms of dk[j] and dv[j],
added into (T, hd) scratch. Each product is written as a register tile (_scores, _weighted,
_accumulate): every key, value or query element loaded serves R multiply-adds or more, where a
product of one row at a time loads an element for each multiply-add and is bound by the loads.

Speed (2 threads of an Intel Xeon (Sapphire Rapids), float32, the "small" model's 96 heads of
256 x 64, counted on the causal half): forward ~10 ms (~80 GFLOP/s), backward ~19 ms (~85
GFLOP/s); one row at a time (session 6) took 13 and 29 ms. The batched-matmul formulation computes
the whole T x T square, materializes it, and hands each head's GEMM to the BLAS threads.
"""

import numpy as np
from numba import njit, prange

from ._common import KERNEL_OPTIONS, as_float_array, twins
from ._vmath import exp, row_max

# The shared options plus "contract": a * b + c may become one fused multiply-add. These loops
# are almost all multiply-adds, and without it LLVM keeps a separate multiply and add (~1.3x slower).
OPTIONS = dict(KERNEL_OPTIONS, fastmath={"reassoc", "contract"})
SERIAL_OPTIONS = dict(OPTIONS, parallel=False)

# Below this many multiply-adds per q.k product table (B * H * T (T + 1) / 2 * hd) the kernels
# run on the calling thread (see _common.twins), per threading layer: generation's one-sequence
# forwards, for one, where the hand-off costs more than it saves.
PARALLEL_MIN_WORK = {"omp": 1 << 15, "workqueue": 1 << 20}


R = 4   # query rows per tile (the register tiles below are written out for four rows)


@njit(**SERIAL_OPTIONS)
def _head_forward(qkv, b, h, n_heads, y, att):
    """Head h of batch row b: y[b, :, h's features] and its packed weights att (T (T + 1) / 2,),
    or no weights when att is empty (a forward that no backward follows)."""
    T, C = qkv.shape[1], qkv.shape[2] // 3
    hd = C // n_heads
    dt = qkv.dtype
    q, k, v = _gather_head(qkv, b, h, n_heads, dt.type(1.0 / np.sqrt(hd)))   # (T, hd) each, q scaled
    kT, vT = k.T.copy(), v.T.copy()                          # (hd, T)
    s = np.empty((R, T), dt)                                 # R rows of scores, then of weights
    o = np.empty((R, hd), dt)                                # R rows of output
    for t0 in range(0, T, R):                                # query rows t0 .. t0 + R - 1
        L = min(t0 + R, T)                                   # keys any row of the tile sees
        rows = _tile_rows(q, t0)
        _scores(rows, kT, L, s)                              # s[r, j] = q[t0 + r] . k[j] / sqrt(hd)
        for r in range(R):
            t = min(t0 + r, T - 1)                           # rows past T repeat row T - 1
            _softmax_row(s[r], t + 1, L)                     # over keys j <= t; zero beyond
            if att.size and t0 + r < T:                      # kept for the backward: packed row t
                att[t * (t + 1) // 2:(t + 1) * (t + 2) // 2] = s[r, :t + 1]
        _weighted(s, vT, L, o)                               # o[r, d] = sum_j a[r, j] v[j, d]
        for r in range(min(R, T - t0)):
            _copy(o[r], y[b, t0 + r, h * hd:(h + 1) * hd], dt.type(1.0))


@twins(OPTIONS, min_work=PARALLEL_MIN_WORK)
def _attention_forward(qkv, n_heads, y, att):
    for n in prange(att.shape[0]):                           # every (batch row, head) pair
        _head_forward(qkv, n // n_heads, n % n_heads, n_heads, y, att[n])


def causal_attention_forward(qkv, n_heads, out=None, att_out=None, keep_att=True):
    """Causal self-attention of fused projections qkv (B, T, 3C) -> (y (B, T, C), att).

    att (B * n_heads, T (T + 1) / 2) holds the softmax weights, packed lower-triangular, for
    causal_attention_backward. out / att_out: optional arrays of those shapes and qkv's dtype
    to write y / att into (buffers reused across steps). keep_att=False (no backward follows):
    the weights are not stored, and att is None.
    """
    qkv = as_float_array(qkv, "qkv", ndim=3)
    B, T, C3 = qkv.shape
    _check_heads(C3, n_heads)
    y = _output(out, (B, T, C3 // 3), qkv.dtype, "out")
    if keep_att:
        att = _output(att_out, (B * n_heads, T * (T + 1) // 2), qkv.dtype, "att_out")
    else:
        att = np.empty((B * n_heads, 0), qkv.dtype)         # one empty row per (batch row, head) pair
    if y.size:
        _attention_forward(qkv, n_heads, y, att, work=B * n_heads * T * (T + 1) // 2 * (C3 // 3 // n_heads))
    return y, (att if keep_att else None)


@njit(**SERIAL_OPTIONS)
def _head_backward(dy, qkv, att, b, h, n_heads, dqkv):
    """Head h of batch row b: its q, k and v features of dqkv, from dy and its packed weights att."""
    T, C = qkv.shape[1], qkv.shape[2] // 3
    hd = C // n_heads
    dt = qkv.dtype
    scale = dt.type(1.0 / np.sqrt(hd))
    q, k, v = _gather_head(qkv, b, h, n_heads, dt.type(1.0))
    g = np.empty((T, hd), dt)                                # dy of this head
    for t in range(T):
        _copy(dy[b, t, h * hd:(h + 1) * hd], g[t], dt.type(1.0))
    kT, vT = k.T.copy(), v.T.copy()                          # (hd, T)
    dk = np.zeros((T, hd), dt)
    dv = np.zeros((T, hd), dt)
    a = np.empty((R, T), dt)                                 # R rows of weights
    ds = np.empty((R, T), dt)                                # R rows of da, then of ds
    o = np.empty((R, hd), dt)                                # R rows of dq
    for t0 in range(0, T, R):                                # query rows t0 .. t0 + R - 1
        L = min(t0 + R, T)
        _scores(_tile_rows(g, t0), vT, L, ds)                # ds[r, j] = da[t, j] = dy[t] . v[j]
        for r in range(R):
            t = t0 + r
            n = t + 1 if t < T else 0                        # rows past T take no part
            at = att[t * (t + 1) // 2:t * (t + 1) // 2 + n]
            tot = 0.0                                        # sum_k a[t, k] da[t, k], float64
            for j in range(n):
                tot += at[j] * ds[r, j]
            c = dt.type(tot)
            for j in range(n):
                a[r, j] = at[j]
                ds[r, j] = at[j] * (ds[r, j] - c) * scale    # ds, with the 1/sqrt(hd) folded in
            a[r, n:L] = 0
            ds[r, n:L] = 0
        _weighted(ds, kT, L, o)                              # dq[t] = sum_j ds[t, j] k[j]
        for r in range(min(R, T - t0)):
            _copy(o[r], dqkv[b, t0 + r, h * hd:(h + 1) * hd], dt.type(1.0))
        _accumulate(ds, _tile_rows(q, t0), L, dk)            # dk[j] += sum_t ds[t, j] q[t]
        _accumulate(a, _tile_rows(g, t0), L, dv)             # dv[j] += sum_t a[t, j] dy[t]
    for t in range(T):
        _copy(dk[t], dqkv[b, t, C + h * hd:C + (h + 1) * hd], dt.type(1.0))
        _copy(dv[t], dqkv[b, t, 2 * C + h * hd:2 * C + (h + 1) * hd], dt.type(1.0))


@twins(OPTIONS, min_work=PARALLEL_MIN_WORK)
def _attention_backward(dy, qkv, att, n_heads, dqkv):
    for n in prange(att.shape[0]):                           # every (batch row, head) pair
        _head_backward(dy, qkv, att[n], n // n_heads, n % n_heads, n_heads, dqkv)


@njit(inline="always", fastmath={"reassoc", "contract"}, error_model="numpy")
def _gather_head(qkv, b, h, n_heads, q_scale):
    """Head h of batch row b as contiguous (T, hd) arrays: q * q_scale, k, v."""
    T, C = qkv.shape[1], qkv.shape[2] // 3
    hd = C // n_heads
    q = np.empty((T, hd), qkv.dtype)
    k = np.empty((T, hd), qkv.dtype)
    v = np.empty((T, hd), qkv.dtype)
    for t in range(T):
        row = qkv[b, t]
        _copy(row[h * hd:(h + 1) * hd], q[t], q_scale)
        _copy(row[C + h * hd:C + (h + 1) * hd], k[t], qkv.dtype.type(1.0))
        _copy(row[2 * C + h * hd:2 * C + (h + 1) * hd], v[t], qkv.dtype.type(1.0))
    return q, k, v


# Inner loops index 1-D views (src[d]) with the loop counter itself, never qkv[b, t, h * hd + d]:
# b and h come from n // n_heads, n % n_heads, so nothing tells the compiler that h * hd + d is
# not negative, and numba's check for a negative index (NumPy's wrap-around) then runs in every
# iteration and kept LLVM from vectorizing the loop. Measured on the tiny model's gather (128
# heads of 64 x 32): 0.27 ms with such indices, 0.05 ms with views.
@njit(inline="always", error_model="numpy")
def _copy(src, dst, scale):
    """dst[:] = src * scale, both 1-D of the same length."""
    for d in range(src.shape[0]):
        dst[d] = src[d] * scale


@njit(inline="always", error_model="numpy")
def _tile_rows(x, t0):
    """Rows t0 .. t0 + R - 1 of x (T, D) as R views, rows past the end repeating row T - 1."""
    T = x.shape[0]
    return x[min(t0, T - 1)], x[min(t0 + 1, T - 1)], x[min(t0 + 2, T - 1)], x[min(t0 + 3, T - 1)]


@njit(inline="always", fastmath={"reassoc", "contract"}, error_model="numpy")
def _softmax_row(s, n, L):
    """s[:n] = softmax(s[:n]) in place; s[n:L] = 0."""
    m = row_max(s, n)
    for j in range(n):
        s[j] = exp(s[j] - m)
    tot = 0.0                                                # float64 accumulator
    for j in range(n):
        tot += s[j]
    inv = s.dtype.type(1.0 / tot)
    for j in range(n):
        s[j] *= inv
    s[n:L] = 0


# The three products below are register tiles of small matrix products. _scores adds four
# features' terms to four rows of scores per pass over the keys (16 multiply-adds for the four
# rows of M^T and the four scores it loads); _accumulate adds four rows' terms to an output row
# per pass over its features; _weighted keeps a 4 x 4 block of dot products in SIMD registers
# along the keys, added across each register once per block. A product of one row at a time
# loads an element for every multiply-add and is bound by the loads. Every loop that LLVM
# vectorizes runs along a contiguous axis.

@njit(inline="always", fastmath={"reassoc", "contract"}, error_model="numpy")
def _scores(rows, MT, L, s):
    """s[r, j] = rows[r] . M[j] for the R rows and keys j < L, with M given transposed, MT (D, T)."""
    x0, x1, x2, x3 = rows
    s0, s1, s2, s3 = s[0], s[1], s[2], s[3]
    D = MT.shape[0]
    s[:, :L] = 0
    d = 0
    while d + 4 <= D:                                        # features d .. d + 3 per pass over the keys
        m0, m1, m2, m3 = MT[d], MT[d + 1], MT[d + 2], MT[d + 3]
        c00, c01, c02, c03 = x0[d], x0[d + 1], x0[d + 2], x0[d + 3]
        c10, c11, c12, c13 = x1[d], x1[d + 1], x1[d + 2], x1[d + 3]
        c20, c21, c22, c23 = x2[d], x2[d + 1], x2[d + 2], x2[d + 3]
        c30, c31, c32, c33 = x3[d], x3[d + 1], x3[d + 2], x3[d + 3]
        for j in range(L):
            e0, e1, e2, e3 = m0[j], m1[j], m2[j], m3[j]
            s0[j] += c00 * e0 + c01 * e1 + c02 * e2 + c03 * e3
            s1[j] += c10 * e0 + c11 * e1 + c12 * e2 + c13 * e3
            s2[j] += c20 * e0 + c21 * e1 + c22 * e2 + c23 * e3
            s3[j] += c30 * e0 + c31 * e1 + c32 * e2 + c33 * e3
        d += 4
    while d < D:                                             # the last D % 4 features, one at a time
        m0 = MT[d]
        for j in range(L):
            s0[j] += x0[d] * m0[j]
            s1[j] += x1[d] * m0[j]
            s2[j] += x2[d] * m0[j]
            s3[j] += x3[d] * m0[j]
        d += 1


@njit(inline="always", fastmath={"reassoc", "contract"}, error_model="numpy")
def _weighted(w, MT, L, out):
    """out[r, d] = sum_{j < L} w[r, j] M[j, d] for the R rows of w, M given transposed, MT (D, T)."""
    w0, w1, w2, w3 = w[0], w[1], w[2], w[3]
    D = MT.shape[0]
    zero = w.dtype.type(0.0)
    d = 0
    while d + 4 <= D:                                        # features d .. d + 3 of the R rows
        m0, m1, m2, m3 = MT[d], MT[d + 1], MT[d + 2], MT[d + 3]
        a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = zero
        a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = zero
        for j in range(L):
            e0, e1, e2, e3 = m0[j], m1[j], m2[j], m3[j]
            f0, f1, f2, f3 = w0[j], w1[j], w2[j], w3[j]
            a00 += f0 * e0
            a01 += f0 * e1
            a02 += f0 * e2
            a03 += f0 * e3
            a10 += f1 * e0
            a11 += f1 * e1
            a12 += f1 * e2
            a13 += f1 * e3
            a20 += f2 * e0
            a21 += f2 * e1
            a22 += f2 * e2
            a23 += f2 * e3
            a30 += f3 * e0
            a31 += f3 * e1
            a32 += f3 * e2
            a33 += f3 * e3
        out[0, d], out[0, d + 1], out[0, d + 2], out[0, d + 3] = a00, a01, a02, a03
        out[1, d], out[1, d + 1], out[1, d + 2], out[1, d + 3] = a10, a11, a12, a13
        out[2, d], out[2, d + 1], out[2, d + 2], out[2, d + 3] = a20, a21, a22, a23
        out[3, d], out[3, d + 1], out[3, d + 2], out[3, d + 3] = a30, a31, a32, a33
        d += 4
    while d < D:                                             # the last D % 4 features, one at a time
        m0 = MT[d]
        a00 = a10 = a20 = a30 = zero
        for j in range(L):
            a00 += w0[j] * m0[j]
            a10 += w1[j] * m0[j]
            a20 += w2[j] * m0[j]
            a30 += w3[j] * m0[j]
        out[0, d], out[1, d], out[2, d], out[3, d] = a00, a10, a20, a30
        d += 1


@njit(inline="always", fastmath={"reassoc", "contract"}, error_model="numpy")
def _accumulate(w, rows, L, out):
    """out[j] += sum_r w[r, j] rows[r] for keys j < L: out (T, D) and the R rows of length D."""
    x0, x1, x2, x3 = rows
    for j in range(L):
        c0, c1, c2, c3 = w[0, j], w[1, j], w[2, j], w[3, j]
        oj = out[j]
        for d in range(oj.shape[0]):
            oj[d] += c0 * x0[d] + c1 * x1[d] + c2 * x2[d] + c3 * x3[d]


def causal_attention_backward(dy, qkv, att, n_heads, out=None):
    """Gradient of causal_attention_forward: dy (B, T, C), qkv, att -> dqkv (B, T, 3C).

    out: an optional (B, T, 3C) array of qkv's dtype to write dqkv into.
    """
    qkv = as_float_array(qkv, "qkv", ndim=3)
    dy = as_float_array(dy, "dy", ndim=3)
    att = as_float_array(att, "att", ndim=2)
    B, T, C3 = qkv.shape
    _check_heads(C3, n_heads)
    if dy.shape != (B, T, C3 // 3) or dy.dtype != qkv.dtype:
        raise ValueError(f"dy must be a {qkv.dtype} array of shape {(B, T, C3 // 3)} for qkv of "
                         f"shape {qkv.shape}, got {dy.dtype} {dy.shape}")
    if att.shape != (B * n_heads, T * (T + 1) // 2) or att.dtype != qkv.dtype:
        raise ValueError(f"att must be a {qkv.dtype} array of shape {(B * n_heads, T * (T + 1) // 2)} "
                         f"(packed weights from causal_attention_forward), got {att.dtype} {att.shape}")
    dqkv = _output(out, qkv.shape, qkv.dtype, "out")
    if dqkv.size:
        _attention_backward(dy, qkv, att, n_heads, dqkv, work=att.size * (C3 // 3 // n_heads))
    return dqkv


# ---------------------------------------------------------------- generation: a few new tokens
@njit(**SERIAL_OPTIONS)
def _head_cached(qkv, k_cache, v_cache, start, b, h, n_heads, y):
    """Head h of batch row b: its new keys and values into the caches, then y for its new queries."""
    T, C = qkv.shape[1], qkv.shape[2] // 3
    hd = C // n_heads
    dt = qkv.dtype
    kc, vc = k_cache[b, h], v_cache[b, h]                    # (context_length, hd)
    for i in range(T):                                       # positions start .. start + T - 1
        row = qkv[b, i]
        _copy(row[C + h * hd:C + (h + 1) * hd], kc[start + i], dt.type(1.0))
        _copy(row[2 * C + h * hd:2 * C + (h + 1) * hd], vc[start + i], dt.type(1.0))
    scale = dt.type(1.0 / np.sqrt(hd))
    s = np.empty(start + T, dt)
    acc = np.empty(hd, dt)
    for i in range(T):
        L = start + i + 1                                    # query start + i sees keys 0 .. start + i
        q = qkv[b, i, h * hd:(h + 1) * hd]
        for j in range(L):
            kj = kc[j]
            dot = dt.type(0.0)
            for d in range(hd):
                dot += q[d] * kj[d]
            s[j] = dot * scale                               # s[j] = q . k[j] / sqrt(hd)
        _softmax_row(s, L, L)
        acc[:] = 0
        for j in range(L):                                   # y = sum_j a[j] v[j]
            aj, vj = s[j], vc[j]
            for d in range(hd):
                acc[d] += aj * vj[d]
        _copy(acc, y[b, i, h * hd:(h + 1) * hd], dt.type(1.0))


@twins(OPTIONS, min_work=PARALLEL_MIN_WORK)
def _cached_attention(qkv, k_cache, v_cache, start, n_heads, y):
    for n in prange(qkv.shape[0] * n_heads):                 # every (batch row, head) pair
        _head_cached(qkv, k_cache, v_cache, start, n // n_heads, n % n_heads, n_heads, y)


def cached_attention_forward(qkv, k_cache, v_cache, start, n_heads, out=None):
    """scratchgpt.ops.attention.cached_attention_forward in one kernel: attention for T new tokens
    that follow `start` cached ones (generation, no backward). qkv (B, T, 3C); k_cache, v_cache
    (B, n_heads, context_length, hd), C-contiguous, qkv's dtype: the new keys and values are
    written into positions start .. start + T - 1. Returns y (B, T, C) (into out if given).

    Built for generation's one new token per call: a dot product per cached key, no tiles. A long
    prompt runs faster as batched products (FastOps sends those to the reference code)."""
    qkv = as_float_array(qkv, "qkv", ndim=3)
    B, T, C3 = qkv.shape
    _check_heads(C3, n_heads)
    hd = C3 // 3 // n_heads
    for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
        if (not isinstance(c, np.ndarray) or c.ndim != 4 or c.shape[:2] != (B, n_heads) or c.shape[3] != hd
                or c.shape != k_cache.shape or c.dtype != qkv.dtype or not c.flags.c_contiguous
                or not c.flags.writeable):
            raise ValueError(f"{name} must be a writeable C-contiguous {qkv.dtype} array of shape "
                             f"({B}, {n_heads}, context_length, {hd}) like the other cache, got "
                             f"{getattr(c, 'dtype', type(c).__name__)} {getattr(c, 'shape', '')}")
    if not 0 <= start <= k_cache.shape[2] - T:
        raise ValueError(f"{T} new token(s) after {start} cached ones do not fit the cache's "
                         f"{k_cache.shape[2]} positions")
    y = _output(out, (B, T, C3 // 3), qkv.dtype, "out")
    if y.size:
        _cached_attention(qkv, k_cache, v_cache, start, n_heads, y, work=B * n_heads * T * (start + T) * hd)
    return y


def _check_heads(C3, n_heads):
    if C3 % 3 or (C3 // 3) % n_heads:
        raise ValueError(f"qkv's last axis ({C3}) must be 3 * n_heads * head_dim with n_heads = {n_heads}")


def _output(out, shape, dtype, name):
    if out is None:
        return np.empty(shape, dtype=dtype)
    if (not isinstance(out, np.ndarray) or out.shape != shape or out.dtype != dtype
            or not out.flags.c_contiguous or not out.flags.writeable):
        raise ValueError(f"{name} must be a writeable C-contiguous {np.dtype(dtype)} array of shape "
                         f"{shape}, got {getattr(out, 'dtype', type(out).__name__)} {getattr(out, 'shape', '')}")
    return out
