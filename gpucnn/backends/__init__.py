"""Backends: the seam between the layers and the array math.

Layers never compute on arrays themselves. They ask the backend that owns their
input (``backend_of(x)``) for a *primitive*.  Two backends implement the same
list of primitives with the same signatures:

* ``numpy.NumpyBackend``          -- name ``"cpu"``, arrays are ``numpy.ndarray``
  (the package ``backends/numpy/``: one module per primitive family)
* ``cuda_backend.CudaBackend``    -- name ``"cuda"``, arrays are ``cupy.ndarray``;
  CuPy allocates, our kernels in ``kernels/*.cu`` compute.

The parity tests walk ``PRIMITIVES``; a primitive added to one backend and not
the other fails a test.

Every backend handed out here (``cpu_backend()``, the CUDA backend, ``backend_of(x)``)
is wrapped by ``checked.checked``: each primitive's arguments are validated once, at
this seam, by the entry of ``checked.CHECKS`` with the primitive's name (shapes agree,
dtypes float32/float64 and equal, channels match, the window fits, int32 argmax, int64
labels in range, in-place arrays C-contiguous), so a bad call raises the same one-line
error on every backend.  The backends themselves trust their arguments.

Conventions shared by every primitive
-------------------------------------
* Arrays are NCHW (4-D) or (N, features) (2-D), C-contiguous, float32 or
  float64; every output has the dtype of the main input.
* ``kernel``, ``stride``, ``padding`` are ``(h, w)`` tuples of Python ints.
* Convolution is cross-correlation (as PyTorch / cuDNN):
  ``y[n,o,i,j] = sum_{c,p,q} x_pad[n,c,i*sh+p,j*sw+q] * w[o,c,p,q]``.
* Pool output size: ``(H + 2*ph - kh) // sh + 1`` (likewise W).
* Max pooling pads with -inf and on a tie picks the first maximum in row-major
  window order.  Its ``argmax`` is an int32 array of the output's shape holding
  the flat index ``h * W + w`` of the chosen element in the (unpadded) input
  plane.  Average pooling counts padded zeros in the divisor (kh*kw always).
* Pooling padding is at most half the window (``ph <= kh // 2``, ``pw <= kw // 2``,
  as PyTorch): larger padding is refused with ``ValueError`` ("padding must be at
  most half the kernel"), so every window holds at least one real element.
* Backward primitives return new arrays; the ``*_update`` optimizer
  primitives modify ``param`` and their state arrays in place.
* Scalars (lr, betas, ...) arrive as Python floats/ints; backends convert them
  to the parameter's dtype so float32 stays float32.

The list (name: signature -> result)
------------------------------------
Array handling
    asarray(a, dtype=None) -> backend array (copy only if needed)
    to_numpy(a) -> numpy.ndarray
    zeros(shape, dtype) -> array of zeros
    all_finite(a) -> bool
    accumulate(dst, src) -> None                dst += src, in place

Convolution and dense layers
    conv2d_forward(x, w, stride, padding) -> y                  x (N,C,H,W), w (O,C,kh,kw)
    conv2d_backward_data(dy, w, x_shape, stride, padding) -> dx
    conv2d_backward_weight(dy, x, w_shape, stride, padding) -> dw
    linear_forward(x, w) -> y = x @ w.T                         x (N,I), w (O,I)
    linear_backward_data(dy, w) -> dx = dy @ w
    linear_backward_weight(dy, x) -> dw = dy.T @ x
    bias_forward(y, b) -> y + b broadcast along axis 1 (may update y in place and return it)
    bias_backward(dy) -> db = sum of dy over every axis except 1

Pooling
    maxpool2d_forward(x, kernel, stride, padding) -> (y, argmax)
    maxpool2d_backward(dy, argmax, x_shape, kernel, stride, padding) -> dx
    avgpool2d_forward(x, kernel, stride, padding) -> y
    avgpool2d_backward(dy, x_shape, kernel, stride, padding) -> dx

Activations (backward takes the saved *output* y)
    sigmoid_forward(x) -> y = 1/(1+exp(-x)), stable for |x| large
    sigmoid_backward(dy, y) -> dy * y * (1 - y)
    relu_forward(x) -> y = max(x, 0)
    relu_backward(dy, y) -> dy where y > 0 else 0
    tanh_forward(x) -> y = tanh(x)
    tanh_backward(dy, y) -> dy * (1 - y*y)

Losses (mean reductions, as PyTorch's defaults)
    softmax_cross_entropy_forward(logits, labels) -> (loss: float, probs)
        logits (N, K) float; labels (N,) int64 in [0, K)
    softmax_cross_entropy_backward(probs, labels) -> (probs - onehot(labels)) / N
    mse_forward(y, t) -> float  mean((y - t)**2)
    mse_backward(y, t) -> 2 * (y - t) / y.size

Optimizer updates (in place; same formulas as torch.optim)
    sgd_update(param, grad, buf, lr, momentum, weight_decay, nesterov, first) -> None
        g = grad + weight_decay*param
        if momentum: buf = g if first else momentum*buf + g
                     g = g + momentum*buf if nesterov else buf
        param -= lr * g            (buf may be None when momentum == 0)
    adam_update(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay) -> None
        g = grad + weight_decay*param; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g*g
        param -= (lr / (1 - b1**step)) * m / (sqrt(v) / sqrt(1 - b2**step) + eps)

Non-finite values (NaN, +-inf): IEEE arithmetic, the same on every backend
---------------------------------------------------------------------------
(walked per primitive by tests/test_nonfinite.py)
* all_finite is False as soon as one element is NaN or +-inf.
* Formulas (accumulate, bias, conv, linear, avg pooling, sigmoid/tanh backward,
  the loss gradients, sgd/adam) follow IEEE: NaN propagates, inf - inf and
  0 * inf are NaN, so e.g. a NaN in dy makes all of conv2d_backward_weight's
  channel NaN (it meets the zero padding too) and Adam turns an inf gradient
  into a NaN parameter (inf / inf).  Each element depends only on the inputs its
  formula reads: a NaN never leaks into unrelated elements.
* relu_forward: NaN stays NaN (as numpy.maximum), +inf -> +inf, -inf -> 0.
  sigmoid_forward: NaN -> NaN, +inf -> 1, -inf -> 0.  tanh: +-inf -> +-1.
* Selections do not multiply: relu_backward gives dy where y > 0, else exactly 0
  (also for y = NaN and for a non-finite dy where y <= 0); maxpool2d_backward sends
  each dy to its argmax element only.
* maxpool2d_forward: a window holding a NaN gives NaN, and argmax is the first NaN
  in row-major window order (as numpy.argmax); otherwise the first maximum (+inf
  wins; -inf only where every real element of the window is -inf).
* softmax_cross_entropy_forward: a row with a NaN or +inf logit gives NaN
  probabilities for the whole row and a NaN loss; a -inf logit gets probability
  exactly 0 (loss +inf if it is the label's).  Large finite logits (+-1000 in
  float32) are exact: the row maximum is taken over every logit before exp.
* mse_forward: NaN -> NaN, +-inf -> +inf (inf - inf -> NaN).
"""
from __future__ import annotations

import os

PRIMITIVES = (
    "asarray", "to_numpy", "zeros", "all_finite", "accumulate",
    "conv2d_forward", "conv2d_backward_data", "conv2d_backward_weight",
    "linear_forward", "linear_backward_data", "linear_backward_weight",
    "bias_forward", "bias_backward",
    "maxpool2d_forward", "maxpool2d_backward",
    "avgpool2d_forward", "avgpool2d_backward",
    "sigmoid_forward", "sigmoid_backward",
    "relu_forward", "relu_backward",
    "tanh_forward", "tanh_backward",
    "softmax_cross_entropy_forward", "softmax_cross_entropy_backward",
    "mse_forward", "mse_backward",
    "sgd_update", "adam_update",
)

DEVICES = ("auto", "cpu", "cuda")

_numpy_backend = None
_cuda_backend = None
_cuda_failure: str | None = None


class DeviceError(RuntimeError):
    """Raised when a device is asked for explicitly and cannot be used."""


def cpu_backend():
    global _numpy_backend
    if _numpy_backend is None:
        from .checked import checked
        from .numpy import NumpyBackend
        _numpy_backend = checked(NumpyBackend())
    return _numpy_backend


def _try_cuda():
    """Return (backend, None) or (None, reason). Imports CuPy lazily."""
    global _cuda_backend, _cuda_failure
    if _cuda_backend is not None:
        return _cuda_backend, None
    if _cuda_failure is not None:
        return None, _cuda_failure
    from .checked import checked
    from .cuda_backend import create_cuda_backend
    backend, reason = create_cuda_backend()
    if backend is None:
        _cuda_failure = reason
    else:
        _cuda_backend = backend = checked(backend)
    return backend, reason


def _reset_cuda_probe():
    """Forget a cached CUDA probe result (used by tests that simulate failures)."""
    global _cuda_backend, _cuda_failure
    _cuda_backend = None
    _cuda_failure = None


def default_device() -> str:
    dev = os.environ.get("GPUCNN_DEVICE", "auto").strip().lower() or "auto"
    if dev not in DEVICES:
        raise ValueError(
            f"GPUCNN_DEVICE={dev!r} is not a device; expected one of {', '.join(DEVICES)}")
    return dev


def resolve_device(device=None):
    """Return ``(backend, note)`` for "auto" | "cpu" | "cuda" (None is "auto").

    "auto" means $GPUCNN_DEVICE when it is set (so the variable reaches every place that
    does not name a device), else the GPU when usable.  ``note`` is a one-line reason
    when "auto" fell back to the CPU, else None.  Asking for "cuda" (by name or through
    the variable) when it cannot work raises DeviceError saying why.
    """
    if device is None:
        device = "auto"
    if not isinstance(device, str):
        raise TypeError(f"device must be a string (one of {', '.join(DEVICES)}), "
                        f"got {type(device).__name__}")
    dev = device.strip().lower()
    source = ""
    if dev == "auto":
        dev = default_device()
        source = f" (GPUCNN_DEVICE={dev})" if dev != "auto" else ""
    if dev.startswith("cuda:"):
        dev = "cuda"
    if dev == "cpu":
        return cpu_backend(), None
    if dev == "cuda":
        backend, reason = _try_cuda()
        if backend is None:
            raise DeviceError(f"device 'cuda'{source} was requested but cannot be used: {reason}")
        return backend, None
    if dev == "auto":
        backend, reason = _try_cuda()
        if backend is None:
            return cpu_backend(), f"using the NumPy backend (cpu): {reason}"
        return backend, None
    raise ValueError(f"unknown device {device!r}; expected one of {', '.join(DEVICES)}")


def get_backend(device=None):
    return resolve_device(device)[0]


_override = None


class override_backend:
    """Context manager: every numpy array is handled by ``backend`` (used by the
    emulated-CUDA test backend, whose arrays are numpy arrays), behind the seam's checks."""

    def __init__(self, backend):
        from .checked import checked
        self.backend = checked(backend)

    def __enter__(self):
        global _override
        self._prev, _override = _override, self.backend
        return self.backend

    def __exit__(self, *exc):
        global _override
        _override = self._prev


def backend_of(x):
    """The backend that owns array ``x`` (numpy.ndarray -> cpu, cupy.ndarray -> cuda)."""
    import numpy as np
    if _override is not None:
        return _override
    if isinstance(x, np.ndarray):
        return cpu_backend()
    if type(x).__module__.startswith("cupy"):
        backend, reason = _try_cuda()
        if backend is None:
            raise DeviceError(f"got a CuPy array but the CUDA backend cannot be used: {reason}")
        return backend
    raise TypeError(f"expected a numpy or cupy array, got {type(x).__name__}")


def asnumpy(x):
    """Bring any array (NumPy or CuPy) back to the host as a numpy.ndarray."""
    import numpy as np
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "get"):
        return x.get()
    return np.asarray(x)
