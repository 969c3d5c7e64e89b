"""Analysis 8, the next-token softmax: for a few prompts, the seven most likely next
characters and the entropy of the whole distribution, for three consecutive characters
generated greedily (each step appends the most likely character), at several checkpoints.

The entropy H(p) = -sum_i p_i ln p_i (nats) is between 0 (certain) and ln V (uniform over the
V characters); an untrained model sits near ln V, training concentrates the distribution.
"""
import math
import os

import numpy

from scratchgpt.analysis.common import (entropy, list_checkpoints, load_model, md_table, new_figure,
                                        save_figure, show_char, softmax, tight_layout, write_csv,
                                        write_json)


def next_char_distributions(model, tokenizer, prompt, steps=3, top=7):
    """[{context, probs (V,), top [(char, p)], entropy, chosen}] for `steps` greedy steps."""
    ids = list(tokenizer.encode(prompt))
    ctx = model.cfg.context_length
    out = []
    for _ in range(steps):
        logits = model(numpy.asarray([ids[-ctx:]], dtype=numpy.int64))[0, -1]      # (V,)
        p = softmax(logits)
        order = numpy.argsort(-p)[:top]
        chosen = int(order[0])
        out.append({"context": tokenizer.decode(ids), "probs": p, "entropy": entropy(p),
                    "top": [(tokenizer.decode([int(i)]), float(p[i])) for i in order],
                    "chosen": tokenizer.decode([chosen]), "p_chosen": float(p[chosen])})
        ids.append(chosen)
    return out


def softmax_inspection(runs, prompts, out_dir, steps=3, top=7, n_show=4, focus=None, name="softmax"):
    """runs: {label: run_dir}; prompts: list of str; focus: {prompt: label} whose top-7 figure is
    drawn (default: the first model for every prompt). Writes <name>_entropy.png,
    <name>_top{top}_<k>.png per prompt, <name>.csv and <name>.json."""
    os.makedirs(out_dir, exist_ok=True)
    labels = list(runs)
    focus = {p: (focus or {}).get(p, labels[0]) for p in prompts}
    rows, entropy_curves, detail = [], {}, {}
    vocab = {}
    for label in labels:
        ckpts = list_checkpoints(runs[label])
        show = {ckpts[int(round(k))][0] for k in numpy.linspace(0, len(ckpts) - 1, min(n_show, len(ckpts)))}
        for it, path in ckpts:
            model, tok, _ = load_model(path)
            vocab[label] = tok.vocab_size
            for prompt in prompts:
                dists = next_char_distributions(model, tok, prompt, steps, top)
                entropy_curves.setdefault((label, prompt), []).append(
                    (it, float(numpy.mean([d["entropy"] for d in dists]))))
                for s, d in enumerate(dists):
                    rows.append({"model": label, "prompt": prompt, "iter": it, "step": s + 1,
                                 "chosen": d["chosen"], "p_chosen": d["p_chosen"], "entropy": d["entropy"],
                                 "prob_sum": float(d["probs"].sum()), "top_sum": sum(p for _, p in d["top"]),
                                 "top": " ".join(f"{show_char(c)}:{p:.3f}" for c, p in d["top"])})
                if label == focus[prompt] and it in show:
                    detail.setdefault(prompt, []).append((it, [{k: v for k, v in d.items() if k != "probs"}
                                                              for d in dists]))

    fig = new_figure(5 * len(labels), 3.8)
    axes = fig.subplots(1, len(labels), squeeze=False)[0]
    for ax, label in zip(axes, labels):
        for prompt in prompts:
            c = entropy_curves[(label, prompt)]
            ax.plot([x[0] for x in c], [x[1] for x in c], "o-", ms=3, label=repr(prompt))
        ax.axhline(math.log(vocab[label]), color="gray", ls="--", label=f"ln V = {math.log(vocab[label]):.2f}")
        ax.set_title(f"{label} model")
        ax.set_xlabel("iteration")
        ax.set_ylabel(f"mean entropy of {steps} next-char softmaxes (nats)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    tight_layout(fig)
    save_figure(fig, os.path.join(out_dir, f"{name}_entropy.png"))

    figures = {}
    for k, prompt in enumerate(prompts):
        d = detail.get(prompt, [])
        if not d:
            continue
        fig = new_figure(4.2 * steps, 2.3 * len(d))
        axes = fig.subplots(len(d), steps, squeeze=False)
        for r, (it, dists) in enumerate(d):
            for s, dist in enumerate(dists):
                ax = axes[r, s]
                chars = [show_char(c) for c, _ in dist["top"]][::-1]
                ax.barh(range(len(chars)), [p for _, p in dist["top"]][::-1], color="tab:purple")
                ax.set_yticks(range(len(chars)))
                ax.set_yticklabels([repr(c)[1:-1] if c != "\\n" else c for c in chars], family="monospace")
                ax.set_xlim(0, 1)
                tail = dist["context"][-14:]
                ax.set_title(f"iter {it}, step {s + 1}: …{tail!r} → {dist['chosen']!r}\n"
                             f"H = {dist['entropy']:.2f} nats", fontsize=8)
        fig.suptitle(f"top-{top} next characters, {focus[prompt]} model, prompt {prompt!r}")
        tight_layout(fig)
        figures[prompt] = f"{name}_top{top}_{k}.png"
        save_figure(fig, os.path.join(out_dir, figures[prompt]))
    write_csv(os.path.join(out_dir, f"{name}.csv"), rows)
    result = {"name": name, "prompts": prompts, "focus": focus, "steps": steps, "top": top, "rows": rows,
              "vocab_size": vocab, "figures": figures,
              "entropy_curves": [{"model": l, "prompt": p, "curve": c} for (l, p), c in entropy_curves.items()],
              "detail": {p: d for p, d in detail.items()}}
    write_json(os.path.join(out_dir, f"{name}.json"), result)
    return result


def markdown(r, fig_dir="."):
    out = [f"![entropy over training]({fig_dir}/{r['name']}_entropy.png)"]
    curves = {(c["model"], c["prompt"]): c["curve"] for c in r["entropy_curves"]}
    obs = []
    for (label, prompt), c in curves.items():
        if label == r["focus"][prompt]:
            obs.append(f"for {prompt!r} the {label} model's mean entropy went from {c[0][1]:.2f} nats at iteration "
                       f"{c[0][0]} to {c[-1][1]:.2f} at {c[-1][0]} (ln V = {math.log(r['vocab_size'][label]):.2f})")
    finals = {k: c[-1][1] for k, c in curves.items()}
    lo, hi = min(finals, key=finals.get), max(finals, key=finals.get)
    out.append("Mean entropy of the next-character distribution: " + "; ".join(obs)
               + f". At the end the most certain pairing is the {lo[0]} model on {lo[1]!r} ({finals[lo]:.2f} nats), "
               f"the least certain the {hi[0]} model on {hi[1]!r} ({finals[hi]:.2f} nats).")
    for prompt, fig in r["figures"].items():
        rows = []
        for it, dists in r["detail"][prompt]:
            for s, d in enumerate(dists):
                rows.append([it, s + 1, f"`…{d['context'][-12:]!r}` → `{d['chosen']!r}`",
                             ", ".join(f"`{c!r}` {p:.2f}" for c, p in d["top"]), f"{d['entropy']:.2f}"])
        out.append(f"**{r['focus'][prompt]} model, prompt {prompt!r}**")
        out.append(f"![top next characters]({fig_dir}/{fig})")
        out.append(md_table(["iter", "step", "context → greedy choice", f"top {r['top']} (probability)",
                             "entropy (nats)"], rows))
    return "\n\n".join(out)
