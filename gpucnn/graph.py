"""The whole training step as one CUDA graph, captured once and replayed.

:class:`StepGraph` captures forward, loss, backward and the (fused, flat) optimizer update
of one mini-batch shape with CuPy's stream capture (``Stream.begin_capture`` ...
``end_capture``) into a ``cupy.cuda.Graph``; every later step of that shape copies its
batch into the graph's input buffers and launches the graph: one launch instead of ~50,
no Python in between, nothing read back.

Memory: the step allocates from a private CuPy memory pool, used for nothing else, so
what the graph reads and writes (activations, gradients, the loss) is never handed to
anyone else while the graph lives; the parameters and optimizer state are the fused
optimizer's flat buffers, whose addresses never change (``load_state_dict`` copies into
them).

What stays correct without capturing again:

* the learning rate and Adam's bias corrections are read by the update kernels from a
  device table (``sgd_update_indexed`` / ``adam_update_indexed`` in kernels/optim.cu) that
  the host fills for the coming steps -- rebuilt when the learning rate changes or an
  eager step moved Adam's step count, never per step; a device row counter advanced
  inside the graph picks the row;
* the first step (it creates the optimizer state), the last, smaller batch of an epoch,
  eval mode, and any step the graph cannot take (another shape, a non-fused optimizer)
  run eagerly;
* if capture fails, the reason is kept in ``failed`` and every step runs eagerly.

Results equal eager execution bitwise: the graph replays the kernels, grids and arguments
of the eager step, and the indexed updates compute the eager formulas
(tests/test_graph.py: on a GPU graph vs eager; on the emulator the indexed kernels vs the
plain ones).  Only the CUDA backend captures; elsewhere ``for_trainer`` returns None.
"""
from __future__ import annotations

import numpy as np


class GraphUnavailable(RuntimeError):
    """Capture was asked for (``graph=True``) where it cannot work."""


class StepGraph:
    """One captured training step for a fixed batch shape (see the module docstring)."""

    def __init__(self, trainer, xp):
        self.trainer = trainer
        self.xp = xp
        self.graph = None
        self.shape = None
        self.failed = None        # why capture failed (then every step runs eagerly)
        self.pool = xp.cuda.MemoryPool()
        self.stream = xp.cuda.Stream(non_blocking=True)
        self.replays = 0
        self._table = self._row = None
        self._key = None          # what the table was built for (the optimizer's key)
        self._row_mirror = 0      # the device row counter, as the host knows it

    @classmethod
    def for_trainer(cls, trainer, option="auto"):
        """A StepGraph when ``option`` asks for one and can work, else None.

        ``"auto"``: on the CUDA backend, with device-resident data and a fused optimizer
        that supports replay.  ``True``: the same, but a missing piece raises
        GraphUnavailable on the GPU (on host memory -- CPU, emulator -- there is nothing to
        capture and eager is the same computation: None)."""
        if option not in ("auto", True, False):
            raise ValueError(f"Trainer: graph must be 'auto', True or False, got {option!r}")
        if option is False:
            return None
        from .device_data import DeviceBatchIterator, device_memory
        from .evaluation import model_backend
        backend = model_backend(trainer.model)
        if not device_memory(backend):
            return None
        xp = backend.xp
        why = None
        if not hasattr(xp.cuda, "Graph") or not hasattr(xp.cuda.Stream, "begin_capture"):
            why = "this CuPy has no stream capture (CuPy >= 11 is needed)"
        elif not isinstance(trainer.iterator, DeviceBatchIterator):
            why = "the training data is not on the device (device_data=False or it does not fit)"
        elif getattr(trainer.optimizer, "_flat", None) is None or \
                not hasattr(trainer.optimizer, "graph_update"):
            why = "the optimizer is not fused (Trainer(fuse=True), SGD or Adam)"
        elif not graph_safe(trainer.model):
            why = ("the model has layers a replay would get wrong (" +
                   ", ".join(sorted(unsafe_layers(trainer.model))) + ": host-side randomness "
                   "or state replaced per step)")
        if why is not None:
            if option is True:
                raise GraphUnavailable(f"Trainer(graph=True): {why}")
            return None
        return cls(trainer, xp)

    # ------------------------------------------------------------------ when
    def accepts(self, xb, yb):
        """Whether this step can be replayed or captured (else it runs eagerly)."""
        t = self.trainer
        if self.failed is not None or not t.model.training:
            return False
        if xb.shape[0] != t.batch_size or not t._trusted_data():
            return False
        if self.shape is not None and (tuple(xb.shape), xb.dtype) != self.shape:
            return False
        return t.optimizer.graph_ready()

    # ------------------------------------------------------------------- step
    def step(self, xb, yb):
        """One training step through the graph (captured now if there is none yet).
        Returns (loss Scalar, correct 0-d array), both fresh arrays of this step."""
        xp = self.xp
        if self.graph is None:
            try:
                self._capture(xb, yb)
            except Exception as exc:   # capture unsupported here: eager from now on
                self.failed = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
                self.graph = None
                self.trainer.log(f"gpucnn: CUDA graph capture failed, training eagerly "
                                 f"({self.failed})")
                return None            # the trainer runs this step eagerly
        self._refresh_table()
        stream = xp.cuda.get_current_stream()
        self.x_static[...] = xb
        self.y_static[...] = yb
        self.graph.launch(stream=stream)
        self.trainer.optimizer.graph_replayed()
        self._row_mirror += 1
        self.replays += 1
        # the graph overwrites its loss and count at the next replay: hand out copies
        from .scalar import Scalar
        return Scalar(self.loss_static.copy()), self.correct_static.copy()

    def _refresh_table(self):
        """Fill the device table for the coming replays when the one there does not hold the
        next step's values (first use, a new learning rate, an eager step in between)."""
        opt = self.trainer.optimizer
        rows = len(self.trainer.iterator) + 1
        r = opt.graph_row(self._key) if self._key is not None else None
        if r is not None and r < rows and (not opt.graph_uses_row or r == self._row_mirror):
            return
        table, self._key = opt.graph_table(rows)
        self._table[:table.size] = self.xp.asarray(table)      # one small copy, not per step
        self._row.fill(0)
        self._row_mirror = 0

    def _capture(self, xb, yb):
        xp = self.xp
        t = self.trainer
        opt = t.optimizer
        rows = len(t.iterator) + 1
        with xp.cuda.using_allocator(self.pool.malloc):
            self.x_static = xp.array(xb, copy=True)
            self.y_static = xp.array(yb, copy=True)
            self._table = xp.zeros((2 * rows,), dtype=opt._flat.dtype)
            self._row = xp.zeros((1,), dtype=np.int64)
            self._key = None
            self._refresh_table()
            # a warm-up of the capture's allocations, on a scratch copy of everything the
            # step writes, so the pool holds blocks of every size before capture (a capture
            # must not grow the pool) and the model is unchanged by it
            saved = _Snapshot(t)
            # the side stream does not follow the compute stream by itself: wait for the
            # batch copy, the snapshot and every earlier step before running on it
            self.stream.wait_event(xp.cuda.get_current_stream().record())
            try:
                with self.stream:
                    self._graph_body()
                self.stream.synchronize()
            finally:
                saved.restore()
                self._row.fill(0)
                self._row_mirror = 0
                xp.cuda.get_current_stream().synchronize()
            self.stream.wait_event(xp.cuda.get_current_stream().record())
            with self.stream:
                self.stream.begin_capture()
                try:
                    loss, correct = self._graph_body()
                finally:
                    graph = self.stream.end_capture()
            self.stream.synchronize()
        self.loss_static, self.correct_static = loss.array, correct
        self.graph = graph
        self.shape = (tuple(xb.shape), xb.dtype)

    def _graph_body(self):
        """The step on the static buffers, as the graph holds it (no host reads)."""
        t = self.trainer
        from .trainer import _trusted_input
        opt = t.optimizer
        opt.zero_grad()
        with _trusted_input(True):
            out = t.model(self.x_static)
        loss = t.loss_fn(out, self.y_static)
        correct = (out.argmax(axis=1) == self.y_static).sum()
        with _trusted_input(True):
            t.model.backward(t.loss_fn.backward(), input_grad=False)
        if not opt._fusable_now():
            raise RuntimeError("the gradients did not fit the fused optimizer's flat buffer")
        opt.graph_update(self._table, self._row)
        opt._flat.B.advance_row(self._row, opt._flat.dtype)
        return loss, correct


class _Snapshot:
    """The flat parameter and optimizer-state buffers, copied and written back (device
    copies): the warm-up run before capture must not change the model."""

    def __init__(self, trainer):
        flat = trainer.optimizer._flat
        self.flat = flat
        self.data = flat.data.copy()
        self.state = {k: v.copy() for k, v in flat.state.items()}

    def restore(self):
        self.flat.data[...] = self.data
        for k, v in self.state.items():
            self.flat.state[k][...] = v


def _safe_types():
    from . import layers as L
    return (L.Sequential, L.Conv2d, L.Linear, L.MaxPool2d, L.AvgPool2d, L.ReLU, L.Sigmoid,
            L.Tanh, L.Flatten)


def unsafe_layers(model):
    """Names of the layer types in ``model`` that a replayed graph is not known to get right:
    a graph replays fixed kernels on fixed buffers, so a layer that draws on the host per
    step (Dropout's mask) or replaces an array per step (running statistics assigned anew)
    would replay stale values.  Such models train eagerly."""
    safe = _safe_types()
    return {type(m).__name__ for m in model.modules() if type(m) not in safe}


def graph_safe(model):
    return not unsafe_layers(model)
