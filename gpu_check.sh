#!/usr/bin/env bash
# One command for a GPU machine: the CUDA backend's tests and the GPU benchmarks.
#
#   bash gpu_check.sh            (from the checkout; needs numpy, cupy, pytest; torch optional)
#
# Runs from the checkout with PYTHONPATH=. and no package registry.  Prints the device and
# versions, `gpucnn check` (every primitive, CUDA vs NumPy, max abs / relative errors), the GPU
# tests (parity of every primitive x dtype x shape, determinism, 50-step training, forward and
# finite-difference checks through the CUDA backend, fallback),
# the kernel bandwidth benchmark and, when present, the training benchmark against PyTorch.
# Takes under 5 minutes; each stage has its own time limit.  The log (and the benchmarks' JSON)
# go to $OUT when it is set, else to ${TMPDIR:-/tmp}/gpucnn_gpu_check/.
set -u
cd "$(dirname "$0")"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
unset CUPY_TF32 GPUCNN_DEVICE
export GPUCNN_REQUIRE=cuda     # the parity tests fail, not skip, when the CUDA backend cannot run
DEST="${OUT:-${TMPDIR:-/tmp}/gpucnn_gpu_check}"
mkdir -p "$DEST"
LOG="$DEST/gpu_check.log"
PY="${PYTHON:-python}"
status=0

stage() {  # stage <title> <seconds> <command...>
    local title=$1 limit=$2
    shift 2
    echo
    echo "=== $title ($(date -u +%H:%M:%S), limit ${limit}s)"
    local t0=$SECONDS
    timeout "$limit" "$@"
    local rc=$?
    echo "=== $title: exit $rc after $((SECONDS - t0))s"
    [ "$rc" -ne 0 ] && status=1
    return 0
}

{
    echo "=== gpu_check.sh $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(hostname)"
    git log -1 --format='commit %h %s' 2>/dev/null || true
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || true
    "$PY" - <<'PYEOF'
import platform, sys
print("python", platform.python_version(), sys.executable)
for mod in ("numpy", "cupy", "torch", "pytest"):
    try:
        m = __import__(mod)
        print(mod, m.__version__)
    except Exception as exc:
        print(mod, "not importable:", exc)
try:
    import cupy
    rt = cupy.cuda.runtime
    print("CUDA runtime", rt.runtimeGetVersion(), "driver", rt.driverGetVersion(),
          "devices", rt.getDeviceCount())
except Exception as exc:
    print("CuPy/CUDA:", exc)
from gpucnn import backends
b, why = backends._try_cuda()
print("gpucnn CUDA backend:", "OK" if b is not None else f"UNAVAILABLE: {why}")
PYEOF

    stage "gpucnn check --device cuda" 60 "$PY" -m gpucnn.check --device cuda
    stage "GPU tests (parity, determinism, 50-step training, gradcheck, fallback, check, graph)" 240 \
        "$PY" -m pytest -q -rs -m "not emulated" -p no:cacheprovider --durations=8 \
        tests/test_parity.py tests/test_check.py tests/test_device_fallback.py \
        tests/test_forward.py tests/test_gradcheck.py tests/test_kernels_compile.py \
        tests/test_cuda_views.py tests/test_cuda_loader.py tests/test_training_step.py \
        tests/test_conv_igemm.py tests/test_graph.py tests/test_nosync.py tests/test_fused.py tests/test_augment.py
    # (the parity tests above run the default convolution, implicit GEMM: kernels/conv2d_igemm.cu,
    # and test_conv_igemm.py its TF32 kernel, kernels/conv2d_igemm_tf32.cu; this keeps the old path)
    stage "GPU convolution parity through im2col + cuBLAS (GPUCNN_CONV=im2col)" 90 \
        env GPUCNN_CONV=im2col "$PY" -m pytest -q -rs -m "not emulated" -p no:cacheprovider \
        tests/test_parity.py tests/test_cuda_views.py -k conv
    stage "kernel benchmark (bandwidth vs copy, conv vs cuDNN)" 90 \
        "$PY" benchmarks/bench_kernels.py --json "$DEST/bench_kernels.json"
    stage "implicit-GEMM convolution per layer (vs im2col, cuDNN; TF32)" 150 \
        "$PY" benchmarks/bench_kernels.py --igemm-only --reps 10 --json "$DEST/bench_igemm.json"
    stage "data benchmark (folder loading when ../shared is there; crop+flip and normalise)" 120 \
        "$PY" benchmarks/bench_data.py
    if [ -f benchmarks/bench_train.py ]; then
        # step time vs PyTorch eager + cuDNN (TF32 off), LeNet and the CIFAR net at batch 64
        # and 256, then whole epochs (60k MNIST-sized images, data on the device) with the CUDA
        # graph on and off against a PyTorch eager loop: images/s and step ms
        stage "training benchmark vs PyTorch (steps; epochs graph on/off)" 180 \
            "$PY" benchmarks/bench_train.py --device cuda --quick --throughput 60000 \
            --json "$DEST/bench_train.json"
    fi
    # `gpucnn train --data mnist` end to end (issue 11's headline figure): the full 60k when
    # the IDX files are in $GPUCNN_MNIST_DIR (default data/mnist), else the t10k split
    MNIST_DIR="${GPUCNN_MNIST_DIR:-data/mnist}"
    SPLIT=none
    if ls "$MNIST_DIR"/train-images* >/dev/null 2>&1; then
        SPLIT=""
    elif ls "$MNIST_DIR"/t10k-images* >/dev/null 2>&1; then
        SPLIT="--t10k-split 8000"
    fi
    if [ "$SPLIT" != none ]; then
        for g in "" --no-graph; do
            # shellcheck disable=SC2086  # $SPLIT and $g are zero or more words on purpose
            stage "gpucnn train --data mnist $SPLIT $g (images/s in the epoch lines)" 120 \
                "$PY" -m gpucnn train --data mnist --data-dir "$MNIST_DIR" $SPLIT \
                --device cuda --epochs 3 --batch-size 256 --no-progress $g \
                --out "$DEST/mnist_run${g:+_nograph}"
        done
    else
        echo; echo "=== gpucnn train --data mnist: skipped, no MNIST IDX files in $MNIST_DIR" \
            "(set GPUCNN_MNIST_DIR); bench_train's 60k-image throughput rows stand in"
    fi
    echo
    echo "=== gpu_check.sh done $(date -u +%H:%M:%S): $([ $status -eq 0 ] && echo 'all stages passed' || echo 'SOME STAGES FAILED')"
    exit $status
} 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
