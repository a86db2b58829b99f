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
* Max pooling: the maximum down whole rows first, then along columns; the first
  maximum's window offset by walking the offsets backwards comparing with it
  (uint8 bookkeeping); 2x2/stride-2 windows instead sort x by window offset with
  one copy and run every comparison as one long contiguous loop.  Its backward
  scatters straight to the recorded index when windows do not overlap.
* ReLU's backward multiplies by the mask written as 1.0/0.0 (np.where is four
  times slower); all_finite reads the array once through a sum.
"""
from __future__ import annotations

import ctypes
import math
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numpy.lib.stride_tricks import as_strided

from . import augment as _augment


# ------------------------------------------------------------------ threads
def _default_threads():
    env = os.environ.get("GPUCNN_NUM_THREADS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise ValueError(f"GPUCNN_NUM_THREADS must be a positive integer, got {env!r}") from None
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _find_openblas_threads():
    """(get, set) for the thread count of the OpenBLAS NumPy links against, or None.

    Found by name among the libraries mapped into this (Linux) process, as
    threadpoolctl does; anywhere else the primitives that call BLAS run serially.
    """
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower()}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("scipy_openblas", "64_"), ("scipy_openblas", ""),
                               ("openblas", "64_"), ("openblas", "")):
            get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
            put = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
            if get is not None and put is not None:
                get.restype, get.argtypes = ctypes.c_int, []
                put.restype, put.argtypes = None, [ctypes.c_int]
                return get, put
    return None


class _Workers:
    """Runs a primitive's work split over the batch on ``threads`` threads.

    NumPy releases the GIL inside its loops and BLAS calls, so threads over
    disjoint slices of the batch run in parallel.  While they do, BLAS is held to
    one thread (its own threads would only contend with ours) and restored after.
    Each part is a contiguous range of samples; the calling thread takes the first.
    """

    def __init__(self, threads=None):
        self.threads = _default_threads() if threads is None else max(1, int(threads))
        self._pool = None
        self._lock = threading.Lock()
        self._blas = _find_openblas_threads()

    def _executor(self):
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.threads - 1,
                                                thread_name_prefix="gpucnn-cpu")
            return self._pool

    def set_threads(self, threads):
        with self._lock:
            self.threads = threads
            old, self._pool = self._pool, None
        if old is not None:
            old.shutdown(wait=False)

    def _after_fork(self):
        self._pool = None
        self._lock = threading.Lock()

    def parts(self, n, work, min_work):
        """Contiguous (start, end) ranges of range(n) for up to ``threads`` workers, so
        that each gets at least ``min_work`` (in the caller's units, ``work`` per item)."""
        k = min(self.threads, n, int(n * work // max(1, min_work)))
        if k <= 1 or threading.current_thread().name.startswith("gpucnn-cpu"):
            return [(0, n)]
        bounds = [n * i // k for i in range(k + 1)]
        return [(bounds[i], bounds[i + 1]) for i in range(k)]

    def run(self, fn, ranges, blas=False):
        """fn(start, end) for every range, in parallel; returns the results in order.

        ``blas``: fn calls BLAS.  BLAS is then held to one thread even when the work
        is not split: OpenBLAS's own threads, once woken, spin for a while after each
        call and would take a core from ours.
        """
        if blas and self._blas is None:    # cannot keep BLAS to one thread: stay serial
            return [fn(s, e) for s, e in ranges]
        saved = None
        if blas:
            saved = self._blas[0]()
            if saved != 1:
                self._blas[1](1)
        try:
            if len(ranges) == 1:
                return [fn(*ranges[0])]
            futures = [self._executor().submit(fn, s, e) for s, e in ranges[1:]]
            first = fn(*ranges[0])
            return [first] + [f.result() for f in futures]
        finally:
            if saved is not None and saved != 1:
                self._blas[1](saved)


_WORKERS = _Workers()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_WORKERS._after_fork)

# below this many elements (or multiply-adds, for the GEMM loops) a primitive is not split
PARALLEL_MIN_ELEMENTS = 1 << 18
PARALLEL_MIN_FLOPS = 1 << 22
# A convolution's work is mostly copies and adds around its GEMMs, many short NumPy
# calls whose GIL handoffs between threads cost more than the second core gains below
# about this many multiply-adds (LeNet at batch 64: 9.8 -> 8.7 ms a step when serial).
PARALLEL_MIN_FLOPS_CONV = 1 << 24


_local = threading.local()
SCRATCH_ENTRIES = 48


def _scratch(key, shape, dtype):
    """A work buffer of this thread, zeroed when first made and reused by later calls.

    Fresh large buffers cost page faults on every call (measured: most of a small
    convolution's time).  A user of a buffer may rely on elements it never writes
    staying zero, so ``key`` names the user and every parameter that decides which
    elements it writes.
    """
    bufs = getattr(_local, "bufs", None)
    if bufs is None:
        bufs = _local.bufs = {}
    full = (key, tuple(shape), np.dtype(dtype).str)
    buf = bufs.pop(full, None)
    if buf is None:
        buf = np.zeros(shape, dtype=dtype)
        if len(bufs) >= SCRATCH_ENTRIES:
            bufs.pop(next(iter(bufs)))          # the least recently used
    bufs[full] = buf                            # most recently used last
    return buf


class _OutputPool:
    """Recycles the memory of large primitive outputs once nothing references them.

    A fresh large array is mapped from the OS and every page faults on first touch
    (measured here: about 0.5 ms per MB, a quarter of a small LeNet step).  Each
    output of at least ``min_bytes`` is handed out as a view of a pooled base
    buffer; a base is reused only when its reference count shows that no view of
    it (nor anything else) is alive, so a live result is never overwritten.  At
    most ``max_bytes`` are pooled; free buffers are dropped oldest first.
    """

    def __init__(self, min_bytes=1 << 18, max_bytes=1 << 30):
        self.min_bytes, self.max_bytes = min_bytes, max_bytes
        self._free_refs = None
        self._bufs = []                    # uint8 base buffers, oldest first
        self._nbytes = 0
        self._lock = threading.Lock()

    @staticmethod
    def _refs_when_free():
        """sys.getrefcount of a base that only the pool holds, probed the way empty() looks."""
        bufs = [np.empty(1, np.uint8)]
        i = 0
        b = bufs[i]
        return sys.getrefcount(b)

    def empty(self, shape, dtype):
        dtype = np.dtype(dtype)
        # math.prod, not np.prod: this runs for every output and np.prod costs 5 us a call
        count = shape if isinstance(shape, (int, np.integer)) else math.prod(shape)
        nbytes = int(count) * dtype.itemsize
        if nbytes < self.min_bytes or self.max_bytes <= 0 or not hasattr(sys, "getrefcount"):
            return np.empty(shape, dtype=dtype)
        with self._lock:
            if self._free_refs is None:
                self._free_refs = self._refs_when_free()
            bufs = self._bufs
            for i in range(len(bufs)):
                b = bufs[i]
                if b.nbytes == nbytes and sys.getrefcount(b) == self._free_refs:
                    out = b.view(dtype).reshape(shape)         # the view now holds b
                    bufs.append(bufs.pop(i))                   # most recently used last
                    return out
            b = np.empty(nbytes, dtype=np.uint8)
            out = b.view(dtype).reshape(shape)
            bufs.append(b)
            self._nbytes += nbytes
            del b
            if self._nbytes > self.max_bytes:                  # drop free buffers, oldest first
                keep = []
                for i in range(len(bufs)):
                    b = bufs[i]
                    if self._nbytes > self.max_bytes and sys.getrefcount(b) == self._free_refs:
                        self._nbytes -= b.nbytes
                    else:
                        keep.append(b)
                    del b
                self._bufs = keep
            return out


_POOL = _OutputPool()


def _empty(shape, dtype):
    """np.empty for primitive outputs, from the recycling pool when large."""
    return _POOL.empty(shape, dtype)


def _elementwise(n_items, item_size, fn):
    """fn(start, end) over ranges of n_items, in parallel when the work is large enough."""
    ranges = _WORKERS.parts(n_items, item_size, PARALLEL_MIN_ELEMENTS)
    return _WORKERS.run(fn, ranges)


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
CHUNK_BYTES = 2 << 20
# The forward's GEMMs run per sample, so its chunk sets only how long the columns
# stay alive: at most the 1 MiB L2 of a core keeps them there between the copy
# and the GEMM (measured in a whole step: LeNet 64 -0.14 ms, LeNet 256 -0.36 ms, CIFAR
# 256 unchanged; smaller chunks cost more in per-chunk calls than they save).
FORWARD_CHUNK_BYTES = 1 << 20


def _chunk(n, per_sample_bytes, limit=None):
    return max(1, min(n, (CHUNK_BYTES if limit is None else limit) // max(1, per_sample_bytes)))


def _window_offsets(out_hw, in_hw, kernel, stride, padding):
    """For each window offset (i, j) that reaches inside the input: i, j, the slice of
    output positions (oh, ow) it covers and the strided slice of input rows/columns they read."""
    (oh, ow), (h, w) = out_hw, in_hw
    for i in range(kernel[0]):
        lo_h, hi_h, in_h = _valid(oh, h, i, stride[0], padding[0])
        if hi_h <= lo_h:
            continue
        for j in range(kernel[1]):
            lo_w, hi_w, in_w = _valid(ow, w, j, stride[1], padding[1])
            if hi_w <= lo_w:
                continue
            yield (i, j, (slice(lo_h, hi_h), slice(lo_w, hi_w)),
                   (_span(in_h, hi_h - lo_h, stride[0]), _span(in_w, hi_w - lo_w, stride[1])))


def _fill_cols(cols, x, kernel, stride, padding):
    """cols[n, c, i, j, oh, ow] = x_pad[n, c, oh*sh + i, ow*sw + j] for the valid positions.

    ``cols`` is a (N, C, kh, kw, OH, OW) view of any layout whose padding positions
    already hold zeros (they are never written here, so a reused buffer keeps them).
    """
    for i, j, (out_h, out_w), (in_h, in_w) in _window_offsets(
            cols.shape[4:], x.shape[2:], kernel, stride, padding):
        cols[:, :, i, j, out_h, out_w] = x[:, :, in_h, in_w]


def _is_pointwise(kernel, stride, padding):
    return tuple(kernel) == (1, 1) and tuple(stride) == (1, 1) and tuple(padding) == (0, 0)


def _col2im_add(dx, dcols, kernel, stride, padding):
    """dx[n, c, oh*sh + i - ph, ow*sw + j - pw] += dcols[n, c, i, j, oh, ow] (inside dx only)."""
    for i, j, (out_h, out_w), (in_h, in_w) in _window_offsets(
            dcols.shape[4:], dx.shape[2:], kernel, stride, padding):
        dx[:, :, in_h, in_w] += dcols[:, :, i, j, out_h, out_w]


class _Wide:
    """Stride-1 convolution on "wide" rows: the padded plane flattened, rows Wp long.

    With stride 1, the window offset (i, j) of output (oh, ow') reads the flattened
    padded plane at i*Wp + j + (oh*Wp + ow'), so the im2col row of offset (i, j) is
    one contiguous slice of OH*Wp elements if the output keeps the padded width Wp
    (ow' >= OW are throw-away columns).  im2col is then a single strided copy and
    col2im kh*kw long contiguous adds, instead of kh*kw*OH short rows each; the price
    is GEMM work on the Wp - OW extra columns, which _use_wide weighs.
    """

    def __init__(self, x_shape, kernel, padding):
        _, self.c, self.h, self.w = x_shape
        self.kh, self.kw = kernel
        self.ph, self.pw = padding
        self.hp, self.wp = self.h + 2 * self.ph, self.w + 2 * self.pw
        self.oh, self.ow = self.hp - self.kh + 1, self.wp - self.kw + 1
        self.q = self.oh * self.wp                          # wide output length per plane
        self.length = self.hp * self.wp + self.kw - 1       # padded plane + the last window's tail

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


# The wide layout saves kh*kw*C*OH short rows per sample and primitive (a few ns of
# NumPy overhead each) and costs 2*O*C*kh*kw*OH*(Wp - OW) extra GEMM flops (at about
# 90 GFLOP/s a core); the two balance near O*(Wp - OW) = 150 (measured per layer).
# Backward-weight saves only im2col rows (there is no col2im) and, when it multiplies
# per sample, pays for copying dy into wide rows: it takes the wide layout less often.
WIDE_MAX_WASTE = 150
WIDE_MAX_WASTE_WEIGHT = 100


def _use_wide(c, o, kernel, stride, padding, x_hw, limit=None):
    """Whether a stride-1 convolution runs in the wide layout (see _Wide)."""
    if tuple(stride) != (1, 1) or _is_pointwise(kernel, stride, padding):
        return False
    kh, kw = kernel
    wp = x_hw[1] + 2 * padding[1]
    ow = wp - kw + 1
    if ow < 1 or x_hw[0] + 2 * padding[0] - kh + 1 < 1:
        return False
    return o * (wp - ow) <= (WIDE_MAX_WASTE if limit is None else limit)


class NumpyBackend:
    """Every primitive of ``gpucnn.backends.PRIMITIVES`` on NumPy arrays."""

    name = "cpu"
    xp = np

    @property
    def threads(self):
        """Threads the primitives split the batch over ($GPUCNN_NUM_THREADS, default: the CPUs)."""
        return _WORKERS.threads

    @threads.setter
    def threads(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"NumpyBackend.threads must be a positive int, got {value!r}")
        _WORKERS.set_threads(int(value))

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
        a = np.asarray(a)
        if a.ndim == 0 or not a.flags.c_contiguous:
            return _finite(a)
        flat = a.reshape(-1)
        return all(_elementwise(flat.size, 1, lambda s, e: _finite(flat[s:e])))

    def accumulate(self, dst, src):
        np.add(dst, src, out=dst)

    # ---------------------------------------------------------- convolution
    def conv2d_forward(self, x, w, stride, padding):
        n, c, h, wd = x.shape
        o, _, kh, kw = w.shape
        oh, ow = _out_size(h, kh, stride[0], padding[0]), _out_size(wd, kw, stride[1], padding[1])
        k, p = c * kh * kw, oh * ow
        w2 = w.reshape(o, k)
        y = _empty((n, o, oh, ow), x.dtype)
        pointwise = _is_pointwise((kh, kw), stride, padding)

        wide = _Wide(x.shape, (kh, kw), padding) if _use_wide(c, o, (kh, kw), stride, padding, (h, wd)) else None

        geom = (x.shape[1:], (kh, kw), tuple(stride), tuple(padding), o)

        def part_wide(s0, e0):
            q = wide.q
            g = _chunk(e0 - s0, k * q * x.itemsize, FORWARD_CHUNK_BYTES)
            planes = _scratch(("fwd-planes", geom), (g, c, wide.length), x.dtype)
            cols = _scratch(("fwd-cols", geom), (g, k, q), x.dtype)
            yw = _scratch(("fwd-y", geom), (g, o, q), x.dtype)
            for s in range(s0, e0, g):
                e = min(e0, s + g)
                pl, cl, yc = planes[:e - s], cols[:e - s], yw[:e - s]
                wide.interior(pl)[...] = x[s:e]          # the padding around stays 0
                np.copyto(cl.reshape(e - s, c, kh, kw, q), wide.windows(pl))
                np.matmul(w2, cl, out=yc)
                y[s:e] = yc.reshape(e - s, o, oh, wide.wp)[..., :ow]

        def part(s0, e0):
            if pointwise:
                np.matmul(w2, x[s0:e0].reshape(e0 - s0, c, p), out=y[s0:e0].reshape(e0 - s0, o, p))
                return
            if wide is not None:
                return part_wide(s0, e0)
            g = _chunk(e0 - s0, k * p * x.itemsize, FORWARD_CHUNK_BYTES)
            # (samples, C*kh*kw, OH*OW); padding positions are never written and stay 0
            buf = _scratch(("fwd-rect", geom), (g, c, kh, kw, oh, ow), x.dtype)
            for s in range(s0, e0, g):
                e = min(e0, s + g)
                cols = buf[:e - s]
                _fill_cols(cols, x[s:e], (kh, kw), stride, padding)
                np.matmul(w2, cols.reshape(e - s, k, p), out=y[s:e].reshape(e - s, o, p))

        _WORKERS.run(part, _WORKERS.parts(n, o * k * p, PARALLEL_MIN_FLOPS_CONV), blas=True)
        return y

    def conv2d_backward_data(self, dy, w, x_shape, stride, padding):
        n, c, h, wd = x_shape
        o, _, kh, kw = w.shape
        oh, ow = dy.shape[2], dy.shape[3]
        k, p = c * kh * kw, oh * ow
        w2t = w.reshape(o, k).T
        pointwise = _is_pointwise((kh, kw), stride, padding)
        dx = _empty(x_shape, dy.dtype)

        wide = _Wide(x_shape, (kh, kw), padding) if _use_wide(c, o, (kh, kw), stride, padding, (h, wd)) else None

        geom = (tuple(x_shape[1:]), (kh, kw), tuple(stride), tuple(padding), o)

        def part_wide(s0, e0):
            q, length = wide.q, wide.length
            g = _chunk(e0 - s0, k * length * dy.itemsize)
            dyw = _scratch(("bwd-dy", geom), (g, o, oh, wide.wp), dy.dtype)  # extra columns stay 0
            # The columns laid out (C*kh*kw, samples, length): a row of one window offset
            # runs through all the chunk's samples, each plane `length` long, and its
            # positions past q are never written (0).  col2im is then kh*kw adds of
            # whole rows: offset (i, j) shifted by i*Wp + j into the planes, laid out the
            # same way (what spills past a plane's end is those zeros).
            dbuf = _scratch(("bwd-cols", geom), (k, g, length), dy.dtype)
            planes = _scratch(("bwd-planes", geom), (c, (g + 1) * length), dy.dtype)
            for s in range(s0, e0, g):
                e = min(e0, s + g)
                gs = e - s
                dw_ = dyw[:gs]
                dw_[..., :ow] = dy[s:e]
                dcols = dbuf[:, :gs]
                np.matmul(w2t, dw_.reshape(gs, o, q), out=dcols.transpose(1, 0, 2)[:, :, :q])
                pl = planes[:, :(gs + 1) * length]
                pl[...] = 0
                rows = dcols.reshape(c, kh, kw, gs * length)
                for i in range(kh):
                    for j in range(kw):
                        at = i * wide.wp + j
                        pl[:, at:at + gs * length] += rows[:, i, j]
                img = pl[:, :gs * length].reshape(c, gs, length)[:, :, :wide.hp * wide.wp]
                img = img.reshape(c, gs, wide.hp, wide.wp)[:, :, wide.ph:wide.ph + h, wide.pw:wide.pw + wd]
                dx[s:e] = img.transpose(1, 0, 2, 3)

        def part(s0, e0):
            if pointwise:
                np.matmul(w2t, dy[s0:e0].reshape(e0 - s0, o, p), out=dx[s0:e0].reshape(e0 - s0, c, p))
                return
            if wide is not None:
                return part_wide(s0, e0)
            dx[s0:e0] = 0
            g = _chunk(e0 - s0, k * p * dy.itemsize)
            buf = _scratch(("bwd-rect", geom), (g, k, p), dy.dtype)
            for s in range(s0, e0, g):
                e = min(e0, s + g)
                dcols = np.matmul(w2t, dy[s:e].reshape(e - s, o, p), out=buf[:e - s])
                _col2im_add(dx[s:e], dcols.reshape(e - s, c, kh, kw, oh, ow), (kh, kw),
                            stride, padding)

        _WORKERS.run(part, _WORKERS.parts(n, o * k * p, PARALLEL_MIN_FLOPS_CONV), blas=True)
        return dx

    def conv2d_backward_weight(self, dy, x, w_shape, stride, padding):
        o, c, kh, kw = w_shape
        n, _, oh, ow = dy.shape
        k = c * kh * kw
        pointwise = _is_pointwise((kh, kw), stride, padding)
        wide = (_Wide(x.shape, (kh, kw), padding)
                if _use_wide(c, o, (kh, kw), stride, padding, x.shape[2:], WIDE_MAX_WASTE_WEIGHT)
                and (k >= oh * ow or k > o) else None)
        # per plane: p output positions (wide: OH*Wp, the extra columns of dy set to 0)
        p = wide.q if wide is not None else oh * ow

        def fill(cols6, planes, s, e):
            """cols6: a (g, C, kh, kw, p) view of any layout, filled from samples s:e."""
            if pointwise:
                np.copyto(cols6.reshape(e - s, c, p), x[s:e].reshape(e - s, c, p))
            elif wide is not None:
                wide.interior(planes)[...] = x[s:e]
                np.copyto(cols6, wide.windows(planes))
            else:
                _fill_cols(cols6.reshape(e - s, c, kh, kw, oh, ow), x[s:e], (kh, kw), stride, padding)

        def dy_into(dst4, s, e):
            """dst4: a (g, O, OH, OW or Wp) view; dy of samples s:e into its first OW columns."""
            dst4[..., :ow] = dy[s:e]

        # dW = sum over samples of dy[n] @ cols[n].T.  When the columns are the longer
        # side (C*kh*kw >= p), one GEMM per chunk of samples: columns laid out
        # (C*kh*kw, samples*p) and dy transposed to (O, samples*p).  When dy's planes
        # are the longer side, transposing dy would cost more than it saves: one GEMM
        # per sample on the forward's column layout, then a sum over the chunk.
        per_chunk = k >= p
        pw_ = wide.wp if wide is not None else ow

        geom = (x.shape[1:], (kh, kw), tuple(stride), tuple(padding), o, wide is not None)

        def part(s0, e0):
            g = _chunk(e0 - s0, k * p * dy.itemsize)
            planes = (_scratch(("wgt-planes", geom), (g, c, wide.length), dy.dtype)
                      if wide is not None else None)
            dw = None
            for s in range(s0, e0, g):
                e = min(e0, s + g)
                gg = e - s
                pl = planes[:gg] if planes is not None else None
                # every buffer below: the elements never written (padding, extra columns) stay 0
                if per_chunk:
                    cols_t = _scratch(("wgt-cols-t", geom), (c, kh, kw, gg, p), dy.dtype)
                    dy_t = _scratch(("wgt-dy-t", geom), (o, gg, oh, pw_), dy.dtype)
                    fill(cols_t.transpose(3, 0, 1, 2, 4), pl, s, e)
                    dy_into(dy_t.transpose(1, 0, 2, 3), s, e)
                    a, b = dy_t.reshape(o, gg * p), cols_t.reshape(k, gg * p)
                    # OpenBLAS is up to twice as fast with the longer side as the GEMM's M
                    prod = a @ b.T if o >= k else (b @ a.T).T
                else:
                    cols = _scratch(("wgt-cols", geom), (g, c, kh, kw, p), dy.dtype)[:gg]
                    fill(cols, pl, s, e)
                    if wide is not None:
                        dyw = _scratch(("wgt-dy", geom), (g, o, oh, pw_), dy.dtype)[:gg]
                        dy_into(dyw, s, e)
                        d3 = dyw.reshape(gg, o, p)
                    else:
                        d3 = dy[s:e].reshape(gg, o, p)
                    prod = np.matmul(d3, cols.reshape(gg, k, p).transpose(0, 2, 1)).sum(axis=0)
                if dw is None:
                    dw = prod
                else:
                    dw += prod
            return dw

        parts = _WORKERS.run(part, _WORKERS.parts(n, o * k * p, PARALLEL_MIN_FLOPS_CONV), blas=True)
        dw = parts[0]
        for more in parts[1:]:
            dw += more
        return dw.reshape(w_shape)

    # ---------------------------------------------------------------- dense
    def linear_forward(self, x, w):
        y = _empty((x.shape[0], w.shape[0]), x.dtype)
        _WORKERS.run(lambda s, e: np.matmul(x[s:e], w.T, out=y[s:e]),
                     _WORKERS.parts(x.shape[0], w.size, PARALLEL_MIN_FLOPS), blas=True)
        return y

    def linear_backward_data(self, dy, w):
        dx = _empty((dy.shape[0], w.shape[1]), dy.dtype)
        _WORKERS.run(lambda s, e: np.matmul(dy[s:e], w, out=dx[s:e]),
                     _WORKERS.parts(dy.shape[0], w.size, PARALLEL_MIN_FLOPS), blas=True)
        return dx

    def linear_backward_weight(self, dy, x):
        parts = _WORKERS.run(lambda s, e: dy[s:e].T @ x[s:e],
                             _WORKERS.parts(dy.shape[0], dy.shape[1] * x.shape[1],
                                            PARALLEL_MIN_FLOPS), blas=True)
        dw = parts[0]
        for more in parts[1:]:
            dw += more
        return dw

    def bias_forward(self, y, b):
        if y.ndim == 4:
            b4 = b.reshape(1, -1, 1, 1)

            def part(s, e):
                y[s:e] += b4
            _elementwise(y.shape[0], y[0].size, part)
        else:
            y += b
        return y

    def bias_backward(self, dy):
        if dy.ndim == 4:
            n, c = dy.shape[0], dy.shape[1]
            d3 = dy.reshape(n, c, -1)
            parts = _elementwise(n, d3[0].size, lambda s, e: d3[s:e].sum(axis=2).sum(axis=0))
            db = parts[0]
            for more in parts[1:]:
                db += more
            return db
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
        y = _empty((n, c, oh, ow), x.dtype)
        argmax = _empty((n, c, oh, ow), np.int32)
        finite = _elementwise(n, x[0].size, lambda s, e: _maxpool_part(
            x[s:e], y[s:e], argmax[s:e], kernel, stride, padding))
        if not all(finite):                # NaN or infinity in x: the careful path
            return _maxpool_exact(x, kernel, stride, padding, (oh, ow))
        return y, argmax

    def maxpool2d_backward(self, dy, argmax, x_shape, kernel, stride, padding):
        n, c, h, w = x_shape
        dx = _empty(x_shape, dy.dtype)
        _elementwise(n, c * h * w, lambda s, e: _maxpool_backward_part(
            dy[s:e], argmax[s:e], dx[s:e], kernel, stride, padding))
        return dx

    def avgpool2d_forward(self, x, kernel, stride, padding):
        n, c, h, w = x.shape
        kh, kw = kernel
        sh, sw = stride
        ph, pw = padding
        oh, ow = _out_size(h, kh, sh, ph), _out_size(w, kw, sw, pw)
        y = _empty((n, c, oh, ow), x.dtype)
        scale = x.dtype.type(1.0 / (kh * kw))

        def part(s, e):
            ys = y[s:e]
            ys[...] = 0
            for _, _, (out_h, out_w), (in_h, in_w) in _window_offsets(
                    (oh, ow), (h, w), kernel, stride, padding):
                ys[:, :, out_h, out_w] += x[s:e, :, in_h, in_w]
            ys *= scale

        _elementwise(n, x[0].size, part)
        return y

    def avgpool2d_backward(self, dy, x_shape, kernel, stride, padding):
        n = x_shape[0]
        kh, kw = kernel
        oh, ow = dy.shape[2], dy.shape[3]
        scale = dy.dtype.type(1.0 / (kh * kw))
        dx = _empty(x_shape, dy.dtype)

        def part(s, e):
            g = dy[s:e] * scale
            dx[s:e] = 0
            g6 = np.broadcast_to(g[:, :, None, None], g.shape[:2] + (kh, kw, oh, ow))
            _col2im_add(dx[s:e], g6, kernel, stride, padding)

        _elementwise(n, dx[0].size, part)
        return dx

    # ---------------------------------------------------------- activations
    # Each runs over the flattened arrays in parallel ranges, writing one new output.
    def sigmoid_forward(self, x):
        # 1/(1+exp(-x)): exp overflows to inf for x << 0 and 1/(1+inf) = 0 exactly,
        # which is the right answer, so only the overflow warning needs silencing.
        xf, y = _flat_pair(x)
        one = x.dtype.type(1)

        def part(s, e):
            ys = y[s:e]
            np.negative(xf[s:e], out=ys)
            with np.errstate(over="ignore"):
                np.exp(ys, out=ys)
            ys += one
            np.reciprocal(ys, out=ys)

        _elementwise(xf.size, 1, part)
        return y.reshape(x.shape)

    def sigmoid_backward(self, dy, y):
        dyf, out = _flat_pair(dy)
        yf = y.reshape(-1)
        one = y.dtype.type(1)

        def part(s, e):
            o = out[s:e]
            np.multiply(dyf[s:e], yf[s:e], out=o)
            o *= np.subtract(one, yf[s:e])

        _elementwise(dyf.size, 1, part)
        return out.reshape(dy.shape)

    def relu_forward(self, x):
        xf, y = _flat_pair(x)
        zero = x.dtype.type(0)
        _elementwise(xf.size, 1, lambda s, e: np.maximum(xf[s:e], zero, out=y[s:e]))
        return y.reshape(x.shape)

    def relu_backward(self, dy, y):
        # (y > 0) written as 1.0 / 0.0 straight into the result, then times dy: two
        # passes and no boolean temporary (np.where is four times slower here).  Where
        # y <= 0 this gives dy * 0, which is 0 for finite dy (the layers pass only those).
        dyf, out = _flat_pair(dy)
        yf = y.reshape(-1)
        zero = y.dtype.type(0)

        def part(s, e):
            o = out[s:e]
            np.greater(yf[s:e], zero, out=o)
            with np.errstate(invalid="ignore"):
                o *= dyf[s:e]
            return _finite(o)

        if not all(_elementwise(dyf.size, 1, part)):   # inf * 0 = NaN: the exact select
            return np.where(y > 0, dy, dy.dtype.type(0))
        return out.reshape(dy.shape)

    def tanh_forward(self, x):
        xf, y = _flat_pair(x)
        _elementwise(xf.size, 1, lambda s, e: np.tanh(xf[s:e], out=y[s:e]))
        return y.reshape(x.shape)

    def tanh_backward(self, dy, y):
        dyf, out = _flat_pair(dy)
        yf = y.reshape(-1)
        one = y.dtype.type(1)

        def part(s, e):
            o = out[s:e]
            np.multiply(yf[s:e], yf[s:e], out=o)
            np.subtract(one, o, out=o)
            o *= dyf[s:e]

        _elementwise(dyf.size, 1, part)
        return out.reshape(dy.shape)

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

    # ---- augmentation (gpucnn/backends/augment.py)
    def crop_flip(self, x, top, left, flip, size, padding):
        return _augment.crop_flip(x, top, left, flip, size, padding)

    def channel_normalize(self, x, mean, std):
        return _augment.channel_normalize(x, mean, std)

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


def _flat_pair(a):
    """(a flattened, an empty flat array of a's dtype): the operands of an elementwise op."""
    flat = np.ascontiguousarray(a).reshape(-1)
    return flat, _empty(flat.size, a.dtype)


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
    q = _scratch("maxpool-2x2", (2, 2, rows, ow), x.dtype)     # fully written below
    np.copyto(q, x.reshape(rows, 2, ow, 2).transpose(1, 3, 0, 2))
    (t0, t1), (b0, b1) = q
    y2 = y.reshape(rows, ow)
    r1 = np.maximum(t1, b1)                  # down the rows first, then across
    np.maximum(t0, b0, out=y2)
    np.maximum(y2, r1, out=y2)
    if not _finite(y):
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
    r = np.array(xp_[:, :, _span(0, oh, sh), :])
    for i in range(1, kh):
        np.maximum(r, xp_[:, :, _span(i, oh, sh), :], out=r)
    y[...] = r[..., _span(0, ow, sw)]
    for j in range(1, kw):
        np.maximum(y, r[..., _span(j, ow, sw)], out=y)
    if not _finite(y):
        return False
    # The first maximum in row-major window order: walk the window offsets backwards,
    # each one holding the maximum taking the place of any later one (uint8 offsets).
    u8 = np.uint8
    last = kh * kw - 1
    k = np.full(y.shape, last, dtype=u8)
    for kk in range(last - 1, -1, -1):
        i, j = divmod(kk, kw)
        eq = np.equal(xp_[:, :, _span(i, oh, sh), _span(j, ow, sw)], y).view(u8)
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
    for i, j, (out_h, out_w), (in_h, in_w) in _window_offsets(
            (oh, ow), (h, w), kernel, stride, padding):
        sel = (slice(None), slice(None), out_h, out_w)
        dx[:, :, in_h, in_w] += np.where(rel[sel] == i * w + j, dy[sel], zero)


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
    for _, _, (out_h, out_w), (in_h, in_w) in _window_offsets(
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
