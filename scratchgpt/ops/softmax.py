"""Softmax over the last axis, and its causal (masked) form used by attention."""
from scratchgpt.arrays import array_module


def softmax_forward(x):
    """y = exp(x - max(x)) / sum(exp(x - max(x)))   (max subtracted so exp never overflows)

    The cache is the output y: the backward needs nothing else."""
    xp = array_module(x)
    e = xp.exp(x - x.max(axis=-1, keepdims=True))
    y = e / e.sum(axis=-1, keepdims=True)
    return y, y


def softmax_backward(dy, cache):
    """dx = y * (dy - sum(dy * y))   (the Jacobian diag(y) - y y^T applied to dy)"""
    y = cache
    return y * (dy - (dy * y).sum(axis=-1, keepdims=True))


def causal_softmax_forward(x):
    """Softmax of attention scores (..., T, T) where query t sees keys 0..t only.

    The mask is applied *before* the softmax: scores of future keys become -inf, so they
    get exactly zero weight and the remaining weights of each row still sum to 1.
    """
    xp = array_module(x)
    T = x.shape[-1]
    future = xp.triu(xp.ones((T, T), dtype=bool), k=1)          # True above the diagonal
    return softmax_forward(xp.where(future, -xp.inf, x))


def causal_softmax_backward(dy, cache):
    """Same as softmax_backward; masked entries have y = 0, so they get dx = 0."""
    return softmax_backward(dy, cache)
