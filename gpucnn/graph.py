"""The whole training step as one CUDA graph, captured once and replayed.

:class:`StepGraph` captures forward, loss, backward and the optimizer update of one
mini-batch shape with CuPy's stream capture (``Stream.begin_capture`` ... ``end_capture``)
into a ``cupy.cuda.Graph``; every later step of that shape copies its batch into the
graph's input buffers and launches the graph: one launch instead of ~50, no Python in
between.  The arrays the step allocates during capture (activations, gradients, the
loss) belong to the graph's memory pool and stay alive as long as the graph.

What stays correct without recapturing:

* the learning rate is read by the update kernels from a device array (``lr_buffer``)
  that the trainer writes before each replay, so an lr change needs no new graph;
* Adam's step count and bias corrections are per-step values: they go through device
  scalars the same way (one small host-to-device copy per step, asynchronous);
* the last, smaller batch of an epoch, eval mode, and any step the graph cannot take
  (a different shape or dtype, parameters replaced by ``load_state_dict``) run eagerly.

Results equal eager execution bitwise: the graph replays exactly the kernels, grids and
arguments the eager step launches (the GPU test ``tests/test_graph.py`` checks it).
Only the CUDA backend captures; on the CPU and the emulator ``for_trainer`` returns None.
"""
from __future__ import annotations

import numpy as np


class GraphUnavailable(RuntimeError):
    """Capture is not possible here (no CUDA backend, a CuPy without graph support, ...)."""


class StepGraph:
    """One captured training step for a fixed batch shape (see the module docstring)."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.xp = __import__("cupy")
        self.graph = None
        self.shape = None
        self.failed = None        # why capture failed (then every step runs eagerly)
        self._params_key = None

    @classmethod
    def for_trainer(cls, trainer, option="auto"):
        """A StepGraph when ``option`` asks for one and the model is on the CUDA backend, else None."""
        if option not in ("auto", True, False):
            raise ValueError(f"Trainer: graph must be 'auto', True or False, got {option!r}")
        if option is False:
            return None
        from .evaluation import model_backend
        backend = model_backend(trainer.model)
        xp = getattr(backend, "xp", np)
        if xp is np or getattr(backend, "name", "") != "cuda":
            if option is True and xp is np:
                return None       # nothing to capture on host memory: eager is the same
            return None
        if not hasattr(xp.cuda, "Graph") or not hasattr(xp.cuda.Stream, "begin_capture"):
            if option is True:
                raise GraphUnavailable("this CuPy has no stream capture (cupy >= 10 needed)")
            return None
        from .device_data import DeviceBatchIterator
        if option == "auto" and not isinstance(trainer.iterator, DeviceBatchIterator):
            return None           # host batches sync per step anyway: keep eager
        return cls(trainer)

    # ------------------------------------------------------------------ when
    def _key(self):
        return tuple(id(p.data) for p in self.trainer.model.parameters())

    def accepts(self, xb, yb):
        """Whether this step can be replayed (or captured): device arrays of the captured
        shape, training mode, an optimizer the capture supports, nothing failed before."""
        if self.failed is not None or not self.trainer.model.training:
            return False
        if isinstance(xb, np.ndarray) or xb.shape[0] != self.trainer.batch_size:
            return False
        if self.shape is not None and (tuple(xb.shape), xb.dtype) != self.shape:
            return False
        if self.graph is not None and self._key() != self._params_key:
            self.graph = None     # parameters were replaced (load_state_dict): capture again
        return _optimizer_supported(self.trainer.optimizer)

    # --------------------------------------------------------------- capture
    def _eager(self, xb, yb):
        """The step as the trainer runs it eagerly, writing into the graph's buffers."""
        t = self.trainer
        from .trainer import _trusted_input
        with _trusted_input(True):
            out = t.model(xb)
        loss = t.loss_fn(out, yb)
        correct = (out.argmax(axis=1) == yb).sum()
        with _trusted_input(True):
            t.model.backward(t.loss_fn.backward(), input_grad=False)
        t.optimizer.step()
        return loss, correct

    def step(self, xb, yb):
        """Run one step: capture it the first time (the capture step runs eagerly too, so no
        step is lost), replay it afterwards.  Returns (loss Scalar, correct 0-d array)."""
        xp = self.xp
        t = self.trainer
        if self.graph is None:
            # the first step of this shape: run it eagerly (its results count), then capture
            # a second copy of the step into a graph working on the static buffers
            loss, correct = self._eager(xb, yb)
            try:
                self._capture(xb, yb)
            except Exception as exc:   # capture unsupported: the step above already ran
                self.failed = f"{type(exc).__name__}: {exc}"
                self.graph = None
            return loss, correct
        t.optimizer.prepare_graph_step()
        self.x_static[...] = xb
        self.y_static[...] = yb
        self.graph.launch(stream=self.stream)
        self.stream.synchronize() if False else None   # nothing waits: reads happen later
        # the loss and count live in the graph's buffers and are overwritten by the next
        # replay: hand out copies (one small device copy each, on the same stream)
        with self.stream:
            loss = xp.array(self.loss_static.array, copy=True)
            correct = xp.array(self.correct_static, copy=True)
        from .scalar import Scalar
        return Scalar(loss), correct

    def _capture(self, xb, yb):
        xp = self.xp
        t = self.trainer
        self.x_static = xp.array(xb, copy=True)
        self.y_static = xp.array(yb, copy=True)
        # the capture must not change the model: snapshot parameters and optimizer state,
        # capture (which records without running), then nothing to restore -- capture does
        # not execute kernels.  The optimizer keeps its per-step scalars on the device.
        t.optimizer.prepare_graph_step(capturing=True)
        self.stream = xp.cuda.Stream(non_blocking=True)
        with self.stream:
            self.stream.begin_capture()
            try:
                loss, correct = self._eager_static()
            finally:
                graph = self.stream.end_capture()
        self.loss_static, self.correct_static = loss, correct
        self.graph = graph
        self.shape = (tuple(xb.shape), xb.dtype)
        self._params_key = self._key()
        xp.cuda.get_current_stream().synchronize()

    def _eager_static(self):
        return self._eager_graphable(self.x_static, self.y_static)

    def _eager_graphable(self, xb, yb):
        t = self.trainer
        t.optimizer.zero_grad()
        return self._eager(xb, yb)


def _optimizer_supported(opt):
    """Capture needs an optimizer whose per-step values live on the device."""
    return callable(getattr(opt, "prepare_graph_step", None))
