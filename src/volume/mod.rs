//! Volumes, lineages and snapshots in the catalog.
//!
//! A volume writes into one lineage at that lineage's head epoch. A snapshot pins
//! (lineage, epoch) and moves the head to epoch + 1, so versions written before it stay
//! visible to it. A clone is a new lineage whose parent is a pinned (lineage, epoch): reads
//! that find nothing in the clone's lineage fall through to the parent at that epoch.
//! Rollback gives the volume a new lineage whose parent is the snapshot; the old lineage loses
//! its head but keeps its pins, so newer snapshots live on. Destroying anything removes pins
//! or heads and leaves a GC marker; `gc` frees what no pin or head can see any more.

pub mod autosnap;
pub mod defrag;
pub mod diff;
pub mod flatten;
pub mod fsck;
pub mod gc;
pub mod idmap;
pub mod lineage;
pub mod receiving;
pub mod scrub;
pub mod view;

use crate::error::{Error, Result};
pub use crate::store::records::{DirentRec, Hash, InodeRec, Kind, Ts};
pub use crate::store::Bytes;
use crate::store::{CatKey, CatRange, Ident, Store, Txn, ViewSpace};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use lineage::{LineageState, Lineages};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub const ROOT_INO: u64 = 1;
pub const MIN_BLOCK: u32 = 4096;
pub const MAX_BLOCK: u32 = 1 << 20;
/// 16 KiB: the block-size sweep in docs/benchmarks.md (4K best for random 4 KiB writes, 64K
/// for sequential writes and cold reads; 16K closest to both).
pub const DEFAULT_BLOCK: u32 = 16 << 10;
/// GC marker epoch meaning "the lineage lost its head".
pub const HEAD_GONE: u64 = u64::MAX;
const RECORD_VERSION: u8 = 1;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumeRec {
    pub id: u64,
    pub name: String,
    /// The lineage the volume writes into.
    pub lineage: u64,
    pub block_size: u32,
    /// Seconds since the Unix epoch.
    pub created: i64,
    /// What it was cloned from, named as at the clone (`VOL@SNAP`, or `VOL (live, epoch
    /// N)`); `Origins` names it as things are called now.
    #[serde(default)]
    pub origin: Option<String>,
    /// The pinned (lineage, epoch) it was cloned from: what `origin` names, by ids that are
    /// never reused (None in records older than it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_at: Option<(u64, u64)>,
    /// Most bytes the volume's head may reference (REFERENCED), as ZFS's `refquota`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refquota: Option<u64>,
    /// Most bytes of blocks the volume itself may hold: what it wrote since it was made
    /// (a clone: on top of its origin), its snapshots' too; its lineage's referenced bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<u64>,
    /// Automatic snapshots to keep per period (`autosnap::Policy`, canonical text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_policy: Option<String>,
    /// How its mounts show stored owners (a remapped clone, `idmap`).
    #[serde(default, skip_serializing_if = "idmap::IdMap::is_empty")]
    pub idmap: idmap::IdMap,
    /// A database volume's engine, port, login and desired state (`clonefs db`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db: Option<crate::db::DbConf>,
    /// Set on the hidden volume a receive writes into (`receiving`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiving: Option<receiving::Receiving>,
    /// The member of the daemon's group that made it (None: root or the daemon's user):
    /// the one member that may change or destroy it (`daemon/access.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creator: Option<u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LineageRec {
    pub id: u64,
    /// (lineage, epoch) this lineage was cloned from.
    pub parent: Option<(u64, u64)>,
    /// Epoch the owning volume writes at; None once no volume writes here.
    pub head: Option<u64>,
    /// Pinned epochs (snapshots and clones' parents) with their counts.
    pub pins: BTreeMap<u64, u32>,
    pub block_size: u32,
}

/// Names clones' origins as things are called now: a volume renamed since the clone, or
/// destroyed, or a snapshot destroyed (clones outlive both), is shown as it is now.
pub struct Origins {
    /// (lineage, epoch) of every snapshot -> `VOL@SNAP`.
    snapshots: HashMap<(u64, u64), String>,
    /// Lineage -> the volume whose head or snapshots are in it.
    owners: HashMap<u64, String>,
}

impl Origins {
    pub fn load(store: &Store) -> Result<Origins> {
        let mut o = Origins { snapshots: HashMap::new(), owners: HashMap::new() };
        for v in Catalog::list(store)?.into_iter().filter(|v| v.receiving.is_none()) {
            for s in Catalog::snapshots(store, v.id)? {
                o.owners.entry(s.lineage).or_insert_with(|| v.name.clone());
                o.snapshots.insert((s.lineage, s.epoch), format!("{}@{}", v.name, s.name));
            }
            // The head's own lineage wins over one only its older snapshots are in.
            o.owners.insert(v.lineage, v.name.clone());
        }
        Ok(o)
    }

    /// What `v` was cloned from: `VOL@SNAP`, `VOL (live, epoch N)` for a clone of the live
    /// volume, with "(destroyed)" where it is gone. None for a volume that is no clone.
    pub fn name(&self, v: &VolumeRec) -> Option<String> {
        let (name, gone) = self.called(v)?;
        Some(if gone { format!("{name} (destroyed)") } else { name })
    }

    /// `v`'s origin as named now, and whether it is gone. A destroyed volume is named as
    /// its clones' records last recorded it (`Catalog::destroy` records its last name).
    fn called(&self, v: &VolumeRec) -> Option<(String, bool)> {
        let text = v.origin.clone()?;
        let Some(at) = v.origin_at else { return Some((text, false)) };
        if let Some(now) = self.snapshots.get(&at) {
            return Some((now.clone(), false));
        }
        let live = text.contains(" (live, ");
        Some(match (self.owners.get(&at.0), live) {
            (Some(vol), true) => (format!("{vol} (live, epoch {})", at.1), false),
            (Some(vol), false) => (format!("{vol}@{}", text.rsplit_once('@').map(|x| x.1).unwrap_or("?")), true),
            (None, _) => (text, true),
        })
    }

    /// The origin text of each clone of volume `gone` (by name) as it is named now, for the
    /// clones' records before `gone`'s name goes: after the destroy they keep naming it so,
    /// not by a name it had before a rename (which a new volume may have taken since).
    fn renamed_for_destroy(&self, vols: &[VolumeRec], gone: &str) -> Vec<VolumeRec> {
        vols.iter()
            .filter(|c| c.origin_at.is_some_and(|at| self.owners.get(&at.0).map(String::as_str) == Some(gone)))
            .filter_map(|c| {
                let (name, _) = self.called(c)?;
                (c.origin.as_deref() != Some(name.as_str())).then(|| VolumeRec { origin: Some(name), ..c.clone() })
            })
            .collect()
    }

    /// The volume `v` was cloned from, by its name now; None if it was destroyed (or `v` is
    /// no clone).
    pub fn source(&self, v: &VolumeRec) -> Option<String> {
        match v.origin_at {
            Some(at) => self.owners.get(&at.0).cloned(),
            None => parse_target(v.origin.as_deref()?).ok().map(|t| t.0),
        }
    }

    /// Whether snapshot (lineage, epoch), named `full` (`VOL@SNAP`), is the origin of a
    /// clone among `vols`.
    pub fn is_origin(vols: &[VolumeRec], at: (u64, u64), full: &str) -> bool {
        vols.iter().any(|v| match v.origin_at {
            Some(o) => o == at,
            None => v.origin.as_deref() == Some(full),
        })
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotRec {
    pub volume: u64,
    pub name: String,
    pub lineage: u64,
    pub epoch: u64,
    pub created: i64,
    #[serde(default)]
    pub holds: BTreeSet<String>,
    /// What the head held at the cut; a snapshot never changes.
    #[serde(default)]
    pub space: ViewSpace,
    /// Its id, random at creation and kept by received copies: an incremental stream names
    /// its base by it. 0 in records older than ids (see `SnapshotRec::id`).
    #[serde(default)]
    pub guid: u64,
    /// Inodes removed but not yet purged at the cut (open, or in the deferred purge's
    /// queue): the snapshot keeps them without names; a clone of it or a rollback to it
    /// marks them as orphans of its new head, which purges them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub orphans: Vec<u64>,
    /// The member of the daemon's group that took it, as `VolumeRec::creator`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creator: Option<u32>,
}

impl SnapshotRec {
    /// The snapshot's id; one made before ids existed gets a fixed one from what never
    /// changes about it.
    pub fn id(&self) -> u64 {
        if self.guid != 0 {
            return self.guid;
        }
        let mut b = Vec::new();
        for x in [self.volume, self.lineage, self.epoch, self.created as u64] {
            b.extend_from_slice(&x.to_le_bytes());
        }
        b.extend_from_slice(self.name.as_bytes());
        xxhash_rust::xxh3::xxh3_64(&b) | 1
    }
}

/// What a mounted view reads: its lineage at an epoch, then its ancestors.
#[derive(Clone, Debug)]
pub struct ViewSpec {
    pub name: String,
    pub volume: u64,
    pub lineage: u64,
    pub epoch: u64,
    pub parents: Vec<(u64, u64)>,
    /// The lineage's live head epoch and pins, owned by the catalog.
    pub state: Arc<LineageState>,
    /// The live state of each parent level, as `parents` (a flatten parts one).
    pub parent_states: Vec<Arc<LineageState>>,
    /// True for a volume's head (it follows the head epoch), false for a snapshot.
    pub head: bool,
    pub block_size: u32,
    pub read_only: bool,
    /// A snapshot's figures (a head's live ones are in the store).
    pub frozen: Option<ViewSpace>,
    /// A head's `refquota` and `quota`: the volume record's, kept by the catalog.
    pub limits: Option<Arc<Limits>>,
    /// How owners show (the volume's, for its head and its snapshots alike).
    pub idmap: Arc<idmap::IdMap>,
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    let mut out = vec![RECORD_VERSION];
    out.extend_from_slice(&serde_json::to_vec(v)?);
    Ok(out)
}

pub(crate) fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T> {
    match b.split_first() {
        Some((&RECORD_VERSION, rest)) => Ok(serde_json::from_slice(rest)?),
        _ => Err(Error::Corrupt("unknown catalog record version".into())),
    }
}

/// A file name as `diff` and `scrub` print it, one line per path whatever the name holds:
/// control characters, bytes that are not UTF-8 and `\` itself are written `\ooo` (octal,
/// as zfs diff does), so the bytes can be told back exactly.
pub fn name_text(name: &[u8]) -> String {
    let mut out = String::with_capacity(name.len());
    let octal = |out: &mut String, b: u8| out.push_str(&format!("\\{b:03o}"));
    for chunk in name.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => octal(&mut out, b'\\'),
                c if c.is_control() => {
                    let mut buf = [0u8; 4];
                    c.encode_utf8(&mut buf).bytes().for_each(|b| octal(&mut out, b));
                }
                c => out.push(c),
            }
        }
        chunk.invalid().iter().for_each(|b| octal(&mut out, *b));
    }
    out
}

/// A record's `creator` as `get` shows it: the member's uid, or `-` (root or the daemon's
/// user made it).
fn creator_text(c: Option<u32>) -> String {
    c.map_or_else(|| "-".into(), |u| u.to_string())
}

/// Checks a volume or snapshot name: what a user may type and a directory entry may hold.
pub fn check_name(name: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::Invalid(format!("invalid name {name:?}: {why}")));
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > 255 {
        return bad("longer than 255 bytes");
    }
    if name == "." || name == ".." {
        return bad("reserved");
    }
    if name.starts_with('-') {
        return bad("must not start with '-'");
    }
    // '%' is kept for receives in progress (`VOL%recv`).
    if let Some(c) = name.chars().find(|c| *c == '/' || *c == '\0' || *c == '@' || *c == '%' || c.is_control()) {
        return bad(&format!("contains {c:?}"));
    }
    Ok(())
}

/// Splits `VOL` or `VOL@SNAP`, checking both names.
pub fn parse_target(s: &str) -> Result<(String, Option<String>)> {
    match s.split_once('@') {
        Some((v, snap)) => {
            check_name(v)?;
            if snap.is_empty() {
                return Err(Error::Invalid(format!("invalid snapshot {s:?}: empty snapshot name after '@'")));
            }
            check_name(snap)?;
            Ok((v.to_string(), Some(snap.to_string())))
        }
        None => {
            check_name(s)?;
            Ok((s.to_string(), None))
        }
    }
}

/// Parses a block size such as `4K`, `64k`, `1M` or `65536`.
/// A block size a volume may have: a power of two from `MIN_BLOCK` to `MAX_BLOCK`.
pub fn check_block_size(block_size: u32) -> Result<()> {
    if !block_size.is_power_of_two() || !(MIN_BLOCK..=MAX_BLOCK).contains(&block_size) {
        return Err(Error::Invalid(format!("invalid block size {block_size}: use a power of two from 4K to 1M")));
    }
    Ok(())
}

pub fn parse_block_size(s: &str) -> Result<u32> {
    match crate::memory::parse_size(s) {
        Some(v) if v.is_power_of_two() && v >= MIN_BLOCK as u64 && v <= MAX_BLOCK as u64 => Ok(v as u32),
        _ => Err(Error::Invalid(format!("invalid block size {s:?}: use a power of two from 4K to 1M"))),
    }
}

/// A random snapshot id (never 0).
pub(crate) fn new_guid() -> Result<u64> {
    let b = crate::store::random_bytes(8)?;
    Ok(u64::from_le_bytes(b.try_into().map_err(|_| Error::Corrupt("short random read".into()))?) | 1)
}

fn now() -> i64 {
    Ts::now().sec
}

/// A volume's space limits in bytes (0: none), shared by the catalog and its head's views.
#[derive(Debug, Default)]
pub struct Limits {
    pub refquota: AtomicU64,
    pub quota: AtomicU64,
}

impl Limits {
    fn set(&self, v: &VolumeRec) {
        self.refquota.store(v.refquota.unwrap_or(0), Ordering::Relaxed);
        self.quota.store(v.quota.unwrap_or(0), Ordering::Relaxed);
    }
}

/// Serializes catalog changes against each other and against GC decisions, and owns the
/// in-memory state of lineages (and volumes' space limits) that views read.
pub struct Catalog {
    lock: Mutex<()>,
    /// One GC run at a time: two runs would free the same versions twice.
    gc: Mutex<()>,
    lineages: Lineages,
    /// Volume id -> its limits as of the last commit, shared with its views, so
    /// a write checks it without reading the record. Written only by `set_property`.
    limits: Mutex<HashMap<u64, Arc<Limits>>>,
}

impl Default for Catalog {
    fn default() -> Self {
        Catalog { lock: Mutex::new(()), gc: Mutex::new(()), lineages: Lineages::default(), limits: Mutex::new(HashMap::new()) }
    }
}

/// A catalog change: a store transaction and the lineage records it writes, which views see
/// once it commits (`Catalog::commit`).
pub struct CatTxn<'s> {
    t: Txn<'s>,
    written: Vec<LineageRec>,
    removed: Vec<u64>,
}

impl<'s> std::ops::Deref for CatTxn<'s> {
    type Target = Txn<'s>;
    fn deref(&self) -> &Txn<'s> {
        &self.t
    }
}

impl std::ops::DerefMut for CatTxn<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.t
    }
}

/// Result of taking a snapshot or an implicit one: the pinned epoch of the head lineage.
pub struct Cut {
    pub lineage: u64,
    pub epoch: u64,
}

impl Catalog {
    pub fn begin<'s>(&self, store: &'s Store) -> CatTxn<'s> {
        CatTxn { t: store.txn(), written: Vec::new(), removed: Vec::new() }
    }

    /// Commits a catalog change, then shows its lineage records to every view.
    pub fn commit(&self, t: CatTxn, sync: bool) -> Result<()> {
        t.t.commit(sync)?;
        self.lineages.apply(&t.written, &t.removed)
    }

    /// The live state of lineage `id`, shared with every view of it.
    pub fn lineage_state(&self, store: &Store, id: u64) -> Result<Arc<LineageState>> {
        self.lineages.get(id, || Self::lineage(store, id))
    }

    pub fn guard(&self) -> Result<std::sync::MutexGuard<'_, ()>> {
        self.lock.lock().map_err(|_| Error::Corrupt("catalog lock poisoned".into()))
    }

    pub fn list(store: &Store) -> Result<Vec<VolumeRec>> {
        let mut out: Vec<VolumeRec> = Vec::new();
        store.cat_scan(CatRange::Volumes, |_, v| {
            out.push(decode(v)?);
            Ok(true)
        })?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub fn get(store: &Store, name: &str) -> Result<VolumeRec> {
        check_name(name)?;
        Self::lookup(store, name)
    }

    /// Like `get`, for any name the catalog holds (a receive's hidden volume too).
    fn lookup(store: &Store, name: &str) -> Result<VolumeRec> {
        let id = store
            .cat_get(&CatKey::Name(name.as_bytes().to_vec()))?
            .ok_or_else(|| Error::NotFound(format!("no volume named {name:?}")))?;
        let id = u64::from_le_bytes(id.as_slice().try_into().map_err(|_| Error::Corrupt("bad name record".into()))?);
        Self::by_id(store, id)
    }

    pub fn by_id(store: &Store, id: u64) -> Result<VolumeRec> {
        let v = store
            .cat_get(&CatKey::Volume(id))?
            .ok_or_else(|| Error::Corrupt(format!("name points to missing volume {id}")))?;
        decode(&v)
    }

    pub fn lineage(store: &Store, id: u64) -> Result<LineageRec> {
        let v = store
            .cat_get(&CatKey::Lineage(id))?
            .ok_or_else(|| Error::Corrupt(format!("missing lineage {id}")))?;
        decode(&v)
    }

    pub fn lineages(store: &Store) -> Result<Vec<LineageRec>> {
        let mut out = Vec::new();
        store.cat_scan(CatRange::Lineages, |_, v| {
            out.push(decode(v)?);
            Ok(true)
        })?;
        Ok(out)
    }

    /// Ancestors of a lineage: [(parent, epoch), (grandparent, epoch), ...].
    pub fn parents(store: &Store, lineage: u64) -> Result<Vec<(u64, u64)>> {
        let mut out = Vec::new();
        let mut cur = Self::lineage(store, lineage)?.parent;
        while let Some((l, e)) = cur {
            out.push((l, e));
            if out.len() > 10_000 {
                return Err(Error::Corrupt("lineage cycle".into()));
            }
            cur = Self::lineage(store, l)?.parent;
        }
        Ok(out)
    }

    pub fn snapshots(store: &Store, volume: u64) -> Result<Vec<SnapshotRec>> {
        let mut out: Vec<SnapshotRec> = Vec::new();
        store.cat_scan(CatRange::SnapshotsOf(volume), |_, v| {
            out.push(decode(v)?);
            Ok(true)
        })?;
        out.sort_by_key(|s| (s.created, s.epoch));
        Ok(out)
    }

    pub fn snapshot(store: &Store, volume: &VolumeRec, name: &str) -> Result<SnapshotRec> {
        let v = store.cat_get(&CatKey::Snapshot { volume: volume.id, name: name.as_bytes().to_vec() })?.ok_or_else(|| {
            Error::NotFound(format!("no snapshot {}@{name}", volume.name))
        })?;
        decode(&v)
    }

    /// The view that mounting `VOL` (head, writable) or `VOL@SNAP` (read-only) reads.
    pub fn view(&self, store: &Store, vol: &str, snap: Option<&str>, read_only: bool) -> Result<ViewSpec> {
        let v = Self::get(store, vol)?;
        self.view_of(store, &v, snap, read_only)
    }

    /// The view that mounting `VOL` or `VOL@SNAP` reads, opened.
    pub fn open_view(&self, store: &Arc<Store>, vol: &str, snap: Option<&str>, read_only: bool) -> Result<view::View> {
        Ok(view::View::new(store.clone(), self.view(store, vol, snap, read_only)?))
    }

    /// Like `view`, for a volume record in hand.
    pub fn view_of(&self, store: &Store, v: &VolumeRec, snap: Option<&str>, read_only: bool) -> Result<ViewSpec> {
        let vol = v.name.as_str();
        let (lineage, epoch, name, frozen) = match snap {
            Some(s) => {
                let sr = Self::snapshot(store, v, s)?;
                (sr.lineage, sr.epoch, format!("{vol}@{s}"), Some(sr.space))
            }
            None => {
                let l = Self::lineage(store, v.lineage)?;
                let head = l.head.ok_or_else(|| Error::Corrupt(format!("volume {vol} has no head")))?;
                (v.lineage, head, vol.to_string(), None)
            }
        };
        let parents = Self::parents(store, lineage)?;
        let parent_states = parents.iter().map(|(l, _)| self.lineage_state(store, *l)).collect::<Result<_>>()?;
        Ok(ViewSpec {
            name,
            volume: v.id,
            lineage,
            epoch,
            parents,
            parent_states,
            state: self.lineage_state(store, lineage)?,
            limits: if frozen.is_none() { Some(self.limits_cell(store, v.id)?) } else { None },
            head: frozen.is_none(),
            block_size: v.block_size,
            read_only: read_only || snap.is_some(),
            frozen,
            idmap: Arc::new(v.idmap.clone()),
        })
    }

    fn next_id(store: &Store, t: &mut CatTxn, n: u64) -> Result<u64> {
        let id = match store.cat_get(&CatKey::NextVolumeId)? {
            Some(v) => u64::from_le_bytes(v.as_slice().try_into().map_err(|_| Error::Corrupt("bad id counter".into()))?),
            None => 1,
        };
        t.cat_put(&CatKey::NextVolumeId, &(id + n).to_le_bytes())?;
        Ok(id)
    }

    fn name_free(store: &Store, name: &str) -> Result<()> {
        if store.cat_get(&CatKey::Name(name.as_bytes().to_vec()))?.is_some() {
            return Err(Error::Conflict(format!("volume {name:?} already exists")));
        }
        Ok(())
    }

    fn put_volume(t: &mut CatTxn, v: &VolumeRec) -> Result<()> {
        t.cat_put(&CatKey::Volume(v.id), &encode(v)?)
    }

    /// Stages a lineage record; views see it when `t` commits. The only writer of `L` keys.
    fn put_lineage(t: &mut CatTxn, l: &LineageRec) -> Result<()> {
        t.t.cat_put(&CatKey::Lineage(l.id), &encode(l)?)?;
        t.written.push(l.clone());
        Ok(())
    }

    /// Stages the removal of a lineage record (GC removed all of its keys).
    fn remove_lineage(t: &mut CatTxn, id: u64) -> Result<()> {
        t.t.cat_delete(&CatKey::Lineage(id))?;
        t.removed.push(id);
        Ok(())
    }

    fn put_snapshot(t: &mut CatTxn, s: &SnapshotRec) -> Result<()> {
        t.cat_put(&CatKey::Snapshot { volume: s.volume, name: s.name.as_bytes().to_vec() }, &encode(s)?)
    }

    /// Drops one count of pin `epoch` on `l`; at zero, leaves GC work.
    fn unpin(t: &mut CatTxn, l: &mut LineageRec, epoch: u64) -> Result<()> {
        if l.unpin(epoch) {
            t.cat_put(&CatKey::Gc { lineage: l.id, epoch }, &[])?;
        }
        Ok(())
    }

    /// Creates an empty volume with a root directory owned by `uid:gid`, made by `creator`
    /// (a member of the daemon's group, or None).
    pub fn create(&self, store: &Store, name: &str, block_size: u32, uid: u32, gid: u32, creator: Option<u32>) -> Result<VolumeRec> {
        check_name(name)?;
        check_block_size(block_size)?;
        let _g = self.guard()?;
        Self::name_free(store, name)?;
        let mut t = self.begin(store);
        let rec = Self::stage_create(store, &mut t, name, block_size, uid, gid, creator)?;
        self.commit(t, true)?;
        Ok(rec)
    }

    /// Stages a new volume `name` (free, checked by the caller) with an empty root.
    fn stage_create(store: &Store, t: &mut CatTxn, name: &str, block_size: u32, uid: u32, gid: u32, creator: Option<u32>) -> Result<VolumeRec> {
        let id = Self::next_id(store, t, 2)?;
        let ts = Ts::now();
        let rec = VolumeRec { id, name: name.to_string(), lineage: id + 1, block_size, created: ts.sec, origin: None, origin_at: None, refquota: None, quota: None, snapshot_policy: None, idmap: Default::default(), receiving: None, db: None, creator };
        let lin = LineageRec { id: id + 1, parent: None, head: Some(1), pins: BTreeMap::new(), block_size };
        let root = InodeRec {
            kind: Kind::Dir,
            perm: 0o755,
            uid,
            gid,
            nlink: 2,
            rdev: 0,
            size: 0,
            blocks: 0,
            parent: ROOT_INO,
            atime: ts,
            mtime: ts,
            ctime: ts,
            crtime: ts,
            target: Vec::new(),
        };
        t.cat_put(&CatKey::Name(name.as_bytes().to_vec()), &id.to_le_bytes())?;
        Self::put_volume(t, &rec)?;
        Self::put_lineage(t, &lin)?;
        t.put_version(&Ident::Inode { lineage: lin.id, ino: ROOT_INO }, 1, &root.encode())?;
        Ok(rec)
    }

    pub fn rename(&self, store: &Store, old: &str, new: &str) -> Result<VolumeRec> {
        check_name(new)?;
        let _g = self.guard()?;
        let mut rec = Self::get(store, old)?;
        Self::name_free(store, new)?;
        rec.name = new.to_string();
        let mut t = self.begin(store);
        t.cat_delete(&CatKey::Name(old.as_bytes().to_vec()))?;
        t.cat_put(&CatKey::Name(new.as_bytes().to_vec()), &rec.id.to_le_bytes())?;
        Self::put_volume(&mut t, &rec)?;
        self.commit(t, true)?;
        Ok(rec)
    }

    /// Sets property `prop` of `vol` from its text (`Catalog::properties` lists them).
    pub fn set_property(&self, store: &Store, vol: &str, prop: &str, value: &str) -> Result<VolumeRec> {
        let _g = self.guard()?;
        let mut rec = Self::get(store, vol)?;
        match prop {
            "refquota" | "quota" => {
                let q = match value {
                    "none" | "0" => None,
                    v => Some(crate::memory::parse_size(v).filter(|q| *q > 0).ok_or_else(|| {
                        Error::Invalid(format!("{prop} must be a size such as 10G, or none: {v:?}"))
                    })?),
                };
                match prop {
                    "quota" => rec.quota = q,
                    _ => rec.refquota = q,
                }
            }
            "snapshot.policy" => {
                rec.snapshot_policy = match value {
                    "none" => None,
                    v => Some(autosnap::Policy::parse(v)?.text()),
                };
            }
            p if Self::properties(&rec, None).iter().any(|(k, _)| k == p) => {
                return Err(Error::Invalid(format!("property {p} is read-only")));
            }
            p => return Err(Error::Invalid(format!("no property named {p:?} (settable: quota, refquota, snapshot.policy)"))),
        }
        let mut t = self.begin(store);
        Self::put_volume(&mut t, &rec)?;
        self.commit(t, true)?;
        if let Some(c) = self.limits.lock().map_err(|_| Error::Corrupt("limits table poisoned".into()))?.get(&rec.id) {
            c.set(&rec);
        }
        Ok(rec)
    }

    /// Sets (or clears) a volume's database settings.
    pub fn set_db(&self, store: &Store, vol: &str, db: Option<crate::db::DbConf>) -> Result<VolumeRec> {
        let _g = self.guard()?;
        let mut rec = Self::get(store, vol)?;
        rec.db = db;
        let mut t = self.begin(store);
        Self::put_volume(&mut t, &rec)?;
        self.commit(t, true)?;
        Ok(rec)
    }

    /// The live limits of volume `id`, shared by its views. The table lock is held across
    /// the read of the record, so a `set_property` committed meanwhile (it updates the cell
    /// under the same lock after its commit) is never lost.
    fn limits_cell(&self, store: &Store, id: u64) -> Result<Arc<Limits>> {
        let mut cells = self.limits.lock().map_err(|_| Error::Corrupt("limits table poisoned".into()))?;
        if let Some(c) = cells.get(&id) {
            return Ok(c.clone());
        }
        let c = Arc::new(Limits::default());
        c.set(&Self::by_id(store, id)?);
        cells.insert(id, c.clone());
        Ok(c)
    }

    /// A volume's properties as (name, text) pairs, for `clonefs get`; `origin` as
    /// `Origins::name` gives it.
    pub fn properties(v: &VolumeRec, origin: Option<String>) -> Vec<(String, String)> {
        vec![
            ("name".into(), v.name.clone()),
            ("block_size".into(), v.block_size.to_string()),
            ("created".into(), v.created.to_string()),
            ("origin".into(), origin.unwrap_or_else(|| "-".into())),
            ("refquota".into(), v.refquota.map(|q| q.to_string()).unwrap_or_else(|| "none".into())),
            ("quota".into(), v.quota.map(|q| q.to_string()).unwrap_or_else(|| "none".into())),
            ("snapshot.policy".into(), v.snapshot_policy.clone().unwrap_or_else(|| "none".into())),
            ("idmap".into(), v.idmap.text()),
            ("creator".into(), creator_text(v.creator)),
        ]
    }

    /// What `get VOL@SNAP` shows: a snapshot's own properties (its space: `list`).
    pub fn snapshot_properties(v: &VolumeRec, s: &SnapshotRec) -> Vec<(String, String)> {
        let holds: Vec<&str> = s.holds.iter().map(String::as_str).collect();
        vec![
            ("name".into(), format!("{}@{}", v.name, s.name)),
            ("block_size".into(), v.block_size.to_string()),
            ("created".into(), s.created.to_string()),
            ("holds".into(), if holds.is_empty() { "none".into() } else { holds.join(",") }),
            ("creator".into(), creator_text(s.creator)),
        ]
    }

    /// Takes snapshot `snap` of `vol` at its head epoch. The caller has flushed the volume and
    /// holds its writes back (the cut), and moves a mounted head to the returned epoch + 1.
    pub fn snapshot_create(&self, store: &Store, vol: &str, snap: &str, creator: Option<u32>) -> Result<Cut> {
        check_name(snap)?;
        let _g = self.guard()?;
        let v = Self::get(store, vol)?;
        if store.cat_get(&CatKey::Snapshot { volume: v.id, name: snap.as_bytes().to_vec() })?.is_some() {
            return Err(Error::Conflict(format!("snapshot {vol}@{snap} already exists")));
        }
        let mut t = self.begin(store);
        let cut = Self::stage_cut(store, &mut t, &v)?;
        let s = SnapshotRec {
            volume: v.id,
            name: snap.to_string(),
            lineage: cut.lineage,
            epoch: cut.epoch,
            created: now(),
            holds: BTreeSet::new(),
            space: store.view_space(v.lineage)?,
            guid: new_guid()?,
            orphans: store.orphans(v.lineage)?,
            creator,
        };
        Self::put_snapshot(&mut t, &s)?;
        self.commit(t, true)?;
        Ok(cut)
    }

    /// Pins the head epoch of `v`'s lineage and moves the head past it.
    fn stage_cut(store: &Store, t: &mut CatTxn, v: &VolumeRec) -> Result<Cut> {
        let mut l = Self::lineage(store, v.lineage)?;
        let e = l.head.ok_or_else(|| Error::Corrupt(format!("volume {} has no head", v.name)))?;
        l.pin(e);
        l.head = Some(e + 1);
        Self::put_lineage(t, &l)?;
        Ok(Cut { lineage: l.id, epoch: e })
    }

    /// Clones `src` (`VOL@SNAP`, or `VOL` for an implicit snapshot of the live volume) as
    /// `new`. Returns the new volume and, for a live clone, the cut taken of `VOL`.
    /// `layer`: how the clone shows owners on top of its origin's map (empty: as the origin).
    /// `creator` as for `create`.
    pub fn clone_volume(&self, store: &Store, src: &str, new: &str, layer: idmap::Layer, creator: Option<u32>) -> Result<(VolumeRec, Option<Cut>)> {
        let (vol, snap) = parse_target(src)?;
        check_name(new)?;
        layer.check()?;
        let _g = self.guard()?;
        let v = Self::get(store, &vol)?;
        Self::name_free(store, new)?;
        let mut t = self.begin(store);
        let (parent, cut, origin, space, orphans) = match &snap {
            Some(s) => {
                let sr = Self::snapshot(store, &v, s)?;
                let mut l = Self::lineage(store, sr.lineage)?;
                l.pin(sr.epoch);
                Self::put_lineage(&mut t, &l)?;
                ((sr.lineage, sr.epoch), None, format!("{vol}@{s}"), sr.space, sr.orphans)
            }
            None => {
                let cut = Self::stage_cut(store, &mut t, &v)?;
                let origin = format!("{vol} (live, epoch {})", cut.epoch);
                ((cut.lineage, cut.epoch), Some(cut), origin, store.view_space(v.lineage)?, store.orphans(v.lineage)?)
            }
        };
        // Not inherited, as in ZFS: a clone starts without limits or a snapshot schedule.
        let rec = Self::stage_clone(store, &mut t, new, parent, space, v.block_size, Some(origin), v.idmap.with(layer), creator)?;
        for ino in orphans {
            t.set_orphan(rec.lineage, ino, true)?;
        }
        self.commit(t, true)?;
        Ok((rec, cut))
    }

    /// Stages volume `name` (free, checked by the caller) writing into a new lineage whose
    /// parent is the pinned (lineage, epoch) `parent`, starting with that view's figures.
    #[allow(clippy::too_many_arguments)]
    fn stage_clone(
        store: &Store,
        t: &mut CatTxn,
        name: &str,
        parent: (u64, u64),
        space: ViewSpace,
        block_size: u32,
        origin: Option<String>,
        idmap: idmap::IdMap,
        creator: Option<u32>,
    ) -> Result<VolumeRec> {
        let id = Self::next_id(store, t, 2)?;
        let rec = VolumeRec {
            id,
            name: name.to_string(),
            lineage: id + 1,
            block_size,
            created: now(),
            origin,
            origin_at: Some(parent),
            refquota: None,
            quota: None,
            snapshot_policy: None,
            idmap,
            receiving: None,
            db: None,
            creator,
        };
        let lin = LineageRec { id: id + 1, parent: Some(parent), head: Some(1), pins: BTreeMap::new(), block_size };
        t.set_view_space(lin.id, space);
        t.cat_put(&CatKey::Name(name.as_bytes().to_vec()), &id.to_le_bytes())?;
        Self::put_volume(t, &rec)?;
        Self::put_lineage(t, &lin)?;
        Ok(rec)
    }

    /// Gives `vol` a new lineage whose parent is snapshot `snap`; the old head lineage keeps
    /// its pins (newer snapshots stay) and loses its head. Returns the new head view.
    pub fn rollback(&self, store: &Store, vol: &str, snap: &str) -> Result<VolumeRec> {
        let _g = self.guard()?;
        let mut v = Self::get(store, vol)?;
        let sr = Self::snapshot(store, &v, snap)?;
        let mut t = self.begin(store);
        let mut old = Self::lineage(store, v.lineage)?;
        let id = Self::next_id(store, &mut t, 1)?;
        let lin = LineageRec {
            id,
            parent: Some((sr.lineage, sr.epoch)),
            head: Some(1),
            pins: BTreeMap::new(),
            block_size: v.block_size,
        };
        if old.id == sr.lineage {
            old.pin(sr.epoch);
            old.head = None;
            Self::put_lineage(&mut t, &old)?;
        } else {
            let mut target = Self::lineage(store, sr.lineage)?;
            target.pin(sr.epoch);
            Self::put_lineage(&mut t, &target)?;
            old.head = None;
            Self::put_lineage(&mut t, &old)?;
        }
        t.cat_put(&CatKey::Gc { lineage: old.id, epoch: HEAD_GONE }, &[])?;
        t.set_view_space(lin.id, sr.space);
        for ino in &sr.orphans {
            t.set_orphan(lin.id, *ino, true)?;
        }
        Self::put_lineage(&mut t, &lin)?;
        v.lineage = id;
        Self::put_volume(&mut t, &v)?;
        self.commit(t, true)?;
        Ok(v)
    }

    /// Destroys snapshot `vol@snap`; refuses a held one. Returns the unpinned (lineage, epoch).
    pub fn destroy_snapshot(&self, store: &Store, vol: &str, snap: &str) -> Result<(u64, u64)> {
        let _g = self.guard()?;
        let v = Self::get(store, vol)?;
        let sr = Self::snapshot(store, &v, snap)?;
        if !sr.holds.is_empty() {
            let tags: Vec<&str> = sr.holds.iter().map(String::as_str).collect();
            return Err(Error::Conflict(format!(
                "snapshot {vol}@{snap} is held ({}); release it first",
                tags.join(", ")
            )));
        }
        let mut t = self.begin(store);
        t.frees();
        t.cat_delete(&CatKey::Snapshot { volume: v.id, name: snap.as_bytes().to_vec() })?;
        let mut l = Self::lineage(store, sr.lineage)?;
        Self::unpin(&mut t, &mut l, sr.epoch)?;
        Self::put_lineage(&mut t, &l)?;
        self.commit(t, true)?;
        Ok((sr.lineage, sr.epoch))
    }

    /// Destroys a volume and its snapshots (refuses if one is held). Its data lives on while
    /// clones read it; the rest is freed by GC.
    pub fn destroy(&self, store: &Store, name: &str) -> Result<()> {
        check_name(name)?;
        self.destroy_volume(store, name)
    }

    /// `destroy` of any volume the catalog holds (a receive's hidden one too).
    fn destroy_volume(&self, store: &Store, name: &str) -> Result<()> {
        let _g = self.guard()?;
        let v = Self::lookup(store, name)?;
        let snaps = Self::snapshots(store, v.id)?;
        if let Some(h) = snaps.iter().find(|s| !s.holds.is_empty()) {
            return Err(Error::Conflict(format!("snapshot {name}@{} is held; release it first", h.name)));
        }
        let mut t = self.begin(store);
        t.frees();
        for c in Origins::load(store)?.renamed_for_destroy(&Self::list(store)?, name) {
            Self::put_volume(&mut t, &c)?;
        }
        let mut lins: BTreeMap<u64, LineageRec> = BTreeMap::new();
        for s in &snaps {
            t.cat_delete(&CatKey::Snapshot { volume: v.id, name: s.name.as_bytes().to_vec() })?;
            if !lins.contains_key(&s.lineage) {
                lins.insert(s.lineage, Self::lineage(store, s.lineage)?);
            }
            if let Some(l) = lins.get_mut(&s.lineage) {
                Self::unpin(&mut t, l, s.epoch)?;
            }
        }
        if !lins.contains_key(&v.lineage) {
            lins.insert(v.lineage, Self::lineage(store, v.lineage)?);
        }
        if let Some(l) = lins.get_mut(&v.lineage) {
            l.head = None;
        }
        t.cat_put(&CatKey::Gc { lineage: v.lineage, epoch: HEAD_GONE }, &[])?;
        for l in lins.values() {
            Self::put_lineage(&mut t, l)?;
        }
        t.cat_delete(&CatKey::Name(name.as_bytes().to_vec()))?;
        t.cat_delete(&CatKey::Volume(v.id))?;
        self.commit(t, true)?;
        Ok(())
    }

    pub fn hold(&self, store: &Store, vol: &str, snap: &str, tag: &str, on: bool) -> Result<()> {
        check_name(tag)?;
        let _g = self.guard()?;
        let v = Self::get(store, vol)?;
        let mut sr = Self::snapshot(store, &v, snap)?;
        let changed = if on { sr.holds.insert(tag.to_string()) } else { sr.holds.remove(tag) };
        if !changed {
            return Err(if on {
                Error::Conflict(format!("snapshot {vol}@{snap} already has hold {tag:?}"))
            } else {
                Error::NotFound(format!("snapshot {vol}@{snap} has no hold {tag:?}"))
            });
        }
        let mut t = self.begin(store);
        Self::put_snapshot(&mut t, &sr)?;
        self.commit(t, true)
    }

    /// Number of pending GC markers.
    pub fn pending_gc(store: &Store) -> Result<u64> {
        let mut n = 0;
        store.cat_scan(CatRange::Gc, |_, _| {
            n += 1;
            Ok(true)
        })?;
        Ok(n)
    }
}

/// The snapshots of one volume, as the `.snapshots` directory of its mount shows them.
pub struct SnapshotViews {
    store: Arc<Store>,
    catalog: Arc<Catalog>,
    volume: u64,
}

impl SnapshotViews {
    pub fn new(store: Arc<Store>, catalog: Arc<Catalog>, volume: u64) -> SnapshotViews {
        SnapshotViews { store, catalog, volume }
    }

    /// The volume's snapshot names, oldest first.
    pub fn names(&self) -> Result<Vec<String>> {
        Ok(Catalog::snapshots(&self.store, self.volume)?.into_iter().map(|s| s.name).collect())
    }

    /// A read-only view of snapshot `name`, or None if the volume has no such snapshot.
    pub fn open(&self, name: &str) -> Result<Option<view::View>> {
        let vol = Catalog::by_id(&self.store, self.volume)?;
        match self.catalog.view_of(&self.store, &vol, Some(name), true) {
            Ok(spec) => Ok(Some(view::View::new(self.store.clone(), spec))),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("db-prod_1.2").is_ok());
        assert!(check_name("ünïcode").is_ok());
        for bad in ["", ".", "..", "a/b", "a\0b", "a@b", "-x", &"x".repeat(256)] {
            assert!(matches!(check_name(bad), Err(Error::Invalid(_))), "{bad:?}");
        }
        assert!(check_name(&"x".repeat(255)).is_ok());
        assert_eq!(parse_target("a@b").unwrap(), ("a".to_string(), Some("b".to_string())));
        assert!(parse_target("a@").is_err());
        assert!(parse_target("@b").is_err());
        assert!(parse_target("a@b@c").is_err());
    }

    #[test]
    fn file_names_are_shown_one_line_each_and_exactly() {
        assert_eq!(name_text(b"plain name.txt"), "plain name.txt");
        assert_eq!(name_text("ünï".as_bytes()), "ünï");
        assert_eq!(name_text(b"a\nb\tc"), "a\\012b\\011c");
        assert_eq!(name_text(b"x\xff\xfey"), "x\\377\\376y");
        assert_eq!(name_text(b"back\\slash"), "back\\134slash");
        // C1 controls are two bytes of UTF-8: both escaped.
        assert_eq!(name_text("\u{85}".as_bytes()), "\\302\\205");
    }

    #[test]
    fn block_sizes_are_checked() {
        assert_eq!(parse_block_size("4K").unwrap(), 4096);
        assert_eq!(parse_block_size("64k").unwrap(), 65536);
        assert_eq!(parse_block_size("1M").unwrap(), 1 << 20);
        assert_eq!(parse_block_size("8192").unwrap(), 8192);
        for bad in ["2K", "2M", "3K", "abc", "", "K", "99999999999999999999K"] {
            assert!(parse_block_size(bad).is_err(), "{bad}");
        }
    }

    fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        Store::init(&d.path().join("s")).unwrap();
        let s = Store::open(&d.path().join("s")).unwrap();
        (d, s)
    }

    #[test]
    fn create_rename_destroy() {
        let (_d, s) = store();
        let c = Catalog::default();
        let v = c.create(&s, "a", 4096, 0, 0, None).unwrap();
        assert!(matches!(c.create(&s, "a", 4096, 0, 0, None), Err(Error::Conflict(_))));
        assert!(matches!(c.create(&s, "b", 1000, 0, 0, None), Err(Error::Invalid(_))));
        c.rename(&s, "a", "b").unwrap();
        assert!(matches!(Catalog::get(&s, "a"), Err(Error::NotFound(_))));
        assert_eq!(Catalog::get(&s, "b").unwrap().id, v.id);
        c.destroy(&s, "b").unwrap();
        assert!(Catalog::list(&s).unwrap().is_empty());
        gc::run(&s, &c).unwrap();
        assert_eq!(s.last_ino(v.lineage).unwrap(), None);
        let mut births = 0;
        s.births(&crate::store::Cursor::births_at(v.lineage, 0), |_, _| {
            births += 1;
            Ok(true)
        })
        .unwrap();
        assert_eq!(births, 0);
        assert!(Catalog::lineages(&s).unwrap().is_empty());
    }

    #[test]
    fn snapshot_and_clone_write_the_same_few_keys_whatever_the_volume_size() {
        let (_d, s) = store();
        let c = Catalog::default();
        let _small = c.create(&s, "small", 4096, 0, 0, None).unwrap();
        let big = c.create(&s, "big", 4096, 0, 0, None).unwrap();
        // 20,000 inodes and 20,000 extents in the big volume.
        let mut t = s.txn();
        for ino in 2..20_002u64 {
            t.put_version(&Ident::Inode { lineage: big.lineage, ino }, 1, b"x").unwrap();
            t.put_version(&Ident::Extent { lineage: big.lineage, ino, index: 0 }, 1, b"y").unwrap();
        }
        t.commit(false).unwrap();
        let cost = |f: &dyn Fn()| {
            let before = s.sequence();
            f();
            s.sequence() - before
        };
        let snap_small = cost(&|| drop(c.snapshot_create(&s, "small", "s", None).unwrap()));
        let snap_big = cost(&|| drop(c.snapshot_create(&s, "big", "s", None).unwrap()));
        let clone_small = cost(&|| drop(c.clone_volume(&s, "small@s", "cs", Default::default(), None).unwrap()));
        let clone_big = cost(&|| drop(c.clone_volume(&s, "big@s", "cb", Default::default(), None).unwrap()));
        let live_big = cost(&|| drop(c.clone_volume(&s, "big", "cl", Default::default(), None).unwrap()));
        assert_eq!(snap_small, snap_big);
        assert_eq!(clone_small, clone_big);
        // Each commit also writes its log mark.
        assert!(snap_big <= 4 && clone_big <= 7 && live_big <= 7, "{snap_big} {clone_big} {live_big}");
    }

    #[test]
    fn concurrent_gc_runs_free_each_version_once() {
        let (_d, s) = store();
        let c = Catalog::default();
        for round in 0..5u64 {
            let name = format!("v{round}");
            let v = c.create(&s, &name, 4096, 0, 0, None).unwrap();
            let mut t = s.txn();
            for idx in 0..300u64 {
                let data = format!("block {round} {idx}").into_bytes();
                let h = s.hash(&data);
                let id = Ident::Extent { lineage: v.lineage, ino: 2, index: idx };
                t.put_version(&id, 1, &crate::store::records::encode_extent(&h)).unwrap();
                t.add_ref(h, v.lineage, data);
            }
            t.commit(false).unwrap();
            c.destroy(&s, &name).unwrap();
        }
        std::thread::scope(|sc| {
            let a = sc.spawn(|| gc::run(&s, &c));
            let b = sc.spawn(|| gc::run(&s, &c));
            a.join().unwrap().unwrap();
            b.join().unwrap().unwrap();
        });
        assert_eq!(s.space().unwrap().physical, 0);
        assert_eq!(Catalog::pending_gc(&s).unwrap(), 0);
    }

    #[test]
    fn snapshots_clones_and_rollback_keep_pins() {
        let (_d, s) = store();
        let c = Catalog::default();
        let v = c.create(&s, "a", 4096, 0, 0, None).unwrap();
        let cut = c.snapshot_create(&s, "a", "s1", None).unwrap();
        assert_eq!((cut.lineage, cut.epoch), (v.lineage, 1));
        assert!(matches!(c.snapshot_create(&s, "a", "s1", None), Err(Error::Conflict(_))));
        c.snapshot_create(&s, "a", "s2", None).unwrap();
        let (cl, live) = c.clone_volume(&s, "a@s1", "c", Default::default(), None).unwrap();
        assert!(live.is_none());
        assert_eq!(Catalog::parents(&s, cl.lineage).unwrap(), vec![(v.lineage, 1)]);
        assert_eq!(Catalog::lineage(&s, v.lineage).unwrap().pins, BTreeMap::from([(1, 2), (2, 1)]));
        let (_, live) = c.clone_volume(&s, "a", "d", Default::default(), None).unwrap();
        assert_eq!(live.unwrap().epoch, 3);
        c.hold(&s, "a", "s2", "keep", true).unwrap();
        assert!(matches!(c.destroy_snapshot(&s, "a", "s2"), Err(Error::Conflict(_))));
        let rb = c.rollback(&s, "a", "s1").unwrap();
        assert_ne!(rb.lineage, v.lineage);
        assert_eq!(Catalog::lineage(&s, v.lineage).unwrap().head, None);
        assert_eq!(Catalog::snapshot(&s, &rb, "s2").unwrap().epoch, 2);
        c.hold(&s, "a", "s2", "keep", false).unwrap();
        c.destroy_snapshot(&s, "a", "s2").unwrap();
        assert!(Catalog::pending_gc(&s).unwrap() >= 2);
    }
}
