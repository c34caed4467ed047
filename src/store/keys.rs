//! Every key the store writes, in one place.
//!
//! | CF        | key                                              | value                  |
//! |-----------|--------------------------------------------------|------------------------|
//! | blocks    | loc(8): segment(3) offset(5)                     | block hash (16)        |
//! | refs      | hash(16)                                         | RefRec (per lineage)   |
//! | inodes    | lineage(8) ino(8) !epoch(8)                      | InodeRec or tombstone  |
//! | dirents   | lineage(8) dir(8) name NUL !epoch(8)             | DirentRec or whiteout  |
//! | extents   | lineage(8) ino(8) index(8) !epoch(8)             | ExtentRec or hole      |
//! | xattrs    | lineage(8) ino(8) name NUL !epoch(8)             | value or tombstone     |
//! | catalog   | tag(1) ...                                       | see `catalog` below    |
//! | births    | lineage(8) epoch(8) cf-tag(1) rest               | empty                  |
//! | counts    | lineage(8) hash(16) !epoch(8)                    | count of extents a head sees |
//!
//! Why the order matters:
//! - Integers are big-endian so byte order is numeric order.
//! - Block bytes live in the segment log at a locator (`RefRec::loc` maps a hash to it);
//!   `blocks` maps locators back to hashes, so the cleaner finds a segment's live blocks
//!   with one range scan.
//! - The lineage comes first, so one volume's keys form one contiguous range (prefix isolation).
//! - The epoch comes last and inverted (`!epoch`), so the newest version of a key sorts first:
//!   reading the live volume is one seek, and reading snapshot `e` is one seek to `!e`.
//! - `births` lists every version by (lineage, epoch) with the epoch NOT inverted, so GC can
//!   scan the versions a lineage wrote in an epoch range; `rest` is the version's key without
//!   lineage and epoch.
//! - Names end with NUL (never part of a name), so the versions of "a" sort before "ab" and a
//!   seek for "a" never lands in "ab".

pub const U64: usize = 8;

fn push_u64(k: &mut Vec<u8>, v: u64) {
    k.extend_from_slice(&v.to_be_bytes());
}

pub fn read_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// Identity of a versioned key without its epoch: the prefix that all its versions share.
pub fn block_key(loc: u64) -> [u8; 8] {
    loc.to_be_bytes()
}

pub fn parse_block_key(k: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(k.try_into().ok()?))
}

pub fn inode_key(lineage: u64, ino: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(24);
    push_u64(&mut k, lineage);
    push_u64(&mut k, ino);
    k
}

pub fn extent_key(lineage: u64, ino: u64, index: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(32);
    push_u64(&mut k, lineage);
    push_u64(&mut k, ino);
    push_u64(&mut k, index);
    k
}

/// Prefix of all extents of one file.
/// Identity of a block's count in a lineage's views (`counts` CF).
pub fn count_key(lineage: u64, hash: &[u8; 16]) -> Vec<u8> {
    let mut k = Vec::with_capacity(32);
    push_u64(&mut k, lineage);
    k.extend_from_slice(hash);
    k
}

pub fn extents_of(lineage: u64, ino: u64) -> Vec<u8> {
    inode_key(lineage, ino)
}

pub fn dirent_key(lineage: u64, dir: u64, name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(25 + name.len());
    push_u64(&mut k, lineage);
    push_u64(&mut k, dir);
    k.extend_from_slice(name);
    k.push(0);
    k
}

/// Prefix of all entries of one directory (and of all xattrs of one inode).
pub fn dir_prefix(lineage: u64, dir: u64) -> Vec<u8> {
    inode_key(lineage, dir)
}

pub fn xattr_key(lineage: u64, ino: u64, name: &[u8]) -> Vec<u8> {
    dirent_key(lineage, ino, name)
}

/// Prefix of everything one lineage owns in a versioned CF.
pub fn lineage_prefix(lineage: u64) -> Vec<u8> {
    lineage.to_be_bytes().to_vec()
}

/// Appends the inverted epoch that makes a version key.
pub fn versioned(mut ident: Vec<u8>, epoch: u64) -> Vec<u8> {
    push_u64(&mut ident, !epoch);
    ident
}

/// Splits a version key into (identity, epoch).
pub fn split_version(key: &[u8]) -> (&[u8], u64) {
    let n = key.len() - U64;
    (&key[..n], !read_u64(key, n))
}


/// The smallest key greater than every key starting with `prefix`, if any.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last != 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The births entry of the version of `ident` (lineage first) written at `epoch`.
pub fn birth(ident: &[u8], epoch: u64, cf_tag: u8) -> Vec<u8> {
    let mut k = Vec::with_capacity(ident.len() + 9);
    k.extend_from_slice(&ident[..8]);
    push_u64(&mut k, epoch);
    k.push(cf_tag);
    k.extend_from_slice(&ident[8..]);
    k
}

/// Splits a births key into (lineage, epoch, cf tag, rest).
pub fn split_birth(k: &[u8]) -> (u64, u64, u8, &[u8]) {
    (read_u64(k, 0), read_u64(k, 8), k[16], &k[17..])
}

/// First births key of `lineage` at or after `epoch`.
pub fn births_from(lineage: u64, epoch: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(16);
    push_u64(&mut k, lineage);
    push_u64(&mut k, epoch);
    k
}

/// A versioned key without its epoch: the identity all its versions share. This is how the
/// layers above name versioned keys; the bytes stay in this module.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Ident {
    Inode { lineage: u64, ino: u64 },
    Dirent { lineage: u64, dir: u64, name: Vec<u8> },
    Extent { lineage: u64, ino: u64, index: u64 },
    Xattr { lineage: u64, ino: u64, name: Vec<u8> },
    Count { lineage: u64, hash: [u8; 16] },
}

impl Ident {
    pub fn lineage(&self) -> u64 {
        match self {
            Ident::Inode { lineage, .. }
            | Ident::Dirent { lineage, .. }
            | Ident::Extent { lineage, .. }
            | Ident::Xattr { lineage, .. }
            | Ident::Count { lineage, .. } => *lineage,
        }
    }

    /// The same identity in another lineage (an ancestor along a chain).
    pub fn with_lineage(&self, l: u64) -> Ident {
        let mut i = self.clone();
        match &mut i {
            Ident::Inode { lineage, .. }
            | Ident::Dirent { lineage, .. }
            | Ident::Extent { lineage, .. }
            | Ident::Xattr { lineage, .. }
            | Ident::Count { lineage, .. } => *lineage = l,
        }
        i
    }

    /// The column family its versions live in.
    pub(crate) fn cf(&self) -> &'static str {
        use super::cf;
        match self {
            Ident::Inode { .. } => cf::INODES,
            Ident::Dirent { .. } => cf::DIRENTS,
            Ident::Extent { .. } => cf::EXTENTS,
            Ident::Xattr { .. } => cf::XATTRS,
            Ident::Count { .. } => cf::COUNTS,
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        match self {
            Ident::Inode { lineage, ino } => inode_key(*lineage, *ino),
            Ident::Dirent { lineage, dir, name } => dirent_key(*lineage, *dir, name),
            Ident::Extent { lineage, ino, index } => extent_key(*lineage, *ino, *index),
            Ident::Xattr { lineage, ino, name } => xattr_key(*lineage, *ino, name),
            Ident::Count { lineage, hash } => count_key(*lineage, hash),
        }
    }

    /// Parses the identity part of a version key of column family `cfname`.
    pub(crate) fn parse(cfname: &str, b: &[u8]) -> Option<Ident> {
        use super::cf;
        let u = |at: usize| (b.len() >= at + 8).then(|| read_u64(b, at));
        let name = || (b.len() >= 17 && b[b.len() - 1] == 0).then(|| b[16..b.len() - 1].to_vec());
        Some(match cfname {
            cf::INODES if b.len() == 16 => Ident::Inode { lineage: u(0)?, ino: u(8)? },
            cf::EXTENTS if b.len() == 24 => Ident::Extent { lineage: u(0)?, ino: u(8)?, index: u(16)? },
            cf::DIRENTS => Ident::Dirent { lineage: u(0)?, dir: u(8)?, name: name()? },
            cf::XATTRS => Ident::Xattr { lineage: u(0)?, ino: u(8)?, name: name()? },
            cf::COUNTS if b.len() == 24 => Ident::Count { lineage: u(0)?, hash: b[8..24].try_into().ok()? },
            _ => return None,
        })
    }
}

/// A range of identities of one lineage, scanned along a chain.
#[derive(Clone, Debug)]
pub enum Scan {
    /// The entries of a directory.
    Dirents { dir: u64 },
    /// The xattrs of an inode.
    Xattrs { ino: u64 },
    /// Extents of a file with index in [from, to).
    Extents { ino: u64, from: u64, to: u64 },
    /// Inode records with numbers in [from, to).
    Inodes { from: u64, to: u64 },
    /// Block counts of the hashes whose first byte is `first`.
    Counts { first: u8 },
}

impl Scan {
    pub(crate) fn cf(&self) -> &'static str {
        use super::cf;
        match self {
            Scan::Dirents { .. } => cf::DIRENTS,
            Scan::Xattrs { .. } => cf::XATTRS,
            Scan::Extents { .. } => cf::EXTENTS,
            Scan::Inodes { .. } => cf::INODES,
            Scan::Counts { .. } => cf::COUNTS,
        }
    }

    /// (prefix every key shares, first key, end of the keys' rest past the lineage).
    pub(crate) fn bounds(&self, lineage: u64) -> (Vec<u8>, Vec<u8>, Option<Vec<u8>>) {
        match self {
            Scan::Dirents { dir } | Scan::Xattrs { ino: dir } => {
                let p = dir_prefix(lineage, *dir);
                (p.clone(), p, None)
            }
            Scan::Extents { ino, from, to } => {
                let end = (*to != u64::MAX).then(|| extent_key(lineage, *ino, *to)[8..].to_vec());
                (extents_of(lineage, *ino), extent_key(lineage, *ino, *from), end)
            }
            Scan::Inodes { from, to } => {
                let end = (*to != u64::MAX).then(|| inode_key(lineage, *to)[8..].to_vec());
                (lineage_prefix(lineage), inode_key(lineage, *from), end)
            }
            Scan::Counts { first } => {
                let mut p = lineage_prefix(lineage);
                p.push(*first);
                (p.clone(), p, None)
            }
        }
    }
}

/// Catalog keys: a tag byte, then the parts.
pub mod catalog {
    use super::push_u64;

    pub const FORMAT: &[u8] = b"Fformat";
    pub const SECRET: &[u8] = b"Fsecret";
    pub const NEXT_VOLUME_ID: &[u8] = b"Fnext_volume";
    pub const STORE_STATS: &[u8] = b"Fstats";
    /// The log record of the last commit RocksDB holds (`log::Mark`), written by every commit.
    pub const LOG_MARK: &[u8] = b"Flog";
    /// `Fseg` segment (u32) -> bytes of live blocks in it.
    pub const SEGMENT_PREFIX: &[u8] = b"Fseg";

    /// `Fpw` BLAKE3 name (32) -> block hash: blocks that travelled in a send stream, so a
    /// two-way receive knows what it holds. `Fpx` hash -> BLAKE3 name: what a sender hashed.
    /// Either may outlive its block; readers check the block is still stored.
    pub const PORTABLE_TO_LOCAL: &[u8] = b"Fpw";
    pub const LOCAL_TO_PORTABLE: &[u8] = b"Fpx";

    pub fn portable_to_local(p: &[u8; 32]) -> Vec<u8> {
        [PORTABLE_TO_LOCAL, &p[..]].concat()
    }
    pub fn local_to_portable(h: &[u8; 16]) -> Vec<u8> {
        [LOCAL_TO_PORTABLE, &h[..]].concat()
    }

    pub fn segment(seg: u32) -> Vec<u8> {
        let mut k = SEGMENT_PREFIX.to_vec();
        k.extend_from_slice(&seg.to_be_bytes());
        k
    }
    pub fn parse_segment(k: &[u8]) -> Option<u32> {
        Some(u32::from_be_bytes(k.strip_prefix(SEGMENT_PREFIX)?.try_into().ok()?))
    }
    /// `N` name -> volume id.
    pub const NAME_TAG: u8 = b'N';
    /// `V` id -> volume record.
    pub const VOLUME_TAG: u8 = b'V';
    /// `S` lineage -> space counters of that lineage.
    pub const SPACE_TAG: u8 = b'S';
    /// `H` lineage -> LOGICAL and REFERENCED of the lineage's head view.
    pub const VIEW_TAG: u8 = b'H';
    /// `O` lineage ino -> orphan: an unlinked inode still open when it lost its last name.
    pub const ORPHAN_TAG: u8 = b'O';
    /// `W` lineage ino index -> bytes an fsync wrote over a stored block, not yet merged
    /// into it (`records::encode_written`; see `fs::Volume::commit_node`).
    pub const WRITTEN_TAG: u8 = b'W';
    /// `L` lineage -> lineage record (parent, head epoch, pins).
    pub const LINEAGE_TAG: u8 = b'L';
    /// `P` volume id, name -> snapshot record.
    pub const SNAPSHOT_TAG: u8 = b'P';
    /// `G` lineage, epoch -> pending GC work: a pin (or, at u64::MAX, the head) went away.
    pub const GC_TAG: u8 = b'G';
    /// `Y` sequence -> one state-changing command: time, caller, request, outcome.
    pub const HISTORY_TAG: u8 = b'Y';

    pub fn lineage(id: u64) -> Vec<u8> {
        let mut k = vec![LINEAGE_TAG];
        push_u64(&mut k, id);
        k
    }
    pub fn snapshot(volume: u64, name: &[u8]) -> Vec<u8> {
        let mut k = vec![SNAPSHOT_TAG];
        push_u64(&mut k, volume);
        k.extend_from_slice(name);
        k
    }
    pub fn snapshots_of(volume: u64) -> Vec<u8> {
        let mut k = vec![SNAPSHOT_TAG];
        push_u64(&mut k, volume);
        k
    }
    pub fn gc(lineage: u64, epoch: u64) -> Vec<u8> {
        let mut k = vec![GC_TAG];
        push_u64(&mut k, lineage);
        push_u64(&mut k, epoch);
        k
    }

    pub fn name(name: &[u8]) -> Vec<u8> {
        let mut k = vec![NAME_TAG];
        k.extend_from_slice(name);
        k
    }
    pub fn volume(id: u64) -> Vec<u8> {
        let mut k = vec![VOLUME_TAG];
        push_u64(&mut k, id);
        k
    }
    pub fn space(lineage: u64) -> Vec<u8> {
        let mut k = vec![SPACE_TAG];
        push_u64(&mut k, lineage);
        k
    }
    pub fn view(lineage: u64) -> Vec<u8> {
        let mut k = vec![VIEW_TAG];
        push_u64(&mut k, lineage);
        k
    }
    pub fn orphan(lineage: u64, ino: u64) -> Vec<u8> {
        let mut k = vec![ORPHAN_TAG];
        push_u64(&mut k, lineage);
        push_u64(&mut k, ino);
        k
    }
    pub fn written(lineage: u64, ino: u64, index: u64) -> Vec<u8> {
        let mut k = vec![WRITTEN_TAG];
        push_u64(&mut k, lineage);
        push_u64(&mut k, ino);
        push_u64(&mut k, index);
        k
    }
    pub fn history(seq: u64) -> Vec<u8> {
        let mut k = vec![HISTORY_TAG];
        push_u64(&mut k, seq);
        k
    }
    pub fn orphans_of(lineage: u64) -> Vec<u8> {
        let mut k = vec![ORPHAN_TAG];
        push_u64(&mut k, lineage);
        k
    }
}

/// A catalog key, typed: what the layers above name; the bytes stay in `catalog` below.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CatKey {
    NextVolumeId,
    /// Volume name -> volume id.
    Name(Vec<u8>),
    Volume(u64),
    Lineage(u64),
    Snapshot { volume: u64, name: Vec<u8> },
    /// Pending GC work: a pin (or, at u64::MAX, the head) of a lineage went away.
    Gc { lineage: u64, epoch: u64 },
    Orphan { lineage: u64, ino: u64 },
    /// Bytes an fsync wrote over stored block `index` of a file, not yet merged into it.
    Written { lineage: u64, ino: u64, index: u64 },
    /// Space counters of a lineage (store-owned, read by fsck).
    Space(u64),
    /// LOGICAL and REFERENCED of a lineage's head view.
    View(u64),
    /// Physical bytes and block count of the store.
    Stats,
    /// A command in the history, by sequence number (they sort in the order they ran).
    History(u64),
}

impl CatKey {
    pub(crate) fn encode(&self) -> Vec<u8> {
        match self {
            CatKey::NextVolumeId => catalog::NEXT_VOLUME_ID.to_vec(),
            CatKey::Name(n) => catalog::name(n),
            CatKey::Volume(id) => catalog::volume(*id),
            CatKey::Lineage(id) => catalog::lineage(*id),
            CatKey::Snapshot { volume, name } => catalog::snapshot(*volume, name),
            CatKey::Gc { lineage, epoch } => catalog::gc(*lineage, *epoch),
            CatKey::Orphan { lineage, ino } => catalog::orphan(*lineage, *ino),
            CatKey::Written { lineage, ino, index } => catalog::written(*lineage, *ino, *index),
            CatKey::Space(l) => catalog::space(*l),
            CatKey::View(l) => catalog::view(*l),
            CatKey::Stats => catalog::STORE_STATS.to_vec(),
            CatKey::History(n) => catalog::history(*n),
        }
    }

    /// Parses a catalog key; None for the store's own records (format, secret) and unknown keys.
    pub(crate) fn parse(k: &[u8]) -> Option<CatKey> {
        use catalog::*;
        let u = |at: usize| (k.len() >= at + 8).then(|| read_u64(k, at));
        if k == NEXT_VOLUME_ID {
            return Some(CatKey::NextVolumeId);
        }
        if k == STORE_STATS {
            return Some(CatKey::Stats);
        }
        let (&tag, rest) = k.split_first()?;
        Some(match tag {
            NAME_TAG => CatKey::Name(rest.to_vec()),
            VOLUME_TAG if k.len() == 9 => CatKey::Volume(u(1)?),
            LINEAGE_TAG if k.len() == 9 => CatKey::Lineage(u(1)?),
            SPACE_TAG if k.len() == 9 => CatKey::Space(u(1)?),
            VIEW_TAG if k.len() == 9 => CatKey::View(u(1)?),
            SNAPSHOT_TAG if k.len() >= 9 => CatKey::Snapshot { volume: u(1)?, name: k[9..].to_vec() },
            GC_TAG if k.len() == 17 => CatKey::Gc { lineage: u(1)?, epoch: u(9)? },
            ORPHAN_TAG if k.len() == 17 => CatKey::Orphan { lineage: u(1)?, ino: u(9)? },
            WRITTEN_TAG if k.len() == 25 => CatKey::Written { lineage: u(1)?, ino: u(9)?, index: u(17)? },
            HISTORY_TAG if k.len() == 9 => CatKey::History(u(1)?),
            _ => return None,
        })
    }
}

/// A set of catalog keys listed together.
#[derive(Clone, Copy, Debug)]
pub enum CatRange {
    Volumes,
    Lineages,
    SnapshotsOf(u64),
    Gc,
    GcOf(u64),
    OrphansOf(u64),
    Written,
    WrittenOf(u64),
    History,
}

impl CatRange {
    pub(crate) fn prefix(&self) -> Vec<u8> {
        use catalog::*;
        match self {
            CatRange::Volumes => vec![VOLUME_TAG],
            CatRange::Lineages => vec![LINEAGE_TAG],
            CatRange::SnapshotsOf(v) => snapshots_of(*v),
            CatRange::Gc => vec![GC_TAG],
            CatRange::GcOf(l) => {
                let mut k = vec![GC_TAG];
                push_u64(&mut k, *l);
                k
            }
            CatRange::OrphansOf(l) => orphans_of(*l),
            CatRange::Written => vec![WRITTEN_TAG],
            CatRange::WrittenOf(l) => {
                let mut k = vec![WRITTEN_TAG];
                push_u64(&mut k, *l);
                k
            }
            CatRange::History => vec![HISTORY_TAG],
        }
    }
}

/// Parses a births key into (identity, epoch).
pub(crate) fn parse_birth(k: &[u8]) -> Option<(Ident, u64)> {
    if k.len() < 17 {
        return None;
    }
    let (lineage, epoch, tag, rest) = split_birth(k);
    let cfname = super::cf::from_tag(tag)?;
    let ident = [&lineage.to_be_bytes()[..], rest].concat();
    Some((Ident::parse(cfname, &ident)?, epoch))
}

/// Parses a version key of `cfname` into (identity, epoch).
pub(crate) fn parse_version(cfname: &str, k: &[u8]) -> Option<(Ident, u64)> {
    if k.len() < U64 {
        return None;
    }
    let (ident, epoch) = split_version(k);
    Some((Ident::parse(cfname, ident)?, epoch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn version_round_trip() {
        let k = versioned(extent_key(3, 7, 9), 42);
        let (ident, epoch) = split_version(&k);
        assert_eq!(ident, &extent_key(3, 7, 9)[..]);
        assert_eq!(epoch, 42);
        assert_eq!(read_u64(ident, 0), 3);
        assert_eq!(read_u64(ident, 8), 7);
        assert_eq!(read_u64(ident, 16), 9);
    }

    #[test]
    fn newest_version_sorts_first() {
        let old = versioned(inode_key(1, 5), 1);
        let new = versioned(inode_key(1, 5), 2);
        assert!(new < old);
    }

    #[test]
    fn names_do_not_bleed_into_longer_names() {
        let a = dirent_key(1, 1, b"a");
        let ab = versioned(dirent_key(1, 1, b"ab"), u64::MAX);
        let a_oldest = versioned(a.clone(), 0);
        assert!(!ab.starts_with(&a));
        assert!(a_oldest < ab);
    }

    #[test]
    fn births_sort_by_lineage_then_epoch() {
        let ident = versioned(extent_key(2, 7, 9), 0);
        let ident = &ident[..24];
        let b = birth(ident, 5, 3);
        assert_eq!(split_birth(&b), (2, 5, 3, &ident[8..]));
        assert!(birth(ident, 4, 3) < b && b < birth(ident, 6, 1));
        assert!(b.starts_with(&births_from(2, 5)[..16]));
        assert!(births_from(2, 6) > b && births_from(2, 5) <= b);
    }

    #[test]
    fn typed_keys_round_trip() {
        use super::super::cf;
        let ids = [
            Ident::Inode { lineage: 3, ino: 9 },
            Ident::Dirent { lineage: 3, dir: 1, name: b"a\xffb".to_vec() },
            Ident::Extent { lineage: 4, ino: 2, index: 7 },
            Ident::Xattr { lineage: 5, ino: 2, name: b"user.x".to_vec() },
            Ident::Count { lineage: 6, hash: [7; 16] },
        ];
        for id in ids {
            let k = versioned(id.encode(), 11);
            assert_eq!(parse_version(id.cf(), &k), Some((id.clone(), 11)));
            let b = birth(&id.encode(), 12, cf::tag(id.cf()));
            assert_eq!(parse_birth(&b), Some((id.clone(), 12)));
        }
        let cats = [
            CatKey::NextVolumeId,
            CatKey::Name(b"db".to_vec()),
            CatKey::Volume(1),
            CatKey::Lineage(2),
            CatKey::Snapshot { volume: 3, name: b"s".to_vec() },
            CatKey::Gc { lineage: 4, epoch: u64::MAX },
            CatKey::Orphan { lineage: 5, ino: 6 },
            CatKey::Space(7),
            CatKey::View(8),
            CatKey::Stats,
            CatKey::History(9),
        ];
        for k in cats {
            assert_eq!(CatKey::parse(&k.encode()), Some(k.clone()));
        }
        assert!(CatKey::encode(&CatKey::Gc { lineage: 4, epoch: 1 }).starts_with(&CatRange::GcOf(4).prefix()));
        assert!(!CatKey::encode(&CatKey::Gc { lineage: 5, epoch: 1 }).starts_with(&CatRange::GcOf(4).prefix()));
        assert_eq!(CatKey::parse(catalog::SECRET), None);
    }

    #[test]
    fn prefix_end_is_exclusive_bound() {
        assert_eq!(prefix_end(&[1, 2]), Some(vec![1, 3]));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
    }

    proptest! {
        #[test]
        fn u64_order_is_byte_order(a: u64, b: u64, e1: u64, e2: u64) {
            let ka = versioned(extent_key(1, 1, a), e1);
            let kb = versioned(extent_key(1, 1, b), e2);
            if a != b {
                prop_assert_eq!(a < b, ka < kb);
            } else if e1 != e2 {
                prop_assert_eq!(e1 > e2, ka < kb);
            }
        }

        #[test]
        fn dirent_prefix_contains_exactly_its_dir(l in 0u64..4, d in 0u64..4, name in proptest::collection::vec(1u8..=255, 1..20), l2 in 0u64..4, d2 in 0u64..4, e: u64) {
            let key = versioned(dirent_key(l2, d2, &name), e);
            let p = dir_prefix(l, d);
            prop_assert_eq!(key.starts_with(&p), l == l2 && d == d2);
            let end = prefix_end(&p).unwrap();
            prop_assert_eq!(key >= p && key < end, l == l2 && d == d2);
            let (ident, epoch) = parse_version(super::super::cf::DIRENTS, &key).unwrap();
            prop_assert_eq!(ident, Ident::Dirent { lineage: l2, dir: d2, name: name.clone() });
            prop_assert_eq!(epoch, e);
        }

        #[test]
        fn lineage_prefix_isolates(l in 0u64..1000, l2 in 0u64..1000, ino: u64, idx: u64) {
            let key = versioned(extent_key(l2, ino, idx), 1);
            prop_assert_eq!(key.starts_with(&lineage_prefix(l)), l == l2);
        }
    }
}
