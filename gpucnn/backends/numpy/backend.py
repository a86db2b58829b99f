"""``NumpyBackend``: every primitive of ``gpucnn.backends.PRIMITIVES`` on NumPy, bound
from the modules of this package (semantics: the docstring of ``gpucnn.backends``)."""
from __future__ import annotations

import numpy as np

from . import augment, blocks, conv, dense, pooling, pointwise as pw
from .parallel import WORKERS


class NumpyBackend:
    """Every primitive of ``gpucnn.backends.PRIMITIVES`` on NumPy arrays."""

    name = "cpu"
    xp = np

    @property
    def threads(self):
        """Threads the primitives split the batch over ($GPUCNN_NUM_THREADS, default: the CPUs)."""
        return WORKERS.threads

    @threads.setter
    def threads(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"NumpyBackend.threads must be a positive int, got {value!r}")
        WORKERS.set_threads(int(value))

    # arrays
    def asarray(self, a, dtype=None):
        if hasattr(a, "get") and not isinstance(a, np.ndarray):  # a CuPy array
            a = a.get()
        return np.ascontiguousarray(a, dtype=dtype)

    def to_numpy(self, a):
        return np.asarray(a)

    def zeros(self, shape, dtype):
        return np.zeros(shape, dtype=dtype)

    def accumulate(self, dst, src):
        np.add(dst, src, out=dst)

    all_finite = staticmethod(pw.all_finite)

    # convolution (conv.py: one plan per layout, its three passes side by side)
    conv2d_forward = staticmethod(conv.conv2d_forward)
    conv2d_backward_data = staticmethod(conv.conv2d_backward_data)
    conv2d_backward_weight = staticmethod(conv.conv2d_backward_weight)
    conv2d_backward = staticmethod(conv.conv2d_backward)

    # dense and bias
    linear_forward = staticmethod(dense.linear_forward)
    linear_backward_data = staticmethod(dense.linear_backward_data)
    linear_backward_weight = staticmethod(dense.linear_backward_weight)
    bias_forward = staticmethod(pw.bias_forward)
    bias_backward = staticmethod(pw.bias_backward)
    bias_act_forward = staticmethod(pw.bias_act_forward)

    # data resident on the device (here: host memory)
    gather_rows = staticmethod(pw.gather_rows)
    gather_normalize = staticmethod(pw.gather_normalize)

    # pooling
    maxpool2d_forward = staticmethod(pooling.maxpool2d_forward)
    maxpool2d_backward = staticmethod(pooling.maxpool2d_backward)
    avgpool2d_forward = staticmethod(pooling.avgpool2d_forward)
    avgpool2d_backward = staticmethod(pooling.avgpool2d_backward)

    # activations
    sigmoid_forward = staticmethod(pw.sigmoid_forward)
    sigmoid_backward = staticmethod(pw.sigmoid_backward)
    relu_forward = staticmethod(pw.relu_forward)
    relu_backward = staticmethod(pw.relu_backward)
    tanh_forward = staticmethod(pw.tanh_forward)
    tanh_backward = staticmethod(pw.tanh_backward)

    # losses
    softmax_cross_entropy_forward = staticmethod(pw.softmax_cross_entropy_forward)
    softmax_cross_entropy_backward = staticmethod(pw.softmax_cross_entropy_backward)
    mse_forward = staticmethod(pw.mse_forward)
    mse_backward = staticmethod(pw.mse_backward)

    # optimizers
    sgd_update = staticmethod(pw.sgd_update)
    adam_update = staticmethod(pw.adam_update)

    # augmentation
    crop_flip = staticmethod(augment.crop_flip)
    channel_normalize = staticmethod(augment.channel_normalize)

    # issue 10 (blocks.py): batch norm, dropout, the option-A shortcut, the residual add,
    # label smoothing
    add = staticmethod(blocks.add)
    batchnorm_stats = staticmethod(blocks.batchnorm_stats)
    batchnorm_forward = staticmethod(blocks.batchnorm_forward)
    batchnorm_backward = staticmethod(blocks.batchnorm_backward)
    batchnorm_update_running = staticmethod(blocks.batchnorm_update_running)
    dropout_forward = staticmethod(blocks.dropout_forward)
    dropout_backward = staticmethod(blocks.dropout_backward)
    subsample_pad_forward = staticmethod(blocks.subsample_pad_forward)
    subsample_pad_backward = staticmethod(blocks.subsample_pad_backward)
    label_smoothing_cross_entropy_forward = staticmethod(blocks.label_smoothing_cross_entropy_forward)
    label_smoothing_cross_entropy_backward = staticmethod(blocks.label_smoothing_cross_entropy_backward)
