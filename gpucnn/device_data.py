"""Data resident on the device: the whole training set copied once, batches gathered there.

:class:`DeviceBatchIterator` is a :class:`~gpucnn.data.BatchIterator` (same seeded
generator, same ``get_state``/``set_state``, same ``len``) whose batches are gathered on the
backend by the ``gather_rows`` primitive from a copy of the data set made once.  Each
epoch draws its permutation from the same generator as the host iterator, so the order of
the samples -- and with it every result -- equals the host path's.  Per epoch the
permutation goes to the device once (one small copy); per step nothing crosses the bus.

:func:`fits_on_device` says whether a data set fits (a fraction of the free device memory).
"""
from __future__ import annotations

import numpy as np

from .data import BatchIterator

#: the share of the free device memory a resident data set may take
DEVICE_DATA_FRACTION = 0.5


def device_memory(backend):
    """Whether ``backend`` keeps its arrays in device memory (CuPy), not in host memory (the
    NumPy backend, the emulator of the CUDA kernels)."""
    return hasattr(getattr(backend, "xp", np), "cuda")


def fits_on_device(backend, nbytes, fraction=DEVICE_DATA_FRACTION):
    """Whether ``nbytes`` fit in ``fraction`` of the free memory of ``backend``'s device.

    Host-memory backends (the NumPy backend, the emulator) always fit: the data is there."""
    if not device_memory(backend):
        return True
    xp = backend.xp
    try:
        free, _total = xp.cuda.runtime.memGetInfo()
    except Exception:
        return False
    return nbytes <= fraction * free


class DeviceBatchIterator(BatchIterator):
    """A :class:`BatchIterator` whose data lives on ``backend`` and whose batches are gathered there.

    ``dtype``: the float type the images are stored in on the device (the model's).
    Batches are ``(x, y)``: ``x`` a backend array (B, C, H, W) gathered by
    ``backend.gather_rows``, ``y`` the labels as a backend int64 array.
    """

    def __init__(self, images, labels, batch_size=64, *, backend, dtype=np.float32, shuffle=True,
                 seed=0, drop_last=False):
        super().__init__(images, labels, batch_size, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.backend = backend
        self.device_images = backend.asarray(np.ascontiguousarray(images), dtype=dtype)
        self.device_labels = backend.asarray(np.ascontiguousarray(labels), dtype=np.int64)

    def epoch(self, skip=0):
        n = len(self.labels)
        B = self.backend
        order = self.rng.permutation(n) if self.shuffle else np.arange(n)
        order_dev = B.asarray(order.astype(np.int64))             # one copy per epoch
        labels_dev = self.device_labels[order_dev] if self.shuffle else self.device_labels
        for b in range(skip, len(self)):
            lo, hi = b * self.batch_size, min(n, (b + 1) * self.batch_size)
            yield B.gather_rows(self.device_images, order_dev[lo:hi]), labels_dev[lo:hi]
