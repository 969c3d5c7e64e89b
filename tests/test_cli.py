"""The `scratchgpt` command end to end in a temporary folder."""
import json
import os
import subprocess
import sys

import pytest

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 30


def run(*args, cwd, check=True):
    env = dict(os.environ, SCRATCHGPT_CACHE=str(cwd / "cache"))
    p = subprocess.run([sys.executable, "-m", "scratchgpt", *args], cwd=cwd, env=env,
                       capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
    if check:
        assert p.returncode == 0, p.stderr
    return p


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    (d / "tiny.txt").write_text(TEXT)
    p = run("train", "--text-file", "tiny.txt", "--n-layers", "1", "--n-heads", "2", "--emb-dim", "16",
            "--context-length", "16", "--batch-size", "4", "--max-iters", "20", "--eval-interval", "10",
            "--eval-iters", "2", "--sample-tokens", "10", "--out-dir", "run", "--no-progress", cwd=d)
    assert "iter 20: train loss" in p.stdout
    return d


def test_train_writes_the_run_folder(trained):
    rows = [json.loads(l) for l in open(trained / "run" / "metrics.jsonl")]
    assert [r["iter"] for r in rows] == [0, 10, 20]
    assert {"iter", "train_loss", "val_loss", "lr", "elapsed_s", "tokens_per_s"} <= set(rows[0])
    assert (trained / "run" / "samples.txt").stat().st_size > 0
    assert (trained / "run" / "ckpt_latest.npz").exists()


def test_sample_and_eval(trained):
    p = run("sample", "--out-dir", "run", "--prompt", "All:", "--max-new-tokens", "15", "--seed", "1",
            "--num-samples", "2", cwd=trained)
    assert p.stdout.count("All:") == 2 and "--- sample 2 ---" in p.stdout
    again = run("sample", "--out-dir", "run", "--prompt", "All:", "--max-new-tokens", "15", "--seed", "1",
                "--num-samples", "2", cwd=trained)
    assert again.stdout == p.stdout                      # --seed makes it reproducible
    greedy = run("sample", "--out-dir", "run", "--prompt", "All:", "--temperature", "0", "--top-k", "3",
                 cwd=trained)
    assert greedy.stdout.startswith("All:")
    e = json.loads(run("eval", "--out-dir", "run", "--text-file", "tiny.txt", cwd=trained).stdout)
    assert e["split"] == "val" and e["dataset"] == "tiny.txt"
    assert 0.0 < e["loss"] < 5.0        # the value itself is checked by hand in test_cli_paths.py


def test_resume_continues_the_run(trained):
    p = run("train", "--out-dir", "run", "--resume", "--max-iters", "30", "--no-progress", cwd=trained)
    assert "resuming run at iteration 20" in p.stdout
    rows = [json.loads(l) for l in open(trained / "run" / "metrics.jsonl")]
    assert [r["iter"] for r in rows] == [0, 10, 20, 30]


def test_user_errors_are_one_line_without_traceback(trained):
    p = run("sample", "--out-dir", "run", "--prompt", "Zebra€", cwd=trained, check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "'€'" in p.stderr and "not in the vocabulary" in p.stderr
    (trained / "broken").mkdir(exist_ok=True)
    (trained / "broken" / "ckpt_latest.npz").write_bytes(b"garbage")
    p = run("sample", "--out-dir", "broken", cwd=trained, check=False)
    assert p.returncode == 2 and "not a readable checkpoint" in p.stderr and "Traceback" not in p.stderr
    p = run("train", "--text-file", "missing.txt", "--out-dir", "x", cwd=trained, check=False)
    assert p.returncode == 2 and "missing.txt" in p.stderr and "Traceback" not in p.stderr
    p = run("train", "--dataset", "klingon", "--out-dir", "x", cwd=trained, check=False)
    assert p.returncode == 2 and "klingon" in p.stderr and "Traceback" not in p.stderr


def test_cuda_graph_is_asked_for_only_where_it_can_be(trained):
    """--cuda-graph on the CPU stops with the reason; the default (on wherever it can be) and
    --no-cuda-graph train on the CPU as before."""
    common = ("train", "--text-file", "tiny.txt", "--n-layers", "1", "--n-heads", "2", "--emb-dim", "16",
              "--context-length", "16", "--batch-size", "4", "--max-iters", "2", "--eval-interval", "2",
              "--eval-iters", "1", "--sample-tokens", "2", "--no-progress", "--backend", "numpy")
    p = run(*common, "--out-dir", "graph", "--cuda-graph", cwd=trained, check=False)
    assert p.returncode == 2 and "--cuda-graph: CUDA graphs need the GPU backend" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    run(*common, "--out-dir", "nograph", "--no-cuda-graph", cwd=trained)
