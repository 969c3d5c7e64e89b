"""Analysis 6: every run's final model evaluated on every run's corpus (a loss matrix).

    python examples/experiments/cross_domain.py --runs shakespeare=out/lab/runs/shakespeare \
        wikipedia=out/lab/runs/wikipedia math=out/lab/runs/math

Runs trained with separate character vocabularies usually cannot read each other's corpora
(those cells are reported as n/a); `scratchgpt lab` trains with one shared vocabulary.
"""
import argparse

from scratchgpt.analysis.crossdomain import cross_domain
from _common import runs_arg


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+", required=True, help="NAME=RUN_DIR ...")
    p.add_argument("--max-batches", type=int, default=20)
    p.add_argument("--out", default="out/experiments/crossdomain")
    a = p.parse_args(argv)
    res = cross_domain(runs_arg(a.runs), a.out, max_batches=a.max_batches)
    for r in res["rows"]:
        print(f"{r['model']:>12} on {r['corpus']:<12} {r['loss'] if r['loss'] is not None else 'n/a'}")
    for n in res["notes"]:
        print("note:", n)


if __name__ == "__main__":
    main()
