#!/usr/bin/env bash
# HTTP/REST (KServe v2 protocol) with nothing but curl: readiness, model metadata, then the same two
# rows predicted once with JSON tensor data and once with Triton's binary tensor data extension, in
# the datatype the metadata declares for the input (FP32, or FP64 for a model that computes in double).
#
# Usage: examples/curl_http.sh [HOST:PORT]
#   address: the argument, else $RF_TRITON_URL, else 127.0.0.1:8000 (the HTTP port)
#   RF_TRITON_MODEL (random_forest), RF_TRITON_INPUT (X), RF_TRITON_OUTPUT (variable): what rf-triton export writes
set -euo pipefail

URL="${1:-${RF_TRITON_URL:-127.0.0.1:8000}}"
URL="${URL#http://}"
MODEL="${RF_TRITON_MODEL:-random_forest}"
INPUT="${RF_TRITON_INPUT:-X}"
OUTPUT="${RF_TRITON_OUTPUT:-variable}"
BASE="http://${URL}/v2/models/${MODEL}"

# Two rows of the demo model's five features (the same rows as python_client.py's SAMPLE_ROWS).
ROWS_JSON='[[0.5, -1.25, 0.25, 1.5, -0.75], [-0.5, 1.0, -1.5, 0.125, 2.0]]'
# The same ten values as little-endian FP32 and FP64 bytes, row after row: what binary tensor data carries.
ROWS_FP32='\x00\x00\x00\x3f\x00\x00\xa0\xbf\x00\x00\x80\x3e\x00\x00\xc0\x3f\x00\x00\x40\xbf'\
'\x00\x00\x00\xbf\x00\x00\x80\x3f\x00\x00\xc0\xbf\x00\x00\x00\x3e\x00\x00\x00\x40'
ROWS_FP64='\x00\x00\x00\x00\x00\x00\xe0\x3f\x00\x00\x00\x00\x00\x00\xf4\xbf\x00\x00\x00\x00\x00\x00\xd0\x3f'\
'\x00\x00\x00\x00\x00\x00\xf8\x3f\x00\x00\x00\x00\x00\x00\xe8\xbf\x00\x00\x00\x00\x00\x00\xe0\xbf'\
'\x00\x00\x00\x00\x00\x00\xf0\x3f\x00\x00\x00\x00\x00\x00\xf8\xbf\x00\x00\x00\x00\x00\x00\xc0\x3f'\
'\x00\x00\x00\x00\x00\x00\x00\x40'

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# shellcheck source=_request.sh
source "$(dirname "$0")/_request.sh"

request "$work/ready" "http://${URL}/v2/health/ready"
echo "server ready at http://${URL}"

request "$work/metadata.json" "$BASE"
echo "metadata: $(cat "$work/metadata.json")"
DATATYPE="$(input_datatype "$work/metadata.json" "$INPUT")"
case "$DATATYPE" in
    FP32) ROWS_BYTES="$ROWS_FP32"; BYTES_SIZE=40 ;;
    FP64) ROWS_BYTES="$ROWS_FP64"; BYTES_SIZE=80 ;;
    *) echo "error: input $INPUT is $DATATYPE; this example sends numbers (FP32 or FP64)" >&2; exit 1 ;;
esac

# 1. JSON: the tensor's values are listed in "data" (nested lists are flattened by Triton).
cat > "$work/request.json" <<JSON
{"inputs": [{"name": "$INPUT", "shape": [2, 5], "datatype": "$DATATYPE", "data": $ROWS_JSON}],
 "outputs": [{"name": "$OUTPUT"}]}
JSON
request "$work/response.json" "$BASE/infer" -H 'Content-Type: application/json' --data-binary "@$work/request.json"
echo "json response: $(cat "$work/response.json")"
predictions="$(grep -o '"data":\[[^]]*\]' "$work/response.json" | sed 's/"data":\[//; s/\]//; s/,/ /g')"
echo "json predictions: $predictions"

# 2. Binary: a JSON header whose length goes in Inference-Header-Content-Length, then the raw tensor
#    bytes (binary_data_size of them); "binary_data": true asks for the output in binary the same way.
header="{\"inputs\":[{\"name\":\"$INPUT\",\"shape\":[2,5],\"datatype\":\"$DATATYPE\",\"parameters\":{\"binary_data_size\":$BYTES_SIZE}}],\
\"outputs\":[{\"name\":\"$OUTPUT\",\"parameters\":{\"binary_data\":true}}]}"
{ printf '%s' "$header"; printf "$ROWS_BYTES"; } > "$work/request.bin"
request "$work/response.bin" "$BASE/infer" --dump-header "$work/headers.txt" \
    -H 'Content-Type: application/octet-stream' -H "Inference-Header-Content-Length: ${#header}" \
    --data-binary "@$work/request.bin"
json_length="$(grep -i '^Inference-Header-Content-Length:' "$work/headers.txt" | tr -dc '0-9')"
echo "binary response header: $(head -c "$json_length" "$work/response.bin")"
# The output bytes follow the JSON header: little-endian FP32, which od reads natively on x86_64.
predictions="$(tail -c +"$((json_length + 1))" "$work/response.bin" | od -An -v -tf4 | xargs)"
echo "binary predictions: $predictions"
