#!/usr/bin/env bash
# The two `gpucnn train` targets of issue 5, measured on this machine's CPU:
#   1. `gpucnn train` with no arguments (bundled digits): whole command <= 60 s, test accuracy >= 97 %
#   2. LeNet on real MNIST (first 8,000 of ../shared/data/mnist-t10k train, last 2,000 test):
#      >= 97 % test accuracy in <= 3 epochs; time per epoch
# Usage (repo root): bash benchmarks/cli_targets.sh [runs]   -- each target is run `runs` times (default 3).
# Prints the load average before each run: other processes on the machine slow it down.
set -u
RUNS=${1:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MNIST=${MNIST:-$ROOT/../shared/data/mnist-t10k}
WORK=$(mktemp -d)
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
echo "== $(date -u +%FT%TZ), commit $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet || echo '+uncommitted'), $(nproc) CPUs, $(python3 -c 'import numpy; print("NumPy", numpy.__version__)')"
cd "$WORK"
for i in $(seq "$RUNS"); do
  echo "-- gpucnn train (no arguments), run $i; load $(cut -d' ' -f1-3 /proc/loadavg)"
  /usr/bin/time -f "whole command: %e s wall, %U s user" python3 -m gpucnn train --device cpu 2>&1 \
    | grep -E "^test accuracy|whole command"
done
if [ -d "$MNIST" ]; then
  for i in $(seq "$RUNS"); do
    echo "-- LeNet on MNIST t10k 8000/2000, run $i; load $(cut -d' ' -f1-3 /proc/loadavg)"
    /usr/bin/time -f "whole command: %e s wall, %U s user" python3 -m gpucnn train --device cpu --data mnist \
      --data-dir "$MNIST" --t10k-split 8000 2>&1 | grep -E "^epoch|^test accuracy|whole command"
  done
else
  echo "-- $MNIST not found: MNIST target skipped"
fi
rm -rf "$WORK"
