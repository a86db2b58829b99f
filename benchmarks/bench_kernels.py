"""Bandwidth of gpucnn's memory-bound CUDA kernels, and convolution against PyTorch.

Part 1 (the issue's goal: >= 80 % of a device-to-device copy).  For pooling and the
activations on 64M float32 elements, each primitive's device time per call (calls back to
back, so host launch work overlaps the previous kernel) is turned into GB/s from the bytes
it must move (every input read once, every output written once; max pooling's int32 argmax
counted), printed next to a device-to-device copy of the same 64M floats timed the same way
in the same run.  The median time of a lone call between its own pair of events (which
includes the host's launch work) is printed beside it.

Part 2 (when PyTorch with CUDA is importable).  The convolution primitives on the layer
shapes of the CIFAR-style net, batch 256, against cuDNN (float32, TF32 off,
cudnn.benchmark on), interleaved, medians; with the largest relative difference of the
results, and the split of our forward into im2col / GEMM / layout kernels.

Usage (a GPU machine, from the checkout):
    PYTHONPATH=. python benchmarks/bench_kernels.py [--elements 67108864] [--reps 30]
        [--json out.json] [--no-conv]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time


def _timer(cp):
    """Median seconds of one call, each call between its own pair of events.

    An idle GPU waits for the host here, so the figure includes the host's launch work
    (allocations, argument packing) between the two events: a few to tens of
    microseconds, a visible share of a kernel that runs 0.2 ms."""
    def run(fn, reps, warmup=3):
        for _ in range(warmup):
            fn()
        cp.cuda.Device().synchronize()
        times = []
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        for _ in range(reps):
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(cp.cuda.get_elapsed_time(start, stop) / 1e3)
        return statistics.median(times)
    return run


def _stream_timer(cp):
    """Seconds per call of back-to-back calls: ``batches`` batches of ``per_batch`` calls, each
    batch between one pair of events, median over batches of the batch time / per_batch.

    The queue stays full, so host launch work overlaps the previous kernel and the figure is
    the device time per call (what a kernel costs inside a training step); used for the GB/s."""
    def run(fn, reps, warmup=3):
        for _ in range(warmup):
            fn()
        cp.cuda.Device().synchronize()
        per_batch = max(1, reps // 5)
        times = []
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        for _ in range(5):
            start.record()
            for _ in range(per_batch):
                fn()
            stop.record()
            stop.synchronize()
            times.append(cp.cuda.get_elapsed_time(start, stop) / 1e3 / per_batch)
        return statistics.median(times)
    return run


def bandwidth(B, cp, n, reps):
    """Rows (name, seconds per call back to back, GB/s from that, seconds of one lone call)."""
    import numpy as np
    streamed, lone = _stream_timer(cp), _timer(cp)

    def timed(fn, reps):
        return streamed(fn, reps), lone(fn, reps)
    f4 = 4
    side = int(round((n // 256) ** (1 / 3) / 2)) * 2 or 2          # (256, C, S, S) ~ n elements
    c = max(1, n // (256 * side * side))
    shape = (256, c, side, side)
    n = int(np.prod(shape))
    rng = cp.random.default_rng(0) if hasattr(cp.random, "default_rng") else None
    x = (rng.standard_normal(shape, dtype=cp.float32) if rng is not None
         else cp.random.standard_normal(shape).astype(cp.float32))
    dy = cp.ascontiguousarray(x[:, :, ::-1])
    dst = cp.empty_like(x)

    rows = []
    t_copy, l_copy = timed(lambda: cp.copyto(dst, x), reps)
    t_memcpy, l_memcpy = timed(lambda: cp.cuda.runtime.memcpyAsync(
        dst.data.ptr, x.data.ptr, n * f4, cp.cuda.runtime.memcpyDeviceToDevice,
        cp.cuda.get_current_stream().ptr), reps)
    copy_gbs = max(2 * n * f4 / t_copy, 2 * n * f4 / t_memcpy) / 1e9
    rows.append(("device-to-device copy", min(t_copy, t_memcpy), copy_gbs, min(l_copy, l_memcpy)))

    y_relu = B.relu_forward(x)
    y_sig = B.sigmoid_forward(x)
    y_tanh = B.tanh_forward(x)
    k = (2, 2)
    yp, am = B.maxpool2d_forward(x, k, k, (0, 0))
    dyp = cp.ascontiguousarray(yp[:, ::-1])
    quarter = yp.size
    zero_bias = cp.zeros((c,), cp.float32)
    cases = [
        ("relu_forward", lambda: B.relu_forward(x), 2 * n * f4),
        ("relu_backward", lambda: B.relu_backward(dy, y_relu), 3 * n * f4),
        ("sigmoid_forward", lambda: B.sigmoid_forward(x), 2 * n * f4),
        ("sigmoid_backward", lambda: B.sigmoid_backward(dy, y_sig), 3 * n * f4),
        ("tanh_forward", lambda: B.tanh_forward(x), 2 * n * f4),
        ("tanh_backward", lambda: B.tanh_backward(dy, y_tanh), 3 * n * f4),
        ("maxpool2d_forward 2x2", lambda: B.maxpool2d_forward(x, k, k, (0, 0)),
         n * f4 + quarter * (f4 + 4)),
        ("maxpool2d_backward 2x2", lambda: B.maxpool2d_backward(dyp, am, shape, k, k, (0, 0)),
         quarter * (f4 + 4) + n * f4),
        ("avgpool2d_forward 2x2", lambda: B.avgpool2d_forward(x, k, k, (0, 0)), n * f4 + quarter * f4),
        ("avgpool2d_backward 2x2", lambda: B.avgpool2d_backward(dyp, shape, k, k, (0, 0)),
         quarter * f4 + n * f4),
        ("maxpool2d_forward 3x3 s2 p1", lambda: B.maxpool2d_forward(x, (3, 3), (2, 2), (1, 1)),
         None),
        ("bias_forward (in place)", lambda: B.bias_forward(dst, zero_bias), 2 * n * f4),
        ("accumulate", lambda: B.accumulate(dst, x), 3 * n * f4),
    ]
    for name, fn, nbytes in cases:
        t, t_lone = timed(fn, reps)
        rows.append((name, t, nbytes / t / 1e9 if nbytes else None, t_lone))
    return shape, copy_gbs, rows


def conv_vs_torch(B, cp, reps, torch_device="cuda", shapes=None):
    import numpy as np
    try:
        import torch
        import torch.nn.functional as F
    except ImportError as exc:
        return None, f"PyTorch not importable ({exc})"
    if torch_device == "cuda":
        if not torch.cuda.is_available():
            return None, "PyTorch sees no CUDA device"
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        tsync = torch.cuda.synchronize
    else:                                   # only for trying the script out on a CPU
        def tsync():
            pass
    timed = _timer(cp)
    shapes = shapes or [  # (N, C, H, W, O, k, pad): the CIFAR-style net's convolutions at batch 256
        (256, 3, 32, 32, 32, 3, 1), (256, 32, 16, 16, 64, 3, 1), (256, 64, 8, 8, 128, 3, 1),
        (256, 32, 32, 32, 32, 3, 1), (256, 1, 28, 28, 6, 5, 2)]
    out = []
    for (n, c, h, w, o, k, p) in shapes:
        rng = np.random.default_rng(1)
        xh = rng.standard_normal((n, c, h, w)).astype(np.float32)
        wh = (rng.standard_normal((o, c, k, k)) * 0.1).astype(np.float32)
        x, wt = cp.asarray(xh), cp.asarray(wh)
        y = B.conv2d_forward(x, wt, (1, 1), (p, p))
        dyh = rng.standard_normal(y.shape).astype(np.float32)
        dy = cp.asarray(dyh)
        tx, tw, tdy = (torch.from_numpy(a).to(torch_device) for a in (xh, wh, dyh))
        ours = {
            "forward": lambda: B.conv2d_forward(x, wt, (1, 1), (p, p)),
            "backward_data": lambda: B.conv2d_backward_data(dy, wt, x.shape, (1, 1), (p, p)),
            "backward_weight": lambda: B.conv2d_backward_weight(dy, x, wt.shape, (1, 1), (p, p)),
        }
        theirs = {
            "forward": lambda: F.conv2d(tx, tw, None, 1, p),
            "backward_data": lambda: torch.nn.grad.conv2d_input(tx.shape, tw, tdy, 1, p),
            "backward_weight": lambda: torch.nn.grad.conv2d_weight(tx, tw.shape, tdy, 1, p),
        }
        for key in ours:
            a = cp.asnumpy(ours[key]()).astype(np.float64)
            b = theirs[key]().cpu().numpy().astype(np.float64)
            rel = float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))
            t_ours, t_torch = [], []
            for _ in range(3):   # interleave
                t_ours.append(timed(ours[key], max(3, reps // 3)))

                def torch_fn(fn=theirs[key]):
                    fn()
                for _ in range(2):
                    torch_fn()
                tsync()
                ts = []
                for _ in range(max(3, reps // 3)):
                    t0 = time.perf_counter()
                    torch_fn()
                    tsync()
                    ts.append(time.perf_counter() - t0)
                t_torch.append(statistics.median(ts))
            to, tt = statistics.median(t_ours), statistics.median(t_torch)
            k_dim = c * k * k
            flops = 2.0 * n * o * y.shape[2] * y.shape[3] * k_dim
            out.append(dict(shape=f"N{n} C{c} {h}x{w} -> O{o} k{k} p{p}", op=key, ours_ms=to * 1e3,
                            torch_ms=tt * 1e3, ratio=to / tt, gflops=flops / to / 1e9,
                            max_rel_diff=rel))
        # where the forward time goes
        nb = n
        dims = (nb, c, h, w, k, k, 1, 1, p, p, y.shape[2], y.shape[3])
        cols = B._im2col(x, dims)
        w2 = wt.reshape(o, -1)
        y_onl = cp.matmul(w2, cols)
        streamed = _stream_timer(cp)   # device time per call, back to back
        split = dict(im2col=streamed(lambda: B._im2col(x, dims), reps) * 1e3,
                     gemm=streamed(lambda: cp.matmul(w2, cols), reps) * 1e3,
                     swap=streamed(lambda: B._swap01(y_onl, o, nb, y.shape[2] * y.shape[3]), reps) * 1e3)
        out[-3]["forward_split_ms"] = split
    return out, None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--elements", type=int, default=64 * 2 ** 20)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--json", metavar="OUT")
    ap.add_argument("--no-conv", action="store_true")
    args = ap.parse_args(argv)

    from gpucnn import backends
    try:
        B = backends.get_backend("cuda")
    except backends.DeviceError as exc:
        print(f"bench_kernels: {exc}", file=sys.stderr)
        return 2
    import cupy as cp
    import numpy as np
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    info = dict(gpu=props["name"].decode() if isinstance(props["name"], bytes) else props["name"],
                cupy=cp.__version__, numpy=np.__version__, python=platform.python_version(),
                cuda_runtime=cp.cuda.runtime.runtimeGetVersion(),
                driver=cp.cuda.runtime.driverGetVersion(),
                date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    print("device:", ", ".join(f"{k} {v}" for k, v in info.items()))

    shape, copy_gbs, rows = bandwidth(B, cp, args.elements, args.reps)
    print(f"\nmemory-bound kernels, float32 input {shape} ({np.prod(shape) / 2**20:.0f}M elements):")
    print("  time ms = device time per call, calls back to back (median of 5 batches of "
          f"{max(1, args.reps // 5)}); GB/s and % of copy from it;")
    print(f"  1-call ms = median of {args.reps} lone calls, each between its own events (includes "
          "host launch work; the method of gpu_logs/2026-11-26-h100-run1.log)")
    print(f"  {'kernel':34} {'time ms':>9} {'GB/s':>8} {'% of copy':>10} {'1-call ms':>10}")
    result = dict(info=info, shape=list(shape), copy_gbs=copy_gbs, kernels=[])
    for name, t, gbs, t_lone in rows:
        pct = f"{100 * gbs / copy_gbs:9.0f}%" if gbs else "         -"
        print(f"  {name:34} {t * 1e3:9.3f} {gbs if gbs else float('nan'):8.0f} {pct} "
              f"{t_lone * 1e3:10.3f}")
        result["kernels"].append(dict(name=name, ms=t * 1e3, gbs=gbs, lone_call_ms=t_lone * 1e3,
                                      pct_of_copy=100 * gbs / copy_gbs if gbs else None))
    core = [r for r in result["kernels"][1:] if r["gbs"]]
    worst = min(core, key=lambda r: r["pct_of_copy"])
    print(f"  lowest: {worst['name']} at {worst['pct_of_copy']:.0f}% of the copy (goal >= 80%)")

    if not args.no_conv:
        conv, why = conv_vs_torch(B, cp, args.reps)
        if conv is None:
            print(f"\nconvolution vs PyTorch: skipped ({why})")
        else:
            print("\nconvolution, float32, ours (im2col + cuBLAS + col2im) vs cuDNN (TF32 off):")
            print(f"  {'shape':34} {'op':16} {'ours ms':>8} {'torch ms':>9} {'ratio':>6} "
                  f"{'GFLOP/s':>8} {'max rel diff':>12}")
            for r in conv:
                print(f"  {r['shape']:34} {r['op']:16} {r['ours_ms']:8.3f} {r['torch_ms']:9.3f} "
                      f"{r['ratio']:6.2f} {r['gflops']:8.0f} {r['max_rel_diff']:12.2e}")
                if "forward_split_ms" in r:
                    s = r["forward_split_ms"]
                    print(f"  {'':34} {'  fwd split':16} back to back: im2col {s['im2col']:.3f} ms, GEMM "
                          f"{s['gemm']:.3f} ms, NCHW swap {s['swap']:.3f} ms")
            result["conv"] = conv
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
