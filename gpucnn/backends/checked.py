"""The seam's argument checks: one function per primitive, run before every backend.

``checked(backend)`` wraps a backend (NumPy, CUDA, the tests' emulated CUDA) so that each
primitive of ``PRIMITIVES`` first runs its entry of ``CHECKS`` with the same arguments,
then the backend's own code.  A bad call therefore raises the *same* one-line error on
every backend, before any kernel is launched::

    conv2d_forward: w (4, 2, 3, 3) takes 2 input channels; expected 3, the channels of x (2, 3, 6, 7)
    maxpool2d_backward: argmax has dtype int64; expected int32

Each message names the primitive, the argument and what was expected.  ``TypeError`` for a
wrong dtype or a non-array, ``ValueError`` for shapes, values and layouts.  The backends
themselves then trust their arguments (no second copy of these checks).

Adding a primitive is one entry here: a function with the primitive's name and signature,
decorated ``@_check`` (or the name in ``UNCHECKED`` when there is nothing to check); the
test suite fails while a primitive of ``PRIMITIVES`` has neither.

Everything other than the primitives (``name``, ``xp``, ``loader``, ``max_cols_elements``,
...) reads and writes through to the wrapped backend.  The overhead is one Python call
and a few attribute reads per primitive call (about 1-3 us; see ``benchmarks/RESULTS.md``).
"""
from __future__ import annotations

import numpy as np

from . import PRIMITIVES
from . import augment as _augment
from .geometry import conv_out_shape, pool_out_shape

_FLOATS = frozenset((np.dtype(np.float32), np.dtype(np.float64)))
_INT32 = np.dtype(np.int32)
_INT64 = np.dtype(np.int64)

#: primitive name -> check(*args, **kwargs) taking the primitive's own arguments.
CHECKS: dict = {}
#: primitives whose arguments need no check (array handling that accepts anything).
UNCHECKED = frozenset(("asarray", "to_numpy", "zeros", "all_finite"))


def _check(fn):
    CHECKS[fn.__name__] = fn
    return fn


# --------------------------------------------------------------------------- the pieces
def _dtype(p, name, a):
    dt = getattr(a, "dtype", None)
    if dt is None or not hasattr(a, "shape"):
        raise TypeError(f"{p}: {name} is a {type(a).__name__}; expected a backend array")
    return dt


def _float(p, name, a):
    """``a``'s dtype, which must be float32 or float64."""
    dt = _dtype(p, name, a)
    if dt not in _FLOATS:
        raise TypeError(f"{p}: {name} has dtype {dt}; expected float32 or float64")
    return dt


def _same(p, name, a, dt, first):
    """``a`` is an array of dtype ``dt``, the dtype of the argument ``first``."""
    got = _dtype(p, name, a)
    if got != dt:
        raise TypeError(f"{p}: {name} has dtype {got}; expected {dt}, the dtype of {first}")


def _shape(p, name, a, shape, why):
    """``a.shape == shape``; ``why()`` says where ``shape`` comes from (built on error only)."""
    if tuple(a.shape) != shape:
        raise ValueError(f"{p}: {name} has shape {tuple(a.shape)}; expected {shape}{why()}")


def _ndim(p, name, a, ndim, layout):
    if len(a.shape) != ndim:
        raise ValueError(f"{p}: {name} has shape {tuple(a.shape)}; expected {ndim}-D {layout}")


def _contiguous(p, name, a):
    if not a.flags.c_contiguous:
        raise ValueError(f"{p}: {name} is not C-contiguous; expected a C-contiguous array "
                         f"(it is updated in place)")


def _like(p, name, a, ref, ref_name):
    """``a`` has the dtype and shape of ``ref``."""
    _same(p, name, a, ref.dtype, ref_name)
    if a.shape != ref.shape:
        raise ValueError(f"{p}: {name} has shape {tuple(a.shape)}; expected {tuple(ref.shape)}, "
                         f"the shape of {ref_name}")


# ---------------------------------------------------------------------- array handling
@_check
def accumulate(dst, src):
    _float("accumulate", "dst", dst)
    _like("accumulate", "src", src, dst, "dst")
    _contiguous("accumulate", "dst", dst)


# ------------------------------------------------------------------ convolution, dense
@_check
def conv2d_forward(x, w, stride, padding):
    p = "conv2d_forward"
    _same(p, "w", w, _float(p, "x", x), "x")
    conv_out_shape(p, x.shape, w.shape, stride, padding)


@_check
def conv2d_backward_data(dy, w, x_shape, stride, padding):
    p = "conv2d_backward_data"
    _same(p, "w", w, _float(p, "dy", dy), "dy")
    y_shape = conv_out_shape(p, x_shape, w.shape, stride, padding, x_name="x_shape")
    _shape(p, "dy", dy, y_shape,
           lambda: f", the output of x_shape {tuple(x_shape)} and w {tuple(w.shape)}")


@_check
def conv2d_backward_weight(dy, x, w_shape, stride, padding):
    p = "conv2d_backward_weight"
    _same(p, "x", x, _float(p, "dy", dy), "dy")
    y_shape = conv_out_shape(p, x.shape, w_shape, stride, padding, w_name="w_shape")
    _shape(p, "dy", dy, y_shape,
           lambda: f", the output of x {tuple(x.shape)} and w_shape {tuple(w_shape)}")


@_check
def conv2d_backward(dy, x, w, stride, padding, input_grad):
    p = "conv2d_backward"
    dt = _float(p, "dy", dy)
    _same(p, "x", x, dt, "dy")
    _same(p, "w", w, dt, "dy")
    y_shape = conv_out_shape(p, x.shape, w.shape, stride, padding)
    _shape(p, "dy", dy, y_shape,
           lambda: f", the output of x {tuple(x.shape)} and w {tuple(w.shape)}")
    if not isinstance(input_grad, (bool, np.bool_)):
        raise TypeError(f"{p}: input_grad is {input_grad!r}; expected True or False")


def _matrices(p, a_name, a, b_name, b):
    _same(p, b_name, b, _float(p, a_name, a), a_name)
    _ndim(p, a_name, a, 2, "(N, features)")
    _ndim(p, b_name, b, 2, "(rows, columns)")


@_check
def linear_forward(x, w):
    _matrices("linear_forward", "x", x, "w", w)
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"linear_forward: w {tuple(w.shape)} takes {w.shape[1]} input features; "
                         f"expected {x.shape[1]}, the features of x {tuple(x.shape)}")


@_check
def linear_backward_data(dy, w):
    _matrices("linear_backward_data", "dy", dy, "w", w)
    if dy.shape[1] != w.shape[0]:
        raise ValueError(f"linear_backward_data: w {tuple(w.shape)} has {w.shape[0]} outputs; "
                         f"expected {dy.shape[1]}, the features of dy {tuple(dy.shape)}")


@_check
def linear_backward_weight(dy, x):
    _matrices("linear_backward_weight", "dy", dy, "x", x)
    if dy.shape[0] != x.shape[0]:
        raise ValueError(f"linear_backward_weight: x {tuple(x.shape)} has {x.shape[0]} rows; "
                         f"expected {dy.shape[0]}, the rows of dy {tuple(dy.shape)}")


def _bias_check(y, b, p):
    _same(p, "b", b, _float(p, "y", y), "y")
    if len(y.shape) < 2:
        raise ValueError(f"{p}: y has shape {tuple(y.shape)}; expected at least 2-D (N, C, ...)")
    _shape(p, "b", b, (y.shape[1],), lambda: f", the channels of y {tuple(y.shape)}")


@_check
def bias_forward(y, b):
    _bias_check(y, b, "bias_forward")



@_check
def bias_backward(dy):
    _float("bias_backward", "dy", dy)
    if len(dy.shape) < 2:
        raise ValueError(f"bias_backward: dy has shape {tuple(dy.shape)}; expected at least "
                         f"2-D (N, C, ...)")


_ACTIVATIONS = (None, "identity", "relu", "sigmoid", "tanh")


@_check
def bias_act_forward(y, b, act):
    _bias_check(y, b, "bias_act_forward")
    if act not in _ACTIVATIONS:
        raise ValueError(f"bias_act_forward: act is {act!r}; expected one of "
                         f"{', '.join(map(repr, _ACTIVATIONS))}")


# ----------------------------------------------------------------------------- pooling
@_check
def maxpool2d_forward(x, kernel, stride, padding):
    _float("maxpool2d_forward", "x", x)
    pool_out_shape("maxpool2d_forward", x.shape, kernel, stride, padding)


@_check
def maxpool2d_backward(dy, argmax, x_shape, kernel, stride, padding):
    p = "maxpool2d_backward"
    _float(p, "dy", dy)
    if _dtype(p, "argmax", argmax) != _INT32:
        raise TypeError(f"{p}: argmax has dtype {argmax.dtype}; expected int32")
    y_shape = pool_out_shape(p, x_shape, kernel, stride, padding, x_name="x_shape")
    why = lambda: f", the output of x_shape {tuple(x_shape)}"  # noqa: E731
    _shape(p, "dy", dy, y_shape, why)
    _shape(p, "argmax", argmax, y_shape, why)


@_check
def avgpool2d_forward(x, kernel, stride, padding):
    _float("avgpool2d_forward", "x", x)
    pool_out_shape("avgpool2d_forward", x.shape, kernel, stride, padding)


@_check
def avgpool2d_backward(dy, x_shape, kernel, stride, padding):
    p = "avgpool2d_backward"
    _float(p, "dy", dy)
    y_shape = pool_out_shape(p, x_shape, kernel, stride, padding, x_name="x_shape")
    _shape(p, "dy", dy, y_shape, lambda: f", the output of x_shape {tuple(x_shape)}")


# ------------------------------------------------------------------------- activations
def _forward(p):
    def check(x):
        _float(p, "x", x)
    check.__name__ = p
    return _check(check)


def _backward(p):
    def check(dy, y):
        _float(p, "dy", dy)
        _like(p, "y", y, dy, "dy")
    check.__name__ = p
    return _check(check)


for _name in ("sigmoid", "relu", "tanh"):
    _forward(f"{_name}_forward")
    _backward(f"{_name}_backward")


# ------------------------------------------------------------------------------ losses
def _labels(p, labels, logits_name, logits):
    if _dtype(p, "labels", labels) != _INT64:
        raise TypeError(f"{p}: labels has dtype {labels.dtype}; expected int64")
    n = logits.shape[0]
    _shape(p, "labels", labels, (n,),
           lambda: f", one per row of {logits_name} {tuple(logits.shape)}")


@_check
def softmax_cross_entropy_forward(logits, labels):
    p = "softmax_cross_entropy_forward"
    _float(p, "logits", logits)
    _ndim(p, "logits", logits, 2, "(N, classes)")
    _labels(p, labels, "logits", logits)
    k = logits.shape[1]
    # as unsigned, a negative label is >= k too: one comparison and one reduction.  Host
    # labels only: on a device this would be a sync per step, and the kernel turns an
    # out-of-range label into a NaN loss instead (read, and reported, by the trainer)
    if labels.shape[0] and isinstance(labels, np.ndarray) \
            and bool((labels.view(np.uint64) >= k).any()):
        lo, hi = int(labels.min()), int(labels.max())
        raise ValueError(f"{p}: labels holds {lo if lo < 0 else hi}; expected class indices "
                         f"in [0, {k})")


@_check
def softmax_cross_entropy_backward(probs, labels):
    p = "softmax_cross_entropy_backward"
    _float(p, "probs", probs)
    _ndim(p, "probs", probs, 2, "(N, classes)")
    _labels(p, labels, "probs", probs)


@_check
def mse_forward(y, t):
    _float("mse_forward", "y", y)
    _like("mse_forward", "t", t, y, "y")


@_check
def mse_backward(y, t):
    _float("mse_backward", "y", y)
    _like("mse_backward", "t", t, y, "y")


# -------------------------------------------------------------------------- optimizers
@_check
def sgd_update(param, grad, buf, lr, momentum, weight_decay, nesterov, first):
    p = "sgd_update"
    _float(p, "param", param)
    _contiguous(p, "param", param)
    _like(p, "grad", grad, param, "param")
    if momentum:
        if buf is None:
            raise ValueError(f"{p}: buf is None; expected a momentum buffer "
                             f"(momentum is {momentum})")
        _like(p, "buf", buf, param, "param")
        _contiguous(p, "buf", buf)


@_check
def adam_update(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay):
    p = "adam_update"
    _float(p, "param", param)
    _contiguous(p, "param", param)
    _like(p, "grad", grad, param, "param")
    for name, a in (("m", m), ("v", v)):
        _like(p, name, a, param, "param")
        _contiguous(p, name, a)
    if step < 1:
        raise ValueError(f"{p}: step is {step}; expected a step count >= 1")


# ------------------------------------------------------------------------------- data
def _indices(p, idx, n):
    if _dtype(p, "idx", idx) != _INT64:
        raise TypeError(f"{p}: idx has dtype {idx.dtype}; expected int64")
    _ndim(p, "idx", idx, 1, "(B,) sample indices")
    # host indices only: on a device the range check would be a sync per batch (the
    # device iterator draws its indices from a permutation of range(N), in range by design)
    if isinstance(idx, np.ndarray) and idx.shape[0] and bool((idx.view(np.uint64) >= n).any()):
        raise ValueError(f"{p}: idx holds values outside [0, {n}), the samples of src")


@_check
def gather_rows(src, idx):
    p = "gather_rows"
    _float(p, "src", src)
    if len(src.shape) < 1:
        raise ValueError(f"{p}: src has shape (); expected (N, ...)")
    _indices(p, idx, src.shape[0])


@_check
def gather_normalize(src, idx, mean, std, pixel_max, dtype):
    p = "gather_normalize"
    if _dtype(p, "src", src) != np.dtype(np.uint8):
        raise TypeError(f"{p}: src has dtype {src.dtype}; expected uint8")
    if len(src.shape) < 2:
        raise ValueError(f"{p}: src has shape {tuple(src.shape)}; expected (N, C, ...)")
    if np.dtype(dtype) not in _FLOATS:
        raise TypeError(f"{p}: dtype is {np.dtype(dtype)}; expected float32 or float64")
    c = src.shape[1]
    if len(mean) != c or len(std) != c:
        raise ValueError(f"{p}: mean/std have {len(mean)}/{len(std)} values; expected {c}, "
                         f"the channels of src {tuple(src.shape)}")
    if not pixel_max > 0:
        raise ValueError(f"{p}: pixel_max is {pixel_max!r}; expected a positive number")
    _indices(p, idx, src.shape[0])


# ------------------------------------------------------------------------ augmentation
@_check
def crop_flip(x, top, left, flip, size, padding):
    _augment.check_crop_flip(x, top, left, flip, size, padding)


@_check
def channel_normalize(x, mean, std):
    _augment.check_channel_normalize(x, mean, std)

# --------------------------------- issue 10: batch norm, dropout, residual, label smoothing
def _channels(p, name, a):
    """``a``: float, at least 2-D (N, C, ...) with N*S >= 1 values per channel; returns C."""
    _float(p, name, a)
    if len(a.shape) < 2:
        raise ValueError(f"{p}: {name} has shape {tuple(a.shape)}; expected at least 2-D "
                         f"(N, C, ...)")
    if a.size == 0:
        raise ValueError(f"{p}: {name} has shape {tuple(a.shape)}; expected at least one value "
                         f"per channel")
    return a.shape[1]


def _per_channel(p, x_name, x, **arrays):
    """Each of ``arrays`` is (C,) of x's dtype, C = the channels of x."""
    c = x.shape[1]
    for name, a in arrays.items():
        _same(p, name, a, x.dtype, x_name)
        _shape(p, name, a, (c,), lambda: f", the channels of {x_name} {tuple(x.shape)}")


def _eps(p, eps):
    if not eps > 0:
        raise ValueError(f"{p}: eps is {eps!r}; expected a positive number")


@_check
def add(a, b, act=None):
    _float("add", "a", a)
    _like("add", "b", b, a, "a")
    if act not in ADD_ACTS:
        raise ValueError(f"add: act is {act!r}; expected one of {ADD_ACTS}")


#: the activations add can apply in its own pass
ADD_ACTS = (None, "relu")


@_check
def batchnorm_stats(x):
    _channels("batchnorm_stats", "x", x)


#: the activations batchnorm_forward can apply in its own pass
BATCHNORM_ACTS = (None, "relu")


@_check
def batchnorm_forward(x, mean, var, weight, bias, eps, act=None):
    p = "batchnorm_forward"
    _channels(p, "x", x)
    _per_channel(p, "x", x, mean=mean, var=var, weight=weight, bias=bias)
    _eps(p, eps)
    if act not in BATCHNORM_ACTS:
        raise ValueError(f"{p}: act is {act!r}; expected one of {BATCHNORM_ACTS}")


@_check
def batchnorm_backward(dy, x, mean, var, weight, eps, batch_stats, y=None):
    p = "batchnorm_backward"
    _channels(p, "dy", dy)
    _like(p, "x", x, dy, "dy")
    _per_channel(p, "x", x, mean=mean, var=var, weight=weight)
    _eps(p, eps)
    if y is not None:
        _like(p, "y", y, dy, "dy")


@_check
def batchnorm_update_running(running_mean, running_var, mean, var, momentum, count):
    p = "batchnorm_update_running"
    _float(p, "running_mean", running_mean)
    _ndim(p, "running_mean", running_mean, 1, "(C,)")
    _contiguous(p, "running_mean", running_mean)
    _like(p, "running_var", running_var, running_mean, "running_mean")
    _contiguous(p, "running_var", running_var)
    _like(p, "mean", mean, running_mean, "running_mean")
    _like(p, "var", var, running_mean, "running_mean")
    if not 0 <= momentum <= 1:
        raise ValueError(f"{p}: momentum is {momentum!r}; expected a number in [0, 1]")
    if count < 2:
        raise ValueError(f"{p}: count is {count!r}; expected at least 2 values per channel "
                         f"(the unbiased variance divides by count - 1)")


def _dropout(p, name, a, prob, seed):
    _float(p, name, a)
    if not 0 <= prob <= 1:
        raise ValueError(f"{p}: p is {prob!r}; expected a probability in [0, 1]")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) \
            or not 0 <= seed < 2 ** 63:
        raise ValueError(f"{p}: seed is {seed!r}; expected an integer in [0, 2**63)")


@_check
def dropout_forward(x, p, seed):
    _dropout("dropout_forward", "x", x, p, seed)


@_check
def dropout_backward(dy, p, seed):
    _dropout("dropout_backward", "dy", dy, p, seed)


def _subsample(p, stride, pad_before):
    if len(stride) != 2 or min(stride) < 1:
        raise ValueError(f"{p}: stride is {stride!r}; expected an (h, w) pair of integers >= 1")
    if pad_before < 0:
        raise ValueError(f"{p}: pad_before is {pad_before!r}; expected an integer >= 0")


@_check
def subsample_pad_forward(x, stride, pad_before, out_channels):
    p = "subsample_pad_forward"
    _float(p, "x", x)
    _ndim(p, "x", x, 4, "(N, C, H, W)")
    _subsample(p, stride, pad_before)
    if pad_before + x.shape[1] > out_channels:
        raise ValueError(f"{p}: out_channels is {out_channels}; expected at least "
                         f"{pad_before + x.shape[1]} (pad_before {pad_before} + the channels of "
                         f"x {tuple(x.shape)})")


@_check
def subsample_pad_backward(dy, x_shape, stride, pad_before):
    p = "subsample_pad_backward"
    _float(p, "dy", dy)
    _ndim(p, "dy", dy, 4, "(N, C, H, W)")
    _subsample(p, stride, pad_before)
    n, c, h, w = (int(v) for v in x_shape)
    out = (n, dy.shape[1], -(-h // stride[0]), -(-w // stride[1]))
    _shape(p, "dy", dy, out, lambda: f", the subsampled x_shape {tuple(x_shape)}")
    if pad_before + c > dy.shape[1]:
        raise ValueError(f"{p}: dy has {dy.shape[1]} channels; expected at least "
                         f"{pad_before + c} (pad_before {pad_before} + the channels of x_shape "
                         f"{tuple(x_shape)})")


def _smoothing(p, eps):
    if not 0 <= eps <= 1:
        raise ValueError(f"{p}: eps is {eps!r}; expected a label smoothing in [0, 1]")


@_check
def label_smoothing_cross_entropy_forward(logits, labels, eps):
    p = "label_smoothing_cross_entropy_forward"
    _float(p, "logits", logits)
    _ndim(p, "logits", logits, 2, "(N, classes)")
    _labels(p, labels, "logits", logits)
    _smoothing(p, eps)
    k = logits.shape[1]
    # host labels only, as softmax_cross_entropy_forward (a device check would be a sync)
    if labels.shape[0] and isinstance(labels, np.ndarray) \
            and bool((labels.view(np.uint64) >= k).any()):
        lo, hi = int(labels.min()), int(labels.max())
        raise ValueError(f"{p}: labels holds {lo if lo < 0 else hi}; expected class indices "
                         f"in [0, {k})")


@_check
def label_smoothing_cross_entropy_backward(probs, labels, eps):
    p = "label_smoothing_cross_entropy_backward"
    _float(p, "probs", probs)
    _ndim(p, "probs", probs, 2, "(N, classes)")
    _labels(p, labels, "probs", probs)
    _smoothing(p, eps)


# ------------------------------------------------------------------------- the wrapper
def _bind(check, fn):
    def primitive(*args, **kwargs):
        check(*args, **kwargs)
        return fn(*args, **kwargs)
    primitive.__name__ = fn.__name__
    primitive.__doc__ = fn.__doc__
    primitive.__wrapped__ = fn
    return primitive


class CheckedBackend:
    """``backend`` with every primitive checked first; everything else passes through."""

    def __init__(self, backend):
        object.__setattr__(self, "_backend", backend)
        for name in PRIMITIVES:
            fn = getattr(backend, name)
            if name not in UNCHECKED:
                if name not in CHECKS:
                    raise NotImplementedError(
                        f"gpucnn/backends/checked.py has no check for the primitive {name!r}: "
                        f"add a function named {name} decorated @_check (or the name to UNCHECKED)")
                fn = _bind(CHECKS[name], fn)
            object.__setattr__(self, name, fn)

    @property
    def unchecked(self):
        """The wrapped backend itself."""
        return self._backend

    def __getattr__(self, attr):          # only reached for what the wrapper does not hold
        if attr == "_backend":            # (copy/pickle probing a half-built instance)
            raise AttributeError(attr)
        return getattr(self._backend, attr)

    def __setattr__(self, attr, value):   # a primitive replaced (tests) stays on the wrapper
        if attr in _PRIMITIVE_SET:
            object.__setattr__(self, attr, value)
        else:
            setattr(self._backend, attr, value)

    def __repr__(self):
        return f"checked({self._backend!r})"


_PRIMITIVE_SET = frozenset(PRIMITIVES)


def checked(backend):
    """``backend`` behind the seam's checks (itself if it is already checked; None stays None)."""
    if backend is None or isinstance(backend, CheckedBackend):
        return backend
    return CheckedBackend(backend)
