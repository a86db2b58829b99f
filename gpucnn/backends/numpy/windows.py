"""The window walk shared by convolution and pooling: which output positions each
window offset (i, j) covers and which input rows and columns they read.

Every loop in Python runs over the kh*kw window offsets, never over pixels or samples.
"""
from __future__ import annotations

import numpy as np


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


def _axis_phases(out, size, k, s, p):
    """For one axis: per phase r (input indices r, r + s, ...): its length and the window
    offsets that land on it, each as (offset, target slice, source slice) along the axis:
    input index r + s*a receives offset i's column from output index a + (r + p - i) // s."""
    phases = []
    for r in range(s):
        length = len(range(r, size, s))
        terms = []
        for i in range(k):
            if (r + p - i) % s:
                continue
            d = (r + p - i) // s
            lo, hi = max(0, -d), min(length, out - d)
            if hi > lo:
                terms.append((i, slice(lo, hi), slice(lo + d, hi + d), lo == 0 and hi == length))
        phases.append((r, length, terms))
    return phases


def phase_terms(out_hw, in_hw, kernel, stride, padding):
    """col2im of a strided convolution by phase of the input: for each phase (r, c) (the
    input's rows r::sh and columns c::sw), the window offsets that land there, so that
    each input element is written once as a sum (col2im_phases) instead of being added
    to kh*kw times in place.  Returns [(r, c, (rows, cols), terms)], each term
    (i, j, target slices, source slices, covers the whole phase plane)."""
    rows = _axis_phases(out_hw[0], in_hw[0], kernel[0], stride[0], padding[0])
    cols = _axis_phases(out_hw[1], in_hw[1], kernel[1], stride[1], padding[1])
    out = []
    for r, hr, rterms in rows:
        for c, wc, cterms in cols:
            terms = [(i, j, (ti, tj), (si, sj), fi and fj)
                     for i, ti, si, fi in rterms for j, tj, sj, fj in cterms]
            terms.sort(key=lambda t: not t[4])          # a term covering the plane first
            out.append((r, c, (hr, wc), terms))
    return out


def col2im_phases(dx, dcols, phases, stride, temp):
    """dx = col2im of dcols (N, C, kh, kw, OH, OW), every element of dx written (no zeroing
    first): per phase, the sum of its terms in ``temp`` (a contiguous (N, C, >= rows,
    >= cols) buffer), then one strided copy into dx."""
    sh, sw = stride
    for r, c, (hr, wc), terms in phases:
        target = dx[:, :, r::sh, c::sw]
        if not terms:
            target[...] = 0
            continue
        i, j, (ti, tj), (si, sj), full = terms[0]
        if len(terms) == 1 and full:
            target[...] = dcols[:, :, i, j, si, sj]
            continue
        t = temp[:, :, :hr, :wc]
        if full:
            np.copyto(t, dcols[:, :, i, j, si, sj])
            rest = terms[1:]
        else:
            t[...] = 0
            rest = terms
        for i, j, (ti, tj), (si, sj), _ in rest:
            t[:, :, ti, tj] += dcols[:, :, i, j, si, sj]
        target[...] = t
