# Sourced by the scripts: one cargo profile and a target dir outside the checkout, so RocksDB's
# C++ is compiled once per machine and reused by every checkout and CI run.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/clonefs-target}
export PATH="$HOME/.cargo/bin:$PATH"
CLONEFS_BIN="${CLONEFS_BIN:-$CARGO_TARGET_DIR/debug/clonefs}"
