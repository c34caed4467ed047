//! Attributes, symlink targets, xattrs, statfs and fsync.

use super::table::lock;
use super::{err, Entry, Volume};
use crate::error::Result;
use crate::store::records::{self, InodeRec, Kind, Ts};
use crate::store::{cf, keys};

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
}

impl SetAttr {
    /// Sets mode, owner and times on `rec` (size is the caller's: it changes stored data).
    fn apply_to(&self, rec: &mut InodeRec, now: Ts) {
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
    pub fn setattr(&self, ino: u64, a: SetAttr) -> Result<Entry> {
        self.check_writable()?;
        let node = self.node(ino)?;
        let mut n = lock(&node)?;
        let now = Ts::now();
        if n.purged {
            // Gone from the store: only the kernel's copy changes (writeback of cached times).
            a.apply_to(&mut n.rec, now);
            n.rec.size = a.size.unwrap_or(n.rec.size);
            return Ok(Entry { ino, rec: n.rec.clone() });
        }
        let mut t = self.store.txn();
        let mut delta = 0;
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
                delta = self.stage_truncate(&mut t, ino, &mut n, size)?;
                n.rec.mtime = now;
            }
        }
        let mut rec = n.rec.clone();
        rec.blocks = (rec.blocks as i64 + delta).max(0) as u64;
        a.apply_to(&mut rec, now);
        let rec = self.stage_node(&mut t, ino, &n, rec)?;
        self.store.commit(t, false)?;
        self.applied(ino, &mut n, rec.clone());
        Ok(Entry { ino, rec })
    }

    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let node = self.node(ino)?;
        let n = lock(&node)?;
        if n.rec.kind != Kind::Symlink {
            return Err(err(libc::EINVAL));
        }
        Ok(n.rec.target.clone())
    }

    pub fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
        self.node(ino)?;
        let ident = keys::xattr_key(self.lineage(), ino, name);
        match self.find(cf::XATTRS, &ident)? {
            Some(f) => records::decode_xattr(&f.value)?.ok_or_else(|| err(libc::ENODATA)),
            None => Err(err(libc::ENODATA)),
        }
    }

    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>> {
        self.node(ino)?;
        let mut out = Vec::new();
        let prefix = keys::dir_prefix(self.lineage(), ino);
        for (rest, f) in self.scan_visible(cf::XATTRS, &prefix, &prefix, None)? {
            if !records::is_tombstone(&f.value) {
                out.extend_from_slice(&rest[8..rest.len() - 1]);
                out.push(0);
            }
        }
        Ok(out)
    }

    /// Sets (`Some`) or removes (`None`) an xattr; `flags` are XATTR_CREATE / XATTR_REPLACE.
    pub fn setxattr(&self, ino: u64, name: &[u8], value: Option<&[u8]>, flags: i32) -> Result<()> {
        self.check_writable()?;
        if name.is_empty() || name.len() > XATTR_NAME_MAX || name.contains(&0) {
            return Err(err(libc::ERANGE));
        }
        if value.map(|v| v.len() > XATTR_SIZE_MAX).unwrap_or(false) {
            return Err(err(libc::E2BIG));
        }
        let node = self.node(ino)?;
        let mut n = lock(&node)?;
        let ident = keys::xattr_key(self.lineage(), ino, name);
        let found = self.find(cf::XATTRS, &ident)?;
        let exists = matches!(&found, Some(f) if !records::is_tombstone(&f.value));
        let at = found.map(|f| (f.level, f.epoch));
        let mut t = self.store.txn();
        match value {
            Some(v) => {
                if flags & libc::XATTR_CREATE != 0 && exists {
                    return Err(err(libc::EEXIST));
                }
                if flags & libc::XATTR_REPLACE != 0 && !exists {
                    return Err(err(libc::ENODATA));
                }
                self.stage_version(&mut t, cf::XATTRS, ident, at, Some(&records::encode_xattr(v)), true)?;
            }
            None if exists => {
                self.stage_version(&mut t, cf::XATTRS, ident, at, None, true)?;
            }
            None => return Err(err(libc::ENODATA)),
        }
        let mut rec = n.rec.clone();
        rec.ctime = Ts::now();
        let rec = self.stage_node(&mut t, ino, &n, rec)?;
        self.store.commit(t, false)?;
        self.applied(ino, &mut n, rec);
        Ok(())
    }

    pub fn fsync(&self, ino: u64) -> Result<()> {
        self.flush_ino(ino, true)
    }

    /// Space as `df` shows it: used is what this volume references, free is the free space
    /// of the filesystem that holds the store.
    pub fn statfs(&self) -> Result<FsStats> {
        let fs = crate::sys::statvfs(self.store.dir())?;
        let unit = fs.frsize.max(1);
        let used = match self.spec.frozen {
            Some(vs) => vs.referenced,
            None => self.store.view_space(self.lineage()).referenced,
        };
        let avail = fs.bavail * unit;
        let free = fs.bfree * unit;
        Ok(FsStats {
            blocks: (used + free) / unit,
            bfree: free / unit,
            bavail: avail / unit,
            files: fs.files.max(1 << 20),
            ffree: fs.ffree.max(1 << 20),
            bsize: unit as u32,
        })
    }
}
