#!/usr/bin/env bash
# `rf-triton predict` from a shell script: rows given with --values, then a CSV whose columns are
# matched to the model's feature names (here deliberately in reverse order).
#
# Usage: examples/predict.sh [HOST:PORT] [http|grpc]
#   address: the argument, else $RF_TRITON_URL, else 127.0.0.1:8000; protocol: else $RF_TRITON_PROTOCOL, else http
#   RF_TRITON: the command to run (default: rf-triton on PATH, e.g. .venv/bin/rf-triton)
set -euo pipefail

URL="${1:-${RF_TRITON_URL:-127.0.0.1:8000}}"
PROTOCOL="${2:-${RF_TRITON_PROTOCOL:-http}}"
RF_TRITON="${RF_TRITON:-rf-triton}"
MODEL="${RF_TRITON_MODEL:-random_forest}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Rows separated by ';' (the same rows as python_client.py's SAMPLE_ROWS). One prediction per line.
values="$("$RF_TRITON" predict --url "$URL" --protocol "$PROTOCOL" --model "$MODEL" \
    --values '0.5,-1.25,0.25,1.5,-0.75;-0.5,1.0,-1.5,0.125,2.0')"
echo "values predictions:" $values

# The demo model's features are x0..x4; the client puts the columns in the model's order by name.
cat > "$work/rows.csv" <<'CSV'
x4,x3,x2,x1,x0
-0.75,1.5,0.25,-1.25,0.5
2.0,0.125,-1.5,1.0,-0.5
CSV
from_csv="$("$RF_TRITON" predict --url "$URL" --protocol "$PROTOCOL" --model "$MODEL" --input "$work/rows.csv")"
echo "csv predictions:" $from_csv
