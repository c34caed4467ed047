#!/usr/bin/env bash
# Runs every test: unit and integration tests (cargo test), then the real suites against
# mounted volumes: fsx, pjdfstest, PostgreSQL, fio. Installs what they need first.
#   scripts/test.sh           the default run (CI)
#   scripts/test.sh --long    the soaks only: 100 cycles of kill -9 of the daemon under a
#                             fsync'd write load with snapshots and clones, then 100 under
#                             PostgreSQL, and pjdfstest on a clone with remapped owners
#                             (about an hour)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/install-deps.sh test
cargo build
case "${1:-}" in
  "")
    cargo test 2>&1 | tee /tmp/clonefs-cargo-test.log
    scripts/suites/run.sh
    ;;
  --long)
    CLONEFS_KILL_CYCLES=${CLONEFS_KILL_CYCLES:-100} cargo test --test integration crash:: -- --nocapture
    CLONEFS_CRASH_CYCLES=${CLONEFS_CRASH_CYCLES:-100} scripts/suites/run.sh crash-postgres pjdfstest-remapped
    ;;
  *)
    echo "usage: scripts/test.sh [--long]" >&2
    exit 2
    ;;
esac
