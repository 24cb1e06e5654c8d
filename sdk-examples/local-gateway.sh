#!/usr/bin/env bash
# Runs a complete local gateway with no outside services: transformer,
# processor-client, the minimal Python user server and a sensor that prints every
# CloudEvent it receives. Configurations live in .demo/configs: add, edit or delete
# files there while it runs. Ctrl-C stops everything.
#   DEMO_SECONDS=N  stop by itself after N seconds (used by the test suite)
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh
cargo build --quiet --workspace --locked

demo=.demo
rm -rf "$demo"; mkdir -p "$demo/configs"
cp sdk-examples/demo-configs/* "$demo/configs/"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

export GATEWAY_NAME=demo-gateway
export TRANSFORMER_PORT=${TRANSFORMER_PORT:-9300}
export GATEWAY_PROCESSOR_CLIENT_HTTP_PORT=${GATEWAY_PROCESSOR_CLIENT_HTTP_PORT:-9393}
export GATEWAY_PROCESSOR_SERVER_HTTP_PORT=${GATEWAY_PROCESSOR_SERVER_HTTP_PORT:-8080}
export GATEWAY_PROCESSOR_CONFIG_MAP="$demo/configs"
export TRANSFORMER_DATA_DIR="$demo/transformer-data"
sensor_port=${SENSOR_PORT:-9500}
export SENSOR_WATCHERS="http://127.0.0.1:$sensor_port/"

python3 tests/support/sensor.py --port "$sensor_port" --print & pids+=($!)
./target/debug/transformer 2>"$demo/transformer.log" & pids+=($!)
python3 sdk-examples/python-minimal/user_server.py 2>"$demo/user-server.log" & pids+=($!)
./target/debug/processor-client 2>"$demo/processor-client.log" & pids+=($!)

cat >&2 <<MSG
Local gateway running:
  transformer       http://127.0.0.1:$TRANSFORMER_PORT/        (log: $demo/transformer.log)
  processor-client  http://127.0.0.1:$GATEWAY_PROCESSOR_CLIENT_HTTP_PORT/configs (log: $demo/processor-client.log)
  user server       http://127.0.0.1:$GATEWAY_PROCESSOR_SERVER_HTTP_PORT/
  sensor            http://127.0.0.1:$sensor_port/ prints each CloudEvent below
Edit files in $demo/configs to add, change or remove configurations. Ctrl-C stops.
MSG
if [[ -n "${DEMO_SECONDS:-}" ]]; then
  sleep "$DEMO_SECONDS"
else
  wait
fi
