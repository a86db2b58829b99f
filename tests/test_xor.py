"""The seed's own example, examples/xor.py, learns XOR through the public API."""
import importlib.util
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "xor.py")


def load_xor():
    spec = importlib.util.spec_from_file_location("xor_example", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_xor_learns_and_saves_the_plot(tmp_path, capsys):
    out = tmp_path / "plots" / "xor.png"
    result = load_xor().main(["--out", str(out)])
    assert result["loss"] < 0.01
    assert result["correct"] == 4
    assert out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert f"final loss: {result['loss']:.6f}" in printed
    assert str(out) in printed
    # the loss went down, not just ended low
    assert result["history"][0] > 0.1 > 0.01 > result["history"][-1]


def test_xor_is_deterministic_and_predictions_match_labels():
    xor = load_xor()
    _, h1, p1 = xor.train(epochs=1500, seed=3)
    _, h2, p2 = xor.train(epochs=1500, seed=3)
    assert h1 == h2
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_array_equal((p1 > 0.5).astype(np.float32), xor.Y)
    _, h3, _ = xor.train(epochs=1500, seed=4)
    assert h3 != h1


def test_xor_script_runs_standalone(tmp_path):
    out = tmp_path / "loss.png"
    proc = subprocess.run([sys.executable, SCRIPT, "--epochs", "2000", "--out", str(out)],
                          capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "4/4 correct" in proc.stdout
    loss = float(proc.stdout.split("final loss:")[1].split()[0])
    assert loss < 0.01
    assert out.is_file()
