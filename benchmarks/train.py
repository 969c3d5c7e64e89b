"""Training-step speed: our hand-written model against torch eager, same config, batch and threads.

    python benchmarks/train.py [--configs tiny,small] [--repeats 5] [--threads 2]

Each measurement is one full step (forward + loss + backward + AdamW) on a fixed random
batch; ours and torch's alternate, and the median over repeats is reported as tokens/s.
"""
import argparse
import os
import time

CONFIGS = {
    "tiny": dict(vocab_size=65, context_length=64, emb_dim=128, n_heads=4, n_layers=4, batch=32),
    "small": dict(vocab_size=65, context_length=256, emb_dim=384, n_heads=6, n_layers=6, batch=16),
    "gpt2": dict(vocab_size=50257, context_length=256, emb_dim=768, n_heads=12, n_layers=12, batch=1),
}


def ours_step(cfgd, dtype="float32"):
    """(model, opt, step) on the active backend: step() is one eager training step on a fixed
    random batch (zero_grad, loss, backward, clip to 1.0, AdamW). gpu.py, gpu_launches.py,
    gpu_profile.py and kernels.py time and count this one too."""
    import numpy as np
    import scratchgpt as sg
    c = {k: v for k, v in cfgd.items() if k != "batch"}
    model = sg.GPTModel(sg.GPTConfig(**c), seed=0, dtype=dtype)
    opt = sg.AdamW(model, lr=1e-4, weight_decay=0.1)
    r = np.random.default_rng(0)
    x = r.integers(0, c["vocab_size"], (cfgd["batch"], c["context_length"]))
    y = r.integers(0, c["vocab_size"], x.shape)

    def step():
        model.zero_grad()
        model.loss(x, y)
        model.backward()
        sg.clip_grad_norm(model, 1.0)
        opt.step()
    return model, opt, step


def torch_step_fn(cfgd):
    import torch
    from torch_gpt import TorchGPT
    from scratchgpt.model import GPTConfig
    c = {k: v for k, v in cfgd.items() if k != "batch"}
    model = TorchGPT(GPTConfig(**c))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, c["vocab_size"], (cfgd["batch"], c["context_length"]), generator=g)
    y = torch.randint(0, c["vocab_size"], x.shape, generator=g)

    def step():
        opt.zero_grad(set_to_none=True)
        model(x, y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return step


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--configs", default="tiny,small")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    import torch
    torch.set_num_threads(a.threads)
    kernels = os.environ.get("SCRATCHGPT_KERNELS", "numba")
    print(f"threads {a.threads}, SCRATCHGPT_KERNELS={kernels}, torch {torch.__version__}")
    print(f"{'config':8} {'ours tok/s':>12} {'torch tok/s':>12} {'ratio':>7}")
    for name in a.configs.split(","):
        cfgd = CONFIGS[name]
        tokens = cfgd["batch"] * cfgd["context_length"]
        ours, theirs = ours_step(cfgd)[2], torch_step_fn(cfgd)
        ours(), theirs(), ours(), theirs()                     # warm-up (numba compile, allocator)
        to, tt = [], []
        for _ in range(a.repeats):                             # alternate so drift hits both
            to.append(median_time(ours, 1))
            tt.append(median_time(theirs, 1))
        mo, mt = sorted(to)[len(to) // 2], sorted(tt)[len(tt) // 2]
        print(f"{name:8} {tokens / mo:12,.0f} {tokens / mt:12,.0f} {mt / mo:7.2f}x", flush=True)


if __name__ == "__main__":
    import sys
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
