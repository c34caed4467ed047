//! The hidden `.snapshots` directory of a mounted volume: one read-only view per snapshot,
//! opened on first lookup. Inode numbers of views are `k << 40 | ino` (k >= 1 per view);
//! the directory itself is `1 << 40`. A volume's own inode numbers stay below `1 << 40`.

use super::{err, FsResult, DirtyBudget, Volume};
use crate::volume::SnapshotViews;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub const VIEW_SHIFT: u32 = 40;
pub const VIEW_BASE: u64 = 1 << VIEW_SHIFT;
pub const SNAPDIR: u64 = VIEW_BASE;
pub const NAME: &[u8] = b".snapshots";

pub fn split(ino: u64) -> (u64, u64) {
    (ino >> VIEW_SHIFT, ino & (VIEW_BASE - 1))
}

pub fn join(k: u64, ino: u64) -> u64 {
    (k << VIEW_SHIFT) | ino
}

#[derive(Default)]
struct Views {
    by_name: HashMap<String, u64>,
    open: HashMap<u64, Arc<Volume>>,
    next: u64,
}

pub struct SnapDir {
    snapshots: SnapshotViews,
    budget: Arc<DirtyBudget>,
    views: Mutex<Views>,
}

impl SnapDir {
    pub fn new(snapshots: SnapshotViews, budget: Arc<DirtyBudget>) -> SnapDir {
        SnapDir { snapshots, budget, views: Mutex::new(Views { next: 2, ..Default::default() }) }
    }

    fn number(v: &mut Views, name: &str) -> u64 {
        if let Some(k) = v.by_name.get(name) {
            return *k;
        }
        let k = v.next;
        v.next += 1;
        v.by_name.insert(name.to_string(), k);
        k
    }

    /// The volume's snapshots now, each with its view number.
    pub fn list(&self) -> FsResult<Vec<(String, u64)>> {
        let names = self.snapshots.names()?;
        let mut v = self.views.lock().map_err(|_| err(libc::EIO))?;
        Ok(names.into_iter().map(|name| {
            let k = Self::number(&mut v, &name);
            (name, k)
        }).collect())
    }

    /// Opens (or finds) the view of snapshot `name`. A name that is no snapshot gets no
    /// number, so lookups of missing names leave nothing behind.
    pub fn open(&self, name: &str) -> FsResult<(u64, Arc<Volume>)> {
        if crate::volume::check_name(name).is_err() {
            return Err(err(libc::ENOENT));
        }
        {
            let v = self.views.lock().map_err(|_| err(libc::EIO))?;
            if let Some(view) = v.by_name.get(name).and_then(|k| v.open.get(k).map(|o| (*k, o.clone()))) {
                return Ok(view);
            }
        }
        // Catalog reads and the view's opening happen outside the table lock.
        let Some(view) = self.snapshots.open(name)? else { return Err(err(libc::ENOENT)) };
        let view = Arc::new(Volume::open(view, self.budget.clone())?);
        let mut v = self.views.lock().map_err(|_| err(libc::EIO))?;
        let k = Self::number(&mut v, name);
        let view = v.open.entry(k).or_insert(view).clone();
        Ok((k, view))
    }

    /// The open view number `k`, or ESTALE once its snapshot is gone.
    pub fn view(&self, k: u64) -> FsResult<Arc<Volume>> {
        let v = self.views.lock().map_err(|_| err(libc::EIO))?;
        v.open.get(&k).cloned().ok_or_else(|| err(libc::ESTALE))
    }

    /// Closes the view of a destroyed snapshot.
    pub fn forget(&self, name: &str) {
        if let Ok(mut v) = self.views.lock() {
            if let Some(k) = v.by_name.remove(name) {
                v.open.remove(&k);
            }
        }
    }
}
