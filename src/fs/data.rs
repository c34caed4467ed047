//! File data: open, read, write, truncate, fallocate, lseek, copy_file_range, release.

use super::table::{self, lock, lock_busy, Node, Ranges};
use super::{err, AfterWrite, Entry, FsResult, Volume, PURGE_BATCH};
use crate::error::Error;
use crate::store::ReadBytes;
use crate::volume::view::{Ext, ViewTxn};
use crate::volume::{Kind, Ts};
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Partly written blocks whose stored bytes a write asks the kernel to read ahead together,
/// after its reply (`Volume::read_ahead_partial`).
const READ_AHEAD_PARTIAL: usize = 64;

/// Blocks of a read range held in memory: bytes, and the written ranges if only those are
/// current (the rest comes from the store).
type InMemory = std::collections::BTreeMap<u64, (Vec<u8>, Option<Ranges>)>;

impl Volume {
    pub fn open_file(&self, ino: u64, write: bool) -> FsResult<u64> {
        if write {
            self.check_writable()?;
        }
        let node = self.node(ino)?;
        let mut n = lock(&node)?;
        if n.rec.kind == Kind::Dir && write {
            return Err(err(libc::EISDIR));
        }
        // Unlinked with nothing open, it is being purged: this OPEN was sent before another
        // process's UNLINK but reached the daemon after it. It fails as if it had come after
        // (opened, the file would be purged again at its release).
        if n.purged || (n.rec.nlink == 0 && n.opens == 0) {
            drop(n);
            drop(node);
            // A node loaded for this open goes again (nothing else holds it).
            let _ = self.table.evict_if_idle(ino);
            return Err(err(libc::ENOENT));
        }
        n.opens += 1;
        Ok(self.next_fh.fetch_add(1, Ordering::Relaxed))
    }

    /// Last close of a handle: flushes, and purges the inode if it has no names left.
    pub fn release(&self, ino: u64) -> FsResult<()> {
        let _g = if self.read_only { None } else { Some(self.ns()?) };
        let node = self.node(ino)?;
        let mut n = lock(&node)?;
        n.opens = n.opens.saturating_sub(1);
        if n.rec.nlink == 0 && !n.purged && !self.held(&n) && !self.read_only {
            return self.purge_gone(ino, &mut n);
        }
        if !n.is_clean() {
            // Bytes logged over stored blocks (`commit_node`) are merged at the last close.
            if n.opens > 0 {
                return self.commit_node(ino, &mut n).map(|_| ());
            }
            let rec = n.rec.clone();
            self.save_node(ino, &mut n, rec)?;
        }
        Ok(())
    }

    /// The current bytes of block `idx`: dirty copy (over the stored bytes if partly
    /// written), clean copy, stored block, or zeros.
    fn block_bytes(&self, ino: u64, n: &Node, idx: u64) -> FsResult<Vec<u8>> {
        if let Some(d) = n.dirty.get(&idx) {
            let Some(r) = n.partial.get(&idx) else { return Ok(d.clone()) };
            let mut b = self.stored_block(ino, n, idx)?;
            table::overlay(&mut b, d, r);
            return Ok(b);
        }
        self.stored_block(ino, n, idx)
    }

    /// The stored bytes of block `idx` (a clean copy if there is one), a block long.
    fn stored_block(&self, ino: u64, n: &Node, idx: u64) -> FsResult<Vec<u8>> {
        if let Some((_, d)) = n.clean.iter().find(|(i, _)| *i == idx) {
            return Ok(d.clone());
        }
        if let Some((_, Some(h))) = self.view.extent(ino, idx)? {
            if let Some(b) = self.view.blocks(&[h])?.pop().flatten() {
                let mut b = b;
                b.resize(self.bs as usize, 0);
                return Ok(b);
            }
            return Err(Error::Corrupt(format!("inode {ino} block {idx}: missing block")).into());
        }
        Ok(vec![0u8; self.bs as usize])
    }

    /// Reads without holding the node across store reads, so readers of one file run in
    /// parallel: in-memory copies of the range are taken under the lock, stored blocks read
    /// after it. A block freed meanwhile (the file was rewritten and flushed) means the read
    /// raced a writer; it is then redone under the lock, where the file cannot change.
    pub fn read(&self, ino: u64, off: u64, size: u32) -> FsResult<ReadBytes> {
        let node = self.node(ino)?;
        let (fsize, mem) = {
            let n = lock_busy(&node)?;
            (n.rec.size, self.range_in_memory(&n, off, size)?)
        };
        if size > 0 && off < fsize {
            let end = fsize.min(off + size as u64);
            let blocks = (end - 1) / self.bs - off / self.bs + 1;
            let hits = mem.values().filter(|m| m.1.is_none()).count() as u64;
            let m = crate::metrics::get();
            m.read_cache_hits.inc_by(hits);
            m.read_cache_misses.inc_by(blocks.saturating_sub(hits));
        }
        if let Some(out) = self.read_range(ino, off, size, fsize, &mem)? {
            return Ok(out);
        }
        let n = lock(&node)?;
        let mem = self.range_in_memory(&n, off, size)?;
        self.read_range(ino, off, size, n.rec.size, &mem)?
            .ok_or_else(|| Error::Corrupt(format!("inode {ino}: a block of [{off}, +{size}) is missing")).into())
    }

    /// Copies of the blocks of a read range that memory holds newer than (or instead of
    /// reading) the store: dirty blocks (with their written ranges if partly written), over
    /// blocks being flushed, over clean copies.
    fn range_in_memory(&self, n: &Node, off: u64, size: u32) -> FsResult<InMemory> {
        if n.rec.kind == Kind::Dir {
            return Err(err(libc::EISDIR));
        }
        let mut mem = InMemory::new();
        if size == 0 || off >= n.rec.size {
            return Ok(mem);
        }
        let end = n.rec.size.min(off + size as u64);
        let (first, last) = (off / self.bs, (end - 1) / self.bs);
        for (idx, d) in n.clean.iter().filter(|(i, _)| (first..=last).contains(i)) {
            layer(&mut mem, *idx, d, None);
        }
        if let Some(f) = &n.flushing {
            for (idx, d) in f.blocks.range(first..=last) {
                layer(&mut mem, *idx, d, f.partial.get(idx));
            }
        }
        for (idx, d) in n.dirty.range(first..=last) {
            layer(&mut mem, *idx, d, n.partial.get(idx));
        }
        Ok(mem)
    }

    /// Bytes [off, off + size) of a file of `fsize` bytes: `mem` where it has the block
    /// (over the stored bytes where only ranges were written), else the store (one extent
    /// scan, one multi-get). None if a stored block has gone.
    fn read_range(&self, ino: u64, off: u64, size: u32, fsize: u64, mem: &InMemory) -> FsResult<Option<ReadBytes>> {
        if off >= fsize || size == 0 {
            return Ok(Some(ReadBytes::Owned(Vec::new())));
        }
        let end = fsize.min(off + size as u64);
        let bs = self.bs;
        let (first, last) = (off / bs, (end - 1) / bs);
        let n = (end - off) as usize;
        // Allocated (zeroed) on the first copy: a read that is one run takes its buffer.
        let mut out = Vec::new();
        let stored = self.view.extents(ino, first, last + 1)?;
        let whole = |i: &u64| mem.get(i).is_some_and(|m| m.1.is_none());
        let wanted: Vec<_> = stored.iter().filter(|(i, _, _)| !whole(i)).collect();
        let hashes: Vec<_> = wanted.iter().map(|(_, _, h)| *h).collect();
        // Copies block-relative bytes [s, e) of block `idx` from `src` into `out`.
        let mut copy = |idx: u64, src: &[u8], s: u64, e: u64| {
            let bstart = idx * bs;
            let from = off.max(bstart + s);
            let to = end.min(bstart + e);
            if from >= to {
                return;
            }
            let s = (from - bstart) as usize;
            let len = ((to - from) as usize).min(src.len().saturating_sub(s));
            let d = (from - off) as usize;
            if len > 0 {
                if out.is_empty() {
                    out = vec![0u8; n];
                }
                out[d..d + len].copy_from_slice(&src[s..s + len]);
            }
        };
        let mut got = 0;
        let mut as_read = None;
        self.view.visit_runs(&hashes, |blocks, bytes| {
            got += blocks.len();
            // The whole range, block after block in file order, nothing newer in memory (a
            // file read in the order it was written): the read's buffer is the reply.
            let in_order = blocks.len() == wanted.len()
                && mem.is_empty()
                && bytes.len() == n
                && blocks.iter().map(|b| b.1).sum::<usize>() == n
                && blocks.iter().enumerate().all(|(j, &(k, size))| wanted[k].0 == first + j as u64 && (size as u64 == bs || j + 1 == blocks.len()));
            if in_order && off == first * bs {
                as_read = Some(bytes);
                return;
            }
            let mut at = 0;
            for &(k, size) in blocks {
                copy(wanted[k].0, &bytes[at..at + size], 0, bs);
                at += size;
            }
        })?;
        if got < wanted.len() {
            return Ok(None);
        }
        if let Some(b) = as_read {
            return Ok(Some(b));
        }
        for (idx, (d, ranges)) in mem {
            match ranges {
                None => copy(*idx, d, 0, bs),
                Some(r) => {
                    for &(s, e) in r {
                        copy(*idx, d, s as u64, e as u64);
                    }
                }
            }
        }
        if out.is_empty() {
            out = vec![0u8; n];
        }
        Ok(Some(ReadBytes::Owned(out)))
    }

    /// Writes `data` at `off`. `kill_suidgid`: the writer lacks CAP_FSETID and the file may
    /// be set-user/group-ID (the kernel says so; see `drop_suidgid`).
    pub fn write(&self, ino: u64, off: u64, data: &[u8], kill_suidgid: bool) -> FsResult<usize> {
        let (n, after) = self.write_then(ino, off, data, kill_suidgid)?;
        self.after_write(after)?;
        Ok(n)
    }

    /// Does what `write_then` left for after the reply.
    pub fn after_write(&self, after: AfterWrite) -> FsResult<()> {
        match after {
            AfterWrite::Nothing => Ok(()),
            AfterWrite::Flush(f) => self.finish_flush(f),
            AfterWrite::ReadAhead { ino, blocks } => self.read_ahead_partial(ino, &blocks),
        }
    }

    /// Hands the kernel's readahead the stored blocks under partly written blocks `idxs`
    /// of `ino`, which the file's next flush reads to complete them: the disk reads them
    /// while the writer goes on, and the flush finds them in the page cache. A hint: a
    /// block written whole or flushed meanwhile costs one wasted read.
    fn read_ahead_partial(&self, ino: u64, idxs: &[u64]) -> FsResult<()> {
        let hashes: Vec<_> = self.view.extents_at(ino, idxs)?.into_iter().filter_map(|e| e.and_then(|(_, h)| h)).collect();
        self.view.read_ahead(&hashes)?;
        Ok(())
    }

    /// `write`, leaving to the caller the flush it started or the reads ahead it asks for
    /// (`after_write`): the FUSE layer answers the write first, so the writer's next request
    /// overlaps them.
    pub fn write_then(&self, ino: u64, off: u64, data: &[u8], kill_suidgid: bool) -> FsResult<(usize, AfterWrite)> {
        self.check_writable()?;
        let end = off.checked_add(data.len() as u64).ok_or_else(|| err(libc::EFBIG))?;
        if end > i64::MAX as u64 {
            return Err(err(libc::EFBIG));
        }
        let node = self.node(ino)?;
        let mut n = lock_busy(&node)?;
        if n.rec.kind != Kind::File {
            return Err(err(libc::EINVAL));
        }
        if data.is_empty() || n.purged {
            return Ok((data.len(), AfterWrite::Nothing));
        }
        let bs = self.bs;
        self.check_refquota(&n, off, end)?;
        let mut pos = off;
        let mut added = 0u64;
        while pos < end {
            let idx = pos / bs;
            let bstart = idx * bs;
            let s = (pos - bstart) as usize;
            let e = ((end - bstart).min(bs)) as usize;
            let src = &data[(pos - off) as usize..(pos - off) as usize + (e - s)];
            n.unsynced.insert(idx);
            if s == 0 && e == bs as usize {
                if n.dirty.insert(idx, src.to_vec()).is_none() {
                    added += 1;
                }
                n.partial.remove(&idx);
            } else {
                if !n.dirty.contains_key(&idx) {
                    // Past the end, being flushed whole, or with a clean copy, the block is
                    // known; else only the written range is, and the rest is read when it is
                    // needed (a block being flushed partly makes its clean copy stale).
                    let known = match n.flushing.as_ref().map(|f| (f.blocks.get(&idx), f.partial.contains_key(&idx))) {
                        Some((Some(b), false)) => Some(b.to_vec()),
                        Some((Some(_), true)) => None,
                        _ => n.clean.iter().find(|(i, _)| *i == idx).map(|(_, d)| d.clone()),
                    };
                    let b = match known {
                        Some(d) => d,
                        None => {
                            if bstart < n.rec.size {
                                n.partial.insert(idx, Ranges::new());
                                n.unfetched.push(idx);
                            }
                            vec![0u8; bs as usize]
                        }
                    };
                    n.dirty.insert(idx, b);
                    added += 1;
                }
                if let Some(b) = n.dirty.get_mut(&idx) {
                    b[s..e].copy_from_slice(src);
                }
                if let Some(r) = n.partial.get_mut(&idx) {
                    table::add_range(r, s as u32, e as u32);
                    if r.first() == Some(&(0, bs as u32)) {
                        n.partial.remove(&idx);
                    }
                }
            }
            pos = bstart + e as u64;
        }
        let now = Ts::now();
        if kill_suidgid {
            n.rec.perm = super::attr::drop_suidgid(n.rec.perm);
        }
        n.rec.size = n.rec.size.max(end);
        n.rec.mtime = now;
        n.rec.ctime = now;
        n.meta_dirty = true;
        self.mark_dirty(ino, &mut n, added);
        let total = self.budget.bytes.load(Ordering::Relaxed);
        if n.dirty.len() as u64 * bs >= self.budget.file_limit || total >= self.budget.total_limit {
            let after = self.begin_flush(ino, &node, n)?.map_or(AfterWrite::Nothing, AfterWrite::Flush);
            return Ok((data.len(), after));
        }
        if n.unfetched.len() >= READ_AHEAD_PARTIAL {
            return Ok((data.len(), AfterWrite::ReadAhead { ino, blocks: std::mem::take(&mut n.unfetched) }));
        }
        Ok((data.len(), AfterWrite::Nothing))
    }

    /// EDQUOT before a write is taken that could take the volume past its refquota: what it
    /// references, plus every unsaved block, plus the blocks this write makes unsaved. It
    /// counts an overwrite as growth, so it may refuse a little early (as ZFS does); writes
    /// racing on other files may pass it together, and then the commit's exact check
    /// (`ViewTxn::commit`) refuses the excess at flush or fsync.
    /// The same for `quota`, on the bytes the volume's own lineage holds.
    fn check_refquota(&self, n: &Node, off: u64, end: u64) -> FsResult<()> {
        let (rq, q) = (self.view.refquota(), self.view.quota());
        if rq.is_none() && q.is_none() {
            return Ok(());
        }
        let bs = self.bs;
        let new = (off / bs..end.div_ceil(bs)).filter(|i| !n.dirty.contains_key(i)).count() as u64 * bs;
        if new == 0 {
            return Ok(());
        }
        let over = || {
            let dirty = self.dirty_bytes.load(Ordering::Relaxed);
            rq.is_some_and(|rq| self.view.space().map_or(0, |s| s.referenced) + dirty + new > rq)
                || q.is_some_and(|q| self.view.own_bytes().unwrap_or(0) + dirty + new > q)
        };
        // Files unlinked a moment ago count until purged: purge them before refusing.
        if over() && (self.purge_deferred().is_err() || over()) {
            return Err(err(libc::EDQUOT));
        }
        Ok(())
    }

    fn mark_dirty(&self, ino: u64, n: &mut Node, added_blocks: u64) {
        if added_blocks > 0 {
            self.add_dirty(added_blocks as i64);
        }
        if n.dirty_since.is_none() {
            n.dirty_since = Some(Instant::now());
        }
        if let Ok(mut d) = self.dirty.lock() {
            d.insert(ino);
        }
    }

    /// Zeroes bytes [from, to) of block `idx` (a part of one block) in `t`. The node has no
    /// dirty blocks (`settle`). Returns the change in stored blocks.
    fn stage_zero_part(&self, t: &mut ViewTxn<'_>, ino: u64, n: &mut Node, idx: u64, from: u64, to: u64) -> FsResult<i64> {
        let old = self.view.extent(ino, idx)?;
        if !matches!(old, Some((_, Some(_)))) || from >= to {
            return Ok(0);
        }
        let mut b = self.block_bytes(ino, n, idx)?;
        let bstart = idx * self.bs;
        b[(from - bstart) as usize..(to - bstart) as usize].fill(0);
        let new = self.block_ext(&b);
        self.drop_clean(n, idx..idx + 1);
        Ok(t.set_extent(ino, idx, old, new)?)
    }

    /// Zeroes the parts of the first and last blocks of [from, to) that the range covers
    /// only partly. Returns the change in stored blocks.
    fn stage_zero_edges(&self, t: &mut ViewTxn<'_>, ino: u64, n: &mut Node, from: u64, to: u64) -> FsResult<i64> {
        let bs = self.bs;
        if from >= to {
            return Ok(0);
        }
        let (fi, li) = (from / bs, (to - 1) / bs);
        let mut delta = 0;
        if from % bs != 0 || (fi == li && to % bs != 0) {
            delta += self.stage_zero_part(t, ino, n, fi, from, to.min((fi + 1) * bs))?;
        }
        if li != fi && to % bs != 0 {
            delta += self.stage_zero_part(t, ino, n, li, li * bs, to)?;
        }
        Ok(delta)
    }

    /// Makes the data blocks in [from, to) holes, in batches of at most `PURGE_BATCH`
    /// extents, highest first, each committed with the node's record. With `shrink`, each
    /// batch also lowers the size to where it stopped (never below `shrink`): the file is a
    /// consistent prefix of itself at every commit, so a crash mid-way loses nothing that
    /// was kept. The node has no dirty blocks (`settle`); memory changes after each commit.
    fn clear_blocks(&self, ino: u64, n: &mut Node, from: u64, to: u64, shrink: Option<u64>) -> FsResult<()> {
        let mut hi = to;
        while hi > from {
            let mut t = self.txn()?;
            t.frees();
            let (mut delta, mut staged, mut lo) = (0i64, 0u64, hi);
            while lo > from && staged < PURGE_BATCH {
                let top = match self.view.last_extent_below(ino, lo)? {
                    Some(top) if top >= from => top,
                    _ => {
                        lo = from;
                        break;
                    }
                };
                let start = top.saturating_sub(PURGE_BATCH - staged - 1).max(from);
                for (idx, at, h) in self.view.extents(ino, start, top + 1)? {
                    delta += t.set_extent(ino, idx, Some((at, Some(h))), Ext::Hole)?;
                    staged += 1;
                }
                lo = start;
            }
            if staged == 0 {
                return Ok(());
            }
            self.drop_clean(n, lo..hi);
            let now = Ts::now();
            let mut rec = n.rec.clone();
            if let Some(s) = shrink {
                rec.size = rec.size.min(s.max(lo.saturating_mul(self.bs)));
            }
            rec.mtime = now;
            rec.ctime = now;
            rec.blocks = rec.blocks.saturating_add_signed(delta);
            let rec = self.stage_node(&mut t, ino, n, rec)?;
            t.commit(false)?;
            self.applied(ino, n, rec);
            hi = lo;
        }
        Ok(())
    }

    /// First step of a shrink to `size`: frees the whole blocks past it, in bounded batches
    /// of their own. Take no batch before calling it (it commits its own).
    pub(super) fn shrink_blocks(&self, ino: u64, n: &mut Node, size: u64) -> FsResult<()> {
        if size >= n.rec.size {
            return Ok(());
        }
        self.settle(ino, n)?;
        self.clear_blocks(ino, n, size.div_ceil(self.bs), u64::MAX, Some(size))
    }

    /// Last step of setting the size: bytes past the new end inside its last block must
    /// read as zeros if the file grows again. The caller records `size` after `t` commits.
    pub(super) fn stage_tail(&self, t: &mut ViewTxn<'_>, ino: u64, n: &mut Node, size: u64) -> FsResult<i64> {
        let bs = self.bs;
        if size % bs == 0 || n.rec.size <= size {
            return Ok(0);
        }
        self.stage_zero_part(t, ino, n, size / bs, size, (size / bs + 1) * bs)
    }

    /// `kill`: the caller lacks CAP_FSETID, so set-ID bits go as on a write (the kernel
    /// leaves that to us with FUSE_HANDLE_KILLPRIV_V2).
    pub fn fallocate(&self, ino: u64, off: u64, len: u64, mode: i32, kill: bool) -> FsResult<()> {
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
        if !punch && !zero {
            // Nothing is reserved (a copy-on-write store cannot promise the blocks later
            // overwrites need), but a range that cannot fit now is refused, as OpenZFS does.
            let (lo, hi) = (off / self.bs, end.div_ceil(self.bs));
            let stored = self.view.extents(ino, lo, hi)?.len() as u64;
            let free = self.writable_bytes(self.view.space()?.referenced)?;
            if (hi - lo).saturating_sub(stored).saturating_mul(self.bs) > free {
                return Err(err(libc::ENOSPC));
            }
        }
        let mut delta = 0;
        let mut t = if punch || zero {
            let to = end.min(n.rec.size.max(if keep { 0 } else { end }));
            self.settle(ino, &mut n)?;
            if off < to {
                self.clear_blocks(ino, &mut n, off.div_ceil(self.bs), to / self.bs, None)?;
            }
            let mut t = self.txn()?;
            delta = self.stage_zero_edges(&mut t, ino, &mut n, off, to)?;
            t
        } else {
            self.txn()?
        };
        let now = Ts::now();
        let mut rec = n.rec.clone();
        if !keep && end > rec.size {
            rec.size = end;
        }
        rec.blocks = rec.blocks.saturating_add_signed(delta);
        if punch || zero || rec.size != n.rec.size {
            rec.mtime = now;
            rec.ctime = now;
        }
        if kill && rec.perm != super::attr::drop_suidgid(rec.perm) {
            rec.perm = super::attr::drop_suidgid(rec.perm);
            rec.ctime = now;
        }
        let rec = self.stage_node(&mut t, ino, &n, rec)?;
        t.commit(false)?;
        self.applied(ino, &mut n, rec);
        Ok(())
    }

    /// SEEK_DATA / SEEK_HOLE.
    pub fn lseek(&self, ino: u64, off: u64, whence: i32) -> FsResult<u64> {
        self.flush_ino(ino, false)?;
        let node = self.node(ino)?;
        let n = lock(&node)?;
        let size = n.rec.size;
        if off >= size {
            return Err(err(libc::ENXIO));
        }
        let bs = self.bs;
        let data: Vec<u64> = self.view.extents(ino, off / bs, size.div_ceil(bs))?.iter().map(|x| x.0).collect();
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
    pub fn copy_range(&self, ino_in: u64, off_in: u64, ino_out: u64, off_out: u64, len: u64) -> FsResult<u64> {
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
            self.write(ino_out, off_out + done, &buf, false)?;
            done += buf.len() as u64;
        }
        Ok(done)
    }
}

/// Lays block `idx`'s copy `d` (all of it, or only the written ranges `r`) over what `mem`
/// holds of it.
fn layer(mem: &mut InMemory, idx: u64, d: &[u8], r: Option<&Ranges>) {
    let entry = table::lay_over(mem.remove(&idx), d, r);
    mem.insert(idx, entry);
}

impl Volume {
    /// Makes `count` blocks of `dst` from `dst_idx` refer to the blocks of `src` from
    /// `src_idx`, in batches of `PURGE_BATCH` blocks (each commit extends the file by what
    /// it shares, so every commit leaves a consistent file).
    fn share_blocks(&self, src: u64, src_idx: u64, dst: u64, dst_idx: u64, count: u64) -> FsResult<()> {
        self.share_from(&self.view, src, src_idx, dst, dst_idx, count, None)
    }

    /// Makes `dst` (a file just made) a copy of `src_ino` of the read-only view `src` (a
    /// snapshot of this volume) by sharing its blocks: no bytes are copied. Returns its size.
    pub fn fill_from(&self, dst: u64, src: &Volume, src_ino: u64) -> FsResult<u64> {
        self.check_writable()?;
        if !src.read_only || src.bs != self.bs {
            return Err(err(libc::EINVAL));
        }
        let size = src.entry(src_ino)?.rec.size;
        self.share_from(&src.view, src_ino, 0, dst, 0, size.div_ceil(self.bs), Some(size))?;
        Ok(size)
    }

    /// `share_blocks` reading the source's extents in `view`; `size`: the file's size when
    /// done (else whole blocks).
    #[allow(clippy::too_many_arguments)]
    fn share_from(&self, view: &crate::volume::view::View, src: u64, src_idx: u64, dst: u64, dst_idx: u64, count: u64, size: Option<u64>) -> FsResult<()> {
        let dnode = self.node(dst)?;
        let mut dn = lock(&dnode)?;
        self.settle(dst, &mut dn)?;
        let mut done = 0;
        while done < count {
            let k = (count - done).min(PURGE_BATCH);
            let (s0, d0) = (src_idx + done, dst_idx + done);
            let src_ext: std::collections::HashMap<u64, _> =
                view.extents(src, s0, s0 + k)?.into_iter().map(|(i, _, h)| (i - s0, h)).collect();
            // Under the batch's pins, as `purge`.
            let mut t = self.txn()?;
            let old = self.view.extent_map(dst, d0, d0 + k)?;
            let mut delta = 0;
            for j in 0..k {
                let new = match src_ext.get(&j) {
                    Some(h) => Ext::Shared(*h),
                    None => Ext::Hole,
                };
                delta += t.set_extent(dst, d0 + j, old.get(&(d0 + j)).copied(), new)?;
            }
            self.drop_clean(&mut dn, d0..d0 + k);
            let now = Ts::now();
            let mut rec = dn.rec.clone();
            rec.size = rec.size.max(match size {
                Some(s) => ((d0 + k) * self.bs).min(s),
                None => (d0 + k) * self.bs,
            });
            rec.mtime = now;
            rec.ctime = now;
            rec.blocks = rec.blocks.saturating_add_signed(delta);
            let rec = self.stage_node(&mut t, dst, &dn, rec)?;
            t.commit(false)?;
            self.applied(dst, &mut dn, rec);
            done += k;
        }
        Ok(())
    }

    /// The inode's attributes (as memory has them: a flush in flight does not delay them).
    pub fn entry(&self, ino: u64) -> FsResult<Entry> {
        let node = self.node(ino)?;
        let n = lock_busy(&node)?;
        Ok(Entry::of(ino, &n, self.bs))
    }
}
