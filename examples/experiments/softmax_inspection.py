"""Analysis 8: the top-7 next characters and the entropy of the softmax for a few prompts,
at the checkpoints of one or more runs.

    python examples/experiments/softmax_inspection.py --runs shakespeare=out/shakespeare-char \
        --prompts "Once upon a time" "ROMEO:"
"""
import argparse

from scratchgpt.analysis.softmax import softmax_inspection
from _common import runs_arg


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+", required=True, help="NAME=RUN_DIR ...")
    p.add_argument("--prompts", nargs="+",
                   default=["The integral of x^2 is", "In biology, mitochondria are", "Once upon a time"])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--top", type=int, default=7)
    p.add_argument("--out", default="out/experiments/softmax")
    a = p.parse_args(argv)
    res = softmax_inspection(runs_arg(a.runs), a.prompts, a.out, a.steps, a.top)
    for c in res["entropy_curves"]:
        print(f"{c['model']} {c['prompt']!r}: mean entropy {c['curve'][0][1]:.2f} -> {c['curve'][-1][1]:.2f} nats")


if __name__ == "__main__":
    main()
