//! kill -9 of the daemon at random moments under a write load with fsyncs, snapshots and
//! clones: after each restart fsck is clean and every byte acknowledged by fsync is there.
//! `CLONEFS_KILL_CYCLES` sets the number of cycles (3 or 10 by default; `scripts/test.sh
//! --long` runs 100).

use crate::util::*;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

const REC: usize = 4096;
const MAGIC: u64 = 0xC10E_F5C4_A5E0_0001;
const WRITERS: u64 = 3;
/// Records per file: 4 MiB files, so writes both overwrite and extend.
const SLOTS: u64 = 1024;

/// Highest sequence number acknowledged by fsync, per (writer, slot).
type Acked = HashMap<(u64, u64), u64>;

/// Record `seq` of writer `w` at slot `slot`: a header naming all three, then bytes derived
/// from them, so a torn, misplaced or stale record is told from a good one.
fn record(w: u64, slot: u64, seq: u64) -> Vec<u8> {
    let mut r = Vec::with_capacity(REC);
    for x in [MAGIC, w, slot, seq] {
        r.extend_from_slice(&x.to_le_bytes());
    }
    r.extend_from_slice(&pattern(seq ^ (w << 48) ^ (slot << 32), REC - 32));
    r
}

/// The sequence number of the good record `buf` holds for (w, slot), None for zeros;
/// panics on anything else.
fn parse(buf: &[u8], w: u64, slot: u64, what: &str) -> Option<u64> {
    if buf.iter().all(|&b| b == 0) {
        return None;
    }
    let word = |i: usize| u64::from_le_bytes(buf[i * 8..i * 8 + 8].try_into().unwrap());
    assert_eq!(word(0), MAGIC, "{what}: slot {slot} of writer {w} holds garbage");
    let seq = word(3);
    assert!(buf == record(w, slot, seq).as_slice(), "{what}: slot {slot} of writer {w} is torn or misplaced (seq {seq})");
    Some(seq)
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Writes records at random slots of its file (runs of a few neighbours, as a database
/// does), fsyncs or fdatasyncs every few writes and records what each sync acknowledged.
/// Stops at the first error (the daemon died) or when told.
fn writer(dir: PathBuf, w: u64, seed: u64, seq: Arc<AtomicU64>, acked: Arc<Mutex<Acked>>, stop: Arc<AtomicBool>) {
    let mut rng = Rng(seed | 1);
    let Ok(f) = OpenOptions::new().create(true).write(true).open(dir.join(format!("f{w}"))) else { return };
    let mut pending: Vec<(u64, u64)> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let start = rng.below(SLOTS);
        for slot in start..(start + 1 + rng.below(4)).min(SLOTS) {
            let s = seq.fetch_add(1, Ordering::Relaxed);
            if f.write_at(&record(w, slot, s), slot * REC as u64).is_err() {
                return;
            }
            pending.push((slot, s));
        }
        if rng.below(3) == 0 {
            let synced = if rng.below(2) == 0 { f.sync_all() } else { f.sync_data() };
            if synced.is_err() {
                return;
            }
            let mut a = acked.lock().unwrap();
            for (slot, s) in pending.drain(..) {
                let e = a.entry((w, slot)).or_insert(0);
                *e = (*e).max(s);
            }
        }
    }
}

/// Every acknowledged record is there (or a newer one), and every slot holds zeros or a
/// good record.
fn verify(dir: &Path, acked: &Acked, what: &str) {
    for w in 0..WRITERS {
        let Ok(f) = File::open(dir.join(format!("f{w}"))) else {
            assert!(!acked.keys().any(|k| k.0 == w), "{what}: file f{w} with acknowledged data is gone");
            continue;
        };
        let mut buf = vec![0u8; REC];
        for slot in 0..SLOTS {
            let n = f.read_at(&mut buf, slot * REC as u64).unwrap();
            buf[n..].fill(0);
            let got = parse(&buf, w, slot, what);
            if let Some(&want) = acked.get(&(w, slot)) {
                assert!(got.is_some_and(|g| g >= want), "{what}: writer {w} slot {slot}: fsync'd record {want} lost, found {got:?}");
            }
        }
    }
}

#[test]
fn fsynced_data_survives_kill_9_at_random_moments() {
    kill_cycles(&[], true, 3);
}

/// With the smallest memory budget a file flushes itself at 2 MiB dirty (128 blocks), so
/// many fsyncs land while a flush of their file is in flight and commit beside it (`W`
/// records laid over the flush's blocks, the flush then keeping or dropping them): the
/// kills land between those commits and the flush's, and at any moment after (no snapshot
/// flushes everything just before a kill).
#[test]
fn fsynced_data_survives_kill_9_with_fsyncs_beside_flushes_in_flight() {
    let beside = kill_cycles(&["--memory", "64M"], false, 10);
    eprintln!("fsyncs beside a flush: {beside}");
    assert!(beside > 0, "no fsync committed beside a flush in flight: the test did not test it");
}

/// fsyncs the daemon committed beside a flush in flight since it started.
fn fsyncs_beside_flush(d: &Daemon) -> u64 {
    let m = d.ok(&["metrics"]);
    m.lines()
        .find_map(|l| l.strip_prefix("clonefs_fsyncs_beside_flush_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the metrics name fsyncs beside a flush")
}

/// kill -9 cycles (`CLONEFS_KILL_CYCLES`, else `default_cycles`) under writers (and
/// `snapshots` and clones), on a daemon started with `args`; returns the fsyncs committed beside a flush in flight (counted before each kill).
fn kill_cycles(args: &[&str], snapshots: bool, default_cycles: u64) -> u64 {
    let cycles: u64 = std::env::var("CLONEFS_KILL_CYCLES").ok().and_then(|s| s.parse().ok()).unwrap_or(default_cycles);
    let seed = std::env::var("CLONEFS_KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("kill -9 cycles: {cycles}, seed {seed} (CLONEFS_KILL_SEED={seed} repeats the moments)");
    let mut rng = Rng(seed | 1);
    let mut d = Daemon::start_args(args);
    let mut beside = 0;
    // 16 KiB blocks: each 4 KiB record is a partial block.
    d.ok(&["create", "v", "--block-size", "16K"]);
    let mut v = d.mount("v");
    let seq = Arc::new(AtomicU64::new(1));
    let acked = Arc::new(Mutex::new(Acked::new()));
    // Per snapshot or clone (name, is a clone): what was acknowledged before it was taken.
    let mut snaps: Vec<(String, bool, Acked)> = Vec::new();
    for cycle in 0..cycles {
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (dir, seq, acked, stop) = (v.clone(), seq.clone(), acked.clone(), stop.clone());
                let s = rng.next();
                std::thread::spawn(move || writer(dir, w, s, seq, acked, stop))
            })
            .collect();
        // Snapshots and clones while the writers run; the kill may land inside one.
        let busy_ms = 200 + rng.below(1300);
        let t0 = std::time::Instant::now();
        let mut k = 0;
        if !snapshots {
            std::thread::sleep(Duration::from_millis(busy_ms));
        }
        while snapshots && t0.elapsed() < Duration::from_millis(busy_ms) {
            std::thread::sleep(Duration::from_millis(50 + rng.below(300)));
            let name = format!("c{cycle}k{k}");
            let before = acked.lock().unwrap().clone();
            let clone = rng.below(2) == 0;
            let snap = format!("v@{name}");
            let args: &[&str] = if clone { &["clone", "v", &name] } else { &["snapshot", &snap] };
            if d.cli(args).status.success() {
                snaps.push((name, clone, before));
            }
            k += 1;
        }
        beside += fsyncs_beside_flush(&d);
        d.kill9();
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().unwrap();
        }
        d.restart();
        d.fsck_clean();
        v = d.mount("v");
        let what = format!("cycle {cycle} (seed {seed})");
        let a = acked.lock().unwrap();
        eprintln!("{what}: {} records written, {} slots acknowledged, {} snapshots/clones kept", seq.load(Ordering::Relaxed) - 1, a.len(), snaps.len());
        verify(&v, &a, &what);
        drop(a);
        // The newest snapshot or clone holds what was acknowledged before it.
        if let Some((name, clone, before)) = snaps.last() {
            let dir = if *clone { d.mount(name) } else { v.join(".snapshots").join(name) };
            verify(&dir, before, &format!("{what}, {name}"));
        }
        // Keep the store small: unmount clones, destroy all but the newest snapshot or clone.
        for m in d.mounts.clone() {
            if m != v {
                d.unmount(&m);
            }
        }
        let keep = snaps.pop();
        for (name, clone, _) in snaps.drain(..) {
            d.ok(&["destroy", &if clone { name } else { format!("v@{name}") }]);
        }
        snaps.extend(keep);
    }
    d.ok(&["gc"]);
    d.fsck_clean();
    beside
}
