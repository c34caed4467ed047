"""Same jobs on three targets in one run: native fs, passthrough_ll (libfuse example), clonefs.
Reports ratios because the machines are noisy. Called by scripts/bench.sh."""
import json, os, shutil, subprocess, sys, tempfile, time

BIN = sys.argv[1]
QUICK = "--quick" in sys.argv
SIZE = "256M" if QUICK else "1G"
RUNTIME = 5 if QUICK else 15
PG_SECONDS = 10 if QUICK else 60
PG_SCALE = 5 if QUICK else 20
NFILES = 2000 if QUICK else 20000
EXAMPLES = "/usr/share/doc/libfuse3-dev/examples"


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=True, check=True, capture_output=True, text=True, **kw).stdout


def drop_caches():
    sh("sync; echo 3 > /proc/sys/vm/drop_caches")


def fio(d, name, rw, bs, extra=""):
    out = sh(f"fio --name={name} --filename={d}/bench.dat --rw={rw} --bs={bs} --size={SIZE} "
             f"--ioengine=psync --output-format=json {extra}")
    j = json.loads(out)["jobs"][0]
    side = j["write"] if rw in ("write", "randwrite") else j["read"]
    return side["bw_bytes"] / 2**20, side["iops"]


def small_files(d):
    root = os.path.join(d, "small")
    os.makedirs(root, exist_ok=True)
    data = os.urandom(4096)
    dirs = [os.path.join(root, f"d{i}") for i in range(20)]
    for x in dirs:
        os.makedirs(x, exist_ok=True)
    names = [os.path.join(dirs[i % 20], f"f{i}") for i in range(NFILES)]
    t = time.perf_counter()
    for n in names:
        with open(n, "wb") as f:
            f.write(data)
    create = NFILES / (time.perf_counter() - t)
    t = time.perf_counter()
    for _ in range(3):
        for n in names:
            os.stat(n)
    stat = 3 * NFILES / (time.perf_counter() - t)
    t = time.perf_counter()
    for n in names:
        os.unlink(n)
    unlink = NFILES / (time.perf_counter() - t)
    shutil.rmtree(root)
    return create, stat, unlink


def pgbench(d):
    bins = sorted(p for p in os.listdir("/usr/lib/postgresql"))
    b = f"/usr/lib/postgresql/{bins[-1]}/bin"
    data, sock = os.path.join(d, "pg"), tempfile.mkdtemp(prefix="pgsock")
    os.makedirs(data)
    shutil.chown(data, "postgres", "postgres")
    shutil.chown(sock, "postgres", "postgres")
    pg = "runuser -u postgres --"
    sh(f"{pg} {b}/initdb -D {data}/d")
    sh(f"{pg} {b}/pg_ctl -D {data}/d -o \"-k {sock} -c listen_addresses=''\" -l {sock}/log -w start")
    try:
        sh(f"{pg} {b}/pgbench -h {sock} -i -s {PG_SCALE} -q postgres")
        out = sh(f"{pg} {b}/pgbench -h {sock} -c 4 -j 2 -T {PG_SECONDS} postgres")
        tps = float([l for l in out.splitlines() if l.startswith("tps")][0].split()[2])
    finally:
        sh(f"{pg} {b}/pg_ctl -D {data}/d -m fast -w stop")
        shutil.rmtree(sock, ignore_errors=True)
    return tps


def run_jobs(d, label, rss=None):
    r = {}
    print(f"[{label}] sequential write", flush=True)
    r["seq write MiB/s"] = fio(d, "sw", "write", "1M", "--end_fsync=1")[0]
    r["seq read hot MiB/s"] = fio(d, "sr", "read", "1M", "--invalidate=0")[0]
    drop_caches()
    r["seq read cold MiB/s"] = fio(d, "sr", "read", "1M")[0]
    print(f"[{label}] random 4 KiB", flush=True)
    fio(d, "warm", "read", "1M", "--invalidate=0")
    r["rand read 4K hot IOPS"] = fio(d, "rr", "randread", "4k", f"--runtime={RUNTIME} --time_based --invalidate=0")[1]
    drop_caches()
    r["rand read 4K cold IOPS"] = fio(d, "rr", "randread", "4k", f"--runtime={RUNTIME} --time_based")[1]
    r["rand write 4K IOPS"] = fio(d, "rw", "randwrite", "4k", f"--runtime={RUNTIME} --time_based --end_fsync=1")[1]
    r["rand write 4K+fsync IOPS"] = fio(d, "rwf", "randwrite", "4k", f"--runtime={RUNTIME} --time_based --fsync=1")[1]
    os.unlink(os.path.join(d, "bench.dat"))
    print(f"[{label}] small files", flush=True)
    c, s, u = small_files(d)
    r["small create files/s"], r["small stat /s"], r["small unlink /s"] = c, s, u
    if label != "passthrough":  # passthrough_ll creates files as root: initdb cannot run on it
        print(f"[{label}] pgbench", flush=True)
        r["pgbench TPS"] = pgbench(d)
    if rss:
        r["daemon peak RSS MiB"] = rss()
    return r


def main():
    base = tempfile.mkdtemp(prefix="clonefs-bench", dir="/var/tmp")
    os.chmod(base, 0o755)
    native = os.path.join(base, "native")
    os.makedirs(native)
    os.chmod(native, 0o777)
    results = {}
    results["native"] = run_jobs(native, "native")
    shutil.rmtree(native)
    os.makedirs(native)
    os.chmod(native, 0o777)

    # Passthrough FUSE over the same filesystem.
    pt_bin = os.path.join(base, "passthrough_ll")
    sh(f"gcc -O2 {EXAMPLES}/passthrough_ll.c $(pkg-config fuse3 --cflags --libs) -o {pt_bin}")
    pt_mnt = os.path.join(base, "pt")
    os.makedirs(pt_mnt)
    sh(f"{pt_bin} -o source={native},allow_other,default_permissions,clone_fd {pt_mnt}")
    try:
        results["passthrough"] = run_jobs(pt_mnt, "passthrough")
    finally:
        subprocess.run(["fusermount3", "-u", pt_mnt])
    shutil.rmtree(native)

    store = os.path.join(base, "store")
    env = dict(os.environ, CLONEFS_STORE=store)
    subprocess.run([BIN, "init"], env=env, check=True, capture_output=True)
    subprocess.run([BIN, "daemon"], env=env, check=True, capture_output=True)
    pid = json.loads(subprocess.run([BIN, "status", "--json"], env=env, check=True, capture_output=True, text=True).stdout)["pid"]
    mnt = os.path.join(base, "cfs")
    os.makedirs(mnt)
    bs = os.environ.get("BENCH_BLOCK_SIZE", "64K")
    subprocess.run([BIN, "create", "bench", "--block-size", bs], env=env, check=True, capture_output=True)
    subprocess.run([BIN, "mount", "bench", mnt], env=env, check=True, capture_output=True)
    os.chmod(mnt, 0o777)

    def rss():
        for l in open(f"/proc/{pid}/status"):
            if l.startswith("VmHWM"):
                return int(l.split()[1]) / 1024
    try:
        results["clonefs"] = run_jobs(mnt, "clonefs", rss)
    finally:
        subprocess.run([BIN, "unmount", mnt], env=env)
        subprocess.run([BIN, "shutdown"], env=env)
        shutil.rmtree(base, ignore_errors=True)
    write_report(results)


TARGETS = {  # job -> (minimum ratio, against which baseline)
    "seq write MiB/s": (0.6, "passthrough"),
    "seq read hot MiB/s": (0.8, "passthrough"),
    "rand read 4K hot IOPS": (0.8, "passthrough"),
    "rand write 4K IOPS": (0.5, "passthrough"),
    "rand write 4K+fsync IOPS": (0.5, "passthrough"),
    "small create files/s": (0.5, "passthrough"),
    "small stat /s": (1.0, "passthrough"),
    "pgbench TPS": (0.8, "native"),
}


def write_report(res):
    n, p, c = res["native"], res["passthrough"], res["clonefs"]
    lines = ["| job | native | passthrough FUSE | clonefs | clonefs / passthrough | clonefs / native | target |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for k in n:
        t = TARGETS.get(k)
        p.setdefault(k, 0)
        ratio_base = c[k] / p[k] if p[k] else 0
        ratio_native = c[k] / n[k] if n[k] else 0
        tgt = ""
        if t:
            got = ratio_base if t[1] == "passthrough" else ratio_native
            tgt = f"≥ {t[0]} of {t[1]}: {'met' if got >= t[0] else 'NOT met'}"
        pv = f"{p[k]:.0f}" if p[k] else "n/a"
        rb = f"{ratio_base:.2f}" if p[k] else ""
        lines.append(f"| {k} | {n[k]:.0f} | {pv} | {c[k]:.0f} | {rb} | {ratio_native:.2f} | {tgt} |")
    rss = c.get("daemon peak RSS MiB", 0)
    lines.append(f"| daemon peak RSS MiB | | | {rss:.0f} | | | ≤ 512: {'met' if rss <= 512 else 'NOT met'} |")
    table = "\n".join(lines)
    print(table)
    doc = os.path.join(os.path.dirname(__file__), "..", "docs", "benchmarks.md")
    head = open(doc).read().split("<!-- results -->")[0] if os.path.exists(doc) else "# Benchmarks\n\n"
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    mode = "quick (256 MiB files, 5 s runs, 2,000 files, pgbench scale 5 for 10 s)" if QUICK else \
        "full (1 GiB files, 15 s runs, 20,000 files, pgbench scale 20, 4 clients, 60 s)"
    with open(doc, "w") as f:
        f.write(head + "<!-- results -->\n")
        f.write(f"## Latest run: {stamp}, {mode}\n\nCommand: `scripts/bench.sh{' --quick' if QUICK else ''}`\n\n{table}\n")


if __name__ == "__main__":
    main()
