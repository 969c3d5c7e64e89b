"""Chapter 2 of "Build a Large Language Model (From Scratch)": working with text data.

Text -> tokens -> token ids -> (input, target) windows -> token + position embeddings,
with scratchgpt's tokenizers, sliding-window dataset and embedding op where the book uses
tiktoken and torch.

    python examples/ch02_text_data.py                          # a Shakespeare excerpt
    python examples/ch02_text_data.py --text-file the-verdict.txt   # the book's short story
    python examples/ch02_text_data.py --smoke --out /tmp/ch02  # quicker (used by the tests)

The default text is 20,000 characters of "As You Like It" (Act II, Scene VII on, about the
size of the book's "The Verdict") from scratchgpt's Shakespeare corpus, or, where that corpus
is not installed, a few Shakespeare passages embedded below. Plots go to out/ch02_text_data/.
"""
import argparse
import re
import time
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from scratchgpt.data import GPTDatasetV1, create_dataloader_v1  # noqa: E402
from scratchgpt.ops import (embedding_backward, embedding_forward,  # noqa: E402
                            position_embedding_forward)
from scratchgpt.tokenizer import BPETokenizer, CharTokenizer  # noqa: E402

# Public domain (Shakespeare), used when the Shakespeare corpus package is not installed.
SHAKESPEARE = """\
All the world's a stage,
And all the men and women merely players;
They have their exits and their entrances;
And one man in his time plays many parts,
His acts being seven ages. At first the infant,
Mewling and puking in the nurse's arms;
Then the whining school-boy, with his satchel
And shining morning face, creeping like snail
Unwillingly to school. And then the lover,
Sighing like furnace, with a woeful ballad
Made to his mistress' eyebrow. Then a soldier,
Full of strange oaths, and bearded like the pard,
Jealous in honour, sudden and quick in quarrel,
Seeking the bubble reputation
Even in the cannon's mouth. And then the justice,
In fair round belly with good capon lin'd,
With eyes severe and beard of formal cut,
Full of wise saws and modern instances;
And so he plays his part. The sixth age shifts
Into the lean and slipper'd pantaloon,
With spectacles on nose and pouch on side;
His youthful hose, well sav'd, a world too wide
For his shrunk shank; and his big manly voice,
Turning again toward childish treble, pipes
And whistles in his sound. Last scene of all,
That ends this strange eventful history,
Is second childishness and mere oblivion;
Sans teeth, sans eyes, sans taste, sans everything.

To be, or not to be,--that is the question:--
Whether 'tis nobler in the mind to suffer
The slings and arrows of outrageous fortune
Or to take arms against a sea of troubles,
And by opposing end them? To die,--to sleep,--
No more; and by a sleep to say we end
The heartache, and the thousand natural shocks
That flesh is heir to,--'tis a consummation
Devoutly to be wish'd. To die,--to sleep;--
To sleep! perchance to dream:--ay, there's the rub;
For in that sleep of death what dreams may come,
When we have shuffled off this mortal coil,
Must give us pause: there's the respect
That makes calamity of so long life;
For who would bear the whips and scorns of time,
The oppressor's wrong, the proud man's contumely,
The pangs of despis'd love, the law's delay,
The insolence of office, and the spurns
That patient merit of the unworthy takes,
When he himself might his quietus make
With a bare bodkin? who would these fardels bear,
To grunt and sweat under a weary life,
But that the dread of something after death,--
The undiscover'd country, from whose bourn
No traveller returns,--puzzles the will,
And makes us rather bear those ills we have
Than fly to others that we know not of?
Thus conscience does make cowards of us all;
And thus the native hue of resolution
Is sicklied o'er with the pale cast of thought;
And enterprises of great pith and moment,
With this regard, their currents turn awry,
And lose the name of action.

Shall I compare thee to a summer's day?
Thou art more lovely and more temperate:
Rough winds do shake the darling buds of May,
And summer's lease hath all too short a date;
Sometime too hot the eye of heaven shines,
And often is his gold complexion dimm'd;
And every fair from fair sometime declines,
By chance or nature's changing course untrimm'd;
But thy eternal summer shall not fade,
Nor lose possession of that fair thou ow'st;
Nor shall death brag thou wander'st in his shade,
When in eternal lines to time thou grow'st:
So long as men can breathe or eyes can see,
So long lives this, and this gives life to thee.
"""


def read_text(text_file=None, n_chars=20_000):
    """The chapter's raw text and where it came from: --text-file, else an excerpt of the
    Shakespeare corpus (As You Like It, from Act II Scene VII), else SHAKESPEARE above."""
    if text_file:
        return Path(text_file).read_text(encoding="utf-8"), str(text_file)
    try:
        from scratchgpt.corpora import load_text
        works = load_text("shakespeare")
        start = works.index("SCENE VII. Another part of the Forest.")
        return works[start:start + n_chars], "scratchgpt.corpora 'shakespeare' (As You Like It, II.vii on)"
    except Exception:                     # corpus package not installed: the embedded passages
        return SHAKESPEARE, "passages embedded in examples/ch02_text_data.py"


# ---- 2.2 Tokenizing text ---------------------------------------------------------------------
def split_words(text):
    """The book's regex: split on punctuation, '--' and whitespace, keep the punctuation, drop spaces."""
    preprocessed = re.split(r'([,.:;?_!"()\']|--|\s)', text)
    return [item.strip() for item in preprocessed if item.strip()]


def tokenizing_text(raw_text, source):
    print("=== 2.2 Tokenizing text ===")
    print(f"text: {source}")
    print(f"Total number of character: {len(raw_text)}")
    print(repr(raw_text[:99]))
    print(re.split(r"(\s)", "Hello, world. This, is a test."))
    print(split_words("Hello, world. Is this-- a test?"))
    preprocessed = split_words(raw_text)
    print(f"{len(preprocessed)} word tokens; the first 30: {preprocessed[:30]}")
    return preprocessed


# ---- 2.3 Converting tokens into token IDs ------------------------------------------------------
class SimpleTokenizerV1:
    """The book's first tokenizer: a fixed vocabulary of the words seen in training."""

    def __init__(self, vocab):
        self.str_to_int = vocab
        self.int_to_str = {i: s for s, i in vocab.items()}

    def encode(self, text):
        return [self.str_to_int[s] for s in split_words(text)]

    def decode(self, ids):
        text = " ".join([self.int_to_str[i] for i in ids])
        return re.sub(r'\s+([,.?!"()\'])', r"\1", text)   # no space before punctuation


def token_ids(preprocessed):
    print("\n=== 2.3 Converting tokens into token IDs ===")
    all_words = sorted(set(preprocessed))
    vocab = {token: integer for integer, token in enumerate(all_words)}
    print(f"vocabulary size: {len(vocab)}")
    for i, item in enumerate(vocab.items()):
        print(item)
        if i >= 9:
            break
    tokenizer = SimpleTokenizerV1(vocab)
    sample = " ".join(preprocessed[100:120])
    ids = tokenizer.encode(sample)
    print(f"encode({sample!r})\n  -> {ids}")
    print(f"decode -> {tokenizer.decode(ids)!r}")
    try:
        tokenizer.encode("Hello, do you like tea?")
    except KeyError as e:
        print(f"SimpleTokenizerV1 on unseen words: KeyError {e} (the word is not in the vocabulary)")
    return all_words


# ---- 2.4 Adding special context tokens ---------------------------------------------------------
class SimpleTokenizerV2:
    """V1 plus <|unk|> for unknown words; <|endoftext|> separates unrelated texts."""

    def __init__(self, vocab):
        self.str_to_int = vocab
        self.int_to_str = {i: s for s, i in vocab.items()}

    def encode(self, text):
        preprocessed = [item if item in self.str_to_int else "<|unk|>" for item in split_words(text)]
        return [self.str_to_int[s] for s in preprocessed]

    def decode(self, ids):
        text = " ".join([self.int_to_str[i] for i in ids])
        return re.sub(r'\s+([,.:;?!"()\'])', r"\1", text)


def special_tokens(all_words):
    print("\n=== 2.4 Adding special context tokens ===")
    all_tokens = sorted(set(all_words)) + ["<|endoftext|>", "<|unk|>"]
    vocab = {token: integer for integer, token in enumerate(all_tokens)}
    print(f"vocabulary size with <|endoftext|> and <|unk|>: {len(vocab)}")
    for item in list(vocab.items())[-5:]:
        print(item)
    tokenizer = SimpleTokenizerV2(vocab)
    text = " <|endoftext|> ".join(("Hello, do you like tea?", "In the sunlit terraces of the palace."))
    print(text)
    ids = tokenizer.encode(text)
    print(ids)
    print(tokenizer.decode(ids))
    return vocab


# ---- 2.5 Byte pair encoding (and characters, for comparison) ------------------------------------
def byte_pair_encoding(raw_text, n_words, n_word_vocab):
    print("\n=== 2.5 Byte pair encoding ===")
    tokenizer = BPETokenizer.gpt2()          # GPT-2's 50,257-token vocabulary, same ids as tiktoken
    text = ("Hello, do you like tea? <|endoftext|> In the sunlit terraces"
            " of someunknownPlace.")
    integers = tokenizer.encode(text, allowed_special={"<|endoftext|>"})
    print(f"BPE ids: {integers}")
    print(f"BPE decode: {tokenizer.decode(integers)!r}")
    ids = tokenizer.encode("Akwirw ier")
    print(f"'Akwirw ier' -> {ids} -> {[tokenizer.decode([i]) for i in ids]} -> {tokenizer.decode(ids)!r}")

    chars = CharTokenizer.from_text(raw_text)     # one id per distinct character (the other extreme)
    print(f"\nCharTokenizer: {chars.vocab_size} characters: {''.join(chars.chars)!r}")
    print(f"  'All the world' -> {chars.encode('All the world')} -> {chars.decode(chars.encode('All the world'))!r}")

    enc_text = tokenizer.encode(raw_text, disallowed_special=())
    print("\nthe same text, three ways (vocabulary size vs. tokens per text):")
    rows = [("characters", chars.vocab_size, len(raw_text)),
            ("regex words", n_word_vocab, n_words),
            ("GPT-2 BPE", tokenizer.vocab_size, len(enc_text))]
    for name, v, n in rows:
        print(f"  {name:12s} vocabulary {v:6d}  tokens {n:6d}  ({len(raw_text) / n:.2f} characters per token)")
    return tokenizer, enc_text, rows


# ---- 2.6 Data sampling with a sliding window --------------------------------------------------
def sliding_window(raw_text, tokenizer, enc_text):
    print("\n=== 2.6 Data sampling with a sliding window ===")
    print(f"{len(enc_text)} BPE tokens")
    enc_sample = enc_text[50:]
    context_size = 4
    x = enc_sample[:context_size]
    y = enc_sample[1:context_size + 1]
    print(f"x: {x}")
    print(f"y:      {y}")
    for i in range(1, context_size + 1):
        context, desired = enc_sample[:i], enc_sample[i]
        print(f"{context} ----> {desired}    {tokenizer.decode(context)!r} ----> {tokenizer.decode([desired])!r}")

    # GPTDatasetV1 yields one (input, target) pair every `stride` tokens; the target is the
    # input shifted by one token, so every position is a next-token prediction example.
    dataloader = create_dataloader_v1(enc_text, batch_size=1, max_length=4, stride=1, shuffle=False)
    data_iter = iter(dataloader)
    print(f"stride 1, first batch:  {next(data_iter)}")
    print(f"stride 1, second batch: {next(data_iter)}")

    dataloader = create_dataloader_v1(enc_text, batch_size=8, max_length=4, stride=4, shuffle=False)
    inputs, targets = next(iter(dataloader))
    print(f"stride 4, batch of 8 (no overlap between windows):\nInputs:\n{inputs}\nTargets:\n{targets}")
    dataset = GPTDatasetV1(enc_text, max_length=4, stride=4)
    print(f"GPTDatasetV1(max_length=4, stride=4): {len(dataset)} examples; "
          f"with stride 1 there are {len(GPTDatasetV1(enc_text, max_length=4, stride=1))}")


# ---- 2.7 Creating token embeddings --------------------------------------------------------------
def token_embeddings_small():
    print("\n=== 2.7 Creating token embeddings ===")
    input_ids = np.array([2, 3, 5, 1])
    vocab_size, output_dim = 6, 3
    rng = np.random.default_rng(123)
    weight = rng.standard_normal((vocab_size, output_dim)).astype(np.float32)  # nn.Embedding's N(0, 1) init
    print(f"embedding weight (6, 3):\n{weight}")
    out, _ = embedding_forward(np.array([3]), weight)
    print(f"embedding of id 3 (= row 3 of the weight): {out}")
    out, cache = embedding_forward(input_ids, weight)
    print(f"embeddings of {input_ids.tolist()}:\n{out}")
    # Beyond the book: the backward is a scatter-add, so a repeated id collects every gradient.
    dweight = embedding_backward(np.ones((1, 3, 3), np.float32), (np.array([[2, 3, 2]]), weight.shape))
    print(f"embedding backward for ids [2, 3, 2] and all-ones upstream gradient:\n{dweight}")


# ---- 2.8 Encoding word positions ----------------------------------------------------------------
def encoding_positions(enc_text):
    print("\n=== 2.8 Encoding word positions ===")
    vocab_size, output_dim = 50257, 256
    rng = np.random.default_rng(123)
    token_embedding_weight = rng.standard_normal((vocab_size, output_dim), dtype=np.float32)
    max_length = 4
    dataloader = create_dataloader_v1(enc_text, batch_size=8, max_length=max_length,
                                      stride=max_length, shuffle=False)
    inputs, targets = next(iter(dataloader))
    print(f"Token IDs:\n{inputs}")
    print(f"Inputs shape: {inputs.shape}")
    token_embeddings, _ = embedding_forward(inputs, token_embedding_weight)        # (8, 4, 256)
    print(f"token embeddings shape: {token_embeddings.shape}")
    context_length = max_length
    pos_embedding_weight = rng.standard_normal((context_length, output_dim), dtype=np.float32)
    pos_embeddings, _ = position_embedding_forward(max_length, pos_embedding_weight)  # (4, 256)
    print(f"position embeddings shape: {pos_embeddings.shape}")
    input_embeddings = token_embeddings + pos_embeddings      # (8, 4, 256) + (4, 256) broadcasts
    print(f"input embeddings shape: {input_embeddings.shape}")
    return input_embeddings


# ---- plots ----------------------------------------------------------------------------------
def plot_tokenizers(rows, input_embeddings, out):
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    names = [r[0] for r in rows]
    axes[0].bar(names, [r[1] for r in rows], color=["C0", "C1", "C2"])
    axes[0].set_yscale("log")
    axes[0].set_title("vocabulary size")
    axes[1].bar(names, [r[2] for r in rows], color=["C0", "C1", "C2"])
    axes[1].set_title("tokens for the same text")
    im = axes[2].imshow(input_embeddings[0], aspect="auto", cmap="coolwarm", interpolation="nearest")
    axes[2].set_yticks(range(input_embeddings.shape[1]))
    axes[2].set_title("input embeddings, batch row 0 (4 x 256)")
    axes[2].set_xlabel("embedding dimension")
    axes[2].set_ylabel("position")
    fig.colorbar(im, ax=axes[2])
    fig.tight_layout()
    path = out / "tokenizers.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"\nsaved {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--text-file", help="a UTF-8 text to use instead (e.g. the book's the-verdict.txt)")
    parser.add_argument("--out", default="out/ch02_text_data", help="folder for the plots")
    parser.add_argument("--smoke", action="store_true", help="a shorter text (for the tests)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    raw_text, source = read_text(args.text_file, n_chars=5_000 if args.smoke else 20_000)
    preprocessed = tokenizing_text(raw_text, source)
    all_words = token_ids(preprocessed)
    special_tokens(all_words)
    tokenizer, enc_text, rows = byte_pair_encoding(raw_text, len(preprocessed), len(all_words))
    sliding_window(raw_text, tokenizer, enc_text)
    token_embeddings_small()
    input_embeddings = encoding_positions(enc_text)
    plot_tokenizers(rows, input_embeddings, out)
    print(f"done in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
