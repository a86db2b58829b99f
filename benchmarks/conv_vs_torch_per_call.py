"""Each convolution of a training step, gpucnn's NumPy primitive against PyTorch's CPU op on
the same arrays, back to back (order alternating), inside real gpucnn training steps.

Where a whole-step ratio says how far behind, this says which layer: per (pass, C_in, C_out,
stride) the time per step of ``conv2d_forward`` vs ``torch.nn.functional.conv2d`` and of
``conv2d_backward`` vs ``torch.ops.aten.convolution_backward`` (input and weight gradients,
as our primitive).  PyTorch's ops called one by one on fresh NCHW tensors may take longer
than inside its own training step (see benchmarks/RESULTS.md); the layer-to-layer pattern is
the point.  Needs torch (CPU build).

  python benchmarks/conv_vs_torch_per_call.py --steps 6
"""
from __future__ import annotations

import argparse
import collections
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--net", default="resnet20", choices=sorted(IN_SHAPE))
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    B = backends.cpu_backend()
    totals = collections.defaultdict(lambda: collections.defaultdict(float))
    calls = [0]

    def race(key, ours, theirs):
        calls[0] += 1
        out = None
        pair = [("gpucnn", ours), ("torch", theirs)]
        for name, fn in (pair if calls[0] % 2 else pair[::-1]):
            t = time.perf_counter()
            r = fn()
            totals[name][key] += time.perf_counter() - t
            if name == "gpucnn":
                out = r
        return out

    forward, backward = B.conv2d_forward, B.conv2d_backward

    def conv_forward(x, w, stride, padding):
        tx, tw = torch.from_numpy(x), torch.from_numpy(w)
        return race(("forward", x.shape[1], w.shape[0], stride[0]),
                    lambda: forward(x, w, stride, padding),
                    lambda: torch.nn.functional.conv2d(tx, tw, stride=stride, padding=padding))

    def conv_backward(dy, x, w, stride, padding, input_grad):
        t = [torch.from_numpy(a) for a in (dy, x, w)]
        return race(("backward", x.shape[1], w.shape[0], stride[0]),
                    lambda: backward(dy, x, w, stride, padding, input_grad),
                    lambda: torch.ops.aten.convolution_backward(
                        *t, None, list(stride), list(padding), [1, 1], False, [0, 0], 1,
                        [bool(input_grad), True, False]))
    B.conv2d_forward, B.conv2d_backward = conv_forward, conv_backward
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch,) + IN_SHAPE[args.net]).astype(np.float32)
    y = rng.integers(0, 10, args.batch)
    gpucnn.manual_seed(0)
    runner = GpucnnRunner(args.net, args.batch, B, x, y, lambda: None)
    runner.step()
    totals.clear()
    for _ in range(args.steps):
        runner.step()
    print("pass      C_in C_out stride   gpucnn ms  torch ms  ratio   (per step)")
    for key in sorted(totals["gpucnn"]):
        a, b = (1e3 * totals[n][key] / args.steps for n in ("gpucnn", "torch"))
        print(f"{key[0]:9s} {key[1]:4d} {key[2]:5d} {key[3]:6d}  {a:9.2f} {b:9.2f}  {a / b:5.2f}")
    a, b = (1e3 * sum(totals[n].values()) / args.steps for n in ("gpucnn", "torch"))
    print(f"all convolutions          {a:9.2f} {b:9.2f}  {a / b:5.2f}")


if __name__ == "__main__":
    main()
