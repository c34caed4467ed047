//! Flatten: a volume stops reading through its ancestors (as `rbd flatten`, or a NetApp
//! clone split, without copying data). What its head and snapshots read from the chain at
//! its parent pin (inode records, entries, xattrs, extents, block counts) is written into
//! its own lineage at epoch 1 wherever its own versions do not already answer; blocks are
//! shared by reference. Then the lineage drops its parent and unpins it, so GC frees what
//! only the ancestors kept (an origin destroyed, or what the clone overwrote).
//!
//! A copy at epoch 1 shows exactly where the chain showed through: a reader at epoch `e`
//! fell through for an identity when the lineage had no version of it born at or before `e`.
//! So one is needed when the lineage has no version of it, or when a pin lies below its
//! oldest one (invariant 26). The caller keeps views that read through the lineage from
//! being opened meanwhile (their per-family ancestor lists, invariant 23, would go stale),
//! but the lineage's own views may stay open, its head writing: each batch decides and
//! commits with the lineage's writers held back (`LineageState::hold_writers`) inside the
//! caller's `Hold`, and the parting sets the lineage's state `parted`, after which its
//! views read no parent level.

use super::lineage::{LineageState, Pins};
use super::*;
use crate::store::records::{decode_count, decode_extent};
use crate::store::{Scan, FIRST_EPOCH};

/// Inode numbers per scan of the chain, and block indexes per scan of one file.
const INODES_PER_SCAN: u64 = 4096;
const EXTENTS_PER_SCAN: u64 = 65536;
/// Values decided per batch: a mounted head's operations wait for one batch (about 2 ms).
const BATCH: usize = 512;

/// Runs what it is given while no operation runs on a mounted view of the lineage (FUSE
/// operations look versions up before their batch takes the pins; `Live::exclusive`).
pub type Hold<'a> = &'a dyn Fn(&mut dyn FnMut() -> Result<()>) -> Result<()>;

struct Copier<'s> {
    store: &'s Store,
    lineage: u64,
    state: Arc<LineageState>,
    hold: Hold<'s>,
    /// Identities of the lineage with the value the chain shows them, to decide.
    pending: Vec<(Ident, Vec<u8>)>,
    done: u64,
}

impl<'s> Copier<'s> {
    /// Queues `value`, which the chain shows for `id` (of the parent's lineage), for the
    /// lineage at epoch 1 (`commit` decides).
    fn copy(&mut self, id: &Ident, value: &[u8]) -> Result<()> {
        self.pending.push((id.with_lineage(self.lineage), value.to_vec()));
        if self.pending.len() >= BATCH {
            self.commit()?;
        }
        Ok(())
    }

    /// Writes the queued values a reader of the lineage falls through for, deciding by
    /// the versions and pins of now, with its writers held back until the batch is in.
    fn commit(&mut self) -> Result<()> {
        let (store, lineage, state) = (self.store, self.lineage, &self.state);
        // Whether the lineage's own versions answer for `own` at every pin (none lies below
        // the oldest). Once true it stays true while the chain shows `own` (a writer replaces
        // a version of it, or hides it under a tombstone, and new pins come at the head
        // epoch), so what answers now is left out before the writers are held back; the
        // pins for that are read after the versions.
        let oldest = |own: &Ident| -> Result<Option<u64>> { Ok(store.versions(own)?.iter().map(|(e, _)| *e).min()) };
        let answers = |oldest: Option<u64>, pins: &Pins| oldest.is_some_and(|b| pins.range(..b).next().is_none());
        let firsts = self.pending.iter().map(|(own, _)| oldest(own)).collect::<Result<Vec<_>>>()?;
        let pins_now = state.pins()?.clone();
        let pending: Vec<(Ident, Vec<u8>)> =
            std::mem::take(&mut self.pending).into_iter().zip(firsts).filter(|(_, b)| !answers(*b, &pins_now)).map(|(x, _)| x).collect();
        if pending.is_empty() {
            return Ok(());
        }
        let mut written = 0;
        (self.hold)(&mut || {
            let pins = state.hold_writers()?;
            let mut t = store.txn();
            written = 0;
            for (own, value) in &pending {
                if answers(oldest(own)?, &pins) {
                    continue;
                }
                t.put_version(own, FIRST_EPOCH, value)?;
                if let Ident::Extent { .. } = own {
                    if let Some(h) = decode_extent(value)? {
                        t.share_ref(h, lineage);
                    }
                }
                written += 1;
            }
            t.commit(false)
        })?;
        self.done += written;
        Ok(())
    }
}

/// The refusal for a volume that reads through no other lineage.
pub fn nothing(name: &str) -> Error {
    Error::Invalid(format!("{name} reads nothing through another volume (it is not a clone, nor rolled back): nothing to flatten"))
}

/// Flattens volume `name` (see the module comment); returns how many versions it wrote.
/// The caller makes sure no view reads through its lineage but the lineage's own (held by
/// `hold`) and those of requests that read a whole chain (sends).
pub fn run(store: &Store, cat: &Catalog, name: &str, hold: Hold<'_>) -> Result<u64> {
    // GC waits: it decides by pins this reads, and would act on the parent meanwhile.
    let _gc = cat.gc.lock().map_err(|_| Error::Corrupt("gc lock poisoned".into()))?;
    let (v, rec) = {
        let _g = cat.guard()?;
        let v = Catalog::get(store, name)?;
        let rec = Catalog::lineage(store, v.lineage)?;
        (v, rec)
    };
    let Some(parent) = rec.parent else { return Err(nothing(name)) };
    let chain = Catalog::parents(store, v.lineage)?;
    let state = cat.lineage_state(store, v.lineage)?;
    let mut c = Copier { store, lineage: v.lineage, state, hold, pending: Vec::new(), done: 0 };
    let last = chain.iter().map(|(l, _)| store.last_ino(*l)).collect::<Result<Vec<_>>>()?.into_iter().flatten().max().unwrap_or(0);
    let mut from = 0;
    while from <= last {
        let to = from.saturating_add(INODES_PER_SCAN);
        for (id, f) in store.scan_visible(&Scan::Inodes { from, to }, &chain)? {
            let (Ident::Inode { ino, .. }, Some(inode)) = (&id, InodeRec::decode(&f.value)?) else { continue };
            let ino = *ino;
            c.copy(&id, &f.value)?;
            for (xid, x) in store.scan_visible(&Scan::Xattrs { ino }, &chain)? {
                if !crate::store::records::is_tombstone(&x.value) {
                    c.copy(&xid, &x.value)?;
                }
            }
            match inode.kind {
                Kind::Dir => {
                    for (did, d) in store.scan_visible(&Scan::Dirents { dir: ino }, &chain)? {
                        if DirentRec::decode(&d.value)?.is_some() {
                            c.copy(&did, &d.value)?;
                        }
                    }
                }
                Kind::File => {
                    let blocks = inode.size.div_ceil(v.block_size as u64);
                    let mut at = 0;
                    while at < blocks {
                        let end = at.saturating_add(EXTENTS_PER_SCAN);
                        for (eid, e) in store.scan_visible(&Scan::Extents { ino, from: at, to: end }, &chain)? {
                            if decode_extent(&e.value)?.is_some() {
                                c.copy(&eid, &e.value)?;
                            }
                        }
                        at = end;
                    }
                }
                _ => {}
            }
        }
        from = to;
    }
    for first in 0..=u8::MAX {
        for (id, f) in store.scan_visible(&Scan::Counts { first }, &chain)? {
            if decode_count(&f.value)? > 0 {
                c.copy(&id, &f.value)?;
            }
        }
    }
    c.commit()?;

    // Part from the parent, if nothing moved meanwhile (a rollback or destroy of the volume
    // leaves the copies to GC with the lineage). Held: the lineage's open views read no
    // parent level from the commit on (it sets their state `parted`), and none is half-way
    // through a lookup in the chain then, which GC is about to shorten.
    hold(&mut || {
        let _g = cat.guard()?;
        let mut now = Catalog::get(store, name)?;
        let mut rec = Catalog::lineage(store, v.lineage)?;
        if now.id != v.id || now.lineage != v.lineage || rec.parent != Some(parent) {
            return Err(Error::Conflict(format!("{name} was rolled back or replaced while it was flattened; run flatten again")));
        }
        let mut t = cat.begin(store);
        rec.parent = None;
        let mut prec = Catalog::lineage(store, parent.0)?;
        Catalog::unpin(&mut t, &mut prec, parent.1)?;
        Catalog::put_lineage(&mut t, &prec)?;
        Catalog::put_lineage(&mut t, &rec)?;
        if now.origin_at == Some(parent) {
            now.origin = None;
            now.origin_at = None;
            Catalog::put_volume(&mut t, &now)?;
        }
        cat.commit(t, true)
    })?;
    log::info!("flattened {name}: {} versions written, parted from lineage {} epoch {}", c.done, parent.0, parent.1);
    Ok(c.done)
}
