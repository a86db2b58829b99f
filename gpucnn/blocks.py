"""The layers of real networks (issue 10): batch normalisation, dropout, global average
pooling, identity, residual blocks and the ResNet paper's option-A shortcut.

Same pattern as ``layers.py``: PyTorch's names, arguments, defaults and ``state_dict`` keys;
``forward`` asks the input's backend for primitives and keeps what ``backward`` needs;
``backward(grad, input_grad=True)`` returns δ for the input (None when ``input_grad`` is
False) and adds parameter gradients into ``.grad``.  ``model.train()`` / ``model.eval()``
switch BatchNorm (batch vs running statistics) and Dropout (masking vs identity).
"""
from __future__ import annotations

import numpy as np

from . import random as _random
from .layers import Buffer, Module, Parameter, _accumulate, _inside, check_float_input
from .validation import POSITIVE, POSITIVE_INT, Rule, int_pair

#: a probability or a momentum: a number in [0, 1]
_UNIT = Rule(float, 0, 1)


def _flag(value, name, layer):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{layer}: {name} must be True or False, got {value!r}")
    return bool(value)


# ================================================================== batch norm
class _BatchNorm(Module):
    """y = (x − mean) / sqrt(var + eps) · weight + bias, per channel.

    Training (or ``track_running_stats=False``): mean and biased variance of the batch over
    every axis but 1; the running mean and the *unbiased* running variance are updated with
    ``momentum`` (``None``: the cumulative average, momentum = 1/num_batches_tracked).
    ``eval()`` with running statistics: those are used instead.  The backward in training is
    the full one through the batch mean and variance; in eval it is the affine map's.
    """

    _ndims = (4,)
    _fuses_relu = True      # a ReLU right after it in a Sequential runs in its passes

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True):
        name = type(self).__name__
        self.num_features = POSITIVE_INT(num_features, "num_features", name)
        self.eps = POSITIVE(eps, "eps", name)
        self.momentum = None if momentum is None else _UNIT(momentum, "momentum", name)
        self.affine = _flag(affine, "affine", name)
        self.track_running_stats = _flag(track_running_stats, "track_running_stats", name)
        c = self.num_features
        self.weight = Parameter(np.ones(c, dtype=np.float32)) if self.affine else None
        self.bias = Parameter(np.zeros(c, dtype=np.float32)) if self.affine else None
        if self.track_running_stats:
            self.running_mean = Buffer(np.zeros(c, dtype=np.float32))
            self.running_var = Buffer(np.ones(c, dtype=np.float32))
            self.num_batches_tracked = Buffer(np.array(0, dtype=np.int64))
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None
        self._x = None
        self._ones = None

    def _affine_arrays(self, B, x):
        """(weight, bias) arrays; ones and zeros without ``affine``."""
        if self.affine:
            self._check_same(x, B, self.weight)
            return self.weight.data, self.bias.data
        if self.track_running_stats:
            self._check_same(x, B, self.running_mean)
        key = (B.name, x.dtype)
        if self._ones is None or self._ones[0] != key:
            c = self.num_features
            self._ones = (key, B.asarray(np.ones(c), dtype=x.dtype),
                          B.asarray(np.zeros(c), dtype=x.dtype))
        return self._ones[1], self._ones[2]

    def forward(self, x, act=None):
        """``act="relu"``: a ReLU that follows in a Sequential, applied in the same pass
        (see Sequential.forward); the ReLU's backward then runs inside this one's."""
        name = self._name
        B = check_float_input(name, x, self._ndims)
        if x.shape[1] != self.num_features:
            raise ValueError(f"{name}: expected {self.num_features} channels (axis 1), got "
                             f"input shape {tuple(x.shape)}")
        weight, bias = self._affine_arrays(B, x)
        count = x.size // x.shape[1]          # values per channel (M)
        batch_stats = self.training or not self.track_running_stats
        if batch_stats:
            if count < 1 or (self.training and count == 1):
                raise ValueError(f"{name}: expected more than 1 value per channel when "
                                 f"training, got input shape {tuple(x.shape)}")
            mean, var = B.batchnorm_stats(x)
            if self.training and self.track_running_stats:
                self.num_batches_tracked.data = self.num_batches_tracked.data + np.int64(1)
                momentum = self.momentum
                if momentum is None:
                    momentum = 1.0 / float(self.num_batches_tracked.data)
                B.batchnorm_update_running(self.running_mean.data, self.running_var.data,
                                           mean, var, momentum, count)
        else:
            mean, var = self.running_mean.data, self.running_var.data
        y = B.batchnorm_forward(x, mean, var, weight, bias, self.eps, act)
        self._x, self._saved_stats = x, (mean, var, weight, batch_stats)
        return y

    def backward(self, grad, input_grad=True, act_out=None):
        """δ for the input (None when ``input_grad`` is False); fills weight/bias ``.grad``.
        ``act_out``: the output of a forward with ``act="relu"``; ``grad`` is then the
        gradient of that output, and the ReLU's backward is taken first."""
        x = self._saved("_x")
        B = self._check_grad(grad, x.shape, x.dtype)
        mean, var, weight, batch_stats = self._saved_stats
        dx, dweight, dbias = B.batchnorm_backward(grad, x, mean, var, weight, self.eps,
                                                  batch_stats, act_out)
        if self.affine:
            _accumulate(self.weight, dweight)
            _accumulate(self.bias, dbias)
        return dx if input_grad else None

    def __repr__(self):
        return (f"{self._name}({self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats})")


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of an (N, C, H, W) input over N, H, W per channel."""
    _ndims = (4,)


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of an (N, C) input (after a Linear) or (N, C, L), per channel."""
    _ndims = (2, 3)


# ===================================================================== dropout
class Dropout(Module):
    """Inverted dropout: in training each element is zeroed with probability ``p`` and the
    rest scaled by 1/(1−p); identity in ``eval()``.

    Each training forward draws one 64-bit seed from gpucnn's global generator
    (``gpucnn.manual_seed``); the mask is a hash of (seed, element index), the same on both
    backends, so runs are reproducible and a resumed run (which restores the generator)
    continues bitwise.  The backward recomputes the mask from the seed: nothing is stored.
    """

    def __init__(self, p=0.5):
        self.p = _UNIT(p, "p (the probability of dropping an element)", "Dropout")
        self._state = None

    def forward(self, x):
        B = check_float_input("Dropout", x)
        if not self.training or self.p == 0.0:
            self._state = (x.shape, x.dtype, None)
            return x
        seed = int(_random.default_generator().integers(0, 2 ** 63, dtype=np.int64))
        self._state = (x.shape, x.dtype, seed)
        return B.dropout_forward(x, self.p, seed)

    def backward(self, grad, input_grad=True):
        shape, dtype, seed = self._saved("_state")
        B = self._check_grad(grad, shape, dtype)
        if not input_grad:
            return None
        if seed is None:
            return grad
        return B.dropout_backward(grad, self.p, seed)

    def __repr__(self):
        return f"Dropout(p={self.p})"


# ===================================================================== pooling
class AdaptiveAvgPool2d(Module):
    """Average pooling to a fixed ``output_size`` (an int, or an (h, w) pair; None keeps
    that input size).  ``AdaptiveAvgPool2d(1)`` is global average pooling.  The input's
    H and W must be multiples of the output's: then the windows are disjoint, equal, and
    the result is exactly PyTorch's; other sizes are refused with an error."""

    def __init__(self, output_size):
        size = output_size if isinstance(output_size, (tuple, list)) else (output_size,) * 2
        if len(size) != 2:
            raise ValueError(f"AdaptiveAvgPool2d: output_size must be an int or an (h, w) pair, "
                             f"got {output_size!r}")
        for v in size:
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer))
                                  or v < 1):
                raise ValueError(f"AdaptiveAvgPool2d: output_size must hold positive ints "
                                 f"(or None), got {output_size!r}")
        self.output_size = tuple(None if v is None else int(v) for v in size)
        self._state = None

    def forward(self, x):
        B = check_float_input("AdaptiveAvgPool2d", x, 4)
        h, w = int(x.shape[2]), int(x.shape[3])
        oh = h if self.output_size[0] is None else self.output_size[0]
        ow = w if self.output_size[1] is None else self.output_size[1]
        if h % oh or w % ow:
            raise ValueError(f"AdaptiveAvgPool2d: the input's {h}x{w} is not a multiple of the "
                             f"output size {oh}x{ow}; only sizes that divide the input are "
                             f"supported")
        kernel = (h // oh, w // ow)
        y = B.avgpool2d_forward(x, kernel, kernel, (0, 0))
        self._state = (x.shape, x.dtype, kernel, y.shape)
        return y

    def backward(self, grad, input_grad=True):
        x_shape, dtype, kernel, y_shape = self._saved("_state")
        B = self._check_grad(grad, y_shape, dtype)
        if not input_grad:
            return None
        return B.avgpool2d_backward(grad, x_shape, kernel, kernel, (0, 0))

    def __repr__(self):
        size = self.output_size
        return f"AdaptiveAvgPool2d(output_size={size[0] if size[0] == size[1] else size})"


class Identity(Module):
    """y = x (a placeholder, as torch.nn.Identity; arguments are accepted and ignored)."""

    def __init__(self, *args, **kwargs):
        pass

    def forward(self, x):
        return x

    def backward(self, grad, input_grad=True):
        return grad if input_grad else None

    def __repr__(self):
        return "Identity()"


# ============================================================= residual blocks
class Residual(Module):
    """y = main(x) + shortcut(x); ``shortcut=None`` is the identity.

    The backward sends δ through both branches (the shortcut's first, then the main one)
    and returns the sum of the two input gradients.  Children are named ``main`` and
    ``shortcut`` (state_dict keys ``main.0.weight``, ``shortcut.1.running_mean``, ...).
    Shortcuts of the ResNet paper: identity (None), option A (:class:`ShortcutA`),
    option B (``Sequential(Conv2d(c_in, c_out, 1, stride=s, bias=False), BatchNorm2d(c_out))``).
    """

    def __init__(self, main, shortcut=None):
        if not isinstance(main, Module):
            raise TypeError(f"Residual: main must be a gpucnn Module, got {type(main).__name__}")
        if shortcut is not None and not isinstance(shortcut, Module):
            raise TypeError(f"Residual: shortcut must be a gpucnn Module or None, got "
                            f"{type(shortcut).__name__}")
        self.main = main
        self.shortcut = shortcut
        self._shape = None

    _fuses_relu = True      # a ReLU right after it in a Sequential runs in the add's pass

    def forward(self, x, act=None):
        """``act="relu"``: a ReLU that follows in a Sequential, applied in the add's pass
        (see Sequential.forward); its backward then runs first in this one's."""
        B = check_float_input("Residual", x)
        with _inside():
            a = self.main(x)
            s = x if self.shortcut is None else self.shortcut(x)
        if tuple(a.shape) != tuple(s.shape):
            raise ValueError(f"Residual: the main branch gives shape {tuple(a.shape)} but the "
                             f"shortcut gives {tuple(s.shape)} for input {tuple(x.shape)}; give "
                             f"a shortcut that matches (ShortcutA, or a 1x1 Conv2d + BatchNorm2d)")
        y = B.add(a, s, act)
        self._shape = (y.shape, y.dtype)
        return y

    def backward(self, grad, input_grad=True, act_out=None):
        """``act_out``: the output of a forward with ``act="relu"``; ``grad`` is then the
        gradient of that output, and the ReLU's backward is taken first."""
        shape, dtype = self._saved("_shape")
        B = self._check_grad(grad, shape, dtype)
        if act_out is not None:
            grad = B.relu_backward(grad, act_out)
        with _inside():
            if self.shortcut is None:
                d_short = grad if input_grad else None
            else:
                d_short = self.shortcut.backward(grad, input_grad=input_grad)
            d_main = self.main.backward(grad, input_grad=input_grad)
        if not input_grad:
            return None
        return B.add(d_main, d_short)

    def __repr__(self):
        main = "\n  ".join(repr(self.main).splitlines())
        short = "\n  ".join(repr(self.shortcut).splitlines()) if self.shortcut else "Identity()"
        return f"Residual(\n  (main): {main}\n  (shortcut): {short}\n)"


class ShortcutA(Module):
    """The ResNet paper's option-A shortcut, parameter-free: ``x[:, :, ::s, ::s]`` with the
    channels zero-padded from ``in_channels`` to ``out_channels``, the padding split evenly
    before and after ((out − in) // 2 before), as the common CIFAR ResNet code does with
    ``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))``."""

    def __init__(self, in_channels, out_channels, stride=2):
        self.in_channels = POSITIVE_INT(in_channels, "in_channels", "ShortcutA")
        self.out_channels = POSITIVE_INT(out_channels, "out_channels", "ShortcutA")
        if self.out_channels < self.in_channels:
            raise ValueError(f"ShortcutA: out_channels ({out_channels}) must be at least "
                             f"in_channels ({in_channels}); option A only adds zero channels")
        self.stride = int_pair(stride, "stride", "ShortcutA", 1)
        self.pad_before = (self.out_channels - self.in_channels) // 2
        self._state = None

    def forward(self, x):
        B = check_float_input("ShortcutA", x, 4)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"ShortcutA: expected {self.in_channels} input channels, got "
                             f"input shape {tuple(x.shape)}")
        y = B.subsample_pad_forward(x, self.stride, self.pad_before, self.out_channels)
        self._state = (x.shape, x.dtype, y.shape)
        return y

    def backward(self, grad, input_grad=True):
        x_shape, dtype, y_shape = self._saved("_state")
        B = self._check_grad(grad, y_shape, dtype)
        if not input_grad:
            return None
        return B.subsample_pad_backward(grad, x_shape, self.stride, self.pad_before)

    def __repr__(self):
        return f"ShortcutA({self.in_channels}, {self.out_channels}, stride={self.stride})"


__all__ = ["BatchNorm1d", "BatchNorm2d", "Dropout", "AdaptiveAvgPool2d", "Identity",
           "Residual", "ShortcutA"]
