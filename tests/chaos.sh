#!/usr/bin/env bash
# The chaos run (tests/src/bin/chaos.rs): the pipeline under load while a
# seeded nemesis kills, pauses and cuts its pieces; prints a table of what was
# acknowledged, delivered and lost, and fails if anything acknowledged was
# lost, arrived out of order, or became two CloudEvents.
#   bash tests/chaos.sh [--minutes N | --seconds N] [--seed S] [--rate EVENTS_PER_SECOND]
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh
cargo build --quiet --workspace --locked
exec ./target/debug/chaos "$@"
