"""Every forward pass against the direct-loop definitions in gpucnn.reference.

Two routes are checked on tiny, awkward shapes:
* the public layers (gpucnn.Conv2d, ...), in float64 (tight tolerance) and in
  the default float32;
* the backend primitives themselves (gpucnn.backends), on every backend that is
  present (the CUDA one is skipped, saying why, when it cannot be used).

A few hand-worked examples pin the reference itself, so that a bug shared by
the reference and the fast code cannot hide.
"""
import warnings

import numpy as np
import pytest

import gpucnn
from gpucnn import reference as R
from gpucnn.scalar import Scalar

F64 = dict(rtol=1e-12, atol=1e-12)
F32 = dict(rtol=2e-5, atol=2e-5)


def cpu64(layer):
    return layer.to(device="cpu", dtype=np.float64)


def case_id(case):
    return str(case).replace(" ", "")


def npy(a):
    return np.asarray(gpucnn.asnumpy(a))


# the `backend` fixture (NumPy, then each registry backend) is in tests/conftest.py


def pair(v):
    return R.pair(v)


# ---------------------------------------------------------------------------
# Hand-worked examples (they check the reference as much as the layers)
# ---------------------------------------------------------------------------

def test_conv2d_is_cross_correlation_hand_example():
    x = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], dtype=np.float64).reshape(1, 1, 3, 3)
    w = np.array([[1, 2], [3, 4]], dtype=np.float64).reshape(1, 1, 2, 2)
    # y[0,0] = 1*1 + 2*2 + 4*3 + 5*4 = 37 (no kernel flip); a flipped kernel would give 23
    expected = np.array([[37, 47], [67, 77]], dtype=np.float64).reshape(1, 1, 2, 2)
    np.testing.assert_array_equal(R.conv2d(x, w), expected)
    conv = cpu64(gpucnn.Conv2d(1, 1, 2, bias=False))
    conv.weight.data[...] = w
    np.testing.assert_allclose(npy(conv(x)), expected, **F64)


def test_avgpool_counts_padding_hand_example():
    x = np.ones((1, 1, 2, 2))
    expected = np.array([[0.25, 0.5, 0.25], [0.5, 1.0, 0.5], [0.25, 0.5, 0.25]]).reshape(1, 1, 3, 3)
    np.testing.assert_allclose(R.avgpool2d(x, 2, 1, 1), expected, **F64)
    np.testing.assert_allclose(npy(gpucnn.AvgPool2d(2, stride=1, padding=1)(x)), expected, **F64)


def test_maxpool_pads_with_minus_inf_hand_example():
    # all values negative: a zero padding would wrongly win at the borders
    x = -np.arange(1, 10, dtype=np.float64).reshape(1, 1, 3, 3)
    y, arg = R.maxpool2d(x, 2, 2, 1)
    np.testing.assert_array_equal(y, np.array([[-1, -2], [-4, -5]], dtype=np.float64).reshape(1, 1, 2, 2))
    np.testing.assert_array_equal(arg, np.array([[0, 1], [3, 4]]).reshape(1, 1, 2, 2))
    np.testing.assert_array_equal(npy(gpucnn.MaxPool2d(2, stride=2, padding=1)(x)), y)


def test_maxpool_tie_picks_first_in_row_major_order_hand_example():
    x = np.array([[1, 3], [3, 3]], dtype=np.float64).reshape(1, 1, 2, 2)
    y, arg = R.maxpool2d(x, 2)
    assert y.item() == 3 and arg.item() == 1  # (0,1) comes before (1,0) and (1,1)


def test_softmax_cross_entropy_hand_example():
    # uniform logits over K classes: loss = log K, grad = (1/K - onehot)/N
    loss, grad = R.softmax_cross_entropy(np.zeros((2, 4)), np.array([1, 3]))
    assert loss == pytest.approx(np.log(4), rel=1e-15)
    assert grad[0, 1] == pytest.approx((0.25 - 1) / 2) and grad[0, 0] == pytest.approx(0.125)


# ---------------------------------------------------------------------------
# Convolution
# ---------------------------------------------------------------------------

# (N, C, H, W, O, kernel, stride, padding)
CONV_CASES = [
    (1, 1, 5, 5, 1, 3, 1, 0),
    (2, 3, 7, 5, 4, (3, 2), (2, 1), (1, 0)),    # non-square kernel/stride/padding, non-square input
    (1, 2, 6, 6, 3, 3, 2, 1),                   # stride 2 + padding
    (3, 2, 4, 5, 2, 1, 1, 0),                   # kernel size 1
    (2, 1, 5, 7, 2, (2, 3), 2, (1, 2)),
    (1, 2, 3, 3, 2, 3, 1, 2),                   # padding bigger than half the kernel
    (2, 2, 5, 4, 3, 2, 3, 0),                   # stride bigger than the kernel (skips pixels)
    (2, 3, 3, 4, 2, (3, 4), 1, 0),              # kernel = whole input -> 1x1 output
    (1, 1, 1, 1, 2, 1, 1, 0),                   # 1x1 everything
]


def _conv_inputs(case, seed=0):
    N, C, H, W, O, k, s, p = case
    kh, kw = pair(k)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((O, C, kh, kw))
    b = rng.standard_normal(O)
    return x, w, b


@pytest.mark.parametrize("case", CONV_CASES, ids=case_id)
def test_conv2d_layer_float64(case):
    N, C, H, W, O, k, s, p = case
    x, _, _ = _conv_inputs(case)
    conv = cpu64(gpucnn.Conv2d(C, O, k, stride=s, padding=p, rng=np.random.default_rng(1)))
    w, b = npy(conv.weight.data), npy(conv.bias.data)
    assert w.shape == (O, C) + pair(k) and b.shape == (O,)
    y = conv(x)
    assert y.dtype == np.float64
    np.testing.assert_allclose(npy(y), R.conv2d(x, w, b, s, p), **F64)


@pytest.mark.parametrize("case", CONV_CASES[:4], ids=case_id)
def test_conv2d_layer_float32_default(case):
    N, C, H, W, O, k, s, p = case
    x, _, _ = _conv_inputs(case)
    x = x.astype(np.float32)
    conv = gpucnn.Conv2d(C, O, k, stride=s, padding=p).to(device="cpu")
    assert conv.dtype == np.float32 and conv.weight.data.dtype == np.float32
    y = conv(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(npy(y), R.conv2d(x, npy(conv.weight.data), npy(conv.bias.data), s, p), **F32)


def test_conv2d_without_bias():
    x, w, _ = _conv_inputs(CONV_CASES[1])
    conv = cpu64(gpucnn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=(1, 0), bias=False))
    assert conv.bias is None
    assert len(conv.parameters()) == 1
    np.testing.assert_allclose(npy(conv(x)), R.conv2d(x, npy(conv.weight.data), None, (2, 1), (1, 0)), **F64)


@pytest.mark.parametrize("case", CONV_CASES, ids=case_id)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_conv2d_primitives(backend, case, dtype):
    N, C, H, W, O, k, s, p = case
    x, w, b = (a.astype(dtype) for a in _conv_inputs(case))
    y = backend.conv2d_forward(backend.asarray(x), backend.asarray(w), pair(s), pair(p))
    y = backend.bias_forward(y, backend.asarray(b))
    y = backend.to_numpy(y)
    assert y.dtype == dtype
    np.testing.assert_allclose(y, R.conv2d(x, w, b, s, p), **(F64 if dtype == np.float64 else F32))


# ---------------------------------------------------------------------------
# Pooling
# ---------------------------------------------------------------------------

# (N, C, H, W, kernel, stride, padding)
POOL_CASES = [
    (1, 1, 4, 4, 2, None, 0),
    (2, 3, 5, 5, 3, 2, 1),                      # overlapping windows + padding
    (1, 2, 5, 7, (2, 3), (1, 2), (1, 1)),       # non-square everything
    (2, 1, 6, 5, 3, 1, 0),                      # stride 1, heavy overlap
    (1, 1, 3, 3, 1, 1, 0),                      # kernel 1
    (1, 2, 7, 7, 3, 3, 1),                      # odd sizes
    (2, 2, 5, 4, 2, 3, 1),                      # stride > kernel
    (1, 1, 5, 6, (3, 1), None, (1, 0)),         # default stride = non-square kernel
]


@pytest.mark.parametrize("case", POOL_CASES, ids=case_id)
@pytest.mark.parametrize("values", ["normal", "negative", "ties"])
def test_maxpool2d_layer(case, values):
    N, C, H, W, k, s, p = case
    rng = np.random.default_rng(3)
    if values == "normal":
        x = rng.standard_normal((N, C, H, W))
    elif values == "negative":
        x = -1.0 - rng.random((N, C, H, W))
    else:
        x = rng.integers(-1, 2, size=(N, C, H, W)).astype(np.float64)
    y_ref, _ = R.maxpool2d(x, k, s, p)
    y = gpucnn.MaxPool2d(k, stride=s, padding=p)(x)
    assert y.dtype == np.float64
    np.testing.assert_array_equal(npy(y), y_ref)   # max is exact
    y32 = gpucnn.MaxPool2d(k, stride=s, padding=p)(x.astype(np.float32))
    assert y32.dtype == np.float32
    np.testing.assert_array_equal(npy(y32), y_ref.astype(np.float32))


@pytest.mark.parametrize("case", POOL_CASES, ids=case_id)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_maxpool2d_primitive_with_argmax(backend, case, dtype):
    N, C, H, W, k, s, p = case
    rng = np.random.default_rng(4)
    x = rng.integers(-2, 3, size=(N, C, H, W)).astype(dtype)   # many ties
    kh, kw, sh, sw, ph, pw = (*pair(k), *pair(k if s is None else s), *pair(p))
    y, arg = backend.maxpool2d_forward(backend.asarray(x), (kh, kw), (sh, sw), (ph, pw))
    y, arg = backend.to_numpy(y), backend.to_numpy(arg)
    y_ref, arg_ref = R.maxpool2d(x, k, s, p)
    assert y.dtype == dtype
    assert np.issubdtype(arg.dtype, np.integer), arg.dtype
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(arg, arg_ref)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_maxpool2d_primitive_with_infinities(backend, dtype):
    # the primitive (not the layer, which rejects them) on +-inf: padding never wins,
    # a window of real -inf takes its first element, +inf wins like any maximum
    x = np.random.default_rng(23).standard_normal((1, 2, 5, 5)).astype(dtype)
    x[0, 0, :2, :2] = -np.inf
    x[0, 1, 3, 3] = np.inf
    x[0, 1, 0, :] = -np.inf
    for k, s, p in [((2, 2), (2, 2), (1, 1)), ((3, 3), (1, 1), (1, 1)), ((2, 3), (2, 1), (0, 1))]:
        y, arg = backend.maxpool2d_forward(backend.asarray(x), k, s, p)
        y_ref, arg_ref = R.maxpool2d(x, k, s, p)
        np.testing.assert_array_equal(backend.to_numpy(y), y_ref.astype(dtype), err_msg=str((k, s, p)))
        np.testing.assert_array_equal(backend.to_numpy(arg), arg_ref, err_msg=str((k, s, p)))


@pytest.mark.parametrize("case", POOL_CASES, ids=case_id)
def test_avgpool2d_layer(case):
    N, C, H, W, k, s, p = case
    x = np.random.default_rng(5).standard_normal((N, C, H, W))
    y = gpucnn.AvgPool2d(k, stride=s, padding=p)(x)
    assert y.dtype == np.float64
    np.testing.assert_allclose(npy(y), R.avgpool2d(x, k, s, p), **F64)
    y32 = gpucnn.AvgPool2d(k, stride=s, padding=p)(x.astype(np.float32))
    assert y32.dtype == np.float32
    np.testing.assert_allclose(npy(y32), R.avgpool2d(x.astype(np.float32), k, s, p), **F32)


@pytest.mark.parametrize("case", POOL_CASES, ids=case_id)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_avgpool2d_primitive(backend, case, dtype):
    N, C, H, W, k, s, p = case
    x = np.random.default_rng(6).standard_normal((N, C, H, W)).astype(dtype)
    y = backend.avgpool2d_forward(backend.asarray(x), pair(k), pair(k if s is None else s), pair(p))
    y = backend.to_numpy(y)
    assert y.dtype == dtype
    np.testing.assert_allclose(y, R.avgpool2d(x, k, s, p), **(F64 if dtype == np.float64 else F32))


@pytest.mark.parametrize("pool", [gpucnn.MaxPool2d, gpucnn.AvgPool2d])
def test_pool_output_size_formula(pool):
    # floor((H + 2p - k)/s) + 1, stride defaults to the kernel size
    x = np.zeros((1, 1, 11, 8))
    assert pool(3)(x).shape == (1, 1, 3, 2)
    assert pool(3, stride=2, padding=1)(x).shape == (1, 1, 6, 4)
    assert pool((2, 3), stride=(3, 2))(x).shape == (1, 1, 4, 3)


# ---------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------

ACTS = [
    (gpucnn.Sigmoid, R.sigmoid, "sigmoid_forward"),
    (gpucnn.ReLU, R.relu, "relu_forward"),
    (gpucnn.Tanh, R.tanh, "tanh_forward"),
]


def _act_input(shape=(2, 3, 4, 5)):
    x = np.random.default_rng(7).standard_normal(shape) * 3
    flat = x.reshape(-1)
    flat[:6] = [0.0, -1000.0, 1000.0, 745.0, -745.0, 1e-300]   # extremes and exact zero
    return x


@pytest.mark.parametrize("layer, ref, _", ACTS, ids=lambda v: getattr(v, "__name__", ""))
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 7)])
def test_activation_layer(layer, ref, _, shape):
    x = _act_input(shape)
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")     # a stable sigmoid warns about nothing at +-1000
        y = layer()(x)
        y32 = layer()(x.astype(np.float32))
    assert y.dtype == np.float64 and y.shape == x.shape
    np.testing.assert_allclose(npy(y), ref(x), **F64)
    assert y32.dtype == np.float32
    np.testing.assert_allclose(npy(y32), ref(x.astype(np.float32)), **F32)
    assert np.all(np.isfinite(npy(y32)))


@pytest.mark.parametrize("_, ref, prim", ACTS, ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_activation_primitive(backend, _, ref, prim, dtype):
    x = _act_input().astype(dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y = backend.to_numpy(getattr(backend, prim)(backend.asarray(x)))
    assert y.dtype == dtype
    np.testing.assert_allclose(y, ref(x), **(F64 if dtype == np.float64 else F32))


# ---------------------------------------------------------------------------
# Linear, Flatten, Sequential
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("N, I, O", [(1, 3, 2), (4, 5, 3), (2, 1, 1), (3, 7, 10)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_layer(N, I, O, bias):
    x = np.random.default_rng(8).standard_normal((N, I))
    lin = cpu64(gpucnn.Linear(I, O, bias=bias, rng=np.random.default_rng(9)))
    w = npy(lin.weight.data)
    assert w.shape == (O, I)
    b = npy(lin.bias.data) if bias else None
    if not bias:
        assert lin.bias is None
    y = lin(x)
    assert y.dtype == np.float64 and y.shape == (N, O)
    np.testing.assert_allclose(npy(y), R.linear(x, w, b), **F64)
    lin32 = gpucnn.Linear(I, O, bias=bias).to(device="cpu")
    y32 = lin32(x.astype(np.float32))
    assert y32.dtype == np.float32
    b32 = npy(lin32.bias.data) if bias else None
    np.testing.assert_allclose(npy(y32), R.linear(x.astype(np.float32), npy(lin32.weight.data), b32), **F32)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_linear_and_bias_primitives(backend, dtype):
    rng = np.random.default_rng(10)
    x, w, b = rng.standard_normal((3, 5)), rng.standard_normal((4, 5)), rng.standard_normal(4)
    x, w, b = x.astype(dtype), w.astype(dtype), b.astype(dtype)
    y = backend.linear_forward(backend.asarray(x), backend.asarray(w))
    y = backend.to_numpy(backend.bias_forward(y, backend.asarray(b)))
    assert y.dtype == dtype
    np.testing.assert_allclose(y, R.linear(x, w, b), **(F64 if dtype == np.float64 else F32))


def test_flatten_layer():
    x = np.random.default_rng(11).standard_normal((2, 3, 2, 4))
    y = gpucnn.Flatten()(x)
    assert y.shape == (2, 24)
    np.testing.assert_array_equal(npy(y), x.reshape(2, 24))   # C-order: c, then h, then w


def test_sequential_forward_is_the_chain_of_references():
    rng = np.random.default_rng(12)
    net = cpu64(gpucnn.Sequential(
        gpucnn.Conv2d(2, 3, 3, padding=1, rng=rng), gpucnn.ReLU(), gpucnn.MaxPool2d(2),
        gpucnn.Conv2d(3, 2, (2, 1), stride=(1, 2), rng=rng), gpucnn.Tanh(), gpucnn.AvgPool2d(1),
        gpucnn.Flatten(), gpucnn.Linear(2 * 2 * 2, 3, rng=rng), gpucnn.Sigmoid(),
    ))
    assert len(net) == 9
    assert isinstance(net[0], gpucnn.Conv2d) and isinstance(net[-1], gpucnn.Sigmoid)
    assert [type(m).__name__ for m in net][:3] == ["Conv2d", "ReLU", "MaxPool2d"]
    x = rng.standard_normal((2, 2, 6, 7))
    h = R.conv2d(x, npy(net[0].weight.data), npy(net[0].bias.data), 1, 1)
    h = R.relu(h)
    h, _ = R.maxpool2d(h, 2)
    h = R.conv2d(h, npy(net[3].weight.data), npy(net[3].bias.data), (1, 2), 0)
    h = R.tanh(h)
    h = R.avgpool2d(h, 1)
    h = h.reshape(2, -1)
    h = R.linear(h, npy(net[7].weight.data), npy(net[7].bias.data))
    expected = R.sigmoid(h)
    np.testing.assert_allclose(npy(net(x)), expected, **F64)


# ---------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("N, K", [(1, 2), (4, 3), (5, 10)])
def test_cross_entropy_loss(N, K):
    rng = np.random.default_rng(13)
    logits = rng.standard_normal((N, K)) * 2
    labels = rng.integers(0, K, size=N)
    loss = gpucnn.CrossEntropyLoss()(logits, labels)
    assert isinstance(loss, Scalar) and type(float(loss)) is float
    ref_loss, _ = R.softmax_cross_entropy(logits, labels)
    assert loss == pytest.approx(ref_loss, rel=1e-12, abs=1e-14)
    # softmax is shift invariant; a fused, stable implementation survives +1000
    assert gpucnn.CrossEntropyLoss()(logits + 1000.0, labels) == pytest.approx(ref_loss, rel=1e-9)
    loss32 = gpucnn.CrossEntropyLoss()(logits.astype(np.float32), labels)
    assert isinstance(loss32, Scalar)
    # float32 log-sum-exp is accurate to ~1e-7 absolute (1 + tiny rounds), so an absolute bound too
    assert loss32 == pytest.approx(R.softmax_cross_entropy(logits.astype(np.float32), labels)[0], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("shape", [(1, 1), (4, 3), (2, 3, 2, 2)])
def test_mse_loss(shape):
    rng = np.random.default_rng(14)
    y, t = rng.standard_normal(shape), rng.standard_normal(shape)
    loss = gpucnn.MSELoss()(y, t)
    assert isinstance(loss, Scalar) and type(float(loss)) is float
    assert loss == pytest.approx(R.mse(y, t)[0], rel=1e-12)
    assert gpucnn.MSELoss()(y.astype(np.float32), t.astype(np.float32)) == pytest.approx(R.mse(y, t)[0], rel=1e-5)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_loss_primitives(backend, dtype):
    rng = np.random.default_rng(15)
    logits = rng.standard_normal((4, 5)).astype(dtype)
    labels = np.array([0, 4, 2, 2], dtype=np.int64)
    loss, probs = backend.softmax_cross_entropy_forward(backend.asarray(logits), backend.asarray(labels))
    ref_loss, ref_grad = R.softmax_cross_entropy(logits, labels)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert float(loss) == pytest.approx(ref_loss, rel=tol)
    probs = backend.to_numpy(probs)
    assert probs.dtype == dtype
    onehot = np.eye(5)[labels]
    np.testing.assert_allclose(probs, ref_grad * 4 + onehot, rtol=tol, atol=tol)
    y, t = rng.standard_normal((3, 4)).astype(dtype), rng.standard_normal((3, 4)).astype(dtype)
    assert float(backend.mse_forward(backend.asarray(y), backend.asarray(t))) == pytest.approx(R.mse(y, t)[0], rel=tol)


# ---------------------------------------------------------------------------
# Inputs the user may hand over: views, non-contiguous arrays; never modified
# ---------------------------------------------------------------------------

def _layers_for_views():
    return [
        cpu64(gpucnn.Conv2d(3, 2, 3, padding=1, rng=np.random.default_rng(16))),
        gpucnn.MaxPool2d(2), gpucnn.AvgPool2d(3, stride=2, padding=1),
        gpucnn.ReLU(), gpucnn.Sigmoid(), gpucnn.Tanh(), gpucnn.Flatten(),
    ]


@pytest.mark.parametrize("view", ["flip", "slice", "fortran", "transpose"])
def test_layers_accept_non_contiguous_inputs(view):
    base = np.random.default_rng(17).standard_normal((2, 3, 8, 10))
    x = {"flip": lambda: np.flip(base, axis=3), "slice": lambda: base[:, :, ::2, 1:],
         "fortran": lambda: np.asfortranarray(base), "transpose": lambda: base.transpose(0, 1, 3, 2)}[view]()
    xc = np.ascontiguousarray(x)
    for layer in _layers_for_views():
        y = npy(layer(x))
        name = type(layer).__name__
        np.testing.assert_array_equal(y, npy(layer(xc)), err_msg=name)
        dy = np.random.default_rng(18).standard_normal(y.shape)
        layer(x)
        dx = npy(layer.backward(dy))
        layer(xc)
        np.testing.assert_allclose(dx, npy(layer.backward(dy)), rtol=1e-14, atol=1e-14, err_msg=name)
    lin = cpu64(gpucnn.Linear(4, 3))
    xl = np.random.default_rng(19).standard_normal((4, 5)).T[:, :4]
    np.testing.assert_allclose(npy(lin(xl)), npy(lin(np.ascontiguousarray(xl))), rtol=1e-14)


def test_forward_and_backward_leave_their_arguments_unchanged():
    rng = np.random.default_rng(20)
    net = cpu64(gpucnn.Sequential(
        gpucnn.Conv2d(2, 3, 3, padding=1, rng=rng), gpucnn.Sigmoid(), gpucnn.MaxPool2d(2),
        gpucnn.Tanh(), gpucnn.AvgPool2d(1), gpucnn.ReLU(), gpucnn.Flatten(), gpucnn.Linear(12, 2, rng=rng)))
    x = rng.standard_normal((2, 2, 4, 4))
    x0 = x.copy()
    y = npy(net(x)).copy()
    np.testing.assert_array_equal(x, x0)
    dy = rng.standard_normal(y.shape)
    dy0 = dy.copy()
    net.backward(dy)
    np.testing.assert_array_equal(dy, dy0)
    np.testing.assert_array_equal(npy(net(x)), y)      # and a second forward gives the same output
    for layer in (gpucnn.Sigmoid(), gpucnn.ReLU(), gpucnn.Tanh()):
        g = rng.standard_normal(x.shape)
        g0 = g.copy()
        layer(x)
        layer.backward(g)
        np.testing.assert_array_equal(x, x0, err_msg=type(layer).__name__)
        np.testing.assert_array_equal(g, g0, err_msg=type(layer).__name__)


def test_sequential_slicing():
    net = gpucnn.Sequential(gpucnn.Flatten(), gpucnn.Linear(4, 3), gpucnn.ReLU(), gpucnn.Linear(3, 2))
    head = net[:2]
    assert isinstance(head, gpucnn.Sequential) and len(head) == 2
    assert head[1] is net[1]
    x = np.random.default_rng(21).standard_normal((2, 1, 2, 2)).astype(np.float32)
    np.testing.assert_array_equal(npy(head(x)), npy(net[1](net[0](x))))



def test_kernel_stride_padding_accept_lists_and_numpy_ints():
    x = np.random.default_rng(22).standard_normal((1, 2, 6, 5))
    a = cpu64(gpucnn.Conv2d(2, 3, [3, 2], stride=[2, 1], padding=[1, 0], rng=np.random.default_rng(1)))
    b = cpu64(gpucnn.Conv2d(2, 3, (np.int64(3), 2), stride=(2, np.int32(1)), padding=(1, 0),
                            rng=np.random.default_rng(1)))
    np.testing.assert_array_equal(npy(a(x)), npy(b(x)))
    np.testing.assert_allclose(npy(a(x)), R.conv2d(x, npy(a.weight.data), npy(a.bias.data), (2, 1), (1, 0)), **F64)
    np.testing.assert_array_equal(npy(gpucnn.MaxPool2d([3, 2], stride=[1, 2])(x)), R.maxpool2d(x, (3, 2), (1, 2))[0])
