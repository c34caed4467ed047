//! Metrics: `clonefs metrics` and `daemon --metrics ADDR` give the Prometheus text format,
//! which parses, and the figures follow known work (write N bytes, see N more).

use crate::util::{pattern, Daemon};
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{Read, Write};

/// Parses the Prometheus text format strictly: every sample belongs to a family announced by
/// `# TYPE`, has a valid name, labels and value. Returns sample (name with labels) -> value.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut out = HashMap::new();
    assert!(text.ends_with("# EOF\n"), "no EOF marker");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line");
            assert!(["counter", "gauge", "histogram", "summary", "unknown"].contains(&kind), "{line}");
            types.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with('#') {
            assert!(line.starts_with("# HELP ") || line.starts_with("# UNIT ") || line == "# EOF", "{line}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let name = series.split('{').next().unwrap();
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'), "bad name in {line}");
        if let Some(l) = series.strip_prefix(name) {
            if !l.is_empty() {
                assert!(l.starts_with('{') && l.ends_with('}'), "bad labels in {line}");
                for kv in l[1..l.len() - 1].split(',') {
                    let (k, v) = kv.split_once('=').expect("label");
                    assert!(!k.is_empty() && v.starts_with('"') && v.ends_with('"'), "bad label in {line}");
                }
            }
        }
        let family = ["_total", "_bucket", "_count", "_sum", "_created"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| types.contains_key(*f)))
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample {name} has no TYPE");
        let v: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line}"));
        out.insert(series.to_string(), v);
    }
    out
}

fn http_get(addr: &str, path: &str) -> (String, String) {
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut s = String::new();
    c.read_to_string(&mut s).unwrap();
    let (head, body) = s.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

#[test]
fn metrics_parse_and_follow_known_work() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let mut d = Daemon::start_args(&["--metrics", &addr]);
    let m = d.volume("v");
    let before = parse(&d.ok(&["metrics"]));
    let n = 3 << 20;
    let data = pattern(5, n);
    fs::write(m.join("a"), &data).unwrap();
    File::open(m.join("a")).unwrap().sync_all().unwrap();
    // The same bytes again: stored once, deduplicated the second time.
    fs::write(m.join("b"), &data).unwrap();
    File::open(m.join("b")).unwrap().sync_all().unwrap();
    // Read through the daemon, not the kernel's page cache.
    let f = File::open(m.join("a")).unwrap();
    use std::os::fd::AsRawFd;
    assert_eq!(unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) }, 0);
    drop(f);
    assert!(fs::read(m.join("a")).unwrap() == data);
    // An fsync with a write to commit times its commit; a second one, with nothing new
    // written, only syncs the log.
    let mut c = File::create(m.join("c")).unwrap();
    c.write_all(&data[..4096]).unwrap();
    c.sync_data().unwrap();
    let commits = |d: &Daemon| parse(&d.ok(&["metrics"]))["clonefs_fsync_commit_seconds_count"];
    let first = commits(&d);
    c.sync_data().unwrap();
    assert_eq!(commits(&d), first, "an fsync with nothing new commits nothing");
    drop(c);

    let (status, body) = http_get(&addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let after = parse(&body);
    let delta = |k: &str| after.get(k).copied().unwrap_or(0.0) - before.get(k).copied().unwrap_or(0.0);
    assert_eq!(delta("clonefs_written_bytes_total"), 2.0 * n as f64 + 4096.0);
    assert!(delta("clonefs_read_bytes_total") >= n as f64);
    // The read after dropping the kernel's pages found the blocks in the log or in memory.
    let blocks = delta("clonefs_read_cache_hits_total") + delta("clonefs_read_cache_misses_total");
    assert!(blocks >= (n / (64 << 10)) as f64, "{blocks} blocks read");
    // (Counted as stored: a block's trailing zeros are not kept.)
    let dedup = delta("clonefs_dedup_bytes_total");
    assert!(dedup > 0.99 * n as f64 && dedup <= n as f64, "the second copy is deduplicated: {dedup}");
    let stored = delta("clonefs_stored_bytes_total");
    assert!(stored > 0.99 * n as f64 && stored < 1.1 * n as f64, "stored {stored}");
    assert!(delta("clonefs_log_sync_seconds_count") >= 1.0);
    assert!(delta("clonefs_fsync_commit_seconds_count") >= 1.0);
    assert!(delta(r#"clonefs_fuse_op_seconds_count{op="write"}"#) >= 6.0);
    assert!(delta(r#"clonefs_fuse_op_seconds_count{op="fsync"}"#) >= 2.0);
    let list = d.json(&["list", "--json"]);
    let v = list.as_array().unwrap().iter().find(|x| x["name"] == "v").unwrap();
    assert_eq!(after[r#"clonefs_volume_logical_bytes{volume="v"}"#], v["logical"].as_f64().unwrap());
    assert_eq!(after[r#"clonefs_volume_referenced_bytes{volume="v"}"#], v["referenced"].as_f64().unwrap());
    assert!(v["logical"].as_f64().unwrap() > 1.99 * n as f64);
    assert_eq!(after["clonefs_physical_bytes"], d.physical() as f64);

    assert!(http_get(&addr, "/other").0.contains("404"));
    // An address in use is a clear error at start, not a daemon without metrics.
    let other = tempfile::tempdir().unwrap();
    let store = other.path().join("s");
    assert!(crate::util::run_timeout(std::process::Command::new(crate::util::BIN).args(["init", "--store"]).arg(&store), 60).status.success());
    let out = crate::util::run_timeout(
        std::process::Command::new(crate::util::BIN).args(["daemon", "--foreground", "--metrics", &addr, "--store"]).arg(&store),
        60,
    );
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("cannot serve metrics"), "{out:?}");
    d.fsck_clean();
}

/// Concurrent fsyncs of one volume share log syncs (group commit): no lock of the volume is
/// held across a sync, so while one runs the others commit and the next sync covers them.
/// The log's sync count, against the fsyncs, tells.
#[test]
fn concurrent_fsyncs_of_one_volume_share_log_syncs() {
    let mut d = Daemon::start();
    let m = d.volume("v");
    let before = parse(&d.ok(&["metrics"]));
    let (threads, rounds) = (4, 150);
    let workers: Vec<_> = (0..threads)
        .map(|i| {
            let path = m.join(format!("f{i}"));
            std::thread::spawn(move || {
                let mut f = File::create(&path).unwrap();
                for r in 0..rounds {
                    f.write_all(&pattern(i * 1000 + r, 4096)).unwrap();
                    f.sync_data().unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let after = parse(&d.ok(&["metrics"]));
    let delta = |k: &str| after.get(k).copied().unwrap_or(0.0) - before.get(k).copied().unwrap_or(0.0);
    let fsyncs = delta(r#"clonefs_fuse_op_seconds_count{op="fsync"}"#);
    let syncs = delta("clonefs_log_sync_seconds_count");
    assert!(fsyncs >= (threads * rounds) as f64, "{fsyncs} fsyncs");
    assert!(syncs < 0.8 * fsyncs, "{syncs} log syncs for {fsyncs} concurrent fsyncs: they did not share");
    for i in 0..threads {
        let data = fs::read(m.join(format!("f{i}"))).unwrap();
        assert_eq!(data.len(), 4096 * rounds as usize);
        assert!(data[data.len() - 4096..] == pattern(i * 1000 + rounds - 1, 4096));
    }
    d.fsck_clean();
}
