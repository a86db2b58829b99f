"""The NumPy backend package computes bitwise what the single-file backend it replaced did.

The old ``gpucnn/backends/numpy_backend.py`` is read from git history (skipped where
there is none, e.g. a shallow clone or an unpacked sdist); one LeNet-5 training step
runs on each, from the same weights, and every loss, gradient and parameter must match.
"""
import os
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "benchmarks"))

import gpucnn  # noqa: E402
from gpucnn import backends  # noqa: E402


def _old_backend():
    try:
        import ab_numpy_backend as ab
        old = ab.load_old_backend(ab.last_ref_with())
    except (Exception, SystemExit) as e:  # no git, no history, shallow clone
        pytest.skip(f"the old numpy_backend.py is not in reach: {e}")
    # primitives added since (augmentation, new layers) are not in a LeNet step; the seam's
    # checked wrapper needs every primitive, so borrow them from the current backend
    current = backends.cpu_backend().unchecked
    if not hasattr(old, "conv2d_backward"):      # the pair, from the old backend's two passes
        def conv2d_backward(dy, x, w, stride, padding, input_grad):
            dw = old.conv2d_backward_weight(dy, x, w.shape, stride, padding)
            return (old.conv2d_backward_data(dy, w, x.shape, stride, padding)
                    if input_grad else None), dw
        old.conv2d_backward = conv2d_backward
    for name in backends.PRIMITIVES:
        if not hasattr(old, name):
            setattr(old, name, getattr(current, name))
    # changed on purpose since: the bias gradient adds its per-sample sums in float64
    # (tests/test_reduction_precision.py); every other primitive of the step is the old one
    old.bias_backward = current.bias_backward
    return old


def _step(backend, state, x, y):
    from ab_numpy_backend import build_gpucnn
    model = build_gpucnn("lenet")
    model.load_state_dict(state)
    loss_fn = gpucnn.CrossEntropyLoss()
    opt = gpucnn.SGD(model.parameters(), lr=0.01, momentum=0.9)
    with backends.override_backend(backend):
        losses = []
        for _ in range(2):
            loss = loss_fn(model(x), y)
            model.zero_grad()
            model.backward(loss_fn.backward())
            opt.step()
            losses.append(float(loss))
    return losses, [np.array(p.grad) for p in model.parameters()], [np.array(p.data) for p in model.parameters()]


def test_a_lenet_step_is_bitwise_the_old_backends():
    old = _old_backend()
    from ab_numpy_backend import build_gpucnn
    rng = np.random.default_rng(5)
    x = rng.standard_normal((70, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, 70).astype(np.int64)
    gpucnn.manual_seed(1)
    state = build_gpucnn("lenet").state_dict()
    a = _step(old, state, x, y)
    b = _step(backends.cpu_backend(), state, x, y)
    assert a[0] == b[0]
    for ga, gb in zip(a[1] + a[2], b[1] + b[2]):
        assert ga.dtype == gb.dtype and np.array_equal(ga, gb)
