//! Garbage collection of versions no pin and no head can see.
//!
//! A version of a key born at epoch `b` and superseded at `d` (the next newer version in the
//! same lineage, or never) is visible to pin `p` when `b <= p < d`, and to the head when it is
//! the newest. When pin `s` goes, only versions born in (previous pin, s] can have lost their
//! last reader, so GC scans exactly those births; when the head goes, those born after the
//! last pin. A lineage with neither head nor pins is removed whole and unpins its parent.
//! GC never touches a version the head can see, so it does not race with writers.

use super::{Catalog, LineageRec, HEAD_GONE};
use crate::error::Result;
use crate::store::records::decode_extent;
use crate::store::{cf, keys, Store};

const BATCH: usize = 4096;

/// All versions of one key of a lineage (`ident` = lineage first, no epoch), newest first.
fn versions_of(store: &Store, cfname: &str, ident: &[u8]) -> Result<Vec<(u64, Vec<u8>)>> {
    let mut versions = Vec::new();
    store.scan(cfname, ident, |k, v| {
        if k.len() == ident.len() + keys::U64 {
            versions.push((keys::split_version(k).1, v.to_vec()));
        }
        Ok(true)
    })?;
    Ok(versions)
}

/// Whether a version born at `b` and superseded at `d` (None: still the newest) is seen by
/// one of `pins` or by the head.
fn seen(pins: &std::collections::BTreeMap<u64, u32>, head: bool, b: u64, d: Option<u64>) -> bool {
    match d {
        Some(d) => pins.range(b..d).next().is_some(),
        None => head || pins.range(b..).next().is_some(),
    }
}

/// Runs every pending GC marker to completion. Returns how many it processed.
pub fn run(store: &Store, cat: &Catalog) -> Result<u64> {
    let _one = cat.gc.lock().map_err(|_| crate::error::Error::Corrupt("gc lock poisoned".into()))?;
    let mut done = 0;
    loop {
        let mut next = None;
        store.scan(cf::CATALOG, &[keys::catalog::GC_TAG], |k, _| {
            next = Some((keys::read_u64(k, 1), keys::read_u64(k, 9)));
            Ok(false)
        })?;
        let Some((lineage, epoch)) = next else { return Ok(done) };
        process(store, cat, lineage, epoch)?;
        done += 1;
    }
}

fn process(store: &Store, cat: &Catalog, lineage: u64, epoch: u64) -> Result<()> {
    let marker = keys::catalog::gc(lineage, epoch);
    let lrec = {
        let _g = cat.guard()?;
        match store.get(cf::CATALOG, &keys::catalog::lineage(lineage))? {
            Some(v) => super::decode::<LineageRec>(&v)?,
            None => {
                let mut t = store.txn();
                t.delete(store, cf::CATALOG, &marker)?;
                return store.commit(t, false);
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
    let mut start = keys::births_from(lineage, lo.saturating_add(1));
    loop {
        let mut t = store.txn();
        let mut n = 0;
        let mut resume = None;
        store.scan_from(cf::BIRTHS, &lineage.to_be_bytes(), &start, |k, _| {
            let (_, b, tag, rest) = keys::split_birth(k);
            if b > hi {
                return Ok(false);
            }
            if n >= BATCH {
                resume = Some(k.to_vec());
                return Ok(false);
            }
            n += 1;
            let Some(cfname) = cf::from_tag(tag) else { return Ok(true) };
            let ident = [&lineage.to_be_bytes()[..], rest].concat();
            let versions = versions_of(store, cfname, &ident)?;
            let Some(pos) = versions.iter().position(|(e, _)| *e == b) else {
                t.delete(store, cf::BIRTHS, k)?;
                return Ok(true);
            };
            let d = if pos == 0 { None } else { Some(versions[pos - 1].0) };
            if !seen(&lrec.pins, lrec.head.is_some(), b, d) {
                if cfname == cf::EXTENTS {
                    if let Some(h) = decode_extent(&versions[pos].1)? {
                        t.drop_ref(h, lineage);
                    }
                }
                t.delete(store, cfname, &keys::versioned(ident, b))?;
                t.delete(store, cf::BIRTHS, k)?;
            }
            Ok(true)
        })?;
        match resume {
            Some(r) => {
                store.commit(t, false)?;
                start = r;
            }
            None => {
                t.delete(store, cf::CATALOG, &marker)?;
                return store.commit(t, false);
            }
        }
    }
}

/// Removes every key of a lineage nobody reads, then the lineage, and unpins its parent.
fn purge(store: &Store, cat: &Catalog, lineage: u64) -> Result<()> {
    log::info!("gc: removing lineage {lineage}");
    let prefix = keys::lineage_prefix(lineage);
    // Extents one by one (each drops a block reference), then everything else of the
    // lineage with one range deletion per column family.
    // Each batch resumes after the last key it deleted, not over the tombstones before it.
    let mut start = prefix.clone();
    loop {
        let mut t = store.txn();
        let mut n = 0;
        let mut last = None;
        store.scan_from(cf::EXTENTS, &prefix, &start, |k, v| {
            if let Some(h) = decode_extent(v)? {
                t.drop_ref(h, lineage);
            }
            t.delete(store, cf::EXTENTS, k)?;
            n += 1;
            last = Some([k, &[0u8][..]].concat());
            Ok(n < BATCH)
        })?;
        let Some(next) = last else { break };
        store.commit(t, false)?;
        start = next;
    }
    let mut t = store.txn();
    for cfname in [cf::XATTRS, cf::DIRENTS, cf::INODES, cf::COUNTS, cf::BIRTHS] {
        t.delete_prefix(store, cfname, &prefix)?;
    }
    store.commit(t, false)?;
    let _g = cat.guard()?;
    let mut t = store.txn();
    let mut stale = Vec::new();
    for tag in [keys::catalog::GC_TAG, keys::catalog::ORPHAN_TAG] {
        let mut p = vec![tag];
        p.extend_from_slice(&lineage.to_be_bytes());
        store.scan(cf::CATALOG, &p, |k, _| {
            stale.push(k.to_vec());
            Ok(true)
        })?;
    }
    for k in stale {
        t.delete(store, cf::CATALOG, &k)?;
    }
    if let Some(v) = store.get(cf::CATALOG, &keys::catalog::lineage(lineage))? {
        let lrec: LineageRec = super::decode(&v)?;
        if let Some((p, e)) = lrec.parent {
            let mut prec = Catalog::lineage(store, p)?;
            Catalog::unpin(store, &mut t, &mut prec, e)?;
            Catalog::put_lineage(store, &mut t, &prec)?;
        }
    }
    t.delete(store, cf::CATALOG, &keys::catalog::lineage(lineage))?;
    t.delete(store, cf::CATALOG, &keys::catalog::space(lineage))?;
    t.delete(store, cf::CATALOG, &keys::catalog::view(lineage))?;
    store.commit(t, true)?;
    store.forget_lineage(lineage);
    Ok(())
}

/// The bytes that would leave the store if one count of each pin in `removals` went away
/// (`HEAD_GONE` as the epoch removes a lineage's head), after GC and the cascades it sets off:
/// the blocks whose every reference is a version nobody would see any more. Nothing changes.
///
/// Cost: a lineage that would go whole is counted by its counters when it is the only one
/// (blocks only it names); every other freed version is enumerated, from the births after
/// the last pin that stays below what goes. So a snapshot costs the versions it alone keeps,
/// a volume nothing else reads costs O(1), and a volume that clones still read costs a pass
/// over its versions.
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
        if let Some(c) = r.pins.get_mut(&e) {
            *c -= 1;
            if *c == 0 {
                r.pins.remove(&e);
            }
        }
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
    let space = store.space();
    let logical = |l: &u64| space.lineages.get(l).map(|s| s.logical).unwrap_or(0);
    let counted = whole.iter().copied().max_by_key(|l| (logical(l), *l));
    let mut per_block: HashMap<[u8; 16], HashMap<u64, u64>> = HashMap::new();
    for l in whole.iter().filter(|l| Some(**l) != counted) {
        store.scan(cf::EXTENTS, &keys::lineage_prefix(*l), |_, v| {
            if let Some(h) = decode_extent(v)? {
                *per_block.entry(h).or_default().entry(*l).or_default() += 1;
            }
            Ok(true)
        })?;
    }
    let tag = cf::tag(cf::EXTENTS);
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
            let mut prev: Option<(Vec<u8>, u64)> = None;
            store.scan(cf::EXTENTS, &keys::lineage_prefix(*l), |k, v| {
                let (ident, b) = keys::split_version(k);
                let d = match &prev {
                    Some((i, e)) if i.as_slice() == ident => Some(*e),
                    _ => None,
                };
                count(b, d, v)?;
                prev = Some((ident.to_vec(), b));
                Ok(true)
            })?;
            continue;
        }
        store.scan_from(cf::BIRTHS, &l.to_be_bytes(), &keys::births_from(*l, lo), |k, _| {
            let (_, b, t, rest) = keys::split_birth(k);
            if t != tag {
                return Ok(true);
            }
            let ident = [&l.to_be_bytes()[..], rest].concat();
            let versions = versions_of(store, cf::EXTENTS, &ident)?;
            if let Some(pos) = versions.iter().position(|(e, _)| *e == b) {
                let d = if pos == 0 { None } else { Some(versions[pos - 1].0) };
                count(b, d, &versions[pos].1)?;
            }
            Ok(true)
        })?;
    }
    let mut unique = counted.and_then(|l| space.lineages.get(&l)).map(|s| s.unique).unwrap_or(0);
    for (h, freed) in per_block {
        if let Some(v) = store.get(cf::REFS, &h)? {
            let r = crate::store::records::RefRec::decode(&v)?;
            if r.owners.iter().all(|(o, n)| Some(*o) == counted || freed.get(o) == Some(n)) {
                unique += r.size as u64;
            }
        }
    }
    Ok(unique)
}
