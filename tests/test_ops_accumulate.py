"""The accumulating forms of two backward ops: linear_backward(..., dw_out=G) adds dW into G and
embedding_backward(..., out=G) adds dweight into G, each equal to G + the returned gradient."""

import functools

import numpy as np
import pytest

from scratchgpt import ops

DTYPES = [np.float64, np.float32]


def use_block(monkeypatch, block):
    """Make linear_backward's dW blocks `block` elements (the module attribute is replaced, so
    this also holds when a mutation tool wraps the function)."""
    monkeypatch.setattr(ops.linear, "_add_xt_dout", functools.partial(ops.linear._add_xt_dout, block=block))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("block", [1 << 21, 7])               # one block, and many small ones
def test_linear_backward_adds_dw_into_dw_out(dtype, transposed, block, monkeypatch):
    r = np.random.default_rng(0)
    x = r.standard_normal((2, 5, 6)).astype(dtype)
    dout = r.standard_normal((2, 5, 9)).astype(dtype)
    table = r.standard_normal((9, 6)).astype(dtype)
    w = table.T if transposed else r.standard_normal((6, 9)).astype(dtype)   # the tied head: wte.T
    _, cache = ops.linear_forward(x, w)
    dx, dw, _ = ops.linear_backward(dout, cache)
    g0 = r.standard_normal((9, 6) if transposed else (6, 9)).astype(dtype)
    g = g0.copy()
    target = g.T if transposed else g
    use_block(monkeypatch, block)
    dx2, dw2, _ = ops.linear_backward(dout, cache, dw_out=target)
    assert dw2 is target
    np.testing.assert_array_equal(dx2, dx)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(target, (g0.T if transposed else g0) + dw, rtol=tol, atol=tol)
    with pytest.raises(ValueError, match="dw_out has shape"):
        ops.linear_backward(dout, cache, dw_out=np.zeros((6, 8), dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_backward_adds_into_out(dtype, kernels):
    r = np.random.default_rng(0)
    ids = np.array([[1, 3, 1], [0, 3, 3]])
    dout = r.standard_normal((2, 3, 4)).astype(dtype)
    _, cache = ops.embedding_forward(ids, np.zeros((5, 4), dtype))
    dw = ops.embedding_backward(dout, cache)
    g0 = r.standard_normal((5, 4)).astype(dtype)
    g = g0.copy()
    assert ops.embedding_backward(dout, cache, out=g) is g
    np.testing.assert_allclose(g, g0 + dw, rtol=1e-6)
    np.testing.assert_array_equal(g[[2, 4]], g0[[2, 4]])        # rows of unseen ids untouched
    with pytest.raises(ValueError, match="out has shape"):
        ops.embedding_backward(dout, cache, out=np.zeros((4, 4), dtype))


class BlockRecorder(np.ndarray):
    """An array that notes the shape and memory layout of every block written into it."""
    writes = []

    def __setitem__(self, key, value):
        block = np.asarray(self)[key]
        BlockRecorder.writes.append((block.shape, block.flags.c_contiguous))
        super().__setitem__(key, value)


@pytest.mark.parametrize("shape,block", [((6, 9), 7), ((6, 9), 20), ((9, 6), 20), ((5, 1), 4), ((5, 1), 1)])
@pytest.mark.parametrize("transposed", [False, True])
def test_linear_backward_adds_dw_in_blocks_of_whole_rows_in_memory_order(shape, block, transposed, monkeypatch):
    """_add_xt_dout's promise: dW is added a block of rows at a time, each block contiguous in
    memory (a transposed gradient, as the tied head's, is walked in its own memory order) and
    as many rows as fit in `block` elements (at least one row), so no temporary is larger."""
    r = np.random.default_rng(1)
    d_in, d_out = shape
    x, dout = r.standard_normal((2, 3, d_in)), r.standard_normal((2, 3, d_out))
    _, cache = ops.linear_forward(x, r.standard_normal((d_in, d_out)))
    g = np.zeros((d_out, d_in) if transposed else (d_in, d_out)).view(BlockRecorder)
    target = g.T if transposed else g
    use_block(monkeypatch, block)
    BlockRecorder.writes = []
    ops.linear_backward(dout, cache, dw_out=target)
    np.testing.assert_allclose(np.asarray(target), x.reshape(-1, d_in).T @ dout.reshape(-1, d_out), rtol=1e-12)
    walked = target if target.flags.c_contiguous else g     # rows of whichever is laid out row by row
    rows_total, cols = walked.shape
    per_block = max(1, block // cols)                       # the most whole rows within `block`
    want = [min(per_block, rows_total - i) for i in range(0, rows_total, per_block)]
    assert [s for s, _ in BlockRecorder.writes] == [(n, cols) for n in want]
    assert all(contiguous for _, contiguous in BlockRecorder.writes)
