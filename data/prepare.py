"""Prepare (encode and cache) the corpora: python -m scratchgpt.corpora.prepare [--dataset NAME]

Prints, per corpus, its size in characters, vocabulary, train/val tokens, the cache folder and
the time it took (a second run reads the cache and is near-instant).
"""
import argparse
import sys
import time

from scratchgpt.corpora import DATASETS, CorpusNotAvailable


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m scratchgpt.corpora.prepare", description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=DATASETS, action="append",
                   help="a corpus to prepare (repeatable; default: all of them)")
    p.add_argument("--text-file", help="prepare a UTF-8 text file of your own instead")
    p.add_argument("--cache-dir", help="cache root (default $SCRATCHGPT_CACHE or ~/.cache/scratchgpt)")
    args = p.parse_args(argv)
    from scratchgpt.data import prepare_corpus
    jobs = [(None, args.text_file)] if args.text_file else [(n, None) for n in (args.dataset or DATASETS)]
    failed = 0
    for name, text_file in jobs:
        t0 = time.perf_counter()
        try:
            c = prepare_corpus(name, text_file=text_file, cache_dir=args.cache_dir)
        except CorpusNotAvailable as e:
            print(f"{name}: not available: {e}", file=sys.stderr)
            failed += 1
            continue
        m = c.meta
        print(f"{c.name}: {m['n_chars']:,} characters, vocabulary {m['vocab_size']}, "
              f"{m['n_train']:,} train + {m['n_val']:,} val tokens ({m['dtype']}), "
              f"{time.perf_counter() - t0:.2f} s -> {c.cache_dir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
