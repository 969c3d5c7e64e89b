"""Data: corpus -> token ids on disk -> train/val split -> batches (chapter 2 of the book).

    corpus = prepare_corpus("shakespeare")           # encoded once, then read from the cache
    corpus.train, corpus.val                         # uint16/uint32 arrays (memory-mapped)
    x, y = get_batch(corpus.train, batch_size=32, context_length=128, rng=rng)   # (B, T) int64

Two ways to cut a token stream into training examples:

- random windows (nanoGPT's `get_batch`, what `scratchgpt train` uses): each batch picks
  batch_size random start positions; y is x shifted one token to the left. `BatchSampler`
  keeps the generator, so a resumed run draws exactly the batches it would have drawn.
- the book's sliding window (`GPTDatasetV1` + `create_dataloader_v1`, chapter 2): every
  `stride` tokens one example of `max_length` tokens, served in (shuffled) batches per epoch.

The cache (~/.cache/scratchgpt, or $SCRATCHGPT_CACHE) holds per corpus train.bin and val.bin
(the ids as raw uint16, or uint32 for vocabularies over 65,536) and meta.json (tokenizer,
sizes, source, sha256), the layout of nanoGPT's prepare.py. The split is nanoGPT's too: the
first 90% of the tokens train, the last 10% validate.
"""
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CACHE_FORMAT = 1
VAL_FRACTION = 0.1


# ---------------------------------------------------------------------------------------
# encoding and splitting
# ---------------------------------------------------------------------------------------

def encode_text(text, tokenizer):
    """Text -> token ids (an int64 array).

    A CharTokenizer encodes through a lookup table over the text's code points (NumPy: 0.03 s
    for the 4.9 M characters of wikipedia, against 0.4 s for `encode` plus the list -> array
    conversion); any other tokenizer through its own `encode` (a BPE tokenizer with its special
    tokens allowed, so "<|endoftext|>" in a text file separates documents). A character the
    tokenizer cannot encode is a ValueError.
    """
    from scratchgpt.tokenizer import BPETokenizer, CharTokenizer
    if isinstance(tokenizer, BPETokenizer):       # "<|endoftext|>" in a text separates documents
        return np.asarray(tokenizer.encode(text, allowed_special="all"), dtype=np.int64)
    if not isinstance(tokenizer, CharTokenizer):
        return np.asarray(tokenizer.encode(text), dtype=np.int64)
    cps = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")              # (N,) code points
    present = np.flatnonzero(np.bincount(cps)) if cps.size else np.zeros(0, np.int64)
    table = np.full(int(present.max()) + 1 if present.size else 1, -1, dtype=np.int64)
    for cp in present:                                                      # one entry per distinct char
        table[cp] = tokenizer.stoi.get(chr(cp), -1)
    ids = table[cps]
    if present.size and (table[present] < 0).any():
        tokenizer.encode(text)                                              # raises its clear ValueError
        raise ValueError("the text has characters outside the tokenizer's vocabulary")
    return ids


def split_train_val(ids, val_fraction=VAL_FRACTION):
    """(train, val): the first 1 - val_fraction of the ids, then the rest (no shuffling, so
    validation text is text the model has never seen, as in nanoGPT)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_train = int(len(ids) * (1.0 - val_fraction))
    return ids[:n_train], ids[n_train:]


def id_dtype(vocab_size):
    """uint16 holds ids 0..65535, so vocabularies up to 65,536 (GPT-2's 50,257 included)."""
    return np.uint16 if vocab_size <= 2**16 else np.uint32


# ---------------------------------------------------------------------------------------
# the prepared-corpus cache
# ---------------------------------------------------------------------------------------

@dataclass
class PreparedCorpus:
    name: str
    train: np.ndarray                  # (N_train,) token ids, uint16 or uint32, memory-mapped
    val: np.ndarray                    # (N_val,)
    tokenizer: object
    cache_dir: Path
    meta: dict = field(repr=False)

    @property
    def vocab_size(self):
        return self.tokenizer.vocab_size


def cache_root(cache_dir=None):
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("SCRATCHGPT_CACHE"):
        return Path(os.environ["SCRATCHGPT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "scratchgpt"


def tokenizer_sha256(tokenizer):
    d = json.dumps(tokenizer.to_dict(), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(d.encode("utf-8")).hexdigest()


def prepare_corpus(name=None, text_file=None, cache_dir=None, tokenizer=None):
    """Encode a corpus once and cache it; later calls read the cache (memory-mapped).

    name:       one of scratchgpt.corpora.DATASETS (default "shakespeare" when no text_file)
    text_file:  a UTF-8 text file of your own instead; cached under the sha256 of its content,
                so an edited file is prepared afresh
    cache_dir:  the cache root (default $SCRATCHGPT_CACHE or ~/.cache/scratchgpt); each corpus
                gets a folder in it
    tokenizer:  encode with this tokenizer (e.g. GPT-2's BPE, or one vocabulary shared by several
                corpora) instead of a CharTokenizer built from the text; cached separately per
                tokenizer (sha256 of its to_dict())

    A cache is reused when its meta.json matches: format, source (a named corpus records its
    package and loader versions; a file, its sha256), tokenizer, and the sizes of the .bin files.
    """
    from scratchgpt import corpora
    if name is not None and text_file is not None:
        raise ValueError(f"give a dataset name or a text file, not both (got {name!r} and {text_file!r})")
    text = None
    if text_file is not None:
        path = Path(text_file)
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path} is not UTF-8 text: byte {raw[e.start]:#04x} at offset {e.start}") from None
        if not text:
            raise ValueError(f"{path} is empty")
        sha = hashlib.sha256(raw).hexdigest()
        name, source = path.stem, f"text file {path.name} sha256:{sha}"
        key = f"file-{sha[:16]}"
    else:
        name = name or "shakespeare"
        if name not in corpora.DATASETS:
            raise ValueError(f"unknown dataset {name!r}; the datasets are {', '.join(corpora.DATASETS)} "
                             "(or use a text file of your own)")
        source, key = corpora.source_of(name), name

    root = cache_root(cache_dir)
    folder = root / key
    want_tok = tokenizer_sha256(tokenizer) if tokenizer is not None else None
    if want_tok is not None:
        # a tokenizer equal to the one the default cache was built with can share that cache
        if _load_if_valid(folder, source, want_tok) is None:
            folder = root / key / f"tok-{want_tok[:16]}"
    cached = _load_if_valid(folder, source, want_tok)
    if cached is not None:
        return cached

    if text is None:
        text = corpora.load_text(name)
    if tokenizer is None:
        from scratchgpt.tokenizer import CharTokenizer
        tokenizer = CharTokenizer.from_text(text)
    ids = encode_text(text, tokenizer)
    if ids.size and (ids.min() < 0 or ids.max() >= tokenizer.vocab_size):
        raise ValueError(f"the tokenizer produced id {int(ids.max())} outside its vocabulary "
                         f"(size {tokenizer.vocab_size})")
    dtype = id_dtype(tokenizer.vocab_size)
    train, val = split_train_val(ids.astype(dtype))
    meta = {"format": CACHE_FORMAT, "name": name, "source": source,
            "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(), "n_chars": len(text),
            "n_tokens": int(ids.size), "n_train": int(train.size), "n_val": int(val.size),
            "val_fraction": VAL_FRACTION, "dtype": np.dtype(dtype).name,
            "vocab_size": tokenizer.vocab_size, "tokenizer_sha256": tokenizer_sha256(tokenizer),
            "tokenizer": tokenizer.to_dict()}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "meta.json").unlink(missing_ok=True)      # meta.json is written last: it marks a complete cache
    _atomic_write(folder / "train.bin", train.tobytes())
    _atomic_write(folder / "val.bin", val.tobytes())
    _atomic_write(folder / "meta.json", json.dumps(meta, ensure_ascii=False, indent=1).encode("utf-8"))
    return _open(folder, meta, tokenizer)


def _load_if_valid(folder, source, tokenizer_sha=None):
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        itemsize = np.dtype(meta["dtype"]).itemsize
        ok = (meta["format"] == CACHE_FORMAT and meta["source"] == source
              and (tokenizer_sha is None or meta["tokenizer_sha256"] == tokenizer_sha)
              and (folder / "train.bin").stat().st_size == meta["n_train"] * itemsize
              and (folder / "val.bin").stat().st_size == meta["n_val"] * itemsize)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not ok:
        return None
    from scratchgpt.tokenizer import tokenizer_from_dict
    return _open(folder, meta, tokenizer_from_dict(meta["tokenizer"]))


def _open(folder, meta, tokenizer):
    def load(split):
        if meta[f"n_{split}"] == 0:                     # np.memmap cannot map an empty file
            return np.zeros(0, dtype=meta["dtype"])
        return np.memmap(folder / f"{split}.bin", dtype=meta["dtype"], mode="r")
    return PreparedCorpus(meta["name"], load("train"), load("val"), tokenizer, folder, meta)


def _atomic_write(path, data):
    """Write to a temporary file in the same folder, then rename over `path`: a reader never
    sees half a file, and an interrupted write leaves the old file (or none)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)                            # mkstemp makes it owner-only
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------
# random-window batches (nanoGPT)
# ---------------------------------------------------------------------------------------

def get_batch(data, batch_size, context_length, rng):
    """batch_size random windows of the token stream: x (B, T) and y = x shifted by one, int64.

    data: 1-D array of token ids; rng: a numpy.random.Generator (same state, same batch)."""
    n = len(data)
    if n <= context_length:
        raise ValueError(f"need more than context_length={context_length} tokens to draw a window, "
                         f"the data has {n}")
    ix = rng.integers(0, n - context_length, size=batch_size)              # (B,) window starts
    idx = ix[:, None] + np.arange(context_length)                          # (B, T) positions
    data = np.asarray(data)
    return data[idx].astype(np.int64), data[idx + 1].astype(np.int64)      # (B, T), (B, T)


class BatchSampler:
    """Endless random batches from one seeded generator, with a resumable state.

        sampler = BatchSampler(corpus.train, batch_size=32, context_length=128, seed=0)
        x, y = sampler.next()
        state = sampler.state_dict()         # JSON-able; store it in the checkpoint
        sampler.load_state_dict(state)       # ... the next batches are the ones that would have come
    """

    def __init__(self, data, batch_size, context_length, seed=0):
        self.data, self.batch_size, self.context_length = data, batch_size, context_length
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        self.batches_drawn = 0

    def next(self):
        self.batches_drawn += 1
        return get_batch(self.data, self.batch_size, self.context_length, self.rng)

    __next__ = next

    def __iter__(self):
        return self

    def state_dict(self):
        return {"bit_generator": self.rng.bit_generator.state, "batches_drawn": self.batches_drawn,
                "batch_size": self.batch_size, "context_length": self.context_length}

    def load_state_dict(self, state):
        if state["bit_generator"]["bit_generator"] != type(self.rng.bit_generator).__name__:
            raise ValueError(f"the state is for a {state['bit_generator']['bit_generator']} generator, "
                             f"this sampler uses {type(self.rng.bit_generator).__name__}")
        self.rng.bit_generator.state = state["bit_generator"]
        self.batches_drawn = state.get("batches_drawn", 0)


# ---------------------------------------------------------------------------------------
# the book's sliding-window dataset (chapter 2)
# ---------------------------------------------------------------------------------------

class GPTDatasetV1:
    """The book's GPTDatasetV1: one (input, target) pair every `stride` tokens.

    Example i starts at token i * stride; the pairs are exactly the book's
        for i in range(0, len(token_ids) - max_length, stride):
            input_chunk = token_ids[i:i + max_length]
            target_chunk = token_ids[i + 1:i + max_length + 1]
    Differences from the book: it takes token ids rather than text + tokenizer, and keeps one
    array with the start positions instead of two lists of tensors (same pairs, far less memory).
    """

    def __init__(self, token_ids, max_length, stride):
        self.token_ids = np.asarray(token_ids, dtype=np.int64)             # (N,)
        if self.token_ids.ndim != 1:
            raise ValueError(f"token_ids must be 1-D, got shape {self.token_ids.shape}")
        if len(self.token_ids) <= max_length:
            raise ValueError(f"the number of tokens ({len(self.token_ids)}) must be at least "
                             f"max_length + 1 = {max_length + 1}")
        if stride < 1:
            raise ValueError(f"stride must be at least 1, got {stride}")
        self.max_length = max_length
        self.starts = np.arange(0, len(self.token_ids) - max_length, stride)

    def __len__(self):
        return len(self.starts)

    def __getitem__(self, i):
        s = int(self.starts[i])
        return (self.token_ids[s:s + self.max_length],                     # (max_length,) input_ids
                self.token_ids[s + 1:s + self.max_length + 1])             # (max_length,) target_ids


class DataLoaderV1:
    """Batches of a GPTDatasetV1, like torch's DataLoader: iterating gives one epoch of
    (x, y) int64 arrays (B, max_length); with shuffle=True each epoch has a new order, drawn
    from a generator seeded once (so epoch k is the same in every run with that seed)."""

    def __init__(self, dataset, batch_size=4, shuffle=True, drop_last=True, seed=0):
        self.dataset, self.batch_size = dataset, batch_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.rng = np.random.default_rng(seed)

    def __len__(self):
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        order = self.rng.permutation(len(self.dataset)) if self.shuffle else np.arange(len(self.dataset))
        ds = self.dataset
        cols = np.arange(ds.max_length)
        for b in range(len(self)):
            starts = ds.starts[order[b * self.batch_size:(b + 1) * self.batch_size]]   # (B,)
            idx = starts[:, None] + cols                                            # (B, T)
            yield ds.token_ids[idx], ds.token_ids[idx + 1]                          # (B, T), (B, T)


def create_dataloader_v1(token_ids, batch_size=4, max_length=256, stride=128, shuffle=True,
                         drop_last=True, num_workers=0, seed=0, tokenizer=None):
    """The book's create_dataloader_v1: a sliding-window dataset served in batches of (x, y).

    Difference from the book: the book's first argument is text, which it encodes with
    tiktoken's GPT-2 encoding. Here it is token ids (a list or array); passing text still works
    and encodes it with `tokenizer` (default: GPT-2's BPE, scratchgpt.BPETokenizer.gpt2(), with
    the same ids as tiktoken, "<|endoftext|>" allowed as in the book). The batches are NumPy
    int64 arrays instead of torch tensors; num_workers is accepted for the book's calls and
    ignored; seed fixes the shuffling.
    """
    if isinstance(token_ids, str):
        if tokenizer is None:
            from scratchgpt.tokenizer import BPETokenizer
            tokenizer = BPETokenizer.gpt2()
        from scratchgpt.tokenizer import BPETokenizer
        if isinstance(tokenizer, BPETokenizer):
            token_ids = tokenizer.encode(token_ids, allowed_special={"<|endoftext|>"})
        else:
            token_ids = tokenizer.encode(token_ids)
    dataset = GPTDatasetV1(token_ids, max_length, stride)
    return DataLoaderV1(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed)
