"""Where a training step's time goes, primitive by primitive (wall clock, worker threads
included), for one of bench_train's nets; with --torch, PyTorch's step for the same net
under torch.profiler next to it.

  python benchmarks/profile_primitives.py --net resnet20 --batch 128 --steps 5

Each backend primitive is wrapped in a timer (the primitive's own call, its worker threads
included) and grouped by name and input shape; the table is sorted by total time.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gpucnn  # noqa: E402
from gpucnn import backends  # noqa: E402
from bench_train import IN_SHAPE, build_gpucnn  # noqa: E402

PRIMS = ("conv2d_forward", "conv2d_backward_data", "conv2d_backward_weight", "conv2d_backward", "batchnorm_stats",
         "batchnorm_forward", "batchnorm_backward", "batchnorm_update_running", "relu_forward",
         "relu_backward", "add", "subsample_pad_forward", "subsample_pad_backward",
         "avgpool2d_forward", "avgpool2d_backward", "linear_forward", "linear_backward_data",
         "linear_backward_weight", "bias_forward", "bias_backward", "sgd_update",
         "softmax_cross_entropy_forward", "softmax_cross_entropy_backward", "all_finite",
         "accumulate", "maxpool2d_forward", "maxpool2d_backward")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--net", default="resnet20", choices=sorted(IN_SHAPE))
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args(argv)
    gpucnn.manual_seed(0)
    model = build_gpucnn(args.net)
    B = backends.backend_of(model.parameters()[0].data)
    times = collections.defaultdict(float)
    calls = collections.Counter()
    for name in PRIMS:
        f = getattr(B, name, None)
        if f is None:
            continue

        def timed(*a, _f=f, _n=name, **k):
            t0 = time.perf_counter()
            out = _f(*a, **k)
            key = (_n, tuple(a[0].shape) if hasattr(a[0], "shape") else ())
            times[key] += time.perf_counter() - t0
            calls[key] += 1
            return out
        setattr(B, name, timed)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch,) + IN_SHAPE[args.net]).astype(np.float32)
    y = rng.integers(0, 10, args.batch)
    loss_fn = gpucnn.CrossEntropyLoss()
    opt = gpucnn.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        loss_fn(model(x), y)
        opt.zero_grad()
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()
    for _ in range(2):
        step()
    times.clear()
    calls.clear()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    wall = (time.perf_counter() - t0) / args.steps
    total = sum(times.values()) / args.steps
    print(f"{args.net} batch {args.batch}: {1e3 * wall:.1f} ms/step, {1e3 * total:.1f} ms in "
          f"primitives, load {os.getloadavg()[0]:.2f}")
    by_name = collections.defaultdict(float)
    for (n, _), t in times.items():
        by_name[n] += t
    for n, t in sorted(by_name.items(), key=lambda kv: -kv[1]):
        print(f"  {n:32s} {1e3 * t / args.steps:8.1f} ms  {100 * t / args.steps / wall:5.1f}%")
    print("by shape:")
    for (n, shp), t in sorted(times.items(), key=lambda kv: -kv[1])[:25]:
        print(f"  {n:32s} {str(shp):22s} x{calls[(n, shp)] // args.steps:<3d} "
              f"{1e3 * t / args.steps:8.1f} ms")


if __name__ == "__main__":
    main()
