"""The names the README and older scripts import from ``gpucnn.train``, re-exported.

Each lives in the module that owns it: :mod:`gpucnn.checkpoint` (atomic files,
save/load), :mod:`gpucnn.evaluation` (predictions, accuracy, confusion),
:mod:`gpucnn.plots` (history files, figures), :mod:`gpucnn.trainer` (the loop,
:func:`fit`) and :mod:`gpucnn.runs` (what ``gpucnn train`` runs).

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
from .checkpoint import CHECKPOINT_NAME, Checkpoint, CheckpointError, atomic_write, load_checkpoint, save_checkpoint
from .evaluation import EvalResult, evaluate, predict_logits, predict_proba
from .plots import plot_confusion, plot_history, write_history
from .runs import DEFAULTS, OUTPUT_FILES, RunResult, TrainConfig, dataset_for, load_model, run_training
from .trainer import Trainer, TrainingDiverged, TrainingInterrupted, fit, make_optimizer

__all__ = [
    "Trainer", "fit", "evaluate", "predict_proba", "EvalResult",
    "save_checkpoint", "load_checkpoint", "Checkpoint", "CheckpointError",
    "TrainingDiverged", "TrainingInterrupted", "TrainConfig", "RunResult", "run_training",
    "load_model", "make_optimizer", "dataset_for", "predict_logits", "plot_history", "plot_confusion",
    "write_history", "atomic_write", "DEFAULTS", "CHECKPOINT_NAME", "OUTPUT_FILES",
]
