//! Volumes in the catalog: names, lineages, epochs, block sizes; create, rename, destroy.
//! A volume owns one lineage: every key of its files starts with that lineage id, and it
//! writes at its current epoch (see `store::keys`).

use crate::error::{Error, Result};
use crate::store::records::{DirentRec, InodeRec, Kind, Ts};
use crate::store::{cf, keys, Store};
use serde::{Deserialize, Serialize};
use std::sync::Mutex;

pub const ROOT_INO: u64 = 1;
pub const MIN_BLOCK: u32 = 4096;
pub const MAX_BLOCK: u32 = 1 << 20;
/// 64 KiB: see docs/benchmarks.md for the sweep that chose it.
pub const DEFAULT_BLOCK: u32 = 64 << 10;
const RECORD_VERSION: u8 = 1;

pub mod fsck;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumeRec {
    pub id: u64,
    pub name: String,
    pub lineage: u64,
    /// Epoch new versions are written at.
    pub epoch: u64,
    pub block_size: u32,
    /// Seconds since the Unix epoch.
    pub created: i64,
    /// Set while destroy removes the volume's keys; the name is already free then.
    #[serde(default)]
    pub destroying: bool,
}

fn encode(v: &VolumeRec) -> Result<Vec<u8>> {
    let mut out = vec![RECORD_VERSION];
    out.extend_from_slice(&serde_json::to_vec(v)?);
    Ok(out)
}

fn decode(b: &[u8]) -> Result<VolumeRec> {
    match b.split_first() {
        Some((&RECORD_VERSION, rest)) => Ok(serde_json::from_slice(rest)?),
        _ => Err(Error::Corrupt("unknown volume record version".into())),
    }
}

/// Checks a volume name: what a user may type and a directory entry may hold.
pub fn check_name(name: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::Invalid(format!("invalid volume name {name:?}: {why}")));
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
    if let Some(c) = name.chars().find(|c| *c == '/' || *c == '\0' || *c == '@' || c.is_control()) {
        return bad(&format!("contains {c:?}"));
    }
    Ok(())
}

/// Parses a block size such as `4K`, `64k`, `1M` or `65536`.
pub fn parse_block_size(s: &str) -> Result<u32> {
    let err = || Error::Invalid(format!("invalid block size {s:?}: use a power of two from 4K to 1M"));
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&t[..i], 1u64 << 20),
        _ => (t, 1),
    };
    let n: u64 = num.parse().map_err(|_| err())?;
    let v = n.checked_mul(mult).ok_or_else(err)?;
    if !v.is_power_of_two() || v < MIN_BLOCK as u64 || v > MAX_BLOCK as u64 {
        return Err(err());
    }
    Ok(v as u32)
}

/// Serializes catalog changes (create, rename, destroy) against each other.
pub struct Catalog {
    lock: Mutex<()>,
}

impl Default for Catalog {
    fn default() -> Self {
        Catalog { lock: Mutex::new(()) }
    }
}

impl Catalog {
    fn guard(&self) -> Result<std::sync::MutexGuard<'_, ()>> {
        self.lock.lock().map_err(|_| Error::Corrupt("catalog lock poisoned".into()))
    }

    pub fn list(store: &Store) -> Result<Vec<VolumeRec>> {
        let mut out = Vec::new();
        store.scan(cf::CATALOG, &[keys::catalog::VOLUME_TAG], |_, v| {
            out.push(decode(v)?);
            Ok(true)
        })?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub fn get(store: &Store, name: &str) -> Result<VolumeRec> {
        check_name(name)?;
        let id = store
            .get(cf::CATALOG, &keys::catalog::name(name.as_bytes()))?
            .ok_or_else(|| Error::NotFound(format!("no volume named {name:?}")))?;
        let id = u64::from_le_bytes(id.as_slice().try_into().map_err(|_| Error::Corrupt("bad name record".into()))?);
        Self::by_id(store, id)
    }

    pub fn by_id(store: &Store, id: u64) -> Result<VolumeRec> {
        let v = store
            .get(cf::CATALOG, &keys::catalog::volume(id))?
            .ok_or_else(|| Error::Corrupt(format!("name points to missing volume {id}")))?;
        decode(&v)
    }

    /// Creates an empty volume with a root directory owned by `uid:gid`.
    pub fn create(&self, store: &Store, name: &str, block_size: u32, uid: u32, gid: u32) -> Result<VolumeRec> {
        check_name(name)?;
        if !block_size.is_power_of_two() || !(MIN_BLOCK..=MAX_BLOCK).contains(&block_size) {
            return Err(Error::Invalid(format!("invalid block size {block_size}: use a power of two from 4K to 1M")));
        }
        let _g = self.guard()?;
        if store.get(cf::CATALOG, &keys::catalog::name(name.as_bytes()))?.is_some() {
            return Err(Error::Conflict(format!("volume {name:?} already exists")));
        }
        let id = match store.get(cf::CATALOG, keys::catalog::NEXT_VOLUME_ID)? {
            Some(v) => u64::from_le_bytes(v.as_slice().try_into().map_err(|_| Error::Corrupt("bad id counter".into()))?),
            None => 1,
        };
        let now = Ts::now();
        let rec = VolumeRec {
            id,
            name: name.to_string(),
            lineage: id,
            epoch: 1,
            block_size,
            created: now.sec,
            destroying: false,
        };
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
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            target: Vec::new(),
        };
        let mut t = store.txn();
        t.put(store, cf::CATALOG, keys::catalog::NEXT_VOLUME_ID, &(id + 1).to_le_bytes())?;
        t.put(store, cf::CATALOG, &keys::catalog::name(name.as_bytes()), &id.to_le_bytes())?;
        t.put(store, cf::CATALOG, &keys::catalog::volume(id), &encode(&rec)?)?;
        t.put(store, cf::INODES, &keys::versioned(keys::inode_key(rec.lineage, ROOT_INO), rec.epoch), &root.encode())?;
        store.commit(t, true)?;
        Ok(rec)
    }

    pub fn rename(&self, store: &Store, old: &str, new: &str) -> Result<VolumeRec> {
        check_name(new)?;
        let _g = self.guard()?;
        let mut rec = Self::get(store, old)?;
        if store.get(cf::CATALOG, &keys::catalog::name(new.as_bytes()))?.is_some() {
            return Err(Error::Conflict(format!("volume {new:?} already exists")));
        }
        rec.name = new.to_string();
        let mut t = store.txn();
        t.delete(store, cf::CATALOG, &keys::catalog::name(old.as_bytes()))?;
        t.put(store, cf::CATALOG, &keys::catalog::name(new.as_bytes()), &rec.id.to_le_bytes())?;
        t.put(store, cf::CATALOG, &keys::catalog::volume(rec.id), &encode(&rec)?)?;
        store.commit(t, true)?;
        Ok(rec)
    }

    /// Frees the name at once (one batch), then removes the volume's keys in bounded batches.
    /// A crash in between leaves a `destroying` record that `resume_destroys` finishes.
    pub fn destroy(&self, store: &Store, name: &str) -> Result<()> {
        let mut rec = {
            let _g = self.guard()?;
            let mut rec = Self::get(store, name)?;
            rec.destroying = true;
            let mut t = store.txn();
            t.delete(store, cf::CATALOG, &keys::catalog::name(name.as_bytes()))?;
            t.put(store, cf::CATALOG, &keys::catalog::volume(rec.id), &encode(&rec)?)?;
            store.commit(t, true)?;
            rec
        };
        purge_lineage(store, &mut rec)
    }

    /// Finishes destroys a crash interrupted.
    pub fn resume_destroys(store: &Store) -> Result<()> {
        for mut rec in Self::list(store)? {
            if rec.destroying {
                log::info!("finishing the destroy of volume {}", rec.name);
                purge_lineage(store, &mut rec)?;
            }
        }
        Ok(())
    }
}

const PURGE_BATCH: usize = 4096;

fn purge_lineage(store: &Store, rec: &mut VolumeRec) -> Result<()> {
    let prefix = keys::lineage_prefix(rec.lineage);
    // Extents first, dropping their block references, in bounded batches.
    loop {
        let mut t = store.txn();
        let mut n = 0;
        store.scan(cf::EXTENTS, &prefix, |k, v| {
            if let Some(h) = crate::store::records::decode_extent(v)? {
                t.drop_ref(h, rec.lineage);
            }
            t.delete(store, cf::EXTENTS, k)?;
            n += 1;
            Ok(n < PURGE_BATCH)
        })?;
        if n == 0 {
            break;
        }
        store.commit(t, false)?;
    }
    for cfname in [cf::XATTRS, cf::DIRENTS, cf::INODES] {
        loop {
            let mut t = store.txn();
            let mut n = 0;
            store.scan(cfname, &prefix, |k, _| {
                t.delete(store, cfname, k)?;
                n += 1;
                Ok(n < PURGE_BATCH)
            })?;
            if n == 0 {
                break;
            }
            store.commit(t, false)?;
        }
    }
    let mut t = store.txn();
    let mut orphans = Vec::new();
    store.scan(cf::CATALOG, &keys::catalog::orphans_of(rec.lineage), |k, _| {
        orphans.push(k.to_vec());
        Ok(true)
    })?;
    for k in orphans {
        t.delete(store, cf::CATALOG, &k)?;
    }
    t.delete(store, cf::CATALOG, &keys::catalog::space(rec.lineage))?;
    t.delete(store, cf::CATALOG, &keys::catalog::volume(rec.id))?;
    store.commit(t, true)?;
    store.forget_lineage(rec.lineage);
    Ok(())
}

/// Reads the root dirent-less check used by fsck and tests: the live entry for `name` in `dir`.
pub fn lookup_entry(store: &Store, lineage: u64, epoch: u64, dir: u64, name: &[u8]) -> Result<Option<DirentRec>> {
    match store.get_version(cf::DIRENTS, &keys::dirent_key(lineage, dir, name), epoch)? {
        Some((_, v)) => DirentRec::decode(&v),
        None => Ok(None),
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

    #[test]
    fn create_rename_destroy() {
        let d = tempfile::tempdir().unwrap();
        Store::init(&d.path().join("s")).unwrap();
        let s = Store::open(&d.path().join("s")).unwrap();
        let c = Catalog::default();
        let v = c.create(&s, "a", 4096, 0, 0).unwrap();
        assert!(matches!(c.create(&s, "a", 4096, 0, 0), Err(Error::Conflict(_))));
        assert!(matches!(c.create(&s, "b", 1000, 0, 0), Err(Error::Invalid(_))));
        c.rename(&s, "a", "b").unwrap();
        assert!(matches!(Catalog::get(&s, "a"), Err(Error::NotFound(_))));
        assert_eq!(Catalog::get(&s, "b").unwrap().id, v.id);
        c.destroy(&s, "b").unwrap();
        assert!(Catalog::list(&s).unwrap().is_empty());
        let mut left = 0;
        s.scan(cf::INODES, &[], |_, _| {
            left += 1;
            Ok(true)
        })
        .unwrap();
        assert_eq!(left, 0);
    }
}
