"""A training step's forward, loss and backward recorded once as a CUDA graph, then replayed.

    step = GraphStep(model)
    loss = step(x, y)        # what `loss = model.loss(x, y); model.backward()` does: a float,
                             # the gradients added into model.flat_grads

On a GPU a small model's step is a few hundred short kernels, and launching each one costs the
host more time (5-80 us) than the GPU spends running it: the GPU waits for Python. A CUDA graph is
a recording of the kernels with their arguments; one call replays all of them, with no Python in
between. `train --cuda-graph` uses this.

What a recording needs, and where it comes from:
- the same addresses on every replay: the batch is copied into two device arrays made once
  (self.x, self.y); parameters and gradients live in the model's flat buffers; the activations
  come from a memory pool of the graph's own, which nothing else allocates from, so the blocks
  the recording uses stay the graph's between replays.
- no host synchronisation while recording: the ids and targets are checked on the host before the
  copy, model._loss keeps the loss on the device, and the matrix products go through
  kernels/cuda_gemm.py (CuPy refuses cuBLAS while a stream is being captured).
- new dropout masks on every replay: while recording, the model's DropoutRNG reads each draw's key
  from a small device table (scratchgpt/rng.py); before each replay the table gets the keys of the
  next draws, so the masks are the ones an eager run draws, and resuming works as before.
The first call runs eagerly (kernels compile, cuBLAS and the memory pool warm up) and counts the
dropout draws of a step; the second records and replays; later calls replay. A batch of another
shape, eval mode, or a recording that failed (one warning says why) runs eagerly.
"""
import warnings

from scratchgpt import backend


class GraphStep:
    def __init__(self, model, ignore_index=-100):
        self.model, self.ignore_index = model, ignore_index
        self.graph = None            # the recording, once made
        self.failed = ""             # why recording failed (then every call runs eagerly)
        self.shape = None            # the batch shape of the recording
        self.n_draws = None          # dropout draws per step, counted on the first call

    def __call__(self, x, y):
        model = self.model
        y = model._check_targets(y, x, self.ignore_index)      # on the host, before anything is recorded
        x = model._check_ids(x)
        if self.failed or not model.training or (self.shape is not None and tuple(x.shape) != self.shape):
            return self._eager(x, y)
        if self.shape is None:                                 # the first call: eager, and count the draws
            rng = model.dropout_rng()
            before = rng.draws if rng is not None else 0
            loss = self._eager(x, y)
            self.shape, self.n_draws = tuple(x.shape), (rng.draws - before if rng is not None else 0)
            return loss
        if self.graph is None:
            try:
                self._record(x, y)
            except Exception as e:                             # e.g. a synchronisation in some op
                self.failed = f"{type(e).__name__}: {e}"
                warnings.warn(f"the training step could not be recorded as a CUDA graph ({self.failed}); "
                              "it runs eagerly instead", RuntimeWarning, stacklevel=2)
                return self._eager(x, y)
        return self._replay(x, y)

    def _eager(self, x, y):
        loss = float(self.model._loss(x, y, self.ignore_index))
        self.model.backward()
        return loss

    def _record(self, x, y):
        import cupy
        model = self.model
        self.pool = cupy.cuda.MemoryPool()                     # the graph's own blocks
        self.stream = cupy.cuda.Stream(non_blocking=False)     # ordered with CuPy's default stream
        self.x, self.y = x.copy(), y.copy()                    # the batch's arrays, filled before each replay
        self.keys = cupy.zeros(max(self.n_draws, 1), dtype=cupy.uint64)
        rng = model.dropout_rng()
        first = rng.draws if rng is not None else 0
        with cupy.cuda.using_allocator(self.pool.malloc), self.stream:
            self.stream.begin_capture()
            try:
                if rng is not None:
                    rng.key_table = (self.keys, first)
                self.loss = model._loss(self.x, self.y, self.ignore_index)
                model.backward()
            finally:
                if rng is not None:                            # recording ran nothing: _replay draws
                    rng.key_table, rng.draws = None, first
                graph = self.stream.end_capture()               # also when recording failed: ends capture
        self.graph = graph

    def _replay(self, x, y):
        rng = self.model.dropout_rng()
        with self.stream:
            self.x[...] = x
            self.y[...] = y
            if rng is not None and self.n_draws:
                rng.fill_key_table(self.keys, rng.draws)       # this step's draws, as an eager step's
                rng.draws += self.n_draws
            self.graph.launch(self.stream)
            return float(self.loss)                            # waits for the replay


def usable(model, world_size=1):
    """'' when GraphStep can record this model's step here, else why not."""
    if backend.name != "cupy":
        return "CUDA graphs need the GPU backend (--backend cupy)"
    if world_size > 1:
        return "not with several processes (the all-reduce runs between micro-batches)"
    from scratchgpt.model import GPTModel
    if type(model) is not GPTModel:
        return f"GPT-2 models only, not {type(model).__name__} (its ops issue CuPy's own products)"
    if not hasattr(backend.ops, "kernels") or not hasattr(backend.ops.kernels, "gemm"):
        return "the GPU kernels are off (SCRATCHGPT_KERNELS=numpy, or numba.cuda cannot run here)"
    return ""
