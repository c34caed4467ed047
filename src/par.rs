//! CPU work of one request split over a few scoped threads: a flush of thousands of blocks
//! (hashing, index lookups) would otherwise run on one core while the others wait.

/// Threads a CPU-bound split uses: all cores but one (which the FUSE request path and the
/// kernel's copies keep busy meanwhile), at most 8; 1 (no split) on a 2-core machine, where
/// measured splits only slowed the writer down.
pub fn threads() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).clamp(1, 8)))
}

/// `f` over every item, in order; split over up to `threads` threads when there are at least
/// `min` items per thread, else on the caller's thread. A panicking thread panics the caller.
pub fn map<T: Sync, R: Send>(items: &[T], threads: usize, min: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let n = threads.min(items.len() / min.max(1));
    if n < 2 {
        return items.iter().map(&f).collect();
    }
    let f = &f;
    std::thread::scope(|s| {
        let parts: Vec<_> = items.chunks(items.len().div_ceil(n)).map(|c| s.spawn(move || c.iter().map(f).collect::<Vec<R>>())).collect();
        parts.into_iter().flat_map(|p| p.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_order_whatever_the_split() {
        let items: Vec<u32> = (0..1000).collect();
        for (threads, min) in [(1, 1), (2, 1), (4, 16), (4, 600), (8, 1)] {
            let out = super::map(&items, threads, min, |x| x * 2);
            assert_eq!(out, items.iter().map(|x| x * 2).collect::<Vec<_>>(), "{threads} threads, {min} per thread");
        }
        assert!(super::map(&[] as &[u32], 4, 1, |x| *x).is_empty());
    }
}
