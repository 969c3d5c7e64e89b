"""scratchgpt/data.py: the prepared-corpus cache, the split, random-window batches, the book's
sliding-window dataset."""
import json
import os

import numpy as np
import pytest

from scratchgpt import data
from scratchgpt.data import (BatchSampler, GPTDatasetV1, create_dataloader_v1, encode_text,
                             get_batch, prepare_corpus, split_train_val)
from scratchgpt.tokenizer import BPETokenizer, CharTokenizer

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 20


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("SCRATCHGPT_CACHE", str(root))
    return root


@pytest.fixture
def encode_calls(monkeypatch):
    """Counts the encodings prepare_corpus does (a cache hit does none)."""
    calls = []
    real = data.encode_text
    monkeypatch.setattr(data, "encode_text", lambda text, tok: calls.append(len(text)) or real(text, tok))
    return calls


# ------------------------------------------------------------------ split, encoding

def test_split_is_first_90_percent_then_last_10():
    ids = np.arange(1000)
    train, val = split_train_val(ids)
    assert len(train) == 900 and len(val) == 100
    assert (np.concatenate([train, val]) == ids).all()
    t2, v2 = split_train_val(np.arange(1000))
    assert (t2 == train).all() and (v2 == val).all()
    assert [len(p) for p in split_train_val(list(range(10)), val_fraction=0.3)] == [7, 3]
    with pytest.raises(ValueError, match="val_fraction"):
        split_train_val(ids, val_fraction=1.0)


def test_fast_char_encoding_matches_the_tokenizer():
    text = TEXT + "ünïcødé → ∫ x^2 dx 😀"
    tok = CharTokenizer.from_text(text)
    ids = encode_text(text, tok)
    assert ids.dtype == np.int64 and ids.tolist() == tok.encode(text)
    bpe = BPETokenizer.train(TEXT, 300)
    assert encode_text(TEXT, bpe).tolist() == bpe.encode(TEXT)


def test_a_character_missing_from_a_given_tokenizer_is_a_clear_error(text_file, cache):
    tok = CharTokenizer.from_text("abc ")
    with pytest.raises(ValueError, match=r"character 'F' \(U\+0046\) at position 0 is not in the vocabulary"):
        encode_text(TEXT, tok)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        prepare_corpus(text_file=text_file, tokenizer=tok)


# ------------------------------------------------------------------ the cache

def test_prepare_text_file_writes_bins_and_meta(text_file, cache):
    c = prepare_corpus(text_file=text_file)
    assert c.name == "tiny"
    assert c.cache_dir.parent == cache and c.cache_dir.name.startswith("file-")
    assert {p.name for p in c.cache_dir.iterdir()} == {"train.bin", "val.bin", "meta.json"}
    meta = json.loads((c.cache_dir / "meta.json").read_text())
    assert meta["n_train"] + meta["n_val"] == len(TEXT) == meta["n_chars"]
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == c.tokenizer.vocab_size
    assert c.train.dtype == np.uint16 and len(c.train) == int(len(TEXT) * 0.9)
    assert c.tokenizer.decode(c.train) + c.tokenizer.decode(c.val) == TEXT


def test_second_prepare_reads_the_cache(text_file, cache, encode_calls):
    first = prepare_corpus(text_file=text_file)
    mtime = os.stat(first.cache_dir / "train.bin").st_mtime_ns
    second = prepare_corpus(text_file=text_file)
    assert len(encode_calls) == 1                                  # the second call encoded nothing
    assert os.stat(second.cache_dir / "train.bin").st_mtime_ns == mtime
    assert isinstance(second.train, np.memmap)
    assert (second.train == first.train).all() and (second.val == first.val).all()
    assert second.tokenizer.to_dict() == first.tokenizer.to_dict()


def test_changed_text_is_prepared_again(text_file, cache, encode_calls):
    first = prepare_corpus(text_file=text_file)
    text_file.write_text(TEXT + "Second Citizen:\nWe are accounted poor citizens.\n", encoding="utf-8")
    second = prepare_corpus(text_file=text_file)
    assert len(encode_calls) == 2 and second.cache_dir != first.cache_dir
    assert "W" in second.tokenizer.chars and "W" not in first.tokenizer.chars
    assert second.tokenizer.decode(np.concatenate([second.train, second.val])).endswith("poor citizens.\n")


def test_a_damaged_cache_is_rebuilt(text_file, cache, encode_calls):
    c = prepare_corpus(text_file=text_file)
    with open(c.cache_dir / "train.bin", "ab") as f:              # e.g. a write cut short, or tampering
        f.write(b"\0\0")
    again = prepare_corpus(text_file=text_file)
    assert len(encode_calls) == 2 and len(again.train) == c.meta["n_train"]
    (again.cache_dir / "meta.json").write_text("{not json")
    prepare_corpus(text_file=text_file)
    assert len(encode_calls) == 3


def test_named_dataset_cache_is_keyed_by_its_source(cache, monkeypatch, encode_calls):
    from scratchgpt import corpora
    monkeypatch.setattr(corpora, "load_text", lambda name: TEXT)
    monkeypatch.setattr(corpora, "source_of", lambda name: "test source v1")
    c = prepare_corpus("math")
    assert c.cache_dir == cache / "math" and c.name == "math"
    prepare_corpus("math")
    assert len(encode_calls) == 1
    monkeypatch.setattr(corpora, "source_of", lambda name: "test source v2")   # e.g. a new package version
    prepare_corpus("math")
    assert len(encode_calls) == 2
    with pytest.raises(ValueError, match="unknown dataset 'poems'"):
        prepare_corpus("poems")
    with pytest.raises(ValueError, match="not both"):
        prepare_corpus("math", text_file="x.txt")


def test_a_given_tokenizer_gets_its_own_cache(text_file, cache, encode_calls):
    default = prepare_corpus(text_file=text_file)
    # the same vocabulary as the default: the default cache is reused
    same = prepare_corpus(text_file=text_file, tokenizer=CharTokenizer.from_text(TEXT))
    assert same.cache_dir == default.cache_dir and len(encode_calls) == 1
    shared = CharTokenizer.from_text(TEXT + "xyzXYZ")                # e.g. one vocabulary for all corpora
    c = prepare_corpus(text_file=text_file, tokenizer=shared)
    assert c.cache_dir != default.cache_dir and c.tokenizer.vocab_size == shared.vocab_size
    assert prepare_corpus(text_file=text_file, tokenizer=shared).cache_dir == c.cache_dir
    assert len(encode_calls) == 2
    bpe = BPETokenizer.train(TEXT, 300)
    b = prepare_corpus(text_file=text_file, tokenizer=bpe)
    assert b.tokenizer.decode(np.concatenate([b.train, b.val])) == TEXT
    assert len(b.train) + len(b.val) == len(bpe.encode(TEXT)) < len(TEXT)


def test_large_vocabularies_are_stored_as_uint32(text_file, tmp_path):
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + 70_000) if not 0xD800 <= c < 0xE000]
    tok = CharTokenizer(sorted(set(TEXT)) + [c for c in chars if c not in TEXT])
    assert tok.vocab_size > 65_536
    c = prepare_corpus(text_file=text_file, tokenizer=tok, cache_dir=tmp_path / "c32")
    assert c.train.dtype == np.uint32 and c.tokenizer.decode(c.val) == TEXT[len(c.train):]


def test_text_file_must_be_utf8(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8.*0xe9 at offset 3"):
        prepare_corpus(text_file=bad, cache_dir=tmp_path)


# ------------------------------------------------------------------ random-window batches

def test_get_batch_shapes_and_shift():
    ids = np.arange(1000, dtype=np.uint16)
    x, y = get_batch(ids, 8, 16, np.random.default_rng(0))
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == np.int64
    assert (y[:, :-1] == x[:, 1:]).all() and (y[:, -1] == x[:, -1] + 1).all()
    assert (np.diff(x, axis=1) == 1).all() and x.min() >= 0 and y.max() <= 999
    x2, _ = get_batch(ids, 8, 16, np.random.default_rng(0))
    assert (x2 == x).all()
    with pytest.raises(ValueError, match="more than context_length=16 tokens"):
        get_batch(ids[:16], 2, 16, np.random.default_rng(0))


def test_get_batch_reaches_the_last_token():
    ids = np.arange(10)
    ys = np.concatenate([get_batch(ids, 64, 4, np.random.default_rng(s))[1].ravel() for s in range(5)])
    assert ys.max() == 9 and ys.min() == 1


def test_sampler_resume_draws_the_same_batches():
    ids = np.random.default_rng(1).integers(0, 65, size=5000).astype(np.uint16)
    a = BatchSampler(ids, 4, 32, seed=7)
    for _ in range(3):
        a.next()
    state = json.loads(json.dumps(a.state_dict()))                 # as stored in a checkpoint
    expected = [a.next() for _ in range(5)]
    b = BatchSampler(ids, 4, 32, seed=123)
    b.load_state_dict(state)
    for (x, y), (xb, yb) in zip(expected, (b.next() for _ in range(5))):
        assert (x == xb).all() and (y == yb).all()
    assert b.batches_drawn == a.batches_drawn == 8
    x1, _ = BatchSampler(ids, 4, 32, seed=7).next()
    x2, _ = BatchSampler(ids, 4, 32, seed=7).next()
    x3, _ = BatchSampler(ids, 4, 32, seed=8).next()
    assert (x1 == x2).all() and not (x1 == x3).all()


# ------------------------------------------------------------------ the book's sliding window

def book_pairs(token_ids, max_length, stride):
    """Chapter 2's GPTDatasetV1 loop, verbatim (lists instead of tensors)."""
    input_ids, target_ids = [], []
    for i in range(0, len(token_ids) - max_length, stride):
        input_ids.append(token_ids[i:i + max_length])
        target_ids.append(token_ids[i + 1: i + max_length + 1])
    return list(zip(input_ids, target_ids))


@pytest.mark.parametrize("stride", [1, 4])
def test_gpt_dataset_v1_matches_the_book(stride):
    ids = list(range(100, 117))                                    # 17 tokens
    ds = GPTDatasetV1(ids, max_length=4, stride=stride)
    ours = [(x.tolist(), y.tolist()) for x, y in (ds[i] for i in range(len(ds)))]
    assert ours == book_pairs(ids, 4, stride)
    assert len(ds) == (13 if stride == 1 else 4)
    assert ours[0] == ([100, 101, 102, 103], [101, 102, 103, 104])
    if stride == 4:
        assert ours[1] == ([104, 105, 106, 107], [105, 106, 107, 108])
    with pytest.raises(IndexError):
        ds[len(ds)]
    with pytest.raises(ValueError, match="at least max_length"):
        GPTDatasetV1(ids[:4], max_length=4, stride=1)


def test_dataloader_batches_like_the_book():
    ids = list(range(53))                                          # windows start at 0, 4, ..., 48: 13
    dl = create_dataloader_v1(ids, batch_size=3, max_length=4, stride=4, shuffle=False, drop_last=False)
    batches = list(dl)
    assert len(dl) == len(batches) == 5                             # 4 full batches + 1 of one window
    x, y = batches[0]
    assert x.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]] and (y == x + 1).all()
    assert batches[-1][0].tolist() == [[48, 49, 50, 51]] and batches[-1][1].tolist() == [[49, 50, 51, 52]]
    assert len(list(create_dataloader_v1(ids, batch_size=3, max_length=4, stride=4, shuffle=False))) == 4

    shuffled = create_dataloader_v1(ids, batch_size=3, max_length=4, stride=4, shuffle=True,
                                    drop_last=False, seed=0)
    epoch1 = np.concatenate([x for x, _ in shuffled])
    epoch2 = np.concatenate([x for x, _ in shuffled])
    assert sorted(epoch1.tolist()) == [list(range(i, i + 4)) for i in range(0, 49, 4)]   # all 13 windows
    assert not (epoch1 == epoch2).all()                            # a new order every epoch
    again = create_dataloader_v1(ids, batch_size=3, max_length=4, stride=4, shuffle=True, drop_last=False, seed=0)
    assert (np.concatenate([x for x, _ in again]) == epoch1).all()  # the same seed, the same order


def test_dataloader_from_text_uses_gpt2_bpe_like_the_book():
    text = "In the heart of the city stood the old library, a relic from a bygone era. <|endoftext|> Yes."
    dl = create_dataloader_v1(text, batch_size=1, max_length=4, stride=1, shuffle=False)
    tok = BPETokenizer.gpt2()
    ids = tok.encode(text, allowed_special={"<|endoftext|>"})
    x, y = next(iter(dl))
    assert x.tolist() == [ids[:4]] and y.tolist() == [ids[1:5]]
    assert 50256 in np.concatenate([x for x, _ in dl])
    char = CharTokenizer.from_text(text)
    x, _ = next(iter(create_dataloader_v1(text, batch_size=2, max_length=3, stride=3, shuffle=False,
                                          tokenizer=char)))
    assert char.decode(x[0]) == "In " and char.decode(x[1]) == "the"
