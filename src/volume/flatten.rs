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
//! being opened meanwhile (their per-family ancestor lists, invariant 23, would go stale).

use super::lineage::Pins;
use super::*;
use crate::store::records::{decode_count, decode_extent};
use crate::store::{Scan, FIRST_EPOCH};

/// Inode numbers per scan of the chain, and block indexes per scan of one file.
const INODES_PER_SCAN: u64 = 4096;
const EXTENTS_PER_SCAN: u64 = 65536;
/// Versions written per batch.
const BATCH: usize = 4096;

struct Copier<'s> {
    store: &'s Store,
    lineage: u64,
    pins: Pins,
    t: Txn<'s>,
    staged: usize,
    done: u64,
}

impl<'s> Copier<'s> {
    /// Writes `value`, which the chain shows for `id` (of the parent's lineage), into the
    /// lineage at epoch 1 if a reader of the lineage falls through for it.
    fn copy(&mut self, id: &Ident, value: &[u8]) -> Result<()> {
        let own = id.with_lineage(self.lineage);
        let oldest = self.store.versions(&own)?.iter().map(|(e, _)| *e).min();
        if oldest.is_some_and(|b| self.pins.range(..b).next().is_none()) {
            return Ok(());
        }
        self.t.put_version(&own, FIRST_EPOCH, value)?;
        if let Ident::Extent { .. } = own {
            if let Some(h) = decode_extent(value)? {
                self.t.share_ref(h, self.lineage);
            }
        }
        self.staged += 1;
        self.done += 1;
        if self.staged >= BATCH {
            self.commit()?;
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<()> {
        let t = std::mem::replace(&mut self.t, self.store.txn());
        self.staged = 0;
        t.commit(false)
    }
}

/// The refusal for a volume that reads through no other lineage.
pub fn nothing(name: &str) -> Error {
    Error::Invalid(format!("{name} reads nothing through another volume (it is not a clone, nor rolled back): nothing to flatten"))
}

/// Flattens volume `name` (see the module comment); returns how many versions it wrote.
/// The caller makes sure no view reads through its lineage but those of requests that read
/// a whole chain (sends).
pub fn run(store: &Store, cat: &Catalog, name: &str) -> Result<u64> {
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
    let mut c = Copier { store, lineage: v.lineage, pins: rec.pins.clone(), t: store.txn(), staged: 0, done: 0 };
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
    // leaves the copies to GC with the lineage).
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
    cat.commit(t, true)?;
    log::info!("flattened {name}: {} versions written, parted from lineage {} epoch {}", c.done, parent.0, parent.1);
    Ok(c.done)
}
