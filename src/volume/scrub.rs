//! `clonefs scrub`: re-reads and re-hashes every stored block, and names the volumes,
//! snapshots and files that use a damaged one. It reads a RocksDB snapshot of the store, so
//! it runs while volumes are mounted and written (blocks written meanwhile are not checked).

use super::{Catalog, ROOT_INO};
use crate::error::Result;
use crate::store::records::{hex, Hash, Kind};
use crate::store::Store;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// How far a running scrub is, for a progress bar.
#[derive(Debug, Default)]
pub struct Progress {
    pub done: AtomicU64,
    pub total: AtomicU64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ScrubReport {
    pub blocks: u64,
    pub bytes: u64,
    pub damaged: Vec<DamagedBlock>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct DamagedBlock {
    pub hash: String,
    pub locator: u64,
    pub reason: String,
    /// Every file that reads the block: `VOL:/path` or `VOL@SNAP:/path`, with the offset.
    pub used_by: Vec<BlockUse>,
}

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockUse {
    pub view: String,
    pub path: String,
    pub offset: u64,
}

/// Checks every block; names the users of the damaged ones.
pub fn run(store: &Arc<Store>, catalog: &Catalog, progress: &Progress) -> Result<ScrubReport> {
    progress.total.store(store.space()?.physical, Ordering::Relaxed);
    progress.done.store(0, Ordering::Relaxed);
    let snap = store.view()?;
    let check = snap.check_blocks(|n| {
        progress.done.fetch_add(n, Ordering::Relaxed);
    })?;
    let mut report = ScrubReport { blocks: check.blocks, bytes: check.bytes, damaged: Vec::new() };
    if check.damaged.is_empty() {
        return Ok(report);
    }
    // Where the damaged hashes are named: (ino, block index), in any lineage. Clones share
    // inode numbers with their origin, so every view is asked about every place.
    let bad: HashSet<Hash> = check.damaged.iter().map(|d| d.hash).collect();
    let mut places: HashSet<(u64, u64)> = HashSet::new();
    snap.for_each_extent(|_, ino, index, _, h| {
        if h.is_some_and(|h| bad.contains(&h)) {
            places.insert((ino, index));
        }
        Ok(())
    })?;
    drop(snap);
    let mut users: HashMap<Hash, Vec<BlockUse>> = HashMap::new();
    for vol in Catalog::list(store)? {
        let mut names = vec![None];
        names.extend(Catalog::snapshots(store, vol.id)?.into_iter().map(|s| Some(s.name)));
        for snap_name in names {
            let view = catalog.open_view(store, &vol.name, snap_name.as_deref(), true)?;
            let label = match &snap_name {
                Some(s) => format!("{}@{s}", vol.name),
                None => vol.name.clone(),
            };
            let mut found: Vec<(u64, u64, Hash)> = Vec::new();
            for &(ino, index) in &places {
                if let Some((_, Some(h))) = view.extent(ino, index)? {
                    if bad.contains(&h) {
                        found.push((ino, index, h));
                    }
                }
            }
            if found.is_empty() {
                continue;
            }
            let paths = paths_of(&view, found.iter().map(|f| f.0).collect())?;
            for (ino, index, h) in found {
                let path = paths.get(&ino).cloned().unwrap_or_else(|| format!("(inode {ino}, no name)"));
                users.entry(h).or_default().push(BlockUse {
                    view: label.clone(),
                    path,
                    offset: index * vol.block_size as u64,
                });
            }
        }
    }
    for d in check.damaged {
        let mut used_by = users.remove(&d.hash).unwrap_or_default();
        used_by.sort_by(|a, b| (&a.view, &a.path, a.offset).cmp(&(&b.view, &b.path, b.offset)));
        log::error!("scrub: block {} at locator {} {}; used by {} file block(s)", hex(&d.hash), d.loc, d.reason, used_by.len());
        report.damaged.push(DamagedBlock { hash: hex(&d.hash), locator: d.loc, reason: d.reason, used_by });
    }
    Ok(report)
}

/// Paths of `want` in one view, found by walking its tree from the root (breadth first,
/// stopping once all are named).
fn paths_of(view: &super::view::View, mut want: HashSet<u64>) -> Result<HashMap<u64, String>> {
    let mut out = HashMap::new();
    let mut queue = VecDeque::from([(ROOT_INO, String::new())]);
    while let Some((dir, path)) = queue.pop_front() {
        if want.is_empty() {
            break;
        }
        for (name, d) in view.dirents(dir)? {
            let p = format!("{path}/{}", super::name_text(&name));
            if want.remove(&d.ino) {
                out.insert(d.ino, p.clone());
            }
            if d.kind == Kind::Dir {
                queue.push_back((d.ino, p));
            }
        }
    }
    Ok(out)
}
