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
    conv2d_backward(dy, x, w, stride, padding, input_grad) -> (dx or None, dw)
        both gradients of one convolution (dx None unless input_grad): the values of
        conv2d_backward_data and conv2d_backward_weight, to rounding (a backend may cut
        the batch into other chunks, and sum dw in another order, while it computes the
        two alongside)
    linear_forward(x, w) -> y = x @ w.T                         x (N,I), w (O,I)
    linear_backward_data(dy, w) -> dx = dy @ w
    linear_backward_weight(dy, x) -> dw = dy.T @ x
    bias_forward(y, b) -> y + b broadcast along axis 1 (may update y in place and return it)
    bias_backward(dy) -> db = sum of dy over every axis except 1
    bias_act_forward(y, b, act) -> act(y + b), act one of None ("identity"), "relu",
        "sigmoid", "tanh": bitwise bias_forward then <act>_forward, in one pass
        (may update y in place and return it)

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
    softmax_cross_entropy_forward(logits, labels) -> (loss, probs)
        logits (N, K) float; labels (N,) int64 in [0, K); loss is a 0-d float64 array on
        the backend (not a Python float: reading it would wait for the device).  Labels
        are range-checked at the seam when they are host arrays; device labels are not
        (that check would be a device sync per step): an out-of-range device label gives
        a NaN loss for its row, so the mean is NaN and the trainer reports it when read
    softmax_cross_entropy_backward(probs, labels) -> (probs - onehot(labels)) / N
    mse_forward(y, t) -> loss  mean((y - t)**2), a 0-d float64 array on the backend
    mse_backward(y, t) -> 2 * (y - t) / y.size

Normalisation, dropout, residual blocks (the layers of issue 10)
    Tensors are viewed as (N, C, S): S = H*W for NCHW, S = L for (N, C, L), 1 for (N, C);
    "per channel" means over the N*S values of one channel c, M = N*S of them.
    add(a, b, act=None) -> act(a + b), a new array (same shape and dtype); act None or
        "relu": bitwise add then relu_forward (a residual block's sum and the ReLU after it)
    batchnorm_stats(x) -> (mean, var)            per channel, shapes (C,), x's dtype
        mean = (1/M) sum x;  var = (1/M) sum (x - mean)**2 (biased; mean rounded first)
    batchnorm_forward(x, mean, var, weight, bias, eps, act=None) -> y
        y = (x - mean[c]) * scale[c] + bias[c],  scale = weight / sqrt(var + eps)
        act "relu": relu_forward of that y, in the same pass (bitwise the two calls)
    batchnorm_backward(dy, x, mean, var, weight, eps, batch_stats, y=None) -> (dx, dweight, dbias)
        y given (the output of batchnorm_forward(..., act="relu")): dy is first replaced
        by relu_backward(dy, y), in the same passes (the same values as the two calls)
        invstd = 1 / sqrt(var + eps); dbias = sum dy; dweight = (sum dy*(x - mean)) * invstd
        batch_stats (mean/var are this batch's, training mode; the full backward):
            dx = weight*invstd * (dy - dbias/M - (x - mean)*invstd*dweight/M)
        else (running statistics, eval mode): dx = dy * weight*invstd
    batchnorm_update_running(running_mean, running_var, mean, var, momentum, count) -> None
        in place: running_mean = momentum*mean + (1 - momentum)*running_mean
                  running_var  = momentum*var*count/(count - 1) + (1 - momentum)*running_var
        (count = M > 1: the running variance is the unbiased one, as PyTorch's)
    dropout_forward(x, p, seed) -> y = x * mask,   dropout_backward(dy, p, seed) -> dy * mask
        mask[i] = 1/(1-p) if keep(seed, i) else 0 (0 everywhere when p == 1), i the flat index;
        keep(seed, i) = (splitmix64(seed + (i+1)*0x9E3779B97F4A7C15) >> 11) >= ceil(p * 2**53),
        splitmix64(z): z = (z ^ z>>30)*0xBF58476D1CE4E5B9; z = (z ^ z>>27)*0x94D049BB133111EB;
        z ^ z>>31 (uint64 arithmetic mod 2**64); seed an int in [0, 2**63).  Both backends
        compute the same mask, so a run is reproducible from the seed alone (no mask stored).
        Multiplying by the mask keeps NaN/inf where an element is dropped (as PyTorch).
    subsample_pad_forward(x, stride, pad_before, out_channels) -> y   (ResNet option A)
        y[n, o, i, j] = x[n, o - pad_before, i*sh, j*sw] if 0 <= o - pad_before < C else 0;
        y (N, out_channels, ceil(H/sh), ceil(W/sw))
    subsample_pad_backward(dy, x_shape, stride, pad_before) -> dx
        dx[n, c, h, w] = dy[n, c + pad_before, h/sh, w/sw] where sh | h and sw | w, else 0

Label smoothing (PyTorch's CrossEntropyLoss(label_smoothing=eps), mean over the batch)
    label_smoothing_cross_entropy_forward(logits, labels, eps) -> (loss, probs)
        loss: a 0-d float64 array on the backend, as softmax_cross_entropy_forward's
        target[n, k] = (1 - eps)*[k == labels[n]] + eps/K;
        loss = (1/N) sum_n sum_k -target[n,k] * log softmax(logits[n])_k
             = (1/N) sum_n [lse_n - (1 - eps)*z[n, labels[n]] - eps*mean_k z[n, k]]
    label_smoothing_cross_entropy_backward(probs, labels, eps) -> (probs - target) / N

Optimizer updates (in place; same formulas as torch.optim)
    sgd_update(param, grad, buf, lr, momentum, weight_decay, nesterov, first) -> None
        g = grad + weight_decay*param
        if momentum: buf = g if first else momentum*buf + g
                     g = g + momentum*buf if nesterov else buf
        param -= lr * g            (buf may be None when momentum == 0)
    adam_update(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay) -> None
        g = grad + weight_decay*param; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g*g
        param -= (lr / (1 - b1**step)) * m / (sqrt(v) / sqrt(1 - b2**step) + eps)

Data resident on the device
    gather_rows(src, idx) -> src[idx]       src (N, ...) float; idx (B,) int64 in [0, N)
    gather_normalize(src, idx, mean, std, pixel_max, dtype) -> (src[idx] * (1/pixel_max)
        - mean[c]) / std[c] in ``dtype``, as data.normalize: src (N, C, ...) uint8; mean and
        std per channel (Python floats); every rounding in ``dtype``

Augmentation (the random numbers are drawn on the host, by gpucnn.transforms, and passed in)
    crop_flip(x, top, left, flip, size, padding) -> y          x (N,C,H,W) float, y (N,C,OH,OW)
        size = (OH, OW), padding = (PH, PW) (ints accepted for both); top, left (N,) integers,
        flip (N,) bool or 0/1, host or device arrays.  With jj = OW-1-j if flip[n] else j:
        y[n,c,i,j] = x[n,c, top[n]+i-PH, left[n]+jj-PW] if that lies inside x, else 0,
        i.e. a crop of the zero-padded image whose corner is (top, left) in padded
        coordinates, then mirrored left-right.  top must lie in [0, H+2PH-OH] and left in
        [0, W+2PW-OW] (ValueError otherwise).
    channel_normalize(x, mean, std) -> y = (x - mean[c]) / std[c]   x (N,C,...) float;
        mean, std: C finite values (std non-zero), cast to x's dtype first

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
* crop_flip copies values, non-finite ones included (the padding is 0);
  channel_normalize is elementwise IEEE ((NaN - m) / s is NaN, (+-inf - m) / s is +-inf).
* add, batchnorm_*, dropout_*: IEEE formulas as above.  A non-finite value in one
  channel makes that channel's batch statistics (and, through the training backward's
  sums, that channel's whole dx) non-finite, and no other channel.  Dropout multiplies
  by its mask, so a dropped NaN/inf gives NaN (as PyTorch's input * mask).
* subsample_pad_*: copies (no arithmetic): the padded channels are exactly 0 and the
  backward never reads dy's padded channels.
* label_smoothing_cross_entropy_forward: as softmax_cross_entropy_forward, except that
  a -inf logit makes its row's loss +inf whenever eps > 0 (the smoothed target puts
  weight eps/K on it).
"""
from __future__ import annotations

import os

PRIMITIVES = (
    "asarray", "to_numpy", "zeros", "all_finite", "accumulate",
    "conv2d_forward", "conv2d_backward_data", "conv2d_backward_weight", "conv2d_backward",
    "linear_forward", "linear_backward_data", "linear_backward_weight",
    "bias_forward", "bias_backward", "bias_act_forward",
    "maxpool2d_forward", "maxpool2d_backward",
    "avgpool2d_forward", "avgpool2d_backward",
    "sigmoid_forward", "sigmoid_backward",
    "relu_forward", "relu_backward",
    "tanh_forward", "tanh_backward",
    "softmax_cross_entropy_forward", "softmax_cross_entropy_backward",
    "mse_forward", "mse_backward",
    "sgd_update", "adam_update",
    "gather_rows", "gather_normalize",
    "crop_flip", "channel_normalize",
    # issue 10: normalisation, dropout, residual blocks, label smoothing
    "add", "batchnorm_stats", "batchnorm_forward", "batchnorm_backward",
    "batchnorm_update_running", "dropout_forward", "dropout_backward",
    "subsample_pad_forward", "subsample_pad_backward",
    "label_smoothing_cross_entropy_forward", "label_smoothing_cross_entropy_backward",
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
