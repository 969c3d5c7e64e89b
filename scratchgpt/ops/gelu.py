"""GELU: GPT-2's tanh approximation by default, the exact erf form on request."""
import math

from scratchgpt.arrays import array_module

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def gelu_forward(x, approximate="tanh"):
    """tanh:  y = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
    none:  y = x Phi(x) = 0.5 x (1 + erf(x / sqrt(2)))        (torch's approximate='none')

    The cache is the input x."""
    if approximate == "tanh":
        t = array_module(x).tanh(SQRT_2_OVER_PI * (x + 0.044715 * x * x * x))
        return 0.5 * x * (1.0 + t), x
    if approximate == "none":
        return 0.5 * x * (1.0 + _erf(x * (1.0 / math.sqrt(2.0)))), x
    raise ValueError(f"unknown GELU approximation {approximate!r}: use 'tanh' or 'none'")


def gelu_backward(dout, cache, approximate="tanh"):
    """tanh:  dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2),  t = tanh(u)
    none:  dy/dx = Phi(x) + x phi(x),  phi(x) = exp(-x^2 / 2) / sqrt(2 pi)"""
    x = cache
    xp = array_module(x)
    if approximate == "tanh":
        t = xp.tanh(SQRT_2_OVER_PI * (x + 0.044715 * x * x * x))
        du = SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * x * x)
        return dout * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du)
    cdf = 0.5 * (1.0 + _erf(x * (1.0 / math.sqrt(2.0))))
    pdf = xp.exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi))
    return dout * (cdf + x * pdf)


def _erf(x):
    """Element-wise erf. NumPy has none, so the exact form uses math.erf per element (slow,
    but exact to double precision; the tanh form is the fast default)."""
    if array_module(x).__name__ == "cupy":
        from cupyx.scipy.special import erf
        return erf(x)
    import numpy
    return numpy.frompyfunc(math.erf, 1, 1)(x).astype(x.dtype)
