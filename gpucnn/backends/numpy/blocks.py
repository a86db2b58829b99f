"""NumPy primitives of issue 10's layers: batch norm, dropout, option-A shortcuts, the
element-wise add of residual blocks, label-smoothed cross-entropy.

Plain functions; ``NumpyBackend`` (backend.py) binds each as a method, one line each.  The
exact semantics are in ``gpucnn/backends/__init__.py``; ``kernels/batchnorm.cu``,
``dropout.cu``, ``residual.cu`` and ``label_smoothing.cu`` compute the same formulas in the
same order, so the per-element arithmetic agrees bit for bit and only the reductions differ
(here each (sample, channel) row summed in x's dtype by np.einsum or pairwise, the rows
then added over the samples in float64; there double accumulators throughout).
"""
from __future__ import annotations

import math

import numpy as np

from .memory import empty, flat_pair, scratch
from . import parallel
from .parallel import WORKERS, elementwise

#: splitmix64 constants (Steele, Lea, Flood: "Fast splittable pseudorandom number generators")
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
#: elements hashed per chunk (bounds the uint64 temporaries to a few MiB)
_DROPOUT_CHUNK = 1 << 18


def _view3(a):
    """(N, C, ...) -> (N, C, S) view, S = product of the trailing axes (1 for 2-D)."""
    return a.reshape(a.shape[0], a.shape[1], -1)


#: Rows of at most this many values are summed by np.einsum: two to three times faster
#: than ndarray.sum on rows of 64 to 1024 values (ndarray.sum pays per row), and a product
#: of two operands is summed without being written out.  Its float32 accumulators (4
#: vectors of lanes) each take about S/32 of the values, so longer rows are left to
#: NumPy's pairwise sum.
EINSUM_MAX_ROW = 4096


def _row_sums(a3, out):
    """out[n, c] = sum over s of a3[n, c, s], for an (N, C, S) array (dtype kept)."""
    if 1 < a3.shape[2] <= EINSUM_MAX_ROW:
        np.einsum("ncs->nc", a3, out=out)
    else:
        a3.sum(axis=2, out=out)


def _row_dots(a3, b3, out, tmp):
    """out[n, c] = sum over s of a3[n, c, s] * b3[n, c, s]; ``tmp`` (a3's shape, may be
    a3 or b3) takes the products of rows too long for np.einsum."""
    if 1 < a3.shape[2] <= EINSUM_MAX_ROW:
        np.einsum("ncs,ncs->nc", a3, b3, out=out)
    else:
        np.multiply(a3, b3, out=tmp)
        tmp.sum(axis=2, out=out)


#: Bytes of one array's share of a block.  The batch-norm passes run block by block
#: inside each worker's range, so the arrays a block touches (inputs, output, a scratch
#: temporary) are still in cache (L2 is 1 MiB a core here, L3 32 MiB) from one NumPy call
#: to the next, and the temporaries are one reused block, not fresh arrays as large as the
#: range.  Not smaller: each call of a worker releases and retakes the GIL, and with two
#: workers short calls lose more to GIL handoffs than the cache gains.  In-step A/B on
#: ResNet-20 (sum of batch norm's three primitives per step): 128 KiB slower than no
#: blocking; 512 KiB 98 ms, 1 MiB 83, 2 MiB 85, 4 MiB (no blocking at 8 MiB) 88.
BLOCK_BYTES = 1 << 20


def _block_shape(n, c, s, itemsize):
    """(samples, channels) of one block of an (N, C, S) array: whole samples while one
    fits in BLOCK_BYTES, else channel ranges of one sample (at least one row)."""
    row = max(1, s * itemsize)
    if c * row <= BLOCK_BYTES:
        return max(1, min(n, BLOCK_BYTES // (c * row))), c
    return 1, max(1, BLOCK_BYTES // row)


def _temp(shape, s, dtype):
    """This thread's scratch block for (samples, channels) blocks of S-element rows: one
    flat buffer per dtype whatever the layer's shape, viewed as (samples, channels, S)."""
    nb, cb = shape
    size = nb * cb * s
    dtype = np.dtype(dtype)
    buf = scratch("batchnorm-block", (max(size, BLOCK_BYTES // dtype.itemsize),), dtype)
    return buf[:size].reshape(nb, cb, s)


def _blocks(lo, hi, c, shape):
    """(n0, n1, c0, c1) blocks of _block_shape ``shape`` covering samples [lo, hi)."""
    nb, cb = shape
    if cb >= c:
        for n0 in range(lo, hi, nb):
            yield n0, min(hi, n0 + nb), 0, c
    else:
        for n0 in range(lo, hi):
            for c0 in range(0, c, cb):
                yield n0, n0 + 1, c0, min(c, c0 + cb)


def _per_channel(v, s, shape, c):
    """v (C,) as an operand of (samples, C, S) blocks.  When blocks hold whole samples: a
    (C, S) plane of v[c] repeated (at most BLOCK_BYTES), so that NumPy runs one contiguous
    loop over C*S per sample, where a (C, 1) broadcast costs an inner-loop call per row
    (twice the time at S = 1024).  Else (C, 1).  Same values either way."""
    if shape[1] >= c and s > 1:
        return np.repeat(v, s).reshape(c, s)
    return v[:, None]


def add(a, b, act=None):
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        s = np.add(a, b)
        return s if act is None else np.maximum(s, s.dtype.type(0))
    af, out = flat_pair(a)
    bf = np.ascontiguousarray(b).reshape(-1)
    if act is None:
        elementwise(af.size, 1, lambda s, e: np.add(af[s:e], bf[s:e], out=out[s:e]))
    else:                       # "relu": relu_forward's np.maximum on each block while in cache
        zero, step = a.dtype.type(0), max(1, BLOCK_BYTES // a.itemsize)

        def part(s, e):
            for b0 in range(s, e, step):
                o = out[b0:min(e, b0 + step)]
                np.add(af[b0:b0 + o.size], bf[b0:b0 + o.size], out=o)
                np.maximum(o, zero, out=o)
        elementwise(af.size, 1, part)
    return out.reshape(a.shape)


# The blocks of an (N, C, S) array are the units the worker threads share (Workers.share:
# a thread that runs out takes the blocks left).  Sums go per (sample, channel) row into
# one (N, C) array, summed over the samples once every block is done, so every sum is
# the same, bit for bit, whatever the block size or the number of threads.  (A row's sum
# depends on its values alone: np.einsum and ndarray.sum sum each row in an order fixed
# by its length.)
def _share_blocks(x3, fn):
    """fn(blocks) on the worker threads over the (n0, n1, c0, c1) blocks of the (N, C, S)
    array x3 (each thread that takes part calls fn once, with the blocks it takes).
    Returns the block shape."""
    n, c, s = x3.shape
    shape = _block_shape(n, c, s, x3.itemsize)
    blocks = list(_blocks(0, n, c, shape))
    split = WORKERS.worth_splitting(n, c * s, parallel.PARALLEL_MIN_ELEMENTS)
    WORKERS.share([(len(blocks), lambda units: fn(blocks[i] for i in units))],
                  split=split, blas=False)
    return shape


def batchnorm_stats(x):
    x3 = _view3(x)
    n, c, s = x3.shape
    rows = np.empty((n, c), dtype=x.dtype)

    def sums(blocks):
        for n0, n1, c0, c1 in blocks:
            _row_sums(x3[n0:n1, c0:c1], rows[n0:n1, c0:c1])
    shape = _share_blocks(x3, sums)
    mean = channel_total(rows, n * s)
    mc = _per_channel(mean, s, shape, c)

    def squares(blocks):
        tmp = _temp(shape, s, x.dtype)
        for n0, n1, c0, c1 in blocks:
            d = tmp[:n1 - n0, :c1 - c0]
            np.subtract(x3[n0:n1, c0:c1], mc[c0:c1], out=d)
            _row_dots(d, d, rows[n0:n1, c0:c1], d)
    _share_blocks(x3, squares)
    return mean, channel_total(rows, n * s)


def channel_total(rows, m=1):
    """sum over the samples of the (N, C) per-(sample, channel) sums, divided by m, rounded
    to the sums' dtype: the sum over N and the division in float64.  In float32 the N partial sums
    of one channel added one after another (NumPy's reduction over the first axis) lose
    log2(N) bits where a channel's mean is far from zero (mean 50, std 1: the mean 1e-5
    off, ten times float32's rounding of it, and every normalised value off by as much)."""
    total = rows.sum(axis=0, dtype=np.float64)
    if m != 1:
        total /= m
    return total.astype(rows.dtype)


def _scale(weight, var, eps):
    t = var.dtype.type
    return weight / np.sqrt(var + t(eps))


def relu_grad_into(out, dy, y, check=True):
    """out = relu_backward(dy, y) for one block (pointwise.relu_backward runs it block by block):
    (y > 0) as 1.0/0.0 times dy, and a block where that made a NaN (dy * 0 for an infinite
    or NaN dy where y <= 0) redone as the exact select (``relu_grad_exact``; a masked copy
    is 12x slower).  ``check=False``: the caller looks for the NaN itself (in sums it takes
    of ``out`` anyway) and calls relu_grad_exact where it finds one."""
    zero = y.dtype.type(0)
    np.greater(y, zero, out=out)
    with np.errstate(invalid="ignore"):
        out *= dy
    if check and np.isnan(np.maximum.reduce(out, axis=None)):
        relu_grad_exact(out, dy, y)


def relu_grad_exact(out, dy, y):
    """out = dy where y > 0, else 0: the select itself (NaN only where dy is NaN and y > 0)."""
    zero = y.dtype.type(0)
    np.copyto(out, np.where(y > zero, dy, zero))


def batchnorm_forward(x, mean, var, weight, bias, eps, act=None):
    x3 = _view3(x)
    n, c, s = x3.shape
    y = empty(x3.shape, x.dtype)
    shape = _block_shape(n, c, s, x.itemsize)
    mc, sc, bc = (_per_channel(v, s, shape, c) for v in (mean, _scale(weight, var, eps), bias))

    def part(blocks):
        for n0, n1, c0, c1 in blocks:
            yb = y[n0:n1, c0:c1]
            np.subtract(x3[n0:n1, c0:c1], mc[c0:c1], out=yb)
            yb *= sc[c0:c1]
            yb += bc[c0:c1]
            if relu:                            # relu_forward's np.maximum, block in cache
                np.maximum(yb, zero, out=yb)
    relu, zero = act == "relu", x.dtype.type(0)
    _share_blocks(x3, part)
    return y.reshape(x.shape)


def batchnorm_backward(dy, x, mean, var, weight, eps, batch_stats, y=None):
    t = x.dtype.type
    x3, dy3 = _view3(x), _view3(dy)
    dx = empty(x3.shape, x.dtype)
    y3 = None if y is None else _view3(y)
    n, c, s = x3.shape
    invstd = t(1) / np.sqrt(var + t(eps))
    a = weight * invstd
    shape = _block_shape(n, c, s, x.itemsize)
    mc = _per_channel(mean, s, shape, c)

    rows_dy = np.empty((n, c), dtype=x.dtype)
    rows_xmu = np.empty((n, c), dtype=x.dtype)

    def sums(blocks):
        tmp = _temp(shape, s, x.dtype)
        for n0, n1, c0, c1 in blocks:
            xmu, dyb = tmp[:n1 - n0, :c1 - c0], dy3[n0:n1, c0:c1]
            rdy = rows_dy[n0:n1, c0:c1]
            if y3 is not None:      # the fused ReLU's gradient, kept in dx for the pass below
                relu_grad_into(dx[n0:n1, c0:c1], dyb, y3[n0:n1, c0:c1], check=False)
                dyb = dx[n0:n1, c0:c1]
                _row_sums(dyb, rdy)
                if np.isnan(np.maximum.reduce(rdy, axis=None)):  # a NaN in the block (see
                    relu_grad_exact(dyb, dy3[n0:n1, c0:c1], y3[n0:n1, c0:c1])  # relu_grad_into)
                    _row_sums(dyb, rdy)
            else:
                _row_sums(dyb, rdy)
            np.subtract(x3[n0:n1, c0:c1], mc[c0:c1], out=xmu)
            _row_dots(xmu, dyb, rows_xmu[n0:n1, c0:c1], xmu)
    _share_blocks(x3, sums)
    dbias = channel_total(rows_dy)
    dweight = channel_total(rows_xmu) * invstd
    if y3 is not None:
        dy3 = dx                    # the gradient that reaches the batch norm; dx in place
    if batch_stats:
        inv_m = t(1.0 / (n * s))
        k1, k2, ac = (_per_channel(v, s, shape, c)
                      for v in (dbias * inv_m, invstd * dweight * inv_m, a))

        def part(blocks):
            tmp = _temp(shape, s, x.dtype)
            for n0, n1, c0, c1 in blocks:
                d, xmu = dx[n0:n1, c0:c1], tmp[:n1 - n0, :c1 - c0]
                np.subtract(x3[n0:n1, c0:c1], mc[c0:c1], out=xmu)
                xmu *= k2[c0:c1]
                np.subtract(dy3[n0:n1, c0:c1], k1[c0:c1], out=d)
                d -= xmu
                d *= ac[c0:c1]
    else:
        ac = a[:, None]

        def part(blocks):
            for n0, n1, c0, c1 in blocks:
                np.multiply(dy3[n0:n1, c0:c1], ac[c0:c1], out=dx[n0:n1, c0:c1])
    _share_blocks(x3, part)
    return dx.reshape(x.shape), dweight, dbias


def batchnorm_update_running(running_mean, running_var, mean, var, momentum, count):
    t = running_mean.dtype.type
    m, keep, unbias = t(momentum), t(1.0 - momentum), t(count / (count - 1))
    running_mean[...] = m * mean + keep * running_mean
    running_var[...] = m * (var * unbias) + keep * running_var


def dropout_threshold(p):
    """keep(seed, i) holds when the hash's top 53 bits are >= this (an int in [0, 2**53])."""
    return int(math.ceil(float(p) * 2.0 ** 53))


def dropout_mask(n, p, seed, dtype):
    """The mask of ``dropout_forward`` for ``n`` elements: 1/(1-p) where kept, else 0."""
    t = np.dtype(dtype).type
    if p >= 1:
        return np.zeros(n, dtype=dtype)
    scale = t(1.0 / (1.0 - p))
    threshold = np.uint64(dropout_threshold(p))
    out = np.empty(n, dtype=dtype)
    s = np.uint64(seed)
    for lo in range(0, n, _DROPOUT_CHUNK):
        hi = min(n, lo + _DROPOUT_CHUNK)
        z = np.arange(lo + 1, hi + 1, dtype=np.uint64)
        z *= GOLDEN
        z += s
        z ^= z >> np.uint64(30)
        z *= _MIX1
        z ^= z >> np.uint64(27)
        z *= _MIX2
        z ^= z >> np.uint64(31)
        z >>= np.uint64(11)
        out[lo:hi] = np.where(z >= threshold, scale, t(0))
    return out


def dropout_forward(x, p, seed):
    return x * dropout_mask(x.size, p, seed, x.dtype).reshape(x.shape)


def dropout_backward(dy, p, seed):
    return dy * dropout_mask(dy.size, p, seed, dy.dtype).reshape(dy.shape)


def _subsample_shape(x_shape, stride, out_channels):
    n, _, h, w = x_shape
    sh, sw = stride
    return (n, out_channels, -(-h // sh), -(-w // sw))


def _sample_blocks(lo, hi, sample_bytes):
    """[n0, n1) sample ranges of about BLOCK_BYTES covering [lo, hi)."""
    step = max(1, BLOCK_BYTES // max(1, sample_bytes))
    for n0 in range(lo, hi, step):
        yield n0, min(hi, n0 + step)


# Pooled outputs, filled in parallel over the batch, block by block: the zeros and the
# copy of a block are written while it is in cache.
def subsample_pad_forward(x, stride, pad_before, out_channels):
    c = x.shape[1]
    shape = _subsample_shape(x.shape, stride, out_channels)
    y = empty(shape, x.dtype)
    sh, sw = stride
    sample = math.prod(shape[1:])

    def part(a, b):
        for n0, n1 in _sample_blocks(a, b, sample * y.itemsize):
            y[n0:n1, :pad_before] = 0
            y[n0:n1, pad_before + c:] = 0
            y[n0:n1, pad_before:pad_before + c] = x[n0:n1, :, ::sh, ::sw]
    elementwise(shape[0], sample, part)
    return y


def subsample_pad_backward(dy, x_shape, stride, pad_before):
    c = x_shape[1]
    x_shape = tuple(x_shape)
    dx = empty(x_shape, dy.dtype)
    sh, sw = stride
    sample = math.prod(x_shape[1:])

    def part(a, b):
        for n0, n1 in _sample_blocks(a, b, sample * dx.itemsize):
            d = dx[n0:n1]
            if (sh, sw) != (1, 1):
                d[...] = 0
            d[:, :, ::sh, ::sw] = dy[n0:n1, pad_before:pad_before + c]
    elementwise(x_shape[0], sample, part)
    return dx


def label_smoothing_cross_entropy_forward(logits, labels, eps):
    t = logits.dtype.type
    n, k = logits.shape
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    s = e.sum(axis=1)
    rows = np.log(s) - t(1.0 - eps) * z[np.arange(n), labels] - t(eps / k) * z.sum(axis=1)
    probs = e / s[:, None]
    return np.array(float(np.sum(rows, dtype=np.float64) / n), dtype=np.float64), probs


def label_smoothing_cross_entropy_backward(probs, labels, eps):
    t = probs.dtype.type
    n, k = probs.shape
    rows = np.arange(n)
    g = probs - t(eps / k)
    g[rows, labels] = probs[rows, labels] - t(1.0 - eps + eps / k)
    g *= t(1.0 / n)
    return g
