//! Flushes: a node's dirty blocks staged (completed from the stored blocks, hashed) and
//! committed with its record, on close, fsync, the dirty limits and the flusher; the flush
//! a write starts, committed without the node's lock; fsyncs beside it (`W` records).

use super::*;

impl Volume {
    /// Stages `n`'s dirty blocks and `rec` (its new attributes) into `t`. Returns the record
    /// as written; call `applied` after the commit succeeds.
    pub(super) fn stage_node(&self, t: &mut ViewTxn<'_>, ino: u64, n: &Node, rec: InodeRec) -> FsResult<InodeRec> {
        if n.flushing.is_some() {
            // `lock` waits for the flush; a record staged now would be overwritten by it.
            return Err(Error::Corrupt(format!("inode {ino}: record staged while a flush is in flight")).into());
        }
        self.stage_blocks(t, ino, &n.dirty, &n.partial, &n.logged, rec)
    }

    /// Stages blocks `dirty` (of which only `partial`'s ranges were written) and `rec`, and
    /// drops the `W` records of those of them in `logged`.
    fn stage_blocks(
        &self,
        t: &mut ViewTxn<'_>,
        ino: u64,
        dirty: &BTreeMap<u64, Vec<u8>>,
        partial: &HashMap<u64, table::Ranges>,
        logged: &BTreeSet<u64>,
        rec: InodeRec,
    ) -> FsResult<InodeRec> {
        for idx in dirty.keys().filter(|i| logged.contains(i)) {
            t.drop_written(ino, *idx)?;
        }
        let delta = self.stage_data(t, ino, dirty, partial, rec.blocks)?;
        let rec = with_blocks(ino, rec, delta)?;
        t.put_inode(ino, &rec)?;
        Ok(rec)
    }

    /// Stages the extents of blocks `dirty` (of which only `partial`'s ranges were written,
    /// completed from the stored blocks) and returns how many stored blocks that adds.
    /// `stored`: the file's count of stored blocks (its record's); with none and no version
    /// of any extent of the file in the lineage, there is no old extent to read (a new
    /// file's first commit: `cp -a`, a compiler's output).
    fn stage_data<B: BlockBuf>(&self, t: &mut ViewTxn<'_>, ino: u64, dirty: &BTreeMap<u64, B>, partial: &HashMap<u64, table::Ranges>, stored: u64) -> FsResult<i64> {
        let mut delta = 0i64;
        // The old extents: none without stored blocks (the record counts every extent the
        // view shows of the file; fsck checks it) unless the lineage has versions of the
        // file's extents: a tombstone that an earlier truncate or punch left at an older
        // epoch, over a version a snapshot saw, shows no block but must be replaced, not left
        // under the new version where nobody sees it (GC would never find it). Else dense
        // dirty ranges (sequential writes) with one scan, sparse ones with one batched lookup.
        let olds = match (dirty.keys().next(), dirty.keys().next_back()) {
            _ if stored == 0 && !self.view.has_own_extents(ino)? => vec![None; dirty.len()],
            (Some(&first), Some(&last)) if dirty.len() > 4 && last - first < 8 * dirty.len() as u64 => {
                let m = self.view.extent_map(ino, first, last + 1)?;
                dirty.keys().map(|idx| m.get(idx).copied()).collect()
            }
            _ => self.view.extents_at(ino, &dirty.keys().copied().collect::<Vec<_>>())?,
        };
        // Partly written blocks are completed from their stored bytes, with one multi-get.
        let mut bases = HashMap::new();
        if !partial.is_empty() {
            let want: Vec<(u64, crate::volume::Hash)> = dirty
                .keys()
                .zip(&olds)
                .filter_map(|(idx, old)| match (partial.contains_key(idx), old) {
                    (true, Some((_, Some(h)))) => Some((*idx, *h)),
                    _ => None,
                })
                .collect();
            let hashes: Vec<_> = want.iter().map(|w| w.1).collect();
            for ((idx, _), b) in want.iter().zip(self.view.blocks(&hashes)?) {
                let b = b.ok_or_else(|| Error::Corrupt(format!("inode {ino} block {idx}: missing block")))?;
                bases.insert(*idx, b);
            }
        }
        let mut full = HashMap::with_capacity(partial.len());
        for (&idx, r) in partial {
            if let Some(data) = dirty.get(&idx) {
                let mut b = bases.remove(&idx).unwrap_or_default();
                b.resize(self.bs as usize, 0);
                table::overlay(&mut b, data.bytes(), r);
                full.insert(idx, Arc::new(b));
            }
        }
        // Hashing is most of a big flush's CPU: split over threads.
        let blocks: Vec<(&u64, &B)> = dirty.iter().collect();
        let exts = crate::par::map(&blocks, crate::par::threads(), 64, |&(idx, data)| match full.get(idx) {
            Some(b) => self.block_ext(b),
            None => self.block_ext(data),
        });
        for ((&(&idx, _), old), new) in blocks.iter().zip(olds).zip(exts) {
            delta += t.set_extent(ino, idx, old, new)?;
        }
        Ok(delta)
    }

    /// What a block's bytes become in the store: a block is stored without its trailing
    /// zeros (a small file's tail costs its bytes, not a block); all-zero blocks are holes.
    pub(super) fn block_ext(&self, data: &impl BlockBuf) -> Ext {
        match last_nonzero(data.bytes()) {
            None => Ext::Hole,
            Some(last) => Ext::Data(self.view.hash(&data.bytes()[..=last]), data.share(last + 1)),
        }
    }

    /// Writes out `n`'s dirty blocks, so that an operation on its stored extents (truncate,
    /// punch, block sharing) changes memory only after its own commit succeeds.
    pub(super) fn settle(&self, ino: u64, n: &mut Node) -> FsResult<()> {
        if n.dirty.is_empty() {
            return Ok(());
        }
        let rec = n.rec.clone();
        self.save_node(ino, n, rec).map(|_| ())
    }

    /// Records in memory what `stage_node` wrote.
    pub(super) fn applied(&self, ino: u64, n: &mut Node, rec: InodeRec) {
        let flushed = std::mem::take(&mut n.dirty);
        self.stored(ino, n, rec, flushed);
    }

    /// Records in memory that `rec` and the blocks `flushed` (taken out of `n.dirty`) are
    /// stored, and that nothing was written since (an fsync or a flush of every block).
    fn stored(&self, ino: u64, n: &mut Node, rec: InodeRec, mut flushed: BTreeMap<u64, Vec<u8>>) {
        n.rec = rec;
        n.meta_dirty = false;
        n.unsynced.clear();
        if !flushed.is_empty() {
            self.add_dirty(-(flushed.len() as i64));
            // Clean copies of every flushed block are stale now; keep fresh copies of the last
            // few (an appended tail, a hot page).
            self.drop_clean_if(n, |i| flushed.contains_key(&i));
            // A partly written block's buffer is not its content: keep no clean copy of it.
            flushed.retain(|idx, _| {
                n.logged.remove(idx);
                n.partial.remove(idx).is_none()
            });
            n.unfetched.retain(|i| n.partial.contains_key(i));
            for (idx, data) in flushed.into_iter().rev().take(table::CLEAN_PER_NODE) {
                self.keep_clean(n, idx, data);
            }
        }
        if n.dirty.is_empty() {
            n.dirty_since = None;
            if let Ok(mut d) = self.dirty.lock() {
                d.remove(&ino);
            }
        }
    }

    /// Writes a node's record (and its dirty blocks) in a batch of its own.
    /// Returns the commit's seq (`sync_to`).
    pub(super) fn save_node(&self, ino: u64, n: &mut Node, rec: InodeRec) -> FsResult<u64> {
        let mut t = self.txn()?;
        let rec = self.stage_node(&mut t, ino, n, rec)?;
        let seq = t.commit_unsynced()?;
        self.applied(ino, n, rec);
        Ok(seq)
    }

    /// Starts flushing `n`'s dirty blocks. Unless somebody waits for the node, they move to
    /// `flushing` and the commit is left to `finish_flush`, which runs without the lock
    /// (reading the rest of partly written blocks too): the writer goes on filling the next
    /// blocks meanwhile. Otherwise (somebody waits, or the last such flush failed) the node
    /// is saved here, under the lock, and an error goes to the caller.
    pub(super) fn begin_flush<'a>(&self, ino: u64, node: &'a NodeRef, n: MutexGuard<'a, Node>) -> FsResult<Option<Flush>> {
        let mut n = table::settled(node, n)?;
        if n.is_clean() {
            return Ok(None);
        }
        if n.waiters > 0 || n.dirty.is_empty() || n.flush_failed {
            let rec = n.rec.clone();
            self.save_node(ino, &mut n, rec)?;
            n.flush_failed = false;
            return Ok(None);
        }
        // The flush reads the stored bytes under all its partly written blocks itself.
        n.unfetched.clear();
        let blocks = Arc::new(table::Flushing {
            blocks: std::mem::take(&mut n.dirty).into_iter().map(|(i, b)| (i, Arc::new(b))).collect(),
            partial: std::mem::take(&mut n.partial),
            logged: std::mem::take(&mut n.logged),
            unsynced: std::mem::take(&mut n.unsynced),
        });
        n.flushing = Some(blocks.clone());
        n.meta_dirty = false;
        // The node's age starts again at its next write: what was dirty is the flush's now.
        // (Else a file written without pause stayed "old", and the flusher committed all
        // its dirty blocks under its lock at every tick.)
        n.dirty_since = None;
        Ok(Some(Flush { ino, node: node.clone(), blocks, rec: n.rec.clone() }))
    }

    /// Commits a flush `begin_flush` started, then records it in the node (or, if the commit
    /// failed, gives its blocks back to the node's dirty ones, to be retried and reported by
    /// the next flush, fsync or close).
    pub fn finish_flush(&self, f: Flush) -> FsResult<()> {
        let Flush { ino, node, blocks, rec } = f;
        let r = (|| -> FsResult<InodeRec> {
            let mut t = self.txn()?;
            let delta = self.stage_data(&mut t, ino, &blocks.blocks, &blocks.partial, rec.blocks)?;
            // The blocks' write (8 MiB: 12-17 ms here) goes before the seal: fsyncs of the
            // file commit beside the flush meanwhile instead of waiting for it.
            t.write_ahead()?;
            let rec = {
                // Sealed under the lock: an fsync beside this flush has committed or waits for
                // it, so the records dropped and the record written here are the newest.
                let mut n = table::lock_busy(&node)?;
                n.flush_sealed = true;
                for idx in blocks.blocks.keys() {
                    // A record an fsync rewrote for a block written again meanwhile stays: it
                    // holds those newer bytes, laid over this flush's.
                    let rewritten = n.logged.contains(idx) && n.dirty.contains_key(idx);
                    if (blocks.logged.contains(idx) || n.logged.contains(idx)) && !rewritten {
                        t.drop_written(ino, *idx)?;
                    }
                }
                with_blocks(ino, n.synced.clone().unwrap_or(rec), delta)?
            };
            t.put_inode(ino, &rec)?;
            t.commit(false)?;
            Ok(rec)
        })();
        let mut n = table::lock_busy(&node)?;
        n.flushing = None;
        n.flush_sealed = false;
        n.synced = None;
        let mut freed = 0i64;
        match &r {
            Ok(rec) => {
                freed = blocks.blocks.len() as i64;
                // Only commits wait for the flush, and those beside it store no extent, so
                // nothing else changed the block count.
                n.rec.blocks = rec.blocks;
                let Node { logged, dirty, .. } = &mut *n;
                logged.retain(|i| !blocks.blocks.contains_key(i) || dirty.contains_key(i));
                let kept = n.lookups > 0 || n.opens > 0;
                self.drop_clean_if(&mut n, |i| blocks.blocks.contains_key(&i));
                if kept {
                    // A partly written block's buffer is not its content: no clean copy of it.
                    let whole = blocks.blocks.iter().filter(|(i, _)| !blocks.partial.contains_key(i));
                    for (idx, data) in whole.rev().take(table::CLEAN_PER_NODE) {
                        if !n.dirty.contains_key(idx) {
                            self.keep_clean(&mut n, *idx, data.to_vec());
                        }
                    }
                }
                if n.is_clean() {
                    n.dirty_since = None;
                    if let Ok(mut d) = self.dirty.lock() {
                        d.remove(&ino);
                    }
                }
            }
            Err(_) => {
                for (idx, data) in &blocks.blocks {
                    let older = (data.to_vec(), blocks.partial.get(idx).cloned());
                    // What was written meanwhile goes over the older copy.
                    let (b, ranges) = match n.dirty.remove(idx) {
                        None => older,
                        Some(newer) => {
                            freed += 1;
                            let r = n.partial.remove(idx);
                            table::lay_over(Some(older), &newer, r.as_ref())
                        }
                    };
                    n.dirty.insert(*idx, b);
                    if let Some(r) = ranges {
                        n.partial.insert(*idx, r);
                    }
                }
                // Written meanwhile or not, the records are rewritten at the next fsync.
                n.logged.extend(blocks.logged.iter().copied());
                n.unsynced.extend(blocks.blocks.keys().copied());
                n.meta_dirty = true;
                n.flush_failed = true;
            }
        }
        drop(n);
        table::wake(&node);
        self.add_dirty(-freed);
        r.map(|_| ())
    }

    /// Flushes one file's dirty data; with `sync`, makes it and everything before durable.
    pub fn flush_ino(&self, ino: u64, sync: bool) -> FsResult<()> {
        let node = match self.table.get(ino, || Ok(None))? {
            Some(n) => n,
            None => {
                if sync {
                    // Gone from the view while the kernel held it open (a rollback): its
                    // writes are not there, so the fsync fails as they now do.
                    if self.view.inode(ino)?.is_none() {
                        return Err(err(libc::ENOENT));
                    }
                    self.view.sync()?;
                }
                return Ok(());
            }
        };
        let mut n = table::lock_busy(&node)?;
        // The log is synced after the node's lock is released: writers to the file go on
        // meanwhile, and fsyncs of it share one sync.
        if sync {
            let started = Instant::now();
            if let Some(seq) = self.commit_beside_flush(ino, &mut n)? {
                drop(n);
                crate::metrics::get().fsync_commits.observe(started.elapsed().as_secs_f64());
                return Ok(self.view.sync_to(seq)?);
            }
        }
        let mut n = table::settled(&node, n)?;
        // Committed by an earlier fsync, a close or the flusher: only the sync is left.
        if n.is_clean() || (sync && n.is_committed()) {
            drop(n);
            if sync {
                self.view.sync()?;
            }
            return Ok(());
        }
        if sync {
            // Timed from the lock: a wait for a flush in flight is not the commit's.
            let started = Instant::now();
            let seq = self.commit_node(ino, &mut n)?;
            drop(n);
            crate::metrics::get().fsync_commits.observe(started.elapsed().as_secs_f64());
            return Ok(self.view.sync_to(seq)?);
        }
        let rec = n.rec.clone();
        self.save_node(ino, &mut n, rec).map(|_| ())
    }

    /// An fsync while a flush of the file is in flight, without waiting for it (that flush
    /// reads the rest of every partly written block, tens of ms for 8 MiB of random writes):
    /// the blocks written since the last fsync and the flushing blocks no `W` record holds
    /// yet go into `W` records (laid over what the flush holds of them), next to the node's
    /// record, synced. No stored extent changes, so the flush's batch stays valid; when it
    /// commits it writes this record (`Node::synced`) and keeps the records of blocks
    /// written again meanwhile. Returns the commit's seq, for the caller to sync; None,
    /// having done nothing, when no flush is in flight or this does not apply (the flush
    /// is sealed, a whole block or too many to log): the caller then waits for the flush.
    fn commit_beside_flush(&self, ino: u64, n: &mut Node) -> FsResult<Option<u64>> {
        let Some(f) = n.flushing.clone() else { return Ok(None) };
        if n.flush_sealed || n.purged {
            return Ok(None);
        }
        let mut want: BTreeSet<u64> = n.unsynced.iter().filter(|i| n.dirty.contains_key(i)).copied().collect();
        want.extend(f.unsynced.iter().filter(|i| f.blocks.contains_key(i) && !n.logged.contains(i)));
        if want.len() > LOG_BESIDE_FLUSH {
            return Ok(None);
        }
        let mut records = Vec::with_capacity(want.len());
        for idx in &want {
            let below = f.blocks.get(idx).map(|b| (b.to_vec(), f.partial.get(idx).cloned()));
            let laid = match (n.dirty.get(idx), below) {
                (Some(d), below) => table::lay_over(below, d, n.partial.get(idx)),
                (None, Some(below)) => below,
                (None, None) => return Ok(None),
            };
            // A whole block is no record's: the flush stores it.
            let (bytes, Some(ranges)) = laid else { return Ok(None) };
            records.push((*idx, crate::store::records::encode_written(&ranges, &bytes)));
        }
        let mut t = self.txn()?;
        for (idx, v) in &records {
            t.put_written(ino, *idx, v)?;
        }
        t.put_inode(ino, &n.rec)?;
        let seq = t.commit_unsynced()?;
        n.logged.extend(want);
        n.unsynced.clear();
        n.meta_dirty = false;
        n.synced = Some(n.rec.clone());
        crate::metrics::get().fsyncs_beside_flush.inc();
        Ok(Some(seq))
    }

    /// The flush of a file descriptor's close (any copy of it: a fork's child closing it at
    /// exec too): commits what was written like an fsync, without the sync.
    pub fn flush_on_close(&self, ino: u64) -> FsResult<()> {
        let Some(node) = self.table.get(ino, || Ok(None))? else { return Ok(()) };
        let mut n = lock(&node)?;
        if n.is_clean() || n.is_committed() {
            return Ok(());
        }
        self.commit_node(ino, &mut n).map(|_| ())
    }

    /// Commits a dirty file (an fsync, which then syncs the returned seq; a close) like a
    /// flush, except that a partly written block is not completed: the bytes written go
    /// into the batch as a `W` record, and the block stays dirty until a later flush (the
    /// flusher's, within seconds) completes it and drops the record in the same batch. So
    /// an fsync'd small write costs no block read, nor the lookup that would tell whether
    /// a block lies under it (the flush looks it up anyway, and completes a hole with
    /// zeros); after a crash, opening the volume merges the records (`merge_written`). Its
    /// cost follows the blocks written since the last commit (`unsynced`), not the blocks
    /// held.
    pub(super) fn commit_node(&self, ino: u64, n: &mut Node) -> FsResult<u64> {
        let written: Vec<u64> = n.unsynced.iter().filter(|i| n.dirty.contains_key(i)).copied().collect();
        let partial = |i: &&u64| n.partial.contains_key(i);
        // Beside a flush in flight a new record would have to lay over the flush's copy
        // (`commit_beside_flush` does that): only blocks with a record are held then.
        let fresh = n.flushing.is_none();
        let held: BTreeSet<u64> = written.iter().filter(partial).filter(|i| fresh || n.logged.contains(i)).copied().collect();
        if held.is_empty() && n.logged.is_empty() {
            let rec = n.rec.clone();
            return self.save_node(ino, n, rec);
        }
        let rest: BTreeMap<u64, Vec<u8>> = written.iter().filter(|i| !held.contains(i)).filter_map(|i| n.dirty.remove_entry(i)).collect();
        let r = (|| -> FsResult<(InodeRec, u64)> {
            let mut t = self.txn()?;
            for idx in &held {
                let ranges = n.partial.get(idx).map(Vec::as_slice).unwrap_or_default();
                let data = n.dirty.get(idx).map(Vec::as_slice).unwrap_or_default();
                t.put_written(ino, *idx, &crate::store::records::encode_written(ranges, data))?;
            }
            let rec = self.stage_blocks(&mut t, ino, &rest, &n.partial, &n.logged, n.rec.clone())?;
            let seq = t.commit_unsynced()?;
            Ok((rec, seq))
        })();
        match r {
            Ok((rec, seq)) => {
                n.logged.extend(held);
                self.stored(ino, n, rec, rest);
                Ok(seq)
            }
            Err(e) => {
                n.dirty.extend(rest);
                Err(e)
            }
        }
    }

    /// Merges into their blocks the bytes fsyncs wrote over stored blocks (`W` records a
    /// crash left behind), one batch per file.
    pub(super) fn merge_written(&self) -> FsResult<()> {
        let mut by_ino: BTreeMap<u64, Vec<(u64, Vec<u8>)>> = BTreeMap::new();
        for (ino, idx, v) in self.view.written()? {
            by_ino.entry(ino).or_default().push((idx, v));
        }
        for (ino, recs) in by_ino {
            let mut t = self.txn()?;
            match self.view.inode(ino)? {
                Some(rec) if rec.kind == Kind::File => {
                    let (mut dirty, mut partial, mut logged) = (BTreeMap::new(), HashMap::new(), BTreeSet::new());
                    for (idx, v) in recs {
                        let (ranges, block) = crate::store::records::decode_written(&v, self.bs as usize)?;
                        dirty.insert(idx, block);
                        partial.insert(idx, ranges);
                        logged.insert(idx);
                    }
                    log::info!("volume {}: merging {} block(s) of inode {ino} written before a crash", self.name(), dirty.len());
                    self.stage_blocks(&mut t, ino, &dirty, &partial, &logged, rec)?;
                }
                // The file is gone: nothing to merge into.
                _ => {
                    for (idx, _) in recs {
                        t.drop_written(ino, idx)?;
                    }
                }
            }
            t.commit(false)?;
        }
        Ok(())
    }

    /// Flushes files whose dirty data is older than `age` (all with `age` zero).
    pub fn flush_older_than(&self, age: Duration) -> FsResult<()> {
        let inos: Vec<u64> = match self.dirty.lock() {
            Ok(d) => d.iter().copied().collect(),
            Err(_) => return Err(Error::Corrupt("dirty set poisoned".into()).into()),
        };
        let now = Instant::now();
        for ino in inos {
            if let Some(node) = self.table.get(ino, || Ok(None))? {
                let mut n = lock(&node)?;
                let old = n.dirty_since.map(|t| now.duration_since(t) >= age).unwrap_or(n.meta_dirty);
                if old && !n.is_clean() {
                    let rec = n.rec.clone();
                    self.save_node(ino, &mut n, rec)?;
                }
            }
        }
        Ok(())
    }

    /// Flushes everything and syncs the log (unmount, snapshot, shutdown).
    pub fn flush_all(&self) -> FsResult<()> {
        self.purge_deferred()?;
        self.flush_older_than(Duration::ZERO)?;
        Ok(self.view.sync()?)
    }
}
