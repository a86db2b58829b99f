"""Memory: per-thread scratch buffers and a pool that recycles large outputs.

Fresh large arrays are mapped from the OS and every page faults on first touch
(about 0.5 ms per MB here, a quarter of a small LeNet step), so work buffers are
kept per thread and outputs are recycled once nothing references them.
"""
from __future__ import annotations

import math
import sys
import threading

import numpy as np

SCRATCH_ENTRIES = 48
_local = threading.local()


def scratch(key, shape, dtype):
    """A work buffer of this thread, all zeros when handed out for a new key and reused,
    as its last user left it, by later calls with the same key.

    A user of a buffer may rely on elements it never writes staying zero, so ``key``
    names the user and every parameter that decides which elements it writes:
    ``(role, geometry...)`` or just a role.  Each role keeps one buffer per thread:
    a key of the same role with another geometry (the next stage of a network) takes
    the role's memory over, zeroed again (a fraction of a millisecond, a few times a
    step), so the scratch of a thread is the largest buffer of each role, not the sum
    over every layer's geometry.
    """
    bufs = getattr(_local, "bufs", None)
    if bufs is None:
        bufs = _local.bufs = {}
    dtype = np.dtype(dtype)
    full = (key, tuple(shape), dtype.str)
    role = key[0] if isinstance(key, tuple) else key
    held = bufs.pop(role, None)                 # (full key, base uint8 buffer, view)
    if held is not None and held[0] == full:
        bufs[role] = held                       # most recently used last
        return held[2]
    nbytes = math.prod(shape) * dtype.itemsize
    if held is not None and nbytes <= held[1].nbytes:
        base = held[1]
        base[:nbytes] = 0
    else:
        held = None                             # the old buffer is freed first
        base = np.zeros(max(nbytes, 1), dtype=np.uint8)
    view = base[:nbytes].view(dtype).reshape(shape)
    if len(bufs) >= SCRATCH_ENTRIES:
        bufs.pop(next(iter(bufs)))              # the least recently used role
    bufs[role] = (full, base, view)
    return view


class OutputPool:
    """Recycles the memory of large primitive outputs once nothing references them.

    Each output of at least ``min_bytes`` is handed out as a view of a pooled base
    buffer; a base is reused only when its reference count shows that no view of
    it (nor anything else) is alive, so a live result is never overwritten.  At
    most ``max_bytes`` are pooled; free buffers are dropped oldest first.
    """

    def __init__(self, min_bytes=1 << 18, max_bytes=1 << 30):
        self.min_bytes, self.max_bytes = min_bytes, max_bytes
        self._free_refs = None
        self._bufs = []                    # uint8 base buffers, oldest first
        self._nbytes = 0
        self._lock = threading.Lock()

    @staticmethod
    def _refs_when_free():
        """sys.getrefcount of a base that only the pool holds, probed the way empty() looks."""
        bufs = [np.empty(1, np.uint8)]
        i = 0
        b = bufs[i]
        return sys.getrefcount(b)

    def empty(self, shape, dtype):
        dtype = np.dtype(dtype)
        # math.prod, not np.prod: this runs for every output and np.prod costs 5 us a call
        count = shape if isinstance(shape, (int, np.integer)) else math.prod(shape)
        nbytes = int(count) * dtype.itemsize
        if nbytes < self.min_bytes or self.max_bytes <= 0 or not hasattr(sys, "getrefcount"):
            return np.empty(shape, dtype=dtype)
        with self._lock:
            if self._free_refs is None:
                self._free_refs = self._refs_when_free()
            bufs = self._bufs
            for i in range(len(bufs)):
                b = bufs[i]
                if b.nbytes == nbytes and sys.getrefcount(b) == self._free_refs:
                    out = b.view(dtype).reshape(shape)         # the view now holds b
                    bufs.append(bufs.pop(i))                   # most recently used last
                    return out
            b = np.empty(nbytes, dtype=np.uint8)
            out = b.view(dtype).reshape(shape)
            bufs.append(b)
            self._nbytes += nbytes
            del b
            if self._nbytes > self.max_bytes:
                self._drop_free()
            return out

    def _drop_free(self):
        """Drop free buffers, oldest first, until at most max_bytes are pooled (lock held)."""
        keep = []
        bufs = self._bufs
        for i in range(len(bufs)):
            b = bufs[i]
            if self._nbytes > self.max_bytes and sys.getrefcount(b) == self._free_refs:
                self._nbytes -= b.nbytes
            else:
                keep.append(b)
            del b
        self._bufs = keep


POOL = OutputPool()


def empty(shape, dtype):
    """np.empty for primitive outputs, from the recycling pool when large."""
    return POOL.empty(shape, dtype)


def flat_pair(a):
    """(a flattened, an empty flat array of a's dtype): the operands of an elementwise op."""
    flat = np.ascontiguousarray(a).reshape(-1)
    return flat, empty(flat.size, a.dtype)
