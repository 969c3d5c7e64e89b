"""One AdamW step over flat parameter, gradient and moment buffers, fused with numba.

The NumPy version in scratchgpt/optim.py makes about a dozen passes over buffers as large as the
model (124M floats for GPT-2, 500 MB each), so its time goes to memory traffic. Here each
element is read once (p, g, m, v) and written once (p, m, v), in parallel over the buffer:

    m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
    p <- p * (1 - lr * wd)                                  only for elements i < n_decay
    p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

The same formula, in the buffers' dtype, as the NumPy version (and as torch.optim.AdamW); the
results can differ from it in the last bit, since here a * b + c may round once (fused).
"""

import math

import numpy as np
from numba import prange

from ._common import KERNEL_OPTIONS, as_float_array, check_same, twins

OPTIONS = dict(KERNEL_OPTIONS, fastmath={"reassoc", "contract"})


@twins(OPTIONS)
def _adamw_step(p, g, m, v, n_decay, decay, b1, b2, step_size, inv_sqrt_bc2, eps):
    one = p.dtype.type(1.0)
    c1, c2 = one - b1, one - b2
    for i in prange(p.size):
        gi = g[i]
        mi = b1 * m[i] + c1 * gi
        vi = b2 * v[i] + c2 * (gi * gi)
        m[i] = mi
        v[i] = vi
        pi = p[i] * (decay if i < n_decay else one)
        p[i] = pi - step_size * (mi / (np.sqrt(vi) * inv_sqrt_bc2 + eps))


def adamw_step(p, g, m, v, t, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, n_decay=0):
    """Update the 1-D buffers p, m, v in place with gradient g, for step number t (1, 2, ...).

    Weight decay (decoupled, lr * weight_decay) applies to p[:n_decay] only.
    """
    for name, a in (("p", p), ("g", g), ("m", m), ("v", v)):
        if not isinstance(a, np.ndarray) or a.ndim != 1 or not a.flags.c_contiguous:
            raise ValueError(f"{name} must be a 1-D C-contiguous array, got {type(a).__name__} "
                             f"{getattr(a, 'shape', '')}")
    as_float_array(p, "p")
    for name, a in (("g", g), ("m", m), ("v", v)):
        check_same(a, p, name, "p")
    if not 0 <= n_decay <= p.size:
        raise ValueError(f"n_decay must be in [0, {p.size}], got {n_decay}")
    if t < 1:
        raise ValueError(f"the step number t counts from 1, got {t}")
    f = p.dtype.type
    b1, b2 = betas
    _adamw_step(p, g, m, v, int(n_decay), f(1.0 - lr * weight_decay), f(b1), f(b2),
                f(lr / (1.0 - b1 ** t)), f(1.0 / math.sqrt(1.0 - b2 ** t)), f(eps), work=p.size)
