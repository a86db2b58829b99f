"""benchmarks/accuracy_summary.py: the statistics that say whether gpucnn's one-epoch
accuracy differs from PyTorch's over seeds."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import accuracy_summary as acc  # noqa: E402


@pytest.mark.parametrize("df, q975", [(1, 12.7062), (4, 2.7764), (14, 2.1448), (30, 2.0423)])
def test_t_quantile_matches_the_tables(df, q975):
    assert acc.t_quantile(0.975, df) == pytest.approx(q975, abs=2e-4)
    assert acc.t_cdf(q975, df) == pytest.approx(0.975, abs=1e-5)
    assert acc.t_cdf(-q975, df) == pytest.approx(0.025, abs=1e-5)


def test_sign_flip_p_is_exact():
    # all five of one sign: only the two all-same flips are as extreme -> 2 / 32
    assert acc.sign_flip_p([1.0, 2.0, 0.5, 1.5, 3.0]) == pytest.approx(2 / 32)
    # a mean of zero: every flip is at least as extreme
    assert acc.sign_flip_p([1.0, -1.0]) == 1.0
    # +-1 +-1 +-1 is never 0, so every flip is as far from zero as 1 + 1 - 1
    assert acc.sign_flip_p([1.0, 1.0, -1.0]) == 1.0
    # only 10 + 0.1 + 0.1 and its negation reach 10.2
    assert acc.sign_flip_p([10.0, 0.1, 0.1]) == pytest.approx(2 / 8)
    # 10 + 0.1 - 0.1 reaches 10 three ways (10.2, 10, 10) and so does its negation
    assert acc.sign_flip_p([10.0, 0.1, -0.1]) == pytest.approx(6 / 8)


def _run(path, seed, g, t=None, losses=(1.5, 1.6)):
    r = {"config": {"seed": seed},
         "gpucnn": {"test_accuracy": g, "history": [{"train_loss": losses[0]}]}}
    if t is not None:
        r["torch"] = {"test_accuracy": t, "history": [{"train_loss": losses[1]}]}
    path.write_text(json.dumps(r))
    return str(path)


def test_reads_runs_and_pairs(tmp_path, capsys):
    files = [_run(tmp_path / "a.json", 3, 0.51, 0.52), _run(tmp_path / "b.json", 1, 0.50, 0.49)]
    runs = acc.read_runs(files, ["0:50.5:50.0", "7:49:50:1.7:1.5"])
    assert [(s, round(g, 6), round(t, 6), gl, tl) for s, g, t, gl, tl, _ in runs] == \
        [(0, 50.5, 50.0, None, None), (1, 50.0, 49.0, 1.5, 1.6), (3, 51.0, 52.0, 1.5, 1.6),
         (7, 49.0, 50.0, 1.7, 1.5)]
    assert acc.main(files + ["--pair", "0:50.5:50.0"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy, 3 seeds" in out and "difference +0.17 points" in out
    # the train loss over the two seeds that have it: -0.1 both times
    assert "train loss, 2 seeds" in out and "difference -0.1000," in out


def test_bad_input_says_what_was_wrong(tmp_path):
    with pytest.raises(SystemExit, match="no PyTorch run"):
        acc.read_runs([_run(tmp_path / "a.json", 0, 0.5)], [])
    for bad in ("0:50.5", "0:50:51:1.5", "x:50:51"):
        with pytest.raises(SystemExit, match="expected SEED:GPUCNN:TORCH"):
            acc.read_runs([], [bad])
    with pytest.raises(SystemExit, match=r"seed\(s\) \[2\] given twice"):
        acc.read_runs([_run(tmp_path / "b.json", 2, 0.5, 0.5)], ["2:50:50"])
    with pytest.raises(SystemExit, match="at least two seeds"):
        acc.main(["--pair", "0:50:50"])
