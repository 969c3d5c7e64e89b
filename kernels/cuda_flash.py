"""Causal attention on the GPU without the T x T weights: FlashAttention's tiles and online softmax.

    flash_attention_forward(qkv, n_heads, out=None) -> y, lse
    flash_attention_backward(dy, qkv, y, lse, n_heads) -> dqkv

The same math as scratchgpt.ops.attention_forward / attention_backward (no dropout), per head:

    S = q k^T / sqrt(hd)   (T, T) scores, causal: query t sees keys 0..t
    A = softmax(S)         row by row
    y = A v                (T, hd)

The reference code and kernels/ops.py's cuBLAS version store A, (B * H, T, T) numbers, for the
backward: at GPT-2's 8 x 1024 that is 384 MiB a layer in float32, most of a step's peak memory.
Here A never exists in memory. A thread block takes a tile of query rows and walks over the keys
and values a tile at a time, staged in shared memory; each query row keeps only a running max m,
a running sum l and a running output acc (hd numbers). This is the online softmax (Milakov and
Gimelshein 2018; FlashAttention, Dao et al. 2022): when a new tile raises the row's max from m to
m', what was summed so far is rescaled by exp(m - m') so that every term is exp(s - m') again.
After the last tile y = acc / l, and the row's log-sum-exp lse = m + log(l) is kept: it is all the
backward needs to recompute any weight, A[t, j] = exp(S[t, j] - lse[t]).

The backward is FlashAttention-2's (Dao 2023), with D[t] = sum_d dy[t, d] * y[t, d]:

    P  = exp(S - lse)            the weights, recomputed tile by tile
    dV = P^T dY                  dP = dY V^T
    dS = P * (dP - D)            the softmax backward: sum_j dP[t, j] P[t, j] = dy_t . (A v)_t = D[t]
    dQ = dS K / sqrt(hd)         dK = dS^T Q / sqrt(hd)

How the backward is split: two kernels, no atomics, so a gradient has the same bits on every run.
  1. dQ: one block per (head, query tile), one thread per query row, walking over the key tiles
     up to the diagonal (the forward's shape). It also computes D and stores it, (B * H, T).
  2. dK and dV: one block per (head, key tile), one thread per key row, walking over the query
     tiles from the diagonal down, summing dV and dK for its key row.
Each kernel recomputes S and P for its own sums, so the backward forms them twice; FlashAttention-2
forms them once and adds dQ with atomics from the key-tile blocks, which changes the order of the
sums from run to run. Two passes cost about 7 against 5 dot products of length hd per (query,
key) pair; we take that for gradients that repeat bit for bit (as the rest of kernels/cuda.py).

Sums are in the data's dtype: float32 for float32 (the GPU's usual choice), float64 for float64.
The layout follows the fused projections: qkv (B, T, 3C) is read in place (query t of head h is
qkv[b, t, h*hd : (h+1)*hd], its key C further on, its value 2C further on), y is written as
(B, T, C) with the heads side by side, so no split or merge of heads is copied.

Arrays, launches and errors as in kernels/cuda.py (CuPy arrays on CuPy's current stream without a
host synchronisation, so the kernels run inside scratchgpt.cuda_graph's recorded step; numba device
arrays under the simulator). The kernels are built per (dtype, hd, tile sizes) on first use, since
their local and shared arrays have those sizes; numba compiles them then (a second or two each,
not cached on disk: numba does not cache kernels made in a function).
"""
import math

import numpy as np

from .cuda import _as_float_array, _check_same, _empty, _launch, cuda

# Tile sizes. A block has ROWS_PER_BLOCK threads, one row each (a query row in the forward and in
# dQ, a key row in dK/dV); the other side's rows come through shared memory ROWS_PER_TILE at a time.
# Test knobs: the tests shrink them (e.g. to 8 and 4) so that small T spans several tiles.
ROWS_PER_BLOCK = 64
ROWS_PER_TILE = 32
SHARED_BYTES = 48 * 1024     # static shared memory a block may have on every CUDA GPU
MAX_HEAD_DIM = 256           # each thread keeps a few rows of hd numbers in registers/local memory


def flash_attention_forward(qkv, n_heads, out=None):
    """Causal attention of the fused projections qkv (B, T, 3C) -> (y (B, T, C), lse (B * H, T)).

    lse[b * H + h, t] = log sum_{j <= t} exp(q_t . k_j / sqrt(hd)) for head h, in qkv's dtype.
    out: an optional (B, T, C) device array to write y into (and return).
    """
    qkv = _as_float_array(qkv, "qkv", ndim=3)
    B, T, hd = _shape(qkv, n_heads)
    y = _empty(qkv, (B, T, n_heads * hd), qkv.dtype) if out is None else _checked_out(out, qkv, (B, T, n_heads * hd))
    lse = _empty(qkv, (B * n_heads, T), qkv.dtype)
    if y.size:
        forward, _, _, rows, _ = _kernels(qkv.dtype, hd)
        scale = qkv.dtype.type(1.0 / math.sqrt(hd))
        _launch(forward, (B * n_heads, -(-T // rows)), rows, qkv, scale, y, lse)
    return y, lse


def flash_attention_backward(dy, qkv, y, lse, n_heads):
    """Gradient of flash_attention_forward: dy (B, T, C) -> dqkv (B, T, 3C), from the forward's y and lse."""
    qkv = _as_float_array(qkv, "qkv", ndim=3)
    B, T, hd = _shape(qkv, n_heads)
    dy = _as_float_array(dy, "dy", ndim=3)
    y = _as_float_array(y, "y", ndim=3)
    lse = _as_float_array(lse, "lse", ndim=2)
    _check_same(dy, y, "dy", "y")
    if tuple(y.shape) != (B, T, n_heads * hd) or y.dtype != qkv.dtype:
        raise ValueError(f"dy and y must be ({B}, {T}, {n_heads * hd}) {qkv.dtype} for qkv of shape "
                         f"{tuple(qkv.shape)}, got {tuple(y.shape)} {y.dtype}")
    if tuple(lse.shape) != (B * n_heads, T) or lse.dtype != qkv.dtype:
        raise ValueError(f"lse must be ({B * n_heads}, {T}) {qkv.dtype}, got {tuple(lse.shape)} {lse.dtype}")
    dqkv = _empty(qkv, qkv.shape, qkv.dtype)
    D = _empty(qkv, (B * n_heads, T), qkv.dtype)           # rowsum(dy * y), written by the dQ kernel
    if dqkv.size:
        _, backward_dq, backward_dkdv, rows, _ = _kernels(qkv.dtype, hd)
        scale = qkv.dtype.type(1.0 / math.sqrt(hd))
        grid = (B * n_heads, -(-T // rows))
        _launch(backward_dq, grid, rows, dy, qkv, y, lse, scale, D, dqkv)        # first: it writes D
        _launch(backward_dkdv, grid, rows, dy, qkv, lse, D, scale, dqkv)
    return dqkv


def _shape(qkv, n_heads):
    """(B, T, hd) of qkv (B, T, 3C) with n_heads heads, or raise with what does not divide."""
    B, T, C3 = qkv.shape
    if n_heads < 1 or C3 % (3 * n_heads):
        raise ValueError(f"qkv's last axis ({C3}) must be 3 * n_heads * head_dim for n_heads={n_heads}")
    hd = C3 // 3 // n_heads
    if hd > MAX_HEAD_DIM:
        raise ValueError(f"head_dim {hd} is larger than the flash attention's MAX_HEAD_DIM ({MAX_HEAD_DIM})")
    return B, T, hd


def _checked_out(out, like, shape):
    out = _as_float_array(out, "out", ndim=len(shape))
    if tuple(out.shape) != shape or out.dtype != like.dtype:
        raise ValueError(f"out must be a {like.dtype} array of shape {shape}, got {out.dtype} {tuple(out.shape)}")
    return out


# ---------------------------------------------------------------- the kernels, per dtype and head size

_built = {}      # (dtype, hd, rows per block, rows per tile) -> the three kernels


def _kernels(dtype, hd):
    """(forward, backward_dq, backward_dkdv, rows per block, rows per tile) for this dtype and head size."""
    dtype = np.dtype(dtype).type
    rows = ROWS_PER_BLOCK
    tile = ROWS_PER_TILE         # fewer when two (tile, hd) arrays would not fit in shared memory
    while tile > 1 and 2 * tile * (hd + 1) * np.dtype(dtype).itemsize > SHARED_BYTES:
        tile //= 2
    key = (dtype, hd, rows, tile)
    if key not in _built:
        _built[key] = _build(*key) + (rows, tile)
    return _built[key]


def _build(dtype, HD, ROWS, TILE):
    """The three kernels with these sizes baked in (numba needs the sizes of local and shared
    arrays as constants). ROWS threads a block; TILE rows of the other side staged at a time."""
    jit = cuda.jit(cache=False)
    ZERO = dtype(0.0)
    NEG_INF = dtype(-math.inf)

    # Block (bh, tile): head bh = b * H + h, query rows t = tile * ROWS + thread.
    # For each key tile j0..j0+TILE-1 up to the block's last row, each query row t does:
    #   s_j  = (q_t / sqrt(hd)) . k_j              for j <= t (the causal mask: later keys are skipped)
    #   m'   = max(m, max_j s_j)                   the running max
    #   l    = l * exp(m - m') + sum_j exp(s_j - m')             the running sum, rescaled to m'
    #   acc  = acc * exp(m - m') + sum_j exp(s_j - m') v_j       the running output, rescaled to m'
    # and at the end  y_t = acc / l,  lse_t = m + log(l).
    @jit
    def forward(qkv, scale, y, lse):
        k_tile = cuda.shared.array((TILE, HD), dtype)
        v_tile = cuda.shared.array((TILE, HD), dtype)
        q = cuda.local.array(HD, dtype)
        acc = cuda.local.array(HD, dtype)
        s = cuda.local.array(TILE, dtype)
        T, C = qkv.shape[1], qkv.shape[2] // 3
        bh, tid = cuda.blockIdx.x, cuda.threadIdx.x
        H = C // HD
        b, h = bh // H, bh % H
        tile = cuda.gridDim.y - 1 - cuda.blockIdx.y     # the last query tiles (the most keys) start first
        t = tile * ROWS + tid                           # this thread's query row
        if t < T:
            for d in range(HD):
                q[d] = qkv[b, t, h * HD + d] * scale
                acc[d] = ZERO
        m, l = NEG_INF, ZERO
        last = (tile + 1) * ROWS             # the block's rows see keys 0..last-1
        if last > T:
            last = T
        for j0 in range(0, last, TILE):
            for e in range(tid, TILE * HD, ROWS):       # stage keys and values j0.. (all threads)
                jj, d = e // HD, e % HD
                if j0 + jj < T:
                    k_tile[jj, d] = qkv[b, j0 + jj, C + h * HD + d]
                    v_tile[jj, d] = qkv[b, j0 + jj, 2 * C + h * HD + d]
            cuda.syncthreads()
            if t < T and j0 <= t:
                n = t + 1 - j0 if t + 1 - j0 < TILE else TILE    # keys j0..j0+n-1 are at or before t
                m_new = m
                for jj in range(n):
                    dot = ZERO
                    for d in range(HD):
                        dot += q[d] * k_tile[jj, d]
                    s[jj] = dot
                    if dot > m_new:
                        m_new = dot
                rescale = math.exp(m - m_new)           # 0 on the first tile (m = -inf)
                l *= rescale
                for d in range(HD):
                    acc[d] *= rescale
                for jj in range(n):
                    p = math.exp(s[jj] - m_new)
                    l += p
                    for d in range(HD):
                        acc[d] += p * v_tile[jj, d]
                m = m_new
            cuda.syncthreads()                          # before the next tile overwrites these
        if t < T:
            inv_l = dtype(1.0) / l
            for d in range(HD):
                y[b, t, h * HD + d] = acc[d] * inv_l
            lse[bh, t] = m + math.log(l)

    # Block (bh, tile), one thread per query row t, over the key tiles up to the diagonal:
    #   D_t  = dy_t . y_t                          (stored for the dK/dV kernel)
    #   p_j  = exp(s_j - lse_t)                    the forward's weight A[t, j], recomputed
    #   dp_j = dy_t . v_j                          dA[t, j]
    #   dq_t = sum_{j <= t} p_j (dp_j - D_t) k_j / sqrt(hd)
    @jit
    def backward_dq(dy, qkv, y, lse, scale, D, dqkv):
        k_tile = cuda.shared.array((TILE, HD), dtype)
        v_tile = cuda.shared.array((TILE, HD), dtype)
        q = cuda.local.array(HD, dtype)
        g = cuda.local.array(HD, dtype)                 # dy_t
        dq = cuda.local.array(HD, dtype)
        T, C = qkv.shape[1], qkv.shape[2] // 3
        bh, tid = cuda.blockIdx.x, cuda.threadIdx.x
        H = C // HD
        b, h = bh // H, bh % H
        tile = cuda.gridDim.y - 1 - cuda.blockIdx.y     # as in the forward: the longest blocks first
        t = tile * ROWS + tid
        Dt, lse_t = ZERO, ZERO
        if t < T:
            for d in range(HD):
                q[d] = qkv[b, t, h * HD + d] * scale
                g[d] = dy[b, t, h * HD + d]
                Dt += g[d] * y[b, t, h * HD + d]
                dq[d] = ZERO
            D[bh, t] = Dt
            lse_t = lse[bh, t]
        last = (tile + 1) * ROWS
        if last > T:
            last = T
        for j0 in range(0, last, TILE):
            for e in range(tid, TILE * HD, ROWS):
                jj, d = e // HD, e % HD
                if j0 + jj < T:
                    k_tile[jj, d] = qkv[b, j0 + jj, C + h * HD + d]
                    v_tile[jj, d] = qkv[b, j0 + jj, 2 * C + h * HD + d]
            cuda.syncthreads()
            if t < T and j0 <= t:
                for jj in range(t + 1 - j0 if t + 1 - j0 < TILE else TILE):
                    sj, dpj = ZERO, ZERO
                    for d in range(HD):
                        sj += q[d] * k_tile[jj, d]
                        dpj += g[d] * v_tile[jj, d]
                    ds = math.exp(sj - lse_t) * (dpj - Dt)
                    for d in range(HD):
                        dq[d] += ds * k_tile[jj, d]
            cuda.syncthreads()
        if t < T:
            for d in range(HD):
                dqkv[b, t, h * HD + d] = dq[d] * scale

    # Block (bh, tile), one thread per key row j, over the query tiles from the diagonal on:
    #   p_t  = exp((q_t / sqrt(hd)) . k_j - lse_t),   dp_t = dy_t . v_j       for t >= j
    #   dv_j = sum_t p_t dy_t
    #   dk_j = sum_t p_t (dp_t - D_t) q_t / sqrt(hd)
    @jit
    def backward_dkdv(dy, qkv, lse, D, scale, dqkv):
        q_tile = cuda.shared.array((TILE, HD), dtype)   # q_t / sqrt(hd)
        g_tile = cuda.shared.array((TILE, HD), dtype)   # dy_t
        lse_tile = cuda.shared.array(TILE, dtype)
        D_tile = cuda.shared.array(TILE, dtype)
        k = cuda.local.array(HD, dtype)
        v = cuda.local.array(HD, dtype)
        dk = cuda.local.array(HD, dtype)
        dv = cuda.local.array(HD, dtype)
        T, C = qkv.shape[1], qkv.shape[2] // 3
        bh, tid = cuda.blockIdx.x, cuda.threadIdx.x
        H = C // HD
        b, h = bh // H, bh % H
        first = cuda.blockIdx.y * ROWS                  # the block's first key row (the first tiles,
                                                        # which meet the most queries, start first)
        j = first + tid
        if j < T:
            for d in range(HD):
                k[d] = qkv[b, j, C + h * HD + d]
                v[d] = qkv[b, j, 2 * C + h * HD + d]
                dk[d] = ZERO
                dv[d] = ZERO
        for i0 in range(first, T, TILE):                # queries before `first` see none of these keys
            for e in range(tid, TILE * HD, ROWS):
                ii, d = e // HD, e % HD
                if i0 + ii < T:
                    q_tile[ii, d] = qkv[b, i0 + ii, h * HD + d] * scale
                    g_tile[ii, d] = dy[b, i0 + ii, h * HD + d]
            for ii in range(tid, TILE, ROWS):
                if i0 + ii < T:
                    lse_tile[ii] = lse[bh, i0 + ii]
                    D_tile[ii] = D[bh, i0 + ii]
            cuda.syncthreads()
            if j < T:
                start = j - i0 if j > i0 else 0                   # queries t = i0 + ii >= j
                for ii in range(start, T - i0 if T - i0 < TILE else TILE):
                    st, dpt = ZERO, ZERO
                    for d in range(HD):
                        st += q_tile[ii, d] * k[d]
                        dpt += g_tile[ii, d] * v[d]
                    p = math.exp(st - lse_tile[ii])
                    ds = p * (dpt - D_tile[ii])
                    for d in range(HD):
                        dv[d] += p * g_tile[ii, d]
                        dk[d] += ds * q_tile[ii, d]           # q_tile carries the 1/sqrt(hd)
            cuda.syncthreads()
        if j < T:
            for d in range(HD):
                dqkv[b, j, C + h * HD + d] = dk[d]
                dqkv[b, j, 2 * C + h * HD + d] = dv[d]

    return forward, backward_dq, backward_dkdv
