//! `mount --fast-open`: the kernel opens and closes files without asking the daemon. Data,
//! files unlinked while open, snapshots and crashes behave as on a default mount, except
//! that a close commits nothing (the flusher does within seconds, an fsync at once).

use crate::util::{pattern, Daemon};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// How many requests of FUSE operation `op` the daemon has answered.
fn requests(d: &Daemon, op: &str) -> u64 {
    let key = format!("clonefs_fuse_op_seconds_count{{op=\"{op}\"}} ");
    d.ok(&["metrics"]).lines().find_map(|l| l.strip_prefix(&key)).map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

fn referenced(d: &Daemon, name: &str) -> u64 {
    let list = d.json(&["list", "--json"]);
    list.as_array().unwrap().iter().find(|r| r["name"] == name).unwrap()["referenced"].as_u64().unwrap()
}

/// Waits up to 60 s for `cond`.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < Duration::from_secs(60), "{what}: not within 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read(p: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    File::open(p).unwrap().read_to_end(&mut v).unwrap();
    v
}

#[test]
fn opens_and_closes_stay_in_the_kernel_and_data_is_kept() {
    let mut d = Daemon::start();
    d.ok(&["create", "v", "--block-size", "16K"]);
    d.ok(&["create", "ops", "--block-size", "64K"]);
    let ops = d.mount_with("ops", &["--fast-open"]);
    crate::data_ops(&ops, false);
    let m = d.mount_with("v", &["--fast-open"]);
    let st = d.json(&["status", "--json"]);
    let shown = |dir: &Path| st["mounts"].as_array().unwrap().iter().find(|x| x["mountpoint"] == dir.to_str().unwrap()).unwrap()["fast_open"].clone();
    assert_eq!((shown(&m), shown(&ops)), (serde_json::json!(true), serde_json::json!(true)), "{st}");
    let before = (requests(&d, "open"), requests(&d, "flush"));
    let data = pattern(1, 3 << 20);
    fs::write(m.join("f"), &data).unwrap();
    for _ in 0..50 {
        assert_eq!(read(&m.join("f")), data);
    }
    let mut a = OpenOptions::new().append(true).open(m.join("f")).unwrap();
    a.write_all(&pattern(2, 1 << 20)).unwrap();
    drop(a);
    // The mount's first OPEN and FLUSH were answered ENOSYS; the kernel asked no more.
    let after = (requests(&d, "open"), requests(&d, "flush"));
    assert!(after.0 <= before.0 + 1 && after.1 <= before.1 + 1, "51 opens: OPEN and FLUSH requests {before:?} -> {after:?}");

    // What a close left unsaved is committed by the flusher, and a kill -9 after that keeps it.
    let mut want = data.clone();
    want.extend_from_slice(&pattern(2, 1 << 20));
    eventually("the appended MiB committed", || referenced(&d, "v") >= (4 << 20) - (64 << 10));
    // fsync'd bytes are kept at once.
    let g = OpenOptions::new().create(true).write(true).open(m.join("g")).unwrap();
    g.write_all_at(&pattern(3, 100_000), 0).unwrap();
    g.sync_all().unwrap();
    drop(g);
    d.kill9();
    d.restart();
    d.fsck_clean();
    let m = d.mount_with("v", &["--fast-open"]);
    assert_eq!(read(&m.join("f")), want);
    assert_eq!(read(&m.join("g")), pattern(3, 100_000));

    // A snapshot holds what was written before it; its files cannot be written (the error
    // comes from write(2) or the truncation, as the kernel opens without asking).
    fs::write(m.join("s"), b"before").unwrap();
    d.ok(&["snapshot", "v@one"]);
    fs::write(m.join("s"), b"after").unwrap();
    let snapfile = m.join(".snapshots/one/s");
    assert_eq!(fs::read(&snapfile).unwrap(), b"before");
    let e = fs::write(&snapfile, b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    if let Ok(f) = OpenOptions::new().write(true).open(&snapfile) {
        assert_eq!(f.write_at(b"x", 0).unwrap_err().raw_os_error(), Some(libc::EROFS));
    }
    assert_eq!(fs::read(&snapfile).unwrap(), b"before");
    assert_eq!(fs::read(m.join("s")).unwrap(), b"after");
    d.fsck_clean();
}

#[test]
fn a_file_unlinked_while_open_stays_until_the_kernel_lets_go() {
    let mut d = Daemon::start();
    d.ok(&["create", "v", "--block-size", "16K"]);
    let m = d.mount_with("v", &["--fast-open"]);
    let data = pattern(7, 4 << 20);
    fs::write(m.join("kept"), &data).unwrap();
    // Opened by the kernel alone (no OPEN reaches the daemon), then unlinked by name.
    let f = OpenOptions::new().read(true).write(true).open(m.join("kept")).unwrap();
    fs::remove_file(m.join("kept")).unwrap();
    assert_eq!(fs::metadata(m.join("kept")).unwrap_err().kind(), ErrorKind::NotFound);
    eventually("the unlinked file's data committed", || referenced(&d, "v") >= 3 << 20);
    let mut back = vec![0u8; data.len()];
    f.read_exact_at(&mut back, 0).unwrap();
    assert!(back == data, "an unlinked open file lost its data");
    f.write_all_at(&pattern(8, 1 << 20), 4 << 20).unwrap();
    f.sync_all().unwrap();
    assert!(referenced(&d, "v") >= 4 << 20, "the open file's space went while it was open");
    // The last close lets the kernel forget the inode: then it goes, space and all.
    drop(f);
    eventually("the unlinked file purged", || referenced(&d, "v") < 1 << 20);
    d.fsck_clean();

    // Unlinked while open, then a crash: the next start purges it.
    fs::write(m.join("again"), pattern(9, 2 << 20)).unwrap();
    let f = File::open(m.join("again")).unwrap();
    fs::remove_file(m.join("again")).unwrap();
    let mut b = [0u8; 4096];
    f.read_exact_at(&mut b, 0).unwrap();
    eventually("the second file committed", || referenced(&d, "v") >= 1 << 20);
    d.kill9();
    drop(f);
    d.restart();
    d.fsck_clean();
    let m = d.mount_with("v", &["--fast-open"]);
    assert!(referenced(&d, "v") < 1 << 20, "after kill -9 and restart, {} bytes referenced", referenced(&d, "v"));
    assert_eq!(fs::read_dir(&m).unwrap().filter_map(|e| e.ok()).filter(|e| e.file_name() != ".snapshots").count(), 0);
}
