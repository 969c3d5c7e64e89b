"""Analysis 5: a run's train/val loss curves, with the val loss recomputed from every
checkpoint (it must agree with the logged one).

    python examples/experiments/loss_curves.py --run out/shakespeare-char
"""
import argparse

from scratchgpt.analysis.curves import loss_curves


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--no-recompute", action="store_true", help="only plot the logged losses")
    p.add_argument("--out", default="out/experiments/curves")
    a = p.parse_args(argv)
    res = loss_curves(a.run, a.out, recompute=not a.no_recompute)
    if res["max_abs_diff_val"] is not None:
        print(f"max |recomputed - logged| val loss over {len(res['rows'])} checkpoints: {res['max_abs_diff_val']:.2e}")
    print(f"figure and table in {a.out}")


if __name__ == "__main__":
    main()
