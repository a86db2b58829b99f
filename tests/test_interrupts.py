"""Interrupts at any point of training (issue 9, item 1).

Ctrl-C (SIGINT) or SIGTERM at the first step, a middle step, the last step of an epoch,
during the evaluation, during a parameter update, during the checkpoint write and during
start-up: each leaves a checkpoint that resumes, and the resumed run equals the
uninterrupted one bitwise.  Every interrupt is injected at a chosen point (a callback,
a wrapped function, ``os.kill`` to this process), never by timing.
"""
import os
import re
import signal

import numpy as np
import pytest

import gpucnn as nn
import gpucnn.checkpoint as checkpoint_module
import gpucnn.trainer as trainer_module
from gpucnn.checkpoint import CHECKPOINT_NAME, load_checkpoint
from gpucnn.cli import main
from gpucnn.data import load_dataset
from gpucnn.models import lenet
from gpucnn.trainer import Trainer, TrainingInterrupted, make_optimizer

EPOCHS = 3
STEPS = 6          # 192 images, batch 32


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits", limit_train=192, limit_test=100)


def make_trainer(data, run_dir=None, **kw):
    nn.manual_seed(0)
    model = lenet(data.input_shape, data.num_classes)
    opt = make_optimizer("adam", model.parameters(), 1e-3)
    return Trainer(model, opt, data.train, data.test, batch_size=32, seed=0, run_dir=run_dir,
                   config={"note": "test"}, progress=False, log=lambda *_: None, **kw)


@pytest.fixture(scope="module")
def full(data):
    t = make_trainer(data)
    t.fit(EPOCHS)
    return t


def assert_resumes_to(full, data, run_dir):
    """Resume the checkpoint in run_dir until EPOCHS; the result equals the uninterrupted run."""
    resumed = make_trainer(data, run_dir)
    resumed.restore(run_dir / CHECKPOINT_NAME)
    resumed.fit(EPOCHS)
    for k, v in full.model.state_dict().items():
        assert np.array_equal(resumed.model.state_dict()[k], v), k
    a, b = full.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert a.keys() == b.keys() and all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)
    for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
        assert [h[key] for h in resumed.history] == [h[key] for h in full.history], key
    return resumed


def kill_self(sig=signal.SIGINT, times=1):
    for _ in range(times):
        os.kill(os.getpid(), sig)


def at_step(n, action):
    def on_step(trainer, info):
        if info["global_step"] == n:
            action()
    return on_step


def raise_kbd():
    raise KeyboardInterrupt


@pytest.mark.parametrize("case, global_step, sig", [
    ("first step, KeyboardInterrupt", 1, None),
    ("middle step, Ctrl-C", 9, signal.SIGINT),
    ("last step of epoch 1, Ctrl-C", STEPS, signal.SIGINT),      # the "step 250 of 250"
    ("last step of epoch 2, SIGTERM", 2 * STEPS, signal.SIGTERM),
    ("middle step, SIGTERM", 4, signal.SIGTERM),
])
def test_interrupt_at_a_step_resumes_bitwise(tmp_path, data, full, case, global_step, sig):
    run = tmp_path / "run"
    action = raise_kbd if sig is None else (lambda: kill_self(sig))
    t = make_trainer(data, run, on_step=at_step(global_step, action))
    with pytest.raises(TrainingInterrupted) as info:
        t.fit(EPOCHS)
    ck = load_checkpoint(run / CHECKPOINT_NAME)
    assert ck.state["global_step"] == global_step, str(info.value)
    assert f"global step {global_step}" in str(info.value)
    if sig == signal.SIGTERM:
        assert "(SIGTERM)" in str(info.value)
    if global_step % STEPS == 0:   # every step of the epoch done, its evaluation not yet run
        assert ck.state["step_in_epoch"] == STEPS and "evaluation runs on resume" in str(info.value)
    assert_resumes_to(full, data, run)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_last_step_checkpoint_resumes_through_the_command(tmp_path, monkeypatch, capsys):
    """The issue's report, end to end: Ctrl-C as epoch 1 finishes, then the printed command."""
    args = ["--model", "mlp", "--limit-train", "128", "--limit-test", "64", "--device", "cpu",
            "--no-progress"]
    assert main(["train", "--out", str(tmp_path / "ref"), "--epochs", "2", *args]) == 0
    capsys.readouterr()
    original = Trainer._after_step

    def after_step(self, loss, bar):
        if self.epoch == 0 and self.step_in_epoch == len(self.iterator):
            kill_self()
        return original(self, loss, bar)

    monkeypatch.setattr(Trainer, "_after_step", after_step)
    assert main(["train", "--out", str(tmp_path / "run"), "--epochs", "2", *args]) == 130
    err = capsys.readouterr().err
    assert "step 4 of 4" in err, err
    command = re.search(r"Resume with: gpucnn (train --resume \S+ --epochs 2)", err).group(1).split()
    monkeypatch.setattr(Trainer, "_after_step", original)
    assert main(command + ["--no-progress"]) == 0, capsys.readouterr().err
    ref, got = load_checkpoint(tmp_path / "ref" / CHECKPOINT_NAME), load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)
    for k, v in ref.model_state.items():
        assert np.array_equal(got.model_state[k], v), k
    assert got.state["history"] == ref.state["history"] or \
        [h["train_loss"] for h in got.state["history"]] == [h["train_loss"] for h in ref.state["history"]]


def _evaluate_then(calls, when, action):
    real = trainer_module.evaluate

    def evaluate(*a, **k):
        calls.append(1)
        if len(calls) == when:
            action()
        return real(*a, **k)
    return evaluate


def test_second_ctrl_c_during_evaluation(tmp_path, data, full, monkeypatch):
    """Stop at once while epoch 2 is evaluated: its steps are saved, its evaluation reruns on resume."""
    calls = []
    monkeypatch.setattr(trainer_module, "evaluate", _evaluate_then(calls, 2, raise_kbd))
    t = make_trainer(data, tmp_path / "run")
    with pytest.raises(TrainingInterrupted, match="step 6 of 6"):
        t.fit(EPOCHS)
    ck = load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)
    assert (ck.state["epoch"], ck.state["step_in_epoch"], ck.state["global_step"]) == (1, STEPS, 2 * STEPS)
    monkeypatch.undo()
    assert_resumes_to(full, data, tmp_path / "run")


def test_first_ctrl_c_during_evaluation_finishes_the_epoch(tmp_path, data, full, monkeypatch):
    calls = []
    monkeypatch.setattr(trainer_module, "evaluate", _evaluate_then(calls, 1, kill_self))
    t = make_trainer(data, tmp_path / "run")
    with pytest.raises(TrainingInterrupted, match="the end of epoch 1"):
        t.fit(EPOCHS)
    ck = load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)
    assert (ck.state["epoch"], ck.state["step_in_epoch"]) == (1, 0) and len(ck.state["history"]) == 1
    monkeypatch.undo()
    assert_resumes_to(full, data, tmp_path / "run")


def test_second_ctrl_c_during_a_parameter_update_waits_for_it(tmp_path, data, full, monkeypatch):
    t = make_trainer(data, tmp_path / "run")
    real_step = t.optimizer.step
    count = []

    def step():
        count.append(1)
        if len(count) == 8:
            kill_self(times=2)     # the second would stop at once: it waits for the update to end
        real_step()

    monkeypatch.setattr(t.optimizer, "step", step)
    with pytest.raises(TrainingInterrupted) as info:
        t.fit(EPOCHS)
    assert "inconsistent" not in str(info.value)
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME).state["global_step"] == 8
    assert_resumes_to(full, data, tmp_path / "run")


def _failing_savez(fail_from, fail_until, action, calls):
    """np.savez that writes half an archive then is interrupted, on calls fail_from..fail_until."""
    real = np.savez

    def savez(f, **arrays):
        calls.append(1)
        if fail_from <= len(calls) <= fail_until:
            real(f, **arrays)
            f.seek(f.tell() // 2)
            f.truncate()
            action()
            return
        real(f, **arrays)
    return savez


def test_interrupt_during_every_later_checkpoint_write_keeps_the_old_one(tmp_path, data, full, monkeypatch):
    """A KeyboardInterrupt inside each write after the first: the epoch-1 checkpoint stays whole."""
    calls = []
    monkeypatch.setattr(checkpoint_module.np, "savez", _failing_savez(2, 99, raise_kbd, calls))
    t = make_trainer(data, tmp_path / "run")
    with pytest.raises(TrainingInterrupted) as info:
        t.fit(EPOCHS)
    monkeypatch.undo()
    ck = tmp_path / "run" / CHECKPOINT_NAME
    assert "could not be written" in str(info.value) and f"last checkpoint ({ck}, step 6) is kept" in str(info.value)
    assert load_checkpoint(ck).state["global_step"] == STEPS
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".checkpoint")) == []
    assert_resumes_to(full, data, tmp_path / "run")


def test_interrupt_during_one_checkpoint_write_saves_again(tmp_path, data, full, monkeypatch):
    calls = []
    monkeypatch.setattr(checkpoint_module.np, "savez", _failing_savez(2, 2, raise_kbd, calls))
    t = make_trainer(data, tmp_path / "run")
    with pytest.raises(TrainingInterrupted, match="the end of epoch 2"):
        t.fit(EPOCHS)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME).state["global_step"] == 2 * STEPS
    assert_resumes_to(full, data, tmp_path / "run")


def test_two_ctrl_c_during_a_checkpoint_write_let_it_finish(tmp_path, data, full, monkeypatch):
    real = np.savez
    calls = []

    def savez(f, **arrays):
        calls.append(1)
        if len(calls) == 2:
            kill_self(times=2)    # both arrive while the epoch-2 checkpoint is being written
        real(f, **arrays)

    monkeypatch.setattr(checkpoint_module.np, "savez", savez)
    t = make_trainer(data, tmp_path / "run")
    with pytest.raises(TrainingInterrupted, match="the end of epoch 2"):
        t.fit(EPOCHS)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME).state["global_step"] == 2 * STEPS
    assert_resumes_to(full, data, tmp_path / "run")


@pytest.mark.parametrize("where", ["load", "build", "parse"])
def test_ctrl_c_during_start_up_is_one_line(tmp_path, monkeypatch, capsys, where):
    import gpucnn.cli as cli
    import gpucnn.runs as runs
    if where == "load":
        monkeypatch.setattr(runs, "dataset_for", lambda *a, **k: raise_kbd())
    elif where == "build":
        monkeypatch.setattr(runs, "make_optimizer", lambda *a, **k: raise_kbd())
    else:
        monkeypatch.setattr(cli, "build_parser", lambda: raise_kbd())
    out = tmp_path / "run"
    rc = main(["train", "--out", str(out), "--epochs", "1", "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 130
    assert err.splitlines() == ["gpucnn: interrupted before training started; nothing was saved"], err
    assert "Traceback" not in err
    assert not out.exists()   # nothing left behind: no folder, no lock


def test_sigterm_during_start_up_is_one_line(tmp_path, monkeypatch, capsys):
    import gpucnn.runs as runs
    monkeypatch.setattr(runs, "dataset_for", lambda *a, **k: kill_self(signal.SIGTERM))
    rc = main(["train", "--out", str(tmp_path / "run"), "--epochs", "1", "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 143 and err.splitlines() == ["gpucnn: terminated (SIGTERM) before training started; "
                                              "nothing was saved"], err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_sigterm_from_another_process_saves_and_the_printed_command_resumes(tmp_path):
    """What a cluster scheduler does: SIGTERM from outside, mid-epoch; exit 143, one line, a
    checkpoint that the printed command resumes.  The child waits at step 3 until the signal
    has been handled, so nothing depends on timing."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    code = (
        "import sys, time\n"
        "from gpucnn.trainer import Trainer\n"
        "from gpucnn.cli import main\n"
        "orig = Trainer._after_step\n"
        "def after_step(self, loss, bar):\n"
        "    if self.global_step == 3:\n"
        "        print('ready', flush=True)\n"
        "        while not self._stop_requested:\n"
        "            time.sleep(0.01)\n"
        "    return orig(self, loss, bar)\n"
        "Trainer._after_step = after_step\n"
        "sys.exit(main(sys.argv[1:]))\n")
    args = ["train", "--out", str(tmp_path / "run"), "--epochs", "2", "--model", "mlp", "--limit-train", "128",
            "--limit-test", "64", "--device", "cpu", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(root))
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        for line in proc.stdout:
            if line.strip() == "ready":
                proc.send_signal(signal.SIGTERM)
                break
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "training interrupted (SIGTERM); checkpoint saved at epoch 1, step 3 of 4" in err
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME).state["global_step"] == 3
    command = re.search(r"Resume with: gpucnn (train --resume \S+ --epochs 2)", err).group(1).split()
    assert main(command + ["--no-progress"]) == 0
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME).state["epoch"] == 2
