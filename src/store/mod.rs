//! The only module that uses RocksDB: column families, options, versioned reads, blocks and
//! reference counts. Everything above it sees keys (`keys`), values (`records`) and `Txn`.

pub mod keys;
pub mod records;

use crate::error::{Error, Result};
use records::{Hash, RefRec};
use rocksdb::{
    BlockBasedOptions, BottommostLevelCompaction, Cache, ColumnFamily, ColumnFamilyDescriptor,
    CompactOptions, DBCompressionType, Direction, IteratorMode, Options, ReadOptions, WriteBatch,
    WriteBufferManager, WriteOptions, DB,
};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The on-disk format this build reads and writes.
pub const FORMAT_VERSION: u32 = 2;
const SECRET_LEN: usize = 192;

/// Column family names: the only place they are spelled.
pub mod cf {
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
        Error::Db(e.into_string())
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
    fn decode(b: &[u8]) -> Result<Self> {
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

/// The head view a transaction changes, as its block counts need it: the lineage and epoch
/// it writes at, its ancestors, and the pins that keep old count versions.
#[derive(Clone, Debug, Default)]
pub struct ViewCtx {
    pub lineage: u64,
    pub epoch: u64,
    pub parents: Vec<(u64, u64)>,
    pub pins: std::collections::BTreeSet<u64>,
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
pub struct Txn {
    batch: WriteBatch,
    /// (hash, lineage, delta, block bytes when the reference is new)
    refs: Vec<(Hash, u64, i64, Option<Vec<u8>>)>,
    /// Changes in how many extents of one head view name a block.
    view: Option<(ViewCtx, HashMap<Hash, i64>)>,
    /// View figures set outright (a new lineage starts with those of its origin).
    set_views: Vec<(u64, ViewSpace)>,
}

pub struct Store {
    db: DB,
    dir: PathBuf,
    secret: Vec<u8>,
    /// Serializes refcount read-modify-write; holds the space counters it keeps exact.
    space: Mutex<Space>,
}

fn db_dir(store: &Path) -> PathBuf {
    store.join("db")
}

fn cf_options(name: &str, cache: &Cache) -> Options {
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
            o.set_write_buffer_size(32 << 20);
            o.set_max_write_buffer_number(3);
        }
        _ => {
            o.set_compression_type(DBCompressionType::Lz4);
            o.set_write_buffer_size(8 << 20);
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
        let store = Store::open_inner(dir, true)?;
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

    /// Opens an existing store; refuses a directory that is not one, or of an unknown format.
    pub fn open(dir: &Path) -> Result<Store> {
        if !db_dir(dir).join("CURRENT").exists() {
            return Err(Error::NotFound(format!(
                "no clonefs store at {} (create one with `clonefs init --store {}`)",
                dir.display(),
                dir.display()
            )));
        }
        Store::open_inner(dir, false)
    }

    fn open_inner(dir: &Path, create: bool) -> Result<Store> {
        let mut opts = Options::default();
        opts.create_if_missing(create);
        opts.create_missing_column_families(create);
        opts.set_max_background_jobs(2);
        // The WAL lives until every CF with data in it has flushed; past this size RocksDB
        // flushes the CFs that hold the oldest log, so the WAL stays this size on disk.
        opts.set_max_total_wal_size(64 << 20);
        opts.set_keep_log_file_num(3);
        // All memtables together stay under 96 MiB (writers stall briefly past it), so the
        // daemon's memory is bounded whatever the write load.
        opts.set_write_buffer_manager(&WriteBufferManager::new_write_buffer_manager(96 << 20, true));
        let cache = Cache::new_lru_cache(96 << 20);
        let cfs = cf::ALL.iter().map(|n| ColumnFamilyDescriptor::new(*n, cf_options(n, &cache)));
        let db = DB::open_cf_descriptors(&opts, db_dir(dir), cfs).map_err(|e| {
            let s = e.into_string();
            if s.contains("lock") {
                Error::Conflict(format!("store {} is in use by another process ({s})", dir.display()))
            } else {
                Error::Db(s)
            }
        })?;
        let mut store =
            Store { db, dir: dir.to_path_buf(), secret: Vec::new(), space: Mutex::new(Space::default()) };
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
        *self.space.lock().map_err(|_| Error::Corrupt("poisoned".into()))? = space;
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

    pub fn get(&self, cfname: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(cfname)?, key)?)
    }

    /// The newest version of `ident` visible at `epoch`: (its epoch, its value).
    pub fn get_version(&self, cfname: &str, ident: &[u8], epoch: u64) -> Result<Option<(u64, Vec<u8>)>> {
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

    /// The newest visible version of `rest` along a lineage chain (nearest first): the
    /// first level with a version at or before its epoch wins, tombstones included.
    pub fn get_chain(&self, cfname: &str, rest: &[u8], chain: &[(u64, u64)]) -> Result<Option<Found>> {
        for (level, (l, e)) in chain.iter().enumerate() {
            let mut ident = l.to_be_bytes().to_vec();
            ident.extend_from_slice(rest);
            if let Some((epoch, value)) = self.get_version(cfname, &ident, *e)? {
                return Ok(Some(Found { level, epoch, value }));
            }
        }
        Ok(None)
    }

    /// The visible versions of every identity whose rest (key without lineage and epoch) lies
    /// in [start, end) under `prefix`, merged along a chain: nearest level wins per identity.
    /// Tombstones are included so callers can tell a deletion from absence.
    pub fn scan_chain(
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

    /// The last key starting with `prefix`, if any.
    pub fn last_key(&self, cfname: &str, prefix: &[u8]) -> Result<Option<Vec<u8>>> {
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
    pub fn scan(
        &self,
        cfname: &str,
        prefix: &[u8],
        mut f: impl FnMut(&[u8], &[u8]) -> Result<bool>,
    ) -> Result<()> {
        self.scan_from(cfname, prefix, prefix, &mut f)
    }

    /// Like `scan`, starting at `start` (which must sort at or after `prefix`).
    pub fn scan_from(
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

    pub fn get_blocks(&self, hashes: &[Hash]) -> Result<Vec<Option<Vec<u8>>>> {
        let cf = self.cf(cf::BLOCKS)?;
        let mut out = Vec::with_capacity(hashes.len());
        for r in self.db.batched_multi_get_cf(cf, hashes.iter(), false) {
            out.push(r?.map(|s| s.to_vec()));
        }
        Ok(out)
    }

    pub fn txn(&self) -> Txn {
        Txn { batch: WriteBatch::default(), refs: Vec::new(), view: None, set_views: Vec::new() }
    }

    /// Writes `txn` atomically. Reference deltas are applied under the space lock: a block's
    /// bytes are written when its count leaves zero and deleted when it returns to zero.
    pub fn commit(&self, mut txn: Txn, sync: bool) -> Result<()> {
        let mut space = self.space.lock().map_err(|_| Error::Corrupt("space lock poisoned".into()))?;
        let mut touched: HashMap<u64, LineageSpace> = HashMap::new();
        let mut views: HashMap<u64, ViewSpace> = txn.set_views.drain(..).collect();
        // Block sizes this commit learnt (new blocks are not readable from `refs` yet).
        let mut sizes: HashMap<Hash, u64> = HashMap::new();
        let mut new_space = (space.physical, space.blocks);
        if !txn.refs.is_empty() {
            let refs_cf = self.cf(cf::REFS)?;
            let blocks_cf = self.cf(cf::BLOCKS)?;
            // Group deltas by hash, keeping one copy of the bytes.
            let mut by_hash: HashMap<Hash, (Vec<(u64, i64)>, Option<Vec<u8>>)> = HashMap::new();
            for (h, l, d, data) in txn.refs.drain(..) {
                let e = by_hash.entry(h).or_default();
                e.0.push((l, d));
                if e.1.is_none() {
                    e.1 = data;
                }
            }
            let hashes: Vec<Hash> = by_hash.keys().copied().collect();
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
                sizes.insert(*h, s);
                account(&space, &mut touched, &before, &after, s);
                if before.owners.is_empty() {
                    new_space.0 += s;
                    new_space.1 += 1;
                    if let Some(d) = &data {
                        txn.batch.put_cf(blocks_cf, h, d);
                    }
                }
                if after.owners.is_empty() {
                    new_space.0 -= s;
                    new_space.1 -= 1;
                    txn.batch.delete_cf(refs_cf, h);
                    txn.batch.delete_cf(blocks_cf, h);
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
        if let Some((ctx, deltas)) = txn.view.take() {
            let base = views.get(&ctx.lineage).or(space.views.get(&ctx.lineage)).copied().unwrap_or_default();
            let vs = self.count_view(&mut txn.batch, base, &ctx, deltas, &sizes)?;
            views.insert(ctx.lineage, vs);
        }
        if !views.is_empty() {
            let cat = self.cf(cf::CATALOG)?;
            for (l, vs) in &views {
                txn.batch.put_cf(cat, keys::catalog::view(*l), vs.encode());
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(txn.batch, &wo)?;
        space.physical = new_space.0;
        space.blocks = new_space.1;
        for (l, ls) in touched {
            space.lineages.insert(l, ls);
        }
        space.views.extend(views);
        Ok(())
    }

    /// Applies a head view's count changes: stages the new count versions (keeping the old one
    /// while a pin sees it, like every versioned key) and returns the view's new figures.
    fn count_view(
        &self,
        batch: &mut WriteBatch,
        mut vs: ViewSpace,
        ctx: &ViewCtx,
        deltas: HashMap<Hash, i64>,
        sizes: &HashMap<Hash, u64>,
    ) -> Result<ViewSpace> {
        let counts = self.cf(cf::COUNTS)?;
        let births = self.cf(cf::BIRTHS)?;
        let tag = cf::tag(cf::COUNTS);
        let (l, e) = (ctx.lineage, ctx.epoch);
        for (h, d) in deltas {
            if d == 0 {
                continue;
            }
            let size = match sizes.get(&h) {
                Some(s) => *s,
                None => match self.get(cf::REFS, &h)? {
                    Some(v) => RefRec::decode(&v)?.size as u64,
                    None => return Err(Error::Corrupt(format!("view count of a block that is not stored ({d:+})"))),
                },
            };
            let ident = keys::count_key(l, &h);
            let own = self.get_version(cf::COUNTS, &ident, e)?;
            let before = match &own {
                Some((_, v)) => records::decode_count(v)?,
                None => match self.get_chain(cf::COUNTS, &h, &ctx.parents)? {
                    Some(f) => records::decode_count(&f.value)?,
                    None => 0,
                },
            };
            let after = before as i64 + d;
            if after < 0 {
                return Err(Error::Corrupt(format!("view count of a block below zero ({before}{d:+})")));
            }
            let after = after as u64;
            vs.logical = (vs.logical + after * size).saturating_sub(before * size);
            if before == 0 && after > 0 {
                vs.referenced += size;
            }
            if before > 0 && after == 0 {
                vs.referenced = vs.referenced.saturating_sub(size);
            }
            // The old own version goes unless a pin sees it (written before a snapshot).
            let mut older_shows = false;
            if let Some((b, _)) = own {
                let dies = b == e || !ctx.pins.range(b..e).next().is_some();
                if dies {
                    batch.delete_cf(counts, keys::versioned(ident.clone(), b));
                    batch.delete_cf(births, keys::birth(&ident, b, tag));
                    older_shows = match b.checked_sub(1) {
                        Some(p) => self.get_version(cf::COUNTS, &ident, p)?.is_some(),
                        None => false,
                    } || self.get_chain(cf::COUNTS, &h, &ctx.parents)?.is_some();
                } else {
                    older_shows = true;
                }
            } else if before > 0 {
                older_shows = true;
            }
            if after > 0 || older_shows {
                batch.put_cf(births, keys::birth(&ident, e, tag), []);
                batch.put_cf(counts, keys::versioned(ident, e), records::encode_count(after));
            }
        }
        Ok(vs)
    }

    /// RocksDB's sequence number: it grows by one per key written (tests count writes with it).
    pub fn sequence(&self) -> u64 {
        self.db.latest_sequence_number()
    }

    /// Makes every write so far durable.
    pub fn sync(&self) -> Result<()> {
        Ok(self.db.flush_wal(true)?)
    }

    pub fn space(&self) -> Space {
        self.space.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Drops the counters of a lineage whose keys are all gone.
    pub fn forget_lineage(&self, lineage: u64) {
        if let Ok(mut s) = self.space.lock() {
            s.lineages.remove(&lineage);
            s.views.remove(&lineage);
        }
    }

    /// What the head view of `lineage` holds (as of the last commit).
    pub fn view_space(&self, lineage: u64) -> ViewSpace {
        self.space.lock().ok().and_then(|s| s.views.get(&lineage).copied()).unwrap_or_default()
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

/// A point-in-time view of the store: later commits do not show in it.
pub struct View<'a> {
    store: &'a Store,
    snap: rocksdb::Snapshot<'a>,
}

impl View<'_> {
    /// Every key of a column family, in order.
    pub fn for_each(&self, cfname: &str, mut f: impl FnMut(&[u8], &[u8]) -> Result<()>) -> Result<()> {
        let c = self.store.cf(cfname)?;
        for item in self.snap.iterator_cf(c, IteratorMode::From(&[], Direction::Forward)) {
            let (k, v) = item?;
            f(&k, &v)?;
        }
        Ok(())
    }

    pub fn get(&self, cfname: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.snap.get_cf(self.store.cf(cfname)?, key)?)
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

impl Txn {
    pub fn put(&mut self, store: &Store, cfname: &str, key: &[u8], value: &[u8]) -> Result<()> {
        self.batch.put_cf(store.cf(cfname)?, key, value);
        Ok(())
    }

    pub fn delete(&mut self, store: &Store, cfname: &str, key: &[u8]) -> Result<()> {
        self.batch.delete_cf(store.cf(cfname)?, key);
        Ok(())
    }

    /// Deletes every key that starts with `prefix` (one range tombstone).
    pub fn delete_prefix(&mut self, store: &Store, cfname: &str, prefix: &[u8]) -> Result<()> {
        let end = keys::prefix_end(prefix).ok_or_else(|| Error::Invalid("cannot delete an unbounded prefix".into()))?;
        self.batch.delete_range_cf(store.cf(cfname)?, prefix, &end[..]);
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

    /// One more (`delta` 1) or one fewer (-1) extent of the head view `ctx` names `hash`.
    /// A transaction changes at most one head view.
    pub fn view_ref(&mut self, ctx: impl FnOnce() -> ViewCtx, hash: Hash, delta: i64) {
        let (_, m) = self.view.get_or_insert_with(|| (ctx(), HashMap::new()));
        *m.entry(hash).or_default() += delta;
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
        let sp = s.space();
        assert_eq!((sp.physical, sp.blocks), (4096, 1));
        assert_eq!(sp.lineages[&1], LineageSpace { logical: 4096, referenced: 4096, unique: 0 });
        assert_eq!(s.get_blocks(&[h]).unwrap()[0].as_deref(), Some(&data[..]));
        let mut t = s.txn();
        t.drop_ref(h, 2);
        s.commit(t, false).unwrap();
        assert_eq!(s.space().lineages[&1].unique, 4096);
        assert_eq!(s.space().lineages[&2], LineageSpace::default());
        let mut t = s.txn();
        t.drop_ref(h, 1);
        s.commit(t, false).unwrap();
        assert_eq!(s.space().physical, 0);
        assert_eq!(s.get_blocks(&[h]).unwrap()[0], None);
        assert_eq!(s.get(cf::REFS, &h).unwrap(), None);
        // Counters survive a reopen.
        let dir = s.dir().to_path_buf();
        drop(s);
        let s = Store::open(&dir).unwrap();
        assert_eq!(s.space().physical, 0);
    }

    #[test]
    fn dropping_a_missing_reference_is_refused_and_changes_nothing() {
        let (_d, s) = store();
        let mut t = s.txn();
        t.drop_ref([1; 16], 1);
        t.put(&s, cf::CATALOG, b"Zprobe", b"x").unwrap();
        assert!(s.commit(t, false).is_err());
        assert_eq!(s.get(cf::CATALOG, b"Zprobe").unwrap(), None);
    }

    #[test]
    fn view_counts_are_versioned_like_extents_and_inherited_by_clones() {
        let (_d, s) = store();
        let data = vec![7u8; 4096];
        let h = s.hash(&data);
        let ctx = |l: u64, e: u64, parents: Vec<(u64, u64)>, pins: &[u64]| ViewCtx {
            lineage: l,
            epoch: e,
            parents,
            pins: pins.iter().copied().collect(),
        };
        // Two extents of lineage 1 name the block at epoch 1.
        let mut t = s.txn();
        t.add_ref(h, 1, data.clone());
        t.add_ref(h, 1, data.clone());
        t.view_ref(|| ctx(1, 1, vec![], &[]), h, 2);
        s.commit(t, false).unwrap();
        assert_eq!(s.view_space(1), ViewSpace { logical: 8192, referenced: 4096 });
        // Epoch 1 is pinned and the head writes at 2: one extent goes, the pin still sees two.
        let mut t = s.txn();
        t.view_ref(|| ctx(1, 2, vec![], &[1]), h, -1);
        s.commit(t, false).unwrap();
        assert_eq!(s.view_space(1), ViewSpace { logical: 4096, referenced: 4096 });
        let at = |l: u64, e: u64| {
            s.get_chain(cf::COUNTS, &h, &[(l, e)]).unwrap().map(|f| records::decode_count(&f.value).unwrap())
        };
        assert_eq!((at(1, 1), at(1, 2)), (Some(2), Some(1)));
        // A clone of (1, 1) starts with the pin's figures, reads its counts through the chain
        // and hides them with an explicit 0 when it drops both extents.
        let mut t = s.txn();
        t.set_view_space(2, ViewSpace { logical: 8192, referenced: 4096 });
        t.view_ref(|| ctx(2, 1, vec![(1, 1)], &[]), h, -2);
        s.commit(t, false).unwrap();
        assert_eq!(s.view_space(2), ViewSpace::default());
        assert_eq!(at(2, 1), Some(0));
        assert_eq!(at(1, 1), Some(2));
        // Below zero is refused and changes nothing.
        let mut t = s.txn();
        t.view_ref(|| ctx(2, 1, vec![(1, 1)], &[]), h, -1);
        assert!(s.commit(t, false).is_err());
        assert_eq!(s.view_space(2), ViewSpace::default());
        // The figures survive a reopen.
        let dir = s.dir().to_path_buf();
        drop(s);
        let s = Store::open(&dir).unwrap();
        assert_eq!(s.view_space(1), ViewSpace { logical: 4096, referenced: 4096 });
    }

    #[test]
    fn versioned_reads_see_the_newest_version_at_an_epoch() {
        let (_d, s) = store();
        let id = keys::inode_key(1, 2);
        let mut t = s.txn();
        t.put(&s, cf::INODES, &keys::versioned(id.clone(), 1), b"one").unwrap();
        t.put(&s, cf::INODES, &keys::versioned(id.clone(), 3), b"three").unwrap();
        t.put(&s, cf::INODES, &keys::versioned(keys::inode_key(1, 3), 1), b"other").unwrap();
        s.commit(t, false).unwrap();
        assert_eq!(s.get_version(cf::INODES, &id, 5).unwrap(), Some((3, b"three".to_vec())));
        assert_eq!(s.get_version(cf::INODES, &id, 2).unwrap(), Some((1, b"one".to_vec())));
        assert_eq!(s.get_version(cf::INODES, &id, 0).unwrap(), None);
        // Along a chain: lineage 9 at epoch 4 falls through to lineage 1 at epoch 2.
        let mut t = s.txn();
        t.put(&s, cf::INODES, &keys::versioned(keys::inode_key(9, 3), 1), b"nine").unwrap();
        s.commit(t, false).unwrap();
        let chain = [(9, 4), (1, 2)];
        let f = s.get_chain(cf::INODES, &id[8..], &chain).unwrap().unwrap();
        assert_eq!((f.level, f.epoch, f.value), (1, 1, b"one".to_vec()));
        let f = s.get_chain(cf::INODES, &keys::inode_key(1, 3)[8..], &chain).unwrap().unwrap();
        assert_eq!((f.level, f.value), (0, b"nine".to_vec()));
        let seen = s.scan_chain(cf::INODES, &[], &[], None, &chain).unwrap();
        let got: Vec<(u64, usize, Vec<u8>)> = seen.into_iter().map(|(r, f)| (keys::read_u64(&r, 0), f.level, f.value)).collect();
        assert_eq!(got, vec![(2, 1, b"one".to_vec()), (3, 0, b"nine".to_vec())]);
    }
}
