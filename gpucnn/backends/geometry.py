"""Output sizes of windowed operations and their shape checks, written once for both
backends, the seam's argument checks (``checked.py``) and `gpucnn check`.

Convolution and pooling share one rule per spatial axis:
``out = (size + 2 * padding - kernel) // stride + 1``.

``conv_out_shape`` and ``pool_out_shape`` return the output's NCHW shape and raise a
one-line ``ValueError`` naming the primitive when the arguments do not make one (wrong
rank, channels that differ, a window that does not fit, a stride below 1, ...).
"""
from __future__ import annotations


def out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Positions a window of ``kernel`` takes along an axis of ``size`` (padded both sides)."""
    return (int(size) + 2 * int(padding) - int(kernel)) // int(stride) + 1


def out_hw(in_hw, kernel, stride, padding) -> tuple[int, int]:
    """``(OH, OW)`` for an input plane ``(H, W)`` and ``(h, w)`` kernel, stride and padding."""
    return (out_size(in_hw[0], kernel[0], stride[0], padding[0]),
            out_size(in_hw[1], kernel[1], stride[1], padding[1]))


def _pair(primitive, name, v, low):
    """``v`` as an ``(h, w)`` pair of ints >= ``low``, or a ValueError naming it."""
    try:
        h, w = v
        if h >= low and w >= low and h == int(h) and w == int(w):
            return h, w
    except (TypeError, ValueError):
        raise ValueError(f"{primitive}: {name} is {v!r}; expected an (h, w) pair of ints") from None
    if h == int(h) and w == int(w):
        raise ValueError(f"{primitive}: {name} is {(h, w)}; expected values >= {low}")
    raise ValueError(f"{primitive}: {name} is {v!r}; expected an (h, w) pair of ints")


def _nchw(primitive, name, shape):
    if len(shape) != 4:
        raise ValueError(f"{primitive}: {name} has shape {tuple(shape)}; expected 4-D (N, C, H, W)")
    return shape


def _window_out(primitive, window, x_name, hw, kernel, stride, padding):
    sh, sw = _pair(primitive, "stride", stride, 1)
    ph, pw = _pair(primitive, "padding", padding, 0)
    oh = (hw[0] + 2 * ph - kernel[0]) // sh + 1
    ow = (hw[1] + 2 * pw - kernel[1]) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"{primitive}: {window()} with padding {(ph, pw)} does not fit the "
                         f"{hw[0]}x{hw[1]} plane of {x_name}; expected a window that fits "
                         f"(an output of at least 1x1), got {oh}x{ow}")
    return oh, ow


def conv_out_shape(primitive, x_shape, w_shape, stride, padding, x_name="x", w_name="w"):
    """``(N, O, OH, OW)`` of a convolution of an ``x_shape`` input by a ``w_shape`` weight
    (``x_name``/``w_name``: how the primitive's arguments are called, for the message)."""
    n, c, h, w = _nchw(primitive, x_name, x_shape)
    o, c2, kh, kw = _nchw(primitive, w_name, w_shape)
    if c != c2:
        raise ValueError(f"{primitive}: {w_name} {tuple(w_shape)} takes {c2} input channels; "
                         f"expected {c}, the channels of {x_name} {tuple(x_shape)}")
    if kh < 1 or kw < 1:
        raise ValueError(f"{primitive}: {w_name} {tuple(w_shape)} has an empty kernel; "
                         f"expected kh, kw >= 1")
    oh, ow = _window_out(primitive, lambda: f"the {kh}x{kw} kernel of {w_name}", x_name, (h, w),
                         (kh, kw), stride, padding)
    return n, o, oh, ow


def pool_out_shape(primitive, x_shape, kernel, stride, padding, x_name="x"):
    """``(N, C, OH, OW)`` of pooling an ``x_shape`` input with a ``kernel`` window.

    Padding is at most half the window on each axis (as PyTorch): beyond that a window can lie
    wholly in the padding, where max pooling has no element to choose."""
    n, c, h, w = _nchw(primitive, x_name, x_shape)
    kernel = _pair(primitive, "kernel", kernel, 1)
    pad = _pair(primitive, "padding", padding, 0)
    if pad[0] > kernel[0] // 2 or pad[1] > kernel[1] // 2:
        raise ValueError(f"{primitive}: padding must be at most half the kernel, got padding {pad} "
                         f"for kernel {kernel} (a window would lie wholly in the padding)")
    oh, ow = _window_out(primitive, lambda: f"kernel {kernel}", x_name, (h, w), kernel, stride,
                         padding)
    return n, c, oh, ow
