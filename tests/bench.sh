#!/usr/bin/env bash
# The gateway's benchmark, one command: builds release binaries and measures the
# machine's one-hop limit and the gateway end to end (HTTP, NATS core, JetStream),
# then the scaling series. Prints Markdown tables. `--smoke` runs every scenario
# for a moment (CI does this, with debug binaries, to keep it working).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh
if [[ "${1:-}" == "--smoke" ]]; then
  cargo build --quiet --workspace --locked
  GATEWAY_BIN_DIR=target/debug ./target/debug/bench --smoke
else
  cargo build --quiet --release --workspace --locked
  GATEWAY_BIN_DIR=target/release ./target/release/bench "$@"
fi
