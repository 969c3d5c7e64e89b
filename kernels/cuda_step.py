"""The GPU kernels of a training step's ends: the cross-entropy fused over the vocabulary, the
token embedding's scatter-add without atomics, and AdamW in one pass. Part of scratchgpt.kernels.cuda
(which re-exports them); the shared machinery (launch sizes, array checks, block reductions) is there.
"""
import math

import numpy as np

from .cuda import (CE_THREADS, ROW_THREADS, _as_float_array, _block_max, _block_size,  # noqa: F401
                   _block_sum, _check_same, _contiguous, _cupy, _empty, _grid_blocks, _is_numba_device_array,
                   _jit, _launch, _output_array, _to_device_like, cuda)


# ---------------------------------------------------------------- cross-entropy

# One block counts the rows whose target is not ignore_index: n_valid[0] (as float64, exact).
@_jit()
def _count_valid_targets(targets, ignore_index, n_valid):
    buf = cuda.shared.array(CE_THREADS, np.float64)
    count = np.float64(0.0)
    for i in range(cuda.threadIdx.x, targets.shape[0], cuda.blockDim.x):
        if targets[i] != ignore_index:
            count += 1.0
    total = _block_sum(count, buf)
    if cuda.threadIdx.x == 0:
        n_valid[0] = total


# Block i: row z = logits[i].  lse = m + log(sum_j exp(z_j - m)),  m = max_j z_j
# row_loss = lse - z[target],  dlogits[j] = (exp(z_j - lse) - [j == target]) / n,  n = max(n_valid, 1)
# an ignored row: loss 0 and gradient 0; a target outside [0, V): loss and gradient nan
@_jit()
def _cross_entropy_rows(logits, targets, ignore_index, n_valid, dlogits, row_loss):
    buf = cuda.shared.array(CE_THREADS, np.float64)
    V = logits.shape[1]
    i, tid, step = cuda.blockIdx.x, cuda.threadIdx.x, cuda.blockDim.x
    tgt = targets[i]
    if tgt == ignore_index or tgt < 0 or tgt >= V:       # the whole block takes this branch
        fill = logits.dtype.type(0.0 if tgt == ignore_index else math.nan)
        for j in range(tid, V, step):
            dlogits[i, j] = fill
        if tid == 0:
            row_loss[i] = fill
        return
    z_tgt = logits[i, tgt]                        # read before any thread writes (dlogits may be logits)
    m_own = -math.inf
    for j in range(tid, V, step):
        if logits[i, j] > m_own:                  # a nan is skipped here but reaches the loss through exp
            m_own = logits[i, j]
    m = logits.dtype.type(_block_max(m_own, buf))
    s_own = np.float64(0.0)
    for j in range(tid, V, step):
        s_own += math.exp(logits[i, j] - m)
    s = _block_sum(s_own, buf)
    n = n_valid[0] if n_valid[0] > 1.0 else 1.0
    scale = logits.dtype.type(1.0 / (s * n))      # softmax_j / n = exp(z_j - m) * scale
    for j in range(tid, V, step):
        g = math.exp(logits[i, j] - m) * scale
        dlogits[i, j] = g - 1.0 / n if j == tgt else g
    if tid == 0:
        row_loss[i] = m + math.log(s) - z_tgt


# One block: loss[0] = sum(row_loss) / max(n_valid, 1), float64 (0 when every row is ignored).
@_jit()
def _mean_loss(row_loss, n_valid, loss):
    buf = cuda.shared.array(CE_THREADS, np.float64)
    s = np.float64(0.0)
    for i in range(cuda.threadIdx.x, row_loss.shape[0], cuda.blockDim.x):
        s += row_loss[i]
    total = _block_sum(s, buf)
    if cuda.threadIdx.x == 0:
        loss[0] = total / (n_valid[0] if n_valid[0] > 1.0 else 1.0)


def cross_entropy_forward_backward(logits, targets, ignore_index=-100, out=None):
    """Mean cross-entropy of logits (N, V) against int targets (N,) -> (loss, dlogits (N, V)).

    loss is a 0-d float64 array on the device (float(loss) reads it; see the module notes);
    dlogits is d loss / d logits, in the dtype of logits. Rows whose target is ignore_index add
    nothing and get a zero gradient; if every row is ignored the loss is 0 and dlogits all zero.
    out: an optional (N, V) device array to write dlogits into (and return); it may be logits.
    Three launches, no host synchronisation: count the kept rows, the rows, the mean.
    """
    logits = _as_float_array(logits, "logits", ndim=2)
    if isinstance(targets, (list, tuple)):
        targets = np.asarray(targets)
    if targets.dtype.kind not in "iu":
        raise TypeError(f"targets must be integers (int32 or int64), got {targets.dtype}")
    N, V = logits.shape
    if tuple(targets.shape) != (N,):
        raise ValueError(f"targets must be ({N},) for logits of shape {logits.shape}, got {tuple(targets.shape)}")
    if _cupy(targets) is None and isinstance(targets, np.ndarray):   # on the host: check as the CPU kernel does, then copy
        targets = np.ascontiguousarray(targets, dtype=np.int64)
        valid = targets != ignore_index
        bad = valid & ((targets < 0) | (targets >= V))
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"target {int(targets[i])} at row {i} is outside the vocabulary [0, {V}) "
                             f"and is not ignore_index ({ignore_index})")
        targets = _to_device_like(logits, targets)
    else:
        if _cupy(targets) is None and not _is_numba_device_array(targets):
            raise TypeError(f"targets must be a NumPy or a device array, got {type(targets).__name__}")
        targets = _contiguous(targets, "targets")
    dlogits = _output_array(out, logits)
    n_valid = _empty(logits, (1,), np.float64)
    row_loss = _empty(logits, (N,), np.float64)
    loss = _empty(logits, (1,), np.float64)
    threads = _block_size(N, CE_THREADS)
    _launch(_count_valid_targets, 1, threads, targets, int(ignore_index), n_valid)
    if N:
        _launch(_cross_entropy_rows, N, _block_size(V, CE_THREADS), logits, targets, int(ignore_index),
                n_valid, dlogits, row_loss)
    _launch(_mean_loss, 1, threads, row_loss, n_valid, loss)
    return loss.reshape(()), dlogits


# ---------------------------------------------------------------- embedding backward

# dweight[v] = sum of dout[n] over the rows n with ids[n] == v, without atomics. The ids are
# sorted (order: dout's rows by id); thread (n, c) with n the first position of a run of equal
# ids sums that run's rows of column c, in order, and adds the sum into out[id, c]. Each
# (id, c) has exactly one thread, so the result is the same bits on every run (an atomicAdd
# scatter, like cupy.add.at, sums in whatever order the threads arrive).
@_jit()
def _embedding_backward(dout, order, sorted_ids, out):
    N, C = dout.shape
    n = cuda.blockIdx.x
    c = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
    v = sorted_ids[n]
    if c >= C or (n > 0 and sorted_ids[n - 1] == v) or v < 0 or v >= out.shape[0]:
        return
    s = np.float64(0.0)
    m = n
    while m < N and sorted_ids[m] == v:
        s += dout[order[m], c]
        m += 1
    out[v, c] += s


def embedding_backward(dout, ids, out):
    """Add dout (..., C) into the table's gradient `out` (V, C) at rows ids (...), in place, and
    return `out`. A negative id counts from the end (as in NumPy); on the device an id outside
    [-V, V) adds nothing (checking it would wait for the GPU; the model checks its ids first).
    """
    dout = _as_float_array(dout, "dout")
    C = dout.shape[dout.ndim - 1]
    if tuple(ids.shape) != tuple(dout.shape)[:-1]:
        raise ValueError(f"ids have shape {tuple(ids.shape)} but dout has shape {tuple(dout.shape)}")
    same_kind = out is not None and (_cupy(out) is None) == (_cupy(dout) is None)
    if not same_kind or out.ndim != 2 or out.shape[1] != C or out.dtype != dout.dtype \
            or not (out.flags.c_contiguous if _cupy(out) is not None else out.is_c_contiguous()):
        raise ValueError(f"out must be a C-contiguous {dout.dtype} device array of shape (V, {C}) like dout, "
                         f"got {type(out).__name__} {getattr(out, 'dtype', '')} {tuple(getattr(out, 'shape', ()))}")
    dout = dout.reshape(-1, C)
    N = dout.shape[0]
    if N and C:
        order, sorted_ids = _sort_ids(ids, out.shape[0])
        threads = _block_size(C, 128)
        _launch(_embedding_backward, (N, -(-C // threads)), threads, dout, order, sorted_ids, out)
    return out


def _sort_ids(ids, V):
    """(order, sorted ids): the positions of the ids sorted by value, negative ids counted from
    the end first. On the device for CuPy arrays; numba device arrays (the simulator's tests) and
    NumPy ids are sorted on the host."""
    cp = _cupy(ids)
    if cp is not None:
        flat = ids.reshape(-1).astype(cp.int64)
        flat = cp.where(flat < 0, flat + V, flat)
        order = cp.argsort(flat)                  # CuPy's sort: a radix sort, the same order every run
        return order, flat[order]
    host = ids.copy_to_host() if _is_numba_device_array(ids) else np.asarray(ids)
    host = host.reshape(-1).astype(np.int64)
    host = np.where(host < 0, host + V, host)
    order = np.argsort(host, kind="stable")
    return cuda.to_device(order), cuda.to_device(host[order])


# ---------------------------------------------------------------- AdamW

# One pass over the flat buffers (a grid-stride loop), each element read once and written once:
#   m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
#   p <- p * (1 - lr * wd)                                  only for elements i < n_decay
#   p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
# the update of scratchgpt/optim.py's array code (about a dozen passes) in one launch.
@_jit()
def _adamw_step(p, g, m, v, n_decay, decay, b1, b2, step_size, inv_sqrt_bc2, eps):
    one = p.dtype.type(1.0)
    c1, c2 = one - b1, one - b2
    for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        gi = g[i]
        mi = b1 * m[i] + c1 * gi
        vi = b2 * v[i] + c2 * (gi * gi)
        m[i] = mi
        v[i] = vi
        pi = p[i] * (decay if i < n_decay else one)
        p[i] = pi - step_size * (mi / (math.sqrt(vi) * inv_sqrt_bc2 + eps))


def adamw_step(p, g, m, v, t, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, n_decay=0):
    """Update the 1-D device buffers p, m, v in place with gradient g, for step number t (1, 2, ...).

    Weight decay (decoupled, lr * weight_decay) applies to p[:n_decay] only. The scalars are
    computed on the host and passed in p's dtype, so float32 buffers see no float64 math.
    """
    p = _as_float_array(p, "p", ndim=1)
    for name, a in (("g", g), ("m", m), ("v", v)):
        _check_same(_as_float_array(a, name, ndim=1), p, name, "p")
    if not 0 <= n_decay <= p.shape[0]:
        raise ValueError(f"n_decay must be in [0, {p.shape[0]}], got {n_decay}")
    if t < 1:
        raise ValueError(f"the step number t counts from 1, got {t}")
    if p.shape[0]:
        f = p.dtype.type
        b1, b2 = betas
        threads = _block_size(p.shape[0], ROW_THREADS)
        _launch(_adamw_step, _grid_blocks(p.shape[0], threads), threads, p, g, m, v, int(n_decay),
                f(1.0 - lr * weight_decay), f(b1), f(b2), f(lr / (1.0 - b1 ** t)),
                f(1.0 / math.sqrt(1.0 - b2 ** t)), f(eps))
