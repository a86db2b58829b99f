"""Device choice without a GPU: "auto" falls back to NumPy with a one-line reason, "cuda"
raises DeviceError saying why and what to install, GPUCNN_DEVICE is honoured, and
``import gpucnn`` never imports CuPy.  CuPy's absence and broken devices are simulated."""
from __future__ import annotations

import subprocess
import sys
import types

import pytest

import gpucnn
from gpucnn import backends
from gpucnn.backends import DeviceError, cuda_backend


@pytest.fixture
def probe(monkeypatch):
    """A fresh CUDA probe, forgotten again afterwards (the real one is cached per process)."""
    backends._reset_cuda_probe()
    monkeypatch.delenv("GPUCNN_DEVICE", raising=False)
    yield
    backends._reset_cuda_probe()


@pytest.fixture
def no_cupy(monkeypatch, probe):
    monkeypatch.setitem(sys.modules, "cupy", None)   # `import cupy` raises ImportError


class _FakeCudaError(RuntimeError):
    pass


def fake_cupy(monkeypatch, *, count=1, count_error=None, driver=13000, runtime=13000,
              compile_error=None):
    def get_device_count():
        if count_error is not None:
            raise _FakeCudaError(count_error)
        return count

    class RawModule:
        def __init__(self, code, options, name_expressions):
            self.options = options

        def compile(self):
            if compile_error is not None:
                raise RuntimeError(compile_error)

        def get_function(self, name):
            raise AssertionError("the fake device cannot run kernels")

    rt = types.SimpleNamespace(getDeviceCount=get_device_count,
                               driverGetVersion=lambda: driver,
                               runtimeGetVersion=lambda: runtime,
                               getDevice=lambda: 0)
    mod = types.ModuleType("cupy")
    mod.cuda = types.SimpleNamespace(runtime=rt)
    mod.RawModule = RawModule
    monkeypatch.setitem(sys.modules, "cupy", mod)
    return mod


def _one_line(text):
    assert text and "\n" not in text, repr(text)
    return text


# ------------------------------------------------------------------------------ CuPy missing
def test_auto_falls_back_when_cupy_is_missing(no_cupy):
    backend, note = backends.resolve_device("auto")
    assert backend.name == "cpu"
    _one_line(note)
    assert "CuPy is not installed" in note and "pip install gpucnn[cuda12]" in note, note
    assert "gpucnn[cuda13]" in note


def test_cuda_raises_when_cupy_is_missing(no_cupy):
    with pytest.raises(DeviceError, match=r"CuPy is not installed.*pip install gpucnn\[cuda12\]"):
        backends.resolve_device("cuda")


def test_create_cuda_backend_reports_missing_cupy(no_cupy):
    backend, reason = cuda_backend.create_cuda_backend()
    assert backend is None
    assert "CuPy is not installed" in _one_line(reason)


def test_model_to_auto_and_cuda_without_cupy(no_cupy, capsys):
    model = gpucnn.Sequential(gpucnn.Linear(3, 2))
    assert model.to("auto") is model
    assert model.device == "cpu"
    err = capsys.readouterr().err
    assert "CuPy is not installed" in err or err == ""   # the note is printed once per process
    with pytest.raises(DeviceError, match="CuPy is not installed"):
        model.to("cuda")
    assert model.device == "cpu"


# --------------------------------------------------------------------------- device missing
def test_no_device_visible(monkeypatch, probe):
    fake_cupy(monkeypatch, count=0)
    backend, note = backends.resolve_device("auto")
    assert backend.name == "cpu"
    assert "no CUDA device is visible" in _one_line(note)
    with pytest.raises(DeviceError, match="no CUDA device is visible"):
        backends.resolve_device("cuda")


def test_device_query_says_no_device(monkeypatch, probe):
    fake_cupy(monkeypatch, count_error="cudaErrorNoDevice: no CUDA-capable device is detected")
    backend, reason = cuda_backend.create_cuda_backend()
    assert backend is None and "no CUDA device is visible" in _one_line(reason)


def test_no_driver_at_all(monkeypatch, probe):
    fake_cupy(monkeypatch, count_error="cudaErrorInsufficientDriver: CUDA driver version is "
                                       "insufficient for CUDA runtime version")
    monkeypatch.setattr(cuda_backend, "_driver_library_present", lambda: False)
    backend, reason = cuda_backend.create_cuda_backend()
    assert backend is None and "no NVIDIA driver on this machine" in _one_line(reason)


def test_driver_too_old_for_the_runtime(monkeypatch, probe):
    fake_cupy(monkeypatch, count_error="cudaErrorInsufficientDriver: CUDA driver version is "
                                       "insufficient for CUDA runtime version", runtime=13020)
    monkeypatch.setattr(cuda_backend, "_driver_library_present", lambda: True)
    backend, reason = cuda_backend.create_cuda_backend()
    assert backend is None
    assert "driver is too old" in _one_line(reason) and "CUDA 13.2" in reason
    assert "gpucnn[cuda12]" in reason


def test_driver_major_version_older_than_cupy(monkeypatch, probe):
    fake_cupy(monkeypatch, driver=12040, runtime=13000)
    with pytest.raises(DeviceError, match=r"driver supports CUDA 12\.4 but this CuPy is built "
                                          r"for CUDA 13\.0.*gpucnn\[cuda12\]"):
        backends.resolve_device("cuda")


def test_kernel_compile_error(monkeypatch, probe):
    fake_cupy(monkeypatch, compile_error="conv2d.cu(12): error: identifier \"oops\" is undefined\n"
                                         "1 error detected")
    backend, note = backends.resolve_device("auto")
    assert backend.name == "cpu"
    _one_line(note)
    assert "failed to compile" in note and "conv2d.cu" in note and "oops" in note, note


def test_the_loader_passes_exactly_the_nvrtc_options(monkeypatch, probe):
    from gpucnn.backends import kernels
    mod = fake_cupy(monkeypatch)
    loader = kernels.CupyKernelLoader(mod)
    compiled = loader.module("pool2d.cu", "float32")
    assert compiled.options == kernels.NVRTC_OPTIONS
    assert loader.module("pool2d.cu", "float32") is compiled      # compiled once, then cached
    assert loader.module("pool2d.cu", "float64") is not compiled  # one module per dtype


def test_probe_result_is_cached_until_reset(no_cupy, monkeypatch):
    backends.resolve_device("auto")
    fake_cupy(monkeypatch, count=0)   # not consulted: the first answer is cached
    assert "CuPy is not installed" in backends.resolve_device("auto")[1]
    backends._reset_cuda_probe()
    assert "no CUDA device" in backends.resolve_device("auto")[1]


# ------------------------------------------------------------------------- GPUCNN_DEVICE
def test_env_var_cpu_is_honoured(monkeypatch, probe):
    fake_cupy(monkeypatch, count_error="must not be probed")
    monkeypatch.setenv("GPUCNN_DEVICE", "cpu")
    backend, note = backends.resolve_device(None)
    assert backend.name == "cpu" and note is None


def test_env_var_cuda_without_cupy_raises(no_cupy, monkeypatch):
    monkeypatch.setenv("GPUCNN_DEVICE", "cuda")
    with pytest.raises(DeviceError, match="CuPy is not installed"):
        backends.resolve_device(None)


def test_env_var_auto_falls_back(no_cupy, monkeypatch):
    monkeypatch.setenv("GPUCNN_DEVICE", "auto")
    backend, note = backends.resolve_device(None)
    assert backend.name == "cpu" and "CuPy is not installed" in note


def test_env_var_with_a_bad_value(monkeypatch, probe):
    monkeypatch.setenv("GPUCNN_DEVICE", "tpu")
    with pytest.raises(ValueError, match="GPUCNN_DEVICE='tpu'.*auto, cpu, cuda"):
        backends.resolve_device(None)


# ------------------------------------------------------------------- lazy CuPy import
def test_import_gpucnn_does_not_import_cupy():
    code = ("import sys, numpy, gpucnn\n"
            "m = gpucnn.Sequential(gpucnn.Conv2d(1, 2, 3), gpucnn.ReLU(), gpucnn.Flatten())\n"
            "m.to('cpu')\n"
            "y = m(numpy.zeros((1, 1, 4, 4), numpy.float32))\n"
            "import gpucnn.backends.cuda_backend, gpucnn.backends.kernels\n"
            "print('cupy' in sys.modules)\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "GPUCNN_DEVICE"}
    repo = __import__("pathlib").Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=repo, check=True)
    assert out.stdout.strip() == "False", out.stdout + out.stderr
