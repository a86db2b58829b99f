"""In-step A/B of the NumPy backend's memory-bound primitives: this checkout's blocks.py and
pointwise.py against the ones at a git ref, inside real ResNet-20 training steps.

Micro-benchmarks of these primitives mislead: run alone, their inputs sit in L3 and their
fresh outputs reuse the same heap pages, where in a training step the inputs come from a
convolution and the allocator state is the step's.  Here one net trains; every step runs
either the old or the new functions (the order alternating round by round, an untimed
pause before each step), and each primitive call is timed where it happens.  Reported:
median per step of each (primitive, input shape), as ms per call, old vs new, and the
main thread's CPU time per call (time.thread_time: what the call cost the calling thread,
without the waiting; the second worker's CPU is not in it).  Because both sides run in one
process at the same moments, the ratio is meaningful on a shared machine where absolute
times are not; check that the machine is otherwise idle anyway.

  python benchmarks/ab_primitives_step.py --ref main --steps 10
  python benchmarks/ab_primitives_step.py --ref HEAD~1 --only batchnorm_backward add
"""
from __future__ import annotations

import argparse
import collections
import os
import statistics
import subprocess
import sys
import time
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import gpucnn  # noqa: E402
from gpucnn import backends  # noqa: E402
from gpucnn.backends.numpy import blocks, pointwise  # noqa: E402

PRIMS = {"batchnorm_stats": "blocks", "batchnorm_forward": "blocks",
         "batchnorm_backward": "blocks", "add": "blocks", "subsample_pad_forward": "blocks",
         "subsample_pad_backward": "blocks", "relu_forward": "pointwise",
         "relu_backward": "pointwise"}


def old_module(ref, name):
    """gpucnn/backends/numpy/NAME.py at ``ref`` as a module (relative imports made absolute:
    the rest of the backend is this checkout's)."""
    src = subprocess.run(["git", "show", f"{ref}:gpucnn/backends/numpy/{name}.py"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    src = src.replace("from . import", "from gpucnn.backends.numpy import")
    src = src.replace("from .", "from gpucnn.backends.numpy.")
    mod = types.ModuleType(f"old_{name}")
    exec(compile(src, f"{ref}:{name}.py", "exec"), mod.__dict__)
    return mod


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", default="main", help="git ref of the old side (default main)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps of each side")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--only", nargs="*", choices=sorted(PRIMS),
                    help="A/B these primitives only (the others run the new code on both sides)")
    args = ap.parse_args(argv)
    from bench_train import build_gpucnn
    old = {m: old_module(args.ref, m) for m in ("blocks", "pointwise")}
    new = {"blocks": blocks, "pointwise": pointwise}
    ab = set(args.only or PRIMS)
    gpucnn.manual_seed(0)
    model = build_gpucnn("resnet20")
    B = backends.backend_of(model.parameters()[0].data)
    side = [0]
    times, cpus, calls = (collections.defaultdict(float), collections.defaultdict(float),
                          collections.Counter())
    for name, mod in PRIMS.items():
        impl = (getattr(old[mod] if name in ab else new[mod], name), getattr(new[mod], name))

        def timed(*a, _n=name, _impl=impl, **k):
            t0, c0 = time.perf_counter(), time.thread_time()
            out = _impl[side[0]](*a, **k)
            key = (_n, tuple(a[0].shape))
            times[key] += time.perf_counter() - t0
            cpus[key] += time.thread_time() - c0
            calls[key] += 1
            return out
        setattr(B, name, timed)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, args.batch)
    loss_fn = gpucnn.CrossEntropyLoss()
    opt = gpucnn.SGD(model.parameters(), lr=0.01, momentum=0.9)
    per = [collections.defaultdict(list), collections.defaultdict(list)]
    per_cpu = [collections.defaultdict(list), collections.defaultdict(list)]
    walls = [[], []]
    ncalls = {}
    for i in range(args.steps + 2):                  # two untimed rounds first
        for s in ((0, 1) if i % 2 == 0 else (1, 0)):
            side[0] = s
            times.clear(), cpus.clear(), calls.clear()
            time.sleep(0.01)
            t0 = time.perf_counter()
            loss_fn(model(x), y)
            opt.zero_grad()
            model.backward(loss_fn.backward(), input_grad=False)
            opt.step()
            wall = time.perf_counter() - t0
            if i >= 2:
                walls[s].append(wall)
                for key, t in times.items():
                    per[s][key].append(t)
                    per_cpu[s][key].append(cpus[key])
                    ncalls[key] = calls[key]

    def med(v):
        return 1e3 * statistics.median(v)
    print(f"resnet20 batch {args.batch}, {args.steps} steps a side, old = {args.ref}: step "
          f"{med(walls[0]):.1f} ms old, {med(walls[1]):.1f} ms new; load {os.getloadavg()[0]:.2f}")
    print(f"{'primitive':24s} {'input shape':20s} {'calls':>5s}   ms/call old    new   "
          f"old/new   thread CPU ms/call old   new")
    totals = [0.0, 0.0]
    for key in sorted(per[0], key=lambda k: (list(PRIMS).index(k[0]), k[1])):
        if key[0] not in ab:
            continue
        c = ncalls[key]
        o, n = med(per[0][key]), med(per[1][key])
        totals[0] += o
        totals[1] += n
        print(f"{key[0]:24s} {str(key[1]):20s} {c:5d}   {o / c:11.2f} {n / c:6.2f}   {o / n:7.2f}"
              f"   {med(per_cpu[0][key]) / c:22.2f} {med(per_cpu[1][key]) / c:5.2f}")
    print(f"sum of the medians per step: old {totals[0]:.1f} ms, new {totals[1]:.1f} ms")


if __name__ == "__main__":
    main()
