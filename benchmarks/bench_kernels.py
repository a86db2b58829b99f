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

Part 3 (--igemm; PyTorch optional).  The implicit-GEMM convolution (kernels/conv2d_igemm.cu)
per layer of LeNet-5, the CIFAR-style net and ResNet-20 at batch 128 (--batch): forward,
backward data, backward weight, each timed back to back (device time per call) as ours
(implicit GEMM), ours through im2col + cuBLAS (conv_algorithm="im2col"), cuDNN with TF32 off,
and for the forward also our TF32 kernel (allow_tf32) and cuDNN with TF32 on (compute
capability >= 8.0).  Reported as TFLOP/s (2*N*O*OH*OW*C*KH*KW per op) and as a percentage of
the device's nominal peak: FP32 = SMs x FP32 lanes per SM x 2 x boost clock, TF32 tensor =
SMs x dense TF32 FLOP per SM per clock x clock (per-architecture tables below; override with
--peak-fp32 / --peak-tf32 in TFLOP/s).

Usage (a GPU machine, from the checkout):
    PYTHONPATH=. python benchmarks/bench_kernels.py [--elements 67108864] [--reps 30]
        [--json out.json] [--no-conv] [--igemm [--igemm-only] [--batch 128]]
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


#: (name, C, H, W, O, k, stride, pad): the convolutions of the three models (batch separate)
IGEMM_LAYERS = [
    ("lenet.conv1", 1, 28, 28, 6, 5, 1, 2), ("lenet.conv2", 6, 14, 14, 16, 5, 1, 0),
    ("cifar.conv1", 3, 32, 32, 32, 3, 1, 1), ("cifar.conv2", 32, 32, 32, 32, 3, 1, 1),
    ("cifar.conv3", 32, 16, 16, 64, 3, 1, 1), ("cifar.conv4", 64, 16, 16, 64, 3, 1, 1),
    ("resnet20.stem", 3, 32, 32, 16, 3, 1, 1), ("resnet20.s1", 16, 32, 32, 16, 3, 1, 1),
    ("resnet20.s2.down", 16, 32, 32, 32, 3, 2, 1), ("resnet20.s2", 32, 16, 16, 32, 3, 1, 1),
    ("resnet20.s2.short1x1", 16, 32, 32, 32, 1, 2, 0),
    ("resnet20.s3.down", 32, 16, 16, 64, 3, 2, 1), ("resnet20.s3", 64, 8, 8, 64, 3, 1, 1),
]

#: FP32 lanes per SM, and dense TF32 tensor-core FLOP per SM per clock, by compute capability
_FP32_LANES = {70: 64, 75: 64, 80: 64, 86: 128, 87: 128, 89: 128, 90: 128, 100: 128, 120: 128}
_TF32_FLOP_PER_SM_CLK = {80: 1024, 86: 512, 87: 512, 89: 512, 90: 2048, 100: 2048, 120: 512}


def device_peaks(cp, peak_fp32=None, peak_tf32=None):
    """(FP32 TFLOP/s, TF32 TFLOP/s or None, compute capability, note) of the current device."""
    dev = cp.cuda.Device()
    cc = int(dev.compute_capability)
    props = cp.cuda.runtime.getDeviceProperties(dev.id)
    sms = int(props.get("multiProcessorCount", 0))
    clock_khz = int(props.get("clockRate", 0) or 0)             # gone from CUDA 13's struct:
    if not clock_khz:                                          # ask the attribute instead
        try:
            clock_khz = int(dev.attributes.get("ClockRate", 0))
        except Exception:
            clock_khz = 0
    clock_ghz = clock_khz / 1e6                                # kHz -> GHz (boost clock)
    note = f"{sms} SMs at {clock_ghz:.2f} GHz, compute capability {cc / 10:.1f}"
    fp32 = peak_fp32 or (sms * _FP32_LANES.get(cc, 128) * 2 * clock_ghz / 1e3 if clock_ghz else None)
    tf32 = peak_tf32 or (sms * _TF32_FLOP_PER_SM_CLK[cc] * clock_ghz / 1e3
                         if cc in _TF32_FLOP_PER_SM_CLK and clock_ghz else None)
    return fp32, tf32, cc, note


def igemm_layers(B, cp, reps, batch=128, peak_fp32=None, peak_tf32=None, layers=None):
    """Rows of the Part 3 table (see the module docstring), and the peaks used."""
    import numpy as np
    import gpucnn.backends.cuda as cuda_flags
    fp32_peak, tf32_peak, cc, note = device_peaks(cp, peak_fp32, peak_tf32)
    try:
        import torch
        import torch.nn.functional as F
        if not torch.cuda.is_available():
            torch = None
    except ImportError:
        torch = None
    streamed = _stream_timer(cp)

    def torch_time(fn, tf32):
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        for _ in range(3):
            fn()
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        per = max(1, reps // 5)
        for _ in range(5):
            start.record()
            for _ in range(per):
                fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop) / 1e3 / per)
        return statistics.median(times)

    rows = []
    saved_algo, saved_tf32 = B.conv_algorithm, cuda_flags.allow_tf32
    try:
        for (name, c, h, w, o, k, st, p) in layers or IGEMM_LAYERS:
            rng = np.random.default_rng(2)
            xh = rng.standard_normal((batch, c, h, w)).astype(np.float32)
            wh = (rng.standard_normal((o, c, k, k)) * 0.1).astype(np.float32)
            x, wt = cp.asarray(xh), cp.asarray(wh)
            cuda_flags.allow_tf32 = False
            B.conv_algorithm = "igemm"
            y = B.conv2d_forward(x, wt, (st, st), (p, p))
            dy = cp.asarray(rng.standard_normal(y.shape).astype(np.float32))
            flops = 2.0 * batch * o * y.shape[2] * y.shape[3] * c * k * k
            ops = {
                "forward": lambda: B.conv2d_forward(x, wt, (st, st), (p, p)),
                "backward_data": lambda: B.conv2d_backward_data(dy, wt, x.shape, (st, st), (p, p)),
                "backward_weight": lambda: B.conv2d_backward_weight(dy, x, wt.shape, (st, st), (p, p)),
            }
            if torch is not None:
                tx, tw, tdy = (torch.from_numpy(cp.asnumpy(a)).cuda() for a in (x, wt, dy))
                theirs = {
                    "forward": lambda: F.conv2d(tx, tw, None, st, p),
                    "backward_data": lambda: torch.nn.grad.conv2d_input(tx.shape, tw, tdy, st, p),
                    "backward_weight": lambda: torch.nn.grad.conv2d_weight(tx, tw.shape, tdy, st, p),
                }
            for op, fn in ops.items():
                row = dict(layer=name, shape=f"N{batch} C{c} {h}x{w} -> O{o} k{k} s{st} p{p}",
                           op=op, gflop=flops / 1e9)
                ref = cp.asnumpy(fn()).astype(np.float64)
                for label, algo, tf32 in (("igemm", "igemm", False), ("im2col", "im2col", False),
                                          ("igemm_tf32", "igemm", True)):
                    if tf32 and (op != "forward" or cc < 80):
                        continue
                    B.conv_algorithm, cuda_flags.allow_tf32 = algo, tf32
                    got = cp.asnumpy(fn()).astype(np.float64)
                    t = streamed(fn, reps)
                    row[f"{label}_ms"] = t * 1e3
                    row[f"{label}_tflops"] = flops / t / 1e12
                    row[f"{label}_max_rel_diff"] = float(np.abs(got - ref).max()
                                                         / max(np.abs(ref).max(), 1e-30))
                B.conv_algorithm, cuda_flags.allow_tf32 = "igemm", False
                if torch is not None:
                    for label, tf32 in (("cudnn", False), ("cudnn_tf32", True)):
                        if tf32 and (op != "forward" or cc < 80):
                            continue
                        t = torch_time(theirs[op], tf32)
                        row[f"{label}_ms"] = t * 1e3
                        row[f"{label}_tflops"] = flops / t / 1e12
                if "cudnn_ms" in row:        # the target: <= 1.2x cuDNN per layer
                    row["igemm_vs_cudnn"] = row["igemm_ms"] / row["cudnn_ms"]
                if "cudnn_tf32_ms" in row and "igemm_tf32_ms" in row:
                    row["igemm_tf32_vs_cudnn_tf32"] = row["igemm_tf32_ms"] / row["cudnn_tf32_ms"]
                if fp32_peak:
                    row["igemm_pct_fp32_peak"] = 100 * row["igemm_tflops"] / fp32_peak
                if tf32_peak and "igemm_tf32_tflops" in row:
                    row["igemm_tf32_pct_tf32_peak"] = 100 * row["igemm_tf32_tflops"] / tf32_peak
                rows.append(row)
    finally:
        B.conv_algorithm, cuda_flags.allow_tf32 = saved_algo, saved_tf32
    return rows, dict(fp32_tflops=fp32_peak, tf32_tflops=tf32_peak, device=note,
                      torch=torch is not None)


def print_igemm(rows, peaks):
    print(f"\nimplicit-GEMM convolution per layer, float32 (TFLOP/s; peaks: FP32 "
          f"{peaks['fp32_tflops'] or float('nan'):.1f}, TF32 tensor "
          f"{peaks['tf32_tflops'] or float('nan'):.1f}; {peaks['device']}):")
    cols = ("igemm", "im2col", "cudnn", "igemm_tf32", "cudnn_tf32")
    print(f"  {'layer':22} {'op':16} " + " ".join(f"{c:>11}" for c in cols)
          + f" {'% FP32 pk':>9} {'igemm/cuDNN':>11}")
    for r in rows:
        vals = " ".join(f"{r[c + '_tflops']:11.2f}" if c + "_tflops" in r else f"{'-':>11}"
                        for c in cols)
        pct = r.get("igemm_pct_fp32_peak")
        ratio = r.get("igemm_vs_cudnn")
        print(f"  {r['layer']:22} {r['op']:16} {vals} "
              f"{pct if pct is not None else float('nan'):8.1f}% "
              f"{ratio if ratio is not None else float('nan'):10.2f}x")
    ratios = [r["igemm_vs_cudnn"] for r in rows if "igemm_vs_cudnn" in r]
    if ratios:
        print(f"  worst igemm/cuDNN ratio {max(ratios):.2f}x (target <= 1.2x)")
    if not peaks["torch"]:
        print("  (PyTorch with CUDA not importable: no cuDNN columns)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--elements", type=int, default=64 * 2 ** 20)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--json", metavar="OUT")
    ap.add_argument("--no-conv", action="store_true")
    ap.add_argument("--igemm", action="store_true",
                    help="Part 3: implicit-GEMM convolution per layer vs im2col and cuDNN")
    ap.add_argument("--igemm-only", action="store_true", help="only Part 3 (implies --igemm)")
    ap.add_argument("--batch", type=int, default=128, help="Part 3 batch size (default 128)")
    ap.add_argument("--peak-fp32", type=float, metavar="TFLOPS",
                    help="the device's FP32 peak, if the computed one is wrong")
    ap.add_argument("--peak-tf32", type=float, metavar="TFLOPS",
                    help="the device's dense TF32 tensor-core peak")
    args = ap.parse_args(argv)
    if args.batch < 1 or args.reps < 1:
        ap.error("--batch and --reps must be positive")

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
    result = dict(info=info)
    if args.igemm or args.igemm_only:
        rows, peaks = igemm_layers(B, cp, args.reps, args.batch, args.peak_fp32, args.peak_tf32)
        print_igemm(rows, peaks)
        result["igemm"] = dict(peaks=peaks, rows=rows)
    if args.igemm_only:
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(result, fh, indent=1)
        return 0

    shape, copy_gbs, rows = bandwidth(B, cp, args.elements, args.reps)
    print(f"\nmemory-bound kernels, float32 input {shape} ({np.prod(shape) / 2**20:.0f}M elements):")
    print("  time ms = device time per call, calls back to back (median of 5 batches of "
          f"{max(1, args.reps // 5)}); GB/s and % of copy from it;")
    print(f"  1-call ms = median of {args.reps} lone calls, each between its own events (includes "
          "host launch work; the method of gpu_logs/2026-11-26-h100-run1.log)")
    print(f"  {'kernel':34} {'time ms':>9} {'GB/s':>8} {'% of copy':>10} {'1-call ms':>10}")
    result.update(shape=list(shape), copy_gbs=copy_gbs, kernels=[])
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
            print(f"\nconvolution, float32, ours ({B.conv_algorithm}) vs cuDNN (TF32 off):")
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
