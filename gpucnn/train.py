"""Training loop, evaluation, checkpoints, history and plots.

The pieces, from small to large:

* :func:`evaluate` -- accuracy, mean loss and confusion matrix of a model on an
  image set; :func:`predict_proba` -- class probabilities.
* :func:`save_checkpoint` / :func:`load_checkpoint` -- weights, optimizer state,
  progress, RNG state and the run's configuration in one ``.npz`` file read
  with ``allow_pickle=False``; written atomically; validated on load.
* :class:`Trainer` -- the loop: seeded mini-batches, forward, loss, explicit
  backward, optimizer step; a progress bar, one line per epoch, the run
  directory (checkpoint, ``history.json``/``history.csv``, ``curves.png``),
  Ctrl-C that saves and says how to resume, a stop with a clear message when
  the loss stops being finite.  :func:`fit` wraps it in one call.
* :class:`TrainConfig` and :func:`run_training` -- what ``gpucnn train`` does:
  dataset + model + optimizer from a configuration, a new run directory or a
  resumed one.

A minimal script::

    import gpucnn as nn
    from gpucnn.data import load_dataset
    from gpucnn.models import lenet
    from gpucnn.train import fit, evaluate

    data = load_dataset("digits")
    model = lenet(data.input_shape, data.num_classes)
    trainer = fit(model, data.train, data.test, epochs=5, lr=1e-3, run_dir="runs/mine")
    print(evaluate(model, data.test).accuracy)
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path

import numpy as np

from . import backends
from .data import DATASETS, BatchIterator, Dataset, ImageSet, load_dataset

__all__ = [
    "Trainer", "fit", "evaluate", "predict_proba", "EvalResult",
    "save_checkpoint", "load_checkpoint", "Checkpoint", "CheckpointError",
    "TrainingDiverged", "TrainingInterrupted", "TrainConfig", "RunResult", "run_training",
    "load_model", "make_optimizer", "dataset_for", "predict_logits", "plot_history", "plot_confusion", "write_history", "atomic_write",
    "DEFAULTS", "CHECKPOINT_NAME", "OUTPUT_FILES",
]

FORMAT = "gpucnn-checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.npz"
HISTORY_JSON = "history.json"
HISTORY_CSV = "history.csv"
CURVES_PNG = "curves.png"
#: The files a training run writes into its run directory.
OUTPUT_FILES = (CHECKPOINT_NAME, HISTORY_JSON, HISTORY_CSV, CURVES_PNG)


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, truncated, or not a gpucnn checkpoint."""


class TrainingDiverged(RuntimeError):
    """The loss (or the network's activations) stopped being finite.

    ``epoch`` and ``step`` (1-based) name the step; ``checkpoint`` is the last
    good checkpoint on disk, or None.
    """

    def __init__(self, message, *, epoch=None, step=None, global_step=None, checkpoint=None):
        super().__init__(message)
        self.epoch, self.step, self.global_step, self.checkpoint = epoch, step, global_step, checkpoint


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (or a KeyboardInterrupt from a callback) stopped :meth:`Trainer.fit`.

    ``checkpoint`` is where the state at the last completed step was saved (None
    if nothing could be saved); ``message`` says what happened and how to resume.
    """

    def __init__(self, message, *, checkpoint=None):
        super().__init__(message)
        self.message, self.checkpoint = message, checkpoint

    def __str__(self):
        return self.message


# =========================================================================== atomic files

def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write):
    """Write a file so that readers see the old content or the new, never a mix.

    ``write(f)`` fills a temporary file (binary) in the same directory; it is
    flushed, fsync'ed and renamed over ``path`` with ``os.replace``.  If
    ``write`` fails the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)
    return path


# =========================================================================== checkpoints

def _pack(obj, arrays, prefix):
    """JSON-able copy of ``obj`` with every array moved into ``arrays`` (a placeholder stays)."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"checkpoint: dictionary keys must be strings, got {k!r}")
            out[k] = _pack(v, arrays, f"{prefix}/{k}")
        return out
    if isinstance(obj, tuple):
        return {"__tuple__": [_pack(v, arrays, f"{prefix}/{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_pack(v, arrays, f"{prefix}/{i}") for i, v in enumerate(obj)]
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):
        a = np.asarray(backends.asnumpy(obj))
        if a.dtype.kind not in "biuf":
            raise TypeError(f"checkpoint: cannot store an array of dtype {a.dtype} at {prefix}")
        if a.ndim == 0:
            return a.item()
        key = f"{prefix}#{len(arrays)}"
        arrays[key] = a
        return {"__array__": key}
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"checkpoint: cannot store a {type(obj).__name__} at {prefix}")


def _unpack(obj, arrays, where):
    if isinstance(obj, dict):
        if set(obj) == {"__array__"}:
            key = obj["__array__"]
            if key not in arrays:
                raise CheckpointError(f"{where}: array entry {key!r} is missing")
            return arrays[key]
        if set(obj) == {"__tuple__"}:
            return tuple(_unpack(v, arrays, where) for v in obj["__tuple__"])
        return {k: _unpack(v, arrays, where) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unpack(v, arrays, where) for v in obj]
    return obj


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns.

    ``config``: the run's configuration (a dict; for ``gpucnn train`` runs,
    :class:`TrainConfig` fields); ``state``: progress (epoch, step, RNG states,
    history, ...); ``model_state``: name -> numpy array for
    ``Module.load_state_dict``; ``optimizer_state``: for
    ``Optimizer.load_state_dict`` (or None); ``meta``: format, version, creation time.
    """

    path: Path
    config: dict
    state: dict
    model_state: dict
    optimizer_state: dict | None
    meta: dict


def save_checkpoint(path, model, optimizer=None, *, config=None, state=None):
    """Write ``model`` (+ ``optimizer``) weights/state, ``config`` and ``state`` to ``path``.

    The file is an ``.npz`` archive: one array per parameter (``model/<name>``),
    one per optimizer state array, and ``__meta__``, a JSON string with
    everything else.  Nothing is pickled.  The write is atomic.
    """
    from . import __version__
    from . import random as _random
    arrays = {}
    model_state = model.state_dict()
    for name, a in model_state.items():
        arrays[f"model/{name}"] = np.asarray(a)
    meta = {
        "format": FORMAT, "version": FORMAT_VERSION, "gpucnn_version": __version__,
        "created": datetime.now().astimezone().isoformat(timespec="seconds"),
        "model_keys": list(model_state),
        "optimizer": _pack(optimizer.state_dict(), arrays, "optim") if optimizer is not None else None,
        "config": _pack(dict(config or {}), arrays, "config"),
        "state": _pack(dict(state or {}), arrays, "state"),
        "init_rng_state": _pack(_random.get_rng_state(), arrays, "rng"),
    }
    arrays["__meta__"] = np.array(json.dumps(meta, allow_nan=True))
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def load_checkpoint(path) -> Checkpoint:
    """Read and validate a checkpoint written by :func:`save_checkpoint`.

    Raises :class:`CheckpointError` (naming the file and the problem) for a
    missing, truncated, corrupt or foreign file; never unpickles anything.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        if (path / CHECKPOINT_NAME).is_file():
            path = path / CHECKPOINT_NAME
        else:
            raise CheckpointError(f"checkpoint {path} is a folder without a {CHECKPOINT_NAME}")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read ({exc})") from None
    if head != b"PK\x03\x04":
        raise CheckpointError(f"{path} is not a gpucnn checkpoint (not an .npz archive"
                              f"{'; the file is empty' if not head else ''})")
    arrays = {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = list(npz.files)
            if "__meta__" not in names:
                raise CheckpointError(f"{path} is an .npz archive but not a gpucnn checkpoint "
                                      f"(no __meta__ entry)")
            for name in names:
                arrays[name] = np.array(npz[name])  # reads every member: CRC errors surface here
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({exc})") from None
    try:
        meta = json.loads(str(arrays.pop("__meta__")[()]))
    except (ValueError, TypeError, IndexError) as exc:
        raise CheckpointError(f"checkpoint {path}: its __meta__ entry is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a gpucnn checkpoint (format "
                              f"{meta.get('format') if isinstance(meta, dict) else None!r})")
    version = meta.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {version!r}; this gpucnn reads "
                              f"version {FORMAT_VERSION} and older (upgrade gpucnn)")
    keys = meta.get("model_keys")
    if not isinstance(keys, list) or not keys:
        raise CheckpointError(f"checkpoint {path} lists no model parameters")
    missing = [k for k in keys if f"model/{k}" not in arrays]
    if missing:
        raise CheckpointError(f"checkpoint {path} is missing parameter arrays: {', '.join(missing)}")
    model_state = {k: arrays[f"model/{k}"] for k in keys}
    where = f"checkpoint {path}"
    optimizer_state = _unpack(meta.get("optimizer"), arrays, where)
    config = _unpack(meta.get("config") or {}, arrays, where)
    state = _unpack(meta.get("state") or {}, arrays, where)
    meta["init_rng_state"] = _unpack(meta.get("init_rng_state"), arrays, where)
    return Checkpoint(path=path, config=config, state=state, model_state=model_state,
                      optimizer_state=optimizer_state, meta=meta)


# =========================================================================== evaluation

def _as_imageset(data, what):
    if data is None or isinstance(data, ImageSet):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        images, labels = data
        return ImageSet(np.asarray(images), np.asarray(labels, dtype=np.int64))
    raise TypeError(f"{what}: expected an ImageSet or an (images, labels) pair, got {type(data).__name__}")


def _model_backend(model):
    """The backend that owns the model's parameters (inputs must go there too)."""
    params = model.parameters()
    return backends.backend_of(params[0].data) if params else backends.get_backend("cpu")


def _batches_to_device(backend, model, x):
    return backend.asarray(np.ascontiguousarray(x), dtype=model.dtype)


def predict_logits(model, images, batch_size=500) -> np.ndarray:
    """Raw network outputs for ``images`` (N, C, H, W) as a numpy array (N, classes)."""
    backend = _model_backend(model)
    was_training = model.training
    model.eval()
    try:
        outs = [backends.asnumpy(model(_batches_to_device(backend, model, images[i:i + batch_size])))
                for i in range(0, len(images), batch_size)]
    finally:
        model.train(was_training)
    return np.concatenate(outs).astype(np.float64)


def predict_proba(model, images, batch_size=500) -> np.ndarray:
    """Softmax probabilities (float64, rows sum to 1) for ``images`` (N, C, H, W)."""
    logits = predict_logits(model, images, batch_size)
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


@dataclass
class EvalResult:
    """Accuracy (0..1), mean cross-entropy loss and the confusion matrix.

    ``confusion[t, p]`` counts images of true class ``t`` predicted as ``p``.
    """

    accuracy: float
    loss: float
    correct: int
    total: int
    confusion: np.ndarray
    classes: tuple

    def per_class(self):
        """One dict per class: name, count, correct, accuracy (recall) and precision."""
        rows = []
        for i, name in enumerate(self.classes):
            count = int(self.confusion[i].sum())
            hit = int(self.confusion[i, i])
            predicted = int(self.confusion[:, i].sum())
            rows.append({"class": name, "count": count, "correct": hit,
                         "accuracy": hit / count if count else float("nan"),
                         "precision": hit / predicted if predicted else float("nan")})
        return rows

    def format_table(self):
        """The per-class table as aligned text."""
        width = max(5, max(len(str(c)) for c in self.classes))
        lines = [f"{'class':<{width}}  {'images':>6}  {'correct':>7}  {'accuracy':>8}  {'precision':>9}"]
        for r in self.per_class():
            lines.append(f"{r['class']:<{width}}  {r['count']:>6}  {r['correct']:>7}  "
                         f"{_pct(r['accuracy']):>8}  {_pct(r['precision']):>9}")
        lines.append(f"{'all':<{width}}  {self.total:>6}  {self.correct:>7}  {_pct(self.accuracy):>8}")
        return "\n".join(lines)


def _pct(x):
    return "-" if x != x else f"{100 * x:.2f}%"


def evaluate(model, data, *, batch_size=500, classes=None) -> EvalResult:
    """Evaluate ``model`` on ``data`` (an :class:`ImageSet` or ``(images, labels)``).

    Runs in eval mode (restored afterwards), on the model's device, in batches.
    ``classes`` names the classes (default ``"0"``, ``"1"``, ...).
    """
    from .losses import CrossEntropyLoss
    data = _as_imageset(data, "evaluate")
    if len(data) == 0:
        raise ValueError("evaluate: the data set is empty")
    backend = _model_backend(model)
    loss_fn = CrossEntropyLoss()
    was_training = model.training
    model.eval()
    preds, loss_sum = [], 0.0
    try:
        for i in range(0, len(data), batch_size):
            x, y = data.images[i:i + batch_size], data.labels[i:i + batch_size]
            out = model(_batches_to_device(backend, model, x))
            loss_sum += loss_fn(out, backend.asarray(y)) * len(y)
            preds.append(backends.asnumpy(out.argmax(axis=1)))
    finally:
        model.train(was_training)
    pred = np.concatenate(preds).astype(np.int64)
    k = int(max(pred.max(), data.labels.max()) + 1)
    if classes is not None:
        k = max(k, len(classes))
    classes = tuple(classes) if classes is not None else tuple(str(i) for i in range(k))
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (data.labels, pred), 1)
    correct = int(np.trace(confusion))
    return EvalResult(accuracy=correct / len(data), loss=loss_sum / len(data), correct=correct,
                      total=len(data), confusion=confusion, classes=classes)


# =========================================================================== history and plots

def write_history(history, run_dir, config=None):
    """Write ``history.json`` (config + one record per epoch) and ``history.csv`` atomically."""
    run_dir = Path(run_dir)
    doc = {"config": config or {}, "epochs": history}
    atomic_write(run_dir / HISTORY_JSON,
                 lambda f: f.write((json.dumps(doc, indent=2) + "\n").encode()))
    columns = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "time_s", "images_per_s"]

    def write_csv(f):
        text = io.StringIO()
        w = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for rec in history:
            w.writerow({k: rec.get(k, "") for k in columns})
        f.write(text.getvalue().encode())

    atomic_write(run_dir / HISTORY_CSV, write_csv)


def _figure(figsize):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)  # Agg, without touching pyplot's global state
    return fig


def plot_history(history, path, title=None):
    """PNG with the loss (left) and accuracy (right) per epoch, train and test."""
    epochs = [r["epoch"] for r in history]
    fig = _figure((10, 4))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    if any(r.get("test_loss") is not None for r in history):
        ax1.plot(epochs, [r.get("test_loss") for r in history], "s-", label="test")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("cross-entropy loss")
    ax1.set_yscale("log")
    ax1.grid(True, alpha=0.3)
    ax1.legend()
    ax2.plot(epochs, [100 * r["train_acc"] for r in history], "o-", label="train")
    if any(r.get("test_acc") is not None for r in history):
        ax2.plot(epochs, [100 * r["test_acc"] if r.get("test_acc") is not None else None
                          for r in history], "s-", label="test")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("accuracy (%)")
    ax2.grid(True, alpha=0.3)
    ax2.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    return Path(path)


def plot_confusion(confusion, classes, path, title=None):
    """PNG of a confusion matrix (rows: true class, columns: predicted), counts in the cells."""
    confusion = np.asarray(confusion)
    k = len(classes)
    fig = _figure((1.2 + 0.55 * k, 1.0 + 0.5 * k))
    ax = fig.subplots()
    im = ax.imshow(confusion, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(k))
    ax.set_xticklabels(classes, rotation=45 if max(len(c) for c in classes) > 2 else 0, ha="right"
                       if max(len(c) for c in classes) > 2 else "center")
    ax.set_yticks(range(k))
    ax.set_yticklabels(classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    vmax = confusion.max() if confusion.size else 0
    for t in range(k):
        for p in range(k):
            if confusion[t, p]:
                ax.text(p, t, str(confusion[t, p]), ha="center", va="center", fontsize=8,
                        color="white" if confusion[t, p] > vmax / 2 else "black")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    return Path(path)


# =========================================================================== the loop

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
    on_step, on_epoch
        Optional callbacks ``on_step(trainer, info)`` after every completed step
        (``info``: epoch, step, global_step, loss) and ``on_epoch(trainer, record)``
        after every epoch.  Raising ``KeyboardInterrupt`` in one stops training
        as Ctrl-C does.

    ``fit(epochs)`` trains until ``epochs`` epochs are complete in total, so a
    trainer restored from a checkpoint (:meth:`restore`) continues where it
    stopped -- on the CPU backend bitwise as if it had never stopped.
    """

    def __init__(self, model, optimizer, train, test=None, *, loss_fn=None, batch_size=64, seed=0,
                 run_dir=None, config=None, classes=None, progress=True, log=print,
                 on_step=None, on_epoch=None, eval_batch_size=500, extra_state=None, title=None,
                 lr_decay=1.0):
        from .losses import CrossEntropyLoss
        self.model = model
        self.optimizer = optimizer
        self.train_set = _as_imageset(train, "Trainer")
        self.test_set = _as_imageset(test, "Trainer")
        self.loss_fn = loss_fn if loss_fn is not None else CrossEntropyLoss()
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.iterator = BatchIterator(self.train_set.images, self.train_set.labels, self.batch_size,
                                      seed=self.seed)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.config = dict(config or {})
        self.classes = tuple(classes) if classes is not None else None
        self.progress = progress
        self.log = log if log is not None else (lambda *_: None)
        self.on_step, self.on_epoch = on_step, on_epoch
        self.eval_batch_size = int(eval_batch_size)
        self.extra_state = dict(extra_state or {})
        self.lr_decay = float(lr_decay)
        if not 0.0 < self.lr_decay <= 1.0:
            raise ValueError(f"Trainer: lr_decay must be in (0, 1], got {lr_decay!r}")
        self.base_lr = getattr(optimizer, "lr", None)
        self.title = title
        self.history = []
        self.epoch = 0            # completed epochs
        self.step_in_epoch = 0    # completed steps of the epoch in progress
        self.global_step = 0      # completed steps in all
        self._epoch_start_rng = None
        self._stats = self._fresh_stats()
        self._saved_step = None   # global_step of the checkpoint on disk (None: none written)
        self._stop_requested = False
        self._updating = False
        self._last_plot = None
        self._plotted_epochs = 0

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
                "history": self.history, **self.extra_state}

    def save(self, path=None):
        """Save a checkpoint (default: ``run_dir/checkpoint.npz``); returns its path."""
        path = Path(path) if path is not None else self.checkpoint_path
        if path is None:
            raise ValueError("Trainer.save: no path given and the trainer has no run_dir")
        save_checkpoint(path, self.model, self.optimizer, config=self.config, state=self.state())
        if path == self.checkpoint_path:
            self._saved_step = self.global_step
        return path

    def restore(self, checkpoint):
        """Load weights, optimizer state and progress from a checkpoint (path or :class:`Checkpoint`).

        Everything is validated before anything changes.
        """
        ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
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
        if step >= len(self.iterator):
            raise CheckpointError(f"checkpoint {ckpt.path} stopped at step {step} of an epoch, but an "
                                  f"epoch here has only {len(self.iterator)} steps (different data?)")
        probe = BatchIterator(self.train_set.images[:1], self.train_set.labels[:1], 1)
        probe.set_state(iterator_rng)  # validate before touching anything
        if ckpt.optimizer_state is None:
            raise CheckpointError(f"checkpoint {ckpt.path} holds no optimizer state")
        snapshot = self.model.state_dict()
        opt_snapshot = self.optimizer.state_dict()
        try:
            self.model.load_state_dict(ckpt.model_state)
            self.optimizer.load_state_dict(ckpt.optimizer_state)
        except (ValueError, TypeError) as exc:
            self.model.load_state_dict(snapshot)
            self.optimizer.load_state_dict(opt_snapshot)
            raise CheckpointError(f"checkpoint {ckpt.path} does not fit this model/optimizer: {exc}") from None
        self.iterator.set_state(iterator_rng)
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
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        previous_handler = self._install_sigint()
        try:
            while self.epoch < epochs:
                self._run_epoch(epochs)
                if self._stop_requested and self.epoch < epochs:
                    raise KeyboardInterrupt
        except TrainingInterrupted:
            self._plot(force=True)
            raise
        except KeyboardInterrupt:
            interrupted = self._interrupted()
            self._plot(force=True)
            raise interrupted from None
        except TrainingDiverged:
            self._plot(force=True)
            raise
        finally:
            self._restore_sigint(previous_handler)
        return self.history

    def _install_sigint(self):
        self._stop_requested = False
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum, frame):
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True
            self.log("gpucnn: stopping after this step (press Ctrl-C again to stop at once)")

        try:
            return signal.signal(signal.SIGINT, handler)
        except ValueError:
            return None

    @staticmethod
    def _restore_sigint(previous):
        if previous is not None:
            try:
                signal.signal(signal.SIGINT, previous)
            except ValueError:
                pass

    def _where(self):
        return f"epoch {self.epoch + 1}, step {self.step_in_epoch}"

    def _interrupted(self):
        if self._updating:
            note = "interrupted during a parameter update, so the state in memory is inconsistent; "
            if self._saved_step is not None:
                return TrainingInterrupted(
                    note + f"the last checkpoint ({self.checkpoint_path}, step {self._saved_step}) is kept. "
                    + self._resume_hint(), checkpoint=self.checkpoint_path)
            return TrainingInterrupted(note + "no checkpoint was saved")
        if self.run_dir is None:
            return TrainingInterrupted(f"training interrupted at {self._where()}; no run directory, "
                                       "so no checkpoint was saved")
        if self.global_step == 0:
            return TrainingInterrupted("training interrupted before the first step finished; nothing to save")
        if self._saved_step != self.global_step:
            self.save()
        where = (f"the end of epoch {self.epoch}" if self.step_in_epoch == 0
                 else f"epoch {self.epoch + 1}, step {self.step_in_epoch} of {len(self.iterator)}")
        return TrainingInterrupted(
            f"training interrupted; checkpoint saved at {where} (global step {self.global_step}) "
            f"in {self.checkpoint_path}. " + self._resume_hint(), checkpoint=self.checkpoint_path)

    def _resume_hint(self):
        if {"data", "model", "epochs"} <= set(self.config):    # a `gpucnn train` run
            return f"Resume with: gpucnn train --resume {self.checkpoint_path} --epochs {self.config['epochs']}"
        return f"Resume with: trainer.restore('{self.checkpoint_path}') and then trainer.fit(epochs)"

    def _diverged(self, value, at_epoch_end=False):
        lr = getattr(self.optimizer, "lr", None)
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
        what = (f"the network's test outputs became {value} after epoch {self.epoch + 1}, step {step}"
                if at_epoch_end else f"the loss became {value} at epoch {self.epoch + 1}, step {step}")
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

    def _run_epoch(self, epochs):
        model, opt, loss_fn = self.model, self.optimizer, self.loss_fn
        backend = _model_backend(model)
        if self.step_in_epoch == 0:
            self._epoch_start_rng = self.iterator.get_state()
            self._stats = self._fresh_stats()
        else:
            self.iterator.set_state(self._epoch_start_rng)
        if self.base_lr is not None:
            opt.lr = self.base_lr * self.lr_decay ** self.epoch
        n_steps = len(self.iterator)
        desc = f"epoch {self.epoch + 1}/{epochs}"
        bar = _progress_bar(n_steps, self.step_in_epoch, desc, self.progress)
        model.train()
        stats = self._stats
        try:
            for x, y in self.iterator.epoch(skip=self.step_in_epoch):
                t0 = time.perf_counter()
                xb = _batches_to_device(backend, model, x)
                yb = backend.asarray(y)
                opt.zero_grad()
                try:
                    out = model(xb)
                    loss = loss_fn(out, yb)
                except ValueError as exc:
                    if "NaN or infinity" in str(exc) and (np.isfinite(x).all() or not self._params_finite()):
                        raise self._diverged("NaN/infinite (non-finite activations)") from exc
                    raise
                if not math.isfinite(loss):
                    raise self._diverged(loss)
                correct = int((backends.asnumpy(out.argmax(axis=1)) == y).sum())
                model.backward(loss_fn.backward(), input_grad=False)
                self._updating = True
                opt.step()
                self._updating = False
                dt = time.perf_counter() - t0
                stats["loss_sum"] += loss * len(y)
                stats["correct"] += correct
                stats["seen"] += len(y)
                stats["time"] += dt
                self.step_in_epoch += 1
                self.global_step += 1
                if bar is not None:
                    bar.set_postfix_str(f"loss {stats['loss_sum'] / stats['seen']:.4f}, "
                                        f"{stats['seen'] / max(stats['time'], 1e-9):,.0f} img/s",
                                        refresh=False)
                    bar.update(1)
                if self.on_step is not None:
                    self.on_step(self, {"epoch": self.epoch + 1, "step": self.step_in_epoch,
                                        "global_step": self.global_step, "loss": loss})
                if self._stop_requested:
                    raise KeyboardInterrupt
        finally:
            if bar is not None:
                bar.close()
        # ---- end of epoch: evaluate, record, save
        t_eval = time.perf_counter()
        record = {"epoch": self.epoch + 1,
                  "train_loss": stats["loss_sum"] / stats["seen"],
                  "train_acc": stats["correct"] / stats["seen"],
                  "test_loss": None, "test_acc": None}
        if self.test_set is not None:
            try:
                res = evaluate(model, self.test_set, batch_size=self.eval_batch_size, classes=self.classes)
            except ValueError as exc:
                if "NaN or infinity" in str(exc) and np.isfinite(self.test_set.images).all():
                    raise self._diverged("NaN/infinite", at_epoch_end=True) from exc
                raise
            record["test_loss"], record["test_acc"] = res.loss, res.accuracy
        record["time_s"] = stats["time"] + (time.perf_counter() - t_eval)
        record["images_per_s"] = stats["seen"] / max(stats["time"], 1e-9)
        self.history.append(record)
        self.epoch += 1
        self.step_in_epoch = 0
        self._stats = self._fresh_stats()
        self.log(self.format_epoch(record, epochs))
        if self.run_dir is not None:
            self.save()
            write_history(self.history, self.run_dir, self.config)
            self._plot(force=self.epoch >= epochs)
        if self.on_epoch is not None:
            self.on_epoch(self, record)

    @staticmethod
    def format_epoch(rec, epochs):
        width = len(str(epochs))
        line = (f"epoch {rec['epoch']:>{width}}/{epochs}  train loss {rec['train_loss']:.4f}  "
                f"train acc {100 * rec['train_acc']:6.2f}%")
        if rec.get("test_acc") is not None:
            line += f"  test loss {rec['test_loss']:.4f}  test acc {100 * rec['test_acc']:6.2f}%"
        return line + f"  {rec['time_s']:.1f} s  ({rec['images_per_s']:,.0f} img/s)"


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


# =========================================================================== runs (the CLI's engine)

#: Per-dataset defaults for what ``gpucnn train`` leaves unset.
DEFAULTS = {
    "digits": {"model": "cifar", "epochs": 15, "batch_size": 32, "lr": 1e-3, "lr_decay": 1.0, "optimizer": "adam"},
    "mnist": {"model": "lenet", "epochs": 3, "batch_size": 32, "lr": 2e-3, "lr_decay": 0.3, "optimizer": "adam"},
    "cifar10": {"model": "cifar", "epochs": 10, "batch_size": 64, "lr": 1e-3, "lr_decay": 1.0, "optimizer": "adam"},
}


@dataclass
class TrainConfig:
    """Everything that defines a ``gpucnn train`` run (stored in its checkpoint).

    ``None`` fields take the dataset's value from :data:`DEFAULTS`
    (:meth:`resolved`).  ``epochs`` is the total number of epochs.
    """

    data: str = "digits"
    data_dir: str | None = None
    t10k_split: int | None = None
    limit_train: int | None = None
    limit_test: int | None = None
    model: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    lr_decay: float | None = None
    optimizer: str | None = None
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"

    def resolved(self) -> "TrainConfig":
        if self.data not in DATASETS:
            raise ValueError(f"unknown dataset {self.data!r}; expected one of {', '.join(DATASETS)}")
        values = asdict(self)
        for k, v in DEFAULTS[self.data].items():
            if values[k] is None:
                values[k] = v
        cfg = TrainConfig(**values)
        if cfg.data_dir is not None:
            cfg.data_dir = str(Path(cfg.data_dir).expanduser().resolve())
        for name in ("epochs", "batch_size"):
            v = getattr(cfg, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not (isinstance(cfg.lr, (int, float)) and math.isfinite(cfg.lr) and cfg.lr > 0):
            raise ValueError(f"lr must be a positive number, got {cfg.lr!r}")
        if not (isinstance(cfg.lr_decay, (int, float)) and 0 < cfg.lr_decay <= 1):
            raise ValueError(f"lr_decay must be in (0, 1], got {cfg.lr_decay!r}")
        if cfg.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {cfg.dtype!r}")
        return cfg

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise CheckpointError(f"the checkpoint's configuration has fields a `gpucnn train` run does "
                                  f"not have ({', '.join(unknown)}); it was written by another script")
        return cls(**{k: v for k, v in d.items() if k in known})


def dataset_for(cfg: TrainConfig, dtype=np.float32) -> Dataset:
    """Load the dataset a (resolved) configuration names."""
    return load_dataset(cfg.data, cfg.data_dir, t10k_split=cfg.t10k_split, limit_train=cfg.limit_train,
                        limit_test=cfg.limit_test, dtype=dtype)


def load_model(checkpoint, device=None):
    """Rebuild the model of a ``gpucnn train`` checkpoint: returns ``(model, Checkpoint, TrainConfig)``.

    ``device``: "auto" (default: the GPU when usable), "cpu" or "cuda".
    """
    import gpucnn
    from .models import build_model
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    cfg = TrainConfig.from_dict(ckpt.config)
    info = ckpt.state.get("dataset") or {}
    shape, classes = info.get("input_shape"), info.get("classes")
    if not shape or not classes or not cfg.model:
        raise CheckpointError(f"checkpoint {ckpt.path} does not record its model and input shape "
                              "(it was not written by `gpucnn train`)")
    gpucnn.manual_seed(int(cfg.seed))
    model = build_model(cfg.model, tuple(shape), len(classes))
    try:
        model.load_state_dict(ckpt.model_state)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {ckpt.path}: weights do not fit model {cfg.model!r}: {exc}") from None
    model.to(device=device or "auto", dtype=cfg.dtype)
    return model, ckpt, cfg


@dataclass
class RunResult:
    """What :func:`run_training` returns."""

    run_dir: Path
    checkpoint: Path
    history: list
    test_accuracy: float | None
    config: TrainConfig
    seconds: float
    trainer: Trainer = field(repr=False, default=None)
    dataset: Dataset = field(repr=False, default=None)

    def summary(self):
        outs = ", ".join(n for n in OUTPUT_FILES if (self.run_dir / n).exists())
        acc = "n/a" if self.test_accuracy is None else f"{100 * self.test_accuracy:.2f}%"
        n_test = len(self.dataset.test) if self.dataset is not None else "?"
        return (f"test accuracy {acc} ({n_test} {self.config.data} test images) after "
                f"{len(self.history)} epochs in {self.seconds:.1f} s; outputs in {self.run_dir}/ ({outs})")


_RESUME_OVERRIDABLE = {"epochs", "device", "data_dir"}


def _new_run_dir(root, cfg):
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{cfg.data}-{cfg.model}-{stamp}"
    for i in range(1, 1000):
        candidate = base if i == 1 else base.with_name(f"{base.name}-{i}")
        try:
            candidate.mkdir(parents=True, exist_ok=False)
            return candidate
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot create a new run directory under {root}")


def _check_no_outputs(run_dir, resume_hint=True):
    existing = [n for n in OUTPUT_FILES if (Path(run_dir) / n).exists()]
    if existing:
        hint = (f"; to continue that run use --resume {Path(run_dir) / CHECKPOINT_NAME}"
                if CHECKPOINT_NAME in existing and resume_hint else "")
        raise FileExistsError(f"refusing to overwrite {', '.join(existing)} in {run_dir}: choose "
                              f"another --out{hint}")


def run_training(config=None, *, out=None, resume=None, runs_root="runs", progress=True, log=print,
                 on_step=None, **overrides) -> RunResult:
    """Run ``gpucnn train``: load the data, build model and optimizer, train, write the run directory.

    ``config`` is a :class:`TrainConfig` (``overrides`` set its fields).  ``out``
    is the run directory (default a new ``runs_root/<data>-<model>-<time>``);
    it must not already hold a run's files.  ``resume`` is a checkpoint to
    continue: its configuration is used, only ``epochs`` (the new total),
    ``device`` and ``data_dir`` may change, and the run directory defaults to the
    checkpoint's folder.
    """
    import gpucnn
    from .models import build_model
    started = time.perf_counter()
    unknown = sorted(set(overrides) - {f.name for f in fields(TrainConfig)})
    if unknown:
        raise TypeError(f"run_training: unknown settings {', '.join(unknown)}; "
                        f"expected TrainConfig fields")
    ckpt = None
    if resume is not None:
        ckpt = load_checkpoint(resume)
        cfg = TrainConfig.from_dict(ckpt.config)
        given = {k: v for k, v in asdict(config).items()
                 if v is not None and v != getattr(TrainConfig(), k)} if config is not None else {}
        given.update({k: v for k, v in overrides.items() if v is not None})
        for k, v in given.items():
            if k in _RESUME_OVERRIDABLE:
                setattr(cfg, k, v)
            elif v != getattr(cfg, k):
                raise ValueError(f"--{k.replace('_', '-')} cannot change when resuming (the checkpoint "
                                 f"was trained with {k}={getattr(cfg, k)!r}); only "
                                 f"--epochs, --device and --data-dir can")
        cfg = cfg.resolved()
        done = int(ckpt.state.get("epoch", 0))
        if done >= cfg.epochs and not ckpt.state.get("step_in_epoch"):
            raise ValueError(f"checkpoint {ckpt.path} already has {done} epochs; pass --epochs N "
                             f"with N > {done} to train further")
        run_dir = Path(out) if out is not None else ckpt.path.parent
        if run_dir.resolve() != ckpt.path.parent.resolve():
            run_dir.mkdir(parents=True, exist_ok=True)
            _check_no_outputs(run_dir, resume_hint=False)
        created_dir = False
    else:
        cfg = (config or TrainConfig())
        cfg = TrainConfig(**{**asdict(cfg), **{k: v for k, v in overrides.items() if v is not None}})
        cfg = cfg.resolved()
        if out is not None:
            run_dir = Path(out)
            created_dir = not run_dir.exists()
            if run_dir.exists() and not run_dir.is_dir():
                raise FileExistsError(f"--out {run_dir} exists and is not a folder")
            _check_no_outputs(run_dir)
        else:
            run_dir, created_dir = None, True

    dtype = np.dtype(cfg.dtype)
    dataset = dataset_for(cfg, dtype=np.float32)
    gpucnn.manual_seed(int(cfg.seed))
    model = build_model(cfg.model, dataset.input_shape, dataset.num_classes)
    model.to(device=cfg.device, dtype=dtype)
    optimizer = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    if run_dir is None:
        run_dir = _new_run_dir(runs_root, cfg)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(model, optimizer, dataset.train, dataset.test, batch_size=cfg.batch_size,
                      seed=cfg.seed, run_dir=run_dir, config=cfg.to_dict(), classes=dataset.classes,
                      progress=progress, log=log, on_step=on_step, lr_decay=cfg.lr_decay,
                      title=f"{cfg.data} / {cfg.model} / {cfg.optimizer} lr {cfg.lr:g}",
                      extra_state={"dataset": {
                          "name": dataset.name, "input_shape": list(dataset.input_shape),
                          "classes": list(dataset.classes), "mean": list(dataset.mean),
                          "std": list(dataset.std)}})
    if ckpt is not None:
        trainer.restore(ckpt)
        where = (f"epoch {trainer.epoch}" if not trainer.step_in_epoch
                 else f"epoch {trainer.epoch + 1}, step {trainer.step_in_epoch}")
        log(f"resuming {ckpt.path} from {where} (of {cfg.epochs})")
    log(f"training {cfg.model} on {dataset.source}: {len(dataset.train)} train / {len(dataset.test)} test "
        f"images {dataset.input_shape}, {cfg.optimizer} lr {cfg.lr:g}"
        f"{f' (x{cfg.lr_decay:g} per epoch)' if cfg.lr_decay != 1 else ''}, batch {cfg.batch_size}, "
        f"{cfg.epochs} epochs, device {model.device} ({dtype.name}), run dir {run_dir}")
    try:
        trainer.fit(cfg.epochs)
    except BaseException:
        if created_dir and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()  # a run that failed before writing anything leaves nothing behind
        raise
    final = trainer.history[-1].get("test_acc") if trainer.history else None
    return RunResult(run_dir=run_dir, checkpoint=trainer.checkpoint_path, history=trainer.history,
                     test_accuracy=final, config=cfg, seconds=time.perf_counter() - started,
                     trainer=trainer, dataset=dataset)

