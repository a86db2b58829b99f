"""The parity case table: every backend primitive on small, awkward shapes.

One table for `gpucnn check` (each case against ``gpucnn.reference``, the loop oracle,
and the GPU against the NumPy backend) and for ``tests/test_parity.py`` (every other
backend against the NumPy backend), which adds its larger shapes with the same builders.

A ``Case`` is a primitive, an id and the arguments of its family's recipe:
``case.run(B, dtype)`` runs the primitive on backend ``B`` and returns a tuple of its
results (backend arrays, Python scalars); ``case.reference(dtype)`` returns what they
should be, computed in float64 from the definitions.  Inputs come from fixed seeds on the
host, so every backend computes from the same numbers.

Adding a primitive: a recipe pair (``@_recipe``) and its rows in ``CASES``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import reference
from .backends.geometry import out_hw

_RUN: dict = {}
_REF: dict = {}


@dataclass(frozen=True)
class Case:
    primitive: str
    ident: str
    args: dict = field(default_factory=dict)
    large: bool = False      # the tests skip it on slow backends (the CPU emulator)

    def run(self, B, dtype) -> tuple:
        return _RUN[self.primitive](B, dtype, **self.args)

    def reference(self, dtype) -> tuple:
        return _REF[self.primitive](dtype, **self.args)

    def __repr__(self):
        return f"{self.primitive}[{self.ident}]"


def _recipe(*primitives):
    """Register ``run(B, dt, **args)`` for ``primitives`` and, as ``.ref``, its reference."""
    def deco(run):
        def ref(fn):
            for p in primitives:
                _REF[p] = fn
            return fn
        for p in primitives:
            _RUN[p] = run
        run.ref = ref
        return run
    return deco


def _rand(seed, shape, dtype, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def _f64(a):
    return np.asarray(a, dtype=np.float64)


def _cpu():
    from .backends import cpu_backend
    return cpu_backend()


# ------------------------------------------------------------------------- convolution
def _conv_inputs(dt, x, w, stride, padding):
    dy = (x[0], w[0]) + out_hw(x[2:], w[2:], stride, padding)
    return _rand(1, x, dt), _rand(2, w, dt, 0.3), _rand(3, dy, dt)


class _cols_limit:
    """Make the CUDA backend process the batch in chunks of a few samples."""

    def __init__(self, B, limit):
        self.B, self.limit = B, limit

    def __enter__(self):
        self.saved = getattr(self.B, "max_cols_elements", None)
        if self.limit and self.saved is not None:
            self.B.max_cols_elements = self.limit

    def __exit__(self, *exc):
        if self.limit and self.saved is not None:
            self.B.max_cols_elements = self.saved


@_recipe("conv2d_forward")
def _(B, dt, x, w, stride, padding, max_cols=None):
    xa, wa, _ = _conv_inputs(dt, x, w, stride, padding)
    with _cols_limit(B, max_cols):
        return (B.conv2d_forward(B.asarray(xa), B.asarray(wa), stride, padding),)


@_.ref
def _(dt, x, w, stride, padding, max_cols=None):
    xa, wa, _ = _conv_inputs(dt, x, w, stride, padding)
    return (reference.conv2d(xa, wa, None, stride, padding),)


@_recipe("conv2d_backward_data")
def _(B, dt, x, w, stride, padding, max_cols=None):
    _, wa, dy = _conv_inputs(dt, x, w, stride, padding)
    with _cols_limit(B, max_cols):
        return (B.conv2d_backward_data(B.asarray(dy), B.asarray(wa), x, stride, padding),)


@_.ref
def _(dt, x, w, stride, padding, max_cols=None):
    xa, wa, dy = _conv_inputs(dt, x, w, stride, padding)
    return (reference.conv2d_backward(dy, xa, wa, stride, padding)[0],)


@_recipe("conv2d_backward_weight")
def _(B, dt, x, w, stride, padding, max_cols=None):
    xa, _, dy = _conv_inputs(dt, x, w, stride, padding)
    with _cols_limit(B, max_cols):
        return (B.conv2d_backward_weight(B.asarray(dy), B.asarray(xa), w, stride, padding),)


@_.ref
def _(dt, x, w, stride, padding, max_cols=None):
    xa, wa, dy = _conv_inputs(dt, x, w, stride, padding)
    return (reference.conv2d_backward(dy, xa, wa, stride, padding)[1],)


@_recipe("conv2d_backward")
def _(B, dt, x, w, stride, padding, max_cols=None):
    xa, wa, dy = _conv_inputs(dt, x, w, stride, padding)
    with _cols_limit(B, max_cols):
        return B.conv2d_backward(B.asarray(dy), B.asarray(xa), B.asarray(wa), stride, padding,
                                 True)


@_.ref
def _(dt, x, w, stride, padding, max_cols=None):
    xa, wa, dy = _conv_inputs(dt, x, w, stride, padding)
    return reference.conv2d_backward(dy, xa, wa, stride, padding)[:2]


def conv(ident, x, w, stride, padding, large=False, **extra):
    """The convolution primitives on input ``x`` (N, C, H, W) and weight ``w``."""
    args = dict(x=x, w=w, stride=stride, padding=padding, **extra)
    return [Case(p, ident, args, large) for p in
            ("conv2d_forward", "conv2d_backward_data", "conv2d_backward_weight", "conv2d_backward")]


# ------------------------------------------------------------------------ dense, bias
def _linear_inputs(dt, n, i, o):
    return _rand(4, (n, i), dt), _rand(5, (o, i), dt), _rand(6, (n, o), dt)


@_recipe("linear_forward", "linear_backward_data", "linear_backward_weight")
def _linear_run(B, dt, n, i, o, primitive):
    x, w, dy = _linear_inputs(dt, n, i, o)
    if primitive == "linear_forward":
        return (B.linear_forward(B.asarray(x), B.asarray(w)),)
    if primitive == "linear_backward_data":
        return (B.linear_backward_data(B.asarray(dy), B.asarray(w)),)
    return (B.linear_backward_weight(B.asarray(dy), B.asarray(x)),)


@_linear_run.ref
def _(dt, n, i, o, primitive):
    x, w, dy = _linear_inputs(dt, n, i, o)
    if primitive == "linear_forward":
        return (reference.linear(x, w),)
    dx, dw, _ = reference.linear_backward(dy, x, w)
    return (dx,) if primitive == "linear_backward_data" else (dw,)


def linear(ident, n, i, o):
    """The three ``Linear`` primitives: ``n`` rows of ``i`` features to ``o``."""
    return [Case(p, ident, dict(n=n, i=i, o=o, primitive=p)) for p in
            ("linear_forward", "linear_backward_data", "linear_backward_weight")]


@_recipe("bias_forward")
def _(B, dt, shape):
    return (B.bias_forward(B.asarray(_rand(7, shape, dt)), B.asarray(_rand(8, (shape[1],), dt))),)


@_.ref
def _(dt, shape):
    b = _f64(_rand(8, (shape[1],), dt)).reshape((1, -1) + (1,) * (len(shape) - 2))
    return (_f64(_rand(7, shape, dt)) + b,)


@_recipe("bias_backward")
def _(B, dt, shape):
    return (B.bias_backward(B.asarray(_rand(9, shape, dt))),)


@_.ref
def _(dt, shape):
    axes = tuple(a for a in range(len(shape)) if a != 1)
    return (_f64(_rand(9, shape, dt)).sum(axis=axes),)


_ACT_REF = {None: lambda v: v, "relu": lambda v: np.maximum(v, 0.0),
            "sigmoid": lambda v: 1.0 / (1.0 + np.exp(-v)), "tanh": np.tanh}


@_recipe("bias_act_forward")
def _(B, dt, shape, act):
    return (B.bias_act_forward(B.asarray(_rand(7, shape, dt)), B.asarray(_rand(8, (shape[1],), dt)),
                               act),)


@_.ref
def _(dt, shape, act):
    b = _f64(_rand(8, (shape[1],), dt)).reshape((1, -1) + (1,) * (len(shape) - 2))
    return (_ACT_REF[act](_f64(_rand(7, shape, dt)) + b),)


def bias_act(ident, shape, acts=(None, "relu", "sigmoid", "tanh"), large=False):
    """Bias add fused with each activation on ``shape`` (N, C, ...)."""
    return [Case("bias_act_forward", f"{ident}-{act or 'identity'}", dict(shape=shape, act=act),
                 large) for act in acts]


def bias(ident, shape, large=False, forward=True):
    """Bias add and its gradient on ``shape`` (N, C, ...)."""
    names = ("bias_forward", "bias_backward") if forward else ("bias_backward",)
    return [Case(p, ident, dict(shape=shape), large) for p in names]


# ----------------------------------------------------------------------------- pooling
def _pool_inputs(dt, x, kernel, stride, padding, ties):
    rng = np.random.default_rng(12)
    xa = (rng.integers(0, 3, size=x) if ties else rng.standard_normal(x)).astype(dt)
    dy = _rand(13, x[:2] + out_hw(x[2:], kernel, stride, padding), dt)
    return xa, dy


@_recipe("maxpool2d_forward")
def _(B, dt, x, kernel, stride, padding, ties=False):
    xa, _ = _pool_inputs(dt, x, kernel, stride, padding, ties)
    return tuple(B.maxpool2d_forward(B.asarray(xa), kernel, stride, padding))


@_.ref
def _(dt, x, kernel, stride, padding, ties=False):
    xa, _ = _pool_inputs(dt, x, kernel, stride, padding, ties)
    return tuple(reference.maxpool2d(xa, kernel, stride, padding))


@_recipe("maxpool2d_backward")
def _(B, dt, x, kernel, stride, padding, ties=False):
    xa, dy = _pool_inputs(dt, x, kernel, stride, padding, ties)
    _, argmax = _cpu().maxpool2d_forward(xa, kernel, stride, padding)   # the same argmax for all
    return (B.maxpool2d_backward(B.asarray(dy), B.asarray(argmax), x, kernel, stride, padding),)


@_.ref
def _(dt, x, kernel, stride, padding, ties=False):
    xa, dy = _pool_inputs(dt, x, kernel, stride, padding, ties)
    return (reference.maxpool2d_backward(dy, xa, kernel, stride, padding),)


@_recipe("avgpool2d_forward")
def _(B, dt, x, kernel, stride, padding, ties=False):
    xa, _ = _pool_inputs(dt, x, kernel, stride, padding, ties)
    return (B.avgpool2d_forward(B.asarray(xa), kernel, stride, padding),)


@_.ref
def _(dt, x, kernel, stride, padding, ties=False):
    xa, _ = _pool_inputs(dt, x, kernel, stride, padding, ties)
    return (reference.avgpool2d(xa, kernel, stride, padding),)


@_recipe("avgpool2d_backward")
def _(B, dt, x, kernel, stride, padding, ties=False):
    _, dy = _pool_inputs(dt, x, kernel, stride, padding, ties)
    return (B.avgpool2d_backward(B.asarray(dy), x, kernel, stride, padding),)


@_.ref
def _(dt, x, kernel, stride, padding, ties=False):
    _, dy = _pool_inputs(dt, x, kernel, stride, padding, ties)
    return (reference.avgpool2d_backward(dy, x, kernel, stride, padding),)


def pool(ident, x, kernel, stride, padding, large=False, ties=False):
    """Max and average pooling, forward and backward, on input ``x`` (N, C, H, W).
    ``ties``: small integers, many equal values per window (max pooling only)."""
    names = ("maxpool2d_forward", "maxpool2d_backward")
    if not ties:
        names += ("avgpool2d_forward", "avgpool2d_backward")
    args = dict(x=x, kernel=kernel, stride=stride, padding=padding, ties=ties)
    return [Case(p, ident, args, large) for p in names]


# ------------------------------------------------------------------------- activations
def _act_inputs(dt, shape):
    x = _rand(14, shape, dt, 3.0)
    if x.size > 4:   # saturation: exp overflows in sigmoid, tanh is exactly +-1
        x.flat[:4] = np.array([1000.0, -1000.0, 30.0, -30.0], dtype=dt)
    return x, _rand(15, shape, dt)


@_recipe("sigmoid_forward", "relu_forward", "tanh_forward")
def _act_fwd(B, dt, shape, name):
    x, _ = _act_inputs(dt, shape)
    return (getattr(B, f"{name}_forward")(B.asarray(x)),)


@_act_fwd.ref
def _(dt, shape, name):
    return (getattr(reference, name)(_act_inputs(dt, shape)[0]),)


@_recipe("sigmoid_backward", "relu_backward", "tanh_backward")
def _act_bwd(B, dt, shape, name):
    x, dy = _act_inputs(dt, shape)
    y = getattr(_cpu(), f"{name}_forward")(x)       # the same saved output for every backend
    return (getattr(B, f"{name}_backward")(B.asarray(dy), B.asarray(y)),)


@_act_bwd.ref
def _(dt, shape, name):
    x, dy = _act_inputs(dt, shape)
    return (getattr(reference, f"{name}_backward")(dy, x),)


def activations(ident, shape, large=False):
    """Sigmoid, ReLU and tanh, forward and backward, on ``shape`` (with saturating values)."""
    return [Case(f"{name}_{way}", ident, dict(shape=shape, name=name), large)
            for name in ("sigmoid", "relu", "tanh") for way in ("forward", "backward")]


# ------------------------------------------------------------------------------ losses
def _ce_inputs(dt, n, k, logits):
    z = _rand(16, (n, k), dt, 4.0) if logits is None else np.array(logits, dtype=dt)
    labels = np.random.default_rng(17).integers(0, z.shape[1], size=z.shape[0]).astype(np.int64)
    return z, labels


@_recipe("softmax_cross_entropy_forward")
def _(B, dt, n=None, k=None, logits=None):
    z, labels = _ce_inputs(dt, n, k, logits)
    return tuple(B.softmax_cross_entropy_forward(B.asarray(z), B.asarray(labels)))


@_.ref
def _(dt, n=None, k=None, logits=None):
    z, labels = _ce_inputs(dt, n, k, logits)
    loss, grad = reference.softmax_cross_entropy(z, labels)
    probs = grad * z.shape[0]
    probs[np.arange(z.shape[0]), labels] += 1.0
    return loss, probs


@_recipe("softmax_cross_entropy_backward")
def _(B, dt, n=None, k=None, logits=None):
    z, labels = _ce_inputs(dt, n, k, logits)
    _, probs = _cpu().softmax_cross_entropy_forward(z, labels)   # the same probs for all
    return (B.softmax_cross_entropy_backward(B.asarray(probs), B.asarray(labels)),)


@_.ref
def _(dt, n=None, k=None, logits=None):
    z, labels = _ce_inputs(dt, n, k, logits)
    return (reference.softmax_cross_entropy(z, labels)[1],)


def cross_entropy(ident, n=None, k=None, logits=None):
    """Softmax cross-entropy on ``n`` x ``k`` random logits (or the given ``logits``)."""
    args = dict(n=n, k=k, logits=logits)
    return [Case(p, ident, args) for p in
            ("softmax_cross_entropy_forward", "softmax_cross_entropy_backward")]


def _mse_inputs(dt, shape):
    return _rand(18, shape, dt), _rand(19, shape, dt)


@_recipe("mse_forward", "mse_backward")
def _mse_run(B, dt, shape, primitive):
    y, t = _mse_inputs(dt, shape)
    return (getattr(B, primitive)(B.asarray(y), B.asarray(t)),)


@_mse_run.ref
def _(dt, shape, primitive):
    loss, grad = reference.mse(*_mse_inputs(dt, shape))
    return (loss,) if primitive == "mse_forward" else (grad,)


def mse(ident, shape, large=False):
    return [Case(p, ident, dict(shape=shape, primitive=p), large)
            for p in ("mse_forward", "mse_backward")]


# -------------------------------------------------------------------------- optimizers
_PARAM = (5, 3, 3, 3)


@_recipe("sgd_update")
def _(B, dt, momentum, weight_decay, nesterov, first):
    param = B.asarray(_rand(20, _PARAM, dt))
    buf = B.asarray(_rand(22, _PARAM, dt)) if momentum else None
    B.sgd_update(param, B.asarray(_rand(21, _PARAM, dt)), buf, 0.1, momentum, weight_decay,
                 nesterov, first)
    return (param,) if buf is None else (param, buf)


@_.ref
def _(dt, momentum, weight_decay, nesterov, first):
    p, b = reference.sgd_step(_rand(20, _PARAM, dt), _rand(21, _PARAM, dt),
                              None if first else _rand(22, _PARAM, dt), 0.1, momentum,
                              weight_decay, nesterov)
    return (p,) if b is None else (p, b)


def _adam_inputs(dt):
    return (_rand(23, (7, 11), dt), _rand(24, (7, 11), dt), _rand(25, (7, 11), dt, 0.1),
            np.abs(_rand(26, (7, 11), dt, 0.1)))


@_recipe("adam_update")
def _(B, dt, step, weight_decay):
    param, grad, m, v = (B.asarray(a) for a in _adam_inputs(dt))
    B.adam_update(param, grad, m, v, step, 1e-3, 0.9, 0.999, 1e-8, weight_decay)
    return param, m, v


@_.ref
def _(dt, step, weight_decay):
    param, grad, m, v = _adam_inputs(dt)
    return reference.adam_step(param, grad, m, v, step, 1e-3, (0.9, 0.999), 1e-8, weight_decay)


def sgd(ident, momentum=0.0, weight_decay=0.0, nesterov=False, first=False):
    return [Case("sgd_update", ident, dict(momentum=momentum, weight_decay=weight_decay,
                                           nesterov=nesterov, first=first))]


def adam(ident, step, weight_decay=0.0):
    return [Case("adam_update", ident, dict(step=step, weight_decay=weight_decay))]


# -------------------------------------------------------------------------------- data
def _gather_idx(n, b):
    return np.random.default_rng(32).integers(0, n, size=b).astype(np.int64)


@_recipe("gather_rows")
def _(B, dt, shape, b):
    return (B.gather_rows(B.asarray(_rand(33, shape, dt)), B.asarray(_gather_idx(shape[0], b))),)


@_.ref
def _(dt, shape, b):
    return (_f64(_rand(33, shape, dt)[_gather_idx(shape[0], b)]),)


_MEAN_STD = {1: ((0.1307,), (0.3081,)), 3: ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))}


def _u8(shape):
    return np.random.default_rng(34).integers(0, 256, size=shape).astype(np.uint8)


@_recipe("gather_normalize")
def _(B, dt, shape, b):
    mean, std = _MEAN_STD[shape[1]]
    return (B.gather_normalize(B.asarray(_u8(shape)), B.asarray(_gather_idx(shape[0], b)),
                               mean, std, 255.0, dt),)


@_.ref
def _(dt, shape, b):
    mean, std = _MEAN_STD[shape[1]]
    c = (1, shape[1]) + (1,) * (len(shape) - 2)
    x = _f64(_u8(shape)[_gather_idx(shape[0], b)]) / 255.0
    return ((x - np.reshape(mean, c)) / np.reshape(std, c),)


def gather(ident, shape, b):
    """A batch of ``b`` rows gathered from a ``shape`` dataset, float and uint8 (normalised)."""
    return [Case(p, ident, dict(shape=shape, b=b)) for p in ("gather_rows", "gather_normalize")]


# ---------------------------------------------------------------------- array handling
@_recipe("asarray")
def _(B, dt):
    return (B.to_numpy(B.asarray(_rand(27, (3, 4), np.float64), dtype=dt)),)


@_.ref
def _(dt):
    return (_rand(27, (3, 4), np.float64).astype(dt),)


@_recipe("to_numpy")
def _(B, dt):
    return (B.to_numpy(B.asarray(_rand(28, (2, 3, 4, 5), dt))),)


@_.ref
def _(dt):
    return (_rand(28, (2, 3, 4, 5), dt),)


@_recipe("zeros")
def _(B, dt):
    z = B.zeros((3, 5, 2), dt)
    if np.dtype(z.dtype) != np.dtype(dt):
        raise TypeError(f"zeros((3, 5, 2), {np.dtype(dt).name}) returned dtype {z.dtype}")
    return (z,)


@_.ref
def _(dt):
    return (np.zeros((3, 5, 2)),)


@_recipe("all_finite")
def _(B, dt):
    a = _rand(29, (3, 300), dt)
    out = [B.all_finite(B.asarray(a))]
    for bad in (np.nan, np.inf, -np.inf):
        b = a.copy()
        b[2, 299] = bad
        out.append(B.all_finite(B.asarray(b)))
    return (np.array(out),)


@_.ref
def _(dt):
    return (np.array([True, False, False, False]),)


@_recipe("accumulate")
def _(B, dt):
    dst = B.asarray(_rand(30, (2, 3, 4, 5), dt))
    B.accumulate(dst, B.asarray(_rand(31, (2, 3, 4, 5), dt)))
    return (dst,)


@_.ref
def _(dt):
    return (_f64(_rand(30, (2, 3, 4, 5), dt)) + _f64(_rand(31, (2, 3, 4, 5), dt)),)


def arrays():
    return [Case(p, "basic") for p in ("asarray", "to_numpy", "zeros", "all_finite", "accumulate")]


# --------------------------------------------------------------------------- augmentation
def _crop_inputs(dt, x, size, padding):
    """x, and per-image offsets and flips drawn from a fixed seed (image 0 flipped, 1 not)."""
    n, _, h, w = x
    rng = np.random.default_rng(140)
    top = rng.integers(0, h + 2 * padding[0] - size[0] + 1, n)
    left = rng.integers(0, w + 2 * padding[1] - size[1] + 1, n)
    flip = rng.random(n) < 0.5
    flip[:2] = (True, False)[:n]
    return _rand(141, x, dt), top, left, flip


@_recipe("crop_flip")
def _(B, dt, x, size, padding):
    xa, top, left, flip = _crop_inputs(dt, x, size, padding)
    return (B.crop_flip(B.asarray(xa), top, left, flip, size, padding),)


@_.ref
def _(dt, x, size, padding):
    xa, top, left, flip = _crop_inputs(dt, x, size, padding)
    return (reference.crop_flip(xa, top, left, flip, size, padding),)


def crop_flip(ident, x, size, padding):
    return [Case("crop_flip", ident, dict(x=x, size=size, padding=padding))]


_NORM = {3: ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
         4: ((0.1, -0.2, 0.3, 0.0), (0.25, 1.5, 0.3, 2.0)),
         1: ((0.1307,), (0.3081,))}


@_recipe("channel_normalize")
def _(B, dt, shape):
    mean, std = _NORM[shape[1]]
    return (B.channel_normalize(B.asarray(_rand(142, shape, dt)), mean, std),)


@_.ref
def _(dt, shape):
    mean, std = _NORM[shape[1]]
    return (reference.channel_normalize(_rand(142, shape, dt), mean, std),)


def channel_normalize(ident, shape):
    if shape[1] not in _NORM:
        raise ValueError(f"channel_normalize cases have 1, 3 or 4 channels, got {shape}")
    return [Case("channel_normalize", ident, dict(shape=shape))]

# ------------------------------ issue 10: batch norm, dropout, residual blocks, smoothing
def _bn_inputs(dt, shape, bad):
    """x with a per-channel offset, dy, weight, bias, a mean and a variance; ``bad`` (NaN or
    inf) is written once into every channel of x and dy, so every per-channel statistic is
    non-finite (non-finite results are compared exactly)."""
    c = shape[1]
    x = _rand(40, shape, dt, 2.0) + np.arange(c, dtype=dt).reshape((1, c) + (1,) * (len(shape) - 2))
    dy = _rand(41, shape, dt)
    if bad is not None:
        x.reshape(shape[0], c, -1)[0, :, 0] = bad
        dy.reshape(shape[0], c, -1)[0, :, 0] = bad
    w = _rand(42, (c,), dt, 0.5) + dt(1)
    b = _rand(43, (c,), dt)
    mean = _rand(44, (c,), dt)
    var = np.abs(_rand(45, (c,), dt)) + dt(0.5)
    return x, dy, w, b, mean, var


@_recipe("batchnorm_stats")
def _(B, dt, shape, bad=None):
    x = _bn_inputs(dt, shape, bad)[0]
    with np.errstate(invalid="ignore"):
        return tuple(B.batchnorm_stats(B.asarray(x)))


@_.ref
def _(dt, shape, bad=None):
    return reference.batchnorm(_bn_inputs(dt, shape, bad)[0])[1:]


@_recipe("batchnorm_forward")
def _(B, dt, shape, bad=None, act=None):
    x, _, w, b, mean, var = _bn_inputs(dt, shape, bad)
    with np.errstate(invalid="ignore"):
        return (B.batchnorm_forward(*(B.asarray(a) for a in (x, mean, var, w, b)), 1e-5, act),)


@_.ref
def _(dt, shape, bad=None, act=None):
    x, _, w, b, mean, var = _bn_inputs(dt, shape, bad)
    y = reference.batchnorm(x, w, b, 1e-5, mean, var)[0]
    return (y if act is None else np.maximum(y, 0.0),)     # NaN stays NaN, as relu_forward


def _bn_relu_out(dt, shape, x, mean, var):
    """The output of a fused batch norm + ReLU on x (the mask the fused backward applies)."""
    _, _, w, b, _, _ = _bn_inputs(dt, shape, None)
    return np.maximum(_cpu().batchnorm_forward(x, mean, var, w, b, 1e-3), dt(0))


@_recipe("batchnorm_backward")
def _(B, dt, shape, train, bad=None, relu=False):
    x, dy, w, _, mean, var = _bn_inputs(dt, shape, None)
    dy = _bn_inputs(dt, shape, bad)[1]
    if train:     # this batch's statistics, the same for every backend
        mean, var = _cpu().batchnorm_stats(x)
    y = B.asarray(_bn_relu_out(dt, shape, x, mean, var)) if relu else None
    with np.errstate(invalid="ignore"):
        return tuple(B.batchnorm_backward(*(B.asarray(a) for a in (dy, x, mean, var, w)),
                                          1e-3, train, y))


@_.ref
def _(dt, shape, train, bad=None, relu=False):
    x, dy, w, _, mean, var = _bn_inputs(dt, shape, None)
    dy = _bn_inputs(dt, shape, bad)[1]
    if relu:
        m, v = _cpu().batchnorm_stats(x) if train else (mean, var)
        dy = np.where(_bn_relu_out(dt, shape, x, m, v) > 0, dy, dt(0))
    stats = (None, None) if train else (mean, var)
    return reference.batchnorm_backward(dy, x, w, 1e-3, *stats)


def batchnorm(ident, shape, bad=None, large=False):
    """Batch-norm statistics, forward (also with the fused ReLU), and backward (batch and
    running statistics; batch statistics with the fused ReLU) on ``shape`` (N, C, ...)."""
    args = dict(shape=shape, bad=bad)
    return [Case("batchnorm_stats", ident, args, large),
            Case("batchnorm_forward", ident, args, large),
            Case("batchnorm_backward", ident + "-train", dict(args, train=True), large),
            Case("batchnorm_backward", ident + "-eval", dict(args, train=False), large),
            Case("batchnorm_forward", ident + "-relu", dict(args, act="relu"), large)] + ([
            # with a NaN/inf in dy the ReLU's mask leaves some channels finite, which the
            # exact comparison of non-finite results cannot take (the fused primitive's
            # NaN/inf handling: tests/test_batchnorm_relu.py, against the two calls)
            Case("batchnorm_backward", ident + "-train-relu", dict(args, train=True, relu=True),
                 large)] if bad is None else [])


def _running_inputs(dt, c):
    return (_rand(46, (c,), dt), np.abs(_rand(47, (c,), dt)), _rand(48, (c,), dt),
            np.abs(_rand(49, (c,), dt)))


@_recipe("batchnorm_update_running")
def _(B, dt, c, momentum, count):
    rm, rv, mean, var = (B.asarray(a) for a in _running_inputs(dt, c))
    B.batchnorm_update_running(rm, rv, mean, var, momentum, count)
    return rm, rv


@_.ref
def _(dt, c, momentum, count):
    rm, rv, mean, var = (_f64(a) for a in _running_inputs(dt, c))
    return (momentum * mean + (1 - momentum) * rm,
            momentum * var * count / (count - 1) + (1 - momentum) * rv)


def running(ident, c, momentum, count):
    return [Case("batchnorm_update_running", ident, dict(c=c, momentum=momentum, count=count))]


_SEED = 0x5DEECE66D1234567


def _dropout_input(dt, shape, nonfinite):
    x = _rand(50, shape, dt)
    if nonfinite:
        x.flat[::5] = np.nan
        x.flat[1::5] = np.inf
    return x


@_recipe("dropout_forward", "dropout_backward")
def _dropout_run(B, dt, shape, p, primitive, nonfinite=False):
    with np.errstate(invalid="ignore"):
        return (getattr(B, primitive)(B.asarray(_dropout_input(dt, shape, nonfinite)), p, _SEED),)


@_dropout_run.ref
def _(dt, shape, p, primitive, nonfinite=False):
    with np.errstate(invalid="ignore"):
        return (_f64(_dropout_input(dt, shape, nonfinite)) * reference.dropout_mask(shape, p, _SEED),)


def dropout(ident, shape, p, nonfinite=False, large=False):
    """Dropout forward and backward (the same mask) with probability ``p``."""
    return [Case(q, ident, dict(shape=shape, p=p, primitive=q, nonfinite=nonfinite), large)
            for q in ("dropout_forward", "dropout_backward")]


def _subsample_inputs(dt, x, out_channels, stride, nonfinite):
    xa = _rand(51, x, dt)
    dy = _rand(52, (x[0], out_channels, -(-x[2] // stride[0]), -(-x[3] // stride[1])), dt)
    if nonfinite:
        xa.flat[::11] = np.nan
        dy.flat[::13] = np.inf
    return xa, dy


@_recipe("subsample_pad_forward")
def _(B, dt, x, out_channels, stride, pad_before, nonfinite=False):
    xa, _ = _subsample_inputs(dt, x, out_channels, stride, nonfinite)
    return (B.subsample_pad_forward(B.asarray(xa), stride, pad_before, out_channels),)


@_.ref
def _(dt, x, out_channels, stride, pad_before, nonfinite=False):
    xa, _ = _subsample_inputs(dt, x, out_channels, stride, nonfinite)
    return (reference.subsample_pad(xa, out_channels, stride, pad_before),)


@_recipe("subsample_pad_backward")
def _(B, dt, x, out_channels, stride, pad_before, nonfinite=False):
    _, dy = _subsample_inputs(dt, x, out_channels, stride, nonfinite)
    return (B.subsample_pad_backward(B.asarray(dy), x, stride, pad_before),)


@_.ref
def _(dt, x, out_channels, stride, pad_before, nonfinite=False):
    _, dy = _subsample_inputs(dt, x, out_channels, stride, nonfinite)
    return (reference.subsample_pad_backward(dy, x, stride, pad_before),)


def subsample_pad(ident, x, out_channels, stride, pad_before, nonfinite=False, large=False):
    """The option-A shortcut (subsampling + zero channels), forward and backward."""
    args = dict(x=x, out_channels=out_channels, stride=stride, pad_before=pad_before,
                nonfinite=nonfinite)
    return [Case(p, ident, args, large) for p in ("subsample_pad_forward", "subsample_pad_backward")]


def _add_inputs(dt, shape, nonfinite):
    a, b = _rand(53, shape, dt), _rand(54, shape, dt)
    if nonfinite and a.size > 3:
        a.flat[:3] = (np.nan, np.inf, np.inf)
        b.flat[:3] = (1.0, -np.inf, 2.0)
    return a, b


@_recipe("add")
def _(B, dt, shape, nonfinite=False, act=None):
    a, b = _add_inputs(dt, shape, nonfinite)
    with np.errstate(invalid="ignore"):
        return (B.add(B.asarray(a), B.asarray(b), act),)


@_.ref
def _(dt, shape, nonfinite=False, act=None):
    a, b = _add_inputs(dt, shape, nonfinite)
    with np.errstate(invalid="ignore"):
        s = _f64(a) + _f64(b)
        return (s if act is None else np.where(np.isnan(s), s, np.maximum(s, 0.0)),)


def add(ident, shape, nonfinite=False, large=False):
    return [Case("add", f"{ident}{suffix}", dict(shape=shape, nonfinite=nonfinite, act=act), large)
            for act, suffix in ((None, ""), ("relu", "-relu"))]


def _ls_inputs(dt, n, k, logits):
    z = _rand(55, (n, k), dt, 4.0) if logits is None else np.array(logits, dtype=dt)
    labels = np.random.default_rng(56).integers(0, z.shape[1], size=z.shape[0]).astype(np.int64)
    return z, labels


@_recipe("label_smoothing_cross_entropy_forward")
def _(B, dt, eps, n=None, k=None, logits=None):
    z, labels = _ls_inputs(dt, n, k, logits)
    with np.errstate(invalid="ignore", over="ignore"):
        return tuple(B.label_smoothing_cross_entropy_forward(B.asarray(z), B.asarray(labels), eps))


@_.ref
def _(dt, eps, n=None, k=None, logits=None):
    z, labels = _ls_inputs(dt, n, k, logits)
    loss, grad = reference.label_smoothing_cross_entropy(z, labels, eps)
    n, k = z.shape
    probs = grad * n + eps / k
    probs[np.arange(n), labels] += 1.0 - eps
    return loss, probs


@_recipe("label_smoothing_cross_entropy_backward")
def _(B, dt, eps, n=None, k=None, logits=None):
    z, labels = _ls_inputs(dt, n, k, logits)
    _, probs = _cpu().label_smoothing_cross_entropy_forward(z, labels, eps)  # the same for all
    return (B.label_smoothing_cross_entropy_backward(B.asarray(probs), B.asarray(labels), eps),)


@_.ref
def _(dt, eps, n=None, k=None, logits=None):
    z, labels = _ls_inputs(dt, n, k, logits)
    return (reference.label_smoothing_cross_entropy(z, labels, eps)[1],)


def label_smoothing(ident, eps, n=None, k=None, logits=None, backward=True):
    """Label-smoothed cross-entropy on ``n`` x ``k`` random logits (or the given ``logits``)."""
    names = ("label_smoothing_cross_entropy_forward",)
    if backward:
        names += ("label_smoothing_cross_entropy_backward",)
    return [Case(p, ident, dict(eps=eps, n=n, k=k, logits=logits)) for p in names]


# --------------------------------------------------------------------------- the table
#: every primitive on small, awkward shapes: what `gpucnn check` runs (twice, float32 and
#: float64) and the tests start from.
CASES: list[Case] = [
    *conv("3x3-s1-p1", x=(2, 3, 6, 7), w=(4, 3, 3, 3), stride=(1, 1), padding=(1, 1)),
    *conv("rect-s2x1-p0x1", x=(1, 2, 7, 6), w=(3, 2, 3, 2), stride=(2, 1), padding=(0, 1)),
    *linear("5x7to3", 5, 7, 3),
    *bias("nchw", (2, 5, 3, 4)),
    *bias("2d", (4, 6)),
    *bias_act("nchw", (2, 5, 3, 4)),
    *bias_act("2d", (4, 6), acts=("relu",)),
    *gather("mnist-like", (7, 1, 5, 4), 5),
    *gather("cifar-like", (6, 3, 3, 5), 9),
    *pool("2x2-s2", x=(2, 3, 6, 6), kernel=(2, 2), stride=(2, 2), padding=(0, 0)),
    *pool("3x3-s2-p1", x=(1, 2, 7, 5), kernel=(3, 3), stride=(2, 2), padding=(1, 1)),
    *activations("2x31", (2, 31)),
    *cross_entropy("6x4", 6, 4),
    *mse("3x2x2x3", (3, 2, 2, 3)),
    *sgd("plain"),
    *sgd("momentum-first", momentum=0.9, first=True),
    *sgd("nesterov-wd", momentum=0.8, weight_decay=0.05, nesterov=True),
    *adam("step1", 1),
    *adam("step7-wd", 7, weight_decay=0.01),
    *arrays(),
    *crop_flip("pad2-flip", x=(3, 2, 5, 6), size=(5, 6), padding=(2, 2)),
    *crop_flip("rect-crop", x=(2, 3, 4, 7), size=(3, 5), padding=(1, 0)),
    *channel_normalize("nchw", (2, 3, 4, 5)),
    *batchnorm("nchw", (3, 2, 4, 5)),
    *batchnorm("2d", (7, 3)),
    *running("c5", 5, 0.1, 8),
    *dropout("p0.25", (4, 37), 0.25),
    *dropout("p1", (3, 5), 1.0),
    *subsample_pad("3to8-s2", x=(2, 3, 5, 6), out_channels=8, stride=(2, 2), pad_before=2),
    *add("3x4x5", (3, 4, 5)),
    *label_smoothing("6x4-e0.1", 0.1, 6, 4),
]
