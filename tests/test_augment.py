"""Augmentation: crop_flip / channel_normalize against direct loops on every backend present,
the transforms' seeded reproducibility, the fused crop+flip, and the error messages."""
from __future__ import annotations

import numpy as np
import pytest

import gpucnn
from gpucnn import reference
from gpucnn import transforms as T
from gpucnn.backends import cpu_backend


def crop_flip_loop(x, top, left, flip, size, padding):
    """The definition, one element at a time (gpucnn.reference), back in x's dtype."""
    return reference.crop_flip(x, top, left, flip, size, padding).astype(x.dtype)


SHAPES = [((4, 3, 6, 6), (6, 6), (2, 2)), ((3, 2, 5, 7), (3, 4), (0, 1)),
          ((2, 1, 3, 4), (6, 5), (2, 1)), ((1, 2, 4, 4), (4, 4), (0, 0))]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,size,padding", SHAPES)
def test_crop_flip_matches_the_loop(backend, shape, size, padding, dtype):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(dtype)
    n, _, h, w = shape
    top = rng.integers(0, h + 2 * padding[0] - size[0] + 1, n)
    left = rng.integers(0, w + 2 * padding[1] - size[1] + 1, n)
    flip = np.arange(n) % 2 == 0
    got = backend.to_numpy(backend.crop_flip(backend.asarray(x), top, left, flip, size, padding))
    want = crop_flip_loop(x, top, left, flip, size, padding)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, want)


def test_crop_flip_extreme_offsets_pad_with_zeros():
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4) + 1
    B = cpu_backend()
    y = B.crop_flip(x, [0], [0], [False], 4, 2)[0, 0]
    assert (y[:2] == 0).all() and (y[:, :2] == 0).all() and (y[2:, 2:] == x[0, 0, :2, :2]).all()
    y = B.crop_flip(x, [4], [4], [True], 4, 2)[0, 0]
    assert (y[2:] == 0).all() and (y[:, :2] == 0).all()
    np.testing.assert_array_equal(y[:2, 2:], x[0, 0, 2:, 2:][:, ::-1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_channel_normalize_matches_the_loop(backend, dtype):
    x = np.random.default_rng(4).standard_normal((2, 3, 4, 5)).astype(dtype)
    mean, std = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
    got = backend.to_numpy(backend.channel_normalize(backend.asarray(x), mean, std))
    want = np.empty_like(x)
    for c in range(3):
        want[:, c] = (x[:, c] - dtype(mean[c])) / dtype(std[c])
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, want)


def test_transforms_are_seeded_and_reproducible():
    x = np.random.default_rng(5).standard_normal((16, 3, 8, 8)).astype(np.float32)
    make = lambda: T.Compose([T.RandomCrop(8, padding=2, rng=7), T.RandomHorizontalFlip(rng=8)])
    a, b = make(), make()
    y1, y2 = a(x), b(x)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(a(x), y1)            # the next batch draws new numbers
    gpucnn.manual_seed(11)
    g1 = T.RandomCrop(8, padding=2)(x)
    gpucnn.manual_seed(11)
    np.testing.assert_array_equal(T.RandomCrop(8, padding=2)(x), g1)


def test_fused_crop_flip_equals_the_two_steps():
    x = np.random.default_rng(6).standard_normal((32, 3, 8, 8))
    fused = T.Compose([T.RandomCrop((6, 7), padding=(1, 2), rng=1),
                       T.RandomHorizontalFlip(rng=2), T.Normalize([0.1] * 3, [0.5] * 3)])
    crop, flip = T.RandomCrop((6, 7), padding=(1, 2), rng=1), T.RandomHorizontalFlip(rng=2)
    norm = T.Normalize([0.1] * 3, [0.5] * 3)
    np.testing.assert_array_equal(fused(x), norm(flip(crop(x))))


def test_draws_are_per_image_and_cover_the_range():
    rng = np.random.default_rng(0)
    crop = T.RandomCrop(32, padding=4, rng=rng)
    top, left = crop.draw(np.zeros((4000, 1, 32, 32), np.float32))
    assert top.min() == 0 and top.max() == 8 and left.min() == 0 and left.max() == 8
    flips = T.RandomHorizontalFlip(0.25, rng=1).draw(np.zeros((4000, 1, 2, 2)))
    assert 0.2 < flips.mean() < 0.3
    assert T.RandomHorizontalFlip(0.0).draw(np.zeros((5, 1, 2, 2))).sum() == 0


def test_flip_is_a_mirror():
    x = np.arange(24, dtype=np.float64).reshape(2, 1, 3, 4)
    y = T.RandomHorizontalFlip(p=1.0)(x)
    np.testing.assert_array_equal(y, x[..., ::-1])


def test_transforms_run_on_the_emulated_backend():
    from tests.backend_registry import entry
    B, reason = entry("emulated").get()
    if B is None:
        pytest.skip(reason)
    from gpucnn.backends import override_backend
    x = np.random.default_rng(9).standard_normal((6, 3, 5, 5)).astype(np.float32)
    aug = lambda: T.Compose([T.RandomCrop(5, padding=1, rng=3), T.RandomHorizontalFlip(rng=4),
                             T.Normalize([0.5, 0.4, 0.3], [0.2, 0.3, 0.4])])
    want = aug()(x)
    with override_backend(B):
        got = aug()(B.asarray(x))
    np.testing.assert_allclose(B.to_numpy(got), want, rtol=1e-6)


@pytest.mark.parametrize("call,exc,match", [
    (lambda B, x: B.crop_flip(x, [0, 9], [0, 0], [0, 0], 4, 2), ValueError, r"top\[1\] = 9 is outside \[0, 4\]"),
    (lambda B, x: B.crop_flip(x, [0, 0], [0, -1], [0, 0], 4, 2), ValueError, r"left\[1\] = -1"),
    (lambda B, x: B.crop_flip(x, [0], [0], [0], 4, 2), ValueError, r"top must have shape \(2,\)"),
    (lambda B, x: B.crop_flip(x, [0, 0], [0, 0], [0, 0], 9, 2), ValueError, "does not fit"),
    (lambda B, x: B.crop_flip(x, [0, 0], [0, 0], [0, 0], 4, -1), ValueError, "padding must be >= 0"),
    (lambda B, x: B.crop_flip(x, [0.5, 0], [0, 0], [0, 0], 4, 1), TypeError, "top must hold integers"),
    (lambda B, x: B.crop_flip(x, [0, 0], [0, 0], [0.5, 0], 4, 1), TypeError, "flip must hold"),
    (lambda B, x: B.crop_flip(x, [0, 0], [0, 0], [0, 0], (4,), 1), ValueError, "size must be an int or a pair"),
    (lambda B, x: B.crop_flip(x[0], [0, 0], [0, 0], [0, 0], 4, 1), ValueError, "x must be 4-D"),
    (lambda B, x: B.crop_flip(x.astype(np.uint8), [0, 0], [0, 0], [0, 0], 4, 1), TypeError, "float32 or float64"),
    (lambda B, x: B.channel_normalize(x, [0, 0], [1, 1, 1]), ValueError, r"mean must have one value per channel \(3\)"),
    (lambda B, x: B.channel_normalize(x, [0, 0, 0], [1, 0, 1]), ValueError, "std must be non-zero"),
    (lambda B, x: B.channel_normalize(x, [0, np.nan, 0], [1, 1, 1]), ValueError, "mean must be finite"),
])
def test_primitive_errors(backend, call, exc, match):
    x = backend.asarray(np.zeros((2, 3, 4, 4), np.float32))
    with pytest.raises(exc, match=match):
        call(backend, x)


@pytest.mark.parametrize("make,match", [
    (lambda: T.RandomCrop(0), "size must be an int >= 1"),
    (lambda: T.RandomCrop(4, padding=-1), "padding must be an int >= 0"),
    (lambda: T.RandomCrop(4, rng="seed"), "rng: expected a numpy.random.Generator"),
    (lambda: T.RandomHorizontalFlip(1.5), r"p must be a probability in \[0, 1\]"),
    (lambda: T.Normalize([0, 0], [1]), "mean has 2 values but std has 1"),
    (lambda: T.Normalize([0], [0]), "std non-zero"),
    (lambda: T.Compose([T.RandomCrop(4), 3]), "transform 1 .* is not callable"),
])
def test_transform_argument_errors(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_transform_call_errors():
    x = np.zeros((2, 3, 4, 4), np.float32)
    with pytest.raises(ValueError, match=r"crop size \(9, 9\) is larger than the 4x4 images"):
        T.RandomCrop(9, padding=1)(x)
    with pytest.raises(ValueError, match=r"expected a batch \(N, C, H, W\), got shape \(3, 4, 4\)"):
        T.RandomHorizontalFlip()(x[0])
    with pytest.raises(ValueError, match="the batch has 3 channels but mean/std have 2"):
        T.Normalize([0, 0], [1, 1])(x)
