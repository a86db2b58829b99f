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

:func:`build_model` maps a name to a builder; :data:`DEFAULT_MODEL` gives each
dataset's default.  The checkpoint stores the name and arguments, so
:func:`build_model` rebuilds the same architecture when a run is resumed or evaluated.
"""
from __future__ import annotations

import gpucnn as nn

__all__ = ["lenet", "cifar", "mlp", "build_model", "MODELS", "DEFAULT_MODEL"]


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


MODELS = {"lenet": lenet, "cifar": cifar, "mlp": mlp}
DEFAULT_MODEL = {"digits": "cifar", "mnist": "lenet", "cifar10": "cifar", "folder": "cifar"}


def build_model(name, input_shape, num_classes):
    """Build model ``name`` ("lenet", "cifar" or "mlp") for (C, H, W) images and ``num_classes``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
    return MODELS[name](tuple(int(s) for s in input_shape), int(num_classes))
