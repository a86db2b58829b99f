"""Global average pooling (one window over the whole plane: AdaptiveAvgPool2d(1)) on NumPy
takes a path of its own; it must give bitwise what the general window walk gives."""
import numpy as np
import pytest

from gpucnn.backends.numpy import pooling


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(5, 4, 8, 8), (3, 2, 7, 5), (2, 3, 1, 1), (4, 6, 1, 9)])
def test_global_path_is_bitwise_the_window_walk(shape, dtype, monkeypatch):
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(dtype)
    x.flat[:3] = (np.inf, np.nan, -np.inf)          # non-finite values sum the same way too
    k = shape[2:]
    assert pooling._is_global(shape, k, (0, 0))
    y = pooling.avgpool2d_forward(x, k, k, (0, 0))
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = pooling.avgpool2d_backward(dy, shape, k, k, (0, 0))
    monkeypatch.setattr(pooling, "_is_global", lambda *a: False)
    y0 = pooling.avgpool2d_forward(x, k, k, (0, 0))
    dx0 = pooling.avgpool2d_backward(dy, shape, k, k, (0, 0))
    assert y.dtype == dx.dtype == dtype
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_array_equal(dx, dx0)
    np.testing.assert_allclose(y[1:, :, 0, 0], x[1:].reshape(shape[0] - 1, shape[1], -1).mean(axis=2),
                               rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)


def test_padding_or_a_smaller_window_is_not_global():
    assert not pooling._is_global((2, 3, 8, 8), (8, 8), (1, 1))
    assert not pooling._is_global((2, 3, 8, 8), (4, 8), (0, 0))
