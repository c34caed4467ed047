//! The versioning engine: a view reads one lineage at an epoch and falls through to its
//! ancestors; a `ViewTxn` stages new versions at the head epoch, replacing an old version in
//! place only when no pin sees it (invariant 8), and keeps the head's per-block counts
//! (invariant 12). Filesystem code above sees inodes, entries, extents and xattrs, never keys.

use super::lineage::{pinned_between, Pins};
use super::ViewSpec;
use crate::error::{Error, Result};
use crate::store::records::{self, BlockMap, DirentRec, Hash, InodeRec};
use crate::store::{CatKey, Found, Ident, Scan, Store, Txn, ViewSpace};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLockReadGuard};

/// Where a visible version was found: chain level (0 = own lineage, above it an ancestor
/// among those that hold versions of its column family) and epoch.
pub type At = (usize, u64);
/// Where a block's visible extent version is, and the block it names (None: a hole).
pub type ExtentAt = (At, Option<Hash>);

/// What an extent becomes.
pub enum Ext {
    Hole,
    /// New bytes with their hash.
    Data(Hash, crate::store::Bytes),
    /// A block already stored (shared by a file-level clone).
    Shared(Hash),
}

/// One volume or snapshot as a reader or writer sees it.
pub struct View {
    store: Arc<Store>,
    spec: ViewSpec,
    /// Held across the count reads and the commit of a batch that changes counts: counts
    /// are read-modify-write, and two batches of one head must not both start from the
    /// same count. Batches that change no count do not take it.
    counts: Mutex<()>,
    /// Moves after each commit of a batch that changed a directory entry of this view: a
    /// listing read after taking one value shows every entry as it is while it holds.
    names_gen: std::sync::atomic::AtomicU64,
    /// Per versioned column family, the parent levels whose lineage holds any version of
    /// it, found when this view first reads the family: the others never show it one
    /// (invariant 23), so lookups pass them by.
    parents_with: [std::sync::OnceLock<Vec<(u64, u64)>>; crate::store::VERSIONED_CFS],
}

impl View {
    pub fn new(store: Arc<Store>, spec: ViewSpec) -> View {
        View { store, spec, counts: Mutex::new(()), names_gen: Default::default(), parents_with: Default::default() }
    }

    /// See `names_gen`.
    pub fn names_gen(&self) -> u64 {
        self.names_gen.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn spec(&self) -> &ViewSpec {
        &self.spec
    }

    pub fn lineage(&self) -> u64 {
        self.spec.lineage
    }

    /// Epoch this view reads (and, for a head, writes) at. A head's moves only under the cut.
    pub fn epoch(&self) -> u64 {
        match self.spec.head {
            true => self.spec.state.head().unwrap_or(self.spec.epoch),
            false => self.spec.epoch,
        }
    }

    /// The lineages this view reads, nearest first, with the epoch read in each.
    pub fn chain(&self) -> Vec<(u64, u64)> {
        let parents = self.parents();
        let mut c = Vec::with_capacity(1 + parents.len());
        c.push((self.lineage(), self.epoch()));
        c.extend_from_slice(parents);
        c
    }

    /// How many parent levels the view reads: up to the first lineage a flatten parted from
    /// its parent while the view was open (its own versions answer for the levels below it
    /// since, invariant 26), none if that is the view's own. The root of a chain has no
    /// parent either, so a chain no flatten touched reads all of its levels.
    fn depth(&self) -> usize {
        if self.spec.state.parted() {
            return 0;
        }
        match self.spec.parent_states.iter().position(|s| s.parted()) {
            Some(i) => i + 1,
            None => self.spec.parents.len(),
        }
    }

    fn parents(&self) -> &[(u64, u64)] {
        &self.spec.parents[..self.depth()]
    }

    /// The parent levels of the chain that can show a version of column family `cfname`
    /// (invariant 23), down to `depth`.
    fn parents_in(&self, cfname: &str) -> Result<Cow<'_, [(u64, u64)]>> {
        let depth = self.depth();
        let Some(slot) = crate::store::versioned_slot(cfname) else { return Ok(Cow::Borrowed(&self.spec.parents[..depth])) };
        let all = match self.parents_with[slot].get() {
            Some(p) => p,
            None => {
                let mut p = Vec::with_capacity(self.spec.parents.len());
                for &(l, e) in &self.spec.parents {
                    if self.store.lineage_has_versions(cfname, l)? {
                        p.push((l, e));
                    }
                }
                self.parents_with[slot].get_or_init(|| p)
            }
        };
        if depth == self.spec.parents.len() {
            return Ok(Cow::Borrowed(all));
        }
        // The parted level is read whether or not the list has it: the flatten's copies
        // may be the first versions of the family in its lineage, put there after the list
        // was made.
        Ok(Cow::Owned(self.spec.parents[..depth].iter().enumerate().filter(|(i, x)| *i + 1 == depth || all.contains(x)).map(|(_, x)| *x).collect()))
    }

    /// `chain` without the parent levels that cannot show a version of `cfname`: what
    /// lookups in that column family read.
    fn chain_in(&self, cfname: &str) -> Result<Vec<(u64, u64)>> {
        let parents = self.parents_in(cfname)?;
        let mut c = Vec::with_capacity(1 + parents.len());
        c.push((self.lineage(), self.epoch()));
        c.extend_from_slice(&parents);
        Ok(c)
    }

    fn find(&self, id: &Ident) -> Result<Option<Found>> {
        self.store.visible(id, &self.chain_in(id.cf())?)
    }

    /// Visible versions of many identities of one column family, batched per level.
    fn find_many(&self, ids: &[Ident]) -> Result<Vec<Option<Found>>> {
        let Some(first) = ids.first() else { return Ok(Vec::new()) };
        self.store.visible_many(ids, &self.chain_in(first.cf())?)
    }

    fn scan(&self, scan: &Scan) -> Result<Vec<(Ident, Found)>> {
        self.store.scan_visible(scan, &self.chain_in(scan.cf())?)
    }

    /// The live records of inodes numbered in [from, to), in order.
    pub fn inode_records(&self, from: u64, to: u64) -> Result<Vec<(u64, InodeRec)>> {
        let mut out = Vec::new();
        for (id, f) in self.scan(&Scan::Inodes { from, to })? {
            if let (Ident::Inode { ino, .. }, Some(rec)) = (id, InodeRec::decode(&f.value)?) {
                out.push((ino, rec));
            }
        }
        Ok(out)
    }

    /// The highest inode number any lineage of the chain has used.
    pub fn max_ino(&self) -> Result<u64> {
        let mut max = 0;
        for l in std::iter::once(self.lineage()).chain(self.parents().iter().map(|p| p.0)) {
            max = max.max(self.store.last_ino(l)?.unwrap_or(0));
        }
        Ok(max)
    }

    /// The live record of `ino`.
    pub fn inode(&self, ino: u64) -> Result<Option<InodeRec>> {
        match self.find(&Ident::Inode { lineage: self.lineage(), ino })? {
            Some(f) => InodeRec::decode(&f.value),
            None => Ok(None),
        }
    }

    /// The visible version of entry `name` of `dir`: where it is, and the entry (None: a
    /// whiteout).
    pub fn dirent(&self, dir: u64, name: &[u8]) -> Result<Option<(At, Option<DirentRec>)>> {
        let id = Ident::Dirent { lineage: self.lineage(), dir, name: name.to_vec() };
        match self.find(&id)? {
            Some(f) => Ok(Some(((f.level, f.epoch), DirentRec::decode(&f.value)?))),
            None => Ok(None),
        }
    }

    /// `dirent` of many names of `dir`, with one batched read per level of the chain.
    pub fn dirents_named(&self, dir: u64, names: &[&[u8]]) -> Result<Vec<Option<(At, Option<DirentRec>)>>> {
        let ids: Vec<Ident> = names.iter().map(|n| Ident::Dirent { lineage: self.lineage(), dir, name: n.to_vec() }).collect();
        self.find_many(&ids)?
            .into_iter()
            .map(|f| f.map(|f| Ok(((f.level, f.epoch), DirentRec::decode(&f.value)?))).transpose())
            .collect()
    }

    /// `inode` of many inodes, with one batched read per level of the chain.
    pub fn inodes(&self, inos: &[u64]) -> Result<Vec<Option<InodeRec>>> {
        let ids: Vec<Ident> = inos.iter().map(|&ino| Ident::Inode { lineage: self.lineage(), ino }).collect();
        let mut out = Vec::with_capacity(inos.len());
        for f in self.find_many(&ids)? {
            out.push(match f {
                Some(f) => InodeRec::decode(&f.value)?,
                None => None,
            });
        }
        Ok(out)
    }

    /// Live entries of a directory, in name order.
    pub fn dirents(&self, dir: u64) -> Result<Vec<(Vec<u8>, DirentRec)>> {
        let mut out = Vec::new();
        for (id, f) in self.scan(&Scan::Dirents { dir })? {
            if let (Ident::Dirent { name, .. }, Some(d)) = (id, DirentRec::decode(&f.value)?) {
                out.push((name, d));
            }
        }
        Ok(out)
    }

    /// The visible version of xattr `name`: where it is, and its value (None: removed).
    pub fn xattr(&self, ino: u64, name: &[u8]) -> Result<Option<(At, Option<Vec<u8>>)>> {
        let id = Ident::Xattr { lineage: self.lineage(), ino, name: name.to_vec() };
        match self.find(&id)? {
            Some(f) => Ok(Some(((f.level, f.epoch), records::decode_xattr(&f.value)?))),
            None => Ok(None),
        }
    }

    /// Names of the live xattrs of `ino`.
    pub fn xattr_names(&self, ino: u64) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        for (id, f) in self.scan(&Scan::Xattrs { ino })? {
            if let (Ident::Xattr { name, .. }, false) = (id, records::is_tombstone(&f.value)) {
                out.push(name);
            }
        }
        Ok(out)
    }

    /// The visible extent of block `index`: where it was found, and its hash (None: hole).
    pub fn extent(&self, ino: u64, index: u64) -> Result<Option<(At, Option<Hash>)>> {
        match self.find(&Ident::Extent { lineage: self.lineage(), ino, index })? {
            Some(f) => Ok(Some(((f.level, f.epoch), records::decode_extent(&f.value)?))),
            None => Ok(None),
        }
    }

    /// `extent` for many blocks of a file, with batched lookups.
    pub fn extents_at(&self, ino: u64, indexes: &[u64]) -> Result<Vec<Option<ExtentAt>>> {
        let l = self.lineage();
        let ids: Vec<Ident> = indexes.iter().map(|&index| Ident::Extent { lineage: l, ino, index }).collect();
        self.find_many(&ids)?
            .into_iter()
            .map(|f| f.map(|f| Ok(((f.level, f.epoch), records::decode_extent(&f.value)?))).transpose())
            .collect()
    }

    /// Visible extents of a file in blocks [from, to), holes included: index -> (where, hash).
    pub fn extent_map(&self, ino: u64, from: u64, to: u64) -> Result<HashMap<u64, (At, Option<Hash>)>> {
        let mut m = HashMap::new();
        for (id, f) in self.scan(&Scan::Extents { ino, from, to })? {
            if let Ident::Extent { index, .. } = id {
                m.insert(index, ((f.level, f.epoch), records::decode_extent(&f.value)?));
            }
        }
        Ok(m)
    }

    /// Visible data extents of a file in blocks [from, to): (index, where found, hash).
    /// One block (a random read) is looked up by key, bloom-filtered, per level of the chain:
    /// never more seeks than a scan, and at a small epoch none, where building an iterator
    /// over every memtable and table file cost a third of a cached 4 KiB read's CPU.
    pub fn extents(&self, ino: u64, from: u64, to: u64) -> Result<Vec<(u64, At, Hash)>> {
        if to == from + 1 {
            return Ok(self.extent(ino, from)?.and_then(|(at, h)| Some((from, at, h?))).into_iter().collect());
        }
        let found = self.scan(&Scan::Extents { ino, from, to })?;
        let mut out = Vec::with_capacity(found.len());
        for (id, f) in found {
            if let (Ident::Extent { index, .. }, Some(h)) = (id, records::decode_extent(&f.value)?) {
                out.push((index, (f.level, f.epoch), h));
            }
        }
        Ok(out)
    }

    /// An upper bound of the last data block of `ino` below `below`: the highest index any
    /// lineage of the chain has a version of (None: nothing below).
    /// Whether the view's own lineage holds a version (of any epoch) of an extent of `ino`.
    pub fn has_own_extents(&self, ino: u64) -> Result<bool> {
        Ok(self.store.last_extent_below(self.lineage(), ino, u64::MAX)?.is_some())
    }

    pub fn last_extent_below(&self, ino: u64, below: u64) -> Result<Option<u64>> {
        let mut last = None;
        for (l, _) in self.chain() {
            last = last.max(self.store.last_extent_below(l, ino, below)?);
        }
        Ok(last)
    }

    /// Block contents by hash, in order (None: not stored).
    pub fn blocks(&self, hashes: &[Hash]) -> Result<Vec<Option<Vec<u8>>>> {
        self.store.get_blocks(hashes)
    }

    /// Asks the kernel's readahead for the stored bytes of blocks `hashes`
    /// (`Store::read_ahead`).
    pub fn read_ahead(&self, hashes: &[Hash]) -> Result<()> {
        self.store.read_ahead(hashes)
    }

    /// Block contents by hash, a read of adjacent blocks at a time (`Store::visit_runs`).
    pub fn visit_runs(&self, hashes: &[Hash], f: impl FnMut(&[(usize, usize)], crate::store::ReadBytes)) -> Result<()> {
        self.store.visit_runs(hashes, f)
    }

    /// Blocks this store holds by their BLAKE3 names (send streams): (hash, size).
    pub fn locals(&self, names: &[[u8; 32]]) -> Result<Vec<Option<(Hash, u64)>>> {
        self.store.locals(names)
    }

    pub fn hash(&self, data: &[u8]) -> Hash {
        self.store.hash(data)
    }

    /// `hash`, for another thread.
    pub fn hasher(&self) -> impl Fn(&[u8]) -> Hash + Send + 'static {
        let store = self.store.clone();
        move |data| store.hash(data)
    }

    /// The bytes fsyncs wrote over stored blocks of this head and not yet merged into them
    /// (left by a crash): (ino, block index, `W` value).
    pub fn written(&self) -> Result<Vec<(u64, u64, Vec<u8>)>> {
        Ok(self.store.written(Some(self.lineage()))?.into_iter().map(|(_, ino, idx, v)| (ino, idx, v)).collect())
    }

    /// Inodes unlinked while open when the daemon last stopped.
    pub fn orphans(&self) -> Result<Vec<u64>> {
        self.store.orphans(self.lineage())
    }

    /// LOGICAL and REFERENCED of this view: frozen for a snapshot, live for a head.
    pub fn space(&self) -> Result<ViewSpace> {
        match self.spec.frozen {
            Some(vs) => Ok(vs),
            None => self.store.view_space(self.lineage()),
        }
    }

    /// The directory that holds the store (its filesystem's inodes are ours).
    pub fn store_dir(&self) -> &Path {
        self.store.dir()
    }

    /// The head's `refquota`, as the catalog last committed it (a `clonefs set` holds for
    /// the next write of a mounted volume).
    pub fn refquota(&self) -> Option<u64> {
        self.spec.limits.as_ref().map(|c| c.refquota.load(std::sync::atomic::Ordering::Relaxed)).filter(|q| *q > 0)
    }

    /// The head's `quota` (on the bytes its own lineage holds), likewise.
    pub fn quota(&self) -> Option<u64> {
        self.spec.limits.as_ref().map(|c| c.quota.load(std::sync::atomic::Ordering::Relaxed)).filter(|q| *q > 0)
    }

    /// Bytes of the distinct blocks this view's own lineage references (what `quota` caps).
    pub fn own_bytes(&self) -> Result<u64> {
        Ok(self.store.lineage_space(self.lineage())?.referenced)
    }

    /// Bytes kept free on the store's disk, and the free bytes beyond them (what new data
    /// may take).
    pub fn reserve(&self) -> Result<(u64, u64)> {
        self.store.reserve()
    }

    /// Makes every batch committed so far durable.
    pub fn sync(&self) -> Result<()> {
        self.store.sync()
    }

    /// Makes every batch up to the one `ViewTxn::commit_unsynced` numbered `seq` durable.
    pub fn sync_to(&self, seq: u64) -> Result<()> {
        self.store.sync_to(seq)
    }

    /// A batch of changes at the head epoch. It holds the lineage's pins (read side) from
    /// its first decision until it commits: a pin the catalog removes meanwhile waits for it
    /// (see `volume::lineage`). Take one batch at a time per thread.
    pub fn txn(&self) -> Result<ViewTxn<'_>> {
        if self.spec.read_only || !self.spec.head {
            return Err(Error::Invalid(format!("{} is read-only", self.spec.name)));
        }
        Ok(ViewTxn { view: self, t: self.store.txn(), pins: self.spec.state.pins()?, counts: Default::default(), sizes: Default::default(), names: false })
    }
}

/// A batch of changes to a head view, committed atomically.
pub struct ViewTxn<'a> {
    view: &'a View,
    t: Txn<'a>,
    pins: RwLockReadGuard<'a, Pins>,
    /// Net change, per block, in how many extents of the head name it.
    counts: BlockMap<i64>,
    /// Sizes of blocks this batch may store first (not readable from the store yet).
    sizes: BlockMap<u64>,
    /// A directory entry is staged: `View::names_gen` moves once the batch has committed.
    names: bool,
}

impl ViewTxn<'_> {
    fn store(&self) -> &Store {
        &self.view.store
    }

    /// True if something older than the version at `b` of `id` would show through: an
    /// older version of our own lineage, or a version in an ancestor.
    fn older_visible(&self, id: &Ident, b: u64) -> Result<bool> {
        if b > 0 {
            if let Some((_, v)) = self.store().version_at(id, b - 1)? {
                return Ok(!records::is_tombstone(&v));
            }
        }
        Ok(match self.store().visible(id, &self.view.parents_in(id.cf())?)? {
            Some(f) => !records::is_tombstone(&f.value),
            None => false,
        })
    }

    /// Replaces the visible version `old` of `id` with `new` (None removes it). The old
    /// version is deleted if it is ours and no pin sees it (written at this epoch, or no
    /// snapshot between); otherwise it stays for the snapshot or ancestor that sees it.
    /// A removal writes a tombstone when something older would show through, unless `hide`
    /// is false (the caller knows nothing can reach the key any more).
    /// Returns true if the old version was deleted (its block reference must go).
    fn stage(&mut self, id: Ident, old: Option<At>, new: Option<&[u8]>, hide: bool) -> Result<bool> {
        let e = self.view.epoch();
        let old_dies = matches!(old, Some((0, b)) if b == e || !pinned_between(&self.pins, b, e));
        if let Some((0, b)) = old {
            if old_dies && b != e {
                self.t.delete_version(&id, b)?;
            }
        }
        let tomb;
        let value = match new {
            Some(v) => Some(v),
            None => {
                let shows = hide
                    && match old {
                        None => false,
                        Some(_) if !old_dies => true,
                        Some((_, b)) => self.older_visible(&id, b)?,
                    };
                if shows {
                    tomb = records::tombstone();
                    Some(&tomb[..])
                } else {
                    None
                }
            }
        };
        match value {
            Some(v) if old == Some((0, e)) => self.t.overwrite_version(&id, e, v)?,
            Some(v) => self.t.put_version(&id, e, v)?,
            None if old == Some((0, e)) => self.t.delete_version(&id, e)?,
            None => {}
        }
        Ok(old_dies)
    }

    /// Writes an inode record at the head epoch.
    pub fn put_inode(&mut self, ino: u64, rec: &InodeRec) -> Result<()> {
        let id = Ident::Inode { lineage: self.view.lineage(), ino };
        let old = self.view.find(&id)?.map(|f| (f.level, f.epoch));
        self.stage(id, old, Some(&rec.encode()), true)?;
        Ok(())
    }

    /// Writes the record of an inode number just allocated: no lineage of the chain has a
    /// version of it (numbers start past every lineage's highest, `View::max_ino`), so
    /// there is none to look up.
    pub fn put_new_inode(&mut self, ino: u64, rec: &InodeRec) -> Result<()> {
        let id = Ident::Inode { lineage: self.view.lineage(), ino };
        self.stage(id, None, Some(&rec.encode()), true)?;
        Ok(())
    }

    /// Names `ino` as entry `name` of `dir`.
    pub fn put_dirent(&mut self, dir: u64, name: &[u8], d: DirentRec) -> Result<()> {
        let old = self.view.dirent(dir, name)?.map(|x| x.0);
        self.put_dirent_at(dir, name, old, d)
    }

    /// `put_dirent` where the caller looked the name up already in this operation: its
    /// visible version is at `old` (a whiteout, or None).
    pub fn put_dirent_at(&mut self, dir: u64, name: &[u8], old: Option<At>, d: DirentRec) -> Result<()> {
        self.names = true;
        let id = Ident::Dirent { lineage: self.view.lineage(), dir, name: name.to_vec() };
        self.stage(id, old, Some(&d.encode()), true)?;
        Ok(())
    }

    /// Removes entry `name` of `dir`, whose visible version is at `at`.
    pub fn remove_dirent(&mut self, dir: u64, name: &[u8], at: At) -> Result<()> {
        self.names = true;
        let id = Ident::Dirent { lineage: self.view.lineage(), dir, name: name.to_vec() };
        self.stage(id, Some(at), None, true)?;
        Ok(())
    }

    /// Sets (`Some`) or removes xattr `name` of `ino`, whose visible version is at `at`.
    pub fn set_xattr(&mut self, ino: u64, name: &[u8], at: Option<At>, value: Option<&[u8]>) -> Result<()> {
        let id = Ident::Xattr { lineage: self.view.lineage(), ino, name: name.to_vec() };
        let v = value.map(records::encode_xattr);
        self.stage(id, at, v.as_deref(), true)?;
        Ok(())
    }

    /// Sets block `index` of `ino`, given what is visible there now (`old`). Returns the
    /// change in the file's count of stored blocks.
    pub fn set_extent(&mut self, ino: u64, index: u64, old: Option<(At, Option<Hash>)>, new: Ext) -> Result<i64> {
        let l = self.view.lineage();
        let old_hash = old.and_then(|o| o.1);
        let new_hash = match &new {
            Ext::Hole => None,
            Ext::Data(h, _) | Ext::Shared(h) => Some(*h),
        };
        if old_hash == new_hash {
            return Ok(0);
        }
        let value = new_hash.map(|h| records::encode_extent(&h));
        let dies = self.stage(Ident::Extent { lineage: l, ino, index }, old.map(|o| o.0), value.as_deref(), true)?;
        if let (Some(h), true) = (old_hash, dies) {
            self.t.drop_ref(h, l);
        }
        if let Some(h) = old_hash {
            *self.counts.entry(h).or_default() -= 1;
        }
        if let Some(h) = new_hash {
            *self.counts.entry(h).or_default() += 1;
        }
        match new {
            Ext::Hole => {}
            Ext::Data(h, data) => {
                self.sizes.insert(h, data.len() as u64);
                self.t.add_ref(h, l, data)
            }
            Ext::Shared(h) => self.t.share_ref(h, l),
        }
        Ok(new_hash.is_some() as i64 - old_hash.is_some() as i64)
    }

    /// Records the BLAKE3 name of block `h` (it came in a send stream).
    pub fn note_portable(&mut self, h: &Hash, name: &[u8; 32]) -> Result<()> {
        self.t.note_portable(h, name)
    }

    /// Marks the batch as one that removes things (admitted on a full disk).
    pub fn frees(&mut self) {
        self.t.frees();
    }

    /// Marks `ino` as unlinked while open (purged at its last release, or at the next mount).
    pub fn mark_orphan(&mut self, ino: u64) -> Result<()> {
        self.t.set_orphan(self.view.lineage(), ino, true)
    }

    /// Drops a mark that `purge_inode` will not (the inode has names).
    pub fn unmark_orphan(&mut self, ino: u64) -> Result<()> {
        self.t.set_orphan(self.view.lineage(), ino, false)
    }

    /// Drops data extent `index` (at `at`, naming `h`) of an inode being purged. An inherited
    /// extent stays in the lineage that owns it, under a tombstone in the head. One of this
    /// lineage that a snapshot still sees gets a tombstone: it tells GC when the head stopped
    /// seeing it, so the block is freed when that snapshot goes.
    pub fn drop_extent(&mut self, ino: u64, index: u64, at: At, h: Hash) -> Result<()> {
        let l = self.view.lineage();
        *self.counts.entry(h).or_default() -= 1;
        // The tombstone over an inherited extent keeps a purge's data batches, then
        // `purge_inode`, or a purge done again after a crash, from counting it off twice.
        if self.stage(Ident::Extent { lineage: l, ino, index }, Some(at), None, true)? {
            self.t.drop_ref(h, l);
        }
        Ok(())
    }

    /// Removes an inode with no names left and no open handles: data, xattrs, record. The
    /// caller bounds the batch: a big file's data goes first through `drop_extent`.
    /// Versions a snapshot still sees get tombstones, so GC frees them with the snapshot.
    pub fn purge_inode(&mut self, ino: u64) -> Result<()> {
        let l = self.view.lineage();
        let id = Ident::Inode { lineage: l, ino };
        let found = self.view.find(&id)?;
        let rec = match &found {
            Some(f) => InodeRec::decode(&f.value)?,
            None => None,
        };
        for (index, at, h) in self.stored_extents(ino, rec.as_ref())? {
            self.drop_extent(ino, index, at, h)?;
        }
        for (id, f) in self.view.scan(&Scan::Xattrs { ino })? {
            if f.level == 0 {
                self.stage(id, Some((0, f.epoch)), None, true)?;
            }
        }
        if let Some(f) = found {
            self.stage(id, Some((f.level, f.epoch)), None, true)?;
        }
        self.t.set_orphan(l, ino, false)
    }

    /// The visible data extents of `ino`, whose stored record is `rec`. A file of a few
    /// blocks is looked up block by block below its size (point reads, cheaper than a scan);
    /// since its `blocks` equals its stored extents (invariant 5), finding that many proves
    /// none lies elsewhere, and otherwise the scan decides.
    fn stored_extents(&self, ino: u64, rec: Option<&InodeRec>) -> Result<Vec<(u64, At, Hash)>> {
        const POINT_READS: u64 = 16;
        if let Some(r) = rec {
            let n = r.size.div_ceil(self.view.spec.block_size as u64);
            if n <= POINT_READS && r.blocks <= n {
                let indexes: Vec<u64> = (0..n).collect();
                let found: Vec<(u64, At, Hash)> = indexes
                    .iter()
                    .zip(self.view.extents_at(ino, &indexes)?)
                    .filter_map(|(&i, e)| e.and_then(|(at, h)| Some((i, at, h?))))
                    .collect();
                if found.len() as u64 == r.blocks {
                    return Ok(found);
                }
            }
        }
        self.view.extents(ino, 0, u64::MAX)
    }

    /// Records the bytes written over stored block `index` of `ino` (`records::encode_written`),
    /// to be merged into it later; replaces what was recorded for it before.
    pub fn put_written(&mut self, ino: u64, index: u64, value: &[u8]) -> Result<()> {
        self.t.cat_put(&CatKey::Written { lineage: self.view.lineage(), ino, index }, value)
    }

    /// Drops the record of bytes written over block `index` of `ino` (merged, or gone).
    pub fn drop_written(&mut self, ino: u64, index: u64) -> Result<()> {
        self.t.cat_delete(&CatKey::Written { lineage: self.view.lineage(), ino, index })
    }

    /// Writes the new blocks staged so far ahead of the commit (`Txn::write_ahead`).
    pub fn write_ahead(&mut self) -> Result<()> {
        self.t.write_ahead()
    }

    /// Commits the batch; with `sync`, makes it and everything before durable.
    pub fn commit(self, sync: bool) -> Result<()> {
        let view = self.view;
        let seq = self.commit_unsynced()?;
        match sync {
            true => view.sync_to(seq),
            false => Ok(()),
        }
    }

    /// Commits the batch and returns its record's seq (`View::sync_to` makes it durable):
    /// a caller holding a lock syncs after releasing it.
    pub fn commit_unsynced(self) -> Result<u64> {
        let ViewTxn { view, mut t, pins, counts, sizes, names } = self;
        let changes_counts = counts.values().any(|d| *d != 0);
        // Counts are read-modify-write: one batch of this head that changes them at a time
        // from here on. A batch that changes none (names, records, `W` records: an unlink,
        // a create, most fsyncs) touches no count and no figure, so it does not wait for
        // a flush's or purge's count reads (an unlink beside a purge of 4,096 files waited
        // 40-160 ms).
        let _one = match changes_counts {
            true => Some(view.counts.lock().map_err(|_| Error::Corrupt("view count lock poisoned by a panic".into()))?),
            false => None,
        };
        if changes_counts {
            let (before, vs) = count_changes(view, &mut t, &pins, counts, &sizes)?;
            // A batch that raises REFERENCED past the refquota is refused; others always pass.
            match view.refquota() {
                Some(q) if vs.referenced > before.referenced && vs.referenced > q => {
                    return Err(Error::Quota(format!(
                        "volume {} would reference {} bytes, over its refquota of {q}",
                        view.spec.name, vs.referenced
                    )));
                }
                _ => {}
            }
            t.set_view_space(view.lineage(), vs);
        }
        if let Some(q) = view.quota() {
            t.limit(view.lineage(), q, &view.spec.name);
        }
        let seq = t.commit_unsynced();
        if names {
            // After the commit (also a failed one): a listing that found the old entries
            // read the value before this.
            view.names_gen.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        drop(pins);
        seq
    }
}

/// Stages the head's new count versions for the blocks whose count changed (keeping an old
/// version while a pin sees it, like every versioned key) and returns the head's figures
/// before and after.
fn count_changes(
    view: &View,
    t: &mut Txn,
    pins: &Pins,
    deltas: BlockMap<i64>,
    sizes: &BlockMap<u64>,
) -> Result<(ViewSpace, ViewSpace)> {
    let store = &view.store;
    let (l, e) = (view.lineage(), view.epoch());
    let before = store.view_space(l)?;
    let mut vs = before;
    let mut deltas: Vec<(Hash, i64)> = deltas.into_iter().filter(|(_, d)| *d != 0).collect();
    // In hash order, so the count versions and their births entries go into the memtables
    // in key order (each next to the one before, no search from the top of the skip list).
    deltas.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    // Every read is batched over the blocks (a flush changes the counts of thousands).
    let unknown: Vec<Hash> = deltas.iter().filter(|(h, _)| !sizes.contains_key(h)).map(|(h, _)| *h).collect();
    let mut stored: BlockMap<Option<u64>> = unknown.iter().copied().zip(store.block_sizes(&unknown)?).collect();
    let ids: Vec<Ident> = deltas.iter().map(|(h, _)| Ident::Count { lineage: l, hash: *h }).collect();
    let parents = match ids.first() {
        Some(id) => view.parents_in(id.cf())?,
        None => Cow::Borrowed(&[][..]),
    };
    let owns = store.versions_at(&ids, e)?;
    let mut inherited = vec![None; ids.len()];
    let bare: Vec<usize> = (0..ids.len()).filter(|&i| owns[i].is_none()).collect();
    for (&i, f) in bare.iter().zip(store.visible_many(&bare.iter().map(|&i| ids[i].clone()).collect::<Vec<_>>(), &parents)?) {
        inherited[i] = f;
    }
    for (i, (h, d)) in deltas.iter().enumerate() {
        let size = match sizes.get(h) {
            Some(s) => *s,
            None => stored
                .remove(h)
                .flatten()
                .ok_or_else(|| Error::Corrupt(format!("view count of a block that is not stored ({d:+})")))?,
        };
        let was = match (&owns[i], &inherited[i]) {
            (Some((_, v)), _) => records::decode_count(v)?,
            (None, Some(f)) => records::decode_count(&f.value)?,
            (None, None) => 0,
        };
        let after = u64::try_from(was as i64 + d)
            .map_err(|_| Error::Corrupt(format!("view count of a block below zero ({was}{d:+})")))?;
        vs.logical = (vs.logical + after * size).saturating_sub(was * size);
        if was == 0 && after > 0 {
            vs.referenced += size;
        }
        if was > 0 && after == 0 {
            vs.referenced = vs.referenced.saturating_sub(size);
        }
        let id = &ids[i];
        if matches!(owns[i], Some((b, _)) if b == e) && after > 0 {
            t.overwrite_version(id, e, &records::encode_count(after))?;
            continue;
        }
        // The old own version goes unless a pin sees it (written before a snapshot); a
        // count of zero is written only where something older would show through.
        let older_shows = match owns[i] {
            Some((b, _)) if b == e || !pinned_between(pins, b, e) => {
                t.delete_version(id, b)?;
                after == 0 && older_count_shows(store, id, b, &parents)?
            }
            Some(_) => true,
            None => was > 0,
        };
        if after > 0 || older_shows {
            t.put_version(id, e, &records::encode_count(after))?;
        }
    }
    Ok((before, vs))
}

/// Whether a count older than own version `b` of `id` shows through once it goes: an
/// older own version, or one of the parents'.
fn older_count_shows(store: &Store, id: &Ident, b: u64, parents: &[(u64, u64)]) -> Result<bool> {
    if let Some(p) = b.checked_sub(1) {
        if store.version_at(id, p)?.is_some() {
            return Ok(true);
        }
    }
    Ok(store.visible(id, parents)?.is_some())
}
