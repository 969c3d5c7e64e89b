"""Kernel launches per training step on CuPy: ours counted by hand, everything under nsys.

    python benchmarks/gpu_launches.py [--config tiny] [--steps 5]

Counts the numba.cuda kernel launches of one training step (forward, loss, backward, clip,
AdamW) by wrapping scratchgpt.kernels.cuda's one launch function. CuPy's own kernels
(elementwise, reductions) and cuBLAS's are not visible from Python: run this under
`nsys profile --capture-range=cudaProfilerApi` (benchmarks/gpu_check.sh does where nsys is
installed), which records the timed steps between cupy.cuda.profiler.start() and stop(), and
read the kernel instances in its cuda_gpu_kern_sum report.
"""
import argparse
import os
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--steps", type=int, default=5)
    a = ap.parse_args()
    import cupy
    import scratchgpt as sg
    from gpu import CONFIGS
    from train import ours_step     # the same eager step as on the CPU
    from scratchgpt import backend
    from scratchgpt.kernels import cuda as K

    backend.use("cupy")
    cfgd = CONFIGS[a.config]
    model, opt, step = ours_step(cfgd)
    step()                                   # compiles the kernels
    cupy.cuda.Device().synchronize()
    launches = [0]
    launch = K._launch

    def counted(*args, **kw):
        launches[0] += 1
        return launch(*args, **kw)

    K._launch = counted
    try:
        profiler = getattr(cupy.cuda, "profiler", None)
        if profiler is not None:
            profiler.start()
        for _ in range(a.steps):
            step()
        cupy.cuda.Device().synchronize()
        if profiler is not None:
            profiler.stop()
    finally:
        K._launch = launch
    path = "numba.cuda kernels" if K.available() and backend.ops is not sg.ops else "array code only"
    print(f"{a.config}: {launches[0] / a.steps:.0f} numba.cuda launches per step ({path}); "
          f"{a.steps} steps profiled")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
