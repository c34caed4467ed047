//! `refquota` and `quota`: a volume's writes stop at the limit with EDQUOT, `df` shows it,
//! and nothing else is disturbed.

use crate::util::*;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

/// Writes 1 MiB chunks with an fsync after each until something fails; the errno and the
/// bytes acknowledged.
fn fill(p: &Path, limit: u64) -> (Option<i32>, u64) {
    let mut f = OpenOptions::new().create(true).write(true).open(p).unwrap();
    let mut done = 0;
    while done < limit {
        if let Err(e) = f.write_all(&pattern(done, 1 << 20)).and_then(|_| f.sync_data()) {
            return (e.raw_os_error(), done);
        }
        done += 1 << 20;
    }
    (None, done)
}

fn df_size(p: &Path) -> u64 {
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
    s.f_blocks * s.f_frsize
}

#[test]
fn refquota_limits_a_volume_and_nothing_else() {
    let mut d = Daemon::start();
    let v = d.volume("v");
    let w = d.volume("w");
    d.ok(&["set", "refquota=8M", "v"]);
    assert_eq!(d.json(&["get", "refquota", "v", "--json"])["refquota"], "8388608");
    let shown = d.ok(&["get", "refquota,block_size", "v"]);
    assert!(shown.contains("refquota    8M") && shown.contains("block_size  64K"), "get's table: {shown}");
    assert_eq!(df_size(&v), 8 << 20, "df shows the refquota as the size");
    let (err, done) = fill(&v.join("big"), 64 << 20);
    assert_eq!(err, Some(libc::EDQUOT), "writing past the refquota");
    assert!(done <= 8 << 20, "{done} bytes acknowledged past an 8 MiB refquota");
    // The other volume is not limited.
    assert_eq!(fill(&w.join("big"), 16 << 20), (None, 16 << 20));
    // Space a snapshot alone holds does not count: remove the file and write again.
    d.ok(&["snapshot", "v@s"]);
    fs::remove_file(v.join("big")).unwrap();
    assert_eq!(fill(&v.join("again"), 4 << 20), (None, 4 << 20));
    // Bad input is refused and changes nothing.
    let before = (d.ok(&["list", "--json"]), d.ok(&["get", "v", "--json"]));
    for (args, want) in [
        (vec!["set", "refquota=lots", "v"], "size"),
        (vec!["set", "refquota=0x10", "v"], "size"),
        (vec!["set", "quota=many", "v"], "size"),
        (vec!["set", "colour=red", "v"], "no property"),
        (vec!["set", "block_size=4096", "v"], "read-only"),
        (vec!["set", "refquota", "v"], "PROPERTY=VALUE"),
        (vec!["set", "refquota=1G", "ghost"], "no volume"),
        (vec!["get", "colour", "v"], "no property"),
        (vec!["get", "ghost"], "no volume"),
    ] {
        let err = d.fails(&args);
        assert!(err.contains(want), "clonefs {args:?}: {err:?} should mention {want:?}");
    }
    assert_eq!((d.ok(&["list", "--json"]), d.ok(&["get", "v", "--json"])), before);
    // A clone starts without one; lifting it lets the volume grow.
    d.ok(&["clone", "v", "c"]);
    assert_eq!(d.json(&["get", "c", "--json"])["refquota"], "none");
    d.ok(&["set", "refquota=none", "v"]);
    assert_eq!(fill(&v.join("more"), 16 << 20), (None, 16 << 20));
    // `list` for scripts: chosen columns, no header, tabs, exact bytes, as `--json` says.
    let json = d.json(&["list", "--json"]);
    let referenced = |name: &str| json.as_array().unwrap().iter().find(|r| r["name"] == name).unwrap()["referenced"].as_u64().unwrap();
    let rows = d.ok(&["list", "-H", "-p", "-o", "name,type,referenced"]);
    let want: Vec<String> = ["c", "v", "v@s", "w"]
        .iter()
        .map(|n| format!("{n}\t{}\t{}", if n.contains('@') { "snapshot" } else { "volume" }, referenced(n)))
        .collect();
    assert_eq!(rows.lines().collect::<Vec<_>>(), want);
    assert!(d.fails(&["list", "-o", "name,colour"]).contains("unknown column"));
    d.fsck_clean();
}

/// `quota` counts what a volume holds of its own: a clone of a big volume may write that much
/// on top of what it shares with its origin (a refquota that small would refuse it at once).
#[test]
fn quota_limits_what_a_clone_adds() {
    let mut d = Daemon::start();
    let v = d.volume("v");
    assert_eq!(fill(&v.join("base"), 24 << 20), (None, 24 << 20));
    d.ok(&["snapshot", "v@s"]);
    d.ok(&["clone", "v@s", "c"]);
    d.ok(&["set", "quota=8M", "c"]);
    assert_eq!(d.json(&["get", "quota", "c", "--json"])["quota"], "8388608");
    let c = d.mount("c");
    assert_eq!(df_size(&c) - df_used(&c), 8 << 20, "df shows what the quota leaves");
    let (err, done) = fill(&c.join("new"), 64 << 20);
    assert_eq!(err, Some(libc::EDQUOT), "writing past the quota");
    assert!((4 << 20..=8 << 20).contains(&done), "{done} bytes acknowledged under an 8 MiB quota");
    // The origin's data still reads, the origin still writes.
    assert_eq!(fs::read(c.join("base")).unwrap().len(), 24 << 20);
    assert_eq!(fill(&v.join("more"), 16 << 20), (None, 16 << 20));
    d.ok(&["set", "quota=none", "c"]);
    assert_eq!(fill(&c.join("after"), 16 << 20), (None, 16 << 20));
    d.fsck_clean();
}

fn df_used(p: &Path) -> u64 {
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
    (s.f_blocks - s.f_bfree) * s.f_frsize
}

fn df_free(p: &Path) -> u64 {
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
    s.f_bavail * s.f_frsize
}

fn referenced(d: &Daemon, name: &str) -> u64 {
    let list = d.json(&["list", "--json"]);
    list.as_array().unwrap().iter().find(|r| r["name"] == name).unwrap()["referenced"].as_u64().unwrap()
}

/// Small unlinked files are purged in batches after their unlinks return, but nothing a
/// user checks may see them: `df` and `list` right after the `rm`, a refquota that only
/// the freed space leaves room under, and a kill -9 before the purge (the next start
/// finishes it, fsck clean, the space back).
#[test]
fn unlinked_files_give_their_space_back_at_once_and_after_a_kill_9() {
    let mut d = Daemon::start();
    let v = d.volume("v");
    d.ok(&["set", "refquota=8M", "v"]);
    let write_files = |round: u64| {
        fs::create_dir_all(v.join("d")).unwrap();
        for i in 0..400u64 {
            fs::write(v.join("d").join(format!("f{i}")), pattern(round * 1000 + i, 16 << 10)).unwrap();
        }
    };
    let remove_files = || {
        for i in 0..400u64 {
            fs::remove_file(v.join("d").join(format!("f{i}"))).unwrap();
        }
    };
    // Each round has room under the refquota only if the last one's unlinks freed theirs.
    write_files(1);
    assert!(referenced(&d, "v") > 6 << 20);
    remove_files();
    assert!(referenced(&d, "v") < 1 << 20, "right after rm, list shows {} bytes referenced", referenced(&d, "v"));
    write_files(2);
    assert!(df_free(&v) < 2 << 20, "df shows {} bytes free with 6.25 MiB written under an 8 MiB refquota", df_free(&v));
    remove_files();
    assert!(df_free(&v) > 7 << 20, "right after rm, df shows only {} bytes free", df_free(&v));
    // A file unlinked while open goes at its last close, and its space with it.
    {
        let p = v.join("open");
        let mut f = OpenOptions::new().create(true).read(true).write(true).open(&p).unwrap();
        f.write_all(&pattern(7, 4 << 20)).unwrap();
        f.sync_all().unwrap();
        fs::remove_file(&p).unwrap();
        f.write_all(&pattern(8, 2 << 20)).unwrap();
        f.sync_all().unwrap();
        assert!(df_free(&v) < 3 << 20, "an unlinked file still open holds its 6 MiB: df shows {} bytes free", df_free(&v));
    }
    // The kernel sends the release after close returns: give it a moment.
    let t0 = std::time::Instant::now();
    while df_free(&v) <= 7 << 20 && t0.elapsed() < std::time::Duration::from_secs(30) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(df_free(&v) > 7 << 20, "after the last close, df shows only {} bytes free", df_free(&v));
    write_files(3);
    remove_files();
    d.kill9();
    d.restart();
    d.fsck_clean();
    assert!(referenced(&d, "v") < 1 << 20, "after kill -9 and restart, {} bytes still referenced", referenced(&d, "v"));
    assert!(d.physical() < 1 << 20, "after kill -9 and restart, the store holds {} bytes", d.physical());
    let v = d.mount("v");
    assert_eq!(fs::read_dir(v.join("d")).unwrap().count(), 0);
}
