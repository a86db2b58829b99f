#!/usr/bin/env bash
# The `gpucnn` command on a GPU (issue 5): info, check, the two training targets on cuda and
# cpu, evaluate, and the trainer/CLI tests with the CUDA backend required.
# Run from the repository root on the device machine:  bash benchmarks/gpu_cli.sh
# Writes everything under $OUT (default /tmp/gpucnn-gpu-cli); the log is $OUT/gpu_cli.log.
set -u
OUT=${OUT:-/tmp/gpucnn-gpu-cli}
mkdir -p "$OUT"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
MNIST=""
for d in ../shared/data/mnist-t10k shared/data/mnist-t10k; do
  [ -f "$d/t10k-images-idx3-ubyte.gz" ] && MNIST=$d && break
done
{
  echo "== $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null)"
  python -m gpucnn info
  python -m gpucnn check --device cuda | tail -4
  for dev in cuda cpu; do
    echo "== gpucnn train (digits defaults) --device $dev"
    /usr/bin/time -f "wall %e s" python -m gpucnn train --device $dev --out "$OUT/digits-$dev" --no-progress
  done
  if [ -n "$MNIST" ]; then
    for dev in cuda cpu; do
      echo "== gpucnn train --data mnist (LeNet, t10k split 8000/2000) --device $dev"
      /usr/bin/time -f "wall %e s" python -m gpucnn train --device $dev --data mnist --data-dir "$MNIST" \
        --t10k-split 8000 --out "$OUT/mnist-$dev" --no-progress
    done
    python -m gpucnn evaluate --checkpoint "$OUT/mnist-cuda" --device cuda | tail -2
  else
    echo "== MNIST folder not found; skipped the LeNet target"
  fi
  echo "== trainer/CLI tests with the CUDA backend required"
  GPUCNN_REQUIRE=cuda python -m pytest -q tests/test_train.py tests/test_cli.py tests/test_data.py
} 2>&1 | tee "$OUT/gpu_cli.log"
