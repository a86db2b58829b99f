"""ResNet-20 on CIFAR-10 for one epoch: gpucnn's default recipe against PyTorch with the same one.

gpucnn trains through ``gpucnn train``'s own code (``run_training``: ``--model resnet20
--data folder``, the paper's recipe scaled to the epochs asked for: SGD 0.1, momentum
0.9, weight decay 1e-4, batch 128, the rate /10 at 50 % and 75 % of the iterations,
4-pixel-pad random crops and horizontal flips, per-channel normalisation by the training
set's mean and std).  PyTorch then trains the same network (``benchmarks/torch_resnet.py``)
from the *same initial weights* (gpucnn's, through ``state_dict``), on the *same batches*
(gpucnn's seeded ``BatchIterator`` and the run's own augmentation, rebuilt with the same
seeds, so every crop and flip is the one gpucnn saw), with the same optimizer, schedule
(``torch.optim.lr_scheduler`` twin, stepped per iteration) and loss, and is evaluated in
``eval()`` mode on the same test images.  The two runs differ only in the framework's
arithmetic (summation orders, float32 rounding), which compounds over the epoch.

  python benchmarks/accuracy_resnet20.py                       # the shared CIFAR-10 copy
  python benchmarks/accuracy_resnet20.py --limit-train 10000 --limit-test 2000   # a subset
  python benchmarks/accuracy_resnet20.py --json out.json
  python benchmarks/accuracy_resnet20.py --dtype float64 --limit-train 5120 --limit-test 1000
      # both frameworks in float64: every step's loss side by side (the recipe's semantics
      # alike, so float32's rounding chaos is the only difference at float32)

Data: ``--data-dir`` (default ``../shared/data/cifar10-jpeg/cifar10-jpeg.tar.gz`` beside
the checkout); the folder loader decodes it once into its array cache.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import gpucnn  # noqa: E402
from gpucnn.data import BatchIterator  # noqa: E402
from gpucnn.models import build_model  # noqa: E402
from gpucnn.runs import run_training  # noqa: E402

DEFAULT_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data", "cifar10-jpeg",
                            "cifar10-jpeg.tar.gz")


def torch_schedule(torch, opt, scheduler):
    """The torch.optim.lr_scheduler twin of a gpucnn scheduler (None: a constant rate)."""
    from torch.optim import lr_scheduler as ls
    if scheduler is None:
        return None
    name = type(scheduler).__name__
    if name == "MultiStepLR":
        return ls.MultiStepLR(opt, sorted(scheduler.milestones), gamma=scheduler.gamma)
    if name == "StepLR":
        return ls.StepLR(opt, scheduler.step_size, gamma=scheduler.gamma)
    if name == "CosineAnnealingLR":
        return ls.CosineAnnealingLR(opt, scheduler.T_max, eta_min=scheduler.eta_min)
    if name == "LinearLR":
        return ls.LinearLR(opt, scheduler.start_factor, scheduler.end_factor,
                           scheduler.total_iters)
    if name == "SequentialLR":
        inner = [torch_schedule(torch, opt, s) for s in scheduler.schedulers]
        return ls.SequentialLR(opt, inner, list(scheduler.milestones))
    raise ValueError(f"no torch twin for the scheduler {name}")


def train_torch(res, log):
    """PyTorch on the same data, initial weights, batches, augmentation and recipe as ``res``."""
    import torch
    from torch_resnet import torch_model
    from gpucnn import runs
    torch.set_num_threads(os.cpu_count())
    cfg, ds, trainer = res.config, res.dataset, res.trainer
    gpucnn.manual_seed(int(cfg.seed))          # what run_training's model started from
    start = build_model(cfg.model, ds.input_shape, ds.num_classes).state_dict()
    model = torch_model(cfg.model, start, in_channels=ds.input_shape[0],
                        num_classes=ds.num_classes)
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    model = model.to(dtype=dtype)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    # the run's own scheduler object says which schedule (and its milestones) it followed
    sched, interval = trainer.scheduler, trainer.scheduler_interval
    tsched = torch_schedule(torch, opt, sched)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=float(cfg.label_smoothing or 0.0))
    it = BatchIterator(ds.train.images, ds.train.labels, cfg.batch_size, seed=cfg.seed)
    transform = runs.make_augment(ds.input_shape, cfg.seed) if cfg.augment else None
    losses, history = [], []
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        seen = correct = 0
        loss_sum = 0.0
        for x, y in it.epoch():
            if transform is not None:
                x = transform(np.ascontiguousarray(x))
            xt = torch.from_numpy(np.ascontiguousarray(x)).to(dtype=dtype)
            yt = torch.from_numpy(y)
            opt.zero_grad(set_to_none=True)
            out = model(xt)
            loss = loss_fn(out, yt)
            loss.backward()
            opt.step()
            if tsched is not None and interval == "step":
                tsched.step()
            value = loss.item()
            losses.append(value)
            loss_sum += value * len(y)
            correct += int((out.argmax(1) == yt).sum())
            seen += len(y)
        if tsched is not None and interval == "epoch":
            tsched.step()
        acc = evaluate_torch(torch, model, ds.test, dtype)
        history.append({"epoch": epoch + 1, "train_loss": loss_sum / seen,
                        "train_acc": correct / seen, "test_acc": acc})
        log(f"torch  epoch {epoch + 1}/{cfg.epochs}: train loss {loss_sum / seen:.4f}, "
            f"train acc {100 * correct / seen:.2f}%, test acc {100 * acc:.2f}%")
    return {"test_accuracy": history[-1]["test_acc"], "history": history,
            "seconds": time.perf_counter() - t0, "losses": losses,
            "last_lr": opt.param_groups[0]["lr"]}


def evaluate_torch(torch, model, test, dtype, batch=500):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(test.labels), batch):
            x = torch.from_numpy(np.ascontiguousarray(test.images[i:i + batch])).to(dtype=dtype)
            out = model(x)
            correct += int((out.argmax(1).numpy() == test.labels[i:i + batch]).sum())
    model.train()
    return correct / len(test.labels)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=DEFAULT_DATA)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--limit-train", type=int, default=None)
    ap.add_argument("--limit-test", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args(argv)
    if not os.path.exists(args.data_dir):
        print(f"accuracy_resnet20: no data at {args.data_dir}; pass --data-dir")
        return 1
    log = lambda s: print(s, flush=True)  # noqa: E731
    info = {"date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "python": platform.python_version(), "numpy": np.__version__,
            "cpus": os.cpu_count(), "loadavg_start": round(os.getloadavg()[0], 2)}
    gpucnn_losses = []

    def on_step(trainer, step):
        gpucnn_losses.append(float(step["loss"]))
    with tempfile.TemporaryDirectory() as out:
        res = run_training(data="folder", data_dir=args.data_dir, model=args.model,
                           epochs=args.epochs, limit_train=args.limit_train,
                           limit_test=args.limit_test, seed=args.seed, device="cpu",
                           dtype=args.dtype,
                           out=os.path.join(out, "run"), progress=False, log=log,
                           on_step=on_step)
    cfg = res.config
    log(f"gpucnn: test accuracy {100 * res.test_accuracy:.2f}% after {args.epochs} epoch(s) "
        f"in {res.seconds:.0f} s (data load included)")
    result = {"info": info, "config": cfg.to_dict(),
              "train_images": len(res.dataset.train), "test_images": len(res.dataset.test),
              "gpucnn": {"test_accuracy": res.test_accuracy, "seconds": res.seconds,
                         "history": res.history, "first_losses": gpucnn_losses[:5],
                         "last_lr": float(res.trainer.optimizer.lr)}}
    if not args.no_torch:
        try:
            import torch
        except ImportError as exc:
            log(f"accuracy_resnet20: PyTorch not importable ({exc}); gpucnn alone")
        else:
            info["torch"] = torch.__version__
            t = train_torch(res, log)
            result["torch"] = {k: v for k, v in t.items() if k != "losses"}
            result["losses"] = {"gpucnn": gpucnn_losses, "torch": t["losses"]}   # every step's
            result["torch"]["first_losses"] = t["losses"][:5]
            log(f"torch:  test accuracy {100 * t['test_accuracy']:.2f}% in {t['seconds']:.0f} s")
            log("first step losses gpucnn / torch: " + ", ".join(
                f"{a:.5f}/{b:.5f}" for a, b in zip(gpucnn_losses[:5], t["losses"][:5])))
            rel = [abs(a - b) / abs(b) for a, b in zip(gpucnn_losses, t["losses"])]
            result["loss_relative_difference"] = rel
            worst = max(range(len(rel)), key=rel.__getitem__)
            log(f"losses of all {len(rel)} steps: largest relative difference {rel[worst]:.2e} "
                f"(step {worst + 1}); last step {rel[-1]:.2e}")
    info["loadavg_end"] = round(os.getloadavg()[0], 2)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2, default=str)
        log(f"accuracy_resnet20: wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
