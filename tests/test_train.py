"""Training loop, checkpoints (format, validation, atomicity), resume, Ctrl-C, divergence, outputs."""
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

import gpucnn as nn
from gpucnn.data import ImageSet, load_dataset
from gpucnn.models import build_model, lenet
from gpucnn.checkpoint import (CHECKPOINT_NAME, CheckpointError, atomic_write, load_checkpoint,
                               save_checkpoint)
from gpucnn.evaluation import evaluate, predict_proba
from gpucnn.runs import load_model, run_training
from gpucnn.trainer import Trainer, TrainingDiverged, TrainingInterrupted, fit, make_optimizer

MNIST_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist-t10k"


@pytest.fixture(scope="module")
def small_digits():
    return load_dataset("digits", limit_train=192, limit_test=100)


def make_trainer(data, run_dir=None, optimizer="adam", lr=1e-3, seed=0, **kw):
    nn.manual_seed(seed)
    model = lenet(data.input_shape, data.num_classes)
    opt = make_optimizer(optimizer, model.parameters(), lr)
    return Trainer(model, opt, data.train, data.test, batch_size=32, seed=seed, run_dir=run_dir,
                   config={"note": "test"}, progress=False, log=lambda *_: None, **kw)


def params_of(model):
    return {k: v.copy() for k, v in model.state_dict().items()}


def assert_same_state(a, b):
    pa, pb = params_of(a.model), params_of(b.model)
    assert pa.keys() == pb.keys()
    for k in pa:
        assert np.array_equal(pa[k], pb[k]), f"parameter {k} differs"
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert sa["state"].keys() == sb["state"].keys()
    for k in sa["state"]:
        assert np.array_equal(np.asarray(sa["state"][k]), np.asarray(sb["state"][k])), f"optimizer {k} differs"
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    assert [h["test_acc"] for h in a.history] == [h["test_acc"] for h in b.history]


# --------------------------------------------------------------------------- checkpoint format

def test_checkpoint_roundtrip_without_pickle(tmp_path, small_digits):
    t = make_trainer(small_digits)
    t.fit(1)
    path = t.save(tmp_path / "c.npz")
    with zipfile.ZipFile(path) as z:      # a plain npz: arrays and one JSON string
        names = z.namelist()
    assert "__meta__.npy" in names and "model/0.weight.npy" in names
    ck = load_checkpoint(path)            # load_checkpoint uses allow_pickle=False throughout
    assert ck.config == {"note": "test"}
    assert ck.state["epoch"] == 1 and ck.state["global_step"] == 6
    for k, v in t.model.state_dict().items():
        assert np.array_equal(ck.model_state[k], v) and ck.model_state[k].dtype == np.float32
    sd = t.optimizer.state_dict()
    assert ck.optimizer_state["type"] == "Adam" and ck.optimizer_state["defaults"]["betas"] == (0.9, 0.999)
    assert ck.optimizer_state["state"]["0.step"] == 6
    assert np.array_equal(ck.optimizer_state["state"]["2.exp_avg_sq"], sd["state"]["2.exp_avg_sq"])
    with np.load(path, allow_pickle=False) as f:
        meta = json.loads(str(f["__meta__"][()]))
    assert meta["format"] == "gpucnn-checkpoint" and meta["version"] == 1


def _checkpoint_bytes(tmp_path, small_digits):
    t = make_trainer(small_digits)
    t.fit(1)
    return t, t.save(tmp_path / "good.npz").read_bytes()


@pytest.mark.parametrize("damage, message", [
    ("truncate", "corrupt or truncated"),
    ("flip", "corrupt or truncated"),
    ("empty", "the file is empty"),
    ("text", "not an .npz archive"),
    ("foreign", "no __meta__ entry"),
    ("wrong_format", "format 'something-else'"),
    ("future", "format version 99"),
    ("bad_json", "not valid JSON"),
    ("missing_param", "missing parameter arrays: 0.weight"),
])
def test_damaged_checkpoints_fail_clearly_and_change_nothing(tmp_path, small_digits, damage, message):
    t, good = _checkpoint_bytes(tmp_path, small_digits)
    bad = tmp_path / "bad.npz"
    if damage == "truncate":
        bad.write_bytes(good[: len(good) // 2])
    elif damage == "flip":
        with zipfile.ZipFile(tmp_path / "good.npz") as z:
            info = z.getinfo("model/0.weight.npy")
        raw = bytearray(good)
        pos = info.header_offset + 30 + len(info.filename) + len(info.extra) + 200
        raw[pos] ^= 0xFF                  # inside the stored array data: the zip CRC catches it
        bad.write_bytes(bytes(raw))
    elif damage == "empty":
        bad.write_bytes(b"")
    elif damage == "text":
        bad.write_text("hello")
    elif damage == "foreign":
        np.savez(bad, weights=np.zeros(3))
    else:
        with np.load(tmp_path / "good.npz", allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        meta = json.loads(str(arrays["__meta__"][()]))
        if damage == "wrong_format":
            meta["format"] = "something-else"
        elif damage == "future":
            meta["version"] = 99
        elif damage == "missing_param":
            del arrays["model/0.weight"]
        arrays["__meta__"] = np.array("{not json" if damage == "bad_json" else json.dumps(meta))
        np.savez(bad, **arrays)
    before = params_of(t.model)
    opt_before = t.optimizer.state_dict()
    with pytest.raises(CheckpointError, match=message) as info:
        t.restore(bad)
    assert "bad.npz" in str(info.value)
    after = params_of(t.model)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert t.optimizer.state_dict()["state"]["0.step"] == opt_before["state"]["0.step"]
    assert t.epoch == 1


def test_checkpoint_for_another_model_changes_nothing(tmp_path, small_digits):
    t, _ = _checkpoint_bytes(tmp_path, small_digits)
    nn.manual_seed(0)
    other = build_model("mlp", small_digits.input_shape, 10)
    t2 = Trainer(other, make_optimizer("adam", other.parameters(), 1e-3), small_digits.train,
                 batch_size=32, progress=False, log=None)
    before = params_of(other)
    with pytest.raises(CheckpointError, match="does not fit this model"):
        t2.restore(tmp_path / "good.npz")
    assert all(np.array_equal(before[k], v) for k, v in params_of(other).items())
    assert t2.epoch == 0


def test_missing_checkpoint():
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint("/nonexistent/dir/checkpoint.npz")


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old content")

    def broken(f):
        f.write(b"half of the new")
        raise OSError("disk full (simulated)")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]  # no temporary left behind
    atomic_write(target, lambda f: f.write(b"new"))
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_save_checkpoint_refuses_objects(tmp_path, small_digits):
    t = make_trainer(small_digits)
    with pytest.raises(TypeError, match="cannot store a object"):
        save_checkpoint(tmp_path / "x.npz", t.model, config={"bad": object()})
    assert not (tmp_path / "x.npz").exists()


# --------------------------------------------------------------------------- resume

@pytest.mark.parametrize("optimizer, lr, decay", [("adam", 1e-3, 1.0), ("sgd", 0.05, 0.5)])
def test_two_plus_two_epochs_equal_four_bitwise(tmp_path, small_digits, optimizer, lr, decay):
    full = make_trainer(small_digits, optimizer=optimizer, lr=lr, lr_decay=decay)
    full.fit(4)

    first = make_trainer(small_digits, tmp_path / "run", optimizer=optimizer, lr=lr, lr_decay=decay)
    first.fit(2)
    # a different seed, lr and decay here: the checkpoint's state must win
    resumed = make_trainer(small_digits, tmp_path / "run", optimizer=optimizer, lr=lr * 3, seed=123,
                           lr_decay=0.9)
    resumed.restore(tmp_path / "run" / CHECKPOINT_NAME)  # the seed above is overwritten by the checkpoint state
    assert resumed.epoch == 2
    resumed.fit(4)
    assert_same_state(full, resumed)
    assert len(resumed.history) == 4


def test_ctrl_c_mid_epoch_saves_last_completed_step_and_resumes_exactly(tmp_path, small_digits):
    full = make_trainer(small_digits)
    full.fit(3)

    def interrupt(trainer, info):
        if info["global_step"] == 9:        # epoch 2, step 3 of 6
            raise KeyboardInterrupt

    t = make_trainer(small_digits, tmp_path / "run", on_step=interrupt)
    with pytest.raises(TrainingInterrupted) as info:
        t.fit(3)
    msg = str(info.value)
    assert "epoch 2, step 3 of 6" in msg and "global step 9" in msg
    assert f"Resume with: trainer.restore('{tmp_path / 'run' / CHECKPOINT_NAME}')" in msg
    ck = load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)
    assert ck.state["global_step"] == 9 and ck.state["step_in_epoch"] == 3 and ck.state["epoch"] == 1

    resumed = make_trainer(small_digits, tmp_path / "run")
    resumed.restore(ck)
    resumed.fit(3)
    assert_same_state(full, resumed)


def test_lr_decay_per_epoch(small_digits):
    seen = {}

    def record(trainer, info):
        seen.setdefault(info["epoch"], set()).add(trainer.optimizer.lr)

    t = make_trainer(small_digits, optimizer="sgd", lr=0.04, lr_decay=0.5, on_step=record)
    t.fit(3)
    assert seen == {1: {0.04}, 2: {0.02}, 3: {0.01}}
    with pytest.raises(ValueError, match="lr_decay must be in"):
        make_trainer(small_digits, lr_decay=1.5)


def test_keyboard_interrupt_without_run_dir_says_nothing_saved(small_digits):
    def interrupt(trainer, info):
        raise KeyboardInterrupt

    t = make_trainer(small_digits, on_step=interrupt)
    with pytest.raises(TrainingInterrupted, match="no checkpoint was saved"):
        t.fit(1)


# --------------------------------------------------------------------------- divergence

def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, small_digits):
    def poison(trainer, info):
        if info["global_step"] == 8:        # epoch 2, after step 2: the next step sees NaN weights
            trainer.model[0].weight.data[...] = np.nan

    t = make_trainer(small_digits, tmp_path / "run", on_step=poison)
    ckpt = tmp_path / "run" / CHECKPOINT_NAME
    with pytest.raises(TrainingDiverged) as info:
        t.fit(3)
    msg = str(info.value)
    assert "epoch 2, step 3 (global step 9)" in msg
    assert "lower learning rate" in msg and "--lr 0.0001" in msg
    assert f"last good checkpoint ({ckpt}, step 6) is kept" in msg
    assert info.value.epoch == 2 and info.value.step == 3 and info.value.checkpoint == ckpt
    ck = load_checkpoint(ckpt)
    assert ck.state["global_step"] == 6
    assert all(np.isfinite(v).all() for v in ck.model_state.values())


def test_too_large_learning_rate_is_reported_as_divergence(small_digits):
    t = make_trainer(small_digits, optimizer="sgd", lr=50.0)
    with np.errstate(all="ignore"), pytest.raises(TrainingDiverged, match=r"epoch 1, step \d+ \(global step \d+\); training stopped: .*--lr 5;"):
        t.fit(2)


# --------------------------------------------------------------------------- outputs and evaluation

def test_run_directory_outputs(tmp_path, small_digits):
    t = make_trainer(small_digits, tmp_path / "run")
    t.fit(2)
    run = tmp_path / "run"
    hist = json.loads((run / "history.json").read_text())
    assert [e["epoch"] for e in hist["epochs"]] == [1, 2]
    assert hist["epochs"][1]["test_acc"] == t.history[1]["test_acc"]
    rows = (run / "history.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,train_loss,train_acc,test_loss,test_acc") and len(rows) == 3
    png = run / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image as mpimg
    assert mpimg.imread(png).shape[:2] == (400, 1000)
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.npz", "curves.png", "history.csv",
                                                     "history.json"]


def test_evaluate_and_predict_proba(small_digits):
    t = make_trainer(small_digits)
    t.fit(1)
    res = evaluate(t.model, small_digits.test, batch_size=30, classes=small_digits.classes)
    probs = predict_proba(t.model, small_digits.test.images)
    pred = probs.argmax(axis=1)
    assert np.allclose(probs.sum(axis=1), 1.0)
    assert res.correct == int((pred == small_digits.test.labels).sum())
    assert res.accuracy == res.correct / 100 and res.total == 100
    assert res.confusion.sum() == 100 and np.array_equal(res.confusion.sum(axis=1),
                                                         np.bincount(small_digits.test.labels, minlength=10))
    rows = res.per_class()
    assert sum(r["correct"] for r in rows) == res.correct
    assert "all" in res.format_table().splitlines()[-1]
    assert t.model.training  # evaluate restores the mode


def test_fit_accepts_arrays_and_learns_digits():
    d = load_dataset("digits")
    nn.manual_seed(0)
    model = build_model("mlp", d.input_shape, 10)
    trainer = fit(model, (d.train.images, d.train.labels), (d.test.images, d.test.labels),
                  epochs=3, lr=1e-3, batch_size=32, progress=False, log=None)
    assert len(trainer.history) == 3
    assert trainer.history[-1]["test_acc"] > 0.9          # chance is 0.1
    assert trainer.history[-1]["train_loss"] < trainer.history[0]["train_loss"]


# --------------------------------------------------------------------------- run_training (the CLI engine)

def test_run_training_refuses_to_overwrite_a_run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / CHECKPOINT_NAME).write_bytes(b"someone else's file")
    (out / "history.json").write_text("{}")
    with pytest.raises(FileExistsError, match="refusing to overwrite checkpoint.npz, history.json"):
        run_training(out=out, epochs=1, model="mlp", limit_train=64, limit_test=32, progress=False,
                     log=lambda *_: None)
    assert (out / CHECKPOINT_NAME).read_bytes() == b"someone else's file"
    assert (out / "history.json").read_text() == "{}"


def test_run_training_resume_and_allowed_changes(tmp_path):
    quiet = dict(progress=False, log=lambda *_: None)
    r1 = run_training(out=tmp_path / "a", epochs=1, model="mlp", limit_train=64, limit_test=32,
                      device="cpu", **quiet)
    with pytest.raises(ValueError, match="--lr cannot change when resuming"):
        run_training(resume=r1.checkpoint, epochs=2, lr=0.5, **quiet)
    with pytest.raises(ValueError, match="already has 1 epochs"):
        run_training(resume=r1.checkpoint, **quiet)
    r2 = run_training(resume=r1.checkpoint, epochs=2, **quiet)
    assert r2.run_dir == tmp_path / "a" and [h["epoch"] for h in r2.history] == [1, 2]
    direct = run_training(out=tmp_path / "b", epochs=2, model="mlp", limit_train=64, limit_test=32,
                          device="cpu", **quiet)
    assert direct.history[-1]["train_loss"] == r2.history[-1]["train_loss"]
    model, ck, cfg = load_model(r2.checkpoint, device="cpu")
    assert cfg.model == "mlp" and ck.state["dataset"]["input_shape"] == [1, 8, 8]
    for k, v in direct.trainer.model.state_dict().items():
        assert np.array_equal(model.state_dict()[k], v)


def test_run_training_interrupted_says_how_to_resume_with_the_command(tmp_path):
    def interrupt(trainer, info):
        if info["global_step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted) as info:
        run_training(out=tmp_path / "r", epochs=2, model="mlp", limit_train=64, limit_test=32,
                     progress=False, log=lambda *_: None, on_step=interrupt)
    ckpt = tmp_path / "r" / CHECKPOINT_NAME
    assert f"Resume with: gpucnn train --resume {ckpt} --epochs 2" in str(info.value)
    assert load_checkpoint(ckpt).state["global_step"] == 3
    r = run_training(resume=ckpt, progress=False, log=lambda *_: None)
    assert [h["epoch"] for h in r.history] == [1, 2]


def test_failed_run_leaves_no_empty_directory(tmp_path):
    with pytest.raises(Exception, match="MNIST"):
        run_training(out=tmp_path / "new", data="mnist", data_dir=tmp_path, progress=False,
                     log=lambda *_: None)
    assert not (tmp_path / "new").exists()


# --------------------------------------------------------------------------- real digits

@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"real MNIST files not present at {MNIST_DIR}")
def test_lenet_learns_real_mnist_digits():
    d = load_dataset("mnist", MNIST_DIR, t10k_split=8000, limit_train=2000)
    test = ImageSet(d.test.images[:1000], d.test.labels[:1000])
    nn.manual_seed(0)
    model = lenet(d.input_shape, 10)
    trainer = fit(model, d.train, test, epochs=1, lr=2e-3, batch_size=32, progress=False, log=None)
    assert trainer.history[0]["test_acc"] >= 0.88, trainer.history  # 0.918 when written; chance is 0.1


# --------------------------------------------------------------------------- other backends

def test_trainer_on_other_backend_matches_cpu(other_backend, backend_entry, tmp_path):
    """The loop, evaluation and checkpoints work unchanged on the CUDA backend (or its CPU emulator)."""
    from contextlib import nullcontext
    from gpucnn import backends, tolerances
    d = load_dataset("digits", limit_train=64, limit_test=32)

    def run(on_other, run_dir):
        nn.manual_seed(0)
        model = lenet(d.input_shape, 10)
        ctx = nullcontext()
        if on_other:
            if backend_entry.device is not None:
                model.to(backend_entry.device)
            else:
                ctx = backends.override_backend(other_backend)
        with ctx:
            opt = make_optimizer("adam", model.parameters(), 1e-3)
            t = Trainer(model, opt, d.train, d.test, batch_size=16, run_dir=run_dir, progress=False, log=None)
            t.fit(2)
            res = evaluate(model, d.test)
            return t, res, load_checkpoint(run_dir / CHECKPOINT_NAME)

    ref, ref_res, ref_ck = run(False, tmp_path / "cpu")
    got, got_res, got_ck = run(True, tmp_path / "other")
    if backend_entry.device is not None:
        assert got.model.device == other_backend.name
    tol = tolerances.TRAINING["float32"]
    losses = [h["train_loss"] for h in got.history], [h["train_loss"] for h in ref.history]
    assert tolerances.compare(np.array(losses[0]), np.array(losses[1]), tol)[2], losses
    for name, a in ref_ck.model_state.items():
        assert got_ck.model_state[name].dtype == a.dtype
        assert tolerances.compare(got_ck.model_state[name], a, tol)[2], name
    assert abs(got_res.correct - ref_res.correct) <= 1


def test_checkpoint_survives_kill_9_in_the_middle_of_a_write(tmp_path):
    """A process SIGKILLed halfway through rewriting its checkpoint leaves the previous one intact."""
    import signal
    import subprocess
    import sys
    if not hasattr(signal, "SIGKILL"):
        pytest.skip("no SIGKILL on this platform")
    path = tmp_path / CHECKPOINT_NAME
    code = (
        "import os, signal, sys, numpy as np, gpucnn as nn\n"
        "import gpucnn.checkpoint as T\n"
        "m = nn.Sequential(nn.Linear(300, 10))\n"
        "T.save_checkpoint(sys.argv[1], m, config={'i': 1})\n"
        "real_savez = np.savez\n"
        "def savez_then_die(f, **arrays):\n"
        "    real_savez(f, **arrays)\n"
        "    f.seek(f.tell() // 2)\n"            # half of the new file is on disk ...
        "    f.truncate()\n"
        "    f.flush(); os.fsync(f.fileno())\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"  # ... when the process dies
        "T.np.savez = savez_then_die\n"
        "m[0].bias.data[0] = 42\n"
        "T.save_checkpoint(sys.argv[1], m, config={'i': 2})\n")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]) + os.pathsep
               + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    ck = load_checkpoint(path)                 # the previous checkpoint, whole
    assert ck.config == {"i": 1} and ck.model_state["0.bias"][0] != 42


def test_old_gpucnn_train_imports_still_work():
    """gpucnn.train re-exports the names the README and older scripts import (same objects)."""
    import gpucnn.checkpoint
    import gpucnn.evaluation
    import gpucnn.plots
    import gpucnn.runs
    import gpucnn.train as old
    import gpucnn.trainer
    homes = (gpucnn.checkpoint, gpucnn.evaluation, gpucnn.plots, gpucnn.runs, gpucnn.trainer)
    for name in old.__all__:
        owners = [m for m in homes if getattr(m, name, None) is getattr(old, name)]
        assert owners, f"gpucnn.train.{name} is not the object of any new module"
