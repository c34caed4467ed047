//! Command line: clap definitions (their doc comments are the --help text) and `run`.

mod output;
mod transfer;

use output::outln;

use crate::control::{client, Request, Restrict, StatusInfo, VolumeInfo};
use crate::error::{Error, Result};
use crate::store::Store;
use crate::volume::{fsck::FsckReport, parse_block_size, scrub::ScrubReport};
use clap::{CommandFactory, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// `--version`: the program and the store format it reads and writes (a test checks the
/// number against `FORMAT_VERSION`).
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (store format 6)");

/// clonefs: a copy-on-write FUSE filesystem with a deduplicated block store.
#[derive(Parser, Debug)]
#[command(name = "clonefs", version = VERSION, propagate_version = true)]
pub struct Cli {
    /// Store directory [default: /var/lib/clonefs as root, else ~/.local/share/clonefs]
    #[arg(long, env = "CLONEFS_STORE", global = true)]
    store: Option<PathBuf>,
    /// More log output from the daemon (-v info, -vv debug, -vvv trace)
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum DbCmd {
    /// A volume holding a new data directory, or a copy of a stopped one (--import)
    Init {
        volume: String,
        /// postgres, mariadb or sqlite
        #[arg(long)]
        engine: String,
        /// A stopped PostgreSQL data directory, or an SQLite database file, to copy in
        #[arg(long, value_name = "PATH")]
        import: Option<PathBuf>,
        /// The volume's block size (default: the engine's page: 8K for PostgreSQL, 16K for
        /// MariaDB, an SQLite file's own, at least 4K)
        #[arg(long, value_name = "SIZE")]
        block_size: Option<String>,
    },
    /// Run the server of a database volume (a port from the pool unless --port)
    Start {
        volume: String,
        #[arg(long)]
        port: Option<u16>,
    },
    /// Stop the server of a database volume
    Stop { volume: String },
    /// Clone SRC (live: crash-consistent, the server recovers) or SRC@SNAP, start its
    /// server on its own port with its own login, and print the connection string
    Clone {
        source: String,
        name: String,
        /// The port (default: the first free one of 6000-6099)
        #[arg(long)]
        port: Option<u16>,
        /// The clone's login (default: its name)
        #[arg(long)]
        user: Option<String>,
        /// The login's password (default: generated and shown once)
        #[arg(long)]
        password: Option<String>,
        /// Destroy the clone after this long without connections or writes (30m, 2h, 1d)
        #[arg(long)]
        idle: Option<String>,
        /// Never destroy it for being idle
        #[arg(long)]
        protect: bool,
        /// Most bytes the clone may write on top of its origin (its quota): writes past it fail
        #[arg(long)]
        quota: Option<String>,
        /// Listen on this address instead of 127.0.0.1 (* for all)
        #[arg(long)]
        listen: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Database volumes: engine, origin, port, status, activity, expiry, unique space
    List {
        #[arg(long)]
        json: bool,
    },
    /// Back to the clone's origin (or --to another snapshot of its source); same port and login
    Reset {
        name: String,
        #[arg(long, value_name = "SNAP")]
        to: Option<String>,
    },
    /// Stop, unmount and destroy a database volume, freeing its port
    Destroy { name: String },
    /// Integrity check of each clone, a marker written in each that no other shows, and each
    /// clone's login refused by the others; exits non-zero on any failure
    Verify {
        #[arg(required = true)]
        names: Vec<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create a new store (refuses a non-empty directory)
    Init,
    /// Serve the store: volumes, mounts and the control socket STORE/clonefs.sock
    Daemon {
        /// Stay in the foreground and log to stderr (otherwise detach, log to STORE/clonefs.log)
        #[arg(long)]
        foreground: bool,
        /// Memory budget (e.g. 256M, 1G): a quarter for RocksDB's memtables, an eighth for its
        /// cache, a quarter for unflushed file data, a sixteenth for clean block copies
        #[arg(long, default_value = "256M")]
        memory: String,
        /// Serve the metrics (Prometheus text format) at http://ADDR/metrics, e.g.
        /// 127.0.0.1:9810 (`clonefs metrics` prints them without this)
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
        /// Serve the control operations as JSON over HTTP at ADDR (HOST:PORT, which needs
        /// --http-token-file, or unix:/path, a 0600 socket): POST /v1/request takes the
        /// socket's JSON requests; GET /v1/volumes, GET /v1/status
        #[arg(long, value_name = "ADDR")]
        http: Option<crate::control::http::Addr>,
        /// A file whose first line is the API's bearer token (at least 16 characters)
        #[arg(long, value_name = "FILE")]
        http_token_file: Option<PathBuf>,
        /// Let members of GROUP (a name or gid) use the control socket too: they may do what
        /// stays inside the store (create, snapshot, clone, destroy, send, receive, db
        /// clones...), mount at directories they own under directories only root changes
        /// (always nosuid, nodev) and unmount their own mounts; not stop the daemon, import
        /// host paths or remap owners
        #[arg(long, value_name = "GROUP")]
        group: Option<String>,
    },
    /// Stop the daemon: flush everything, unmount every volume, exit
    Shutdown,
    /// Create an empty volume
    Create {
        name: String,
        /// Block size: a power of two from 4K to 1M
        #[arg(long, default_value = "16K")]
        block_size: String,
    },
    /// List volumes and snapshots: all of them, or the VOLs (with their snapshots) and VOL@SNAPs named
    List {
        /// Types to list: volume, snapshot, or both (comma-separated)
        #[arg(short = 't', long = "type", default_value = "volume,snapshot")]
        types: String,
        /// Columns: name,type,origin,created,logical,referenced,unique,block,mountpoint,policy,
        /// holds,creator
        #[arg(short = 'o', default_value = output::LIST_DEFAULT)]
        columns: String,
        /// For scripts: no header, fields separated by one tab
        #[arg(short = 'H')]
        scripted: bool,
        /// Exact numbers: sizes in bytes, times in seconds since the epoch
        #[arg(short = 'p')]
        exact: bool,
        #[arg(long)]
        json: bool,
        /// Only these: VOL (with its snapshots) or VOL@SNAP
        #[arg(value_name = "VOL|VOL@SNAP")]
        names: Vec<String>,
    },
    /// Mount a volume (VOL) or, read-only, a snapshot (VOL@SNAP) at an existing directory
    Mount {
        volume: String,
        dir: PathBuf,
        #[arg(long)]
        read_only: bool,
        /// Let the kernel cache writes and send them back in pages: several times faster
        /// small and random writes. fsync'd data is as safe as without it; a snapshot or clone
        /// of the live volume holds every write that returned before it was asked for, but
        /// writes racing with it may show in any subset, as after a power cut
        #[arg(long)]
        writeback: bool,
        /// Let the kernel open and close files without asking the daemon: no round trip per
        /// open and close (builds open each header and object many times). A close then
        /// commits nothing and reports no error: written data is committed within 2 seconds
        /// (at once by fsync), and EDQUOT comes from write(2). A file unlinked while open
        /// goes when the kernel forgets it. For build workspaces
        #[arg(long)]
        fast_open: bool,
        /// Mount options, as mount(8) takes them: nosuid, nodev, noexec (and suid, dev,
        /// exec). Reads never update atime (the mount says noatime)
        #[arg(short = 'o', long = "options", value_name = "OPT[,OPT...]")]
        options: Option<String>,
    },
    /// Unmount a volume (flushes its data first)
    Unmount { dir: PathBuf },
    /// Make a mounted volume read-only (--read-only) or writable again, without unmounting
    /// it (what `mount -o remount,ro DIR` does)
    Remount {
        dir: PathBuf,
        #[arg(long, conflicts_with = "read_write", required_unless_present = "read_write")]
        read_only: bool,
        #[arg(long)]
        read_write: bool,
    },
    /// Destroy a volume (with its snapshots) or a snapshot VOL@SNAP, in any order: data that
    /// clones still read stays; the rest is freed in the background
    Destroy { volume: String },
    /// Take a snapshot VOL@SNAP: an atomic point-in-time cut, O(1), of a mounted busy volume too
    Snapshot { snapshot: String },
    /// Clone VOL@SNAP (or VOL: an implicit snapshot of the live volume) as a new writable volume
    Clone {
        source: String,
        name: String,
        /// The clone's files owned by the origin's root owner show as USER (and GROUP, else
        /// USER's primary group), names or numbers; O(1), nothing is rewritten
        #[arg(long, value_name = "USER[:GROUP]")]
        owner: Option<String>,
        /// Stored uid FROM+i shows as TO+i (repeatable; the semantics of an idmapped mount)
        #[arg(long = "uid-map", value_name = "FROM:TO[:COUNT]")]
        uid_map: Vec<String>,
        /// Stored gid FROM+i shows as TO+i (repeatable)
        #[arg(long = "gid-map", value_name = "FROM:TO[:COUNT]")]
        gid_map: Vec<String>,
    },
    /// Return VOL to snapshot VOL@SNAP; snapshots taken after it are kept
    Rollback { snapshot: String },
    /// What changed from snapshot VOL@A to VOL@B or to the live VOL (default: VOL itself; also
    /// a clone of VOL, or a snapshot of one): + added, - removed, R renamed (old -> new),
    /// M modified (data, or metadata only: mode, owner, times, xattrs)
    Diff {
        from: String,
        to: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Bring files or directory trees back from snapshot VOL@SNAP into the live volume by
    /// sharing blocks (no data is copied): each file replaced atomically; PATHs are inside
    /// the volume (e.g. data/t.db)
    Restore {
        snapshot: String,
        #[arg(required = true)]
        paths: Vec<String>,
        /// Restore to this path instead (with several PATHs: into this directory)
        #[arg(long, value_name = "DEST")]
        to: Option<String>,
        /// Replace targets that exist (refused otherwise)
        #[arg(long)]
        force: bool,
    },
    /// Write snapshot VOL@SNAP as a stream (to stdout, -o FILE, or --to COMMAND): the whole
    /// volume, or with --from the changes since an older snapshot. Progress shows on a
    /// terminal (-v: always)
    Send {
        /// VOL@SNAP (not needed with --resume)
        #[arg(required_unless_present = "resume")]
        snapshot: Option<String>,
        /// Send only the changes since this snapshot (VOL@BASE), which the receiver holds
        #[arg(long, short = 'i', value_name = "VOL@BASE")]
        from: Option<String>,
        /// Write the stream to FILE instead of stdout
        #[arg(short = 'o', value_name = "FILE", conflicts_with = "to")]
        output: Option<PathBuf>,
        /// Two-way: run COMMAND (e.g. "ssh host clonefs receive VOL --serve") and send only
        /// the blocks its store lacks
        #[arg(long, value_name = "COMMAND")]
        to: Option<String>,
        /// Send the rest of an interrupted resumable receive (its receive_resume_token)
        #[arg(long, value_name = "TOKEN", conflicts_with_all = ["snapshot", "from"])]
        resume: Option<String>,
        /// With --to: print the receiver's report as JSON
        #[arg(long, requires = "to")]
        json: bool,
    },
    /// Make volume VOL from a stream (stdin or -i FILE): a full stream creates it, an
    /// incremental one adds its snapshot to VOL, whose newest snapshot must be the base (if
    /// VOL does not exist, it is made a clone of the base, e.g. `send --from v@a c@b`)
    Receive {
        volume: String,
        /// Read the stream from FILE instead of stdin
        #[arg(short = 'i', value_name = "FILE")]
        input: Option<PathBuf>,
        /// Keep what came if the stream stops half-way; `clonefs get VOL
        /// receive_resume_token` then names what `send --resume` must send
        #[arg(long, short = 's')]
        resumable: bool,
        /// An incremental stream discards changes VOL had since its base snapshot
        #[arg(long, short = 'F')]
        force: bool,
        /// The far end of `send --to`: replies go to stdout, messages to stderr
        #[arg(long)]
        serve: bool,
        /// Drop an interrupted resumable receive into VOL
        #[arg(long, short = 'A', conflicts_with_all = ["input", "resumable", "force", "serve"])]
        abort: bool,
        #[arg(long)]
        json: bool,
    },
    /// Database servers on volumes and their clones (PostgreSQL, MariaDB; SQLite files)
    Db {
        #[command(subcommand)]
        cmd: DbCmd,
    },
    /// Put hold TAG on a snapshot: it refuses destroy until released (`list -o name,holds`
    /// shows them). zfs's order, TAG before VOL@SNAP, works too
    Hold {
        /// VOL@SNAP
        snapshot: String,
        tag: String,
    },
    /// Release hold TAG of a snapshot
    Release {
        /// VOL@SNAP
        snapshot: String,
        tag: String,
    },
    /// Run pending garbage collection now
    Gc,
    /// Show every command that changed the store: time, caller's uid, outcome
    History {
        #[arg(long)]
        json: bool,
    },
    /// Print the daemon's metrics in the Prometheus text format (FUSE operation latencies,
    /// bytes read, written, stored and deduplicated, log syncs, GC and cleaner backlog, RocksDB
    /// state, space per volume)
    Metrics,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions { shell: clap_complete::Shell },
    /// Write man pages (clonefs.1 and one per command) into DIR
    Man { dir: PathBuf },
    /// Rename a volume
    Rename { old: String, new: String },
    /// Make VOL (a clone) stand on its own: it and its snapshots stop reading through its
    /// origin, which GC then frees of what only it kept (an origin destroyed, blocks the clone
    /// rewrote). No data is copied: the clone's index gets what it inherited, blocks are
    /// shared. VOL, its snapshots and its clones may stay mounted and in use (each batch
    /// holds their operations back about 2 ms)
    Flatten { volume: String },
    /// Set a volume property: refquota=SIZE|none (most bytes the volume may reference);
    /// quota=SIZE|none (most bytes of its own: its writes and its snapshots', for a clone
    /// what it adds to its origin);
    /// snapshot.policy=PERIOD:COUNT,...|none (automatic snapshots kept per period: frequent
    /// (15 min), hourly, daily, weekly, monthly, yearly; e.g. hourly:24,daily:7,weekly:4)
    Set {
        /// PROPERTY=VALUE
        assignment: String,
        volume: String,
    },
    /// Show a volume's or a snapshot's properties: `get VOL|VOL@SNAP`, or `get PROP[,PROP...] VOL|VOL@SNAP`
    Get {
        first: String,
        volume: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show the store: path, format, space, dedup ratio, mounts
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Check the whole store for consistency (through the daemon if one runs)
    Fsck {
        #[arg(long)]
        json: bool,
    },
    /// Re-read and re-hash every stored block, with a progress bar; names the volumes,
    /// snapshots and files that use a damaged one (runs while volumes are mounted)
    Scrub {
        #[arg(long)]
        json: bool,
    },
    /// Compact the store so that freed space leaves the disk now
    Compact,
    /// Lay the blocks of the files of VOL (or VOL@SNAP) back in file order, so that reading
    /// a file rewritten at random in order reads the disk in order again (runs while
    /// mounted; what the files hold does not change; `compact` then gives back the space
    /// the old places took)
    Defrag {
        target: String,
        #[arg(long)]
        json: bool,
    },
}

/// `hold`'s arguments in either order: a tag never holds '@' (`check_name`), a snapshot does.
fn snapshot_and_tag(a: String, b: String) -> (String, String) {
    if !a.contains('@') && b.contains('@') {
        (b, a)
    } else {
        (a, b)
    }
}

fn need_snapshot(s: &str) -> Result<()> {
    match crate::volume::parse_target(s)? {
        (_, Some(_)) => Ok(()),
        (_, None) => Err(Error::Invalid(format!("{s:?} is not a snapshot: write VOL@SNAP"))),
    }
}

pub fn default_store() -> PathBuf {
    if crate::sys::geteuid() == 0 {
        return PathBuf::from("/var/lib/clonefs");
    }
    match std::env::var_os("XDG_DATA_HOME") {
        Some(d) => PathBuf::from(d).join("clonefs"),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| ".".into())).join(".local/share/clonefs"),
    }
}

fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        Ok(p.to_path_buf())
    } else {
        Ok(std::env::current_dir()?.join(p))
    }
}

pub fn main_with(cli: Cli) -> ExitCode {
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("clonefs: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    // Whatever this process creates in the store (RocksDB's files, the log, the socket) is
    // private to its owner.
    crate::sys::set_umask(0o077);
    let store = absolute(&cli.store.clone().unwrap_or_else(default_store))?;
    let call = |req: Request| client::call(&store, &req);
    match cli.cmd {
        Cmd::Init => {
            Store::init(&store)?;
            outln!("created store {}", store.display());
        }
        Cmd::Daemon { foreground, memory, metrics, http, http_token_file, group } => {
            let total = crate::memory::parse_size(&memory)
                .ok_or_else(|| Error::Invalid(format!("invalid memory budget {memory:?}: use a size such as 256M or 1G")))?;
            let mem = crate::memory::Budget::new(total)?;
            let group = match group {
                Some(g) => Some(crate::sys::group_id(&g)?.ok_or_else(|| Error::Invalid(format!("no group named {g:?}")))?),
                None => None,
            };
            let serve = crate::daemon::Serve { metrics, http, http_token_file, group };
            if foreground {
                init_logging(cli.verbose.max(1));
                crate::daemon::run(&store, mem, serve)?;
            } else {
                start_daemon(&store, cli.verbose, mem.total, serve)?;
            }
        }
        Cmd::Shutdown => {
            let pid = call(Request::Status).ok().and_then(|v| v["pid"].as_u64());
            call(Request::Shutdown)?;
            // Until the process is gone, not just its socket: it still checkpoints and closes
            // the store after answering (a script may delete or reopen the store next).
            let deadline = Instant::now() + Duration::from_secs(120);
            let running = || match pid {
                Some(p) => crate::sys::process_running(p as u32),
                None => client::ping(&store),
            };
            while running() {
                if Instant::now() > deadline {
                    return Err(Error::Conflict("the daemon did not stop within 2 minutes".into()));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            outln!("daemon stopped");
        }
        Cmd::Create { name, block_size } => {
            let block_size = parse_block_size(&block_size)?;
            crate::volume::check_name(&name)?;
            call(Request::Create { name: name.clone(), block_size, uid: crate::sys::geteuid(), gid: crate::sys::getegid() })?;
            outln!("created volume {name} (block size {})", output::size(block_size as u64));
        }
        Cmd::List { types, columns, scripted, exact, json, names } => {
            let cols: Vec<&str> = columns.split(',').map(str::trim).collect();
            if let Some(c) = cols.iter().find(|c| !output::LIST_COLUMNS.iter().any(|k| k.0 == **c)) {
                let known: Vec<&str> = output::LIST_COLUMNS.iter().map(|k| k.0).collect();
                return Err(Error::Invalid(format!("unknown column {c:?} (known: {})", known.join(","))));
            }
            let mut want = Vec::new();
            for t in types.split(',') {
                match t.trim() {
                    "volume" | "volumes" | "filesystem" => want.push("volume"),
                    "snapshot" | "snapshots" | "snap" => want.push("snapshot"),
                    "all" => want.extend(["volume", "snapshot"]),
                    other => return Err(Error::Invalid(format!("unknown type {other:?}: use volume, snapshot or all"))),
                }
            }
            let mut v: Vec<VolumeInfo> = serde_json::from_value(call(Request::List { names })?)?;
            v.retain(|x| want.contains(&x.kind.as_str()));
            if json {
                outln!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                output::volumes(&v, &cols, scripted, exact);
            }
        }
        Cmd::Mount { volume, dir, read_only, writeback, fast_open, options } => {
            let (_, snap) = crate::volume::parse_target(&volume)?;
            let read_only = read_only || snap.is_some();
            let dir = absolute(&dir)?;
            let mut restrict = Restrict::default();
            for o in options.iter().flat_map(|o| o.split(',')).filter(|o| !o.is_empty()) {
                if !restrict.take(o) {
                    return Err(Error::Invalid(format!("unknown mount option {o:?} (-o takes nosuid, nodev, noexec, suid, dev, exec)")));
                }
            }
            let done = call(Request::Mount { name: volume.clone(), dir: dir.clone(), read_only, writeback, fast_open, restrict })?;
            if done["already"] == true {
                outln!("{volume} is already mounted at {}", dir.display());
                return Ok(ExitCode::SUCCESS);
            }
            let mut opts: Vec<&str> = [(read_only, "read-only"), (writeback && !read_only, "writeback"), (fast_open, "fast-open")].iter().filter(|o| o.0).map(|o| o.1).collect();
            opts.extend(restrict.words());
            outln!("mounted {volume} at {}{}", dir.display(), if opts.is_empty() { String::new() } else { format!(" ({})", opts.join(", ")) });
        }
        Cmd::Unmount { dir } => {
            call(Request::Unmount { dir: absolute(&dir)? })?;
        }
        Cmd::Remount { dir, read_only, .. } => {
            call(Request::Remount { dir: absolute(&dir)?, read_only })?;
            outln!("{} is {}", dir.display(), if read_only { "read-only" } else { "writable" });
        }
        Cmd::Destroy { volume } => {
            crate::volume::parse_target(&volume)?;
            call(Request::Destroy { name: volume.clone() })?;
            outln!("destroyed {volume}");
        }
        Cmd::Snapshot { snapshot } => {
            need_snapshot(&snapshot)?;
            call(Request::Snapshot { name: snapshot.clone() })?;
            outln!("snapshot {snapshot} taken");
        }
        Cmd::Clone { source, name, owner, uid_map, gid_map } => {
            crate::volume::parse_target(&source)?;
            crate::volume::check_name(&name)?;
            for r in uid_map.iter().chain(&gid_map) {
                crate::volume::idmap::Range::parse(r)?;
            }
            let owner = owner.as_deref().map(resolve_owner).transpose()?;
            call(Request::Clone { source: source.clone(), name: name.clone(), uid_map, gid_map, owner })?;
            outln!("cloned {source} as {name}");
        }
        Cmd::Diff { from, to, json } => {
            need_snapshot(&from)?;
            if let Some(to) = &to {
                crate::volume::parse_target(to)?;
            }
            let v = call(Request::Diff { from, to })?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let changes: Vec<crate::volume::diff::Change> = serde_json::from_value(v)?;
                output::diff(&changes);
            }
        }
        Cmd::Restore { snapshot, paths, to, force } => {
            need_snapshot(&snapshot)?;
            let v = call(Request::Restore { snapshot: snapshot.clone(), paths, to, force })?;
            outln!(
                "restored {} files and {} directories ({}) from {snapshot} in {:.1} ms",
                v["files"].as_u64().unwrap_or(0),
                v["dirs"].as_u64().unwrap_or(0),
                output::size(v["bytes"].as_u64().unwrap_or(0)),
                v["micros"].as_u64().unwrap_or(0) as f64 / 1000.0
            );
        }
        Cmd::Send { snapshot, from, output, to, resume, json } => {
            if let Some(s) = &snapshot {
                need_snapshot(s)?;
            }
            if let Some(f) = &from {
                need_snapshot(f)?;
            }
            let progress = cli.verbose > 0 || std::io::IsTerminal::is_terminal(&std::io::stderr());
            let what = snapshot.clone().unwrap_or_else(|| "the rest of the stream".into());
            let started = Instant::now();
            let args = transfer::SendArgs { snapshot: snapshot.unwrap_or_default(), from, output, to, resume, progress };
            if let Some(r) = transfer::send(&store, args)? {
                if json {
                    outln!("{}", serde_json::to_string_pretty(&r)?);
                    return Ok(ExitCode::SUCCESS);
                }
                eprintln!(
                    "sent {what} to {}: {} blocks ({}) travelled in {:.1} s",
                    r["snapshot"].as_str().unwrap_or("?"),
                    r["blocks"].as_u64().unwrap_or(0),
                    output::size(r["block_bytes"].as_u64().unwrap_or(0)),
                    started.elapsed().as_secs_f64()
                );
            }
        }
        Cmd::Receive { volume, input, resumable, force, serve, abort, json } => {
            if abort {
                call(Request::ReceiveAbort { name: volume.clone() })?;
                outln!("dropped the receive into {volume}");
                return Ok(ExitCode::SUCCESS);
            }
            let progress = !serve && (cli.verbose > 0 || std::io::IsTerminal::is_terminal(&std::io::stderr()));
            let started = Instant::now();
            let r = transfer::receive(&store, transfer::ReceiveArgs { name: volume, input, resumable, force, serve, progress })?;
            if json && !serve {
                outln!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                let line = format!(
                    "received {}: {} records, {} new blocks ({}) in {:.1} s",
                    r["snapshot"].as_str().unwrap_or("?"),
                    r["records"].as_u64().unwrap_or(0),
                    r["blocks"].as_u64().unwrap_or(0),
                    output::size(r["block_bytes"].as_u64().unwrap_or(0)),
                    started.elapsed().as_secs_f64()
                );
                match serve {
                    true => eprintln!("{line}"),
                    false => outln!("{line}"),
                }
            }
        }
        Cmd::Db { cmd } => return db_command(&store, cmd),
        Cmd::Rollback { snapshot } => {
            need_snapshot(&snapshot)?;
            call(Request::Rollback { name: snapshot.clone() })?;
            outln!("rolled back to {snapshot}");
        }
        Cmd::Hold { snapshot, tag } => {
            let (snapshot, tag) = snapshot_and_tag(snapshot, tag);
            need_snapshot(&snapshot)?;
            call(Request::Hold { name: snapshot.clone(), tag: tag.clone(), on: true })?;
            outln!("hold {tag} on {snapshot}");
        }
        Cmd::Release { snapshot, tag } => {
            let (snapshot, tag) = snapshot_and_tag(snapshot, tag);
            need_snapshot(&snapshot)?;
            call(Request::Hold { name: snapshot.clone(), tag: tag.clone(), on: false })?;
            outln!("released {tag} on {snapshot}");
        }
        Cmd::History { json } => {
            let v = call(Request::History)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let h: Vec<crate::history::Entry> = serde_json::from_value(v)?;
                output::history(&h);
            }
        }
        Cmd::Metrics => {
            let v = call(Request::Metrics)?;
            output::out(format_args!("{}", v["text"].as_str().unwrap_or_default()));
        }
        Cmd::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "clonefs", &mut script);
            output::out(format_args!("{}", String::from_utf8_lossy(&script)));
        }
        Cmd::Man { dir } => {
            std::fs::create_dir_all(&dir)?;
            let cmd = Cli::command();
            clap_mangen::generate_to(cmd, &dir)?;
            outln!("man pages written to {}", dir.display());
        }
        Cmd::Gc => {
            let v = call_with_spinner(&store, "gc", Request::Gc, false)?;
            outln!("gc: processed {} markers", v["processed"].as_u64().unwrap_or(0));
        }
        Cmd::Set { assignment, volume } => {
            let (prop, value) = assignment
                .split_once('=')
                .ok_or_else(|| Error::Invalid(format!("expected PROPERTY=VALUE, got {assignment:?}")))?;
            crate::volume::check_name(&volume)?;
            call(Request::SetProperty { name: volume.clone(), property: prop.to_string(), value: value.to_string() })?;
            outln!("{volume}: {prop}={value}");
        }
        Cmd::Get { first, volume, json } => {
            let (props, volume) = match volume {
                Some(v) => (Some(first), v),
                None => (None, first),
            };
            crate::volume::parse_target(&volume)?;
            let all = call(Request::GetProperties { name: volume.clone() })?;
            let all = all.as_object().ok_or_else(|| Error::Corrupt("bad property list from the daemon".into()))?;
            let wanted: Vec<String> = match props.as_deref() {
                None | Some("all") => all.keys().cloned().collect(),
                Some(p) => p.split(',').map(str::to_string).collect(),
            };
            if let Some(p) = wanted.iter().find(|p| !all.contains_key(p.as_str())) {
                return Err(Error::Invalid(format!("no property named {p:?} (known: {})", all.keys().cloned().collect::<Vec<_>>().join(", "))));
            }
            if json {
                let picked: serde_json::Map<String, serde_json::Value> =
                    wanted.iter().map(|p| (p.clone(), all[p.as_str()].clone())).collect();
                outln!("{}", serde_json::to_string_pretty(&picked)?);
            } else {
                let rows: Vec<(&str, &str)> = wanted.iter().map(|p| (p.as_str(), all[p.as_str()].as_str().unwrap_or(""))).collect();
                output::properties(&rows);
            }
        }
        Cmd::Flatten { volume } => {
            crate::volume::check_name(&volume)?;
            let v = call_with_spinner(&store, &format!("flattening {volume}"), Request::Flatten { name: volume.clone() }, false)?;
            let freed = v["freed"].as_u64().unwrap_or(0);
            outln!("flattened {volume}: {} index records written; GC freed {}", v["versions"].as_u64().unwrap_or(0), output::size(freed));
        }
        Cmd::Rename { old, new } => {
            crate::volume::check_name(&old)?;
            crate::volume::check_name(&new)?;
            call(Request::Rename { old: old.clone(), new: new.clone() })?;
            outln!("renamed {old} to {new}");
        }
        Cmd::Status { json } => {
            let s: StatusInfo = serde_json::from_value(call(Request::Status)?)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                output::status(&s);
            }
        }
        Cmd::Fsck { json } => {
            let report: FsckReport = if client::ping(&store) {
                serde_json::from_value(call_with_spinner(&store, "fsck", Request::Fsck, json)?)?
            } else {
                let s = Store::open(&store)?;
                crate::volume::fsck::check(&s)?
            };
            if json {
                outln!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                output::fsck(&report);
            }
            if !report.is_clean() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Cmd::Scrub { json } => {
            let report = if client::ping(&store) {
                scrub_through_daemon(&store, json)?
            } else {
                let s = std::sync::Arc::new(Store::open(&store)?);
                crate::volume::scrub::run(&s, &crate::volume::Catalog::default(), &Default::default())?
            };
            if json {
                outln!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                output::scrub(&report);
            }
            if !report.damaged.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Cmd::Defrag { target, json } => {
            crate::volume::parse_target(&target)?;
            let v = call_with_spinner(&store, "defrag", Request::Defrag { name: target.clone() }, json)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let n = |k: &str| v[k].as_u64().unwrap_or(0);
                outln!(
                    "defragmented {target}: {} of {} files laid in order, {} moved in {:.1} s",
                    n("defragmented"),
                    n("files"),
                    output::size(n("moved_bytes")),
                    n("micros") as f64 / 1e6
                );
                if n("damaged") > 0 {
                    eprintln!("clonefs: {} damaged block(s) left in place: `clonefs scrub` names the files that use them", n("damaged"));
                }
            }
        }
        Cmd::Compact => {
            let v = call_with_spinner(&store, "compact", Request::Compact, false)?;
            outln!(
                "compacted: moved {} out of {} segments; {} on disk",
                output::size(v["moved_bytes"].as_u64().unwrap_or(0)),
                v["segments_deleted"].as_u64().unwrap_or(0),
                output::size(v["disk_bytes"].as_u64().unwrap_or(0))
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `USER[:GROUP]` (names or numbers) as (uid, gid); GROUP defaults to USER's primary group.
fn resolve_owner(s: &str) -> Result<(u32, u32)> {
    let (u, g) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (s, None),
    };
    let (uid, primary) = match u.parse::<u32>() {
        Ok(n) => (n, None),
        Err(_) => {
            let (uid, gid) = crate::sys::user_by_name(u).ok_or_else(|| Error::Invalid(format!("no user named {u:?}")))?;
            (uid, Some(gid))
        }
    };
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => crate::sys::group_by_name(g).ok_or_else(|| Error::Invalid(format!("no group named {g:?}")))?,
        },
        None => primary.ok_or_else(|| Error::Invalid(format!("--owner {s}: give the group too (UID:GID) for a numeric user")))?,
    };
    Ok((uid, gid))
}

fn db_command(store: &Path, cmd: DbCmd) -> Result<ExitCode> {
    let call = |req: Request| client::call(store, &req);
    match cmd {
        DbCmd::Init { volume, engine, import, block_size } => {
            let import = import.map(|p| absolute(&p)).transpose()?;
            let block_size = block_size.as_deref().map(parse_block_size).transpose()?;
            let v = call(Request::DbInit { name: volume.clone(), engine, import, block_size })?;
            outln!(
                "created database volume {volume} ({}, {} blocks) at {}",
                v["engine"].as_str().unwrap_or("?"),
                output::size(v["block_size"].as_u64().unwrap_or(0)),
                v["mountpoint"].as_str().unwrap_or("?")
            );
        }
        DbCmd::Start { volume, port } => {
            let v = call(Request::DbStart { name: volume.clone(), port })?;
            outln!("started {volume} on port {}", v["port"]);
        }
        DbCmd::Stop { volume } => {
            call(Request::DbStop { name: volume.clone() })?;
            outln!("stopped {volume}");
        }
        DbCmd::Clone { source, name, port, user, password, idle, protect, quota, listen, json } => {
            let v = call(Request::DbClone { source: source.clone(), name: name.clone(), port, user, password, idle, protect, quota, listen })?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                outln!("cloned {} as {name} in {} ms", v["origin"].as_str().unwrap_or(&source), v["millis"]);
                match v["dsn"].as_str() {
                    Some(d) => outln!("{d}"),
                    None => outln!("{}", v["path"].as_str().unwrap_or("?")),
                }
                if v.get("password").is_some() {
                    eprintln!("(the password is shown only now)");
                }
            }
        }
        DbCmd::List { json } => {
            let v = call(Request::DbList)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                output::db_list(v.as_array().map(|a| a.as_slice()).unwrap_or_default());
            }
        }
        DbCmd::Reset { name, to } => {
            call(Request::DbReset { name: name.clone(), to })?;
            outln!("reset {name}");
        }
        DbCmd::Destroy { name } => {
            call(Request::DbDestroy { name: name.clone() })?;
            outln!("destroyed {name}");
        }
        DbCmd::Verify { names, json } => {
            let v = call(Request::DbVerify { names })?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for c in v["checks"].as_array().map(|a| a.as_slice()).unwrap_or_default() {
                    let ok = if c["ok"] == true { "ok  " } else { "FAIL" };
                    outln!("{ok}\t{}\t{}\t{}", c["clone"].as_str().unwrap_or(""), c["check"].as_str().unwrap_or(""), c["detail"].as_str().unwrap_or("").trim());
                }
            }
            if v["ok"] != true {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs a long request in the daemon with a spinner and the time so far (on a terminal;
/// indicatif draws nothing when stderr is not one) until it answers.
fn call_with_spinner(store: &Path, what: &str, req: Request, quiet: bool) -> Result<serde_json::Value> {
    let s = store.to_path_buf();
    let worker = std::thread::spawn(move || client::call(&s, &req));
    let sp = if quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new_spinner() };
    sp.set_style(indicatif::ProgressStyle::with_template("{spinner} {msg} {elapsed}").map_err(|e| Error::Invalid(e.to_string()))?);
    sp.set_message(what.to_string());
    while !worker.is_finished() {
        sp.tick();
        std::thread::sleep(Duration::from_millis(100));
    }
    sp.finish_and_clear();
    worker.join().map_err(|_| Error::Corrupt(format!("the {what} request thread panicked")))?
}

/// Runs a scrub in the daemon and draws its progress (on a terminal) until it answers.
fn scrub_through_daemon(store: &Path, json: bool) -> Result<ScrubReport> {
    let s = store.to_path_buf();
    let worker = std::thread::spawn(move || client::call(&s, &Request::Scrub));
    let bar = if json { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(0) };
    bar.set_style(
        indicatif::ProgressStyle::with_template("scrub {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .map_err(|e| Error::Invalid(e.to_string()))?,
    );
    while !worker.is_finished() {
        if let Ok(p) = client::call(store, &Request::ScrubProgress) {
            bar.set_length(p["total"].as_u64().unwrap_or(0));
            bar.set_position(p["done"].as_u64().unwrap_or(0));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bar.finish_and_clear();
    let v = worker.join().map_err(|_| Error::Corrupt("the scrub request thread panicked".into()))??;
    Ok(serde_json::from_value(v)?)
}

pub fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    // fuser unmounts again, when a session ends, what the daemon unmounted and checked
    // itself: its "Unmount failed: Invalid argument" at every unmount is noise.
    let filter = format!("{level},fuser::mnt=error");
    let logger = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(filter)).format_timestamp_millis().build();
    let max = logger.filter();
    if log::set_boxed_logger(Box::new(Routine(logger))).is_ok() {
        log::set_max_level(max);
    }
}

/// The log without what the FUSE protocol makes routine: a reply to a request the kernel
/// dropped (its caller was interrupted, as database servers' processes often are) fails
/// with ENOENT, which fuser logs as an error.
struct Routine(env_logger::Logger);

impl log::Log for Routine {
    fn enabled(&self, m: &log::Metadata) -> bool {
        self.0.enabled(m)
    }

    fn log(&self, r: &log::Record) {
        if r.target() == "fuser::reply" && r.args().to_string().ends_with("(os error 2)") {
            return;
        }
        self.0.log(r)
    }

    fn flush(&self) {
        self.0.flush()
    }
}

/// Starts a detached daemon and returns once its socket answers.
pub fn start_daemon(store: &Path, verbose: u8, memory: u64, serve: crate::daemon::Serve) -> Result<()> {
    if client::ping(store) {
        return Err(Error::Conflict(format!("a clonefs daemon already serves store {}", store.display())));
    }
    if !store.join("db").join("CURRENT").exists() {
        return Err(Error::NotFound(format!(
            "no clonefs store at {} (create one with `clonefs init --store {}`)",
            store.display(),
            store.display()
        )));
    }
    let log_path = store.join("clonefs.log");
    let log = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&log_path)?
    };
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.arg("daemon").arg("--foreground").arg("--store").arg(store).arg("--memory").arg(memory.to_string());
    if let Some(a) = serve.metrics {
        cmd.arg("--metrics").arg(a.to_string());
    }
    if let Some(a) = &serve.http {
        cmd.arg("--http").arg(match a {
            crate::control::http::Addr::Tcp(t) => t.to_string(),
            crate::control::http::Addr::Unix(p) => format!("unix:{}", p.display()),
        });
    }
    if let Some(f) = &serve.http_token_file {
        // The child runs elsewhere (cwd /): an absolute path.
        cmd.arg("--http-token-file").arg(std::path::absolute(f)?);
    }
    if let Some(g) = serve.group {
        cmd.arg("--group").arg(g.to_string());
    }
    if verbose > 0 {
        cmd.arg(format!("-{}", "v".repeat(verbose as usize)));
    }
    use std::os::unix::process::CommandExt;
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if client::ping(store) {
            outln!(
                "clonefs daemon running (pid {}) for store {}\n  log: {}\n  stop it with: clonefs shutdown --store {}",
                child.id(),
                store.display(),
                log_path.display(),
                store.display()
            );
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
            return Err(Error::Invalid(format!("the daemon exited ({status}): {last}")));
        }
        if Instant::now() > deadline {
            return Err(Error::NoDaemon("the daemon did not answer within 120 s".into()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `mount -t fuse.clonefs VOL DIR -o opts`: mount(8) runs us as mount.fuse.clonefs.
pub fn mount_helper(args: Vec<String>) -> ExitCode {
    let r = (|| -> Result<()> {
        let mut pos = Vec::new();
        let mut opts = Vec::new();
        let mut it = args.into_iter().skip(1);
        while let Some(a) = it.next() {
            match a.as_str() {
                "-o" => opts.extend(it.next().unwrap_or_default().split(',').map(str::to_string)),
                s if s.starts_with("-o") => opts.extend(s[2..].split(',').map(str::to_string)),
                "-n" | "-s" | "-f" | "-v" => {}
                _ => pos.push(a),
            }
        }
        let [vol, dir] = <[String; 2]>::try_from(pos)
            .map_err(|_| Error::Invalid("usage: mount.fuse.clonefs VOLUME DIR [-o ro,writeback,fast_open,store=DIR]".into()))?;
        let mut store = std::env::var_os("CLONEFS_STORE").map(PathBuf::from).unwrap_or_else(default_store);
        let (mut read_only, mut writeback, mut fast_open, mut remount) = (false, false, false, false);
        let mut restrict = Restrict::default();
        for o in opts.iter().map(String::as_str).filter(|o| !o.is_empty()) {
            match o {
                "remount" => remount = true,
                "rw" => read_only = false,
                "ro" => read_only = true,
                "writeback" => writeback = true,
                "fast_open" => fast_open = true,
                _ if o.starts_with("store=") => store = PathBuf::from(&o["store=".len()..]),
                _ if restrict.take(o) => {}
                // fstab's and mount(8)'s own, and what every clonefs mount is anyway; reads
                // never update atime, whichever atime option is given.
                "defaults" | "auto" | "noauto" | "user" | "nouser" | "users" | "owner" | "group" | "nofail" | "_netdev" | "async"
                | "atime" | "noatime" | "relatime" | "norelatime" | "strictatime" | "nostrictatime" | "diratime" | "nodiratime"
                | "lazytime" | "nolazytime" | "allow_other" | "default_permissions" => {}
                // FUSE's own, which mount(8) passes back on a remount.
                _ if ["x-", "comment=", "user_id=", "group_id=", "fsname=", "subtype=", "max_read=", "blksize=", "rootmode="].iter().any(|p| o.starts_with(p)) => {}
                _ => {
                    return Err(Error::Invalid(format!(
                        "unknown option {o:?} (clonefs takes ro, rw, writeback, fast_open, store=DIR, nosuid, nodev, noexec and mount(8)'s generic options)"
                    )))
                }
            }
        }
        if remount {
            // The daemon of this store flushes first and records it; a mount of another
            // store (the mount table does not say which) is remounted directly.
            let dir = absolute(Path::new(&dir))?;
            return match client::call(&store, &Request::Remount { dir: dir.clone(), read_only }) {
                Err(Error::NotFound(_)) | Err(Error::NoDaemon(_)) => crate::sys::remount(&dir, read_only, restrict.mount_flags()).map_err(Error::from),
                r => r.map(|_| ()),
            };
        }
        if !client::ping(&store) {
            start_daemon(&store, 0, crate::memory::DEFAULT, Default::default())?;
        }
        let (_, snap) = crate::volume::parse_target(&vol)?;
        let read_only = read_only || snap.is_some();
        client::call(&store, &Request::Mount { name: vol, dir: absolute(Path::new(&dir))?, read_only, writeback, fast_open, restrict })?;
        Ok(())
    })();
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mount.fuse.clonefs: {e}");
            ExitCode::from(32)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_names_the_store_format() {
        let want = format!("(store format {})", crate::store::FORMAT_VERSION);
        assert!(super::VERSION.ends_with(&want), "{} should end with {want}", super::VERSION);
    }
}
