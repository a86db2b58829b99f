"""Alignment of vector loads and stores in the CUDA emulator (tests/cuda_emu).

A GPU faults ("misaligned address") on an N-byte load or store (float2/Pair<float>: 8,
float4/Quad<float>/double2: 16) whose address is not a multiple of N; a CPU does not. The
emulator checks every N-byte access the compiler marks aligned, and places each array argument
at the address it would have on a GPU modulo 256 (a view keeps its offset into its allocation),
so a kernel that takes its vector path on an odd width or an offset view is refused here too.

* toy kernels (tests/cuda_emu/toy/toy.cu) with a planted misaligned access are refused, with the
  kernel, argument and byte offset named;
* the real kernels pass on odd widths and offset views;
* a planted bug (the 2-wide Pair load of kernels/pool2d.cu taken without its ``W % 2 == 0``
  test) is refused on an odd width.
"""
from __future__ import annotations

import pathlib
import shutil

import numpy as np
import pytest

from tests.cuda_emu import (DEVICE_ALIGNMENT, EmulatedModule, KernelAlignmentError, KernelMemoryError,
                            device_misalignment, emulator_unavailable_reason, make_emulated_backend)

_reason = emulator_unavailable_reason()
pytestmark = [pytest.mark.emulated,
              pytest.mark.skipif(_reason is not None, reason=f"CUDA emulator unavailable: {_reason}")]

TOY = pathlib.Path(__file__).parent / "cuda_emu" / "toy" / "toy.cu"
KERNEL_DIR = pathlib.Path(__file__).resolve().parents[1] / "kernels"


@pytest.fixture(scope="module")
def toy():
    return EmulatedModule(TOY, ["pair_sum", "float4_fill", "double2_sum", "double4_sum"])


@pytest.fixture(scope="module")
def cpu():
    from gpucnn.backends import cpu_backend
    return cpu_backend()


@pytest.fixture(scope="module")
def emu():
    return make_emulated_backend()


# ------------------------------------------------------------------------------------------------
# where arrays land
def test_device_misalignment_follows_the_view_offset():
    a = np.zeros(1000, np.float32)
    assert device_misalignment(a) == 0
    assert device_misalignment(a[1:]) == 4
    assert device_misalignment(a[3:].reshape(997, 1)) == 12
    assert device_misalignment(a[64:]) == 0                      # 256 bytes in: aligned again
    assert device_misalignment(np.zeros(9)[1:]) == 8
    assert DEVICE_ALIGNMENT == 256


# ------------------------------------------------------------------------------------------------
# planted misaligned accesses in toy kernels
def test_aligned_pair_loads_run(toy):
    x = np.arange(40, dtype=np.float32)
    y = np.zeros(8, np.float32)
    toy.get_function("pair_sum")((1,), (32,), (x, y, np.int64(4), np.int64(8)))
    np.testing.assert_array_equal(y, x[4:20:2] + x[5:21:2])


def test_misaligned_pair_load_is_refused_naming_kernel_argument_and_offset(toy):
    x = np.arange(40, dtype=np.float32)
    y = np.zeros(8, np.float32)
    with pytest.raises(KernelAlignmentError,
                       match=r"kernel pair_sum \(toy.cu\).*misaligned 8-byte read by thread \(0, 0, 0\) of "
                             r"block \(0, 0, 0\).*argument 0 'x' \(const float\*\) at byte offset 12 "
                             r"\(element 3\).*address % 8 = 4"):
        toy.get_function("pair_sum")((1,), (32,), (x, y, np.int64(3), np.int64(8)))
    assert not y.any()  # nothing is copied back from a failed launch


def test_misaligned_float4_store_is_refused(toy):
    y = np.zeros(64, np.float32)
    toy.get_function("float4_fill")((1,), (32,), (y, np.int64(8), np.int64(4)))   # 32 bytes in: fine
    np.testing.assert_array_equal(y[8:24], np.repeat(np.arange(4, dtype=np.float32), 4))
    with pytest.raises(KernelAlignmentError, match=r"float4_fill.*misaligned 16-byte write.*argument 0 'y' "
                                                   r"\(float\*\) at byte offset 8 \(element 2\)"):
        toy.get_function("float4_fill")((1,), (32,), (np.zeros(64, np.float32), np.int64(2), np.int64(4)))


def test_misaligned_double2_load_is_refused(toy):
    a = np.arange(20, dtype=np.float64)
    out = np.zeros(4)
    toy.get_function("double2_sum")((1,), (32,), (a, out, np.int64(2), np.int64(4)))
    np.testing.assert_array_equal(out, a[2:10:2] + a[3:11:2])
    with pytest.raises(KernelAlignmentError, match=r"double2_sum.*misaligned pointer cast.*reinterpret_cast to a "
                                                   r"type aligned to 16 bytes.*argument 0 'a'.*byte offset 8 "
                                                   r"\(element 1\)"):
        toy.get_function("double2_sum")((1,), (32,), (a, out, np.int64(1), np.int64(4)))


def test_cast_to_a_32_byte_aligned_type_is_checked(toy):
    # Loads wider than 16 bytes reach the runtime as byte ranges (no alignment known there); the
    # reinterpret_cast that made the pointer is what catches a misaligned Quad<double>.
    a = np.arange(40, dtype=np.float64)
    out = np.zeros(4)
    toy.get_function("double4_sum")((1,), (32,), (a, out, np.int64(8), np.int64(4)))
    np.testing.assert_array_equal(out, a[8:24].reshape(4, 4).sum(axis=1))
    for offset in (1, 2, 6):
        with pytest.raises(KernelAlignmentError, match=rf"double4_sum.*misaligned pointer cast.*aligned to 32 "
                                                       rf"bytes.*argument 0 'a'.*byte offset {8 * offset}\b"):
            toy.get_function("double4_sum")((1,), (32,), (a, out, np.int64(offset), np.int64(4)))


def test_an_offset_view_is_misaligned_as_on_a_gpu(toy):
    # offset 0 into a view that starts one float into its buffer: on a GPU the pointer is
    # 4 bytes past an aligned address, and so it is on the emulator.
    buf = np.arange(41, dtype=np.float32)
    with pytest.raises(KernelAlignmentError, match=r"argument 0 'x'.*byte offset 0 \(element 0\), the array "
                                                   r"starting 4 bytes past a 256-byte boundary"):
        toy.get_function("pair_sum")((1,), (32,), (buf[1:], np.zeros(8, np.float32), np.int64(0), np.int64(8)))
    y = np.zeros(8, np.float32)
    toy.get_function("pair_sum")((1,), (32,), (buf[2:], y, np.int64(0), np.int64(8)))  # 8 bytes in: fine
    np.testing.assert_array_equal(y, buf[2:18:2] + buf[3:19:2])


def test_alignment_error_is_a_memory_error():
    assert issubclass(KernelAlignmentError, KernelMemoryError)


# ------------------------------------------------------------------------------------------------
# the real kernels: odd widths, widths that are even but not multiples of 4, offset views
def _view(host, offset):
    """``host`` as a C-contiguous view starting ``offset`` elements into a larger buffer."""
    buf = np.zeros(host.size + offset, host.dtype)
    buf[offset:] = host.reshape(-1)
    v = buf[offset:].reshape(host.shape)
    assert v.flags.c_contiguous and device_misalignment(v) == offset * host.itemsize % DEVICE_ALIGNMENT
    return v


def _close(got, want, dtype):
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("width", [5, 6, 7, 8])
@pytest.mark.parametrize("offset", [0, 1, 2, 3])
def test_pooling_kernels_on_odd_widths_and_offset_views(emu, cpu, dtype, width, offset):
    rng = np.random.default_rng(width * 10 + offset)
    xh = rng.standard_normal((2, 3, 6, width)).astype(dtype)
    x = _view(xh, offset)
    for k, s, p in (((2, 2), (2, 2), (0, 0)), ((2, 2), (2, 2), (1, 0)), ((2, 2), (2, 1), (0, 0))):
        y, am = emu.maxpool2d_forward(x, k, s, p)
        y0, am0 = cpu.maxpool2d_forward(xh, k, s, p)
        _close(y, y0, dtype)
        np.testing.assert_array_equal(am, am0)
        _close(emu.avgpool2d_forward(x, k, s, p), cpu.avgpool2d_forward(xh, k, s, p), dtype)
        dy = _view(rng.standard_normal(y0.shape).astype(dtype), offset)
        dyh = np.ascontiguousarray(dy)
        _close(emu.maxpool2d_backward(dy, _view(am0, offset), xh.shape, k, s, p),
               cpu.maxpool2d_backward(dyh, am0, xh.shape, k, s, p), dtype)
        _close(emu.avgpool2d_backward(dy, xh.shape, k, s, p), cpu.avgpool2d_backward(dyh, xh.shape, k, s, p), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("offset", [0, 1, 2])
def test_convolution_kernels_on_offset_views(emu, cpu, dtype, offset):
    # OH*OW = 16 and 20: swap_axes01 takes its 4-wide Vec path when the pointers allow
    rng = np.random.default_rng(offset)
    for hw in ((4, 4), (4, 5)):
        xh = rng.standard_normal((3, 2) + hw).astype(dtype)
        wh = rng.standard_normal((4, 2, 3, 3)).astype(dtype)
        x, w = _view(xh, offset), _view(wh, offset)
        y0 = cpu.conv2d_forward(xh, wh, (1, 1), (1, 1))
        _close(emu.conv2d_forward(x, w, (1, 1), (1, 1)), y0, dtype)
        dyh = rng.standard_normal(y0.shape).astype(dtype)
        dy = _view(dyh, offset)
        _close(emu.conv2d_backward_data(dy, w, xh.shape, (1, 1), (1, 1)),
               cpu.conv2d_backward_data(dyh, wh, xh.shape, (1, 1), (1, 1)), dtype)
        _close(emu.conv2d_backward_weight(dy, x, wh.shape, (1, 1), (1, 1)),
               cpu.conv2d_backward_weight(dyh, xh, wh.shape, (1, 1), (1, 1)), dtype)


# ------------------------------------------------------------------------------------------------
# a planted bug: the Pair path taken whatever the width
def _plant_file(tmp_path, file, old, new):
    dst = tmp_path / "kernels"
    shutil.copytree(KERNEL_DIR, dst)
    src = (dst / file).read_text()
    assert old in src, f"the planted bug's anchor {old!r} is not in {file}"
    (dst / file).write_text(src.replace(old, new))
    return make_emulated_backend(kernel_dir=dst)


def test_pair_load_on_an_odd_width_is_refused(tmp_path, cpu):
    # Without `W % 2 == 0`, the 2x2 pooling path loads each window row as one 8-byte Pair; with
    # W odd every other row starts at an odd element. On the host the bytes are there and the
    # values even come out right, so only the alignment check can see it.
    bad = _plant_file(tmp_path, "pool2d.cu", "W % 2 == 0 && ", "")
    x = np.random.default_rng(0).standard_normal((1, 2, 4, 5)).astype(np.float32)
    with pytest.raises(KernelAlignmentError, match=r"maxpool2d_forward<float> \(pool2d.cu\).*misaligned "
                                                   r"(8-byte read|pointer cast).*argument 0 'x'"):
        bad.maxpool2d_forward(x, (2, 2), (2, 2), (0, 0))
    with pytest.raises(KernelAlignmentError, match=r"avgpool2d_forward<float>.*misaligned (8-byte read|pointer cast)"):
        bad.avgpool2d_forward(x, (2, 2), (2, 2), (0, 0))
    xd = x.astype(np.float64)
    with pytest.raises(KernelAlignmentError, match=r"maxpool2d_forward<double>.*misaligned"):
        bad.maxpool2d_forward(xd, (2, 2), (2, 2), (0, 0))


def test_quad_load_without_its_alignment_test_is_refused(tmp_path, cpu):
    # Without `quad_aligned(x)`, MaxPool2d(2) on W % 4 == 0 loads each window row pair as one
    # 4-element Quad (16 bytes for float, 32 for double) even from a view that is only
    # Pair-aligned. The double Quad is wider than 16 bytes: the runtime sees a byte range, and the
    # reinterpret_cast check is what refuses it.
    bad = _plant_file(tmp_path, "pool2d.cu", "quad_aligned(x) &&", "")
    for dtype, offset in ((np.float32, 2), (np.float64, 2)):
        xh = np.random.default_rng(1).standard_normal((1, 2, 4, 8)).astype(dtype)
        x = _view(xh, offset)
        with pytest.raises(KernelAlignmentError, match=r"pool2d_forward<(float|double)> \(pool2d.cu\).*misaligned"):
            bad.maxpool2d_forward(x, (2, 2), (2, 2), (0, 0))
        y, am = make_emulated_backend().maxpool2d_forward(x, (2, 2), (2, 2), (0, 0))   # the real kernel
        y0, am0 = cpu.maxpool2d_forward(xh, (2, 2), (2, 2), (0, 0))
        np.testing.assert_array_equal(y, y0)
        np.testing.assert_array_equal(am, am0)
