"""Data pipeline timings: an image folder's first load (Pillow decode + cache write) and
cached load, the float conversion of load_dataset, and batch augmentation (crop+flip and
normalisation) on each backend present.

    python benchmarks/bench_data.py [FOLDER_OR_ARCHIVE]   (default: the shared CIFAR-10 JPEGs)

The first load uses a fresh temporary cache folder, so it always decodes; CPU seconds are
printed next to wall seconds because a shared machine's wall clock depends on its load.
"""
from __future__ import annotations

import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpucnn import transforms as T  # noqa: E402
from gpucnn.backends import resolve_device  # noqa: E402
from gpucnn.data import load_dataset  # noqa: E402
from gpucnn.datasets_folder import load_image_folder  # noqa: E402

DEFAULT = (Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"
           / "cifar10-jpeg.tar.gz")


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(fn):
    c, t = cpu_seconds(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t, cpu_seconds() - c


def main():
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    print(f"data: {root}  (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    if not root.exists():
        print("no such folder or archive: folder loading skipped, augmentation on random images")
        x = np.random.default_rng(0).standard_normal((128, 3, 32, 32)).astype(np.float32)
        augment(x, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        return
    with tempfile.TemporaryDirectory() as cache:
        f, wall, cpu = timed(lambda: load_image_folder(root, cache_dir=cache))
        n = len(f.train[1]) + len(f.test[1])
        print(f"first load  : {n} images in {wall:6.2f} s wall, {cpu:6.2f} s CPU "
              f"({n / wall:,.0f} img/s), cache {os.path.getsize(f.cache) / 2**20:.0f} MiB")
        f, wall, cpu = timed(lambda: load_image_folder(root, cache_dir=cache))
        assert f.from_cache
        print(f"cached load : {wall:6.2f} s wall, {cpu:6.2f} s CPU")
        os.environ["GPUCNN_CACHE_DIR"] = cache
        ds, wall, cpu = timed(lambda: load_dataset("folder", root))
        print(f"load_dataset('folder') from the cache, float32 normalised: {wall:6.2f} s wall, "
              f"{cpu:6.2f} s CPU")
    augment(ds.train.images[:128], ds.mean, ds.std)


def augment(x, mean, std):
    for device in ("cpu", "cuda"):
        try:
            B, _ = resolve_device(device)
        except Exception as exc:
            print(f"augment on {device}: skipped ({exc})")
            continue
        xb = B.asarray(x)
        aug = T.Compose([T.RandomCrop(32, padding=4, rng=0), T.RandomHorizontalFlip(rng=1)])
        norm = T.Normalize(mean, std)
        for name, fn in (("crop+flip", lambda: aug(xb)), ("normalize", lambda: norm(xb))):
            times = []
            for _ in range(30):
                t = time.perf_counter()
                y = fn()
                B.to_numpy(y[:1, :1, :1, :1])           # wait for the device
                times.append(time.perf_counter() - t)
            med = statistics.median(times[5:])
            print(f"augment on {device}: {name:9s} batch 128x3x32x32 {med * 1e3:7.3f} ms "
                  f"({x.nbytes * 2 / med / 1e9:.2f} GB/s read+write)")


if __name__ == "__main__":
    main()
