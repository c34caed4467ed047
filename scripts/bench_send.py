"""send/receive between two stores on this machine, against `tar | tar` of the same tree on
the native filesystem, in one run: a full stream, an incremental one after a 1% change, and a
two-way full send to a store that already holds 90% of the blocks. Called by bench.py."""
import json, os, random, shutil, subprocess, tempfile, time


def run(BIN, quick):
    gib = 0.5 if quick else 4
    nfiles = 64
    fsize = int(gib * (1 << 30)) // nfiles
    base = tempfile.mkdtemp(prefix="clonefs-sendbench", dir="/var/tmp")
    envs = {}
    for s in ("a", "b"):
        store = os.path.join(base, s)
        envs[s] = dict(os.environ, CLONEFS_STORE=store)
        subprocess.run([BIN, "init"], env=envs[s], check=True, capture_output=True)
        subprocess.run([BIN, "daemon"], env=envs[s], check=True, capture_output=True)

    def cli(s, *args, inp=None):
        return subprocess.run([BIN, *args], env=envs[s], check=True, capture_output=True, text=True).stdout

    def sh(cmd):
        t = time.perf_counter()
        out = subprocess.run(cmd, shell=True, check=True, capture_output=True, text=True).stdout
        return time.perf_counter() - t, out

    def drop():
        subprocess.run("sync; echo 3 > /proc/sys/vm/drop_caches", shell=True, check=True)

    rows = []
    try:
        mnt = os.path.join(base, "mnt")
        os.makedirs(mnt)
        cli("a", "create", "v")
        cli("a", "mount", "v", mnt)
        print(f"[send] filling {gib:g} GiB", flush=True)
        for i in range(nfiles):
            subprocess.run(f"head -c {fsize} /dev/urandom > {mnt}/f{i:03d}", shell=True, check=True)
        cli("a", "snapshot", "v@s1")
        native = os.path.join(base, "native")
        shutil.copytree(mnt, native, ignore=shutil.ignore_patterns(".snapshots"))
        dst = os.path.join(base, "native-dst")
        os.makedirs(dst)
        drop()
        # With a sync: a receive is durable before it reports (invariant 19), so is the copy.
        t_tar, _ = sh(f"tar -C {native} -cf - . | tar -C {dst} -xf - && sync")
        shutil.rmtree(dst)
        shutil.rmtree(native)
        drop()
        a, b = envs["a"]["CLONEFS_STORE"], envs["b"]["CLONEFS_STORE"]
        t_full, out = sh(f"{BIN} --store {a} send v@s1 | {BIN} --store {b} receive w --json")
        full_bytes = json.loads(out)["stream_bytes"]
        mib = gib * 1024
        rows.append(f"| full send \\| receive, {gib:g} GiB in {nfiles} files | {t_full:.1f} s ({mib / t_full:.0f} MiB/s), "
                    f"{full_bytes / 2**20:.0f} MiB on the wire | `tar \\| tar; sync` on ext4: {t_tar:.1f} s ({mib / t_tar:.0f} MiB/s) "
                    f"| time {t_full / t_tar:.2f}x of tar |")

        # 1%: 64 KiB pieces at random offsets, spread over the files.
        rnd = random.Random(1)
        pieces = int(gib * (1 << 30) * 0.01) // (64 << 10)
        for _ in range(pieces):
            f = f"{mnt}/f{rnd.randrange(nfiles):03d}"
            off = rnd.randrange(fsize // (64 << 10)) * (64 << 10)
            with open(f, "r+b") as fh:
                fh.seek(off)
                fh.write(os.urandom(64 << 10))
        cli("a", "snapshot", "v@s2")
        drop()
        t_inc, out = sh(f"{BIN} --store {a} send v@s2 --from v@s1 | {BIN} --store {b} receive w --json")
        inc_bytes = json.loads(out)["stream_bytes"]
        rows.append(f"| incremental after a 1% change ({pieces} random 64 KiB writes) | {t_inc:.2f} s, "
                    f"{inc_bytes / 2**20:.1f} MiB on the wire | the full stream: {t_full:.1f} s, {full_bytes / 2**20:.0f} MiB "
                    f"| bytes {inc_bytes / full_bytes:.3f}, time {t_inc / t_full:.3f} of full |")

        # 10% of the files get new contents; a full two-way send to the store holding s1.
        for i in range(0, nfiles, 10):
            subprocess.run(f"head -c {fsize} /dev/urandom > {mnt}/f{i:03d}", shell=True, check=True)
        cli("a", "snapshot", "v@s3")
        drop()
        t_two, out = sh(f"{BIN} --store {a} send v@s3 --json --to '{BIN} --store {b} receive y --serve'")
        two = json.loads(out)
        changed = len(range(0, nfiles, 10)) / nfiles
        rows.append(f"| two-way full send, receiver holds {100 - changed * 100:.0f}% of the blocks | {t_two:.1f} s, "
                    f"{two['stream_bytes'] / 2**20:.0f} MiB on the wire | one-way full stream: {full_bytes / 2**20:.0f} MiB "
                    f"| bytes {two['stream_bytes'] / full_bytes:.3f} of full (changed: {changed:.3f}) |")
    finally:
        subprocess.run([BIN, "unmount", os.path.join(base, "mnt")], env=envs["a"], capture_output=True)
        for s in envs:
            subprocess.run([BIN, "shutdown"], env=envs[s], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
    head = "| job | clonefs | baseline (same run) | ratio |\n|---|---|---|---|\n"
    return head + "\n".join(rows) + "\n"
