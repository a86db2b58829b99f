"""LeNet-5 on MNIST with gpucnn's Python API (no CLI).

    python examples/lenet_mnist.py                       # ../shared/data/mnist-t10k, 3 epochs
    python examples/lenet_mnist.py --data-dir ~/mnist    # the four standard IDX files
    python examples/lenet_mnist.py --device cuda --epochs 5

With only the two t10k files in the folder (as in ../shared/data/mnist-t10k), the
first 8,000 images train and the last 2,000 test.  The run folder gets a
checkpoint, history.json/.csv and curves.png; a confusion matrix is added at the end.
"""
import argparse
import sys
import time
from pathlib import Path

import gpucnn as nn
from gpucnn.data import DataError, load_dataset
from gpucnn.evaluation import evaluate
from gpucnn.plots import plot_confusion
from gpucnn.trainer import Trainer, TrainingDiverged, TrainingInterrupted

HERE = Path(__file__).resolve().parent


def lenet5(num_classes=10):
    """The classic layout, with ReLU and max pooling: 1x28x28 -> 6x14x14 -> 16x5x5 -> 120 -> 84 -> 10."""
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, kernel_size=5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, num_classes),
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 usage="%(prog)s [--data-dir DIR] [--epochs N] [--device auto|cpu|cuda] [...]")
    ap.add_argument("--data-dir", default=str(HERE.parent.parent / "shared" / "data" / "mnist-t10k"))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--lr-decay", type=float, default=0.3, help="learning-rate factor per epoch")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/lenet-mnist-example")
    args = ap.parse_args()

    data_dir = Path(args.data_dir)
    if not data_dir.is_dir():
        ap.error(f"no MNIST folder at {data_dir}; pass --data-dir DIR (the IDX files, or the two t10k files)")
    try:
        run(args, data_dir)
    except (DataError, TrainingDiverged) as exc:
        sys.exit(f"lenet_mnist.py: error: {exc}")
    except TrainingInterrupted as exc:
        sys.exit(f"lenet_mnist.py: {exc}")


def run(args, data_dir):
    has_train = any((data_dir / n).exists() for n in ("train-images-idx3-ubyte", "train-images-idx3-ubyte.gz"))
    data = load_dataset("mnist", data_dir, t10k_split=None if has_train else 8000)
    print(f"{data.source}: {len(data.train)} train / {len(data.test)} test images")

    nn.manual_seed(args.seed)                      # same initial weights every run
    model = lenet5(data.num_classes).to(args.device)
    optimizer = nn.Adam(model.parameters(), lr=args.lr)
    out = Path(args.out)
    if (out / "checkpoint.npz").exists():
        raise SystemExit(f"{out} already holds a run; pass another --out")

    trainer = Trainer(model, optimizer, data.train, data.test, batch_size=args.batch_size,
                      seed=args.seed, run_dir=out, classes=data.classes, lr_decay=args.lr_decay,
                      config={"example": "lenet_mnist", **vars(args)})
    start = time.perf_counter()
    trainer.fit(args.epochs)                       # prints one line per epoch
    seconds = time.perf_counter() - start

    result = evaluate(model, data.test, classes=data.classes)
    print(result.format_table())
    plot_confusion(result.confusion, data.classes, out / "confusion.png")
    per_epoch = ", ".join(f"{r['time_s']:.1f}" for r in trainer.history)
    print(f"device {model.device}: {seconds:.1f} s for {args.epochs} epochs (per epoch: {per_epoch} s)")
    print(f"test accuracy {100 * result.accuracy:.2f}% ({result.correct}/{result.total}); outputs in {out}/")


if __name__ == "__main__":
    main()
