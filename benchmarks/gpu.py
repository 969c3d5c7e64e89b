"""Training-step speed and peak memory on a GPU: ours on CuPy against torch eager, in one run.

    pip install --no-deps -e .          # once, from the repository root: maps kernels/ to scratchgpt.kernels
    python benchmarks/gpu.py [--configs tiny,small,gpt2] [--steps 5] [--repeats 3] [--flash small,gpt2]

Needs CuPy, numba.cuda and torch built for the same CUDA (e.g. cupy-cuda13x, numba-cuda[cu13] and a
CUDA 13 torch). The editable install matters: the kernels live in the top-level kernels/ folder and
are imported as scratchgpt.kernels, a name only the install creates (PYTHONPATH=. is not enough).

Each measurement is a full step (forward + loss + backward + grad clip + AdamW), float32, on a fixed
random batch that starts on the host every step (the token batch goes in, the loss comes out as a
Python float, for ours and torch alike). Columns:

    ours kernels   the CuPy backend with the numba.cuda kernels (SCRATCHGPT_KERNELS=numba)
    ours arrays    the CuPy backend with the reference array code of the ops (=numpy)
    ours tf32      ours kernels with --precision tf32 (float32 products on TF32 tensor cores)
    ours graph     ours kernels, each step's forward and backward replayed as a CUDA graph (--cuda-graph)
    graph tf32     ours graph with --precision tf32
    graph bf16     ours graph with --precision bf16 (bf16 products, float32 everything else)
    torch fp32     torch eager, float32 matmuls in full float32 (TF32 off)
    torch tf32     torch eager, TF32 tensor-core matmuls (torch.set_float32_matmul_precision("high"))
    torch bf16     torch eager under bf16 autocast, with SDPA (flash) attention and the fused AdamW

With --flash CONFIGS, those configs also run ours graph, graph tf32 and graph bf16 with
SCRATCHGPT_ATTENTION=flash (kernels/cuda_flash.py: no (B, H, T, T) weights stored), printed in a
table of their own against the same precision's cuBLAS-attention graph and torch.

"ours kernels" and "ours arrays" do not use TF32: scratchgpt.precision.use("fp32") sets CuPy's
float32 products to full float32 whatever CUPY_TF32 says; "ours tf32" is precision.use("tf32").
tokens/s is the median over repeats of `steps` steps each, timed between two device synchronisations,
after warm-up steps (numba compiles the kernels on the first one). Peak memory is measured on one
more step: for ours the high-water mark of CuPy's memory pool in use (a counting allocator around
the pool) and the pool's reserved total, plus, for the graph columns, every block of the graph's own
pool (the recording's activations); for torch max_memory_allocated and max_memory_reserved.
Both include the parameters, gradients and AdamW state; neither includes the CUDA context, cuBLAS
workspaces outside the allocator, or numba's loaded modules.
"""
import argparse
import gc
import json
import os
import sys
import time

CONFIGS = {
    "tiny": dict(vocab_size=65, context_length=64, emb_dim=128, n_heads=4, n_layers=4, batch=32),
    "small": dict(vocab_size=65, context_length=256, emb_dim=384, n_heads=6, n_layers=6, batch=16),
    "gpt2": dict(vocab_size=50257, context_length=1024, emb_dim=768, n_heads=12, n_layers=12, batch=8),
}


def model_config(cfgd):
    return {k: v for k, v in cfgd.items() if k != "batch"}


def host_batch(cfgd, seed=0):
    import numpy as np
    r = np.random.default_rng(seed)
    shape = (cfgd["batch"], cfgd["context_length"])
    return r.integers(0, cfgd["vocab_size"], shape), r.integers(0, cfgd["vocab_size"], shape)


# ---------------------------------------------------------------- ours
class PeakCounter:
    """Wraps CuPy's memory pool: remembers the most bytes in use after any allocation."""

    def __init__(self, pool):
        self.pool, self.peak = pool, pool.used_bytes()

    def malloc(self, size):
        mem = self.pool.malloc(size)
        self.peak = max(self.peak, self.pool.used_bytes())
        return mem


def bench_ours(cfgd, kernels, steps, repeats, warmup, prec="fp32", graph=False, attention="gemm"):
    import cupy
    import scratchgpt as sg
    from scratchgpt import backend, precision

    os.environ["SCRATCHGPT_ATTENTION"] = attention      # read by kernels/ops.py on every call
    backend.use("cupy")
    backend.use_kernels(kernels)
    try:
        precision.use(prec)
    except ValueError as e:               # bf16 without the GPU kernels
        return dict(error="refused", why=str(e))
    pool = cupy.get_default_memory_pool()
    try:
        model = sg.GPTModel(sg.GPTConfig(**model_config(cfgd)), seed=0, dtype="float32")
        opt = sg.AdamW(model, lr=1e-4, weight_decay=0.1)
        used = "numba.cuda kernels" if hasattr(backend.ops, "kernels") else "array code"
        x, y = host_batch(cfgd)
        if graph:
            from scratchgpt import cuda_graph
            why = cuda_graph.usable(model)
            if why:
                return dict(error="unusable", why=why)
            graph_step = cuda_graph.GraphStep(model)
            used = "numba.cuda kernels, CUDA graph"

        def step():
            model.zero_grad()
            if graph:
                graph_step(x, y)          # the same work, recorded once and replayed
            else:
                model.loss(x, y)          # the batch goes in, the loss comes out (one sync)
                model.backward()
            sg.clip_grad_norm(model, 1.0)
            opt.step()

        sync = cupy.cuda.Device().synchronize
        rate = timed(step, sync, cfgd, steps, repeats, warmup)
        if graph and graph_step.failed:
            return dict(error="failed", why=graph_step.failed)
        cache = type(model.trf_blocks[0].att.cache).__name__
        if attention == "flash":
            if cache != "FlashAttentionCache":
                return dict(error="not flash", why=f"the attention ran with a {cache}: numba.cuda kernels off?")
            used += ", flash attention"
        counter = PeakCounter(pool)
        cupy.cuda.set_allocator(counter.malloc)
        try:
            step()
            sync()
        finally:
            cupy.cuda.set_allocator(pool.malloc)
        peak, reserved = counter.peak, pool.total_bytes()
        if graph:                         # plus the blocks of the graph's own pool (all in use at a replay)
            peak += graph_step.pool.total_bytes()
            reserved += graph_step.pool.total_bytes()
        return dict(tokens_per_s=rate, peak_bytes=peak, reserved_bytes=reserved, path=used)
    finally:
        model = opt = step = None
        gc.collect()
        pool.free_all_blocks()
        backend.use_kernels(True)
        precision.use("fp32")
        os.environ.pop("SCRATCHGPT_ATTENTION", None)


# ---------------------------------------------------------------- torch

def bench_torch(cfgd, tf32, steps, repeats, warmup, bf16=False):
    import torch
    from scratchgpt.model import GPTConfig
    from torch_gpt import TorchGPT

    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = TorchGPT(GPTConfig(**model_config(cfgd)), sdpa=bf16).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=bf16)
    import contextlib
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    xh, yh = (torch.from_numpy(a) for a in host_batch(cfgd))

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = model(xh.to(dev), yh.to(dev))
        loss.item()                       # as ours: the loss as a Python float every step
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    try:
        rate = timed(step, torch.cuda.synchronize, cfgd, steps, repeats, warmup)
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return dict(tokens_per_s=rate, peak_bytes=torch.cuda.max_memory_allocated(),
                    reserved_bytes=torch.cuda.max_memory_reserved())
    finally:
        model = opt = step = None
        gc.collect()
        torch.cuda.empty_cache()
        torch.set_float32_matmul_precision("highest")


# ---------------------------------------------------------------- measuring

def timed(step, sync, cfgd, steps, repeats, warmup):
    """Median tokens/s over `repeats` runs of `steps` steps, each between two synchronisations."""
    for _ in range(warmup):
        step()
    sync()
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        rates.append(steps * cfgd["batch"] * cfgd["context_length"] / (time.perf_counter() - t))
    return sorted(rates)[len(rates) // 2]


def run_one(fn, *args):
    """fn(*args), or {'error': 'out of memory'} when the GPU runs out (e.g. gpt2 on a small card)."""
    try:
        return fn(*args)
    except Exception as e:            # cupy's and torch's OutOfMemoryError have no common base
        if "out of memory" not in str(e).lower():
            raise
    gc.collect()                      # outside the except block: the traceback's frames are gone
    import cupy
    import torch
    cupy.get_default_memory_pool().free_all_blocks()
    torch.cuda.empty_cache()
    return dict(error="out of memory")


def describe():
    import cupy
    import numba
    import torch
    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    from scratchgpt.kernels import cuda as cuda_kernels
    return (f"{name}, {props['totalGlobalMem'] / 2**30:.0f} GiB | cupy {cupy.__version__} | "
            f"numba {numba.__version__} (numba.cuda usable: {cuda_kernels.available()}) | "
            f"torch {torch.__version__} (CUDA {torch.version.cuda})")


def fmt_rate(r):
    return f"{r['tokens_per_s']:,.0f}" if "tokens_per_s" in r else r.get("error", "-")


def fmt_mem(r):
    return f"{r['peak_bytes'] / 2**20:,.0f}" if "peak_bytes" in r else r.get("error", "-")


def ratio(a, b, key):
    if key in a and key in b and b[key]:
        return f"{a[key] / b[key]:.2f}x"
    return "-"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="tiny,small,gpt2", help=f"comma-separated, of {list(CONFIGS)}")
    ap.add_argument("--steps", type=int, default=5, help="steps per timed repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--ours-only", action="store_true", help="skip torch (a dry run without a CUDA torch)")
    ap.add_argument("--flash", default="", help="comma-separated configs (of --configs) that also run the "
                    "graph columns with SCRATCHGPT_ATTENTION=flash")
    a = ap.parse_args()
    print(describe(), flush=True)

    results = {}
    for name in a.configs.split(","):
        cfgd, opts = CONFIGS[name], (a.steps, a.repeats, a.warmup)
        r = results[name] = {}
        r["ours kernels"] = run_one(bench_ours, cfgd, True, *opts)
        r["ours arrays"] = run_one(bench_ours, cfgd, False, *opts)
        r["ours tf32"] = run_one(bench_ours, cfgd, True, *opts, "tf32")
        r["ours graph"] = run_one(bench_ours, cfgd, True, *opts, "fp32", True)
        r["graph tf32"] = run_one(bench_ours, cfgd, True, *opts, "tf32", True)
        r["graph bf16"] = run_one(bench_ours, cfgd, True, *opts, "bf16", True)
        if name in a.flash.split(","):
            for prec in ("fp32", "tf32", "bf16"):
                r[f"flash {prec}"] = f = run_one(bench_ours, cfgd, True, *opts, prec, True, "flash")
                print(f"{name}: flash {prec}: {fmt_rate(f)} tokens/s, {fmt_mem(f)} MiB", flush=True)   # kept if timed out
        for col in ("ours graph", "graph tf32", "graph bf16", "flash fp32", "flash tf32", "flash bf16"):
            if "why" in r.get(col, {}):
                print(f"note: {name}: {col}: {r[col]['why']}")
        for col, tf32, bf16 in (("torch fp32", False, False), ("torch tf32", True, False), ("torch bf16", True, True)):
            r[col] = dict(error="skipped") if a.ours_only else run_one(bench_torch, cfgd, tf32, *opts, bf16)
        path = r["ours kernels"].get("path")
        if path and path != "numba.cuda kernels":
            print(f"note: {name}: 'ours kernels' ran the {path} (numba.cuda is not usable here)")
        print(f"{name}: done", flush=True)

    cols = ["ours kernels", "ours arrays", "ours tf32", "ours graph", "graph tf32", "graph bf16",
            "torch fp32", "torch tf32", "torch bf16"]
    print("\ntokens/s (higher is better); vs fp32 = ours graph / torch fp32, vs tf32 = graph tf32 / torch tf32, "
          "vs bf16 = graph bf16 / torch bf16")
    print(f"{'config':7} {'tokens':>6} " + " ".join(f"{c:>13}" for c in cols) + f" {'vs fp32':>8} {'vs tf32':>8} {'vs bf16':>8}")
    for name, r in results.items():
        cfgd = CONFIGS[name]
        print(f"{name:7} {cfgd['batch'] * cfgd['context_length']:6} " + " ".join(f"{fmt_rate(r[c]):>13}" for c in cols)
              + f" {ratio(r['ours graph'], r['torch fp32'], 'tokens_per_s'):>8}"
              + f" {ratio(r['graph tf32'], r['torch tf32'], 'tokens_per_s'):>8}"
              + f" {ratio(r['graph bf16'], r['torch bf16'], 'tokens_per_s'):>8}")
    print("\npeak device memory in use during a step, MiB (lower is better); ratio = ours graph / torch fp32")
    print(f"{'config':7} " + " ".join(f"{c:>13}" for c in cols) + f" {'ratio':>8}")
    for name, r in results.items():
        print(f"{name:7} " + " ".join(f"{fmt_mem(r[c]):>13}" for c in cols)
              + f" {ratio(r['ours graph'], r['torch fp32'], 'peak_bytes'):>8}")
    flash = [name for name in results if "flash fp32" in results[name]]
    if flash:
        print("\nflash attention (SCRATCHGPT_ATTENTION=flash), CUDA graph: tokens/s and peak MiB, against the graph "
              "with the cuBLAS attention and torch at the same precision")
        print(f"{'config':7} {'prec':4} {'flash':>9} {'graph':>9} {'torch':>9} {'vs graph':>8} {'vs torch':>8} "
              f"{'flash MiB':>9} {'graph MiB':>9} {'torch MiB':>9} {'mem/torch':>9}")
        for name in flash:
            r = results[name]
            for prec, graph_col in (("fp32", "ours graph"), ("tf32", "graph tf32"), ("bf16", "graph bf16")):
                f, g, t = r[f"flash {prec}"], r[graph_col], r[f"torch {prec}"]
                print(f"{name:7} {prec:4} {fmt_rate(f):>9} {fmt_rate(g):>9} {fmt_rate(t):>9} "
                      f"{ratio(f, g, 'tokens_per_s'):>8} {ratio(f, t, 'tokens_per_s'):>8} "
                      f"{fmt_mem(f):>9} {fmt_mem(g):>9} {fmt_mem(t):>9} {ratio(f, t, 'peak_bytes'):>9}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(device=describe(), configs=CONFIGS, results=results), f, indent=1)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
