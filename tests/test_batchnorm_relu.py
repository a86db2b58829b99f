"""Batch norm + ReLU in one primitive call: ``batchnorm_forward(..., act="relu")`` and
``batchnorm_backward(..., y=...)`` give what the two primitives give one after the other, on
every backend; a Sequential runs a BatchNorm followed by a ReLU that way and its gradients are
those of the unfused pair."""
import numpy as np
import pytest

import gpucnn
from gpucnn import backends, blocks
from gpucnn.backends.numpy.parallel import WORKERS


def npy(a):
    return np.array(gpucnn.asnumpy(a))


def _inputs(dtype, shape=(5, 3, 6, 7), special=False):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal(shape[1]).astype(dtype)
    b = rng.standard_normal(shape[1]).astype(dtype)
    if special:     # gradients that are infinite or NaN where the ReLU is off and on
        dy.reshape(-1)[:6] = [np.inf, -np.inf, np.nan, np.inf, np.nan, -np.inf]
    return x, dy, w, b


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch_stats", [True, False])
@pytest.mark.parametrize("special", [False, True])
def test_fused_primitives_equal_the_two_calls(backend, dtype, batch_stats, special):
    B = backend
    x, dy, w, b = (B.asarray(a) for a in _inputs(dtype, special=special))
    mean, var = B.batchnorm_stats(x)
    y = B.batchnorm_forward(x, mean, var, w, b, 1e-5, "relu")
    y2 = B.relu_forward(B.batchnorm_forward(x, mean, var, w, b, 1e-5))
    np.testing.assert_array_equal(npy(y), npy(y2))
    assert (npy(y) >= 0).all() and (npy(y) == 0).any()
    fused = B.batchnorm_backward(dy, x, mean, var, w, 1e-5, batch_stats, y)
    apart = B.batchnorm_backward(B.relu_backward(dy, y), x, mean, var, w, 1e-5, batch_stats)
    for f, a in zip(fused, apart):
        np.testing.assert_array_equal(npy(f), npy(a))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("block_bytes", [256, 4096, 1 << 20])
def test_numpy_blocks_and_threads(threads, block_bytes, monkeypatch):
    """Blocks of parts of a sample, of a few samples, of the whole batch; one or two threads."""
    from gpucnn.backends.numpy import blocks as nb, parallel
    monkeypatch.setattr(nb, "BLOCK_BYTES", block_bytes)
    monkeypatch.setattr(parallel, "PARALLEL_MIN_ELEMENTS", 1)
    B = backends.cpu_backend()
    x, dy, w, b = _inputs(np.float64, shape=(7, 4, 9, 5), special=True)
    saved = WORKERS.threads
    WORKERS.set_threads(threads)
    try:
        mean, var = B.batchnorm_stats(x)
        y = B.batchnorm_forward(x, mean, var, w, b, 1e-5, "relu")
        np.testing.assert_array_equal(y, np.maximum(B.batchnorm_forward(x, mean, var, w, b, 1e-5), 0))
        fused = B.batchnorm_backward(dy, x, mean, var, w, 1e-5, True, y)
        g = np.where(y > 0, dy, 0.0)
        apart = B.batchnorm_backward(g, x, mean, var, w, 1e-5, True)
    finally:
        WORKERS.set_threads(saved)
    for f, a in zip(fused, apart):
        np.testing.assert_array_equal(f, a)


def test_bad_arguments_are_refused():
    B = backends.cpu_backend()
    x, dy, w, b = _inputs(np.float32)
    mean, var = B.batchnorm_stats(x)
    with pytest.raises(ValueError, match=r"batchnorm_forward: act is 'sigmoid'; expected one of"):
        B.batchnorm_forward(x, mean, var, w, b, 1e-5, "sigmoid")
    with pytest.raises(ValueError, match=r"batchnorm_backward: y has shape \(5, 3, 6, 6\); expected"):
        B.batchnorm_backward(dy, x, mean, var, w, 1e-5, True, dy[..., :6])
    with pytest.raises(TypeError, match=r"batchnorm_backward: y has dtype float64"):
        B.batchnorm_backward(dy, x, mean, var, w, 1e-5, True, dy.astype(np.float64))


def _net(fuse):
    gpucnn.manual_seed(4)
    net = gpucnn.Sequential(gpucnn.Conv2d(3, 4, 3, padding=1), gpucnn.BatchNorm2d(4), gpucnn.ReLU(),
                            gpucnn.Conv2d(4, 4, 3, padding=1, bias=False), gpucnn.BatchNorm2d(4),
                            gpucnn.ReLU(), gpucnn.Flatten(), gpucnn.Linear(4 * 36, 3))
    net.to(np.float64)
    return net


@pytest.mark.parametrize("train", [True, False])
def test_sequential_runs_the_pair_as_one_and_matches_the_unfused_pair(train, monkeypatch):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 3, 6, 6))
    labels = rng.integers(0, 3, 6)
    results = []
    for fuse in (True, False):
        monkeypatch.setattr(blocks._BatchNorm, "_fuses_relu", fuse)
        calls = []
        B = backends.cpu_backend()
        monkeypatch.setattr(B, "relu_backward", lambda *a, _f=B.relu_backward: calls.append(1) or _f(*a))
        net = _net(fuse)
        net.train(train)
        loss_fn = gpucnn.CrossEntropyLoss()
        for _ in range(2):              # the second backward accumulates, as before
            loss = loss_fn(net(x), labels)
            net.zero_grad()
            net.backward(loss_fn.backward())
        net.backward(loss_fn.backward())
        assert net[2]._y is not None and (npy(net[2]._y) >= 0).all()
        assert (len(calls) == 0) == fuse            # the ReLUs' backward ran inside the BNs'
        results.append((float(loss), [npy(p.grad).copy() for p in net.parameters()],
                        [npy(v).copy() for v in net.state_dict().values()]))
    (l1, g1, s1), (l2, g2, s2) = results
    assert l1 == l2
    for a, b in zip(g1 + s1, g2 + s2):
        np.testing.assert_array_equal(a, b)


def test_input_gradient_of_a_leading_pair():
    """BatchNorm + ReLU as the first two layers: the input's gradient comes back (or None)."""
    gpucnn.manual_seed(6)
    net = gpucnn.Sequential(gpucnn.BatchNorm2d(2), gpucnn.ReLU(), gpucnn.Flatten(),
                            gpucnn.Linear(2 * 9, 2)).to(np.float64)
    x = np.random.default_rng(7).standard_normal((4, 2, 3, 3))
    out = net(x)
    g = np.ones_like(npy(out))
    dx = net.backward(g)
    assert dx.shape == x.shape and np.abs(npy(dx)).sum() > 0
    assert net.backward(g, input_grad=False) is None


@pytest.mark.parametrize("train", [True, False])
def test_fused_pair_gradcheck_float64(train):
    """Sequential(BatchNorm2d, ReLU), run fused: input, weight and bias gradients against
    float64 finite differences (inputs kept away from the ReLU's kink)."""
    from tests.test_gradcheck import gradcheck_module
    bn = gpucnn.BatchNorm2d(3).to(np.float64)
    rng = np.random.default_rng(8)
    bn.weight.data[...] = rng.standard_normal(3) * 0.5 + 1.0
    bn.bias.data[...] = rng.standard_normal(3) * 0.3
    seq = gpucnn.Sequential(bn, gpucnn.ReLU())
    x = rng.standard_normal((4, 3, 3, 4)) * 2.0 + 0.5
    if not train:
        seq(x)
        seq.eval()
    seq(x)
    assert seq._folded == {0}
    grads = gradcheck_module(seq, x)
    assert set(grads) == {"input", "0.weight", "0.bias"}


# ------------------------------------------------ a residual block's add + the ReLU after it
def _block_net():
    gpucnn.manual_seed(9)
    main = gpucnn.Sequential(gpucnn.Conv2d(4, 4, 3, padding=1, bias=False), gpucnn.BatchNorm2d(4))
    net = gpucnn.Sequential(gpucnn.Conv2d(3, 4, 3, padding=1), gpucnn.Residual(main),
                            gpucnn.ReLU(), gpucnn.Flatten(), gpucnn.Linear(4 * 36, 3))
    return net.to(np.float64)


def test_residual_add_and_relu_run_as_one_and_match_the_unfused_pair(monkeypatch):
    rng = np.random.default_rng(10)
    x = rng.standard_normal((6, 3, 6, 6))
    labels = rng.integers(0, 3, 6)
    results = []
    for fuse in (True, False):
        monkeypatch.setattr(blocks.Residual, "_fuses_relu", fuse)
        B = backends.cpu_backend()
        acts = []
        monkeypatch.setattr(B, "add", lambda a, b, act=None, _f=B.add: acts.append(act) or _f(a, b, act))
        net = _block_net()
        loss_fn = gpucnn.CrossEntropyLoss()
        loss = loss_fn(net(x), labels)
        net.zero_grad()
        dx = net.backward(loss_fn.backward())
        assert ("relu" in acts) == fuse and (net._folded == {1}) == fuse
        results.append((float(loss), npy(dx), [npy(p.grad).copy() for p in net.parameters()]))
    (l1, d1, g1), (l2, d2, g2) = results
    assert l1 == l2
    for a, b in zip([d1] + g1, [d2] + g2):
        np.testing.assert_array_equal(a, b)


def test_add_refuses_an_unknown_activation():
    B = backends.cpu_backend()
    a = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"add: act is 'tanh'; expected one of \(None, 'relu'\)"):
        B.add(a, a, "tanh")


def test_residual_relu_gradcheck_float64():
    from tests.test_gradcheck import gradcheck_module
    gpucnn.manual_seed(11)
    main = gpucnn.Sequential(gpucnn.Conv2d(2, 2, 3, padding=1, bias=False))
    seq = gpucnn.Sequential(gpucnn.Residual(main), gpucnn.ReLU()).to(np.float64)
    x = np.random.default_rng(12).standard_normal((2, 2, 4, 4)) + 0.3
    seq(x)
    assert seq._folded == {0}
    grads = gradcheck_module(seq, x)
    assert set(grads) == {"input", "0.main.0.weight"}
