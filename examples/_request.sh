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
