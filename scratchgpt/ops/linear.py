"""Linear layer y = x @ W + b, with W stored (in, out) as in GPT-2's checkpoints."""


def linear_forward(x, w, b=None):
    """(..., in) @ (in, out) + (out,) -> (..., out)"""
    out = x @ w
    if b is not None:
        out += b
    return out, (x, w, b is not None)


def linear_backward(dout, cache):
    """dx = dout @ W^T,   dW = x^T @ dout,   db = sum of dout over all rows.

    Returns (dx, dw, db); db is None when the forward had no bias.
    """
    x, w, has_bias = cache
    dout2 = dout.reshape(-1, dout.shape[-1])           # (N, out)
    x2 = x.reshape(-1, x.shape[-1])                    # (N, in)
    dx = (dout2 @ w.T).reshape(x.shape)                # (N, out) @ (out, in) -> (..., in)
    if w.flags.f_contiguous and not w.flags.c_contiguous:
        # w is a transposed view (the tied head's wte.T): give dw the same layout, so that adding
        # it into the gradient of the (out, in) table runs over contiguous memory
        dw = (dout2.T @ x2).T                          # (out, N) @ (N, in) -> (in, out) view
    else:
        dw = x2.T @ dout2                              # (in, N) @ (N, out) -> (in, out)
    db = dout2.sum(axis=0) if has_bias else None       # (out,)
    return dx, dw, db
