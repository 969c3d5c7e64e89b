"""Errors a fine-tuning user can meet, each with the value that was wrong: --trainable specs,
instruction files, LoRA ranks and adapter files that do not fit; and save_gpt2's float16 and
float64 folders."""
import json

import numpy as np
import pytest

import scratchgpt as sg
from scratchgpt import lora
from scratchgpt.finetune import add_classification_head, load_instruction_json, trainable_prefixes
from scratchgpt.gpt2 import load_gpt2, save_gpt2


def cfg(**kw):
    base = dict(vocab_size=20, context_length=8, emb_dim=8, n_heads=2, n_layers=2)
    return sg.GPTConfig(**{**base, **kw})


def test_trainable_prefixes_name_what_trains():
    assert trainable_prefixes(cfg(), "all") is None
    assert trainable_prefixes(cfg(tie_weights=False), "head") == ["lm_head.weight"]
    classifier = add_classification_head(sg.GPTModel(cfg(), seed=0), 2)
    assert trainable_prefixes(classifier, "last-block") == ["transformer.h.1", "transformer.ln_f", "score"]
    assert trainable_prefixes(cfg(tie_weights=True), "last-2") == ["transformer.h.0", "transformer.h.1",
                                                                   "transformer.ln_f"]


@pytest.mark.parametrize("spec,config,message", [
    ("everything", {}, "unknown --trainable 'everything': use all, head, last-block or last-N"),
    ("last-", {}, "unknown --trainable 'last-'"),
    ("last-3", {}, "--trainable last-3: the model has only 2 blocks"),
    ("head", {"tie_weights": True}, "--trainable head leaves nothing to train for a tied LM head"),
])
def test_trainable_prefixes_errors(spec, config, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        trainable_prefixes(cfg(**config), spec)


@pytest.mark.parametrize("content,message", [
    ("[{\"instruction\": \"a\",", "is not valid JSON"),
    ("{\"instruction\": \"a\", \"output\": \"b\"}", "must hold a non-empty JSON list"),
    ("[]", "must hold a non-empty JSON list"),
    ("[{\"instruction\": \"a\", \"output\": \"b\"}, {\"instruction\": \"c\"}]",
     "entry 1 needs string 'instruction' and 'output' fields"),
    ("[{\"instruction\": 3, \"output\": \"b\"}]", "entry 0 needs string"),
    ("[\"just text\"]", "entry 0 needs string"),
])
def test_load_instruction_json_errors_name_the_file_and_entry(tmp_path, content, message):
    path = tmp_path / "data.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as e:
        load_instruction_json(path)
    assert "data.json" in str(e.value)


def test_load_instruction_json_reads_the_books_file(tmp_path):
    entries = [{"instruction": "a", "input": "", "output": "b"}, {"instruction": "c", "output": "d"}]
    (tmp_path / "d.json").write_text(json.dumps(entries))
    assert load_instruction_json(tmp_path / "d.json") == entries


@pytest.mark.parametrize("rank", [0, -2])
def test_lora_rank_below_one_is_refused(rank):
    with pytest.raises(ValueError, match=f"LoRA rank must be a positive integer, got {rank}"):
        lora.add_lora(sg.GPTModel(cfg(), seed=0), rank)


@pytest.fixture
def adapters(tmp_path):
    model = lora.add_lora(sg.GPTModel(cfg(), seed=0), 2, targets="c_attn")
    path = tmp_path / "adapters.npz"
    lora.save_adapters(model, path)
    return path


def test_adapters_for_another_model_shape_are_refused(adapters):
    with pytest.raises(ValueError, match="lora_A has shape .*the model expects"):
        lora.load_adapters(sg.GPTModel(cfg(emb_dim=12), seed=0), adapters)


def test_adapters_for_fewer_blocks_or_with_missing_entries_are_refused(adapters, tmp_path):
    with pytest.raises(ValueError, match="does not fit this model: it lacks"):
        lora.load_adapters(sg.GPTModel(cfg(n_layers=3), seed=0), adapters)
    with pytest.raises(ValueError, match="does not fit this model: .*it has .*transformer.h.1"):
        lora.load_adapters(sg.GPTModel(cfg(n_layers=1), seed=0), adapters)
    with np.load(adapters) as z:
        arrays = {k: z[k] for k in z.files if k != "lora_rank"}
    np.savez(tmp_path / "no_rank.npz", **arrays)
    with pytest.raises(ValueError, match="is not a LoRA adapter file \\(no lora_rank entry\\)"):
        lora.load_adapters(sg.GPTModel(cfg(), seed=0), tmp_path / "no_rank.npz")


def test_matching_adapters_load_back_exactly(adapters):
    base = sg.GPTModel(cfg(), seed=0)
    loaded = lora.load_adapters(base, adapters)
    with np.load(adapters) as z:
        for k in z.files:
            if ".lora_" in k:
                np.testing.assert_array_equal(loaded.params[k], z[k])


@pytest.mark.parametrize("dtype,code", [("float16", "F16"), ("float64", "F64")])
def test_save_gpt2_in_float16_and_float64(tmp_path, dtype, code):
    model = sg.GPTModel(cfg(qkv_bias=True), seed=0, dtype="float64")
    save_gpt2(model, tmp_path / "m", dtype=dtype)
    header_len = int.from_bytes((tmp_path / "m" / "model.safetensors").read_bytes()[:8], "little")
    header = json.loads((tmp_path / "m" / "model.safetensors").read_bytes()[8:8 + header_len])
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {code}
    assert json.loads((tmp_path / "m" / "config.json").read_text())["torch_dtype"] == dtype
    back = load_gpt2(tmp_path / "m", dtype="float64")
    for name, w in model.state_dict().items():
        want = w.astype(dtype).astype(np.float64)            # float16 rounds, float64 is exact
        np.testing.assert_array_equal(back.state_dict()[name], want, err_msg=name)
    if dtype == "float16":
        assert any(not np.array_equal(back.state_dict()[n], w) for n, w in model.state_dict().items())
