//! The FUSE front end: converts kernel requests to `Volume` calls and results to replies.
//! No filesystem logic lives here.

use crate::volume::idmap::IdMap;
use super::attr::{SetAttr, TimeSet};
use super::namespace::NewNode;
use super::live::Live;
use super::snapdir::{self, join, split, SnapDir, SNAPDIR, VIEW_BASE};
use super::DirItem;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use super::{Ctx, Entry, FsError, FsResult, Volume};
use crate::volume::{Kind, Ts};
use fuser::{
    AccessFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    PollEvents, PollFlags, PollNotifier, ReplyIoctl, ReplyLseek, ReplyOpen, ReplyPoll,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Only this daemon changes a volume and every change goes through the kernel, so cached
/// entries and attributes stay true; what changes a mounted volume behind the kernel
/// (rollback, receive, restore) invalidates them through the notifier. So the kernel may
/// keep them long: a `stat` or path walk of a cached name costs no round trip (builds).
const TTL: Duration = Duration::from_secs(60);
/// A writeback mount: cached writes do not refresh `st_blocks`, which the daemon learns
/// only when the pages arrive, so attributes are asked for again after 1 s.
const WRITEBACK_TTL: Duration = Duration::from_secs(1);
/// The kernel's page size (x86_64, arm64's default): pushes are of whole pages.
const PAGE: u64 = 4096;
/// Snapshots under `.snapshots`: a destroyed one must vanish from the kernel's cache soon.
const SNAP_ROOT_TTL: Duration = Duration::from_secs(1);
/// Entries a READDIRPLUS looks up in one batch. A 4 KiB reply holds about 25, the kernel
/// may offer more; the entries of a batch that do not fit are forgotten again.
const PLUS_PAGE: usize = 32;

/// An inode's generation: derived from its creation time, so a number used again (after
/// a rollback and GC) gets another one and a stale file handle fails with ESTALE.
fn generation(e: &Entry) -> Generation {
    let t = e.rec.crtime;
    Generation(((t.sec as u64).wrapping_mul(1_000_000_007) ^ t.nsec as u64) & 0xffff_ffff)
}

pub struct FuseFs {
    pub live: Arc<Live>,
    /// Block size of the view (never changes, rollback included).
    pub bs: u64,
    /// The hidden `.snapshots` directory (heads only).
    pub snaps: Option<Arc<SnapDir>>,
    /// Listings of `.snapshots` by handle.
    lists: Mutex<HashMap<u64, Arc<Vec<DirItem>>>>,
    next_list: AtomicU64,
    /// The kernel caches writes and sends them back in pages (`mount --writeback`).
    writeback: bool,
    /// The kernel enforces POSIX ACLs (FUSE_POSIX_ACL); without it the ACL xattrs are
    /// refused rather than kept and ignored.
    acls: bool,
    /// How owners show (a remapped clone): attributes out through it, owners in through
    /// its inverse. The volume's, fixed for the mount.
    idmap: Arc<IdMap>,
}

impl FuseFs {
    /// ACL xattrs are EOPNOTSUPP where the kernel would not enforce them.
    /// An ACL xattr's named ids as a remapped clone shows them (`store`: as it stores
    /// them, EINVAL for an id it cannot store); other values as they are.
    fn acl_ids(&self, name: &OsStr, value: &[u8], store: bool) -> FsResult<Vec<u8>> {
        let n = name.as_bytes();
        if self.idmap.is_empty() || (n != crate::fs::acl::ACCESS && n != crate::fs::acl::DEFAULT) {
            return Ok(value.to_vec());
        }
        let Some(acl) = crate::fs::acl::Acl::parse(value) else { return Ok(value.to_vec()) };
        let mapped = match store {
            true => acl.map_ids(|u| self.idmap.store_uid(u), |g| self.idmap.store_gid(g)),
            false => acl.map_ids(|u| Some(self.idmap.show_uid(u)), |g| Some(self.idmap.show_gid(g))),
        };
        mapped.map(|a| a.encode()).ok_or(FsError::Posix(libc::EINVAL))
    }

    fn acl_name(&self, name: &OsStr) -> FsResult<()> {
        let n = name.as_bytes();
        if !self.acls && (n == crate::fs::acl::ACCESS || n == crate::fs::acl::DEFAULT) {
            return Err(FsError::Posix(libc::EOPNOTSUPP));
        }
        Ok(())
    }

    pub fn new(live: Arc<Live>, bs: u64, snaps: Option<Arc<SnapDir>>, writeback: bool, idmap: Arc<IdMap>) -> FuseFs {
        FuseFs { live, bs, snaps, lists: Mutex::new(HashMap::new()), next_list: AtomicU64::new(1), writeback, acls: false, idmap }
    }
}

/// Mutations never reach a snapshot view or `.snapshots` itself.
fn head_only(inos: &[u64]) -> FsResult<()> {
    if inos.iter().any(|i| *i >= VIEW_BASE) {
        return Err(FsError::Posix(libc::EROFS));
    }
    Ok(())
}

/// The name `.snapshots` in a head's root is taken.
fn free_name(snaps: bool, parent: u64, name: &OsStr) -> FsResult<()> {
    if snaps && parent == crate::fs::ROOT_INO && name.as_bytes() == snapdir::NAME {
        return Err(FsError::Posix(libc::EEXIST));
    }
    Ok(())
}

fn file_attr(e: &Entry, bs: u64, idmap: &IdMap) -> FileAttr {
    let r = &e.rec;
    FileAttr {
        ino: INodeNo(e.ino),
        size: r.size,
        blocks: r.blocks * (bs / 512),
        atime: to_time(r.atime),
        mtime: to_time(r.mtime),
        ctime: to_time(r.ctime),
        crtime: to_time(r.crtime),
        kind: file_type(r.kind),
        perm: r.perm as u16,
        nlink: r.nlink,
        uid: idmap.show_uid(r.uid),
        gid: idmap.show_gid(r.gid),
        rdev: r.rdev,
        blksize: bs as u32,
        flags: 0,
    }
}

fn errno(e: &FsError) -> Errno {
    if let FsError::Engine(e) = e {
        log::error!("{e}");
    }
    Errno::from_i32(e.errno())
}

fn to_time(t: Ts) -> SystemTime {
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.sec.unsigned_abs()) + Duration::from_nanos(t.nsec as u64)
    }
}

fn from_time(t: SystemTime) -> Ts {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Ts { sec: d.as_secs() as i64, nsec: d.subsec_nanos() },
        Err(e) => {
            let d = e.duration();
            let (mut sec, mut nsec) = (-(d.as_secs() as i64), d.subsec_nanos());
            if nsec > 0 {
                sec -= 1;
                nsec = 1_000_000_000 - nsec;
            }
            Ts { sec, nsec }
        }
    }
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDev => FileType::CharDevice,
        Kind::BlockDev => FileType::BlockDevice,
    }
}

impl FuseFs {
    fn v(&self) -> std::sync::RwLockReadGuard<'_, Arc<Volume>> {
        self.live.get()
    }

    /// Runs `f`, which changes the pages of `ino` through a `Writer` made just before, once
    /// no push of them is in flight: now, or (rarely) on a thread of its own, as waiting
    /// here could leave no FUSE thread for the READs a push may be waiting for.
    fn when_ready(&self, ino: u64, f: impl FnOnce() + Send + 'static) {
        if self.live.pushes_done(ino) {
            return f();
        }
        let live = self.live.clone();
        let spawned = std::thread::Builder::new().name("clonefs-wait".into()).spawn(move || {
            live.wait_pushes(ino);
            f()
        });
        if let Err(e) = spawned {
            log::error!("cannot start a thread to wait for pushes of inode {ino}: {e}");
        }
    }

    /// Runs `f` on the volume that owns `ino` (the head, or a snapshot view) with the inode
    /// number inside it; returns the view number for translating results back.
    fn with_vol<R>(&self, ino: u64, f: impl FnOnce(&Volume, u64) -> FsResult<R>) -> FsResult<(u64, R)> {
        let (k, inner) = split(ino);
        if k == 0 {
            let g = self.v();
            return f(&g, ino).map(|r| (0, r));
        }
        if ino == SNAPDIR {
            return Err(FsError::Posix(libc::EISDIR));
        }
        let snaps = self.snaps.as_ref().ok_or(FsError::Posix(libc::ENOENT))?;
        let view = snaps.view(k)?;
        f(&view, inner).map(|r| (k, r))
    }

    fn tr(k: u64, mut e: Entry) -> Entry {
        if k != 0 {
            e.ino = join(k, e.ino);
        }
        e
    }

    fn ttl(&self) -> Duration {
        if self.writeback {
            WRITEBACK_TTL
        } else {
            TTL
        }
    }

    /// The TTL of a name looked up in directory `parent`.
    fn ttl_in(&self, parent: u64) -> Duration {
        if parent == SNAPDIR {
            SNAP_ROOT_TTL
        } else {
            self.ttl()
        }
    }

    /// Drops `n` of the kernel's lookups of `ino`.
    fn forget_ino(&self, ino: u64, n: u64) {
        if ino != SNAPDIR {
            let _ = self.with_vol(ino, |v, i| {
                v.forget(i, n);
                Ok(())
            });
        }
    }

    /// The listing an opendir of `ino` took, and the view it belongs to.
    fn listing(&self, ino: u64, fh: FileHandle) -> FsResult<(u64, Arc<Vec<DirItem>>)> {
        if ino == SNAPDIR {
            return self.lists.lock().ok().and_then(|l| l.get(&fh.0).cloned()).map(|l| (0, l)).ok_or(FsError::Posix(libc::EBADF));
        }
        self.with_vol(ino, |v, _| v.readdir(fh.0))
    }

    /// The inode number the kernel sees for an item of directory `dir` in view `k`.
    fn item_ino(k: u64, dir: u64, it: &DirItem) -> u64 {
        let (_, inner) = split(dir);
        match k {
            0 => it.ino,
            _ if inner == crate::fs::ROOT_INO && it.name == b".." => SNAPDIR,
            _ => join(k, it.ino),
        }
    }

    fn snapdir_attr(&self) -> FileAttr {
        let now = SystemTime::now();
        FileAttr {
            ino: INodeNo(SNAPDIR),
            size: 0,
            blocks: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            kind: FileType::Directory,
            perm: 0o555,
            nlink: 2,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: self.bs as u32,
            flags: 0,
        }
    }

    fn lookup_in(&self, parent: u64, name: &OsStr) -> FsResult<Entry> {
        if parent == SNAPDIR {
            let snaps = self.snaps.as_ref().ok_or(FsError::Posix(libc::ENOENT))?;
            let (k, view) = snaps.open(&name.to_string_lossy())?;
            return Ok(Self::tr(k, view.entry(crate::fs::ROOT_INO)?));
        }
        let (k, e) = self.with_vol(parent, |v, p| v.lookup(p, name.as_bytes()))?;
        Ok(Self::tr(k, e))
    }

    /// `lookup_in` of many items of one directory's listing (handle `fh`), batched
    /// (READDIRPLUS).
    fn lookup_many_in(&self, parent: u64, fh: FileHandle, items: &[&DirItem]) -> FsResult<Vec<FsResult<Entry>>> {
        if parent == SNAPDIR {
            return Ok(items.iter().map(|it| self.lookup_in(parent, OsStr::from_bytes(&it.name))).collect());
        }
        let (k, found) = self.with_vol(parent, |v, p| v.lookup_listed(p, fh.0, items))?;
        Ok(found.into_iter().map(|r| r.map(|e| Self::tr(k, e))).collect())
    }

    /// Drops the lookups of entries the kernel was not sent.
    fn forget_all(&self, entries: impl Iterator<Item = FsResult<Entry>>) {
        for e in entries.flatten() {
            self.forget_ino(e.ino, 1);
        }
    }

    fn attr(&self, e: &Entry) -> FileAttr {
        file_attr(e, self.bs, &self.idmap)
    }

    fn entry(&self, r: FsResult<Entry>, reply: ReplyEntry) {
        match r {
            Ok(e) => reply.entry(&self.ttl(), &self.attr(&e), generation(&e)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn empty(&self, r: FsResult<()>, reply: ReplyEmpty) {
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn xattr_reply(data: FsResult<Vec<u8>>, size: u32, reply: ReplyXattr) {
        match data {
            Ok(d) if size == 0 => reply.size(d.len() as u32),
            Ok(d) if d.len() > size as usize => reply.error(Errno::ERANGE),
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(errno(&e)),
        }
    }
}

impl FuseFs {
    /// The caller's ids as stored (through the volume's id map); EOVERFLOW when the map
    /// cannot store them, as on an idmapped mount.
    fn ctx(&self, req: &Request) -> FsResult<Ctx> {
        match (self.idmap.store_uid(req.uid()), self.idmap.store_gid(req.gid())) {
            (Some(uid), Some(gid)) => Ok(Ctx { uid, gid }),
            _ => Err(FsError::Posix(libc::EOVERFLOW)),
        }
    }
}

fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(s) => TimeSet::At(from_time(s)),
    }
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(1 << 20);
        // The kernel offers at most its default here; the daemon raises it through the BDI.
        if let Err(max) = config.set_max_readahead(1 << 20) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        // The kernel asks for attributes with the listing when lookups of its names follow.
        let _ = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO);
        // File handles (name_to_handle_at, NFS re-export) survive the kernel dropping the
        // inode: it then looks the number up as "." (and a directory's parent as "..").
        let _ = config.add_capabilities(InitFlags::FUSE_EXPORT_SUPPORT);
        // We clear set-user/group-ID on write, truncate and chown ourselves, so the kernel
        // stops asking for `security.capability` before every write (one round trip of
        // three in a 4 KiB write + fsync). Kernels before 5.12 keep asking.
        let _ = config.add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV_V2);
        // The kernel checks ACLs; the daemon stores them, applies the umask or a default
        // ACL to new nodes (DONT_MASK: the kernel must not apply the umask first) and keeps
        // mode and access ACL in step (fs/acl.rs).
        self.acls = config.add_capabilities(InitFlags::FUSE_POSIX_ACL | InitFlags::FUSE_DONT_MASK).is_ok();
        if !self.acls {
            log::warn!("the kernel does not offer FUSE_POSIX_ACL; POSIX ACLs are refused on this mount");
        }
        if self.writeback {
            if let Err(missing) = config.add_capabilities(InitFlags::FUSE_WRITEBACK_CACHE) {
                log::warn!("the kernel does not offer {missing:?}; writes are not cached");
            }
        }
        Ok(())
    }

    fn destroy(&mut self) {
        let v = self.v();
        if let Err(e) = v.flush_all() {
            log::error!("volume {}: flush at unmount failed: {e}", v.name());
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let m = crate::metrics::op("lookup");
        let by_number = parent.0 == SNAPDIR && (name.as_bytes() == b"." || name.as_bytes() == b"..");
        if by_number && name.as_bytes() == b".." {
            let r = self.v().lookup(crate::fs::ROOT_INO, b".");
            m.stop();
            return self.entry(r, reply);
        }
        if self.snaps.is_some() && (by_number || (parent.0 == crate::fs::ROOT_INO && name.as_bytes() == snapdir::NAME)) {
            m.stop();
            return reply.entry(&Duration::ZERO, &self.snapdir_attr(), Generation(0));
        }
        if split(parent.0).0 == 0 {
            // In the head, "no such name" is cached like a name (an entry with inode 0): a
            // compiler or `make` asks for the same missing names again and again. Noted
            // under the same hold of the view as the lookup, so a rollback's invalidation
            // covers it.
            let v = self.v();
            let r = v.lookup(parent.0, name.as_bytes());
            m.stop();
            return match r {
                Ok(e) => reply.entry(&self.ttl(), &self.attr(&e), generation(&e)),
                Err(FsError::Posix(libc::ENOENT)) if v.note_absent(parent.0, name.as_bytes(), self.ttl()) => {
                    let mut none = self.snapdir_attr();
                    none.ino = INodeNo(0);
                    reply.entry(&self.ttl(), &none, Generation(0))
                }
                Err(e) => reply.error(errno(&e)),
            };
        }
        match self.lookup_in(parent.0, name) {
            Ok(e) => { m.stop(); reply.entry(&self.ttl_in(parent.0), &self.attr(&e), generation(&e)) },
            Err(e) => { m.stop(); reply.error(errno(&e)) },
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let _m = crate::metrics::op("forget");
        self.forget_ino(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let m = crate::metrics::op("getattr");
        if ino.0 == SNAPDIR {
            m.stop();
            return reply.attr(&Duration::ZERO, &self.snapdir_attr());
        }
        match self.with_vol(ino.0, |v, i| v.entry(i)) {
            Ok((k, e)) => { m.stop(); reply.attr(&self.ttl(), &self.attr(&Self::tr(k, e))) },
            Err(e) => { m.stop(); reply.error(errno(&e)) },
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let m = crate::metrics::op("setattr");
        let uid = match uid.map(|u| self.idmap.store_uid(u).ok_or(u)).transpose() {
            Ok(u) => u,
            Err(_) => { m.stop(); return reply.error(Errno::from_i32(libc::EOVERFLOW)) },
        };
        let gid = match gid.map(|g| self.idmap.store_gid(g).ok_or(g)).transpose() {
            Ok(g) => g,
            Err(_) => { m.stop(); return reply.error(Errno::from_i32(libc::EOVERFLOW)) },
        };
        let a = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
            ctime: ctime.map(from_time),
            // FUSE_HANDLE_KILLPRIV_V2 makes this ours: a chown always, a truncate by a caller
            // without CAP_FSETID (fuser does not pass FATTR_KILL_SUIDGID; uid 0 stands for it).
            kill_suidgid: uid.is_some() || gid.is_some() || (size.is_some() && req.uid() != 0),
        };
        if let Err(e) = head_only(&[ino.0]) {
            m.stop();
            return reply.error(errno(&e));
        }
        // A truncate changes pages: no push of them may be in flight (`Live`).
        let w = a.size.map(|_| self.live.writer(ino.0));
        let (live, ttl, bs, idmap) = (self.live.clone(), self.ttl(), self.bs, self.idmap.clone());
        let set = move || {
            let r = live.get().setattr(ino.0, a);
            drop(w);
            match r {
                Ok(e) => { m.stop(); reply.attr(&ttl, &file_attr(&e, bs, &idmap)) },
                Err(e) => { m.stop(); reply.error(errno(&e)) },
            }
        };
        match size {
            Some(_) => self.when_ready(ino.0, set),
            None => set(),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let m = crate::metrics::op("readlink");
        match self.with_vol(ino.0, |v, i| v.readlink(i)) {
            Ok((_, t)) => { m.stop(); reply.data(&t) },
            Err(e) => { m.stop(); reply.error(errno(&e)) },
        }
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        let m = crate::metrics::op("mknod");
        let Some(kind) = Kind::from_mode(mode) else {
            m.stop();
            return reply.error(Errno::EINVAL);
        };
        let new = NewNode { kind, perm: mode, umask, rdev, target: &[] };
        let r = head_only(&[parent.0])
            .and_then(|_| free_name(self.snaps.is_some(), parent.0, name))
            .and_then(|_| self.ctx(req).and_then(|c| self.v().make(c, parent.0, name.as_bytes(), new, false)));
        m.stop();
        self.entry(r, reply)
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let m = crate::metrics::op("mkdir");
        let new = NewNode { kind: Kind::Dir, perm: mode, umask, rdev: 0, target: &[] };
        let r = head_only(&[parent.0])
            .and_then(|_| free_name(self.snaps.is_some(), parent.0, name))
            .and_then(|_| self.ctx(req).and_then(|c| self.v().make(c, parent.0, name.as_bytes(), new, false)));
        m.stop();
        self.entry(r, reply)
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let m = crate::metrics::op("unlink");
        let r = head_only(&[parent.0]).and_then(|_| self.v().unlink(parent.0, name.as_bytes(), false));
        m.stop();
        self.empty(r, reply)
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let m = crate::metrics::op("rmdir");
        let r = head_only(&[parent.0]).and_then(|_| self.v().unlink(parent.0, name.as_bytes(), true));
        m.stop();
        self.empty(r, reply)
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let m = crate::metrics::op("symlink");
        let new = NewNode { kind: Kind::Symlink, perm: 0o777, umask: 0, rdev: 0, target: target.as_os_str().as_bytes() };
        let r = head_only(&[parent.0])
            .and_then(|_| free_name(self.snaps.is_some(), parent.0, link_name))
            .and_then(|_| self.ctx(req).and_then(|c| self.v().make(c, parent.0, link_name.as_bytes(), new, false)));
        m.stop();
        self.entry(r, reply)
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let m = crate::metrics::op("rename");
        let r = head_only(&[parent.0, newparent.0])
            .and_then(|_| free_name(self.snaps.is_some(), newparent.0, newname))
            .and_then(|_| self.v().rename(parent.0, name.as_bytes(), newparent.0, newname.as_bytes(), flags.bits()));
        m.stop();
        self.empty(r, reply)
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let m = crate::metrics::op("link");
        let r = head_only(&[ino.0, newparent.0])
            .and_then(|_| free_name(self.snaps.is_some(), newparent.0, newname))
            .and_then(|_| self.v().link(ino.0, newparent.0, newname.as_bytes()));
        m.stop();
        self.entry(r, reply)
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let m = crate::metrics::op("open");
        if self.live.get().kernel_opens {
            // `mount --fast-open`: the kernel takes ENOSYS as "opened", now and for every
            // later open of this connection, and sends no RELEASE for them (nor for CREATE's
            // handles from then on): the volume holds an unlinked file until the kernel
            // forgets its inode (`Volume::held`).
            m.stop();
            return reply.error(Errno::ENOSYS);
        }
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        // A read-only handle has nothing to flush at close: the kernel then skips the FLUSH
        // round trip (byte-range locks are the kernel's own: this daemon has no setlk).
        let fopen = if write { FopenFlags::FOPEN_KEEP_CACHE } else { FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH };
        if flags.acc_mode() != OpenAccMode::O_RDONLY && split(ino.0).0 == 0 {
            // Kept until the RELEASE, whose flags say the same.
            let w = self.live.writer(ino.0);
            let live = self.live.clone();
            let open = move || match live.get().open_file(ino.0, write) {
                Ok(fh) => { w.keep(); m.stop(); reply.opened(FileHandle(fh), fopen) },
                Err(e) => { m.stop(); reply.error(errno(&e)) },
            };
            return self.when_ready(ino.0, open);
        }
        match self.with_vol(ino.0, |v, i| v.open_file(i, write)) {
            Ok((_, fh)) => { m.stop(); reply.opened(FileHandle(fh), fopen) },
            Err(e) => { m.stop(); reply.error(errno(&e)) },
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let m = crate::metrics::op("read");
        // A read of part of a block (a random read) reads the whole block; the rest goes to
        // the kernel's page cache after the reply (`Live`: whole pages only).
        let (bs, page) = (self.bs, PAGE);
        let (first, end) = (offset / bs * bs, (offset + size as u64).div_ceil(bs) * bs);
        let partial = (first != offset || end != offset + size as u64) && (offset | size as u64) % page == 0;
        let ticket = if partial && end - first <= u32::MAX as u64 { self.live.push_ticket(ino.0) } else { None };
        let (off, len) = match ticket {
            Some(_) => (first, (end - first) as u32),
            None => (offset, size),
        };
        match self.with_vol(ino.0, |v, i| v.read(i, off, len)) {
            Ok((_, d)) => {
                let to = ((offset - off) as usize + size as usize).min(d.len());
                let from = ((offset - off) as usize).min(to);
                crate::metrics::get().read_bytes.inc_by((to - from) as u64);
                m.stop();
                reply.data(&d[from..to]);
                // Nothing beside the reply (a small file read whole): no push.
                if let Some(t) = ticket.filter(|_| from > 0 || to < d.len()) {
                    self.live.push(t, off, d.into_vec(), from..to);
                }
            }
            Err(e) => { m.stop(); reply.error(errno(&e)) },
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let m = crate::metrics::op("write");
        let kill = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        let v = self.v();
        match head_only(&[ino.0]).and_then(|_| v.write_then(ino.0, offset, data, kill)) {
            Ok((n, after)) => {
                crate::metrics::get().written_bytes.inc_by(n as u64);
                if kill {
                    // A write reply carries no attributes: the kernel still has the old mode.
                    self.live.invalidate_attrs(ino.0);
                }
                // The request's latency ends here; the flush is not part of it.
                m.stop();
                reply.written(n as u32);
                // After the reply: the writer's next request runs meanwhile. A failed flush
                // keeps the blocks dirty; the next flush, fsync or close reports it.
                if let Err(e) = v.after_write(after) {
                    log::warn!("after a write to inode {}: {e}", ino.0);
                }
            }
            Err(e) => {
                log::warn!("write of {} bytes at {offset} to inode {}: {e}", data.len(), ino.0);
                m.stop();
                reply.error(errno(&e))
            }
        }
    }

    /// No ioctls: ENOTTY, as a regular file answers a terminal query (every `open()` of
    /// Python and others asks), without fuser's warning per call.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        let m = crate::metrics::op("ioctl");
        m.stop();
        reply.error(Errno::ENOTTY);
    }

    /// No poll: ENOSYS once, and the kernel takes the files as always ready (as it does a
    /// disk file's), without fuser's warning (MariaDB polls its files).
    fn poll(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _ph: PollNotifier, _events: PollEvents, _flags: PollFlags, reply: ReplyPoll) {
        reply.error(Errno::ENOSYS);
    }

    fn flush(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        let m = crate::metrics::op("flush");
        if self.live.get().kernel_opens {
            // No FLUSH from now on either: a close commits nothing; the flusher does within
            // `max_age`, an fsync at once.
            m.stop();
            return reply.error(Errno::ENOSYS);
        }
        let r = self.with_vol(ino.0, |v, i| v.flush_on_close(i)).map(|_| ());
        m.stop();
        self.empty(r, reply)
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let m = crate::metrics::op("release");
        if flags.acc_mode() != OpenAccMode::O_RDONLY && split(ino.0).0 == 0 {
            self.live.end_write(ino.0);
        }
        let r = self.with_vol(ino.0, |v, i| v.release(i)).map(|_| ());
        m.stop();
        self.empty(r, reply)
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let m = crate::metrics::op("fsync");
        let r = self.with_vol(ino.0, |v, i| v.fsync(i)).map(|_| ());
        m.stop();
        self.empty(r, reply)
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let m = crate::metrics::op("opendir");
        if ino.0 == SNAPDIR {
            let Some(snaps) = &self.snaps else { m.stop(); return reply.error(Errno::ENOENT) };
            let mut items = vec![
                DirItem { name: b".".to_vec(), ino: SNAPDIR, kind: Kind::Dir },
                DirItem { name: b"..".to_vec(), ino: crate::fs::ROOT_INO, kind: Kind::Dir },
            ];
            match snaps.list() {
                Ok(l) => items.extend(l.into_iter().map(|(n, k)| DirItem {
                    name: n.into_bytes(),
                    ino: join(k, crate::fs::ROOT_INO),
                    kind: Kind::Dir,
                })),
                Err(e) => { m.stop(); return reply.error(errno(&e)) },
            }
            let fh = self.next_list.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut l) = self.lists.lock() {
                l.insert(fh, Arc::new(items));
            }
            m.stop();
            return reply.opened(FileHandle(fh), FopenFlags::empty());
        }
        match self.with_vol(ino.0, |v, i| v.opendir(i)) {
            Ok((_, fh)) => { m.stop(); reply.opened(FileHandle(fh), FopenFlags::empty()) },
            Err(e) => { m.stop(); reply.error(errno(&e)) },
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let m = crate::metrics::op("readdir");
        match self.listing(ino.0, fh) {
            Ok((k, items)) => {
                for (i, it) in items.iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(Self::item_ino(k, ino.0, it)), (i + 1) as u64, file_type(it.kind), OsStr::from_bytes(&it.name)) {
                        break;
                    }
                }
                m.stop();
                reply.ok()
            }
            Err(e) => { m.stop(); reply.error(errno(&e)) },
        }
    }

    /// Entries with their attributes, so `ls -l`, `make` and `find -newer` need no lookup per
    /// name. Every entry but "." and ".." is a lookup reply: the kernel holds it and forgets
    /// it like one, so it is counted like one (and uncounted if it did not fit).
    fn readdirplus(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let m = crate::metrics::op("readdirplus");
        let (k, items) = match self.listing(ino.0, fh) {
            Ok(l) => l,
            Err(e) => { m.stop(); return reply.error(errno(&e)) },
        };
        let mut added = 0;
        let mut at = offset as usize;
        'pages: while at < items.len() {
            let page = &items[at..(at + PLUS_PAGE).min(items.len())];
            let dot = |it: &DirItem| it.name == b"." || it.name == b"..";
            let listed: Vec<&DirItem> = page.iter().filter(|it| !dot(it)).collect();
            let mut found = match self.lookup_many_in(ino.0, fh, &listed) {
                Ok(f) => f.into_iter(),
                Err(e) if added == 0 => { m.stop(); return reply.error(errno(&e)) },
                Err(_) => break,
            };
            for (j, it) in page.iter().enumerate() {
                let (next, name) = ((at + j + 1) as u64, OsStr::from_bytes(&it.name));
                let full = if dot(it) {
                    // The kernel takes only the number and type of these.
                    let attr = FileAttr { ino: INodeNo(Self::item_ino(k, ino.0, it)), ..self.snapdir_attr() };
                    reply.add(attr.ino, next, name, &Duration::ZERO, &attr, Generation(0))
                } else {
                    match found.next() {
                        Some(Ok(e)) => {
                            let full = reply.add(INodeNo(e.ino), next, name, &self.ttl_in(ino.0), &self.attr(&e), generation(&e));
                            if full {
                                self.forget_ino(e.ino, 1);
                            }
                            full
                        }
                        // Removed since the opendir.
                        Some(Err(FsError::Posix(libc::ENOENT))) => continue,
                        Some(Err(e)) if added == 0 => {
                            self.forget_all(found);
                            m.stop();
                            return reply.error(errno(&e));
                        }
                        _ => true,
                    }
                };
                if full {
                    // Looked up but not sent: the kernel holds no entry for these.
                    self.forget_all(found);
                    break 'pages;
                }
                added += 1;
            }
            at += page.len();
        }
        m.stop();
        reply.ok()
    }

    fn releasedir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        let m = crate::metrics::op("releasedir");
        if ino.0 == SNAPDIR {
            if let Ok(mut l) = self.lists.lock() {
                l.remove(&fh.0);
            }
        } else {
            let _ = self.with_vol(ino.0, |v, _| {
                v.releasedir(fh.0);
                Ok(())
            });
        }
        m.stop();
        reply.ok()
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let m = crate::metrics::op("fsyncdir");
        let r = self.v().view.sync().map_err(FsError::from);
        m.stop();
        self.empty(r, reply)
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let m = crate::metrics::op("statfs");
        match self.v().statfs() {
            Ok(s) => { m.stop(); reply.statfs(s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, 255, s.bsize) },
            Err(e) => { m.stop(); reply.error(errno(&e)) },
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let m = crate::metrics::op("setxattr");
        let r = head_only(&[ino.0])
            .and_then(|_| crate::fs::attr::xattr_namespace(name.as_bytes()))
            .and_then(|_| self.acl_name(name))
            .and_then(|_| self.acl_ids(name, value, true))
            .and_then(|value| self.v().setxattr(ino.0, name.as_bytes(), Some(&value), flags));
        m.stop();
        self.empty(r, reply)
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let m = crate::metrics::op("getxattr");
        if ino.0 == SNAPDIR {
            m.stop();
            return reply.error(Errno::from_i32(libc::ENODATA));
        }
        let r = self.acl_name(name).and_then(|_| self.with_vol(ino.0, |v, i| v.getxattr(i, name.as_bytes())));
        let r = r.and_then(|x| self.acl_ids(name, &x.1, false));
        m.stop();
        Self::xattr_reply(r, size, reply)
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let m = crate::metrics::op("listxattr");
        if ino.0 == SNAPDIR {
            m.stop();
            return Self::xattr_reply(Ok(Vec::new()), size, reply);
        }
        let r = self.with_vol(ino.0, |v, i| v.listxattr(i)).map(|x| x.1);
        // `trusted.` names are listed to root only, as ext4 does (the kernel refuses others
        // their values anyway).
        let r = r.map(|list| match req.uid() {
            0 => list,
            _ => list.split_inclusive(|b| *b == 0).filter(|n| !n.starts_with(b"trusted.")).flatten().copied().collect(),
        });
        m.stop();
        Self::xattr_reply(r, size, reply)
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let m = crate::metrics::op("removexattr");
        let r = head_only(&[ino.0])
            .and_then(|_| self.acl_name(name))
            .and_then(|_| self.v().setxattr(ino.0, name.as_bytes(), None, 0));
        m.stop();
        self.empty(r, reply)
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        let m = crate::metrics::op("access");
        // default_permissions: the kernel has checked already.
        m.stop();
        reply.ok()
    }

    fn create(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, flags: i32, reply: ReplyCreate) {
        let m = crate::metrics::op("create");
        let new = NewNode { kind: Kind::File, perm: mode, umask, rdev: 0, target: &[] };
        if let Err(e) = head_only(&[parent.0]).and_then(|_| free_name(self.snaps.is_some(), parent.0, name)) {
            m.stop();
            return reply.error(errno(&e));
        }
        let v = self.v();
        match self.ctx(req).and_then(|c| v.make(c, parent.0, name.as_bytes(), new, true)) {
            Ok(e) => {
                let fh = v.next_handle();
                if flags & libc::O_ACCMODE != libc::O_RDONLY {
                    // A new inode number: the kernel has no pages of it, no push is in flight.
                    self.live.writer(e.ino).keep();
                }
                m.stop();
                reply.created(&self.ttl(), &self.attr(&e), generation(&e), FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE)
            }
            Err(e) => { m.stop(); reply.error(errno(&e)) },
        }
    }

    fn fallocate(&self, req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, length: u64, mode: i32, reply: ReplyEmpty) {
        let m = crate::metrics::op("fallocate");
        // Root stands for CAP_FSETID, as for truncate (the request carries no capabilities).
        let kill = req.uid() != 0;
        let r = head_only(&[ino.0]).and_then(|_| self.v().fallocate(ino.0, offset, length, mode, kill));
        if kill && r.is_ok() {
            self.live.invalidate_attrs(ino.0);
        }
        m.stop();
        self.empty(r, reply)
    }

    fn lseek(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: i64, whence: i32, reply: ReplyLseek) {
        let m = crate::metrics::op("lseek");
        // With the writeback cache the kernel holds written pages (and the size) the daemon
        // has not seen, and does not write them back before asking: ENOSYS makes it answer
        // from its own size (the whole file is data), which is right if less exact.
        if self.writeback {
            m.stop();
            return reply.error(Errno::ENOSYS);
        }
        if offset < 0 {
            m.stop();
            return reply.error(Errno::EINVAL);
        }
        match self.with_vol(ino.0, |v, i| v.lseek(i, offset as u64, whence)) {
            Ok((_, o)) => { m.stop(); reply.offset(o as i64) },
            Err(e) => { m.stop(); reply.error(errno(&e)) },
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        ino_in: INodeNo,
        _fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        _fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let m = crate::metrics::op("copy_file_range");
        let len = len.min(u32::MAX as u64 & !0xfff);
        match head_only(&[ino_in.0, ino_out.0]).and_then(|_| self.v().copy_range(ino_in.0, offset_in, ino_out.0, offset_out, len)) {
            Ok(n) => { m.stop(); reply.written(n as u32) },
            Err(e) => { m.stop(); reply.error(errno(&e)) },
        }
    }
}
