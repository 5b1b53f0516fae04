#!/usr/bin/env bash
# The GPU rows of docs/performance.md ("On a GPU"), as one prepared run for a
# session that is lent a GPU machine (issue 7). That machine has its own
# Python 3.12 with CUDA builds of torch and JAX, open_clip's dependencies and
# pytest, but no Keras, no keras-hub, no open_clip and no TensorFlow, and it
# reaches no package registry (docs/backends.md, "GPUs"). So:
#
#   1. here, where pip reaches the registries:
#        bash benchmarks/gpu_session.sh prepare
#      downloads the wheels it lacks into .whl/ (pure Python, plus cp312
#      builds of h5py, optree and regex; 15 MB, git-ignored, under the
#      64 MiB that `carry` takes);
#   2. on the lent machine, through the device tool's `run` with
#      carry [".whl"] and timeout_s 580 (the parts' limits add up to 540 s):
#        bash benchmarks/gpu_session.sh run
#      installs them without dependencies, then writes under $OUT:
#        gpu_benchmark.md  open_clip_benchmark.py --device gpu (bfloat16),
#                          open_clip, keras_clip on JAX and torch, keras-hub
#        gpu_tests_<backend>.txt  the suite on the GPU (JAX, torch; the
#                          files and tests that need TensorFlow, tf.data or
#                          the in-graph tokenizer fail there for want of it:
#                          read the failures against that)
#      Each part has its own time limit, so one slow part leaves the others'
#      results. No TensorFlow rows: its wheel is far over the carry limit.
#
# BENCH_CASES, BENCH_IMPLEMENTATIONS, BENCH_STEPS, BENCH_TIMEOUT, TESTS and
# TEST_TIMEOUT override the defaults; `run` with BENCH_DEVICE=cpu is a smoke
# test of the commands on a machine without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=.whl
# Installed on the lent machine whatever it has: the pinned Keras stack and
# the reference implementations.
PINNED=(keras==3.15.1 keras-hub==0.32.0 open-clip-torch==3.3.0 emoji==2.16.0)
# Their dependencies, each installed only where the machine lacks it (its
# image has torch, JAX, numpy and open_clip's timm / torchvision / hub).
# keras-hub's own list names tensorflow-text, which cannot be carried, so
# every wheel goes in with --no-deps.
DEPENDENCIES=(
    namex optree rich markdown-it-py mdurl pygments h5py absl-py
    kagglehub kagglesdk ftfy wcwidth regex
)

case "${1:-}" in
prepare)
    mkdir -p "$WHEELS"
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
        --python-version 3.12 --platform manylinux2014_x86_64 \
        -d "$WHEELS" "${PINNED[@]}" "${DEPENDENCIES[@]}"
    du -sh "$WHEELS"
    ls "$WHEELS"
    ;;
run)
    OUT=${OUT:-outputs/gpu_session}
    mkdir -p "$OUT"
    DEVICE=${BENCH_DEVICE:-gpu}
    # 240 + 2 x 150 s: inside one `run` (at most 600 s; give it timeout_s 580).
    BENCH_LIMIT=${BENCH_TIMEOUT:-240}
    TEST_LIMIT=${TEST_TIMEOUT:-150}
    export HF_HUB_OFFLINE=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
    # Full float32 where the tests compare with float32 references (docs/backends.md "GPUs",
    # "TF32"); the benchmark itself runs in bfloat16.
    export JAX_DEFAULT_MATMUL_PRECISION=highest
    if [ -d "$WHEELS" ]; then
        for wheel in "$WHEELS"/*.whl; do
            name=$(basename "$wheel" | cut -d- -f1)
            pinned=0
            for spec in "${PINNED[@]}"; do
                [ "$(echo "${spec%%==*}" | tr - _)" = "$name" ] && pinned=1
            done
            if [ "$pinned" = 1 ] || ! python -m pip show "$name" >/dev/null 2>&1; then
                python -m pip install --quiet --no-index --no-deps "$wheel" 2>&1 | tail -2
            fi
        done
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null \
        > "$OUT/gpu.txt" || echo "no nvidia-smi" > "$OUT/gpu.txt"
    python -c "import keras, torch, jax; print('keras', keras.__version__, 'torch',
torch.__version__, torch.cuda.is_available(), 'jax', jax.__version__, jax.devices())" \
        >> "$OUT/gpu.txt" 2>&1 || true
    timeout "$BENCH_LIMIT" python benchmarks/open_clip_benchmark.py --device "$DEVICE" \
        --threads 8 --steps "${BENCH_STEPS:-10}" \
        --cases ${BENCH_CASES:-ViT-B/32 RN50} \
        --implementations ${BENCH_IMPLEMENTATIONS:-open_clip jax torch keras_hub:jax} \
        > "$OUT/gpu_benchmark.md" 2>&1 || echo "benchmark: exit $?" >> "$OUT/gpu_benchmark.md"
    for backend in jax torch; do
        KERAS_BACKEND=$backend timeout "$TEST_LIMIT" python -m pytest -q -p no:cacheprovider \
            --continue-on-collection-errors -rf \
            ${TESTS:-tests} > "$OUT/gpu_tests_$backend.txt" 2>&1 \
            || echo "pytest: exit $?" >> "$OUT/gpu_tests_$backend.txt"
        tail -2 "$OUT/gpu_tests_$backend.txt"
    done
    grep "^|" "$OUT/gpu_benchmark.md" || tail -20 "$OUT/gpu_benchmark.md"
    ;;
*)
    echo "usage: bash benchmarks/gpu_session.sh prepare|run" >&2
    exit 2
    ;;
esac
