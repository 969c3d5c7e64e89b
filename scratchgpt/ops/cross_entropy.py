"""Mean cross-entropy of logits against target ids; targets equal to ignore_index are skipped."""
from scratchgpt import backend
from scratchgpt.backend import array_module


def cross_entropy_forward(logits, targets, ignore_index=-100):
    """loss = mean over kept rows n of -log softmax(logits[n])[targets[n]]   (a 0-d array)

    (..., V) logits, (...) targets. Rows whose target is ignore_index count neither in the
    sum nor in the number we divide by; if every row is ignored the loss is 0.
    """
    V = logits.shape[-1]
    logits2 = logits.reshape(-1, V)                         # (N, V)
    targets = targets.reshape(-1)                           # (N,)
    k = backend.fused(logits2)
    if k is not None:                                       # loss and dlogits in one pass
        loss, dlogits = k.cross_entropy_forward_backward(logits2, targets, ignore_index)
        return loss, (dlogits, logits.shape)
    xp = array_module(logits)
    keep = targets != ignore_index
    n = xp.maximum(keep.sum(), 1)                           # stays on the device (no sync on CuPy)
    safe = xp.where(keep, targets, 0)                       # any valid index for ignored rows
    shifted = logits2 - logits2.max(axis=-1, keepdims=True)
    lse = xp.log(xp.exp(shifted).sum(axis=-1))              # log-sum-exp, (N,)
    logp = shifted[xp.arange(len(safe)), safe] - lse        # log p(target), (N,)
    loss = -(logp * keep).sum() / n                         # a 0-d array
    probs = xp.exp(shifted - lse[:, None])                  # softmax, kept for the backward
    probs[xp.arange(len(safe)), safe] -= 1.0                # softmax - onehot
    probs *= (keep / n).astype(probs.dtype)[:, None]        # the mean's 1/n; ignored rows -> 0
    return loss, (probs, logits.shape)


def cross_entropy_backward(dloss, cache):
    """dlogits = dloss * (softmax(logits) - onehot(target)) / n,  and 0 on ignored rows.

    The forward already formed (softmax - onehot) / n, the gradient for dloss = 1.
    """
    dlogits, shape = cache
    if dloss != 1.0:
        dlogits = dlogits * dloss
    return dlogits.reshape(shape)
