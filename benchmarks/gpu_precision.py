"""Does a lower precision follow the fp32 loss curve? A tiny model trained the same steps in each.

    python benchmarks/gpu_precision.py [--steps 100] [--precisions fp32,tf32]

The same model (seed 0), batches and AdamW steps, once per precision on the CuPy backend; it
prints the loss every 10 steps and, for each precision, the largest relative difference from
the fp32 curve over all steps. tests/test_gpu.py asserts the tolerances (PRECISION_RTOL below).

Why 2%: TF32 rounds a product's inputs to a 10-bit mantissa (relative error up to 2^-11, about
5e-4 per input) and sums in float32. Those errors compound through the steps as any rounding
difference does, so the curves drift apart slowly; the tolerance is set well above a per-step
rounding of 5e-4 yet far below the loss's own fall (on this data from 4.2 to about 1.4 in the
first 30 steps), so wrong results fail it and rounding does not. The measured difference is
what this script prints (benchmarks/gpu_check.sh runs it on the GPU).

Why 5% for bf16: bfloat16 keeps an 8-bit mantissa (relative error up to 2^-9, about 2e-3 per
input, 4x TF32's), so its curve may drift 4x as far; 5% leaves that room and is still a small
fraction of the loss's fall, so a wrong product (a transposed operand, a lost scale) fails it.
"""
import argparse
import os
import sys

PRECISION_RTOL = {"tf32": 0.02, "bf16": 0.05}
TINY = dict(vocab_size=65, context_length=64, emb_dim=128, n_heads=4, n_layers=4)


def loss_curve(prec, steps, batch=16, seed=0):
    """The training losses of the tiny model over `steps` AdamW steps at precision `prec`."""
    import numpy as np
    import scratchgpt as sg
    from scratchgpt import backend, precision

    backend.use("cupy")
    precision.use(prec)
    try:
        model = sg.GPTModel(sg.GPTConfig(**TINY), seed=seed, dtype="float32")
        opt = sg.AdamW(model, lr=1e-3, weight_decay=0.1)
        r = np.random.default_rng(seed)
        # a learnable stream: each token is the previous one plus 1 (mod V), with 10% noise
        base = r.integers(0, TINY["vocab_size"], (steps, batch, 1))
        seq = (base + np.arange(TINY["context_length"] + 1)) % TINY["vocab_size"]
        noise = r.random(seq.shape) < 0.1
        seq = np.where(noise, r.integers(0, TINY["vocab_size"], seq.shape), seq)
        losses = []
        for s in range(steps):
            model.zero_grad()
            losses.append(model.loss(seq[s, :, :-1], seq[s, :, 1:]))
            model.backward()
            sg.clip_grad_norm(model, 1.0)
            opt.step()
        return losses
    finally:
        precision.use("fp32")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--precisions", default="fp32,tf32,bf16")
    a = ap.parse_args()
    curves = {}
    for p in a.precisions.split(","):
        try:
            curves[p] = loss_curve(p, a.steps)
        except ValueError as e:                 # e.g. bf16 before it is written
            print(f"{p}: {e}")
    ref = curves.get("fp32")
    print(f"{'step':>5} " + " ".join(f"{p:>9}" for p in curves))
    for s in list(range(0, a.steps, 10)) + [a.steps - 1]:
        print(f"{s:5d} " + " ".join(f"{c[s]:9.5f}" for c in curves.values()))
    for p, c in curves.items():
        if ref is not None and p != "fp32":
            worst = max(abs(x - y) / abs(y) for x, y in zip(c, ref))
            verdict = "within" if worst <= PRECISION_RTOL[p] else "OUTSIDE"
            print(f"{p}: largest relative difference from fp32 over {a.steps} steps {worst:.2e} "
                  f"({verdict} the {PRECISION_RTOL[p]:.0%} tolerance); final loss {c[-1]:.5f} vs {ref[-1]:.5f}")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
