//! In-memory inodes. While a `Node` is in the table it is the authoritative copy of its inode:
//! every change goes through its lock, and every write of its record to the store carries its
//! dirty blocks too (so a stored size never runs ahead of stored data).

use crate::error::{Error, Result};
use crate::volume::InodeRec;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
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
    pub dirty_since: Option<Instant>,
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
        Node { rec, dirty: BTreeMap::new(), partial: HashMap::new(), dirty_since: None, clean: VecDeque::new(), meta_dirty: false, opens: 0, lookups: 0, purged: false }
    }
    pub fn is_clean(&self) -> bool {
        self.dirty.is_empty() && !self.meta_dirty
    }
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

/// Copies the ranges `r` of `data` over `base`.
pub fn overlay(base: &mut [u8], data: &[u8], r: &Ranges) {
    for &(s, e) in r {
        base[s as usize..e as usize].copy_from_slice(&data[s as usize..e as usize]);
    }
}

pub type NodeRef = Arc<Mutex<Node>>;

pub fn lock(n: &NodeRef) -> Result<MutexGuard<'_, Node>> {
    n.lock().map_err(|_| Error::Corrupt("inode lock poisoned by a panic".into()))
}

#[derive(Default)]
pub struct Table {
    shards: Vec<Mutex<HashMap<u64, NodeRef>>>,
}

impl Table {
    pub fn new() -> Table {
        Table { shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect() }
    }

    fn shard(&self, ino: u64) -> Result<MutexGuard<'_, HashMap<u64, NodeRef>>> {
        self.shards[(ino as usize) % SHARDS]
            .lock()
            .map_err(|_| Error::Corrupt("inode table poisoned by a panic".into()))
    }

    /// The node for `ino`, loading it with `load` if it is not in memory. The shard lock is
    /// held across the load so one inode never has two nodes.
    pub fn get(&self, ino: u64, load: impl FnOnce() -> Result<Option<InodeRec>>) -> Result<Option<NodeRef>> {
        let mut s = self.shard(ino)?;
        if let Some(n) = s.get(&ino) {
            return Ok(Some(n.clone()));
        }
        match load()? {
            Some(rec) => {
                let n = Arc::new(Mutex::new(Node::new(rec)));
                s.insert(ino, n.clone());
                Ok(Some(n))
            }
            None => Ok(None),
        }
    }

    pub fn insert(&self, ino: u64, node: Node) -> Result<NodeRef> {
        let n = Arc::new(Mutex::new(node));
        self.shard(ino)?.insert(ino, n.clone());
        Ok(n)
    }

    pub fn remove(&self, ino: u64) -> Result<()> {
        self.shard(ino)?.remove(&ino);
        Ok(())
    }

    /// Drops the node if nobody but the table holds it and it has nothing unsaved.
    pub fn evict_if_idle(&self, ino: u64) -> Result<()> {
        let mut s = self.shard(ino)?;
        if let Some(n) = s.get(&ino) {
            if Arc::strong_count(n) == 1 {
                let idle = n.try_lock().map(|g| g.is_clean() && g.opens == 0 && g.lookups == 0).unwrap_or(false);
                if idle {
                    s.remove(&ino);
                }
            }
        }
        Ok(())
    }

    pub fn inos(&self) -> Vec<u64> {
        let mut out = Vec::new();
        for s in &self.shards {
            if let Ok(g) = s.lock() {
                out.extend(g.keys().copied());
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
}
