"""Bad input gets a clear error, never a wrong answer.

Each case must raise ValueError, TypeError or RuntimeError (the exact class is
pinned where only one makes sense) whose message names the layer (or object),
what it expected and what it got.  ``words(...)`` builds a regex that requires
every given piece somewhere in the message, in any order, case-insensitively.
"""
import numpy as np
import pytest

import gpucnn
from gpucnn.backends import DeviceError, resolve_device

ERRORS = (ValueError, TypeError, RuntimeError)


def words(*pieces):
    """A regex matching a message that contains every piece (each itself a regex)."""
    return "(?is)^" + "".join(f"(?=.*(?:{p}))" for p in pieces)


def test_words_helper_requires_every_piece():
    import re
    assert re.search(words("Conv2d", r"\b3\b"), "Conv2d: expected 3 channels")
    assert not re.search(words("Conv2d", r"\b3\b"), "Conv2d: expected 4 channels")
    assert not re.search(words("Linear", "3"), "Conv2d: expected 3 channels")


f32 = np.float32


def zeros(*shape, dtype=f32):
    return np.zeros(shape, dtype=dtype)


# ---------------------------------------------------------------------------
# Layer inputs
# ---------------------------------------------------------------------------

NDIM_CASES = [
    (lambda: gpucnn.Conv2d(3, 4, 3), zeros(3, 8, 8), "Conv2d", r"4-?D|4 dim"),
    (lambda: gpucnn.Conv2d(3, 4, 3), zeros(1, 1, 3, 8, 8), "Conv2d", r"4-?D|4 dim"),
    (lambda: gpucnn.MaxPool2d(2), zeros(8, 8), "MaxPool2d", r"4-?D|4 dim"),
    (lambda: gpucnn.AvgPool2d(2), zeros(1, 8, 8), "AvgPool2d", r"4-?D|4 dim"),
    (lambda: gpucnn.Linear(4, 2), zeros(4), "Linear", r"2-?D|2 dim"),
    (lambda: gpucnn.Linear(4, 2), zeros(1, 1, 4), "Linear", r"2-?D|2 dim"),
]


@pytest.mark.parametrize("make, x, name, expected", NDIM_CASES,
                         ids=[f"{c[2]}-{c[1].ndim}D" for c in NDIM_CASES])
def test_wrong_ndim(make, x, name, expected):
    got = rf"{x.ndim}-?D|{x.ndim} dim|{tuple(x.shape)!s}".replace("(", r"\(").replace(")", r"\)")
    with pytest.raises(ValueError, match=words(name, expected, got)):
        make()(x)


def test_conv2d_wrong_channel_count():
    with pytest.raises(ValueError, match=words("Conv2d", "channel", r"\b3\b", r"\b2\b")):
        gpucnn.Conv2d(3, 4, 3)(zeros(1, 2, 8, 8))


def test_linear_wrong_feature_count():
    with pytest.raises(ValueError, match=words("Linear", "feature", r"\b4\b", r"\b5\b")):
        gpucnn.Linear(4, 2)(zeros(3, 5))


@pytest.mark.parametrize("make, name, shape, k", [
    (lambda: gpucnn.Conv2d(1, 1, 5), "Conv2d", (1, 1, 3, 7), "5"),
    (lambda: gpucnn.Conv2d(1, 1, (2, 6), padding=(0, 1)), "Conv2d", (1, 1, 4, 3), "6"),
    (lambda: gpucnn.MaxPool2d(3), "MaxPool2d", (1, 1, 2, 2), "3"),
    (lambda: gpucnn.AvgPool2d((1, 4)), "AvgPool2d", (2, 1, 5, 3), "4"),
])
def test_input_smaller_than_kernel(make, name, shape, k):
    with pytest.raises(ValueError, match=words(name, "kernel", rf"(?<!\d){k}(?!\d)", "small")):
        make()(zeros(*shape))


LAYERS_FOR_DTYPE = [
    (lambda: gpucnn.Conv2d(1, 2, 3), (1, 1, 4, 4), "Conv2d"),
    (lambda: gpucnn.Linear(3, 2), (2, 3), "Linear"),
    (lambda: gpucnn.MaxPool2d(2), (1, 1, 4, 4), "MaxPool2d"),
    (lambda: gpucnn.AvgPool2d(2), (1, 1, 4, 4), "AvgPool2d"),
    (gpucnn.ReLU, (2, 3), "ReLU"),
    (gpucnn.Sigmoid, (2, 3), "Sigmoid"),
    (gpucnn.Tanh, (2, 3), "Tanh"),
    (gpucnn.Flatten, (2, 3, 2), "Flatten"),
]


@pytest.mark.parametrize("make, shape, name", LAYERS_FOR_DTYPE, ids=[c[2] for c in LAYERS_FOR_DTYPE])
@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.bool_, np.float16])
def test_non_float_input(make, shape, name, dtype):
    x = np.ones(shape, dtype=dtype)
    with pytest.raises(TypeError, match=words(name, "float", np.dtype(dtype).name)):
        make()(x)


@pytest.mark.parametrize("make, shape, name", LAYERS_FOR_DTYPE, ids=[c[2] for c in LAYERS_FOR_DTYPE])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input(make, shape, name, bad):
    x = np.ones(shape, dtype=f32)
    x.flat[-1] = bad
    with pytest.raises(ValueError, match=words(name, r"nan|inf|finite")):
        make()(x)


@pytest.mark.parametrize("make, shape, name", LAYERS_FOR_DTYPE[:2], ids=["Conv2d", "Linear"])
def test_non_array_input(make, shape, name):
    with pytest.raises(TypeError, match=words(name, "array", "list")):
        make()(np.ones(shape, dtype=f32).tolist())


@pytest.mark.parametrize("layer_dtype, input_dtype", [(np.float64, np.float32), (np.float32, np.float64)])
@pytest.mark.parametrize("make, shape, name", LAYERS_FOR_DTYPE[:2], ids=["Conv2d", "Linear"])
def test_mixed_dtypes(make, shape, name, layer_dtype, input_dtype):
    layer = make().to(dtype=layer_dtype)
    with pytest.raises(TypeError, match=words(name, np.dtype(layer_dtype).name, np.dtype(input_dtype).name)):
        layer(np.ones(shape, dtype=input_dtype))


def test_mixed_dtypes_inside_sequential_names_the_layer():
    net = gpucnn.Sequential(gpucnn.Flatten(), gpucnn.Linear(4, 2)).to(dtype=np.float64)
    with pytest.raises(TypeError, match=words("Linear", "float64", "float32")):
        net(np.ones((1, 1, 2, 2), dtype=f32))


# ---------------------------------------------------------------------------
# backward
# ---------------------------------------------------------------------------

BACKWARD_LAYERS = [
    (lambda: gpucnn.Conv2d(1, 2, 3), "Conv2d"),
    (lambda: gpucnn.Linear(3, 2), "Linear"),
    (lambda: gpucnn.MaxPool2d(2), "MaxPool2d"),
    (lambda: gpucnn.AvgPool2d(2), "AvgPool2d"),
    (gpucnn.ReLU, "ReLU"),
    (gpucnn.Sigmoid, "Sigmoid"),
    (gpucnn.Tanh, "Tanh"),
    (gpucnn.Flatten, "Flatten"),
]


@pytest.mark.parametrize("make, name", BACKWARD_LAYERS, ids=[c[1] for c in BACKWARD_LAYERS])
def test_backward_before_forward(make, name):
    with pytest.raises(RuntimeError, match=words(name, "backward", "before", "forward")):
        make().backward(zeros(1, 2, 2, 2))


def test_sequential_backward_before_forward_names_the_layer():
    net = gpucnn.Sequential(gpucnn.Linear(3, 2), gpucnn.Sigmoid())
    with pytest.raises(RuntimeError, match=words("Sigmoid", "forward")):
        net.backward(zeros(1, 2))


@pytest.mark.parametrize("loss", [gpucnn.MSELoss, gpucnn.CrossEntropyLoss], ids=lambda c: c.__name__)
def test_loss_backward_before_forward(loss):
    with pytest.raises(RuntimeError, match=words(loss.__name__, "backward", "before|first")):
        loss().backward()


def test_backward_with_wrong_gradient_shape():
    conv = gpucnn.Conv2d(1, 2, 3)
    conv(zeros(2, 1, 5, 5))                      # output (2, 2, 3, 3)
    with pytest.raises(ValueError, match=words("Conv2d", r"\(2, 2, 3, 3\)", r"\(2, 2, 3, 2\)")):
        conv.backward(zeros(2, 2, 3, 2))
    lin = gpucnn.Linear(3, 4)
    lin(zeros(5, 3))
    with pytest.raises(ValueError, match=words("Linear", r"\(5, 4\)", r"\(4, 5\)")):
        lin.backward(zeros(4, 5))
    pool = gpucnn.MaxPool2d(2)
    pool(zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match=words("MaxPool2d", r"\(1, 1, 2, 2\)", r"\(1, 1, 4, 4\)")):
        pool.backward(zeros(1, 1, 4, 4))


def test_backward_with_wrong_gradient_dtype():
    conv = gpucnn.Conv2d(1, 2, 3).to(dtype=np.float64)
    conv(np.zeros((1, 1, 4, 4)))
    with pytest.raises(TypeError, match=words("Conv2d", "float64", "float32")):
        conv.backward(zeros(1, 2, 2, 2))


# ---------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------

def logits(n=4, k=3):
    return np.random.default_rng(0).standard_normal((n, k)).astype(f32)


@pytest.mark.parametrize("bad", [5, -1])
def test_cross_entropy_label_out_of_range(bad):
    labels = np.array([0, 1, bad, 2])
    with pytest.raises(ValueError, match=words("CrossEntropyLoss", "label", r"\b3\b", rf"(?<![\d.]){bad}\b")):
        gpucnn.CrossEntropyLoss()(logits(4, 3), labels)


def test_cross_entropy_label_equal_to_class_count_is_out_of_range():
    with pytest.raises(ValueError, match=words("CrossEntropyLoss", "label", r"\b6\b")):
        gpucnn.CrossEntropyLoss()(logits(2, 6), np.array([6, 0]))


def test_cross_entropy_wrong_number_of_labels():
    with pytest.raises(ValueError, match=words("CrossEntropyLoss", r"\b4\b", r"\b5\b")):
        gpucnn.CrossEntropyLoss()(logits(4, 6), np.zeros(5, dtype=np.int64))


def test_cross_entropy_one_hot_labels_are_rejected():
    with pytest.raises(ValueError, match=words("CrossEntropyLoss", r"\(4,\)|\b4 labels", r"\(4, 3\)")):
        gpucnn.CrossEntropyLoss()(logits(4, 3), np.eye(3, dtype=np.int64)[[0, 1, 2, 0]])


@pytest.mark.parametrize("labels", [np.array([0.0, 1.0, 2.0, 1.0]), np.array([0.0, 1.5, 2.0, 1.0], dtype=f32)])
def test_cross_entropy_non_integer_labels(labels):
    with pytest.raises(TypeError, match=words("CrossEntropyLoss", "int", labels.dtype.name)):
        gpucnn.CrossEntropyLoss()(logits(4, 3), labels)


def test_cross_entropy_bad_logits():
    with pytest.raises(ValueError, match=words("CrossEntropyLoss", r"2-?D|\(N, ?(classes|K|C)\)", r"\(12,\)|1-?D")):
        gpucnn.CrossEntropyLoss()(logits(4, 3).reshape(12), np.zeros(12, dtype=np.int64))
    bad = logits()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match=words("CrossEntropyLoss", r"nan|finite")):
        gpucnn.CrossEntropyLoss()(bad, np.zeros(4, dtype=np.int64))
    with pytest.raises(TypeError, match=words("CrossEntropyLoss", "float", "int64")):
        gpucnn.CrossEntropyLoss()(np.ones((4, 3), dtype=np.int64), np.zeros(4, dtype=np.int64))


def test_mse_bad_inputs():
    with pytest.raises(ValueError, match=words("MSELoss", r"\(4, 3\)", r"\(4, 2\)")):
        gpucnn.MSELoss()(zeros(4, 3), zeros(4, 2))
    with pytest.raises(TypeError, match=words("MSELoss", "float", "int64")):
        gpucnn.MSELoss()(np.zeros((4, 3), dtype=np.int64), zeros(4, 3))
    t = zeros(4, 3)
    t[2, 2] = np.inf
    with pytest.raises(ValueError, match=words("MSELoss", "target", r"nan|inf|finite")):
        gpucnn.MSELoss()(zeros(4, 3), t)
    y = zeros(4, 3)
    y[0, 0] = np.nan
    with pytest.raises(ValueError, match=words("MSELoss", r"nan|finite")):
        gpucnn.MSELoss()(y, zeros(4, 3))


# ---------------------------------------------------------------------------
# Constructors
# ---------------------------------------------------------------------------

CTOR_CASES = [
    (lambda: gpucnn.Conv2d(3, 4, -1), ValueError, ("Conv2d", "kernel_size", "-1")),
    (lambda: gpucnn.Conv2d(3, 4, 0), ValueError, ("Conv2d", "kernel_size", r"\b0\b")),
    (lambda: gpucnn.Conv2d(3, 4, (3, -2)), ValueError, ("Conv2d", "kernel_size", "-2")),
    (lambda: gpucnn.Conv2d(3, 4, 3, stride=0), ValueError, ("Conv2d", "stride", r"\b0\b")),
    (lambda: gpucnn.Conv2d(3, 4, 3, stride=(1, 0)), ValueError, ("Conv2d", "stride", r"\b0\b")),
    (lambda: gpucnn.Conv2d(3, 4, 3, padding=-1), ValueError, ("Conv2d", "padding", "-1")),
    (lambda: gpucnn.Conv2d(0, 4, 3), ValueError, ("Conv2d", "in_channels", r"\b0\b")),
    (lambda: gpucnn.Conv2d(3, -4, 3), ValueError, ("Conv2d", "out_channels", "-4")),
    (lambda: gpucnn.Conv2d(3, 4, 2.5), TypeError, ("Conv2d", "kernel_size", r"2\.5")),
    (lambda: gpucnn.Conv2d(3, 4, (3, 3, 3)), ValueError, ("Conv2d", "kernel_size", r"\(3, 3, 3\)")),
    (lambda: gpucnn.MaxPool2d(-1), ValueError, ("MaxPool2d", "kernel_size", "-1")),
    (lambda: gpucnn.MaxPool2d(2, stride=0), ValueError, ("MaxPool2d", "stride", r"\b0\b")),
    (lambda: gpucnn.MaxPool2d(2, padding=2), ValueError, ("MaxPool2d", "padding", "half|kernel")),
    (lambda: gpucnn.MaxPool2d((3, 2), padding=(1, 2)), ValueError, ("MaxPool2d", "padding", "half|kernel")),
    (lambda: gpucnn.AvgPool2d(3, padding=2), ValueError, ("AvgPool2d", "padding", "half|kernel")),
    (lambda: gpucnn.AvgPool2d(0), ValueError, ("AvgPool2d", "kernel_size", r"\b0\b")),
    (lambda: gpucnn.AvgPool2d(2, padding=-1), ValueError, ("AvgPool2d", "padding", "-1")),
    (lambda: gpucnn.Linear(0, 3), ValueError, ("Linear", "in_features", r"\b0\b")),
    (lambda: gpucnn.Linear(3, -2), ValueError, ("Linear", "out_features", "-2")),
    (lambda: gpucnn.Sequential(gpucnn.ReLU(), 3), TypeError, ("Sequential", "int", "Module")),
]


@pytest.mark.parametrize("make, exc, pieces", CTOR_CASES, ids=[f"{c[2][0]}-{i}" for i, c in enumerate(CTOR_CASES)])
def test_bad_constructor_arguments(make, exc, pieces):
    with pytest.raises(exc, match=words(*pieces)):
        make()


def test_pool_padding_exactly_half_the_kernel_is_allowed():
    assert gpucnn.MaxPool2d(3, padding=1)(zeros(1, 1, 3, 3)).shape == (1, 1, 1, 1)
    assert gpucnn.AvgPool2d((2, 4), stride=1, padding=(1, 2))(zeros(1, 1, 3, 3)).shape == (1, 1, 4, 4)


# ---------------------------------------------------------------------------
# Optimizers
# ---------------------------------------------------------------------------

def params():
    return gpucnn.Linear(3, 2).parameters()


OPT_CASES = [
    (lambda: gpucnn.SGD(params(), lr=-0.1), ("SGD", "lr", r"-0\.1")),
    (lambda: gpucnn.SGD(params(), lr=float("nan")), ("SGD", "lr", "nan")),
    (lambda: gpucnn.SGD(params(), lr=float("inf")), ("SGD", "lr", "inf")),
    (lambda: gpucnn.SGD(params(), lr="0.1"), ("SGD", "lr", "0.1")),
    (lambda: gpucnn.SGD(params(), lr=0.1, momentum=-0.5), ("SGD", "momentum", r"-0\.5")),
    (lambda: gpucnn.SGD(params(), lr=0.1, weight_decay=-1), ("SGD", "weight_decay", "-1")),
    (lambda: gpucnn.SGD(params(), lr=0.1, nesterov=True), ("SGD", "nesterov", "momentum")),
    (lambda: gpucnn.SGD([], lr=0.1), ("SGD", "empty")),
    (lambda: gpucnn.SGD([np.zeros(3)], lr=0.1), ("SGD", "Parameter", "ndarray")),
    (lambda: gpucnn.Adam(params(), lr=-1e-3), ("Adam", "lr", "-0.001")),
    (lambda: gpucnn.Adam(params(), betas=(1.0, 0.999)), ("Adam", "beta", r"1\.0")),
    (lambda: gpucnn.Adam(params(), betas=(0.9, -0.1)), ("Adam", "beta", r"-0\.1")),
    (lambda: gpucnn.Adam(params(), betas=0.9), ("Adam", "betas", "0.9")),
    (lambda: gpucnn.Adam(params(), eps=-1e-8), ("Adam", "eps", "-1e-08")),
    (lambda: gpucnn.Adam(params(), weight_decay=-0.1), ("Adam", "weight_decay", r"-0\.1")),
]


@pytest.mark.parametrize("make, pieces", OPT_CASES, ids=[f"{c[1][0]}-{i}" for i, c in enumerate(OPT_CASES)])
def test_bad_optimizer_arguments(make, pieces):
    with pytest.raises((ValueError, TypeError), match=words(*pieces)):
        make()


def test_optimizer_load_state_dict_of_another_optimizer():
    ps = params()
    with pytest.raises(ValueError, match=words("Adam", "SGD")):
        gpucnn.Adam(ps).load_state_dict(gpucnn.SGD(ps, lr=0.1).state_dict())


# ---------------------------------------------------------------------------
# Module-level: state_dict, .to, seeds, devices
# ---------------------------------------------------------------------------

def test_load_state_dict_missing_and_unexpected_keys():
    net = gpucnn.Sequential(gpucnn.Linear(3, 2), gpucnn.ReLU(), gpucnn.Linear(2, 1))
    sd = net.state_dict()
    del sd["2.bias"]
    with pytest.raises(ValueError, match=words("load_state_dict", "missing", r"2\.bias")):
        net.load_state_dict(sd)
    sd = net.state_dict()
    sd["5.weight"] = np.zeros(3)
    with pytest.raises(ValueError, match=words("load_state_dict", "unexpected", r"5\.weight")):
        net.load_state_dict(sd)


def test_load_state_dict_wrong_shape_changes_nothing():
    net = gpucnn.Sequential(gpucnn.Linear(3, 2), gpucnn.Linear(2, 1))
    before = net.state_dict()
    sd = net.state_dict()
    sd["0.bias"] = sd["0.bias"] + 1
    sd["1.weight"] = np.zeros((2, 1), dtype=f32)
    with pytest.raises(ValueError, match=words("load_state_dict", r"1\.weight", r"\(2, 1\)", r"\(1, 2\)")):
        net.load_state_dict(sd)
    for k, v in net.state_dict().items():     # all-or-nothing: 0.bias was not half-loaded
        np.testing.assert_array_equal(v, before[k], err_msg=k)


def test_to_bad_device_and_dtype():
    net = gpucnn.Linear(3, 2)
    with pytest.raises(ValueError, match=words("tpu", "cpu", "cuda")):
        net.to(device="tpu")
    with pytest.raises(TypeError, match=words("int32", "float")):
        net.to(dtype=np.int32)


def test_cuda_requested_without_cuda_says_why():
    try:
        resolve_device("cuda")
    except DeviceError as exc:
        assert isinstance(exc, RuntimeError)
        with pytest.raises(RuntimeError, match=words("cuda", "cannot|unavailable|not")):
            gpucnn.Linear(3, 2).to(device="cuda")
    else:
        pytest.skip("a CUDA device is usable here, so there is no error to check")


@pytest.mark.parametrize("seed", [-1, 1.5, "7"])
def test_manual_seed_bad_value(seed):
    with pytest.raises((ValueError, TypeError), match=words("manual_seed", str(seed).replace(".", r"\."))):
        gpucnn.manual_seed(seed)


# ---------------------------------------------------------------------------
# Non-finite values in a network: checked at its input and at the loss
# ---------------------------------------------------------------------------

def test_sequential_rejects_non_finite_input_and_gradient():
    net = gpucnn.Sequential(gpucnn.Flatten(), gpucnn.Linear(4, 2))
    x = zeros(1, 1, 2, 2)
    x[0, 0, 1, 1] = np.nan
    with pytest.raises(ValueError, match=words("Sequential", r"nan|inf|finite")):
        net(x)
    net(zeros(1, 1, 2, 2))
    g = zeros(1, 2)
    g[0, 1] = np.inf
    with pytest.raises(ValueError, match=words("Sequential", "backward|gradient", r"nan|inf|finite")):
        net.backward(g)


@pytest.mark.parametrize("loss, target", [(gpucnn.MSELoss, np.zeros((1, 2))),
                                          (gpucnn.CrossEntropyLoss, np.array([1]))],
                         ids=["MSELoss", "CrossEntropyLoss"])
def test_overflow_inside_a_network_is_reported_at_the_loss(loss, target):
    # finite input and weights, but the activations overflow to inf inside the network
    net = gpucnn.Sequential(gpucnn.Linear(2, 2), gpucnn.ReLU(), gpucnn.Linear(2, 2)).to(dtype=np.float64)
    for p in net.parameters():
        p.data[...] = 1e300
    with np.errstate(over="ignore"):    # the overflow is the point here
        out = net(np.full((1, 2), 1e10))
    with pytest.raises(ValueError, match=words(loss.__name__, "output", r"nan|inf|finite")):
        loss()(out, target)


def test_cross_entropy_rejects_an_empty_batch():
    import numpy as np
    import pytest
    import gpucnn
    with pytest.raises(ValueError, match=r"CrossEntropyLoss: expected a non-empty .*\(0, 10\)"):
        gpucnn.CrossEntropyLoss()(np.zeros((0, 10), np.float32), np.zeros(0, np.int64))


def test_to_accepts_a_dtype_positionally_like_pytorch():
    import numpy as np
    import gpucnn
    lin = gpucnn.Linear(2, 2).to(np.float64)
    assert lin.weight.data.dtype == np.float64 and lin.device == "cpu"
