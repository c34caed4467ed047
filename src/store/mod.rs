//! The only module that uses RocksDB: column families, options, versioned reads, blocks and
//! reference counts, and the segment log (`log`) that holds block bytes and makes commits
//! durable (grouped syncs, `sync`). Everything above it sees typed identities
//! (`Ident`, `Scan`, `CatKey`), values (`records`) and `Txn`, never a key's bytes.

mod check;
mod clean;
mod commit;
mod disk;
mod keys;
mod read;
mod segment;
pub mod records;
mod sync;
mod xxh3;

use crate::memory::Budget;
use crate::error::{Error, Result};
pub use check::{BlockCheck, Damaged, View};
pub use clean::CleanReport;
pub use keys::{CatKey, CatRange, Ident, Scan};
pub use segment::ReadBytes;
/// A `W` record: (lineage, ino, block index, value).
pub type WrittenAt = (u64, u64, u64, Vec<u8>);
use records::{Hash, RefRec};
use rocksdb::{
    BlockBasedOptions, BottommostLevelCompaction, Cache, ColumnFamily, ColumnFamilyDescriptor,
    CompactOptions, DBCompressionType, Direction, FlushOptions, IteratorMode, Options, ReadOptions,
    WriteBatch, WriteOptions, DB,
};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The on-disk format this build reads and writes.
pub const FORMAT_VERSION: u32 = 6;
/// Stores of these formats open too, and opening one upgrades it: format 5 added `W`
/// catalog records (bytes an fsync wrote over a stored block), format 6 data segments
/// (`store/segment.rs`), which older stores have none of. (A format-5 build would take a
/// data segment for a torn log tail and delete it: it refuses format 6.)
const UPGRADES_FROM: [u32; 2] = [4, 5];
const SECRET_LEN: usize = 192;



/// A block's bytes as a commit stores them: the first `len` bytes of a buffer it may share
/// with its writer (a flush's dirty block, read meanwhile), so staging copies nothing.
#[derive(Clone, Default)]
pub struct Bytes {
    buf: Arc<Vec<u8>>,
    len: usize,
}

impl Bytes {
    /// The first `len` bytes of `buf`.
    pub fn shared(buf: &Arc<Vec<u8>>, len: usize) -> Bytes {
        Bytes { buf: buf.clone(), len: len.min(buf.len()) }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Bytes {
        let len = v.len();
        Bytes { buf: Arc::new(v), len }
    }
}

/// Blocks written ahead of their commit into data segment `seg`: hash -> locator. Their
/// region stays pending in the segment until this is dropped (the commit done or given up).
struct Prewrite<'s> {
    log: &'s segment::Log,
    seg: u32,
    locs: records::BlockMap<u64>,
}

impl Drop for Prewrite<'_> {
    fn drop(&mut self) {
        self.log.release(self.seg);
    }
}

/// Column family names: the only place they are spelled.
mod cf {
    pub const BLOCKS: &str = "blocks";
    pub const REFS: &str = "refs";
    pub const INODES: &str = "inodes";
    pub const DIRENTS: &str = "dirents";
    pub const EXTENTS: &str = "extents";
    pub const XATTRS: &str = "xattrs";
    pub const CATALOG: &str = "catalog";
    pub const BIRTHS: &str = "births";
    pub const COUNTS: &str = "counts";
    pub const ALL: [&str; 9] = [BLOCKS, REFS, INODES, DIRENTS, EXTENTS, XATTRS, CATALOG, BIRTHS, COUNTS];
    /// The CFs whose keys are versioned by epoch (lineage first, `!epoch` last).
    pub const VERSIONED: [&str; 5] = [INODES, DIRENTS, EXTENTS, XATTRS, COUNTS];

    /// The tag a versioned CF has in `births` keys.
    pub fn tag(name: &str) -> u8 {
        match name {
            INODES => 1,
            DIRENTS => 2,
            EXTENTS => 3,
            XATTRS => 4,
            COUNTS => 5,
            _ => 0,
        }
    }

    pub fn from_tag(tag: u8) -> Option<&'static str> {
        Some(match tag {
            1 => INODES,
            2 => DIRENTS,
            3 => EXTENTS,
            4 => XATTRS,
            5 => COUNTS,
            _ => return None,
        })
    }
}

/// How many column families hold versions (`Ident`s): per-family state of a view has
/// one slot each (`versioned_slot`).
pub(crate) const VERSIONED_CFS: usize = cf::VERSIONED.len();

/// The slot of versioned column family `cfname` (None for the others).
pub(crate) fn versioned_slot(cfname: &str) -> Option<usize> {
    cf::VERSIONED.iter().position(|c| *c == cfname)
}

impl From<rocksdb::Error> for Error {
    fn from(e: rocksdb::Error) -> Self {
        let s = e.into_string();
        // RocksDB's C API gives a status message only; its IO errors carry strerror's text.
        if s.contains("No space left on device") {
            Error::NoSpace(s)
        } else {
            Error::Db(s)
        }
    }
}

/// Space figures of one lineage, kept exact by every commit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LineageSpace {
    /// Bytes of all block references (a block referenced twice counts twice).
    pub logical: u64,
    /// Bytes of the distinct blocks this lineage references.
    pub referenced: u64,
    /// Bytes of the blocks only this lineage references: what destroying it frees.
    pub unique: u64,
}

impl LineageSpace {
    fn encode(&self) -> Vec<u8> {
        let mut v = vec![records::VALUE_VERSION];
        for x in [self.logical, self.referenced, self.unique] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        v
    }
    pub fn decode(b: &[u8]) -> Result<Self> {
        if b.len() != 25 || b[0] != records::VALUE_VERSION {
            return Err(Error::Corrupt("bad space record".into()));
        }
        let f = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[1 + i..9 + i]);
            u64::from_le_bytes(a)
        };
        Ok(LineageSpace { logical: f(0), referenced: f(8), unique: f(16) })
    }
}

/// What one view (a head, or frozen in a snapshot record) holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ViewSpace {
    /// Bytes of the blocks its files name, each time they name one.
    pub logical: u64,
    /// Bytes of the distinct blocks it can read: its own and those it inherits.
    pub referenced: u64,
}

impl ViewSpace {
    fn encode(&self) -> Vec<u8> {
        let mut v = vec![records::VALUE_VERSION];
        v.extend_from_slice(&self.logical.to_le_bytes());
        v.extend_from_slice(&self.referenced.to_le_bytes());
        v
    }
    pub fn decode(b: &[u8]) -> Result<Self> {
        if b.len() != 17 || b[0] != records::VALUE_VERSION {
            return Err(Error::Corrupt("bad view space record".into()));
        }
        let f = |i: usize| u64::from_le_bytes(b[1 + i..9 + i].try_into().unwrap_or_default());
        Ok(ViewSpace { logical: f(0), referenced: f(8) })
    }
}

/// Space figures of the whole store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Space {
    /// Bytes of distinct stored blocks (before RocksDB compression).
    pub physical: u64,
    pub blocks: u64,
    pub lineages: HashMap<u64, LineageSpace>,
    /// Per lineage: what its head view holds.
    pub views: HashMap<u64, ViewSpace>,
    /// Per segment: bytes of the live blocks in it.
    pub segments: std::collections::BTreeMap<u32, u64>,
}

/// A position in a scan (births, extent versions) to resume from.
#[derive(Clone, Debug)]
pub struct Cursor(Vec<u8>);

impl Cursor {
    /// The first births entry of `lineage` at or after `epoch`.
    pub fn births_at(lineage: u64, epoch: u64) -> Cursor {
        Cursor(keys::births_from(lineage, epoch))
    }
}

/// Versioned reads at an epoch up to this probe every epoch down to 1 with point reads (a
/// get costs a fraction of an iterator's seek); past it they seek.
const PROBE_EPOCHS: u64 = 4;
/// Epochs start at 1: no version is ever written at 0 (a lineage's head 0 means "no head";
/// fsck reports a version there).
pub const FIRST_EPOCH: u64 = 1;

/// A version of a key: (its epoch, its value).
pub type Version = (u64, Vec<u8>);

/// A version found along a lineage chain.
#[derive(Clone, Debug)]
pub struct Found {
    /// 0 for the reader's own lineage, 1 for its parent, ...
    pub level: usize,
    pub epoch: u64,
    pub value: Vec<u8>,
}

/// A set of changes committed as one RocksDB write batch.
pub struct Txn<'s> {
    store: &'s Store,
    /// Removes things: admitted on a full disk (see `disk`).
    frees: bool,
    /// (lineage, bytes, volume name): the commit is refused if it raises the lineage's
    /// referenced bytes past this (a volume's `quota`).
    limit: Option<(u64, u64, String)>,
    batch: WriteBatch,
    /// (hash, lineage, delta, block bytes when the reference is new)
    refs: Vec<(Hash, u64, i64, Option<Bytes>)>,
    /// Blocks the cleaner moves: (hash, locator it was read at, bytes).
    moves: Vec<(Hash, u64, Vec<u8>)>,
    /// Head view figures set outright (by the volume layer, which keeps them).
    set_views: Vec<(u64, ViewSpace)>,
    /// What `write_ahead` did, if it ran: the blocks it wrote (None: none to write, or
    /// the reserve said no), so the commit does not try again.
    ahead: Option<Option<Prewrite<'s>>>,
}

pub struct Store {
    db: DB,
    dir: PathBuf,
    secret: Vec<u8>,
    /// The commit lock: serializes refcount read-modify-write and the order of commits;
    /// holds the space counters it keeps exact.
    space: Mutex<Space>,
    /// The log's append end; locked only under `space` (commits and checkpoints).
    writer: Mutex<segment::Writer>,
    log: segment::Log,
    disk: disk::Disk,
    /// A checkpoint is due past this many bytes of batches (memtable growth) since the last.
    checkpoint_bytes: u64,
    /// Block reads that failed since start (bytes that do not hash to the block's name).
    read_errors: AtomicU64,
    /// Where the last long read of adjacent blocks ended (a locator; `read_runs`).
    last_long_read: AtomicU64,
    /// Held by the cleaner while it moves blocks, and by a `View` (fsck, scrub).
    cleaning: Mutex<()>,
}

fn db_dir(store: &Path) -> PathBuf {
    store.join("db")
}

/// Makes a store private to its owner: the directories 0700, every file 0600 (block data of
/// every volume sits in the segments, the hash secret in the catalog). A store
/// found with looser modes (made by an older clonefs or by hand) is tightened with a log line.
pub fn make_private(store: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // `allowed`: bits left as they are (the store's own directory may let a group through to
    // the socket, `open_to_group`).
    fn fix(p: &Path, mode: u32, allowed: u32) -> Result<()> {
        let meta = std::fs::symlink_metadata(p)?;
        if meta.file_type().is_symlink() {
            return Ok(());
        }
        if meta.permissions().mode() & 0o077 & !allowed != 0 {
            log::warn!("{} was readable by others (mode {:o}); setting {mode:o}", p.display(), meta.permissions().mode() & 0o7777);
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
        }
        Ok(())
    }
    for dir in [store.to_path_buf(), db_dir(store), store.join("seg")] {
        if !dir.is_dir() {
            continue;
        }
        fix(&dir, 0o700, if dir == store { 0o010 } else { 0 })?;
        for entry in std::fs::read_dir(&dir)? {
            let p = entry?.path();
            if p.is_dir() {
                if p != db_dir(store) && p != store.join("seg") {
                    fix(&p, 0o700, 0)?;
                }
            } else {
                fix(&p, 0o600, 0)?;
            }
        }
    }
    Ok(())
}

/// Lets `group` through the store's directory to the control socket (mode 0710, group
/// `group`; nothing in it is readable by the group), or no one but the owner (0700).
pub fn open_to_group(store: &Path, group: Option<u32>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(g) = group {
        crate::sys::chown_group(store, g)?;
    }
    let mode = if group.is_some() { 0o710 } else { 0o700 };
    std::fs::set_permissions(store, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Column family options. Memtables are never flushed by RocksDB on its own (their cap is
/// far above what a checkpoint lets them reach, invariant 18): every flush is a checkpoint.
fn cf_options(name: &str, cache: &Cache, bloom_bytes: u64) -> Options {
    let mut o = Options::default();
    let mut t = BlockBasedOptions::default();
    t.set_block_cache(cache);
    t.set_bloom_filter(10.0, false);
    t.set_cache_index_and_filter_blocks(true);
    o.set_compression_type(match name {
        // locator -> hash: random bytes, nothing to gain.
        cf::BLOCKS => DBCompressionType::None,
        _ => DBCompressionType::Lz4,
    });
    o.set_write_buffer_size(MEMTABLE_CAP);
    o.set_max_write_buffer_number(4);
    if name != cf::BLOCKS {
        // Most point reads of a write ask for keys that are not there (a new block's
        // reference and counts, a new name): a bloom filter answers them without a search
        // of the skip list. Its size is a share of what a memtable takes in before a
        // checkpoint (the ratio is of `MEMTABLE_CAP`, which is never reached), allocated
        // and zeroed with each memtable.
        o.set_memtable_prefix_bloom_ratio(bloom_bytes as f64 / MEMTABLE_CAP as f64);
        o.set_memtable_whole_key_filtering(true);
    }
    o.set_block_based_table_factory(&t);
    // A table that holds mostly deletions (files removed, a directory emptied) is compacted
    // soon, so that the deleted keys go: a scan steps over each one (a listing of a directory
    // 50,000 names were removed from took 9 ms, not 0.3, until the next compaction).
    o.add_compact_on_deletion_collector_factory(DELETION_WINDOW, DELETION_WINDOW / 2, 0.5);
    o
}

/// Keys in the window of `add_compact_on_deletion_collector_factory`: a table with half of
/// any such run deleted (or half of all its entries) is marked for compaction.
const DELETION_WINDOW: usize = 1024;

/// A memtable's size cap: never reached, since a checkpoint flushes every memtable once the
/// batches since the last one pass `Budget::memtables` / 4.
const MEMTABLE_CAP: usize = 1 << 30;
/// A memtable's bloom filter takes 1/BLOOM_SHARE of the checkpoint size (512 KiB of the
/// default 16 MiB: 4 Mbit, tens of bits per key when a checkpoint's batches are new blocks;
/// a memtable past the checkpoint size only has more false positives).
const BLOOM_SHARE: u64 = 32;

/// Random bytes from the kernel.
pub(crate) fn random_bytes(n: usize) -> Result<Vec<u8>> {
    let mut s = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut s)?;
    Ok(s)
}

fn read_secret() -> Result<Vec<u8>> {
    random_bytes(SECRET_LEN)
}

fn no_wal() -> WriteOptions {
    let mut wo = WriteOptions::default();
    wo.disable_wal(true);
    wo
}

/// Refuses a store of another format with one line naming both versions; returns the
/// store's format.
fn check_format(v: Option<Vec<u8>>) -> Result<u32> {
    let v = v.ok_or_else(|| Error::Corrupt("store has no format version".into()))?;
    let v = u32::from_le_bytes(v.as_slice().try_into().map_err(|_| Error::Corrupt("bad format record".into()))?);
    if v != FORMAT_VERSION && !UPGRADES_FROM.contains(&v) {
        return Err(Error::Corrupt(format!(
            "store format version {v} is not supported by this clonefs (it knows {FORMAT_VERSION})"
        )));
    }
    Ok(v)
}

impl Store {
    /// Creates a new store in `dir`, which must be missing or empty.
    pub fn init(dir: &Path) -> Result<()> {
        if dir.exists() {
            if !dir.is_dir() {
                return Err(Error::Invalid(format!("{} is not a directory", dir.display())));
            }
            if std::fs::read_dir(dir)?.next().is_some() {
                return Err(Error::Conflict(format!(
                    "{} is not empty; refusing to create a store there",
                    dir.display()
                )));
            }
        }
        std::fs::create_dir_all(dir)?;
        make_private(dir)?;
        let store = Store::open_inner(dir, true, &Budget::default())?;
        let cat = store.cf(cf::CATALOG)?;
        let mut t = store.txn();
        t.batch.put_cf(cat, keys::catalog::FORMAT, FORMAT_VERSION.to_le_bytes());
        t.batch.put_cf(cat, keys::catalog::SECRET, read_secret()?);
        t.batch.put_cf(cat, keys::catalog::NEXT_VOLUME_ID, 1u64.to_le_bytes());
        store.commit(t, true)?;
        store.checkpoint(true)?;
        Ok(())
    }

    /// Opens an existing store with the default memory budget.
    pub fn open(dir: &Path) -> Result<Store> {
        Store::open_within(dir, &Budget::default())
    }

    /// Opens an existing store whose memtables and cache take their share of `mem`; refuses
    /// a directory that is not one, or of an unknown format.
    pub fn open_within(dir: &Path, mem: &Budget) -> Result<Store> {
        if !db_dir(dir).join("CURRENT").exists() {
            return Err(Error::NotFound(format!(
                "no clonefs store at {} (create one with `clonefs init --store {}`)",
                dir.display(),
                dir.display()
            )));
        }
        Store::open_inner(dir, false, mem)
    }

    fn open_inner(dir: &Path, create: bool, mem: &Budget) -> Result<Store> {
        make_private(dir)?;
        let disk = disk::Disk::open(dir, mem.memtables)?;
        let mut opts = Options::default();
        opts.create_if_missing(create);
        opts.create_missing_column_families(create);
        opts.set_max_background_jobs(2);
        // Writes skip RocksDB's WAL (the segment log is the log); every flush persists all
        // column families at one point of the commit order, which the log replays after.
        opts.set_atomic_flush(true);
        opts.set_keep_log_file_num(3);
        // Metadata SSTs are read with the kernel's readahead where scans go forward.
        opts.set_advise_random_on_open(false);
        let cache = Cache::new_lru_cache(mem.cache as usize);
        let checkpoint_bytes = (mem.memtables / 4).max(4 << 20);
        let cfs = cf::ALL.iter().map(|n| ColumnFamilyDescriptor::new(*n, cf_options(n, &cache, checkpoint_bytes / BLOOM_SHARE)));
        let db = DB::open_cf_descriptors(&opts, db_dir(dir), cfs).map_err(|e| {
            let s = e.into_string();
            if s.contains("lock") {
                Error::Conflict(format!("store {} is in use by another process ({s})", dir.display()))
            } else {
                Error::Db(s)
            }
        })?;
        let cat = db.cf_handle(cf::CATALOG).ok_or_else(|| Error::Corrupt("missing column family catalog".into()))?;
        let mut format = FORMAT_VERSION;
        let mark = if create {
            segment::Log::init(dir)?;
            None
        } else {
            format = check_format(db.get_cf(cat, keys::catalog::FORMAT)?)?;
            let m = db.get_cf(cat, keys::catalog::LOG_MARK)?.ok_or_else(|| Error::Corrupt("store has no log mark".into()))?;
            Some(segment::Mark::decode(&m)?)
        };
        let mut replayed = false;
        let (log, writer) = segment::Log::open(dir, mark, |batch| {
            replayed = true;
            Ok(db.write_opt(WriteBatch::from_data(batch), &no_wal())?)
        })?;
        let mut store = Store {
            db,
            dir: dir.to_path_buf(),
            secret: Vec::new(),
            space: Mutex::new(Space::default()),
            writer: Mutex::new(writer),
            log,
            disk,
            checkpoint_bytes,
            read_errors: AtomicU64::new(0),
            last_long_read: AtomicU64::new(0),
            cleaning: Mutex::new(()),
        };
        if !create {
            store.load_catalog()?;
            if replayed {
                store.checkpoint(true)?;
            }
            if format != FORMAT_VERSION {
                let mut t = store.txn();
                t.batch.put_cf(store.cf(cf::CATALOG)?, keys::catalog::FORMAT, FORMAT_VERSION.to_le_bytes());
                t.commit(true)?;
                log::info!("store {} upgraded from format {format} to {FORMAT_VERSION}", dir.display());
            }
        }
        Ok(store)
    }

    fn load_catalog(&mut self) -> Result<()> {
        self.secret = self
            .get(cf::CATALOG, keys::catalog::SECRET)?
            .ok_or_else(|| Error::Corrupt("store has no hash secret".into()))?;
        if self.secret.len() < 136 {
            return Err(Error::Corrupt("hash secret too short".into()));
        }
        let mut space = Space::default();
        if let Some(v) = self.get(cf::CATALOG, keys::catalog::STORE_STATS)? {
            if v.len() == 16 {
                space.physical = u64::from_le_bytes(v[..8].try_into().unwrap_or_default());
                space.blocks = u64::from_le_bytes(v[8..].try_into().unwrap_or_default());
            }
        }
        let p = [keys::catalog::SPACE_TAG];
        self.scan(cf::CATALOG, &p, |k, v| {
            let l = keys::read_u64(k, 1);
            space.lineages.insert(l, LineageSpace::decode(v)?);
            Ok(true)
        })?;
        self.scan(cf::CATALOG, &[keys::catalog::VIEW_TAG], |k, v| {
            space.views.insert(keys::read_u64(k, 1), ViewSpace::decode(v)?);
            Ok(true)
        })?;
        self.scan(cf::CATALOG, keys::catalog::SEGMENT_PREFIX, |k, v| {
            let seg = keys::catalog::parse_segment(k).ok_or_else(|| Error::Corrupt(format!("bad segment key {k:?}")))?;
            space.segments.insert(seg, u64::from_le_bytes(v.try_into().map_err(|_| Error::Corrupt("bad segment record".into()))?));
            Ok(true)
        })?;
        *self.space_guard()? = space;
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn cf(&self, name: &str) -> Result<&ColumnFamily> {
        self.db.cf_handle(name).ok_or_else(|| Error::Corrupt(format!("missing column family {name}")))
    }

    /// xxh3-128 of a block under the store's secret.
    pub fn hash(&self, data: &[u8]) -> Hash {
        xxh3::xxh3_128(data, &self.secret).to_be_bytes()
    }

    fn get(&self, cfname: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(cfname)?, key)?)
    }

    /// The newest version of `ident` visible at `epoch`: (its epoch, its value).
    fn get_version(&self, cfname: &str, ident: &[u8], epoch: u64) -> Result<Option<(u64, Vec<u8>)>> {
        if epoch <= PROBE_EPOCHS {
            // Point reads, newest first: each is a bloom-filtered get, cheaper than building
            // an iterator over every memtable and level for one seek. None below epoch 1
            // (invariant 21): a name that is not there costs `epoch` gets, not one more.
            let cf = self.cf(cfname)?;
            for e in (FIRST_EPOCH..=epoch).rev() {
                if let Some(v) = self.db.get_pinned_cf(cf, keys::versioned(ident.to_vec(), e))? {
                    return Ok(Some((e, v.to_vec())));
                }
            }
            return Ok(None);
        }
        let mut ro = ReadOptions::default();
        if let Some(end) = keys::prefix_end(ident) {
            ro.set_iterate_upper_bound(end);
        }
        let mut it = self.db.raw_iterator_cf_opt(self.cf(cfname)?, ro);
        it.seek(keys::versioned(ident.to_vec(), epoch));
        if let (Some(k), Some(v)) = (it.key(), it.value()) {
            if k.len() == ident.len() + keys::U64 && k.starts_with(ident) {
                return Ok(Some((keys::split_version(k).1, v.to_vec())));
            }
        }
        it.status()?;
        Ok(None)
    }

    /// The visible versions of every identity whose rest (key without lineage and epoch) lies
    /// in [start, end) under `prefix`, merged along a chain: nearest level wins per identity.
    /// Tombstones are included so callers can tell a deletion from absence.
    fn scan_chain(
        &self,
        cfname: &str,
        prefix: &[u8],
        start: &[u8],
        end: Option<&[u8]>,
        chain: &[(u64, u64)],
    ) -> Result<Vec<(Vec<u8>, Found)>> {
        let mut merged: std::collections::BTreeMap<Vec<u8>, Found> = std::collections::BTreeMap::new();
        for (level, (l, e)) in chain.iter().enumerate() {
            let lp = l.to_be_bytes();
            let full_prefix = [&lp[..], prefix].concat();
            let full_start = [&lp[..], start].concat();
            let mut last: Option<Vec<u8>> = None;
            self.scan_from(cfname, &full_prefix, &full_start, |k, v| {
                let (ident, epoch) = keys::split_version(k);
                let rest = &ident[8..];
                if let Some(end) = end {
                    if rest >= end {
                        return Ok(false);
                    }
                }
                if epoch > *e || last.as_deref() == Some(rest) {
                    return Ok(true);
                }
                last = Some(rest.to_vec());
                if level == 0 || !merged.contains_key(rest) {
                    merged.insert(rest.to_vec(), Found { level, epoch, value: v.to_vec() });
                }
                Ok(true)
            })?;
        }
        Ok(merged.into_iter().collect())
    }

    /// The newest version of `id` at or before `epoch`: (its epoch, its value).
    pub fn version_at(&self, id: &Ident, epoch: u64) -> Result<Option<(u64, Vec<u8>)>> {
        self.get_version(id.cf(), &id.encode(), epoch)
    }

    /// The newest version at or before `epoch` of each of `ids` (as `version_at`), batched:
    /// at a small epoch one multi-get probing every epoch from `epoch` down to 1, else a
    /// seek each.
    pub fn versions_at(&self, ids: &[Ident], epoch: u64) -> Result<Vec<Option<Version>>> {
        if epoch > PROBE_EPOCHS || ids.len() < 2 {
            return ids.iter().map(|id| self.version_at(id, epoch)).collect();
        }
        let mut out: Vec<Option<Version>> = ids.iter().map(|_| None).collect();
        let mut by_cf: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, id) in ids.iter().enumerate() {
            by_cf.entry(id.cf()).or_default().push(i);
        }
        for (cfname, idx) in by_cf {
            // Newest first: the first epoch found is the version `version_at` would find.
            let keys: Vec<Vec<u8>> = idx.iter().flat_map(|&i| (FIRST_EPOCH..=epoch).rev().map(move |e| keys::versioned(ids[i].encode(), e))).collect();
            let got = self.db.batched_multi_get_cf(self.cf(cfname)?, keys.iter(), false);
            let per = (epoch + 1 - FIRST_EPOCH) as usize;
            for (n, r) in got.into_iter().enumerate() {
                let i = idx[n / per];
                if let (None, Some(v)) = (&out[i], r?) {
                    out[i] = Some((epoch - (n % per) as u64, v.to_vec()));
                }
            }
        }
        Ok(out)
    }

    /// `visible` for many identities at once (`versions_at` per level).
    pub fn visible_many(&self, ids: &[Ident], chain: &[(u64, u64)]) -> Result<Vec<Option<Found>>> {
        let mut out: Vec<Option<Found>> = ids.iter().map(|_| None).collect();
        let mut want: Vec<usize> = (0..ids.len()).collect();
        for (level, &(l, e)) in chain.iter().enumerate() {
            if want.is_empty() {
                break;
            }
            let at: Vec<Ident> = want.iter().map(|&i| ids[i].with_lineage(l)).collect();
            let mut missing = Vec::new();
            for (i, v) in want.into_iter().zip(self.versions_at(&at, e)?) {
                match v {
                    Some((epoch, value)) => out[i] = Some(Found { level, epoch, value }),
                    None => missing.push(i),
                }
            }
            want = missing;
        }
        Ok(out)
    }

    /// The stored size of each block (None where it is not stored), with one multi-get.
    pub fn block_sizes(&self, hashes: &[Hash]) -> Result<Vec<Option<u64>>> {
        Ok(self.ref_recs(hashes)?.into_iter().map(|r| r.map(|r| r.size as u64)).collect())
    }

    /// Each block's reference record (None where it is not stored), with one multi-get.
    fn ref_recs<'h>(&self, hashes: impl IntoIterator<Item = &'h Hash>) -> Result<Vec<Option<RefRec>>> {
        self.db
            .batched_multi_get_cf(self.cf(cf::REFS)?, hashes, false)
            .into_iter()
            .map(|r| r?.map(|v| RefRec::decode(&v)).transpose())
            .collect()
    }

    /// The visible version of `id` along a chain (nearest first, `id`'s own lineage ignored):
    /// the first level with a version at or before its epoch wins, tombstones included.
    pub fn visible(&self, id: &Ident, chain: &[(u64, u64)]) -> Result<Option<Found>> {
        for (level, (l, e)) in chain.iter().enumerate() {
            if let Some((epoch, value)) = self.version_at(&id.with_lineage(*l), *e)? {
                return Ok(Some(Found { level, epoch, value }));
            }
        }
        Ok(None)
    }

    /// The visible versions of every identity `scan` covers, merged along a chain (nearest
    /// level wins), tombstones included; identities are named in the chain's first lineage.
    pub fn scan_visible(&self, scan: &Scan, chain: &[(u64, u64)]) -> Result<Vec<(Ident, Found)>> {
        let Some(&(own, _)) = chain.first() else { return Ok(Vec::new()) };
        let (prefix, start, end) = scan.bounds(own);
        let found = self.scan_chain(scan.cf(), &prefix[8..], &start[8..], end.as_deref(), chain)?;
        let mut out = Vec::with_capacity(found.len());
        for (rest, f) in found {
            let key = [&own.to_be_bytes()[..], &rest].concat();
            let id = Ident::parse(scan.cf(), &key).ok_or_else(|| Error::Corrupt(format!("bad {} key", scan.cf())))?;
            out.push((id, f));
        }
        Ok(out)
    }

    /// Whether `lineage` holds any version in column family `cfname` (one bounded seek).
    pub fn lineage_has_versions(&self, cfname: &str, lineage: u64) -> Result<bool> {
        let mut found = false;
        self.scan_from(cfname, &keys::lineage_prefix(lineage), &keys::lineage_prefix(lineage), |_, _| {
            found = true;
            Ok(false)
        })?;
        Ok(found)
    }

    /// The highest inode number `lineage` has a version of.
    pub fn last_ino(&self, lineage: u64) -> Result<Option<u64>> {
        Ok(self.last_key(cf::INODES, &keys::lineage_prefix(lineage))?.map(|k| keys::read_u64(&k, 8)))
    }

    /// The highest block index below `below` that `lineage` has any version of for `ino`.
    pub fn last_extent_below(&self, lineage: u64, ino: u64, below: u64) -> Result<Option<u64>> {
        let prefix = keys::extents_of(lineage, ino);
        // Bounded below by the file's prefix: else a file without extents stepped back over
        // the deleted keys of every file before it (a removed 256 MiB file: 2.5 ms per
        // commit until compaction dropped them).
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(prefix.to_vec());
        let mut it = self.db.raw_iterator_cf_opt(self.cf(cf::EXTENTS)?, ro);
        // Every version key of a lower index sorts before this bare prefix; none equals it.
        let bound = keys::extent_key(lineage, ino, below);
        it.seek_for_prev(&bound);
        if let Some(k) = it.key() {
            if k.starts_with(&prefix) && k < &bound[..] {
                return Ok(Some(keys::read_u64(k, 16)));
            }
        }
        it.status()?;
        Ok(None)
    }

    /// The `W` records of `lineage` (every lineage with None), in key order.
    pub fn written(&self, lineage: Option<u64>) -> Result<Vec<WrittenAt>> {
        let mut out = Vec::new();
        let range = lineage.map(CatRange::WrittenOf).unwrap_or(CatRange::Written);
        self.cat_scan(range, |k, v| {
            if let CatKey::Written { lineage, ino, index } = k {
                out.push((lineage, ino, index, v.to_vec()));
            }
            Ok(true)
        })?;
        Ok(out)
    }

    /// Inodes of `lineage` marked as orphans (unlinked while open when the daemon stopped).
    pub fn orphans(&self, lineage: u64) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        self.scan(cf::CATALOG, &keys::catalog::orphans_of(lineage), |k, _| {
            out.push(keys::read_u64(k, 9));
            Ok(true)
        })?;
        Ok(out)
    }

    /// Size in bytes of a stored block (as stored: without trailing zeros).
    pub fn block_size(&self, h: &Hash) -> Result<Option<u64>> {
        Ok(match self.get(cf::REFS, h)? {
            Some(v) => Some(RefRec::decode(&v)?.size as u64),
            None => None,
        })
    }

    /// A catalog record.
    pub fn cat_get(&self, k: &CatKey) -> Result<Option<Vec<u8>>> {
        self.get(cf::CATALOG, &k.encode())
    }

    /// Visits the catalog records of `range` in key order until `f` returns false.
    pub fn cat_scan(&self, range: CatRange, mut f: impl FnMut(CatKey, &[u8]) -> Result<bool>) -> Result<()> {
        self.scan(cf::CATALOG, &range.prefix(), |k, v| match CatKey::parse(k) {
            Some(key) => f(key, v),
            None => Err(Error::Corrupt(format!("unknown catalog key {k:?}"))),
        })
    }

    /// Visits the births of `lineage` from `start` on, in (epoch, key) order, until `f`
    /// returns false; returns where it stopped (to resume there: that entry was not taken).
    pub fn births(
        &self,
        start: &Cursor,
        mut f: impl FnMut(Ident, u64) -> Result<bool>,
    ) -> Result<Option<Cursor>> {
        let mut stopped = None;
        self.scan_from(cf::BIRTHS, &start.0[..8], &start.0, |k, _| {
            let (id, epoch) = keys::parse_birth(k).ok_or_else(|| Error::Corrupt(format!("bad births key {k:?}")))?;
            if f(id, epoch)? {
                return Ok(true);
            }
            stopped = Some(Cursor(k.to_vec()));
            Ok(false)
        })?;
        Ok(stopped)
    }

    /// Every version of `id`, newest first: (epoch, value).
    pub fn versions(&self, id: &Ident) -> Result<Vec<(u64, Vec<u8>)>> {
        let ident = id.encode();
        let mut out = Vec::new();
        self.scan(id.cf(), &ident, |k, v| {
            if k.len() == ident.len() + keys::U64 {
                out.push((keys::split_version(k).1, v.to_vec()));
            }
            Ok(true)
        })?;
        Ok(out)
    }

    /// Visits every extent version of `lineage` (by identity, newest version first) from
    /// `start` on until `f` returns false; returns where it stopped (that entry not taken).
    pub fn extent_versions(
        &self,
        lineage: u64,
        start: Option<&Cursor>,
        mut f: impl FnMut(Ident, u64, &[u8]) -> Result<bool>,
    ) -> Result<Option<Cursor>> {
        let prefix = keys::lineage_prefix(lineage);
        let from = start.map(|c| c.0.clone()).unwrap_or_else(|| prefix.clone());
        let mut stopped = None;
        self.scan_from(cf::EXTENTS, &prefix, &from, |k, v| {
            let (id, epoch) = keys::parse_version(cf::EXTENTS, k).ok_or_else(|| Error::Corrupt(format!("bad extent key {k:?}")))?;
            if f(id, epoch, v)? {
                return Ok(true);
            }
            stopped = Some(Cursor(k.to_vec()));
            Ok(false)
        })?;
        Ok(stopped)
    }

    /// The BLAKE3 names recorded for blocks (`keys::catalog::LOCAL_TO_PORTABLE`).
    pub fn portables(&self, hashes: &[Hash]) -> Result<Vec<Option<[u8; 32]>>> {
        let keys: Vec<Vec<u8>> = hashes.iter().map(keys::catalog::local_to_portable).collect();
        let got = self.db.batched_multi_get_cf(self.cf(cf::CATALOG)?, keys.iter(), false);
        got.into_iter().map(|r| Ok(r?.and_then(|v| <[u8; 32]>::try_from(&v[..]).ok()))).collect()
    }

    /// The stored blocks named by BLAKE3 names, as far as this store recorded them: (hash,
    /// size) of each block still stored.
    pub fn locals(&self, names: &[[u8; 32]]) -> Result<Vec<Option<(Hash, u64)>>> {
        let keys: Vec<Vec<u8>> = names.iter().map(keys::catalog::portable_to_local).collect();
        let got = self.db.batched_multi_get_cf(self.cf(cf::CATALOG)?, keys.iter(), false);
        let mut out = Vec::with_capacity(names.len());
        for r in got {
            out.push(match r?.and_then(|v| <Hash>::try_from(&v[..]).ok()) {
                Some(h) => self.refs(&h)?.filter(|r| !r.owners.is_empty()).map(|r| (h, r.size as u64)),
                None => None,
            });
        }
        Ok(out)
    }

    /// Drops BLAKE3 name records of blocks no longer stored. Returns how many went.
    pub fn prune_portables(&self) -> Result<u64> {
        let mut dead: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        self.scan(cf::CATALOG, keys::catalog::PORTABLE_TO_LOCAL, |k, v| {
            if let Ok(h) = <Hash>::try_from(v) {
                if self.refs(&h)?.is_none() {
                    dead.push((k.to_vec(), keys::catalog::local_to_portable(&h)));
                }
            }
            Ok(true)
        })?;
        let n = dead.len() as u64;
        for chunk in dead.chunks(4096) {
            let mut t = self.txn();
            t.frees();
            for (a, b) in chunk {
                t.batch.delete_cf(self.cf(cf::CATALOG)?, a);
                t.batch.delete_cf(self.cf(cf::CATALOG)?, b);
            }
            t.commit(false)?;
        }
        Ok(n)
    }

    /// Who references block `h`, if it is stored.
    pub fn refs(&self, h: &Hash) -> Result<Option<RefRec>> {
        self.get(cf::REFS, h)?.map(|v| RefRec::decode(&v)).transpose()
    }

    /// The last key starting with `prefix`, if any.
    fn last_key(&self, cfname: &str, prefix: &[u8]) -> Result<Option<Vec<u8>>> {
        // Bounded below: deleted keys before the prefix are not stepped over.
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(prefix.to_vec());
        let mut it = self.db.raw_iterator_cf_opt(self.cf(cfname)?, ro);
        match keys::prefix_end(prefix) {
            Some(end) => it.seek_for_prev(end),
            None => it.seek_to_last(),
        }
        // seek_for_prev lands on the key itself when `end` exists; step back past it.
        if let (Some(k), Some(end)) = (it.key(), keys::prefix_end(prefix)) {
            if k >= &end[..] {
                it.prev();
            }
        }
        if let Some(k) = it.key() {
            if k.starts_with(prefix) {
                return Ok(Some(k.to_vec()));
            }
        }
        it.status()?;
        Ok(None)
    }

    /// Visits every key starting with `prefix`, in order, until `f` returns false.
    fn scan(
        &self,
        cfname: &str,
        prefix: &[u8],
        mut f: impl FnMut(&[u8], &[u8]) -> Result<bool>,
    ) -> Result<()> {
        self.scan_from(cfname, prefix, prefix, &mut f)
    }

    /// Like `scan`, starting at `start` (which must sort at or after `prefix`).
    fn scan_from(
        &self,
        cfname: &str,
        prefix: &[u8],
        start: &[u8],
        mut f: impl FnMut(&[u8], &[u8]) -> Result<bool>,
    ) -> Result<()> {
        let mut ro = ReadOptions::default();
        if let Some(end) = keys::prefix_end(prefix) {
            ro.set_iterate_upper_bound(end);
        }
        let mut it = self.db.raw_iterator_cf_opt(self.cf(cfname)?, ro);
        it.seek(start);
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if !k.starts_with(prefix) || !f(k, v)? {
                return Ok(());
            }
            it.next();
        }
        it.status()?;
        Ok(())
    }

    /// Bytes kept free on the store's disk (see `disk`), and what is free beyond them.
    pub fn reserve(&self) -> Result<(u64, u64)> {
        let r = self.disk.reserve();
        Ok((r, self.disk.available()?.saturating_sub(r)))
    }

    /// RocksDB's sequence number: it grows by one per key written (tests count writes with it).
    pub fn sequence(&self) -> u64 {
        self.db.latest_sequence_number()
    }

    /// Makes every commit so far durable.
    pub fn sync(&self) -> Result<()> {
        self.sync_to(self.log.last())
    }

    /// Makes RocksDB hold every commit so far on its own, so start-up replays nothing
    /// before this point: the log is synced, then every memtable is switched and flushed.
    /// `wait`: until the flush is on disk (the log before this point may then be deleted).
    /// Returns the segment `Flog` names now: a replay needs no segment before it.
    pub fn checkpoint(&self, wait: bool) -> Result<u32> {
        // Most of the log is synced before the commit lock is taken.
        self.log.sync_to(self.log.last())?;
        let seg = {
            let _space = self.space_guard()?;
            let mut w = self.writer.lock().map_err(|_| Error::Corrupt("log writer poisoned by a panic: restart the daemon".into()))?;
            self.checkpoint_locked(&mut w)?
        };
        if wait {
            self.wait_flushed()?;
        }
        Ok(seg)
    }

    /// A checkpoint under the commit lock: it is held across the log's sync so that the
    /// memtables switched next hold no commit whose record is not durable (invariant 18).
    /// The flush itself runs in RocksDB's background. Returns the segment of the last record
    /// (the one `Flog` names).
    fn checkpoint_locked(&self, w: &mut segment::Writer) -> Result<u32> {
        self.log.sync_to(self.log.last())?;
        let mut fo = FlushOptions::default();
        fo.set_wait(false);
        let cfs: Vec<&ColumnFamily> = cf::ALL.iter().map(|n| self.cf(n)).collect::<Result<_>>()?;
        self.db.flush_cfs_opt(&cfs, &fo)?;
        crate::metrics::get().checkpoints.inc();
        w.since_checkpoint = 0;
        w.meta_since_checkpoint = 0;
        w.last_checkpoint = std::time::Instant::now();
        Ok(segment::Log::last_record_segment(w))
    }

    /// Waits, without the commit lock, until no switched memtable is left unflushed. (A
    /// flush with `wait` would switch the memtables again, taking in unsynced commits.)
    fn wait_flushed(&self) -> Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
        loop {
            let mut pending = 0;
            for n in cf::ALL {
                pending += self.db.property_int_value_cf(self.cf(n)?, "rocksdb.num-immutable-mem-table")?.unwrap_or(0);
            }
            if pending == 0 {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(Error::Db(format!("{pending} memtables still unflushed after 10 minutes")));
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// A checkpoint if one is due (the flusher's tick): past `checkpoint_bytes` of batches
    /// or `CHECKPOINT_LOG` of log since the last, or commits older than `age` (so a restart
    /// replays little).
    pub fn checkpoint_if_due(&self, age: std::time::Duration) -> Result<()> {
        let due = {
            let w = self.writer.lock().map_err(|_| Error::Corrupt("log writer poisoned by a panic: restart the daemon".into()))?;
            w.meta_since_checkpoint >= self.checkpoint_bytes
                || w.since_checkpoint >= CHECKPOINT_LOG
                || (w.since_checkpoint > 0 && w.last_checkpoint.elapsed() >= age)
        };
        if due {
            self.checkpoint(false)?;
        }
        Ok(())
    }

    pub fn space(&self) -> Result<Space> {
        Ok(self.space_guard()?.clone())
    }

    fn space_guard(&self) -> Result<std::sync::MutexGuard<'_, Space>> {
        self.space.lock().map_err(|_| Error::Corrupt("space counters poisoned by a panic: restart the daemon".into()))
    }

    /// Drops the counters of a lineage whose keys are all gone.
    pub fn forget_lineage(&self, lineage: u64) {
        if let Ok(mut s) = self.space.lock() {
            s.lineages.remove(&lineage);
            s.views.remove(&lineage);
        }
    }

    /// What the head view of `lineage` holds (as of the last commit).
    /// The space figures of one lineage.
    pub fn lineage_space(&self, lineage: u64) -> Result<LineageSpace> {
        Ok(self.space_guard()?.lineages.get(&lineage).copied().unwrap_or_default())
    }

    pub fn view_space(&self, lineage: u64) -> Result<ViewSpace> {
        Ok(self.space_guard()?.views.get(&lineage).copied().unwrap_or_default())
    }

    /// The segment log: (segments, their bytes on disk, bytes of live blocks in them).
    pub fn segment_figures(&self) -> Result<(u64, u64, u64)> {
        let live = self.space_guard()?.segments.values().sum::<u64>();
        let segs = self.log.segments()?;
        Ok((segs.len() as u64, segs.iter().map(|x| x.1).sum::<u64>() + self.log.recycled_bytes(), live))
    }

    /// Sets the metrics the store keeps figures of (read at render time).
    pub fn fill_metrics(&self, m: &crate::metrics::Metrics) -> Result<()> {
        use crate::metrics::gauge;
        let (physical, blocks) = {
            let s = self.space_guard()?;
            (s.physical, s.blocks)
        };
        let (_, seg_bytes, live) = self.segment_figures()?;
        m.physical_bytes.set(gauge(physical));
        m.blocks.set(gauge(blocks));
        m.segment_live_bytes.set(gauge(live));
        m.segment_bytes.set(gauge(seg_bytes));
        m.read_errors.set(gauge(self.read_errors()));
        let prop = |name: &str| self.db.property_int_value(name).ok().flatten().unwrap_or(0);
        let sum = |name: &str| cf::ALL.iter().filter_map(|n| self.cf(n).ok()).map(|c| self.db.property_int_value_cf(c, name).ok().flatten().unwrap_or(0)).sum::<u64>();
        m.rocksdb_pending_compaction_bytes.set(gauge(sum("rocksdb.estimate-pending-compaction-bytes")));
        m.rocksdb_write_stopped.set(gauge(prop("rocksdb.is-write-stopped")));
        m.rocksdb_delayed_write_rate.set(gauge(prop("rocksdb.actual-delayed-write-rate")));
        // Every column family shares one cache; the DB-wide property reads the default
        // family's own (unused) one.
        let cache = self.cf(cf::REFS).ok().and_then(|c| self.db.property_int_value_cf(c, "rocksdb.block-cache-usage").ok().flatten()).unwrap_or(0);
        m.rocksdb_cache_bytes.set(gauge(cache));
        m.memtable_bytes.set(gauge(sum("rocksdb.cur-size-all-mem-tables")));
        Ok(())
    }

    /// Bytes the store holds on disk: RocksDB's SST files and the segments.
    pub fn disk_bytes(&self) -> u64 {
        let mut total = 0;
        for n in cf::ALL {
            if let Ok(c) = self.cf(n) {
                total += self.db.property_int_value_cf(c, "rocksdb.total-sst-files-size").ok().flatten().unwrap_or(0);
            }
        }
        total + self.log.segments().map(|s| s.iter().map(|x| x.1).sum::<u64>()).unwrap_or(0) + self.log.recycled_bytes()
    }

}

/// A checkpoint is due past this much log since the last (what a restart would replay).
const CHECKPOINT_LOG: u64 = 256 << 20;

impl Drop for Store {
    /// A closed store replays nothing at the next start: a last checkpoint (the log synced
    /// first, invariant 18).
    fn drop(&mut self) {
        if let Err(e) = self.checkpoint(true) {
            log::error!("the checkpoint at close failed ({e}); the next start replays the log");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s");
        Store::init(&p).unwrap();
        let s = Store::open(&p).unwrap();
        (d, s)
    }

    /// Deleted keys RocksDB stepped over on this thread during `f`.
    fn deletions_stepped_over(f: impl FnOnce()) -> u64 {
        use rocksdb::perf::{set_perf_stats, PerfContext, PerfMetric, PerfStatsLevel};
        set_perf_stats(PerfStatsLevel::EnableCount);
        let mut ctx = PerfContext::default();
        ctx.reset();
        f();
        let n = ctx.metric(PerfMetric::InternalDeleteSkippedCount);
        set_perf_stats(PerfStatsLevel::Disable);
        n
    }

    #[test]
    fn reverse_scans_do_not_step_over_other_files_deletions() {
        let (_d, s) = store();
        let (ext, ino) = (s.cf(cf::EXTENTS).unwrap(), s.cf(cf::INODES).unwrap());
        // File 5 of lineage 1 had 5,000 extents, and lineage 1 5,000 inodes, all removed.
        for i in 0..5000u64 {
            s.db.put_cf(ext, keys::versioned(keys::extent_key(1, 5, i), 1), b"x").unwrap();
            s.db.put_cf(ino, keys::versioned(keys::inode_key(1, i), 1), b"x").unwrap();
        }
        for i in 0..5000u64 {
            s.db.delete_cf(ext, keys::versioned(keys::extent_key(1, 5, i), 1)).unwrap();
            s.db.delete_cf(ino, keys::versioned(keys::inode_key(1, i), 1)).unwrap();
        }
        // A later file (a new file's first commit asks this) and a later lineage.
        let n = deletions_stepped_over(|| assert_eq!(s.last_extent_below(1, 6, u64::MAX).unwrap(), None));
        assert!(n < 10, "stepped over {n} deleted extents of another file");
        let n = deletions_stepped_over(|| assert_eq!(s.last_ino(2).unwrap(), None));
        assert!(n < 10, "stepped over {n} deleted inodes of another lineage");
        // Its own keys are still found.
        s.db.put_cf(ext, keys::versioned(keys::extent_key(1, 6, 3), 1), b"x").unwrap();
        assert_eq!(s.last_extent_below(1, 6, u64::MAX).unwrap(), Some(3));
        assert_eq!(s.last_extent_below(1, 6, 3).unwrap(), None);
    }

    #[test]
    fn init_refuses_non_empty_dir_and_open_refuses_unknown_format() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("x"), b"x").unwrap();
        assert!(matches!(Store::init(d.path()), Err(Error::Conflict(_))));
        let (_d, s) = store();
        let dir = s.dir().to_path_buf();
        let cat = s.cf(cf::CATALOG).unwrap();
        s.db.put_cf(cat, keys::catalog::FORMAT, 99u32.to_le_bytes()).unwrap();
        drop(s);
        let err = Store::open(&dir).err().unwrap().to_string();
        assert!(err.contains("format version 99"), "{err}");
    }

    #[test]
    fn a_store_of_the_previous_format_opens_and_is_upgraded() {
        let (_d, s) = store();
        let dir = s.dir().to_path_buf();
        drop(s);
        for old in UPGRADES_FROM {
            let s = Store::open(&dir).unwrap();
            let cat = s.cf(cf::CATALOG).unwrap();
            s.db.put_cf(cat, keys::catalog::FORMAT, old.to_le_bytes()).unwrap();
            s.checkpoint(true).unwrap();
            drop(s);
            let s = Store::open(&dir).unwrap();
            let v = s.get(cf::CATALOG, keys::catalog::FORMAT).unwrap().unwrap();
            assert_eq!(u32::from_le_bytes(v.try_into().unwrap()), FORMAT_VERSION);
        }
    }

    #[test]
    fn a_large_commit_writes_its_blocks_ahead_into_a_data_segment_which_compact_deletes_once_empty() {
        let (_d, s) = store();
        // 1.25 MiB of new blocks, and one stored already (written again for nothing).
        let blocks: Vec<Vec<u8>> = (0..80u8).map(|i| vec![i + 1; 16384]).collect();
        let hashes: Vec<Hash> = blocks.iter().map(|b| s.hash(b)).collect();
        let mut t = s.txn();
        t.add_ref(hashes[0], 1, blocks[0].clone());
        s.commit(t, false).unwrap();
        let first = s.refs(&hashes[0]).unwrap().unwrap().loc;
        let mut t = s.txn();
        for (h, b) in hashes.iter().zip(&blocks) {
            t.add_ref(*h, 1, b.clone());
        }
        s.commit(t, true).unwrap();
        assert_eq!(s.refs(&hashes[0]).unwrap().unwrap().loc, first, "a stored block stays where it is");
        for h in &hashes[1..] {
            assert!(segment::is_data(segment::split(s.refs(h).unwrap().unwrap().loc).0), "written ahead");
        }
        let dir = s.dir().to_path_buf();
        drop(s);
        let s = Store::open(&dir).unwrap();
        let got = s.get_blocks(&hashes).unwrap();
        assert!(got.iter().zip(&blocks).all(|(g, b)| g.as_deref() == Some(&b[..])));
        assert_eq!(s.space().unwrap().physical, 80 * 16384);
        let data_segs = |s: &Store| s.log.segments().unwrap().into_iter().filter(|x| segment::is_data(x.0)).count();
        assert_eq!(data_segs(&s), 1, "start-up keeps the data segment");
        // Full: compact leaves the data segment and its blocks.
        s.compact().unwrap();
        assert_eq!(data_segs(&s), 1);
        assert!(s.get_blocks(&hashes).unwrap().iter().all(|g| g.is_some()));
        let mut t = s.txn();
        for h in hashes.iter().chain(&hashes[..1]) {
            t.drop_ref(*h, 1);
        }
        s.commit(t, false).unwrap();
        assert!(s.compact().unwrap().segments_deleted >= 1);
        assert_eq!(data_segs(&s), 0);
        assert_eq!(s.space().unwrap().physical, 0);
    }

    #[test]
    fn an_emptied_segment_becomes_the_next_log_segment_and_reads_racing_the_move_find_their_blocks() {
        use std::sync::atomic::AtomicBool;
        let (_d, s) = store();
        let seal = |s: &Store| {
            let _space = s.space_guard().unwrap();
            s.log.seal(&mut s.writer.lock().unwrap()).unwrap();
        };
        // Log segment 1: 16 blocks that stay, among 600 that are dropped (small commits, so
        // every block is in the log), then the next records go into segment 2.
        let block = |i: u32| -> Vec<u8> {
            let mut x = i as u64;
            (0..8192)
                .flat_map(|_| {
                    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
                    let z = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                    (z ^ (z >> 31)).to_le_bytes()
                })
                .collect()
        };
        // Blocks `ids` of `lineage`, four to a commit (small commits: their blocks go into the
        // log); returns their hashes.
        let put = |ids: std::ops::Range<u32>, lineage: u64, sync: bool| -> Vec<Hash> {
            let mut hashes = Vec::new();
            for chunk in ids.collect::<Vec<_>>().chunks(4) {
                let mut t = s.txn();
                for &i in chunk {
                    let b = block(i);
                    hashes.push(s.hash(&b));
                    t.add_ref(s.hash(&b), lineage, b);
                }
                s.commit(t, sync).unwrap();
            }
            hashes
        };
        let mut dead = put(0..300, 1, false);
        let live: Vec<Vec<u8>> = (1_000_000..1_000_016).map(block).collect();
        let live_h = put(1_000_000..1_000_016, 1, false);
        dead.extend(put(300..600, 1, false));
        let first_seg = |h: &Hash| segment::split(s.refs(h).unwrap().unwrap().loc).0;
        assert!(live_h.iter().all(|h| first_seg(h) == 1));
        seal(&s);
        // Segment 2 past half full: the log needs a new segment soon, so the cleaner keeps
        // what it empties.
        dead.extend(put(600..1160, 1, false));
        let mut t = s.txn();
        for h in &dead {
            t.drop_ref(*h, 1);
        }
        s.commit(t, false).unwrap();
        let seg_len = std::fs::metadata(s.dir().join("seg").join(format!("{:010}", 1))).unwrap().len();
        assert!(seg_len >= segment::SEGMENT_SIZE / 2, "segment 1 is {seg_len} bytes");
        // A reader looks the live blocks up and reads them over and over while the cleaner
        // moves them out of segment 1, and new records are written over their old copies.
        let stop = AtomicBool::new(false);
        let reads = AtomicU64::new(0);
        // Stops the reader however the scope ends (a failed assertion must not hang it).
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        std::thread::scope(|sc| {
            let _stop = Stop(&stop);
            sc.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let got = s.get_blocks(&live_h).expect("a read racing the cleaner failed");
                    assert!(got.iter().zip(&live).all(|(g, b)| g.as_deref() == Some(&b[..])), "wrong bytes");
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            });
            s.clean(0.5, true).unwrap();
            assert!(live_h.iter().all(|h| first_seg(h) != 1), "moved out of segment 1");
            assert!(s.log.recycled_bytes() >= seg_len / 2, "segment 1 kept for reuse");
            // The next segment is segment 1's file: no new file, no zeros ahead.
            seal(&s);
            assert_eq!(s.log.recycled_bytes(), 0);
            let seg3 = s.dir().join("seg").join(format!("{:010}", 3));
            assert_eq!(std::fs::metadata(&seg3).unwrap().len(), seg_len);
            assert!(!s.dir().join("seg").join(format!("{:010}", 1)).exists());
            put(5_000_000..5_000_160, 2, true);
        });
        assert!(reads.load(Ordering::Relaxed) > 0);
        assert_eq!(s.read_errors(), 0);
        // After a reopen (the log's replay over a reused file is `segment.rs`'s test) every
        // block reads back and the counts are exact.
        let dir = s.dir().to_path_buf();
        drop(s);
        let s = Store::open(&dir).unwrap();
        let fresh: Vec<Hash> = (5_000_000..5_000_160).map(|i| s.hash(&block(i))).collect();
        assert!(s.get_blocks(&fresh).unwrap().iter().all(|g| g.is_some()));
        assert_eq!(s.get_blocks(&live_h).unwrap().iter().zip(&live).filter(|(g, b)| g.as_deref() == Some(&b[..])).count(), 16);
        assert_eq!(s.space().unwrap().physical, (16 + 160) * 65536);
    }

    #[test]
    fn blocks_are_stored_once_and_freed_at_zero() {
        let (_d, s) = store();
        let data = vec![7u8; 4096];
        let h = s.hash(&data);
        let mut t = s.txn();
        t.add_ref(h, 1, data.clone());
        t.add_ref(h, 2, data.clone());
        s.commit(t, false).unwrap();
        let sp = s.space().unwrap();
        assert_eq!((sp.physical, sp.blocks), (4096, 1));
        assert_eq!(sp.lineages[&1], LineageSpace { logical: 4096, referenced: 4096, unique: 0 });
        assert_eq!(s.get_blocks(&[h]).unwrap()[0].as_deref(), Some(&data[..]));
        let mut t = s.txn();
        t.drop_ref(h, 2);
        s.commit(t, false).unwrap();
        assert_eq!(s.space().unwrap().lineages[&1].unique, 4096);
        assert_eq!(s.space().unwrap().lineages[&2], LineageSpace::default());
        let mut t = s.txn();
        t.drop_ref(h, 1);
        s.commit(t, false).unwrap();
        assert_eq!(s.space().unwrap().physical, 0);
        assert_eq!(s.get_blocks(&[h]).unwrap()[0], None);
        assert_eq!(s.get(cf::REFS, &h).unwrap(), None);
        // Counters survive a reopen.
        let dir = s.dir().to_path_buf();
        drop(s);
        let s = Store::open(&dir).unwrap();
        assert_eq!(s.space().unwrap().physical, 0);
    }

    #[test]
    fn dropping_a_missing_reference_is_refused_and_changes_nothing() {
        let (_d, s) = store();
        let mut t = s.txn();
        t.drop_ref([1; 16], 1);
        t.cat_put(&CatKey::Volume(77), b"x").unwrap();
        assert!(s.commit(t, false).is_err());
        assert_eq!(s.cat_get(&CatKey::Volume(77)).unwrap(), None);
    }

    #[test]
    fn versioned_reads_see_the_newest_version_at_an_epoch() {
        let (_d, s) = store();
        let id = Ident::Inode { lineage: 1, ino: 2 };
        let mut t = s.txn();
        t.put_version(&id, 1, b"one").unwrap();
        t.put_version(&id, 3, b"three").unwrap();
        t.put_version(&Ident::Inode { lineage: 1, ino: 3 }, 1, b"other").unwrap();
        s.commit(t, false).unwrap();
        assert_eq!(s.version_at(&id, 5).unwrap(), Some((3, b"three".to_vec())));
        assert_eq!(s.version_at(&id, 2).unwrap(), Some((1, b"one".to_vec())));
        assert_eq!(s.version_at(&id, 0).unwrap(), None);
        assert_eq!(s.versions(&id).unwrap().iter().map(|v| v.0).collect::<Vec<_>>(), vec![3, 1]);
        // Along a chain: lineage 9 at epoch 4 falls through to lineage 1 at epoch 2.
        let mut t = s.txn();
        t.put_version(&Ident::Inode { lineage: 9, ino: 3 }, 1, b"nine").unwrap();
        t.put_version(&Ident::Dirent { lineage: 1, dir: 2, name: b"a".to_vec() }, 1, b"a1").unwrap();
        t.put_version(&Ident::Dirent { lineage: 9, dir: 2, name: b"ab".to_vec() }, 2, b"ab9").unwrap();
        t.put_version(&Ident::Dirent { lineage: 9, dir: 2, name: b"a".to_vec() }, 5, b"too new").unwrap();
        s.commit(t, false).unwrap();
        let chain = [(9, 4), (1, 2)];
        let f = s.visible(&id, &chain).unwrap().unwrap();
        assert_eq!((f.level, f.epoch, f.value), (1, 1, b"one".to_vec()));
        let f = s.visible(&Ident::Inode { lineage: 0, ino: 3 }, &chain).unwrap().unwrap();
        assert_eq!((f.level, f.value), (0, b"nine".to_vec()));
        let seen = s.scan_visible(&Scan::Dirents { dir: 2 }, &chain).unwrap();
        let got: Vec<(Ident, usize, Vec<u8>)> = seen.into_iter().map(|(i, f)| (i, f.level, f.value)).collect();
        assert_eq!(
            got,
            vec![
                (Ident::Dirent { lineage: 9, dir: 2, name: b"a".to_vec() }, 1, b"a1".to_vec()),
                (Ident::Dirent { lineage: 9, dir: 2, name: b"ab".to_vec() }, 0, b"ab9".to_vec()),
            ]
        );
        // The batched lookups find what one lookup at a time finds, at every epoch (probed
        // by multi-get up to epoch 4, by seeks past it), deleted versions included.
        let mut t = s.txn();
        for (ino, epochs) in [(20u64, vec![1u64, 2, 6]), (21, vec![3]), (22, vec![]), (23, vec![1, 5])] {
            for e in epochs {
                t.put_version(&Ident::Inode { lineage: 1, ino }, e, format!("{ino}@{e}").as_bytes()).unwrap();
                t.put_version(&Ident::Count { lineage: 1, hash: [ino as u8; 16] }, e, &[e as u8]).unwrap();
            }
        }
        t.put_version(&Ident::Inode { lineage: 7, ino: 22 }, 2, b"22 in 7").unwrap();
        t.delete_version(&Ident::Inode { lineage: 1, ino: 20 }, 2).unwrap();
        s.commit(t, false).unwrap();
        let ids: Vec<Ident> = (20..24)
            .flat_map(|ino| [Ident::Inode { lineage: 1, ino }, Ident::Count { lineage: 1, hash: [ino as u8; 16] }])
            .collect();
        for e in 0..8 {
            let one: Vec<_> = ids.iter().map(|id| s.version_at(id, e).unwrap()).collect();
            assert_eq!(s.versions_at(&ids, e).unwrap(), one, "epoch {e}");
            let chain = [(7, e), (1, e)];
            let one: Vec<_> = ids.iter().map(|id| s.visible(id, &chain).unwrap().map(|f| (f.level, f.epoch, f.value))).collect();
            let many: Vec<_> = s.visible_many(&ids, &chain).unwrap().into_iter().map(|f| f.map(|f| (f.level, f.epoch, f.value))).collect();
            assert_eq!(many, one, "chain at epoch {e}");
        }
        let at = |ino: u64, e: u64| s.version_at(&Ident::Inode { lineage: 1, ino }, e).unwrap();
        assert_eq!(s.versions_at(&ids, 2).unwrap()[0], Some((1, b"20@1".to_vec())));
        assert_eq!(at(20, 4), Some((1, b"20@1".to_vec())));
        assert_eq!(at(20, 7), Some((6, b"20@6".to_vec())));
        assert_eq!(at(23, 4), Some((1, b"23@1".to_vec())));
        assert_eq!(at(23, 5), Some((5, b"23@5".to_vec())));
        assert_eq!((at(21, 2), at(22, 9)), (None, None));
        // Every version has its births entry, and deleting the version deletes it.
        let mut births = Vec::new();
        s.births(&Cursor::births_at(9, 0), |i, e| {
            births.push((i, e));
            Ok(true)
        })
        .unwrap();
        assert_eq!(births.len(), 3);
        let mut t = s.txn();
        t.delete_version(&Ident::Inode { lineage: 9, ino: 3 }, 1).unwrap();
        s.commit(t, false).unwrap();
        let mut n = 0;
        s.births(&Cursor::births_at(9, 0), |_, _| {
            n += 1;
            Ok(true)
        })
        .unwrap();
        assert_eq!(n, 2);
    }
}
