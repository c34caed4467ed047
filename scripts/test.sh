#!/usr/bin/env bash
# Runs every test: unit and integration tests (cargo test), then the real suites against
# mounted volumes: fsx, pjdfstest, PostgreSQL, fio. Installs what they need first.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/install-deps.sh test
cargo build
cargo test 2>&1 | tee /tmp/clonefs-cargo-test.log
scripts/suites/run.sh
