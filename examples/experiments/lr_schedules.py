"""Analysis 11: constant vs multistep vs warmup+cosine learning rate, same model, data and seed.

    python examples/experiments/lr_schedules.py --max-iters 300
"""
import argparse

from scratchgpt.analysis.schedules import PROMPT, compare_schedules
from scratchgpt.train import TrainConfig


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="shakespeare")
    p.add_argument("--text-file")
    p.add_argument("--max-iters", type=int, default=300)
    p.add_argument("--eval-interval", type=int, default=25)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--milestone-every", type=int, default=50)
    p.add_argument("--gamma", type=float, default=0.7)
    p.add_argument("--n-layers", type=int, default=4)
    p.add_argument("--emb-dim", type=int, default=128)
    p.add_argument("--prompt", default=PROMPT)
    p.add_argument("--out", default="out/experiments/schedules")
    a = p.parse_args(argv)
    base = TrainConfig(dataset=a.dataset, text_file=a.text_file, max_iters=a.max_iters, eval_interval=a.eval_interval,
                       lr=a.lr, n_layers=a.n_layers, emb_dim=a.emb_dim, eval_iters=10, sample_tokens=100)
    res = compare_schedules(base, a.out, prompt=a.prompt, milestone_every=a.milestone_every, gamma=a.gamma)
    for k, v in res["samples"].items():
        print(f"{k:>14}: val {v['final_val_loss']:.3f} | {a.prompt}{v['sample'][:60]!r}")


if __name__ == "__main__":
    main()
