//! Every key the store writes, in one place.
//!
//! | CF        | key                                              | value                  |
//! |-----------|--------------------------------------------------|------------------------|
//! | blocks    | hash(16)                                         | block bytes            |
//! | refs      | hash(16)                                         | RefRec (per lineage)   |
//! | inodes    | lineage(8) ino(8) !epoch(8)                      | InodeRec or tombstone  |
//! | dirents   | lineage(8) dir(8) name NUL !epoch(8)             | DirentRec or whiteout  |
//! | extents   | lineage(8) ino(8) index(8) !epoch(8)             | ExtentRec or hole      |
//! | xattrs    | lineage(8) ino(8) name NUL !epoch(8)             | value or tombstone     |
//! | catalog   | tag(1) ...                                       | see `CatalogKey`       |
//!
//! Why the order matters:
//! - Integers are big-endian so byte order is numeric order.
//! - The lineage comes first, so one volume's keys form one contiguous range (prefix isolation).
//! - The epoch comes last and inverted (`!epoch`), so the newest version of a key sorts first:
//!   reading the live volume is one seek, and reading snapshot `e` is one seek to `!e`.
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

/// Name part of a dirent or xattr identity (after lineage and dir, before NUL).
pub fn name_of(ident: &[u8]) -> &[u8] {
    &ident[16..ident.len() - 1]
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

/// Catalog keys: a tag byte, then the parts.
pub mod catalog {
    use super::push_u64;

    pub const FORMAT: &[u8] = b"Fformat";
    pub const SECRET: &[u8] = b"Fsecret";
    pub const NEXT_VOLUME_ID: &[u8] = b"Fnext_volume";
    pub const STORE_STATS: &[u8] = b"Fstats";
    /// `N` name -> volume id.
    pub const NAME_TAG: u8 = b'N';
    /// `V` id -> volume record.
    pub const VOLUME_TAG: u8 = b'V';
    /// `S` lineage -> space counters of that lineage.
    pub const SPACE_TAG: u8 = b'S';
    /// `O` lineage ino -> orphan: an unlinked inode still open when it lost its last name.
    pub const ORPHAN_TAG: u8 = b'O';

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
    pub fn orphan(lineage: u64, ino: u64) -> Vec<u8> {
        let mut k = vec![ORPHAN_TAG];
        push_u64(&mut k, lineage);
        push_u64(&mut k, ino);
        k
    }
    pub fn orphans_of(lineage: u64) -> Vec<u8> {
        let mut k = vec![ORPHAN_TAG];
        push_u64(&mut k, lineage);
        k
    }
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
        assert_eq!(name_of(&a), b"a");
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
            let (ident, epoch) = split_version(&key);
            prop_assert_eq!(name_of(ident), &name[..]);
            prop_assert_eq!(epoch, e);
        }

        #[test]
        fn lineage_prefix_isolates(l in 0u64..1000, l2 in 0u64..1000, ino: u64, idx: u64) {
            let key = versioned(extent_key(l2, ino, idx), 1);
            prop_assert_eq!(key.starts_with(&lineage_prefix(l)), l == l2);
        }
    }
}
