//! In-memory inodes. While a `Node` is in the table it is the authoritative copy of its inode:
//! every change goes through its lock, and every write of its record to the store carries its
//! dirty blocks too (so a stored size never runs ahead of stored data).
//!
//! A flush of a file's blocks may commit without the node's lock (`Volume::begin_flush`):
//! the blocks move to `flushing` and stay readable there. `lock` waits until no flush is in
//! flight, so whoever stages the node's record or touches its stored extents sees them
//! committed; only reads, writes and an fsync that commits beside the flush
//! (`Volume::commit_beside_flush`) use `lock_busy`, which does not wait.

use crate::error::{Error, Result};
use crate::volume::InodeRec;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

const SHARDS: usize = 64;
/// Clean copies of flushed blocks a node keeps (see `Volume::keep_clean`).
pub const CLEAN_PER_NODE: usize = 4;

pub struct Node {
    pub rec: InodeRec,
    /// Whole blocks written but not yet in the store, by block index.
    pub dirty: BTreeMap<u64, Vec<u8>>,
    /// Dirty blocks of which only these byte ranges were written (sorted, disjoint): the
    /// rest of the block is still the stored one, read only when needed (a flush, a read),
    /// so a small write never waits for a block read.
    pub partial: HashMap<u64, Ranges>,
    /// Partly written dirty blocks whose written bytes an fsync recorded in the store (`W`
    /// records) instead of completing them. The flush that stores such a block drops its
    /// record in the same batch (every key here is in `dirty`, or in `flushing`'s).
    pub logged: BTreeSet<u64>,
    /// Dirty blocks written since the last fsync or flush: every dirty block is here or
    /// in `logged` with its record up to date, so an fsync looks at these only.
    pub unsynced: BTreeSet<u64>,
    /// Partly written dirty blocks over stored bytes that nobody asked the kernel to read
    /// ahead yet (`Volume::read_ahead_partial`). Flushes, commits and purges drop theirs; a
    /// block that later writes complete stays listed (its read ahead is one wasted read).
    pub unfetched: Vec<u64>,
    pub dirty_since: Option<Instant>,
    /// Blocks a flush is committing without the node's lock: newer than the store, older
    /// than `dirty`. At most one flush of a node is in flight.
    pub flushing: Option<Arc<Flushing>>,
    /// The flush in flight has fixed what it commits (which `W` records it drops, the record
    /// it writes): from here an fsync waits for it instead of committing beside it.
    pub flush_sealed: bool,
    /// The record an fsync committed beside the flush in flight (`Volume::commit_beside_flush`):
    /// newer than the flush's, so the flush writes this one (with its block count).
    pub synced: Option<InodeRec>,
    /// Threads waiting in `lock` for the flush in flight: the next flush then commits
    /// under the lock, so a busy writer cannot keep them waiting.
    pub waiters: u32,
    /// The last flush without the lock failed: the next one runs under the lock, so its
    /// error reaches a writer (which then stops adding dirty blocks).
    pub flush_failed: bool,
    /// Copies of recently flushed blocks, equal to what the store holds, oldest first.
    pub clean: VecDeque<(u64, Vec<u8>)>,
    /// `rec` differs from the stored record (size, times after a write).
    pub meta_dirty: bool,
    /// Open file handles.
    pub opens: u32,
    /// Kernel lookup count (entries it holds).
    pub lookups: u64,
    /// Removed from the store while the kernel still holds the inode: it may still send
    /// times or pages it had cached (writeback cache), which are accepted and dropped.
    pub purged: bool,
}

impl Node {
    pub fn new(rec: InodeRec) -> Node {
        Node { rec, dirty: BTreeMap::new(), partial: HashMap::new(), logged: BTreeSet::new(), unsynced: BTreeSet::new(), unfetched: Vec::new(), dirty_since: None, flushing: None, flush_sealed: false, synced: None, waiters: 0, flush_failed: false, clean: VecDeque::new(), meta_dirty: false, opens: 0, lookups: 0, purged: false }
    }
    pub fn is_clean(&self) -> bool {
        self.dirty.is_empty() && !self.meta_dirty && self.flushing.is_none()
    }
    /// Everything written is committed: stored, or (blocks still dirty) in `W` records an
    /// fsync wrote and no write changed since.
    pub fn is_committed(&self) -> bool {
        self.unsynced.is_empty() && !self.meta_dirty && self.flushing.is_none()
    }
}

/// The blocks of a flush in flight, as `Node::dirty` and `Node::partial` had them.
pub struct Flushing {
    /// Shared with the commit's record (`Bytes`): staged without a copy.
    pub blocks: BTreeMap<u64, Arc<Vec<u8>>>,
    pub partial: HashMap<u64, Ranges>,
    pub logged: BTreeSet<u64>,
    /// Its blocks written since the last fsync (`Node::unsynced` as it was).
    pub unsynced: BTreeSet<u64>,
}

/// Written byte ranges of a block, sorted and disjoint.
pub type Ranges = Vec<(u32, u32)>;

/// Adds [s, e) to `r`, merging what it touches.
pub fn add_range(r: &mut Ranges, s: u32, e: u32) {
    let (mut s, mut e) = (s, e);
    r.retain(|&(a, b)| {
        if b < s || a > e {
            return true;
        }
        s = s.min(a);
        e = e.max(b);
        false
    });
    let at = r.partition_point(|&(a, _)| a < s);
    r.insert(at, (s, e));
}

/// A newer copy `d` of a block (whole, or with only ranges `r` written) laid over an older
/// one, `below` (bytes, and its written ranges unless it is whole): the result's bytes, and
/// its written ranges unless it is whole.
pub fn lay_over(below: Option<(Vec<u8>, Option<Ranges>)>, d: &[u8], r: Option<&Ranges>) -> (Vec<u8>, Option<Ranges>) {
    match (r, below) {
        (None, _) => (d.to_vec(), None),
        (Some(r), Some((mut b, below))) => {
            overlay(&mut b, d, r);
            let ranges = below.map(|mut u| {
                for &(s, e) in r {
                    add_range(&mut u, s, e);
                }
                u
            });
            (b, ranges)
        }
        (Some(r), None) => (d.to_vec(), Some(r.clone())),
    }
}

/// Copies the ranges `r` of `data` over `base`.
pub fn overlay(base: &mut [u8], data: &[u8], r: &Ranges) {
    for &(s, e) in r {
        base[s as usize..e as usize].copy_from_slice(&data[s as usize..e as usize]);
    }
}

/// A node and the signal that its flush in flight is done.
pub struct Cell {
    node: Mutex<Node>,
    flushed: Condvar,
}

pub type NodeRef = Arc<Cell>;

fn poisoned<T>(_: T) -> Error {
    Error::Corrupt("inode lock poisoned by a panic".into())
}

/// The node, once no flush of it is in flight.
pub fn lock(n: &NodeRef) -> Result<MutexGuard<'_, Node>> {
    settled(n, lock_busy(n)?)
}

/// The node, with a flush possibly in flight (for reads and writes, which see `flushing`).
pub fn lock_busy(n: &NodeRef) -> Result<MutexGuard<'_, Node>> {
    n.node.lock().map_err(poisoned)
}

/// Waits, with `g` released, until no flush of the node is in flight.
pub fn settled<'a>(n: &'a NodeRef, mut g: MutexGuard<'a, Node>) -> Result<MutexGuard<'a, Node>> {
    if g.flushing.is_none() {
        return Ok(g);
    }
    g.waiters += 1;
    let mut g = n.flushed.wait_while(g, |g| g.flushing.is_some()).map_err(poisoned)?;
    g.waiters -= 1;
    Ok(g)
}

/// Wakes the threads `settled` put to sleep (call after clearing `flushing`).
pub fn wake(n: &NodeRef) {
    n.flushed.notify_all();
}

fn cell(node: Node) -> NodeRef {
    Arc::new(Cell { node: Mutex::new(node), flushed: Condvar::new() })
}

#[derive(Default)]
struct Shard {
    nodes: HashMap<u64, NodeRef>,
    /// Kernel lookup counts of inodes whose clean, idle nodes were dropped to bound memory
    /// (`shed`): about 20 bytes each instead of a node's 600. A node loaded again takes its
    /// count back; a FORGET of such an inode lowers it here.
    idle: HashMap<u64, u64>,
}

impl Shard {
    /// A node for `rec`, with the lookups the kernel holds of it if it was shed.
    fn load(&mut self, ino: u64, rec: InodeRec) -> NodeRef {
        let mut node = Node::new(rec);
        node.lookups = self.idle.remove(&ino).unwrap_or(0);
        let n = cell(node);
        self.nodes.insert(ino, n.clone());
        n
    }
}

#[derive(Default)]
pub struct Table {
    shards: Vec<Mutex<Shard>>,
}

impl Table {
    pub fn new() -> Table {
        Table { shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect() }
    }

    fn shard(&self, ino: u64) -> Result<MutexGuard<'_, Shard>> {
        self.shards[(ino as usize) % SHARDS]
            .lock()
            .map_err(|_| Error::Corrupt("inode table poisoned by a panic".into()))
    }

    /// The node for `ino`, loading it with `load` if it is not in memory. The shard lock is
    /// held across the load so one inode never has two nodes.
    pub fn get(&self, ino: u64, load: impl FnOnce() -> Result<Option<InodeRec>>) -> Result<Option<NodeRef>> {
        let mut s = self.shard(ino)?;
        if let Some(n) = s.nodes.get(&ino) {
            return Ok(Some(n.clone()));
        }
        Ok(load()?.map(|rec| s.load(ino, rec)))
    }

    /// The node of `ino` if it is in memory; else the kernel's FORGET of `nlookup` lookups
    /// of a shed inode is taken here. One step under the shard's lock, so a node shed
    /// meanwhile cannot miss it.
    pub fn forget_or_node(&self, ino: u64, nlookup: u64) -> Result<Option<NodeRef>> {
        let mut s = self.shard(ino)?;
        if let Some(n) = s.nodes.get(&ino) {
            return Ok(Some(n.clone()));
        }
        if let Some(c) = s.idle.get_mut(&ino) {
            *c = c.saturating_sub(nlookup);
            if *c == 0 {
                s.idle.remove(&ino);
            }
        }
        Ok(None)
    }

    /// `get` of many inodes: those not in memory are loaded with one `load` call, under
    /// their shards' locks, taken in shard order (every other path holds at most one, so
    /// this cannot deadlock with them).
    pub fn get_many(&self, inos: &[u64], load: impl FnOnce(&[u64]) -> Result<Vec<Option<InodeRec>>>) -> Result<Vec<Option<NodeRef>>> {
        let mut shards: Vec<usize> = inos.iter().map(|i| (*i as usize) % SHARDS).collect();
        shards.sort_unstable();
        shards.dedup();
        let mut held = Vec::with_capacity(shards.len());
        for &s in &shards {
            held.push(self.shards[s].lock().map_err(|_| Error::Corrupt("inode table poisoned by a panic".into()))?);
        }
        let at = |ino: u64| shards.binary_search(&((ino as usize) % SHARDS)).expect("every shard is held");
        let mut missing: Vec<u64> = inos.iter().copied().filter(|i| !held[at(*i)].nodes.contains_key(i)).collect();
        missing.sort_unstable();
        missing.dedup();
        if !missing.is_empty() {
            for (ino, rec) in missing.iter().zip(load(&missing)?) {
                if let Some(rec) = rec {
                    held[at(*ino)].load(*ino, rec);
                }
            }
        }
        Ok(inos.iter().map(|i| held[at(*i)].nodes.get(i).cloned()).collect())
    }

    pub fn insert(&self, ino: u64, mut node: Node) -> Result<NodeRef> {
        let mut s = self.shard(ino)?;
        node.lookups += s.idle.remove(&ino).unwrap_or(0);
        let n = cell(node);
        s.nodes.insert(ino, n.clone());
        Ok(n)
    }

    pub fn remove(&self, ino: u64) -> Result<()> {
        self.shard(ino)?.nodes.remove(&ino);
        Ok(())
    }

    /// Drops the node if nobody but the table holds it and it has nothing unsaved.
    pub fn evict_if_idle(&self, ino: u64) -> Result<()> {
        let mut s = self.shard(ino)?;
        if let Some(n) = s.nodes.get(&ino) {
            if Arc::strong_count(n) == 1 {
                let idle = n.node.try_lock().map(|g| g.is_clean() && g.opens == 0 && g.lookups == 0).unwrap_or(false);
                if idle {
                    s.nodes.remove(&ino);
                }
            }
        }
        Ok(())
    }

    /// Bounds the nodes in memory: past `keep` (spread over the shards), drops nodes that
    /// nobody but the table holds and that hold nothing the store has not (the kernel's
    /// lookups of them are kept, `Shard::idle`), down to three quarters of it; `release`
    /// lets go of each one's clean block copies first. Unlinked and open inodes stay, and
    /// the root (the kernel holds it without counting lookups; a rollback must reach the
    /// names it caches under it). Returns how many were dropped.
    pub fn shed(&self, keep: usize, mut release: impl FnMut(&mut Node)) -> usize {
        let per = (keep / SHARDS).max(1);
        let mut dropped = 0;
        for s in &self.shards {
            let Ok(mut g) = s.lock() else { continue };
            if g.nodes.len() <= per {
                continue;
            }
            let mut over = g.nodes.len() - per * 3 / 4;
            let inos: Vec<u64> = g.nodes.keys().copied().collect();
            for ino in inos {
                if over == 0 {
                    break;
                }
                if ino == crate::fs::ROOT_INO {
                    continue;
                }
                let Some(node) = g.nodes.get(&ino).cloned() else { continue };
                // The table's and this one: nobody else can reach it while the shard is locked.
                if Arc::strong_count(&node) != 2 {
                    continue;
                }
                let lookups = {
                    let Ok(mut n) = node.node.try_lock() else { continue };
                    if !(n.is_clean() && n.opens == 0 && !n.purged && n.rec.nlink > 0 && n.waiters == 0) {
                        continue;
                    }
                    release(&mut n);
                    n.lookups
                };
                g.nodes.remove(&ino);
                if lookups > 0 {
                    g.idle.insert(ino, lookups);
                }
                over -= 1;
                dropped += 1;
            }
        }
        dropped
    }

    /// Every inode the kernel may hold: in memory, or shed with lookups.
    pub fn inos(&self) -> Vec<u64> {
        let mut out = Vec::new();
        for s in &self.shards {
            if let Ok(g) = s.lock() {
                out.extend(g.nodes.keys().copied());
                out.extend(g.idle.keys().copied());
            }
        }
        out
    }

}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_when_they_touch_or_overlap() {
        let mut r = Ranges::new();
        add_range(&mut r, 10, 20);
        add_range(&mut r, 30, 40);
        assert_eq!(r, vec![(10, 20), (30, 40)]);
        add_range(&mut r, 20, 25);
        assert_eq!(r, vec![(10, 25), (30, 40)]);
        add_range(&mut r, 0, 5);
        assert_eq!(r, vec![(0, 5), (10, 25), (30, 40)]);
        add_range(&mut r, 4, 35);
        assert_eq!(r, vec![(0, 40)]);
        let mut base = vec![1u8; 8];
        overlay(&mut base, &[9u8; 8], &vec![(2, 4), (6, 7)]);
        assert_eq!(base, vec![1, 1, 9, 9, 1, 1, 9, 1]);
    }

    #[test]
    fn get_many_loads_only_what_is_missing_once_and_keeps_the_nodes_in_memory() {
        use crate::volume::{Kind, Ts};
        let rec = |size| InodeRec {
            kind: Kind::File, perm: 0o644, uid: 0, gid: 0, nlink: 1, rdev: 0, size, blocks: 0, parent: 0,
            atime: Ts::default(), mtime: Ts::default(), ctime: Ts::default(), crtime: Ts::default(), target: Vec::new(),
        };
        let t = Table::new();
        // In memory already, with a size the store does not have: it must not be reloaded.
        let held = t.get(1 + SHARDS as u64, || Ok(Some(rec(7)))).unwrap().unwrap();
        let mut calls = Vec::new();
        let inos = [2, 1 + SHARDS as u64, 2, 9, 3];
        let got = t
            .get_many(&inos, |missing| {
                calls.push(missing.to_vec());
                Ok(missing.iter().map(|&i| (i != 9).then(|| rec(i * 100))).collect())
            })
            .unwrap();
        assert_eq!(calls, vec![vec![2, 3, 9]], "one load of the missing inodes, each once");
        let sizes: Vec<Option<u64>> = got.iter().map(|n| n.as_ref().map(|n| lock(n).unwrap().rec.size)).collect();
        assert_eq!(sizes, vec![Some(200), Some(7), Some(200), None, Some(300)]);
        assert!(Arc::ptr_eq(got[1].as_ref().unwrap(), &held));
        assert!(Arc::ptr_eq(got[0].as_ref().unwrap(), got[2].as_ref().unwrap()));
        // Loaded nodes stay in the table: a later get does not load them again.
        let again = t.get(3, || panic!("loaded twice")).unwrap().unwrap();
        assert!(Arc::ptr_eq(&again, got[4].as_ref().unwrap()));
        assert!(t.get(9, || Ok(None)).unwrap().is_none());
    }
}
