"""`clonefs db clone` of a running PostgreSQL to "accepts connections", for a small and a 10x
larger database, against pg_basebackup and a cold `cp -a` of the same data directory on the
native filesystem; and pgbench on a clone against its source. Called by bench.py."""
import json, os, shutil, subprocess, tempfile, time


def run(BIN, quick):
    scales = (3, 30) if quick else (10, 100)
    seconds = 10 if quick else 30
    base = tempfile.mkdtemp(prefix="clonefs-dbbench", dir="/var/tmp")
    os.chmod(base, 0o755)
    store = os.path.join(base, "store")
    env = dict(os.environ, CLONEFS_STORE=store)

    def cli(*args):
        return subprocess.run([BIN, *args], env=env, check=True, capture_output=True, text=True).stdout

    def sh(cmd):
        t = time.perf_counter()
        subprocess.run(cmd, shell=True, check=True, capture_output=True, text=True)
        return time.perf_counter() - t

    def drop():
        subprocess.run("sync; echo 3 > /proc/sys/vm/drop_caches", shell=True, check=True)

    def pg(name, port, args):
        sock = f"{store}.db/{name}/run"
        return f"runuser -u postgres -- {args} -h {sock} -p {port}"

    def tps(out):
        for l in out.splitlines():
            if l.startswith("tps"):
                return float(l.split("=")[1].split()[0])
        return 0.0

    rows = []
    cli("init")
    cli("daemon")
    try:
        results = {}
        for i, scale in enumerate(scales):
            src = f"src{i}"
            port = 6090 + i
            cli("db", "init", src, "--engine", "postgres")
            cli("db", "start", src, "--port", str(port))
            print(f"[db] pgbench -i -s {scale}", flush=True)
            subprocess.run(pg(src, port, f"pgbench -q -i -s {scale}") + " postgres", shell=True, check=True, capture_output=True)
            size = int(subprocess.run(f"du -sb {store}.db/{src}/data", shell=True, capture_output=True, text=True).stdout.split()[0])
            times = []
            for k in range(3):
                t = time.perf_counter()
                out = json.loads(cli("db", "clone", src, f"c{i}{k}", "--port", str(6070 + 3 * i + k), "--json"))
                times.append(time.perf_counter() - t)
                # It accepts connections with its login.
                subprocess.run(["psql", "-X", "-At", out["dsn"], "-c", "SELECT 1"], check=True, capture_output=True)
            clone_s = sorted(times)[1]
            native = os.path.join(base, f"native{i}")
            os.makedirs(native)
            shutil.chown(native, "postgres", "postgres")
            drop()
            t_base = sh(pg(src, port, f"pg_basebackup -D {native} -X stream -c fast"))
            shutil.rmtree(native)
            # A cold copy: the data directory copied to ext4 once, then copied again cold.
            sh(f"cp -a {store}.db/{src}/data {native}")
            drop()
            t_cp = sh(f"cp -a {native} {native}-copy")
            shutil.rmtree(native)
            shutil.rmtree(f"{native}-copy")
            results[scale] = clone_s
            rows.append(f"| scale {scale} ({size / 2**20:.0f} MiB) | {clone_s:.2f} s (median of 3; {', '.join(f'{x:.2f}' for x in times)}) "
                        f"| pg_basebackup {t_base:.2f} s; cold `cp -a` on ext4 {t_cp:.2f} s | {clone_s / t_base:.2f} of pg_basebackup |")
        ratio = results[scales[1]] / results[scales[0]]
        rows.append(f"| 10x larger / smaller | {ratio:.2f} | | target ≤ 1.5: {'met' if ratio <= 1.5 else 'NOT met'}; ≤ 3 s: "
                    f"{'met' if max(results.values()) <= 3 else 'NOT met'} |")
        # pgbench on the source, then on a clone of it (the source idle meanwhile).
        port = 6090
        src_out = subprocess.run(pg("src0", port, f"pgbench -c 2 -T {seconds}") + " postgres", shell=True, check=True, capture_output=True, text=True).stdout
        src_tps = tps(src_out)
        clone_out = subprocess.run(pg("c00", 6070, f"pgbench -c 2 -T {seconds}") + " postgres", shell=True, check=True, capture_output=True, text=True).stdout
        clone_tps = tps(clone_out)
        rows.append(f"| pgbench -c 2 -T {seconds}, scale {scales[0]} | clone {clone_tps:.0f} TPS | source {src_tps:.0f} TPS | {clone_tps / src_tps:.2f} |")
    finally:
        subprocess.run([BIN, "shutdown"], env=env, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
    head = "| job | clonefs db clone | baseline (same run) | ratio |\n|---|---|---|---|\n"
    return head + "\n".join(rows) + "\n"
