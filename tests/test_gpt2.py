"""scratchgpt/gpt2.py: GPT-2 weights from Hugging Face folders and OpenAI's TensorFlow checkpoints.

Tiny random GPT-2s are written by the tests themselves (safetensors via the `safetensors` package;
TF checkpoints via a writer below that follows TensorFlow's table_builder.cc / tensor_bundle.cc
and reproduces, byte for byte, a checkpoint that TensorFlow 2.21 wrote, embedded here). Loaded
models must give the logits of tests/torch_gpt.py on the same weights.
"""
import base64
import json
import struct
import zlib

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file as st_load_file
from safetensors.numpy import save_file as st_save_file
from safetensors.torch import save_file as st_save_torch

from conftest import rel_err
from scratchgpt import GPTConfig, GPTModel
from scratchgpt.gpt2 import (GPT2_SIZES, crc32c, gpt2_config_from_hf, load_gpt2, parse_protobuf,
                             read_safetensors, read_tf_checkpoint, save_gpt2, write_safetensors)
from scratchgpt.model import parameter_shapes
from torch_gpt import torch_gpt_logits, torch_params

TINY = GPTConfig(vocab_size=50, context_length=16, emb_dim=12, n_heads=3, n_layers=2, qkv_bias=True)


def random_state(cfg, seed=0, untied=False):
    """GPT-2 weights in our (Hugging Face) names, big enough that a wrong layout would show."""
    rng = np.random.default_rng(seed)
    shapes = parameter_shapes(GPTConfig(**{**cfg.to_dict(), "tie_weights": not untied}))
    state = {}
    for name, shape in shapes.items():
        a = rng.normal(0.0, 0.3, shape)
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            a = 1.0 + 0.1 * a
        state[name] = a.astype(np.float32)
    return state


def hf_config(cfg, **extra):
    """A config.json as Hugging Face writes it for GPT2LMHeadModel."""
    d = {"activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1,
         "bos_token_id": 50256, "embd_pdrop": 0.1, "eos_token_id": 50256, "initializer_range": 0.02,
         "layer_norm_epsilon": 1e-05, "model_type": "gpt2", "n_ctx": cfg.context_length,
         "n_embd": cfg.emb_dim, "n_head": cfg.n_heads, "n_layer": cfg.n_layers,
         "n_positions": cfg.context_length, "resid_pdrop": 0.1, "vocab_size": cfg.vocab_size}
    d.update(extra)
    return d


def write_hf_folder(path, cfg, state, prefix=True, mask_buffers=False, head="absent", config=None):
    """head: "absent" (tied, as save_pretrained writes it), "tied" (lm_head.weight == wte) or "untied"
    (state must then hold lm_head.weight)."""
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v for k, v in state.items() if k != "lm_head.weight"}
    if not prefix:                                             # OpenAI's published files
        tensors = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    if mask_buffers:
        T = cfg.context_length
        for i in range(cfg.n_layers):
            h = ("transformer." if prefix else "") + f"h.{i}.attn."
            tensors[h + "bias"] = np.tril(np.ones((T, T), np.float32))[None, None]
            tensors[h + "masked_bias"] = np.array(-1e4, np.float32)
    if head == "tied":
        tensors["lm_head.weight"] = state["transformer.wte.weight"].copy()
    elif head == "untied":
        tensors["lm_head.weight"] = state["lm_head.weight"]
    st_save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(config or hf_config(cfg)))
    return path


def oracle_logits(state, cfg, idx):
    P = torch_params({k: np.asarray(v) for k, v in state.items()}, requires_grad=False)
    return torch_gpt_logits(P, torch.as_tensor(np.asarray(idx)), cfg)


def ids(cfg, B=2, seed=1):
    return np.random.default_rng(seed).integers(0, cfg.vocab_size, (B, cfg.context_length))


# ---- safetensors reading and writing -----------------------------------------------------
def test_read_safetensors_matches_the_safetensors_package(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {"f32": rng.normal(size=(3, 5)).astype(np.float32), "f16": rng.normal(size=7).astype(np.float16),
               "f64": rng.normal(size=(2, 2, 2)), "i64": np.arange(6, dtype=np.int64).reshape(2, 3),
               "i32": np.arange(-3, 3, dtype=np.int32), "u8": np.arange(5, dtype=np.uint8),
               "flag": np.array([True, False, True]), "scalar": np.array(2.5, np.float32),
               "empty": np.zeros((0, 4), np.float32)}
    st_save_file(tensors, str(tmp_path / "a.safetensors"), metadata={"format": "pt"})
    ours, ref = read_safetensors(tmp_path / "a.safetensors"), st_load_file(str(tmp_path / "a.safetensors"))
    assert set(ours) == set(ref)
    for k in ref:
        assert ours[k].dtype == ref[k].dtype and ours[k].shape == ref[k].shape, k
        np.testing.assert_array_equal(ours[k], ref[k])


def test_read_safetensors_converts_bfloat16_exactly(tmp_path):
    w = torch.randn(4, 6).to(torch.bfloat16)
    extremes = torch.tensor([1e-30, -3.0e38, 0.0]).to(torch.bfloat16)
    st_save_torch({"w": w, "extremes": extremes}, str(tmp_path / "b.safetensors"))
    ours = read_safetensors(tmp_path / "b.safetensors")
    assert ours["w"].dtype == np.float32
    np.testing.assert_array_equal(ours["w"], w.float().numpy())
    np.testing.assert_array_equal(ours["extremes"], extremes.float().numpy())


def test_write_safetensors_is_read_by_the_safetensors_package(tmp_path):
    from safetensors import safe_open
    tensors = {"b": np.arange(12, dtype=np.float32).reshape(3, 4), "a": np.arange(3, dtype=np.int64),
               "h": np.ones(5, np.float16)}
    write_safetensors(tmp_path / "w.safetensors", tensors, metadata={"format": "pt"})
    ref = st_load_file(str(tmp_path / "w.safetensors"))
    for k, v in tensors.items():
        assert ref[k].dtype == v.dtype
        np.testing.assert_array_equal(ref[k], v)
    with safe_open(str(tmp_path / "w.safetensors"), framework="np") as f:
        assert f.metadata() == {"format": "pt"}
    assert (tmp_path / "w.safetensors").read_bytes()[:8] != b"\0" * 8
    assert len(list(tmp_path.iterdir())) == 1                       # no temporary file left behind


def test_read_safetensors_rejects_truncated_and_foreign_files(tmp_path):
    st_save_file({"w": np.ones((4, 4), np.float32)}, str(tmp_path / "ok.safetensors"))
    blob = (tmp_path / "ok.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(blob[:-8])
    with pytest.raises(ValueError, match=r"'w'.*data_offsets.*truncated"):
        read_safetensors(tmp_path / "cut.safetensors")
    (tmp_path / "zip.safetensors").write_bytes(b"PK\x03\x04" + b"\0" * 60)   # e.g. a torch .bin
    with pytest.raises(ValueError, match="not a safetensors file"):
        read_safetensors(tmp_path / "zip.safetensors")


# ---- Hugging Face folders ----------------------------------------------------------------
@pytest.mark.parametrize("head", ["absent", "tied", "untied"])
@pytest.mark.parametrize("prefix", [True, False], ids=["transformer-prefix", "no-prefix"])
@pytest.mark.parametrize("mask_buffers", [False, True], ids=["", "mask-buffers"])
def test_load_gpt2_gives_the_torch_reference_logits(tmp_path, head, prefix, mask_buffers):
    state = random_state(TINY, seed=3, untied=head == "untied")
    write_hf_folder(tmp_path, TINY, state, prefix=prefix, mask_buffers=mask_buffers, head=head)
    model = load_gpt2(tmp_path)
    cfg = model.cfg
    assert cfg.tie_weights == (head != "untied") and cfg.qkv_bias and cfg.drop_rate == 0.0
    assert (cfg.vocab_size, cfg.context_length, cfg.emb_dim, cfg.n_heads, cfg.n_layers) == (50, 16, 12, 3, 2)
    assert set(model.state_dict()) == set(state)
    for k, v in state.items():
        np.testing.assert_array_equal(model.state_dict()[k], v)
    idx = ids(cfg)
    assert rel_err(model(idx), oracle_logits(state, cfg, idx)) <= 1e-5


@pytest.mark.parametrize("stored", ["float16", "bfloat16"])
def test_load_gpt2_reads_half_precision_weights(tmp_path, stored):
    state = random_state(TINY, seed=4)
    if stored == "float16":
        half = {k: v.astype(np.float16) for k, v in state.items()}
        st_save_file(half, str(tmp_path / "model.safetensors"))
        upcast = {k: v.astype(np.float32) for k, v in half.items()}
    else:
        half = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in state.items()}
        st_save_torch(half, str(tmp_path / "model.safetensors"))
        upcast = {k: v.float().numpy() for k, v in half.items()}
    (tmp_path / "config.json").write_text(json.dumps(hf_config(TINY)))
    model = load_gpt2(tmp_path)
    for k, v in upcast.items():
        assert model.state_dict()[k].dtype == np.float32
        np.testing.assert_array_equal(model.state_dict()[k], v)
    idx = ids(TINY)
    assert rel_err(model(idx), oracle_logits(upcast, TINY, idx)) <= 1e-5


def test_load_gpt2_in_float64(tmp_path):
    state = random_state(TINY, seed=5)
    write_hf_folder(tmp_path, TINY, state, prefix=False)
    model = load_gpt2(tmp_path, dtype="float64")
    assert model.flat_params.dtype == np.float64
    idx = ids(TINY)
    ref = oracle_logits({k: v.astype(np.float64) for k, v in state.items()}, TINY, idx)
    assert rel_err(model(idx), ref) <= 1e-9


def test_load_gpt2_reads_sharded_checkpoints(tmp_path):
    state = random_state(TINY, seed=6)
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[:10], "model-00002-of-00002.safetensors": names[10:]}
    for f, ks in shards.items():
        st_save_file({k: state[k] for k in ks}, str(tmp_path / f))
    weight_map = {k: f for f, ks in shards.items() for k in ks}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (tmp_path / "config.json").write_text(json.dumps(hf_config(TINY)))
    idx = ids(TINY)
    assert rel_err(load_gpt2(tmp_path)(idx), oracle_logits(state, TINY, idx)) <= 1e-5


# ---- save_gpt2 ---------------------------------------------------------------------------
@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_save_gpt2_then_load_gpt2_round_trip(tmp_path, tie):
    model = GPTModel(GPTConfig(**{**TINY.to_dict(), "tie_weights": tie}), seed=7)
    save_gpt2(model, tmp_path / "out")
    names = list(st_load_file(str(tmp_path / "out" / "model.safetensors")))
    assert all(n.startswith("transformer.") or n == "lm_head.weight" for n in names)
    assert ("lm_head.weight" in names) == (not tie)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["n_embd"] == 12 and config["tie_word_embeddings"] == tie
    back = load_gpt2(tmp_path / "out")
    assert back.cfg == model.cfg
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[k], v)


def test_save_gpt2_without_qkv_bias_writes_a_zero_bias(tmp_path):
    model = GPTModel(GPTConfig(**{**TINY.to_dict(), "qkv_bias": False}), seed=8)
    save_gpt2(model, tmp_path)
    back = load_gpt2(tmp_path)
    assert back.cfg.qkv_bias and not back.state_dict()["transformer.h.0.attn.c_attn.bias"].any()
    idx = ids(TINY)
    np.testing.assert_array_equal(back(idx), model(idx))


def test_save_gpt2_in_bfloat16_rounds_as_torch_does(tmp_path):
    model = GPTModel(TINY, seed=9)
    save_gpt2(model, tmp_path, dtype="bfloat16")
    back = load_gpt2(tmp_path)
    for k, v in model.state_dict().items():
        want = torch.from_numpy(np.array(v)).to(torch.bfloat16).float().numpy()
        np.testing.assert_array_equal(back.state_dict()[k], want, err_msg=k)


def test_save_gpt2_refuses_a_post_norm_model(tmp_path):
    model = GPTModel(GPTConfig(**{**TINY.to_dict(), "post_norm": True}), seed=0)
    with pytest.raises(ValueError, match="post_norm"):
        save_gpt2(model, tmp_path)


# ---- configs -----------------------------------------------------------------------------
@pytest.mark.parametrize("size,n_params", [("gpt2", 124_439_808), ("gpt2-medium", 354_823_168),
                                           ("gpt2-large", 774_030_080), ("gpt2-xl", 1_557_611_200)])
def test_config_for_each_published_size(size, n_params):
    s = GPT2_SIZES[size]
    d = hf_config(GPTConfig(vocab_size=50257, context_length=1024, emb_dim=s["emb_dim"],
                            n_heads=s["n_heads"], n_layers=s["n_layers"]))
    cfg = gpt2_config_from_hf(d)
    assert (cfg.emb_dim, cfg.n_layers, cfg.n_heads, cfg.vocab_size, cfg.context_length) == \
        (s["emb_dim"], s["n_layers"], s["n_heads"], 50257, 1024)
    assert cfg.qkv_bias and cfg.tie_weights and cfg.drop_rate == 0.0 and cfg.gelu_approximate == "tanh"
    assert sum(int(np.prod(v)) for v in parameter_shapes(cfg).values()) == n_params


def test_config_from_openai_hparams():
    cfg = gpt2_config_from_hf({"n_vocab": 50257, "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_layer": 12})
    assert (cfg.vocab_size, cfg.context_length, cfg.emb_dim) == (50257, 1024, 768)


@pytest.mark.parametrize("change,message", [
    ({"n_embd": 13}, r"inconsistent: n_embd 13 is not divisible by n_head 3.*gpt2-medium: n_embd 1024"),
    ({"n_ctx": 32}, r"n_positions 16 and n_ctx 32 disagree"),
    ({"n_layer": 0}, r"n_layer must be a positive integer, got 0"),
    ({"n_inner": 40}, r"n_inner 40 is not 4 \* n_embd = 48"),
    ({"activation_function": "relu"}, r"activation_function 'relu' is not supported"),
    ({"layer_norm_epsilon": 1e-6}, r"layer_norm_epsilon 1e-06 is not supported"),
    ({"model_type": "gpt_neo"}, r"'gpt_neo' model, not GPT-2"),
    ({"scale_attn_by_inverse_layer_idx": True}, r"scale_attn_by_inverse_layer_idx=True is not supported"),
])
def test_config_errors_say_what_is_wrong(change, message):
    with pytest.raises(ValueError, match=message):
        gpt2_config_from_hf(hf_config(TINY, **change))


def test_config_missing_keys():
    with pytest.raises(ValueError, match=r"missing \['n_head'\]"):
        gpt2_config_from_hf({k: v for k, v in hf_config(TINY).items() if k != "n_head"})


# ---- errors from load_gpt2 ---------------------------------------------------------------
def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_gpt2(tmp_path / "nope")


def test_empty_folder_names_the_files_it_needs(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json \+ model\.safetensors.*hparams\.json"):
        load_gpt2(tmp_path)


def test_pytorch_model_bin_only_is_refused_without_unpickling(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"not even opened")
    (tmp_path / "config.json").write_text(json.dumps(hf_config(TINY)))
    with pytest.raises(FileNotFoundError, match=r"pytorch_model\.bin is a pickle file.*never loads pickle"
                                                r".*download model\.safetensors"):
        load_gpt2(tmp_path)


def test_missing_config_json(tmp_path):
    write_hf_folder(tmp_path, TINY, random_state(TINY))
    (tmp_path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        load_gpt2(tmp_path)


def test_a_file_instead_of_a_folder(tmp_path):
    write_hf_folder(tmp_path, TINY, random_state(TINY))
    with pytest.raises(ValueError, match="pass the folder"):
        load_gpt2(tmp_path / "model.safetensors")


def test_wrong_shaped_tensor_is_named_with_both_shapes(tmp_path):
    state = random_state(TINY)
    state["transformer.h.1.mlp.c_fc.weight"] = state["transformer.h.1.mlp.c_fc.weight"][:, :47].copy()
    write_hf_folder(tmp_path, TINY, state, prefix=False)
    with pytest.raises(ValueError, match=r"'h\.1\.mlp\.c_fc\.weight'.*shape \(12, 47\).*expects \(12, 48\)"):
        load_gpt2(tmp_path)


def test_weights_of_another_size_than_the_config(tmp_path):
    write_hf_folder(tmp_path, TINY, random_state(TINY), config=hf_config(TINY, n_layer=3))
    with pytest.raises(ValueError, match=r"GPT-2 with 3 layers: missing 12 tensor\(s\): \['transformer\.h\.2\."):
        load_gpt2(tmp_path)


def test_unexpected_tensor_is_named(tmp_path):
    state = random_state(TINY)
    state["score.weight"] = np.zeros((2, 12), np.float32)   # e.g. GPT2ForSequenceClassification
    write_hf_folder(tmp_path, TINY, state, prefix=False)
    with pytest.raises(ValueError, match=r"unexpected 1 tensor\(s\): \['score\.weight'\]"):
        load_gpt2(tmp_path)


def test_untied_config_without_lm_head(tmp_path):
    write_hf_folder(tmp_path, TINY, random_state(TINY), config=hf_config(TINY, tie_word_embeddings=False))
    with pytest.raises(ValueError, match="tie_word_embeddings=false.*no 'lm_head.weight'"):
        load_gpt2(tmp_path)


# ---- OpenAI's TensorFlow checkpoints -----------------------------------------------------
# A TensorFlow 2.21 checkpoint of a micro GPT-2 (vocab 7, context 5, emb 4, 1 layer, 2 heads),
# written by tf.compat.v1.train.Saver over variables named as in OpenAI's release, with
# value = ((k * 7 + i * 3) % 17 - 8) / 32 for element k of the i-th tensor in name order
# (exact in float32). zlib-compressed, base64.
REAL_TF_INDEX = """
eNpjYGDjYJRi4mBkEOPPzU9JzdHPMNBPLCnJ00+OB1NJHIxCLEJMHDwaBqan3fksRRmlyoFCPEAhRiAGSykYaBxgNN3+IMZa
gE2ooCg/C66LReEDo4aA6bp1i65j0cii0MCk4WC6UcX/LiebUE5evCGSxgNMQI3bfq7o4WMUSoeLXgCJVhY5a/MwCxkhqX4A
Et88hSsLRfUHkKgrt3QoJ5dQbk4B0E9pyXBNAgoNzEDbRXYf3iHEKI3uNgGFA8waDUymdXxrb/Nj+OoAK9DgDHXpbBFUnQIQ
R7KCdC5q1NzIBvZWGpLOC+xAnUViygu5kR36ACT6M68mm41ZrLwgFSjOARRnhXiCXSPAtHnnGVkGTjFIFJWXwFSwQ1zDoVFg
eldDfjkDEKxhZGBgAjEClA9ZgWhGEHHg08INDIzMeQy3mOFi0Ys/Pb/PzPGGmZ+BIAj/3dCtUup+GwBvsGkw"""
REAL_TF_DATA = """
eNrdkcENwCAMAz0KixQxCqNksVaM1uPrviioVcvHkSMfCUhxSNqlklHqtkm1e5yK1+gJLd2jl9BAR3NBHXgpv8yw/CzX5/M7
LxljTe//5b9YwPDsn3a7w/CsM1fP++w7nJBD4Uc="""
MICRO = GPTConfig(vocab_size=7, context_length=5, emb_dim=4, n_heads=2, n_layers=1, qkv_bias=True)
TF_MAGIC = 0xDB4775248B80FB57


def _unpack(blob):
    return zlib.decompress(base64.b64decode("".join(blob.split())))


def tf_names(cfg):
    """{TF name: our name}, written out independently of scratchgpt.gpt2's mapping."""
    names = {"model/wte": "transformer.wte.weight", "model/wpe": "transformer.wpe.weight",
             "model/ln_f/g": "transformer.ln_f.weight", "model/ln_f/b": "transformer.ln_f.bias"}
    for i in range(cfg.n_layers):
        for sub in ("ln_1", "ln_2", "attn/c_attn", "attn/c_proj", "mlp/c_fc", "mlp/c_proj"):
            ours = f"transformer.h.{i}.{sub.replace('/', '.')}."
            names[f"model/h{i}/{sub}/{'g' if sub.startswith('ln') else 'w'}"] = ours + "weight"
            names[f"model/h{i}/{sub}/b"] = ours + "bias"
    return names


def tf_tensors(state, cfg):
    """Our state dict -> {TF name: array} in OpenAI's layout (Conv1D weights [1, in, out])."""
    return {tf: state[ours][None] if tf.endswith("/w") else state[ours] for tf, ours in tf_names(cfg).items()}


def micro_state():
    """The micro checkpoint's values, recomputed from the formula: (our state dict, {TF name: array})."""
    shapes = {k: v.shape for k, v in tf_tensors(random_state(MICRO), MICRO).items()}
    values = {}
    for i, name in enumerate(sorted(shapes)):
        k = np.arange(int(np.prod(shapes[name])))
        values[name] = (((k * 7 + i * 3) % 17 - 8) / 32).astype(np.float32).reshape(shapes[name])
    ours = tf_names(MICRO)
    return {ours[k]: (v[0] if k.endswith("/w") else v) for k, v in values.items()}, values


# -- a TF V2 checkpoint writer, following TensorFlow's table_builder.cc, block_builder.cc,
#    format.cc and tensor_bundle.cc (uncompressed blocks, as BundleWriter writes them)
def _varint(n):
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _crc32c_bitwise(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def _masked_crc(data):
    c = _crc32c_bitwise(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class _BlockBuilder:
    def __init__(self, restart_interval):
        self.interval, self.restarts, self.counter = restart_interval, [0], 0
        self.buf, self.last = bytearray(), b""

    def add(self, key, value):
        shared = 0
        if self.counter < self.interval:
            while shared < min(len(self.last), len(key)) and self.last[shared] == key[shared]:
                shared += 1
        else:
            self.restarts.append(len(self.buf))
            self.counter = 0
        self.buf += _varint(shared) + _varint(len(key) - shared) + _varint(len(value)) + key[shared:] + value
        self.last, self.counter = key, self.counter + 1

    def size_estimate(self):
        return len(self.buf) + 4 * len(self.restarts) + 4

    def finish(self):
        return bytes(self.buf) + b"".join(struct.pack("<I", r) for r in self.restarts + [len(self.restarts)])


def _shortest_separator(start, limit):
    n = 0
    while n < min(len(start), len(limit)) and start[n] == limit[n]:
        n += 1
    if n < min(len(start), len(limit)) and start[n] < 0xFF and start[n] + 1 < limit[n]:
        return start[:n] + bytes([start[n] + 1])
    return start


def _short_successor(key):
    for i, b in enumerate(key):
        if b != 0xFF:
            return key[:i] + bytes([b + 1])
    return key


def write_sstable(entries, block_size=262144):
    out = bytearray()

    def write_block(block):
        raw = block.finish()
        handle = _varint(len(out)) + _varint(len(raw))
        out.extend(raw + b"\0" + struct.pack("<I", _masked_crc(raw + b"\0")))
        return handle

    data, index, last, pending = _BlockBuilder(16), _BlockBuilder(1), None, None
    for key, value in entries:
        if last is not None and len(key) + len(value) >= 2 * block_size and data.buf:
            pending, data = write_block(data), _BlockBuilder(16)
        if pending:
            index.add(_shortest_separator(last, key), pending)
            pending = None
        last = key
        data.add(key, value)
        if data.size_estimate() >= block_size:
            pending, data = write_block(data), _BlockBuilder(16)
    if data.buf:
        pending = write_block(data)
    meta = write_block(_BlockBuilder(16))
    if pending:
        index.add(_short_successor(last), pending)
    footer = meta + write_block(index)
    out += footer + b"\0" * (40 - len(footer)) + struct.pack("<Q", TF_MAGIC)
    return bytes(out)


def _pb_int(field, n):       # protobuf: varint field; proto3 leaves out zeros
    return _varint(field << 3) + _varint(n) if n else b""


def _pb_bytes(field, b):     # protobuf: length-delimited field (a nested message)
    return _varint(field << 3 | 2) + _varint(len(b)) + b


def write_tf_checkpoint(prefix, tensors, block_size=262144):
    """{TF name: float32 array} -> prefix.index + prefix.data-00000-of-00001 (BundleWriter's layout)."""
    # BundleHeaderProto: num_shards 1, endianness LITTLE (0, left out), version {producer 1}
    entries, data = [(b"", _pb_int(1, 1) + _pb_bytes(3, _pb_int(1, 1)))], bytearray()
    for name in sorted(tensors):
        raw = np.ascontiguousarray(tensors[name], dtype="<f4").tobytes()
        shape = b"".join(_pb_bytes(2, _pb_int(1, d)) for d in tensors[name].shape)   # TensorShapeProto
        # BundleEntryProto: dtype DT_FLOAT (1), shape, shard_id 0, offset, size, crc32c (fixed32, masked)
        e = _pb_int(1, 1) + _pb_bytes(2, shape) + _pb_int(4, len(data)) + _pb_int(5, len(raw))
        e += _varint(6 << 3 | 5) + struct.pack("<I", _masked_crc(raw))
        entries.append((name.encode(), e))
        data += raw
    (prefix.parent / (prefix.name + ".index")).write_bytes(write_sstable(entries, block_size))
    (prefix.parent / (prefix.name + ".data-00000-of-00001")).write_bytes(bytes(data))


def write_tf_folder(path, cfg, state, block_size=262144):
    path.mkdir(parents=True, exist_ok=True)
    write_tf_checkpoint(path / "model.ckpt", tf_tensors(state, cfg), block_size)
    (path / "hparams.json").write_text(json.dumps({"n_vocab": cfg.vocab_size, "n_ctx": cfg.context_length,
                                                   "n_embd": cfg.emb_dim, "n_head": cfg.n_heads,
                                                   "n_layer": cfg.n_layers}))


def test_crc32c_check_value():
    assert crc32c(b"123456789") == _crc32c_bitwise(b"123456789") == 0xE3069283


def test_our_tf_writer_reproduces_tensorflows_bytes(tmp_path):
    _, values = micro_state()
    write_tf_checkpoint(tmp_path / "model.ckpt", values)
    assert (tmp_path / "model.ckpt.index").read_bytes() == _unpack(REAL_TF_INDEX)
    assert (tmp_path / "model.ckpt.data-00000-of-00001").read_bytes() == _unpack(REAL_TF_DATA)


def test_read_a_real_tensorflow_checkpoint(tmp_path):
    (tmp_path / "model.ckpt.index").write_bytes(_unpack(REAL_TF_INDEX))
    (tmp_path / "model.ckpt.data-00000-of-00001").write_bytes(_unpack(REAL_TF_DATA))
    state, values = micro_state()
    read = read_tf_checkpoint(tmp_path / "model.ckpt")
    assert list(read) == sorted(values)
    for k, v in values.items():
        assert read[k].dtype == np.float32 and read[k].shape == v.shape, k
        np.testing.assert_array_equal(read[k], v)
    hparams = {"n_vocab": 7, "n_ctx": 5, "n_embd": 4, "n_head": 2, "n_layer": 1}
    (tmp_path / "hparams.json").write_text(json.dumps(hparams))
    model = load_gpt2(tmp_path)
    idx = ids(MICRO)
    assert rel_err(model(idx), oracle_logits(state, MICRO, idx)) <= 1e-5


@pytest.mark.parametrize("block_size", [262144, 200], ids=["one-block", "many-blocks"])
def test_load_gpt2_from_a_tf_checkpoint_gives_the_torch_reference_logits(tmp_path, block_size):
    state = random_state(TINY, seed=10)
    write_tf_folder(tmp_path, TINY, state, block_size)
    model = load_gpt2(tmp_path)
    assert model.cfg.tie_weights and model.cfg.qkv_bias
    for k, v in state.items():
        np.testing.assert_array_equal(model.state_dict()[k], v)
    idx = ids(TINY)
    assert rel_err(model(idx), oracle_logits(state, TINY, idx)) <= 1e-5


def test_tf_checkpoint_corruption_is_detected(tmp_path):
    write_tf_folder(tmp_path, TINY, random_state(TINY))
    index = bytearray((tmp_path / "model.ckpt.index").read_bytes())
    index[30] ^= 0x01
    (tmp_path / "model.ckpt.index").write_bytes(bytes(index))
    with pytest.raises(ValueError, match="checksum mismatch"):
        load_gpt2(tmp_path)
    (tmp_path / "model.ckpt.index").write_bytes(b"\0" * 100)
    with pytest.raises(ValueError, match="magic number"):
        load_gpt2(tmp_path)


def test_tf_checkpoint_without_its_data_file(tmp_path):
    write_tf_folder(tmp_path, TINY, random_state(TINY))
    (tmp_path / "model.ckpt.data-00000-of-00001").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.ckpt\.data-00000-of-00001 is missing"):
        load_gpt2(tmp_path)


def test_tf_checkpoint_with_a_wrong_shape(tmp_path):
    state = random_state(TINY)
    state["transformer.wpe.weight"] = state["transformer.wpe.weight"][:8].copy()
    write_tf_folder(tmp_path, TINY, state)
    with pytest.raises(ValueError, match=r"shape \(8, 12\).*expects \(16, 12\)"):
        load_gpt2(tmp_path)


def test_parse_protobuf_reads_each_wire_type():
    msg = (_pb_int(1, 300) + _pb_bytes(2, b"abc") + _varint(6 << 3 | 5) + struct.pack("<I", 0xDEADBEEF)
           + _varint(7 << 3 | 1) + struct.pack("<Q", 2**40))
    assert parse_protobuf(msg) == {1: [300], 2: [b"abc"], 6: [0xDEADBEEF], 7: [2**40]}
