//! Commits: a `Txn`'s reference deltas applied under the commit lock, its new blocks
//! written (ahead into a data segment when large), its log record appended and its batch
//! applied to RocksDB; and the space counters each commit keeps exact.

use super::*;

/// A commit whose new blocks come to this many bytes writes them ahead (`Store::prewrite`).
const PREWRITE_MIN: u64 = 1 << 20;

impl Store {
    pub fn txn(&self) -> Txn<'_> {
        Txn { store: self, frees: false, limit: None, batch: WriteBatch::default(), refs: Vec::new(), moves: Vec::new(), set_views: Vec::new(), ahead: None }
    }

    /// Writes `txn` atomically. Under the commit lock, in order: reference deltas are
    /// applied (a block's bytes are stored when its count leaves zero, and dropped when it
    /// returns to zero), the record with the new blocks (a large commit's were written ahead,
    /// without the lock, into a data segment) and the batch is appended to the log,
    /// and the batch is applied to RocksDB (without its WAL). With `sync`, the log is synced
    /// after the lock is released, shared with other committers (invariant 17). Returns the
    /// record's seq (`sync_to` makes it durable later).
    pub(super) fn commit(&self, mut txn: Txn<'_>, sync: bool) -> Result<u64> {
        // Read before the commit lock: statvfs is a syscall, and a commit or two racing past
        // the same figure stays well inside the reserve.
        let avail = self.disk.available_for_commit()?;
        let pre = match txn.ahead.take() {
            Some(tried) => tried,
            None => self.prewrite(&txn, avail),
        };
        // `pre` is released after the commit, as it goes out of scope.
        self.commit_with(txn, sync, avail, pre.as_ref())
    }

    /// The new blocks of a large commit, written and synced into a data segment before the
    /// commit lock is taken, so that other commits (fsyncs) do not wait for their write:
    /// hash -> locator. None for a small commit, or when the disk's reserve or an error
    /// says no (the commit's record then holds them, and the commit reports the error).
    fn prewrite(&self, txn: &Txn<'_>, avail: u64) -> Option<Prewrite<'_>> {
        let adds = || txn.refs.iter().filter_map(|(h, _, d, data)| data.as_ref().filter(|_| *d > 0).map(|b| (h, b.as_slice())));
        // Every commit passes here (fsyncs, unlinks): a small one leaves after one sum.
        if adds().map(|x| x.1.len() as u64).sum::<u64>() < PREWRITE_MIN {
            return None;
        }
        let mut seen = records::BlockSet::default();
        let new: Vec<(&Hash, &[u8])> = adds().filter(|x| seen.insert(*x.0)).collect();
        // Blocks stored already are not written again (a hint: the commit decides under the
        // lock, and a block stored meanwhile leaves its prewritten copy dead).
        let refs_cf = self.cf(cf::REFS).ok()?;
        let stored = self.db.batched_multi_get_cf(refs_cf, new.iter().map(|x| x.0), false);
        let new: Vec<(&Hash, &[u8])> = new.into_iter().zip(stored).filter(|(_, s)| matches!(s, Ok(None))).map(|(x, _)| x).collect();
        let bytes: u64 = new.iter().map(|x| x.1.len() as u64).sum();
        if bytes < PREWRITE_MIN || self.disk.admit(disk::Growth::Data, bytes, avail).is_err() {
            return None;
        }
        let blocks: Vec<&[u8]> = new.iter().map(|x| x.1).collect();
        match self.log.prewrite(&blocks) {
            Ok(Some(p)) => Some(Prewrite { log: &self.log, seg: p.seg, locs: new.iter().map(|x| *x.0).zip(p.locs).collect() }),
            Ok(None) => None,
            Err(e) => {
                log::warn!("writing {bytes} bytes of blocks ahead of their commit failed ({e}); the commit's record holds them");
                None
            }
        }
    }

    /// `commit` from the commit lock on, with the blocks `pre` wrote ahead.
    fn commit_with(&self, mut txn: Txn<'_>, sync: bool, avail: u64, pre: Option<&Prewrite>) -> Result<u64> {
        let mut space = self.space_guard()?;
        let mut w = self.writer.lock().map_err(|_| Error::Corrupt("log writer poisoned by a panic: restart the daemon".into()))?;
        if let Some(why) = &w.broken {
            return Err(Error::Db(format!("the store stopped taking writes ({why}); restart the daemon")));
        }
        let mut touched: HashMap<u64, LineageSpace> = HashMap::new();
        let views: HashMap<u64, ViewSpace> = txn.set_views.drain(..).collect();
        let mut new_space = (space.physical, space.blocks);
        let mut seg_delta: HashMap<u32, i64> = HashMap::new();
        let mut dedup = 0u64;
        // Blocks this record stores, in staging order (a file's blocks in file order):
        // (hash, after, bytes, was it a move from this locator).
        let mut stored: Vec<(Hash, RefRec, Bytes, Option<u64>)> = Vec::new();
        let refs_cf = self.cf(cf::REFS)?;
        let blocks_cf = self.cf(cf::BLOCKS)?;
        let cat = self.cf(cf::CATALOG)?;
        // The writes of `refs` (hash -> record, None deletes) and `blocks` (locator -> hash)
        // go into the batch sorted, after the rest: each memtable insert then starts next to
        // the one before instead of at the top of the skip list. The sort is stable, so a
        // key written twice keeps its last write last.
        let mut ref_ops: Vec<(Hash, Option<Vec<u8>>)> = Vec::new();
        let mut block_ops: Vec<(u64, Option<Hash>)> = Vec::new();
        if !txn.refs.is_empty() {
            // Group deltas by hash, keeping one copy of the bytes, in the order staged.
            let mut by_hash: records::BlockMap<(Vec<(u64, i64)>, Option<Bytes>)> = Default::default();
            let mut hashes: Vec<Hash> = Vec::new();
            for (h, l, d, data) in txn.refs.drain(..) {
                let e = by_hash.entry(h).or_insert_with(|| {
                    hashes.push(h);
                    Default::default()
                });
                e.0.push((l, d));
                if e.1.is_none() {
                    e.1 = data;
                }
            }
            let current = self.db.batched_multi_get_cf(refs_cf, hashes.iter(), false);
            for (h, cur) in hashes.iter().zip(current) {
                let before = match cur? {
                    Some(v) => RefRec::decode(&v)?,
                    None => RefRec::default(),
                };
                let (deltas, data) = by_hash.remove(h).unwrap_or_default();
                let mut after = before.clone();
                for (l, d) in deltas {
                    after.add(l, d)?;
                }
                if after.owners == before.owners {
                    continue;
                }
                if let (false, Some(d)) = (before.owners.is_empty(), &data) {
                    dedup += d.len() as u64;
                }
                let s = if before.owners.is_empty() {
                    data.as_ref().ok_or_else(|| Error::Corrupt("reference to a block that is not stored".into()))?.len() as u64
                } else {
                    before.size as u64
                };
                after.size = s as u32;
                account(&space, &mut touched, &before, &after, s);
                if before.owners.is_empty() {
                    new_space.0 += s;
                    new_space.1 += 1;
                    if !after.owners.is_empty() {
                        stored.push((*h, after, data.unwrap_or_default(), None));
                        continue;
                    }
                }
                if after.owners.is_empty() {
                    new_space = match (new_space.0.checked_sub(s), new_space.1.checked_sub(1)) {
                        (Some(p), Some(b)) => (p, b),
                        _ => return Err(Error::Corrupt(format!("store space below zero freeing a block of {s} bytes"))),
                    };
                    if !before.owners.is_empty() {
                        ref_ops.push((*h, None));
                        block_ops.push((before.loc, None));
                        *seg_delta.entry(segment::split(before.loc).0).or_default() -= s as i64;
                    }
                } else {
                    ref_ops.push((*h, Some(after.encode())));
                }
            }
            if let Some((l, q, vol)) = &txn.limit {
                let before = space.lineages.get(l).map_or(0, |s| s.referenced);
                if let Some(after) = touched.get(l).map(|s| s.referenced).filter(|a| *a > before && *a > *q) {
                    // Nothing is written yet: the whole batch is refused.
                    return Err(Error::Quota(format!("volume {vol} would hold {after} bytes of its own, over its quota of {q}")));
                }
            }
            for (l, ls) in &touched {
                txn.batch.put_cf(cat, keys::catalog::space(*l), ls.encode());
            }
            let mut stats = new_space.0.to_le_bytes().to_vec();
            stats.extend_from_slice(&new_space.1.to_le_bytes());
            txn.batch.put_cf(cat, keys::catalog::STORE_STATS, stats);
        }
        if !txn.moves.is_empty() {
            let hashes: Vec<Hash> = txn.moves.iter().map(|m| m.0).collect();
            let current = self.db.batched_multi_get_cf(refs_cf, hashes.iter(), false);
            for ((h, from, data), cur) in txn.moves.drain(..).zip(current) {
                // Moved only if it is still stored where the cleaner read it.
                if let Some(v) = cur? {
                    let rec = RefRec::decode(&v)?;
                    if rec.loc == from && rec.size as usize == data.len() && !stored.iter().any(|x| x.0 == h) {
                        stored.push((h, rec, data.into(), Some(from)));
                    }
                }
            }
        }
        // Where a stored block was written ahead (not a move), else into this record.
        let ahead = |h: &Hash, from: &Option<u64>| pre.filter(|_| from.is_none()).and_then(|p| p.locs.get(h).copied());
        let in_record = |x: &&(Hash, RefRec, Bytes, Option<u64>)| ahead(&x.0, &x.3).is_none();
        let data_len: u64 = stored.iter().filter(in_record).map(|x| x.2.len() as u64).sum();
        let plan = self.log.plan(&mut w, data_len)?;
        let mut at = 0;
        for (h, rec, data, from) in stored.iter_mut() {
            if let Some(from) = from {
                block_ops.push((*from, None));
                *seg_delta.entry(segment::split(*from).0).or_default() -= data.len() as i64;
            }
            rec.loc = match ahead(h, from) {
                Some(loc) => loc,
                None => {
                    at += data.len() as u64;
                    plan.locator(at - data.len() as u64)
                }
            };
            *seg_delta.entry(segment::split(rec.loc).0).or_default() += data.len() as i64;
            ref_ops.push((*h, Some(rec.encode())));
            block_ops.push((rec.loc, Some(*h)));
        }
        ref_ops.sort_by(|a, b| a.0.cmp(&b.0));
        for (h, op) in ref_ops {
            match op {
                Some(v) => txn.batch.put_cf(refs_cf, h, v),
                None => txn.batch.delete_cf(refs_cf, h),
            }
        }
        block_ops.sort_by_key(|x| x.0);
        for (loc, op) in block_ops {
            match op {
                Some(h) => txn.batch.put_cf(blocks_cf, keys::block_key(loc), h),
                None => txn.batch.delete_cf(blocks_cf, keys::block_key(loc)),
            }
        }
        let mut segments = Vec::with_capacity(seg_delta.len());
        for (seg, d) in seg_delta {
            let now = space.segments.get(&seg).copied().unwrap_or(0) as i64 + d;
            if now < 0 {
                return Err(Error::Corrupt(format!("segment {seg} live bytes below zero")));
            }
            txn.batch.put_cf(cat, keys::catalog::segment(seg), (now as u64).to_le_bytes());
            segments.push((seg, now as u64));
        }
        for (l, vs) in &views {
            txn.batch.put_cf(cat, keys::catalog::view(*l), vs.encode());
        }
        txn.batch.put_cf(cat, keys::catalog::LOG_MARK, plan.mark.encode());
        let growth = if txn.frees {
            disk::Growth::Frees
        } else if new_space.0 > space.physical {
            disk::Growth::Data
        } else {
            disk::Growth::Meta
        };
        self.disk.admit(growth, data_len + txn.batch.size_in_bytes() as u64, avail)?;
        let blocks: Vec<&[u8]> = stored.iter().filter(in_record).map(|x| x.2.as_slice()).collect();
        let seq = self.log.write(&mut w, plan, &blocks, txn.batch.data())?;
        let meta = txn.batch.size_in_bytes() as u64;
        let stored_bytes: u64 = stored.iter().map(|x| x.2.len() as u64).sum();
        if let Err(e) = self.db.write_opt(txn.batch, &no_wal()) {
            // The record is in the log but RocksDB refused the batch: a restart replays it,
            // and until then nothing may build on a state the store does not hold.
            log::error!("commit {seq} is logged but RocksDB refused it ({e}); restart the daemon to replay it");
            w.broken = Some(format!("commit {seq} logged but not applied: {e}"));
            return Err(e.into());
        }
        space.physical = new_space.0;
        space.blocks = new_space.1;
        for (l, ls) in touched {
            space.lineages.insert(l, ls);
        }
        space.views.extend(views);
        for (seg, live) in segments {
            space.segments.insert(seg, live);
        }
        w.meta_since_checkpoint += meta;
        let m = crate::metrics::get();
        m.commits.inc();
        m.stored_bytes.inc_by(stored_bytes);
        m.dedup_bytes.inc_by(dedup);
        // The flusher checkpoints past one `checkpoint_bytes` (with most of the log synced
        // before it takes the lock); this is the backstop if it falls behind.
        if w.meta_since_checkpoint >= 4 * self.checkpoint_bytes || w.since_checkpoint >= 4 * CHECKPOINT_LOG {
            // The commit is done whatever happens here: a failed checkpoint is retried.
            if let Err(e) = self.checkpoint_locked(&mut w) {
                log::warn!("checkpoint after commit {seq} failed: {e}");
            }
        }
        drop(w);
        drop(space);
        if sync {
            self.sync_to(seq)?;
        }
        Ok(seq)
    }

    /// Makes every commit up to record `seq` durable (one `commit` returned).
    pub fn sync_to(&self, seq: u64) -> Result<()> {
        // A caller's sync (not a checkpoint's, which syncs the log itself): keeps the runway.
        self.log.wants_syncs();
        self.log.sync_to(seq)
    }
}

/// Updates the space counters of every lineage whose relation to one block changed.
fn account(
    space: &Space,
    touched: &mut HashMap<u64, LineageSpace>,
    before: &RefRec,
    after: &RefRec,
    size: u64,
) {
    let get = |l: u64, touched: &mut HashMap<u64, LineageSpace>| -> LineageSpace {
        *touched.entry(l).or_insert_with(|| space.lineages.get(&l).copied().unwrap_or_default())
    };
    let count = |r: &RefRec, l: u64| r.owners.iter().find(|o| o.0 == l).map(|o| o.1).unwrap_or(0);
    let mut ls: Vec<u64> = before.owners.iter().chain(after.owners.iter()).map(|o| o.0).collect();
    ls.sort_unstable();
    ls.dedup();
    let sole = |r: &RefRec| if r.owners.len() == 1 { Some(r.owners[0].0) } else { None };
    for l in ls {
        let (b, a) = (count(before, l), count(after, l));
        let mut s = get(l, touched);
        s.logical = (s.logical + a * size).saturating_sub(b * size);
        if b == 0 && a > 0 {
            s.referenced += size;
        }
        if b > 0 && a == 0 {
            s.referenced = s.referenced.saturating_sub(size);
        }
        if sole(before) == Some(l) && sole(after) != Some(l) {
            s.unique = s.unique.saturating_sub(size);
        }
        if sole(after) == Some(l) && sole(before) != Some(l) {
            s.unique += size;
        }
        touched.insert(l, s);
    }
}

impl Txn<'_> {
    /// Deletes every key that starts with `prefix` (one range tombstone).
    fn delete_prefix(&mut self, cfname: &str, prefix: &[u8]) -> Result<()> {
        let end = keys::prefix_end(prefix).ok_or_else(|| Error::Invalid("cannot delete an unbounded prefix".into()))?;
        self.batch.delete_range_cf(self.store.cf(cfname)?, prefix, &end[..]);
        Ok(())
    }

    /// Writes the new blocks staged so far into a data segment now, as the commit would
    /// before taking the commit lock (`Store::prewrite`), so that what the caller stages
    /// next is decided after that slow part. Blocks staged later go into the record.
    pub fn write_ahead(&mut self) -> Result<()> {
        if self.ahead.is_none() {
            let avail = self.store.disk.available_for_commit()?;
            self.ahead = Some(self.store.prewrite(self, avail));
        }
        Ok(())
    }

    /// Adds one reference from `lineage` to the block `hash`, whose bytes are `data`.
    pub fn add_ref(&mut self, hash: Hash, lineage: u64, data: impl Into<Bytes>) {
        self.refs.push((hash, lineage, 1, Some(data.into())));
    }

    /// Drops one reference from `lineage` to the block `hash`.
    pub fn drop_ref(&mut self, hash: Hash, lineage: u64) {
        self.refs.push((hash, lineage, -1, None));
    }

    /// Adds one reference to a block already stored (file-level clone).
    pub fn share_ref(&mut self, hash: Hash, lineage: u64) {
        self.refs.push((hash, lineage, 1, None));
    }

    /// Records that block `hash` has BLAKE3 name `name` (both directions).
    pub fn note_portable(&mut self, hash: &Hash, name: &[u8; 32]) -> Result<()> {
        let cat = self.store.cf(cf::CATALOG)?;
        self.batch.put_cf(cat, keys::catalog::portable_to_local(name), hash);
        self.batch.put_cf(cat, keys::catalog::local_to_portable(hash), name);
        Ok(())
    }

    pub fn cat_put(&mut self, k: &CatKey, value: &[u8]) -> Result<()> {
        self.batch.put_cf(self.store.cf(cf::CATALOG)?, k.encode(), value);
        Ok(())
    }

    pub fn cat_delete(&mut self, k: &CatKey) -> Result<()> {
        self.batch.delete_cf(self.store.cf(cf::CATALOG)?, k.encode());
        Ok(())
    }

    /// Deletes a births entry whose version is gone.
    pub fn delete_birth(&mut self, id: &Ident, epoch: u64) -> Result<()> {
        self.batch.delete_cf(self.store.cf(cf::BIRTHS)?, keys::birth(&id.encode(), epoch, cf::tag(id.cf())));
        Ok(())
    }

    /// Deletes one extent version of a lineage being removed whole: its births entry goes
    /// with the rest of the lineage (`delete_lineage`).
    pub fn delete_extent_version(&mut self, id: &Ident, epoch: u64) -> Result<()> {
        self.batch.delete_cf(self.store.cf(cf::EXTENTS)?, keys::versioned(id.encode(), epoch));
        Ok(())
    }

    /// Deletes every versioned key and births entry of a lineage (one range deletion per
    /// column family): the caller has dropped the block references of its extents.
    pub fn delete_lineage(&mut self, lineage: u64) -> Result<()> {
        let prefix = keys::lineage_prefix(lineage);
        for cfname in cf::VERSIONED.iter().chain([&cf::BIRTHS]) {
            self.delete_prefix(cfname, &prefix)?;
        }
        for k in [CatKey::Space(lineage), CatKey::View(lineage)] {
            self.cat_delete(&k)?;
        }
        Ok(())
    }

    /// Writes version `epoch` of `id` with its births entry (invariant 9).
    pub fn put_version(&mut self, id: &Ident, epoch: u64, value: &[u8]) -> Result<()> {
        let ident = id.encode();
        self.batch.put_cf(self.store.cf(cf::BIRTHS)?, keys::birth(&ident, epoch, cf::tag(id.cf())), []);
        self.batch.put_cf(self.store.cf(id.cf())?, keys::versioned(ident, epoch), value);
        Ok(())
    }

    /// Writes a new value over version `epoch` of `id`, which exists: its births entry
    /// stays (invariant 9), so only the value is written.
    pub fn overwrite_version(&mut self, id: &Ident, epoch: u64, value: &[u8]) -> Result<()> {
        self.batch.put_cf(self.store.cf(id.cf())?, keys::versioned(id.encode(), epoch), value);
        Ok(())
    }

    /// Deletes version `epoch` of `id` with its births entry.
    pub fn delete_version(&mut self, id: &Ident, epoch: u64) -> Result<()> {
        let ident = id.encode();
        self.batch.delete_cf(self.store.cf(cf::BIRTHS)?, keys::birth(&ident, epoch, cf::tag(id.cf())));
        self.batch.delete_cf(self.store.cf(id.cf())?, keys::versioned(ident, epoch));
        Ok(())
    }

    /// Marks (or unmarks) inode `ino` of `lineage` as an orphan: unlinked while open.
    pub fn set_orphan(&mut self, lineage: u64, ino: u64, on: bool) -> Result<()> {
        let k = keys::catalog::orphan(lineage, ino);
        match on {
            true => self.batch.put_cf(self.store.cf(cf::CATALOG)?, k, []),
            false => self.batch.delete_cf(self.store.cf(cf::CATALOG)?, k),
        }
        Ok(())
    }

    /// Writes the batch atomically; with `sync`, makes it and everything before durable.
    pub fn commit(self, sync: bool) -> Result<()> {
        let store = self.store;
        store.commit(self, sync).map(|_| ())
    }

    /// Writes the batch atomically and returns its record's seq, for `Store::sync_to`.
    pub fn commit_unsynced(self) -> Result<u64> {
        let store = self.store;
        store.commit(self, false)
    }

    /// Marks the batch as one that removes things (unlink, truncate, destroy, GC): it is
    /// admitted whatever the free space, since it is what brings space back.
    pub fn frees(&mut self) {
        self.frees = true;
    }

    /// Refuses the commit if it takes `lineage`'s referenced bytes up and past `bytes`.
    pub fn limit(&mut self, lineage: u64, bytes: u64, volume: &str) {
        self.limit = Some((lineage, bytes, volume.to_string()));
    }

    /// Sets the figures of `lineage`'s head view (a new head starts as its origin).
    pub fn set_view_space(&mut self, lineage: u64, vs: ViewSpace) {
        self.set_views.push((lineage, vs));
    }

}
