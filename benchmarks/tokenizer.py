"""Speed of our pure-Python GPT-2 BPE against tiktoken (Rust), and of BPE training.

Encode throughput is one thread, MB of UTF-8 input per second, on two texts:
  english  the-verdict.txt (../shared/data) repeated to --mb MB; few distinct words, so after the
           first pass nearly every pre-token comes from the cache
  python   the standard library's *.py sources, --mb MB: many distinct pieces (identifiers,
           numbers, indentation), a harder case for the cache
"cold" is a fresh tokenizer (empty cache), "warm" the same tokenizer on the same text again.
Training: BPETokenizer.train(text, 2000) on 1 MB of each text.

    python benchmarks/tokenizer.py
    python benchmarks/tokenizer.py --mb 5 --text-file corpus.txt
"""
import argparse
import glob
import os
import sysconfig
import time
from pathlib import Path

from scratchgpt.tokenizer import ENDOFTEXT, GPT2_ASSET, GPT2_PATTERN, BPETokenizer

DATA = Path(__file__).resolve().parents[2] / "shared/data"


def english_text(mb):
    path = DATA / "the-verdict.txt"
    if not path.exists():
        return None
    text = path.read_text(encoding="utf-8")
    return (text * (int(mb * 1e6) // len(text.encode("utf-8")) + 1))[:int(mb * 1e6)]


def python_text(mb):
    parts, size = [], 0
    for f in sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py"))):
        parts.append(Path(f).read_text(encoding="utf-8", errors="replace"))
        size += len(parts[-1])
        if size >= mb * 1e6:
            break
    return "".join(parts)[:int(mb * 1e6)]


def tiktoken_gpt2():
    try:
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe
    except ImportError:
        return None
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", "")             # read the local file as is
    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN,
                             mergeable_ranks=load_tiktoken_bpe(str(GPT2_ASSET)),
                             special_tokens={ENDOFTEXT: 50256})


def timed(fn, repeats=1):
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def bench_encode(name, text, enc):
    mb = len(text.encode("utf-8")) / 1e6
    tok = BPETokenizer.gpt2()
    cold, ids = timed(lambda: tok.encode(text, disallowed_special=()))
    warm, _ = timed(lambda: tok.encode(text, disallowed_special=()), repeats=2)
    line = (f"encode {name:8s} {mb:5.2f} MB  {len(ids):>9,} tokens  "
            f"ours cold {mb / cold:5.2f} MB/s  warm {mb / warm:5.2f} MB/s")
    if enc is not None:
        t_ref, ref = timed(lambda: enc.encode_ordinary(text), repeats=3)
        assert ref == ids, "ids differ from tiktoken"
        line += f"  tiktoken {mb / t_ref:6.2f} MB/s  (tiktoken / ours warm: {warm / t_ref:4.1f}x)"
    print(line, flush=True)


def bench_train(name, text, vocab_size):
    mb = len(text.encode("utf-8")) / 1e6
    seconds, tok = timed(lambda: BPETokenizer.train(text, vocab_size))
    n = len(tok.encode(text, disallowed_special=()))
    print(f"train  {name:8s} {mb:5.2f} MB  vocab {tok.vocab_size}  {seconds:6.2f} s  "
          f"({len(text.encode('utf-8')) / n:.2f} bytes/token on its training text)", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=float, default=2.0, help="MB of text for encoding")
    ap.add_argument("--train-mb", type=float, default=1.0, help="MB of text for training")
    ap.add_argument("--vocab-size", type=int, default=2000)
    ap.add_argument("--text-file", help="also benchmark this text")
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args()

    enc = tiktoken_gpt2()
    if enc is None:
        print("tiktoken not installed: ours only")
    texts = {"english": english_text, "python": python_text}
    if args.text_file:
        whole = Path(args.text_file).read_text(encoding="utf-8")
        texts["file"] = lambda mb: whole[:int(mb * 1e6)]
    for name, make in texts.items():
        text = make(args.mb)
        if text is None:
            print(f"encode {name:8s} skipped ({DATA / 'the-verdict.txt'} not found)")
            continue
        bench_encode(name, text, enc)
    if not args.skip_train:
        for name, make in texts.items():
            text = make(args.train_mb)
            if text is not None:
                bench_train(name, text, args.vocab_size)


if __name__ == "__main__":
    main()
