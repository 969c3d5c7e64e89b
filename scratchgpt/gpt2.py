"""Load OpenAI's GPT-2 weights (gpt2, gpt2-medium, gpt2-large, gpt2-xl) from local files.

    model = load_gpt2("models/gpt2")          # -> GPTModel, the same names as model.state_dict()
    save_gpt2(model, "out/my-gpt2")           # config.json + model.safetensors, Hugging Face layout

Two folder layouts are understood, and neither needs pickle, torch or TensorFlow:

  * Hugging Face: `config.json` + `model.safetensors` (or sharded `model-0000k-of-0000n.safetensors`
    files with `model.safetensors.index.json`). Tensor names with or without the `transformer.`
    prefix; the causal-mask buffers `h.N.attn.bias` / `h.N.attn.masked_bias` are skipped.
  * OpenAI's original release: `hparams.json` + `model.ckpt.index` + `model.ckpt.data-00000-of-00001`
    (a TensorFlow "V2" checkpoint, read here with a small SSTable and protobuf decoder).

GPT-2's linear layers are `Conv1D`s with weights stored (in, out) -- the layout our model uses -- so
weights are copied as they are, with no transpose.
"""
import json
import math
import os
import re
import tempfile
from pathlib import Path

import numpy as np

from scratchgpt import backend
from scratchgpt.model import GPTConfig, GPTModel, parameter_shapes

# The four published sizes (all with vocab_size 50257 and context_length 1024).
GPT2_SIZES = {
    "gpt2": dict(emb_dim=768, n_layers=12, n_heads=12),          # 124M
    "gpt2-medium": dict(emb_dim=1024, n_layers=24, n_heads=16),  # 355M
    "gpt2-large": dict(emb_dim=1280, n_layers=36, n_heads=20),   # 774M
    "gpt2-xl": dict(emb_dim=1600, n_layers=48, n_heads=25),      # 1558M
}
_KNOWN = "; ".join(f"{k}: n_embd {v['emb_dim']}, n_layer {v['n_layers']}, n_head {v['n_heads']}"
                   for k, v in GPT2_SIZES.items())
_ACTIVATIONS = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh", "gelu": "none"}


# ---- config ------------------------------------------------------------------------------
def gpt2_config_from_hf(config, drop_rate=0.0):
    """A Hugging Face GPT-2 `config.json` dict (or OpenAI's `hparams.json`) -> GPTConfig.

    Any consistent size loads (tiny test models too); what our model cannot compute the same way
    (another activation, LayerNorm eps, attention scaling) is refused rather than silently changed.
    """
    d = dict(config)
    if d.get("model_type", "gpt2") != "gpt2":
        raise ValueError(f"config.json describes a {d['model_type']!r} model, not GPT-2 (model_type 'gpt2')")
    if "vocab_size" not in d and "n_vocab" in d:   # OpenAI's hparams.json
        d["vocab_size"] = d["n_vocab"]
    ctx = [d[k] for k in ("n_positions", "n_ctx") if d.get(k) is not None]
    missing = [k for k in ("vocab_size", "n_embd", "n_layer", "n_head") if k not in d]
    if not ctx:
        missing.append("n_positions")
    if missing:
        raise ValueError(f"GPT-2 config is missing {missing}; a GPT-2 config.json has "
                         f"vocab_size, n_positions, n_embd, n_layer and n_head")

    def problem(msg):
        return ValueError(f"GPT-2 config is inconsistent: {msg} (it matches no known GPT-2 size; "
                          f"known sizes: {_KNOWN})")

    for k in ("vocab_size", "n_embd", "n_layer", "n_head"):
        v = d[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise problem(f"{k} must be a positive integer, got {v!r}")
    for v in ctx:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise problem(f"n_positions must be a positive integer, got {v!r}")
    if len(ctx) == 2 and ctx[0] != ctx[1]:
        raise problem(f"n_positions {ctx[0]} and n_ctx {ctx[1]} disagree")
    C, H = d["n_embd"], d["n_head"]
    if C % H:
        raise problem(f"n_embd {C} is not divisible by n_head {H}")
    if d.get("n_inner") is not None and d["n_inner"] != 4 * C:
        raise problem(f"n_inner {d['n_inner']} is not 4 * n_embd = {4 * C}")

    act = d.get("activation_function", "gelu_new")
    if act not in _ACTIVATIONS:
        raise ValueError(f"activation_function {act!r} is not supported: use one of {sorted(_ACTIVATIONS)}")
    eps = d.get("layer_norm_epsilon", 1e-5)
    if not math.isclose(eps, 1e-5, rel_tol=1e-6):
        raise ValueError(f"layer_norm_epsilon {eps} is not supported: our LayerNorm uses GPT-2's 1e-05")
    for key, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                      ("add_cross_attention", False)):
        if d.get(key, want) != want:
            raise ValueError(f"{key}={d[key]!r} is not supported (GPT-2 uses {want})")
    return GPTConfig(vocab_size=d["vocab_size"], context_length=ctx[0], emb_dim=C, n_heads=H,
                     n_layers=d["n_layer"], drop_rate=drop_rate, qkv_bias=True,
                     tie_weights=bool(d.get("tie_word_embeddings", True)),
                     gelu_approximate=_ACTIVATIONS[act])


def gpt2_config_to_hf(cfg):
    """GPTConfig -> a Hugging Face GPT2LMHeadModel config.json dict."""
    if cfg.post_norm:
        raise ValueError("a post_norm model is not GPT-2 (GPT-2 normalises before each sublayer); "
                         "it cannot be written in GPT-2's layout")
    d = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
         "vocab_size": cfg.vocab_size, "n_positions": cfg.context_length, "n_ctx": cfg.context_length,
         "n_embd": cfg.emb_dim, "n_layer": cfg.n_layers, "n_head": cfg.n_heads, "n_inner": None,
         "activation_function": "gelu_new" if cfg.gelu_approximate == "tanh" else "gelu",
         "layer_norm_epsilon": 1e-5, "resid_pdrop": cfg.drop_rate, "embd_pdrop": cfg.drop_rate,
         "attn_pdrop": cfg.drop_rate, "initializer_range": 0.02, "scale_attn_weights": True,
         "use_cache": True, "tie_word_embeddings": cfg.tie_weights}
    if cfg.vocab_size > 50256:                 # GPT-2's <|endoftext|>
        d.update(bos_token_id=50256, eos_token_id=50256)
    return d


# ---- safetensors -------------------------------------------------------------------------
# The format: an 8-byte little-endian header length N, N bytes of JSON
#   {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ..., "__metadata__": {..}}
# then the raw little-endian tensor bytes; offsets count from the first byte after the header.
_ST_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4",
              "I16": "<i2", "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?"}


def bf16_to_float32(u16):
    """bfloat16 is the top half of a float32: shift the 16 stored bits up, zero-fill the rest."""
    return (np.asarray(u16, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16(x):
    """float32 -> bfloat16 bits (uint16), rounding to nearest even as torch does."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(x), np.uint16(0x7FC0), rounded)


def read_safetensors(path):
    """{name: array} from a .safetensors file, memory-mapped (read-only views, nothing read twice).

    Arrays keep their stored dtype, except BF16, which NumPy lacks: it comes back as float32 (exact).
    """
    path = Path(path)
    size = path.stat().st_size
    if size < 8:
        raise ValueError(f"{path} is not a safetensors file: {size} bytes, shorter than the 8-byte header length")
    buf = np.memmap(path, dtype=np.uint8, mode="r")
    n = int.from_bytes(buf[:8].tobytes(), "little")
    if n > size - 8 or n > 100_000_000:
        raise ValueError(f"{path} is not a safetensors file: header length {n} does not fit in {size} bytes")
    try:
        header = json.loads(buf[8:8 + n].tobytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a safetensors file: its header is not JSON ({e})") from None
    data_start, data_size = 8 + n, size - 8 - n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        code, shape = info["dtype"], tuple(info["shape"])
        if code not in _ST_DTYPES:
            raise ValueError(f"tensor {name!r} in {path} has dtype {code}, which this reader does not "
                             f"support (supported: {sorted(_ST_DTYPES)})")
        dt = np.dtype(_ST_DTYPES[code])
        begin, end = info["data_offsets"]
        if not 0 <= begin <= end <= data_size or end - begin != math.prod(shape) * dt.itemsize:
            raise ValueError(f"tensor {name!r} in {path}: data_offsets [{begin}, {end}] do not hold "
                             f"{code} {list(shape)} within the {data_size} data bytes (truncated file?)")
        a = np.frombuffer(buf, dtype=dt, count=math.prod(shape), offset=data_start + begin).reshape(shape)
        out[name] = bf16_to_float32(a) if code == "BF16" else a
    return out


def write_safetensors(path, tensors, metadata=None):
    """Write {name: array} as a .safetensors file (atomically: a temporary file, then a rename).

    Values are NumPy/CuPy arrays, or ("BF16", uint16 bits) pairs for bfloat16 (see float32_to_bf16).
    `metadata`: {str: str}, stored as "__metadata__" (Hugging Face expects {"format": "pt"}).
    """
    codes = {np.dtype(v).str: k for k, v in _ST_DTYPES.items() if k != "BF16"}
    header, arrays, at = {}, [], 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name, a in tensors.items():
        code = None
        if isinstance(a, tuple):             # ("BF16", uint16 bits)
            code, a = a
        a = np.ascontiguousarray(backend.to_numpy(a))
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        code = code or codes.get(a.dtype.str)
        if code is None:
            raise ValueError(f"tensor {name!r} has dtype {a.dtype}, which safetensors cannot store")
        header[name] = {"dtype": code, "shape": list(a.shape), "data_offsets": [at, at + a.nbytes]}
        arrays.append(a)
        at += a.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)          # pad so the data starts 8-byte aligned
    _atomic_write(path, [len(blob).to_bytes(8, "little"), blob] + [a.reshape(-1).view(np.uint8) for a in arrays])


def _atomic_write(path, chunks):
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            for c in chunks:
                f.write(c)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


# ---- names and shapes --------------------------------------------------------------------
_MASK_BUFFER = re.compile(r"^(transformer\.)?h\.\d+\.attn\.(bias|masked_bias)$")


def _hf_name(name):
    """'h.0.ln_1.weight' (OpenAI's published files) -> 'transformer.h.0.ln_1.weight' (ours)."""
    return name if name.startswith("transformer.") or name == "lm_head.weight" else "transformer." + name


def gpt2_state_dict(tensors, cfg, source="the checkpoint"):
    """Rename and check {file name: array} against `cfg`; returns (state_dict, tie_weights).

    Mask buffers are dropped; an `lm_head.weight` equal to the token embedding is dropped (the head
    is tied); one that differs unties the head. Names and shapes are checked against `cfg`.
    """
    state, original = {}, {}
    for name, a in tensors.items():
        if _MASK_BUFFER.match(name):
            continue
        k = _hf_name(name)
        if k in state:
            raise ValueError(f"{source} holds {original[k]!r} and {name!r}, the same tensor twice")
        state[k], original[k] = a, name
    tie = True
    head = state.get("lm_head.weight")
    wte = state.get("transformer.wte.weight")
    if head is not None:
        want = (cfg.vocab_size, cfg.emb_dim)
        if tuple(head.shape) != want:
            raise ValueError(f"tensor 'lm_head.weight' in {source} has shape {tuple(head.shape)}, "
                             f"the config expects {want}")
        if wte is not None and tuple(wte.shape) == want and np.array_equal(head, wte):
            del state["lm_head.weight"]
        else:
            tie = False
    elif not cfg.tie_weights:
        raise ValueError(f"the config says tie_word_embeddings=false but {source} has no 'lm_head.weight'")
    cfg = GPTConfig(**{**cfg.to_dict(), "tie_weights": tie})
    expected = parameter_shapes(cfg)
    missing = [k for k in expected if k not in state]
    unexpected = [original[k] for k in state if k not in expected]
    if missing or unexpected:
        msg = []
        if missing:
            msg.append(f"missing {len(missing)} tensor(s): {missing[:6]}")
        if unexpected:
            msg.append(f"unexpected {len(unexpected)} tensor(s): {unexpected[:6]}")
        raise ValueError(f"{source} does not hold a GPT-2 with {cfg.n_layers} layers: " + "; ".join(msg))
    for k, shape in expected.items():
        if tuple(state[k].shape) != shape:
            raise ValueError(f"tensor {original[k]!r} in {source} has shape {tuple(state[k].shape)}, "
                             f"the config (n_embd {cfg.emb_dim}, n_positions {cfg.context_length}, "
                             f"vocab_size {cfg.vocab_size}) expects {shape}")
    return state, tie


def _build_model(cfg, state, tie, dtype):
    cfg = GPTConfig(**{**cfg.to_dict(), "tie_weights": tie})
    model = GPTModel(cfg, dtype=dtype, init=False)
    model.load_state_dict({k: np.asarray(v).astype(model.dtype, copy=False) for k, v in state.items()})
    return model


# ---- the loader --------------------------------------------------------------------------
def load_gpt2(path, dtype="float32", drop_rate=0.0):
    """A GPTModel with GPT-2's weights from a local folder (Hugging Face or OpenAI's original layout).

    dtype: "float32" or "float64"; stored F16/BF16/F32 weights are converted. drop_rate: for fine-tuning.
    """
    path = Path(path)
    dtype = backend.get_dtype(dtype)
    if path.is_file():
        raise ValueError(f"{path} is a file: pass the folder that holds config.json and model.safetensors")
    if not path.is_dir():
        raise FileNotFoundError(f"GPT-2 folder {path} does not exist")
    if (path / "model.safetensors").exists() or (path / "model.safetensors.index.json").exists():
        return _load_hf(path, dtype, drop_rate)
    if (path / "hparams.json").exists() and list(path.glob("*.index")):
        return _load_tf(path, dtype, drop_rate)
    _raise_missing(path)


def _raise_missing(path):
    have = sorted(p.name for p in path.iterdir())
    msg = (f"{path} holds no GPT-2 weights that scratchgpt can read (it has {have[:10]}). Expected "
           f"a Hugging Face folder (config.json + model.safetensors) or OpenAI's original release "
           f"(hparams.json + model.ckpt.index + model.ckpt.data-00000-of-00001).")
    if (path / "pytorch_model.bin").exists():
        msg += (" pytorch_model.bin is a pickle file, and scratchgpt never loads pickle files "
                "(unpickling can run arbitrary code): download model.safetensors from the same "
                "Hugging Face repository instead.")
    if (path / "hparams.json").exists():
        msg += " hparams.json is here but no model.ckpt.index."
    raise FileNotFoundError(msg)


def _load_hf(path, dtype, drop_rate):
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} has the weights but no config.json: a Hugging Face GPT-2 "
                                f"folder holds config.json next to model.safetensors")
    cfg = gpt2_config_from_hf(json.loads((path / "config.json").read_text()), drop_rate)
    if (path / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:   # sharded: {"weight_map": {tensor name: file name}}
        index = json.loads((path / "model.safetensors.index.json").read_text())
        files = sorted(set(index["weight_map"].values()))
    tensors = {}
    for f in files:
        if not (path / f).exists():
            raise FileNotFoundError(f"{path / f} is missing (listed in model.safetensors.index.json)")
        tensors.update(read_safetensors(path / f))
    state, tie = gpt2_state_dict(tensors, cfg, source=str(path / files[0]))
    return _build_model(cfg, state, tie, dtype)


def save_gpt2(model, path, dtype=None):
    """Write `model` as a Hugging Face GPT-2 folder: config.json + model.safetensors.

    Names carry the `transformer.` prefix (as save_pretrained writes them); a tied head is left out.
    dtype: None (the model's), "float32", "float16", "bfloat16" or "float64". A model without a
    qkv bias gets a zero c_attn.bias, which computes the same thing in GPT-2's layout.
    """
    cfg = model.cfg
    if model.extensions:
        raise ValueError("save_gpt2 writes language models: merge LoRA adapters first (scratchgpt.lora), "
                         "and a classifier (num_classes > 0) has no GPT2LMHeadModel layout")
    config = gpt2_config_to_hf(cfg)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: backend.to_numpy(v) for k, v in model.state_dict().items()}
    if not cfg.qkv_bias:
        for i in range(cfg.n_layers):
            tensors[f"transformer.h.{i}.attn.c_attn.bias"] = np.zeros(3 * cfg.emb_dim, dtype=model.dtype)
    dtype = dtype or str(model.dtype)
    if dtype == "bfloat16":
        tensors = {k: ("BF16", float32_to_bf16(v)) for k, v in tensors.items()}
    elif dtype in ("float16", "float32", "float64"):
        tensors = {k: v.astype(dtype) for k, v in tensors.items()}
    else:
        raise ValueError(f"unsupported dtype {dtype!r}: use float32, float16, bfloat16 or float64")
    config["torch_dtype"] = dtype
    write_safetensors(path / "model.safetensors", dict(sorted(tensors.items())), metadata={"format": "pt"})
    _atomic_write(path / "config.json", [json.dumps(config, indent=2).encode() + b"\n"])
    return path


# ---- OpenAI's original TensorFlow checkpoint, read without TensorFlow ----------------------
# A TF "V2" checkpoint `model.ckpt` is two files:
#   model.ckpt.index                 a LevelDB-style sorted string table (SSTable): tensor name ->
#                                    BundleEntryProto (dtype, shape, shard, offset, size, crc32c);
#                                    the empty key "" holds a BundleHeaderProto (num_shards, endianness)
#   model.ckpt.data-00000-of-00001   the raw tensor bytes, one after another
# SSTable: data blocks, a metaindex block, an index block, then a 48-byte footer:
#   metaindex handle, index handle (each varint64 offset + varint64 size), zero padding to 40 bytes,
#   the 8-byte magic 0xdb4775248b80fb57. Each block is followed by a 1-byte compression type and a
#   4-byte masked crc32c. Inside a block, entries are (shared, non_shared, value_len) varints, the key
#   suffix and the value (keys share a prefix with the previous key); a uint32 restart array ends it.
TABLE_MAGIC = 0xDB4775248B80FB57
_TF_DTYPES = {1: "<f4", 2: "<f8", 19: "<f2", 14: "<u2"}   # DT_FLOAT, DT_DOUBLE, DT_HALF, DT_BFLOAT16
_TF_DTYPE_NAMES = {3: "int32", 9: "int64", 7: "string", 10: "bool"}


def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)   # Castagnoli polynomial, reflected
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c(data, crc=0):
    """CRC-32C (Castagnoli), as LevelDB and TensorFlow use; crc32c(b"123456789") == 0xE3069283."""
    crc ^= 0xFFFFFFFF
    for b in bytes(data):
        crc = _CRC32C[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def mask_crc(crc):
    """LevelDB stores CRCs rotated and offset, so a CRC of data holding CRCs stays well-behaved."""
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(buf, pos):
    """Little-endian base-128: 7 bits per byte, high bit set on every byte but the last."""
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint in the checkpoint index")
        b = buf[pos]
        result |= (b & 0x7F) << shift
        pos += 1
        if not b & 0x80:
            return result, pos
        shift += 7


def parse_protobuf(buf):
    """Decode a protobuf message into {field number: [values]} (ints, or bytes for length-delimited)."""
    fields, pos = {}, 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:                     # varint
            value, pos = _varint(buf, pos)
        elif wire == 1:                   # fixed64
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire == 2:                   # length-delimited: bytes, string or a nested message
            n, pos = _varint(buf, pos)
            value, pos = bytes(buf[pos:pos + n]), pos + n
        elif wire == 5:                   # fixed32
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} (field {field})")
        if pos > len(buf):
            raise ValueError(f"truncated protobuf field {field}")
        fields.setdefault(field, []).append(value)
    return fields


def _read_block(buf, offset, size, what):
    """Entries (key, value) of one SSTable block, after checking its type byte and checksum."""
    if offset + size + 5 > len(buf):
        raise ValueError(f"{what} block at {offset} (+{size} bytes) runs past the end of the index file")
    contents = buf[offset:offset + size]
    kind = buf[offset + size]
    stored = int.from_bytes(buf[offset + size + 1:offset + size + 5], "little")
    if mask_crc(crc32c(buf[offset:offset + size + 1])) != stored:
        raise ValueError(f"{what} block at offset {offset}: checksum mismatch (corrupt index file)")
    if kind != 0:
        raise ValueError(f"{what} block at offset {offset} is compressed (type {kind}); TensorFlow "
                         f"writes checkpoint indexes uncompressed and this reader handles only those")
    n_restarts = int.from_bytes(contents[-4:], "little")
    limit = size - 4 * (n_restarts + 1)   # the entries end where the restart array begins
    entries, key, pos = [], b"", 0
    while pos < limit:
        shared, pos = _varint(contents, pos)
        non_shared, pos = _varint(contents, pos)
        value_len, pos = _varint(contents, pos)
        key = key[:shared] + bytes(contents[pos:pos + non_shared])
        pos += non_shared
        entries.append((key, bytes(contents[pos:pos + value_len])))
        pos += value_len
    return entries


def read_sstable(buf):
    """All (key, value) pairs of a LevelDB/TensorFlow SSTable held in `buf`, in key order."""
    if len(buf) < 48 or int.from_bytes(buf[-8:], "little") != TABLE_MAGIC:
        raise ValueError("not a TensorFlow checkpoint index: the table magic number is missing")
    footer = buf[-48:]
    _, pos = _varint(footer, 0)            # metaindex handle: GPT-2's has no meta blocks
    _, pos = _varint(footer, pos)
    index_offset, pos = _varint(footer, pos)
    index_size, pos = _varint(footer, pos)
    out = []
    for _, handle in _read_block(buf, index_offset, index_size, "index"):
        offset, p = _varint(handle, 0)
        size, _ = _varint(handle, p)
        out += _read_block(buf, offset, size, "data")
    return out


def read_tf_checkpoint(prefix):
    """{name: float array} from a TensorFlow V2 checkpoint `prefix` (e.g. 'models/124M/model.ckpt')."""
    prefix = str(prefix)
    index = Path(prefix + ".index").read_bytes()
    entries = read_sstable(index)
    if not entries or entries[0][0] != b"":
        raise ValueError(f"{prefix}.index has no bundle header entry (the empty key)")
    header = parse_protobuf(entries[0][1])
    num_shards = header.get(1, [0])[0]
    order = ">" if header.get(2, [0])[0] == 1 else "<"
    shards = {}
    out = {}
    for key, value in entries[1:]:
        name = key.decode()
        e = parse_protobuf(value)
        if 7 in e:
            raise ValueError(f"tensor {name!r} is partitioned into slices, which this reader does not support")
        code = e.get(1, [0])[0]
        if code not in _TF_DTYPES:
            kind = _TF_DTYPE_NAMES.get(code, f"DataType {code}")
            if name.startswith("model/"):
                raise ValueError(f"tensor {name!r} has dtype {kind}; expected float32")
            continue                        # e.g. an int64 global_step: not a weight
        dims = parse_protobuf(e[2][0]).get(2, []) if 2 in e else []
        shape = tuple(parse_protobuf(d).get(1, [0])[0] for d in dims)
        shard, offset, size = e.get(3, [0])[0], e.get(4, [0])[0], e.get(5, [0])[0]
        dt = np.dtype(_TF_DTYPES[code]).newbyteorder(order)
        if size != math.prod(shape) * dt.itemsize:
            raise ValueError(f"tensor {name!r}: {size} bytes do not hold shape {list(shape)} of {dt}")
        if shard not in shards:
            data = f"{prefix}.data-{shard:05d}-of-{num_shards:05d}"
            if not Path(data).exists():
                raise FileNotFoundError(f"{data} is missing: the checkpoint's tensor data lives there")
            shards[shard] = np.memmap(data, dtype=np.uint8, mode="r")
        if offset + size > shards[shard].size:
            raise ValueError(f"tensor {name!r} lies past the end of its data file (truncated download?)")
        a = np.frombuffer(shards[shard], dtype=dt, count=math.prod(shape), offset=offset).reshape(shape)
        out[name] = bf16_to_float32(a) if code == 14 else a
    return out


_TF_NAME = re.compile(r"^model/h(\d+)/(ln_1|ln_2|attn/c_attn|attn/c_proj|mlp/c_fc|mlp/c_proj)/(g|b|w)$")


def tf_to_hf_name(name):
    """'model/h0/attn/c_attn/w' -> 'transformer.h.0.attn.c_attn.weight' (None for other names)."""
    top = {"model/wte": "transformer.wte.weight", "model/wpe": "transformer.wpe.weight",
           "model/ln_f/g": "transformer.ln_f.weight", "model/ln_f/b": "transformer.ln_f.bias"}
    if name in top:
        return top[name]
    m = _TF_NAME.match(name)
    if not m:
        return None
    layer, sub, p = m.groups()
    return f"transformer.h.{layer}.{sub.replace('/', '.')}.{'bias' if p == 'b' else 'weight'}"


def _load_tf(path, dtype, drop_rate):
    indexes = sorted(path.glob("*.index"))
    if len(indexes) > 1:   # several checkpoints: the `checkpoint` file names the latest
        ckpt = path / "checkpoint"
        m = ckpt.exists() and re.search(r'model_checkpoint_path:\s*"([^"]+)"', ckpt.read_text())
        if not m:
            raise ValueError(f"{path} holds several checkpoints {[p.name for p in indexes]}; keep one")
        indexes = [path / (Path(m.group(1)).name + ".index")]
    prefix = str(indexes[0])[:-len(".index")]
    cfg = gpt2_config_from_hf(json.loads((path / "hparams.json").read_text()), drop_rate)
    tensors = {}
    for name, a in read_tf_checkpoint(prefix).items():
        k = tf_to_hf_name(name)
        if k is None:
            if name.startswith("model/"):
                raise ValueError(f"unexpected tensor {name!r} in {prefix}.index (not a GPT-2 weight)")
            continue
        if name.endswith("/w"):             # Conv1D weights are stored [1, in, out]
            if a.ndim != 3 or a.shape[0] != 1:
                raise ValueError(f"tensor {name!r} in {prefix}.index has shape {list(a.shape)}; "
                                 f"expected [1, in, out]")
            a = a[0]
        tensors[k] = a
    state, tie = gpt2_state_dict(tensors, cfg, source=prefix + ".index")
    return _build_model(cfg, state, tie, dtype)
