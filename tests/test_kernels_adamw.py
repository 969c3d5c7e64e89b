"""The fused AdamW kernel (kernels/adamw.py) against the array code in scratchgpt/optim.py and
torch.optim.AdamW: the same update, with decay only on the first n_decay elements."""

import numpy as np
import pytest
import torch

pytest.importorskip("numba")

import scratchgpt.kernels as K  # noqa: E402
from scratchgpt import backend  # noqa: E402
from scratchgpt.optim import AdamW  # noqa: E402

# every test here runs once with the serial and once with the parallel kernels
pytestmark = pytest.mark.usefixtures("kernel_threads")


class Flat:
    """The interface AdamW uses: flat_params, flat_grads, n_decay."""

    def __init__(self, n, n_decay, dtype, seed=0):
        r = np.random.default_rng(seed)
        self.flat_params = r.standard_normal(n).astype(dtype)
        self.flat_grads = np.zeros(n, dtype=dtype)
        self.n_decay = n_decay


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_adamw_kernel_matches_the_array_code_and_torch(dtype, tol):
    n, n_decay = 1000, 600
    a, b = Flat(n, n_decay, dtype), Flat(n, n_decay, dtype)
    opt_a = AdamW(a, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    opt_b = AdamW(b, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    w = torch.tensor(a.flat_params.astype(np.float64))
    t_dec, t_rest = w[:n_decay].clone().requires_grad_(), w[n_decay:].clone().requires_grad_()
    topt = torch.optim.AdamW([{"params": [t_dec], "weight_decay": 0.1},
                              {"params": [t_rest], "weight_decay": 0.0}],
                             lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    r = np.random.default_rng(1)
    try:
        for _ in range(4):
            g = r.standard_normal(n).astype(dtype)
            a.flat_grads[...] = g
            b.flat_grads[...] = g
            backend.use_kernels(True)
            opt_a.step()
            backend.use_kernels(False)
            opt_b.step()
            t_dec.grad = torch.tensor(g[:n_decay].astype(np.float64))
            t_rest.grad = torch.tensor(g[n_decay:].astype(np.float64))
            topt.step()
    finally:
        backend.use_kernels(True)
    want = torch.cat([t_dec, t_rest]).detach().numpy()
    scale = np.abs(want).max()
    assert np.abs(a.flat_params - b.flat_params).max() / scale <= tol
    assert np.abs(a.flat_params - want).max() / scale <= max(tol, 1e-12)
    assert np.abs(opt_a.m - opt_b.m).max() <= tol * np.abs(opt_b.m).max()
    assert np.abs(opt_a.v - opt_b.v).max() <= tol * np.abs(opt_b.v).max()


def test_adamw_kernel_without_decay_leaves_decay_alone_and_checks_its_arguments():
    p = np.ones(8, np.float32)
    g, m, v = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    K.adamw_step(p, g, m, v, t=1, lr=0.1, weight_decay=0.5, n_decay=0)
    np.testing.assert_array_equal(p, 1.0)            # zero gradient, no decay: unchanged
    K.adamw_step(p, g, m, v, t=2, lr=0.1, weight_decay=0.5, n_decay=3)
    np.testing.assert_allclose(p[:3], 0.95, rtol=1e-6)
    np.testing.assert_array_equal(p[3:], 1.0)
    with pytest.raises(ValueError, match="counts from 1"):
        K.adamw_step(p, g, m, v, t=0, lr=0.1)
    with pytest.raises(TypeError, match="float32 but p is float64|p is float32"):
        K.adamw_step(p, g.astype(np.float64), m, v, t=1, lr=0.1)
    with pytest.raises(ValueError, match="n_decay"):
        K.adamw_step(p, g, m, v, t=1, lr=0.1, n_decay=9)
