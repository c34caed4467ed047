//! Filesystem operations on one mounted volume. Nothing here knows FUSE: operations take
//! plain arguments and return `Result`; `fuse.rs` adapts them to the kernel protocol.
//!
//! Locking: a volume-wide namespace mutex serializes operations that change names (create,
//! link, unlink, rename, ...); inside it, nodes are locked in ascending inode order. Data
//! operations (read, write, flush, setattr) lock only their node. The store's space lock is
//! innermost. So no cycle can form.

pub mod data;
pub mod fuse;
pub mod live;
pub mod snapdir;
pub mod namespace;
pub mod attr;
pub mod table;

use crate::error::{Error, Result};
use crate::store::records::{self, Hash, InodeRec};
use crate::store::{cf, keys, Found, Store, Txn, ViewCtx};
use crate::volume::ViewSpec;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use table::{lock, Node, NodeRef, Table};

pub use crate::volume::ROOT_INO;

/// Who is asking: the caller's credentials from the kernel.
#[derive(Clone, Copy, Debug)]
pub struct Ctx {
    pub uid: u32,
    pub gid: u32,
}

/// An inode number with its attributes, as replied to the kernel.
#[derive(Clone, Debug)]
pub struct Entry {
    pub ino: u64,
    pub rec: InodeRec,
}

/// Dirty bytes held in memory across all volumes of a daemon, and the limits on them.
pub struct DirtyBudget {
    pub bytes: AtomicU64,
    /// Past this many dirty bytes in total, a writer flushes its own file.
    pub total_limit: u64,
    /// Past this many dirty bytes in one file, its writer flushes it.
    pub file_limit: u64,
    /// Dirty data older than this is flushed by the background flusher.
    pub max_age: Duration,
    /// Bytes of clean copies of recently flushed blocks kept to spare read-modify-write loads.
    pub clean_bytes: AtomicU64,
    pub clean_limit: u64,
}

impl Default for DirtyBudget {
    fn default() -> Self {
        DirtyBudget {
            bytes: AtomicU64::new(0),
            total_limit: 64 << 20,
            file_limit: 8 << 20,
            max_age: Duration::from_secs(2),
            clean_bytes: AtomicU64::new(0),
            clean_limit: 32 << 20,
        }
    }
}

/// One directory entry of a listing taken at opendir.
#[derive(Clone, Debug)]
pub struct DirItem {
    pub name: Vec<u8>,
    pub ino: u64,
    pub kind: records::Kind,
}

pub fn err(code: i32) -> Error {
    Error::Errno(code)
}

/// What an extent becomes.
pub enum Ext {
    Hole,
    /// New bytes with their hash.
    Data(Hash, Vec<u8>),
    /// A block already stored (shared by a file-level clone).
    Shared(Hash),
}

pub struct Volume {
    pub store: Arc<Store>,
    pub spec: ViewSpec,
    pub read_only: bool,
    pub bs: u64,
    /// Epoch this view reads (and, for a head, writes) at. Changes only under the cut.
    epoch: AtomicU64,
    /// Pinned epochs of this lineage: a version one of them sees is never deleted in place.
    pins: Mutex<BTreeSet<u64>>,
    budget: Arc<DirtyBudget>,
    ns: Mutex<()>,
    table: Table,
    next_ino: AtomicU64,
    dirs: Mutex<HashMap<u64, Arc<Vec<DirItem>>>>,
    next_fh: AtomicU64,
    dirty: Mutex<HashSet<u64>>,
}

impl Drop for Volume {
    /// Returns this view's cached and unsaved bytes to the daemon-wide budget.
    fn drop(&mut self) {
        for ino in self.table.inos() {
            if let Ok(Some(node)) = self.table.get(ino, || Ok(None)) {
                if let Ok(n) = node.lock() {
                    self.budget.clean_bytes.fetch_sub(n.clean.len() as u64 * self.bs, Ordering::Relaxed);
                    self.budget.bytes.fetch_sub(n.dirty.len() as u64 * self.bs, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Where a visible version was found: chain level (0 = own lineage) and epoch.
pub type At = (usize, u64);

impl Volume {
    pub fn open(store: Arc<Store>, spec: ViewSpec, budget: Arc<DirtyBudget>) -> Result<Volume> {
        let mut max_ino = ROOT_INO;
        for l in std::iter::once(spec.lineage).chain(spec.parents.iter().map(|p| p.0)) {
            if let Some(k) = store.last_key(cf::INODES, &keys::lineage_prefix(l))? {
                max_ino = max_ino.max(keys::read_u64(&k, 8));
            }
        }
        let v = Volume {
            bs: spec.block_size as u64,
            store,
            read_only: spec.read_only,
            epoch: AtomicU64::new(spec.epoch),
            pins: Mutex::new(spec.pins.clone()),
            spec,
            budget,
            ns: Mutex::new(()),
            table: Table::new(),
            next_ino: AtomicU64::new(max_ino + 1),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            dirty: Mutex::new(HashSet::new()),
        };
        if !v.read_only {
            v.purge_orphans()?;
        }
        Ok(v)
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    fn lineage(&self) -> u64 {
        self.spec.lineage
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// The lineages this view reads, nearest first, with the epoch read in each.
    fn chain(&self) -> Vec<(u64, u64)> {
        let mut c = Vec::with_capacity(1 + self.spec.parents.len());
        c.push((self.lineage(), self.epoch()));
        c.extend_from_slice(&self.spec.parents);
        c
    }

    /// After a snapshot of this head at its epoch `e`: `e` is pinned and writes go to `e + 1`.
    /// Call only while no operation runs (under the cut).
    pub fn advance(&self, e: u64) {
        if let Ok(mut p) = self.pins.lock() {
            p.insert(e);
        }
        self.epoch.store(e + 1, Ordering::SeqCst);
    }

    /// The pins of this lineage changed (a snapshot went away): take the catalog's set.
    /// Call only while no operation runs (under the cut).
    pub fn set_pins(&self, pins: BTreeSet<u64>) {
        if let Ok(mut p) = self.pins.lock() {
            *p = pins;
        }
    }

    /// What this head's block counts need to know (`Txn::view_ref`).
    fn view_ctx(&self) -> ViewCtx {
        ViewCtx {
            lineage: self.lineage(),
            epoch: self.epoch(),
            parents: self.spec.parents.clone(),
            pins: self.pins.lock().map(|p| p.clone()).unwrap_or_default(),
        }
    }

    fn pinned_between(&self, from: u64, to: u64) -> bool {
        from < to && self.pins.lock().map(|p| p.range(from..to).next().is_some()).unwrap_or(true)
    }

    fn ns(&self) -> Result<MutexGuard<'_, ()>> {
        if self.read_only {
            return Err(err(libc::EROFS));
        }
        self.ns.lock().map_err(|_| Error::Corrupt("namespace lock poisoned".into()))
    }

    fn check_writable(&self) -> Result<()> {
        if self.read_only {
            Err(err(libc::EROFS))
        } else {
            Ok(())
        }
    }

    /// The visible version of `ident` (a key of our own lineage, without epoch).
    fn find(&self, cfname: &str, ident: &[u8]) -> Result<Option<Found>> {
        self.store.get_chain(cfname, &ident[8..], &self.chain())
    }

    /// Visible versions of identities under `prefix` (own-lineage keys) from `start` on.
    fn scan_visible(&self, cfname: &str, prefix: &[u8], start: &[u8], end: Option<&[u8]>) -> Result<Vec<(Vec<u8>, Found)>> {
        self.store.scan_chain(cfname, &prefix[8..], &start[8..], end.map(|e| &e[8..]), &self.chain())
    }

    fn load_rec(&self, ino: u64) -> Result<Option<InodeRec>> {
        match self.find(cf::INODES, &keys::inode_key(self.lineage(), ino))? {
            Some(f) => InodeRec::decode(&f.value),
            None => Ok(None),
        }
    }

    /// The node of a live inode, or ENOENT.
    pub(crate) fn node(&self, ino: u64) -> Result<NodeRef> {
        self.table.get(ino, || self.load_rec(ino))?.ok_or_else(|| err(libc::ENOENT))
    }

    fn alloc_ino(&self) -> u64 {
        self.next_ino.fetch_add(1, Ordering::Relaxed)
    }

    /// True if something older than the version at `b` of `ident` would show through,
    /// live: an older version of our own lineage, or a version in an ancestor.
    fn older_visible(&self, cfname: &str, ident: &[u8], b: u64) -> Result<bool> {
        if b > 0 {
            if let Some((_, v)) = self.store.get_version(cfname, ident, b - 1)? {
                return Ok(!records::is_tombstone(&v));
            }
        }
        Ok(match self.store.get_chain(cfname, &ident[8..], &self.spec.parents)? {
            Some(f) => !records::is_tombstone(&f.value),
            None => false,
        })
    }

    /// Replaces the visible version `old` of `ident` with `new` (None removes it). The old
    /// version is deleted if it is ours and no pin sees it (written at this epoch, or no
    /// snapshot between); otherwise it stays for the snapshot or ancestor that sees it.
    /// A removal writes a tombstone when something older would show through, unless `hide`
    /// is false (the caller knows nothing can reach the key any more).
    /// Returns true if the old version was deleted (its block reference must go).
    fn stage_version(&self, t: &mut Txn, cfname: &str, ident: Vec<u8>, old: Option<At>, new: Option<&[u8]>, hide: bool) -> Result<bool> {
        let e = self.epoch();
        let tag = cf::tag(cfname);
        let old_dies = matches!(old, Some((0, b)) if b == e || !self.pinned_between(b, e));
        if let Some((0, b)) = old {
            if old_dies && b != e {
                t.delete(&self.store, cfname, &keys::versioned(ident.clone(), b))?;
                t.delete(&self.store, cf::BIRTHS, &keys::birth(&ident, b, tag))?;
            }
        }
        let tomb;
        let value = match new {
            Some(v) => Some(v),
            None => {
                let shows = hide
                    && match old {
                        None => false,
                        Some(_) if !old_dies => true,
                        Some((_, b)) => self.older_visible(cfname, &ident, b)?,
                    };
                if shows {
                    tomb = records::tombstone();
                    Some(&tomb[..])
                } else {
                    None
                }
            }
        };
        match value {
            Some(v) => {
                t.put(&self.store, cf::BIRTHS, &keys::birth(&ident, e, tag), &[])?;
                t.put(&self.store, cfname, &keys::versioned(ident, e), v)?;
            }
            None => {
                if old == Some((0, e)) {
                    t.delete(&self.store, cf::BIRTHS, &keys::birth(&ident, e, tag))?;
                    t.delete(&self.store, cfname, &keys::versioned(ident, e))?;
                }
            }
        }
        Ok(old_dies)
    }

    /// The visible extent of block `idx`: where it was found, and its hash (None: hole).
    fn extent(&self, ino: u64, idx: u64) -> Result<Option<(At, Option<Hash>)>> {
        match self.find(cf::EXTENTS, &keys::extent_key(self.lineage(), ino, idx))? {
            Some(f) => Ok(Some(((f.level, f.epoch), records::decode_extent(&f.value)?))),
            None => Ok(None),
        }
    }

    /// Visible data extents of a file in blocks [from, to): (index, where found, hash).
    fn extents_from(&self, ino: u64, from: u64, to: u64) -> Result<Vec<(u64, At, Hash)>> {
        let l = self.lineage();
        let end = if to == u64::MAX { None } else { Some(keys::extent_key(l, ino, to)) };
        let found = self.scan_visible(cf::EXTENTS, &keys::extents_of(l, ino), &keys::extent_key(l, ino, from), end.as_deref())?;
        let mut out = Vec::with_capacity(found.len());
        for (rest, f) in found {
            if let Some(h) = records::decode_extent(&f.value)? {
                out.push((keys::read_u64(&rest, 8), (f.level, f.epoch), h));
            }
        }
        Ok(out)
    }

    /// Sets block `idx` of `ino`, given what is visible there now (`old`). Returns the change
    /// in the file's count of stored blocks.
    fn stage_extent(&self, t: &mut Txn, ino: u64, idx: u64, old: Option<(At, Option<Hash>)>, new: Ext) -> Result<i64> {
        let l = self.lineage();
        let old_hash = old.and_then(|o| o.1);
        let new_hash = match &new {
            Ext::Hole => None,
            Ext::Data(h, _) | Ext::Shared(h) => Some(*h),
        };
        if old_hash == new_hash {
            return Ok(0);
        }
        let value = new_hash.map(|h| records::encode_extent(&h));
        let dies = self.stage_version(t, cf::EXTENTS, keys::extent_key(l, ino, idx), old.map(|o| o.0), value.as_deref(), true)?;
        if let (Some(h), true) = (old_hash, dies) {
            t.drop_ref(h, l);
        }
        if let Some(h) = old_hash {
            t.view_ref(|| self.view_ctx(), h, -1);
        }
        if let Some(h) = new_hash {
            t.view_ref(|| self.view_ctx(), h, 1);
        }
        match new {
            Ext::Hole => {}
            Ext::Data(h, data) => t.add_ref(h, l, data),
            Ext::Shared(h) => t.share_ref(h, l),
        }
        Ok(new_hash.is_some() as i64 - old_hash.is_some() as i64)
    }

    /// Writes an inode record at this epoch.
    fn stage_inode(&self, t: &mut Txn, ino: u64, rec: &InodeRec) -> Result<()> {
        let ident = keys::inode_key(self.lineage(), ino);
        let old = self.find(cf::INODES, &ident)?.map(|f| (f.level, f.epoch));
        self.stage_version(t, cf::INODES, ident, old, Some(&rec.encode()), true)?;
        Ok(())
    }

    /// Stages `n`'s dirty blocks and `rec` (its new attributes) into `t`. Returns the record
    /// as written; call `applied` after the commit succeeds.
    fn stage_node(&self, t: &mut Txn, ino: u64, n: &Node, mut rec: InodeRec) -> Result<InodeRec> {
        let mut delta = 0i64;
        // Dense dirty ranges (sequential writes) read the old extents with one scan.
        let scanned = match (n.dirty.keys().next(), n.dirty.keys().next_back()) {
            (Some(&first), Some(&last)) if n.dirty.len() > 4 && last - first < 8 * n.dirty.len() as u64 => {
                let l = self.lineage();
                let mut m = HashMap::new();
                let prefix = keys::extents_of(l, ino);
                let end = keys::extent_key(l, ino, last + 1);
                for (rest, f) in self.scan_visible(cf::EXTENTS, &prefix, &keys::extent_key(l, ino, first), Some(&end))? {
                    m.insert(keys::read_u64(&rest, 8), ((f.level, f.epoch), records::decode_extent(&f.value)?));
                }
                Some(m)
            }
            _ => None,
        };
        for (&idx, data) in &n.dirty {
            let old = match &scanned {
                Some(m) => m.get(&idx).copied(),
                None => self.extent(ino, idx)?,
            };
            // A block is stored without its trailing zeros (a small file's tail costs its
            // bytes, not a block); all-zero blocks are holes.
            let new = match data.iter().rposition(|b| *b != 0) {
                None => Ext::Hole,
                Some(last) => {
                    let bytes = &data[..=last];
                    Ext::Data(self.store.hash(bytes), bytes.to_vec())
                }
            };
            delta += self.stage_extent(t, ino, idx, old, new)?;
        }
        rec.blocks = (rec.blocks as i64 + delta).max(0) as u64;
        self.stage_inode(t, ino, &rec)?;
        Ok(rec)
    }

    /// Records in memory what `stage_node` wrote.
    fn applied(&self, ino: u64, n: &mut Node, rec: InodeRec) {
        n.rec = rec;
        n.meta_dirty = false;
        if !n.dirty.is_empty() {
            let bytes = n.dirty.len() as u64 * self.bs;
            self.budget.bytes.fetch_sub(bytes, Ordering::Relaxed);
            let flushed = std::mem::take(&mut n.dirty);
            // Clean copies of every flushed block are stale now; keep fresh copies of the last
            // few (an appended tail, a hot page).
            let before = n.clean.len();
            n.clean.retain(|(i, _)| !flushed.contains_key(i));
            let gone = (before - n.clean.len()) as u64;
            self.budget.clean_bytes.fetch_sub(gone * self.bs, Ordering::Relaxed);
            for (idx, data) in flushed.into_iter().rev().take(table::CLEAN_PER_NODE) {
                self.keep_clean(n, idx, data);
            }
            n.dirty_since = None;
            if let Ok(mut d) = self.dirty.lock() {
                d.remove(&ino);
            }
        }
    }

    /// Writes a node's record (and its dirty blocks) in a batch of its own.
    fn save_node(&self, ino: u64, n: &mut Node, rec: InodeRec, sync: bool) -> Result<()> {
        let mut t = self.store.txn();
        let rec = self.stage_node(&mut t, ino, n, rec)?;
        self.store.commit(t, sync)?;
        self.applied(ino, n, rec);
        Ok(())
    }

    /// Flushes one file's dirty data; with `sync`, makes it and everything before durable.
    pub fn flush_ino(&self, ino: u64, sync: bool) -> Result<()> {
        let node = match self.table.get(ino, || Ok(None))? {
            Some(n) => n,
            None => {
                if sync {
                    self.store.sync()?;
                }
                return Ok(());
            }
        };
        let mut n = lock(&node)?;
        if n.is_clean() {
            drop(n);
            if sync {
                self.store.sync()?;
            }
            return Ok(());
        }
        let rec = n.rec.clone();
        self.save_node(ino, &mut n, rec, sync)
    }

    /// Flushes files whose dirty data is older than `age` (all with `age` zero).
    pub fn flush_older_than(&self, age: Duration) -> Result<()> {
        let inos: Vec<u64> = match self.dirty.lock() {
            Ok(d) => d.iter().copied().collect(),
            Err(_) => return Err(Error::Corrupt("dirty set poisoned".into())),
        };
        let now = Instant::now();
        for ino in inos {
            if let Some(node) = self.table.get(ino, || Ok(None))? {
                let mut n = lock(&node)?;
                let old = n.dirty_since.map(|t| now.duration_since(t) >= age).unwrap_or(n.meta_dirty);
                if old && !n.is_clean() {
                    let rec = n.rec.clone();
                    self.save_node(ino, &mut n, rec, false)?;
                }
            }
        }
        Ok(())
    }

    /// Flushes everything and syncs the WAL (unmount, snapshot, shutdown).
    pub fn flush_all(&self) -> Result<()> {
        self.flush_older_than(Duration::ZERO)?;
        self.store.sync()
    }

    /// Removes an inode with no names left and no open handles: data, xattrs, record.
    /// Its number is never reused in this view, so only the record needs a tombstone.
    fn stage_purge(&self, t: &mut Txn, ino: u64) -> Result<()> {
        let l = self.lineage();
        for (idx, at, h) in self.extents_from(ino, 0, u64::MAX)? {
            t.view_ref(|| self.view_ctx(), h, -1);
            if at.0 == 0 {
                let ident = keys::extent_key(l, ino, idx);
                if self.stage_version(t, cf::EXTENTS, ident, Some(at), None, false)? {
                    t.drop_ref(h, l);
                }
            }
        }
        let prefix = keys::dir_prefix(l, ino);
        for (rest, f) in self.scan_visible(cf::XATTRS, &prefix, &prefix, None)? {
            if f.level == 0 {
                let ident = [&l.to_be_bytes()[..], &rest].concat();
                self.stage_version(t, cf::XATTRS, ident, Some((0, f.epoch)), None, false)?;
            }
        }
        let ident = keys::inode_key(l, ino);
        if let Some(f) = self.find(cf::INODES, &ident)? {
            self.stage_version(t, cf::INODES, ident, Some((f.level, f.epoch)), None, true)?;
        }
        t.delete(&self.store, cf::CATALOG, &keys::catalog::orphan(l, ino))?;
        Ok(())
    }

    /// Remembers `data` as the stored content of block `idx`, within the clean budget.
    fn keep_clean(&self, n: &mut Node, idx: u64, data: Vec<u8>) {
        self.drop_clean(n, idx..idx + 1);
        let used = self.budget.clean_bytes.load(Ordering::Relaxed);
        if used + self.bs > self.budget.clean_limit {
            return;
        }
        if n.clean.len() >= table::CLEAN_PER_NODE {
            if n.clean.pop_front().is_some() {
                self.budget.clean_bytes.fetch_sub(self.bs, Ordering::Relaxed);
            }
        }
        self.budget.clean_bytes.fetch_add(self.bs, Ordering::Relaxed);
        n.clean.push_back((idx, data));
    }

    /// Forgets clean copies of blocks in `range` (their stored content is changing).
    fn drop_clean(&self, n: &mut Node, range: std::ops::Range<u64>) {
        let before = n.clean.len();
        n.clean.retain(|(i, _)| !range.contains(i));
        let gone = (before - n.clean.len()) as u64;
        if gone > 0 {
            self.budget.clean_bytes.fetch_sub(gone * self.bs, Ordering::Relaxed);
        }
    }

    /// Drops an inode's unsaved blocks after a purge, and its node unless the kernel still
    /// holds the inode (then the node stays, marked purged, until the kernel forgets it).
    fn forget_node(&self, ino: u64, n: &mut Node) -> Result<()> {
        self.drop_clean(n, 0..u64::MAX);
        if !n.dirty.is_empty() {
            self.budget.bytes.fetch_sub(n.dirty.len() as u64 * self.bs, Ordering::Relaxed);
            n.dirty.clear();
            if let Ok(mut d) = self.dirty.lock() {
                d.remove(&ino);
            }
        }
        n.meta_dirty = false;
        if n.lookups > 0 {
            n.purged = true;
            return Ok(());
        }
        self.table.remove(ino)
    }

    /// Purges inodes left unlinked-but-open by a crash.
    fn purge_orphans(&self) -> Result<()> {
        let mut inos = Vec::new();
        self.store.scan(cf::CATALOG, &keys::catalog::orphans_of(self.lineage()), |k, _| {
            inos.push(keys::read_u64(k, 9));
            Ok(true)
        })?;
        for ino in inos {
            log::info!("volume {}: removing orphan inode {ino}", self.name());
            let mut t = self.store.txn();
            self.stage_purge(&mut t, ino)?;
            self.store.commit(t, false)?;
        }
        Ok(())
    }

    /// The kernel dropped `n` lookups of `ino`.
    pub fn forget(&self, ino: u64, nlookup: u64) {
        if let Ok(Some(node)) = self.table.get(ino, || Ok(None)) {
            if let Ok(mut n) = node.lock() {
                n.lookups = n.lookups.saturating_sub(nlookup);
                if n.lookups == 0 && n.opens == 0 {
                    self.drop_clean(&mut n, 0..u64::MAX);
                }
            }
            drop(node);
            let _ = self.table.evict_if_idle(ino);
        }
    }

    /// A fresh file handle number.
    pub fn next_handle(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    /// Inodes in memory: every inode the kernel may hold pages or attributes of.
    pub fn cached_inos(&self) -> Vec<u64> {
        self.table.inos()
    }

    /// Names the kernel may have cached: every entry of every directory in memory.
    pub fn cached_names(&self) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        for ino in self.cached_inos() {
            let is_dir = match self.table.get(ino, || Ok(None)) {
                Ok(Some(node)) => node.lock().map(|n| n.rec.kind == records::Kind::Dir).unwrap_or(false),
                _ => false,
            };
            if is_dir {
                if let Ok(entries) = self.entries(ino) {
                    out.extend(entries.into_iter().map(|(name, _)| (ino, name)));
                }
            }
        }
        out
    }

    /// Forgets unsaved data (the view is being rolled back).
    pub fn discard_dirty(&self) {
        for ino in self.cached_inos() {
            if let Ok(Some(node)) = self.table.get(ino, || Ok(None)) {
                if let Ok(mut n) = node.lock() {
                    let _ = self.forget_node(ino, &mut n);
                }
            }
        }
    }
}
