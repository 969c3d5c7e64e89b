"""Checkpoints: round trip, atomic writes, clear errors for bad files."""
import os

import numpy as np
import pytest

import scratchgpt as sg
from scratchgpt import checkpoint
from scratchgpt.checkpoint import CheckpointError
from scratchgpt.tokenizer import CharTokenizer


def make(tmp_path):
    tok = CharTokenizer.from_text("hello world")
    cfg = sg.GPTConfig(vocab_size=tok.vocab_size, context_length=8, emb_dim=8, n_heads=2, n_layers=1)
    model = sg.GPTModel(cfg, seed=0)
    opt = sg.AdamW(model)
    return model, tok, opt


def test_round_trip_keeps_weights_tokenizer_optimizer_and_state(tmp_path):
    model, tok, opt = make(tmp_path)
    idx = np.array([[1, 2, 3]])
    model.loss(idx, idx)
    model.backward()
    opt.step()
    path = tmp_path / "c.npz"
    checkpoint.save(path, model, tok, opt, train_state={"iter": 5})
    ck = checkpoint.load(path)
    np.testing.assert_array_equal(ck.model(idx), model(idx))
    assert ck.tokenizer.decode(ck.tokenizer.encode("hello")) == "hello"
    np.testing.assert_array_equal(ck.optimizer_state["m"], opt.m)
    assert ck.optimizer_state["t"] == 1 and ck.train_state == {"iter": 5}


def test_a_write_killed_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    model, tok, opt = make(tmp_path)
    path = tmp_path / "latest.npz"
    checkpoint.save(path, model, tok, opt)
    before = path.read_bytes()
    model.flat_params += 1.0

    def dying_savez(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")                       # some bytes reach the temp file
        raise KeyboardInterrupt                                 # then the process is "killed"
    monkeypatch.setattr(np, "savez", dying_savez)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path, model, tok, opt)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["latest.npz"]               # no temp file left behind
    monkeypatch.undo()
    checkpoint.load(path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "foreign", "missing"])
def test_bad_files_give_one_clear_error(tmp_path, damage):
    model, tok, opt = make(tmp_path)
    path = tmp_path / "c.npz"
    checkpoint.save(path, model, tok, opt)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    elif damage == "foreign":
        np.savez(path, weights=np.zeros(3))
    else:
        path.unlink()
    with pytest.raises(CheckpointError, match="c.npz"):
        checkpoint.load(path)


def test_mismatched_config_or_shapes_are_refused(tmp_path):
    model, tok, opt = make(tmp_path)
    path = tmp_path / "c.npz"
    checkpoint.save(path, model, tok, opt)
    other = sg.GPTConfig(**{**model.cfg.to_dict(), "n_layers": 2})
    with pytest.raises(CheckpointError, match="different model config.*n_layers"):
        checkpoint.load(path, config=other)
    meta, arrays = checkpoint.read(path)
    arrays["param/transformer.wpe.weight"] = np.zeros((3, 8), np.float32)
    import json
    arrays["meta.json"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError, match=r"transformer.wpe.weight' has shape \(3, 8\)"):
        checkpoint.load(path)


def test_no_pickle_on_the_load_path(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, **{"meta.json": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(CheckpointError):
        checkpoint.load(path)


def one_step(model, params, opt):
    """One AdamW step through TrainableParams, as fine-tuning takes it."""
    idx = np.array([[1, 2, 3], [3, 0, 4]])
    model.zero_grad()
    model.loss(idx, np.array([[2, 1, 0], [0, 1, 2]]))    # targets < 3: a classifier's labels too
    model.backward()
    params.step(opt)


def tiny_lora(set_up):
    from scratchgpt.classifier import add_classification_head
    from scratchgpt.lora import add_lora
    base = sg.GPTModel(sg.GPTConfig(vocab_size=7, context_length=4, emb_dim=8, n_heads=2, n_layers=2), seed=0)
    return set_up(base, add_lora, add_classification_head)


@pytest.mark.parametrize("kind", ["lora", "lora+head", "lora, all trainable", "last block"])
def test_a_reloaded_model_trains_exactly_what_it_trained_before_saving(tmp_path, kind):
    model = tiny_lora({
        "lora": lambda m, lora, head: lora(m, 2, targets="c_attn", seed=1),
        "lora+head": lambda m, lora, head: lora(head(m, 3, seed=1), 2, seed=2, trainable=["score"]),
        "lora, all trainable": lambda m, lora, head: lora(m, 2, seed=1).set_trainable(None),
        "last block": lambda m, lora, head: m.freeze(["transformer.h.1", "transformer.ln_f"]),
    }[kind])
    checkpoint.save(tmp_path / "ft.npz", model)
    back = checkpoint.load(tmp_path / "ft.npz").model
    assert back.frozen == model.frozen and back.trainable_names() == model.trainable_names()
    assert back.lowest_block == model.lowest_block
    if kind == "lora, all trainable":
        assert not back.frozen
    else:
        assert back.frozen and all(".lora_" not in k and k != "score.weight" for k in back.frozen)
    before = {k: v.copy() for k, v in back.params.items()}
    runs = [(m, sg.TrainableParams(m)) for m in (model, back)]
    opts = [sg.AdamW(p, lr=1e-2, weight_decay=0.5) for _, p in runs]   # decay would move a weight it held
    for (m, p), opt in zip(runs, opts):
        one_step(m, p, opt)
    np.testing.assert_array_equal(back.flat_params, model.flat_params)  # the same step as before saving
    for k, v in back.params.items():
        assert np.array_equal(v, before[k]) == (k in back.frozen), k


def test_a_frozen_name_the_model_lacks_is_refused(tmp_path):
    model = tiny_lora(lambda m, lora, head: lora(m, 2, seed=1))
    checkpoint.save(tmp_path / "ft.npz", model)
    meta, arrays = checkpoint.read(tmp_path / "ft.npz")
    meta["frozen"] = meta["frozen"] + ["transformer.h.9.ln_1.weight", "transformer.h.9.ln_2.weight", "x.weight"]
    import json
    arrays["meta.json"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(tmp_path / "ft.npz", **arrays)
    with pytest.raises(CheckpointError, match=r"ft.npz freezes \['transformer.h.9.ln_1.weight', "
                                              r"'transformer.h.9.ln_2.weight'\], which the model does not have$"):
        checkpoint.load(tmp_path / "ft.npz")
