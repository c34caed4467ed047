//! A full disk under the store: writes get ENOSPC while a reserve is still free, and
//! deletes, snapshots, GC, compaction and a restart keep working; nothing fsync'd is lost.

use crate::util::{pattern, Daemon, LoopDisk};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn avail(dir: &Path) -> u64 {
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
    s.f_bavail as u64 * s.f_frsize as u64
}

/// Writes 1 MiB pieces of `f` and fsyncs each until one fails; returns that error.
fn fill(f: &Path) -> std::io::Error {
    let mut file = File::create(f).unwrap();
    for i in 0..10_000u64 {
        if let Err(e) = file.write_all(&pattern(i, 1 << 20)).and_then(|_| file.sync_data()) {
            return e;
        }
    }
    panic!("a 400 MiB disk took 10 GiB");
}

#[test]
fn a_full_disk_refuses_writes_but_deletes_snapshots_and_restarts_work() {
    let disk = LoopDisk::new(400);
    let mut d = Daemon::start_at(disk.dir.join("store"));
    d.ok(&["create", "v"]);
    let m = d.mount("v");
    let keep = pattern(99, 3 << 20);
    fs::write(m.join("keep"), &keep).unwrap();
    File::open(m.join("keep")).unwrap().sync_all().unwrap();

    let e = fill(&m.join("big"));
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "filling failed with {e}");
    // df tells the truth: little more fits (RocksDB may give back a few MiB of log after the
    // refusal), though the disk itself keeps the reserve free.
    assert!(avail(&m) < 24 << 20, "df on the mount shows {} bytes free", avail(&m));
    let st = d.json(&["status", "--json"]);
    assert!(st["reserve"].as_u64().unwrap() > 0 && avail(&disk.dir) >= st["reserve"].as_u64().unwrap() / 2);

    // Everything that gives space back works on the full disk.
    fs::remove_file(m.join("big")).unwrap();
    d.ok(&["snapshot", "v@full"]);
    d.ok(&["gc"]);
    d.ok(&["compact"]);
    d.ok(&["destroy", "v@full"]);
    d.ok(&["gc"]);
    let data = pattern(5, 20 << 20);
    fs::write(m.join("after"), &data).unwrap();
    File::open(m.join("after")).unwrap().sync_all().unwrap();

    // A crash while others fill the disk to the last byte: the store still starts.
    d.kill9();
    let mut filler = OpenOptions::new().create(true).write(true).open(disk.dir.join("filler")).unwrap();
    while filler.write_all(&[7u8; 1 << 20]).is_ok() {}
    drop(filler);
    d.restart();
    let m = d.mount("v");
    assert!(fs::read(m.join("keep")).unwrap() == keep, "fsync'd file changed");
    assert!(fs::read(m.join("after")).unwrap() == data, "fsync'd file changed");
    fs::remove_file(disk.dir.join("filler")).unwrap();
    d.fsck_clean();
}
