"""Analysis 2, the architecture: a flow chart of a GPTModel drawn from its GPTConfig, with
the tensor shape on every arrow and the parameter count of every part.

The counts come from `model.parameter_shapes(cfg)`, the same table the model allocates
its flat buffer from, so they add up to `GPTModel(cfg).num_parameters()`.
"""
import math
import os

from matplotlib.patches import FancyBboxPatch

from scratchgpt.analysis.common import md_table, new_figure, save_figure, write_json
from scratchgpt.model import GPTConfig, parameter_shapes


def parameter_parts(cfg):
    """[(part, params)] in forward order; one block's parts are listed once (they repeat n_layers times)."""
    shapes = parameter_shapes(cfg)
    count = {k: math.prod(s) for k, s in shapes.items()}

    def total(prefix):
        return sum(v for k, v in count.items() if k.startswith(prefix))
    parts = [("wte", total("transformer.wte.")), ("wpe", total("transformer.wpe."))]
    h = "transformer.h.0."
    parts += [("ln_1", total(h + "ln_1.")), ("attn", total(h + "attn.")),
              ("ln_2", total(h + "ln_2.")), ("mlp", total(h + "mlp."))]
    parts += [("ln_f", total("transformer.ln_f.")), ("head", total("lm_head.") + total("score."))]
    return parts


def draw_architecture(cfg, out_dir, name="architecture"):
    """Draw `cfg` (a GPTConfig or its dict) to <out_dir>/<name>.png and write <name>.json
    with the parts, their output shapes and parameter counts. Returns that dict."""
    if isinstance(cfg, dict):
        cfg = GPTConfig.from_dict(cfg)
    os.makedirs(out_dir, exist_ok=True)
    C, V, T, H, L = cfg.emb_dim, cfg.vocab_size, cfg.context_length, cfg.n_heads, cfg.n_layers
    n_out = getattr(cfg, "num_classes", 0) or V            # a classifier (chapter 6) has num_classes outputs
    hd = C // H
    p = dict(parameter_parts(cfg))
    block = p["ln_1"] + p["attn"] + p["ln_2"] + p["mlp"]
    total = sum(p.values()) + (L - 1) * block
    bt = f"(B, T, {C})"

    fig = new_figure(10, 12)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, 10)
    ax.axis("off")

    def box(x, y, w, text, color, h=0.9, size=10):
        ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.08",
                                    fc=color, ec="black", lw=1))
        ax.text(x, y, text, ha="center", va="center", fontsize=size)

    def plus(x, y):
        ax.text(x, y, "+", ha="center", va="center", fontsize=12,
                bbox=dict(boxstyle="circle,pad=0.15", fc="white", ec="black"))

    def arrow(x0, y0, x1, y1, label=None):
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops=dict(arrowstyle="->", lw=1.2))
        if label:
            ax.text(x0 + 0.15, (y0 + y1) / 2, label, fontsize=8, color="dimgray", va="center")

    def params(y, n, x=8.3):
        ax.text(x, y, f"{n:,} params", fontsize=9, va="center", ha="left", color="darkred")

    X = 4.0
    box(X, 25.2, 2.6, "token ids", "whitesmoke")
    arrow(X, 24.7, X, 23.9, f"(B, T≤{T}) integers < {V}")
    box(2.6, 23.4, 3.0, f"wte: token embedding\n{V} × {C}", "#cfe2f3")
    box(5.9, 23.4, 3.0, f"wpe: position embedding\n{T} × {C}", "#cfe2f3")
    params(23.7, p["wte"])
    params(23.1, p["wpe"])
    plus(X, 22.0)
    arrow(2.6, 22.9, X - 0.25, 22.15)
    arrow(5.9, 22.9, X + 0.25, 22.15)
    drop = f", dropout {cfg.drop_rate}" if cfg.drop_rate else ""
    arrow(X, 21.7, X, 20.6, bt + drop)

    # one TransformerBlock, drawn once, repeated n_layers times
    top = 20.5
    attn_txt = (f"MultiHeadAttention ({H} heads × {hd})\nc_attn {C}→{3 * C} (q, k, v), causal softmax,\n"
                f"c_proj {C}→{C}")
    mlp_txt = f"FeedForward\nc_fc {C}→{4 * C}, GELU ({cfg.gelu_approximate}), c_proj {4 * C}→{C}"
    if not cfg.post_norm:
        ys = dict(in_=19.6, ln_1=18.8, attn=17.2, add1=15.6, ln_2=14.4, mlp=12.8, add2=11.2)
        ax.text(X, ys["in_"], "x", ha="center", fontsize=9, color="dimgray")
        box(X, ys["ln_1"], 2.6, "ln_1 (LayerNorm)", "#d9ead3", h=0.7)
        params(ys["ln_1"], p["ln_1"])
        arrow(X, ys["ln_1"] - 0.4, X, ys["attn"] + 0.75, bt)
        box(X, ys["attn"], 5.0, attn_txt, "#f4cccc", h=1.3, size=9)
        params(ys["attn"], p["attn"])
        arrow(X, ys["attn"] - 0.75, X, ys["add1"] + 0.3, bt)
        plus(X, ys["add1"])
        arrow(X, ys["add1"] - 0.3, X, ys["ln_2"] + 0.4)
        box(X, ys["ln_2"], 2.6, "ln_2 (LayerNorm)", "#d9ead3", h=0.7)
        params(ys["ln_2"], p["ln_2"])
        arrow(X, ys["ln_2"] - 0.4, X, ys["mlp"] + 0.6, bt)
        box(X, ys["mlp"], 5.0, mlp_txt, "#fce5cd", h=1.0, size=9)
        params(ys["mlp"], p["mlp"])
        arrow(X, ys["mlp"] - 0.55, X, ys["add2"] + 0.3, f"(B, T, {C})")
        plus(X, ys["add2"])
        # shortcuts: x + attn(ln_1(x)), then x + mlp(ln_2(x))
        for y0, y1 in ((ys["in_"] - 0.2, ys["add1"]), (ys["add1"] - 0.5, ys["add2"])):
            ax.plot([X, 1.1, 1.1], [y0, y0, y1], color="tab:blue", lw=1.2)
            arrow(1.1, y1, X - 0.28, y1)
        ax.text(1.2, (ys["in_"] + ys["add1"]) / 2, "shortcut", rotation=90, fontsize=8,
                color="tab:blue", va="center")
        out_y = ys["add2"]
    else:
        ys = dict(in_=19.6, attn=18.4, add1=16.9, ln_1=15.9, mlp=14.2, add2=12.7, ln_2=11.6)
        ax.text(X, ys["in_"], "x", ha="center", fontsize=9, color="dimgray")
        arrow(X, ys["in_"] - 0.2, X, ys["attn"] + 0.75)
        box(X, ys["attn"], 5.0, attn_txt, "#f4cccc", h=1.3, size=9)
        params(ys["attn"], p["attn"])
        arrow(X, ys["attn"] - 0.75, X, ys["add1"] + 0.3, bt)
        plus(X, ys["add1"])
        arrow(X, ys["add1"] - 0.3, X, ys["ln_1"] + 0.4)
        box(X, ys["ln_1"], 2.6, "ln_1 (LayerNorm)", "#d9ead3", h=0.7)
        params(ys["ln_1"], p["ln_1"])
        arrow(X, ys["ln_1"] - 0.4, X, ys["mlp"] + 0.6, bt)
        box(X, ys["mlp"], 5.0, mlp_txt, "#fce5cd", h=1.0, size=9)
        params(ys["mlp"], p["mlp"])
        arrow(X, ys["mlp"] - 0.55, X, ys["add2"] + 0.3)
        plus(X, ys["add2"])
        arrow(X, ys["add2"] - 0.3, X, ys["ln_2"] + 0.4)
        box(X, ys["ln_2"], 2.6, "ln_2 (LayerNorm)", "#d9ead3", h=0.7)
        params(ys["ln_2"], p["ln_2"])
        for y0, y1 in ((ys["in_"] - 0.1, ys["add1"]), (ys["ln_1"] - 0.5, ys["add2"])):
            ax.plot([X, 1.1, 1.1], [y0, y0, y1], color="tab:blue", lw=1.2)
            arrow(1.1, y1, X - 0.28, y1)
        out_y = ys["ln_2"]
    bottom = out_y - 1.2
    ax.add_patch(FancyBboxPatch((0.6, bottom), 7.3, top - bottom, boxstyle="round,pad=0.1",
                                fc="#fbfbf3", ec="gray", lw=1.2, ls="--", zorder=0))
    ax.text(0.8, top - 0.35, f"TransformerBlock  × {L}", fontsize=11, weight="bold", va="center")
    params(top - 0.35, block, x=5.4)
    ax.text(0.8, bottom + 0.3, f"all {L} blocks: {L * block:,} params", fontsize=9, color="darkred")
    y = bottom - 1.4
    arrow(X, out_y - 0.3, X, y + 0.4)
    ax.text(X + 0.15, y + 0.75, bt, fontsize=8, color="dimgray", va="center")
    box(X, y, 2.6, "ln_f (final LayerNorm)", "#d9ead3", h=0.7)
    params(y, p["ln_f"])
    arrow(X, y - 0.4, X, y - 1.45, bt)
    head = (f"score: linear {C}→{n_out}\n(classification head)" if n_out != V else
            f"head: linear {C}→{V}\n" + ("(tied: reuses wte)" if cfg.tie_weights else "(lm_head.weight)"))
    box(X, y - 2.0, 3.4, head, "#cfe2f3", h=0.9)
    params(y - 2.0, p["head"])
    if cfg.tie_weights and n_out == V:
        ax.text(8.3, y - 2.4, "(shares wte's)", fontsize=8, color="darkred")
    arrow(X, y - 2.55, X, y - 3.55, f"(B, T, {n_out})")
    box(X, y - 4.0, 3.0, "logits → softmax over the\nnext token", "whitesmoke", h=0.8)
    ax.text(0.3, y - 5.2, f"GPTConfig: vocab_size={V}, context_length={T}, emb_dim={C}, n_heads={H}, "
            f"n_layers={L}, drop_rate={cfg.drop_rate}, qkv_bias={cfg.qkv_bias}; B = batch, T ≤ {T}",
            fontsize=8.5)
    ax.text(0.3, y - 5.8, f"total: {total:,} parameters", fontsize=11, weight="bold")
    ax.set_ylim(y - 6.3, 26)
    save_figure(fig, os.path.join(out_dir, f"{name}.png"))

    parts = [{"part": "wte (token embedding)", "output_shape": bt, "params": p["wte"]},
             {"part": "wpe (position embedding)", "output_shape": f"(T, {C})", "params": p["wpe"]}]
    for k, what in (("ln_1", "LayerNorm"), ("attn", "MultiHeadAttention"), ("ln_2", "LayerNorm"),
                    ("mlp", "FeedForward")):
        parts.append({"part": f"block.{k} ({what}) × {L}", "output_shape": bt, "params": p[k] * L})
    parts += [{"part": "ln_f", "output_shape": bt, "params": p["ln_f"]},
              {"part": "head" + (" (tied to wte)" if cfg.tie_weights and n_out == V else ""),
               "output_shape": f"(B, T, {n_out})", "params": p["head"]}]
    result = {"config": cfg.to_dict(), "parts": parts, "per_block": block, "total": total,
              "embedding_share": (p["wte"] + p["wpe"]) / total}
    write_json(os.path.join(out_dir, f"{name}.json"), result)
    return result


def markdown(result, fig_dir=".", name="architecture"):
    c = result["config"]
    rows = [[r["part"], r["output_shape"], f"{r['params']:,}"] for r in result["parts"]]
    rows.append(["**total**", "", f"**{result['total']:,}**"])
    attn = next(r["params"] for r in result["parts"] if "attn" in r["part"])
    mlp = next(r["params"] for r in result["parts"] if "mlp" in r["part"])
    obs = (f"{result['total']:,} parameters: the embeddings hold {100 * result['embedding_share']:.1f}%, "
           f"each of the {c['n_layers']} blocks {result['per_block']:,}, of which the feed-forward network "
           f"has {mlp / max(attn, 1):.1f}× as many as the attention (4·C² + 4·C² against 3·C² + C² weights).")
    return "\n\n".join([f"![architecture]({fig_dir}/{name}.png)",
                        md_table(["part", "output shape", "parameters"], rows), obs])
