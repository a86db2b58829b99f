"""Profile the host side of gpucnn training steps (where Python time goes).

  python benchmarks/profile_step.py --device cuda --net cifar --batch 256 --steps 50

Prints the step time and cProfile's top functions by own time (tottime).  On a GPU
the step is mostly bounded by host work (kernel launches, allocations, syncs), so
this is the profile to read before optimizing the CUDA backend's launch path.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gpucnn  # noqa: E402
from bench_train import IN_SHAPE, build_gpucnn  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--net", default="cifar", choices=sorted(IN_SHAPE))
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--top", type=int, default=35)
    args = ap.parse_args(argv)
    gpucnn.manual_seed(0)
    model = build_gpucnn(args.net).to(args.device)
    backend = gpucnn.backends.backend_of(model.parameters()[0].data)
    rng = np.random.default_rng(0)
    x = backend.asarray(rng.standard_normal((args.batch,) + IN_SHAPE[args.net]).astype(np.float32))
    y = backend.asarray(rng.integers(0, 10, args.batch))
    loss_fn = gpucnn.CrossEntropyLoss()
    opt = gpucnn.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def sync():
        if backend.name == "cuda":
            import cupy
            cupy.cuda.Device().synchronize()

    def steps(n):
        for _ in range(n):
            loss_fn(model(x), y)
            opt.zero_grad()
            model.backward(loss_fn.backward(), input_grad=False)
            opt.step()
        sync()

    steps(5)
    t0 = time.perf_counter()
    steps(args.steps)
    dt = (time.perf_counter() - t0) / args.steps
    print(f"{args.net} batch {args.batch} on {backend.name}: {dt * 1e3:.3f} ms/step (mean of {args.steps})")
    prof = cProfile.Profile()
    prof.enable()
    steps(args.steps)
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
