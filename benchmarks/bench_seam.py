"""What the seam's argument checks (gpucnn/backends/checked.py) cost.

1. Per call: each check on the arguments of a LeNet-5 batch-64 step, best of 7 x 5000
   calls, in us (a difference of two primitive timings drowns in noise on a shared machine).
2. Per training step: LeNet-5 (relu), batch 64, float32, SGD with momentum, on the NumPy
   backend, checked vs unchecked, interleaved step by step in one process; medians.

    PYTHONPATH=. python benchmarks/bench_seam.py [--steps 40]
"""
from __future__ import annotations

import argparse
import statistics
import time
import timeit

import numpy as np

import gpucnn
from gpucnn import backends
from gpucnn.models import lenet

F32 = np.float32


def _calls():
    """Each check with the arguments of a LeNet-5 batch-64 step (conv2, pool1, fc1, ...)."""
    from gpucnn.backends.checked import CHECKS as C
    x, w = np.zeros((64, 6, 14, 14), F32), np.zeros((16, 6, 5, 5), F32)
    dy = np.zeros((64, 16, 10, 10), F32)
    am, dyp = np.zeros((64, 6, 7, 7), np.int32), np.zeros((64, 6, 7, 7), F32)
    y2, w2, b = np.zeros((64, 120), F32), np.zeros((84, 120), F32), np.zeros(120, F32)
    logits, labels = np.zeros((64, 10), F32), np.zeros(64, np.int64)
    s, p0, k2 = (1, 1), (0, 0), (2, 2)
    return {
        "conv2d_forward": lambda: C["conv2d_forward"](x, w, s, p0),
        "conv2d_backward_data": lambda: C["conv2d_backward_data"](dy, w, x.shape, s, p0),
        "conv2d_backward_weight": lambda: C["conv2d_backward_weight"](dy, x, w.shape, s, p0),
        "maxpool2d_forward": lambda: C["maxpool2d_forward"](x, k2, k2, p0),
        "maxpool2d_backward": lambda: C["maxpool2d_backward"](dyp, am, x.shape, k2, k2, p0),
        "linear_forward": lambda: C["linear_forward"](y2, w2),
        "bias_forward": lambda: C["bias_forward"](y2, b),
        "relu_backward": lambda: C["relu_backward"](y2, y2),
        "softmax_cross_entropy_forward": lambda: C["softmax_cross_entropy_forward"](logits, labels),
        "sgd_update": lambda: C["sgd_update"](w, w, w, 0.1, 0.9, 0.0, False, False),
        "adam_update": lambda: C["adam_update"](w, w, w, w, 3, 1e-3, 0.9, 0.999, 1e-8, 0.0),
        "accumulate": lambda: C["accumulate"](w, w),
    }


def per_call(number=5000, repeat=7):
    """Best-of-``repeat`` time of each check (an empty lambda's time subtracted), in us.
    The wrapper adds one Python call (about 0.1-0.2 us) on top."""
    def best(fn):
        return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6
    empty = best(lambda: None)
    return [(name, best(fn) - empty) for name, fn in _calls().items()]


def per_step(steps=40, warmup=5):
    gpucnn.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 1, 28, 28)).astype(F32)
    labels = rng.integers(0, 10, 64).astype(np.int64)
    models = {}
    for kind in ("checked", "unchecked"):
        model = lenet()
        models[kind] = (model, gpucnn.SGD(model.parameters(), lr=0.01, momentum=0.9))
    loss_fn = gpucnn.CrossEntropyLoss()
    checked = backends.cpu_backend()
    times = {"checked": [], "unchecked": []}
    for i in range(warmup + steps):
        for kind, (model, opt) in models.items():
            backends._numpy_backend = checked if kind == "checked" else checked.unchecked
            try:
                time.sleep(0.005)
                t0 = time.perf_counter()
                opt.zero_grad()
                loss_fn(model(x), labels)
                model.backward(loss_fn.backward())
                opt.step()
                t = time.perf_counter() - t0
            finally:
                backends._numpy_backend = checked
            if i >= warmup:
                times[kind].append(t * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args(argv)
    print("per-call cost of the check (best of 7, us):")
    for name, us in per_call():
        print(f"  {name:32} {us:6.2f}")
    med = per_step(args.steps)
    print(f"LeNet-5 relu, batch 64, float32, SGD momentum, CPU: checked {med['checked']:.2f} ms, "
          f"unchecked {med['unchecked']:.2f} ms, ratio {med['checked'] / med['unchecked']:.3f}")


if __name__ == "__main__":
    main()
