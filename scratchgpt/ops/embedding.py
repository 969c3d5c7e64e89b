"""Token and position embeddings: a table lookup forward, a scatter-add backward."""
from scratchgpt import backend
from scratchgpt.backend import array_module


def embedding_forward(ids, weight):
    """out[b, t] = weight[ids[b, t]]   (B, T) ids, (V, C) table -> (B, T, C)"""
    return weight[ids], (ids, weight.shape)


def embedding_backward(dout, cache, out=None):
    """dweight[v] = sum of dout[b, t] over every (b, t) with ids[b, t] == v.

    A token id that appears several times collects the gradient of every appearance,
    so this is a scatter-*add*, not an assignment.
    out: an optional (V, C) array, e.g. the model's gradient of the table, to add into (and
    return) instead of a new zero table: only the rows of the ids are touched.
    """
    ids, shape = cache
    if out is None:
        out = array_module(dout).zeros(shape, dtype=dout.dtype)  # (V, C)
    elif tuple(out.shape) != tuple(shape):
        raise ValueError(f"out has shape {tuple(out.shape)}, the embedding table is {tuple(shape)}")
    _scatter_add(out, ids.reshape(-1), dout.reshape(-1, shape[1]))
    return out


def _scatter_add(target, rows, values):
    """target[rows[n]] += values[n] for every n, repeated rows adding up."""
    if array_module(target).__name__ == "cupy":
        import cupyx
        cupyx.scatter_add(target, rows, values)
        return
    k = backend.fused(target)
    if k is not None and target.flags.c_contiguous and target.dtype == values.dtype:
        k.embedding_backward(values, rows, out=target)       # one loop; np.add.at is ~80x slower
    else:
        import numpy
        numpy.add.at(target, rows, values)


def position_embedding_forward(T, weight):
    """out[t] = weight[t] for t < T   (context_length, C) -> (T, C), broadcast over the batch"""
    return weight[:T], T


def position_embedding_backward(dout, cache, context_length):
    """dweight[t] = sum over the batch of dout[:, t]; rows t >= T get no gradient."""
    T = cache
    xp = array_module(dout)
    dweight = xp.zeros((context_length, dout.shape[-1]), dtype=dout.dtype)
    dweight[:T] = dout.reshape(-1, T, dout.shape[-1]).sum(axis=0)   # (B, T, C) -> (T, C)
    return dweight
