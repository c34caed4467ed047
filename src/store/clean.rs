//! The cleaner: rewrites the live blocks of mostly dead segments at the end of the log
//! and deletes the segments it emptied (`compact` runs it on every segment now).

use super::*;

/// `compact` cleans every segment at most this live: the store's segments then take at most
/// 1/0.85 = 1.18 times the bytes of the blocks they hold.
const COMPACT_RATIO: f64 = 0.85;

/// The cleaner keeps an emptied segment for the log's reuse (`Log::retire`) only while the
/// disk has this much free above the reserve: a kept file is space no one else can have.
const RECYCLE_ROOM: u64 = 4 * segment::SEGMENT_SIZE;

/// What a run of the cleaner did.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct CleanReport {
    pub moved_bytes: u64,
    pub segments_deleted: u64,
    /// Blocks left in place because their bytes do not match their hash.
    pub damaged: u64,
}

impl Store {
    /// Seals the active segment and runs the cleaner over every segment at most
    /// `COMPACT_RATIO` live, then compacts RocksDB, so deleted blocks and metadata leave the
    /// disk.
    pub fn compact(&self) -> Result<CleanReport> {
        self.prune_portables()?;
        // Before the seal: its roll would take a kept segment as the log's next one, which
        // stays on disk at its old length (a test found 34 MiB left in an empty store).
        self.log.drop_recycled()?;
        {
            let _space = self.space_guard()?;
            let mut w = self.writer.lock().map_err(|_| Error::Corrupt("log writer poisoned by a panic: restart the daemon".into()))?;
            self.log.seal(&mut w)?;
        }
        self.log.seal_data()?;
        let report = self.clean(COMPACT_RATIO, true)?;
        // What is left on disk is the store's own: no file kept for recycling.
        self.log.drop_recycled()?;
        // Under the commit lock, after a sync: the compaction flushes the memtables first,
        // and no commit whose record is not durable may be in them (invariant 18).
        let _space = self.space_guard()?;
        let _w = self.writer.lock().map_err(|_| Error::Corrupt("log writer poisoned by a panic: restart the daemon".into()))?;
        self.log.sync_to(self.log.last())?;
        let mut co = CompactOptions::default();
        co.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
        for n in cf::ALL {
            self.db.compact_range_cf_opt(self.cf(n)?, None::<&[u8]>, None::<&[u8]>, &co);
        }
        Ok(report)
    }

    /// The cleaner: moves the live blocks of every segment (but the one being written) whose
    /// live bytes are at most `ratio` of its size on disk to the end of the log, then deletes
    /// the segments left empty. Its cost is the live bytes it moves plus one locator scan per
    /// segment; commits go on meanwhile (a block freed or moved under it is skipped).
    /// `wait`: for a running fsck or scrub to end; else a busy cleaner skips this round.
    pub fn clean(&self, ratio: f64, wait: bool) -> Result<CleanReport> {
        self.clean_where(wait, |segs| segs.iter().filter(|(_, size, live)| *live as f64 <= *size as f64 * ratio).map(|x| x.0).collect())
    }

    /// The GC thread's cleaning, which must not compete with the workload for long: segments
    /// with no live block go at once (no moves); live blocks are moved only while the dead
    /// bytes are over a quarter of the segments and over 256 MiB, two segments at most per
    /// round, the emptiest first (at most a quarter live).
    pub fn clean_background(&self) -> Result<CleanReport> {
        self.clean_where(false, |segs| {
            let total: u64 = segs.iter().map(|x| x.1).sum();
            let live: u64 = segs.iter().map(|x| x.2).sum();
            let dead = total.saturating_sub(live);
            let mut v: Vec<u32> = segs.iter().filter(|x| x.2 == 0).map(|x| x.0).collect();
            if dead > total / 4 && dead > 256 << 20 {
                let mut movable: Vec<&(u32, u64, u64)> = segs.iter().filter(|x| x.2 > 0 && x.2 <= x.1 / 4).collect();
                movable.sort_by_key(|x| x.2);
                v.extend(movable.iter().take(2).map(|x| x.0));
            }
            v
        })
    }

    /// Cleans the segments `pick` chooses from (segment, bytes on disk, live bytes) of every
    /// segment but the active one.
    fn clean_where(&self, wait: bool, pick: impl FnOnce(&[(u32, u64, u64)]) -> Vec<u32>) -> Result<CleanReport> {
        let mut report = CleanReport::default();
        let poisoned = |_| Error::Corrupt("cleaner state poisoned by a panic".into());
        let _cleaning = match wait {
            true => self.cleaning.lock().map_err(poisoned)?,
            false => match self.cleaning.try_lock() {
                Ok(g) => g,
                Err(std::sync::TryLockError::WouldBlock) => return Ok(report),
                Err(std::sync::TryLockError::Poisoned(e)) => return Err(poisoned(e)),
            },
        };
        // Emptied segments are kept for the log's reuse while the disk has room to spare
        // and the log will soon need one (so an idle store, or one just compacted, keeps
        // none); short of room, the kept ones go too.
        let room = self.disk.available()? > self.disk.reserve().saturating_add(RECYCLE_ROOM);
        if !room {
            self.log.drop_recycled()?;
        }
        let (active, keep) = {
            let w = self.writer.lock().map_err(|_| Error::Corrupt("log writer poisoned by a panic: restart the daemon".into()))?;
            (segment::Log::active_segment(&w), room && segment::Log::rolls_soon(&w))
        };
        let settled = self.log.settled_data()?;
        let segs: Vec<(u32, u64, u64)> = {
            let space = self.space_guard()?;
            let on_disk = self.log.segments()?;
            on_disk
                .into_iter()
                .filter(|(s, _)| *s < active || settled.contains(s))
                .map(|(s, size)| (s, size, space.segments.get(&s).copied().unwrap_or(0)))
                .collect()
        };
        let victims = pick(&segs);
        if victims.is_empty() {
            return Ok(report);
        }
        let blocks_cf = self.cf(cf::BLOCKS)?;
        for seg in &victims {
            let (start, end) = segment::segment_range(*seg);
            let mut from = keys::block_key(start).to_vec();
            loop {
                let mut batch: Vec<(u64, Hash)> = Vec::new();
                let mut ro = ReadOptions::default();
                ro.set_iterate_upper_bound(keys::block_key(end).to_vec());
                let mut it = self.db.raw_iterator_cf_opt(blocks_cf, ro);
                it.seek(&from);
                while let (Some(k), Some(v)) = (it.key(), it.value()) {
                    let loc = keys::parse_block_key(k).ok_or_else(|| Error::Corrupt(format!("bad blocks key {k:?}")))?;
                    let h: Hash = v.try_into().map_err(|_| Error::Corrupt("bad blocks value".into()))?;
                    batch.push((loc, h));
                    if batch.len() >= 1024 {
                        break;
                    }
                    it.next();
                }
                it.status()?;
                let Some(&(last, _)) = batch.last() else { break };
                from = keys::block_key(last + 1).to_vec();
                let mut t = self.txn();
                t.frees();
                for (loc, h) in &batch {
                    let Some(rec) = self.refs(h)? else { continue };
                    if rec.loc != *loc {
                        continue;
                    }
                    // Left where it is if damaged (and its segment with it): scrub reports it.
                    self.stage_move(&mut t, *h, *loc, rec.size as usize, &mut report)?;
                }
                self.commit(t, false)?;
            }
        }
        // Empty before the checkpoint below, so that it makes the emptying durable. No block
        // goes into a victim any more: new blocks go to the active segments, and a data
        // segment with a region pending is no victim (read before the counts, since the
        // commit naming a region is counted before the region is released).
        let settled = self.log.settled_data()?;
        let empty: Vec<u32> = {
            let space = self.space_guard()?;
            victims
                .into_iter()
                .filter(|s| space.segments.get(s).copied().unwrap_or(0) == 0 && (!segment::is_data(*s) || settled.contains(s)))
                .collect()
        };
        if empty.is_empty() {
            return Ok(report);
        }
        // A record in the active segment (a sealed victim may hold the last one, which the
        // checkpoint's `Flog` would name), then the moves durable in RocksDB: every log
        // segment before the one `Flog` names is replayed by no start-up, and no record a
        // start-up replays names a block in an empty data segment; those can go.
        self.commit(self.txn(), false)?;
        let before = self.checkpoint(true)?;
        for seg in empty.into_iter().filter(|s| segment::is_data(*s) || *s < before) {
            if !self.log.retire(seg, keep)? {
                report.segments_deleted += 1;
            }
        }
        let m = crate::metrics::get();
        m.cleaner_moved_bytes.inc_by(report.moved_bytes);
        m.cleaner_segments_deleted.inc_by(report.segments_deleted);
        Ok(report)
    }

    /// Reads block `h` (`size` bytes at `loc`) and stages its move into `t`, unless its
    /// segment is gone or its bytes do not match its hash (counted in `report`, logged).
    fn stage_move(&self, t: &mut Txn<'_>, h: Hash, loc: u64, size: usize, report: &mut CleanReport) -> Result<()> {
        let Some(bytes) = self.log.read(loc, size)? else { return Ok(()) };
        if self.hash(&bytes) != h {
            report.damaged += 1;
            self.damaged(&h, loc, "does not match its hash");
            return Ok(());
        }
        report.moved_bytes += bytes.len() as u64;
        t.moves.push((h, loc, bytes.into_vec()));
        Ok(())
    }
}

/// Blocks `move_in_order` moves per commit (8 MiB of 16 KiB blocks).
const MOVE_BLOCKS: usize = 512;

impl Store {
    /// How many of the stored blocks `hashes` (a file's, in file order) do not follow the
    /// one before them in the segments: (stored blocks, breaks). A file written in order
    /// has a break per record; one rewritten at random, one per block. A block named again
    /// (repeated content) counts where it is first named, as `move_in_order` lays it.
    pub fn layout_breaks(&self, hashes: &[Hash]) -> Result<(u64, u64)> {
        let mut seen: std::collections::HashSet<&Hash> = std::collections::HashSet::new();
        let firsts: Vec<&Hash> = hashes.iter().filter(|h| seen.insert(*h)).collect();
        let mut prev: Option<u64> = None;
        let (mut blocks, mut breaks) = (0, 0);
        for rec in self.ref_recs(firsts)?.into_iter().flatten() {
            blocks += 1;
            if prev.is_some_and(|end| end != rec.loc) {
                breaks += 1;
            }
            prev = Some(rec.loc + rec.size as u64);
        }
        Ok((blocks, breaks))
    }

    /// Moves blocks `hashes` (a file's, in file order) to the end of the log in that order,
    /// as the cleaner moves blocks (what any view shows stays), so that a sequential read
    /// of the file reads the segment in order (`defrag`). A block listed again, freed or
    /// moved meanwhile is skipped; the segments left sparser are the cleaner's.
    pub fn move_in_order(&self, hashes: &[Hash]) -> Result<CleanReport> {
        let mut report = CleanReport::default();
        // One mover at a time: the cleaner's moves and these would undo each other.
        let _cleaning = self.cleaning.lock().map_err(|_| Error::Corrupt("cleaner state poisoned by a panic".into()))?;
        let mut seen: std::collections::HashSet<Hash> = std::collections::HashSet::new();
        let todo: Vec<Hash> = hashes.iter().filter(|h| seen.insert(**h)).copied().collect();
        for chunk in todo.chunks(MOVE_BLOCKS) {
            let batch: Vec<(Hash, u64, usize)> =
                chunk.iter().zip(self.ref_recs(chunk)?).filter_map(|(h, r)| r.map(|r| (*h, r.loc, r.size as usize))).collect();
            // All asked of the disk at once, then read in turn (`read_runs`).
            for &(_, loc, size) in &batch {
                self.log.prefetch(loc, size);
            }
            let mut t = self.txn();
            for (h, loc, size) in batch {
                self.stage_move(&mut t, h, loc, size, &mut report)?;
            }
            self.commit(t, false)?;
        }
        crate::metrics::get().cleaner_moved_bytes.inc_by(report.moved_bytes);
        Ok(report)
    }
}
