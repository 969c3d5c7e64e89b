"""Analysis 7: fine-tune every run on every other run's corpus (from its final and an earlier
checkpoint); loss on the new corpus (adapting) and on the old one (forgetting).

    python examples/experiments/finetune.py --runs shakespeare=out/lab/runs/shakespeare \
        math=out/lab/runs/math --iters 200
"""
import argparse

from scratchgpt.analysis.finetune import finetune_pairs
from _common import runs_arg


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+", required=True, help="NAME=RUN_DIR ... (sharing one vocabulary)")
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--eval-interval", type=int, default=50)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--early-iter", type=int, default=None, help="the earlier checkpoint (default: ~1/4 of training)")
    p.add_argument("--out", default="out/experiments/finetune")
    a = p.parse_args(argv)
    res = finetune_pairs(runs_arg(a.runs), a.out, a.iters, a.eval_interval, a.lr, a.early_iter)
    for s in res["summary"]:
        print(f"{s['source']} -> {s['target']} ({s['start']}): "
              f"target {s['target_before']:.3f} -> {s['target_after']:.3f}, "
              f"source {s['source_before']:.3f} -> {s['source_after']:.3f}")


if __name__ == "__main__":
    main()
