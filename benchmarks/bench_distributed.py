"""Data-parallel scaling: N processes against 1 process, side by side.

Trains the CIFAR-style net (gpucnn.models.cifar, 3x32x32, 10 classes) on random
images at a global batch of 256 with Adam, and reports for each process count the
images per second of the whole job, the step time, and the gradient all-reduce time per
step (part of the step time).  The runs alternate (1, N, 1, N, ...; --repeats pairs),
each a fresh ``mpiexec -n P`` with one thread per process (GPUCNN_NUM_THREADS=1,
OMP/OPENBLAS/MKL_NUM_THREADS=1); the figure of a run is the median step after --warmup
steps (of its slowest rank), and the best run of each count is compared.  A step is split
into compute (forward + backward), waiting for the slowest rank (a barrier: imbalance,
not communication), the gradient all-reduce, and the optimizer update.

Target (issue 12, on a 2-core machine): 2 processes x 1 thread >= 1.7x the images/s of
1 process x 1 thread, i.e. communication and imbalance overhead <= 15 %.

Usage:
  python benchmarks/bench_distributed.py                      # 1 vs 2 processes, CPU
  python benchmarks/bench_distributed.py --steps 3 --warmup 1 --repeats 1   # a smoke run
  python benchmarks/bench_distributed.py --device cuda --procs 1 2          # GPU: NCCL with one
        rank per GPU, the MPI host path when ranks share one GPU
  mpiexec -n 2 python benchmarks/bench_distributed.py --worker              # one run, JSON out

Needs mpi4py and mpiexec (pip install 'gpucnn[mpi]').  The machine must be quiet:
the 2-process run uses every core of a 2-core machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ONE_THREAD = {"GPUCNN_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "MKL_NUM_THREADS": "1"}


def worker(args):
    import numpy as np

    import gpucnn
    from gpucnn import distributed as dist
    from gpucnn.losses import CrossEntropyLoss
    from gpucnn.models import cifar
    from gpucnn.optim import Adam
    comm = dist.create_communicator()
    gpucnn.manual_seed(0)
    model = cifar((3, 32, 32), 10).to(device=args.device, dtype=np.float32)
    comm.bcast_data(model)
    opt = dist.create_multi_node_optimizer(Adam(model.parameters(), lr=1e-3), comm)
    rng = np.random.default_rng(0)
    n = args.batch * 2
    x = rng.standard_normal((n, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, n)
    batches = dist.ShardedBatchIterator(x, y, args.batch, seed=0, comm=comm)
    backend = gpucnn.backends.backend_of(model.parameters()[0].data)
    sync = lambda: None  # noqa: E731
    if model.device == "cuda":
        import cupy
        sync = cupy.cuda.get_current_stream().synchronize
    loss_fn = CrossEntropyLoss()
    rows = []   # per step: (step, compute, wait for the slowest rank, all-reduce) seconds

    def batches_forever():
        while True:
            yield from batches

    it = batches_forever()
    for k in range(args.warmup + args.steps):
        xb, yb = next(it)
        xb, yb = backend.asarray(xb, dtype=np.float32), backend.asarray(yb)
        comm.barrier()   # every step starts together
        t0 = time.perf_counter()
        opt.zero_grad()
        loss_fn(model(xb), yb)
        model.backward(loss_fn.backward(), input_grad=False)
        sync()
        t1 = time.perf_counter()
        comm.barrier()   # waiting for the slowest rank: imbalance, not communication
        t2 = time.perf_counter()
        opt.allreduce_grads(weight=batches.weight)
        sync()
        t3 = time.perf_counter()
        opt.optimizer.step()
        sync()
        t4 = time.perf_counter()
        if k >= args.warmup:
            rows.append((t4 - t0, t1 - t0, t2 - t1, t3 - t2))
    med = [statistics.median(col) for col in zip(*rows)]
    # the job's figures are its slowest rank's
    step, compute, wait, allreduce = (max(v) for v in zip(*comm.allgather_obj(med)))
    if comm.rank == 0:
        print(json.dumps({"procs": comm.size, "batch": args.batch, "step_s": step,
                          "compute_s": compute, "wait_s": wait, "allreduce_s": allreduce,
                          "images_per_s": args.batch / step, "transport": comm.transport,
                          "buckets": opt.bucket_count, "device": model.device}))


def launch(procs, args):
    mpiexec = Path(sys.executable).parent / "mpiexec"
    mpiexec = str(mpiexec) if mpiexec.exists() else shutil.which("mpiexec")
    if mpiexec is None:
        sys.exit("bench_distributed: no mpiexec found; pip install 'gpucnn[mpi]'")
    env = {**os.environ, **ONE_THREAD, "PYTHONPATH": str(ROOT)}
    cmd = [mpiexec, "-n", str(procs), sys.executable, __file__, "--worker", "--device", args.device,
           "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    if out.returncode != 0:
        sys.exit(f"bench_distributed: {procs} processes failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", action="store_true", help="one run (under mpiexec); prints JSON")
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=256, help="global batch")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="alternating runs per process count")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--json", help="write the runs here")
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}; cifar net, global batch {args.batch}, "
          f"{args.steps} steps after {args.warmup}, device {args.device}, 1 thread per process")
    runs = {p: [] for p in args.procs}
    for r in range(args.repeats):
        for p in args.procs:
            res = launch(p, args)
            runs[p].append(res)
            print(f"run {r + 1}: {p} proc  step {1e3 * res['step_s']:8.1f} ms  (compute "
                  f"{1e3 * res['compute_s']:.1f}, waiting {1e3 * res['wait_s']:.1f}, all-reduce "
                  f"{1e3 * res['allreduce_s']:.2f})  {res['images_per_s']:8.1f} img/s  "
                  f"({res['transport']}, {res['buckets']} bucket(s))", flush=True)
    best = {p: max(rs, key=lambda r: r["images_per_s"]) for p, rs in runs.items()}
    base = best[args.procs[0]]
    print(f"{'procs':>5}  {'img/s':>8}  {'step ms':>8}  {'compute':>8}  {'waiting':>8}  "
          f"{'all-reduce ms':>13}  {'speed-up':>8}  {'efficiency':>10}")
    for p, b in best.items():
        speed = b["images_per_s"] / base["images_per_s"]
        eff = speed / (p / base["procs"])
        print(f"{p:>5}  {b['images_per_s']:8.1f}  {1e3 * b['step_s']:8.1f}  "
              f"{1e3 * b['compute_s']:8.1f}  {1e3 * b['wait_s']:8.1f}  "
              f"{1e3 * b['allreduce_s']:13.2f}  {speed:7.2f}x  {100 * eff:9.1f}%")
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
