"""Analysis 1, the corpora: which characters they use, how often, and how predictable one
character is on its own (the unigram entropy, in bits per character).

The unigram entropy H = -sum_c p(c) log2 p(c) is the loss (in bits) of the best model that
ignores context altogether; a trained model's loss in bits per character (loss / ln 2) shows
how much the context buys.
"""
import math
import os
from collections import Counter

from scratchgpt.analysis.common import md_table, new_figure, save_figure, show_char, write_csv, write_json


def char_stats(text, top=80):
    """{n_chars, vocab_size, entropy_bits, top: [(char, count, share)]} of one text."""
    counts = Counter(text)
    n = len(text)
    h = -sum(c / n * math.log2(c / n) for c in counts.values())
    ranked = counts.most_common()
    return {"n_chars": n, "vocab_size": len(counts), "entropy_bits": h,
            "max_entropy_bits": math.log2(len(counts)) if counts else 0.0,
            "top": [(ch, c, c / n) for ch, c in ranked[:top]], "counts": ranked}


def analyse_corpora(texts, out_dir, top=80):
    """texts: {name: text}. Writes corpus_chars.png, corpus_stats.csv, corpus_chars_<name>.csv
    and corpus.json into out_dir; returns {name: stats} (without the full count lists)."""
    os.makedirs(out_dir, exist_ok=True)
    stats = {name: char_stats(t, top) for name, t in texts.items()}
    fig = new_figure(16, 3.2 * len(texts))
    axes = fig.subplots(len(texts), 1, squeeze=False)[:, 0]
    for ax, (name, s) in zip(axes, stats.items()):
        chars = [show_char(c) for c, _, _ in s["top"]]
        ax.bar(range(len(chars)), [100 * p for _, _, p in s["top"]], color="tab:blue")
        ax.set_xticks(range(len(chars)))
        ax.set_xticklabels(chars, fontsize=8, family="monospace")
        ax.set_xlim(-0.7, len(chars) - 0.3)
        ax.set_ylabel("% of characters")
        ax.set_title(f"{name}: {s['n_chars']:,} characters, vocabulary {s['vocab_size']}, "
                     f"unigram entropy {s['entropy_bits']:.2f} bits/char (top {len(chars)} shown)")
    fig.tight_layout()
    save_figure(fig, os.path.join(out_dir, "corpus_chars.png"))
    rows = [{"corpus": name, "n_chars": s["n_chars"], "vocab_size": s["vocab_size"],
             "entropy_bits_per_char": round(s["entropy_bits"], 6),
             "max_entropy_bits": round(s["max_entropy_bits"], 6)} for name, s in stats.items()]
    write_csv(os.path.join(out_dir, "corpus_stats.csv"), rows)
    for name, s in stats.items():
        write_csv(os.path.join(out_dir, f"corpus_chars_{name}.csv"),
                  [{"char": c, "codepoint": f"U+{ord(c):04X}", "count": k, "share": k / s["n_chars"]}
                   for c, k in s["counts"]])
    result = {name: {k: v for k, v in s.items() if k != "counts"} for name, s in stats.items()}
    write_json(os.path.join(out_dir, "corpus.json"), result)
    return result


def markdown(result, fig_dir="."):
    rows = [[name, f"{s['n_chars']:,}", s["vocab_size"], f"{s['entropy_bits']:.3f}",
             f"{s['max_entropy_bits']:.3f}", " ".join(show_char(c) for c, _, _ in s["top"][:10])]
            for name, s in result.items()]
    names = list(result)
    hi = max(names, key=lambda n: result[n]["entropy_bits"])
    lo = min(names, key=lambda n: result[n]["entropy_bits"])
    big = max(names, key=lambda n: result[n]["vocab_size"])
    top1 = {n: result[n]["top"][0] for n in names}
    obs = (f"{hi} has the highest unigram entropy ({result[hi]['entropy_bits']:.2f} bits/char) and {lo} "
           f"the lowest ({result[lo]['entropy_bits']:.2f}); {big} uses the most distinct characters "
           f"({result[big]['vocab_size']}). The most frequent character is "
           + ", ".join(f"{show_char(c)!r} in {n} ({100 * p:.1f}%)" for n, (c, _, p) in top1.items())
           + ". A model that ignored context could do no better than these entropies; the trained "
           "models' losses below (in nats, divide by ln 2 = 0.693 for bits) show what context adds.")
    return "\n\n".join([
        f"![character frequencies]({fig_dir}/corpus_chars.png)",
        md_table(["corpus", "characters", "vocabulary", "entropy (bits/char)", "log2 vocabulary",
                  "10 most frequent"], rows),
        obs])
