"""Same jobs on four targets in one run, interleaved: native fs, passthrough_ll (libfuse example),
clonefs, clonefs --writeback.
Reports ratios because the machines are noisy. Called by scripts/bench.sh."""
import json, os, shutil, subprocess, sys, tempfile, time

BIN = sys.argv[1]
QUICK = "--quick" in sys.argv
SIZE = "256M" if QUICK else "1G"
RUNTIME = 5 if QUICK else 15
PG_SECONDS = 10 if QUICK else 60
PG_SCALE = 5 if QUICK else 20
LOG_SIZE = "256M"
NFILES = 2000 if QUICK else 20000
EXAMPLES = "/usr/share/doc/libfuse3-dev/examples"


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=True, check=True, capture_output=True, text=True, **kw).stdout


def drop_caches():
    sh("sync; echo 3 > /proc/sys/vm/drop_caches")


def fio(d, name, rw, bs, extra=""):
    # Fresh random data for every write: fio's default buffers repeat, which a deduplicating
    # filesystem would not store (and would look faster than it is).
    out = sh(f"fio --name={name} --filename={d}/bench.dat --rw={rw} --bs={bs} --size={SIZE} "
             f"--ioengine=psync --refill_buffers --randseed={abs(hash(name)) % 100000} --output-format=json {extra}")
    j = json.loads(out)["jobs"][0]
    side = j["write"] if rw in ("write", "randwrite") else j["read"]
    return side["bw_bytes"] / 2**20, side["iops"]


def small_files(d):
    """create+write 4 KiB, stat (x3), unlink of NFILES files in 20 directories, in rounds of
    5,000 so that passthrough_ll (one fd per cached inode, fd limit 20,000 here) can run it."""
    root = os.path.join(d, "small")
    os.makedirs(root, exist_ok=True)
    dirs = [os.path.join(root, f"d{i}") for i in range(20)]
    for x in dirs:
        os.makedirs(x, exist_ok=True)
    names = [os.path.join(dirs[i % 20], f"f{i}") for i in range(NFILES)]
    # Distinct contents, so that deduplication does not spare clonefs any writes.
    bufs = [os.urandom(4096) for _ in names]
    tc = ts = tu = 0.0
    for r in range(0, NFILES, 5000):
        chunk = names[r:r + 5000]
        t = time.perf_counter()
        for n, data in zip(chunk, bufs[r:r + 5000]):
            with open(n, "wb") as f:
                f.write(data)
        tc += time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(3):
            for n in chunk:
                os.stat(n)
        ts += time.perf_counter() - t
        t = time.perf_counter()
        for n in chunk:
            os.unlink(n)
        tu += time.perf_counter() - t
    shutil.rmtree(root)
    return NFILES / tc, 3 * NFILES / ts, NFILES / tu


def log_read(d):
    """A database log: 4 KiB appends with an fdatasync every 32, then a cold sequential read
    of the whole file in 1 MiB reads."""
    path = os.path.join(d, "log.dat")
    sh(f"fio --name=log --filename={path} --rw=write --bs=4k --size={LOG_SIZE} --fdatasync=32 "
       f"--ioengine=psync --refill_buffers --output-format=json")
    drop_caches()
    out = sh(f"fio --name=logr --filename={path} --rw=read --bs=1M --size={LOG_SIZE} --ioengine=psync --output-format=json")
    os.unlink(path)
    return json.loads(out)["jobs"][0]["read"]["bw_bytes"] / 2**20


def sysbench_fileio(d):
    """sysbench fileio: 4 files, random reads and writes of 4 KiB (1.5 reads per write), an
    fsync every 100 requests per file (sysbench's default); returns reads + writes per second."""
    work = os.path.join(d, "sysbench")
    os.makedirs(work, exist_ok=True)
    common = f"--file-total-size={LOG_SIZE} --file-num=4 --file-block-size=4096"
    sh(f"cd {work} && sysbench fileio {common} prepare")
    out = sh(f"cd {work} && sysbench fileio {common} --file-test-mode=rndrw --time={RUNTIME} run")
    sh(f"cd {work} && sysbench fileio {common} cleanup")
    shutil.rmtree(work)
    rate = lambda k: float([l for l in out.splitlines() if l.strip().startswith(k)][0].split()[-1])
    return rate("reads/s:") + rate("writes/s:")


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


def seq_write_read(d):
    r = {"seq write MiB/s": fio(d, "sw", "write", "1M", "--end_fsync=1")[0]}
    r["seq read hot MiB/s"] = fio(d, "sr", "read", "1M", "--invalidate=0")[0]
    return r


def seq_read_cold(d):
    drop_caches()
    return {"seq read cold MiB/s": fio(d, "sr", "read", "1M")[0]}


def rand_read_hot(d):
    fio(d, "warm", "read", "1M", "--invalidate=0")
    return {"rand read 4K hot IOPS": fio(d, "rr", "randread", "4k", f"--runtime={RUNTIME} --time_based --invalidate=0")[1]}


def rand_read_cold(d):
    drop_caches()
    return {"rand read 4K cold IOPS": fio(d, "rr", "randread", "4k", f"--runtime={RUNTIME} --time_based")[1]}


def rand_write(d):
    return {"rand write 4K IOPS": fio(d, "rw", "randwrite", "4k", f"--runtime={RUNTIME} --time_based --end_fsync=1")[1]}


def rand_write_fsync(d):
    return {"rand write 4K+fsync IOPS": fio(d, "rwf", "randwrite", "4k", f"--runtime={RUNTIME} --time_based --fsync=1")[1]}


# clonefs mount directory -> (volume, CLI environment, daemon pid), for jobs that run the
# CLI on it.
VOLUMES = {}


def seq_read_rewritten(d):
    """The file the two random-write jobs rewrote, read cold in order: clonefs stores the
    blocks it rewrote where their flushes put them (out of order). Then, on clonefs,
    `clonefs defrag` lays them back in file order and the file is read cold again (the other
    targets read it cold a second time)."""
    drop_caches()
    r = {"seq read cold, rewritten MiB/s": fio(d, "sr", "read", "1M")[0]}
    if d in VOLUMES:
        vol, env, pid = VOLUMES[d]
        cli(env, "defrag", vol)
        # The cleaner's rounds over the segments defrag left sparse are not the read's.
        settle(pid)
    drop_caches()
    r["the same after clonefs defrag MiB/s"] = fio(d, "sr", "read", "1M")[0]
    os.unlink(os.path.join(d, "bench.dat"))
    return r


TREE = "/usr/share/doc"


def tree_copy(d):
    """`cp -a` of a tree of small files (TREE: a few thousand entries on Debian) into the
    target, its source read once before so the copy's writes are what is timed; entries
    (files, directories, links) copied per second."""
    entries = sum(len(ds) + len(fs) for _, ds, fs in os.walk(TREE)) + 1
    sh(f"tar -cf - {TREE} | cat > /dev/null")
    dst = os.path.join(d, "tree")
    t = time.perf_counter()
    sh(f"cp -a {TREE} {dst}")
    dt = time.perf_counter() - t
    shutil.rmtree(dst)
    return {"cp -a tree entries/s": entries / dt}


def small(d):
    c, s, u = small_files(d)
    return {"small create files/s": c, "small stat /s": s, "small unlink /s": u}


# Each job runs on every target before the next job starts, the targets' order turning by one
# each job: a slow phase of this VM (steal, the host's disk) then hits every target alike,
# instead of whichever target ran last.
JOBS = [
    ("sequential write + hot read", seq_write_read),
    ("sequential read, cold", seq_read_cold),
    ("random 4 KiB read, hot", rand_read_hot),
    ("random 4 KiB read, cold", rand_read_cold),
    ("random 4 KiB write", rand_write),
    ("random 4 KiB write + fsync", rand_write_fsync),
    ("sequential read, cold, of the rewritten file", seq_read_rewritten),
    ("database log", lambda d: {"log (4K appends) read cold MiB/s": log_read(d)}),
    ("sysbench fileio", lambda d: {"sysbench rndrw 4K ops/s": sysbench_fileio(d)}),
    ("small files", small),
    ("tree copy", tree_copy),
    ("pgbench", lambda d: {"pgbench TPS": pgbench(d)}),
]


def settle(pid):
    """Writes back every filesystem's dirty data, then waits (at most 60 s) until the clonefs
    daemon is idle: the work a job leaves behind must not be measured as part of the next
    target's job (ext4's small creates ran 4,414/s after the jobs before them, 20,275/s
    after a sync)."""
    os.sync()
    def cpu():
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[12])
    for _ in range(120):
        a = cpu()
        time.sleep(0.5)
        if cpu() - a <= 2:
            return


def run_jobs(targets, pid):
    """targets: label -> directory. Returns label -> {job key: figure}."""
    res = {t: {} for t in targets}
    order = list(targets)
    for i, (name, job) in enumerate(JOBS):
        turn = order[i % len(order):] + order[:i % len(order)]
        for t in turn:
            if name == "pgbench" and t == "passthrough":
                continue  # passthrough_ll creates files as root: initdb cannot run on it
            settle(pid)
            print(f"[{t}] {name}", flush=True)
            res[t].update(job(targets[t]))
            if t in ("clonefs", "writeback"):
                # Which job raises the daemon's peak (the RSS target is for the whole run).
                st = {l.split(":")[0]: int(l.split()[1]) >> 10 for l in open(f"/proc/{pid}/status") if l.startswith(("VmHWM", "VmRSS"))}
                print(f"[{t}] {name}: daemon RSS {st['VmRSS']} MiB, peak so far {st['VmHWM']} MiB", flush=True)
    return res


def cli(env, *args):
    return subprocess.run([BIN, *args], env=env, check=True, capture_output=True, text=True).stdout


def timed(f, n=5):
    ts = []
    for i in range(n):
        t = time.perf_counter()
        f(i)
        ts.append((time.perf_counter() - t) * 1000)
    return sorted(ts)[len(ts) // 2]


def snapshot_bench():
    """Snapshot/clone latency vs size, reads through a depth-5 clone chain, GC rate, and the
    store size of 10 clones each changing 1% of a volume."""
    big_gib = 0.5 if QUICK else 4
    nfiles = 20_000 if QUICK else 200_000
    base = tempfile.mkdtemp(prefix="clonefs-snapbench", dir="/var/tmp")
    store = os.path.join(base, "store")
    env = dict(os.environ, CLONEFS_STORE=store)
    cli(env, "init")
    cli(env, "daemon")
    rows, notes = [], []
    try:
        mnts = {}
        for name in ("small", "big", "files"):
            cli(env, "create", name)
            m = os.path.join(base, name)
            os.makedirs(m)
            cli(env, "mount", name, m)
            mnts[name] = m
        print("[snapshots] filling volumes", flush=True)
        sh(f"head -c {10 << 20} /dev/urandom > {mnts['small']}/data")
        sh(f"fio --name=fill --filename={mnts['big']}/data --rw=write --bs=1M --size={int(big_gib * 1024)}M "
           f"--ioengine=psync --refill_buffers --end_fsync=1 --output-format=terse > /dev/null")
        t = time.perf_counter()
        for i in range(nfiles):
            d = os.path.join(mnts["files"], f"d{i % 200}")
            if i < 200:
                os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, f"f{i}"), "wb") as f:
                f.write(b"x" * 100)
        notes.append(f"created {nfiles} files in {time.perf_counter() - t:.1f} s")
        native = os.path.join(base, "native")
        os.makedirs(native)
        for name, label in (("small", "10 MiB"), ("big", f"{big_gib:g} GiB"), ("files", f"{nfiles:,} files")):
            # Let the filling's background flushes and compactions settle: their fsyncs
            # and disk traffic, not the volume's size, are what slow a snapshot's one fsync.
            sh("sync")
            time.sleep(10)
            snap = timed(lambda i: cli(env, "snapshot", f"{name}@s{i}"))
            clone = timed(lambda i: cli(env, "clone", f"{name}@s{i}", f"{name}-c{i}"))
            live = timed(lambda i: cli(env, "clone", name, f"{name}-l{i}"))
            # A build farm's per-user workspace: the template's owner remapped (O(1)).
            owner = timed(lambda i: cli(env, "clone", f"{name}@s{i}", f"{name}-o{i}", "--owner", "1000:1000"))
            dst = os.path.join(native, name)
            t = time.perf_counter()
            sh(f"cp -a {mnts[name]} {dst}")
            cp = (time.perf_counter() - t) * 1000
            shutil.rmtree(dst)
            rows.append((label, snap, clone, live, owner, cp))
        # Reads through a chain of clones of clones, cold cache, vs the origin.
        print("[snapshots] depth-5 clone reads", flush=True)
        prev = "big"
        for depth in range(1, 6):
            cli(env, "snapshot", f"{prev}@d")
            cli(env, "clone", f"{prev}@d", f"deep{depth}")
            prev = f"deep{depth}"
        deep = os.path.join(base, "deep")
        os.makedirs(deep)
        cli(env, "mount", prev, deep)
        def cold_read(path):
            drop_caches()
            out = json.loads(sh(f"fio --name=r --filename={path} --rw=read --bs=1M --ioengine=psync --output-format=json --readonly"))
            return out["jobs"][0]["read"]["bw_bytes"] / 2**20
        rnd = lambda p: json.loads(sh(f"fio --name=r --filename={p} --rw=randread --bs=4k --ioengine=psync --runtime=10 --time_based --output-format=json --readonly --invalidate=1"))["jobs"][0]["read"]["iops"]
        def cold_rand(path):
            drop_caches()
            return rnd(path)
        # Three rounds, the order alternated, medians: one cold read of each varied by 15%
        # from run to run here.
        origin, chained = f"{mnts['big']}/data", f"{deep}/data"
        runs = {"seq": ([], []), "rand": ([], [])}
        for r in range(3):
            for kind, read in (("seq", cold_read), ("rand", cold_rand)):
                pair = [(0, origin), (1, chained)] if r % 2 == 0 else [(1, chained), (0, origin)]
                for i, path in pair:
                    runs[kind][i].append(read(path))
        med = lambda xs: sorted(xs)[len(xs) // 2]
        origin_read, deep_read = med(runs["seq"][0]), med(runs["seq"][1])
        origin_rand, deep_rand = med(runs["rand"][0]), med(runs["rand"][1])
        cli(env, "unmount", deep)
        # GC: free what a snapshot uniquely holds.
        print("[snapshots] gc", flush=True)
        cli(env, "snapshot", "small@gc")
        sh(f"head -c {10 << 20} /dev/urandom > {mnts['small']}/data")
        # A different seed: fio's buffers repeat from run to run, and would dedup.
        sh(f"fio --name=over --filename={mnts['big']}/data --rw=write --bs=1M --size={int(big_gib * 1024)}M "
           f"--ioengine=psync --refill_buffers --randseed=7 --end_fsync=1 --output-format=terse > /dev/null")
        before = json.loads(cli(env, "status", "--json"))["physical"]
        for i in range(5):
            cli(env, "destroy", f"big@s{i}")
            for kind in "clo":
                cli(env, "destroy", f"big-{kind}{i}")
        for depth in range(5, 0, -1):
            cli(env, "destroy", f"deep{depth}")
        cli(env, "destroy", "big@d")
        t = time.perf_counter()
        cli(env, "gc")
        gc_s = time.perf_counter() - t
        freed = before - json.loads(cli(env, "status", "--json"))["physical"]
        # 10 clones of a volume, each changing 1% of its blocks.
        print("[snapshots] 10 clones changing 1%", flush=True)
        vol_gib = 0.25 if QUICK else 1
        cli(env, "create", "tmpl")
        tm = os.path.join(base, "tmpl")
        os.makedirs(tm)
        cli(env, "mount", "tmpl", tm)
        size = int(vol_gib * 1024)
        sh(f"fio --name=fill --filename={tm}/data --rw=write --bs=1M --size={size}M --ioengine=psync --refill_buffers --randseed=99 --end_fsync=1 --output-format=terse > /dev/null")
        cli(env, "unmount", tm)
        for name in list(mnts):
            cli(env, "unmount", mnts[name])
            if name != "big":
                for i in range(5):
                    for kind in "clo":
                        cli(env, "destroy", f"{name}-{kind}{i}")
            cli(env, "destroy", name)
        cli(env, "gc")
        cli(env, "snapshot", "tmpl@base")
        blocks = size * 64  # 16 KiB blocks (the default)
        for i in range(10):
            cli(env, "clone", "tmpl@base", f"u{i}")
            m = os.path.join(base, f"u{i}")
            os.makedirs(m)
            cli(env, "mount", f"u{i}", m)
            sh(f"fio --name=chg --filename={m}/data --rw=randwrite --bs=16k --size={size}M --randseed={100 + i} "
               f"--io_size={max(1, blocks // 100) * 16}k --ioengine=psync --refill_buffers --end_fsync=1 --output-format=terse > /dev/null")
            cli(env, "unmount", m)
        cli(env, "compact")
        st = json.loads(cli(env, "status", "--json"))
        du = int(sh(f"du -sb {store}").split()[0])
        kinds = {}
        for root, _, files in os.walk(store):
            for f in files:
                if os.path.basename(root) == "seg":
                    ext = "segments"
                elif root == store and f == "reserve":
                    ext = "ballast"
                else:
                    ext = f.rsplit(".", 1)[-1] if "." in f and f.split(".")[-1] in ("sst", "log") else "other"
                kinds[ext] = kinds.get(ext, 0) + os.path.getsize(os.path.join(root, f))
        parts = ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sorted(kinds.items()))
    finally:
        subprocess.run([BIN, "shutdown"], env=env, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
    lines = ["| volume | snapshot ms | clone of snapshot ms | clone of live volume ms | clone --owner ms | `cp -a` ms |", "|---|---:|---:|---:|---:|---:|"]
    for label, snap, clone, live, owner, cp in rows:
        lines.append(f"| {label} | {snap:.1f} | {clone:.1f} | {live:.1f} | {owner:.1f} | {cp:.0f} |")
    small = rows[0]
    worst = max(max(r[k] / small[k] for k in (1, 2, 3, 4)) for r in rows)
    lines.append("")
    lines.append(f"Largest ratio to the 10 MiB case: {worst:.2f} (target ≤ 2); slowest: {max(max(r[1:5]) for r in rows):.1f} ms "
                 "(target < 50 ms; times are medians of 5 runs of the CLI, process start included).")
    lines.append("")
    lines.append("| reads, cold cache (medians of 3, alternated) | origin | depth-5 clone | ratio (target ≥ 0.95) |")
    lines.append("|---|---:|---:|---:|")
    lines.append(f"| sequential 1 MiB, MiB/s | {origin_read:.0f} | {deep_read:.0f} | {deep_read / origin_read:.2f} |")
    lines.append(f"| random 4 KiB, IOPS | {origin_rand:.0f} | {deep_rand:.0f} | {deep_rand / origin_rand:.2f} |")
    lines.append("")
    lines.append(f"GC: freed {freed / 2**20:.0f} MiB in {gc_s:.2f} s ({freed / 2**20 / max(gc_s, 1e-6):.0f} MiB/s, CLI included).")
    lines.append("")
    lines.append(f"10 clones of a {vol_gib:g} GiB volume, each changing 1% of its 16 KiB blocks: physical "
                 f"{st['physical'] / 2**30:.3f} GiB, `du -sb` of the store {du / 2**30:.3f} GiB, "
                 f"{(du - kinds.get('ballast', 0)) / 2**30:.3f} GiB ({(du - kinds.get('ballast', 0)) / st['physical']:.2f}x physical) without the fixed "
                 f"{kinds.get('ballast', 0) / 2**20:.0f} MiB ballast that lets a full disk's store start (invariant 16) "
                 f"(target ≤ {1.15 * vol_gib:.2f} GiB; copies would take {11 * vol_gib:g} GiB); by file kind: {parts}.")
    for n in notes:
        lines.append(f"\n({n})")
    return "\n".join(lines)


def send_bench():
    import bench_send
    return bench_send.run(BIN, QUICK)


def db_bench():
    import bench_db
    return bench_db.run(BIN, QUICK)


def farm_bench():
    import bench_farm
    return bench_farm.run(BIN, QUICK)


def main():
    # bench.sh installs them too; run alone (with a binary built elsewhere) it must as well.
    deps_env = dict(os.environ, PATH=os.path.expanduser("~/.cargo/bin") + ":" + os.environ.get("PATH", ""))
    subprocess.run([os.path.join(os.path.dirname(os.path.abspath(__file__)), "install-deps.sh"), "bench"], check=True, env=deps_env)
    if "--farm-only" in sys.argv:
        write_section("Build farm", farm_bench())
        return
    if "--db-only" in sys.argv:
        write_section("Database clones", db_bench())
        return
    if "--snapshots-only" in sys.argv:
        write_section("Snapshots and clones", snapshot_bench())
        return
    if "--send-only" in sys.argv:
        write_section("Send and receive", send_bench())
        return
    base = tempfile.mkdtemp(prefix="clonefs-bench", dir="/var/tmp")
    os.chmod(base, 0o755)
    native = os.path.join(base, "native")
    pt_src = os.path.join(base, "ptsrc")
    for x in (native, pt_src):
        os.makedirs(x)
        os.chmod(x, 0o777)

    # Passthrough FUSE over the same filesystem.
    pt_bin = os.path.join(base, "passthrough_ll")
    sh(f"gcc -O2 {EXAMPLES}/passthrough_ll.c $(pkg-config fuse3 --cflags --libs) -o {pt_bin}")
    pt_mnt = os.path.join(base, "pt")
    os.makedirs(pt_mnt)
    store = os.path.join(base, "store")
    env = dict(os.environ, CLONEFS_STORE=store)
    mnt, mnt_wb = os.path.join(base, "cfs"), os.path.join(base, "cfswb")
    bs = os.environ.get("BENCH_BLOCK_SIZE", "16K")
    pid = None
    try:
        # passthrough_ll holds an fd per inode: give it the largest fd limit allowed.
        sh(f"ulimit -n $(ulimit -Hn); {pt_bin} -o source={pt_src},allow_other,default_permissions,clone_fd {pt_mnt}")
        subprocess.run([BIN, "init"], env=env, check=True, capture_output=True)
        subprocess.run([BIN, "daemon"], env=env, check=True, capture_output=True)
        pid = json.loads(cli(env, "status", "--json"))["pid"]
        # One daemon serves both volumes; the second is mounted with the kernel's writeback cache.
        for vol, m, extra in (("bench", mnt, []), ("benchwb", mnt_wb, ["--writeback"])):
            os.makedirs(m)
            cli(env, "create", vol, "--block-size", bs)
            cli(env, "mount", vol, m, *extra)
            os.chmod(m, 0o777)
            VOLUMES[m] = (vol, env, pid)
        results = run_jobs({"native": native, "passthrough": pt_mnt, "clonefs": mnt, "writeback": mnt_wb}, pid)
        for l in open(f"/proc/{pid}/status"):
            if l.startswith("VmHWM"):
                results["clonefs"]["daemon peak RSS MiB"] = int(l.split()[1]) / 1024
    finally:
        subprocess.run(["fusermount3", "-u", pt_mnt])
        if pid:
            for m in (mnt, mnt_wb):
                subprocess.run([BIN, "unmount", m], env=env, capture_output=True)
            subprocess.run([BIN, "shutdown"], env=env)
        shutil.rmtree(base, ignore_errors=True)
    write_report(results)
    if "--no-snapshots" not in sys.argv:
        write_section("Snapshots and clones", snapshot_bench())
    if "--no-send" not in sys.argv:
        write_section("Send and receive", send_bench())
    if "--no-db" not in sys.argv:
        write_section("Database clones", db_bench())
    if "--no-farm" not in sys.argv:
        write_section("Build farm", farm_bench())


def write_section(title, body):
    doc = os.path.join(os.path.dirname(__file__), "..", "docs", "benchmarks.md")
    text = open(doc).read() if os.path.exists(doc) else "# Benchmarks\n\n"
    marker = f"<!-- {title} -->"
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    flag = " --quick" if QUICK else ""
    only = {"Snapshots and clones": " (or `--snapshots-only`)", "Send and receive": " (or `--send-only`)",
            "Database clones": " (or `--db-only`)", "Build farm": " (or `--farm-only`)"}.get(title, "")
    section = f"{marker}\n## {title}: {stamp}\n\nCommand: `scripts/bench.sh{flag}`{only}\n\n{body}\n{marker}-end\n"
    if marker in text:
        pre = text.split(marker)[0]
        post = text.split(f"{marker}-end\n")[-1] if f"{marker}-end" in text else ""
        text = pre + section + post
    else:
        text += "\n" + section
    with open(doc, "w") as f:
        f.write(text)


TARGETS = {  # job -> (minimum ratio of clonefs, of --writeback, against which baseline)
    "seq write MiB/s": (1.0, 1.0, "passthrough"),
    "seq read cold MiB/s": (1.0, 1.0, "passthrough"),
    "rand read 4K cold IOPS": (0.8, 0.8, "passthrough"),
    "rand write 4K IOPS": (0.5, 1.0, "passthrough"),
    "rand write 4K+fsync IOPS": (1.0, 1.0, "passthrough"),
    "small create files/s": (1.0, 1.0, "passthrough"),
    "small stat /s": (1.0, 1.0, "passthrough"),
    "small unlink /s": (1.0, 1.0, "passthrough"),
    "cp -a tree entries/s": (0.8, 0.8, "native"),
    "pgbench TPS": (0.85, 0.85, "native"),
}


def write_report(res):
    n, p, c, w = res["native"], res["passthrough"], res["clonefs"], res["writeback"]
    lines = ["| job | native | passthrough FUSE | clonefs | clonefs --writeback | clonefs / passthrough | "
             "--writeback / passthrough | clonefs / native | target: clonefs; --writeback |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for k in n:
        t = TARGETS.get(k)
        p.setdefault(k, 0)
        rc = c[k] / p[k] if p[k] else 0
        rw = w[k] / p[k] if p[k] else 0
        ratio_native = c[k] / n[k] if n[k] else 0
        tgt = ""
        if t:
            got = (rc, rw) if t[2] == "passthrough" else (ratio_native, w[k] / n[k] if n[k] else 0)
            mins = f"{t[0]}" if t[0] == t[1] else f"{t[0]} / {t[1]}"
            tgt = f"≥ {mins} of {t[2]}: " + "; ".join("met" if g >= m else "NOT met" for g, m in zip(got, t[:2]))
        pv = f"{p[k]:.0f}" if p[k] else "n/a"
        rb = f"{rc:.2f}" if p[k] else ""
        rwb = f"{rw:.2f}" if p[k] else ""
        lines.append(f"| {k} | {n[k]:.0f} | {pv} | {c[k]:.0f} | {w[k]:.0f} | {rb} | {rwb} | {ratio_native:.2f} | {tgt} |")
    rss = max(c.get("daemon peak RSS MiB", 0), w.get("daemon peak RSS MiB", 0))
    lines.append(f"| daemon peak RSS MiB | | | {rss:.0f} | | | | | ≤ 256: {'met' if rss <= 256 else 'NOT met'} |")
    table = "\n".join(lines)
    print(table)
    if os.environ.get("BENCH_OUT"):
        with open(os.environ["BENCH_OUT"], "w") as f:
            f.write(table + "\n")
        return
    mode = "quick (256 MiB files, 5 s runs, 2,000 files, pgbench scale 5 for 10 s)" if QUICK else \
        "full (1 GiB files, 15 s runs, 20,000 files, pgbench scale 20, 4 clients, 60 s)"
    bs = os.environ.get("BENCH_BLOCK_SIZE", "16K")
    write_section("Throughput and latency", f"Mode: {mode}; clonefs block size {bs}.\n\n{table}\n")


if __name__ == "__main__":
    main()
