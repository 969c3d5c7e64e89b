"""Speed of the numba kernels against careful plain-NumPy versions of the same ops.

Forward + backward of each op (causal softmax, layernorm, GELU, fused attention, the embedding's
scatter-add, cross-entropy; generation's attention for one new token, forward only) at the shapes
of the "tiny" and "small" models; median of a few repeats after a warm-up call (which also
triggers numba's compile, or loads it from the cache). Numba columns: what the library runs (the
serial or the parallel twin of each kernel, picked by input size, see kernels/_common.py),
allocating fresh outputs on every call as the NumPy versions do; the same writing into buffers
reused across calls (`out=`), as a training step can; and each twin forced, to show where the size
threshold should sit.

    python benchmarks/kernels.py                  # float32, both models, and the tiny training step
    python benchmarks/kernels.py --dtype float64 --model tiny --repeats 5
    NUMBA_NUM_THREADS=1 python benchmarks/kernels.py --stat min      # one core, best of repeats

Then one full training step of the tiny model (vocab 65, 4 layers, 4 heads, emb 128, context
64, batch 32: forward, loss, backward, clip, AdamW) with the kernels on and off
(scratchgpt.backend.use_kernels), alternating in one process so that the machine's drift hits
both; medians of --step-repeats rounds.

The first line printed is the cost of one hand-off to numba's thread pool (an empty parallel
loop): the reason small inputs run serially.
"""

import argparse
import math
import time

import numba
import numpy as np

import scratchgpt.kernels as K
from scratchgpt.kernels import _common
from scratchgpt.ops import cached_attention_forward as cached_numpy

# (rows B*T, emb_dim C, attention matrices B*H, context T, vocab V)
MODELS = {
    "tiny": dict(rows=2048, C=128, heads_x_batch=128, T=64, V=65),
    "small": dict(rows=4096, C=384, heads_x_batch=96, T=256, V=65),
}


# ---------------------------------------------------------------- NumPy references (in-place where it helps)

def softmax_numpy(x, mask):
    y = np.where(mask, -np.inf, x)               # (N, T, T), -inf above the diagonal
    y -= y.max(axis=-1, keepdims=True)
    np.exp(y, out=y)
    y /= y.sum(axis=-1, keepdims=True)
    return y


def softmax_backward_numpy(dy, y):
    dx = dy * y
    s = dx.sum(axis=-1, keepdims=True)           # (N, T, 1)
    np.subtract(dy, s, out=dx)
    dx *= y
    return dx


def layernorm_numpy(x, w, b, eps=1e-5):
    mean = x.mean(axis=-1, keepdims=True)        # (N, 1)
    xhat = x - mean
    var = np.einsum("nc,nc->n", xhat, xhat)[:, None] / x.shape[1]
    rstd = 1.0 / np.sqrt(var + eps)
    xhat *= rstd
    out = xhat * w
    out += b
    return out, mean[:, 0], rstd[:, 0]


def layernorm_backward_numpy(dout, x, mean, rstd, w):
    C = x.shape[1]
    xhat = x - mean[:, None]
    xhat *= rstd[:, None]
    db = dout.sum(axis=0)
    dw = np.einsum("nc,nc->c", dout, xhat)
    dxhat = dout * w
    m1 = dxhat.mean(axis=-1, keepdims=True)
    m2 = np.einsum("nc,nc->n", dxhat, xhat)[:, None] / C
    dxhat -= m1
    xhat *= m2
    dxhat -= xhat
    dxhat *= rstd[:, None]
    return dxhat, dw, db


_S = math.sqrt(2.0 / math.pi)


def gelu_numpy(x):
    y = x * x
    y *= x
    y *= 0.044715
    y += x
    y *= _S
    np.tanh(y, out=y)
    y += 1.0
    y *= x
    y *= 0.5
    return y


def gelu_backward_numpy(dout, x):
    x2 = x * x
    th = x2 * 0.044715
    th *= x
    th += x
    th *= _S
    np.tanh(th, out=th)                          # tanh(u)
    du = x2
    du *= 3 * 0.044715
    du += 1.0
    du *= _S                                     # du/dx
    t2 = th * th
    np.subtract(1.0, t2, out=t2)
    t2 *= x
    t2 *= du
    th += 1.0
    th += t2
    th *= 0.5
    th *= dout
    return th


def cross_entropy_numpy(logits, targets, ignore_index=-100):
    N = logits.shape[0]
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    s = e.sum(axis=-1, keepdims=True)            # (N, 1)
    valid = targets != ignore_index
    n = int(valid.sum())
    rows = np.arange(N)[valid]
    loss = float((np.log(s[valid, 0]) - z[rows, targets[valid]]).sum() / n)
    e /= s
    e[rows, targets[valid]] -= 1.0
    e[~valid] = 0.0
    e /= n
    return loss, e


def attention_numpy(qkv, n_heads, dy, mask):
    """Causal attention forward and backward as batched matmuls over the full T x T square (the
    array code's formulation), from fused qkv (B, T, 3C) and dy (B, T, C) to dqkv."""
    B, T, C3 = qkv.shape
    hd = C3 // 3 // n_heads
    q, k, v = qkv.reshape(B, T, 3, n_heads, hd).transpose(2, 0, 3, 1, 4)      # (B, H, T, hd) each
    a = softmax_numpy((q @ k.transpose(0, 1, 3, 2)) * (1.0 / math.sqrt(hd)), mask)
    y = (a @ v).transpose(0, 2, 1, 3).reshape(B, T, -1)                        # the forward's output
    g = dy.reshape(B, T, n_heads, hd).transpose(0, 2, 1, 3)
    ds = softmax_backward_numpy(g @ v.transpose(0, 1, 3, 2), a) * (1.0 / math.sqrt(hd))
    dqkv = np.stack((ds @ k, ds.transpose(0, 1, 3, 2) @ q, a.transpose(0, 1, 3, 2) @ g))
    return y, dqkv.transpose(1, 3, 0, 2, 4).reshape(B, T, C3)


# ---------------------------------------------------------------- timing

@numba.njit(parallel=True)
def _empty_loop(a):
    for i in numba.prange(a.shape[0]):
        a[i] += 1.0


def launch_us(n=2000):
    """Microseconds to hand a trivial loop to numba's thread pool and wait for it."""
    a = np.zeros(2)
    _empty_loop(a)
    t0 = time.perf_counter()
    for _ in range(n):
        _empty_loop(a)
    return 1e6 * (time.perf_counter() - t0) / n


def time_ms(fn, repeats, stat):
    fn()                                         # warm-up (and numba compile / cache load)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times) if stat == "median" else np.min(times))


def cases(model, dtype, rng):
    m = MODELS[model]
    rows, C, N, T, V = m["rows"], m["C"], m["heads_x_batch"], m["T"], m["V"]

    x = rng.standard_normal((N, T, T)).astype(dtype)
    dy = rng.standard_normal((N, T, T)).astype(dtype)
    mask = np.triu(np.ones((T, T), dtype=bool), k=1)
    att, datt = np.empty_like(x), np.empty_like(x)
    yield (f"causal softmax {N}x{T}x{T}",
           lambda: softmax_backward_numpy(dy, softmax_numpy(x, mask)),
           lambda: K.causal_softmax_backward(dy, K.causal_softmax_forward(x)),
           lambda: K.causal_softmax_backward(dy, K.causal_softmax_forward(x, out=att), out=datt))

    h = rng.standard_normal((rows, C)).astype(dtype)
    dh = rng.standard_normal((rows, C)).astype(dtype)
    w = (1 + 0.1 * rng.standard_normal(C)).astype(dtype)
    b = (0.1 * rng.standard_normal(C)).astype(dtype)

    def ln_np():
        _, mean, rstd = layernorm_numpy(h, w, b)
        return layernorm_backward_numpy(dh, h, mean, rstd, w)

    def ln_nb():
        _, mean, rstd = K.layernorm_forward(h, w, b)
        return K.layernorm_backward(dh, h, mean, rstd, w)

    yield f"layernorm {rows}x{C}", ln_np, ln_nb, None

    g = rng.standard_normal((rows, 4 * C)).astype(dtype)
    dg = rng.standard_normal((rows, 4 * C)).astype(dtype)
    act, dact = np.empty_like(g), np.empty_like(g)
    yield (f"gelu {rows}x{4 * C}",
           lambda: (gelu_numpy(g), gelu_backward_numpy(dg, g)),
           lambda: (K.gelu_forward(g), K.gelu_backward(dg, g)),
           lambda: (K.gelu_forward(g, out=act), K.gelu_backward(dg, g, out=dact)))

    B, H = rows // T, N // (rows // T)
    qkv = rng.standard_normal((B, T, 3 * C)).astype(dtype)
    dya = rng.standard_normal((B, T, C)).astype(dtype)
    ya, packed, dqkv = np.empty((B, T, C), dtype), np.empty((N, T * (T + 1) // 2), dtype), np.empty_like(qkv)

    def attn_nb(out=False):
        y, a = K.causal_attention_forward(qkv, H, **(dict(out=ya, att_out=packed) if out else {}))
        return K.causal_attention_backward(dya, qkv, a, H, **(dict(out=dqkv) if out else {}))

    yield (f"attention {B}x{T}x{C}, {H} heads", lambda: attention_numpy(qkv, H, dya, mask),
           attn_nb, lambda: attn_nb(out=True))

    # generation's step: one new token's attention over T - 1 cached ones (the reference: batched
    # products), 100 calls per timing since one takes microseconds
    q1 = rng.standard_normal((1, 1, 3 * C)).astype(dtype)
    k_cache, v_cache = rng.standard_normal((2, 1, H, T, C // H)).astype(dtype)
    yield (f"100 x cached attention, T {T}",
           lambda: [cached_numpy(q1, k_cache, v_cache, T - 1, H) for _ in range(100)],
           lambda: [K.cached_attention_forward(q1, k_cache, v_cache, T - 1, H) for _ in range(100)], None)

    ids = rng.integers(0, V, rows)
    table = np.zeros((V, C), dtype)
    yield (f"embedding backward {rows}x{C}", lambda: np.add.at(table, ids, dh),
           lambda: K.embedding_backward(dh, ids, out=table), None)

    logits = (2 * rng.standard_normal((rows, V))).astype(dtype)
    targets = rng.integers(0, V, rows)
    dlogits = np.empty_like(logits)
    yield (f"cross-entropy {rows}x{V}",
           lambda: cross_entropy_numpy(logits, targets),
           lambda: K.cross_entropy_forward_backward(logits, targets),
           lambda: K.cross_entropy_forward_backward(logits, targets, out=dlogits))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=[*MODELS, "all"], default="all")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--stat", choices=["median", "min"], default="median")
    p.add_argument("--step-repeats", type=int, default=20, help="rounds of the training step (0: skip it)")
    args = p.parse_args()

    rng = np.random.default_rng(0)
    print(f"numba {numba.__version__}, {numba.get_num_threads()} threads, threading layer "
          f"{numba.config.THREADING_LAYER}, {args.dtype}, forward+backward, {args.stat} of {args.repeats}")
    print(f"one launch of an empty parallel loop: {launch_us():.0f} us")
    print(f"{'model':6} {'op':28} {'numpy':>7} {'numba':>7} {'ratio':>6}  {'out=':>7} {'ratio':>6}  "
          f"{'serial':>7} {'parallel':>8}")
    for model in MODELS if args.model == "all" else [args.model]:
        for name, fn_numpy, fn_numba, fn_numba_out in cases(model, np.dtype(args.dtype), rng):
            t_np = time_ms(fn_numpy, args.repeats, args.stat)
            t_nb = time_ms(fn_numba, args.repeats, args.stat)
            row = f"{model:6} {name:28} {t_np:7.2f} {t_nb:7.2f} {t_np / t_nb:5.1f}x"
            fn_out = fn_numba_out or fn_numba
            if fn_numba_out is not None:
                t_out = time_ms(fn_out, args.repeats, args.stat)
                row += f"  {t_out:7.2f} {t_np / t_out:5.1f}x"
            else:
                row += f"  {'':7} {'':6}"
            for mode in ("serial", "parallel"):      # the two twins, whatever the size
                _common.PARALLEL = mode
                t = time_ms(fn_out, args.repeats, args.stat)
                row += f"  {t:7.2f}" if mode == "serial" else f" {t:8.2f}"
            _common.PARALLEL = "auto"
            print(row)
    print("times in ms; ratio = numpy time / numba time (numba: what the library runs, picking the serial or")
    print("parallel twin by size; out=: writing into reused buffers); serial / parallel: each twin forced, out=")
    print(f"(threading layer used: {numba.threading_layer()})")
    if args.step_repeats:
        step_numpy, step_numba = tiny_step(args.step_repeats, args.dtype)
        print(f"tiny training step, {args.dtype}, median of {args.step_repeats} alternating rounds: "
              f"numpy {step_numpy:.1f} ms, numba {step_numba:.1f} ms, ratio {step_numpy / step_numba:.2f}x")


def tiny_step(repeats, dtype):
    """Median ms of one tiny-model training step with the kernels off and on, alternating."""
    from scratchgpt import backend
    from train import CONFIGS, ours_step         # benchmarks/train.py, beside this script
    step = ours_step(CONFIGS["tiny"], dtype)[2]

    times = {False: [], True: []}
    try:
        for i in range(repeats + 2):
            for on in (False, True) if i % 2 else (True, False):
                backend.use_kernels(on)
                t0 = time.perf_counter()
                step()
                if i >= 2:                   # two warm-up rounds
                    times[on].append(time.perf_counter() - t0)
    finally:
        backend.use_kernels(True)
    return 1e3 * float(np.median(times[False])), 1e3 * float(np.median(times[True]))


if __name__ == "__main__":
    main()
