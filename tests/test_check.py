"""gpucnn.check: the per-primitive self-check behind `gpucnn check`."""
from __future__ import annotations

import numpy as np
import pytest

from gpucnn import backends, check
from gpucnn.backends import PRIMITIVES


def test_cpu_check_covers_every_primitive_and_passes():
    rows = check.run_check("cpu")
    checks = [r for r in rows if "note" not in r]
    assert {r["primitive"] for r in checks} == set(PRIMITIVES)
    assert {r["dtype"] for r in checks} == {"float32", "float64"}
    bad = [r for r in checks if not r["ok"]]
    assert not bad, check.format_report(bad)
    report = check.format_report(rows)
    assert "all within tolerance" in report and "cpu vs reference" in report


def test_auto_without_gpu_says_why(monkeypatch):
    monkeypatch.setattr(backends, "_try_cuda", lambda: (None, "CuPy is not installed (test)"))
    rows = check.run_check("auto")
    assert rows[0]["note"].startswith("no GPU used: CuPy is not installed (test)")
    assert "note: no GPU used" in check.format_report(rows)


def test_a_wrong_primitive_is_reported(monkeypatch):
    cpu = backends.cpu_backend()
    monkeypatch.setattr(cpu, "tanh_forward", lambda x: np.tanh(x) * x.dtype.type(1.001))
    rows = [r for r in check.run_check("cpu") if r.get("primitive") == "tanh_forward"]
    assert rows and not any(r["ok"] for r in rows)
    report = check.format_report(rows)
    assert "FAIL" in report and f"{len(rows)} failed" in report


def test_unknown_device():
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        check.run_check("tpu")


def test_check_against_another_backend(other_backend):
    rows = check.run_check("cpu", backend=other_backend)
    other = [r for r in rows if r.get("compared") == f"{other_backend.name} vs cpu"]
    assert {r["primitive"] for r in other} == set(PRIMITIVES)
    bad = [r for r in other if not r["ok"]]
    assert not bad, check.format_report(bad)
