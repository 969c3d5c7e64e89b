"""SiLU and the SwiGLU feed-forward of Llama 3 and Qwen3.

    silu(x) = x * sigmoid(x)
    ff(x)   = (silu(x @ W_gate) * (x @ W_up)) @ W_down       (gate_proj, up_proj, down_proj)

Weights here are (in, out), as in ops/linear.py; Hugging Face stores them (out, in), so the
model passes transposed views.
"""
from typing import NamedTuple

from scratchgpt.arrays import array_module
from scratchgpt.ops.linear import linear_backward, linear_forward


class SiLUCache(NamedTuple):
    x: object        # the input
    sig: object      # sigmoid(x)


class SwiGLUCache(NamedTuple):
    gate_cache: object   # LinearCache of x @ W_gate
    up_cache: object     # LinearCache of x @ W_up
    silu_cache: object   # SiLUCache of the gate
    act: object          # (B, T, F) silu(gate)
    up: object           # (B, T, F) x @ W_up
    down_cache: object   # LinearCache of (act * up) @ W_down


def silu_forward(x):
    """y = x * sigmoid(x); sigmoid as (1 + tanh(x / 2)) / 2, which never overflows."""
    xp = array_module(x)
    sig = 0.5 * (1.0 + xp.tanh(0.5 * x))
    return x * sig, SiLUCache(x, sig)


def silu_backward(dout, cache):
    """d/dx [x s(x)] = s + x s (1 - s)    ->    dx = dout * s * (1 + x (1 - s))"""
    x, sig = cache
    return dout * sig * (1.0 + x * (1.0 - sig))


def swiglu_forward(x, w_gate, w_up, w_down):
    """(B, T, C) -> (B, T, C) through a hidden width F: w_gate, w_up (C, F), w_down (F, C)."""
    gate, gate_cache = linear_forward(x, w_gate)                 # (B, T, F)
    up, up_cache = linear_forward(x, w_up)                       # (B, T, F)
    act, silu_cache = silu_forward(gate)
    out, down_cache = linear_forward(act * up, w_down)           # (B, T, C)
    return out, SwiGLUCache(gate_cache, up_cache, silu_cache, act, up, down_cache)


def swiglu_backward(dout, cache, dw_out=(None, None, None)):
    """h = silu(gate) * up:   dact = dh * up,  dup = dh * silu(gate),  dgate = silu'(gate) dact;
    dx collects both branches: dx = dgate @ W_gate^T + dup @ W_up^T.

    Returns dx, (dw_gate, dw_up, dw_down); dw_out as in linear_backward (arrays to add into).
    """
    dh, dw_down, _ = linear_backward(dout, cache.down_cache, dw_out[2])   # (B, T, F)
    dgate = silu_backward(dh * cache.up, cache.silu_cache)
    dup = dh * cache.act
    dx, dw_gate, _ = linear_backward(dgate, cache.gate_cache, dw_out[0])
    dx2, dw_up, _ = linear_backward(dup, cache.up_cache, dw_out[1])
    dx += dx2
    return dx, (dw_gate, dw_up, dw_down)
