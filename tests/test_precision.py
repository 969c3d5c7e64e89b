"""--precision fp32|tf32|bf16 (scratchgpt/precision.py): the CPU refuses tf32 and bf16 with the
reason; on CuPy, tf32 and bf16 set the products' precision (kernels/cuda_gemm.py) and CuPy's own
float32 compute type; bf16's rounding matches torch's bit for bit."""
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


def test_bf16_on_cupy_sets_the_products_to_bf16_and_cupys_own_to_full_float32(cupy_linalg):
    from scratchgpt.kernels import cuda_gemm
    try:
        precision.use("bf16", "cupy")
        assert cuda_gemm._precision == "bf16" and cupy_linalg == [(np.dtype(np.float32), 1)]
        precision.use("tf32", "cupy")
        assert cuda_gemm._precision == "tf32"
    finally:
        precision.use("fp32", "cupy")
    assert cuda_gemm._precision == "fp32"


def test_bf16_rounding_matches_torch_bit_for_bit():
    """kernels/cuda_gemm.to_bf16 (round to nearest, ties to even; NaN stays NaN) against torch's
    float32 -> bfloat16 conversion, on random values, exact ties, the extremes, inf and NaN."""
    torch = pytest.importorskip("torch")
    from scratchgpt.kernels.cuda_gemm import from_bf16, to_bf16
    r = np.random.default_rng(0)
    bits = r.integers(0, 2 ** 32, 200_000, dtype=np.uint64).astype(np.uint32)     # every kind of float32
    ties = (r.integers(0, 2 ** 16, 1000, dtype=np.uint64).astype(np.uint32) << 16) | 0x8000   # exactly half
    special = np.array([0x7F7FFFFF, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7FFFFFFF, 0xFFFFFFFF, 0x00000001,
                        0x80000000, 0x3F808000, 0x3F818000, 0x7F7F8000], dtype=np.uint32)
    x = np.concatenate([bits, ties, special]).view(np.float32)
    ours = to_bf16(x)
    ref = torch.from_numpy(x.copy()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    nan = np.isnan(x)
    np.testing.assert_array_equal(ours[~nan], ref[~nan])
    assert np.isnan(from_bf16(ours[nan])).all()                         # NaN stays NaN (torch's payload may differ)
    np.testing.assert_array_equal(to_bf16(from_bf16(ours[~nan])), ours[~nan])   # bf16 values are exact in float32
