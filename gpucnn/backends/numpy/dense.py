"""Fully connected layers on NumPy: one GEMM each, the batch split over the workers."""
from __future__ import annotations

import numpy as np

from .memory import empty
from .parallel import PARALLEL_MIN_FLOPS, WORKERS, split_sum


def linear_forward(x, w):
    y = empty((x.shape[0], w.shape[0]), x.dtype)
    WORKERS.run(lambda s, e: np.matmul(x[s:e], w.T, out=y[s:e]),
                WORKERS.parts(x.shape[0], w.size, PARALLEL_MIN_FLOPS), blas=True)
    return y


def linear_backward_data(dy, w):
    dx = empty((dy.shape[0], w.shape[1]), dy.dtype)
    WORKERS.run(lambda s, e: np.matmul(dy[s:e], w, out=dx[s:e]),
                WORKERS.parts(dy.shape[0], w.size, PARALLEL_MIN_FLOPS), blas=True)
    return dx


def linear_backward_weight(dy, x):
    parts = WORKERS.run(lambda s, e: dy[s:e].T @ x[s:e],
                        WORKERS.parts(dy.shape[0], dy.shape[1] * x.shape[1], PARALLEL_MIN_FLOPS),
                        blas=True)
    return split_sum(parts)
