//! Full consistency check over a point-in-time view of the store. Checks the invariants of
//! docs/ARCHITECTURE.md: refcounts equal references, every block hashes to its key, space
//! counters equal a recount, no dangling extents or directory entries, nlink matches.

use super::{VolumeRec, ROOT_INO};
use crate::error::Result;
use crate::store::records::{decode_extent, DirentRec, Hash, InodeRec, Kind, RefRec};
use crate::store::{cf, keys, LineageSpace, Store};
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
    pub errors: Vec<String>,
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

/// Visible (newest at `epoch`) versions per identity, with all versions counted separately.
fn visible<'a>(
    view: &crate::store::View<'a>,
    cfname: &str,
    epochs: &HashMap<u64, u64>,
    mut each_version: impl FnMut(&[u8], u64, &[u8]) -> Result<()>,
) -> Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut last: Option<Vec<u8>> = None;
    view.for_each(cfname, |k, v| {
        let (ident, e) = keys::split_version(k);
        each_version(ident, e, v)?;
        let lineage = keys::read_u64(ident, 0);
        let at = epochs.get(&lineage).copied().unwrap_or(0);
        if e <= at && last.as_deref() != Some(ident) {
            last = Some(ident.to_vec());
            out.insert(ident.to_vec(), v.to_vec());
        }
        Ok(())
    })?;
    Ok(out)
}

pub fn check(store: &Store) -> Result<FsckReport> {
    let view = store.view();
    let mut c = Ctx { errors: Vec::new() };
    let mut report = FsckReport::default();

    // Catalog.
    let mut vols: HashMap<u64, VolumeRec> = HashMap::new();
    let mut names: HashMap<String, u64> = HashMap::new();
    let mut stored_space: HashMap<u64, LineageSpace> = HashMap::new();
    let mut orphans: HashSet<(u64, u64)> = HashSet::new();
    let mut stats = (0u64, 0u64);
    view.for_each(cf::CATALOG, |k, v| {
        match k.first() {
            Some(&keys::catalog::VOLUME_TAG) => {
                let r: VolumeRec = serde_json::from_slice(&v[1..])?;
                vols.insert(r.id, r);
            }
            Some(&keys::catalog::NAME_TAG) => {
                let id = u64::from_le_bytes(v.try_into().unwrap_or_default());
                names.insert(String::from_utf8_lossy(&k[1..]).into_owned(), id);
            }
            Some(&keys::catalog::SPACE_TAG) if k.len() == 9 => {
                let mut s = LineageSpace::default();
                for (i, f) in [&mut s.logical, &mut s.referenced, &mut s.unique].into_iter().enumerate() {
                    *f = u64::from_le_bytes(v[1 + 8 * i..9 + 8 * i].try_into().unwrap_or_default());
                }
                stored_space.insert(keys::read_u64(k, 1), s);
            }
            Some(&keys::catalog::ORPHAN_TAG) if k.len() == 17 => {
                orphans.insert((keys::read_u64(k, 1), keys::read_u64(k, 9)));
            }
            _ if k == keys::catalog::STORE_STATS && v.len() == 16 => {
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
            Some(v) if &v.name == name && !v.destroying => {}
            Some(v) => c.err(format!("name {name:?} points to volume {id} named {:?}", v.name)),
            None => c.err(format!("name {name:?} points to missing volume {id}")),
        }
    }
    for v in vols.values() {
        if !v.destroying && names.get(&v.name) != Some(&v.id) {
            c.err(format!("volume {} ({:?}) has no name entry", v.id, v.name));
        }
    }
    report.volumes = vols.values().filter(|v| !v.destroying).count();
    let epochs: HashMap<u64, u64> = vols.values().map(|v| (v.lineage, v.epoch)).collect();
    let bs: HashMap<u64, u64> = vols.values().map(|v| (v.lineage, v.block_size as u64)).collect();
    let destroying: HashSet<u64> = vols.values().filter(|v| v.destroying).map(|v| v.lineage).collect();
    let known = |c: &mut Ctx, what: &str, l: u64| -> bool {
        if !epochs.contains_key(&l) {
            c.err(format!("{what} of unknown lineage {l}"));
            return false;
        }
        !destroying.contains(&l)
    };

    // Inodes.
    let inode_versions = visible(&view, cf::INODES, &epochs, |_, _, _| Ok(()))?;
    let mut inodes: HashMap<(u64, u64), InodeRec> = HashMap::new();
    for (ident, v) in &inode_versions {
        let (l, ino) = (keys::read_u64(ident, 0), keys::read_u64(ident, 8));
        if !known(&mut c, "inode", l) {
            continue;
        }
        match InodeRec::decode(v) {
            Ok(Some(r)) => {
                inodes.insert((l, ino), r);
            }
            Ok(None) => {}
            Err(e) => c.err(format!("inode {l}/{ino}: {e}")),
        }
    }
    report.inodes = inodes.len() as u64;

    // Directory entries.
    let dirent_versions = visible(&view, cf::DIRENTS, &epochs, |_, _, _| Ok(()))?;
    let mut links: HashMap<(u64, u64), u32> = HashMap::new();
    let mut subdirs: HashMap<(u64, u64), u32> = HashMap::new();
    for (ident, v) in &dirent_versions {
        let (l, dir) = (keys::read_u64(ident, 0), keys::read_u64(ident, 8));
        if !known(&mut c, "dirent", l) {
            continue;
        }
        let name = String::from_utf8_lossy(keys::name_of(ident)).into_owned();
        let d = match DirentRec::decode(v) {
            Ok(Some(d)) => d,
            Ok(None) => continue,
            Err(e) => {
                c.err(format!("dirent {l}/{dir}/{name}: {e}"));
                continue;
            }
        };
        report.dirents += 1;
        match inodes.get(&(l, dir)) {
            Some(p) if p.kind == Kind::Dir => {}
            Some(_) => c.err(format!("dirent {l}/{dir}/{name}: parent is not a directory")),
            None => c.err(format!("dirent {l}/{dir}/{name}: parent inode missing")),
        }
        match inodes.get(&(l, d.ino)) {
            Some(r) if r.kind == d.kind => {
                *links.entry((l, d.ino)).or_default() += 1;
                if r.kind == Kind::Dir {
                    *subdirs.entry((l, dir)).or_default() += 1;
                    if r.parent != dir {
                        c.err(format!("directory {l}/{} is in {dir} but records parent {}", d.ino, r.parent));
                    }
                }
            }
            Some(_) => c.err(format!("dirent {l}/{dir}/{name}: kind differs from inode {}", d.ino)),
            None => c.err(format!("dirent {l}/{dir}/{name}: points to missing inode {}", d.ino)),
        }
    }
    for ((l, ino), r) in &inodes {
        let n = links.get(&(*l, *ino)).copied().unwrap_or(0);
        if r.kind == Kind::Dir {
            let want = 2 + subdirs.get(&(*l, *ino)).copied().unwrap_or(0);
            if *ino == ROOT_INO && n != 0 {
                c.err(format!("root of lineage {l} has a name"));
            }
            if *ino != ROOT_INO && n != 1 {
                c.err(format!("directory {l}/{ino} has {n} names"));
            }
            if r.nlink != want {
                c.err(format!("directory {l}/{ino}: nlink {} but {want} expected", r.nlink));
            }
        } else if n == 0 && r.nlink == 0 && orphans.contains(&(*l, *ino)) {
            // Unlinked while open when the daemon stopped: purged at the next mount.
        } else if r.nlink != n {
            c.err(format!("inode {l}/{ino}: nlink {} but {n} names", r.nlink));
        }
    }
    for (l, ino) in &orphans {
        if let Some(r) = inodes.get(&(*l, *ino)) {
            if r.nlink != 0 {
                c.err(format!("inode {l}/{ino} is listed as orphan but has {} names", r.nlink));
            }
        }
    }

    // Extents: every version holds one reference; visible ones must belong to a file.
    let mut counted: HashMap<Hash, BTreeMap<u64, u64>> = HashMap::new();
    let mut per_file: HashMap<(u64, u64), u64> = HashMap::new();
    let extent_versions = visible(&view, cf::EXTENTS, &epochs, |ident, _, v| {
        if let Some(h) = decode_extent(v)? {
            *counted.entry(h).or_default().entry(keys::read_u64(ident, 0)).or_default() += 1;
        }
        Ok(())
    })?;
    for (ident, v) in &extent_versions {
        let (l, ino, idx) = (keys::read_u64(ident, 0), keys::read_u64(ident, 8), keys::read_u64(ident, 16));
        if !known(&mut c, "extent", l) {
            continue;
        }
        if decode_extent(v)?.is_none() {
            continue;
        }
        report.extents += 1;
        match inodes.get(&(l, ino)) {
            Some(r) if r.kind == Kind::File => {
                let b = bs.get(&l).copied().unwrap_or(1);
                if idx >= r.size.div_ceil(b) {
                    c.err(format!("inode {l}/{ino}: block {idx} lies past its size {}", r.size));
                }
                *per_file.entry((l, ino)).or_default() += 1;
            }
            Some(_) => c.err(format!("extent {l}/{ino}/{idx} belongs to a non-file")),
            None => c.err(format!("extent {l}/{ino}/{idx} of a missing inode")),
        }
    }
    for ((l, ino), r) in &inodes {
        let n = per_file.get(&(*l, *ino)).copied().unwrap_or(0);
        if r.kind == Kind::File && r.blocks != n {
            c.err(format!("inode {l}/{ino}: records {} stored blocks, has {n}", r.blocks));
        }
    }

    // Xattrs belong to live inodes.
    let xattr_versions = visible(&view, cf::XATTRS, &epochs, |_, _, _| Ok(()))?;
    for (ident, v) in &xattr_versions {
        let (l, ino) = (keys::read_u64(ident, 0), keys::read_u64(ident, 8));
        if known(&mut c, "xattr", l) && !crate::store::records::is_tombstone(v) && !inodes.contains_key(&(l, ino)) {
            c.err(format!("xattr of missing inode {l}/{ino}"));
        }
    }

    // Refcounts equal references; blocks exist exactly for referenced hashes and hash right.
    let mut refs: HashMap<Hash, RefRec> = HashMap::new();
    view.for_each(cf::REFS, |k, v| {
        let mut h = [0u8; 16];
        if k.len() == 16 {
            h.copy_from_slice(k);
            refs.insert(h, RefRec::decode(v)?);
        }
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
    let mut physical = 0;
    view.for_each(cf::BLOCKS, |k, v| {
        report.blocks += 1;
        physical += v.len() as u64;
        let mut h = [0u8; 16];
        if k.len() == 16 {
            h.copy_from_slice(k);
        }
        match refs.get(&h) {
            None => c.err(format!("block {} is stored but not referenced", hex(&h))),
            Some(r) if r.size as usize != v.len() => c.err(format!("block {}: size {} but {} recorded", hex(&h), v.len(), r.size)),
            _ => {}
        }
        if view.hash(v) != h {
            c.err(format!("block {}: content does not match its hash (damaged)", hex(&h)));
        }
        Ok(())
    })?;
    for h in refs.keys() {
        if view.get(cf::BLOCKS, h)?.is_none() {
            c.err(format!("block {} has a refcount but is not stored", hex(h)));
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

fn hex(h: &[u8]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}
