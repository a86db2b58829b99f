"""Ready-made networks for the bundled datasets.

Each builder takes the input shape ``(C, H, W)`` and the number of classes, so
the same name works for the 8x8 digits, 28x28 MNIST and 3x32x32 CIFAR-10:

* :func:`lenet` -- LeNet-5 style: two 5x5 convolutions each followed by ReLU and
  2x2 max pooling, then three fully connected layers (120, 84, classes).  On
  images smaller than 16x16 both convolutions are padded ("same" size) so that
  the 8x8 digits still pool twice.
* :func:`cifar` -- a small VGG-style net: 3x3 convolutions (32, 32, 64, 64
  channels), max pooling after each pair, a 256-unit hidden layer.  Built for
  CIFAR-10, it is also the digits default: LeNet's 6 and 16 channels top out
  near 96 % on the 8x8 digits, this net reaches about 98 % in 15 quick epochs.
* :func:`mlp` -- flatten, two hidden layers (256, 128) with ReLU.
* :func:`resnet20`, :func:`resnet32`, :func:`resnet44`, :func:`resnet56` -- the CIFAR
  ResNets of He et al., "Deep Residual Learning for Image Recognition" (2016), section 4.2:
  6n+2 layers (n = 3, 5, 7, 9); option-A (parameter-free) shortcuts by default, option B
  (1x1 convolution + batch norm) with ``shortcut="B"``.  ResNet-20 option A has 269,722
  parameters, as the paper's Table 6 (0.27 M).
* :func:`vgg_bn` -- a VGG-style net with batch norm: [conv3x3-BN-ReLU] x2 at 64, 128 and
  256 channels, max pooling between the stages, global average pooling, one linear layer.

:func:`build_model` maps a name to a builder; :data:`DEFAULT_MODEL` gives each
dataset's default.  The checkpoint stores the name and arguments, so
:func:`build_model` rebuilds the same architecture when a run is resumed or evaluated.
"""
from __future__ import annotations

import math

import numpy as np

import gpucnn as nn
from . import random as _random

__all__ = ["lenet", "cifar", "mlp", "resnet", "resnet20", "resnet32", "resnet44", "resnet56",
           "vgg_bn", "kaiming_normal_", "build_model", "MODELS", "DEFAULT_MODEL"]


def _check_shape(name, input_shape, min_hw):
    if len(input_shape) != 3 or any(int(s) < 1 for s in input_shape):
        raise ValueError(f"{name}: input_shape must be (channels, height, width), got {tuple(input_shape)}")
    c, h, w = (int(s) for s in input_shape)
    if h < min_hw or w < min_hw:
        raise ValueError(f"{name}: images must be at least {min_hw}x{min_hw}, got {h}x{w}")
    return c, h, w


def lenet(input_shape=(1, 28, 28), num_classes=10, *, activation="relu"):
    """LeNet-5 (ReLU, max pooling) for ``input_shape`` = (C, H, W).

    28x28 -> conv 5x5 pad 2 -> 6x28x28 -> pool -> 6x14x14 -> conv 5x5 -> 16x10x10
    -> pool -> 16x5x5 -> 400 -> 120 -> 84 -> classes (the classic layout).  For
    images under 16x16 the second convolution is padded too.
    """
    c, h, w = _check_shape("lenet", input_shape, 4)
    act = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}[activation]
    pad2 = 2 if min(h, w) < 16 else 0
    h1, w1 = h // 2, w // 2                              # conv1 keeps the size, pool halves it
    h2, w2 = (h1 + 2 * pad2 - 4) // 2, (w1 + 2 * pad2 - 4) // 2
    if h2 < 1 or w2 < 1:
        raise ValueError(f"lenet: images of {h}x{w} are too small for two 5x5 conv + pool stages")
    return nn.Sequential(
        nn.Conv2d(c, 6, 5, padding=2), act(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, padding=pad2), act(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * h2 * w2, 120), act(),
        nn.Linear(120, 84), act(),
        nn.Linear(84, num_classes),
    )


def cifar(input_shape=(3, 32, 32), num_classes=10):
    """Small VGG-style net: [conv3x3-ReLU] x2 -> pool -> [conv3x3-ReLU] x2 -> pool -> 256 -> classes."""
    c, h, w = _check_shape("cifar", input_shape, 4)
    return nn.Sequential(
        nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * (h // 4) * (w // 4), 256), nn.ReLU(),
        nn.Linear(256, num_classes),
    )


def mlp(input_shape=(1, 28, 28), num_classes=10, hidden=(256, 128)):
    """Multilayer perceptron: flatten -> Linear+ReLU per ``hidden`` size -> classes."""
    c, h, w = _check_shape("mlp", input_shape, 1)
    layers, width = [nn.Flatten()], c * h * w
    for size in hidden:
        layers += [nn.Linear(width, int(size)), nn.ReLU()]
        width = int(size)
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def kaiming_normal_(weight, rng=None):
    """Fill a conv or linear ``Parameter`` in place from N(0, 2 / fan_in), fan_in = the
    product of every axis but the first (PyTorch's ``kaiming_normal_(w, mode="fan_in",
    nonlinearity="relu")``); drawn from gpucnn's generator unless ``rng`` is given."""
    shape = weight.shape
    fan_in = int(np.prod(shape[1:]))
    std = math.sqrt(2.0) / math.sqrt(fan_in)
    rng = _random.resolve(rng)
    weight.data = (rng.standard_normal(size=shape) * std).astype(np.float32)
    return weight


def _conv3x3(c_in, c_out, stride=1):
    conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
    kaiming_normal_(conv.weight)
    return conv


def _basic_block(c_in, c_out, stride, shortcut):
    """Residual(conv3x3-BN-ReLU-conv3x3-BN, shortcut) followed by ReLU (the paper's Fig. 2)."""
    main = nn.Sequential(_conv3x3(c_in, c_out, stride), nn.BatchNorm2d(c_out), nn.ReLU(),
                         _conv3x3(c_out, c_out), nn.BatchNorm2d(c_out))
    short = None
    if stride != 1 or c_in != c_out:
        if shortcut == "A":
            short = nn.ShortcutA(c_in, c_out, stride=stride)
        else:
            conv = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)
            kaiming_normal_(conv.weight)
            short = nn.Sequential(conv, nn.BatchNorm2d(c_out))
    return nn.Sequential(nn.Residual(main, short), nn.ReLU())


def resnet(depth, input_shape=(3, 32, 32), num_classes=10, *, shortcut="A"):
    """The CIFAR ResNet of ``depth`` = 6n+2 layers (He et al. 2016, section 4.2).

    conv3x3 16 (no bias) - BN - ReLU; three stages of n basic blocks at 16, 32 and 64
    channels, the first block of stages 2 and 3 with stride 2; global average pooling,
    Flatten, Linear(64, classes).  A block is ``Sequential(Residual(main, shortcut), ReLU)``
    with ``main`` = conv3x3-BN-ReLU-conv3x3-BN (convolutions without bias).  Where a block
    changes the shape, ``shortcut="A"`` subsamples and zero-pads the channels (no
    parameters, :class:`gpucnn.ShortcutA`), ``"B"`` projects with a 1x1 convolution + BN;
    elsewhere the shortcut is the identity.  Convolutions start from Kaiming-normal weights
    (fan_in, ReLU gain), batch norms from weight 1 / bias 0, the linear layer from
    PyTorch's default; all drawn from gpucnn's generator (``gpucnn.manual_seed``).

    Module layout (the state_dict keys): ``0`` conv, ``1`` BN, ``2`` ReLU, ``3``-``5`` the
    stages (each a Sequential of blocks; a block's keys are ``<stage>.<i>.0.main.<j>...``
    and, for option B, ``<stage>.<i>.0.shortcut.<j>...``), ``6`` global pooling, ``7``
    Flatten, ``8`` the linear layer.
    """
    depth = int(depth)
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"resnet: depth must be 6n+2 with n >= 1 (20, 32, 44, 56, 110, ...), "
                         f"got {depth}")
    shortcut = str(shortcut).upper()
    if shortcut not in ("A", "B"):
        raise ValueError(f"resnet: shortcut must be 'A' (zero padding) or 'B' (1x1 projection), "
                         f"got {shortcut!r}")
    c, h, w = _check_shape(f"resnet{depth}", input_shape, 4)
    if h % 4 or w % 4:
        raise ValueError(f"resnet{depth}: the image size must be a multiple of 4 (two stride-2 "
                         f"stages before global pooling), got {h}x{w}")
    n = (depth - 2) // 6
    layers = [_conv3x3(c, 16), nn.BatchNorm2d(16), nn.ReLU()]
    c_in = 16
    for stage, c_out in enumerate((16, 32, 64)):
        blocks = []
        for i in range(n):
            stride = 2 if stage > 0 and i == 0 else 1
            blocks.append(_basic_block(c_in, c_out, stride, shortcut))
            c_in = c_out
        layers.append(nn.Sequential(*blocks))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes)]
    return nn.Sequential(*layers)


def resnet20(input_shape=(3, 32, 32), num_classes=10, *, shortcut="A"):
    """ResNet-20 (n = 3): 269,722 parameters with option A (He et al. 2016, Table 6)."""
    return resnet(20, input_shape, num_classes, shortcut=shortcut)


def resnet32(input_shape=(3, 32, 32), num_classes=10, *, shortcut="A"):
    """ResNet-32 (n = 5): 464,154 parameters with option A."""
    return resnet(32, input_shape, num_classes, shortcut=shortcut)


def resnet44(input_shape=(3, 32, 32), num_classes=10, *, shortcut="A"):
    """ResNet-44 (n = 7): 658,586 parameters with option A."""
    return resnet(44, input_shape, num_classes, shortcut=shortcut)


def resnet56(input_shape=(3, 32, 32), num_classes=10, *, shortcut="A"):
    """ResNet-56 (n = 9): 853,018 parameters with option A."""
    return resnet(56, input_shape, num_classes, shortcut=shortcut)


def vgg_bn(input_shape=(3, 32, 32), num_classes=10, widths=(64, 128, 256)):
    """VGG-style with batch norm: per width two conv3x3 (no bias) - BN - ReLU, then 2x2 max
    pooling (not after the last stage); global average pooling, Flatten, Linear.
    Kaiming-normal convolutions as :func:`resnet`."""
    c, h, w = _check_shape("vgg_bn", input_shape, 1)
    widths = tuple(int(v) for v in widths)
    pools = len(widths) - 1
    if h % (2 ** pools) or w % (2 ** pools):
        raise ValueError(f"vgg_bn: the image size must be a multiple of {2 ** pools} "
                         f"({pools} 2x2 poolings), got {h}x{w}")
    layers, c_in = [], c
    for i, c_out in enumerate(widths):
        for _ in range(2):
            layers += [_conv3x3(c_in, c_out), nn.BatchNorm2d(c_out), nn.ReLU()]
            c_in = c_out
        if i < pools:
            layers.append(nn.MaxPool2d(2))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)]
    return nn.Sequential(*layers)


MODELS = {"lenet": lenet, "cifar": cifar, "mlp": mlp, "resnet20": resnet20, "resnet32": resnet32,
          "resnet44": resnet44, "resnet56": resnet56, "vgg_bn": vgg_bn}
DEFAULT_MODEL = {"digits": "cifar", "mnist": "lenet", "cifar10": "cifar", "folder": "cifar"}


def build_model(name, input_shape, num_classes):
    """Build model ``name`` (a key of :data:`MODELS`) for (C, H, W) images and ``num_classes``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
    return MODELS[name](tuple(int(s) for s in input_shape), int(num_classes))
