"""The fused kernels on a GPU, written with numba.cuda (installed as scratchgpt.kernels.cuda).

The same functions, arguments and results as the CPU kernels beside this file, on device arrays:

    causal_softmax_forward(x, out=None) -> y            causal_softmax_backward(dy, y, out=None) -> dx
    layernorm_forward(x, w, b, eps) -> out, mean, rstd  layernorm_backward(dout, x, mean, rstd, w) -> dx, dw, db
    gelu_forward(x, out=None) -> y                      gelu_backward(dout, x, out=None) -> dx
    cross_entropy_forward_backward(logits, targets, ignore_index, out=None) -> loss, dlogits
    embedding_backward(dout, ids, out) -> out (the (V, C) gradient, added into in place)
    adamw_step(p, g, m, v, t, lr, betas, eps, weight_decay, n_decay)   (flat buffers, in place)

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
        _launch(_causal_softmax_forward, N * T, _block_size(T, ROW_THREADS), x, y)
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
        _launch(_causal_softmax_backward, N * T, _block_size(T, ROW_THREADS), dy, y, dx)
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


# ---------------------------------------------------------------- cross-entropy

# One block counts the rows whose target is not ignore_index: n_valid[0] (as float64, exact).
@_jit()
def _count_valid_targets(targets, ignore_index, n_valid):
    buf = cuda.shared.array(CE_THREADS, np.float64)
    count = np.float64(0.0)
    for i in range(cuda.threadIdx.x, targets.shape[0], cuda.blockDim.x):
        if targets[i] != ignore_index:
            count += 1.0
    total = _block_sum(count, buf)
    if cuda.threadIdx.x == 0:
        n_valid[0] = total


# Block i: row z = logits[i].  lse = m + log(sum_j exp(z_j - m)),  m = max_j z_j
# row_loss = lse - z[target],  dlogits[j] = (exp(z_j - lse) - [j == target]) / n,  n = max(n_valid, 1)
# an ignored row: loss 0 and gradient 0; a target outside [0, V): loss and gradient nan
@_jit()
def _cross_entropy_rows(logits, targets, ignore_index, n_valid, dlogits, row_loss):
    buf = cuda.shared.array(CE_THREADS, np.float64)
    V = logits.shape[1]
    i, tid, step = cuda.blockIdx.x, cuda.threadIdx.x, cuda.blockDim.x
    tgt = targets[i]
    if tgt == ignore_index or tgt < 0 or tgt >= V:       # the whole block takes this branch
        fill = logits.dtype.type(0.0 if tgt == ignore_index else math.nan)
        for j in range(tid, V, step):
            dlogits[i, j] = fill
        if tid == 0:
            row_loss[i] = fill
        return
    z_tgt = logits[i, tgt]                        # read before any thread writes (dlogits may be logits)
    m_own = -math.inf
    for j in range(tid, V, step):
        if logits[i, j] > m_own:                  # a nan is skipped here but reaches the loss through exp
            m_own = logits[i, j]
    m = logits.dtype.type(_block_max(m_own, buf))
    s_own = np.float64(0.0)
    for j in range(tid, V, step):
        s_own += math.exp(logits[i, j] - m)
    s = _block_sum(s_own, buf)
    n = n_valid[0] if n_valid[0] > 1.0 else 1.0
    scale = logits.dtype.type(1.0 / (s * n))      # softmax_j / n = exp(z_j - m) * scale
    for j in range(tid, V, step):
        g = math.exp(logits[i, j] - m) * scale
        dlogits[i, j] = g - 1.0 / n if j == tgt else g
    if tid == 0:
        row_loss[i] = m + math.log(s) - z_tgt


# One block: loss[0] = sum(row_loss) / max(n_valid, 1), float64 (0 when every row is ignored).
@_jit()
def _mean_loss(row_loss, n_valid, loss):
    buf = cuda.shared.array(CE_THREADS, np.float64)
    s = np.float64(0.0)
    for i in range(cuda.threadIdx.x, row_loss.shape[0], cuda.blockDim.x):
        s += row_loss[i]
    total = _block_sum(s, buf)
    if cuda.threadIdx.x == 0:
        loss[0] = total / (n_valid[0] if n_valid[0] > 1.0 else 1.0)


def cross_entropy_forward_backward(logits, targets, ignore_index=-100, out=None):
    """Mean cross-entropy of logits (N, V) against int targets (N,) -> (loss, dlogits (N, V)).

    loss is a 0-d float64 array on the device (float(loss) reads it; see the module notes);
    dlogits is d loss / d logits, in the dtype of logits. Rows whose target is ignore_index add
    nothing and get a zero gradient; if every row is ignored the loss is 0 and dlogits all zero.
    out: an optional (N, V) device array to write dlogits into (and return); it may be logits.
    Three launches, no host synchronisation: count the kept rows, the rows, the mean.
    """
    logits = _as_float_array(logits, "logits", ndim=2)
    if isinstance(targets, (list, tuple)):
        targets = np.asarray(targets)
    if targets.dtype.kind not in "iu":
        raise TypeError(f"targets must be integers (int32 or int64), got {targets.dtype}")
    N, V = logits.shape
    if tuple(targets.shape) != (N,):
        raise ValueError(f"targets must be ({N},) for logits of shape {logits.shape}, got {tuple(targets.shape)}")
    if isinstance(targets, np.ndarray):           # on the host: check as the CPU kernel does, then copy
        targets = np.ascontiguousarray(targets, dtype=np.int64)
        valid = targets != ignore_index
        bad = valid & ((targets < 0) | (targets >= V))
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"target {int(targets[i])} at row {i} is outside the vocabulary [0, {V}) "
                             f"and is not ignore_index ({ignore_index})")
        targets = _to_device_like(logits, targets)
    else:
        if _cupy(targets) is None and not _is_numba_device_array(targets):
            raise TypeError(f"targets must be a NumPy or a device array, got {type(targets).__name__}")
        targets = _contiguous(targets, "targets")
    dlogits = _output_array(out, logits)
    n_valid = _empty(logits, (1,), np.float64)
    row_loss = _empty(logits, (N,), np.float64)
    loss = _empty(logits, (1,), np.float64)
    threads = _block_size(N, CE_THREADS)
    _launch(_count_valid_targets, 1, threads, targets, int(ignore_index), n_valid)
    if N:
        _launch(_cross_entropy_rows, N, _block_size(V, CE_THREADS), logits, targets, int(ignore_index),
                n_valid, dlogits, row_loss)
    _launch(_mean_loss, 1, threads, row_loss, n_valid, loss)
    return loss.reshape(()), dlogits


# ---------------------------------------------------------------- embedding backward

# dweight[v] = sum of dout[n] over the rows n with ids[n] == v, without atomics. The ids are
# sorted (order: dout's rows by id); thread (n, c) with n the first position of a run of equal
# ids sums that run's rows of column c, in order, and adds the sum into out[id, c]. Each
# (id, c) has exactly one thread, so the result is the same bits on every run (an atomicAdd
# scatter, like cupy.add.at, sums in whatever order the threads arrive).
@_jit()
def _embedding_backward(dout, order, sorted_ids, out):
    N, C = dout.shape
    n = cuda.blockIdx.x
    c = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
    v = sorted_ids[n]
    if c >= C or (n > 0 and sorted_ids[n - 1] == v) or v < 0 or v >= out.shape[0]:
        return
    s = np.float64(0.0)
    m = n
    while m < N and sorted_ids[m] == v:
        s += dout[order[m], c]
        m += 1
    out[v, c] += s


def embedding_backward(dout, ids, out):
    """Add dout (..., C) into the table's gradient `out` (V, C) at rows ids (...), in place, and
    return `out`. A negative id counts from the end (as in NumPy); on the device an id outside
    [-V, V) adds nothing (checking it would wait for the GPU; the model checks its ids first).
    """
    dout = _as_float_array(dout, "dout")
    C = dout.shape[dout.ndim - 1]
    if tuple(ids.shape) != tuple(dout.shape)[:-1]:
        raise ValueError(f"ids have shape {tuple(ids.shape)} but dout has shape {tuple(dout.shape)}")
    same_kind = out is not None and (_cupy(out) is None) == (_cupy(dout) is None)
    if not same_kind or out.ndim != 2 or out.shape[1] != C or out.dtype != dout.dtype \
            or not (out.flags.c_contiguous if _cupy(out) is not None else out.is_c_contiguous()):
        raise ValueError(f"out must be a C-contiguous {dout.dtype} device array of shape (V, {C}) like dout, "
                         f"got {type(out).__name__} {getattr(out, 'dtype', '')} {tuple(getattr(out, 'shape', ()))}")
    dout = dout.reshape(-1, C)
    N = dout.shape[0]
    if N and C:
        order, sorted_ids = _sort_ids(ids, out.shape[0])
        threads = _block_size(C, 128)
        _launch(_embedding_backward, (N, -(-C // threads)), threads, dout, order, sorted_ids, out)
    return out


def _sort_ids(ids, V):
    """(order, sorted ids): the positions of the ids sorted by value, negative ids counted from
    the end first. On the device for CuPy arrays; numba device arrays (the simulator's tests) and
    NumPy ids are sorted on the host."""
    cp = _cupy(ids)
    if cp is not None:
        flat = ids.reshape(-1).astype(cp.int64)
        flat = cp.where(flat < 0, flat + V, flat)
        order = cp.argsort(flat)                  # CuPy's sort: a radix sort, the same order every run
        return order, flat[order]
    host = ids.copy_to_host() if _is_numba_device_array(ids) else np.asarray(ids)
    host = host.reshape(-1).astype(np.int64)
    host = np.where(host < 0, host + V, host)
    order = np.argsort(host, kind="stable")
    return cuda.to_device(order), cuda.to_device(host[order])


# ---------------------------------------------------------------- AdamW

# One pass over the flat buffers (a grid-stride loop), each element read once and written once:
#   m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
#   p <- p * (1 - lr * wd)                                  only for elements i < n_decay
#   p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
# the update of scratchgpt/optim.py's array code (about a dozen passes) in one launch.
@_jit()
def _adamw_step(p, g, m, v, n_decay, decay, b1, b2, step_size, inv_sqrt_bc2, eps):
    one = p.dtype.type(1.0)
    c1, c2 = one - b1, one - b2
    for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        gi = g[i]
        mi = b1 * m[i] + c1 * gi
        vi = b2 * v[i] + c2 * (gi * gi)
        m[i] = mi
        v[i] = vi
        pi = p[i] * (decay if i < n_decay else one)
        p[i] = pi - step_size * (mi / (math.sqrt(vi) * inv_sqrt_bc2 + eps))


def adamw_step(p, g, m, v, t, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, n_decay=0):
    """Update the 1-D device buffers p, m, v in place with gradient g, for step number t (1, 2, ...).

    Weight decay (decoupled, lr * weight_decay) applies to p[:n_decay] only. The scalars are
    computed on the host and passed in p's dtype, so float32 buffers see no float64 math.
    """
    p = _as_float_array(p, "p", ndim=1)
    for name, a in (("g", g), ("m", m), ("v", v)):
        _check_same(_as_float_array(a, name, ndim=1), p, name, "p")
    if not 0 <= n_decay <= p.shape[0]:
        raise ValueError(f"n_decay must be in [0, {p.shape[0]}], got {n_decay}")
    if t < 1:
        raise ValueError(f"the step number t counts from 1, got {t}")
    if p.shape[0]:
        f = p.dtype.type
        b1, b2 = betas
        threads = _block_size(p.shape[0], ROW_THREADS)
        _launch(_adamw_step, _grid_blocks(p.shape[0], threads), threads, p, g, m, v, int(n_decay),
                f(1.0 - lr * weight_decay), f(b1), f(b2), f(lr / (1.0 - b1 ** t)),
                f(1.0 / math.sqrt(1.0 - b2 ** t)), f(eps))


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
