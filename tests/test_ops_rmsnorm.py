"""ops/rmsnorm.py against torch autograd (float64 <= 1e-9, float32 <= 1e-4)."""
import numpy as np
import pytest
import torch

from conftest import assert_close
from ops_helpers import DTYPES, randn, tt
from scratchgpt.ops.rmsnorm import rmsnorm_backward, rmsnorm_forward

rng = np.random.default_rng(1)


def torch_rmsnorm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 5, 8), (3, 4, 7, 16)])   # the last one: per-head QK-norm
@pytest.mark.parametrize("eps", [1e-5, 1e-6])
def test_rmsnorm_matches_torch(dtype, shape, eps):
    x, w = randn(rng, *shape, dtype=dtype), randn(rng, shape[-1], dtype=dtype)
    out, cache = rmsnorm_forward(x, w, eps)
    dout = randn(rng, *shape, dtype=dtype)
    dx, dw = rmsnorm_backward(dout, cache)
    xt, wt = tt(x), tt(w)
    ref = torch_rmsnorm(xt, wt, eps)
    ref.backward(torch.tensor(dout, dtype=torch.float64))
    assert out.dtype == dx.dtype == dw.dtype == dtype
    assert_close(out, ref, dtype, "forward")
    if shape[-1] > 1 or dtype == np.float64:
        assert_close(dx, xt.grad, dtype, "dx")
    else:   # C = 1: dx = w g rstd (1 - x^2 rstd^2) = w g eps rstd^3, a difference of two terms equal
            # to ~1e-5 relative, which float32 cannot resolve; compare against the size of those terms
        np.testing.assert_allclose(dx, xt.grad.numpy(), atol=1e-4 * np.abs(dout * w / np.abs(x)).max())
    assert_close(dw, wt.grad, dtype, "dweight")


def test_rmsnorm_does_not_subtract_the_mean():
    x = np.array([[1.0, 2.0, 3.0]])
    out, cache = rmsnorm_forward(x, np.ones(3), eps=0.0)
    np.testing.assert_allclose(out, x / np.sqrt(14 / 3), rtol=1e-15)
    assert cache.rstd.shape == (1, 1)


def test_rmsnorm_eps_defaults_to_llama_3s_1e_5():
    x = np.array([[0.01, -0.02, 0.005]])                  # mean square 1.75e-4: eps shows at 1e-2 relative
    out, _ = rmsnorm_forward(x, np.ones(3))
    np.testing.assert_allclose(out, x / np.sqrt((x ** 2).mean() + 1e-5), rtol=1e-14)
