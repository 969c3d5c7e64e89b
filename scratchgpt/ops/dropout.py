"""Inverted dropout: zero a share p of the entries at training time, scale the rest by 1/(1-p)."""


def dropout_forward(x, p, rng):
    """y = x * mask, mask = Bernoulli(1 - p) / (1 - p) drawn from `rng`.

    With p == 0 or rng None (evaluation mode) this is the identity, and no random numbers
    are drawn, so switching dropout off leaves the generator untouched. The cache is the
    mask (None when nothing was dropped).
    """
    if p == 0.0 or rng is None:
        return x, None
    keep = rng.random(x.shape, dtype=x.dtype) >= p
    mask = keep * x.dtype.type(1.0 / (1.0 - p))                # the scale is folded into the mask
    return x * mask, mask


def dropout_backward(dout, cache):
    """dx = dout * mask: the same entries are dropped and scaled."""
    mask = cache
    return dout if mask is None else dout * mask
