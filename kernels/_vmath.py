"""exp and fmax for numba loops that should vectorize (run 8-16 elements per instruction).

numba compiles `np.exp` to a call of the C library's scalar exp, one element at a time (it has
no vector math library here), while NumPy's own exp works on 8-16 elements per instruction.
The exp below is built from +, *, floor and a bit cast only, so LLVM vectorizes the loops that
call it. It is the textbook recipe, in the dtype of its argument:

    x = n * ln2 + r,   n = round(x / ln2),  |r| <= ln2 / 2
    exp(x) = 2^n * exp(r),   exp(r) = 1 + r + r^2/2! + ... + r^d/d!   (d = 7 float32, 13 float64)

and 2^n is written directly as the bits of a float (exponent field n + bias). ln2 is split
into a short `hi` part (n * hi is exact) and a `lo` correction, so r keeps its precision.
Measured error: under 1 ulp (np.exp: up to 1.7 ulp in float32). Results that would be subnormal come out 0 (below
exp(-87.3) ~ 1.2e-38 in float32, exp(-708.4) ~ 2.2e-308 in float64); results above 2^127.49
(x > 88.37, float32) or 2^1023.49 (x > 709.1, float64) come out inf, a little before the true
overflow. exp(-inf) = 0, exp(inf) = inf, exp(nan) = nan. The kernels here only call it where
that cannot matter: on x - max(x) <= 0 (softmax, cross-entropy) and in a sigmoid (GELU).

fmax(a, b) is LLVM's `llvm.maxnum`, C's fmax: the larger of a and b, and the other one if either
is nan. A `max(m, x[j])` loop in numba stays one element at a time. row_max(x, L), the max of
x[:L] that softmax subtracts, is an fmax loop compiled with the "nnan" fast-math flag as well:
LLVM only turns a maxnum loop into a SIMD reduction (4x faster on rows of 64) when told that no
nan comes in. One may: the SIMD max then returns one of the other values, and the nan still
reaches the output through exp(nan - max) = nan (tested). The flag is confined to this small
function (numba compiles it separately; LLVM inlines it with its flags per instruction).

numba's on-disk cache only watches the file of the function it compiled: after editing this
file, delete the kernels' cached *.nbi/*.nbc files (or NUMBA_CACHE_DIR) so they recompile.
"""

import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba import njit
from numba.extending import intrinsic, overload


@intrinsic
def _float_from_bits(typingctx, bits):
    """Reinterpret the bits of an int32 as a float32, or of an int64 as a float64."""
    if bits == types.int32:
        sig = types.float32(types.int32)
    elif bits == types.int64:
        sig = types.float64(types.int64)
    else:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(signature.return_type))

    return sig, codegen


@intrinsic
def fmax(typingctx, a, b):
    """The larger of two floats of the same type, ignoring a nan (C's fmax)."""
    if not isinstance(a, types.Float) or a != b:
        return None

    def codegen(context, builder, signature, args):
        ty = context.get_value_type(signature.return_type)
        name = "llvm.maxnum.f32" if ty == ir.FloatType() else "llvm.maxnum.f64"
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ty, [ty, ty]), name)
        return builder.call(fn, args)

    return a(a, b), codegen


def exp(x):
    """exp of a float32 or float64 scalar; inside numba code, the vectorizable version below."""
    return np.exp(x)


def _make_exp(ftype, itype, degree, ln2_hi, ln2_lo, mantissa_bits, bias):
    one, half = ftype(1.0), ftype(0.5)
    log2e = ftype(1.0 / math.log(2.0))
    hi, lo = ftype(ln2_hi), ftype(ln2_lo)
    coefs = tuple(ftype(1.0 / math.factorial(k)) for k in range(degree, 1, -1))  # 1/d!, ..., 1/2!
    x_min = ftype(math.log(2.0) * (1 - bias))        # n stays in [1 - bias, bias], 2^n a normal float,
    x_max = ftype(math.log(2.0) * (bias + 0.49))     # for x in [x_min, x_max]
    fbias = ftype(bias)
    scale = ftype(2.0 ** mantissa_bits)              # (n + bias) * 2^mantissa_bits = bits of 2^n
    zero, inf = ftype(0.0), ftype(np.inf)

    def exp_impl(x):
        xc = min(max(x, x_min), x_max)
        n = np.floor(xc * log2e + half)
        r = (xc - n * hi) - n * lo                   # |r| <= ln2/2
        p = coefs[0]
        for c in coefs[1:]:
            p = p * r + c                            # Horner: 1/2! + r/3! + ... + r^(d-2)/d!
        e = (p * r) * r + r + one                    # exp(r)
        two_n = _float_from_bits(itype((n + fbias) * scale))
        y = e * two_n
        if x < x_min:
            y = zero
        if x > x_max:
            y = inf
        return y if x == x else x                    # nan stays nan

    return exp_impl


_exp32 = _make_exp(np.float32, np.int32, 7, 0.693359375, -2.12194440e-4, 23, 127)
_exp64 = _make_exp(np.float64, np.int64, 13, 0.693145751953125, 1.42860682030941723212e-6, 52, 1023)


@overload(exp)
def _exp_overload(x):
    if x == types.float32:
        return _exp32
    if x == types.float64:
        return _exp64
    return None


@njit(fastmath={"nnan", "reassoc"}, error_model="numpy", cache=True)
def row_max(x, L):
    """max(x[0], ..., x[L - 1]) for L >= 1, as a SIMD reduction (see the notes above on nan)."""
    m = x[0]
    for j in range(1, L):
        m = fmax(m, x[j])
    return m
