"""The point-wise primitives on NumPy: bias, activations, losses, optimizer updates.

float32 stays float32: scalars are cast to the array's dtype, no float64 temporaries.
Activations run over the flattened arrays in parallel ranges, writing one new output.
"""
from __future__ import annotations

import numpy as np

from . import blocks
from .memory import flat_pair
from .parallel import elementwise


def finite(a):
    """True when every element of a float array is finite.

    A sum reads the array once and allocates nothing; it is finite unless an
    element is NaN or infinite, or the sum overflowed, which the exact check
    below then settles.
    """
    if a.dtype.kind == "f":
        with np.errstate(over="ignore", invalid="ignore"):
            if np.isfinite(np.add.reduce(a, axis=None)):
                return True
    return bool(np.isfinite(a).all())


def all_finite(a):
    a = np.asarray(a)
    if a.ndim == 0 or not a.flags.c_contiguous:
        return finite(a)
    flat = a.reshape(-1)
    return all(elementwise(flat.size, 1, lambda s, e: finite(flat[s:e])))


# ------------------------------------------------------------------ bias
def bias_forward(y, b):
    if y.ndim == 4:
        b4 = b.reshape(1, -1, 1, 1)

        def part(s, e):
            y[s:e] += b4
        elementwise(y.shape[0], y[0].size, part)
    else:
        y += b
    return y


_ACTS = {None: None, "identity": None, "relu": "relu_forward", "sigmoid": "sigmoid_forward",
         "tanh": "tanh_forward"}


def bias_act_forward(y, b, act):
    y = bias_forward(y, b)
    name = _ACTS[act]
    return y if name is None else globals()[name](y)


def bias_backward(dy):
    """sum of dy over all but the channel axis: each (sample, channel) row summed in dy's
    dtype, the rows added over the samples in float64 as batch norm's (blocks.channel_total)."""
    if dy.ndim == 4:
        n, c = dy.shape[0], dy.shape[1]
        d3 = dy.reshape(n, c, -1)
        dy = np.concatenate(elementwise(n, d3[0].size, lambda s, e: d3[s:e].sum(axis=2)))
    return blocks.channel_total(dy)


# ----------------------------------------------------------- activations
def sigmoid_forward(x):
    # 1/(1+exp(-x)): exp overflows to inf for x << 0 and 1/(1+inf) = 0 exactly,
    # which is the right answer, so only the overflow warning needs silencing.
    xf, y = flat_pair(x)
    one = x.dtype.type(1)

    def part(s, e):
        ys = y[s:e]
        np.negative(xf[s:e], out=ys)
        with np.errstate(over="ignore"):
            np.exp(ys, out=ys)
        ys += one
        np.reciprocal(ys, out=ys)

    elementwise(xf.size, 1, part)
    return y.reshape(x.shape)


def sigmoid_backward(dy, y):
    dyf, out = flat_pair(dy)
    yf = y.reshape(-1)
    one = y.dtype.type(1)

    def part(s, e):
        o = out[s:e]
        np.multiply(dyf[s:e], yf[s:e], out=o)
        o *= np.subtract(one, yf[s:e])

    elementwise(dyf.size, 1, part)
    return out.reshape(dy.shape)


def relu_forward(x):
    xf, y = flat_pair(x)
    zero = x.dtype.type(0)
    elementwise(xf.size, 1, lambda s, e: np.maximum(xf[s:e], zero, out=y[s:e]))
    return y.reshape(x.shape)


def relu_backward(dy, y):
    # (y > 0) written as 1.0 / 0.0 straight into the result, then times dy (np.where is
    # four times slower here), block by block (blocks.BLOCK_BYTES) so that the product
    # and the check read the block from cache.  Where y <= 0 this gives dy * 0: 0 for
    # finite dy, NaN for dy = +-inf or NaN, and NaN is the only wrong value it can give
    # (maximum.reduce propagates NaN); such a block is redone as the exact select
    # (blocks.relu_grad_into, which the fused batch norm's backward shares).
    dyf, out = flat_pair(dy)
    yf = y.reshape(-1)
    step = max(1, blocks.BLOCK_BYTES // out.itemsize)

    def part(s, e):
        for lo in range(s, e, step):
            hi = min(e, lo + step)
            blocks.relu_grad_into(out[lo:hi], dyf[lo:hi], yf[lo:hi])

    elementwise(dyf.size, 1, part)
    return out.reshape(dy.shape)


def tanh_forward(x):
    xf, y = flat_pair(x)
    elementwise(xf.size, 1, lambda s, e: np.tanh(xf[s:e], out=y[s:e]))
    return y.reshape(x.shape)


def tanh_backward(dy, y):
    dyf, out = flat_pair(dy)
    yf = y.reshape(-1)
    one = y.dtype.type(1)

    def part(s, e):
        o = out[s:e]
        np.multiply(yf[s:e], yf[s:e], out=o)
        np.subtract(one, o, out=o)
        o *= dyf[s:e]

    elementwise(dyf.size, 1, part)
    return out.reshape(dy.shape)


# ---------------------------------------------------------------- losses
def softmax_cross_entropy_forward(logits, labels):
    n = logits.shape[0]
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    s = e.sum(axis=1, keepdims=True)
    logp_true = z[np.arange(n), labels] - np.log(s[:, 0])
    probs = e / s
    return np.array(float(-logp_true.mean()), dtype=np.float64), probs


def softmax_cross_entropy_backward(probs, labels):
    n = probs.shape[0]
    g = probs.copy()
    g[np.arange(n), labels] -= probs.dtype.type(1)
    g *= probs.dtype.type(1.0 / n)
    return g


def mse_forward(y, t):
    d = y - t
    return np.array(float(np.vdot(d, d) / d.size), dtype=np.float64)


def mse_backward(y, t):
    return (y - t) * y.dtype.type(2.0 / y.size)


# ------------------------------------------------------------ optimizers
def sgd_update(param, grad, buf, lr, momentum, weight_decay, nesterov, first):
    t = param.dtype.type
    g = grad
    if weight_decay:
        g = grad + t(weight_decay) * param
    if momentum:
        if first:
            buf[...] = g
        else:
            buf *= t(momentum)
            buf += g
        g = g + t(momentum) * buf if nesterov else buf
    param -= t(lr) * g


def adam_update(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay):
    t = param.dtype.type
    g = grad
    if weight_decay:
        g = grad + t(weight_decay) * param
    m *= t(beta1)
    m += t(1 - beta1) * g
    v *= t(beta2)
    v += t(1 - beta2) * (g * g)
    bc1 = 1 - beta1 ** step
    bc2 = 1 - beta2 ** step
    denom = np.sqrt(v)
    denom *= t(1.0 / np.sqrt(bc2))
    denom += t(eps)
    param -= t(lr / bc1) * (m / denom)


# ------------------------------------------------------------------ data
def gather_rows(src, idx):
    return src[np.asarray(idx, dtype=np.int64)]


def gather_normalize(src, idx, mean, std, pixel_max, dtype):
    """As data.normalize(src[idx] * (1/pixel_max)): the same roundings in ``dtype``."""
    dt = np.dtype(dtype)
    c = src.shape[1]
    shape = (1, c) + (1,) * (src.ndim - 2)
    x = src[np.asarray(idx, dtype=np.int64)].astype(dt) * dt.type(1.0 / pixel_max)
    return (x - np.asarray(mean, dtype=dt).reshape(shape)) / np.asarray(std, dtype=dt).reshape(shape)
