"""`gpucnn train --model resnet20`: the paper's recipe by default (He et al. 2016, section 4.2,
scaled to the epochs asked for), the schedule options, label smoothing, and bitwise resume
with the schedule and the augmentation on a tiny generated image folder."""
from __future__ import annotations

import numpy as np
import pytest

from gpucnn.checkpoint import CHECKPOINT_NAME, load_checkpoint
from gpucnn.runs import RECIPES, TrainConfig, run_training
from gpucnn.trainer import TrainingInterrupted

PIL = pytest.importorskip("PIL.Image")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """train/ and test/ with 3 classes of 8x8 RGB PNGs (12 + 4 per class): 36 train images."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 4)):
        for c, name in enumerate(("cat", "dog", "emu")):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                img[..., c] = np.maximum(img[..., c], 160)      # a learnable colour cue
                PIL.fromarray(img).save(d / f"{i}.png")
    return root


def small(folder, **kw):
    return dict(data="folder", data_dir=str(folder), model="resnet20", device="cpu",
                progress=False, log=lambda *_: None, **kw)


def same(a, b):
    sa, sb = a.trainer.model.state_dict(), b.trainer.model.state_dict()
    return all(np.array_equal(sa[k], sb[k]) for k in sa)


def test_recipe_defaults():
    cfg = TrainConfig(data="folder", data_dir=".", model="resnet20").resolved()
    assert (cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.batch_size) == \
        ("sgd", 0.1, 0.9, 1e-4, 128)
    assert (cfg.schedule, cfg.augment, cfg.lr_decay, cfg.label_smoothing) == \
        ("multistep", True, 1.0, 0.0)
    assert cfg.epochs == RECIPES["resnet20"]["epochs"] == 164      # ~64k iterations of 128
    for name in ("resnet32", "resnet44", "resnet56", "vgg_bn"):
        assert TrainConfig(data="cifar10", model=name).resolved().schedule == "multistep"
    # what the user gives wins over the recipe; other models keep the dataset's defaults
    cfg = TrainConfig(data="folder", model="resnet20", lr=0.05, schedule="cosine",
                      augment=False, weight_decay=5e-4, batch_size=64).resolved()
    assert (cfg.lr, cfg.schedule, cfg.augment, cfg.weight_decay, cfg.batch_size) == \
        (0.05, "cosine", False, 5e-4, 64)
    cfg = TrainConfig(data="cifar10", model="cifar").resolved()
    assert (cfg.optimizer, cfg.schedule, cfg.augment, cfg.weight_decay) == \
        ("adam", "none", False, 0.0)


def test_lr_per_iteration_follows_the_formula(folder):
    lrs = []
    res = run_training(out=None, runs_root=str(folder.parent / "runs-lr"), epochs=3,
                       batch_size=8, on_step=lambda t, info: lrs.append(t.optimizer.lr),
                       **small(folder))
    steps = 3 * 5                                  # 36 images / 8 -> 5 steps an epoch
    m1, m2 = steps // 2, steps * 3 // 4            # 32k/64k and 48k/64k of the run
    # on_step sees the rate after the step's scheduler update: the next step's rate
    want = [0.1 * 0.1 ** ((i >= m1) + (i >= m2)) for i in range(1, steps + 1)]
    np.testing.assert_allclose(lrs, want, rtol=1e-12)
    ck = load_checkpoint(res.checkpoint)
    assert ck.state["scheduler"]["type"] == "MultiStepLR"
    assert ck.state["scheduler"]["milestones"] == [m1, m2]
    assert ck.config["weight_decay"] == 1e-4 and ck.config["augment"] is True


@pytest.mark.parametrize("schedule, check", [
    ("constant", lambda lrs: all(v == 0.1 for v in lrs)),
    ("cosine", lambda lrs: lrs[-1] == pytest.approx(0.0, abs=1e-12) and lrs[0] < 0.1),
    # the rates the 15 steps train with: 5 at each of 0.1, 0.01, 0.001
    ("step", lambda lrs: list(np.round([0.1] + lrs[:-1], 12)) == [0.1] * 5 + [0.01] * 5 + [0.001] * 5),
])
def test_schedule_options(folder, tmp_path, schedule, check):
    lrs = []
    run_training(out=tmp_path / "r", epochs=3, batch_size=8, schedule=schedule,
                 on_step=lambda t, info: lrs.append(t.optimizer.lr), **small(folder))
    assert len(lrs) == 15 and check(lrs), lrs


def test_warmup_then_schedule(folder, tmp_path):
    lrs = []
    run_training(out=tmp_path / "r", epochs=3, batch_size=8, warmup=1, schedule="constant",
                 on_step=lambda t, info: lrs.append(t.optimizer.lr), **small(folder))
    # 5 warm-up iterations from 0.1 * 0.1 up to 0.1 (LinearLR(start_factor=0.1)), then constant
    np.testing.assert_allclose(lrs[:6], [0.1 * (0.1 + 0.9 * i / 5) for i in range(1, 6)] + [0.1],
                               rtol=1e-12)
    assert all(v == pytest.approx(0.1) for v in lrs[5:])


def test_label_smoothing_changes_the_loss(folder, tmp_path):
    a = run_training(out=tmp_path / "a", epochs=1, batch_size=12, **small(folder))
    b = run_training(out=tmp_path / "b", epochs=1, batch_size=12, label_smoothing=0.1,
                     **small(folder))
    assert a.history[0]["train_loss"] != b.history[0]["train_loss"]
    assert load_checkpoint(b.checkpoint).config["label_smoothing"] == 0.1


def test_interrupted_and_resumed_is_bitwise(folder, tmp_path):
    kw = small(folder, epochs=2, batch_size=8, label_smoothing=0.05)
    full = run_training(out=tmp_path / "full", **kw)

    def stop(trainer, info):
        if info["global_step"] == 7:               # mid-epoch 2, between the two milestones
            raise KeyboardInterrupt
    with pytest.raises(TrainingInterrupted):
        run_training(out=tmp_path / "cut", on_step=stop, **kw)
    resumed = run_training(resume=tmp_path / "cut" / CHECKPOINT_NAME, progress=False,
                           log=lambda *_: None)
    assert same(full, resumed)
    assert [h["train_loss"] for h in full.history] == [h["train_loss"] for h in resumed.history]
    assert resumed.trainer.optimizer.lr == full.trainer.optimizer.lr
    # and an epoch-end stop, resumed with more epochs: the milestones stay those planned
    part = run_training(out=tmp_path / "part", **dict(kw, epochs=1))
    more = run_training(resume=part.checkpoint, epochs=2, progress=False, log=lambda *_: None)
    assert load_checkpoint(more.checkpoint).state["scheduler"]["milestones"] == [2, 3]


def test_cli_smoke_resnet20(folder, tmp_path, capsys):
    from gpucnn.cli import main
    rc = main(["train", "--model", "resnet20", "--data", "folder", "--data-dir", str(folder),
               "--epochs", "1", "--batch-size", "12", "--out", str(tmp_path / "r"),
               "--label-smoothing", "0.1", "--device", "cpu", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "sgd lr 0.1" in out and "multistep" in out and "random crops and flips" in out, out
    ck = load_checkpoint(tmp_path / "r" / CHECKPOINT_NAME)
    assert ck.config["model"] == "resnet20" and ck.state["global_step"] == 3
    rc = main(["train", "--model", "resnet20", "--data", "folder", "--data-dir", str(folder),
               "--epochs", "1", "--batch-size", "12", "--out", str(tmp_path / "s"),
               "--schedule", "cosine", "--no-augment", "--weight-decay", "0", "--device", "cpu",
               "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "cosine" in out and "random crops" not in out, out
