"""Causal softmax over attention scores, forward and backward, fused with numba.

The scores come as (N, T, T) with N = batch * heads. Row t of each matrix may only look at
keys 0..t, so the forward reads and exponentiates only that causal part of x and writes exact
zeros above the diagonal: no -inf mask array is built, and half the exponentials are skipped.
Each (matrix, row) pair is independent, so the outer loop runs in parallel over all N*T rows.

Speed notes. Every pass over a row is its own simple loop (max, exp, sum, scale) so that each
one vectorizes. The last pass of each kernel runs over the whole row, j = 0..T-1, and picks
0.0 above the diagonal (`v if j <= t else zero`, a SIMD select): a loop of fixed length T runs
about twice as fast as T loops of lengths 1..T, each with its own ragged end. That pass does
load entries above the diagonal (of y's own buffer in the forward, of dy and y in the
backward), but only to discard them: whatever they hold, nan included, cannot reach a result.
"""

from numba import prange

from ._common import as_float_array, check_same, output_array, twins
from ._vmath import exp, row_max


# y[t, j] = exp(x[t, j] - m) / sum_{k<=t} exp(x[t, k] - m)   for j <= t,   m = max_{k<=t} x[t, k]
# y[t, j] = 0                                                for j > t
@twins()
def _causal_softmax_forward(x, y):
    N, T, _ = x.shape
    for r in prange(N * T):
        n, t = r // T, r % T
        row, out = x[n, t], y[n, t]  # (T,), (T,)
        m = row_max(row, t + 1)  # (a nan still reaches y through exp)
        for j in range(t + 1):
            out[j] = exp(row[j] - m)
        s = 0.0  # float64 accumulator, also for float32 inputs
        for j in range(t + 1):
            s += out[j]
        inv_s = x.dtype.type(1.0 / s)
        zero = x.dtype.type(0.0)
        for j in range(T):  # whole row, see the module notes
            v = out[j] * inv_s
            out[j] = v if j <= t else zero


def causal_softmax_forward(x, out=None):
    """Causal softmax of attention scores x (N, T, T) -> y (N, T, T), zeros above the diagonal.

    out: an optional (N, T, T) array to write y into (and return), e.g. a buffer reused
    across steps. It may be x itself; that works, but the row loops then lose SIMD (~2x slower).
    """
    x = as_float_array(x, "x", ndim=3)
    if x.shape[1] != x.shape[2]:
        raise ValueError(f"x must be (N, T, T) attention scores, got shape {x.shape}")
    y = output_array(out, x)
    if x.size:
        _causal_softmax_forward(x, y, work=x.size)
    return y


# dx[t, j] = y[t, j] * (dy[t, j] - sum_{k<=t} dy[t, k] * y[t, k])   for j <= t
# dx[t, j] = 0                                                      for j > t
@twins()
def _causal_softmax_backward(dy, y, dx):
    N, T, _ = y.shape
    for r in prange(N * T):
        n, t = r // T, r % T
        g, p, out = dy[n, t], y[n, t], dx[n, t]  # (T,) each
        s = 0.0  # float64 accumulator, also for float32 inputs
        for j in range(t + 1):
            s += g[j] * p[j]
        s = y.dtype.type(s)
        zero = y.dtype.type(0.0)
        for j in range(T):  # whole row, see the module notes
            v = p[j] * (g[j] - s)
            out[j] = v if j <= t else zero


def causal_softmax_backward(dy, y, out=None):
    """Gradient of causal_softmax_forward: dy, y (N, T, T) -> dx (N, T, T), zeros above the diagonal.

    out: an optional (N, T, T) array to write dx into (and return). It may be dy itself;
    that works, but the row loops then lose SIMD (~2x slower).
    """
    dy = as_float_array(dy, "dy", ndim=3)
    y = as_float_array(y, "y", ndim=3)
    check_same(dy, y, "dy", "y")
    if y.shape[1] != y.shape[2]:
        raise ValueError(f"y must be (N, T, T) attention weights, got shape {y.shape}")
    dx = output_array(out, y)
    if y.size:
        _causal_softmax_backward(dy, y, dx, work=y.size)
    return dx
