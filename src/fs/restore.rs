//! `clonefs restore VOL@SNAP PATH...`: files and trees come back from a snapshot into the
//! live volume by sharing their blocks (a 4 GiB file costs its extent map, not 4 GiB).
//! Each file is made under a temporary name in its target directory, filled, given its
//! owner, mode, times and xattrs, then renamed over the target: a reader sees the old file
//! or the restored one, never a part. Directories are made (or, with `force`, reused) and
//! get their attributes after their contents. Hard links come back as separate files (their
//! blocks are shared anyway).

use super::attr::{SetAttr, TimeSet};
use super::namespace::NewNode;
use super::{err, Ctx, FsResult, Volume, ROOT_INO};
use crate::volume::Kind;

#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct Restored {
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
    /// (directory, name) of every entry made or replaced: what a mount's kernel must forget.
    #[serde(skip)]
    pub names: Vec<(u64, Vec<u8>)>,
}

/// The inode at `path` (components separated by '/') from the root; lookups counted by
/// `lookup` are given back at once.
fn resolve(v: &Volume, path: &[u8]) -> FsResult<u64> {
    let mut ino = ROOT_INO;
    for c in path.split(|b| *b == b'/').filter(|c| !c.is_empty()) {
        if c == b"." || c == b".." {
            return Err(err(libc::EINVAL));
        }
        let e = v.lookup(ino, c)?;
        v.forget(e.ino, 1);
        ino = e.ino;
    }
    Ok(ino)
}

/// Splits `path` into its parent directory's inode in `v` and the last name.
fn parent_of<'p>(v: &Volume, path: &'p [u8]) -> FsResult<(u64, &'p [u8])> {
    let trimmed = path.strip_suffix(b"/").unwrap_or(path);
    let (dir, name) = match trimmed.iter().rposition(|b| *b == b'/') {
        Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
        None => (&b""[..], trimmed),
    };
    if name.is_empty() || name == b"." || name == b".." {
        return Err(err(libc::EINVAL));
    }
    Ok((resolve(v, dir)?, name))
}

/// The inode named `name` in directory `dir` of `v`, if any.
fn child(v: &Volume, dir: u64, name: &[u8]) -> FsResult<Option<(u64, Kind)>> {
    match v.lookup(dir, name) {
        Ok(e) => {
            v.forget(e.ino, 1);
            Ok(Some((e.ino, e.rec.kind)))
        }
        Err(e) if e.errno() == libc::ENOENT => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether restoring `src_path` of `src` to `dst_path` of `dst` is allowed: the source
/// exists, the target's directory exists, and the target does not unless `force`.
pub fn check(src: &Volume, dst: &Volume, src_path: &[u8], dst_path: &[u8], force: bool) -> FsResult<()> {
    resolve(src, src_path)?;
    let (dir, name) = parent_of(dst, dst_path)?;
    if !force && child(dst, dir, name)?.is_some() {
        return Err(err(libc::EEXIST));
    }
    Ok(())
}

/// Restores `src_path` of the snapshot view `src` to `dst_path` of the live volume `dst`.
pub fn restore(src: &Volume, dst: &Volume, src_path: &[u8], dst_path: &[u8], force: bool) -> FsResult<Restored> {
    check(src, dst, src_path, dst_path, force)?;
    let sino = resolve(src, src_path)?;
    let (dir, name) = parent_of(dst, dst_path)?;
    let mut done = Restored::default();
    copy(src, sino, dst, dir, name, &mut done)?;
    Ok(done)
}

fn copy(src: &Volume, sino: u64, dst: &Volume, dir: u64, name: &[u8], done: &mut Restored) -> FsResult<()> {
    let rec = src.entry(sino)?.rec;
    let ctx = Ctx { uid: rec.uid, gid: rec.gid };
    let existing = child(dst, dir, name)?;
    let ino = if rec.kind == Kind::Dir {
        let ino = match existing {
            Some((ino, Kind::Dir)) => {
                // Its attributes change below, behind the kernel: the name is looked up again.
                done.names.push((dir, name.to_vec()));
                ino
            }
            Some(_) => return Err(err(libc::ENOTDIR)),
            None => {
                let e = dst.make(ctx, dir, name, NewNode { kind: Kind::Dir, perm: rec.perm, umask: 0, rdev: 0, target: &[] }, false)?;
                dst.forget(e.ino, 1);
                done.names.push((dir, name.to_vec()));
                e.ino
            }
        };
        let fh = src.opendir(sino)?;
        let items = src.readdir(fh);
        src.releasedir(fh);
        for it in items?.iter().filter(|i| i.name != b"." && i.name != b"..") {
            copy(src, it.ino, dst, ino, &it.name, done)?;
        }
        done.dirs += 1;
        ino
    } else {
        if let Some((_, Kind::Dir)) = existing {
            return Err(err(libc::EISDIR));
        }
        // Made aside, then renamed over the target: atomic per file.
        let tmp = [b".clonefs-restore-".as_slice(), &sino.to_string().into_bytes(), b"-", name].concat();
        let tmp = &tmp[..tmp.len().min(255)];
        let target = if rec.kind == Kind::Symlink { src.readlink(sino)? } else { Vec::new() };
        let node = || NewNode { kind: rec.kind, perm: rec.perm, umask: 0, rdev: rec.rdev, target: &target };
        let e = match dst.make(ctx, dir, tmp, node(), false) {
            // A restore cut short (kill -9, power cut) left this name behind: it is ours.
            Err(e) if e.errno() == libc::EEXIST => {
                dst.unlink(dir, tmp, false)?;
                done.names.push((dir, tmp.to_vec()));
                dst.make(ctx, dir, tmp, node(), false)?
            }
            r => r?,
        };
        dst.forget(e.ino, 1);
        let filled = (|| {
            if rec.kind == Kind::File {
                done.bytes += dst.fill_from(e.ino, src, sino)?;
            }
            copy_attrs(src, sino, dst, e.ino, &rec)?;
            dst.rename(dir, tmp, dir, name, 0)
        })();
        if let Err(e) = filled {
            let _ = dst.unlink(dir, tmp, false);
            return Err(e);
        }
        done.files += 1;
        done.names.push((dir, name.to_vec()));
        return Ok(());
    };
    copy_attrs(src, sino, dst, ino, &rec)
}

/// Xattrs, owner, mode and times of `sino` onto `ino`.
fn copy_attrs(src: &Volume, sino: u64, dst: &Volume, ino: u64, rec: &crate::volume::InodeRec) -> FsResult<()> {
    let names = src.listxattr(sino)?;
    for n in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let value = src.getxattr(sino, n)?;
        dst.setxattr(ino, n, Some(&value), 0)?;
    }
    dst.setattr(
        ino,
        SetAttr {
            mode: Some(rec.perm),
            uid: Some(rec.uid),
            gid: Some(rec.gid),
            size: None,
            atime: Some(TimeSet::At(rec.atime)),
            mtime: Some(TimeSet::At(rec.mtime)),
            ctime: None,
            kill_suidgid: false,
        },
    )?;
    Ok(())
}
