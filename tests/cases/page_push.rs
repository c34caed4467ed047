//! Page pushes: a read of part of a block hands the rest of the block to the kernel's page
//! cache, so the next reads of it need no request. Writers, truncates and rollbacks must
//! never find an old page brought back by a push.

use crate::util::{pattern, Daemon};
use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A counter or an operation's request count from `clonefs metrics`.
fn metric(d: &Daemon, key: &str) -> u64 {
    d.ok(&["metrics"]).lines().find_map(|l| l.strip_prefix(key)).map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

fn reads(d: &Daemon) -> u64 {
    metric(d, "clonefs_fuse_op_seconds_count{op=\"read\"} ")
}

fn pushed(d: &Daemon) -> u64 {
    metric(d, "clonefs_pushed_bytes_total ")
}

fn advise(f: &File, advice: libc::c_int) {
    assert_eq!(unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, advice) }, 0);
}

/// Opened read-only with the kernel's readahead off and its cached pages dropped: every
/// read not pushed before is a READ of exactly its pages.
fn cold(p: &Path) -> File {
    let f = File::open(p).unwrap();
    advise(&f, libc::POSIX_FADV_DONTNEED);
    advise(&f, libc::POSIX_FADV_RANDOM);
    f
}

fn page(f: &File, off: u64) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    let n = f.read_at(&mut b, off).unwrap();
    b.truncate(n);
    b
}

#[test]
fn a_random_read_brings_its_whole_block_and_a_rollback_drops_it() {
    let mut d = Daemon::start();
    d.ok(&["create", "v", "--block-size", "16K"]);
    let m = d.mount("v");
    let old = pattern(1, 1 << 20);
    fs::write(m.join("f"), &old).unwrap();
    d.ok(&["snapshot", "v@old"]);
    let new = pattern(2, 1 << 20);
    fs::write(m.join("f"), &new).unwrap();

    // The first page of each block: one READ each; the block's other pages are pushed.
    let f = cold(&m.join("f"));
    let r0 = reads(&d);
    for b in 0..64u64 {
        assert_eq!(page(&f, b * 16384), &new[(b * 16384) as usize..][..4096]);
    }
    let r1 = reads(&d);
    assert!(r1 - r0 >= 64, "64 cold pages took {} READs", r1 - r0);
    let t0 = Instant::now();
    while pushed(&d) < 64 * 12288 {
        assert!(t0.elapsed() < Duration::from_secs(60), "pushed {} bytes of 786432", pushed(&d));
        std::thread::sleep(Duration::from_millis(20));
    }
    for b in 0..64u64 {
        for p in 1..4u64 {
            let off = b * 16384 + p * 4096;
            assert_eq!(page(&f, off), &new[off as usize..][..4096], "page at {off}");
        }
    }
    assert_eq!(reads(&d), r1, "the pushed pages were asked for again");

    // A rollback drops the pushed pages: the file reads as the snapshot has it.
    d.ok(&["rollback", "v@old"]);
    let f = File::open(m.join("f")).unwrap();
    advise(&f, libc::POSIX_FADV_RANDOM);
    for off in (0..1u64 << 20).step_by(4096 * 7) {
        assert_eq!(page(&f, off), &old[off as usize..][..4096], "page at {off} after the rollback");
    }
    // A snapshot's files (immutable) are pushed too.
    let s = m.join(".snapshots/old/f");
    let f = cold(&s);
    for off in (0..1u64 << 20).step_by(16384 * 3) {
        assert_eq!(page(&f, off + 8192), &old[off as usize + 8192..][..4096]);
    }
    drop(f);
    d.fsck_clean();
}

/// Generation `g` of the file: every byte is `g`.
fn generation(g: u8, len: usize) -> Vec<u8> {
    vec![g; len]
}

#[test]
fn readers_never_see_a_page_older_than_the_last_write() {
    let mut d = Daemon::start();
    d.ok(&["create", "v", "--block-size", "16K"]);
    let m = d.mount("v");
    let p = m.join("f");
    const LEN: usize = 256 << 10;
    fs::write(&p, generation(1, LEN)).unwrap();
    // The last generation fully written (before its writer closed the file).
    let done = AtomicU64::new(1);
    // Odd while a truncate and the rewrite after it run.
    let truncating = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let last = std::thread::scope(|s| {
        for r in 0..3u64 {
            let (p, done, truncating, stop) = (&p, &done, &truncating, &stop);
            s.spawn(move || {
                let f = File::open(p).unwrap();
                advise(&f, libc::POSIX_FADV_RANDOM);
                let mut x = r + 1;
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // A cold read now and then (pushes), cached reads between (what pushes left).
                    if n % 4 == 0 {
                        advise(&f, libc::POSIX_FADV_DONTNEED);
                    }
                    n += 1;
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let off = (x >> 33) % (LEN as u64 / 4096) * 4096;
                    let least = done.load(Ordering::SeqCst);
                    let t = truncating.load(Ordering::SeqCst);
                    let b = page(&f, off);
                    // Empty: a truncate's moment of a short file. A page of zeros: the
                    // kernel's, of a READ sent before a truncate and answered after it
                    // (passthrough_ll shows it too), so only beside a truncate.
                    let beside_truncate = t % 2 == 1 || truncating.load(Ordering::SeqCst) != t;
                    // A page may mix two generations (read while a write copies into it).
                    for v in b.iter().copied().collect::<std::collections::BTreeSet<u8>>() {
                        assert!(v as u64 >= least || (v == 0 && beside_truncate), "page at {off} holds generation {v}, older than {least} finished before the read");
                    }
                }
            });
        }
        let t0 = Instant::now();
        let mut g = 1u8;
        while t0.elapsed() < Duration::from_secs(4) && g < 250 {
            g += 1;
            let trunc = g % 3 == 0;
            if trunc {
                // A truncate by path: no handle open for writing.
                truncating.fetch_add(1, Ordering::SeqCst);
                truncate_path(&p, 0);
            }
            let f = OpenOptions::new().write(true).open(&p).unwrap();
            f.write_all_at(&generation(g, LEN), 0).unwrap();
            drop(f);
            done.store(g as u64, Ordering::SeqCst);
            if trunc {
                truncating.fetch_add(1, Ordering::SeqCst);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        stop.store(true, Ordering::Relaxed);
        g
    });
    assert!(pushed(&d) > 0, "no page was pushed");
    // Cached pages first, then from the daemon: all of the last generation.
    assert_eq!(fs::read(&p).unwrap(), generation(last, LEN));
    advise(&File::open(&p).unwrap(), libc::POSIX_FADV_DONTNEED);
    assert_eq!(fs::read(&p).unwrap(), generation(last, LEN));
    // A truncate by path leaves the size it set, whatever was pushed before.
    let f = cold(&p);
    for off in (0..LEN as u64).step_by(16384) {
        page(&f, off);
    }
    truncate_path(&p, 100_000);
    assert_eq!(fs::metadata(&p).unwrap().len(), 100_000);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(fs::metadata(&p).unwrap().len(), 100_000);
    assert_eq!(fs::read(&p).unwrap(), generation(last, 100_000));
    drop(f);
    d.fsck_clean();
}

/// truncate(2) by path: the kernel sends a SETATTR without a file handle.
fn truncate_path(p: &Path, len: i64) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::truncate(c.as_ptr(), len) }, 0, "truncate {}: {}", p.display(), std::io::Error::last_os_error());
}
