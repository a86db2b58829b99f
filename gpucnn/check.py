"""``gpucnn check``: does every backend primitive compute what it should, here?

``run_check(device)`` runs each case of ``gpucnn.parity_cases.CASES`` (every primitive of
``gpucnn.backends.PRIMITIVES`` on small, awkward shapes) in float32 and float64 and returns
one row per (primitive, case, dtype, comparison):

* ``cpu vs reference``: the NumPy backend against the case's reference (``gpucnn.reference``,
  plain loops in float64 written from the definitions; the bias and array-handling
  primitives against a direct float64 formula);
* ``cuda vs cpu``: when a GPU is usable, the CUDA backend against the NumPy backend on the
  same inputs.

Errors are normwise relative, ``max|got - ref| / max|ref|``, judged against
``gpucnn.tolerances``.  ``format_report(rows)`` renders the rows as a table.
"""
from __future__ import annotations

import numpy as np

from . import backends, tolerances
from .backends import DEVICES, PRIMITIVES
from .backends.checked import checked
from .parity_cases import CASES

DTYPES = (np.float32, np.float64)


def _host(B, values):
    out = []
    for v in values:
        if isinstance(v, (bool, float, int, np.generic)):
            out.append(np.asarray(v))
        else:
            out.append(np.array(B.to_numpy(v), copy=True))
    return tuple(out)


def _row(primitive, case, dt, compared, got, ref, backend_name):
    tol = tolerances.rtol(primitive, dt)
    worst_abs, worst_rel, ok = 0.0, 0.0, True
    if len(got) != len(ref):
        return dict(primitive=primitive, case=case, dtype=np.dtype(dt).name, compared=compared,
                    max_abs=float("inf"), rel=float("inf"), tol=tol, ok=False)
    for g, r in zip(got, ref):
        g, r = np.asarray(g), np.asarray(r)
        if r.dtype.kind in "iu" and g.dtype.kind in "iu":
            a, rel, good = tolerances.compare(g.astype(np.int64), r.astype(np.int64), tol)
        else:
            a, rel, good = tolerances.compare(g.astype(np.float64) if g.dtype.kind != "b" else g,
                                              r.astype(np.float64) if r.dtype.kind != "b" else r, tol)
        worst_abs, worst_rel, ok = max(worst_abs, a), max(worst_rel, rel), ok and good
    return dict(primitive=primitive, case=case, dtype=np.dtype(dt).name, compared=compared,
                max_abs=worst_abs, rel=worst_rel, tol=tol, ok=ok)


def run_check(device="auto", backend=None):
    """Check every primitive; return a list of rows (dicts).

    Rows with a ``note`` key (and no ``primitive``) carry a message, e.g. why no GPU is used.
    ``device``: "auto" (the GPU when usable), "cuda" (raises DeviceError without one), "cpu".
    ``backend``: compare this backend object against the NumPy backend instead of the CUDA
    one (the tests pass the CPU emulator of the CUDA kernels).
    """
    rows = []
    dev = (device or "auto").strip().lower()
    if dev not in DEVICES:
        raise ValueError(f"gpucnn check: unknown device {device!r}; expected {', '.join(DEVICES)}")
    cpu = backends.cpu_backend()
    gpu = None
    if backend is not None:
        gpu = checked(backend)
    elif dev == "cuda":
        gpu = backends.get_backend("cuda")   # raises DeviceError saying why
    elif dev == "auto":
        gpu, reason = backends._try_cuda()
        if gpu is None:
            rows.append({"note": f"no GPU used: {reason}. Checking the NumPy backend against "
                                 "gpucnn.reference only."})
    covered = {c.primitive for c in CASES}
    missing = [p for p in PRIMITIVES if p not in covered]
    if missing:
        rows.append({"note": f"primitives without a check: {', '.join(missing)}"})
    for c in CASES:
        primitive, case, run = c.primitive, c.ident, c.run
        for dt in DTYPES:
            expected = tuple(np.asarray(v) for v in c.reference(dt))
            try:
                got = _host(cpu, run(cpu, dt))
                rows.append(_row(primitive, case, dt, "cpu vs reference", got, expected, "cpu"))
            except Exception as exc:
                rows.append(dict(primitive=primitive, case=case, dtype=np.dtype(dt).name,
                                 compared="cpu vs reference", max_abs=float("nan"),
                                 rel=float("nan"), tol=tolerances.rtol(primitive, dt), ok=False,
                                 error=f"{type(exc).__name__}: {exc}"))
                continue
            if gpu is not None:
                try:
                    got_gpu = _host(gpu, run(gpu, dt))
                    rows.append(_row(primitive, case, dt, f"{gpu.name} vs cpu", got_gpu, got, gpu.name))
                except Exception as exc:
                    rows.append(dict(primitive=primitive, case=case, dtype=np.dtype(dt).name,
                                     compared=f"{gpu.name} vs cpu", max_abs=float("nan"),
                                     rel=float("nan"), tol=tolerances.rtol(primitive, dt),
                                     ok=False, error=f"{type(exc).__name__}: {exc}"))
    return rows


def format_report(rows):
    """A plain-text table of ``run_check``'s rows, notes first, a summary line last."""
    lines = [f"note: {r['note']}" for r in rows if "note" in r]
    checks = [r for r in rows if "note" not in r]
    pw = max([32] + [len(r["primitive"]) for r in checks])   # the longest primitive name
    head = f"{'primitive':{pw}} {'case':16} {'dtype':8} {'compared':18} {'max abs err':>12} {'rel err':>10} {'tol':>8}  result"
    lines += [head, "-" * len(head)]
    for r in checks:
        res = "ok" if r["ok"] else "FAIL"
        if r.get("error"):
            res += f" ({r['error']})"
        lines.append(f"{r['primitive']:{pw}} {r['case']:16} {r['dtype']:8} {r['compared']:18} "
                     f"{r['max_abs']:12.3g} {r['rel']:10.3g} {r['tol']:8.0e}  {res}")
    failed = sum(1 for r in checks if not r["ok"])
    lines.append(f"{len(checks)} checks, {failed} failed" + ("" if failed else ": all within tolerance"))
    return "\n".join(lines)
