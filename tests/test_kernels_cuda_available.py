"""kernels/cuda.py's available(): it tells the truth (a trivial kernel must compile and run),
survives numba-cuda's numpy.row_stack registration on NumPy 2.5, and backend warns once when
CuPy arrays cannot get the numba.cuda kernels."""
import sys
import warnings

import numpy as np
import pytest

from scratchgpt import backend
from scratchgpt.kernels import cuda as K


@pytest.fixture
def fresh(monkeypatch):
    """available() forgets its cached answer (and gets it back afterwards)."""
    monkeypatch.setattr(K, "_available", None)
    monkeypatch.setattr(K, "why_unavailable", "")
    return K


def test_the_row_stack_step_is_scoped_to_numba_cudas_import_and_first_compile(monkeypatch):
    if hasattr(np, "row_stack"):                     # NumPy < 2.5: nothing to do, nothing touched
        before = np.row_stack
        with K.numpy_row_stack_for_numba_cuda():
            assert np.row_stack is before
        assert np.row_stack is before
        monkeypatch.delattr(np, "row_stack")         # and now as NumPy 2.5, which removed it
    with K.numpy_row_stack_for_numba_cuda():
        assert np.row_stack is np.vstack
    assert not hasattr(np, "row_stack")


class NumbaCudaOnNumpy25:
    """A numba.cuda that reads numpy.row_stack when it first compiles (as numba-cuda 0.30.4
    does), with a 'device' that is host memory."""

    def __init__(self):
        self.compiled = False

    def is_available(self):
        return True

    def to_device(self, a):
        return type("DeviceArray", (), {"a": a, "copy_to_host": lambda self: self.a.copy()})()

    def launch(self, x):
        if not self.compiled:
            overloaded = np.row_stack                # AttributeError on NumPy 2.5 without the step
            self.compiled = overloaded is np.vstack
        x.a[:] = 2.0 * np.arange(x.a.size)


def test_available_compiles_a_kernel_through_the_row_stack_step(fresh, monkeypatch):
    if hasattr(np, "row_stack"):
        monkeypatch.delattr(np, "row_stack")
    fake = NumbaCudaOnNumpy25()
    monkeypatch.setattr(K, "cuda", fake)
    monkeypatch.setitem(sys.modules, "cupy", None)   # the fake cannot take CuPy arrays: probe numba's only
    monkeypatch.setattr(K, "_probe_kernel", {(2, 32): fake.launch})
    assert K.available() is True and K.why_unavailable == ""
    assert fake.compiled and not hasattr(np, "row_stack")


def test_available_is_false_when_a_kernel_cannot_run_even_if_cuda_says_it_can(fresh, monkeypatch):
    if K.cuda is None:
        pytest.skip("numba has no CUDA target here")
    if K.cuda.is_available():
        pytest.skip("a GPU is here: the kernels do run")
    monkeypatch.setattr(K.cuda, "is_available", lambda: True)      # the claim issue 20 met
    assert K.available() is False
    assert "trivial kernel failed" in K.why_unavailable
    assert K.available() is False                                   # cached: no second probe


def test_the_cupy_backend_without_usable_kernels_warns_once_then_takes_the_array_code(fresh, monkeypatch):
    from scratchgpt import ops as reference_ops
    monkeypatch.setattr(K, "_probe", lambda: "numba.cuda sees no GPU")
    monkeypatch.setattr(backend, "name", "cupy")                   # as backend.use("cupy") sets it
    monkeypatch.setattr(backend, "_kernels_on", True)              # SCRATCHGPT_KERNELS=numba
    monkeypatch.setattr(backend, "_warned", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):                                         # chosen again, as after each use()
            monkeypatch.delitem(vars(backend), "ops", raising=False)
            assert backend.ops is reference_ops
    monkeypatch.delitem(vars(backend), "ops", raising=False)      # the next use chooses for numpy again
    assert len(caught) == 1 and "sees no GPU" in str(caught[0].message)
