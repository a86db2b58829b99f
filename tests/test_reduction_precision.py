"""The NumPy backend's per-channel sums over a batch are float32's rounding of the exact
sum, not worse: batch norm's statistics and gradient sums and the bias gradient add their
per-(sample, channel) partial sums over the samples in float64.  (In float32, one sample
after another, a channel whose values sit far from zero lost log2(N) bits: batch norm's mean
of 50 + N(0, 1) values came out five float32 spacings off, and with it every output.)"""
import numpy as np
import pytest

from gpucnn.backends.numpy import blocks, pointwise


def _data(shape, offset, seed=0):
    rng = np.random.default_rng(seed)
    return (offset + rng.standard_normal(shape)).astype(np.float32)


def _ulps(got, exact):
    """|got - exact| in units of float32's spacing at the exact value, per channel."""
    return np.abs(got.astype(np.float64) - exact) / np.spacing(np.abs(exact).astype(np.float32))


@pytest.mark.parametrize("shape", [(128, 8, 16, 16), (256, 4, 8, 8), (128, 6, 3000)], ids=str)
@pytest.mark.parametrize("offset", [50.0, -20.0])
def test_batchnorm_stats_are_float32_roundings_of_the_exact_ones(shape, offset):
    x = _data(shape, offset)
    x64 = x.astype(np.float64).reshape(shape[0], shape[1], -1)
    mean, var = blocks.batchnorm_stats(x)
    assert mean.dtype == var.dtype == np.float32
    exact_mean = x64.mean(axis=(0, 2))
    assert _ulps(mean, exact_mean).max() <= 1.0
    # the variance is about the mean the function returned (rounded first, as documented)
    exact_var = ((x64 - mean.astype(np.float64)[:, None]) ** 2).mean(axis=(0, 2))
    assert _ulps(var, exact_var).max() <= 1.0


@pytest.mark.parametrize("shape", [(128, 8, 16, 16), (512, 10)], ids=str)
def test_bias_gradient_is_the_float32_rounding_of_the_exact_sum(shape):
    dy = _data(shape, 3.0, seed=1)
    got = pointwise.bias_backward(dy)
    assert got.dtype == np.float32 and got.shape == (shape[1],)
    axes = (0,) + tuple(range(2, dy.ndim))
    assert _ulps(got, dy.astype(np.float64).sum(axis=axes)).max() <= 1.0


def test_batchnorm_bias_gradient_is_the_float32_rounding_of_the_exact_sum():
    # (dweight's sum of dy * (x - mean) cancels: its error is that of the float32 row sums,
    # which tests/test_numpy_blocking.py pins bitwise)
    x, dy = _data((128, 8, 16, 16), 40.0), _data((128, 8, 16, 16), 5.0, seed=2)
    mean, var = blocks.batchnorm_stats(x)
    weight = np.ones(8, np.float32)
    _, _, dbias = blocks.batchnorm_backward(dy, x, mean, var, weight, 1e-5, True)
    dy3 = dy.astype(np.float64).reshape(128, 8, -1)
    assert _ulps(dbias, dy3.sum(axis=(0, 2))).max() <= 1.0
