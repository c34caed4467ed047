//! `clonefs defrag VOL[@SNAP]`: lays the blocks of a view's files back in file order. A
//! file's blocks go to the log in the order its flushes write them; after random writes
//! they lie scattered, and a cold sequential read of the file becomes one disk read per
//! block (0.6 of a file written in order, and bounded by the disk's random reads). Each
//! stretch of a file whose blocks mostly do not follow each other has them moved to the
//! end of the log in file order (`Store::move_in_order`): what every view shows stays, and
//! snapshots and clones sharing the blocks read them in order too. The segments left
//! sparser are the cleaner's (`compact` gives their space back now).

use super::view::View;
use crate::error::Result;
use crate::store::Store;
use crate::volume::Kind;

/// Block indexes looked at (and moved) together: a stretch of a file (64 MiB of 16 KiB
/// blocks), so memory stays bounded for any file size.
const STRETCH: u64 = 4096;
/// A stretch is moved when more than one block in this many does not follow the one
/// before it: a file written in order breaks once per record (8 MiB flushes), one
/// rewritten at random at nearly every block.
const BREAK_EVERY: u64 = 8;
/// Stretches of fewer stored blocks stay: a read of them is a few requests anyway.
const MIN_BLOCKS: u64 = 16;
/// Inode numbers scanned at a time.
const INODES_PER_SCAN: u64 = 4096;

#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct DefragReport {
    /// Regular files looked at, and those that had a stretch moved.
    pub files: u64,
    pub defragmented: u64,
    pub moved_bytes: u64,
    /// Blocks left in place because their bytes do not match their hash (`scrub` names them).
    pub damaged: u64,
}

/// Defragments every file of `view` (block size `bs`) of `store`.
pub fn run(store: &Store, view: &View, bs: u64) -> Result<DefragReport> {
    let mut report = DefragReport::default();
    let last = view.max_ino()?;
    let mut from = 0;
    while from <= last {
        let to = from.saturating_add(INODES_PER_SCAN);
        for (ino, rec) in view.inode_records(from, to)? {
            if rec.kind != Kind::File || rec.size == 0 {
                continue;
            }
            report.files += 1;
            let mut moved = false;
            let blocks = rec.size.div_ceil(bs);
            let mut at = 0;
            while at < blocks {
                let end = blocks.min(at + STRETCH);
                let hashes: Vec<_> = view.extents(ino, at, end)?.into_iter().map(|(_, _, h)| h).collect();
                let (stored, breaks) = store.layout_breaks(&hashes)?;
                if stored >= MIN_BLOCKS && breaks * BREAK_EVERY > stored {
                    let r = store.move_in_order(&hashes)?;
                    report.moved_bytes += r.moved_bytes;
                    report.damaged += r.damaged;
                    moved = true;
                }
                at = end;
            }
            report.defragmented += moved as u64;
        }
        if to == u64::MAX {
            break;
        }
        from = to;
    }
    Ok(report)
}
