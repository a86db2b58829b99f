"""The training loop: :class:`Trainer` (a step, the end of an epoch) and :func:`fit` around it.

A step: a seeded mini-batch, forward, loss, explicit backward, optimizer update.  The
end of an epoch: evaluation on the test set, one record in the history, one log line,
and with a run directory the checkpoint, ``history.json``/``.csv`` and ``curves.png``.
Ctrl-C or SIGTERM saves and says how to resume, at any point of the loop: the
parameter update, the step's bookkeeping, the end-of-epoch state change and the
checkpoint write are never cut in half (a second Ctrl-C arriving there takes effect
right after them); a loss that stops being finite stops training with
:class:`TrainingDiverged`.
"""
from __future__ import annotations

import math
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from . import backends
from . import random as _random
from .checkpoint import (CHECKPOINT_NAME, Checkpoint, CheckpointError, _first_nonfinite, load_checkpoint,
                         save_checkpoint)
from .data import BatchIterator
from .errors import NonFiniteError, quiet_overflow
from .evaluation import as_imageset, evaluate, model_backend, to_model_device
from .plots import CURVES_PNG, plot_history, write_history
from .validation import FRACTION, one_of

__all__ = ["Trainer", "fit", "make_optimizer", "TrainingDiverged", "TrainingInterrupted"]


class TrainingDiverged(RuntimeError):
    """The loss (or the network's activations) stopped being finite.

    ``epoch`` and ``step`` (1-based) name the step; ``checkpoint`` is the last
    good checkpoint on disk, or None.
    """

    def __init__(self, message, *, epoch=None, step=None, global_step=None, checkpoint=None):
        super().__init__(message)
        self.epoch, self.step, self.global_step, self.checkpoint = epoch, step, global_step, checkpoint


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C, SIGTERM (or a KeyboardInterrupt from a callback) stopped :meth:`Trainer.fit`.

    ``checkpoint`` is where the state at the last completed step was saved (None
    if nothing could be saved); ``message`` says what happened and how to resume;
    ``signal`` is "Ctrl-C" or "SIGTERM" when a signal asked to stop, else None.
    """

    signal = None

    def __init__(self, message, *, checkpoint=None):
        super().__init__(message)
        self.message, self.checkpoint = message, checkpoint

    def __str__(self):
        return self.message


def _progress_bar(total, initial, desc, enabled):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency, but training must not need it
        return None
    return tqdm(total=total, initial=initial, desc=desc, unit="batch", leave=False,
                dynamic_ncols=True, file=sys.stderr)


class Trainer:
    """Mini-batch training of ``model`` with ``optimizer`` on ``train`` (and evaluation on ``test``).

    Parameters
    ----------
    model, optimizer
        A gpucnn Module (already on its device) and an optimizer over its parameters.
    train, test
        :class:`~gpucnn.data.ImageSet` or ``(images, labels)`` pairs (numpy); ``test`` may be None.
    loss_fn
        Default :class:`gpucnn.CrossEntropyLoss`.
    batch_size, seed
        Mini-batch size; seed of the shuffling (:class:`~gpucnn.data.BatchIterator`).
    run_dir
        If given, every epoch writes ``checkpoint.npz``, ``history.json``,
        ``history.csv`` and ``curves.png`` there.
    config
        A JSON-able dict stored in the checkpoint (how to rebuild the run).
    progress
        Show a tqdm bar per epoch (on stderr).
    log
        Called with each text line (epoch lines, messages); default ``print``.
    extra_state
        A JSON-able dict saved in every checkpoint's ``state`` (``gpucnn train``
        records the dataset's shape, classes and normalisation there).
    title
        Title of the ``curves.png`` plot.
    lr_decay
        Epoch ``e`` (0-based) trains with ``lr * lr_decay**e`` (``lr``: the
        optimizer's at construction).  It depends only on the epoch, never on
        the planned total, so stopping and resuming changes nothing.
    scheduler, scheduler_interval
        A learning-rate schedule over ``optimizer`` (:mod:`gpucnn.lr_scheduler`), stepped
        after every ``"epoch"`` (default) or after every optimizer ``"step"``; it replaces
        ``lr_decay`` (which must then stay 1).  Its state is saved in every checkpoint.
    transform
        Augmentation applied to each *training* batch after it is moved to the model's
        device (e.g. ``gpucnn.transforms.Compose([RandomCrop(32, padding=4),
        RandomHorizontalFlip()])``); never to the test set.  The states of its private
        generators and of gpucnn's global generator are saved in every checkpoint, so a
        resumed run draws the same crops and flips.
    on_step, on_epoch
        Optional callbacks ``on_step(trainer, info)`` after every completed step
        (``info``: epoch, step, global_step, loss -- a :class:`~gpucnn.scalar.Scalar`;
        reading it waits for the device) and ``on_epoch(trainer, record)``
        after every epoch.  Raising ``KeyboardInterrupt`` in one stops training
        as Ctrl-C does.
    read_every, read_interval
        How often the step losses and correct counts are read back from the device: every
        ``read_every`` steps or ``read_interval`` seconds, whichever comes first, and at the
        end of every epoch (None: every step where the arrays live in host memory, where
        reading is free, else every 50 steps).  Between reads nothing waits for the device;
        a non-finite loss is found at the next read and stops training with the last good
        checkpoint kept (checkpoints are only written after a read found every loss finite).
        The epoch's figures do not depend on it: the same floats are added in the same order.
    device_data
        Keep the training set on the model's device and gather batches there (the same
        order as the host iterator): ``"auto"`` (default) on a GPU when it fits (else batch
        k+1 is copied from pinned host memory on a second stream while batch k computes),
        True, False (plain host batches).
    graph
        Capture the training step as a CUDA graph and replay it (``"auto"``, default: on the
        CUDA backend with device-resident data; True; False).  Bitwise equal to eager steps;
        the last, smaller batch runs eagerly.  Nothing changes on the CPU.
    fuse
        Keep parameters, gradients and optimizer state in one flat buffer each, so the
        optimizer update is one launch (:meth:`gpucnn.optim.Optimizer.fuse`; bitwise the
        per-parameter update).  Default True.

    ``fit(epochs)`` trains until ``epochs`` epochs are complete in total, so a
    trainer restored from a checkpoint (:meth:`restore`) continues where it
    stopped -- on the CPU backend bitwise as if it had never stopped.
    """

    def __init__(self, model, optimizer, train, test=None, *, loss_fn=None, batch_size=64, seed=0,
                 run_dir=None, config=None, classes=None, progress=True, log=print,
                 on_step=None, on_epoch=None, eval_batch_size=500, extra_state=None, title=None,
                 lr_decay=1.0, scheduler=None, scheduler_interval="epoch", transform=None,
                 read_every=None, read_interval=1.0, device_data="auto", graph="auto", fuse=True):
        from .losses import CrossEntropyLoss
        self.model = model
        self.optimizer = optimizer
        self.train_set = as_imageset(train, "Trainer")
        self.test_set = as_imageset(test, "Trainer")
        self.loss_fn = loss_fn if loss_fn is not None else CrossEntropyLoss()
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.iterator = self._make_iterator(device_data)
        from .device_data import device_memory
        host = not device_memory(model_backend(model))
        self.read_every = (1 if host else 50) if read_every is None else int(read_every)
        if self.read_every < 1:
            raise ValueError(f"Trainer: read_every must be >= 1, got {read_every!r}")
        self.read_interval = float(read_interval)
        self._pending = []        # steps not yet read: (step, global_step, loss, correct, n)
        self._last_read = time.perf_counter()
        self._data_finite = None  # the training images were checked once (no per-step scan)
        if fuse and hasattr(optimizer, "fuse") and getattr(optimizer, "_flat", None) is None:
            optimizer.fuse()      # one update launch over one flat buffer (bitwise the same)
        from .graph import StepGraph
        self.graph = StepGraph.for_trainer(self, graph)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.config = dict(config or {})
        self.classes = tuple(classes) if classes is not None else None
        self.progress = progress
        self.log = log if log is not None else (lambda *_: None)
        self.on_step, self.on_epoch = on_step, on_epoch
        self.eval_batch_size = int(eval_batch_size)
        self.extra_state = dict(extra_state or {})
        self.lr_decay = FRACTION(lr_decay, "lr_decay", "Trainer")
        self.base_lr = getattr(optimizer, "lr", None)
        if scheduler is not None:
            if getattr(scheduler, "optimizer", None) is not optimizer:
                raise ValueError("Trainer: the scheduler was built over another optimizer")
            if self.lr_decay != 1.0:
                raise ValueError("Trainer: lr_decay and a scheduler would both set the learning "
                                 "rate; use one of them")
        self.scheduler = scheduler
        self.scheduler_interval = one_of(scheduler_interval, "scheduler_interval",
                                         ("epoch", "step"), "Trainer")
        if transform is not None and not callable(transform):
            raise TypeError(f"Trainer: transform must be callable, got {type(transform).__name__}")
        self.transform = transform
        self.title = title
        self.history = []
        self.epoch = 0            # completed epochs
        self.step_in_epoch = 0    # completed steps of the epoch in progress
        self.global_step = 0      # completed steps in all
        self._epoch_start_rng = None
        self._rng_after_step = None   # gpucnn's generator after the last completed step
        self._transform_rng_after_step = None   # the transform's generators, likewise
        self._stats = self._fresh_stats()
        self._saved_step = None   # global_step of the checkpoint on disk (None: none written)
        self._stop_requested = False
        self._signal_name = None  # "Ctrl-C" or "SIGTERM": what asked to stop
        self._critical = False    # inside an update / state change / checkpoint write
        self._deferred = False    # a hard stop arrived inside one: raise it when it ends
        self._finishing = False   # saving after an interrupt: further signals are ignored
        self._updates = 0         # parameter updates made by this trainer object
        self._updating = False
        self._last_plot = None
        self._plotted_epochs = 0

    def _make_iterator(self, device_data):
        """The host BatchIterator, or a DeviceBatchIterator (same order) when the data goes to the device."""
        from .device_data import DeviceBatchIterator, device_memory, fits_on_device
        if device_data not in ("auto", True, False):
            raise ValueError(f"Trainer: device_data must be 'auto', True or False, got {device_data!r}")
        images, labels = self.train_set.images, self.train_set.labels
        backend = model_backend(self.model)
        on_gpu = device_memory(backend)
        use = device_data is True or (device_data == "auto" and on_gpu and fits_on_device(
            backend, images.size * np.dtype(self.model.dtype).itemsize + labels.nbytes))
        if use:
            return DeviceBatchIterator(images, labels, self.batch_size, backend=backend,
                                       dtype=self.model.dtype, seed=self.seed)
        if on_gpu and device_data == "auto":   # host data, GPU compute: overlap the copies
            from .device_data import PrefetchBatchIterator
            return PrefetchBatchIterator(images, labels, self.batch_size, backend=backend,
                                         dtype=self.model.dtype, seed=self.seed)
        return BatchIterator(images, labels, self.batch_size, seed=self.seed)

    @staticmethod
    def _fresh_stats():
        return {"loss_sum": 0.0, "correct": 0, "seen": 0, "time": 0.0}

    # ------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self):
        return self.run_dir / CHECKPOINT_NAME if self.run_dir is not None else None

    def state(self) -> dict:
        """Progress to store in a checkpoint (JSON-able)."""
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                "global_step": self.global_step, "batch_size": self.batch_size, "seed": self.seed,
                "base_lr": self.base_lr, "lr_decay": self.lr_decay,
                "epoch_start_rng": self._epoch_start_rng if self.step_in_epoch else None,
                "iterator_rng": self.iterator.get_state(),
                "epoch_stats": dict(self._stats) if self.step_in_epoch else None,
                "history": self.history,
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "transform_rng": (self._transform_rng_after_step
                                  if self._transform_rng_after_step is not None
                                  else self.transform.get_rng_state()
                                  if hasattr(self.transform, "get_rng_state") else None),
                "gpucnn_rng": self._rng_after_step or _random.get_rng_state(), **self.extra_state}

    def save(self, path=None):
        """Save a checkpoint (default: ``run_dir/checkpoint.npz``); returns its path."""
        path = Path(path) if path is not None else self.checkpoint_path
        if path is None:
            raise ValueError("Trainer.save: no path given and the trainer has no run_dir")
        self._read_pending()      # a loss that went non-finite since the last read stops it here
        bad = self.nonfinite_tensor()
        if bad is not None:  # a checkpoint that cannot be resumed never replaces one that can
            raise NonFiniteError(f"Trainer.save: {bad} holds NaN or infinity; not saved to {path}")
        with self._no_interrupt():
            save_checkpoint(path, self.model, self.optimizer, config=self.config, state=self.state())
        if path == self.checkpoint_path:
            self._saved_step = self.global_step
        return path

    def restore(self, checkpoint):
        """Load weights, optimizer state and progress from a checkpoint (path or :class:`Checkpoint`).

        Everything is validated before anything changes.
        """
        ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
        bad = _first_nonfinite(ckpt.model_state, ckpt.optimizer_state)
        if bad is not None:  # e.g. a Checkpoint read with allow_non_finite=True
            raise CheckpointError(f"checkpoint {ckpt.path}: {bad[0]} holds NaN or infinity; "
                                  f"training cannot continue from it")
        st = ckpt.state
        try:
            epoch, step, gstep = int(st["epoch"]), int(st["step_in_epoch"]), int(st["global_step"])
            batch_size, seed = int(st["batch_size"]), int(st["seed"])
            history = list(st["history"])
            iterator_rng = st["iterator_rng"]
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {ckpt.path} has no usable training progress ({exc})") from None
        if batch_size != self.batch_size:
            raise CheckpointError(f"checkpoint {ckpt.path} was trained with batch size {batch_size}, "
                                  f"this trainer uses {self.batch_size}")
        if step and (st.get("epoch_start_rng") is None or st.get("epoch_stats") is None):
            raise CheckpointError(f"checkpoint {ckpt.path} stopped mid-epoch but lacks the epoch's RNG state")
        if step > len(self.iterator):  # step == len: the steps are done, the end of the epoch is not
            raise CheckpointError(f"checkpoint {ckpt.path} stopped at step {step} of an epoch, but an "
                                  f"epoch here has only {len(self.iterator)} steps (different data?)")
        probe = BatchIterator(self.train_set.images[:1], self.train_set.labels[:1], 1)
        probe.set_state(iterator_rng)  # validate before touching anything
        if ckpt.optimizer_state is None:
            raise CheckpointError(f"checkpoint {ckpt.path} holds no optimizer state")
        sched_state = st.get("scheduler")
        if (sched_state is None) != (self.scheduler is None) or (
                sched_state is not None and sched_state.get("type") != type(self.scheduler).__name__):
            had = sched_state.get("type") if isinstance(sched_state, dict) else "no schedule"
            has = type(self.scheduler).__name__ if self.scheduler is not None else "no schedule"
            raise CheckpointError(f"checkpoint {ckpt.path} was trained with {had}; this trainer "
                                  f"has {has}")
        if sched_state is not None:
            try:
                self.scheduler.check_state_dict(sched_state)
            except ValueError as exc:
                raise CheckpointError(f"checkpoint {ckpt.path}: {exc}") from None
        t_rng = st.get("transform_rng")
        if t_rng is not None and hasattr(self.transform, "get_rng_state"):
            mine = self.transform.get_rng_state()
            if isinstance(mine, list) != isinstance(t_rng, list) or (
                    isinstance(mine, list) and len(mine) != len(t_rng)):
                raise CheckpointError(f"checkpoint {ckpt.path} was trained with another "
                                      f"augmentation ({t_rng!r:.60}); this trainer has "
                                      f"{self.transform!r}")
        snapshot = self.model.state_dict()
        opt_snapshot = self.optimizer.state_dict()
        try:
            self.model.load_state_dict(ckpt.model_state)
            self.optimizer.load_state_dict(ckpt.optimizer_state)
            # gpucnn's generator after the checkpoint's last step: Dropout's masks continue
            rng = st.get("gpucnn_rng") or ckpt.meta.get("init_rng_state")
            if rng is not None:
                _random.set_rng_state(rng)
                self._rng_after_step = _random.get_rng_state()
        except (ValueError, TypeError) as exc:
            self.model.load_state_dict(snapshot)
            self.optimizer.load_state_dict(opt_snapshot)
            raise CheckpointError(f"checkpoint {ckpt.path} does not fit this model/optimizer: {exc}") from None
        self.iterator.set_state(iterator_rng)
        if self.scheduler is not None:
            self.scheduler.load_state_dict(sched_state)
        if st.get("transform_rng") is not None and hasattr(self.transform, "set_rng_state"):
            self.transform.set_rng_state(st["transform_rng"])
            self._transform_rng_after_step = st["transform_rng"]
        self.epoch, self.step_in_epoch, self.global_step = epoch, step, gstep
        self.seed = seed
        self.history = history
        if st.get("base_lr") is not None:
            self.base_lr = float(st["base_lr"])
            self.lr_decay = float(st.get("lr_decay", 1.0))
        self._epoch_start_rng = st.get("epoch_start_rng") if step else None
        self._stats = dict(st["epoch_stats"]) if step else self._fresh_stats()
        self._saved_step = gstep if self.checkpoint_path is not None and \
            Path(ckpt.path).resolve() == self.checkpoint_path.resolve() else None
        return ckpt

    # ------------------------------------------------------------------ loop
    def fit(self, epochs):
        """Train until ``epochs`` epochs are complete in total; returns the history (list of dicts).

        Raises :class:`TrainingDiverged` when the loss stops being finite and
        :class:`TrainingInterrupted` on Ctrl-C (after saving a checkpoint when the
        trainer has a run directory).
        """
        epochs = int(epochs)
        if epochs < 1:
            raise ValueError(f"Trainer.fit: epochs must be >= 1, got {epochs}")
        bad = self.nonfinite_tensor()
        if bad is not None:  # not a divergence: no learning rate or data changes this
            raise NonFiniteError(f"Trainer.fit: the {bad} holds NaN or infinity before training "
                                 f"starts; replace it (or the checkpoint it came from)")
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if self._rng_after_step is None:
            self._rng_after_step = _random.get_rng_state()
        self._buffers = self.model.buffers()   # BatchNorm's running statistics, if any
        previous_handlers = self._install_signals()
        try:
            while self.epoch < epochs:
                self._run_epoch(epochs)
                if self._stop_requested and self.epoch < epochs:
                    raise KeyboardInterrupt
        except TrainingInterrupted:
            self._plot(force=True)
            raise
        except KeyboardInterrupt:
            self._finishing = True
            interrupted = self._interrupted()
            interrupted.signal = self._signal_name
            self._plot(force=True)
            raise interrupted from None
        except TrainingDiverged:
            self._finishing = True
            self._plot(force=True)
            raise
        finally:
            self._restore_signals(previous_handlers)
            self._finishing = self._critical = self._deferred = False
        return self.history

    #: the signals that stop training with a checkpoint (SIGTERM: what schedulers send before a kill)
    STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM") if hasattr(signal, n))

    def _on_signal(self, signum, frame):
        """First Ctrl-C/SIGTERM: stop after this step.  Second: stop now, except inside a
        critical section (update, end-of-epoch state change, checkpoint write): right after it."""
        if self._finishing:
            return
        name = "SIGTERM" if signum == getattr(signal, "SIGTERM", None) else "Ctrl-C"
        if not self._stop_requested:
            self._stop_requested, self._signal_name = True, name
            again = " (press Ctrl-C again to stop at once)" if name == "Ctrl-C" else ""
            try:
                self.log(f"gpucnn: {name}: stopping after this step{again}")
            except RuntimeError:  # the signal came in the middle of a print: "reentrant call"
                pass
            return
        if self._critical:
            self._deferred = True
            return
        raise KeyboardInterrupt

    def _install_signals(self):
        self._stop_requested, self._signal_name = False, None
        self._finishing = self._critical = self._deferred = False
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}
        for sig in self.STOP_SIGNALS:
            try:
                previous[sig] = signal.signal(sig, self._on_signal)
            except (ValueError, OSError):
                pass
        return previous

    @staticmethod
    def _restore_signals(previous):
        for sig, handler in previous.items():
            try:
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
            except (ValueError, OSError, TypeError):
                pass

    @contextmanager
    def _no_interrupt(self):
        """A section that a signal never cuts in half; a hard stop asked inside takes effect at its end."""
        if self._critical:          # nested: the outer section decides
            yield
            return
        self._critical = True
        try:
            yield
        finally:
            self._critical = False
        if self._deferred and not self._finishing:
            self._deferred = False
            raise KeyboardInterrupt

    def _where(self):
        return f"epoch {self.epoch + 1}, step {self.step_in_epoch}"

    def _kept(self):
        """What is on disk when nothing new could be saved."""
        if self._saved_step is not None:
            return f"the last checkpoint ({self.checkpoint_path}, step {self._saved_step}) is kept. " \
                + self._resume_hint()
        return "no checkpoint was saved"

    def _interrupted(self):
        what = "training interrupted" + (f" ({self._signal_name})" if self._signal_name == "SIGTERM" else "")
        if self._updating:
            note = f"{what} during a parameter update, so the state in memory is inconsistent; "
            return TrainingInterrupted(note + self._kept(),
                                       checkpoint=self.checkpoint_path if self._saved_step is not None else None)
        if self.run_dir is None:
            return TrainingInterrupted(f"{what} at {self._where()}; no run directory, "
                                       "so no checkpoint was saved")
        if self.global_step == 0:
            return TrainingInterrupted(f"{what} before the first step finished; nothing to save")
        if self._saved_step != self.global_step:
            try:
                self._read_pending()
            except TrainingDiverged as exc:   # a loss went non-finite since the last read
                return TrainingInterrupted(
                    f"{what}; {exc.args[0].split('; training stopped')[0]}, so the state was not "
                    "saved; " + self._kept(),
                    checkpoint=self.checkpoint_path if self._saved_step is not None else None)
            bad = self.nonfinite_tensor()
            if bad is not None:
                return TrainingInterrupted(
                    f"{what}; {bad} is no longer finite (training diverged), so it was not saved; "
                    + self._kept(), checkpoint=self.checkpoint_path if self._saved_step is not None else None)
            try:
                self.save()
            except (Exception, KeyboardInterrupt) as exc:  # a full disk, ...: the old file is whole
                reason = " ".join(str(exc).split()) or type(exc).__name__
                return TrainingInterrupted(
                    f"{what}; the checkpoint could not be written ({reason}); "
                    + self._kept(), checkpoint=self.checkpoint_path if self._saved_step is not None else None)
        n = len(self.iterator)
        if self.step_in_epoch == 0:
            where = f"the end of epoch {self.epoch}"
        elif self.step_in_epoch == n:
            where = f"epoch {self.epoch + 1}, step {n} of {n} (the epoch's evaluation runs on resume)"
        else:
            where = f"epoch {self.epoch + 1}, step {self.step_in_epoch} of {n}"
        return TrainingInterrupted(
            f"{what}; checkpoint saved at {where} (global step {self.global_step}) "
            f"in {self.checkpoint_path}. " + self._resume_hint(), checkpoint=self.checkpoint_path)

    def _resume_hint(self):
        if {"data", "model", "epochs"} <= set(self.config):    # a `gpucnn train` run
            return f"Resume with: gpucnn train --resume {self.checkpoint_path} --epochs {self.config['epochs']}"
        return f"Resume with: trainer.restore('{self.checkpoint_path}') and then trainer.fit(epochs)"

    def _diverged(self, value, at_epoch_end=False, what="outputs", at=None):
        """TrainingDiverged; ``at`` = (step_in_epoch, global_step) of the step whose loss was
        read non-finite after the fact (default: the step in progress)."""
        lr = getattr(self.optimizer, "lr", None)
        bad = self.nonfinite_tensor()
        if self._updates == 0:
            # no update has run yet: the weights training started from are the cause, and no
            # learning rate changes them
            hint = (f"the {bad} training started from is not finite; a lower learning rate cannot help"
                    if bad else "the network overflows before any update (its starting weights are "
                    "finite); a lower learning rate cannot help")
        else:
            hint = (f"try a lower learning rate (--lr {lr / 10:g}; it is {lr:g} now)" if lr
                    else "try a lower learning rate")
        if self._saved_step is not None:
            kept = f"the last good checkpoint ({self.checkpoint_path}, step {self._saved_step}) is kept"
        elif self.run_dir is not None:
            kept = "no checkpoint was written (no epoch had finished)"
        else:
            kept = "no checkpoint was written (no run directory)"
        step = self.step_in_epoch + (0 if at_epoch_end else 1)
        gstep = self.global_step + (0 if at_epoch_end else 1)
        if at is not None:
            step, gstep = at
        if not at_epoch_end:
            what = f"the loss became {value} at epoch {self.epoch + 1}, step {step}"
        elif what == "weights":
            what = f"the {bad} became {value} by epoch {self.epoch + 1}, step {step}"
        else:
            what = f"the network's test outputs became {value} after epoch {self.epoch + 1}, step {step}"
        return TrainingDiverged(
            f"{what} (global step {gstep}); training stopped: {hint}; {kept}",
            epoch=self.epoch + 1, step=step, global_step=gstep,
            checkpoint=self.checkpoint_path if self._saved_step is not None else None)

    #: seconds between redraws of curves.png while training (it is always drawn at the end)
    plot_interval = 10.0

    def _plot(self, force=False):
        """Redraw curves.png: at the end, when stopping, and otherwise at most every plot_interval s."""
        if self.run_dir is None or not self.history or self._plotted_epochs == len(self.history):
            return
        now = time.perf_counter()
        if force or self._last_plot is None or now - self._last_plot >= self.plot_interval:
            plot_history(self.history, self.run_dir / CURVES_PNG, title=self.title)
            self._last_plot, self._plotted_epochs = time.perf_counter(), len(self.history)

    def _params_finite(self):
        return all(backends.backend_of(p.data).all_finite(p.data) for p in self.model.parameters())

    def nonfinite_tensor(self):
        """The name of the first weight or optimizer-state array holding NaN/inf, or None."""
        for name, p in self.model.named_parameters():
            if not backends.backend_of(p.data).all_finite(p.data):
                return f"weight {name}"
        for i, st in enumerate(getattr(self.optimizer, "state", None) or []):
            for key, v in (st.items() if isinstance(st, dict) else ()):
                if hasattr(v, "shape") and hasattr(v, "dtype") and v.dtype.kind == "f" \
                        and not backends.backend_of(v).all_finite(v):
                    return f"optimizer state {i}.{key}"
        return None

    def _run_epoch(self, epochs):
        """One epoch (or what is left of it after a resume): its steps, then the end of the epoch."""
        self._begin_epoch()
        backend = model_backend(self.model)
        bar = _progress_bar(len(self.iterator), self.step_in_epoch,
                            f"epoch {self.epoch + 1}/{epochs}", self.progress)
        self.model.train()
        try:
            for x, y in self.iterator.epoch(skip=self.step_in_epoch):
                loss = self._step(backend, x, y)
                self._after_step(loss, bar)
            self._read_pending(bar)
        finally:
            if bar is not None:
                bar.close()
        self._end_epoch(epochs)

    def _begin_epoch(self):
        """Remember (or, resuming mid-epoch, rewind to) the epoch's shuffle; set its learning rate."""
        if self.step_in_epoch == 0:
            self._epoch_start_rng = self.iterator.get_state()
            self._stats = self._fresh_stats()
        else:
            self.iterator.set_state(self._epoch_start_rng)
        if self.base_lr is not None and self.scheduler is None:
            self.optimizer.lr = self.base_lr * self.lr_decay ** self.epoch

    def _trusted_data(self):
        """Whether the training images were found finite (checked once, on the host): then the
        steps skip the per-step scan of the network's input (a device sync on a GPU)."""
        if self._data_finite is None:
            self._data_finite = bool(np.isfinite(self.train_set.images).all())
        return self._data_finite

    def _step(self, backend, x, y):
        """One mini-batch: forward, loss, explicit backward, optimizer update; returns the loss
        (a Scalar, not read here: reads happen every ``read_every`` steps, :meth:`_read_pending`)."""
        model, opt, loss_fn = self.model, self.optimizer, self.loss_fn
        t0 = time.perf_counter()
        if isinstance(x, np.ndarray):      # a host batch (BatchIterator, or data in host memory)
            xb, yb = to_model_device(backend, model, x), backend.asarray(y)
        else:                              # gathered on the device (DeviceBatchIterator)
            xb, yb = x, y
        if self.transform is not None:     # augmentation, by the backend that holds the batch
            xb = self.transform(xb)
        deferred = self.read_every > 1
        trusted = deferred and self._trusted_data()
        opt.zero_grad()
        # the forward updates BatchNorm's running statistics in place: an interruption before
        # the update below puts them back, so a checkpoint holds the last completed step
        # (device-side copies of a few small arrays; nothing when the model has no buffers)
        saved = [(b, b.data.copy() if b.dtype.kind == "f" else b.data) for b in self._buffers]
        # overflow is expected when a run diverges: the loss check reports it, in one
        # line, instead of NumPy printing RuntimeWarnings
        with quiet_overflow():
            if self.graph is not None and self.graph.accepts(xb, yb):
                with self._no_interrupt():   # capture or replay: the update inside, all or nothing
                    self._updating = True
                    done = self.graph.step(xb, yb)
                    self._updating = False
                if done is not None:
                    self._commit_step(done[0], done[1], len(y), t0)
                    return done[0]
            try:
                try:
                    with _trusted_input(trusted):
                        out = model(xb)
                    loss = loss_fn(out, yb)
                except NonFiniteError as exc:
                    data_ok = bool(np.isfinite(x).all()) if isinstance(x, np.ndarray) \
                        else self._trusted_data()
                    if data_ok or not self._params_finite():  # not the data's fault
                        raise self._diverged("NaN/infinite (non-finite activations)") from exc
                    raise
                if not deferred and not math.isfinite(loss):
                    raise self._diverged(loss)
                correct = (out.argmax(axis=1) == yb).sum()
                with _trusted_input(trusted):
                    model.backward(loss_fn.backward(), input_grad=False)
            except KeyboardInterrupt:
                for b, data in saved:
                    b.data = data
                raise
            self._commit_step(loss, correct, len(y), t0, opt.step)
        return loss

    def _commit_step(self, loss, correct, n, t0, update=None):
        """The update (when not already replayed) and the step's bookkeeping: all or nothing."""
        with self._no_interrupt():
            if update is not None:
                self._updating = True
                update()
                self._updating = False
            self._pending.append((self.step_in_epoch + 1, self.global_step + 1, loss, correct, n))
            self._stats["time"] += time.perf_counter() - t0
            self._advance()

    def _advance(self):
        """After an update: the per-step schedule, the counters, and the generator states a
        checkpoint stores (inside the caller's ``_no_interrupt``)."""
        if self.scheduler is not None and self.scheduler_interval == "step":
            self.scheduler.step()
        self._updates += 1
        self.step_in_epoch += 1
        self.global_step += 1
        # Dropout draws from gpucnn's generator: a checkpoint stores its state after
        # the last completed step, not the state an interrupted step left behind
        self._rng_after_step = _random.get_rng_state()
        if self.transform is not None and hasattr(self.transform, "get_rng_state"):
            self._transform_rng_after_step = self.transform.get_rng_state()

    def _read_pending(self, bar=None):
        """Read the losses and correct counts of the steps since the last read (one device
        sync), check them, and add them to the epoch's figures in step order.

        A non-finite loss raises TrainingDiverged naming its step; the figures keep only
        the steps before it (nothing after it is ever saved)."""
        pending, self._pending = self._pending, []
        self._last_read = time.perf_counter()
        if not pending:
            return
        t0 = time.perf_counter()
        losses, corrects = _read_values([p[2] for p in pending], [p[3] for p in pending])
        stats = self._stats
        for (step, gstep, _, _, n), loss, correct in zip(pending, losses, corrects):
            if not math.isfinite(loss):
                self._pending = []
                raise self._diverged(loss, at=(step, gstep))
            stats["loss_sum"] += loss * n
            stats["correct"] += correct
            stats["seen"] += n
        stats["time"] += time.perf_counter() - t0
        if bar is not None:
            bar.set_postfix_str(f"loss {stats['loss_sum'] / stats['seen']:.4f}, "
                                f"{stats['seen'] / max(stats['time'], 1e-9):,.0f} img/s", refresh=False)

    def _after_step(self, loss, bar):
        """Progress bar, the on_step callback, and a stop that Ctrl-C asked for."""
        if len(self._pending) >= self.read_every or \
                time.perf_counter() - self._last_read >= self.read_interval:
            self._read_pending(bar)
        if bar is not None:
            bar.update(1)
        if self.on_step is not None:
            self.on_step(self, {"epoch": self.epoch + 1, "step": self.step_in_epoch,
                                "global_step": self.global_step, "loss": loss})
        if self._stop_requested:
            raise KeyboardInterrupt

    def _end_epoch(self, epochs):
        """Evaluate, record, log; with a run directory save the checkpoint, history and curves."""
        self._read_pending()
        stats = self._stats
        t_eval = time.perf_counter()
        record = {"epoch": self.epoch + 1,
                  "train_loss": stats["loss_sum"] / stats["seen"],
                  "train_acc": stats["correct"] / stats["seen"]}
        record["test_loss"], record["test_acc"] = self._test()
        record["time_s"] = stats["time"] + (time.perf_counter() - t_eval)
        record["images_per_s"] = stats["seen"] / max(stats["time"], 1e-9)
        if self.nonfinite_tensor() is not None:   # e.g. an inf weight that ReLU hides from the loss
            raise self._diverged("NaN/infinite", at_epoch_end=True, what="weights")
        with self._no_interrupt():   # the epoch's end and its checkpoint: all or nothing
            self.history.append(record)
            if self.scheduler is not None and self.scheduler_interval == "epoch":
                self.scheduler.step()
            self.epoch += 1
            self.step_in_epoch = 0
            self._stats = self._fresh_stats()
            self.log(self.format_epoch(record, epochs))
            if self.run_dir is not None:
                self.save()
        if self.run_dir is not None:
            write_history(self.history, self.run_dir, self.config)
            self._plot(force=self.epoch >= epochs)
        if self.on_epoch is not None:
            self.on_epoch(self, record)

    def _test(self):
        """(loss, accuracy) on the test set, or (None, None) without one."""
        if self.test_set is None:
            return None, None
        try:
            with quiet_overflow():
                res = evaluate(self.model, self.test_set, batch_size=self.eval_batch_size,
                               classes=self.classes)
        except NonFiniteError as exc:
            if np.isfinite(self.test_set.images).all():
                raise self._diverged("NaN/infinite", at_epoch_end=True) from exc
            raise
        return res.loss, res.accuracy

    @staticmethod
    def format_epoch(rec, epochs):
        width = len(str(epochs))
        line = (f"epoch {rec['epoch']:>{width}}/{epochs}  train loss {rec['train_loss']:.4f}  "
                f"train acc {100 * rec['train_acc']:6.2f}%")
        if rec.get("test_acc") is not None:
            line += f"  test loss {rec['test_loss']:.4f}  test acc {100 * rec['test_acc']:6.2f}%"
        return line + f"  {rec['time_s']:.1f} s  ({rec['images_per_s']:,.0f} img/s)"


@contextmanager
def _trusted_input(trusted):
    """Skip the network's own NaN/inf scan of its input and of the loss gradient when the
    data set was checked once (on a GPU each scan is a device sync)."""
    if not trusted:
        yield
        return
    from .layers import _inside
    with _inside():
        yield


def _read_values(losses, corrects):
    """The losses (Scalars) and correct counts (0-d arrays or ints) as Python floats and
    ints, with one transfer per kind for device arrays."""
    arrays = [l.array for l in losses]
    first = arrays[0]
    if isinstance(first, np.ndarray) or not hasattr(first, "get"):
        return [float(l) for l in losses], [int(c) for c in corrects]
    xp = __import__("cupy")
    host_l = xp.stack(arrays).get()
    host_c = xp.stack([xp.asarray(c) for c in corrects]).get()
    return [float(v) for v in host_l], [int(v) for v in host_c]


def make_optimizer(name, params, lr, *, momentum=0.9, weight_decay=0.0):
    """``"sgd"`` (with ``momentum``) or ``"adam"`` over ``params``."""
    from .optim import SGD, Adam
    if name == "sgd":
        return SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return Adam(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; expected 'sgd' or 'adam'")


def fit(model, train, test=None, *, epochs=10, lr=1e-3, optimizer="adam", batch_size=64, seed=0,
        lr_decay=1.0, run_dir=None, config=None, progress=True, log=print, on_step=None, on_epoch=None,
        classes=None) -> Trainer:
    """Train ``model`` for ``epochs`` epochs and return the :class:`Trainer` (``.history`` holds the records).

    ``optimizer`` is ``"adam"``, ``"sgd"`` (momentum 0.9) or an optimizer object
    built over ``model.parameters()`` (then ``lr`` is ignored).  ``train`` and
    ``test`` are :class:`~gpucnn.data.ImageSet` or ``(images, labels)`` numpy pairs.
    See :class:`Trainer` for the other arguments.
    """
    if isinstance(optimizer, str):
        optimizer = make_optimizer(optimizer, model.parameters(), lr)
    trainer = Trainer(model, optimizer, train, test, batch_size=batch_size, seed=seed, run_dir=run_dir,
                      config=config, classes=classes, progress=progress, log=log,
                      on_step=on_step, on_epoch=on_epoch, lr_decay=lr_decay)
    trainer.fit(epochs)
    return trainer
