"""Backward-data of strided convolutions by the input's phases (windows.col2im_phases):
each input element written once as the sum of the window offsets that reach it."""
import numpy as np
import pytest

from gpucnn import reference
from gpucnn.backends.numpy import conv, windows

GEOMETRIES = [  # (C, O, H, W, kh, kw, stride, padding)
    (3, 4, 8, 8, 3, 3, (2, 2), (1, 1)),        # ResNet's downsampling 3x3
    (2, 3, 9, 7, 3, 3, (2, 2), (1, 1)),        # odd sizes: the last row/column phase shorter
    (2, 3, 9, 7, 3, 2, (2, 3), (0, 1)),
    (2, 3, 7, 7, 1, 1, (2, 2), (0, 0)),        # 1x1 stride 2: three phases get nothing
    (2, 2, 10, 9, 5, 5, (3, 2), (2, 1)),
    (2, 2, 5, 5, 2, 2, (3, 3), (0, 0)),        # kernel < stride: gaps no window reaches
    (2, 3, 6, 6, 3, 3, (2, 1), (1, 1)),        # strided along one axis only
    (1, 2, 4, 4, 4, 4, (2, 2), (3, 3)),        # padding past the kernel's reach
]


@pytest.mark.parametrize("c, o, h, w, kh, kw, stride, padding", GEOMETRIES)
def test_matches_the_direct_loops(c, o, h, w, kh, kw, stride, padding):
    rng = np.random.default_rng(h * 10 + kh)
    x = rng.standard_normal((3, c, h, w))
    wt = rng.standard_normal((o, c, kh, kw))
    plan = conv.plan_for(x.shape, wt.shape, stride, padding)
    assert plan.phases is not None
    dy = rng.standard_normal((3, o, plan.oh, plan.ow))
    dx = np.full(x.shape, np.nan)          # every element must be written, none left over
    plan.backward_data(dy, wt.reshape(o, -1).T, dx, 2, conv._chunks(range(2), 2, 3))
    rdx = reference.conv2d_backward(dy, x, wt, stride, padding)[0]
    np.testing.assert_allclose(dx, rdx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(conv.conv2d_backward_data(dy, wt, x.shape, stride, padding), rdx,
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("c, o, h, w, kh, kw, stride, padding", GEOMETRIES)
def test_every_offset_lands_once(c, o, h, w, kh, kw, stride, padding):
    """The phases' terms are exactly the (offset, output, input) triples of the window walk."""
    from gpucnn.backends.geometry import out_hw
    oh, ow = out_hw((h, w), (kh, kw), stride, padding)
    walk = set()
    for i, j, (out_h, out_w), (in_h, in_w) in windows.window_offsets((oh, ow), (h, w), (kh, kw),
                                                                     stride, padding):
        for a, r in zip(range(oh)[out_h], range(h)[in_h]):
            for b, q in zip(range(ow)[out_w], range(w)[in_w]):
                walk.add((i, j, a, b, r, q))
    phases = set()
    for r0, c0, (hr, wc), terms in windows.phase_terms((oh, ow), (h, w), (kh, kw), stride,
                                                        padding):
        assert hr == len(range(r0, h, stride[0])) and wc == len(range(c0, w, stride[1]))
        for i, j, (ti, tj), (si, sj), _ in terms:
            for ta, sa in zip(range(hr)[ti], range(oh)[si]):
                for tb, sb in zip(range(wc)[tj], range(ow)[sj]):
                    phases.add((i, j, sa, sb, r0 + ta * stride[0], c0 + tb * stride[1]))
    assert phases == walk


def test_float32_and_the_plain_adds_agree(monkeypatch):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 16, 16, 16)).astype(np.float32)
    wt = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((4, 32, 8, 8)).astype(np.float32)
    conv._plan.cache_clear()
    phased = conv.conv2d_backward_data(dy, wt, x.shape, (2, 2), (1, 1))
    monkeypatch.setattr(conv, "PHASES", False)
    conv._plan.cache_clear()
    try:
        assert conv.plan_for(x.shape, wt.shape, (2, 2), (1, 1)).phases is None
        added = conv.conv2d_backward_data(dy, wt, x.shape, (2, 2), (1, 1))
    finally:
        conv._plan.cache_clear()
    assert phased.dtype == np.float32
    np.testing.assert_allclose(phased, added, rtol=1e-5, atol=1e-5)
