"""The CUDA-on-CPU emulator (tests/cuda_emu) itself, and that it catches kernel bugs.

* The launcher: 1-D/2-D grids, grid-stride loops, a shared-memory reduction whose
  __syncthreads() must be a real barrier, undefined barrier use reported.
* The checks: wrongly typed scalars and arrays, out-of-bounds reads and writes on either side
  of an array, null pointers, launch limits -- each an exception naming kernel and parameter.
* Planted bugs: an off-by-one in a *copy* of a real kernel file, run through the CUDA
  backend's own code, fails the comparison with the NumPy backend (or the bounds check).

The parity suite proper (every primitive x dtype x shape on the emulated backend) lives in the
backend parity tests, parametrized with the "emulated" backend.
"""
from __future__ import annotations

import pathlib
import re
import shutil

import numpy as np
import pytest

from tests.cuda_emu import (EmulatedLoader, EmulatedModule, EmulatorCompileError, EmulatorError,
                            KernelArgumentError, KernelMemoryError, KernelRaceError, KernelSyncError, KernelTimeoutError,
                            emulator_unavailable_reason, make_emulated_backend, poisoned_numpy)
from tests.cuda_emu.signature import (SignatureError, find_kernels, kernel_signature,
                                      parse_name_expression, strip_comments)

_reason = emulator_unavailable_reason()
pytestmark = [pytest.mark.emulated,
              pytest.mark.skipif(_reason is not None, reason=f"CUDA emulator unavailable: {_reason}")]

TOY = pathlib.Path(__file__).parent / "cuda_emu" / "toy" / "toy.cu"
KERNEL_DIR = pathlib.Path(__file__).resolve().parents[1] / "kernels"
TOY_EXPRS = ["axpy<float>", "axpy<double>", "block_sum<float>", "block_sum<double>",
             "early_exit_barrier", "fill_2d", "shifted_copy", "shifted_read", "shift_add_inplace",
             "last_writer_wins", "any_negative", "rotate_through_global", "count_positive",
             "warp_sum<float>", "warp_sum<double>", "warp_exchange", "shuffle_from_exited_lane",
             "stuck_loop", "deep_recursion", "write_through_const", "tiled_matmul",
             "read_uninitialised_shared", "warp_shared_exchange"]


@pytest.fixture(scope="module")
def toy():
    return EmulatedModule(TOY, TOY_EXPRS)


@pytest.fixture(scope="module")
def cpu():
    from gpucnn.backends import cpu_backend
    return cpu_backend()


# ------------------------------------------------------------------------------------------------
# the launcher
@pytest.mark.parametrize("dtype,expr", [(np.float32, "axpy<float>"), (np.float64, "axpy<double>")])
@pytest.mark.parametrize("n,grid", [(1, 1), (1000, 4), (1000, 1), (5000, 3)])
def test_grid_stride_loop_covers_every_element(toy, dtype, expr, n, grid):
    x = np.arange(n, dtype=dtype)
    y = np.full(n, 0.5, dtype=dtype)
    toy.get_function(expr)((grid,), (256,), (x, y, dtype(3), np.int64(n)))
    np.testing.assert_array_equal(y, 3 * np.arange(n, dtype=dtype) + dtype(0.5))


def test_2d_grid_and_block_indices(toy):
    rows, cols = 37, 45
    out = np.full((rows, cols), -1, dtype=np.int32)
    toy.get_function("fill_2d")((3, 5), (16, 8), (out, np.int32(rows), np.int32(cols)))
    r, c = np.indices((rows, cols))
    np.testing.assert_array_equal(out, r * 1000 + c)


@pytest.mark.parametrize("dtype,expr", [(np.float32, "block_sum<float>"), (np.float64, "block_sum<double>")])
def test_syncthreads_is_a_real_barrier(toy, dtype, expr):
    # The tree reduction reads its neighbours' shared-memory slots after each barrier; run
    # without a barrier (threads one after another) thread 0 would add slots not yet written.
    assert toy.fiber_mode
    rng = np.random.default_rng(1)
    x = rng.integers(-50, 50, size=(5, 700)).astype(dtype)  # integers: exact in any order
    out = np.zeros(5, dtype=dtype)
    toy.get_function(expr)((5,), (256,), (x, out, np.int32(700)))
    np.testing.assert_array_equal(out, x.sum(axis=1))


def test_shared_memory_exchange_between_threads(toy):
    x = np.arange(100, 164, dtype=np.int32)
    y = np.zeros(64, dtype=np.int32)
    toy.get_function("early_exit_barrier")((1,), (64,), (x, y, np.int32(64)))
    np.testing.assert_array_equal(y, np.roll(x, -1))


def test_threads_returning_before_a_barrier_are_reported(toy):
    x = np.arange(64, dtype=np.int32)
    y = np.zeros(64, dtype=np.int32)
    with pytest.raises(KernelSyncError, match=r"early_exit_barrier.*4 thread\(s\) returned.*__syncthreads"):
        toy.get_function("early_exit_barrier")((1,), (64,), (x, y, np.int32(60)))


def test_kernels_without_barriers_run_without_fibers():
    mod = EmulatedModule(KERNEL_DIR / "activation.cu", ["relu_forward<float>"])
    assert not mod.fiber_mode


# ------------------------------------------------------------------------------------------------
# argument checks
@pytest.mark.parametrize("bad,got", [
    (1000, "a Python int"),
    (np.int32(1000), "numpy.int32"),
    (np.uint64(1000), "numpy.uint64"),
    (1000.0, "a Python float"),
])
def test_integer_scalar_of_the_wrong_type_names_kernel_and_parameter(toy, bad, got):
    x = np.zeros(1000, np.float32)
    with pytest.raises(KernelArgumentError) as info:
        toy.get_function("axpy<float>")((4,), (256,), (x, x.copy(), np.float32(2), bad))
    msg = str(info.value)
    assert "axpy<float>" in msg and "argument 3 'n'" in msg and "long long" in msg
    assert "numpy.int64" in msg and got in msg


@pytest.mark.parametrize("bad,got", [(2.0, "a Python float"), (np.float64(2.0), "numpy.float64"),
                                     (2, "a Python int")])
def test_float_scalar_of_the_wrong_type_names_kernel_and_parameter(toy, bad, got):
    x = np.zeros(10, np.float32)
    with pytest.raises(KernelArgumentError, match=rf"axpy<float>.*argument 2 'a' \(float a\).*numpy.float32.*{got}"):
        toy.get_function("axpy<float>")((1,), (256,), (x, x.copy(), bad, np.int64(10)))


def test_array_of_the_wrong_dtype_is_refused(toy):
    with pytest.raises(KernelArgumentError, match=r"argument 1 'y' \(double\* y\) takes float64 elements; got a float32"):
        toy.get_function("axpy<double>")((1,), (256,), (np.zeros(4), np.zeros(4, np.float32),
                                                       np.float64(1), np.int64(4)))


def test_scalar_for_pointer_and_wrong_count_and_layout_are_refused(toy):
    k = toy.get_function("axpy<float>")
    x = np.zeros(8, np.float32)
    with pytest.raises(KernelArgumentError, match=r"argument 0 'x'.*takes an array of float32; got numpy.float32"):
        k((1,), (32,), (np.float32(1), x, np.float32(1), np.int64(8)))
    with pytest.raises(KernelArgumentError, match=r"expected 4 arguments \(const float\* x, float\* y, float a, long long n\), got 3"):
        k((1,), (32,), (x, x, np.float32(1)))
    with pytest.raises(KernelArgumentError, match=r"argument 1 'y'.*non-contiguous"):
        k((1,), (32,), (x, np.zeros(16, np.float32)[::2], np.float32(1), np.int64(8)))


@pytest.mark.parametrize("grid,block,match", [
    ((1,), (1025,), r"block.x = 1025, CUDA allows 1..1024"),
    ((1,), (32, 32, 2), r"2048 threads"),
    ((0,), (32,), r"grid.x = 0"),
    ((1, 70000), (32,), r"grid.y = 70000"),
    ((1,), (1, 1, 65), r"block.z = 65"),
])
def test_invalid_launch_configuration(toy, grid, block, match):
    x = np.zeros(8, np.float32)
    with pytest.raises(EmulatorError, match=match):
        toy.get_function("axpy<float>")(grid, block, (x, x.copy(), np.float32(1), np.int64(8)))


# ------------------------------------------------------------------------------------------------
# bounds checks
def test_write_one_past_the_end_is_reported(toy):
    x = np.ones(1000, np.float32)
    y = np.zeros(1000, np.float32)
    with pytest.raises(KernelMemoryError) as info:
        toy.get_function("shifted_copy")((4,), (256,), (x, y, np.int32(1000), np.int32(1)))
    msg = str(info.value)
    assert "shifted_copy" in msg and "out-of-bounds write of 4 bytes" in msg
    assert "argument 1 'y'" in msg and "element 1000, 1 element(s) past the end" in msg
    assert "thread (231, 0, 0) of block (3, 0, 0)" in msg  # i = 3*256 + 231 = 999
    np.testing.assert_array_equal(y, 0)  # nothing is copied back from a failed launch


def test_read_before_the_start_is_reported(toy):
    with pytest.raises(KernelMemoryError, match=r"shifted_read.*out-of-bounds read of 8 bytes by thread \(0, 0, 0\) "
                                                 r"of block \(0, 0, 0\): argument 0 'x'.*element -1, 1 element\(s\) before"):
        toy.get_function("shifted_read")((4,), (256,), (np.zeros(1000), np.zeros(1000), np.int32(1000), np.int32(1)))


def test_far_out_of_bounds_access_faults_into_a_report(toy):
    # Beyond the exactly-checked guard zone, the PROT_NONE pages turn the access into a fault
    # that is caught and reported instead of crashing the test process.
    with pytest.raises(KernelMemoryError, match=r"argument 0 'x'.*element -100000"):
        toy.get_function("shifted_read")((1,), (32,), (np.zeros(10), np.zeros(10), np.int32(10), np.int32(100000)))


def test_wild_access_is_reported_before_it_happens(toy):
    # Far beyond any guard page: the address belongs to nothing the kernel may touch.
    with pytest.raises(KernelMemoryError, match=r"shifted_read.*wild read by thread \(0, 0, 0\) of block \(0, 0, 0\).*"
                                                 r"belongs to no argument, __shared__ variable or stack; the nearest array argument is"):
        toy.get_function("shifted_read")((1,), (32,), (np.zeros(10), np.zeros(10), np.int32(10), np.int32(10 ** 9)))


def test_null_pointer_is_reported(toy):
    with pytest.raises(KernelMemoryError, match=r"null pointer.*passed as None: x"):
        toy.get_function("shifted_read")((1,), (32,), (None, np.zeros(10), np.int32(10), np.int32(0)))


def test_endless_loop_times_out_with_a_clear_error(toy, monkeypatch):
    monkeypatch.setenv("GPUCNN_EMU_TIMEOUT", "0.5")
    with pytest.raises(KernelTimeoutError, match=r"stuck_loop.*still running after 0.5 s.*endless loop"):
        toy.get_function("stuck_loop")((1,), (32,), (np.zeros(64, np.float32), np.int64(64), np.int64(0)))


def test_stack_overflow_is_reported(toy):
    y = np.zeros(4, np.float32)
    toy.get_function("deep_recursion")((1,), (4,), (y, np.int32(10)))  # shallow: fine
    with pytest.raises(KernelMemoryError, match=r"deep_recursion.*overflowed its \d+ KiB emulator stack"):
        toy.get_function("deep_recursion")((1,), (4,), (y, np.int32(100000)))


def test_clean_launch_after_a_failed_one(toy):
    with pytest.raises(KernelMemoryError):
        toy.get_function("shifted_copy")((1,), (32,), (np.ones(10, np.float32), np.zeros(10, np.float32),
                                                       np.int32(10), np.int32(1)))
    y = np.zeros(10, np.float32)
    toy.get_function("shifted_copy")((1,), (32,), (np.arange(10, dtype=np.float32), y, np.int32(10), np.int32(0)))
    np.testing.assert_array_equal(y, np.arange(10))


def test_write_through_a_const_pointer_is_reported(toy):
    x = np.ones(8, np.float32)
    with pytest.raises(KernelMemoryError, match=r"write_through_const.*argument 0 'x' \(const float\*\) through a pointer to const"):
        toy.get_function("write_through_const")((1,), (32,), (x, np.int32(8)))
    np.testing.assert_array_equal(x, 1)


def test_views_and_aliased_arguments_are_written_through():
    mod = EmulatedModule(KERNEL_DIR / "activation.cu", ["relu_forward<float>"])
    k = mod.get_function("relu_forward<float>")
    base = np.array([-1, 2, -3, 4, -5, 6], dtype=np.float32)
    k((1,), (256,), (base[2:], base[2:], np.int64(4)))  # in place, on a view
    np.testing.assert_array_equal(base, [-1, 2, 0, 4, 0, 6])


# ------------------------------------------------------------------------------------------------
# the race detector
def test_in_place_neighbour_update_is_a_race(toy):
    x = np.arange(10, dtype=np.float32)
    with pytest.raises(KernelRaceError, match=r"shift_add_inplace.*data race on argument 0 'x' \(float\*\) element 1: "
                                              r"thread \(1, 0, 0\) of block \(0, 0, 0\) wrote the element that "
                                              r"thread \(0, 0, 0\) of block \(0, 0, 0\) read"):
        toy.get_function("shift_add_inplace")((1,), (32,), (x, np.int32(10)))


def test_different_values_into_one_element_is_a_race(toy):
    out = np.zeros(1, np.int32)
    with pytest.raises(KernelRaceError, match=r"last_writer_wins.*element 0: thread \(1, 0, 0\) of block \(0, 0, 0\) "
                                              r"wrote a different value to the element that thread \(0, 0, 0\)"):
        toy.get_function("last_writer_wins")((1,), (32,), (out, np.int32(5)))


def test_same_value_from_many_threads_and_atomics_are_not_races(toy):
    x = np.array([1, -2, 3, -4, -5, 6, 7, 8] * 40, dtype=np.float32)
    flag = np.zeros(1, np.int32)
    toy.get_function("any_negative")((2,), (256,), (x, flag, np.int32(x.size)))
    assert flag[0] == 1
    count = np.zeros(1, np.int32)
    toy.get_function("count_positive")((2,), (256,), (x, count, np.int32(x.size)))
    assert count[0] == (x > 0).sum()


def test_barrier_orders_global_accesses_within_a_block_only(toy):
    k = toy.get_function("rotate_through_global")
    x = np.arange(200, dtype=np.float32)
    y, z = np.zeros_like(x), np.zeros_like(x)
    k((1,), (256,), (x, y, z, np.int32(200)))
    np.testing.assert_array_equal(z, np.roll(x, -1))
    with pytest.raises(KernelRaceError, match=r"rotate_through_global.*argument 1 'y'"):
        k((2,), (128,), (x, y, z, np.int32(200)))


# ------------------------------------------------------------------------------------------------
# shared memory
def _matmul_inputs():
    rng = np.random.default_rng(3)
    a = rng.integers(-4, 4, size=(13, 19)).astype(np.float32)  # integers: exact sums in any order
    b = rng.integers(-4, 4, size=(19, 10)).astype(np.float32)
    return a, b


def test_tiled_matmul_with_shared_memory_tiles(toy):
    a, b = _matmul_inputs()
    c = np.zeros((13, 10), np.float32)
    toy.get_function("tiled_matmul")((2, 2), (8, 8), (a, b, c, np.int32(13), np.int32(19), np.int32(10), np.int32(0)))
    np.testing.assert_array_equal(c, a @ b)
    assert {name for _, _, name in toy.shared_vars} >= {"tiled_matmul::As", "tiled_matmul::Bs"}


def test_missing_barrier_is_a_race_on_a_named_shared_variable(toy):
    a, b = _matmul_inputs()
    c = np.zeros((13, 10), np.float32)
    with pytest.raises(KernelRaceError, match=r"tiled_matmul.*data race on __shared__ tiled_matmul::(As|Bs) at byte \d+: "
                                              r"thread \(\d+, \d+, 0\) of block \(0, 0, 0\) (read|wrote) the word that "
                                              r"thread \(\d+, \d+, 0\) (wrote|read)"):
        toy.get_function("tiled_matmul")((2, 2), (8, 8), (a, b, c, np.int32(13), np.int32(19), np.int32(10),
                                                         np.int32(1)))


def test_shared_memory_starts_each_block_poisoned(toy):
    k = toy.get_function("read_uninitialised_shared")
    out = np.zeros(128, np.float32)
    k((2,), (64,), (out, np.int32(1)))
    np.testing.assert_array_equal(out, 1)
    k((2,), (64,), (out, np.int32(0)))  # block 0 of this launch must not see the last launch's values
    assert np.isnan(out).all()


def test_syncwarp_orders_shared_memory_within_a_warp(toy):
    x = np.arange(64, dtype=np.int32)
    y = np.zeros(64, np.int32)
    toy.get_function("warp_shared_exchange")((1,), (64,), (x, y, np.int32(1)))
    np.testing.assert_array_equal(y, x ^ 1)
    with pytest.raises(KernelRaceError, match=r"__shared__ warp_shared_exchange::s"):
        toy.get_function("warp_shared_exchange")((1,), (64,), (x, y, np.int32(0)))


# ------------------------------------------------------------------------------------------------
# warp intrinsics
@pytest.mark.parametrize("dtype,expr", [(np.float32, "warp_sum<float>"), (np.float64, "warp_sum<double>")])
def test_shfl_down_warp_reduction(toy, dtype, expr):
    n = 200  # 7 warps, the last one partial in data (not in threads: the block has 256)
    x = np.random.default_rng(2).integers(-9, 9, size=n).astype(dtype)
    out = np.full(8, np.nan, dtype=dtype)
    toy.get_function(expr)((1,), (256,), (x, out, np.int32(n)))
    np.testing.assert_array_equal(out[:7], np.add.reduceat(x, np.arange(0, n, 32)))


def test_shfl_xor_idx_up_and_ballot(toy):
    x = (np.arange(64) * np.where(np.arange(64) % 3 == 0, -1, 1)).astype(np.int32)
    y, idx, up = (np.zeros(64, np.int32) for _ in range(3))
    ballot = np.zeros(2, np.uint32)
    toy.get_function("warp_exchange")((1,), (64,), (x, y, ballot, idx, up))
    lane = np.arange(64)
    np.testing.assert_array_equal(y, x[lane ^ 1])
    np.testing.assert_array_equal(idx, x[lane // 8 * 8 + 3])
    np.testing.assert_array_equal(up, np.where(lane % 32 >= 2, x[lane - 2], x))
    bits = (x > 0).reshape(2, 32)
    np.testing.assert_array_equal(ballot, (bits * (1 << np.arange(32, dtype=np.uint64))).sum(axis=1))


def test_shuffle_from_an_exited_lane_is_reported(toy):
    x = np.ones(40, np.float32)
    with pytest.raises(KernelSyncError, match=r"shuffle_from_exited_lane.*thread \(39, 0, 0\) \(warp 1, lane 7\) "
                                              r"__shfl_down_sync reads lane 8, which does not take part"):
        toy.get_function("shuffle_from_exited_lane")((1,), (64,), (x, np.zeros(40, np.float32), np.int32(40)))


# ------------------------------------------------------------------------------------------------
# the source parser and the compiler front
def test_signature_parser_substitutes_templates_and_skips_comments():
    src = """
    // __global__ void commented_out(int x) {}
    /* template <typename T> __global__ void also_commented(T* y) {} */
    template <typename T>
    __global__ void k(const T* __restrict__ x, T *y, int * __restrict__ idx,
                      long long n, T alpha, unsigned int m) {}
    __global__ void plain(double* out, size_t count) {}
    """
    assert set(find_kernels(src)) == {"k", "plain"}
    params = kernel_signature(src, "k<double>")
    assert [p.name for p in params] == ["x", "y", "idx", "n", "alpha", "m"]
    assert [p.ctype for p in params] == ["const double*", "double*", "int*", "long long", "double", "unsigned int"]
    assert [str(p.dtype) for p in params] == ["float64", "float64", "int32", "int64", "float64", "uint32"]
    assert [p.const_pointee for p in params] == [True, False, False, False, False, False]
    assert [p.ctype for p in kernel_signature(src, "plain")] == ["double*", "size_t"]
    assert parse_name_expression("k< float >") == ("k", ["float"])
    with pytest.raises(SignatureError, match="no __global__ kernel named 'nope'"):
        kernel_signature(src, "nope<float>")
    with pytest.raises(SignatureError, match="takes 1 template argument"):
        kernel_signature(src, "k")
    assert "commented_out" not in strip_comments(src)


def test_every_real_kernel_signature_agrees_with_the_compiler():
    # EmulatedModule cross-checks the parsed signature of each instantiation against g++'s view of
    # the same function (pointer depth and type of every parameter) and raises on disagreement.
    from gpucnn.backends import kernels as K
    loader = EmulatedLoader()
    for file, names in K.KERNELS.items():
        mod = loader.module(file)
        for name in names:
            for dt in ("float32", "float64"):
                kern = mod.get_function(K.name_expression(name, dt))
                assert len(kern.params) == len(kern.types) > 0


def test_compile_errors_carry_file_and_line(tmp_path):
    bad = tmp_path / "broken.cu"
    bad.write_text("template <typename T>\n__global__ void k(T* y) {\n    y[0] = undefined_name;\n}\n")
    with pytest.raises(EmulatorCompileError, match=r"broken\.cu:3:\d+: error: .undefined_name"):
        EmulatedModule(bad, ["k<float>"])


def test_poisoned_empty_is_nan_filled():
    assert np.isnan(poisoned_numpy.empty((3, 2), dtype=np.float32)).all()
    assert poisoned_numpy.matmul is np.matmul


# ------------------------------------------------------------------------------------------------
# planted bugs in copies of the real kernels, run through the CUDA backend's own code
def _plant(tmp_path, file, kernel, old, new):
    """Copy kernels/ to tmp_path with ``old`` -> ``new`` once inside the body of ``kernel``."""
    dst = tmp_path / "kernels"
    shutil.copytree(KERNEL_DIR, dst)
    src = (dst / file).read_text()
    # a kernel, or a __device__ function (the pooling kernels share their window walks)
    start = re.search(rf"__(?:global|device)__[^;{{(]*\b{kernel}\s*\(", src).start()
    end = src.find("\n}\n", start)
    body = src[start:end]
    assert body.count(old) == 1, f"the planted bug's anchor {old!r} must occur once in {kernel}"
    (dst / file).write_text(src[:start] + body.replace(old, new) + src[end:])
    return make_emulated_backend(kernel_dir=dst)


def _assert_parity(got, want, dtype):
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unchanged_kernels_pass_the_same_checks(cpu, dtype):
    # The control for the planted-bug tests below: same inputs, same checks, real kernels.
    emu = make_emulated_backend()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 6)).astype(dtype)
    _assert_parity(emu.relu_forward(x), cpu.relu_forward(x), dtype)
    y, am = emu.maxpool2d_forward(x, (3, 2), (2, 1), (1, 1))
    y0, am0 = cpu.maxpool2d_forward(x, (3, 2), (2, 1), (1, 1))
    _assert_parity(y, y0, dtype)
    np.testing.assert_array_equal(am, am0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(dtype)
    _assert_parity(emu.conv2d_forward(x, w, (1, 1), (1, 1)), cpu.conv2d_forward(x, w, (1, 1), (1, 1)), dtype)


def test_off_by_one_loop_bound_fails_parity(tmp_path, cpu):
    # The grid-stride loop stops one element short: the last output element is never written.
    # (poisoned_numpy's NaN-filled `empty` makes that visible whatever the allocator returns.)
    emu = _plant(tmp_path, "activation.cu", "relu_forward", "i < n;", "i < n - 1;")
    x = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    y = emu.relu_forward(x)
    with pytest.raises(AssertionError, match="nan location mismatch"):
        _assert_parity(y, cpu.relu_forward(x), np.float32)
    assert np.isnan(y).sum() == 1 and np.isnan(y[-1, -1])


def test_off_by_one_window_offset_fails_parity(tmp_path, cpu):
    # The pooling window starts one row too low: every index stays in bounds, values are wrong.
    emu = _plant(tmp_path, "pool2d.cu", "pool2d_forward_walk", "oh * SH - PH;", "oh * SH - PH + 1;")
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 5))
    y, argmax = emu.maxpool2d_forward(x, (2, 2), (2, 2), (0, 0))
    y0, argmax0 = cpu.maxpool2d_forward(x, (2, 2), (2, 2), (0, 0))
    with pytest.raises(AssertionError):
        _assert_parity(y, y0, np.float64)
    assert not np.array_equal(argmax, argmax0)


PLANTED_PARITY_BUGS = {
    "relu-loop-bound": ("activation.cu", "relu_forward", "i < n;", "i < n - 1;", "relu_forward"),
    "maxpool-window-row": ("pool2d.cu", "pool2d_forward_walk", "oh * SH - PH;",
                           "oh * SH - PH + 1;", "maxpool2d_forward"),
}


@pytest.mark.parametrize("bug", sorted(PLANTED_PARITY_BUGS))
def test_planted_bug_fails_the_backend_parity_suite(tmp_path, cpu, bug):
    # The same cases and the same check (tolerances included) as tests/test_parity.py, on a
    # backend whose kernel file carries the planted bug: every case of the primitive must fail.
    from tests.test_parity import CASES, _check, _host
    file, kernel, old, new, primitive = PLANTED_PARITY_BUGS[bug]
    emu = _plant(tmp_path, file, kernel, old, new)
    cases = [c for c in CASES if c.primitive == primitive and not c.large]
    assert len(cases) >= 3
    for c in cases:
        for dt in (np.float32, np.float64):
            ref = _host(cpu, c.run(cpu, dt))
            got = _host(emu, c.run(emu, dt))
            with pytest.raises(AssertionError):
                _check(got, ref, primitive, dt, f"{c!r} with the planted bug")


def test_off_by_one_bounds_check_is_an_out_of_bounds_read(tmp_path):
    # `h <= H` lets the bottom padding row read the row after the plane; for the last plane
    # that is past the end of x, and the emulator says which kernel, argument and thread.
    emu = _plant(tmp_path, "conv2d.cu", "im2col", "h < H", "h <= H")
    emu.conv_algorithm = "im2col"            # (the default is the implicit GEMM)
    x = np.ones((1, 2, 4, 4), np.float32)
    w = np.ones((3, 2, 3, 3), np.float32)
    with pytest.raises(KernelMemoryError, match=r"kernel im2col<float> \(conv2d.cu\).*out-of-bounds read of 4 bytes"
                                                r".*argument 0 'x' \(const float\*\) holds 32 elements.*past the end"):
        emu.conv2d_forward(x, w, (1, 1), (1, 1))


def test_backend_passing_python_ints_is_caught(monkeypatch):
    # The backend's discipline is numpy.int64 for every `long long`; a backend that passed plain
    # Python ints (which CuPy would send as 8 bytes -- or a Python float as a double) is caught.
    import gpucnn.backends.cuda_backend as cb
    emu = make_emulated_backend()
    monkeypatch.setattr(cb, "I64", int)
    with pytest.raises(KernelArgumentError, match=r"relu_forward<float> \(activation.cu\): argument 2 'n' "
                                                  r"\(long long n\) takes numpy.int64; got a Python int"):
        emu.relu_forward(np.zeros((2, 3), np.float32))


def test_float64_scalar_for_a_float_kernel_is_caught():
    loader = EmulatedLoader()
    k = loader.get("optim.cu", "sgd_update", np.float32)
    p = np.zeros(4, np.float32)
    args = [p, p.copy(), p.copy(), np.int64(4), np.float64(0.1), np.float32(0.9), np.float32(0),
            np.int64(0), np.int64(0), np.int64(1)]
    with pytest.raises(KernelArgumentError, match=r"sgd_update<float> \(optim.cu\): argument 4 'lr' \(float lr\) "
                                                  r"takes numpy.float32; got numpy.float64"):
        k((1,), (256,), tuple(args))


def test_int64_argmax_for_an_int_pointer_is_caught():
    loader = EmulatedLoader()
    k = loader.get("pool2d.cu", "maxpool2d_backward", np.float32)
    dy = np.zeros((1, 1, 2, 2), np.float32)
    dims = [np.int64(v) for v in (1, 1, 4, 4, 2, 2, 2, 2, 2, 2, 0, 0)]
    with pytest.raises(KernelArgumentError, match=r"argument 1 'argmax' \(const int\* argmax\) takes int32 elements; "
                                                  r"got a int64 array"):
        k((1,), (256,), (dy, np.zeros((1, 1, 2, 2), np.int64), np.zeros((1, 1, 4, 4), np.float32), *dims))


def test_dynamic_shared_memory_is_refused_clearly(tmp_path):
    src = tmp_path / "dyn.cu"
    src.write_text("__global__ void k(float* y) { extern __shared__ float s[]; s[0] = 1; y[0] = s[0]; }\n")
    with pytest.raises(EmulatorError, match=r"dyn.cu: dynamic shared memory \(extern __shared__\) is not emulated"):
        EmulatedModule(src, ["k"])


def test_every_kernel_instantiation_runs_on_the_emulator(cpu, monkeypatch):
    # The parity cases, both dtypes, through the CUDA backend's own code, until every
    # (file, kernel, dtype) the backend can ask for has been launched at least once: a kernel no
    # primitive reaches on the parity shapes (or a new one without a parity case) fails here.
    # Convolution runs through both algorithms, backward weight's reduction split in slices of
    # 16, and the float32 forward in TF32 (its float64 instantiation traps: never launched).
    from gpucnn.backends import kernels as K
    import gpucnn.backends.cuda as cuda_flags
    from tests.test_parity import CASES, _check, _host
    emu = make_emulated_backend()
    emu.igemm_min_slice = 16
    expected = {(f, name, dt) for f, name, dt, _ in K.instantiations()}
    expected.discard(("conv2d_igemm_tf32.cu", "conv2d_igemm_forward_tf32", "float64"))

    def launched():
        return {key for key, kern in emu.loader._kernels.items() if kern.launches}

    for algo in ("igemm", "im2col"):
        emu.conv_algorithm = algo
        for c in CASES:
            if expected <= launched():
                break
            if not c.large and (algo == "igemm" or c.primitive.startswith("conv2d")):
                for dt in (np.float32, np.float64):
                    _check(_host(emu, c.run(emu, dt)), _host(cpu, c.run(cpu, dt)), c.primitive, dt, repr(c))
    monkeypatch.setattr(cuda_flags, "allow_tf32", True)
    emu.conv_algorithm = "igemm"
    c = next(c for c in CASES if c.primitive == "conv2d_forward")
    assert np.isfinite(_host(emu, c.run(emu, np.float32))[0]).all()
    # the CUDA graph's replayable updates are not seam primitives (tests/test_graph.py checks
    # them against the plain updates): launch each once here
    for dt in (np.float32, np.float64):
        p, g, m, v = (np.ones(5, dt) for _ in range(4))
        emu.sgd_update_indexed(p, g, m, np.array([0.1], dt), 0.9, 0.0, False)
        row = np.zeros(1, np.int64)
        emu.adam_update_indexed(p, g, m, v, np.ones(2, dt), row, 0.9, 0.999, 1e-8, 0.0)
        emu.advance_row(row, dt)
    assert expected - launched() == set(), f"never launched: {sorted(expected - launched())}"


# ------------------------------------------------------------------------------------------------
# the nvcuda::wmma stand-in (tests/cuda_emu/mma.h)
WMMA_TOY = pathlib.Path(__file__).parent / "cuda_emu" / "toy" / "wmma_toy.cu"


@pytest.fixture(scope="module")
def wmma_toy():
    return EmulatedModule(WMMA_TOY, ["wmma_tile", "wmma_divergent", "wmma_missing_barrier"])


def _tf32(v):
    """Round to nearest (ties away) to a 10-bit mantissa, as __float_to_tf32."""
    b = np.asarray(v, np.float32).view(np.uint32)
    return ((b + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


def test_wmma_tile_is_a_tf32_product(wmma_toy):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((16, 8)).astype(np.float32)
    b = rng.standard_normal((8, 16)).astype(np.float32)
    c = np.full((16, 16), np.nan, np.float32)
    wmma_toy.get_function("wmma_tile")((1,), (32,), (a, b, c, np.int64(0)))
    want = _tf32(a).astype(np.float64) @ _tf32(b).astype(np.float64) + 1.0
    assert np.abs(c - want).max() <= 1e-5 * np.abs(want).max()
    full = a.astype(np.float64) @ b.astype(np.float64) + 1.0
    assert np.abs(c - full).max() > 1e-5 * np.abs(full).max()      # it did round to TF32


def test_wmma_misaligned_tile_pointer_is_reported(wmma_toy):
    a = np.zeros(16 * 8 + 1, np.float32)
    b = np.zeros((8, 16), np.float32)
    c = np.zeros((16, 16), np.float32)
    with pytest.raises(KernelMemoryError, match="misaligned"):
        wmma_toy.get_function("wmma_tile")((1,), (32,), (a, b, c, np.int64(1)))


def test_wmma_divergent_lane_is_reported(wmma_toy):
    a, b, c = np.zeros((16, 8), np.float32), np.zeros((8, 16), np.float32), np.zeros((16, 16), np.float32)
    with pytest.raises(KernelSyncError, match="lane"):
        wmma_toy.get_function("wmma_divergent")((1,), (32,), (a, b, c))


def test_wmma_load_without_barrier_is_a_race(wmma_toy):
    a, b, c = np.ones((16, 8), np.float32), np.zeros((8, 16), np.float32), np.zeros((16, 16), np.float32)
    with pytest.raises(KernelRaceError, match="As"):
        wmma_toy.get_function("wmma_missing_barrier")((1,), (32,), (a, b, c))
