"""Checkpoints: atomic writes, and weights + optimizer state + progress in one pickle-free ``.npz``.

:func:`save_checkpoint` writes one array per parameter (``model/<name>``), one per
optimizer state array, and ``__meta__``, a JSON string with everything else (the
run's configuration, progress, RNG states); :func:`load_checkpoint` reads it back
with ``allow_pickle=False`` and validates it, raising :class:`CheckpointError`
with the file and the problem.  :func:`atomic_write` is how every file of a run
directory is written: readers see the old content or the new, never a mix.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from . import backends

__all__ = ["atomic_write", "save_checkpoint", "load_checkpoint", "Checkpoint", "CheckpointError",
           "CHECKPOINT_NAME"]

FORMAT = "gpucnn-checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.npz"


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, truncated, or not a gpucnn checkpoint."""


# --------------------------------------------------------------------------- atomic files

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


def _checkpoint_file(path):
    """The file a checkpoint path names (a run folder means its checkpoint.npz), checked to be a zip."""
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
    return path


def _first_nonfinite(model_state, optimizer_state):
    """``(name, bad, total)`` of the first weight or optimizer-state value that is NaN/inf, or None."""
    for name, a in model_state.items():
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            return f"weight {name}", int((~np.isfinite(a)).sum()), a.size
    state = optimizer_state.get("state") if isinstance(optimizer_state, dict) else None
    for key, v in (state.items() if isinstance(state, dict) else ()):
        a = np.asarray(v)
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            return f"optimizer state {key}", int((~np.isfinite(a)).sum()), a.size
    return None


def load_checkpoint(path, *, allow_non_finite=False) -> Checkpoint:
    """Read and validate a checkpoint written by :func:`save_checkpoint`.

    Raises :class:`CheckpointError` (naming the file and the problem) for a
    missing, truncated, corrupt or foreign file, and for weights or optimizer state
    holding NaN or infinity (naming the tensor; ``allow_non_finite=True`` reads them
    anyway, to inspect them); never unpickles anything.
    """
    path = _checkpoint_file(path)
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
    bad = None if allow_non_finite else _first_nonfinite(model_state, optimizer_state)
    if bad is not None:
        name, count, total = bad
        raise CheckpointError(f"checkpoint {path}: {name} holds NaN or infinity ({count} of {total} "
                              f"values), so it cannot be used for training, evaluation or prediction")
    return Checkpoint(path=path, config=config, state=state, model_state=model_state,
                      optimizer_state=optimizer_state, meta=meta)
