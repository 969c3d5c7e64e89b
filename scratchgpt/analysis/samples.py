"""Analysis 3, samples over training: what each saved checkpoint writes from one fixed prompt
and seed, and "fewer spelling mistakes": the share of generated words that occur in the
training text, per checkpoint.

A "word" is a run of letters, lower-cased (scratchgpt.analysis.common.WORD_RE). The same
share measured on the validation text (real text the model never saw) is the ceiling to
compare with: even real text has words that do not occur in the training split.
"""
import os

from scratchgpt.analysis.common import (corpus_words, decode_ids, list_checkpoints, load_metrics,
                                        load_model, md_table, new_figure, run_config, run_corpus,
                                        save_figure, valid_word_share, words_of, write_csv, write_json)
from scratchgpt.generate import generate_text


def training_vocabulary(run_dir, tokenizer=None):
    """(set of words in the training split, validation text) of a run's corpus."""
    corpus = run_corpus(run_dir, tokenizer, run_config(run_dir))
    tok = corpus.tokenizer if tokenizer is None else tokenizer
    return corpus_words(decode_ids(tok, corpus.train)), decode_ids(tok, corpus.val)


def samples_over_training(run_dir, out_dir, prompt, seed=0, max_new_tokens=200, temperature=0.8,
                          n_samples=4, name="samples", vocabulary=None):
    """Generate `n_samples` continuations (one seeded batch) from every checkpoint of `run_dir`;
    the valid-word share pools their words, the table shows the first. Writes
    <name>.csv/.json/.png; returns the numbers."""
    os.makedirs(out_dir, exist_ok=True)
    ckpts = list_checkpoints(run_dir)
    _, tok, _ = load_model(ckpts[-1][1])
    if vocabulary is None:
        vocabulary, val_text = training_vocabulary(run_dir, tok)
    else:
        vocabulary, val_text = vocabulary
    ceiling = valid_word_share(val_text[:50_000], vocabulary)
    val_loss = {r["iter"]: r["val_loss"] for r in load_metrics(run_dir)}
    rows = []
    for it, path in ckpts:
        model, tok, _ = load_model(path)
        texts = generate_text(model, tok, prompt, max_new_tokens, temperature=temperature, seed=seed,
                              num_samples=n_samples)
        conts = [t[len(prompt):] for t in texts]
        pooled = "\n".join(conts)
        rows.append({"iter": it, "val_loss": val_loss.get(it), "valid_word_share": valid_word_share(pooled, vocabulary),
                     "n_words": len(words_of(pooled)), "sample": conts[0]})
    fig = new_figure(8, 4)
    ax = fig.subplots()
    ax.plot([r["iter"] for r in rows], [100 * r["valid_word_share"] for r in rows], "o-",
            label="generated words found in the training text")
    ax.axhline(100 * ceiling, color="gray", ls="--", label="same measure on the validation text")
    ax.set_xlabel("iteration")
    ax.set_ylabel("% of generated words")
    ax.set_ylim(0, 105)
    ax.grid(alpha=0.3)
    if any(r["val_loss"] is not None for r in rows):
        ax2 = ax.twinx()
        ax2.plot([r["iter"] for r in rows], [r["val_loss"] for r in rows], color="tab:red", alpha=0.5,
                 label="val loss (right axis)")
        ax2.set_ylabel("val loss", color="tab:red")
        ax2.legend(loc="center right")
    ax.legend(loc="lower right")
    ax.set_title(f"fewer spelling mistakes over training ({n_samples} samples from {prompt!r}, "
                 f"seed {seed}, T={temperature})", fontsize=9)
    fig.tight_layout()
    save_figure(fig, os.path.join(out_dir, f"{name}.png"))
    write_csv(os.path.join(out_dir, f"{name}.csv"), rows)
    result = {"run": run_dir, "name": name, "prompt": prompt, "seed": seed, "temperature": temperature,
              "n_samples": n_samples, "rows": rows, "val_text_share": ceiling}
    write_json(os.path.join(out_dir, f"{name}.json"), result)
    return result


def markdown(results, fig_dir=".", width=110):
    """results: {label: samples_over_training(...) result}."""
    out = []
    for label, r in results.items():
        rows = [[x["iter"], f"{100 * x['valid_word_share']:.0f}%" if x["n_words"] else "n/a",
                 "`" + x["sample"][:width].replace("`", "'").replace("\n", "⏎") + "`"] for x in r["rows"]]
        first, last = r["rows"][0], r["rows"][-1]
        best = max(r["rows"], key=lambda x: x["valid_word_share"] if x["n_words"] else -1)
        out.append(f"**{label}** (prompt `{r['prompt']!r}`, seed {r['seed']}, temperature {r['temperature']}; "
                   f"valid words counted over {r['n_samples']} samples per checkpoint, the first one shown):")
        out.append(f"![valid words, {label}]({fig_dir}/{r['name']}.png)")
        out.append(md_table(["iter", "valid words", f"sample (first {width} characters, ⏎ = newline)"], rows))
        out.append(f"The share of generated words that occur in the training text went from "
                   f"{100 * first['valid_word_share']:.0f}% at iteration {first['iter']} to "
                   f"{100 * last['valid_word_share']:.0f}% at iteration {last['iter']} (highest "
                   f"{100 * best['valid_word_share']:.0f}% at {best['iter']}); on the validation text the same "
                   f"measure is {100 * r['val_text_share']:.0f}%.")
    return "\n\n".join(out)
