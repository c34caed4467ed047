//! The store's command history (as `zpool history`): every state-changing request, when it
//! ran, who asked (the uid on the control socket) and how it ended. Kept in the catalog
//! under sequence numbers, newest last; written by the daemon only. The newest `KEEP` are
//! kept (a farm or a CI that clones all day would otherwise grow it without end).

use crate::error::Result;
use crate::store::{CatKey, CatRange, Store};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    /// Seconds since the Unix epoch.
    pub time: i64,
    pub uid: u32,
    /// The request as the client sent it (`{"op": ..., ...}`).
    pub request: serde_json::Value,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Entries kept: about 200 bytes each.
pub const KEEP: u64 = 100_000;

/// Appends entries; one per daemon.
pub struct History {
    next: AtomicU64,
    keep: u64,
}

impl History {
    /// Continues after the last entry of `store`, keeping the newest `keep`.
    pub fn open(store: &Store, keep: u64) -> Result<History> {
        let mut seqs = Vec::new();
        store.cat_scan(CatRange::History, |k, _| {
            if let CatKey::History(n) = k {
                seqs.push(n);
            }
            Ok(true)
        })?;
        let last = seqs.last().copied().unwrap_or(0);
        // Past the bound (a smaller one than before): the oldest go now.
        if seqs.len() as u64 > keep {
            let mut t = store.txn();
            for n in &seqs[..seqs.len() - keep as usize] {
                t.cat_delete(&CatKey::History(*n))?;
            }
            t.commit(false)?;
        }
        Ok(History { next: AtomicU64::new(last + 1), keep })
    }

    /// Records `e`, and drops the entry that falls out of the newest `keep`. A history that
    /// cannot be written (a full disk) never fails the command it describes: the caller
    /// logs the error.
    pub fn append(&self, store: &Store, e: &Entry) -> Result<()> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut t = store.txn();
        t.cat_put(&CatKey::History(n), &serde_json::to_vec(e)?)?;
        if n > self.keep {
            t.cat_delete(&CatKey::History(n - self.keep))?;
        }
        t.commit(false)
    }
}

/// Every entry, oldest first.
pub fn list(store: &Store) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    store.cat_scan(CatRange::History, |_, v| {
        out.push(serde_json::from_slice(v)?);
        Ok(true)
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_newest_entries_are_kept() {
        let d = tempfile::tempdir().unwrap();
        Store::init(&d.path().join("s")).unwrap();
        let s = Store::open(&d.path().join("s")).unwrap();
        let entry = |i: i64| Entry { time: i, uid: 0, request: serde_json::json!({"op": "create"}), ok: true, error: None };
        let times = |s: &Store| list(s).unwrap().iter().map(|e| e.time).collect::<Vec<_>>();
        let h = History::open(&s, 5).unwrap();
        for i in 1..=8 {
            h.append(&s, &entry(i)).unwrap();
        }
        assert_eq!(times(&s), vec![4, 5, 6, 7, 8]);
        // A daemon started with a smaller bound drops the oldest at once, then goes on.
        let h = History::open(&s, 3).unwrap();
        assert_eq!(times(&s), vec![6, 7, 8]);
        h.append(&s, &entry(9)).unwrap();
        assert_eq!(times(&s), vec![7, 8, 9]);
    }
}
