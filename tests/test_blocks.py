"""Issue 10's layers: BatchNorm1d/2d, Dropout, AdaptiveAvgPool2d, Identity, Residual with its
shortcuts (identity, ShortcutA = option A, Conv 1x1 + BatchNorm = option B), and
CrossEntropyLoss(label_smoothing).

* float64 central finite differences for every layer (BatchNorm in train and eval mode);
* the loop definitions of gpucnn.reference, themselves checked against finite differences;
* train/eval behaviour, running statistics, momentum=None, reproducible dropout masks;
* buffers in state_dict / load_state_dict / .to(); PyTorch's key names;
* error paths (each message names what went wrong);
* a small residual network trained on the emulated CUDA backend against the NumPy one.
"""
from __future__ import annotations

import numpy as np
import pytest

import gpucnn
from gpucnn import backends, tolerances
from gpucnn import reference as R
from tests.test_gradcheck import cpu64, gradcheck_module, numeric_grad, npy, rel_err


def _rand(seed, shape, scale=1.0, shift=0.0):
    return np.random.default_rng(seed).standard_normal(shape) * scale + shift


def _bn(cls, c, seed=0, **kw):
    """A float64 BatchNorm with non-trivial weight and bias."""
    m = cpu64(cls(c, **kw))
    if m.affine:
        m.weight.data[...] = _rand(seed, (c,), 0.5, 1.0)
        m.bias.data[...] = _rand(seed + 1, (c,))
    return m


class _SeededDropout(gpucnn.Dropout):
    """Dropout whose every forward uses the same mask (finite differences need one)."""

    def forward(self, x):
        gpucnn.manual_seed(1234)
        return super().forward(x)


# ------------------------------------------------------------------------ gradient checks
@pytest.mark.parametrize("shape", [(3, 2, 4, 5), (2, 3, 3, 1), (1, 2, 3, 3)], ids=str)
def test_batchnorm2d_gradcheck_train(shape):
    m = _bn(gpucnn.BatchNorm2d, shape[1])
    grads = gradcheck_module(m, _rand(1, shape, 2.0, 0.5))
    assert set(grads) == {"input", "weight", "bias"}


def test_batchnorm2d_gradcheck_eval():
    m = _bn(gpucnn.BatchNorm2d, 3)
    for s in range(3):                       # running statistics away from (0, 1)
        m(_rand(10 + s, (4, 3, 3, 3), 2.0, 1.0))
    m.eval()
    gradcheck_module(m, _rand(2, (2, 3, 4, 3)))


@pytest.mark.parametrize("kw", [dict(affine=False), dict(track_running_stats=False),
                                dict(affine=False, track_running_stats=False)], ids=str)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_batchnorm2d_gradcheck_variants(kw, mode):
    m = _bn(gpucnn.BatchNorm2d, 2, **kw)
    if mode == "eval":
        m(_rand(3, (3, 2, 3, 3), 2.0, 1.0))
        m.eval()
    gradcheck_module(m, _rand(4, (3, 2, 3, 4)))


@pytest.mark.parametrize("shape", [(5, 4), (3, 2, 6), (4, 1)], ids=str)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_batchnorm1d_gradcheck(shape, mode):
    m = _bn(gpucnn.BatchNorm1d, shape[1])
    if mode == "eval":
        m(_rand(5, shape, 2.0, 1.0))
        m.eval()
    gradcheck_module(m, _rand(6, shape, 1.5))


@pytest.mark.parametrize("p", [0.3, 0.5, 0.9])
def test_dropout_gradcheck(p):
    m = _SeededDropout(p)
    grads = gradcheck_module(m, _rand(7, (3, 4, 5)))
    assert np.any(grads["input"] == 0)       # some elements were dropped ...
    assert np.any(grads["input"] != 0)       # ... and some kept


@pytest.mark.parametrize("size,shape", [(1, (2, 3, 4, 6)), ((2, 3), (2, 2, 4, 6)),
                                        ((None, 1), (1, 2, 3, 5)), (4, (1, 1, 4, 4))], ids=str)
def test_adaptive_avgpool_gradcheck(size, shape):
    gradcheck_module(gpucnn.AdaptiveAvgPool2d(size), _rand(8, shape))


def test_identity_gradcheck():
    gradcheck_module(gpucnn.Identity(), _rand(9, (2, 3)))


def _main_branch(c_in, c_out, stride, seed):
    gpucnn.manual_seed(seed)
    return gpucnn.Sequential(gpucnn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                             gpucnn.BatchNorm2d(c_out), gpucnn.ReLU(),
                             gpucnn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
                             gpucnn.BatchNorm2d(c_out))


SHORTCUTS = {
    "identity": lambda c_in, c_out, s: None,
    "option-A": lambda c_in, c_out, s: gpucnn.ShortcutA(c_in, c_out, stride=s),
    "option-B": lambda c_in, c_out, s: gpucnn.Sequential(
        gpucnn.Conv2d(c_in, c_out, 1, stride=s, bias=False), gpucnn.BatchNorm2d(c_out)),
}


@pytest.mark.parametrize("kind", sorted(SHORTCUTS))
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_residual_gradcheck(kind, mode):
    c_in, c_out, s = (2, 2, 1) if kind == "identity" else (2, 4, 2)
    block = gpucnn.Residual(_main_branch(c_in, c_out, s, 11), SHORTCUTS[kind](c_in, c_out, s))
    net = cpu64(gpucnn.Sequential(block, gpucnn.ReLU()))
    x = _rand(12, (2, c_in, 5, 4))
    if mode == "eval":
        net(x + 1.0)
        net.eval()
    grads = gradcheck_module(net, x)
    assert any(k.startswith("0.main.") for k in grads)
    if kind == "option-B":
        assert "0.shortcut.0.weight" in grads and "0.shortcut.1.weight" in grads


def test_shortcut_a_gradcheck():
    grads = gradcheck_module(gpucnn.ShortcutA(3, 8, stride=2), _rand(13, (2, 3, 5, 6)))
    assert set(grads) == {"input"}


def test_residual_without_input_gradient_fills_parameters_only():
    block = cpu64(gpucnn.Residual(_main_branch(2, 4, 2, 14), SHORTCUTS["option-B"](2, 4, 2)))
    x = _rand(15, (2, 2, 4, 4))
    y = block(x)
    g = _rand(16, y.shape)
    dx = block.backward(g)
    ref = {k: npy(p.grad) for k, p in block.named_parameters()}
    block.zero_grad()
    block(x)
    assert block.backward(g, input_grad=False) is None
    for k, p in block.named_parameters():
        np.testing.assert_allclose(npy(p.grad), ref[k], rtol=1e-12, atol=1e-14)
    assert dx.shape == x.shape


# ------------------------------------------------------------------------ loop references
def test_reference_batchnorm_backward_matches_finite_differences():
    x, dy = _rand(20, (3, 2, 2, 3), 2.0, 1.0), _rand(21, (3, 2, 2, 3))
    w, b = _rand(22, (2,)), _rand(23, (2,))
    for stats in (None, (_rand(24, (2,)), np.abs(_rand(25, (2,))) + 0.5)):
        mean, var = stats if stats else (None, None)
        dx, dw, db = R.batchnorm_backward(dy, x, w, 1e-5, mean, var)
        loss = lambda: float(np.sum(R.batchnorm(x, w, b, 1e-5, mean, var)[0] * dy))  # noqa: E731
        assert rel_err(dx, numeric_grad(loss, x)) < 1e-7
        assert rel_err(dw, numeric_grad(loss, w)) < 1e-7
        assert rel_err(db, numeric_grad(loss, b)) < 1e-7


def test_reference_label_smoothing_matches_finite_differences():
    z, labels = _rand(26, (4, 5), 2.0), np.array([0, 4, 2, 2])
    _, g = R.label_smoothing_cross_entropy(z, labels, 0.2)
    assert rel_err(g, numeric_grad(lambda: R.label_smoothing_cross_entropy(z, labels, 0.2)[0], z)) < 1e-7
    # eps = 0 is the plain cross-entropy
    np.testing.assert_allclose(R.label_smoothing_cross_entropy(z, labels, 0.0)[0],
                               R.softmax_cross_entropy(z, labels)[0], rtol=1e-14)


@pytest.mark.parametrize("shape", [(3, 2, 4, 5), (6, 3), (2, 2, 5)], ids=str)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_batchnorm_matches_the_loop_definition(shape, mode):
    cls = gpucnn.BatchNorm2d if len(shape) == 4 else gpucnn.BatchNorm1d
    m = _bn(cls, shape[1], seed=30)
    x, dy = _rand(31, shape, 2.0, 1.0), _rand(32, shape)
    rm0, rv0 = npy(m.running_mean.data), npy(m.running_var.data)
    if mode == "eval":
        m.running_mean.data[...] = _rand(33, (shape[1],))
        m.running_var.data[...] = np.abs(_rand(34, (shape[1],))) + 0.3
        m.eval()
    y = m(x)
    m.zero_grad()
    dx = m.backward(dy)
    stats = (None, None) if mode == "train" else (npy(m.running_mean.data), npy(m.running_var.data))
    y_ref, _, _ = R.batchnorm(x, npy(m.weight.data), npy(m.bias.data), 1e-5, *stats)
    dx_ref, dw_ref, db_ref = R.batchnorm_backward(dy, x, npy(m.weight.data), 1e-5, *stats)
    for got, ref in ((y, y_ref), (dx, dx_ref), (m.weight.grad, dw_ref), (m.bias.grad, db_ref)):
        np.testing.assert_allclose(npy(got), ref, rtol=1e-10, atol=1e-12)
    if mode == "train":
        rm, rv = R.batchnorm_running(rm0, rv0, x, 0.1)
        np.testing.assert_allclose(npy(m.running_mean.data), rm, rtol=1e-12)
        np.testing.assert_allclose(npy(m.running_var.data), rv, rtol=1e-12)


@pytest.mark.parametrize("p,shape,seed", [(0.5, (3, 4, 5), 7), (0.2, (37,), 2 ** 63 - 1),
                                          (0.9, (2, 50), 0), (1.0, (4, 4), 99)], ids=str)
def test_dropout_matches_the_loop_definition(p, shape, seed, backend):
    x = _rand(40, shape)
    mask = R.dropout_mask(shape, p, seed)
    got = backend.to_numpy(backend.dropout_forward(backend.asarray(x), p, seed))
    np.testing.assert_array_equal(got, x * mask)
    dy = _rand(41, shape)
    got = backend.to_numpy(backend.dropout_backward(backend.asarray(dy), p, seed))
    np.testing.assert_array_equal(got, dy * mask)


@pytest.mark.parametrize("size,shape", [(1, (2, 3, 4, 6)), ((2, 3), (2, 2, 4, 6)), (4, (1, 1, 4, 4))],
                         ids=str)
def test_adaptive_avgpool_matches_the_loop_definition(size, shape):
    x = _rand(42, shape)
    np.testing.assert_allclose(npy(cpu64(gpucnn.AdaptiveAvgPool2d(size))(x)),
                               R.adaptive_avgpool2d(x, size), rtol=1e-13)


@pytest.mark.parametrize("c_in,c_out,stride,shape", [(16, 32, 2, (2, 16, 8, 8)), (3, 8, 2, (1, 3, 5, 7)),
                                                     (2, 3, 1, (2, 2, 3, 3)), (4, 4, 3, (1, 4, 7, 5))],
                         ids=str)
def test_shortcut_a_matches_the_loop_definition(c_in, c_out, stride, shape, backend):
    x = _rand(43, shape)
    m = gpucnn.ShortcutA(c_in, c_out, stride=stride)
    with backends.override_backend(backend):
        y = m(backend.asarray(x))
        dy = _rand(44, y.shape)
        dx = m.backward(backend.asarray(dy))
    np.testing.assert_array_equal(backend.to_numpy(y), R.subsample_pad(x, c_out, stride))
    # the backward is the transpose: <y(x), dy> = <x, dx> for every x
    np.testing.assert_allclose(float(np.sum(R.subsample_pad(x, c_out, stride) * dy)),
                               float(np.sum(x * backend.to_numpy(dx))), rtol=1e-12)


def test_shortcut_a_is_the_cifar_resnet_lambda_layer():
    """F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes//4, planes//4)) of the common code."""
    x = _rand(45, (2, 16, 8, 8))
    planes = 32
    sub = x[:, :, ::2, ::2]
    pad = np.zeros((2, planes // 4, 4, 4))
    want = np.concatenate([pad, sub, pad], axis=1)
    np.testing.assert_array_equal(npy(gpucnn.ShortcutA(16, 32)(x)), want)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5, 1.0])
def test_label_smoothing_matches_the_loop_definition(eps, backend):
    z, labels = _rand(46, (6, 4), 3.0), np.array([0, 3, 1, 1, 2, 0])
    loss_fn = gpucnn.CrossEntropyLoss(label_smoothing=eps)
    with backends.override_backend(backend):
        loss = loss_fn(backend.asarray(z), labels)
        g = backend.to_numpy(loss_fn.backward())
    ref_loss, ref_g = R.label_smoothing_cross_entropy(z, labels, eps)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    np.testing.assert_allclose(g, ref_g, rtol=1e-10, atol=1e-15)


# ----------------------------------------------------------------- train / eval behaviour
def test_batchnorm_uses_running_statistics_in_eval():
    m = _bn(gpucnn.BatchNorm2d, 3)
    x = _rand(50, (4, 3, 2, 2), 2.0, 3.0)
    m(x)
    assert int(m.num_batches_tracked.data) == 1
    m.eval()
    y = npy(m(x))
    rm, rv = npy(m.running_mean.data), npy(m.running_var.data)
    want = (x - rm[:, None, None]) / np.sqrt(rv[:, None, None] + 1e-5) \
        * npy(m.weight.data)[:, None, None] + npy(m.bias.data)[:, None, None]
    np.testing.assert_allclose(y, want, rtol=1e-12)
    assert int(m.num_batches_tracked.data) == 1     # eval does not update
    np.testing.assert_array_equal(npy(m.running_mean.data), rm)


def test_batchnorm_momentum_none_is_the_cumulative_average():
    m = cpu64(gpucnn.BatchNorm1d(3, momentum=None))
    xs = [_rand(60 + k, (5, 3), 1.0 + k, k) for k in range(4)]
    for x in xs:
        m(x)
    means = np.mean([x.mean(axis=0) for x in xs], axis=0)
    vars_ = np.mean([x.var(axis=0, ddof=1) for x in xs], axis=0)
    np.testing.assert_allclose(npy(m.running_mean.data), means, rtol=1e-12)
    np.testing.assert_allclose(npy(m.running_var.data), vars_, rtol=1e-12)
    assert int(m.num_batches_tracked.data) == 4


def test_batchnorm_without_running_stats_uses_batch_statistics_in_eval():
    m = cpu64(gpucnn.BatchNorm2d(2, track_running_stats=False))
    assert m.running_mean is None and set(m.state_dict()) == {"weight", "bias"}
    x = _rand(61, (3, 2, 2, 2), 2.0, 1.0)
    y_train = npy(m(x))
    m.eval()
    np.testing.assert_array_equal(npy(m(x)), y_train)


def test_dropout_is_identity_in_eval_and_reproducible_in_training():
    m = gpucnn.Dropout(0.5)
    x = _rand(70, (4, 100)).astype(np.float32)
    gpucnn.manual_seed(3)
    a = m(x)
    state = gpucnn.get_rng_state()
    b = m(x)
    assert not np.array_equal(a, b)                 # a new mask per forward
    gpucnn.set_rng_state(state)                      # resume: the same mask again
    np.testing.assert_array_equal(m(x), b)
    gpucnn.manual_seed(3)
    np.testing.assert_array_equal(m(x), a)
    kept = a != 0
    np.testing.assert_array_equal(a[kept], x[kept] * np.float32(2.0))
    np.testing.assert_array_equal(m.backward(np.ones_like(x)), np.where(kept, 2.0, 0.0))
    m.eval()
    assert m(x) is x
    assert m.backward(x) is x


def test_eval_reaches_layers_inside_residual_blocks():
    block = gpucnn.Residual(gpucnn.Sequential(gpucnn.BatchNorm2d(2), gpucnn.Dropout(0.5)),
                            gpucnn.Sequential(gpucnn.BatchNorm2d(2)))
    net = gpucnn.Sequential(block, gpucnn.AdaptiveAvgPool2d(1), gpucnn.Flatten())
    net.eval()
    assert all(not m.training for m in net.modules())
    assert len(net.modules()) == 9
    net.train()
    assert all(m.training for m in net.modules())


# ----------------------------------------------------------------- state_dict and buffers
def _resnet_block_net():
    gpucnn.manual_seed(0)
    return gpucnn.Sequential(
        gpucnn.Conv2d(3, 4, 3, padding=1, bias=False), gpucnn.BatchNorm2d(4), gpucnn.ReLU(),
        gpucnn.Residual(_main_branch(4, 8, 2, 1), gpucnn.ShortcutA(4, 8)),
        gpucnn.Residual(_main_branch(8, 8, 1, 2)),
        gpucnn.Residual(_main_branch(8, 16, 2, 3), SHORTCUTS["option-B"](8, 16, 2)),
        gpucnn.AdaptiveAvgPool2d(1), gpucnn.Flatten(), gpucnn.Dropout(0.2), gpucnn.Linear(16, 5),
        gpucnn.BatchNorm1d(5))


def test_state_dict_keys_follow_pytorch():
    sd = _resnet_block_net().state_dict()
    assert list(sd)[:6] == ["0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                            "1.num_batches_tracked"]
    for key in ("3.main.0.weight", "3.main.1.running_var", "3.main.4.num_batches_tracked",
                "5.shortcut.0.weight", "5.shortcut.1.running_mean", "9.weight", "10.bias"):
        assert key in sd, key
    assert not any(k.startswith("3.shortcut") or k.startswith("4.shortcut") for k in sd)
    assert sd["1.num_batches_tracked"].dtype == np.int64 and sd["1.num_batches_tracked"].shape == ()
    assert sd["1.running_var"].dtype == np.float32


def test_state_dict_round_trip_restores_buffers():
    net = _resnet_block_net()
    x = _rand(80, (4, 3, 8, 8)).astype(np.float32)
    for _ in range(2):
        net(x)
    sd = net.state_dict()
    assert int(sd["1.num_batches_tracked"]) == 2
    other = _resnet_block_net()
    other.load_state_dict(sd)
    for k, v in other.state_dict().items():
        np.testing.assert_array_equal(v, sd[k])
        assert v.dtype == sd[k].dtype
    net.eval(), other.eval()
    np.testing.assert_array_equal(net(x), other(x))
    sd["1.running_mean"][0] = 123.0                       # the model holds copies
    assert float(other.state_dict()["1.running_mean"][0]) != 123.0


def test_to_float64_casts_float_buffers_only():
    net = _resnet_block_net().to(dtype=np.float64)
    bn = net[1]
    assert bn.running_mean.dtype == np.float64 and bn.running_var.dtype == np.float64
    assert bn.num_batches_tracked.dtype == np.int64
    assert {name for name, _ in net.named_buffers()} >= {"1.running_mean", "5.shortcut.1.running_var"}


def test_load_state_dict_rejects_a_float_num_batches_tracked():
    m = gpucnn.BatchNorm2d(2)
    sd = m.state_dict()
    sd["num_batches_tracked"] = np.array(1.5)
    with pytest.raises(TypeError, match="num_batches_tracked.*integer"):
        m.load_state_dict(sd)
    sd = m.state_dict()
    del sd["running_var"]
    with pytest.raises(ValueError, match="missing.*running_var"):
        m.load_state_dict(sd)


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("make,exc,match", [
    (lambda: gpucnn.BatchNorm2d(0), ValueError, "BatchNorm2d: num_features"),
    (lambda: gpucnn.BatchNorm2d(3, eps=0), ValueError, "BatchNorm2d: eps"),
    (lambda: gpucnn.BatchNorm1d(3, momentum=1.5), ValueError, "BatchNorm1d: momentum"),
    (lambda: gpucnn.BatchNorm2d(3, affine="yes"), TypeError, "BatchNorm2d: affine"),
    (lambda: gpucnn.BatchNorm2d(3, track_running_stats=1), TypeError, "track_running_stats"),
    (lambda: gpucnn.Dropout(1.5), ValueError, "Dropout: p"),
    (lambda: gpucnn.Dropout("0.5"), TypeError, "Dropout: p"),
    (lambda: gpucnn.AdaptiveAvgPool2d(0), ValueError, "AdaptiveAvgPool2d: output_size"),
    (lambda: gpucnn.AdaptiveAvgPool2d((1, 2, 3)), ValueError, "AdaptiveAvgPool2d: output_size"),
    (lambda: gpucnn.Residual("conv"), TypeError, "Residual: main"),
    (lambda: gpucnn.Residual(gpucnn.Identity(), 3), TypeError, "Residual: shortcut"),
    (lambda: gpucnn.ShortcutA(8, 4), ValueError, "ShortcutA: out_channels"),
    (lambda: gpucnn.ShortcutA(4, 8, stride=0), ValueError, "ShortcutA: stride"),
    (lambda: gpucnn.CrossEntropyLoss(label_smoothing=1.5), ValueError, "label_smoothing"),
    (lambda: gpucnn.CrossEntropyLoss(label_smoothing=-0.1), ValueError, "label_smoothing"),
])
def test_bad_arguments(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


@pytest.mark.parametrize("layer,x,match", [
    (lambda: gpucnn.BatchNorm2d(3), np.zeros((2, 4, 3, 3), np.float32), "expected 3 channels"),
    (lambda: gpucnn.BatchNorm2d(3), np.zeros((2, 3, 3), np.float32), "BatchNorm2d: expected a 4-D"),
    (lambda: gpucnn.BatchNorm1d(3), np.zeros((2, 3, 3, 3), np.float32), "BatchNorm1d: expected a 2-D or 3-D"),
    (lambda: gpucnn.BatchNorm1d(3), np.zeros((1, 3), np.float32), "more than 1 value per channel"),
    (lambda: gpucnn.BatchNorm2d(3), np.zeros((2, 3, 2, 2), np.float64), "dtype float64 but"),
    (lambda: gpucnn.AdaptiveAvgPool2d(2), np.zeros((1, 1, 5, 4), np.float32), "5x4 is not a multiple"),
    (lambda: gpucnn.ShortcutA(2, 4), np.zeros((1, 3, 4, 4), np.float32), "expected 2 input channels"),
    (lambda: gpucnn.Residual(gpucnn.Conv2d(2, 3, 1)), np.zeros((1, 2, 4, 4), np.float32),
     "main branch gives shape \\(1, 3, 4, 4\\) but the shortcut gives \\(1, 2, 4, 4\\)"),
    (lambda: gpucnn.Dropout(), np.zeros((2, 2), np.int64), "Dropout: expected a float32 or float64"),
    (lambda: gpucnn.BatchNorm2d(1), np.full((2, 1, 2, 2), np.nan, np.float32), "BatchNorm2d: the input contains NaN"),
])
def test_bad_inputs(layer, x, match):
    with pytest.raises((ValueError, TypeError), match=match):
        layer()(x)


@pytest.mark.parametrize("layer", [lambda: gpucnn.BatchNorm2d(2), lambda: gpucnn.Dropout(),
                                   lambda: gpucnn.AdaptiveAvgPool2d(1), lambda: gpucnn.ShortcutA(2, 4),
                                   lambda: gpucnn.Residual(gpucnn.Identity())])
def test_backward_before_forward(layer):
    with pytest.raises(RuntimeError, match="backward was called before forward"):
        layer().backward(np.zeros((1, 2, 2, 2), np.float32))


def test_backward_with_a_wrong_gradient_shape():
    m = gpucnn.BatchNorm2d(2)
    m(np.ones((2, 2, 3, 3), np.float32) * np.arange(3, dtype=np.float32))
    with pytest.raises(ValueError, match="BatchNorm2d.backward: expected a gradient of shape"):
        m.backward(np.zeros((2, 2, 3, 4), np.float32))


# ------------------------------------------------- the CUDA kernels, through the layers
def _train(net, x, labels, steps, B=None):
    gpucnn.manual_seed(77)    # the dropout masks
    opt = gpucnn.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    loss_fn = gpucnn.CrossEntropyLoss(label_smoothing=0.1)
    losses = []
    for step in range(steps):
        lo = (step * 8) % x.shape[0]
        xb = x[lo:lo + 8] if B is None else B.asarray(x[lo:lo + 8])
        opt.zero_grad()
        losses.append(loss_fn(net(xb), labels[lo:lo + 8]))
        net.backward(loss_fn.backward())
        opt.step()
    net.eval()
    out = backends.asnumpy(net(x if B is None else B.asarray(x)))
    return np.array(losses), {k: np.array(v) for k, v in net.state_dict().items()}, np.array(out)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_residual_network_trains_the_same_on_every_backend(dtype, other_backend, backend_entry):
    rng = np.random.default_rng(90)
    x = rng.standard_normal((24, 3, 8, 8)).astype(dtype)
    labels = rng.integers(0, 5, size=24)
    ref = _train(_resnet_block_net().to(dtype=dtype), x, labels, 6)
    net = _resnet_block_net().to(dtype=dtype)
    if backend_entry.device is not None:
        got = _train(net.to(backend_entry.device), x, labels, 6, other_backend)
    else:
        with backends.override_backend(other_backend):
            got = _train(net, x, labels, 6)
    tol = tolerances.TRAINING[np.dtype(dtype).name]
    assert ref[0][-1] < ref[0][0], "the reference run did not learn; the test is vacuous"
    for name, a, b in [("losses", got[0], ref[0]), ("eval output", got[2], ref[2])] + \
            [(k, got[1][k], ref[1][k]) for k in ref[1]]:
        _, rel, ok = tolerances.compare(a, b, tol)
        assert ok, f"{name} differs by {rel:.3g} (relative) > {tol:g}"
    assert int(got[1]["1.num_batches_tracked"]) == 6


def test_dropout_mask_statistics_and_seeds(numpy_backend):
    """The hash keeps about 1 - p of the elements, and different seeds give different masks."""
    x = np.ones(200_000)
    for p in (0.1, 0.5, 0.9):
        kept = np.count_nonzero(numpy_backend.dropout_forward(x, p, 12345)) / x.size
        assert abs(kept - (1 - p)) < 0.005, (p, kept)
    a = numpy_backend.dropout_forward(x[:1000], 0.5, 1)
    b = numpy_backend.dropout_forward(x[:1000], 0.5, 2)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, numpy_backend.dropout_forward(x[:1000], 0.5, 1))
    assert set(np.unique(a)) == {0.0, 2.0}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_batchnorm_kernels_are_bitwise_reproducible(dtype, other_backend):
    """Fixed-order reductions: two identical runs give identical bits."""
    def run():
        B = other_backend
        x = B.asarray(_rand(95, (16, 8, 9, 7), 2.0, 1.0).astype(dtype))
        dy = B.asarray(_rand(96, (16, 8, 9, 7)).astype(dtype))
        w = B.asarray(_rand(97, (8,)).astype(dtype))
        mean, var = B.batchnorm_stats(x)
        out = [mean, var, *B.batchnorm_backward(dy, x, mean, var, w, 1e-5, True)]
        return [np.array(B.to_numpy(a)).tobytes() for a in out]
    assert run() == run()


# ----------------------------------------- resume with batch norm and dropout stays exact
class _Interrupt(gpucnn.Identity):
    """Raises KeyboardInterrupt in its ``at``-th training forward (after Dropout drew a seed)."""

    def __init__(self, at=None):
        self.at, self.calls = at, 0

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls == self.at:
                raise KeyboardInterrupt
        return x


def _bn_dropout_trainer(data, run_dir=None, interrupt_at=None):
    from gpucnn.trainer import Trainer, make_optimizer
    c = data.input_shape[0]
    gpucnn.manual_seed(0)
    model = gpucnn.Sequential(
        gpucnn.Conv2d(c, 4, 3, padding=1, bias=False), gpucnn.BatchNorm2d(4), gpucnn.ReLU(),
        gpucnn.Residual(gpucnn.Sequential(gpucnn.Conv2d(4, 4, 3, padding=1, bias=False),
                                          gpucnn.BatchNorm2d(4))),
        gpucnn.AdaptiveAvgPool2d(1), gpucnn.Flatten(), gpucnn.Dropout(0.3),
        _Interrupt(interrupt_at), gpucnn.Linear(4, data.num_classes))
    opt = make_optimizer("sgd", model.parameters(), 0.05)
    return Trainer(model, opt, data.train, data.test, batch_size=32, seed=0, run_dir=run_dir,
                   progress=False, log=lambda *_: None)


@pytest.mark.parametrize("stop", ["epoch-end", "mid-step"])
def test_trainer_resume_with_batchnorm_and_dropout_is_bitwise_exact(tmp_path, stop):
    """The checkpoint holds gpucnn's generator as it was after the last completed step, so
    the resumed run draws the same dropout masks -- also when the interruption came in the
    middle of a step whose Dropout had already drawn its seed."""
    from gpucnn.checkpoint import CHECKPOINT_NAME
    from gpucnn.data import load_dataset
    from gpucnn.trainer import TrainingInterrupted

    data = load_dataset("digits", limit_train=96, limit_test=40)      # 3 steps per epoch
    full = _bn_dropout_trainer(data)
    full.fit(2)
    if stop == "epoch-end":
        _bn_dropout_trainer(data, tmp_path / "run").fit(1)
    else:
        with pytest.raises(TrainingInterrupted, match="global step 4"):
            _bn_dropout_trainer(data, tmp_path / "run", interrupt_at=5).fit(2)
    gpucnn.manual_seed(12345)       # whatever the generator did meanwhile, the checkpoint wins
    resumed = _bn_dropout_trainer(data, tmp_path / "run")
    resumed.restore(tmp_path / "run" / CHECKPOINT_NAME)
    resumed.fit(2)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert int(a["1.num_batches_tracked"]) == 6
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert [h["train_loss"] for h in full.history] == [h["train_loss"] for h in resumed.history]


def _resnet_cifar(n, num_classes=10):
    """He et al.'s CIFAR ResNet (6n+2 layers, option A) from this module's layers."""
    layers = [gpucnn.Conv2d(3, 16, 3, padding=1, bias=False), gpucnn.BatchNorm2d(16), gpucnn.ReLU()]
    c_in = 16
    for c_out, stride in ((16, 1), (32, 2), (64, 2)):
        for i in range(n):
            s = stride if i == 0 else 1
            short = gpucnn.ShortcutA(c_in, c_out, stride=s) if (s != 1 or c_in != c_out) else None
            layers += [gpucnn.Residual(_main_branch(c_in, c_out, s, seed=i), short), gpucnn.ReLU()]
            c_in = c_out
    layers += [gpucnn.AdaptiveAvgPool2d(1), gpucnn.Flatten(), gpucnn.Linear(64, num_classes)]
    return gpucnn.Sequential(*layers)


def test_resnet20_option_a_has_the_papers_parameter_count():
    """269,722 parameters for ResNet-20 with option A (the paper's 0.27 M); one training step
    runs end to end and gives a gradient to every parameter."""
    net = _resnet_cifar(3)
    assert sum(int(np.prod(p.shape)) for p in net.parameters()) == 269_722
    x = _rand(98, (4, 3, 32, 32)).astype(np.float32)
    loss_fn = gpucnn.CrossEntropyLoss(label_smoothing=0.1)
    loss = loss_fn(net(x), np.array([0, 1, 2, 3]))
    assert np.isfinite(loss)
    assert net.backward(loss_fn.backward(), input_grad=False) is None
    assert all(p.grad is not None and np.any(p.grad) for p in net.parameters())
    assert sum(1 for k in net.state_dict() if k.endswith("num_batches_tracked")) == 19


def test_safetensors_of_a_batchnorm_network_loads_into_pytorch(tmp_path):
    """Buffers travel with the weights: PyTorch's keys, num_batches_tracked as int64."""
    pytest.importorskip("safetensors")
    torch = pytest.importorskip("torch")
    import safetensors.torch

    def ours():
        return gpucnn.Sequential(gpucnn.Conv2d(3, 4, 3, bias=False), gpucnn.BatchNorm2d(4),
                                 gpucnn.ReLU())
    m = ours()
    for s in range(3):
        m(_rand(99 + s, (2, 3, 5, 5)).astype(np.float32))
    path = gpucnn.save_safetensors(m, tmp_path / "bn.safetensors")
    back = ours()
    gpucnn.load_safetensors(back, path)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[k], v)
    t = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4),
                            torch.nn.ReLU())
    t.load_state_dict(safetensors.torch.load_file(str(path)))
    assert int(t[1].num_batches_tracked) == 3
    np.testing.assert_array_equal(t[1].running_var.numpy(), m.state_dict()["1.running_var"])
