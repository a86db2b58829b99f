"""Issue 10's layers against PyTorch in float64: print every comparison's max relative error.

    python benchmarks/compare_torch_layers.py

The comparisons are tests/test_torch_blocks.py's (forward, input gradient, parameter gradients,
BatchNorm running statistics after several steps, label-smoothed cross-entropy); the test
asserts each below 1e-9, this prints the measured values for benchmarks/RESULTS.md.
"""
from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from tests.test_torch_blocks import measure  # noqa: E402


def main():
    errors = measure()
    width = max(map(len, errors))
    for name, err in errors.items():
        print(f"{name:<{width}}  {err:.2e}")
    print(f"{'max over all':<{width}}  {max(errors.values()):.2e}")


if __name__ == "__main__":
    main()
