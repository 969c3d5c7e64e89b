"""Hand-made mutations of the numba kernels: each must make its tests fail.

mutmut (scripts/mutation.sh) mutates the reference array code only: it wraps each Python function
in a trampoline, and numba compiles an @njit function from its source, so a mutated kernel never
runs. This script does the same thing by hand for the kernels: it edits one line of a kernel's
source, runs the kernel's tests, and puts the line back (also on Ctrl-C).

    python scripts/kernel_mutations.py              # every mutant below
    python scripts/kernel_mutations.py cached       # those whose name contains "cached"

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
