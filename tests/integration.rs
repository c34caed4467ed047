//! Integration tests: a real daemon on a temporary store, real volumes mounted through the
//! kernel, used with std::fs, libc and real programs.

mod util;

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use util::{pattern, Daemon};

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

#[test]
fn files_directories_links_and_renames() {
    let mut d = Daemon::start();
    let m = d.volume("v");
    fs::write(m.join("a"), b"hello").unwrap();
    assert_eq!(fs::read(m.join("a")).unwrap(), b"hello");
    fs::create_dir_all(m.join("d1/d2")).unwrap();
    assert_eq!(fs::metadata(m.join("d1")).unwrap().nlink(), 3);
    assert_eq!(fs::metadata(&m).unwrap().nlink(), 3);
    // Hard links share the inode and count.
    fs::hard_link(m.join("a"), m.join("d1/b")).unwrap();
    let (ma, mb) = (fs::metadata(m.join("a")).unwrap(), fs::metadata(m.join("d1/b")).unwrap());
    assert_eq!(ma.ino(), mb.ino());
    assert_eq!(ma.nlink(), 2);
    fs::remove_file(m.join("a")).unwrap();
    assert_eq!(fs::metadata(m.join("d1/b")).unwrap().nlink(), 1);
    assert_eq!(fs::read(m.join("d1/b")).unwrap(), b"hello");
    // Symlinks.
    std::os::unix::fs::symlink("d1/b", m.join("s")).unwrap();
    assert_eq!(fs::read_link(m.join("s")).unwrap().to_str().unwrap(), "d1/b");
    assert_eq!(fs::read(m.join("s")).unwrap(), b"hello");
    assert!(fs::symlink_metadata(m.join("s")).unwrap().file_type().is_symlink());
    // rename over a file, of a directory across parents (nlink of both parents).
    fs::write(m.join("x"), b"x").unwrap();
    fs::write(m.join("y"), b"y").unwrap();
    fs::rename(m.join("x"), m.join("y")).unwrap();
    assert_eq!(fs::read(m.join("y")).unwrap(), b"x");
    assert!(!m.join("x").exists());
    fs::rename(m.join("d1/d2"), m.join("d2")).unwrap();
    assert_eq!(fs::metadata(m.join("d1")).unwrap().nlink(), 2);
    assert_eq!(fs::metadata(&m).unwrap().nlink(), 4);
    // rmdir of a non-empty directory fails; of an empty one works.
    assert_eq!(fs::remove_dir(m.join("d1")).unwrap_err().raw_os_error(), Some(libc::ENOTEMPTY));
    fs::remove_dir(m.join("d2")).unwrap();
    // renameat2 flags.
    fs::write(m.join("p"), b"p").unwrap();
    fs::write(m.join("q"), b"q").unwrap();
    let (p, q) = (cpath(&m.join("p")), cpath(&m.join("q")));
    let r = unsafe { libc::renameat2(libc::AT_FDCWD, p.as_ptr(), libc::AT_FDCWD, q.as_ptr(), libc::RENAME_NOREPLACE) };
    assert_eq!((r, errno()), (-1, libc::EEXIST));
    let r = unsafe { libc::renameat2(libc::AT_FDCWD, p.as_ptr(), libc::AT_FDCWD, q.as_ptr(), libc::RENAME_EXCHANGE) };
    assert_eq!(r, 0);
    assert_eq!(fs::read(m.join("p")).unwrap(), b"q");
    assert_eq!(fs::read(m.join("q")).unwrap(), b"p");
    // readdir sees exactly the names.
    let mut names: Vec<String> = fs::read_dir(&m).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["d1", "p", "q", "s", "y"]);
    // A big directory lists completely.
    fs::create_dir(m.join("many")).unwrap();
    for i in 0..2000 {
        File::create(m.join(format!("many/f{i}"))).unwrap();
    }
    assert_eq!(fs::read_dir(m.join("many")).unwrap().count(), 2000);
    // Everything is still there after a remount.
    d.unmount(&m.clone());
    let m = d.mount("v");
    assert_eq!(fs::read(m.join("s")).unwrap(), b"hello");
    assert_eq!(fs::read_dir(m.join("many")).unwrap().count(), 2000);
    d.fsck_clean();
}

#[test]
fn attributes_times_permissions_and_xattrs() {
    let mut d = Daemon::start();
    let m = d.volume("v");
    let f = m.join("f");
    fs::write(&f, b"data").unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o4751)).unwrap();
    assert_eq!(fs::metadata(&f).unwrap().mode() & 0o7777, 0o4751);
    std::os::unix::fs::chown(&f, Some(1234), Some(5678)).unwrap();
    let md = fs::metadata(&f).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 5678));
    // Nanosecond times.
    let t = std::time::UNIX_EPOCH + std::time::Duration::new(1_600_000_000, 123_456_789);
    let file = File::options().write(true).open(&f).unwrap();
    file.set_times(fs::FileTimes::new().set_accessed(t).set_modified(t)).unwrap();
    drop(file);
    let md = fs::metadata(&f).unwrap();
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_600_000_000, 123_456_789));
    assert_eq!((md.atime(), md.atime_nsec()), (1_600_000_000, 123_456_789));
    // xattrs.
    let c = cpath(&f);
    let name = CString::new("user.test").unwrap();
    let r = unsafe { libc::setxattr(c.as_ptr(), name.as_ptr(), b"value".as_ptr().cast(), 5, 0) };
    assert_eq!(r, 0);
    let mut buf = [0u8; 64];
    let n = unsafe { libc::getxattr(c.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(&buf[..n as usize], b"value");
    let n = unsafe { libc::listxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(&buf[..n as usize], b"user.test\0");
    let r = unsafe { libc::setxattr(c.as_ptr(), name.as_ptr(), b"v".as_ptr().cast(), 1, libc::XATTR_CREATE) };
    assert_eq!((r, errno()), (-1, libc::EEXIST));
    assert_eq!(unsafe { libc::removexattr(c.as_ptr(), name.as_ptr()) }, 0);
    let n = unsafe { libc::getxattr(c.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!((n, errno()), (-1, libc::ENODATA));
    // Namespaces as ext4 takes them; `trusted.` names are listed to root only.
    for (bad, want) in [("bogus.x", libc::EOPNOTSUPP), ("system.foo", libc::EOPNOTSUPP), ("user.", libc::EINVAL)] {
        let n = CString::new(bad).unwrap();
        let r = unsafe { libc::setxattr(c.as_ptr(), n.as_ptr(), b"v".as_ptr().cast(), 1, 0) };
        assert_eq!((r, errno()), (-1, want), "setxattr {bad}");
    }
    let trusted = CString::new("trusted.t").unwrap();
    assert_eq!(unsafe { libc::setxattr(c.as_ptr(), trusted.as_ptr(), b"v".as_ptr().cast(), 1, 0) }, 0);
    fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
    let listed = |who: &[&str]| {
        let out = Command::new("setpriv").args(who).args(["getfattr", "-m", "-", "--absolute-names"]).arg(&f).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(listed(&["--reuid=0"]).contains("trusted.t"), "root does not see trusted.t");
    assert!(!listed(&["--reuid=65534", "--regid=65534", "--clear-groups"]).contains("trusted"), "trusted.t listed to nobody");
    assert_eq!(unsafe { libc::removexattr(c.as_ptr(), trusted.as_ptr()) }, 0);
    // statfs shows real figures.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(cpath(&m).as_ptr(), &mut s) }, 0);
    assert!(s.f_blocks > 0 && s.f_bavail > 0 && s.f_bavail <= s.f_blocks);
    // Permission checks by the kernel: a non-owner cannot write a 0644 file.
    fs::write(m.join("private"), b"x").unwrap();
    fs::set_permissions(m.join("private"), fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c"])
        .arg(format!("echo y > {}", m.join("private").display()))
        .output()
        .unwrap();
    assert!(!out.status.success(), "nobody could write a root 0644 file");
    assert_eq!(fs::read(m.join("private")).unwrap(), b"x");
    set_id_bits_follow_linux(&m);
    d.fsck_clean();
}

/// Writes, truncates and chowns clear set-user-ID and set-group-ID as on ext4 (the daemon
/// does it: the mount asks the kernel for FUSE_HANDLE_KILLPRIV_V2).
fn set_id_bits_follow_linux(m: &Path) {
    let as_nobody = |cmd: String| {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c"])
            .arg(&cmd)
            .output()
            .unwrap();
        assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let mode = |n: &str| fs::metadata(m.join(n)).unwrap().permissions().mode() & 0o7777;
    for (n, perm) in [("w", 0o6777), ("root", 0o6777), ("nogx", 0o2767), ("trunc", 0o6777), ("chown", 0o6777), ("dir", 0o3777), ("falloc", 0o6777)] {
        if n == "dir" {
            fs::create_dir(m.join(n)).unwrap();
        } else {
            fs::write(m.join(n), b"x").unwrap();
        }
        fs::set_permissions(m.join(n), fs::Permissions::from_mode(perm)).unwrap();
    }
    as_nobody(format!("echo y >> {}", m.join("w").display()));
    assert_eq!(mode("w"), 0o777, "a write by nobody keeps set-ID bits");
    assert_eq!(fs::read(m.join("w")).unwrap(), b"xy\n");
    OpenOptions::new().append(true).open(m.join("root")).unwrap().write_all(b"y").unwrap();
    assert_eq!(mode("root"), 0o6777, "root's write (CAP_FSETID) cleared set-ID bits");
    as_nobody(format!("echo y >> {}", m.join("nogx").display()));
    assert_eq!(mode("nogx"), 0o2767, "set-group-ID without group execute is kept");
    as_nobody(format!("truncate -s 0 {}", m.join("trunc").display()));
    assert_eq!(mode("trunc"), 0o777, "a truncate by nobody keeps set-ID bits");
    std::os::unix::fs::chown(m.join("chown"), Some(65534), None).unwrap();
    assert_eq!(mode("chown"), 0o777, "chown keeps set-ID bits");
    std::os::unix::fs::chown(m.join("dir"), Some(65534), None).unwrap();
    assert_eq!(mode("dir"), 0o3777, "chown of a directory cleared its set-ID bits");
    as_nobody(format!("fallocate -l 65536 {}", m.join("falloc").display()));
    assert_eq!(mode("falloc"), 0o777, "a fallocate by nobody keeps set-ID bits");
    // A file made with S_ISGID in a set-group-ID directory of a group its creator is not
    // in gets the directory's group, without the bit.
    fs::create_dir(m.join("sgid")).unwrap();
    fs::set_permissions(m.join("sgid"), fs::Permissions::from_mode(0o2777)).unwrap();
    let f = m.join("sgid/f");
    as_nobody(format!("umask 0; perl -MFcntl -e 'sysopen(F, $ARGV[0], O_CREAT|O_WRONLY, 02755) or die $!' {}", f.display()));
    assert_eq!((mode("sgid/f"), fs::metadata(&f).unwrap().gid()), (0o755, 0), "a non-member's new file in a set-group-ID directory");
    as_nobody(format!("mkdir -m 2755 {}", m.join("sgid/d").display()));
    assert_eq!(mode("sgid/d") & 0o2000, 0o2000, "a new directory in a set-group-ID directory inherits the bit");
}

#[test]
fn data_truncate_sparse_punch_append_mmap_locks() {
    let mut d = Daemon::start();
    let m = d.volume("v");
    data_ops(&m, false);
    d.fsck_clean();
}

#[test]
fn data_ops_with_the_writeback_cache() {
    // The same operations with the kernel caching writes (`mount --writeback`).
    let mut d = Daemon::start();
    d.ok(&["create", "v", "--block-size", "64K"]);
    let m = d.mount_with("v", &["--writeback"]);
    data_ops(&m, true);
    d.fsck_clean();
}

fn data_ops(m: &Path, writeback: bool) {
    let p = m.join("f");
    // Random writes against an in-memory model, unaligned across block boundaries.
    let mut model = vec![0u8; 0];
    let f = OpenOptions::new().create(true).read(true).write(true).open(&p).unwrap();
    for i in 0..300u64 {
        let off = (pattern(i, 8).iter().map(|b| *b as u64).sum::<u64>() * 1531) % (1 << 20);
        let len = 1 + (i * 7919) % 150_000;
        let data = pattern(i + 1000, len as usize);
        f.write_all_at(&data, off).unwrap();
        let end = (off + len) as usize;
        if model.len() < end {
            model.resize(end, 0);
        }
        model[off as usize..end].copy_from_slice(&data);
    }
    let mut back = Vec::new();
    File::open(&p).unwrap().read_to_end(&mut back).unwrap();
    assert!(back == model, "contents differ from the model");
    // Truncate down and up: the tail reads as zeros.
    f.set_len(100_000).unwrap();
    f.set_len(300_000).unwrap();
    let mut back = vec![0u8; 300_000];
    f.read_exact_at(&mut back, 0).unwrap();
    assert_eq!(&back[..100_000], &model[..100_000]);
    assert!(back[100_000..].iter().all(|b| *b == 0));
    f.sync_all().unwrap();
    // Sparse file: 1 GiB apparent, one block stored.
    let s = OpenOptions::new().create(true).read(true).write(true).open(m.join("sparse")).unwrap();
    s.write_all_at(b"end", (1 << 30) - 3).unwrap();
    s.sync_all().unwrap();
    let md = fs::metadata(m.join("sparse")).unwrap();
    assert_eq!(md.len(), 1 << 30);
    assert!(md.blocks() * 512 <= 64 << 10, "sparse file uses {} blocks", md.blocks());
    let mut buf = [1u8; 4096];
    s.read_exact_at(&mut buf, 1 << 29).unwrap();
    assert!(buf.iter().all(|b| *b == 0));
    // SEEK_DATA / SEEK_HOLE.
    let fd = std::os::fd::AsRawFd::as_raw_fd(&s);
    // A writeback mount leaves them to the kernel, which sees the whole file as data.
    let (data, hole) = if writeback { (0, 1 << 30) } else { ((1 << 30) - (64 << 10), 0) };
    assert_eq!(unsafe { libc::lseek(fd, 0, libc::SEEK_DATA) }, data);
    assert_eq!(unsafe { libc::lseek(fd, 0, libc::SEEK_HOLE) }, hole);
    // Punch a hole: the range reads zeros and st_blocks drops.
    let g = OpenOptions::new().create(true).read(true).write(true).open(m.join("punch")).unwrap();
    g.write_all_at(&pattern(5, 1 << 20), 0).unwrap();
    g.sync_all().unwrap();
    if writeback {
        // Cached writes do not refresh st_blocks: the kernel keeps what it had for the
        // attribute TTL (1 s).
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let before = fs::metadata(m.join("punch")).unwrap().blocks();
    let r = unsafe {
        libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(&g), libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, 100_000, 500_000)
    };
    assert_eq!(r, 0);
    let mut back = vec![0u8; 1 << 20];
    g.read_exact_at(&mut back, 0).unwrap();
    let want = pattern(5, 1 << 20);
    assert_eq!(&back[..100_000], &want[..100_000]);
    assert!(back[100_000..600_000].iter().all(|b| *b == 0));
    assert_eq!(&back[600_000..], &want[600_000..]);
    assert_eq!(fs::metadata(m.join("punch")).unwrap().len(), 1 << 20);
    assert!(fs::metadata(m.join("punch")).unwrap().blocks() < before);
    // posix_fallocate extends the size.
    assert_eq!(unsafe { libc::posix_fallocate(std::os::fd::AsRawFd::as_raw_fd(&g), 0, 3 << 20) }, 0);
    assert_eq!(fs::metadata(m.join("punch")).unwrap().len(), 3 << 20);
    // O_APPEND from two handles.
    let mut a1 = OpenOptions::new().create(true).append(true).open(m.join("log")).unwrap();
    let mut a2 = OpenOptions::new().append(true).open(m.join("log")).unwrap();
    a1.write_all(b"one\n").unwrap();
    a2.write_all(b"two\n").unwrap();
    a1.write_all(b"three\n").unwrap();
    assert_eq!(fs::read(m.join("log")).unwrap(), b"one\ntwo\nthree\n");
    // mmap write then read through read(2).
    let h = OpenOptions::new().create(true).read(true).write(true).open(m.join("mm")).unwrap();
    h.set_len(8192).unwrap();
    unsafe {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&h);
        let ptr = libc::mmap(std::ptr::null_mut(), 8192, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0);
        assert_ne!(ptr, libc::MAP_FAILED);
        std::ptr::copy_nonoverlapping(b"mapped!".as_ptr(), (ptr as *mut u8).add(5000), 7);
        assert_eq!(libc::msync(ptr, 8192, libc::MS_SYNC), 0);
        libc::munmap(ptr, 8192);
    }
    let mut b7 = [0u8; 7];
    File::open(m.join("mm")).unwrap().read_exact_at(&mut b7, 5000).unwrap();
    assert_eq!(&b7, b"mapped!");
    // flock and POSIX locks conflict across open files.
    let l1 = File::open(m.join("log")).unwrap();
    let l2 = File::open(m.join("log")).unwrap();
    unsafe {
        assert_eq!(libc::flock(std::os::fd::AsRawFd::as_raw_fd(&l1), libc::LOCK_EX | libc::LOCK_NB), 0);
        assert_eq!(libc::flock(std::os::fd::AsRawFd::as_raw_fd(&l2), libc::LOCK_EX | libc::LOCK_NB), -1);
    }
    let child = Command::new("flock").args(["-n", "-x"]).arg(m.join("log")).arg("true").status().unwrap();
    assert!(!child.success(), "flock(1) got a lock that is held");
    // Unlinked while open: still readable, space freed at close.
    let mut o = File::create(m.join("tmp")).unwrap();
    o.write_all(&pattern(9, 300_000)).unwrap();
    o.sync_all().unwrap();
    fs::remove_file(m.join("tmp")).unwrap();
    let mut back = Vec::new();
    o.seek(SeekFrom::Start(0)).unwrap();
    File::open(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&o))).unwrap().read_to_end(&mut back).unwrap();
    assert_eq!(back, pattern(9, 300_000));
    drop(o);
    drop((f, s, g, h, l1, l2, a1, a2));
}

#[test]
fn writeback_mounts_keep_times_snapshots_and_fsynced_data() {
    let mut d = Daemon::start();
    d.ok(&["create", "v"]);
    let m = d.mount_with("v", &["--writeback"]);
    // Partial writes through a write-only handle: the kernel reads the rest of each page.
    fs::write(m.join("f"), pattern(1, 100_000)).unwrap();
    let mut want = pattern(1, 100_000);
    set_id_bits_follow_linux(&m);
    let f = OpenOptions::new().write(true).open(m.join("f")).unwrap();
    for (i, off) in [5u64, 4095, 40_000, 99_990].into_iter().enumerate() {
        let data = pattern(10 + i as u64, 7);
        f.write_all_at(&data, off).unwrap();
        want[off as usize..off as usize + 7].copy_from_slice(&data);
    }
    // Size and mtime move with cached writes.
    let before = fs::metadata(m.join("f")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    f.write_all_at(b"tail", 200_000).unwrap();
    want.resize(200_004, 0);
    want[200_000..].copy_from_slice(b"tail");
    let after = fs::metadata(m.join("f")).unwrap();
    assert_eq!(after.len(), 200_004);
    assert!(after.mtime_nsec() != before.mtime_nsec() || after.mtime() != before.mtime());
    // Files written and removed, open or not: the kernel may still write back their times
    // after the daemon dropped them, and that must not fail the next sync.
    for i in 0..20 {
        let p = m.join(format!("gone{i}"));
        let mut h = File::create(&p).unwrap();
        h.write_all(&pattern(i, 5000)).unwrap();
        if i % 2 == 0 {
            fs::remove_file(&p).unwrap();
            h.write_all(b"more").unwrap();
            drop(h);
        } else {
            drop(h);
            fs::remove_file(&p).unwrap();
        }
    }
    // A snapshot holds every write that returned before it was taken, though not fsync'd.
    d.ok(&["snapshot", "v@s"]);
    assert_eq!(fs::read(m.join(".snapshots/s/f")).unwrap(), want);
    f.sync_all().unwrap();
    drop(f);
    // Times survive the round trip to the daemon.
    let mtime = fs::metadata(m.join("f")).unwrap().mtime();
    // fsync'd data survives kill -9 of the daemon.
    let g = File::create(m.join("g")).unwrap();
    (&g).write_all(&pattern(3, 300_000)).unwrap();
    g.sync_all().unwrap();
    d.kill9();
    drop(g);
    d.restart();
    let m = d.mount_with("v", &["--writeback"]);
    assert_eq!(fs::read(m.join("g")).unwrap(), pattern(3, 300_000));
    assert_eq!(fs::read(m.join("f")).unwrap(), want);
    assert_eq!(fs::metadata(m.join("f")).unwrap().mtime(), mtime);
    d.fsck_clean();
}

#[test]
fn rewrites_between_flushes_read_back_exactly() {
    // Blocks rewritten, flushed among many others, then read: no stale cached copy may win.
    let mut d = Daemon::start();
    let m = d.volume("v");
    let p = m.join("f");
    let f = OpenOptions::new().create(true).read(true).write(true).open(&p).unwrap();
    let bs = 64 << 10;
    let mut model = vec![0u8; 40 * bs];
    f.set_len(model.len() as u64).unwrap();
    for round in 0..12u64 {
        for k in 0..25u64 {
            let blk = ((round * 7 + k * 13) % 40) as usize;
            let off = blk * bs + ((k as usize * 977) % (bs - 5000));
            let data = pattern(round * 100 + k, 4096);
            f.write_all_at(&data, off as u64).unwrap();
            model[off..off + 4096].copy_from_slice(&data);
        }
        // Drop the kernel's pages so reads come from the daemon.
        f.sync_all().unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
        assert_eq!(unsafe { libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED) }, 0);
        let mut back = vec![0u8; model.len()];
        f.read_exact_at(&mut back, 0).unwrap();
        assert!(back == model, "round {round}: contents differ");
    }
    d.fsck_clean();
}

#[test]
fn volumes_are_isolated_and_dedup_across_them() {
    let mut d = Daemon::start();
    let a = d.volume("a");
    let b = d.volume("b");
    let data = pattern(42, 4 << 20);
    fs::write(a.join("same"), &data).unwrap();
    fs::write(b.join("same"), &data).unwrap();
    fs::write(a.join("only-a"), b"a").unwrap();
    assert!(!b.join("only-a").exists());
    fs::write(b.join("same"), b"changed in b").unwrap();
    assert_eq!(fs::read(a.join("same")).unwrap(), data);
    fs::write(b.join("same"), &data).unwrap();
    d.ok(&["unmount", a.to_str().unwrap()]);
    d.mounts.retain(|m| m != &a);
    let st = d.json(&["status", "--json"]);
    let physical = st["physical"].as_u64().unwrap();
    assert!(physical < (4 << 20) + (1 << 20), "physical {physical}: identical data stored twice");
    assert!(st["dedup_ratio"].as_f64().unwrap() > 1.9, "{st}");
    let list = d.json(&["list", "--json"]);
    let b_info = list.as_array().unwrap().iter().find(|v| v["name"] == "b").unwrap();
    let referenced = b_info["referenced"].as_u64().unwrap();
    assert!(referenced > (4 << 20) - 1024 && referenced <= 4 << 20, "{b_info}");
    assert_eq!(b_info["unique"].as_u64().unwrap(), 0, "all of b is shared with a");
    d.fsck_clean();
}

#[test]
fn space_is_reclaimed_after_delete_and_destroy() {
    let mut d = Daemon::start();
    let m = d.volume("v");
    for i in 0..8 {
        fs::write(m.join(format!("f{i}")), pattern(i, 4 << 20)).unwrap();
    }
    File::open(m.join("f0")).unwrap().sync_all().unwrap();
    d.ok(&["compact"]);
    let full = d.physical();
    let disk_full = d.json(&["status", "--json"])["disk_bytes"].as_u64().unwrap();
    assert!(full >= (32 << 20) - 4096, "physical {full}");
    for i in 0..8 {
        fs::remove_file(m.join(format!("f{i}"))).unwrap();
    }
    assert_eq!(d.physical(), 0);
    d.ok(&["compact"]);
    let disk_empty = d.json(&["status", "--json"])["disk_bytes"].as_u64().unwrap();
    assert!(disk_empty < disk_full / 4, "disk {disk_full} -> {disk_empty}");
    // Destroy frees what a volume held.
    fs::write(m.join("g"), pattern(99, 2 << 20)).unwrap();
    d.unmount(&m);
    assert!(d.physical() >= (2 << 20) - 4096);
    d.ok(&["destroy", "v"]);
    assert_eq!(d.physical(), 0);
    d.fsck_clean();
}

#[test]
fn small_files_store_their_bytes_not_whole_blocks() {
    let mut d = Daemon::start();
    d.ok(&["create", "dflt"]);
    let m = d.mount("dflt");
    let list = d.json(&["list", "--json"]);
    assert_eq!(list[0]["block_size"].as_u64().unwrap(), 16 << 10, "default block size");
    for i in 0..200u64 {
        fs::write(m.join(format!("f{i}")), pattern(i, 100)).unwrap();
    }
    let physical = d.physical();
    assert!(physical <= 200 * 100, "200 files of 100 bytes take {physical} bytes");
    assert_eq!(fs::read(m.join("f7")).unwrap(), pattern(7, 100));
    // Growing a file reads the zeros past its old end.
    let f = OpenOptions::new().write(true).open(m.join("f7")).unwrap();
    f.write_all_at(b"z", 10_000).unwrap();
    drop(f);
    let back = fs::read(m.join("f7")).unwrap();
    assert_eq!(&back[..100], &pattern(7, 100)[..]);
    assert!(back[100..10_000].iter().all(|b| *b == 0) && back[10_000] == b'z');
    d.fsck_clean();
}

#[test]
fn the_memory_budget_is_settable_and_shown() {
    let d = Daemon::start();
    let st = d.json(&["status", "--json"]);
    assert_eq!(st["memory_budget"].as_u64(), Some(256 << 20), "{st}");
    let mut d = Daemon::start_args(&["--memory", "96M"]);
    let m = d.volume("v");
    let data = pattern(3, 40 << 20);
    fs::write(m.join("f"), &data).unwrap();
    assert!(fs::read(m.join("f")).unwrap() == data);
    let st = d.json(&["status", "--json"]);
    assert_eq!(st["memory_budget"].as_u64(), Some(96 << 20), "{st}");
    let rss = st["resident"].as_u64().unwrap();
    assert!(rss > 1 << 20 && rss < 512 << 20, "resident {rss}");
    d.fsck_clean();
}

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let mut d = Daemon::start();
    let m = d.volume("good");
    let before = d.ok(&["list", "--json"]);
    let long = "x".repeat(256);
    let missing = d.tmp.path().join("nope");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["mount", "ghost", "/tmp"], "no volume"),
        (vec!["destroy", "ghost"], "no volume"),
        (vec!["rename", "ghost", "other"], "no volume"),
        (vec!["create", "a/b"], "'/'"),
        (vec!["create", ""], "empty"),
        (vec!["create", &long], "255"),
        (vec!["create", "good"], "already exists"),
        (vec!["create", "x", "--block-size", "3K"], "block size"),
        (vec!["create", "x", "--block-size", "2M"], "block size"),
        (vec!["create", "x", "--block-size", "2K"], "block size"),
        (vec!["mount", "good", missing.to_str().unwrap()], "does not exist"),
        (vec!["mount", "good", "/tmp"], "already mounted"),
        (vec!["destroy", "good"], "mounted"),
        (vec!["rename", "good", "bad/name"], "'/'"),
        (vec!["unmount", "/tmp"], "not a clonefs mountpoint"),
        (vec!["daemon", "--memory", "16M"], "too small"),
        (vec!["daemon", "--memory", "lots"], "memory budget"),
    ];
    for (args, want) in cases {
        let err = d.fails(&args);
        assert!(err.contains(want), "clonefs {args:?}: {err:?} should mention {want:?}");
        assert_eq!(d.ok(&["list", "--json"]), before, "clonefs {args:?} changed something");
    }
    // A second mount on the same directory is refused.
    d.ok(&["create", "other"]);
    let err = d.fails(&["mount", "other", m.to_str().unwrap()]);
    assert!(err.contains("already the mountpoint"), "{err}");
    d.ok(&["destroy", "other"]);
    // NUL cannot pass through argv; send it through the socket as a client could.
    let mut s = std::os::unix::net::UnixStream::connect(d.store.join("clonefs.sock")).unwrap();
    s.write_all(b"{\"op\":\"create\",\"name\":\"a\\u0000b\",\"block_size\":65536,\"uid\":0,\"gid\":0}\n").unwrap();
    let mut reply = String::new();
    std::io::BufReader::new(&s).read_to_string(&mut reply).unwrap();
    assert!(reply.contains("\"ok\":false") && reply.contains("invalid name"), "{reply}");
    assert_eq!(d.ok(&["list", "--json"]), before);
    // A file name over 255 bytes inside a volume.
    let e = File::create(m.join("n".repeat(256))).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENAMETOOLONG));
}

#[test]
fn without_a_daemon_commands_say_so() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("s");
    let out = util::run_timeout(Command::new(util::BIN).args(["list", "--store"]).arg(&store), 30);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no clonefs daemon is running") && err.lines().count() == 1, "{err}");
    // init refuses a non-empty directory.
    fs::write(tmp.path().join("file"), b"x").unwrap();
    let out = util::run_timeout(Command::new(util::BIN).args(["init", "--store"]).arg(tmp.path()), 30);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
}

#[test]
fn fsynced_data_survives_kill_9() {
    let mut d = Daemon::start();
    let m = d.volume("v");
    let mut synced = Vec::new();
    for i in 0..20u64 {
        let data = pattern(i, 10_000 + (i as usize) * 37_000);
        let mut f = File::create(m.join(format!("synced{i}"))).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
        synced.push(data);
    }
    // Overwrite part of a synced file and fdatasync it.
    let f = OpenOptions::new().write(true).open(m.join("synced3")).unwrap();
    f.write_all_at(b"OVERWRITTEN", 5).unwrap();
    f.sync_data().unwrap();
    synced[3][5..16].copy_from_slice(b"OVERWRITTEN");
    // Keep writing (unsynced) from another thread while the daemon dies.
    let mp = m.clone();
    let writer = std::thread::spawn(move || {
        for i in 0..10_000u64 {
            if fs::write(mp.join(format!("unsynced{}", i % 50)), pattern(i, 70_000)).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    d.kill9();
    let _ = writer.join();
    d.restart();
    let m = d.mount("v");
    for (i, data) in synced.iter().enumerate() {
        assert!(fs::read(m.join(format!("synced{i}"))).unwrap() == *data, "synced{i} lost data");
    }
    d.fsck_clean();
}

#[test]
fn copy_file_range_shares_blocks() {
    let mut d = Daemon::start();
    let m = d.volume("v");
    let data = pattern(3, 8 << 20);
    fs::write(m.join("src"), &data).unwrap();
    let before = d.physical();
    let (s, t) = (File::open(m.join("src")).unwrap(), File::create(m.join("dst")).unwrap());
    let mut copied = 0i64;
    while copied < data.len() as i64 {
        let n = unsafe {
            libc::copy_file_range(
                std::os::fd::AsRawFd::as_raw_fd(&s),
                std::ptr::null_mut(),
                std::os::fd::AsRawFd::as_raw_fd(&t),
                std::ptr::null_mut(),
                data.len() - copied as usize,
                0,
            )
        };
        assert!(n > 0, "copy_file_range: {}", std::io::Error::last_os_error());
        copied += n as i64;
    }
    drop(t);
    assert_eq!(fs::read(m.join("dst")).unwrap(), data);
    assert_eq!(d.physical(), before, "copy stored new blocks instead of sharing");
    // Changing the copy leaves the source alone.
    let t = OpenOptions::new().write(true).open(m.join("dst")).unwrap();
    t.write_all_at(b"zz", 1000).unwrap();
    drop(t);
    assert_eq!(fs::read(m.join("src")).unwrap(), data);
    d.fsck_clean();
}

fn need(program: &str) {
    let ok = Command::new("sh").arg("-c").arg(format!("command -v {program}")).output().map(|o| o.status.success()).unwrap_or(false);
    assert!(ok, "{program} is not installed: run scripts/test.sh, which installs it");
}

#[test]
fn git_repository_passes_fsck() {
    need("git");
    let mut d = Daemon::start();
    let m = d.volume("v");
    let repo = m.join("repo");
    fs::create_dir(&repo).unwrap();
    for i in 0..200 {
        let dir = repo.join(format!("dir{}", i % 10));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("file{i}.txt")), pattern(i, 1000 + i as usize * 50)).unwrap();
    }
    let git = |args: &[&str]| {
        let out = util::run_timeout(
            Command::new("git").args(["-c", "user.name=t", "-c", "user.email=t@t", "-c", "safe.directory=*"]).args(args).current_dir(&repo),
            300,
        );
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-qm", "one"]);
    fs::write(repo.join("dir1/file1.txt"), b"changed").unwrap();
    git(&["commit", "-qam", "two"]);
    git(&["gc", "-q"]);
    git(&["fsck", "--full", "--strict"]);
    d.fsck_clean();
}

#[test]
fn sqlite_database_passes_integrity_check() {
    need("sqlite3");
    let mut d = Daemon::start();
    let m = d.volume("v");
    let db = m.join("t.db");
    let sql = "PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, n INTEGER); \
               WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 100000) \
               INSERT INTO t SELECT x, hex(randomblob(20)), x*7 FROM c; CREATE INDEX tn ON t(n); \
               DELETE FROM t WHERE id % 3 = 0; PRAGMA wal_checkpoint(TRUNCATE);";
    let out = util::run_timeout(Command::new("sqlite3").arg(&db).arg(sql), 600);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = util::run_timeout(Command::new("sqlite3").arg(&db).arg("PRAGMA integrity_check; SELECT count(*) FROM t;"), 600);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok\n66667");
    d.fsck_clean();
}

#[path = "cases/snapshots.rs"]
mod snapshots;

#[path = "cases/lineage_state.rs"]
mod lineage_state;

#[path = "cases/big_files.rs"]
mod big_files;

#[path = "cases/full_disk.rs"]
mod full_disk;

#[path = "cases/scrub.rs"]
mod scrub;

#[path = "cases/crash.rs"]
mod crash;

#[path = "cases/posix.rs"]
mod posix;

#[path = "cases/quota.rs"]
mod quota;

#[path = "cases/segments.rs"]
mod segments;

#[path = "cases/autosnap.rs"]
mod autosnap;

#[path = "cases/metrics.rs"]
mod metrics;

#[path = "cases/http.rs"]
mod http;

#[path = "cases/idmap.rs"]
mod idmap;

#[path = "cases/flexclone.rs"]
mod flexclone;

#[path = "cases/service.rs"]
mod service;

#[path = "cases/db.rs"]
mod db;

#[path = "cases/send.rs"]
mod send;

#[path = "cases/restore.rs"]
mod restore;

#[path = "cases/diff.rs"]
mod diff;

#[path = "cases/fast_open.rs"]
mod fast_open;

#[path = "cases/page_push.rs"]
mod page_push;

#[test]
fn completions_and_man_pages_are_generated() {
    let out = util::run_timeout(Command::new(util::BIN).args(["completions", "bash"]), 30);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("complete") && text.contains("snapshot"), "{text}");
    let dir = tempfile::tempdir().unwrap();
    let out = util::run_timeout(Command::new(util::BIN).arg("man").arg(dir.path()), 30);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for page in ["clonefs.1", "clonefs-snapshot.1", "clonefs-set.1"] {
        let text = fs::read_to_string(dir.path().join(page)).unwrap();
        assert!(text.contains(".TH"), "{page} is not a man page");
    }
    let out = util::run_timeout(Command::new(util::BIN).args(["completions", "tcsh"]), 30);
    assert_eq!(out.status.code(), Some(2), "an unknown shell is bad input");
}

#[test]
fn history_records_who_changed_what_and_how_it_ended() {
    let mut d = Daemon::start();
    d.ok(&["create", "h"]);
    d.ok(&["snapshot", "h@one"]);
    d.fails(&["destroy", "ghost"]);
    d.ok(&["list"]);
    d.ok(&["status"]);
    d.ok(&["set", "refquota=1G", "h"]);
    // It is kept in the store: a restart keeps it and appends after it.
    d.stop();
    d.restart();
    d.ok(&["destroy", "h@one"]);
    let h = d.json(&["history", "--json"]);
    let got: Vec<(String, bool)> =
        h.as_array().unwrap().iter().map(|e| (e["request"]["op"].as_str().unwrap().to_string(), e["ok"].as_bool().unwrap())).collect();
    let want: Vec<(String, bool)> = [
        ("create", true),
        ("snapshot", true),
        ("destroy", false),
        ("set_property", true),
        ("destroy", true),
    ]
    .iter()
    .map(|(o, k)| (o.to_string(), *k))
    .collect();
    assert_eq!(got, want, "{h}");
    let uid = unsafe { libc::geteuid() };
    assert!(h.as_array().unwrap().iter().all(|e| e["uid"] == uid && e["time"].as_i64().unwrap() > 1_700_000_000));
    assert!(h[2]["error"].as_str().unwrap().contains("ghost"));
    assert!(d.ok(&["history"]).contains("snapshot name=h@one"));
}

#[path = "cases/access.rs"]
mod access;

/// A store deeper than a Unix socket address holds (108 bytes) serves: the socket is
/// reached through its directory's descriptor ("path must be shorter than SUN_LEN" before).
#[test]
fn a_store_at_a_long_path_serves() {
    let base = tempfile::tempdir().unwrap();
    let store = base.path().join("a".repeat(60)).join("b".repeat(60)).join("store");
    fs::create_dir_all(store.parent().unwrap()).unwrap();
    let mut d = util::Daemon::start_at(store);
    let v = d.volume("v");
    fs::write(v.join("f"), b"x").unwrap();
    d.ok(&["snapshot", "v@s"]);
    assert!(d.ok(&["list"]).contains("v@s"));
    d.fsck_clean();
}
