"""Augmentation primitives: their argument checks and the conversions both backends share
(the NumPy versions are in ``numpy/augment.py``, the kernels in ``kernels/augment.cu``).

``crop_flip`` and ``channel_normalize`` (semantics in the seam's docstring,
``gpucnn/backends/__init__.py``).  ``check_*`` raise the one-line errors (run once, at the
seam, by ``checked.py``); ``prepare_*`` trust their arguments and return plain Python ints
and host arrays of the kernel's types (int64 offsets, uint8 flip flags, per-channel
constants in x's dtype), so that the CUDA backend passes exactly what
``kernels/augment.cu`` declares.
"""
from __future__ import annotations

import numpy as np

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _pair(v, what, name):
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        v = (v, v)
    if (not isinstance(v, (tuple, list)) or len(v) != 2
            or any(isinstance(t, bool) or not isinstance(t, (int, np.integer)) for t in v)):
        raise ValueError(f"{what}: {name} must be an int or a pair (h, w) of ints, got {v!r}")
    return int(v[0]), int(v[1])


def _host_vector(a, n, what, name):
    """``a`` as a host array of n values (a CuPy array is copied back: n is small)."""
    if hasattr(a, "get") and not isinstance(a, np.ndarray):
        a = a.get()
    a = np.asarray(a)
    if a.shape != (n,):
        raise ValueError(f"{what}: {name} must have shape ({n},) (one value per image), "
                         f"got {a.shape}")
    return a


def check_crop_flip(x, top, left, flip, size, padding, what="crop_flip"):
    """Validate (TypeError / ValueError naming the argument); returns what
    :func:`prepare_crop_flip` returns."""
    if np.dtype(x.dtype) not in _FLOATS:
        raise TypeError(f"{what}: expected a float32 or float64 array, got {np.dtype(x.dtype)}")
    if x.ndim != 4:
        raise ValueError(f"{what}: x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    n, c, h, w = (int(s) for s in x.shape)
    oh, ow = _pair(size, what, "size")
    ph, pw = _pair(padding, what, "padding")
    if ph < 0 or pw < 0:
        raise ValueError(f"{what}: padding must be >= 0, got {(ph, pw)}")
    if not (1 <= oh <= h + 2 * ph and 1 <= ow <= w + 2 * pw):
        raise ValueError(f"{what}: crop size {(oh, ow)} does not fit the {h}x{w} images padded "
                         f"by {(ph, pw)} (at most {(h + 2 * ph, w + 2 * pw)})")
    top = _host_vector(top, n, what, "top")
    left = _host_vector(left, n, what, "left")
    flip = _host_vector(flip, n, what, "flip")
    for name, v, hi in (("top", top, h + 2 * ph - oh), ("left", left, w + 2 * pw - ow)):
        if v.dtype.kind not in "iu":
            raise TypeError(f"{what}: {name} must hold integers, got {v.dtype}")
        if n and (v.min() < 0 or v.max() > hi):
            bad = int(np.flatnonzero((v < 0) | (v > hi))[0])
            raise ValueError(f"{what}: {name}[{bad}] = {int(v[bad])} is outside [0, {hi}] "
                             f"(the crop must lie inside the padded image)")
    if flip.dtype.kind not in "biu":
        raise TypeError(f"{what}: flip must hold booleans or 0/1 integers, got {flip.dtype}")
    return (n, c, h, w, oh, ow, ph, pw, top.astype(np.int64), left.astype(np.int64),
            (flip != 0).astype(np.uint8))


def check_channel_normalize(x, mean, std, what="channel_normalize"):
    """Validate (TypeError / ValueError naming the argument); returns what
    :func:`prepare_channel_normalize` returns."""
    if np.dtype(x.dtype) not in _FLOATS:
        raise TypeError(f"{what}: expected a float32 or float64 array, got {np.dtype(x.dtype)}")
    if x.ndim < 2:
        raise ValueError(f"{what}: x must be (N, C, ...), got shape {tuple(x.shape)}")
    c = int(x.shape[1])
    out = []
    for name, v in (("mean", mean), ("std", std)):
        if hasattr(v, "get") and not isinstance(v, np.ndarray):
            v = v.get()
        v = np.asarray(v, dtype=np.float64)
        if v.shape != (c,):
            raise ValueError(f"{what}: {name} must have one value per channel ({c}), "
                             f"got shape {v.shape}")
        if not np.isfinite(v).all():
            raise ValueError(f"{what}: {name} must be finite, got {v.tolist()}")
        out.append(v.astype(x.dtype))
    if (out[1] == 0).any():
        raise ValueError(f"{what}: std must be non-zero, got {out[1].tolist()}")
    return c, out[0], out[1]


def _host(a):
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def _pair_unchecked(v):
    return (int(v), int(v)) if isinstance(v, (int, np.integer)) else (int(v[0]), int(v[1]))


def prepare_crop_flip(x, top, left, flip, size, padding):
    """``(n, c, h, w, oh, ow, ph, pw, top int64, left int64, flip uint8)``, host arrays for the
    three per-image vectors (arguments already checked)."""
    n, c, h, w = (int(s) for s in x.shape)
    oh, ow = _pair_unchecked(size)
    ph, pw = _pair_unchecked(padding)
    return (n, c, h, w, oh, ow, ph, pw, _host(top).astype(np.int64, copy=False),
            _host(left).astype(np.int64, copy=False), (_host(flip) != 0).astype(np.uint8))


def prepare_channel_normalize(x, mean, std):
    """``(c, mean, std)``: the constants as host arrays of x's dtype (arguments already checked)."""
    return (int(x.shape[1]), np.asarray(_host(mean), dtype=np.float64).astype(x.dtype),
            np.asarray(_host(std), dtype=np.float64).astype(x.dtype))
