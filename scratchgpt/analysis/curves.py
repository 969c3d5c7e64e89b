"""Analysis 5, loss curves: train and validation loss against iteration from metrics.jsonl,
and the validation loss recomputed from every saved checkpoint.

The loss logged at iteration `it` is `estimate_loss(model, corpus, cfg, it)`, whose batches
come from a generator seeded by (seed, it, split). Recomputing it from checkpoints/iter_N.npz
with the run's own config therefore has to give the same number up to float rounding: a
check that the checkpoint really holds the model that was evaluated.
"""
import os

from scratchgpt.analysis.common import (fmt, list_checkpoints, load_metrics, load_model, md_table,
                                        new_figure, run_config, run_corpus, save_figure, write_csv,
                                        write_json)
from scratchgpt.train import estimate_loss


def loss_curves(run_dir, out_dir, name="curves", recompute=True):
    """Plot <name>.png, write <name>.csv / .json; returns {rows, max_abs_diff_val, ...}."""
    os.makedirs(out_dir, exist_ok=True)
    metrics = {r["iter"]: r for r in load_metrics(run_dir)}
    rows = [{"iter": it, "train_loss": r["train_loss"], "val_loss": r["val_loss"], "lr": r["lr"],
             "recomputed_train_loss": None, "recomputed_val_loss": None, "abs_diff_val": None}
            for it, r in sorted(metrics.items())]
    by_iter = {r["iter"]: r for r in rows}
    if recompute:
        cfg = run_config(run_dir)
        corpus = None
        for it, path in list_checkpoints(run_dir):
            model, tok, _ = load_model(path)
            if corpus is None:
                corpus = run_corpus(run_dir, tok, cfg)
            losses = estimate_loss(model, corpus, cfg, it)
            row = by_iter.get(it)
            if row is None:                       # a checkpoint without a log line (should not happen)
                row = {"iter": it, "train_loss": None, "val_loss": None, "lr": None}
                rows.append(row)
                by_iter[it] = row
            row["recomputed_train_loss"] = losses["train"]
            row["recomputed_val_loss"] = losses["val"]
            if row["val_loss"] is not None:
                row["abs_diff_val"] = abs(losses["val"] - row["val_loss"])
                row["abs_diff_train"] = abs(losses["train"] - row["train_loss"])
        rows.sort(key=lambda r: r["iter"])
    diffs = [r["abs_diff_val"] for r in rows if r.get("abs_diff_val") is not None]
    tdiffs = [r["abs_diff_train"] for r in rows if r.get("abs_diff_train") is not None]

    fig = new_figure(9, 6)
    ax, ax_lr = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    its = [r["iter"] for r in rows if r["val_loss"] is not None]
    ax.plot(its, [r["train_loss"] for r in rows if r["val_loss"] is not None], "o-", ms=3, label="train (logged)")
    ax.plot(its, [r["val_loss"] for r in rows if r["val_loss"] is not None], "o-", ms=3, label="val (logged)")
    rec = [(r["iter"], r["recomputed_val_loss"]) for r in rows if r["recomputed_val_loss"] is not None]
    if rec:
        ax.plot(*zip(*rec), "x", color="black", ms=8, label="val recomputed from checkpoints")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(f"{os.path.basename(os.path.normpath(run_dir))}: loss over training"
                 + (f" (max |recomputed - logged| = {max(diffs):.1e})" if diffs else ""))
    ax.legend()
    ax.grid(alpha=0.3)
    ax_lr.plot(its, [r["lr"] for r in rows if r["val_loss"] is not None], color="gray")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("iteration")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, os.path.join(out_dir, f"{name}.png"))
    write_csv(os.path.join(out_dir, f"{name}.csv"), rows,
              ["iter", "train_loss", "val_loss", "lr", "recomputed_train_loss", "recomputed_val_loss",
               "abs_diff_val", "abs_diff_train"])
    logged = [r for r in rows if r["val_loss"] is not None]
    result = {"run": run_dir, "name": name, "rows": rows,
              "max_abs_diff_val": max(diffs) if diffs else None,
              "max_abs_diff_train": max(tdiffs) if tdiffs else None,
              "first": logged[0] if logged else None, "last": logged[-1] if logged else None,
              "best_val": min(logged, key=lambda r: r["val_loss"]) if logged else None}
    write_json(os.path.join(out_dir, f"{name}.json"), result)
    return result


def markdown(results, fig_dir="."):
    """results: {label: loss_curves(...) result}."""
    parts, rows = [], []
    for label, r in results.items():
        parts.append(f"![loss curves, {label}]({fig_dir}/{r['name']}.png)")
        f, l, b = r["first"], r["last"], r["best_val"]
        rows.append([label, f["iter"], fmt(f["val_loss"]), l["iter"], fmt(l["train_loss"]), fmt(l["val_loss"]),
                     f"{b['val_loss']:.3f} @ {b['iter']}",
                     f"{r['max_abs_diff_val']:.1e}" if r["max_abs_diff_val"] is not None else "n/a"])
    table = md_table(["model", "first iter", "val loss", "last iter", "train loss", "val loss",
                      "best val", "max abs diff (recomputed vs logged)"], rows)
    obs = []
    for label, r in results.items():
        f, l = r["first"], r["last"]
        gap = l["val_loss"] - l["train_loss"]
        n_rec = sum(x["recomputed_val_loss"] is not None for x in r["rows"])
        obs.append(f"{label}: val loss fell from {f['val_loss']:.3f} to {l['val_loss']:.3f} nats/char "
                   f"({(1 - l['val_loss'] / f['val_loss']) * 100:.0f}% lower) in {l['iter']} iterations; "
                   f"at the end val is {abs(gap):.3f} {'above' if gap >= 0 else 'below'} train"
                   + (f"; recomputing the val loss from the {n_rec} "
                      f"checkpoints agrees with the log to {r['max_abs_diff_val']:.1e}"
                      if r["max_abs_diff_val"] is not None else "") + ".")
    return "\n\n".join(parts + [table, " ".join(obs)])
