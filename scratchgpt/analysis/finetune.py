"""Analysis 7, few-shot fine-tuning and forgetting: model A, trained on corpus A, trained a
few hundred more iterations on corpus B (starting from A's weights, with a fresh AdamW).
The loss on B shows how fast it adapts; the loss on A, how much it forgets. Each pair is run
twice: from A's final checkpoint and from an earlier one, to see whether a less trained
model adapts faster or forgets less.

Every fine-tuning run is an ordinary `scratchgpt train --init-from` run folder; its saved
checkpoints are then scored on both corpora with `evaluate_loss` over the same fixed
validation windows, so the curves are smooth and comparable across runs.
"""
import dataclasses
import os
import shutil

from scratchgpt.analysis.common import (brief_log, list_checkpoints, load_model, md_table, new_figure,
                                        run_config, save_figure, tight_layout, write_csv, write_json)
from scratchgpt.evaluate import evaluate_loss
from scratchgpt.train import LATEST, load_corpus, train


def _init_folder(run_dir, it, path, work_dir, label):
    """A folder whose ckpt_latest.npz is checkpoint `path`, for train(init_from=...)."""
    folder = os.path.join(work_dir, f"init_{label}_iter{it}")
    os.makedirs(folder, exist_ok=True)
    shutil.copyfile(path, os.path.join(folder, LATEST))
    return folder


def finetune_pairs(runs, out_dir, iters=200, eval_interval=50, lr=3e-4, early_iter=None, batch_size=16,
                   eval_batches=10, progress=True, log=print, name="finetune", work_dir=None):
    """runs: {label: run_dir}. For every ordered pair A != B and both starting points (A's final
    checkpoint and `early_iter`, default the checkpoint closest to a quarter of A's training),
    fine-tune on B for `iters` iterations at constant `lr`; score every saved checkpoint on the
    validation splits of A and of B. Writes <name>.png/.csv/.json; the runs go under `work_dir`
    (default <out_dir>/<name>_runs/)."""
    os.makedirs(out_dir, exist_ok=True)
    work = work_dir or os.path.join(out_dir, f"{name}_runs")
    labels = list(runs)
    cfgs = {k: run_config(v) for k, v in runs.items()}
    rows, curves, starts = [], {}, {}
    for a in labels:
        ckpts = list_checkpoints(runs[a])
        final_it, final_path = ckpts[-1]
        target = early_iter if early_iter is not None else final_it // 4
        early_it, early_path = min(ckpts[:-1] or ckpts, key=lambda c: abs(c[0] - target))
        starts[a] = {"final": (final_it, final_path), "early": (early_it, early_path)}
        tok = load_model(final_path)[1]
        for b in labels:
            if b == a:
                continue
            try:
                corpus_a, corpus_b = load_corpus(cfgs[a], tok), load_corpus(cfgs[b], tok)
            except ValueError as e:
                log(f"skipping {a} -> {b}: {e}")
                continue
            for start, (sit, spath) in starts[a].items():
                init = _init_folder(runs[a], sit, spath, work, a)
                out = os.path.join(work, f"{a}_to_{b}_from_{start}")
                shutil.rmtree(out, ignore_errors=True)          # a fresh run folder: no stale checkpoints
                log(f"fine-tuning {a} (iteration {sit}, {start}) on {b} for {iters} iterations")
                cfg = dataclasses.replace(cfgs[b], out_dir=out, init_from=init, max_iters=iters,
                                          eval_interval=eval_interval, eval_iters=2, lr=lr,
                                          lr_schedule="constant", warmup_iters=0, sample_tokens=20,
                                          batch_size=batch_size)
                train(cfg, progress=progress, log=brief_log("  "))
                curve = []
                for it, path in list_checkpoints(out):
                    model = load_model(path)[0]
                    lb = evaluate_loss(model, corpus_b.val, 16, eval_batches)
                    la = evaluate_loss(model, corpus_a.val, 16, eval_batches)
                    curve.append((it, lb, la))
                    rows.append({"source": a, "target": b, "start": start, "start_iter": sit, "iter": it,
                                 "loss_on_target": lb, "loss_on_source": la})
                curves[(a, b, start)] = curve

    pairs = [(a, b) for a in labels for b in labels if a != b and (a, b, "final") in curves]
    ncol = min(3, max(1, len(pairs)))
    nrow = -(-len(pairs) // ncol) if pairs else 1
    fig = new_figure(5 * ncol, 3.6 * nrow)
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    for ax, (a, b) in zip(axes, pairs):
        for start, ls in (("final", "-"), ("early", "--")):
            c = curves.get((a, b, start))
            if not c:
                continue
            its = [x[0] for x in c]
            sit = starts[a][start][0]
            ax.plot(its, [x[1] for x in c], ls, color="tab:blue", marker="o", ms=3,
                    label=f"on {b} (target), from iter {sit}")
            ax.plot(its, [x[2] for x in c], ls, color="tab:red", marker="o", ms=3,
                    label=f"on {a} (source), from iter {sit}")
        ax.set_title(f"{a} → {b}")
        ax.set_xlabel("fine-tuning iteration")
        ax.set_ylabel("val loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[len(pairs):]:
        ax.axis("off")
    fig.suptitle("fine-tuning A on B: adapting (blue) and forgetting (red); "
                 "solid = from the final model, dashed = from an earlier checkpoint")
    tight_layout(fig)
    save_figure(fig, os.path.join(out_dir, f"{name}.png"))
    write_csv(os.path.join(out_dir, f"{name}.csv"), rows)
    summary = []
    for (a, b, start), c in curves.items():
        summary.append({"source": a, "target": b, "start": start, "start_iter": starts[a][start][0],
                        "target_before": c[0][1], "target_after": c[-1][1],
                        "source_before": c[0][2], "source_after": c[-1][2],
                        "adapted": c[0][1] - c[-1][1], "forgot": c[-1][2] - c[0][2]})
    result = {"name": name, "iters": iters, "lr": lr, "rows": rows, "summary": summary}
    write_json(os.path.join(out_dir, f"{name}.json"), result)
    return result


def markdown(r, fig_dir="."):
    s = r["summary"]
    rows = [[f"{x['source']} → {x['target']}", f"{x['start']} ({x['start_iter']})",
             f"{x['target_before']:.3f} → {x['target_after']:.3f}",
             f"{x['source_before']:.3f} → {x['source_after']:.3f}", f"{x['forgot']:+.3f}"] for x in s]
    out = [f"![fine-tuning]({fig_dir}/{r['name']}.png)",
           md_table(["pair", "start (iteration)", "loss on target B", "loss on source A", "forgetting on A"], rows)]
    if s:
        fin = [x for x in s if x["start"] == "final"]
        ear = [x for x in s if x["start"] == "early"]
        most = max(s, key=lambda x: x["forgot"])
        fast = max(s, key=lambda x: x["adapted"])
        def mean(xs, k):
            return sum(x[k] for x in xs) / len(xs) if xs else float("nan")
        out.append(
            f"After {r['iters']} iterations at lr {r['lr']:g}, the loss on the new corpus fell by "
            f"{mean(fin, 'adapted'):.3f} nats/char on average from the final models and "
            f"{mean(ear, 'adapted'):.3f} from the earlier checkpoints, while the loss on the original corpus "
            f"changed by {mean(fin, 'forgot'):+.3f} (final) and {mean(ear, 'forgot'):+.3f} (earlier). The largest "
            f"drop on the target is {fast['source']} → {fast['target']} from the {fast['start']} checkpoint "
            f"({fast['adapted']:.3f}); the most forgetting is {most['source']} → {most['target']} from the "
            f"{most['start']} checkpoint ({most['forgot']:+.3f}).")
    return "\n\n".join(out)
