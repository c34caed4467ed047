//! The daemon's memory budget (`clonefs daemon --memory SIZE`, 256 MiB by default) and how
//! it is split between the caches and buffers that grow with load. What is left over (a
//! fifth) is for what does not: threads, FUSE request buffers, RocksDB's table readers.

/// Smallest budget accepted: below it the memtables would flush on every few writes.
pub const MIN: u64 = 64 << 20;
pub const DEFAULT: u64 = 256 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    pub total: u64,
    /// All RocksDB memtables together: a checkpoint comes every quarter of it.
    pub memtables: u64,
    /// RocksDB's cache of metadata blocks (block bytes are cached by the kernel's page cache).
    pub cache: u64,
    /// File data written but not yet flushed, all volumes together.
    pub dirty: u64,
    /// Clean copies of recently flushed blocks (spare read-modify-write loads).
    pub clean: u64,
}

impl Budget {
    pub fn new(total: u64) -> crate::error::Result<Budget> {
        if total < MIN {
            return Err(crate::error::Error::Invalid(format!(
                "a memory budget of {} MiB is too small: at least {} MiB",
                total >> 20,
                MIN >> 20
            )));
        }
        Ok(Budget { total, memtables: total / 4, cache: total / 8, dirty: total / 4, clean: total / 16 })
    }
}

impl Default for Budget {
    fn default() -> Self {
        Budget::new(DEFAULT).expect("the default budget is valid")
    }
}

/// Parses a size such as `256M`, `1G`, `512k` or `1048576` (bytes).
pub fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim();
    let (num, shift) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 10),
        Some((i, 'm' | 'M')) => (&t[..i], 20),
        Some((i, 'g' | 'G')) => (&t[..i], 30),
        _ => (t, 0),
    };
    let n: u64 = num.parse().ok()?;
    n.checked_mul(1 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_small_budgets_are_refused() {
        assert_eq!(parse_size("256M"), Some(256 << 20));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("12x"), None);
        assert_eq!(parse_size("99999999999G"), None);
        assert!(Budget::new(16 << 20).is_err());
        let b = Budget::new(256 << 20).unwrap();
        assert!(b.memtables + b.cache + b.dirty + b.clean < b.total);
    }
}
