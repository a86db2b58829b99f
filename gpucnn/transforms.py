"""Batch augmentation with torchvision's names: ``RandomCrop``, ``RandomHorizontalFlip``,
``Normalize``, ``Compose``.

Each transform takes a whole batch ``x`` (N, C, H, W) -- a NumPy or a CuPy array -- and
returns a new batch on the same backend: the work is one backend primitive
(``crop_flip``, ``channel_normalize``; a CUDA kernel on the GPU), never a Python loop
over images.  Random choices are made per image (torchvision applied to a batch tensor
makes one choice for the whole batch) and drawn on the host from a
``numpy.random.Generator``: ``rng=None`` means gpucnn's global generator
(``gpucnn.manual_seed`` reseeds it, ``gpucnn.get_rng_state`` saves it), an int seeds a
private one, or pass your own Generator and save its ``bit_generator.state`` to resume
bitwise exactly.  Only N small integers per transform travel to the device::

    from gpucnn.transforms import Compose, RandomCrop, RandomHorizontalFlip
    augment = Compose([RandomCrop(32, padding=4), RandomHorizontalFlip()])
    for x, y in batches:
        x = augment(backend.asarray(x))        # on the backend that holds the batch

``Compose`` runs a ``RandomCrop`` directly followed by a ``RandomHorizontalFlip`` as one
``crop_flip`` call; the draws (crop offsets, then flips) and the result are the same as
running them one after the other.

Padding is with zeros of the batch it is given: on gpucnn's datasets, which are already
normalised per channel, that is the mean colour -- what He et al. (2016) did, padding
mean-subtracted images with zeros.  To pad black pixels as torchvision does, crop
images in [0, 1] and ``Normalize`` afterwards.
"""
from __future__ import annotations

import numbers

import numpy as np

from . import backends
from . import random as _random

__all__ = ["Compose", "RandomCrop", "RandomHorizontalFlip", "Normalize"]


def _size_pair(v, owner, name, low):
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        v = (v, v)
    if (not isinstance(v, (tuple, list)) or len(v) != 2
            or any(isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < low
                   for t in v)):
        raise ValueError(f"{owner}: {name} must be an int >= {low} or a pair of them, got {v!r}")
    return int(v[0]), int(v[1])


def _check_batch(x, owner):
    if getattr(x, "ndim", None) != 4:
        raise ValueError(f"{owner}: expected a batch (N, C, H, W), got "
                         f"{'shape ' + str(tuple(x.shape)) if hasattr(x, 'shape') else type(x).__name__}")


class _Random:
    def __init__(self, rng):
        if rng is not None:
            _random.resolve(rng)          # type check now, not at the first batch
        self._rng = _random.resolve(rng) if isinstance(rng, (int, np.integer)) else rng

    @property
    def rng(self):
        """The generator drawn from (the global one, looked up at each call, when None)."""
        return _random.resolve(self._rng)

    def get_rng_state(self):
        """The private generator's state (JSON-able), or None when drawing from the global one."""
        return None if self._rng is None else self._rng.bit_generator.state

    def set_rng_state(self, state):
        if self._rng is None:
            if state is not None:
                raise ValueError(f"{type(self).__name__}.set_rng_state: this transform draws from "
                                 "gpucnn's global generator, got a private generator's state")
            return
        try:
            self._rng.bit_generator.state = state
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"{type(self).__name__}.set_rng_state: not a generator state "
                             f"({exc})") from None


class RandomCrop(_Random):
    """Crop each image of the batch at a random place after zero-padding it by ``padding``.

    ``size``: (OH, OW) or an int; ``padding``: (PH, PW) or an int (both sides).  The
    corner is uniform over the ``(H + 2 PH - OH + 1) x (W + 2 PW - OW + 1)`` positions.
    """

    def __init__(self, size, padding=0, *, rng=None):
        self.size = _size_pair(size, "RandomCrop", "size", 1)
        self.padding = _size_pair(padding, "RandomCrop", "padding", 0)
        super().__init__(rng)

    def draw(self, x):
        """(top, left) int64 arrays for the batch ``x``."""
        n, _, h, w = (int(s) for s in x.shape)
        (oh, ow), (ph, pw) = self.size, self.padding
        if oh > h + 2 * ph or ow > w + 2 * pw:
            raise ValueError(f"RandomCrop: crop size {self.size} is larger than the "
                             f"{h}x{w} images padded by {self.padding}")
        rng = self.rng
        top = rng.integers(0, h + 2 * ph - oh + 1, size=n, dtype=np.int64)
        left = rng.integers(0, w + 2 * pw - ow + 1, size=n, dtype=np.int64)
        return top, left

    def __call__(self, x):
        _check_batch(x, "RandomCrop")
        top, left = self.draw(x)
        return backends.backend_of(x).crop_flip(x, top, left, np.zeros(len(top), np.uint8),
                                                self.size, self.padding)

    def __repr__(self):
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip(_Random):
    """Mirror each image left-right with probability ``p``."""

    def __init__(self, p=0.5, *, rng=None):
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip: p must be a probability in [0, 1], got {p!r}")
        self.p = float(p)
        super().__init__(rng)

    def draw(self, x):
        """uint8 flags (1: flip) for the batch ``x``."""
        return (self.rng.random(int(x.shape[0])) < self.p).astype(np.uint8)

    def __call__(self, x):
        _check_batch(x, "RandomHorizontalFlip")
        flip = self.draw(x)
        n, _, h, w = (int(s) for s in x.shape)
        zeros = np.zeros(n, np.int64)
        return backends.backend_of(x).crop_flip(x, zeros, zeros, flip, (h, w), (0, 0))

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


class Normalize:
    """``(x - mean[c]) / std[c]`` per channel (``channel_normalize``)."""

    def __init__(self, mean, std):
        self.mean = tuple(float(m) for m in np.atleast_1d(np.asarray(mean, dtype=np.float64)))
        self.std = tuple(float(s) for s in np.atleast_1d(np.asarray(std, dtype=np.float64)))
        if len(self.mean) != len(self.std):
            raise ValueError(f"Normalize: mean has {len(self.mean)} values but std has "
                             f"{len(self.std)}")
        if not all(np.isfinite(self.mean + self.std)) or any(s == 0 for s in self.std):
            raise ValueError(f"Normalize: mean and std must be finite and std non-zero, got "
                             f"mean={self.mean}, std={self.std}")

    def __call__(self, x):
        if getattr(x, "ndim", 0) < 2:
            raise ValueError(f"Normalize: expected (N, C, ...), got {getattr(x, 'shape', x)!r}")
        c = int(x.shape[1])
        mean, std = self.mean, self.std
        if len(mean) == 1 and c > 1:
            mean, std = mean * c, std * c
        if len(mean) != c:
            raise ValueError(f"Normalize: the batch has {c} channels but mean/std have "
                             f"{len(self.mean)}")
        return backends.backend_of(x).channel_normalize(x, mean, std)

    def __repr__(self):
        return f"Normalize(mean={self.mean}, std={self.std})"


class Compose:
    """Apply ``transforms`` in order (a crop directly followed by a flip is one kernel)."""

    def __init__(self, transforms):
        self.transforms = list(transforms)
        for i, t in enumerate(self.transforms):
            if not callable(t):
                raise TypeError(f"Compose: transform {i} ({t!r}) is not callable")

    def get_rng_state(self):
        """One entry per transform: its private generator's state, or None (a transform
        without randomness, or one drawing from the global generator)."""
        return [t.get_rng_state() if hasattr(t, "get_rng_state") else None for t in self.transforms]

    def set_rng_state(self, states):
        if not isinstance(states, (list, tuple)) or len(states) != len(self.transforms):
            raise ValueError(f"Compose.set_rng_state: expected {len(self.transforms)} states, "
                             f"got {states!r:.80}")
        for t, st in zip(self.transforms, states):
            if hasattr(t, "set_rng_state"):
                t.set_rng_state(st)
            elif st is not None:
                raise ValueError(f"Compose.set_rng_state: {t!r} has no generator")

    def __call__(self, x):
        ts, i = self.transforms, 0
        while i < len(ts):
            t = ts[i]
            if (type(t) is RandomCrop and i + 1 < len(ts)
                    and type(ts[i + 1]) is RandomHorizontalFlip):
                _check_batch(x, "RandomCrop")
                top, left = t.draw(x)
                flip = ts[i + 1].draw(x)
                x = backends.backend_of(x).crop_flip(x, top, left, flip, t.size, t.padding)
                i += 2
            else:
                x = t(x)
                i += 1
        return x

    def __repr__(self):
        return "Compose([" + ", ".join(repr(t) for t in self.transforms) + "])"
