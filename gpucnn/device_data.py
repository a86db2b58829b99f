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
                 seed=0, drop_last=False, normalize=None):
        super().__init__(images, labels, batch_size, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.backend = backend
        self.dtype = np.dtype(dtype)
        # uint8 images with normalize=(mean, std, pixel_max) stay uint8 on the device (a
        # quarter of the memory) and are converted per batch by gather_normalize, with the
        # roundings of data.normalize
        self.normalize = None if normalize is None else (tuple(normalize[0]), tuple(normalize[1]),
                                                         float(normalize[2]))
        if self.normalize is not None and np.asarray(images).dtype != np.uint8:
            raise ValueError("DeviceBatchIterator: normalize=(mean, std, pixel_max) needs uint8 images")
        self.device_images = backend.asarray(np.ascontiguousarray(images),
                                             dtype=np.uint8 if self.normalize else dtype)
        self.device_labels = backend.asarray(np.ascontiguousarray(labels), dtype=np.int64)

    def epoch(self, skip=0):
        n = len(self.labels)
        B = self.backend
        order = self.rng.permutation(n) if self.shuffle else np.arange(n)
        order_dev = B.asarray(order.astype(np.int64))             # one copy per epoch
        labels_dev = self.device_labels[order_dev] if self.shuffle else self.device_labels
        for b in range(skip, len(self)):
            lo, hi = b * self.batch_size, min(n, (b + 1) * self.batch_size)
            idx = order_dev[lo:hi]
            if self.normalize is None:
                x = B.gather_rows(self.device_images, idx)
            else:
                x = B.gather_normalize(self.device_images, idx, *self.normalize, self.dtype)
            yield x, labels_dev[lo:hi]


class PrefetchBatchIterator(BatchIterator):
    """A :class:`BatchIterator` for host data and a GPU: the copy of batch k+1 overlaps the
    compute of batch k.

    Batches are gathered on the host (same order as the host iterator), written into one of
    two pinned host buffers and copied to one of two device buffers on a second CUDA stream;
    the compute stream waits for that copy (an event) only when it uses the batch.  A slot
    is refilled two batches later, after the compute stream has passed an event recorded
    once the step that used it was enqueued, and its pinned buffer only after its previous
    copy finished.  The yielded arrays are views of these two device buffers: valid until
    two batches later (the trainer is done with a batch by then).  Needs CuPy.
    """

    def __init__(self, images, labels, batch_size=64, *, backend, dtype=np.float32, shuffle=True,
                 seed=0, drop_last=False):
        super().__init__(images, labels, batch_size, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.backend = backend
        self.dtype = np.dtype(dtype)
        xp = self.xp = backend.xp
        shape = (self.batch_size,) + tuple(np.shape(images)[1:])
        self._x = [xp.empty(shape, dtype=self.dtype) for _ in range(2)]
        self._y = [xp.empty((self.batch_size,), dtype=np.int64) for _ in range(2)]
        self._hx = [_pinned(xp, shape, self.dtype) for _ in range(2)]
        self._hy = [_pinned(xp, (self.batch_size,), np.int64) for _ in range(2)]
        self._copy_stream = xp.cuda.Stream(non_blocking=True)
        self._copied = [None, None]   # event: the slot's last host-to-device copy is done
        self._used = [None, None]     # event: the compute that read the slot is done

    def _stage(self, slot, x, y):
        n = len(y)
        if self._copied[slot] is not None:
            self._copied[slot].synchronize()            # the pinned buffer is free again
        np.copyto(self._hx[slot][:n], x, casting="same_kind")
        np.copyto(self._hy[slot][:n], y, casting="same_kind")
        cs = self._copy_stream
        if self._used[slot] is not None:
            cs.wait_event(self._used[slot])             # the device buffer is free again
        self._x[slot][:n].set(self._hx[slot][:n], stream=cs)
        self._y[slot][:n].set(self._hy[slot][:n], stream=cs)
        self._copied[slot] = cs.record()
        return n

    def epoch(self, skip=0):
        batches = super().epoch(skip)
        compute = self.xp.cuda.get_current_stream()
        first = next(batches, None)
        if first is None:
            return
        sizes = [self._stage(0, *first), 0]
        k = 0
        while True:
            slot = k % 2
            nxt = next(batches, None)
            if nxt is not None:
                sizes[1 - slot] = self._stage(1 - slot, *nxt)
            compute.wait_event(self._copied[slot])
            n = sizes[slot]
            yield self._x[slot][:n], self._y[slot][:n]
            self._used[slot] = compute.record()
            if nxt is None:
                return
            k += 1


def _pinned(xp, shape, dtype):
    """A page-locked host array (what an asynchronous host-to-device copy needs)."""
    count = int(np.prod(shape, dtype=np.int64))
    mem = xp.cuda.alloc_pinned_memory(max(1, count * np.dtype(dtype).itemsize))
    return np.frombuffer(mem, dtype=dtype, count=count).reshape(shape)
