"""In-process A/B of the NumPy backend: this checkout's against the one at a git ref.

The old ``gpucnn/backends/numpy_backend.py`` (one file, before it became the package
``gpucnn/backends/numpy/``) is read with ``git show REF:PATH`` into a temporary
module; each backend drives its own copy of the same net (same initial weights)
through ``override_backend``.  Steps are interleaved, the order within a round
alternating, with an untimed pause before each (worker and BLAS threads of the
side that ran last spin for a while); the figure is the median after warm-up.
Because both run in one process, at the same moments, on the same machine, the
ratio new/old is meaningful even on a shared, noisy host where absolute times are not.

Every step's loss and the final parameters are compared bitwise between the two.

``--clock cpu`` times the process's CPU seconds instead of the wall clock: with
``GPUCNN_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1`` this is the least disturbed measure
when other jobs share the machine (it does not see waiting for a core).

Usage:
  python benchmarks/ab_numpy_backend.py          # against the last commit with the file
  python benchmarks/ab_numpy_backend.py --ref 6c5d71d --cases lenet:64 cifar:256  # any ref
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)  # run against the checkout
sys.path.insert(0, HERE)

import gpucnn  # noqa: E402
from gpucnn import backends  # noqa: E402
from bench_train import IN_SHAPE, build_gpucnn  # noqa: E402

OLD_PATH = "gpucnn/backends/numpy_backend.py"
STEPS = {("lenet", 64): 150, ("lenet", 256): 60, ("cifar", 64): 40, ("cifar", 256): 20}


def _git(*args):
    return subprocess.run(["git", "-C", ROOT, *args], check=True,
                          capture_output=True, text=True).stdout


def last_ref_with(path=OLD_PATH):
    """The parent of the commit that removed ``path``: the last one that still had it."""
    removed = _git("log", "-1", "--format=%H", "--diff-filter=D", "HEAD", "--", path).strip()
    if not removed:
        raise SystemExit(f"no commit in this history removes {path}; pass --ref")
    return removed + "^"


def load_old_backend(ref, path=OLD_PATH):
    """NumpyBackend from the file ``path`` at git ``ref``, as a module of its own."""
    src = _git("show", f"{ref}:{path}")
    tmp = tempfile.NamedTemporaryFile("w", suffix="_old_numpy_backend.py", delete=False)
    with tmp:
        tmp.write(src)
    spec = importlib.util.spec_from_file_location("old_numpy_backend", tmp.name)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    os.unlink(tmp.name)
    return _with_new_primitives(mod.NumpyBackend())


def _with_new_primitives(old):
    """Primitives added to the seam after ``old`` was written, built from its own (bias +
    activation from its bias_forward and <act>_forward), or else borrowed from today's NumPy
    backend (data gathers, which a training step on a fixed batch does not use)."""
    from gpucnn.backends import PRIMITIVES
    from gpucnn.backends.numpy import NumpyBackend
    new = NumpyBackend()
    for name in PRIMITIVES:
        if hasattr(old, name):
            continue
        if name == "bias_act_forward":
            def bias_act_forward(y, b, act, _old=old):
                y = _old.bias_forward(y, b)
                return y if act in (None, "identity") else getattr(_old, f"{act}_forward")(y)
            setattr(old, name, bias_act_forward)
        else:
            setattr(old, name, getattr(new, name))
    return old


class Side:
    """One backend with its own copy of the net, optimizer and batch."""

    def __init__(self, backend, net, state, x, y):
        self.backend = backend
        self.model = build_gpucnn(net)
        self.model.load_state_dict(state)
        self.loss_fn = gpucnn.CrossEntropyLoss()
        self.opt = gpucnn.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.x, self.y = x.copy(), y.copy()
        self.times, self.losses = [], []

    clock = staticmethod(time.perf_counter)

    def step(self, timed=True):
        with backends.override_backend(self.backend):
            t0 = self.clock()
            out = self.model(self.x)
            loss = self.loss_fn(out, self.y)
            self.model.zero_grad()
            self.model.backward(self.loss_fn.backward(), input_grad=False)
            self.opt.step()
            dt = self.clock() - t0
        self.losses.append(float(loss))
        if timed:
            self.times.append(dt)


def run_case(net, batch, old, new, steps, warmup, pause):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch,) + IN_SHAPE[net], dtype=np.float32)
    y = rng.integers(0, 10, batch).astype(np.int64)
    gpucnn.manual_seed(0)
    state = build_gpucnn(net).state_dict()
    sides = {"old": Side(old, net, state, x, y), "new": Side(new, net, state, x, y)}
    for r in range(warmup + steps):
        order = ("old", "new") if r % 2 == 0 else ("new", "old")
        for name in order:
            time.sleep(pause)
            sides[name].step(timed=r >= warmup)
    a, b = sides["old"], sides["new"]
    same = a.losses == b.losses and all(
        np.array_equal(np.asarray(p.data), np.asarray(q.data))
        for p, q in zip(a.model.parameters(), b.model.parameters()))
    t_old, t_new = (statistics.median(s.times) * 1e3 for s in (a, b))
    return t_old, t_new, same


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", default=None,
                    help="git ref holding the old numpy_backend.py (default: the parent of "
                         "the commit that removed it)")
    ap.add_argument("--cases", nargs="+", default=["lenet:64", "lenet:256", "cifar:64", "cifar:256"])
    ap.add_argument("--steps", type=int, default=None, help="timed rounds (default: per case)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--pause-ms", type=float, default=10.0)
    ap.add_argument("--checked", action="store_true",
                    help="run the new side through the seam's argument checks (backends.checked)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: time.perf_counter; cpu: time.process_time (this process's CPU time)")
    args = ap.parse_args(argv)
    if args.clock == "cpu":
        Side.clock = staticmethod(time.process_time)
    ref = args.ref or last_ref_with()
    old = load_old_backend(ref)
    new = backends.cpu_backend()
    if not args.checked:          # the backend alone, as the old file ran (no seam checks)
        new = getattr(new, "unchecked", new)
    print(f"old: {ref}:{OLD_PATH}   new: {type(new).__module__}.{type(new).__name__} (this checkout)")
    print(f"threads: {new.threads}, clock: {args.clock}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"{'case':<11}{'steps':>6}{'old ms':>9}{'new ms':>9}{'new/old':>9}  bitwise")
    for case in args.cases:
        net, batch = case.split(":")
        batch = int(batch)
        steps = args.steps or STEPS.get((net, batch), 40)
        t_old, t_new, same = run_case(net, batch, old, new, steps, args.warmup,
                                      args.pause_ms / 1e3)
        print(f"{case:<11}{steps:>6}{t_old:>9.2f}{t_new:>9.2f}{t_new / t_old:>9.3f}  "
              f"{'identical' if same else 'DIFFERENT'}", flush=True)


if __name__ == "__main__":
    main()
