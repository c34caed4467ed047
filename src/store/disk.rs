//! Free space on the store's disk, and the reserve that keeps a full disk from wedging the
//! store (invariant 16).
//!
//! RocksDB turns an ENOSPC in a flush into a permanent error: every later write fails, and a
//! restart cannot recover. So RocksDB (and the log) must never be the ones to find the disk full.
//! Every commit is admitted against the free space first:
//! - a batch that stores new blocks needs the whole reserve left after it;
//! - other batches that add (names, attributes, snapshots) need half of it;
//! - batches that remove (unlink, truncate, destroy, GC) are always admitted: they are what
//!   brings space back, and the reserve is there for them and for RocksDB's own flushes.
//!
//! The reserve is the memtables' budget (what RocksDB may still have to write out) plus a
//! slop of 1/32 of the disk (at least 32 MiB, at most 512 MiB), like ZFS's slop space. A
//! ballast file of `BALLAST` bytes in the store is given up when the store is opened on a
//! disk that others filled, so the log can still be replayed; it is made again once there
//! is room. Space that deletes free comes back to the disk when RocksDB compacts
//! (`clonefs compact`).

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Room to replay the log and checkpoint it at start.
const BALLAST: u64 = 64 << 20;
const BALLAST_NAME: &str = "reserve";

/// What a batch does to the disk, for admission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Growth {
    /// Stores new block bytes.
    Data,
    /// Adds or changes metadata only.
    Meta,
    /// Removes things: admitted whatever the free space.
    Frees,
}

/// How long a reading of the free space serves commits while it is far above the reserve.
const FRESH: Duration = Duration::from_millis(10);
/// Free space above the reserve beyond which a reading up to `FRESH` old is used: more than
/// a commit and `FRESH` of writes can take, so no commit is admitted that a fresh reading
/// would refuse.
const FAR: u64 = 1 << 30;

pub struct Disk {
    dir: PathBuf,
    reserve: u64,
    /// The last reading of the free space, and when: a `statvfs` per commit was 1-2% of the
    /// daemon's CPU under small-file and fsync loads.
    seen: Mutex<Option<(Instant, u64)>>,
}

impl Disk {
    /// Sizes the reserve for the disk holding `dir`, and gives up or makes the ballast.
    /// `memtables`: what RocksDB's memtables may hold, bytes accepted that a flush still has
    /// to write.
    pub fn open(dir: &Path, memtables: u64) -> Result<Disk> {
        let fs = crate::sys::statvfs(dir)?;
        let total = fs.blocks * fs.frsize.max(1);
        let slop = (total / 32).clamp(32 << 20, 512 << 20);
        let d = Disk { dir: dir.to_path_buf(), reserve: memtables + slop, seen: Mutex::new(None) };
        d.ballast()?;
        Ok(d)
    }

    /// Bytes kept free for removals and RocksDB's flushes.
    pub fn reserve(&self) -> u64 {
        self.reserve
    }

    /// Free bytes for unprivileged writers on the disk holding the store.
    pub fn available(&self) -> Result<u64> {
        let fs = crate::sys::statvfs(&self.dir)?;
        let avail = fs.bavail * fs.frsize.max(1);
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some((Instant::now(), avail));
        }
        Ok(avail)
    }

    /// `available` for admitting a commit: a reading up to `FRESH` old while it is more
    /// than `FAR` above the reserve (the lock is not held across the `statvfs`).
    pub fn available_for_commit(&self) -> Result<u64> {
        let seen = self.seen.lock().ok().and_then(|s| *s);
        match seen {
            Some((at, avail)) if at.elapsed() < FRESH && avail > self.reserve.saturating_add(FAR) => Ok(avail),
            _ => self.available(),
        }
    }

    /// Admits a batch of `bytes` that grows the store as `growth` says, or refuses it with
    /// ENOSPC while the reserve is still free.
    pub fn admit(&self, growth: Growth, bytes: u64, avail: u64) -> Result<()> {
        let floor = match growth {
            Growth::Frees => return Ok(()),
            Growth::Data => self.reserve,
            Growth::Meta => self.reserve / 2,
        };
        if avail < floor.saturating_add(bytes) {
            return Err(Error::NoSpace(format!(
                "{} MiB free on {}, and {} MiB are kept for deletes and the store's own writes",
                avail >> 20,
                self.dir.display(),
                floor >> 20
            )));
        }
        Ok(())
    }

    /// The ballast is given up when the disk has less free than it (others filled the disk:
    /// the store must still start), and made when there is room for it above the reserve.
    fn ballast(&self) -> Result<()> {
        let path = self.dir.join(BALLAST_NAME);
        let avail = self.available()?;
        let exists = path.exists();
        if exists && avail < BALLAST {
            log::warn!("the store's disk has {} MiB free: giving up the {} MiB ballast so the store can start", avail >> 20, BALLAST >> 20);
            std::fs::remove_file(&path)?;
        } else if !exists && avail >= self.reserve + BALLAST {
            let f = std::fs::OpenOptions::new().write(true).create_new(true).open(&path)?;
            crate::sys::fallocate(&f, BALLAST)?;
            f.sync_all()?;
        }
        Ok(())
    }
}
