"""Token and position embeddings: a table lookup forward, a scatter-add backward."""
from typing import NamedTuple

from scratchgpt.arrays import array_module


class EmbeddingCache(NamedTuple):
    ids: object      # (B, T) the token ids that were looked up
    shape: tuple     # (V, C) the table's shape


def embedding_forward(ids, weight):
    """out[b, t] = weight[ids[b, t]]   (B, T) ids, (V, C) table -> (B, T, C)"""
    return weight[ids], EmbeddingCache(ids, weight.shape)


def embedding_backward(dout, cache, out=None):
    """dweight[v] = sum of dout[b, t] over every (b, t) with ids[b, t] == v.

    A token id that appears several times collects the gradient of every appearance,
    so this is a scatter-*add* (`add.at`), not an assignment (which would keep only one).
    out: an optional (V, C) array, e.g. the model's gradient of the table, to add into (and
    return) instead of a new zero table.
    """
    ids, shape = cache
    xp = array_module(dout)
    if out is None:
        out = xp.zeros(shape, dtype=dout.dtype)                 # (V, C)
    elif tuple(out.shape) != tuple(shape):
        raise ValueError(f"out has shape {tuple(out.shape)}, the embedding table is {tuple(shape)}")
    xp.add.at(out, ids.reshape(-1), dout.reshape(-1, shape[1]))  # (B*T, C) rows into (V, C)
    return out


def position_embedding_forward(T, weight, start=0):
    """out[t] = weight[start + t] for t < T   (context_length, C) -> (T, C), broadcast over the batch

    start > 0 places the tokens after `start` earlier ones (generation with a KV cache)."""
    return weight[start:start + T], (start, T)


def position_embedding_backward(dout, cache, out=None):
    """dweight[start + t] = sum over the batch of dout[:, t]; the other rows get no gradient.

    out: the (context_length, C) gradient to add into; without it only the (T, C) rows that
    got a gradient are returned."""
    start, T = cache
    d = dout.reshape(-1, T, dout.shape[-1]).sum(axis=0)          # (B, T, C) -> (T, C)
    if out is None:
        return d
    out[start:start + T] += d
    return out
