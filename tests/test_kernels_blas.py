"""kernels/blas.py's gemm (MKL's where the mkl wheel is installed, NumPy's matmul otherwise)
against NumPy for every transpose, alpha and beta the linear layers use, and the fast linear
layer on it: dW added into a gradient buffer, the tied head's transposed view included."""
import os
import platform
import sys

import numpy as np
import pytest

import scratchgpt.kernels as K
from scratchgpt.kernels import blas
from scratchgpt.kernels.ops import FastOps

DTYPES = [np.float64, np.float32]
TOL = {np.float64: 1e-12, np.float32: 1e-5}


@pytest.fixture(params=["mkl", "numpy"])
def library(request, monkeypatch):
    """Run a test on MKL (where installed) and on the NumPy fallback."""
    if request.param == "mkl" and blas._load_mkl() is None:
        if os.environ.get("CI") == "true" and sys.platform == "linux" and platform.machine() == "x86_64":
            pytest.fail("CI installs the mkl extra (README's test command), yet MKL did not load")
        pytest.skip("the mkl wheel is not installed (pip install -e \".[mkl]\", x86-64 Linux)")
    monkeypatch.setattr(blas, "_looked", True)
    monkeypatch.setattr(blas, "_mkl", blas._load_mkl() if request.param == "mkl" else None)
    assert blas.library() == request.param
    return request.param


def close(a, b, dtype):
    err = np.abs(a - b).max() / np.abs(b).max()
    assert err <= TOL[dtype], f"relative error {err:.3g}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (1.0, 1.0), (0.5, 2.0)])
def test_gemm_matches_numpy(dtype, trans_a, trans_b, alpha, beta, library):
    r = np.random.default_rng(0)
    opa, opb = r.standard_normal((7, 5)), r.standard_normal((5, 3))
    a = np.ascontiguousarray(opa.T if trans_a else opa, dtype=dtype)
    b = np.ascontiguousarray(opb.T if trans_b else opb, dtype=dtype)
    out0 = r.standard_normal((7, 3)).astype(dtype)
    out = out0.copy() if beta else None
    got = blas.gemm(a, b, out=out, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta)
    assert out is None or got is out
    close(got, alpha * opa @ opb + beta * out0, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_of_strided_views_and_empty_sums(dtype, library):
    r = np.random.default_rng(1)
    big = r.standard_normal((9, 12)).astype(dtype)
    a, b = big[::2, :5], big[1:6, ::3]                 # neither C- nor F-contiguous: NumPy's path
    close(blas.gemm(a, b), a.astype(np.float64) @ b, dtype)
    assert blas.gemm(np.zeros((0, 4), dtype), np.ones((4, 3), dtype)).shape == (0, 3)
    out = np.full((2, 3), 7.0, dtype)
    np.testing.assert_array_equal(blas.gemm(np.ones((2, 0), dtype), np.ones((0, 3), dtype), out=out, beta=1.0), 7.0)
    np.testing.assert_array_equal(blas.gemm(np.ones((2, 0), dtype), np.ones((0, 3), dtype), out=out), 0.0)


def test_gemm_says_what_is_wrong():
    with pytest.raises(ValueError, match="do not multiply"):
        blas.gemm(np.ones((2, 3)), np.ones((4, 5)))
    with pytest.raises(ValueError, match="out must be"):
        blas.gemm(np.ones((2, 3)), np.ones((3, 5)), out=np.ones((5, 2)))
    with pytest.raises(ValueError, match="beta != 0 needs out"):
        blas.gemm(np.ones((2, 3)), np.ones((3, 5)), beta=1.0)
    with pytest.raises(TypeError, match="float32 or two float64"):
        blas.gemm(np.ones((2, 3), np.float32), np.ones((3, 5)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transposed", [False, True])
def test_fast_linear_on_blas_adds_dw_into_the_gradient_buffer(dtype, transposed, library):
    r = np.random.default_rng(2)
    ops = FastOps(K)
    x = r.standard_normal((2, 5, 6)).astype(dtype)
    dout = r.standard_normal((2, 5, 9)).astype(dtype)
    table = r.standard_normal((9, 6)).astype(dtype)
    w = table.T if transposed else r.standard_normal((6, 9)).astype(dtype)   # the tied head: wte.T
    b = r.standard_normal(9).astype(dtype)
    out, cache = ops.linear_forward(x, w, b)
    close(out, x.astype(np.float64) @ w + b, dtype)
    g0 = r.standard_normal((9, 6) if transposed else (6, 9)).astype(dtype)
    g = g0.copy()
    target = g.T if transposed else g
    dx, dw, db = ops.linear_backward(dout, cache, dw_out=target)
    assert dw is target
    x2, d2 = x.reshape(-1, 6).astype(np.float64), dout.reshape(-1, 9).astype(np.float64)
    close(target, (g0.T if transposed else g0) + x2.T @ d2, dtype)
    close(dx, dout.astype(np.float64) @ w.T, dtype)
    close(db, d2.sum(axis=0), dtype)


def test_the_cpu_kernels_serve_their_products_through_blas(monkeypatch):
    calls = []
    monkeypatch.setattr(K, "blas_gemm", lambda *a, **kw: calls.append(1) or blas.gemm(*a, **kw))
    FastOps(K).linear_forward(np.ones((2, 3)), np.ones((3, 4)))
    assert calls


def test_scratchgpt_blas_numpy_turns_mkl_off(monkeypatch):
    monkeypatch.setenv("SCRATCHGPT_BLAS", "numpy")
    assert blas._load_mkl() is None
