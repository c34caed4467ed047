//! Daemon <-> CLI protocol: one JSON request line, one JSON response line, per connection,
//! over the Unix socket STORE/clonefs.sock (mode 0600).

pub mod client;
pub mod http;
pub mod server;

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

pub const SOCKET_NAME: &str = "clonefs.sock";

/// The store's socket by a path short enough for a Unix socket address (at most 107
/// bytes): a deep store's is reached through `/proc/self/fd/N/clonefs.sock`, N its
/// directory opened (`O_PATH`) for as long as this lives, so bind or connect before dropping it.
pub struct SocketPath {
    pub path: PathBuf,
    _dir: Option<std::fs::File>,
}

pub fn socket_addr(store: &std::path::Path) -> std::io::Result<SocketPath> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let full = store.join(SOCKET_NAME);
    if full.as_os_str().len() < 100 {
        return Ok(SocketPath { path: full, _dir: None });
    }
    let dir = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_PATH | libc::O_DIRECTORY).open(store)?;
    let path = PathBuf::from(format!("/proc/self/fd/{}/{SOCKET_NAME}", dir.as_raw_fd()));
    Ok(SocketPath { path, _dir: Some(dir) })
}
/// The longest request line the daemon reads; requests are a few hundred bytes.
pub const MAX_REQUEST: u64 = 64 << 10;

/// Who sent a request: the control socket's peer (SO_PEERCRED), or for the HTTP API the
/// daemon's own user (its token vouched for the caller).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// What answers control requests (the daemon). The socket server knows nothing else of it.
pub trait Handler: Send + Sync + 'static {
    /// Answers `req` from `caller`.
    fn handle(&self, req: Request, caller: Caller) -> crate::error::Result<serde_json::Value>;
    /// True once the handler shuts down: the server stops accepting.
    fn stopping(&self) -> bool;
    /// Asks the handler to shut down (after a Shutdown request was answered).
    fn shutdown(&self);
    /// Answers a request that streams (`Request::streams`): `input` is the rest of what the
    /// peer sends, `conn` the connection to answer on (the protocol is the request's own).
    fn stream(&self, req: Request, caller: Caller, input: Box<dyn std::io::Read + Send>, conn: std::os::unix::net::UnixStream);
}

/// mount(8)'s nosuid, nodev and noexec for a mount (`clonefs mount -o`, the mount helper,
/// fstab): the kernel then ignores set-id bits, refuses device files, refuses to execute.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restrict {
    #[serde(default)]
    pub nosuid: bool,
    #[serde(default)]
    pub nodev: bool,
    #[serde(default)]
    pub noexec: bool,
}

impl Restrict {
    /// Takes one mount option; false if it is not one of these (or their opposites).
    pub fn take(&mut self, opt: &str) -> bool {
        match opt {
            "nosuid" => self.nosuid = true,
            "suid" => self.nosuid = false,
            "nodev" => self.nodev = true,
            "dev" => self.nodev = false,
            "noexec" => self.noexec = true,
            "exec" => self.noexec = false,
            _ => return false,
        }
        true
    }

    /// mount(2)'s flags for these, and noatime (every clonefs mount's): a remount must pass
    /// them again, or the kernel clears them.
    pub fn mount_flags(&self) -> libc::c_ulong {
        let mut f = libc::MS_NOATIME;
        for (on, flag) in [(self.nosuid, libc::MS_NOSUID), (self.nodev, libc::MS_NODEV), (self.noexec, libc::MS_NOEXEC)] {
            if on {
                f |= flag;
            }
        }
        f
    }

    /// The options set, as mount(8) writes them.
    pub fn words(&self) -> Vec<&'static str> {
        [(self.nosuid, "nosuid"), (self.nodev, "nodev"), (self.noexec, "noexec")].iter().filter(|w| w.0).map(|w| w.1).collect()
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Ping,
    Create { name: String, block_size: u32, uid: u32, gid: u32 },
    /// Every volume and snapshot, or only those `names` gives: `VOL` (with its snapshots)
    /// or `VOL@SNAP`.
    List {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        names: Vec<String>,
    },
    /// `name` is `VOL` or `VOL@SNAP` (read-only).
    Mount {
        name: String,
        dir: PathBuf,
        read_only: bool,
        /// Let the kernel cache writes (FUSE writeback cache).
        #[serde(default)]
        writeback: bool,
        /// Opens and closes stay in the kernel (`clonefs mount --fast-open`).
        #[serde(default)]
        fast_open: bool,
        #[serde(default)]
        restrict: Restrict,
    },
    Unmount { dir: PathBuf },
    /// Makes a mounted volume read-only or writable again without unmounting it.
    Remount { dir: PathBuf, read_only: bool },
    /// `name` is `VOL` or `VOL@SNAP`.
    Destroy { name: String },
    Snapshot { name: String },
    Clone {
        source: String,
        name: String,
        /// `FROM:TO[:COUNT]` ranges: how the clone shows the origin's owners.
        #[serde(default)]
        uid_map: Vec<String>,
        #[serde(default)]
        gid_map: Vec<String>,
        /// The owner of the origin's root shows as this (uid, gid).
        #[serde(default)]
        owner: Option<(u32, u32)>,
    },
    Rollback { name: String },
    /// What changed from `from` (VOL@SNAP) to `to` (VOL@SNAP, or VOL: the live volume; None:
    /// `from`'s live volume). `to` may be another volume when one of the two views descends
    /// from the other (a clone and its origin's snapshot).
    Diff { from: String, #[serde(default)] to: Option<String> },
    /// Brings `paths` of snapshot `snapshot` (VOL@SNAP) back into the live volume, to the same
    /// paths or under `to`, by sharing blocks; existing targets only with `force`.
    Restore { snapshot: String, paths: Vec<String>, #[serde(default)] to: Option<String>, #[serde(default)] force: bool },
    Hold { name: String, tag: String, on: bool },
    Gc,
    Rename { old: String, new: String },
    /// Makes a volume read nothing through its ancestors (`volume::flatten`), then runs GC.
    Flatten { name: String },
    /// Sets a volume property (`refquota`, `snapshot.policy`).
    SetProperty { name: String, property: String, value: String },
    /// A volume's properties, as name -> text.
    GetProperties { name: String },
    /// The command history, oldest first.
    History,
    /// The metrics in the Prometheus text format: {"text": ...}.
    Metrics,
    Status,
    Fsck,
    /// Re-read and re-hash every block; long: the reply comes at the end.
    Scrub,
    /// How far the running scrub is: {"done": bytes, "total": bytes, "running": bool}.
    ScrubProgress,
    Compact,
    /// Lays the blocks of the files of `name` (VOL or VOL@SNAP) back in file order.
    Defrag { name: String },
    Shutdown,
    /// Streams snapshot `snapshot` (VOL@SNAP) after a reply line: the changes since `from`
    /// (a snapshot) if given. `two_way`: the receiver's replies come back on the connection.
    /// `resume`: a receive's resume token, naming snapshot, base and position itself.
    Send {
        #[serde(default)]
        snapshot: String,
        #[serde(default)]
        from: Option<String>,
        #[serde(default)]
        two_way: bool,
        #[serde(default)]
        resume: Option<String>,
    },
    /// Reads a stream from the connection into volume `name`; the daemon answers with frames
    /// (`transfer::kind::WANTS` for a two-way sender, then `RESULT`). `force`: an incremental
    /// receive discards changes made to the volume since its base snapshot.
    Receive {
        name: String,
        #[serde(default)]
        resumable: bool,
        #[serde(default)]
        force: bool,
    },
    /// Drops the interrupted resumable receive into volume `name`.
    ReceiveAbort { name: String },
    /// A database volume: a new data directory of `engine`, or a copy of `import`.
    DbInit {
        name: String,
        engine: String,
        #[serde(default)]
        import: Option<PathBuf>,
        /// None: the engine's page (`Engine::block_size`).
        #[serde(default)]
        block_size: Option<u32>,
    },
    DbStart { name: String, #[serde(default)] port: Option<u16> },
    DbStop { name: String },
    /// A clone of database volume `source` (`VOL` live, or `VOL@SNAP`) with its own server,
    /// port and login. `idle`: a duration (`2h`); `quota`: a size (`10G`).
    DbClone {
        source: String,
        name: String,
        #[serde(default)]
        port: Option<u16>,
        #[serde(default)]
        user: Option<String>,
        #[serde(default)]
        password: Option<String>,
        #[serde(default)]
        idle: Option<String>,
        #[serde(default)]
        protect: bool,
        #[serde(default)]
        quota: Option<String>,
        #[serde(default)]
        listen: Option<String>,
    },
    DbList,
    /// Back to the clone's origin, or (`to`) another snapshot of its source.
    DbReset { name: String, #[serde(default)] to: Option<String> },
    DbDestroy { name: String },
    DbVerify { names: Vec<String> },
}

impl Request {
    /// Requests whose data is a byte stream on the connection, not one reply line.
    pub fn streams(&self) -> bool {
        matches!(self, Request::Send { .. } | Request::Receive { .. })
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `Error::kind` of the error, so the CLI gets the error the daemon had.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default)]
    pub data: serde_json::Value,
}

/// One row of `clonefs list`: a volume or a snapshot (`VOL@SNAP`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub name: String,
    /// "volume" or "snapshot".
    #[serde(rename = "type")]
    pub kind: String,
    /// What a clone came from.
    pub origin: Option<String>,
    /// Holds on a snapshot.
    #[serde(default)]
    pub holds: Vec<String>,
    /// Bytes of all block references of the volume (what `du` would count, holes excluded).
    pub logical: u64,
    /// Bytes of the distinct stored blocks the volume reads.
    pub referenced: u64,
    /// Bytes only this volume references: what destroying it frees.
    pub unique: u64,
    pub block_size: u32,
    pub created: i64,
    pub mountpoint: Option<PathBuf>,
    pub read_only: bool,
    /// A volume's automatic snapshot schedule (`snapshot.policy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_policy: Option<String>,
    /// The member of `daemon --group` that made it (None: root or the daemon's user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creator: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MountInfo {
    pub volume: String,
    pub mountpoint: PathBuf,
    pub read_only: bool,
    /// `mount --writeback` and `--fast-open`.
    #[serde(default)]
    pub writeback: bool,
    #[serde(default)]
    pub fast_open: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusInfo {
    pub store: PathBuf,
    pub format_version: u32,
    pub pid: u32,
    pub volumes: usize,
    /// Bytes of distinct stored blocks, before compression.
    pub physical: u64,
    pub blocks: u64,
    /// Sum of all volumes' logical bytes.
    pub logical: u64,
    pub dedup_ratio: f64,
    /// Bytes the store holds on disk (RocksDB's SST files and the segments).
    pub disk_bytes: u64,
    pub dirty_bytes: u64,
    /// Bytes kept free on the store's disk for deletes and the store's own writes.
    pub reserve: u64,
    /// Bytes new data may still take (free space beyond the reserve).
    pub available: u64,
    /// The daemon's memory budget (`daemon --memory`), and its resident memory now.
    pub memory_budget: u64,
    pub resident: u64,
    /// Block reads that failed since the daemon started (damaged data; see `scrub`).
    #[serde(default)]
    pub read_errors: u64,
    /// GC markers not yet processed (destroyed snapshots or volumes whose space is pending).
    pub pending_gc: u64,
    /// The segment log: how many segments, their bytes on disk, and the bytes of live
    /// blocks in them (the rest is what the cleaner can give back).
    #[serde(default)]
    pub segments: u64,
    #[serde(default)]
    pub segment_bytes: u64,
    #[serde(default)]
    pub segment_live_bytes: u64,
    pub mounts: Vec<MountInfo>,
}
