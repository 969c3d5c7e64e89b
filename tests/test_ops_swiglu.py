"""ops/swiglu.py (SiLU and the SwiGLU feed-forward) against torch autograd."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import assert_close
from ops_helpers import DTYPES, randn, tt
from scratchgpt.ops.swiglu import silu_backward, silu_forward, swiglu_backward, swiglu_forward

rng = np.random.default_rng(3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_matches_torch_including_large_inputs(dtype):
    x = np.concatenate([randn(rng, 50), [-800.0, -40.0, 0.0, 40.0, 800.0]]).astype(dtype)
    out, cache = silu_forward(x)
    dout = randn(rng, *x.shape, dtype=dtype)
    dx = silu_backward(dout, cache)
    xt = tt(x)
    ref = F.silu(xt)
    ref.backward(torch.tensor(dout, dtype=torch.float64))
    assert np.isfinite(out).all() and np.isfinite(dx).all()
    assert_close(out, ref, dtype, "forward")
    assert_close(dx, xt.grad, dtype, "dx")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,T,C,Fh", [(1, 1, 3, 5), (2, 6, 8, 12)])
def test_swiglu_matches_torch(dtype, B, T, C, Fh):
    x = randn(rng, B, T, C, dtype=dtype)
    w_gate, w_up, w_down = (randn(rng, C, Fh, dtype=dtype), randn(rng, C, Fh, dtype=dtype),
                            randn(rng, Fh, C, dtype=dtype))
    out, cache = swiglu_forward(x, w_gate, w_up, w_down)
    dout = randn(rng, B, T, C, dtype=dtype)
    dx, (dw_gate, dw_up, dw_down) = swiglu_backward(dout, cache)
    xt, gt, ut, dt = tt(x), tt(w_gate), tt(w_up), tt(w_down)
    ref = (F.silu(xt @ gt) * (xt @ ut)) @ dt
    ref.backward(torch.tensor(dout, dtype=torch.float64))
    assert_close(out, ref, dtype, "forward")
    for ours, t, what in [(dx, xt, "dx"), (dw_gate, gt, "dw_gate"), (dw_up, ut, "dw_up"), (dw_down, dt, "dw_down")]:
        assert_close(ours, t.grad, dtype, what)


def test_swiglu_adds_into_given_gradient_buffers():
    C, Fh = 4, 6
    x = randn(rng, 2, 3, C)
    ws = [randn(rng, C, Fh), randn(rng, C, Fh), randn(rng, Fh, C)]
    out, cache = swiglu_forward(x, *ws)
    dout = randn(rng, *out.shape)
    _, fresh = swiglu_backward(dout, cache)
    bufs = [np.ones_like(w) for w in ws]
    _, added = swiglu_backward(dout, cache, dw_out=bufs)
    for f, a, b in zip(fresh, added, bufs):
        assert a is b
        np.testing.assert_allclose(a, f + 1.0, rtol=1e-12)
