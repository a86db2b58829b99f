"""PyTorch twins of gpucnn's ResNets and VGG-BN (``gpucnn.models``), for the benchmarks.

Same modules in the same places, so ``state_dict`` keys match one for one and a torch
model starts from gpucnn's weights with ``load_state_dict``:

    g = gpucnn.models.resnet20()
    t = torch_model("resnet20", g.state_dict())

Not part of the package (gpucnn does not depend on torch).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F


class Residual(nn.Module):
    """main(x) + shortcut(x); ``shortcut=None`` is the identity (gpucnn.Residual)."""

    def __init__(self, main, shortcut=None):
        super().__init__()
        self.main = main
        self.shortcut = shortcut

    def forward(self, x):
        return self.main(x) + (x if self.shortcut is None else self.shortcut(x))


class ShortcutA(nn.Module):
    """Option A: x[:, :, ::s, ::s] with (out - in) // 2 zero channels before, the rest after."""

    def __init__(self, in_channels, out_channels, stride=2):
        super().__init__()
        self.stride = stride
        self.before = (out_channels - in_channels) // 2
        self.after = out_channels - in_channels - self.before

    def forward(self, x):
        s = self.stride
        return F.pad(x[:, :, ::s, ::s], (0, 0, 0, 0, self.before, self.after))


def _conv3x3(c_in, c_out, stride=1):
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


def _block(c_in, c_out, stride, shortcut):
    main = nn.Sequential(_conv3x3(c_in, c_out, stride), nn.BatchNorm2d(c_out), nn.ReLU(),
                         _conv3x3(c_out, c_out), nn.BatchNorm2d(c_out))
    short = None
    if stride != 1 or c_in != c_out:
        short = (ShortcutA(c_in, c_out, stride) if shortcut == "A" else
                 nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                               nn.BatchNorm2d(c_out)))
    return nn.Sequential(Residual(main, short), nn.ReLU())


def resnet(depth, in_channels=3, num_classes=10, shortcut="A"):
    n = (depth - 2) // 6
    layers = [_conv3x3(in_channels, 16), nn.BatchNorm2d(16), nn.ReLU()]
    c_in = 16
    for stage, c_out in enumerate((16, 32, 64)):
        blocks = []
        for i in range(n):
            blocks.append(_block(c_in, c_out, 2 if stage > 0 and i == 0 else 1, shortcut))
            c_in = c_out
        layers.append(nn.Sequential(*blocks))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes)]
    return nn.Sequential(*layers)


def vgg_bn(in_channels=3, num_classes=10, widths=(64, 128, 256)):
    layers, c_in = [], in_channels
    for i, c_out in enumerate(widths):
        for _ in range(2):
            layers += [_conv3x3(c_in, c_out), nn.BatchNorm2d(c_out), nn.ReLU()]
            c_in = c_out
        if i < len(widths) - 1:
            layers.append(nn.MaxPool2d(2))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)]
    return nn.Sequential(*layers)


def torch_model(name, state_dict=None, in_channels=3, num_classes=10, shortcut="A",
                dtype=torch.float32):
    """The torch twin of gpucnn model ``name`` ("resnet20/32/44/56", "vgg_bn"), loaded from
    a gpucnn ``state_dict`` (numpy arrays) when given."""
    if name.startswith("resnet"):
        m = resnet(int(name[6:]), in_channels, num_classes, shortcut)
    elif name == "vgg_bn":
        m = vgg_bn(in_channels, num_classes)
    else:
        raise ValueError(f"no torch twin for {name!r}")
    m = m.to(dtype)
    if state_dict is not None:
        m.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()})
    return m
