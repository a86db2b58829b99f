"""The implicit-GEMM convolution (kernels/conv2d_igemm.cu, conv2d_igemm_tf32.cu) on the emulator
and, where there is one, on a GPU (``-m gpu``; the TF32 kernel needs compute capability >= 8.0).

The parity suite (tests/test_parity.py) already runs every convolution case through the default
algorithm, implicit GEMM.  Here: the im2col path kept behind ``conv_algorithm = "im2col"``
(``GPUCNN_CONV=im2col``) on the same cases, backward weight's split reduction with many slices,
and the TF32 forward (``gpucnn.backends.cuda.allow_tf32``) with its own tolerance.
"""
from __future__ import annotations

import numpy as np
import pytest

from gpucnn import tolerances
from gpucnn.backends import kernels
from tests.backend_registry import entry
from tests.test_parity import CASES, _check, _host

DTYPES = (np.float32, np.float64)
CONV = [c for c in CASES if c.primitive.startswith("conv2d") and not c.large]
FORWARD = [c for c in CONV if c.primitive == "conv2d_forward"]


@pytest.fixture(scope="module", params=[pytest.param("emulated", marks=pytest.mark.emulated),
                                        pytest.param("cuda", marks=pytest.mark.gpu)])
def emu(request):
    """The CUDA backend's class on the emulator, or on the GPU."""
    backend, reason = entry(request.param).get()
    if backend is None:
        pytest.skip(reason)
    return backend


@pytest.fixture
def launches(emu, monkeypatch):
    """{(file, kernel): launches} recorded during the test."""
    seen = {}
    get = emu.loader.get

    def recording_get(file, name, dtype):
        kernel = get(file, name, dtype)

        def launch(*args, **kw):
            seen[(file, name)] = seen.get((file, name), 0) + 1
            return kernel(*args, **kw)
        return launch
    monkeypatch.setattr(emu.loader, "get", recording_get)
    return seen


def _parity(B, R, case, dtype):
    got = _host(B, case.run(B, dtype))
    ref = _host(R, case.run(R, dtype))
    _check(got, ref, case.primitive, dtype, f"{case!r} {np.dtype(dtype).name}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", CONV, ids=repr)
def test_im2col_path_still_matches(case, dtype, emu, numpy_backend, launches, monkeypatch):
    monkeypatch.setattr(emu.unchecked, "conv_algorithm", "im2col")
    _parity(emu, numpy_backend, case, dtype)
    assert not any(f == "conv2d_igemm.cu" for f, _ in launches), launches


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", CONV, ids=repr)
def test_igemm_is_the_default(case, dtype, emu, numpy_backend, launches):
    assert emu.conv_algorithm == "igemm"
    _parity(emu, numpy_backend, case, dtype)
    names = {"conv2d_forward": ("conv2d_igemm_forward",),
             "conv2d_backward_data": ("conv2d_igemm_backward_data",),
             "conv2d_backward_weight": ("conv2d_igemm_backward_weight",),
             "conv2d_backward": ("conv2d_igemm_backward_data",
                                 "conv2d_igemm_backward_weight")}[case.primitive]
    for name in names:
        assert launches.get(("conv2d_igemm.cu", name)), launches
    assert not any(f == "conv2d.cu" for f, _ in launches), launches


def test_unknown_algorithm_is_refused(emu, monkeypatch):
    monkeypatch.setattr(emu.unchecked, "conv_algorithm", "winograd")
    x = emu.asarray(np.zeros((1, 1, 3, 3), np.float32))
    with pytest.raises(ValueError, match="GPUCNN_CONV"):
        emu.conv2d_forward(x, emu.asarray(np.zeros((1, 1, 1, 1), np.float32)), (1, 1), (0, 0))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", [c for c in CONV if c.primitive == "conv2d_backward_weight"],
                         ids=repr)
def test_backward_weight_split_reduction(case, dtype, emu, numpy_backend, launches, monkeypatch):
    """Slices of 16 terms (the K step): many partial tiles, added in slice order."""
    monkeypatch.setattr(emu.unchecked, "igemm_min_slice", 16)
    monkeypatch.setattr(emu.unchecked, "igemm_target_blocks", 1 << 20)
    _parity(emu, numpy_backend, case, dtype)
    from gpucnn.backends.geometry import out_hw
    x, w = case.args["x"], case.args["w"]
    oh, ow = out_hw(x[2:], w[2:], case.args["stride"], case.args["padding"])
    if x[0] * oh * ow >= 32:                 # at least two slices of 16
        assert launches.get(("conv2d_igemm.cu", "igemm_split_sum")), launches


def test_split_rule_depends_on_shapes_only(emu):
    for rows, cols, r in [(16, 144, 128 * 1024), (64, 576, 128 * 64), (6, 25, 84), (3, 8, 1)]:
        s, chunk = emu._split(rows, cols, r)
        assert chunk % 16 == 0 and s * chunk >= r > (s - 1) * chunk, (rows, cols, r, s, chunk)
        assert s == 1 or chunk >= emu.igemm_min_slice
        assert (s, chunk) == emu._split(rows, cols, r)


@pytest.fixture
def tf32(monkeypatch):
    import gpucnn.backends.cuda as flags
    monkeypatch.setattr(flags, "allow_tf32", True)
    return flags


@pytest.mark.parametrize("case", FORWARD, ids=repr)
def test_tf32_forward_within_the_tf32_tolerance(case, emu, tf32, launches):
    """allow_tf32: the wmma kernel runs, is within 2**-10 * sqrt(K) of the float64 reference,
    and (on inputs that are not TF32-exact) outside the float32 tolerance: the TF32 path ran."""
    if not emu.unchecked._use_tf32(np.dtype(np.float32)):
        pytest.skip("no TF32 on this device (compute capability < 8.0) or its kernel does not compile")
    got = _host(emu, case.run(emu, np.float32))[0]
    ref = case.reference(np.float64)[0]
    w = case.args["w"]
    k = w[1] * w[2] * w[3]
    _, rel, ok = tolerances.compare(got, ref, tolerances.tf32_rtol(k))
    assert ok, f"{case!r}: TF32 relative error {rel:.3g} > {tolerances.tf32_rtol(k):.3g} (K={k})"
    assert rel > tolerances.rtol("conv2d_forward", np.float32), \
        f"{case!r}: relative error {rel:.3g} is float32-sized: did the TF32 kernel run?"
    assert launches.get(("conv2d_igemm_tf32.cu", "conv2d_igemm_forward_tf32")), launches


def test_tf32_leaves_float64_backward_and_old_gpus_alone(emu, numpy_backend, tf32, launches,
                                                         monkeypatch):
    case = FORWARD[0]
    for c in [c for c in CONV if c.args == case.args]:
        _parity(emu, numpy_backend, c, np.float64)
    for c in [c for c in CONV if c.args == case.args and c.primitive != "conv2d_forward"]:
        _parity(emu, numpy_backend, c, np.float32)
    assert not launches.get(("conv2d_igemm_tf32.cu", "conv2d_igemm_forward_tf32")), launches
    monkeypatch.setattr(emu.unchecked, "_compute_capability", 75)      # a Turing GPU: no TF32
    _parity(emu, numpy_backend, case, np.float32)
    assert not launches.get(("conv2d_igemm_tf32.cu", "conv2d_igemm_forward_tf32")), launches


def test_tf32_rounding_of_the_wmma_stand_in(emu, tf32, launches):
    """Inputs exact in TF32 (small integers): the TF32 result is exact."""
    if not emu.unchecked._use_tf32(np.dtype(np.float32)):
        pytest.skip("no TF32 on this device")
    rng = np.random.default_rng(5)
    x = emu.asarray(rng.integers(-4, 5, (2, 3, 9, 7)).astype(np.float32))
    w = emu.asarray(rng.integers(-4, 5, (5, 3, 3, 3)).astype(np.float32))
    got = emu.to_numpy(emu.conv2d_forward(x, w, (1, 1), (1, 1)))
    assert launches.get(("conv2d_igemm_tf32.cu", "conv2d_igemm_forward_tf32")), launches
    import gpucnn.backends.cuda as flags
    flags.allow_tf32 = False
    want = emu.to_numpy(emu.conv2d_forward(x, w, (1, 1), (1, 1)))
    assert np.array_equal(got, want)


def test_tf32_compile_failure_falls_back_with_one_warning(emu, numpy_backend, tf32, monkeypatch):
    get = emu.loader.get

    def failing_get(file, name, dtype):
        if file == "conv2d_igemm_tf32.cu":
            raise kernels.KernelCompileError("cannot open source file \"mma.h\"")
        return get(file, name, dtype)
    monkeypatch.setattr(emu.loader, "get", failing_get)
    monkeypatch.setattr(emu.unchecked, "_tf32_unavailable", None)
    with pytest.warns(RuntimeWarning, match="mma.h"):
        _parity(emu, numpy_backend, FORWARD[0], np.float32)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")                      # no second warning
        _parity(emu, numpy_backend, FORWARD[0], np.float32)


def test_kernel_files_need_headers_only_where_listed():
    for file in kernels.KERNELS:
        src = kernels.read_source(file)
        assert ("#include" in src) == (file in kernels.NEEDS_CUDA_HEADERS), file


def test_benchmark_part3_runs_on_a_fake_device(emu, monkeypatch):
    """benchmarks/bench_kernels.py's implicit-GEMM table, with CuPy faked over NumPy and the
    emulated backend (no timing meaning; it checks the code paths that only a GPU runs)."""
    import sys
    import types
    if emu.name != "emulated":
        pytest.skip("runs on the emulated backend only")
    sys.path.insert(0, "benchmarks")
    try:
        import bench_kernels
    finally:
        sys.path.remove("benchmarks")

    class Event:
        def record(self):
            pass

        def synchronize(self):
            pass

    class Device:
        id = 0
        compute_capability = "90"
        attributes = {"ClockRate": 1_980_000}

        def synchronize(self):
            pass
    cuda = types.SimpleNamespace(
        Device=Device, Event=Event, get_elapsed_time=lambda a, b: 1.0,
        runtime=types.SimpleNamespace(getDeviceProperties=lambda i: {"multiProcessorCount": 132}))
    cp = types.SimpleNamespace(cuda=cuda, asarray=np.asarray, asnumpy=np.asarray)
    monkeypatch.setitem(sys.modules, "torch", None)          # no cuDNN columns
    rows, peaks = bench_kernels.igemm_layers(
        emu, cp, reps=1, batch=2, layers=[("tiny", 3, 6, 6, 4, 3, 2, 1)])
    assert [r["op"] for r in rows] == ["forward", "backward_data", "backward_weight"]
    assert {"igemm_tflops", "im2col_tflops"} <= rows[0].keys() and "igemm_tf32_tflops" in rows[0]
    assert "igemm_tf32_tflops" not in rows[1]
    assert rows[0]["igemm_tf32_max_rel_diff"] < tolerances.tf32_rtol(27)
    assert rows[2]["im2col_max_rel_diff"] < 1e-5
    assert abs(peaks["fp32_tflops"] - 132 * 128 * 2 * 1.98 / 1e3) < 1e-9
    assert abs(peaks["tf32_tflops"] - 132 * 2048 * 1.98 / 1e3) < 1e-9
    assert emu.conv_algorithm == "igemm"
    bench_kernels.print_igemm(rows, peaks)
