"""Every analysis end to end into one report.md (the same as `scratchgpt lab`).

    python examples/experiments/lab.py --out out/lab --quick      # a few minutes
    python examples/experiments/lab.py --out out/lab              # small real models, longer
"""
import argparse

from scratchgpt.analysis.lab import run_lab


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="out/lab")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    res = run_lab(a.out, quick=a.quick)
    print(f"report: {res['report']} ({res['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
