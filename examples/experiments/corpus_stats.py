"""Analysis 1: character frequencies, vocabulary size and unigram entropy of the corpora.

    python examples/experiments/corpus_stats.py --out out/experiments/corpus
    python examples/experiments/corpus_stats.py --corpora shakespeare math --max-chars 100000
"""
import argparse

from scratchgpt.analysis.corpus import analyse_corpora
from scratchgpt.corpora import DATASETS, load_text


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpora", nargs="+", default=list(DATASETS))
    p.add_argument("--text-file", action="append", default=[], help="add a text file of your own (repeatable)")
    p.add_argument("--max-chars", type=int, default=None, help="only the first N characters of each")
    p.add_argument("--out", default="out/experiments/corpus")
    a = p.parse_args(argv)
    texts = {name: load_text(name)[: a.max_chars] for name in a.corpora}
    for path in a.text_file:
        with open(path, encoding="utf-8") as f:
            texts[path] = f.read()[: a.max_chars]
    res = analyse_corpora(texts, a.out)
    for name, s in res.items():
        print(f"{name}: {s['n_chars']:,} characters, vocabulary {s['vocab_size']}, {s['entropy_bits']:.3f} bits/char")
    print(f"figures and tables in {a.out}")


if __name__ == "__main__":
    main()
