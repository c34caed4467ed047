//! Lineages: what a volume writes into, and the rules every reader, writer and GC applies to
//! their versions.
//!
//! The catalog's `L` records are the truth on disk. In memory, `Lineages` holds one
//! `LineageState` per lineage that some view has asked for; only the catalog writes it, after
//! the commit that wrote the record (`Catalog::commit`), and mounted views only read it. So a
//! pin that GC drops, or a head that a snapshot moves, is seen by every view at once: there is
//! no copy to keep in sync by hand (invariant 14 in docs/ARCHITECTURE.md).

use super::LineageRec;
use crate::error::{Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Pinned epochs of a lineage (snapshots and clones' parents) with how many hold each.
pub type Pins = BTreeMap<u64, u32>;

/// The visibility rule (invariant 10): a version born at `b` and superseded at `d` (None: it
/// is still the newest of its key) is seen by pin `p` when `b <= p < d`, and by the head when
/// it is the newest.
pub fn seen(pins: &Pins, head: bool, b: u64, d: Option<u64>) -> bool {
    match d {
        Some(d) => pinned_between(pins, b, d),
        None => head || pins.range(b..).next().is_some(),
    }
}

/// Whether a pin lies in `[from, to)`: a version born at `from` and replaced at `to` must
/// stay for it (invariant 8). Written here once; writers and GC both ask it.
pub fn pinned_between(pins: &Pins, from: u64, to: u64) -> bool {
    from < to && pins.range(from..to).next().is_some()
}

impl LineageRec {
    /// Drops one count of pin `epoch`. Returns true when the last count went (the epoch is no
    /// longer pinned and its versions need GC).
    pub fn unpin(&mut self, epoch: u64) -> bool {
        match self.pins.get_mut(&epoch) {
            Some(c) if *c > 1 => {
                *c -= 1;
                false
            }
            Some(_) => {
                self.pins.remove(&epoch);
                true
            }
            None => false,
        }
    }

    /// Adds one count to pin `epoch`.
    pub fn pin(&mut self, epoch: u64) {
        *self.pins.entry(epoch).or_default() += 1;
    }
}

/// The live state of one lineage, shared by the catalog (its only writer) and every view that
/// reads or writes the lineage.
#[derive(Debug)]
pub struct LineageState {
    id: u64,
    /// The head epoch; 0 once no volume writes here (epochs start at 1).
    head: AtomicU64,
    /// Writers hold the read side from the moment they decide whether a version dies in
    /// place until their batch is committed, so a pin removed by the catalog is never acted
    /// on half-way: the catalog's write side waits for those batches, and GC work for the
    /// removed pin starts only after.
    pins: RwLock<Pins>,
    /// The lineage has no parent (any more: a flatten parted it while its views were
    /// open). Its views read no parent level then, whatever their chain was at opening.
    parted: AtomicBool,
}

impl LineageState {
    fn new(rec: &LineageRec) -> LineageState {
        LineageState {
            id: rec.id,
            head: AtomicU64::new(rec.head.unwrap_or(0)),
            pins: RwLock::new(rec.pins.clone()),
            parted: AtomicBool::new(rec.parent.is_none()),
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// The epoch the head writes at, if the lineage still has a head.
    pub fn head(&self) -> Option<u64> {
        match self.head.load(Ordering::SeqCst) {
            0 => None,
            e => Some(e),
        }
    }

    /// The pins, held for one batch (see `pins`). Take it once per batch and thread.
    pub fn pins(&self) -> Result<RwLockReadGuard<'_, Pins>> {
        self.pins.read().map_err(|_| Error::Corrupt(format!("lineage {} state poisoned by a panic", self.id)))
    }

    /// The pins, with every writer's batch of the lineage held back until the guard goes:
    /// a flatten's batch decides against the versions it finds and commits under it.
    pub fn hold_writers(&self) -> Result<RwLockWriteGuard<'_, Pins>> {
        self.pins.write().map_err(|_| Error::Corrupt(format!("lineage {} state poisoned by a panic", self.id)))
    }

    /// See `parted`.
    pub fn parted(&self) -> bool {
        self.parted.load(Ordering::Acquire)
    }

    fn set(&self, rec: &LineageRec) -> Result<()> {
        let mut p = self.hold_writers()?;
        *p = rec.pins.clone();
        self.head.store(rec.head.unwrap_or(0), Ordering::SeqCst);
        self.parted.store(rec.parent.is_none(), Ordering::Release);
        Ok(())
    }
}

/// Every lineage state some view holds, by id.
#[derive(Default)]
pub struct Lineages {
    cells: Mutex<HashMap<u64, Arc<LineageState>>>,
}

impl Lineages {
    /// The state of lineage `id`, read from the catalog by `load` on first use.
    ///
    /// The table lock is held across `load` (one point read) so that a commit applied
    /// meanwhile (`apply`, which takes the same lock after its batch is written) cannot slip
    /// between the read and the insert and leave an old state behind.
    pub fn get(&self, id: u64, load: impl FnOnce() -> Result<LineageRec>) -> Result<Arc<LineageState>> {
        let mut cells = self.cells.lock().map_err(|_| Error::Corrupt("lineage table poisoned by a panic".into()))?;
        if let Some(c) = cells.get(&id) {
            return Ok(c.clone());
        }
        let cell = Arc::new(LineageState::new(&load()?));
        cells.insert(id, cell.clone());
        Ok(cell)
    }

    /// Makes committed lineage records (and removals) visible to every view. Call only after
    /// the batch that wrote them is committed.
    pub fn apply(&self, written: &[LineageRec], removed: &[u64]) -> Result<()> {
        let mut cells = self.cells.lock().map_err(|_| Error::Corrupt("lineage table poisoned by a panic".into()))?;
        for rec in written {
            if let Some(c) = cells.get(&rec.id) {
                c.set(rec)?;
            }
        }
        for id in removed {
            if let Some(c) = cells.remove(id) {
                c.set(&LineageRec { id: *id, parent: None, head: None, pins: Pins::new(), block_size: 0 })?;
            }
        }
        // States no view holds any more are dropped; the next view reloads from the catalog.
        cells.retain(|_, c| Arc::strong_count(c) > 1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visibility_rule() {
        let pins: Pins = [(3, 1), (7, 2)].into_iter().collect();
        assert!(seen(&pins, false, 3, Some(4)));
        assert!(seen(&pins, false, 1, Some(4)));
        assert!(!seen(&pins, false, 4, Some(7)));
        assert!(seen(&pins, false, 4, Some(8)));
        assert!(!seen(&pins, false, 8, None));
        assert!(seen(&pins, true, 8, None));
        assert!(seen(&pins, false, 5, None));
        assert!(!pinned_between(&pins, 3, 3));
    }

    #[test]
    fn unpin_counts_down_and_reports_the_last() {
        let mut l = LineageRec { id: 1, parent: None, head: Some(9), pins: Pins::new(), block_size: 4096 };
        l.pin(4);
        l.pin(4);
        assert!(!l.unpin(4));
        assert!(l.unpin(4));
        assert!(!l.unpin(4));
        assert!(l.pins.is_empty());
    }

    #[test]
    fn applied_records_reach_every_holder_and_unheld_states_go() {
        let t = Lineages::default();
        let rec = LineageRec { id: 5, parent: None, head: Some(2), pins: [(1, 1)].into_iter().collect(), block_size: 4096 };
        let a = t.get(5, || Ok(rec.clone())).unwrap();
        let b = t.get(5, || panic!("loaded twice")).unwrap();
        let mut changed = rec.clone();
        changed.unpin(1);
        changed.head = Some(3);
        t.apply(&[changed], &[]).unwrap();
        assert!(a.pins().unwrap().is_empty() && b.pins().unwrap().is_empty());
        assert_eq!(a.head(), Some(3));
        drop((a, b));
        t.apply(&[], &[]).unwrap();
        let c = t.get(5, || Ok(rec.clone())).unwrap();
        assert_eq!(c.head(), Some(2));
    }
}
