"""The numba kernels give the same bits whatever the thread count. On a machine with one core,
numba's default pool has one thread and an in-process comparison compares nothing, so this
runs in a subprocess whose pool is asked for 4 threads (more threads than cores still split
the work 4 ways)."""
import os
import subprocess
import sys

import pytest

pytest.importorskip("numba")

SCRIPT = r"""
import numba, numpy as np
import scratchgpt.kernels as K
from scratchgpt.kernels import _common
_common.PARALLEL = "parallel"
assert numba.config.NUMBA_NUM_THREADS == 4, numba.config.NUMBA_NUM_THREADS
rng = np.random.default_rng(4)
x, dout = rng.standard_normal((2, 2002, 37))                 # float64: no rounding hides an order
w = rng.standard_normal(37)
_, mean, rstd = K.layernorm_forward(x, w, w)
results = []
for n in (1, 2, 3, 4):
    numba.set_num_threads(n)
    assert numba.get_num_threads() == n
    results.append(K.layernorm_backward(dout, x, mean, rstd, w))
for n, got in zip((2, 3, 4), results[1:]):
    for name, a, b in zip(("dx", "dw", "db"), got, results[0]):
        assert np.array_equal(a, b), f"{name} with {n} threads differs from 1 thread"
print("same bits with 1, 2, 3 and 4 threads")
"""


def test_layernorm_param_grads_are_the_same_bits_with_1_to_4_threads():
    env = dict(os.environ, NUMBA_NUM_THREADS="4")
    p = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "same bits with 1, 2, 3 and 4 threads" in p.stdout
