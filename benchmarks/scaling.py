"""Data-parallel scaling: tokens/s and the all-reduce's share of the step for N MPI processes,
against one process with as many threads as the N processes have together.

    python benchmarks/scaling.py [--configs tiny,small,gpt2] [--procs 1,2] [--steps 10]

Each row is one training step as `scratchgpt train` runs it (train._step: forward, backward,
the gradient all-reduce, clipping, AdamW) on fixed random global batches of the config's size,
median over --steps after one warm-up step. Under `mpiexec -n N` each rank gets cores / N
threads (scratchgpt/distributed.py); the one-process row uses every core. "all-reduce" is the
time spent in the gradient all-reduce (including waiting for the slower rank; for ZeRO-1 rows,
its whole optimizer step: reduce-scatter, AdamW on the rank's slice, all-gather), "MB/step" the
bytes of the flat gradient buffer each rank contributes, "AdamW MB/rank" the optimizer state
each rank holds, "peak RSS" the largest resident memory of any rank.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

CONFIGS = {          # benchmarks/train.py's shapes; gpt2 is GPT-2 small (124M) at a shorter context
    "tiny": dict(vocab_size=65, context_length=64, emb_dim=128, n_heads=4, n_layers=4, batch=32),
    "small": dict(vocab_size=65, context_length=256, emb_dim=384, n_heads=6, n_layers=6, batch=16),
    "gpt2": dict(vocab_size=50257, context_length=256, emb_dim=768, n_heads=12, n_layers=12, batch=2),
}


def worker(config, steps, zero1=False):
    """Run inside each process (rank): time `steps` training steps; rank 0 prints one JSON line."""
    import scratchgpt as sg              # first: under mpiexec it sets the threads before NumPy loads
    import numpy as np
    from scratchgpt import distributed
    from scratchgpt.train import TrainConfig, _step

    world = distributed.world()
    c = dict(CONFIGS[config])
    batch = c.pop("batch")
    model = sg.GPTModel(sg.GPTConfig(**c), seed=0)
    opt = (distributed.ZeroAdamW(model, world, lr=1e-4, weight_decay=0.1) if zero1 and world.size > 1
           else sg.AdamW(model, lr=1e-4, weight_decay=0.1))
    cfg = TrainConfig(batch_size=batch, context_length=c["context_length"])
    r = np.random.default_rng(0)
    x = r.integers(0, c["vocab_size"], (batch, c["context_length"]))

    class Batches:                                      # the same global batch every step
        def next(self):
            return x, np.roll(x, -1, axis=1)

    reduce_s = []
    plain_sum = world.sum_

    def timed_sum(a):                                   # time the gradient all-reduce
        t = time.perf_counter()
        plain_sum(a)
        reduce_s.append(time.perf_counter() - t)
        return a
    world.sum_ = timed_sum
    if isinstance(opt, distributed.ZeroAdamW):          # its communication lives in its step
        plain_step = opt.step

        def timed_step(max_norm):
            t = time.perf_counter()
            out = plain_step(max_norm)
            reduce_s.append(time.perf_counter() - t)
            return out
        opt.step = timed_step
    step_s = []
    for i in range(steps + 1):
        if world.size > 1:
            world.comm.Barrier()                        # every rank starts the step together
        t = time.perf_counter()
        _step(model, opt, Batches(), cfg, 1e-4, world)
        step_s.append(time.perf_counter() - t)
    step, red = float(np.median(step_s[1:])), (float(np.median(reduce_s[1:])) if reduce_s else 0.0)
    adam = opt.adamw if zero1 and world.size > 1 else opt
    rss = world.gather(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3)      # MB, per rank
    if world.rank == 0:
        print(json.dumps({"config": config, "procs": world.size, "threads": os.environ.get("OMP_NUM_THREADS"),
                          "params": model.num_parameters(), "step_s": step,
                          "tokens_per_s": batch * c["context_length"] / step,
                          "allreduce_s": red if world.size > 1 else 0.0,
                          "mb_per_step": model.flat_grads.nbytes / 1e6,
                          "adamw_mb_per_rank": (adam.m.nbytes + adam.v.nbytes) / 1e6, "peak_rss_mb": max(rss)}))


def allreduce_worker(mb, repeats):
    """Under mpiexec: the median time of one in-place all-reduce of `mb` MB of float32 (rank 0 prints)."""
    from scratchgpt import distributed
    import numpy as np
    world = distributed.world()
    x = np.ones(int(mb * 1e6) // 4, dtype=np.float32)
    times = []
    for _ in range(repeats + 1):
        world.comm.Barrier()
        t = time.perf_counter()
        world.sum_(x)
        times.append(time.perf_counter() - t)
    if world.rank == 0:
        print(json.dumps({"mb": mb, "procs": world.size, "allreduce_s": float(np.median(times[1:]))}))


def run(config, procs, steps, threads, zero1=False):
    env = {k: v for k, v in os.environ.items()          # mpiexec ranks: share_cores_between_ranks decides
           if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")}
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", config, "--steps", str(steps)]
    cmd += ["--zero1"] if zero1 else []
    if procs > 1:
        cmd = [os.path.join(os.path.dirname(sys.executable), "mpiexec"), "-n", str(procs)] + cmd
    else:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
            env[var] = str(threads)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    row = json.loads(out.strip().splitlines()[-1])
    row["threads"] = int(row["threads"] or threads)
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", default="tiny,small,gpt2")
    p.add_argument("--procs", default="1,2", help="process counts to run under mpiexec, e.g. 1,2,4")
    p.add_argument("--steps", type=int, default=10, help="timed steps per row (the gpt2 shape takes at most 3)")
    p.add_argument("--zero1", action="store_true", help="add rows with ZeRO-1 (AdamW state sharded) for N > 1")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--allreduce-worker", type=float, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(a.worker, a.steps, a.zero1)
    if a.allreduce_worker:
        return allreduce_worker(a.allreduce_worker, a.steps)
    cores = os.cpu_count()
    print(f"{cores} cores; each row: median of the timed steps; N x T = N processes of T threads\n")
    print("| config | params | processes x threads | tokens/s | step ms | all-reduce ms | all-reduce share "
          "| MB/step | AdamW MB/rank | peak RSS MB/rank |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for config in a.configs.split(","):
        steps = min(a.steps, 3) if config == "gpt2" else a.steps
        for n in (int(v) for v in a.procs.split(",")):
            # one process: with every core's thread, and (the per-core baseline) with one thread
            for zero1, threads in ([(False, cores), (False, 1)] if n == 1 else
                                   [(False, None), (True, None)] if a.zero1 else [(False, None)]):
                if n == 1 and threads == 1 and cores == 1:
                    continue
                row = run(config, n, steps, threads=threads, zero1=zero1)
                print(f"| {config} | {row['params'] / 1e6:.2f}M | {n} x {row['threads']}{' ZeRO-1' if zero1 else ''} "
                      f"| {row['tokens_per_s']:,.0f} | {row['step_s'] * 1e3:.1f} | {row['allreduce_s'] * 1e3:.1f} | "
                      f"{row['allreduce_s'] / row['step_s']:.1%} | {row['mb_per_step']:.1f} | "
                      f"{row['adamw_mb_per_rank']:.1f} | {row['peak_rss_mb']:,.0f} |", flush=True)
    # the all-reduce alone, for the time model in docs/distributed.md: t = alpha + bytes / bandwidth
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    print("\n| processes | MB | all-reduce ms | algorithm bandwidth GB/s (MB / time) |")
    print("| ---: | ---: | ---: | ---: |")
    for n in (int(v) for v in a.procs.split(",") if int(v) > 1):
        for mb in (0.004, 3.2, 43.1, 497.8):            # 1,000 floats; the tiny, small, gpt2 gradients
            out = subprocess.run([mpiexec, "-n", str(n), sys.executable, os.path.abspath(__file__),
                                  "--allreduce-worker", str(mb), "--steps", str(a.steps)],
                                 capture_output=True, text=True, check=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            print(f"| {n} | {mb:g} | {row['allreduce_s'] * 1e3:.3f} | {mb / 1e3 / row['allreduce_s']:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
