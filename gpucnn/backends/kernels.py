"""Where the CUDA kernels live and how they are compiled.

The kernels are plain CUDA C++ files in the top-level ``kernels/`` directory of a
checkout; the wheel ships them as the package data ``gpucnn.kernels``.  Each file
holds one op family as ``template <typename T>`` kernels; the float32 and float64
versions are instantiated through NVRTC name expressions (``"im2col<float>"``).

``CupyKernelLoader`` compiles one ``cupy.RawModule`` per (file, dtype, device), the
first time a kernel of it is asked for, and hands out ``cupy.RawKernel`` objects:
``kernel(grid, block, args, shared_mem=0)``.  CuPy's on-disk cache makes the next
process start fast.  Any object with the same ``get(file, name, dtype)`` method
can stand in for it (the CPU emulator used by the tests does).

Nothing here imports CuPy at import time.
"""
from __future__ import annotations

import pathlib

import numpy as np

#: The exact options passed to NVRTC (through ``cupy.RawModule(options=...)``).
#: tests/test_kernels_compile.py compiles every file with these plus an ``-arch``.
#: ``--fmad=false`` keeps ``a*b + c`` two IEEE roundings, as NumPy computes it, so the
#: elementwise kernels (optimizer updates, pooling sums, ...) agree with the NumPy backend
#: bit for bit where the formula is the same; those kernels are memory-bound, so it costs
#: nothing measurable.  cuBLAS (the GEMMs) is not affected.  CuPy itself appends
#: ``-ftz=true`` (denormals flush to zero) and ``-arch=sm_XX`` for the current device.
NVRTC_OPTIONS = ("-std=c++14", "--fmad=false")

#: file -> the kernel templates it defines (each ``template <typename T>``).
KERNELS = {
    "conv2d.cu": ("im2col", "col2im", "swap_axes01"),
    "conv2d_igemm.cu": ("conv2d_igemm_forward", "conv2d_igemm_backward_data",
                        "conv2d_igemm_backward_weight", "igemm_split_sum"),
    "conv2d_igemm_tf32.cu": ("conv2d_igemm_forward_tf32",),
    "bias.cu": ("bias_forward", "channel_sum_partial", "row_sum", "bias_act_forward"),
    "pool2d.cu": ("maxpool2d_forward", "maxpool2d_backward", "maxpool2d_backward_disjoint",
                  "avgpool2d_forward", "avgpool2d_backward", "avgpool2d_backward_disjoint"),
    "activation.cu": ("sigmoid_forward", "sigmoid_backward", "relu_forward",
                      "relu_backward", "tanh_forward", "tanh_backward",
                      "accumulate", "nonfinite_flag"),
    "loss.cu": ("softmax_cross_entropy_forward", "softmax_cross_entropy_backward",
                "squared_error_partial", "mse_backward", "mean_to_scalar"),
    "optim.cu": ("sgd_update", "adam_update", "sgd_update_indexed", "adam_update_indexed",
                 "advance_row"),
    "data.cu": ("gather_rows", "gather_normalize"),
    "augment.cu": ("crop_flip", "channel_normalize"),
    # issue 10 (gpucnn/backends/cuda_layers.py)
    "batchnorm.cu": ("channel_mean", "channel_sqdev_partial", "batchnorm_forward",
                     "batchnorm_backward_partial", "batchnorm_backward_reduce",
                     "batchnorm_backward_data", "batchnorm_update_running"),
    "dropout.cu": ("dropout_apply",),
    "residual.cu": ("add", "subsample_pad_forward", "subsample_pad_backward"),
    "label_smoothing.cu": ("label_smoothing_cross_entropy_forward",
                           "label_smoothing_cross_entropy_backward"),
}

#: Kernels launched with a fixed block (256 threads) and an exact grid of output tiles, not
#: the grid-stride BLOCK / MAX_BLOCKS launch (they stage tiles in shared memory).
TILED = frozenset({"conv2d_igemm_forward", "conv2d_igemm_backward_data",
                   "conv2d_igemm_backward_weight", "conv2d_igemm_forward_tf32"})

#: Files that include a CUDA toolkit header (``<mma.h>``), which NVRTC does not ship: compiled
#: with ``-I`` the CUDA include directory (``cuda_include_dirs()``), only when first used (not by
#: ``compile_all``), and only on devices of at least this compute capability.
NEEDS_CUDA_HEADERS = {"conv2d_igemm_tf32.cu": 80}

#: numpy dtype name -> C++ type the templates are instantiated with.
CTYPES = {"float32": "float", "float64": "double"}

#: Threads per block for every launch.  Kernels use grid-stride loops and do not
#: depend on the block size (no shared memory), so any multiple of 32 works (bias.cu's
#: row_sum reduces with whole warps).
BLOCK = 256
#: Cap on blocks per launch; grid-stride loops cover the rest.
MAX_BLOCKS = 65535


def kernel_dir() -> pathlib.Path:
    """The directory holding the ``.cu`` files: the installed package ``gpucnn.kernels``
    if present, else ``<checkout>/kernels``."""
    try:
        import importlib.resources as resources
        root = resources.files("gpucnn.kernels")
        path = pathlib.Path(str(root))
        if (path / "conv2d.cu").is_file():
            return path
    except (ModuleNotFoundError, TypeError, AttributeError):
        pass
    path = pathlib.Path(__file__).resolve().parents[2] / "kernels"
    if (path / "conv2d.cu").is_file():
        return path
    raise FileNotFoundError(
        "cannot find gpucnn's CUDA kernel sources: neither the installed package "
        f"'gpucnn.kernels' nor the checkout directory {path} holds conv2d.cu")


def cuda_include_dirs():
    """CUDA toolkit include directories holding ``mma.h``: $CUDA_PATH / $CUDA_HOME, CuPy's CUDA
    path, the pip wheel ``nvidia-cuda-runtime``'s include directory, /usr/local/cuda (first
    match of each, in that order; empty when none is found)."""
    import os
    cands = [os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME")]
    try:
        from cupy.cuda import get_cuda_path
        cands.append(get_cuda_path())
    except Exception:
        pass
    out = []
    for root in cands + ["/usr/local/cuda"]:
        if root and (pathlib.Path(root) / "include" / "mma.h").is_file():
            out.append(str(pathlib.Path(root) / "include"))
    try:
        import nvidia.cuda_runtime as rt
        for root in getattr(rt, "__path__", ()):
            if (pathlib.Path(root) / "include" / "mma.h").is_file():
                out.append(str(pathlib.Path(root) / "include"))
    except Exception:
        pass
    return list(dict.fromkeys(out))


def nvrtc_options(file: str):
    """The NVRTC options for ``file``: NVRTC_OPTIONS, plus -I for the files that need it."""
    if file in NEEDS_CUDA_HEADERS:
        return NVRTC_OPTIONS + tuple(f"-I{d}" for d in cuda_include_dirs())
    return NVRTC_OPTIONS


def kernel_path(file: str) -> pathlib.Path:
    if file not in KERNELS:
        raise ValueError(f"unknown kernel file {file!r}; expected one of {', '.join(KERNELS)}")
    return kernel_dir() / file


def read_source(file: str) -> str:
    return kernel_path(file).read_text(encoding="utf-8")


def ctype(dtype) -> str:
    name = np.dtype(dtype).name
    if name not in CTYPES:
        raise TypeError(f"CUDA kernels support float32 and float64, got {name}")
    return CTYPES[name]


def name_expression(name: str, dtype) -> str:
    """The NVRTC name expression of one instantiation, e.g. ``"im2col<float>"``."""
    return f"{name}<{ctype(dtype)}>"


def instantiations(file: str | None = None):
    """Every (file, kernel template, dtype name, name expression) the backend uses."""
    files = KERNELS if file is None else {file: KERNELS[file]}
    return [(f, name, dt, f"{name}<{ct}>")
            for f, names in files.items() for dt, ct in CTYPES.items() for name in names]


class KernelCompileError(RuntimeError):
    """A kernel file failed to compile; the message carries the compiler log."""


class CupyKernelLoader:
    """Compiles ``kernels/*.cu`` with ``cupy.RawModule`` once per (file, dtype, device).

    ``get`` runs on every kernel launch, so its hit path is one call to CuPy's
    ``getDevice`` (a C function) and one dict lookup keyed by the caller's own ``dtype``
    object (``numpy.dtype('float32')`` and ``numpy.float32`` are two keys for one kernel):
    no ``numpy.dtype(...)`` normalisation, no Python-level helper calls.
    """

    def __init__(self, cupy_module=None):
        if cupy_module is None:
            import cupy as cupy_module
        self.cp = cupy_module
        self._modules = {}
        self._kernels = {}
        self._get_device = cupy_module.cuda.runtime.getDevice
        self._hits = {}       # (file, name, dtype as passed, device) -> RawKernel

    def _device(self) -> int:
        return int(self._get_device())

    def module(self, file: str, dtype):
        key = (file, np.dtype(dtype).name, self._device())
        mod = self._modules.get(key)
        if mod is None:
            exprs = [name_expression(name, dtype) for name in KERNELS[file]]
            try:
                mod = self.cp.RawModule(code=read_source(file), options=nvrtc_options(file),
                                        name_expressions=exprs)
                mod.compile()
            except Exception as exc:  # cupy.cuda.compiler.CompileException and friends
                raise KernelCompileError(
                    f"compiling {kernel_path(file)} for {key[1]} failed: "
                    f"{type(exc).__name__}: {exc}") from exc
            self._modules[key] = mod
        return mod

    def compute_capability(self) -> int:
        """The current device's compute capability as an int (80 for 8.0)."""
        return int(self.cp.cuda.Device().compute_capability)

    def get(self, file: str, name: str, dtype):
        """The kernel ``name<T>`` of ``file`` for ``dtype`` (a ``cupy.RawKernel``)."""
        fast = (file, name, dtype, self._get_device())
        kern = self._hits.get(fast)
        if kern is None:
            key = (file, name, np.dtype(dtype).name, fast[3])
            kern = self._kernels.get(key)
            if kern is None:
                if name not in KERNELS.get(file, ()):
                    raise ValueError(f"kernel {name!r} is not listed for {file!r} in KERNELS")
                kern = self.module(file, dtype).get_function(name_expression(name, dtype))
                self._kernels[key] = kern
            self._hits[fast] = kern
        return kern

    def compile_all(self, dtypes=("float32",)):
        """Compile every file for ``dtypes`` now (surfaces compile errors early); the files of
        NEEDS_CUDA_HEADERS are compiled on first use instead (the backend falls back without)."""
        for file in KERNELS:
            if file in NEEDS_CUDA_HEADERS:
                continue
            for dt in dtypes:
                self.module(file, dt)
