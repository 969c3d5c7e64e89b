"""The row kernels of kernels/cuda.py (LayerNorm, causal softmax) at the shapes of the benchmark
models, for several block sizes: GPU time per call from CUDA events, launch cost excluded.

    python benchmarks/gpu_kernels.py [--reps 20]

A block handles one row with up to ROW_THREADS threads (SOFTMAX_THREADS for the softmax,
kernels/cuda.py); fewer threads per row
means fewer tree-reduction levels and more rows in flight, more means more loads in parallel per
row. This prints which cap is fastest at each shape, and the bytes each call moves per
microsecond (GB/s) against the card's memory bandwidth.
"""
import argparse

SHAPES = {   # name: (kind, shape)
    "LN gpt2": ("layernorm", (8192, 768)),
    "LN small": ("layernorm", (4096, 384)),
    "LN tiny": ("layernorm", (2048, 128)),
    "softmax gpt2": ("softmax", (96, 1024, 1024)),
    "softmax small": ("softmax", (96, 256, 256)),
    "softmax tiny": ("softmax", (128, 64, 64)),
}
CAPS = (32, 64, 128, 256)        # at most the shared buffers' size, ROW_THREADS = 256


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=20)
    a = ap.parse_args()
    import cupy

    from scratchgpt.kernels import cuda as K
    default = K.ROW_THREADS, K.SOFTMAX_THREADS
    r = cupy.random.default_rng(0)
    print(f"{'shape':14} {'kind':8} " + " ".join(f"{f'cap {c} us':>12}" for c in CAPS) + "   (GB/s at the best cap)")
    for name, (kind, shape) in SHAPES.items():
        x = r.standard_normal(shape, dtype=cupy.float32)
        if kind == "layernorm":
            w = cupy.ones(shape[1], cupy.float32)
            b = cupy.zeros(shape[1], cupy.float32)
            dout = r.standard_normal(shape, dtype=cupy.float32)

            def call():
                out, mean, rstd = K.layernorm_forward(x, w, b)
                K.layernorm_backward(dout, x, mean, rstd, w)
            moved = 4 * x.size * 5                     # forward: x in, out; backward: dout, x in, dx (+ param parts)
        else:
            dy = r.standard_normal(shape, dtype=cupy.float32)

            def call():
                y = K.causal_softmax_forward(x)
                K.causal_softmax_backward(dy, y)
            moved = 4 * x.size // 2 * 5                # the causal half: x in, y out; dy, y in, dx out
        call()                                         # compiled at the default: the shared buffers' size
        times = []
        for cap in CAPS:
            K.ROW_THREADS = K.SOFTMAX_THREADS = cap
            try:
                call()
                start, stop = cupy.cuda.Event(), cupy.cuda.Event()
                start.record()
                for _ in range(a.reps):
                    call()
                stop.record()
                stop.synchronize()
                times.append(cupy.cuda.get_elapsed_time(start, stop) * 1e3 / a.reps)
            finally:
                K.ROW_THREADS, K.SOFTMAX_THREADS = default
        best = min(times)
        print(f"{name:14} {kind:8} " + " ".join(f"{t:12.1f}" for t in times) + f"   ({moved / best / 1e3:,.0f})")


if __name__ == "__main__":
    main()
