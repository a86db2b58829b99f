"""Every kernels/*.cu compiles with NVRTC, no GPU needed.

Compiles each file for compute capabilities 7.0, 8.0 and 9.0 with exactly the
options the loader passes to CuPy (``kernels.NVRTC_OPTIONS``) and every name
expression the CUDA backend asks for (``kernels.instantiations()``).  Uses PyPI's
``cuda-bindings`` (the NVRTC Python API) and ``nvidia-cuda-nvrtc-cu12`` (the
library; NVRTC 13 no longer targets compute 7.0):

    pip install "cuda-bindings>=12.8,<13" nvidia-cuda-nvrtc-cu12

A compile failure prints ``file:line`` and the compiler's message.
"""
from __future__ import annotations

import re

import pytest

from gpucnn.backends import kernels

ARCHS = (70, 80, 90)
_INSTALL = 'pip install "cuda-bindings>=12.8,<13" nvidia-cuda-nvrtc-cu12'


def _load_nvrtc():
    try:
        from cuda.bindings import nvrtc
    except ImportError:
        try:
            from cuda import nvrtc  # cuda-python < 12.6 layout
        except ImportError:
            return None, f"the NVRTC Python bindings are not installed ({_INSTALL})"
    try:
        err, major, minor = nvrtc.nvrtcVersion()
    except Exception as exc:  # the bindings are there but libnvrtc is not
        return None, f"libnvrtc cannot be loaded ({type(exc).__name__}: {exc}); {_INSTALL}"
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        return None, f"nvrtcVersion failed ({err}); {_INSTALL}"
    return nvrtc, None


NVRTC, _WHY = _load_nvrtc()
pytestmark = pytest.mark.skipif(NVRTC is None, reason=str(_WHY))


def _supported_archs():
    err, archs = NVRTC.nvrtcGetSupportedArchs()
    return set(archs)


def _log(prog):
    _, size = NVRTC.nvrtcGetProgramLogSize(prog)
    buf = b" " * size
    NVRTC.nvrtcGetProgramLog(prog, buf)
    return buf.decode(errors="replace").rstrip("\x00").strip()


def _explain(log, source, path):
    """The log with each 'file(line): ...' message followed by that source line."""
    lines = source.splitlines()
    out = []
    for entry in log.splitlines():
        out.append(entry)
        m = re.match(r"^(.*)\((\d+)\): (error|warning)", entry)
        if m:
            ln = int(m.group(2))
            if 1 <= ln <= len(lines):
                out.append(f"    {path}:{ln}: {lines[ln - 1].strip()}")
    return "\n".join(out)


def nvrtc_compile(source: str, path: str, name_expressions, arch: int, options=None):
    """Compile ``source`` to PTX; return (ok, message, lowered names)."""
    err, prog = NVRTC.nvrtcCreateProgram(source.encode(), str(path).encode(), 0, [], [])
    assert err == NVRTC.nvrtcResult.NVRTC_SUCCESS, err
    try:
        for expr in name_expressions:
            (err,) = NVRTC.nvrtcAddNameExpression(prog, expr.encode())
            assert err == NVRTC.nvrtcResult.NVRTC_SUCCESS, (expr, err)
        options = kernels.NVRTC_OPTIONS if options is None else options
        opts = [o.encode() for o in options] + [f"-arch=compute_{arch}".encode()]
        (err,) = NVRTC.nvrtcCompileProgram(prog, len(opts), opts)
        log = _log(prog)
        if err != NVRTC.nvrtcResult.NVRTC_SUCCESS:
            return False, (f"{path} failed to compile for compute_{arch} with options "
                           f"{options}:\n{_explain(log, source, path)}"), {}
        lowered = {}
        for expr in name_expressions:
            err, name = NVRTC.nvrtcGetLoweredName(prog, expr.encode())
            lowered[expr] = name.decode() if err == NVRTC.nvrtcResult.NVRTC_SUCCESS else None
        return True, log, lowered
    finally:
        NVRTC.nvrtcDestroyProgram(prog)


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"sm{a}")
@pytest.mark.parametrize("file", sorted(kernels.KERNELS))
def test_kernel_file_compiles(file, arch):
    if arch not in _supported_archs():
        _, major, minor = NVRTC.nvrtcVersion()
        pytest.skip(f"NVRTC {major}.{minor} cannot target compute_{arch} ({_INSTALL})")
    path = kernels.kernel_path(file)
    exprs = [e for (f, _, _, e) in kernels.instantiations() if f == file]
    assert exprs, f"no instantiations listed for {file}"
    if file in kernels.NEEDS_CUDA_HEADERS and not kernels.cuda_include_dirs():
        pytest.skip(f"{file} includes <mma.h>: no CUDA toolkit include directory found "
                    "(set CUDA_PATH)")
    ok, message, lowered = nvrtc_compile(path.read_text(encoding="utf-8"), path, exprs, arch,
                                         kernels.nvrtc_options(file))
    assert ok, message
    missing = [e for e, name in lowered.items() if not name]
    assert not missing, f"{path}: NVRTC produced no kernel for {missing}"
    source_warnings = [ln for ln in message.splitlines() if re.search(r"\(\d+\): warning", ln)]
    assert not source_warnings, f"{path} compiled with warnings:\n{message}"


def test_a_broken_kernel_reports_file_and_line():
    """The compile check can fail, and then names the file and the line."""
    arch = min(a for a in ARCHS if a in _supported_archs())
    source = ("template <typename T>\n"
              "__global__ void broken(T* y, long long n)\n"
              "{\n"
              "    y[0] = undefined_name + n;\n"
              "}\n")
    ok, message, _ = nvrtc_compile(source, "broken.cu", ["broken<float>"], arch)
    assert not ok
    assert "broken.cu(4)" in message and "undefined_name" in message, message
    assert "broken.cu:4:" in message, message


def test_kernel_list_matches_the_sources():
    """KERNELS names exactly the __global__ templates each .cu defines."""
    for file, names in kernels.KERNELS.items():
        source = kernels.read_source(file)
        defined = re.findall(r"__global__\s+void\s+(\w+)\s*\(", source)
        assert sorted(defined) == sorted(names), (file, defined, names)
        for name in names:  # every kernel says what one thread computes
            head = source[:source.index(f"void {name}(")]
            comment = head.rstrip().rsplit("template <typename T>", 1)[0].rstrip()
            assert comment.splitlines()[-1].lstrip().startswith("//"), \
                f"{file}: kernel {name} has no comment right above it"
            block = "\n".join(ln for ln in comment.splitlines()[-8:] if ln.lstrip().startswith("//"))
            assert "thread" in block.lower(), f"{file}: {name}'s comment does not say what one thread computes"


def test_backend_launches_only_listed_kernels():
    """Every (file, kernel) the CUDA backend launches is in KERNELS."""
    import inspect

    from gpucnn.backends import cuda_backend, cuda_layers
    src = inspect.getsource(cuda_backend) + inspect.getsource(cuda_layers)
    launched = re.findall(r'_launch\(\s*"(\w+\.cu)",\s*"?(\w+)"?', src)
    assert launched
    for file, name in launched:
        if name == "kernel":  # _unary / _binary pass the kernel name through
            continue
        assert name in kernels.KERNELS[file], (file, name)
    for name in ("sigmoid", "relu", "tanh"):
        assert f"{name}_forward" in kernels.KERNELS["activation.cu"]
        assert f"{name}_backward" in kernels.KERNELS["activation.cu"]
