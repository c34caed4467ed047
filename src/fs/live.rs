//! A mounted view whose volume can be swapped (rollback) and cut (snapshot) atomically with
//! respect to FUSE operations: every operation holds the read side for its whole duration,
//! a cut or a swap holds the write side.

use super::Volume;
use crate::error::{Error, Result};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

pub struct Live {
    vol: RwLock<Arc<Volume>>,
    notifier: Mutex<Option<fuser::Notifier>>,
}

impl Live {
    pub fn new(v: Volume) -> Live {
        Live { vol: RwLock::new(Arc::new(v)), notifier: Mutex::new(None) }
    }

    /// The volume, held for one operation. Take it once per operation: taking it twice in one
    /// thread can deadlock against a waiting cut.
    pub fn get(&self) -> RwLockReadGuard<'_, Arc<Volume>> {
        match self.vol.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Runs `f` while no operation runs on this view.
    pub fn exclusive<T>(&self, f: impl FnOnce(&mut Arc<Volume>) -> Result<T>) -> Result<T> {
        let mut g = self.vol.write().map_err(|_| Error::Corrupt("mount lock poisoned".into()))?;
        f(&mut g)
    }

    pub fn set_notifier(&self, n: fuser::Notifier) {
        if let Ok(mut g) = self.notifier.lock() {
            *g = Some(n);
        }
    }

    /// Drops the kernel's cached attributes of `ino`, not its pages (safe inside a request
    /// on that inode).
    pub fn invalidate_attrs(&self, ino: u64) {
        if let Ok(g) = self.notifier.lock() {
            if let Some(n) = g.as_ref() {
                let _ = n.inval_inode(fuser::INodeNo(ino), -1, 0);
            }
        }
    }

    /// Drops what the kernel caches of these names and inodes (entries, attributes, pages).
    /// Call without holding the view: the kernel may need to finish requests first.
    pub fn invalidate(&self, names: &[(u64, Vec<u8>)], inos: &[u64]) {
        use std::os::unix::ffi::OsStrExt;
        if let Ok(g) = self.notifier.lock() {
            if let Some(n) = g.as_ref() {
                for (dir, name) in names {
                    let _ = n.inval_entry(fuser::INodeNo(*dir), std::ffi::OsStr::from_bytes(name));
                }
                for ino in inos {
                    let _ = n.inval_inode(fuser::INodeNo(*ino), 0, 0);
                }
            }
        }
    }
}
