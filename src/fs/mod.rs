//! Filesystem operations on one mounted volume. Nothing here knows FUSE: operations take
//! plain arguments and return `Result`; `fuse.rs` adapts them to the kernel protocol.
//!
//! Locking: a volume-wide namespace mutex serializes operations that change names (create,
//! link, unlink, rename, ...); inside it, nodes are locked in ascending inode order. Data
//! operations (read, write, flush, setattr) lock only their node. The store's space lock is
//! innermost. So no cycle can form.

pub mod acl;
pub mod data;
pub mod fuse;
pub mod live;
pub mod restore;
pub mod snapdir;
pub mod namespace;
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
    /// Names looked up and not found that the kernel may remember as absent, until when
    /// (`note_absent`): a change behind the kernel (rollback, receive) invalidates them
    /// with the names in memory (`cached_names`).
    absent: Mutex<HashMap<(u64, Vec<u8>), Instant>>,
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
            absent: Mutex::new(HashMap::new()),
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

    /// Stages `n`'s dirty blocks and `rec` (its new attributes) into `t`. Returns the record
    /// as written; call `applied` after the commit succeeds.
    fn stage_node(&self, t: &mut ViewTxn<'_>, ino: u64, n: &Node, rec: InodeRec) -> FsResult<InodeRec> {
        if n.flushing.is_some() {
            // `lock` waits for the flush; a record staged now would be overwritten by it.
            return Err(Error::Corrupt(format!("inode {ino}: record staged while a flush is in flight")).into());
        }
        self.stage_blocks(t, ino, &n.dirty, &n.partial, &n.logged, rec)
    }

    /// Stages blocks `dirty` (of which only `partial`'s ranges were written) and `rec`, and
    /// drops the `W` records of those of them in `logged`.
    fn stage_blocks(
        &self,
        t: &mut ViewTxn<'_>,
        ino: u64,
        dirty: &BTreeMap<u64, Vec<u8>>,
        partial: &HashMap<u64, table::Ranges>,
        logged: &BTreeSet<u64>,
        rec: InodeRec,
    ) -> FsResult<InodeRec> {
        for idx in dirty.keys().filter(|i| logged.contains(i)) {
            t.drop_written(ino, *idx)?;
        }
        let delta = self.stage_data(t, ino, dirty, partial, rec.blocks)?;
        let rec = with_blocks(ino, rec, delta)?;
        t.put_inode(ino, &rec)?;
        Ok(rec)
    }

    /// Stages the extents of blocks `dirty` (of which only `partial`'s ranges were written,
    /// completed from the stored blocks) and returns how many stored blocks that adds.
    /// `stored`: the file's count of stored blocks (its record's); with none, there is no
    /// old extent to read (a new file's first commit: `cp -a`, a compiler's output).
    fn stage_data<B: BlockBuf>(&self, t: &mut ViewTxn<'_>, ino: u64, dirty: &BTreeMap<u64, B>, partial: &HashMap<u64, table::Ranges>, stored: u64) -> FsResult<i64> {
        let mut delta = 0i64;
        // The old extents: none without stored blocks (the record counts every extent the
        // view shows of the file; fsck checks it), else dense dirty ranges (sequential
        // writes) with one scan, sparse ones with one batched lookup.
        let olds = match (dirty.keys().next(), dirty.keys().next_back()) {
            _ if stored == 0 => vec![None; dirty.len()],
            (Some(&first), Some(&last)) if dirty.len() > 4 && last - first < 8 * dirty.len() as u64 => {
                let m = self.view.extent_map(ino, first, last + 1)?;
                dirty.keys().map(|idx| m.get(idx).copied()).collect()
            }
            _ => self.view.extents_at(ino, &dirty.keys().copied().collect::<Vec<_>>())?,
        };
        // Partly written blocks are completed from their stored bytes, with one multi-get.
        let mut bases = HashMap::new();
        if !partial.is_empty() {
            let want: Vec<(u64, crate::volume::Hash)> = dirty
                .keys()
                .zip(&olds)
                .filter_map(|(idx, old)| match (partial.contains_key(idx), old) {
                    (true, Some((_, Some(h)))) => Some((*idx, *h)),
                    _ => None,
                })
                .collect();
            let hashes: Vec<_> = want.iter().map(|w| w.1).collect();
            for ((idx, _), b) in want.iter().zip(self.view.blocks(&hashes)?) {
                let b = b.ok_or_else(|| Error::Corrupt(format!("inode {ino} block {idx}: missing block")))?;
                bases.insert(*idx, b);
            }
        }
        let mut full = HashMap::with_capacity(partial.len());
        for (&idx, r) in partial {
            if let Some(data) = dirty.get(&idx) {
                let mut b = bases.remove(&idx).unwrap_or_default();
                b.resize(self.bs as usize, 0);
                table::overlay(&mut b, data.bytes(), r);
                full.insert(idx, Arc::new(b));
            }
        }
        // Hashing is most of a big flush's CPU: split over threads.
        let blocks: Vec<(&u64, &B)> = dirty.iter().collect();
        let exts = crate::par::map(&blocks, crate::par::threads(), 64, |&(idx, data)| match full.get(idx) {
            Some(b) => self.block_ext(b),
            None => self.block_ext(data),
        });
        for ((&(&idx, _), old), new) in blocks.iter().zip(olds).zip(exts) {
            delta += t.set_extent(ino, idx, old, new)?;
        }
        Ok(delta)
    }

    /// What a block's bytes become in the store: a block is stored without its trailing
    /// zeros (a small file's tail costs its bytes, not a block); all-zero blocks are holes.
    fn block_ext(&self, data: &impl BlockBuf) -> Ext {
        match last_nonzero(data.bytes()) {
            None => Ext::Hole,
            Some(last) => Ext::Data(self.view.hash(&data.bytes()[..=last]), data.share(last + 1)),
        }
    }

    /// Writes out `n`'s dirty blocks, so that an operation on its stored extents (truncate,
    /// punch, block sharing) changes memory only after its own commit succeeds.
    fn settle(&self, ino: u64, n: &mut Node) -> FsResult<()> {
        if n.dirty.is_empty() {
            return Ok(());
        }
        let rec = n.rec.clone();
        self.save_node(ino, n, rec).map(|_| ())
    }

    /// Records in memory what `stage_node` wrote.
    fn applied(&self, ino: u64, n: &mut Node, rec: InodeRec) {
        let flushed = std::mem::take(&mut n.dirty);
        self.stored(ino, n, rec, flushed);
    }

    /// Records in memory that `rec` and the blocks `flushed` (taken out of `n.dirty`) are
    /// stored, and that nothing was written since (an fsync or a flush of every block).
    fn stored(&self, ino: u64, n: &mut Node, rec: InodeRec, mut flushed: BTreeMap<u64, Vec<u8>>) {
        n.rec = rec;
        n.meta_dirty = false;
        n.unsynced.clear();
        if !flushed.is_empty() {
            self.add_dirty(-(flushed.len() as i64));
            // Clean copies of every flushed block are stale now; keep fresh copies of the last
            // few (an appended tail, a hot page).
            self.drop_clean_if(n, |i| flushed.contains_key(&i));
            // A partly written block's buffer is not its content: keep no clean copy of it.
            flushed.retain(|idx, _| {
                n.logged.remove(idx);
                n.partial.remove(idx).is_none()
            });
            for (idx, data) in flushed.into_iter().rev().take(table::CLEAN_PER_NODE) {
                self.keep_clean(n, idx, data);
            }
        }
        if n.dirty.is_empty() {
            n.dirty_since = None;
            if let Ok(mut d) = self.dirty.lock() {
                d.remove(&ino);
            }
        }
    }

    /// Writes a node's record (and its dirty blocks) in a batch of its own.
    /// Returns the commit's seq (`sync_to`).
    fn save_node(&self, ino: u64, n: &mut Node, rec: InodeRec) -> FsResult<u64> {
        let mut t = self.txn()?;
        let rec = self.stage_node(&mut t, ino, n, rec)?;
        let seq = t.commit_unsynced()?;
        self.applied(ino, n, rec);
        Ok(seq)
    }

    /// Starts flushing `n`'s dirty blocks. Unless somebody waits for the node, they move to
    /// `flushing` and the commit is left to `finish_flush`, which runs without the lock
    /// (reading the rest of partly written blocks too): the writer goes on filling the next
    /// blocks meanwhile. Otherwise (somebody waits, or the last such flush failed) the node
    /// is saved here, under the lock, and an error goes to the caller.
    fn begin_flush<'a>(&self, ino: u64, node: &'a NodeRef, n: MutexGuard<'a, Node>) -> FsResult<Option<Flush>> {
        let mut n = table::settled(node, n)?;
        if n.is_clean() {
            return Ok(None);
        }
        if n.waiters > 0 || n.dirty.is_empty() || n.flush_failed {
            let rec = n.rec.clone();
            self.save_node(ino, &mut n, rec)?;
            n.flush_failed = false;
            return Ok(None);
        }
        // The flush reads the stored bytes under all its partly written blocks itself.
        n.unfetched.clear();
        let blocks = Arc::new(table::Flushing {
            blocks: std::mem::take(&mut n.dirty).into_iter().map(|(i, b)| (i, Arc::new(b))).collect(),
            partial: std::mem::take(&mut n.partial),
            logged: std::mem::take(&mut n.logged),
            unsynced: std::mem::take(&mut n.unsynced),
        });
        n.flushing = Some(blocks.clone());
        n.meta_dirty = false;
        // The node's age starts again at its next write: what was dirty is the flush's now.
        // (Else a file written without pause stayed "old", and the flusher committed all
        // its dirty blocks under its lock at every tick.)
        n.dirty_since = None;
        Ok(Some(Flush { ino, node: node.clone(), blocks, rec: n.rec.clone() }))
    }

    /// Commits a flush `begin_flush` started, then records it in the node (or, if the commit
    /// failed, gives its blocks back to the node's dirty ones, to be retried and reported by
    /// the next flush, fsync or close).
    pub fn finish_flush(&self, f: Flush) -> FsResult<()> {
        let Flush { ino, node, blocks, rec } = f;
        let r = (|| -> FsResult<InodeRec> {
            let mut t = self.txn()?;
            let delta = self.stage_data(&mut t, ino, &blocks.blocks, &blocks.partial, rec.blocks)?;
            // The blocks' write (8 MiB: 12-17 ms here) goes before the seal: fsyncs of the
            // file commit beside the flush meanwhile instead of waiting for it.
            t.write_ahead()?;
            let rec = {
                // Sealed under the lock: an fsync beside this flush has committed or waits for
                // it, so the records dropped and the record written here are the newest.
                let mut n = table::lock_busy(&node)?;
                n.flush_sealed = true;
                for idx in blocks.blocks.keys() {
                    // A record an fsync rewrote for a block written again meanwhile stays: it
                    // holds those newer bytes, laid over this flush's.
                    let rewritten = n.logged.contains(idx) && n.dirty.contains_key(idx);
                    if (blocks.logged.contains(idx) || n.logged.contains(idx)) && !rewritten {
                        t.drop_written(ino, *idx)?;
                    }
                }
                with_blocks(ino, n.synced.clone().unwrap_or(rec), delta)?
            };
            t.put_inode(ino, &rec)?;
            t.commit(false)?;
            Ok(rec)
        })();
        let mut n = table::lock_busy(&node)?;
        n.flushing = None;
        n.flush_sealed = false;
        n.synced = None;
        let mut freed = 0i64;
        match &r {
            Ok(rec) => {
                freed = blocks.blocks.len() as i64;
                // Only commits wait for the flush, and those beside it store no extent, so
                // nothing else changed the block count.
                n.rec.blocks = rec.blocks;
                let Node { logged, dirty, .. } = &mut *n;
                logged.retain(|i| !blocks.blocks.contains_key(i) || dirty.contains_key(i));
                let kept = n.lookups > 0 || n.opens > 0;
                self.drop_clean_if(&mut n, |i| blocks.blocks.contains_key(&i));
                if kept {
                    // A partly written block's buffer is not its content: no clean copy of it.
                    let whole = blocks.blocks.iter().filter(|(i, _)| !blocks.partial.contains_key(i));
                    for (idx, data) in whole.rev().take(table::CLEAN_PER_NODE) {
                        if !n.dirty.contains_key(idx) {
                            self.keep_clean(&mut n, *idx, data.to_vec());
                        }
                    }
                }
                if n.is_clean() {
                    n.dirty_since = None;
                    if let Ok(mut d) = self.dirty.lock() {
                        d.remove(&ino);
                    }
                }
            }
            Err(_) => {
                for (idx, data) in &blocks.blocks {
                    let older = (data.to_vec(), blocks.partial.get(idx).cloned());
                    // What was written meanwhile goes over the older copy.
                    let (b, ranges) = match n.dirty.remove(idx) {
                        None => older,
                        Some(newer) => {
                            freed += 1;
                            let r = n.partial.remove(idx);
                            table::lay_over(Some(older), &newer, r.as_ref())
                        }
                    };
                    n.dirty.insert(*idx, b);
                    if let Some(r) = ranges {
                        n.partial.insert(*idx, r);
                    }
                }
                // Written meanwhile or not, the records are rewritten at the next fsync.
                n.logged.extend(blocks.logged.iter().copied());
                n.unsynced.extend(blocks.blocks.keys().copied());
                n.meta_dirty = true;
                n.flush_failed = true;
            }
        }
        drop(n);
        table::wake(&node);
        self.add_dirty(-freed);
        r.map(|_| ())
    }

    /// Flushes one file's dirty data; with `sync`, makes it and everything before durable.
    pub fn flush_ino(&self, ino: u64, sync: bool) -> FsResult<()> {
        let node = match self.table.get(ino, || Ok(None))? {
            Some(n) => n,
            None => {
                if sync {
                    self.view.sync()?;
                }
                return Ok(());
            }
        };
        let mut n = table::lock_busy(&node)?;
        // The log is synced after the node's lock is released: writers to the file go on
        // meanwhile, and fsyncs of it share one sync.
        if sync {
            let started = Instant::now();
            if let Some(seq) = self.commit_beside_flush(ino, &mut n)? {
                drop(n);
                crate::metrics::get().fsync_commits.observe(started.elapsed().as_secs_f64());
                return Ok(self.view.sync_to(seq)?);
            }
        }
        let mut n = table::settled(&node, n)?;
        // Committed by an earlier fsync, a close or the flusher: only the sync is left.
        if n.is_clean() || (sync && n.is_committed()) {
            drop(n);
            if sync {
                self.view.sync()?;
            }
            return Ok(());
        }
        if sync {
            // Timed from the lock: a wait for a flush in flight is not the commit's.
            let started = Instant::now();
            let seq = self.commit_node(ino, &mut n)?;
            drop(n);
            crate::metrics::get().fsync_commits.observe(started.elapsed().as_secs_f64());
            return Ok(self.view.sync_to(seq)?);
        }
        let rec = n.rec.clone();
        self.save_node(ino, &mut n, rec).map(|_| ())
    }

    /// An fsync while a flush of the file is in flight, without waiting for it (that flush
    /// reads the rest of every partly written block, tens of ms for 8 MiB of random writes):
    /// the blocks written since the last fsync and the flushing blocks no `W` record holds
    /// yet go into `W` records (laid over what the flush holds of them), next to the node's
    /// record, synced. No stored extent changes, so the flush's batch stays valid; when it
    /// commits it writes this record (`Node::synced`) and keeps the records of blocks
    /// written again meanwhile. Returns the commit's seq, for the caller to sync; None,
    /// having done nothing, when no flush is in flight or this does not apply (the flush
    /// is sealed, a whole block or too many to log): the caller then waits for the flush.
    fn commit_beside_flush(&self, ino: u64, n: &mut Node) -> FsResult<Option<u64>> {
        let Some(f) = n.flushing.clone() else { return Ok(None) };
        if n.flush_sealed || n.purged {
            return Ok(None);
        }
        let mut want: BTreeSet<u64> = n.unsynced.iter().filter(|i| n.dirty.contains_key(i)).copied().collect();
        want.extend(f.unsynced.iter().filter(|i| f.blocks.contains_key(i) && !n.logged.contains(i)));
        if want.len() > LOG_BESIDE_FLUSH {
            return Ok(None);
        }
        let mut records = Vec::with_capacity(want.len());
        for idx in &want {
            let below = f.blocks.get(idx).map(|b| (b.to_vec(), f.partial.get(idx).cloned()));
            let laid = match (n.dirty.get(idx), below) {
                (Some(d), below) => table::lay_over(below, d, n.partial.get(idx)),
                (None, Some(below)) => below,
                (None, None) => return Ok(None),
            };
            // A whole block is no record's: the flush stores it.
            let (bytes, Some(ranges)) = laid else { return Ok(None) };
            records.push((*idx, crate::store::records::encode_written(&ranges, &bytes)));
        }
        let mut t = self.txn()?;
        for (idx, v) in &records {
            t.put_written(ino, *idx, v)?;
        }
        t.put_inode(ino, &n.rec)?;
        let seq = t.commit_unsynced()?;
        n.logged.extend(want);
        n.unsynced.clear();
        n.meta_dirty = false;
        n.synced = Some(n.rec.clone());
        crate::metrics::get().fsyncs_beside_flush.inc();
        Ok(Some(seq))
    }

    /// The flush of a file descriptor's close (any copy of it: a fork's child closing it at
    /// exec too): commits what was written like an fsync, without the sync.
    pub fn flush_on_close(&self, ino: u64) -> FsResult<()> {
        let Some(node) = self.table.get(ino, || Ok(None))? else { return Ok(()) };
        let mut n = lock(&node)?;
        if n.is_clean() || n.is_committed() {
            return Ok(());
        }
        self.commit_node(ino, &mut n).map(|_| ())
    }

    /// Commits a dirty file (an fsync, which then syncs the returned seq; a close) like a
    /// flush, except that a partly written block is not completed: the bytes written go
    /// into the batch as a `W` record, and the block stays dirty until a later flush (the
    /// flusher's, within seconds) completes it and drops the record in the same batch. So
    /// an fsync'd small write costs no block read, nor the lookup that would tell whether
    /// a block lies under it (the flush looks it up anyway, and completes a hole with
    /// zeros); after a crash, opening the volume merges the records (`merge_written`). Its
    /// cost follows the blocks written since the last commit (`unsynced`), not the blocks
    /// held.
    pub(super) fn commit_node(&self, ino: u64, n: &mut Node) -> FsResult<u64> {
        let written: Vec<u64> = n.unsynced.iter().filter(|i| n.dirty.contains_key(i)).copied().collect();
        let partial = |i: &&u64| n.partial.contains_key(i);
        // Beside a flush in flight a new record would have to lay over the flush's copy
        // (`commit_beside_flush` does that): only blocks with a record are held then.
        let fresh = n.flushing.is_none();
        let held: BTreeSet<u64> = written.iter().filter(partial).filter(|i| fresh || n.logged.contains(i)).copied().collect();
        if held.is_empty() && n.logged.is_empty() {
            let rec = n.rec.clone();
            return self.save_node(ino, n, rec);
        }
        let rest: BTreeMap<u64, Vec<u8>> = written.iter().filter(|i| !held.contains(i)).filter_map(|i| n.dirty.remove_entry(i)).collect();
        let r = (|| -> FsResult<(InodeRec, u64)> {
            let mut t = self.txn()?;
            for idx in &held {
                let ranges = n.partial.get(idx).map(Vec::as_slice).unwrap_or_default();
                let data = n.dirty.get(idx).map(Vec::as_slice).unwrap_or_default();
                t.put_written(ino, *idx, &crate::store::records::encode_written(ranges, data))?;
            }
            let rec = self.stage_blocks(&mut t, ino, &rest, &n.partial, &n.logged, n.rec.clone())?;
            let seq = t.commit_unsynced()?;
            Ok((rec, seq))
        })();
        match r {
            Ok((rec, seq)) => {
                n.logged.extend(held);
                self.stored(ino, n, rec, rest);
                Ok(seq)
            }
            Err(e) => {
                n.dirty.extend(rest);
                Err(e)
            }
        }
    }

    /// Merges into their blocks the bytes fsyncs wrote over stored blocks (`W` records a
    /// crash left behind), one batch per file.
    fn merge_written(&self) -> FsResult<()> {
        let mut by_ino: BTreeMap<u64, Vec<(u64, Vec<u8>)>> = BTreeMap::new();
        for (ino, idx, v) in self.view.written()? {
            by_ino.entry(ino).or_default().push((idx, v));
        }
        for (ino, recs) in by_ino {
            let mut t = self.txn()?;
            match self.view.inode(ino)? {
                Some(rec) if rec.kind == Kind::File => {
                    let (mut dirty, mut partial, mut logged) = (BTreeMap::new(), HashMap::new(), BTreeSet::new());
                    for (idx, v) in recs {
                        let (ranges, block) = crate::store::records::decode_written(&v, self.bs as usize)?;
                        dirty.insert(idx, block);
                        partial.insert(idx, ranges);
                        logged.insert(idx);
                    }
                    log::info!("volume {}: merging {} block(s) of inode {ino} written before a crash", self.name(), dirty.len());
                    self.stage_blocks(&mut t, ino, &dirty, &partial, &logged, rec)?;
                }
                // The file is gone: nothing to merge into.
                _ => {
                    for (idx, _) in recs {
                        t.drop_written(ino, idx)?;
                    }
                }
            }
            t.commit(false)?;
        }
        Ok(())
    }

    /// Flushes files whose dirty data is older than `age` (all with `age` zero).
    pub fn flush_older_than(&self, age: Duration) -> FsResult<()> {
        let inos: Vec<u64> = match self.dirty.lock() {
            Ok(d) => d.iter().copied().collect(),
            Err(_) => return Err(Error::Corrupt("dirty set poisoned".into()).into()),
        };
        let now = Instant::now();
        for ino in inos {
            if let Some(node) = self.table.get(ino, || Ok(None))? {
                let mut n = lock(&node)?;
                let old = n.dirty_since.map(|t| now.duration_since(t) >= age).unwrap_or(n.meta_dirty);
                if old && !n.is_clean() {
                    let rec = n.rec.clone();
                    self.save_node(ino, &mut n, rec)?;
                }
            }
        }
        Ok(())
    }

    /// Flushes everything and syncs the log (unmount, snapshot, shutdown).
    pub fn flush_all(&self) -> FsResult<()> {
        self.purge_deferred()?;
        self.flush_older_than(Duration::ZERO)?;
        Ok(self.view.sync()?)
    }

    /// Removes an orphan (no names left, no open handles): data first, in bounded batches
    /// (the orphan marker stays meanwhile, so a crash leaves work the next start finishes),
    /// then xattrs and record in one batch.
    fn purge(&self, ino: u64, size: u64, logged: &BTreeSet<u64>) -> FsResult<()> {
        let blocks = size.div_ceil(self.bs);
        let mut from = 0;
        while from < blocks {
            let to = from.saturating_add(PURGE_BATCH).min(blocks);
            let found = self.view.extents(ino, from, to)?;
            if !found.is_empty() {
                let mut t = self.txn()?;
                t.frees();
                for (idx, at, h) in found {
                    t.drop_extent(ino, idx, at, h)?;
                }
                t.commit(false)?;
            }
            from = to;
        }
        let mut t = self.txn()?;
        t.frees();
        self.stage_purge(&mut t, ino, logged)?;
        Ok(t.commit(false)?)
    }

    /// Purges `ino` if it has no names and nothing holds it (the namespace lock first, as
    /// for an unlink).
    fn purge_unheld(&self, ino: u64, node: &table::NodeRef) -> FsResult<()> {
        let _g = self.ns()?;
        let mut n = lock(node)?;
        if n.rec.nlink == 0 && !n.purged && !self.held(&n) {
            return self.purge_gone(ino, &mut n);
        }
        Ok(())
    }

    /// Forgets an inode with no names and no open handles (an orphan in the store) and purges
    /// it: a small one later with others (`defer_purge`), a big one now in bounded batches.
    /// Its unsaved data is dropped, never written.
    fn purge_gone(&self, ino: u64, n: &mut Node) -> FsResult<()> {
        let (size, blocks, logged) = (n.rec.size, n.rec.blocks, std::mem::take(&mut n.logged));
        self.forget_node(ino, n)?;
        if blocks <= PURGE_BATCH {
            self.defer_purge(ino, blocks, logged)
        } else {
            self.purge(ino, size, &logged)
        }
    }

    /// Queues the purge of an unlinked small file (an orphan in the store, so a crash
    /// leaves it to the next start); purges the queue when it holds too many blocks.
    fn defer_purge(&self, ino: u64, blocks: u64, logged: BTreeSet<u64>) -> FsResult<()> {
        let queued = {
            let mut q = self.deferred.lock().map_err(|_| Error::Corrupt("purge queue poisoned".into()))?;
            q.files.push((ino, blocks + 1, logged));
            q.weight += blocks + 1;
            q.weight
        };
        if queued > DEFERRED_MAX {
            self.purge_deferred()?;
        }
        Ok(())
    }

    /// Purges the unlinked files `defer_purge` queued, in batches of up to `DEFERRED_BATCH`
    /// blocks. Run by the flusher, and before what must see the space back: a snapshot's
    /// flush, `statfs`, a refused quota.
    pub fn purge_deferred(&self) -> FsResult<()> {
        let _one = self.purging.lock().map_err(|_| Error::Corrupt("purge lock poisoned".into()))?;
        let queue = || self.deferred.lock().map_err(|_| Error::Corrupt("purge queue poisoned".into()));
        loop {
            // The queue's lock only picks the batch: held across the commit (0.16-0.65 s for
            // 4,096 files), it stalled every unlink that queued a file meanwhile.
            let (n, weight, batch) = {
                let q = queue()?;
                if q.files.is_empty() {
                    return Ok(());
                }
                let (mut n, mut weight) = (0, 0);
                while n < q.files.len() && (n == 0 || weight + q.files[n].1 <= DEFERRED_BATCH) {
                    weight += q.files[n].1;
                    n += 1;
                }
                // Each inode once: staged twice, its blocks would be counted off twice.
                let mut batch: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
                for (ino, _, logged) in &q.files[..n] {
                    batch.entry(*ino).or_default().extend(logged.iter().copied());
                }
                (n, weight, batch)
            };
            let mut t = self.txn()?;
            t.frees();
            for (ino, logged) in &batch {
                self.stage_purge(&mut t, *ino, logged)?;
            }
            t.commit(false)?;
            // Still the first `n`: under `purging` the queue only grew at its end.
            let mut q = queue()?;
            q.files.drain(..n);
            q.weight -= weight;
        }
    }

    /// Stages the removal of inode `ino` (data, xattrs, record) and of the `W` records of
    /// its `logged` blocks.
    fn stage_purge(&self, t: &mut ViewTxn<'_>, ino: u64, logged: &BTreeSet<u64>) -> FsResult<()> {
        for idx in logged {
            t.drop_written(ino, *idx)?;
        }
        Ok(t.purge_inode(ino)?)
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

    /// Purges orphans a stop left: files unlinked while open, or whose deferred purge it cut short.
    fn purge_orphans(&self) -> FsResult<()> {
        for ino in self.view.orphans()? {
            log::info!("volume {}: removing orphan inode {ino}", self.name());
            let size = self.view.inode(ino)?.map(|r| r.size).unwrap_or(0);
            self.purge(ino, size, &BTreeSet::new())?;
        }
        Ok(())
    }

    /// The kernel dropped `n` lookups of `ino`.
    pub fn forget(&self, ino: u64, nlookup: u64) {
        if let Ok(Some(node)) = self.table.get(ino, || Ok(None)) {
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
        // Expired ones go every 1,024 new names (and when full), so what stays is about
        // one TTL's worth.
        if a.len() >= ABSENT_MAX || (a.len() % 1024 == 1023 && !a.contains_key(&key)) {
            a.retain(|_, until| *until > now);
            if a.len() >= ABSENT_MAX {
                return false;
            }
        }
        a.insert(key, now + ttl + ABSENT_SLACK);
        true
    }

    /// Names the kernel may have cached: every entry of every directory in memory, and the
    /// names it may remember as absent.
    pub fn cached_names(&self) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        if let Ok(a) = self.absent.lock() {
            let now = Instant::now();
            out.extend(a.iter().filter(|(_, until)| **until > now).map(|(k, _)| k.clone()));
        }
        for ino in self.cached_inos() {
            let is_dir = match self.table.get(ino, || Ok(None)) {
                Ok(Some(node)) => table::lock_busy(&node).map(|n| n.rec.kind == Kind::Dir).unwrap_or(false),
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
        c.create(&s, "v", 4096, 0, 0).unwrap();
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
        assert!(v.absent.lock().unwrap().len() < 1024);
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
