"""The shared number rules (gpucnn/validation.py), the typed NaN/inf error, one backward signature."""
import argparse

import numpy as np
import pytest

import gpucnn
from gpucnn.validation import (FRACTION, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, Rule,
                               int_pair, one_of)


@pytest.mark.parametrize("rule, good, bad, exc, message", [
    (POSITIVE_INT, 3, 0, ValueError, "Owner: n must be a positive integer, got 0"),
    (POSITIVE_INT, np.int64(2), 2.0, TypeError, "Owner: n must be a positive integer, got 2.0"),
    (POSITIVE_INT, 1, True, TypeError, "Owner: n must be a positive integer, got True"),
    (NON_NEGATIVE_INT, 0, -1, ValueError, "Owner: n must be a non-negative integer, got -1"),
    (POSITIVE, 1e-9, 0.0, ValueError, "Owner: n must be a positive number, got 0.0"),
    (POSITIVE, 2, float("inf"), ValueError, "Owner: n must be a positive number, got inf"),
    (NON_NEGATIVE, 0, "0.1", TypeError, "Owner: n must be a non-negative number, got '0.1'"),
    (FRACTION, 1, 0, ValueError, "Owner: n must be in (0, 1], got 0"),
    (FRACTION, 0.5, float("nan"), ValueError, "Owner: n must be a number in (0, 1], got nan"),
    (Rule(float, 0, 1, high_open=True), 0, 1.0, ValueError, "Owner: n must be in [0, 1), got 1.0"),
    (Rule(int, 2), 2, 1, ValueError, "Owner: n must be an integer >= 2, got 1"),
])
def test_rules_accept_and_reject_with_one_line_messages(rule, good, bad, exc, message):
    assert rule(good, "n", "Owner") == good and type(rule(good, "n", "Owner")) is rule.kind
    with pytest.raises(exc) as info:
        rule(bad, "n", "Owner")
    assert str(info.value) == message


@pytest.mark.parametrize("rule, text, value", [(POSITIVE_INT, "7", 7), (FRACTION, "0.25", 0.25),
                                               (NON_NEGATIVE_INT, "0", 0), (POSITIVE, "1e-3", 1e-3)])
def test_parse_reads_text_for_argparse(rule, text, value):
    assert rule.parse(text) == value


@pytest.mark.parametrize("rule, text, message", [
    (POSITIVE_INT, "0", "expected a positive integer, got '0'"),
    (POSITIVE_INT, "2.5", "expected a positive integer, got '2.5'"),
    (POSITIVE, "nan", "expected a positive number, got 'nan'"),
    (POSITIVE, "inf", "expected a positive number, got 'inf'"),
    (FRACTION, "1.5", "expected a number in (0, 1], got '1.5'"),
])
def test_parse_rejects_with_what_was_expected(rule, text, message):
    with pytest.raises(argparse.ArgumentTypeError) as info:
        rule.parse(text)
    assert str(info.value) == message


def test_int_pair_and_one_of():
    assert int_pair(3, "stride", "Conv2d", 1) == (3, 3)
    assert int_pair([2, np.int32(4)], "stride", "Conv2d", 1) == (2, 4)
    with pytest.raises(ValueError, match=r"^Conv2d: padding must be an int or an \(h, w\) pair of "
                                         r"integers >= 0, got \(0, -1\)$"):
        int_pair((0, -1), "padding", "Conv2d", 0)
    with pytest.raises(TypeError, match=r"^Conv2d: stride must be .*, got \(1, 2\.0\)$"):
        int_pair((1, 2.0), "stride", "Conv2d", 1)
    assert one_of("cpu", "device", gpucnn.backends.DEVICES) == "cpu"
    with pytest.raises(ValueError, match=r"^TrainConfig: dtype must be one of float32, float64, got 'int8'$"):
        one_of("int8", "dtype", ("float32", "float64"), "TrainConfig")


def test_train_config_uses_the_rules():
    from gpucnn.runs import TrainConfig
    with pytest.raises(ValueError, match=r"^TrainConfig: epochs must be a positive integer, got 0$"):
        TrainConfig(epochs=0).resolved()
    with pytest.raises(ValueError, match=r"^TrainConfig: lr_decay must be in \(0, 1\], got 2$"):
        TrainConfig(lr_decay=2).resolved()
    with pytest.raises(ValueError, match=r"^TrainConfig: device must be one of auto, cpu, cuda, got 'tpu'$"):
        TrainConfig(device="tpu").resolved()


# --------------------------------------------------------------------------- NonFiniteError

def test_non_finite_values_raise_the_typed_error():
    x = np.zeros((2, 3), np.float32)
    x[1, 2] = np.inf
    with pytest.raises(gpucnn.NonFiniteError, match="Linear: the input contains NaN or infinity"):
        gpucnn.Linear(3, 2)(x)
    out = np.full((2, 3), np.nan, np.float32)
    with pytest.raises(gpucnn.NonFiniteError, match="CrossEntropyLoss: the output contains NaN"):
        gpucnn.CrossEntropyLoss()(out, np.array([0, 1]))
    assert issubclass(gpucnn.NonFiniteError, ValueError)   # `except ValueError` still catches it


def test_trainer_tells_divergence_by_class_not_by_message():
    """A ValueError that merely mentions NaN is a bug to report, not a diverged run."""
    from gpucnn.trainer import Trainer, TrainingDiverged
    images = np.random.default_rng(0).random((8, 1, 4, 4)).astype(np.float32)
    labels = np.arange(8) % 2

    class Loss(gpucnn.CrossEntropyLoss):
        def __init__(self, exc):
            super().__init__()
            self.exc = exc

        def __call__(self, output, target):
            raise self.exc

    def trainer(exc):
        model = gpucnn.Sequential(gpucnn.Flatten(), gpucnn.Linear(16, 2))
        return Trainer(model, gpucnn.SGD(model.parameters(), lr=0.1), (images, labels), batch_size=4,
                       loss_fn=Loss(exc), progress=False, log=lambda *_: None)

    with pytest.raises(ValueError, match="NaN or infinity in my own check") as info:
        trainer(ValueError("NaN or infinity in my own check")).fit(1)
    assert not isinstance(info.value, TrainingDiverged)
    with pytest.raises(TrainingDiverged, match="epoch 1, step 1"):
        trainer(gpucnn.NonFiniteError("Loss: the output contains NaN or infinity")).fit(1)


# --------------------------------------------------------------------------- backward signature

LAYERS = [
    (lambda: gpucnn.Conv2d(2, 3, 3, padding=1), (2, 2, 5, 5)),
    (lambda: gpucnn.Linear(4, 3), (2, 4)),
    (lambda: gpucnn.MaxPool2d(2), (2, 2, 4, 4)),
    (lambda: gpucnn.AvgPool2d(2), (2, 2, 4, 4)),
    (lambda: gpucnn.ReLU(), (2, 5)),
    (lambda: gpucnn.Sigmoid(), (2, 5)),
    (lambda: gpucnn.Tanh(), (2, 5)),
    (lambda: gpucnn.Flatten(), (2, 2, 3, 3)),
    (lambda: gpucnn.Sequential(gpucnn.Flatten(), gpucnn.Linear(18, 2)), (2, 2, 3, 3)),
]


@pytest.mark.parametrize("make, shape", LAYERS, ids=[f"layer{i}" for i in range(len(LAYERS))])
def test_every_module_takes_input_grad(make, shape):
    """input_grad=True gives δ for the input; False gives None and the same parameter gradients."""
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    layer = make()
    y = layer(x)
    g = np.ones_like(y)
    dx = layer.backward(g, input_grad=True)
    assert dx.shape == x.shape
    grads = [p.grad.copy() for p in layer.parameters()]
    for p in layer.parameters():
        p.grad = None
    layer(x)
    assert layer.backward(g, input_grad=False) is None
    for before, p in zip(grads, layer.parameters()):
        assert np.array_equal(before, p.grad)


def test_sequential_backward_passes_input_grad_to_every_layer():
    seen = []

    class Spy(gpucnn.Module):
        def forward(self, x):
            return x

        def backward(self, grad, input_grad=True):
            seen.append(input_grad)
            return grad if input_grad else None

    net = gpucnn.Sequential(Spy(), gpucnn.Linear(3, 3), Spy())
    net(np.ones((1, 3), np.float32))
    assert net.backward(np.ones((1, 3), np.float32), input_grad=False) is None
    assert seen == [True, False]            # reversed order: the last layer first
    seen.clear()
    assert net.backward(np.ones((1, 3), np.float32)).shape == (1, 3)
    assert seen == [True, True]
