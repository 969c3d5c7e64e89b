"""Tests of the numba.cuda kernels (kernels/cuda.py, scratchgpt.kernels.cuda) against the
NumPy reference ops (scratchgpt.ops with the fused kernels switched off), computed in float64:
float64 kernels within 1e-12, float32 within 1e-5, errors measured as max|a - b| / max|b|.

Where they run:
- on a GPU (numba.cuda sees one): here, in this process, on CuPy arrays (numba device arrays
  when CuPy is missing);
- without one: under numba's CUDA simulator, which runs each kernel's threads as Python threads
  on the simulator's device arrays (NumPy underneath). The simulator has to be switched on (NUMBA_ENABLE_CUDASIM=1) before numba is
  first imported, and in a pytest process numba is long imported by then (conftest, the CPU
  kernel tests), so test_cuda_kernels_under_the_simulator runs this file again in a second
  Python with the variable set, and the checks here skip in the first one. The simulator is
  slow: shapes stay tiny (at most 8 rows, 13 columns, T = 5).

Most checks run twice: with the kernels' usual launch sizes, and with blocks of 4 threads and
grids of 2 blocks, so that every thread strides over several elements and the tree reductions
run several levels even on these tiny arrays.
"""
import math

import numpy as np
import pytest

from cudasim_helpers import RUN_HERE, SIMULATOR, run_under_simulator
from scratchgpt import backend, ops


on_the_device = pytest.mark.skipif(not RUN_HERE, reason="no GPU: these run under the simulator, in "
                                   "test_cuda_kernels_under_the_simulator")

TOL = {np.float32: 1e-5, np.float64: 1e-12}
DTYPES = [np.float32, np.float64]


# ---------------------------------------------------------------- running this file under the simulator

@pytest.mark.skipif(RUN_HERE, reason="the checks run directly here")
def test_cuda_kernels_under_the_simulator():
    run_under_simulator(__file__, "the CUDA kernels")


@pytest.mark.skipif(SIMULATOR, reason="the simulator compiles nothing")
def test_kernels_compile_for_the_gpu(monkeypatch):
    """numba's compiler (NVVM) types and compiles every kernel for float32 and float64, also on
    a machine with no GPU but the CUDA toolkit's NVVM (found in /usr/local/cuda or CUDA_HOME):
    the simulator runs kernels as Python and would accept code numba.cuda cannot compile."""
    cuda = pytest.importorskip("numba.cuda")
    try:
        from numba.cuda.cudadrv import nvvm
        import numba.cuda.dispatcher as dispatcher
    except ImportError:
        pytest.skip("this numba.cuda has another layout")
    if not nvvm.is_available():
        pytest.skip("no NVVM (the CUDA compiler) here")
    from numba import float32, float64, int32, int64
    from scratchgpt.kernels import cuda as KC
    from scratchgpt.kernels import cuda_step as KS
    if not cuda.is_available():            # device functions ask the current GPU for its compute capability
        if not hasattr(dispatcher, "get_current_device"):
            pytest.skip("this numba.cuda has another layout")
        monkeypatch.setattr(dispatcher, "get_current_device",
                            lambda: type("Hopper", (), {"compute_capability": (9, 0)})())
    for f in (float32, float64):
        A1, A2, A3, D1, D2 = f[::1], f[:, ::1], f[:, :, ::1], float64[::1], float64[:, ::1]
        signatures = [
            ("_causal_softmax_forward", (A3, A3)), ("_causal_softmax_backward", (A3, A3, A3)),
            ("_layernorm_forward", (A2, A1, A1, float64, A2, A1, A1)),
            ("_layernorm_backward_dx", (A2, A2, A1, A1, A1, A2)),
            ("_layernorm_param_grad_parts", (A2, A2, A1, A1, D2, D2)),
            ("_sum_param_grad_parts", (D2, D2, A1, A1)),
            ("_gelu_forward", (A1, A1)), ("_gelu_backward", (A1, A1, A1)),
            ("_mean_loss", (D1, D1, D1)),
            ("_embedding_backward", (A2, int64[::1], int64[::1], A2)),
            ("_adamw_step", (A1, A1, A1, A1, int64, f, f, f, f, f, f)),
        ]
        for t in (int32, int64):                                   # targets of either width
            signatures += [("_count_valid_targets", (t[::1], int64, D1)),
                           ("_cross_entropy_rows", (A2, t[::1], int64, D1, A2, D1))]
        for name, sig in signatures:
            kernel = getattr(KC, name, None) or getattr(KS, name)         # cuda.py, or cuda_step.py
            ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=(9, 0))
            assert ".entry" in ptx, name
            if name.startswith("_gelu") and f == float32:          # float32 GELU: no float64 math at all
                assert ".f64" not in ptx, f"{name} does float64 arithmetic on float32 data"


# ---------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def K():
    from scratchgpt.kernels import cuda as KC
    assert KC.available()
    return KC


@pytest.fixture(params=["usual blocks", "blocks of 4 threads"])
def launch(request, K):
    """The kernels' usual launch sizes, then blocks of 4 threads and grids of at most 2 blocks."""
    saved = K.MAX_THREADS, K.MAX_BLOCKS
    if request.param == "blocks of 4 threads":
        K.MAX_THREADS, K.MAX_BLOCKS = 4, 2
    yield request.param
    K.MAX_THREADS, K.MAX_BLOCKS = saved


@pytest.fixture
def reference():
    """scratchgpt.ops with the fused kernels off: the readable array code."""
    backend.use_kernels(False)
    yield ops
    backend.use_kernels(True)


def _cupy():
    if SIMULATOR:
        return None
    try:
        import cupy
        return cupy
    except ImportError:
        return None


def dev(a):
    """A host array on the device: CuPy on a GPU, a numba device array under the simulator."""
    cp = _cupy()
    if cp is not None:
        return cp.asarray(a)
    from numba import cuda
    return cuda.to_device(np.ascontiguousarray(a))


def host(a):
    if hasattr(a, "get"):
        return a.get()
    if hasattr(a, "copy_to_host"):
        return a.copy_to_host()
    return np.asarray(a)


def rel_err(a, b):
    """max|a - b| / max|b| (b all zero: max|a - b|)."""
    a, b = np.asarray(host(a), dtype=np.float64), np.asarray(host(b), dtype=np.float64)
    assert a.shape == b.shape, f"shape {a.shape} != {b.shape}"
    scale = np.max(np.abs(b), initial=0.0)
    return float(np.max(np.abs(a - b), initial=0.0) / (scale if scale > 0 else 1.0))


def assert_close(a, b, dtype, what):
    err = rel_err(a, b)
    assert err <= TOL[dtype], f"{what}: relative error {err:.3g} > {TOL[dtype]:g}"


def f64(a):
    return np.asarray(a, dtype=np.float64)


# ---------------------------------------------------------------- causal softmax

@on_the_device
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N, T", [(1, 1), (1, 5), (2, 4)])
def test_causal_softmax_matches_the_reference(K, launch, reference, N, T, dtype):
    r = np.random.default_rng(T)
    x = (3 * r.standard_normal((N, T, T))).astype(dtype)
    dy = r.standard_normal((N, T, T)).astype(dtype)
    y = K.causal_softmax_forward(dev(x))
    dx = K.causal_softmax_backward(dev(dy), y)
    y_ref, cache = reference.causal_softmax_forward(f64(x))
    dx_ref = reference.causal_softmax_backward(f64(dy), cache)
    assert y.dtype == dx.dtype == dtype and y.shape == dx.shape == (N, T, T)
    assert_close(y, y_ref, dtype, "y")
    assert_close(dx, dx_ref, dtype, "dx")
    future = np.triu(np.ones((T, T), dtype=bool), 1)
    assert np.all(host(y)[:, future] == 0) and np.all(host(dx)[:, future] == 0)   # exactly 0
    np.testing.assert_allclose(host(y).sum(-1), 1.0, rtol=TOL[dtype] * 10)


@on_the_device
def test_causal_softmax_in_place_and_into_out(K, launch):
    r = np.random.default_rng(1)
    x, dy = r.standard_normal((2, 2, 5, 5))
    y_ref = host(K.causal_softmax_forward(dev(x)))
    dx_ref = host(K.causal_softmax_backward(dev(dy), dev(y_ref)))
    xd, dyd = dev(x), dev(dy)
    assert K.causal_softmax_forward(xd, out=xd) is xd
    assert K.causal_softmax_backward(dyd, dev(y_ref), out=dyd) is dyd
    np.testing.assert_array_equal(host(xd), y_ref)
    np.testing.assert_array_equal(host(dyd), dx_ref)


# ---------------------------------------------------------------- LayerNorm

@on_the_device
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N, C", [(1, 1), (3, 13), (8, 7)])
def test_layernorm_matches_the_reference(K, launch, reference, N, C, dtype):
    r = np.random.default_rng(C)
    x = (2 + 3 * r.standard_normal((N, C))).astype(dtype)
    w, b = r.standard_normal(C).astype(dtype), r.standard_normal(C).astype(dtype)
    dout = r.standard_normal((N, C)).astype(dtype)
    out, mean, rstd = K.layernorm_forward(dev(x), dev(w), dev(b))
    dx, dw, db = K.layernorm_backward(dev(dout), dev(x), mean, rstd, dev(w))
    out_ref, cache = reference.layernorm_forward(f64(x), f64(w), f64(b))
    dx_ref, dw_ref, db_ref = reference.layernorm_backward(f64(dout), cache)
    for a, shape in ((out, (N, C)), (mean, (N,)), (rstd, (N,)), (dx, (N, C)), (dw, (C,)), (db, (C,))):
        assert a.dtype == dtype and a.shape == shape
    for got, ref, name in ((out, out_ref, "out"), (mean, cache.mean, "mean"), (rstd, cache.rstd, "rstd"),
                           (dw, dw_ref, "dw"), (db, db_ref, "db")):
        assert_close(got, ref, dtype, name)
    if C > 1:                                   # C = 1: dx is 0 up to rounding, see the next test
        assert_close(dx, dx_ref, dtype, "dx")


@on_the_device
def test_layernorm_of_one_feature_is_the_bias(K, launch):
    x = np.array([[3.0], [-2.0]])
    out, mean, rstd = K.layernorm_forward(dev(x), dev(np.array([2.0])), dev(np.array([0.5])))
    np.testing.assert_array_equal(host(out), [[0.5], [0.5]])
    dx, dw, db = K.layernorm_backward(dev(np.ones_like(x)), dev(x), mean, rstd, dev(np.array([2.0])))
    np.testing.assert_array_equal(host(dx), 0.0)
    np.testing.assert_array_equal(host(dw), 0.0)
    np.testing.assert_array_equal(host(db), [2.0])


# ---------------------------------------------------------------- GELU

@on_the_device
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (3, 13), (2, 3, 5)])
def test_gelu_matches_the_reference(K, launch, reference, shape, dtype):
    r = np.random.default_rng(len(shape))
    x = (3 * r.standard_normal(shape)).astype(dtype)
    dout = r.standard_normal(shape).astype(dtype)
    y = K.gelu_forward(dev(x))
    dx = K.gelu_backward(dev(dout), dev(x))
    y_ref, cache = reference.gelu_forward(f64(x))
    assert y.dtype == dx.dtype == dtype and y.shape == dx.shape == shape
    assert_close(y, y_ref, dtype, "y")
    assert_close(dx, reference.gelu_backward(f64(dout), cache), dtype, "dx")


@on_the_device
@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_over_a_wide_range_of_inputs(K, reference, dtype):
    # the simulator's math.exp is Python's, which raises OverflowError where the GPU's gives inf
    wide = [-10, 10] if SIMULATOR else [-60, 60, -1e30, 1e30]
    x = np.concatenate([np.linspace(-10, 10, 9), wide, [0.0, -0.0]]).astype(dtype)
    y, dx = host(K.gelu_forward(dev(x))), host(K.gelu_backward(dev(np.ones_like(x)), dev(x)))
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx))
    y_ref, cache = reference.gelu_forward(f64(x))
    assert_close(y, y_ref, dtype, "y")
    assert_close(dx, reference.gelu_backward(np.ones_like(f64(x)), cache), dtype, "dx")


@on_the_device
def test_gelu_in_place(K, launch):
    r = np.random.default_rng(2)
    x, d = r.standard_normal((2, 3, 7))
    y, dx = host(K.gelu_forward(dev(x))), host(K.gelu_backward(dev(d), dev(x)))
    xd, dd = dev(x), dev(d)
    assert K.gelu_forward(xd, out=xd) is xd and K.gelu_backward(dd, dev(x), out=dd) is dd
    np.testing.assert_array_equal(host(xd), y)
    np.testing.assert_array_equal(host(dd), dx)


# ---------------------------------------------------------------- cross-entropy

@on_the_device
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N, V", [(1, 1), (1, 13), (7, 13), (8, 5)])
@pytest.mark.parametrize("target_dtype", [np.int32, np.int64])
def test_cross_entropy_matches_the_reference(K, launch, reference, N, V, dtype, target_dtype):
    r = np.random.default_rng(N * V)
    logits = (4 * r.standard_normal((N, V))).astype(dtype)
    targets = r.integers(0, V, N).astype(target_dtype)
    if N > 2:
        targets[[1, N - 1]] = -100                          # ignored rows
    loss, dlogits = K.cross_entropy_forward_backward(dev(logits), dev(targets))
    loss_ref, cache = reference.cross_entropy_forward(f64(logits), targets)
    assert loss.shape == () and loss.dtype == np.float64     # a 0-d device array: no sync
    assert dlogits.dtype == dtype and dlogits.shape == (N, V)
    assert_close(float(host(loss)), float(loss_ref), dtype, "loss")
    assert_close(dlogits, reference.cross_entropy_backward(1.0, cache), dtype, "dlogits")
    assert np.all(host(dlogits)[targets == -100] == 0)      # exactly 0


@on_the_device
@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_with_every_target_ignored_is_zero(K, dtype):
    logits = np.random.default_rng(9).standard_normal((3, 4)).astype(dtype)
    loss, d = K.cross_entropy_forward_backward(dev(logits), dev(np.full(3, -100)))
    assert float(host(loss)) == 0.0
    assert d.dtype == dtype and d.shape == (3, 4) and not host(d).any()


@on_the_device
def test_cross_entropy_with_another_ignore_index(K, reference):
    r = np.random.default_rng(8)
    logits, targets = r.standard_normal((6, 5)), np.array([0, 4, 1, 4, 2, 3])
    loss, d = K.cross_entropy_forward_backward(dev(logits), dev(targets), ignore_index=4)  # 4 is also a class
    loss_ref, cache = reference.cross_entropy_forward(logits, targets, ignore_index=4)
    assert_close(float(host(loss)), float(loss_ref), np.float64, "loss")
    assert_close(d, reference.cross_entropy_backward(1.0, cache), np.float64, "dlogits")


@on_the_device
def test_cross_entropy_in_place(K, launch):
    r = np.random.default_rng(10)
    logits, targets = r.standard_normal((4, 9)), np.array([1, -100, 8, 0])
    loss, d = K.cross_entropy_forward_backward(dev(logits), dev(targets))
    ld = dev(logits)
    loss2, d2 = K.cross_entropy_forward_backward(ld, dev(targets), out=ld)
    assert d2 is ld and float(host(loss2)) == float(host(loss))
    np.testing.assert_array_equal(host(d2), host(d))


@on_the_device
def test_cross_entropy_is_stable_for_large_logits(K, reference):
    logits = np.array([[1000.0, 0.0, -1000.0], [-5e4, 5e4, 0.0]], dtype=np.float32)
    loss, d = K.cross_entropy_forward_backward(dev(logits), dev(np.array([0, 0])))
    loss_ref, cache = reference.cross_entropy_forward(f64(logits), np.array([0, 0]))
    assert math.isfinite(float(host(loss))) and np.all(np.isfinite(host(d)))
    assert_close(float(host(loss)), float(loss_ref), np.float32, "loss")
    assert_close(d, reference.cross_entropy_backward(1.0, cache), np.float32, "dlogits")


@on_the_device
def test_cross_entropy_bad_targets_raise_on_the_host_and_give_nan_on_the_device(K):
    logits, targets = np.zeros((4, 65), dtype=np.float32), np.array([0, 3, 65, -100])
    with pytest.raises(ValueError, match=r"target 65 at row 2 .*\[0, 65\)"):
        K.cross_entropy_forward_backward(dev(logits), targets)          # NumPy targets: checked
    loss, d = K.cross_entropy_forward_backward(dev(logits), dev(targets))   # device targets: no sync
    d = host(d)
    assert math.isnan(float(host(loss))) and np.all(np.isnan(d[2]))
    assert not np.isnan(d[[0, 1, 3]]).any() and not d[3].any()


# ---------------------------------------------------------------- embedding backward

@on_the_device
@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_backward_matches_the_reference_and_repeats_its_bits(K, launch, reference, dtype):
    r = np.random.default_rng(4)
    V, C = 6, 13
    ids = np.array([[3, 1, 3, 0], [5, 3, 1, -1]])                # repeats, and -1 counts from the end
    dout = r.standard_normal((2, 4, C)).astype(dtype)
    start = r.standard_normal((V, C)).astype(dtype)               # it adds into what is there
    out = dev(start)
    assert K.embedding_backward(dev(dout), dev(ids), out) is out
    ref = reference.embedding_backward(f64(dout), reference.embedding_forward(ids, f64(start))[1],
                                       out=f64(start).copy())
    assert_close(out, ref, dtype, "dweight")
    again = dev(start)
    K.embedding_backward(dev(dout), dev(ids), again)
    np.testing.assert_array_equal(host(again), host(out))         # no atomics: the same bits
    np.testing.assert_array_equal(host(out)[[2, 4]], start[[2, 4]])   # rows no id names are untouched


# ---------------------------------------------------------------- AdamW

@on_the_device
@pytest.mark.parametrize("dtype", DTYPES)
def test_adamw_step_matches_the_array_code(K, launch, dtype):
    """Three steps of the kernel against scratchgpt.optim.AdamW's array code on the host."""
    import scratchgpt as sg
    r = np.random.default_rng(6)
    cfg = sg.GPTConfig(vocab_size=5, context_length=3, emb_dim=4, n_heads=2, n_layers=1)
    model = sg.GPTModel(cfg, seed=0, dtype=dtype)
    opt = sg.AdamW(model, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    p, m, v = dev(model.flat_params), dev(np.zeros_like(model.flat_params)), dev(np.zeros_like(model.flat_params))
    backend.use_kernels(False)                       # the array code as the reference
    try:
        for t in range(1, 4):
            g = r.standard_normal(model.flat_grads.shape).astype(dtype)
            model.flat_grads[...] = g
            opt.step()
            K.adamw_step(p, dev(g), m, v, t, 1e-2, (0.9, 0.95), 1e-8, 0.1, model.n_decay)
    finally:
        backend.use_kernels(True)
    assert_close(p, model.flat_params, dtype, "p")
    assert_close(m, opt.m, dtype, "m")
    assert_close(v, opt.v, dtype, "v")


# ---------------------------------------------------------------- array kinds

@on_the_device
def test_numba_device_arrays_in_give_device_arrays_out(K):
    from numba import cuda
    r = np.random.default_rng(11)
    x = r.standard_normal((2, 3))
    y = K.gelu_forward(cuda.to_device(x))
    out, mean, rstd = K.layernorm_forward(cuda.to_device(x), cuda.to_device(np.ones(3)), cuda.to_device(np.zeros(3)))
    loss, d = K.cross_entropy_forward_backward(cuda.to_device(x), cuda.to_device(np.array([0, 2])))
    for a in (y, out, mean, rstd, loss, d):
        assert hasattr(a, "copy_to_host"), type(a)
    np.testing.assert_array_equal(y.copy_to_host(), host(K.gelu_forward(dev(x))))


@on_the_device
def test_errors_name_the_offending_value(K):
    with pytest.raises(ValueError, match=r"\(13,\)"):
        K.layernorm_forward(dev(np.zeros((2, 13))), dev(np.ones(12)), dev(np.zeros(12)))
    with pytest.raises(ValueError, match=r"\(N, T, T\)"):
        K.causal_softmax_forward(dev(np.zeros((2, 3, 4))))
    with pytest.raises(TypeError, match="int32"):
        K.gelu_forward(dev(np.zeros(3, dtype=np.int32)))
    with pytest.raises(ValueError, match="float32 array of shape"):
        K.gelu_forward(dev(np.zeros(3, dtype=np.float32)), out=dev(np.zeros(4, dtype=np.float32)))
    with pytest.raises(TypeError, match="device array .* NumPy"):
        K.gelu_forward(np.zeros(3))
