"""The backend primitives on NumPy (see ``gpucnn.backends`` for the list and semantics).

Habits: float32 stays float32 (scalars are cast to the array's dtype, no float64
temporaries); every loop in Python runs over the kh*kw window offsets, never over
pixels or samples.

How the time is spent well (measured with ``benchmarks/bench_train.py``):

* Convolution is im2col + GEMM, a few samples at a time (``CHUNK_BYTES`` of
  columns): the columns are written and read back while they are still in the
  cache, the GEMMs run on operands of the size BLAS does best with, and nothing
  the size of the batch's columns is ever allocated.  The column layout per
  sample is ``(C*kh*kw, OH*OW)``, so ``W @ cols[n]`` is already NCHW and
  ``W.T @ dy[n]`` comes out in the layout col2im adds from; backward-weight lays
  a chunk out as ``(C*kh*kw, samples*OH*OW)`` for one GEMM per chunk.
* im2col copies each window offset's valid rectangle (borders stay zero in the
  reused buffer); col2im adds each offset's valid rectangle straight into dx.
  Neither pads a copy of the input nor crops a padded gradient.
* Max pooling: a row stage then a column stage over strided slices, each keeping
  the first maximum with a strict ``>``; the offsets live in uint8 arrays.  Its
  backward scatters straight to the recorded index when windows do not overlap.
* ReLU's backward multiplies by the mask written as 1.0/0.0 (np.where is four
  times slower); all_finite reads the array once through a sum.
"""
from __future__ import annotations

import numpy as np


def _out_size(size, k, s, p):
    return (size + 2 * p - k) // s + 1


def _valid(out, size, off, s, p):
    """Output positions o in [lo, hi) whose input index o*s + off - p lies in [0, size).

    Returns (lo, hi, first input index); hi <= lo when there is none.
    """
    lo = max(0, -((off - p) // s))                    # ceil((p - off) / s)
    hi = min(out, (size - 1 + p - off) // s + 1)
    return lo, hi, lo * s + off - p


def _span(start, count, step):
    """slice of ``count`` elements from ``start`` every ``step``."""
    return slice(start, start + step * (count - 1) + 1, step)


def _finite(a):
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


# im2col columns are built and consumed a few samples at a time, so that they stay in
# the cache between being written and being read by the GEMM (measured: the GEMMs run
# at their best with operands of about this size, and nothing big is ever allocated).
CHUNK_BYTES = 1 << 20


def _chunk(n, per_sample_bytes):
    return max(1, min(n, CHUNK_BYTES // max(1, per_sample_bytes)))


def _fill_cols(cols, x, kernel, stride, padding):
    """cols[n, c, i, j, oh, ow] = x_pad[n, c, oh*sh + i, ow*sw + j] for the valid positions.

    ``cols`` is a (N, C, kh, kw, OH, OW) view of any layout whose padding positions
    already hold zeros (they are never written here, so a reused buffer keeps them).
    """
    _, _, h, w = x.shape
    kh, kw = kernel
    sh, sw = stride
    ph, pw = padding
    oh, ow = cols.shape[4], cols.shape[5]
    for i in range(kh):
        lo_h, hi_h, in_h = _valid(oh, h, i, sh, ph)
        if hi_h <= lo_h:
            continue
        for j in range(kw):
            lo_w, hi_w, in_w = _valid(ow, w, j, sw, pw)
            if hi_w <= lo_w:
                continue
            cols[:, :, i, j, lo_h:hi_h, lo_w:hi_w] = x[:, :, _span(in_h, hi_h - lo_h, sh),
                                                      _span(in_w, hi_w - lo_w, sw)]


def _is_pointwise(kernel, stride, padding):
    return tuple(kernel) == (1, 1) and tuple(stride) == (1, 1) and tuple(padding) == (0, 0)


def _col2im_add(dx, dcols, kernel, stride, padding):
    """dx[n, c, oh*sh + i - ph, ow*sw + j - pw] += dcols[n, c, i, j, oh, ow] (inside dx only)."""
    _, _, h, w = dx.shape
    kh, kw = kernel
    sh, sw = stride
    ph, pw = padding
    oh, ow = dcols.shape[4], dcols.shape[5]
    for i in range(kh):
        lo_h, hi_h, in_h = _valid(oh, h, i, sh, ph)
        if hi_h <= lo_h:
            continue
        for j in range(kw):
            lo_w, hi_w, in_w = _valid(ow, w, j, sw, pw)
            if hi_w <= lo_w:
                continue
            dx[:, :, _span(in_h, hi_h - lo_h, sh), _span(in_w, hi_w - lo_w, sw)] += \
                dcols[:, :, i, j, lo_h:hi_h, lo_w:hi_w]


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
        return _finite(np.asarray(a))

    def accumulate(self, dst, src):
        np.add(dst, src, out=dst)

    # ---------------------------------------------------------- convolution
    def conv2d_forward(self, x, w, stride, padding):
        n, c, h, wd = x.shape
        o, _, kh, kw = w.shape
        oh, ow = _out_size(h, kh, stride[0], padding[0]), _out_size(wd, kw, stride[1], padding[1])
        k, p = c * kh * kw, oh * ow
        w2 = w.reshape(o, k)
        y = np.empty((n, o, oh, ow), dtype=x.dtype)
        if _is_pointwise((kh, kw), stride, padding):
            np.matmul(w2, x.reshape(n, c, p), out=y.reshape(n, o, p))
            return y
        g = _chunk(n, k * p * x.itemsize)
        buf = np.zeros((g, c, kh, kw, oh, ow), dtype=x.dtype)     # (samples, C*kh*kw, OH*OW)
        for s in range(0, n, g):
            e = min(n, s + g)
            cols = buf[:e - s]
            _fill_cols(cols, x[s:e], (kh, kw), stride, padding)
            np.matmul(w2, cols.reshape(e - s, k, p), out=y[s:e].reshape(e - s, o, p))
        return y

    def conv2d_backward_data(self, dy, w, x_shape, stride, padding):
        n, c, h, wd = x_shape
        o, _, kh, kw = w.shape
        oh, ow = dy.shape[2], dy.shape[3]
        k, p = c * kh * kw, oh * ow
        w2t = w.reshape(o, k).T
        if _is_pointwise((kh, kw), stride, padding):
            return np.matmul(w2t, dy.reshape(n, o, p)).reshape(x_shape)
        dx = np.zeros(x_shape, dtype=dy.dtype)
        g = _chunk(n, k * p * dy.itemsize)
        buf = np.empty((g, k, p), dtype=dy.dtype)
        for s in range(0, n, g):
            e = min(n, s + g)
            dcols = np.matmul(w2t, dy[s:e].reshape(e - s, o, p), out=buf[:e - s])
            _col2im_add(dx[s:e], dcols.reshape(e - s, c, kh, kw, oh, ow), (kh, kw), stride, padding)
        return dx

    def conv2d_backward_weight(self, dy, x, w_shape, stride, padding):
        o, c, kh, kw = w_shape
        n, _, oh, ow = dy.shape
        k, p = c * kh * kw, oh * ow
        if _is_pointwise((kh, kw), stride, padding):
            cols_t = np.ascontiguousarray(x.reshape(n, c, p).transpose(1, 0, 2)).reshape(c, n * p)
            dy_t = np.ascontiguousarray(dy.reshape(n, o, p).transpose(1, 0, 2)).reshape(o, n * p)
            return (dy_t @ cols_t.T).reshape(w_shape)
        # dW = sum over samples of dy[n] @ cols[n].T, as one GEMM per chunk of samples:
        # columns laid out (C*kh*kw, samples*OH*OW) and dy as (O, samples*OH*OW)
        g = _chunk(n, k * p * dy.itemsize)
        dw = None
        for s in range(0, n, g):
            e = min(n, s + g)
            if s == 0 or e - s != g:
                cols_t = np.zeros((c, kh, kw, e - s, oh, ow), dtype=dy.dtype)
                dy_t = np.empty((o, e - s, p), dtype=dy.dtype)
            _fill_cols(cols_t.transpose(3, 0, 1, 2, 4, 5), x[s:e], (kh, kw), stride, padding)
            np.copyto(dy_t, dy[s:e].reshape(e - s, o, p).transpose(1, 0, 2))
            part = dy_t.reshape(o, (e - s) * p) @ cols_t.reshape(k, (e - s) * p).T
            if dw is None:
                dw = part
            else:
                dw += part
        return dw.reshape(w_shape)

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
            n, c = dy.shape[0], dy.shape[1]
            return dy.reshape(n, c, -1).sum(axis=2).sum(axis=0)
        return dy.sum(axis=0)

    # -------------------------------------------------------------- pooling
    def maxpool2d_forward(self, x, kernel, stride, padding):
        n, c, h, w = x.shape
        kh, kw = kernel
        sh, sw = stride
        ph, pw = padding
        oh, ow = _out_size(h, kh, sh, ph), _out_size(w, kw, sw, pw)
        if kh * kw > 255:                  # window offsets no longer fit the uint8 bookkeeping
            return _maxpool_exact(x, kernel, stride, padding, (oh, ow))
        if ph or pw:
            xp_ = np.full((n, c, h + 2 * ph, w + 2 * pw), -np.inf, dtype=x.dtype)
            xp_[:, :, ph:ph + h, pw:pw + w] = x
        else:
            xp_ = x
        u8 = np.uint8
        # Two stages, each keeping the first maximum (a later element wins only when
        # strictly greater): along each row's kw columns, then down the kh rows.  The
        # first row holding the window's maximum, and its first column holding it, is
        # the first maximum in row-major window order.
        r = np.array(xp_[..., _span(0, ow, sw)])         # (N, C, Hp, OW) row maxima
        rj = np.zeros(r.shape, dtype=u8)                 # and their column offsets
        for j in range(1, kw):
            v = xp_[..., _span(j, ow, sw)]
            gt = np.greater(v, r).view(u8)
            np.maximum(r, v, out=r)
            d = np.subtract(u8(j), rj)
            d *= gt
            rj += d
        rows = lambda a, i: a[:, :, _span(i, oh, sh)]    # noqa: E731
        y = np.array(rows(r, 0))
        wi = np.zeros(y.shape, dtype=u8)                 # row offset of the maximum
        wj = np.array(rows(rj, 0))                       # column offset of the maximum
        for i in range(1, kh):
            v = rows(r, i)
            gt = np.greater(v, y).view(u8)
            np.maximum(y, v, out=y)
            d = np.subtract(u8(i), wi)
            d *= gt
            wi += d
            d = np.subtract(rows(rj, i), wj)             # uint8 wrap-around cancels out
            d *= gt
            wj += d
        if not _finite(y):                 # NaN or infinity in x: the careful path
            return _maxpool_exact(x, kernel, stride, padding, (oh, ow))
        # window offset -> flat index h*W + w in the unpadded input plane
        argmax = wi.astype(np.int32)
        argmax *= np.int32(w)
        argmax += wj
        top = np.arange(oh, dtype=np.int32) * np.int32(sh) - np.int32(ph)
        left = np.arange(ow, dtype=np.int32) * np.int32(sw) - np.int32(pw)
        argmax += top[:, None] * np.int32(w) + left[None, :]
        return y, argmax

    def maxpool2d_backward(self, dy, argmax, x_shape, kernel, stride, padding):
        n, c, h, w = x_shape
        kh, kw = kernel
        sh, sw = stride
        ph, pw = padding
        oh, ow = dy.shape[2], dy.shape[3]
        dx = np.zeros(x_shape, dtype=dy.dtype)
        if sh >= kh and sw >= kw:
            # windows do not overlap: each input element is some window's maximum at
            # most once, so the gradient is a scatter to the recorded index
            planes = n * c
            flat = argmax.reshape(planes, oh * ow).astype(np.intp)
            flat += (np.arange(planes, dtype=np.intp) * (h * w))[:, None]
            dx.reshape(-1)[flat.reshape(-1)] = dy.reshape(-1)
            return dx
        # overlapping windows: per window offset, the windows whose maximum sits
        # there add their gradient into that offset's rectangle of dx
        top = np.arange(oh, dtype=np.int32) * np.int32(sh) - np.int32(ph)
        left = np.arange(ow, dtype=np.int32) * np.int32(sw) - np.int32(pw)
        rel = argmax - (top[:, None] * np.int32(w) + left[None, :])   # i*W + j of the choice
        zero = dy.dtype.type(0)
        for i in range(kh):
            lo_h, hi_h, in_h = _valid(oh, h, i, sh, ph)
            if hi_h <= lo_h:
                continue
            for j in range(kw):
                lo_w, hi_w, in_w = _valid(ow, w, j, sw, pw)
                if hi_w <= lo_w:
                    continue
                sel = (slice(None), slice(None), slice(lo_h, hi_h), slice(lo_w, hi_w))
                dx[:, :, _span(in_h, hi_h - lo_h, sh), _span(in_w, hi_w - lo_w, sw)] += \
                    np.where(rel[sel] == i * w + j, dy[sel], zero)
        return dx

    def avgpool2d_forward(self, x, kernel, stride, padding):
        n, c, h, w = x.shape
        kh, kw = kernel
        sh, sw = stride
        ph, pw = padding
        oh, ow = _out_size(h, kh, sh, ph), _out_size(w, kw, sw, pw)
        y = np.zeros((n, c, oh, ow), dtype=x.dtype)
        for i in range(kh):
            lo_h, hi_h, in_h = _valid(oh, h, i, sh, ph)
            if hi_h <= lo_h:
                continue
            for j in range(kw):
                lo_w, hi_w, in_w = _valid(ow, w, j, sw, pw)
                if hi_w <= lo_w:
                    continue
                y[:, :, lo_h:hi_h, lo_w:hi_w] += x[:, :, _span(in_h, hi_h - lo_h, sh),
                                                   _span(in_w, hi_w - lo_w, sw)]
        y *= x.dtype.type(1.0 / (kh * kw))
        return y

    def avgpool2d_backward(self, dy, x_shape, kernel, stride, padding):
        kh, kw = kernel
        g = dy * dy.dtype.type(1.0 / (kh * kw))
        dx = np.zeros(x_shape, dtype=dy.dtype)
        oh, ow = dy.shape[2], dy.shape[3]
        g6 = np.broadcast_to(g[:, :, None, None], g.shape[:2] + (kh, kw, oh, ow))
        _col2im_add(dx, g6, kernel, stride, padding)
        return dx

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
        out = np.multiply(dy, y)
        out *= np.subtract(y.dtype.type(1), y)
        return out

    def relu_forward(self, x):
        return np.maximum(x, x.dtype.type(0))

    def relu_backward(self, dy, y):
        # (y > 0) written as 1.0 / 0.0 straight into the result, then times dy: two
        # passes and no boolean temporary (np.where is four times slower here).  Where
        # y <= 0 this gives dy * 0, which is 0 for the finite dy the layers pass.
        out = np.empty_like(dy)
        np.greater(y, y.dtype.type(0), out=out)
        out *= dy
        if not _finite(out):               # inf * 0 = NaN: fall back to the exact select
            return np.where(y > 0, dy, dy.dtype.type(0))
        return out

    def tanh_forward(self, x):
        return np.tanh(x)

    def tanh_backward(self, dy, y):
        out = np.multiply(y, y)
        np.subtract(y.dtype.type(1), out, out=out)
        out *= dy
        return out

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


def _maxpool_exact(x, kernel, stride, padding, out_hw):
    """Max pooling for inputs holding NaN or infinities, with the CUDA kernel's rules:
    only real (unpadded) elements compete, the first NaN wins, else the first maximum."""
    n, c, h, w = x.shape
    kh, kw = kernel
    sh, sw = stride
    ph, pw = padding
    oh, ow = out_hw
    y = np.full((n, c, oh, ow), -np.inf, dtype=x.dtype)
    argmax = np.full((n, c, oh, ow), -1, dtype=np.int32)
    for i in range(kh):
        lo_h, hi_h, in_h = _valid(oh, h, i, sh, ph)
        for j in range(kw):
            lo_w, hi_w, in_w = _valid(ow, w, j, sw, pw)
            if hi_h <= lo_h or hi_w <= lo_w:
                continue
            rows = np.arange(in_h, in_h + sh * (hi_h - lo_h), sh, dtype=np.int32)
            cols = np.arange(in_w, in_w + sw * (hi_w - lo_w), sw, dtype=np.int32)
            v = x[:, :, _span(in_h, hi_h - lo_h, sh), _span(in_w, hi_w - lo_w, sw)]
            best = y[:, :, lo_h:hi_h, lo_w:hi_w]
            at = argmax[:, :, lo_h:hi_h, lo_w:hi_w]
            take = (at < 0) | (~np.isnan(best) & ((v > best) | np.isnan(v)))
            np.copyto(best, v, where=take)
            np.copyto(at, rows[:, None] * np.int32(w) + cols[None, :], where=take)
    return y, argmax
