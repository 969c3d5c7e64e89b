"""The CuPy code path, run in CI without a GPU, through a stand-in for CuPy (tests/fakecupy:
NumPy arrays whose type says "cupy", with CuPy's refusals of host/device mixing; see its
docstring). Each check runs in a subprocess with tests/fakecupy first on PYTHONPATH, so
`import cupy` finds the stand-in there and nowhere else.

- tests/test_gpu.py, the real-GPU tests, pass on the stand-in: ops and whole-model gradients
  against torch, a training step, KV-cache sampling, checkpoints between devices;
- again with numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1), so that the numba.cuda kernels
  receive the stand-in's arrays through the same hand-off as CuPy's (a few tests: it is slow);
- the command line: train --backend cupy with dropout, stop, --resume, sample and eval, and the
  GPU run's checkpoint sampled on the CPU.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
STANDIN = Path(__file__).resolve().parent / "fakecupy"
TEXT = ("To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer "
        "the slings and arrows of outrageous fortune, or to take arms against a sea of troubles. ") * 40


def standin_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("SCRATCHGPT_BACKEND", "NUMBA_ENABLE_CUDASIM")}
    env["PYTHONPATH"] = os.pathsep.join([str(STANDIN)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.update(extra)
    return env


def run(args, env, timeout=600):
    r = subprocess.run([sys.executable] + args, cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    return r.returncode, r.stdout + r.stderr


def counts(out):
    return {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error)", out)}


def test_the_gpu_tests_pass_on_the_cupy_standin():
    rc, out = run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_gpu.py"], standin_env())
    assert rc == 0, out[-6000:]
    c = counts(out)
    # all but the twelve that need numba.cuda (without the simulator it is not usable here: three
    # kernel tests, the three CUDA-graph ones, bf16's rounding kernel and loss curve, the flash
    # attention's four), the TF32 loss curve (the stand-in has no TF32) and the NCCL sum (no NCCL)
    assert c.get("passed", 0) >= 19 and c.get("skipped", 0) == 14, out[-2000:]


def test_the_cuda_kernels_take_cupy_arrays_under_the_simulator():
    rc, out = run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_gpu.py", "-k",
                   "kernel_switch or (whole_model and numba and variant0) or (flash_attention_gives and float64)"],
                  standin_env(NUMBA_ENABLE_CUDASIM="1"))
    assert rc == 0, out[-6000:]
    assert counts(out) == {"passed": 4}, out[-2000:]        # the switch, gradients in float64 and float32,
                                                            # and in float64 with SCRATCHGPT_ATTENTION=flash


def metrics(run_dir):
    with open(run_dir / "metrics.jsonl") as f:
        return [{k: r[k] for k in ("iter", "train_loss", "val_loss", "lr", "grad_norm")}
                for r in map(json.loads, f)]


def test_train_checkpoint_resume_sample_and_eval_on_the_cupy_standin(tmp_path):
    """With the reference array code on both sides (SCRATCHGPT_KERNELS=numpy) the stand-in does the
    CPU's arithmetic, so a CuPy run stopped and resumed must match a CPU run bit for bit: the same
    batches and the same dropout masks (scratchgpt/rng.py), resumed exactly."""
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    env = standin_env(SCRATCHGPT_CACHE=str(tmp_path / "cache"), SCRATCHGPT_KERNELS="numpy")
    common = ["-m", "scratchgpt", "train", "--text-file", str(text), "--n-layers", "2", "--n-heads", "2",
              "--emb-dim", "16", "--context-length", "16", "--batch-size", "4", "--eval-interval", "5",
              "--eval-iters", "2", "--sample-tokens", "10", "--drop-rate", "0.2", "--lr-schedule", "constant",
              "--seed", "3", "--no-progress"]
    cpu, gpu = tmp_path / "cpu", tmp_path / "gpu"
    rc, out = run(common + ["--out-dir", str(cpu), "--max-iters", "12", "--backend", "numpy"], env)
    assert rc == 0, out[-4000:]
    rc, out = run(common + ["--out-dir", str(gpu), "--max-iters", "7", "--backend", "cupy"], env)
    assert rc == 0, out[-4000:]                  # the crash of issue 20 (2) was here, at the first checkpoint
    rc, out = run(common + ["--out-dir", str(gpu), "--max-iters", "12", "--backend", "cupy", "--resume"], env)
    assert rc == 0 and "resuming" in out, out[-4000:]
    assert metrics(gpu) == metrics(cpu)
    a, b = (np.load(d / "ckpt_latest.npz", allow_pickle=False) for d in (cpu, gpu))
    for k in a.files:
        if k != "meta.json":
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)

    rc, out = run(["-m", "scratchgpt", "sample", "--out-dir", str(gpu), "--prompt", "To be",
                   "--max-new-tokens", "20", "--precision", "tf32"], {**env, "SCRATCHGPT_BACKEND": "cupy"})
    assert rc == 0 and out.startswith("To be") and len(out) > 20, out[-4000:]
    rc, out = run(["-m", "scratchgpt", "eval", "--out-dir", str(gpu), "--text-file", str(text),
                   "--batch-size", "4", "--max-batches", "2"], {**env, "SCRATCHGPT_BACKEND": "cupy"})
    assert rc == 0, out[-4000:]
    assert np.isfinite(json.loads(out.strip().splitlines()[-1])["loss"])
    rc, out = run(["-m", "scratchgpt", "sample", "--out-dir", str(gpu), "--prompt", "To be",
                   "--max-new-tokens", "20"], env)                                 # the GPU run on the CPU
    assert rc == 0 and out.startswith("To be"), out[-4000:]


def test_finetune_cls_finetune_sft_and_chat_on_the_cupy_standin(tmp_path):
    """Chapters 6 and 7 and the chat on CuPy arrays, from a small BPE base run trained on CuPy."""
    env = standin_env(SCRATCHGPT_CACHE=str(tmp_path / "cache"), SCRATCHGPT_KERNELS="numpy")
    rows = [(f"cheap pills offer {i}", "spam") for i in range(20)] + [(f"see you at {i} tonight", "ham")
                                                                      for i in range(20)]
    (tmp_path / "sms.csv").write_text("label,text\n" + "".join(f"{l},{t}\n" for t, l in rows))
    entries = [{"instruction": "Join the two words with a dash.", "input": f"{a} {b}", "output": f"{a}-{b}"}
               for a, b in [("apple", "river"), ("stone", "cloud"), ("green", "tiger"), ("piano", "window")] * 5]
    (tmp_path / "data.json").write_text(json.dumps(entries))
    text = tmp_path / "base.txt"
    text.write_text((" ".join(t for t, _ in rows) + " " + json.dumps(entries) + " ") * 4)
    base, cls, sft = tmp_path / "base", tmp_path / "cls", tmp_path / "sft"
    rc, out = run(["-m", "scratchgpt", "train", "--text-file", str(text), "--tokenizer", "bpe:300", "--backend",
                   "cupy", "--n-layers", "1", "--n-heads", "2", "--emb-dim", "16", "--context-length", "128",
                   "--batch-size", "2", "--max-iters", "2", "--eval-interval", "2", "--eval-iters", "1",
                   "--sample-tokens", "4", "--out-dir", str(base), "--no-progress"], env)
    assert rc == 0, out[-4000:]
    cupy_env = {**env, "SCRATCHGPT_BACKEND": "cupy"}
    rc, out = run(["-m", "scratchgpt", "finetune-cls", "--out-dir", str(base), "--csv", str(tmp_path / "sms.csv"),
                   "--epochs", "1", "--save-dir", str(cls), "--lora-rank", "2"], cupy_env)
    assert rc == 0 and "accuracy after fine-tuning" in out, out[-4000:]
    rc, out = run(["-m", "scratchgpt", "finetune-sft", "--out-dir", str(base), "--json", str(tmp_path / "data.json"),
                   "--epochs", "1", "--save-dir", str(sft), "--show", "1", "--max-new-tokens", "4"], cupy_env)
    assert rc == 0 and (sft / "ckpt_latest.npz").exists(), out[-4000:]
    r = subprocess.run([sys.executable, "-m", "scratchgpt", "chat", "--out-dir", str(sft), "--max-new-tokens", "4"],
                       cwd=ROOT, env=cupy_env, input="Join apple and river.\n", capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]


def test_the_gpu_check_script_and_its_benchmarks_run_on_the_cupy_standin():
    """benchmarks/gpu_check.sh gets one run on a GPU machine: its shell parses, and the Python it
    calls (precision curves, launch counts, the speed benchmark without torch) runs here."""
    r = subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    env = standin_env()
    rc, out = run(["benchmarks/gpu_precision.py", "--steps", "2"], env)
    assert rc == 0 and "tf32: largest relative difference from fp32 over 2 steps" in out, out[-3000:]
    assert "bf16: --precision bf16 needs scratchgpt's GPU kernels (numba.cuda), which are off here" in out
    rc, out = run(["benchmarks/gpu_launches.py", "--steps", "1"], env)
    assert rc == 0 and "tiny: 0 numba.cuda launches per step (array code only)" in out, out[-3000:]
    rc, out = run(["benchmarks/gpu.py", "--configs", "tiny", "--steps", "1", "--repeats", "1", "--warmup", "1",
                   "--ours-only", "--flash", "tiny"], env)
    assert rc == 0, out[-3000:]
    assert "flash attention (SCRATCHGPT_ATTENTION=flash)" in out and "tiny    bf16" in out, out[-3000:]
    row = next(l for l in out.splitlines() if l.startswith("tiny ") and "skipped" in l)
    assert len(row.split()) == 14        # config, tokens, 3 of ours, 3 graph (not here), 3 skipped torch, 3 ratios


GRAPH_SCRIPT = """
import numpy as np
import scratchgpt as sg
from scratchgpt import backend, cuda_graph
backend.use("cupy")
model = sg.GPTModel(sg.GPTConfig(vocab_size=11, context_length=8, emb_dim=8, n_heads=2, n_layers=2,
                                 drop_rate=0.1), seed=0, dtype="float64")
assert cuda_graph.usable(model) == "", cuda_graph.usable(model)
step = cuda_graph.GraphStep(model)
r = np.random.default_rng(0)
x, y = r.integers(0, 11, (2, 8)), r.integers(0, 11, (2, 8))
step(x, y)                                      # eager: counts the dropout draws
print("draws per step", step.n_draws)
before = model.rng.draws
try:
    step(x, y)                                  # records (the stand-in refuses synchronisation), then replays
    print("replayed?")
except NotImplementedError as e:
    print("recorded;", e, "| failed:", repr(step.failed), "| draws advanced:", model.rng.draws - before)
"""


def test_the_cuda_graph_step_records_without_a_host_synchronisation():
    """The stand-in refuses what CUDA refuses while a stream is captured (a device-to-host or
    host-to-device copy, a synchronisation), so recording the step there proves the step has none;
    it cannot replay, so the replay's own check is tests/test_gpu.py's on a GPU."""
    rc, out = run(["-c", GRAPH_SCRIPT], standin_env(NUMBA_ENABLE_CUDASIM="1"))
    assert rc == 0, out[-4000:]
    assert "draws per step 7" in out, out[-2000:]             # embedding + 3 per block, 2 blocks
    assert "recorded; the CuPy stand-in records a CUDA graph but cannot replay it | failed: '' | " \
           "draws advanced: 7" in out, out[-2000:]


def test_the_cuda_graph_step_records_the_flash_attention_without_a_host_synchronisation():
    """The same recording with SCRATCHGPT_ATTENTION=flash and no dropout (dropout in attention
    keeps the cuBLAS path): kernels/cuda_flash.py's launches are recorded, with no synchronisation."""
    script = GRAPH_SCRIPT.replace("drop_rate=0.1", "drop_rate=0.0") + \
        "\nprint('attention cache:', type(model.trf_blocks[0].att.cache).__name__)\n"
    rc, out = run(["-c", script], standin_env(NUMBA_ENABLE_CUDASIM="1", SCRATCHGPT_ATTENTION="flash"))
    assert rc == 0, out[-4000:]
    assert "recorded; the CuPy stand-in records a CUDA graph but cannot replay it | failed: '' | " \
           "draws advanced: 0" in out, out[-2000:]
    assert "attention cache: FlashAttentionCache" in out, out[-2000:]
