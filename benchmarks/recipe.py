"""The run a reader waits for, end to end: nanoGPT's CPU recipe for character-level Shakespeare,
ours against torch eager, each side in a process of its own.

    python benchmarks/recipe.py                         # 2,000 iterations, evaluations at 0, 1000, 2000
    python benchmarks/recipe.py --max-iters 200 --threads 1

The recipe is `scratchgpt train`'s default: 4 layers, 4 heads, 128 wide, context 64, batch 12,
AdamW (0.9, 0.99), weight decay 0.1, clip 1.0, 100 warm-up iterations then cosine from 1e-3 to
1e-4; evaluations of --eval-iters batches of each split. Both sides start from the same weights
(our seeded GPT-2 init, copied into torch), draw the same training batches (scratchgpt's
BatchSampler) and evaluate on the same batches, so their losses should agree to rounding.

Rows:
  ours      scratchgpt.train's own step and evaluation (`_step`, `estimate_loss`) in a plain loop
  torch     the same loop in torch eager (benchmarks/torch_gpt.py's TorchGPT)
  ours/cli  `scratchgpt train` itself (adds checkpoints, samples and its progress bar), wall time
Printed: wall time (process start to finish), the time in training steps and in evaluations,
and the final validation loss.
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What both sides' processes start from: scratchgpt sets thread variables in this process once
# imported (KMP_BLOCKTIME when MKL loads, for one) that torch's side must not inherit.
BASE_ENV = dict(os.environ)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


def recipe(a):
    from scratchgpt.train import TrainConfig
    return TrainConfig(max_iters=a.max_iters, eval_interval=a.max_iters // 2, eval_iters=a.eval_iters,
                       seed=a.seed, out_dir=a.out_dir)


def eval_iters_list(cfg):
    return [it for it in range(cfg.max_iters + 1) if it % cfg.eval_interval == 0 or it == cfg.max_iters]


def run_ours(a):
    t_start = time.perf_counter()
    from scratchgpt.model import GPTModel
    from scratchgpt.data import BatchSampler
    from scratchgpt.train import _make_optimizer, _step, estimate_loss, load_corpus
    cfg = recipe(a)
    corpus = load_corpus(cfg)
    model = GPTModel(cfg.model_config(corpus.tokenizer.vocab_size), seed=cfg.seed)
    opt = _make_optimizer(model, cfg)
    sampler = BatchSampler(corpus.train, cfg.batch_size, cfg.context_length, cfg.seed)
    step_s = eval_s = 0.0
    evals = set(eval_iters_list(cfg))
    for it in range(cfg.max_iters + 1):
        if it in evals:
            t = time.perf_counter()
            losses = estimate_loss(model, corpus, cfg, it)
            eval_s += time.perf_counter() - t
        if it == cfg.max_iters:
            break
        t = time.perf_counter()
        _step(model, opt, sampler, cfg, cfg.lr_at(it))
        step_s += time.perf_counter() - t
    return {"wall_s": time.perf_counter() - t_start, "step_s": step_s, "eval_s": eval_s, "val_loss": losses["val"]}


def run_torch(a):
    t_start = time.perf_counter()
    import numpy as np
    import torch
    from torch_gpt import TorchGPT
    from scratchgpt.data import BatchSampler, get_batch
    from scratchgpt.model import GPTModel
    from scratchgpt.train import load_corpus
    torch.set_num_threads(a.threads)
    cfg = recipe(a)
    corpus = load_corpus(cfg)
    mcfg = cfg.model_config(corpus.tokenizer.vocab_size)
    ours = GPTModel(mcfg, seed=cfg.seed)                        # the same initial weights
    model = TorchGPT(mcfg)
    P = {k: torch.tensor(np.asarray(v)) for k, v in ours.state_dict().items()}
    with torch.no_grad():
        model.wte.weight.copy_(P["transformer.wte.weight"])
        model.wpe.weight.copy_(P["transformer.wpe.weight"])
        model.ln_f.weight.copy_(P["transformer.ln_f.weight"])
        model.ln_f.bias.copy_(P["transformer.ln_f.bias"])
        for i, b in enumerate(model.h):
            h = f"transformer.h.{i}."
            for mod, name in ((b.ln_1, "ln_1"), (b.ln_2, "ln_2")):
                mod.weight.copy_(P[h + name + ".weight"])
                mod.bias.copy_(P[h + name + ".bias"])
            for mod, name in ((b.c_attn, "attn.c_attn"), (b.c_proj, "attn.c_proj"), (b.c_fc, "mlp.c_fc"),
                              (b.mlp_proj, "mlp.c_proj")):
                mod.weight.copy_(P[h + name + ".weight"].T)      # ours (in, out), torch (out, in)
                if mod.bias is not None:
                    mod.bias.copy_(P[h + name + ".bias"])
    del ours
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    sampler = BatchSampler(corpus.train, cfg.batch_size, cfg.context_length, cfg.seed)
    step_s = eval_s = 0.0
    evals = set(eval_iters_list(cfg))

    @torch.no_grad()
    def estimate(it):
        model.eval()
        out = {}
        for k, split in enumerate(("train", "val")):
            rng = np.random.default_rng([cfg.seed, it, k])    # the batches estimate_loss draws
            data = getattr(corpus, split)
            out[split] = float(np.mean([model(*map(torch.from_numpy, get_batch(data, cfg.batch_size,
                                                                                 cfg.context_length, rng))).item()
                                        for _ in range(cfg.eval_iters)]))
        model.train()
        return out

    for it in range(cfg.max_iters + 1):
        if it in evals:
            t = time.perf_counter()
            losses = estimate(it)
            eval_s += time.perf_counter() - t
        if it == cfg.max_iters:
            break
        t = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = cfg.lr_at(it)
        x, y = sampler.next()
        opt.zero_grad(set_to_none=True)
        loss = model(torch.from_numpy(x), torch.from_numpy(y))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step_s += time.perf_counter() - t
    return {"wall_s": time.perf_counter() - t_start, "step_s": step_s, "eval_s": eval_s, "val_loss": losses["val"]}


def child(a):
    """One side, in this (fresh) process; prints its result as JSON."""
    res = run_ours(a) if a.side == "ours" else run_torch(a)
    print(json.dumps(res))


def thread_env(threads):
    env = dict(BASE_ENV)
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[k] = str(threads)
    return env


def side(a, name):
    args = [sys.executable, os.path.abspath(__file__), "--side", name, "--max-iters", str(a.max_iters),
            "--eval-iters", str(a.eval_iters), "--seed", str(a.seed), "--threads", str(a.threads),
            "--out-dir", a.out_dir]
    t = time.perf_counter()
    p = subprocess.run(args, capture_output=True, text=True, env=thread_env(a.threads), cwd=ROOT)
    wall = time.perf_counter() - t
    if p.returncode:
        raise SystemExit(f"{name} failed:\n{p.stderr[-3000:]}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    res["wall_s"] = wall                                     # including interpreter start and imports
    return res


def cli(a):
    args = ["scratchgpt", "train", "--max-iters", str(a.max_iters), "--eval-interval", str(a.max_iters // 2),
            "--eval-iters", str(a.eval_iters), "--seed", str(a.seed), "--out-dir", a.out_dir + "-cli"]
    t = time.perf_counter()
    p = subprocess.run(args, capture_output=True, text=True, env=thread_env(a.threads), cwd=ROOT)
    wall = time.perf_counter() - t
    if p.returncode:
        raise SystemExit(f"scratchgpt train failed:\n{p.stderr[-3000:]}")
    with open(os.path.join(a.out_dir + "-cli", "metrics.jsonl")) as f:
        last = [json.loads(line) for line in f][-1]
    return {"wall_s": wall, "step_s": float("nan"), "eval_s": float("nan"), "val_loss": last["val_loss"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--max-iters", type=int, default=2000)
    p.add_argument("--eval-iters", type=int, default=50)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out-dir", default="/tmp/scratchgpt-recipe")
    p.add_argument("--no-cli", action="store_true", help="skip the `scratchgpt train` row")
    p.add_argument("--side", choices=["ours", "torch"], help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.side:
        return child(a)
    import platform
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    from scratchgpt.kernels import blas
    print(f"recipe: {a.max_iters} iterations, evaluations of {a.eval_iters} batches; {a.threads} thread(s); {cpu}; "
          f"our products on {'MKL' if blas.library() == 'mkl' else 'NumPy BLAS'}; "
          f"load average {os.getloadavg()[0]:.2f}")
    rows = {"torch": side(a, "torch"), "ours": side(a, "ours")}
    if not a.no_cli:
        rows["ours/cli"] = cli(a)
    print(f"{'side':9s} {'wall s':>8s} {'steps s':>8s} {'evals s':>8s} {'val loss':>9s}")
    for name, r in rows.items():
        print(f"{name:9s} {r['wall_s']:8.1f} {r['step_s']:8.1f} {r['eval_s']:8.1f} {r['val_loss']:9.4f}")
    t, o = rows["torch"], rows["ours"]
    print(f"ours / torch wall time: {o['wall_s'] / t['wall_s']:.3f} (target <= 0.9); "
          f"val loss difference {o['val_loss'] - t['val_loss']:+.4f} (target within 0.02)")


if __name__ == "__main__":
    main()
