"""Analysis 10, weight distributions before and after training: histograms per layer and per
attention head (init overlaid on trained), and per tensor: mean, std, excess kurtosis, max|w|,
the share of weights beyond 3 standard deviations and the relative change
||W_trained - W_init|| / ||W_init||.

Heads: c_attn.weight is (C, 3C) with q = [:, 0:C], k = [:, C:2C], v = [:, 2C:3C]; head h owns
columns h*hd:(h+1)*hd of each (hd = C / n_heads). The rows of c_proj.weight (C, C) that head h
writes through are h*hd:(h+1)*hd.

A Gaussian has excess kurtosis 0 and 0.27% of its values beyond 3 std; training typically
grows heavier tails (a few large weights), which these two columns show.
"""
import math
import os

import numpy
from matplotlib.ticker import LogLocator, MaxNLocator, NullLocator

from scratchgpt.analysis.common import (final_checkpoint, list_checkpoints, load_model, md_table,
                                        new_figure, save_figure, tight_layout, write_csv, write_json)

COLUMNS = ["tensor", "group", "shape", "n", "init_mean", "init_std", "mean", "std", "kurtosis",
           "max_abs", "beyond_3std", "init_kurtosis", "init_beyond_3std", "abs_change", "rel_change"]


def tensor_stats(w, w0):
    w = numpy.asarray(w, dtype=numpy.float64).ravel()
    w0 = numpy.asarray(w0, dtype=numpy.float64).ravel()

    def moments(x):
        m, s = float(x.mean()), float(x.std())
        kurt = float(((x - m) ** 4).mean() / s ** 4 - 3.0) if s > 0 else float("nan")
        beyond = float((numpy.abs(x - m) > 3 * s).mean()) if s > 0 else 0.0
        return m, s, kurt, beyond
    m, s, k, b = moments(w)
    m0, s0, k0, b0 = moments(w0)
    diff = float(numpy.linalg.norm(w - w0))
    n0 = float(numpy.linalg.norm(w0))
    return {"n": w.size, "init_mean": m0, "init_std": s0, "mean": m, "std": s, "kurtosis": k,
            "max_abs": float(numpy.abs(w).max()), "beyond_3std": b, "init_kurtosis": k0, "init_beyond_3std": b0,
            "abs_change": diff, "rel_change": diff / n0 if n0 > 0 else float("nan")}


def head_slices(cfg, layer):
    """{label: (tensor name, column/row selector)} for every head's q, k, v and c_proj slices."""
    C, H = cfg.emb_dim, cfg.n_heads
    hd = C // H
    name = f"transformer.h.{layer}.attn."
    out = {}
    for h in range(H):
        for j, part in enumerate("qkv"):
            cols = slice(j * C + h * hd, j * C + (h + 1) * hd)
            out[f"h{layer}.head{h}.{part}"] = (name + "c_attn.weight", (slice(None), cols))
        out[f"h{layer}.head{h}.c_proj"] = (name + "c_proj.weight", (slice(h * hd, (h + 1) * hd), slice(None)))
    return out


def _group(name):
    if ".attn." in name:
        return "attention"
    if ".mlp." in name:
        return "mlp"
    if "ln_" in name:
        return "layernorm"
    if "wte" in name or "wpe" in name:
        return "embedding"
    return "head"


def overlaid_hist(ax, after, before, title, bins=60, labels=("after", "before")):
    """`after` (filled) over `before` (black outline) on shared bins, log counts: how a weight
    tensor's distribution moved in training."""
    after = numpy.asarray(after, dtype=numpy.float64).ravel()
    before = numpy.asarray(before, dtype=numpy.float64).ravel()
    lo, hi = min(after.min(), before.min()), max(after.max(), before.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = numpy.linspace(lo, hi, bins + 1)
    ax.hist(after, edges, histtype="stepfilled", color="tab:blue", alpha=0.7, label=labels[0])
    ax.hist(before, edges, histtype="step", color="black", lw=1, label=labels[1])
    ax.set_title(title, fontsize=8)
    ax.tick_params(labelsize=6)
    ax.set_yscale("log")
    # few ticks: matplotlib's default log locators make laying out dozens of panels very slow
    ax.yaxis.set_major_locator(LogLocator(numticks=4))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_locator(MaxNLocator(4))


def weight_distributions(run_dir, out_dir, init=None, trained=None, name="weights", bins=60):
    """Compare `init` (default: the run's iter_000000 checkpoint) with `trained` (default: its
    last checkpoint); both may be checkpoint paths or GPTModels. Writes <name>.csv (per tensor),
    <name>_heads.csv (per head), <name>_layers.png, <name>_heads.png, <name>_final.png, <name>.json."""
    os.makedirs(out_dir, exist_ok=True)
    ckpts = list_checkpoints(run_dir)
    if init is None:
        init = ckpts[0][1]
        if ckpts[0][0] != 0:
            raise ValueError(f"{run_dir} has no iter_000000 checkpoint; pass init=GPTModel(cfg, seed)")
    if trained is None:
        trained = final_checkpoint(run_dir)
    m0 = load_model(init)[0] if isinstance(init, str) else init
    m1, _, it = load_model(trained) if isinstance(trained, str) else (trained, None, None)
    cfg = m1.cfg
    P0, P1 = m0.state_dict(), m1.state_dict()
    rows = []
    for k in P1:
        rows.append({"tensor": k, "group": _group(k), "shape": "x".join(map(str, P1[k].shape)),
                     **tensor_stats(P1[k], P0[k])})
    head_rows = []
    for layer in range(cfg.n_layers):
        for label, (k, sel) in head_slices(cfg, layer).items():
            head_rows.append({"tensor": label, "group": "head", "shape": "x".join(map(str, P1[k][sel].shape)),
                              **tensor_stats(P1[k][sel], P0[k][sel])})
    write_csv(os.path.join(out_dir, f"{name}.csv"), rows, COLUMNS)
    write_csv(os.path.join(out_dir, f"{name}_heads.csv"), head_rows, COLUMNS)

    # per layer: attention q/k/v/c_proj and the MLP's c_fc/c_proj
    parts = [("q", lambda p, l, C: p[f"transformer.h.{l}.attn.c_attn.weight"][:, :C]),
             ("k", lambda p, l, C: p[f"transformer.h.{l}.attn.c_attn.weight"][:, C:2 * C]),
             ("v", lambda p, l, C: p[f"transformer.h.{l}.attn.c_attn.weight"][:, 2 * C:]),
             ("attn.c_proj", lambda p, l, C: p[f"transformer.h.{l}.attn.c_proj.weight"]),
             ("mlp.c_fc", lambda p, l, C: p[f"transformer.h.{l}.mlp.c_fc.weight"]),
             ("mlp.c_proj", lambda p, l, C: p[f"transformer.h.{l}.mlp.c_proj.weight"])]
    C = cfg.emb_dim
    fig = new_figure(2.6 * len(parts), 2.0 * cfg.n_layers + 0.6)
    axes = fig.subplots(cfg.n_layers, len(parts), squeeze=False)
    for l in range(cfg.n_layers):
        for j, (label, get) in enumerate(parts):
            overlaid_hist(axes[l, j], get(P1, l, C), get(P0, l, C), f"block {l} {label}", bins,
                          labels=("trained", "init"))
    axes[0, 0].legend(fontsize=6)
    fig.suptitle(f"weights per layer: trained (iter {it}, filled) over init (black outline), log counts")
    tight_layout(fig)
    save_figure(fig, os.path.join(out_dir, f"{name}_layers.png"))

    # per head: q, k, v, c_proj slices
    H = cfg.n_heads
    fig = new_figure(2.4 * 4, 1.8 * cfg.n_layers * H + 0.6)
    axes = fig.subplots(cfg.n_layers * H, 4, squeeze=False)
    for l in range(cfg.n_layers):
        for label, (k, sel) in head_slices(cfg, l).items():
            h = int(label.split(".head")[1].split(".")[0])
            j = ["q", "k", "v", "c_proj"].index(label.rsplit(".", 1)[1])
            overlaid_hist(axes[l * H + h, j], P1[k][sel], P0[k][sel], f"block {l} head {h} {label.rsplit('.', 1)[1]}",
                          bins, labels=("trained", "init"))
    fig.suptitle("weights per attention head: trained (filled) over init (outline)")
    tight_layout(fig)
    save_figure(fig, os.path.join(out_dir, f"{name}_heads.png"))

    # embeddings and the final layer (ln_f; the head is wte when tied)
    fin = ["transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight", "transformer.ln_f.bias"]
    if "lm_head.weight" in P1:
        fin.append("lm_head.weight")
    fig = new_figure(2.8 * len(fin), 2.6)
    axes = fig.subplots(1, len(fin), squeeze=False)[0]
    for ax, k in zip(axes, fin):
        overlaid_hist(ax, P1[k], P0[k], k.replace("transformer.", "") + (" (= head, tied)" if k.endswith("wte.weight")
                                                                           and cfg.tie_weights else ""),
                      bins, labels=("trained", "init"))
    tight_layout(fig)
    save_figure(fig, os.path.join(out_dir, f"{name}_final.png"))
    result = {"name": name, "iter": it, "rows": rows, "head_rows": head_rows}
    write_json(os.path.join(out_dir, f"{name}.json"), result)
    return result


def markdown(r, fig_dir="."):
    def pct(x):
        return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}%"
    rows = [[x["tensor"].replace("transformer.", ""), x["shape"], f"{x['init_std']:.4f}", f"{x['std']:.4f}",
             "n/a" if math.isnan(x["kurtosis"]) else f"{x['kurtosis']:.2f}", f"{x['max_abs']:.3f}",
             pct(x["beyond_3std"]), "n/a" if math.isnan(x["rel_change"]) else f"{x['rel_change']:.2f}"]
            for x in r["rows"]]
    mats = [x for x in r["rows"] if x["shape"].count("x") == 1 and not math.isnan(x["rel_change"])]
    most = max(mats, key=lambda x: x["rel_change"])
    least = min(mats, key=lambda x: x["rel_change"])
    kurt = [x for x in mats if not math.isnan(x["kurtosis"])]
    heavy = max(kurt, key=lambda x: x["kurtosis"])
    heads = [x for x in r["head_rows"] if not math.isnan(x["rel_change"])]
    hmost = max(heads, key=lambda x: x["rel_change"])
    hleast = min(heads, key=lambda x: x["rel_change"])
    obs = (f"By iteration {r['iter']} the weight matrix that moved most from its initial values is "
           f"{most['tensor']} (relative change {most['rel_change']:.2f}), the one that moved least "
           f"{least['tensor']} ({least['rel_change']:.2f}). The heaviest tails are in {heavy['tensor']}: excess "
           f"kurtosis {heavy['kurtosis']:.2f} (init {heavy['init_kurtosis']:.2f}) and "
           f"{100 * heavy['beyond_3std']:.2f}% of its weights beyond 3 std (a Gaussian has 0.27%). Among the "
           f"attention heads' slices, {hmost['tensor']} changed most ({hmost['rel_change']:.2f}) and "
           f"{hleast['tensor']} least ({hleast['rel_change']:.2f}).")
    return "\n\n".join([
        f"![weights per layer]({fig_dir}/{r['name']}_layers.png)",
        f"![weights per head]({fig_dir}/{r['name']}_heads.png)",
        f"![embeddings and final layer]({fig_dir}/{r['name']}_final.png)",
        md_table(["tensor", "shape", "init std", "std", "excess kurtosis", "max abs", "beyond 3 std",
                  "relative change"], rows),
        obs])
