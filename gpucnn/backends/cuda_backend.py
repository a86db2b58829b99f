"""The backend primitives on an NVIDIA GPU: CuPy allocates, our kernels compute.

Every primitive of ``gpucnn.backends.PRIMITIVES`` is here with the NumPy
backend's signature.  Arguments are checked once, at the seam
(``gpucnn.backends.checked``, which wraps this class wherever it is handed out), so
the primitives here trust them.  Arithmetic runs in the kernels of ``kernels/*.cu``
(launched through ``self.loader``); the only other device work is the GEMM of
convolution and ``Linear``, which goes to cuBLAS through ``xp.matmul``.

The class touches its array module only through ``self.xp`` functions that
NumPy has with the same meaning (``empty``, ``zeros``, ``matmul``,
``ascontiguousarray``, ``reshape``), and passes every kernel scalar as an
explicit ``numpy.int64`` (all integer arguments of our kernels are
``long long``) or as the array's float type (``T``).  That is what lets the
tests run the same class on the CPU with ``xp=numpy`` and an emulated kernel
loader.  CuPy itself is imported only by ``create_cuda_backend()``.

Convolution layout: ``cols`` is ``(C*kh*kw, N*OH*OW)`` (see kernels/conv2d.cu);
``y = W(O, C*kh*kw) @ cols`` gives ``(O, N*OH*OW)``, which ``swap_axes01``
turns into NCHW.  Large batches are processed in chunks so that ``cols``
holds at most ``max_cols_elements`` values; chunk results are combined in a
fixed order, so results stay bitwise reproducible.
"""
from __future__ import annotations

import math
import os

import numpy as np

from . import augment as _augment
from . import cuda as cuda_flags
from . import kernels as _K
from .cuda_layers import LayerPrimitives
from .geometry import out_hw

I64 = np.int64

#: kernels/conv2d_igemm.cu's block: 256 threads computing a 64 x 64 output tile, K steps of 16
_IGEMM_THREADS = 256
_IGEMM_TILE = 64
_IGEMM_K = 16

_INSTALL_HINT = ("pip install gpucnn[cuda12] or gpucnn[cuda13] "
                 "(the one matching your NVIDIA driver's CUDA version)")


class CudaBackend(LayerPrimitives):
    """Every primitive on device arrays of ``xp`` (CuPy), computed by our kernels."""

    #: upper bound on the elements of one im2col buffer; larger batches are chunked
    max_cols_elements = 1 << 27
    #: upper bound on the partial sums per channel of the bias gradient's first stage
    max_partials = 8192
    #: convolution algorithm: "igemm" (implicit GEMM) or "im2col" (im2col + cuBLAS)
    conv_algorithm = os.environ.get("GPUCNN_CONV", "igemm") or "igemm"
    #: implicit-GEMM backward weight: blocks to aim for, and least terms per reduction slice
    igemm_target_blocks = 1024
    igemm_min_slice = 256

    def __init__(self, xp, loader, name="cuda"):
        self.xp = xp
        self.loader = loader
        self.name = name

    # ------------------------------------------------------------- helpers
    def _c(self, a):
        return self.xp.ascontiguousarray(a)

    def _launch(self, file, kernel, dtype, total, *args):
        """Launch ``kernel<T>`` of ``file`` with a grid-stride grid for ``total`` items.

        This runs ~55 times per training step, so it is kept to the bare minimum: the
        grid from kernels.BLOCK / MAX_BLOCKS read at call time (so tests can shrink the
        grid), one loader lookup, one launch."""
        if total <= 0:
            return
        block = _K.BLOCK
        blocks = (total + block - 1) // block
        if blocks > _K.MAX_BLOCKS:
            blocks = _K.MAX_BLOCKS
        self.loader.get(file, kernel, dtype)((blocks,), (block,), args)

    def _partials(self, m, per_thread=32):
        """How many partial sums a reduction over ``m`` values uses (depends on m only).

        ~32 values per thread: the first stage then has enough threads to stream the
        gradient at full bandwidth (e.g. 8192 x 32 channels for a (256, 32, 32, 32) dy),
        and the second stage (one warp per channel) adds the partials quickly."""
        return int(max(1, min(self.max_partials, (m + per_thread - 1) // per_thread)))

    # -------------------------------------------------------------- arrays
    def asarray(self, a, dtype=None):
        xp = self.xp
        if xp is np:
            if not isinstance(a, np.ndarray) and hasattr(a, "get"):  # a CuPy array
                a = a.get()
            return np.ascontiguousarray(a, dtype=dtype)
        return xp.ascontiguousarray(xp.asarray(a, dtype=dtype))

    def to_numpy(self, a):
        if isinstance(a, np.ndarray):
            return a
        if hasattr(a, "get"):
            return a.get()
        return np.asarray(a)

    def zeros(self, shape, dtype):
        return self.xp.zeros(shape, dtype=dtype)

    def all_finite(self, a):
        a = self._c(a)
        if np.dtype(a.dtype).kind != "f":
            return True
        flag = self.xp.zeros((1,), dtype=np.int32)
        self._launch("activation.cu", "nonfinite_flag", a.dtype, a.size, a, flag, I64(a.size))
        return int(self.to_numpy(flag)[0]) == 0

    def accumulate(self, dst, src):
        src = self._c(src)
        self._launch("activation.cu", "accumulate", dst.dtype, dst.size, dst, src, I64(dst.size))

    # --------------------------------------------------------- convolution
    @staticmethod
    def _conv_geometry(x_shape, w_shape, stride, padding):
        """The sizes the conv2d.cu kernels take (arguments checked at the seam)."""
        n, c, h, w = (int(v) for v in x_shape)
        o, _, kh, kw = (int(v) for v in w_shape)
        sh, sw = int(stride[0]), int(stride[1])
        ph, pw = int(padding[0]), int(padding[1])
        oh, ow = out_hw((h, w), (kh, kw), (sh, sw), (ph, pw))
        return n, c, h, w, o, kh, kw, sh, sw, ph, pw, oh, ow

    def _chunks(self, n, per_sample):
        step = max(1, self.max_cols_elements // max(1, per_sample))
        return [(n0, min(n, n0 + step)) for n0 in range(0, n, step)]

    def _im2col(self, x_chunk, dims):
        n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow = dims
        cols = self.xp.empty((c * kh * kw, n * oh * ow), dtype=x_chunk.dtype)
        # one thread per (channel, column), each writing the kh*kw rows of its channel
        self._launch("conv2d.cu", "im2col", x_chunk.dtype, c * n * oh * ow, x_chunk, cols,
                     *map(I64, dims))
        return cols

    def _swap01(self, src, a, b, l, out=None):
        """(A, B, L) -> (B, A, L)."""
        if out is None:
            out = self.xp.empty((b, a, l), dtype=src.dtype)
        # the kernel moves 4 elements per thread when l % 4 == 0 (and both are aligned;
        # otherwise its grid-stride loop covers the rest with this smaller grid)
        units = a * b * l // 4 if l % 4 == 0 else a * b * l
        self._launch("conv2d.cu", "swap_axes01", src.dtype, units, src, out,
                     I64(a), I64(b), I64(l))
        return out

    # Which algorithm: implicit GEMM (kernels/conv2d_igemm.cu, no im2col buffer) unless
    # ``conv_algorithm`` (default: $GPUCNN_CONV, else "igemm") is "im2col", which keeps the
    # im2col + cuBLAS + col2im path (for comparison in benchmarks/bench_kernels.py).
    def _igemm(self):
        algo = self.conv_algorithm
        if algo == "igemm":
            return True
        if algo == "im2col":
            return False
        raise ValueError(f"conv_algorithm (or $GPUCNN_CONV) is {algo!r}; expected 'igemm' or 'im2col'")

    def _igemm_launch(self, name, dt, grid, *args):
        self.loader.get("conv2d_igemm.cu", name, dt)(grid, (_IGEMM_THREADS,), args)

    def _igemm_grid(self, rows, cols, slices=1):
        return ((cols + _IGEMM_TILE - 1) // _IGEMM_TILE, (rows + _IGEMM_TILE - 1) // _IGEMM_TILE,
                slices)

    def _split(self, rows, cols, r):
        """(slices S, chunk) of backward weight's reduction over r = N*OH*OW terms.

        Enough blocks to fill a large GPU (``igemm_target_blocks``) when the output has few
        tiles, but at least ``igemm_min_slice`` terms per slice; chunk is a multiple of the
        K step (16).  Depends on the shapes only: the result is the same on every device."""
        tiles = ((rows + _IGEMM_TILE - 1) // _IGEMM_TILE) * ((cols + _IGEMM_TILE - 1) // _IGEMM_TILE)
        want = max(1, -(-self.igemm_target_blocks // tiles))
        s = max(1, min(want, r // max(1, self.igemm_min_slice), 65535))
        per_slice = max(1, -(-r // s))                        # ceil(r / s)
        chunk = -(-per_slice // _IGEMM_K) * _IGEMM_K          # rounded up to a K step
        return max(1, -(-r // chunk)), chunk

    def conv2d_forward(self, x, w, stride, padding):
        if not self._igemm():
            return self._im2col_forward(x, w, stride, padding)
        dt = x.dtype
        x, w = self._c(x), self._c(w)
        dims = self._conv_geometry(x.shape, w.shape, stride, padding)
        n, c, h, wd, o, kh, kw, sh, sw, ph, pw, oh, ow = dims
        y = self.xp.empty((n, o, oh, ow), dtype=dt)
        if y.size == 0:
            return y
        if self._use_tf32(dt) and self._tf32_forward(x, w, y, dims):
            return y
        self._igemm_launch("conv2d_igemm_forward", dt, self._igemm_grid(o, n * oh * ow),
                           x, w, y, *map(I64, (n, c, h, wd, o, kh, kw, sh, sw, ph, pw, oh, ow)))
        return y

    def conv2d_backward_data(self, dy, w, x_shape, stride, padding):
        if not self._igemm():
            return self._im2col_backward_data(dy, w, x_shape, stride, padding)
        dt = dy.dtype
        dy, w = self._c(dy), self._c(w)
        n, c, h, wd, o, kh, kw, sh, sw, ph, pw, oh, ow = self._conv_geometry(
            x_shape, w.shape, stride, padding)
        dx = self.xp.empty((n, c, h, wd), dtype=dt)
        if dx.size == 0:
            return dx
        self._igemm_launch("conv2d_igemm_backward_data", dt, self._igemm_grid(c, n * h * wd),
                           dy, w, dx, *map(I64, (n, c, h, wd, o, kh, kw, sh, sw, ph, pw, oh, ow)))
        return dx

    def conv2d_backward(self, dy, x, w, stride, padding, input_grad):
        """The two launches one after the other (one stream: nothing to overlap)."""
        dw = self.conv2d_backward_weight(dy, x, w.shape, stride, padding)
        dx = self.conv2d_backward_data(dy, w, x.shape, stride, padding) if input_grad else None
        return dx, dw

    def conv2d_backward_weight(self, dy, x, w_shape, stride, padding):
        if not self._igemm():
            return self._im2col_backward_weight(dy, x, w_shape, stride, padding)
        dt = dy.dtype
        dy, x = self._c(dy), self._c(x)
        n, c, h, wd, o, kh, kw, sh, sw, ph, pw, oh, ow = self._conv_geometry(
            x.shape, w_shape, stride, padding)
        cols = c * kh * kw
        slices, chunk = self._split(o, cols, n * oh * ow)
        dw = self.xp.empty((o, c, kh, kw), dtype=dt)
        part = dw if slices == 1 else self.xp.empty((slices, o, cols), dtype=dt)
        self._igemm_launch("conv2d_igemm_backward_weight", dt, self._igemm_grid(o, cols, slices),
                           dy, x, part,
                           *map(I64, (n, c, h, wd, o, kh, kw, sh, sw, ph, pw, oh, ow, chunk)))
        if slices > 1:
            self._launch("conv2d_igemm.cu", "igemm_split_sum", dt, o * cols, part, dw,
                         I64(o * cols), I64(slices))
        return dw

    # TF32: the float32 forward on the tensor cores when gpucnn.backends.cuda.allow_tf32 is
    # True and the device has compute capability >= 8.0 (kernels/conv2d_igemm_tf32.cu).  If that
    # file cannot be compiled (it needs the CUDA toolkit's <mma.h>), one warning, then float32.
    _compute_capability = None
    _tf32_unavailable = None

    def _use_tf32(self, dt):
        if not cuda_flags.allow_tf32 or dt != np.float32 or self._tf32_unavailable:
            return False
        cc = self._compute_capability
        if cc is None:
            get = getattr(self.loader, "compute_capability", None)
            cc = self._compute_capability = int(get()) if get is not None else 0
        return cc >= _K.NEEDS_CUDA_HEADERS["conv2d_igemm_tf32.cu"]

    def _tf32_forward(self, x, w, y, dims):
        n, c, h, wd, o, kh, kw, sh, sw, ph, pw, oh, ow = dims
        try:
            kernel = self.loader.get("conv2d_igemm_tf32.cu", "conv2d_igemm_forward_tf32", x.dtype)
        except _K.KernelCompileError as exc:
            import warnings
            self._tf32_unavailable = str(exc)
            warnings.warn("gpucnn: allow_tf32 is set but the TF32 convolution kernel does not "
                          f"compile here ({' '.join(str(exc).split())[:300]}); using float32",
                          RuntimeWarning, stacklevel=3)
            return False
        kernel(self._igemm_grid(o, n * oh * ow), (_IGEMM_THREADS,), (x, w, y, *map(I64, dims)))
        return True

    def _im2col_forward(self, x, w, stride, padding):
        dt = x.dtype
        x, w = self._c(x), self._c(w)
        n, c, h, wd, o, kh, kw, sh, sw, ph, pw, oh, ow = self._conv_geometry(
            x.shape, w.shape, stride, padding)
        k, l = c * kh * kw, oh * ow
        w2 = w.reshape(o, k)
        y = self.xp.empty((n, o, oh, ow), dtype=dt)
        for n0, n1 in self._chunks(n, k * l):
            nb = n1 - n0
            cols = self._im2col(x[n0:n1], (nb, c, h, wd, kh, kw, sh, sw, ph, pw, oh, ow))
            y_onl = self.xp.matmul(w2, cols)                       # (O, nb*OH*OW)
            self._swap01(y_onl, o, nb, l, out=y[n0:n1])
        return y

    def _im2col_backward_data(self, dy, w, x_shape, stride, padding):
        dt = dy.dtype
        dy, w = self._c(dy), self._c(w)
        n, c, h, wd, o, kh, kw, sh, sw, ph, pw, oh, ow = self._conv_geometry(
            x_shape, w.shape, stride, padding)
        k, l = c * kh * kw, oh * ow
        w2t = w.reshape(o, k).T                                     # (C*kh*kw, O)
        dx = self.xp.empty((n, c, h, wd), dtype=dt)
        for n0, n1 in self._chunks(n, k * l):
            nb = n1 - n0
            dy_onl = self._swap01(dy[n0:n1], nb, o, l)             # (O, nb, L)
            dcols = self.xp.matmul(w2t, dy_onl.reshape(o, nb * l))  # (C*kh*kw, nb*L)
            dcols = self._c(dcols)
            self._launch("conv2d.cu", "col2im", dt, nb * c * h * wd, dcols, dx[n0:n1],
                         *map(I64, (nb, c, h, wd, kh, kw, sh, sw, ph, pw, oh, ow)))
        return dx

    def _im2col_backward_weight(self, dy, x, w_shape, stride, padding):
        dy, x = self._c(dy), self._c(x)
        n, c, h, wd, o, kh, kw, sh, sw, ph, pw, oh, ow = self._conv_geometry(
            x.shape, w_shape, stride, padding)
        k, l = c * kh * kw, oh * ow
        dw = None
        for n0, n1 in self._chunks(n, k * l):
            nb = n1 - n0
            cols = self._im2col(x[n0:n1], (nb, c, h, wd, kh, kw, sh, sw, ph, pw, oh, ow))
            dy_onl = self._swap01(dy[n0:n1], nb, o, l).reshape(o, nb * l)
            part = self._c(self.xp.matmul(dy_onl, cols.T))          # (O, C*kh*kw)
            if dw is None:
                dw = part
            else:
                self.accumulate(dw, part)
        return dw.reshape(tuple(int(v) for v in w_shape))

    # --------------------------------------------------------------- dense
    def linear_forward(self, x, w):
        return self._c(self.xp.matmul(x, w.T))

    def linear_backward_data(self, dy, w):
        return self._c(self.xp.matmul(dy, w))

    def linear_backward_weight(self, dy, x):
        return self._c(self.xp.matmul(dy.T, x))

    def bias_forward(self, y, b):
        y = self._c(y)
        b = self._c(b)
        c = int(y.shape[1])
        hw = int(np.prod(y.shape[2:], dtype=np.int64)) if y.ndim > 2 else 1
        self._launch("bias.cu", "bias_forward", y.dtype, y.size, y, b,
                     I64(y.size), I64(c), I64(hw))
        return y

    def bias_backward(self, dy):
        dt = dy.dtype
        dy = self._c(dy)
        n, c = int(dy.shape[0]), int(dy.shape[1])
        hw = int(np.prod(dy.shape[2:], dtype=np.int64)) if dy.ndim > 2 else 1
        p = self._partials(n * hw)
        partial = self.xp.empty((c * p,), dtype=np.float64)
        self._launch("bias.cu", "channel_sum_partial", dt, c * p, dy, partial,
                     I64(n), I64(c), I64(hw), I64(p))
        db = self.xp.empty((c,), dtype=dt)
        self._launch("bias.cu", "row_sum", dt, 32 * c, partial, db, I64(c), I64(p))  # a warp per row
        return db

    #: activation name -> the code bias_act_forward's kernel takes
    _ACT_CODES = {None: 0, "identity": 0, "relu": 1, "sigmoid": 2, "tanh": 3}

    def bias_act_forward(self, y, b, act):
        y = self._c(y)
        b = self._c(b)
        c = int(y.shape[1])
        hw = int(np.prod(y.shape[2:], dtype=np.int64)) if y.ndim > 2 else 1
        self._launch("bias.cu", "bias_act_forward", y.dtype, y.size, y, b,
                     I64(y.size), I64(c), I64(hw), I64(self._ACT_CODES[act]))
        return y

    # ---------------------------------------------------------------- data
    def gather_rows(self, src, idx):
        src = self._c(src)
        idx = self.asarray(idx, dtype=np.int64)
        b = int(idx.shape[0])
        d = int(np.prod(src.shape[1:], dtype=np.int64))
        out = self.xp.empty((b,) + tuple(src.shape[1:]), dtype=src.dtype)
        self._launch("data.cu", "gather_rows", src.dtype, b * d, src, idx, out, I64(b), I64(d))
        return out

    def gather_normalize(self, src, idx, mean, std, pixel_max, dtype):
        dt = np.dtype(dtype)
        src = self._c(src)
        idx = self.asarray(idx, dtype=np.int64)
        b, c = int(idx.shape[0]), int(src.shape[1])
        s = int(np.prod(src.shape[2:], dtype=np.int64))
        m = self.asarray(np.asarray(mean, dtype=dt))
        sd = self.asarray(np.asarray(std, dtype=dt))
        out = self.xp.empty((b,) + tuple(src.shape[1:]), dtype=dt)
        self._launch("data.cu", "gather_normalize", dt, b * c * s, src, idx, m, sd, out,
                     I64(b), I64(c), I64(s), dt.type(1.0 / pixel_max))
        return out

    # ------------------------------------------------------------- pooling
    @staticmethod
    def _pool_geometry(x_shape, kernel, stride, padding):
        """The sizes the pool2d.cu kernels take (arguments checked at the seam)."""
        n, c, h, w = (int(v) for v in x_shape)
        kh, kw = int(kernel[0]), int(kernel[1])
        sh, sw = int(stride[0]), int(stride[1])
        ph, pw = int(padding[0]), int(padding[1])
        oh, ow = out_hw((h, w), (kh, kw), (sh, sw), (ph, pw))
        return n, c, h, w, oh, ow, kh, kw, sh, sw, ph, pw

    @staticmethod
    def _disjoint_cells(dims):
        """Stride cells of the *_backward_disjoint kernels, or 0 when windows overlap."""
        n, c, h, w, _, _, kh, kw, sh, sw, ph, pw = dims
        if sh < kh or sw < kw:
            return 0
        return n * c * ((h + ph + sh - 1) // sh) * ((w + pw + sw - 1) // sw)

    @staticmethod
    def _per_thread(dims, backward):
        """Items per thread of the pool2d.cu 2x2/stride-2 paths: 2 when the kernel takes two
        outputs (forward) or two cells (backward) per thread, i.e. no padding and W % 4 == 0
        (and H even, backward), so the launch needs half the threads; else 1.  (The kernel
        also needs aligned arrays, which it checks itself; if not, its grid-stride loop
        covers the rest with these threads.)"""
        _, _, h, w, _, _, kh, kw, sh, sw, ph, pw = dims
        quad = (kh == 2 and kw == 2 and sh == 2 and sw == 2 and ph == 0 and pw == 0
                and w % 4 == 0 and (h % 2 == 0 or not backward))
        return 2 if quad else 1

    def maxpool2d_forward(self, x, kernel, stride, padding):
        dt = x.dtype
        x = self._c(x)
        dims = self._pool_geometry(x.shape, kernel, stride, padding)
        n, c, _, _, oh, ow = dims[:6]
        y = self.xp.empty((n, c, oh, ow), dtype=dt)
        argmax = self.xp.empty((n, c, oh, ow), dtype=np.int32)
        self._launch("pool2d.cu", "maxpool2d_forward", dt,
                     y.size // self._per_thread(dims, False), x, y, argmax,
                     *map(I64, dims))
        return y, argmax

    def maxpool2d_backward(self, dy, argmax, x_shape, kernel, stride, padding):
        dt = dy.dtype
        dy, argmax = self._c(dy), self._c(argmax)
        dims = self._pool_geometry(x_shape, kernel, stride, padding)
        n, c, h, w = dims[:4]
        dx = self.xp.empty((n, c, h, w), dtype=dt)
        cells = self._disjoint_cells(dims)
        if cells:   # windows do not overlap: one thread per stride cell
            self._launch("pool2d.cu", "maxpool2d_backward_disjoint", dt,
                         cells // self._per_thread(dims, True), dy, argmax, dx,
                         *map(I64, dims))
        else:       # one thread per input element, gathering from its windows
            self._launch("pool2d.cu", "maxpool2d_backward", dt, dx.size, dy, argmax, dx,
                         *map(I64, dims))
        return dx

    def avgpool2d_forward(self, x, kernel, stride, padding):
        dt = x.dtype
        x = self._c(x)
        dims = self._pool_geometry(x.shape, kernel, stride, padding)
        n, c, _, _, oh, ow, kh, kw = dims[:8]
        y = self.xp.empty((n, c, oh, ow), dtype=dt)
        self._launch("pool2d.cu", "avgpool2d_forward", dt,
                     y.size // self._per_thread(dims, False), x, y,
                     *map(I64, dims), dt.type(1.0 / (kh * kw)))
        return y

    def avgpool2d_backward(self, dy, x_shape, kernel, stride, padding):
        dt = dy.dtype
        dy = self._c(dy)
        dims = self._pool_geometry(x_shape, kernel, stride, padding)
        n, c, h, w, _, _, kh, kw = dims[:8]
        dx = self.xp.empty((n, c, h, w), dtype=dt)
        inv_area = dt.type(1.0 / (kh * kw))
        cells = self._disjoint_cells(dims)
        if cells:
            self._launch("pool2d.cu", "avgpool2d_backward_disjoint", dt,
                         cells // self._per_thread(dims, True), dy, dx,
                         *map(I64, dims), inv_area)
        else:
            self._launch("pool2d.cu", "avgpool2d_backward", dt, dx.size, dy, dx,
                         *map(I64, dims), inv_area)
        return dx

    # --------------------------------------------------------- activations
    def _unary(self, kernel, x):
        dt = x.dtype
        x = self._c(x)
        y = self.xp.empty(x.shape, dtype=dt)
        self._launch("activation.cu", kernel, dt, x.size, x, y, I64(x.size))
        return y

    def _binary(self, kernel, dy, y):
        dt = dy.dtype
        dy, y = self._c(dy), self._c(y)
        dx = self.xp.empty(dy.shape, dtype=dt)
        self._launch("activation.cu", kernel, dt, dy.size, dy, y, dx, I64(dy.size))
        return dx

    def sigmoid_forward(self, x):
        return self._unary("sigmoid_forward", x)

    def sigmoid_backward(self, dy, y):
        return self._binary("sigmoid_backward", dy, y)

    def relu_forward(self, x):
        return self._unary("relu_forward", x)

    def relu_backward(self, dy, y):
        return self._binary("relu_backward", dy, y)

    def tanh_forward(self, x):
        return self._unary("tanh_forward", x)

    def tanh_backward(self, dy, y):
        return self._binary("tanh_backward", dy, y)

    # -------------------------------------------------------------- losses
    def softmax_cross_entropy_forward(self, logits, labels):
        dt = logits.dtype
        logits = self._c(logits)
        labels = self.asarray(labels, dtype=np.int64)
        n, k = int(logits.shape[0]), int(logits.shape[1])
        probs = self.xp.empty((n, k), dtype=dt)
        row_loss = self.xp.empty((n,), dtype=dt)
        self._launch("loss.cu", "softmax_cross_entropy_forward", dt, n, logits, labels, probs,
                     row_loss, I64(n), I64(k))
        return self._mean_scalar(row_loss, n, n), probs

    def softmax_cross_entropy_backward(self, probs, labels):
        dt = probs.dtype
        probs = self._c(probs)
        labels = self.asarray(labels, dtype=np.int64)
        n, k = int(probs.shape[0]), int(probs.shape[1])
        dx = self.xp.empty((n, k), dtype=dt)
        self._launch("loss.cu", "softmax_cross_entropy_backward", dt, n * k, probs, labels, dx,
                     I64(n), I64(k), dt.type(1.0 / max(n, 1)))
        return dx

    def mse_forward(self, y, t):
        dt = y.dtype
        y, t = self._c(y), self._c(t)
        n = int(y.size)
        # up to 65536 partial sums (enough threads to stream a large tensor at full
        # bandwidth), added on the host in float64
        p = max(1, min(1 << 16, (n + 255) // 256))
        partial = self.xp.zeros((p,), dtype=np.float64)
        self._launch("loss.cu", "squared_error_partial", dt, p, y, t, partial, I64(n), I64(p))
        return self._mean_scalar(partial, p, n)

    def _mean_scalar(self, values, count, divisor):
        """A 0-d float64 device array: the first ``count`` of ``values`` summed in a fixed order,
        divided by ``divisor`` (NaN when it is 0) -- a loss that needs no host round trip."""
        out = self.xp.empty((), dtype=np.float64)
        if not divisor:
            out.fill(np.nan)
            return out
        self._launch("loss.cu", "mean_to_scalar", values.dtype, 32, values, out, I64(count),
                     np.float64(divisor))
        return out

    def mse_backward(self, y, t):
        dt = y.dtype
        y, t = self._c(y), self._c(t)
        dx = self.xp.empty(y.shape, dtype=dt)
        self._launch("loss.cu", "mse_backward", dt, y.size, y, t, dx, I64(y.size),
                     dt.type(2.0 / max(int(y.size), 1)))
        return dx

    # ---------------------------------------------------------- optimizers
    def sgd_update(self, param, grad, buf, lr, momentum, weight_decay, nesterov, first):
        dt = param.dtype
        t = dt.type
        grad = self._c(grad)
        use_buf = bool(momentum)
        self._launch("optim.cu", "sgd_update", dt, param.size, param, grad,
                     buf if use_buf else param, I64(param.size), t(lr), t(momentum),
                     t(weight_decay), I64(bool(nesterov)), I64(bool(first)), I64(use_buf))

    def adam_update(self, param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay):
        dt = param.dtype
        t = dt.type
        grad = self._c(grad)
        bc1 = 1 - beta1 ** step
        bc2 = 1 - beta2 ** step
        self._launch("optim.cu", "adam_update", dt, param.size, param, grad, m, v,
                     I64(param.size), t(beta1), t(1 - beta1), t(beta2), t(1 - beta2), t(eps),
                     t(weight_decay), t(lr / bc1), t(1.0 / math.sqrt(bc2)))

    # -------------------------------------------------------- augmentation
    def crop_flip(self, x, top, left, flip, size, padding):
        n, c, h, w, oh, ow, ph, pw, top, left, flip = _augment.prepare_crop_flip(
            x, top, left, flip, size, padding)
        dt = x.dtype
        x = self._c(x)
        y = self.xp.empty((n, c, oh, ow), dtype=dt)
        self._launch("augment.cu", "crop_flip", dt, y.size, x, self.asarray(top),
                     self.asarray(left), self.asarray(flip), y,
                     *map(I64, (n, c, h, w, oh, ow, ph, pw)))
        return y

    def channel_normalize(self, x, mean, std):
        c, mean, std = _augment.prepare_channel_normalize(x, mean, std)
        dt = x.dtype
        x = self._c(x)
        y = self.xp.empty(x.shape, dtype=dt)
        hw = int(np.prod(x.shape[2:], dtype=np.int64)) if x.ndim > 2 else 1
        self._launch("augment.cu", "channel_normalize", dt, x.size, x, self.asarray(mean),
                     self.asarray(std), y, I64(x.size), I64(c), I64(hw))
        return y


    # ------------------------------------- graph-replayable updates (not seam primitives)
    # gpucnn/graph.py captures the step once; these read the values that change between
    # replays (lr, Adam's bias corrections) from device memory.  Bitwise the updates above.
    def sgd_update_indexed(self, param, grad, buf, lr_table, momentum, weight_decay, nesterov):
        dt = param.dtype
        t = dt.type
        use_buf = bool(momentum)
        self._launch("optim.cu", "sgd_update_indexed", dt, param.size, param, grad,
                     buf if use_buf else param, I64(param.size), lr_table, t(momentum),
                     t(weight_decay), I64(bool(nesterov)), I64(use_buf))

    def adam_update_indexed(self, param, grad, m, v, table, row, beta1, beta2, eps, weight_decay):
        dt = param.dtype
        t = dt.type
        self._launch("optim.cu", "adam_update_indexed", dt, param.size, param, grad, m, v,
                     I64(param.size), t(beta1), t(1 - beta1), t(beta2), t(1 - beta2), t(eps),
                     t(weight_decay), table, row)

    def advance_row(self, row, dtype):
        self._launch("optim.cu", "advance_row", dtype, 1, row)

    @staticmethod
    def adam_table_row(dtype, step, lr, beta1, beta2):
        """(step_size, inv_sqrt_bc2) of step ``step`` exactly as adam_update computes them."""
        t = np.dtype(dtype).type
        return t(lr / (1 - beta1 ** step)), t(1.0 / math.sqrt(1 - beta2 ** step))


def _one_line(exc):
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _driver_library_present():
    """Whether the NVIDIA driver's CUDA library (libcuda / nvcuda.dll) can be loaded."""
    import ctypes
    import sys
    names = ("nvcuda.dll",) if sys.platform.startswith("win") else ("libcuda.so.1", "libcuda.so")
    for name in names:
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def _cuda_version(runtime):
    try:
        v = runtime.runtimeGetVersion()
        return f"CUDA {v // 1000}.{v % 1000 // 10}"
    except Exception:
        return "its CUDA version"


def create_cuda_backend():
    """Return ``(CudaBackend, None)``, or ``(None, reason)`` with a one-line reason.

    Checks, in order: CuPy imports, a device is visible, the driver is new enough
    for CuPy's CUDA, the float32 kernels compile, and a small kernel runs.
    """
    try:
        import cupy
    except ImportError:
        return None, f"CuPy is not installed ({_INSTALL_HINT})"
    except Exception as exc:  # a broken CuPy install (missing CUDA libraries, ...)
        return None, f"CuPy failed to import ({_one_line(exc)}); reinstall it: {_INSTALL_HINT}"
    runtime = cupy.cuda.runtime
    try:
        count = runtime.getDeviceCount()
    except Exception as exc:
        msg = str(exc)
        if "NoDevice" in msg:
            return None, "no CUDA device is visible (check nvidia-smi and CUDA_VISIBLE_DEVICES)"
        if "InsufficientDriver" in msg or "insufficient" in msg.lower():
            if not _driver_library_present():
                return None, ("no NVIDIA driver on this machine (libcuda cannot be loaded), "
                              "so there is no GPU to use")
            return None, (f"the NVIDIA driver is too old for this CuPy (built for "
                          f"{_cuda_version(runtime)}): update the driver, or install the CuPy "
                          f"for your driver's CUDA ({_INSTALL_HINT})")
        return None, f"cannot query CUDA devices ({_one_line(exc)})"
    if count < 1:
        return None, "no CUDA device is visible (check nvidia-smi and CUDA_VISIBLE_DEVICES)"
    try:
        driver, built = runtime.driverGetVersion(), runtime.runtimeGetVersion()
        if driver and driver // 1000 < built // 1000:
            return None, (f"the NVIDIA driver supports CUDA {driver // 1000}.{driver % 1000 // 10} "
                          f"but this CuPy is built for CUDA {built // 1000}.{built % 1000 // 10}: "
                          f"update the driver or install the CuPy for CUDA {driver // 1000} "
                          f"({_INSTALL_HINT})")
    except Exception:
        pass
    from .kernels import CupyKernelLoader, KernelCompileError
    loader = CupyKernelLoader(cupy)
    backend = CudaBackend(cupy, loader)
    try:
        loader.compile_all(("float32",))
    except KernelCompileError as exc:
        return None, f"the CUDA kernels failed to compile: {_one_line(exc)}"
    except Exception as exc:
        return None, f"the CUDA kernels could not be loaded: {_one_line(exc)}"
    try:
        x = backend.asarray(np.array([-1.5, 0.0, 2.5], dtype=np.float32))
        got = backend.to_numpy(backend.relu_forward(x))
        if not np.array_equal(got, np.array([0.0, 0.0, 2.5], dtype=np.float32)):
            return None, f"a test kernel on the GPU returned wrong values {got.tolist()}"
    except Exception as exc:
        msg = _one_line(exc)
        if "PTX" in msg or "DRIVER" in msg.upper() and "VERSION" in msg.upper():
            return None, f"the NVIDIA driver is too old to run the compiled kernels ({msg})"
        return None, f"running a test kernel on the GPU failed ({msg})"
    return backend, None
