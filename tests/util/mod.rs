//! Test harness: a daemon on a temporary store, with volumes mounted through the kernel.
//! Everything it starts is stopped and unmounted on drop, even when a test fails.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_clonefs");

pub struct Daemon {
    pub tmp: tempfile::TempDir,
    pub store: PathBuf,
    child: Option<Child>,
    pub mounts: Vec<PathBuf>,
    /// Extra `clonefs daemon` arguments, at every (re)start.
    args: Vec<String>,
}

/// Runs a command with a deadline; kills it when the deadline passes.
pub fn run_timeout(cmd: &mut Command, secs: u64) -> Output {
    use std::io::Read;
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    // Read both pipes while it runs: a child with more output than a pipe holds would
    // otherwise block on its write and never exit.
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out_t = drain(Box::new(child.stdout.take().expect("stdout")));
    let err_t = drain(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let err = err_t.join().unwrap_or_default();
            panic!("command {cmd:?} timed out after {secs}s: {}", String::from_utf8_lossy(&err));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output { status, stdout: out_t.join().unwrap_or_default(), stderr: err_t.join().unwrap_or_default() }
}

impl Daemon {
    pub fn start() -> Daemon {
        let tmp = tempfile::Builder::new().prefix("clonefs-test").tempdir().expect("tempdir");
        let store = tmp.path().join("store");
        Daemon::start_with(tmp, store, Vec::new())
    }

    /// A daemon started (and restarted) with these extra `clonefs daemon` arguments.
    pub fn start_args(args: &[&str]) -> Daemon {
        let tmp = tempfile::Builder::new().prefix("clonefs-test").tempdir().expect("tempdir");
        let store = tmp.path().join("store");
        Daemon::start_with(tmp, store, args.iter().map(|a| a.to_string()).collect())
    }

    /// A daemon whose store is `store` (on a disk of the test's choosing).
    pub fn start_at(store: PathBuf) -> Daemon {
        let tmp = tempfile::Builder::new().prefix("clonefs-test").tempdir().expect("tempdir");
        Daemon::start_with(tmp, store, Vec::new())
    }

    fn start_with(tmp: tempfile::TempDir, store: PathBuf, args: Vec<String>) -> Daemon {
        // Other users reach the mounts inside (permission tests); the store keeps its own 0700.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let out = run_timeout(Command::new(BIN).arg("init").arg("--store").arg(&store), 60);
        assert!(out.status.success(), "init: {}", String::from_utf8_lossy(&out.stderr));
        let mut d = Daemon { tmp, store, child: None, mounts: Vec::new(), args };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.tmp.path().join("daemon.log"))
            .expect("log");
        let child = Command::new(BIN)
            .args(["daemon", "--foreground", "-v", "--store"])
            .arg(&self.store)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn daemon");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.cli(&["status"]).status.success() {
            assert!(Instant::now() < deadline, "daemon did not start: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("daemon.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        run_timeout(Command::new(BIN).args(args).env("CLONEFS_STORE", &self.store), 300)
    }

    /// Starts a CLI command in the background, its output dropped (for a kill -9 inside it).
    pub fn spawn_cli(&self, args: &[&str]) -> Child {
        Command::new(BIN)
            .args(args)
            .env("CLONEFS_STORE", &self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn clonefs")
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "clonefs {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a command that must fail with one line on stderr; returns that line.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(!out.status.success(), "clonefs {args:?} should have failed");
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        assert_eq!(err.lines().count(), 1, "clonefs {args:?}: error should be one line: {err:?}");
        assert!(err.len() > 10, "unclear error: {err:?}");
        err
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).expect("json")
    }

    /// Creates and mounts a volume; returns its mountpoint.
    pub fn volume(&mut self, name: &str) -> PathBuf {
        self.ok(&["create", name, "--block-size", "64K"]);
        self.mount(name)
    }

    pub fn mount(&mut self, name: &str) -> PathBuf {
        self.mount_with(name, &[])
    }

    /// Mounts with extra `clonefs mount` options (`--writeback`).
    pub fn mount_with(&mut self, name: &str, opts: &[&str]) -> PathBuf {
        let dir = self.tmp.path().join(format!("mnt-{name}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let mut args = vec!["mount", name, dir.to_str().expect("utf8")];
        args.extend_from_slice(opts);
        self.ok(&args);
        self.mounts.push(dir.clone());
        dir
    }

    pub fn unmount(&mut self, dir: &Path) {
        self.ok(&["unmount", dir.to_str().expect("utf8")]);
        self.mounts.retain(|m| m != dir);
    }

    pub fn physical(&self) -> u64 {
        self.json(&["status", "--json"])["physical"].as_u64().expect("physical")
    }

    pub fn fsck_clean(&self) {
        let out = self.cli(&["fsck"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains("clean"), "fsck: {text}{}", String::from_utf8_lossy(&out.stderr));
    }

    /// kill -9 the daemon and drop its (now dead) mounts.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for m in std::mem::take(&mut self.mounts) {
            lazy_unmount(&m);
        }
    }

    /// kill -9 that leaves the mounts as a crash does: dead, failing with ENOTCONN until
    /// unmounted (`Drop` still unmounts whatever is left under the test's directory).
    pub fn kill9_leaving_mounts(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart after kill9 or stop");
        self.spawn();
    }

    /// Runs CLI command `args`, kills the daemon -9 `delay_ms` into it, restarts it and
    /// checks fsck. Returns whether the kill cut the command short (it failed).
    pub fn kill9_during(&mut self, args: &[&str], delay_ms: u64) -> bool {
        let cmd = self.spawn_cli(args);
        std::thread::sleep(Duration::from_millis(delay_ms));
        self.kill9();
        // The CLI fails when the daemon dies before answering.
        let cut = !{ cmd }.wait().unwrap().success();
        self.restart();
        self.fsck_clean();
        cut
    }

    /// Graceful stop (SIGTERM), bounded.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while c.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.wait();
        }
        for m in std::mem::take(&mut self.mounts) {
            if is_mounted(&m) {
                lazy_unmount(&m);
            }
        }
    }
}

pub fn is_mounted(dir: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let d = dir.to_string_lossy();
    mounts.lines().any(|l| l.split(' ').nth(1) == Some(&d))
}

pub fn lazy_unmount(dir: &Path) {
    let _ = Command::new("fusermount3").arg("-uz").arg(dir).stderr(Stdio::null()).status();
    let _ = Command::new("umount").arg("-l").arg(dir).stderr(Stdio::null()).status();
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        // Mounts a killed daemon left behind that the test did not know of (its database
        // volumes under STORE.db): deepest first.
        let under = self.tmp.path().to_string_lossy().to_string();
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let mut left: Vec<&str> = mounts.lines().filter_map(|l| l.split(' ').nth(1)).filter(|m| m.starts_with(&under)).collect();
        left.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in left {
            lazy_unmount(Path::new(m));
        }
        // Database servers of a daemon that had to be killed: nothing of a test outlives it.
        let _ = Command::new("pkill").arg("-KILL").arg("-f").arg(format!("{}.db/", self.store.display())).status();
    }
}

/// Deterministic pseudo-random bytes.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A small ext4 filesystem on a loop device, unmounted on drop (declare it before the
/// daemon that uses it, so the daemon stops first).
pub struct LoopDisk {
    _tmp: tempfile::TempDir,
    pub dir: PathBuf,
}

impl LoopDisk {
    pub fn new(mib: u64) -> LoopDisk {
        let tmp = tempfile::Builder::new().prefix("clonefs-disk").tempdir().expect("tempdir");
        let img = tmp.path().join("img");
        let dir = tmp.path().join("fs");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::File::create(&img).and_then(|f| f.set_len(mib << 20)).expect("image");
        let out = run_timeout(Command::new("mkfs.ext4").arg("-q").arg(&img), 60);
        assert!(out.status.success(), "mkfs.ext4: {}", String::from_utf8_lossy(&out.stderr));
        let out = run_timeout(Command::new("mount").args(["-o", "loop"]).arg(&img).arg(&dir), 60);
        assert!(out.status.success(), "mount -o loop: {}", String::from_utf8_lossy(&out.stderr));
        LoopDisk { _tmp: tmp, dir }
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.dir).stderr(Stdio::null()).status().map(|s| s.success()).unwrap_or(false);
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}
