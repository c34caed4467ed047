//! Operations on files with more blocks than one batch holds (truncate, punch, shared copy):
//! they work in bounded batches and every result reads back exactly, snapshots included.

use crate::util::{pattern, Daemon};
use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

const BS: usize = 16 << 10;
/// More blocks than one batch (4,096), so every operation below takes several.
const BLOCKS: usize = 4096 + 700;

fn copy_range(src: &File, dst: &File, len: usize) {
    let mut copied = 0usize;
    while copied < len {
        let n = unsafe { libc::copy_file_range(src.as_raw_fd(), std::ptr::null_mut(), dst.as_raw_fd(), std::ptr::null_mut(), len - copied, 0) };
        assert!(n > 0, "copy_file_range: {}", std::io::Error::last_os_error());
        copied += n as usize;
    }
}

#[test]
fn truncate_punch_and_copy_of_big_files_read_back_exactly() {
    let mut d = Daemon::start();
    d.ok(&["create", "v", "--block-size", "16K"]);
    let m = d.mount("v");
    let data = pattern(7, BLOCKS * BS);
    fs::write(m.join("f"), &data).unwrap();
    d.ok(&["snapshot", "v@before"]);

    // A shared copy of the whole file, then a hole punched across most of it.
    let (src, dst) = (File::open(m.join("f")).unwrap(), File::create(m.join("g")).unwrap());
    copy_range(&src, &dst, data.len());
    drop((src, dst));
    assert!(fs::read(m.join("g")).unwrap() == data, "shared copy differs");
    let (from, to) = (5000usize, data.len() - BS - 3);
    let g = OpenOptions::new().write(true).open(m.join("g")).unwrap();
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    assert_eq!(unsafe { libc::fallocate(g.as_raw_fd(), mode, from as i64, (to - from) as i64) }, 0);
    drop(g);
    let mut want = data.clone();
    want[from..to].fill(0);
    assert!(fs::read(m.join("g")).unwrap() == want, "punched copy differs");

    // Shrink into the middle of a block, then grow again: the cut-off bytes read as zeros.
    let cut = 1000 * BS + 100;
    let f = OpenOptions::new().write(true).open(m.join("f")).unwrap();
    f.set_len(cut as u64).unwrap();
    assert_eq!(fs::metadata(m.join("f")).unwrap().len(), cut as u64);
    f.set_len(data.len() as u64).unwrap();
    f.write_all_at(b"end", data.len() as u64 - 3).unwrap();
    drop(f);
    let mut want = data[..cut].to_vec();
    want.resize(data.len() - 3, 0);
    want.extend_from_slice(b"end");
    assert!(fs::read(m.join("f")).unwrap() == want, "truncated and regrown file differs");

    // The snapshot still has the whole original, and the store is consistent.
    assert!(fs::read(m.join(".snapshots/before/f")).unwrap() == data, "snapshot changed");
    d.fsck_clean();

    // Everything goes: nothing stays stored.
    fs::remove_file(m.join("f")).unwrap();
    fs::remove_file(m.join("g")).unwrap();
    d.ok(&["destroy", "v@before"]);
    d.unmount(&m);
    d.ok(&["destroy", "v"]);
    d.ok(&["gc"]);
    d.fsck_clean();
    assert_eq!(d.physical(), 0);
}

/// Drops the kernel's cached pages of `f`, so the next read reaches the daemon.
fn drop_pages(f: &File) {
    assert_eq!(unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) }, 0);
}

/// The first `len` bytes of `f` as the daemon has them.
fn read_through(f: &File, len: usize) -> Vec<u8> {
    drop_pages(f);
    let mut got = vec![0u8; len];
    f.read_exact_at(&mut got, 0).unwrap();
    got
}

/// After an unmount and a mount of `v`, file `name` reads back as `want`; fsck is clean.
fn same_after_remount(d: &mut Daemon, m: &std::path::Path, name: &str, want: &[u8]) {
    d.unmount(m);
    let m = d.mount("v");
    assert!(fs::read(m.join(name)).unwrap() == want, "after remount {name} differs");
    d.fsck_clean();
}

/// Small writes that cover only parts of stored blocks are kept without reading the blocks
/// first; reads before and after a flush, and after a remount, see exactly what was written.
#[test]
fn small_unaligned_writes_over_stored_blocks_read_back_exactly() {
    let mut d = Daemon::start();
    d.ok(&["create", "v", "--block-size", "16K"]);
    let m = d.mount("v");
    let mut model = pattern(11, 64 * BS + 777);
    fs::write(m.join("f"), &model).unwrap();
    File::open(m.join("f")).unwrap().sync_all().unwrap();
    let f = OpenOptions::new().read(true).write(true).open(m.join("f")).unwrap();
    let mut x = 12345u64;
    let mut next = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    for round in 0..6 {
        for i in 0..200 {
            let len = 1 + next(6000) as usize;
            // Some writes extend the file past its end.
            let off = next(model.len() as u64 + 3000) as usize;
            let data = pattern(round * 1000 + i, len);
            f.write_all_at(&data, off as u64).unwrap();
            if model.len() < off + len {
                model.resize(off + len, 0);
            }
            model[off..off + len].copy_from_slice(&data);
        }
        assert!(read_through(&f, model.len()) == model, "round {round}: read before the flush differs");
        if round % 2 == 1 {
            f.sync_all().unwrap();
            assert!(read_through(&f, model.len()) == model, "round {round}: read after fsync differs");
        }
    }
    drop(f);
    same_after_remount(&mut d, &m, "f", &model);
}

/// A byte of generation `gen` (0 to 3) at offset `p`: never zero, and never the same in two
/// generations, so a read can tell which write it sees (or that it sees none).
fn gen_byte(gen: u64, p: u64) -> u8 {
    let x = (p / 8 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56;
    ((x as u8) & 0x3e | 1) + ((gen as u8) << 6)
}

/// A file written past the flush size (so flushes commit while the next writes arrive),
/// then overwritten by writes that start and end inside blocks being flushed, then by small
/// writes at random places (flushes of partly written blocks), while another thread reads
/// it through the daemon: every byte read is one that was written, and the file reads back
/// exactly after the writes, after fsync and after a remount.
#[test]
fn reads_during_flushes_see_every_write() {
    const MIB: u64 = 1 << 20;
    const SIZE: u64 = 40 * MIB;
    // The second pass is shifted so that each write's first and last blocks are shared with
    // the write before and after it.
    const SHIFT: u64 = 3 * 1024 + 5;
    let mut d = Daemon::start();
    d.ok(&["create", "v", "--block-size", "16K"]);
    let m = d.mount("v");
    let path = m.join("f");
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reader = {
        let (path, done) = (path.clone(), done.clone());
        std::thread::spawn(move || {
            let f = File::open(&path).unwrap();
            let mut x = 99u64;
            let mut reads = 0;
            while done.load(std::sync::atomic::Ordering::Acquire) < 3 * SIZE {
                let written = done.load(std::sync::atomic::Ordering::Acquire).min(SIZE);
                if written < MIB {
                    std::thread::yield_now();
                    continue;
                }
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let off = x % (written - 64 * 1024);
                let mut got = vec![0u8; 64 * 1024];
                drop_pages(&f);
                f.read_exact_at(&mut got, off).unwrap();
                for (i, b) in got.iter().enumerate() {
                    let p = off + i as u64;
                    assert!((0..3).any(|g| *b == gen_byte(g, p)), "byte {p} read as {b}: no write wrote it");
                }
                reads += 1;
            }
            reads
        })
    };
    let chunk = |gen: u64, from: u64, len: u64| (from..from + len).map(|p| gen_byte(gen, p)).collect::<Vec<u8>>();
    for k in 0..SIZE / MIB {
        f.write_all_at(&chunk(0, k * MIB, MIB), k * MIB).unwrap();
        done.store((k + 1) * MIB, std::sync::atomic::Ordering::Release);
    }
    for k in 0..SIZE / MIB {
        let from = k * MIB + SHIFT;
        let len = MIB.min(SIZE - from);
        f.write_all_at(&chunk(1, from, len), from).unwrap();
        done.store(SIZE + (k + 1) * MIB, std::sync::atomic::Ordering::Release);
    }
    let mut want = chunk(0, 0, SHIFT);
    want.extend(chunk(1, SHIFT, SIZE - SHIFT));
    let mut x = 7u64;
    const SMALL: u64 = 6000;
    for i in 0..SMALL {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = 1 + x % 6000;
        let from = (x >> 20) % (SIZE - len);
        let data = chunk(2, from, len);
        f.write_all_at(&data, from).unwrap();
        want[from as usize..(from + len) as usize].copy_from_slice(&data);
        done.store(2 * SIZE + (i + 1) * SIZE / SMALL, std::sync::atomic::Ordering::Release);
    }
    let reads = reader.join().unwrap();
    assert!(reads > 0, "the reader never read");
    assert!(read_through(&f, want.len()) == want, "the file differs after the writes");
    f.sync_all().unwrap();
    assert!(read_through(&f, want.len()) == want, "the file differs after fsync");
    drop(f);
    same_after_remount(&mut d, &m, "f", &want);
}
