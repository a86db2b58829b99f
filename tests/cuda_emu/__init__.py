"""Run the CUDA kernels of ``kernels/*.cu`` on the CPU (test infrastructure, not shipped).

How it works
------------
* ``build_module`` writes a small wrapper translation unit per ``.cu`` file: it includes
  ``cuda_emu.h`` (threadIdx, __global__, __syncthreads, math, atomics), then the unchanged
  ``.cu`` file, then one ``extern "C"`` entry point per name expression (``"im2col<float>"``)
  that unpacks a ``void** args`` array into the kernel's parameters. g++ compiles it with
  ``-fsanitize=thread`` instrumentation (but no TSan runtime), so every load and store calls
  back into ``runtime.cpp`` (bounds and race checks), and links it with the launcher into a shared library cached by a hash of
  every input (``$GPUCNN_EMU_CACHE``, default ``~/.cache/gpucnn/cuda_emu``).
* ``EmulatedRawKernel`` has ``cupy.RawKernel``'s call, ``kernel(grid, block, args,
  shared_mem=0)``, over NumPy arrays. Before launching it checks every argument against the
  kernel's C signature read from the source (``signature.py``) and confirmed by the compiler:
  a Python ``int``/``float`` or a NumPy scalar of the wrong width where the kernel takes
  ``int``/``float``/... raises ``KernelArgumentError`` naming kernel and parameter, as does an
  array of the wrong dtype. It copies each array into a buffer with guard zones on both sides;
  an access outside an array raises ``KernelMemoryError`` naming the kernel, the argument, the
  element, the thread and the block. Writable arrays are copied back after a clean launch.
  Each array is placed at its GPU address modulo 256 (``device_misalignment``: a view keeps its
  offset into its allocation), and an N-byte access that is not N-aligned raises
  ``KernelAlignmentError`` (a GPU faults on it; the CPU would not).
* ``EmulatedLoader`` has the CUDA backend's loader interface, ``get(file, name, dtype)``, so
  ``CudaBackend(xp=numpy, loader=EmulatedLoader(), name="emulated")`` runs the backend's own
  launch code unchanged with NumPy standing in for CuPy.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import pathlib
import re
import subprocess
import time
import tempfile
import threading

import numpy as np

from .signature import SignatureError, find_kernels, kernel_signature, parse_name_expression, strip_comments

__all__ = [
    "EmulatorError", "EmulatorCompileError", "KernelArgumentError", "KernelMemoryError",
    "KernelSyncError", "KernelRaceError", "KernelTimeoutError", "KernelAlignmentError", "device_misalignment", "time_limit", "EmulatedModule", "EmulatedRawKernel", "EmulatedLoader", "build_module",
    "poisoned_numpy", "SignatureError", "make_emulated_backend", "emulator_unavailable_reason",
]

HERE = pathlib.Path(__file__).resolve().parent
HEADER = HERE / "cuda_emu.h"
RUNTIME = HERE / "runtime.cpp"
CXX = os.environ.get("CXX", "g++")

#: Flags for the kernels' translation unit: every memory access becomes a call to runtime.cpp.
#: -ffp-contract=off mirrors the NVRTC option --fmad=false (no fused multiply-add), whatever the host.
#: -fno-tree-sra keeps a vector struct (Pair<float>, float4, ...) loaded or stored as one access, so the
#: alignment check sees its size instead of its fields'.
#: -fno-gnu-unique: a __shared__ variable of a kernel template is a static of an inline function,
#: which g++ would make a process-wide "unique" symbol: two modules of one kernel file (a planted-bug
#: copy next to the original) would then share one copy, each module's race shadow covering only its own.
KERNEL_FLAGS = ("-O1", "-fPIC", "-ffp-contract=off", "-fno-tree-sra", "-fno-gnu-unique", "-fsanitize=thread",
                "--param", "tsan-instrument-func-entry-exit=0")
RUNTIME_FLAGS = ("-std=c++14", "-O2", "-fPIC", "-fvisibility=hidden")
LINK_FLAGS = ("-shared", "-Wl,-z,defs", "-Wl,-Bsymbolic")

#: Bytes of readable guard zone on each side of an array (accesses there are reported exactly),
#: and of PROT_NONE pages beyond that (accesses there fault and are reported by address).
GUARD_ZONE = 64 * 1024
GUARD_FAULT = 1024 * 1024

#: cudaMalloc (and CuPy's pool) return 256-byte aligned memory; an array argument is placed in its
#: guarded buffer at the address it would have on a GPU modulo this: a view that starts k bytes
#: into its allocation starts k % 256 bytes past an aligned address, so a kernel's own alignment
#: tests and the emulator's alignment check see what a GPU would.
DEVICE_ALIGNMENT = 256


def device_misalignment(value: np.ndarray) -> int:
    """Bytes past a ``DEVICE_ALIGNMENT`` boundary at which ``value`` would start on a GPU.

    The offset of the view into the array that owns its memory (a fresh allocation is aligned,
    as cudaMalloc's); memory NumPy does not own keeps its host address's misalignment."""
    root = value
    while isinstance(root.base, np.ndarray):
        root = root.base
    offset = value.ctypes.data - root.ctypes.data
    if not root.flags.owndata:
        offset += root.ctypes.data
    return offset % DEVICE_ALIGNMENT



def time_limit() -> float:
    """Seconds one emulated launch may run ($GPUCNN_EMU_TIMEOUT, default 120; 0 = no limit)."""
    return float(os.environ.get("GPUCNN_EMU_TIMEOUT", "120"))


# CUDA's launch limits (compute capability >= 3.0).
MAX_THREADS_PER_BLOCK = 1024
MAX_BLOCK = (1024, 1024, 64)
MAX_GRID = (2 ** 31 - 1, 65535, 65535)


class EmulatorError(RuntimeError):
    """The emulator cannot run what it was given (not necessarily a kernel bug)."""


class EmulatorCompileError(EmulatorError):
    """g++ rejected a kernel file; the message carries g++'s file:line diagnostics."""


class KernelArgumentError(TypeError):
    """A launch argument does not match the kernel's C parameter (type, dtype, count, layout)."""


class KernelMemoryError(RuntimeError):
    """A kernel read or wrote outside the arrays it was given."""


class KernelRaceError(RuntimeError):
    """Two threads of one launch accessed an element (one of them writing) without ordering."""


class KernelAlignmentError(KernelMemoryError):
    """A kernel loaded or stored N bytes at an address that is not a multiple of N (a GPU faults)."""


class KernelTimeoutError(RuntimeError):
    """A launch ran past ``time_limit()`` seconds (probably an endless loop)."""


class KernelSyncError(RuntimeError):
    """A block's threads did not meet at the same __syncthreads() (undefined behaviour on a GPU)."""


# ------------------------------------------------------------------------------------------------
# ctypes mirrors of runtime.cpp's structs
class _Guard(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in ("start", "end", "zone_lo", "zone_hi", "fault_lo", "fault_hi",
                                                "shadow", "shadow_bytes")]


class _Report(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_int64), ("arg", ctypes.c_int64), ("offset", ctypes.c_int64),
                ("size", ctypes.c_int64), ("is_write", ctypes.c_int64),
                ("block", ctypes.c_int64 * 3), ("thread", ctypes.c_int64 * 3), ("count", ctypes.c_int64),
                ("race", ctypes.c_int64), ("other_block", ctypes.c_int64), ("other_thread", ctypes.c_int64)]


(_OUT_OF_BOUNDS, _FAULT_NEAR_ARRAY, _NULL_POINTER, _BARRIER_EXIT, _BARRIER_MISMATCH, _TRAP, _BAD_LAUNCH, _RACE,
 _WARP_MISMATCH, _WARP_INACTIVE_SOURCE, _WARP_BAD_ARG, _STACK_OVERFLOW, _TIMEOUT, _WILD_ACCESS, _MISALIGNED) = range(1, 16)
_WARP_OPS = {1: "__shfl_sync", 2: "__shfl_up_sync", 3: "__shfl_down_sync", 4: "__shfl_xor_sync",
             5: "__ballot_sync", 6: "__any_sync", 7: "__all_sync", 8: "__syncwarp",
             9: "an nvcuda::wmma *_sync call"}


# ------------------------------------------------------------------------------------------------
# building
def cache_dir() -> pathlib.Path:
    env = os.environ.get("GPUCNN_EMU_CACHE")
    if env:
        path = pathlib.Path(env)
    else:
        path = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "gpucnn" / "cuda_emu"
    try:
        path.mkdir(parents=True, exist_ok=True)
        return path
    except OSError:
        path = pathlib.Path(tempfile.gettempdir()) / f"gpucnn-cuda-emu-{os.getuid()}"
        path.mkdir(parents=True, exist_ok=True)
        return path


_compiler_id = None


def _compiler_version() -> str:
    global _compiler_id
    if _compiler_id is None:
        try:
            out = subprocess.run([CXX, "--version"], capture_output=True, text=True, check=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            raise EmulatorError(f"the CUDA emulator needs a host C++ compiler ({CXX!r}): {exc}") from exc
        _compiler_id = out.stdout.splitlines()[0] if out.stdout else CXX
    return _compiler_id


def _run_compiler(cmd, what):
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise EmulatorCompileError(
            f"{what}: {CXX} failed (exit {proc.returncode}):\n{proc.stderr.strip()}\ncommand: {' '.join(cmd)}")


def _atomic_build(final: pathlib.Path, build):
    """Run ``build(tmp_path)`` and move the result to ``final`` (safe under concurrent pytest runs)."""
    if final.exists():
        return final
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=final.stem + "-", suffix=final.suffix)
    os.close(fd)
    try:
        build(pathlib.Path(tmp))
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return final


def _prune(directory: pathlib.Path, pattern: str, max_age_days: float = 7.0):
    """Delete cached builds of earlier sources that nothing has used for a week."""
    cutoff = time.time() - max_age_days * 86400
    for old in directory.glob(pattern):
        try:
            if old.stat().st_mtime < cutoff:
                old.unlink()
        except OSError:
            pass


def _runtime_object() -> pathlib.Path:
    digest = hashlib.sha256(RUNTIME.read_bytes() + repr(RUNTIME_FLAGS).encode()
                            + _compiler_version().encode()).hexdigest()[:16]
    final = cache_dir() / f"runtime-{digest}.o"
    return _atomic_build(final, lambda out: _run_compiler(
        [CXX, *RUNTIME_FLAGS, "-c", str(RUNTIME), "-o", str(out)], "compiling the emulator runtime"))


def _wrapper_source(source: pathlib.Path, exprs) -> str:
    lines = ['#include "cuda_emu.h"', f'#include "{source}"', ""]
    for i, expr in enumerate(exprs):
        lines.append(f'extern "C" void cuda_emu_entry_{i}(void** a) {{ cuda_emu::invoke(&{expr}, a); }}')
        lines.append(f'extern "C" const int* cuda_emu_sig_{i}(void) {{ return cuda_emu::signature(&{expr}); }}')
    return "\n".join(lines) + "\n"


def build_module(source, name_expressions, std="c++14", include_dirs=()) -> pathlib.Path:
    """Compile ``source`` (a .cu path) with an entry point per name expression; return the .so path."""
    source = pathlib.Path(source).resolve()
    exprs = list(name_expressions)
    includes = [source.parent, *map(pathlib.Path, include_dirs)]
    wrapper = _wrapper_source(source, exprs)
    h = hashlib.sha256()
    for part in (*(hdr.read_bytes() for hdr in sorted(HERE.glob("*.h"))),  # cuda_emu.h, mma.h
                 RUNTIME.read_bytes(), source.read_bytes(), wrapper.encode(),
                 repr((KERNEL_FLAGS, LINK_FLAGS, std)).encode(), _compiler_version().encode()):
        h.update(part)
        h.update(b"\0")
    for inc in includes:  # headers the .cu may include
        for hdr in sorted(inc.glob("*.cuh")) + sorted(inc.glob("*.h")):
            h.update(hdr.name.encode() + b"\0" + hdr.read_bytes())
    final = cache_dir() / f"{source.stem}-{h.hexdigest()[:16]}.so"
    if final.exists():
        os.utime(final)  # keeps it from being pruned while in use
        return final
    _prune(final.parent, f"{source.stem}-*.so")
    runtime_o = _runtime_object()

    def build(out: pathlib.Path):
        with tempfile.TemporaryDirectory(dir=final.parent) as tmp:
            cpp = pathlib.Path(tmp) / f"{source.stem}_emu.cpp"
            cpp.write_text(wrapper, encoding="utf-8")
            obj = pathlib.Path(tmp) / f"{source.stem}_emu.o"
            cmd = [CXX, f"-std={std}", *KERNEL_FLAGS, f"-I{HERE}", *(f"-I{d}" for d in includes),
                   "-c", str(cpp), "-o", str(obj)]
            _run_compiler(cmd, f"compiling {source} for the CUDA emulator")
            # linked without -fsanitize: runtime.cpp supplies the instrumentation's callbacks
            _run_compiler([CXX, str(obj), str(runtime_o), *LINK_FLAGS, "-o", str(out)],
                          f"linking the emulated {source.name}")

    return _atomic_build(final, build)


# ------------------------------------------------------------------------------------------------
# modules and kernels
_LIB_LOCK = threading.Lock()  # the runtime keeps its launch state in globals: one launch at a time


def _nm(path):
    """``nm -S --defined-only`` rows of ``path`` as lists of fields (empty without nm)."""
    try:
        out = subprocess.run(["nm", "-S", "--defined-only", str(path)], capture_output=True,
                             text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return [line.split() for line in out.splitlines()]


def _shared_variables(lib_path, lib):
    """[(address, size, name)] of the kernel file's __shared__ variables in the loaded library.

    ``__shared__`` is a function-local static in the emulator, so these are the writable
    local-static symbols (mangled ``_ZZ...``) of the library, read from its symbol table with
    ``nm``; the load address comes from an exported function's run-time and file addresses.
    Without ``nm`` the list is empty (shared memory is then neither poisoned nor race-checked).
    """
    runtime_names = {parts[-1] for parts in _nm(_runtime_object()) if parts}
    symbols, launch_at = [], None
    for parts in _nm(lib_path):
        if parts and parts[-1] == "cuda_emu_launch":
            launch_at = int(parts[0], 16)
        if (len(parts) == 4 and parts[2] in "bBdDuV" and parts[3].startswith("_ZZ")
                and not parts[3].startswith("_ZZN8cuda_emu")  # not the emulator's own statics
                and parts[3] not in runtime_names):
            symbols.append((int(parts[0], 16), int(parts[1], 16), parts[3]))
    if not symbols or launch_at is None:
        return []
    base = ctypes.cast(lib.cuda_emu_launch, ctypes.c_void_p).value - launch_at
    try:
        names = subprocess.run(["c++filt"], input="\n".join(m for _, _, m in symbols), capture_output=True,
                               text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        names = [m for _, _, m in symbols]
    # "block_sum<float>(float const*, float*, int)::buf" -> "block_sum<float>::buf"
    names = [re.sub(r"\((?:[^()]|\([^()]*\))*\)(?=::)", "", n) for n in names]
    return [(base + addr, size, name) for (addr, size, _), name in zip(symbols, names) if size > 0]


def _decode_type(code: int):
    """Decode cuda_emu::type_code: -> (pointer depth, numpy dtype or None)."""
    pointer, rest = divmod(code, 1000)
    kind, size = divmod(rest, 100)
    letter = {1: "f", 2: "i", 3: "u", 4: "b"}.get(kind)
    return pointer, (np.dtype(f"{letter}{size}") if letter else None)


class EmulatedModule:
    """The emulated counterpart of a ``cupy.RawModule`` compiled with ``name_expressions``."""

    def __init__(self, source, name_expressions, std="c++14", include_dirs=(), label=None):
        self.path = pathlib.Path(source).resolve()
        self.label = label or self.path.name
        self.source = self.path.read_text(encoding="utf-8")
        self.name_expressions = list(dict.fromkeys(name_expressions))
        code = strip_comments(self.source)
        for inc in [self.path.parent, *map(pathlib.Path, include_dirs)]:
            for hdr in inc.glob("*.cuh"):
                if hdr.name in code:
                    code += strip_comments(hdr.read_text(encoding="utf-8"))
        if re.search(r"\bextern\s+__shared__\b", code):
            raise EmulatorError(f"{self.label}: dynamic shared memory (extern __shared__) is not emulated")
        # Fibers only where a barrier can happen; otherwise a block's threads run in a plain loop.
        self.fiber_mode = bool(re.search(
            r"__syncthreads|__syncwarp|__shfl\w*_sync|__ballot_sync|__any_sync|__all_sync|__activemask"
            r"|\b(?:load_matrix|mma|store_matrix)_sync\b", code))  # wmma: warp rendezvous
        self.signatures = {e: kernel_signature(self.source, e) for e in self.name_expressions}
        self.lib_path = build_module(self.path, self.name_expressions, std=std, include_dirs=include_dirs)
        self.lib = ctypes.CDLL(str(self.lib_path))
        self.lib.cuda_emu_launch.restype = ctypes.c_int
        self.lib.cuda_emu_launch.argtypes = [
            ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint * 3), ctypes.POINTER(ctypes.c_uint * 3),
            ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(_Report), ctypes.c_double,
            ctypes.c_void_p, ctypes.c_uint64]
        self.lib.cuda_emu_alloc_guarded.restype = ctypes.c_int
        self.lib.cuda_emu_alloc_guarded.argtypes = [ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64,
                                                    ctypes.POINTER(_Guard)]
        self.lib.cuda_emu_free_guarded.argtypes = [ctypes.POINTER(_Guard)]
        self.shared_vars = _shared_variables(self.lib_path, self.lib)
        if self.shared_vars:
            ranges = np.array([(addr, size) for addr, size, _ in self.shared_vars], dtype=np.uint64)
            self.lib.cuda_emu_set_shared.restype = ctypes.c_int
            if self.lib.cuda_emu_set_shared(ctypes.c_void_p(ranges.ctypes.data), len(self.shared_vars)) < 0:
                raise EmulatorError(f"{self.label}: cannot map the shadow of its __shared__ variables")
        self._kernels = {}
        for i, expr in enumerate(self.name_expressions):
            entry = ctypes.cast(getattr(self.lib, f"cuda_emu_entry_{i}"), ctypes.c_void_p).value
            sig_fn = getattr(self.lib, f"cuda_emu_sig_{i}")
            sig_fn.restype = ctypes.POINTER(ctypes.c_int)
            raw = sig_fn()
            codes = [raw[k + 1] for k in range(raw[0])]
            self._kernels[expr] = EmulatedRawKernel(self, expr, entry, self.signatures[expr], codes)

    def get_function(self, name_expression: str) -> "EmulatedRawKernel":
        try:
            return self._kernels[name_expression]
        except KeyError:
            raise EmulatorError(
                f"{self.label}: {name_expression!r} was not among the name expressions this module was "
                f"compiled with ({', '.join(self.name_expressions)})") from None


def _dims(value, what, kernel, limits):
    if isinstance(value, (int, np.integer)):
        value = (value,)
    try:
        dims = tuple(int(v) for v in value)
    except TypeError:
        raise KernelArgumentError(f"{kernel}: {what} must be an int or a tuple of 1 to 3 ints, got {value!r}") from None
    if not 1 <= len(dims) <= 3 or any(isinstance(v, (bool, np.bool_)) for v in value):
        raise KernelArgumentError(f"{kernel}: {what} must be an int or a tuple of 1 to 3 ints, got {value!r}")
    dims = dims + (1,) * (3 - len(dims))
    for axis, (d, lim) in enumerate(zip(dims, limits)):
        if not 1 <= d <= lim:
            raise EmulatorError(
                f"{kernel}: invalid launch configuration: {what}.{'xyz'[axis]} = {d}, CUDA allows 1..{lim}")
    return dims


def _type_name(value) -> str:
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {value.shape}"
    if isinstance(value, np.generic):
        return f"numpy.{type(value).__name__}"
    return f"a Python {type(value).__name__}"


class EmulatedRawKernel:
    """One kernel instantiation, called like ``cupy.RawKernel``: ``kernel(grid, block, args, shared_mem=0)``."""

    max_threads_per_block = MAX_THREADS_PER_BLOCK

    def __init__(self, module, name_expression, entry, params, codes):
        self.launches = 0  # clean launches so far
        self.module = module
        self.name = name_expression
        self.entry = entry
        self.params = params
        self.where = f"kernel {name_expression} ({module.label})"
        if len(codes) != len(params):
            raise SignatureError(
                f"{self.where}: the source parser found {len(params)} parameters, g++ found {len(codes)}")
        self.types = []
        for p, code in zip(params, codes):
            pointer, dtype = _decode_type(code)
            if pointer != p.pointer or (p.dtype is not None and dtype != p.dtype):
                raise SignatureError(
                    f"{self.where}: parameter {p.name} reads as {p.ctype} from the source but g++ "
                    f"sees pointer depth {pointer}, type {dtype}")
            if dtype is None or pointer > 1:
                raise EmulatorError(f"{self.where}: parameter {p.name} ({p.spelled}) has a type the "
                                    "emulator cannot pass (only scalars and pointers to scalars)")
            self.types.append((pointer, dtype))

    def __repr__(self):
        return f"<EmulatedRawKernel {self.name} from {self.module.label}>"

    # -- argument checks ---------------------------------------------------------------------------
    def _describe(self, i) -> str:
        p = self.params[i]
        return f"{self.where}: argument {i} '{p.name}' ({p.ctype} {p.name}"

    def _check_args(self, args):
        if not isinstance(args, (tuple, list)):
            raise KernelArgumentError(f"{self.where}: args must be a tuple, got {type(args).__name__}")
        if len(args) != len(self.params):
            names = ", ".join(f"{p.ctype} {p.name}" for p in self.params)
            raise KernelArgumentError(
                f"{self.where}: expected {len(self.params)} arguments ({names}), got {len(args)}")
        for i, (value, (pointer, dtype)) in enumerate(zip(args, self.types)):
            p = self.params[i]
            if pointer:
                if value is None:
                    continue
                if not isinstance(value, np.ndarray):
                    raise KernelArgumentError(
                        f"{self._describe(i)}) takes an array of {dtype}; got {_type_name(value)}")
                if value.dtype != dtype:
                    raise KernelArgumentError(
                        f"{self._describe(i)}) takes {dtype} elements; got {_type_name(value)} -- the "
                        f"kernel would reinterpret its bytes")
                if not value.flags.c_contiguous:
                    raise KernelArgumentError(
                        f"{self._describe(i)}) receives a raw pointer; got a non-contiguous array of shape "
                        f"{value.shape} with strides {value.strides} -- pass a C-contiguous array")
            else:
                if type(value) is not dtype.type:
                    hint = f"pass numpy.{dtype.type.__name__}(...)"
                    if isinstance(value, (bool, int, float)) and not isinstance(value, np.generic):
                        hint += (" -- CuPy passes a Python int as int64 and a Python float as float64, so "
                                 "the kernel would read garbage")
                    raise KernelArgumentError(
                        f"{self._describe(i)}) takes numpy.{dtype.type.__name__}; got {_type_name(value)}; {hint}")

    # -- launch ------------------------------------------------------------------------------------
    def __call__(self, grid, block, args, shared_mem=0, stream=None, enable_cooperative_groups=False):
        grid3 = _dims(grid, "grid", self.where, MAX_GRID)
        block3 = _dims(block, "block", self.where, MAX_BLOCK)
        if block3[0] * block3[1] * block3[2] > MAX_THREADS_PER_BLOCK:
            raise EmulatorError(f"{self.where}: invalid launch configuration: block {block3} has "
                                f"{block3[0] * block3[1] * block3[2]} threads, CUDA allows {MAX_THREADS_PER_BLOCK}")
        if shared_mem:
            raise EmulatorError(f"{self.where}: dynamic shared memory ({shared_mem} bytes) is not emulated")
        self._check_args(args)
        lib = self.module.lib
        n = len(args)
        guards = (_Guard * max(n, 1))()
        slots = np.zeros(max(n, 1), dtype=np.uint64)
        slot_bytes = slots.view(np.uint8)
        buffers = {}   # (address, nbytes) -> index of the argument that owns the guarded copy
        owners = {}    # that index -> every argument index passing the same memory
        allocated = []
        try:
            spans = []
            for i, value in enumerate(args):
                pointer, dtype = self.types[i]
                if not pointer:
                    slot_bytes[8 * i: 8 * i + dtype.itemsize] = np.frombuffer(value.tobytes(), np.uint8)
                    continue
                if value is None:
                    continue
                key = (value.ctypes.data, value.nbytes)
                if key in buffers:  # the same memory passed twice (in-place kernels): one buffer
                    j = buffers[key]
                    owners[j].append(i)
                    guards[i] = guards[j]
                    slots[i] = guards[j].start
                    continue
                for (lo, hi, j) in spans:
                    if value.nbytes and lo < value.ctypes.data + value.nbytes and value.ctypes.data < hi:
                        raise EmulatorError(
                            f"{self.where}: arguments '{self.params[j].name}' and '{self.params[i].name}' overlap "
                            "partially; the emulator can only guard identical or disjoint arrays")
                spans.append((value.ctypes.data, value.ctypes.data + value.nbytes, i))
                mis = device_misalignment(value)
                if lib.cuda_emu_alloc_guarded(value.nbytes + mis, GUARD_ZONE, GUARD_FAULT, ctypes.byref(guards[i])) != 0:
                    raise MemoryError(f"{self.where}: cannot map a guarded buffer of {value.nbytes} bytes")
                guards[i].start += mis      # the bytes before it count as the front guard zone
                guards[i].end = guards[i].start + value.nbytes
                allocated.append(i)
                buffers[key] = i
                owners[i] = [i]
                ctypes.memmove(guards[i].start, value.ctypes.data, value.nbytes)
                slots[i] = guards[i].start
            argv = (ctypes.c_void_p * max(n, 1))(*[slots.ctypes.data + 8 * i for i in range(n)])
            report = _Report()
            with _LIB_LOCK:
                kind = lib.cuda_emu_launch(self.entry, ctypes.byref((ctypes.c_uint * 3)(*grid3)),
                                           ctypes.byref((ctypes.c_uint * 3)(*block3)), ctypes.cast(argv, ctypes.c_void_p),
                                           int(self.module.fiber_mode), ctypes.cast(guards, ctypes.c_void_p), n,
                                           ctypes.byref(report), float(time_limit()),
                                           ctypes.c_void_p(slots.ctypes.data), slots.nbytes)
            if kind:
                self._raise(report, args, grid3, block3)
            self.launches += 1
            for i in allocated:
                value = args[i]
                after = np.frombuffer((ctypes.c_char * value.nbytes).from_address(guards[i].start), np.uint8)
                changed = not np.array_equal(after, value.reshape(-1).view(np.uint8))
                if all(self.params[j].const_pointee for j in owners[i]):
                    if changed:  # only possible by casting the const away
                        raise KernelMemoryError(f"{self.where}: wrote to argument {i} '{self.params[i].name}' "
                                                f"({self.params[i].ctype}) through a pointer to const")
                    continue
                if changed and not value.flags.writeable:
                    raise KernelMemoryError(f"{self.where}: wrote to argument {i} '{self.params[i].name}', "
                                            "a read-only NumPy array")
                if changed:
                    ctypes.memmove(value.ctypes.data, guards[i].start, value.nbytes)
        finally:
            for i in allocated:
                lib.cuda_emu_free_guarded(ctypes.byref(guards[i]))

    def _raise(self, r, args, grid, block):
        where = f"{self.where}, launched with grid {grid} and block {block}"
        who = f"thread {tuple(r.thread)} of block {tuple(r.block)}"
        if r.kind in (_OUT_OF_BOUNDS, _FAULT_NEAR_ARRAY):
            i = r.arg
            p = self.params[i]
            arr = args[i]
            item = arr.dtype.itemsize
            nelem = arr.size
            elem = r.offset // item if r.offset >= 0 else -((-r.offset + item - 1) // item)
            if r.offset < 0:
                rel = f"{-elem} element(s) before the start"
            else:
                rel = f"{elem - nelem + 1} element(s) past the end"
            access = {0: "read", 1: "write"}.get(r.is_write, "access")
            size = f" of {r.size} bytes" if r.size else ""
            extra = f"; {r.count} bad accesses in this launch" if r.count > 1 else ""
            raise KernelMemoryError(
                f"{where}: out-of-bounds {access}{size} by {who}: argument {i} '{p.name}' ({p.ctype}) "
                f"holds {nelem} elements (shape {arr.shape}), the access is at element {elem}, "
                f"{rel}{extra}")
        if r.kind == _MISALIGNED:
            if r.is_write == 2:
                head = (f"{where}: misaligned pointer cast by {who}: reinterpret_cast to a type aligned to "
                        f"{r.size} bytes of an address that is not a multiple of {r.size} (an access through "
                        "it faults on a GPU)")
            else:
                access = {0: "read", 1: "write"}.get(r.is_write, "access")
                head = (f"{where}: misaligned {r.size}-byte {access} by {who}: a GPU faults (misaligned "
                        f"address) on an access of {r.size} bytes whose address is not a multiple of {r.size}")
            if r.arg >= 0:
                p, arr = self.params[r.arg], args[r.arg]
                item = arr.dtype.itemsize
                start = device_misalignment(arr)
                raise KernelAlignmentError(
                    f"{head}; argument {r.arg} '{p.name}' ({p.ctype}) at byte offset {r.offset} (element "
                    f"{r.offset // item}{f' + {r.offset % item} bytes' if r.offset % item else ''}), the array "
                    f"starting {start} bytes past a {DEVICE_ALIGNMENT}-byte boundary: address % {r.size} = "
                    f"{(start + r.offset) % r.size}")
            if r.arg <= -2:
                name = self.module.shared_vars[-2 - r.arg][2]
                raise KernelAlignmentError(f"{head}; __shared__ {name} at byte offset {r.offset}")
            raise KernelAlignmentError(f"{head}; on the stack or in static data (address ...{r.offset:#x})")
        if r.kind == _RACE and r.arg <= -2:
            name = self.module.shared_vars[-2 - r.arg][2]
            ob, ot = r.other_block, r.other_thread
            other = f"thread {(ot % block[0], ot // block[0] % block[1], ot // (block[0] * block[1]))}"
            what = {1: f"wrote a different value to the word that {other} wrote",
                    2: f"read the word that {other} wrote",
                    3: f"wrote the word that {other} read"}[r.race]
            raise KernelRaceError(
                f"{where}: data race on __shared__ {name} at byte {r.offset}: {who} {what}, with no "
                "__syncthreads() between them (on a GPU the result depends on scheduling)")
        if r.kind == _RACE:
            i = r.arg
            p = self.params[i]
            item = args[i].dtype.itemsize
            ob, ot = r.other_block, r.other_thread
            other_block = (ob % grid[0], ob // grid[0] % grid[1], ob // (grid[0] * grid[1]))
            other_thread = (ot % block[0], ot // block[0] % block[1], ot // (block[0] * block[1]))
            other = f"thread {other_thread} of block {other_block}"
            what = {1: f"wrote a different value to the element that {other} wrote",
                    2: f"read the element that {other} wrote",
                    3: f"wrote the element that {other} read"}[r.race]
            raise KernelRaceError(
                f"{where}: data race on argument {i} '{p.name}' ({p.ctype}) element {r.offset // item}: {who} "
                f"{what}, with no __syncthreads() between them (on a GPU the result depends on scheduling)")
        if r.kind == _NULL_POINTER:
            names = [self.params[i].name for i, a in enumerate(args) if self.types[i][0] and a is None]
            raise KernelMemoryError(f"{where}: {who} dereferenced a null pointer (address {r.offset:#x}); "
                                    f"arguments passed as None: {', '.join(names) or 'none'}")
        if r.kind == _BARRIER_EXIT:
            raise KernelSyncError(f"{where}: in block {tuple(r.block)}, {r.offset} thread(s) returned while "
                                  "the others wait at __syncthreads() (undefined behaviour on a GPU)")
        if r.kind == _BARRIER_MISMATCH:
            raise KernelSyncError(f"{where}: the threads of block {tuple(r.block)} wait at different "
                                  "__syncthreads() calls (undefined behaviour on a GPU)")
        if r.kind in (_WARP_MISMATCH, _WARP_INACTIVE_SOURCE, _WARP_BAD_ARG):
            op = _WARP_OPS.get(r.is_write, "a warp intrinsic")
            lane, other = r.offset, r.size

            def tid(t):
                return (t % block[0], t // block[0] % block[1], t // (block[0] * block[1]))
            head = f"{where}: in block {tuple(r.block)}, thread {tid(lane)} (warp {lane // 32}, lane {lane % 32})"
            if r.kind == _WARP_INACTIVE_SOURCE:
                raise KernelSyncError(f"{head} {op} reads lane {other % 32}, which does not take part (exited or "
                                      "not in the mask): the value is undefined on a GPU")
            if r.kind == _WARP_BAD_ARG:
                raise KernelSyncError(f"{head} calls {op} with width {other} or a mask without its own lane "
                                      "(width must be a power of two <= 32; the mask must name the caller)")
            raise KernelSyncError(f"{head} waits in {op} while lane {other % 32} named in its mask is elsewhere "
                                  "(a different intrinsic or mask, or __syncthreads()): undefined behaviour on a GPU")
        if r.kind == _WILD_ACCESS:
            access = {0: "read", 1: "write"}.get(r.is_write, "access")
            near = ""
            if r.arg >= 0:
                p, arr = self.params[r.arg], args[r.arg]
                near = (f"; the nearest array argument is {r.arg} '{p.name}' ({p.ctype}, {arr.size} elements), "
                        f"the address is at its element {r.offset // arr.dtype.itemsize}")
            raise KernelMemoryError(f"{where}: wild {access} by {who}: the address belongs to no argument, "
                                    f"__shared__ variable or stack{near}")
        if r.kind == _STACK_OVERFLOW:
            raise KernelMemoryError(f"{where}: a thread overflowed its {r.offset // 1024} KiB emulator stack "
                                    "(deep recursion or a large local array?)")
        if r.kind == _TIMEOUT:
            raise KernelTimeoutError(f"{where}: still running after {time_limit():g} s (GPUCNN_EMU_TIMEOUT); "
                                     "an endless loop, e.g. a grid-stride step of 0?")
        if r.kind == _TRAP:
            raise KernelMemoryError(f"{where}: {who} executed __trap()")
        raise EmulatorError(f"{where}: the launcher could not run it (error kind {r.kind}, detail {r.offset}); "
                            "__syncthreads() reached without fiber mode?")


# ------------------------------------------------------------------------------------------------
class EmulatedLoader:
    """Stands in for ``gpucnn.backends.kernels.CupyKernelLoader``: ``get(file, name, dtype)``.

    Compiles each kernel file once per process (and once per content hash on disk), with every
    kernel template the backend lists instantiated for float and double.
    """

    #: what ``compute_capability()`` reports (the TF32 kernels need >= 80; tests may lower it)
    emulated_compute_capability = 90

    def compute_capability(self) -> int:
        return int(self.emulated_compute_capability)

    def __init__(self, kernel_dir=None):
        from gpucnn.backends import kernels as K
        self.K = K
        self.kernel_dir = pathlib.Path(kernel_dir) if kernel_dir is not None else None
        self._modules = {}
        self._kernels = {}
        std = [o for o in K.NVRTC_OPTIONS if o.startswith("-std=")]
        self.std = std[-1][len("-std="):] if std else "c++14"

    def path(self, file):
        if self.kernel_dir is not None:
            return self.kernel_dir / file
        return self.K.kernel_path(file)

    def module(self, file) -> EmulatedModule:
        mod = self._modules.get(file)
        if mod is None:
            if file not in self.K.KERNELS:
                raise ValueError(f"unknown kernel file {file!r}; expected one of {', '.join(self.K.KERNELS)}")
            exprs = [f"{name}<{ct}>" for ct in self.K.CTYPES.values() for name in self.K.KERNELS[file]]
            mod = self._modules[file] = EmulatedModule(self.path(file), exprs, std=self.std, label=file)
        return mod

    def get(self, file: str, name: str, dtype):
        key = (file, name, np.dtype(dtype).name)
        kern = self._kernels.get(key)
        if kern is None:
            if name not in self.K.KERNELS.get(file, ()):
                raise ValueError(f"kernel {name!r} is not listed for {file!r} in KERNELS")
            kern = self._kernels[key] = self.module(file).get_function(self.K.name_expression(name, dtype))
        return kern

    def compile_all(self, dtypes=("float32",)):
        for file in self.K.KERNELS:
            self.module(file)


# ------------------------------------------------------------------------------------------------
class _PoisonedNumpy:
    """NumPy, except that ``empty``/``empty_like`` fill floats with NaN and integers with a
    sentinel: a kernel that leaves part of its output unwritten then shows up in the parity
    check instead of passing on the zeros a fresh page happens to hold."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def _poison(a):
        if a.dtype.kind in "fc":
            a.fill(np.nan)
        elif a.dtype.kind in "iu":
            a.fill(np.iinfo(a.dtype).max // 3 + 7)
        return a

    def empty(self, *args, **kwargs):
        return self._poison(np.empty(*args, **kwargs))

    def empty_like(self, *args, **kwargs):
        return self._poison(np.empty_like(*args, **kwargs))


poisoned_numpy = _PoisonedNumpy()


# ------------------------------------------------------------------------------------------------
def emulator_unavailable_reason():
    """None when the emulator can run here, else why not (no host C++ compiler)."""
    try:
        _compiler_version()
    except EmulatorError as exc:
        return str(exc)
    return None


def make_emulated_backend(kernel_dir=None):
    """The CUDA backend's own class over NumPy, its kernels run by the emulator, behind the
    seam's argument checks (as ``gpucnn.backends`` hands out the real one)."""
    from gpucnn.backends.checked import checked
    from gpucnn.backends.cuda_backend import CudaBackend
    return checked(CudaBackend(xp=poisoned_numpy, loader=EmulatedLoader(kernel_dir), name="emulated"))
