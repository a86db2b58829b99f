"""Time one training step of gpucnn against PyTorch, in the same process.

One step = forward, CrossEntropy loss, backward (every layer, parameter
gradients included), SGD-momentum update; float32.  For each (net, batch) the
two frameworks run step by step, interleaved (gpucnn, torch, gpucnn, torch,
...), after a warm-up; the figure reported is the median step time.

Nets (from issue 2):
  lenet  LeNet-5, input 1x28x28: conv 6@5x5 pad 2, sigmoid, maxpool 2; conv 16@5x5,
         sigmoid, maxpool 2; flatten; linear 400->120, sigmoid, 120->84, sigmoid, 84->10
  cifar  input 3x32x32: conv 32@3x3 pad 1, ReLU, maxpool 2; conv 64@3x3 pad 1, ReLU,
         maxpool 2; conv 128@3x3 pad 1, ReLU, avgpool 2; flatten; linear 2048->10
  resnet20  (issue 10) input 3x32x32: gpucnn.models.resnet20, He et al.'s CIFAR ResNet-20
         with option-A shortcuts (269,722 parameters, batch norm in training mode); the torch
         twin is benchmarks/torch_resnet.py.  Default batch 128 (the paper's).

The torch nets are built layer for layer identically and start from gpucnn's
weights (copied through state_dict); the first step's losses are printed side
by side as a check that both compute the same thing.

FLOPs of a step are counted the same way for both frameworks: for every
convolution and linear layer, the forward GEMM plus the two backward GEMMs
(data and weight), i.e. 3 x 2*M*N*K.  Both skip the data gradient of the first
layer (PyTorch because the input needs no gradient; gpucnn through
``Sequential.backward(..., input_grad=False)``), so the count slightly
overstates both equally.  Element-wise work is not counted.

Usage:
  python benchmarks/bench_train.py                     # CPU, both nets, batch 64 and 256
  python benchmarks/bench_train.py --device cuda --quick
  python benchmarks/bench_train.py --nets cifar --batch 256 --steps 40 --json out.json
  python benchmarks/bench_train.py --nets resnet20 --memory   # + peak memory of a step

Peak memory (--memory): each framework runs alone in a fresh subprocess (gpucnn's never
imports torch) with MALLOC_MMAP_THRESHOLD_=65536 (large blocks mmapped and returned to
the system when freed, in both, so RSS follows what is live).  The child builds the
model, the batch and the optimizer, reads its resident set size (VmRSS) as the baseline,
resets the peak (writing 5 to /proc/self/clear_refs), runs 6 training steps, and reports
VmHWM - baseline: the most memory the training steps needed on top of the model and data
(activations kept for the backward, gradients, momentum, temporaries; for gpucnn also the
activations its layers keep after a step).  Linux only.

Before each timed step the script pauses (untimed, --pause-ms, default 10 ms):
worker threads of the framework that ran last (OpenMP's, OpenBLAS's) spin for a
while after their work and would otherwise compete with the next timed step.

On the CPU, torch uses os.cpu_count() threads (torch.set_num_threads), and
gpucnn's NumPy backend splits its primitives over as many threads
($GPUCNN_NUM_THREADS, default the CPUs).  On CUDA, torch runs
cuDNN in float32 with TF32 disabled and cudnn.benchmark on; both sides are
synchronised before each clock read.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # run against the checkout

import gpucnn  # noqa: E402
from gpucnn import backends  # noqa: E402

NETS = ("lenet", "cifar", "resnet20")
IN_SHAPE = {"lenet": (1, 28, 28), "cifar": (3, 32, 32), "resnet20": (3, 32, 32)}
DEFAULT_BATCHES = {"lenet": [64, 256], "cifar": [64, 256], "resnet20": [128]}


# ---------------------------------------------------------------- the nets
def build_gpucnn(net):
    g = gpucnn
    if net == "resnet20":
        from gpucnn.models import resnet20
        return resnet20()
    if net == "lenet":
        return g.Sequential(
            g.Conv2d(1, 6, 5, padding=2), g.Sigmoid(), g.MaxPool2d(2),
            g.Conv2d(6, 16, 5), g.Sigmoid(), g.MaxPool2d(2),
            g.Flatten(),
            g.Linear(400, 120), g.Sigmoid(), g.Linear(120, 84), g.Sigmoid(), g.Linear(84, 10))
    if net == "cifar":
        return g.Sequential(
            g.Conv2d(3, 32, 3, padding=1), g.ReLU(), g.MaxPool2d(2),
            g.Conv2d(32, 64, 3, padding=1), g.ReLU(), g.MaxPool2d(2),
            g.Conv2d(64, 128, 3, padding=1), g.ReLU(), g.AvgPool2d(2),
            g.Flatten(),
            g.Linear(2048, 10))
    raise ValueError(f"unknown net {net!r}; expected one of {NETS}")


def build_torch(net, state_dict, device):
    import torch
    from torch import nn
    if net == "resnet20":
        sys.path.insert(0, HERE)
        from torch_resnet import torch_model
        return torch_model("resnet20", state_dict).to(device=device)
    if net == "lenet":
        m = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.Sigmoid(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.Sigmoid(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(400, 120), nn.Sigmoid(), nn.Linear(120, 84), nn.Sigmoid(), nn.Linear(84, 10))
    else:
        m = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(2048, 10))
    m.load_state_dict({k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in state_dict.items()})
    return m.to(device=device, dtype=torch.float32)


def step_flops(net, batch):
    """3 x forward GEMM FLOPs of every conv / linear layer (see the module docstring)."""
    model = build_gpucnn(net)
    model(np.zeros((2,) + IN_SHAPE[net], dtype=np.float32))   # each conv records its output shape
    total = 0
    for layer in model.modules():
        if isinstance(layer, gpucnn.Conv2d):
            (kh, kw), (_, _, h, w) = layer.kernel_size, layer._y_shape
            total += 3 * 2 * batch * layer.out_channels * layer.in_channels * kh * kw * h * w
        elif isinstance(layer, gpucnn.Linear):
            total += 3 * 2 * batch * layer.in_features * layer.out_features
    return total


# ------------------------------------------------------------- the steps
class GpucnnRunner:
    def __init__(self, net, batch, backend, x, y, sync):
        self.model = build_gpucnn(net).to(backend.name)
        self.loss_fn = gpucnn.CrossEntropyLoss()
        self.opt = gpucnn.SGD(self.model.parameters(), lr=0.01, momentum=0.9).fuse()
        self.x = backend.asarray(x)
        self.y = backend.asarray(y)
        self.sync = sync

    def step(self):
        out = self.model(self.x)
        loss = self.loss_fn(out, self.y)
        self.model.zero_grad()
        self.model.backward(self.loss_fn.backward(), input_grad=False)
        self.opt.step()
        self.sync()
        return loss


class TorchRunner:
    def __init__(self, net, state_dict, x, y, device, sync):
        import torch
        self.torch = torch
        self.model = build_torch(net, state_dict, device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.x = torch.from_numpy(x).to(device)
        self.y = torch.from_numpy(y).to(device)
        self.sync = sync

    def step(self):
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()
        self.sync()
        return loss


def _busy_seconds():
    """CPU seconds the whole machine has spent busy (Linux /proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds():
    t = os.times()
    return t.user + t.system


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def gemm_floor(device, reps=10):
    """NumPy's (or CuPy's) own float32 GEMM speed, GFLOP/s, on two shapes."""
    shapes = [(1024, 1024, 1024), (64, 288, 64 * 256 * 4)]  # square; CIFAR conv2 fwd at batch 64
    out = {}
    if device == "cuda":
        import cupy as xp
        sync = xp.cuda.Device().synchronize
    else:
        xp = np
        sync = lambda: None  # noqa: E731
    rng = np.random.default_rng(0)
    for m, k, n in shapes:
        a = xp.asarray(rng.standard_normal((m, k), dtype=np.float32))
        b = xp.asarray(rng.standard_normal((k, n), dtype=np.float32))
        for _ in range(2):
            a @ b
        sync()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            a @ b
            sync()
            times.append(time.perf_counter() - t0)
        out[f"{m}x{k}x{n}"] = 2 * m * k * n / statistics.median(times) / 1e9
    return out


def bench_one(net, batch, device, backend, steps, warmup, use_torch, torch_device, syncs,
              pause=0.0):
    rng = np.random.default_rng(1234)
    x = rng.standard_normal((batch,) + IN_SHAPE[net], dtype=np.float32)
    y = rng.integers(0, 10, size=batch).astype(np.int64)
    gpucnn.manual_seed(0)
    g = GpucnnRunner(net, batch, backend, x, y, syncs["gpucnn"])
    t = TorchRunner(net, g.model.state_dict(), x, y, torch_device, syncs["torch"]) if use_torch else None
    g_times, t_times = [], []
    first_losses = None
    busy0 = own0 = wall0 = None
    def settle():
        if pause:
            time.sleep(pause)

    for i in range(warmup + steps):
        if i == warmup:
            busy0, own0, wall0 = _busy_seconds(), _own_cpu_seconds(), time.perf_counter()
        settle()
        dg, lg = _timed(g.step)
        settle()
        dt, lt = _timed(t.step) if t else (None, None)
        if i == 0:
            first_losses = (float(lg), float(lt.item()) if t else None)
        if i >= warmup:
            g_times.append(dg)
            if t:
                t_times.append(dt)
    wall = time.perf_counter() - wall0
    busy1, own1 = _busy_seconds(), _own_cpu_seconds()
    # share of the machine's CPU time that other processes used while we timed
    others = (None if busy0 is None or busy1 is None else
              max(0.0, (busy1 - busy0) - (own1 - own0)) / (wall * (os.cpu_count() or 1)))
    flops = step_flops(net, batch)
    res = {"net": net, "batch": batch, "device": device, "steps": steps, "warmup": warmup,
           "pause_ms": 1e3 * pause, "others_cpu_share": others,
           "flops_per_step": flops,
           "gpucnn_ms": 1e3 * statistics.median(g_times),
           "gpucnn_gflops": flops / statistics.median(g_times) / 1e9,
           "first_loss_gpucnn": first_losses[0]}
    if t:
        res.update({"torch_ms": 1e3 * statistics.median(t_times),
                    "torch_gflops": flops / statistics.median(t_times) / 1e9,
                    "ratio": statistics.median(g_times) / statistics.median(t_times),
                    "first_loss_torch": first_losses[1]})
    return res


# ------------------------------------------------------------ peak memory
def _proc_status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_child(framework, net, batch, steps=6):
    """Run in a fresh process: (peak - baseline, retained - baseline) RSS of training steps, MiB."""
    rng = np.random.default_rng(1234)
    x = rng.standard_normal((batch,) + IN_SHAPE[net], dtype=np.float32)
    y = rng.integers(0, 10, size=batch).astype(np.int64)
    gpucnn.manual_seed(0)
    nosync = lambda: None  # noqa: E731
    if framework == "gpucnn":
        runner = GpucnnRunner(net, batch, backends.resolve_device("cpu")[0], x, y, nosync)
    else:
        import torch
        torch.set_num_threads(os.cpu_count())
        runner = TorchRunner(net, build_gpucnn(net).state_dict(), x, y, "cpu", nosync)
    import gc
    gc.collect()
    base = _proc_status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:   # resets VmHWM to the current RSS
        f.write("5")
    for _ in range(steps):
        runner.step()
    peak = _proc_status_kib("VmHWM")
    gc.collect()
    after = _proc_status_kib("VmRSS")
    return {"framework": framework, "net": net, "batch": batch, "steps": steps,
            "baseline_mib": base / 1024, "peak_above_baseline_mib": (peak - base) / 1024,
            "retained_above_baseline_mib": (after - base) / 1024}


def measure_memory(net, batch, framework):
    import subprocess
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-child", framework,
                          "--nets", net, "--batch", str(batch)],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])
# ------------------------------------------------------ whole-epoch throughput
def bench_throughput(net, batch, device, n, epochs, use_torch, torch_device, syncs):
    """Training images/s over whole epochs through gpucnn's Trainer (data on the device, reads
    every 50 steps; CUDA graph on and off) and a plain PyTorch eager loop on the same data,
    also resident on the device.  One untimed epoch first (compilation, graph capture)."""
    from gpucnn.trainer import Trainer
    rng = np.random.default_rng(7)
    images = rng.standard_normal((n,) + IN_SHAPE[net], dtype=np.float32)
    labels = rng.integers(0, 10, size=n).astype(np.int64)
    steps = -(-n // batch)
    rows = []
    for graph in ((True, False) if device == "cuda" else (False,)):
        gpucnn.manual_seed(0)
        model = build_gpucnn(net).to(device)
        opt = gpucnn.SGD(model.parameters(), lr=0.01, momentum=0.9)
        tr = Trainer(model, opt, (images, labels), None, batch_size=batch, progress=False,
                     log=lambda *_: None, graph=graph)
        tr.fit(1)
        syncs["gpucnn"]()
        t0 = time.perf_counter()
        tr.fit(1 + epochs)
        syncs["gpucnn"]()
        dt = time.perf_counter() - t0
        g = tr.graph
        rows.append({"framework": "gpucnn", "graph": graph, "net": net, "batch": batch, "n": n,
                     "epochs": epochs, "images_per_s": epochs * n / dt,
                     "step_ms": 1e3 * dt / (epochs * steps),
                     "graph_replays": getattr(g, "replays", None),
                     "graph_failed": getattr(g, "failed", None)})
    if use_torch:
        import torch
        gpucnn.manual_seed(0)
        tm = build_torch(net, build_gpucnn(net).state_dict(), torch_device)
        topt = torch.optim.SGD(tm.parameters(), lr=0.01, momentum=0.9)
        lossf = torch.nn.CrossEntropyLoss()
        xs, ys = torch.from_numpy(images).to(torch_device), torch.from_numpy(labels).to(torch_device)
        gen = torch.Generator(device="cpu").manual_seed(0)

        def epoch():
            order = torch.randperm(n, generator=gen).to(torch_device)
            for b in range(steps):
                idx = order[b * batch:(b + 1) * batch]
                topt.zero_grad(set_to_none=True)
                lossf(tm(xs[idx]), ys[idx]).backward()
                topt.step()
        epoch()
        syncs["torch"]()
        t0 = time.perf_counter()
        for _ in range(epochs):
            epoch()
        syncs["torch"]()
        dt = time.perf_counter() - t0
        rows.append({"framework": "torch", "graph": False, "net": net, "batch": batch, "n": n,
                     "epochs": epochs, "images_per_s": epochs * n / dt,
                     "step_ms": 1e3 * dt / (epochs * steps)})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 30, --quick 20)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5, --quick 3)")
    ap.add_argument("--batch", type=int, nargs="+", default=None,
                    help="batch sizes (default 64 and 256 for lenet/cifar, 128 for resnet20)")
    ap.add_argument("--nets", nargs="+", choices=NETS, default=list(NETS))
    ap.add_argument("--quick", action="store_true", help="small counts, for a fast GPU run")
    ap.add_argument("--no-torch", action="store_true", help="time gpucnn alone")
    ap.add_argument("--pause-ms", type=float, default=10.0,
                    help="untimed pause before each step (default 10): lets the other "
                         "framework's idle worker threads, which spin for a while after their "
                         "work, go to sleep instead of competing with the next timed step")
    ap.add_argument("--json", metavar="OUT", help="write the results as JSON to OUT")
    ap.add_argument("--memory", action="store_true",
                    help="also measure each step's peak memory, each framework in its own "
                         "subprocess (CPU, Linux; see the module docstring)")
    ap.add_argument("--memory-child", choices=("gpucnn", "torch"), help=argparse.SUPPRESS)
    ap.add_argument("--throughput", type=int, metavar="N", default=None,
                    help="also time whole epochs of N synthetic images through the Trainer "
                         "(device-resident data; on cuda the CUDA graph on and off) against a "
                         "PyTorch eager loop: images/s (default on cuda: 60000, LeNet = MNIST size; "
                         "0 skips)")
    ap.add_argument("--throughput-epochs", type=int, default=2, metavar="E")
    args = ap.parse_args(argv)
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.nets[0], args.batch[0])))
        return 0
    steps = args.steps or (20 if args.quick else 30)
    warmup = args.warmup or (3 if args.quick else 5)
    if steps < 1 or warmup < 1:
        ap.error("--steps and --warmup must be >= 1")
    if args.pause_ms < 0:
        ap.error("--pause-ms must be >= 0")

    try:
        backend, _ = backends.resolve_device(args.device)
    except backends.DeviceError as exc:
        print(f"bench_train: skipping, {exc}")
        return 0

    use_torch = not args.no_torch
    torch_note = None
    torch_device = args.device
    nosync = lambda: None  # noqa: E731
    syncs = {"gpucnn": nosync, "torch": nosync}
    if args.device == "cuda":
        import cupy
        syncs["gpucnn"] = cupy.cuda.Device().synchronize
    if use_torch:
        try:
            import torch
        except ImportError as exc:
            use_torch, torch_note = False, f"PyTorch not importable ({exc}); gpucnn timed alone"
        else:
            if args.device == "cpu":
                torch.set_num_threads(os.cpu_count())
            elif not torch.cuda.is_available():
                use_torch, torch_note = False, "torch has no CUDA here; gpucnn timed alone"
            else:
                torch.backends.cuda.matmul.allow_tf32 = False
                torch.backends.cudnn.allow_tf32 = False
                torch.backends.cudnn.benchmark = True
                syncs["torch"] = torch.cuda.synchronize

    info = {"python": platform.python_version(), "numpy": np.__version__,
            "cpu_count": os.cpu_count(), "machine": platform.machine(), "device": args.device,
            "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if hasattr(os, "getloadavg"):  # other processes on the machine skew every figure
        info["loadavg_1min"] = round(os.getloadavg()[0], 2)
    if use_torch:
        import torch
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads() if args.device == "cpu" else None
        if args.device == "cuda":
            info["gpu"] = torch.cuda.get_device_name(0)
    if args.device == "cuda":
        import cupy
        info["cupy"] = cupy.__version__
    print("bench_train: " + ", ".join(f"{k}={v}" for k, v in info.items() if v is not None))
    if torch_note:
        print(f"bench_train: {torch_note}")
    print(f"bench_train: median of {steps} steps after {warmup} warm-up steps, float32, "
          f"interleaved step by step, {args.pause_ms:g} ms untimed pause before each step")
    print("bench_train: 'others' = share of the machine's CPU time used by other processes "
          "while a row was timed (a busy machine skews the figures)")

    floor = gemm_floor(args.device)
    lib = "CuPy (cuBLAS)" if args.device == "cuda" else "NumPy"
    print(f"{lib} float32 GEMM floor: " +
          ", ".join(f"{k}: {v:.1f} GFLOP/s" for k, v in floor.items()))

    results = []
    head = f"{'net':6} {'batch':>5} {'gpucnn ms':>10} {'GFLOP/s':>8}"
    if use_torch:
        head += f" {'torch ms':>10} {'GFLOP/s':>8} {'ratio':>6}"
    head += "  others  first loss gpucnn" + (" / torch" if use_torch else "")
    print(head)
    for net in args.nets:
        for batch in args.batch or DEFAULT_BATCHES[net]:
            r = bench_one(net, batch, args.device, backend, steps, warmup, use_torch,
                          torch_device, syncs, pause=args.pause_ms / 1e3)
            results.append(r)
            line = f"{net:6} {batch:5d} {r['gpucnn_ms']:10.2f} {r['gpucnn_gflops']:8.1f}"
            if use_torch:
                line += f" {r['torch_ms']:10.2f} {r['torch_gflops']:8.1f} {r['ratio']:6.2f}"
            others = r["others_cpu_share"]
            line += f"  {'  n/a' if others is None else f'{100 * others:4.0f}%'}"
            line += f"  {r['first_loss_gpucnn']:.6f}"
            if use_torch:
                line += f" / {r['first_loss_torch']:.6f}"
            print(line, flush=True)
            if args.memory and args.device == "cpu":
                mem = {fw: measure_memory(net, batch, fw)
                       for fw in (("gpucnn", "torch") if use_torch else ("gpucnn",))}
                r["memory"] = mem
                line = (f"{'':6} peak memory of {mem['gpucnn']['steps']} steps above the "
                        f"baseline: gpucnn {mem['gpucnn']['peak_above_baseline_mib']:.1f} MiB")
                if use_torch:
                    t_mib = mem["torch"]["peak_above_baseline_mib"]
                    r["memory_ratio"] = mem["gpucnn"]["peak_above_baseline_mib"] / t_mib
                    line += f", torch {t_mib:.1f} MiB, ratio {r['memory_ratio']:.2f}"
                print(line, flush=True)
    throughput = []
    n_tp = args.throughput if args.throughput is not None else (60000 if args.device == "cuda" else 0)
    if n_tp > 0:
        print(f"bench_train: whole epochs, {n_tp} synthetic images, {args.throughput_epochs} timed "
              f"epoch(s) after one untimed")
        print(f"{'net':6} {'batch':>5} {'framework':>10} {'graph':>6} {'images/s':>12} {'step ms':>9}")
        for net in args.nets:
            for batch in args.batch or DEFAULT_BATCHES[net]:
                rows = bench_throughput(net, batch, args.device, n_tp, args.throughput_epochs,
                                        use_torch, torch_device, syncs)
                throughput.extend(rows)
                for r in rows:
                    note = f"  (capture failed: {r['graph_failed']})" if r.get("graph_failed") else ""
                    print(f"{net:6} {batch:5d} {r['framework']:>10} {str(r['graph']):>6} "
                          f"{r['images_per_s']:12,.0f} {r['step_ms']:9.3f}{note}", flush=True)
    if hasattr(os, "getloadavg"):
        print(f"bench_train: load average (1 min) at the end: {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "gemm_floor_gflops": floor, "results": results,
                       "throughput": throughput}, f, indent=2)
        print(f"bench_train: wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
