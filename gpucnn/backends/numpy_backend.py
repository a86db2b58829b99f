"""The backend primitives on NumPy (see ``gpucnn.backends`` for the list and semantics).

Habits: float32 stays float32 (scalars are cast to the array's dtype, no float64
temporaries); convolution is im2col as one strided copy feeding one large GEMM;
col2im and pooling backward are ``kh*kw`` strided adds, never loops over pixels.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided


def _out_size(size, k, s, p):
    return (size + 2 * p - k) // s + 1


def _pad(x, ph, pw, value=0.0):
    if ph == 0 and pw == 0:
        return x
    n, c, h, w = x.shape
    out = np.empty((n, c, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
    if value == 0.0:
        out.fill(0)
    else:
        out.fill(value)
    out[:, :, ph:ph + h, pw:pw + w] = x
    return out


def _windows(xp_, kernel, stride, out_hw, order):
    """Strided view of every (kh, kw) window of the padded input, no copy.

    order "ckn": shape (C, kh, kw, N, OH, OW)  -- im2col rows for one big GEMM
    order "nc":  shape (N, C, OH, OW, kh, kw)  -- pooling windows
    """
    n, c, _, _ = xp_.shape
    kh, kw = kernel
    sh, sw = stride
    oh, ow = out_hw
    s_n, s_c, s_h, s_w = xp_.strides
    if order == "ckn":
        return as_strided(xp_, shape=(c, kh, kw, n, oh, ow),
                          strides=(s_c, s_h, s_w, s_n, s_h * sh, s_w * sw), writeable=False)
    return as_strided(xp_, shape=(n, c, oh, ow, kh, kw),
                      strides=(s_n, s_c, s_h * sh, s_w * sw, s_h, s_w), writeable=False)


def _im2col(x, kernel, stride, padding):
    """(C*kh*kw, N*OH*OW) matrix of input patches, one contiguous copy."""
    n, c, h, w = x.shape
    kh, kw = kernel
    oh = _out_size(h, kh, stride[0], padding[0])
    ow = _out_size(w, kw, stride[1], padding[1])
    xp_ = _pad(x, padding[0], padding[1])
    cols = np.ascontiguousarray(_windows(xp_, kernel, stride, (oh, ow), "ckn"))
    return cols.reshape(c * kh * kw, n * oh * ow), (oh, ow)


def _strided_add_into(dst_pad, src, kernel, stride, out_hw):
    """dst_pad[:, :, i + sh*a, j + sw*b] += src[..., i, j, a, b] for every window offset (i, j).

    ``src`` is indexed as src_fn(i, j) -> array of shape (N, C, OH, OW).
    """
    kh, kw = kernel
    sh, sw = stride
    oh, ow = out_hw
    for i in range(kh):
        for j in range(kw):
            dst_pad[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw] += src(i, j)


def _crop(x_pad, padding, x_shape):
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x_pad
    h, w = x_shape[2], x_shape[3]
    return np.ascontiguousarray(x_pad[:, :, ph:ph + h, pw:pw + w])


class NumpyBackend:
    """Every primitive of ``gpucnn.backends.PRIMITIVES`` on NumPy arrays."""

    name = "cpu"
    xp = np

    # ---------------------------------------------------------------- arrays
    def asarray(self, a, dtype=None):
        if hasattr(a, "get") and not isinstance(a, np.ndarray):  # a CuPy array
            a = a.get()
        return np.ascontiguousarray(a, dtype=dtype)

    def to_numpy(self, a):
        return np.asarray(a)

    def zeros(self, shape, dtype):
        return np.zeros(shape, dtype=dtype)

    def all_finite(self, a):
        return bool(np.isfinite(a).all())

    def accumulate(self, dst, src):
        np.add(dst, src, out=dst)

    # ---------------------------------------------------------- convolution
    def conv2d_forward(self, x, w, stride, padding):
        n = x.shape[0]
        o, c, kh, kw = w.shape
        cols, (oh, ow) = _im2col(x, (kh, kw), stride, padding)
        y = w.reshape(o, c * kh * kw) @ cols                       # (O, N*OH*OW)
        return np.ascontiguousarray(y.reshape(o, n, oh, ow).transpose(1, 0, 2, 3))

    def conv2d_backward_data(self, dy, w, x_shape, stride, padding):
        n, c, h, wd = x_shape
        o, _, kh, kw = w.shape
        oh, ow = dy.shape[2], dy.shape[3]
        dy_m = np.ascontiguousarray(dy.transpose(1, 0, 2, 3)).reshape(o, n * oh * ow)
        dcols = (w.reshape(o, c * kh * kw).T @ dy_m).reshape(c, kh, kw, n, oh, ow)
        dx_pad = np.zeros((n, c, h + 2 * padding[0], wd + 2 * padding[1]), dtype=dy.dtype)
        _strided_add_into(dx_pad, lambda i, j: dcols[:, i, j].transpose(1, 0, 2, 3),
                          (kh, kw), stride, (oh, ow))
        return _crop(dx_pad, padding, x_shape)

    def conv2d_backward_weight(self, dy, x, w_shape, stride, padding):
        o, c, kh, kw = w_shape
        n, _, oh, ow = dy.shape
        cols, _ = _im2col(x, (kh, kw), stride, padding)
        dy_m = np.ascontiguousarray(dy.transpose(1, 0, 2, 3)).reshape(o, n * oh * ow)
        return (dy_m @ cols.T).reshape(w_shape)

    # ---------------------------------------------------------------- dense
    def linear_forward(self, x, w):
        return x @ w.T

    def linear_backward_data(self, dy, w):
        return dy @ w

    def linear_backward_weight(self, dy, x):
        return dy.T @ x

    def bias_forward(self, y, b):
        if y.ndim == 4:
            y += b.reshape(1, -1, 1, 1)
        else:
            y += b
        return y

    def bias_backward(self, dy):
        if dy.ndim == 4:
            return dy.sum(axis=(0, 2, 3))
        return dy.sum(axis=0)

    # -------------------------------------------------------------- pooling
    def maxpool2d_forward(self, x, kernel, stride, padding):
        n, c, h, w = x.shape
        kh, kw = kernel
        oh = _out_size(h, kh, stride[0], padding[0])
        ow = _out_size(w, kw, stride[1], padding[1])
        xp_ = _pad(x, padding[0], padding[1], value=-np.inf)
        win = _windows(xp_, kernel, stride, (oh, ow), "nc").reshape(n, c, oh, ow, kh * kw)
        a = win.argmax(axis=4)                        # first maximum on a tie
        y = np.take_along_axis(win, a[..., None], axis=4)[..., 0]
        # window offset -> flat index h*W + w in the unpadded input plane
        top = (np.arange(oh, dtype=np.int32) * stride[0] - padding[0])[:, None]
        left = (np.arange(ow, dtype=np.int32) * stride[1] - padding[1])[None, :]
        a = a.astype(np.int32)
        argmax = (top + a // kw) * w + (left + a % kw)
        return np.ascontiguousarray(y), argmax.astype(np.int32, copy=False)

    def maxpool2d_backward(self, dy, argmax, x_shape, kernel, stride, padding):
        n, c, h, w = x_shape
        kh, kw = kernel
        oh, ow = dy.shape[2], dy.shape[3]
        top = (np.arange(oh, dtype=np.int32) * stride[0] - padding[0])[:, None]
        left = (np.arange(ow, dtype=np.int32) * stride[1] - padding[1])[None, :]
        off = (argmax // w - top) * kw + (argmax % w - left)     # window offset i*kw + j
        dx_pad = np.zeros((n, c, h + 2 * padding[0], w + 2 * padding[1]), dtype=dy.dtype)
        zero = dy.dtype.type(0)
        _strided_add_into(dx_pad, lambda i, j: np.where(off == i * kw + j, dy, zero),
                          kernel, stride, (oh, ow))
        return _crop(dx_pad, padding, x_shape)

    def avgpool2d_forward(self, x, kernel, stride, padding):
        n, c, h, w = x.shape
        kh, kw = kernel
        sh, sw = stride
        oh = _out_size(h, kh, sh, padding[0])
        ow = _out_size(w, kw, sw, padding[1])
        xp_ = _pad(x, padding[0], padding[1])
        y = np.zeros((n, c, oh, ow), dtype=x.dtype)
        for i in range(kh):
            for j in range(kw):
                y += xp_[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
        y *= x.dtype.type(1.0 / (kh * kw))
        return y

    def avgpool2d_backward(self, dy, x_shape, kernel, stride, padding):
        n, c, h, w = x_shape
        kh, kw = kernel
        g = dy * dy.dtype.type(1.0 / (kh * kw))
        dx_pad = np.zeros((n, c, h + 2 * padding[0], w + 2 * padding[1]), dtype=dy.dtype)
        _strided_add_into(dx_pad, lambda i, j: g, kernel, stride, dy.shape[2:])
        return _crop(dx_pad, padding, x_shape)

    # ---------------------------------------------------------- activations
    def sigmoid_forward(self, x):
        # 1/(1+exp(-x)): exp overflows to inf for x << 0 and 1/(1+inf) = 0 exactly,
        # which is the right answer, so only the overflow warning needs silencing.
        y = np.negative(x)
        with np.errstate(over="ignore"):
            np.exp(y, out=y)
        y += y.dtype.type(1)
        np.reciprocal(y, out=y)
        return y

    def sigmoid_backward(self, dy, y):
        one = y.dtype.type(1)
        return dy * y * (one - y)

    def relu_forward(self, x):
        return np.maximum(x, x.dtype.type(0))

    def relu_backward(self, dy, y):
        return np.where(y > 0, dy, dy.dtype.type(0))

    def tanh_forward(self, x):
        return np.tanh(x)

    def tanh_backward(self, dy, y):
        one = y.dtype.type(1)
        return dy * (one - y * y)

    # --------------------------------------------------------------- losses
    def softmax_cross_entropy_forward(self, logits, labels):
        n = logits.shape[0]
        z = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(z)
        s = e.sum(axis=1, keepdims=True)
        logp_true = z[np.arange(n), labels] - np.log(s[:, 0])
        probs = e / s
        return float(-logp_true.mean()), probs

    def softmax_cross_entropy_backward(self, probs, labels):
        n = probs.shape[0]
        g = probs.copy()
        g[np.arange(n), labels] -= probs.dtype.type(1)
        g *= probs.dtype.type(1.0 / n)
        return g

    def mse_forward(self, y, t):
        d = y - t
        return float(np.vdot(d, d) / d.size)

    def mse_backward(self, y, t):
        return (y - t) * y.dtype.type(2.0 / y.size)

    # ------------------------------------------------------------ optimizers
    def sgd_update(self, param, grad, buf, lr, momentum, weight_decay, nesterov, first):
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

    def adam_update(self, param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay):
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
