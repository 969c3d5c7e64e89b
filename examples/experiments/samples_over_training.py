"""Analysis 3: what every saved checkpoint of a run writes from one prompt and seed, and the
share of generated words found in the training text ("fewer spelling mistakes").

    python examples/experiments/samples_over_training.py --run out/shakespeare-char --prompt "ROMEO:"
"""
import argparse

from scratchgpt.analysis.samples import samples_over_training


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a run folder made by `scratchgpt train`")
    p.add_argument("--prompt", default="\n")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--n-samples", type=int, default=4)
    p.add_argument("--out", default="out/experiments/samples")
    a = p.parse_args(argv)
    res = samples_over_training(a.run, a.out, a.prompt, a.seed, a.max_new_tokens, a.temperature, a.n_samples)
    for r in res["rows"]:
        print(f"iter {r['iter']:>6}: {100 * r['valid_word_share']:5.1f}% valid words | {r['sample'][:70]!r}")
    print(f"figures and tables in {a.out}")


if __name__ == "__main__":
    main()
