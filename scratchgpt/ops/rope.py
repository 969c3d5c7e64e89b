"""Rotary position embeddings (RoPE), as Llama 3 and Qwen3 use them.

Each query and key vector of a head is cut into two halves (x1, x2); pair i = (x1[i], x2[i])
is turned by the angle  pos * inv_freq[i],  inv_freq[i] = base^(-2i / head_dim):

    out = x * cos + rotate_half(x) * sin,     rotate_half(x) = (-x2, x1)

(Hugging Face's "half" layout: the pairs are (i, i + head_dim/2), not neighbours.) A rotation
keeps lengths, and q.k then depends only on the distance between the two positions.
"""
from typing import NamedTuple

import numpy

from scratchgpt.arrays import array_module


class RopeCache(NamedTuple):
    cos: object      # (T, hd) cos(angle) of each position and pair, each half written once
    sin: object      # (T, hd) sin(angle)


def rope_inv_freq(head_dim, base=10_000.0, rope_scaling=None):
    """(head_dim / 2,) float64 frequencies inv_freq[i] = base^(-2i / head_dim).

    rope_scaling: None, or config.json's dict. Llama 3.1+ ("rope_type": "llama3") stretches the
    slow frequencies for a longer context: wavelengths 2 pi / inv_freq above
    original_max_position_embeddings / low_freq_factor are divided by `factor`, those below
    original / high_freq_factor are kept, and the ones between are blended smoothly.
    """
    if head_dim % 2:
        raise ValueError(f"rotary embeddings need an even head_dim, got {head_dim}")
    inv_freq = 1.0 / base ** (numpy.arange(0, head_dim, 2, dtype=numpy.float64) / head_dim)
    kind = (rope_scaling or {}).get("rope_type", (rope_scaling or {}).get("type", "default"))
    if kind == "default":
        return inv_freq
    if kind != "llama3":
        raise ValueError(f"rope_scaling type {kind!r} is not supported: use none or 'llama3'")
    factor, low, high = (float(rope_scaling[k]) for k in ("factor", "low_freq_factor", "high_freq_factor"))
    old_ctx = float(rope_scaling["original_max_position_embeddings"])
    wavelen = 2 * numpy.pi / inv_freq
    scaled = numpy.where(wavelen > old_ctx / low, inv_freq / factor, inv_freq)
    smooth = (old_ctx / wavelen - low) / (high - low)                  # 0 at the slow end, 1 at the fast
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    between = (wavelen >= old_ctx / high) & (wavelen <= old_ctx / low)
    return numpy.where(between, blended, scaled)


def rope_cos_sin(inv_freq, n_positions):
    """cos and sin tables (n_positions, head_dim), float64 on the host: angle pos * inv_freq[i],
    written twice (for the first and the second half of each head)."""
    angles = numpy.arange(n_positions, dtype=numpy.float64)[:, None] * inv_freq[None, :]   # (T, hd/2)
    angles = numpy.concatenate([angles, angles], axis=-1)                                 # (T, hd)
    return numpy.cos(angles), numpy.sin(angles)


def rotate_half(x):
    """(x1, x2) -> (-x2, x1) on the last axis: each pair turned by 90 degrees."""
    xp = array_module(x)
    h = x.shape[-1] // 2
    return xp.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def rope_forward(x, cos, sin):
    """(..., T, hd) queries or keys, (T, hd) tables for their positions -> (..., T, hd) rotated."""
    return x * cos + rotate_half(x) * sin, RopeCache(cos, sin)


def rope_backward(dout, cache):
    """The rotation R is orthogonal, so dx = R^T dout: the inverse rotation, by -angle.

        dx = dout * cos - rotate_half(dout) * sin
    """
    cos, sin = cache
    return dout * cos - rotate_half(dout) * sin
