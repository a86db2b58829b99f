"""conv2d_backward_data computed as a forward convolution with the flipped, transposed
kernel (the NumPy backend's path for stride-1 layers with C >= O, ResNet's 3x3 layers)
agrees with the loop reference and with the direct GEMM + col2im way."""
import numpy as np
import pytest

from gpucnn import reference
from gpucnn.backends.numpy import conv


@pytest.mark.parametrize("c, o, k, pad, hw", [(8, 8, 3, 1, 9), (8, 4, 3, 1, 7), (6, 6, 3, 0, 8),
                                               (5, 3, 5, 2, 8), (4, 4, 3, 2, 6),
                                               (16, 16, 3, 1, 32)])
def test_matches_reference_and_direct(c, o, k, pad, hw, monkeypatch):
    assert conv.data_as_forward((2, c, hw, hw), (o, c, k, k), (1, 1), (pad, pad))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, c, hw, hw))
    w = rng.standard_normal((o, c, k, k))
    oh = hw + 2 * pad - k + 1
    dy = rng.standard_normal((3, o, oh, oh))
    dx = conv.conv2d_backward_data(dy, w, x.shape, (1, 1), (pad, pad))
    ref = reference.conv2d_backward(dy, x, w, 1, pad)[0] if hw <= 9 else None
    if ref is not None:
        np.testing.assert_allclose(dx, ref, rtol=1e-10, atol=1e-12)
    monkeypatch.setattr(conv, "data_as_forward", lambda *a: False)
    direct = conv.conv2d_backward_data(dy, w, x.shape, (1, 1), (pad, pad))
    np.testing.assert_allclose(dx, direct, rtol=1e-10, atol=1e-12)
    dx32 = conv.conv2d_backward_data(dy.astype(np.float32), w.astype(np.float32), x.shape,
                                     (1, 1), (pad, pad))
    assert dx32.dtype == np.float32


@pytest.mark.parametrize("x_shape, w_shape, stride, pad", [
    ((2, 4, 8, 8), (8, 4, 3, 3), (1, 1), (1, 1)),     # C < O: the direct way
    ((2, 8, 8, 8), (8, 8, 3, 3), (2, 2), (1, 1)),     # stride 2
    ((2, 8, 8, 8), (8, 8, 1, 1), (1, 1), (0, 0)),     # 1x1
    ((2, 8, 8, 8), (8, 8, 3, 3), (1, 1), (3, 3)),     # padding past k - 1
])
def test_other_layers_keep_the_direct_way(x_shape, w_shape, stride, pad):
    assert not conv.data_as_forward(x_shape, w_shape, stride, pad)
