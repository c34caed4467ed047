//! The daemon under a service manager: with `$NOTIFY_SOCKET` it says READY=1 once its socket
//! answers and STOPPING=1 when it stops (sd_notify); mounts show as `fuse.clonefs` with the
//! volume's name as their source, so `findmnt -t fuse.clonefs` and `df` name them; and a
//! restart (after a stop or kill -9) mounts again what was mounted.

use crate::util::{is_mounted, run_timeout, Daemon, BIN};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn readiness_and_stop_are_notified_and_mounts_are_named() {
    let tmp = tempfile::Builder::new().prefix("clonefs-test").tempdir().unwrap();
    let store = tmp.path().join("store");
    assert!(run_timeout(Command::new(BIN).arg("init").arg("--store").arg(&store), 60).status.success());
    let sock_path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut child = Command::new(BIN)
        .args(["daemon", "--foreground", "--store"])
        .arg(&store)
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("no READY=1 from the daemon");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.contains("READY=1") && msg.contains(&format!("MAINPID={}", child.id())), "{msg}");
    // Ready means ready: the socket answers at once.
    let cli = |args: &[&str]| run_timeout(Command::new(BIN).args(args).env("CLONEFS_STORE", &store), 120);
    assert!(cli(&["status"]).status.success());
    assert!(cli(&["create", "named"]).status.success());
    let mnt = tmp.path().join("m");
    std::fs::create_dir(&mnt).unwrap();
    assert!(cli(&["mount", "named", mnt.to_str().unwrap()]).status.success());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let line = mounts.lines().find(|l| l.split(' ').nth(1) == Some(mnt.to_str().unwrap())).unwrap_or_default().to_string();
    assert!(line.starts_with("named ") && line.contains(" fuse.clonefs "), "{line}");
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let n = sock.recv(&mut buf).expect("no STOPPING=1 from the daemon");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the daemon did not stop");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!std::fs::read_to_string("/proc/mounts").unwrap().contains(mnt.to_str().unwrap()), "the stop left the mount");
}

/// A restarted daemon mounts again what was mounted when it stopped, cleanly or by kill -9
/// (whose dead mounts it unmounts first), with the same options; what was unmounted stays
/// so. A database volume's mount comes back too (its `DbConf`), and `clonefs mount` and
/// `unmount` clear a dead mount the daemon did not know of.
#[test]
fn a_restarted_daemon_mounts_again_what_was_mounted() {
    let mut d = Daemon::start();
    let v = d.volume("v");
    d.ok(&["create", "w", "--block-size", "64K"]);
    let w = d.mount_with("w", &["--writeback"]);
    let x = d.volume("x");
    let ro = d.volume("ro");
    d.ok(&["remount", "--read-only", ro.to_str().unwrap()]);
    std::fs::write(v.join("f"), b"kept").unwrap();
    std::fs::File::open(v.join("f")).unwrap().sync_all().unwrap();
    let lite = d.tmp.path().join("app.db");
    assert!(run_timeout(Command::new("sqlite3").arg(&lite).arg("CREATE TABLE t(x); INSERT INTO t VALUES (42);"), 60).status.success());
    d.ok(&["db", "init", "lite", "--engine", "sqlite", "--import", lite.to_str().unwrap()]);
    let db_dir = std::path::PathBuf::from(format!("{}.db/lite", d.store.display()));
    assert!(is_mounted(&db_dir));
    d.ok(&["unmount", x.to_str().unwrap()]);
    let mounted_at = |d: &Daemon, name: &str| {
        let list = d.json(&["list", "--json"]);
        list.as_array().unwrap().iter().find(|r| r["name"] == name).unwrap()["mountpoint"].as_str().map(str::to_string)
    };

    d.kill9_leaving_mounts();
    let dead = |p: &std::path::Path| std::fs::read_dir(p).err().and_then(|e| e.raw_os_error()) == Some(libc::ENOTCONN);
    assert!(dead(&v) && dead(&w) && dead(&db_dir), "the killed daemon's mounts are not dead");
    d.restart();
    // Ready means mounted again: no wait.
    assert_eq!(std::fs::read(v.join("f")).unwrap(), b"kept");
    assert_eq!(mounted_at(&d, "w").as_deref(), w.to_str());
    assert_eq!(mounted_at(&d, "x"), None, "an unmounted volume was mounted again");
    assert!(d.ok(&["mount", "v", v.to_str().unwrap()]).contains("already mounted"));
    assert!(d.fails(&["mount", "w", w.to_str().unwrap()]).contains("other options"), "w came back without --writeback");
    // Remounted read-only, it comes back read-only, and can be made writable again.
    let e = std::fs::write(ro.join("g"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "a volume remounted read-only came back writable");
    d.ok(&["remount", "--read-write", ro.to_str().unwrap()]);
    std::fs::write(ro.join("g"), b"x").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let query = || run_timeout(Command::new("sqlite3").arg(db_dir.join("data/db.sqlite")).arg("SELECT x FROM t"), 60);
    loop {
        let out = query();
        if out.status.success() {
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the database volume was not mounted again: {}", d.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(d.log().contains("whose daemon died"), "the dead mounts were not named in the log");
    // One live mount at each directory, not a live one over a dead one.
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    for dir in [&v, &w, &db_dir] {
        assert_eq!(mounts.lines().filter(|l| l.split(' ').nth(1) == dir.to_str()).count(), 1, "{}", dir.display());
    }

    // A clean stop and start: the same again, less what was unmounted meanwhile.
    d.ok(&["unmount", w.to_str().unwrap()]);
    d.stop();
    assert!(!is_mounted(&v) && !is_mounted(&w));
    d.restart();
    assert_eq!(std::fs::read(v.join("f")).unwrap(), b"kept");
    assert_eq!(mounted_at(&d, "w"), None);

    // Dead mounts the daemon has no record of (it died before it wrote one): `clonefs mount`
    // and `clonefs unmount` clear them; a plain directory is still refused by unmount.
    d.kill9_leaving_mounts();
    std::fs::remove_file(d.store.join("mounts")).unwrap();
    d.restart();
    assert!(dead(&v));
    d.ok(&["mount", "v", v.to_str().unwrap()]);
    assert_eq!(std::fs::read(v.join("f")).unwrap(), b"kept");
    d.ok(&["unmount", v.to_str().unwrap()]);
    d.ok(&["mount", "x", x.to_str().unwrap()]);
    d.kill9_leaving_mounts();
    std::fs::remove_file(d.store.join("mounts")).unwrap();
    d.restart();
    d.ok(&["unmount", x.to_str().unwrap()]);
    assert!(!is_mounted(&x) && std::fs::read_dir(&x).is_ok());
    assert!(d.fails(&["unmount", x.to_str().unwrap()]).contains("not a clonefs mountpoint"));
    d.fsck_clean();
}
