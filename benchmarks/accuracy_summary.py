"""Seeds of accuracy_resnet20.py side by side: is gpucnn's one-epoch accuracy PyTorch's?

    python benchmarks/accuracy_summary.py benchmarks/accuracy_runs/*.json
    python benchmarks/accuracy_summary.py runs/*.json --pair 0:50.32:50.93   # a run logged
                                                                            # without --json

Each seed is one paired experiment: the two frameworks start from the same weights and see
the same batches and augmentation, so the difference (gpucnn - PyTorch, in points of test
accuracy) holds only what float32 rounding did over the epoch.  Printed: every seed's pair,
the mean difference with its standard error and a 95 % t interval, and an exact sign-flip
(randomization) test: the share of the 2^n ways of flipping the differences' signs whose
mean is at least as far from zero as the observed one -- the p-value of "the differences
are symmetric around zero", needing no normal-distribution assumption.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import sys


def t_cdf(t, df):
    """Student's t distribution function, by Simpson's rule on the density (df >= 1)."""
    if t < 0:
        return 1.0 - t_cdf(-t, df)
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    steps = 2000
    h = t / steps
    f = [c * (1 + (i * h) ** 2 / df) ** (-(df + 1) / 2) for i in range(steps + 1)]
    area = h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))
    return 0.5 + area


def t_quantile(p, df):
    """The t value with t_cdf(t, df) = p (bisection; 0.5 < p < 1)."""
    lo, hi = 0.0, 1000.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def sign_flip_p(diffs):
    """Exact two-sided p-value of the mean under random signs (2^n flips; n <= 20)."""
    observed = abs(sum(diffs)) - 1e-12
    hits = total = 0
    for signs in itertools.product((1, -1), repeat=len(diffs)):
        total += 1
        hits += abs(sum(s * d for s, d in zip(signs, diffs))) >= observed
    return hits / total


def read_runs(paths, pairs):
    """[(seed, gpucnn acc %, torch acc %, gpucnn train loss or None, torch's or None, source)]."""
    runs = []
    for path in paths:
        with open(path) as f:
            r = json.load(f)
        if "torch" not in r:
            raise SystemExit(f"accuracy_summary: {path} has no PyTorch run (made with --no-torch)")
        g, t = r["gpucnn"], r["torch"]
        runs.append((int(r["config"]["seed"]), 100 * g["test_accuracy"], 100 * t["test_accuracy"],
                     g["history"][-1]["train_loss"], t["history"][-1]["train_loss"], path))
    for text in pairs:
        fields = text.split(":")
        try:
            if len(fields) not in (3, 5):
                raise ValueError
            seed, values = int(fields[0]), [float(v) for v in fields[1:]]
        except ValueError:
            raise SystemExit(f"accuracy_summary: --pair {text!r}: expected SEED:GPUCNN:TORCH "
                             "(test accuracies in percent), optionally :GPUCNN_LOSS:TORCH_LOSS "
                             "(the epoch's train loss), e.g. 0:50.32:50.93")
        runs.append((seed, values[0], values[1], *(values[2:] or [None, None]), "--pair"))
    seeds = [r[0] for r in runs]
    dup = sorted({s for s in seeds if seeds.count(s) > 1})
    if dup:
        raise SystemExit(f"accuracy_summary: seed(s) {dup} given twice; one run per seed")
    return sorted(runs, key=lambda r: r[0])


def paired(what, pairs, digits, unit="", diff_unit=""):
    """Print the paired comparison of [(gpucnn, torch)] values; returns the mean difference."""
    n = len(pairs)
    diffs = [g - t for g, t in pairs]
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    se = sd / math.sqrt(n)
    half = t_quantile(0.975, n - 1) * se
    f = f".{digits}f"
    print(f"\n{what}, {n} seeds: gpucnn {sum(g for g, _ in pairs) / n:{f}}{unit}, PyTorch "
          f"{sum(t for _, t in pairs) / n:{f}}{unit} (means)")
    print(f"  difference {mean:+{f}}{diff_unit}, sd {sd:{f}}, standard error {se:{f}}; "
          f"95 % interval [{mean - half:+{f}}, {mean + half:+{f}}]")
    print(f"  gpucnn above in {sum(d > 0 for d in diffs)} of {n}; exact sign-flip test "
          f"p = {sign_flip_p(diffs):.3f}; "
          + (f"t = {mean / se:+.2f} (df {n - 1})" if se > 0 else "no t (every difference equal)"))
    return mean


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="*", help="JSON files written by accuracy_resnet20.py --json")
    ap.add_argument("--pair", action="append", default=[],
                    metavar="SEED:GPUCNN:TORCH[:GPUCNN_LOSS:TORCH_LOSS]")
    args = ap.parse_args(argv)
    runs = read_runs(args.runs, args.pair)
    if len(runs) < 2:
        raise SystemExit("accuracy_summary: need at least two seeds")
    if len(runs) > 20:
        raise SystemExit("accuracy_summary: at most 20 seeds (the exact test enumerates 2^n)")
    print(f"{'seed':>4}  {'gpucnn':>7}  {'torch':>7}  {'diff':>6}  {'train loss g / t':>17}  source")
    for seed, g, t, gl, tl, src in runs:
        losses = f"{gl:.4f} / {tl:.4f}" if gl is not None else ""
        print(f"{seed:>4}  {g:7.2f}  {t:7.2f}  {g - t:+6.2f}  {losses:>17}  {src}")
    paired("test accuracy", [(g, t) for _, g, t, *_ in runs], 2, " %", " points")
    losses = [(gl, tl) for _, _, _, gl, tl, _ in runs if gl is not None]
    if len(losses) >= 2:
        paired("the epoch's train loss", losses, 4)
    return 0


if __name__ == "__main__":
    sys.exit(main())
