"""The NumPy convolution's wide layout with shared padding columns (rows W + pw long), and
conv2d_backward, which runs backward-data and backward-weight at once on the worker threads.

Every result is checked against the direct-loop definitions in ``gpucnn.reference``
(float64), and the pair against the two single-pass primitives.
"""
import threading
import time

import numpy as np
import pytest

from gpucnn import reference
from gpucnn.backends import cpu_backend
from gpucnn.backends.numpy import conv
from gpucnn.backends.numpy.parallel import WORKERS


@pytest.mark.parametrize("w, kw, pw, want", [
    (8, 3, 1, 9),       # 3x3 "same": one zero column between rows
    (8, 5, 2, 10),
    (8, 3, 0, 8),       # no padding: rows are the image rows
    (8, 3, 2, 10),      # pw = kw - 1: the output row (W + 2) just fits
    (8, 3, 3, 14),      # pw > kw - 1: an output row (W + 4) would not fit in W + 3: both sides
    (8, 1, 0, 8),
])
def test_row_length(w, kw, pw, want):
    assert conv.wide_row(w, kw, pw) == want
    ow = w + 2 * pw - kw + 1
    assert conv.wide_row(w, kw, pw) >= ow           # an output row fits in a wide row


def _all_passes(x, wt, padding):
    y = conv.conv2d_forward(x, wt, (1, 1), padding)
    dy = np.random.default_rng(7).standard_normal(y.shape)
    dx = conv.conv2d_backward_data(dy, wt, x.shape, (1, 1), padding)
    dw = conv.conv2d_backward_weight(dy, x, wt.shape, (1, 1), padding)
    return y, dy, dx, dw


GEOMETRIES = [  # (C, O, H, W, kh, kw, ph, pw)
    (8, 4, 6, 7, 3, 3, 1, 1),      # RowPlan (O <= C, C*kh >= 16)
    (8, 8, 5, 5, 3, 3, 0, 0),
    (3, 5, 6, 7, 3, 3, 1, 1),      # WidePlan (widening)
    (4, 3, 7, 6, 5, 5, 2, 2),
    (8, 4, 7, 6, 5, 5, 2, 2),      # rows with 5 kernel columns
    (4, 3, 6, 5, 3, 3, 1, 0),      # padding on one axis only
    (4, 3, 6, 5, 3, 3, 0, 1),
    (8, 4, 6, 5, 3, 3, 2, 2),      # pw = kw - 1: the output row just fits in W + pw
    (8, 4, 6, 5, 2, 3, 1, 3),      # padding wider than kw - 1: rows W + 2*pw
    (4, 3, 5, 6, 3, 3, 1, 4),
    (4, 3, 1, 1, 3, 3, 1, 1),      # a 1x1 image
    (8, 4, 6, 6, 1, 3, 0, 1),
    (8, 4, 6, 6, 3, 1, 1, 0),
]


@pytest.mark.parametrize("rows", [True, False], ids=["rows", "plain-wide"])
@pytest.mark.parametrize("c, o, h, w, kh, kw, ph, pw", GEOMETRIES)
def test_wide_layout_matches_the_direct_loops(c, o, h, w, kh, kw, ph, pw, rows, monkeypatch):
    monkeypatch.setattr(conv, "WIDE_MAX_WASTE", 1 << 30)      # every stride-1 layer goes wide
    monkeypatch.setattr(conv, "WIDE_MAX_WASTE_WEIGHT", 1 << 30)
    monkeypatch.setattr(conv, "ROWS", rows)
    conv._plan.cache_clear()
    try:
        rng = np.random.default_rng(c * 100 + kh * 10 + pw)
        x = rng.standard_normal((2, c, h, w))
        wt = rng.standard_normal((o, c, kh, kw))
        if kw > 1:
            assert isinstance(conv.plan_for(x.shape, wt.shape, (1, 1), (ph, pw)), conv.WidePlan)
        y, dy, dx, dw = _all_passes(x, wt, (ph, pw))
    finally:
        conv._plan.cache_clear()
    np.testing.assert_allclose(y, reference.conv2d(x, wt, None, 1, (ph, pw)), rtol=1e-11, atol=1e-11)
    rdx, rdw, _ = reference.conv2d_backward(dy, x, wt, 1, (ph, pw))
    np.testing.assert_allclose(dx, rdx, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(dw, rdw, rtol=1e-11, atol=1e-11)


# ---------------------------------------------------------------------- conv2d_backward
@pytest.fixture
def two_threads(monkeypatch):
    """Two worker threads, and the pair taken for layers of any size."""
    monkeypatch.setattr(conv, "PARALLEL_MIN_FLOPS_CONV", 1)
    saved = WORKERS.threads
    WORKERS.set_threads(2)
    yield
    WORKERS.set_threads(saved)


def _inputs(c=16, o=16, hw=8, n=6, dtype=np.float64):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((n, c, hw, hw)).astype(dtype)
    w = (rng.standard_normal((o, c, 3, 3)) / 12).astype(dtype)
    dy = rng.standard_normal((n, o, hw, hw)).astype(dtype)
    return dy, x, w


def _spy_chunks(monkeypatch, cls, method, seen, delay=0.0):
    """Record (pass, thread name, chunk index) for every chunk ``cls.method`` computes."""
    orig = getattr(cls, method)
    at = {"forward": 4, "backward_weight": 3}[method]      # where the chunks come in

    def spy(self, *args):
        chunks = args[at]

        def watched():
            for item in chunks:
                seen.append((method, threading.current_thread().name, item[0]))
                time.sleep(delay)
                yield item
        return orig(self, *args[:at], watched(), *args[at + 1:])
    monkeypatch.setattr(cls, method, spy)


def _one_sample_chunks(monkeypatch):
    """RowPlan's forward (backward-data here) and backward-weight in chunks of one sample."""
    for method in ("forward_chunk", "weight_chunk"):
        monkeypatch.setattr(conv.RowPlan, method, lambda self, n, itemsize: 1)


def test_pair_runs_the_two_passes_on_two_threads(two_threads, monkeypatch):
    dy, x, w = _inputs(n=12)
    assert conv.pair_backward(x.shape, w.shape, (1, 1), (1, 1))
    assert conv.data_as_forward(x.shape, w.shape, (1, 1), (1, 1))    # backward-data: a forward
    _one_sample_chunks(monkeypatch)                             # 12 chunks a pass
    seen = []
    # every chunk slowed down: neither thread can finish its own pass before the other
    # has taken its first chunk
    _spy_chunks(monkeypatch, conv.RowPlan, "forward", seen, delay=0.01)
    _spy_chunks(monkeypatch, conv.RowPlan, "backward_weight", seen, delay=0.01)
    dx, dw = conv.conv2d_backward(dy, x, w, (1, 1), (1, 1), True)
    me = threading.current_thread().name
    took = {(method, i): thread for method, thread, i in seen}
    assert took["forward", 0] == me                 # the caller starts on backward-data,
    assert took["backward_weight", 0] != me         # a worker on backward-weight
    for method in ("forward", "backward_weight"):   # every chunk computed once
        assert sorted(i for m, _, i in seen if m == method) == list(range(12))
    rdx, rdw, _ = reference.conv2d_backward(dy, x, w, 1, 1)
    np.testing.assert_allclose(dx, rdx, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(dw, rdw, rtol=1e-11, atol=1e-11)


def test_a_thread_that_finishes_takes_the_other_passes_chunks(two_threads, monkeypatch):
    """Backward-weight's chunks made slow: the caller, done with backward-data, takes some
    of them; the gradients are still bitwise what one thread computes."""
    dy, x, w = _inputs(n=12, dtype=np.float32)
    _one_sample_chunks(monkeypatch)                             # 12 chunks a pass
    WORKERS.set_threads(1)
    want_dx = conv.conv2d_backward_data(dy, w, x.shape, (1, 1), (1, 1))
    want_dw = conv.conv2d_backward_weight(dy, x, w.shape, (1, 1), (1, 1))
    WORKERS.set_threads(2)
    seen = []
    _spy_chunks(monkeypatch, conv.RowPlan, "backward_weight", seen, delay=0.02)
    dx, dw = conv.conv2d_backward(dy, x, w, (1, 1), (1, 1), True)
    assert threading.current_thread().name in {t for _, t, _ in seen}
    assert sorted(i for _, _, i in seen) == list(range(12))
    np.testing.assert_array_equal(dx, want_dx)
    np.testing.assert_array_equal(dw, want_dw)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pair_is_bitwise_the_single_thread_passes(two_threads, dtype):
    """Each pass's chunks are computed the same way on any thread: one thread's values."""
    dy, x, w = _inputs(dtype=dtype)
    dx, dw = conv.conv2d_backward(dy, x, w, (1, 1), (1, 1), True)
    assert dx.dtype == dw.dtype == dtype
    WORKERS.set_threads(1)
    np.testing.assert_array_equal(dx, conv.conv2d_backward_data(dy, w, x.shape, (1, 1), (1, 1)))
    np.testing.assert_array_equal(dw, conv.conv2d_backward_weight(dy, x, w.shape, (1, 1), (1, 1)))


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_share_runs_every_unit_once_and_reports_errors(threads):
    """Workers.share: each unit of each pass exactly once, on any number of threads; an
    exception in any pass reaches the caller, and BLAS's thread count comes back."""
    from threadpoolctl import ThreadpoolController
    libs = ThreadpoolController().select(user_api="blas").lib_controllers
    before = [lib.get_num_threads() for lib in libs]
    saved = WORKERS.threads
    WORKERS.set_threads(threads)
    try:
        done = {0: [], 1: []}

        def pass_(k):
            def fn(units):
                for i in units:
                    time.sleep(0.001 * (k + 1))
                    done[k].append(i)
            return fn
        WORKERS.share([(7, pass_(0)), (5, pass_(1))])
        assert sorted(done[0]) == list(range(7)) and sorted(done[1]) == list(range(5))

        def boom(units):
            for _ in units:
                raise ArithmeticError("a pass failed")
        for passes in ([(3, boom), (3, pass_(0))], [(3, pass_(0)), (3, boom)]):
            with pytest.raises(ArithmeticError, match="a pass failed"):
                WORKERS.share(passes)
        assert [lib.get_num_threads() for lib in libs] == before
    finally:
        WORKERS.set_threads(saved)


def test_no_input_gradient(two_threads):
    dy, x, w = _inputs()
    dx, dw = conv.conv2d_backward(dy, x, w, (1, 1), (1, 1), False)
    assert dx is None
    np.testing.assert_allclose(dw, reference.conv2d_backward(dy, x, w, 1, 1)[1], rtol=1e-11)


def test_pair_taken_on_two_threads_or_more(two_threads, monkeypatch):
    for stride in ((1, 1), (2, 2)):
        assert conv.pair_backward((4, 16, 8, 8), (32, 16, 3, 3), stride, (1, 1))
    monkeypatch.setattr(conv, "PARALLEL_MIN_FLOPS_CONV", 1 << 40)     # too small a layer
    assert not conv.pair_backward((4, 16, 8, 8), (16, 16, 3, 3), (1, 1), (1, 1))
    monkeypatch.setattr(conv, "PARALLEL_MIN_FLOPS_CONV", 1)
    WORKERS.set_threads(3)
    assert conv.pair_backward((4, 16, 8, 8), (16, 16, 3, 3), (1, 1), (1, 1))
    WORKERS.set_threads(1)
    assert not conv.pair_backward((4, 16, 8, 8), (16, 16, 3, 3), (1, 1), (1, 1))


@pytest.mark.parametrize("stride", [(2, 2), (1, 1)])
def test_pair_of_a_strided_or_widening_layer(two_threads, stride):
    _, x, w = _inputs(c=8, o=12)
    assert conv.pair_backward(x.shape, w.shape, stride, (1, 1))
    dy = np.random.default_rng(3).standard_normal(
        (x.shape[0], 12) + tuple(conv.out_hw(x.shape[2:], (3, 3), stride, (1, 1))))
    dx, dw = conv.conv2d_backward(dy, x, w, stride, (1, 1), True)
    rdx, rdw, _ = reference.conv2d_backward(dy, x, w, stride, 1)
    np.testing.assert_allclose(dx, rdx, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(dw, rdw, rtol=1e-11, atol=1e-11)


def test_the_seam_checks_its_arguments():
    B = cpu_backend()
    dy, x, w = _inputs(n=2)
    with pytest.raises(ValueError, match=r"conv2d_backward: dy has shape \(2, 16, 7, 8\)"):
        B.conv2d_backward(dy[:, :, 1:], x, w, (1, 1), (1, 1), True)
    with pytest.raises(TypeError, match="conv2d_backward: input_grad is 'yes'; expected True or False"):
        B.conv2d_backward(dy, x, w, (1, 1), (1, 1), "yes")
    with pytest.raises(TypeError, match="conv2d_backward: w has dtype float32; expected float64"):
        B.conv2d_backward(dy, x, w.astype(np.float32), (1, 1), (1, 1), True)


@pytest.mark.parametrize("g", [1, 5, 12])
def test_row_plan_backward_weight_in_chunks_of_any_size(g, monkeypatch):
    """RowPlan's backward-weight in chunks of g samples (12 samples: a short last chunk for
    g = 5), its shifted copies of dy in rows padded apart (_apart), against the loops."""
    dy, x, w = _inputs(c=16, o=16, hw=6, n=12)
    monkeypatch.setattr(conv.RowPlan, "weight_chunk", lambda self, n, itemsize: g)
    assert isinstance(conv.plan_for(x.shape, w.shape, (1, 1), (1, 1), for_weight=True),
                      conv.RowPlan)
    dw = conv.conv2d_backward_weight(dy, x, w.shape, (1, 1), (1, 1))
    np.testing.assert_allclose(dw, reference.conv2d_backward(dy, x, w, 1, 1)[1],
                               rtol=1e-11, atol=1e-11)


def test_apart_keeps_blocks_off_multiples_of_4k():
    # ResNet-20's 64-channel backward-weight: 64 rows of 16*74 floats, 3 blocks
    m = conv._apart(16 * 74, 64, 3, 4)
    assert m > 16 * 74
    for j in (1, 2):
        assert 512 <= (j * 64 * m * 4) % 4096 <= 3584
    assert conv._apart(5 * 1058, 16, 3, 4) == 5 * 1058      # already apart: kept
    assert conv._apart(100, 1024, 3, 4) == 100              # no length helps: kept
