"""The backend switch."""
import os
import subprocess
import sys

import numpy as np
import pytest

from scratchgpt import backend


def test_numpy_is_the_default_and_float32_the_default_dtype():
    import scratchgpt as sg
    assert backend.xp is np and backend.name == "numpy"
    m = sg.GPTModel(sg.GPTConfig(vocab_size=5, context_length=4, emb_dim=4, n_heads=1, n_layers=1))
    assert m.flat_params.dtype == np.float32
    assert sg.GPTModel(m.cfg, dtype="float64").flat_params.dtype == np.float64
    with pytest.raises(ValueError, match="unsupported dtype 'float16'"):
        sg.GPTModel(m.cfg, dtype="float16")


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown backend 'jax'"):
        backend.use("jax")


def test_cupy_without_cupy_or_gpu_gives_a_clear_error():
    try:
        import cupy
        if cupy.cuda.is_available():
            pytest.skip("a GPU is present: tests/test_gpu.py covers the CuPy backend")
        with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
            backend.use("cupy")
    except ImportError:
        with pytest.raises(RuntimeError, match=r"needs CuPy: pip install 'scratchgpt\[gpu\]'"):
            backend.use("cupy")
    assert backend.xp is np                       # a failed switch leaves NumPy in place


def test_env_variable_selects_the_backend_at_import():
    code = "import scratchgpt; print(scratchgpt.backend.name)"
    env = {**__import__("os").environ, "SCRATCHGPT_BACKEND": "numpy"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert p.stdout.strip() == "numpy"
    # numpy is also the default, so a value only the variable can carry shows it is read
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**env, "SCRATCHGPT_BACKEND": "klingon"})
    assert p.returncode != 0 and "unknown backend 'klingon'" in p.stderr


def test_to_numpy_and_array_module():
    a = np.arange(3)
    assert backend.to_numpy(a) is a
    assert backend.array_module(a) is np
    assert backend.array_module(1.0) is np


def test_rng_is_seeded():
    assert backend.rng(3).random() == backend.rng(3).random()
    assert backend.rng(3).random() == np.random.default_rng(3).random()       # the seed is the one given
    assert backend.rng(3).random() != backend.rng(4).random()


def test_kernel_switch_is_read_from_the_environment():
    code = "from scratchgpt import backend, ops; print(backend.ops is ops)"
    env = {**__import__("os").environ}
    env["SCRATCHGPT_KERNELS"] = "numpy"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert p.stdout.strip() == "True"
    env["SCRATCHGPT_KERNELS"] = "numba"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert p.stdout.strip() == "False"
    env["SCRATCHGPT_KERNELS"] = "fortran"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert "SCRATCHGPT_KERNELS='fortran'" in p.stderr


def test_the_kernels_refuse_to_be_imported_under_another_name(tmp_path):
    """From a checkout's root, `import kernels` would find the folder that the package installs
    as scratchgpt.kernels; numba's disk cache, shared by both names, would then break."""
    import os
    import scratchgpt.kernels
    root = os.path.dirname(os.path.dirname(scratchgpt.kernels.__file__))
    code = f"import sys; sys.path.insert(0, {root!r}); import kernels"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode != 0
    assert "import this package as scratchgpt.kernels, not as 'kernels'" in p.stderr


def test_openblas_threads_stop_spinning_soon_after_a_product_unless_the_user_chose():
    """NumPy imported first, as users do: the backend still shortens OpenBLAS's spin (2^20
    cycles instead of 2^28) by restarting its pool, and leaves a user's own setting alone."""
    if backend.openblas_library() is None or not hasattr(backend.openblas_library(), "openblas_thread_timeout"):
        pytest.skip("NumPy's BLAS here is not an OpenBLAS that reports its thread timeout")
    code = ("import numpy; a = numpy.ones((256, 256)); a @ a; import scratchgpt; a @ a; "
            "t0 = scratchgpt.backend.openblas_library().openblas_thread_timeout(); "
            "scratchgpt.backend.ops; a @ a; "          # the first use of the kernels tunes the threads
            "print(t0, scratchgpt.backend.openblas_library().openblas_thread_timeout())")
    env = {k: v for k, v in __import__("os").environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert p.stdout.split()[1] == "20", p.stderr
    assert p.stdout.split()[0] != "20"                     # importing scratchgpt changed nothing
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**env, "SCRATCHGPT_TUNE_THREADS": "0"})
    assert p.stdout.split()[1] != "20", p.stderr           # turned off
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**env, "OPENBLAS_THREAD_TIMEOUT": "24"})
    assert p.stdout.split()[1] == "24", p.stderr


_TUNED = ("NUMBA_THREADING_LAYER", "GOMP_SPINCOUNT", "MKL_THREADING_LAYER", "SCRATCHGPT_TUNE_THREADS")
_REPORT = ("import os, numpy, numba, scratchgpt; from scratchgpt.kernels import gelu, _common; "
           "scratchgpt.backend.ops; "                   # the first use of the kernels tunes the threads
           "gelu.gelu_forward(numpy.ones(1 << 22, numpy.float32)); "     # a parallel loop starts the pool
           "print(numba.threading_layer(), os.environ.get('GOMP_SPINCOUNT'), "
           "os.environ.get('MKL_THREADING_LAYER'), _common.parallel_min_work())")


def _thread_report(**env):
    base = {k: v for k, v in os.environ.items() if k not in _TUNED}
    p = subprocess.run([sys.executable, "-c", _REPORT], capture_output=True, text=True, env={**base, **env})
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout.split()


def test_kernels_run_on_numbas_openmp_layer_with_a_short_spin_unless_the_user_chose():
    if not backend._numba_has_openmp():
        pytest.skip("numba's OpenMP threading layer does not load here (no GNU OpenMP runtime)")
    from scratchgpt.kernels import _common
    assert _thread_report() == ["omp", "20000", "GNU", str(_common.PARALLEL_MIN_WORK["omp"])]
    assert _thread_report(GOMP_SPINCOUNT="7", MKL_THREADING_LAYER="INTEL") == \
        ["omp", "7", "INTEL", str(_common.PARALLEL_MIN_WORK["omp"])]
    # a layer you choose is kept, with its own threshold, and nothing else is set
    assert _thread_report(NUMBA_THREADING_LAYER="workqueue") == \
        ["workqueue", "None", "None", str(_common.PARALLEL_MIN_WORK["workqueue"])]
    assert _thread_report(SCRATCHGPT_TUNE_THREADS="0")[1:3] == ["None", "None"]


def test_freed_arrays_memory_is_reused_without_page_faults():
    """tune_memory: arrays of a few sizes (8-24 MiB) allocated, written and freed again and again,
    as a training step's activations are, fault in almost no fresh pages once the first ones
    are in; with it turned off, glibc's malloc hands part of the memory back every round (its
    thresholds move as big blocks are freed), and those pages are faulted in anew."""
    if sys.platform != "linux":
        pytest.skip("glibc's malloc and page-fault counts from getrusage")
    code = ("import resource, numpy, scratchgpt; scratchgpt.backend.ops\n"
            "f = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "M = 1 << 20\n"                                                 # 8 MiB of float64
            "for _ in range(3): numpy.ones(3 * M)\n"
            "f0 = f()\n"
            "for _ in range(20):\n"
            "    a = numpy.ones(3 * M); b = numpy.ones(M); c = numpy.ones(2 * M); del a\n"
            "    d = numpy.ones(3 * M); del b, c, d\n"
            "print(f() - f0)")
    env = {k: v for k, v in os.environ.items() if k != "SCRATCHGPT_TUNE_MEMORY"}
    faults = {}
    for tune in ("1", "0"):
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**env, "SCRATCHGPT_TUNE_MEMORY": tune})
        assert p.returncode == 0, p.stderr[-3000:]
        faults[tune] = int(p.stdout.split()[-1])
    pages = 20 * 9 * (1 << 20) * 8 // 4096                # if every array were fresh memory
    assert faults["1"] < pages // 50, faults               # measured: ~1,000 of 368,640
    assert faults["0"] > 5 * faults["1"], faults           # measured: ~30,000
