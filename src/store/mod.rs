//! The only module that uses RocksDB: column families, options, versioned reads, blocks and
//! reference counts, WAL syncs (grouped, `sync`). Everything above it sees typed identities
//! (`Ident`, `Scan`, `CatKey`), values (`records`) and `Txn`, never a key's bytes.

mod disk;
mod keys;
pub mod records;
mod sync;

use crate::memory::Budget;
use crate::error::{Error, Result};
pub use keys::{CatKey, CatRange, Ident, Scan};
use records::{Hash, RefRec};
use rocksdb::{
    BlockBasedOptions, BottommostLevelCompaction, Cache, ColumnFamily, ColumnFamilyDescriptor,
    CompactOptions, DBCompressionType, Direction, IteratorMode, Options, ReadOptions, WriteBatch,
    WriteBufferManager, WriteOptions, DB,
};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The on-disk format this build reads and writes.
pub const FORMAT_VERSION: u32 = 3;
const SECRET_LEN: usize = 192;

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
    batch: WriteBatch,
    /// (hash, lineage, delta, block bytes when the reference is new)
    refs: Vec<(Hash, u64, i64, Option<Vec<u8>>)>,
    /// Head view figures set outright (by the volume layer, which keeps them).
    set_views: Vec<(u64, ViewSpace)>,
}

pub struct Store {
    db: DB,
    dir: PathBuf,
    secret: Vec<u8>,
    /// Serializes refcount read-modify-write; holds the space counters it keeps exact.
    space: Mutex<Space>,
    wal_sync: sync::SyncGroup,
    disk: disk::Disk,
    /// The locator the next new block is kept under (one past the largest stored).
    next_loc: AtomicU64,
    /// Block reads that failed since start (a damaged blob record fails its CRC).
    read_errors: AtomicU64,
}

fn db_dir(store: &Path) -> PathBuf {
    store.join("db")
}

/// Makes a store private to its owner: the directories 0700, every file 0600 (block data of
/// every volume sits in RocksDB's WAL and blob files, the hash secret in the catalog). A store
/// found with looser modes (made by an older clonefs or by hand) is tightened with a log line.
pub fn make_private(store: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fn fix(p: &Path, mode: u32) -> Result<()> {
        let meta = std::fs::symlink_metadata(p)?;
        if meta.file_type().is_symlink() {
            return Ok(());
        }
        if meta.permissions().mode() & 0o077 != 0 {
            log::warn!("{} was readable by others (mode {:o}); setting {mode:o}", p.display(), meta.permissions().mode() & 0o7777);
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
        }
        Ok(())
    }
    for dir in [store.to_path_buf(), db_dir(store)] {
        if !dir.is_dir() {
            continue;
        }
        fix(&dir, 0o700)?;
        for entry in std::fs::read_dir(&dir)? {
            let p = entry?.path();
            if p.is_dir() {
                if p != db_dir(store) {
                    fix(&p, 0o700)?;
                }
            } else {
                fix(&p, 0o600)?;
            }
        }
    }
    Ok(())
}

/// `memtables`: the budget of all memtables; one CF's write buffer is a share of it.
fn cf_options(name: &str, cache: &Cache, memtables: u64) -> Options {
    let mut o = Options::default();
    let mut t = BlockBasedOptions::default();
    t.set_block_cache(cache);
    t.set_bloom_filter(10.0, false);
    t.set_cache_index_and_filter_blocks(true);
    match name {
        cf::BLOCKS => {
            // Block values are 4 KiB..1 MiB: keep them in blob files so compaction moves
            // 16-byte keys, not the data. No compression: on 2 cores lz4 cost a fifth of the
            // CPU of a sequential write and gains nothing on already-compressed data.
            // Blob GC is off in normal operation (it relocates live blobs of the oldest files
            // at every compaction, and hash keys make every compaction touch every file);
            // `compact` turns it on for one full pass.
            o.set_enable_blob_files(true);
            o.set_min_blob_size(1024);
            o.set_blob_file_size(256 << 20);
            o.set_blob_compression_type(DBCompressionType::None);
            o.set_enable_blob_gc(false);
            o.set_blob_cache(cache);
            o.set_write_buffer_size((memtables / 3).min(32 << 20) as usize);
            o.set_max_write_buffer_number(3);
        }
        _ => {
            o.set_compression_type(DBCompressionType::Lz4);
            o.set_write_buffer_size((memtables / 12).min(8 << 20) as usize);
            o.set_max_write_buffer_number(3);
        }
    }
    o.set_block_based_table_factory(&t);
    o
}

fn read_secret() -> Result<Vec<u8>> {
    let mut s = vec![0u8; SECRET_LEN];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut s)?;
    Ok(s)
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
        let mut b = WriteBatch::default();
        b.put_cf(cat, keys::catalog::FORMAT, FORMAT_VERSION.to_le_bytes());
        b.put_cf(cat, keys::catalog::SECRET, read_secret()?);
        b.put_cf(cat, keys::catalog::NEXT_VOLUME_ID, 1u64.to_le_bytes());
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        store.db.write_opt(b, &wo)?;
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
        // Before RocksDB: on a disk others filled, replaying its log needs the ballast's room.
        let disk = disk::Disk::open(dir, mem.memtables)?;
        let mut opts = Options::default();
        opts.create_if_missing(create);
        opts.create_missing_column_families(create);
        opts.set_max_background_jobs(2);
        // The WAL lives until every CF with data in it has flushed; past this size RocksDB
        // flushes the CFs that hold the oldest log, so the WAL stays this size on disk.
        opts.set_max_total_wal_size(64 << 20);
        opts.set_keep_log_file_num(3);
        // The kernel's readahead stays on: blocks a file wrote together lie together in a blob
        // file (see `keys`), and a sequential read of the file reads it forward. RocksDB's
        // default (FADV_RANDOM) made each block of a cold sequential read a disk read.
        opts.set_advise_random_on_open(false);
        // All memtables together stay within the budget (writers stall briefly past it), so
        // the daemon's memory is bounded whatever the write load.
        opts.set_write_buffer_manager(&WriteBufferManager::new_write_buffer_manager(mem.memtables as usize, true));
        let cache = Cache::new_lru_cache(mem.cache as usize);
        let cfs = cf::ALL.iter().map(|n| ColumnFamilyDescriptor::new(*n, cf_options(n, &cache, mem.memtables)));
        let db = DB::open_cf_descriptors(&opts, db_dir(dir), cfs).map_err(|e| {
            let s = e.into_string();
            if s.contains("lock") {
                Error::Conflict(format!("store {} is in use by another process ({s})", dir.display()))
            } else {
                Error::Db(s)
            }
        })?;
        let mut store =
            Store { db, dir: dir.to_path_buf(), secret: Vec::new(), space: Mutex::new(Space::default()), wal_sync: Default::default(), disk, next_loc: AtomicU64::new(1), read_errors: AtomicU64::new(0) };
        if !create {
            store.load_catalog()?;
        }
        Ok(store)
    }

    fn load_catalog(&mut self) -> Result<()> {
        let format = self
            .get(cf::CATALOG, keys::catalog::FORMAT)?
            .ok_or_else(|| Error::Corrupt("store has no format version".into()))?;
        let v = u32::from_le_bytes(format.as_slice().try_into().map_err(|_| Error::Corrupt("bad format record".into()))?);
        if v != FORMAT_VERSION {
            return Err(Error::Corrupt(format!(
                "store format version {v} is not supported by this clonefs (it knows {FORMAT_VERSION})"
            )));
        }
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
        *self.space_guard()? = space;
        let last = self.last_key(cf::BLOCKS, &[])?;
        let last = match last {
            Some(k) => keys::parse_block_key(&k).ok_or_else(|| Error::Corrupt(format!("bad blocks key {k:?}")))?,
            None => 0,
        };
        self.next_loc.store(last + 1, Ordering::Relaxed);
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
        xxhash_rust::xxh3::xxh3_128_with_secret(data, &self.secret).to_be_bytes()
    }

    fn get(&self, cfname: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(cfname)?, key)?)
    }

    /// The newest version of `ident` visible at `epoch`: (its epoch, its value).
    fn get_version(&self, cfname: &str, ident: &[u8], epoch: u64) -> Result<Option<(u64, Vec<u8>)>> {
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

    /// The highest inode number `lineage` has a version of.
    pub fn last_ino(&self, lineage: u64) -> Result<Option<u64>> {
        Ok(self.last_key(cf::INODES, &keys::lineage_prefix(lineage))?.map(|k| keys::read_u64(&k, 8)))
    }

    /// The highest block index below `below` that `lineage` has any version of for `ino`.
    pub fn last_extent_below(&self, lineage: u64, ino: u64, below: u64) -> Result<Option<u64>> {
        let mut it = self.db.raw_iterator_cf(self.cf(cf::EXTENTS)?);
        // Every version key of a lower index sorts before this bare prefix; none equals it.
        let bound = keys::extent_key(lineage, ino, below);
        it.seek_for_prev(&bound);
        if let Some(k) = it.key() {
            if k.starts_with(&keys::extents_of(lineage, ino)) && k < &bound[..] {
                return Ok(Some(keys::read_u64(k, 16)));
            }
        }
        it.status()?;
        Ok(None)
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

    /// Who references block `h`, if it is stored.
    pub fn refs(&self, h: &Hash) -> Result<Option<RefRec>> {
        self.get(cf::REFS, h)?.map(|v| RefRec::decode(&v)).transpose()
    }

    /// The last key starting with `prefix`, if any.
    fn last_key(&self, cfname: &str, prefix: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut it = self.db.raw_iterator_cf(self.cf(cfname)?);
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

    /// The bytes of blocks by hash (None for a block not stored): their locators from
    /// `refs`, then the bytes, in locator order so RocksDB reads each blob file forward.
    pub fn get_blocks(&self, hashes: &[Hash]) -> Result<Vec<Option<Vec<u8>>>> {
        let mut locs: Vec<(usize, [u8; 8])> = Vec::with_capacity(hashes.len());
        for (i, r) in self.db.batched_multi_get_cf(self.cf(cf::REFS)?, hashes.iter(), false).into_iter().enumerate() {
            if let Some(v) = r? {
                locs.push((i, keys::block_key(RefRec::decode(&v)?.loc)));
            }
        }
        locs.sort_by_key(|(_, k)| *k);
        let mut out = vec![None; hashes.len()];
        let got = self.db.batched_multi_get_cf(self.cf(cf::BLOCKS)?, locs.iter().map(|(_, k)| k), true);
        for ((i, k), r) in locs.iter().zip(got) {
            match r {
                Ok(v) => out[*i] = v.map(|s| s.to_vec()),
                Err(e) => {
                    // RocksDB checks each blob record's CRC: damaged bytes fail here and are
                    // never returned. `clonefs scrub` says which files use the block.
                    self.read_errors.fetch_add(1, Ordering::Relaxed);
                    let loc = keys::parse_block_key(k).unwrap_or(0);
                    log::error!("block {} at locator {loc} cannot be read: {e}", records::hex(&hashes[*i]));
                    return Err(e.into());
                }
            }
        }
        Ok(out)
    }

    /// Block reads that failed since the daemon started.
    pub fn read_errors(&self) -> u64 {
        self.read_errors.load(Ordering::Relaxed)
    }

    pub fn txn(&self) -> Txn<'_> {
        Txn { store: self, frees: false, batch: WriteBatch::default(), refs: Vec::new(), set_views: Vec::new() }
    }

    /// Writes `txn` atomically. Reference deltas are applied under the space lock: a block's
    /// bytes are written when its count leaves zero and deleted when it returns to zero.
    fn commit(&self, mut txn: Txn<'_>, sync: bool) -> Result<()> {
        // Read before the space lock: statvfs is a syscall, and a commit or two racing past
        // the same figure stays well inside the reserve.
        let avail = self.disk.available()?;
        let mut space = self.space_guard()?;
        let mut touched: HashMap<u64, LineageSpace> = HashMap::new();
        let views: HashMap<u64, ViewSpace> = txn.set_views.drain(..).collect();
        let mut new_space = (space.physical, space.blocks);
        if !txn.refs.is_empty() {
            let refs_cf = self.cf(cf::REFS)?;
            let blocks_cf = self.cf(cf::BLOCKS)?;
            // Group deltas by hash, keeping one copy of the bytes, in the order they were
            // staged: new blocks get locators in file order (see `keys`).
            let mut by_hash: HashMap<Hash, (Vec<(u64, i64)>, Option<Vec<u8>>)> = HashMap::new();
            let mut hashes: Vec<Hash> = Vec::new();
            for (h, l, d, data) in txn.refs.drain(..) {
                let e = by_hash.entry(h).or_insert_with(|| {
                    hashes.push(h);
                    Default::default()
                });
                e.0.push((l, d));
                if e.1.is_none() {
                    e.1 = data;
                }
            }
            let current = self.db.batched_multi_get_cf(refs_cf, hashes.iter(), false);
            for (h, cur) in hashes.iter().zip(current) {
                let before = match cur? {
                    Some(v) => RefRec::decode(&v)?,
                    None => RefRec::default(),
                };
                let (deltas, data) = by_hash.remove(h).unwrap_or_default();
                let mut after = before.clone();
                for (l, d) in deltas {
                    after.add(l, d)?;
                }
                if after.owners == before.owners {
                    continue;
                }
                let size = if before.owners.is_empty() {
                    let data = data.as_ref().ok_or_else(|| {
                        Error::Corrupt("reference to a block that is not stored".into())
                    })?;
                    data.len() as u32
                } else {
                    before.size
                };
                after.size = size;
                let s = size as u64;
                account(&space, &mut touched, &before, &after, s);
                if before.owners.is_empty() {
                    new_space.0 += s;
                    new_space.1 += 1;
                    // Under the space lock, so locators follow the order of commits.
                    after.loc = self.next_loc.fetch_add(1, Ordering::Relaxed);
                    if let Some(d) = &data {
                        txn.batch.put_cf(blocks_cf, keys::block_key(after.loc), d);
                    }
                }
                if after.owners.is_empty() {
                    new_space = match (new_space.0.checked_sub(s), new_space.1.checked_sub(1)) {
                        (Some(p), Some(b)) => (p, b),
                        _ => return Err(Error::Corrupt(format!("store space below zero freeing a block of {s} bytes"))),
                    };
                    txn.batch.delete_cf(refs_cf, h);
                    txn.batch.delete_cf(blocks_cf, keys::block_key(before.loc));
                } else {
                    txn.batch.put_cf(refs_cf, h, after.encode());
                }
            }
            let cat = self.cf(cf::CATALOG)?;
            for (l, ls) in &touched {
                txn.batch.put_cf(cat, keys::catalog::space(*l), ls.encode());
            }
            let mut stats = new_space.0.to_le_bytes().to_vec();
            stats.extend_from_slice(&new_space.1.to_le_bytes());
            txn.batch.put_cf(cat, keys::catalog::STORE_STATS, stats);
        }
        if !views.is_empty() {
            let cat = self.cf(cf::CATALOG)?;
            for (l, vs) in &views {
                txn.batch.put_cf(cat, keys::catalog::view(*l), vs.encode());
            }
        }
        let growth = if txn.frees {
            disk::Growth::Frees
        } else if new_space.0 > space.physical {
            disk::Growth::Data
        } else {
            disk::Growth::Meta
        };
        self.disk.admit(growth, txn.batch.size_in_bytes() as u64, avail)?;
        // Written unsynced under the space lock (refcounts are read-modify-write, and the
        // counters must follow the order of writes); synced after it, so one fsync never
        // stalls the commits of other volumes.
        self.db.write_opt(txn.batch, &WriteOptions::default())?;
        space.physical = new_space.0;
        space.blocks = new_space.1;
        for (l, ls) in touched {
            space.lineages.insert(l, ls);
        }
        space.views.extend(views);
        let seq = self.db.latest_sequence_number();
        drop(space);
        if sync {
            self.sync_to(seq)?;
        }
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

    /// Makes every write so far durable.
    pub fn sync(&self) -> Result<()> {
        self.sync_to(self.db.latest_sequence_number())
    }

    /// Makes every write up to sequence number `seq` durable, sharing the WAL sync with
    /// concurrent callers (group commit).
    fn sync_to(&self, seq: u64) -> Result<()> {
        self.wal_sync.sync_to(seq, || self.db.latest_sequence_number(), || Ok(self.db.flush_wal(true)?))
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
    pub fn view_space(&self, lineage: u64) -> Result<ViewSpace> {
        Ok(self.space_guard()?.views.get(&lineage).copied().unwrap_or_default())
    }

    /// Bytes RocksDB holds on disk (SST and blob files).
    pub fn disk_bytes(&self) -> u64 {
        let mut total = 0;
        for n in cf::ALL {
            if let Ok(c) = self.cf(n) {
                for p in ["rocksdb.total-sst-files-size", "rocksdb.total-blob-file-size"] {
                    total += self.db.property_int_value_cf(c, p).ok().flatten().unwrap_or(0);
                }
            }
        }
        total
    }

    /// Flushes memtables and compacts everything, so deleted blocks leave the disk.
    pub fn compact(&self) -> Result<()> {
        let mut co = CompactOptions::default();
        co.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
        let blocks = self.cf(cf::BLOCKS)?;
        self.db.set_options_cf(
            blocks,
            &[("enable_blob_garbage_collection", "true"), ("blob_garbage_collection_age_cutoff", "1.0")],
        )?;
        for n in cf::ALL {
            let c = self.cf(n)?;
            self.db.flush_cf(c)?;
            self.db.compact_range_cf_opt(c, None::<&[u8]>, None::<&[u8]>, &co);
        }
        self.db.set_options_cf(blocks, &[("enable_blob_garbage_collection", "false")])?;
        // Whatever reached a memtable meanwhile keeps the last WAL alive: flush it too.
        for n in cf::ALL {
            self.db.flush_cf(self.cf(n)?)?;
        }
        Ok(())
    }

    /// A consistent read-only view of the whole store at this instant (fsck).
    pub fn view(&self) -> View<'_> {
        View { store: self, snap: self.db.snapshot() }
    }
}

/// What `View::check_blocks` found.
#[derive(Debug, Default)]
pub struct BlockCheck {
    pub blocks: u64,
    pub bytes: u64,
    pub damaged: Vec<Damaged>,
}

#[derive(Debug)]
pub struct Damaged {
    pub hash: Hash,
    pub loc: u64,
    pub reason: String,
}

/// A point-in-time view of the store: later commits do not show in it.
pub struct View<'a> {
    store: &'a Store,
    snap: rocksdb::Snapshot<'a>,
}

impl View<'_> {
    /// Every key of a column family, in order.
    fn for_each(&self, cfname: &str, mut f: impl FnMut(&[u8], &[u8]) -> Result<()>) -> Result<()> {
        let c = self.store.cf(cfname)?;
        for item in self.snap.iterator_cf(c, IteratorMode::From(&[], Direction::Forward)) {
            let (k, v) = item?;
            f(&k, &v)?;
        }
        Ok(())
    }

    /// Every catalog record the layers above know (the store's own, format and secret, not).
    pub fn for_each_catalog(&self, mut f: impl FnMut(CatKey, &[u8]) -> Result<()>) -> Result<()> {
        self.for_each(cf::CATALOG, |k, v| match CatKey::parse(k) {
            Some(key) => f(key, v),
            None => Ok(()),
        })
    }

    /// Every version of every versioned key: (identity, epoch, value), newest first per key.
    pub fn for_each_version(&self, mut f: impl FnMut(Ident, u64, &[u8]) -> Result<()>) -> Result<()> {
        for cfname in cf::VERSIONED {
            self.for_each(cfname, |k, v| {
                let (id, epoch) = keys::parse_version(cfname, k).ok_or_else(|| Error::Corrupt(format!("bad {cfname} key {k:?}")))?;
                f(id, epoch, v)
            })?;
        }
        Ok(())
    }

    /// Every births entry: (identity, epoch) of the version it indexes.
    pub fn for_each_birth(&self, mut f: impl FnMut(Ident, u64) -> Result<()>) -> Result<()> {
        self.for_each(cf::BIRTHS, |k, _| {
            let (id, epoch) = keys::parse_birth(k).ok_or_else(|| Error::Corrupt(format!("bad births key {k:?}")))?;
            f(id, epoch)
        })
    }

    /// Every reference record: (block hash, owners).
    pub fn for_each_ref(&self, mut f: impl FnMut(Hash, RefRec) -> Result<()>) -> Result<()> {
        self.for_each(cf::REFS, |k, v| {
            let h: Hash = k.try_into().map_err(|_| Error::Corrupt(format!("bad refs key {k:?}")))?;
            f(h, RefRec::decode(v)?)
        })
    }

    /// Every extent version: (lineage, ino, block index, epoch, block hash or None for a hole).
    pub fn for_each_extent(&self, mut f: impl FnMut(u64, u64, u64, u64, Option<Hash>) -> Result<()>) -> Result<()> {
        self.for_each(cf::EXTENTS, |k, v| match keys::parse_version(cf::EXTENTS, k) {
            Some((Ident::Extent { lineage, ino, index }, epoch)) => f(lineage, ino, index, epoch, records::decode_extent(v)?),
            _ => Err(Error::Corrupt(format!("bad extents key {k:?}"))),
        })
    }

    /// Reads every stored block in locator order and checks it against its hash; `progress`
    /// gets the bytes of each block checked. A block that cannot be read (RocksDB's CRC),
    /// is missing, or does not hash to its key is reported, and the check goes on.
    pub fn check_blocks(&self, mut progress: impl FnMut(u64)) -> Result<BlockCheck> {
        let mut all: Vec<(u64, Hash, u32)> = Vec::new();
        self.for_each_ref(|h, r| {
            all.push((r.loc, h, r.size));
            Ok(())
        })?;
        all.sort_unstable_by_key(|b| b.0);
        let blocks = self.store.cf(cf::BLOCKS)?;
        let mut out = BlockCheck::default();
        for (loc, hash, size) in all {
            let problem = match self.snap.get_cf(blocks, keys::block_key(loc)) {
                Err(e) => Some(format!("cannot be read: {e}")),
                Ok(None) => Some("is missing".to_string()),
                Ok(Some(v)) if self.store.hash(&v) != hash => Some("does not match its hash".to_string()),
                Ok(Some(_)) => None,
            };
            out.blocks += 1;
            out.bytes += size as u64;
            if let Some(reason) = problem {
                out.damaged.push(Damaged { hash, loc, reason });
            }
            progress(size as u64);
        }
        Ok(out)
    }

    /// Every stored block: (locator it is kept under, bytes), in locator order.
    pub fn for_each_block(&self, mut f: impl FnMut(u64, &[u8]) -> Result<()>) -> Result<()> {
        self.for_each(cf::BLOCKS, |k, v| {
            let loc = keys::parse_block_key(k).ok_or_else(|| Error::Corrupt(format!("bad blocks key {k:?}")))?;
            f(loc, v)
        })
    }

    pub fn hash(&self, data: &[u8]) -> Hash {
        self.store.hash(data)
    }
}

/// Updates the space counters of every lineage whose relation to one block changed.
fn account(
    space: &Space,
    touched: &mut HashMap<u64, LineageSpace>,
    before: &RefRec,
    after: &RefRec,
    size: u64,
) {
    let get = |l: u64, touched: &mut HashMap<u64, LineageSpace>| -> LineageSpace {
        *touched.entry(l).or_insert_with(|| space.lineages.get(&l).copied().unwrap_or_default())
    };
    let count = |r: &RefRec, l: u64| r.owners.iter().find(|o| o.0 == l).map(|o| o.1).unwrap_or(0);
    let mut ls: Vec<u64> = before.owners.iter().chain(after.owners.iter()).map(|o| o.0).collect();
    ls.sort_unstable();
    ls.dedup();
    let sole = |r: &RefRec| if r.owners.len() == 1 { Some(r.owners[0].0) } else { None };
    for l in ls {
        let (b, a) = (count(before, l), count(after, l));
        let mut s = get(l, touched);
        s.logical = (s.logical + a * size).saturating_sub(b * size);
        if b == 0 && a > 0 {
            s.referenced += size;
        }
        if b > 0 && a == 0 {
            s.referenced = s.referenced.saturating_sub(size);
        }
        if sole(before) == Some(l) && sole(after) != Some(l) {
            s.unique = s.unique.saturating_sub(size);
        }
        if sole(after) == Some(l) && sole(before) != Some(l) {
            s.unique += size;
        }
        touched.insert(l, s);
    }
}

impl Txn<'_> {
    /// Deletes every key that starts with `prefix` (one range tombstone).
    fn delete_prefix(&mut self, cfname: &str, prefix: &[u8]) -> Result<()> {
        let end = keys::prefix_end(prefix).ok_or_else(|| Error::Invalid("cannot delete an unbounded prefix".into()))?;
        self.batch.delete_range_cf(self.store.cf(cfname)?, prefix, &end[..]);
        Ok(())
    }

    /// Adds one reference from `lineage` to the block `hash`, whose bytes are `data`.
    pub fn add_ref(&mut self, hash: Hash, lineage: u64, data: Vec<u8>) {
        self.refs.push((hash, lineage, 1, Some(data)));
    }

    /// Drops one reference from `lineage` to the block `hash`.
    pub fn drop_ref(&mut self, hash: Hash, lineage: u64) {
        self.refs.push((hash, lineage, -1, None));
    }

    /// Adds one reference to a block already stored (file-level clone).
    pub fn share_ref(&mut self, hash: Hash, lineage: u64) {
        self.refs.push((hash, lineage, 1, None));
    }

    pub fn cat_put(&mut self, k: &CatKey, value: &[u8]) -> Result<()> {
        self.batch.put_cf(self.store.cf(cf::CATALOG)?, k.encode(), value);
        Ok(())
    }

    pub fn cat_delete(&mut self, k: &CatKey) -> Result<()> {
        self.batch.delete_cf(self.store.cf(cf::CATALOG)?, k.encode());
        Ok(())
    }

    /// Deletes a births entry whose version is gone.
    pub fn delete_birth(&mut self, id: &Ident, epoch: u64) -> Result<()> {
        self.batch.delete_cf(self.store.cf(cf::BIRTHS)?, keys::birth(&id.encode(), epoch, cf::tag(id.cf())));
        Ok(())
    }

    /// Deletes one extent version of a lineage being removed whole: its births entry goes
    /// with the rest of the lineage (`delete_lineage`).
    pub fn delete_extent_version(&mut self, id: &Ident, epoch: u64) -> Result<()> {
        self.batch.delete_cf(self.store.cf(cf::EXTENTS)?, keys::versioned(id.encode(), epoch));
        Ok(())
    }

    /// Deletes every versioned key and births entry of a lineage (one range deletion per
    /// column family): the caller has dropped the block references of its extents.
    pub fn delete_lineage(&mut self, lineage: u64) -> Result<()> {
        let prefix = keys::lineage_prefix(lineage);
        for cfname in cf::VERSIONED.iter().chain([&cf::BIRTHS]) {
            self.delete_prefix(cfname, &prefix)?;
        }
        for k in [CatKey::Space(lineage), CatKey::View(lineage)] {
            self.cat_delete(&k)?;
        }
        Ok(())
    }

    /// Writes version `epoch` of `id` with its births entry (invariant 9).
    pub fn put_version(&mut self, id: &Ident, epoch: u64, value: &[u8]) -> Result<()> {
        let ident = id.encode();
        self.batch.put_cf(self.store.cf(cf::BIRTHS)?, keys::birth(&ident, epoch, cf::tag(id.cf())), []);
        self.batch.put_cf(self.store.cf(id.cf())?, keys::versioned(ident, epoch), value);
        Ok(())
    }

    /// Deletes version `epoch` of `id` with its births entry.
    pub fn delete_version(&mut self, id: &Ident, epoch: u64) -> Result<()> {
        let ident = id.encode();
        self.batch.delete_cf(self.store.cf(cf::BIRTHS)?, keys::birth(&ident, epoch, cf::tag(id.cf())));
        self.batch.delete_cf(self.store.cf(id.cf())?, keys::versioned(ident, epoch));
        Ok(())
    }

    /// Marks (or unmarks) inode `ino` of `lineage` as an orphan: unlinked while open.
    pub fn set_orphan(&mut self, lineage: u64, ino: u64, on: bool) -> Result<()> {
        let k = keys::catalog::orphan(lineage, ino);
        match on {
            true => self.batch.put_cf(self.store.cf(cf::CATALOG)?, k, []),
            false => self.batch.delete_cf(self.store.cf(cf::CATALOG)?, k),
        }
        Ok(())
    }

    /// Writes the batch atomically; with `sync`, makes it and everything before durable.
    pub fn commit(self, sync: bool) -> Result<()> {
        let store = self.store;
        store.commit(self, sync)
    }

    /// Marks the batch as one that removes things (unlink, truncate, destroy, GC): it is
    /// admitted whatever the free space, since it is what brings space back.
    pub fn frees(&mut self) {
        self.frees = true;
    }

    /// Sets the figures of `lineage`'s head view (a new head starts as its origin).
    pub fn set_view_space(&mut self, lineage: u64, vs: ViewSpace) {
        self.set_views.push((lineage, vs));
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
