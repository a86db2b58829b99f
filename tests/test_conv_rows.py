"""RowPlan: stride-1 convolutions with the kernel's columns folded into the GEMM (the NumPy
backend's path for ResNet's 3x3 layers) agree with the loop reference, with the plain wide
layout, and across chunkings and thread counts."""
import numpy as np
import pytest

from gpucnn import reference
from gpucnn.backends.numpy import conv
from gpucnn.backends.numpy.parallel import WORKERS


def _run(x, w, pad):
    y = conv.conv2d_forward(x, w, (1, 1), pad)
    dy = np.random.default_rng(7).standard_normal(y.shape).astype(x.dtype)
    dw = conv.conv2d_backward_weight(dy, x, w.shape, (1, 1), pad)
    dx = conv.conv2d_backward_data(dy, w, x.shape, (1, 1), pad)
    return y, dy, dw, dx


@pytest.mark.parametrize("n, c, o, hw, k, pad", [
    (2, 16, 16, (8, 8), (3, 3), (1, 1)),       # ResNet's layer shape, small
    (3, 8, 4, (7, 9), (3, 3), (1, 1)),         # O < C, not square
    (2, 4, 4, (6, 7), (5, 5), (2, 2)),         # 5x5
    (2, 6, 6, (6, 5), (3, 2), (1, 0)),         # rectangular kernel, uneven padding
    (2, 8, 8, (5, 6), (2, 3), (0, 1)),
    (1, 16, 8, (6, 6), (3, 3), (0, 0)),        # no padding
    (2, 6, 3, (5, 5), (3, 3), (2, 2)),         # padding wider than the kernel's reach
])
def test_matches_the_loop_reference(n, c, o, hw, k, pad):
    assert conv.use_rows(c, o, *k)
    assert isinstance(conv.plan_for((n, c) + hw, (o, c) + k, (1, 1), pad), conv.RowPlan)
    assert isinstance(conv.plan_for((n, c) + hw, (o, c) + k, (1, 1), pad, True), conv.RowPlan)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c) + hw)
    w = rng.standard_normal((o, c) + k)
    y, dy, dw, dx = _run(x, w, pad)
    np.testing.assert_allclose(y, reference.conv2d(x, w, None, 1, pad), rtol=1e-10, atol=1e-12)
    rdx, rdw, _ = reference.conv2d_backward(dy, x, w, 1, pad)
    np.testing.assert_allclose(dw, rdw, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, rdx, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("fwd_bytes, wgt_bytes", [(1, 1), (60_000, 90_000), (1 << 20, 2 << 20)])
def test_chunkings_and_threads_agree_with_the_wide_layout(threads, fwd_bytes, wgt_bytes,
                                                          monkeypatch):
    """Chunks of one sample, of a few with a shorter last one, of the whole batch; on 1-3
    threads (ranges that do not divide the batch): the same values as the plain wide plan."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((13, 16, 12, 12))
    w = rng.standard_normal((16, 16, 3, 3))
    monkeypatch.setattr(conv, "FORWARD_CHUNK_BYTES", fwd_bytes)
    monkeypatch.setattr(conv, "CHUNK_BYTES", wgt_bytes)
    monkeypatch.setattr(conv, "PARALLEL_MIN_FLOPS_CONV", 1)
    saved = WORKERS.threads
    WORKERS.set_threads(threads)
    try:
        conv._plan.cache_clear()
        rows = _run(x, w, (1, 1))
        monkeypatch.setattr(conv, "ROWS", False)
        conv._plan.cache_clear()
        assert isinstance(conv.plan_for(x.shape, w.shape, (1, 1), (1, 1)), conv.WidePlan)
        assert not isinstance(conv.plan_for(x.shape, w.shape, (1, 1), (1, 1)), conv.RowPlan)
        wide = _run(x, w, (1, 1))
    finally:
        WORKERS.set_threads(saved)
        conv._plan.cache_clear()
    for a, b in zip(rows, wide):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12)


def test_float32_stays_float32_and_close_to_float64():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 16, 10, 10))
    w = rng.standard_normal((16, 16, 3, 3)) / 12
    out64 = _run(x, w, (1, 1))
    out32 = _run(x.astype(np.float32), w.astype(np.float32), (1, 1))
    for a, b in zip(out32, out64):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("c, o, k", [(16, 32, (3, 3)),     # widening layer: plain wide GEMM
                                     (4, 4, (3, 3)),       # inner size C*kh = 12 < 16
                                     (16, 16, (3, 1))])    # one kernel column: nothing to fold
def test_other_layers_keep_the_wide_layout(c, o, k):
    assert not conv.use_rows(c, o, *k)
    plan = conv.plan_for((2, c, 9, 9), (o, c) + k, (1, 1), (1, 1))
    assert not isinstance(plan, conv.RowPlan)


def test_resnet_layers_take_rows():
    for c, hw in ((16, 32), (32, 16), (64, 8)):
        assert isinstance(conv.plan_for((128, c, hw, hw), (c, c, 3, 3), (1, 1), (1, 1)),
                          conv.RowPlan)
