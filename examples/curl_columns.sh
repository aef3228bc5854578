#!/usr/bin/env bash
# A DataFrame model over HTTP with curl: one input per column (strings as BYTES, numbers in the datatype
# the model's metadata declares for each: FP32, or FP64 where the model computes with them in double),
# the predicted labels, and Triton's classification extension (top classes as "score:index:label").
#
# The model: a classifier trained on examples/customers.csv, with its string column encoded inside it:
#   rf-triton export --data examples/customers.csv --target segment --name customers
# Usage: examples/curl_columns.sh [HOST:PORT]
#   address: the argument, else $RF_TRITON_URL, else 127.0.0.1:8000; model: $RF_TRITON_MODEL (customers)
set -euo pipefail

URL="${1:-${RF_TRITON_URL:-127.0.0.1:8000}}"
URL="${URL#http://}"
MODEL="${RF_TRITON_MODEL:-customers}"
BASE="http://${URL}/v2/models/${MODEL}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# shellcheck source=_request.sh
source "$(dirname "$0")/_request.sh"

request "$work/metadata.json" "$BASE"
SIZE_TYPE="$(input_datatype "$work/metadata.json" size)"
AGE_TYPE="$(input_datatype "$work/metadata.json" age)"

# Two customers, one column per input, shape [rows, 1]. NaN is a missing value: the model routes it as
# sklearn does (JSON has no NaN literal, Triton's parser accepts it).
cat > "$work/request.json" <<JSON
{"inputs": [
   {"name": "city", "shape": [2, 1], "datatype": "BYTES", "data": ["paris", "brest"]},
   {"name": "size", "shape": [2, 1], "datatype": "$SIZE_TYPE", "data": [120.5, 40.0]},
   {"name": "age", "shape": [2, 1], "datatype": "$AGE_TYPE", "data": [35.0, NaN]}],
 "outputs": [{"name": "label"}, {"name": "probabilities", "parameters": {"classification": 2}}]}
JSON
request "$work/response.json" "$BASE/infer" -H 'Content-Type: application/json' --data-binary "@$work/request.json"
echo "response: $(cat "$work/response.json")"
# "data" of each output, in the order asked for: the labels, then the top-2 classes of each row.
data="$(grep -o '"data":\[[^]]*\]' "$work/response.json" | sed 's/"data":\[//; s/\]//; s/"//g; s/,/ /g')"
echo "labels: $(sed -n 1p <<< "$data")"
echo "top 2 per row (score:index:label): $(sed -n 2p <<< "$data")"
