"""scratchgpt/finetune.py and the model's freezing and classification head (chapters 6 and 7)."""
import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import corpus_missing, rel_err
from torch_gpt import torch_gpt_logits, torch_params
import scratchgpt as sg
import scratchgpt.model
from scratchgpt import checkpoint
from scratchgpt import finetune as ft
from scratchgpt.tokenizer import BPETokenizer, CharTokenizer

TINY = dict(vocab_size=11, context_length=8, emb_dim=12, n_heads=3, n_layers=2, qkv_bias=True)


def corpora_or_skip():
    from scratchgpt.corpora import CorpusNotAvailable
    try:
        ft.corpus_passages("shakespeare")
        ft.corpus_passages("math")
    except CorpusNotAvailable as e:
        corpus_missing(str(e))


# ---- the classification head and freezing ------------------------------------------------
def torch_classifier_loss(model, idx, lengths, labels):
    """The reference: torch GPT-2 hidden states, score head + bias, the last real token, CE."""
    P = torch_params({k: np.array(v, dtype=np.float64) for k, v in model.state_dict().items()})
    P2 = dict(P, **{"lm_head.weight": P["score.weight"]})
    cfg = dataclasses.replace(model.cfg, tie_weights=False)
    logits = torch_gpt_logits(P2, torch.tensor(idx), cfg) + P["score.bias"]     # (B, T, K)
    last = logits[torch.arange(len(lengths)), torch.tensor(lengths) - 1]
    F.cross_entropy(last, torch.tensor(labels)).backward()
    return P, last


@pytest.mark.parametrize("trainable", ["all", "last-block"])
def test_classification_head_gradients_match_torch_and_frozen_ones_stay_zero(trainable):
    base = sg.GPTModel(sg.GPTConfig(**TINY), seed=0, dtype="float64")
    model = ft.add_classification_head(base, 3, seed=1)
    assert "score.weight" in model.state_dict() and model.params["score.weight"].shape == (3, 12)
    np.testing.assert_array_equal(model.params["transformer.h.1.mlp.c_fc.weight"],
                                  base.params["transformer.h.1.mlp.c_fc.weight"])      # copied
    model.set_trainable(ft.trainable_prefixes(model, trainable))
    r = np.random.default_rng(0)
    idx, lengths, labels = r.integers(0, 11, (3, 7)), np.array([7, 3, 5]), np.array([2, 0, 1])
    idx[1, 3:] = 0                                      # padding after the last real token
    loss = ft.classifier_loss_and_backward(model, idx, lengths, labels)
    P, last = torch_classifier_loss(model, idx, lengths, labels)
    assert rel_err(ft.last_token_logits(model, idx, lengths)[1], last) <= 1e-9
    frozen = set(model.state_dict()) - set(model.trainable_names())
    top = ("transformer.h.1.", "transformer.ln_f", "score")
    assert frozen == (set() if trainable == "all" else {k for k in model.state_dict() if not k.startswith(top)})
    for k, g in model.grads().items():
        if k in frozen:
            assert not g.any(), f"{k} is frozen but got a gradient"
        else:
            assert rel_err(g, P[k].grad) <= 1e-9, k
    assert np.isfinite(loss)


def test_padding_after_the_last_real_token_changes_nothing():
    model = ft.add_classification_head(sg.GPTModel(sg.GPTConfig(**TINY), seed=0, dtype="float64"), 2)
    ids = np.array([[1, 2, 3, 4, 5, 6]])
    a = ft.last_token_logits(model, ids[:, :3], np.array([3]))[1]
    b = ft.last_token_logits(model, np.array([[1, 2, 3, 9, 9, 9]]), np.array([3]))[1]
    # a leak from the padding would move the logits by ~1e-2; MKL (the [mkl] extra) picks its GEMM
    # kernel by the number of rows, so 3 and 6 tokens may round a logit differently in the last bit
    np.testing.assert_allclose(a, b, rtol=1e-13, atol=0)


def test_frozen_backward_stops_at_the_lowest_trainable_block(monkeypatch):
    """A counter instead of a clock: the dW GEMMs and block backwards actually run."""
    calls = {"linear_backward": 0, "embedding_backward": 0, "blocks": 0}
    ops = scratchgpt.backend.ops                         # the op set the model calls
    for name in ("linear_backward", "embedding_backward"):
        real = getattr(ops, name)
        monkeypatch.setattr(ops, name,
                            lambda *a, _real=real, _n=name, **kw: (calls.__setitem__(_n, calls[_n] + 1), _real(*a, **kw))[1])
    real_block = scratchgpt.model.TransformerBlock.backward
    monkeypatch.setattr(scratchgpt.model.TransformerBlock, "backward",
                        lambda self, d: (calls.__setitem__("blocks", calls["blocks"] + 1), real_block(self, d))[1])
    model = sg.GPTModel(sg.GPTConfig(**{**TINY, "n_layers": 4}), seed=0)
    idx = np.random.default_rng(0).integers(0, 11, (2, 8))
    counts = {}
    for spec in ("all", "last-block"):
        model.set_trainable(ft.trainable_prefixes(model.cfg, spec))
        calls.update({k: 0 for k in calls})
        model.loss(idx, idx)
        model.backward()
        counts[spec] = dict(calls)
    # all: 4 linears x 4 blocks + the head's dW; last block (tied head frozen): its 4 linears only
    assert counts["all"] == {"linear_backward": 17, "embedding_backward": 1, "blocks": 4}
    assert counts["last-block"] == {"linear_backward": 4, "embedding_backward": 0, "blocks": 1}
    assert model.lowest_block == 3                       # the backward stopped at the input of block 3


def test_optimizer_given_a_model_with_frozen_parameters_raises():
    model = ft.add_classification_head(sg.GPTModel(sg.GPTConfig(**TINY), seed=0), 2)
    model.freeze(["transformer.h.1", "transformer.ln_f", "score"])
    for make in (sg.AdamW, sg.SGD, lambda m: sg.SGD(m, momentum=0.9)):
        with pytest.raises(ValueError, match="frozen parameters.*TrainableParams"):
            make(model)
    sg.AdamW(sg.TrainableParams(model))                      # the way to train a frozen model
    opts = [sg.AdamW(model.set_trainable(None)), sg.SGD(model)]   # nothing frozen: the whole buffer
    model.freeze(["transformer.h.0"])                        # frozen after the optimizer was made
    for opt in opts:
        with pytest.raises(ValueError, match="frozen parameters"):
            opt.step()


def test_trainable_params_lives_in_optim_and_is_reexported():
    assert ft.TrainableParams is sg.TrainableParams is sg.optim.TrainableParams


def test_adamw_through_trainable_params_leaves_frozen_weights_bit_identical():
    model = ft.add_classification_head(sg.GPTModel(sg.GPTConfig(**TINY), seed=0), 2)
    model.freeze(["transformer.h.1", "transformer.ln_f", "score"])
    before = {k: v.copy() for k, v in model.state_dict().items()}
    params = sg.optim.TrainableParams(model)
    assert params.flat_params.size == model.num_trainable_parameters() < model.num_parameters()
    opt = sg.AdamW(params, lr=1e-2, weight_decay=0.5)     # decay would move any weight it touched
    idx = np.random.default_rng(0).integers(0, 11, (2, 6))
    for _ in range(3):
        model.zero_grad()
        ft.classifier_loss_and_backward(model, idx, np.array([6, 4]), np.array([0, 1]))
        params.step(opt, grad_clip=1.0)
    for k, v in model.state_dict().items():
        if k in model.trainable_names():
            assert not np.array_equal(v, before[k]), k
        else:
            np.testing.assert_array_equal(v, before[k])


def test_set_trainable_selects_by_name_prefix_and_glob():
    model = sg.GPTModel(sg.GPTConfig(**{**TINY, "n_layers": 12}))
    model.set_trainable(["transformer.h.1"])            # block 1, not blocks 10 and 11
    assert {k.split(".")[2] for k in model.trainable_names()} == {"1"}
    assert model.lowest_block == 1
    model.set_trainable(["*.ln_?.weight"])
    assert len(model.trainable_names()) == 25                # ln_1, ln_2 of 12 blocks and ln_f
    with pytest.raises(ValueError, match="no parameter is named or starts with 'transformer.h.12'"):
        model.set_trainable(["transformer.h.12"])
    model.set_trainable(None)
    assert model.num_trainable_parameters() == model.num_parameters() and model.lowest_block == 0


# ---- chapter 6: data and a short run -----------------------------------------------------
def test_csv_with_header_and_headerless_tsv(tmp_path):
    rows = [(f"spam offer number {i}", "spam") for i in range(20)] + [(f"hello friend {i}", "ham") for i in range(30)]
    (tmp_path / "a.csv").write_text("Label,Text\n" + "".join(f"{l},\"{t}, ok\"\n" for t, l in rows))
    (tmp_path / "b.tsv").write_text("".join(f"{l}\t{t}\n" for t, l in rows))
    for name in ("a.csv", "b.tsv"):
        d = ft.load_csv_dataset(tmp_path / name, seed=0)
        assert d.labels == ["ham", "spam"]
        assert (len(d.train), len(d.val), len(d.test)) == (14 + 21, 2 + 3, 4 + 6)    # 70/10/20 per class
        assert sum(1 for _, l in d.train if l == 1) == 14
    assert ft.load_csv_dataset(tmp_path / "a.csv").train[0][0].endswith(", ok")
    (tmp_path / "c.csv").write_text("text,label\nonly one,0\nanother,0\n")
    with pytest.raises(ValueError, match="single label"):
        ft.load_csv_dataset(tmp_path / "c.csv")


def test_corpus_passages_dataset_is_balanced_and_seeded():
    corpora_or_skip()
    a = ft.corpus_passages_dataset(per_class=20, seed=3, corpora=("shakespeare", "math"))
    b = ft.corpus_passages_dataset(per_class=20, seed=3, corpora=("shakespeare", "math"))
    assert a == b and a.labels == ["shakespeare", "math"]
    assert (len(a.train), len(a.val), len(a.test)) == (28, 4, 8)
    assert all(60 <= len(t) <= 300 for t, _ in a.train)
    assert not any(t.isupper() for t, _ in a.train)


def test_classification_accuracy_rises_above_chance_on_two_corpora():
    corpora_or_skip()
    data = ft.corpus_passages_dataset(per_class=50, seed=0, corpora=("shakespeare", "math"))
    tok = CharTokenizer.from_text("".join(t for split in (data.train, data.val, data.test) for t, _ in split))
    model = sg.GPTModel(sg.GPTConfig(vocab_size=tok.vocab_size, context_length=96, emb_dim=32, n_heads=2,
                                     n_layers=2), seed=0)
    model = ft.add_classification_head(model, 2)
    max_length = ft.classification_max_length(model, tok, data)
    assert ft.pad_id_for(tok) == ft.CHAR_PAD_ID
    ft.train_classifier(model, tok, data, epochs=3, batch_size=8, lr=2e-3, eval_freq=100,
                        max_length=max_length, log=lambda *a: None)
    acc = ft.accuracy_table(model, tok, data, max_length)
    assert acc["train"] >= 0.8 and acc["test"] >= 0.75, acc


# ---- chapter 7 ---------------------------------------------------------------------------
def test_alpaca_prompt_is_the_books():
    e = {"instruction": "Rewrite the sentence.", "input": "It rains.", "output": "Rain falls."}
    assert ft.format_input(e) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes "
        "the request.\n\n### Instruction:\nRewrite the sentence.\n\n### Input:\nIt rains.")
    assert ft.format_prompt({**e, "input": ""}).endswith("### Instruction:\nRewrite the sentence.\n\n### Response:\n")


def test_collate_masks_exactly_the_prompt_and_the_padding():
    batch = [([1, 2, 3, 4, 5], 3),          # prompt 1 2 3, response 4 5
             ([1, 2, 6], 2)]                # prompt 1 2, response 6
    x, y = ft.collate_instructions(batch, pad_id=0)
    np.testing.assert_array_equal(x, [[1, 2, 3, 4, 5],
                                      [1, 2, 6, 0, 0]])
    np.testing.assert_array_equal(y, [[-100, -100, 4, 5, 0],         # 2, 3 are prompt; one eot kept
                                      [-100, 6, 0, -100, -100]])      # padding after the first eot masked
    x, y = ft.collate_instructions(batch, pad_id=0, allowed_max_length=3)
    assert x.shape == y.shape == (2, 3)


def test_an_eot_inside_the_text_is_not_mistaken_for_padding():
    x, y = ft.collate_instructions([([7, 0, 8], 1)], pad_id=0)        # the book's == pad test would mask it
    np.testing.assert_array_equal(y, [[0, 8, 0]])


def toy_instructions(n, seed):
    r = np.random.default_rng(seed)
    words = ["apple", "river", "stone", "cloud", "green", "tiger", "piano", "window"]
    out = []
    for _ in range(n):
        a, b = r.choice(words, 2, replace=False)
        out.append({"instruction": "Join the two words with a dash.", "input": f"{a} {b}", "output": f"{a}-{b}"})
    return out


def test_instruction_finetuning_lowers_held_out_response_loss():
    train, test = toy_instructions(48, 0), toy_instructions(12, 1)
    tok = BPETokenizer.train(" ".join(ft.format_prompt(e) + e["output"] for e in train), 320)
    model = sg.GPTModel(sg.GPTConfig(vocab_size=tok.vocab_size, context_length=128, emb_dim=32, n_heads=2,
                                     n_layers=2), seed=0)
    test_set = [ft.encode_instruction(e, tok) for e in test]
    before = ft.response_loss(model, test_set, tok.eot_id)
    ft.train_instructions(model, tok, train, test, epochs=4, batch_size=8, lr=3e-3, eval_freq=100,
                          log=lambda *a: None)
    after = ft.response_loss(model, test_set, tok.eot_id)
    assert after < 0.6 * before, (before, after)


def test_wikipedia_instructions_have_three_kinds_and_hold_articles_out():
    from scratchgpt.corpora import CorpusNotAvailable
    try:
        entries = ft.wikipedia_instructions(n_articles=30, seed=0)
    except CorpusNotAvailable as e:
        corpus_missing(str(e))
    kinds = {e["instruction"].split()[0] for e in entries}
    assert {"Describe", "Which"} <= kinds and kinds & {"What", "Who"}
    assert all(e["output"] and len(e["output"]) <= 200 for e in entries)
    assert all(e["input"] for e in entries if e["instruction"].startswith("Which"))
    train, val, test = ft.split_instructions(entries)
    assert len(train) + len(val) + len(test) == len(entries) and len(test) >= 1


def test_char_tokenizer_is_refused_for_instruction_tuning():
    with pytest.raises(ValueError, match="<\\|endoftext\\|>"):
        ft.require_eot(CharTokenizer.from_text("abc"))


# ---- the commands ------------------------------------------------------------------------
def tiny_run(tmp_path, text):
    tok = BPETokenizer.train(text, 300)
    model = sg.GPTModel(sg.GPTConfig(vocab_size=tok.vocab_size, context_length=128, emb_dim=16, n_heads=2,
                                     n_layers=2), seed=0)
    checkpoint.save(tmp_path / "base" / "ckpt_latest.npz", model, tok, train_state={"iter": 0})
    return str(tmp_path / "base")


def test_finetune_cls_command_writes_a_classifier(tmp_path, capsys):
    rows = ([(f"cheap pills offer {i}", "spam") for i in range(20)]
            + [(f"see you at {i} tonight", "ham") for i in range(20)])
    (tmp_path / "sms.csv").write_text("label,text\n" + "".join(f"{l},{t}\n" for t, l in rows))
    base = tiny_run(tmp_path, " ".join(t for t, _ in rows))
    rc = ft.main(["finetune-cls", "--out-dir", base, "--csv", str(tmp_path / "sms.csv"), "--epochs", "2",
                  "--lr", "3e-3", "--save-dir", str(tmp_path / "cls"), "--lora-rank", "2"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "accuracy before fine-tuning" in out and "accuracy after fine-tuning" in out
    ck = checkpoint.load(tmp_path / "cls" / "ckpt_latest.npz")
    assert ck.model.extensions == {"num_classes": 2}                              # merged: no LoRA left
    assert ck.train_state["labels"] == ["ham", "spam"] and ck.train_state["lora"]["rank"] == 2
    assert (tmp_path / "cls" / "lora_adapters.npz").exists()
    # the saved classifier, scored here example by example, has the accuracy the command printed
    data = ft.load_csv_dataset(tmp_path / "sms.csv", seed=0)
    max_length = ck.train_state["max_length"]
    by_hand = {split: float(np.mean([ft.classify_text(ck.model, ck.tokenizer, t, None, max_length) == y
                                     for t, y in getattr(data, split)])) for split in ("train", "val", "test")}
    assert by_hand == pytest.approx(ck.train_state["accuracy_after"], abs=1e-12)
    printed = out.split("accuracy after fine-tuning:")[1].splitlines()[0]
    assert printed.strip() == ", ".join(f"{k} {v:.1%}" for k, v in by_hand.items())
    assert by_hand["train"] >= 0.75 > ck.train_state["accuracy_before"]["train"]    # it learned (chance: 0.5)


def test_finetune_sft_command_marks_the_checkpoint_instruction_tuned(tmp_path, capsys):
    entries = toy_instructions(24, 0)
    (tmp_path / "data.json").write_text(json.dumps(entries))
    base = tiny_run(tmp_path, " ".join(ft.format_prompt(e) + e["output"] for e in entries))
    rc = ft.main(["finetune-sft", "--out-dir", base, "--json", str(tmp_path / "data.json"), "--epochs", "1",
                  "--lr", "3e-3", "--save-dir", str(tmp_path / "sft"), "--show", "1", "--max-new-tokens", "8"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "held-out response loss before fine-tuning" in out and "after:" in out
    ck = checkpoint.load(tmp_path / "sft" / "ckpt_latest.npz")
    assert ck.train_state["prompt_format"] == "alpaca" and ck.train_state["instruction_tuned"]
    shown = json.loads((tmp_path / "sft" / "responses.json").read_text())
    assert len(shown) == 1
    entry = {k: shown[0][k] for k in ("instruction", "input", "output")}
    assert shown[0]["model_response"] == ft.generate_response(ck.model, ck.tokenizer, entry, 8)


def test_trainable_params_with_nothing_frozen_is_plain_adamw():
    cfg = sg.GPTConfig(**TINY)
    a, b = sg.GPTModel(cfg, seed=0, dtype="float64"), sg.GPTModel(cfg, seed=0, dtype="float64")
    opt_a = sg.AdamW(a, lr=1e-2, weight_decay=0.1)
    params = ft.TrainableParams(b)
    opt_b = sg.AdamW(params, lr=1e-2, weight_decay=0.1)
    idx = np.random.default_rng(0).integers(0, 11, (2, 8))
    for _ in range(3):
        for m in (a, b):
            m.zero_grad()
            m.loss(idx, idx)
            m.backward()
        opt_a.step()
        params.step(opt_b)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
