"""Max and average pooling on NumPy.

Max pooling takes the maximum down whole rows first, then along columns, and finds
the first maximum's window offset by walking the offsets backwards comparing with
it (uint8 bookkeeping); 2x2/stride-2 windows instead sort x by window offset with
one copy and run every comparison as one long contiguous loop.  Its backward
scatters straight to the recorded index when windows do not overlap.  Inputs holding
NaN or infinity take a careful path with the CUDA kernel's rules.
"""
from __future__ import annotations

import numpy as np

from ..geometry import out_hw
from .memory import empty, scratch
from .parallel import elementwise
from .pointwise import finite
from .windows import col2im_add, span, window_offsets


def maxpool2d_forward(x, kernel, stride, padding):
    n = x.shape[0]
    kh, kw = kernel
    oh, ow = out_hw(x.shape[2:], kernel, stride, padding)
    if kh * kw > 255:                  # window offsets no longer fit the uint8 bookkeeping
        return _maxpool_exact(x, kernel, stride, padding, (oh, ow))
    y = empty((n, x.shape[1], oh, ow), x.dtype)
    argmax = empty((n, x.shape[1], oh, ow), np.int32)
    ok = elementwise(n, x[0].size, lambda s, e: _maxpool_part(
        x[s:e], y[s:e], argmax[s:e], kernel, stride, padding))
    if not all(ok):                    # NaN or infinity in x: the careful path
        return _maxpool_exact(x, kernel, stride, padding, (oh, ow))
    return y, argmax


def maxpool2d_backward(dy, argmax, x_shape, kernel, stride, padding):
    n, c, h, w = x_shape
    dx = empty(x_shape, dy.dtype)
    elementwise(n, c * h * w, lambda s, e: _maxpool_backward_part(
        dy[s:e], argmax[s:e], dx[s:e], kernel, stride, padding))
    return dx


def _is_global(x_shape, kernel, padding):
    """One window over the whole plane (global average pooling, AdaptiveAvgPool2d(1))."""
    return tuple(kernel) == tuple(x_shape[2:]) and tuple(padding) == (0, 0)


def avgpool2d_forward(x, kernel, stride, padding):
    n, c, h, w = x.shape
    kh, kw = kernel
    oh, ow = out_hw((h, w), kernel, stride, padding)
    y = empty((n, c, oh, ow), x.dtype)
    scale = x.dtype.type(1.0 / (kh * kw))
    offsets = list(window_offsets((oh, ow), (h, w), kernel, stride, padding))

    def part(s, e):
        ys = y[s:e]
        ys[...] = 0
        for _, _, (out_h, out_w), (in_h, in_w) in offsets:
            ys[:, :, out_h, out_w] += x[s:e, :, in_h, in_w]
        ys *= scale

    def global_part(s, e):
        # the same sums in the same order (window offsets in row-major order), each
        # offset's values made one contiguous row first: 3x faster than strided adds
        cols = np.ascontiguousarray(x[s:e].reshape((e - s) * c, h * w).T)
        acc = cols[0].copy()
        for row in cols[1:]:
            acc += row
        acc *= scale
        y[s:e] = acc.reshape(e - s, c, 1, 1)

    elementwise(n, x[0].size, global_part if _is_global(x.shape, kernel, padding) else part)
    return y


def avgpool2d_backward(dy, x_shape, kernel, stride, padding):
    n = x_shape[0]
    kh, kw = kernel
    oh, ow = dy.shape[2], dy.shape[3]
    scale = dy.dtype.type(1.0 / (kh * kw))
    dx = empty(x_shape, dy.dtype)
    offsets = list(window_offsets((oh, ow), tuple(x_shape[2:]), kernel, stride, padding))

    def part(s, e):
        g = dy[s:e] * scale
        dx[s:e] = 0
        g6 = np.broadcast_to(g[:, :, None, None], g.shape[:2] + (kh, kw, oh, ow))
        col2im_add(dx[s:e], g6, offsets)

    def global_part(s, e):
        # every input element is in exactly one window: 0 + g is g, broadcast
        dx[s:e] = (dy[s:e] * scale).reshape(e - s, -1, 1, 1)

    elementwise(n, dx[0].size, global_part if _is_global(x_shape, kernel, padding) else part)
    return dx


def _maxpool_2x2_part(x, y, argmax):
    """_maxpool_part for 2x2 windows, stride 2, no padding, H and W even.

    One copy sorts x by the window offset (row parity, column parity), after which
    every step is a long contiguous NumPy loop: on the strided views each loop
    ran a row of OW elements at a time, two to four times slower.  The same
    maxima in the same order and the same first-maximum rule as the general path.
    """
    n, c, h, w = x.shape
    oh, ow = y.shape[2], y.shape[3]
    rows = n * c * oh
    q = scratch("maxpool-2x2", (2, 2, rows, ow), x.dtype)     # fully written below
    np.copyto(q, x.reshape(rows, 2, ow, 2).transpose(1, 3, 0, 2))
    (t0, t1), (b0, b1) = q
    y2 = y.reshape(rows, ow)
    r1 = np.maximum(t1, b1)                  # down the rows first, then across
    np.maximum(t0, b0, out=y2)
    np.maximum(y2, r1, out=y2)
    if not finite(y):
        return False
    # offset of the first maximum in row-major window order, as h*W + w:
    # 0 if t0 holds it, else 1 if t1 does, else W if b0 does, else W + 1
    ne = np.not_equal(b0, y2)
    a2 = argmax.reshape(rows, ow)
    np.add(ne, np.int32(w - 1), out=a2)
    np.not_equal(t1, y2, out=ne)
    a2 *= ne
    a2 += np.int32(1)
    np.not_equal(t0, y2, out=ne)
    a2 *= ne
    base = ((np.arange(oh, dtype=np.int32) * np.int32(2 * w))[:, None]
            + np.arange(0, 2 * ow, 2, dtype=np.int32)[None, :])
    argmax.reshape(n * c, oh * ow)[...] += base.reshape(1, oh * ow)
    return True


def _maxpool_part(x, y, argmax, kernel, stride, padding):
    """Max pooling of the samples x into y and argmax (see maxpool2d_forward).

    Returns False when y is not all finite (NaN or infinity in x), for the
    caller to redo the whole batch on the careful path.
    """
    n, c, h, w = x.shape
    if (tuple(kernel) == (2, 2) and tuple(stride) == (2, 2) and tuple(padding) == (0, 0)
            and h % 2 == 0 and w % 2 == 0 and y.flags.c_contiguous and argmax.flags.c_contiguous):
        return _maxpool_2x2_part(x, y, argmax)
    kh, kw = kernel
    sh, sw = stride
    ph, pw = padding
    oh, ow = y.shape[2], y.shape[3]
    if ph or pw:
        xp_ = np.full((n, c, h + 2 * ph, w + 2 * pw), -np.inf, dtype=x.dtype)
        xp_[:, :, ph:ph + h, pw:pw + w] = x
    else:
        xp_ = x
    # The maximum: down the kh rows first (whole contiguous rows), then along the kw
    # columns of what is left.
    r = np.array(xp_[:, :, span(0, oh, sh), :])
    for i in range(1, kh):
        np.maximum(r, xp_[:, :, span(i, oh, sh), :], out=r)
    y[...] = r[..., span(0, ow, sw)]
    for j in range(1, kw):
        np.maximum(y, r[..., span(j, ow, sw)], out=y)
    if not finite(y):
        return False
    # The first maximum in row-major window order: walk the window offsets backwards,
    # each one holding the maximum taking the place of any later one (uint8 offsets).
    u8 = np.uint8
    last = kh * kw - 1
    k = np.full(y.shape, last, dtype=u8)
    for kk in range(last - 1, -1, -1):
        i, j = divmod(kk, kw)
        eq = np.equal(xp_[:, :, span(i, oh, sh), span(j, ow, sw)], y).view(u8)
        d = np.subtract(k, u8(kk))
        d *= eq
        k -= d
    # window offset -> flat index h*W + w in the unpadded input plane
    delta = np.array([(q // kw) * w + q % kw for q in range(last + 1)], dtype=np.int32)
    np.take(delta, k, out=argmax, mode="clip")
    top = np.arange(oh, dtype=np.int32) * np.int32(sh) - np.int32(ph)
    left = np.arange(ow, dtype=np.int32) * np.int32(sw) - np.int32(pw)
    argmax += top[:, None] * np.int32(w) + left[None, :]
    return True


def _maxpool_backward_part(dy, argmax, dx, kernel, stride, padding):
    """dx (the samples' slice, overwritten) from dy and argmax (see maxpool2d_backward)."""
    n, c, h, w = dx.shape
    kh, kw = kernel
    sh, sw = stride
    ph, pw = padding
    oh, ow = dy.shape[2], dy.shape[3]
    dx[...] = 0
    if sh >= kh and sw >= kw:
        # windows do not overlap: each input element is some window's maximum at
        # most once, so the gradient is a scatter to the recorded index
        planes = n * c
        flat = argmax.reshape(planes, oh * ow).astype(np.intp)
        flat += (np.arange(planes, dtype=np.intp) * (h * w))[:, None]
        dx.reshape(-1)[flat.reshape(-1)] = dy.reshape(-1)
        return
    # overlapping windows: per window offset, the windows whose maximum sits
    # there add their gradient into that offset's rectangle of dx
    top = np.arange(oh, dtype=np.int32) * np.int32(sh) - np.int32(ph)
    left = np.arange(ow, dtype=np.int32) * np.int32(sw) - np.int32(pw)
    rel = argmax - (top[:, None] * np.int32(w) + left[None, :])   # i*W + j of the choice
    zero = dy.dtype.type(0)
    for i, j, (out_h, out_w), (in_h, in_w) in window_offsets(
            (oh, ow), (h, w), kernel, stride, padding):
        sel = (slice(None), slice(None), out_h, out_w)
        dx[:, :, in_h, in_w] += np.where(rel[sel] == i * w + j, dy[sel], zero)


def _maxpool_exact(x, kernel, stride, padding, out_hw_):
    """Max pooling for inputs holding NaN or infinities, with the CUDA kernel's rules:
    only real (unpadded) elements compete, the first NaN wins, else the first maximum."""
    n, c, h, w = x.shape
    oh, ow = out_hw_
    y = np.full((n, c, oh, ow), -np.inf, dtype=x.dtype)
    argmax = np.full((n, c, oh, ow), -1, dtype=np.int32)
    for _, _, (out_h, out_w), (in_h, in_w) in window_offsets(
            (oh, ow), (h, w), kernel, stride, padding):
        rows = np.arange(in_h.start, in_h.stop, in_h.step, dtype=np.int32)[:out_h.stop - out_h.start]
        cols = np.arange(in_w.start, in_w.stop, in_w.step, dtype=np.int32)[:out_w.stop - out_w.start]
        v = x[:, :, in_h, in_w]
        best = y[:, :, out_h, out_w]
        at = argmax[:, :, out_h, out_w]
        take = (at < 0) | (~np.isnan(best) & ((v > best) | np.isnan(v)))
        np.copyto(best, v, where=take)
        np.copyto(at, rows[:, None] * np.int32(w) + cols[None, :], where=take)
    return y, argmax
