"""Command-line paths a user takes that the end-to-end CLI test does not: eval's --split and
--max-batches (checked against the loss computed here), sample --top-p and sample --gpt2-dir."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import scratchgpt as sg
from scratchgpt import checkpoint
from scratchgpt.generate import generate_text
from scratchgpt.gpt2 import save_gpt2
from scratchgpt.tokenizer import BPETokenizer
from scratchgpt.train import TrainConfig, train

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 30


def run(*args, cwd):
    env = dict(os.environ, SCRATCHGPT_CACHE=str(cwd / "cache"), OMP_NUM_THREADS="1")
    command = os.path.join(os.path.dirname(sys.executable), "scratchgpt")
    p = subprocess.run([command, *args], cwd=cwd, env=env, capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=300)
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli-paths")
    (d / "tiny.txt").write_text(TEXT)
    cfg = TrainConfig(text_file=str(d / "tiny.txt"), n_layers=1, n_heads=2, emb_dim=16, context_length=16,
                      batch_size=4, max_iters=10, eval_interval=10, eval_iters=1, sample_tokens=4,
                      out_dir=str(d / "run"), seed=0)
    old = os.environ.get("SCRATCHGPT_CACHE")
    os.environ["SCRATCHGPT_CACHE"] = str(d / "cache")
    try:
        train(cfg, progress=False, log=lambda *a: None)
    finally:
        os.environ.pop("SCRATCHGPT_CACHE") if old is None else os.environ.update(SCRATCHGPT_CACHE=old)
    return d


def loss_by_hand(model, ids, n_windows):
    """Mean next-token loss over the first n_windows non-overlapping windows of ids."""
    T = model.cfg.context_length
    rows = np.stack([ids[i * T:i * T + T + 1] for i in range(n_windows)]).astype(np.int64)
    return model.loss(rows[:, :-1], rows[:, 1:])


@pytest.mark.parametrize("split", ["train", "val"])
def test_eval_split_and_max_batches_score_the_windows_they_name(trained, split):
    ck = checkpoint.load(str(trained / "run" / "ckpt_latest.npz"))
    ids = np.asarray(ck.tokenizer.encode(TEXT))
    n_train = int(len(ids) * 0.9)                            # the 90/10 split, train first
    part = ids[:n_train] if split == "train" else ids[n_train:]
    T = ck.model.cfg.context_length
    every = (len(part) - 1) // T
    assert every > 6
    out = json.loads(run("eval", "--out-dir", "run", "--text-file", "tiny.txt", "--split", split,
                         "--batch-size", "3", "--max-batches", "2", cwd=trained))
    assert out["split"] == split
    assert out["loss"] == pytest.approx(loss_by_hand(ck.model, part, 6), rel=1e-5)       # 2 batches of 3
    assert out["perplexity"] == pytest.approx(np.exp(out["loss"]), rel=1e-12)
    whole = json.loads(run("eval", "--out-dir", "run", "--text-file", "tiny.txt", "--split", split,
                           "--batch-size", "3", cwd=trained))
    assert whole["loss"] == pytest.approx(loss_by_hand(ck.model, part, every), rel=1e-5)
    assert whole["loss"] != pytest.approx(out["loss"], rel=1e-6)


def test_sample_top_p_is_used(trained):
    args = ("sample", "--out-dir", "run", "--prompt", "All:", "--max-new-tokens", "40", "--seed", "3")
    greedy = run(*args, "--temperature", "0", cwd=trained)
    tiny_p = run(*args, "--temperature", "2", "--top-p", "1e-6", cwd=trained)    # only the top token is left
    assert tiny_p == greedy
    free = run(*args, "--temperature", "2", cwd=trained)
    assert free != greedy
    ck = checkpoint.load(str(trained / "run" / "ckpt_latest.npz"))
    half = run(*args, "--temperature", "2", "--top-p", "0.5", cwd=trained)
    assert half == generate_text(ck.model, ck.tokenizer, "All:", 40, 2.0, None, 0.5, seed=3)[0] + "\n"


def test_sample_from_a_gpt2_folder(tmp_path):
    tok = BPETokenizer.gpt2()
    model = sg.GPTModel(sg.GPTConfig(vocab_size=tok.vocab_size, context_length=16, emb_dim=8, n_heads=2,
                                     n_layers=1, qkv_bias=True), seed=1)
    model.flat_params *= 30            # away from near-uniform logits, so every weight shows in the text
    save_gpt2(model, tmp_path / "gpt2")
    out = run("sample", "--gpt2-dir", "gpt2", "--prompt", "Hello, world", "--max-new-tokens", "6",
              "--temperature", "0", cwd=tmp_path)
    want = generate_text(model, tok, "Hello, world", 6, 0.0)[0]
    assert out == want + "\n"
