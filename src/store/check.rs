//! A consistent read-only view of the whole store (fsck, scrub): every key as of one
//! instant, every block re-read and checked, with the cleaner held off meanwhile.

use super::*;

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
    _cleaning: std::sync::MutexGuard<'a, ()>,
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
    /// gets the bytes of each block checked. A block that cannot be read, is missing, or does
    /// not hash to its name is reported, and the check goes on.
    pub fn check_blocks(&self, mut progress: impl FnMut(u64)) -> Result<BlockCheck> {
        let mut all: Vec<(u64, Hash, u32)> = Vec::new();
        self.for_each_ref(|h, r| {
            all.push((r.loc, h, r.size));
            Ok(())
        })?;
        all.sort_unstable_by_key(|b| b.0);
        let mut out = BlockCheck::default();
        for (loc, hash, size) in all {
            let problem = match self.store.log.read(loc, size as usize) {
                Err(e) => Some(format!("cannot be read: {e}")),
                // Moved by the cleaner since this view was taken: it checks the new copy.
                Ok(None) => match self.store.refs(&hash)? {
                    Some(r) if r.loc != loc => match self.store.log.read(r.loc, size as usize)? {
                        Some(v) if self.store.hash(&v) == hash => None,
                        _ => Some("is missing".to_string()),
                    },
                    _ => Some("is missing".to_string()),
                },
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

    /// Every stored block: (locator, the hash `blocks` names there, its bytes in the log),
    /// in locator order; the bytes are None when they cannot be read.
    pub fn for_each_block(&self, sizes: &HashMap<u64, u32>, mut f: impl FnMut(u64, Hash, Option<Vec<u8>>) -> Result<()>) -> Result<()> {
        self.for_each(cf::BLOCKS, |k, v| {
            let loc = keys::parse_block_key(k).ok_or_else(|| Error::Corrupt(format!("bad blocks key {k:?}")))?;
            let h: Hash = v.try_into().map_err(|_| Error::Corrupt(format!("bad blocks value at {loc}")))?;
            let bytes = match sizes.get(&loc) {
                Some(n) => self.store.log.read(loc, *n as usize).ok().flatten().map(segment::ReadBytes::into_vec),
                None => None,
            };
            f(loc, h, bytes)
        })
    }

    /// The live bytes recorded per segment, and the segments in the log.
    pub fn segments(&self) -> Result<(std::collections::BTreeMap<u32, u64>, Vec<u32>)> {
        let mut live = std::collections::BTreeMap::new();
        self.for_each(cf::CATALOG, |k, v| {
            if let Some(seg) = keys::catalog::parse_segment(k) {
                live.insert(seg, u64::from_le_bytes(v.try_into().map_err(|_| Error::Corrupt("bad segment record".into()))?));
            }
            Ok(())
        })?;
        Ok((live, self.store.log.segments()?.into_iter().map(|s| s.0).collect()))
    }

    /// The segment a locator lies in.
    pub fn segment_of(loc: u64) -> u32 {
        segment::split(loc).0
    }

    pub fn hash(&self, data: &[u8]) -> Hash {
        self.store.hash(data)
    }
}

impl Store {
    /// A consistent read-only view of the whole store at this instant (fsck, scrub). The
    /// cleaner waits while one exists, so the blocks it names stay where it says.
    pub fn view(&self) -> Result<View<'_>> {
        let cleaning = self.cleaning.lock().map_err(|_| Error::Corrupt("cleaner state poisoned by a panic".into()))?;
        Ok(View { store: self, snap: self.db.snapshot(), _cleaning: cleaning })
    }
}
