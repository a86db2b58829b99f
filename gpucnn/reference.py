"""Reference implementations: the definitions, written as plain Python loops.

Every function here computes one formula element by element, in float64,
directly from its definition (the seed tutorial's formulas, PyTorch's
documented semantics, the update rules printed in the ``torch.optim`` docs).
They are deliberately slow and obvious: they exist so that the fast code in
``gpucnn/backends`` can be checked against something a reader can verify by
eye.  Use them on tiny shapes only (a few thousand multiply-adds).

Nothing in this module calls a backend or shares code with one; the only
NumPy used is for allocating the result arrays and reading shapes.

Conventions (the same as the backends'):

* NCHW; ``kernel_size``, ``stride``, ``padding`` are an int or an ``(h, w)`` pair.
* Convolution is cross-correlation:
  ``y[n,o,i,j] = b[o] + sum_{c,p,q} x_pad[n,c,i*sh+p,j*sw+q] * w[o,c,p,q]``.
  (The textbook convolution ``Y = X * K`` is the same sum with the kernel
  flipped: ``K[o,c,p,q] = w[o,c,kh-1-p,kw-1-q]``.)
* Pool output size ``(H + 2*ph - kh) // sh + 1`` (likewise W).
* Max pooling pads with -inf; on a tie it takes the first maximum in row-major
  window order; ``argmax`` holds the flat index ``h*W + w`` of the chosen
  element in the unpadded input plane.
* Average pooling divides by ``kh*kw`` always (padded zeros are counted).
* Losses are means over the batch (CrossEntropy) or over all elements (MSE).

Every ``*_backward`` returns the gradient of a scalar loss with respect to the
inputs, given the gradient ``dy`` with respect to the output.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = [
    "pair", "conv2d", "conv2d_backward", "maxpool2d", "maxpool2d_backward",
    "avgpool2d", "avgpool2d_backward", "sigmoid", "sigmoid_backward", "relu",
    "relu_backward", "tanh", "tanh_backward", "linear", "linear_backward",
    "softmax_cross_entropy", "mse", "sgd_step", "adam_step", "pool_out_size",
    "batchnorm", "batchnorm_backward", "batchnorm_running", "dropout_mask",
    "adaptive_avgpool2d", "subsample_pad", "subsample_pad_backward",
    "label_smoothing_cross_entropy",
]


def pair(v):
    """An int or an (h, w) pair -> an (h, w) tuple of ints."""
    if isinstance(v, (tuple, list)):
        a, b = v
        return int(a), int(b)
    return int(v), int(v)


def pool_out_size(size, k, s, p):
    return (size + 2 * p - k) // s + 1


def _f64(a):
    return np.array(a, dtype=np.float64, copy=True)


# --------------------------------------------------------------------------
# Convolution (cross-correlation)
# --------------------------------------------------------------------------

def _x_at(x, n, c, h, w):
    """x[n, c, h, w] with zero padding outside the plane."""
    H, W = x.shape[2], x.shape[3]
    if 0 <= h < H and 0 <= w < W:
        return float(x[n, c, h, w])
    return 0.0


def conv2d(x, w, b=None, stride=1, padding=0):
    """y[n,o,i,j] = b[o] + sum_{c,p,q} x_pad[n,c,i*sh+p,j*sw+q] * w[o,c,p,q]."""
    x, w = _f64(x), _f64(w)
    N, C, H, W = x.shape
    O, C2, kh, kw = w.shape
    assert C == C2, (C, C2)
    sh, sw = pair(stride)
    ph, pw = pair(padding)
    Ho = (H + 2 * ph - kh) // sh + 1
    Wo = (W + 2 * pw - kw) // sw + 1
    y = np.zeros((N, O, Ho, Wo))
    for n in range(N):
        for o in range(O):
            for i in range(Ho):
                for j in range(Wo):
                    s = 0.0 if b is None else float(b[o])
                    for c in range(C):
                        for p in range(kh):
                            for q in range(kw):
                                # padded coordinate i*sh+p -> unpadded i*sh+p-ph
                                s += _x_at(x, n, c, i * sh + p - ph, j * sw + q - pw) * float(w[o, c, p, q])
                    y[n, o, i, j] = s
    return y


def conv2d_backward(dy, x, w, stride=1, padding=0):
    """Return (dx, dw, db) for y = conv2d(x, w, b, stride, padding).

    Each output element y[n,o,i,j] received x_pad[n,c,i*sh+p,j*sw+q] * w[o,c,p,q];
    so that term adds dy[n,o,i,j] * w[o,c,p,q] to dx at the (unpadded) input
    position, dy[n,o,i,j] * x_pad[...] to dw[o,c,p,q], and dy[n,o,i,j] to db[o].
    Terms that land in the padding are dropped.
    """
    dy, x, w = _f64(dy), _f64(x), _f64(w)
    N, C, H, W = x.shape
    O, _, kh, kw = w.shape
    sh, sw = pair(stride)
    ph, pw = pair(padding)
    _, _, Ho, Wo = dy.shape
    dx = np.zeros_like(x)
    dw = np.zeros_like(w)
    db = np.zeros(O)
    for n in range(N):
        for o in range(O):
            for i in range(Ho):
                for j in range(Wo):
                    g = float(dy[n, o, i, j])
                    db[o] += g
                    for c in range(C):
                        for p in range(kh):
                            for q in range(kw):
                                h = i * sh + p - ph
                                v = j * sw + q - pw
                                if 0 <= h < H and 0 <= v < W:
                                    dx[n, c, h, v] += g * w[o, c, p, q]
                                    dw[o, c, p, q] += g * x[n, c, h, v]
    return dx, dw, db


# --------------------------------------------------------------------------
# Pooling
# --------------------------------------------------------------------------

def _pool_params(kernel_size, stride, padding):
    kh, kw = pair(kernel_size)
    sh, sw = pair(kernel_size if stride is None else stride)
    ph, pw = pair(padding)
    return kh, kw, sh, sw, ph, pw


def maxpool2d(x, kernel_size, stride=None, padding=0):
    """Return (y, argmax): y is the max over each window of the -inf padded input;
    argmax (int64) the flat index h*W+w of the first maximum in row-major
    window order.  Padded positions never win.  (NaN inputs are not defined
    here; the layers reject them before pooling.)"""
    x = _f64(x)
    N, C, H, W = x.shape
    kh, kw, sh, sw, ph, pw = _pool_params(kernel_size, stride, padding)
    Ho = pool_out_size(H, kh, sh, ph)
    Wo = pool_out_size(W, kw, sw, pw)
    y = np.zeros((N, C, Ho, Wo))
    arg = np.zeros((N, C, Ho, Wo), dtype=np.int64)
    for n in range(N):
        for c in range(C):
            for i in range(Ho):
                for j in range(Wo):
                    best = -math.inf     # what the padding holds: it never wins
                    best_idx = -1
                    for p in range(kh):          # row-major window order
                        for q in range(kw):
                            h = i * sh + p - ph
                            v = j * sw + q - pw
                            if not (0 <= h < H and 0 <= v < W):
                                continue         # a padded position
                            val = float(x[n, c, h, v])
                            # strict: a later equal value does not win; the first real
                            # element is taken even if it is -inf itself
                            if best_idx < 0 or val > best:
                                best = val
                                best_idx = h * W + v
                    y[n, c, i, j] = best
                    arg[n, c, i, j] = best_idx
    return y, arg


def maxpool2d_backward(dy, x, kernel_size, stride=None, padding=0):
    """dx: each window's dy goes to the element its maximum came from
    (the first maximum in row-major order on a tie); windows overlap, so
    contributions add up."""
    dy = _f64(dy)
    N, C, H, W = np.shape(x)
    _, arg = maxpool2d(x, kernel_size, stride, padding)
    dx = np.zeros((N, C, H, W))
    _, _, Ho, Wo = dy.shape
    for n in range(N):
        for c in range(C):
            for i in range(Ho):
                for j in range(Wo):
                    idx = int(arg[n, c, i, j])
                    dx[n, c, idx // W, idx % W] += dy[n, c, i, j]
    return dx


def avgpool2d(x, kernel_size, stride=None, padding=0):
    """y = (sum of the zero-padded window) / (kh*kw)  (count_include_pad)."""
    x = _f64(x)
    N, C, H, W = x.shape
    kh, kw, sh, sw, ph, pw = _pool_params(kernel_size, stride, padding)
    Ho = pool_out_size(H, kh, sh, ph)
    Wo = pool_out_size(W, kw, sw, pw)
    y = np.zeros((N, C, Ho, Wo))
    for n in range(N):
        for c in range(C):
            for i in range(Ho):
                for j in range(Wo):
                    s = 0.0
                    for p in range(kh):
                        for q in range(kw):
                            s += _x_at(x, n, c, i * sh + p - ph, j * sw + q - pw)
                    y[n, c, i, j] = s / (kh * kw)
    return y


def avgpool2d_backward(dy, x_shape, kernel_size, stride=None, padding=0):
    """dx: every real (unpadded) element of a window gets dy / (kh*kw)."""
    dy = _f64(dy)
    N, C, H, W = x_shape
    kh, kw, sh, sw, ph, pw = _pool_params(kernel_size, stride, padding)
    _, _, Ho, Wo = dy.shape
    dx = np.zeros((N, C, H, W))
    for n in range(N):
        for c in range(C):
            for i in range(Ho):
                for j in range(Wo):
                    g = dy[n, c, i, j] / (kh * kw)
                    for p in range(kh):
                        for q in range(kw):
                            h = i * sh + p - ph
                            v = j * sw + q - pw
                            if 0 <= h < H and 0 <= v < W:
                                dx[n, c, h, v] += g
    return dx


# --------------------------------------------------------------------------
# Activations (elementwise)
# --------------------------------------------------------------------------

def _elementwise(fn, *arrays):
    arrays = [_f64(a) for a in arrays]
    out = np.zeros(arrays[0].shape)
    for idx in np.ndindex(out.shape):
        out[idx] = fn(*(float(a[idx]) for a in arrays))
    return out


def _sigmoid1(v):
    # 1/(1+e^-v), written so that neither branch overflows
    if v >= 0:
        return 1.0 / (1.0 + math.exp(-v))
    e = math.exp(v)
    return e / (1.0 + e)


def sigmoid(x):
    return _elementwise(_sigmoid1, x)


def sigmoid_backward(dy, x):
    """d/dx sigmoid(x) = s(x) * (1 - s(x)), applied to dy (x is the *input*)."""
    return _elementwise(lambda g, v: g * _sigmoid1(v) * (1.0 - _sigmoid1(v)), dy, x)


def relu(x):
    return _elementwise(lambda v: v if v > 0 else 0.0, x)


def relu_backward(dy, x):
    """dy where x > 0, else 0 (x is the *input*; the derivative at 0 is taken as 0)."""
    return _elementwise(lambda g, v: g if v > 0 else 0.0, dy, x)


def tanh(x):
    return _elementwise(math.tanh, x)


def tanh_backward(dy, x):
    """d/dx tanh(x) = 1 - tanh(x)^2 (x is the *input*)."""
    return _elementwise(lambda g, v: g * (1.0 - math.tanh(v) ** 2), dy, x)


# --------------------------------------------------------------------------
# Linear
# --------------------------------------------------------------------------

def linear(x, w, b=None):
    """y[n,o] = b[o] + sum_i x[n,i] * w[o,i]   (y = x W^T + b)."""
    x, w = _f64(x), _f64(w)
    N, I = x.shape
    O, I2 = w.shape
    assert I == I2, (I, I2)
    y = np.zeros((N, O))
    for n in range(N):
        for o in range(O):
            s = 0.0 if b is None else float(b[o])
            for i in range(I):
                s += x[n, i] * w[o, i]
            y[n, o] = s
    return y


def linear_backward(dy, x, w):
    """Return (dx, dw, db) for y = x W^T + b."""
    dy, x, w = _f64(dy), _f64(x), _f64(w)
    N, I = x.shape
    O = w.shape[0]
    dx = np.zeros((N, I))
    dw = np.zeros((O, I))
    db = np.zeros(O)
    for n in range(N):
        for o in range(O):
            g = dy[n, o]
            db[o] += g
            for i in range(I):
                dx[n, i] += g * w[o, i]
                dw[o, i] += g * x[n, i]
    return dx, dw, db


# --------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------

def softmax_cross_entropy(logits, labels):
    """Return (loss, dlogits).

    loss = (1/N) sum_n [ log sum_k exp(z[n,k]) - z[n, labels[n]] ]
    dlogits[n,k] = (softmax(z[n])_k - [k == labels[n]]) / N
    """
    z = _f64(logits)
    N, K = z.shape
    loss = 0.0
    grad = np.zeros((N, K))
    for n in range(N):
        t = int(labels[n])
        m = max(float(z[n, k]) for k in range(K))            # shift for stability
        denom = sum(math.exp(float(z[n, k]) - m) for k in range(K))
        log_denom = m + math.log(denom)
        loss += log_denom - float(z[n, t])
        for k in range(K):
            p = math.exp(float(z[n, k]) - log_denom)
            grad[n, k] = (p - (1.0 if k == t else 0.0)) / N
    return loss / N, grad


def mse(y, t):
    """Return (loss, dy): loss = mean((y - t)^2), dy = 2 (y - t) / y.size."""
    y, t = _f64(y), _f64(t)
    count = y.size
    loss = 0.0
    grad = np.zeros(y.shape)
    for idx in np.ndindex(y.shape):
        d = float(y[idx]) - float(t[idx])
        loss += d * d
        grad[idx] = 2.0 * d / count
    return loss / count, grad


# --------------------------------------------------------------------------
# Optimizers: one step for one parameter, from the torch.optim documentation
# --------------------------------------------------------------------------

def sgd_step(param, grad, buf, lr, momentum=0.0, weight_decay=0.0, nesterov=False, dampening=0.0):
    """One SGD step for one parameter, as in the torch.optim.SGD docs.

    ``buf`` is the momentum buffer from the previous step, or None at the first
    step.  Returns ``(new_param, new_buf)``; ``new_buf`` is None when momentum
    is 0.  For every element::

        g = grad + weight_decay * param
        if momentum != 0:
            b = g                                 (first step)
            b = momentum * b + (1 - dampening) * g (later steps)
            g = g + momentum * b   if nesterov else   b
        param = param - lr * g
    """
    param, grad = _f64(param), _f64(grad)
    new_param = np.zeros(param.shape)
    new_buf = None if momentum == 0 else np.zeros(param.shape)
    for idx in np.ndindex(param.shape):
        p = float(param[idx])
        g = float(grad[idx]) + weight_decay * p
        if momentum != 0:
            if buf is None:
                b = g
            else:
                b = momentum * float(buf[idx]) + (1.0 - dampening) * g
            new_buf[idx] = b
            g = g + momentum * b if nesterov else b
        new_param[idx] = p - lr * g
    return new_param, new_buf


def adam_step(param, grad, m, v, step, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
    """One Adam step for one parameter, as in the torch.optim.Adam docs.

    ``m``, ``v`` are the moment estimates after the previous step (None at the
    first step, meaning zeros); ``step`` is this step's number t, counting from
    1.  Returns ``(new_param, new_m, new_v)``.  For every element::

        g = grad + weight_decay * param
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g^2
        m_hat = m / (1 - beta1^t)
        v_hat = v / (1 - beta2^t)
        param = param - lr * m_hat / (sqrt(v_hat) + eps)
    """
    b1, b2 = betas
    param, grad = _f64(param), _f64(grad)
    new_param = np.zeros(param.shape)
    new_m = np.zeros(param.shape)
    new_v = np.zeros(param.shape)
    for idx in np.ndindex(param.shape):
        p = float(param[idx])
        g = float(grad[idx]) + weight_decay * p
        mi = b1 * (0.0 if m is None else float(m[idx])) + (1.0 - b1) * g
        vi = b2 * (0.0 if v is None else float(v[idx])) + (1.0 - b2) * g * g
        m_hat = mi / (1.0 - b1 ** step)
        v_hat = vi / (1.0 - b2 ** step)
        new_param[idx] = p - lr * m_hat / (math.sqrt(v_hat) + eps)
        new_m[idx] = mi
        new_v[idx] = vi
    return new_param, new_m, new_v



# --------------------------------------------------------------------------
# Issue 10: batch normalisation, dropout, adaptive average pooling, the
# option-A shortcut, label smoothing
# --------------------------------------------------------------------------

def _channel_items(shape, c):
    """Every index of channel c of an (N, C, ...) array, in row-major order."""
    return [idx for idx in np.ndindex(tuple(shape)) if idx[1] == c]


def batchnorm(x, weight=None, bias=None, eps=1e-5, mean=None, var=None):
    """Return (y, mean, var).  Without mean/var (training): the batch's mean and biased
    variance of each channel over every axis but 1; y = (x - mean)/sqrt(var + eps)*w + b
    (w = 1, b = 0 when not given)."""
    x = _f64(x)
    C = x.shape[1]
    batch = mean is None
    mean = np.zeros(C) if batch else _f64(mean)
    var = np.zeros(C) if batch else _f64(var)
    y = np.zeros(x.shape)
    for c in range(C):
        items = _channel_items(x.shape, c)
        if batch:
            mean[c] = sum(float(x[i]) for i in items) / len(items)
            var[c] = sum((float(x[i]) - mean[c]) ** 2 for i in items) / len(items)
        w = 1.0 if weight is None else float(weight[c])
        b = 0.0 if bias is None else float(bias[c])
        for i in items:
            y[i] = (float(x[i]) - mean[c]) / math.sqrt(var[c] + eps) * w + b
    return y, mean, var


def batchnorm_backward(dy, x, weight=None, eps=1e-5, mean=None, var=None):
    """Return (dx, dweight, dbias).  Training (no mean/var given): the gradient through the
    batch statistics, from the chain rule on xhat = (x - mean)/sqrt(var + eps):
    dx_i = w/(M sigma) * (M dy_i - sum_j dy_j - xhat_i sum_j dy_j xhat_j);
    with running mean/var: dx_i = w dy_i / sigma."""
    dy, x = _f64(dy), _f64(x)
    batch = mean is None
    _, mean, var = batchnorm(x, None, None, eps, mean, var)
    C = x.shape[1]
    dx = np.zeros(x.shape)
    dw, db = np.zeros(C), np.zeros(C)
    for c in range(C):
        items = _channel_items(x.shape, c)
        M = len(items)
        sigma = math.sqrt(var[c] + eps)
        w = 1.0 if weight is None else float(weight[c])
        xhat = {i: (float(x[i]) - mean[c]) / sigma for i in items}
        db[c] = sum(float(dy[i]) for i in items)
        dw[c] = sum(float(dy[i]) * xhat[i] for i in items)
        for i in items:
            if batch:
                dx[i] = w / (M * sigma) * (M * float(dy[i]) - db[c] - xhat[i] * dw[c])
            else:
                dx[i] = w * float(dy[i]) / sigma
    return dx, dw, db


def batchnorm_running(running_mean, running_var, x, momentum):
    """One update of the running statistics from batch x (PyTorch's rule): the unbiased
    variance sum (x - mean)^2 / (M - 1); momentum None = the cumulative average is the
    caller's business (pass 1/num_batches_tracked)."""
    _, mean, var = batchnorm(x)
    M = np.size(x) // np.shape(x)[1]
    rm, rv = _f64(running_mean), _f64(running_var)
    for c in range(len(rm)):
        rm[c] = (1 - momentum) * rm[c] + momentum * mean[c]
        rv[c] = (1 - momentum) * rv[c] + momentum * var[c] * M / (M - 1)
    return rm, rv


_MASK64 = (1 << 64) - 1


def _splitmix64(z):
    z &= _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def dropout_mask(shape, p, seed):
    """The dropout mask of the seam (Python integers, element by element): element i (flat,
    row-major) is kept when splitmix64(seed + (i+1)*0x9E3779B97F4A7C15) >> 11 >=
    ceil(p * 2^53); kept elements are scaled by 1/(1-p)."""
    threshold = math.ceil(p * 2.0 ** 53)
    mask = np.zeros(int(np.prod(shape)))
    for i in range(mask.size):
        h = _splitmix64(seed + (i + 1) * 0x9E3779B97F4A7C15)
        if p < 1 and (h >> 11) >= threshold:
            mask[i] = 1.0 / (1.0 - p)
    return mask.reshape(shape)


def adaptive_avgpool2d(x, output_size):
    """PyTorch's adaptive average pooling: output cell i of n averages input rows
    floor(i*H/n) .. ceil((i+1)*H/n) - 1 (likewise columns)."""
    x = _f64(x)
    N, C, H, W = x.shape
    oh, ow = pair(output_size)
    y = np.zeros((N, C, oh, ow))
    for n in range(N):
        for c in range(C):
            for i in range(oh):
                h0, h1 = (i * H) // oh, -((-(i + 1) * H) // oh)
                for j in range(ow):
                    w0, w1 = (j * W) // ow, -((-(j + 1) * W) // ow)
                    vals = [float(x[n, c, h, w]) for h in range(h0, h1) for w in range(w0, w1)]
                    y[n, c, i, j] = sum(vals) / len(vals)
    return y


def subsample_pad(x, out_channels, stride=2, pad_before=None):
    """The ResNet option-A shortcut: y[n, o, i, j] = x[n, o - pad_before, i*sh, j*sw] for the
    input channels, zero for the padded ones; pad_before = (out - in) // 2 by default."""
    x = _f64(x)
    N, C, H, W = x.shape
    sh, sw = pair(stride)
    pb = (out_channels - C) // 2 if pad_before is None else pad_before
    oh, ow = -(-H // sh), -(-W // sw)
    y = np.zeros((N, out_channels, oh, ow))
    for n in range(N):
        for o in range(out_channels):
            c = o - pb
            if 0 <= c < C:
                for i in range(oh):
                    for j in range(ow):
                        y[n, o, i, j] = x[n, c, i * sh, j * sw]
    return y


def label_smoothing_cross_entropy(logits, labels, eps):
    """Return (loss, dlogits) of PyTorch's CrossEntropyLoss(label_smoothing=eps):
    target[n,k] = (1 - eps)[k == label] + eps/K; loss = mean_n sum_k -target log softmax;
    dlogits = (softmax - target) / N."""
    z = _f64(logits)
    N, K = z.shape
    loss = 0.0
    grad = np.zeros((N, K))
    for n in range(N):
        m = max(float(z[n, k]) for k in range(K))
        log_denom = m + math.log(sum(math.exp(float(z[n, k]) - m) for k in range(K)))
        for k in range(K):
            target = (1 - eps) * (1.0 if k == int(labels[n]) else 0.0) + eps / K
            logp = float(z[n, k]) - log_denom
            loss -= target * logp
            grad[n, k] = (math.exp(logp) - target) / N
    return loss / N, grad


def subsample_pad_backward(dy, x_shape, stride=2, pad_before=0):
    """dx of the option-A shortcut: each input element that the subsampling read gets the
    gradient of the output element it became; every other element gets zero."""
    dy = _f64(dy)
    N, C, H, W = x_shape
    sh, sw = pair(stride)
    dx = np.zeros((N, C, H, W))
    for n in range(N):
        for c in range(C):
            for i in range(dy.shape[2]):
                for j in range(dy.shape[3]):
                    dx[n, c, i * sh, j * sw] = dy[n, c + pad_before, i, j]
    return dx
