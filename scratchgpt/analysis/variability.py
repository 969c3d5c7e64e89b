"""Analysis 4, variability of the final model: several samples from one prompt with different
seeds, and how varied and how word-like each is.

distinct-n (Li et al., 2016) is the number of distinct word n-grams divided by the number of
word n-grams in a text: 1.0 means no n-gram repeats, a model stuck in a loop scores low.
The same measures on windows of validation text of the same length are the reference.
"""
import os

import numpy

from scratchgpt.analysis.common import (final_checkpoint, load_model, md_table, new_figure, save_figure,
                                        valid_word_share, words_of, write_csv, write_json)
from scratchgpt.analysis.samples import training_vocabulary
from scratchgpt.generate import generate_text


def distinct_n(words, n):
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def text_measures(text, vocabulary):
    w = words_of(text)
    return {"n_words": len(w), "distinct_1": distinct_n(w, 1), "distinct_2": distinct_n(w, 2),
            "distinct_3": distinct_n(w, 3), "valid_word_share": valid_word_share(text, vocabulary)}


def sample_variability(run_dir, out_dir, prompt, seeds=(0, 1, 2, 3, 4), max_new_tokens=200,
                       temperature=0.8, name="variability", vocabulary=None):
    """Samples of the run's final checkpoint, one per seed; write <name>.csv/.json/.png."""
    os.makedirs(out_dir, exist_ok=True)
    model, tok, it = load_model(final_checkpoint(run_dir))
    if vocabulary is None:
        vocabulary = training_vocabulary(run_dir, tok)
    words, val_text = vocabulary
    rows = []
    for s in seeds:
        cont = generate_text(model, tok, prompt, max_new_tokens, temperature=temperature, seed=s)[0][len(prompt):]
        rows.append({"seed": s, **text_measures(cont, words), "sample": cont})
    # reference: windows of real (validation) text of the same length
    rng = numpy.random.default_rng(0)
    n = max(1, len(val_text) - max_new_tokens)
    ref = [text_measures(val_text[i:i + max_new_tokens], words) for i in rng.integers(0, n, size=len(seeds))]
    keys = ("distinct_1", "distinct_2", "distinct_3", "valid_word_share")
    mean = {k: float(numpy.nanmean([r[k] for r in rows])) for k in keys}
    ref_mean = {k: float(numpy.nanmean([r[k] for r in ref])) for k in keys}
    # how different the samples are from each other: distinct word 3-grams pooled over samples
    pooled = [tuple(words_of(r["sample"])[i:i + 3]) for r in rows for i in range(max(0, r["n_words"] - 2))]
    across = len(set(pooled)) / len(pooled) if pooled else float("nan")

    fig = new_figure(9, 4)
    ax = fig.subplots()
    width = 0.8 / (len(keys))
    labels = [f"seed {r['seed']}" for r in rows] + ["validation text"]
    for j, k in enumerate(keys):
        vals = [r[k] for r in rows] + [ref_mean[k]]
        ax.bar(numpy.arange(len(labels)) + (j - 1.5) * width, vals, width, label=k.replace("_", "-"))
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels)
    ax.set_ylim(0, 1.05)
    ax.legend(ncol=4, fontsize=8, loc="lower center")
    ax.set_title(f"variability of the final model (iter {it}), prompt {prompt!r}, T={temperature}")
    fig.tight_layout()
    save_figure(fig, os.path.join(out_dir, f"{name}.png"))
    write_csv(os.path.join(out_dir, f"{name}.csv"), rows)
    result = {"run": run_dir, "name": name, "iter": it, "prompt": prompt, "temperature": temperature,
              "rows": rows, "mean": mean, "reference": ref_mean, "distinct_3_across_samples": across}
    write_json(os.path.join(out_dir, f"{name}.json"), result)
    return result


def markdown(results, fig_dir=".", width=90):
    out = []
    for label, r in results.items():
        rows = [[x["seed"], x["n_words"], f"{x['distinct_1']:.2f}", f"{x['distinct_2']:.2f}",
                 f"{x['distinct_3']:.2f}", f"{100 * x['valid_word_share']:.0f}%",
                 "`" + x["sample"][:width].replace("`", "'").replace("\n", "⏎") + "`"] for x in r["rows"]]
        m, ref = r["mean"], r["reference"]
        rows.append(["mean", "", f"{m['distinct_1']:.2f}", f"{m['distinct_2']:.2f}", f"{m['distinct_3']:.2f}",
                     f"{100 * m['valid_word_share']:.0f}%", ""])
        rows.append(["validation text", "", f"{ref['distinct_1']:.2f}", f"{ref['distinct_2']:.2f}",
                     f"{ref['distinct_3']:.2f}", f"{100 * ref['valid_word_share']:.0f}%", ""])
        out.append(f"**{label}** (final model, iteration {r['iter']}, prompt `{r['prompt']!r}`):")
        out.append(f"![variability, {label}]({fig_dir}/{r['name']}.png)")
        out.append(md_table(["seed", "words", "distinct-1", "distinct-2", "distinct-3", "valid words", "sample"], rows))
        d2 = m["distinct_2"] - ref["distinct_2"]
        out.append(f"Across {len(r['rows'])} seeds the samples average distinct-2 {m['distinct_2']:.2f} "
                   f"({abs(d2):.2f} {'below' if d2 < 0 else 'above'} real validation text of the same length) and "
                   f"{100 * m['valid_word_share']:.0f}% valid words (validation text: "
                   f"{100 * ref['valid_word_share']:.0f}%); pooled over all samples, "
                   f"{100 * r['distinct_3_across_samples']:.0f}% of the word 3-grams are distinct, so the seeds "
                   + ("mostly produce different text." if r["distinct_3_across_samples"] > 0.7
                      else "often repeat the same phrases."))
    return "\n\n".join(out)
