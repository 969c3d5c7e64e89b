"""Tokenizers: text -> list of token ids -> text (chapter 2 of the book).

    tok = CharTokenizer.from_text(text)      # one id per distinct character
    tok = BPETokenizer.gpt2()                # GPT-2's byte-level BPE, ids identical to tiktoken's
    tok = BPETokenizer.train(text, 2000)     # a byte-level BPE learned from your own text
    ids = tok.encode("Hello, world!")        # list[int]
    tok.decode(ids)                          # "Hello, world!"

Both kinds share one small interface, so the training code takes either: `encode`, `decode`,
`vocab_size`, `eot_id` (None where there is no end-of-text token), `to_dict` / `save` / `load`;
`tokenizer_from_dict(d)` rebuilds either kind from its dict (a checkpoint stores it as JSON).

Byte-level BPE in three steps, as GPT-2 does it:
1. pre-tokenise: cut the text into words, numbers, punctuation runs and whitespace runs with
   GPT-2's pattern (`GPT2_PATTERN`), so that merges never cross those boundaries;
2. turn each piece into its UTF-8 bytes: one token per byte to start with (256 base tokens, so
   any string can be encoded and nothing is ever "unknown");
3. merge adjacent tokens, always the pair whose merged bytes have the lowest rank (the merge
   learned earliest), until no adjacent pair forms a token in the vocabulary.
"""
import base64
import functools
import heapq
import json
import re
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path

from scratchgpt.pretokenize import (GPT2_PATTERN, gpt2_char_classes, gpt2_split_pattern,  # noqa: F401
                                   pre_tokenizer_pattern, split_pattern, without_lone_surrogates)

ENDOFTEXT = "<|endoftext|>"

GPT2_ASSET = Path(__file__).resolve().parent / "assets" / "gpt2.tiktoken"

# ---------------------------------------------------------------- GPT-2's byte <-> character map

def bytes_to_unicode():
    """GPT-2's map from each byte to a printable character, used by encoder.json / vocab.bpe.

    Printable Latin-1 bytes map to themselves; the other 68 (controls, space, ...) are shifted
    to U+0100 and up, in byte order. That is why a space shows up as "Ġ" (U+0120) in GPT-2's files.
    """
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    mapping, shift = {}, 0
    for b in range(256):
        if b in keep:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + shift)
            shift += 1
    return mapping


# ---------------------------------------------------------------- the BPE merge

def bpe_merge(piece, ranks):
    """Split one pre-token's bytes into tokens: repeatedly merge the adjacent pair whose merged
    bytes have the lowest rank (the leftmost such pair on ties), until no adjacent pair is in
    `ranks`. Returns the list of ranks (= token ids).

    This is tiktoken's rule. Looking up the merged bytes (rather than the pair) lets the
    vocabulary be just {bytes: rank}; for GPT-2's files the two are equivalent. Written plainly:

        parts = [each byte]
        while some parts[i] + parts[i+1] is in ranks:
            i = the position of the lowest-ranked such pair (the first, on ties)
            parts[i:i+2] = [parts[i] + parts[i+1]]

    That rescans every pair after every merge: O(n^2), hopeless for a piece of 100,000 spaces.
    Here the candidate pairs sit in a heap ordered by (rank, position), which pops exactly the
    pair the plain loop would pick, and the parts form a linked list: O(n log n), and faster
    than the plain loop even on short pieces.

    A part is named by the index `i` of its first byte and spans piece[i:nxt[i]]. A heap entry
    (rank, i, end) is the pair starting at part i and ending at `end`; it is stale, and skipped,
    once part i has been absorbed by its left neighbour or the pair no longer ends at `end`.
    """
    n = len(piece)
    nxt = list(range(1, n + 1))
    prv = list(range(-1, n - 1))
    alive = [True] * n
    heap = [(ranks[piece[i:i + 2]], i, i + 2) for i in range(n - 1) if piece[i:i + 2] in ranks]
    heapq.heapify(heap)
    while heap:
        _, i, end = heapq.heappop(heap)
        j = nxt[i] if alive[i] else n
        if j >= n or nxt[j] != end:
            continue                                      # stale entry
        alive[j] = False                                  # part j joins part i
        nxt[i] = end
        if end < n:
            prv[end] = i
            after = nxt[end]
            if piece[i:after] in ranks:
                heapq.heappush(heap, (ranks[piece[i:after]], i, after))
        p = prv[i]
        if p >= 0 and piece[p:end] in ranks:
            heapq.heappush(heap, (ranks[piece[p:end]], p, end))
    out, i = [], 0
    while i < n:
        out.append(ranks[piece[i:nxt[i]]])
        i = nxt[i]
    return out


# ---------------------------------------------------------------- tokenizers

class CharTokenizer:
    """One token per character; the vocabulary is the sorted set of the training text's characters."""

    eot_id = None

    def __init__(self, chars):
        self.chars = list(chars)                          # id -> character
        if any(not isinstance(c, str) or len(c) != 1 for c in self.chars):
            raise ValueError("a CharTokenizer vocabulary is a list of single characters")
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        if len(self.stoi) != len(self.chars):
            raise ValueError("the CharTokenizer vocabulary has repeated characters")
        self.itos = dict(enumerate(self.chars))           # a dict, so -1 is an error, not the last id

    @classmethod
    def from_text(cls, text):
        if not text:
            raise ValueError("cannot build a CharTokenizer from empty text")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self):
        return len(self.chars)

    def encode(self, text):
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            raise ValueError(self._unknown_chars_message(text)) from None

    def decode(self, ids):
        ids = ids.tolist() if hasattr(ids, "tolist") else ids
        try:
            return "".join([self.itos[i] for i in ids])
        except (KeyError, TypeError):
            bad = next(i for i in ids if i not in self.itos)
            raise ValueError(f"token id {bad!r} is outside the vocabulary (size {self.vocab_size})") from None

    def _unknown_chars_message(self, text):
        unknown = {}                                      # first position of each unknown character
        for pos, c in enumerate(text):
            if c not in self.stoi and c not in unknown:
                unknown[c] = pos
        (c, pos), *others = unknown.items()
        msg = (f"character {c!r} (U+{ord(c):04X}) at position {pos} is not in the vocabulary "
               f"({self.vocab_size} characters)")
        if others:
            shown = ", ".join(f"{o!r} (U+{ord(o):04X}) at {p}" for o, p in others[:5])
            msg += f"; {len(others)} more unknown: {shown}" + (", ..." if len(others) > 5 else "")
        return msg

    def to_dict(self):
        return {"type": "char", "chars": self.chars}

    @classmethod
    def from_dict(cls, d):
        _check_type(d, "char")
        return cls(d["chars"])

    def save(self, path):
        _save_json(self.to_dict(), path)

    @classmethod
    def load(cls, path):
        return cls.from_dict(_load_json(path))

    def __repr__(self):
        return f"CharTokenizer(vocab_size={self.vocab_size})"


class BPETokenizer:
    """Byte-level BPE with GPT-2's pre-tokenisation; GPT-2's own vocabulary or one you train.

    `ranks` maps each token's bytes to its id (= its rank: lower merges first); the 256 single
    bytes are always present. `special_tokens` maps strings like "<|endoftext|>" to ids outside
    the ranks; they are only produced when `encode` is allowed to (as in tiktoken).
    """

    CACHE_SIZE = 100_000       # pre-token -> ids; English text reuses few distinct pieces

    def __init__(self, ranks, special_tokens=None, name=None, pattern="gpt2", normalize=None):
        """pattern: "gpt2" or a pre-tokenisation regex in tokenizer.json's syntax (see
        split_pattern); normalize: None or "NFC" (Qwen's tokenizers normalise text to NFC first)."""
        self.ranks = ranks
        self.special_tokens = dict(special_tokens or {})
        self.name = name
        missing = [b for b in range(256) if bytes([b]) not in ranks]
        if missing:
            raise ValueError(f"a byte-level BPE needs all 256 single bytes as tokens; "
                             f"{len(missing)} are missing (first: byte {missing[0]})")
        self.decoder = {rank: token for token, rank in ranks.items()}
        if len(self.decoder) != len(ranks):
            raise ValueError("two tokens share one rank")
        for s, i in self.special_tokens.items():
            if i in self.decoder:
                raise ValueError(f"special token {s!r} has id {i}, which is already the token "
                                 f"{self.decoder[i]!r}")
            self.decoder[i] = s.encode("utf-8")
        self.vocab_size = max(self.decoder) + 1
        self.eot_id = self.special_tokens.get(ENDOFTEXT)
        if normalize not in (None, "NFC"):
            raise ValueError(f"unsupported normalizer {normalize!r}: only None or 'NFC'")
        self.pattern, self.normalize = pattern, normalize
        self._pattern = gpt2_split_pattern() if pattern == "gpt2" else split_pattern(pattern)
        self._cache = {}

    # -- constructors

    @classmethod
    def gpt2(cls):
        """GPT-2's vocabulary (50,256 ranks + <|endoftext|> = 50256), from the shipped file."""
        if not GPT2_ASSET.exists():
            raise FileNotFoundError(f"GPT-2's ranks file is missing: {GPT2_ASSET} "
                                    "(it ships with the package; see scratchgpt/assets/README.md)")
        return cls(_read_tiktoken_file(str(GPT2_ASSET)), {ENDOFTEXT: 50256}, name="gpt2")

    @classmethod
    def from_tiktoken_file(cls, path, special_tokens=None):
        """A tiktoken ranks file: one "base64(token bytes) rank" per line. By default
        <|endoftext|> gets the id after the last rank, as in GPT-2; pass {} for none."""
        ranks = dict(_read_tiktoken_file(str(path)))
        if special_tokens is None:
            special_tokens = {ENDOFTEXT: max(ranks.values()) + 1}
        return cls(ranks, special_tokens)

    @classmethod
    def from_openai_files(cls, encoder_json, vocab_bpe):
        """OpenAI's original GPT-2 files: encoder.json ({token string: id}, bytes spelled with
        bytes_to_unicode) and vocab.bpe (a "#version" line, then one merge "left right" per line).

        The ranks are rebuilt as tiktoken does: the 256 bytes in bytes_to_unicode order, then one
        rank per merge in file order; encoder.json must agree, and its remaining entries (GPT-2:
        "<|endoftext|>") become special tokens."""
        byte_of = {ch: b for b, ch in bytes_to_unicode().items()}

        def to_bytes(token):
            try:
                return bytes(byte_of[ch] for ch in token)
            except KeyError as e:
                raise ValueError(f"{token!r} in {vocab_bpe} uses {e.args[0]!r}, which is not a "
                                 "bytes_to_unicode character") from None

        # printable bytes keep their own code point (< 256) and come first, the shifted ones
        # (>= 256) follow: sorting the characters gives GPT-2's order of the 256 byte tokens
        ranks = {bytes([byte_of[ch]]): i for i, ch in enumerate(sorted(byte_of))}
        lines = Path(vocab_bpe).read_text(encoding="utf-8").split("\n")
        for line in lines[1:] if lines and lines[0].startswith("#version") else lines:
            if line.strip():
                left, right = line.split(" ")
                ranks.setdefault(to_bytes(left) + to_bytes(right), len(ranks))
        encoder = json.loads(Path(encoder_json).read_text(encoding="utf-8"))
        special = {}
        for token, i in encoder.items():
            b = bytes(byte_of[ch] for ch in token) if all(ch in byte_of for ch in token) else None
            if b is not None and b in ranks and ranks[b] == i:
                continue
            if b in ranks:
                raise ValueError(f"encoder.json gives {token!r} id {i}, but vocab.bpe's merge "
                                 f"order gives it rank {ranks[b]}")
            special[token] = i
        if len(encoder) - len(special) != len(ranks):
            raise ValueError(f"encoder.json has {len(encoder) - len(special)} mergeable tokens, "
                             f"vocab.bpe implies {len(ranks)}")
        return cls(ranks, special)

    @classmethod
    def from_tokenizer_json(cls, path):
        """A Hugging Face tokenizer.json with a byte-level BPE model, as Llama 3 and Qwen3 ship.

        The vocabulary spells each token's bytes with bytes_to_unicode (GPT-2's "Ġ" for a space);
        `added_tokens` (e.g. <|begin_of_text|>, <|im_start|>) become special tokens, produced
        when encode is allowed to (allowed_special="all" does what `tokenizers` does). Supported:
        a Split pre-tokenizer with a regex then ByteLevel (Llama 3, Qwen), or ByteLevel with its
        own GPT-2 regex; an NFC normalizer or none. Merges are applied by the rank of the merged
        token, as tiktoken does, so the file's merge order must follow its token ids. The
        post-processor (e.g. Llama 3's <|begin_of_text|> prefix) is not applied: add it yourself.
        """
        d = _load_json(path)
        model = d.get("model") or {}
        if model.get("type") != "BPE":
            raise ValueError(f"{path}: the model is {model.get('type')!r}, only byte-level 'BPE' is supported")
        byte_of = {ch: b for b, ch in bytes_to_unicode().items()}
        added = {t["content"]: t["id"] for t in d.get("added_tokens") or []}
        ranks = {}
        for token, i in model["vocab"].items():
            if token in added:
                continue
            if not all(ch in byte_of for ch in token):
                raise ValueError(f"{path}: vocabulary entry {token!r} is not spelled with byte-level "
                                 "characters (bytes_to_unicode); is this a byte-level BPE?")
            ranks[bytes(byte_of[ch] for ch in token)] = i
        last = -1
        for n, merge in enumerate(model.get("merges") or []):
            left, right = merge.split(" ") if isinstance(merge, str) else merge
            i = model["vocab"][left + right]
            if i <= last:
                raise ValueError(f"{path}: merge {n} ({left!r} + {right!r}) makes token id {i}, lower than an "
                                 "earlier merge's; merges must follow the token ids to be applied by rank")
            last = i
        pattern = pre_tokenizer_pattern(d.get("pre_tokenizer"), path)
        norm = d.get("normalizer")
        normalize = None if norm is None else norm.get("type")
        if normalize not in (None, "NFC"):
            raise ValueError(f"{path}: normalizer {norm!r} is not supported (only NFC or none)")
        return cls(ranks, added, pattern=pattern, normalize=normalize)

    @classmethod
    def train(cls, text, vocab_size, verbose=False):
        """Learn a byte-level BPE from `text` (chapter 2's BPE, done from scratch).

        Start from the 256 byte tokens; repeatedly merge the most frequent adjacent pair inside
        pre-tokens (ties: the lowest (left id, right id)), until vocab_size - 1 tokens; the last
        id is <|endoftext|> (as in GPT-2, whose 50,256 ranks + <|endoftext|> make 50,257).
        "<|endoftext|>" inside `text` separates documents and is not learned from. If the text
        runs out of pairs first, the vocabulary is smaller than asked (see .vocab_size).

        Speed: pre-tokens are counted once (word -> count); pair counts are kept up to date by
        re-counting only the words that contain the merged pair, and the best pair comes off a
        heap whose stale entries are skipped.
        """
        if vocab_size < 257:
            raise ValueError(f"vocab_size {vocab_size} is too small: a byte-level BPE has 256 "
                             "byte tokens plus <|endoftext|>, so at least 257")
        pattern = gpt2_split_pattern()
        word_counts = Counter()
        for doc in without_lone_surrogates(text).split(ENDOFTEXT):
            word_counts.update(pattern.findall(doc))
        words = [list(w.encode("utf-8")) for w in word_counts]       # each word as token ids
        counts = list(word_counts.values())

        pair_counts = defaultdict(int)                   # (left, right) -> occurrences in the text
        where = defaultdict(set)                         # (left, right) -> words that (may) contain it
        for wi, (word, c) in enumerate(zip(words, counts)):
            for pair in zip(word, word[1:]):
                pair_counts[pair] += c
                where[pair].add(wi)
        heap = [(-c, a, b) for (a, b), c in pair_counts.items()]    # most frequent, then lowest ids
        heapq.heapify(heap)

        tokens = [bytes([b]) for b in range(256)]
        ranks = {t: i for i, t in enumerate(tokens)}
        while len(tokens) < vocab_size - 1 and heap:
            neg_count, a, b = heapq.heappop(heap)
            if pair_counts.get((a, b), 0) != -neg_count or neg_count == 0:
                continue                                 # stale: this pair's count has changed
            merged = tokens[a] + tokens[b]
            new_id = ranks.get(merged)
            if new_id is None:
                new_id = ranks[merged] = len(tokens)
                tokens.append(merged)
                if verbose:
                    print(f"merge {new_id - 255}/{vocab_size - 257}: {a} + {b} -> {new_id} "
                          f"{merged!r} ({-neg_count} times)")
            # else: the same bytes were already made by another pair; reuse that id, so that
            # every byte string has one id (the vocabulary is {bytes: rank}, as in encode)
            delta = defaultdict(int)
            for wi in where.pop((a, b)):
                word, c = words[wi], counts[wi]
                new_word = _merge_pair(word, a, b, new_id)
                if len(new_word) == len(word):
                    continue                             # stale entry in `where`
                for pair in zip(word, word[1:]):
                    delta[pair] -= c
                for pair in zip(new_word, new_word[1:]):
                    delta[pair] += c
                    where[pair].add(wi)
                words[wi] = new_word
            for pair, d in delta.items():
                if d:
                    pair_counts[pair] += d
                    if pair_counts[pair] > 0:
                        heapq.heappush(heap, (-pair_counts[pair], *pair))
        return cls(ranks, {ENDOFTEXT: len(tokens)}, name=None)

    # -- encode / decode

    def encode(self, text, allowed_special=frozenset(), disallowed_special="all"):
        """Text -> token ids, identical to tiktoken's `encode` with the same vocabulary.

        Special tokens ("<|endoftext|>") come out as their ids only if named in allowed_special
        (or allowed_special="all"); text that contains a disallowed one raises ValueError, as in
        tiktoken, rather than silently encoding it as ordinary text. Pass disallowed_special=()
        to encode such text as ordinary characters.
        """
        if allowed_special == "all":
            allowed_special = set(self.special_tokens)
        allowed = set(allowed_special) & set(self.special_tokens)
        if disallowed_special == "all":
            disallowed_special = set(self.special_tokens) - allowed
        if disallowed_special:
            found = _special_regex(frozenset(disallowed_special)).search(text)
            if found:
                raise ValueError(
                    f"the text contains the special token {found.group()!r} (at position "
                    f"{found.start()}), which is not allowed here. To encode it as the special "
                    f"token, pass allowed_special={{{found.group()!r}}}; to encode it as ordinary "
                    f"text, pass disallowed_special=().")
        if not allowed:
            return self.encode_ordinary(text)
        ids, start = [], 0
        for m in _special_regex(frozenset(allowed)).finditer(text):
            ids.extend(self.encode_ordinary(text[start:m.start()]))
            ids.append(self.special_tokens[m.group()])
            start = m.end()
        ids.extend(self.encode_ordinary(text[start:]))
        return ids

    def encode_ordinary(self, text):
        """Text -> ids, treating special-token strings as ordinary text."""
        if self.normalize:
            text = unicodedata.normalize(self.normalize, text)
        try:
            return self._encode_pieces(text)
        except UnicodeEncodeError:                       # lone surrogates: no UTF-8 form
            return self._encode_pieces(without_lone_surrogates(text))

    def _encode_pieces(self, text):
        ids, cache, ranks = [], self._cache, self.ranks
        for piece in self._pattern.findall(text):
            piece_ids = cache.get(piece)
            if piece_ids is None:
                b = piece.encode("utf-8")
                rank = ranks.get(b)                      # a whole piece that is one token
                piece_ids = [rank] if rank is not None else bpe_merge(b, ranks)
                if len(cache) >= self.CACHE_SIZE:
                    cache.clear()
                if len(piece) <= 64:
                    cache[piece] = piece_ids
            ids.extend(piece_ids)
        return ids

    def decode_bytes(self, ids):
        ids = ids.tolist() if hasattr(ids, "tolist") else ids
        try:
            return b"".join([self.decoder[i] for i in ids])
        except (KeyError, TypeError):
            bad = next(i for i in ids if i not in self.decoder)
            if isinstance(bad, int) and 0 <= bad < self.vocab_size:
                raise ValueError(f"token id {bad} is not in the vocabulary") from None
            raise ValueError(f"token id {bad!r} is outside the vocabulary (size {self.vocab_size})") from None

    def decode(self, ids):
        """Token ids -> text. Ids that end mid-character (a partial UTF-8 sequence) decode to
        U+FFFD, so decode(encode(s)) == s for every str s without lone surrogates."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # -- persistence

    def to_dict(self):
        """JSON-ready dict. GPT-2's vocabulary is stored by name (it ships with the package);
        any other as base64 tokens in rank order."""
        if self.name == "gpt2":
            return {"type": "bpe", "name": "gpt2"}
        n = max(self.ranks.values()) + 1
        tokens = [None] * n
        for token, rank in self.ranks.items():
            tokens[rank] = base64.b64encode(token).decode("ascii")
        d = {"type": "bpe", "pattern": self.pattern, "tokens": tokens,
             "special_tokens": dict(self.special_tokens)}
        if self.normalize:
            d["normalize"] = self.normalize
        return d

    @classmethod
    def from_dict(cls, d):
        _check_type(d, "bpe")
        if d.get("name") == "gpt2":
            return cls.gpt2()
        ranks = {base64.b64decode(t): i for i, t in enumerate(d["tokens"]) if t is not None}
        return cls(ranks, d.get("special_tokens", {}), name=d.get("name"),
                   pattern=d.get("pattern", "gpt2"), normalize=d.get("normalize"))

    def save(self, path):
        _save_json(self.to_dict(), path)

    @classmethod
    def load(cls, path):
        return cls.from_dict(_load_json(path))

    def __repr__(self):
        name = f"{self.name!r}, " if self.name else ""
        return f"BPETokenizer({name}vocab_size={self.vocab_size}, eot_id={self.eot_id})"


def tokenizer_from_dict(d):
    """Rebuild a CharTokenizer or BPETokenizer from its to_dict() (the "type" key says which)."""
    kinds = {"char": CharTokenizer, "bpe": BPETokenizer}
    if not isinstance(d, dict) or d.get("type") not in kinds:
        raise ValueError(f"not a tokenizer dict: expected a 'type' of {sorted(kinds)}, got "
                         f"{d.get('type') if isinstance(d, dict) else type(d).__name__!r}")
    return kinds[d["type"]].from_dict(d)


# ---------------------------------------------------------------- helpers

def _merge_pair(word, a, b, new_id):
    """Replace each (a, b) in `word`, left to right and non-overlapping, with new_id."""
    out, i, n = [], 0, len(word)
    while i < n:
        if i + 1 < n and word[i] == a and word[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


@functools.lru_cache(maxsize=4)
def _read_tiktoken_file(path):
    ranks = {}
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except ValueError:
                raise ValueError(f"{path}:{n}: expected 'base64-token rank', got {line[:80]!r}") from None
    return ranks


@functools.lru_cache(maxsize=16)
def _special_regex(tokens):
    # longest first, so that one special token that is a prefix of another cannot shadow it
    return re.compile("|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)))


def _check_type(d, expected):
    if d.get("type") != expected:
        raise ValueError(f"expected a tokenizer dict of type {expected!r}, got {d.get('type')!r}")


def _save_json(d, path):
    Path(path).write_text(json.dumps(d, ensure_ascii=False), encoding="utf-8")


def _load_json(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))
