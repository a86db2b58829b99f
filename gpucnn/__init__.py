"""gpucnn: CNN training with backprop written out layer by layer, on NumPy or our own CUDA kernels.

The public API follows PyTorch's names, argument orders and weight layouts.
"""
from .backends import asnumpy
from .blocks import (AdaptiveAvgPool2d, BatchNorm1d, BatchNorm2d, Dropout, Identity, Residual,
                     ShortcutA)
from .errors import NonFiniteError
from .export import export_onnx, load_safetensors, save_safetensors
from .layers import (AvgPool2d, Buffer, Conv2d, Flatten, Linear, MaxPool2d, Module, Parameter,
                     ReLU, Sequential, Sigmoid, Tanh)
from .losses import CrossEntropyLoss, MSELoss
from .optim import SGD, Adam
from .lr_scheduler import CosineAnnealingLR, LinearLR, MultiStepLR, StepLR
from .random import get_rng_state, manual_seed, set_rng_state
from .scalar import Scalar
from . import transforms  # noqa: E402  gpucnn.transforms.Compose([...]) as torchvision.transforms

__version__ = "0.1.0"

__all__ = [
    "Module", "Parameter", "Conv2d", "MaxPool2d", "AvgPool2d", "Sigmoid", "ReLU", "Tanh",
    "Linear", "Flatten", "Sequential", "MSELoss", "CrossEntropyLoss", "SGD", "Adam",
    "StepLR", "MultiStepLR", "CosineAnnealingLR", "LinearLR",
    "Buffer", "BatchNorm1d", "BatchNorm2d", "Dropout", "AdaptiveAvgPool2d", "Identity",
    "Residual", "ShortcutA",
    "manual_seed", "get_rng_state", "set_rng_state", "asnumpy", "NonFiniteError", "Scalar",
    "save_safetensors", "load_safetensors", "export_onnx", "__version__",
]
