//! The daemon under a service manager: with `$NOTIFY_SOCKET` it says READY=1 once its socket
//! answers and STOPPING=1 when it stops (sd_notify); mounts show as `fuse.clonefs` with the
//! volume's name as their source, so `findmnt -t fuse.clonefs` and `df` name them.

use crate::util::{run_timeout, BIN};
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
