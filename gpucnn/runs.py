"""What ``gpucnn train`` runs: the configuration, the data and model it names, the run directory.

:class:`TrainConfig` (``None`` fields take :data:`DEFAULTS` for the dataset) is stored in
every checkpoint, so :func:`load_model` rebuilds a trained model from the file alone and
:func:`run_training` can resume a run with only ``epochs``, ``device`` and ``data_dir``
changed.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path

import numpy as np

from .backends import DEVICES
from .checkpoint import CHECKPOINT_NAME, Checkpoint, CheckpointError, load_checkpoint
from .data import DATASETS, Dataset, load_dataset
from .plots import CURVES_PNG, HISTORY_CSV, HISTORY_JSON
from .runlock import RunDirError, RunLock
from .losses import CrossEntropyLoss
from .trainer import Trainer, make_optimizer
from .validation import FRACTION, NON_NEGATIVE, POSITIVE, POSITIVE_INT, Rule, one_of

#: [0, 1): SGD momentum, label smoothing
_UNIT_OPEN = Rule(float, 0, 1, high_open=True)

__all__ = ["TrainConfig", "DEFAULTS", "RECIPES", "SCHEDULES", "dataset_for", "load_model", "RunResult", "run_training",
           "OUTPUT_FILES"]

#: The files a training run writes into its run directory.
OUTPUT_FILES = (CHECKPOINT_NAME, HISTORY_JSON, HISTORY_CSV, CURVES_PNG)

DEFAULTS = {
    "digits": {"model": "cifar", "epochs": 15, "batch_size": 32, "lr": 1e-3, "lr_decay": 1.0, "optimizer": "adam"},
    "mnist": {"model": "lenet", "epochs": 3, "batch_size": 32, "lr": 2e-3, "lr_decay": 0.3, "optimizer": "adam"},
    "cifar10": {"model": "cifar", "epochs": 10, "batch_size": 64, "lr": 1e-3, "lr_decay": 1.0, "optimizer": "adam"},
    "folder": {"model": "cifar", "epochs": 10, "batch_size": 64, "lr": 1e-3, "lr_decay": 1.0, "optimizer": "adam"},
}

#: He et al. 2016, section 4.2 (CIFAR-10): SGD 0.1, momentum 0.9, weight decay 1e-4, batch
#: 128, the rate /10 at 32k and 48k of 64k iterations (50 % and 75 % of the run, stepped per
#: iteration: ``--schedule multistep``), 4-pixel-pad random crops and horizontal flips
#: (``--augment``); 164 epochs of 50,000 images are the paper's 64k iterations.  Per-channel
#: normalisation by the training set's mean and std is what ``--data folder`` does anyway.
PAPER_RECIPE = {"epochs": 164, "batch_size": 128, "optimizer": "sgd", "lr": 0.1, "lr_decay": 1.0,
                "momentum": 0.9, "weight_decay": 1e-4, "schedule": "multistep", "augment": True}

#: Per-model recipes: a model's defaults, taken before the dataset's (:data:`DEFAULTS`) and
#: after whatever the user gives.  ``--epochs N`` scales the schedule to N epochs.
RECIPES = {name: PAPER_RECIPE for name in ("resnet20", "resnet32", "resnet44", "resnet56", "vgg_bn")}

#: Fields every run resolves the same way when neither the user nor a recipe sets them.
_COMMON_DEFAULTS = {"momentum": 0.9, "weight_decay": 0.0, "label_smoothing": 0.0, "warmup": 0.0}


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
    momentum: float | None = None    # SGD momentum (default 0.9)
    weight_decay: float | None = None   # default 0 (1e-4 in the ResNet recipe)
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    schedule: str | None = None      # see SCHEDULES; stepped per iteration
    augment: bool | None = None      # random crops (padding H/8) and horizontal flips
    image_size: list | None = None   # --data folder: resize every image to [H, W]
    label_smoothing: float | None = None   # CrossEntropyLoss(label_smoothing=...), default 0
    warmup: float | None = None      # epochs of linear warm-up (LinearLR from 0.1 x lr), default 0

    def resolved(self) -> "TrainConfig":
        if self.data not in DATASETS:
            raise ValueError(f"unknown dataset {self.data!r}; expected one of {', '.join(DATASETS)}")
        values = asdict(self)
        model = values["model"] or DEFAULTS[self.data]["model"]
        for k, v in RECIPES.get(model, {}).items():      # the model's recipe, under the user's
            if values[k] is None:
                values[k] = v
        for k, v in _COMMON_DEFAULTS.items():
            if values[k] is None:
                values[k] = v
        values["schedule"] = one_of(values["schedule"] or "none", "schedule", SCHEDULES, "TrainConfig")
        values["augment"] = bool(values["augment"])
        if values["schedule"] != "none":
            if values["lr_decay"] not in (None, 1, 1.0):
                raise ValueError(f"TrainConfig: lr_decay {values['lr_decay']:g} and schedule "
                                 f"{values['schedule']!r} would both set the learning rate; use one")
            values["lr_decay"] = 1.0
        for k, v in DEFAULTS[self.data].items():
            if values[k] is None:
                values[k] = v
        cfg = TrainConfig(**values)
        if cfg.data_dir is not None:
            cfg.data_dir = str(Path(cfg.data_dir).expanduser().resolve())
        for name in ("epochs", "batch_size"):
            POSITIVE_INT(getattr(cfg, name), name, "TrainConfig")
        POSITIVE(cfg.lr, "lr", "TrainConfig")
        FRACTION(cfg.lr_decay, "lr_decay", "TrainConfig")
        _UNIT_OPEN(cfg.momentum, "momentum", "TrainConfig")
        NON_NEGATIVE(cfg.weight_decay, "weight_decay", "TrainConfig")
        _UNIT_OPEN(cfg.label_smoothing, "label_smoothing", "TrainConfig")
        NON_NEGATIVE(cfg.warmup, "warmup (epochs)", "TrainConfig")
        if cfg.warmup > cfg.epochs:
            raise ValueError(f"TrainConfig: warmup ({cfg.warmup:g} epochs) is longer than the run "
                             f"({cfg.epochs} epochs)")
        one_of(cfg.dtype, "dtype", ("float32", "float64"), "TrainConfig")
        one_of(cfg.device, "device", DEVICES, "TrainConfig")
        if cfg.data == "digits" and cfg.data_dir is not None:   # would be silently ignored
            raise ValueError("--data-dir does not apply to the bundled digits (they ship with "
                             "gpucnn); it is for --data mnist or cifar10")
        if cfg.t10k_split is not None and cfg.data != "mnist":
            raise ValueError(f"--t10k-split applies to --data mnist only, not to {cfg.data}")
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


#: ``--schedule`` choices, all stepped after every iteration over the run's ``epochs`` x
#: iterations per epoch (fixed when the run is planned; a resume keeps it): ``none`` leaves the
#: rate to ``lr_decay`` (per epoch), ``constant`` keeps it, ``multistep`` divides it by 10 at
#: 50 % and 75 % (He et al.'s 32k and 48k of 64k iterations), ``step`` by 10 after each third
#: of the run, ``cosine`` anneals it to 0.
SCHEDULES = ("none", "constant", "multistep", "step", "cosine")

#: ``--warmup``: the rate starts at this fraction of ``lr`` and rises linearly
WARMUP_START = 0.1


def make_schedule(name, optimizer, epochs, steps_per_epoch, warmup=0.0):
    """``(scheduler or None, interval)`` for ``--schedule`` (see :data:`SCHEDULES`) over
    ``epochs`` x ``steps_per_epoch`` iterations, with ``warmup`` epochs of linear warm-up
    (``LinearLR`` from ``WARMUP_START`` x lr) chained in front (``ChainedScheduler``: the two
    factors multiply, as PyTorch's)."""
    from .lr_scheduler import (ChainedScheduler, CosineAnnealingLR, LinearLR, MultiStepLR,
                               StepLR)
    one_of(name, "schedule", SCHEDULES, "make_schedule")
    total = max(1, int(epochs) * int(steps_per_epoch))
    warm = int(round(float(warmup or 0) * int(steps_per_epoch)))
    chain = [LinearLR(optimizer, WARMUP_START, 1.0, warm)] if warm > 0 else []
    if name == "cosine":
        chain.append(CosineAnnealingLR(optimizer, T_max=total))
    elif name == "multistep":
        chain.append(MultiStepLR(optimizer, [max(1, total // 2), max(1, total * 3 // 4)], 0.1))
    elif name == "step":
        chain.append(StepLR(optimizer, max(1, -(-total // 3)), 0.1))
    if not chain:
        return None, "epoch"
    return (chain[0] if len(chain) == 1 else ChainedScheduler(chain)), "step"


def make_augment(input_shape, seed):
    """``--augment``: a random crop of the image padded by H/8 (4 for 32x32) and a horizontal
    flip, each image on its own, from generators seeded by ``seed``."""
    from .transforms import Compose, RandomCrop, RandomHorizontalFlip
    _, h, w = (int(v) for v in input_shape)
    return Compose([RandomCrop((h, w), padding=(max(1, h // 8), max(1, w // 8)),
                               rng=np.random.default_rng([int(seed), 1])),
                    RandomHorizontalFlip(rng=np.random.default_rng([int(seed), 2]))])


def dataset_for(cfg: TrainConfig, dtype=np.float32) -> Dataset:
    """Load the dataset a (resolved) configuration names."""
    return load_dataset(cfg.data, cfg.data_dir, t10k_split=cfg.t10k_split, limit_train=cfg.limit_train,
                        limit_test=cfg.limit_test, dtype=dtype,
                        image_size=tuple(cfg.image_size) if cfg.image_size else None)


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
        except OSError as exc:
            raise RunDirError(f"cannot create a run folder under {root} ({exc.strerror or exc}); "
                              f"choose another --runs-dir or --out") from None
    raise RuntimeError(f"cannot create a new run directory under {root}")


def _check_no_outputs(run_dir, resume_hint=True):
    existing = [n for n in OUTPUT_FILES if (Path(run_dir) / n).exists()]
    if existing:
        hint = (f"; to continue that run use --resume {Path(run_dir) / CHECKPOINT_NAME}"
                if CHECKPOINT_NAME in existing and resume_hint else "")
        raise FileExistsError(f"refusing to overwrite {', '.join(existing)} in {run_dir}: choose "
                              f"another --out{hint}")


def _new_run(config, overrides, out):
    """Configuration of a new run and its directory: ``(cfg, run_dir or None, created_dir)``."""
    cfg = config or TrainConfig()
    cfg = TrainConfig(**{**asdict(cfg), **{k: v for k, v in overrides.items() if v is not None}})
    cfg = cfg.resolved()
    if out is None:
        return cfg, None, True           # a fresh folder under runs_root
    run_dir = Path(out)
    if run_dir.exists() and not run_dir.is_dir():
        raise FileExistsError(f"--out {run_dir} exists and is not a folder")
    created_dir = not run_dir.exists()
    _check_no_outputs(run_dir)           # checked again once the folder is locked
    return cfg, run_dir, created_dir


def _resumed_run(ckpt, config, overrides, out):
    """Configuration of a resumed run (the checkpoint's, with the allowed changes) and its directory."""
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
    created_dir = not run_dir.exists()
    if run_dir.resolve() != ckpt.path.parent.resolve():
        _check_no_outputs(run_dir, resume_hint=False)
    return cfg, run_dir, created_dir


def _build(cfg):
    """The dataset, the seeded model on its device, and the optimizer a configuration names."""
    import gpucnn
    from .models import build_model
    dataset = dataset_for(cfg, dtype=np.float32)
    gpucnn.manual_seed(int(cfg.seed))
    model = build_model(cfg.model, dataset.input_shape, dataset.num_classes)
    model.to(device=cfg.device, dtype=np.dtype(cfg.dtype))
    optimizer = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    return dataset, model, optimizer


def _dataset_record(dataset):
    """What a checkpoint keeps about its data so that `evaluate` and `predict` can rebuild the model."""
    return {"name": dataset.name, "input_shape": list(dataset.input_shape),
            "classes": list(dataset.classes), "mean": list(dataset.mean), "std": list(dataset.std)}


def _describe(cfg, dataset, model, run_dir):
    decay = f" (x{cfg.lr_decay:g} per epoch)" if cfg.lr_decay != 1 else ""
    if cfg.schedule != "none":
        decay += f" ({cfg.schedule} schedule per iteration)"
    if cfg.warmup:
        decay += f", {cfg.warmup:g} warm-up epochs"
    if cfg.optimizer == "sgd":
        decay += f", momentum {cfg.momentum:g}"
    if cfg.weight_decay:
        decay += f", weight decay {cfg.weight_decay:g}"
    if cfg.label_smoothing:
        decay += f", label smoothing {cfg.label_smoothing:g}"
    if cfg.augment:
        decay += ", random crops and flips"
    return (f"training {cfg.model} on {dataset.source}: {len(dataset.train)} train / "
            f"{len(dataset.test)} test images {dataset.input_shape}, {cfg.optimizer} lr {cfg.lr:g}"
            f"{decay}, batch {cfg.batch_size}, {cfg.epochs} epochs, device {model.device} "
            f"({np.dtype(cfg.dtype).name}), run dir {run_dir}")


def _describe_ranks(cfg, comm):
    """The processes of a multi-process run, with their process ids (what mpiexec names when
    one of them is killed).  A collective: every rank calls it."""
    import os
    pids = comm.allgather_obj(os.getpid())
    lo, hi = cfg.batch_size // comm.size, -(-cfg.batch_size // comm.size)
    share = f"{lo}" if lo == hi else f"{lo}-{hi}"
    machines = f"{comm.node_count} machine{'s' if comm.node_count > 1 else ''}"
    return (f"; {comm.size} processes on {machines} ({comm.transport} all-reduce), {share} images "
            f"per process and step; process ids by rank: {', '.join(map(str, pids))}")


def _trainer_for(cfg, run_dir, ckpt, progress, log, on_step, comm=None, graph="auto"):
    """The data, model, optimizer and :class:`Trainer` of a run (restored from ``ckpt`` if given).

    With ``comm``: rank 0 loads the data first (a first use may download or unpack it), and
    the trainer is a :class:`~gpucnn.distributed.DistributedTrainer`."""
    if comm is None:
        dataset, model, optimizer = _build(cfg)
        trainer_class, across = Trainer, {}
    else:
        from .distributed import DistributedTrainer
        dataset, model, optimizer = comm.root_first(lambda: _build(cfg))
        trainer_class, across = DistributedTrainer, {"comm": comm}
    steps = -(-len(dataset.train) // cfg.batch_size)
    scheduler, interval = make_schedule(cfg.schedule, optimizer, cfg.epochs, steps,
                                        cfg.warmup)
    transform = make_augment(dataset.input_shape, cfg.seed) if cfg.augment else None
    trainer = trainer_class(model, optimizer, dataset.train, dataset.test, batch_size=cfg.batch_size,
                            seed=cfg.seed, run_dir=run_dir, config=cfg.to_dict(), classes=dataset.classes,
                            progress=progress, log=log, on_step=on_step, lr_decay=cfg.lr_decay,
                            title=f"{cfg.data} / {cfg.model} / {cfg.optimizer} lr {cfg.lr:g}",
                            extra_state={"dataset": _dataset_record(dataset)},
                            scheduler=scheduler, scheduler_interval=interval, transform=transform,
                            loss_fn=CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
                            graph=graph, **across)
    if ckpt is not None:
        trainer.restore(ckpt)
        where = (f"epoch {trainer.epoch}" if not trainer.step_in_epoch
                 else f"epoch {trainer.epoch + 1}, step {trainer.step_in_epoch}")
        log(f"resuming {ckpt.path} from {where} (of {cfg.epochs})")
    return trainer, dataset, model


def run_training(config=None, *, out=None, resume=None, runs_root="runs", progress=True, log=print,
                 on_step=None, graph="auto", comm=None, **overrides) -> RunResult:
    """Run ``gpucnn train``: load the data, build model and optimizer, train, write the run directory.

    ``config`` is a :class:`TrainConfig` (``overrides`` set its fields).  ``out``
    is the run directory (default a new ``runs_root/<data>-<model>-<time>``);
    it must not already hold a run's files.  ``resume`` is a checkpoint to
    continue: its configuration is used, only ``epochs`` (the new total),
    ``device`` and ``data_dir`` may change, and the run directory defaults to the
    checkpoint's folder.

    ``comm``: a :class:`gpucnn.distributed.Communicator` to train across its ranks
    (``batch_size`` stays the global batch).  Rank 0 alone reads the checkpoint to resume,
    makes, locks and writes the run directory, and logs; an error it meets there is raised on
    every rank; every rank returns the same history.
    """
    started = time.perf_counter()
    unknown = sorted(set(overrides) - {f.name for f in fields(TrainConfig)})
    if unknown:
        raise TypeError(f"run_training: unknown settings {', '.join(unknown)}; "
                        f"expected TrainConfig fields")
    if comm is not None and comm.size == 1:
        comm = None
    root = comm is None or comm.rank == 0
    if log is None or not root:
        log = lambda *_: None  # noqa: E731 - quiet; in a multi-process run rank 0 alone speaks
    locks = []

    def cleanup(run_dir, created_dir):
        for lock in locks:
            lock.release()
        if created_dir and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()  # a run that failed before writing anything leaves nothing behind

    def prepare():
        """The checkpoint, the configuration and the run folder, locked (rank 0's work)."""
        ckpt = load_checkpoint(resume) if resume is not None else None
        cfg, run_dir, created_dir = (_resumed_run(ckpt, config, overrides, out) if ckpt is not None
                                     else _new_run(config, overrides, out))
        if run_dir is None:
            run_dir = _new_run_dir(runs_root, cfg)
        # before any work: the folder is writable and no other run uses it (the lock proves both)
        locks.append(RunLock(run_dir))
        try:
            locks[0].acquire()
            if ckpt is None or run_dir.resolve() != ckpt.path.parent.resolve():
                _check_no_outputs(run_dir, resume_hint=ckpt is None)
        except BaseException:
            cleanup(run_dir, created_dir)
            raise
        return ckpt, cfg, run_dir, created_dir

    ckpt, cfg, run_dir, created_dir = prepare() if comm is None else comm.on_root(prepare)
    try:
        trainer, dataset, model = _trainer_for(cfg, run_dir, ckpt, progress, log, on_step, comm,
                                                graph)
        log(_describe(cfg, dataset, model, run_dir) + (_describe_ranks(cfg, comm) if comm else ""))
        trainer.fit(cfg.epochs)
    finally:
        if root:
            cleanup(run_dir, created_dir)
    final = trainer.history[-1].get("test_acc") if trainer.history else None
    return RunResult(run_dir=run_dir, checkpoint=run_dir / CHECKPOINT_NAME, history=trainer.history,
                     test_accuracy=final, config=cfg, seconds=time.perf_counter() - started,
                     trainer=trainer, dataset=dataset)
