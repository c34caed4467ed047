//! Value formats. Every value starts with a version byte, then a tag; tag 0 is a tombstone
//! (deleted inode, whiteout dirent, hole extent, removed xattr) that hides older versions.

use crate::error::{Error, Result};
use std::convert::TryFrom;

pub const VALUE_VERSION: u8 = 1;
const TAG_DEAD: u8 = 0;
const TAG_LIVE: u8 = 1;

pub type Hash = [u8; 16];

/// Hashes a block's `Hash` for a hash map by folding its bytes: they are a keyed xxh3, so
/// already uniform, and no one who lacks the store's secret can choose ones that collide.
/// SipHash over them was 3% of a sequential write's daemon CPU (counts, references).
#[derive(Clone, Copy, Default)]
pub struct BlockKeyHasher(u64);

impl std::hash::Hasher for BlockKeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.0 = self.0.rotate_left(23) ^ u64::from_le_bytes(w);
        }
    }

    /// The length prefix of a slice or array: the same for every `Hash`.
    fn write_usize(&mut self, _: usize) {}
}

/// A hash map or set keyed by block hashes (see `BlockKeyHasher`).
pub type BlockMap<V> = std::collections::HashMap<Hash, V, std::hash::BuildHasherDefault<BlockKeyHasher>>;
pub type BlockSet = std::collections::HashSet<Hash, std::hash::BuildHasherDefault<BlockKeyHasher>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    File = 1,
    Dir = 2,
    Symlink = 3,
    Fifo = 4,
    Socket = 5,
    CharDev = 6,
    BlockDev = 7,
}

impl TryFrom<u8> for Kind {
    type Error = Error;
    fn try_from(v: u8) -> Result<Self> {
        Ok(match v {
            1 => Kind::File,
            2 => Kind::Dir,
            3 => Kind::Symlink,
            4 => Kind::Fifo,
            5 => Kind::Socket,
            6 => Kind::CharDev,
            7 => Kind::BlockDev,
            _ => return Err(Error::Corrupt(format!("unknown file kind {v}"))),
        })
    }
}

impl Kind {
    /// Kind from the S_IFMT bits of a mode.
    pub fn from_mode(mode: u32) -> Option<Kind> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFCHR => Kind::CharDev,
            libc::S_IFBLK => Kind::BlockDev,
            0 => Kind::File,
            _ => return None,
        })
    }
}

/// Seconds and nanoseconds since the epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Ts {
    pub sec: i64,
    pub nsec: u32,
}

impl Ts {
    pub fn now() -> Ts {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Ts { sec: d.as_secs() as i64, nsec: d.subsec_nanos() }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InodeRec {
    pub kind: Kind,
    /// Permission bits including suid/sgid/sticky, without the file type.
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub rdev: u32,
    pub size: u64,
    /// Number of stored (non-hole) blocks: st_blocks derives from it.
    pub blocks: u64,
    /// Parent directory, kept for directories only (for "..").
    pub parent: u64,
    pub atime: Ts,
    pub mtime: Ts,
    pub ctime: Ts,
    pub crtime: Ts,
    /// Symlink target.
    pub target: Vec<u8>,
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(b: &'a [u8], what: &str) -> Result<(Self, bool)> {
        if b.len() < 2 || b[0] != VALUE_VERSION {
            return Err(Error::Corrupt(format!("{what}: unknown value version")));
        }
        match b[1] {
            TAG_DEAD => Ok((Reader { b, at: 2 }, false)),
            TAG_LIVE => Ok((Reader { b, at: 2 }, true)),
            t => Err(Error::Corrupt(format!("{what}: unknown tag {t}"))),
        }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.at + n > self.b.len() {
            return Err(Error::Corrupt("value too short".into()));
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
    fn u64(&mut self) -> Result<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn ts(&mut self) -> Result<Ts> {
        let sec = self.u64()? as i64;
        let nsec = self.u32()?;
        Ok(Ts { sec, nsec })
    }
    fn rest(&mut self) -> &'a [u8] {
        let s = &self.b[self.at..];
        self.at = self.b.len();
        s
    }
}

fn live_header(cap: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(cap);
    v.push(VALUE_VERSION);
    v.push(TAG_LIVE);
    v
}

/// The value that hides all older versions of a key.
pub fn tombstone() -> Vec<u8> {
    vec![VALUE_VERSION, TAG_DEAD]
}

pub fn is_tombstone(v: &[u8]) -> bool {
    v.len() >= 2 && v[1] == TAG_DEAD
}

impl InodeRec {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = live_header(96 + self.target.len());
        v.push(self.kind as u8);
        for x in [self.perm, self.uid, self.gid, self.nlink, self.rdev] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        for x in [self.size, self.blocks, self.parent] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        for t in [self.atime, self.mtime, self.ctime, self.crtime] {
            v.extend_from_slice(&(t.sec as u64).to_le_bytes());
            v.extend_from_slice(&t.nsec.to_le_bytes());
        }
        v.extend_from_slice(&self.target);
        v
    }

    /// None for a tombstone.
    pub fn decode(b: &[u8]) -> Result<Option<InodeRec>> {
        let (mut r, live) = Reader::new(b, "inode")?;
        if !live {
            return Ok(None);
        }
        let kind = Kind::try_from(r.u8()?)?;
        Ok(Some(InodeRec {
            kind,
            perm: r.u32()?,
            uid: r.u32()?,
            gid: r.u32()?,
            nlink: r.u32()?,
            rdev: r.u32()?,
            size: r.u64()?,
            blocks: r.u64()?,
            parent: r.u64()?,
            atime: r.ts()?,
            mtime: r.ts()?,
            ctime: r.ts()?,
            crtime: r.ts()?,
            target: r.rest().to_vec(),
        }))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirentRec {
    pub kind: Kind,
    pub ino: u64,
}

impl DirentRec {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = live_header(11);
        v.push(self.kind as u8);
        v.extend_from_slice(&self.ino.to_le_bytes());
        v
    }
    /// None for a whiteout.
    pub fn decode(b: &[u8]) -> Result<Option<DirentRec>> {
        let (mut r, live) = Reader::new(b, "dirent")?;
        if !live {
            return Ok(None);
        }
        let kind = Kind::try_from(r.u8()?)?;
        Ok(Some(DirentRec { kind, ino: r.u64()? }))
    }
}

/// An extent version: the block's hash, or None for a hole that hides an older version.
pub fn encode_extent(hash: &Hash) -> Vec<u8> {
    let mut v = live_header(18);
    v.extend_from_slice(hash);
    v
}

/// A hash (or any bytes) as lowercase hex, for messages.
pub fn hex(h: &[u8]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn decode_extent(b: &[u8]) -> Result<Option<Hash>> {
    let (mut r, live) = Reader::new(b, "extent")?;
    if !live {
        return Ok(None);
    }
    let mut h = [0u8; 16];
    h.copy_from_slice(r.take(16)?);
    Ok(Some(h))
}

/// Bytes written over a stored block (a `W` catalog record): the written ranges of the
/// block (sorted, disjoint, `[start, end)`), then their bytes in that order.
pub fn encode_written(ranges: &[(u32, u32)], block: &[u8]) -> Vec<u8> {
    let n: usize = ranges.iter().map(|(s, e)| (e - s) as usize).sum();
    let mut v = live_header(6 + 8 * ranges.len() + n);
    v.extend_from_slice(&(ranges.len() as u32).to_le_bytes());
    for (s, e) in ranges {
        v.extend_from_slice(&s.to_le_bytes());
        v.extend_from_slice(&e.to_le_bytes());
    }
    for &(s, e) in ranges {
        v.extend_from_slice(&block[s as usize..e as usize]);
    }
    v
}

/// Written byte ranges of a block, and a block buffer holding their bytes (zeros elsewhere).
pub type Written = (Vec<(u32, u32)>, Vec<u8>);

/// The ranges and block buffer (of `block_size` bytes) of a `W` record; ranges outside the
/// block or out of order are corrupt.
pub fn decode_written(b: &[u8], block_size: usize) -> Result<Written> {
    let (mut r, live) = Reader::new(b, "written bytes")?;
    if !live {
        return Err(Error::Corrupt("written bytes: a tombstone".into()));
    }
    let n = r.u32()? as usize;
    let mut ranges = Vec::with_capacity(n.min(1024));
    let mut last = 0u32;
    for _ in 0..n {
        let (s, e) = (r.u32()?, r.u32()?);
        if s < last || e <= s || e as usize > block_size {
            return Err(Error::Corrupt(format!("written bytes: bad range {s}..{e}")));
        }
        ranges.push((s, e));
        last = e;
    }
    let mut block = vec![0u8; block_size];
    for &(s, e) in &ranges {
        block[s as usize..e as usize].copy_from_slice(r.take((e - s) as usize)?);
    }
    if !r.rest().is_empty() {
        return Err(Error::Corrupt("written bytes: trailing bytes".into()));
    }
    Ok((ranges, block))
}

/// How many extents of a head view name one block (0 hides an inherited count).
pub fn encode_count(n: u64) -> Vec<u8> {
    let mut v = live_header(10);
    v.extend_from_slice(&n.to_le_bytes());
    v
}

pub fn decode_count(b: &[u8]) -> Result<u64> {
    let (mut r, live) = Reader::new(b, "count")?;
    if !live {
        return Ok(0);
    }
    let mut a = [0u8; 8];
    a.copy_from_slice(r.take(8)?);
    Ok(u64::from_le_bytes(a))
}

pub fn encode_xattr(value: &[u8]) -> Vec<u8> {
    let mut v = live_header(2 + value.len());
    v.extend_from_slice(value);
    v
}

pub fn decode_xattr(b: &[u8]) -> Result<Option<Vec<u8>>> {
    let (mut r, live) = Reader::new(b, "xattr")?;
    Ok(if live { Some(r.rest().to_vec()) } else { None })
}

/// Who references a block: (lineage, number of extent versions) pairs, sorted by lineage.
/// The block's refcount is the sum; it is deleted when that reaches zero. `loc` is where
/// its bytes are kept in the blocks CF (see `keys`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RefRec {
    pub size: u32,
    pub loc: u64,
    pub owners: Vec<(u64, u64)>,
}

impl RefRec {
    pub fn total(&self) -> u64 {
        self.owners.iter().map(|o| o.1).sum()
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut v = live_header(14 + 16 * self.owners.len());
        v.extend_from_slice(&self.size.to_le_bytes());
        v.extend_from_slice(&self.loc.to_le_bytes());
        for (l, c) in &self.owners {
            v.extend_from_slice(&l.to_le_bytes());
            v.extend_from_slice(&c.to_le_bytes());
        }
        v
    }
    pub fn decode(b: &[u8]) -> Result<RefRec> {
        let (mut r, _) = Reader::new(b, "refcount")?;
        let size = r.u32()?;
        let loc = r.u64()?;
        let mut owners = Vec::new();
        while r.at < r.b.len() {
            owners.push((r.u64()?, r.u64()?));
        }
        Ok(RefRec { size, loc, owners })
    }
    /// Adds `delta` references from `lineage`; removes the owner at zero.
    pub fn add(&mut self, lineage: u64, delta: i64) -> Result<()> {
        let pos = self.owners.binary_search_by_key(&lineage, |o| o.0);
        match pos {
            Ok(i) => {
                let now = self.owners[i].1 as i64 + delta;
                if now < 0 {
                    return Err(Error::Corrupt(format!("refcount of lineage {lineage} below zero")));
                }
                if now == 0 {
                    self.owners.remove(i);
                } else {
                    self.owners[i].1 = now as u64;
                }
            }
            Err(i) => {
                if delta < 0 {
                    return Err(Error::Corrupt(format!("refcount of lineage {lineage} below zero")));
                }
                if delta > 0 {
                    self.owners.insert(i, (lineage, delta as u64));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_bytes_round_trip_and_bad_ranges_are_refused() {
        let block: Vec<u8> = (0..16384u32).map(|i| (i % 251) as u8 + 1).collect();
        let ranges = vec![(0, 100), (4096, 8192), (16000, 16384)];
        let (r, b) = decode_written(&encode_written(&ranges, &block), 16384).unwrap();
        assert_eq!(r, ranges);
        for (i, x) in b.iter().enumerate() {
            let inside = ranges.iter().any(|&(s, e)| (s as usize..e as usize).contains(&i));
            assert_eq!(*x, if inside { block[i] } else { 0 }, "byte {i}");
        }
        // A range past the block, overlapping ranges, a cut value: refused, never misread.
        assert!(decode_written(&encode_written(&[(0, 100)], &block), 64).is_err());
        let mut overlap = encode_written(&[(0, 100), (200, 300)], &block);
        overlap[2 + 4 + 8..2 + 4 + 12].copy_from_slice(&50u32.to_le_bytes());
        assert!(decode_written(&overlap, 16384).is_err());
        let v = encode_written(&ranges, &block);
        assert!(decode_written(&v[..v.len() - 1], 16384).is_err());
    }

    #[test]
    fn inode_round_trip() {
        let rec = InodeRec {
            kind: Kind::Symlink,
            perm: 0o4755,
            uid: 1,
            gid: 2,
            nlink: 3,
            rdev: 4,
            size: 5,
            blocks: 6,
            parent: 7,
            atime: Ts { sec: -1, nsec: 999_999_999 },
            mtime: Ts { sec: 8, nsec: 9 },
            ctime: Ts { sec: 10, nsec: 11 },
            crtime: Ts { sec: 12, nsec: 13 },
            target: b"/some/where".to_vec(),
        };
        assert_eq!(InodeRec::decode(&rec.encode()).unwrap(), Some(rec));
        assert_eq!(InodeRec::decode(&tombstone()).unwrap(), None);
    }

    #[test]
    fn dirent_extent_xattr_round_trip() {
        let d = DirentRec { kind: Kind::Dir, ino: 77 };
        assert_eq!(DirentRec::decode(&d.encode()).unwrap(), Some(d));
        let h = [7u8; 16];
        assert_eq!(decode_extent(&encode_extent(&h)).unwrap(), Some(h));
        assert_eq!(decode_extent(&tombstone()).unwrap(), None);
        assert_eq!(decode_xattr(&encode_xattr(b"v")).unwrap(), Some(b"v".to_vec()));
    }

    #[test]
    fn unknown_version_is_refused() {
        assert!(InodeRec::decode(&[9, 1, 1]).is_err());
        assert!(DirentRec::decode(&[]).is_err());
    }

    #[test]
    fn refrec_counts_per_lineage() {
        let mut r = RefRec { size: 4096, loc: 77, owners: vec![] };
        r.add(2, 1).unwrap();
        r.add(1, 2).unwrap();
        assert_eq!(r.owners, vec![(1, 2), (2, 1)]);
        assert_eq!(r.total(), 3);
        r.add(1, -2).unwrap();
        assert_eq!(r.owners, vec![(2, 1)]);
        assert!(r.add(1, -1).is_err());
        assert_eq!(RefRec::decode(&r.encode()).unwrap(), r);
    }
}
