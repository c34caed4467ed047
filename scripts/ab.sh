#!/usr/bin/env bash
# Same-run A/B of two clonefs binaries on one job, alternating A and B so that the machine's
# drift hits both: each run gets a fresh store, daemon and volume, and prints the job's figure.
#   scripts/ab.sh BIN_A BIN_B JOB [ROUNDS]
# BIN_A or BIN_B may be `native`: the job then runs in a plain directory of the same disk.
# JOB: sw (1 GiB sequential 1 MiB writes + fsync, MiB/s), rw (4 KiB random writes over a
# 256 MiB file for 5 s, then fsync, IOPS), rwf (4 KiB random write + fsync
# each, IOPS, 5 s), wal (8 KiB writes in order over a 64 MiB file, an fdatasync after
# each, 8 s: a database's log; IOPS and sync latency), sb (the bench's sysbench fileio:
# 4 files of 64 MiB, 4 KiB random reads and writes, an fsync every 100 per file, 15 s;
# reads + writes per second), fsb (rwf beside a sequential writer on a second volume: IOPS and p99
# of the fsync), pg (pgbench TPC-B scale 5, 4 clients, 10 s, TPS), pgio (pgbench scale 20,
# 4 clients, 30 s: TPS, what the disk wrote meanwhile, and on a volume what the store wrote:
# log records, the log's runway zeros, data segments), sm (2,000 small
# files: create, stat, unlink per second), rr (1 GiB written, caches dropped, 4 KiB random
# reads for 10 s, IOPS), sr (the same file read once cold in 1 MiB reads, MiB/s), rwc (the
# same file, 4 KiB random writes for 12 s: each completes a stored block read from the disk),
# tar (`tar -x` of an archive of /usr/share, made once in /var/tmp: a big tree's creates,
# seconds; AB_MOUNT_OPTS adds mount options, e.g. --fast-open). AB_BLOCK_SIZE sets the volumes' block size (else
# the CLI's default), AB_BLOCK_SIZE_B B's alone (an A/B of block sizes: the same binary twice).
# An old binary: build a worktree of its commit with this CARGO_TARGET_DIR and copy
# target/debug/clonefs aside (then touch src/main.rs here and build again, or the target dir
# keeps the old binary).
set -euo pipefail
[[ $# -ge 3 ]] || { sed -n 2,21p "$0"; exit 2; }
a=$1 b=$2 job=$3 rounds=${4:-2}
command -v fio >/dev/null || { apt-get update -qq && apt-get install -y -qq fio; }

one() { # BIN [BLOCK_SIZE] -> prints the figure
  local B=$1 bs=${2:-} w
  w=$(mktemp -d /var/tmp/clonefs-ab.XXXXXX)
  chmod 755 "$w"
  export CLONEFS_STORE=$w/store
  local m=$w/m pgs=""
  mkdir "$m"
  cleanup_one() {
    [[ -n $pgs ]] && runuser -u postgres -- "$pgb/pg_ctl" -D "$m/pg/d" -m immediate stop >/dev/null 2>&1 || true
    timeout 30 "$B" unmount "$m" >/dev/null 2>&1 || fusermount3 -uz "$m" 2>/dev/null || true
    timeout 60 "$B" shutdown >/dev/null 2>&1 || true
    rm -rf "$w" ${pgs:+"$pgs"}
  }
  trap cleanup_one RETURN
  if [[ $B == native ]]; then B=true; else
    "$B" init >/dev/null && "$B" daemon >/dev/null && "$B" create v ${bs:+--block-size "$bs"} >/dev/null && "$B" mount v "$m" ${AB_MOUNT_OPTS:-} >/dev/null
  fi
  chmod 777 "$m"
  case $job in
    sw) fio --name=sw --filename="$m/f" --rw=write --bs=1M --size=1G --ioengine=psync --refill_buffers --end_fsync=1 --output-format=json |
          python3 -c "import json,sys; j=json.load(sys.stdin)['jobs'][0]; print('seq write MiB/s', round(j['write']['bw_bytes']/2**20))" ;;
    rw) fio --name=rw --filename="$m/f" --rw=randwrite --bs=4k --size=256M --runtime=5 --time_based --end_fsync=1 --ioengine=psync --refill_buffers --output-format=json |
          python3 -c "import json,sys; j=json.load(sys.stdin)['jobs'][0]; print('4K rand write IOPS', round(j['write']['iops']))" ;;
    wal) fio --name=wal --filename="$m/f" --rw=write --bs=8k --size=64M --runtime=8 --time_based --fdatasync=1 --ioengine=psync --output-format=json |
          python3 -c "import json,sys; j=json.load(sys.stdin)['jobs'][0]; p=j['sync']['lat_ns']['percentile']; print('8K write+fdatasync IOPS', round(j['write']['iops']), 'sync p50/p99/p99.9 us', *[round(p[k]/1e3) for k in ('50.000000', '99.000000', '99.900000')])" ;;
    rwf) fio --name=rwf --filename="$m/f" --rw=randwrite --bs=4k --size=256M --runtime=5 --time_based --fsync=1 --ioengine=psync --refill_buffers --output-format=json |
          python3 -c "import json,sys; j=json.load(sys.stdin)['jobs'][0]; print('4K write+fsync IOPS', round(j['write']['iops']))" ;;
    pg|pgio) pgb=$(ls -d /usr/lib/postgresql/*/bin | tail -1)
        pgs=$(mktemp -d /tmp/clonefs-ab-pg.XXXXXX)
        chown postgres "$pgs"; mkdir "$m/pg"; chown postgres "$m/pg"
        local scale=5 secs=10
        [[ $job == pgio ]] && scale=20 secs=30
        runuser -u postgres -- "$pgb/initdb" -D "$m/pg/d" >/dev/null 2>&1
        runuser -u postgres -- "$pgb/pg_ctl" -D "$m/pg/d" -o "-k $pgs -c listen_addresses=''" -l "$pgs/log" -w start >/dev/null
        runuser -u postgres -- "$pgb/pgbench" -h "$pgs" -i -s "$scale" -q postgres >/dev/null 2>&1
        if [[ $job == pg ]]; then
          runuser -u postgres -- "$pgb/pgbench" -h "$pgs" -c 4 -j 2 -T "$secs" postgres 2>/dev/null | grep '^tps'
        else
          # Writes of the disk holding the store (or the native directory) during the run.
          local dev
          dev=$(basename "$(df --output=source "$w" | tail -1)")
          disk() { awk -v d="$dev" '$3==d {print $10}' /proc/diskstats; }
          store() { [[ $B == true ]] || "$B" metrics | awk '/^clonefs_(log_record_bytes|log_zero_bytes|data_segment_bytes|segments_recycled)_total/ {print $1, $2}'; }
          sync; sleep 2
          local d0 s0 tps
          d0=$(disk); s0=$(store)
          tps=$(runuser -u postgres -- "$pgb/pgbench" -h "$pgs" -c 4 -j 2 -T "$secs" postgres 2>/dev/null | awk '/^tps/ {print $3}')
          python3 - "$tps" "$d0" "$(disk)" "$s0" "$(store)" <<'PY'
import sys
tps, d0, d1, s0, s1 = sys.argv[1:]
parse = lambda t: {l.split()[0]: float(l.split()[1]) for l in t.splitlines() if l.strip()}
a, b = parse(s0), parse(s1)
# An older binary lacks some of the counters: they show as 0.
mib = lambda k: round((b.get(k, 0) - a.get(k, 0)) / 2**20)
out = f"TPS {float(tps):.0f}, disk writes {(int(d1) - int(d0)) * 512 >> 20} MiB"
if b:
    out += (f"; store: log records {mib('clonefs_log_record_bytes_total')} MiB, runway zeros"
            f" {mib('clonefs_log_zero_bytes_total')} MiB, data segments {mib('clonefs_data_segment_bytes_total')} MiB,"
            f" segments reused {b.get('clonefs_segments_recycled_total', 0) - a.get('clonefs_segments_recycled_total', 0):.0f}")
print(out)
PY
        fi ;;
    fsb) # rwf on this volume beside a sequential writer on a second volume of the daemon
        mkdir "$w/m2"
        if [[ $B != true ]]; then "$B" create v2 ${bs:+--block-size "$bs"} >/dev/null && "$B" mount v2 "$w/m2" >/dev/null; fi
        fio --name=bg --filename="$w/m2/g" --rw=write --bs=1M --size=2G --runtime=8 --time_based --ioengine=psync --refill_buffers >/dev/null 2>&1 &
        local bg=$!
        sleep 1
        fio --name=rwf --filename="$m/f" --rw=randwrite --bs=4k --size=64M --runtime=6 --time_based --fsync=1 --ioengine=psync --refill_buffers --output-format=json |
          python3 -c "import json,sys; j=json.load(sys.stdin)['jobs'][0]; p=j['sync']['lat_ns']['percentile']; print('4K write+fsync beside a seq writer IOPS', round(j['write']['iops']), 'sync p99 ms', round(p['99.000000']/1e6, 1))"
        wait "$bg"
        if [[ $B != true ]]; then timeout 30 "$B" unmount "$w/m2" >/dev/null 2>&1 || fusermount3 -uz "$w/m2"; fi ;;
    rr|sr|rwc) fio --name=fill --filename="$m/f" --rw=write --bs=1M --size=1G --ioengine=psync --refill_buffers --end_fsync=1 >/dev/null
        sync; echo 3 > /proc/sys/vm/drop_caches
        if [[ $job == rwc ]]; then
          fio --name=rwc --filename="$m/f" --rw=randwrite --bs=4k --size=1G --runtime=12 --time_based --end_fsync=1 --ioengine=psync --refill_buffers --output-format=json |
            python3 -c "import json,sys; j=json.load(sys.stdin)['jobs'][0]['write']; p=j['clat_ns']['percentile']; print('4K rand write over cold data IOPS', round(j['iops']), 'p50/p99/p99.9 us', *[round(p[k]/1e3) for k in ('50.000000', '99.000000', '99.900000')])"
        elif [[ $job == rr ]]; then
          fio --name=rr --filename="$m/f" --rw=randread --bs=4k --size=1G --runtime=10 --time_based --ioengine=psync --output-format=json |
            python3 -c "import json,sys; j=json.load(sys.stdin)['jobs'][0]; print('4K cold rand read IOPS', round(j['read']['iops']), 'p50/p99 us', *[round(j['read']['clat_ns']['percentile'][k]/1e3) for k in ('50.000000', '99.000000')])"
        else
          fio --name=sr --filename="$m/f" --rw=read --bs=1M --size=1G --ioengine=psync --output-format=json |
            python3 -c "import json,sys; j=json.load(sys.stdin)['jobs'][0]; print('cold seq read MiB/s', round(j['read']['bw_bytes']/2**20))"
        fi ;;
    sb) command -v sysbench >/dev/null || { apt-get update -qq && apt-get install -y -qq sysbench; }
        local sbo="--file-total-size=256M --file-num=4 --file-block-size=4096"
        (cd "$m" && sysbench fileio $sbo prepare >/dev/null &&
          sysbench fileio $sbo --file-test-mode=rndrw --time=15 run |
          awk '/reads\/s:/ {r=$2} /writes\/s:/ {w=$2} END {printf "sysbench rndrw ops/s %.0f (reads %.0f, writes %.0f)\n", r+w, r, w}') ;;
    sm) python3 - "$m" <<'PY'
import os, sys, time
d = sys.argv[1] + "/s"; os.makedirs(d)
names = [f"{d}/f{i}" for i in range(2000)]
t = time.time()
for n in names:
    with open(n, "wb") as f: f.write(os.urandom(4096))
tc = time.time() - t; t = time.time()
for n in names: os.stat(n)
ts = time.time() - t; t = time.time()
for n in names: os.unlink(n)
tu = time.time() - t
print("create/s", round(2000 / tc), "stat/s", round(2000 / ts), "unlink/s", round(2000 / tu))
PY
    ;;
    tar) /usr/bin/time -f "tar -x s %e" tar -C "$m" -xf "$tree" 2>&1 | tail -1 ;;
    *) echo "unknown job $job" >&2; exit 2 ;;
  esac
}

tree=/var/tmp/clonefs-ab-tree.tar
if [[ $job == tar && ! -s $tree ]]; then tar -C /usr -cf "$tree.tmp" share 2>/dev/null || true; mv "$tree.tmp" "$tree"; fi
bs_a=${AB_BLOCK_SIZE:-} bs_b=${AB_BLOCK_SIZE_B:-${AB_BLOCK_SIZE:-}}
for r in $(seq "$rounds"); do
  echo "A ($a${bs_a:+, $bs_a blocks}): $(one "$a" "$bs_a")"
  echo "B ($b${bs_b:+, $bs_b blocks}): $(one "$b" "$bs_b")"
done
