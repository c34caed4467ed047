//! File data: open, read, write, truncate, fallocate, lseek, copy_file_range, release.

use super::table::{lock, Node};
use super::{err, Entry, Ext, Volume};
use crate::error::Result;
use crate::store::records::{Kind, Ts};
use std::sync::atomic::Ordering;
use std::time::Instant;

impl Volume {
    pub fn open_file(&self, ino: u64, write: bool) -> Result<u64> {
        if write {
            self.check_writable()?;
        }
        let node = self.node(ino)?;
        let mut n = lock(&node)?;
        if n.rec.kind == Kind::Dir && write {
            return Err(err(libc::EISDIR));
        }
        n.opens += 1;
        Ok(self.next_fh.fetch_add(1, Ordering::Relaxed))
    }

    /// Last close of a handle: flushes, and purges the inode if it has no names left.
    pub fn release(&self, ino: u64) -> Result<()> {
        let _g = if self.read_only { None } else { Some(self.ns()?) };
        let node = self.node(ino)?;
        let mut n = lock(&node)?;
        n.opens = n.opens.saturating_sub(1);
        if n.opens == 0 && n.rec.nlink == 0 && !self.read_only {
            let mut t = self.store.txn();
            self.stage_purge(&mut t, ino)?;
            self.store.commit(t, false)?;
            return self.forget_node(ino, &mut n);
        }
        if !n.is_clean() {
            let rec = n.rec.clone();
            self.save_node(ino, &mut n, rec, false)?;
        }
        Ok(())
    }

    /// The current bytes of block `idx`: dirty copy, stored block, or zeros.
    fn block_bytes(&self, ino: u64, n: &Node, idx: u64) -> Result<Vec<u8>> {
        if let Some(d) = n.dirty.get(&idx) {
            return Ok(d.clone());
        }
        if let Some((_, d)) = n.clean.iter().find(|(i, _)| *i == idx) {
            return Ok(d.clone());
        }
        if let Some((_, Some(h))) = self.extent(ino, idx)? {
            if let Some(b) = self.store.get_blocks(&[h])?.pop().flatten() {
                let mut b = b;
                b.resize(self.bs as usize, 0);
                return Ok(b);
            }
            return Err(crate::error::Error::Corrupt(format!("inode {ino} block {idx}: missing block")));
        }
        Ok(vec![0u8; self.bs as usize])
    }

    pub fn read(&self, ino: u64, off: u64, size: u32) -> Result<Vec<u8>> {
        let node = self.node(ino)?;
        let n = lock(&node)?;
        if n.rec.kind == Kind::Dir {
            return Err(err(libc::EISDIR));
        }
        let fsize = n.rec.size;
        if off >= fsize || size == 0 {
            return Ok(Vec::new());
        }
        let end = fsize.min(off + size as u64);
        let bs = self.bs;
        let (first, last) = (off / bs, (end - 1) / bs);
        let mut out = vec![0u8; (end - off) as usize];
        // Stored extents of the range, fetched with one scan and one multi-get.
        let stored = self.extents_from(ino, first, last + 1)?;
        let cached = |i: &u64| n.dirty.contains_key(i) || n.clean.iter().any(|(c, _)| c == i);
        let wanted: Vec<_> = stored.iter().filter(|(i, _, _)| !cached(i)).collect();
        let hashes: Vec<_> = wanted.iter().map(|(_, _, h)| *h).collect();
        let blocks = self.store.get_blocks(&hashes)?;
        let mut copy = |idx: u64, src: &[u8]| {
            let bstart = idx * bs;
            let from = off.max(bstart);
            let to = end.min(bstart + bs);
            let s = (from - bstart) as usize;
            let len = ((to - from) as usize).min(src.len().saturating_sub(s));
            let d = (from - off) as usize;
            if len > 0 {
                out[d..d + len].copy_from_slice(&src[s..s + len]);
            }
        };
        for ((idx, _, _), b) in wanted.iter().zip(blocks) {
            match b {
                Some(b) => copy(*idx, &b),
                None => {
                    return Err(crate::error::Error::Corrupt(format!("inode {ino} block {idx}: missing block")))
                }
            }
        }
        for (idx, d) in n.clean.iter().filter(|(i, _)| (first..=last).contains(i) && !n.dirty.contains_key(i)) {
            copy(*idx, d);
        }
        for (idx, d) in n.dirty.range(first..=last) {
            copy(*idx, d);
        }
        Ok(out)
    }

    pub fn write(&self, ino: u64, off: u64, data: &[u8]) -> Result<usize> {
        self.check_writable()?;
        let end = off.checked_add(data.len() as u64).ok_or_else(|| err(libc::EFBIG))?;
        if end > i64::MAX as u64 {
            return Err(err(libc::EFBIG));
        }
        let node = self.node(ino)?;
        let mut n = lock(&node)?;
        if n.rec.kind != Kind::File {
            return Err(err(libc::EINVAL));
        }
        if data.is_empty() || n.purged {
            return Ok(data.len());
        }
        let bs = self.bs;
        let mut pos = off;
        let mut added = 0u64;
        while pos < end {
            let idx = pos / bs;
            let bstart = idx * bs;
            let s = (pos - bstart) as usize;
            let e = ((end - bstart).min(bs)) as usize;
            let src = &data[(pos - off) as usize..(pos - off) as usize + (e - s)];
            if s == 0 && e == bs as usize {
                if n.dirty.insert(idx, src.to_vec()).is_none() {
                    added += 1;
                }
            } else {
                if !n.dirty.contains_key(&idx) {
                    let b = if bstart >= n.rec.size { vec![0u8; bs as usize] } else { self.block_bytes(ino, &n, idx)? };
                    n.dirty.insert(idx, b);
                    added += 1;
                }
                if let Some(b) = n.dirty.get_mut(&idx) {
                    b[s..e].copy_from_slice(src);
                }
            }
            pos = bstart + e as u64;
        }
        let now = Ts::now();
        n.rec.size = n.rec.size.max(end);
        n.rec.mtime = now;
        n.rec.ctime = now;
        n.meta_dirty = true;
        self.mark_dirty(ino, &mut n, added);
        let total = self.budget.bytes.load(Ordering::Relaxed);
        if n.dirty.len() as u64 * bs >= self.budget.file_limit || total >= self.budget.total_limit {
            let rec = n.rec.clone();
            self.save_node(ino, &mut n, rec, false)?;
        }
        Ok(data.len())
    }

    fn mark_dirty(&self, ino: u64, n: &mut Node, added_blocks: u64) {
        if added_blocks > 0 {
            self.budget.bytes.fetch_add(added_blocks * self.bs, Ordering::Relaxed);
        }
        if n.dirty_since.is_none() {
            n.dirty_since = Some(Instant::now());
        }
        if let Ok(mut d) = self.dirty.lock() {
            d.insert(ino);
        }
    }

    /// Zeroes bytes [from, to) of a file: whole blocks become holes, edges are patched.
    /// Extends nothing; the caller sets the size.
    fn zero_range(&self, t: &mut crate::store::Txn, ino: u64, n: &mut Node, from: u64, to: u64) -> Result<i64> {
        let bs = self.bs;
        let mut delta = 0;
        if from >= to {
            return Ok(0);
        }
        let first_full = from.div_ceil(bs);
        let end_full = to / bs;
        // Edges: blocks only partly covered.
        let mut edges = vec![from / bs];
        if (to - 1) / bs != from / bs {
            edges.push((to - 1) / bs);
        }
        for idx in edges {
            let bstart = idx * bs;
            if from <= bstart && to >= bstart + bs {
                continue;
            }
            if bstart >= n.rec.size && !n.dirty.contains_key(&idx) {
                continue;
            }
            let mut b = self.block_bytes(ino, n, idx)?;
            let s = from.max(bstart) - bstart;
            let e = to.min(bstart + bs) - bstart;
            b[s as usize..e as usize].fill(0);
            if n.dirty.insert(idx, b).is_none() {
                self.mark_dirty(ino, n, 1);
            }
        }
        if first_full < end_full {
            self.drop_clean(n, first_full..end_full);
            let gone: Vec<u64> = n.dirty.range(first_full..end_full).map(|(i, _)| *i).collect();
            for idx in &gone {
                n.dirty.remove(idx);
            }
            self.budget.bytes.fetch_sub(gone.len() as u64 * bs, Ordering::Relaxed);
            for (idx, e, h) in self.extents_from(ino, first_full, end_full)? {
                delta += self.stage_extent(t, ino, idx, Some((e, Some(h))), Ext::Hole)?;
            }
        }
        Ok(delta)
    }

    /// Sets the size of a file, freeing what lies past a shrink. Part of setattr.
    pub(super) fn stage_truncate(&self, t: &mut crate::store::Txn, ino: u64, n: &mut Node, size: u64) -> Result<i64> {
        let bs = self.bs;
        let old = n.rec.size;
        let mut delta = 0;
        if size < old {
            // Bytes past the new end inside the last block must read as zeros if it grows again.
            if size % bs != 0 {
                delta += self.zero_range(t, ino, n, size, (size / bs + 1) * bs)?;
            }
            let keep = size.div_ceil(bs);
            self.drop_clean(n, keep..u64::MAX);
            let gone: Vec<u64> = n.dirty.range(keep..).map(|(i, _)| *i).collect();
            for idx in &gone {
                n.dirty.remove(idx);
            }
            self.budget.bytes.fetch_sub(gone.len() as u64 * bs, Ordering::Relaxed);
            for (idx, e, h) in self.extents_from(ino, keep, u64::MAX)? {
                delta += self.stage_extent(t, ino, idx, Some((e, Some(h))), Ext::Hole)?;
            }
        }
        n.rec.size = size;
        Ok(delta)
    }

    pub fn fallocate(&self, ino: u64, off: u64, len: u64, mode: i32) -> Result<()> {
        self.check_writable()?;
        let end = off.checked_add(len).ok_or_else(|| err(libc::EFBIG))?;
        if len == 0 {
            return Err(err(libc::EINVAL));
        }
        let node = self.node(ino)?;
        let mut n = lock(&node)?;
        if n.rec.kind != Kind::File {
            return Err(err(libc::ENODEV));
        }
        let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let punch = mode & libc::FALLOC_FL_PUNCH_HOLE != 0;
        let zero = mode & libc::FALLOC_FL_ZERO_RANGE != 0;
        let known = libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        if mode & !known != 0 || (punch && !keep) || (punch && zero) {
            return Err(err(libc::EOPNOTSUPP));
        }
        let mut t = self.store.txn();
        let mut delta = 0;
        if punch || zero {
            let to = end.min(n.rec.size.max(if keep { 0 } else { end }));
            delta = self.zero_range(&mut t, ino, &mut n, off, to)?;
        }
        let now = Ts::now();
        let mut rec = n.rec.clone();
        if !keep && end > rec.size {
            rec.size = end;
        }
        rec.blocks = (rec.blocks as i64 + delta).max(0) as u64;
        if punch || zero || rec.size != n.rec.size {
            rec.mtime = now;
            rec.ctime = now;
        }
        let rec = self.stage_node(&mut t, ino, &n, rec)?;
        self.store.commit(t, false)?;
        self.applied(ino, &mut n, rec);
        Ok(())
    }

    /// SEEK_DATA / SEEK_HOLE.
    pub fn lseek(&self, ino: u64, off: u64, whence: i32) -> Result<u64> {
        self.flush_ino(ino, false)?;
        let node = self.node(ino)?;
        let n = lock(&node)?;
        let size = n.rec.size;
        if off >= size {
            return Err(err(libc::ENXIO));
        }
        let bs = self.bs;
        let data: Vec<u64> = self.extents_from(ino, off / bs, size.div_ceil(bs))?.iter().map(|x| x.0).collect();
        match whence {
            libc::SEEK_DATA => data.first().map(|i| (i * bs).max(off)).filter(|p| *p < size).ok_or_else(|| err(libc::ENXIO)),
            libc::SEEK_HOLE => {
                let mut idx = off / bs;
                for d in data {
                    if d != idx {
                        break;
                    }
                    idx += 1;
                }
                Ok((idx * bs).max(off).min(size))
            }
            _ => Err(err(libc::EINVAL)),
        }
    }

    /// Copies a range between files, sharing whole blocks instead of copying them when both
    /// sides are block-aligned.
    pub fn copy_range(&self, ino_in: u64, off_in: u64, ino_out: u64, off_out: u64, len: u64) -> Result<u64> {
        self.check_writable()?;
        let in_size = lock(&self.node(ino_in)?)?.rec.size;
        if off_in >= in_size || len == 0 {
            return Ok(0);
        }
        let len = len.min(in_size - off_in);
        let bs = self.bs;
        let mut done = 0u64;
        if ino_in != ino_out && off_in % bs == 0 && off_out % bs == 0 && len >= bs {
            self.flush_ino(ino_in, false)?;
            let full = len / bs;
            self.share_blocks(ino_in, off_in / bs, ino_out, off_out / bs, full)?;
            done = full * bs;
        }
        while done < len {
            let chunk = (len - done).min(1 << 20) as u32;
            let buf = self.read(ino_in, off_in + done, chunk)?;
            if buf.is_empty() {
                break;
            }
            self.write(ino_out, off_out + done, &buf)?;
            done += buf.len() as u64;
        }
        Ok(done)
    }
}

impl Volume {
    /// Makes `count` blocks of `dst` from `dst_idx` refer to the blocks of `src` from `src_idx`.
    fn share_blocks(&self, src: u64, src_idx: u64, dst: u64, dst_idx: u64, count: u64) -> Result<()> {
        let src_ext = self.extents_from(src, src_idx, src_idx + count)?;
        let dnode = self.node(dst)?;
        let mut dn = lock(&dnode)?;
        self.drop_clean(&mut dn, dst_idx..dst_idx + count);
        let mut t = self.store.txn();
        let mut delta = 0;
        let mut map = std::collections::HashMap::new();
        for (i, _, h) in src_ext {
            map.insert(i - src_idx, h);
        }
        for k in 0..count {
            let idx = dst_idx + k;
            if dn.dirty.remove(&idx).is_some() {
                self.budget.bytes.fetch_sub(self.bs, Ordering::Relaxed);
            }
            let old = self.extent(dst, idx)?;
            let new = match map.get(&k) {
                Some(h) => Ext::Shared(*h),
                None => Ext::Hole,
            };
            delta += self.stage_extent(&mut t, dst, idx, old, new)?;
        }
        let now = Ts::now();
        let mut rec = dn.rec.clone();
        rec.size = rec.size.max((dst_idx + count) * self.bs);
        rec.mtime = now;
        rec.ctime = now;
        rec.blocks = (rec.blocks as i64 + delta).max(0) as u64;
        let rec = self.stage_node(&mut t, dst, &dn, rec)?;
        self.store.commit(t, false)?;
        self.applied(dst, &mut dn, rec);
        Ok(())
    }

    pub fn entry(&self, ino: u64) -> Result<Entry> {
        let node = self.node(ino)?;
        let n = lock(&node)?;
        Ok(Entry { ino, rec: n.rec.clone() })
    }
}
