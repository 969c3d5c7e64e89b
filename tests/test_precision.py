"""--precision fp32|tf32|bf16 (scratchgpt/precision.py): the CPU refuses tf32 and bf16 with the
reason; on CuPy, tf32 sets CuPy's float32 compute type, and bf16 is refused until it is written."""
import sys
import types

import numpy as np
import pytest

from scratchgpt import cli, precision


@pytest.mark.parametrize("command", [
    ["train", "--max-iters", "0"],
    ["sample", "--out-dir", "no-such-run"],
    ["eval", "--out-dir", "no-such-run"],
])
@pytest.mark.parametrize("choice", ["tf32", "bf16"])
def test_the_cpu_refuses_gpu_precisions_with_the_reason(command, choice, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if command[0] == "train":
        command = command + ["--backend", "numpy"]
    assert cli.main(command + ["--precision", choice]) == 2
    err = capsys.readouterr().err
    assert f"--precision {choice} needs a GPU" in err and "--backend cupy" in err
    assert not (tmp_path / "out").exists()               # refused before anything was written


def test_fp32_is_the_default_and_runs_on_the_cpu():
    precision.use("fp32", "numpy")
    assert cli.build_parser().parse_args(["sample", "--out-dir", "x"]).precision == "fp32"
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        precision.use("fp16", "numpy")


@pytest.fixture
def cupy_linalg(monkeypatch):
    """A cupy._core._routines_linalg that records set_compute_type calls."""
    calls = []
    mod = types.ModuleType("cupy._core._routines_linalg")
    mod.set_compute_type = lambda dtype, t: calls.append((np.dtype(dtype), t))
    core = types.ModuleType("cupy._core")
    core._routines_linalg = mod
    monkeypatch.setitem(sys.modules, "cupy._core", core)
    monkeypatch.setitem(sys.modules, "cupy._core._routines_linalg", mod)
    monkeypatch.delenv("CUPY_TF32", raising=False)
    return calls


def test_tf32_on_cupy_sets_the_float32_compute_type_and_fp32_sets_it_back(cupy_linalg, monkeypatch):
    import os
    precision.use("tf32", "cupy")
    assert os.environ["CUPY_TF32"] == "1" and cupy_linalg == [(np.dtype(np.float32), 7)]   # COMPUTE_TYPE_TF32
    precision.use("fp32", "cupy")
    assert os.environ["CUPY_TF32"] == "0" and cupy_linalg[-1] == (np.dtype(np.float32), 1)  # DEFAULT


def test_bf16_on_cupy_is_refused_until_it_is_written(cupy_linalg):
    with pytest.raises(ValueError, match="bf16 .* not written yet"):
        precision.use("bf16", "cupy")
    assert cupy_linalg == []
