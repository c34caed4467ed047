//! The daemon: one open store, the mount table, the flusher and GC threads, the control
//! socket and an orderly shutdown on SIGTERM/SIGINT (flush, unmount everything, exit).

use crate::control::{server, Caller, Handler, MountInfo, Request, Restrict, StatusInfo, VolumeInfo};
use crate::error::{Error, Result};
use crate::fs::fuse::FuseFs;
use crate::fs::live::Live;
use crate::fs::snapdir::SnapDir;
use crate::fs::{DirtyBudget, Volume};
use crate::history::{self, History};
use crate::memory::Budget;
use crate::store::{Store, FORMAT_VERSION};
use crate::volume::{autosnap, diff, fsck, gc, idmap, parse_target, scrub, Catalog, Origins, SnapshotViews, HEAD_GONE};
use streams::Claimed;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use fuser::{BackgroundSession, Config, MountOption, Session, SessionACL};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod access;
mod db;
mod mounts;
mod streams;

/// FUSE worker threads per mount: enough that an fsync does not stall readers.
const FUSE_THREADS: usize = 4;
/// Dirty pages the kernel may hold for one writeback mount.
const WRITEBACK_DIRTY_MAX: u64 = 512 << 20;
/// Readahead of every mount, in KiB: one FUSE request (max_write).
const READAHEAD_KB: u64 = 1024;
const FLUSH_TICK: Duration = Duration::from_millis(500);
/// Free bytes the allocator may hold before a flush tick gives them back: after a quiet
/// tick, and (a trim holds each arena's lock while it walks it: 14-24 ms for 64 MiB of
/// fragmented free memory) under load.
const TRIM_QUIET: usize = 16 << 20;
const TRIM_BUSY: usize = 64 << 20;
const GC_TICK: Duration = Duration::from_secs(5);
/// Commits older than this get a checkpoint, so a restart replays at most this much log.
const CHECKPOINT_AGE: Duration = Duration::from_secs(10);
/// How often the daemon looks for automatic snapshots to take or prune.
const AUTOSNAP_TICK: Duration = Duration::from_secs(20);

struct Mounted {
    live: Arc<Live>,
    /// `.snapshots` of a head mount.
    snaps: Option<Arc<SnapDir>>,
    /// Volume id and, for a read-only snapshot view, the snapshot's name.
    volume: u64,
    snapshot: Option<String>,
    target: String,
    dir: PathBuf,
    /// Mounted with the kernel's writeback cache: dirty pages may sit in the kernel.
    writeback: bool,
    /// None while mount(2) runs (the slot is reserved) and after the kernel let go.
    session: Option<BackgroundSession>,
    /// A mount or unmount of this entry is in progress without the table lock.
    busy: bool,
    /// Remounted read-only (`mount -o remount,ro`): the kernel refuses writes.
    remounted_ro: bool,
    restrict: Restrict,
    /// The uid that asked for the mount.
    by: u32,
}

pub struct Daemon {
    store: Arc<Store>,
    catalog: Arc<Catalog>,
    budget: Arc<DirtyBudget>,
    /// What the caches and buffers above are sized from.
    mem: Budget,
    scrub: ScrubState,
    /// Snapshots being read by sends, diffs, restores and defrags, and the heads diffs and
    /// defrags read: not destroyed meanwhile (nor rolled back: heads).
    sending: streams::Sending,
    /// Lineages being flattened, with their volume's name: no mount, send or receive opens
    /// a view through one meanwhile (invariant 26).
    flattening: Mutex<std::collections::HashMap<u64, String>>,
    /// Taken by restores and flattens for their whole run: a restore reads a snapshot's view
    /// and may write into an unmounted head, both of which a flatten of the volume would
    /// change under it. Taken before the mount table.
    restoring: Mutex<()>,
    mounts: Mutex<Vec<Mounted>>,
    /// Orders the writes of `STORE/mounts` (`save_wanted`), taken before the table's lock;
    /// false until the start has mounted again what it names (a table saved halfway would
    /// forget the rest if the daemon died then).
    saving: Mutex<bool>,
    stop: AtomicBool,
    /// Wakes the GC thread; a `false` asks it to stop.
    gc_wake: Sender<bool>,
    /// Wakes the automatic snapshot thread (a policy changed); a `false` asks it to stop.
    autosnap_wake: Sender<bool>,
    history: History,
    /// Database volumes' servers (`clonefs db`).
    db: db::DbState,
}

impl Mounted {
    /// Read-only as users see it: a snapshot's view, or remounted read-only.
    fn read_only(&self) -> bool {
        self.live.get().read_only || self.remounted_ro
    }
}

/// A flatten's claim on its lineage, dropped when it ends.
struct Flattening<'a> {
    table: &'a Mutex<std::collections::HashMap<u64, String>>,
    lineage: u64,
}

impl Drop for Flattening<'_> {
    fn drop(&mut self) {
        if let Ok(mut t) = self.table.lock() {
            t.remove(&self.lineage);
        }
    }
}

/// One scrub at a time, and how far it is.
#[derive(Default)]
struct ScrubState {
    running: AtomicBool,
    progress: scrub::Progress,
}

/// The daemon's resident memory (VmRSS), 0 if /proc does not say.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb << 10)
}

/// Serves `store_dir` until a signal or a shutdown request.
/// What `clonefs daemon` was asked to serve besides the control socket.
#[derive(Default)]
pub struct Serve {
    /// Prometheus metrics at http://ADDR/metrics.
    pub metrics: Option<std::net::SocketAddr>,
    /// The control API over HTTP, and the file holding its bearer token.
    pub http: Option<crate::control::http::Addr>,
    pub http_token_file: Option<PathBuf>,
    /// Members of this group may use the control socket too (`daemon --group`).
    pub group: Option<u32>,
}

pub fn run(store_dir: &Path, mem: Budget, serve: Serve) -> Result<()> {
    let metrics_addr = serve.metrics;
    // Before any thread starts: glibc gives each thread its own arena, and buffers freed
    // across a dozen arenas kept the daemon at 450 MiB where two arenas need 300.
    crate::sys::tune_malloc();
    crate::sys::raise_nofile();
    crate::sys::block_shutdown_signals()?;
    crate::sys::set_umask(0o077);
    let store_dir = store_dir.canonicalize().map_err(|_| {
        Error::NotFound(format!("no clonefs store at {} (create one with `clonefs init`)", store_dir.display()))
    })?;
    let store = Arc::new(Store::open_within(&store_dir, &mem)?);
    let listener = server::bind(&store_dir, serve.group)?;
    crate::store::open_to_group(&store_dir, serve.group)?;
    let http_listener = match &serve.http {
        Some(a) => {
            let token = serve.http_token_file.as_deref().map(crate::control::http::read_token).transpose()?;
            Some((crate::control::http::Listener::bind(a, token.as_deref())?, token))
        }
        None => None,
    };
    let metrics_listener = match metrics_addr {
        Some(a) => Some(std::net::TcpListener::bind(a).map_err(|e| Error::Invalid(format!("cannot serve metrics at {a}: {e}")))?),
        None => None,
    };
    let (gc_tx, gc_rx) = bounded::<bool>(1);
    let (auto_tx, auto_rx) = bounded::<bool>(1);
    let daemon = Arc::new(Daemon {
        catalog: Arc::new(Catalog::default()),
        budget: Arc::new(DirtyBudget::within(&mem)),
        mem,
        scrub: ScrubState::default(),
        sending: Default::default(),
        flattening: Mutex::new(std::collections::HashMap::new()),
        restoring: Mutex::new(()),
        mounts: Mutex::new(Vec::new()),
        saving: Mutex::new(false),
        stop: AtomicBool::new(false),
        gc_wake: gc_tx,
        autosnap_wake: auto_tx,
        history: History::open(&store, crate::history::KEEP)?,
        db: db::DbState::new(&store_dir),
        store,
    });
    daemon.drop_interrupted_receives()?;
    daemon.recover_heads()?;
    let (close_tx, close_rx) = bounded::<()>(1);
    let flusher = {
        let d = daemon.clone();
        std::thread::Builder::new().name("clonefs-flush".into()).spawn(move || d.flush_loop(close_rx))?
    };
    let gc = {
        let d = daemon.clone();
        std::thread::Builder::new().name("clonefs-gc".into()).spawn(move || d.gc_loop(gc_rx))?
    };
    let autosnap = {
        let d = daemon.clone();
        std::thread::Builder::new().name("clonefs-autosnap".into()).spawn(move || d.autosnap_loop(auto_rx))?
    };
    let (db_tx, db_rx) = bounded::<()>(1);
    let supervisor = {
        let d = daemon.clone();
        std::thread::Builder::new().name("clonefs-db".into()).spawn(move || d.db_loop(db_rx))?
    };
    // Before the socket answers: a client that finds the daemon ready finds its mounts too.
    daemon.mount_wanted();
    {
        let d = daemon.clone();
        std::thread::Builder::new().name("clonefs-control".into()).spawn(move || server::serve(listener, d))?;
    }
    let http_thread = match http_listener {
        Some((l, token)) => {
            let l = Arc::new(l);
            let (d, l2): (Arc<dyn Handler>, _) = (daemon.clone(), l.clone());
            let t = std::thread::Builder::new().name("clonefs-http-accept".into()).spawn(move || crate::control::http::serve(&l2, token, d))?;
            Some((l, t))
        }
        None => None,
    };
    let metrics_thread = match metrics_listener {
        Some(l) => {
            let addr = l.local_addr()?;
            log::info!("serving metrics at http://{addr}/metrics");
            let d = daemon.clone();
            Some((addr, std::thread::Builder::new().name("clonefs-metrics".into()).spawn(move || d.serve_metrics(l))?))
        }
        None => None,
    };
    log::info!("serving store {} (pid {})", store_dir.display(), std::process::id());
    crate::sys::notify_service(&format!("READY=1\nMAINPID={}", std::process::id()));
    let sig = crate::sys::wait_for_signal();
    log::info!("signal {sig}: shutting down");
    crate::sys::notify_service("STOPPING=1");
    daemon.stop.store(true, Ordering::SeqCst);
    let _ = daemon.autosnap_wake.send(false);
    let _ = autosnap.join();
    if let Some((l, t)) = http_thread {
        l.wake();
        let _ = t.join();
    }
    if let Some((addr, t)) = metrics_thread {
        // Wakes its accept so it sees `stop`.
        let _ = std::net::TcpStream::connect(addr);
        let _ = t.join();
    }
    // Database servers stop before their volumes unmount.
    let _ = db_tx.send(());
    let _ = supervisor.join();
    daemon.stop_servers();
    let _ = close_tx.send(());
    let _ = flusher.join();
    // A GC batch in progress finishes first; the rest resumes at the next start.
    let _ = daemon.gc_wake.send(false);
    let _ = gc.join();
    let result = daemon.unmount_all();
    let _ = std::fs::remove_file(server::socket_path(&store_dir));
    // Wake the accept loop so it sees `stop`.
    if let Ok(a) = crate::control::socket_addr(&store_dir) {
        let _ = std::os::unix::net::UnixStream::connect(&a.path);
    }
    daemon.store.checkpoint(true)?;
    log::info!("stopped");
    result
}

/// Requests the history records: those that change the store, its volumes or mounts.
fn changes_state(req: &Request) -> bool {
    !matches!(
        req,
        Request::Ping
            | Request::List { .. }
            | Request::Status
            | Request::Fsck
            | Request::Scrub
            | Request::ScrubProgress
            | Request::GetProperties { .. }
            | Request::History
            | Request::Metrics
            | Request::DbList
            | Request::DbVerify { .. }
            | Request::Diff { .. }
    )
}

fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>> {
    m.lock().map_err(|_| Error::Corrupt("daemon state poisoned by a panic".into()))
}

impl Handler for Daemon {
    fn handle(&self, req: Request, caller: Caller) -> Result<Value> {
        let mut request = changes_state(&req).then(|| serde_json::to_value(&req)).transpose()?;
        // A clone's password stays out of the history.
        if let Some(Value::Object(o)) = request.as_mut() {
            if o.get("password").is_some_and(|p| !p.is_null()) {
                o.insert("password".into(), Value::String("(hidden)".into()));
            }
        }
        let r = self.admit(req, caller).and_then(|req| Daemon::handle(self, req, caller.uid));
        if let Some(request) = request {
            self.record(caller.uid, request, &r);
        }
        r
    }

    fn stream(&self, req: Request, caller: Caller, input: Box<dyn std::io::Read + Send>, conn: std::os::unix::net::UnixStream) {
        Daemon::stream(self, req, caller.uid, input, conn)
    }

    fn stopping(&self) -> bool {
        Daemon::stopping(self)
    }

    /// Asks the main thread to shut down, as SIGTERM does.
    fn shutdown(&self) {
        crate::sys::raise_term();
    }
}

impl Daemon {
    /// Merges the bytes fsyncs wrote over stored blocks and a crash left unmerged (`W`
    /// records) before anything reads or snapshots a volume, and purges orphans (files
    /// unlinked while open, or whose deferred purge a stop cut short): opening a volume's
    /// head does both for it. Records of a lineage that lost its head (a rollback) are
    /// dropped.
    fn recover_heads(&self) -> Result<()> {
        let written = self.store.written(None)?;
        let vols = Catalog::list(&self.store)?;
        let mut headless = self.store.txn();
        let mut done = std::collections::BTreeSet::new();
        let mut headless_records = false;
        for (lineage, ino, index, _) in written {
            match vols.iter().find(|v| v.lineage == lineage) {
                Some(v) if done.insert(lineage) => {
                    Volume::open(self.catalog.open_view(&self.store, &v.name, None, false)?, self.budget.clone())?;
                }
                Some(_) => {}
                None => {
                    headless.cat_delete(&crate::store::CatKey::Written { lineage, ino, index })?;
                    headless_records = true;
                }
            }
        }
        if headless_records {
            headless.commit(false)?;
        }
        // Files unlinked just before a stop (their purge is deferred) go now, not at the
        // next mount, so `list` shows their space back.
        for v in &vols {
            if !done.contains(&v.lineage) && !self.store.orphans(v.lineage)?.is_empty() {
                Volume::open(self.catalog.open_view(&self.store, &v.name, None, false)?, self.budget.clone())?;
            }
        }
        Ok(())
    }

    /// Appends a state-changing request and its outcome to the history.
    fn record(&self, uid: u32, request: Value, r: &Result<Value>) {
        let e = history::Entry {
            time: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64),
            uid,
            request,
            ok: r.is_ok(),
            error: r.as_ref().err().map(|e| e.to_string()),
        };
        if let Err(err) = self.history.append(&self.store, &e) {
            log::warn!("cannot record {} in the history: {err}", e.request);
        }
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// The mounted views.
    fn lives(&self) -> Result<Vec<Arc<Live>>> {
        Ok(lock(&self.mounts)?.iter().map(|m| m.live.clone()).collect())
    }

    /// Purges the files the unlinks of `lives` queued (`Volume::purge_deferred`).
    fn purge_unlinked(&self, lives: &[Arc<Live>]) {
        for l in lives {
            let v = l.get();
            if let Err(e) = v.purge_deferred() {
                log::error!("volume {}: purging unlinked files failed: {e}", v.name());
            }
        }
    }

    fn flush_loop(&self, close: Receiver<()>) {
        let activity = || {
            let m = crate::metrics::get();
            m.read_bytes.get() + m.written_bytes.get() + m.commits.get()
        };
        let mut seen = activity();
        loop {
            match close.recv_timeout(FLUSH_TICK) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => return,
            }
            let Ok(lives) = self.lives() else { return };
            self.purge_unlinked(&lives);
            for l in lives {
                let v = l.get();
                if let Err(e) = v.flush_older_than(self.budget.max_age) {
                    log::error!("volume {}: background flush failed: {e}", v.name());
                }
                v.shed_nodes();
            }
            if let Err(e) = self.store.checkpoint_if_due(CHECKPOINT_AGE) {
                log::error!("checkpoint failed: {e}");
            }
            let now = activity();
            crate::sys::trim_malloc(if now == seen { TRIM_QUIET } else { TRIM_BUSY });
            seen = now;
        }
    }

    fn gc_loop(&self, wake: Receiver<bool>) {
        loop {
            if self.stopping() {
                return;
            }
            match gc::run(&self.store, &self.catalog) {
                Ok(0) => {}
                Ok(n) => log::info!("gc: processed {n} markers"),
                Err(e) => log::error!("gc failed: {e}"),
            }
            // Segments whose blocks are mostly gone give their space back.
            match self.store.clean_background() {
                Ok(r) if r.segments_deleted > 0 => log::info!("cleaner: moved {} bytes, deleted {} segments", r.moved_bytes, r.segments_deleted),
                Ok(_) => {}
                Err(e) => log::error!("cleaner failed: {e}"),
            }
            match wake.recv_timeout(GC_TICK) {
                Ok(true) | Err(RecvTimeoutError::Timeout) => {}
                Ok(false) | Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Supervises database servers every `db::TICK` until told to stop.
    fn db_loop(&self, stop: Receiver<()>) {
        loop {
            match stop.recv_timeout(db::TICK) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => return,
            }
            if self.stopping() {
                return;
            }
            if let Err(e) = self.db_tick() {
                log::error!("db supervision: {e}");
            }
        }
    }

    /// Takes and prunes automatic snapshots (`volume::autosnap`) every `AUTOSNAP_TICK`.
    fn autosnap_loop(&self, wake: Receiver<bool>) {
        let mut reported = std::collections::HashSet::new();
        loop {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
            if let Err(e) = self.autosnap_tick(now, &mut reported) {
                log::error!("automatic snapshots: {e}");
            }
            match wake.recv_timeout(AUTOSNAP_TICK) {
                Ok(true) | Err(RecvTimeoutError::Timeout) => {}
                Ok(false) | Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// One round over the volumes with a `snapshot.policy`. Snapshots are taken and
    /// destroyed through `Handler::handle`, so the history records them (as the daemon's
    /// uid). `reported`: kept snapshots already logged, so each is said once.
    fn autosnap_tick(&self, now: i64, reported: &mut std::collections::HashSet<String>) -> Result<()> {
        let vols = Catalog::list(&self.store)?;
        for v in &vols {
            let Some(text) = &v.snapshot_policy else { continue };
            let policy = autosnap::Policy::parse(text)?;
            let existing: Vec<autosnap::Existing> = Catalog::snapshots(&self.store, v.id)?
                .into_iter()
                .map(|s| {
                    let full = format!("{}@{}", v.name, s.name);
                    let keep = if !s.holds.is_empty() {
                        Some(format!("held ({})", s.holds.iter().cloned().collect::<Vec<_>>().join(", ")))
                    } else if Origins::is_origin(&vols, (s.lineage, s.epoch), &full) {
                        Some("the origin of a clone".to_string())
                    } else {
                        None
                    };
                    autosnap::Existing { name: s.name, keep }
                })
                .collect();
            let plan = autosnap::plan(&policy, now, &existing);
            let me = Caller { uid: crate::sys::geteuid(), gid: crate::sys::getegid() };
            for n in plan.take {
                let name = format!("{}@{n}", v.name);
                match Handler::handle(self, Request::Snapshot { name: name.clone() }, me) {
                    Ok(_) => log::info!("automatic snapshot {name}"),
                    Err(e) => log::error!("automatic snapshot {name}: {e}"),
                }
            }
            for n in plan.prune {
                let name = format!("{}@{n}", v.name);
                match Handler::handle(self, Request::Destroy { name: name.clone() }, me) {
                    Ok(_) => log::info!("pruned {name} (snapshot.policy {text})"),
                    Err(e) => log::error!("pruning {name}: {e}"),
                }
            }
            for (n, why) in plan.kept {
                let name = format!("{}@{n}", v.name);
                if reported.insert(name.clone()) {
                    log::warn!("{name} is past its snapshot.policy count but kept: {why}");
                }
            }
        }
        Ok(())
    }

    fn wake_gc(&self) {
        let _ = self.gc_wake.try_send(true);
    }

    /// `by`: the caller's uid, which a mount remembers (a member of the group unmounts only
    /// its own mounts, `access.rs`).
    pub fn handle(&self, req: Request, by: u32) -> Result<Value> {
        let creator = access::creator(by);
        if self.stopping() {
            return Err(Error::NoDaemon("the daemon is shutting down".into()));
        }
        self.reap();
        if !matches!(req, Request::Ping | Request::Metrics | Request::ScrubProgress) {
            // Space figures, fsck and every state change see files unlinked so far as gone.
            if let Ok(lives) = self.lives() {
                self.purge_unlinked(&lives);
            }
        }
        match req {
            Request::Ping => Ok(json!({"pid": std::process::id()})),
            Request::Create { name, block_size, uid, gid } => {
                let v = self.catalog.create(&self.store, &name, block_size, uid, gid, creator)?;
                Ok(json!({"name": v.name, "block_size": v.block_size}))
            }
            Request::List { names } => Ok(serde_json::to_value(self.list(&names)?)?),
            Request::Mount { name, dir, read_only, writeback, fast_open, restrict } => self.mount(&name, &dir, read_only, writeback, fast_open, restrict, by),
            Request::Unmount { dir } => self.unmount(&dir),
            Request::Remount { dir, read_only } => self.remount(&dir, read_only),
            Request::Destroy { name } => self.destroy(&name),
            Request::Flatten { name } => self.flatten(&name),
            Request::Rename { old, new } => {
                let rec = Catalog::get(&self.store, &old)?;
                // Check and act under the mount table lock, so no mount slips in between.
                let mounts = lock(&self.mounts)?;
                if let Some(m) = mounts.iter().find(|m| m.volume == rec.id) {
                    return Err(Error::Conflict(format!("volume {old:?} is mounted at {}; unmount it first", m.dir.display())));
                }
                self.catalog.rename(&self.store, &old, &new)?;
                Ok(Value::Null)
            }
            Request::Snapshot { name } => self.snapshot(&name, creator),
            Request::Clone { source, name, uid_map, gid_map, owner } => self.clone_volume(&source, &name, &uid_map, &gid_map, owner, creator),
            Request::Rollback { name } => self.rollback(&name),
            Request::Diff { from, to } => self.diff(&from, to.as_deref()),
            Request::Restore { snapshot, paths, to, force } => self.restore(&snapshot, &paths, to.as_deref(), force),
            Request::SetProperty { name, property, value } => {
                self.catalog.set_property(&self.store, &name, &property, &value)?;
                if property == "snapshot.policy" {
                    // A new schedule takes its first snapshots now, not at the next tick.
                    let _ = self.autosnap_wake.try_send(true);
                }
                Ok(Value::Null)
            }
            Request::History => Ok(serde_json::to_value(history::list(&self.store)?)?),
            Request::Metrics => Ok(json!({"text": self.metrics()?})),
            Request::GetProperties { name } if name.contains('@') => {
                let (vol, snap) = crate::volume::parse_target(&name)?;
                let v = Catalog::get(&self.store, &vol)?;
                let s = Catalog::snapshot(&self.store, &v, snap.as_deref().unwrap_or_default())?;
                let props = Catalog::snapshot_properties(&v, &s);
                Ok(Value::Object(props.into_iter().map(|(k, v)| (k, Value::String(v))).collect()))
            }
            Request::GetProperties { name } => {
                let recv = self.receive_properties(&name)?;
                let mut props = match Catalog::get(&self.store, &name) {
                    Ok(v) => Catalog::properties(&v, Origins::load(&self.store)?.name(&v)),
                    // A volume still being received has only its resume token.
                    Err(Error::NotFound(_)) if !recv.is_empty() => Vec::new(),
                    Err(e) => return Err(e),
                };
                props.extend(recv);
                Ok(Value::Object(props.into_iter().map(|(k, v)| (k, Value::String(v))).collect()))
            }
            Request::ReceiveAbort { name } => {
                self.catalog.receive_abort(&self.store, &name)?;
                self.wake_gc();
                Ok(Value::Null)
            }
            Request::DbInit { name, engine, import, block_size } => self.db_init(&name, &engine, import.as_deref(), block_size, creator),
            Request::DbStart { name, port } => self.db_start(&name, port),
            Request::DbStop { name } => self.db_stop(&name),
            Request::DbClone { source, name, port, user, password, idle, protect, quota, listen } => {
                self.db_clone(&source, &name, port, user, password, idle.as_deref(), protect, quota.as_deref(), listen, creator)
            }
            Request::DbList => self.db_list(),
            Request::DbReset { name, to } => self.db_reset(&name, to.as_deref()),
            Request::DbDestroy { name } => self.db_destroy(&name),
            Request::DbVerify { names } => self.db_verify(&names),
            Request::Send { .. } | Request::Receive { .. } => {
                Err(Error::Invalid("send and receive stream over the control socket (use the clonefs CLI)".into()))
            }
            Request::Hold { name, tag, on } => {
                let (vol, snap) = parse_target(&name)?;
                let snap = snap.ok_or_else(|| Error::Invalid(format!("{name:?} is not a snapshot (VOL@SNAP)")))?;
                self.catalog.hold(&self.store, &vol, &snap, &tag, on)?;
                Ok(Value::Null)
            }
            Request::Status => Ok(serde_json::to_value(self.status()?)?),
            Request::Fsck => {
                self.flush_mounted_unless_full()?;
                gc::run(&self.store, &self.catalog)?;
                Ok(serde_json::to_value(fsck::check(&self.store)?)?)
            }
            Request::Gc => {
                let n = gc::run(&self.store, &self.catalog)?;
                Ok(json!({"processed": n}))
            }
            Request::Scrub => {
                if self.scrub.running.swap(true, Ordering::SeqCst) {
                    return Err(Error::Conflict("a scrub is already running".into()));
                }
                let r = scrub::run(&self.store, &self.catalog, &self.scrub.progress);
                self.scrub.running.store(false, Ordering::SeqCst);
                Ok(serde_json::to_value(r?)?)
            }
            Request::ScrubProgress => Ok(json!({
                "done": self.scrub.progress.done.load(Ordering::Relaxed),
                "total": self.scrub.progress.total.load(Ordering::Relaxed),
                "running": self.scrub.running.load(Ordering::Relaxed),
            })),
            Request::Compact => {
                self.flush_mounted_unless_full()?;
                gc::run(&self.store, &self.catalog)?;
                let r = self.store.compact()?;
                Ok(json!({"disk_bytes": self.store.disk_bytes(), "moved_bytes": r.moved_bytes, "segments_deleted": r.segments_deleted}))
            }
            Request::Defrag { name } => self.defrag(&name),
            Request::Shutdown => Ok(Value::Null),
        }
    }

    /// The mounted head of volume `id`, if any. With the writeback cache, the pages the kernel
    /// holds for it are written back first, so the caller's cut holds every write that
    /// returned before it was asked for.
    fn head_of(&self, id: u64) -> Result<Option<Arc<Live>>> {
        let head = lock(&self.mounts)?
            .iter()
            .find(|m| m.volume == id && m.snapshot.is_none())
            .map(|m| (m.live.clone(), m.writeback.then(|| m.dir.clone())));
        let Some((live, writeback)) = head else { return Ok(None) };
        if let Some(dir) = writeback {
            crate::sys::syncfs(&dir)?;
        }
        Ok(Some(live))
    }

    /// `creator`: the member of the daemon's group taking it, or None.
    fn snapshot(&self, name: &str, creator: Option<u32>) -> Result<Value> {
        let (vol, snap) = parse_target(name)?;
        let snap = snap.ok_or_else(|| Error::Invalid(format!("{name:?}: a snapshot is named VOL@SNAP")))?;
        let v = Catalog::get(&self.store, &vol)?;
        let started = Instant::now();
        match self.head_of(v.id)? {
            Some(live) => live.exclusive(|vol_ref| {
                // Unsynced: the catalog's synced commit below makes the log durable up to it.
                // The view writes at the new head epoch from then on (it reads the catalog's).
                vol_ref.flush_older_than(Duration::ZERO)?;
                self.catalog.snapshot_create(&self.store, &vol, &snap, creator)?;
                Ok(())
            })?,
            None => {
                self.catalog.snapshot_create(&self.store, &vol, &snap, creator)?;
            }
        }
        Ok(json!({"snapshot": name, "micros": started.elapsed().as_micros() as u64}))
    }

    fn clone_volume(&self, source: &str, name: &str, uid_map: &[String], gid_map: &[String], owner: Option<(u32, u32)>, creator: Option<u32>) -> Result<Value> {
        let (vol, snap) = parse_target(source)?;
        let v = Catalog::get(&self.store, &vol)?;
        let started = Instant::now();
        let mut layer = idmap::Layer {
            uid: uid_map.iter().map(|r| idmap::Range::parse(r)).collect::<Result<_>>()?,
            gid: gid_map.iter().map(|r| idmap::Range::parse(r)).collect::<Result<_>>()?,
        };
        if let Some((uid, gid)) = owner {
            // Whoever owns the origin's root, as the origin shows it, becomes the new owner.
            let view = self.catalog.open_view(&self.store, &vol, snap.as_deref(), true)?;
            let root = view.inode(crate::volume::ROOT_INO)?.ok_or_else(|| Error::Corrupt(format!("{source} has no root directory")))?;
            let (from_uid, from_gid) = (v.idmap.show_uid(root.uid), v.idmap.show_gid(root.gid));
            if from_uid != uid {
                layer.uid.push(idmap::Range { from: from_uid, to: uid, count: 1 });
            }
            if from_gid != gid {
                layer.gid.push(idmap::Range { from: from_gid, to: gid, count: 1 });
            }
        }
        layer.check()?;
        let head = if snap.is_none() { self.head_of(v.id)? } else { None };
        match head {
            Some(live) => live.exclusive(|vol_ref| {
                vol_ref.flush_older_than(Duration::ZERO)?;
                self.catalog.clone_volume(&self.store, source, name, layer.clone(), creator)?;
                Ok(())
            })?,
            None => {
                self.catalog.clone_volume(&self.store, source, name, layer, creator)?;
            }
        }
        Ok(json!({"clone": name, "origin": source, "micros": started.elapsed().as_micros() as u64}))
    }

    fn diff(&self, from: &str, to: Option<&str>) -> Result<Value> {
        let (va, sa) = parse_target(from)?;
        let sa = sa.ok_or_else(|| Error::Invalid(format!("{from:?}: diff starts from a snapshot, VOL@SNAP")))?;
        let (vb, sb) = match to {
            Some(to) => parse_target(to)?,
            None => (va.clone(), None),
        };
        let to = to.unwrap_or(&va);
        // Its snapshots, or the head it reads, are claimed (`Sending`): not destroyed, rolled
        // back nor flattened from under it.
        let (a, b, _claim) = {
            let mut table = self.sending.lock()?;
            let a = self.catalog.open_view(&self.store, &va, Some(&sa), true)?.chain();
            let b = self.catalog.open_view(&self.store, &vb, sb.as_deref(), true)?.chain();
            let mut ids = vec![Claimed::Snapshot(Catalog::snapshot(&self.store, &Catalog::get(&self.store, &va)?, &sa)?.id())];
            ids.push(Claimed::of(&self.store, &Catalog::get(&self.store, &vb)?, sb.as_deref())?);
            let claim = self.claim_reads(&mut table, &format!("diff {from}"), &[&a, &b], ids)?;
            (a, b, claim)
        };
        // Across volumes the two views share inode numbers only when one descends from the
        // other: a clone numbers its new inodes past every number of its origin at the clone,
        // but two clones of one snapshot (or a clone and its origin's later files) may hand
        // out the same number to different files.
        if va != vb && !diff::descends(&a, &b) && !diff::descends(&b, &a) {
            return Err(Error::Invalid(format!(
                "{from} and {to} are not of one volume, and neither is cloned from the other (diff compares a clone with its origin's snapshot, not two clones)"
            )));
        }
        if sb.is_none() {
            // The live volume as its writers see it: what they wrote is flushed first.
            if let Some(live) = self.head_of(Catalog::get(&self.store, &vb)?.id)? {
                live.get().flush_older_than(Duration::ZERO)?;
            }
        }
        Ok(serde_json::to_value(diff::diff(&self.store, a, b)?)?)
    }

    fn defrag(&self, name: &str) -> Result<Value> {
        let (vol, snap) = parse_target(name)?;
        let v = Catalog::get(&self.store, &vol)?;
        if snap.is_none() {
            // What its writers wrote is stored first, and laid in order with the rest.
            if let Some(live) = self.head_of(v.id)? {
                live.get().flush_older_than(Duration::ZERO)?;
            }
        }
        // Claimed as a diff's view is: not destroyed, rolled back nor flattened under it.
        let (view, _claim) = {
            let mut table = self.sending.lock()?;
            let view = self.catalog.open_view(&self.store, &vol, snap.as_deref(), true)?;
            let id = Claimed::of(&self.store, &v, snap.as_deref())?;
            let chain = view.chain();
            let claim = self.claim_reads(&mut table, &format!("defrag {name}"), &[&chain], vec![id])?;
            (view, claim)
        };
        let started = Instant::now();
        let r = crate::volume::defrag::run(&self.store, &view, v.block_size as u64)?;
        let mut out = serde_json::to_value(r)?;
        out["micros"] = json!(started.elapsed().as_micros() as u64);
        Ok(out)
    }

    fn restore(&self, snapshot: &str, paths: &[String], to: Option<&str>, force: bool) -> Result<Value> {
        use crate::fs::restore::{self, Restored};
        let (vol, snap) = parse_target(snapshot)?;
        let snap = snap.ok_or_else(|| Error::Invalid(format!("{snapshot:?}: restore takes a snapshot, VOL@SNAP")))?;
        if paths.is_empty() {
            return Err(Error::Invalid("name at least one path to restore".into()));
        }
        let _no_flatten = lock(&self.restoring)?;
        let v = Catalog::get(&self.store, &vol)?;
        // The snapshot is claimed (`Sending`): not destroyed while its files are copied.
        let (src, _claim) = {
            let mut table = self.sending.lock()?;
            let view = self.catalog.open_view(&self.store, &vol, Some(&snap), true)?;
            let id = Catalog::snapshot(&self.store, &v, &snap)?.id();
            let claim = self.claim_reads(&mut table, &format!("restore {snapshot}"), &[], vec![Claimed::Snapshot(id)])?;
            (Volume::open(view, self.budget.clone())?, claim)
        };
        let base = |p: &str| p.trim_end_matches('/').rsplit('/').next().unwrap_or("").to_string();
        let targets: Vec<(String, String)> = match to {
            None => paths.iter().map(|p| (p.clone(), p.clone())).collect(),
            Some(d) if paths.len() == 1 => vec![(paths[0].clone(), d.to_string())],
            Some(d) => paths.iter().map(|p| (p.clone(), format!("{}/{}", d.trim_end_matches('/'), base(p)))).collect(),
        };
        let explain = |e: crate::fs::FsError, s: &str, d: &str| -> Error {
            match e.errno() {
                libc::EEXIST => Error::Conflict(format!("{d} exists in {vol}; --force replaces it")),
                libc::ENOENT => Error::NotFound(format!("{s} is not in {snapshot}, or the directory of {d} is not in {vol}")),
                libc::EINVAL => Error::Invalid(format!("cannot restore {s} to {d}: give paths inside the volume")),
                _ => Error::from(e),
            }
        };
        let run = |dst: &Volume| -> Result<Restored> {
            // Every target is checked first: a refused restore changes nothing.
            for (s, d) in &targets {
                restore::check(&src, dst, s.as_bytes(), d.as_bytes(), force).map_err(|e| explain(e, s, d))?;
            }
            let mut all = Restored::default();
            for (s, d) in &targets {
                let r = restore::restore(&src, dst, s.as_bytes(), d.as_bytes(), force).map_err(|e| explain(e, s, d))?;
                all.files += r.files;
                all.dirs += r.dirs;
                all.bytes += r.bytes;
                all.names.extend(r.names);
            }
            Ok(all)
        };
        let started = Instant::now();
        let r = match self.head_of(v.id)? {
            Some(live) => {
                let dst = live.get().clone();
                let r = run(&dst)?;
                // The kernel may hold the old entries: it looks them up again.
                live.invalidate(&r.names, &[]);
                r
            }
            None => {
                // Held across the restore (metadata only, short): no mount of the volume may
                // start on the head while a second view of it writes.
                let mounts = lock(&self.mounts)?;
                if mounts.iter().any(|m| m.volume == v.id && m.snapshot.is_none()) {
                    return Err(Error::Conflict(format!("{vol} was mounted meanwhile; run restore again")));
                }
                let dst = Volume::open(self.catalog.open_view(&self.store, &vol, None, false)?, self.budget.clone())?;
                let r = run(&dst)?;
                dst.flush_all()?;
                drop(mounts);
                r
            }
        };
        self.store.sync()?;
        Ok(json!({"files": r.files, "dirs": r.dirs, "bytes": r.bytes, "micros": started.elapsed().as_micros() as u64}))
    }

    fn destroy(&self, name: &str) -> Result<Value> {
        let (vol, snap) = parse_target(name)?;
        let v = Catalog::get(&self.store, &vol)?;
        {
            // Check and act under the mount table lock: a mount in between would serve a
            // lineage GC then removes. The catalog change is one synced batch.
            let mounts = lock(&self.mounts)?;
            let busy = mounts.iter().find(|m| m.volume == v.id && (snap.is_none() || m.snapshot == snap));
            if let Some(m) = busy {
                return Err(Error::Conflict(format!("{} is mounted at {}; unmount it first", m.target, m.dir.display())));
            }
            let sending = self.sending.lock()?;
            let snaps = Catalog::snapshots(&self.store, v.id)?;
            if snap.is_none() && sending.contains_key(&Claimed::Head(v.id)) {
                return Err(Error::Conflict(format!("{vol} is being read (a diff or defrag of its live files); destroy it when that has ended")));
            }
            if let Some(s) = snaps.iter().find(|s| snap.as_ref().is_none_or(|n| *n == s.name) && sending.contains_key(&Claimed::Snapshot(s.id()))) {
                return Err(Error::Conflict(format!("snapshot {vol}@{} is being read (a send, diff, restore or defrag); destroy it when that has ended", s.name)));
            }
            match &snap {
                // A mounted head sees the pin go through its lineage state; its batches in
                // flight finish first (`volume::lineage`).
                Some(s) => drop(self.catalog.destroy_snapshot(&self.store, &vol, s)?),
                None => self.catalog.destroy(&self.store, &vol)?,
            }
            if let Some(s) = &snap {
                for m in mounts.iter().filter(|m| m.volume == v.id) {
                    if let Some(sd) = &m.snaps {
                        sd.forget(s);
                    }
                }
            }
        }
        self.wake_gc();
        Ok(Value::Null)
    }

    /// Flattens volume `name` (`volume::flatten`), then runs GC: what was written, and the
    /// bytes GC gave back.
    fn flatten(&self, name: &str) -> Result<Value> {
        crate::volume::check_name(name)?;
        let v = Catalog::get(&self.store, name)?;
        if Catalog::lineage(&self.store, v.lineage)?.parent.is_none() {
            return Err(crate::volume::flatten::nothing(name));
        }
        let reads_through = |lineage: u64| -> Result<bool> {
            Ok(lineage == v.lineage || Catalog::parents(&self.store, lineage)?.iter().any(|(l, _)| *l == v.lineage))
        };
        let _no_restore = lock(&self.restoring)?;
        // The mounted views that read the lineage (its head, snapshots in it, clones of
        // them): they stay, and each batch and the parting run while none of their
        // operations does.
        let mut held_mounts: Vec<Arc<Live>> = Vec::new();
        let _claim = {
            // Checked and claimed under the locks that mounts, sends and receives register
            // under, so none that reads through the lineage starts unseen.
            let mounts = lock(&self.mounts)?;
            let sending = self.sending.lock()?;
            let mut flattening = lock(&self.flattening)?;
            if flattening.contains_key(&v.lineage) {
                return Err(Error::Conflict(format!("{name} is being flattened already")));
            }
            for m in mounts.iter() {
                let mv = Catalog::by_id(&self.store, m.volume)?;
                let lineage = match &m.snapshot {
                    Some(s) => Catalog::snapshot(&self.store, &mv, s)?.lineage,
                    None => mv.lineage,
                };
                if reads_through(lineage)? {
                    held_mounts.push(m.live.clone());
                }
            }
            for x in Catalog::list(&self.store)? {
                if let Some(r) = &x.receiving {
                    if reads_through(x.lineage)? {
                        return Err(Error::Conflict(format!("a receive into {} reads through {name}; let it finish or `receive {} --abort` it", r.target, r.target)));
                    }
                    continue;
                }
                if sending.contains_key(&Claimed::Head(x.id)) && reads_through(x.lineage)? {
                    return Err(Error::Conflict(format!("a diff or defrag of {}'s live files reads through {name}; flatten it when that has ended", x.name)));
                }
                for s in Catalog::snapshots(&self.store, x.id)? {
                    if sending.contains_key(&Claimed::Snapshot(s.id())) && reads_through(s.lineage)? {
                        return Err(Error::Conflict(format!("a send, diff, restore or defrag of {}@{} reads through {name}; flatten it when that has ended", x.name, s.name)));
                    }
                }
            }
            flattening.insert(v.lineage, name.to_string());
            Flattening { table: &self.flattening, lineage: v.lineage }
        };
        fn hold_all(lives: &[Arc<Live>], f: &mut dyn FnMut() -> Result<()>) -> Result<()> {
            match lives.split_first() {
                None => f(),
                // Each batch is about 2 ms of the mounts' operations waiting (a commit is
                // disk I/O under the mount lock, as a snapshot's cut).
                Some((l, rest)) => l.exclusive(|_| hold_all(rest, f)),
            }
        }
        let hold = |f: &mut dyn FnMut() -> Result<()>| hold_all(&held_mounts, f);
        let versions = crate::volume::flatten::run(&self.store, &self.catalog, name, &hold)?;
        let before = self.store.space()?.physical;
        gc::run(&self.store, &self.catalog)?;
        let freed = before.saturating_sub(self.store.space()?.physical);
        Ok(json!({"versions": versions, "freed": freed}))
    }

    /// Refuses `what` if a view of `lineage` with ancestors `parents` would read through a
    /// lineage being flattened. The caller holds the lock it registers its view under (the
    /// mount table, the send table), which a flatten takes before it claims a lineage.
    fn through_flattening(&self, what: &str, lineage: u64, parents: &[(u64, u64)]) -> Result<()> {
        let f = lock(&self.flattening)?;
        if let Some(name) = f.get(&lineage) {
            return Err(Error::Conflict(format!("{what}: {name} is being flattened; try again when flatten has ended")));
        }
        match parents.iter().find_map(|(l, _)| f.get(l)) {
            Some(name) => Err(Error::Conflict(format!("{what} reads through {name}, which is being flattened; try again when flatten has ended"))),
            None => Ok(()),
        }
    }

    fn rollback(&self, name: &str) -> Result<Value> {
        let (vol, snap) = parse_target(name)?;
        let snap = snap.ok_or_else(|| Error::Invalid(format!("{name:?}: roll back to a snapshot, VOL@SNAP")))?;
        let v = Catalog::get(&self.store, &vol)?;
        let head = self.head_of(v.id)?;
        // Checked and done under the claim table's lock (taken after the mount table's, as
        // everywhere), so no diff of the head starts between; the rollback's catalog change
        // is one synced batch: brief.
        let sending = self.sending.lock()?;
        if sending.contains_key(&Claimed::Head(v.id)) {
            return Err(Error::Conflict(format!("{vol} is being read (a diff or defrag of its live files); roll it back when that has ended")));
        }
        match head {
            Some(live) => {
                let (names, inos) = live.replace(|vol_ref| {
                    let names = vol_ref.cached_names();
                    let inos = vol_ref.cached_inos();
                    self.catalog.rollback(&self.store, &vol, &snap)?;
                    vol_ref.discard_dirty();
                    let view = self.catalog.open_view(&self.store, &vol, None, vol_ref.read_only)?;
                    *vol_ref = Arc::new(Volume::open(view, self.budget.clone())?.with_kernel_opens(vol_ref.kernel_opens));
                    Ok((names, inos))
                })?;
                live.invalidate(&names, &inos);
            }
            None => {
                self.catalog.rollback(&self.store, &vol, &snap)?;
            }
        }
        drop(sending);
        self.wake_gc();
        Ok(Value::Null)
    }

    /// Flushes mounted volumes before a store-wide job (fsck, compact). On a full disk the
    /// unflushed data stays in memory and the job goes on: it is what gives space back.
    fn flush_mounted_unless_full(&self) -> Result<()> {
        match self.flush_mounted() {
            Err(Error::NoSpace(m)) => {
                log::warn!("unflushed data stays in memory while the disk is full: {m}");
                Ok(())
            }
            r => r,
        }
    }

    fn flush_mounted(&self) -> Result<()> {
        let lives: Vec<(Arc<Live>, Option<PathBuf>)> =
            lock(&self.mounts)?.iter().map(|m| (m.live.clone(), m.writeback.then(|| m.dir.clone()))).collect();
        for (l, writeback) in lives {
            if let Some(dir) = writeback {
                crate::sys::syncfs(&dir)?;
            }
            l.get().flush_all()?;
        }
        Ok(())
    }

    /// Forgets mounts the user unmounted behind our back (`umount DIR`).
    fn reap(&self) {
        let mut reaped = false;
        if let Ok(mut m) = self.mounts.lock() {
            m.retain(|x| match &x.session {
                Some(s) if s.guard.is_finished() => {
                    log::info!("{} was unmounted", x.dir.display());
                    reaped = true;
                    false
                }
                _ => true,
            });
        }
        if reaped {
            self.save_wanted();
        }
    }

    /// Every volume and snapshot, or those `names` gives (`VOL` with its snapshots, or
    /// `VOL@SNAP`); a name that does not exist is an error.
    fn list(&self, names: &[String]) -> Result<Vec<VolumeInfo>> {
        // (volume id, snapshot) of each name; a volume's own entry (None) takes its snapshots too.
        let mut only: Vec<(u64, Option<String>)> = Vec::new();
        for name in names {
            let (vol, snap) = parse_target(name)?;
            let v = Catalog::get(&self.store, &vol)?;
            if let Some(s) = &snap {
                Catalog::snapshot(&self.store, &v, s)?;
            }
            only.push((v.id, snap));
        }
        let shown = |id: u64, snap: Option<&str>| {
            only.is_empty() || only.iter().any(|(v, s)| *v == id && (s.is_none() || s.as_deref() == snap))
        };
        // (volume, snapshot, mountpoint, read-only) of every mount, taken before the catalog
        // lock: snapshot and clone take the mount table first.
        let mounts: Vec<(u64, Option<String>, PathBuf, bool)> = lock(&self.mounts)?
            .iter()
            .map(|m| (m.volume, m.snapshot.clone(), m.dir.clone(), m.read_only()))
            .collect();
        let mut out = Vec::new();
        let origins = Origins::load(&self.store)?;
        for listed in Catalog::list(&self.store)?.into_iter().filter(|v| v.receiving.is_none()) {
            if !only.is_empty() && !only.iter().any(|(id, _)| *id == listed.id) {
                continue;
            }
            // The catalog stays as it is while one volume's UNIQUE is worked out, and no
            // longer: a snapshot waiting for the lock holds its volume's writers back.
            let _g = self.catalog.guard()?;
            let space = self.store.space()?;
            // Read again under the lock (destroyed or rolled back since the listing).
            let Ok(v) = Catalog::by_id(&self.store, listed.id) else { continue };
            let snaps = Catalog::snapshots(&self.store, v.id)?;
            if shown(v.id, None) {
                let mut removals: Vec<(u64, u64)> = snaps.iter().map(|s| (s.lineage, s.epoch)).collect();
                removals.push((v.lineage, HEAD_GONE));
                let unique = gc::freed_by(&self.store, &removals)?;
                let vs = space.views.get(&v.lineage).copied().unwrap_or_default();
                let m = mounts.iter().find(|m| m.0 == v.id && m.1.is_none());
                out.push(VolumeInfo {
                    name: v.name.clone(),
                    kind: "volume".into(),
                    origin: origins.name(&v),
                    holds: Vec::new(),
                    logical: vs.logical,
                    referenced: vs.referenced,
                    unique,
                    block_size: v.block_size,
                    created: v.created,
                    mountpoint: m.map(|m| m.2.clone()),
                    read_only: m.map(|m| m.3).unwrap_or(false),
                    snapshot_policy: v.snapshot_policy.clone(),
                    creator: v.creator,
                });
            }
            for sn in snaps.into_iter().filter(|s| shown(v.id, Some(&s.name))) {
                let m = mounts.iter().find(|m| m.0 == v.id && m.1.as_deref() == Some(sn.name.as_str()));
                let unique = gc::freed_by(&self.store, &[(sn.lineage, sn.epoch)])?;
                out.push(VolumeInfo {
                    name: format!("{}@{}", v.name, sn.name),
                    kind: "snapshot".into(),
                    origin: None,
                    holds: sn.holds.iter().cloned().collect(),
                    logical: sn.space.logical,
                    referenced: sn.space.referenced,
                    unique,
                    block_size: v.block_size,
                    created: sn.created,
                    mountpoint: m.map(|m| m.2.clone()),
                    read_only: true,
                    snapshot_policy: None,
                    creator: sn.creator,
                });
            }
        }
        Ok(out)
    }

    /// Serves GET /metrics, one connection at a time, until the daemon stops.
    fn serve_metrics(&self, l: std::net::TcpListener) {
        for conn in l.incoming() {
            if self.stopping() {
                return;
            }
            let Ok(mut c) = conn else { continue };
            if let Err(e) = self.answer_metrics(&mut c) {
                log::debug!("metrics request: {e}");
            }
        }
    }

    fn answer_metrics(&self, c: &mut std::net::TcpStream) -> Result<()> {
        use crate::control::http::{read_request, respond, Refused};
        c.set_read_timeout(Some(Duration::from_secs(5)))?;
        c.set_write_timeout(Some(Duration::from_secs(5)))?;
        let text = "text/plain; charset=utf-8";
        match read_request(c) {
            Err(Refused(status, msg)) => respond(c, status, text, "", msg.as_bytes()),
            Ok(r) if r.method != "GET" => respond(c, 405, text, "", b"GET /metrics\n"),
            Ok(r) if r.path.split('?').next() != Some("/metrics") => respond(c, 404, text, "", b"only /metrics is served here\n"),
            Ok(_) => match self.metrics() {
                Ok(t) => respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", "", t.as_bytes()),
                Err(e) => respond(c, 500, text, "", format!("{e}\n").as_bytes()),
            },
        }
        Ok(())
    }

    /// The metrics, with the figures the store and catalog keep read now.
    pub fn metrics(&self) -> Result<String> {
        let m = crate::metrics::get();
        self.store.fill_metrics(m)?;
        m.gc_pending.set(crate::metrics::gauge(Catalog::pending_gc(&self.store)?));
        m.resident_bytes.set(crate::metrics::gauge(resident_bytes()));
        let space = self.store.space()?;
        m.volume_logical.clear();
        m.volume_referenced.clear();
        for v in Catalog::list(&self.store)? {
            let vs = space.views.get(&v.lineage).copied().unwrap_or_default();
            let l = crate::metrics::Vol { volume: v.name.clone() };
            m.volume_logical.get_or_create(&l).set(crate::metrics::gauge(vs.logical));
            m.volume_referenced.get_or_create(&l).set(crate::metrics::gauge(vs.referenced));
        }
        Ok(m.render())
    }

    fn status(&self) -> Result<StatusInfo> {
        let space = self.store.space()?;
        let (reserve, available) = self.store.reserve()?;
        let vols = Catalog::list(&self.store)?;
        let logical: u64 = space.lineages.values().map(|s| s.logical).sum();
        let mounts = lock(&self.mounts)?
            .iter()
            .map(|m| MountInfo {
                volume: m.target.clone(),
                mountpoint: m.dir.clone(),
                read_only: m.read_only(),
                writeback: m.writeback,
                fast_open: m.live.get().kernel_opens,
            })
            .collect();
        let (segments, segment_bytes, segment_live_bytes) = self.store.segment_figures()?;
        Ok(StatusInfo {
            store: self.store.dir().to_path_buf(),
            format_version: FORMAT_VERSION,
            pid: std::process::id(),
            volumes: vols.len(),
            physical: space.physical,
            blocks: space.blocks,
            logical,
            dedup_ratio: if space.physical == 0 { 1.0 } else { logical as f64 / space.physical as f64 },
            disk_bytes: self.store.disk_bytes(),
            dirty_bytes: self.budget.bytes.load(Ordering::Relaxed),
            reserve,
            available,
            memory_budget: self.mem.total,
            read_errors: self.store.read_errors(),
            resident: resident_bytes(),
            pending_gc: Catalog::pending_gc(&self.store)?,
            segments,
            segment_bytes,
            segment_live_bytes,
            mounts,
        })
    }

}
