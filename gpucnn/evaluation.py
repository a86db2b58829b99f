"""Evaluation: class probabilities, accuracy, mean loss and the confusion matrix.

Everything runs in eval mode (restored afterwards), on the model's device, in batches;
results come back as numpy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import backends
from .data import ImageSet
from .errors import NonFiniteError, quiet_overflow

__all__ = ["predict_logits", "predict_proba", "EvalResult", "evaluate"]


def as_imageset(data, what):
    """``data`` as an :class:`ImageSet` (None stays None); ``what`` names the caller in errors."""
    if data is None or isinstance(data, ImageSet):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        images, labels = data
        return ImageSet(np.asarray(images), np.asarray(labels, dtype=np.int64))
    raise TypeError(f"{what}: expected an ImageSet or an (images, labels) pair, got {type(data).__name__}")


def model_backend(model):
    """The backend that owns the model's parameters (inputs must go there too)."""
    params = model.parameters()
    return backends.backend_of(params[0].data) if params else backends.get_backend("cpu")


def to_model_device(backend, model, x):
    """A numpy batch on the model's backend, in the model's dtype."""
    return backend.asarray(np.ascontiguousarray(x), dtype=model.dtype)


def predict_logits(model, images, batch_size=500) -> np.ndarray:
    """Raw network outputs for ``images`` (N, C, H, W) as a numpy array (N, classes)."""
    backend = model_backend(model)
    was_training = model.training
    model.eval()
    try:
        with quiet_overflow():   # non-finite outputs: checked by the callers
            outs = [backends.asnumpy(model(to_model_device(backend, model, images[i:i + batch_size])))
                    for i in range(0, len(images), batch_size)]
    finally:
        model.train(was_training)
    return np.concatenate(outs).astype(np.float64)


def nonfinite_weight(model):
    """The name of the first parameter of ``model`` holding NaN/inf, or None."""
    for name, p in model.named_parameters():
        if not backends.backend_of(p.data).all_finite(p.data):
            return name
    return None


def _outputs_not_finite(model, rows, what):
    bad = nonfinite_weight(model)
    if bad is not None:
        return NonFiniteError(f"{what}: the model's weight {bad} holds NaN or infinity")
    exc = NonFiniteError(f"{what}: the network's outputs for image {rows[0]} are not finite "
                         f"(its weights are finite: the image overflows the network)")
    exc.rows = [int(r) for r in rows]
    return exc


def predict_proba(model, images, batch_size=500) -> np.ndarray:
    """Softmax probabilities (float64, rows sum to 1) for ``images`` (N, C, H, W).

    Raises :class:`~gpucnn.NonFiniteError` when an output is not finite: a NaN is
    never returned as a probability.
    """
    logits = predict_logits(model, images, batch_size)
    rows = np.flatnonzero(~np.isfinite(logits).all(axis=1))
    if rows.size:
        raise _outputs_not_finite(model, rows, "predict_proba")
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
    from .losses import CrossEntropyLoss, check_finite
    data = as_imageset(data, "evaluate")
    if len(data) == 0:
        raise ValueError("evaluate: the data set is empty")
    backend = model_backend(model)
    loss_fn = CrossEntropyLoss()
    was_training = model.training
    model.eval()
    preds, loss_sum = [], 0.0
    try:
        for i in range(0, len(data), batch_size):
            x, y = data.images[i:i + batch_size], data.labels[i:i + batch_size]
            with quiet_overflow():
                out = model(to_model_device(backend, model, x))
                try:
                    loss = loss_fn(out, backend.asarray(y))
                    # on a GPU the loss does not read itself: evaluation reads it anyway
                    loss_sum += check_finite("CrossEntropyLoss", backend, loss, out) * len(y)
                except NonFiniteError:  # name the cause: a weight, else the images of this batch
                    bad = nonfinite_weight(model)
                    if bad is not None:
                        raise NonFiniteError(f"evaluate: the model's weight {bad} holds NaN or "
                                             f"infinity") from None
                    raise
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
