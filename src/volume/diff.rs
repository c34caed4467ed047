//! `clonefs diff VOL@A [VOL@B | VOL]`: what changed between two views of one volume (or of a
//! clone and its origin's snapshot, `descends`), with
//! the kind of each change (`+` added, `-` removed, `R` renamed, `M` modified) and, for `M`,
//! whether file data changed or only metadata (mode, owner, times, xattrs).
//!
//! The versions that can differ are found in `births`: for every lineage of either view's
//! chain, those born between the epochs the two views read it at (all of them for a lineage
//! only one view reads, such as the new lineage a rollback made). So the work grows with the
//! changes, not the volume; it also works across a rollback. Each such identity is then read
//! in both views and compared. Paths: a directory's comes from its parent pointers, a name
//! changed between the views from its entry; the path of a file modified in place is found by
//! walking the view's tree once (the one cost that grows with the volume, paid only then).

use crate::error::Result;
use crate::store::records::{decode_extent, decode_xattr, DirentRec, InodeRec};
use crate::store::{Cursor, Ident, Scan, Store};
use crate::volume::{Kind, ROOT_INO};
use std::collections::{BTreeMap, BTreeSet, HashMap};

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Change {
    /// "+", "-", "R" or "M".
    pub kind: String,
    pub path: String,
    /// For "R": the new path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// "file", "dir", "symlink", "other".
    pub ftype: String,
    /// For "M" (and "R" of a file also modified): its data changed.
    pub data: bool,
    /// For "M": its mode, owner, times or xattrs changed.
    pub meta: bool,
}

type Chain = Vec<(u64, u64)>;

/// An identity without its lineage (lineage 0), as both views name it.
fn bare(id: &Ident) -> Ident {
    id.with_lineage(0)
}

fn ftype(k: Kind) -> &'static str {
    match k {
        Kind::File => "file",
        Kind::Dir => "dir",
        Kind::Symlink => "symlink",
        _ => "other",
    }
}

struct Side<'a> {
    store: &'a Store,
    chain: Chain,
    /// Paths found so far (directories and files).
    paths: HashMap<u64, String>,
    walked: bool,
}

impl Side<'_> {
    fn inode(&self, ino: u64) -> Result<Option<InodeRec>> {
        match self.store.visible(&Ident::Inode { lineage: 0, ino }, &self.chain)? {
            Some(f) => InodeRec::decode(&f.value),
            None => Ok(None),
        }
    }

    fn dirent(&self, dir: u64, name: &[u8]) -> Result<Option<DirentRec>> {
        match self.store.visible(&Ident::Dirent { lineage: 0, dir, name: name.to_vec() }, &self.chain)? {
            Some(f) => DirentRec::decode(&f.value),
            None => Ok(None),
        }
    }

    fn entries(&self, dir: u64) -> Result<Vec<(Vec<u8>, DirentRec)>> {
        let mut out = Vec::new();
        for (id, f) in self.store.scan_visible(&Scan::Dirents { dir }, &self.chain)? {
            if let (Ident::Dirent { name, .. }, Some(d)) = (id, DirentRec::decode(&f.value)?) {
                out.push((name, d));
            }
        }
        Ok(out)
    }

    /// The path of `ino`: directories by their parents, others by one walk of the tree.
    fn path(&mut self, ino: u64) -> Result<Option<String>> {
        if ino == ROOT_INO {
            return Ok(Some("/".into()));
        }
        if let Some(p) = self.paths.get(&ino) {
            return Ok(Some(p.clone()));
        }
        if let Some(rec) = self.inode(ino)? {
            if rec.kind == Kind::Dir && rec.parent != 0 {
                if let Some(pp) = self.path(rec.parent)? {
                    if let Some((name, _)) = self.entries(rec.parent)?.into_iter().find(|(_, d)| d.ino == ino) {
                        let p = join(&pp, &name);
                        self.paths.insert(ino, p.clone());
                        return Ok(Some(p));
                    }
                }
            }
        }
        if !self.walked {
            self.walked = true;
            let mut stack = vec![(ROOT_INO, "/".to_string())];
            while let Some((dir, p)) = stack.pop() {
                for (name, d) in self.entries(dir)? {
                    let child = join(&p, &name);
                    if d.kind == Kind::Dir {
                        stack.push((d.ino, child.clone()));
                    }
                    self.paths.entry(d.ino).or_insert(child);
                }
            }
        }
        Ok(self.paths.get(&ino).cloned())
    }
}

/// Whether view `b` descends from view `a`: it reads every lineage of `a` at `a`'s epoch or
/// later (a clone of `a`'s snapshot or of a later one, or `a`'s own later views). Then every
/// inode number both views show names one file: the descendant's new inodes are numbered past
/// all of `a`'s.
pub fn descends(a: &[(u64, u64)], b: &[(u64, u64)]) -> bool {
    a.iter().all(|&(l, e)| b.iter().any(|&(lb, eb)| lb == l && eb >= e))
}

fn join(dir: &str, name: &[u8]) -> String {
    let n = crate::volume::name_text(name);
    if dir == "/" {
        format!("/{n}")
    } else {
        format!("{dir}/{n}")
    }
}

/// The value of `id` in the view along `chain`, normalized: None for absent or removed.
pub(crate) fn value(store: &Store, id: &Ident, chain: &Chain) -> Result<Option<Vec<u8>>> {
    let Some(f) = store.visible(id, chain)? else { return Ok(None) };
    Ok(match id {
        Ident::Inode { .. } => InodeRec::decode(&f.value)?.map(|r| r.encode()),
        Ident::Dirent { .. } => DirentRec::decode(&f.value)?.map(|d| d.encode()),
        Ident::Xattr { .. } => decode_xattr(&f.value)?,
        Ident::Extent { .. } => decode_extent(&f.value)?.map(|h| h.to_vec()),
        Ident::Count { .. } => None,
    })
}

/// True if anything differs between the views along chains `a` and `b` (cost: the changes).
pub fn differs(store: &Store, a: &Chain, b: &Chain) -> Result<bool> {
    for id in candidates(store, a, b)? {
        if value(store, &id, a)? != value(store, &id, b)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The identities whose visible version may differ between chains `a` and `b`.
pub(crate) fn candidates(store: &Store, a: &Chain, b: &Chain) -> Result<BTreeSet<Ident>> {
    let mut out = BTreeSet::new();
    let mut lineages: Vec<u64> = a.iter().chain(b.iter()).map(|x| x.0).collect();
    lineages.sort_unstable();
    lineages.dedup();
    for l in lineages {
        let (ea, eb) = (a.iter().find(|x| x.0 == l).map(|x| x.1), b.iter().find(|x| x.0 == l).map(|x| x.1));
        let (lo, hi) = match (ea, eb) {
            (Some(x), Some(y)) if x == y => continue,
            (Some(x), Some(y)) => (x.min(y) + 1, x.max(y)),
            (Some(x), None) | (None, Some(x)) => (0, x),
            (None, None) => continue,
        };
        store.births(&Cursor::births_at(l, lo), |id, epoch| {
            if epoch > hi {
                return Ok(false);
            }
            if !matches!(id, Ident::Count { .. }) {
                out.insert(bare(&id));
            }
            Ok(true)
        })?;
    }
    Ok(out)
}

/// The changes from the view read along chain `a` to the one along chain `b`.
pub fn diff(store: &Store, a: Chain, b: Chain) -> Result<Vec<Change>> {
    let ids = candidates(store, &a, &b)?;
    let mut sa = Side { store, chain: a, paths: HashMap::new(), walked: false };
    let mut sb = Side { store, chain: b, paths: HashMap::new(), walked: false };
    // Per inode: data / metadata changed; names removed and added (dir, name, ino).
    let mut data: BTreeSet<u64> = BTreeSet::new();
    let mut meta: BTreeSet<u64> = BTreeSet::new();
    let mut touched: BTreeSet<u64> = BTreeSet::new();
    let mut removed: Vec<(u64, Vec<u8>, DirentRec)> = Vec::new();
    let mut added: Vec<(u64, Vec<u8>, DirentRec)> = Vec::new();
    for id in &ids {
        let va = store.visible(id, &sa.chain)?.map(|f| f.value);
        let vb = store.visible(id, &sb.chain)?.map(|f| f.value);
        match id {
            Ident::Inode { ino, .. } => {
                let (ra, rb) = (va.map(|v| InodeRec::decode(&v)).transpose()?.flatten(), vb.map(|v| InodeRec::decode(&v)).transpose()?.flatten());
                if let (Some(x), Some(y)) = (ra, rb) {
                    if x.size != y.size {
                        data.insert(*ino);
                    }
                    // Not atime (reads move it) nor ctime (every change does); mtime only
                    // counts as metadata when the data did not change.
                    if (x.perm, x.uid, x.gid, x.rdev, &x.target) != (y.perm, y.uid, y.gid, y.rdev, &y.target) {
                        meta.insert(*ino);
                    }
                    if x.mtime != y.mtime {
                        touched.insert(*ino);
                    }
                }
            }
            Ident::Extent { ino, .. } => {
                let ha = va.map(|v| decode_extent(&v)).transpose()?.flatten();
                let hb = vb.map(|v| decode_extent(&v)).transpose()?.flatten();
                if ha != hb {
                    data.insert(*ino);
                }
            }
            Ident::Xattr { ino, .. } => {
                let xa = va.map(|v| decode_xattr(&v)).transpose()?.flatten();
                let xb = vb.map(|v| decode_xattr(&v)).transpose()?.flatten();
                if xa != xb {
                    meta.insert(*ino);
                }
            }
            Ident::Dirent { dir, name, .. } => {
                let da = va.map(|v| DirentRec::decode(&v)).transpose()?.flatten();
                let db = vb.map(|v| DirentRec::decode(&v)).transpose()?.flatten();
                if da.map(|d| d.ino) == db.map(|d| d.ino) {
                    continue;
                }
                if let Some(d) = da {
                    removed.push((*dir, name.clone(), d));
                }
                if let Some(d) = db {
                    added.push((*dir, name.clone(), d));
                }
            }
            Ident::Count { .. } => {}
        }
    }
    meta.extend(touched.difference(&data));
    let mut out = Vec::new();
    let mut named: BTreeSet<u64> = BTreeSet::new();
    // A name gone from one place and made in another for the same inode: a rename (when
    // the inode exists in both views; else an inode number used again).
    let mut adds: BTreeMap<u64, Vec<(u64, Vec<u8>)>> = BTreeMap::new();
    for (dir, name, d) in &added {
        adds.entry(d.ino).or_default().push((*dir, name.clone()));
    }
    for (dir, name, d) in &removed {
        let old = sa.path(*dir)?.map(|p| join(&p, name)).unwrap_or_else(|| crate::volume::name_text(name));
        let still = sb.inode(d.ino)?.is_some() && sa.inode(d.ino)?.is_some();
        match adds.get_mut(&d.ino).filter(|_| still).and_then(|v| v.pop()) {
            Some((ndir, nname)) => {
                let new = sb.path(ndir)?.map(|p| join(&p, &nname)).unwrap_or_else(|| crate::volume::name_text(&nname));
                out.push(Change { kind: "R".into(), path: old, to: Some(new), ftype: ftype(d.kind).into(), data: data.contains(&d.ino), meta: meta.contains(&d.ino) });
            }
            None => {
                out.push(Change { kind: "-".into(), path: old, to: None, ftype: ftype(d.kind).into(), data: false, meta: false });
                continue;
            }
        }
        // A rename carries the inode's changes; a name removed does not (another may remain).
        named.insert(d.ino);
    }
    for rest in adds.into_values() {
        for (dir, name) in rest {
            let kind = sb.dirent(dir, &name)?.map(|d| d.kind).unwrap_or(Kind::File);
            let p = sb.path(dir)?.map(|p| join(&p, &name)).unwrap_or_else(|| crate::volume::name_text(&name));
            out.push(Change { kind: "+".into(), path: p, to: None, ftype: ftype(kind).into(), data: false, meta: false });
        }
    }
    for ino in data.union(&meta).copied().collect::<BTreeSet<u64>>() {
        if named.contains(&ino) {
            continue;
        }
        let (Some(_), Some(rb)) = (sa.inode(ino)?, sb.inode(ino)?) else { continue };
        let Some(p) = sb.path(ino)? else { continue };
        out.push(Change { kind: "M".into(), path: p, to: None, ftype: ftype(rb.kind).into(), data: data.contains(&ino), meta: meta.contains(&ino) });
    }
    out.sort_by(|x, y| x.path.cmp(&y.path).then(x.kind.cmp(&y.kind)));
    Ok(out)
}
