"""NumPy primitives of issue 10's layers: batch norm, dropout, option-A shortcuts, the
element-wise add of residual blocks, label-smoothed cross-entropy.

Plain functions; ``NumpyBackend`` (backend.py) binds each as a method, one line each.  The
exact semantics are in ``gpucnn/backends/__init__.py``; ``kernels/batchnorm.cu``,
``dropout.cu``, ``residual.cu`` and ``label_smoothing.cu`` compute the same formulas in the
same order, so the per-element arithmetic agrees bit for bit and only the reductions differ
(here float pairwise sums, there double accumulators).
"""
from __future__ import annotations

import math

import numpy as np

from .parallel import elementwise, split_sum

#: splitmix64 constants (Steele, Lea, Flood: "Fast splittable pseudorandom number generators")
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
#: elements hashed per chunk (bounds the uint64 temporaries to a few MiB)
_DROPOUT_CHUNK = 1 << 18


def _view3(a):
    """(N, C, ...) -> (N, C, S) view, S = product of the trailing axes (1 for 2-D)."""
    return a.reshape(a.shape[0], a.shape[1], -1)


def _channel_sum(a3):
    """Per-channel sum of an (N, C, S) array: pairwise over S, then over N (dtype kept)."""
    return a3.sum(axis=2).sum(axis=0)


def add(a, b):
    return np.add(a, b)


# The batch axis is split over the worker threads (parallel.elementwise): per-range channel
# sums are added in range order (split_sum), element-wise passes write their own rows.
def batchnorm_stats(x):
    x3 = _view3(x)
    n, _, s = x3.shape
    mean = split_sum(elementwise(n, x3[0].size, lambda a, b: _channel_sum(x3[a:b])))
    mean /= x.dtype.type(n * s)
    mc = mean[:, None]

    def squares(a, b):
        d = x3[a:b] - mc
        np.multiply(d, d, out=d)
        return _channel_sum(d)
    var = split_sum(elementwise(n, x3[0].size, squares))
    var /= x.dtype.type(n * s)
    return mean, var


def _scale(weight, var, eps):
    t = var.dtype.type
    return weight / np.sqrt(var + t(eps))


def batchnorm_forward(x, mean, var, weight, bias, eps):
    x3 = _view3(x)
    y = np.empty(x3.shape, dtype=x.dtype)
    mc, sc, bc = mean[:, None], _scale(weight, var, eps)[:, None], bias[:, None]

    def part(a, b):
        ya = y[a:b]
        np.subtract(x3[a:b], mc, out=ya)
        ya *= sc
        ya += bc
    elementwise(x3.shape[0], x3[0].size, part)
    return y.reshape(x.shape)


def batchnorm_backward(dy, x, mean, var, weight, eps, batch_stats):
    t = x.dtype.type
    x3, dy3 = _view3(x), _view3(dy)
    n, c, s = x3.shape
    invstd = t(1) / np.sqrt(var + t(eps))
    a = weight * invstd
    mc = mean[:, None]

    def sums(lo, hi):
        xmu = x3[lo:hi] - mc
        xmu *= dy3[lo:hi]
        return np.stack([_channel_sum(dy3[lo:hi]), _channel_sum(xmu)])
    both = split_sum(elementwise(n, c * s, sums))
    dbias = both[0].copy()
    dweight = both[1] * invstd
    dx = np.empty(x3.shape, dtype=x.dtype)
    if batch_stats:
        inv_m = t(1.0 / (n * s))
        k1 = (dbias * inv_m)[:, None]
        k2 = (invstd * dweight * inv_m)[:, None]
        ac = a[:, None]

        def part(lo, hi):
            d, xmu = dx[lo:hi], x3[lo:hi] - mc
            xmu *= k2
            np.subtract(dy3[lo:hi], k1, out=d)
            d -= xmu
            d *= ac
    else:
        ac = a[:, None]

        def part(lo, hi):
            np.multiply(dy3[lo:hi], ac, out=dx[lo:hi])
    elementwise(n, c * s, part)
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


def subsample_pad_forward(x, stride, pad_before, out_channels):
    c = x.shape[1]
    y = np.zeros(_subsample_shape(x.shape, stride, out_channels), dtype=x.dtype)
    y[:, pad_before:pad_before + c] = x[:, :, ::stride[0], ::stride[1]]
    return y


def subsample_pad_backward(dy, x_shape, stride, pad_before):
    c = x_shape[1]
    dx = np.zeros(tuple(x_shape), dtype=dy.dtype)
    dx[:, :, ::stride[0], ::stride[1]] = dy[:, pad_before:pad_before + c]
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
