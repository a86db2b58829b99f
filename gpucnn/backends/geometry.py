"""Output sizes of windowed operations, written once for both backends and `gpucnn check`.

Convolution and pooling share one rule per spatial axis:
``out = (size + 2 * padding - kernel) // stride + 1``.
"""
from __future__ import annotations


def out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Positions a window of ``kernel`` takes along an axis of ``size`` (padded both sides)."""
    return (int(size) + 2 * int(padding) - int(kernel)) // int(stride) + 1


def out_hw(in_hw, kernel, stride, padding) -> tuple[int, int]:
    """``(OH, OW)`` for an input plane ``(H, W)`` and ``(h, w)`` kernel, stride and padding."""
    return (out_size(in_hw[0], kernel[0], stride[0], padding[0]),
            out_size(in_hw[1], kernel[1], stride[1], padding[1]))
