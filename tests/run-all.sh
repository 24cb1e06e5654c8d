#!/usr/bin/env bash
# Runs every test of the gateway: unit tests next to the code, end-to-end tests in
# tests/ (real processes, real user servers, a real sensor), then a smoke run of
# the local demo gateway. Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh
cargo build --workspace --locked --all-targets
cargo test --workspace --locked
GATEWAY_BIN_DIR=target/debug ./target/debug/bench --smoke > /dev/null
echo "benchmark smoke: every scenario ran"
# The chaos run (docs/delivery.md): 60 s of faults everywhere at once with a
# fresh seed; it fails on anything acknowledged lost, out of order, delivered as
# two CloudEvents, or taken through two replicas at once, printing its seed.
./target/debug/chaos --seconds 60
out=$(DEMO_SECONDS=${DEMO_SECONDS:-8} bash sdk-examples/local-gateway.sh 2>/dev/null)
if grep -q '"specversion": "1.0"' <<<"$out"; then
  echo "demo smoke: CloudEvents printed"
else
  echo "demo smoke: no CloudEvent printed by the local gateway" >&2
  exit 1
fi
