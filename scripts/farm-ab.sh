#!/usr/bin/env bash
# Incremental `make` (one source touched, 5,000 C files, `ar` of all objects) alternated in
# three trees of one build: a clone mounted by default, a clone mounted `--fast-open`, and
# ext4 on the same disk. Prints the seconds of each round and the medians' ratios to ext4.
#   scripts/farm-ab.sh [ROUNDS]   (default 5; CLONEFS_BIN overrides the binary)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
rounds=${1:-5}
command -v make >/dev/null && command -v cc >/dev/null || { apt-get update -qq && apt-get install -y -qq make gcc; }
B=$CLONEFS_BIN
w=$(mktemp -d /var/tmp/clonefs-farm-ab.XXXXXX)
export CLONEFS_STORE=$w/store
cleanup() {
  cd /
  for d in a b t; do timeout 30 "$B" unmount "$w/$d" >/dev/null 2>&1 || fusermount3 -uz "$w/$d" 2>/dev/null || true; done
  timeout 60 "$B" shutdown >/dev/null 2>&1 || true
  rm -rf "$w"
}
trap cleanup EXIT
mkdir -p "$w/t" "$w/a" "$w/b" "$w/n"
"$B" init >/dev/null && "$B" daemon >/dev/null && "$B" create tpl >/dev/null && "$B" mount tpl "$w/t" >/dev/null
python3 - "$w/n" <<'EOF'
import os, sys
s = sys.argv[1]
for d in range(50):
    os.makedirs(f"{s}/src/d{d}")
    for i in range(100):
        open(f"{s}/src/d{d}/f{i}.c", "w").write(f"int f_{d}_{i}(int x) {{ return x * {i} + {d}; }}\n")
open(f"{s}/Makefile", "w").write("SRCS := $(wildcard src/*/*.c)\nOBJS := $(SRCS:.c=.o)\nall: lib.a\nlib.a: $(OBJS)\n\tar rcs lib.a $(OBJS)\n"
                                 "%.o: %.c\n\tcc -O0 -c -o $@ $<\n")
EOF
(cd "$w/n" && make -s -j2)
cp -a "$w/n/." "$w/t/"
"$B" snapshot tpl@built >/dev/null
"$B" clone tpl@built plain >/dev/null && "$B" clone tpl@built fast >/dev/null
"$B" mount plain "$w/a" >/dev/null && "$B" mount fast "$w/b" --fast-open >/dev/null
for d in a b n; do (cd "$w/$d" && make -s >/dev/null); done
python3 - "$w" "$rounds" <<'EOF'
import subprocess, sys, time
w, rounds = sys.argv[1], int(sys.argv[2])
names = {"a": "default mount", "b": "--fast-open", "n": "ext4"}
times = {d: [] for d in names}
for r in range(rounds):
    for d in names:
        subprocess.run(["touch", "src/d0/f0.c"], cwd=f"{w}/{d}", check=True)
        t = time.perf_counter()
        subprocess.run(["make", "-s"], cwd=f"{w}/{d}", check=True)
        times[d].append(time.perf_counter() - t)
    print(f"round {r + 1}: " + ", ".join(f"{names[d]} {times[d][-1]:.2f} s" for d in names), flush=True)
med = {d: sorted(v)[len(v) // 2] for d, v in times.items()}
print(f"medians: default mount {med['a']:.2f} s ({med['a'] / med['n']:.2f} of ext4), "
      f"--fast-open {med['b']:.2f} s ({med['b'] / med['n']:.2f}), ext4 {med['n']:.2f} s")
EOF
