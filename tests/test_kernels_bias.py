"""kernels/bias.py: the linear layer's bias added into the product (forward) and summed over
rows (backward), against NumPy and torch; every test runs with the serial and the parallel twin."""
import numba
import numpy as np
import pytest
import torch

import scratchgpt.kernels as K
from scratchgpt.kernels import bias as kbias

pytestmark = pytest.mark.usefixtures("kernel_threads")
TOL = {np.float64: 1e-14, np.float32: 1e-6}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (130, 77), (2048, 64)])
def test_add_bias_adds_b_to_every_row_in_place(shape, dtype):
    rng = np.random.default_rng(1)
    y = rng.standard_normal(shape).astype(dtype)
    b = rng.standard_normal(shape[1]).astype(dtype)
    want = y + b
    got = K.add_bias(y, b)
    assert got is y                                        # in place
    np.testing.assert_array_equal(y, want)                 # one addition per element: exact


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(1, 3), (5, 7), (63, 2), (64, 9), (1001, 37), (0, 4)])
def test_bias_grad_is_the_sum_over_rows_as_torch_computes_it(shape, dtype):
    rng = np.random.default_rng(2)
    dout = rng.standard_normal(shape).astype(dtype)
    b = torch.zeros(shape[1], dtype=torch.float64, requires_grad=True)
    (torch.zeros(shape, dtype=torch.float64) + b).backward(torch.from_numpy(dout.astype(np.float64)))
    want = b.grad.numpy()
    got = K.bias_grad(dout)
    assert got.dtype == dtype and got.shape == (shape[1],)
    err = np.abs(got - want).max(initial=0.0) / max(np.abs(want).max(initial=0.0), 1e-300)
    assert err <= TOL[dtype], err


def test_bias_grad_is_the_same_bits_with_one_thread_or_all():
    rng = np.random.default_rng(3)
    dout = rng.standard_normal((1001, 37)).astype(np.float32) * 1e3
    before = numba.get_num_threads()
    try:
        results = []
        for n in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(n)
            results.append(K.bias_grad(dout))
    finally:
        numba.set_num_threads(before)
    for got in results[1:]:
        np.testing.assert_array_equal(got, results[0])


def test_the_chunks_cover_every_row_once():
    """Chunk boundaries k N / n_chunks: rows counted once whether N is below, at or above the
    number of chunks (an off-by-one would drop or double a row: all ones make it visible)."""
    for n in (1, kbias._N_CHUNKS - 1, kbias._N_CHUNKS, kbias._N_CHUNKS + 1, 1000):
        np.testing.assert_array_equal(K.bias_grad(np.ones((n, 3))), [n, n, n])


def test_bad_inputs_are_refused():
    y = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match=r"\(3,\) float32"):
        K.add_bias(y, np.zeros(4, np.float32))
    with pytest.raises(ValueError, match=r"\(3,\) float32"):
        K.add_bias(y, np.zeros(3, np.float64))
    with pytest.raises(ValueError, match="C-contiguous"):
        K.add_bias(np.zeros((3, 4), np.float32).T, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="2-D"):
        K.add_bias(np.zeros(3, np.float32), np.zeros(3, np.float32))
    with pytest.raises(TypeError, match="float32 or float64"):
        K.bias_grad(np.zeros((2, 3), np.int64))


def test_the_fast_linear_layer_uses_them_on_the_cpu(monkeypatch):
    """FastOps' linear pair on the CPU kernels adds the bias and sums its gradient with these
    kernels (counted), and gives the reference op's numbers."""
    from scratchgpt import ops as reference
    from scratchgpt.kernels.ops import FastOps
    calls = []
    for name in ("add_bias", "bias_grad"):
        fn = getattr(K, name)
        monkeypatch.setattr(K, name, lambda *a, _fn=fn, _name=name: calls.append(_name) or _fn(*a))
    fast = FastOps(K)
    rng = np.random.default_rng(5)
    x, w, b = rng.standard_normal((2, 5, 4)), rng.standard_normal((4, 6)), rng.standard_normal(6)
    dout = rng.standard_normal((2, 5, 6))
    y, cache = fast.linear_forward(x, w, b)
    dx, dw, db = fast.linear_backward(dout, cache)
    y_ref, cache_ref = reference.linear_forward(x, w, b)
    for got, want in zip((y, dx, dw, db), (y_ref, *reference.linear_backward(dout, cache_ref))):
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)
    assert calls == ["add_bias", "bias_grad"]
