"""Every layer's backward against central finite differences, in float64.

For a layer f and a fixed random tensor R of the output's shape we take the
scalar L(x, theta) = sum(f(x; theta) * R).  Then dL/dy = R, so
``f.backward(R)`` must return dL/dx and fill every parameter's ``.grad`` with
dL/dtheta.  Each is compared with
    (L(x + eps e_i) - L(x - eps e_i)) / (2 eps)
element by element; the relative error ||analytic - numeric|| / ||numeric||
must be below 1e-6.

Inputs are drawn away from the kinks (ReLU near 0, near-ties in max pooling)
so that the finite differences are well defined; exact ties in max pooling are
checked separately and explicitly: the gradient goes to the first maximum in
row-major window order.

The backward *primitives* are also compared with the loop definitions in
gpucnn.reference (themselves checked against finite differences here).
"""
import numpy as np
import pytest

import gpucnn
from gpucnn import reference as R

EPS = 1e-6
TOL = 1e-6


def case_id(case):
    return str(case).replace(" ", "")


def npy(a):
    return np.array(gpucnn.asnumpy(a), dtype=np.float64)


def cpu64(m):
    return m.to(device="cpu", dtype=np.float64)


def rel_err(a, n):
    a, n = np.asarray(a, dtype=np.float64), np.asarray(n, dtype=np.float64)
    assert a.shape == n.shape, (a.shape, n.shape)
    denom = max(np.linalg.norm(n), np.linalg.norm(a))
    if denom == 0:
        return 0.0
    return float(np.linalg.norm(a - n) / denom)


def numeric_grad(fn, arr):
    """Central differences of the scalar fn() w.r.t. every element of arr (perturbed in place)."""
    g = np.zeros(arr.shape)
    for idx in np.ndindex(arr.shape):
        old = float(arr[idx])
        arr[idx] = old + EPS
        fp = fn()
        arr[idx] = old - EPS
        fm = fn()
        arr[idx] = old
        g[idx] = (fp - fm) / (2 * EPS)
    return g


def gradcheck_module(m, x, seed=0, to_device=None):
    """Check m.backward against finite differences for x and every parameter.

    By default m is put on the CPU in float64.  ``to_device`` (host array ->
    device array) is given when the caller has already placed m elsewhere.
    """
    if to_device is None:
        m = cpu64(m)
        to_device = lambda a: a   # noqa: E731
    x = np.array(x, dtype=np.float64)
    y = m(to_device(x))
    Rproj = np.random.default_rng(seed).standard_normal(np.shape(y))
    m.zero_grad()
    for p in m.parameters():
        assert p.grad is None or not np.any(npy(p.grad)), "zero_grad left a gradient"
    dx = m.backward(to_device(Rproj.copy()))
    assert np.shape(dx) == x.shape, (np.shape(dx), x.shape)
    assert gpucnn.asnumpy(dx).dtype == np.float64
    analytic = {"input": npy(dx)}
    for name, p in m.named_parameters():
        assert p.grad is not None, f"{name}.grad is None after backward"
        assert np.shape(p.grad) == np.shape(p.data), name
        assert gpucnn.asnumpy(p.grad).dtype == np.float64, name
        analytic[name] = npy(p.grad)

    def loss():
        return float(np.sum(npy(m(to_device(x))) * Rproj))

    numeric = {"input": numeric_grad(loss, x)}
    for name, p in m.named_parameters():
        numeric[name] = numeric_grad(loss, p.data)       # perturbs the parameter in place
    for name in analytic:
        err = rel_err(analytic[name], numeric[name])
        assert err < TOL, f"{type(m).__name__} grad of {name}: relative error {err:.3g}"
    # a vacuous check (all-zero gradients) must not pass silently
    assert np.any(numeric["input"] != 0) or not x.size
    return analytic


# ---------------------------------------------------------------------------
# Conv2d
# ---------------------------------------------------------------------------

# (N, C, H, W, O, kernel, stride, padding)
CONV_CASES = [
    (2, 2, 5, 5, 3, 3, 1, 0),
    (1, 2, 6, 6, 2, 3, 2, 1),                   # stride 2 + padding, batch 1
    (2, 3, 7, 5, 2, (3, 2), (2, 1), (1, 0)),    # non-square input/kernel/stride/padding
    (2, 3, 4, 5, 2, 1, 1, 0),                   # kernel size 1
    (1, 1, 6, 7, 2, 3, 2, 0),                   # stride leaves the last row/col unused (grad 0 there)
    (2, 2, 5, 3, 1, (2, 3), 1, (2, 1)),         # padding larger than half the kernel
    (1, 2, 5, 5, 2, 2, 3, 1),                   # stride larger than the kernel
]


@pytest.mark.parametrize("case", CONV_CASES, ids=case_id)
def test_conv2d_gradcheck(case):
    N, C, H, W, O, k, s, p = case
    rng = np.random.default_rng(20)
    conv = gpucnn.Conv2d(C, O, k, stride=s, padding=p, rng=rng)
    grads = gradcheck_module(conv, rng.standard_normal((N, C, H, W)))
    assert set(grads) == {"input", "weight", "bias"}


def test_conv2d_gradcheck_no_bias():
    rng = np.random.default_rng(21)
    conv = gpucnn.Conv2d(2, 3, (2, 3), stride=(1, 2), padding=(1, 1), bias=False, rng=rng)
    grads = gradcheck_module(conv, rng.standard_normal((2, 2, 4, 5)))
    assert set(grads) == {"input", "weight"}


def test_conv2d_unused_pixels_get_zero_gradient():
    # H=6, k=3, s=2: output rows read input rows 0..4, so row 5 gets no gradient
    conv = cpu64(gpucnn.Conv2d(1, 1, 3, stride=2, rng=np.random.default_rng(0)))
    conv(np.random.default_rng(1).standard_normal((1, 1, 6, 6)))
    dx = npy(conv.backward(np.ones((1, 1, 2, 2))))
    assert np.all(dx[..., 5, :] == 0) and np.all(dx[..., :, 5] == 0)
    assert np.count_nonzero(dx[..., :5, :5]) == 25


# ---------------------------------------------------------------------------
# Pooling
# ---------------------------------------------------------------------------

# (N, C, H, W, kernel, stride, padding)
POOL_CASES = [
    (2, 2, 4, 4, 2, None, 0),
    (1, 2, 5, 5, 3, 2, 1),                      # overlapping windows + padding, batch 1
    (2, 1, 5, 7, (2, 3), (1, 2), (1, 1)),       # non-square
    (1, 3, 6, 5, 3, 1, 0),                      # stride 1, heavy overlap
    (2, 1, 3, 3, 1, 1, 0),                      # kernel 1
    (1, 2, 7, 7, 3, 3, 1),                      # odd sizes
    (2, 2, 5, 4, 2, 3, 1),                      # stride > kernel (some inputs unused)
]


def _distinct_input(shape, seed):
    """Values that differ pairwise by >= 1e-2 >> EPS: max pooling is smooth there."""
    rng = np.random.default_rng(seed)
    vals = rng.permutation(np.prod(shape)).astype(np.float64) * 1e-2 - 0.3
    return vals.reshape(shape)


@pytest.mark.parametrize("case", POOL_CASES, ids=case_id)
def test_maxpool2d_gradcheck(case):
    N, C, H, W, k, s, p = case
    gradcheck_module(gpucnn.MaxPool2d(k, stride=s, padding=p), _distinct_input((N, C, H, W), 22))


@pytest.mark.parametrize("case", POOL_CASES, ids=case_id)
def test_avgpool2d_gradcheck(case):
    N, C, H, W, k, s, p = case
    gradcheck_module(gpucnn.AvgPool2d(k, stride=s, padding=p),
                     np.random.default_rng(23).standard_normal((N, C, H, W)))


def test_maxpool2d_ties_send_gradient_to_first_max_hand_example():
    # every element ties; windows 2x2 stride 1 overlap.  Each window's first max in
    # row-major order is its top-left element, so dx[i, j] = dy[i, j] for i, j < 2.
    pool = gpucnn.MaxPool2d(2, stride=1)
    x = np.full((1, 1, 3, 3), 7.0)
    assert pool(x).shape == (1, 1, 2, 2)
    dy = np.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
    dx = npy(pool.backward(dy))
    expected = np.array([[1, 2, 0], [3, 4, 0], [0, 0, 0]], dtype=np.float64).reshape(1, 1, 3, 3)
    np.testing.assert_array_equal(dx, expected)


def test_maxpool2d_partial_tie_hand_example():
    # window [[1, 5], [5, 5]]: the first 5 in row-major order is (0, 1)
    pool = gpucnn.MaxPool2d(2)
    x = np.array([[1, 5, 0, 0], [5, 5, 2, 2]], dtype=np.float64).reshape(1, 1, 2, 4)
    pool(x)
    dx = npy(pool.backward(np.array([[[[10.0, 20.0]]]])))
    # second window [[0, 0], [2, 2]]: first max is (1, 2)
    expected = np.array([[0, 10, 0, 0], [0, 0, 20, 0]], dtype=np.float64).reshape(1, 1, 2, 4)
    np.testing.assert_array_equal(dx, expected)


@pytest.mark.parametrize("case", POOL_CASES, ids=case_id)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_maxpool2d_ties_match_reference(case, dtype):
    N, C, H, W, k, s, p = case
    x = np.random.default_rng(24).integers(0, 2, size=(N, C, H, W)).astype(dtype)   # ties everywhere
    pool = gpucnn.MaxPool2d(k, stride=s, padding=p)
    y = pool(x)
    dy = np.random.default_rng(25).standard_normal(np.shape(y)).astype(dtype)
    dx = gpucnn.asnumpy(pool.backward(dy))
    assert dx.dtype == dtype
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(dx, R.maxpool2d_backward(dy, x, k, s, p), rtol=tol, atol=tol)


# ---------------------------------------------------------------------------
# Activations, Linear, Flatten
# ---------------------------------------------------------------------------

def _away_from_zero(shape, seed):
    x = np.random.default_rng(seed).standard_normal(shape) * 2
    x[np.abs(x) < 1e-2] = 0.5          # ReLU's kink at 0 makes finite differences ill-defined
    return x


@pytest.mark.parametrize("layer", [gpucnn.Sigmoid, gpucnn.ReLU, gpucnn.Tanh], ids=lambda c: c.__name__)
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 7), (3, 1, 1, 1)])
def test_activation_gradcheck(layer, shape):
    gradcheck_module(layer(), _away_from_zero(shape, 26))


@pytest.mark.parametrize("N, I, O", [(1, 3, 2), (4, 5, 3), (3, 1, 1), (2, 7, 10)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_gradcheck(N, I, O, bias):
    rng = np.random.default_rng(27)
    grads = gradcheck_module(gpucnn.Linear(I, O, bias=bias, rng=rng), rng.standard_normal((N, I)))
    assert set(grads) == ({"input", "weight", "bias"} if bias else {"input", "weight"})


def test_flatten_gradcheck():
    gradcheck_module(gpucnn.Flatten(), np.random.default_rng(28).standard_normal((2, 3, 2, 3)))


def _unit_scale_parameters(net, rng):
    """Draw every parameter from N(0, 1).  With PyTorch's small default init a deep
    stack of squashing layers has gradients of ~1e-5 while the loss is ~1, and the
    rounding error of the finite differences (~1e-16 |L| / eps) is then no longer
    negligible against them; unit-scale weights keep every gradient O(0.01..1)."""
    for p in net.parameters():
        p.data[...] = rng.standard_normal(p.data.shape)
    return net


def test_sequential_gradcheck_all_layers():
    rng = np.random.default_rng(29)
    net = gpucnn.Sequential(
        gpucnn.Conv2d(2, 3, 3, padding=1, rng=rng), gpucnn.Tanh(), gpucnn.MaxPool2d(3, stride=2, padding=1),
        gpucnn.Conv2d(3, 2, (2, 1), stride=(1, 2), rng=rng), gpucnn.Sigmoid(), gpucnn.AvgPool2d(2, stride=1),
        gpucnn.Flatten(), gpucnn.Linear(2 * 1 * 1, 4, rng=rng), gpucnn.ReLU(), gpucnn.Linear(4, 3, rng=rng),
    )
    _unit_scale_parameters(net.to(dtype=np.float64), rng)
    x = rng.standard_normal((2, 2, 6, 7))
    grads = gradcheck_module(net, x)
    assert {"0.weight", "0.bias", "3.weight", "3.bias", "7.weight", "7.bias", "9.weight", "9.bias"} <= set(grads)


# ---------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("N, K", [(1, 2), (4, 3), (3, 10)])
def test_cross_entropy_backward_gradcheck(N, K):
    rng = np.random.default_rng(30)
    logits = rng.standard_normal((N, K)) * 2
    labels = rng.integers(0, K, size=N)
    fn = gpucnn.CrossEntropyLoss()
    fn(logits, labels)
    g = fn.backward()
    assert gpucnn.asnumpy(g).dtype == np.float64 and np.shape(g) == (N, K)
    num = numeric_grad(lambda: gpucnn.CrossEntropyLoss()(logits, labels), logits)
    assert rel_err(npy(g), num) < TOL
    np.testing.assert_allclose(npy(g), R.softmax_cross_entropy(logits, labels)[1], rtol=1e-12, atol=1e-14)
    fn(logits.astype(np.float32), labels)
    assert gpucnn.asnumpy(fn.backward()).dtype == np.float32


@pytest.mark.parametrize("shape", [(1, 1), (4, 3), (2, 3, 2, 2)])
def test_mse_backward_gradcheck(shape):
    rng = np.random.default_rng(31)
    y, t = rng.standard_normal(shape), rng.standard_normal(shape)
    fn = gpucnn.MSELoss()
    fn(y, t)
    g = fn.backward()
    assert gpucnn.asnumpy(g).dtype == np.float64 and np.shape(g) == shape
    num = numeric_grad(lambda: gpucnn.MSELoss()(y, t), y)
    assert rel_err(npy(g), num) < TOL
    np.testing.assert_allclose(npy(g), R.mse(y, t)[1], rtol=1e-12, atol=1e-14)
    fn(y.astype(np.float32), t.astype(np.float32))
    assert gpucnn.asnumpy(fn.backward()).dtype == np.float32


# ---------------------------------------------------------------------------
# The reference backward functions themselves, against finite differences
# ---------------------------------------------------------------------------

def _ref_fd(forward, backward_grads, inputs, seed=0):
    """forward(*inputs) -> y; backward_grads(dy) -> tuple of grads matching inputs."""
    y = forward(*inputs)
    Rproj = np.random.default_rng(seed).standard_normal(y.shape)
    grads = backward_grads(Rproj)
    for arr, g in zip(inputs, grads):
        num = numeric_grad(lambda: float(np.sum(forward(*inputs) * Rproj)), arr)
        assert rel_err(g, num) < TOL


def test_reference_backwards_match_finite_differences():
    rng = np.random.default_rng(32)
    x, w, b = rng.standard_normal((1, 2, 5, 4)), rng.standard_normal((2, 2, 3, 2)), rng.standard_normal(2)
    _ref_fd(lambda x, w, b: R.conv2d(x, w, b, (2, 1), (1, 1)),
            lambda dy: R.conv2d_backward(dy, x, w, (2, 1), (1, 1)), [x, w, b])
    xp = _distinct_input((1, 2, 5, 5), 33)
    _ref_fd(lambda x: R.maxpool2d(x, 3, 2, 1)[0], lambda dy: (R.maxpool2d_backward(dy, xp, 3, 2, 1),), [xp])
    xa = rng.standard_normal((1, 2, 5, 4))
    _ref_fd(lambda x: R.avgpool2d(x, (3, 2), (1, 2), (1, 1)),
            lambda dy: (R.avgpool2d_backward(dy, xa.shape, (3, 2), (1, 2), (1, 1)),), [xa])
    xs = _away_from_zero((3, 4), 34)
    for f, fb in [(R.sigmoid, R.sigmoid_backward), (R.relu, R.relu_backward), (R.tanh, R.tanh_backward)]:
        _ref_fd(f, lambda dy: (fb(dy, xs),), [xs])
    xl, wl, bl = rng.standard_normal((3, 4)), rng.standard_normal((2, 4)), rng.standard_normal(2)
    _ref_fd(R.linear, lambda dy: R.linear_backward(dy, xl, wl), [xl, wl, bl])
    z, lab = rng.standard_normal((3, 4)), np.array([0, 3, 1])
    num = numeric_grad(lambda: R.softmax_cross_entropy(z, lab)[0], z)
    assert rel_err(R.softmax_cross_entropy(z, lab)[1], num) < TOL
    yy, tt = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    assert rel_err(R.mse(yy, tt)[1], numeric_grad(lambda: R.mse(yy, tt)[0], yy)) < TOL


# ---------------------------------------------------------------------------
# Backward primitives against the reference, on every backend present
# ---------------------------------------------------------------------------

# the `backend` fixture (NumPy, then each registry backend) is in tests/conftest.py


def _tol(dtype):
    return dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("case", CONV_CASES, ids=case_id)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_conv2d_backward_primitives(backend, case, dtype):
    N, C, H, W, O, k, s, p = case
    rng = np.random.default_rng(35)
    kh, kw = R.pair(k)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((O, C, kh, kw)).astype(dtype)
    Ho, Wo = R.pool_out_size(H, kh, R.pair(s)[0], R.pair(p)[0]), R.pool_out_size(W, kw, R.pair(s)[1], R.pair(p)[1])
    dy = rng.standard_normal((N, O, Ho, Wo)).astype(dtype)
    dx_ref, dw_ref, db_ref = R.conv2d_backward(dy, x, w, s, p)
    a = backend.asarray
    dx = backend.to_numpy(backend.conv2d_backward_data(a(dy), a(w), x.shape, R.pair(s), R.pair(p)))
    dw = backend.to_numpy(backend.conv2d_backward_weight(a(dy), a(x), w.shape, R.pair(s), R.pair(p)))
    db = backend.to_numpy(backend.bias_backward(a(dy)))
    for got, ref in [(dx, dx_ref), (dw, dw_ref), (db, db_ref)]:
        assert got.dtype == dtype
        np.testing.assert_allclose(got, ref, **_tol(dtype))


@pytest.mark.parametrize("case", POOL_CASES, ids=case_id)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_pool_backward_primitives(backend, case, dtype):
    N, C, H, W, k, s, p = case
    kk, ss, pp = R.pair(k), R.pair(k if s is None else s), R.pair(p)
    x = np.random.default_rng(36).integers(-1, 2, size=(N, C, H, W)).astype(dtype)
    y, arg = backend.maxpool2d_forward(backend.asarray(x), kk, ss, pp)
    dy = np.random.default_rng(37).standard_normal(backend.to_numpy(y).shape).astype(dtype)
    dx = backend.to_numpy(backend.maxpool2d_backward(backend.asarray(dy), arg, x.shape, kk, ss, pp))
    assert dx.dtype == dtype
    np.testing.assert_allclose(dx, R.maxpool2d_backward(dy, x, k, s, p), **_tol(dtype))
    dxa = backend.to_numpy(backend.avgpool2d_backward(backend.asarray(dy), x.shape, kk, ss, pp))
    assert dxa.dtype == dtype
    np.testing.assert_allclose(dxa, R.avgpool2d_backward(dy, x.shape, k, s, p), **_tol(dtype))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_activation_and_linear_backward_primitives(backend, dtype):
    rng = np.random.default_rng(38)
    x = _away_from_zero((2, 3, 4), 39).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    a = backend.asarray
    for name, ref in [("sigmoid", R.sigmoid_backward), ("relu", R.relu_backward), ("tanh", R.tanh_backward)]:
        y = getattr(backend, name + "_forward")(a(x))
        got = backend.to_numpy(getattr(backend, name + "_backward")(a(dy), y))
        assert got.dtype == dtype, name
        np.testing.assert_allclose(got, ref(dy, x), err_msg=name, **_tol(dtype))
    xl, wl = rng.standard_normal((3, 4)).astype(dtype), rng.standard_normal((5, 4)).astype(dtype)
    dyl = rng.standard_normal((3, 5)).astype(dtype)
    dx_ref, dw_ref, db_ref = R.linear_backward(dyl, xl, wl)
    np.testing.assert_allclose(backend.to_numpy(backend.linear_backward_data(a(dyl), a(wl))), dx_ref, **_tol(dtype))
    np.testing.assert_allclose(backend.to_numpy(backend.linear_backward_weight(a(dyl), a(xl))), dw_ref, **_tol(dtype))
    np.testing.assert_allclose(backend.to_numpy(backend.bias_backward(a(dyl))), db_ref, **_tol(dtype))
    labels = np.array([2, 0, 4], dtype=np.int64)
    _, probs = backend.softmax_cross_entropy_forward(a(dyl), a(labels))
    g = backend.to_numpy(backend.softmax_cross_entropy_backward(probs, a(labels)))
    assert g.dtype == dtype
    np.testing.assert_allclose(g, R.softmax_cross_entropy(dyl, labels)[1], **_tol(dtype))
    g = backend.to_numpy(backend.mse_backward(a(xl), a(wl[:3])))
    np.testing.assert_allclose(g, R.mse(xl, wl[:3])[1], **_tol(dtype))


# ---------------------------------------------------------------------------
# The same finite-difference check through the other backends (CUDA; the CPU
# emulator of the CUDA kernels), so their backward is checked against the
# definition of a derivative, not only against the NumPy backend
# ---------------------------------------------------------------------------

def _all_layers_net(rng):
    return gpucnn.Sequential(
        gpucnn.Conv2d(2, 3, (3, 2), stride=(2, 1), padding=1, rng=rng), gpucnn.Tanh(),
        gpucnn.MaxPool2d(3, stride=2, padding=1), gpucnn.Conv2d(3, 2, 1, rng=rng), gpucnn.Sigmoid(),
        gpucnn.AvgPool2d((1, 2), stride=1, padding=(0, 1)), gpucnn.Flatten(), gpucnn.Linear(2 * 2 * 5, 3, rng=rng),
        gpucnn.ReLU(), gpucnn.Linear(3, 2, rng=rng),
    )


def test_sequential_gradcheck_on_other_backends(other_backend, backend_entry):
    from gpucnn.backends import override_backend
    rng = np.random.default_rng(40)
    net = _unit_scale_parameters(_all_layers_net(rng).to(dtype=np.float64), rng)
    x = rng.standard_normal((1, 2, 5, 6))      # small: every element costs two forward passes
    if backend_entry.device is not None:
        net.to(device=backend_entry.device)
        assert net.device == other_backend.name
        gradcheck_module(net, x, to_device=other_backend.asarray)
    else:
        with override_backend(other_backend):
            gradcheck_module(net, x, to_device=lambda a: a)
