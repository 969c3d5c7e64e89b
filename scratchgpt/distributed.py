"""Data-parallel training over MPI: `mpiexec -n N scratchgpt train ...` (the book's appendix A
does this with torch DDP; llm.c with MPI and NCCL, as here).

Every process (a "rank") holds the whole model and the whole AdamW state. Each step every rank
draws the same global batch (same sampler, same seed), runs forward and backward on its own
rows of it, and one all-reduce sums the flat gradient buffer across the ranks. After that
every rank holds the gradient one process would have computed on the whole batch, so clipping
and AdamW do the same arithmetic everywhere and the weights stay identical without being sent.

    world = distributed.world()        # size 1 unless launched by mpiexec
    x, y = world.rows(x), world.rows(y)    # (B, T) -> (B / N, T): this rank's rows
    world.sum_(model.flat_grads)           # in place: the sum over the ranks
    loss, = world.sum_floats(loss)         # small numbers (losses, flags) through MPI

Dropout masks are each rank's rows of the masks one process draws (RowsDropoutRNG), so a run
equals the one-process run up to the order of sums, dropout included. ZeroAdamW (--zero1)
keeps only a 1/N slice of AdamW's state on each rank (ZeRO stage 1).

A single process needs no MPI: mpi4py is imported only when the launcher's environment says
there are several ranks. NumPy arrays go through MPI's Allreduce; CuPy arrays (--backend cupy)
through NCCL, whose communicator is set up over MPI as llm.c does (rank 0 makes the unique id,
MPI broadcasts it).
"""
import os
import sys
import time

# The launchers' "how many ranks" variables: MPICH / Intel MPI (Hydra) and Open MPI.
SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
LOCAL_SIZE_VARS = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE")
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def launched_size():
    """The number of ranks mpiexec started (1 outside mpiexec), read from the environment."""
    for var in SIZE_VARS:
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 1


def share_cores_between_ranks():
    """Under mpiexec, give each rank its share of this machine's cores.

    N ranks on one machine each starting a thread per core would run N x cores threads on the
    cores. This sets the thread counts (OpenBLAS, numba) to cores // ranks-on-this-machine; it
    must run before NumPy loads OpenBLAS (scratchgpt/__init__.py calls it first). A thread
    variable the user set wins.
    """
    local = next((int(os.environ[v]) for v in LOCAL_SIZE_VARS if os.environ.get(v, "").isdigit()), 1)
    if launched_size() == 1 or local <= 1 or any(v in os.environ for v in THREAD_VARS):
        return
    n = str(max(1, (os.cpu_count() or 1) // local))
    for var in THREAD_VARS:
        os.environ[var] = n


class World:
    """The ranks of one training job. A World of size 1 is a single process: every method is
    then the identity (or does nothing), so the training loop reads the same either way."""

    def __init__(self, comm=None):
        self.comm = comm
        self.rank = comm.Get_rank() if comm is not None else 0
        self.size = comm.Get_size() if comm is not None else 1
        self.local_rank = 0                  # this rank's number on its machine (its GPU)
        if comm is not None:
            from mpi4py import MPI
            self.local_rank = comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()
        self._nccl = None

    # -- splitting a batch
    def check_batch_size(self, batch_size):
        """The global batch must split into equal shares: a clear error otherwise. Every rank finds
        it before any communication, so all leave at once (exit status 2); rank 0 says why."""
        if batch_size % self.size:
            if self.rank == 0:
                print(f"error: --batch-size {batch_size} does not split over {self.size} processes: use "
                      f"a multiple of {self.size} (it is the global batch; each process takes "
                      f"batch_size / {self.size} rows)", file=sys.stderr)
            raise SystemExit(2)

    def rows(self, a):
        """This rank's rows of a global batch: (B, ...) -> (B / size, ...)."""
        if self.size == 1:
            return a
        n = a.shape[0] // self.size
        return a[self.rank * n:(self.rank + 1) * n]

    def share(self, targets, ignore_index=-100):
        """This rank's fraction of the batch's counted targets (those not ignore_index).

        Each rank's loss is the mean over its own rows, so weighting it by this share and
        summing over the ranks gives the mean over the whole batch, even when the ranks hold
        different numbers of ignored targets."""
        if self.size == 1:
            return 1.0
        counted = targets != ignore_index
        total = int(counted.sum())
        return int(self.rows(counted).sum()) / total if total else 0.0

    # -- communication
    def sum_(self, x):
        """Sum the array x over the ranks, in place (NumPy through MPI, CuPy through NCCL)."""
        if self.size == 1:
            return x
        if type(x).__module__.startswith("cupy"):
            return self._nccl_sum_(x)
        from mpi4py import MPI
        self.comm.Allreduce(MPI.IN_PLACE, x, op=MPI.SUM)
        return x

    def sum_floats(self, *values):
        """Sum a few Python numbers over the ranks with one small all-reduce; returns a list."""
        if self.size == 1:
            return [float(v) for v in values]
        import numpy
        buf = numpy.array(values, dtype=numpy.float64)
        self.sum_(buf)
        return buf.tolist()

    def rank0_first(self, fn):
        """fn() on rank 0, then on the others: e.g. a corpus cache written once, then read."""
        if self.rank == 0:
            out = fn()
        if self.size > 1:
            self.comm.Barrier()
        if self.rank != 0:
            out = fn()
        return out

    def abort(self, code):
        """End every rank now (a rank that fails alone would leave the others waiting forever
        in the next all-reduce). Does nothing in a single process."""
        if self.size > 1:
            sys.stdout.flush()
            sys.stderr.flush()
            time.sleep(0.5)           # let the launcher pass on what this rank printed last
            self.comm.Abort(code)

    # -- GPUs
    def use_gpu(self):
        """Select GPU local_rank for this rank (call before any CuPy array is made)."""
        if self.size > 1:
            import cupy
            cupy.cuda.Device(self.local_rank).use()

    def _nccl_sum_(self, x):
        import cupy
        from cupy.cuda import nccl
        if self._nccl is None:
            self._nccl = nccl_communicator(self)
        dtype = {"float32": nccl.NCCL_FLOAT32, "float64": nccl.NCCL_FLOAT64}[x.dtype.name]
        self._nccl.allReduce(x.data.ptr, x.data.ptr, x.size, dtype, nccl.NCCL_SUM,
                             cupy.cuda.get_current_stream().ptr)
        return x


class RowsDropoutRNG:
    """The model's dropout generator as this rank sees it: every draw is this rank's rows of the
    draw one process makes for the whole batch, so dropout is the same as in one process.

    scratchgpt/rng.py's generator is counter-based: element i of draw n is a function of
    (seed, n, i) alone. A draw's leading axis is the batch (dropout acts on (B, T, C) and
    (B, H, T, T) arrays), so rank r's rows of a draw of the whole batch are the elements
    r * n ... (r + 1) * n - 1, n being the size of the rank's own draw. Every rank makes the
    same draws, so the state (seed, draws) is the same everywhere and any N can resume it.
    """

    def __init__(self, rng, world):
        self.rng, self.world = rng, world              # rng: a scratchgpt.rng.DropoutRNG

    def random(self, shape, dtype="float64"):
        import numpy

        from scratchgpt import backend
        from scratchgpt.rng import draw_key, uniform
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        key = draw_key(self.rng.seed, self.rng.draws)
        self.rng.draws += 1
        n = int(numpy.prod(shape))                     # this rank's rows; the batch has size x n
        return uniform(backend.xp, key, shape, numpy.dtype(dtype), start=self.world.rank * n)

    def state_dict(self):
        return self.rng.state_dict()

    def load_state_dict(self, state):
        self.rng.load_state_dict(state)


class ZeroAdamW:
    """ZeRO stage 1 (Rajbhandari et al., 2020): AdamW with its moments split over the ranks.

    Plain data parallelism keeps the whole m and v (8 bytes per parameter in float32) on every
    rank. Here rank r keeps m and v only for its slice [lo, hi) of the flat buffer:

        reduce-scatter   each rank receives the sum over the ranks of its slice of the gradients
        clip             by the global norm (one small all-reduce of the slices' squared norms)
        AdamW            on its slice of the parameters only
        all-gather       every rank receives every slice: the whole updated parameters again

    The arithmetic is AdamW's, element by element, so the run equals plain data parallelism
    (and one process) up to the order of the sums. A checkpoint holds the whole m and v
    (gathered on rank 0), the same file plain AdamW writes, so either can resume the other.
    """

    def __init__(self, model, world, **adamw_kwargs):
        from types import SimpleNamespace

        from scratchgpt.optim import AdamW
        if type(model.flat_params).__module__ != "numpy":
            raise ValueError("--zero1 runs on the numpy backend (its collectives go through MPI on the host)")
        self.model, self.world = model, world
        n, N = model.flat_params.size, world.size
        self.counts = [n // N + (r < n % N) for r in range(N)]          # slice sizes, as even as can be
        self.starts = [sum(self.counts[:r]) for r in range(N)]
        lo, hi = self.starts[world.rank], self.starts[world.rank] + self.counts[world.rank]
        # AdamW steps any object with flat_params, flat_grads and n_decay: give it this rank's slice
        # (the decayed tensors come first in the buffer, so the slice's decayed part is a prefix too).
        # The in-place reduce-scatter leaves the slice's summed gradients at the *start* of
        # model.flat_grads, so that is where the slice's gradient view points: no extra buffer.
        self.shard = SimpleNamespace(flat_params=model.flat_params[lo:hi],
                                     flat_grads=model.flat_grads[:hi - lo],
                                     n_decay=min(max(model.n_decay - lo, 0), hi - lo))
        self.adamw = AdamW(self.shard, **adamw_kwargs)
        self.lo, self.hi, self._gathered = lo, hi, None

    @property
    def lr(self):
        return self.adamw.lr

    @lr.setter
    def lr(self, value):
        self.adamw.lr = value

    def step(self, max_norm):
        """Reduce-scatter the gradients, clip, update this rank's slice, all-gather the parameters.
        Call after backward() instead of all-reducing; returns the gradient norm before clipping."""
        from mpi4py import MPI
        g, comm = self.shard.flat_grads, self.world.comm
        comm.Reduce_scatter(MPI.IN_PLACE, self.model.flat_grads, self.counts, op=MPI.SUM)   # -> g
        norm = float(self.world.sum_floats(float(g @ g))[0]) ** 0.5
        g *= min(max_norm / (norm + 1e-6), 1.0)                        # clip_grad_norm's formula
        self.adamw.step()
        comm.Allgatherv(MPI.IN_PLACE, [self.model.flat_params, self.counts, self.starts,
                                       _mpi_type(self.model.flat_params)])
        return norm

    def gather_state(self):
        """Collect every rank's slice of m and v on rank 0 (all ranks call it; before a checkpoint)."""
        from mpi4py import MPI
        import numpy
        full = {}
        for name in ("m", "v"):
            part = getattr(self.adamw, name)
            buf = numpy.empty(self.model.flat_params.size, part.dtype) if self.world.rank == 0 else None
            self.world.comm.Gatherv(part, [buf, self.counts, self.starts, _mpi_type(part)]
                                    if self.world.rank == 0 else None, root=0)
            full[name] = buf
        self._gathered = full

    def state_dict(self):
        """The whole AdamW state (rank 0, after gather_state): the format plain AdamW saves."""
        return {**self.adamw.state_dict(), **self._gathered}

    def load_state_dict(self, d):
        """Load a whole AdamW state (from any checkpoint) and keep this rank's slice of m and v."""
        self.adamw.load_state_dict({**d, "m": d["m"][self.lo:self.hi], "v": d["v"][self.lo:self.hi]})


def _mpi_type(a):
    """MPI's datatype for a NumPy array's elements (uint8 -> MPI.UNSIGNED_CHAR, float32 -> MPI.FLOAT, ...)."""
    from mpi4py import MPI
    return MPI.Datatype.fromcode(a.dtype.char)


def nccl_communicator(world):
    """An NCCL communicator over the world's ranks, bootstrapped through MPI (llm.c's way):
    rank 0 makes NCCL's unique id, MPI broadcasts it, every rank joins with it."""
    import numpy
    from cupy.cuda import nccl
    # The id is NCCL_UNIQUE_ID_BYTES = 128 bytes: CuPy 14 hands it over as bytes, older CuPy as a
    # tuple of 128 small ints; either way it travels as 128 bytes and goes back in the same form.
    buf = numpy.zeros(129, dtype=numpy.uint8)          # the id, then 1 if it came as bytes
    if world.rank == 0:
        made = nccl.get_unique_id()
        buf[128] = isinstance(made, (bytes, bytearray))
        buf[:128] = numpy.frombuffer(bytes(made), numpy.uint8) if buf[128] else numpy.array(made, numpy.int64) % 256
    if world.comm is not None:
        world.comm.Bcast(buf, root=0)
    uid = buf[:128]
    comm_id = uid.tobytes() if buf[128] else tuple(int(v) if v < 128 else int(v) - 256 for v in uid)
    return nccl.NcclCommunicator(world.size, comm_id, world.rank)


_world = None


def world():
    """The World of this process, made on first use: MPI's COMM_WORLD under mpiexec, else size 1."""
    global _world
    if _world is None:
        if launched_size() == 1:
            _world = World()
        else:
            try:
                from mpi4py import MPI
            except ImportError:
                raise RuntimeError(f"started by mpiexec as one of {launched_size()} processes, but mpi4py "
                                   f"is not installed: pip install -e \".[mpi]\"") from None
            _world = World(MPI.COMM_WORLD)
    return _world
