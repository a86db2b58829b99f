"""CUDA primitives of issue 10's layers (a mixin of ``CudaBackend``): batch norm, dropout,
the option-A shortcut, the residual add, label-smoothed cross-entropy.

Kernels: ``kernels/batchnorm.cu`` (with bias.cu's ``channel_sum_partial`` for the mean),
``dropout.cu``, ``residual.cu``, ``label_smoothing.cu``.  As in ``cuda_backend.py``: every
scalar is passed as an explicit ``numpy.int64`` or the array's float type, and the class only
touches ``self.xp`` functions NumPy has too, so the emulator runs it on the CPU.  The
arguments were checked at the seam (``checked.py``), so nothing is re-checked here.
"""
from __future__ import annotations

import numpy as np

from .numpy import blocks as numpy_blocks

I64 = np.int64
F64 = np.float64


def _ncs(shape):
    """(N, C, S) of a (N, C, ...) shape."""
    n, c = int(shape[0]), int(shape[1])
    s = 1
    for v in shape[2:]:
        s *= int(v)
    return n, c, s


class LayerPrimitives:
    """The issue-10 primitives; mixed into ``CudaBackend`` (needs its ``_launch``, ``_c``,
    ``_partials`` and ``xp``)."""

    def add(self, a, b, act=None):
        dt = a.dtype
        a, b = self._c(a), self._c(b)
        out = self.xp.empty(a.shape, dtype=dt)
        self._launch("residual.cu", "add", dt, a.size, a, b, out, I64(a.size))
        return out if act is None else self.relu_forward(out)     # act: "relu" (checked)

    # ---------------------------------------------------------- batch norm
    def _channel_mean(self, partial, c, p, m, dt):
        out = self.xp.empty((c,), dtype=dt)
        self._launch("batchnorm.cu", "channel_mean", dt, 32 * c, partial, out, I64(c), I64(p),
                     F64(m))   # a warp per channel
        return out

    def batchnorm_stats(self, x):
        dt = x.dtype
        x = self._c(x)
        n, c, s = _ncs(x.shape)
        p = self._partials(n * s)
        partial = self.xp.empty((c * p,), dtype=np.float64)
        self._launch("bias.cu", "channel_sum_partial", dt, c * p, x, partial,
                     I64(n), I64(c), I64(s), I64(p))
        mean = self._channel_mean(partial, c, p, n * s, dt)
        self._launch("batchnorm.cu", "channel_sqdev_partial", dt, c * p, x, mean, partial,
                     I64(n), I64(c), I64(s), I64(p))
        var = self._channel_mean(partial, c, p, n * s, dt)
        return mean, var

    def batchnorm_forward(self, x, mean, var, weight, bias, eps, act=None):
        dt = x.dtype
        x, mean, var, weight, bias = (self._c(a) for a in (x, mean, var, weight, bias))
        _, c, s = _ncs(x.shape)
        y = self.xp.empty(x.shape, dtype=dt)
        self._launch("batchnorm.cu", "batchnorm_forward", dt, x.size, x, mean, var, weight,
                     bias, y, I64(x.size), I64(c), I64(s), dt.type(eps))
        # act: the activation's own kernel after (the fusion pays on the NumPy backend,
        # where it saves a pass over memory; here it is the two launches, bitwise)
        return y if act is None else self.relu_forward(y)

    def batchnorm_backward(self, dy, x, mean, var, weight, eps, batch_stats, y=None):
        if y is not None:                 # the fused ReLU's backward first (see forward)
            dy = self.relu_backward(dy, y)
        dt = dy.dtype
        dy, x, mean, var, weight = (self._c(a) for a in (dy, x, mean, var, weight))
        n, c, s = _ncs(x.shape)
        p = self._partials(n * s)
        partial_dy = self.xp.empty((c * p,), dtype=np.float64)
        partial_dyxmu = self.xp.empty((c * p,), dtype=np.float64)
        self._launch("batchnorm.cu", "batchnorm_backward_partial", dt, c * p, dy, x, mean,
                     partial_dy, partial_dyxmu, I64(n), I64(c), I64(s), I64(p))
        dweight = self.xp.empty((c,), dtype=dt)
        dbias = self.xp.empty((c,), dtype=dt)
        self._launch("batchnorm.cu", "batchnorm_backward_reduce", dt, 32 * c, partial_dy,
                     partial_dyxmu, var, dweight, dbias, I64(c), I64(p), dt.type(eps))
        dx = self.xp.empty(x.shape, dtype=dt)
        self._launch("batchnorm.cu", "batchnorm_backward_data", dt, x.size, dy, x, mean, var,
                     weight, dweight, dbias, dx, I64(x.size), I64(c), I64(s), dt.type(eps),
                     dt.type(1.0 / max(1, n * s)), I64(bool(batch_stats)))
        return dx, dweight, dbias

    def batchnorm_update_running(self, running_mean, running_var, mean, var, momentum, count):
        dt = running_mean.dtype
        t = dt.type
        c = int(running_mean.size)
        self._launch("batchnorm.cu", "batchnorm_update_running", dt, c, running_mean,
                     running_var, self._c(mean), self._c(var), I64(c), t(momentum),
                     t(1.0 - momentum), t(count / (count - 1)))

    # ------------------------------------------------------------- dropout
    def _dropout(self, a, p, seed):
        dt = a.dtype
        a = self._c(a)
        out = self.xp.empty(a.shape, dtype=dt)
        scale = dt.type(0.0 if p >= 1 else 1.0 / (1.0 - p))
        self._launch("dropout.cu", "dropout_apply", dt, a.size, a, out, I64(a.size),
                     I64(seed), I64(numpy_blocks.dropout_threshold(p)), scale)
        return out

    def dropout_forward(self, x, p, seed):
        return self._dropout(x, p, seed)

    def dropout_backward(self, dy, p, seed):
        return self._dropout(dy, p, seed)

    # ---------------------------------------------------- option-A shortcut
    def subsample_pad_forward(self, x, stride, pad_before, out_channels):
        dt = x.dtype
        x = self._c(x)
        n, c, h, w = (int(v) for v in x.shape)
        sh, sw = int(stride[0]), int(stride[1])
        oh, ow = -(-h // sh), -(-w // sw)
        co = int(out_channels)
        y = self.xp.empty((n, co, oh, ow), dtype=dt)
        self._launch("residual.cu", "subsample_pad_forward", dt, y.size, x, y,
                     *map(I64, (n, c, h, w, co, oh, ow, sh, sw, pad_before)))
        return y

    def subsample_pad_backward(self, dy, x_shape, stride, pad_before):
        dt = dy.dtype
        dy = self._c(dy)
        n, c, h, w = (int(v) for v in x_shape)
        co, oh, ow = (int(v) for v in dy.shape[1:])
        sh, sw = int(stride[0]), int(stride[1])
        dx = self.xp.empty((n, c, h, w), dtype=dt)
        self._launch("residual.cu", "subsample_pad_backward", dt, dx.size, dy, dx,
                     *map(I64, (n, c, h, w, co, oh, ow, sh, sw, pad_before)))
        return dx

    # ------------------------------------------------------ label smoothing
    def label_smoothing_cross_entropy_forward(self, logits, labels, eps):
        dt = logits.dtype
        logits = self._c(logits)
        labels = self.asarray(labels, dtype=np.int64)
        n, k = int(logits.shape[0]), int(logits.shape[1])
        probs = self.xp.empty((n, k), dtype=dt)
        row_loss = self.xp.empty((n,), dtype=dt)
        self._launch("label_smoothing.cu", "label_smoothing_cross_entropy_forward", dt, n,
                     logits, labels, probs, row_loss, I64(n), I64(k), dt.type(1.0 - eps),
                     dt.type(eps / k))
        loss = self._mean_scalar(row_loss, n, n)       # stays on the device (no sync)
        return loss, probs

    def label_smoothing_cross_entropy_backward(self, probs, labels, eps):
        dt = probs.dtype
        probs = self._c(probs)
        labels = self.asarray(labels, dtype=np.int64)
        n, k = int(probs.shape[0]), int(probs.shape[1])
        dx = self.xp.empty((n, k), dtype=dt)
        self._launch("label_smoothing.cu", "label_smoothing_cross_entropy_backward", dt, n * k,
                     probs, labels, dx, I64(n), I64(k), dt.type(1.0 - eps + eps / k),
                     dt.type(eps / k), dt.type(1.0 / max(n, 1)))
        return dx
