"""Read the C signature of every ``__global__`` kernel from a ``.cu`` source.

Only what the emulator needs: the kernel's name, its template parameters, and for
each parameter its name, spelled type, pointer depth, constness of the pointee and
the NumPy dtype of its (base) type once template arguments are substituted.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

# C/C++ scalar types the kernels may take -> NumPy dtype (LP64, as both Linux hosts and CUDA).
C_TYPES = {
    "float": "float32", "double": "float64",
    "bool": "bool",
    "char": "int8", "signed char": "int8", "int8_t": "int8",
    "unsigned char": "uint8", "uint8_t": "uint8",
    "short": "int16", "short int": "int16", "signed short": "int16", "int16_t": "int16",
    "unsigned short": "uint16", "unsigned short int": "uint16", "uint16_t": "uint16",
    "int": "int32", "signed": "int32", "signed int": "int32", "int32_t": "int32",
    "unsigned": "uint32", "unsigned int": "uint32", "uint32_t": "uint32",
    "long": "int64", "long int": "int64", "signed long": "int64",
    "long long": "int64", "long long int": "int64", "signed long long": "int64", "int64_t": "int64",
    "ptrdiff_t": "int64",
    "unsigned long": "uint64", "unsigned long int": "uint64",
    "unsigned long long": "uint64", "unsigned long long int": "uint64", "uint64_t": "uint64",
    "size_t": "uint64",
}

_QUALIFIERS = {"const", "volatile", "__restrict__", "__restrict", "restrict"}


class SignatureError(ValueError):
    """The source or a name expression could not be read."""


@dataclass
class Param:
    name: str
    spelled: str            # as written, e.g. "const T* __restrict__"
    base: str               # base type after template substitution, e.g. "float"
    pointer: int            # pointer depth
    const_pointee: bool     # a pointer to const: the kernel only reads through it
    dtype: np.dtype | None  # NumPy dtype of the base type (None: not a plain scalar type)

    @property
    def ctype(self) -> str:
        return ("const " if self.const_pointee else "") + self.base + "*" * self.pointer


@dataclass
class KernelDecl:
    name: str
    template_params: list = field(default_factory=list)   # [(kind, name)], kind "typename" | type
    params_text: list = field(default_factory=list)       # raw parameter declarations


def strip_comments(src: str) -> str:
    """Remove // and /* */ comments (keeping newlines, so line numbers survive)."""
    out, i, n = [], 0, len(src)
    while i < n:
        if src.startswith("//", i):
            j = src.find("\n", i)
            i = n if j < 0 else j
        elif src.startswith("/*", i):
            j = src.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append("\n" * src.count("\n", i, j))
            i = j
        elif src[i] in "\"'":
            q = src[i]
            j = i + 1
            while j < n and src[j] != q:
                j += 2 if src[j] == "\\" else 1
            out.append(src[i:j + 1])
            i = j + 1
        else:
            out.append(src[i])
            i += 1
    return "".join(out)


def split_top_level(text: str, sep: str = ",") -> list:
    """Split at ``sep`` outside (), <>, [] and {}."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "(<[{":
            depth += 1
        elif ch in ")>]}":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        parts.append("".join(cur))
    return [p.strip() for p in parts]


_KERNEL_RE = re.compile(
    r"(?:template\s*<(?P<tparams>[^<>]*(?:<[^<>]*>[^<>]*)*)>\s*)?"
    r"(?:extern\s+\"C\"\s+)?(?:static\s+)?__global__\s+"
    r"(?:__launch_bounds__\s*\([^)]*\)\s*)?void\s+"
    r"(?:__launch_bounds__\s*\([^)]*\)\s*)?(?P<name>\w+)\s*\(")


def _matching_paren(text: str, open_idx: int) -> int:
    depth = 0
    for i in range(open_idx, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    raise SignatureError("unbalanced parentheses in a kernel's parameter list")


def find_kernels(src: str) -> dict:
    """name -> KernelDecl for every ``__global__`` function of ``src`` (first declaration wins)."""
    code = strip_comments(src)
    found = {}
    for m in _KERNEL_RE.finditer(code):
        open_idx = m.end() - 1
        close = _matching_paren(code, open_idx)
        params = [p for p in split_top_level(code[open_idx + 1:close]) if p and p != "void"]
        tparams = []
        if m.group("tparams") is not None:
            for tp in split_top_level(m.group("tparams")):
                tp = tp.split("=")[0].strip()
                words = tp.split()
                if len(words) < 2:
                    raise SignatureError(f"cannot read template parameter {tp!r} of {m.group('name')}")
                tparams.append((" ".join(words[:-1]), words[-1]))
        found.setdefault(m.group("name"), KernelDecl(m.group("name"), tparams, params))
    return found


def parse_name_expression(expr: str):
    """``"im2col<float>"`` -> ("im2col", ["float"]); ``"k"`` -> ("k", [])."""
    expr = expr.strip()
    m = re.fullmatch(r"(\w+)\s*(?:<(.*)>)?", expr, re.S)
    if not m:
        raise SignatureError(f"cannot read the name expression {expr!r}")
    args = split_top_level(m.group(2)) if m.group(2) is not None else []
    return m.group(1), [" ".join(a.split()) for a in args]


def _param(decl: str, subst: dict, kernel: str) -> Param:
    text = decl.split("=")[0]  # drop a default argument
    if "[" in text or "&" in text or "(" in text:
        raise SignatureError(f"kernel {kernel}: parameter {decl!r} is not a plain scalar or pointer")
    tokens = re.findall(r"\w+|\*", text)
    words = [t for t in tokens if t != "*"]
    if len(words) < 2:
        raise SignatureError(f"kernel {kernel}: parameter {decl!r} has no name")
    name = words[-1]
    # const before the first '*' (or after the base type, before '*') qualifies the pointee
    type_tokens = tokens[:max(i for i, t in enumerate(tokens) if t == name)]
    pointer = type_tokens.count("*")
    first_star = type_tokens.index("*") if pointer else len(type_tokens)
    const_pointee = "const" in type_tokens[:first_star]
    base_words = [subst.get(t, t) for t in type_tokens if t != "*" and t not in _QUALIFIERS]
    base = " ".join(" ".join(base_words).split())
    dtype = C_TYPES.get(base)
    return Param(name=name, spelled=" ".join(type_tokens).replace(" *", "*"), base=base,
                 pointer=pointer, const_pointee=const_pointee,
                 dtype=np.dtype(dtype) if dtype else None)


def kernel_signature(src: str, name_expression: str) -> list:
    """The parameters (list of Param) of the instantiation ``name_expression`` in ``src``."""
    name, targs = parse_name_expression(name_expression)
    kernels = find_kernels(src)
    if name not in kernels:
        raise SignatureError(
            f"no __global__ kernel named {name!r} in the source (kernels: {', '.join(sorted(kernels)) or 'none'})")
    decl = kernels[name]
    if len(targs) != len(decl.template_params):
        raise SignatureError(
            f"{name_expression!r}: kernel {name} takes {len(decl.template_params)} template "
            f"argument(s), the name expression gives {len(targs)}")
    subst = {pname: arg for (_kind, pname), arg in zip(decl.template_params, targs)}
    return [_param(p, subst, name_expression) for p in decl.params_text]
