"""64-bit indexing in kernels/*.cu, checked on the source (no GPU, no 8 GiB array needed).

A tensor can pass 2^31 elements (a (256, 64, 512, 512) float activation is 2^32), so a 32-bit
index silently wraps there and nowhere below: no test on small shapes can see it. The house rule
(GUIDE.md, "Kernels") is that every integer a kernel derives from the thread indices or from a
size parameter is 64-bit. This lint reads each function of every kernel file (comments
stripped) and refuses, naming file, function and the offending text:

* ``param``  -- an integer parameter narrower than 64 bits (sizes arrive as ``long long``);
* ``decl``   -- a 32-bit integer variable (``int``, ``unsigned``, ``int32_t``, ...) initialised
  from the built-in indices, a size parameter, or a variable derived from them;
* ``assign`` -- such a value assigned (``=``, ``+=``, ...) to a 32-bit variable;
* ``product``-- ``blockIdx.x * blockDim.x`` (or any product of two built-ins) computed in 32
  bits: the first factor must be cast, ``(long long)blockIdx.x * blockDim.x``;
* ``cast``   -- a cast to a 32-bit integer type of such a value.

Loop counters over small constants (``for (int u = 0; u < 4; ++u)``) are fine: their initialiser
mentions no index. The deliberate exceptions are listed in ``ALLOWED`` with their reason.
"""
from __future__ import annotations

import pathlib
import re

import pytest

from tests.cuda_emu.signature import strip_comments

KERNEL_DIR = pathlib.Path(__file__).resolve().parents[1] / "kernels"

BUILTINS = ("threadIdx", "blockIdx", "blockDim", "gridDim")
_NARROW = r"(?:unsigned\s+int|signed\s+int|unsigned\s+short|unsigned|signed|int32_t|uint32_t|int16_t|uint16_t|short|int)"
_WIDE = re.compile(r"\b(?:long\s+long|long|int64_t|uint64_t|size_t|ptrdiff_t)\b")
# a 32-bit integer type not part of "long long int" / "unsigned long long"
NARROW_TYPE = rf"(?<![\w<])(?<!long )(?:const\s+)?{_NARROW}(?!\s+long)(?:\s+const)?"
DECL = re.compile(rf"{NARROW_TYPE}\s+(?!long\b)([A-Za-z_]\w*)\s*(=|\(|\{{)")
CAST = re.compile(rf"\(\s*{_NARROW}\s*\)|static_cast<\s*{_NARROW}\s*>|\b(?<!long )(?:int|unsigned)\s*\(")
PRODUCT = re.compile(r"(\(\s*(?:long\s+long|unsigned\s+long\s+long|int64_t|size_t)\s*\)\s*)?"
                     r"\b(threadIdx|blockIdx|blockDim|gridDim)\.[xyz]\s*\*\s*(threadIdx|blockIdx|blockDim|gridDim)\.[xyz]")
FUNC = re.compile(r"(__global__|__device__)[^;{}]*?\b([A-Za-z_]\w*)\s*\(")

#: (file, offending text) -> why it is fine.
ALLOWED = {
    # argmax is int32 by the seam's contract (the in-plane index h*W + w of the chosen element):
    ("pool2d.cu", "const int me = (int)(h * W + w)"): "compared with the int32 argmax values",
    ("pool2d.cu", "(int)(h * W + w)"): "compared with the int32 argmax values",
    ("pool2d.cu", "int me"): "MaxGrad::add compares it with the int32 argmax values",
}


def _match(text, open_idx, pair="()"):
    depth = 0
    for k in range(open_idx, len(text)):
        if text[k] == pair[0]:
            depth += 1
        elif text[k] == pair[1]:
            depth -= 1
            if depth == 0:
                return k
    raise ValueError(f"unbalanced {pair} at {open_idx}")


def functions(src):
    """[(name, params text, body text)] of every __global__ / __device__ function definition."""
    out = []
    for m in FUNC.finditer(src):
        open_p = m.end() - 1
        close_p = _match(src, open_p)
        rest = src[close_p + 1:]
        brace = re.match(r"\s*(?:const\s*)?\{", rest)
        if not brace:
            continue  # a declaration
        open_b = close_p + 1 + brace.end() - 1
        out.append((m.group(2), src[open_p + 1:close_p], src[open_b + 1:_match(src, open_b, "{}")]))
    return out


def _names(expr):
    return set(re.findall(r"[A-Za-z_]\w*", expr))


def _cast_operand(text, start):
    """The operand of a cast ending at ``start``: a parenthesised group or a (member) name."""
    m = re.match(r"\s*", text[start:])
    k = start + m.end()
    if k < len(text) and text[k] == "(":
        return text[k:_match(text, k) + 1]
    m = re.match(r"[A-Za-z_][\w.]*(?:\[[^\]]*\])?", text[k:])
    return m.group(0) if m else ""


def lint_source(src, file="<src>"):
    """Violations in a kernel source: [(rule, file, function, text)]."""
    src = strip_comments(src)
    problems = []
    for name, params, body in functions(src):
        tainted = set(BUILTINS)
        for decl in filter(None, (p.strip() for p in params.split(","))):
            if "*" in decl or "&" in decl:
                continue
            words = decl.split()
            pname, ptype = words[-1], " ".join(words[:-1])
            if re.fullmatch(rf"(?:const\s+)?{_NARROW}(?:\s+const)?", ptype):
                problems.append(("param", file, name, decl))
                tainted.add(pname)
            elif _WIDE.search(ptype):
                tainted.add(pname)
        narrow_vars = set()
        # statements in order; a for-header's parts count as statements
        for stmt in re.split(r"[;{}]", body):
            stmt = re.sub(r"^for\s*\(\s*", "", stmt.strip())
            for m in DECL.finditer(stmt):
                var = m.group(1)
                narrow_vars.add(var)
                init = stmt[m.end():] if m.group(2) == "=" else stmt[m.end() - 1:]
                if _names(init) & tainted:
                    problems.append(("decl", file, name, stmt))
                    tainted.add(var)
            wide = re.match(r"(?:const\s+)?(?:unsigned\s+)?(?:long\s+long|long|int64_t|uint64_t|size_t|ptrdiff_t)"
                            r"(?:\s+int)?\s+(?:const\s+)?([A-Za-z_]\w*)\s*=(.*)", stmt)
            if wide and _names(wide.group(2)) & tainted:
                tainted.add(wide.group(1))
            for m in re.finditer(r"(?<![\w.])([A-Za-z_]\w*)\s*(?:[-+*/%|&^]|<<|>>)?=(?!=)\s*(.*)", stmt):
                if m.group(1) in narrow_vars and _names(m.group(2)) & tainted and not DECL.search(stmt):
                    problems.append(("assign", file, name, stmt))
        for m in PRODUCT.finditer(body):
            if not m.group(1):
                problems.append(("product", file, name, m.group(0)))
        for m in CAST.finditer(body):
            operand = _cast_operand(body, m.end())
            if _names(operand) & _all_tainted(body, params):
                problems.append(("cast", file, name, (m.group(0) + operand).replace(" )", ")")))
    return [p for p in problems if (p[1], p[3]) not in ALLOWED]


def _all_tainted(body, params):
    """Names that hold or derive from an index (for casts, which may sit anywhere)."""
    names = set(BUILTINS)
    for decl in params.split(","):
        words = decl.split()
        if words and "*" not in decl and re.search(rf"{_NARROW}|long", " ".join(words[:-1])):
            names.add(words[-1])
    changed = True
    while changed:
        changed = False
        for m in re.finditer(r"(?:long\s+long|long|int|unsigned|size_t|int64_t)\s+(?:const\s+)?([A-Za-z_]\w*)\s*=([^;]*)", body):
            if m.group(1) not in names and _names(m.group(2)) & names:
                names.add(m.group(1))
                changed = True
    return names


KERNEL_FILES = sorted(KERNEL_DIR.glob("*.cu"))


@pytest.mark.parametrize("path", KERNEL_FILES, ids=lambda p: p.name)
def test_kernel_indices_are_64_bit(path):
    problems = lint_source(path.read_text(encoding="utf-8"), path.name)
    assert not problems, "32-bit index arithmetic on element offsets:\n" + "\n".join(
        f"  {f}: {fn}: [{rule}] {text}" for rule, f, fn, text in problems)


def test_every_kernel_file_has_functions_to_check():
    for path in KERNEL_FILES:
        assert functions(strip_comments(path.read_text(encoding="utf-8"))), path.name


def test_allowed_exceptions_still_exist():
    # An exception whose text is gone from the sources is stale: drop it.
    text = {p.name: re.sub(r"\s+", " ", strip_comments(p.read_text(encoding="utf-8"))) for p in KERNEL_FILES}
    stale = [k for k in ALLOWED if k[1] not in text.get(k[0], "")]
    assert not stale, f"stale entries in ALLOWED: {stale}"


# ------------------------------------------------------------------------------------------------
# the lint itself: each rule on a planted 32-bit index, and the idioms it must leave alone
ACCUMULATE = """
template <typename T>
__global__ void accumulate(T* __restrict__ dst, const T* __restrict__ src, long long n)
{
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        dst[i] += src[i];
    }
}
"""

PLANTED = {
    "int-loop-index": ("for (long long i = (long long)blockIdx.x", "for (int i = (long long)blockIdx.x", "decl"),
    "int-step": ("const long long step", "const int step", "decl"),
    "unsigned-index": ("for (long long i = (long long)blockIdx.x", "for (unsigned i = (long long)blockIdx.x", "decl"),
    "32-bit-product": ("(long long)blockIdx.x * blockDim.x", "blockIdx.x * blockDim.x", "product"),
    "int-size-param": ("long long n)", "int n)", "param"),
    "int-cast-in-subscript": ("dst[i] += src[i];", "dst[(int)i] += src[(int)i];", "cast"),
    "int-offset-variable": ("dst[i] += src[i];", "int j = i; dst[j] += src[j];", "decl"),
    "narrow-assignment": ("dst[i] += src[i];", "int j = 0; j = i; dst[j] += src[j];", "assign"),
}


def test_lint_accepts_the_unchanged_accumulate():
    assert lint_source(ACCUMULATE) == []


@pytest.mark.parametrize("bug", sorted(PLANTED))
def test_lint_refuses_a_planted_32_bit_index(bug):
    old, new, rule = PLANTED[bug]
    assert ACCUMULATE.count(old) == 1
    problems = lint_source(ACCUMULATE.replace(old, new), "activation.cu")
    assert problems and rule in {p[0] for p in problems}, problems
    assert all(p[2] == "accumulate" for p in problems)


def test_lint_leaves_small_loop_counters_and_lane_math_alone():
    src = """
__global__ void k(const float* x, float* y, long long n) {
    for (int u = 0; u < 4; ++u) { y[u] = x[u]; }
    for (int offset = 16; offset > 0; offset /= 2) { y[offset] = 0; }
    const long long lane = threadIdx.x % 32;
    const unsigned long long mask = 4 * sizeof(float) - 1;
    if (((unsigned long long)x & mask) == 0) y[lane] = 1;
}
"""
    assert lint_source(src) == []


# ------------------------------------------------------------------------------------------------
# where a GPU with the memory is present: the real thing, past 2^31 elements
@pytest.mark.gpu
def test_elementwise_kernels_past_2_31_elements_on_a_gpu():
    # 2^31 + 8 float32 elements (8 GiB each array, ~26 GiB in all): sigmoid writes 0.5 everywhere,
    # accumulate adds it twice; a 32-bit index would wrap and leave the tail untouched (or fault).
    import numpy as np
    from tests import backend_registry
    B, reason = backend_registry.entry("cuda").get()
    if B is None:
        pytest.skip(reason)
    n = 2 ** 31 + 8
    try:
        dst = B.zeros((n,), np.float32)
        src = B.sigmoid_forward(B.zeros((n,), np.float32))
    except Exception as exc:  # not enough device memory
        pytest.skip(f"cannot allocate 2 x {n} float32 on the GPU: {exc}")
    B.accumulate(dst, src)
    B.accumulate(dst, src)
    for lo in (0, 2 ** 31 - 4, n - 8):
        assert np.array_equal(B.to_numpy(dst[lo:lo + 8]), np.ones(8, np.float32)), lo
    assert B.all_finite(dst)
