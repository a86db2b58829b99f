"""The CIFAR ResNets (He et al. 2016, section 4.2) and VGG-BN of gpucnn.models: sizes,
structure, seeded init, and (with torch) the same forward, gradients and running statistics
as the PyTorch twin in benchmarks/torch_resnet.py."""
import os
import sys

import numpy as np
import pytest

import gpucnn
from gpucnn.models import MODELS, build_model, resnet, resnet20, vgg_bn

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def n_params(model):
    return sum(int(p.data.size) for p in model.parameters())


@pytest.mark.parametrize("name, count", [("resnet20", 269_722), ("resnet32", 464_154),
                                         ("resnet44", 658_586), ("resnet56", 853_018)])
def test_parameter_counts_option_a(name, count):
    # the paper's Table 6: 0.27 M, 0.46 M, 0.66 M, 0.85 M
    assert n_params(build_model(name, (3, 32, 32), 10)) == count


def test_option_b_adds_two_projections():
    m = resnet20(shortcut="B")
    # 1x1 conv 16->32 + BN(32), 1x1 conv 32->64 + BN(64)
    assert n_params(m) == 269_722 + 16 * 32 + 2 * 32 + 32 * 64 + 2 * 64
    keys = m.state_dict()
    assert "4.0.0.shortcut.0.weight" in keys and "5.0.0.shortcut.1.running_var" in keys
    assert not any(k.startswith("3.") and "shortcut" in k for k in keys)   # identity in stage 1


def test_resnet20_structure():
    m = resnet20()
    convs = [l for l in m.modules() if isinstance(l, gpucnn.Conv2d)]
    assert len(convs) == 19 and all(c.bias is None for c in convs)          # 19 conv + 1 fc = 20
    assert sum(isinstance(l, gpucnn.BatchNorm2d) for l in m.modules()) == 19
    shortcuts = [l for l in m.modules() if isinstance(l, gpucnn.ShortcutA)]
    assert [(s.in_channels, s.out_channels, s.stride) for s in shortcuts] == [(16, 32, (2, 2)),
                                                                           (32, 64, (2, 2))]
    assert [c.stride for c in convs].count((2, 2)) == 2
    assert isinstance(m[6], gpucnn.AdaptiveAvgPool2d) and m[8].weight.shape == (10, 64)


def test_init_kaiming_normal_and_seeded():
    gpucnn.manual_seed(3)
    a = resnet20().state_dict()
    gpucnn.manual_seed(3)
    b = resnet20().state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    w = np.concatenate([a[k].ravel() for k in a if k.startswith("5.") and k.endswith("main.3.weight")])
    assert abs(w.std() / np.sqrt(2.0 / (64 * 9)) - 1) < 0.05 and abs(w.mean()) < 0.005
    bn = [k for k in a if k.endswith("1.weight") and a[k].ndim == 1]
    assert bn and all((a[k] == 1).all() for k in bn)
    assert all(a[k].dtype == np.float32 for k in a if not k.endswith("num_batches_tracked"))


@pytest.mark.parametrize("name", ["resnet20", "vgg_bn"])
def test_forward_backward_shapes(name):
    m = build_model(name, (3, 16, 16), 7)
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    out = m(x)
    assert out.shape == (2, 7)
    m.backward(np.ones_like(out), input_grad=False)
    assert all(p.grad is not None and p.grad.shape == p.shape for p in m.parameters())


def test_registered_and_bad_arguments():
    assert {"resnet20", "resnet32", "resnet44", "resnet56", "vgg_bn"} <= set(MODELS)
    with pytest.raises(ValueError, match="6n\\+2"):
        resnet(21)
    with pytest.raises(ValueError, match="shortcut"):
        resnet(20, shortcut="C")
    with pytest.raises(ValueError, match="multiple of 4"):
        resnet20((3, 30, 30))
    assert vgg_bn((1, 8, 8), 3)(np.zeros((2, 1, 8, 8), np.float32)).shape == (2, 3)


@pytest.mark.parametrize("name, shortcut", [("resnet20", "A"), ("resnet20", "B"), ("vgg_bn", "A")])
def test_matches_torch_float64(name, shortcut):
    torch = pytest.importorskip("torch")
    sys.path.insert(0, BENCH)
    try:
        from torch_resnet import torch_model
    finally:
        sys.path.remove(BENCH)
    gpucnn.manual_seed(1)
    g = build_model(name, (3, 8, 8), 10) if shortcut == "A" else resnet20((3, 8, 8), shortcut="B")
    g.to(dtype=np.float64)
    t = torch_model(name, g.state_dict(), shortcut=shortcut, dtype=torch.float64)
    rng = np.random.default_rng(2)
    loss_g, loss_t = gpucnn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()
    for _ in range(3):    # several training steps of forward/backward (no update)
        x = rng.standard_normal((4, 3, 8, 8))
        y = rng.integers(0, 10, 4)
        g.zero_grad()
        t.zero_grad()
        out = g(x)
        lg = loss_g(out, y)
        dx = g.backward(loss_g.backward())
        xt = torch.from_numpy(x).requires_grad_()
        lt = loss_t(t(xt), torch.from_numpy(y))
        lt.backward()
        assert lg == pytest.approx(lt.item(), rel=1e-12)
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-12)
        grads = dict(t.named_parameters())
        for k, p in g.named_parameters():
            np.testing.assert_allclose(p.grad, grads[k].grad.numpy(), rtol=1e-9, atol=1e-12,
                                       err_msg=k)
    ts = t.state_dict()
    for k, v in g.state_dict().items():     # running statistics after three batches
        np.testing.assert_allclose(v, ts[k].numpy(), rtol=1e-9, atol=1e-12, err_msg=k)
    g.eval()
    t.eval()
    x = rng.standard_normal((3, 3, 8, 8))
    np.testing.assert_allclose(g(x), t(torch.from_numpy(x)).detach().numpy(), rtol=1e-9,
                               atol=1e-12)
