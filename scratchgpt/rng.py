"""Dropout's random numbers: a counter-based generator, the same on NumPy and CuPy.

    rng = DropoutRNG(seed=1)
    u = rng.random((B, T, C), dtype=x.dtype)       # uniform in [0, 1), on the active backend
    state = rng.state_dict()                       # {"seed": 1, "draws": 1}: plain JSON
    rng.load_state_dict(state)                     # the next draw is the one after that state

A stateful generator (NumPy's PCG64, CuPy's cuRAND) keeps its position in an object: saving it
means saving that object, and CuPy's cannot be written as JSON. Here the position is two
integers. Draw number n of a run with seed s is a pure function of (s, n) and of the element's
index, so a resumed run gets the same masks as an uninterrupted one, and a CPU and a GPU run
get the same masks too (the hash is integer arithmetic, exact on both).

The hash is SplitMix64's output function (Steele, Lea and Flood, "Fast splittable
pseudorandom number generators", 2014), used as a counter-based generator (as in Salmon et
al., "Parallel random numbers: as easy as 1, 2, 3", 2011): element i of draw n is

    z = key(s, n) + (k + 1) * GOLDEN                            (mod 2^64),  k = i // 2
    z = (z ^ (z >> 30)) * M1;  z = (z ^ (z >> 27)) * M2;  z ^= z >> 31
    u = bits 40-63 of z / 2^24 (i even), bits 16-39 of z / 2^24 (i odd)     exact in float32

and key(s, n) is the same mix applied to s and n on the host, so draws start far apart.
"""
from scratchgpt import backend

GOLDEN = 0x9E3779B97F4A7C15        # 2^64 / golden ratio, SplitMix64's step
M1 = 0xBF58476D1CE4E5B9
M2 = 0x94D049BB133111EB
MASK64 = (1 << 64) - 1


def mix64(z):
    """SplitMix64's finalizer on a Python int (the host side: keys)."""
    z &= MASK64
    z = ((z ^ (z >> 30)) * M1) & MASK64
    z = ((z ^ (z >> 27)) * M2) & MASK64
    return z ^ (z >> 31)


def draw_key(seed, draw):
    """The 64-bit starting point of draw number `draw` of generator `seed`."""
    return mix64(mix64(seed * GOLDEN + 1) + draw * GOLDEN)


def uniform(xp, key, shape, dtype, start=0):
    """Uniform numbers in [0, 1) of `shape` from `key`, in array code (xp: numpy or cupy).
    `start` skips that many elements of the draw (a data-parallel rank takes its rows' part).

    Each 64-bit hash gives two numbers: bits 40-63 for element 2k and bits 16-39 for element
    2k + 1 (half the hashing of one number per hash). uint64 arithmetic wraps modulo 2^64 on
    both libraries, so the bits are identical."""
    u64 = xp.uint64
    n = 1
    for s in shape:
        n *= s
    k0, k1 = start // 2, (start + n + 1) // 2             # the hashes of elements start .. start + n - 1
    z = xp.arange(k0 + 1, k1 + 1, dtype=u64)              # the counters k + 1
    z *= u64(GOLDEN)
    z += key if hasattr(key, "dtype") else u64(key)       # a 0-d device array while a CUDA graph records
    z ^= z >> u64(30)
    z *= u64(M1)
    z ^= z >> u64(27)
    z *= u64(M2)
    z ^= z >> u64(31)
    bits = xp.empty((k1 - k0, 2), dtype=u64)              # two 24-bit numbers per hash
    xp.right_shift(z, u64(40), out=bits[:, 0])
    xp.right_shift(z, u64(16), out=bits[:, 1])
    bits[:, 1] &= u64(0xFFFFFF)
    first = start - 2 * k0                                # 1 when the draw starts at an odd element
    u = bits.reshape(-1)[first:first + n].astype(dtype)   # 24 bits: exact in float32
    u *= 2.0 ** -24
    return u.reshape(shape)


class DropoutRNG:
    """Dropout's generator: `random` as numpy.random.Generator.random, state as two integers."""

    def __init__(self, seed, draws=0):
        self.seed, self.draws = int(seed), int(draws)
        self.key_table = None       # while a CUDA graph records: (device uint64 array, first draw)

    def random(self, shape, dtype="float64"):
        """The next draw: uniform floats in [0, 1) of `shape`, on the active backend."""
        import numpy
        if self.key_table is None:
            key = draw_key(self.seed, self.draws)
        else:                       # recorded: read from the table when the graph replays
            table, first = self.key_table
            key = table[self.draws - first]
        self.draws += 1
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        return uniform(backend.xp, key, shape, numpy.dtype(dtype))

    def fill_key_table(self, table, first):
        """Write the keys of draws first, first + 1, ... into `table` (a device uint64 array): a
        replayed graph that recorded reads from `table` (see scratchgpt/cuda_graph.py) makes those draws."""
        import numpy
        keys = numpy.array([draw_key(self.seed, first + j) for j in range(table.size)], dtype=numpy.uint64)
        table[...] = backend.xp.asarray(keys)

    def state_dict(self):
        return {"kind": "splitmix64-counter", "seed": self.seed, "draws": self.draws}

    def load_state_dict(self, state):
        if not isinstance(state, dict) or state.get("kind") != "splitmix64-counter":
            raise ValueError(f"not a DropoutRNG state: {str(state)[:80]!r} (checkpoints written before "
                             "the counter-based dropout generator stored a NumPy bit-generator state)")
        self.seed, self.draws = int(state["seed"]), int(state["draws"])
