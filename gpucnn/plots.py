"""A run's history files and figures: ``history.json``, ``history.csv``, ``curves.png``, confusion matrices.

Figures are drawn with matplotlib's Agg canvas, never through pyplot (no global state,
no display needed); every file is written atomically.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from .checkpoint import atomic_write

__all__ = ["write_history", "plot_history", "plot_confusion", "HISTORY_JSON", "HISTORY_CSV", "CURVES_PNG"]

HISTORY_JSON = "history.json"
HISTORY_CSV = "history.csv"
CURVES_PNG = "curves.png"


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
