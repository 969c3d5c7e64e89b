"""The gradient checks themselves: conftest's relative error keeps its stated bounds on small
gradients, LayerNorm of a single channel (whose exact gradients are zero) is checked on its
own scale, and central finite differences check the whole model's backward entry by entry."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import scratchgpt as sg
from conftest import TOL, rel_err
from scratchgpt import backend, ops


def test_rel_err_scales_by_the_references_own_size_however_small():
    ref = np.array([3e-4, -1e-4, 2e-4])                  # LayerNorm-sized gradients
    ours = ref * (1 + 2e-4)                               # 2e-4 off: beyond float32's 1e-4
    assert rel_err(ours, ref) == pytest.approx(2e-4, rel=1e-6)
    assert rel_err(ours, ref) > TOL[np.float32]
    assert rel_err(ref * 1e-12, ref * 1e-12 * (1 + 1e-6)) == pytest.approx(1e-6, rel=1e-3)
    assert rel_err(np.array([1e-20, 0.0]), np.zeros(2)) == 1e-20      # all-zero reference: absolute
    assert rel_err(np.zeros(0), np.zeros(0)) == 0.0


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_layernorm_of_one_channel_has_zero_dx_and_dweight(kernels, dtype):
    """With C = 1, x - mean(x) = 0 exactly, so dx = 0 and dweight = 0 exactly; the reference's
    own values there are rounding noise (torch gives ~1e-14), so each side is checked against
    the size these gradients would have without the cancellation: |dout| |w| rstd and |dout| |x|."""
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((3, 4, 1)) * 3 + 1).astype(dtype)
    w, b = rng.standard_normal(1).astype(dtype), rng.standard_normal(1).astype(dtype)
    dout = rng.standard_normal((3, 4, 1)).astype(dtype)
    chosen = backend.ops                                     # the reference ops, or the fast ones
    out, cache = chosen.layernorm_forward(x, w, b)
    dx, dw, db = chosen.layernorm_backward(dout, cache)
    rstd = 1 / np.sqrt(1e-5)
    xt, wt, bt = (torch.tensor(a.astype(np.float64), requires_grad=True) for a in (x, w, b))
    ref = F.layer_norm(xt, (1,), wt, bt, eps=1e-5)
    ref.backward(torch.tensor(dout, dtype=torch.float64))
    tol = TOL[np.dtype(dtype).type]
    assert rel_err(out, ref) <= tol and rel_err(db, bt.grad) <= tol
    dx_scale = np.abs(dout).max() * np.abs(w).max() * rstd
    dw_scale = np.abs(dout).sum() * np.abs(x).max()
    for ours, theirs, scale in ((dx, xt.grad, dx_scale), (dw, wt.grad, dw_scale)):
        assert np.abs(ours).max() <= tol * scale
        assert theirs.abs().max().item() <= tol * scale


def test_finite_differences_agree_with_the_backward_entry_by_entry():
    """Central differences (h = 1e-5, float64) against model.backward(): the largest entries of
    each parameter's gradient and a few random ones must agree to 1e-6 relative + 1e-9 absolute.
    The absolute part is the differences' own noise (about eps * |loss| / h = 5e-11, and
    h^2 * f''' truncation); a 1% error on any entry above 1e-7 exceeds the bound."""
    cfg = sg.GPTConfig(vocab_size=11, context_length=8, emb_dim=12, n_heads=3, n_layers=2, qkv_bias=True)
    model = sg.GPTModel(cfg, seed=1, dtype="float64")
    r = np.random.default_rng(1)
    idx, tgt = r.integers(0, 11, (2, 6)), r.integers(0, 11, (2, 6))
    model.loss(idx, tgt)
    model.zero_grad()
    model.backward()
    grads = {k: np.array(v) for k, v in model.grads().items()}
    h, checked = 1e-5, 0
    for name, g in grads.items():
        p = model.params[name]
        if name == "transformer.wpe.weight":
            g = g[:6]                                        # only rows < T take part
        largest = np.argsort(-np.abs(g), axis=None)[:3]
        picks = list(largest) + list(r.integers(0, g.size, 2))
        for flat in picks:
            i = np.unravel_index(flat, g.shape)
            old = p[i]
            p[i] = old + h
            up = model.loss(idx, tgt)
            p[i] = old - h
            down = model.loss(idx, tgt)
            p[i] = old
            numeric = (up - down) / (2 * h)
            assert abs(numeric - grads[name][i]) <= 1e-6 * abs(numeric) + 1e-9, (name, i, numeric, grads[name][i])
            checked += 1
    assert checked == 5 * len(grads)


def test_multihead_attention_forward_applies_its_dropout():
    """The chapter-3 wrapper passes drop_rate and the generator to the attention core."""
    from scratchgpt.rng import DropoutRNG
    r = np.random.default_rng(8)
    B, T, C, H = 2, 5, 8, 2
    x = r.standard_normal((B, T, C))
    wa, ba, wp, bp = r.standard_normal((C, 3 * C)), r.standard_normal(3 * C), r.standard_normal((C, C)), r.standard_normal(C)
    out, _ = ops.multihead_attention_forward(x, wa, ba, wp, bp, H, drop_rate=0.5, rng=DropoutRNG(3))
    qkv, _ = ops.linear_forward(x, wa, ba)
    y, _ = ops.attention_forward(qkv, H, 0.5, DropoutRNG(3))
    np.testing.assert_array_equal(out, ops.linear_forward(y, wp, bp)[0])
    plain, _ = ops.multihead_attention_forward(x, wa, ba, wp, bp, H)
    assert not np.allclose(out, plain)                      # dropout did something
    np.testing.assert_array_equal(plain, ops.linear_forward(ops.attention_forward(qkv, H)[0], wp, bp)[0])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cross_entropy_is_stable_for_huge_logits_of_different_rows(ops_kind, dtype):
    """Each row is shifted by its own max before exp: rows at +-1000 (float32: +-80) neither
    overflow nor lose the smaller row, and loss and gradient match torch."""
    chosen = backend.ops
    big = 1000.0 if dtype == np.float64 else 80.0
    r = np.random.default_rng(9)
    logits = (r.standard_normal((2, 3, 5)) + np.array([big, -big])[:, None, None]).astype(dtype)
    targets = r.integers(0, 5, (2, 3))
    loss, cache = chosen.cross_entropy_forward(logits, targets)
    dlogits = chosen.cross_entropy_backward(1.0, cache)
    lt = torch.tensor(logits.astype(np.float64), requires_grad=True)
    ref = F.cross_entropy(lt.reshape(-1, 5), torch.tensor(targets).reshape(-1))
    ref.backward()
    assert np.isfinite(loss)
    assert rel_err(np.array(loss), ref) <= TOL[dtype]
    assert rel_err(dlogits, lt.grad) <= TOL[dtype]


@pytest.fixture(params=["reference", "fast"])
def ops_kind(request):
    was_on = backend.ops is not ops
    backend.use_kernels(request.param == "fast")
    yield request.param
    backend.use_kernels(was_on)


def test_gelu_defaults_to_gpt2s_tanh_approximation():
    x = np.linspace(-4, 4, 17)
    out, cache = ops.gelu_forward(x)
    np.testing.assert_array_equal(out, ops.gelu_forward(x, "tanh")[0])
    assert not np.allclose(out, ops.gelu_forward(x, "none")[0], rtol=0, atol=1e-6)
    dout = np.ones_like(x)
    np.testing.assert_array_equal(ops.gelu_backward(dout, cache), ops.gelu_backward(dout, cache, "tanh"))


def test_softmax_shifts_each_row_by_its_own_max():
    x = np.array([[1000.0, 999.0, 998.0], [-1000.0, -1001.0, -1003.0]])
    probs, _ = ops.softmax_forward(x)
    ref = torch.softmax(torch.tensor(x), dim=-1).numpy()
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs, ref, rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_embedding_gradients_keep_the_tables_dtype(dtype):
    ids = np.array([[0, 2, 2]])
    w = np.ones((4, 3), dtype=dtype)
    _, cache = ops.embedding_forward(ids, w)
    dw = ops.embedding_backward(np.ones((1, 3, 3), dtype=dtype), cache)
    assert dw.dtype == dtype
    np.testing.assert_array_equal(dw[:, 0], [1, 0, 2, 0])
