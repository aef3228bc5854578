#!/usr/bin/env bash
# GPU check: is the forest really faster on the GPU? Measures the demo forest (50 trees, depth 10,
# 5 features) on an NVIDIA GPU and prints rows/s next to ONNX Runtime on this machine's CPU.
#
#   benchmarks/gpu_check.sh                 # cuML FIL in-process if cuml imports, else Triton in Docker
#   benchmarks/gpu_check.sh --mode cuml     # pip install cuml-cu12 first (RAPIDS)
#   benchmarks/gpu_check.sh --mode triton   # docker + NVIDIA Container Toolkit; stock 24.10 images,
#                                           # perf_analyzer from the -sdk image, FIL (GPU) vs onnxruntime (CPU)
#   benchmarks/gpu_check.sh --cpu-only      # only the CPU ONNX Runtime figure (no GPU needed)
#
# Options: --batch-sizes 1024,16384 --seconds 3 --python PATH --tag 24.10 --concurrency 4
# Output: one line per measurement, `device engine batch=N rows/s=R`, then the GPU/CPU ratio.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE=auto
BATCH_SIZES=1024,16384
SECONDS_PER_POINT=3
CONCURRENCY=4
TAG="${TRITON_TAG:-24.10}"
CPU_ONLY=0
PYTHON="${PYTHON:-}"

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --mode) MODE="$2"; shift 2 ;;
    --batch-sizes) BATCH_SIZES="$2"; shift 2 ;;
    --seconds) SECONDS_PER_POINT="$2"; shift 2 ;;
    --concurrency) CONCURRENCY="$2"; shift 2 ;;
    --tag) TAG="$2"; shift 2 ;;
    --python) PYTHON="$2"; shift 2 ;;
    --cpu-only) CPU_ONLY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
case "$MODE" in auto|cuml|triton) ;; *) echo "error: --mode must be auto, cuml or triton" >&2; exit 2 ;; esac
if [[ ! "$BATCH_SIZES" =~ ^[0-9]+(,[0-9]+)*$ ]]; then
  echo "error: --batch-sizes takes numbers separated by commas, e.g. 1024,16384" >&2; exit 2
fi
if [[ -z "$PYTHON" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/rf-triton-gpu-check.XXXXXX")"
CONTAINER=""
cleanup() {
  if [[ -n "$CONTAINER" ]]; then docker rm -f "$CONTAINER" >/dev/null 2>&1 || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# The demo forest in both formats, each export checked against sklearn before it is written.
for format in onnx fil; do
  "$PYTHON" -m rf_triton export --format "$format" --repository "$WORK/$format" >"$WORK/export.log" 2>&1 || {
    cat "$WORK/export.log" >&2; echo "error: export --format $format failed" >&2; exit 1; }
done

# CPU: ONNX Runtime in-process on the exported model.onnx, all cores, host numpy input.
"$PYTHON" - "$WORK/onnx/random_forest/1/model.onnx" "$BATCH_SIZES" "$SECONDS_PER_POINT" > "$WORK/cpu.txt" <<'PY'
import os, sys, time
import numpy as np
import onnxruntime as ort

path, batches, seconds = sys.argv[1], [int(b) for b in sys.argv[2].split(",")], float(sys.argv[3])
options = ort.SessionOptions()
options.intra_op_num_threads = 0  # all cores
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name
rng = np.random.default_rng(0)
for batch in batches:
    X = rng.standard_normal((batch, 5), dtype=np.float32)
    session.run(None, {name: X})
    rows, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        session.run(None, {name: X})
        rows += batch
    rate = rows / (time.perf_counter() - started)
    print(f"cpu onnxruntime({os.cpu_count()} cores) batch={batch} rows/s={rate:.0f}")
PY
cat "$WORK/cpu.txt"
if [[ "$CPU_ONLY" == 1 ]]; then exit 0; fi

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "error: no NVIDIA GPU here (nvidia-smi missing or finds no device); run this on a GPU host" >&2
  exit 3
fi
nvidia-smi -L

if [[ "$MODE" == auto ]]; then
  if "$PYTHON" -c "import cuml" >/dev/null 2>&1; then MODE=cuml; else MODE=triton; fi
fi

if [[ "$MODE" == cuml ]]; then
  # cuML FIL in-process on the very checkpoint.tl the FIL backend serves; host input, so the
  # host→device copy of every batch is in the time, as it is for a server.
  "$PYTHON" - "$WORK/fil/random_forest/1/checkpoint.tl" "$BATCH_SIZES" "$SECONDS_PER_POINT" > "$WORK/gpu.txt" <<'PY'
import sys, time
import numpy as np
from cuml.fil import ForestInference

path, batches, seconds = sys.argv[1], [int(b) for b in sys.argv[2].split(",")], float(sys.argv[3])
try:  # cuML < 25.x spells the regressor flag output_class, later releases is_classifier
    model = ForestInference.load(path, model_type="treelite_checkpoint", output_class=False)
except TypeError:
    model = ForestInference.load(path, model_type="treelite_checkpoint", is_classifier=False)
rng = np.random.default_rng(0)
for batch in batches:
    X = rng.standard_normal((batch, 5), dtype=np.float32)
    np.asarray(model.predict(X))
    rows, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        np.asarray(model.predict(X))  # back on the host: synchronised
        rows += batch
    rate = rows / (time.perf_counter() - started)
    print(f"gpu cuml-fil batch={batch} rows/s={rate:.0f}")
PY
else
  command -v docker >/dev/null 2>&1 || { echo "error: --mode triton needs docker with the NVIDIA Container Toolkit" >&2; exit 3; }
  IMAGE="nvcr.io/nvidia/tritonserver:${TAG}-py3"
  : > "$WORK/gpu.txt"
  for variant in fil onnx; do
    HTTP_PORT=18000; GRPC_PORT=18001
    CONTAINER="rf-triton-gpu-check-$$-$variant"
    docker run -d --rm --name "$CONTAINER" --gpus all --shm-size 1g -p "127.0.0.1:$HTTP_PORT:8000" \
      -p "127.0.0.1:$GRPC_PORT:8001" -v "$WORK/$variant:/models:ro" "$IMAGE" \
      tritonserver --model-repository=/models --strict-readiness=true >/dev/null
    for _ in $(seq 1 120); do
      curl -fsS "http://127.0.0.1:$HTTP_PORT/v2/health/ready" >/dev/null 2>&1 && break
      sleep 1
    done
    curl -fsS "http://127.0.0.1:$HTTP_PORT/v2/health/ready" >/dev/null || {
      docker logs "$CONTAINER" | tail -20 >&2; echo "error: $variant model did not load" >&2; exit 1; }
    device=$([[ "$variant" == fil ]] && echo gpu || echo cpu)
    engine=$([[ "$variant" == fil ]] && echo triton-fil || echo triton-onnxruntime)
    max_batch=$(sed -n 's/^max_batch_size: \([0-9]*\)/\1/p' "$WORK/$variant/random_forest/config.pbtxt")
    for batch in ${BATCH_SIZES//,/ }; do
      (( batch > max_batch )) && batch=$max_batch
      docker run --rm --net host "${IMAGE}-sdk" perf_analyzer -m random_forest -i grpc \
        -u "127.0.0.1:$GRPC_PORT" -b "$batch" --concurrency-range "$CONCURRENCY" \
        --measurement-interval $((SECONDS_PER_POINT * 1000)) -f "/dev/stdout" > "$WORK/pa.csv" 2>/dev/null
      rate=$(awk -F, 'NR==1{for(i=1;i<=NF;i++) if($i=="Inferences/Second") c=i} NR==2{print int($c)}' "$WORK/pa.csv")
      echo "$device $engine batch=$batch rows/s=$rate" | tee -a "$WORK/gpu.txt"
    done
    docker rm -f "$CONTAINER" >/dev/null; CONTAINER=""
  done
fi

cat "$WORK/gpu.txt"
best() { sed -n "s/^$1 .*rows\/s=\([0-9]*\)$/\1/p" "$2" | sort -n | tail -1; }
gpu=$(best gpu "$WORK/gpu.txt"); cpu=$(best cpu "$WORK/cpu.txt")
if [[ -n "$gpu" && -n "$cpu" && "$cpu" -gt 0 ]]; then
  awk -v g="$gpu" -v c="$cpu" 'BEGIN { printf "best GPU %d rows/s vs best in-process CPU ONNX Runtime %d rows/s: %.1fx\n", g, c, g / c }'
fi
