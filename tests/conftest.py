"""Shared helpers: tolerances, the kernel switch as a fixture, torch as the oracle."""
import os
import re
from collections import defaultdict

import numpy as np
import pytest

from scratchgpt import backend
from scratchgpt import ops as reference_ops

# The brief's promise: float64 agrees with torch autograd to 1e-9 relative, float32 to 1e-4.
TOL = {np.float64: 1e-9, np.float32: 1e-4}


def rel_err(ours, ref):
    """Normwise relative error max|a - b| / max|b| (ours may be a CuPy array, ref a tensor).

    The scale is the reference's own largest entry, however small, so a small gradient gets
    the same 1e-9 / 1e-4 bound as a large one. Only a reference that is exactly zero
    everywhere is compared on an absolute scale (max|a|), where dividing would be 0 / 0."""
    a = np.asarray(backend.to_numpy(ours), dtype=np.float64)
    b = ref.detach().cpu().numpy() if hasattr(ref, "detach") else np.asarray(ref)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, f"shape {a.shape} != {b.shape}"
    if not b.size:
        return 0.0
    scale = np.abs(b).max()
    return float(np.abs(a - b).max() / (scale if scale > 0 else 1.0))


def corpus_missing(reason):
    """A corpus package is not installed: skip on a reader's machine, but fail under CI=true,
    where the README's install command installs both packages and a skip would hide a broken
    install (or a corpus loader that stopped finding its files)."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI=true: the corpus tests must run there, not skip)")
    pytest.skip(reason)


WORST = defaultdict(float)      # (test, dtype) -> worst relative error seen, for the summary


def assert_close(ours, ref, dtype, what=""):
    err = rel_err(ours, ref)
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
    name = re.sub(r"\[.*", "", test.split("::")[-1])
    key = (test.split("::")[0].split("/")[-1], name, np.dtype(dtype).name)
    WORST[key] = max(WORST[key], err)
    assert err <= TOL[np.dtype(dtype).type], f"{what}: relative error {err:.3e} > {TOL[np.dtype(dtype).type]:.0e}"
    return err


@pytest.fixture(params=["numpy", "numba"])
def kernels(request):
    """Run a test with the reference NumPy ops and again with the numba kernels."""
    if request.param == "numba":
        pytest.importorskip("numba")
    was_on = backend.ops is not reference_ops
    backend.use_kernels(request.param == "numba")
    yield request.param
    backend.use_kernels(was_on)            # as it was (SCRATCHGPT_KERNELS=numpy stays off for later tests)


@pytest.fixture(params=["serial", "parallel"])
def kernel_threads(request, monkeypatch):
    """Run a kernel test with the serial twin of every numba kernel, and again with the
    parallel one (whatever the input size; see scratchgpt.kernels._common.twins)."""
    common = pytest.importorskip("scratchgpt.kernels._common")
    monkeypatch.setattr(common, "PARALLEL", request.param)
    yield request.param


def pytest_terminal_summary(terminalreporter):
    """Print the worst relative error against torch per test and dtype: the numbers the
    gradient-check suite promises (float64 <= 1e-9, float32 <= 1e-4)."""
    if not WORST:
        return
    tr = terminalreporter
    tr.section("worst relative error against torch (per test, all shapes)")
    tests = sorted({k[:2] for k in WORST})
    tr.write_line(f"{'test':76} {'float64':>10} {'float32':>10}")
    for f, t in tests:
        row = [WORST.get((f, t, d)) for d in ("float64", "float32")]
        cells = [f"{v:10.1e}" if v is not None else f"{'-':>10}" for v in row]
        tr.write_line(f"{f + '::' + t:76} {cells[0]} {cells[1]}")
