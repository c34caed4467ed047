#!/usr/bin/env bash
# One command: install what is needed, build clonefs, create a store, start the daemon,
# create a volume and mount it.
#   scripts/setup.sh [VOLUME] [MOUNTPOINT]      (store: $CLONEFS_STORE or /var/lib/clonefs)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
vol=${1:-main}
mnt=${2:-/mnt/clonefs/$vol}
scripts/install-deps.sh build
cargo build
install -m 0755 "$CLONEFS_BIN" /usr/local/bin/clonefs
ln -sf /usr/local/bin/clonefs /sbin/mount.fuse.clonefs
clonefs man /usr/local/share/man/man1 >/dev/null
mkdir -p /usr/share/bash-completion/completions
clonefs completions bash > /usr/share/bash-completion/completions/clonefs
export CLONEFS_STORE=${CLONEFS_STORE:-/var/lib/clonefs}
[[ -e $CLONEFS_STORE/db/CURRENT ]] || clonefs init
if [[ -d /run/systemd/system ]]; then
  # Under systemd the daemon is a service: it starts at boot, before the fstab mounts.
  sed "s|@STORE@|$CLONEFS_STORE|" scripts/clonefs.service > /etc/systemd/system/clonefs.service
  systemctl daemon-reload
  systemctl enable clonefs.service
  clonefs status >/dev/null 2>&1 || systemctl start clonefs.service
else
  clonefs status >/dev/null 2>&1 || clonefs daemon
fi
clonefs list --json | grep -q "\"name\": \"$vol\"" || clonefs create "$vol"
mkdir -p "$mnt"
grep -q " $mnt fuse" /proc/mounts || clonefs mount "$vol" "$mnt"
clonefs list
cat <<MSG

Volume '$vol' is mounted at $mnt (store $CLONEFS_STORE).
  unmount it:       clonefs unmount $mnt
  stop the daemon:  clonefs shutdown      (flushes, unmounts everything, exits)
  fstab line:       $vol $mnt fuse.clonefs defaults,store=$CLONEFS_STORE,x-systemd.requires=clonefs.service 0 0
MSG
