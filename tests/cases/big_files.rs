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
        drop_pages(&f);
        let mut got = vec![0u8; model.len()];
        f.read_exact_at(&mut got, 0).unwrap();
        assert!(got == model, "round {round}: read before the flush differs");
        if round % 2 == 1 {
            f.sync_all().unwrap();
            drop_pages(&f);
            f.read_exact_at(&mut got, 0).unwrap();
            assert!(got == model, "round {round}: read after fsync differs");
        }
    }
    drop(f);
    d.unmount(&m);
    let m = d.mount("v");
    assert!(fs::read(m.join("f")).unwrap() == model, "after remount the file differs");
    d.fsck_clean();
}
