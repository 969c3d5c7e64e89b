"""Tests of the numba kernels in kernels/ (scratchgpt.kernels).

Each kernel is checked against a plain-NumPy reference written here in float64, and against
torch autograd: float64 kernels within 1e-12 of the reference (1e-9 of torch), float32 kernels
within 1e-5, errors measured as max|a - b| / max|b|.
"""

import math

import numba
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import scratchgpt.kernels as K
from scratchgpt.kernels import _vmath
from scratchgpt.kernels._common import KERNEL_OPTIONS

TOL = {np.float32: 1e-5, np.float64: 1e-12}        # against the NumPy reference
TORCH_TOL = {np.float32: 1e-5, np.float64: 1e-9}   # against torch
DTYPES = [np.float32, np.float64]

# every test here runs once with the serial and once with the parallel kernels
pytestmark = pytest.mark.usefixtures("kernel_threads")


def rel_err(a, b, floor=1e-300):
    """max|a - b| / max|b|; `floor` bounds the denominator where b may be all (near) zero."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b), initial=0.0) / max(np.max(np.abs(b), initial=0.0), floor))


def assert_close(a, b, tol, what="", floor=1e-300):
    err = rel_err(a, b, floor)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:g}"


def t64(a, grad=False):
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


# ---------------------------------------------------------------- NumPy references, float64

def causal_mask(T):
    return np.triu(np.ones((T, T), dtype=bool), k=1)  # True above the diagonal


def softmax_ref(x):
    z = np.where(causal_mask(x.shape[-1]), -np.inf, x.astype(np.float64))
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax_backward_ref(dy, y):
    dy, y = dy.astype(np.float64), y.astype(np.float64)
    return y * (dy - (dy * y).sum(axis=-1, keepdims=True))


def layernorm_ref(x, w, b, eps=1e-5):
    x = x.astype(np.float64)
    mean = x.mean(axis=-1)
    rstd = 1.0 / np.sqrt(x.var(axis=-1) + eps)
    return (x - mean[:, None]) * rstd[:, None] * w + b, mean, rstd


def layernorm_backward_ref(dout, x, w, eps=1e-5):
    dout, x, w = (a.astype(np.float64) for a in (dout, x, w))
    _, mean, rstd = layernorm_ref(x, w, 0 * w, eps)
    xhat = (x - mean[:, None]) * rstd[:, None]
    dxhat = dout * w
    dx = rstd[:, None] * (dxhat - dxhat.mean(-1, keepdims=True) - xhat * (dxhat * xhat).mean(-1, keepdims=True))
    return dx, (dout * xhat).sum(0), dout.sum(0)


def gelu_ref(x):
    x = x.astype(np.float64)
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def gelu_backward_ref(dout, x):
    x = x.astype(np.float64)
    th = np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))
    du = math.sqrt(2 / math.pi) * (1 + 3 * 0.044715 * x**2)
    return dout * (0.5 * (1 + th) + 0.5 * x * (1 - th**2) * du)


def cross_entropy_ref(logits, targets, ignore_index=-100):
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    valid = targets != ignore_index
    n = valid.sum()
    rows = np.nonzero(valid)[0]
    loss = -logp[rows, targets[rows]].sum() / n
    d = np.exp(logp)
    d[rows, targets[rows]] -= 1
    d[~valid] = 0
    return loss, d / n


# ---------------------------------------------------------------- causal softmax

SOFTMAX_SHAPES = [(1, 1, 1), (1, 7, 7), (3, 7, 7), (2, 13, 13), (64, 33, 33)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SOFTMAX_SHAPES)
def test_causal_softmax_matches_numpy_and_torch(shape, dtype):
    rng = np.random.default_rng(1)
    x = (3 * rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)

    y = K.causal_softmax_forward(x)
    dx = K.causal_softmax_backward(dy, y)
    assert y.dtype == dtype and dx.dtype == dtype and y.shape == shape and dx.shape == shape
    assert_close(y, softmax_ref(x), TOL[dtype], "y vs numpy")
    assert_close(dx, softmax_backward_ref(dy, y), TOL[dtype], "dx vs numpy")

    xt = t64(x, grad=True)
    mask = torch.from_numpy(causal_mask(shape[-1]))
    yt = torch.softmax(xt.masked_fill(mask, float("-inf")), dim=-1)
    yt.backward(t64(dy))
    assert_close(y, yt.detach().numpy(), TORCH_TOL[dtype], "y vs torch")
    assert_close(dx, xt.grad.numpy(), TORCH_TOL[dtype], "dx vs torch")


@pytest.mark.parametrize("dtype", DTYPES)
def test_causal_softmax_never_uses_entries_above_the_diagonal(dtype):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 9, 9)).astype(dtype)
    dy = rng.standard_normal((4, 9, 9)).astype(dtype)
    above = causal_mask(9)
    x_poisoned, dy_poisoned = x.copy(), dy.copy()
    x_poisoned[:, above] = np.nan
    dy_poisoned[:, above] = np.inf

    y = K.causal_softmax_forward(x_poisoned)
    dx = K.causal_softmax_backward(dy_poisoned, y)
    assert np.all(y[:, above] == 0) and np.all(dx[:, above] == 0)  # exactly 0, not just small
    np.testing.assert_array_equal(y, K.causal_softmax_forward(x))
    np.testing.assert_array_equal(dx, K.causal_softmax_backward(dy, y))


@pytest.mark.parametrize("dtype", DTYPES)
def test_causal_softmax_is_stable_for_large_scores(dtype):
    x = np.linspace(-1000, 1000, 2 * 5 * 5).astype(dtype).reshape(2, 5, 5)
    y = K.causal_softmax_forward(x)
    assert np.all(np.isfinite(y))
    assert_close(y, softmax_ref(x), TOL[dtype])
    np.testing.assert_allclose(y.sum(axis=-1), 1.0, rtol=TOL[dtype])
    x = np.zeros((2, 6, 6), dtype)
    x[:, np.arange(6), np.arange(6)] = 1000.0                     # each row's largest score on the diagonal
    y = K.causal_softmax_forward(x)                               # (the max must include it, or exp overflows)
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y, np.broadcast_to(np.eye(6, dtype=dtype), x.shape), atol=TOL[dtype])


def test_causal_softmax_passes_nan_through():
    x = np.zeros((1, 4, 4))
    x[0, 2, 1] = np.nan
    y = K.causal_softmax_forward(x)
    assert np.all(np.isnan(y[0, 2, :3])) and np.all(y[0, 2, 3:] == 0)
    assert not np.isnan(y[0, [0, 1, 3]]).any()


def test_causal_softmax_rejects_non_square_scores():
    with pytest.raises(ValueError, match=r"\(N, T, T\)"):
        K.causal_softmax_forward(np.zeros((2, 3, 4), dtype=np.float32))
    with pytest.raises(TypeError, match="float32 or float64"):
        K.causal_softmax_forward(np.zeros((2, 3, 3), dtype=np.int64))


# ---------------------------------------------------------------- layernorm

LAYERNORM_SHAPES = [(1, 1), (5, 1), (1, 13), (7, 13), (64, 33), (300, 24)]  # 300 rows > 64 chunks


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", LAYERNORM_SHAPES)
def test_layernorm_matches_numpy_and_torch(shape, dtype):
    rng = np.random.default_rng(3)
    N, C = shape
    x = (2 + 3 * rng.standard_normal(shape)).astype(dtype)  # a mean far from 0 tests the centring
    w = (1 + 0.5 * rng.standard_normal(C)).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)

    # with one feature, xhat, dx and dw are exactly 0; the references leave rounding noise
    # (~1e-14 in torch), so compare those against 1 instead of against their own size
    floor = 1.0 if C == 1 else 1e-300

    out, mean, rstd = K.layernorm_forward(x, w, b)
    dx, dw, db = K.layernorm_backward(dout, x, mean, rstd, w)
    assert {a.dtype for a in (out, mean, rstd, dx, dw, db)} == {np.dtype(dtype)}
    assert out.shape == dx.shape == shape and mean.shape == rstd.shape == (N,) and dw.shape == db.shape == (C,)

    out_ref, mean_ref, rstd_ref = layernorm_ref(x, w, b)
    assert_close(out, out_ref, TOL[dtype], "out vs numpy")
    assert_close(mean, mean_ref, TOL[dtype], "mean vs numpy")
    assert_close(rstd, rstd_ref, TOL[dtype], "rstd vs numpy")
    for got, ref, name in zip((dx, dw, db), layernorm_backward_ref(dout, x, w), ("dx", "dw", "db")):
        assert_close(got, ref, TOL[dtype], f"{name} vs numpy", floor)

    xt, wt, bt = t64(x, True), t64(w, True), t64(b, True)
    outt = F.layer_norm(xt, (C,), wt, bt, eps=1e-5)
    outt.backward(t64(dout))
    assert_close(out, outt.detach().numpy(), TORCH_TOL[dtype], "out vs torch")
    for got, ref, name in ((dx, xt.grad, "dx"), (dw, wt.grad, "dw"), (db, bt.grad, "db")):
        assert_close(got, ref.numpy(), TORCH_TOL[dtype], f"{name} vs torch", floor)


def test_layernorm_of_one_feature_is_the_bias():
    x = np.array([[3.0], [-2.0]])
    out, mean, rstd = K.layernorm_forward(x, np.array([2.0]), np.array([0.5]))
    np.testing.assert_array_equal(out, [[0.5], [0.5]])
    dx, dw, db = K.layernorm_backward(np.ones_like(x), x, mean, rstd, np.array([2.0]))
    np.testing.assert_array_equal(dx, 0.0)
    np.testing.assert_array_equal(db, [2.0])


def test_layernorm_param_grads_do_not_depend_on_thread_count():
    rng = np.random.default_rng(4)
    x, dout = rng.standard_normal((2, 1001, 37)).astype(np.float32)
    w = rng.standard_normal(37).astype(np.float32)
    _, mean, rstd = K.layernorm_forward(x, w, w)
    before = numba.get_num_threads()
    try:
        results = []
        for n in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(n)
            results.append(K.layernorm_backward(dout, x, mean, rstd, w))
    finally:
        numba.set_num_threads(before)
    for got in results[1:]:
        for a, b in zip(got, results[0]):
            np.testing.assert_array_equal(a, b)  # bit for bit: no races, fixed summation order


def test_layernorm_rejects_mismatched_weight():
    with pytest.raises(ValueError, match=r"\(13,\)"):
        K.layernorm_forward(np.zeros((2, 13)), np.ones(12), np.zeros(12))


# ---------------------------------------------------------------- gelu

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 13), (2, 5, 33), (64, 132)])
def test_gelu_matches_numpy_and_torch(shape, dtype):
    rng = np.random.default_rng(5)
    x = (3 * rng.standard_normal(shape)).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)

    y = K.gelu_forward(x)
    dx = K.gelu_backward(dout, x)
    assert y.dtype == dx.dtype == dtype and y.shape == dx.shape == shape
    assert_close(y, gelu_ref(x), TOL[dtype], "y vs numpy")
    assert_close(dx, gelu_backward_ref(dout, x), TOL[dtype], "dx vs numpy")

    xt = t64(x, True)
    yt = F.gelu(xt, approximate="tanh")
    yt.backward(t64(dout))
    assert_close(y, yt.detach().numpy(), TORCH_TOL[dtype], "y vs torch")
    assert_close(dx, xt.grad.numpy(), TORCH_TOL[dtype], "dx vs torch")


@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_over_a_wide_range_of_inputs(dtype):
    x = np.concatenate([np.linspace(-60, 60, 2001), [-1e30, 1e30, 0.0, -0.0]]).astype(dtype)
    dout = np.ones_like(x)
    y, dx = K.gelu_forward(x), K.gelu_backward(dout, x)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx))
    assert_close(y, gelu_ref(x), TOL[dtype], "y")
    assert_close(dx, gelu_backward_ref(dout, x), TOL[dtype], "dx")


def test_gelu_accepts_non_contiguous_input():
    x = np.random.default_rng(6).standard_normal((13, 7)).T  # (7, 13), Fortran order
    np.testing.assert_allclose(K.gelu_forward(x), gelu_ref(x), rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------- cross-entropy

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (1, 13), (7, 13), (64, 65)])
@pytest.mark.parametrize("target_dtype", [np.int32, np.int64])
def test_cross_entropy_matches_numpy_and_torch(shape, dtype, target_dtype):
    rng = np.random.default_rng(7)
    N, V = shape
    logits = (4 * rng.standard_normal(shape)).astype(dtype)
    targets = rng.integers(0, V, N).astype(target_dtype)
    if N > 2:
        targets[[1, N - 1]] = -100  # ignored rows

    loss, dlogits = K.cross_entropy_forward_backward(logits, targets)
    assert isinstance(loss, float) and dlogits.dtype == dtype and dlogits.shape == shape
    loss_ref, d_ref = cross_entropy_ref(logits, targets)
    assert_close(loss, loss_ref, TOL[dtype], "loss vs numpy")
    assert_close(dlogits, d_ref, TOL[dtype], "dlogits vs numpy")
    assert np.all(dlogits[targets == -100] == 0)

    lt = t64(logits, True)
    losst = F.cross_entropy(lt, torch.from_numpy(targets.astype(np.int64)), ignore_index=-100)
    losst.backward()
    assert_close(loss, losst.item(), TORCH_TOL[dtype], "loss vs torch")
    assert_close(dlogits, lt.grad.numpy(), TORCH_TOL[dtype], "dlogits vs torch")


def test_cross_entropy_with_another_ignore_index():
    rng = np.random.default_rng(8)
    logits = rng.standard_normal((6, 5))
    targets = np.array([0, 4, 1, 4, 2, 3])
    loss, d = K.cross_entropy_forward_backward(logits, targets, ignore_index=4)  # 4 is also a class
    loss_ref, d_ref = cross_entropy_ref(logits, targets, ignore_index=4)
    assert_close(loss, loss_ref, 1e-12)
    assert_close(d, d_ref, 1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_with_every_target_ignored_is_zero(dtype):
    logits = np.random.default_rng(9).standard_normal((3, 4)).astype(dtype)
    loss, d = K.cross_entropy_forward_backward(logits, np.full(3, -100))
    assert loss == 0.0 and isinstance(loss, float)
    assert d.dtype == dtype and d.shape == (3, 4) and not d.any()


def test_cross_entropy_is_stable_for_large_logits():
    logits = np.array([[1000.0, 0.0, -1000.0], [-5e4, 5e4, 0.0]], dtype=np.float32)
    loss, d = K.cross_entropy_forward_backward(logits, np.array([0, 0]))
    loss_ref, d_ref = cross_entropy_ref(logits, np.array([0, 0]))
    assert math.isfinite(loss) and np.all(np.isfinite(d))
    assert_close(loss, loss_ref, 1e-6)
    assert_close(d, d_ref, 1e-6)
    assert_close(K.cross_entropy_loss(logits, np.array([0, 0])), loss_ref, 1e-6)   # the loss alone too


def test_cross_entropy_passes_nan_through():
    logits = np.zeros((2, 5), dtype=np.float32)
    logits[1, 3] = np.nan
    loss, d = K.cross_entropy_forward_backward(logits, np.array([0, 0]))
    assert math.isnan(loss) and np.all(np.isnan(d[1])) and not np.isnan(d[0]).any()


@pytest.mark.parametrize("bad", [65, -1, 1000])
def test_cross_entropy_rejects_a_target_outside_the_vocabulary(bad):
    targets = np.array([0, 3, bad, -100])
    with pytest.raises(ValueError, match=rf"target {bad} at row 2 .*\[0, 65\)"):
        K.cross_entropy_forward_backward(np.zeros((4, 65), dtype=np.float32), targets)


# ---------------------------------------------------------------- embedding backward

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("V,N,C", [(1, 1, 1), (5, 40, 3), (65, 300, 17)])
def test_embedding_backward_matches_numpy_and_torch(V, N, C, dtype):
    r = np.random.default_rng(V + N)
    ids = r.integers(-V, V, size=(2, N))                 # repeats, and negative ids as in NumPy
    dout = r.standard_normal((2, N, C)).astype(dtype)
    g0 = r.standard_normal((V, C)).astype(dtype)
    g = g0.copy()
    assert K.embedding_backward(dout, ids, out=g) is g
    ref = g0.astype(np.float64)
    np.add.at(ref, ids.reshape(-1), dout.reshape(-1, C).astype(np.float64))
    assert_close(g, ref, TOL[dtype], "scatter-add")
    w = t64(g0, grad=True)                               # torch: d/dw of sum(dout * w[ids])
    (torch.nn.functional.embedding(torch.tensor(ids % V), w) * t64(dout)).sum().backward()
    assert_close(g - g0, w.grad.numpy(), TORCH_TOL[dtype], "against torch")


@pytest.mark.parametrize("bad", [5, -6, 99])
def test_embedding_backward_rejects_an_id_outside_the_table_and_adds_nothing(bad):
    g = np.zeros((5, 2), np.float32)
    with pytest.raises(IndexError, match=f"token id {bad} is outside the table of 5 rows"):
        K.embedding_backward(np.ones((3, 2), np.float32), np.array([0, bad, 1]), out=g)
    assert not g.any()


def test_embedding_backward_rejects_a_mismatched_out():
    dout, ids = np.ones((3, 2), np.float32), np.array([0, 1, 1])
    with pytest.raises(ValueError, match="out must be"):
        K.embedding_backward(dout, ids, out=np.zeros((5, 2), np.float64))
    with pytest.raises(ValueError, match="out must be"):
        K.embedding_backward(dout, ids, out=np.zeros((2, 5), np.float32).T)
    with pytest.raises(ValueError, match="ids have shape"):
        K.embedding_backward(dout, ids[:2], out=np.zeros((5, 2), np.float32))
    with pytest.raises(TypeError, match="ids must be integers"):
        K.embedding_backward(dout, ids.astype(np.float32), out=np.zeros((5, 2), np.float32))


# ---------------------------------------------------------------- out= buffers

def test_out_buffers_are_filled_and_returned_also_in_place():
    rng = np.random.default_rng(10)
    x, dy = rng.standard_normal((2, 3, 6, 6))
    y_ref = K.causal_softmax_forward(x)
    dx_ref = K.causal_softmax_backward(dy, y_ref)
    buf = np.full_like(x, np.nan)
    assert K.causal_softmax_forward(x, out=buf) is buf
    np.testing.assert_array_equal(buf, y_ref)
    x_inplace, dy_inplace = x.copy(), dy.copy()
    np.testing.assert_array_equal(K.causal_softmax_forward(x_inplace, out=x_inplace), y_ref)
    np.testing.assert_array_equal(K.causal_softmax_backward(dy_inplace, y_ref, out=dy_inplace), dx_ref)

    g = rng.standard_normal((5, 7))
    y = K.gelu_forward(g)
    dx = K.gelu_backward(g[::-1].copy(), g)
    np.testing.assert_array_equal(K.gelu_forward(g.copy(), out=np.empty_like(g)), y)
    d_inplace = g[::-1].copy()
    np.testing.assert_array_equal(K.gelu_backward(d_inplace, g, out=d_inplace), dx)

    logits, targets = rng.standard_normal((4, 9)), np.array([1, -100, 8, 0])
    loss, d = K.cross_entropy_forward_backward(logits, targets)
    loss2, d2 = K.cross_entropy_forward_backward(logits, targets, out=logits)  # in place
    assert d2 is logits and loss2 == loss
    np.testing.assert_array_equal(d2, d)


def test_out_buffer_of_the_wrong_shape_or_dtype_is_rejected():
    x = np.zeros((2, 4, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="float32 array of shape"):
        K.causal_softmax_forward(x, out=np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="C-contiguous"):
        K.gelu_forward(x, out=np.zeros((4, 4, 2), dtype=np.float32).transpose(2, 0, 1))


# ---------------------------------------------------------------- the vectorizable exp

@numba.njit(fastmath=KERNEL_OPTIONS["fastmath"], error_model="numpy")  # as inside the kernels
def _exp_array(x, y):
    for i in range(x.size):
        y[i] = _vmath.exp(x[i])


@pytest.mark.parametrize("dtype", DTYPES)
def test_vector_exp_is_within_two_ulp_of_numpy(dtype):
    fin = np.finfo(dtype)
    x = np.concatenate([np.linspace(-87, 88, 100_001), np.linspace(-1, 1, 10_001)]).astype(dtype)
    if dtype == np.float64:
        x = np.concatenate([x, np.linspace(-708, 709, 100_001)])
    y = np.empty_like(x)
    _exp_array(x, y)
    ref = np.exp(x.astype(np.longdouble))
    assert float(np.max(np.abs(y - ref) / ref)) <= 2 * fin.eps

    special = np.array([-np.inf, np.inf, np.nan, 0.0, -1e6, 1e6], dtype=dtype)
    out = np.empty_like(special)
    _exp_array(special, out)
    np.testing.assert_array_equal(out, [0.0, np.inf, np.nan, 1.0, 0.0, np.inf])


# ---------------------------------------------------------------- serial and parallel twins
# (these two set the mode themselves; the module's kernel_threads fixture runs them twice anyway)

def test_kernels_pick_the_serial_twin_for_small_inputs_and_the_parallel_one_for_large(monkeypatch):
    from scratchgpt.kernels import _common, gelu
    monkeypatch.setattr(_common, "PARALLEL", "auto")
    core = gelu._gelu_forward
    assert core.parallel.targetoptions["parallel"] and not core.serial.targetoptions["parallel"]
    calls = []
    monkeypatch.setattr(core, "parallel", lambda *a: calls.append("parallel"))
    monkeypatch.setattr(core, "serial", lambda *a: calls.append("serial"))
    for layer in ("omp", "workqueue", "default"):            # "default": workqueue's threshold
        monkeypatch.setattr(_common, "_layer", layer)            # as if the pool ran on it
        n = _common.PARALLEL_MIN_WORK["omp" if layer == "omp" else "workqueue"]
        K.gelu_forward(np.zeros(n - 1, np.float32))
        K.gelu_forward(np.zeros(n, np.float32))
    assert calls == ["serial", "parallel"] * 3
    assert _common.PARALLEL_MIN_WORK["omp"] < _common.PARALLEL_MIN_WORK["workqueue"]


def test_serial_and_parallel_twins_agree(monkeypatch):
    from scratchgpt.kernels import _common
    rng = np.random.default_rng(9)
    x = rng.standard_normal((4, 40, 40)).astype(np.float32)
    h = rng.standard_normal((300, 37)).astype(np.float32)
    w = rng.standard_normal(37).astype(np.float32)
    logits = rng.standard_normal((300, 37)).astype(np.float32)
    targets = rng.integers(0, 37, 300)
    results = {}
    for mode in ("serial", "parallel"):
        monkeypatch.setattr(_common, "PARALLEL", mode)
        y = K.causal_softmax_forward(x)
        _, mean, rstd = K.layernorm_forward(h, w, w)
        results[mode] = [y, K.causal_softmax_backward(x, y), K.gelu_forward(h), K.gelu_backward(h, h),
                         *K.layernorm_backward(h, h, mean, rstd, w),
                         *K.cross_entropy_forward_backward(logits, targets)]
    for a, b in zip(results["serial"], results["parallel"]):
        # the same code, but LLVM may schedule a float op differently in each (GELU's backward
        # differs in the last bit of a few entries)
        assert rel_err(a, b) <= 1e-6
