"""Pooling windows made only of padding.

With padding larger than half the window, a window can lie wholly in the padding: max pooling
would have nothing to choose (the -inf pad itself, and an argmax pointing nowhere), average
pooling a window of zeros. PyTorch refuses such padding ("pad should be at most half of
effective kernel size"); so do the layers (MaxPool2d/AvgPool2d), and so does the seam: every
pooling primitive on every backend raises ``ValueError: ... padding must be at most half the
kernel`` for ``padding > kernel // 2``. At ``padding <= kernel // 2`` every window holds at
least one real element, so the result is always a real input value.

The kernels keep their own contract underneath (kernels/pool2d.cu: the padding is -inf and is
never chosen): a raw launch with a padding-only window, past the seam, gives -inf and argmax -1
(and 0 for average pooling) -- in float32 and float64 alike, which a -FLT_MAX/-DBL_MAX pad
would not.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from tests.cuda_emu import emulator_unavailable_reason, make_emulated_backend

DTYPES = (np.float32, np.float64)
DT_IDS = {np.float32: "float32", np.float64: "float64"}
I64 = np.int64


def _calls(B, x, kernel, stride, padding):
    """Each pooling primitive with these window arguments, as a thunk."""
    n, c, h, w = x.shape
    dy = B.asarray(np.ones((n, c, 3, 3), x.dtype))
    am = B.asarray(np.zeros((n, c, 3, 3), np.int32))
    xb = B.asarray(x)
    return {
        "maxpool2d_forward": lambda: B.maxpool2d_forward(xb, kernel, stride, padding),
        "avgpool2d_forward": lambda: B.avgpool2d_forward(xb, kernel, stride, padding),
        "maxpool2d_backward": lambda: B.maxpool2d_backward(dy, am, x.shape, kernel, stride, padding),
        "avgpool2d_backward": lambda: B.avgpool2d_backward(dy, x.shape, kernel, stride, padding),
    }


@pytest.mark.parametrize("kernel,padding", [((2, 2), (2, 0)), ((2, 2), (0, 2)), ((3, 3), (2, 2)),
                                            ((1, 1), (1, 0)), ((4, 2), (3, 1))])
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS.get)
def test_padding_past_half_the_window_is_refused_at_the_seam(backend, dtype, kernel, padding):
    x = np.arange(16, dtype=dtype).reshape(1, 1, 4, 4)
    for name, call in _calls(backend, x, kernel, (1, 1), padding).items():
        with pytest.raises(ValueError, match=r"padding must be at most half the kernel") as info:
            call()
        assert name in str(info.value), f"the refusal should name the primitive: {info.value}"


def _real_window_everywhere(B, shape, kernel, stride, padding, dtype):
    rng = np.random.default_rng(sum(shape) + sum(kernel) + sum(stride) + sum(padding))
    x = -1.0 - rng.random(shape)            # all negative: a chosen 0 or -inf would show
    y, am = B.maxpool2d_forward(B.asarray(x.astype(dtype)), kernel, stride, padding)
    y, am = np.asarray(B.to_numpy(y)), np.asarray(B.to_numpy(am))
    assert np.all(am >= 0) and np.all(am < shape[2] * shape[3]), (shape, kernel, stride, padding, am)
    planes = x.astype(dtype).reshape(shape[0] * shape[1], -1)
    picked = np.take_along_axis(planes, am.reshape(len(planes), -1).astype(np.int64), axis=1)
    assert np.array_equal(picked.reshape(y.shape), y)


def test_at_most_half_the_window_every_window_holds_a_real_element(numpy_backend):
    # exhaustively over small geometries, on the NumPy backend
    for k, s, size in itertools.product(range(1, 6), range(1, 7), range(1, 6)):
        for p in range(0, k // 2 + 1):
            if (size + 2 * p - k) // s + 1 < 1:
                continue
            _real_window_everywhere(numpy_backend, (1, 2, size, size + 1), (k, k), (s, s), (p, p), np.float64)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS.get)
def test_half_the_window_is_accepted_on_every_backend(backend, dtype):
    for k, s, p, hw in (((2, 2), (1, 1), (1, 1), (1, 1)), ((3, 3), (2, 2), (1, 1), (2, 3)),
                        ((5, 3), (4, 1), (2, 1), (1, 4)), ((2, 2), (2, 2), (1, 1), (3, 5))):
        _real_window_everywhere(backend, (2, 3) + hw, k, s, p, dtype)


# ------------------------------------------------------------------------------------------------
# the kernels' own contract, past the seam
_emu_reason = emulator_unavailable_reason()


@pytest.mark.emulated
@pytest.mark.skipif(_emu_reason is not None, reason=f"CUDA emulator unavailable: {_emu_reason}")
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS.get)
def test_kernel_padding_only_window_is_minus_infinity(dtype):
    # x is 1x1 (value 7); a 2x2 window with stride 1 and padding 2 takes 4x4 positions, of which
    # only the four around the centre hold the real element.
    emu = make_emulated_backend()
    loader = getattr(emu, "loader", None) or emu.__wrapped__.loader
    x = np.full((1, 1, 1, 1), 7, dtype)
    dims = (1, 1, 1, 1, 4, 4, 2, 2, 1, 1, 2, 2)     # N, C, H, W, OH, OW, KH, KW, SH, SW, PH, PW
    y = np.zeros((1, 1, 4, 4), dtype)
    am = np.zeros((1, 1, 4, 4), np.int32)
    loader.get("pool2d.cu", "maxpool2d_forward", dtype)((1,), (32,), (x, y, am, *map(I64, dims)))
    real = np.zeros((4, 4), bool)
    real[1:3, 1:3] = True
    assert np.array_equal(np.where(real, 7, -np.inf), y[0, 0]), y[0, 0].tolist()
    assert np.array_equal(np.where(real, 0, -1), am[0, 0]), am[0, 0].tolist()
    ya = np.full((1, 1, 4, 4), np.nan, dtype)
    loader.get("pool2d.cu", "avgpool2d_forward", dtype)((1,), (32,), (x, ya, *map(I64, dims), dtype(0.25)))
    assert np.array_equal(np.where(real, 1.75, 0), ya[0, 0]), ya[0, 0].tolist()
