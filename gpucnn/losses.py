"""Loss functions: ``loss = fn(output, target)`` returns a :class:`~gpucnn.scalar.Scalar`
(a float that stays on the device until read); ``fn.backward()`` returns ∂loss/∂output
(δ for the network's last layer) in the output's dtype."""
from __future__ import annotations

import math

import numpy as np

from .errors import NonFiniteError
from .layers import check_float_input
from .scalar import Scalar
from .validation import Rule


def _finite_loss(name, B, loss, output):
    """The loss as a Scalar.  On host arrays (reading is free) a non-finite loss whose output
    holds NaN/inf raises NonFiniteError here.  On a device nothing is read: the loss stays
    there, and whoever reads it (the trainer, at a bounded interval) checks it then."""
    loss = Scalar(loss)
    if isinstance(output, np.ndarray) and not math.isfinite(loss) and not B.all_finite(output):
        raise NonFiniteError(f"{name}: the output contains NaN or infinity")
    return loss


def check_finite(name, B, loss, output):
    """Read ``loss`` (a device sync on a GPU) and raise NonFiniteError when it is not finite
    because ``output`` holds NaN/inf -- what a loss does by itself on host arrays."""
    if not math.isfinite(loss) and not B.all_finite(output):
        raise NonFiniteError(f"{name}: the output contains NaN or infinity")
    return loss


class _Loss:
    def __init__(self):
        self._saved = None

    def _need_forward(self):
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward was called before the loss "
                               "was computed; call loss_fn(output, target) first")
        return self._saved


class MSELoss(_Loss):
    """mean((output − target)²) over every element (PyTorch's reduction='mean')."""

    def __call__(self, output, target):
        B = check_float_input("MSELoss", output, what="output", finite=False)
        t = np.asarray(target) if isinstance(target, (list, tuple, float, int)) else target
        if not hasattr(t, "shape") or not hasattr(t, "dtype"):
            raise TypeError(f"MSELoss: expected the target to be an array, got {type(target).__name__}")
        if tuple(t.shape) != tuple(output.shape):
            raise ValueError(f"MSELoss: target shape {tuple(t.shape)} does not match the output "
                             f"shape {tuple(output.shape)}")
        if t.dtype.kind not in "fiub":
            raise TypeError(f"MSELoss: expected a numeric target, got dtype {t.dtype}")
        t = B.asarray(t, dtype=output.dtype)
        if not B.all_finite(t):
            raise NonFiniteError("MSELoss: the target contains NaN or infinity")
        self._saved = (B, output, t)
        with np.errstate(invalid="ignore", over="ignore"):
            loss = B.mse_forward(output, t)
        return _finite_loss("MSELoss", B, loss, output)

    def backward(self):
        B, output, t = self._need_forward()
        return B.mse_backward(output, t)


class CrossEntropyLoss(_Loss):
    """Softmax then negative log-likelihood of integer class labels, mean over the batch.

    ``label_smoothing=eps`` (PyTorch's formula): the target is (1 − eps)·onehot + eps/K, so
    loss = (1 − eps)·CE + eps·mean over the K classes of −log p; backward (p − target)/N.
    """

    def __init__(self, *, label_smoothing=0.0):
        super().__init__()
        self.label_smoothing = Rule(float, 0, 1)(label_smoothing, "label_smoothing",
                                                 "CrossEntropyLoss")

    def __call__(self, output, target):
        B = check_float_input("CrossEntropyLoss", output, 2, what="output (N, classes)",
                              finite=False)
        n, k = output.shape
        if n == 0 or k == 0:
            raise ValueError(f"CrossEntropyLoss: expected a non-empty (N, classes) output, got "
                             f"shape {tuple(output.shape)}")
        labels = target
        if isinstance(labels, (list, tuple)):
            labels = np.asarray(labels)
        if not hasattr(labels, "dtype") or not hasattr(labels, "shape"):
            raise TypeError("CrossEntropyLoss: expected integer class labels as an array of "
                            f"shape ({n},), got {type(target).__name__}")
        if labels.dtype.kind not in "iu":
            raise TypeError("CrossEntropyLoss: expected integer class labels, got dtype "
                            f"{labels.dtype}")
        if tuple(labels.shape) != (n,):
            raise ValueError(f"CrossEntropyLoss: expected {n} labels (shape ({n},)) for an output "
                             f"of shape {tuple(output.shape)}, got shape {tuple(labels.shape)}")
        host = labels if isinstance(labels, np.ndarray) else None   # device labels: see the seam
        if n and host is not None and (host.min() < 0 or host.max() >= k):
            bad = host[(host < 0) | (host >= k)][0]
            raise ValueError(f"CrossEntropyLoss: labels must be in [0, {k}) for {k} classes, "
                             f"got {int(bad)}")
        labels = B.asarray(labels, dtype=np.int64)
        eps = self.label_smoothing
        with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf output: reported below
            if eps:
                loss, probs = B.label_smoothing_cross_entropy_forward(output, labels, eps)
            else:
                loss, probs = B.softmax_cross_entropy_forward(output, labels)
        self._saved = (B, probs, labels)
        return _finite_loss("CrossEntropyLoss", B, loss, output)

    def backward(self):
        B, probs, labels = self._need_forward()
        if self.label_smoothing:
            return B.label_smoothing_cross_entropy_backward(probs, labels, self.label_smoothing)
        return B.softmax_cross_entropy_backward(probs, labels)

    def __repr__(self):
        return f"CrossEntropyLoss(label_smoothing={self.label_smoothing})"
