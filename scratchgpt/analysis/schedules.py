"""Analysis 11, learning-rate schedules: the same model, data and seed trained three times,
with a constant learning rate, a multistep decay (x gamma every `milestone_every` iterations)
and linear warmup + cosine decay; loss curves overlaid and one sample from each.

The seed fixes the initial weights and the batches, so the schedule is the only difference.
"""
import dataclasses
import os
import shutil

from scratchgpt.analysis.common import (brief_log, final_checkpoint, load_metrics, load_model, md_table,
                                        new_figure, save_figure, write_csv, write_json)
from scratchgpt.generate import generate_text
from scratchgpt.train import train

PROMPT = "I saw a cat jumping onto the table"


def schedule_configs(base, milestone_every=50, gamma=0.5):
    """{label: TrainConfig} for the three schedules, from one base config."""
    milestones = list(range(milestone_every, base.max_iters, milestone_every))
    return {"constant": dataclasses.replace(base, lr_schedule="constant", warmup_iters=0),
            "multistep": dataclasses.replace(base, lr_schedule="multistep", warmup_iters=0,
                                             milestones=milestones, gamma=gamma),
            "warmup+cosine": dataclasses.replace(base, lr_schedule="cosine")}


def compare_schedules(base, out_dir, tokenizer=None, prompt=PROMPT, milestone_every=50, gamma=0.5,
                      seed=0, max_new_tokens=150, temperature=0.8, progress=True, log=print, name="schedules",
                      work_dir=None):
    """Train `base` (a TrainConfig) under the three schedules into <work_dir>/<label> (default
    work_dir: <out_dir>/<name>_runs);
    write <name>.png/.csv, <name>_samples.csv and <name>.json. `tokenizer`: the vocabulary to
    train with (default: the corpus' own); the prompt must be encodable with it."""
    os.makedirs(out_dir, exist_ok=True)
    curves, samples, rows = {}, {}, []
    for label, cfg in schedule_configs(base, milestone_every, gamma).items():
        run = os.path.join(work_dir or os.path.join(out_dir, f"{name}_runs"), label.replace("+", "_"))
        shutil.rmtree(run, ignore_errors=True)             # a fresh run folder: no stale checkpoints
        log(f"training with the {label} schedule ({cfg.max_iters} iterations)")
        res = train(dataclasses.replace(cfg, out_dir=run), tokenizer=tokenizer, progress=progress,
                    log=brief_log("  "))
        m = load_metrics(run)
        curves[label] = {"rows": m, "lr": [cfg.lr_at(i) for i in range(cfg.max_iters + 1)]}
        for r in m:
            rows.append({"schedule": label, "iter": r["iter"], "train_loss": r["train_loss"],
                         "val_loss": r["val_loss"], "lr": r["lr"]})
        model, tok, _ = load_model(final_checkpoint(run))
        text = generate_text(model, tok, prompt, max_new_tokens, temperature=temperature, seed=seed)[0]
        samples[label] = {"final_val_loss": res["val_loss"], "final_train_loss": res["train_loss"],
                          "sample": text[len(prompt):]}

    fig = new_figure(9, 7)
    ax_lr, ax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1, 2.5]})
    for k, (label, c) in enumerate(curves.items()):
        color = f"C{k}"
        ax_lr.plot(range(len(c["lr"])), c["lr"], color=color, label=label)
        its = [r["iter"] for r in c["rows"]]
        ax.plot(its, [r["val_loss"] for r in c["rows"]], "o-", ms=3, color=color, label=f"{label} val")
        ax.plot(its, [r["train_loss"] for r in c["rows"]], ":", color=color, label=f"{label} train")
    ax_lr.set_ylabel("learning rate")
    ax_lr.legend(fontsize=8)
    ax_lr.grid(alpha=0.3)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8, ncol=3)
    ax.grid(alpha=0.3)
    ax.set_title(f"same model, data and seed ({base.seed}); only the learning-rate schedule differs")
    fig.tight_layout()
    save_figure(fig, os.path.join(out_dir, f"{name}.png"))
    write_csv(os.path.join(out_dir, f"{name}.csv"), rows)
    write_csv(os.path.join(out_dir, f"{name}_samples.csv"),
              [{"schedule": k, **v} for k, v in samples.items()])
    result = {"name": name, "prompt": prompt, "max_iters": base.max_iters, "lr": base.lr,
              "milestone_every": milestone_every, "gamma": gamma, "warmup_iters": base.warmup_iters,
              "min_lr": base.min_lr, "samples": samples,
              "curves": {k: c["rows"] for k, c in curves.items()}}
    write_json(os.path.join(out_dir, f"{name}.json"), result)
    return result


def markdown(r, fig_dir="."):
    s = r["samples"]
    def cell(sample):
        return f"`{r['prompt']}` + `" + sample.replace("`", "'").replace("\n", "⏎")[:120] + "`"
    rows = [[k, f"{v['final_train_loss']:.3f}", f"{v['final_val_loss']:.3f}", cell(v["sample"])] for k, v in s.items()]
    best = min(s, key=lambda k: s[k]["final_val_loss"])
    worst = max(s, key=lambda k: s[k]["final_val_loss"])
    # the loss at the midpoint shows which schedule learns faster early on
    mid = {k: min(c, key=lambda x: abs(x["iter"] - r["max_iters"] // 2)) for k, c in r["curves"].items()}
    fast = min(mid, key=lambda k: mid[k]["val_loss"])
    obs = (f"Settings: peak lr {r['lr']:g}; multistep multiplies it by {r['gamma']} every {r['milestone_every']} "
           f"iterations; warmup+cosine warms up over {r['warmup_iters']} iterations and decays to {r['min_lr']:g}. "
           f"After {r['max_iters']} iterations {best} reaches the lowest val loss "
           f"({s[best]['final_val_loss']:.3f}) and {worst} the highest ({s[worst]['final_val_loss']:.3f}), a spread of "
           f"{s[worst]['final_val_loss'] - s[best]['final_val_loss']:.3f}; halfway (iteration {mid[fast]['iter']}) "
           f"{fast} was ahead with {mid[fast]['val_loss']:.3f}.")
    return "\n\n".join([f"![learning-rate schedules]({fig_dir}/{r['name']}.png)",
                        md_table(["schedule", "final train loss", "final val loss",
                                  "sample (prompt + continuation)"], rows),
                        obs])
