"""Checkpoints written by the first round's code (before the redesign) still load and compute
the same logits. The files in tests/data were written by commit 19390e0 (see its README)."""
import os

import numpy as np

from scratchgpt import checkpoint

DATA = os.path.join(os.path.dirname(__file__), "data")


def path(name):
    return os.path.join(DATA, name)


def test_a_language_model_with_its_optimizer_state_loads_and_gives_the_same_logits():
    ck = checkpoint.load(path("round1_lm.npz"))
    idx = np.load(path("round1_idx.npy"))
    np.testing.assert_allclose(ck.model.eval()(idx), np.load(path("round1_logits.npy")), rtol=1e-6, atol=1e-6)
    assert ck.model.extensions == {}                     # the old config's num_classes=0, lora_rank=0: none
    assert ck.optimizer_state["t"] == 1 and ck.optimizer_state["m"].any()
    assert ck.train_state == {"iter": 1} and ck.tokenizer.decode(ck.tokenizer.encode("hello")) == "hello"


def test_a_classifier_and_a_lora_classifier_load_as_what_they_were():
    cls = checkpoint.load(path("round1_classifier.npz")).model
    assert cls.extensions == {"num_classes": 3} and cls.params["score.weight"].shape == (3, 8)
    ck = checkpoint.load(path("round1_lora_classifier.npz"))
    m = ck.model
    assert m.extensions == {"num_classes": 3, "lora_rank": 2, "lora_alpha": 4.0,
                            "lora_targets": ["attn.c_attn", "mlp.c_fc"]}
    idx = np.load(path("round1_idx.npy"))
    np.testing.assert_allclose(m.eval()(idx), np.load(path("round1_lora_logits.npy")), rtol=1e-6, atol=1e-6)


def test_a_checkpoint_written_today_keeps_the_old_config_keys(tmp_path):
    m = checkpoint.load(path("round1_lora_classifier.npz")).model
    checkpoint.save(tmp_path / "again.npz", m)
    meta, _ = checkpoint.read(tmp_path / "again.npz")
    assert meta["config"]["num_classes"] == 3 and meta["config"]["lora_rank"] == 2
    again = checkpoint.load(tmp_path / "again.npz").model
    idx = np.load(path("round1_idx.npy"))
    np.testing.assert_array_equal(again.eval()(idx), m.eval()(idx))
