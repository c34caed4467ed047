#!/usr/bin/env bash
# Profiles the clonefs daemon with `perf record -g` while one job runs on a fresh volume, and
# prints the job's figure and the hottest symbols. For "show what limits it" in
# docs/benchmarks.md.
#   tools/profile-daemon.sh seqwrite|seqread|randwrite|randwritecold|fsync|wal|randread|stat|create|unlink|pgbench [--writeback]
# Needs perf (apt-get install linux-perf) and fio; runs as root. The perf data stays in
# /tmp/clonefs-profile.JOB.data for `perf report -i`. PERF_FREQ (default 999 Hz) and PERF_CG
# (default -g; `--call-graph dwarf,16384` attributes time to our functions, which have no
# frame pointers) change the recording. FSYNC_SIZE (default 256M) sizes the fsync job's file: 4M
# keeps every block in memory, so no flush contends with the fsyncs.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
job=${1:?usage: tools/profile-daemon.sh seqwrite|seqread|randwrite|randwritecold|fsync|wal|randread|stat|create|unlink|pgbench [--writeback]}
mopt=${2:-}
command -v perf >/dev/null || { apt-get update -qq && apt-get install -y -qq linux-perf; }
command -v fio >/dev/null || { apt-get update -qq && apt-get install -y -qq fio; }
cargo build -q

work=$(mktemp -d /var/tmp/clonefs-profile.XXXXXX)
export CLONEFS_STORE=$work/store
B=$CLONEFS_BIN
m=$work/m
mkdir -p "$m"
pgb=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | tail -1)
pgs=""
cleanup() {
  [[ -n $pgs ]] && runuser -u postgres -- "$pgb/pg_ctl" -D "$m/pg" -m immediate stop >/dev/null 2>&1 || true
  [[ -n $pgs ]] && rm -rf "$pgs"
  timeout 30 "$B" unmount "$m" >/dev/null 2>&1 || fusermount3 -uz "$m" 2>/dev/null || true
  timeout 30 "$B" shutdown >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

"$B" init >/dev/null
"$B" daemon >/dev/null
"$B" create p ${BLOCK_SIZE:+--block-size "$BLOCK_SIZE"} >/dev/null
"$B" mount p "$m" $mopt >/dev/null
pid=$("$B" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
fiojob() { fio --name=p --filename="$m/f" --ioengine=psync --refill_buffers --output-format=json "$@"; }
# 5,000 files of 4 KiB in 20 directories.
populate() {
  python3 - "$m" <<'EOF'
import os, sys
for i in range(5000):
    os.makedirs(f"{sys.argv[1]}/d{i % 20}", exist_ok=True)
    with open(f"{sys.argv[1]}/d{i % 20}/f{i}", "wb") as f:
        f.write(os.urandom(4096))
EOF
}
case $job in
  seqwrite) run() { fiojob --rw=write --bs=1M --size=1024M --end_fsync=1; } ;;
  randwrite) fiojob --rw=write --bs=1M --size=256M --end_fsync=1 >/dev/null
    run() { fiojob --rw=randwrite --bs=4k --size=256M --runtime=10 --time_based --end_fsync=1; } ;;
  # Over a cold 1 GiB file written in order: each write completes a stored block read from
  # the disk (`scripts/ab.sh A B rwc`).
  randwritecold) fiojob --rw=write --bs=1M --size=1024M --end_fsync=1 >/dev/null
    run() { sync; echo 3 > /proc/sys/vm/drop_caches; fiojob --rw=randwrite --bs=4k --size=1024M --runtime=10 --time_based --end_fsync=1; } ;;
  fsync) fiojob --rw=write --bs=1M --size=${FSYNC_SIZE:-256M} --end_fsync=1 >/dev/null
    run() { fiojob --rw=randwrite --bs=4k --size=${FSYNC_SIZE:-256M} --runtime=10 --time_based --fsync=1; } ;;
  wal) run() { fiojob --rw=write --bs=8k --size=64M --runtime=10 --time_based --fdatasync=1; } ;;
  seqread) fiojob --rw=write --bs=1M --size=2048M --end_fsync=1 >/dev/null
    run() { sync; echo 3 > /proc/sys/vm/drop_caches; fiojob --rw=read --bs=1M --size=2048M; } ;;
  randread) fiojob --rw=write --bs=1M --size=256M --end_fsync=1 >/dev/null
    run() { sync; echo 3 > /proc/sys/vm/drop_caches; fiojob --rw=randread --bs=4k --size=256M --runtime=10 --time_based; } ;;
  stat) populate
    run() { python3 - "$m" <<'EOF'
import json, os, sys, time
names = [f"{sys.argv[1]}/d{i % 20}/f{i}" for i in range(5000)]
t = time.perf_counter()
for _ in range(20):
    for n in names:
        os.stat(n)
print(json.dumps({"jobs": [{"stat": {"per_s": 100000 / (time.perf_counter() - t)}}]}))
EOF
    } ;;
  create) run() { python3 - "$m" <<'EOF'
import json, os, sys, time
for d in range(20):
    os.makedirs(f"{sys.argv[1]}/d{d}", exist_ok=True)
t = time.perf_counter()
for i in range(5000):
    with open(f"{sys.argv[1]}/d{i % 20}/f{i}", "wb") as f:
        f.write(os.urandom(4096))
print(json.dumps({"jobs": [{"create": {"per_s": 5000 / (time.perf_counter() - t)}}]}))
EOF
    } ;;
  unlink) populate
    run() { python3 - "$m" <<'EOF'
import json, os, sys, time
t = time.perf_counter()
for i in range(5000):
    os.unlink(f"{sys.argv[1]}/d{i % 20}/f{i}")
print(json.dumps({"jobs": [{"unlink": {"per_s": 5000 / (time.perf_counter() - t)}}]}))
EOF
    } ;;
  pgbench) # TPC-B, scale 5, 4 clients for 15 s
    [[ -n $pgb ]] || { echo "pgbench needs PostgreSQL: scripts/install-deps.sh db" >&2; exit 2; }
    pgs=$(mktemp -d /tmp/clonefs-profile-pg.XXXXXX)
    chown postgres "$pgs"; chmod 755 "$work"; chmod 777 "$m"
    runuser -u postgres -- "$pgb/initdb" -D "$m/pg" >/dev/null
    runuser -u postgres -- "$pgb/pg_ctl" -D "$m/pg" -o "-k $pgs -c listen_addresses=''" -l "$pgs/log" -w start >/dev/null
    runuser -u postgres -- "$pgb/pgbench" -h "$pgs" -i -s 5 -q postgres >/dev/null 2>&1
    run() { runuser -u postgres -- "$pgb/pgbench" -h "$pgs" -c 4 -j 2 -T 15 postgres 2>/dev/null |
      awk '/^tps/ {printf "{\"jobs\": [{\"pgbench\": {\"per_s\": %s}}]}\n", $3}'; } ;;
  *) echo "unknown job $job" >&2; exit 2 ;;
esac
data=/tmp/clonefs-profile.$job.data
perf record -F ${PERF_FREQ:-999} ${PERF_CG:--g} -p "$pid" -o "$data" >/dev/null 2>&1 &
perf_pid=$!
sleep 0.5
run > "$work/out.json"
kill -INT $perf_pid; wait $perf_pid || true
python3 -c "
import json; j = json.load(open('$work/out.json'))['jobs'][0]
for k in ('write', 'read', 'stat', 'create', 'unlink', 'pgbench'):
    # fio reports both sides of a job: the one that did nothing is left out.
    if k in j and any(v for kk, v in j[k].items() if kk in ('iops', 'bw', 'per_s')):
        print('$job$mopt:', {kk: round(v, 1) for kk, v in j[k].items() if kk in ('iops', 'bw', 'per_s')})"
perf report -i "$data" --no-children --sort symbol --stdio -g none 2>/dev/null | grep '%' | head -25 | cut -c1-120
