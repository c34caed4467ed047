//! Filesystem operations on one mounted volume. Nothing here knows FUSE: operations take
//! plain arguments and return `Result`; `fuse.rs` adapts them to the kernel protocol.
//!
//! Locking: a volume-wide namespace mutex serializes operations that change names (create,
//! link, unlink, rename, ...); inside it, nodes are locked in ascending inode order. Data
//! operations (read, write, flush, setattr) lock only their node. The store's space lock is
//! innermost. So no cycle can form.

pub mod acl;
pub mod data;
mod flush;
pub mod fuse;
pub mod live;
pub mod restore;
pub mod snapdir;
pub mod namespace;
mod purge;
pub mod attr;
pub mod table;

use crate::error::Error;
use crate::volume::view::{Ext, View, ViewTxn};
use crate::volume::{InodeRec, Kind};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use table::{lock, Node, NodeRef, Table};

pub use crate::volume::ROOT_INO;

/// Extents a purge removes per batch: unlinking a huge file never builds one huge batch.
/// Files of at most this many blocks are purged after their unlink, several in a batch.
pub(crate) const PURGE_BATCH: u64 = 4096;
/// Blocks of unlinked files waiting for `Volume::purge_deferred` past which an unlink
/// purges them itself: what `df` and quotas may lag by between the flusher's passes.
const DEFERRED_MAX: u64 = 4 * PURGE_BATCH;
/// Blocks (and records) of queued files `purge_deferred` commits at a time: each commit
/// holds the head's count lock and then the store's commit lock, which the volume's other
/// commits wait for (a batch of 4,096 made unlinks beside it wait 40-160 ms).
const DEFERRED_BATCH: u64 = 512;

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

impl Entry {
    /// A node's attributes as the kernel sees them. `st_blocks` counts the blocks written
    /// but not yet stored too, as ext4's delayed allocation does: `tar --sparse` archives a
    /// file of size > 0 and 0 blocks as a hole, without reading it. Unsaved blocks replace
    /// stored ones only where the size leaves no room for both (exact for files without
    /// holes; a sparse file's overwrite counts twice until its flush). O(1): a block both
    /// dirty and being flushed counts twice too, within the same cap.
    pub(crate) fn of(ino: u64, n: &Node, bs: u64) -> Entry {
        let mut rec = n.rec.clone();
        let unsaved = n.dirty.len() as u64 + n.flushing.as_ref().map_or(0, |f| f.blocks.len() as u64);
        if unsaved > 0 {
            rec.blocks = (rec.blocks + unsaved).min(rec.size.div_ceil(bs)).max(rec.blocks);
        }
        Entry { ino, rec }
    }
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

impl DirtyBudget {
    /// Dirty data within `mem.dirty` (a file flushes itself past an eighth of it, at most
    /// 8 MiB), clean copies within `mem.clean`.
    pub fn within(mem: &crate::memory::Budget) -> DirtyBudget {
        DirtyBudget {
            bytes: AtomicU64::new(0),
            total_limit: mem.dirty,
            file_limit: (mem.dirty / 8).min(8 << 20),
            max_age: Duration::from_secs(2),
            clean_bytes: AtomicU64::new(0),
            clean_limit: mem.clean,
        }
    }
}

impl Default for DirtyBudget {
    fn default() -> Self {
        DirtyBudget::within(&crate::memory::Budget::default())
    }
}

/// Index of the last byte of `data` that is not zero. A small file's block is a few bytes
/// and a long run of zeros: whole 32-byte chunks are tested with an OR (vectorized) instead
/// of byte by byte (2% of the daemon's CPU in `cp -a`).
fn last_nonzero(data: &[u8]) -> Option<usize> {
    let tail = data.len() % 32;
    if let Some(i) = data[data.len() - tail..].iter().rposition(|b| *b != 0) {
        return Some(data.len() - tail + i);
    }
    let chunks = data[..data.len() - tail].chunks_exact(32);
    let n = chunks.len();
    for (k, c) in chunks.rev().enumerate() {
        if c.iter().fold(0u8, |a, b| a | b) != 0 {
            let start = (n - 1 - k) * 32;
            return c.iter().rposition(|b| *b != 0).map(|i| start + i);
        }
    }
    None
}

/// `rec` with `delta` more stored blocks.
fn with_blocks(ino: u64, mut rec: InodeRec, delta: i64) -> FsResult<InodeRec> {
    rec.blocks = rec.blocks.checked_add_signed(delta).ok_or_else(|| {
        Error::Corrupt(format!("inode {ino}: stored block count {} would go below zero ({delta:+})", rec.blocks))
    })?;
    Ok(rec)
}

/// Most blocks an fsync logs as `W` records beside a flush in flight rather than wait for it.
const LOG_BESIDE_FLUSH: usize = 64;

/// Unlinked files waiting for their purge: (inode, its weight in a purge batch: stored
/// blocks + 1, blocks with `W` records), and the weights' sum.
#[derive(Default)]
struct Deferred {
    files: Vec<(u64, u64, BTreeSet<u64>)>,
    weight: u64,
}

/// What a write leaves for after its reply (`Volume::after_write`), so that the writer's
/// next request runs meanwhile.
pub enum AfterWrite {
    Nothing,
    /// The flush the write started (`finish_flush`).
    Flush(Flush),
    /// Partly written blocks of inode `ino` whose stored bytes the next flush reads
    /// (`read_ahead_partial`).
    ReadAhead { ino: u64, blocks: Vec<u64> },
}

/// A flush committing a file's blocks without its node's lock (see `Volume::begin_flush`).
pub struct Flush {
    ino: u64,
    node: NodeRef,
    blocks: Arc<table::Flushing>,
    rec: InodeRec,
}

/// One directory entry of a listing taken at opendir.
#[derive(Clone, Debug)]
pub struct DirItem {
    pub name: Vec<u8>,
    pub ino: u64,
    pub kind: Kind,
}

/// What a filesystem operation fails with: a POSIX error the caller gets as is, or a failure
/// of the engine underneath (the kernel sees EIO, or ENOSPC when the disk is full). Only
/// `fuse.rs` turns it into an errno.
#[derive(Debug)]
pub enum FsError {
    Posix(i32),
    Engine(Error),
}

pub type FsResult<T> = std::result::Result<T, FsError>;

impl FsError {
    pub fn errno(&self) -> i32 {
        match self {
            FsError::Posix(e) => *e,
            FsError::Engine(e) => e.to_errno(),
        }
    }
}

impl From<Error> for FsError {
    fn from(e: Error) -> Self {
        FsError::Engine(e)
    }
}

impl From<std::io::Error> for FsError {
    fn from(e: std::io::Error) -> Self {
        FsError::Engine(Error::Io(e))
    }
}

impl From<FsError> for Error {
    fn from(e: FsError) -> Self {
        match e {
            FsError::Posix(code) => Error::Io(std::io::Error::from_raw_os_error(code)),
            FsError::Engine(e) => e,
        }
    }
}

impl std::fmt::Display for FsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FsError::Posix(e) => write!(f, "{}", std::io::Error::from_raw_os_error(*e)),
            FsError::Engine(e) => write!(f, "{e}"),
        }
    }
}

pub fn err(code: i32) -> FsError {
    FsError::Posix(code)
}

pub struct Volume {
    /// What this mount reads and writes: the versioning engine.
    pub view: View,
    pub read_only: bool,
    pub bs: u64,
    budget: Arc<DirtyBudget>,
    ns: Mutex<()>,
    table: Table,
    next_ino: AtomicU64,
    /// Open directory handles: the listing each took and `View::names_gen` before it.
    dirs: Mutex<HashMap<u64, (u64, Arc<Vec<DirItem>>)>>,
    next_fh: AtomicU64,
    dirty: Mutex<HashSet<u64>>,
    /// Bytes of this view's unsaved blocks (its share of `budget.bytes`; both move together
    /// in `add_dirty`). A refquota counts them before they are stored.
    dirty_bytes: AtomicU64,
    /// Small files unlinked with nothing holding them open, orphans in the store, to purge
    /// in batches (`purge_deferred`).
    deferred: Mutex<Deferred>,
    /// Held by the purge of the queue in progress (one at a time) and by a rollback's
    /// `discard_dirty`, which must not clear the queue while a batch of it is being
    /// committed to the view it replaces. While it is held, the queue only grows at its end.
    purging: Mutex<()>,
    /// Names looked up and not found that the kernel may remember as absent (`note_absent`):
    /// a change behind the kernel (rollback, receive) invalidates them with the names in
    /// memory (`cached_names`).
    absent: Mutex<Absent>,
    /// Mounted with `--fast-open` (kept across a rollback's new `Volume`): the kernel opens
    /// and closes files without telling the daemon, so `Node::opens` stays 0 and a file is
    /// held (`held`) while the kernel knows its inode at all.
    pub kernel_opens: bool,
}

/// A dirty block's buffer as a flush stages it: a flush's own is shared with the commit's
/// record; a node's, staged under its lock, is copied (the node keeps it until the commit).
trait BlockBuf: Sync {
    fn bytes(&self) -> &[u8];
    /// Its first `len` bytes as the store takes them.
    fn share(&self, len: usize) -> crate::volume::Bytes;
}

impl BlockBuf for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
    fn share(&self, len: usize) -> crate::volume::Bytes {
        self[..len].to_vec().into()
    }
}

impl BlockBuf for Arc<Vec<u8>> {
    fn bytes(&self) -> &[u8] {
        self
    }
    fn share(&self, len: usize) -> crate::volume::Bytes {
        crate::volume::Bytes::shared(self, len)
    }
}

/// At most this many absent names are remembered per mount (about 3 MiB); past it, lookups
/// that find nothing are not cached by the kernel until some expire.
const ABSENT_MAX: usize = 32_768;

/// The names the kernel may hold as absent, each until when; and when expired ones were
/// last swept out of a full map (a sweep of a full map is ~1 ms: at most one per
/// `ABSENT_SLACK`, not one per lookup).
#[derive(Default)]
struct Absent {
    names: HashMap<(u64, Vec<u8>), Instant>,
    swept_full: Option<Instant>,
}

/// An absent name is listed this much past its TTL: the kernel starts the TTL when it takes
/// the reply, a little after the name was noted.
const ABSENT_SLACK: Duration = Duration::from_secs(1);

impl Drop for Volume {
    /// Returns this view's cached and unsaved bytes to the daemon-wide budget.
    fn drop(&mut self) {
        for ino in self.table.inos() {
            if let Ok(Some(node)) = self.table.get(ino, || Ok(None)) {
                if let Ok(n) = table::lock_busy(&node) {
                    self.budget.clean_bytes.fetch_sub(n.clean.len() as u64 * self.bs, Ordering::Relaxed);
                    self.add_dirty(-(n.dirty.len() as i64 + n.flushing.as_ref().map_or(0, |f| f.blocks.len() as i64)));
                }
            }
        }
    }
}

impl Volume {
    pub fn open(view: View, budget: Arc<DirtyBudget>) -> FsResult<Volume> {
        let max_ino = view.max_ino()?.max(ROOT_INO);
        let v = Volume {
            bs: view.spec().block_size as u64,
            read_only: view.spec().read_only,
            view,
            budget,
            ns: Mutex::new(()),
            table: Table::new(),
            next_ino: AtomicU64::new(max_ino + 1),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            dirty: Mutex::new(HashSet::new()),
            dirty_bytes: AtomicU64::new(0),
            deferred: Mutex::new(Deferred::default()),
            purging: Mutex::new(()),
            absent: Mutex::new(Absent::default()),
            kernel_opens: false,
        };
        if !v.read_only {
            v.merge_written()?;
            v.purge_orphans()?;
        }
        Ok(v)
    }

    /// `mount --fast-open` (see `kernel_opens`).
    pub fn with_kernel_opens(mut self, on: bool) -> Volume {
        self.kernel_opens = on;
        self
    }

    /// Something may still read or write `n` through the kernel, so an unlinked file stays:
    /// a handle open, or with kernel opens any reference the kernel holds (it forgets the
    /// inode only after its last close).
    pub(super) fn held(&self, n: &Node) -> bool {
        n.opens > 0 || (self.kernel_opens && n.lookups > 0)
    }

    pub fn name(&self) -> &str {
        &self.view.spec().name
    }

    /// How this volume's mounts show owners.
    pub fn idmap(&self) -> Arc<crate::volume::idmap::IdMap> {
        self.view.spec().idmap.clone()
    }

    /// A batch of changes to this view (see `ViewTxn`).
    fn txn(&self) -> FsResult<ViewTxn<'_>> {
        self.check_writable()?;
        Ok(self.view.txn()?)
    }

    fn ns(&self) -> FsResult<MutexGuard<'_, ()>> {
        if self.read_only {
            return Err(err(libc::EROFS));
        }
        self.ns.lock().map_err(|_| FsError::Engine(Error::Corrupt("namespace lock poisoned".into())))
    }

    fn check_writable(&self) -> FsResult<()> {
        if self.read_only {
            Err(err(libc::EROFS))
        } else {
            Ok(())
        }
    }

    fn load_rec(&self, ino: u64) -> crate::error::Result<Option<InodeRec>> {
        self.view.inode(ino)
    }

    /// The node of a live inode, or ENOENT.
    pub(crate) fn node(&self, ino: u64) -> FsResult<NodeRef> {
        self.table.get(ino, || self.load_rec(ino))?.ok_or_else(|| err(libc::ENOENT))
    }

    /// Counts `blocks` more (or fewer) unsaved blocks, daemon-wide and for this view.
    fn add_dirty(&self, blocks: i64) {
        let bytes = blocks.unsigned_abs() * self.bs;
        if blocks >= 0 {
            self.budget.bytes.fetch_add(bytes, Ordering::Relaxed);
            self.dirty_bytes.fetch_add(bytes, Ordering::Relaxed);
        } else {
            self.budget.bytes.fetch_sub(bytes, Ordering::Relaxed);
            self.dirty_bytes.fetch_sub(bytes, Ordering::Relaxed);
        }
    }

    fn alloc_ino(&self) -> u64 {
        self.next_ino.fetch_add(1, Ordering::Relaxed)
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
        self.drop_clean_if(n, |i| range.contains(&i));
    }

    /// Forgets the clean copies of the blocks `stale` picks.
    fn drop_clean_if(&self, n: &mut Node, stale: impl Fn(u64) -> bool) {
        let before = n.clean.len();
        n.clean.retain(|(i, _)| !stale(*i));
        let gone = (before - n.clean.len()) as u64;
        if gone > 0 {
            self.budget.clean_bytes.fetch_sub(gone * self.bs, Ordering::Relaxed);
        }
    }

    /// Drops an inode's unsaved blocks after a purge, and its node unless the kernel still
    /// holds the inode (then the node stays, marked purged, until the kernel forgets it).
    fn forget_node(&self, ino: u64, n: &mut Node) -> FsResult<()> {
        self.drop_clean(n, 0..u64::MAX);
        if !n.dirty.is_empty() {
            self.add_dirty(-(n.dirty.len() as i64));
            n.dirty.clear();
            n.partial.clear();
            n.unfetched.clear();
            n.logged.clear();
            n.unsynced.clear();
            if let Ok(mut d) = self.dirty.lock() {
                d.remove(&ino);
            }
        }
        n.meta_dirty = false;
        if n.lookups > 0 {
            n.purged = true;
            return Ok(());
        }
        Ok(self.table.remove(ino)?)
    }

    /// Past this many nodes in memory a volume drops clean, idle ones (`Table::shed`): the
    /// kernel holds an inode of every file it has seen until memory runs short, so a tree
    /// of a million files would otherwise keep 600 MB of nodes in the daemon.
    const NODES_KEPT: usize = 16_384;

    /// Bounds the nodes in memory (the flusher calls it). Returns how many were dropped.
    pub fn shed_nodes(&self) -> usize {
        self.table.shed(Self::NODES_KEPT, |n| self.drop_clean(n, 0..u64::MAX))
    }

    /// The kernel dropped `n` lookups of `ino`.
    pub fn forget(&self, ino: u64, nlookup: u64) {
        if let Ok(Some(node)) = self.table.forget_or_node(ino, nlookup) {
            let mut gone = false;
            if let Ok(mut n) = table::lock_busy(&node) {
                n.lookups = n.lookups.saturating_sub(nlookup);
                if n.lookups == 0 && n.opens == 0 {
                    self.drop_clean(&mut n, 0..u64::MAX);
                    gone = n.rec.nlink == 0 && !n.purged && !self.read_only;
                }
            }
            // Unlinked while the kernel held it (`held`), and the kernel just let go.
            if gone {
                if let Err(e) = self.purge_unheld(ino, &node) {
                    log::warn!("volume {}: purging unlinked inode {ino} failed ({e}); the next mount does", self.name());
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

    /// Records that the kernel may remember `name` of `dir` as absent for `ttl`; false when
    /// too many are remembered already (the caller then does not let the kernel cache it).
    pub fn note_absent(&self, dir: u64, name: &[u8], ttl: Duration) -> bool {
        let Ok(mut a) = self.absent.lock() else { return false };
        let now = Instant::now();
        let key = (dir, name.to_vec());
        let known = a.names.contains_key(&key);
        // Expired ones go every 1,024 new names (and when full), so what stays is about
        // one TTL's worth.
        let full = a.names.len() >= ABSENT_MAX;
        let sweep = match full {
            true => !known && a.swept_full.is_none_or(|t| now >= t + ABSENT_SLACK),
            false => a.names.len() % 1024 == 1023 && !known,
        };
        if sweep {
            a.names.retain(|_, until| *until > now);
            a.swept_full = full.then_some(now);
        }
        if a.names.len() >= ABSENT_MAX && !known {
            return false;
        }
        a.names.insert(key, now + ttl + ABSENT_SLACK);
        true
    }

    /// `name` of `dir` was made (or linked, or renamed to): the kernel's absent entry for
    /// it, if any, was replaced by the new one, so it need not be remembered (creates look
    /// each name up first).
    fn made(&self, dir: u64, name: &[u8]) {
        if let Ok(mut a) = self.absent.lock() {
            if !a.names.is_empty() {
                a.names.remove(&(dir, name.to_vec()));
            }
        }
    }

    /// Names the kernel may have cached: every entry of every directory in memory, and the
    /// names it may remember as absent.
    pub fn cached_names(&self) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        if let Ok(a) = self.absent.lock() {
            let now = Instant::now();
            out.extend(a.names.iter().filter(|(_, until)| **until > now).map(|(k, _)| k.clone()));
        }
        let mut dirs = Vec::new();
        let mut shed = Vec::new();
        for ino in self.cached_inos() {
            match self.table.get(ino, || Ok(None)) {
                Ok(Some(node)) => {
                    if table::lock_busy(&node).is_ok_and(|n| n.rec.kind == Kind::Dir) {
                        dirs.push(ino);
                    }
                }
                // Shed: the kernel may hold its names all the same (read in one batch).
                _ => shed.push(ino),
            }
        }
        if let Ok(recs) = self.view.inodes(&shed) {
            dirs.extend(shed.iter().zip(recs).filter(|(_, r)| r.as_ref().is_some_and(|r| r.kind == Kind::Dir)).map(|(i, _)| *i));
        }
        for ino in dirs {
            if let Ok(entries) = self.entries(ino) {
                out.extend(entries.into_iter().map(|(name, _)| (ino, name)));
            }
        }
        out
    }

    /// Forgets unsaved data and queued purges (the view is being rolled back).
    pub fn discard_dirty(&self) {
        let _one = self.purging.lock();
        if let Ok(mut q) = self.deferred.lock() {
            *q = Deferred::default();
        }
        for ino in self.cached_inos() {
            if let Ok(Some(node)) = self.table.get(ino, || Ok(None)) {
                if let Ok(mut n) = lock(&node) {
                    let _ = self.forget_node(ino, &mut n);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::store::records::Ts;
    use crate::volume::Catalog;

    proptest::proptest! {
        #[test]
        fn last_nonzero_finds_what_a_byte_scan_finds(len in 0usize..200, marks in proptest::collection::vec((0usize..200, 1u8..=255), 0..4)) {
            let mut data = vec![0u8; len];
            for (at, b) in marks {
                if at < len {
                    data[at] = b;
                }
            }
            proptest::prop_assert_eq!(last_nonzero(&data), data.iter().rposition(|b| *b != 0));
        }
    }

    fn volume() -> (tempfile::TempDir, Arc<Store>, Volume) {
        let d = tempfile::tempdir().unwrap();
        Store::init(&d.path().join("s")).unwrap();
        let s = Arc::new(Store::open(&d.path().join("s")).unwrap());
        let c = Catalog::default();
        c.create(&s, "v", 4096, 0, 0, None).unwrap();
        let budget = Arc::new(DirtyBudget::within(&crate::memory::Budget::default()));
        let v = Volume::open(c.open_view(&s, "v", None, false).unwrap(), budget).unwrap();
        (d, s, v)
    }

    fn file(v: &Volume, name: &[u8], data: &[u8]) -> u64 {
        let new = namespace::NewNode { kind: Kind::File, perm: 0o644, umask: 0, rdev: 0, target: b"" };
        let e = v.make(Ctx { uid: 0, gid: 0 }, ROOT_INO, name, new, true).unwrap();
        v.write(e.ino, 0, data, false).unwrap();
        v.flush_on_close(e.ino).unwrap();
        v.release(e.ino).unwrap();
        e.ino
    }

    #[test]
    fn names_the_kernel_may_hold_as_absent_are_bounded_and_listed_until_they_expire() {
        let (_d, _s, v) = volume();
        let listed = |v: &Volume| v.cached_names().into_iter().filter(|(_, n)| n.starts_with(b"gone")).count();
        for i in 0..ABSENT_MAX {
            assert!(v.note_absent(ROOT_INO, format!("gone{i}").as_bytes(), Duration::from_secs(60)));
        }
        assert_eq!(listed(&v), ABSENT_MAX);
        // Full of live ones: the next is not to be cached, and none is forgotten.
        assert!(!v.note_absent(ROOT_INO, b"one-more", Duration::from_secs(60)));
        assert_eq!(listed(&v), ABSENT_MAX);
        // Expired ones are neither listed nor kept: room again.
        let (_d, _s, v) = volume();
        for i in 0..ABSENT_MAX {
            assert!(v.note_absent(ROOT_INO, format!("gone{i}").as_bytes(), Duration::ZERO));
        }
        assert_eq!(listed(&v), ABSENT_MAX, "listed until the kernel's copy has surely expired");
        std::thread::sleep(ABSENT_SLACK + Duration::from_millis(100));
        assert_eq!(listed(&v), 0);
        assert!(v.note_absent(ROOT_INO, b"one-more", Duration::from_secs(60)));
        assert!(v.absent.lock().unwrap().names.len() < 1024);
    }

    /// `touch` of many new names looks each up first: made, a name is not remembered as
    /// absent any more, so creating files never fills the map (which then swept itself on
    /// every lookup: 38% of the daemon creating 50,000 files).
    #[test]
    fn names_made_are_not_remembered_as_absent_and_a_full_map_is_swept_seldom() {
        let (_d, _s, v) = volume();
        for i in 0..ABSENT_MAX + 100 {
            let name = format!("new{i}");
            assert!(v.note_absent(ROOT_INO, name.as_bytes(), Duration::from_secs(60)));
            file(&v, name.as_bytes(), b"");
        }
        assert_eq!(v.absent.lock().unwrap().names.len(), 0);
        let (_d, _s, v) = volume();
        for i in 0..ABSENT_MAX {
            assert!(v.note_absent(ROOT_INO, format!("gone{i}").as_bytes(), Duration::from_secs(60)));
        }
        assert!(!v.note_absent(ROOT_INO, b"more", Duration::from_secs(60)));
        let swept = v.absent.lock().unwrap().swept_full;
        assert!(swept.is_some());
        for i in 0..100 {
            assert!(!v.note_absent(ROOT_INO, format!("more{i}").as_bytes(), Duration::from_secs(60)));
        }
        assert_eq!(v.absent.lock().unwrap().swept_full, swept, "a full map was swept again within a second");
        // A name already remembered is noted again (its TTL renewed) even when full.
        assert!(v.note_absent(ROOT_INO, b"gone7", Duration::from_secs(60)));
    }

    /// A READDIRPLUS page reads only the inodes while no entry changed since its listing was
    /// taken; after a change anywhere in the view it looks every name up again, so a name
    /// removed meanwhile (its inode still linked elsewhere) is not handed to the kernel.
    #[test]
    fn a_listing_page_is_looked_up_again_once_an_entry_changed() {
        let (_d, _s, v) = volume();
        let a = file(&v, b"a", b"aa");
        let b = file(&v, b"b", b"bbb");
        v.link(b, ROOT_INO, b"b2").unwrap();
        let fh = v.opendir(ROOT_INO).unwrap();
        let listed = v.readdir(fh).unwrap();
        let items: Vec<&DirItem> = listed.iter().filter(|it| it.name != b"." && it.name != b"..").collect();
        let names: Vec<&[u8]> = items.iter().map(|it| it.name.as_slice()).collect();
        assert_eq!(names, [&b"a"[..], b"b", b"b2"]);
        let sizes = |found: Vec<FsResult<Entry>>| found.into_iter().map(|e| e.ok().map(|e| (e.ino, e.rec.size))).collect::<Vec<_>>();
        assert_eq!(sizes(v.lookup_listed(ROOT_INO, fh, &items).unwrap()), [Some((a, 2)), Some((b, 3)), Some((b, 3))]);
        // "b" goes (its inode stays, named "b2"); "a" is replaced by another file.
        v.unlink(ROOT_INO, b"b", false).unwrap();
        v.unlink(ROOT_INO, b"a", false).unwrap();
        let a2 = file(&v, b"a", b"a2a2");
        assert_eq!(sizes(v.lookup_listed(ROOT_INO, fh, &items).unwrap()), [Some((a2, 4)), None, Some((b, 3))]);
        // A listing taken after the change is trusted again.
        v.releasedir(fh);
        let fh = v.opendir(ROOT_INO).unwrap();
        let listed = v.readdir(fh).unwrap();
        let items: Vec<&DirItem> = listed.iter().filter(|it| it.name != b"." && it.name != b"..").collect();
        assert_eq!(sizes(v.lookup_listed(ROOT_INO, fh, &items).unwrap()), [Some((a2, 4)), Some((b, 3))]);
        v.releasedir(fh);
        assert!(v.lookup_listed(ROOT_INO, fh, &items).is_err(), "a released handle");
    }

    fn fsck_clean(s: &Store) -> crate::volume::fsck::FsckReport {
        let report = crate::volume::fsck::check(s).unwrap();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        report
    }

    /// The kernel may send the OPEN of a file it looked up before another process's UNLINK
    /// of it, and the daemon may take the unlink first. The open must fail: opened, the
    /// file would be purged a second time at its release (its blocks counted off twice).
    #[test]
    fn an_open_that_loses_the_race_with_the_unlink_fails_and_the_file_is_purged_once() {
        let (_d, s, v) = volume();
        let ino = file(&v, b"f", &[7u8; 3000]);
        let kept = file(&v, b"g", &[9u8; 3000]);
        // Held by the kernel (a lookup), so the node stays in memory, marked purged.
        v.lookup(ROOT_INO, b"f").unwrap();
        v.unlink(ROOT_INO, b"f", false).unwrap();
        let e = v.open_file(ino, false).err().expect("the open of an unlinked, purged file fails");
        assert_eq!(e.errno(), libc::ENOENT);
        // Forgotten by the kernel before the purge: a late open finds the orphan in the store.
        v.forget(ino, 2);
        let e = v.open_file(ino, false).err().expect("the open of an orphan waiting for its purge fails");
        assert_eq!(e.errno(), libc::ENOENT);
        assert!(!v.cached_inos().contains(&ino), "the node that open loaded is not kept");
        v.flush_all().unwrap();
        assert_eq!(fsck_clean(&s).inodes, 2, "the root and g are left");
        assert_eq!(v.open_file(ino, false).err().map(|e| e.errno()), Some(libc::ENOENT));
        assert!(v.open_file(kept, false).is_ok());
    }

    /// Past `NODES_KEPT` the clean, idle nodes go but the kernel's lookups of them stay: a
    /// file unlinked while the kernel holds it (with kernel opens, a lookup holds it) still
    /// waits for its FORGET to be purged, and a FORGET of a shed inode counts.
    #[test]
    fn shed_nodes_keep_the_kernels_lookups() {
        let (_d, s, v) = volume();
        let v = v.with_kernel_opens(true);
        let files: Vec<(u64, Vec<u8>)> = (0..300).map(|i| format!("f{i}").into_bytes()).map(|n| (file(&v, &n, &[1u8; 100]), n)).collect();
        let dir = namespace::NewNode { kind: Kind::Dir, perm: 0o755, umask: 0, rdev: 0, target: b"" };
        let d = v.make(Ctx { uid: 0, gid: 0 }, ROOT_INO, b"d", dir, false).unwrap().ino;
        let new = namespace::NewNode { kind: Kind::File, perm: 0o644, umask: 0, rdev: 0, target: b"" };
        v.make(Ctx { uid: 0, gid: 0 }, d, b"inside", new, false).unwrap();
        let held = v.cached_inos().len();
        assert!(v.table.shed(64, |n| v.drop_clean(n, 0..u64::MAX)) >= 200);
        assert_eq!(v.cached_inos().len(), held, "shed inodes the kernel holds are still listed");
        assert!(v.table.get(d, || Ok(None)).unwrap().is_none(), "the directory was not shed");
        assert!(v.cached_names().contains(&(d, b"inside".to_vec())), "a rollback would miss the names of a shed directory");
        let shed: Vec<&(u64, Vec<u8>)> = files.iter().filter(|(i, _)| v.table.get(*i, || Ok(None)).unwrap().is_none()).collect();
        let (a, b) = (shed[0], shed[1]);
        let inodes = fsck_clean(&s).inodes;
        // a: forgotten while shed, then unlinked: nobody holds it, it goes.
        v.forget(a.0, 1);
        v.unlink(ROOT_INO, &a.1, false).unwrap();
        // b: unlinked while shed and held: it stays until the kernel lets go.
        v.unlink(ROOT_INO, &b.1, false).unwrap();
        v.flush_all().unwrap();
        assert_eq!(fsck_clean(&s).inodes, inodes - 1, "a is purged, b waits");
        assert!(v.view.inode(b.0).unwrap().is_some());
        v.forget(b.0, 1);
        v.flush_all().unwrap();
        assert_eq!(fsck_clean(&s).inodes, inodes - 2);
        // A shed file reads back, and its node comes back with the kernel's lookup.
        let c = shed[2];
        assert_eq!(v.read(c.0, 0, 200).unwrap().into_vec(), vec![1u8; 100]);
        let node = v.table.get(c.0, || Ok(None)).unwrap().expect("loaded again");
        assert_eq!(table::lock(&node).unwrap().lookups, 1);
    }

    /// Times, owners and a mode-only ACL set on a file with unsaved blocks (cp -a: write,
    /// ACL, times, close) join the close's commit; on a clean file they commit at once.
    #[test]
    fn attributes_set_before_the_close_join_its_commit() {
        let (_d, s, v) = volume();
        let new = namespace::NewNode { kind: Kind::File, perm: 0o644, umask: 0, rdev: 0, target: b"" };
        let ino = v.make(Ctx { uid: 0, gid: 0 }, ROOT_INO, b"f", new, true).unwrap().ino;
        v.write(ino, 0, &[5u8; 5000], false).unwrap();
        let before = s.sequence();
        let when = Ts { sec: 1_000_000_000, nsec: 7 };
        let a = attr::SetAttr { atime: Some(attr::TimeSet::At(when)), mtime: Some(attr::TimeSet::At(when)), uid: Some(42), ..Default::default() };
        let e = v.setattr(ino, a).unwrap();
        assert_eq!((e.rec.mtime, e.rec.atime, e.rec.uid), (when, when, 42));
        // user rwx, group r-x, other r-x: says no more than mode 0755.
        let mut acl = 2u32.to_le_bytes().to_vec();
        for (tag, perm) in [(1u16, 7u16), (4, 5), (0x20, 5)] {
            acl.extend_from_slice(&tag.to_le_bytes());
            acl.extend_from_slice(&perm.to_le_bytes());
            acl.extend_from_slice(&u32::MAX.to_le_bytes());
        }
        v.setxattr(ino, acl::ACCESS, Some(&acl), 0).unwrap();
        assert_eq!(s.sequence(), before, "nothing committed before the close");
        let e = v.entry(ino).unwrap();
        assert_eq!((e.rec.mtime, e.rec.uid, e.rec.perm & 0o777), (when, 42, 0o755));
        v.flush_on_close(ino).unwrap();
        assert!(s.sequence() > before, "the close commits");
        let stored = v.view.inode(ino).unwrap().unwrap();
        assert_eq!((stored.mtime, stored.atime, stored.uid, stored.perm & 0o777, stored.size), (when, when, 42, 0o755, 5000));
        assert_eq!(v.getxattr(ino, acl::ACCESS).err().map(|e| e.errno()), Some(libc::ENODATA), "kept as the mode alone");
        let committed = s.sequence();
        let later = Ts { sec: 1_100_000_000, nsec: 0 };
        v.setattr(ino, attr::SetAttr { mtime: Some(attr::TimeSet::At(later)), ..Default::default() }).unwrap();
        assert!(s.sequence() > committed, "with nothing unsaved, a setattr commits at once");
        assert_eq!(v.view.inode(ino).unwrap().unwrap().mtime, later);
        assert_eq!(v.read(ino, 0, 5000).unwrap().into_vec(), vec![5u8; 5000]);
        v.release(ino).unwrap();
        fsck_clean(&s);
    }

    /// An fsync or close finding everything written already committed (a small write over a
    /// stored block stays dirty, its bytes in a `W` record) writes nothing again.
    #[test]
    fn an_fsync_with_nothing_new_only_syncs() {
        let (_d, s, v) = volume();
        // More blocks than the node keeps clean copies of: block 1's rest is only stored.
        let len = 4 * table::CLEAN_PER_NODE * 4096;
        let ino = file(&v, b"f", &vec![7u8; len]);
        v.open_file(ino, true).unwrap();
        v.write(ino, 4096 + 100, &[1u8; 200], false).unwrap();
        let before = s.sequence();
        v.fsync(ino).unwrap();
        let committed = s.sequence();
        assert!(committed > before, "the first fsync commits the write");
        assert_eq!(s.written(None).unwrap().len(), 1, "in a W record: the block stays dirty");
        v.fsync(ino).unwrap();
        assert_eq!(s.sequence(), committed, "a second fsync with nothing written writes nothing");
        v.flush_on_close(ino).unwrap();
        assert_eq!(s.sequence(), committed, "nor does a close");
        v.write(ino, 2 * 4096 + 5, &[2u8; 10], false).unwrap();
        v.fsync(ino).unwrap();
        assert!(s.sequence() > committed, "an fsync after a new write commits it");
        let got = v.read(ino, 0, len as u32).unwrap().into_vec();
        let mut want = vec![7u8; len];
        want[4096 + 100..4096 + 300].fill(1);
        want[2 * 4096 + 5..2 * 4096 + 15].fill(2);
        assert_eq!(got, want);
        v.release(ino).unwrap();
        v.flush_all().unwrap();
        assert!(s.written(None).unwrap().is_empty(), "the flush merged the W records");
        fsck_clean(&s);
    }
}
