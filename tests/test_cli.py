"""The `gpucnn` command: train / evaluate / predict / info / check, errors and exit codes."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpucnn.cli import main
from gpucnn.data import load_digits

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--limit-train", "128", "--limit-test", "64", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short CLI training run shared by the evaluate/predict tests."""
    out = tmp_path_factory.mktemp("cli") / "run"
    rc = main(["train", "--out", str(out), "--epochs", "2", "--model", "lenet", *SMALL])
    assert rc == 0
    return out


def test_train_prints_epochs_and_final_line(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--out", str(out), "--epochs", "2", "--model", "mlp", *SMALL])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    lines = captured.out.splitlines()
    assert sum(line.startswith("epoch ") for line in lines) == 2
    assert "train loss" in lines[-2] and "test acc" in lines[-2]
    assert lines[-1].startswith("test accuracy ") and "%" in lines[-1] and str(out) in lines[-1]
    assert {p.name for p in out.iterdir()} == {"checkpoint.npz", "history.json", "history.csv", "curves.png"}


def test_train_default_run_dir_is_new_folder_under_runs(tmp_path, capsys):
    rc = main(["train", "--runs-dir", str(tmp_path), "--epochs", "1", "--model", "mlp", *SMALL])
    assert rc == 0
    runs = list(tmp_path.iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("digits-mlp-")
    assert (runs[0] / "checkpoint.npz").is_file()
    assert main(["train", "--runs-dir", str(tmp_path), "--epochs", "1", "--model", "mlp", *SMALL]) == 0
    assert len(list(tmp_path.iterdir())) == 2  # a second run never reuses the first one's folder


def test_train_resume_via_cli(trained, tmp_path, capsys):
    import shutil
    run = tmp_path / "copy"
    shutil.copytree(trained, run)
    rc = main(["train", "--resume", str(run / "checkpoint.npz"), "--epochs", "3", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "resuming" in out and "epoch 3/3" in out and "epoch 1/3" not in out


def test_train_refuses_existing_run(trained, capsys):
    before = (trained / "checkpoint.npz").read_bytes()
    rc = main(["train", "--out", str(trained), "--epochs", "1", *SMALL])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith("gpucnn: error: refusing to overwrite checkpoint.npz")
    assert f"--resume {trained / 'checkpoint.npz'}" in err
    assert (trained / "checkpoint.npz").read_bytes() == before


def test_evaluate_table_and_confusion_png(trained, tmp_path, capsys):
    png = tmp_path / "cm.png"
    rc = main(["evaluate", "--checkpoint", str(trained / "checkpoint.npz"), "--out", str(png)])
    out = capsys.readouterr().out
    assert rc == 0
    lines = out.splitlines()
    header = next(i for i, l in enumerate(lines) if l.startswith("class"))
    assert [l.split()[0] for l in lines[header + 1:header + 11]] == [str(i) for i in range(10)]
    assert sum(int(l.split()[1]) for l in lines[header + 1:header + 11]) == 64
    assert lines[-1].startswith("test accuracy ") and "/64)" in lines[-1]
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_evaluate_accepts_the_run_folder(trained, capsys):
    rc = main(["evaluate", "--checkpoint", str(trained)])
    assert rc == 0 and (trained / "confusion.png").is_file()


def test_predict_npy_and_png(trained, tmp_path, capsys):
    import matplotlib.image as mpimg
    images, labels = load_digits()
    np.save(tmp_path / "a.npy", (images[5] / 16.0).astype(np.float32))
    big = 1.0 - np.kron(images[7] / 16.0, np.ones((3, 3)))        # dark ink, white paper, 24x24
    mpimg.imsave(tmp_path / "b.png", big, cmap="gray", vmin=0, vmax=1)
    rc = main(["predict", "--checkpoint", str(trained / "checkpoint.npz"), str(tmp_path / "a.npy"),
               str(tmp_path / "b.png"), "--top", "3"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0 and len(out) == 2
    assert out[0].startswith(f"{tmp_path / 'a.npy'}: ") and "(p=" in out[0] and "next:" in out[0]
    assert "resized 24x24 to 8x8" in out[1] and "inverted" in out[1]
    for line in out:
        label = line.split(": ", 1)[1].split(" ")[0]
        assert label in [str(i) for i in range(10)]


def test_predict_bad_image_is_one_line_error(trained, tmp_path, capsys):
    np.save(tmp_path / "bad.npy", np.zeros((2, 8, 8)))
    rc = main(["predict", "--checkpoint", str(trained), str(tmp_path / "bad.npy")])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1
    assert "bad.npy: images must have 1 or 3 channels, got 2" in err


def test_errors_are_one_line_and_debug_shows_traceback(tmp_path, capsys):
    missing = tmp_path / "nope.npz"
    rc = main(["evaluate", "--checkpoint", str(missing)])
    err = capsys.readouterr().err
    assert rc == 1 and err == f"gpucnn: error: checkpoint {missing} does not exist\n"
    rc = main(["evaluate", "--checkpoint", str(missing), "--debug"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback (most recent call last)" in err and "CheckpointError" in err
    assert err.rstrip().endswith(f"gpucnn: error: checkpoint {missing} does not exist")


def test_missing_mnist_folder_names_the_file(tmp_path, capsys):
    rc = main(["train", "--data", "mnist", "--data-dir", str(tmp_path), "--out", str(tmp_path / "r"),
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "t10k-images-idx3-ubyte" in err and "not found" in err
    assert not (tmp_path / "r").exists()


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--epochs", "0"])
    assert info.value.code == 2
    assert "expected a positive integer, got '0'" in capsys.readouterr().err
    assert main([]) == 2


def test_info(capsys):
    rc = main(["info"])
    out = capsys.readouterr().out
    from gpucnn import __version__
    assert rc == 0
    assert out.startswith(f"gpucnn {__version__} ")
    assert "device: 'auto' chooses" in out and "CuPy:" in out and "kernels" in out
    from gpucnn.backends.kernels import KERNELS
    assert all(f in out for f in KERNELS)
    assert "FAILED" not in out


def test_check_cpu(capsys):
    rc = main(["check", "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0 and "conv2d_forward" in out and "0 failed" in out


def test_python_dash_m_runs_the_command(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "gpucnn", "--version"], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("gpucnn ")
    proc = subprocess.run([sys.executable, "-m", "gpucnn", "evaluate", "--checkpoint", "missing.npz"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "gpucnn: error: checkpoint missing.npz does not exist" in proc.stderr


def test_train_on_tiny_mnist_and_cifar_files(tmp_path, capsys):
    """The file-based datasets end to end through the command (files built by the data tests' helpers)."""
    from tests.test_data import write_cifar, write_mnist
    write_mnist(tmp_path / "mnist", n_train=40, n_test=10, gz=True)
    write_cifar(tmp_path / "cifar", n=4)
    rc = main(["train", "--data", "mnist", "--data-dir", str(tmp_path / "mnist"), "--epochs", "1",
               "--batch-size", "8", "--out", str(tmp_path / "r1"), "--device", "cpu", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "training lenet on MNIST" in out and "(10 mnist test images)" in out
    rc = main(["train", "--data", "cifar10", "--data-dir", str(tmp_path / "cifar"), "--epochs", "1",
               "--batch-size", "8", "--out", str(tmp_path / "r2"), "--device", "cpu", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "training cifar on CIFAR-10" in out and "(3, 32, 32)" in out
    rc = main(["evaluate", "--checkpoint", str(tmp_path / "r2")])
    out = capsys.readouterr().out
    assert rc == 0 and "airplane" in out and "truck" in out
    # a checkpoint trained on 28x28 MNIST refuses the 8x8 digits
    rc = main(["evaluate", "--checkpoint", str(tmp_path / "r1"), "--data", "digits"])
    err = capsys.readouterr().err
    assert rc == 1 and "takes (1, 28, 28) images but digits has (1, 8, 8)" in err


@pytest.mark.skipif(sys.platform.startswith("win"), reason="SIGINT delivery to a child differs on Windows")
def test_real_ctrl_c_saves_and_prints_resume_command(tmp_path):
    """A real SIGINT to `python -m gpucnn train`: exit 130, a checkpoint, the command to resume."""
    import signal
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYTHONUNBUFFERED="1")
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "gpucnn", "train", "--model", "mlp", "--epochs", "100000",
                             "--device", "cpu", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        for line in proc.stdout:                 # wait until training is under way
            if line.startswith("epoch"):
                break
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert f"Resume with: gpucnn train --resume {out / 'checkpoint.npz'} --epochs 100000" in err
    from gpucnn.checkpoint import load_checkpoint
    ck = load_checkpoint(out / "checkpoint.npz")
    assert ck.state["global_step"] >= 45       # at least the first epoch (45 steps) was kept
