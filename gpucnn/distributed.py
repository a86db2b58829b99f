"""Data-parallel training across processes: MPI (mpi4py) starts and connects them, NCCL
moves the gradients between GPUs.  The shape is ChainerMN's.

One process per GPU (or per group of CPU cores), started by ``mpiexec``; every process
holds the whole model and computes its contiguous share of each global batch; after
backward the gradients are averaged across processes, and every process takes the same
optimizer step.  A training script barely changes::

    from gpucnn import distributed as dist

    comm = dist.create_communicator()        # rank, size, local_rank; picks the GPU by local rank
    model = build().to(device)
    comm.bcast_data(model)                   # rank 0's parameters and buffers everywhere
    opt = dist.create_multi_node_optimizer(SGD(model.parameters(), lr=0.1), comm)
    batches = dist.ShardedBatchIterator(x, y, batch_size=256, seed=0, comm=comm)
    for xb, yb in batches:                   # this rank's share of each global batch of 256
        opt.zero_grad()
        if len(yb):                          # empty when a last batch has fewer images than ranks
            loss = loss_fn(model(xb), yb)
            model.backward(loss_fn.backward())
        opt.step(weight=batches.weight)      # all-reduce the gradients, then the inner step
    comm.allreduce_persistent(model)         # BatchNorm running statistics: averaged

and is started with ``mpiexec -n 4 python train.py``.  :class:`DistributedTrainer` is the
:class:`~gpucnn.trainer.Trainer` doing all this (``Trainer`` arguments plus ``comm``), and
``mpiexec -n 4 gpucnn train ...`` uses it: the command sees the launcher's environment
variables (:func:`launched_size`) and trains across the processes, rank 0 alone writing the
run directory.

Design:

* **Transport.**  ``mpi4py`` over any MPI (the ``mpich`` wheel from PyPI works on a
  laptop).  When the model is on CUDA and every rank on a machine has a GPU of its own,
  gradients go through NCCL (``cupy.cuda.nccl``; rank 0 draws the unique id and MPI
  broadcasts it); otherwise (NumPy backend, or several ranks sharing one GPU) through
  ``MPI_Allreduce`` on host buffers.  All ranks agree on the choice collectively.
* **Buckets.**  Gradients are copied into a few flat buffers of at most
  ``bucket_bytes`` (25 MiB, PyTorch DDP's default) per dtype and device, each reduced with
  one call, and the parameters' ``.grad`` become views of the reduced buffers.
* **Exact data parallelism.**  Every rank draws the same permutation (same seed) and
  takes a contiguous share of each global batch (the first ``n % size`` ranks one
  sample more).  Each rank's loss is a mean over its share, so its gradient is weighted
  by ``n_rank / n_global`` before the sum: the result is the gradient of the global
  batch's mean loss, exactly what one process computes, up to the order of the float
  sums -- also for the short last batch, and for a rank whose share is empty.
* **Buffers.**  Parameters and buffers are broadcast from rank 0 at the start
  (:meth:`Communicator.bcast_data`).  BatchNorm's running statistics are kept per rank
  during an epoch and averaged across ranks at its end (ChainerMN's
  ``AllreducePersistent``, :meth:`Communicator.allreduce_persistent`); integer buffers
  (``num_batches_tracked``) are taken from rank 0.  Batch statistics inside a step are
  per rank (not synchronised BatchNorm), as in PyTorch DDP without ``SyncBatchNorm``: so
  with BatchNorm, N processes equal N simulated shares in one process rather than one
  process on the whole batch, and a checkpoint resumed on another number of processes
  continues with other shares' statistics.  Without BatchNorm the count does not matter.
* **Faults.**  What stops training on one rank must stop it on all at the same step, or
  the others wait forever in the next collective.  So the trainer decides divergence and
  Ctrl-C/SIGTERM together (a small all-reduce per step), setup errors are raised on every
  rank (:meth:`Communicator.on_root`), and anything else -- an exception on one rank
  only -- prints one line naming the rank and the cause and ends the job with ``MPI_Abort``
  (:func:`install_abort_on_error`; ``gpucnn train`` does the same).  A rank that is
  killed is noticed by ``mpiexec``, which ends the others and names the process.

Without ``mpi4py`` installed ``import gpucnn`` and one-process training work;
:func:`create_communicator` then says what to install.
"""
from __future__ import annotations

import math
import os
import signal
import socket
import sys
import time

import numpy as np

from . import backends
from .data import BatchIterator
from .errors import NonFiniteError, quiet_overflow
from .evaluation import to_model_device
from .trainer import Trainer, TrainingDiverged, TrainingInterrupted

__all__ = [
    "Communicator", "MultiNodeOptimizer", "ShardedBatchIterator", "DistributedError",
    "create_communicator", "create_multi_node_optimizer", "install_abort_on_error",
    "DistributedTrainer", "RankFailure", "launched_size", "launched_rank", "shard_bounds", "named_buffers", "evaluate",
    "format_rank_error", "INSTALL_HINT",
    "DEFAULT_BUCKET_BYTES",
]

#: What to install when more than one process is asked for and mpi4py is missing.
INSTALL_HINT = ("pip install 'gpucnn[mpi]' (mpi4py and the mpich wheel, which brings "
                "mpiexec), or install mpi4py built against your cluster's MPI")

#: Largest gradient bucket, in bytes (PyTorch DDP's default).
DEFAULT_BUCKET_BYTES = 25 * 2**20

#: Environment variables through which MPI launchers announce the number of processes:
#: Open MPI, MPICH / Intel MPI (hydra), MVAPICH.
SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")


class DistributedError(RuntimeError):
    """Multi-process training cannot start or the ranks disagree (message says which)."""


def launched_size(environ=None) -> int:
    """The number of processes an MPI launcher (``mpiexec``/``mpirun``/``srun --mpi``) started
    this one among, read from its environment variables without importing MPI; 1 otherwise."""
    env = os.environ if environ is None else environ
    for var in SIZE_VARIABLES:
        value = env.get(var, "").strip()
        if value.isdigit() and int(value) >= 1:
            return int(value)
    return 1


def launched_rank(environ=None) -> int:
    """This process's rank as the MPI launcher announced it (0 when not launched by one)."""
    env = os.environ if environ is None else environ
    for var in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "MV2_COMM_WORLD_RANK"):
        value = env.get(var, "").strip()
        if value.isdigit():
            return int(value)
    return 0


def _import_mpi(why="multi-process training"):
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise DistributedError(f"{why} needs mpi4py, which is not installed ({exc}); "
                               f"{INSTALL_HINT}") from None
    if not MPI.Is_initialized():    # imported without initialising (gpucnn info does that)
        import atexit
        MPI.Init_thread()
        atexit.register(lambda: MPI.Is_finalized() or MPI.Finalize())
    return MPI


def shard_bounds(n, rank, size):
    """``(start, end)`` of ``rank``'s contiguous share of ``n`` items split over ``size``
    ranks: the first ``n % size`` ranks get one item more (``numpy.array_split``'s rule)."""
    base, extra = divmod(int(n), int(size))
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def named_buffers(model):
    """``(name, array)`` for the model's buffers (BatchNorm's running statistics ...).

    The hook for module state that is not a parameter: a model with ``named_buffers()``
    (PyTorch's name) is asked; its entries may be arrays or holders with a ``.data`` array
    (gpucnn's ``Buffer``).  Models without buffers give ``[]``.
    """
    fn = getattr(model, "named_buffers", None)
    if fn is None:
        return []
    out = []
    for name, buf in fn():
        array = getattr(buf, "data", buf) if not isinstance(buf, np.ndarray) else buf
        if array is not None and hasattr(array, "dtype"):
            out.append((name, buf))
    return out


def _array(entry):
    return entry if isinstance(entry, np.ndarray) or not hasattr(entry, "data") else entry.data


def _assign(entry, host):
    """Write the numpy array ``host`` into a parameter's/buffer's array, on its device."""
    array = _array(entry)
    if isinstance(array, np.generic):   # a numpy scalar (a counter): replaced
        entry.data = array.dtype.type(host.reshape(-1)[0])
        return
    value = backends.backend_of(array).asarray(host, dtype=array.dtype) \
        if not isinstance(array, np.ndarray) else host.astype(array.dtype, copy=False)
    if getattr(getattr(array, "flags", None), "writeable", True) or not hasattr(entry, "data"):
        array[...] = value      # in place: views of it (an optimizer's) stay valid
    else:
        entry.data = value


# =========================================================================== communicator

class Communicator:
    """Rank, size and local rank of this process, and the collectives training needs.

    ``mpi_comm``: an ``mpi4py`` communicator (default ``MPI.COMM_WORLD``).  ``nccl``:
    ``"auto"`` (NCCL for CUDA gradients when every rank has its own GPU), ``True``
    (required: an error if it cannot be used) or ``False`` (MPI on host buffers).
    """

    def __init__(self, mpi_comm=None, *, nccl="auto"):
        MPI = _import_mpi()
        self.MPI = MPI
        self.mpi_comm = MPI.COMM_WORLD if mpi_comm is None else mpi_comm
        self.rank = self.mpi_comm.Get_rank()
        self.size = self.mpi_comm.Get_size()
        self.intra_comm = self.mpi_comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank = self.intra_comm.Get_rank()
        self.local_size = self.intra_comm.Get_size()
        self.node_count = self.mpi_comm.allreduce(1 if self.local_rank == 0 else 0)
        self.host = socket.gethostname()
        if nccl not in ("auto", True, False):
            raise ValueError(f"Communicator: nccl must be 'auto', True or False, got {nccl!r}")
        self._nccl_wanted = nccl
        self._nccl = None          # cupy.cuda.nccl.NcclCommunicator once decided
        self._nccl_decided = False
        self.transport = "mpi"     # "nccl" once the CUDA gradients go through NCCL
        self.device_id = None      # the CUDA device this rank uses, when it picked one
        #: time spent in gradient all-reduces (seconds, calls, bytes), for benchmarks
        self.stats = {"allreduce_s": 0.0, "allreduce_calls": 0, "allreduce_bytes": 0}

    def __repr__(self):
        return (f"Communicator(rank={self.rank}, size={self.size}, local_rank={self.local_rank}, "
                f"local_size={self.local_size}, nodes={self.node_count}, transport={self.transport})")

    @property
    def is_root(self):
        return self.rank == 0

    # ---------------------------------------------------------------- devices
    def use_device(self):
        """Make CUDA device ``local_rank % device_count`` current for this process (before the
        model moves to the GPU); returns its id, or None without a usable CUDA device."""
        try:
            import cupy
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception:
            return None
        if count < 1:
            return None
        self.device_id = self.local_rank % count
        cupy.cuda.Device(self.device_id).use()
        return self.device_id

    def set_cpu_threads(self):
        """Share the machine's cores among the ranks on it: unless ``GPUCNN_NUM_THREADS`` is
        set, the NumPy backend of this rank uses ``cores // local_size`` threads."""
        if os.environ.get("GPUCNN_NUM_THREADS", "").strip():
            return
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cores = os.cpu_count() or 1
        threads = max(1, cores // self.local_size)
        os.environ["GPUCNN_NUM_THREADS"] = str(threads)   # read when the backend starts
        cpu = backends.cpu_backend()
        if hasattr(type(cpu), "threads"):                 # and if it already has
            cpu.threads = threads

    # ------------------------------------------------------------ host collectives
    def barrier(self):
        self.mpi_comm.Barrier()

    def bcast_obj(self, obj, root=0):
        """A picklable object from ``root`` to every rank."""
        return self.mpi_comm.bcast(obj, root=root)

    def allgather_obj(self, obj):
        return self.mpi_comm.allgather(obj)

    def allreduce_obj(self, obj, op="sum"):
        return self.mpi_comm.allreduce(obj, op=self._op(op))

    def _op(self, op):
        ops = {"sum": self.MPI.SUM, "max": self.MPI.MAX, "min": self.MPI.MIN}
        if op not in ops:
            raise ValueError(f"unknown reduction {op!r}; expected one of {', '.join(ops)}")
        return ops[op]

    def allreduce_host(self, array, op="sum"):
        """Reduce a contiguous numpy array across ranks in place; returns it."""
        if not (isinstance(array, np.ndarray) and array.flags.c_contiguous):
            raise TypeError("allreduce_host: expected a C-contiguous numpy array")
        if self.size > 1:
            self.mpi_comm.Allreduce(self.MPI.IN_PLACE, array, op=self._op(op))
        return array

    def on_root(self, fn):
        """Run ``fn()`` on rank 0 alone and return its result on every rank (it must pickle).
        An exception there is raised on every rank, marked ``all_ranks = True``."""
        result = None
        if self.rank == 0:
            try:
                result = ("ok", fn())
            except Exception as exc:  # noqa: BLE001 - re-raised on every rank below
                result = ("error", _portable(exc, 0))
        status, value = self.bcast_obj(result)
        if status == "error":
            value.all_ranks = True
            raise value
        return value

    def root_first(self, fn):
        """Run ``fn()`` on rank 0, then (when it succeeded) on the other ranks: e.g. loading a
        data set that the first run may download or unpack.  Returns this rank's result."""
        if self.rank == 0:
            try:
                value = fn()
            except Exception as exc:
                self.bcast_obj(_portable(exc, 0))
                exc.all_ranks = True
                raise
            self.bcast_obj(None)
            return value
        failure = self.bcast_obj(None)
        if failure is not None:
            failure.all_ranks = True
            raise failure
        return fn()

    def abort(self, code=1):
        """End every rank of the job at once (``MPI_Abort``)."""
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            self.mpi_comm.Abort(code)

    # ---------------------------------------------------------------- model state
    def _check_same_layout(self, entries, what):
        layout = [(name, tuple(a.shape), str(a.dtype)) for name, a in entries]
        layouts = self.allgather_obj(layout)
        for r, other in enumerate(layouts):
            if other != layouts[0]:
                diff = next((f"{a} vs {b}" for a, b in zip(layouts[0], other) if a != b),
                            f"{len(layouts[0])} vs {len(other)} entries")
                error = DistributedError(f"the ranks hold different models: rank {r}'s {what} "
                                         f"differ from rank 0's ({diff})")
                error.all_ranks = True   # every rank sees the same layouts and raises this
                raise error

    def bcast_data(self, model, root=0):
        """Copy ``root``'s parameters and buffers into every rank's model (in place).

        Checks first that every rank holds the same architecture (names, shapes, dtypes).
        """
        entries = list(model.named_parameters()) + named_buffers(model)
        self._check_same_layout([(n, _array(e)) for n, e in entries], "parameters and buffers")
        if self.size == 1:
            return model
        for _, entry in entries:
            host = np.array(backends.asnumpy(_array(entry)), copy=True, order="C")
            self.mpi_comm.Bcast(host, root=root)
            if self.rank != root:
                _assign(entry, host)
        return model

    def allreduce_persistent(self, model):
        """Average the model's floating-point buffers (BatchNorm running mean and variance)
        across ranks, in place; integer buffers (``num_batches_tracked``) take rank 0's value.
        Call at the end of each epoch, before evaluating or saving (ChainerMN's
        ``AllreducePersistent``).  Returns the number of buffers synchronised."""
        buffers = named_buffers(model)
        if self.size == 1 or not buffers:
            return len(buffers)
        for _, entry in buffers:
            host = np.array(backends.asnumpy(_array(entry)), copy=True, order="C")
            if host.dtype.kind == "f":
                self.mpi_comm.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
                host /= self.size
            else:
                self.mpi_comm.Bcast(host, root=0)
            _assign(entry, host)
        return len(buffers)

    # ---------------------------------------------------------------- gradients
    def _nccl_comm(self):
        """The NCCL communicator when every rank agreed to use it, else None (decided once,
        collectively: NCCL needs every rank on a GPU of its own)."""
        if self._nccl_decided:
            return self._nccl
        ok, reason = False, "not asked for"
        if self._nccl_wanted:
            try:
                import cupy
                from cupy.cuda import nccl  # noqa: F401
                count = cupy.cuda.runtime.getDeviceCount()
                ok = self.local_size <= count
                reason = None if ok else (f"{self.local_size} ranks share {count} GPU(s) on "
                                          f"{self.host}")
            except Exception as exc:  # no CuPy, CuPy without NCCL, no device
                reason = f"{type(exc).__name__}: {exc}"
        everyone = self.mpi_comm.allreduce(1 if ok else 0, op=self.MPI.MIN)
        if everyone:
            from cupy.cuda import nccl
            uid = nccl.get_unique_id() if self.rank == 0 else None
            uid = self.mpi_comm.bcast(uid, root=0)
            self._nccl = nccl.NcclCommunicator(self.size, uid, self.rank)
            self.transport = "nccl"
        elif self._nccl_wanted is True:
            reasons = self.allgather_obj(reason)
            bad = next((r, why) for r, why in enumerate(reasons) if why)
            raise DistributedError(f"NCCL was required but cannot be used: rank {bad[0]}: {bad[1]}")
        self._nccl_decided = True
        return self._nccl

    def decide_transport(self):
        """Decide now (collectively) how CUDA gradients travel; returns ``"nccl"`` or ``"mpi"``.
        Otherwise decided at the first all-reduce of a CUDA buffer."""
        self._nccl_comm()
        return self.transport

    def allreduce_buffer(self, flat):
        """Sum a flat (1-D, contiguous) gradient buffer across ranks in place: NCCL for a
        CuPy array when every rank has its own GPU, MPI on a host copy otherwise."""
        t0 = time.perf_counter()
        if self.size > 1:
            if isinstance(flat, np.ndarray):
                self.mpi_comm.Allreduce(self.MPI.IN_PLACE, flat, op=self.MPI.SUM)
            else:
                nc = self._nccl_comm()
                if nc is not None:
                    self._nccl_allreduce(nc, flat)
                else:
                    host = backends.asnumpy(flat)
                    self.mpi_comm.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
                    flat.set(host)
        self.stats["allreduce_s"] += time.perf_counter() - t0
        self.stats["allreduce_calls"] += 1
        self.stats["allreduce_bytes"] += int(flat.nbytes)
        return flat

    @staticmethod
    def _nccl_allreduce(nc, flat):
        import cupy
        from cupy.cuda import nccl
        types = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64,
                 np.dtype(np.float16): nccl.NCCL_FLOAT16}
        stream = cupy.cuda.get_current_stream()
        nc.allReduce(flat.data.ptr, flat.data.ptr, flat.size, types[np.dtype(flat.dtype)],
                     nccl.NCCL_SUM, stream.ptr)
        stream.synchronize()  # the step's time includes the reduction; errors surface here


def create_communicator(mpi_comm=None, *, nccl="auto", abort_on_error=True, use_device=True,
                        cpu_threads=True) -> Communicator:
    """The :class:`Communicator` for this process (ChainerMN's ``create_communicator``).

    ``abort_on_error``: an uncaught exception on any rank ends the whole job
    (:func:`install_abort_on_error`).  ``use_device``: pick CUDA device ``local_rank``
    (when CuPy and a GPU are present).  ``cpu_threads``: share the cores among the ranks
    on one machine.  Raises :class:`DistributedError` naming what to install when
    mpi4py is missing.
    """
    comm = Communicator(mpi_comm, nccl=nccl)
    if abort_on_error:
        install_abort_on_error(comm)
    if cpu_threads:
        comm.set_cpu_threads()
    if use_device:
        comm.use_device()
    return comm


def format_rank_error(comm, exc):
    """One line naming the rank and the cause of an exception."""
    where = f"rank {comm.rank} of {comm.size}" + (f" on {comm.host}" if comm.node_count > 1 else "")
    text = str(exc).strip().splitlines()
    cause = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return f"gpucnn: {where}: {cause}; ending all ranks"


def install_abort_on_error(comm):
    """Replace ``sys.excepthook``: print one line naming the rank and the exception (the
    traceback too when ``GPUCNN_DEBUG`` is set) and ``MPI_Abort`` the job, so no rank waits
    forever in a collective for a rank that died.  Only when ``comm.size > 1``."""
    if comm.size <= 1:
        return
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        try:
            if os.environ.get("GPUCNN_DEBUG"):
                previous(exc_type, exc, tb)
            if issubclass(exc_type, KeyboardInterrupt):
                print(f"gpucnn: rank {comm.rank} of {comm.size}: interrupted; ending all ranks",
                      file=sys.stderr)
            else:
                print(format_rank_error(comm, exc), file=sys.stderr)
        finally:
            comm.abort(130 if issubclass(exc_type, KeyboardInterrupt) else 1)

    sys.excepthook = hook


# =========================================================================== gradients

class _Bucket:
    __slots__ = ("flat", "entries")

    def __init__(self, flat, entries):
        self.flat = flat          # 1-D array on the parameters' device
        self.entries = entries    # (param index, offset, size, shape)


class MultiNodeOptimizer:
    """Wraps an optimizer: :meth:`step` averages the gradients across ranks, in a few large
    flat buckets, then runs the wrapped optimizer's step (ChainerMN's multi-node optimizer).

    Everything else (``lr``, ``state_dict``, ``zero_grad``, ``params`` ...) is the wrapped
    optimizer's; ``optimizer`` is the wrapped one.
    """

    _own = ("optimizer", "comm", "bucket_bytes", "_buckets", "_layout")

    def __init__(self, optimizer, comm, bucket_bytes=DEFAULT_BUCKET_BYTES):
        if bucket_bytes < 1:
            raise ValueError(f"MultiNodeOptimizer: bucket_bytes must be positive, got {bucket_bytes}")
        object.__setattr__(self, "optimizer", optimizer)
        object.__setattr__(self, "comm", comm)
        object.__setattr__(self, "bucket_bytes", int(bucket_bytes))
        object.__setattr__(self, "_buckets", None)
        object.__setattr__(self, "_layout", None)

    def __getattr__(self, name):
        return getattr(self.optimizer, name)

    def __setattr__(self, name, value):
        if name in self._own:
            object.__setattr__(self, name, value)
        else:
            setattr(self.optimizer, name, value)

    def __repr__(self):
        return f"MultiNodeOptimizer({self.optimizer!r}, {self.comm!r})"

    # ------------------------------------------------------------ buckets
    def _make_buckets(self):
        params = self.optimizer.params
        layout = tuple((p.shape, str(p.dtype), backends.backend_of(p.data).name) for p in params)
        if layout == self._layout:
            return self._buckets
        groups = {}
        for i, p in enumerate(params):   # one group per (device, dtype), in parameter order
            groups.setdefault((layout[i][2], layout[i][1]), []).append(i)
        buckets = []
        for (_, dtype), idxs in groups.items():
            B = backends.backend_of(params[idxs[0]].data)
            limit = max(1, self.bucket_bytes // np.dtype(dtype).itemsize)
            current, size = [], 0
            for i in idxs + [None]:
                n = int(np.prod(params[i].shape)) if i is not None else 0
                if current and (i is None or size + n > limit):
                    flat = B.zeros((size,), np.dtype(dtype))
                    buckets.append(_Bucket(flat, current))
                    current, size = [], 0
                if i is not None:
                    current.append((i, size, n, params[i].shape))
                    size += n
        self._buckets, self._layout = buckets, layout
        return buckets

    @property
    def bucket_count(self):
        return len(self._make_buckets())

    def allreduce_grads(self, weight=None):
        """Replace every parameter's ``.grad`` by the weighted sum over ranks
        ``sum_r weight_r * grad_r``.  ``weight``: this rank's share of the global batch
        (``n_rank / n_global``; :attr:`ShardedBatchIterator.weight`); default
        ``1 / size`` (a plain average).  A parameter without a gradient counts as zeros."""
        comm = self.comm
        if comm.size == 1:
            return self         # one process: its gradients are the global batch's already
        w = 1.0 / comm.size if weight is None else float(weight)
        params = self.optimizer.params
        for bucket in self._make_buckets():
            flat = bucket.flat
            for i, off, n, _ in bucket.entries:
                g = params[i].grad
                dst = flat[off:off + n]
                if g is None or w == 0.0:
                    dst[...] = 0
                elif w == 1.0:
                    dst[...] = g.reshape(-1)
                else:
                    dst[...] = g.reshape(-1) * flat.dtype.type(w)
            comm.allreduce_buffer(flat)
            for i, off, n, shape in bucket.entries:
                params[i].grad = flat[off:off + n].reshape(shape)
        return self

    def step(self, weight=None):
        """All-reduce the gradients (see :meth:`allreduce_grads`), then the wrapped step."""
        self.allreduce_grads(weight)
        return self.optimizer.step()


def create_multi_node_optimizer(optimizer, comm, bucket_bytes=DEFAULT_BUCKET_BYTES):
    """Wrap ``optimizer`` so that its step uses the gradients averaged across ``comm``'s ranks."""
    return MultiNodeOptimizer(optimizer, comm, bucket_bytes)


# =========================================================================== data

class ShardedBatchIterator(BatchIterator):
    """This rank's contiguous share of each global batch of a :class:`BatchIterator`.

    Every rank draws the same permutation (same ``seed``, same generator as
    ``BatchIterator``, so generator states -- and checkpoints -- are interchangeable
    between any numbers of processes); ``batch_size`` is the global batch.  After each
    batch is yielded, :attr:`share` is ``(n_rank, n_global)`` and :attr:`weight`
    ``n_rank / n_global`` (pass it to :meth:`MultiNodeOptimizer.step`).  A rank whose
    share is empty (a last batch smaller than the number of ranks) gets empty arrays.
    """

    def __init__(self, images, labels, batch_size=64, *, shuffle=True, seed=0, drop_last=False,
                 comm=None, rank=None, size=None):
        super().__init__(images, labels, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.rank = comm.rank if rank is None else int(rank)
        self.size = comm.size if size is None else int(size)
        if not 0 <= self.rank < self.size:
            raise ValueError(f"ShardedBatchIterator: rank {self.rank} is not in [0, {self.size})")
        self.share = (0, 0)

    @property
    def weight(self):
        n, total = self.share
        return n / total if total else 0.0

    def epoch(self, skip=0):
        n = len(self.labels)
        order = self.rng.permutation(n) if self.shuffle else None
        for b in range(skip, len(self)):
            start, end = b * self.batch_size, min(n, (b + 1) * self.batch_size)
            lo, hi = shard_bounds(end - start, self.rank, self.size)
            self.share = (hi - lo, end - start)
            if self.shuffle:
                idx = order[start + lo:start + hi]
                yield self.images[idx], self.labels[idx]
            else:
                yield self.images[start + lo:start + hi], self.labels[start + lo:start + hi]


# =========================================================================== evaluation

class RankFailure(RuntimeError):
    """Stands for an exception of another rank that cannot be rebuilt here; its message
    names the rank, the exception type and its text."""


def _portable(exc, rank):
    """``exc`` if it survives pickling (to be raised on other ranks), else a RankFailure."""
    import pickle
    try:
        copy = pickle.loads(pickle.dumps(exc))
        if type(copy) is type(exc) and str(copy) == str(exc):
            return exc
    except Exception:  # noqa: BLE001 - any pickling problem
        pass
    return RankFailure(f"rank {rank}: {type(exc).__name__}: {exc}")


def _collective(comm, fn):
    """Run ``fn()`` on every rank; if it raised on any rank, raise on every rank (the failing
    rank's own exception there, the same exception type elsewhere when it can be rebuilt) so
    that no rank is left waiting in the next collective.  Returns fn's result."""
    try:
        value, error = fn(), None
    except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
        value, error = None, exc
    failures = comm.allgather_obj(None if error is None else (type(error), str(error)))
    first = next(((r, f) for r, f in enumerate(failures) if f is not None), None)
    if first is None:
        return value
    if error is not None:
        error.all_ranks = True
        raise error
    rank, (cls, text) = first
    try:
        exc = cls(text)
    except Exception:  # noqa: BLE001 - an exception class with another signature
        exc = RankFailure(f"rank {rank}: {cls.__name__}: {text}")
    exc.all_ranks = True
    raise exc


def evaluate(model, data, comm, *, batch_size=500, classes=None):
    """:func:`gpucnn.evaluation.evaluate` split across ranks (ChainerMN's multi-node
    evaluator): each rank evaluates its contiguous share of ``data`` and the confusion
    matrices and loss sums are added up, so every rank gets the result for the whole set.
    An error on one rank (non-finite outputs ...) is raised on every rank."""
    from .data import ImageSet
    from .evaluation import EvalResult, as_imageset
    from .evaluation import evaluate as evaluate_here
    data = as_imageset(data, "evaluate")
    if comm is None or comm.size == 1:
        return evaluate_here(model, data, batch_size=batch_size, classes=classes)
    if len(data) == 0:
        raise ValueError("evaluate: the data set is empty")
    lo, hi = shard_bounds(len(data), comm.rank, comm.size)

    def part():
        if hi == lo:
            return np.zeros((0, 0), np.int64), 0.0
        res = evaluate_here(model, ImageSet(data.images[lo:hi], data.labels[lo:hi]),
                            batch_size=batch_size, classes=classes)
        return res.confusion, res.loss * res.total

    confusion, loss_sum = _collective(comm, part)
    k = comm.allreduce_obj(int(confusion.shape[0]), op="max")
    total = np.zeros((k, k), np.int64)
    total[:confusion.shape[0], :confusion.shape[1]] = confusion
    comm.allreduce_host(total)
    loss = comm.allreduce_host(np.array([loss_sum], np.float64))[0]
    names = tuple(classes) if classes is not None else tuple(str(i) for i in range(k))
    correct = int(np.trace(total))
    return EvalResult(accuracy=correct / len(data), loss=float(loss / len(data)), correct=correct,
                      total=len(data), confusion=total, classes=names)


# =========================================================================== the trainer

class DistributedTrainer(Trainer):
    """:class:`~gpucnn.trainer.Trainer` across the ranks of ``comm``: same arguments, plus
    ``comm``.  ``batch_size`` is the global batch; each rank computes its contiguous share
    (:class:`ShardedBatchIterator`) and the optimizer is wrapped in a
    :class:`MultiNodeOptimizer`.  Rank 0 alone logs, shows the progress bar and writes the
    run directory (checkpoint, history, curves); the checkpoint holds the global progress,
    so any number of processes (one included) resumes it at the same global step.

    Everything that stops training is decided by all ranks together, at the same step: the
    per-step loss, accuracy counts and a stop request travel in one small all-reduce, so a
    loss that stops being finite on any rank raises :class:`TrainingDiverged` on every
    rank, and Ctrl-C or SIGTERM (``mpiexec`` forwards both to every rank) stops every rank
    after the same step, rank 0 saving the checkpoint.  Such exceptions carry
    ``all_ranks = True``; anything else that escapes :meth:`fit` happened on one rank only
    and the caller should end the job (:meth:`Communicator.abort`).  BatchNorm running
    statistics are averaged across ranks at the end of each epoch.
    """

    def __init__(self, model, optimizer, train, test=None, *, comm, run_dir=None, progress=True,
                 log=print, **kwargs):
        self.comm = comm
        root = comm.rank == 0
        if not isinstance(optimizer, MultiNodeOptimizer):
            optimizer = MultiNodeOptimizer(optimizer, comm)
        # the gradient all-reduce works on the per-parameter gradients, on host-fed batches,
        # eagerly: no flat-buffer fusion, device-resident data or CUDA graph here (yet)
        kwargs.update(fuse=False, graph=False, device_data=False)
        super().__init__(model, optimizer, train, test, run_dir=run_dir if root else None,
                         progress=progress and root, log=log if root else None, **kwargs)
        self.iterator = ShardedBatchIterator(self.train_set.images, self.train_set.labels,
                                             self.batch_size, seed=self.seed, comm=comm)
        comm.bcast_data(model)
        if model.device != "cpu":
            comm.decide_transport()   # NCCL or MPI, decided now by all ranks together
        self._signalled = None      # time of the first Ctrl-C/SIGTERM not yet acted on
        self._all_ranks_stop = False

    # -------------------------------------------------------------- stopping
    def fit(self, epochs):
        self._all_ranks_stop = False
        try:
            return super().fit(epochs)
        except TrainingInterrupted as exc:
            exc.all_ranks = self._all_ranks_stop
            raise
        except TrainingDiverged as exc:
            exc.all_ranks = True
            raise

    def _install_signals(self):
        self._signalled = None
        return super()._install_signals()

    def _on_signal(self, signum, frame):
        """Ctrl-C / SIGTERM (``mpiexec`` forwards both to every rank): ask the ranks to stop;
        they decide together at the next step and stop after it.  A second signal more than
        a second after the first ends the job at once, unsaved (a terminal's Ctrl-C can reach a
        rank twice at once: directly and through mpiexec)."""
        if self._finishing:
            return
        now = time.monotonic()
        if self._signalled is None:
            self._signalled = now
            self._signal_name = "SIGTERM" if signum == getattr(signal, "SIGTERM", None) else "Ctrl-C"
            again = " (press Ctrl-C again to stop at once, unsaved)" if self._signal_name == "Ctrl-C" else ""
            try:
                self.log(f"gpucnn: {self._signal_name}: stopping every rank after this step{again}")
            except RuntimeError:  # the signal came in the middle of a print: "reentrant call"
                pass
        elif now - self._signalled > 1.0:
            print(f"gpucnn: rank {self.comm.rank} of {self.comm.size}: interrupted again; ending "
                  "all ranks without saving", file=sys.stderr)
            self.comm.abort(130)

    # ------------------------------------------------------------------ a step
    def _step(self, backend, x, y):
        """This rank's share: forward, loss, backward; then one small all-reduce of (loss sum,
        correct, images, stop requests), the gradient all-reduce and the update."""
        model, opt, loss_fn, comm = self.model, self.optimizer, self.loss_fn, self.comm
        t0 = time.perf_counter()
        n = len(y)
        loss, correct = 0.0, 0
        opt.zero_grad()
        with quiet_overflow():
            if n:
                xb = to_model_device(backend, model, x)
                if self.transform is not None:
                    xb = self.transform(xb)
                yb = backend.asarray(y)
                try:
                    out = model(xb)
                    loss = loss_fn(out, yb)
                except NonFiniteError:
                    if not np.isfinite(x).all() and self._params_finite():
                        raise                # the data's fault, on this rank: not a divergence
                    loss = math.nan
                if math.isfinite(loss):
                    correct = int((backends.asnumpy(out.argmax(axis=1)) == y).sum())
                    model.backward(loss_fn.backward(), input_grad=False)
            signalled = self._signalled is not None
            totals = comm.allreduce_host(np.array(
                [loss * n if n else 0.0, correct, n, float(signalled),
                 float(signalled and self._signal_name == "SIGTERM")]))
            loss_sum, correct, seen = float(totals[0]), int(totals[1]), int(totals[2])
            if not math.isfinite(loss_sum):
                raise self._diverged(loss_sum)
            with self._no_interrupt():   # the update and the step's bookkeeping: all or nothing
                self._updating = True
                opt.step(weight=self.iterator.weight)
                self._updating = False
                if totals[3]:            # some rank was asked to stop: every rank stops now
                    self._stop_requested = self._all_ranks_stop = True
                    self._signal_name = "SIGTERM" if totals[4] else "Ctrl-C"
                stats = self._stats
                stats["loss_sum"] += loss_sum
                stats["correct"] += correct
                stats["seen"] += seen
                stats["time"] += time.perf_counter() - t0
                self._advance()
        return loss_sum / seen

    def _end_epoch(self, epochs):
        self.comm.allreduce_persistent(self.model)
        super()._end_epoch(epochs)

    def _interrupted(self):
        """Stopping mid-epoch: average the running statistics before rank 0 saves them.  The
        statistics' updates are affine, so averaging now or at the epoch's end gives the same
        end-of-epoch average: resumed on as many processes, the run continues as the uninterrupted
        one would (on another number, BatchNorm's batch statistics come from other shares).  (Only
        when every rank stopped together: a collective would wait forever otherwise.)"""
        if self._all_ranks_stop:
            self.comm.allreduce_persistent(self.model)
        return super()._interrupted()

    def _test(self):
        if self.test_set is None:
            return None, None
        try:
            with quiet_overflow():
                res = evaluate(self.model, self.test_set, self.comm,
                               batch_size=self.eval_batch_size, classes=self.classes)
        except NonFiniteError as exc:   # raised on every rank by evaluate
            if np.isfinite(self.test_set.images).all():
                raise self._diverged("NaN/infinite", at_epoch_end=True) from exc
            raise
        return res.loss, res.accuracy
