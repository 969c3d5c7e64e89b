"""kernels/blas.py's matmul (MKL's gemm where the optional wheel is installed, NumPy's matmul
otherwise) against NumPy, for every layout the linear layers hand it, and the fast linear
backward's dW added into a gradient buffer, the tied head's transposed view included."""
import numpy as np
import pytest

from scratchgpt.kernels import blas
from scratchgpt.kernels import ops as fast_ops
import scratchgpt.kernels as K

DTYPES = [np.float64, np.float32]
TOL = {np.float64: 1e-12, np.float32: 1e-5}


@pytest.fixture(params=["mkl", "numpy"])
def library(request, monkeypatch):
    """Run a test on MKL (where installed) and on the NumPy fallback."""
    if request.param == "mkl" and blas._load_mkl() is None:
        pytest.skip("the optional mkl wheel is not installed (pip install -e \".[mkl]\")")
    monkeypatch.setattr(blas, "_looked", True)
    monkeypatch.setattr(blas, "_mkl", blas._load_mkl() if request.param == "mkl" else None)
    assert blas.library() == request.param
    return request.param


def layout(a, kind):
    """The same matrix as a C-contiguous array ("C") or as the transpose of one ("F")."""
    return np.ascontiguousarray(a) if kind == "C" else np.asfortranarray(a)


def close(a, b, dtype):
    err = np.abs(a - b).max() / np.abs(b).max()
    assert err <= TOL[dtype], f"relative error {err:.3g}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("la,lb,lo", [("C", "C", "C"), ("F", "C", "C"), ("C", "F", "C"), ("F", "F", "F"),
                                      ("C", "C", "F")])
@pytest.mark.parametrize("add", [False, True])
def test_matmul_matches_numpy_in_every_layout(dtype, la, lb, lo, add, library):
    r = np.random.default_rng(0)
    a = layout(r.standard_normal((7, 5)).astype(dtype), la)
    b = layout(r.standard_normal((5, 3)).astype(dtype), lb)
    out0 = r.standard_normal((7, 3)).astype(dtype)
    out = layout(out0.copy(), lo)
    got = blas.matmul(a, b, out=out, add=add)
    assert got is out
    close(out, a.astype(np.float64) @ b + (out0 if add else 0), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_of_strided_views_and_without_out(dtype, library):
    r = np.random.default_rng(1)
    big = r.standard_normal((9, 12)).astype(dtype)
    a, b = big[::2, :5], big[1:6, ::3]                 # neither C- nor F-contiguous
    close(blas.matmul(a, b), a.astype(np.float64) @ b, dtype)
    assert blas.matmul(np.zeros((0, 4), dtype), np.ones((4, 3), dtype)).shape == (0, 3)
    out = np.full((2, 3), 7.0, dtype)
    np.testing.assert_array_equal(blas.matmul(np.ones((2, 0), dtype), np.ones((0, 3), dtype), out=out), 0.0)


def test_matmul_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="needs"):
        blas.matmul(np.ones((2, 3)), np.ones((4, 5)))
    with pytest.raises(ValueError, match="out has shape"):
        blas.matmul(np.ones((2, 3)), np.ones((3, 5)), out=np.ones((5, 2)))
    with pytest.raises(ValueError, match="add=True needs out"):
        blas.matmul(np.ones((2, 3)), np.ones((3, 5)), add=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transposed", [False, True])
def test_fast_linear_adds_dw_into_the_gradient_buffer(dtype, transposed, library):
    r = np.random.default_rng(2)
    ops = fast_ops.FastOps(K)
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


def test_scratchgpt_blas_numpy_turns_mkl_off(monkeypatch):
    monkeypatch.setenv("SCRATCHGPT_BLAS", "numpy")
    assert blas._load_mkl() is None
