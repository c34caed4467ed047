#!/usr/bin/env bash
# Benchmarks clonefs against the native filesystem and libfuse's passthrough_ll in one run and
# writes docs/benchmarks.md.  Usage: scripts/bench.sh [--quick] [--no-snapshots] [--no-send] [--no-db]
# [--no-farm] [--snapshots-only | --send-only | --db-only | --farm-only]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/install-deps.sh bench
cargo build
exec python3 scripts/bench.py "$CLONEFS_BIN" "$@"
