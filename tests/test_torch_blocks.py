"""Issue 10's layers against PyTorch (skipped without torch): float64 forward, input gradient
and parameter gradients to 1e-9 relative; BatchNorm's running statistics after several steps.

``measure()`` returns every comparison's max relative error (max |gpucnn − torch| / max |torch|);
``benchmarks/compare_torch_layers.py`` prints them for benchmarks/RESULTS.md.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import gpucnn  # noqa: E402

TOL = 1e-9


def _rel(a, b):
    a = np.asarray(gpucnn.asnumpy(a), dtype=np.float64)
    b = b.detach().numpy() if hasattr(b, "detach") else np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = max(float(np.max(np.abs(b))) if b.size else 0.0, 1e-300)
    return float(np.max(np.abs(a - b))) / scale if a.size else 0.0


def _copy_weights(ours, theirs):
    """gpucnn's state_dict into the torch module (same keys, buffers included)."""
    sd = {k: torch.from_numpy(np.array(v)) for k, v in ours.state_dict().items()}
    theirs.load_state_dict(sd)


def _step(ours, theirs, x, seed, errors, label, loss=None):
    """One forward + backward of both; records forward / input-grad / parameter-grad errors."""
    rng = np.random.default_rng(seed)
    y = ours(x)
    xt = torch.tensor(x, requires_grad=True)
    yt = theirs(xt)
    errors[f"{label} forward"] = max(errors.get(f"{label} forward", 0), _rel(y, yt))
    g = rng.standard_normal(y.shape)
    ours.zero_grad()
    theirs.zero_grad()
    dx = ours.backward(g)
    yt.backward(torch.from_numpy(g))
    errors[f"{label} input grad"] = max(errors.get(f"{label} input grad", 0), _rel(dx, xt.grad))
    tp = dict(theirs.named_parameters())
    worst = 0.0
    for name, p in ours.named_parameters():
        worst = max(worst, _rel(p.grad, tp[name].grad))
    if tp:
        errors[f"{label} parameter grads"] = max(errors.get(f"{label} parameter grads", 0), worst)


def _buffers(ours, theirs, errors, label):
    tb = dict(theirs.named_buffers())
    worst = 0.0
    for name, b in ours.named_buffers():
        if name.endswith("num_batches_tracked"):
            assert int(b.data) == int(tb[name]), name
        else:
            worst = max(worst, _rel(b.data, tb[name]))
    errors[f"{label} running stats"] = worst


def _bn_pair(cls_ours, cls_torch, c, **kw):
    ours = cls_ours(c, **kw).to(dtype=np.float64)
    if ours.affine:
        rng = np.random.default_rng(c)
        ours.weight.data[...] = rng.standard_normal(c) * 0.5 + 1
        ours.bias.data[...] = rng.standard_normal(c)
    theirs = cls_torch(c, **kw).double()
    _copy_weights(ours, theirs)
    return ours, theirs


def _batchnorm(errors):
    cases = [("BatchNorm2d", gpucnn.BatchNorm2d, torch.nn.BatchNorm2d, (8, 4, 6, 5), {}),
             ("BatchNorm2d momentum=None", gpucnn.BatchNorm2d, torch.nn.BatchNorm2d, (4, 3, 5, 5),
              dict(momentum=None)),
             ("BatchNorm2d affine=False", gpucnn.BatchNorm2d, torch.nn.BatchNorm2d, (4, 3, 5, 5),
              dict(affine=False)),
             ("BatchNorm1d (N, C)", gpucnn.BatchNorm1d, torch.nn.BatchNorm1d, (16, 10), {}),
             ("BatchNorm1d (N, C, L)", gpucnn.BatchNorm1d, torch.nn.BatchNorm1d, (6, 5, 7),
              dict(eps=1e-3, momentum=0.3))]
    for label, ours_cls, torch_cls, shape, kw in cases:
        ours, theirs = _bn_pair(ours_cls, torch_cls, shape[1], **kw)
        rng = np.random.default_rng(len(label))
        for step in range(5):
            x = rng.standard_normal(shape) * (1 + step) + step
            _step(ours, theirs, x, step, errors, f"{label} train")
        _buffers(ours, theirs, errors, f"{label} after 5 steps:")
        ours.eval()
        theirs.eval()
        _step(ours, theirs, rng.standard_normal(shape) + 2, 9, errors, f"{label} eval")


def _pool_identity_dropout(errors):
    rng = np.random.default_rng(1)
    for size, shape in ((1, (4, 6, 8, 8)), ((2, 4), (2, 3, 6, 8))):
        _step(gpucnn.AdaptiveAvgPool2d(size), torch.nn.AdaptiveAvgPool2d(size),
              rng.standard_normal(shape), 2, errors, f"AdaptiveAvgPool2d({size})")
    _step(gpucnn.Identity(), torch.nn.Identity(), rng.standard_normal((3, 4)), 3, errors, "Identity")
    ours, theirs = gpucnn.Dropout(0.3).eval(), torch.nn.Dropout(0.3).eval()
    _step(ours, theirs, rng.standard_normal((3, 4)), 4, errors, "Dropout eval")


class _LambdaA(torch.nn.Module):
    """The option-A shortcut of the common CIFAR ResNet code (akamaster/pytorch_resnet_cifar10)."""

    def __init__(self, planes):
        super().__init__()
        self.planes = planes

    def forward(self, x):
        p = self.planes // 4
        return torch.nn.functional.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p, p), "constant", 0)


class _TorchResidual(torch.nn.Module):
    def __init__(self, main, shortcut):
        super().__init__()
        self.main = main
        self.shortcut = shortcut if shortcut is not None else torch.nn.Identity()

    def forward(self, x):
        return self.main(x) + self.shortcut(x)


def _branch(lib, c_in, c_out, stride):
    nn = gpucnn if lib == "ours" else torch.nn
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out))


def _residual(errors):
    for kind, (c_in, c_out, s) in (("identity", (4, 4, 1)), ("option A", (4, 8, 2)),
                                   ("option B", (4, 8, 2))):
        gpucnn.manual_seed(5)
        if kind == "identity":
            sc_ours, sc_torch = None, None
        elif kind == "option A":
            sc_ours, sc_torch = gpucnn.ShortcutA(c_in, c_out), _LambdaA(c_out)
        else:
            sc_ours = gpucnn.Sequential(gpucnn.Conv2d(c_in, c_out, 1, stride=s, bias=False),
                                        gpucnn.BatchNorm2d(c_out))
            sc_torch = torch.nn.Sequential(torch.nn.Conv2d(c_in, c_out, 1, stride=s, bias=False),
                                           torch.nn.BatchNorm2d(c_out))
        ours = gpucnn.Sequential(gpucnn.Residual(_branch("ours", c_in, c_out, s), sc_ours),
                                 gpucnn.ReLU()).to(dtype=np.float64)
        theirs = torch.nn.Sequential(_TorchResidual(_branch("torch", c_in, c_out, s), sc_torch),
                                     torch.nn.ReLU()).double()
        _copy_weights(ours, theirs)
        rng = np.random.default_rng(6)
        for step in range(3):
            _step(ours, theirs, rng.standard_normal((4, c_in, 8, 8)), step, errors,
                  f"Residual {kind} train")
        _buffers(ours, theirs, errors, f"Residual {kind} after 3 steps:")
        ours.eval()
        theirs.eval()
        _step(ours, theirs, rng.standard_normal((4, c_in, 8, 8)), 7, errors, f"Residual {kind} eval")


def _label_smoothing(errors):
    rng = np.random.default_rng(8)
    for eps in (0.0, 0.1, 0.25, 1.0):
        z = rng.standard_normal((32, 10)) * 3
        labels = rng.integers(0, 10, size=32)
        ours = gpucnn.CrossEntropyLoss(label_smoothing=eps)
        loss = ours(z, labels)
        zt = torch.tensor(z, requires_grad=True)
        lt = torch.nn.CrossEntropyLoss(label_smoothing=eps)(zt, torch.from_numpy(labels))
        lt.backward()
        errors[f"CrossEntropyLoss(label_smoothing={eps}) loss"] = abs(loss - lt.item()) / abs(lt.item())
        errors[f"CrossEntropyLoss(label_smoothing={eps}) grad"] = _rel(ours.backward(), zt.grad)


def measure():
    """{comparison: max relative error} for every layer of issue 10, float64, CPU backend."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        errors = {}
        _batchnorm(errors)
        _pool_identity_dropout(errors)
        _residual(errors)
        _label_smoothing(errors)
    finally:
        torch.set_default_dtype(previous)
    return errors


def test_issue10_layers_match_pytorch_in_float64():
    errors = measure()
    assert len(errors) > 40
    bad = {k: v for k, v in errors.items() if not v < TOL}
    assert not bad, f"relative errors above {TOL:g}: {bad}"
