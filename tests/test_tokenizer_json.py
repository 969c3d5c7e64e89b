"""tokenizer.json (Llama 3 / Qwen3's byte-level BPE) through our BPETokenizer, id for id
against the `tokenizers` library. Each test trains a small tokenizer.json itself: nothing is
downloaded."""
import json

import pytest

from scratchgpt.tokenizer import BPETokenizer, split_pattern

tokenizers = pytest.importorskip("tokenizers")

# The pre-tokenisation regexes of Llama 3's and Qwen3's tokenizer.json (Qwen: one digit at a time)
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN3_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")

TRAIN_TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
              "You are all resolved rather to die than to famish? 1234 + 5678 = 6912. It's we'll they're.\n"
              "Café naïve résumé, Straße; 東京 タワー 😀 -- x² + y³\t(tabs)\r\n") * 20
MIXED = ("<|begin_of_text|>Hello, World! It's 2026-12-04: 123456 apples\n\n  ½ Ⅻ ②  cafe\u0301 naïve "
         "東京タワー 😀 _under_score__ \r\n\tTAB's WE'LL<|eot_id|>  x²+y³=z\u00a0end  <|im_start|>user\n"
         "Speak, speak.<|im_end|>\n")
SPECIALS = ["<|begin_of_text|>", "<|eot_id|>", "<|im_start|>", "<|im_end|>"]


def make_tokenizer_json(path, pattern, nfc, specials_in_vocab):
    """Train a byte-level BPE the way Llama 3 / Qwen3 files are laid out, and save it."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    if nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=SPECIALS[:2] if specials_in_vocab else [], show_progress=False)
    tok.train_from_iterator([TRAIN_TEXT], trainer)
    tok.add_special_tokens(SPECIALS if not specials_in_vocab else SPECIALS[2:])   # after the vocabulary, as Llama 3's
    tok.save(str(path))
    return tok


@pytest.mark.parametrize("pattern,nfc,specials_in_vocab", [(LLAMA3_PATTERN, False, False),
                                                           (QWEN3_PATTERN, True, True)],
                         ids=["llama3-style", "qwen3-style"])
def test_tokenizer_json_matches_tokenizers_id_for_id(tmp_path, pattern, nfc, specials_in_vocab):
    ref = make_tokenizer_json(tmp_path / "tokenizer.json", pattern, nfc, specials_in_vocab)
    ours = BPETokenizer.from_tokenizer_json(tmp_path / "tokenizer.json")
    for text in (MIXED, TRAIN_TEXT[:500], "", " ", "\n\n\n", "x" * 50):
        expected = ref.encode(text, add_special_tokens=False).ids
        got = ours.encode(text, allowed_special="all")
        assert got == expected, text
    ids = ours.encode(MIXED, allowed_special="all")
    assert any(i > 300 for i in ids), "the test text should use merged tokens"
    assert ours.special_tokens == {s: ref.token_to_id(s) for s in SPECIALS}
    assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=False)
    assert ours.vocab_size == ref.get_vocab_size()


def test_tokenizer_json_tokenizer_survives_to_dict(tmp_path):
    make_tokenizer_json(tmp_path / "tokenizer.json", QWEN3_PATTERN, True, False)
    tok = BPETokenizer.from_tokenizer_json(tmp_path / "tokenizer.json")
    tok.save(tmp_path / "tok.json")
    again = BPETokenizer.load(tmp_path / "tok.json")
    assert again.encode(MIXED, allowed_special="all") == tok.encode(MIXED, allowed_special="all")
    assert (again.pattern, again.normalize) == (QWEN3_PATTERN, "NFC")


@pytest.mark.parametrize("pattern", [LLAMA3_PATTERN, QWEN3_PATTERN])
def test_split_pattern_agrees_with_the_regex_package(pattern):
    regex = pytest.importorskip("regex")
    assert split_pattern(pattern).findall(MIXED * 3) == regex.findall(pattern, MIXED * 3)


def test_unsupported_tokenizer_json_is_refused_by_name(tmp_path):
    make_tokenizer_json(tmp_path / "tokenizer.json", LLAMA3_PATTERN, False, False)
    d = json.loads((tmp_path / "tokenizer.json").read_text())
    d["normalizer"] = {"type": "NFKC"}
    (tmp_path / "nfkc.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match="normalizer .*NFKC"):
        BPETokenizer.from_tokenizer_json(tmp_path / "nfkc.json")
    d["model"]["type"] = "Unigram"
    (tmp_path / "unigram.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match="'Unigram', only byte-level 'BPE'"):
        BPETokenizer.from_tokenizer_json(tmp_path / "unigram.json")
