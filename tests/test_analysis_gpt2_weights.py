"""scratchgpt/analysis/gpt2_weights.py (`scratchgpt lab weights`): GPT-2's weights before and after
training, on a tiny random Hugging Face GPT-2 with 12 blocks written here.

"After" is written as the fresh seeded init plus known changes, so the statistics and the
observations the report draws from them can be checked against what was put in."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest

import scratchgpt as sg
from scratchgpt.analysis.gpt2_weights import gpt2_weights_lab, observations, parse_blocks
from test_gpt2 import write_hf_folder

CFG = sg.GPTConfig(vocab_size=24, context_length=8, emb_dim=16, n_heads=2, n_layers=12, qkv_bias=True)


def trained_state(l1=0.05, l2=0.2, outlier=None, shift=0.0, seed=1):
    """The seed-0 init plus noise: ln_1 weights moved by `l1`, ln_2 weights by `l2`, every other
    tensor by 0.01; `outlier` = (name, value) sets one entry of a tensor; `shift` is added to all
    of block 10's c_fc weight."""
    rng = np.random.default_rng(seed)
    state = {k: np.array(v, dtype=np.float32) for k, v in sg.GPTModel(CFG, seed=0).state_dict().items()}
    for k, v in state.items():
        scale = l1 if k.endswith("ln_1.weight") else l2 if k.endswith("ln_2.weight") else 0.01
        v += scale * rng.standard_normal(v.shape).astype(np.float32)
    if outlier:
        name, value = outlier
        state[name][3] = value
    state["transformer.h.10.mlp.c_fc.weight"] += shift
    return state


def write_gpt2(path, **kw):
    return str(write_hf_folder(path, CFG, trained_state(**kw)))


def test_blocks_are_parsed_and_checked():
    assert parse_blocks(None, 12) == [5, 6, 7, 8, 9, 10, 11]          # the study's H5-H11
    assert parse_blocks(None, 4) == [0, 1, 2, 3]
    assert parse_blocks("0,3,8-9", 12) == [0, 3, 8, 9]
    with pytest.raises(ValueError, match="block 12 is outside the model's 12 blocks"):
        parse_blocks("5-12", 12)
    with pytest.raises(ValueError, match="runs backwards"):
        parse_blocks("9-5", 12)


def test_statistics_figures_and_report_of_a_tiny_gpt2(tmp_path):
    res = gpt2_weights_lab(tmp_path / "report", gpt2_dir=write_gpt2(tmp_path / "gpt2"))
    out = tmp_path / "report"
    assert res["blocks"] == list(range(5, 12))
    for name in ["report.md", "study_layernorms.png", "summary.png", "tensors.csv", "heads.csv", "weights.json"] + \
            [f"block_{b}.png" for b in range(5, 12)] + [f"block_{b}_heads.png" for b in range(5, 12)]:
        assert (out / name).stat().st_size > 0, name
    rows = {r["label"]: r for r in res["rows"]}
    # the study's tensors: L1, L2 (weight and bias) of H5..H11 and FL; and every other tensor of a block
    assert {f"H{b} {p} {q}" for b in range(5, 12) for p in ("L1", "L2") for q in ("weight", "bias")} <= set(rows)
    assert {"FL weight", "FL bias", "H5 q weight", "H11 mlp proj bias"} <= set(rows)
    assert not any(label.startswith("H4 ") for label in rows)
    # statistics against numbers computed here: ln_2 moved by 0.2 N(0, 1), so its RMS change is ~0.2
    before = sg.GPTModel(CFG, seed=0).state_dict()
    after = sg.load_gpt2(str(tmp_path / "gpt2")).state_dict()
    k = "transformer.h.7.attn.c_attn.weight"
    w, w0 = np.float64(after[k][:, 16:32]), before[k][:, 16:32]                # block 7's keys: columns C..2C
    r = rows["H7 k weight"]
    assert r["std"] == pytest.approx(w.std(), rel=1e-6)
    assert r["rel_change"] == pytest.approx(np.linalg.norm(w - w0) / np.linalg.norm(w0), rel=1e-5)
    assert r["kurtosis"] == pytest.approx(((w - w.mean()) ** 4).mean() / w.var() ** 2 - 3, rel=1e-5)
    assert r["beyond_3std"] == pytest.approx(np.mean(np.abs(w - w.mean()) > 3 * w.std()))
    assert rows["H7 L2 weight"]["before_std"] == 0 and 0.1 < rows["H7 L2 weight"]["rms_change"] < 0.3
    assert math.isnan(rows["H7 L1 bias"]["rel_change"])                   # starts at zero: RMS change instead
    # per head: 2 heads x (q, k, v, c_proj) for each of the 7 blocks
    assert len(res["head_rows"]) == 7 * 2 * 4
    assert {h["label"] for h in res["head_rows"]} >= {"H5 head0 q", "H11 head1 c_proj"}
    report = (out / "report.md").read_text()
    assert "![layer norms](study_layernorms.png)" in report and "| H9 L1 weight |" in report
    assert "the L2s changed more than the L1s" in report


def test_observations_follow_the_numbers(tmp_path):
    """Swap which layer norm moved more, and add an outlier: the report's sentences change with them."""
    a = gpt2_weights_lab(tmp_path / "a", gpt2_dir=write_gpt2(tmp_path / "ga", l1=0.05, l2=0.2), blocks="8-11",
                         figures=False)
    b = gpt2_weights_lab(tmp_path / "b", gpt2_dir=write_gpt2(tmp_path / "gb", l1=0.2, l2=0.05,
                                                             outlier=("transformer.h.9.ln_1.weight", 40.0), shift=0.05),
                         blocks="8-11", figures=False)
    text_a, text_b = " ".join(a["observations"]), " ".join(b["observations"])
    assert "in 4 of 4 blocks" in text_a and "the L2s changed more than the L1s" in text_a
    assert "in 0 of 4 blocks" in text_b and "the L1s changed more than the L2s" in text_b
    assert "the heaviest is H9 L1 weight" in text_b and "largest |value| 40.000" in text_b
    assert "no outliers" in text_a                   # Gaussian changes only: no heavy tails and "![" not in (tmp_path / "a" / "report.md").read_text()
    assert ": balanced." in text_a and "still centred" in text_a and "no longer centred" in text_b
    # the same function on hand-made numbers: equal L1 and L2 changes are a tie
    rows = [dict(r, rms_change=0.1) if " L1 " in r["label"] or " L2 " in r["label"] else r for r in b["rows"]]
    assert "changed about as much" in " ".join(observations(rows, b["head_rows"]))


def test_lab_weights_command_and_plain_lab_still_need_out_dir(tmp_path):
    folder = write_gpt2(tmp_path / "gpt2")
    r = subprocess.run([sys.executable, "-m", "scratchgpt", "lab", "weights", "--gpt2-dir", folder, "--blocks", "11",
                        "--report-dir", str(tmp_path / "rep")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "L1 against L2" in r.stdout and (tmp_path / "rep" / "block_11_heads.png").exists()
    assert json.loads((tmp_path / "rep" / "weights.json").read_text())["blocks"] == [11]
    r = subprocess.run([sys.executable, "-m", "scratchgpt", "lab", "weights", "--gpt2-dir", folder, "--blocks", "12"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 2 and "block 12 is outside the model's 12 blocks (0-11)" in r.stderr
    r = subprocess.run([sys.executable, "-m", "scratchgpt", "lab"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "required: --out-dir" in r.stderr
    from scratchgpt.analysis.lab import cmd_lab
    from scratchgpt.cli import build_parser
    a = build_parser().parse_args(["lab", "--out-dir", "x", "--quick"])          # the lab itself, as before
    assert a.func is cmd_lab and (a.out_dir, a.quick, a.lab_mode) == ("x", True, None)


def test_lab_weights_of_one_of_our_runs_compares_with_its_iteration_zero(tmp_path):
    from scratchgpt.train import TrainConfig, train
    text = tmp_path / "t.txt"
    text.write_text("hello world, the quick brown fox. " * 40)
    train(TrainConfig(text_file=str(text), n_layers=2, n_heads=2, emb_dim=8, context_length=8, batch_size=4,
                      max_iters=10, eval_interval=10, eval_iters=1, sample_tokens=4, out_dir=str(tmp_path / "run")),
          progress=False, log=lambda *a: None)
    res = gpt2_weights_lab(tmp_path / "rep", out_dir=str(tmp_path / "run"), figures=False)
    assert res["blocks"] == [0, 1]
    rows = {r["label"]: r for r in res["rows"]}
    assert rows["H0 L1 weight"]["before_std"] == 0.0                       # the run's own init: ones
    assert 0 < rows["H1 q weight"]["rel_change"] < 1


def test_lab_weights_refuses_a_model_that_is_not_gpt2(tmp_path):
    from scratchgpt import checkpoint
    from scratchgpt.tokenizer import CharTokenizer
    model = sg.Qwen3Model(sg.Qwen3Config(vocab_size=5, context_length=8, emb_dim=8, n_heads=2, n_layers=1,
                                         hidden_dim=8, head_dim=4, n_kv_groups=1))
    checkpoint.save(tmp_path / "q.npz", model, CharTokenizer.from_text("abcde"))
    with pytest.raises(ValueError, match="lab weights reads GPT-2 models; .* holds a Qwen3Model"):
        gpt2_weights_lab(tmp_path / "rep", out_dir=str(tmp_path / "q.npz"))
