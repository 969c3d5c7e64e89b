"""Analysis 2: draw a model's architecture (boxes, arrows, shapes, parameter counts).

    python examples/experiments/architecture.py --run out/shakespeare-char      # a trained run's model
    python examples/experiments/architecture.py --vocab-size 50257 --context-length 1024 \
        --emb-dim 768 --n-heads 12 --n-layers 12                                  # GPT-2 small
"""
import argparse

from scratchgpt.analysis.architecture import draw_architecture
from scratchgpt.analysis.common import final_checkpoint, load_model
from scratchgpt.model import GPTConfig


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", help="a run folder: draw its model")
    d = GPTConfig()
    for name in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    p.add_argument("--out", default="out/experiments/architecture")
    a = p.parse_args(argv)
    if a.run:
        cfg = load_model(final_checkpoint(a.run))[0].cfg
    else:
        cfg = GPTConfig(vocab_size=a.vocab_size, context_length=a.context_length, emb_dim=a.emb_dim,
                        n_heads=a.n_heads, n_layers=a.n_layers)
    res = draw_architecture(cfg, a.out)
    print(f"{res['total']:,} parameters; figure in {a.out}/architecture.png")


if __name__ == "__main__":
    main()
