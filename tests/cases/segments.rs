//! The segment log: a torn or scribbled tail is ignored at start (what was fsync'd before
//! it survives), and the cleaner gives space back while volumes are written, read and
//! destroyed.

use crate::util::{pattern, Daemon};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The newest log segment, and where its last record starts and ends, found by walking the
/// record headers (layout in `src/store/segment.rs`; data segments, numbered from 2^23, hold
/// no record).
fn log_end(store: &Path) -> (PathBuf, u64, u64) {
    let mut segs: Vec<PathBuf> = fs::read_dir(store.join("seg"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().parse::<u32>().unwrap() < 1 << 23)
        .collect();
    segs.sort();
    let p = segs.pop().expect("no segment");
    let b = fs::read(&p).unwrap();
    let u = |at: usize, n: usize| b[at..at + n].iter().rev().fold(0u64, |a, x| (a << 8) | *x as u64);
    let (mut off, mut last) = (0usize, 0usize);
    while off + 64 <= b.len() && u(off, 4) == 0x5253_4643 {
        let (data_len, batch_len, data_off) = (u(off + 32, 8), u(off + 40, 4), u(off + 44, 4));
        // Flag DIRECT: the record ends on a 4 KiB boundary.
        let align = if b[off + 6] & 1 != 0 { 4096 } else { 8 };
        last = off;
        off = ((off as u64 + data_off + data_len + batch_len).div_ceil(align) * align) as usize;
    }
    (p, last as u64, off as u64)
}

#[test]
fn a_torn_or_scribbled_log_tail_is_ignored_and_fsynced_data_survives() {
    let mut d = Daemon::start();
    let m = d.volume("v");
    let a = pattern(1, 3 << 20);
    fs::write(m.join("a"), &a).unwrap();
    File::open(m.join("a")).unwrap().sync_all().unwrap();
    d.kill9();

    // Garbage after the last record: a header-like start and random bytes.
    let (seg, _, end) = log_end(&d.store);
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    let mut junk = pattern(7, 64 << 10);
    junk[..4].copy_from_slice(&0x5253_4643u32.to_le_bytes());
    f.write_all_at(&junk, end).unwrap();
    drop(f);
    d.restart();
    let m = d.mount("v");
    assert!(fs::read(m.join("a")).unwrap() == a, "fsync'd data changed after a scribbled tail");
    d.fsck_clean();

    // The last record (b's, its blocks written ahead into a data segment) cut in the middle,
    // as by a power cut before its sync: the commit is gone whole.
    let b = pattern(2, 2 << 20);
    fs::write(m.join("b"), &b).unwrap();
    d.kill9();
    let (seg, last, end) = log_end(&d.store);
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len((last + end) / 2).unwrap();
    drop(f);
    d.restart();
    let m = d.mount("v");
    assert!(fs::read(m.join("a")).unwrap() == a, "fsync'd data changed after a torn tail");
    match fs::read(m.join("b")) {
        Ok(got) => assert!(got.is_empty() || got == b, "a torn commit left {} bytes of b", got.len()),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound),
    }
    d.fsck_clean();
    // The store goes on writing after the cut.
    fs::write(m.join("c"), &b).unwrap();
    File::open(m.join("c")).unwrap().sync_all().unwrap();
    d.kill9();
    d.restart();
    let m = d.mount("v");
    assert!(fs::read(m.join("c")).unwrap() == b);
    d.fsck_clean();
}

/// A segment the cleaner empties is kept and becomes the log's next segment (its old bytes
/// in place of the zeros a new one gets); fsync'd writes in it survive `kill -9`, and the
/// replay stops at the stale bytes after them.
#[test]
fn an_emptied_segment_becomes_a_log_segment_and_fsynced_writes_in_it_survive_kill9() {
    let mut d = Daemon::start();
    let m = d.volume("v");
    let metric = |d: &Daemon, name: &str| -> u64 {
        let text = d.ok(&["metrics"]);
        text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse::<f64>().ok())).unwrap_or(0.0) as u64
    };
    // 80 MiB written in large pieces fill a 64 MiB data segment.
    fs::write(m.join("big"), pattern(1, 80 << 20)).unwrap();
    File::open(m.join("big")).unwrap().sync_all().unwrap();
    // fsync'd 256 KiB writes are log records: 40 MiB take the log's segment past half full.
    let f = OpenOptions::new().write(true).create(true).truncate(true).open(m.join("log")).unwrap();
    let (mut want, mut i) = (Vec::new(), 0u64);
    let mut append = |n: usize| {
        for _ in 0..n {
            let chunk = pattern(100 + i, 256 << 10);
            f.write_all_at(&chunk, want.len() as u64).unwrap();
            f.sync_data().unwrap();
            want.extend_from_slice(&chunk);
            i += 1;
        }
        i
    };
    append(160);
    // Removed, the big file's data segment is empty, and the cleaner's next round (every
    // 5 s) keeps it for the log, which needs a new segment soon.
    fs::remove_file(m.join("big")).unwrap();
    d.ok(&["gc"]);
    std::thread::sleep(std::time::Duration::from_secs(7));
    // More records until the log rolls into the kept file.
    while metric(&d, "clonefs_segments_recycled_total") == 0 {
        let written = append(32);
        assert!(written < 1024, "no segment reused after {} MiB of fsync'd writes", written / 4);
    }
    // A few more records in the reused segment, then a crash.
    append(8);
    d.kill9();
    drop(f);
    d.restart();
    d.fsck_clean();
    let m = d.mount("v");
    assert!(fs::read(m.join("log")).unwrap() == want, "the fsync'd writes after a crash");
    assert!(!m.join("big").exists());
}

#[test]
fn the_cleaner_under_load_keeps_counts_exact_and_gives_space_back() {
    let mut d = Daemon::start();
    let m = d.volume("v");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Read over and over from the daemon (its cached pages dropped before each read) while
    // the cleaner moves its blocks and retires their segments: long runs are read through
    // mappings of segments that go meanwhile.
    let stable = pattern(7, 8 << 20);
    fs::write(m.join("stable"), &stable).unwrap();
    let reader = {
        let (m, stop) = (m.clone(), stop.clone());
        std::thread::spawn(move || {
            use std::io::Read;
            use std::os::fd::AsRawFd;
            let mut reads = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut f = File::open(m.join("stable")).unwrap();
                // SAFETY: advice on an open descriptor; no memory is passed.
                assert_eq!(unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) }, 0);
                let mut got = Vec::with_capacity(stable.len());
                f.read_to_end(&mut got).unwrap();
                assert!(got == stable, "read {reads} of a file the cleaner moves is not what was written");
                reads += 1;
            }
            reads
        })
    };
    let writer = {
        let (m, stop) = (m.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Overwrites leave dead blocks behind in older segments.
                fs::write(m.join(format!("f{}", i % 6)), pattern(i, 4 << 20)).unwrap();
                i += 1;
            }
            i
        })
    };
    for round in 0..6 {
        let name = format!("t{round}");
        let t = d.volume(&name);
        fs::write(t.join("x"), pattern(100 + round, 6 << 20)).unwrap();
        d.ok(&["snapshot", &format!("v@s{round}")]);
        d.unmount(&t);
        d.ok(&["destroy", &name]);
        if round >= 2 {
            d.ok(&["destroy", &format!("v@s{}", round - 2)]);
        }
        d.ok(&["compact"]);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let n = writer.join().unwrap();
    assert!(n >= 6, "the writer wrote {n} files");
    let reads = reader.join().unwrap();
    assert!(reads >= 6, "the reader read {reads} times");
    d.fsck_clean();
    let st = d.json(&["status", "--json"]);
    assert_eq!(st["segment_live_bytes"], st["physical"], "live bytes in segments are the stored blocks: {st}");
    assert!(st["segment_bytes"].as_u64().unwrap() >= st["segment_live_bytes"].as_u64().unwrap());
    for i in 0..6 {
        let want = (0..n).rev().find(|j| j % 6 == i).unwrap();
        assert!(fs::read(m.join(format!("f{i}"))).unwrap() == pattern(want, 4 << 20), "f{i} is not its last write");
    }
    // Everything gone: the store's disk use falls back near empty.
    d.unmount(&m);
    d.ok(&["destroy", "v"]);
    d.ok(&["gc"]);
    assert_eq!(d.physical(), 0);
    d.ok(&["compact"]);
    let disk = d.json(&["status", "--json"])["disk_bytes"].as_u64().unwrap();
    let segs: Vec<_> = fs::read_dir(d.store.join("seg")).unwrap().map(|e| e.unwrap()).map(|e| (e.file_name(), e.metadata().unwrap().len())).collect();
    assert!(disk < 16 << 20, "{disk} bytes on disk for an empty store (segments {segs:?}): {}", d.json(&["status", "--json"]));
    d.fsck_clean();
    // The segment the last checkpoint names survived the cleaning: a crash now restarts.
    d.ok(&["compact"]);
    d.kill9();
    d.restart();
    d.fsck_clean();
}

/// Small fsync'd writes over stored blocks are logged as the bytes written (no block read)
/// and merged into their blocks later: what a reader, a snapshot, a clone and a restart see
/// is the file as written, whether the merge happened before the crash or at start-up.
#[test]
fn fsynced_small_writes_over_stored_blocks_survive_kill9_and_reach_snapshots_and_clones() {
    let mut d = Daemon::start();
    d.ok(&["create", "v", "--block-size", "16K"]);
    let m = d.mount("v");
    let mut want = pattern(11, 1 << 20);
    fs::write(m.join("a"), &want).unwrap();
    File::open(m.join("a")).unwrap().sync_all().unwrap();
    let f = OpenOptions::new().write(true).open(m.join("a")).unwrap();
    let put = |want: &mut Vec<u8>, off: usize, bytes: Vec<u8>| {
        f.write_all_at(&bytes, off as u64).unwrap();
        if want.len() < off + bytes.len() {
            want.resize(off + bytes.len(), 0);
        }
        want[off..off + bytes.len()].copy_from_slice(&bytes);
        f.sync_data().unwrap();
    };
    // Parts of blocks, twice into one of them (the second record replaces the first), one
    // whole block over a logged one, and a write that extends the file from its last block.
    put(&mut want, 4096 + 100, pattern(21, 4096));
    put(&mut want, 70_000, pattern(22, 100));
    put(&mut want, 4096 + 9000, pattern(23, 3000));
    put(&mut want, 200_000, pattern(24, 8192));
    put(&mut want, 196_608, pattern(25, 16_384));
    put(&mut want, (1 << 20) - 1000, pattern(26, 5000));
    assert!(fs::read(m.join("a")).unwrap() == want, "a reader sees the fsync'd writes");
    // A file unlinked while open with logged blocks leaves no record behind at its last
    // close (fsck, after the restart, checks that every record names a file of its volume;
    // fsck flushes mounted volumes first, which would merge them).
    fs::write(m.join("gone"), pattern(12, 64 << 10)).unwrap();
    File::open(m.join("gone")).unwrap().sync_all().unwrap();
    let g = OpenOptions::new().write(true).open(m.join("gone")).unwrap();
    g.write_all_at(&pattern(13, 512), 1000).unwrap();
    g.sync_data().unwrap();
    fs::remove_file(m.join("gone")).unwrap();
    drop(g);
    // Killed with `a` still open: its last writes exist only as logged bytes.
    d.kill9();
    drop(f);

    // The daemon merges them at start: a snapshot and a clone taken before any mount see them.
    d.restart();
    assert!(d.log().contains("written before a crash"), "no logged writes were merged at start: {}", d.log());
    d.ok(&["snapshot", "v@s"]);
    d.ok(&["clone", "v@s", "c"]);
    d.fsck_clean();
    let c = d.mount("c");
    assert!(fs::read(c.join("a")).unwrap() == want, "the clone of a snapshot taken after the crash");
    let m = d.mount("v");
    assert!(fs::read(m.join("a")).unwrap() == want, "the volume after the crash");

    // Without a crash: the flusher merges them within seconds, and a snapshot cut sees them.
    let f = OpenOptions::new().write(true).open(m.join("a")).unwrap();
    f.write_all_at(&pattern(27, 4000), 300_000).unwrap();
    want[300_000..304_000].copy_from_slice(&pattern(27, 4000));
    f.sync_data().unwrap();
    d.ok(&["snapshot", "v@t"]);
    assert!(fs::read(m.join(".snapshots/t/a")).unwrap() == want, "a snapshot taken right after the fsync");
    f.write_all_at(&pattern(28, 100), 500_000).unwrap();
    want[500_000..500_100].copy_from_slice(&pattern(28, 100));
    f.sync_data().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(4));
    d.fsck_clean();
    drop(f);
    d.stop();
    d.restart();
    let m = d.mount("v");
    assert!(fs::read(m.join("a")).unwrap() == want, "after a clean restart");
    d.fsck_clean();
}

/// kill -9 while `compact` moves live blocks out of half-dead segments: after a restart the
/// store is clean, every file reads as written, and a compaction then finishes and gives the
/// space back. The kill lands at a different point of the move in each round.
#[test]
fn kill_9_during_compact_loses_nothing() {
    let mut d = Daemon::start();
    let mut m = d.volume("v");
    for i in 0..24u64 {
        fs::write(m.join(format!("f{i}")), pattern(i, 4 << 20)).unwrap();
    }
    let (mut gen, mut cut) = (0u64, 0);
    for (round, delay_ms) in [20u64, 60, 100, 140].into_iter().enumerate() {
        // Overwrites of every other file, and the snapshot that kept their old blocks
        // destroyed: the segments are left half dead.
        d.ok(&["snapshot", &format!("v@r{round}")]);
        gen += 100;
        for i in (0..24u64).step_by(2) {
            fs::write(m.join(format!("f{i}")), pattern(gen + i, 4 << 20)).unwrap();
        }
        d.ok(&["destroy", &format!("v@r{round}")]);
        d.ok(&["gc"]);
        if d.kill9_during(&["compact"], delay_ms) {
            cut += 1;
        }
        m = d.mount("v");
        for i in 0..24u64 {
            let want = if i % 2 == 0 { pattern(gen + i, 4 << 20) } else { pattern(i, 4 << 20) };
            assert!(fs::read(m.join(format!("f{i}"))).unwrap() == want, "round {round}: f{i} is not its last write");
        }
    }
    assert!(cut > 0, "no kill landed inside a compaction");
    d.ok(&["compact"]);
    let st = d.json(&["status", "--json"]);
    assert_eq!(st["segment_live_bytes"], st["physical"], "{st}");
    let (disk, live) = (st["segment_bytes"].as_u64().unwrap(), st["segment_live_bytes"].as_u64().unwrap());
    assert!(disk <= live + live / 5, "segments hold {disk} bytes for {live} live after compact: {st}");
    d.fsck_clean();
}

/// 0..n in an order fixed by `seed`.
fn shuffled(n: u64, seed: u64) -> Vec<u64> {
    let mut order: Vec<u64> = (0..n).collect();
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    order
}

/// `defrag` lays a file rewritten at random back in file order while the volume is mounted
/// and written: it says what it moved and a second run finds nothing out of order; the
/// head, a snapshot taken before and a clone read as before; no space figure moves; the
/// cleaner then gives the old places back; bad targets get a clear error.
#[test]
fn defrag_lays_a_file_rewritten_at_random_back_in_order() {
    let mut d = Daemon::start();
    let m = d.volume("v");
    let (bs, blocks) = (16u64 << 10, 512u64);
    let mut want = pattern(1, (bs * blocks) as usize);
    fs::write(m.join("f"), &want).unwrap();
    // Whole blocks in a shuffled order, each fsync'd on its own: each goes to the log
    // alone, so the file's blocks lie out of order.
    let f = OpenOptions::new().write(true).open(m.join("f")).unwrap();
    for (n, &idx) in shuffled(blocks, 0x2545F4914F6CDD1D).iter().enumerate() {
        let b = pattern(1000 + n as u64, bs as usize);
        f.write_all_at(&b, idx * bs).unwrap();
        f.sync_data().unwrap();
        want[(idx * bs) as usize..((idx + 1) * bs) as usize].copy_from_slice(&b);
    }
    drop(f);
    // Four blocks named sixteen times each: in order as first named, nothing to move.
    let rep: Vec<u8> = (0..64u64).flat_map(|i| pattern(500 + i % 4, bs as usize)).collect();
    fs::write(m.join("rep"), &rep).unwrap();
    d.ok(&["snapshot", "v@before"]);
    d.ok(&["clone", "v@before", "c"]);
    let listed = |d: &Daemon| -> Vec<(String, u64, u64, u64)> {
        let v = d.json(&["list", "--json"]);
        v.as_array().unwrap().iter().map(|e| (e["name"].as_str().unwrap().to_string(), e["logical"].as_u64().unwrap(), e["referenced"].as_u64().unwrap(), e["unique"].as_u64().unwrap())).collect()
    };
    let before = listed(&d);
    // A writer goes on beside it.
    let writer = {
        let m = m.clone();
        std::thread::spawn(move || {
            for i in 0..20u64 {
                fs::write(m.join("other"), pattern(50 + i, 1 << 20)).unwrap();
            }
        })
    };
    let r = d.json(&["defrag", "v", "--json"]);
    writer.join().unwrap();
    assert_eq!(r["defragmented"], 1, "{r}");
    assert_eq!(r["moved_bytes"], bs * blocks, "{r}");
    assert_eq!(r["damaged"], 0, "{r}");
    let again = d.json(&["defrag", "v", "--json"]);
    assert_eq!(again["moved_bytes"], 0, "laid in order, yet moved again: {again}");
    // The snapshot and the clone share the blocks it moved: in order for them too.
    assert_eq!(d.json(&["defrag", "v@before", "--json"])["moved_bytes"], 0);
    assert_eq!(d.json(&["defrag", "c", "--json"])["moved_bytes"], 0);
    let out = d.ok(&["defrag", "v"]);
    assert!(out.starts_with("defragmented v: 0 of 3 files laid in order"), "{out}");
    // Read from the daemon, not the kernel's cache of the file.
    d.unmount(&m);
    let m = d.mount("v");
    assert!(fs::read(m.join("f")).unwrap() == want, "the head reads otherwise after defrag");
    assert!(fs::read(m.join("rep")).unwrap() == rep);
    assert!(fs::read(m.join("other")).unwrap() == pattern(69, 1 << 20), "the writer's last write is not what reads");
    assert!(fs::read(d.mount("v@before").join("f")).unwrap() == want, "the snapshot reads otherwise after defrag");
    assert!(fs::read(d.mount("c").join("f")).unwrap() == want, "the clone reads otherwise after defrag");
    let after = listed(&d);
    // Only the writer's new file counts.
    for (name, l, r, u) in &before {
        let grown = if name == "v" { 1 << 20 } else { 0 };
        assert!(after.contains(&(name.clone(), l + grown, r + grown, u + grown)), "space of {name} changed: {before:?} then {after:?}");
    }
    let held = d.json(&["status", "--json"])["segment_bytes"].as_u64().unwrap();
    d.ok(&["compact"]);
    let st = d.json(&["status", "--json"]);
    assert_eq!(st["segment_live_bytes"], st["physical"], "{st}");
    let (seg, live) = (st["segment_bytes"].as_u64().unwrap(), st["segment_live_bytes"].as_u64().unwrap());
    // The active segment is not cleaned: a quarter over the live bytes at this size.
    assert!(seg <= live + live / 4 && seg < held / 2, "segments hold {seg} bytes for {live} live after defrag and compact ({held} before): {st}");
    d.fsck_clean();
    for (target, err) in [("nosuch", "no volume named \"nosuch\""), ("v@nosnap", "no snapshot"), ("a/b", "")] {
        let e = d.fails(&["defrag", target]);
        assert!(e.contains(err) && e.lines().count() == 1, "defrag {target}: {e}");
    }
}

/// kill -9 while `defrag` moves a file's blocks: after a restart the store is clean and the
/// file reads as written; a defrag then finishes the job. The kill lands at a different
/// point of the moves in each round, over a file rewritten out of order again each time.
#[test]
fn kill_9_during_defrag_loses_nothing() {
    let mut d = Daemon::start();
    let mut m = d.volume("v");
    let (bs, blocks) = (16u64 << 10, 2048u64);
    let mut want = pattern(1, (bs * blocks) as usize);
    fs::write(m.join("f"), &want).unwrap();
    let mut cut = 0;
    for (round, delay_ms) in [5u64, 15, 30, 50].into_iter().enumerate() {
        // Every block rewritten whole and fsync'd alone, in a shuffled order.
        let f = OpenOptions::new().write(true).open(m.join("f")).unwrap();
        for &idx in &shuffled(blocks, round as u64 + 1) {
            let b = pattern(round as u64 * blocks + idx + 7, bs as usize);
            f.write_all_at(&b, idx * bs).unwrap();
            f.sync_data().unwrap();
            want[(idx * bs) as usize..((idx + 1) * bs) as usize].copy_from_slice(&b);
        }
        drop(f);
        if d.kill9_during(&["defrag", "v"], delay_ms) {
            cut += 1;
        }
        m = d.mount("v");
        assert!(fs::read(m.join("f")).unwrap() == want, "round {round}: the file is not as written after kill -9 during defrag");
    }
    assert!(cut > 0, "no kill landed inside a defrag");
    d.json(&["defrag", "v", "--json"]);
    assert_eq!(d.json(&["defrag", "v", "--json"])["moved_bytes"], 0);
    d.fsck_clean();
}
