"""Layers with explicit backprop: each has ``forward`` and ``backward``, nothing else.

``forward(x)`` asks the backend that owns ``x`` for a primitive and keeps what its
backward needs.  ``backward(dy)`` turns δ for the layer's output into δ for its
input and adds the parameter gradients into ``.grad``.  ``Sequential.backward``
walks the layers in reverse: the tutorial's δ recursion
δ(l) = (δ(l+1) W(l+1)) ⊙ σ'(Z(l)), one layer at a time.
"""
from __future__ import annotations

import math
from collections import namedtuple

import numpy as np

from . import backends
from . import random as _random
from .errors import NonFiniteError
from .validation import POSITIVE_INT, int_pair

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_float_input(layer, x, ndim=None, what="input", finite=True):
    """Validate an array argument; return its backend.  Errors name the layer.

    ``finite=False`` skips the NaN/inf scan (the caller checks its result instead)."""
    try:
        backend = backends.backend_of(x)
    except TypeError:
        raise TypeError(f"{layer}: expected the {what} to be a numpy or cupy array, "
                        f"got {type(x).__name__}") from None
    if ndim is not None and x.ndim not in (ndim if isinstance(ndim, tuple) else (ndim,)):
        want = " or ".join(f"{d}-D" for d in (ndim if isinstance(ndim, tuple) else (ndim,)))
        raise ValueError(f"{layer}: expected a {want} {what}, got shape {tuple(x.shape)} "
                         f"({x.ndim}-D)")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{layer}: expected a float32 or float64 {what}, got dtype {x.dtype}")
    if what == "input" and x.ndim >= 1 and x.shape[0] == 0:  # (losses say it in their own words)
        raise ValueError(f"{layer}: the {what} is an empty batch (shape {tuple(x.shape)}); "
                         f"a batch needs at least one sample")
    if finite and _inner_depth == 0 and not backend.all_finite(x):
        raise NonFiniteError(f"{layer}: the {what} contains NaN or infinity")
    return backend


# Inside Sequential, only the network's input is checked for NaN/inf: the layers in
# between skip the check (on a GPU each check is a device->host sync), and a value
# that overflows inside the network reaches the loss, which checks the output.
_inner_depth = 0


class _inside:
    def __enter__(self):
        global _inner_depth
        _inner_depth += 1

    def __exit__(self, *exc):
        global _inner_depth
        _inner_depth -= 1


class IncompatibleKeys(namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])):
    """What ``Module.load_state_dict`` returns (PyTorch's ``_IncompatibleKeys``)."""

    def __repr__(self):
        if not self.missing_keys and not self.unexpected_keys:
            return "<All keys matched successfully>"
        return super().__repr__()

    __str__ = __repr__


class Parameter:
    """A trainable array: ``.data`` and its accumulated gradient ``.grad``."""

    def __init__(self, data):
        self.data = data
        self.grad = None

    @property
    def shape(self):
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype

    def __repr__(self):
        return f"Parameter(shape={self.shape}, dtype={self.dtype})"


class Buffer:
    """A non-trainable array saved in ``state_dict`` (BatchNorm's running statistics), as
    PyTorch's buffers.  Float buffers follow ``Module.to()`` (device and dtype); integer
    buffers (``num_batches_tracked``) are int64 host arrays that stay on the host."""

    def __init__(self, data):
        self.data = data

    @property
    def shape(self):
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype

    def __repr__(self):
        return f"Buffer(shape={self.shape}, dtype={self.dtype})"


class Module:
    """Base class: parameters, state_dict, device/dtype moves, train/eval."""

    training = True

    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, grad, input_grad=True):  # pragma: no cover - abstract
        """δ for the output -> δ for the input, adding parameter gradients into ``.grad``.

        Every module takes ``input_grad``: False means nobody needs δ for the input
        (the network's first layer), so the module may skip computing it and return
        None; its parameters' ``.grad`` must still be filled.
        """
        raise NotImplementedError

    @property
    def _name(self):
        return type(self).__name__

    # --------------------------------------------------------- parameters
    def _children(self):
        return [(k, v) for k, v in vars(self).items() if isinstance(v, Module)]

    def named_parameters(self, prefix=""):
        out = []
        for k, v in vars(self).items():
            if isinstance(v, Parameter):
                out.append((prefix + k, v))
        for k, child in self._children():
            out.extend(child.named_parameters(prefix + k + "."))
        return out

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix=""):
        out = [(prefix + k, v) for k, v in vars(self).items() if isinstance(v, Buffer)]
        for k, child in self._children():
            out.extend(child.named_buffers(prefix + k + "."))
        return out

    def buffers(self):
        return [b for _, b in self.named_buffers()]

    def _named_state(self, prefix=""):
        """Parameters and buffers in PyTorch's state_dict order: each module's own
        parameters, then its own buffers, then its children's, depth first."""
        own = vars(self).items()
        out = [(prefix + k, v) for k, v in own if isinstance(v, Parameter)]
        out += [(prefix + k, v) for k, v in own if isinstance(v, Buffer)]
        for k, child in self._children():
            out.extend(child._named_state(prefix + k + "."))
        return out

    def modules(self):
        out = [self]
        for _, child in self._children():
            out.extend(child.modules())
        return out

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def train(self, mode=True):
        for m in self.modules():
            m.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    # -------------------------------------------------------- state dicts
    def state_dict(self):
        """Parameter and buffer arrays by name, copied to the host as numpy arrays."""
        return {name: np.array(backends.asnumpy(p.data), copy=True)
                for name, p in self._named_state()}

    def load_state_dict(self, state, strict=True):
        """Copy arrays from ``state`` (name -> array) into the parameters and buffers;
        everything is checked first.

        As PyTorch: ``strict=True`` requires the keys to match exactly; ``strict=False``
        loads the keys both have and ignores the rest (shapes and dtypes must still
        fit).  Returns ``(missing_keys, unexpected_keys)``, a named tuple.
        """
        params = dict(self._named_state())
        if not isinstance(state, dict):
            raise TypeError(f"{self._name}.load_state_dict: expected a dict of arrays, "
                            f"got {type(state).__name__}")
        missing = sorted(set(params) - set(state))
        unexpected = sorted(set(state) - set(params))
        if strict and (missing or unexpected):
            raise ValueError(f"{self._name}.load_state_dict: keys do not match; missing "
                             f"{missing or 'none'}, unexpected {unexpected or 'none'}")
        params = {name: p for name, p in params.items() if name in state}
        arrays = {}
        for name, p in params.items():
            a = np.array(backends.asnumpy(state[name]), copy=True)  # never alias the caller's dict
            if a.shape != p.shape:
                raise ValueError(f"{self._name}.load_state_dict: '{name}' has shape "
                                 f"{a.shape}, expected {p.shape}")
            want = "f" if p.dtype.kind == "f" else "iu"
            if a.dtype.kind not in want:
                raise TypeError(f"{self._name}.load_state_dict: '{name}' has dtype {a.dtype}, "
                                f"expected {'a float' if want == 'f' else 'an integer'} array")
            arrays[name] = a
        for name, p in params.items():  # all checked: now change the model
            if p.dtype.kind != "f":     # integer buffers live on the host
                p.data = np.array(arrays[name], dtype=p.dtype)
                continue
            backend = backends.backend_of(p.data)
            p.data = backend.asarray(arrays[name], dtype=p.dtype)
            if isinstance(p, Parameter):
                p.grad = None
        return IncompatibleKeys(missing, unexpected)

    # ------------------------------------------------------ device / dtype
    @property
    def device(self):
        params = self.parameters()
        if not params:
            return getattr(self, "_device", "cpu")
        return backends.backend_of(params[0].data).name

    @property
    def dtype(self):
        params = self.parameters()
        return params[0].dtype if params else getattr(self, "_dtype", np.dtype(np.float32))

    def to(self, device=None, dtype=None):
        """Move parameters (and gradients) and float buffers to ``device`` and/or cast to ``dtype``;
        returns self.  Integer buffers (``num_batches_tracked``) stay int64 on the host."""
        target = None
        if device is not None and not isinstance(device, str) and dtype is None:
            try:  # .to(numpy.float64), as PyTorch's .to(torch.float64)
                dtype, device = np.dtype(device), None
            except TypeError:
                pass
        if device is not None:
            target, note = backends.resolve_device(device)
            if note:
                _warn_once(note)
        if dtype is not None:
            dtype = np.dtype(dtype)
            if dtype not in FLOAT_DTYPES:
                raise TypeError(f"{self._name}.to: dtype must be float32 or float64, got {dtype}")
        for p in self.parameters():
            backend = target or backends.backend_of(p.data)
            new_dtype = dtype or p.dtype
            p.data = _move(p.data, backend, new_dtype)
            if p.grad is not None:
                p.grad = _move(p.grad, backend, new_dtype)
        for b in self.buffers():
            if b.dtype.kind == "f":
                b.data = _move(b.data, target or backends.backend_of(b.data), dtype or b.dtype)
        for m in self.modules():
            if target is not None:
                m._device = target.name
            if dtype is not None:
                m._dtype = dtype
        return self

    def _check_same(self, x, backend, param):
        """The input must live on the parameters' backend and share their dtype."""
        pb = backends.backend_of(param.data)
        if pb is not backend:
            raise RuntimeError(f"{self._name}: the input is on '{backend.name}' but the layer's "
                               f"parameters are on '{pb.name}'; move one with .to()")
        if x.dtype != param.dtype:
            raise TypeError(f"{self._name}: the input has dtype {x.dtype} but the layer's "
                            f"parameters are {param.dtype}; cast the input or call "
                            f".to(dtype=...)")

    def _saved(self, attr):
        value = getattr(self, attr, None)
        if value is None:
            raise RuntimeError(f"{self._name}.backward was called before forward "
                               "(no saved input); call the layer on an input first")
        return value

    def _check_grad(self, grad, shape, dtype):
        backend = check_float_input(f"{self._name}.backward", grad, what="gradient")
        if tuple(grad.shape) != tuple(shape):
            raise ValueError(f"{self._name}.backward: expected a gradient of shape {tuple(shape)} "
                             f"(the forward output), got {tuple(grad.shape)}")
        if grad.dtype != dtype:
            raise TypeError(f"{self._name}.backward: expected a {dtype} gradient, got {grad.dtype}")
        return backend


_warned = set()


def _warn_once(message):
    if message not in _warned:
        _warned.add(message)
        import sys
        print(f"gpucnn: {message}", file=sys.stderr)


def _move(a, backend, dtype):
    if backends.backend_of(a) is backend and a.dtype == dtype:
        return a
    return backend.asarray(backends.asnumpy(a) if backend.name == "cpu" else a, dtype=dtype)


def _accumulate(param, grad):
    if param.grad is None:
        param.grad = grad
    else:
        backends.backend_of(param.grad).accumulate(param.grad, grad)


def _bias(B, y, b, act):
    """y + b, or act(y + b) in one launch when ``act`` names the activation that follows."""
    return B.bias_forward(y, b) if act is None else B.bias_act_forward(y, b, act)


def _uniform(shape, bound, rng):
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)


# ====================================================================== layers
class Conv2d(Module):
    """2-D convolution (cross-correlation, as PyTorch and cuDNN compute it).

    y[n,o,i,j] = b[o] + Σ_{c,p,q} x_pad[n, c, i·sh + p, j·sw + q] · W[o, c, p, q]

    The tutorial's Y = X * K is true convolution, which flips the kernel; the
    two agree once K is W rotated by 180°, so learning either learns the same net.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 bias=True, rng=None):
        self.in_channels = POSITIVE_INT(in_channels, "in_channels", "Conv2d")
        self.out_channels = POSITIVE_INT(out_channels, "out_channels", "Conv2d")
        self.kernel_size = int_pair(kernel_size, "kernel_size", "Conv2d", 1)
        self.stride = int_pair(stride, "stride", "Conv2d", 1)
        self.padding = int_pair(padding, "padding", "Conv2d", 0)
        rng = _random.resolve(rng)
        kh, kw = self.kernel_size
        fan_in = self.in_channels * kh * kw
        bound = 1.0 / math.sqrt(fan_in)
        self.weight = Parameter(_uniform((self.out_channels, self.in_channels, kh, kw), bound, rng))
        self.bias = Parameter(_uniform((self.out_channels,), bound, rng)) if bias else None
        self._x = None

    def forward(self, x, act=None):
        """``act``: an activation name fused into the bias kernel (see Sequential.forward)."""
        B = check_float_input("Conv2d", x, 4)
        self._check_same(x, B, self.weight)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"Conv2d: expected {self.in_channels} input channels, got "
                             f"{x.shape[1]} (input shape {tuple(x.shape)})")
        (kh, kw), (ph, pw) = self.kernel_size, self.padding
        h, w = x.shape[2] + 2 * ph, x.shape[3] + 2 * pw
        if h < kh or w < kw:
            raise ValueError(f"Conv2d: the padded input ({h}x{w}) is smaller than the kernel "
                             f"({kh}x{kw}); input shape {tuple(x.shape)}")
        y = B.conv2d_forward(x, self.weight.data, self.stride, self.padding)
        if self.bias is not None:
            y = _bias(B, y, self.bias.data, act)
        self._x = x
        self._y_shape = y.shape
        return y

    def backward(self, grad, input_grad=True):
        """δ for the input (None when ``input_grad`` is False); fills weight/bias ``.grad``."""
        x = self._saved("_x")
        B = self._check_grad(grad, self._y_shape, x.dtype)
        dx, dw = B.conv2d_backward(grad, x, self.weight.data, self.stride, self.padding,
                                   input_grad)
        _accumulate(self.weight, dw)
        if self.bias is not None:
            _accumulate(self.bias, B.bias_backward(grad))
        return dx

    def __repr__(self):
        return (f"Conv2d({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None})")


class Linear(Module):
    """y = x Wᵀ + b, W of shape (out_features, in_features)."""

    def __init__(self, in_features, out_features, bias=True, rng=None):
        self.in_features = POSITIVE_INT(in_features, "in_features", "Linear")
        self.out_features = POSITIVE_INT(out_features, "out_features", "Linear")
        rng = _random.resolve(rng)
        bound = 1.0 / math.sqrt(self.in_features)
        self.weight = Parameter(_uniform((self.out_features, self.in_features), bound, rng))
        self.bias = Parameter(_uniform((self.out_features,), bound, rng)) if bias else None
        self._x = None

    def forward(self, x, act=None):
        """``act``: an activation name fused into the bias kernel (see Sequential.forward)."""
        B = check_float_input("Linear", x, 2)
        self._check_same(x, B, self.weight)
        if x.shape[1] != self.in_features:
            raise ValueError(f"Linear: expected {self.in_features} input features, got "
                             f"{x.shape[1]} (input shape {tuple(x.shape)})")
        y = B.linear_forward(x, self.weight.data)
        if self.bias is not None:
            y = _bias(B, y, self.bias.data, act)
        self._x = x
        return y

    def backward(self, grad, input_grad=True):
        """δ for the input (None when ``input_grad`` is False); fills weight/bias ``.grad``."""
        x = self._saved("_x")
        B = self._check_grad(grad, (x.shape[0], self.out_features), x.dtype)
        _accumulate(self.weight, B.linear_backward_weight(grad, x))
        if self.bias is not None:
            _accumulate(self.bias, B.bias_backward(grad))
        if not input_grad:
            return None
        return B.linear_backward_data(grad, self.weight.data)

    def __repr__(self):
        return f"Linear({self.in_features}, {self.out_features}, bias={self.bias is not None})"


class _Pool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0):
        name = type(self).__name__
        self.kernel_size = int_pair(kernel_size, "kernel_size", name, 1)
        self.stride = self.kernel_size if stride is None else int_pair(stride, "stride", name, 1)
        self.padding = int_pair(padding, "padding", name, 0)
        for p, k in zip(self.padding, self.kernel_size):
            if p > k // 2:
                raise ValueError(f"{name}: padding must be at most half the kernel size, got "
                                 f"padding={padding} for kernel_size={kernel_size}")
        self._x_shape = None

    def _check(self, x):
        name = self._name
        B = check_float_input(name, x, 4)
        (kh, kw), (ph, pw) = self.kernel_size, self.padding
        h, w = x.shape[2] + 2 * ph, x.shape[3] + 2 * pw
        if h < kh or w < kw:
            raise ValueError(f"{name}: the padded input ({h}x{w}) is smaller than the kernel "
                             f"({kh}x{kw}); input shape {tuple(x.shape)}")
        return B

    def __repr__(self):
        return (f"{self._name}(kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding})")


class MaxPool2d(_Pool2d):
    """Max over each window; padding is −∞; a tie sends δ to the first maximum."""

    def forward(self, x):
        B = self._check(x)
        y, self._argmax = B.maxpool2d_forward(x, self.kernel_size, self.stride, self.padding)
        self._x_shape, self._y_shape, self._dtype_in = x.shape, y.shape, x.dtype
        return y

    def backward(self, grad, input_grad=True):
        if not input_grad:
            return None   # no parameters: nothing else to compute
        x_shape = self._saved("_x_shape")
        B = self._check_grad(grad, self._y_shape, self._dtype_in)
        return B.maxpool2d_backward(grad, self._argmax, x_shape, self.kernel_size,
                                    self.stride, self.padding)


class AvgPool2d(_Pool2d):
    """Mean over each window; padded zeros count in the divisor (PyTorch's default)."""

    def forward(self, x):
        B = self._check(x)
        y = B.avgpool2d_forward(x, self.kernel_size, self.stride, self.padding)
        self._x_shape, self._y_shape, self._dtype_in = x.shape, y.shape, x.dtype
        return y

    def backward(self, grad, input_grad=True):
        if not input_grad:
            return None
        x_shape = self._saved("_x_shape")
        B = self._check_grad(grad, self._y_shape, self._dtype_in)
        return B.avgpool2d_backward(grad, x_shape, self.kernel_size, self.stride, self.padding)


class _Activation(Module):
    """y = f(x); backward from the saved output: δx = δy ⊙ f'(x) written in terms of y."""

    primitive = ""

    def __init__(self):
        self._y = None

    def forward(self, x):
        B = check_float_input(self._name, x)
        self._y = getattr(B, self.primitive + "_forward")(x)
        return self._y

    def backward(self, grad, input_grad=True):
        if not input_grad:
            return None
        y = self._saved("_y")
        B = self._check_grad(grad, y.shape, y.dtype)
        return getattr(B, self.primitive + "_backward")(grad, y)

    def __repr__(self):
        return f"{self._name}()"


class Sigmoid(_Activation):
    """σ(x) = 1 / (1 + e^−x);  σ'(x) = σ(x)(1 − σ(x))."""
    primitive = "sigmoid"


class ReLU(_Activation):
    """max(x, 0); gradient 1 where x > 0."""
    primitive = "relu"


class Tanh(_Activation):
    """tanh(x); gradient 1 − tanh²(x)."""
    primitive = "tanh"


class Flatten(Module):
    """(N, C, H, W) -> (N, C·H·W), keeping the batch axis."""

    def __init__(self):
        self._x_shape = None

    def forward(self, x):
        check_float_input("Flatten", x)
        if x.ndim < 2:
            raise ValueError(f"Flatten: expected an input with a batch axis (>= 2-D), "
                             f"got shape {tuple(x.shape)}")
        self._x_shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, grad, input_grad=True):
        if not input_grad:
            return None
        x_shape = self._saved("_x_shape")
        n = int(np.prod(x_shape[1:]))
        if tuple(grad.shape) != (x_shape[0], n):
            raise ValueError(f"Flatten.backward: expected a gradient of shape {(x_shape[0], n)}, "
                             f"got {tuple(grad.shape)}")
        return grad.reshape(x_shape)

    def __repr__(self):
        return "Flatten()"


def _fusable(layer, nxt):
    """The activation name when ``layer`` (Conv2d/Linear with a bias) and ``nxt`` (exactly
    ReLU, Sigmoid or Tanh) can run as one bias+activation kernel, or ``layer`` (one with
    ``_fuses_relu``: a batch norm, a Residual) and ``nxt`` (exactly ReLU) as one pass of
    ``layer``'s; else None."""
    if type(nxt) in _FUSED_ACTS and type(layer) in (Conv2d, Linear) and layer.bias is not None:
        return _FUSED_ACTS[type(nxt)]
    if type(nxt) is ReLU and getattr(layer, "_fuses_relu", False):
        return "relu"
    return None


_FUSED_ACTS = {ReLU: "relu", Sigmoid: "sigmoid", Tanh: "tanh"}


class Sequential(Module):
    """Layers applied in order; backward walks them in reverse passing δ down."""

    def __init__(self, *layers):
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential: argument {i} is a {type(layer).__name__}, "
                                "expected a gpucnn Module")
        self.layers = list(layers)
        self._folded = set()    # layers whose following ReLU ran inside them (last forward)

    def _children(self):
        return [(str(i), layer) for i, layer in enumerate(self.layers)]

    def __iter__(self):
        return iter(self.layers)

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Sequential(*self.layers[index])
        return self.layers[index]

    def forward(self, x):
        """The layers in order.  A Conv2d or Linear with a bias followed by a ReLU, Sigmoid
        or Tanh runs as one pair: the bias and the activation in one kernel
        (``bias_act_forward``, bitwise the two launches), the activation keeping its
        output for its backward as if it had run itself.  Likewise a BatchNorm or a
        Residual followed by a ReLU: the ReLU runs in the layer's own pass
        (``act="relu"``) and its backward inside the layer's (see ``_fusable``)."""
        check_float_input("Sequential", x)
        layers = self.layers
        folded = set()
        with _inside():
            i = 0
            while i < len(layers):
                layer = layers[i]
                nxt = layers[i + 1] if i + 1 < len(layers) else None
                act = _fusable(layer, nxt)
                if act is None:
                    x = layer(x)
                    i += 1
                else:
                    x = nxt._y = layer.forward(x, act=act)
                    if getattr(layer, "_fuses_relu", False):
                        folded.add(i)
                    i += 2
        self._folded = folded
        return x

    def backward(self, grad, input_grad=True):
        """Walk the layers in reverse passing δ down; return δ for the network's input.

        ``input_grad=False`` skips the input's δ (returns None), as PyTorch does for an
        input that needs no gradient: the first layer is asked only for its parameters'
        ``.grad`` (a layer without parameters then has nothing to do).
        """
        check_float_input("Sequential.backward", grad, what="gradient")
        with _inside():
            i = len(self.layers) - 1
            while i >= 0:
                if i - 1 in self._folded:     # layer + ReLU of the forward: one backward
                    i -= 1
                    grad = self.layers[i].backward(grad, input_grad=i > 0 or input_grad,
                                                   act_out=self.layers[i + 1]._saved("_y"))
                else:
                    grad = self.layers[i].backward(grad, input_grad=i > 0 or input_grad)
                i -= 1
        return grad

    def __repr__(self):
        inner = "\n".join(f"  ({i}): {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential(\n{inner}\n)"
