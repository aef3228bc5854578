#!/usr/bin/env bash
# The release matrix: every ONNX Runtime and the oldest and newest treelite of src/rf_triton/releases.py,
# each in its own small virtualenv, run the models the project exports and must answer like sklearn.
#
#   .ci/release_matrix.sh [RESULT.json]      (default benchmarks/results/release_matrix.json, and .md)
#
# Needs the project virtualenv (.venv, or PYTHON=...). Wheels are downloaded once into
# $RF_TRITON_MATRIX_CACHE (default ~/.cache/rf-triton-matrix/wheels), then installed from there
# with --no-index. Exits 1 if any version fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
RESULT="${1:-benchmarks/results/release_matrix.json}"
WHEELS="${RF_TRITON_MATRIX_CACHE:-$HOME/.cache/rf-triton-matrix}/wheels"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/rf-triton-matrix.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WHEELS" "$WORK/results"
# The small virtualenvs use the interpreter the project venv was made from (same Python version).
BASE_PYTHON="$("$PYTHON" -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))')"
NUMPY_PIN="$("$PYTHON" -c 'import numpy; print(f"numpy=={numpy.__version__}")')"
read -r -a ORT_VERSIONS <<< "$("$PYTHON" -c 'from rf_triton import releases; print(*releases.onnxruntime_versions())')"
read -r -a TREELITE_VERSIONS <<< "$("$PYTHON" -c 'from rf_triton import releases; v = releases.treelite_versions(); print(v[0], v[-1])')"
TIMING="$WORK/timing.txt"

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# A venv holding only PACKAGE==VERSION and numpy (and, for treelite, the packaging and scipy it
# imports), from cached wheels downloaded the first time.
small_venv() {
  local package="$1" version="$2" venv="$WORK/venv-$1-$2" deps=(--no-deps)
  [[ "$package" == treelite ]] && deps=()
  if ! ls "$WHEELS/${package}-${version}-"*.whl >/dev/null 2>&1; then
    "$PYTHON" -m pip download -q -d "$WHEELS" --only-binary=:all: "${package}==${version}" "$NUMPY_PIN"
  fi
  "$BASE_PYTHON" -m venv --without-pip "$venv"  # the project venv's pip installs into it: no ensurepip per venv
  # onnxruntime: --no-deps, its sympy/coloredlogs serve its tools, not the InferenceSession checked here.
  "$PYTHON" -m pip --python "$venv/bin/python" install -q --no-compile "${deps[@]}" --no-index --find-links "$WHEELS" \
    "${package}==${version}" "$NUMPY_PIN"
  echo "$venv"
}

started="$(now)"
step="$(now)"
"$PYTHON" .ci/release_matrix.py export "$WORK/export"
echo "export $(elapsed "$step")" >> "$TIMING"

status=0
runs=()
for version in "${ORT_VERSIONS[@]}"; do runs+=("onnxruntime $version check-onnx"); done
for version in "${TREELITE_VERSIONS[@]}"; do runs+=("treelite $version check-fil"); done
for run in "${runs[@]}"; do
  read -r package version command <<< "$run"
  step="$(now)"
  venv="$(small_venv "$package" "$version")"
  "$venv/bin/python" .ci/release_matrix.py "$command" "$WORK/export" "$WORK/results/$package-$version.json" || status=1
  echo "$package-$version $(elapsed "$step")" >> "$TIMING"
  rm -rf "$venv"
done
echo "total $(elapsed "$started")" >> "$TIMING"
"$PYTHON" - "$TIMING" "$WORK/export/timing.json" <<'PY'
import json, sys
pairs = [line.split() for line in open(sys.argv[1]) if line.strip()]
json.dump({name: float(seconds) for name, seconds in pairs}, open(sys.argv[2], "w"), indent=2)
PY
cp -r "$WORK/results" "$WORK/export/results"
"$PYTHON" .ci/release_matrix.py report "$WORK/export" "$RESULT" || status=1
exit "$status"
