"""The book's bonus chapters ch05/07_gpt_to_llama and ch05/11_qwen3: from GPT-2 to Llama 3 to Qwen3,
one change at a time, each trained on the same small Shakespeare budget.

    python examples/ch05_gpt_to_llama_qwen.py           # plot to out/ch05_gpt_to_llama_qwen/
    python examples/ch05_gpt_to_llama_qwen.py --smoke --out /tmp/llama

Steps (every model has the same width, depth, heads, context and training run):
  1. GPT-2:              LayerNorm, learned position embeddings, GELU feed-forward, multi-head attention
  2. Llama 3, no GQA:    RMSNorm, rotary position embeddings, SwiGLU feed-forward (hidden_dim 8/3 emb_dim,
                         so it has as many weights as GPT-2's 4 emb_dim GELU), no biases
  3. Llama 3:            + grouped-query attention: n_heads / 2 key/value heads, each shared by 2 query heads
  4. Qwen3:              + QK-norm: RMSNorm on every head's queries and keys before RoPE

Each model is trained with `scratchgpt.train.train` (`scratchgpt train --arch ...` does the same)
and every gradient comes from the hand-written backward passes in scratchgpt/llama.py and ops/.
"""
import argparse
import json
import os
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from scratchgpt import checkpoint  # noqa: E402
from scratchgpt.train import TrainConfig, train  # noqa: E402

STEPS = [  # label, what changes, TrainConfig fields
    ("GPT-2", "the book's GPTModel", dict(arch="gpt2")),
    ("Llama 3 (MHA)", "RMSNorm, RoPE, SwiGLU, no biases", dict(arch="llama3", n_kv_groups=0)),
    ("Llama 3 (GQA)", "+ grouped-query attention", dict(arch="llama3", n_kv_groups=-2)),
    ("Qwen3", "+ QK-norm", dict(arch="qwen3", n_kv_groups=-2)),
]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="out/ch05_gpt_to_llama_qwen")
    p.add_argument("--smoke", action="store_true", help="a tiny, quick run (the tests use it)")
    p.add_argument("--max-iters", type=int, default=None)
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    size = (dict(n_layers=2, n_heads=4, emb_dim=32, context_length=32, batch_size=8, max_iters=40,
                 eval_interval=20, eval_iters=4) if a.smoke else
            dict(n_layers=4, n_heads=4, emb_dim=96, context_length=64, batch_size=16, max_iters=600,
                 eval_interval=100, eval_iters=20))
    if a.max_iters:
        size["max_iters"] = a.max_iters
    hidden = round(8 * size["emb_dim"] / 3)
    print(f"=== one budget for every model: {json.dumps(size)}, char-level Shakespeare ===")
    curves = {}
    for label, change, fields in STEPS:
        fields = dict(fields)
        if fields.get("n_kv_groups", 0) < 0:          # -g: n_heads / g key/value heads
            fields["n_kv_groups"] = size["n_heads"] // -fields["n_kv_groups"]
        if fields["arch"] != "gpt2":
            fields["hidden_dim"] = hidden
        run_dir = out / label.lower().replace(" ", "-").replace("(", "").replace(")", "")
        cfg = TrainConfig(dataset="shakespeare", tokenizer="char", lr=2e-3, warmup_iters=20, seed=1337,
                          sample_tokens=0 if a.smoke else 100, out_dir=str(run_dir), **size, **fields)
        res = train(cfg, progress=False, log=lambda *m: None)
        model = checkpoint.load(os.path.join(run_dir, "ckpt_latest.npz")).model
        rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
        curves[label] = ([r["iter"] for r in rows], [r["val_loss"] for r in rows])
        kv = getattr(model.cfg, "n_kv_groups", model.cfg.n_heads)
        print(f"{label:14s} {change:34s} {model.num_parameters():>9,} parameters, "
              f"{kv} key/value heads: val loss {res['val_loss']:.3f} after {res['iter']} iterations")

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, (its, losses) in curves.items():
        ax.plot(its, losses, marker="o", label=label)
    ax.set_xlabel("iteration")
    ax.set_ylabel("validation loss (char-level Shakespeare)")
    ax.set_title("GPT-2 -> Llama 3 -> Qwen3, one change at a time")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "gpt_to_llama_qwen.png", dpi=120)
    print(f"plot: {out / 'gpt_to_llama_qwen.png'}")


if __name__ == "__main__":
    main()
