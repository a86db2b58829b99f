"""The trainer with a learning-rate schedule and batch augmentation: the rates it trains
with, and bitwise resume (schedule state and augmentation generators in the checkpoint)."""
from __future__ import annotations

import numpy as np
import pytest

import gpucnn as nn
from gpucnn import transforms as T
from gpucnn.checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint
from gpucnn.data import load_dataset
from gpucnn.lr_scheduler import CosineAnnealingLR, MultiStepLR, StepLR
from gpucnn.models import lenet
from gpucnn.trainer import Trainer, TrainingInterrupted, make_optimizer


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", limit_train=192, limit_test=64)


def make(data, run_dir=None, sched=("step", lambda o: MultiStepLR(o, [4, 9], 0.5)), aug=True,
         seed=0, **kw):
    nn.manual_seed(seed)
    model = lenet(data.input_shape, data.num_classes)
    opt = make_optimizer("sgd", model.parameters(), 0.05)
    interval, build = sched if sched else ("epoch", None)
    transform = (T.Compose([T.RandomCrop(8, padding=1, rng=seed + 1), T.RandomHorizontalFlip()])
                 if aug else None)
    return Trainer(model, opt, data.train, data.test, batch_size=32, seed=seed, run_dir=run_dir,
                   progress=False, log=lambda *_: None, scheduler=build(opt) if build else None,
                   scheduler_interval=interval, transform=transform, **kw)


def same(a, b):
    sa, sb = a.model.state_dict(), b.model.state_dict()
    return all(np.array_equal(sa[k], sb[k]) for k in sa) and \
        [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]


def test_rates_per_step_and_per_epoch(digits):
    seen = []
    t = make(digits, on_step=lambda tr, info: seen.append(tr.optimizer.lr))
    t.fit(2)          # 6 steps per epoch; on_step runs after the schedule's step, so it sees
    assert seen == [0.05] * 3 + [0.025] * 5 + [0.0125] * 4      # the rate of the next step
    seen.clear()
    t = make(digits, sched=("epoch", lambda o: StepLR(o, 1, 0.1)),
             on_step=lambda tr, info: seen.append(tr.optimizer.lr))
    t.fit(3)
    np.testing.assert_allclose(seen, [0.05] * 6 + [0.005] * 6 + [0.0005] * 6, rtol=1e-15)


def test_augmentation_changes_training_and_is_seeded(digits):
    runs = []
    for aug in (True, True, False):      # the flips draw from the global generator: fit each
        runs.append(make(digits, aug=aug))   # right after make() reseeds it
        runs[-1].fit(1)
    a, b, c = runs
    assert same(a, b) and not same(a, c)


@pytest.mark.parametrize("interval", ["step", "epoch"])
def test_interrupt_mid_epoch_and_resume_is_bitwise(tmp_path, digits, interval):
    sched = (interval, lambda o: CosineAnnealingLR(o, T_max=7 if interval == "epoch" else 20))
    full = make(digits, sched=sched)
    full.fit(3)

    def stop(trainer, info):
        if info["global_step"] == 8:
            raise KeyboardInterrupt
    t = make(digits, tmp_path / "run", sched=sched, on_step=stop)
    with pytest.raises(TrainingInterrupted):
        t.fit(3)
    nn.manual_seed(999)                      # the checkpoint restores the global generator too
    resumed = make(digits, tmp_path / "run", sched=sched, seed=0)
    resumed.restore(tmp_path / "run" / CHECKPOINT_NAME)
    assert resumed.scheduler.last_epoch == (8 if interval == "step" else 1)
    resumed.fit(3)
    assert same(full, resumed)
    assert resumed.optimizer.lr == full.optimizer.lr
    assert resumed.scheduler.state_dict() == full.scheduler.state_dict()


def test_schedule_mismatch_and_bad_arguments(tmp_path, digits):
    t = make(digits, tmp_path / "run")
    t.fit(1)
    ck = load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)
    assert ck.state["scheduler"]["type"] == "MultiStepLR"
    with pytest.raises(CheckpointError, match="trained with MultiStepLR; this trainer has StepLR"):
        make(digits, sched=("step", lambda o: StepLR(o, 3))).restore(ck)
    with pytest.raises(CheckpointError, match="trained with MultiStepLR; this trainer has no schedule"):
        make(digits, sched=None).restore(ck)
    ck.state["scheduler"] = dict(ck.state["scheduler"], _last_lr="x")
    with pytest.raises(CheckpointError, match="MultiStepLR.load_state_dict: malformed state"):
        make(digits).restore(ck)
    nn.manual_seed(0)
    model = lenet(digits.input_shape, digits.num_classes)
    opt, other = (make_optimizer("sgd", model.parameters(), 0.1) for _ in range(2))
    with pytest.raises(ValueError, match="scheduler was built over another optimizer"):
        Trainer(model, opt, digits.train, scheduler=StepLR(other, 2))
    with pytest.raises(ValueError, match="lr_decay and a scheduler"):
        Trainer(model, opt, digits.train, scheduler=StepLR(opt, 2), lr_decay=0.5)
    with pytest.raises(ValueError, match="scheduler_interval must be one of epoch, step"):
        Trainer(model, opt, digits.train, scheduler=StepLR(opt, 2), scheduler_interval="batch")
    with pytest.raises(TypeError, match="transform must be callable"):
        Trainer(model, opt, digits.train, transform=3)


# ----------------------------------------------------------------------------- gpucnn train

SMALL = dict(data="digits", limit_train=192, limit_test=64, batch_size=32, device="cpu",
             progress=False, log=lambda *_: None)


def test_run_training_with_schedule_and_augment_resumes_exactly(tmp_path):
    from gpucnn.runs import run_training
    full = run_training(out=tmp_path / "full", epochs=2, schedule="multistep", augment=True,
                        optimizer="sgd", lr=0.05, **SMALL)
    ck = load_checkpoint(full.checkpoint)
    assert ck.config["schedule"] == "multistep" and ck.config["augment"] is True
    assert ck.config["lr_decay"] == 1.0
    assert ck.state["scheduler"]["milestones"] == [6, 9]        # 12 iterations in all
    assert full.trainer.optimizer.lr == pytest.approx(0.05 * 0.01)
    assert len(ck.state["transform_rng"]) == 2

    def stop(trainer, info):
        if info["global_step"] == 8:
            raise KeyboardInterrupt
    with pytest.raises(TrainingInterrupted):
        run_training(out=tmp_path / "cut", epochs=2, schedule="multistep", augment=True,
                     optimizer="sgd", lr=0.05, on_step=stop, **SMALL)
    resumed = run_training(resume=tmp_path / "cut" / CHECKPOINT_NAME, progress=False,
                           log=lambda *_: None)
    assert same(full.trainer, resumed.trainer)
    no_aug = run_training(out=tmp_path / "plain", epochs=2, schedule="multistep",
                          optimizer="sgd", lr=0.05, **SMALL)
    assert not same(full.trainer, no_aug.trainer)


def test_schedule_config_errors(tmp_path):
    from gpucnn.runs import TrainConfig
    with pytest.raises(ValueError, match="lr_decay 0.5 and schedule 'cosine' would both set"):
        TrainConfig(schedule="cosine", lr_decay=0.5).resolved()
    with pytest.raises(ValueError, match="schedule must be one of none, constant, multistep, step, cosine"):
        TrainConfig(schedule="linear").resolved()
    assert TrainConfig(data="mnist", schedule="cosine").resolved().lr_decay == 1.0
    assert TrainConfig(data="mnist").resolved().lr_decay == 0.3


def test_cli_schedule_and_augment(tmp_path, capsys):
    from gpucnn.cli import main
    rc = main(["train", "--out", str(tmp_path / "r"), "--epochs", "1", "--model", "mlp",
               "--schedule", "cosine", "--augment", "--limit-train", "64", "--limit-test", "32",
               "--device", "cpu", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "(cosine schedule per iteration), random crops and flips" in out, out
    ck = load_checkpoint(tmp_path / "r" / CHECKPOINT_NAME)
    assert ck.state["scheduler"]["type"] == "CosineAnnealingLR" and ck.state["scheduler"]["T_max"] == 2
