"""The window walk shared by convolution and pooling: which output positions each
window offset (i, j) covers and which input rows and columns they read.

Every loop in Python runs over the kh*kw window offsets, never over pixels or samples.
"""
from __future__ import annotations


def valid(out, size, off, s, p):
    """Output positions o in [lo, hi) whose input index o*s + off - p lies in [0, size).

    Returns (lo, hi, first input index); hi <= lo when there is none.
    """
    lo = max(0, -((off - p) // s))                    # ceil((p - off) / s)
    hi = min(out, (size - 1 + p - off) // s + 1)
    return lo, hi, lo * s + off - p


def span(start, count, step):
    """slice of ``count`` elements from ``start`` every ``step``."""
    return slice(start, start + step * (count - 1) + 1, step)


def window_offsets(out_hw, in_hw, kernel, stride, padding):
    """For each window offset (i, j) that reaches inside the input: i, j, the slice of
    output positions (oh, ow) it covers and the strided slice of input rows/columns they read."""
    (oh, ow), (h, w) = out_hw, in_hw
    for i in range(kernel[0]):
        lo_h, hi_h, in_h = valid(oh, h, i, stride[0], padding[0])
        if hi_h <= lo_h:
            continue
        for j in range(kernel[1]):
            lo_w, hi_w, in_w = valid(ow, w, j, stride[1], padding[1])
            if hi_w <= lo_w:
                continue
            yield (i, j, (slice(lo_h, hi_h), slice(lo_w, hi_w)),
                   (span(in_h, hi_h - lo_h, stride[0]), span(in_w, hi_w - lo_w, stride[1])))


def fill_cols(cols, x, offsets):
    """cols[n, c, i, j, oh, ow] = x_pad[n, c, oh*sh + i, ow*sw + j] for the valid positions.

    ``cols`` is a (N, C, kh, kw, OH, OW) view of any layout whose padding positions
    already hold zeros (they are never written here, so a reused buffer keeps them).
    ``offsets``: the window_offsets of this geometry.
    """
    for i, j, (out_h, out_w), (in_h, in_w) in offsets:
        cols[:, :, i, j, out_h, out_w] = x[:, :, in_h, in_w]


def col2im_add(dx, dcols, offsets):
    """dx[n, c, oh*sh + i - ph, ow*sw + j - pw] += dcols[n, c, i, j, oh, ow] (inside dx only)."""
    for i, j, (out_h, out_w), (in_h, in_w) in offsets:
        dx[:, :, in_h, in_w] += dcols[:, :, i, j, out_h, out_w]
