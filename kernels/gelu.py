"""GELU, the tanh approximation GPT-2 uses, forward and backward, fused with numba.

gelu(x) = 0.5 * x * (1 + tanh(u)),   u = sqrt(2/pi) * (x + 0.044715 * x^3)

The kernels use the same function in another form: 1 + tanh(u) = 2 / (1 + exp(-2u)), so
gelu(x) = x * sigmoid(2u). That needs one exp (which vectorizes, see _vmath.py) where tanh
would be a scalar library call per element in numba. Elementwise, so the kernels work on the
flattened array; numba's prange hands each thread one contiguous part of it.
"""

import math

from numba import prange

from ._common import as_float_array, check_same, output_array, twins
from ._vmath import exp

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_COEF = 0.044715


# y = 0.5 * x * (1 + tanh(u)) = x * s,   s = sigmoid(2u) = 1 / (1 + exp(-2u)),
# u = sqrt(2/pi) * (x + 0.044715 * x^3)
@twins()
def _gelu_forward(x, y):
    k0 = x.dtype.type(-2.0 * _SQRT_2_OVER_PI)  # constants in x's dtype: float32 stays float32
    k1 = x.dtype.type(_COEF)
    one = x.dtype.type(1.0)
    for i in prange(x.size):
        xi = x[i]
        y[i] = xi / (one + exp(k0 * (xi + k1 * xi * xi * xi)))


def gelu_forward(x, out=None):
    """GELU (tanh approximation) of x, any shape -> y of the same shape and dtype.

    out: an optional array of x's shape and dtype to write y into (and return); it may be x.
    """
    x = as_float_array(x, "x")
    y = output_array(out, x)
    _gelu_forward(x.ravel(), y.ravel(), work=x.size)
    return y


# dy/dx = 0.5 * (1 + tanh(u)) + 0.5 * x * (1 - tanh(u)^2) * du/dx
#       = s + 2 * x * s * (1 - s) * du/dx,     s = sigmoid(2u),
# du/dx = sqrt(2/pi) * (1 + 3 * 0.044715 * x^2);   dx = dout * dy/dx
@twins()
def _gelu_backward(dout, x, dx):
    k0 = x.dtype.type(-2.0 * _SQRT_2_OVER_PI)
    k1 = x.dtype.type(_COEF)
    k2 = x.dtype.type(2.0 * _SQRT_2_OVER_PI)
    k3 = x.dtype.type(3.0 * _COEF)
    one, lim = x.dtype.type(1.0), x.dtype.type(20.0)
    for i in prange(x.size):
        xi = x[i]
        s = one / (one + exp(k0 * (xi + k1 * xi * xi * xi)))
        # beyond |x| = 20 the second term is below 1e-250 (0 in float32): clamping x there
        # changes nothing visible and keeps x^2 from overflowing (inf * 0 = nan) for huge |x|
        xc = min(max(xi, -lim), lim)
        two_du = k2 * (one + k3 * xc * xc)  # 2 * du/dx
        dx[i] = dout[i] * (s + xc * s * (one - s) * two_du)


def gelu_backward(dout, x, out=None):
    """Gradient of gelu_forward: dout, x (same shape) -> dx.

    out: an optional array of x's shape and dtype to write dx into (and return); it may be dout.
    """
    dout = as_float_array(dout, "dout")
    x = as_float_array(x, "x")
    check_same(dout, x, "dout", "x")
    dx = output_array(out, x)
    _gelu_backward(dout.ravel(), x.ravel(), dx.ravel(), work=x.size)
    return dx
