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
from gpu import CONFIGS, host_batch, model_config  # noqa: E402


def profile(name, steps, prec):
    import cupy

    import scratchgpt as sg
    from scratchgpt import backend, precision
    from scratchgpt.kernels import cuda as K
    backend.use("cupy")
    precision.use(prec)
    cfgd = CONFIGS[name]
    model = sg.GPTModel(sg.GPTConfig(**model_config(cfgd)), seed=0, dtype="float32")
    opt = sg.AdamW(model, lr=1e-4, weight_decay=0.1)
    x, y = host_batch(cfgd)
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

    def step():
        model.zero_grad()
        model.loss(x, y)
        model.backward()
        sg.clip_grad_norm(model, 1.0)
        opt.step()

    step()                                           # compile and warm up, untimed
    sync()
    ops = backend.ops
    for attr in dir(ops):
        if attr.endswith(("_forward", "_backward")):
            setattr(ops, attr, timed(attr, getattr(ops, attr)))
    gemm = K.gemm
    K.gemm = timed("gemm (cuBLAS)", gemm)
    clip, step_fn = sg.clip_grad_norm, opt.step
    sg_clip = timed("clip_grad_norm", clip)
    opt.step = timed("AdamW step", step_fn)
    try:
        t0 = time.perf_counter()
        for _ in range(steps):
            model.zero_grad()
            model.loss(x, y)
            model.backward()
            sg_clip(model, 1.0)
            opt.step()
        sync()
        total = (time.perf_counter() - t0) / steps
    finally:
        K.gemm = gemm
        backend.use("numpy")
        backend.use("cupy")
    print(f"\n{name}: {cfgd['batch']} x {cfgd['context_length']} tokens, {prec}; one synchronised step "
          f"{total * 1e3:.1f} ms")
    print(f"{'op':32} {'ms/step':>9} {'share':>7} {'calls/step':>10}")
    for label, t in sorted(times.items(), key=lambda kv: -kv[1]):
        print(f"{label:32} {t / steps * 1e3:9.2f} {t / steps / total:7.1%} {calls[label] / steps:10.0f}")
    import gc
    model = opt = None
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
