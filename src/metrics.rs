//! The daemon's metrics in the Prometheus text format (`clonefs metrics`, `daemon --metrics
//! ADDR` at `/metrics`). Counters and histograms are updated where the work happens (the
//! FUSE boundary, the store's commits, log syncs, the cleaner); figures the store already
//! keeps (space, GC backlog, RocksDB's state) are read when the metrics are rendered, so
//! there is no second copy of them to keep in sync.
//!
//! One set per process (`get`): a process serves one store.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::OnceLock;
use std::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Op {
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Vol {
    pub volume: String,
}

pub struct Metrics {
    registry: Registry,
    /// Latency of each FUSE operation (its count is the histogram's).
    pub fuse: Family<Op, Histogram>,
    pub read_bytes: Counter,
    pub written_bytes: Counter,
    /// Block bytes written to the log (new blocks and the cleaner's moves).
    pub stored_bytes: Counter,
    /// Bytes of blocks written by files that were already stored (not written again).
    pub dedup_bytes: Counter,
    pub commits: Counter,
    /// fsyncs that committed beside a flush of their file in flight instead of waiting.
    pub fsyncs_beside_flush: Counter,
    /// Blocks of FUSE reads found whole in the daemon's memory (unsaved or clean copies),
    /// and those read from the log (through the kernel's page cache).
    pub read_cache_hits: Counter,
    pub read_cache_misses: Counter,
    /// Bytes of read blocks handed to the kernel's page cache beside a READ's reply.
    pub pushed_bytes: Counter,
    /// `fdatasync`s of the log and their latency.
    pub log_syncs: Histogram,
    /// The commit of an fsync that had writes to commit (staging, the log record, RocksDB's
    /// write), before it waits for the log's sync.
    pub fsync_commits: Histogram,
    pub checkpoints: Counter,
    pub cleaner_moved_bytes: Counter,
    pub cleaner_segments_deleted: Counter,
    /// What the store writes to its segments: log records, the zeros of the log's runway,
    /// and blocks written ahead into data segments (the write amplification's parts).
    pub log_record_bytes: Counter,
    pub log_zero_bytes: Counter,
    pub data_segment_bytes: Counter,
    /// Emptied segments the log took as its next segment instead of a new file.
    pub segments_recycled: Counter,
    // Read at render time:
    pub physical_bytes: Gauge,
    pub blocks: Gauge,
    pub segment_bytes: Gauge,
    pub segment_live_bytes: Gauge,
    pub gc_pending: Gauge,
    pub read_errors: Gauge,
    pub rocksdb_pending_compaction_bytes: Gauge,
    pub rocksdb_write_stopped: Gauge,
    pub rocksdb_delayed_write_rate: Gauge,
    pub rocksdb_cache_bytes: Gauge,
    pub memtable_bytes: Gauge,
    pub resident_bytes: Gauge,
    pub volume_logical: Family<Vol, Gauge>,
    pub volume_referenced: Family<Vol, Gauge>,
}

fn latency() -> Histogram {
    // 10 µs .. ~2.6 s
    Histogram::new(exponential_buckets(1e-5, 4.0, 10))
}

impl Metrics {
    fn new() -> Metrics {
        let mut r = Registry::with_prefix("clonefs");
        let fuse = Family::<Op, Histogram>::new_with_constructor(latency as fn() -> Histogram);
        r.register("fuse_op_seconds", "Latency of FUSE operations, by operation", fuse.clone());
        let c = |r: &mut Registry, name: &str, help: &str| {
            let x = Counter::default();
            r.register(name, help, x.clone());
            x
        };
        let g = |r: &mut Registry, name: &str, help: &str| {
            let x: Gauge = Gauge::default();
            r.register(name, help, x.clone());
            x
        };
        let read_bytes = c(&mut r, "read_bytes", "Bytes read by FUSE reads");
        let written_bytes = c(&mut r, "written_bytes", "Bytes written by FUSE writes");
        let stored_bytes = c(&mut r, "stored_bytes", "Block bytes written to the segment log");
        let dedup_bytes = c(&mut r, "dedup_bytes", "Bytes of written blocks already stored (deduplicated)");
        let commits = c(&mut r, "commits", "Commits (one log record each)");
        let fsyncs_beside_flush = c(&mut r, "fsyncs_beside_flush", "fsyncs that committed beside a flush of their file in flight instead of waiting for it");
        let read_cache_hits = c(&mut r, "read_cache_hits", "Blocks of reads found whole in the daemon's memory");
        let read_cache_misses = c(&mut r, "read_cache_misses", "Blocks of reads read from the segment log");
        let pushed_bytes = c(&mut r, "pushed_bytes", "Bytes of read blocks pushed into the kernel's page cache beside READ replies");
        let log_syncs = latency();
        r.register("log_sync_seconds", "fdatasync of the log (one serves every fsync waiting)", log_syncs.clone());
        let fsync_commits = latency();
        r.register("fsync_commit_seconds", "The commit of an fsync with writes to commit, before its log sync", fsync_commits.clone());
        let checkpoints = c(&mut r, "checkpoints", "Checkpoints (log synced, memtables flushed)");
        let cleaner_moved_bytes = c(&mut r, "cleaner_moved_bytes", "Live block bytes the cleaner moved");
        let cleaner_segments_deleted = c(&mut r, "cleaner_segments_deleted", "Segments the cleaner deleted");
        let log_record_bytes = c(&mut r, "log_record_bytes", "Bytes of records appended to the segment log");
        let segments_recycled = c(&mut r, "segments_recycled", "Emptied segments reused as log segments (no zeros written ahead of their records)");
        let log_zero_bytes = c(&mut r, "log_zero_bytes", "Zeros written ahead of the log's records (the runway of fsync'd commits)");
        let data_segment_bytes = c(&mut r, "data_segment_bytes", "Block bytes written ahead into data segments by large commits");
        let physical_bytes = g(&mut r, "physical_bytes", "Bytes of distinct stored blocks");
        let blocks = g(&mut r, "blocks", "Distinct stored blocks");
        let segment_bytes = g(&mut r, "segment_bytes", "Disk bytes of the segments");
        let segment_live_bytes = g(&mut r, "segment_live_bytes", "Bytes of live blocks in the segments (the rest is the cleaner's backlog)");
        let gc_pending = g(&mut r, "gc_pending", "Pending GC markers (destroyed snapshots and volumes not yet freed)");
        let read_errors = g(&mut r, "read_errors", "Block reads that failed since start");
        let rocksdb_pending_compaction_bytes = g(&mut r, "rocksdb_pending_compaction_bytes", "RocksDB's estimate of bytes compaction has to rewrite");
        let rocksdb_write_stopped = g(&mut r, "rocksdb_write_stopped", "1 while RocksDB stops writes");
        let rocksdb_delayed_write_rate = g(&mut r, "rocksdb_delayed_write_rate", "RocksDB's write rate limit while it slows writes (bytes/s, 0: not slowed)");
        let rocksdb_cache_bytes = g(&mut r, "rocksdb_cache_bytes", "Bytes in RocksDB's metadata cache");
        let memtable_bytes = g(&mut r, "memtable_bytes", "Bytes in RocksDB's memtables");
        let resident_bytes = g(&mut r, "resident_bytes", "The daemon's resident memory");
        let volume_logical = Family::<Vol, Gauge>::default();
        r.register("volume_logical_bytes", "LOGICAL of a volume's head", volume_logical.clone());
        let volume_referenced = Family::<Vol, Gauge>::default();
        r.register("volume_referenced_bytes", "REFERENCED of a volume's head", volume_referenced.clone());
        Metrics {
            registry: r,
            fuse,
            read_bytes,
            written_bytes,
            stored_bytes,
            dedup_bytes,
            commits,
            fsyncs_beside_flush,
            read_cache_hits,
            read_cache_misses,
            pushed_bytes,
            log_syncs,
            fsync_commits,
            checkpoints,
            cleaner_moved_bytes,
            cleaner_segments_deleted,
            log_record_bytes,
            segments_recycled,
            log_zero_bytes,
            data_segment_bytes,
            physical_bytes,
            blocks,
            segment_bytes,
            segment_live_bytes,
            gc_pending,
            read_errors,
            rocksdb_pending_compaction_bytes,
            rocksdb_write_stopped,
            rocksdb_delayed_write_rate,
            rocksdb_cache_bytes,
            memtable_bytes,
            resident_bytes,
            volume_logical,
            volume_referenced,
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

/// Times one FUSE operation: observed when dropped (after the reply is sent).
pub struct OpTimer {
    op: &'static str,
    start: Instant,
    done: std::cell::Cell<bool>,
}

pub fn op(op: &'static str) -> OpTimer {
    OpTimer { op, start: Instant::now(), done: std::cell::Cell::new(false) }
}

impl OpTimer {
    /// Records the request's latency now: call it right before the reply. Answering wakes
    /// the caller, which often takes this thread's core; the time until the thread runs
    /// again is not the request's (it made a 60 µs write read as 250 µs on 2 cores).
    pub fn stop(&self) {
        if !self.done.replace(true) {
            get().fuse.get_or_create(&Op { op: self.op }).observe(self.start.elapsed().as_secs_f64());
        }
    }
}

impl Drop for OpTimer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Saturating conversion for gauges.
pub fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
