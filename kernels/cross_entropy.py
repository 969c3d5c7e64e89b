"""Mean cross-entropy over logits and its gradient, in one fused numba pass.

logits (N, V), targets (N,). Each row is a log-softmax: max, sum of exponentials, then one
write of the gradient. Rows whose target is ignore_index (-100 by default, as PyTorch) add
nothing to the loss and get a zero gradient; the mean is over the other rows.
If every target is ignored, the loss is 0.0 and the gradient all zeros (PyTorch returns nan
there; a zero keeps a training loop with an empty batch harmless).
"""

import numpy as np
from numba import prange

from ._common import as_float_array, output_array, twins
from ._vmath import exp, row_max


# lse = m + log(sum_j exp(z_j - m)),  m = max_j z_j             (log-sum-exp of one row z)
# loss_row = lse - z[target],  loss = sum(loss_row) / n_valid
# dlogits[j] = (exp(z_j - lse) - [j == target]) / n_valid,  0 in ignored rows
@twins()
def _cross_entropy_forward_backward(logits, targets, ignore_index, n_valid, dlogits, row_loss):
    N, V = logits.shape
    for i in prange(N):
        z, g = logits[i], dlogits[i]  # (V,), (V,); g may be z itself (out=logits)
        tgt = targets[i]
        if tgt == ignore_index:
            g[:] = 0.0
            row_loss[i] = 0.0
            continue
        z_tgt = z[tgt]  # read before g overwrites it
        m = row_max(z, V)  # (a nan still reaches the loss through exp)
        for j in range(V):
            g[j] = exp(z[j] - m)  # exp(z_j - m), scaled to probabilities / n_valid below
        s = 0.0  # float64 accumulator, also for float32 logits
        for j in range(V):
            s += g[j]
        scale = logits.dtype.type(1.0 / (s * n_valid))  # softmax_j / n_valid = exp(z_j - m) * scale
        for j in range(V):
            g[j] *= scale
        g[tgt] -= 1.0 / n_valid
        row_loss[i] = m + np.log(s) - z_tgt


# the forward alone (evaluation): lse and loss_row as above, no gradient written
@twins()
def _cross_entropy_loss(logits, targets, ignore_index, row_loss):
    N, V = logits.shape
    for i in prange(N):
        z, tgt = logits[i], targets[i]
        if tgt == ignore_index:
            row_loss[i] = 0.0
            continue
        m = row_max(z, V)
        s = 0.0  # float64 accumulator, also for float32 logits
        for j in range(V):
            s += exp(z[j] - m)
        row_loss[i] = m + np.log(s) - z[tgt]


def cross_entropy_loss(logits, targets, ignore_index=-100):
    """The loss of cross_entropy_forward_backward alone, for a forward that no backward follows:
    one read of the logits and no (N, V) gradient written."""
    logits, targets, n_valid = _check(logits, targets, ignore_index)
    if n_valid == 0:
        return 0.0
    row_loss = np.empty(logits.shape[0], dtype=np.float64)
    _cross_entropy_loss(logits, targets, int(ignore_index), row_loss, work=logits.size)
    return float(row_loss.sum() / n_valid)


def _check(logits, targets, ignore_index):
    """logits as a float (N, V) array, targets as int64 (N,) (checked), and the count of valid ones."""
    logits = as_float_array(logits, "logits", ndim=2)
    targets = np.ascontiguousarray(targets)
    if targets.dtype.kind not in "iu":
        raise TypeError(f"targets must be integers (int32 or int64), got {targets.dtype}")
    N, V = logits.shape
    if targets.shape != (N,):
        raise ValueError(f"targets must be ({N},) for logits of shape {logits.shape}, got {targets.shape}")
    targets = targets.astype(np.int64, copy=False)
    valid = targets != ignore_index
    bad = valid & ((targets < 0) | (targets >= V))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"target {int(targets[i])} at row {i} is outside the vocabulary [0, {V}) "
                         f"and is not ignore_index ({ignore_index})")
    return logits, targets, int(valid.sum())


def cross_entropy_forward_backward(logits, targets, ignore_index=-100, out=None):
    """Mean cross-entropy of logits (N, V) against int targets (N,) -> (loss, dlogits (N, V)).

    loss is a Python float; dlogits is d loss / d logits, in the dtype of logits.
    out: an optional (N, V) array to write dlogits into (and return). It may be logits itself,
    which saves an (N, V) array for a large vocabulary, but the row loops then lose SIMD
    (~4x slower here).
    """
    logits, targets, n_valid = _check(logits, targets, ignore_index)
    N = logits.shape[0]
    dlogits = output_array(out, logits)
    if n_valid == 0:
        dlogits[...] = 0.0
        return 0.0, dlogits
    row_loss = np.empty(N, dtype=np.float64)
    _cross_entropy_forward_backward(logits, targets, int(ignore_index), float(n_valid), dlogits, row_loss,
                                    work=logits.size)
    return float(row_loss.sum() / n_valid), dlogits
