"""memory.scratch: a role's buffer is reused as left for the same key, handed out all zeros
for a new key (another geometry of the same role), and never shared between threads."""
import threading

import numpy as np

from gpucnn.backends.numpy import memory


def test_same_key_keeps_contents_new_geometry_is_zeroed():
    a = memory.scratch(("t-role", 1), (4, 5), np.float32)
    assert a.shape == (4, 5) and a.dtype == np.float32 and not a.any()
    a[...] = 7
    again = memory.scratch(("t-role", 1), (4, 5), np.float32)
    assert np.shares_memory(a, again) and np.all(again == 7)
    other = memory.scratch(("t-role", 2), (3, 2), np.float64)     # smaller: same memory, zeroed
    assert other.shape == (3, 2) and other.dtype == np.float64 and not other.any()
    other[...] = 1
    back = memory.scratch(("t-role", 1), (4, 5), np.float32)      # the first geometry again
    assert not back.any()
    big = memory.scratch(("t-role", 3), (100, 100), np.float32)   # larger: a new buffer
    assert big.shape == (100, 100) and not big.any()


def test_roles_are_separate_and_so_are_threads():
    a = memory.scratch(("t-a", 1), (8,), np.float32)
    b = memory.scratch(("t-b", 1), (8,), np.float32)
    a[...] = 1
    assert not np.shares_memory(a, b) and not b.any()
    seen = {}

    def other_thread():
        seen["buf"] = memory.scratch(("t-a", 1), (8,), np.float32)
    t = threading.Thread(target=other_thread)
    t.start()
    t.join()
    assert not np.shares_memory(seen["buf"], a) and not seen["buf"].any()
    assert np.all(memory.scratch(("t-a", 1), (8,), np.float32) == 1)
