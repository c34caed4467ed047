//! Filesystem operations on one mounted volume. Nothing here knows FUSE: operations take
//! plain arguments and return `Result`; `fuse.rs` adapts them to the kernel protocol.
//!
//! Locking: a volume-wide namespace mutex serializes operations that change names (create,
//! link, unlink, rename, ...); inside it, nodes are locked in ascending inode order. Data
//! operations (read, write, flush, setattr) lock only their node. The store's space lock is
//! innermost. So no cycle can form.

pub mod data;
pub mod fuse;
pub mod namespace;
pub mod attr;
pub mod table;

use crate::error::{Error, Result};
use crate::store::records::{self, Hash, InodeRec};
use crate::store::{cf, keys, Store, Txn};
use crate::volume::VolumeRec;
use std::collections::{HashMap, HashSet};
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
            total_limit: 128 << 20,
            file_limit: 16 << 20,
            max_age: Duration::from_secs(2),
            clean_bytes: AtomicU64::new(0),
            clean_limit: 64 << 20,
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
    pub rec: VolumeRec,
    pub read_only: bool,
    pub bs: u64,
    budget: Arc<DirtyBudget>,
    ns: Mutex<()>,
    table: Table,
    next_ino: AtomicU64,
    dirs: Mutex<HashMap<u64, Arc<Vec<DirItem>>>>,
    next_fh: AtomicU64,
    dirty: Mutex<HashSet<u64>>,
}

impl Volume {
    pub fn open(store: Arc<Store>, rec: VolumeRec, read_only: bool, budget: Arc<DirtyBudget>) -> Result<Volume> {
        let last = store.last_key(cf::INODES, &keys::lineage_prefix(rec.lineage))?;
        let max_ino = last.map(|k| keys::read_u64(&k, 8)).unwrap_or(ROOT_INO);
        let v = Volume {
            bs: rec.block_size as u64,
            store,
            rec,
            read_only,
            budget,
            ns: Mutex::new(()),
            table: Table::new(),
            next_ino: AtomicU64::new(max_ino + 1),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            dirty: Mutex::new(HashSet::new()),
        };
        if !read_only {
            v.purge_orphans()?;
        }
        Ok(v)
    }

    fn lineage(&self) -> u64 {
        self.rec.lineage
    }

    fn epoch(&self) -> u64 {
        self.rec.epoch
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

    fn load_rec(&self, ino: u64) -> Result<Option<InodeRec>> {
        match self.store.get_version(cf::INODES, &keys::inode_key(self.lineage(), ino), self.epoch())? {
            Some((_, v)) => InodeRec::decode(&v),
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

    /// Writes a versioned key at the current epoch.
    fn stage_put(&self, t: &mut Txn, cfname: &str, ident: Vec<u8>, value: &[u8]) -> Result<()> {
        t.put(&self.store, cfname, &keys::versioned(ident, self.epoch()), value)
    }

    /// Removes the visible version of `ident` found at `found_epoch`: deletes it if it was
    /// written at the current epoch and nothing older would show through, else writes a
    /// tombstone (an older version belongs to a snapshot and must stay).
    fn stage_remove(&self, t: &mut Txn, cfname: &str, ident: Vec<u8>, found_epoch: u64) -> Result<()> {
        let e = self.epoch();
        if found_epoch == e && !self.shadows_older(cfname, &ident)? {
            t.delete(&self.store, cfname, &keys::versioned(ident, e))
        } else {
            t.put(&self.store, cfname, &keys::versioned(ident, e), &records::tombstone())
        }
    }

    fn shadows_older(&self, cfname: &str, ident: &[u8]) -> Result<bool> {
        let e = self.epoch();
        if e <= 1 {
            return Ok(false);
        }
        self.store.has_older_version(cfname, ident, e)
    }

    /// The visible extent of block `idx`: (epoch written, hash or hole).
    fn extent(&self, ino: u64, idx: u64) -> Result<Option<(u64, Option<Hash>)>> {
        match self.store.get_version(cf::EXTENTS, &keys::extent_key(self.lineage(), ino, idx), self.epoch())? {
            Some((e, v)) => Ok(Some((e, records::decode_extent(&v)?))),
            None => Ok(None),
        }
    }

    /// Visible extents of a file from block `from` on, holes left out: (index, epoch, hash).
    fn extents_from(&self, ino: u64, from: u64, to: u64) -> Result<Vec<(u64, u64, Hash)>> {
        let mut out = Vec::new();
        let prefix = keys::extents_of(self.lineage(), ino);
        let start = keys::extent_key(self.lineage(), ino, from);
        let mut last = None;
        let epoch = self.epoch();
        self.store.scan_from(cf::EXTENTS, &prefix, &start, |k, v| {
            let (ident, e) = keys::split_version(k);
            let idx = keys::read_u64(ident, 16);
            if idx >= to {
                return Ok(false);
            }
            if e > epoch || last == Some(idx) {
                return Ok(true);
            }
            last = Some(idx);
            if let Some(h) = records::decode_extent(v)? {
                out.push((idx, e, h));
            }
            Ok(true)
        })?;
        Ok(out)
    }

    /// Sets block `idx` of `ino`, given what is there now (`old`). Returns the change in the
    /// file's count of stored blocks.
    fn stage_extent(&self, t: &mut Txn, ino: u64, idx: u64, old: Option<(u64, Option<Hash>)>, new: Ext) -> Result<i64> {
        let l = self.lineage();
        let e = self.epoch();
        let ident = keys::extent_key(l, ino, idx);
        let (old_epoch, old_hash) = match old {
            Some((oe, h)) => (oe, h),
            None => (0, None),
        };
        let new_hash = match &new {
            Ext::Hole => None,
            Ext::Data(h, _) | Ext::Shared(h) => Some(*h),
        };
        if old_hash == new_hash {
            return Ok(0);
        }
        // A version written at this epoch is replaced in place and loses its reference;
        // an older one stays for the snapshot that sees it.
        if let (Some(h), true) = (old_hash, old_epoch == e) {
            t.drop_ref(h, l);
        }
        match new {
            Ext::Hole => self.stage_remove(t, cf::EXTENTS, ident, old_epoch)?,
            Ext::Data(h, data) => {
                t.put(&self.store, cf::EXTENTS, &keys::versioned(ident, e), &records::encode_extent(&h))?;
                t.add_ref(h, l, data);
            }
            Ext::Shared(h) => {
                t.put(&self.store, cf::EXTENTS, &keys::versioned(ident, e), &records::encode_extent(&h))?;
                t.share_ref(h, l);
            }
        }
        Ok(new_hash.is_some() as i64 - old_hash.is_some() as i64)
    }

    /// Stages `n`'s dirty blocks and `rec` (its new attributes) into `t`. Returns the record
    /// as written; call `applied` after the commit succeeds.
    fn stage_node(&self, t: &mut Txn, ino: u64, n: &Node, mut rec: InodeRec) -> Result<InodeRec> {
        let mut delta = 0i64;
        for (&idx, data) in &n.dirty {
            let old = self.extent(ino, idx)?;
            let new = if data.iter().all(|b| *b == 0) {
                Ext::Hole
            } else {
                Ext::Data(self.store.hash(data), data.clone())
            };
            delta += self.stage_extent(t, ino, idx, old, new)?;
        }
        rec.blocks = (rec.blocks as i64 + delta).max(0) as u64;
        self.stage_put(t, cf::INODES, keys::inode_key(self.lineage(), ino), &rec.encode())?;
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
            // Keep the last few flushed blocks (an appended tail, a hot page) as clean copies.
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
    fn stage_purge(&self, t: &mut Txn, ino: u64) -> Result<()> {
        let l = self.lineage();
        for (idx, e, h) in self.extents_from(ino, 0, u64::MAX)? {
            self.stage_extent(t, ino, idx, Some((e, Some(h))), Ext::Hole)?;
        }
        let mut xs = Vec::new();
        self.store.scan_versions(cf::XATTRS, &keys::dir_prefix(l, ino), self.epoch(), |ident, e, v| {
            if !records::is_tombstone(v) {
                xs.push((ident.to_vec(), e));
            }
            Ok(true)
        })?;
        for (ident, e) in xs {
            self.stage_remove(t, cf::XATTRS, ident, e)?;
        }
        if let Some((e, _)) = self.store.get_version(cf::INODES, &keys::inode_key(l, ino), self.epoch())? {
            self.stage_remove(t, cf::INODES, keys::inode_key(l, ino), e)?;
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

    /// Drops an inode's in-memory node and its unsaved blocks after a purge.
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
            log::info!("volume {}: removing orphan inode {ino}", self.rec.name);
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

    /// Number of inodes in memory (tests and status).
    pub fn cached_inodes(&self) -> usize {
        self.table.len()
    }
}
