"""`scratchgpt lab weights`: GPT-2's weights before and after training, drawn as a student study
draws them.

    scratchgpt lab weights --gpt2-dir gpt2                     # OpenAI's weights (a Hugging Face folder)
    scratchgpt lab weights --out-dir out/shakespeare-char      # or one of our runs
    scratchgpt lab weights --gpt2-dir gpt2 --blocks 5-11 --report-dir out/gpt2-weights

The study labels its figures with Hugging Face's module names: "H5" to "H11" are the blocks
transformer.h.5 to transformer.h.11, "L1" and "L2" each block's ln_1 and ln_2, "FL" the final
ln_f. "Before" is a fresh GPT-2 initialisation of the same config (our init is GPT-2's: N(0, 0.02),
residual projections N(0, 0.02 / sqrt(2 n_layers)), zero biases, LayerNorm weights 1); for one
of our runs it is the run's own iteration-0 checkpoint when it kept one. "After" is the loaded
weights. It writes into --report-dir:

    report.md                 figures, the statistics tables, observations computed from the numbers
    study_layernorms.png      the study's figures: L1 and L2 (weight, bias) of every chosen block, and FL
    block_<i>.png             every other tensor of block i (q, k, v, projections, MLP; weights and biases)
    block_<i>_heads.png       block i's q, k, v and c_proj slices, one row per attention head
    summary.png               per block: the RMS change of each tensor, the layer norms' share beyond 3 std
    tensors.csv, heads.csv    the statistics (weights.json holds both)

Statistics per tensor (and per head slice): std, excess kurtosis (0 for a Gaussian), the share of
values beyond 3 std of their mean (0.27% for a Gaussian), and the relative change
||after - before|| / ||before|| (for a tensor that starts at zero, the biases, the RMS change instead).
"""
import math
import os

import numpy
from matplotlib.ticker import MaxNLocator

from scratchgpt.analysis.common import (md_table, new_figure, save_figure, tight_layout, use_numpy_backend,
                                        write_csv, write_json)
from scratchgpt.analysis.weights import head_slices, overlaid_hist, tensor_stats

GAUSSIAN_BEYOND_3STD = 0.0027          # P(|x - mean| > 3 std) for a normal distribution
TAIL_Z = 6.0                           # excess kurtosis in standard errors (sqrt(24/n)) for "heavy tails"
TIE = 0.05                             # L1 and L2 changes closer than 5% count as equal
MEAN_Z = 4.5                           # a mean's z-score beyond which it is "not centred"
STUDY_BLOCKS = 7                       # the study's H5..H11: the last seven of GPT-2 small's twelve
BLOCK_TENSORS = [                      # (short name, tensor name inside the block, column slice of c_attn)
    ("L1 weight", "ln_1.weight", None), ("L1 bias", "ln_1.bias", None),
    ("q weight", "attn.c_attn.weight", 0), ("k weight", "attn.c_attn.weight", 1),
    ("v weight", "attn.c_attn.weight", 2), ("qkv bias", "attn.c_attn.bias", None),
    ("attn proj weight", "attn.c_proj.weight", None), ("attn proj bias", "attn.c_proj.bias", None),
    ("L2 weight", "ln_2.weight", None), ("L2 bias", "ln_2.bias", None),
    ("mlp fc weight", "mlp.c_fc.weight", None), ("mlp fc bias", "mlp.c_fc.bias", None),
    ("mlp proj weight", "mlp.c_proj.weight", None), ("mlp proj bias", "mlp.c_proj.bias", None)]
COLUMNS = ["label", "tensor", "block", "kind", "shape", "n", "before_std", "std", "before_kurtosis", "kurtosis",
           "before_beyond_3std", "beyond_3std", "before_mean", "mean", "max_abs", "rel_change", "rms_change"]


# ---- which blocks, which weights -------------------------------------------------------------
def parse_blocks(spec, n_layers):
    """"5-11" or "0,3,8-9" -> sorted block indices; None -> the last seven blocks (5-11 of 12)."""
    if spec is None:
        return list(range(max(0, n_layers - STUDY_BLOCKS), n_layers))
    blocks = set()
    for part in str(spec).split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            first, last = int(lo), int(hi or lo)
        except ValueError:
            raise ValueError(f"--blocks takes numbers and ranges such as 5-11 or 0,3,8-9, got {spec!r}") from None
        if first > last:
            raise ValueError(f"--blocks range {part.strip()!r} runs backwards; write {last}-{first}")
        for b in (first, last):
            if not 0 <= b < n_layers:
                raise ValueError(f"block {b} is outside the model's {n_layers} blocks (0-{n_layers - 1})")
        blocks.update(range(first, last + 1))
    return sorted(blocks)


def load_before_after(gpt2_dir=None, out_dir=None, seed=0):
    """(before, after, what): two GPTModels of the same config and a one-line description."""
    import scratchgpt as sg
    if gpt2_dir:
        after = sg.load_gpt2(gpt2_dir)
        return sg.GPTModel(after.cfg, seed=seed), after, f"GPT-2 weights from {gpt2_dir}"
    from scratchgpt.analysis.common import list_checkpoints, load_model
    from scratchgpt.lora import merge_lora
    path = out_dir if out_dir.endswith(".npz") else os.path.join(out_dir, "ckpt_latest.npz")
    after, _, it = load_model(path)
    if not isinstance(after, sg.GPTModel):
        raise ValueError(f"lab weights reads GPT-2 models; {path} holds a {type(after).__name__}")
    after = merge_lora(after)                    # a LoRA run's weights are W + (alpha / r) A B
    try:
        first_it, first = list_checkpoints(out_dir)[0]
    except (FileNotFoundError, NotADirectoryError):
        first_it = None
    if first_it == 0:
        return load_model(first)[0], after, f"the run {out_dir} at iteration {it} against its iteration 0"
    return (sg.GPTModel(after.cfg, seed=seed), after,
            f"the run {out_dir} at iteration {it} against a fresh init (seed {seed})")


def block_tensors(P, cfg, block):
    """[(short name, tensor name, array)] of one block, q/k/v split out of the fused c_attn."""
    C, out = cfg.emb_dim, []
    for short, name, part in BLOCK_TENSORS:
        full = f"transformer.h.{block}.{name}"
        if full not in P:                        # c_attn.bias when qkv_bias=False
            continue
        a = P[full] if part is None else P[full][:, part * C:(part + 1) * C]
        out.append((short, full + ("" if part is None else f"[{'qkv'[part]}]"), a))
    return out


def backend_numpy(a):
    from scratchgpt import backend
    return backend.to_numpy(a)


def _kind(short):
    return "layernorm" if short.startswith("L") else "bias" if short.endswith("bias") else "weight"


def _stats(label, tensor, block, short, a, a0):
    s = tensor_stats(backend_numpy(a), backend_numpy(a0))
    starts_at_zero = s["init_std"] == 0 and s["init_mean"] == 0
    return {"label": label, "tensor": tensor, "block": block, "kind": _kind(short),
            "shape": "x".join(map(str, a.shape)), "n": s["n"], "before_std": s["init_std"], "std": s["std"],
            "before_kurtosis": s["init_kurtosis"], "kurtosis": s["kurtosis"],
            "before_beyond_3std": s["init_beyond_3std"], "beyond_3std": s["beyond_3std"],
            "before_mean": s["init_mean"], "mean": s["mean"],
            "max_abs": s["max_abs"], "rel_change": float("nan") if starts_at_zero else s["rel_change"],
            "rms_change": s["abs_change"] / math.sqrt(s["n"])}


def weight_statistics(before, after, blocks):
    """(rows per tensor, rows per head slice) for the chosen blocks and the final ln_f."""
    P0, P1, cfg = before.state_dict(), after.state_dict(), after.cfg
    rows = []
    for b in blocks:
        for (short, tensor, a), (_, _, a0) in zip(block_tensors(P1, cfg, b), block_tensors(P0, cfg, b)):
            rows.append(_stats(f"H{b} {short}", tensor, b, short, a, a0))
    for part in ("weight", "bias"):
        k = f"transformer.ln_f.{part}"
        rows.append(_stats(f"FL {part}", k, None, "L", P1[k], P0[k]))
    head_rows = []
    for b in blocks:
        for label, (k, sel) in head_slices(cfg, b).items():
            head, part = label.split(".")[1:]
            head_rows.append(_stats(f"H{b} {head} {part}", k, b, "weight", P1[k][sel], P0[k][sel]))
    return rows, head_rows


# ---- what the numbers say ------------------------------------------------------------------
def _pct(x):
    return f"{100 * x:.2f}%"


def observations(rows, head_rows):
    """Sentences read off the statistics: initialisation balance, outliers in the layer norms,
    whether the L2s changed more than the L1s, and which weights and heads moved most."""
    obs = []
    mats = [r for r in rows if r["kind"] == "weight"]
    if mats:
        s0, s1 = [r["before_std"] for r in mats], [r["std"] for r in mats]
        k0 = [r["before_kurtosis"] for r in mats]
        # is a mean more than sampling noise away from zero? z = |mean| / (std / sqrt(n)) is ~ N(0, 1)
        # for a centred tensor; MEAN_Z (4.5) leaves room for the largest of a few hundred such draws
        z0 = max(abs(r["before_mean"]) / r["before_std"] * math.sqrt(r["n"]) for r in mats)
        z1 = max(abs(r["mean"]) / r["std"] * math.sqrt(r["n"]) for r in mats)
        heavy = max(mats, key=lambda r: r["kurtosis"])
        obs.append(
            f"**Initialisation balance.** Before training the weight matrices have std {min(s0):.4f} to "
            f"{max(s0):.4f} (GPT-2's init: 0.02, and 0.02/sqrt(2 n_layers) for the residual projections), "
            f"excess kurtosis {min(k0):.2f} to {max(k0):.2f} (a Gaussian: 0), and means "
            f"{'within sampling noise of zero' if z0 < MEAN_Z else 'away from zero'} (largest z {z0:.1f}): "
            f"{'balanced' if z0 < MEAN_Z else 'not balanced'}. After training their stds span {min(s1):.4f} to "
            f"{max(s1):.4f}, the means are {'still centred' if z1 < MEAN_Z else 'no longer centred'} "
            f"(largest z {z1:.1f}), and the heaviest tails are in "
            f"{heavy['label']} (excess kurtosis {heavy['kurtosis']:.2f}, {_pct(heavy['beyond_3std'])} beyond 3 std).")
    # heavy tails: an excess kurtosis more than TAIL_Z standard errors (sqrt(24 / n)) above a Gaussian's 0
    # (the sampling distribution is skewed to the right, so 4 would still flag a few Gaussian tensors)
    lns = [r for r in rows if r["kind"] == "layernorm" and not math.isnan(r["kurtosis"])]
    outliers = [r for r in lns if r["kurtosis"] > TAIL_Z * math.sqrt(24 / r["n"])]
    if lns:
        if outliers:
            top = max(outliers, key=lambda r: r["kurtosis"])
            obs.append(
                f"**Outliers in the layer norms.** {len(outliers)} of {len(lns)} layer-norm tensors have heavier "
                f"tails than a Gaussian sample of their size would (excess kurtosis above {TAIL_Z}·sqrt(24/n), "
                f"{TAIL_Z * math.sqrt(24 / top['n']):.2f} for {top['n']} values); the heaviest is {top['label']}: "
                f"excess kurtosis {top['kurtosis']:.2f}, {_pct(top['beyond_3std'])} of its values beyond 3 std "
                f"(a Gaussian: {_pct(GAUSSIAN_BEYOND_3STD)}), largest |value| {top['max_abs']:.3f} around a mean "
                f"of {top['mean']:.3f}.")
        else:
            obs.append(f"**Outliers in the layer norms.** None of the {len(lns)} layer-norm tensors has heavier "
                       f"tails than a Gaussian sample of its size would (excess kurtosis above {TAIL_Z}·sqrt(24/n)): "
                       "no outliers.")
    by_label = {r["label"]: r for r in rows}
    blocks = sorted({r["block"] for r in rows if r["block"] is not None})
    pairs = [(by_label[f"H{b} L1 weight"], by_label[f"H{b} L2 weight"]) for b in blocks]
    if pairs:
        more = sum(l2["rms_change"] > l1["rms_change"] for l1, l2 in pairs)
        m1 = float(numpy.mean([l1["rms_change"] for l1, _ in pairs]))
        m2 = float(numpy.mean([l2["rms_change"] for _, l2 in pairs]))
        # a verdict needs most blocks and the mean to agree, by more than TIE (5%)
        if 2 * more > len(pairs) and m2 > (1 + TIE) * m1:
            verdict = "the L2s changed more than the L1s, as the study reads its figures"
        elif 2 * more < len(pairs) and m1 > (1 + TIE) * m2:
            verdict = "the L1s changed more than the L2s, the opposite of the study's reading"
        else:
            verdict = "the L1s and the L2s changed about as much"
        obs.append(
            f"**L1 against L2.** ln_2's weight moved further from its initial 1 than ln_1's in {more} of "
            f"{len(pairs)} blocks (mean RMS change: L2 {m2:.4f}, L1 {m1:.4f}): here {verdict}.")
    moved = [r for r in mats if not math.isnan(r["rel_change"])]
    if moved:
        most, least = max(moved, key=lambda r: r["rel_change"]), min(moved, key=lambda r: r["rel_change"])
        obs.append(f"**What moved.** Among the weight matrices, {most['label']} changed most (relative change "
                   f"{most['rel_change']:.2f}) and {least['label']} least ({least['rel_change']:.2f}).")
    heads = [r for r in head_rows if not math.isnan(r["rel_change"])]
    if heads:
        hmost, hleast = max(heads, key=lambda r: r["rel_change"]), min(heads, key=lambda r: r["rel_change"])
        obs.append(f"**Attention heads.** Per head, the relative change runs from {hleast['rel_change']:.2f} "
                   f"({hleast['label']}) to {hmost['rel_change']:.2f} ({hmost['label']}).")
    return obs


# ---- figures -------------------------------------------------------------------------------
def draw_study(P0, P1, cfg, blocks, path):
    """The study's figure: a row per chosen block (L1 weight, L1 bias, L2 weight, L2 bias), then FL."""
    fig = new_figure(2.6 * 4, 1.9 * (len(blocks) + 1) + 0.6)
    axes = fig.subplots(len(blocks) + 1, 4, squeeze=False)
    for row, b in enumerate(blocks):
        for col, (short, name) in enumerate([("L1 weight", "ln_1.weight"), ("L1 bias", "ln_1.bias"),
                                             ("L2 weight", "ln_2.weight"), ("L2 bias", "ln_2.bias")]):
            k = f"transformer.h.{b}.{name}"
            overlaid_hist(axes[row, col], backend_numpy(P1[k]), backend_numpy(P0[k]), f"H{b} {short}")
    for col, part in enumerate(("weight", "bias")):
        k = f"transformer.ln_f.{part}"
        overlaid_hist(axes[-1, col], backend_numpy(P1[k]), backend_numpy(P0[k]), f"FL {part}")
    for ax in axes[-1, 2:]:
        ax.set_visible(False)
    axes[0, 0].legend(fontsize=6)
    fig.suptitle("layer norms before (outline) and after (filled) training, log counts")
    tight_layout(fig)
    save_figure(fig, path)


def draw_block(P0, P1, cfg, block, path):
    """Every tensor of one block that is not a layer norm."""
    pairs = [(s, a, a0) for (s, _, a), (_, _, a0) in zip(block_tensors(P1, cfg, block), block_tensors(P0, cfg, block))
             if not s.startswith("L")]
    cols = (len(pairs) + 1) // 2
    fig = new_figure(2.6 * cols, 2.0 * 2 + 0.6)
    axes = fig.subplots(2, cols, squeeze=False).ravel()
    for ax, (short, a, a0) in zip(axes, pairs):
        overlaid_hist(ax, backend_numpy(a), backend_numpy(a0), f"H{block} {short}")
    for ax in axes[len(pairs):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=6)
    fig.suptitle(f"block {block} (H{block}): before (outline) and after (filled), log counts")
    tight_layout(fig)
    save_figure(fig, path)


def draw_heads(P0, P1, cfg, block, path):
    """One row per attention head of a block: its q, k, v columns of c_attn and its c_proj rows."""
    H = cfg.n_heads
    fig = new_figure(2.4 * 4, 1.7 * H + 0.6)
    axes = fig.subplots(H, 4, squeeze=False)
    for label, (k, sel) in head_slices(cfg, block).items():
        head, part = label.split(".")[1:]
        h, col = int(head[len("head"):]), ["q", "k", "v", "c_proj"].index(part)
        overlaid_hist(axes[h, col], backend_numpy(P1[k][sel]), backend_numpy(P0[k][sel]), f"H{block} {head} {part}")
    fig.suptitle(f"block {block}: each attention head's weights, before (outline) and after (filled)")
    tight_layout(fig)
    save_figure(fig, path)


def draw_summary(rows, blocks, path):
    """Per block: RMS change of every tensor, and the layer norms' share beyond 3 std."""
    shorts = [s for s, _, _ in BLOCK_TENSORS]
    by_label = {r["label"]: r for r in rows}
    fig = new_figure(11, 4)
    ax1, ax2 = fig.subplots(1, 2)
    for short in shorts:
        ys = [by_label[f"H{b} {short}"]["rms_change"] if f"H{b} {short}" in by_label else numpy.nan for b in blocks]
        style = "-" if short.startswith("L") else ":"
        ax1.plot(blocks, ys, style, marker="o", ms=3, label=short)
    ax1.set_yscale("log")
    ax1.set_xlabel("block")
    ax1.set_ylabel("RMS change, after - before")
    ax1.legend(fontsize=6, ncol=2)
    for short in ("L1 weight", "L1 bias", "L2 weight", "L2 bias"):
        ax2.plot(blocks, [100 * by_label[f"H{b} {short}"]["beyond_3std"] for b in blocks], marker="o", ms=3,
                 label=short)
    ax2.axhline(100 * GAUSSIAN_BEYOND_3STD, color="gray", lw=1, ls="--", label="Gaussian")
    ax2.set_xlabel("block")
    ax2.set_ylabel("% of values beyond 3 std (after)")
    ax2.legend(fontsize=6)
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    tight_layout(fig)
    save_figure(fig, path)


# ---- the whole analysis ----------------------------------------------------------------------
def gpt2_weights_lab(report_dir, gpt2_dir=None, out_dir=None, blocks=None, seed=0, figures=True):
    """Statistics, figures and report.md for GPT-2's weights before and after training.
    Returns {"report": path, "rows": per tensor, "head_rows": per head, "observations": [...]}.
    figures=False skips the drawing (most of the run time) and leaves the figures out of the report."""
    if (gpt2_dir is None) == (out_dir is None):
        raise ValueError("give exactly one of gpt2_dir (a Hugging Face GPT-2 folder) and out_dir (a run folder)")
    use_numpy_backend()
    before, after, what = load_before_after(gpt2_dir, out_dir, seed)
    cfg = after.cfg
    blocks = parse_blocks(blocks, cfg.n_layers)
    os.makedirs(report_dir, exist_ok=True)
    rows, head_rows = weight_statistics(before, after, blocks)
    write_csv(os.path.join(report_dir, "tensors.csv"), rows, COLUMNS)
    write_csv(os.path.join(report_dir, "heads.csv"), head_rows, COLUMNS)
    write_json(os.path.join(report_dir, "weights.json"), {"source": what, "blocks": blocks, "rows": rows,
                                                          "head_rows": head_rows})
    if figures:
        P0, P1 = before.state_dict(), after.state_dict()
        draw_study(P0, P1, cfg, blocks, os.path.join(report_dir, "study_layernorms.png"))
        for b in blocks:
            draw_block(P0, P1, cfg, b, os.path.join(report_dir, f"block_{b}.png"))
            draw_heads(P0, P1, cfg, b, os.path.join(report_dir, f"block_{b}_heads.png"))
        draw_summary(rows, blocks, os.path.join(report_dir, "summary.png"))
    obs = observations(rows, head_rows)
    path = os.path.join(report_dir, "report.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write(render_report(what, cfg, blocks, rows, head_rows, obs, figures))
    return {"report": path, "rows": rows, "head_rows": head_rows, "observations": obs, "blocks": blocks}


def render_report(what, cfg, blocks, rows, head_rows, obs, figures=True):
    def num(x, digits=4):
        return "n/a" if x is None or math.isnan(x) else f"{x:.{digits}f}"

    def table(rs):
        return md_table(["tensor", "shape", "std before", "std after", "excess kurtosis before", "after",
                         "beyond 3 std before", "after", "relative change", "RMS change"],
                        [[r["label"], r["shape"], num(r["before_std"]), num(r["std"]), num(r["before_kurtosis"], 2),
                          num(r["kurtosis"], 2), _pct(r["before_beyond_3std"]), _pct(r["beyond_3std"]),
                          num(r["rel_change"], 3), num(r["rms_change"])] for r in rs])
    span = f"H{blocks[0]}-H{blocks[-1]}" if blocks == list(range(blocks[0], blocks[-1] + 1)) else \
        ", ".join(f"H{b}" for b in blocks)
    parts = [
        "# GPT-2's weights before and after training",
        f"Source: {what}. Config: {cfg.n_layers} blocks, {cfg.n_heads} heads, emb_dim {cfg.emb_dim}, "
        f"vocabulary {cfg.vocab_size}. Blocks shown: {span}. \"Before\" is GPT-2's initialisation of the same "
        "config; H<i> is transformer.h.<i>, L1 and L2 its ln_1 and ln_2, FL the final ln_f. "
        "Excess kurtosis is 0 and the share beyond 3 std 0.27% for a Gaussian.",
        "## Observations", "\n\n".join(obs)]
    if figures:
        parts += [
            "## The study's figures: layer norms L1, L2 and FL", "![layer norms](study_layernorms.png)",
            "## Change per block", "![summary](summary.png)",
            "## Every tensor of the chosen blocks",
            "\n\n".join(f"![block {b}](block_{b}.png)\n\n![block {b} heads](block_{b}_heads.png)" for b in blocks)]
    parts += [
        "## Statistics per tensor", table(rows),
        "## Statistics per attention head", table(head_rows)]
    return "\n\n".join(parts) + "\n"


# ---- command line ------------------------------------------------------------------------
def add_cli(lab_modes):
    """Add `weights` to the subparsers of `scratchgpt lab`."""
    p = lab_modes.add_parser("weights", help="GPT-2's weights before and after training: figures, statistics, report")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--gpt2-dir", help="a Hugging Face GPT-2 folder (config.json + model.safetensors)")
    src.add_argument("--out-dir", help="a run folder made by `scratchgpt train` (or a checkpoint .npz)")
    p.add_argument("--blocks", default=None, help="blocks to draw, e.g. 5-11 or 0,3,8-9 (default: the last seven)")
    p.add_argument("--report-dir", default=None,
                   help="where report.md and the figures go (default: out/lab-weights/<source folder name>)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fresh initialisation (\"before\")")
    p.set_defaults(func=cmd_lab_weights)
    return p


def cmd_lab_weights(a):
    source = a.gpt2_dir or a.out_dir
    report_dir = a.report_dir or os.path.join("out", "lab-weights",
                                              os.path.basename(os.path.normpath(source)).removesuffix(".npz"))
    res = gpt2_weights_lab(report_dir, gpt2_dir=a.gpt2_dir, out_dir=a.out_dir, blocks=a.blocks, seed=a.seed)
    for line in res["observations"]:
        print(line.replace("**", ""))
    print(f"open {res['report']}")
    return 0
