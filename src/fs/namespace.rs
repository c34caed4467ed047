//! Names: lookup, create, mkdir, mknod, symlink, link, unlink, rmdir, rename, readdir.
//! Each operation is one write batch (invariant 1 in docs/ARCHITECTURE.md).

use super::acl::{self, Acl};
use super::table::{lock, Node, NodeRef};
use super::{err, FsError, FsResult, Ctx, DirItem, Entry, Volume};
use crate::volume::view::{At, ViewTxn};
use crate::volume::{DirentRec, InodeRec, Kind, Ts};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};

pub const NAME_MAX: usize = 255;
const LINK_MAX: u32 = 65000;

/// Arguments of a new inode.
pub struct NewNode<'a> {
    pub kind: Kind,
    /// The mode asked for, before the umask.
    pub perm: u32,
    /// Applied unless the directory has a default ACL (which replaces it).
    pub umask: u32,
    pub rdev: u32,
    pub target: &'a [u8],
}

fn check_name(name: &[u8]) -> FsResult<()> {
    if name.len() > NAME_MAX {
        return Err(err(libc::ENAMETOOLONG));
    }
    if name.is_empty() || name.contains(&b'/') || name.contains(&0) || name == b"." || name == b".." {
        return Err(err(libc::EINVAL));
    }
    Ok(())
}

/// Several nodes locked in ascending inode order.
struct Locked<'a> {
    guards: BTreeMap<u64, MutexGuard<'a, Node>>,
}

impl<'a> Locked<'a> {
    fn new(nodes: &'a BTreeMap<u64, NodeRef>) -> FsResult<Locked<'a>> {
        let mut guards = BTreeMap::new();
        for (ino, n) in nodes {
            guards.insert(*ino, lock(n)?);
        }
        Ok(Locked { guards })
    }
    fn get(&mut self, ino: u64) -> FsResult<&mut Node> {
        self.guards.get_mut(&ino).map(|g| &mut **g).ok_or_else(|| err(libc::EIO))
    }
}

impl Volume {
    /// The live entry `name` of directory `dir`: (where its version is, entry).
    fn dirent(&self, dir: u64, name: &[u8]) -> FsResult<Option<(At, DirentRec)>> {
        Ok(self.view.dirent(dir, name)?.and_then(|(at, d)| d.map(|d| (at, d))))
    }

    /// Live entries of a directory: (name, entry).
    pub(crate) fn entries(&self, dir: u64) -> FsResult<Vec<(Vec<u8>, DirentRec)>> {
        Ok(self.view.dirents(dir)?)
    }

    fn dir_is_empty(&self, dir: u64) -> FsResult<bool> {
        Ok(self.entries(dir)?.is_empty())
    }

    /// ENOTDIR unless `ino` is a directory (the parent of a lookup).
    fn need_dir(&self, ino: u64) -> FsResult<()> {
        if lock(&self.node(ino)?)?.rec.kind != Kind::Dir {
            return Err(err(libc::ENOTDIR));
        }
        Ok(())
    }

    fn live_dir<'a>(&self, n: &MutexGuard<'a, Node>) -> FsResult<()> {
        if n.rec.kind != Kind::Dir {
            return Err(err(libc::ENOTDIR));
        }
        if n.rec.nlink == 0 {
            return Err(err(libc::ENOENT));
        }
        Ok(())
    }

    pub fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<Entry> {
        if name.len() > NAME_MAX {
            return Err(err(libc::ENAMETOOLONG));
        }
        // The kernel asks for "." and ".." by number when it opens a file handle whose inode
        // it no longer caches (FUSE_EXPORT_SUPPORT); path walks never send them.
        if name == b"." || name == b".." {
            let node = self.node(parent)?;
            let mut n = lock(&node)?;
            if n.rec.nlink == 0 {
                return Err(err(libc::ENOENT));
            }
            if name == b"." {
                n.lookups += 1;
                return Ok(Entry::of(parent, &n, self.bs));
            }
            if n.rec.kind != Kind::Dir {
                return Err(err(libc::ENOTDIR));
            }
            let up = if parent == super::ROOT_INO { parent } else { n.rec.parent };
            drop(n);
            let node = self.node(up)?;
            let mut n = lock(&node)?;
            n.lookups += 1;
            return Ok(Entry::of(up, &n, self.bs));
        }
        self.need_dir(parent)?;
        let (_, d) = self.dirent(parent, name)?.ok_or_else(|| err(libc::ENOENT))?;
        let node = self.node(d.ino)?;
        let mut n = lock(&node)?;
        // The entry was read before an unlink of its inode's last name committed.
        if n.rec.nlink == 0 {
            drop(n);
            drop(node);
            let _ = self.table.evict_if_idle(d.ino);
            return Err(err(libc::ENOENT));
        }
        n.lookups += 1;
        Ok(Entry::of(d.ino, &n, self.bs))
    }

    /// `lookup` of many names of directory `parent` (a READDIRPLUS page): the entries and
    /// the inodes not in memory are read with one batched read each per level of the chain.
    /// "." and ".." are not looked up here.
    pub fn lookup_many(&self, parent: u64, names: &[&[u8]]) -> FsResult<Vec<FsResult<Entry>>> {
        self.need_dir(parent)?;
        let inos: Vec<Option<u64>> = self.view.dirents_named(parent, names)?.into_iter().map(|d| d.and_then(|(_, d)| d).map(|d| d.ino)).collect();
        self.lookup_inos(inos)
    }

    /// The entries of inodes found by name (None: no such name), one lookup counted each.
    fn lookup_inos(&self, inos: Vec<Option<u64>>) -> FsResult<Vec<FsResult<Entry>>> {
        let wanted: Vec<u64> = inos.iter().flatten().copied().collect();
        let mut nodes = self.table.get_many(&wanted, |missing| self.view.inodes(missing))?.into_iter();
        let mut out = Vec::with_capacity(inos.len());
        let mut gone = Vec::new();
        for ino in inos {
            let Some(ino) = ino else {
                out.push(Err(err(libc::ENOENT)));
                continue;
            };
            let r = match nodes.next().flatten() {
                None => Err(err(libc::ENOENT)),
                Some(node) => lock(&node).map_err(FsError::from).and_then(|mut n| {
                    // As in `lookup`: an entry read before an unlink committed.
                    if n.rec.nlink == 0 {
                        gone.push(ino);
                        return Err(err(libc::ENOENT));
                    }
                    n.lookups += 1;
                    Ok(Entry::of(ino, &n, self.bs))
                }),
            };
            out.push(r);
        }
        drop(nodes);
        for ino in gone {
            let _ = self.table.evict_if_idle(ino);
        }
        Ok(out)
    }

    /// Creates a file, directory, symlink or special file. With `open`, also opens it.
    pub fn make(&self, ctx: Ctx, parent: u64, name: &[u8], new: NewNode<'_>, open: bool) -> FsResult<Entry> {
        check_name(name)?;
        if new.kind == Kind::Symlink && (new.target.is_empty() || new.target.len() > 4095) {
            return Err(err(if new.target.is_empty() { libc::ENOENT } else { libc::ENAMETOOLONG }));
        }
        let _g = self.ns()?;
        let pnode = self.node(parent)?;
        let mut p = lock(&pnode)?;
        self.live_dir(&p)?;
        // Where the name's visible version is (a whiteout), for the batch below: the
        // namespace lock keeps it there.
        let old_name = match self.view.dirent(parent, name)? {
            Some((_, Some(_))) => return Err(err(libc::EEXIST)),
            found => found.map(|x| x.0),
        };
        let now = Ts::now();
        let sgid_dir = p.rec.perm & libc::S_ISGID != 0;
        // A directory's default ACL replaces the umask: the new node's access ACL is that
        // ACL masked by the mode asked for; a new directory inherits it as its own default.
        let default = match new.kind {
            Kind::Symlink => None,
            _ => self.view.xattr(parent, acl::DEFAULT)?.and_then(|x| x.1),
        };
        let mut access = None;
        let mut perm = match default.as_deref().and_then(Acl::parse) {
            Some(mut a) => {
                let perm = a.create_masq(new.perm & 0o7777);
                access = a.mode().1.then(|| a.encode());
                perm
            }
            None => new.perm & 0o7777 & !new.umask,
        };
        if new.kind == Kind::Dir && sgid_dir {
            perm |= libc::S_ISGID;
        }
        let ino = self.alloc_ino();
        let is_dir = new.kind == Kind::Dir;
        let rec = InodeRec {
            kind: new.kind,
            perm,
            uid: ctx.uid,
            gid: if sgid_dir { p.rec.gid } else { ctx.gid },
            nlink: if is_dir { 2 } else { 1 },
            rdev: new.rdev,
            size: new.target.len() as u64,
            blocks: 0,
            parent: if is_dir { parent } else { 0 },
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            target: new.target.to_vec(),
        };
        let mut t = self.txn()?;
        t.put_new_inode(ino, &rec)?;
        if let Some(a) = &access {
            t.set_xattr(ino, acl::ACCESS, None, Some(a))?;
        }
        if let (true, Some(d)) = (is_dir, &default) {
            t.set_xattr(ino, acl::DEFAULT, None, Some(d))?;
        }
        t.put_dirent_at(parent, name, old_name, DirentRec { kind: new.kind, ino })?;
        let mut prec = p.rec.clone();
        prec.mtime = now;
        prec.ctime = now;
        if is_dir {
            prec.nlink += 1;
        }
        let prec = self.stage_node(&mut t, parent, &p, prec)?;
        t.commit(false)?;
        self.applied(parent, &mut p, prec);
        self.made(parent, name);
        let mut node = Node::new(rec.clone());
        node.lookups = 1;
        // With kernel opens, the kernel sends no RELEASE for this handle either (once it
        // has taken an OPEN's ENOSYS): the inode's lookup holds the file instead (`held`).
        node.opens = (open && !self.kernel_opens) as u32;
        self.table.insert(ino, node)?;
        Ok(Entry { ino, rec })
    }

    pub fn link(&self, ino: u64, newparent: u64, newname: &[u8]) -> FsResult<Entry> {
        check_name(newname)?;
        let _g = self.ns()?;
        if ino == newparent {
            return Err(err(libc::EPERM));
        }
        let mut nodes = BTreeMap::new();
        nodes.insert(ino, self.node(ino)?);
        nodes.insert(newparent, self.node(newparent)?);
        let mut l = Locked::new(&nodes)?;
        {
            let p = l.get(newparent)?;
            if p.rec.kind != Kind::Dir {
                return Err(err(libc::ENOTDIR));
            }
            if p.rec.nlink == 0 {
                return Err(err(libc::ENOENT));
            }
        }
        let c = l.get(ino)?;
        if c.rec.kind == Kind::Dir {
            return Err(err(libc::EPERM));
        }
        if c.rec.nlink == 0 {
            return Err(err(libc::ENOENT));
        }
        if c.rec.nlink >= LINK_MAX {
            return Err(err(libc::EMLINK));
        }
        // The EEXIST check's answer is also the version the new name's record replaces.
        let old_name = match self.view.dirent(newparent, newname)? {
            Some((_, Some(_))) => return Err(err(libc::EEXIST)),
            found => found.map(|f| f.0),
        };
        let now = Ts::now();
        let mut t = self.txn()?;
        let mut crec = c.rec.clone();
        crec.nlink += 1;
        crec.ctime = now;
        let kind = crec.kind;
        let crec = self.stage_node(&mut t, ino, c, crec)?;
        t.put_dirent_at(newparent, newname, old_name, DirentRec { kind, ino })?;
        let p = l.get(newparent)?;
        let mut prec = p.rec.clone();
        prec.mtime = now;
        prec.ctime = now;
        let prec = self.stage_node(&mut t, newparent, p, prec)?;
        t.commit(false)?;
        self.applied(newparent, l.get(newparent)?, prec);
        self.made(newparent, newname);
        let c = l.get(ino)?;
        self.applied(ino, c, crec.clone());
        c.lookups += 1;
        Ok(Entry { ino, rec: crec })
    }

    /// Drops one name of `ino` inside a batch. When that was its last name the inode becomes
    /// an orphan: purged by `finish_drop` if nothing has it open, else at the last release.
    /// Returns the record to apply.
    fn stage_drop_name(&self, t: &mut ViewTxn<'_>, ino: u64, c: &Node, now: Ts) -> FsResult<InodeRec> {
        let mut crec = c.rec.clone();
        crec.nlink = if crec.kind == Kind::Dir { 0 } else { crec.nlink.saturating_sub(1) };
        crec.ctime = now;
        if crec.nlink == 0 && !self.held(c) {
            // Gone: an orphan until `finish_drop`'s purge (a small one later, in a batch with
            // others), and its unsaved data is never written.
            t.mark_orphan(ino)?;
            t.put_inode(ino, &crec)?;
            return Ok(crec);
        }
        if crec.nlink == 0 {
            t.mark_orphan(ino)?;
        }
        self.stage_node(t, ino, c, crec)
    }

    /// After `stage_drop_name`'s batch committed: records `r` in the node, or forgets a gone
    /// inode and purges it (a small one later, `defer_purge`).
    fn finish_drop(&self, ino: u64, c: &mut Node, r: InodeRec) -> FsResult<()> {
        if r.nlink == 0 && !self.held(c) {
            // Its dirty blocks were not staged: forgotten, not applied as stored.
            c.rec = r;
            return self.purge_gone(ino, c);
        }
        self.applied(ino, c, r);
        Ok(())
    }

    pub fn unlink(&self, parent: u64, name: &[u8], dir: bool) -> FsResult<()> {
        if name.len() > NAME_MAX {
            return Err(err(libc::ENAMETOOLONG));
        }
        let _g = self.ns()?;
        let (de, d) = self.dirent(parent, name)?.ok_or_else(|| err(libc::ENOENT))?;
        if dir && d.kind != Kind::Dir {
            return Err(err(libc::ENOTDIR));
        }
        if !dir && d.kind == Kind::Dir {
            return Err(err(libc::EISDIR));
        }
        if dir && !self.dir_is_empty(d.ino)? {
            return Err(err(libc::ENOTEMPTY));
        }
        let mut nodes = BTreeMap::new();
        nodes.insert(parent, self.node(parent)?);
        nodes.insert(d.ino, self.node(d.ino)?);
        let mut l = Locked::new(&nodes)?;
        let now = Ts::now();
        let mut t = self.txn()?;
        t.frees();
        t.remove_dirent(parent, name, de)?;
        let crec = self.stage_drop_name(&mut t, d.ino, l.get(d.ino)?, now)?;
        let p = l.get(parent)?;
        let mut prec = p.rec.clone();
        prec.mtime = now;
        prec.ctime = now;
        if dir {
            prec.nlink = prec.nlink.saturating_sub(1);
        }
        let prec = self.stage_node(&mut t, parent, p, prec)?;
        t.commit(false)?;
        self.applied(parent, l.get(parent)?, prec);
        self.finish_drop(d.ino, l.get(d.ino)?, crec)
    }

    pub fn rename(&self, parent: u64, name: &[u8], newparent: u64, newname: &[u8], flags: u32) -> FsResult<()> {
        check_name(newname)?;
        if name.len() > NAME_MAX {
            return Err(err(libc::ENAMETOOLONG));
        }
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        if flags & !(libc::RENAME_EXCHANGE | libc::RENAME_NOREPLACE) != 0 || (exchange && noreplace) {
            return Err(err(libc::EINVAL));
        }
        let _g = self.ns()?;
        let (se, src) = self.dirent(parent, name)?.ok_or_else(|| err(libc::ENOENT))?;
        // What the new name holds now, a whiteout included: the version its record replaces.
        let dst_found = self.view.dirent(newparent, newname)?;
        let dst_at = dst_found.as_ref().map(|f| f.0);
        let dst = dst_found.and_then(|(at, d)| d.map(|d| (at, d)));
        if exchange && dst.is_none() {
            return Err(err(libc::ENOENT));
        }
        if noreplace && dst.is_some() {
            return Err(err(libc::EEXIST));
        }
        if let Some((_, d)) = &dst {
            if d.ino == src.ino {
                return Ok(());
            }
            if !exchange {
                if src.kind == Kind::Dir && d.kind != Kind::Dir {
                    return Err(err(libc::ENOTDIR));
                }
                if src.kind != Kind::Dir && d.kind == Kind::Dir {
                    return Err(err(libc::EISDIR));
                }
                if d.kind == Kind::Dir && !self.dir_is_empty(d.ino)? {
                    return Err(err(libc::ENOTEMPTY));
                }
            }
        }
        let mut nodes = BTreeMap::new();
        for ino in [parent, newparent, src.ino] {
            nodes.insert(ino, self.node(ino)?);
        }
        if let Some((_, d)) = &dst {
            nodes.insert(d.ino, self.node(d.ino)?);
        }
        let mut l = Locked::new(&nodes)?;
        if l.get(newparent)?.rec.kind != Kind::Dir {
            return Err(err(libc::ENOTDIR));
        }
        if l.get(newparent)?.rec.nlink == 0 {
            return Err(err(libc::ENOENT));
        }
        let now = Ts::now();
        let mut t = self.txn()?;
        // New records, staged once each at the end.
        let mut recs: BTreeMap<u64, InodeRec> = BTreeMap::new();
        for (ino, _) in nodes.iter() {
            recs.insert(*ino, l.get(*ino)?.rec.clone());
        }
        let moved_dir = |k: Kind| k == Kind::Dir && parent != newparent;
        let mut dropped = None;
        if exchange {
            let (_, d) = dst.ok_or_else(|| err(libc::ENOENT))?;
            t.put_dirent_at(newparent, newname, dst_at, src)?;
            t.put_dirent_at(parent, name, Some(se), d)?;
            if moved_dir(src.kind) {
                drop_link(rec_mut(&mut recs, parent)?)?;
                rec_mut(&mut recs, newparent)?.nlink += 1;
                rec_mut(&mut recs, src.ino)?.parent = newparent;
            }
            if moved_dir(d.kind) {
                drop_link(rec_mut(&mut recs, newparent)?)?;
                rec_mut(&mut recs, parent)?.nlink += 1;
                rec_mut(&mut recs, d.ino)?.parent = parent;
            }
            rec_mut(&mut recs, d.ino)?.ctime = now;
        } else {
            if let Some((_, d)) = dst {
                let r = self.stage_drop_name(&mut t, d.ino, l.get(d.ino)?, now)?;
                recs.remove(&d.ino);
                if d.kind == Kind::Dir {
                    drop_link(rec_mut(&mut recs, newparent)?)?;
                }
                dropped = Some((d.ino, r));
            }
            t.put_dirent_at(newparent, newname, dst_at, src)?;
            t.remove_dirent(parent, name, se)?;
            if moved_dir(src.kind) {
                drop_link(rec_mut(&mut recs, parent)?)?;
                rec_mut(&mut recs, newparent)?.nlink += 1;
                rec_mut(&mut recs, src.ino)?.parent = newparent;
            }
        }
        rec_mut(&mut recs, src.ino)?.ctime = now;
        for p in [parent, newparent] {
            let r = rec_mut(&mut recs, p)?;
            r.mtime = now;
            r.ctime = now;
        }
        let mut staged = Vec::new();
        for (ino, rec) in recs {
            staged.push((ino, self.stage_node(&mut t, ino, l.get(ino)?, rec)?));
        }
        t.commit(false)?;
        for (ino, rec) in staged {
            self.applied(ino, l.get(ino)?, rec);
        }
        self.made(newparent, newname);
        if let Some((ino, r)) = dropped {
            self.finish_drop(ino, l.get(ino)?, r)?;
        }
        Ok(())
    }

    /// Takes a listing of a directory for one open handle (offsets index into it).
    pub fn opendir(&self, ino: u64) -> FsResult<u64> {
        let node = self.node(ino)?;
        let parent = {
            let n = lock(&node)?;
            if n.rec.kind != Kind::Dir {
                return Err(err(libc::ENOTDIR));
            }
            if ino == super::ROOT_INO { ino } else { n.rec.parent }
        };
        let mut items = vec![
            DirItem { name: b".".to_vec(), ino, kind: Kind::Dir },
            DirItem { name: b"..".to_vec(), ino: parent, kind: Kind::Dir },
        ];
        let gen = self.view.names_gen();
        for (name, d) in self.entries(ino)? {
            items.push(DirItem { name, ino: d.ino, kind: d.kind });
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs.lock().map_err(|_| err(libc::EIO))?.insert(fh, (gen, Arc::new(items)));
        Ok(fh)
    }

    pub fn readdir(&self, fh: u64) -> FsResult<Arc<Vec<DirItem>>> {
        self.dirs.lock().map_err(|_| err(libc::EIO))?.get(&fh).map(|d| d.1.clone()).ok_or_else(|| err(libc::EBADF))
    }

    /// `lookup_many` of `items`, entries of directory `parent` in the listing of handle
    /// `fh` (a READDIRPLUS page). While no entry of the view changed since that listing was
    /// taken, its inode numbers are still the entries' (the kernel holds the directory
    /// locked across the request, so none of its own changes can be in flight), and only
    /// the inodes are read.
    pub fn lookup_listed(&self, parent: u64, fh: u64, items: &[&DirItem]) -> FsResult<Vec<FsResult<Entry>>> {
        let gen = self.dirs.lock().map_err(|_| err(libc::EIO))?.get(&fh).map(|d| d.0).ok_or_else(|| err(libc::EBADF))?;
        if gen != self.view.names_gen() {
            let names: Vec<&[u8]> = items.iter().map(|it| it.name.as_slice()).collect();
            return self.lookup_many(parent, &names);
        }
        self.need_dir(parent)?;
        let inos: Vec<Option<u64>> = items.iter().map(|it| Some(it.ino)).collect();
        self.lookup_inos(inos)
    }

    pub fn releasedir(&self, fh: u64) {
        if let Ok(mut d) = self.dirs.lock() {
            d.remove(&fh);
        }
    }
}

fn rec_mut(recs: &mut BTreeMap<u64, InodeRec>, ino: u64) -> FsResult<&mut InodeRec> {
    recs.get_mut(&ino).ok_or_else(|| err(libc::EIO))
}

/// One link fewer; a count already at zero means the store is inconsistent (an error, not a
/// panic under the namespace lock).
fn drop_link(r: &mut InodeRec) -> FsResult<()> {
    r.nlink = r.nlink.checked_sub(1).ok_or_else(|| crate::error::Error::Corrupt("a directory's link count would go below zero".into()))?;
    Ok(())
}
