//! Purges: the data, xattrs and record of an inode with no names left and nothing holding
//! it, now (big files, in bounded batches) or queued with others (small ones).

use super::*;

impl Volume {
    /// Removes an orphan (no names left, no open handles): data first, in bounded batches
    /// (the orphan marker stays meanwhile, so a crash leaves work the next start finishes),
    /// then xattrs and record in one batch.
    fn purge(&self, ino: u64, size: u64, logged: &BTreeSet<u64>) -> FsResult<()> {
        let blocks = size.div_ceil(self.bs);
        let mut from = 0;
        while from < blocks {
            let to = from.saturating_add(PURGE_BATCH).min(blocks);
            // Looked up under the batch's pins (invariant 26: a flatten's copy committed in
            // between would be left behind with its reference).
            let mut t = self.txn()?;
            let found = self.view.extents(ino, from, to)?;
            if !found.is_empty() {
                t.frees();
                for (idx, at, h) in found {
                    t.drop_extent(ino, idx, at, h)?;
                }
                t.commit(false)?;
            }
            from = to;
        }
        let mut t = self.txn()?;
        t.frees();
        self.stage_purge(&mut t, ino, logged)?;
        Ok(t.commit(false)?)
    }

    /// Purges `ino` if it has no names and nothing holds it (the namespace lock first, as
    /// for an unlink).
    pub(super) fn purge_unheld(&self, ino: u64, node: &table::NodeRef) -> FsResult<()> {
        let _g = self.ns()?;
        let mut n = lock(node)?;
        if n.rec.nlink == 0 && !n.purged && !self.held(&n) {
            return self.purge_gone(ino, &mut n);
        }
        Ok(())
    }

    /// Forgets an inode with no names and no open handles (an orphan in the store) and purges
    /// it: a small one later with others (`defer_purge`), a big one now in bounded batches.
    /// Its unsaved data is dropped, never written.
    pub(super) fn purge_gone(&self, ino: u64, n: &mut Node) -> FsResult<()> {
        let (size, blocks, logged) = (n.rec.size, n.rec.blocks, std::mem::take(&mut n.logged));
        self.forget_node(ino, n)?;
        if blocks <= PURGE_BATCH {
            self.defer_purge(ino, blocks, logged)
        } else {
            self.purge(ino, size, &logged)
        }
    }

    /// Queues the purge of an unlinked small file (an orphan in the store, so a crash
    /// leaves it to the next start); purges the queue when it holds too many blocks.
    fn defer_purge(&self, ino: u64, blocks: u64, logged: BTreeSet<u64>) -> FsResult<()> {
        let queued = {
            let mut q = self.deferred.lock().map_err(|_| Error::Corrupt("purge queue poisoned".into()))?;
            q.files.push((ino, blocks + 1, logged));
            q.weight += blocks + 1;
            q.weight
        };
        if queued > DEFERRED_MAX {
            self.purge_deferred()?;
        }
        Ok(())
    }

    /// Purges the unlinked files `defer_purge` queued, in batches of up to `DEFERRED_BATCH`
    /// blocks. Run by the flusher, and before what must see the space back: a snapshot's
    /// flush, `statfs`, a refused quota.
    pub fn purge_deferred(&self) -> FsResult<()> {
        let _one = self.purging.lock().map_err(|_| Error::Corrupt("purge lock poisoned".into()))?;
        let queue = || self.deferred.lock().map_err(|_| Error::Corrupt("purge queue poisoned".into()));
        loop {
            // The queue's lock only picks the batch: held across the commit (0.16-0.65 s for
            // 4,096 files), it stalled every unlink that queued a file meanwhile.
            let (n, weight, batch) = {
                let q = queue()?;
                if q.files.is_empty() {
                    return Ok(());
                }
                let (mut n, mut weight) = (0, 0);
                while n < q.files.len() && (n == 0 || weight + q.files[n].1 <= DEFERRED_BATCH) {
                    weight += q.files[n].1;
                    n += 1;
                }
                // Each inode once: staged twice, its blocks would be counted off twice.
                let mut batch: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
                for (ino, _, logged) in &q.files[..n] {
                    batch.entry(*ino).or_default().extend(logged.iter().copied());
                }
                (n, weight, batch)
            };
            let mut t = self.txn()?;
            t.frees();
            for (ino, logged) in &batch {
                self.stage_purge(&mut t, *ino, logged)?;
            }
            t.commit(false)?;
            // Still the first `n`: under `purging` the queue only grew at its end.
            let mut q = queue()?;
            q.files.drain(..n);
            q.weight -= weight;
        }
    }

    /// Stages the removal of inode `ino` (data, xattrs, record) and of the `W` records of
    /// its `logged` blocks.
    fn stage_purge(&self, t: &mut ViewTxn<'_>, ino: u64, logged: &BTreeSet<u64>) -> FsResult<()> {
        for idx in logged {
            t.drop_written(ino, *idx)?;
        }
        Ok(t.purge_inode(ino)?)
    }

    /// Purges orphans a stop left: files unlinked while open, or whose deferred purge it cut short.
    pub(super) fn purge_orphans(&self) -> FsResult<()> {
        for ino in self.view.orphans()? {
            log::info!("volume {}: removing orphan inode {ino}", self.name());
            match self.view.inode(ino)? {
                // Never an inode that has names: only the mark goes.
                Some(r) if r.nlink > 0 => {
                    log::warn!("volume {}: orphan mark on inode {ino}, which has {} links; dropping the mark", self.name(), r.nlink);
                    let mut t = self.txn()?;
                    t.unmark_orphan(ino)?;
                    t.commit(false)?;
                }
                r => self.purge(ino, r.map(|r| r.size).unwrap_or(0), &BTreeSet::new())?,
            }
        }
        Ok(())
    }
}
