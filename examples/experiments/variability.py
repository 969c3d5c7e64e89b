"""Analysis 4: several samples of a run's final model (one per seed), with distinct-1/2/3 and
the share of valid words per sample.

    python examples/experiments/variability.py --run out/shakespeare-char --prompt "ROMEO:" --seeds 8
"""
import argparse

from scratchgpt.analysis.variability import sample_variability


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--prompt", default="\n")
    p.add_argument("--seeds", type=int, default=5, help="number of samples (seeds 0..N-1)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--out", default="out/experiments/variability")
    a = p.parse_args(argv)
    res = sample_variability(a.run, a.out, a.prompt, range(a.seeds), a.max_new_tokens, a.temperature)
    for r in res["rows"]:
        print(f"seed {r['seed']}: distinct-1/2/3 {r['distinct_1']:.2f}/{r['distinct_2']:.2f}/{r['distinct_3']:.2f}, "
              f"{100 * r['valid_word_share']:.0f}% valid | {r['sample'][:60]!r}")
    print(f"figures and tables in {a.out}")


if __name__ == "__main__":
    main()
