//! `clonefs send` / `receive` between two stores: full and incremental round trips keep
//! everything a volume holds; damaged, cut, reordered and foreign streams are refused and
//! leave nothing behind; a two-way send moves only the blocks the receiver lacks; an
//! interrupted resumable receive finishes with `send --resume`.

use crate::util::{pattern, run_timeout, Daemon, BIN};
use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::fs::{chown, symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

fn xattrs(p: &Path) -> BTreeMap<String, Vec<u8>> {
    let c = CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let mut names = vec![0u8; 4096];
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(n >= 0, "listxattr {}", p.display());
    let mut out = BTreeMap::new();
    for name in names[..n as usize].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let cn = CString::new(name).unwrap();
        let mut v = vec![0u8; 4096];
        let r = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        assert!(r >= 0);
        v.truncate(r as usize);
        out.insert(String::from_utf8_lossy(name).into_owned(), v);
    }
    out
}

fn set_xattr(p: &Path, name: &str, v: &[u8]) {
    let c = CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    assert_eq!(unsafe { libc::setxattr(c.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0) }, 0);
}

fn remove_xattr(p: &Path, name: &str) {
    let c = CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    assert_eq!(unsafe { libc::removexattr(c.as_ptr(), n.as_ptr()) }, 0);
}

/// Sets atime and mtime with nanoseconds.
fn set_times(p: &Path, sec: i64, nsec: i64) {
    let c = CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let ts = [libc::timespec { tv_sec: sec, tv_nsec: nsec }, libc::timespec { tv_sec: sec + 7, tv_nsec: nsec + 1 }];
    assert_eq!(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) }, 0);
}

/// Everything a user can see of a tree, by relative path (inode numbers as link groups).
fn snapshot_of(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut groups: BTreeMap<u64, String> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<PathBuf> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for p in entries {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if rel == ".snapshots" {
                continue;
            }
            let md = fs::symlink_metadata(&p).unwrap();
            let group = groups.entry(md.ino()).or_insert_with(|| rel.clone()).clone();
            let what = if md.file_type().is_symlink() {
                format!("link {}", fs::read_link(&p).unwrap().display())
            } else if md.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else {
                let data = fs::read(&p).unwrap();
                format!("file {:016x} blocks {}", xxhash_of(&data), md.blocks())
            };
            out.insert(
                rel,
                format!(
                    "{what} mode {:o} owner {}:{} size {} nlink {} mtime {}.{} atime {}.{} same-as {group} xattrs {:?}",
                    md.mode(),
                    md.uid(),
                    md.gid(),
                    if md.is_dir() { 0 } else { md.size() },
                    md.nlink(),
                    md.mtime(),
                    md.mtime_nsec(),
                    md.atime(),
                    md.atime_nsec(),
                    xattrs(&p)
                ),
            );
        }
    }
    out
}

fn xxhash_of(b: &[u8]) -> u64 {
    // FNV-1a: enough to tell contents apart in a test.
    b.iter().fold(0xcbf29ce484222325u64, |h, x| (h ^ *x as u64).wrapping_mul(0x100000001b3))
}

fn assert_same(a: &Path, b: &Path) {
    let (x, y) = (snapshot_of(a), snapshot_of(b));
    for (k, v) in &x {
        assert_eq!(Some(v), y.get(k), "{k} differs between {} and {}", a.display(), b.display());
    }
    assert_eq!(x.len(), y.len(), "{:?}", y.keys().filter(|k| !x.contains_key(*k)).collect::<Vec<_>>());
}

fn populate(m: &Path) {
    fs::create_dir_all(m.join("src/deep/er")).unwrap();
    fs::write(m.join("src/big"), pattern(1, 3 << 20)).unwrap();
    fs::write(m.join("src/deep/small"), b"small file").unwrap();
    fs::write(m.join("src/deep/er/dup"), pattern(1, 3 << 20)).unwrap();
    fs::hard_link(m.join("src/deep/small"), m.join("src/hard")).unwrap();
    symlink("deep/small", m.join("src/sym")).unwrap();
    let sparse = fs::File::create(m.join("sparse")).unwrap();
    sparse.set_len(64 << 20).unwrap();
    std::os::unix::fs::FileExt::write_at(&sparse, b"middle", 32 << 20).unwrap();
    drop(sparse);
    fs::set_permissions(m.join("src/deep/small"), fs::Permissions::from_mode(0o4751)).unwrap();
    chown(m.join("src/big"), Some(1234), Some(4321)).unwrap();
    set_xattr(&m.join("src/big"), "user.origin", b"factory");
    set_xattr(&m.join("src/deep"), "user.dir", b"yes");
    fs::write(m.join("empty"), b"").unwrap();
    for p in ["src/big", "src/deep/small", "sparse", "empty", "src/deep/er"] {
        set_times(&m.join(p), 1_600_000_000, 123_456_789);
    }
}

fn sh(cmd: &str) -> std::process::Output {
    run_timeout(Command::new("sh").arg("-c").arg(cmd), 300)
}

fn space(d: &Daemon, name: &str) -> (u64, u64) {
    let v = d.json(&["list", "--json"]);
    let e = v.as_array().unwrap().iter().find(|x| x["name"] == name).unwrap_or_else(|| panic!("{name} not listed"));
    (e["logical"].as_u64().unwrap(), e["referenced"].as_u64().unwrap())
}

#[test]
fn send_receive_round_trips_full_then_incremental() {
    let mut a = Daemon::start();
    let mut b = Daemon::start();
    let m = a.volume("v");
    populate(&m);
    a.ok(&["snapshot", "v@s1"]);
    let full = a.tmp.path().join("s1.stream");
    a.ok(&["send", "v@s1", "-o", full.to_str().unwrap()]);
    b.ok(&["receive", "w", "-i", full.to_str().unwrap()]);
    assert_eq!(b.json(&["get", "block_size", "w", "--json"])["block_size"], "65536");
    let w1 = b.mount("w@s1");
    let v1 = a.mount("v@s1");
    assert_same(&v1, &w1);
    assert_eq!(space(&a, "v@s1"), space(&b, "w@s1"));
    b.fsck_clean();

    // Changes of every kind, then an incremental stream through a pipe.
    fs::write(m.join("src/big2"), pattern(9, 100_000)).unwrap();
    let f = fs::OpenOptions::new().write(true).open(m.join("src/big")).unwrap();
    std::os::unix::fs::FileExt::write_at(&f, b"patched", 1 << 20).unwrap();
    drop(f);
    fs::remove_file(m.join("src/hard")).unwrap();
    fs::rename(m.join("src/deep/er/dup"), m.join("dup-moved")).unwrap();
    fs::set_permissions(m.join("empty"), fs::Permissions::from_mode(0o600)).unwrap();
    remove_xattr(&m.join("src/big"), "user.origin");
    set_xattr(&m.join("src/big"), "user.new", b"value");
    fs::OpenOptions::new().write(true).open(m.join("sparse")).unwrap().set_len(40 << 20).unwrap();
    fs::remove_dir(m.join("src/deep/er")).unwrap();
    a.ok(&["snapshot", "v@s2"]);
    let inc = a.tmp.path().join("s2.stream");
    a.ok(&["send", "v@s2", "--from", "v@s1", "-o", inc.to_str().unwrap()]);
    let (full_len, inc_len) = (fs::metadata(&full).unwrap().len(), fs::metadata(&inc).unwrap().len());
    assert!(inc_len * 10 < full_len, "incremental {inc_len} bytes vs full {full_len}");
    let out = sh(&format!(
        "{BIN} --store {} send v@s2 -i v@s1 | {BIN} --store {} receive w --json",
        a.store.display(),
        b.store.display()
    ));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let w2 = b.mount("w@s2");
    let v2 = a.mount("v@s2");
    assert_same(&v2, &w2);
    assert_same(&v1, &w1);
    let w = b.mount("w");
    assert_same(&v2, &w);
    assert_eq!(space(&a, "v@s2"), space(&b, "w@s2"));

    // What no longer applies is refused with a reason, and changes nothing.
    let err = b.fails(&["receive", "w", "-i", inc.to_str().unwrap()]);
    assert!(err.contains("already holds this stream's snapshot, as w@s2"), "{err}");
    let err = b.fails(&["receive", "w", "-i", full.to_str().unwrap()]);
    assert!(err.contains("already exists"), "{err}");
    // The receiver changed after its snapshot: refused unless --force.
    fs::write(w.join("local-change"), b"x").unwrap();
    fs::write(m.join("new-in-s3"), b"y").unwrap();
    assert!(!w.join("new-in-s3").exists());
    a.ok(&["snapshot", "v@s3"]);
    let s3 = a.tmp.path().join("s3.stream");
    a.ok(&["send", "v@s3", "-i", "v@s2", "-o", s3.to_str().unwrap()]);
    b.ok(&["snapshot", "w@local"]);
    let err = b.fails(&["receive", "w", "-i", s3.to_str().unwrap()]);
    assert!(err.contains("base is w@s2") && err.contains("newer snapshots") && err.contains("clonefs destroy w@local"), "{err}");
    // A rollback keeps newer snapshots: the advice is to destroy them, and that is enough.
    b.ok(&["destroy", "w@local"]);
    let err = b.fails(&["receive", "w", "-i", s3.to_str().unwrap()]);
    assert!(err.contains("changed since") && err.contains("--force"), "{err}");
    assert!(!b.ok(&["list", "-t", "snapshot", "-H", "-o", "name"]).contains("w@s3"));
    b.ok(&["receive", "w", "-i", s3.to_str().unwrap(), "--force"]);
    // The mounted volume now shows s3, without the local change, with the name it had
    // been asked for before (the kernel cached it as missing).
    assert!(!w.join("local-change").exists());
    assert!(w.join("new-in-s3").exists(), "a name looked up as missing stays hidden after receive");
    assert_same(&m, &w);
    b.fsck_clean();
    a.fsck_clean();
}

/// Frames of a stream file: (offset, length) of each after the magic.
fn frames(s: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 8;
    while at < s.len() {
        let len = u32::from_le_bytes(s[at + 1..at + 5].try_into().unwrap()) as usize;
        out.push((at, 13 + len));
        at += 13 + len;
    }
    out
}

#[test]
fn damaged_streams_are_refused_and_leave_nothing() {
    let mut a = Daemon::start();
    let mut b = Daemon::start();
    let m = a.volume("v");
    populate(&m);
    a.ok(&["snapshot", "v@s1"]);
    fs::write(m.join("more"), pattern(5, 300_000)).unwrap();
    a.ok(&["snapshot", "v@s2"]);
    let path = a.tmp.path().join("s.stream");
    a.ok(&["send", "v@s1", "-o", path.to_str().unwrap()]);
    let good = fs::read(&path).unwrap();
    let fr = frames(&good);
    let before = b.physical();
    let bad = a.tmp.path().join("bad.stream");
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut rnd = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    for _ in 0..4 {
        let at = 1 + rnd(good.len() - 1);
        cases.push((format!("cut at {at}"), good[..at].to_vec()));
    }
    for _ in 0..4 {
        let at = rnd(good.len());
        let mut s = good.clone();
        s[at] ^= 0x20;
        cases.push((format!("byte {at} flipped"), s));
    }
    // Two records swapped, and one dropped.
    let (x, y) = (fr[3], fr[4]);
    let mut s = good[..x.0].to_vec();
    s.extend_from_slice(&good[y.0..y.0 + y.1]);
    s.extend_from_slice(&good[x.0..x.0 + x.1]);
    s.extend_from_slice(&good[y.0 + y.1..]);
    cases.push(("records swapped".into(), s));
    let mut s = good[..x.0].to_vec();
    s.extend_from_slice(&good[x.0 + x.1..]);
    cases.push(("a record dropped".into(), s));
    cases.push(("not a stream".into(), pattern(3, 100_000)));
    cases.push(("empty".into(), Vec::new()));
    for (what, s) in &cases {
        fs::write(&bad, s).unwrap();
        let out = b.cli(&["receive", "r", "-i", bad.to_str().unwrap()]);
        assert!(!out.status.success(), "{what}: accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("stream") || err.contains("sender"), "{what}: {err}");
        assert!(b.fails(&["get", "name", "r"]).contains("no volume"), "{what}: a volume was left");
    }
    // A stream for a base the receiver does not have.
    a.ok(&["send", "v@s2", "-i", "v@s1", "-o", bad.to_str().unwrap()]);
    b.ok(&["create", "other"]);
    b.ok(&["snapshot", "other@s1"]);
    let err = b.fails(&["receive", "other", "-i", bad.to_str().unwrap()]);
    assert!(err.contains("which other does not hold"), "{err}");
    assert!(b.fails(&["receive", "nothing", "-i", bad.to_str().unwrap()]).contains("no volume"));
    b.ok(&["destroy", "other"]);
    b.ok(&["gc"]);
    assert_eq!(b.physical(), before, "blocks of failed receives were kept");
    b.fsck_clean();

    // Resumable: a cut stream keeps what came; the sender sends the rest from the token.
    fs::write(&bad, &good[..good.len() * 2 / 3]).unwrap();
    let err = b.fails(&["receive", "r", "-s", "-i", bad.to_str().unwrap()]);
    assert!(err.contains("send --resume"), "{err}");
    assert!(!b.ok(&["list", "-H", "-o", "name"]).lines().any(|l| l == "r" || l.contains('%')), "a receive in progress is listed");
    let token = b.json(&["get", "receive_resume_token", "r", "--json"])["receive_resume_token"].as_str().unwrap().to_string();
    // A fresh start is refused while the resumable receive waits.
    assert!(b.fails(&["receive", "r", "-i", path.to_str().unwrap()]).contains("send --resume"));
    let rest = a.tmp.path().join("rest.stream");
    a.ok(&["send", "--resume", &token, "-o", rest.to_str().unwrap()]);
    assert!(fs::metadata(&rest).unwrap().len() < good.len() as u64 * 2 / 3, "the rest resent everything");
    b.ok(&["receive", "r", "-i", rest.to_str().unwrap()]);
    let r = b.mount("r@s1");
    let v1 = a.mount("v@s1");
    assert_same(&v1, &r);
    b.fsck_clean();
    // And one dropped with --abort gives its space back.
    b.unmount(&r);
    b.ok(&["destroy", "r"]);
    fs::write(&bad, &good[..good.len() / 2]).unwrap();
    b.fails(&["receive", "r2", "-s", "-i", bad.to_str().unwrap()]);
    b.ok(&["receive", "r2", "--abort"]);
    b.ok(&["gc"]);
    assert_eq!(b.physical(), before);
}

#[test]
fn two_way_send_moves_only_the_blocks_the_receiver_lacks() {
    let mut a = Daemon::start();
    let mut b = Daemon::start();
    let m = a.volume("v");
    for i in 0..10 {
        fs::write(m.join(format!("f{i}")), pattern(100 + i, 2 << 20)).unwrap();
    }
    a.ok(&["snapshot", "v@s1"]);
    let bstore = b.store.clone();
    let to = |vol: &str| format!("{BIN} --store {} receive {vol} --serve", bstore.display());
    a.ok(&["send", "v@s1", "--to", &to("x")]);
    let after_first = b.physical();
    assert!(after_first >= 19 << 20, "the receiver holds {after_first} bytes");
    // A tenth changes; a full two-way send of the new snapshot carries about that tenth.
    fs::write(m.join("f3"), pattern(999, 2 << 20)).unwrap();
    a.ok(&["snapshot", "v@s2"]);
    let out = a.cli(&["send", "v@s2", "--to", &to("y")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err.lines().find(|l| l.starts_with("sent ")).unwrap_or_default();
    let blocks: u64 = line.split(": ").nth(1).and_then(|s| s.split(' ').next()).and_then(|n| n.parse().ok()).unwrap_or(u64::MAX);
    assert!(blocks <= 2 * 32 + 2, "{blocks} blocks travelled: {err}");
    let grown = b.physical() - after_first;
    assert!(grown <= 3 << 20, "the receiver grew by {grown} bytes");
    let y = b.mount("y@s2");
    let v2 = a.mount("v@s2");
    assert_same(&v2, &y);
    // Incremental two-way as well.
    a.ok(&["send", "v@s2", "--from", "v@s1", "--to", &to("x")]);
    let x = b.mount("x@s2");
    assert_same(&v2, &x);
    // A receiver that refuses: the sender says why and fails.
    let out = a.cli(&["send", "v@s2", "--to", &to("x")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("the receiver: volume \"x\" already exists"), "{err}");
    b.fsck_clean();
}

#[test]
fn a_receive_cut_by_kill_9_leaves_nothing_or_resumes() {
    let mut a = Daemon::start();
    let mut b = Daemon::start();
    let m = a.volume("v");
    for i in 0..4 {
        fs::write(m.join(format!("f{i}")), pattern(50 + i, 4 << 20)).unwrap();
    }
    a.ok(&["snapshot", "v@s1"]);
    let path = a.tmp.path().join("s.stream");
    a.ok(&["send", "v@s1", "-o", path.to_str().unwrap()]);
    let len = fs::metadata(&path).unwrap().len();
    let before = b.physical();
    for resumable in [false, true] {
        // Three quarters of the stream (past the first 8 MiB batch), then the writer stalls.
        let flag = if resumable { "-s" } else { "" };
        let mut recv = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "(head -c {} {}; sleep 5) | {BIN} --store {} receive k {flag}",
                len * 3 / 4,
                path.display(),
                b.store.display()
            ))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        // The receive has begun once its hidden volume's blocks are stored.
        while b.physical() < before + (4 << 20) {
            assert!(std::time::Instant::now() < deadline, "the receive did not start");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        b.kill9();
        let _ = recv.wait();
        b.restart();
        assert!(!b.ok(&["list", "-H", "-o", "name"]).lines().any(|l| l.starts_with('k')));
        if resumable {
            let token = b.json(&["get", "receive_resume_token", "k", "--json"])["receive_resume_token"].as_str().unwrap().to_string();
            let out = sh(&format!(
                "{BIN} --store {} send --resume {token} | {BIN} --store {} receive k",
                a.store.display(),
                b.store.display()
            ));
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let k = b.mount("k@s1");
            let v1 = a.mount("v@s1");
            assert_same(&v1, &k);
        } else {
            b.fails(&["get", "receive_resume_token", "k"]);
            b.ok(&["gc"]);
            assert_eq!(b.physical(), before, "an interrupted receive kept its blocks");
        }
        b.fsck_clean();
    }
}

/// `send --from ORIGIN@SNAP CLONE@SNAP` received under a new name makes that volume a
/// clone of the receiver's copy of the base (as `zfs receive` of a clone stream): same
/// tree, the base's blocks shared, the origin named; a missing base is refused.
#[test]
fn an_incremental_stream_into_a_new_name_makes_a_clone_of_its_base() {
    let mut a = Daemon::start();
    let mut b = Daemon::start();
    let m = a.volume("v");
    populate(&m);
    a.ok(&["snapshot", "v@base"]);
    a.ok(&["clone", "v@base", "c"]);
    let c = a.mount("c");
    fs::write(c.join("src/only-in-clone"), pattern(5, 1 << 20)).unwrap();
    fs::remove_file(c.join("src/big")).unwrap();
    set_xattr(&c.join("src/deep"), "user.dir", b"clone");
    a.ok(&["snapshot", "c@s1"]);
    let inc = a.tmp.path().join("c.stream");
    a.ok(&["send", "c@s1", "--from", "v@base", "-o", inc.to_str().unwrap()]);

    // Without the base on the receiver: refused, nothing left.
    let err = b.fails(&["receive", "c", "-i", inc.to_str().unwrap()]);
    assert!(err.contains("no volume named \"c\"") && err.contains("receive the base first"), "{err}");
    assert_eq!(b.ok(&["list", "-H", "-o", "name"]).trim(), "");

    let full = a.tmp.path().join("v.stream");
    a.ok(&["send", "v@base", "-o", full.to_str().unwrap()]);
    b.ok(&["receive", "w", "-i", full.to_str().unwrap()]);
    let physical = b.physical();
    b.ok(&["receive", "c", "-i", inc.to_str().unwrap()]);
    // Only the clone's new file came as new blocks.
    let grown = b.physical() - physical;
    assert!(grown <= (1 << 20) + (64 << 10), "store grew by {grown}");
    let listed = b.ok(&["list", "-H", "-o", "name,origin", "c"]);
    assert_eq!(listed.lines().collect::<Vec<_>>(), ["c\tw@base", "c@s1\t-"], "{listed}");
    let cs1 = a.mount("c@s1");
    let got = b.mount("c@s1");
    assert_same(&cs1, &got);
    assert_same(&cs1, &b.mount("c"));
    assert_eq!(space(&a, "c@s1"), space(&b, "c@s1"));
    // The origin stays as it was, and the clone writes on its own.
    assert_same(&a.mount("v@base"), &b.mount("w"));
    b.fsck_clean();
    // A second receive of the same stream finds the name taken by the clone it made.
    let err = b.fails(&["receive", "c", "-i", inc.to_str().unwrap()]);
    assert!(err.contains("already holds this stream's snapshot"), "{err}");
}

/// A snapshot (or its volume) cannot be destroyed while a send reads it: GC would free blocks
/// the stream has yet to send, and the send failed calling the store damaged. Once the send
/// ends, destroy works.
#[test]
fn a_snapshot_being_sent_is_not_destroyed() {
    let mut a = Daemon::start();
    let m = a.volume("v");
    fs::write(m.join("data"), pattern(3, 24 << 20)).unwrap();
    a.ok(&["snapshot", "v@s"]);
    a.ok(&["snapshot", "v@base"]);
    fs::write(m.join("more"), pattern(4, 8 << 20)).unwrap();
    a.ok(&["snapshot", "v@next"]);
    fs::remove_file(m.join("data")).unwrap();
    a.unmount(&m);
    let out = a.tmp.path().join("s.stream");
    // The reader sleeps first, so the send blocks with most of the stream unsent.
    let mut send = Command::new("sh")
        .arg("-c")
        .arg(format!("{BIN} --store {} send v@s | (sleep 4; cat > {})", a.store.display(), out.display()))
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let err = a.fails(&["destroy", "v@s"]);
    assert!(err.contains("v@s is being read"), "{err}");
    let err = a.fails(&["destroy", "v"]);
    assert!(err.contains("being read"), "{err}");
    // Other snapshots of the volume are not held.
    a.ok(&["destroy", "v@next"]);
    assert!(send.wait().unwrap().success());
    a.ok(&["destroy", "v@s"]);
    a.ok(&["gc"]);
    let mut b = Daemon::start();
    b.ok(&["receive", "w", "-i", out.to_str().unwrap()]);
    let w = b.mount("w@s");
    assert!(fs::read(w.join("data")).unwrap() == pattern(3, 24 << 20));
    a.fsck_clean();
}
