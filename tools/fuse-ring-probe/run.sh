#!/usr/bin/env bash
# FUSE round trips over /dev/fuse against io_uring, alternated: 4 KiB direct reads (fio, one
# job) and open+close of a file. Sets fuse.enable_uring for the ring runs and restores it.
#   tools/fuse-ring-probe/run.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")"
rounds=${1:-2}
param=/sys/module/fuse/parameters/enable_uring
[ -w $param ] || { echo "needs a kernel with FUSE over io_uring (6.14+) and root" >&2; exit 1; }
command -v fio >/dev/null || { apt-get update -qq && apt-get install -y -qq fio; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/clonefs-target}/fuse-ring-probe
cargo build -q --release
bin=$CARGO_TARGET_DIR/release/fuse-ring-probe
saved=$(cat $param)
m=$(mktemp -d)
pid=
cleanup() {
  fusermount3 -uz "$m" 2>/dev/null || true
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  echo "$saved" > $param
  rmdir "$m" 2>/dev/null || true
}
trap cleanup EXIT
for r in $(seq "$rounds"); do
  for mode in plain ring; do
    if [ $mode = ring ]; then echo 1 > $param; else echo 0 > $param; fi
    "$bin" "$m" $mode 2> /tmp/fuse-ring-probe.$mode.log & pid=$!
    for _ in $(seq 50); do mountpoint -q "$m" && break; sleep 0.1; done
    sleep 0.5
    iops=$(timeout 60 fio --name=r --filename="$m/f" --rw=randread --bs=4k --size=1G --runtime=5 --time_based \
      --ioengine=psync --readonly --output-format=terse | awk -F';' '{print $8}')
    oc=$(timeout 60 python3 -c '
import os, sys, time
n = 20000; t = time.perf_counter()
for _ in range(n): os.close(os.open(sys.argv[1], os.O_RDONLY))
print(f"{(time.perf_counter() - t) / n * 1e6:.1f}")' "$m/f")
    fusermount3 -u "$m"; wait $pid || true; pid=
    echo "$mode: 4 KiB direct read $iops IOPS, open+close $oc us; $(tr '\n' ' ' < /tmp/fuse-ring-probe.$mode.log)"
  done
done
