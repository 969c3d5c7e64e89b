"""Hand-made mutations of the numba kernels: each must make its tests fail.

mutmut (scripts/mutation.sh) mutates the reference array code only: it wraps each Python function
in a trampoline, and numba compiles an @njit function from its source, so a mutated kernel never
runs. This script does the same thing by hand for the kernels: it edits one line of a kernel's
source, runs the kernel's tests, and puts the line back (also on Ctrl-C).

    python scripts/kernel_mutations.py              # every mutant below
    python scripts/kernel_mutations.py cached       # those whose name contains "cached"
    python scripts/kernel_mutations.py layernorm

Each mutant compiles into a throwaway numba cache, so the project's own cache stays as it was
(the kernel edited recompiles once afterwards: numba sees a newer file). Exit code 1 if a mutant
survives. A mutant is (name, file, the exact text to replace, its replacement, tests to run).
"""
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ATT = "kernels/attention.py"
ATT_TESTS = "tests/test_kernels_attention.py"
KERNEL_TESTS = "tests/test_kernels.py"          # softmax, layernorm, GELU, cross-entropy, embedding

MUTANTS = [
    # the register tiles of the causal attention (kernels/attention.py)
    ("accumulate drops a row's term", ATT,
     "oj[d] += c0 * x0[d] + c1 * x1[d] + c2 * x2[d] + c3 * x3[d]",
     "oj[d] += c0 * x0[d] + c1 * x1[d] + c2 * x2[d]", ATT_TESTS),
    ("scores drop a feature's term", ATT,
     "s3[j] += c30 * e0 + c31 * e1 + c32 * e2 + c33 * e3",
     "s3[j] += c30 * e0 + c31 * e1 + c32 * e2", ATT_TESTS),
    ("weighted drops a product", ATT, "            a33 += f3 * e3\n", "\n", ATT_TESTS),
    ("scores' tail loop stops a key short", ATT,
     "        m0 = MT[d]\n        for j in range(L):\n            s0[j] += x0[d] * m0[j]",
     "        m0 = MT[d]\n        for j in range(L - 1):\n            s0[j] += x0[d] * m0[j]", ATT_TESTS),
    ("the last tile's rows are not clamped", ATT,
     "x[min(t0 + 2, T - 1)], x[min(t0 + 3, T - 1)]", "x[min(t0 + 2, T - 1)], x[min(t0 + 2, T - 1)]", ATT_TESTS),
    ("softmax leaves the keys past the diagonal", ATT, "    s[n:L] = 0\n", "\n", ATT_TESTS),
    ("backward keeps weights past the diagonal", ATT, "            a[r, n:L] = 0\n", "\n", ATT_TESTS),
    ("backward counts rows past T", ATT,
     "n = t + 1 if t < T else 0 ", "n = t + 1 if t < T else T ", ATT_TESTS),
    ("forward loses a tile's last row", ATT,
     "        for r in range(min(R, T - t0)):\n            _copy(o[r], y",
     "        for r in range(min(R - 1, T - t0)):\n            _copy(o[r], y", ATT_TESTS),
    # generation's attention (kernels/attention.py: cached_attention_forward, kernels/ops.py)
    ("cached: one key short", ATT, "        L = start + i + 1 ", "        L = start + i     ", ATT_TESTS),
    ("cached: the new value is not cached", ATT,
     "        _copy(row[2 * C + h * hd:2 * C + (h + 1) * hd], vc[start + i], dt.type(1.0))\n    scale",
     "        pass\n    scale", ATT_TESTS),
    ("cached: no 1/sqrt(hd)", ATT, "            s[j] = dot * scale ", "            s[j] = dot         ", ATT_TESTS),
    ("cached: no bounds check", ATT,
     "    if not 0 <= start <= k_cache.shape[2] - T:", "    if not 0 <= start <= k_cache.shape[2]:", ATT_TESTS),
    ("cached: the accumulator is not reset", ATT, "        acc[:] = 0\n", "\n", ATT_TESTS),
    ("cached: FastOps' token limit off by one", "kernels/ops.py",
     "qkv.shape[1] > CACHED_KERNEL_MAX_TOKENS", "qkv.shape[1] >= CACHED_KERNEL_MAX_TOKENS", ATT_TESTS),
    # the causal softmax
    ("softmax: the max over one key too few", "kernels/softmax.py",
     "m = row_max(row, t + 1)", "m = row_max(row, t)", KERNEL_TESTS),
    ("softmax: the diagonal zeroed", "kernels/softmax.py",
     "            v = out[j] * inv_s\n            out[j] = v if j <= t else zero",
     "            v = out[j] * inv_s\n            out[j] = v if j < t else zero", KERNEL_TESTS),
    ("softmax backward: the sum one key short", "kernels/softmax.py",
     "        for j in range(t + 1):\n            s += g[j] * p[j]",
     "        for j in range(t):\n            s += g[j] * p[j]", KERNEL_TESTS),
    # LayerNorm
    ("layernorm: unbiased variance", "kernels/layernorm.py",
     "r = 1.0 / np.sqrt(v / C + eps)", "r = 1.0 / np.sqrt(v / (C - 1) + eps)", KERNEL_TESTS),
    ("layernorm: no eps", "kernels/layernorm.py", "r = 1.0 / np.sqrt(v / C + eps)", "r = 1.0 / np.sqrt(v / C)",
     KERNEL_TESTS),
    ("layernorm backward: no xhat term", "kernels/layernorm.py",
     "dx[i, c] = r * (g[c] * w[c] - m1 - xhat * m2)", "dx[i, c] = r * (g[c] * w[c] - m1)", KERNEL_TESTS),
    ("layernorm backward: db scaled by w", "kernels/layernorm.py",
     "db_parts[k, c] += g[c]\n", "db_parts[k, c] += g[c] * w[c]\n", KERNEL_TESTS),
    # GELU
    ("gelu: the wrong constant", "kernels/gelu.py",
     "k0 = x.dtype.type(-2.0 * _SQRT_2_OVER_PI)  # constants", "k0 = x.dtype.type(-1.0 * _SQRT_2_OVER_PI)  # constants",
     KERNEL_TESTS),
    ("gelu backward: no du/dx", "kernels/gelu.py",
     "dx[i] = dout[i] * (s + xc * s * (one - s) * two_du)", "dx[i] = dout[i] * (s + xc * s * (one - s))",
     KERNEL_TESTS),
    ("gelu backward: no clamp of huge inputs", "kernels/gelu.py",
     "xc = min(max(xi, -lim), lim)", "xc = xi", KERNEL_TESTS),
    # cross-entropy
    ("cross-entropy: the target's 1 not taken off", "kernels/cross_entropy.py",
     "g[tgt] -= 1.0 / n_valid", "g[tgt] -= 0.0 / n_valid", KERNEL_TESTS),
    ("cross-entropy: ignored rows get a gradient", "kernels/cross_entropy.py",
     "            g[:] = 0.0\n", "            g[:] = 1.0\n", KERNEL_TESTS),
    ("cross-entropy loss alone: no max", "kernels/cross_entropy.py",
     "        m = row_max(z, V)\n        s = 0.0", "        m = 0.0\n        s = 0.0", KERNEL_TESTS),
    # the embedding's scatter-add (not "negative ids not wrapped": numba wraps a negative index itself)
    ("embedding: the last id allowed past the table", "kernels/embedding.py",
     "if ids[n] < -V or ids[n] >= V:", "if ids[n] < -V or ids[n] > V:", KERNEL_TESTS),
    # AdamW
    ("adamw: no bias correction of m", "kernels/adamw.py",
     "f(lr / (1.0 - b1 ** t))", "f(lr)", "tests/test_kernels_adamw.py"),
    ("adamw: decay one parameter too many", "kernels/adamw.py",
     "(decay if i < n_decay else one)", "(decay if i <= n_decay else one)", "tests/test_kernels_adamw.py"),
    ("adamw: no eps", "kernels/adamw.py",
     "inv_sqrt_bc2 + eps))", "inv_sqrt_bc2))", "tests/test_kernels_adamw.py"),
    # the bias kernels
    ("bias: a chunk drops its last row", "kernels/bias.py",
     "range(k * N // n_chunks, (k + 1) * N // n_chunks)", "range(k * N // n_chunks, (k + 1) * N // n_chunks - 1)",
     "tests/test_kernels_bias.py"),
    ("bias: added once too often", "kernels/bias.py", "row[c] += b[c]", "row[c] += 2 * b[c]",
     "tests/test_kernels_bias.py"),
]


def stale(mutants=MUTANTS):
    """The mutants whose text to replace is not in its file exactly once (the kernel has changed)."""
    out = []
    for name, path, old, _, _ in mutants:
        with open(os.path.join(ROOT, path)) as f:
            if f.read().count(old) != 1:
                out.append(name)
    return out


def tests_pass(tests, cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir, MPLBACKEND="Agg")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", tests],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    return r.returncode == 0


def run(name, path, old, new, tests, cache_dir):
    """True when the tests fail with the mutation in place (the mutant is killed)."""
    path = os.path.join(ROOT, path)
    with open(path) as f:
        source = f.read()
    try:
        with open(path, "w") as f:
            f.write(source.replace(old, new))
        return not tests_pass(tests, cache_dir)
    finally:
        with open(path, "w") as f:
            f.write(source)


def main():
    pattern = sys.argv[1] if len(sys.argv) > 1 else ""
    chosen = [m for m in MUTANTS if pattern in m[0]]
    if stale(chosen):
        raise SystemExit(f"not in the source exactly once: {stale(chosen)}; update MUTANTS to the kernels' code")
    survived = []
    with tempfile.TemporaryDirectory() as cache_dir:
        for tests in dict.fromkeys(m[4] for m in chosen):       # unmutated, the tests must pass
            if not tests_pass(tests, cache_dir):
                raise SystemExit(f"{tests} fails without any mutation: fix that first")
        for name, *rest in chosen:
            killed = run(name, *rest, cache_dir)
            print(f"{'killed  ' if killed else 'SURVIVED'}  {name}", flush=True)
            if not killed:
                survived.append(name)
    print(f"{len(chosen) - len(survived)} / {len(chosen)} killed")
    sys.exit(1 if survived else 0)


if __name__ == "__main__":
    main()
