"""Tests of the flash attention (kernels/cuda_flash.py) against the reference attention
(scratchgpt.ops.attention_forward / attention_backward, computed in float64): float64 within
1e-12, float32 within 1e-5 (max|a - b| / max|b|), and the log-sum-exp against NumPy.

They run as tests/test_kernels_cuda.py's do: on a GPU here, and without one under numba's CUDA
simulator in a second Python (test_flash_attention_under_the_simulator). The simulator runs every
thread as Python, so shapes stay small (T up to 37, hd 8 or 16), and the tiles are shrunk to 8
rows a block and 4 a tile so that these T span several tiles with a ragged last one.
"""
import math
import shutil
import subprocess

import numpy as np
import pytest

from cudasim_helpers import RUN_HERE, SIMULATOR, run_under_simulator
from scratchgpt import backend, ops


on_the_device = pytest.mark.skipif(not RUN_HERE, reason="no GPU: these run under the simulator, in "
                                   "test_flash_attention_under_the_simulator")
TOL = {np.float32: 1e-5, np.float64: 1e-12}
DTYPES = [np.float32, np.float64]


@pytest.mark.skipif(RUN_HERE, reason="the checks run directly here")
def test_flash_attention_under_the_simulator():
    run_under_simulator(__file__, "the flash attention")


@pytest.mark.skipif(SIMULATOR, reason="the simulator compiles nothing")
def test_the_flash_kernels_compile_for_the_gpu(monkeypatch, tmp_path):
    """NVVM types and compiles the three kernels at GPT-2's head size, float32 and float64 (the
    simulator would accept Python that numba.cuda cannot compile), and ptxas assembles them for
    sm_90 where it is installed; float32 does no float64 math."""
    cuda = pytest.importorskip("numba.cuda")
    try:
        from numba.cuda.cudadrv import nvvm
        import numba.cuda.dispatcher as dispatcher
    except ImportError:
        pytest.skip("this numba.cuda has another layout")
    if not nvvm.is_available():
        pytest.skip("no NVVM (the CUDA compiler) here")
    from numba import float32, float64
    from scratchgpt.kernels import cuda_flash
    if not cuda.is_available():
        if not hasattr(dispatcher, "get_current_device"):
            pytest.skip("this numba.cuda has another layout")
        monkeypatch.setattr(dispatcher, "get_current_device",
                            lambda: type("Hopper", (), {"compute_capability": (9, 0)})())
    for f in (float32, float64):
        A2, A3 = f[:, ::1], f[:, :, ::1]
        forward, dq, dkdv, _, _ = cuda_flash._kernels(np.dtype(str(f)), 64)
        for kernel, sig in ((forward, (A3, f, A3, A2)), (dq, (A3, A3, A3, A2, f, A2, A3)),
                            (dkdv, (A3, A3, A2, A2, f, A3))):
            ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=(9, 0))
            assert ".entry" in ptx
            if f == float32:
                assert ".f64" not in ptx, f"{kernel.py_func.__name__} does float64 arithmetic on float32 data"
            if shutil.which("ptxas"):           # the assembler's limits (registers, shared memory) too
                (tmp_path / "k.ptx").write_text(ptx)
                r = subprocess.run(["ptxas", "-arch=sm_90", str(tmp_path / "k.ptx"), "-o", str(tmp_path / "k.cubin")],
                                   capture_output=True, text=True)
                assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def F():
    from scratchgpt.kernels import cuda, cuda_flash
    assert cuda.available()
    return cuda_flash


@pytest.fixture(params=["tiles of 8 and 4 rows", "usual tiles"])
def tiles(request, F):
    saved = F.ROWS_PER_BLOCK, F.ROWS_PER_TILE
    if request.param == "tiles of 8 and 4 rows":
        F.ROWS_PER_BLOCK, F.ROWS_PER_TILE = 8, 4
    yield request.param
    F.ROWS_PER_BLOCK, F.ROWS_PER_TILE = saved


@pytest.fixture
def reference():
    backend.use_kernels(False)
    yield ops
    backend.use_kernels(True)


def dev(a):
    if not SIMULATOR:
        try:
            import cupy
            return cupy.asarray(a)
        except ImportError:
            pass
    from numba import cuda
    return cuda.to_device(np.ascontiguousarray(a))


def host(a):
    if hasattr(a, "get"):
        return a.get()
    if hasattr(a, "copy_to_host"):
        return a.copy_to_host()
    return np.asarray(a)


def assert_close(a, b, dtype, what):
    a, b = np.asarray(host(a), dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, f"{what}: shape {a.shape} != {b.shape}"
    err = np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300)
    assert err <= TOL[dtype], f"{what}: relative error {err:.3g} > {TOL[dtype]:g}"


def lse_numpy(qkv, n_heads):
    """log sum_{j <= t} exp(q_t . k_j / sqrt(hd)) per (b * H + h, t), written out directly."""
    B, T, C3 = qkv.shape
    hd = C3 // 3 // n_heads
    q, k, _ = ops.split_heads(qkv, n_heads)                        # (B, H, T, hd)
    s = q @ k.swapaxes(-1, -2) / math.sqrt(hd)                     # (B, H, T, T)
    s = np.where(np.tril(np.ones((T, T), dtype=bool)), s, -np.inf)
    m = s.max(-1, keepdims=True)
    return (m[..., 0] + np.log(np.exp(s - m).sum(-1))).reshape(B * n_heads, T)


def problem(B, H, T, hd, dtype, seed=0):
    r = np.random.default_rng(seed)
    qkv = (2 * r.standard_normal((B, T, 3 * H * hd))).astype(dtype)   # scores of a few units: peaked rows
    dy = r.standard_normal((B, T, H * hd)).astype(dtype)
    return qkv, dy


# ---------------------------------------------------------------- against the reference

@on_the_device
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B, H, T, hd", [(1, 2, 1, 8), (2, 2, 13, 8), (1, 2, 37, 16)])
def test_flash_attention_matches_the_reference(F, tiles, reference, B, H, T, hd, dtype):
    qkv, dy = problem(B, H, T, hd, dtype, seed=T)
    y, lse = F.flash_attention_forward(dev(qkv), H)
    dqkv = F.flash_attention_backward(dev(dy), dev(qkv), y, lse, H)
    y_ref, cache = reference.attention_forward(qkv.astype(np.float64), H)
    dqkv_ref = reference.attention_backward(dy.astype(np.float64), cache)
    assert y.dtype == lse.dtype == dqkv.dtype == dtype
    assert y.shape == (B, T, H * hd) and lse.shape == (B * H, T) and dqkv.shape == qkv.shape
    assert_close(y, y_ref, dtype, "y")
    assert_close(lse, lse_numpy(qkv.astype(np.float64), H), dtype, "lse")
    assert_close(dqkv, dqkv_ref, dtype, "dqkv")


@on_the_device
def test_one_token_attends_to_itself(F, tiles):
    """T = 1: the weight is 1, so y is the value, lse the one score, and dq = dk = 0, dv = dy."""
    qkv, dy = problem(2, 2, 1, 8, np.float64, seed=5)
    y, lse = F.flash_attention_forward(dev(qkv), 2)
    dqkv = host(F.flash_attention_backward(dev(dy), dev(qkv), y, lse, 2))
    np.testing.assert_allclose(host(y), qkv[:, :, 32:], rtol=1e-15)
    q, k = qkv[:, 0, :16].reshape(2, 2, 8), qkv[:, 0, 16:32].reshape(2, 2, 8)
    np.testing.assert_allclose(host(lse).ravel(), (q * k).sum(-1).ravel() / math.sqrt(8), rtol=1e-14)
    assert not dqkv[:, :, :32].any()
    np.testing.assert_array_equal(dqkv[:, :, 32:], dy)


@on_the_device
def test_the_backward_repeats_its_bits(F, tiles):
    """No atomics: two backward passes give the same bits."""
    qkv, dy = problem(1, 2, 21, 8, np.float32, seed=3)
    y, lse = F.flash_attention_forward(dev(qkv), 2)
    a = host(F.flash_attention_backward(dev(dy), dev(qkv), y, lse, 2))
    b = host(F.flash_attention_backward(dev(dy), dev(qkv), y, lse, 2))
    np.testing.assert_array_equal(a, b)


@on_the_device
def test_large_scores_stay_finite(F, reference):
    """Scores in the hundreds: the running max keeps every exp at or below 1."""
    qkv, dy = problem(1, 2, 11, 8, np.float32, seed=7)
    qkv *= 20
    y, lse = F.flash_attention_forward(dev(qkv), 2)
    dqkv = F.flash_attention_backward(dev(dy), dev(qkv), y, lse, 2)
    assert np.all(np.isfinite(host(y))) and np.all(np.isfinite(host(dqkv)))
    y_ref, _ = reference.attention_forward(qkv.astype(np.float64), 2)
    assert_close(y, y_ref, np.float32, "y")


@on_the_device
def test_the_forward_writes_into_out(F):
    qkv, _ = problem(1, 2, 5, 8, np.float64)
    y, _ = F.flash_attention_forward(dev(qkv), 2)
    out = dev(np.zeros((1, 5, 16)))
    assert F.flash_attention_forward(dev(qkv), 2, out=out)[0] is out
    np.testing.assert_array_equal(host(out), host(y))


@on_the_device
def test_flash_errors_name_the_offending_value(F):
    with pytest.raises(ValueError, match=r"\(30\) must be 3 \* n_heads \* head_dim for n_heads=4"):
        F.flash_attention_forward(dev(np.zeros((1, 2, 30))), 4)
    with pytest.raises(ValueError, match=r"lse must be \(2, 3\)"):
        F.flash_attention_backward(dev(np.zeros((1, 3, 8))), dev(np.zeros((1, 3, 24))), dev(np.zeros((1, 3, 8))),
                                   dev(np.zeros((2, 4))), 2)
    with pytest.raises(TypeError, match="device array .* NumPy"):
        F.flash_attention_forward(np.zeros((1, 2, 24)), 2)


# ---------------------------------------------------------------- the switch in kernels/ops.py (no GPU needed)

def test_scratchgpt_attention_chooses_the_flash_kernels_without_dropout(monkeypatch):
    """FastOps on a kernel module with the flash functions: SCRATCHGPT_ATTENTION=flash routes
    attention to them (with a cache of qkv, y and lse), except when dropout is drawn."""
    from scratchgpt.kernels import ops as fast_ops

    class GPUKernels:            # a stand-in kernel module: records what was called
        __name__ = "gpu stand-in"
        calls = []

        @staticmethod
        def flash_attention_forward(qkv, n_heads):
            GPUKernels.calls.append("forward")
            return "y", "lse"

        @staticmethod
        def flash_attention_backward(dy, qkv, y, lse, n_heads):
            GPUKernels.calls.append(("backward", dy, qkv, y, lse, n_heads))
            return "dqkv"

    fast = fast_ops.FastOps(GPUKernels)
    monkeypatch.setenv("SCRATCHGPT_ATTENTION", "flash")
    y, cache = fast.attention_forward("qkv", 3)
    assert y == "y" and isinstance(cache, fast_ops.FlashAttentionCache) and cache.drop_mask is None
    assert fast.attention_backward("dy", cache) == "dqkv"
    assert GPUKernels.calls == ["forward", ("backward", "dy", "qkv", "y", "lse", 3)]
    assert fast.attention_inference("qkv", 3) == "y"                 # sampling and eval take it too
    assert fast._flash(0.1, None) and fast._flash(0.0, object())    # no generator, or p = 0: nothing drawn
    assert not fast._flash(0.1, object())                             # dropout drawn: the gemm path
    monkeypatch.setenv("SCRATCHGPT_ATTENTION", "gemm")
    assert not fast._flash(0.0, None)
    monkeypatch.delenv("SCRATCHGPT_ATTENTION")
    assert not fast._flash(0.0, None)                                 # the default
    monkeypatch.setenv("SCRATCHGPT_ATTENTION", "flashy")
    with pytest.raises(ValueError, match="SCRATCHGPT_ATTENTION='flashy' is not known"):
        fast._flash(0.0, None)
    monkeypatch.setenv("SCRATCHGPT_ATTENTION", "flash")
    from scratchgpt import kernels as cpu_kernels
    assert not fast_ops.FastOps(cpu_kernels)._flash(0.0, None)        # the CPU never takes it
