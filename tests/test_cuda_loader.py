"""The CUDA backend's start-up path without a GPU: ``create_cuda_backend()`` with a stand-in
``cupy`` module whose ``RawModule`` compiles the kernel source it is handed with the CPU
emulator (tests/cuda_emu).  This runs the real ``CupyKernelLoader`` (sources, options, name
expressions, one module per file and dtype) and the probe's compile-and-smoke-test steps,
which otherwise only run on a GPU machine."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from gpucnn import backends
from gpucnn.backends import cuda_backend, kernels

pytestmark = pytest.mark.emulated

_BUILT = {}   # (kernel file, name expressions) -> EmulatedModule, shared by the tests


def _emulator():
    try:
        from tests.cuda_emu import EmulatedModule, emulator_unavailable_reason
    except Exception as exc:  # pragma: no cover
        return None, f"tests.cuda_emu cannot be imported: {exc}"
    reason = emulator_unavailable_reason()
    return (EmulatedModule, None) if reason is None else (None, reason)


@pytest.fixture
def emulated_cupy(monkeypatch, tmp_path):
    EmulatedModule, reason = _emulator()
    if EmulatedModule is None:
        pytest.skip(f"CUDA emulator unavailable: {reason}")
    compiled = []

    class RawModule:
        """cupy.RawModule's constructor, compile() and get_function(), on the emulator."""

        def __init__(self, code, options, name_expressions):
            self.options = options
            self.name_expressions = list(name_expressions)
            # named after the kernel file it came from, so the emulator's build cache applies
            name = next((f for f in kernels.KERNELS if kernels.read_source(f) == code),
                        f"module{len(compiled)}.cu")
            path = tmp_path / name
            path.write_text(code, encoding="utf-8")
            self._path = path
            self._module = None
            compiled.append(self)

        def compile(self):
            if self._module is None:
                key = (self._path.name, tuple(self.name_expressions))
                if key not in _BUILT:
                    _BUILT[key] = EmulatedModule(self._path, self.name_expressions)
                self._module = _BUILT[key]

        def get_function(self, name):
            self.compile()
            return self._module.get_function(name)

    fake = types.ModuleType("cupy")
    for name in ("asarray", "ascontiguousarray", "empty", "zeros", "matmul"):
        setattr(fake, name, getattr(np, name))
    fake.RawModule = RawModule
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(
        getDeviceCount=lambda: 1, driverGetVersion=lambda: 13000,
        runtimeGetVersion=lambda: 13000, getDevice=lambda: 0))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    backends._reset_cuda_probe()
    yield compiled
    backends._reset_cuda_probe()


def test_probe_compiles_every_file_and_runs_a_kernel(emulated_cupy):
    backend, reason = cuda_backend.create_cuda_backend()
    assert reason is None and backend is not None and backend.name == "cuda"
    # the probe compiled every kernel file once, for float32, with exactly NVRTC_OPTIONS, except
    # the files that need a CUDA toolkit header (compiled on first use; the backend falls back)
    probed = [f for f in kernels.KERNELS if f not in kernels.NEEDS_CUDA_HEADERS]
    assert len(emulated_cupy) == len(probed)
    for mod in emulated_cupy:
        assert mod.options == kernels.NVRTC_OPTIONS
        assert all(e.endswith("<float>") for e in mod.name_expressions)
    assert sorted(e for m in emulated_cupy for e in m.name_expressions) == sorted(
        e for (f, _, dt, e) in kernels.instantiations() if dt == "float32" and f in probed)


def test_loader_compiles_once_per_file_and_dtype(emulated_cupy):
    backend, _ = cuda_backend.create_cuda_backend()
    before = len(emulated_cupy)
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 6))
    w = np.random.default_rng(1).standard_normal((4, 3, 3, 3))
    for dtype in (np.float64, np.float64, np.float32):
        y = backend.conv2d_forward(backend.asarray(x, dtype), backend.asarray(w, dtype), (1, 1), (1, 1))
        ref = backends.cpu_backend().conv2d_forward(x.astype(dtype), w.astype(dtype), (1, 1), (1, 1))
        np.testing.assert_allclose(y, ref, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)
    # float64 conv2d_igemm.cu (the default convolution) compiled once on first use; float32 was
    # compiled by the probe
    assert len(emulated_cupy) == before + 1
    assert emulated_cupy[-1].name_expressions == [
        kernels.name_expression(k, np.float64) for k in kernels.KERNELS["conv2d_igemm.cu"]]


def test_resolve_device_uses_the_probed_backend(emulated_cupy):
    backend, note = backends.resolve_device("auto")
    assert backend.name == "cuda" and note is None
    assert backends.resolve_device("cuda")[0] is backend
