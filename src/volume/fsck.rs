//! Full consistency check over a point-in-time view of the store. Checks the invariants of
//! docs/ARCHITECTURE.md: refcounts equal references, every block hashes to its key, space
//! counters equal a recount, no dangling extents or directory entries, nlink matches.

use super::lineage::seen;
use super::{decode, LineageRec, SnapshotRec, VolumeRec, HEAD_GONE, ROOT_INO};
use crate::error::Result;
use crate::store::records::{decode_count, decode_extent, hex, is_tombstone, DirentRec, Hash, InodeRec, Kind, RefRec};
use crate::store::{CatKey, Ident, LineageSpace, Store, ViewSpace};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct FsckReport {
    pub volumes: usize,
    pub inodes: u64,
    pub dirents: u64,
    pub extents: u64,
    pub blocks: u64,
    pub physical: u64,
    /// Every volume and snapshot with its figures recounted from scratch.
    #[serde(default)]
    pub views: Vec<ViewFigures>,
    pub errors: Vec<String>,
}

/// LOGICAL, REFERENCED and UNIQUE of one volume or snapshot, recounted by brute force.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewFigures {
    pub name: String,
    pub logical: u64,
    pub referenced: u64,
    pub unique: u64,
}

impl FsckReport {
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty()
    }
}

const MAX_ERRORS: usize = 1000;

struct Ctx {
    errors: Vec<String>,
}

impl Ctx {
    fn err(&mut self, m: String) {
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(m);
        }
    }
}

/// Every version of every key of one kind, by lineage: identity (named in lineage 0) ->
/// [(epoch, value)], newest first.
type Versions = HashMap<u64, BTreeMap<Ident, Vec<(u64, Vec<u8>)>>>;

/// All versioned keys of the store, by kind.
#[derive(Default)]
struct All {
    inodes: Versions,
    dirents: Versions,
    extents: Versions,
    xattrs: Versions,
    counts: Versions,
}

fn load(view: &crate::store::View<'_>, c: &mut Ctx) -> Result<All> {
    let mut all = All::default();
    view.for_each_version(|id, e, v| {
        // Invariant 21: reads never probe epoch 0, so a version there would be unseen.
        if e < crate::store::FIRST_EPOCH {
            c.err(format!("{id:?}: a version at epoch {e}, below the first epoch (reads never see it)"));
        }
        let map = match id {
            Ident::Inode { .. } => &mut all.inodes,
            Ident::Dirent { .. } => &mut all.dirents,
            Ident::Extent { .. } => &mut all.extents,
            Ident::Xattr { .. } => &mut all.xattrs,
            Ident::Count { .. } => &mut all.counts,
        };
        map.entry(id.lineage()).or_default().entry(id.with_lineage(0)).or_default().push((e, v.to_vec()));
        Ok(())
    })?;
    Ok(all)
}

/// The visible version of every identity in a view (nearest level, newest epoch at or before
/// the level's epoch), identities named in lineage 0.
fn visible(all: &Versions, chain: &[(u64, u64)]) -> BTreeMap<Ident, Vec<u8>> {
    let mut out = BTreeMap::new();
    for (l, e) in chain {
        for (id, versions) in all.get(l).into_iter().flatten() {
            if let Some((_, v)) = versions.iter().find(|(ve, _)| ve <= e) {
                out.entry(id.clone()).or_insert_with(|| v.clone());
            }
        }
    }
    out
}

pub fn check(store: &Store) -> Result<FsckReport> {
    let view = store.view()?;
    let mut c = Ctx { errors: Vec::new() };
    let mut report = FsckReport::default();

    // Catalog.
    let mut vols: HashMap<u64, VolumeRec> = HashMap::new();
    let mut names: HashMap<String, u64> = HashMap::new();
    let mut lineages: HashMap<u64, LineageRec> = HashMap::new();
    let mut snaps: Vec<SnapshotRec> = Vec::new();
    let mut stored_space: HashMap<u64, LineageSpace> = HashMap::new();
    let mut stored_views: HashMap<u64, ViewSpace> = HashMap::new();
    let mut orphans: HashSet<(u64, u64)> = HashSet::new();
    let mut written: HashMap<u64, Vec<(u64, u64, Vec<u8>)>> = HashMap::new();
    let mut gc_pending: HashSet<u64> = HashSet::new();
    let mut stats = (0u64, 0u64);
    view.for_each_catalog(|k, v| {
        match k {
            CatKey::Volume(_) => {
                let r: VolumeRec = decode(v)?;
                vols.insert(r.id, r);
            }
            CatKey::Lineage(_) => {
                let r: LineageRec = decode(v)?;
                lineages.insert(r.id, r);
            }
            CatKey::Snapshot { .. } => snaps.push(decode(v)?),
            CatKey::Name(name) => {
                let id = u64::from_le_bytes(v.try_into().unwrap_or_default());
                names.insert(String::from_utf8_lossy(&name).into_owned(), id);
            }
            CatKey::Space(l) => {
                stored_space.insert(l, LineageSpace::decode(v)?);
            }
            CatKey::View(l) => {
                stored_views.insert(l, ViewSpace::decode(v)?);
            }
            CatKey::Orphan { lineage, ino } => {
                orphans.insert((lineage, ino));
            }
            CatKey::Gc { lineage, .. } => {
                gc_pending.insert(lineage);
            }
            CatKey::Written { lineage, ino, index } => {
                written.entry(lineage).or_default().push((ino, index, v.to_vec()));
            }
            CatKey::Stats if v.len() == 16 => {
                stats = (
                    u64::from_le_bytes(v[..8].try_into().unwrap_or_default()),
                    u64::from_le_bytes(v[8..].try_into().unwrap_or_default()),
                );
            }
            _ => {}
        }
        Ok(())
    })?;
    for (name, id) in &names {
        match vols.get(id) {
            Some(v) if &v.name == name => {}
            Some(v) => c.err(format!("name {name:?} points to volume {id} named {:?}", v.name)),
            None => c.err(format!("name {name:?} points to missing volume {id}")),
        }
    }
    for v in vols.values() {
        if names.get(&v.name) != Some(&v.id) {
            c.err(format!("volume {} ({:?}) has no name entry", v.id, v.name));
        }
        match lineages.get(&v.lineage) {
            Some(l) if l.head.is_some() => {}
            _ => c.err(format!("volume {:?} writes into lineage {} which has no head", v.name, v.lineage)),
        }
    }
    // Pin counts equal the snapshots and child lineages that pin.
    let mut want_pins: HashMap<(u64, u64), u32> = HashMap::new();
    for s in &snaps {
        *want_pins.entry((s.lineage, s.epoch)).or_default() += 1;
        if !vols.contains_key(&s.volume) {
            c.err(format!("snapshot {:?} of missing volume {}", s.name, s.volume));
        }
    }
    for l in lineages.values() {
        if let Some((p, e)) = l.parent {
            *want_pins.entry((p, e)).or_default() += 1;
            if !lineages.contains_key(&p) {
                c.err(format!("lineage {} has missing parent {p}", l.id));
            }
        }
    }
    for l in lineages.values() {
        for (e, n) in &l.pins {
            if want_pins.get(&(l.id, *e)).copied().unwrap_or(0) != *n {
                c.err(format!("lineage {} pins epoch {e} {n} times, {} expected", l.id, want_pins.get(&(l.id, *e)).copied().unwrap_or(0)));
            }
        }
        if l.head.is_none() && l.pins.is_empty() && !gc_pending.contains(&l.id) {
            c.err(format!("lineage {} has no head and no pins but no GC is pending", l.id));
        }
    }
    for ((l, e), n) in &want_pins {
        if lineages.get(l).and_then(|r| r.pins.get(e)).is_none() {
            c.err(format!("lineage {l} epoch {e} is used {n} times but not pinned"));
        }
    }
    report.volumes = vols.len();
    let lineages_by_id = lineages.clone();

    let chain_of = |l: u64, e: u64| -> Vec<(u64, u64)> {
        let mut chain = vec![(l, e)];
        let mut cur = lineages.get(&l).and_then(|r| r.parent);
        while let Some((p, pe)) = cur {
            chain.push((p, pe));
            cur = lineages.get(&p).and_then(|r| r.parent);
            if chain.len() > 10_000 {
                break;
            }
        }
        chain
    };
    let all = load(&view, &mut c)?;

    // Every view: the heads of volumes and every snapshot, with the figures they report.
    let mut views: Vec<(String, u64, u64, u64, bool, ViewSpace)> = Vec::new();
    // What destroying each one removes: one count of each of these pins (or heads).
    let mut removals: Vec<Vec<(u64, u64)>> = Vec::new();
    for v in vols.values() {
        if let Some(h) = lineages.get(&v.lineage).and_then(|l| l.head) {
            let vs = stored_views.get(&v.lineage).copied().unwrap_or_default();
            views.push((v.name.clone(), v.lineage, h, v.block_size as u64, true, vs));
            let mut r: Vec<(u64, u64)> = snaps.iter().filter(|s| s.volume == v.id).map(|s| (s.lineage, s.epoch)).collect();
            r.push((v.lineage, HEAD_GONE));
            removals.push(r);
        }
    }
    for s in &snaps {
        let bs = vols.get(&s.volume).map(|v| v.block_size as u64).unwrap_or(4096);
        let vname = vols.get(&s.volume).map(|v| v.name.clone()).unwrap_or_default();
        views.push((format!("{vname}@{}", s.name), s.lineage, s.epoch, bs, false, s.space));
        removals.push(vec![(s.lineage, s.epoch)]);
    }
    let mut view_blocks = Vec::new();
    for (vname, l, e, bs, head, vs) in &views {
        let chain = chain_of(*l, *e);
        let w = if *head { written.get(l).map(Vec::as_slice).unwrap_or_default() } else { &[] };
        let blocks = check_view(&mut c, &mut report, vname, *l, *bs, *head, &orphans, w, &chain, &all);
        // The per-block counts the view carries equal the extents it shows.
        let mut counted: HashMap<Hash, u64> = HashMap::new();
        for (id, v) in visible(&all.counts, &chain) {
            let n = decode_count(&v)?;
            if let (true, Ident::Count { hash, .. }) = (n > 0, id) {
                counted.insert(hash, n);
            }
        }
        if counted != blocks {
            let wrong = blocks.iter().filter(|(h, n)| counted.get(*h) != Some(n)).count()
                + counted.keys().filter(|h| !blocks.contains_key(*h)).count();
            c.err(format!("{vname}: {wrong} block counts differ from the extents the view shows"));
        }
        view_blocks.push((vname.clone(), *vs, blocks));
    }

    // Versions: each belongs to a known lineage, has a births entry, and someone can see it.
    let mut births: HashSet<(Ident, u64)> = HashSet::new();
    view.for_each_birth(|id, e| {
        births.insert((id, e));
        Ok(())
    })?;
    let mut counted: HashMap<Hash, BTreeMap<u64, u64>> = HashMap::new();
    let mut leaked: BTreeMap<(&str, u64, u64), u64> = BTreeMap::new();
    for (what, versions) in [
        ("inode", &all.inodes),
        ("dirent", &all.dirents),
        ("extent", &all.extents),
        ("xattr", &all.xattrs),
        ("count", &all.counts),
    ] {
        for (&l, by_id) in versions {
            let Some(lrec) = lineages.get(&l) else {
                c.err(format!("{what} key of unknown lineage {l}"));
                continue;
            };
            for (id, versions) in by_id {
                for (i, (b, v)) in versions.iter().enumerate() {
                    if let Ident::Extent { .. } = id {
                        if let Some(h) = decode_extent(v)? {
                            *counted.entry(h).or_default().entry(l).or_default() += 1;
                        }
                    }
                    if !births.remove(&(id.with_lineage(l), *b)) {
                        c.err(format!("{what} version at epoch {b} of lineage {l} has no births entry"));
                    }
                    let d = if i == 0 { None } else { Some(versions[i - 1].0) };
                    if !seen(&lrec.pins, lrec.head.is_some(), *b, d) && !gc_pending.contains(&l) {
                        *leaked.entry((what, l, *b)).or_default() += 1;
                    }
                }
            }
        }
    }
    // One line per (kind, lineage, epoch): a leak is usually thousands of versions.
    for ((what, l, b), n) in leaked {
        c.err(format!("{n} {what} version(s) at epoch {b} of lineage {l} seen by no pin or head (leaked)"));
    }
    for (id, e) in births {
        c.err(format!("births entry without a version: lineage {}, epoch {e}", id.lineage()));
    }

    // Refcounts equal references; blocks exist exactly for referenced hashes and hash right.
    let mut refs: HashMap<Hash, RefRec> = HashMap::new();
    view.for_each_ref(|h, r| {
        refs.insert(h, r);
        Ok(())
    })?;
    for (h, r) in &refs {
        let want: Vec<(u64, u64)> = counted.get(h).map(|m| m.iter().map(|(a, b)| (*a, *b)).collect()).unwrap_or_default();
        if r.owners != want {
            c.err(format!("block {}: refcount {:?} but references {:?}", hex(h), r.owners, want));
        }
    }
    for h in counted.keys() {
        if !refs.contains_key(h) {
            c.err(format!("block {} is referenced but has no refcount", hex(h)));
        }
    }
    // Every refcount names a locator of its own, and the bytes there hash to it.
    let mut by_loc: HashMap<u64, Hash> = HashMap::with_capacity(refs.len());
    for (h, r) in &refs {
        if let Some(other) = by_loc.insert(r.loc, *h) {
            c.err(format!("blocks {} and {} are both kept at locator {}", hex(h), hex(&other), r.loc));
        }
    }
    let mut physical = 0;
    let sizes: HashMap<u64, u32> = refs.values().map(|r| (r.loc, r.size)).collect();
    let mut seg_live: std::collections::BTreeMap<u32, u64> = std::collections::BTreeMap::new();
    view.for_each_block(&sizes, |loc, named, bytes| {
        report.blocks += 1;
        match by_loc.remove(&loc) {
            None => c.err(format!("block at locator {loc} is stored but not referenced")),
            Some(h) => {
                let r = &refs[&h];
                physical += r.size as u64;
                *seg_live.entry(crate::store::View::segment_of(loc)).or_default() += r.size as u64;
                if named != h {
                    c.err(format!("locator {loc} names block {} but the refcount of {} points there", hex(&named), hex(&h)));
                }
                match bytes {
                    None => c.err(format!("block {}: cannot be read from its segment", hex(&h))),
                    Some(v) if view.hash(&v) != h => c.err(format!("block {}: content does not match its hash (damaged)", hex(&h))),
                    Some(_) => {}
                }
            }
        }
        Ok(())
    })?;
    for h in by_loc.values() {
        c.err(format!("block {} has a refcount but is not stored", hex(h)));
    }
    // Live bytes per segment equal a recount, and every block's segment exists.
    let (recorded, present) = view.segments()?;
    for seg in recorded.keys().chain(seg_live.keys()) {
        let (r, n) = (recorded.get(seg).copied().unwrap_or(0), seg_live.get(seg).copied().unwrap_or(0));
        if r != n {
            c.err(format!("segment {seg}: {r} live bytes recorded, recount {n}"));
        }
        if n > 0 && !present.contains(seg) {
            c.err(format!("segment {seg} holds {n} bytes of live blocks but is missing"));
        }
    }
    report.physical = physical;

    // Space counters equal a recount.
    if stats != (physical, report.blocks) {
        c.err(format!("store counters say {} bytes in {} blocks; recount {} in {}", stats.0, stats.1, physical, report.blocks));
    }
    let mut recount: HashMap<u64, LineageSpace> = HashMap::new();
    for r in refs.values() {
        let s = r.size as u64;
        for (l, n) in &r.owners {
            let e = recount.entry(*l).or_default();
            e.logical += n * s;
            e.referenced += s;
            if r.owners.len() == 1 {
                e.unique += s;
            }
        }
    }
    // Each view's LOGICAL and REFERENCED equal a recount of the extents it shows; UNIQUE is
    // recounted by simulating its destroy over every version in the store.
    for ((vname, have, blocks), gone) in view_blocks.iter().zip(&removals) {
        let mut want = ViewSpace::default();
        for (h, n) in blocks {
            let size = refs.get(h).map(|r| r.size as u64).unwrap_or(0);
            want.logical += n * size;
            want.referenced += size;
        }
        if *have != want {
            c.err(format!("{vname}: reports {have:?} but recount {want:?}"));
        }
        let unique = unique_by_brute_force(&lineages_by_id, &all.extents, &refs, gone);
        report.views.push(ViewFigures { name: vname.clone(), logical: want.logical, referenced: want.referenced, unique });
    }
    report.views.sort_by(|a, b| a.name.cmp(&b.name));
    let lineages: HashSet<u64> = recount.keys().chain(stored_space.keys()).copied().collect();
    for l in lineages {
        let want = recount.get(&l).copied().unwrap_or_default();
        let have = stored_space.get(&l).copied().unwrap_or_default();
        if want != have {
            c.err(format!("lineage {l}: space counters {have:?} but recount {want:?}"));
        }
    }
    report.errors = c.errors;
    Ok(report)
}

/// The bytes destroying something frees, the slow way: drop one count of each pin (or the
/// head) in `gone`, let lineages with neither go whole and unpin their parents, then count the
/// blocks whose every extent version was seen before and is seen by nobody after.
fn unique_by_brute_force(lineages: &HashMap<u64, LineageRec>, extents: &Versions, refs: &HashMap<Hash, RefRec>, gone: &[(u64, u64)]) -> u64 {
    let mut after = lineages.clone();
    let unpin = |r: &mut LineageRec, e: u64| {
        r.unpin(e);
    };
    for (l, e) in gone {
        if let Some(r) = after.get_mut(l) {
            if *e == HEAD_GONE {
                r.head = None;
            } else {
                unpin(r, *e);
            }
        }
    }
    let mut whole: HashSet<u64> = HashSet::new();
    while let Some((l, parent)) = after.values().find(|r| r.head.is_none() && r.pins.is_empty() && !whole.contains(&r.id)).map(|r| (r.id, r.parent)) {
        whole.insert(l);
        if let Some((p, e)) = parent {
            if let Some(r) = after.get_mut(&p) {
                unpin(r, e);
            }
        }
    }
    let seen = |r: &LineageRec, b: u64, d: Option<u64>| seen(&r.pins, r.head.is_some(), b, d);
    let mut freed: HashMap<Hash, u64> = HashMap::new();
    for (&l, by_id) in extents {
        let (Some(before), Some(now)) = (lineages.get(&l), after.get(&l)) else { continue };
        for versions in by_id.values() {
            for (i, (b, v)) in versions.iter().enumerate() {
                let d = if i == 0 { None } else { Some(versions[i - 1].0) };
                if seen(before, *b, d) && (whole.contains(&l) || !seen(now, *b, d)) {
                    if let Ok(Some(h)) = decode_extent(v) {
                        *freed.entry(h).or_default() += 1;
                    }
                }
            }
        }
    }
    freed.iter().filter_map(|(h, n)| refs.get(h).filter(|r| r.total() == *n).map(|r| r.size as u64)).sum()
}

/// Namespace invariants of one view (a volume's head or a snapshot).
#[allow(clippy::too_many_arguments)]
fn check_view(
    c: &mut Ctx,
    report: &mut FsckReport,
    vname: &str,
    lineage: u64,
    bs: u64,
    head: bool,
    orphans: &HashSet<(u64, u64)>,
    written: &[(u64, u64, Vec<u8>)],
    chain: &[(u64, u64)],
    all: &All,
) -> HashMap<Hash, u64> {
    let mut inodes: HashMap<u64, InodeRec> = HashMap::new();
    for (id, v) in visible(&all.inodes, chain) {
        let Ident::Inode { ino, .. } = id else { continue };
        match InodeRec::decode(&v) {
            Ok(Some(r)) => {
                inodes.insert(ino, r);
            }
            Ok(None) => {}
            Err(e) => c.err(format!("{vname}: inode {ino}: {e}")),
        }
    }
    report.inodes += inodes.len() as u64;
    // Bytes fsyncs wrote over stored blocks, not merged yet: of a file, and well formed.
    for (ino, idx, v) in written {
        if !matches!(inodes.get(ino), Some(r) if r.kind == Kind::File) {
            c.err(format!("{vname}: bytes written by an fsync are recorded for inode {ino}, not a file of the volume"));
        } else if let Err(e) = crate::store::records::decode_written(v, bs as usize) {
            c.err(format!("{vname}: inode {ino} block {idx}: {e}"));
        }
    }
    if !inodes.contains_key(&ROOT_INO) {
        c.err(format!("{vname}: no root directory"));
    }
    let mut links: HashMap<u64, u32> = HashMap::new();
    let mut subdirs: HashMap<u64, u32> = HashMap::new();
    for (id, v) in visible(&all.dirents, chain) {
        let Ident::Dirent { dir, name, .. } = id else { continue };
        let name = String::from_utf8_lossy(&name).into_owned();
        let d = match DirentRec::decode(&v) {
            Ok(Some(d)) => d,
            Ok(None) => continue,
            Err(e) => {
                c.err(format!("{vname}: entry {dir}/{name}: {e}"));
                continue;
            }
        };
        match inodes.get(&dir) {
            Some(p) if p.kind == Kind::Dir => {}
            Some(_) => c.err(format!("{vname}: entry {dir}/{name}: parent is not a directory")),
            // An entry of a removed directory is unreachable; it stays only for a snapshot.
            None => continue,
        }
        report.dirents += 1;
        match inodes.get(&d.ino) {
            Some(r) if r.kind == d.kind => {
                *links.entry(d.ino).or_default() += 1;
                if r.kind == Kind::Dir {
                    *subdirs.entry(dir).or_default() += 1;
                    if r.parent != dir {
                        c.err(format!("{vname}: directory {} is in {dir} but records parent {}", d.ino, r.parent));
                    }
                }
            }
            Some(_) => c.err(format!("{vname}: entry {dir}/{name}: kind differs from inode {}", d.ino)),
            None => c.err(format!("{vname}: entry {dir}/{name}: points to missing inode {}", d.ino)),
        }
    }
    for (ino, r) in &inodes {
        let n = links.get(ino).copied().unwrap_or(0);
        let removed_while_open = n == 0 && r.nlink == 0 && (!head || orphans.contains(&(lineage, *ino)));
        if removed_while_open {
            // Unlinked (a directory: removed) while open: purged at the next mount (a
            // snapshot keeps what it saw).
        } else if r.kind == Kind::Dir {
            let want = 2 + subdirs.get(ino).copied().unwrap_or(0);
            if *ino != ROOT_INO && n != 1 {
                c.err(format!("{vname}: directory {ino} has {n} names"));
            }
            if r.nlink != want {
                c.err(format!("{vname}: directory {ino}: nlink {} but {want} expected", r.nlink));
            }
        } else if r.nlink != n {
            c.err(format!("{vname}: inode {ino}: nlink {} but {n} names", r.nlink));
        }
    }
    let mut per_file: HashMap<u64, u64> = HashMap::new();
    let mut blocks: HashMap<Hash, u64> = HashMap::new();
    for (id, v) in visible(&all.extents, chain) {
        let Ident::Extent { ino, index: idx, .. } = id else { continue };
        if is_tombstone(&v) {
            continue;
        }
        match inodes.get(&ino) {
            Some(r) if r.kind == Kind::File => {
                report.extents += 1;
                if idx >= r.size.div_ceil(bs) {
                    c.err(format!("{vname}: inode {ino}: block {idx} lies past its size {}", r.size));
                }
                *per_file.entry(ino).or_default() += 1;
                if let Ok(Some(h)) = decode_extent(&v) {
                    *blocks.entry(h).or_default() += 1;
                }
            }
            Some(_) => c.err(format!("{vname}: extent {ino}/{idx} belongs to a non-file")),
            // An inherited extent of a file this view removed stays (the parent owns it); one
            // of its own lineage must be gone or hidden, or GC would keep it forever.
            None => {
                let own = all.extents.get(&lineage).and_then(|m| m.get(&Ident::Extent { lineage: 0, ino, index: idx }));
                let at = chain.first().map(|c| c.1).unwrap_or(0);
                if own.and_then(|vs| vs.iter().find(|(e, _)| *e <= at)).is_some_and(|(_, v)| !is_tombstone(v)) {
                    c.err(format!("{vname}: extent {ino}/{idx} of a removed inode is still seen (leaked)"));
                }
            }
        }
    }
    for (ino, r) in &inodes {
        let n = per_file.get(ino).copied().unwrap_or(0);
        if r.kind == Kind::File && r.blocks != n {
            c.err(format!("{vname}: inode {ino}: records {} stored blocks, has {n}", r.blocks));
        }
    }
    blocks
}
