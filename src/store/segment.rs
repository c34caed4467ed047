//! The segment log: where block bytes live, and the intent log of every commit
//! (invariants 17 and 18 in docs/ARCHITECTURE.md).
//!
//! A segment is a file `STORE/seg/NNNNNNNNNN`, preallocated to `SEGMENT_SIZE` and written
//! only by appending records. A record is one commit: a header, the bytes of the blocks the
//! commit stores (in the order the commit staged them, so a file written sequentially lies
//! sequentially; 4 KiB aligned in the file when the record is large), then the commit's
//! RocksDB write batch:
//!
//! ```text
//! 0  magic u32 | 4 version u16 | 6 flags u8 | 7 unused u8 | 8 seq u64 | 16 boot u64
//! 24 prev u64 | 32 data_len u64 | 40 batch_len u32 | 44 data_off u32 | 48 sum u64
//! 56 unused u64
//! data_off: data (data_len bytes) | batch (batch_len bytes) | zeros to a multiple of 8
//!           (of 4 KiB, with flag DIRECT)
//! ```
//!
//! A large record's data and batch are written with O_DIRECT from one reused aligned buffer
//! (flag DIRECT: the record then ends on a 4 KiB boundary): writing them through the page
//! cache cost more than everything else in a sequential write (allocating and filling new
//! cache pages ran at 0.6-0.8 GB/s here, against 5 GB/s for a copy into a reused buffer).
//!
//! `sum` is xxh3-64 of the header (with sum 0), data and batch: a torn or scribbled record
//! fails it. `prev` is the id (`record_id`) of the record before; `boot` is random per open,
//! so a stale record that happens to lie past the end of the log after a crash never chains
//! onto a newer one. RocksDB is written without its WAL; the log is what start-up replays.

use crate::error::{Error, Result};
use crate::store::sync::SyncGroup;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

/// Size of a segment: a record that does not fit in what is left starts a new one, and a
/// record larger than a segment makes its segment longer.
pub const SEGMENT_SIZE: u64 = 64 << 20;
/// Small records (fsync'd writes) go into space zero-filled this far ahead, so an
/// fdatasync need not commit a size change too. Large records are appended without: ext4
/// writes into preallocated (unwritten) space at a seventh of the speed of an append.
/// Not more: a file's flush (a large record) skips over what is left, and the next fsync's
/// sync writes those zeros (4 MiB took 15-20 ms of one fsync).
const PREALLOC: u64 = 1 << 20;
/// The runway is kept only while somebody syncs: this long after the last sync asked for,
/// small records append at the end instead (`cp -a`, a build: zero-filling 1 MiB per MiB
/// of log was 5% of the daemon's samples in `cp -a`, and its zeros went to the disk for no sync).
const RUNWAY_AFTER_SYNC_MS: u64 = 1000;
/// Emptied segments kept (at most) to become log segments (`Log::retire`): a recycled file is written
/// in full already, so records go into it without zeros ahead (a quarter of the disk writes
/// under pgbench) and an fdatasync commits no size change. Stale records in it never chain
/// onto the log (invariant 22).
const RECYCLE_MAX: usize = 2;
/// How far ahead of the records a recycled segment's pages are read into the page cache: a
/// small record over a page not in the cache would wait for the page's read.
const WARM_AHEAD: u64 = 2 << 20;
const SMALL_RECORD: u64 = 1 << 20;
/// Reads of this many bytes or more map the segment's pages (`Log::read`); shorter ones
/// copy, which costs less than a mapping (a 16 KiB block took 3 times as long mapped).
const MAP_MIN: usize = 256 << 10;
/// Segments kept mapped at most (`Log::mapping`): 2 GiB of address space.
const MAPS_MAX: usize = 32;
const MAGIC: u32 = 0x5253_4643; // "CFSR"
const VERSION: u16 = 1;
pub const HEADER: u64 = 64;
const ALIGN: u64 = 4096;
/// Header flag: the record's data and batch were written with O_DIRECT and it ends on an
/// `ALIGN` boundary.
const DIRECT: u8 = 1;
/// Largest record body written with O_DIRECT (the buffer the writer keeps for it).
const DIRECT_MAX: u64 = 16 << 20;
/// Block bytes from which a record's blocks start `ALIGN`ed, so it may be written with
/// O_DIRECT (a record of `SMALL_RECORD` or more).
const DIRECT_MIN_DATA: u64 = SMALL_RECORD / 2;
/// Largest buffer `prewrite` keeps for the next one (a file's flush is 8 MiB).
const SPARE_MAX: usize = 8 << 20;
const OFFSET_BITS: u32 = 40;
/// Segments numbered from here are data segments: they hold the blocks of large commits,
/// written and synced before the commit lock is taken (`Log::prewrite`), and no record.
/// The log's own segments count up from 1 and never get near it (it is 512 TiB of log).
pub const DATA_FIRST: u32 = 1 << 23;

pub fn is_data(seg: u32) -> bool {
    seg >= DATA_FIRST
}

/// A block's locator: its segment and byte offset in one number, ordered as the log is.
pub fn locator(seg: u32, off: u64) -> u64 {
    ((seg as u64) << OFFSET_BITS) | off
}

pub fn split(loc: u64) -> (u32, u64) {
    ((loc >> OFFSET_BITS) as u32, loc & ((1u64 << OFFSET_BITS) - 1))
}

/// The locators of segment `seg` are [first, end).
pub fn segment_range(seg: u32) -> (u64, u64) {
    (locator(seg, 0), locator(seg + 1, 0))
}

/// Where a record starts and who it is: what each commit writes into `Flog`, and what
/// start-up replays after.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mark {
    pub seq: u64,
    pub seg: u32,
    pub off: u64,
}

impl Mark {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(20);
        v.extend_from_slice(&self.seq.to_le_bytes());
        v.extend_from_slice(&self.seg.to_le_bytes());
        v.extend_from_slice(&self.off.to_le_bytes());
        v
    }
    pub fn decode(b: &[u8]) -> Result<Mark> {
        if b.len() != 20 {
            return Err(Error::Corrupt("bad log mark".into()));
        }
        let u = |r: std::ops::Range<usize>| b[r].iter().rev().fold(0u64, |a, x| (a << 8) | *x as u64);
        Ok(Mark { seq: u(0..8), seg: u(8..12) as u32, off: u(12..20) })
    }
}

fn record_id(seq: u64, boot: u64, seg: u32, off: u64) -> u64 {
    let mut b = [0u8; 28];
    b[..8].copy_from_slice(&seq.to_le_bytes());
    b[8..16].copy_from_slice(&boot.to_le_bytes());
    b[16..20].copy_from_slice(&seg.to_le_bytes());
    b[20..].copy_from_slice(&off.to_le_bytes());
    xxhash_rust::xxh3::xxh3_64(&b)
}

fn align(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

/// A record about to be written: where its blocks go.
pub struct Plan {
    pub mark: Mark,
    /// Offset in the segment of the first block.
    pub data_at: u64,
    data_len: u64,
}

impl Plan {
    pub fn locator(&self, within: u64) -> u64 {
        locator(self.mark.seg, self.data_at + within)
    }
}

/// The append end of the log. Owned by the store's commit lock: only a commit (or a
/// checkpoint) holding it writes, so records follow the order of RocksDB writes.
pub struct Writer {
    seg: u32,
    file: Arc<File>,
    off: u64,
    /// Bytes allocated to the file (its length).
    size: u64,
    seq: u64,
    prev: u64,
    boot: u64,
    /// Record bytes written since the last checkpoint (its replay cost).
    pub since_checkpoint: u64,
    /// Batch bytes written since the last checkpoint (what the memtables grew by).
    pub meta_since_checkpoint: u64,
    pub last_checkpoint: std::time::Instant,
    /// Set when a logged commit could not be applied: nothing may build on it until a
    /// restart replays it.
    pub broken: Option<String>,
    /// The segment of the last record written (after a roll, the one before `seg` until a
    /// record goes into `seg`).
    last_seg: u32,
    /// `file` opened with O_DIRECT, for large records (None where the filesystem refuses it).
    direct: Option<File>,
    /// The aligned buffer a large record is assembled in (allocated on first use).
    buf: Vec<u8>,
    /// In a recycled segment, the offset up to which its pages were asked into the page
    /// cache (`WARM_AHEAD`); None in a segment this log created.
    warm: Option<u64>,
}

/// The append end of the data segments.
struct DataEnd {
    /// The segment written now (None until the first large commit after the start) and
    /// its O_DIRECT descriptor.
    active: Option<(u32, Arc<File>)>,
    off: u64,
    next: u32,
    /// The filesystem refused O_DIRECT (tmpfs): no data segments.
    refused: bool,
    /// Regions reserved and not yet committed or given up, per segment: the cleaner leaves
    /// such a segment alone, since a commit may still name blocks in it.
    pending: BTreeMap<u32, usize>,
}

/// Blocks a large commit wrote ahead of taking the commit lock: the locator of each, in
/// the order given, in data segment `seg`.
pub struct Prewritten {
    pub seg: u32,
    pub locs: Vec<u64>,
}

struct Unsynced {
    /// Segments left behind by a roll and not yet synced, oldest first.
    files: Vec<Arc<File>>,
}

/// Bytes read from a segment: copied, or (a long run) the page cache's pages, mapped for
/// as long as the value lives (hold it no longer than one reply: `sys::Mapping`).
pub enum ReadBytes {
    Owned(Vec<u8>),
    Mapped { map: Arc<crate::sys::Mapping>, off: usize, len: usize },
}

impl std::ops::Deref for ReadBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ReadBytes::Owned(v) => v,
            ReadBytes::Mapped { map, off, len } => map.slice(*off, *len),
        }
    }
}

impl Drop for ReadBytes {
    fn drop(&mut self) {
        if let ReadBytes::Mapped { map, off, len } = self {
            map.release(*off, *len);
        }
    }
}

impl ReadBytes {
    pub fn into_vec(mut self) -> Vec<u8> {
        match &mut self {
            ReadBytes::Owned(v) => std::mem::take(v),
            ReadBytes::Mapped { .. } => self.to_vec(),
        }
    }
}

pub struct Log {
    dir: PathBuf,
    files: RwLock<BTreeMap<u32, Arc<File>>>,
    unsynced: Mutex<Unsynced>,
    /// Highest record seq fully written (readable by a sync).
    written: std::sync::atomic::AtomicU64,
    /// The file the writer appends to, for syncs that run outside the commit lock.
    active: Mutex<Arc<File>>,
    syncs: SyncGroup,
    data: Mutex<DataEnd>,
    /// A buffer `prewrite` reuses (allocating and faulting in 8 MiB per flush cost a
    /// sequential writer 12%); taken out while in use.
    spare: Mutex<Vec<u8>>,
    /// When a sync was last asked for (`wants_syncs`), in ms since `opened`; 0: never.
    sync_wanted_ms: std::sync::atomic::AtomicU64,
    opened: std::time::Instant,
    /// Emptied segments waiting to become the next log segment (`retire`, `roll`), still
    /// under their old names on disk (a crash leaves them empty segments the cleaner takes
    /// again).
    recycled: Mutex<Vec<(u32, Arc<File>)>>,
    /// Segments mapped for long reads (`mapping`).
    maps: Mutex<BTreeMap<u32, Arc<crate::sys::Mapping>>>,
    /// The kernel cannot populate a mapping (`read` copies instead).
    no_maps: std::sync::atomic::AtomicBool,
}

fn seg_path(dir: &Path, seg: u32) -> PathBuf {
    dir.join(format!("{seg:010}"))
}

fn open_seg(dir: &Path, seg: u32) -> Result<File> {
    Ok(OpenOptions::new().read(true).write(true).open(seg_path(dir, seg))?)
}

/// A record read back: its id, batch, and where the next one starts.
struct Found {
    seq: u64,
    id: u64,
    batch: Vec<u8>,
    end: u64,
}

/// Reads and checks the record at `off` of `file`; None when there is none (zeros, torn,
/// damaged, or not the one expected: `expect` is (seq, prev id)).
fn read_record(file: &File, seg: u32, off: u64, expect: Option<(u64, u64)>) -> Result<Option<Found>> {
    let len = file.metadata()?.len();
    if off + HEADER > len {
        return Ok(None);
    }
    let mut h = [0u8; HEADER as usize];
    file.read_exact_at(&mut h, off)?;
    let u64at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().unwrap_or_default());
    let u32at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().unwrap_or_default());
    if u32at(0) != MAGIC || u16::from_le_bytes([h[4], h[5]]) != VERSION {
        return Ok(None);
    }
    let (seq, boot, prev, data_len, batch_len, data_off, sum) =
        (u64at(8), u64at(16), u64at(24), u64at(32), u32at(40) as u64, u32at(44) as u64, u64at(48));
    if let Some((s, p)) = expect {
        if seq != s || prev != p {
            return Ok(None);
        }
    }
    // Checked: a scribbled header can hold any lengths.
    let end = match off.checked_add(data_off).and_then(|x| x.checked_add(data_len)).and_then(|x| x.checked_add(batch_len)) {
        Some(e) if e <= len => align(e, if h[6] & DIRECT != 0 { ALIGN } else { 8 }),
        _ => return Ok(None),
    };
    if data_off < HEADER || end > len {
        return Ok(None);
    }
    let mut body = vec![0u8; (data_len + batch_len) as usize];
    file.read_exact_at(&mut body, off + data_off)?;
    h[48..56].fill(0);
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(&h);
    hasher.update(&body);
    if hasher.digest() != sum {
        return Ok(None);
    }
    let batch = body.split_off(data_len as usize);
    Ok(Some(Found { seq, id: record_id(seq, boot, seg, off), batch, end }))
}

impl Log {
    /// Creates the log of a new store: an empty `seg` directory.
    pub fn init(store: &Path) -> Result<()> {
        let dir = store.join("seg");
        std::fs::create_dir(&dir)?;
        Ok(())
    }

    /// Opens the log and hands every record after `mark` (the last one RocksDB holds) to
    /// `apply`, in order, stopping at the first missing, torn or foreign record. Returns the
    /// log and its writer, which appends after the last record replayed. `mark` None: a new
    /// store, whose log is empty.
    pub fn open(store: &Path, mark: Option<Mark>, mut apply: impl FnMut(&[u8]) -> Result<()>) -> Result<(Log, Writer)> {
        let dir = store.join("seg");
        if !dir.is_dir() {
            return Err(Error::Corrupt(format!("{} is missing: not a store of this format", dir.display())));
        }
        let mut files = BTreeMap::new();
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            let name = e.file_name();
            let seg: u32 = name.to_str().and_then(|s| s.parse().ok()).ok_or_else(|| {
                Error::Corrupt(format!("unexpected file {} in {}", name.to_string_lossy(), dir.display()))
            })?;
            files.insert(seg, Arc::new(open_seg(&dir, seg)?));
        }
        // Where the log stands: the record `mark` names, then every record chained after it.
        let (mut seg, mut off, mut seq, mut prev) = (1u32, 0u64, 0u64, 0u64);
        if let Some(m) = mark {
            let f = files.get(&m.seg).ok_or_else(|| {
                Error::Corrupt(format!("segment {} holding the last checkpointed commit is missing", m.seg))
            })?;
            let r = read_record(f, m.seg, m.off, None)?
                .filter(|r| r.seq == m.seq)
                .ok_or_else(|| Error::Corrupt(format!("the last checkpointed commit ({}) is damaged in segment {}", m.seq, m.seg)))?;
            (seg, off, seq, prev) = (m.seg, r.end, r.seq, r.id);
            let mut replayed = 0u64;
            loop {
                let here = files.get(&seg).map(|f| read_record(f, seg, off, Some((seq + 1, prev)))).transpose()?.flatten();
                let (s, r) = match here {
                    Some(r) => (seg, r),
                    // The writer rolled to the next segment for this record.
                    None => match files.get(&(seg + 1)).map(|f| read_record(f, seg + 1, 0, Some((seq + 1, prev)))).transpose()?.flatten() {
                        Some(r) => (seg + 1, r),
                        None => break,
                    },
                };
                apply(&r.batch)?;
                (seg, off, seq, prev) = (s, r.end, r.seq, r.id);
                replayed += 1;
            }
            if replayed > 0 {
                log::info!("replayed {replayed} commits from the log (up to {seq})");
            }
        }
        // Segments past the end hold only records no commit reached (a torn tail's rest).
        // Data segments stay: what they hold is named by the records, or dead.
        let stale: Vec<u32> = files.range(seg + 1..DATA_FIRST).map(|(s, _)| *s).collect();
        let next_data = files.range(DATA_FIRST..).next_back().map_or(DATA_FIRST, |(s, _)| s + 1);
        for s in stale {
            files.remove(&s);
            std::fs::remove_file(seg_path(&dir, s))?;
        }
        let file = match files.get(&seg) {
            Some(f) => f.clone(),
            None => {
                let f = Arc::new(create_seg(&dir, seg)?);
                files.insert(seg, f.clone());
                f
            }
        };
        let size = file.metadata()?.len();
        let boot = u64::from_le_bytes(crate::store::random_bytes(8)?.try_into().unwrap_or_default());
        let direct = open_direct(&dir, seg);
        let log = Log {
            dir,
            files: RwLock::new(files),
            unsynced: Mutex::new(Unsynced { files: Vec::new() }),
            written: seq.into(),
            active: Mutex::new(file.clone()),
            syncs: SyncGroup::default(),
            data: Mutex::new(DataEnd { active: None, off: 0, next: next_data, refused: false, pending: BTreeMap::new() }),
            spare: Mutex::new(Vec::new()),
            sync_wanted_ms: 0.into(),
            opened: std::time::Instant::now(),
            recycled: Mutex::new(Vec::new()),
            maps: Mutex::new(BTreeMap::new()),
            no_maps: false.into(),
        };
        let w = Writer { seg, file, off, size, seq, prev, boot, since_checkpoint: 0, meta_since_checkpoint: 0, last_checkpoint: std::time::Instant::now(), broken: None, last_seg: seg, direct, buf: Vec::new(), warm: None };
        Ok((log, w))
    }

    /// Plans the next record, which stores `data_len` bytes of blocks: rolls to a new
    /// segment when this one has no room for it.
    pub fn plan(&self, w: &mut Writer, data_len: u64) -> Result<Plan> {
        let need = |off: u64| align(off + HEADER, ALIGN) + data_len + ALIGN;
        if w.off > 0 && need(w.off) > SEGMENT_SIZE {
            self.roll(w)?;
        }
        // Only a record that may go around the page cache (`write`) needs its blocks aligned;
        // a small one's follow its header: fewer log bytes per fsync, so the runway's zeros
        // (whose sync is the slow one) come less often.
        let data_at = if data_len >= DIRECT_MIN_DATA { align(w.off + HEADER, ALIGN) } else { w.off + HEADER };
        Ok(Plan { mark: Mark { seq: w.seq + 1, seg: w.seg, off: w.off }, data_at, data_len })
    }

    /// Starts segment `w.seg + 1`. Its directory entry is made durable here (under the
    /// commit lock: rare, and the next record must not be acknowledged before it).
    fn roll(&self, w: &mut Writer) -> Result<()> {
        let seg = w.seg + 1;
        let (file, size, warm) = match self.reuse(seg)? {
            Some((f, len)) => {
                // Its first pages now (no wait), the rest as records reach them.
                let _ = crate::sys::will_need(&f, 0, WARM_AHEAD);
                (f, len, Some(WARM_AHEAD))
            }
            None => (Arc::new(create_seg(&self.dir, seg)?), 0, None),
        };
        self.files.write().map_err(|_| poisoned())?.insert(seg, file.clone());
        self.unsynced.lock().map_err(|_| poisoned())?.files.push(w.file.clone());
        *self.active.lock().map_err(|_| poisoned())? = file.clone();
        w.seg = seg;
        w.file = file;
        w.direct = open_direct(&self.dir, seg);
        w.off = 0;
        w.size = size;
        w.warm = warm;
        Ok(())
    }

    /// A recycled segment renamed to `seg`, and its length; its directory entry is durable
    /// when this returns. None when there is none (or the rename failed: a new one is made).
    fn reuse(&self, seg: u32) -> Result<Option<(Arc<File>, u64)>> {
        let Some((old, f)) = self.recycled.lock().map_err(|_| poisoned())?.pop() else { return Ok(None) };
        let len = f.metadata()?.len();
        if let Err(e) = std::fs::rename(seg_path(&self.dir, old), seg_path(&self.dir, seg)) {
            log::warn!("could not reuse segment {old} as {seg} ({e}); deleting it");
            let _ = std::fs::remove_file(seg_path(&self.dir, old));
            return Ok(None);
        }
        File::open(&self.dir)?.sync_all()?;
        crate::metrics::get().segments_recycled.inc();
        Ok(Some((f, len)))
    }

    /// Writes the planned record: `blocks` (in plan order, `data_len` bytes in all) and the
    /// RocksDB batch that names them. Returns its seq.
    pub fn write(&self, w: &mut Writer, plan: Plan, blocks: &[&[u8]], batch: &[u8]) -> Result<u64> {
        let Plan { mark, data_at, data_len } = plan;
        let data_off = data_at - mark.off;
        let body = data_len + batch.len() as u64;
        // Large records with blocks (their data starts aligned) go around the page cache.
        let direct = w.direct.is_some() && data_len >= DIRECT_MIN_DATA && data_at % ALIGN == 0 && data_off + body >= SMALL_RECORD && body <= DIRECT_MAX;
        let total = if direct { data_off + align(body, ALIGN) } else { align(data_off + body, 8) };
        if blocks.iter().map(|b| b.len() as u64).sum::<u64>() != data_len {
            return Err(Error::Corrupt("planned and written block bytes differ".into()));
        }
        // The header and the zeros up to the first block.
        let mut head = [0u8; (HEADER + ALIGN) as usize];
        let head = &mut head[..data_off as usize];
        head[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        head[4..6].copy_from_slice(&VERSION.to_le_bytes());
        head[6] = if direct { DIRECT } else { 0 };
        head[8..16].copy_from_slice(&mark.seq.to_le_bytes());
        head[16..24].copy_from_slice(&w.boot.to_le_bytes());
        head[24..32].copy_from_slice(&w.prev.to_le_bytes());
        head[32..40].copy_from_slice(&data_len.to_le_bytes());
        head[40..44].copy_from_slice(&(batch.len() as u32).to_le_bytes());
        head[44..48].copy_from_slice(&(data_off as u32).to_le_bytes());
        let pad = [0u8; ALIGN as usize];
        let tail = (total - data_off - body) as usize;
        let end = mark.off + total;
        if let Some(warm) = w.warm.filter(|warm| end + WARM_AHEAD / 2 > *warm && *warm < w.size) {
            let _ = crate::sys::will_need(&w.file, warm, WARM_AHEAD);
            w.warm = Some(warm + WARM_AHEAD);
        }
        if end > w.size && total < SMALL_RECORD && self.syncing() {
            let to = align(end, PREALLOC) + PREALLOC;
            match zero_fill(&w.file, w.size, to) {
                Ok(()) => {
                    crate::metrics::get().log_zero_bytes.inc_by(to - w.size);
                    w.size = to;
                }
                // A full disk: the write below extends the file if there is room at all.
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {}
                Err(e) => return Err(e.into()),
            }
        }
        // Durable at the next sync (the page cache, or the device's cache for O_DIRECT).
        // Under the commit lock, since the record must be readable before RocksDB names its
        // blocks. The header, which carries the sum, goes last.
        let direct = direct.then(|| self.write_direct(w, head, blocks, batch, tail, data_at)).and_then(|r| r.ok());
        match direct {
            Some(sum) => {
                head[48..56].copy_from_slice(&sum.to_le_bytes());
                w.file.write_all_at(head, mark.off)?;
            }
            None => {
                let mut hasher = xxhash_rust::xxh3::Xxh3::new();
                hasher.update(&head[..HEADER as usize]);
                for b in blocks {
                    hasher.update(b);
                }
                hasher.update(batch);
                head[48..56].copy_from_slice(&hasher.digest().to_le_bytes());
                // The blocks and the batch are written from where they are (no copy).
                let mut parts: Vec<&[u8]> = Vec::with_capacity(blocks.len() + 3);
                parts.push(head);
                parts.extend_from_slice(blocks);
                parts.push(batch);
                parts.push(&pad[..tail]);
                crate::sys::pwritev_all(&w.file, &parts, mark.off)?;
            }
        }
        w.prev = record_id(mark.seq, w.boot, mark.seg, mark.off);
        w.last_seg = mark.seg;
        w.seq = mark.seq;
        w.off = mark.off + total;
        w.size = w.size.max(end);
        w.since_checkpoint += total;
        crate::metrics::get().log_record_bytes.inc_by(total);
        self.written.store(w.seq, std::sync::atomic::Ordering::Release);
        Ok(w.seq)
    }

    /// Writes the blocks, the batch and `tail` zeros (whole `ALIGN` units in all) at `at`
    /// (aligned) with O_DIRECT, through the writer's aligned buffer, and returns the record's
    /// sum (over `head`'s first `HEADER` bytes, the blocks and the batch), hashed by a second
    /// thread while the write runs. A failed write turns O_DIRECT off for this segment (the
    /// caller then writes the record through the page cache).
    fn write_direct(&self, w: &mut Writer, head: &[u8], blocks: &[&[u8]], batch: &[u8], tail: usize, at: u64) -> std::io::Result<u64> {
        let body: usize = blocks.iter().map(|b| b.len()).sum::<usize>() + batch.len();
        let len = body + tail;
        if w.buf.len() < len + ALIGN as usize {
            w.buf = vec![0u8; len + ALIGN as usize];
        }
        let start = w.buf.as_ptr().align_offset(ALIGN as usize);
        let buf = &mut w.buf[start..start + len];
        let mut i = 0;
        for p in blocks.iter().chain(std::iter::once(&batch)) {
            buf[i..i + p.len()].copy_from_slice(p);
            i += p.len();
        }
        buf[body..].fill(0);
        let Some(f) = &w.direct else { return Err(std::io::ErrorKind::Unsupported.into()) };
        let buf = &*buf;
        let (r, sum) = std::thread::scope(|s| {
            let sum = s.spawn(|| {
                let mut hasher = xxhash_rust::xxh3::Xxh3::new();
                hasher.update(&head[..HEADER as usize]);
                hasher.update(&buf[..body]);
                hasher.digest()
            });
            (f.write_all_at(buf, at), sum.join())
        });
        if let Err(e) = &r {
            log::warn!("O_DIRECT write to segment {} failed ({e}); writing through the page cache instead", w.seg);
            w.direct = None;
        }
        r?;
        sum.map_err(|_| std::io::Error::other("the record sum thread panicked"))
    }

    /// Writes `blocks` one after the other into the active data segment with O_DIRECT and
    /// syncs it, without the commit lock: a commit that then names them depends on nothing
    /// unsynced (invariant 17). The region stays pending until `release(seg)`. None where
    /// the segment's filesystem refuses O_DIRECT (tmpfs): the commit's record holds the
    /// blocks then. On an error the region is released and left dead.
    pub fn prewrite(&self, blocks: &[&[u8]]) -> Result<Option<Prewritten>> {
        let len: u64 = blocks.iter().map(|b| b.len() as u64).sum();
        let total = align(len, ALIGN);
        let (seg, file, at) = {
            let mut d = self.data.lock().map_err(|_| poisoned())?;
            if d.refused {
                return Ok(None);
            }
            if d.active.is_none() || (d.off > 0 && d.off + total > SEGMENT_SIZE) {
                // Created (and its directory entry synced) under the lock: once per 64 MiB,
                // and no region may be reserved in a segment that could vanish in a crash.
                let seg = d.next;
                let f = Arc::new(create_seg(&self.dir, seg)?);
                d.next += 1;
                self.files.write().map_err(|_| poisoned())?.insert(seg, f);
                let Some(direct) = open_direct(&self.dir, seg) else {
                    (d.active, d.refused) = (None, true);
                    self.delete(seg)?;
                    return Ok(None);
                };
                d.active = Some((seg, Arc::new(direct)));
                d.off = 0;
            }
            let Some((seg, file)) = d.active.clone() else { return Ok(None) };
            let at = d.off;
            d.off += total;
            *d.pending.entry(seg).or_default() += 1;
            (seg, file, at)
        };
        let mut buf = self.spare.lock().map(|mut b| std::mem::take(&mut *b)).unwrap_or_default();
        let r = (|| -> std::io::Result<()> {
            if buf.len() < total as usize + ALIGN as usize {
                buf = vec![0u8; total as usize + ALIGN as usize];
            }
            let start = buf.as_ptr().align_offset(ALIGN as usize);
            let aligned = &mut buf[start..start + total as usize];
            let mut i = 0;
            for b in blocks {
                aligned[i..i + b.len()].copy_from_slice(b);
                i += b.len();
            }
            aligned[i..].fill(0);
            file.write_all_at(aligned, at)?;
            crate::metrics::get().data_segment_bytes.inc_by(total);
            file.sync_data()
        })();
        if let Ok(mut spare) = self.spare.lock() {
            if buf.len() <= SPARE_MAX + ALIGN as usize && buf.len() > spare.len() {
                *spare = buf;
            }
        }
        if let Err(e) = r {
            self.release(seg);
            return Err(e.into());
        }
        let mut locs = Vec::with_capacity(blocks.len());
        let mut off = at;
        for b in blocks {
            locs.push(locator(seg, off));
            off += b.len() as u64;
        }
        Ok(Some(Prewritten { seg, locs }))
    }

    /// Ends a region `prewrite` reserved in `seg`: after its commit, whether or not it
    /// named the blocks.
    pub fn release(&self, seg: u32) {
        if let Ok(mut d) = self.data.lock() {
            if let Some(n) = d.pending.get_mut(&seg) {
                *n -= 1;
                if *n == 0 {
                    d.pending.remove(&seg);
                }
            }
        }
    }

    /// Makes the next `prewrite` start a new data segment (the cleaner can then take this
    /// one once nothing is pending in it).
    pub fn seal_data(&self) -> Result<()> {
        self.data.lock().map_err(|_| poisoned())?.active = None;
        Ok(())
    }

    /// Data segments the cleaner may take: not the active one, with no region pending.
    pub fn settled_data(&self) -> Result<std::collections::BTreeSet<u32>> {
        let d = self.data.lock().map_err(|_| poisoned())?;
        let files = self.files.read().map_err(|_| poisoned())?;
        let active = d.active.as_ref().map(|a| a.0);
        Ok(files.range(DATA_FIRST..).map(|(s, _)| *s).filter(|s| Some(*s) != active && !d.pending.contains_key(s)).collect())
    }

    /// The seq of the last record written.
    pub fn last(&self) -> u64 {
        self.written.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Notes that a caller (an fsync, a synced commit; not a checkpoint) wants syncs: small
    /// records go into a zero-filled runway for the next `RUNWAY_AFTER_SYNC_MS`.
    pub fn wants_syncs(&self) {
        let now = self.opened.elapsed().as_millis() as u64 + 1;
        self.sync_wanted_ms.store(now, std::sync::atomic::Ordering::Relaxed);
    }

    fn syncing(&self) -> bool {
        let last = self.sync_wanted_ms.load(std::sync::atomic::Ordering::Relaxed);
        last > 0 && (self.opened.elapsed().as_millis() as u64 + 1).saturating_sub(last) < RUNWAY_AFTER_SYNC_MS
    }

    /// Makes every record up to `seq` durable, sharing one `fdatasync` with every caller
    /// that arrives meanwhile (group commit).
    pub fn sync_to(&self, seq: u64) -> Result<()> {
        self.syncs.sync_to(seq, || self.last(), || self.sync_files())
    }

    /// fdatasync of the segments written since the last sync, oldest first, then the
    /// active one. Called without the commit lock, except by a checkpoint.
    fn sync_files(&self) -> Result<()> {
        let started = std::time::Instant::now();
        let active = self.active.lock().map_err(|_| poisoned())?.clone();
        let older = std::mem::take(&mut self.unsynced.lock().map_err(|_| poisoned())?.files);
        for f in older.iter().chain(std::iter::once(&active)) {
            if let Err(e) = f.sync_data() {
                // Not synced: keep them for the next try.
                self.unsynced.lock().map_err(|_| poisoned())?.files.splice(0..0, older.iter().cloned());
                return Err(e.into());
            }
        }
        crate::metrics::get().log_syncs.observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Starts reading `len` bytes at `loc` into the page cache, so that many scattered
    /// reads reach the disk at once instead of a few at a time. A hint: errors are ignored.
    pub fn prefetch(&self, loc: u64, len: usize) {
        let (seg, off) = split(loc);
        if let Some(f) = self.files.read().ok().and_then(|m| m.get(&seg).cloned()) {
            let _ = crate::sys::will_need(&f, off, len as u64);
        }
    }

    /// Reads `len` bytes at `loc`; Ok(None) when its segment is gone (the cleaner moved the
    /// block: the caller looks its locator up again). `MAP_MIN` bytes or more are mapped
    /// rather than copied (a cold sequential read spent a third of the daemon copying them
    /// out of the page cache); a page that cannot be mapped in is read with `pread`, whose
    /// error the caller gets.
    pub fn read(&self, loc: u64, len: usize) -> Result<Option<ReadBytes>> {
        use std::sync::atomic::Ordering::Relaxed;
        let (seg, off) = split(loc);
        let Some(f) = self.files.read().map_err(|_| poisoned())?.get(&seg).cloned() else { return Ok(None) };
        if len >= MAP_MIN && !self.no_maps.load(Relaxed) {
            // The pages not in memory yet are asked for first, in large reads: populating
            // alone read them by page faults, a quarter slower on a cold sequential read.
            let _ = crate::sys::will_need(&f, off, len as u64);
            match self.mapping(seg, &f).and_then(|m| m.populate(off as usize, len).map(|()| m)) {
                Ok(map) => return Ok(Some(ReadBytes::Mapped { map, off: off as usize, len })),
                Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
                    log::info!("reading segments with pread only: {e}");
                    self.no_maps.store(true, Relaxed);
                }
                Err(_) => {}
            }
        }
        Ok(Some(ReadBytes::Owned(crate::sys::pread_exact(&f, len, off)?)))
    }

    /// Segment `seg`'s mapping, made on its first long read: one per segment, for as long
    /// as it is one (`forget_map`), since mapping per read serialized the readers on the
    /// process's address space lock while they waited for the disk.
    fn mapping(&self, seg: u32, f: &File) -> std::io::Result<Arc<crate::sys::Mapping>> {
        let maps = || self.maps.lock().map_err(|_| std::io::Error::other("segment maps poisoned"));
        if let Some(m) = maps()?.get(&seg) {
            return Ok(m.clone());
        }
        // Made without the lock: mmap waits for the address space lock, which a populate
        // holds (shared) while it waits for the disk.
        // Up to the usual size even while the segment is shorter: only written bytes are read.
        let len = f.metadata()?.len().max(SEGMENT_SIZE);
        let m = Arc::new(crate::sys::Mapping::new(f, len as usize)?);
        let mut maps = maps()?;
        if let Some(other) = maps.get(&seg) {
            return Ok(other.clone());
        }
        // Kept only while it is a segment: `delete` and `retire` forget its map after
        // taking it out of `files`, so a map made after that would outlive the file.
        if self.has(seg) {
            // Bounded: a dropped map is unmapped once its last read is done.
            if maps.len() >= MAPS_MAX {
                maps.pop_first();
            }
            maps.insert(seg, m.clone());
        }
        Ok(m)
    }

    /// Drops `seg`'s mapping (the segment is going: a mapping would keep its disk space).
    fn forget_map(&self, seg: u32) {
        if let Ok(mut maps) = self.maps.lock() {
            maps.remove(&seg);
        }
    }

    /// The segments and their sizes on disk (allocated bytes).
    pub fn segments(&self) -> Result<Vec<(u32, u64)>> {
        let files = self.files.read().map_err(|_| poisoned())?;
        let mut out = Vec::with_capacity(files.len());
        for (s, f) in files.iter() {
            use std::os::unix::fs::MetadataExt;
            out.push((*s, f.metadata()?.blocks() * 512));
        }
        Ok(out)
    }

    /// Makes the next record start a new segment (the cleaner can then take this one).
    pub fn seal(&self, w: &mut Writer) -> Result<()> {
        if w.off > 0 {
            self.roll(w)?;
        }
        Ok(())
    }

    /// Deletes segment `seg`: no block lives in it and no replay starts in or before it (a
    /// log segment) or names it (a data segment).
    pub fn delete(&self, seg: u32) -> Result<()> {
        self.files.write().map_err(|_| poisoned())?.remove(&seg);
        self.forget_map(seg);
        std::fs::remove_file(seg_path(&self.dir, seg))?;
        Ok(())
    }

    /// `delete` for the cleaner: with `keep` (the disk has room to spare and the log rolls
    /// soon) and a segment of at least half the usual size, keeps the file for the log's
    /// next segment instead.
    /// Either way it is no segment any more: a read that looked its block up before the
    /// move finds it gone (or, reading on, bytes that fail their hash: the caller looks
    /// the block up again, `Store::get_blocks`). Returns whether it was kept.
    pub fn retire(&self, seg: u32, keep: bool) -> Result<bool> {
        let Some(f) = self.files.write().map_err(|_| poisoned())?.remove(&seg) else { return Ok(false) };
        self.forget_map(seg);
        let mut pool = self.recycled.lock().map_err(|_| poisoned())?;
        if keep && pool.len() < RECYCLE_MAX && f.metadata()?.len() >= SEGMENT_SIZE / 2 {
            pool.push((seg, f));
            return Ok(true);
        }
        drop(pool);
        std::fs::remove_file(seg_path(&self.dir, seg))?;
        Ok(false)
    }

    /// Deletes the segments kept for recycling (`compact`, a disk running short).
    pub fn drop_recycled(&self) -> Result<()> {
        let pool = std::mem::take(&mut *self.recycled.lock().map_err(|_| poisoned())?);
        for (seg, _) in pool {
            std::fs::remove_file(seg_path(&self.dir, seg))?;
        }
        Ok(())
    }

    /// Disk bytes of the segments kept for recycling.
    pub fn recycled_bytes(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        self.recycled.lock().map(|p| p.iter().filter_map(|(_, f)| f.metadata().ok()).map(|m| m.blocks() * 512).sum()).unwrap_or(0)
    }

    /// Whether `seg` is a segment now (not deleted or retired).
    pub fn has(&self, seg: u32) -> bool {
        self.files.read().map(|f| f.contains_key(&seg)).unwrap_or(false)
    }

    pub fn active_segment(w: &Writer) -> u32 {
        w.seg
    }

    /// Whether the log's active segment is past half full: a segment kept for reuse now
    /// is taken within the next half segment of records, not left lying on disk.
    pub fn rolls_soon(w: &Writer) -> bool {
        w.off >= SEGMENT_SIZE / 2
    }

    /// The segment holding the last record: a checkpoint's `Flog` names it, so it and every
    /// later segment stay.
    pub fn last_record_segment(w: &Writer) -> u32 {
        w.last_seg
    }
}

/// Writes zeros over [from, to) of `f`. Zeros, not `fallocate`: the next syncs write into
/// blocks that are already written, so an `fdatasync` flushes the record's pages without
/// an extent conversion and journal commit (on ext4 a 21 KB record + fdatasync ran 1.5-2.4
/// times as often); the zeros reach the disk with the first sync after them, once per
/// `PREALLOC`. Only [w.size, ..) is filled: no record lies there.
fn zero_fill(f: &File, from: u64, to: u64) -> std::io::Result<()> {
    static ZEROS: [u8; 1 << 20] = [0u8; 1 << 20];
    let mut at = from;
    while at < to {
        let n = (to - at).min(ZEROS.len() as u64) as usize;
        f.write_all_at(&ZEROS[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Segment `seg` opened for O_DIRECT writes, if the filesystem allows it (tmpfs does not).
fn open_direct(dir: &Path, seg: u32) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(seg_path(dir, seg)).ok()
}

fn poisoned() -> Error {
    Error::Corrupt("segment log state poisoned by a panic: restart the daemon".into())
}

/// A new, empty segment; its directory entry is durable when this returns.
fn create_seg(dir: &Path, seg: u32) -> Result<File> {
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(seg_path(dir, seg))?;
    f.sync_all()?;
    File::open(dir)?.sync_all()?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a small record with `batch` and returns where it ends.
    fn record(log: &Log, w: &mut Writer, batch: &[u8]) -> u64 {
        let plan = log.plan(w, 0).unwrap();
        log.write(w, plan, &[], batch).unwrap();
        w.off
    }

    #[test]
    fn small_records_get_a_zero_filled_runway_only_while_syncs_are_asked_for() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("seg")).unwrap();
        let (log, mut w) = Log::open(d.path(), None, |_| Ok(())).unwrap();
        let first = Mark { seq: w.seq + 1, seg: w.seg, off: w.off };
        let len = |w: &Writer| w.file.metadata().unwrap().len();
        // Nobody syncs (a copy, a build): the log ends where its last record does.
        let end = record(&log, &mut w, b"one");
        assert_eq!(len(&w), end);
        let end = record(&log, &mut w, b"two");
        assert_eq!(len(&w), end);
        // An fsync asked for a sync: the next small record lands in zero-filled space.
        log.wants_syncs();
        let end = record(&log, &mut w, b"three");
        assert!(len(&w) >= end + PREALLOC / 2, "no runway: file {} bytes, record ends at {end}", len(&w));
        log.sync_to(w.seq).unwrap();
        drop((log, w));
        // Every record replays, and the runway's zeros end the replay.
        let mut batches = Vec::new();
        let d2 = d.path().to_path_buf();
        let (_log, w) = Log::open(&d2, Some(first), |b| {
            batches.push(b.to_vec());
            Ok(())
        })
        .unwrap();
        assert_eq!(batches, vec![b"two".to_vec(), b"three".to_vec()]);
        assert_eq!(w.off, end);
    }

    #[test]
    fn long_reads_map_the_page_cache_short_ones_copy_and_a_gone_segment_keeps_no_map() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("seg")).unwrap();
        let (log, mut w) = Log::open(d.path(), None, |_| Ok(())).unwrap();
        let block: Vec<u8> = (0..MAP_MIN + 4096).map(|i| (i % 251) as u8).collect();
        let plan = log.plan(&mut w, block.len() as u64).unwrap();
        let at = locator(plan.mark.seg, plan.data_at);
        log.write(&mut w, plan, &[&block], b"batch").unwrap();
        let long = log.read(at, block.len()).unwrap().unwrap();
        assert!(matches!(long, ReadBytes::Mapped { .. }), "a long read is mapped");
        assert_eq!(&long[..], &block[..]);
        // Not on a page boundary.
        let mid = log.read(at + 100, MAP_MIN).unwrap().unwrap();
        assert!(matches!(mid, ReadBytes::Mapped { .. }));
        assert_eq!(&mid[..], &block[100..100 + MAP_MIN]);
        let short = log.read(at + 100, 5000).unwrap().unwrap();
        assert!(matches!(short, ReadBytes::Owned(_)), "a short read is copied");
        assert_eq!(&short[..], &block[100..5100]);
        assert_eq!(mid.into_vec(), block[100..100 + MAP_MIN].to_vec());
        // Past what the segment holds: an error (not a SIGBUS).
        assert!(log.read(at + (8 << 20), MAP_MIN).is_err());
        // Still readable after its pages were released (`long` dropped).
        drop(long);
        assert_eq!(&log.read(at, block.len()).unwrap().unwrap()[..], &block[..]);
        // A segment that goes takes its mapping with it.
        log.seal(&mut w).unwrap();
        log.delete(1).unwrap();
        assert!(log.maps.lock().unwrap().is_empty());
        assert!(log.read(at, block.len()).unwrap().is_none());
    }

    #[test]
    fn a_recycled_segment_takes_new_records_and_its_stale_ones_never_replay() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("seg")).unwrap();
        let (log, mut w) = Log::open(d.path(), None, |_| Ok(())).unwrap();
        // Segment 1: 40 records of 1 MiB of blocks each, with batches that name them.
        let block = vec![0xA5u8; 1 << 20];
        for i in 0..40u32 {
            let plan = log.plan(&mut w, block.len() as u64).unwrap();
            log.write(&mut w, plan, &[&block], format!("old {i}").as_bytes()).unwrap();
        }
        log.seal(&mut w).unwrap();
        let mark = Mark { seq: w.seq + 1, seg: w.seg, off: w.off };
        record(&log, &mut w, b"in segment 2");
        let seg1 = seg_path(&d.path().join("seg"), 1);
        let old_len = std::fs::metadata(&seg1).unwrap().len();
        // Kept: room to spare, and at least half a segment long.
        assert!(log.retire(1, true).unwrap());
        assert!(!log.has(1) && log.recycled_bytes() >= old_len);
        log.seal(&mut w).unwrap();
        assert_eq!(w.seg, 3);
        assert!(!seg1.exists(), "segment 1's file became segment 3");
        assert_eq!(std::fs::metadata(seg_path(&d.path().join("seg"), 3)).unwrap().len(), old_len);
        assert_eq!(log.recycled_bytes(), 0);
        // Syncs asked for: a new segment would get zeros ahead; this one is written already.
        log.wants_syncs();
        record(&log, &mut w, b"new one");
        let end = record(&log, &mut w, b"new two");
        assert_eq!(std::fs::metadata(seg_path(&d.path().join("seg"), 3)).unwrap().len(), old_len, "no zeros written");
        log.sync_to(w.seq).unwrap();
        drop((log, w));
        let mut batches = Vec::new();
        let (log, w) = Log::open(d.path(), Some(mark), |b| {
            batches.push(b.to_vec());
            Ok(())
        })
        .unwrap();
        assert_eq!(batches, vec![b"new one".to_vec(), b"new two".to_vec()], "replay stops at the stale records");
        assert_eq!((w.seg, w.off), (3, end));
        // Without room the cleaner's retire deletes.
        let mut w = w;
        log.seal(&mut w).unwrap();
        assert!(!log.retire(2, false).unwrap());
        assert!(!seg_path(&d.path().join("seg"), 2).exists());
    }
}
