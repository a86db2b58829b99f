"""The backend primitives on NumPy (see ``gpucnn.backends`` for the list and semantics).

Modules, one concern each:

* ``backend``   -- ``NumpyBackend``: binds the primitives below, on one screen.
* ``conv``      -- convolution: one plan per layout (pointwise, wide-row, rectangle),
                   each with forward, backward-data and backward-weight side by side.
* ``pooling``   -- max and average pooling, forward and backward.
* ``dense``     -- fully connected GEMMs.
* ``pointwise`` -- bias, activations, losses, optimizer updates, the finiteness check.
* ``blocks``    -- issue 10's layers: batch norm, dropout, the option-A shortcut, the
                   residual add, label-smoothed cross-entropy.
* ``windows``   -- the window-offset walk (im2col / col2im rectangles) conv and pooling share.
* ``parallel``  -- the worker threads and BLAS's thread limit (through threadpoolctl).
* ``memory``    -- per-thread scratch buffers and the refcount-checked output pool.
"""
from .backend import NumpyBackend

__all__ = ["NumpyBackend"]
