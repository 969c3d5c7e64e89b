"""The fused kernels on a GPU, written with numba.cuda (installed as scratchgpt.kernels.cuda).

The same functions, arguments and results as the CPU kernels beside this file, on device arrays:

    causal_softmax_forward(x, out=None) -> y            causal_softmax_backward(dy, y, out=None) -> dx
    layernorm_forward(x, w, b, eps) -> out, mean, rstd  layernorm_backward(dout, x, mean, rstd, w) -> dx, dw, db
    gelu_forward(x, out=None) -> y                      gelu_backward(dout, x, out=None) -> dx
    cross_entropy_forward_backward(logits, targets, ignore_index, out=None) -> loss, dlogits
    embedding_backward(dout, ids, out) -> out (the (V, C) gradient, added into in place)
    adamw_step(p, g, m, v, t, lr, betas, eps, weight_decay, n_decay)   (flat buffers, in place)
    flash_attention_forward(qkv, n_heads) -> y, lse     flash_attention_backward(dy, qkv, y, lse, n_heads) -> dqkv
                                                        (cuda_flash.py: attention without the T x T weights)

Arrays. CuPy arrays in real use: the results are CuPy arrays from CuPy's memory pool, and the
kernels run on CuPy's current stream, so they queue behind CuPy's own work with no host
synchronisation. numba device arrays (cuda.to_device(a)) give numba device arrays; the tests use
those under numba's simulator (NUMBA_ENABLE_CUDASIM=1), which runs the kernels as Python threads
on a machine without a GPU. NumPy arrays are refused (scratchgpt.kernels has the CPU kernels),
except cross-entropy's targets, which may come from the host.

Differences from the CPU kernels, all so that no call waits for the GPU:
- cross_entropy_forward_backward's loss is a 0-d float64 device array, not a Python float;
  float(loss) fetches it (model.loss does, the one device-to-host transfer of a training step).
- a target outside [0, V) that is not ignore_index raises ValueError (the CPU kernel's message)
  when the targets are a NumPy array, checked on the host; in device targets, which the host
  cannot read without waiting, it makes that row's loss and dlogits nan instead;
- embedding_backward skips an id outside [-V, V) instead of raising (the model checks its ids).

How the work is laid out (the CUDA programmer's usual shapes):
- softmax, LayerNorm and cross-entropy: one thread block per row. The block's threads stride
  over the row (thread k takes elements k, k + blockDim, ...) so neighbouring threads read
  neighbouring addresses, and a row's max or sum is reduced in shared memory: each thread adds
  up its own elements, then a tree halves the partial sums log2(blockDim) times (_block_sum).
  Sums are accumulated in float64 also for float32 data, as the CPU kernels do.
- GELU: elementwise, a grid-stride loop over the flattened array.
- LayerNorm's dw and db sum over all rows: a fixed split of the rows into chunks, one partial
  sum per (chunk, column) and a second pass over the chunks in order, as the CPU kernel does,
  so the result does not depend on scheduling (no atomics).
The tree reductions are plain shared memory and __syncthreads, no warp shuffles, because the
simulator has no shuffles and the tests run every kernel under it.

numba compiles each kernel on its first call for a given dtype (a second or so) and, with
cache=True, keeps the machine code on disk for later processes, as the CPU kernels do.
"""
import contextlib
import math
import warnings

import numpy as np


@contextlib.contextmanager
def numpy_row_stack_for_numba_cuda():
    """numba-cuda (0.30.4 and earlier) registers an overload of numpy.row_stack when it loads its
    array functions, at import or at the first kernel compile. NumPy 2.5 removed row_stack (an
    alias of vstack since NumPy 1.x), so that registration raises AttributeError and every kernel
    fails. While this block runs, and only on a NumPy without it, numpy.row_stack is vstack again;
    afterwards it is gone, and numba-cuda has its registration. Numba itself checks (0.68)."""
    added = not hasattr(np, "row_stack")
    if added:
        np.row_stack = np.vstack
    try:
        yield
    finally:
        if added:
            del np.row_stack


try:
    with numpy_row_stack_for_numba_cuda():
        from numba import cuda
except ImportError:           # numba without a CUDA target: this module imports, available() is False
    cuda = None

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
GELU_COEF = 0.044715

ROW_THREADS = 256     # threads per block of the softmax and LayerNorm rows (T or C elements each)
SOFTMAX_THREADS = 32  # the causal softmax's rows get one warp each: measured on an H200
                      # (benchmarks/gpu_kernels.py, GPT-2's (96, 1024, 1024) scores, forward and
                      # backward) 743 us with 32 threads a row against 1,638 us with 256
CE_THREADS = 512      # per block of the cross-entropy rows (V elements each, 50257 for GPT-2); not 1024:
                      # the float64 row kernel needs 72 registers a thread (ptxas, sm_90), and a
                      # block has 65536, so 1024 threads would fail to launch
GRID_BLOCKS = 4096    # most blocks of a grid-stride loop: about 30 per SM on an H100
LN_CHUNKS = 128       # row chunks of LayerNorm's dw, db partial sums
# Test knobs: the tests lower these (e.g. to 4 and 2) so that every thread strides over
# several elements and the tree reductions run several levels even on tiny arrays.
MAX_THREADS = 1024
MAX_BLOCKS = 2 ** 31 - 1

FLOAT_DTYPES = (np.float32, np.float64)


_available = None           # available()'s answer, found once
why_unavailable = ""        # and, when it is False, why (backend's warning says it)


def available():
    """True when the numba.cuda kernels run here: a GPU, numba.cuda and its compiler (or the
    simulator). Found once per process by compiling and running a trivial kernel, on a numba
    device array and, where CuPy is installed, on a CuPy array the way the kernels get them."""
    global _available, why_unavailable
    if _available is None:
        why_unavailable = _probe()
        _available = not why_unavailable
    return _available


def _probe():
    """'' if a trivial kernel compiles, runs and gives the right numbers, else the reason."""
    if cuda is None:
        return "numba has no CUDA target (pip install 'numba-cuda[cu12]', or [cu13])"
    try:
        if not cuda.is_available():
            return "numba.cuda sees no GPU"
    except Exception as e:    # a broken driver
        return f"numba.cuda.is_available() failed: {type(e).__name__}: {e}"
    try:
        with numpy_row_stack_for_numba_cuda():
            x = cuda.to_device(np.zeros(64))
            _probe_kernel[2, 32](x)
            if not np.array_equal(x.copy_to_host(), 2.0 * np.arange(64)):
                return "a trivial kernel ran but gave wrong numbers"
            try:
                import cupy
            except ImportError:
                return ""
            y = cupy.zeros(64)
            _launch(_probe_kernel, 2, 32, y)
            if not np.array_equal(cupy.asnumpy(y), 2.0 * np.arange(64)):
                return "a trivial kernel on a CuPy array gave wrong numbers"
    except Exception as e:    # no NVVM, a driver too old for the PTX, a numba-cuda incompatibility ...
        return f"a trivial kernel failed: {type(e).__name__}: {str(e)[:300]}"
    return ""


def _jit(device=False, cache=True):
    """cuda.jit, or the plain function where numba has no CUDA target (then never launched)."""
    if cuda is None:
        return lambda f: f
    return cuda.jit(device=True, cache=cache) if device else cuda.jit(cache=cache)


# not cached on disk: available() must compile it, because numba-cuda's first compile is what
# needs numpy_row_stack_for_numba_cuda (a kernel loaded from the cache might not be)
@_jit(cache=False)
def _probe_kernel(x):
    i = cuda.grid(1)
    if i < x.shape[0]:
        x[i] = 2.0 * i


if cuda is not None:
    # the one-block kernels below (cross-entropy's count and loss) are meant to be one block
    warnings.filterwarnings("ignore", message=r"Grid size 1 will likely result in GPU under-utilization")


# ---------------------------------------------------------------- block reductions
# Every thread of the block passes its partial value v and gets the block's total back.
# blockDim.x must be a power of two (_block_size makes it one); buf is a float64 shared array
# of at least blockDim.x entries. The last syncthreads lets the caller reuse buf at once.

@_jit(device=True)
def _block_sum(v, buf):
    tid = cuda.threadIdx.x
    buf[tid] = v
    cuda.syncthreads()
    half = cuda.blockDim.x // 2
    while half > 0:                               # tree: buf[k] += buf[k + half], half = n/2, n/4, ...
        if tid < half:
            buf[tid] += buf[tid + half]
        cuda.syncthreads()
        half //= 2
    total = buf[0]
    cuda.syncthreads()
    return total


@_jit(device=True)
def _block_max(v, buf):
    """The largest v; nan is passed over (as C's fmax), callers let it through another way."""
    tid = cuda.threadIdx.x
    buf[tid] = v
    cuda.syncthreads()
    half = cuda.blockDim.x // 2
    while half > 0:
        if tid < half and buf[tid + half] > buf[tid]:
            buf[tid] = buf[tid + half]
        cuda.syncthreads()
        half //= 2
    best = buf[0]
    cuda.syncthreads()
    return best


# ---------------------------------------------------------------- causal softmax

# Block r = (n, t): row t of matrix n, which sees keys 0..t.
# y[t, j] = exp(x[t, j] - m) / sum_{k<=t} exp(x[t, k] - m)   for j <= t,   m = max_{k<=t} x[t, k]
# y[t, j] = 0                                                for j > t
@_jit()
def _causal_softmax_forward(x, y):
    buf = cuda.shared.array(ROW_THREADS, np.float64)
    T = x.shape[1]
    n, t = cuda.blockIdx.x // T, cuda.blockIdx.x % T
    tid, step = cuda.threadIdx.x, cuda.blockDim.x
    m_own = -math.inf                             # the max of this thread's elements
    for j in range(tid, t + 1, step):
        if x[n, t, j] > m_own:                    # a nan is skipped here but reaches y through exp
            m_own = x[n, t, j]
    m = x.dtype.type(_block_max(m_own, buf))
    s = np.float64(0.0)
    for j in range(tid, t + 1, step):
        e = math.exp(x[n, t, j] - m)              # in x's dtype (expf for float32)
        y[n, t, j] = e                            # the same thread scales it below: no sync needed
        s += e
    inv_s = x.dtype.type(1.0 / _block_sum(s, buf))
    zero = x.dtype.type(0.0)
    for j in range(tid, T, step):
        y[n, t, j] = y[n, t, j] * inv_s if j <= t else zero


def causal_softmax_forward(x, out=None):
    """Causal softmax of attention scores x (N, T, T) -> y (N, T, T), zeros above the diagonal.

    out: an optional (N, T, T) device array to write y into (and return); it may be x.
    """
    x = _as_float_array(x, "x", ndim=3)
    if x.shape[1] != x.shape[2]:
        raise ValueError(f"x must be (N, T, T) attention scores, got shape {x.shape}")
    y = _output_array(out, x)
    if x.size:
        N, T, _ = x.shape
        _launch(_causal_softmax_forward, N * T, _block_size(T, SOFTMAX_THREADS), x, y)
    return y


# dx[t, j] = y[t, j] * (dy[t, j] - sum_{k<=t} dy[t, k] * y[t, k])   for j <= t
# dx[t, j] = 0                                                      for j > t
@_jit()
def _causal_softmax_backward(dy, y, dx):
    buf = cuda.shared.array(ROW_THREADS, np.float64)
    T = y.shape[1]
    n, t = cuda.blockIdx.x // T, cuda.blockIdx.x % T
    tid, step = cuda.threadIdx.x, cuda.blockDim.x
    s_own = np.float64(0.0)
    for j in range(tid, t + 1, step):
        s_own += dy[n, t, j] * y[n, t, j]
    s = y.dtype.type(_block_sum(s_own, buf))
    zero = y.dtype.type(0.0)
    for j in range(tid, T, step):                 # dx may be dy: each thread rewrites only its own j
        dx[n, t, j] = y[n, t, j] * (dy[n, t, j] - s) if j <= t else zero


def causal_softmax_backward(dy, y, out=None):
    """Gradient of causal_softmax_forward: dy, y (N, T, T) -> dx (N, T, T), zeros above the diagonal.

    out: an optional (N, T, T) device array to write dx into (and return); it may be dy.
    """
    dy = _as_float_array(dy, "dy", ndim=3)
    y = _as_float_array(y, "y", ndim=3)
    _check_same(dy, y, "dy", "y")
    if y.shape[1] != y.shape[2]:
        raise ValueError(f"y must be (N, T, T) attention weights, got shape {y.shape}")
    dx = _output_array(out, y)
    if y.size:
        N, T, _ = y.shape
        _launch(_causal_softmax_backward, N * T, _block_size(T, SOFTMAX_THREADS), dy, y, dx)
    return dx


# ---------------------------------------------------------------- LayerNorm

# Block i: row i.  mean = sum(x) / C,  var = sum((x - mean)^2) / C,  rstd = 1 / sqrt(var + eps)
# out = (x - mean) * rstd * w + b
@_jit()
def _layernorm_forward(x, w, b, eps, out, mean, rstd):
    buf = cuda.shared.array(ROW_THREADS, np.float64)
    C = x.shape[1]
    i, tid, step = cuda.blockIdx.x, cuda.threadIdx.x, cuda.blockDim.x
    s = np.float64(0.0)
    for c in range(tid, C, step):
        s += x[i, c]
    m = _block_sum(s, buf) / C                    # float64
    v = np.float64(0.0)
    for c in range(tid, C, step):
        d = x[i, c] - m
        v += d * d
    r = 1.0 / math.sqrt(_block_sum(v, buf) / C + eps)
    mi, ri = x.dtype.type(m), x.dtype.type(r)     # in x's dtype, as the backward will see them
    if tid == 0:
        mean[i] = mi
        rstd[i] = ri
    for c in range(tid, C, step):
        out[i, c] = (x[i, c] - mi) * ri * w[c] + b[c]


def layernorm_forward(x, w, b, eps=1e-5):
    """LayerNorm of rows x (N, C) with weight w (C,) and bias b (C,) -> (out, mean, rstd).

    out is (N, C); mean and rstd are (N,), in x's dtype, for layernorm_backward.
    """
    x = _as_float_array(x, "x", ndim=2)
    w = _as_float_array(w, "w", ndim=1)
    b = _as_float_array(b, "b", ndim=1)
    _check_same(w, b, "w", "b")
    if w.shape[0] != x.shape[1] or w.dtype != x.dtype:
        raise ValueError(f"w and b must be ({x.shape[1]},) {x.dtype} for x of shape {x.shape}, "
                         f"got {w.shape} {w.dtype}")
    N, C = x.shape
    if C == 0:
        raise ValueError(f"x must have at least one feature to normalize, got shape {x.shape}")
    out = _empty(x, x.shape, x.dtype)
    mean = _empty(x, (N,), x.dtype)
    rstd = _empty(x, (N,), x.dtype)
    if x.size:
        _launch(_layernorm_forward, N, _block_size(C, ROW_THREADS), x, w, b, float(eps), out, mean, rstd)
    return out, mean, rstd


# Block i: row i.  xhat = (x - mean) * rstd,  dxhat = dout * w
# dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))       (means over the C features)
@_jit()
def _layernorm_backward_dx(dout, x, mean, rstd, w, dx):
    buf = cuda.shared.array(ROW_THREADS, np.float64)
    C = x.shape[1]
    i, tid, step = cuda.blockIdx.x, cuda.threadIdx.x, cuda.blockDim.x
    m, r = mean[i], rstd[i]
    s1 = np.float64(0.0)                          # sum(dxhat)
    s2 = np.float64(0.0)                          # sum(dxhat * xhat)
    for c in range(tid, C, step):
        xhat = (x[i, c] - m) * r
        dxhat = dout[i, c] * w[c]
        s1 += dxhat
        s2 += dxhat * xhat
    m1 = x.dtype.type(_block_sum(s1, buf) / C)
    m2 = x.dtype.type(_block_sum(s2, buf) / C)
    for c in range(tid, C, step):
        xhat = (x[i, c] - m) * r
        dx[i, c] = r * (dout[i, c] * w[c] - m1 - xhat * m2)


# dw = sum_rows(dout * xhat),  db = sum_rows(dout):  thread (column c, chunk k) sums the rows
# of chunk k into parts[k, c] (float64); neighbouring threads read neighbouring columns.
@_jit()
def _layernorm_param_grad_parts(dout, x, mean, rstd, dw_parts, db_parts):
    N, C = x.shape
    n_chunks = dw_parts.shape[0]
    c = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    k = cuda.blockIdx.y
    if c < C:
        sw = np.float64(0.0)
        sb = np.float64(0.0)
        for i in range(k * N // n_chunks, (k + 1) * N // n_chunks):
            g = dout[i, c]
            sw += g * ((x[i, c] - mean[i]) * rstd[i])
            sb += g
        dw_parts[k, c] = sw
        db_parts[k, c] = sb


# dw[c] = sum over the chunks of dw_parts[k, c], in chunk order (so the same bits every run)
@_jit()
def _sum_param_grad_parts(dw_parts, db_parts, dw, db):
    c = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if c < dw.shape[0]:
        sw = np.float64(0.0)
        sb = np.float64(0.0)
        for k in range(dw_parts.shape[0]):
            sw += dw_parts[k, c]
            sb += db_parts[k, c]
        dw[c] = sw
        db[c] = sb


def layernorm_backward(dout, x, mean, rstd, w):
    """Gradients of layernorm_forward: dout (N, C) -> (dx (N, C), dw (C,), db (C,))."""
    dout = _as_float_array(dout, "dout", ndim=2)
    x = _as_float_array(x, "x", ndim=2)
    _check_same(dout, x, "dout", "x")
    mean = _as_float_array(mean, "mean", ndim=1, dtype=x.dtype)
    rstd = _as_float_array(rstd, "rstd", ndim=1, dtype=x.dtype)
    w = _as_float_array(w, "w", ndim=1, dtype=x.dtype)
    N, C = x.shape
    if mean.shape != (N,) or rstd.shape != (N,):
        raise ValueError(f"mean and rstd must be ({N},) for x of shape {x.shape}, "
                         f"got {mean.shape} and {rstd.shape}")
    if w.shape != (C,):
        raise ValueError(f"w must be ({C},) for x of shape {x.shape}, got {w.shape}")
    dx = _empty(x, x.shape, x.dtype)
    dw = _empty(x, (C,), x.dtype)
    db = _empty(x, (C,), x.dtype)
    n_chunks = max(1, min(N, LN_CHUNKS))
    dw_parts = _empty(x, (n_chunks, C), np.float64)
    db_parts = _empty(x, (n_chunks, C), np.float64)
    if C:
        if N:
            _launch(_layernorm_backward_dx, N, _block_size(C, ROW_THREADS), dout, x, mean, rstd, w, dx)
        threads = _block_size(C, 128)
        columns = -(-C // threads)
        _launch(_layernorm_param_grad_parts, (columns, n_chunks), threads, dout, x, mean, rstd,
                dw_parts, db_parts)
        _launch(_sum_param_grad_parts, columns, threads, dw_parts, db_parts, dw, db)
    return dx, dw, db


# ---------------------------------------------------------------- float32 -> bfloat16 bits
# The rounding of kernels/cuda_gemm.py's to_bf16 (see there), on the float32 bits u (uint32):
# nearest, ties to even; NaN to bfloat16's NaN 0x7FC0.
@_jit()
def _to_bf16(u, out):
    for j in range(cuda.grid(1), u.shape[0], cuda.gridsize(1)):
        x = u[j]
        if (x & 0x7F800000) == 0x7F800000 and (x & 0x7FFFFF) != 0:
            out[j] = 0x7FC0
        else:
            out[j] = (x + 0x7FFF + ((x >> 16) & 1)) >> 16


# ---------------------------------------------------------------- GELU (tanh approximation)

# y = 0.5 * x * (1 + tanh(u)) = x * s,   s = sigmoid(2u) = 1 / (1 + exp(-2u)),
# u = sqrt(2/pi) * (x + 0.044715 * x^3)            (the CPU kernel's form: one exp, no tanh)
@_jit()
def _gelu_forward(x, y):
    k0 = x.dtype.type(-2.0 * SQRT_2_OVER_PI)     # constants in x's dtype: float32 stays float32
    k1 = x.dtype.type(GELU_COEF)
    one = x.dtype.type(1.0)
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        xi = x[i]
        y[i] = xi / (one + math.exp(k0 * (xi + k1 * xi * xi * xi)))


def gelu_forward(x, out=None):
    """GELU (tanh approximation) of x, any shape -> y of the same shape and dtype.

    out: an optional device array of x's shape and dtype to write y into (and return); it may be x.
    """
    x = _as_float_array(x, "x")
    y = _output_array(out, x)
    if x.size:
        threads = _block_size(x.size, ROW_THREADS)
        _launch(_gelu_forward, _grid_blocks(x.size, threads), threads, x.ravel(), y.ravel())
    return y


# dy/dx = s + 2 * x * s * (1 - s) * du/dx,   s = sigmoid(2u),
# du/dx = sqrt(2/pi) * (1 + 3 * 0.044715 * x^2);   dx = dout * dy/dx
@_jit()
def _gelu_backward(dout, x, dx):
    k0 = x.dtype.type(-2.0 * SQRT_2_OVER_PI)
    k1 = x.dtype.type(GELU_COEF)
    k2 = x.dtype.type(2.0 * SQRT_2_OVER_PI)
    k3 = x.dtype.type(3.0 * GELU_COEF)
    one, lim = x.dtype.type(1.0), x.dtype.type(20.0)
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        xi = x[i]
        s = one / (one + math.exp(k0 * (xi + k1 * xi * xi * xi)))
        # beyond |x| = 20 the second term is below 1e-250 (0 in float32): clamping x there keeps
        # x^2 from overflowing (inf * 0 = nan) for huge |x|, as in the CPU kernel
        xc = xi if xi < lim else lim
        xc = xc if xc > -lim else -lim
        dx[i] = dout[i] * (s + xc * s * (one - s) * (k2 * (one + k3 * xc * xc)))


def gelu_backward(dout, x, out=None):
    """Gradient of gelu_forward: dout, x (same shape) -> dx.

    out: an optional device array of x's shape and dtype to write dx into (and return); it may be dout.
    """
    dout = _as_float_array(dout, "dout")
    x = _as_float_array(x, "x")
    _check_same(dout, x, "dout", "x")
    dx = _output_array(out, x)
    if x.size:
        threads = _block_size(x.size, ROW_THREADS)
        _launch(_gelu_backward, _grid_blocks(x.size, threads), threads, dout.ravel(), x.ravel(), dx.ravel())
    return dx


# ---------------------------------------------------------------- arrays and launches

def _block_size(n, cap):
    """Threads of a block that strides over n elements: a power of two (the tree reductions
    halve it), at least one warp (32), at most cap and MAX_THREADS."""
    threads = 32
    while threads < n and threads < cap:
        threads *= 2
    return min(threads, cap, MAX_THREADS)


def _grid_blocks(n, threads):
    """Blocks of a grid-stride loop over n elements: enough to cover them, at most GRID_BLOCKS."""
    return max(1, min(-(-n // threads), GRID_BLOCKS, MAX_BLOCKS))


def _cupy(a):
    """The cupy module if `a` is a CuPy array, else None."""
    if type(a).__module__.startswith("cupy"):
        import cupy
        return cupy
    return None


def _is_numba_device_array(a):
    return hasattr(a, "copy_to_host")            # numba's DeviceNDArray, and the simulator's


def _as_float_array(a, name, ndim=None, dtype=None):
    """`a` as a C-contiguous float32/float64 device array (cast to `dtype` if given), or raise with what was wrong."""
    cp = _cupy(a)
    if cp is None and not _is_numba_device_array(a):
        raise TypeError(f"{name} must be a device array (CuPy, or numba's cuda.to_device), got "
                        f"{type(a).__name__}: scratchgpt.kernels has the kernels for NumPy arrays")
    if np.dtype(a.dtype) not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(a.shape)}")
    if dtype is not None and a.dtype != dtype:
        if cp is None:
            raise TypeError(f"{name} is {a.dtype}, expected {np.dtype(dtype)}")
        a = a.astype(dtype)
    return _contiguous(a, name)


def _contiguous(a, name):
    """A CuPy array made C-contiguous (a copy only if it is not); a numba device array must be."""
    cp = _cupy(a)
    if cp is not None:
        return cp.ascontiguousarray(a)
    if not a.is_c_contiguous():
        raise ValueError(f"{name} must be C-contiguous (copy it with numba.cuda.to_device(numpy.ascontiguousarray(...)))")
    return a


def _check_same(a, b, name_a, name_b):
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"{name_a} has shape {tuple(a.shape)} but {name_b} has shape {tuple(b.shape)}")
    if a.dtype != b.dtype:
        raise TypeError(f"{name_a} is {a.dtype} but {name_b} is {b.dtype}")


def _empty(like, shape, dtype):
    """A new device array of the same kind as `like` (CuPy or numba)."""
    cp = _cupy(like)
    if cp is not None:
        return cp.empty(shape, dtype=dtype)
    return cuda.device_array(shape, dtype=dtype)


def _to_device_like(like, host):
    """The NumPy array `host` copied to the device, as an array of the same kind as `like`."""
    cp = _cupy(like)
    return cp.asarray(host) if cp is not None else cuda.to_device(host)


def _output_array(out, like):
    """`out` if given (checked: same kind, shape and dtype as `like`, C-contiguous), else a new array."""
    if out is None:
        return _empty(like, like.shape, like.dtype)
    same_kind = (_cupy(out) is None) == (_cupy(like) is None) and \
        _is_numba_device_array(out) == _is_numba_device_array(like)
    if not same_kind or tuple(out.shape) != tuple(like.shape) or out.dtype != like.dtype:
        raise ValueError(f"out must be a {like.dtype} array of shape {tuple(like.shape)} like the input, "
                         f"got {type(out).__name__} {getattr(out, 'dtype', '')} {tuple(getattr(out, 'shape', ()))}")
    contiguous = out.flags.c_contiguous if _cupy(out) is not None else out.is_c_contiguous()
    if not contiguous:
        raise ValueError("out must be a C-contiguous array")
    return out


def _launch(kernel, grid, threads, *args):
    """kernel[grid, threads](*args) on CuPy's current stream when the arrays are CuPy's.

    CuPy arrays are handed to numba as device-array views with sync=False: by default numba
    would synchronise the host with the array's stream on every launch (the CUDA Array
    Interface's stream rule), which would stall the queue of a training step many times over.
    Launching on CuPy's own current stream keeps the order of the work without that.
    """
    if _available is None and kernel is not _probe_kernel:
        available()           # the first compile needs numpy_row_stack_for_numba_cuda: the probe has it
    stream = 0
    if any(_cupy(a) is not None for a in args):
        import cupy
        args = [cuda.as_cuda_array(a, sync=False) if _cupy(a) is not None else a for a in args]
        ptr = cupy.cuda.get_current_stream().ptr
        stream = cuda.external_stream(ptr) if ptr else 0
    kernel[grid, threads, stream](*args)


# the loss and the update (cross-entropy, the embedding's scatter-add, AdamW) live in cuda_step.py
from .cuda_step import adamw_step, cross_entropy_forward_backward, embedding_backward  # noqa: E402,F401
# the matrix products: cuBLAS called directly, so that a CUDA graph can capture them
from .cuda_gemm import gemm  # noqa: E402,F401
# the causal attention without the T x T weights (SCRATCHGPT_ATTENTION=flash in kernels/ops.py)
from .cuda_flash import flash_attention_backward, flash_attention_forward  # noqa: E402,F401
