"""Parallelism: a primitive's work split over the batch on a pool of threads.

NumPy releases the GIL inside its loops and BLAS calls, so threads over disjoint
slices of the batch run in parallel.  While they do, BLAS is held to one thread
(its own threads would only contend with ours) and restored after.
"""
from __future__ import annotations

import collections
import contextvars
import os
import threading
from concurrent.futures import ThreadPoolExecutor

# below this many elements (or multiply-adds, for the GEMM loops) a primitive is not split
PARALLEL_MIN_ELEMENTS = 1 << 18
PARALLEL_MIN_FLOPS = 1 << 22
# A convolution's work is mostly copies and adds around its GEMMs, many short NumPy
# calls whose GIL handoffs between threads cost more than the second core gains below
# about this many multiply-adds (measurements in benchmarks/RESULTS.md).
PARALLEL_MIN_FLOPS_CONV = 1 << 24

_THREAD_PREFIX = "gpucnn-cpu"


def default_threads():
    """$GPUCNN_NUM_THREADS, else the CPUs this process may run on."""
    env = os.environ.get("GPUCNN_NUM_THREADS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise ValueError(f"GPUCNN_NUM_THREADS must be a positive integer, got {env!r}") from None
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class BlasThreads:
    """The thread count of every BLAS library loaded in this process, through threadpoolctl.

    The controller is built once, on first use (it scans the loaded libraries), and
    the limit is toggled through its per-library controllers: a few microseconds a
    primitive, where a ``threadpool_limits(...)`` context costs about half a
    millisecond (figures in benchmarks/RESULTS.md).  threadpoolctl knows OpenBLAS,
    MKL, BLIS and the rest, on every platform.  (For OpenBLAS's process-wide pool,
    threadpoolctl lets only the first thread that sets a limit, while it lives,
    change it; from another thread the limit is left as it is, which changes the
    speed, never the results.)
    """

    def __init__(self):
        self._libs = None
        self._lock = threading.Lock()

    def libs(self):
        if self._libs is None:
            with self._lock:
                if self._libs is None:
                    from threadpoolctl import ThreadpoolController
                    self._libs = ThreadpoolController().select(user_api="blas").lib_controllers
        return self._libs

    def hold_one(self):
        """Limit BLAS to one thread; returns what ``restore`` needs, None when unchanged."""
        saved = None
        for lib in self.libs():
            n = lib.get_num_threads()
            if n is not None and n != 1:
                lib.set_num_threads(1)
                saved = saved or []
                saved.append((lib, n))
        return saved

    @staticmethod
    def restore(saved):
        for lib, n in saved or ():
            lib.set_num_threads(n)


class Workers:
    """Runs fn(start, end) over contiguous ranges of the batch on ``threads`` threads;
    the calling thread takes the first range."""

    def __init__(self, threads=None):
        self.threads = default_threads() if threads is None else max(1, int(threads))
        self._pool = None
        self._lock = threading.Lock()
        self.blas = BlasThreads()

    def _executor(self):
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.threads - 1,
                                                thread_name_prefix=_THREAD_PREFIX)
            return self._pool

    def set_threads(self, threads):
        with self._lock:
            self.threads = threads
            old, self._pool = self._pool, None
        if old is not None:
            old.shutdown(wait=False)

    def _after_fork(self):
        self._pool = None
        self._lock = threading.Lock()

    def parts(self, n, work, min_work):
        """Contiguous (start, end) ranges of range(n) for up to ``threads`` workers, so
        that each gets at least ``min_work`` (in the caller's units, ``work`` per item)."""
        k = min(self.threads, n, int(n * work // max(1, min_work)))
        if k <= 1 or self._serial_here():
            return [(0, n)]
        bounds = [n * i // k for i in range(k + 1)]
        return [(bounds[i], bounds[i + 1]) for i in range(k)]

    def worth_splitting(self, n, work, min_work):
        """Whether ``parts`` would give this work more than one range (share's ``split``)."""
        return len(self.parts(n, work, min_work)) > 1

    def run(self, fn, ranges, blas=False):
        """fn(start, end) for every range, in parallel; returns the results in order.

        ``blas``: fn calls BLAS.  BLAS is then held to one thread even when the work
        is not split: OpenBLAS's own threads, once woken, spin for a while after each
        call and would take a core from ours.  When no BLAS library can be
        controlled, such work stays serial.
        """
        if blas and not self.blas.libs():
            return [fn(s, e) for s, e in ranges]
        saved = self.blas.hold_one() if blas else None
        try:
            if len(ranges) == 1:
                return [fn(*ranges[0])]
            # each worker runs in a copy of the caller's context: NumPy's errstate (a
            # context variable) travels with it, so a caller's np.errstate(...) or
            # quiet_overflow() holds on every thread (no RuntimeWarning from a worker)
            pool = self._executor()
            futures = [pool.submit(contextvars.copy_context().run, fn, s, e)
                       for s, e in ranges[1:]]
            first = fn(*ranges[0])
            return [first] + [f.result() for f in futures]
        finally:
            if saved is not None:
                self.blas.restore(saved)


    def _serial_here(self):
        """Whether work asked for here runs on the calling thread alone: one thread, or
        already inside a worker or a shared pass (no nested splits)."""
        return (self.threads < 2 or _serial.on
                or threading.current_thread().name.startswith(_THREAD_PREFIX))

    def share(self, passes, split=True, blas=True):
        """Runs passes cut into units, every unit once, on up to ``threads`` threads.

        ``passes``: (count, fn) pairs; fn(units) does the units (indices in
        range(count)) that the iterator ``units`` hands it, and is called at most once
        per thread, so it sets its work space up once and then loops.  Thread k starts
        on pass k (mod the number of passes), taking units from the front of that pass
        (every thread after the first on one pass: from the back), and when its pass
        runs out it takes the units left in the others, from the back.  So the threads
        finish together however long each unit turns out to take (the load of the
        other core, the GIL), at the price of one deque pop per unit.  What a unit
        computes must not depend on which thread runs it: results written by index
        (or kept per index and combined in index order) are then the same, bit for bit,
        on any number of threads.

        ``split=False``, or one thread, or a call from inside a worker: the passes run
        one after the other on the calling thread, each unit in order.  ``blas``: the
        passes call BLAS, which is then held to one thread either way (see ``run``).
        """
        passes = [(int(count), fn) for count, fn in passes if count > 0]
        libs = self.blas.libs() if blas else True
        threads = min(self.threads, sum(count for count, _ in passes))
        if not split or threads < 2 or self._serial_here() or not libs:
            saved = self.blas.hold_one() if blas and libs else None
            try:
                for count, fn in passes:
                    fn(iter(range(count)))
            finally:
                self.blas.restore(saved)
            return
        queues = [collections.deque(range(count)) for count, _ in passes]

        def take(q, front):
            pop = q.popleft if front else q.pop
            while True:
                try:
                    yield pop()
                except IndexError:
                    return

        def work(k):
            own = k % len(passes)
            _serial.on = True
            try:
                passes[own][1](take(queues[own], k < len(passes)))
                for j in range(len(passes)):
                    if j != own and queues[j]:
                        passes[j][1](take(queues[j], False))
            finally:
                _serial.on = False
        saved = self.blas.hold_one() if blas else None
        futures = []
        try:
            pool = self._executor()
            futures = [pool.submit(contextvars.copy_context().run, work, k)
                       for k in range(1, threads)]
            work(0)
            for f in futures:
                f.result()
        finally:
            for f in futures:
                f.exception()           # every worker is done before BLAS is restored
            self.blas.restore(saved)


class _Serial(threading.local):
    on = False


_serial = _Serial()
WORKERS = Workers()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=WORKERS._after_fork)


def elementwise(n_items, item_size, fn):
    """fn(start, end) over ranges of n_items, in parallel when the work is large enough."""
    return WORKERS.run(fn, WORKERS.parts(n_items, item_size, PARALLEL_MIN_ELEMENTS))


def split_sum(parts):
    """The sum of per-range partial results, added into the first."""
    total = parts[0]
    for more in parts[1:]:
        total += more
    return total
