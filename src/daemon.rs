//! The daemon: one open store, the mount table, the flusher thread, the control socket and
//! an orderly shutdown on SIGTERM/SIGINT (flush everything, unmount everything, exit).

use crate::control::{server, MountInfo, Request, StatusInfo, VolumeInfo};
use crate::error::{Error, Result};
use crate::fs::fuse::FuseFs;
use crate::fs::{DirtyBudget, Volume};
use crate::store::{Store, FORMAT_VERSION};
use crate::volume::{fsck, Catalog};
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError};
use fuser::{BackgroundSession, Config, MountOption, Session, SessionACL};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// FUSE worker threads per mount: enough that an fsync does not stall readers.
const FUSE_THREADS: usize = 4;
const FLUSH_TICK: Duration = Duration::from_millis(500);

struct Mounted {
    vol: Arc<Volume>,
    dir: PathBuf,
    session: Option<BackgroundSession>,
}

pub struct Daemon {
    store: Arc<Store>,
    catalog: Catalog,
    budget: Arc<DirtyBudget>,
    mounts: Mutex<Vec<Mounted>>,
    stop: AtomicBool,
}

/// Serves `store_dir` until a signal or a shutdown request.
pub fn run(store_dir: &Path) -> Result<()> {
    crate::sys::block_shutdown_signals()?;
    let store_dir = store_dir.canonicalize().map_err(|_| {
        Error::NotFound(format!("no clonefs store at {} (create one with `clonefs init`)", store_dir.display()))
    })?;
    let store = Arc::new(Store::open(&store_dir)?);
    Catalog::resume_destroys(&store)?;
    let listener = server::bind(&store_dir)?;
    let daemon = Arc::new(Daemon {
        store,
        catalog: Catalog::default(),
        budget: Arc::new(DirtyBudget::default()),
        mounts: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
    });
    let (close_tx, close_rx) = bounded::<()>(1);
    let flusher = {
        let d = daemon.clone();
        std::thread::Builder::new().name("clonefs-flush".into()).spawn(move || d.flush_loop(close_rx))?
    };
    {
        let d = daemon.clone();
        std::thread::Builder::new().name("clonefs-control".into()).spawn(move || server::serve(listener, d))?;
    }
    log::info!("serving store {} (pid {})", store_dir.display(), std::process::id());
    let sig = crate::sys::wait_for_signal();
    log::info!("signal {sig}: shutting down");
    daemon.stop.store(true, Ordering::SeqCst);
    let _ = close_tx.send(());
    let _ = flusher.join();
    let result = daemon.unmount_all();
    let _ = std::fs::remove_file(server::socket_path(&store_dir));
    // Wake the accept loop so it sees `stop`.
    let _ = std::os::unix::net::UnixStream::connect(server::socket_path(&store_dir));
    daemon.store.sync()?;
    log::info!("stopped");
    result
}

fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>> {
    m.lock().map_err(|_| Error::Corrupt("daemon state poisoned by a panic".into()))
}

impl Daemon {
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Asks the main thread to shut down, as SIGTERM does.
    pub fn shutdown(&self) {
        crate::sys::raise_term();
    }

    fn flush_loop(&self, close: Receiver<()>) {
        loop {
            match close.recv_timeout(FLUSH_TICK) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => return,
            }
            let vols: Vec<Arc<Volume>> = match lock(&self.mounts) {
                Ok(m) => m.iter().map(|m| m.vol.clone()).collect(),
                Err(_) => return,
            };
            for v in vols {
                if let Err(e) = v.flush_older_than(self.budget.max_age) {
                    log::error!("volume {}: background flush failed: {e}", v.rec.name);
                }
            }
        }
    }

    pub fn handle(&self, req: Request) -> Result<Value> {
        if self.stopping() {
            return Err(Error::NoDaemon("the daemon is shutting down".into()));
        }
        self.reap();
        match req {
            Request::Ping => Ok(json!({"pid": std::process::id()})),
            Request::Create { name, block_size, uid, gid } => {
                let v = self.catalog.create(&self.store, &name, block_size, uid, gid)?;
                Ok(json!({"name": v.name, "block_size": v.block_size}))
            }
            Request::List => Ok(serde_json::to_value(self.list()?)?),
            Request::Mount { name, dir, read_only } => self.mount(&name, &dir, read_only),
            Request::Unmount { dir } => self.unmount(&dir),
            Request::Destroy { name } => {
                let rec = Catalog::get(&self.store, &name)?;
                if let Some(m) = lock(&self.mounts)?.iter().find(|m| m.vol.rec.id == rec.id) {
                    return Err(Error::Conflict(format!(
                        "volume {name:?} is mounted at {}; unmount it first",
                        m.dir.display()
                    )));
                }
                self.catalog.destroy(&self.store, &name)?;
                Ok(Value::Null)
            }
            Request::Rename { old, new } => {
                let rec = Catalog::get(&self.store, &old)?;
                if let Some(m) = lock(&self.mounts)?.iter().find(|m| m.vol.rec.id == rec.id) {
                    return Err(Error::Conflict(format!(
                        "volume {old:?} is mounted at {}; unmount it first",
                        m.dir.display()
                    )));
                }
                self.catalog.rename(&self.store, &old, &new)?;
                Ok(Value::Null)
            }
            Request::Status => Ok(serde_json::to_value(self.status()?)?),
            Request::Fsck => {
                self.flush_mounted()?;
                Ok(serde_json::to_value(fsck::check(&self.store)?)?)
            }
            Request::Compact => {
                self.flush_mounted()?;
                self.store.compact()?;
                Ok(json!({"disk_bytes": self.store.disk_bytes()}))
            }
            Request::Shutdown => Ok(Value::Null),
        }
    }

    fn flush_mounted(&self) -> Result<()> {
        let vols: Vec<Arc<Volume>> = lock(&self.mounts)?.iter().map(|m| m.vol.clone()).collect();
        for v in vols {
            v.flush_all()?;
        }
        Ok(())
    }

    /// Forgets mounts the user unmounted behind our back (`umount DIR`).
    fn reap(&self) {
        if let Ok(mut m) = self.mounts.lock() {
            m.retain(|x| match &x.session {
                Some(s) if s.guard.is_finished() => {
                    log::info!("{} was unmounted", x.dir.display());
                    false
                }
                _ => true,
            });
        }
    }

    fn list(&self) -> Result<Vec<VolumeInfo>> {
        let space = self.store.space();
        let mounts = lock(&self.mounts)?;
        Ok(Catalog::list(&self.store)?
            .into_iter()
            .filter(|v| !v.destroying)
            .map(|v| {
                let s = space.lineages.get(&v.lineage).copied().unwrap_or_default();
                let m = mounts.iter().find(|m| m.vol.rec.id == v.id);
                VolumeInfo {
                    name: v.name,
                    logical: s.logical,
                    referenced: s.referenced,
                    unique: s.unique,
                    block_size: v.block_size,
                    created: v.created,
                    mountpoint: m.map(|m| m.dir.clone()),
                    read_only: m.map(|m| m.vol.read_only).unwrap_or(false),
                }
            })
            .collect())
    }

    fn status(&self) -> Result<StatusInfo> {
        let space = self.store.space();
        let vols = Catalog::list(&self.store)?;
        let logical: u64 = space.lineages.values().map(|s| s.logical).sum();
        let mounts = lock(&self.mounts)?
            .iter()
            .map(|m| MountInfo { volume: m.vol.rec.name.clone(), mountpoint: m.dir.clone(), read_only: m.vol.read_only })
            .collect();
        Ok(StatusInfo {
            store: self.store.dir().to_path_buf(),
            format_version: FORMAT_VERSION,
            pid: std::process::id(),
            volumes: vols.iter().filter(|v| !v.destroying).count(),
            physical: space.physical,
            blocks: space.blocks,
            logical,
            dedup_ratio: if space.physical == 0 { 1.0 } else { logical as f64 / space.physical as f64 },
            disk_bytes: self.store.disk_bytes(),
            dirty_bytes: self.budget.bytes.load(Ordering::Relaxed),
            mounts,
        })
    }

    fn mount(&self, name: &str, dir: &Path, read_only: bool) -> Result<Value> {
        let rec = Catalog::get(&self.store, name)?;
        if !dir.is_absolute() {
            return Err(Error::Invalid(format!("mountpoint {} must be an absolute path", dir.display())));
        }
        let meta = std::fs::metadata(dir)
            .map_err(|_| Error::NotFound(format!("mountpoint {} does not exist", dir.display())))?;
        if !meta.is_dir() {
            return Err(Error::Invalid(format!("mountpoint {} is not a directory", dir.display())));
        }
        let dir = dir.canonicalize()?;
        let mut mounts = lock(&self.mounts)?;
        if let Some(m) = mounts.iter().find(|m| m.dir == dir) {
            return Err(Error::Conflict(format!(
                "{} is already the mountpoint of volume {:?}",
                dir.display(),
                m.vol.rec.name
            )));
        }
        if let Some(m) = mounts.iter().find(|m| m.vol.rec.id == rec.id) {
            return Err(Error::Conflict(format!("volume {name:?} is already mounted at {}", m.dir.display())));
        }
        let vol = Arc::new(Volume::open(self.store.clone(), rec, read_only, self.budget.clone())?);
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName(name.to_string()),
            MountOption::Subtype("clonefs".into()),
            MountOption::DefaultPermissions,
            if read_only { MountOption::RO } else { MountOption::RW },
        ];
        if crate::sys::geteuid() == 0 {
            config.acl = SessionACL::All;
            config.mount_options.push(MountOption::Dev);
            config.mount_options.push(MountOption::Suid);
        }
        config.n_threads = Some(FUSE_THREADS);
        config.clone_fd = true;
        let started = Instant::now();
        let session = Session::new(FuseFs { vol: vol.clone() }, &dir, &config)
            .and_then(|s| s.spawn())
            .map_err(|e| Error::Invalid(format!("cannot mount {name:?} at {}: {e}", dir.display())))?;
        log::info!("mounted {name} at {} in {:?}", dir.display(), started.elapsed());
        mounts.push(Mounted { vol, dir: dir.clone(), session: Some(session) });
        Ok(json!({"mountpoint": dir}))
    }

    fn unmount(&self, dir: &Path) -> Result<Value> {
        let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        let mut mounts = lock(&self.mounts)?;
        let i = mounts
            .iter()
            .position(|m| m.dir == dir)
            .ok_or_else(|| Error::NotFound(format!("{} is not a clonefs mountpoint", dir.display())))?;
        mounts[i].vol.flush_all()?;
        crate::sys::umount(&dir, false).map_err(|e| {
            if e.raw_os_error() == Some(libc::EBUSY) {
                Error::Conflict(format!("{} is busy: close the files and leave the directories open there", dir.display()))
            } else {
                Error::Io(e)
            }
        })?;
        let mut m = mounts.remove(i);
        drop(mounts);
        finish_session(&mut m);
        m.vol.flush_all()?;
        Ok(Value::Null)
    }

    /// Flushes and unmounts every volume (shutdown). Busy mounts are detached.
    fn unmount_all(&self) -> Result<()> {
        let mut all: Vec<Mounted> = std::mem::take(&mut *lock(&self.mounts)?);
        let mut first_err = None;
        for m in &mut all {
            if let Err(e) = m.vol.flush_all() {
                log::error!("volume {}: flush failed: {e}", m.vol.rec.name);
                first_err.get_or_insert(e);
            }
            if crate::sys::umount(&m.dir, false).is_err() {
                log::warn!("{} is busy; detaching it", m.dir.display());
                let _ = crate::sys::umount(&m.dir, true);
                if let Some(s) = m.session.take() {
                    // Its thread ends when the last open file closes; do not wait for that.
                    std::mem::forget(s);
                }
                continue;
            }
            finish_session(m);
            if let Err(e) = m.vol.flush_all() {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Waits (bounded) for a session thread whose mount is gone to finish.
fn finish_session(m: &mut Mounted) {
    if let Some(s) = m.session.take() {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !s.guard.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if s.guard.is_finished() {
            let _ = s.join();
        } else {
            log::warn!("session of {} did not end; leaving it", m.dir.display());
            std::mem::forget(s);
        }
    }
}
