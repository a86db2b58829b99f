"""Convolution on NumPy: im2col + GEMM, a few samples at a time, one plan per layout.

A *plan* holds one convolution's geometry and its three passes side by side:
``forward`` (y = W @ cols), ``backward_data`` (dcols = W.T @ dy, then col2im into dx)
and ``backward_weight`` (dy times the columns).  Each pass works chunk by chunk, a few
samples at a time; the chunks are the units the functions at the bottom hand to the
workers (``Workers.share``: a thread that runs out takes the chunks left), and each
chunk is computed the same way whichever thread takes it.  The plans:

* ``PointwisePlan``: 1x1, stride 1, no padding: x itself is the column matrix.
* ``WidePlan``: stride 1, rows kept at the padded width (see its docstring).
* ``RowPlan``: the wide layout with the kernel's columns folded into the GEMM's rows
  (3x3 layers that do not widen: ResNet's), a third of the copies and a squarer GEMM.
* ``RectPlan``: anything else: each window offset's valid rectangle copied.

The column layout per sample is ``(C*kh*kw, OH*OW)``, so ``W @ cols[n]`` is already
NCHW and ``W.T @ dy[n]`` comes out in the layout col2im adds from.  Columns are built
and consumed a few samples at a time (``CHUNK_BYTES``), so they are read back from the
cache, the GEMMs run on operands of the size BLAS does best with, and nothing the size
of the batch's columns is ever allocated.  im2col copies each window offset's valid
rectangle (borders stay zero in the reused buffer); col2im adds each offset's valid
rectangle straight into dx: neither pads a copy of the input nor crops a padded
gradient.
"""
from __future__ import annotations

import functools
import os

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..geometry import out_hw
from .memory import empty, scratch
from .parallel import PARALLEL_MIN_FLOPS_CONV, WORKERS
from .windows import col2im_add, col2im_phases, fill_cols, phase_terms, window_offsets

# Columns of at most this many bytes per chunk: the GEMMs run at their best with
# operands of about this size.
CHUNK_BYTES = 2 << 20
# The forward's columns per chunk.  Measured per call inside ResNet-20 steps, two threads
# sharing the chunks (benchmarks/ab_settings_per_call.py): 2 MiB beat 1 MiB by 4-5 % over
# the step's convolutions (forward and backward-data as a forward), 1.5 and 3 MiB came
# close, 4 MiB lost: fewer, longer NumPy calls against columns that no longer all stay
# in the 1 MiB L2 between the copy and the GEMM.
FORWARD_CHUNK_BYTES = 2 << 20

# The wide layout saves kh*kw*C*OH short rows per sample and primitive (a few ns of
# NumPy overhead each) and costs 2*O*C*kh*kw*OH*(Wp - OW) extra GEMM flops (at about
# 90 GFLOP/s a core); the two balance near O*(Wp - OW) = 150 (measured per layer).
# Backward-weight saves only im2col rows (there is no col2im) and, when it multiplies
# per sample, pays for copying dy into wide rows: it takes the wide layout less often.
WIDE_MAX_WASTE = 150
WIDE_MAX_WASTE_WEIGHT = 100


def chunk(n, per_sample_bytes, limit=None):
    """Samples per chunk: at most ``limit`` (default CHUNK_BYTES) bytes of columns, at
    least one sample."""
    limit = CHUNK_BYTES if limit is None else limit
    return max(1, min(n, limit // max(1, per_sample_bytes)))


class _Plan:
    """One convolution's geometry, and backward-weight, which every layout shares."""

    def __init__(self, x_chw, w_shape, stride, padding):
        self.c, self.h, self.w = x_chw
        self.o, _, self.kh, self.kw = w_shape
        self.kernel, self.stride, self.padding = (self.kh, self.kw), stride, padding
        self.oh, self.ow = out_hw((self.h, self.w), self.kernel, stride, padding)
        self.k = self.c * self.kh * self.kw                 # rows of the column matrix
        self.p = self.oh * self.ow                          # output positions per plane
        self.row = self.ow              # length of dy's rows in backward-weight's GEMM
        self.weight_p = self.p          # and the positions per plane it multiplies over
        self.geom = (type(self).__name__, tuple(x_chw), self.kernel, stride, padding, self.o)

    def weight_planes(self, g, dtype):
        """Work space fill_weight needs for g samples (only the wide layout has any)."""
        return None

    def weights(self, w):
        """w (O, C, kh, kw) as the matrix the forward multiplies the columns by."""
        return w.reshape(self.o, self.k)

    def weight_grad(self, dw):
        """backward_weight's (summed) product in the weight's (O, C, kh, kw) layout."""
        return dw.reshape(self.o, self.c, self.kh, self.kw)

    # Samples per chunk of each pass (``n`` the batch): the units of Workers.share.
    def forward_chunk(self, n, itemsize):
        return chunk(n, self.k * self.p * itemsize, FORWARD_CHUNK_BYTES)

    def data_chunk(self, n, itemsize):
        return chunk(n, self.k * self.p * itemsize)

    def weight_chunk(self, n, itemsize):
        return chunk(n, self.k * self.weight_p * itemsize)

    def backward_weight(self, dy, x, g, chunks, prods):
        """prods[i] = the sum over the samples s:e of dy[n] @ cols[n].T, for each chunk
        (i, s, e) of ``chunks`` (the caller adds them up in chunk order).

        When the columns are the longer side (C*kh*kw >= p), one GEMM per chunk of
        samples: columns laid out (C*kh*kw, samples*p) and dy transposed to
        (O, samples*p).  When dy's planes are the longer side, transposing dy would
        cost more than it saves: one GEMM per sample on the forward's column layout,
        then a sum over the chunk.
        """
        planes = self.weight_planes(g, dy.dtype)
        step = self._weight_chunk if self.k >= self.weight_p else self._weight_per_sample
        for i, s, e in chunks:
            pl = planes[:e - s] if planes is not None else None
            prods[i] = step(dy, x, pl, g, s, e)

    def _weight_chunk(self, dy, x, planes, g, s, e):
        o, c, kh, kw, k, p, gg = self.o, self.c, self.kh, self.kw, self.k, self.weight_p, e - s
        # every buffer below: the elements never written (padding, extra columns) stay 0
        cols_t = scratch(("wgt-cols-t", self.geom), (c, kh, kw, gg, p), dy.dtype)
        dy_t = scratch(("wgt-dy-t", self.geom), (o, gg, self.oh, self.row), dy.dtype)
        self.fill_weight(cols_t.transpose(3, 0, 1, 2, 4), planes, x, s, e)
        dy_t.transpose(1, 0, 2, 3)[..., :self.ow] = dy[s:e]
        a, b = dy_t.reshape(o, gg * p), cols_t.reshape(k, gg * p)
        # OpenBLAS is up to twice as fast with the longer side as the GEMM's M
        return a @ b.T if o >= k else (b @ a.T).T

    def _weight_per_sample(self, dy, x, planes, g, s, e):
        o, c, kh, kw, k, p, gg = self.o, self.c, self.kh, self.kw, self.k, self.weight_p, e - s
        cols = scratch(("wgt-cols", self.geom), (g, c, kh, kw, p), dy.dtype)[:gg]
        self.fill_weight(cols, planes, x, s, e)
        if self.row != self.ow:                             # wide rows: dy's extra columns 0
            dyw = scratch(("wgt-dy", self.geom), (g, o, self.oh, self.row), dy.dtype)[:gg]
            dyw[..., :self.ow] = dy[s:e]
            d3 = dyw.reshape(gg, o, p)
        else:
            d3 = dy[s:e].reshape(gg, o, p)
        return np.matmul(d3, cols.reshape(gg, k, p).transpose(0, 2, 1)).sum(axis=0)


class PointwisePlan(_Plan):
    """1x1 kernel, stride 1, no padding: x's planes are the columns; no im2col at all."""

    def forward_chunk(self, n, itemsize):
        return chunk(n, (self.c + self.o) * self.p * itemsize)

    data_chunk = forward_chunk

    def forward(self, x, w2, y, g, chunks):
        for _, s, e in chunks:
            np.matmul(w2, x[s:e].reshape(e - s, self.c, self.p),
                      out=y[s:e].reshape(e - s, self.o, self.p))

    def backward_data(self, dy, w2t, dx, g, chunks):
        for _, s, e in chunks:
            np.matmul(w2t, dy[s:e].reshape(e - s, self.o, self.p),
                      out=dx[s:e].reshape(e - s, self.c, self.p))

    def fill_weight(self, cols6, planes, x, s, e):
        """cols6: a (g, C, kh, kw, p) view of any layout, filled from samples s:e."""
        np.copyto(cols6.reshape(e - s, self.c, self.p), x[s:e].reshape(e - s, self.c, self.p))


class RectPlan(_Plan):
    """Any stride and padding: each window offset's valid rectangle copied (im2col) or
    added (col2im); the padding positions of the column buffers are never written."""

    def __init__(self, *args):
        super().__init__(*args)
        self.offsets = list(window_offsets((self.oh, self.ow), (self.h, self.w),
                                           self.kernel, self.stride, self.padding))
        # strided: col2im by the input's phases (each element written once, see windows.py)
        self.phases = (phase_terms((self.oh, self.ow), (self.h, self.w), self.kernel,
                                   self.stride, self.padding)
                       if PHASES and self.stride != (1, 1) else None)

    def forward(self, x, w2, y, g, chunks):
        # (samples, C*kh*kw, OH*OW); padding positions are never written and stay 0
        buf = scratch(("fwd-rect", self.geom), (g, self.c, self.kh, self.kw, self.oh, self.ow),
                      x.dtype)
        for _, s, e in chunks:
            cols = buf[:e - s]
            fill_cols(cols, x[s:e], self.offsets)
            np.matmul(w2, cols.reshape(e - s, self.k, self.p),
                      out=y[s:e].reshape(e - s, self.o, self.p))

    def backward_data(self, dy, w2t, dx, g, chunks):
        buf = scratch(("bwd-rect", self.geom), (g, self.k, self.p), dy.dtype)
        if self.phases is not None:                 # phase (0, 0) is the largest
            temp = scratch(("bwd-phase", self.geom), (g, self.c) + self.phases[0][2], dy.dtype)
        for _, s, e in chunks:
            dcols = np.matmul(w2t, dy[s:e].reshape(e - s, self.o, self.p), out=buf[:e - s])
            dcols = dcols.reshape(e - s, self.c, self.kh, self.kw, self.oh, self.ow)
            if self.phases is None:
                dx[s:e] = 0
                col2im_add(dx[s:e], dcols, self.offsets)
            else:
                col2im_phases(dx[s:e], dcols, self.phases, self.stride, temp[:e - s])

    def fill_weight(self, cols6, planes, x, s, e):
        fill_cols(cols6.reshape(e - s, self.c, self.kh, self.kw, self.oh, self.ow), x[s:e],
                  self.offsets)


class WidePlan(_Plan):
    """Stride-1 convolution on "wide" rows: the padded plane flattened, rows Wp long.

    With stride 1, the window offset (i, j) of output (oh, ow') reads the flattened
    padded plane at i*Wp + j + (oh*Wp + ow'), so the im2col row of offset (i, j) is
    one contiguous slice of OH*Wp elements if the output keeps the padded width Wp
    (ow' >= OW are throw-away columns).  im2col is then a single strided copy and
    col2im kh*kw long contiguous adds, instead of kh*kw*OH short rows each; the price
    is GEMM work on the Wp - OW extra columns, which ``use_wide`` weighs.
    """

    def __init__(self, *args):
        super().__init__(*args)
        self.ph, self.pw = self.padding
        self.hp, self.wp = self.h + 2 * self.ph, wide_row(self.w, self.kw, self.pw)
        self.q = self.oh * self.wp                          # wide output length per plane
        self.length = self.hp * self.wp + self.kw - 1       # padded plane + the last window's tail
        self.row, self.weight_p = self.wp, self.q

    def interior(self, planes):
        """The image inside (g, C, length) padded planes, as a (g, C, H, W) view."""
        g = planes.shape[0]
        img = planes[:, :, :self.hp * self.wp].reshape(g, self.c, self.hp, self.wp)
        return img[:, :, self.ph:self.ph + self.h, self.pw:self.pw + self.w]

    def windows(self, planes):
        """(g, C, kh, kw, OH*Wp) view: the im2col rows, each a slice of its plane."""
        sg, sc, se = planes.strides
        return as_strided(planes, shape=(planes.shape[0], self.c, self.kh, self.kw, self.q),
                          strides=(sg, sc, self.wp * se, se, se), writeable=False)

    def forward_chunk(self, n, itemsize):
        return chunk(n, self.k * self.q * itemsize, FORWARD_CHUNK_BYTES)

    def data_chunk(self, n, itemsize):
        return chunk(n, self.k * self.length * itemsize)

    def forward(self, x, w2, y, g, chunks):
        c, k, o, q = self.c, self.k, self.o, self.q
        planes = scratch(("fwd-planes", self.geom), (g, c, self.length), x.dtype)
        cols = scratch(("fwd-cols", self.geom), (g, k, q), x.dtype)
        yw = scratch(("fwd-y", self.geom), (g, o, q), x.dtype)
        for _, s, e in chunks:
            pl, cl, yc = planes[:e - s], cols[:e - s], yw[:e - s]
            self.interior(pl)[...] = x[s:e]          # the padding around stays 0
            np.copyto(cl.reshape(e - s, c, self.kh, self.kw, q), self.windows(pl))
            np.matmul(w2, cl, out=yc)
            y[s:e] = yc.reshape(e - s, o, self.oh, self.wp)[..., :self.ow]

    def backward_data(self, dy, w2t, dx, g, chunks):
        c, k, o, q, length = self.c, self.k, self.o, self.q, self.length
        dyw = scratch(("bwd-dy", self.geom), (g, o, self.oh, self.wp), dy.dtype)  # extra columns stay 0
        # The columns laid out (C*kh*kw, samples, length): a row of one window offset
        # runs through all the chunk's samples, each plane `length` long, and its
        # positions past q are never written (0).  col2im is then kh*kw adds of
        # whole rows: offset (i, j) shifted by i*Wp + j into the planes, laid out the
        # same way (what spills past a plane's end is those zeros).
        dbuf = scratch(("bwd-cols", self.geom), (k, g, length), dy.dtype)
        planes = scratch(("bwd-planes", self.geom), (c, (g + 1) * length), dy.dtype)
        for _, s, e in chunks:
            gs = e - s
            dw_ = dyw[:gs]
            dw_[..., :self.ow] = dy[s:e]
            dcols = dbuf[:, :gs]
            np.matmul(w2t, dw_.reshape(gs, o, q), out=dcols.transpose(1, 0, 2)[:, :, :q])
            pl = planes[:, :(gs + 1) * length]
            pl[...] = 0
            rows = dcols.reshape(c, self.kh, self.kw, gs * length)
            for i in range(self.kh):
                for j in range(self.kw):
                    at = i * self.wp + j
                    pl[:, at:at + gs * length] += rows[:, i, j]
            img = pl[:, :gs * length].reshape(c, gs, length)[:, :, :self.hp * self.wp]
            img = img.reshape(c, gs, self.hp, self.wp)[:, :, self.ph:self.ph + self.h,
                                                        self.pw:self.pw + self.w]
            dx[s:e] = img.transpose(1, 0, 2, 3)

    def weight_planes(self, g, dtype):
        return scratch(("wgt-planes", self.geom), (g, self.c, self.length), dtype)

    def fill_weight(self, cols6, planes, x, s, e):
        self.interior(planes)[...] = x[s:e]
        np.copyto(cols6, self.windows(planes))


class RowPlan(WidePlan):
    """Stride 1, wide rows, the kernel's columns folded into the GEMM's rows.

    The wide layout's im2col row of offset (i, j) is the padded plane shifted by
    i*Wp + j.  Copying only the kh shifts i*Wp (rows ``(c, i)``, ``q + kw - 1`` long)
    and multiplying by the weight laid out ``(kw*O, C*kh)`` gives, for each kernel
    column j, the partial output Z_j = W[:, :, :, j] @ rows; the output is then
    y[o, p] = sum_j Z_j[o, p + j], kw shifted adds.  Against the plain wide layout the
    copy is kw times smaller and the GEMM has kw times more rows and kw times fewer
    inner products, the shape OpenBLAS runs fastest when O is small (16-64 channels:
    measured in benchmarks/RESULTS.md).  Backward-weight is the same GEMM transposed:
    dW_j = D_j @ rows.T with D_j = dy shifted right by j (the GEMM's rows ordered (o, j)).
    """

    def __init__(self, *args):
        super().__init__(*args)
        self.q2 = self.q + self.kw - 1                  # row length: the last shift's tail
        self.kr = self.c * self.kh                      # GEMM inner size
        self.weight_p = self.q2

    def weights(self, w):
        """w (O, C, kh, kw) as the forward's (kw*O, C*kh) matrix: row j*O + o, column c*kh + i."""
        return np.ascontiguousarray(w.transpose(3, 0, 1, 2)).reshape(self.kw * self.o, self.kr)

    def weight_grad(self, dw):
        """The (kw*O, C*kh) product of backward-weight back in (O, C, kh, kw)."""
        return np.ascontiguousarray(dw.reshape(self.kw, self.o, self.c, self.kh).transpose(1, 2, 3, 0))

    def rows(self, planes):
        """(g, C, kh, q2) view of padded planes: row (c, i) is plane c from i*Wp on."""
        sg, sc, se = planes.strides
        return as_strided(planes, shape=(planes.shape[0], self.c, self.kh, self.q2),
                          strides=(sg, sc, self.wp * se, se), writeable=False)

    def forward_chunk(self, n, itemsize):
        return chunk(n, (self.kr + self.kw * self.o) * self.q2 * itemsize, FORWARD_CHUNK_BYTES)

    def weight_chunk(self, n, itemsize):
        g = chunk(n, (self.kr + self.kw * self.o) * self.q2 * itemsize)
        return -(-n // -(-n // g))                      # chunks of near-equal size

    def forward(self, x, w2, y, g, chunks):
        c, o, kh, kw, q, q2 = self.c, self.o, self.kh, self.kw, self.q, self.q2
        planes = scratch(("fwd-planes", self.geom), (g, c, self.length), x.dtype)
        # the chunk's rows side by side, (c, i) major: one GEMM for the chunk
        rows = scratch(("fwd-rows", self.geom), (c, kh, g * q2), x.dtype)
        z = scratch(("fwd-z", self.geom), (kw * o, g * q2), x.dtype)
        acc = scratch(("fwd-acc", self.geom), (o, g * q2), x.dtype)
        inside, shifted = self.interior(planes), self.rows(planes)   # views made once
        for _, s, e in chunks:
            gs = e - s
            n2 = gs * q2
            inside[:gs] = x[s:e]                     # the padding around stays 0
            rw = rows[:, :, :n2]
            np.copyto(rw.reshape(c, kh, gs, q2).transpose(2, 0, 1, 3), shifted[:gs])
            zc = z[:, :n2]
            np.matmul(w2, rw.reshape(self.kr, n2), out=zc)
            # y[o, p] = sum_j Z_j[o, p + j], on the chunk's rows laid end to end (what
            # a shift carries across a sample's end lands in its discarded tail)
            m = n2 - kw + 1
            a = acc[:, :m]
            np.add(zc[:o, :m], zc[o:2 * o, 1:m + 1], out=a)
            for j in range(2, kw):
                a += zc[j * o:(j + 1) * o, j:m + j]
            yw = acc[:, :n2].reshape(o, gs, q2)[:, :, :q].reshape(o, gs, self.oh, self.wp)
            y[s:e] = yw[..., :self.ow].transpose(1, 0, 2, 3)

    def backward_weight(self, dy, x, g, chunks, prods):
        o, c, kh, kw, q, q2 = self.o, self.c, self.kh, self.kw, self.q, self.q2
        planes = scratch(("wgt-planes", self.geom), (g, c, self.length), dy.dtype)
        # every buffer below: the elements never written (padding, shifts' ends) stay 0
        rows = scratch(("wgt-rows", self.geom), (c, kh, g, q2), dy.dtype)
        # D_j, dy shifted right by j within each sample's row: GEMM rows (j, o), the
        # chunk's samples side by side (g*q2 long, in rows a little longer: _apart);
        # the wide layout's extra columns and the positions before j and after j + q
        # are 0.  D_0 is copied from dy, each other D_j is the whole D_0 block shifted
        # by j, one flat copy: what the shift carries across the start of a row is the
        # previous row's tail (positions past q, never written: 0).
        span = g * q2
        d = scratch(("wgt-d", self.geom), (kw, o, _apart(span, o, kw, dy.itemsize)), dy.dtype)
        d0 = d[0, :, :span].reshape(o, g, q2)[:, :, :q].reshape(o, g, self.oh, self.wp)
        d0 = d0[..., :self.ow]
        flat = d.reshape(kw, -1)
        a_all, b_all = d.reshape(kw * o, -1), rows.reshape(self.kr, span)
        inside, shifted = self.interior(planes), self.rows(planes)
        rows_t = rows.transpose(2, 0, 1, 3)
        for i, s, e in chunks:
            gs = e - s
            m = gs * q2                         # a short last chunk: the first m columns
            inside[:gs] = x[s:e]
            np.copyto(rows_t[:gs], shifted[:gs])
            d0[:, :gs] = dy[s:e].transpose(1, 0, 2, 3)
            for j in range(1, kw):
                flat[j, j:] = flat[0, :-j]
            prods[i] = a_all[:, :m] @ b_all[:, :m].T


def _apart(n, rows, blocks, itemsize):
    """A row length of at least n elements for ``blocks`` blocks of ``rows`` rows, such
    that no two blocks start a multiple of 4 KiB apart (give or take 512 bytes): a copy
    from one block to another, a load and a store stream at the same offsets, would
    stall on the cache's 4 KiB aliasing (measured: RowPlan's shifted copies of the
    64-channel backward-weight ran 9x slower 296 KiB apart).  n itself when no length
    up to n + 64 avoids it."""
    for m in range(n, n + 65):
        if all(512 <= (j * rows * m * itemsize) % 4096 <= 3584 for j in range(1, blocks)):
            return m
    return n


def is_pointwise(kernel, stride, padding):
    return tuple(kernel) == (1, 1) and tuple(stride) == (1, 1) and tuple(padding) == (0, 0)


def use_wide(c, o, kernel, stride, padding, x_hw, limit):
    """Whether a stride-1 convolution runs in the wide layout (see WidePlan)."""
    if tuple(stride) != (1, 1) or is_pointwise(kernel, stride, padding):
        return False
    kh, kw = kernel
    ow = x_hw[1] + 2 * padding[1] - kw + 1
    if ow < 1 or x_hw[0] + 2 * padding[0] - kh + 1 < 1:
        return False
    return o * (wide_row(x_hw[1], kw, padding[1]) - ow) <= limit


def wide_row(w, kw, pw):
    """The row length of the wide layout: W + pw when the padding is at most kw - 1.

    Each row is the image row preceded by pw zeros: a window that reaches past the
    row's right end reads the next row's leading zeros, so one run of zeros pads both
    sides of neighbouring rows (3x3, padding 1: rows W + 1 long, not W + 2: half the
    extra GEMM columns; below the last image row lie the padding rows or the plane's
    zero tail).  A wider padding keeps both sides' zeros (W + 2*pw), so that an output
    row, W + 2*pw - kw + 1 long, still fits in a row.
    """
    return w + pw if pw <= kw - 1 else w + 2 * pw


# GPUCNN_CONV_PHASES=0: strided backward-data adds each window offset into dx (no phases)
PHASES = os.environ.get("GPUCNN_CONV_PHASES", "1") != "0"

# GPUCNN_CONV_ROWS=0 turns RowPlan off (the plain wide layout everywhere), for A/B runs
ROWS = os.environ.get("GPUCNN_CONV_ROWS", "1") != "0"


def use_rows(c, o, kh, kw):
    """Whether a wide-layout convolution folds its kernel columns into the GEMM (RowPlan):
    when the GEMM keeps an inner size of 16 or more and the layer does not widen (O <= C:
    with O > C the plain wide GEMM was the faster one, per layer in benchmarks/RESULTS.md)."""
    return ROWS and kw > 1 and o <= c and c * kh >= 16


@functools.lru_cache(maxsize=512)
def _plan(x_chw, w_shape, stride, padding, for_weight):
    c, h, w = x_chw
    o, _, kh, kw = w_shape
    args = (x_chw, w_shape, stride, padding)
    if for_weight:
        oh, ow = out_hw((h, w), (kh, kw), stride, padding)
        if use_rows(c, o, kh, kw) and use_wide(c, o, (kh, kw), stride, padding, (h, w),
                                                WIDE_MAX_WASTE):
            return RowPlan(*args)
        if (use_wide(c, o, (kh, kw), stride, padding, (h, w), WIDE_MAX_WASTE_WEIGHT)
                and (c * kh * kw >= oh * ow or c * kh * kw > o)):
            return WidePlan(*args)
    elif use_wide(c, o, (kh, kw), stride, padding, (h, w), WIDE_MAX_WASTE):
        return RowPlan(*args) if use_rows(c, o, kh, kw) else WidePlan(*args)
    return PointwisePlan(*args) if is_pointwise((kh, kw), stride, padding) else RectPlan(*args)


def plan_for(x_shape, w_shape, stride, padding, for_weight=False):
    """The plan for this convolution (cached: a plan holds geometry only, no arrays)."""
    return _plan(tuple(x_shape[1:]), tuple(w_shape), tuple(stride), tuple(padding), for_weight)


def _chunks(units, g, n):
    """(i, start, end) of chunk i, g samples long (the last one shorter), for each unit i."""
    for i in units:
        s = i * g
        yield i, s, min(n, s + g)


class _Pass:
    """One pass of a convolution over a batch of n samples, in chunks of g (the units
    ``Workers.share`` hands out): ``run(g, chunks)`` computes the chunks it is given,
    ``result()`` what the pass returns once every chunk is done; ``split``: whether the
    work is worth more than one thread."""

    def __init__(self, n, g, run, result, split):
        self.n, self.g, self.count = n, g, -(-n // g)
        self._run, self.result, self.split = run, result, split

    def __call__(self, units):
        self._run(self.g, _chunks(units, self.g, self.n))


def _worth_splitting(n, plan, p):
    return WORKERS.worth_splitting(n, plan.o * plan.k * p, PARALLEL_MIN_FLOPS_CONV)


def _run(*passes):
    """The passes on the worker threads (Workers.share), split when any is worth it."""
    WORKERS.share([(p.count, p) for p in passes], split=any(p.split for p in passes))


def _forward_pass(x, w, stride, padding):
    n = x.shape[0]
    plan = plan_for(x.shape, w.shape, stride, padding)
    w2 = plan.weights(w)
    y = empty((n, plan.o, plan.oh, plan.ow), x.dtype)
    return _Pass(n, plan.forward_chunk(n, x.itemsize),
                 lambda g, chunks: plan.forward(x, w2, y, g, chunks),
                 lambda: y, _worth_splitting(n, plan, plan.p))


def conv2d_forward(x, w, stride, padding):
    p = _forward_pass(x, w, stride, padding)
    _run(p)
    return p.result()


def data_as_forward(x_shape, w_shape, stride, padding):
    """Whether backward-data runs as the forward convolution of dy with the flipped,
    transposed kernel (see conv2d_backward_data): stride 1, the "full" padding
    ``k - 1 - p`` not negative, at least as many input as output channels (then the
    GEMM is as large as the direct way's: C*kh*kw rows either way, or fewer), and the
    forward in the wide layout."""
    o, c, kh, kw = w_shape
    (sh, sw), (ph, pw) = stride, padding
    if (sh, sw) != (1, 1) or ph > kh - 1 or pw > kw - 1 or c < o or (kh, kw) == (1, 1):
        return False
    oh, ow = out_hw(tuple(x_shape[2:]), (kh, kw), stride, padding)
    return use_wide(o, c, (kh, kw), (1, 1), (kh - 1 - ph, kw - 1 - pw), (oh, ow), WIDE_MAX_WASTE)


def _data_pass(dy, w, x_shape, stride, padding):
    if data_as_forward(x_shape, w.shape, stride, padding):
        kh, kw = w.shape[2:]
        wf = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
        return _forward_pass(dy, wf, (1, 1), (kh - 1 - padding[0], kw - 1 - padding[1]))
    n = x_shape[0]
    plan = plan_for(x_shape, w.shape, stride, padding)
    w2t = w.reshape(plan.o, plan.k).T
    dx = empty(x_shape, dy.dtype)
    return _Pass(n, plan.data_chunk(n, dy.itemsize),
                 lambda g, chunks: plan.backward_data(dy, w2t, dx, g, chunks),
                 lambda: dx, _worth_splitting(n, plan, plan.p))


def conv2d_backward_data(dy, w, x_shape, stride, padding):
    """dx: the transposed convolution of dy.

    For a stride-1 convolution with C >= O channels (ResNet's 3x3 layers) it is computed
    as a forward convolution (the wide layout): dx = conv(dy, W'), W'[c, o, i, j] =
    W[o, c, kh-1-i, kw-1-j], padding kh-1-ph, kw-1-pw.  The same products summed in
    another order (results agree to rounding, not bitwise, with the direct way); it
    replaces the col2im's kh*kw adds of whole rows by the forward's one strided copy,
    about 30 % less time on ResNet-20's layers.  Otherwise: GEMM into columns, col2im.
    """
    p = _data_pass(dy, w, tuple(x_shape), tuple(stride), tuple(padding))
    _run(p)
    return p.result()


def _weight_pass(dy, x, w_shape, stride, padding):
    n = dy.shape[0]
    plan = plan_for(x.shape, w_shape, stride, padding, for_weight=True)
    g = plan.weight_chunk(n, dy.itemsize)
    prods = [None] * -(-n // g)

    def result():                       # the chunks' products added in chunk order
        dw = prods[0]
        for more in prods[1:]:
            dw += more
        return plan.weight_grad(dw)
    return _Pass(n, g, lambda g, chunks: plan.backward_weight(dy, x, g, chunks, prods),
                 result, _worth_splitting(n, plan, plan.weight_p))


def conv2d_backward_weight(dy, x, w_shape, stride, padding):
    p = _weight_pass(dy, x, tuple(w_shape), tuple(stride), tuple(padding))
    _run(p)
    return p.result()


# GPUCNN_CONV_PAIR=0 runs backward-weight and backward-data one after the other, for A/B runs
PAIR = os.environ.get("GPUCNN_CONV_PAIR", "1") != "0"


def pair_backward(x_shape, w_shape, stride, padding):
    """Whether conv2d_backward runs its two passes at once (Workers.share: one thread
    starts on each, and a thread that finishes takes the other's chunks left): on two
    threads or more, when the work is worth a thread."""
    if not (PAIR and WORKERS.threads >= 2):
        return False
    o, c, kh, kw = w_shape
    oh, ow = out_hw(tuple(x_shape[2:]), (kh, kw), stride, padding)
    return x_shape[0] * o * c * kh * kw * oh * ow >= PARALLEL_MIN_FLOPS_CONV


def conv2d_backward(dy, x, w, stride, padding, input_grad):
    """(dx, dw) of one convolution, dx None unless ``input_grad``: the values of
    conv2d_backward_data and conv2d_backward_weight, bit for bit (each pass's chunks are
    computed the same way whichever thread takes them)."""
    stride, padding = tuple(stride), tuple(padding)
    bw = _weight_pass(dy, x, w.shape, stride, padding)
    if not input_grad:
        _run(bw)
        return None, bw.result()
    bd = _data_pass(dy, w, x.shape, stride, padding)
    if pair_backward(x.shape, w.shape, stride, padding):
        _run(bd, bw)
    else:
        _run(bw)
        _run(bd)
    return bd.result(), bw.result()
