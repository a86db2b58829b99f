"""NaN, +inf and -inf through every kernel primitive, on every backend, with the IEEE result
each primitive must give stated beside its case (the seam docstring, "Non-finite values", says
the same in words). Plus extreme finite logits for softmax-cross-entropy, against a float64
reference.

Backends: the ``backend`` fixture -- the NumPy backend, then every backend of
tests/backend_registry.py (the CPU emulator of the CUDA kernels; CUDA where a GPU is present).
Each case compares against a literal expected array, not against another backend, so a bug
shared by both backends (a ReLU that turns NaN into 0) fails too.

Comparison: NaN where expected and nowhere else, the same infinities (with their sign), finite
values within a few ulp (float32) -- ``_same``.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from gpucnn.backends import PRIMITIVES

NAN, INF = math.nan, math.inf
DTYPES = (np.float32, np.float64)
BAD = (NAN, INF, -INF)
DT_IDS = {np.float32: "float32", np.float64: "float64"}


@pytest.fixture(autouse=True)
def _quiet():
    # The NumPy backend may compute inf - inf on purpose; the result is what is checked.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _host(B, a):
    if isinstance(a, (bool, float, int, np.bool_, np.floating, np.integer)):
        return a
    return np.array(B.to_numpy(a), copy=True)


def _same(got, want, dtype, what):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    nan_got, nan_want = np.isnan(got), np.isnan(want)
    assert np.array_equal(nan_got, nan_want), (
        f"{what}: NaN at {np.argwhere(nan_got).tolist()}, expected at {np.argwhere(nan_want).tolist()}\n"
        f"got {got.ravel().tolist()}\nexpected {want.ravel().tolist()}")
    inf_got, inf_want = np.isinf(got), np.isinf(want)
    assert np.array_equal(inf_got, inf_want) and np.array_equal(got[inf_got], want[inf_want]), (
        f"{what}: infinities differ\ngot {got.ravel().tolist()}\nexpected {want.ravel().tolist()}")
    fin = ~(nan_want | inf_want)
    rtol = 1e-12 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(got[fin], want[fin], rtol=rtol, atol=rtol, err_msg=what)


def _arr(values, dtype, shape=None):
    a = np.array(values, dtype=dtype)
    return a.reshape(shape) if shape is not None else a


def _ramp(dtype, shape=(1, 1, 4, 4)):
    """x[..., h, w] = h*W + w - 5: small distinct values, some negative."""
    return (np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape) - 5).astype(dtype)


# ------------------------------------------------------------------------------------------------
# the cases: name -> (primitive(s) covered, run(B, dtype, bad) -> results, expected(bad) -> results)
CASES = {}


def case(name, *primitives):
    def deco(fn):
        CASES[name] = (primitives, fn)
        return fn
    return deco


@case("all_finite", "all_finite")
def _all_finite(B, dt, bad):
    # False as soon as one element is NaN or +-inf, wherever it is; True on finite extremes.
    big = np.finfo(dt).max
    for where in (0, 5, 1000, 1023):
        a = np.full(1024, big, dt)
        assert B.all_finite(B.asarray(a)) is True or B.all_finite(B.asarray(a)) == True  # noqa: E712
        a[where] = bad
        assert not B.all_finite(B.asarray(a)), f"all_finite missed {bad} at {where}"
    return None


@case("accumulate", "accumulate")
def _accumulate(B, dt, bad):
    # dst += src elementwise, IEEE: x + NaN = NaN, x + inf = inf, inf + (-inf) = NaN.
    dst = B.asarray(_arr([1, bad, 2, 3, INF], dt))
    B.accumulate(dst, B.asarray(_arr([bad, 1, -INF, 0, 5], dt)))
    got = _host(B, dst)
    want = [1 + bad, bad + 1, -INF, 3, INF]
    return [(got, want)]


@case("relu", "relu_forward", "relu_backward")
def _relu(B, dt, bad):
    # forward: max(x, 0) with NaN staying NaN (as numpy.maximum): NaN -> NaN, inf -> inf,
    # -inf -> 0.  backward: dy where y > 0 else 0 -- a select, so a non-finite dy where y <= 0
    # gives 0, and y = NaN (NaN > 0 is false) gives 0.
    x = _arr([bad, -1, 2, 0], dt)
    fwd = {NAN: NAN, INF: INF, -INF: 0.0}
    y = _host(B, B.relu_forward(B.asarray(x)))
    want_y = [fwd[bad] if not math.isnan(bad) else NAN, 0, 2, 0]
    dy = _arr([1, bad, bad, 3], dt)
    y_saved = _arr([bad, 0, 1, 2], dt)
    dx = _host(B, B.relu_backward(B.asarray(dy), B.asarray(y_saved)))
    want_dx = [1.0 if bad == INF else 0.0, 0, bad, 3]
    return [(y, want_y), (dx, want_dx)]


@case("bias_act", "bias_act_forward")
def _bias_act(B, dt, bad):
    # act(y + b) with the activation's own rules: a non-finite y or b meets each act as that
    # act's forward case does (relu: NaN stays NaN, -inf -> 0; sigmoid: +-inf -> 1/0; tanh).
    out = []
    fwd = {"relu": lambda v: v if (v > 0 or math.isnan(v)) else 0.0,
           "sigmoid": lambda v: NAN if math.isnan(v) else (1.0 if v == INF else
                                                           0.0 if v == -INF else 1 / (1 + math.exp(-v))),
           "tanh": lambda v: NAN if math.isnan(v) else math.tanh(v),
           None: lambda v: v}
    for act in (None, "relu", "sigmoid", "tanh"):
        y = _arr([bad, 1, -2, bad], dt, (2, 2))
        b = _arr([0.5, bad], dt)
        got = _host(B, B.bias_act_forward(B.asarray(y), B.asarray(b), act))
        want = [fwd[act](v) for v in (bad + 0.5, 1 + bad, -1.5, bad + bad)]
        out.append((got.ravel(), want))
    return out


@case("gather", "gather_rows", "gather_normalize")
def _gather(B, dt, bad):
    # a copy: a non-finite row arrives unchanged; uint8 sources cannot hold NaN
    src = _arr([[1, bad], [bad, 2], [3, 4]], dt)
    got = _host(B, B.gather_rows(B.asarray(src), B.asarray(np.array([1, 1, 0], np.int64))))
    u8 = np.array([[[0, 255]], [[51, 102]]], np.uint8)
    g2 = _host(B, B.gather_normalize(B.asarray(u8), B.asarray(np.array([1, 0], np.int64)),
                                     (0.0,), (1.0,), 255.0, dt))
    return [(got.ravel(), [bad, 2, bad, 2, 1, bad]), (g2.ravel(), [0.2, 0.4, 0.0, 1.0])]


@case("sigmoid", "sigmoid_forward", "sigmoid_backward")
def _sigmoid(B, dt, bad):
    # forward: NaN -> NaN, +inf -> 1, -inf -> 0 (no NaN from exp overflow); large finite
    # inputs saturate to exactly 0 and 1.  backward: dy * y * (1 - y), IEEE.
    x = _arr([bad, 0, 1000, -1000], dt)
    y = _host(B, B.sigmoid_forward(B.asarray(x)))
    first = NAN if math.isnan(bad) else (1.0 if bad > 0 else 0.0)
    want_y = [first, 0.5, 1, 0]
    dy = _arr([bad, 1, bad], dt)
    ys = _arr([0.5, bad, 0.0], dt)
    dx = _host(B, B.sigmoid_backward(B.asarray(dy), B.asarray(ys)))
    want_dx = [bad * 0.25, 1 * bad * (1 - bad), bad * 0.0 * 1.0]
    return [(y, want_y), (dx, want_dx)]


@case("tanh", "tanh_forward", "tanh_backward")
def _tanh(B, dt, bad):
    # forward: NaN -> NaN, +-inf -> +-1.  backward: dy * (1 - y*y), IEEE.
    x = _arr([bad, 0, 1000, -1000], dt)
    y = _host(B, B.tanh_forward(B.asarray(x)))
    first = NAN if math.isnan(bad) else math.copysign(1.0, bad)
    dy = _arr([bad, 2, bad], dt)
    ys = _arr([0.5, bad, 1.0], dt)
    dx = _host(B, B.tanh_backward(B.asarray(dy), B.asarray(ys)))
    want_dx = [bad * 0.75, 2 * (1 - bad * bad), bad * 0.0]
    return [(y, [first, 0, 1, -1]), (dx, want_dx)]


def _conv_bad(dt, bad):
    x = _ramp(dt)
    x[0, 0, 1, 1] = bad
    return x


# outputs of a 3x3 kernel, stride 1, padding 1, on a 4x4 plane whose windows contain (1, 1)
_REACH = np.zeros((1, 1, 4, 4), bool)
_REACH[0, 0, 0:3, 0:3] = True


@case("conv2d", "conv2d_forward", "conv2d_backward_data", "conv2d_backward_weight",
      "conv2d_backward")
def _conv2d(B, dt, bad):
    # y is non-finite exactly where the window holds the non-finite input (all-ones weights:
    # NaN -> NaN, +-inf -> +-inf); elsewhere the finite sum.  backward_data: the same pattern
    # from a non-finite dy.  backward_weight: every tap of the output channel sees a NaN/inf
    # dy element times some x (or padded 0: inf * 0 = NaN), so all of dw is non-finite.
    x = _conv_bad(dt, bad)
    w = np.ones((1, 1, 3, 3), dt)
    fin = _ramp(np.float64)
    pad = np.pad(fin[0, 0], 1)
    ref = np.array([[pad[i:i + 3, j:j + 3].sum() for j in range(4)] for i in range(4)]).reshape(1, 1, 4, 4)
    want = np.where(_REACH, bad, ref)
    y = _host(B, B.conv2d_forward(B.asarray(x), B.asarray(w), (1, 1), (1, 1)))
    dx = _host(B, B.conv2d_backward_data(B.asarray(x), B.asarray(w), (1, 1, 4, 4), (1, 1), (1, 1)))
    dw = _host(B, B.conv2d_backward_weight(B.asarray(x), B.asarray(np.ones((1, 1, 4, 4), dt)),
                                           (1, 1, 3, 3), (1, 1), (1, 1)))
    dw0 = _host(B, B.conv2d_backward_weight(B.asarray(x), B.asarray(np.zeros((1, 1, 4, 4), dt)),
                                            (1, 1, 3, 3), (1, 1), (1, 1)))
    # a non-finite weight: every output of its channel (padding zeros included: inf*0 = NaN)
    w2 = np.ones((2, 1, 3, 3), dt)
    w2[1, 0, 0, 0] = bad
    y2 = _host(B, B.conv2d_forward(B.asarray(_ramp(dt)), B.asarray(w2), (1, 1), (1, 1)))
    want2 = np.concatenate([ref, np.full_like(ref, NAN)], axis=1)
    if not math.isnan(bad):  # tap (0, 0) reads padding (0 * inf = NaN) on row 0 / column 0, else x*inf
        tap = np.pad(fin[0, 0], 1)[0:4, 0:4]
        want2[0, 1] = np.where(tap == 0, NAN, np.where(tap > 0, bad, -bad))
    # both at once (dy non-finite, x all ones): backward-data's and backward-weight's results
    dx_b, dw_b = (_host(B, a) for a in B.conv2d_backward(
        B.asarray(x), B.asarray(np.ones((1, 1, 4, 4), dt)), B.asarray(w), (1, 1), (1, 1), True))
    return [(y, want), (dx, want), (dw, np.full((1, 1, 3, 3), bad)),
            (dw0, np.full((1, 1, 3, 3), NAN if math.isinf(bad) else bad)), (y2, want2),
            (dx_b, want), (dw_b, np.full((1, 1, 3, 3), bad))]


@case("linear", "linear_forward", "linear_backward_data", "linear_backward_weight")
def _linear(B, dt, bad):
    # y = x @ w.T: a non-finite x[n, i] makes row n of y non-finite (NaN, or +-inf times the
    # weights' signs; times a zero weight, NaN); the backward GEMMs likewise, IEEE throughout.
    x = _arr([[1, 2], [bad, 1]], dt)
    w = _arr([[1, 1], [-1, 2], [0.5, 0]], dt)
    y = _host(B, B.linear_forward(B.asarray(x), B.asarray(w)))
    want_y = [[3, 3, 0.5], [bad * 1 + 1, bad * -1 + 2, bad * 0.5]]
    dx = _host(B, B.linear_backward_data(B.asarray(y.astype(dt)), B.asarray(w)))
    dw = _host(B, B.linear_backward_weight(B.asarray(_arr([[1, 0, 2], [0, 1, 0]], dt)), B.asarray(x)))
    r = np.array(want_y[1])
    want_dx = [[3 - 3 + 0.25, 3 + 6], [r[0] - r[1] + 0.5 * r[2], r[0] + 2 * r[1]]]
    want_dw = [[1 + 0 * bad, 2], [0 + bad, 1], [2 + 0 * bad, 4]]   # 0 * NaN, 0 * inf: NaN
    return [(y, want_y), (dx, want_dx), (dw, want_dw)]


@case("bias", "bias_forward", "bias_backward")
def _bias(B, dt, bad):
    # forward y + b: a non-finite b[c] fills channel c; a non-finite y element stays itself.
    # backward: the sum over every axis but 1, IEEE: NaN -> NaN, inf -> inf, inf + -inf -> NaN.
    y = np.ones((2, 3, 2, 2), dt)
    y[1, 2, 0, 1] = bad
    got = _host(B, B.bias_forward(B.asarray(y.copy()), B.asarray(_arr([bad, 1, 0], dt))))
    want = np.ones((2, 3, 2, 2)) + np.array([0, 1, 0]).reshape(1, 3, 1, 1)
    want[:, 0] = bad
    want[1, 2, 0, 1] = bad
    dy = np.ones((3, 2, 5, 1), dt)
    dy[2, 0, 4] = bad
    dy[0, 1, 1] = bad
    dy[1, 1, 3] = -bad
    db = _host(B, B.bias_backward(B.asarray(dy)))
    return [(got, want), (db, [14 + bad, NAN if math.isinf(bad) else bad])]


@case("maxpool", "maxpool2d_forward", "maxpool2d_backward")
def _maxpool(B, dt, bad):
    # A window with a NaN gives NaN and argmax = the first NaN in row-major window order (as
    # numpy.argmax); else the first maximum (+inf wins; -inf only where every real element is
    # -inf). Padding is never chosen. backward routes dy to argmax (a select: no NaN * 0).
    x = _ramp(dt)
    x[0, 0, 1, 1] = bad
    x[0, 0, 2, 3] = bad          # two in one 3x3 window: the first in window order wins
    x[0, 0, 3, 0] = -INF
    y, am = B.maxpool2d_forward(B.asarray(x), (3, 3), (1, 1), (1, 1))
    y, am = _host(B, y), _host(B, am)
    want_y = np.zeros((4, 4))
    want_am = np.zeros((4, 4), np.int64)
    for i in range(4):
        for j in range(4):
            best, at = None, -1
            for p in range(3):
                for q in range(3):
                    h, w = i + p - 1, j + q - 1
                    if not (0 <= h < 4 and 0 <= w < 4):
                        continue
                    v = float(x[0, 0, h, w])
                    if at < 0 or (not math.isnan(best) and (v > best or math.isnan(v))):
                        best, at = v, h * 4 + w
            want_y[i, j], want_am[i, j] = best, at
    assert np.array_equal(am.reshape(4, 4), want_am), f"argmax {am.ravel().tolist()} != {want_am.ravel().tolist()}"
    # all of one window -inf, 2x2 stride 2: y = -inf, argmax = its first element
    x2 = _ramp(dt)
    x2[0, 0, 2:4, 0:2] = -INF
    y2, am2 = B.maxpool2d_forward(B.asarray(x2), (2, 2), (2, 2), (0, 0))
    assert _host(B, am2).ravel().tolist() == [5, 7, 8, 15]
    dy = _arr([1, bad, 2, 3], dt, (1, 1, 2, 2))
    dx = _host(B, B.maxpool2d_backward(B.asarray(dy), am2, (1, 1, 4, 4), (2, 2), (2, 2), (0, 0)))
    want_dx = np.zeros(16)
    want_dx[[5, 7, 8, 15]] = [1, bad, 2, 3]
    return [(y, want_y.reshape(1, 1, 4, 4)), (_host(B, y2), [[[[0, 2], [-INF, 10]]]]),
            (dx, want_dx.reshape(1, 1, 4, 4))]


@case("avgpool", "avgpool2d_forward", "avgpool2d_backward")
def _avgpool(B, dt, bad):
    # forward: the IEEE sum of the window / (kh*kw): a window with NaN -> NaN, with +inf ->
    # +inf, with +inf and -inf -> NaN.  backward: dy * inv_area to every element of its window.
    x = _ramp(dt)
    x[0, 0, 0, 0] = bad
    x[0, 0, 2, 2] = bad
    x[0, 0, 3, 3] = -bad
    y = _host(B, B.avgpool2d_forward(B.asarray(x), (2, 2), (2, 2), (0, 0)))
    want = [[[[bad, (-3 - 2 + 1 + 2) / 4], [(3 + 4 + 7 + 8) / 4, bad - bad]]]]
    dy = _arr([4, bad, 8, 0], dt, (1, 1, 2, 2))
    dx = _host(B, B.avgpool2d_backward(B.asarray(dy), (1, 1, 4, 4), (2, 2), (2, 2), (0, 0)))
    want_dx = np.kron(np.array([[1, bad / 4], [2, 0]]), np.ones((2, 2))).reshape(1, 1, 4, 4)
    return [(y, want), (dx, want_dx)]


@case("softmax_cross_entropy", "softmax_cross_entropy_forward", "softmax_cross_entropy_backward")
def _sce(B, dt, bad):
    # forward: a row holding NaN or +inf gives NaN probabilities for the whole row and a NaN
    # loss; -inf logits get probability exactly 0 (loss +inf when it is the label's logit);
    # other rows are untouched.  backward: (probs - onehot) / N, IEEE.
    logits = _arr([[0, bad, 1], [0, 1, 2]], dt)
    loss, probs = B.softmax_cross_entropy_forward(B.asarray(logits), B.asarray(np.array([0, 1])))
    row1 = np.exp([0, 1, 2] - np.log(np.exp([0, 1, 2]).sum()))
    if bad == -INF:
        row0 = np.exp([0, -INF, 1] - np.log(1 + math.e))
        want_loss = (math.log(1 + math.e) + (math.log(np.exp([0, 1, 2]).sum()) - 1)) / 2
    else:
        row0 = [NAN] * 3
        want_loss = NAN
    _same(loss, want_loss, dt, "softmax_cross_entropy_forward loss")
    # the label's own logit -inf: +inf loss, the probabilities stay finite
    loss2, _ = B.softmax_cross_entropy_forward(B.asarray(_arr([[-INF, 0, 0]], dt)), B.asarray(np.array([0])))
    assert loss2 == INF, loss2
    probs_in = _arr([[0.25, bad, 0.5], [0.25, 0.25, 0.5]], dt)
    dx = _host(B, B.softmax_cross_entropy_backward(B.asarray(probs_in), B.asarray(np.array([1, 2]))))
    want_dx = np.array([[0.25, bad - 1, 0.5], [0.25, 0.25, -0.5]]) / 2
    return [(_host(B, probs), [row0, row1]), (dx, want_dx)]


@case("mse", "mse_forward", "mse_backward")
def _mse(B, dt, bad):
    # forward: mean((y - t)^2): NaN -> NaN, +-inf -> +inf, inf - inf -> NaN.
    # backward: 2 (y - t) / size, IEEE.
    y = _arr([bad, 1, 2, INF], dt)
    t = _arr([0, 1, 0, INF], dt)
    loss = B.mse_forward(B.asarray(y[:3]), B.asarray(t[:3]))
    _same(loss, NAN if math.isnan(bad) else INF, dt, "mse_forward")
    assert math.isnan(B.mse_forward(B.asarray(y), B.asarray(t)))   # inf - inf
    dx = _host(B, B.mse_backward(B.asarray(y), B.asarray(t)))
    return [(dx, [bad / 2, 0, 1, NAN])]


@case("sgd", "sgd_update")
def _sgd(B, dt, bad):
    # elementwise: a non-finite grad element makes its own param (and buffer) element
    # non-finite -- NaN -> NaN, +-inf -> -+inf (param -= lr * g) -- and no other.
    p = B.asarray(np.ones(3, dt))
    buf = B.asarray(np.zeros(3, dt))
    B.sgd_update(p, B.asarray(_arr([bad, 1, 1], dt)), buf, 0.1, 0.9, 0.0, False, True)
    p2 = B.asarray(np.ones(3, dt))
    B.sgd_update(p2, B.asarray(_arr([1, bad, 1], dt)), None, 0.5, 0.0, 0.0, False, True)
    return [(_host(B, p), [1 - 0.1 * bad, 0.9, 0.9]), (_host(B, buf), [bad, 1, 1]),
            (_host(B, p2), [0.5, 1 - 0.5 * bad, 0.5])]


@case("adam", "adam_update")
def _adam(B, dt, bad):
    # elementwise: grad NaN -> NaN m, v, param; grad +-inf -> m +-inf, v +inf, and the step
    # m / sqrt(v) = inf / inf -> NaN param.  Other elements untouched by it.
    p = B.asarray(np.ones(3, dt))
    m = B.asarray(np.zeros(3, dt))
    v = B.asarray(np.zeros(3, dt))
    B.adam_update(p, B.asarray(_arr([bad, 1, 1], dt)), m, v, 1, 0.1, 0.9, 0.999, 1e-8, 0.0)
    step = 0.1 / (1 - 0.9) * 0.1 / (math.sqrt(0.001) / math.sqrt(1 - 0.999) + 1e-8)
    return [(_host(B, p), [NAN, 1 - step, 1 - step]), (_host(B, m), [0.1 * bad, 0.1, 0.1]),
            (_host(B, v), [abs(bad) * 0.001 if not math.isnan(bad) else NAN, 0.001, 0.001])]


@case("augment", "crop_flip", "channel_normalize")
def _augment(B, dt, bad):
    # crop_flip copies values: a non-finite pixel lands where the crop and flip put it,
    # padding stays 0.  channel_normalize: (bad - m) / s, elementwise.
    x = _arr([[1, bad], [3, 4]], dt, (1, 1, 2, 2))
    y = B.crop_flip(B.asarray(x), np.array([1]), np.array([1]), np.array([1]), (2, 2), (1, 1))
    n = B.channel_normalize(B.asarray(_arr([bad, 1.0, 2.0, bad], dt, (1, 2, 2, 1))),
                            [0.5, 1.0], [2.0, 0.5])
    return [(_host(B, y), [[[[bad, 1], [4, 3]]]]),
            (_host(B, n), [[[[(bad - 0.5) / 2.0], [0.25]], [[2.0], [(bad - 1.0) / 0.5]]]])]

# ---------------------------------------------------------------------------- issue 10's layers
@case("add", "add")
def _add(B, dt, bad):
    # a + b, IEEE: NaN -> NaN, inf + (-inf) -> NaN.
    got = _host(B, B.add(B.asarray(_arr([bad, 1, INF, 2], dt)), B.asarray(_arr([1, bad, -INF, 3], dt))))
    # with the ReLU after it (relu_forward's np.maximum: NaN stays NaN, -inf becomes 0)
    relu = _host(B, B.add(B.asarray(_arr([bad, 1, INF, -2], dt)), B.asarray(_arr([1, bad, -INF, 1], dt)),
                          "relu"))
    return [(got, [bad + 1, 1 + bad, NAN, 5]),
            (relu, [max(bad + 1, 0) if not math.isnan(bad) else NAN,
                    max(1 + bad, 0) if not math.isnan(bad) else NAN, NAN, 0])]


@case("batchnorm", "batchnorm_stats", "batchnorm_forward", "batchnorm_backward")
def _batchnorm(B, dt, bad):
    # stats: a non-finite value makes its channel's mean non-finite (NaN, or the inf itself)
    # and its variance NaN (inf - inf); the other channel is untouched.
    mean, var = B.batchnorm_stats(B.asarray(_arr([[bad, 1], [2, 3]], dt)))
    out = [(_host(B, mean), [bad, 2]), (_host(B, var), [NAN, 1])]
    # forward (x - mean) * w / sqrt(var + eps) + b: with var + eps = 4, scale = w / 2 = [1, 2]
    args = [_arr(v, dt) for v in ([0, 2], [3, 3], [2, 4], [0.5, -1])]
    y = B.batchnorm_forward(B.asarray(_arr([[bad, 1], [2, 3]], dt)), *map(B.asarray, args), 1.0)
    out.append((_host(B, y), [[bad + 0.5, -3], [2.5, 1]]))
    args[0] = _arr([bad, 2], dt)       # a non-finite mean: its channel only
    y = B.batchnorm_forward(B.asarray(_arr([[1, 1], [2, 3]], dt)), *map(B.asarray, args), 1.0)
    out.append((_host(B, y), [[(1 - bad) + 0.5, -3], [(2 - bad) + 0.5, 1]]))
    # backward with invstd = 1 (var 0.75 + eps 0.25), w = [2, 1], x - mean = [-1, 1] in both
    # channels, a non-finite dy in channel 0: dbias0 = bad + 1, dweight0 = -bad + 1; the
    # training dx of channel 0 is NaN everywhere (bad - bad), channel 1 is finite: 0.
    x, dy = _arr([[0, 1], [2, 3]], dt), _arr([[bad, 1], [1, 3]], dt)
    st = [B.asarray(_arr(v, dt)) for v in ([1, 2], [0.75, 0.75], [2, 1])]
    for batch_stats, want_dx in ((True, [[NAN, 0], [NAN, 0]]), (False, [[2 * bad, 1], [2, 3]])):
        dx, dw, db = B.batchnorm_backward(B.asarray(dy), B.asarray(x), *st, 0.25, batch_stats)
        out += [(_host(B, dx), want_dx), (_host(B, dw), [-bad + 1, 2]), (_host(B, db), [bad + 1, 4])]
    return out


@case("batchnorm_running", "batchnorm_update_running")
def _batchnorm_running(B, dt, bad):
    # in place, elementwise: a non-finite batch mean/var moves only its own running entry.
    rm, rv = B.asarray(np.zeros(2, dt)), B.asarray(np.ones(2, dt))
    B.batchnorm_update_running(rm, rv, B.asarray(_arr([bad, 1], dt)), B.asarray(_arr([1, bad], dt)),
                               0.5, 2)
    return [(_host(B, rm), [0.5 * bad, 0.5]), (_host(B, rv), [1.5, 0.5 * (bad * 2) + 0.5])]


@case("dropout", "dropout_forward", "dropout_backward")
def _dropout(B, dt, bad):
    # x * mask: a kept NaN/inf stays (times 2), a dropped one gives NaN (0 * inf, 0 * NaN).
    from gpucnn.reference import dropout_mask
    mask = dropout_mask((64,), 0.5, 99)
    assert 0 < np.count_nonzero(mask) < 64
    x = np.full(64, bad, dt)
    with np.errstate(invalid="ignore"):
        want = np.full(64, bad) * mask
    return [(_host(B, B.dropout_forward(B.asarray(x), 0.5, 99)), want),
            (_host(B, B.dropout_backward(B.asarray(x), 0.5, 99)), want)]


@case("subsample_pad", "subsample_pad_forward", "subsample_pad_backward")
def _subsample_pad(B, dt, bad):
    # copies: the padded channels are exactly 0, and the backward never reads dy's padded
    # channels (non-finite there) nor the skipped positions.
    y = B.subsample_pad_forward(B.asarray(_arr([[[[bad, 1], [2, 3]]]], dt)), (2, 2), 1, 3)
    dx = B.subsample_pad_backward(B.asarray(_arr([bad, 5, bad], dt, (1, 3, 1, 1))), (1, 1, 2, 2),
                                  (2, 2), 1)
    return [(_host(B, y), [[[[0]], [[bad]], [[0]]]]), (_host(B, dx), [[[[5, 0], [0, 0]]]])]


@case("label_smoothing", "label_smoothing_cross_entropy_forward",
      "label_smoothing_cross_entropy_backward")
def _label_smoothing(B, dt, bad):
    # forward: as softmax_cross_entropy, except that a -inf logit gives a +inf loss (the
    # smoothed target gives it weight eps/K).  backward: (probs - target) / N, IEEE.
    logits = _arr([[0, bad, 1], [0, 1, 2]], dt)
    loss, probs = B.label_smoothing_cross_entropy_forward(B.asarray(logits),
                                                          B.asarray(np.array([0, 1])), 0.1)
    row1 = np.exp([0, 1, 2] - np.log(np.exp([0, 1, 2]).sum()))
    row0 = np.exp([0, -INF, 1] - np.log(1 + math.e)) if bad == -INF else [NAN] * 3
    _same(loss, INF if bad == -INF else NAN, dt, "label_smoothing_cross_entropy_forward loss")
    probs_in = _arr([[0.25, bad, 0.5], [0.25, 0.25, 0.5]], dt)
    dx = _host(B, B.label_smoothing_cross_entropy_backward(B.asarray(probs_in),
                                                           B.asarray(np.array([1, 2])), 0.3))
    want_dx = np.array([[0.25 - 0.1, bad - 0.8, 0.5 - 0.1], [0.25 - 0.1, 0.25 - 0.1, 0.5 - 0.8]]) / 2
    return [(_host(B, probs), [row0, row1]), (dx, want_dx)]


def test_every_kernel_primitive_has_a_nonfinite_case():
    covered = {p for prims, _ in CASES.values() for p in prims}
    missing = set(PRIMITIVES) - covered - {"asarray", "to_numpy", "zeros"}
    assert not missing, f"primitives without a NaN/inf case: {sorted(missing)}"


@pytest.mark.parametrize("bad", BAD, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS.get)
@pytest.mark.parametrize("name", sorted(CASES))
def test_nonfinite_values_through_every_primitive(backend, name, dtype, bad):
    _, run = CASES[name]
    results = run(backend, dtype, bad) or []
    for k, (got, want) in enumerate(results):
        _same(got, want, dtype, f"{backend.name} {name} {DT_IDS[dtype]} with {bad}: result {k}")


# ------------------------------------------------------------------------------------------------
# softmax-cross-entropy with extreme finite logits, against a float64 reference
def _sce_reference(logits, labels):
    """float64 log-sum-exp with the row maximum over *every* logit: (mean loss, probs)."""
    z = np.asarray(logits, np.float64)
    m = z.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(z - m).sum(axis=1))
    probs = np.exp(z - lse[:, None])
    return float(np.mean(lse - z[np.arange(len(z)), labels])), probs


EXTREME_LOGITS = {
    "large-last": ([[0, 0, 1000]], [2]),
    "large-last-wrong-label": ([[0, 0, 1000]], [0]),
    "large-first": ([[1000, 0, 0]], [0]),
    "large-middle": ([[0, 1000, 0]], [1]),
    "only-large": ([[1000, 1000, 1000]], [1]),
    "only-large-negative": ([[-1000, -1000, -1000]], [2]),
    "large-negative-last": ([[0, 1, -1000]], [2]),
    "large-negative-except-last": ([[-1000, -1000, 3]], [2]),
    "mixed-rows": ([[0, 0, 1000], [-1000, 5, 0], [80, -80, 88], [0, 0, 0]], [2, 1, 0, 1]),
    "wide-last": ([[1.0] * 40 + [500.0]], [40]),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS.get)
@pytest.mark.parametrize("name", sorted(EXTREME_LOGITS))
def test_softmax_cross_entropy_extreme_logits(backend, name, dtype):
    logits, labels = EXTREME_LOGITS[name]
    x = np.array(logits, dtype)
    labels = np.array(labels, np.int64)
    want_loss, want_probs = _sce_reference(x, labels)
    loss, probs = backend.softmax_cross_entropy_forward(backend.asarray(x), backend.asarray(labels))
    probs = _host(backend, probs)
    assert np.all(np.isfinite(probs)) and math.isfinite(loss), f"{name}: loss {loss}, probs {probs.tolist()}"
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert abs(loss - want_loss) <= tol * max(1.0, abs(want_loss)), f"{name}: loss {loss} != {want_loss}"
    np.testing.assert_allclose(probs, want_probs, rtol=tol, atol=tol, err_msg=name)
    dx = _host(backend, backend.softmax_cross_entropy_backward(backend.asarray(probs.astype(dtype)),
                                                               backend.asarray(labels)))
    onehot = np.eye(x.shape[1])[labels]
    np.testing.assert_allclose(dx, (want_probs - onehot) / len(x), rtol=tol, atol=tol, err_msg=name)
