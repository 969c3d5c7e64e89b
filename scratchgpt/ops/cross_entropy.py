"""Mean cross-entropy of logits against target ids; targets equal to ignore_index are skipped."""
from typing import NamedTuple

from scratchgpt.arrays import array_module
from scratchgpt.ops.softmax import softmax_forward


class CrossEntropyCache(NamedTuple):
    logits: object        # (N, V) the logits, rows flattened
    targets: object       # (N,) the target ids
    keep: object          # (N,) bool: target != ignore_index
    n: object             # number of kept rows (at least 1), a 0-d array
    shape: tuple          # the logits' original shape (..., V)


def cross_entropy_forward(logits, targets, ignore_index=-100):
    """loss = mean over kept rows n of -log softmax(logits[n])[targets[n]]   (a 0-d array)

    (..., V) logits, (...) targets. Rows whose target is ignore_index count neither in the
    sum nor in the number we divide by; if every row is ignored the loss is 0.
    log softmax(z)[t] = z[t] - logsumexp(z), with the row max subtracted before exp.
    """
    xp = array_module(logits)
    V = logits.shape[-1]
    logits2, targets = logits.reshape(-1, V), targets.reshape(-1)   # (N, V), (N,)
    keep = targets != ignore_index
    n = xp.maximum(keep.sum(), 1)                           # stays on the device (no sync on CuPy)
    safe = xp.where(keep, targets, 0)                       # any valid index for ignored rows
    shifted = logits2 - logits2.max(axis=-1, keepdims=True)
    lse = xp.log(xp.exp(shifted).sum(axis=-1))              # log-sum-exp, (N,)
    logp = shifted[xp.arange(len(safe)), safe] - lse        # log p(target), (N,)
    loss = -(logp * keep).sum() / n
    return loss, CrossEntropyCache(logits2, safe, keep, n, logits.shape)


def cross_entropy_backward(dloss, cache):
    """dlogits = dloss * (softmax(logits) - onehot(target)) / n,  and 0 on ignored rows."""
    logits2, targets, keep, n, shape = cache
    xp = array_module(logits2)
    probs, _ = softmax_forward(logits2)                     # (N, V), a new array
    probs[xp.arange(len(targets)), targets] -= 1.0          # softmax - onehot
    probs *= (keep * (dloss / n)).astype(probs.dtype)[:, None]   # the mean's 1/n; ignored rows -> 0
    return probs.reshape(shape)

