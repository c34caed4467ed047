//! Garbage collection of versions no pin and no head can see.
//!
//! A version of a key born at epoch `b` and superseded at `d` (the next newer version in the
//! same lineage, or never) is visible to pin `p` when `b <= p < d`, and to the head when it is
//! the newest. When pin `s` goes, only versions born in (previous pin, s] can have lost their
//! last reader, so GC scans exactly those births; when the head goes, those born after the
//! last pin. A lineage with neither head nor pins is removed whole and unpins its parent.
//! GC never touches a version the head can see, so it does not race with writers.

use super::lineage::seen;
use super::{Catalog, LineageRec, HEAD_GONE};
use crate::error::Result;
use crate::store::records::decode_extent;
use crate::store::{CatKey, CatRange, Cursor, Ident, Store};

const BATCH: usize = 4096;

/// Runs every pending GC marker to completion. Returns how many it processed.
pub fn run(store: &Store, cat: &Catalog) -> Result<u64> {
    let _one = cat.gc.lock().map_err(|_| crate::error::Error::Corrupt("gc lock poisoned".into()))?;
    let mut done = 0;
    loop {
        let mut next = None;
        store.cat_scan(CatRange::Gc, |k, _| {
            if let CatKey::Gc { lineage, epoch } = k {
                next = Some((lineage, epoch));
            }
            Ok(false)
        })?;
        let Some((lineage, epoch)) = next else { return Ok(done) };
        process(store, cat, lineage, epoch)?;
        done += 1;
    }
}

fn process(store: &Store, cat: &Catalog, lineage: u64, epoch: u64) -> Result<()> {
    let marker = CatKey::Gc { lineage, epoch };
    let lrec = {
        let _g = cat.guard()?;
        match store.cat_get(&CatKey::Lineage(lineage))? {
            Some(v) => super::decode::<LineageRec>(&v)?,
            None => {
                let mut t = store.txn();
                t.frees();
                t.cat_delete(&marker)?;
                return t.commit(false);
            }
        }
    };
    if lrec.head.is_none() && lrec.pins.is_empty() {
        return purge(store, cat, lineage);
    }
    let (lo, hi) = if epoch == HEAD_GONE {
        (lrec.pins.keys().next_back().copied().unwrap_or(0), u64::MAX)
    } else {
        (lrec.pins.range(..epoch).next_back().map(|(e, _)| *e).unwrap_or(0), epoch)
    };
    log::info!("gc: lineage {lineage}, versions born in ({lo}, {hi}]");
    let mut start = Cursor::births_at(lineage, lo.saturating_add(1));
    loop {
        let mut t = store.txn();
        t.frees();
        let mut n = 0;
        let resume = store.births(&start, |id, b| {
            if b > hi || n >= BATCH {
                return Ok(false);
            }
            n += 1;
            let versions = store.versions(&id)?;
            let Some(pos) = versions.iter().position(|(e, _)| *e == b) else {
                t.delete_birth(&id, b)?;
                return Ok(true);
            };
            let d = if pos == 0 { None } else { Some(versions[pos - 1].0) };
            if !seen(&lrec.pins, lrec.head.is_some(), b, d) {
                if let Ident::Extent { .. } = id {
                    if let Some(h) = decode_extent(&versions[pos].1)? {
                        t.drop_ref(h, lineage);
                    }
                }
                t.delete_version(&id, b)?;
            }
            Ok(true)
        })?;
        match resume {
            Some(r) if n >= BATCH => {
                t.commit(false)?;
                start = r;
            }
            _ => {
                t.cat_delete(&marker)?;
                return t.commit(false);
            }
        }
    }
}

/// Removes every key of a lineage nobody reads, then the lineage, and unpins its parent.
fn purge(store: &Store, cat: &Catalog, lineage: u64) -> Result<()> {
    log::info!("gc: removing lineage {lineage}");
    // Extents one by one (each drops a block reference), in batches that each resume at the
    // first key they did not take (not over the tombstones before it), then everything else
    // of the lineage with one range deletion per column family.
    let mut start = None;
    loop {
        let mut t = store.txn();
        t.frees();
        let mut n = 0;
        let resume = store.extent_versions(lineage, start.as_ref(), |id, epoch, v| {
            if n >= BATCH {
                return Ok(false);
            }
            if let Some(h) = decode_extent(v)? {
                t.drop_ref(h, lineage);
            }
            t.delete_extent_version(&id, epoch)?;
            n += 1;
            Ok(true)
        })?;
        t.commit(false)?;
        match resume {
            Some(r) => start = Some(r),
            None => break,
        }
    }
    let _g = cat.guard()?;
    let mut t = cat.begin(store);
    t.frees();
    t.delete_lineage(lineage)?;
    let mut stale = Vec::new();
    for range in [CatRange::GcOf(lineage), CatRange::OrphansOf(lineage), CatRange::WrittenOf(lineage)] {
        store.cat_scan(range, |k, _| {
            stale.push(k);
            Ok(true)
        })?;
    }
    for k in stale {
        t.cat_delete(&k)?;
    }
    if let Some(v) = store.cat_get(&CatKey::Lineage(lineage))? {
        let lrec: LineageRec = super::decode(&v)?;
        if let Some((p, e)) = lrec.parent {
            let mut prec = Catalog::lineage(store, p)?;
            Catalog::unpin(&mut t, &mut prec, e)?;
            Catalog::put_lineage(&mut t, &prec)?;
        }
    }
    Catalog::remove_lineage(&mut t, lineage)?;
    // The parent's views see the pin go only after this commit (Catalog::commit), and GC of
    // the versions it kept runs after that.
    cat.commit(t, true)?;
    store.forget_lineage(lineage);
    Ok(())
}

/// The bytes that would leave the store if one count of each pin in `removals` went away
/// (`HEAD_GONE` as the epoch removes a lineage's head), after GC and the cascades it sets off:
/// the blocks whose every reference is a version nobody would see any more. Nothing changes.
///
/// Cost: a lineage that would go whole is counted by its counters when it is the only one
/// (blocks only it names); every other freed version is enumerated, from the births after
/// the last pin that stays below what goes to the last epoch that goes. So a snapshot costs
/// the versions born since the pin before it (listing N snapshots is linear in their
/// versions), a volume nothing else reads costs O(1), and a volume that clones still read
/// costs a pass over its versions.
pub fn freed_by(store: &Store, removals: &[(u64, u64)]) -> Result<u64> {
    use std::collections::{BTreeMap, BTreeSet, HashMap};
    let mut orig: BTreeMap<u64, LineageRec> = BTreeMap::new();
    let mut now: BTreeMap<u64, LineageRec> = BTreeMap::new();
    let load = |l: u64, orig: &mut BTreeMap<u64, LineageRec>, now: &mut BTreeMap<u64, LineageRec>| -> Result<()> {
        if !orig.contains_key(&l) {
            let r = Catalog::lineage(store, l)?;
            orig.insert(l, r.clone());
            now.insert(l, r);
        }
        Ok(())
    };
    let unpin = |r: &mut LineageRec, e: u64| {
        r.unpin(e);
    };
    for (l, e) in removals {
        load(*l, &mut orig, &mut now)?;
        let r = now.get_mut(l).ok_or_else(|| crate::error::Error::Corrupt(format!("missing lineage {l}")))?;
        if *e == HEAD_GONE {
            r.head = None;
        } else {
            unpin(r, *e);
        }
    }
    // Lineages left with neither head nor pins go whole and unpin their parents.
    let mut whole: BTreeSet<u64> = BTreeSet::new();
    loop {
        let next = now.values().find(|r| r.head.is_none() && r.pins.is_empty() && !whole.contains(&r.id)).map(|r| (r.id, r.parent));
        let Some((l, parent)) = next else { break };
        whole.insert(l);
        if let Some((p, e)) = parent {
            load(p, &mut orig, &mut now)?;
            if let Some(r) = now.get_mut(&p) {
                unpin(r, e);
            }
        }
    }
    let space = store.space()?;
    let logical = |l: &u64| space.lineages.get(l).map(|s| s.logical).unwrap_or(0);
    let counted = whole.iter().copied().max_by_key(|l| (logical(l), *l));
    let mut per_block: HashMap<[u8; 16], HashMap<u64, u64>> = HashMap::new();
    for l in whole.iter().filter(|l| Some(**l) != counted) {
        store.extent_versions(*l, None, |_, _, v| {
            if let Some(h) = decode_extent(v)? {
                *per_block.entry(h).or_default().entry(*l).or_default() += 1;
            }
            Ok(true)
        })?;
    }
    for (l, after) in now.iter().filter(|(l, _)| !whole.contains(l)) {
        let before = &orig[l];
        let mut gone: Vec<u64> = before.pins.keys().filter(|e| !after.pins.contains_key(e)).copied().collect();
        if before.head.is_some() && after.head.is_none() {
            gone.push(HEAD_GONE);
        }
        let Some(first) = gone.iter().min().copied() else { continue };
        let lo = after.pins.range(..first).next_back().map(|(e, _)| *e + 1).unwrap_or(0);
        let mut count = |b: u64, d: Option<u64>, v: &[u8]| -> Result<()> {
            if seen(&before.pins, before.head.is_some(), b, d) && !seen(&after.pins, after.head.is_some(), b, d) {
                if let Some(h) = decode_extent(v)? {
                    *per_block.entry(h).or_default().entry(*l).or_default() += 1;
                }
            }
            Ok(())
        };
        if lo <= 1 {
            // From the lineage's start: one pass over its extents (newest version first, so
            // the previous key of the same identity is the one that superseded this one).
            let mut prev: Option<(Ident, u64)> = None;
            store.extent_versions(*l, None, |id, b, v| {
                let d = match &prev {
                    Some((i, e)) if *i == id => Some(*e),
                    _ => None,
                };
                count(b, d, v)?;
                prev = Some((id, b));
                Ok(true)
            })?;
            continue;
        }
        // A version born after the last epoch that goes is seen by none of them (a pin sees
        // the versions born at or before it): the scan stops there, so a snapshot costs
        // the births between its pin and the one before, however many come after it.
        let last = gone.iter().max().copied().unwrap_or(first);
        store.births(&Cursor::births_at(*l, lo), |id, b| {
            if b > last {
                return Ok(false);
            }
            if !matches!(id, Ident::Extent { .. }) {
                return Ok(true);
            }
            let versions = store.versions(&id)?;
            if let Some(pos) = versions.iter().position(|(e, _)| *e == b) {
                let d = if pos == 0 { None } else { Some(versions[pos - 1].0) };
                count(b, d, &versions[pos].1)?;
            }
            Ok(true)
        })?;
    }
    let mut unique = counted.and_then(|l| space.lineages.get(&l)).map(|s| s.unique).unwrap_or(0);
    for (h, freed) in per_block {
        if let Some(r) = store.refs(&h)? {
            if r.owners.iter().all(|(o, n)| Some(*o) == counted || freed.get(o) == Some(n)) {
                unique += r.size as u64;
            }
        }
    }
    Ok(unique)
}
