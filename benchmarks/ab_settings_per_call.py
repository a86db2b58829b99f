"""Per-call A/B of NumPy-backend settings inside real training steps.

Each call of the chosen primitives, as a training step makes it, runs once under every
variant, back to back (the order alternating from call to call), and each run is timed;
the step goes on with the last result.  The variants see the same inputs within
milliseconds of each other, so the machine's drift (±10 % within minutes on a shared
host) cancels out where whole-step A/Bs drown in it.  The price: every run after the
first finds its inputs in cache, which flatters memory-bound work a little, alike for all.

A variant is a list of module settings, ``module:ATTRIBUTE=python-expression``:

  python benchmarks/ab_settings_per_call.py --prims conv2d_backward \\
      --variant pair= --variant split=gpucnn.backends.numpy.conv:PAIR=False
  python benchmarks/ab_settings_per_call.py --prims conv2d_forward \\
      --variant 1M= --variant 2M=gpucnn.backends.numpy.conv:FORWARD_CHUNK_BYTES=2<<20

Prints ms per step for each variant, in total and per (primitive, input shape).
"""
from __future__ import annotations

import argparse
import collections
import importlib
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import gpucnn  # noqa: E402
from gpucnn import backends  # noqa: E402
from bench_train import IN_SHAPE, GpucnnRunner  # noqa: E402


def parse_variant(text):
    """'name=mod:ATTR=expr,mod:ATTR=expr' -> (name, [(module, attr, value)])."""
    name, _, rest = text.partition("=")
    settings = []
    for item in filter(None, rest.split(",")):
        target, _, expr = item.partition("=")
        mod, _, attr = target.partition(":")
        settings.append((importlib.import_module(mod), attr, eval(expr)))   # noqa: S307
    return name, settings


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prims", required=True, help="comma-separated backend primitives")
    ap.add_argument("--variant", action="append", required=True,
                    help="name=module:ATTR=expr[,...] (nothing after '=': the defaults)")
    ap.add_argument("--net", default="resnet20", choices=sorted(IN_SHAPE))
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args(argv)
    variants = dict(parse_variant(v) for v in args.variant)
    defaults = {(m, a): getattr(m, a) for s in variants.values() for m, a, _ in s}
    from gpucnn.backends.numpy import conv

    def use(name):
        for (m, a), v in defaults.items():
            setattr(m, a, v)
        for m, a, v in variants[name]:
            setattr(m, a, v)
        conv._plan.cache_clear()                # plans read some settings when built

    B = backends.cpu_backend()
    totals = collections.defaultdict(lambda: collections.defaultdict(float))
    names, calls = list(variants), [0]
    for prim in args.prims.split(","):
        inner = getattr(B, prim)

        def timed(*a, _inner=inner, _prim=prim, **kw):
            calls[0] += 1
            out = None
            for name in (names if calls[0] % 2 else names[::-1]):
                use(name)
                t = time.perf_counter()
                out = _inner(*a, **kw)
                totals[name][(_prim, tuple(a[0].shape[1:]))] += time.perf_counter() - t
            return out
        setattr(B, prim, timed)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch,) + IN_SHAPE[args.net]).astype(np.float32)
    y = rng.integers(0, 10, args.batch)
    gpucnn.manual_seed(0)
    runner = GpucnnRunner(args.net, args.batch, B, x, y, lambda: None)
    runner.step()                               # warm-up: plans, scratch, pools
    totals.clear()
    for _ in range(args.steps):
        runner.step()
    for name in names:
        per = totals[name]
        print(f"{name:10s} {1e3 * sum(per.values()) / args.steps:8.2f} ms per step")
        for key in sorted(per):
            print(f"    {key[0]:24s} {str(key[1]):14s} {1e3 * per[key] / args.steps:8.2f}")


if __name__ == "__main__":
    main()
