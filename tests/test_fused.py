"""Fewer launches, same bits (issue 11): bias + activation in one kernel, and the optimizer
update over one flat buffer -- each bitwise equal to the unfused path, on the NumPy backend
and on the emulated CUDA kernels."""
import contextlib

import numpy as np
import pytest

import gpucnn as nn
from gpucnn import backends
from gpucnn.layers import _fusable
from gpucnn.optim import SGD, Adam


def _model(act, seed=0):
    nn.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), act(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(3 * 3 * 3, 5), act(), nn.Linear(5, 4))


def _unfused_forward(model, x):
    for layer in model.layers:
        x = layer(x)
    return x


@contextlib.contextmanager
def _on(which):
    """Run on the NumPy backend, or on the emulated CUDA kernels (numpy arrays behind them)."""
    if which == "cpu":
        yield
        return
    from tests.cuda_emu import emulator_unavailable_reason, make_emulated_backend
    reason = emulator_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with backends.override_backend(make_emulated_backend()):
        yield


WHERE = ["cpu", pytest.param("emulated", marks=pytest.mark.emulated)]


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("act", [nn.ReLU, nn.Sigmoid, nn.Tanh])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bias_and_activation_fused_equal_the_two_layers_bitwise(where, act, dtype):
    x = np.random.default_rng(1).standard_normal((3, 2, 6, 6)).astype(dtype) * 3
    with _on(where):
        fused = _model(act).to(dtype=dtype)
        plain = _model(act).to(dtype=dtype)
        assert _fusable(fused.layers[0], fused.layers[1]) is not None
        y1, y2 = fused(x), _unfused_forward(plain, x)
        assert np.array_equal(y1, y2)
        g = np.random.default_rng(2).standard_normal(y1.shape).astype(dtype)
        d1, d2 = fused.backward(g), plain.backward(g)
        assert np.array_equal(d1, d2)
        for (n, p), (_, q) in zip(fused.named_parameters(), plain.named_parameters()):
            assert np.array_equal(p.grad, q.grad), n


def test_only_biased_conv_or_linear_before_an_exact_activation_fuses():
    assert _fusable(nn.Linear(2, 3), nn.ReLU()) == "relu"
    assert _fusable(nn.Linear(2, 3, bias=False), nn.ReLU()) is None
    assert _fusable(nn.MaxPool2d(2), nn.ReLU()) is None
    assert _fusable(nn.Linear(2, 3), nn.Flatten()) is None


OPTIMIZERS = {
    "sgd": lambda ps: SGD(ps, lr=0.05),
    "sgd-momentum-wd": lambda ps: SGD(ps, lr=0.05, momentum=0.9, weight_decay=0.01),
    "sgd-nesterov": lambda ps: SGD(ps, lr=0.05, momentum=0.8, nesterov=True),
    "adam": lambda ps: Adam(ps, lr=1e-2),
    "adam-wd": lambda ps: Adam(ps, lr=1e-2, weight_decay=0.01),
}


def _train(make_opt, fuse, steps=4, dtype=np.float32, reload_at=None):
    model = _model(nn.ReLU).to(dtype=dtype)
    opt = make_opt(model.parameters())
    if fuse:
        opt.fuse()
    rng = np.random.default_rng(5)
    loss_fn = nn.CrossEntropyLoss()
    for s in range(steps):
        if s == reload_at:   # parameters and state replaced from outside: adopted again
            model.load_state_dict(model.state_dict())
            opt.load_state_dict(opt.state_dict())
        x = rng.standard_normal((4, 2, 6, 6)).astype(dtype)
        y = rng.integers(0, 4, size=4)
        opt.zero_grad()
        loss_fn(model(x), y)
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()
    return model, opt


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_flat_update_equals_the_per_parameter_updates_bitwise(where, name, dtype):
    with _on(where):
        m1, o1 = _train(OPTIMIZERS[name], False, dtype=dtype)
        m2, o2 = _train(OPTIMIZERS[name], True, dtype=dtype, reload_at=2)
    assert o2._flat is not None
    for k, v in m1.state_dict().items():
        assert np.array_equal(v, m2.state_dict()[k]), k
    s1, s2 = o1.state_dict()["state"], o2.state_dict()["state"]
    assert s1.keys() == s2.keys()
    for k in s1:
        assert np.array_equal(np.asarray(s1[k]), np.asarray(s2[k])), k


def test_fused_parameters_are_views_into_one_buffer_and_the_step_is_one_call(monkeypatch):
    model = _model(nn.ReLU)
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9).fuse()
    flat = opt._flat
    for p in model.parameters():
        assert np.shares_memory(p.data, flat.data)
    calls = []
    B = backends.cpu_backend()
    real = B.sgd_update
    monkeypatch.setattr(B, "sgd_update", lambda *a: (calls.append(a[0].shape), real(*a))[1])
    loss_fn = nn.CrossEntropyLoss()
    loss_fn(model(np.ones((2, 2, 6, 6), np.float32)), np.array([0, 1]))
    model.backward(loss_fn.backward(), input_grad=False)
    opt.step()
    assert calls == [(flat.total,)]
    for p in model.parameters():      # still views after the step
        assert np.shares_memory(p.data, flat.data) and np.shares_memory(p.grad, flat.grad)
