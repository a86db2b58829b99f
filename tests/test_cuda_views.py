"""Primitives on arrays that are C-contiguous views starting one element into their buffer.

Several CUDA kernels take a faster path (8/16-byte Pair or Vec accesses) only when their
pointers are aligned, and check the alignment themselves; a view that starts one element in
is the case that must fall back.  On a GPU the view keeps its odd address, and so it does on
the CPU emulator (each array sits at its GPU address modulo 256), which also refuses a
misaligned vector access (tests/test_kernel_alignment.py).
Compared against the NumPy backend with the parity suite's tolerances.
"""
from __future__ import annotations

import numpy as np
import pytest

from gpucnn import tolerances

DTYPES = (np.float32, np.float64)


def _offset_view(B, shape, dtype, seed):
    """A C-contiguous ``shape`` view on ``B`` starting one element into a fresh buffer, and its
    host values."""
    n = int(np.prod(shape))
    host = np.random.default_rng(seed).standard_normal(n + 1).astype(dtype)
    buf = B.asarray(host.copy())          # a backend on NumPy arrays may not copy
    view = buf[1:].reshape(shape)
    assert view.flags.c_contiguous
    return view, host[1:].reshape(shape).copy()


def _same(B, got, want, primitive, dtype):
    got = np.asarray(B.to_numpy(got))
    assert got.shape == want.shape
    abs_err, rel, ok = tolerances.compare(got, np.asarray(want), tolerances.rtol(primitive, dtype))
    assert ok, f"{primitive} {np.dtype(dtype).name} on an offset view: relative error {rel:.3g}"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_pooling_on_offset_views(dtype, other_backend, numpy_backend):
    B, R = other_backend, numpy_backend
    shape, k = (2, 3, 6, 8), (2, 2)                       # W even: the Pair path if aligned
    x, xh = _offset_view(B, shape, dtype, 1)
    y, am = B.maxpool2d_forward(x, k, k, (0, 0))
    y0, am0 = R.maxpool2d_forward(xh, k, k, (0, 0))
    _same(B, y, y0, "maxpool2d_forward", dtype)
    assert np.array_equal(B.to_numpy(am), am0)
    _same(B, B.avgpool2d_forward(x, k, k, (0, 0)), R.avgpool2d_forward(xh, k, k, (0, 0)),
          "avgpool2d_forward", dtype)
    dy, dyh = _offset_view(B, y0.shape, dtype, 2)
    _same(B, B.maxpool2d_backward(dy, B.asarray(am0), shape, k, k, (0, 0)),
          R.maxpool2d_backward(dyh, am0, shape, k, k, (0, 0)), "maxpool2d_backward", dtype)
    _same(B, B.avgpool2d_backward(dy, shape, k, k, (0, 0)),
          R.avgpool2d_backward(dyh, shape, k, k, (0, 0)), "avgpool2d_backward", dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_convolution_on_offset_views(dtype, other_backend, numpy_backend):
    B, R = other_backend, numpy_backend
    x, xh = _offset_view(B, (3, 2, 6, 6), dtype, 3)       # OH*OW = 16: the Vec swap if aligned
    w, wh = _offset_view(B, (4, 2, 3, 3), dtype, 4)
    s, p = (1, 1), (1, 1)
    _same(B, B.conv2d_forward(x, w, s, p), R.conv2d_forward(xh, wh, s, p), "conv2d_forward", dtype)
    dy, dyh = _offset_view(B, (3, 4, 6, 6), dtype, 5)
    _same(B, B.conv2d_backward_data(dy, w, xh.shape, s, p),
          R.conv2d_backward_data(dyh, wh, xh.shape, s, p), "conv2d_backward_data", dtype)
    _same(B, B.conv2d_backward_weight(dy, x, wh.shape, s, p),
          R.conv2d_backward_weight(dyh, xh, wh.shape, s, p), "conv2d_backward_weight", dtype)
    _same(B, B.bias_backward(dy), R.bias_backward(dyh), "bias_backward", dtype)
    y, yh = _offset_view(B, (3, 4, 6, 6), dtype, 6)
    b, bh = _offset_view(B, (4,), dtype, 7)
    _same(B, B.bias_forward(y, b), R.bias_forward(yh, bh), "bias_forward", dtype)
    _same(B, B.sigmoid_forward(x), R.sigmoid_forward(xh), "sigmoid_forward", dtype)
