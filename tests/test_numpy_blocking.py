"""The NumPy backend's blocked memory-bound primitives (blocks.py, pointwise.relu_backward):
batch norm, the residual add, relu_backward and the option-A shortcut run block by block
(blocks.BLOCK_BYTES), the worker threads sharing the blocks (batch norm: Workers.share) or
splitting the batch (the others), into pooled outputs.

Every result must be bit for bit what the whole-array formulas give (the implementation
before blocking, kept below as the reference, with the same row sums): the per-element
arithmetic is unchanged and batch norm's per-(sample, channel) sums are gathered for the
whole batch before summing over the samples, so neither the block size, nor where the
blocks end, nor the number of threads may show.
"""
from __future__ import annotations

import numpy as np
import pytest

from gpucnn.backends.numpy import blocks, memory, parallel, pointwise
from gpucnn.backends.numpy.parallel import WORKERS


# ---------------------------------------------------------------- the reference (unblocked)
def _rows(a3, b3=None):
    """Per-(sample, channel) sums over S of a3 (times b3), whole arrays at once."""
    if 1 < a3.shape[2] <= blocks.EINSUM_MAX_ROW:
        return np.einsum("ncs->nc", a3) if b3 is None else np.einsum("ncs,ncs->nc", a3, b3)
    return (a3 if b3 is None else a3 * b3).sum(axis=2)


def _csum(a3, b3=None, m=1):
    """Per-channel sums: the rows added over the samples in float64, divided by m there,
    rounded to the arrays' dtype."""
    return (_rows(a3, b3).sum(axis=0, dtype=np.float64) / m).astype(a3.dtype)


def ref_stats(x):
    x3 = x.reshape(x.shape[0], x.shape[1], -1)
    n, _, s = x3.shape
    mean = _csum(x3, m=n * s)
    d = x3 - mean[:, None]
    return mean, _csum(d, d, m=n * s)


def ref_forward(x, mean, var, weight, bias, eps):
    t = var.dtype.type
    x3 = x.reshape(x.shape[0], x.shape[1], -1)
    sc = (weight / np.sqrt(var + t(eps)))[:, None]
    y = x3 - mean[:, None]
    y *= sc
    y += bias[:, None]
    return y.reshape(x.shape)


def ref_backward(dy, x, mean, var, weight, eps, batch_stats):
    t = x.dtype.type
    x3, dy3 = (a.reshape(a.shape[0], a.shape[1], -1) for a in (x, dy))
    n, c, s = x3.shape
    invstd = t(1) / np.sqrt(var + t(eps))
    a = weight * invstd
    mc = mean[:, None]

    dbias = _csum(dy3)
    dweight = _csum(x3 - mc, dy3) * invstd
    if batch_stats:
        inv_m = t(1.0 / (n * s))
        k1 = (dbias * inv_m)[:, None]
        k2 = (invstd * dweight * inv_m)[:, None]
        xmu = x3 - mc
        xmu *= k2
        dx = dy3 - k1
        dx -= xmu
        dx *= a[:, None]
    else:
        dx = dy3 * a[:, None]
    return dx.reshape(x.shape), dweight, dbias


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request, monkeypatch):
    """1 or 2 workers, splitting even the small arrays of these tests."""
    monkeypatch.setattr(parallel, "PARALLEL_MIN_ELEMENTS", 1)
    before = WORKERS.threads
    WORKERS.set_threads(request.param)
    yield request.param
    WORKERS.set_threads(before)


# block sizes: whole samples that do not divide the batch (1 KiB, 40 bytes for 2-D), one
# row per block (4 bytes), channel ranges of a sample (16 bytes for 2-D), and the default
BLOCKS = [4, 16, 40, 1 << 10, blocks.BLOCK_BYTES]
SHAPES = [(7, 3, 5, 4), (1, 5, 3, 3), (9, 6), (5, 4, 11), (3, 2, 1, 1), (16, 8, 9, 7)]


def _data(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w = (rng.standard_normal(c) * 0.5 + 1).astype(dtype)
    b = rng.standard_normal(c).astype(dtype)
    return x, dy, w, b


def _same(got, want):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert got.tobytes() == want.tobytes(), np.max(np.abs(got.astype(float) - want))


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("einsum_max_row", [blocks.EINSUM_MAX_ROW, 4], ids=["einsum", "pairwise"])
def test_batchnorm_is_bitwise_the_unblocked_formulas(block, shape, dtype, einsum_max_row, threads,
                                                     monkeypatch):
    """(einsum_max_row 4: rows longer than 4 values take the pairwise sum instead.)"""
    monkeypatch.setattr(blocks, "BLOCK_BYTES", block)
    monkeypatch.setattr(blocks, "EINSUM_MAX_ROW", einsum_max_row)
    x, dy, w, b = _data(shape, dtype)
    mean, var = blocks.batchnorm_stats(x)
    rmean, rvar = ref_stats(x)
    _same(mean, rmean)
    _same(var, rvar)
    _same(blocks.batchnorm_forward(x, mean, var, w, b, 1e-5), ref_forward(x, mean, var, w, b, 1e-5))
    for batch_stats in (True, False):
        got = blocks.batchnorm_backward(dy, x, mean, var, w, 1e-5, batch_stats)
        want = ref_backward(dy, x, mean, var, w, 1e-5, batch_stats)
        for g, r in zip(got, want):
            _same(g, r)


@pytest.mark.parametrize("shape", [(64, 8, 32, 32), (128, 16, 8, 8), (32, 4, 64, 65)], ids=str)
def test_float32_batchnorm_sums_are_accurate(shape):
    """Per-channel sums of 65536-133120 float32 values, offset by 100 (np.einsum rows, and
    pairwise rows for the 4160-value rows of the last shape), within 1.5e-6 of float64: a
    serial float32 sum over each channel is 3e-6 to 1e-5 off here."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(shape) + 100).astype(np.float32)
    dy = (rng.standard_normal(shape) + 1).astype(np.float32)
    mean, var = blocks.batchnorm_stats(x)
    x64, axes = x.astype(np.float64), (0, 2, 3)
    m64 = x64.mean(axis=axes)
    v64 = ((x64 - m64[:, None, None]) ** 2).mean(axis=axes)
    ones = np.ones(shape[1], np.float32)
    _, dw, db = blocks.batchnorm_backward(dy, x, mean, var, ones, 1e-5, True)
    db64 = dy.astype(np.float64).sum(axis=axes)
    dw64 = ((dy * (x64 - mean.astype(np.float64)[:, None, None])).sum(axis=axes)
            / np.sqrt(var.astype(np.float64) + 1e-5))
    for got, want in ((mean, m64), (var, v64), (db, db64), (dw, dw64)):
        assert np.abs(got - want).max() <= 1.5e-6 * np.abs(want).max()


def test_the_block_shapes_cover_the_cases_above(monkeypatch):
    """BLOCKS and SHAPES reach every kind of block: several samples with a shorter last
    block, one row, channel ranges of one sample with a shorter last range."""
    monkeypatch.setattr(blocks, "BLOCK_BYTES", 1 << 10)
    assert blocks._block_shape(7, 3, 20, 4) == (4, 3)                       # 240-byte samples
    assert list(blocks._blocks(0, 7, 3, (4, 3))) == [(0, 4, 0, 3), (4, 7, 0, 3)]
    assert list(blocks._blocks(5, 7, 3, (4, 3))) == [(5, 7, 0, 3)]
    monkeypatch.setattr(blocks, "BLOCK_BYTES", 16)
    assert blocks._block_shape(9, 6, 1, 4) == (1, 4)                        # (9, 6) float32
    assert list(blocks._blocks(2, 4, 6, (1, 4))) == [(2, 3, 0, 4), (2, 3, 4, 6),
                                                     (3, 4, 0, 4), (3, 4, 4, 6)]
    monkeypatch.setattr(blocks, "BLOCK_BYTES", 4)
    assert blocks._block_shape(7, 3, 20, 4) == (1, 1)                       # rows over a block
    monkeypatch.setattr(blocks, "BLOCK_BYTES", 1 << 19)
    assert blocks._block_shape(128, 16, 1024, 4) == (8, 16)                 # ResNet-20
    assert blocks._block_shape(2, 16, 1024, 4) == (2, 16)


def test_batchnorm_outputs_are_new_arrays_that_survive_later_calls():
    """Pooled outputs: a live result is never handed out again."""
    x, dy, w, b = _data((64, 8, 16, 16), np.float32)      # 512 KiB: pooled
    mean, var = blocks.batchnorm_stats(x)
    y1 = blocks.batchnorm_forward(x, mean, var, w, b, 1e-5)
    keep = y1.copy()
    y2 = blocks.batchnorm_forward(x + 1, mean, var, w, b, 1e-5)
    dx = blocks.batchnorm_backward(dy, x, mean, var, w, 1e-5, True)[0]
    assert not np.shares_memory(y1, y2) and not np.shares_memory(y1, dx)
    assert not np.shares_memory(y1, x) and not np.shares_memory(dx, dy)
    _same(y1, keep)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_batchnorm_nonfinite_stays_in_its_channel_with_small_blocks(bad, threads, monkeypatch):
    monkeypatch.setattr(blocks, "BLOCK_BYTES", 24)
    x, dy, w, b = _data((6, 4, 3, 3), np.float32)
    x[4, 2, 1, 1] = bad
    with np.errstate(invalid="ignore"):
        mean, var = blocks.batchnorm_stats(x)
        dx, dw, db = blocks.batchnorm_backward(dy, x, mean, var, w, 1e-5, True)
    assert not np.isfinite(var[2]) and np.isfinite(np.delete(var, 2)).all()
    assert not np.isfinite(dx[:, 2]).any() and np.isfinite(np.delete(dx, 2, axis=1)).all()


# ----------------------------------------------------------------------- relu_backward
@pytest.mark.parametrize("block", [4, 12, 64, blocks.BLOCK_BYTES])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_relu_backward_is_the_select_in_every_block(block, dtype, threads, monkeypatch):
    """dy where y > 0 else exactly 0; blocks with a non-finite dy where y <= 0 (whose
    product is NaN) are redone, the blocks around them are not disturbed."""
    monkeypatch.setattr(blocks, "BLOCK_BYTES", block)
    rng = np.random.default_rng(5)
    y = np.maximum(rng.standard_normal(101), 0).astype(dtype)
    dy = rng.standard_normal(101).astype(dtype)
    y[[3, 40, 41, 77]] = [0, -2, np.nan, 1]
    dy[[3, 40, 41, 77, 90]] = [np.inf, np.nan, -np.inf, np.nan, -np.inf]
    with np.errstate(invalid="ignore"):
        want = np.where(y > 0, dy, dtype(0))
    got = pointwise.relu_backward(dy, y)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)        # (0 * negative dy is -0.0: equal to 0)
    assert got[3] == 0 and got[40] == 0 and got[41] == 0 and np.isnan(got[77])
    assert got[90] == (-np.inf if y[90] > 0 else 0)


def test_relu_backward_of_finite_values_matches_the_product():
    rng = np.random.default_rng(6)
    y = np.maximum(rng.standard_normal((128, 16, 8, 8)), 0).astype(np.float32)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    _same(pointwise.relu_backward(dy, y), dy * (y > 0).astype(np.float32))


# ---------------------------------------------------------------------------------- add
@pytest.mark.parametrize("shape", [(128, 16, 16, 16), (3, 5), (), (0, 4)], ids=str)
def test_add_is_a_new_array(shape, threads):
    rng = np.random.default_rng(7)
    a = rng.standard_normal(shape).astype(np.float32)
    b = rng.standard_normal(shape).astype(np.float32)
    got = blocks.add(a, b)
    _same(got, a + b)
    assert not np.shares_memory(got, a) and not np.shares_memory(got, b)


def test_add_broadcasts_and_promotes_as_numpy():
    a = np.arange(6.0, dtype=np.float32).reshape(2, 3)
    _same(blocks.add(a, np.float32(1)), a + np.float32(1))
    _same(blocks.add(a, np.ones(3, np.float32)), a + 1)
    _same(blocks.add(a, np.ones((2, 3))), a + np.ones((2, 3)))
    _same(blocks.add(a.T, a.T), a.T + a.T)                  # not contiguous


# --------------------------------------------------------------------- option-A shortcut
def _dirty_pool(nbytes):
    """Leave free pooled buffers full of NaN bits, as a later pooled output may get."""
    for _ in range(4):
        buf = memory.empty(nbytes // 4, np.float32)
        buf.fill(np.nan)
        del buf


@pytest.mark.parametrize("x_shape, stride, pad_before, out_channels", [
    ((64, 16, 32, 32), (2, 2), 8, 32),     # ResNet's option A, pooled outputs
    ((64, 32, 16, 16), (2, 2), 16, 64),
    ((5, 3, 7, 5), (2, 3), 1, 6),          # odd sizes
    ((4, 3, 6, 6), (1, 1), 0, 5),          # no subsampling, padding after only
    ((1, 2, 5, 5), (2, 2), 2, 4),          # padding before only
])
@pytest.mark.parametrize("block", [4, 1 << 10, blocks.BLOCK_BYTES])
def test_subsample_pad_writes_every_element(x_shape, stride, pad_before, out_channels, block,
                                             threads, monkeypatch):
    monkeypatch.setattr(blocks, "BLOCK_BYTES", block)
    rng = np.random.default_rng(8)
    x = rng.standard_normal(x_shape).astype(np.float32)
    n, c, h, w = x_shape
    oh, ow = -(-h // stride[0]), -(-w // stride[1])
    want = np.zeros((n, out_channels, oh, ow), np.float32)
    want[:, pad_before:pad_before + c] = x[:, :, ::stride[0], ::stride[1]]
    _dirty_pool(want.nbytes)
    _same(blocks.subsample_pad_forward(x, stride, pad_before, out_channels), want)
    dy = rng.standard_normal(want.shape).astype(np.float32)
    want_dx = np.zeros(x_shape, np.float32)
    want_dx[:, :, ::stride[0], ::stride[1]] = dy[:, pad_before:pad_before + c]
    _dirty_pool(want_dx.nbytes)
    _same(blocks.subsample_pad_backward(dy, x_shape, stride, pad_before), want_dx)
