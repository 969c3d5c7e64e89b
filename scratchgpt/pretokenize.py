"""Pre-tokenisation: cutting text into the pieces that byte-level BPE merges within.

GPT-2 cuts text into words, numbers, punctuation runs and whitespace runs with one regular
expression (GPT2_PATTERN), so that no merge crosses those boundaries. OpenAI wrote it for the
third-party `regex` package (\\p{L}: any letter); `gpt2_split_pattern` builds the same pattern for
the standard library's `re`. Llama 3's and Qwen3's tokenizer.json files bring patterns of their
own, which `split_pattern` translates the same way.
"""
import array
import functools
import re
import sys

# GPT-2's pre-tokenisation pattern as OpenAI wrote it (for the third-party `regex` package and
# tiktoken). \p{L} is "any letter", \p{N} "any number" (Unicode general categories L* and N*).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# Unicode's White_Space property: what \s means in tiktoken (Rust) and in `regex`. Python's own
# \s also matches U+001C..U+001F (str.isspace() is True for them), which must stay "other" here.
_WHITE_SPACE = r"\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"


# ---------------------------------------------------------------- pre-tokenisation

@functools.lru_cache(maxsize=None)
def gpt2_split_pattern():
    r"""GPT2_PATTERN rewritten for the standard library's `re`, which has no \p{L} or \p{N}.

    What stdlib `re` does have (for str patterns, Unicode-aware by default):
      \w  = letters (L*) + numbers (N*) + "_"      (str.isalnum() or "_")
      \d  = decimal digits only (Nd)
    so \w minus "_" is exactly L + N, and the only piece missing is the set X of numbers that are
    not decimal digits (categories No and Nl: "²", "½", "Ⅻ", "①", ...). With X listed explicitly:
      \p{L}                  = [^\W\d_X]    a word character, not a digit, not "_", not in X
      \p{N}                  = [\dX]
      [^\s\p{L}\p{N}]        = [^\w<WS>] or "_"
      \s                     = Unicode's White_Space, listed (_WHITE_SPACE)
    X is taken from this Python's own Unicode tables (about 1,100 characters, found in ~50 ms on
    first use), so the classes stay consistent with `\w` and `\d` of the running interpreter.

    tests/test_tokenizer.py checks every code point against unicodedata and against tiktoken.
    The one difference left is the Unicode version: Python 3.11's tables are Unicode 14.0,
    tiktoken 0.14's are 16.0, so the ~18,800 code points assigned in 15.0-16.0 (new CJK
    ideographs, scripts such as Kawi or Garay) are "other" here and letters/numbers there.
    """
    letter, number, other, space = gpt2_char_classes()
    not_space = "[^" + space[1:]                        # \S
    return re.compile(rf"'s|'t|'re|'ve|'m|'ll|'d| ?{letter}+| ?{number}+| ?{other}+"
                      rf"|{space}+(?!{not_space})|{space}+")


def gpt2_char_classes():
    r"""Stdlib-`re` spellings of \p{L}, \p{N}, [^\s\p{L}\p{N}] and \s (see gpt2_split_pattern)."""
    x = _char_class(_numbers_not_digits())
    ws = _WHITE_SPACE
    return rf"[^\W\d_{x}]", rf"[\d{x}]", rf"(?:[^\w{ws}]|_)", rf"[{ws}]"


def split_pattern(pattern):
    r"""A pre-tokenisation regex as tokenizer.json writes it (Oniguruma syntax, with \p{L} and
    \p{N}) -> a compiled stdlib `re` pattern, with the same classes as gpt2_split_pattern.

    Outside brackets \p{L}, \p{N}, \s and \S become the classes of gpt2_char_classes. A bracket
    class that holds \p{L} or \p{N} becomes an alternation of its members, and a negated one
    "one character that is none of them": Llama 3's [^\r\n\p{L}\p{N}] turns into
    (?:(?![letter]|[number]|[\r\n])(?s:.)). Anything else in the pattern is copied as it is (`re`
    reads (?i:...), {1,3} and (?!...) the same way).
    """
    letter, number, _, space = gpt2_char_classes()
    ws, x = space[1:-1], _char_class(_numbers_not_digits())
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            esc, i = _read_escape(pattern, i)
            out.append({r"\p{L}": letter, r"\p{N}": number, r"\s": space, r"\S": f"[^{ws}]"}.get(esc, esc))
        elif c == "[":
            end = pattern.index("]", i + 2)                    # no nested classes in these patterns
            out.append(_translate_class(pattern[i + 1:end], ws, x))
            i = end + 1
        else:
            out.append(c)
            i += 1
    return re.compile("".join(out))


def _read_escape(pattern, i):
    r"""The escape starting at pattern[i] ("\") and the index after it (\p{..} is one escape)."""
    if pattern[i + 1] == "p":
        end = pattern.index("}", i) + 1
        esc = pattern[i:end]
        if esc not in (r"\p{L}", r"\p{N}"):
            raise ValueError(f"the pre-tokenisation pattern uses {esc}; only \\p{{L}} and \\p{{N}} are supported")
        return esc, end
    return pattern[i:i + 2], i + 2


def _translate_class(body, ws, x):
    """The inside of one [...] class -> a stdlib-`re` expression for the same set."""
    negated = body.startswith("^")
    body = body[1:] if negated else body
    items, i = [], 0
    while i < len(body):
        if body[i] == "\\":
            esc, i = _read_escape(body, i)
            items.append(esc)
        else:
            items.append(body[i])
            i += 1
    has_l, has_n = r"\p{L}" in items, r"\p{N}" in items
    rest = "".join(ws if it == r"\s" else it for it in items if it not in (r"\p{L}", r"\p{N}"))
    if not (has_l or has_n):
        return f"[{'^' if negated else ''}{rest}]"
    members = [rf"[^\W\d_{x}]"] * has_l + [rf"[\d{x}]"] * has_n + [f"[{rest}]"] * bool(rest)
    if negated:            # any one character that is none of the members
        return "(?:(?!" + "|".join(members) + ")(?s:.))"
    return "(?:" + "|".join(members) + ")"


def _numbers_not_digits():
    """The code points that \\w and \\d say are numbers but not decimal digits (No, Nl)."""
    codes = array.array("I", range(0xD800))              # every code point but the surrogates
    codes.extend(range(0xE000, 0x110000))
    everything = codes.tobytes().decode("utf-32-le" if sys.byteorder == "little" else "utf-32-be")
    # [^\W\d_] = letters + non-decimal numbers; the letters are the ones isalpha() knows
    return [c for c in re.findall(r"[^\W\d_]", everything) if not c.isalpha()]


def _char_class(chars):
    """Sorted characters -> the body of a regex [...] class, as \\U escapes and ranges."""
    out, codes = [], sorted(ord(c) for c in chars)
    i = 0
    while i < len(codes):
        j = i
        while j + 1 < len(codes) and codes[j + 1] == codes[j] + 1:
            j += 1
        out.append(f"\\U{codes[i]:08x}" if i == j else f"\\U{codes[i]:08x}-\\U{codes[j]:08x}")
        i = j + 1
    return "".join(out)


def without_lone_surrogates(text):
    """Lone surrogates (e.g. from a broken UTF-16 source) have no UTF-8 form; tiktoken turns
    them into U+FFFD (and a valid surrogate pair into its character): we do the same."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def pre_tokenizer_pattern(pre, path):
    """tokenizer.json's pre_tokenizer -> "gpt2" or the regex of its Split step."""
    steps = pre.get("pretokenizers", []) if pre and pre.get("type") == "Sequence" else [pre] if pre else []
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True) and not steps[0].get("add_prefix_space"):
        return "gpt2"
    if kinds == ["Split", "ByteLevel"]:
        split, byte_level = steps
        if (split.get("behavior") == "Isolated" and not split.get("invert") and "Regex" in split["pattern"]
                and not byte_level.get("use_regex", True) and not byte_level.get("add_prefix_space")):
            return split["pattern"]["Regex"]
    raise ValueError(f"{path}: pre_tokenizer {kinds} with these options is not supported; expected "
                     "ByteLevel (GPT-2's regex) or Split(Regex, Isolated) then ByteLevel(use_regex=false), "
                     "both without add_prefix_space")
