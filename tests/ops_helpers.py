"""Random inputs and float64 torch tensors for the op tests of Llama 3 / Qwen3's ops."""
import numpy as np
import torch

DTYPES = [np.float64, np.float32]


def randn(rng, *shape, dtype=np.float64):
    return rng.standard_normal(shape).astype(dtype)


def tt(a):
    """The torch reference always runs in float64: float32 results are measured against the
    exact answer, not against torch's own float32 rounding."""
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=True)


def import_transformers():
    """transformers, or a skip where it is not installed.

    transformers looks for PyPI's `kernels` package with importlib.util.find_spec, and from the
    repository's root it would find our top-level kernels/ folder instead (installed as
    scratchgpt.kernels, and refusing to be imported as `kernels`). A None entry in sys.modules
    tells find_spec there is no such package."""
    import sys

    import pytest
    if sys.modules.get("kernels") is not None and not hasattr(sys.modules["kernels"], "get_kernel"):
        del sys.modules["kernels"]
    sys.modules.setdefault("kernels", None)
    return pytest.importorskip("transformers")
