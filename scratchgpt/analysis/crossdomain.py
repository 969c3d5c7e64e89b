"""Analysis 6, cross-domain evaluation: every model scored on every corpus.

Policy for characters a model never saw: all models share ONE character vocabulary, built
from the union of the corpora (`shared_char_tokenizer`), so every model can score every corpus
and nothing is dropped or mapped to an "unknown" token. A character absent from a model's
training text keeps its (untrained) initial embedding and the model gives it little
probability, so it costs what it honestly costs. The table reports, beside each loss, the
share of the evaluated characters that never occur in the model's training split.

Models with different vocabularies can still be passed: a corpus that a model's tokenizer
cannot encode gets no score (NaN) and a note, rather than a number computed on a filtered text.
"""
import math
import os

import numpy

from scratchgpt.analysis.common import (final_checkpoint, fmt, load_model, md_table, new_figure,
                                        run_config, save_figure, write_csv, write_json)
from scratchgpt.evaluate import evaluate_loss
from scratchgpt.tokenizer import CharTokenizer
from scratchgpt.train import load_corpus


def shared_char_tokenizer(texts, extra=""):
    """One CharTokenizer over the union of the characters of `texts` (and of `extra`, e.g. the
    prompts the analyses will use)."""
    chars = set(extra)
    for t in texts:
        chars.update(t)
    return CharTokenizer(sorted(chars))


def cross_domain(runs, out_dir, batch_size=16, max_batches=20, name="crossdomain"):
    """runs: {label: run_dir}. Each run's final model is scored (evaluate_loss: consecutive
    windows of the validation split) on every run's corpus. Writes <name>.png/.csv/.json."""
    os.makedirs(out_dir, exist_ok=True)
    labels = list(runs)
    cfgs = {k: run_config(v) for k, v in runs.items()}
    loss = numpy.full((len(labels), len(labels)), numpy.nan)
    oov = numpy.full_like(loss, numpy.nan)
    rows, notes = [], []
    for i, a in enumerate(labels):
        model, tok, it = load_model(final_checkpoint(runs[a]))
        seen = numpy.zeros(tok.vocab_size, dtype=bool)
        seen[numpy.unique(numpy.asarray(load_corpus(cfgs[a], tok).train))] = True
        for j, b in enumerate(labels):
            try:
                corpus = load_corpus(cfgs[b], tok)
            except ValueError as e:
                notes.append(f"the {a} model cannot encode the {b} corpus ({e}); no score")
                rows.append({"model": a, "corpus": b, "loss": None, "bits_per_char": None, "unseen_share": None})
                continue
            val = numpy.asarray(corpus.val)
            loss[i, j] = evaluate_loss(model, val, batch_size, max_batches)
            T = model.cfg.context_length
            scored = val[: min(len(val) - 1, max_batches * batch_size * T) + 1][1:]   # the targets scored
            oov[i, j] = float((~seen[scored]).mean())
            rows.append({"model": a, "model_iter": it, "corpus": b, "loss": loss[i, j],
                         "bits_per_char": loss[i, j] / math.log(2), "unseen_share": oov[i, j]})

    fig = new_figure(1.6 * len(labels) + 3, 1.4 * len(labels) + 1.8)
    ax = fig.subplots()
    im = ax.imshow(loss, cmap="viridis_r")
    for i in range(len(labels)):
        for j in range(len(labels)):
            txt = "n/a" if numpy.isnan(loss[i, j]) else f"{loss[i, j]:.2f}"
            ax.text(j, i, txt, ha="center", va="center", fontsize=12,
                    color="white" if not numpy.isnan(loss[i, j]) and loss[i, j] > numpy.nanmean(loss) else "black")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels)
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels)
    ax.set_xlabel("evaluated on (validation split)")
    ax.set_ylabel("trained on")
    ax.set_title("cross-domain loss (nats/char, shared vocabulary)")
    fig.colorbar(im, ax=ax, label="loss")
    fig.tight_layout()
    save_figure(fig, os.path.join(out_dir, f"{name}.png"))
    write_csv(os.path.join(out_dir, f"{name}.csv"), rows,
              ["model", "model_iter", "corpus", "loss", "bits_per_char", "unseen_share"])
    result = {"name": name, "labels": labels, "loss": loss, "unseen_share": oov, "rows": rows, "notes": notes,
              "batch_size": batch_size, "max_batches": max_batches}
    write_json(os.path.join(out_dir, f"{name}.json"), result)
    return result


def markdown(r, fig_dir="."):
    labels, L, U = r["labels"], numpy.asarray(r["loss"], dtype=float), numpy.asarray(r["unseen_share"], dtype=float)
    rows = [[f"**{a}**"] + [f"{fmt(L[i, j])} ({100 * U[i, j]:.1f}% unseen)" if not numpy.isnan(L[i, j]) else "n/a"
                            for j in range(len(labels))] for i, a in enumerate(labels)]
    out = [f"![cross-domain loss]({fig_dir}/{r['name']}.png)",
           md_table(["trained on \\ evaluated on"] + labels, rows),
           "Each cell: loss in nats/char on the validation split (the first "
           f"{r['max_batches']}×{r['batch_size']} windows), and in parentheses the share of those characters "
           "that never occur in the model's training split."]
    obs = []
    for j, b in enumerate(labels):
        col = L[:, j]
        if numpy.isnan(col).all():
            continue
        best = int(numpy.nanargmin(col))
        obs.append(f"on {b}, the {labels[best]} model scores best ({col[best]:.2f})"
                   + ("" if best == j or numpy.isnan(col[j]) else f", better than the {b} model itself ({col[j]:.2f})"))
    for i, a in enumerate(labels):
        own = L[i, i]
        others = [(L[i, j], labels[j]) for j in range(len(labels)) if j != i and not numpy.isnan(L[i, j])]
        if others and not numpy.isnan(own):
            worst = max(others)
            obs.append(f"the {a} model scores {worst[0]:.2f} nats/char on {worst[1]}, {worst[0] - own:.2f} higher "
                       f"than on its own domain ({own:.2f})")
    diag_best = sum(1 for j in range(len(labels)) if not numpy.isnan(L[j, j]) and L[j, j] <= numpy.nanmin(L[:, j]))
    text = "; ".join(obs)
    out.append(f"On {diag_best} of {len(labels)} corpora the model trained on it scores best. "
               + (text[:1].upper() + text[1:] + "." if text else "")
               + (" Notes: " + "; ".join(r["notes"]) if r["notes"] else ""))
    return "\n\n".join(out)
