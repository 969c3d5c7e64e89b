"""Where a training step's time goes on CuPy, op by op: each op timed between two synchronisations.

    python benchmarks/gpu_profile.py [--configs tiny,gpt2] [--steps 3] [--precision fp32]

Every op of backend.ops (the FastOps over kernels/cuda.py), the cuBLAS products, clip and AdamW
are wrapped: the GPU is synchronised before and after each call, so each op's time is its own
kernels plus its launch cost (the synchronisations remove the overlap of host and GPU that a
real step has, so the total is larger than a real step: read the shares, not the sum). Times are
inclusive: attention_forward's row contains the products it issues, which also appear under gemm.
"""
import argparse
import collections
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu import CONFIGS  # noqa: E402
from train import ours_step  # noqa: E402  (the same eager step as on the CPU)


def profile(name, steps, prec):
    import cupy

    import scratchgpt as sg
    from scratchgpt import backend, precision
    from scratchgpt.kernels import cuda as K
    backend.use("cupy")
    precision.use(prec)
    cfgd = CONFIGS[name]
    model, opt, step = ours_step(cfgd)
    sync = cupy.cuda.Device().synchronize
    times, calls = collections.defaultdict(float), collections.Counter()

    def timed(label, f):
        def call(*a, **kw):
            sync()
            t = time.perf_counter()
            r = f(*a, **kw)
            sync()
            times[label] += time.perf_counter() - t
            calls[label] += 1
            return r
        return call

    step()                                           # compile and warm up, untimed
    sync()
    ops = backend.ops
    for attr in dir(ops):
        if attr.endswith(("_forward", "_backward")):
            setattr(ops, attr, timed(attr, getattr(ops, attr)))
    gemm = K.gemm
    K.gemm = timed("gemm (cuBLAS)", gemm)
    clip = sg.clip_grad_norm                         # step() looks both up when it runs
    sg.clip_grad_norm = timed("clip_grad_norm", clip)
    opt.step = timed("AdamW step", opt.step)
    try:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        total = (time.perf_counter() - t0) / steps
    finally:
        K.gemm, sg.clip_grad_norm = gemm, clip
        backend.use("numpy")
        backend.use("cupy")
    print(f"\n{name}: {cfgd['batch']} x {cfgd['context_length']} tokens, {prec}; one synchronised step "
          f"{total * 1e3:.1f} ms")
    print(f"{'op':32} {'ms/step':>9} {'share':>7} {'calls/step':>10}")
    for label, t in sorted(times.items(), key=lambda kv: -kv[1]):
        print(f"{label:32} {t / steps * 1e3:9.2f} {t / steps / total:7.1%} {calls[label] / steps:10.0f}")
    import gc
    del model, opt, step
    gc.collect()
    cupy.get_default_memory_pool().free_all_blocks()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="tiny,gpt2")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--precision", default="fp32")
    a = ap.parse_args()
    for name in a.configs.split(","):
        profile(name, a.steps, a.precision)


if __name__ == "__main__":
    main()
