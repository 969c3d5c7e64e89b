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

Nothing above the diagonal is computed, stored or read: the batched-matmul formulation
computes the whole T x T square and masks half of it away. The forward saves the attention
weights for the backward in a packed lower-triangular layout, (B * H, T (T + 1) / 2): row t
of a matrix starts at t (t + 1) / 2 and holds its t + 1 weights, half the memory of (T, T).

The backward runs one pass per pair along the rows t: da, ds and dq[t] as dot products along a
contiguous axis (_dots_rows, _dots_cols; each running sum stays in a SIMD register), then row
t's terms of dk[j] and dv[j] for every j <= t are added into (T, hd) scratch, hd features at a
time.

Speed (one core, float32, the "small" model's 96 heads of 256 x 64; benchmarks/kernels.py): the
forward runs at ~30 GFLOP/s counted on the causal half, more than OpenBLAS reaches on the
full square; the gain is in skipping the masked half, the temporaries and the per-head GEMM
calls, whose thread hand-offs stall on a busy machine.
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


@njit(**SERIAL_OPTIONS)
def _head_forward(qkv, b, h, n_heads, y, att):
    """Head h of batch row b: y[b, :, h's features] and its packed weights att (T (T + 1) / 2,),
    or no weights when att is empty (a forward that no backward follows)."""
    T, C = qkv.shape[1], qkv.shape[2] // 3
    hd = C // n_heads
    scale = qkv.dtype.type(1.0 / np.sqrt(hd))
    q, k, v = _gather_head(qkv, b, h, n_heads, scale)        # (T, hd) each, q scaled
    vT = v.T.copy()                                          # (hd, T)
    s = np.empty(T, qkv.dtype)
    for t in range(T):
        L = t + 1
        _dots_rows(q[t], k, L, s)                            # s[j] = q[t] . k[j] / sqrt(hd), j <= t
        m = row_max(s, L)
        for j in range(L):
            s[j] = exp(s[j] - m)
        tot = 0.0                                            # float64 accumulator
        for j in range(L):
            tot += s[j]
        inv = qkv.dtype.type(1.0 / tot)
        for j in range(L):
            s[j] *= inv
        if att.size:                                         # kept for the backward: row t of the packed weights
            att[t * (t + 1) // 2:(t + 1) * (t + 2) // 2] = s[:L]
        _dots_cols(s, vT, L, y[b, t, h * hd:(h + 1) * hd])   # y[t, d] = sum_j a[t, j] v[j, d]


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
    kT = k.T.copy()                                          # (hd, T)
    dk = np.zeros((T, hd), dt)
    dv = np.zeros((T, hd), dt)
    s = np.empty(T, dt)
    for t in range(T):                                       # one pass along the rows t
        L = t + 1
        a = att[t * (t + 1) // 2:(t + 1) * (t + 2) // 2]
        _dots_rows(g[t], v, L, s)                            # s[j] = da[t, j] = dy[t] . v[j]
        tot = 0.0                                            # sum_k a[t, k] da[t, k], float64
        for j in range(L):
            tot += a[j] * s[j]
        c = dt.type(tot)
        for j in range(L):
            s[j] = a[j] * (s[j] - c) * scale                 # ds, with the 1/sqrt(hd) folded in
        _dots_cols(s, kT, L, dqkv[b, t, h * hd:(h + 1) * hd])        # dq[t] = sum_j ds[t, j] k[j]
        qt, gt = q[t], g[t]
        for j in range(L):                                   # row t's terms of dk[j] and dv[j]
            dkj, dvj, sj, aj = dk[j], dv[j], s[j], a[j]
            for d in range(hd):
                dkj[d] += sj * qt[d]                         # dk[j] = sum_{t >= j} ds[t, j] q[t]
                dvj[d] += aj * gt[d]                         # dv[j] = sum_{t >= j} a[t, j] dy[t]
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


# The two products below are written as dot products along a contiguous axis, four at a time:
# LLVM keeps each running sum in a SIMD register (a vectorized reduction), where a loop that
# adds a scaled row into an output row loads and stores that row for every term. (The
# backward's dk and dv are still summed that way, hd features at a time: as dot products they
# would need ds and a by columns, and the second pass that wrote and read them was slower.)

@njit(inline="always", fastmath={"reassoc", "contract"}, error_model="numpy")
def _dots_rows(x, M, L, out):
    """out[j] = x . M[j] for rows j < L of M (R, D)."""
    D = x.shape[0]
    zero = x.dtype.type(0.0)
    j = 0
    while j + 4 <= L:
        m0, m1, m2, m3 = M[j], M[j + 1], M[j + 2], M[j + 3]
        s0 = s1 = s2 = s3 = zero
        for d in range(D):
            xd = x[d]
            s0 += xd * m0[d]
            s1 += xd * m1[d]
            s2 += xd * m2[d]
            s3 += xd * m3[d]
        out[j], out[j + 1], out[j + 2], out[j + 3] = s0, s1, s2, s3
        j += 4
    while j < L:
        mj = M[j]
        s0 = zero
        for d in range(D):
            s0 += x[d] * mj[d]
        out[j] = s0
        j += 1


@njit(inline="always", fastmath={"reassoc", "contract"}, error_model="numpy")
def _dots_cols(w, MT, L, out):
    """out[d] = sum_{j < L} w[j] MT[d, j], i.e. w[:L] @ M[:L] with M given transposed, MT (D, R)."""
    D = MT.shape[0]
    zero = w.dtype.type(0.0)
    d = 0
    while d + 4 <= D:
        r0, r1, r2, r3 = MT[d], MT[d + 1], MT[d + 2], MT[d + 3]
        a0 = a1 = a2 = a3 = zero
        for j in range(L):
            wj = w[j]
            a0 += wj * r0[j]
            a1 += wj * r1[j]
            a2 += wj * r2[j]
            a3 += wj * r3[j]
        out[d], out[d + 1], out[d + 2], out[d + 3] = a0, a1, a2, a3
        d += 4
    while d < D:
        rd = MT[d]
        a0 = zero
        for j in range(L):
            a0 += w[j] * rd[j]
        out[d] = a0
        d += 1


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
