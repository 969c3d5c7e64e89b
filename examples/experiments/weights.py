"""Analysis 10: weight histograms (per layer, per attention head, final layer), init overlaid
on trained, and per-tensor statistics (std, kurtosis, tails, relative change).

    python examples/experiments/weights.py --run out/shakespeare-char
"""
import argparse

from scratchgpt.analysis.weights import weight_distributions


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a run folder with checkpoints/iter_000000.npz")
    p.add_argument("--out", default="out/experiments/weights")
    a = p.parse_args(argv)
    res = weight_distributions(a.run, a.out)
    for r in res["rows"]:
        print(f"{r['tensor']:<42} std {r['init_std']:.4f} -> {r['std']:.4f}, relative change {r['rel_change']:.2f}")


if __name__ == "__main__":
    main()
