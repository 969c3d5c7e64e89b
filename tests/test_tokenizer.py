"""scratchgpt/tokenizer.py: GPT-2's BPE against tiktoken, trained BPE, CharTokenizer.

tiktoken is the oracle: built here from the same shipped ranks file (no network), it must give
the same ids as ours on every text below.
"""
import hashlib
import json
import os
import random
import re
import unicodedata
from pathlib import Path

import pytest

from scratchgpt.tokenizer import (ENDOFTEXT, GPT2_ASSET, GPT2_PATTERN, BPETokenizer,
                                  CharTokenizer, bpe_merge, bytes_to_unicode, gpt2_char_classes,
                                  gpt2_split_pattern, tokenizer_from_dict)

try:                # the oracle; tests that do not compare with it run without it
    import tiktoken
except ImportError:
    tiktoken = None
needs_tiktoken = pytest.mark.skipif(tiktoken is None, reason="tiktoken (the oracle) is not installed")

VERDICT = Path(__file__).resolve().parents[1] / "data" / "the-verdict.txt"     # see data/README.md
VERDICT_SHA256 = "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f"
GPT2_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"

# Unicode's White_Space property (PropList.txt), which is what \s means to tiktoken.
WHITE_SPACE = [*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B),
               0x2028, 0x2029, 0x202F, 0x205F, 0x3000]

EDGE_CASES = [
    "Hello, world! I saw a cat",
    "I'LL be there, I'll be there; we'RE, they've, she'd, it's, IT'S, don't, DON'T, 'sup, 'S",
    "apostrophes: it’s ’tis ‘quoted’ ʼokina ′prime '' 's ''s 't 're 've 'm 'll 'd",
    "accents: café naïve résumé Ångström façade coöperate Ærøskøbing œuvre",
    "combining: e\u0301 a\u0308 n\u0303 Z\u0324\u0354\u0367\u0311\u0313a\u0308\u0356 \u0301alone",
    "emoji: 👍🏽 👩‍👩‍👧‍👦 🇫🇷 ❤️ 🙂🙃 😀😀😀 x😀y 1😀2",
    "CJK: 東京は日本の首都です。中文字符，标点！한국어 텍스트 ｆｕｌｌｗｉｄｔｈ　ｓｐａｃｅ",
    "numbers: 12345 ١٢٣٤٥ ۱۲۳ ०१२३ ௧௨ ²³¹ ½¾ Ⅻ ⅻ ① ⑳ 𝟘𝟙𝟚 〇一二三 1.5e-3 0xFF ０１２",
    "mixed: abc123def ½cup x²+y² Ⅻo'clock 3rd 21st ①st a١b ²a a²",
    "controls: \x00\x01\x07\x1b[0m \x1c\x1d\x1e\x1f end\x7f\x85 a\x1cb\x1dc 1\x1e2 \x1f ",
    "tabs:\tone\t\ttwo\t \t three\t",
    "crlf line\r\nsecond\r\n\r\nthird\rfourth\n\n\n",
    "spaces:  two   three    four" + " " * 50 + "fifty" + " " * 200 + "\n",
    "unicode spaces:\u00a0nbsp\u2009thin\u3000ideo\u2028ls\u2029ps\u200bzwsp\u202fnn\u205fmm \u1680",
    "   leading and trailing   ",
    " \n \n\t\n  x \n",
    "punct: ...!!!??? --- ___ *** ### @@@ (){}[] <> «» „“ — – … ¡¿ §¶ ©®™ \"dq\" _a_ a_b __init__",
    "code: def f(x):\n    return x**2  # comment\n\tif (a&&b||!c) { y = a[i]->b; }\n",
    "rtl: مرحبا بالعالم שלום עולם",
    "indic: नमस्ते दुनिया வணக்கம் ਸਤਿ ਸ੍ਰੀ ਅਕਾਲ",
    "greek cyrillic: Καλημέρα κόσμε Привет мир ЁЖИК",
    "math: ∀x∈ℝ, ∃y: x≤y ∧ ∑ᵢ xᵢ² ≈ ∞ 𝔸𝔹ℂ 𝐀𝐁𝐂",
    "specials: \ufffd \ufeff BOM ZWJ\u200dZWNJ\u200c soft\u00adhyphen",
    "<|endoftext", "endoftext|>", "<|startoftext|>",
]


def edge_case_text(n_fragments=20_000, seed=0):
    """The edge cases whole, then their words shuffled together with random separators, so that
    every kind of character meets every other kind at a pre-token boundary."""
    rng = random.Random(seed)
    words = [w for case in EDGE_CASES for w in re.split(r"(\s+)", case) if w]
    seps = ["", " ", "  ", "\n", "\t", "\r\n", "'", "’", "_", "\u3000", "\x1c", "1", "²", "a", "😀"]
    parts = list(EDGE_CASES)
    for _ in range(n_fragments):
        parts.append(rng.choice(words))
        parts.append(rng.choice(seps))
    return "\n".join(EDGE_CASES) + "".join(parts)


def random_bytes_text(n=100_000, seed=1):
    return random.Random(seed).randbytes(n).decode("utf-8", errors="replace")


def random_code_point_text(n=30_000, seed=2):
    """Random assigned code points (this Python's Unicode tables), mostly ASCII and Latin."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        hi = rng.choice([0x80, 0x800, 0x3400, 0x10000, 0x30000])
        c = chr(rng.randrange(hi))
        if unicodedata.category(c) not in ("Cn", "Cs"):
            out.append(c)
    return "".join(out)


def local_tiktoken_encoding(path, special_tokens):
    """tiktoken built from a local ranks file (TIKTOKEN_CACHE_DIR="" turns off its cache copy)."""
    from tiktoken.load import load_tiktoken_bpe
    old = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""
    try:
        ranks = load_tiktoken_bpe(str(path))
    finally:
        if old is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = old
    return tiktoken.Encoding(name="local", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens=special_tokens)


@pytest.fixture(scope="module")
def gpt2():
    return BPETokenizer.gpt2()


@pytest.fixture(scope="module")
def oracle():
    if tiktoken is None:
        pytest.skip("tiktoken (the oracle) is not installed")
    return local_tiktoken_encoding(GPT2_ASSET, {ENDOFTEXT: 50256})


# ---------------------------------------------------------------- GPT-2's vocabulary

def test_shipped_gpt2_ranks_file_is_whispers_file():
    data = GPT2_ASSET.read_bytes()
    assert hashlib.sha256(data).hexdigest() == GPT2_SHA256
    lines = data.decode("ascii").splitlines()
    assert len(lines) == 50_256
    assert [int(line.split()[1]) for line in lines] == list(range(50_256))


def test_gpt2_vocabulary_size_and_known_ids(gpt2):
    assert gpt2.vocab_size == 50257 and gpt2.eot_id == 50256
    assert gpt2.encode("Hello, world! I saw a cat") == [15496, 11, 995, 0, 314, 2497, 257, 3797]
    assert gpt2.decode([15496, 11, 995, 0, 314, 2497, 257, 3797]) == "Hello, world! I saw a cat"


def test_gpt2_the_verdict_matches_the_book(gpt2):
    assert hashlib.sha256(VERDICT.read_bytes()).hexdigest() == VERDICT_SHA256
    text = VERDICT.read_text(encoding="utf-8")
    ids = gpt2.encode(text)
    assert len(ids) == 5145
    assert ids[50:54] == [290, 4920, 2241, 287]
    assert gpt2.decode(ids) == text


@needs_tiktoken
def test_gpt2_the_verdict_equals_tiktoken(gpt2, oracle):
    text = VERDICT.read_text(encoding="utf-8")
    assert gpt2.encode(text) == oracle.encode(text)


@pytest.mark.parametrize("make_text", [edge_case_text, random_bytes_text, random_code_point_text])
def test_gpt2_ids_equal_tiktoken(gpt2, oracle, make_text):
    text = make_text()
    ids = gpt2.encode(text)
    assert ids == oracle.encode(text)
    assert gpt2.decode(ids) == text


@pytest.mark.parametrize("case", EDGE_CASES)
def test_gpt2_each_edge_case_equals_tiktoken_and_round_trips(gpt2, oracle, case):
    assert gpt2.encode(case) == oracle.encode(case)
    assert gpt2.decode(gpt2.encode(case)) == case


def test_long_whitespace_and_letter_runs(gpt2, oracle):
    # single pre-tokens of 100,000 bytes: the merge must not be quadratic
    for text in [" " * 100_000 + "x", "a" * 100_000, "\n" * 50_000, "😀" * 25_000]:
        assert gpt2.encode(text) == oracle.encode(text)


def test_lone_surrogates_become_replacement_characters_as_in_tiktoken(gpt2, oracle):
    text = "a\ud800b \udfff c\ud83d\ude00d"          # two lone halves, then a valid pair (😀)
    assert gpt2.encode(text) == oracle.encode(text)
    assert gpt2.decode(gpt2.encode(text)) == "a\ufffdb \ufffd c😀d"


def test_endoftext_is_a_special_token_only_when_allowed(gpt2, oracle):
    text = "The end.<|endoftext|>A new start"
    with pytest.raises(ValueError, match=r"<\|endoftext\|>.*allowed_special"):
        gpt2.encode(text)
    with pytest.raises(ValueError):
        oracle.encode(text)                              # tiktoken refuses it too
    for allowed in [{ENDOFTEXT}, "all"]:
        ids = gpt2.encode(text, allowed_special=allowed)
        assert ids == oracle.encode(text, allowed_special=allowed)
        assert ids.count(50256) == 1 and gpt2.decode(ids) == text
    as_text = gpt2.encode(text, disallowed_special=())
    assert as_text == oracle.encode(text, disallowed_special=()) and 50256 not in as_text
    assert gpt2.decode(as_text) == text
    assert gpt2.encode(ENDOFTEXT * 2, allowed_special="all") == [50256, 50256]


def test_decode_rejects_ids_outside_the_vocabulary(gpt2):
    with pytest.raises(ValueError, match=r"token id 50257 is outside the vocabulary \(size 50257\)"):
        gpt2.decode([15496, 50257])
    with pytest.raises(ValueError, match="token id -1"):
        gpt2.decode([-1])


def test_decode_of_a_split_character_gives_replacement_characters(gpt2):
    ids = gpt2.encode("😀")                               # 4 bytes, more than one token
    assert len(ids) > 1
    assert gpt2.decode(ids[:1]) == "\ufffd"
    assert gpt2.decode_bytes(ids) == "😀".encode("utf-8")


def test_gpt2_to_dict_names_the_shipped_vocabulary(gpt2, tmp_path):
    assert gpt2.to_dict() == {"type": "bpe", "name": "gpt2"}
    gpt2.save(tmp_path / "tok.json")
    again = BPETokenizer.load(tmp_path / "tok.json")
    assert again.encode("Hello, world!") == [15496, 11, 995, 0] and again.eot_id == 50256
    assert tokenizer_from_dict(gpt2.to_dict()).vocab_size == 50257


def test_from_tiktoken_file_equals_gpt2(gpt2):
    tok = BPETokenizer.from_tiktoken_file(GPT2_ASSET)
    assert tok.ranks == gpt2.ranks and tok.special_tokens == {ENDOFTEXT: 50256}
    assert BPETokenizer.from_tiktoken_file(GPT2_ASSET, special_tokens={}).vocab_size == 50256


# ---------------------------------------------------------------- pre-tokenisation without `regex`

def all_code_points():
    return "".join(chr(i) for i in range(0x110000) if not 0xD800 <= i < 0xE000)


def test_character_classes_equal_unicode_categories():
    letter, number, other, space = gpt2_char_classes()
    everything = all_code_points()
    cats = [unicodedata.category(c)[0] for c in everything]
    white = {chr(i) for i in WHITE_SPACE}
    assert white == {c for c in everything if c.isspace()} - set("\x1c\x1d\x1e\x1f")

    def chars(pred):
        return "".join(c for c, cat in zip(everything, cats) if pred(c, cat))

    assert "".join(re.findall(letter, everything)) == chars(lambda c, cat: cat == "L")
    assert "".join(re.findall(number, everything)) == chars(lambda c, cat: cat == "N")
    assert "".join(re.findall(space, everything)) == chars(lambda c, cat: c in white)
    assert "".join(re.findall(other, everything)) == \
        chars(lambda c, cat: cat not in "LN" and c not in white)


@needs_tiktoken
def test_every_assigned_code_point_splits_as_in_tiktoken():
    """Reveal tiktoken's pre-token boundaries: give it a vocabulary of the 256 bytes plus the
    probes "a"+c, "1"+c, "!"+c, "\\t"+c. A probe encodes to one token iff the pattern kept it in
    one piece, i.e. iff c is a letter / number / other / whitespace character respectively.
    Code points this Python's Unicode tables (14.0 on 3.11) call unassigned are left out: tiktoken
    knows Unicode 16.0; private-use planes 15-16 (all "other") are sampled."""
    pattern = gpt2_split_pattern()
    cps = [i for i in range(0x110000)
           if unicodedata.category(chr(i)) not in ("Cn", "Cs") and (i < 0xF0000 or i % 251 == 0)]
    heads = ["a", "1", "!", "\t"]
    probes = [h + chr(i) for i in cps for h in heads]
    ranks = {bytes([b]): b for b in range(256)}
    for p in probes:
        ranks.setdefault(p.encode("utf-8"), len(ranks))
    enc = tiktoken.Encoding(name="probe", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                            special_tokens={})
    theirs = [len(enc.encode_ordinary(p)) == 1 for p in probes]
    ours = [len(pattern.findall(p)) == 1 for p in probes]
    differ = [f"U+{ord(p[1]):04X} after {p[0]!r}" for p, a, b in zip(probes, theirs, ours) if a != b]
    assert not differ, f"{len(differ)} probes split differently: {differ[:10]}"
    assert all(sum(theirs[k:k + 4]) == 1 for k in range(0, len(theirs), 4))   # 4 classes, disjoint


# ---------------------------------------------------------------- the merge itself

def plain_bpe_merge(piece, ranks, max_rank=None):
    """bpe_merge's rule, written plainly (O(n^2)): merge the lowest-ranked pair, leftmost first."""
    parts = [piece[i:i + 1] for i in range(len(piece))]
    while True:
        best = None
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and (max_rank is None or rank < max_rank) \
                    and (best is None or rank < best[0]):
                best = (rank, i)
        if best is None:
            return parts
        i = best[1]
        parts[i:i + 2] = [parts[i] + parts[i + 1]]


def test_heap_merge_equals_the_plain_rule(gpt2):
    rng = random.Random(3)
    alphabet = list(b"aeiou tnsrl") + [0xC3, 0xA9, 0xE2, 0x80, 0x99, 0x0A]
    pieces = [bytes(rng.choice(alphabet) for _ in range(rng.randrange(1, 40))) for _ in range(3000)]
    pieces += [w.encode() for w in gpt2_split_pattern().findall(edge_case_text(2000))]
    for piece in pieces:
        assert bpe_merge(piece, gpt2.ranks) == [gpt2.ranks[p] for p in plain_bpe_merge(piece, gpt2.ranks)]


# ---------------------------------------------------------------- OpenAI's encoder.json + vocab.bpe

def write_openai_files(tmp_path, merges, extra=None):
    """encoder.json / vocab.bpe in OpenAI's format for the given merges (byte-string pairs)."""
    b2u = bytes_to_unicode()

    def spell(b):
        return "".join(b2u[x] for x in b)

    encoder = {ch: i for i, ch in enumerate(sorted(b2u.values()))}     # GPT-2's byte order
    lines = ["#version: 0.2"]
    for left, right in merges:
        encoder[spell(left + right)] = len(encoder)
        lines.append(f"{spell(left)} {spell(right)}")
    encoder.update(extra if extra is not None else {ENDOFTEXT: len(encoder)})
    (tmp_path / "encoder.json").write_text(json.dumps(encoder), encoding="utf-8")
    (tmp_path / "vocab.bpe").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tmp_path / "encoder.json", tmp_path / "vocab.bpe"


@needs_tiktoken
def test_from_openai_files_small_vocabulary_equals_tiktoken(tmp_path):
    merges = [(b" ", b"t"), (b"h", b"e"), (b" t", b"he"), (b"i", b"n"), (b" ", b"a"),
              (b"e", b"r"), (b"\xc3", b"\xa9"), (b"caf", b"\xc3\xa9"), (b"c", b"a"), (b"ca", b"f"),
              (b" ", b"\n"), (b"in", b"g")]
    encoder_json, vocab_bpe = write_openai_files(tmp_path, merges)
    ours = BPETokenizer.from_openai_files(encoder_json, vocab_bpe)
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", "")
    ranks = data_gym_to_mergeable_bpe_ranks(str(vocab_bpe), str(encoder_json))
    assert ours.ranks == ranks
    assert ours.special_tokens == {ENDOFTEXT: 256 + len(merges)}
    enc = tiktoken.Encoding(name="tiny", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                            special_tokens={ENDOFTEXT: 256 + len(merges)})
    text = "the café in the theatre: thing, other things \n café café" + edge_case_text(500)
    assert ours.encode(text) == enc.encode(text)
    assert ours.decode(ours.encode(text)) == text


def test_from_openai_files_rejects_an_encoder_out_of_merge_order(tmp_path):
    encoder_json, vocab_bpe = write_openai_files(tmp_path, [(b"a", b"b"), (b"c", b"d")])
    encoder = json.loads(encoder_json.read_text(encoding="utf-8"))
    encoder["ab"], encoder["cd"] = encoder["cd"], encoder["ab"]
    encoder_json.write_text(json.dumps(encoder), encoding="utf-8")
    with pytest.raises(ValueError, match="merge order"):
        BPETokenizer.from_openai_files(encoder_json, vocab_bpe)


def test_from_openai_files_rebuilds_gpt2(gpt2, tmp_path):
    # GPT-2's merges recovered from its ranks: a token's pair is what the merge rule makes of it
    # with only the earlier ranks available
    merges = []
    for token, rank in sorted(gpt2.ranks.items(), key=lambda kv: kv[1])[256:]:
        left, right = plain_bpe_merge(token, gpt2.ranks, max_rank=rank)
        merges.append((left, right))
    tok = BPETokenizer.from_openai_files(*write_openai_files(tmp_path, merges))
    assert tok.ranks == gpt2.ranks and tok.special_tokens == {ENDOFTEXT: 50256}


# ---------------------------------------------------------------- training

def test_train_follows_the_hand_worked_merges():
    # "aaabdaaabac" is one pre-token (all letters); bytes a=97 b=98 c=99 d=100.
    # 1. pairs: aa x4, ab x2, bd, da, ba, ac x1        -> (97, 97)   = 256 "aa"
    #    word:  aa a b d aa a b a c
    # 2. (256,97) x2 and (97,98) x2 tie; lowest ids    -> (97, 98)   = 257 "ab"
    #    word:  aa ab d aa ab a c
    # 3. (256,257) x2                                  -> (256, 257) = 258 "aaab"
    #    word:  aaab d aaab a c
    # 4. all pairs x1: (258,100) (100,258) (258,97) (97,99); lowest -> (97, 99) = 259 "ac"
    #    word:  aaab d aaab ac
    # 5. (258,100) (100,258) (258,259); lowest         -> (100, 258) = 260 "daaab"
    # then <|endoftext|> = 261
    tok = BPETokenizer.train("aaabdaaabac", vocab_size=262)
    learned = sorted(tok.ranks.items(), key=lambda kv: kv[1])[256:]
    assert learned == [(b"aa", 256), (b"ab", 257), (b"aaab", 258), (b"ac", 259), (b"daaab", 260)]
    assert tok.eot_id == 261 and tok.vocab_size == 262
    # encoding replays the merges by rank: aa,a,b,d,aa,a,b,a,c -> ... -> aaab daaab ac
    assert tok.encode("aaabdaaabac") == [258, 260, 259]
    assert tok.decode([258, 260, 259]) == "aaabdaaabac"


def test_train_stops_when_no_pairs_are_left():
    tok = BPETokenizer.train("ab ab", vocab_size=1000)       # pieces "ab", " ab": 3 merges at most
    assert tok.vocab_size < 1000 and tok.eot_id == tok.vocab_size - 1


def test_train_rejects_a_vocabulary_below_257():
    with pytest.raises(ValueError, match="at least 257"):
        BPETokenizer.train("hello", vocab_size=256)


def training_text():
    return VERDICT.read_text(encoding="utf-8") + edge_case_text(3000)


@needs_tiktoken
def test_train_is_deterministic_and_encodes_as_tiktoken_would():
    text = training_text()
    tok = BPETokenizer.train(text, vocab_size=600)
    assert tok.vocab_size == 600
    assert BPETokenizer.train(text, vocab_size=600).ranks == tok.ranks
    enc = tiktoken.Encoding(name="trained", pat_str=GPT2_PATTERN, mergeable_ranks=tok.ranks,
                            special_tokens=tok.special_tokens)
    for sample in [text, random_bytes_text(20_000)]:
        ids = tok.encode(sample, disallowed_special=())
        assert ids == enc.encode(sample, disallowed_special=())
        assert tok.decode(ids) == sample
    assert len(tok.encode(text, disallowed_special=())) < 0.7 * len(text.encode("utf-8"))


def test_train_treats_endoftext_as_a_document_separator():
    tok = BPETokenizer.train(("hello world" + ENDOFTEXT) * 50, vocab_size=300)
    assert not any(b"<|" in t or b"|>" in t for t in tok.ranks)
    ids = tok.encode("hello world" + ENDOFTEXT, allowed_special="all")
    assert ids[-1] == tok.eot_id and tok.decode(ids) == "hello world" + ENDOFTEXT


def test_trained_tokenizer_save_load_round_trip(tmp_path):
    tok = BPETokenizer.train(training_text(), vocab_size=400)
    tok.save(tmp_path / "bpe.json")
    again = BPETokenizer.load(tmp_path / "bpe.json")
    assert again.ranks == tok.ranks and again.special_tokens == tok.special_tokens
    rebuilt = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))
    assert isinstance(rebuilt, BPETokenizer) and rebuilt.ranks == tok.ranks
    sample = "a new text, unseen: ½ 😀"
    assert again.encode(sample) == tok.encode(sample)


# ---------------------------------------------------------------- CharTokenizer

def test_char_tokenizer_round_trip_and_vocabulary():
    text = "hello world\nHELLO!"
    tok = CharTokenizer.from_text(text)
    assert tok.chars == sorted(set(text)) and tok.vocab_size == len(set(text))
    assert tok.eot_id is None
    ids = tok.encode(text)
    assert ids == [tok.chars.index(c) for c in text]
    assert tok.decode(ids) == text


def test_char_tokenizer_names_the_unknown_character_and_its_position():
    tok = CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz ")
    with pytest.raises(ValueError) as e:
        tok.encode("the cafe and café")
    assert str(e.value) == ("character 'é' (U+00E9) at position 16 is not in the vocabulary "
                            "(27 characters)")
    with pytest.raises(ValueError, match=r"'X' \(U\+0058\) at position 0 .*1 more unknown: '\\n'"):
        tok.encode("X\n")


def test_char_tokenizer_rejects_ids_outside_the_vocabulary():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match=r"^token id 70 is outside the vocabulary \(size 3\)$"):
        tok.decode([0, 70])
    with pytest.raises(ValueError, match="token id -1"):
        tok.decode([-1])


def test_char_tokenizer_decodes_numpy_ids():
    np = pytest.importorskip("numpy")
    tok = CharTokenizer.from_text("abc")
    assert tok.decode(np.array([2, 1, 0], dtype=np.int64)) == "cba"


def test_char_tokenizer_save_load_and_from_dict(tmp_path):
    tok = CharTokenizer.from_text("hé\n\t\x00😀 ")
    tok.save(tmp_path / "chars.json")
    again = CharTokenizer.load(tmp_path / "chars.json")
    assert again.chars == tok.chars
    assert tokenizer_from_dict(json.loads(json.dumps(tok.to_dict()))).chars == tok.chars
    with pytest.raises(ValueError, match="'type'"):
        tokenizer_from_dict({"chars": ["a"]})
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer.from_text("")


def naive_train(text, vocab_size):
    """The training rule with nothing incremental: recount every pair before every merge."""
    from collections import Counter
    words = Counter(gpt2_split_pattern().findall(text))
    seqs = {tuple(w.encode("utf-8")): c for w, c in words.items()}
    tokens = [bytes([b]) for b in range(256)]
    ranks = {t: i for i, t in enumerate(tokens)}
    while len(tokens) < vocab_size - 1:
        pairs = Counter()
        for seq, c in seqs.items():
            for pair in zip(seq, seq[1:]):
                pairs[pair] += c
        if not pairs:
            break
        (a, b), _ = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        new_id = ranks.setdefault(tokens[a] + tokens[b], len(tokens))
        if new_id == len(tokens):
            tokens.append(tokens[a] + tokens[b])
        merged = Counter()
        for seq, c in seqs.items():
            out, i = [], 0
            while i < len(seq):
                if i + 1 < len(seq) and (seq[i], seq[i + 1]) == (a, b):
                    out.append(new_id)
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            merged[tuple(out)] += c
        seqs = merged
    return ranks


def test_incremental_training_equals_recounting_every_step():
    text = training_text()[:30_000]
    assert BPETokenizer.train(text, vocab_size=420).ranks == naive_train(text, 420)
