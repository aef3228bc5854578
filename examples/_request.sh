# Sourced by the curl examples. request OUTFILE URL [curl options...]: the body goes to OUTFILE; a
# refusal ends the script with Triton's message.
request() {
    local out="$1" url="$2" status
    shift 2
    if ! status="$(curl --silent --show-error --max-time 30 --output "$out" --write-out '%{http_code}' "$@" "$url")"; then
        echo "error: no answer from $url" >&2
        exit 1
    fi
    if [[ "$status" != 2* ]]; then
        echo "error: $url answered HTTP $status: $(head -c 500 "$out")" >&2
        exit 1
    fi
}

# input_datatype METADATA_JSON INPUT: the datatype the model's metadata declares for INPUT (FP32, FP64,
# BYTES): each input is sent in its own.
input_datatype() {
    local datatype
    datatype="$(grep -o "{\"name\":\"$2\",\"datatype\":\"[A-Z0-9]*\"" "$1" | head -n 1 | sed 's/.*"datatype":"//; s/"$//')"
    if [[ -z "$datatype" ]]; then
        echo "error: the model's metadata has no input $2: $(head -c 500 "$1")" >&2
        exit 1
    fi
    echo "$datatype"
}
