//! Attributes, symlink targets, xattrs, statfs and fsync.

use super::acl::{self, Acl};
use super::table::lock;
use super::{err, FsResult, Entry, Volume};
use crate::volume::{InodeRec, Kind, Ts};

#[derive(Clone, Copy, Debug)]
pub enum TimeSet {
    Now,
    At(Ts),
}

/// The attribute changes of one setattr call; None leaves a field as it is.
#[derive(Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
    pub ctime: Option<Ts>,
    /// Clear set-user-ID and set-group-ID as a chown, or a truncate by an unprivileged
    /// caller, does (`drop_suidgid`).
    pub kill_suidgid: bool,
}

/// What Linux does to a file's mode when it is written or truncated by a caller without
/// CAP_FSETID, or chowned: set-user-ID goes, and set-group-ID if group execute is set
/// (without it, the bit means mandatory locking, not privilege).
pub fn drop_suidgid(perm: u32) -> u32 {
    let mut p = perm & !libc::S_ISUID;
    if p & libc::S_IXGRP != 0 {
        p &= !libc::S_ISGID;
    }
    p
}

impl SetAttr {
    /// Sets mode, owner and times on `rec` (size is the caller's: it changes stored data).
    fn apply_to(&self, rec: &mut InodeRec, now: Ts) {
        if self.kill_suidgid && rec.kind != Kind::Dir {
            rec.perm = drop_suidgid(rec.perm);
        }
        if let Some(m) = self.mode {
            rec.perm = m & 0o7777;
        }
        if let Some(u) = self.uid {
            rec.uid = u;
        }
        if let Some(g) = self.gid {
            rec.gid = g;
        }
        let pick = |t: TimeSet| match t {
            TimeSet::Now => now,
            TimeSet::At(ts) => ts,
        };
        if let Some(at) = self.atime {
            rec.atime = pick(at);
        }
        if let Some(mt) = self.mtime {
            rec.mtime = pick(mt);
        }
        rec.ctime = self.ctime.unwrap_or(now);
    }
}

pub const XATTR_NAME_MAX: usize = 255;
pub const XATTR_SIZE_MAX: usize = 65536;

/// Figures for statfs.
pub struct FsStats {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
}

impl Volume {
    pub fn setattr(&self, ino: u64, a: SetAttr) -> FsResult<Entry> {
        self.check_writable()?;
        let node = self.node(ino)?;
        let mut n = lock(&node)?;
        let now = Ts::now();
        if n.purged {
            // Gone from the store: only the kernel's copy changes (writeback of cached times).
            a.apply_to(&mut n.rec, now);
            n.rec.size = a.size.unwrap_or(n.rec.size);
            return Ok(Entry::of(ino, &n, self.bs));
        }
        if a.size.is_none() && a.mode.is_none() && Self::pending_commit(&n) {
            // Times and owners (cp -a, tar and rsync set them after writing a file) join the
            // data's commit instead of committing it ahead of the close that would.
            a.apply_to(&mut n.rec, now);
            n.meta_dirty = true;
            return Ok(Entry::of(ino, &n, self.bs));
        }
        let mut new_size = None;
        if let Some(size) = a.size {
            match n.rec.kind {
                Kind::File => {}
                Kind::Dir => return Err(err(libc::EISDIR)),
                _ => return Err(err(libc::EINVAL)),
            }
            if size > i64::MAX as u64 {
                return Err(err(libc::EFBIG));
            }
            if size != n.rec.size {
                self.shrink_blocks(ino, &mut n, size)?;
                new_size = Some(size);
            }
        }
        let mut t = self.txn()?;
        let delta = match new_size {
            Some(size) => self.stage_tail(&mut t, ino, &mut n, size)?,
            None => 0,
        };
        let mut rec = n.rec.clone();
        rec.blocks = rec.blocks.saturating_add_signed(delta);
        if let Some(size) = new_size {
            rec.size = size;
            rec.mtime = now;
        }
        a.apply_to(&mut rec, now);
        if a.mode.is_some() && rec.kind != Kind::Symlink {
            // chmod rewrites the access ACL, as posix_acl_chmod does on a local filesystem.
            if let Some((at, Some(v))) = self.view.xattr(ino, acl::ACCESS)? {
                if let Some(mut acl) = Acl::parse(&v) {
                    acl.chmod(rec.perm);
                    t.set_xattr(ino, acl::ACCESS, Some(at), Some(&acl.encode()))?;
                }
            }
        }
        let rec = self.stage_node(&mut t, ino, &n, rec)?;
        t.commit(false)?;
        self.applied(ino, &mut n, rec.clone());
        Ok(Entry { ino, rec })
    }

    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        let node = self.node(ino)?;
        let n = lock(&node)?;
        if n.rec.kind != Kind::Symlink {
            return Err(err(libc::EINVAL));
        }
        Ok(n.rec.target.clone())
    }

    pub fn getxattr(&self, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        self.node(ino)?;
        match self.view.xattr(ino, name)? {
            Some((_, Some(v))) => Ok(v),
            _ => Err(err(libc::ENODATA)),
        }
    }

    pub fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        self.node(ino)?;
        let mut out = Vec::new();
        for name in self.view.xattr_names(ino)? {
            out.extend_from_slice(&name);
            out.push(0);
        }
        Ok(out)
    }

    /// Sets (`Some`) or removes (`None`) an xattr; `flags` are XATTR_CREATE / XATTR_REPLACE.
    pub fn setxattr(&self, ino: u64, name: &[u8], value: Option<&[u8]>, flags: i32) -> FsResult<()> {
        self.check_writable()?;
        if name.is_empty() || name.len() > XATTR_NAME_MAX || name.contains(&0) {
            return Err(err(libc::ERANGE));
        }
        if value.map(|v| v.len() > XATTR_SIZE_MAX).unwrap_or(false) {
            return Err(err(libc::E2BIG));
        }
        let node = self.node(ino)?;
        let mut n = lock(&node)?;
        let found = self.view.xattr(ino, name)?;
        let exists = matches!(&found, Some((_, Some(_))));
        let at = found.map(|f| f.0);
        let mut rec = n.rec.clone();
        let mut value = value;
        if let (Some(v), true) = (value, name == acl::ACCESS || name == acl::DEFAULT) {
            let a = Acl::parse(v).ok_or_else(|| err(libc::EINVAL))?;
            if name == acl::DEFAULT && rec.kind != Kind::Dir {
                return Err(err(libc::EACCES));
            }
            // An access ACL sets the mode's bits; one that says no more than them is kept as
            // the mode alone (posix_acl_update_mode).
            if name == acl::ACCESS {
                let (mode, extended) = a.mode();
                rec.perm = (rec.perm & !0o777) | mode;
                if !extended {
                    if !exists {
                        return self.commit_attr(ino, &mut n, rec);
                    }
                    value = None;
                }
            }
        }
        let mut t = self.txn()?;
        match value {
            Some(v) => {
                if flags & libc::XATTR_CREATE != 0 && exists {
                    return Err(err(libc::EEXIST));
                }
                if flags & libc::XATTR_REPLACE != 0 && !exists {
                    return Err(err(libc::ENODATA));
                }
                t.set_xattr(ino, name, at, Some(v))?;
            }
            None if exists => {
                t.set_xattr(ino, name, at, None)?;
            }
            None => return Err(err(libc::ENODATA)),
        }
        rec.ctime = Ts::now();
        let rec = self.stage_node(&mut t, ino, &n, rec)?;
        t.commit(false)?;
        self.applied(ino, &mut n, rec);
        Ok(())
    }

    /// The node's unsaved blocks will be committed with its record (by the close, an fsync,
    /// the flusher within 2 s, a snapshot's cut, a namespace operation on it): a change of
    /// the record alone may wait for that commit. Not while a flush is in flight, which
    /// commits the record as it was when it began.
    fn pending_commit(n: &super::table::Node) -> bool {
        !n.dirty.is_empty() && n.flushing.is_none()
    }

    /// Stores `rec` (with a new ctime) in a batch of its own, or with the node's unsaved
    /// blocks when they are committed (`pending_commit`).
    fn commit_attr(&self, ino: u64, n: &mut super::table::Node, mut rec: InodeRec) -> FsResult<()> {
        rec.ctime = Ts::now();
        if Self::pending_commit(n) {
            n.rec = rec;
            n.meta_dirty = true;
            return Ok(());
        }
        let mut t = self.txn()?;
        let rec = self.stage_node(&mut t, ino, n, rec)?;
        t.commit(false)?;
        self.applied(ino, n, rec);
        Ok(())
    }

    pub fn fsync(&self, ino: u64) -> FsResult<()> {
        self.flush_ino(ino, true)
    }

    /// What new data may still take: the store disk's free space beyond the reserve, and no
    /// more than the head's refquota and quota leave (`used`: what it references now).
    pub(super) fn writable_bytes(&self, used: u64) -> FsResult<u64> {
        let (_, free) = self.view.reserve()?;
        let free = match self.view.refquota() {
            Some(q) => free.min(q.saturating_sub(used)),
            None => free,
        };
        Ok(match self.view.quota() {
            Some(q) => free.min(q.saturating_sub(self.view.own_bytes()?)),
            None => free,
        })
    }

    /// Space as `df` shows it: used is what this volume references, free is what new data
    /// may still take (`writable_bytes`).
    pub fn statfs(&self) -> FsResult<FsStats> {
        if !self.read_only {
            self.purge_deferred()?;
        }
        let fs = crate::sys::statvfs(self.view.store_dir())?;
        let unit = fs.frsize.max(1);
        let used = self.view.space()?.referenced;
        let free = self.writable_bytes(used)?;
        Ok(FsStats {
            blocks: (used + free) / unit,
            bfree: free / unit,
            bavail: free / unit,
            files: fs.files.max(1 << 20),
            ffree: fs.ffree.max(1 << 20),
            bsize: unit as u32,
        })
    }
}

/// The namespaces Linux filesystems store, as ext4 takes them: a name outside `user.`,
/// `trusted.`, `security.` and the ACLs of `system.` is EOPNOTSUPP, a bare prefix EINVAL.
/// (Who may set `trusted.` and `security.` names the kernel checks before asking.) Names
/// stored before this check came back through restore and receive as they are.
pub fn xattr_namespace(name: &[u8]) -> FsResult<()> {
    if name == acl::ACCESS || name == acl::DEFAULT {
        return Ok(());
    }
    for prefix in [&b"user."[..], b"trusted.", b"security."] {
        if let Some(rest) = name.strip_prefix(prefix) {
            return if rest.is_empty() { Err(err(libc::EINVAL)) } else { Ok(()) };
        }
    }
    Err(err(libc::EOPNOTSUPP))
}
