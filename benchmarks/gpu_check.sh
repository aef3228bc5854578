#!/usr/bin/env bash
# GPU check: is the forest faster on the GPU, and does it still predict what sklearn predicts? Times
# the demo forest (50 trees, depth 10, 5 features) on an NVIDIA GPU next to ONNX Runtime on this
# machine's CPU, and compares every engine's predictions with sklearn's on the same rows.
#
#   benchmarks/gpu_check.sh                 # nvForest in-process if it (or cuml) imports, else Triton in Docker
#   benchmarks/gpu_check.sh --mode nvforest # pip install nvforest-cu12 first (RAPIDS); falls back to cuml.fil
#   benchmarks/gpu_check.sh --mode triton   # docker + NVIDIA Container Toolkit; stock 26.08 images,
#                                           # perf_analyzer from the -sdk image, FIL (GPU) vs onnxruntime (CPU)
#   benchmarks/gpu_check.sh --cpu-only      # only the CPU ONNX Runtime figure (no GPU needed)
#
# Options: --batch-sizes 1024,16384 --seconds 3 --python PATH --tag 26.08 --concurrency 4
# Output: one line per measurement, `device engine batch=N rows/s=R max_rel_err=E` (E: largest
# relative error against sklearn on the timed rows, the export's parity rule), then the GPU/CPU ratio.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE=auto
BATCH_SIZES=1024,16384
SECONDS_PER_POINT=3
CONCURRENCY=4
TAG="${TRITON_TAG:-26.08}"  # the default release of src/rf_triton/releases.py
CPU_ONLY=0
PYTHON="${PYTHON:-}"

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }

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
case "$MODE" in auto|nvforest|triton) ;; *) echo "error: --mode must be auto, nvforest or triton" >&2; exit 2 ;; esac
if [[ ! "$BATCH_SIZES" =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]]; then
  echo "error: --batch-sizes takes numbers separated by commas, e.g. 1024,16384" >&2; exit 2
fi
# Seconds may be fractional (0.5): bash arithmetic is integer-only, so awk converts to milliseconds.
if [[ ! "$SECONDS_PER_POINT" =~ ^([0-9]+\.?[0-9]*|\.[0-9]+)$ ]] || \
   ! MEASUREMENT_MS=$(awk -v s="$SECONDS_PER_POINT" 'BEGIN { ms = int(s * 1000 + 0.5); if (ms < 1) exit 1; print ms }'); then
  echo "error: --seconds takes a positive number of seconds, e.g. 3 or 0.5" >&2; exit 2
fi
if [[ ! "$CONCURRENCY" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: --concurrency takes a positive whole number" >&2; exit 2
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
check() { "$PYTHON" -m rf_triton.benchmarks.gpu_check "$@"; }

# One forest for everything: trained once and saved, exported in both formats from that file, and
# sklearn's predictions for the timed rows kept as the reference. Each export also checks its own parity.
check prepare "$WORK" --batch-sizes "$BATCH_SIZES"
for format in onnx fil; do
  "$PYTHON" -m rf_triton export --model "$WORK/forest.joblib" --format "$format" --repository "$WORK/$format" \
    >"$WORK/export.log" 2>&1 || { cat "$WORK/export.log" >&2; echo "error: export --format $format failed" >&2; exit 1; }
done

# CPU: ONNX Runtime in-process on the exported model.onnx, all cores, host numpy input.
check cpu "$WORK" --batch-sizes "$BATCH_SIZES" --seconds "$SECONDS_PER_POINT" > "$WORK/cpu.txt"
cat "$WORK/cpu.txt"
if [[ "$CPU_ONLY" == 1 ]]; then exit 0; fi

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "error: no NVIDIA GPU here (nvidia-smi missing or finds no device); run this on a GPU host" >&2
  exit 3
fi
nvidia-smi -L

if [[ "$MODE" == auto ]]; then
  if "$PYTHON" -c "import nvforest" >/dev/null 2>&1 || "$PYTHON" -c "import cuml" >/dev/null 2>&1; then
    MODE=nvforest
  else
    MODE=triton
  fi
fi

if [[ "$MODE" == nvforest ]]; then
  check nvforest "$WORK" --batch-sizes "$BATCH_SIZES" --seconds "$SECONDS_PER_POINT" > "$WORK/gpu.txt"
else
  command -v docker >/dev/null 2>&1 || { echo "error: --mode triton needs docker with the NVIDIA Container Toolkit" >&2; exit 3; }
  IMAGE="nvcr.io/nvidia/tritonserver:${TAG}-py3"
  : > "$WORK/gpu.txt"
  mkdir -p "$WORK/perf"
  for variant in fil onnx; do
    HTTP_PORT=18000; GRPC_PORT=18001
    CONTAINER="rf-triton-gpu-check-$$-$variant"
    # Mounted writable, not :ro: the FIL backend (r24.10 tl_utils.h and later) opens checkpoint.tl with a
    # read-write std::fstream and cannot load it from a read-only mount (Triton issues #8610, #8323).
    docker run -d --rm --name "$CONTAINER" --gpus all --shm-size 1g -p "127.0.0.1:$HTTP_PORT:8000" \
      -p "127.0.0.1:$GRPC_PORT:8001" -v "$WORK/$variant:/models" "$IMAGE" \
      tritonserver --model-repository=/models --strict-readiness=true >/dev/null
    for _ in $(seq 1 120); do
      curl -fsS "http://127.0.0.1:$HTTP_PORT/v2/health/ready" >/dev/null 2>&1 && break
      sleep 1
    done
    curl -fsS "http://127.0.0.1:$HTTP_PORT/v2/health/ready" >/dev/null || {
      docker logs "$CONTAINER" 2>&1 | tail -20 >&2; echo "error: $variant model did not load" >&2; exit 1; }
    device=$([[ "$variant" == fil ]] && echo gpu || echo cpu)
    engine=$([[ "$variant" == fil ]] && echo triton-fil || echo triton-onnxruntime)
    max_batch=$(sed -n 's/^max_batch_size: \([0-9]*\)/\1/p' "$WORK/$variant"/*/config.pbtxt)
    for batch in ${BATCH_SIZES//,/ }; do
      (( batch > max_batch )) && batch=$max_batch
      # perf_analyzer prints its report on stdout: the CSV goes to its own file (-f) in a mounted
      # folder, written as this user so that cleanup can remove it.
      rm -f "$WORK/perf/pa.csv"
      docker run --rm --net host --user "$(id -u):$(id -g)" -v "$WORK/perf:/perf" "${IMAGE}-sdk" \
        perf_analyzer -m random_forest -i grpc -u "127.0.0.1:$GRPC_PORT" -b "$batch" \
        --concurrency-range "$CONCURRENCY" --measurement-interval "$MEASUREMENT_MS" -f /perf/pa.csv \
        > "$WORK/perf/report.txt" 2>&1 || { tail -20 "$WORK/perf/report.txt" >&2; echo "error: perf_analyzer failed" >&2; exit 1; }
      # Inferences/Second counts rows (batch × requests); a float, e.g. 51234.5.
      rate=$(awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == "Inferences/Second") c = i }
                      NR == 2 && c { printf "%.0f", $c }' "$WORK/perf/pa.csv")
      [[ -n "$rate" ]] || { cat "$WORK/perf/pa.csv" >&2; echo "error: no Inferences/Second in perf_analyzer's CSV" >&2; exit 1; }
      check served "$WORK" --url "127.0.0.1:$HTTP_PORT" --device "$device" --engine "$engine" --batch "$batch" \
        --rows-per-s "$rate" | tee -a "$WORK/gpu.txt"
    done
    docker rm -f "$CONTAINER" >/dev/null; CONTAINER=""
  done
fi

cat "$WORK/gpu.txt"
best() { awk -v d="$1" '$1 == d { for (i = 2; i <= NF; i++) if ($i ~ /^rows\/s=/) { r = substr($i, 8) + 0; if (r > m) m = r } }
                        END { if (m > 0) printf "%.0f", m }' "$2"; }
gpu=$(best gpu "$WORK/gpu.txt"); cpu=$(best cpu "$WORK/cpu.txt")
if [[ -n "$gpu" && -n "$cpu" ]]; then
  awk -v g="$gpu" -v c="$cpu" 'BEGIN { printf "best GPU %d rows/s vs best in-process CPU ONNX Runtime %d rows/s: %.1fx\n", g, c, g / c }'
fi
