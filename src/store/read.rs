//! Block reads: locators looked up in `refs`, adjacent blocks read as one run, runs read
//! ahead, every block checked against its hash (a mismatch is EIO, never wrong bytes).

use super::*;

/// A read of at least this many adjacent bytes reads as many after them ahead, and
/// `STREAM_AHEAD` times as many in a stream of such reads (`read_runs`).
const READ_AHEAD_MIN: usize = 256 << 10;
const STREAM_AHEAD: usize = 4;
/// Runs from which a read hands them all to the kernel's readahead before reading any.
const SCATTERED_RUNS: usize = 16;

impl Store {
    /// The bytes of blocks by hash (None for a block not stored): their locators from
    /// `refs`, then the bytes from the log, in locator order, adjacent blocks in one read.
    /// Bytes that do not hash to the block's name are never returned: the read fails (EIO).
    pub fn get_blocks(&self, hashes: &[Hash]) -> Result<Vec<Option<Vec<u8>>>> {
        let mut out = vec![None; hashes.len()];
        self.visit_runs(hashes, |blocks, bytes| {
            // One block (a random read): its buffer is the block, no copy.
            if let [(i, size)] = blocks {
                if bytes.len() == *size {
                    out[*i] = Some(bytes.into_vec());
                    return;
                }
            }
            let mut at = 0;
            for &(i, size) in blocks {
                out[i] = Some(bytes[at..at + size].to_vec());
                at += size;
            }
        })?;
        Ok(out)
    }

    /// Hands the kernel's readahead the stored bytes of blocks `hashes`, to be read soon
    /// (one multi-get of their locators); blocks not stored are skipped.
    pub fn read_ahead(&self, hashes: &[Hash]) -> Result<()> {
        for rec in self.ref_recs(hashes)?.into_iter().flatten() {
            self.log.prefetch(rec.loc, rec.size as usize);
        }
        Ok(())
    }

    /// `get_blocks` by runs: hands `f` each read of adjacent blocks, checked, as (index in
    /// `hashes`, size) of its blocks in order and their bytes, so a reader can take the
    /// buffer as it is (a file read in the order it was written). The blocks may be a
    /// prefix of the bytes (the rest moved by the cleaner meanwhile, handed over later).
    /// Blocks not stored are not handed over.
    pub fn visit_runs(&self, hashes: &[Hash], mut f: impl FnMut(&[(usize, usize)], ReadBytes)) -> Result<()> {
        let mut want: Vec<usize> = (0..hashes.len()).collect();
        // A second round for blocks the cleaner moved between the lookup and the read.
        for _ in 0..3 {
            let mut locs: Vec<(usize, u64, usize)> = Vec::with_capacity(want.len());
            for (i, rec) in want.iter().zip(self.ref_recs(want.iter().map(|i| &hashes[*i]))?) {
                if let Some(rec) = rec {
                    locs.push((*i, rec.loc, rec.size as usize));
                }
            }
            locs.sort_by_key(|l| l.1);
            // Runs of adjacent blocks: (first, end, bytes), one read each.
            let mut runs = Vec::new();
            let mut run = 0;
            while run < locs.len() {
                let mut end = run + 1;
                let mut len = locs[run].2;
                while end < locs.len()
                    && locs[end].1 == locs[end - 1].1 + locs[end - 1].2 as u64
                    && segment::split(locs[end].1).0 == segment::split(locs[run].1).0
                    && len < (8 << 20)
                {
                    len += locs[end].2;
                    end += 1;
                }
                runs.push((run, end, len));
                run = end;
            }
            let reads = self.read_runs(&locs, &runs);
            let mut moved = Vec::new();
            // Bytes that fail their hash in a segment retired since the lookup are a recycled
            // segment's new records (`Log::retire`): the block moved, look it up again.
            let gone = |loc: u64| !self.log.has(segment::split(loc).0);
            for (&(run, end, _), read) in runs.iter().zip(reads) {
                match read {
                    Ok(Some(bytes)) => {
                        let mut at = 0;
                        let mut good = Vec::with_capacity(end - run);
                        for (k, &(i, loc, size)) in locs[run..end].iter().enumerate() {
                            if self.hash(&bytes[at..at + size]) != hashes[i] {
                                if gone(loc) {
                                    moved.extend(locs[run + k..end].iter().map(|l| l.0));
                                    break;
                                }
                                return Err(self.damaged(&hashes[i], loc, "does not match its hash"));
                            }
                            good.push((i, size));
                            at += size;
                        }
                        if !good.is_empty() {
                            f(&good, bytes);
                        }
                    }
                    Ok(None) => moved.extend(locs[run..end].iter().map(|l| l.0)),
                    Err(_) if gone(locs[run].1) => moved.extend(locs[run..end].iter().map(|l| l.0)),
                    Err(e) => return Err(self.damaged(&hashes[locs[run].0], locs[run].1, &e.to_string())),
                }
            }
            if moved.is_empty() {
                return Ok(());
            }
            want = moved;
        }
        Err(self.damaged(&hashes[want[0]], 0, "its segment is gone"))
    }

    /// Reads each run (first, end, bytes) of `locs`. Many scattered runs (a file rewritten at
    /// random and read in order, a flush completing partly written blocks from cold data, the
    /// cleaner) all go to the kernel's readahead first, so the disk serves them in parallel,
    /// and are then read in turn: by then most are in the page cache or on their way. Eight
    /// threads reading them (spawned per read) were slower: a cold sequential read of a 1 GiB
    /// file rewritten by 4 KiB random writes ran at 673-749 MiB/s in ten runs against
    /// 706-826 read in turn, the disk's queue ~52 reads deep either way (16 threads: 548).
    fn read_runs(&self, locs: &[(usize, u64, usize)], runs: &[(usize, usize, usize)]) -> Vec<Result<Option<ReadBytes>>> {
        if runs.len() >= SCATTERED_RUNS {
            for &(run, _, len) in runs {
                self.log.prefetch(locs[run].1, len);
            }
        } else if let Some(&(first, end, len)) = runs.last().filter(|r| r.2 >= READ_AHEAD_MIN) {
            // A sequential read of a file written in order: its next bytes follow in the
            // segment. Read them ahead while this reply goes back; further ahead when this
            // run lies near where the last long one ended (a stream; the FUSE threads answer
            // its reads a little out of order): a cold sequential read gained 13-30% going
            // 4 runs ahead instead of 1, which a lone long read would only waste.
            let (_, loc, size) = locs[end - 1];
            let next = loc + size as u64;
            let last = self.last_long_read.swap(next, Ordering::Relaxed);
            let span = STREAM_AHEAD as u64 * len as u64;
            let stream = locs[first].1.abs_diff(last) <= span;
            self.log.prefetch(next, if stream { span as usize } else { len });
        }
        runs.iter().map(|&(run, _, len)| self.log.read(locs[run].1, len)).collect()
    }

    /// A block read that failed: logged, counted, and EIO to the reader. `clonefs scrub`
    /// says which files use the block.
    pub(super) fn damaged(&self, h: &Hash, loc: u64, why: &str) -> Error {
        self.read_errors.fetch_add(1, Ordering::Relaxed);
        let (seg, off) = segment::split(loc);
        log::error!("block {} (segment {seg} offset {off}) cannot be read: {why}", records::hex(h));
        Error::Corrupt(format!("block {} cannot be read: {why}", records::hex(h)))
    }

    /// Block reads that failed since the daemon started.
    pub fn read_errors(&self) -> u64 {
        self.read_errors.load(Ordering::Relaxed)
    }
}
