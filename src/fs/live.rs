//! A mounted view whose volume can be swapped (rollback) and cut (snapshot) atomically with
//! respect to FUSE operations: every operation holds the read side for its whole duration,
//! a cut, a swap or a flatten's batch holds the write side.
//!
//! It also owns the mount's page pushes. A READ smaller than a block reads the whole block
//! from the store anyway; the rest of it is handed to the kernel's page cache
//! (FUSE_NOTIFY_STORE) by one pusher thread, so the next reads of that block cost no round
//! trip (a cold 4 KiB random read: about 3x the IOPS). The kernel copies a write into its
//! pages before the WRITE reaches the daemon, so a push of bytes read before such a write
//! would put old bytes back over new ones. Hence (ARCHITECTURE.md, invariant 24): a push is taken
//! before its bytes are read, only while no file of the inode is open for writing, and a
//! write open, a truncate or a volume swap first waits for the inode's pushes in flight.

use super::Volume;
use crate::error::{Error, Result};
use crossbeam_channel::{Receiver, Sender};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard};

/// Pushes queued for the pusher; a READ whose push finds the queue full pushes nothing.
const PUSH_QUEUE: usize = 64;

pub struct Live {
    vol: RwLock<Arc<Volume>>,
    notifier: Mutex<Option<fuser::Notifier>>,
    pages: Arc<Pages>,
    /// Set once pushes are on (`start_pushes`); dropping it ends the pusher.
    pusher: OnceLock<Sender<Push>>,
}

/// Who may change an inode's pages and which pushes are in flight, by kernel inode number.
#[derive(Default)]
struct Pages {
    state: Mutex<PageState>,
    /// Signalled when an inode's or the mount's last push in flight is done.
    idle: Condvar,
}

#[derive(Default)]
struct PageState {
    /// Swaps of the volume waiting or running: no new pushes.
    paused: u32,
    /// Files open for writing, and write opens or truncates waiting or running.
    writers: HashMap<u64, u32>,
    /// Pushes taken and not yet done.
    pushing: HashMap<u64, u32>,
    in_flight: u64,
}

impl Pages {
    fn lock(&self) -> MutexGuard<'_, PageState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Leave to push the pages of one inode: while it lives, no writer gets at them.
pub struct PushTicket {
    pages: Arc<Pages>,
    ino: u64,
}

impl Drop for PushTicket {
    fn drop(&mut self) {
        let mut s = self.pages.lock();
        s.in_flight -= 1;
        let left = match s.pushing.get_mut(&self.ino) {
            Some(n) => {
                *n -= 1;
                *n
            }
            None => 0,
        };
        if left == 0 {
            s.pushing.remove(&self.ino);
        }
        if left == 0 || s.in_flight == 0 {
            self.pages.idle.notify_all();
        }
    }
}

/// A write open or a truncate of one inode: from its making, no new push of the inode
/// starts; it may change the inode's pages once `Live::pushes_done`.
pub struct Writer {
    pages: Option<Arc<Pages>>,
    ino: u64,
}

impl Writer {
    /// The file stays open for writing until its RELEASE (`Live::end_write`).
    pub fn keep(mut self) {
        self.pages = None;
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Some(p) = self.pages.take() {
            end_write(&p, self.ino);
        }
    }
}

fn end_write(p: &Pages, ino: u64) {
    let mut s = p.lock();
    if let Some(n) = s.writers.get_mut(&ino) {
        *n -= 1;
        if *n == 0 {
            s.writers.remove(&ino);
        }
    }
}

struct Push {
    ticket: PushTicket,
    /// Bytes from `off`; `skip` (relative) is what the READ's reply gave the kernel already.
    off: u64,
    data: Vec<u8>,
    skip: Range<usize>,
}

impl Live {
    pub fn new(v: Volume) -> Live {
        Live { vol: RwLock::new(Arc::new(v)), notifier: Mutex::new(None), pages: Arc::default(), pusher: OnceLock::new() }
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

    /// `exclusive` for a change of the files' contents behind the kernel (rollback,
    /// receive): no push may be in flight then, or it could bring back a page of the old
    /// volume. Waits for them before taking the view: a push may wait for a READ's page.
    pub fn replace<T>(&self, f: impl FnOnce(&mut Arc<Volume>) -> Result<T>) -> Result<T> {
        struct Resume<'a>(&'a Pages);
        impl Drop for Resume<'_> {
            fn drop(&mut self) {
                self.0.lock().paused -= 1;
            }
        }
        let mut s = self.pages.lock();
        s.paused += 1;
        let _resume = Resume(&self.pages);
        while s.in_flight > 0 {
            s = self.pages.idle.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        drop(s);
        self.exclusive(f)
    }

    /// Before the session serves requests: every later request sees it.
    pub fn set_notifier(&self, n: fuser::Notifier) {
        if let Ok(mut g) = self.notifier.lock() {
            *g = Some(n);
        }
    }

    /// Turns page pushes on, before the session serves requests (every write open must be
    /// counted). Not for writeback mounts (the kernel holds dirty pages the daemon has not
    /// seen) nor `--fast-open` ones (no OPEN or RELEASE tells of writers).
    pub fn start_pushes(&self, n: fuser::Notifier) -> Result<()> {
        let (tx, rx) = crossbeam_channel::bounded(PUSH_QUEUE);
        std::thread::Builder::new().name("clonefs-push".into()).spawn(move || pusher(n, rx))?;
        let _ = self.pusher.set(tx);
        Ok(())
    }

    /// Leave to push pages of `ino` (a kernel inode number), if pushes are on and no file of
    /// it is open for writing. Take it before reading the bytes to push.
    pub fn push_ticket(&self, ino: u64) -> Option<PushTicket> {
        self.pusher.get()?;
        let mut s = self.pages.lock();
        if s.paused > 0 || s.writers.contains_key(&ino) {
            return None;
        }
        *s.pushing.entry(ino).or_default() += 1;
        s.in_flight += 1;
        Some(PushTicket { pages: self.pages.clone(), ino })
    }

    /// Hands `data` (the file's bytes from `off`) but `skip` to the pusher; dropped if it is
    /// behind.
    pub fn push(&self, ticket: PushTicket, off: u64, data: Vec<u8>, skip: Range<usize>) {
        if let Some(tx) = self.pusher.get() {
            let _ = tx.try_send(Push { ticket, off, data, skip });
        }
    }

    /// A file of `ino` is about to be opened for writing or truncated (see `Writer`).
    pub fn writer(&self, ino: u64) -> Writer {
        if self.pusher.get().is_none() {
            return Writer { pages: None, ino };
        }
        *self.pages.lock().writers.entry(ino).or_default() += 1;
        Writer { pages: Some(self.pages.clone()), ino }
    }

    /// No push of `ino` is in flight.
    pub fn pushes_done(&self, ino: u64) -> bool {
        !self.pages.lock().pushing.contains_key(&ino)
    }

    /// Waits until `pushes_done`. Not in a FUSE thread: a push may wait for a page a queued
    /// READ holds locked, and that READ for a free FUSE thread.
    pub fn wait_pushes(&self, ino: u64) {
        let mut s = self.pages.lock();
        while s.pushing.contains_key(&ino) {
            s = self.pages.idle.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The RELEASE of a file a kept `Writer` opened.
    pub fn end_write(&self, ino: u64) {
        if self.pusher.get().is_some() {
            end_write(&self.pages, ino);
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

/// Ends when the mount's `Live` goes (its sender with it). A push may wait for pages other
/// READs hold locked; it runs here, not in a FUSE thread, so those READs are served.
fn pusher(n: fuser::Notifier, rx: Receiver<Push>) {
    let m = crate::metrics::get();
    for p in rx {
        let ino = fuser::INodeNo(p.ticket.ino);
        let head = &p.data[..p.skip.start.min(p.data.len())];
        let tail = p.data.get(p.skip.end..).unwrap_or(&[]);
        for (at, part) in [(p.off, head), (p.off + p.skip.end as u64, tail)] {
            if part.is_empty() {
                continue;
            }
            // ENOENT: the kernel has let the inode go meanwhile.
            if n.store(ino, at, part).is_ok() {
                m.pushed_bytes.inc_by(part.len() as u64);
            }
        }
        drop(p.ticket);
    }
}
