"""Nothing lost, nothing silent (issue 9, items 2-6): the device variable, non-finite
checkpoints, warnings that must not leak, the output folder's checks and lock, and the
smaller items (bundled digits with --data-dir, empty files and batches, strict=False,
duplicate optimizer parameters, the example without arguments)."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import gpucnn as nn
import gpucnn.runlock as runlock
import gpucnn.runs as runs
from gpucnn import backends
from gpucnn.backends import DeviceError
from gpucnn.checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint
from gpucnn.cli import main
from gpucnn.data import DataError, load_dataset, load_mnist
from gpucnn.errors import NonFiniteError
from gpucnn.evaluation import predict_proba
from gpucnn.runlock import LOCK_NAME, RunDirError, RunDirInUse, RunLock
from gpucnn.runs import run_training
from gpucnn.trainer import Trainer, TrainingDiverged, make_optimizer

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--model", "mlp", "--limit-train", "64", "--limit-test", "32", "--no-progress"]
QUIET = dict(progress=False, log=lambda *_: None)


def one_line_error(capsys, rc, *words):
    captured = capsys.readouterr()
    assert rc == 1, captured
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpucnn: error: "), captured.err
    for w in words:
        assert w in lines[0], lines[0]
    return captured


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("robust") / "run"
    assert main(["train", "--out", str(out), "--epochs", "1", "--device", "cpu", *SMALL]) == 0
    return out


def rewrite_checkpoint(src, dst, change):
    """Copy a checkpoint, changing its arrays with change(arrays) (a well-formed file)."""
    with np.load(src, allow_pickle=False) as f:
        arrays = {k: np.array(f[k]) for k in f.files}
    change(arrays)
    dst.parent.mkdir(parents=True, exist_ok=True)
    np.savez(dst, **arrays)
    return dst


# =========================================================================== 2. GPUCNN_DEVICE

@pytest.fixture
def no_gpu(monkeypatch):
    """No CuPy (as on this machine, and simulated on a GPU machine)."""
    backends._reset_cuda_probe()
    monkeypatch.setitem(sys.modules, "cupy", None)
    yield
    backends._reset_cuda_probe()


def test_env_cuda_makes_train_fail_instead_of_training_on_the_cpu(tmp_path, monkeypatch, capsys, no_gpu):
    monkeypatch.setenv("GPUCNN_DEVICE", "cuda")
    rc = main(["train", "--out", str(tmp_path / "run"), "--epochs", "1", *SMALL])
    captured = one_line_error(capsys, rc, "device 'cuda' (GPUCNN_DEVICE=cuda) was requested but cannot be used")
    assert "epoch" not in captured.out and not (tmp_path / "run").exists()


def test_env_reaches_to_auto_evaluate_predict_and_info(trained, tmp_path, monkeypatch, capsys, no_gpu):
    monkeypatch.setenv("GPUCNN_DEVICE", "cuda")
    with pytest.raises(DeviceError, match="GPUCNN_DEVICE=cuda"):
        nn.Sequential(nn.Linear(2, 2)).to("auto")
    one_line_error(capsys, main(["evaluate", "--checkpoint", str(trained)]), "GPUCNN_DEVICE=cuda")
    img = tmp_path / "x.npy"
    np.save(img, np.zeros((8, 8), np.float32))
    one_line_error(capsys, main(["predict", "--checkpoint", str(trained), str(img)]), "GPUCNN_DEVICE=cuda")
    assert main(["info"]) == 0
    assert "GPUCNN_DEVICE=cuda" in capsys.readouterr().out
    monkeypatch.setenv("GPUCNN_DEVICE", "cpu")
    assert nn.Sequential(nn.Linear(2, 2)).to("auto").device == "cpu"
    assert main(["info"]) == 0
    assert "device: 'auto' (GPUCNN_DEVICE=cpu) chooses cpu -- as the variable asks" in capsys.readouterr().out


@pytest.mark.parametrize("command", [["info"], ["train", "--epochs", "1"], ["evaluate", "--checkpoint", "x"]])
def test_env_with_an_invalid_value_is_one_line(monkeypatch, capsys, tmp_path, command):
    monkeypatch.setenv("GPUCNN_DEVICE", "bogus")
    monkeypatch.chdir(tmp_path)
    one_line_error(capsys, main(command), "GPUCNN_DEVICE='bogus' is not a device")
    assert list(tmp_path.iterdir()) == []


# =========================================================================== 3. non-finite state

@pytest.mark.parametrize("where, name", [("weight", "weight 1.weight"),
                                         ("optimizer", "optimizer state 0.exp_avg")])
def test_non_finite_checkpoint_is_refused_naming_the_tensor(trained, tmp_path, where, name):
    def poison(arrays):
        if where == "weight":
            arrays["model/1.weight"][0, 0] = np.nan
        else:
            meta = json.loads(str(arrays["__meta__"][()]))
            key = meta["optimizer"]["state"]["0.exp_avg"]["__array__"]
            arrays[key][0, 0] = np.inf
    bad = rewrite_checkpoint(trained / CHECKPOINT_NAME, tmp_path / "bad" / CHECKPOINT_NAME, poison)
    with pytest.raises(CheckpointError, match=f"{name} holds NaN or infinity \\(1 of"):
        load_checkpoint(bad)
    assert load_checkpoint(bad, allow_non_finite=True).model_state["1.weight"].shape


def test_commands_on_a_non_finite_checkpoint(trained, tmp_path, capsys):
    bad = rewrite_checkpoint(trained / CHECKPOINT_NAME, tmp_path / "bad" / CHECKPOINT_NAME,
                             lambda a: a["model/3.weight"].__setitem__((0, 0), np.inf))
    img = tmp_path / "x.npy"
    np.save(img, np.zeros((8, 8), np.float32))
    captured = one_line_error(capsys, main(["predict", "--checkpoint", str(bad), str(img)]), "weight 3.weight")
    assert "p=nan" not in captured.out
    captured = one_line_error(capsys, main(["evaluate", "--checkpoint", str(bad)]), "weight 3.weight")
    assert "loss" not in captured.err.lower()
    captured = one_line_error(capsys, main(["train", "--resume", str(bad), "--epochs", "3", "--no-progress"]),
                              "weight 3.weight")
    assert "learning rate" not in captured.err and "last good" not in captured.err


def test_predict_proba_never_returns_nan(capsys):
    model = nn.Sequential(nn.Linear(2, 3))
    model[0].weight.data[...] = 3e38       # finite, but the outputs overflow
    with pytest.raises(NonFiniteError, match="outputs for image 1 are not finite"):
        predict_proba(model, np.array([[0.0, 0.0], [1e3, 1e3]], np.float32))
    model[0].weight.data[0, 0] = np.inf
    with pytest.raises(NonFiniteError, match="weight 0.weight holds NaN or infinity"):
        predict_proba(model, np.ones((2, 2), np.float32))


def test_non_finite_starting_weights_are_not_called_a_divergence():
    """An inf weight that ReLU hides from the loss would otherwise train on silently."""
    d = load_dataset("digits", limit_train=64, limit_test=32)
    from gpucnn.models import build_model
    nn.manual_seed(0)
    model = build_model("mlp", d.input_shape, 10)
    model.parameters()[0].data[0, 0] = np.inf
    t = Trainer(model, make_optimizer("adam", model.parameters(), 1e-3), d.train, d.test, batch_size=32,
                **QUIET)
    with pytest.raises(NonFiniteError) as info:
        t.fit(1)
    msg = str(info.value)
    assert "weight 1.weight holds NaN or infinity before training starts" in msg
    assert "learning rate" not in msg and t.global_step == 0


def test_starting_weights_that_overflow_do_not_suggest_a_learning_rate():
    d = load_dataset("digits", limit_train=64, limit_test=32)
    from gpucnn.models import build_model
    model = build_model("mlp", d.input_shape, 10)
    model.parameters()[-2].data[...] = 3e38     # finite, but the logits overflow at once
    t = Trainer(model, make_optimizer("sgd", model.parameters(), 1e-3), d.train, d.test, batch_size=32,
                **QUIET)
    with pytest.raises(TrainingDiverged) as info:
        t.fit(1)
    assert "try a lower learning rate" not in str(info.value) and "cannot help" in str(info.value)


def test_trainer_never_replaces_a_checkpoint_with_a_non_finite_one(tmp_path):
    d = load_dataset("digits", limit_train=64, limit_test=32)
    from gpucnn.models import build_model
    nn.manual_seed(0)
    model = build_model("mlp", d.input_shape, 10)
    t = Trainer(model, make_optimizer("adam", model.parameters(), 1e-3), d.train, d.test, batch_size=32,
                run_dir=tmp_path, **QUIET)
    t.fit(1)
    before = (tmp_path / CHECKPOINT_NAME).read_bytes()
    model.parameters()[0].data[0, 0] = np.nan
    with pytest.raises(NonFiniteError, match="weight 1.weight"):
        t.save()
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == before


# =========================================================================== 4. no warning text

def run_cli(args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT), GPUCNN_DEVICE="cpu")
    return subprocess.run([sys.executable, "-m", "gpucnn", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_huge_learning_rate_is_one_line_without_warnings(tmp_path):
    proc = run_cli(["train", "--optimizer", "sgd", "--lr", "1e6", "--epochs", "1", "--out", "run", *SMALL],
                   tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "Warning" not in proc.stderr and proc.stderr.startswith("gpucnn: error: the ")
    assert "training stopped: try a lower learning rate" in proc.stderr


def test_inf_weight_is_one_line_without_warnings(trained, tmp_path):
    bad = rewrite_checkpoint(trained / CHECKPOINT_NAME, tmp_path / "bad" / CHECKPOINT_NAME,
                             lambda a: a["model/1.weight"].__setitem__((0, 0), np.inf))
    proc = run_cli(["evaluate", "--checkpoint", str(bad)], tmp_path)
    assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "Warning" not in proc.stderr


def test_diverging_training_and_overflowing_predictions_raise_no_warnings():
    """Large batches, so that the NumPy backend's worker threads (which do not inherit
    np.errstate) compute too."""
    from gpucnn.models import lenet
    rng = np.random.default_rng(0)
    images, labels = rng.standard_normal((512, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, 512)
    nn.manual_seed(0)
    model = lenet((1, 28, 28), 10)
    t = Trainer(model, make_optimizer("sgd", model.parameters(), 1e6), (images, labels), (images, labels),
                batch_size=256, **QUIET)
    with warnings.catch_warnings():
        warnings.simplefilter("error")       # a RuntimeWarning would be raised here instead
        with pytest.raises(TrainingDiverged):
            t.fit(2)
        model = nn.Sequential(nn.Linear(2, 3))
        model[0].weight.data[...] = 3e38
        with pytest.raises(NonFiniteError):
            predict_proba(model, np.ones((2, 2), np.float32))


def test_other_warnings_become_one_line(monkeypatch, capsys):
    import gpucnn.cli as cli

    def info(args):
        warnings.warn("something odd\nover two lines", UserWarning)
        return 0
    monkeypatch.setattr(cli, "cmd_info", info)
    assert main(["info"]) == 0
    assert capsys.readouterr().err.splitlines() == ["gpucnn: warning: something odd over two lines"]


# =========================================================================== 5. the output folder

def test_unwritable_out_fails_before_any_work(tmp_path, monkeypatch, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    real_access = os.access
    monkeypatch.setattr(runlock.os, "access", lambda p, mode: False if Path(p) == out else real_access(p, mode))
    monkeypatch.setattr(runs, "dataset_for", lambda *a, **k: pytest.fail("data loaded before the check"))
    rc = main(["train", "--out", str(out), "--epochs", "1", *SMALL])
    one_line_error(capsys, rc, f"cannot write to the output folder {out}")
    assert list(out.iterdir()) == []


def test_out_where_creating_a_file_fails(tmp_path, monkeypatch):
    """os.access can say yes where a write fails (root, ACLs, a read-only mount): the lock file decides."""
    out = tmp_path / "ro"
    out.mkdir()
    real_open = os.open

    def deny(path, flags, *a):
        if Path(path).parent == out:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *a)
    monkeypatch.setattr(runlock.os, "open", deny)
    with pytest.raises(RunDirError, match=f"cannot write to the output folder {out} \\(Permission denied\\)"):
        run_training(out=out, epochs=1, model="mlp", limit_train=64, limit_test=32, **QUIET)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_read_only_out_for_real(tmp_path):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        if os.access(out, os.W_OK):
            pytest.skip("running as root: chmod does not stop writes (the monkeypatched tests cover it)")
        with pytest.raises(RunDirError, match="cannot write to the output folder"):
            run_training(out=out, epochs=1, model="mlp", limit_train=64, limit_test=32, **QUIET)
    finally:
        out.chmod(0o700)


def test_second_run_on_the_same_out_refuses(tmp_path, capsys):
    out = tmp_path / "run"
    with RunLock(out):
        with pytest.raises(RunDirInUse, match=f"pid {os.getpid()} on host {socket.gethostname()}"):
            RunLock(out).acquire()
        rc = main(["train", "--out", str(out), "--epochs", "1", "--device", "cpu", *SMALL])
        one_line_error(capsys, rc, f"the output folder {out} is in use by another gpucnn run")
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
    assert list(out.iterdir()) == []          # released: the lock file is gone


def test_lock_held_by_another_process_then_killed(tmp_path, capsys):
    """A run in another process holds the folder; once it is SIGKILLed the folder is free again."""
    out = tmp_path / "run"
    code = ("import sys; from gpucnn.runlock import RunLock\n"
            "RunLock(sys.argv[1]).acquire(); print('locked', flush=True); sys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert proc.stdout.readline().strip() == "locked"
        rc = main(["train", "--out", str(out), "--epochs", "1", "--device", "cpu", *SMALL])
        one_line_error(capsys, rc, f"pid {proc.pid} on host")
    finally:
        proc.kill()
        proc.wait()
    assert (out / LOCK_NAME).exists()        # a crashed run leaves its lock file behind ...
    assert main(["train", "--out", str(out), "--epochs", "1", "--device", "cpu", *SMALL]) == 0  # ... not stuck
    assert not (out / LOCK_NAME).exists() and (out / CHECKPOINT_NAME).is_file()


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("holder, stale", [
    ({"pid": "dead", "host": "here"}, True),
    ({"pid": "alive", "host": "here"}, False),
    ({"pid": "alive", "host": "elsewhere.example"}, False),
])
def test_lock_file_without_flock(tmp_path, monkeypatch, holder, stale):
    """Where fcntl.flock does not exist the file is the lock: stale when its process is gone."""
    monkeypatch.setattr(runlock, "fcntl", None)
    out = tmp_path / "run"
    out.mkdir()
    pid = _dead_pid() if holder["pid"] == "dead" else os.getppid()
    host = socket.gethostname() if holder["host"] == "here" else holder["host"]
    (out / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": host, "started": "earlier"}))
    if stale:
        with RunLock(out):
            assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
        assert not (out / LOCK_NAME).exists()
    else:
        with pytest.raises(RunDirInUse, match=f"pid {pid} on host {host}, started earlier"):
            RunLock(out).acquire()
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == pid


def test_resume_takes_the_lock_too(trained, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(trained, run)
    with RunLock(run):
        with pytest.raises(RunDirInUse):
            run_training(resume=run / CHECKPOINT_NAME, epochs=2, **QUIET)


# =========================================================================== 6. smaller items

@pytest.mark.parametrize("args, words", [
    (["--data-dir", "."], "--data-dir does not apply to the bundled digits"),
    (["--t10k-split", "100"], "--t10k-split applies to --data mnist only"),
])
def test_options_the_bundled_digits_would_ignore(tmp_path, capsys, args, words):
    one_line_error(capsys, main(["train", "--out", str(tmp_path / "r"), "--epochs", "1", *SMALL, *args]), words)
    assert not (tmp_path / "r").exists()
    with pytest.raises(DataError, match=words.split(" ")[0]):
        load_dataset("digits", **({"data_dir": "."} if "--data-dir" in args else {"t10k_split": 100}))


def test_empty_t10k_files(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(bytes([0, 0, 8, 3]) + (0).to_bytes(4, "big")
                                                      + (28).to_bytes(4, "big") * 2)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1]) + (0).to_bytes(4, "big"))
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte holds no images"):
        load_mnist(tmp_path, t10k_split=8000)


@pytest.mark.parametrize("layer, shape", [
    (nn.Conv2d(1, 2, 3), (0, 1, 5, 5)), (nn.MaxPool2d(2), (0, 1, 4, 4)), (nn.AvgPool2d(2), (0, 1, 4, 4)),
    (nn.Linear(3, 2), (0, 3)), (nn.ReLU(), (0, 3)), (nn.Sigmoid(), (0, 3)), (nn.Tanh(), (0, 3)),
    (nn.Flatten(), (0, 1, 2, 2)), (nn.Sequential(nn.Conv2d(1, 1, 1), nn.Flatten()), (0, 1, 2, 2)),
])
def test_empty_batch_is_a_clear_error(layer, shape):
    with pytest.raises(ValueError, match="empty batch"):
        layer(np.zeros(shape, np.float32))


def test_load_state_dict_strict_false_as_pytorch():
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    sd = net.state_dict()
    result = net.load_state_dict(sd)
    assert result == ([], []) and result.missing_keys == [] and result.unexpected_keys == []
    new = {"0.weight": np.ones((3, 2), np.float32), "9.weight": np.zeros(1, np.float32)}
    missing, unexpected = net.load_state_dict(new, strict=False)
    assert missing == ["0.bias", "2.bias", "2.weight"] and unexpected == ["9.weight"]
    assert np.array_equal(net[0].weight.data, np.ones((3, 2))) and np.array_equal(net[2].weight.data, sd["2.weight"])
    with pytest.raises(ValueError, match="keys do not match"):
        net.load_state_dict(new)
    with pytest.raises(ValueError, match=r"'0.weight' has shape \(2, 2\)"):
        net.load_state_dict({"0.weight": np.ones((2, 2), np.float32)}, strict=False)


@pytest.mark.parametrize("opt", [nn.SGD, nn.Adam])
def test_a_parameter_listed_twice_in_an_optimizer(opt):
    net = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    params = net.parameters()
    with pytest.raises(ValueError, match="parameter 4 is parameter 1 again"):
        opt(params + [params[1]], lr=0.1)


def test_lenet_example_without_data_prints_usage(tmp_path):
    where = tmp_path / "a" / "examples"
    where.mkdir(parents=True)
    shutil.copy(ROOT / "examples" / "lenet_mnist.py", where)
    proc = subprocess.run([sys.executable, str(where / "lenet_mnist.py")], cwd=tmp_path, capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("usage: lenet_mnist.py") and "pass --data-dir DIR" in lines[-1]
    assert len(lines) <= 3
