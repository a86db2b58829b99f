"""Augmentation on NumPy: ``crop_flip`` and ``channel_normalize`` (semantics in the seam's
docstring; arguments checked at the seam, converted by ``gpucnn.backends.augment``).

Vectorised: ``crop_flip`` is one gather over a strided window view of the zero-padded
batch plus one mirrored copy of the flipped images -- no Python loop over images.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..augment import prepare_channel_normalize, prepare_crop_flip


def crop_flip(x, top, left, flip, size, padding):
    """NumPy ``crop_flip``: a window view of the zero-padded batch, one gather, one flip."""
    n, c, h, w, oh, ow, ph, pw, top, left, flip = prepare_crop_flip(x, top, left, flip, size, padding)
    x = np.ascontiguousarray(x)
    if ph or pw:
        xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
        xp[:, :, ph:ph + h, pw:pw + w] = x
    else:
        xp = x
    windows = sliding_window_view(xp, (oh, ow), axis=(2, 3))   # (N, C, H', W', OH, OW), a view
    y = windows[np.arange(n), :, top, left]                      # (N, C, OH, OW), one copy
    f = flip.astype(bool)
    if f.any():
        y[f] = y[f][..., ::-1]
    return np.ascontiguousarray(y)


def channel_normalize(x, mean, std):
    """NumPy ``channel_normalize``: ``(x - mean[c]) / std[c]`` in x's dtype."""
    c, mean, std = prepare_channel_normalize(x, mean, std)
    shape = (1, c) + (1,) * (x.ndim - 2)
    return (x - mean.reshape(shape)) / std.reshape(shape)
