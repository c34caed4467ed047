//! Receives in progress. A receive writes into a hidden volume `VOL%recv` (users cannot
//! name '%'): a new volume for a full stream, a clone of the base snapshot for an
//! incremental one. Only at the end does one catalog change make it visible: the hidden
//! volume is renamed to VOL (full, or incremental into a VOL that did not exist: a clone
//! of the base, wherever it is in the store), or VOL takes its lineage as a rollback would
//! (the old head goes to GC, older snapshots stay) and the new snapshot is cut. A failed receive
//! destroys the hidden volume (GC frees its blocks), unless it is resumable: then it stays,
//! with the position applied so far, until the rest comes or `receive --abort`.

use super::*;
use crate::transfer::{Header, ResumeToken};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Receiving {
    /// The volume it becomes.
    pub target: String,
    pub snapshot: String,
    pub guid: u64,
    pub created: i64,
    /// The base snapshot's id, for an incremental stream.
    pub base: Option<u64>,
    pub resumable: bool,
    /// The last identity applied (`transfer::position_text`).
    pub after: Option<String>,
    /// An incremental stream into a volume that did not exist: the target becomes a clone
    /// of the base snapshot, wherever it is in this store (as `zfs receive` of a clone).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub new_clone: bool,
}

impl Receiving {
    pub fn token(&self) -> ResumeToken {
        ResumeToken { guid: self.guid, base: self.base, after: self.after.clone() }
    }
}

pub fn hidden_name(target: &str) -> String {
    format!("{target}%recv")
}

impl Catalog {
    /// The newest snapshot of volume `v`, if any.
    pub fn newest_snapshot(store: &Store, v: &VolumeRec) -> Result<Option<SnapshotRec>> {
        Ok(Self::snapshots(store, v.id)?.pop())
    }

    /// A snapshot of any volume by its id: (volume, snapshot).
    pub fn snapshot_by_id(store: &Store, guid: u64) -> Result<(VolumeRec, SnapshotRec)> {
        for v in Self::list(store)?.into_iter().filter(|v| v.receiving.is_none()) {
            if let Some(s) = Self::snapshots(store, v.id)?.into_iter().find(|s| s.id() == guid) {
                return Ok((v, s));
            }
        }
        Err(Error::NotFound(format!("no snapshot has id {guid:016x}")))
    }

    /// The receive in progress into `target`, if any (its hidden volume).
    pub fn pending_receive(store: &Store, target: &str) -> Result<Option<VolumeRec>> {
        check_name(target)?;
        match Self::lookup(store, &hidden_name(target)) {
            Ok(v) if v.receiving.is_some() => Ok(Some(v)),
            Ok(_) => Err(Error::Corrupt(format!("{} is not a receive", hidden_name(target)))),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Checks that the incremental stream `h` applies to `v`: its newest snapshot is the base,
    /// the new snapshot's name is free, the block sizes agree.
    fn check_base(store: &Store, v: &VolumeRec, h: &Header) -> Result<SnapshotRec> {
        let base = h.base.ok_or_else(|| Error::Corrupt("not an incremental stream".into()))?;
        let snaps = Self::snapshots(store, v.id)?;
        let name = |s: &SnapshotRec| format!("{}@{}", v.name, s.name);
        if let Some(s) = snaps.iter().find(|s| s.id() == h.guid) {
            return Err(Error::Conflict(format!("{} already holds this stream's snapshot, as {} (received before)", v.name, name(s))));
        }
        let newest = match (snaps.iter().position(|s| s.id() == base), snaps.last()) {
            (Some(i), Some(last)) if i + 1 == snaps.len() => last.clone(),
            (Some(i), Some(_)) => {
                // A rollback keeps them: only destroying them makes the base the newest again.
                let newer: Vec<String> = snaps[i + 1..].iter().map(name).collect();
                return Err(Error::Conflict(format!(
                    "the stream's base is {}, but {} has newer snapshots: destroy them first (`clonefs destroy {}`)",
                    name(&snaps[i]),
                    v.name,
                    newer.join("`, `clonefs destroy ")
                )))
            }
            _ => {
                return Err(Error::Conflict(format!(
                    "the stream applies to snapshot id {base:016x} ({}@... on the sender), which {} does not hold",
                    h.volume, v.name
                )))
            }
        };
        if v.block_size != h.block_size {
            return Err(Error::Conflict(format!("{} has {}-byte blocks, the stream {}", v.name, v.block_size, h.block_size)));
        }
        if store.cat_get(&CatKey::Snapshot { volume: v.id, name: h.snapshot.as_bytes().to_vec() })?.is_some() {
            return Err(Error::Conflict(format!("snapshot {}@{} already exists", v.name, h.snapshot)));
        }
        Ok(newest)
    }

    /// The base of incremental stream `h` for a new volume `target`: the snapshot that is the
    /// stream's base, in any volume of this store.
    fn clone_base(store: &Store, target: &str, h: &Header) -> Result<(VolumeRec, SnapshotRec)> {
        let base = h.base.ok_or_else(|| Error::Corrupt("not an incremental stream".into()))?;
        let (v, s) = Self::snapshot_by_id(store, base).map_err(|_| {
            Error::NotFound(format!(
                "no volume named {target:?}, and no snapshot here is the stream's base (id {base:016x}, {}@... on the sender): receive the base first",
                h.volume
            ))
        })?;
        if v.block_size != h.block_size {
            return Err(Error::Conflict(format!("the base {}@{} has {}-byte blocks, the stream {}", v.name, s.name, v.block_size, h.block_size)));
        }
        Ok((v, s))
    }

    /// Starts (or, for a resumed stream, continues) a receive into `target`. Returns the
    /// hidden volume and, for an incremental stream into an existing volume, the base
    /// snapshot (the target must not have changed since). `creator` makes a new volume and
    /// the received snapshot (as `Catalog::create`).
    pub fn receive_begin(&self, store: &Store, target: &str, h: &Header, resumable: bool, creator: Option<u32>) -> Result<(VolumeRec, Option<SnapshotRec>)> {
        check_name(target)?;
        check_name(&h.snapshot)?;
        check_block_size(h.block_size)?;
        let _g = self.guard()?;
        let pending = Self::pending_receive(store, target)?;
        // For a new clone: the base's volume and snapshot.
        let mut clone_of = None;
        let base = match h.base {
            Some(_) => match Self::get(store, target) {
                Ok(v) => Some(Self::check_base(store, &v, h)?),
                Err(Error::NotFound(_)) => {
                    clone_of = Some(Self::clone_base(store, target, h)?);
                    None
                }
                Err(e) => return Err(e),
            },
            None => {
                if store.cat_get(&CatKey::Name(target.as_bytes().to_vec()))?.is_some() {
                    return Err(Error::Conflict(format!(
                        "volume {target:?} already exists (a full stream makes a new volume; send an incremental one with --from)"
                    )));
                }
                None
            }
        };
        if let Some(p) = pending {
            let r = p.receiving.clone().ok_or_else(|| Error::Corrupt("a receive without its state".into()))?;
            return match &h.after {
                Some(_) if r.token() == (ResumeToken { guid: h.guid, base: h.base, after: h.after.clone() }) => Ok((p, base)),
                Some(_) => Err(Error::Conflict(format!(
                    "the stream resumes another position or snapshot than the receive into {target} stopped at (its token: {})",
                    r.token().text()
                ))),
                None => Err(Error::Conflict(format!(
                    "a resumable receive into {target} is pending: send the rest with `clonefs send --resume {}`, or drop it with `clonefs receive {target} --abort`",
                    r.token().text()
                ))),
            };
        }
        if h.after.is_some() {
            return Err(Error::NotFound(format!("no interrupted receive into {target} to resume")));
        }
        let name = hidden_name(target);
        let state = Receiving {
            target: target.to_string(),
            snapshot: h.snapshot.clone(),
            guid: h.guid,
            created: h.created,
            base: h.base,
            resumable,
            after: None,
            new_clone: clone_of.is_some(),
        };
        // The snapshot an incremental stream applies over, and the hidden volume's block size.
        let over = match (&base, &clone_of) {
            (Some(sr), _) => Some((sr, Self::get(store, target)?.block_size)),
            (None, Some((bv, sr))) => Some((sr, bv.block_size)),
            (None, None) => None,
        };
        let mut t = self.begin(store);
        let mut rec = match over {
            None => Self::stage_create(store, &mut t, &name, h.block_size, 0, 0, creator)?,
            Some((sr, block_size)) => {
                let mut l = Self::lineage(store, sr.lineage)?;
                l.pin(sr.epoch);
                Self::put_lineage(&mut t, &l)?;
                let rec = Self::stage_clone(store, &mut t, &name, (sr.lineage, sr.epoch), sr.space, block_size, None, Default::default(), creator)?;
                for ino in &sr.orphans {
                    t.set_orphan(rec.lineage, *ino, true)?;
                }
                rec
            }
        };
        rec.receiving = Some(state);
        Self::put_volume(&mut t, &rec)?;
        self.commit(t, true)?;
        Ok((rec, base))
    }

    /// Records how far a resumable receive has come (after the batches it names committed).
    pub fn receive_progress(&self, store: &Store, hidden: u64, after: &str) -> Result<()> {
        let _g = self.guard()?;
        let mut rec = Self::by_id(store, hidden)?;
        let Some(r) = rec.receiving.as_mut() else { return Err(Error::Corrupt("not a receive".into())) };
        r.after = Some(after.to_string());
        let mut t = self.begin(store);
        Self::put_volume(&mut t, &rec)?;
        self.commit(t, false)
    }

    /// Makes the received volume visible with its snapshot (see the module comment). For an
    /// incremental receive into a mounted volume the caller holds the mount exclusively.
    pub fn receive_finish(&self, store: &Store, hidden: u64) -> Result<VolumeRec> {
        let _g = self.guard()?;
        let mut rec = Self::by_id(store, hidden)?;
        let r = rec.receiving.take().ok_or_else(|| Error::Corrupt("not a receive".into()))?;
        let receiver = rec.creator;
        let mut t = self.begin(store);
        let mut v = match r.base {
            // Into an existing volume, which takes the hidden one's lineage.
            Some(_) if !r.new_clone => {
                let mut v = Self::get(store, &r.target)?;
                let h = Header {
                    version: crate::transfer::VERSION,
                    nonce: 0,
                    volume: String::new(),
                    snapshot: r.snapshot.clone(),
                    guid: r.guid,
                    created: r.created,
                    base: r.base,
                    block_size: v.block_size,
                    two_way: false,
                    after: None,
                    bytes: 0,
                };
                Self::check_base(store, &v, &h)?;
                let mut old = Self::lineage(store, v.lineage)?;
                old.head = None;
                Self::put_lineage(&mut t, &old)?;
                t.cat_put(&CatKey::Gc { lineage: old.id, epoch: HEAD_GONE }, &[])?;
                t.cat_delete(&CatKey::Name(rec.name.as_bytes().to_vec()))?;
                t.cat_delete(&CatKey::Volume(rec.id))?;
                v.lineage = rec.lineage;
                v
            }
            // A new volume: the hidden one takes the name (a clone names its origin).
            base => {
                Self::name_free(store, &r.target)?;
                t.cat_delete(&CatKey::Name(rec.name.as_bytes().to_vec()))?;
                t.cat_put(&CatKey::Name(r.target.as_bytes().to_vec()), &rec.id.to_le_bytes())?;
                rec.name = r.target.clone();
                if let Some(b) = base {
                    rec.origin = Self::snapshot_by_id(store, b).ok().map(|(bv, s)| format!("{}@{}", bv.name, s.name));
                }
                rec
            }
        };
        let cut = Self::stage_cut(store, &mut t, &v)?;
        let s = SnapshotRec {
            volume: v.id,
            name: r.snapshot.clone(),
            lineage: cut.lineage,
            epoch: cut.epoch,
            created: r.created,
            holds: BTreeSet::new(),
            space: store.view_space(v.lineage)?,
            guid: r.guid,
            // Nameless inodes the base snapshot held (the stream names none).
            orphans: store.orphans(v.lineage)?,
            // Whoever received it (the hidden volume's maker).
            creator: receiver,
        };
        Self::put_snapshot(&mut t, &s)?;
        v.receiving = None;
        Self::put_volume(&mut t, &v)?;
        self.commit(t, true)?;
        Ok(v)
    }

    /// Drops the receive into `target` in progress (its hidden volume; GC frees the rest).
    pub fn receive_abort(&self, store: &Store, target: &str) -> Result<()> {
        let p = Self::pending_receive(store, target)?.ok_or_else(|| Error::NotFound(format!("no receive into {target} is in progress")))?;
        self.destroy_volume(store, &p.name)
    }
}
