"""The CuPy backend on a real GPU: ops and the whole model against torch, training, sampling,
checkpoints across devices. Skips (with the reason) where CuPy or a GPU is missing."""
import numpy as np
import pytest

cupy = pytest.importorskip("cupy", reason="CuPy is not installed (pip install 'scratchgpt[gpu]')")
if not cupy.cuda.is_available():
    pytest.skip("no CUDA GPU is visible to CuPy", allow_module_level=True)

import torch
import torch.nn.functional as F

import scratchgpt as sg
from conftest import assert_close
from scratchgpt import backend, checkpoint, ops
from scratchgpt.generate import generate
from torch_gpt import torch_gpt_logits, torch_params

TINY = dict(vocab_size=11, context_length=8, emb_dim=12, n_heads=3, n_layers=2)


@pytest.fixture(autouse=True)
def on_gpu():
    backend.use("cupy")
    yield
    backend.use("numpy")


def host(a):
    return backend.to_numpy(a)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_ops_on_the_gpu_match_torch(dtype):
    r = np.random.default_rng(0)
    x = r.standard_normal((2, 5, 12)).astype(dtype)
    w, b = r.standard_normal(12).astype(dtype), r.standard_normal(12).astype(dtype)
    out, cache = ops.layernorm_forward(cupy.asarray(x), cupy.asarray(w), cupy.asarray(b))
    dout = r.standard_normal(x.shape).astype(dtype)
    dx, dw, db = ops.layernorm_backward(cupy.asarray(dout), cache)
    xt, wt, bt = (torch.tensor(a.astype(np.float64), requires_grad=True) for a in (x, w, b))
    ref = F.layer_norm(xt, (12,), wt, bt, eps=1e-5)
    ref.backward(torch.tensor(dout.astype(np.float64)))
    assert isinstance(out, cupy.ndarray) and isinstance(dx, cupy.ndarray)
    for ours, theirs in ((out, ref), (dx, xt.grad), (dw, wt.grad), (db, bt.grad)):
        assert_close(ours, theirs, dtype)
    s = cupy.asarray(r.standard_normal((2, 3, 6, 6)).astype(dtype))
    y, c = ops.causal_softmax_forward(s)
    assert float(y.sum(-1).min()) == pytest.approx(1.0, rel=1e-5)
    assert not bool(y[..., np.triu_indices(6, 1)[0], np.triu_indices(6, 1)[1]].any())
    g, _ = ops.gelu_forward(cupy.asarray(x))
    assert_close(g, F.gelu(torch.tensor(x.astype(np.float64)), approximate="tanh"), dtype)
    logits = r.standard_normal((4, 11)).astype(dtype)
    tg = np.array([1, -100, 3, 10])
    loss, cc = ops.cross_entropy_forward(cupy.asarray(logits), cupy.asarray(tg))
    lt = torch.tensor(logits.astype(np.float64), requires_grad=True)
    F.cross_entropy(lt, torch.tensor(tg)).backward()
    assert_close(ops.cross_entropy_backward(1.0, cc), lt.grad, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("variant", [dict(), dict(qkv_bias=True, tie_weights=False), dict(post_norm=True)])
def test_whole_model_gradients_on_the_gpu_match_torch(dtype, variant, kernels):
    cfg = sg.GPTConfig(**TINY, **variant)
    model = sg.GPTModel(cfg, seed=0, dtype=dtype)
    assert isinstance(model.flat_params, cupy.ndarray)
    # SCRATCHGPT_KERNELS=numba runs the numba.cuda kernels where they can run, =numpy the array code
    expected = usable_cuda_kernels() if kernels == "numba" else None
    assert getattr(backend.ops, "kernels", None) is expected     # FastOps(kernels) or the reference ops
    check_loss_and_gradients_against_torch(model, cfg, dtype)


def check_loss_and_gradients_against_torch(model, cfg, dtype):
    r = np.random.default_rng(0)
    idx, tgt = r.integers(0, 11, (2, 8)), r.integers(0, 11, (2, 8))
    tgt[0, ::2] = -100
    loss = model.loss(idx, tgt)
    model.zero_grad()
    model.backward()
    P = torch_params({k: host(v).astype(np.float64) for k, v in model.state_dict().items()})
    ref = torch_gpt_logits(P, torch.tensor(idx), cfg)
    ref_loss = F.cross_entropy(ref.reshape(-1, 11), torch.tensor(tgt).reshape(-1))
    ref_loss.backward()
    assert_close(np.array(loss), ref_loss, dtype, "loss")
    for name, g in model.grads().items():
        assert_close(g, P[name].grad, dtype, name)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_flash_attention_gives_the_whole_model_gradients(dtype, monkeypatch):
    """SCRATCHGPT_ATTENTION=flash: the model's attention runs kernels/cuda_flash.py (no stored
    weights), and the loss and every gradient still match torch's."""
    kernels = cuda_kernels()
    from scratchgpt.kernels.ops import FlashAttentionCache
    monkeypatch.setenv("SCRATCHGPT_ATTENTION", "flash")
    was_on = hasattr(backend.ops, "kernels")
    backend.use_kernels(True)
    try:
        assert backend.ops.kernels is kernels
        cfg = sg.GPTConfig(**TINY)
        model = sg.GPTModel(cfg, seed=0, dtype=dtype)
        check_loss_and_gradients_against_torch(model, cfg, dtype)
        assert all(isinstance(b.att.cache, FlashAttentionCache) for b in model.trf_blocks)
    finally:
        backend.use_kernels(was_on)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_flash_kernels_at_gpt2s_head_size(dtype):
    """kernels/cuda_flash.py with its usual tiles at hd = 64, T = 300 (five blocks of 64 query rows,
    ten key tiles of 32, the last ones ragged) against the reference attention in float64.
    float32 sums over up to 300 keys: y within 1e-5, the gradients within 5e-5 (max-relative)."""
    cuda_kernels()
    if cupy.__version__.endswith("standin"):
        pytest.skip("too large for numba's simulator: tests/test_kernels_cuda_flash.py runs small shapes there")
    from scratchgpt.kernels import cuda_flash
    r = np.random.default_rng(7)
    B, H, T, hd = 2, 3, 300, 64
    qkv = r.standard_normal((B, T, 3 * H * hd))
    dy = r.standard_normal((B, T, H * hd))
    y, lse = cuda_flash.flash_attention_forward(cupy.asarray(qkv.astype(dtype)), H)
    dqkv = cuda_flash.flash_attention_backward(cupy.asarray(dy.astype(dtype)), cupy.asarray(qkv.astype(dtype)),
                                               y, lse, H)
    y_ref, cache = ops.attention_forward(qkv, H)             # scratchgpt.ops: the array code, NumPy float64
    tol = {np.float64: (1e-12, 1e-12), np.float32: (1e-5, 5e-5)}[dtype]
    for got, want, t, name in ((y, y_ref, tol[0], "y"), (dqkv, ops.attention_backward(dy, cache), tol[1], "dqkv")):
        got = host(got).astype(np.float64)
        err = np.abs(got - want).max() / np.abs(want).max()
        assert err <= t, f"{name}: relative error {err:.3g} > {t:g}"


def usable_cuda_kernels():
    """scratchgpt.kernels.cuda where numba.cuda can run here, else None."""
    from scratchgpt.kernels import cuda
    return cuda if cuda.available() else None


def cuda_kernels():
    k = usable_cuda_kernels()
    if k is None:
        pytest.skip("numba.cuda cannot run here: pip install 'numba-cuda[cu12]' (or [cu13])")
    return k


def test_the_kernel_switch_gives_cupy_arrays_the_cuda_kernels():
    x = cupy.zeros((2, 3), dtype=cupy.float32)
    k = cuda_kernels()                   # skips first where numba.cuda cannot run
    try:
        backend.use_kernels(True)
        assert isinstance(x, cupy.ndarray) and backend.ops.kernels is k
        backend.use_kernels(False)
        assert not hasattr(backend.ops, "kernels")                         # the reference ops
    finally:
        backend.use_kernels(True)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cuda_kernels_match_the_reference_ops_on_cupy_arrays(dtype):
    """Each op through the numba.cuda kernels against the same op's array code in float64."""
    cuda_kernels()
    tol = {np.float64: 1e-12, np.float32: 1e-5}[dtype]
    r = np.random.default_rng(3)
    x = r.standard_normal((4, 7, 48)).astype(dtype)            # LayerNorm, GELU: (B, T, C)
    w, b, dx_in = r.standard_normal(48).astype(dtype), r.standard_normal(48).astype(dtype), \
        r.standard_normal(x.shape).astype(dtype)
    s, ds = (3 * r.standard_normal((2, 3, 33, 33))).astype(dtype), r.standard_normal((2, 3, 33, 33)).astype(dtype)
    logits = (4 * r.standard_normal((2, 40, 1000))).astype(dtype)
    tg = r.integers(0, 1000, (2, 40))
    tg[0, ::3] = -100

    def run(cast):
        g = lambda a: cupy.asarray(a.astype(cast))            # noqa: E731
        ops = backend.ops                                     # the fast ops, or the reference ones
        out, c = ops.layernorm_forward(g(x), g(w), g(b))
        y, sc = ops.causal_softmax_forward(g(s))
        h, gc = ops.gelu_forward(g(x))
        loss, cc = ops.cross_entropy_forward(g(logits), cupy.asarray(tg))
        return dict(ln=out, ln_mean=c[2], ln_rstd=c[3], ln_back=ops.layernorm_backward(g(dx_in), c),
                    softmax=y, softmax_back=ops.causal_softmax_backward(g(ds), sc),
                    gelu=h, gelu_back=ops.gelu_backward(g(dx_in), gc),
                    loss=float(loss), dlogits=ops.cross_entropy_backward(1.0, cc))

    try:
        backend.use_kernels(True)
        ours = run(dtype)
        backend.use_kernels(False)
        ref = run(np.float64)
    finally:
        backend.use_kernels(True)
    def arrays(v):                      # a backward's (dx, dw, db) or a single result
        return v if isinstance(v, tuple) else (v,)

    for name in ref:
        for a, b_ in zip(arrays(ours[name]), arrays(ref[name])):
            if not isinstance(a, float):
                assert isinstance(a, cupy.ndarray) and a.dtype == dtype, name
            a, b_ = np.asarray(host(a), np.float64), np.asarray(host(b_), np.float64)
            err = np.abs(a - b_).max() / max(np.abs(b_).max(), 1e-300)
            assert err <= tol, f"{name}: relative error {err:.3g} > {tol:g}"
    y = host(ours["softmax"])
    assert not y[..., np.triu_indices(33, 1)[0], np.triu_indices(33, 1)[1]].any()     # exactly 0
    assert not host(ours["dlogits"]).reshape(2, 40, 1000)[tg == -100].any()


def test_a_training_step_stays_on_the_device_and_matches_the_cpu():
    """CuPy refuses implicit device->host conversion (numpy.asarray of a device array raises),
    so a step that completes made no hidden transfer through NumPy."""
    cfg = sg.GPTConfig(**TINY)
    r = np.random.default_rng(1)
    batches = [(r.integers(0, 11, (4, 8)), r.integers(0, 11, (4, 8))) for _ in range(5)]
    losses = {}
    for name in ("numpy", "cupy"):
        backend.use(name)
        model = sg.GPTModel(cfg, seed=0)
        opt = sg.AdamW(model, lr=1e-2)
        losses[name] = []
        for x, y in batches:
            losses[name].append(model.loss(x, y))
            model.zero_grad()
            model.backward()
            sg.clip_grad_norm(model, 1.0)
            opt.step()
    np.testing.assert_allclose(losses["cupy"], losses["numpy"], rtol=1e-4)


def test_kv_cache_sampling_on_the_gpu():
    model = sg.GPTModel(sg.GPTConfig(**TINY), seed=0).eval()
    out = generate(model, np.array([[1, 2, 3]]), 12, temperature=1.0, top_k=4, rng=backend.rng(0))
    again = generate(model, np.array([[1, 2, 3]]), 12, temperature=1.0, top_k=4, rng=backend.rng(0),
                     use_cache=False)
    assert isinstance(out, cupy.ndarray) and out.shape == (1, 15)
    np.testing.assert_array_equal(host(out), host(again))


def test_checkpoints_move_between_devices(tmp_path):
    model = sg.GPTModel(sg.GPTConfig(**TINY), seed=0)
    path = tmp_path / "gpu.npz"
    checkpoint.save(path, model, optimizer=sg.AdamW(model))
    idx = np.array([[1, 2, 3]])
    gpu_logits = host(model(idx))
    backend.use("numpy")
    ck = checkpoint.load(path)                          # a GPU run, sampled on the CPU
    assert isinstance(ck.model.flat_params, np.ndarray)
    np.testing.assert_allclose(ck.model(idx), gpu_logits, rtol=1e-4, atol=1e-5)
    checkpoint.save(tmp_path / "cpu.npz", ck.model)
    backend.use("cupy")
    back = checkpoint.load(tmp_path / "cpu.npz")        # and back onto the GPU
    assert isinstance(back.model.flat_params, cupy.ndarray)


@pytest.mark.parametrize("prec", ["tf32", "bf16"])
def test_lower_precision_training_follows_the_fp32_loss_curve(prec):
    """The tiny model of benchmarks/gpu_precision.py, 50 steps in tf32 / bf16 against fp32 (its
    docstring justifies the tolerances). On the CuPy stand-in TF32 does nothing; bf16 is emulated
    there by rounding the inputs, where numba's simulator runs the kernels."""
    if cupy.__version__.endswith("standin") and prec == "tf32":
        pytest.skip("the CuPy stand-in has no TF32")
    if prec == "bf16":
        cuda_kernels()                                  # bf16 products are the GPU kernels' (cuda_gemm)
    import os
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    try:
        from gpu_precision import PRECISION_RTOL, loss_curve
    finally:
        sys.path.pop(0)
    fp32, low = loss_curve("fp32", 50), loss_curve(prec, 50)
    worst = max(abs(a - b) / abs(b) for a, b in zip(low, fp32))
    assert worst <= PRECISION_RTOL[prec], f"{prec} left the fp32 loss curve by {worst:.2e} (relative)"
    assert low != fp32                                  # the precision changed something
    assert fp32[-1] < 0.7 * fp32[0]                     # and the curve itself fell: the model learned


def test_the_nccl_path_sums_on_the_gpu_in_a_world_of_one():
    """Data parallelism on GPUs sums gradients through NCCL (scratchgpt/distributed.py); a world of
    one rank needs no mpiexec, so it runs wherever a GPU does."""
    pytest.importorskip("cupy.cuda.nccl", reason="this CuPy has no NCCL (the CPU stand-in has none)")
    from scratchgpt import distributed
    world = distributed.World()
    x = cupy.arange(10, dtype=cupy.float32)
    world._nccl = distributed.nccl_communicator(world)
    world._nccl_sum_(x)
    np.testing.assert_array_equal(cupy.asnumpy(x), np.arange(10, dtype=np.float32))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_cublas_products_match_cupy_matmul(dtype):
    """kernels/cuda_gemm.py: every transpose, a shared 2-D operand, batches, and beta accumulation."""
    from scratchgpt.kernels import cuda_gemm
    r = np.random.default_rng(5)
    a = cupy.asarray(r.standard_normal((3, 5, 7)).astype(dtype))
    b = cupy.asarray(r.standard_normal((3, 7, 4)).astype(dtype))
    w = cupy.asarray(r.standard_normal((7, 4)).astype(dtype))
    check = lambda got, want: assert_close(host(got), host(want), dtype)
    check(cuda_gemm.gemm(a, b), a @ b)
    check(cuda_gemm.gemm(a, w), a @ w)                                          # a weight shared by the batch
    check(cuda_gemm.gemm(a[0], w), a[0] @ w)
    check(cuda_gemm.gemm(a.swapaxes(1, 2).copy(), b, trans_a=True), a @ b)
    check(cuda_gemm.gemm(a, b.swapaxes(1, 2).copy(), trans_b=True), a @ b)
    check(cuda_gemm.gemm(a[0].T.copy(), b[0].T.copy(), trans_a=True, trans_b=True), a[0] @ b[0])
    out = cupy.asarray(r.standard_normal((5, 4)).astype(dtype))
    want = out + a[1] @ b[1]
    check(cuda_gemm.gemm(a[1], b[1], out=out, beta=1.0), want)
    check(cuda_gemm.gemm(a, b, alpha=0.125), (a @ b) * 0.125)
    if not cupy.__version__.endswith("standin"):            # (the stand-in has no cuBLAS: CuPy's matmul)
        assert cuda_gemm.why_not == "", cuda_gemm.why_not   # cuBLAS itself ran, not the fallback


@pytest.mark.parametrize("drop_rate, attention", [(0.0, "gemm"), (0.2, "gemm"), (0.0, "flash")])
def test_a_step_replayed_as_a_cuda_graph_matches_the_eager_step(drop_rate, attention, monkeypatch):
    """scratchgpt/cuda_graph.py: the same losses, gradients and dropout draws as eager steps, over
    several replays with new batches (float64: the same kernels, so equal to rounding); also with
    the flash attention's kernels recorded in the graph."""
    cuda_kernels()
    monkeypatch.setenv("SCRATCHGPT_ATTENTION", attention)
    from scratchgpt import cuda_graph
    cfg = sg.GPTConfig(**TINY, drop_rate=drop_rate)
    r = np.random.default_rng(2)
    batches = [(r.integers(0, 11, (4, 8)), r.integers(0, 11, (4, 8))) for _ in range(5)]
    runs = {}
    for mode in ("eager", "graph"):
        model = sg.GPTModel(cfg, seed=0, dtype="float64")
        assert cuda_graph.usable(model) == ""
        step = cuda_graph.GraphStep(model) if mode == "graph" else None
        opt = sg.AdamW(model, lr=1e-2)
        runs[mode] = losses = []
        for x, y in batches:
            model.zero_grad()
            if step is None:
                losses.append(model.loss(x, y))
                model.backward()
            else:
                losses.append(step(x, y))
            losses.append(host(model.flat_grads).copy())
            opt.step()
        runs[mode + " draws"] = model.rng.draws
        if step is not None:
            assert step.graph is not None and step.failed == "", step.failed
        assert type(model.trf_blocks[0].att.cache).__name__ == \
            {"flash": "FlashAttentionCache", "gemm": "AttentionCache"}[attention]
    assert runs["graph draws"] == runs["eager draws"]
    for got, want in zip(runs["graph"], runs["eager"]):
        assert_close(np.asarray(got), np.asarray(want), np.float64)


def test_the_bf16_kernel_rounds_as_the_array_code():
    """kernels/cuda_gemm.to_bf16 on a CuPy array (the numba.cuda kernel) against its NumPy array
    code (checked against torch in tests/test_precision.py), bit for bit, NaN included."""
    cuda_kernels()
    from scratchgpt.kernels.cuda_gemm import to_bf16
    r = np.random.default_rng(4)
    x = r.integers(0, 2 ** 32, 100_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    np.testing.assert_array_equal(host(to_bf16(cupy.asarray(x))), to_bf16(x))
