#!/usr/bin/env bash
# The seeds' fourth way: no processor-client, no user server. Post an event
# straight to the transformer, which makes it a CloudEvent and delivers it.
#   post-event.sh SRC [DATA]      DATA defaults to standard input
# TRANSFORMER_HOST (127.0.0.1) and TRANSFORMER_PORT (9300) say where. A 503 is
# retried after its Retry-After; the CloudEvent id is printed on success.
set -euo pipefail
src=${1:?usage: post-event.sh SRC [DATA]}
if [[ $# -ge 2 ]]; then data=$2; else data=$(cat); fi
payload=$(printf '%s' "$data" | base64 | tr -d '\n')
url="http://${TRANSFORMER_HOST:-127.0.0.1}:${TRANSFORMER_PORT:-9300}/"
body=$(printf '{"src":"%s","payload":"%s"}' "${src//\"/\\\"}" "$payload")
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
for _ in $(seq 1 30); do
  status=$(curl -s -o "$tmp/body" -D "$tmp/headers" -w '%{http_code}' \
    -H 'Content-Type: application/json' --data "$body" "$url" || true)
  case $status in
    2*) sed -n 's/.*"id":"\([^"]*\)".*/\1/p' "$tmp/body"; exit 0 ;;
    503|000) sleep "$(sed -n 's/^[Rr]etry-[Aa]fter: *\([0-9]*\).*/\1/p' "$tmp/headers" 2>/dev/null | grep . || echo 1)" ;;
    *) echo "the transformer refused the event ($status): $(cat "$tmp/body")" >&2; exit 1 ;;
  esac
done
echo "gave up after 30 attempts" >&2
exit 1
