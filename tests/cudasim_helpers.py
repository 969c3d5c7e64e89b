"""What the numba.cuda kernel test files share: whether this Python runs them (under numba's CUDA
simulator, or on a GPU that numba.cuda can use), and running a whole test file again under the
simulator in a second Python when it does not (the simulator must be on before numba loads)."""
import os
import re
import subprocess
import sys
from pathlib import Path

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
if SIMULATOR:
    # The simulator's threads of a block all meet at every syncthreads; with Python's default
    # 5 ms thread switch interval each meeting waits out time slices (measured: 10x slower).
    sys.setswitchinterval(1e-4)


def gpu_here():
    """numba.cuda sees a GPU and has its compiler (checked by the module itself)."""
    try:
        from scratchgpt.kernels import cuda
        return cuda.available()
    except ImportError:
        return False


RUN_HERE = SIMULATOR or gpu_here()


def run_under_simulator(test_file, what):
    """Run `test_file` in a second Python with the simulator on; fail with its output unless it
    passes with at most two skips (the file's own two, which run only outside the simulator)."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "SCRATCHGPT_BACKEND": "numpy"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file)],
                       cwd=root, env=env, capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"{what} failed under the simulator:\n{out[-6000:]}"
    skipped = re.search(r"(\d+) skipped", out)
    assert " passed" in out and (skipped is None or int(skipped[1]) <= 2), out[-2000:]
