"""A whole network's training step, checked against the same step worked out
layer by layer with the loop definitions in gpucnn.reference.

For each optimizer configuration (plain SGD, momentum, Nesterov, weight decay,
Adam, Adam with weight decay) a small CNN takes several steps; after every step
the loss, every parameter's gradient and every updated parameter must equal the
reference computation.  Also here: gradient accumulation until zero_grad,
state_dict round trips (model and optimizer), seeding, float64 end to end and
``.to(dtype=...)``.
"""
import copy
import json

import numpy as np
import pytest

import gpucnn
from gpucnn import reference as R

# A network is described once, as a list of layer specs; it is built with the
# public API and evaluated with the reference functions from the same spec.
NET_CE = [  # input (N, 2, 5, 4), 4 classes
    ("conv", 2, 3, 3, 1, 1), ("relu",), ("maxpool", 2, None, 0), ("flatten",), ("linear", 12, 4),
]
NET_MSE = [  # input (N, 1, 5, 6), 2 outputs
    ("conv", 1, 2, (2, 3), 2, 1), ("sigmoid",), ("avgpool", 2, 1, 0), ("flatten",),
    ("linear", 8, 3), ("tanh",), ("linear", 3, 2),
]
NET_MIXED = [  # input (N, 2, 6, 5), 3 classes; overlapping max-pool with padding, no-bias conv
    ("conv", 2, 2, (3, 2), (1, 2), (1, 0), False), ("tanh",), ("maxpool", 3, 2, 1), ("flatten",),
    ("linear", 6, 3),
]


def build(spec, rng):
    layers = []
    for s in spec:
        kind = s[0]
        if kind == "conv":
            bias = s[6] if len(s) > 6 else True
            layers.append(gpucnn.Conv2d(s[1], s[2], s[3], stride=s[4], padding=s[5], bias=bias, rng=rng))
        elif kind == "linear":
            layers.append(gpucnn.Linear(s[1], s[2], rng=rng))
        elif kind == "maxpool":
            layers.append(gpucnn.MaxPool2d(s[1], stride=s[2], padding=s[3]))
        elif kind == "avgpool":
            layers.append(gpucnn.AvgPool2d(s[1], stride=s[2], padding=s[3]))
        else:
            layers.append({"relu": gpucnn.ReLU, "sigmoid": gpucnn.Sigmoid, "tanh": gpucnn.Tanh,
                           "flatten": gpucnn.Flatten}[kind]())
    return gpucnn.Sequential(*layers)


def reference_loss_and_grads(spec, params, x, target, loss):
    """Forward through the reference functions, keeping each layer's input, then
    the δ recursion backwards.  Returns (loss, {param name: gradient})."""
    inputs = []
    h = x
    for i, s in enumerate(spec):
        inputs.append(h)
        kind = s[0]
        if kind == "conv":
            h = R.conv2d(h, params[f"{i}.weight"], params.get(f"{i}.bias"), s[4], s[5])
        elif kind == "linear":
            h = R.linear(h, params[f"{i}.weight"], params.get(f"{i}.bias"))
        elif kind == "maxpool":
            h = R.maxpool2d(h, s[1], s[2], s[3])[0]
        elif kind == "avgpool":
            h = R.avgpool2d(h, s[1], s[2], s[3])
        elif kind == "flatten":
            h = h.reshape(h.shape[0], -1)
        else:
            h = {"relu": R.relu, "sigmoid": R.sigmoid, "tanh": R.tanh}[kind](h)
    if loss == "ce":
        value, delta = R.softmax_cross_entropy(h, target)
    else:
        value, delta = R.mse(h, target)
    grads = {}
    for i in reversed(range(len(spec))):
        s, xin = spec[i], inputs[i]
        kind = s[0]
        if kind == "conv":
            delta, dw, db = R.conv2d_backward(delta, xin, params[f"{i}.weight"], s[4], s[5])
            grads[f"{i}.weight"] = dw
            if f"{i}.bias" in params:
                grads[f"{i}.bias"] = db
        elif kind == "linear":
            delta, dw, db = R.linear_backward(delta, xin, params[f"{i}.weight"])
            grads[f"{i}.weight"], grads[f"{i}.bias"] = dw, db
        elif kind == "maxpool":
            delta = R.maxpool2d_backward(delta, xin, s[1], s[2], s[3])
        elif kind == "avgpool":
            delta = R.avgpool2d_backward(delta, xin.shape, s[1], s[2], s[3])
        elif kind == "flatten":
            delta = delta.reshape(xin.shape)
        else:
            delta = {"relu": R.relu_backward, "sigmoid": R.sigmoid_backward,
                     "tanh": R.tanh_backward}[kind](delta, xin)
    return value, grads


def batch(spec, step, n=3):
    rng = np.random.default_rng(100 + step)
    if spec is NET_CE:
        return rng.standard_normal((n, 2, 5, 4)), rng.integers(0, 4, size=n), "ce"
    if spec is NET_MSE:
        return rng.standard_normal((n, 1, 5, 6)), rng.standard_normal((n, 2)), "mse"
    return rng.standard_normal((n, 2, 6, 5)), rng.integers(0, 3, size=n), "ce"


OPTIMS = {
    "sgd": ("sgd", dict(lr=0.1)),
    "sgd-momentum": ("sgd", dict(lr=0.05, momentum=0.9)),
    "sgd-nesterov": ("sgd", dict(lr=0.05, momentum=0.8, nesterov=True)),
    "sgd-momentum-wd": ("sgd", dict(lr=0.05, momentum=0.9, weight_decay=0.01)),
    "sgd-wd": ("sgd", dict(lr=0.1, weight_decay=0.1)),
    "adam": ("adam", dict(lr=0.01)),
    "adam-wd-betas": ("adam", dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05)),
}


def make_optimizer(kind, params, kw):
    return gpucnn.SGD(params, **kw) if kind == "sgd" else gpucnn.Adam(params, **kw)


def reference_update(kind, kw, params, grads, state, step):
    for name in params:
        if kind == "sgd":
            params[name], state[name] = R.sgd_step(
                params[name], grads[name], state.get(name), kw["lr"], kw.get("momentum", 0.0),
                kw.get("weight_decay", 0.0), kw.get("nesterov", False))
        else:
            m, v = state.get(name, (None, None))
            params[name], m, v = R.adam_step(
                params[name], grads[name], m, v, step, kw["lr"], kw.get("betas", (0.9, 0.999)),
                kw.get("eps", 1e-8), kw.get("weight_decay", 0.0))
            state[name] = (m, v)


def npy(a):
    return np.asarray(gpucnn.asnumpy(a))


@pytest.mark.parametrize("opt_name", list(OPTIMS))
@pytest.mark.parametrize("spec", [NET_CE, NET_MSE, NET_MIXED], ids=["ce", "mse", "mixed"])
def test_training_steps_match_reference_float64(spec, opt_name):
    kind, kw = OPTIMS[opt_name]
    net = build(spec, np.random.default_rng(7)).to(device="cpu", dtype=np.float64)
    opt = make_optimizer(kind, net.parameters(), kw)
    loss_fn = gpucnn.CrossEntropyLoss() if batch(spec, 0)[2] == "ce" else gpucnn.MSELoss()
    ref_params = {k: v.astype(np.float64) for k, v in net.state_dict().items()}
    ref_state = {}
    named = dict(net.named_parameters())
    assert set(named) == set(ref_params)
    for step in range(1, 4):
        x, target, loss_kind = batch(spec, step)
        ref_loss, ref_grads = reference_loss_and_grads(spec, ref_params, x, target, loss_kind)
        opt.zero_grad()
        loss = loss_fn(net(x), target)
        net.backward(loss_fn.backward())
        assert loss == pytest.approx(ref_loss, rel=1e-12), f"step {step}"
        for name, p in named.items():
            np.testing.assert_allclose(npy(p.grad), ref_grads[name], rtol=1e-10, atol=1e-13,
                                       err_msg=f"grad {name}, step {step}")
        opt.step()
        reference_update(kind, kw, ref_params, ref_grads, ref_state, step)
        for name, p in named.items():
            assert p.data.dtype == np.float64
            np.testing.assert_allclose(npy(p.data), ref_params[name], rtol=1e-10, atol=1e-13,
                                       err_msg=f"param {name} after step {step}")
    # the parameters did move (otherwise the comparison above would be vacuous)
    start = build(spec, np.random.default_rng(7)).state_dict()
    assert any(not np.allclose(start[k], ref_params[k]) for k in start)


@pytest.mark.parametrize("opt_name", ["sgd-momentum", "adam"])
def test_training_steps_float32_stay_float32_and_match_reference(opt_name):
    kind, kw = OPTIMS[opt_name]
    net = build(NET_MSE, np.random.default_rng(8))
    assert net.dtype == np.float32
    opt = make_optimizer(kind, net.parameters(), kw)
    loss_fn = gpucnn.MSELoss()
    ref_params = {k: v.astype(np.float64) for k, v in net.state_dict().items()}
    ref_state = {}
    named = dict(net.named_parameters())
    for step in range(1, 3):
        x, t, _ = batch(NET_MSE, step)
        x32, t32 = x.astype(np.float32), t.astype(np.float32)
        ref_loss, ref_grads = reference_loss_and_grads(NET_MSE, ref_params, x32, t32, "mse")
        opt.zero_grad()
        y = net(x32)
        assert y.dtype == np.float32
        loss = loss_fn(y, t32)
        g = loss_fn.backward()
        assert g.dtype == np.float32
        net.backward(g)
        assert loss == pytest.approx(ref_loss, rel=1e-5)
        for name, p in named.items():
            assert p.grad.dtype == np.float32, name
            np.testing.assert_allclose(npy(p.grad), ref_grads[name], rtol=1e-4, atol=1e-6, err_msg=name)
        opt.step()
        reference_update(kind, kw, ref_params, ref_grads, ref_state, step)
        for name, p in named.items():
            assert p.data.dtype == np.float32, f"{name} became {p.data.dtype} after {opt_name}"
            np.testing.assert_allclose(npy(p.data), ref_params[name], rtol=1e-4, atol=1e-5, err_msg=name)


# ---------------------------------------------------------------------------
# Gradient accumulation
# ---------------------------------------------------------------------------

def _fresh_ce_net():
    return build(NET_CE, np.random.default_rng(9)).to(dtype=np.float64)


def _backprop(net, x, labels):
    fn = gpucnn.CrossEntropyLoss()
    fn(net(x), labels)
    net.backward(fn.backward())


def test_gradients_accumulate_until_zero_grad():
    net = _fresh_ce_net()
    for p in net.parameters():
        assert p.grad is None
    x1, l1, _ = batch(NET_CE, 1)
    x2, l2, _ = batch(NET_CE, 2)
    _backprop(net, x1, l1)
    g1 = {k: npy(p.grad).copy() for k, p in net.named_parameters()}
    net.zero_grad()
    _backprop(net, x2, l2)
    g2 = {k: npy(p.grad).copy() for k, p in net.named_parameters()}
    net.zero_grad()
    for p in net.parameters():
        assert p.grad is None or not np.any(npy(p.grad))
    _backprop(net, x1, l1)
    _backprop(net, x2, l2)
    for k, p in net.named_parameters():
        np.testing.assert_allclose(npy(p.grad), g1[k] + g2[k], rtol=1e-12, atol=1e-15, err_msg=k)
        assert not np.allclose(g1[k], g2[k])
    _backprop(net, x1, l1)
    for k, p in net.named_parameters():
        np.testing.assert_allclose(npy(p.grad), 2 * g1[k] + g2[k], rtol=1e-12, atol=1e-15, err_msg=k)


def test_optimizer_zero_grad_and_step_skips_parameters_without_grad():
    net = _fresh_ce_net()
    opt = gpucnn.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    x, l, _ = batch(NET_CE, 1)
    _backprop(net, x, l)
    opt.zero_grad()
    for p in net.parameters():
        assert p.grad is None or not np.any(npy(p.grad))
    before = net.state_dict()
    opt.step()   # as torch (zero_grad sets grads to None): a parameter without a gradient is left alone
    after = net.state_dict()
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)


def test_backward_twice_without_new_forward_accumulates_same_gradient():
    net = _fresh_ce_net()
    x, l, _ = batch(NET_CE, 3)
    fn = gpucnn.CrossEntropyLoss()
    fn(net(x), l)
    g = fn.backward()
    net.backward(g)
    once = {k: npy(p.grad).copy() for k, p in net.named_parameters()}
    net.backward(g)
    for k, p in net.named_parameters():
        np.testing.assert_allclose(npy(p.grad), 2 * once[k], rtol=1e-12, atol=1e-15, err_msg=k)


# ---------------------------------------------------------------------------
# state_dict round trips
# ---------------------------------------------------------------------------

def test_model_state_dict_names_copies_and_roundtrip():
    net = build(NET_MSE, np.random.default_rng(10))
    sd = net.state_dict()
    assert list(sd) == ["0.weight", "0.bias", "4.weight", "4.bias", "6.weight", "6.bias"]
    assert all(type(v) is np.ndarray for v in sd.values())
    assert sd["0.weight"].shape == (2, 1, 2, 3) and sd["4.weight"].shape == (3, 8)
    sd["0.weight"][...] = 123.0                          # a copy: the model does not change
    assert not np.any(npy(net[0].weight.data) == 123.0)
    other = build(NET_MSE, np.random.default_rng(11))
    x = np.random.default_rng(12).standard_normal((2, 1, 5, 6)).astype(np.float32)
    assert not np.allclose(npy(other(x)), npy(net(x)))
    sd = net.state_dict()
    other.load_state_dict(sd)
    np.testing.assert_array_equal(npy(other(x)), npy(net(x)))
    sd["4.bias"][...] = 5.0                              # loading copied too
    np.testing.assert_array_equal(npy(other(x)), npy(net(x)))
    for (k, p), (k2, p2) in zip(net.named_parameters(), other.named_parameters()):
        assert k == k2 and p.data is not p2.data


def _assert_plain(obj, path="state"):
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert isinstance(k, (str, int)), f"{path}: key {k!r}"
            _assert_plain(v, f"{path}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _assert_plain(v, f"{path}[{i}]")
    else:
        assert obj is None or isinstance(obj, (bool, int, float, str, np.ndarray, np.number)), \
            f"{path} is a {type(obj).__name__}"


def _assert_same_tree(a, b, path="state"):
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _assert_same_tree(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b)):
            _assert_same_tree(u, v, f"{path}[{i}]")
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=f"{path} was modified")
    else:
        assert a == b, path


@pytest.mark.parametrize("opt_name", ["sgd-momentum", "sgd-nesterov", "adam-wd-betas"])
def test_optimizer_state_dict_roundtrip_continues_identically(opt_name):
    kind, kw = OPTIMS[opt_name]
    net = build(NET_CE, np.random.default_rng(13)).to(dtype=np.float64)
    opt = make_optimizer(kind, net.parameters(), kw)
    for step in (1, 2):
        x, l, _ = batch(NET_CE, step)
        opt.zero_grad()
        _backprop(net, x, l)
        opt.step()
    model_sd, opt_sd = net.state_dict(), opt.state_dict()
    _assert_plain(opt_sd)
    # a fresh model and optimizer (different init, different hyper-parameters) pick up where it stopped
    net2 = build(NET_CE, np.random.default_rng(14)).to(dtype=np.float64)
    other_kw = dict(kw, lr=kw["lr"] * 3)
    opt2 = make_optimizer(kind, net2.parameters(), other_kw)
    net2.load_state_dict(model_sd)
    opt_sd_snapshot = copy.deepcopy(opt_sd)
    opt2.load_state_dict(opt_sd)
    x, l, _ = batch(NET_CE, 3)
    for n, o in ((net, opt), (net2, opt2)):
        o.zero_grad()
        _backprop(n, x, l)
        o.step()
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(net2.state_dict()[k], v, err_msg=k)
    # stepping the loaded optimizer must not write into the dict it was loaded from
    _assert_same_tree(opt_sd, opt_sd_snapshot)
    # and a fresh optimizer *without* the state would not have (momentum/moments matter)
    net3 = build(NET_CE, np.random.default_rng(14)).to(dtype=np.float64)
    net3.load_state_dict(model_sd)
    opt3 = make_optimizer(kind, net3.parameters(), kw)
    opt3.zero_grad()
    _backprop(net3, x, l)
    opt3.step()
    assert not np.allclose(net3.state_dict()["0.weight"], net.state_dict()["0.weight"])


# ---------------------------------------------------------------------------
# Seeding and initialization
# ---------------------------------------------------------------------------

def _net_default_rng():
    return gpucnn.Sequential(gpucnn.Conv2d(3, 4, 3), gpucnn.ReLU(), gpucnn.Flatten(), gpucnn.Linear(16, 5))


@pytest.mark.parametrize("seed", [0, 123])
def test_manual_seed_reproduces_initialization(seed):
    _net_default_rng()                   # whatever happened before, the seed decides
    gpucnn.manual_seed(seed)
    a = _net_default_rng().state_dict()
    _net_default_rng()
    gpucnn.manual_seed(seed)
    b = _net_default_rng().state_dict()
    gpucnn.manual_seed(seed + 1)
    c = _net_default_rng().state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert not np.array_equal(a["0.weight"], c["0.weight"])
    # two nets built one after the other from one seed differ (the generator advances)
    gpucnn.manual_seed(seed)
    _net_default_rng()
    d = _net_default_rng().state_dict()
    assert not np.array_equal(a["0.weight"], d["0.weight"])


def test_rng_state_is_json_serialisable_and_restores():
    gpucnn.manual_seed(5)
    _net_default_rng()
    state = json.loads(json.dumps(gpucnn.get_rng_state()))
    a = _net_default_rng().state_dict()
    _net_default_rng()
    gpucnn.set_rng_state(state)
    b = _net_default_rng().state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_rng_argument_is_used_and_leaves_the_global_generator_alone():
    gpucnn.manual_seed(6)
    before = json.dumps(gpucnn.get_rng_state())
    a = gpucnn.Conv2d(2, 3, 3, rng=np.random.default_rng(42))
    b = gpucnn.Conv2d(2, 3, 3, rng=np.random.default_rng(42))
    assert json.dumps(gpucnn.get_rng_state()) == before
    np.testing.assert_array_equal(npy(a.weight.data), npy(b.weight.data))
    np.testing.assert_array_equal(npy(a.bias.data), npy(b.bias.data))


@pytest.mark.parametrize("layer, fan_in", [(lambda: gpucnn.Conv2d(3, 16, (5, 4)), 3 * 5 * 4),
                                           (lambda: gpucnn.Linear(50, 40), 50)], ids=["Conv2d", "Linear"])
def test_default_initialization_is_pytorch_like(layer, fan_in):
    # PyTorch: weight kaiming_uniform(a=sqrt(5)) and bias both U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    gpucnn.manual_seed(0)
    m = layer()
    bound = 1 / np.sqrt(fan_in)
    w, b = npy(m.weight.data), npy(m.bias.data)
    assert w.dtype == np.float32 and b.dtype == np.float32
    assert np.abs(w).max() <= bound and np.abs(b).max() <= bound
    assert np.abs(w).max() > 0.95 * bound                       # spread over the whole interval
    assert abs(w.std() - bound / np.sqrt(3)) < 0.1 * bound      # std of U(-a, a) is a/sqrt(3)


# ---------------------------------------------------------------------------
# dtypes
# ---------------------------------------------------------------------------

def test_float64_end_to_end_and_to_dtype():
    net = build(NET_MIXED, np.random.default_rng(15))
    assert net.dtype == np.float32
    assert net.to(dtype=np.float64) is net
    assert net.dtype == np.float64 and net.device == "cpu"
    assert all(p.data.dtype == np.float64 for p in net.parameters())
    x, l, _ = batch(NET_MIXED, 1)
    fn = gpucnn.CrossEntropyLoss()
    for opt in (gpucnn.SGD(net.parameters(), lr=0.1, momentum=0.5), gpucnn.Adam(net.parameters())):
        opt.zero_grad()
        y = net(x)
        assert y.dtype == np.float64
        fn(y, l)
        g = fn.backward()
        assert g.dtype == np.float64
        dx = net.backward(g)
        assert dx.dtype == np.float64 and dx.shape == x.shape
        assert all(p.grad.dtype == np.float64 for p in net.parameters())
        opt.step()
        assert all(p.data.dtype == np.float64 for p in net.parameters())
    # back to float32: values rounded, gradients cast too
    sd64 = net.state_dict()
    assert net.to(dtype=np.float32) is net
    assert net.dtype == np.float32
    for k, p in net.named_parameters():
        assert p.data.dtype == np.float32
        assert p.grad is None or p.grad.dtype == np.float32
        np.testing.assert_array_equal(npy(p.data), sd64[k].astype(np.float32))
    y = net(x.astype(np.float32))
    assert y.dtype == np.float32


def test_to_accepts_dtype_names_and_device_cpu():
    net = _net_default_rng()
    assert net.to(device="cpu") is net and net.device == "cpu"
    net.to(dtype="float64")
    assert net.dtype == np.float64
    net.to(device="cpu", dtype=np.dtype("float32"))
    assert net.dtype == np.float32


def test_train_eval_modes_reach_every_layer_and_change_nothing_else():
    net = build(NET_CE, np.random.default_rng(16)).to(dtype=np.float64)
    x, _, _ = batch(NET_CE, 1)
    y_train = npy(net(x)).copy()
    assert net.eval() is net
    assert all(m.training is False for m in net)
    np.testing.assert_array_equal(npy(net(x)), y_train)   # no dropout/batch-norm: same output
    assert net.train() is net
    assert net.training and all(m.training for m in net)


# ---------------------------------------------------------------------------
# Forward/backward interleavings a fast backend might get wrong (saved inputs,
# cached im2col columns keyed on the input array)
# ---------------------------------------------------------------------------

def _grads_of(net):
    return {k: npy(p.grad).copy() for k, p in net.named_parameters()}


def _assert_grads_match_reference(net, spec, x, target, loss_kind):
    params = {k: v.astype(np.float64) for k, v in net.state_dict().items()}
    _, ref = reference_loss_and_grads(spec, params, x, target, loss_kind)
    for k, g in _grads_of(net).items():
        np.testing.assert_allclose(g, ref[k], rtol=1e-10, atol=1e-13, err_msg=k)


def test_backward_uses_the_last_forward():
    net = build(NET_MIXED, np.random.default_rng(17)).to(dtype=np.float64)
    x1, l1, _ = batch(NET_MIXED, 1)
    x2, l2, _ = batch(NET_MIXED, 2)
    fn = gpucnn.CrossEntropyLoss()
    net(x1)
    fn(net(x2), l2)
    net.backward(fn.backward())
    _assert_grads_match_reference(net, NET_MIXED, x2, l2, "ce")


def test_two_models_on_the_same_input_array_backward_in_any_order():
    spec = [("conv", 2, 3, 3, 1, 1), ("relu",), ("flatten",), ("linear", 60, 2)]
    x = np.random.default_rng(18).standard_normal((2, 2, 5, 4))
    labels = np.array([1, 0])
    a = build(spec, np.random.default_rng(19)).to(dtype=np.float64)
    b = build(spec, np.random.default_rng(20)).to(dtype=np.float64)
    fa, fb = gpucnn.CrossEntropyLoss(), gpucnn.CrossEntropyLoss()
    fa(a(x), labels)
    fb(b(x), labels)
    b.backward(fb.backward())            # reverse order
    a.backward(fa.backward())
    _assert_grads_match_reference(a, spec, x, labels, "ce")
    _assert_grads_match_reference(b, spec, x, labels, "ce")


def test_a_new_array_with_the_same_shape_is_not_mistaken_for_the_old_one():
    spec = [("conv", 2, 2, 3, 2, 1), ("flatten",), ("linear", 2 * 3 * 2, 2)]
    net = build(spec, np.random.default_rng(21)).to(dtype=np.float64)
    labels = np.array([0, 1])
    fn = gpucnn.CrossEntropyLoss()
    for step in range(4):                # fresh arrays, often at a recycled address
        x = np.random.default_rng(30 + step).standard_normal((2, 2, 5, 4))
        net.zero_grad()
        fn(net(x), labels)
        net.backward(fn.backward())
        _assert_grads_match_reference(net, spec, x, labels, "ce")
        del x
    buf = np.empty((2, 2, 5, 4))         # one buffer refilled in place between steps
    for step in range(3):
        buf[...] = np.random.default_rng(40 + step).standard_normal(buf.shape)
        net.zero_grad()
        fn(net(buf), labels)
        net.backward(fn.backward())
        _assert_grads_match_reference(net, spec, buf, labels, "ce")
    # a forward with no backward (evaluation), the buffer refilled, then a training step
    net(buf)
    buf[...] = np.random.default_rng(50).standard_normal(buf.shape)
    net.zero_grad()
    fn(net(buf), labels)
    net.backward(fn.backward())
    _assert_grads_match_reference(net, spec, buf, labels, "ce")


def test_backward_without_input_grad_fills_the_same_parameter_gradients():
    """Sequential.backward(g, input_grad=False) skips only the input's δ."""
    import numpy as np
    import gpucnn

    def net():
        gpucnn.manual_seed(3)
        return gpucnn.Sequential(gpucnn.Conv2d(2, 3, 3, padding=1), gpucnn.ReLU(),
                                 gpucnn.MaxPool2d(2), gpucnn.Flatten(), gpucnn.Linear(12, 4))

    x = np.random.default_rng(0).standard_normal((2, 2, 4, 4)).astype(np.float32)
    g = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    full, skip = net(), net()
    full(x)
    dx = full.backward(g)
    skip(x)
    assert skip.backward(g, input_grad=False) is None
    assert dx is not None and dx.shape == x.shape
    for (name, a), (_, b) in zip(full.named_parameters(), skip.named_parameters()):
        np.testing.assert_array_equal(a.grad, b.grad, err_msg=name)
    # a parameterless first layer is simply not visited
    lead = gpucnn.Sequential(gpucnn.Sigmoid(), gpucnn.Linear(3, 2))
    lead(np.ones((1, 3), np.float32))
    assert lead.backward(np.ones((1, 2), np.float32), input_grad=False) is None
    assert lead[1].weight.grad is not None
