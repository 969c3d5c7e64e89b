"""The analyses (scratchgpt/analysis/): each runs on tiny runs trained here and writes sane files;
`run_lab(quick=True)` runs end to end into a report.md."""
import argparse
import csv
import dataclasses
import importlib.util
import json
import math
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from scratchgpt.analysis import (architecture, corpus, crossdomain, curves, finetune, gradcam, samples,
                                 schedules, softmax, variability, weights)
from scratchgpt.analysis.common import blas_threads, list_checkpoints, load_model
from scratchgpt.model import GPTConfig, GPTModel
from scratchgpt.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]


def words_text(n_chars, seed=0):
    """Sentences from a tiny lexicon: learnable in a few dozen iterations, with real 'words'."""
    rng = np.random.default_rng(seed)
    lex = ["the", "cat", "sat", "on", "mat", "a", "hat", "saw", "big", "red"]
    out = []
    while sum(map(len, out)) < n_chars:
        out.append(" ".join(lex[i] for i in rng.integers(len(lex), size=rng.integers(3, 8))) + ".\n")
    return "".join(out)


def xyz_text(n_chars, seed=1):
    """A different domain with no characters in common with words_text: 'xyz' and a digit, repeated."""
    rng = np.random.default_rng(seed)
    return "".join("xyz" + str(d) for d in rng.integers(0, 3, size=n_chars // 4))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """Two tiny runs (words, xyz) trained 50 iterations with one shared vocabulary."""
    root = tmp_path_factory.mktemp("analysis")
    mp = pytest.MonkeyPatch()
    mp.setenv("SCRATCHGPT_CACHE", str(root / "cache"))
    texts = {"words": words_text(20_000), "xyz": xyz_text(20_000)}
    tok = crossdomain.shared_char_tokenizer(texts.values(), extra=schedules.PROMPT)
    base = TrainConfig(n_layers=2, n_heads=2, emb_dim=32, context_length=16, batch_size=16, max_iters=50,
                       eval_interval=25, eval_iters=4, lr=1e-2, min_lr=1e-3, warmup_iters=5, sample_tokens=20,
                       seed=0)
    runs = {}
    with blas_threads(1):
        for name, text in texts.items():
            f = root / f"{name}.txt"
            f.write_text(text)
            runs[name] = str(root / "runs" / name)
            train(dataclasses.replace(base, text_file=str(f), out_dir=runs[name]), tokenizer=tok,
                  progress=False, log=lambda *a: None)
        yield {"root": root, "runs": runs, "texts": texts, "tok": tok, "base": base}
    mp.undo()


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def nonempty(path):
    return os.path.exists(path) and os.path.getsize(path) > 1000


def test_the_runs_keep_a_checkpoint_per_evaluation(lab):
    assert [it for it, _ in list_checkpoints(lab["runs"]["words"])] == [0, 25, 50]
    _, tok, _ = load_model(list_checkpoints(lab["runs"]["xyz"])[-1][1])
    assert tok.chars == lab["tok"].chars                      # trained with the shared vocabulary


def test_corpus_statistics_have_entropy_between_zero_and_log_vocabulary(lab, tmp_path):
    res = corpus.analyse_corpora(lab["texts"], tmp_path, top=80)
    for name, s in res.items():
        assert s["vocab_size"] == len(set(lab["texts"][name]))
        assert 0.0 < s["entropy_bits"] <= math.log2(s["vocab_size"]) + 1e-9
        assert abs(sum(p for _, _, p in s["top"]) - 1.0) < 1e-9      # fewer than 80 characters: all shown
    assert res["xyz"]["vocab_size"] == 6
    assert nonempty(tmp_path / "corpus_chars.png")
    assert {r["corpus"] for r in read_csv(tmp_path / "corpus_stats.csv")} == {"words", "xyz"}


def test_architecture_counts_add_up_to_the_models_parameters(tmp_path):
    for cfg in (GPTConfig(vocab_size=65, context_length=64, emb_dim=64, n_heads=4, n_layers=3),
                GPTConfig(vocab_size=50, context_length=32, emb_dim=32, n_heads=2, n_layers=2,
                          tie_weights=False, qkv_bias=True, post_norm=True)):
        res = architecture.draw_architecture(cfg, tmp_path)
        assert res["total"] == GPTModel(cfg).num_parameters()
        assert sum(p["params"] for p in res["parts"]) == res["total"]
        assert nonempty(tmp_path / "architecture.png")


def test_samples_over_training_has_one_row_per_checkpoint_and_more_valid_words_at_the_end(lab, tmp_path):
    res = samples.samples_over_training(lab["runs"]["words"], tmp_path, "the ", max_new_tokens=60)
    assert [r["iter"] for r in res["rows"]] == [0, 25, 50]
    for r in res["rows"]:
        assert 0.0 <= r["valid_word_share"] <= 1.0 and len(r["sample"]) == 60
    assert res["rows"][-1]["valid_word_share"] > res["rows"][0]["valid_word_share"]
    assert res["val_text_share"] > 0.99                       # the lexicon (bar a word cut by the split)
    assert nonempty(tmp_path / "samples.png") and len(read_csv(tmp_path / "samples.csv")) == 3
    assert "| iter |" in samples.markdown({"words": res})


def test_variability_gives_distinct_n_in_zero_one_per_seed(lab, tmp_path):
    res = variability.sample_variability(lab["runs"]["words"], tmp_path, "the ", seeds=range(5), max_new_tokens=80)
    assert len(res["rows"]) == 5 and len({r["sample"] for r in res["rows"]}) == 5     # seeds differ
    for r in res["rows"]:
        for k in ("distinct_1", "distinct_2", "distinct_3", "valid_word_share"):
            assert 0.0 <= r[k] <= 1.0
    assert variability.distinct_n("a b a b".split(), 1) == 0.5
    assert variability.distinct_n("a b a b".split(), 2) == 2 / 3
    assert nonempty(tmp_path / "variability.png")


def test_val_loss_recomputed_from_each_checkpoint_equals_the_logged_one(lab, tmp_path):
    res = curves.loss_curves(lab["runs"]["words"], tmp_path)
    assert [r["iter"] for r in res["rows"]] == [0, 25, 50]
    assert all(r["recomputed_val_loss"] is not None for r in res["rows"])
    assert res["max_abs_diff_val"] <= 1e-5 and res["max_abs_diff_train"] <= 1e-5
    assert res["last"]["val_loss"] < res["first"]["val_loss"] - 1.0
    assert nonempty(tmp_path / "curves.png")


def test_cross_domain_diagonal_is_lower_than_off_diagonal(lab, tmp_path):
    res = crossdomain.cross_domain(lab["runs"], tmp_path, max_batches=4)
    L = np.asarray(res["loss"])
    assert res["labels"] == ["words", "xyz"] and not np.isnan(L).any()
    assert L[0, 0] < L[0, 1] and L[1, 1] < L[1, 0]            # each model is best on its own corpus...
    assert L[0, 0] < L[1, 0] and L[1, 1] < L[0, 1]            # ...and each corpus is best read by its own model
    U = np.asarray(res["unseen_share"])
    assert U[0, 0] == 0.0 and U[0, 1] == 1.0                  # the words model never saw x, y, z or digits
    rows = read_csv(tmp_path / "crossdomain.csv")
    assert len(rows) == 4 and nonempty(tmp_path / "crossdomain.png")
    assert "On 2 of 2 corpora" in crossdomain.markdown(res)


def test_cross_domain_without_a_shared_vocabulary_gives_no_score_rather_than_a_wrong_one(lab, tmp_path):
    runs = {}
    with blas_threads(1):
        for name in ("words", "xyz"):                          # each with its own character vocabulary
            runs[name] = str(tmp_path / name)
            train(dataclasses.replace(lab["base"], text_file=str(lab["root"] / f"{name}.txt"), out_dir=runs[name],
                                      max_iters=2, eval_interval=2), progress=False, log=lambda *a: None)
    res = crossdomain.cross_domain(runs, tmp_path / "out", max_batches=1)
    L = np.asarray(res["loss"])
    assert not np.isnan(L[0, 0]) and not np.isnan(L[1, 1]) and np.isnan(L[0, 1]) and np.isnan(L[1, 0])
    assert len(res["notes"]) == 2 and "cannot encode" in res["notes"][0]


def test_finetuning_lowers_the_loss_on_the_new_corpus(lab, tmp_path):
    with blas_threads(1):
        res = finetune.finetune_pairs(lab["runs"], tmp_path, iters=10, eval_interval=5, lr=3e-3,
                                      eval_batches=2, progress=False, log=lambda *a: None)
    assert len(res["summary"]) == 4                           # 2 ordered pairs x (final, early)
    for s in res["summary"]:
        assert s["target_after"] < s["target_before"]
    starts = {(s["source"], s["start"]): s["start_iter"] for s in res["summary"]}
    assert starts[("words", "final")] == 50 and starts[("words", "early")] == 0   # nearest to 50 // 4
    assert {r["iter"] for r in read_csv(tmp_path / "finetune.csv")} == {"0", "5", "10"}
    assert nonempty(tmp_path / "finetune.png")


def test_softmax_probabilities_sum_to_one_and_entropy_is_within_bounds(lab, tmp_path):
    prompts = ["the cat ", "xyz1x"]
    res = softmax.softmax_inspection(lab["runs"], prompts, tmp_path, steps=3, top=7,
                                     focus={"xyz1x": "xyz"})
    V = lab["tok"].vocab_size
    assert len(res["rows"]) == 2 * 3 * 2 * 3                  # models x checkpoints x prompts x steps
    for r in res["rows"]:
        assert abs(r["prob_sum"] - 1.0) < 1e-9
        assert r["top_sum"] <= 1.0 + 1e-9
        assert 0.0 <= r["entropy"] <= math.log(V) + 1e-9
    first = [r["entropy"] for r in res["rows"] if r["iter"] == 0]
    own = {"words": "the cat ", "xyz": "xyz1x"}
    last = [r["entropy"] for r in res["rows"] if r["iter"] == 50 and own[r["model"]] == r["prompt"]]
    assert min(first) > math.log(V) - 0.1 and max(last) < math.log(V) - 1.0   # training sharpens it
    # the xyz model has learnt its cycle: x -> y -> z -> a digit
    xyz = [r["chosen"] for r in res["rows"] if r["model"] == "xyz" and r["prompt"] == "xyz1x" and r["iter"] == 50]
    assert xyz[:2] == ["y", "z"] and xyz[2] in "012"
    d = softmax.next_char_distributions(load_model(list_checkpoints(lab["runs"]["xyz"])[-1][1])[0], lab["tok"], "xy")
    assert len(d) == 3 and len(d[0]["top"]) == 7 and d[0]["chosen"] == "z" and d[0]["p_chosen"] > 0.5
    assert nonempty(tmp_path / "softmax_entropy.png") and nonempty(tmp_path / res["figures"]["xyz1x"])


def test_gradcam_finds_the_position_that_decides_a_copy_task(tmp_path):
    with blas_threads(1):
        toy = gradcam.copy_task_check(tmp_path, n=20, iters=60)
    assert toy["mean_p"] > 0.8                                # the toy model has learnt the task
    assert toy["hits"]["saliency"] >= 16                      # gradient norm at the embeddings
    assert toy["hits"]["attention_input"] >= 8                # gradient x activation where attention reads
    # after the last block nothing mixes positions: only the last one can get a score
    assert toy["last_block_max_abs_off_last"] == 0.0
    assert nonempty(tmp_path / "gradcam_toy.png")


def test_gradcam_scores_have_one_row_per_layer_and_the_target_gradient(lab, tmp_path):
    model, tok, _ = load_model(list_checkpoints(lab["runs"]["words"])[-1][1])
    r = gradcam.gradcam(model, tok, "cat sat on the m", target="a")
    T = len("cat sat on the m")
    assert r["scores"].shape == (3, T) and r["attn_scores"].shape == (2, T) and r["saliency"].shape == (3, T)
    assert r["target"] == "a" and 0.0 < r["p_target"] < 1.0
    assert not model.flat_grads.any()                         # the gradients were cleared
    res = gradcam.gradcam_analysis([{"label": "words", "model": model, "tokenizer": tok,
                                     "prompt": "cat sat on the m"}], tmp_path)
    top = int(np.argmax(model(np.array([tok.encode("cat sat on the m")]))[0, -1]))
    assert res["results"][0]["target"] == tok.decode([top])                  # default target: the top choice
    assert nonempty(tmp_path / "gradcam.png") and len(read_csv(tmp_path / "gradcam.csv")) == 3 * T


def test_weights_csv_has_the_columns_and_a_row_per_tensor_and_head(lab, tmp_path):
    res = weights.weight_distributions(lab["runs"]["words"], tmp_path)
    rows = read_csv(tmp_path / "weights.csv")
    assert list(rows[0]) == weights.COLUMNS
    model = load_model(list_checkpoints(lab["runs"]["words"])[-1][1])[0]
    assert [r["tensor"] for r in rows] == list(model.state_dict())
    heads = read_csv(tmp_path / "weights_heads.csv")
    assert len(heads) == 2 * 2 * 4                            # layers x heads x (q, k, v, c_proj)
    attn = next(r for r in res["rows"] if r["tensor"] == "transformer.h.0.attn.c_attn.weight")
    assert abs(attn["init_std"] - 0.02) < 0.002 and attn["rel_change"] > 0.1
    q0 = next(r for r in res["head_rows"] if r["tensor"] == "h0.head0.q")
    assert q0["shape"] == "32x16"
    for f in ("weights_layers.png", "weights_heads.png", "weights_final.png"):
        assert nonempty(tmp_path / f)


def test_schedules_differ_only_in_the_learning_rate(lab, tmp_path):
    base = dataclasses.replace(lab["base"], text_file=str(lab["root"] / "words.txt"), max_iters=60,
                               eval_interval=20, lr=5e-3, warmup_iters=10)
    with blas_threads(1):
        res = schedules.compare_schedules(base, tmp_path, lab["tok"], milestone_every=50, gamma=0.5,
                                          max_new_tokens=30, progress=False, log=lambda *a: None)
    c = res["curves"]
    assert set(c) == {"constant", "multistep", "warmup+cosine"}
    assert c["constant"][0]["val_loss"] == c["multistep"][0]["val_loss"] == c["warmup+cosine"][0]["val_loss"]
    assert [r["lr"] for r in c["multistep"]] == [5e-3, 5e-3, 5e-3, 2.5e-3]
    assert c["constant"][1]["val_loss"] == c["multistep"][1]["val_loss"]     # identical until the milestone
    assert all(len(s["sample"]) == 30 for s in res["samples"].values())
    assert nonempty(tmp_path / "schedules.png") and len(read_csv(tmp_path / "schedules_samples.csv")) == 3


def test_lab_registers_its_command():
    from scratchgpt.analysis.lab import cmd_lab, register_cli
    p = argparse.ArgumentParser()
    register_cli(p.add_subparsers(dest="command"))
    a = p.parse_args(["lab", "--out-dir", "x", "--quick"])
    assert a.func is cmd_lab and a.quick and a.out_dir == "x"


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "examples" / "experiments").glob("[!_]*.py")))
def test_experiment_scripts_parse_their_arguments(script, capsys):
    sys.path.insert(0, str(ROOT / "examples" / "experiments"))
    try:
        path = ROOT / "examples" / "experiments" / script
        spec = importlib.util.spec_from_file_location(f"experiment_{script[:-3]}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        with pytest.raises(SystemExit) as e:
            mod.main(["--help"])
        assert e.value.code == 0
    finally:
        sys.path.remove(str(ROOT / "examples" / "experiments"))
    assert "usage" in capsys.readouterr().out


def test_quick_lab_writes_a_report_with_every_section_and_figure(tmp_path, monkeypatch):
    from scratchgpt.analysis.lab import SECTIONS, run_lab
    monkeypatch.setenv("SCRATCHGPT_CACHE", str(tmp_path / "cache"))
    res = run_lab(str(tmp_path / "lab"), quick=True, progress=False)
    report = Path(res["report"]).read_text(encoding="utf-8")
    for _, title in SECTIONS:
        assert f"## {title}" in report
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", report)
    assert len(figures) >= 23
    for f in figures:
        assert nonempty(tmp_path / "lab" / f), f
    assert "n/a (" not in report
    r = res["results"]
    assert all(c["max_abs_diff_val"] <= 1e-5 for c in r["curves"].values())
    L = np.asarray(r["crossdomain"]["loss"])
    assert not np.isnan(L).any()
    assert json.loads((tmp_path / "lab" / "figures" / "corpus.json").read_text())["math"]["n_chars"] == 50_000
