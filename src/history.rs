//! The store's command history (as `zpool history`): every state-changing request, when it
//! ran, who asked (the uid on the control socket) and how it ended. Kept in the catalog
//! under sequence numbers, newest last; written by the daemon only.

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

/// Appends entries; one per daemon.
pub struct History {
    next: AtomicU64,
}

impl History {
    /// Continues after the last entry of `store`.
    pub fn open(store: &Store) -> Result<History> {
        let mut last = 0;
        store.cat_scan(CatRange::History, |k, _| {
            if let CatKey::History(n) = k {
                last = n;
            }
            Ok(true)
        })?;
        Ok(History { next: AtomicU64::new(last + 1) })
    }

    /// Records `e`. A history that cannot be written (a full disk) never fails the command
    /// it describes: the caller logs the error.
    pub fn append(&self, store: &Store, e: &Entry) -> Result<()> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut t = store.txn();
        t.cat_put(&CatKey::History(n), &serde_json::to_vec(e)?)?;
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
