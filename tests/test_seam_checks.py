"""The seam's argument checks (gpucnn/backends/checked.py): a bad primitive call gives the same
one-line error on every backend, naming the primitive, the argument and what was expected."""
from __future__ import annotations

import re

import numpy as np
import pytest

from gpucnn import backends
from gpucnn.backends import PRIMITIVES
from gpucnn.backends.checked import CHECKS, UNCHECKED, CheckedBackend, checked

F32, F64 = np.float32, np.float64


def z(B, shape, dtype=F32):
    return B.asarray(np.zeros(shape, dtype=dtype))


def ones(B, shape, dtype=F32):
    return B.asarray(np.ones(shape, dtype=dtype))


S1, P0 = (1, 1), (0, 0)

#: id -> (primitive, the argument the message must name, exception, B -> the call's arguments)
BAD_CALLS = {
    "conv-channels": ("conv2d_forward", "w", ValueError,
                      lambda B: (z(B, (2, 3, 6, 7)), z(B, (4, 2, 3, 3)), S1, P0)),
    "conv-dtypes-differ": ("conv2d_forward", "w", TypeError,
                           lambda B: (z(B, (2, 3, 6, 7)), z(B, (4, 3, 3, 3), F64), S1, P0)),
    "conv-int-input": ("conv2d_forward", "x", TypeError,
                       lambda B: (z(B, (2, 3, 6, 7), np.int32), z(B, (4, 3, 3, 3)), S1, P0)),
    "conv-list-input": ("conv2d_forward", "x", TypeError,
                        lambda B: ([[1.0]], z(B, (4, 3, 3, 3)), S1, P0)),
    "conv-3d-input": ("conv2d_forward", "x", ValueError,
                      lambda B: (z(B, (3, 6, 7)), z(B, (4, 3, 3, 3)), S1, P0)),
    "conv-kernel-too-big": ("conv2d_forward", "w", ValueError,
                            lambda B: (z(B, (1, 1, 2, 2)), z(B, (1, 1, 3, 3)), S1, P0)),
    "conv-stride-0": ("conv2d_forward", "stride", ValueError,
                      lambda B: (z(B, (1, 1, 5, 5)), z(B, (1, 1, 3, 3)), (0, 1), P0)),
    "conv-negative-padding": ("conv2d_forward", "padding", ValueError,
                              lambda B: (z(B, (1, 1, 5, 5)), z(B, (1, 1, 3, 3)), S1, (-1, 0))),
    "conv-bwd-data-dy": ("conv2d_backward_data", "dy", ValueError,
                         lambda B: (z(B, (2, 4, 5, 5)), z(B, (4, 3, 3, 3)), (2, 3, 6, 7), S1, P0)),
    "conv-bwd-weight-dy": ("conv2d_backward_weight", "dy", ValueError,
                           lambda B: (z(B, (2, 4, 4, 5)), z(B, (2, 3, 6, 7)), (5, 3, 3, 3), S1, P0)),
    "conv-bwd-weight-channels": ("conv2d_backward_weight", "w_shape", ValueError,
                                 lambda B: (z(B, (2, 4, 4, 5)), z(B, (2, 3, 6, 7)), (4, 2, 3, 3),
                                            S1, P0)),
    "linear-features": ("linear_forward", "w", ValueError,
                        lambda B: (z(B, (5, 7)), z(B, (3, 6)))),
    "linear-1d": ("linear_forward", "x", ValueError, lambda B: (z(B, (7,)), z(B, (3, 7)))),
    "linear-bwd-data": ("linear_backward_data", "w", ValueError,
                        lambda B: (z(B, (5, 3)), z(B, (4, 7)))),
    "linear-bwd-weight": ("linear_backward_weight", "x", ValueError,
                          lambda B: (z(B, (5, 3)), z(B, (6, 7)))),
    "bias-shape": ("bias_forward", "b", ValueError, lambda B: (z(B, (2, 5, 3, 3)), z(B, (4,)))),
    "bias-dtype": ("bias_forward", "b", TypeError,
                   lambda B: (z(B, (2, 5, 3, 3)), z(B, (5,), F64))),
    "bias-bwd-1d": ("bias_backward", "dy", ValueError, lambda B: (z(B, (5,)),)),
    "maxpool-too-big": ("maxpool2d_forward", "kernel", ValueError,
                        lambda B: (z(B, (1, 2, 3, 3)), (4, 4), (1, 1), P0)),
    "maxpool-bad-kernel": ("maxpool2d_forward", "kernel", ValueError,
                           lambda B: (z(B, (1, 2, 3, 3)), 2, (1, 1), P0)),
    "maxpool-bwd-argmax-int64": ("maxpool2d_backward", "argmax", TypeError,
                                 lambda B: (z(B, (1, 1, 2, 2)), z(B, (1, 1, 2, 2), np.int64),
                                            (1, 1, 4, 4), (2, 2), (2, 2), P0)),
    "maxpool-bwd-argmax-shape": ("maxpool2d_backward", "argmax", ValueError,
                                 lambda B: (z(B, (1, 1, 2, 2)), z(B, (1, 1, 2, 3), np.int32),
                                            (1, 1, 4, 4), (2, 2), (2, 2), P0)),
    "maxpool-bwd-dy": ("maxpool2d_backward", "dy", ValueError,
                       lambda B: (z(B, (1, 1, 3, 2)), z(B, (1, 1, 2, 2), np.int32),
                                  (1, 1, 4, 4), (2, 2), (2, 2), P0)),
    "avgpool-float16": ("avgpool2d_forward", "x", TypeError,
                        lambda B: (z(B, (1, 2, 4, 4), np.float16), (2, 2), (2, 2), P0)),
    "avgpool-bwd-dy": ("avgpool2d_backward", "dy", ValueError,
                       lambda B: (z(B, (1, 2, 3, 3)), (1, 2, 4, 4), (2, 2), (2, 2), P0)),
    "sigmoid-int": ("sigmoid_forward", "x", TypeError, lambda B: (z(B, (3, 4), np.int64),)),
    "relu-bwd-shape": ("relu_backward", "y", ValueError, lambda B: (z(B, (3, 4)), z(B, (4, 3)))),
    "tanh-bwd-dtype": ("tanh_backward", "y", TypeError,
                       lambda B: (z(B, (3, 4)), z(B, (3, 4), F64))),
    "ce-label-range": ("softmax_cross_entropy_forward", "labels", ValueError,
                       lambda B: (z(B, (3, 4)), B.asarray(np.array([0, 4, 1], np.int64)))),
    "ce-negative-label": ("softmax_cross_entropy_forward", "labels", ValueError,
                          lambda B: (z(B, (3, 4)), B.asarray(np.array([0, -1, 1], np.int64)))),
    "ce-label-dtype": ("softmax_cross_entropy_forward", "labels", TypeError,
                       lambda B: (z(B, (3, 4)), B.asarray(np.array([0, 1, 1], np.int32)))),
    "ce-logits-3d": ("softmax_cross_entropy_forward", "logits", ValueError,
                     lambda B: (z(B, (3, 4, 1)), B.asarray(np.array([0, 1, 1], np.int64)))),
    "ce-bwd-label-count": ("softmax_cross_entropy_backward", "labels", ValueError,
                           lambda B: (z(B, (3, 4)), B.asarray(np.array([0, 1], np.int64)))),
    "mse-target-shape": ("mse_forward", "t", ValueError, lambda B: (z(B, (4, 3)), z(B, (4, 2)))),
    "mse-bwd-target-dtype": ("mse_backward", "t", TypeError,
                             lambda B: (z(B, (4, 3)), z(B, (4, 3), F64))),
    "sgd-no-buffer": ("sgd_update", "buf", ValueError,
                      lambda B: (z(B, (3, 4)), z(B, (3, 4)), None, 0.1, 0.9, 0.0, False, False)),
    "sgd-grad-dtype": ("sgd_update", "grad", TypeError,
                       lambda B: (z(B, (3, 4)), z(B, (3, 4), F64), None, 0.1, 0.0, 0.0, False,
                                  False)),
    "sgd-param-view": ("sgd_update", "param", ValueError,
                       lambda B: (z(B, (3, 8))[:, ::2], z(B, (3, 4)), None, 0.1, 0.0, 0.0, False,
                                  False)),
    "adam-v-shape": ("adam_update", "v", ValueError,
                     lambda B: (z(B, (3, 4)), z(B, (3, 4)), z(B, (3, 4)), z(B, (4, 3)), 1, 1e-3,
                                0.9, 0.999, 1e-8, 0.0)),
    "adam-step-0": ("adam_update", "step", ValueError,
                    lambda B: (z(B, (3, 4)), z(B, (3, 4)), z(B, (3, 4)), z(B, (3, 4)), 0, 1e-3,
                               0.9, 0.999, 1e-8, 0.0)),
    "accumulate-shape": ("accumulate", "src", ValueError, lambda B: (z(B, (3, 4)), z(B, (4, 3)))),
    "accumulate-view": ("accumulate", "dst", ValueError,
                        lambda B: (z(B, (3, 8))[:, ::2], z(B, (3, 4)))),
    # issue 10
    "add-shape": ("add", "b", ValueError, lambda B: (z(B, (2, 3)), z(B, (3, 2)))),
    "add-int": ("add", "a", TypeError, lambda B: (z(B, (2, 3), np.int64), z(B, (2, 3)))),
    "bn-stats-1d": ("batchnorm_stats", "x", ValueError, lambda B: (z(B, (5,)),)),
    "bn-stats-empty": ("batchnorm_stats", "x", ValueError, lambda B: (z(B, (0, 3)),)),
    "bn-fwd-mean-shape": ("batchnorm_forward", "mean", ValueError,
                          lambda B: (z(B, (2, 3, 2, 2)), z(B, (4,)), ones(B, (3,)), ones(B, (3,)),
                                     z(B, (3,)), 1e-5)),
    "bn-fwd-weight-dtype": ("batchnorm_forward", "weight", TypeError,
                            lambda B: (z(B, (2, 3)), z(B, (3,)), ones(B, (3,)), ones(B, (3,), F64),
                                       z(B, (3,)), 1e-5)),
    "bn-fwd-eps": ("batchnorm_forward", "eps", ValueError,
                   lambda B: (z(B, (2, 3)), z(B, (3,)), ones(B, (3,)), ones(B, (3,)), z(B, (3,)),
                              0.0)),
    "bn-bwd-x-shape": ("batchnorm_backward", "x", ValueError,
                       lambda B: (z(B, (2, 3, 2, 2)), z(B, (2, 3, 2, 3)), z(B, (3,)), ones(B, (3,)),
                                  ones(B, (3,)), 1e-5, True)),
    "bn-bwd-var-shape": ("batchnorm_backward", "var", ValueError,
                         lambda B: (z(B, (4, 3)), z(B, (4, 3)), z(B, (3,)), ones(B, (2,)),
                                    ones(B, (3,)), 1e-5, False)),
    "bn-running-count": ("batchnorm_update_running", "count", ValueError,
                         lambda B: (z(B, (3,)), ones(B, (3,)), z(B, (3,)), ones(B, (3,)), 0.1, 1)),
    "bn-running-momentum": ("batchnorm_update_running", "momentum", ValueError,
                            lambda B: (z(B, (3,)), ones(B, (3,)), z(B, (3,)), ones(B, (3,)), 1.5,
                                       8)),
    "bn-running-view": ("batchnorm_update_running", "running_var", ValueError,
                        lambda B: (z(B, (3,)), ones(B, (6,))[::2], z(B, (3,)), ones(B, (3,)), 0.1,
                                   8)),
    "dropout-p": ("dropout_forward", "p", ValueError, lambda B: (z(B, (3, 4)), 1.5, 7)),
    "dropout-seed": ("dropout_forward", "seed", ValueError, lambda B: (z(B, (3, 4)), 0.5, -1)),
    "dropout-bwd-int": ("dropout_backward", "dy", TypeError,
                        lambda B: (z(B, (3, 4), np.int32), 0.5, 7)),
    "subsample-3d": ("subsample_pad_forward", "x", ValueError,
                     lambda B: (z(B, (2, 4, 4)), (2, 2), 1, 4)),
    "subsample-out-channels": ("subsample_pad_forward", "out_channels", ValueError,
                               lambda B: (z(B, (2, 4, 4, 4)), (2, 2), 2, 5)),
    "subsample-stride": ("subsample_pad_forward", "stride", ValueError,
                         lambda B: (z(B, (2, 4, 4, 4)), (0, 2), 2, 8)),
    "subsample-bwd-dy": ("subsample_pad_backward", "dy", ValueError,
                         lambda B: (z(B, (2, 8, 3, 2)), (2, 4, 4, 4), (2, 2), 2)),
    "subsample-bwd-pad": ("subsample_pad_backward", "pad_before", ValueError,
                          lambda B: (z(B, (2, 8, 2, 2)), (2, 4, 4, 4), (2, 2), -1)),
    "ls-label-range": ("label_smoothing_cross_entropy_forward", "labels", ValueError,
                       lambda B: (z(B, (3, 4)), B.asarray(np.array([0, 4, 1], np.int64)), 0.1)),
    "ls-eps": ("label_smoothing_cross_entropy_forward", "eps", ValueError,
               lambda B: (z(B, (3, 4)), B.asarray(np.array([0, 1, 1], np.int64)), 1.5)),
    "ls-bwd-label-dtype": ("label_smoothing_cross_entropy_backward", "labels", TypeError,
                           lambda B: (z(B, (3, 4)), B.asarray(np.array([0, 1, 1], np.int32)), 0.1)),
}


def _error(B, bad):
    primitive, _, exc, args = BAD_CALLS[bad]
    with pytest.raises(exc) as info:
        getattr(B, primitive)(*args(B))
    return type(info.value), str(info.value)


@pytest.mark.parametrize("bad", sorted(BAD_CALLS))
def test_a_bad_call_names_the_primitive_the_argument_and_what_was_expected(bad, numpy_backend):
    primitive, argument, _, _ = BAD_CALLS[bad]
    _, msg = _error(numpy_backend, bad)
    assert msg.startswith(f"{primitive}: "), msg
    assert re.search(rf"(?<![\w.]){re.escape(argument)}(?![\w(])", msg), (argument, msg)
    assert "expected" in msg and "\n" not in msg, msg


@pytest.mark.parametrize("bad", sorted(BAD_CALLS))
def test_a_bad_call_gives_the_same_error_on_every_backend(bad, other_backend, numpy_backend):
    assert _error(other_backend, bad) == _error(numpy_backend, bad)


def test_the_messages_say_what_was_wrong(numpy_backend):
    B = numpy_backend
    assert _error(B, "conv-channels")[1] == (
        "conv2d_forward: w (4, 2, 3, 3) takes 2 input channels; expected 3, the channels of "
        "x (2, 3, 6, 7)")
    assert _error(B, "conv-kernel-too-big")[1] == (
        "conv2d_forward: the 3x3 kernel of w with padding (0, 0) does not fit the 2x2 plane of "
        "x; expected a window that fits (an output of at least 1x1), got 0x0")
    assert _error(B, "maxpool-bwd-argmax-int64")[1] == (
        "maxpool2d_backward: argmax has dtype int64; expected int32")
    assert _error(B, "ce-label-range")[1] == (
        "softmax_cross_entropy_forward: labels holds 4; expected class indices in [0, 4)")


def test_every_primitive_has_one_check_entry():
    """Adding a primitive to PRIMITIVES without an entry in checked.py fails here."""
    assert set(CHECKS) | UNCHECKED == set(PRIMITIVES)
    assert not set(CHECKS) & UNCHECKED
    assert len(CHECKS) + len(UNCHECKED) == len(PRIMITIVES)


def test_good_calls_pass_through_unchanged(numpy_backend):
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 5)).astype(F32)
    w = np.random.default_rng(1).standard_normal((4, 3, 3, 3)).astype(F32)
    got = numpy_backend.conv2d_forward(x, w, (1, 1), (1, 1))
    want = numpy_backend.unchecked.conv2d_forward(x, w, (1, 1), (1, 1))
    np.testing.assert_array_equal(got, want)
    assert numpy_backend.sgd_update(np.zeros(3, F32), np.ones(3, F32), None, 0.1, momentum=0.0,
                                    weight_decay=0.0, nesterov=False, first=True) is None


def test_the_handed_out_backends_are_checked(numpy_backend):
    assert isinstance(numpy_backend, CheckedBackend)
    assert backends.backend_of(np.zeros(2, F32)) is numpy_backend
    assert backends.get_backend("cpu") is numpy_backend
    assert checked(numpy_backend) is numpy_backend and checked(None) is None
    assert numpy_backend.name == "cpu"
    with backends.override_backend(numpy_backend.unchecked) as b:
        assert isinstance(b, CheckedBackend) and backends.backend_of(np.zeros(1)) is b


def test_attributes_write_through_to_the_backend():
    class Inner:
        name = "inner"
        limit = 1

    for p in PRIMITIVES:
        setattr(Inner, p, lambda self, *a, **k: None)
    inner = Inner()
    b = checked(inner)
    b.limit = 5
    assert inner.limit == 5 and b.limit == 5
    b.relu_forward = lambda x: "replaced"      # a test replacing a primitive replaces the wrapper's
    assert b.relu_forward(None) == "replaced"
    assert "relu_forward" not in vars(inner)


def test_a_primitive_without_a_check_is_refused_clearly(monkeypatch):
    import gpucnn.backends.checked as checked_module
    monkeypatch.setattr(checked_module, "PRIMITIVES", PRIMITIVES + ("frobnicate",))

    class Inner:
        pass
    for p in PRIMITIVES + ("frobnicate",):
        setattr(Inner, p, lambda self, *a, **k: None)
    with pytest.raises(NotImplementedError, match=r"no check for the primitive 'frobnicate'"):
        checked(Inner())
