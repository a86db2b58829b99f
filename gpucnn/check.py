"""``gpucnn check``: does every backend primitive compute what it should, here?

``run_check(device)`` runs each primitive of ``gpucnn.backends.PRIMITIVES`` in float32 and
float64 on small, awkward shapes and returns one row per (primitive, case, dtype, comparison):

* ``cpu vs reference``: the NumPy backend against ``gpucnn.reference`` (plain loops in
  float64 written from the definitions; ``bias_forward`` and the array-handling primitives
  against a direct float64 formula);
* ``cuda vs cpu``: when a GPU is usable, the CUDA backend against the NumPy backend on the
  same inputs.

Errors are normwise relative, ``max|got - ref| / max|ref|``, judged against
``gpucnn.tolerances``.  ``format_report(rows)`` renders the rows as a table.
"""
from __future__ import annotations

import numpy as np

from . import backends, reference, tolerances
from .backends import PRIMITIVES

DTYPES = (np.float32, np.float64)

_CONV = [("3x3-s1-p1", (2, 3, 6, 7), (4, 3, 3, 3), (1, 1), (1, 1)),
         ("rect-s2-p0", (1, 2, 7, 6), (3, 2, 3, 2), (2, 1), (0, 1))]
_POOL = [("2x2-s2", (2, 3, 6, 6), (2, 2), (2, 2), (0, 0)),
         ("3x3-s2-p1", (1, 2, 7, 5), (3, 3), (2, 2), (1, 1))]


def _rand(seed, shape, dtype, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def _out(h, k, s, p):
    return (h + 2 * p - k) // s + 1


def _host(B, values):
    out = []
    for v in values:
        if isinstance(v, (bool, float, int, np.generic)):
            out.append(np.asarray(v))
        else:
            out.append(np.array(B.to_numpy(v), copy=True))
    return tuple(out)


def _cases():
    """Yield (primitive, case, run(B, dt) -> tuple of results, ref(dt) -> tuple or None)."""
    for label, xs, ws, s, p in _CONV:
        n, c, h, w = xs
        o, _, kh, kw = ws
        ys = (n, o, _out(h, kh, s[0], p[0]), _out(w, kw, s[1], p[1]))
        x = lambda dt, xs=xs: _rand(1, xs, dt)
        wt = lambda dt, ws=ws: _rand(2, ws, dt, 0.5)
        dy = lambda dt, ys=ys: _rand(3, ys, dt)
        yield ("conv2d_forward", label,
               lambda B, dt, x=x, wt=wt, s=s, p=p: (B.conv2d_forward(B.asarray(x(dt)), B.asarray(wt(dt)), s, p),),
               lambda dt, x=x, wt=wt, s=s, p=p: (reference.conv2d(x(dt), wt(dt), None, s, p),))
        yield ("conv2d_backward_data", label,
               lambda B, dt, x=x, wt=wt, dy=dy, s=s, p=p: (B.conv2d_backward_data(B.asarray(dy(dt)), B.asarray(wt(dt)), x(dt).shape, s, p),),
               lambda dt, x=x, wt=wt, dy=dy, s=s, p=p: (reference.conv2d_backward(dy(dt), x(dt), wt(dt), s, p)[0],))
        yield ("conv2d_backward_weight", label,
               lambda B, dt, x=x, wt=wt, dy=dy, s=s, p=p: (B.conv2d_backward_weight(B.asarray(dy(dt)), B.asarray(x(dt)), wt(dt).shape, s, p),),
               lambda dt, x=x, wt=wt, dy=dy, s=s, p=p: (reference.conv2d_backward(dy(dt), x(dt), wt(dt), s, p)[1],))

    n, i, o = 5, 7, 3
    lx = lambda dt: _rand(4, (n, i), dt)
    lw = lambda dt: _rand(5, (o, i), dt)
    ldy = lambda dt: _rand(6, (n, o), dt)
    yield ("linear_forward", "5x7to3", lambda B, dt: (B.linear_forward(B.asarray(lx(dt)), B.asarray(lw(dt))),),
           lambda dt: (reference.linear(lx(dt), lw(dt)),))
    yield ("linear_backward_data", "5x7to3", lambda B, dt: (B.linear_backward_data(B.asarray(ldy(dt)), B.asarray(lw(dt))),),
           lambda dt: (reference.linear_backward(ldy(dt), lx(dt), lw(dt))[0],))
    yield ("linear_backward_weight", "5x7to3", lambda B, dt: (B.linear_backward_weight(B.asarray(ldy(dt)), B.asarray(lx(dt))),),
           lambda dt: (reference.linear_backward(ldy(dt), lx(dt), lw(dt))[1],))

    for label, shape in (("nchw", (2, 5, 3, 4)), ("2d", (4, 6))):
        y = lambda dt, shape=shape: _rand(7, shape, dt)
        b = lambda dt, shape=shape: _rand(8, (shape[1],), dt)
        bshape = (1, -1) + (1,) * (len(shape) - 2)
        yield ("bias_forward", label, lambda B, dt, y=y, b=b: (B.bias_forward(B.asarray(y(dt)), B.asarray(b(dt))),),
               lambda dt, y=y, b=b, bshape=bshape: (y(dt).astype(np.float64) + b(dt).astype(np.float64).reshape(bshape),))
    cx = lambda dt: _rand(9, (2, 3, 4, 5), dt)
    cw = lambda dt: _rand(10, (4, 3, 1, 1), dt)
    yield ("bias_backward", "nchw", lambda B, dt: (B.bias_backward(B.asarray(_rand(11, (2, 4, 4, 5), dt))),),
           lambda dt: (reference.conv2d_backward(_rand(11, (2, 4, 4, 5), dt), cx(dt), cw(dt))[2],))
    yield ("bias_backward", "2d", lambda B, dt: (B.bias_backward(B.asarray(ldy(dt))),),
           lambda dt: (reference.linear_backward(ldy(dt), lx(dt), lw(dt))[2],))

    for label, xs, k, s, p in _POOL:
        n, c, h, w = xs
        ys = (n, c, _out(h, k[0], s[0], p[0]), _out(w, k[1], s[1], p[1]))
        x = lambda dt, xs=xs: _rand(12, xs, dt)
        dy = lambda dt, ys=ys: _rand(13, ys, dt)
        yield ("maxpool2d_forward", label, lambda B, dt, x=x, k=k, s=s, p=p: B.maxpool2d_forward(B.asarray(x(dt)), k, s, p),
               lambda dt, x=x, k=k, s=s, p=p: reference.maxpool2d(x(dt), k, s, p))

        def run_mp_bwd(B, dt, x=x, dy=dy, k=k, s=s, p=p):
            _, am = B.maxpool2d_forward(B.asarray(x(dt)), k, s, p)
            return (B.maxpool2d_backward(B.asarray(dy(dt)), am, x(dt).shape, k, s, p),)
        yield ("maxpool2d_backward", label, run_mp_bwd,
               lambda dt, x=x, dy=dy, k=k, s=s, p=p: (reference.maxpool2d_backward(dy(dt), x(dt), k, s, p),))
        yield ("avgpool2d_forward", label, lambda B, dt, x=x, k=k, s=s, p=p: (B.avgpool2d_forward(B.asarray(x(dt)), k, s, p),),
               lambda dt, x=x, k=k, s=s, p=p: (reference.avgpool2d(x(dt), k, s, p),))
        yield ("avgpool2d_backward", label, lambda B, dt, xs=xs, dy=dy, k=k, s=s, p=p: (B.avgpool2d_backward(B.asarray(dy(dt)), xs, k, s, p),),
               lambda dt, xs=xs, dy=dy, k=k, s=s, p=p: (reference.avgpool2d_backward(dy(dt), xs, k, s, p),))

    ax = lambda dt: np.concatenate([_rand(14, (3, 20), dt, 3.0).ravel(),
                                    np.array([60.0, -60.0], dtype=dt)]).reshape(2, 31)
    ady = lambda dt: _rand(15, (2, 31), dt)
    for name in ("sigmoid", "relu", "tanh"):
        fwd, bwd = getattr(reference, name), getattr(reference, f"{name}_backward")
        yield (f"{name}_forward", "2x31", lambda B, dt, name=name: (getattr(B, f"{name}_forward")(B.asarray(ax(dt))),),
               lambda dt, fwd=fwd: (fwd(ax(dt)),))

        def run_bwd(B, dt, name=name):
            y = getattr(B, f"{name}_forward")(B.asarray(ax(dt)))
            return (getattr(B, f"{name}_backward")(B.asarray(ady(dt)), y),)
        yield (f"{name}_backward", "2x31", run_bwd, lambda dt, bwd=bwd: (bwd(ady(dt), ax(dt)),))

    z = lambda dt: _rand(16, (6, 4), dt, 3.0)
    labels = np.array([0, 3, 1, 1, 2, 3], dtype=np.int64)
    yield ("softmax_cross_entropy_forward", "6x4",
           lambda B, dt: (B.softmax_cross_entropy_forward(B.asarray(z(dt)), B.asarray(labels))[0],),
           lambda dt: (reference.softmax_cross_entropy(z(dt), labels)[0],))

    def run_ce_bwd(B, dt):
        _, probs = B.softmax_cross_entropy_forward(B.asarray(z(dt)), B.asarray(labels))
        return (B.softmax_cross_entropy_backward(probs, B.asarray(labels)),)
    yield ("softmax_cross_entropy_backward", "6x4", run_ce_bwd,
           lambda dt: (reference.softmax_cross_entropy(z(dt), labels)[1],))
    my = lambda dt: _rand(17, (3, 2, 2, 3), dt)
    mt = lambda dt: _rand(18, (3, 2, 2, 3), dt)
    yield ("mse_forward", "3x2x2x3", lambda B, dt: (B.mse_forward(B.asarray(my(dt)), B.asarray(mt(dt))),),
           lambda dt: (reference.mse(my(dt), mt(dt))[0],))
    yield ("mse_backward", "3x2x2x3", lambda B, dt: (B.mse_backward(B.asarray(my(dt)), B.asarray(mt(dt))),),
           lambda dt: (reference.mse(my(dt), mt(dt))[1],))

    pp = lambda dt: _rand(19, (4, 5), dt)
    pg = lambda dt: _rand(20, (4, 5), dt)
    pb = lambda dt: _rand(21, (4, 5), dt)
    for label, mom, wd, nest, first in (("plain", 0.0, 0.0, False, False),
                                        ("momentum-first", 0.9, 0.0, False, True),
                                        ("nesterov-wd", 0.9, 0.01, True, False)):
        def run_sgd(B, dt, mom=mom, wd=wd, nest=nest, first=first):
            param = B.asarray(pp(dt))
            buf = B.asarray(pb(dt)) if mom else None
            B.sgd_update(param, B.asarray(pg(dt)), buf, 0.1, mom, wd, nest, first)
            return (param,) if buf is None else (param, buf)

        def ref_sgd(dt, mom=mom, wd=wd, nest=nest, first=first):
            p, b = reference.sgd_step(pp(dt), pg(dt), None if first else pb(dt), 0.1, mom, wd, nest)
            return (p,) if b is None else (p, b)
        yield ("sgd_update", label, run_sgd, ref_sgd)
    am_ = lambda dt: _rand(22, (4, 5), dt, 0.1)
    av_ = lambda dt: np.abs(_rand(23, (4, 5), dt, 0.1))
    for label, step, wd in (("step1", 1, 0.0), ("step9-wd", 9, 0.01)):
        def run_adam(B, dt, step=step, wd=wd):
            param, m, v = B.asarray(pp(dt)), B.asarray(am_(dt)), B.asarray(av_(dt))
            B.adam_update(param, B.asarray(pg(dt)), m, v, step, 1e-2, 0.9, 0.999, 1e-8, wd)
            return param, m, v
        yield ("adam_update", label, run_adam,
               lambda dt, step=step, wd=wd: reference.adam_step(pp(dt), pg(dt), am_(dt), av_(dt), step, 1e-2, (0.9, 0.999), 1e-8, wd))

    # augmentation: (N, C, H, W), (OH, OW), (PH, PW), offsets and flips
    for label, xs, size, pad, top, left, flip in (
            ("pad2-flip", (3, 2, 5, 6), (5, 6), (2, 2), (0, 4, 2), (3, 0, 4), (1, 0, 1)),
            ("rect-crop", (2, 3, 4, 7), (3, 5), (1, 0), (2, 1), (2, 0), (0, 1))):
        ax_ = lambda dt, xs=xs: _rand(24, xs, dt)
        yield ("crop_flip", label,
               lambda B, dt, ax_=ax_, a=(top, left, flip, size, pad):
               (B.crop_flip(B.asarray(ax_(dt)), np.array(a[0]), np.array(a[1]), np.array(a[2]), a[3], a[4]),),
               lambda dt, ax_=ax_, a=(top, left, flip, size, pad): (reference.crop_flip(ax_(dt), *a),))
    nm, ns = (0.5, -0.25, 0.125), (0.25, 2.0, 0.5)
    yield ("channel_normalize", "nchw",
           lambda B, dt: (B.channel_normalize(B.asarray(_rand(25, (2, 3, 4, 5), dt)), nm, ns),),
           lambda dt: (reference.channel_normalize(_rand(25, (2, 3, 4, 5), dt), nm, ns),))

    yield ("asarray", "roundtrip", lambda B, dt: (B.to_numpy(B.asarray(pp(np.float64), dtype=dt)),),
           lambda dt: (pp(np.float64).astype(dt).astype(np.float64),))
    yield ("to_numpy", "values", lambda B, dt: (B.to_numpy(B.asarray(pg(dt))),), lambda dt: (pg(dt),))
    yield ("zeros", "3x4", lambda B, dt: (B.zeros((3, 4), dt),), lambda dt: (np.zeros((3, 4)),))

    def run_finite(B, dt):
        a = pp(dt)
        bad = a.copy()
        bad[3, 4] = np.nan
        return (np.array([B.all_finite(B.asarray(a)), B.all_finite(B.asarray(bad))]),)
    yield ("all_finite", "finite-nan", run_finite, lambda dt: (np.array([True, False]),))

    def run_acc(B, dt):
        d = B.asarray(pp(dt))
        B.accumulate(d, B.asarray(pg(dt)))
        return (d,)
    yield ("accumulate", "4x5", run_acc,
           lambda dt: (pp(dt).astype(np.float64) + pg(dt).astype(np.float64),))


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
    if dev not in ("auto", "cpu", "cuda"):
        raise ValueError(f"gpucnn check: unknown device {device!r}; expected auto, cpu or cuda")
    cpu = backends.cpu_backend()
    gpu = None
    if backend is not None:
        gpu = backend
    elif dev == "cuda":
        gpu = backends.get_backend("cuda")   # raises DeviceError saying why
    elif dev == "auto":
        gpu, reason = backends._try_cuda()
        if gpu is None:
            rows.append({"note": f"no GPU used: {reason}. Checking the NumPy backend against "
                                 "gpucnn.reference only."})
    cases = list(_cases())
    covered = {c[0] for c in cases}
    missing = [p for p in PRIMITIVES if p not in covered]
    if missing:
        rows.append({"note": f"primitives without a check: {', '.join(missing)}"})
    for primitive, case, run, ref in cases:
        for dt in DTYPES:
            expected = tuple(np.asarray(v) for v in ref(dt))
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
    head = f"{'primitive':32} {'case':16} {'dtype':8} {'compared':18} {'max abs err':>12} {'rel err':>10} {'tol':>8}  result"
    lines += [head, "-" * len(head)]
    for r in checks:
        res = "ok" if r["ok"] else "FAIL"
        if r.get("error"):
            res += f" ({r['error']})"
        lines.append(f"{r['primitive']:32} {r['case']:16} {r['dtype']:8} {r['compared']:18} "
                     f"{r['max_abs']:12.3g} {r['rel']:10.3g} {r['tol']:8.0e}  {res}")
    failed = sum(1 for r in checks if not r["ok"])
    lines.append(f"{len(checks)} checks, {failed} failed" + ("" if failed else ": all within tolerance"))
    return "\n".join(lines)


def main(argv=None):  # pragma: no cover - the CLI helper wires `gpucnn check` to this
    import argparse
    ap = argparse.ArgumentParser(prog="gpucnn check")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = ap.parse_args(argv)
    try:
        rows = run_check(args.device)
    except backends.DeviceError as exc:
        print(f"gpucnn check: {exc}")
        return 2
    print(format_report(rows))
    return 0 if all(r.get("ok", True) for r in rows) else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
