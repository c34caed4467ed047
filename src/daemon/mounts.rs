//! The mount table: mounting a volume or snapshot (its FUSE session on threads of its
//! own), remounting read-only or back, unmounting one or all, and the kernel's knobs
//! for each mount. The table is saved in `STORE/mounts` after each change (but a
//! shutdown's), and the next start mounts it again.

use super::*;
use serde::{Deserialize, Serialize};

/// A mount the next start makes again (`STORE/mounts`): the options it was mounted with,
/// and whether it was remounted read-only since.
#[derive(Serialize, Deserialize)]
struct Wanted {
    target: String,
    dir: PathBuf,
    read_only: bool,
    writeback: bool,
    fast_open: bool,
    #[serde(default)]
    remounted_ro: bool,
    #[serde(default)]
    restrict: Restrict,
    #[serde(default)]
    by: u32,
}

const WANTED_FILE: &str = "mounts";

impl Daemon {
    pub(super) fn mount(&self, name: &str, dir: &Path, read_only: bool, writeback: bool, fast_open: bool, restrict: Restrict, by: u32) -> Result<Value> {
        let (vol, snap) = parse_target(name)?;
        if !dir.is_absolute() {
            return Err(Error::Invalid(format!("mountpoint {} must be an absolute path", dir.display())));
        }
        clear_dead_mount(dir)?;
        let meta = std::fs::metadata(dir).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound(format!("mountpoint {} does not exist", dir.display())),
            // A dead mount of another filesystem, no permission on the path, ...
            _ => Error::Invalid(format!("cannot use mountpoint {}: {e}", dir.display())),
        })?;
        if !meta.is_dir() {
            return Err(Error::Invalid(format!("mountpoint {} is not a directory", dir.display())));
        }
        let dir = dir.canonicalize()?;
        self.settle_unmounted(&dir)?;
        // What is mounted there already (read before the table lock): a volume is never
        // mounted over another filesystem, whose unmount by path would then take the other
        // away too (fuser unmounts the path again when its session ends).
        let below = crate::sys::mount_fstype(&dir)?;
        // Reserve the slot: the view is read, checked and opened under the table lock, so a
        // destroy or rename cannot act in between; mount(2) then runs without the lock.
        let (live, snaps, bs, writeback) = {
            let mut mounts = lock(&self.mounts)?;
            let view = self.catalog.open_view(&self.store, &vol, snap.as_deref(), read_only)?;
            let spec = view.spec();
            self.through_flattening(&name, spec.lineage, &spec.parents)?;
            if let Some(m) = mounts.iter().find(|m| m.dir == dir) {
                // Asked again as it is: done already (a start mounted it again, or a retry).
                let same = m.target == name && !m.busy && m.live.get().read_only == (read_only || spec.read_only);
                if same && m.writeback == (writeback && !spec.read_only) && m.live.get().kernel_opens == fast_open && m.restrict == restrict {
                    return Ok(json!({"mountpoint": dir, "already": true}));
                }
                if m.target == name {
                    return Err(Error::Conflict(format!("{name} is already mounted at {} with other options; unmount it first", dir.display())));
                }
                return Err(Error::Conflict(format!("{} is already the mountpoint of {:?}", dir.display(), m.target)));
            }
            if let Some(m) = mounts.iter().find(|m| m.volume == spec.volume && m.snapshot == snap) {
                return Err(Error::Conflict(format!("{name:?} is already mounted at {}", m.dir.display())));
            }
            if let Some(fs) = below {
                return Err(Error::Conflict(format!(
                    "{} is already a mountpoint ({fs}); clonefs does not mount over another filesystem: unmount it, or use another directory",
                    dir.display()
                )));
            }
            let bs = spec.block_size as u64;
            let writeback = writeback && !spec.read_only;
            let volume = spec.volume;
            let live = Arc::new(Live::new(Volume::open(view, self.budget.clone())?.with_kernel_opens(fast_open)));
            let snaps = match snap {
                None => {
                    let views = SnapshotViews::new(self.store.clone(), self.catalog.clone(), volume);
                    Some(Arc::new(SnapDir::new(views, self.budget.clone())))
                }
                Some(_) => None,
            };
            mounts.push(Mounted {
                live: live.clone(),
                snaps: snaps.clone(),
                volume,
                snapshot: snap.clone(),
                target: name.to_string(),
                dir: dir.clone(),
                writeback,
                session: None,
                busy: true,
                remounted_ro: false,
                restrict,
                by,
            });
            (live, snaps, bs, writeback)
        };
        let ro = live.get().read_only;
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName(name.to_string()),
            MountOption::Subtype("clonefs".into()),
            MountOption::DefaultPermissions,
            if ro { MountOption::RO } else { MountOption::RW },
            // Reads never update atime (the kernel leaves it to the daemon, and a commit per
            // read would cost more than the read): the mount table says so.
            MountOption::NoAtime,
        ];
        if restrict.noexec {
            config.mount_options.push(MountOption::NoExec);
        }
        if crate::sys::geteuid() == 0 {
            // fuser gives the subtype only to fusermount; root mounts directly, so the kernel
            // gets it here and the mount table says `fuse.clonefs` (mount(8) then runs our
            // helper for `mount -o remount`, not mount.fuse).
            config.mount_options.push(MountOption::CUSTOM("subtype=clonefs".into()));
            config.acl = SessionACL::All;
            config.mount_options.push(if restrict.nodev { MountOption::NoDev } else { MountOption::Dev });
            config.mount_options.push(if restrict.nosuid { MountOption::NoSuid } else { MountOption::Suid });
        }
        config.n_threads = Some(FUSE_THREADS);
        config.clone_fd = true;
        let started = Instant::now();
        let idmap = live.get().idmap();
        let fast_open = live.get().kernel_opens;
        let session = Session::new(FuseFs::new(live.clone(), bs, snaps, writeback, idmap), &dir, &config).and_then(|s| {
            // Before the session serves a request (`Live::start_pushes`).
            live.set_notifier(s.notifier());
            if !writeback && !fast_open {
                live.start_pushes(s.notifier()).map_err(std::io::Error::other)?;
            }
            s.spawn()
        });
        let mut mounts = lock(&self.mounts)?;
        let i = mounts
            .iter()
            .position(|m| m.dir == dir && m.busy)
            .ok_or_else(|| Error::Corrupt(format!("mount slot of {} vanished", dir.display())))?;
        let session = match session {
            Ok(s) => s,
            Err(e) => {
                mounts.remove(i);
                return Err(Error::Invalid(format!("cannot mount {name:?} at {}: {e}", dir.display())));
            }
        };
        mounts[i].session = Some(session);
        mounts[i].busy = false;
        drop(mounts);
        tune_bdi(&dir, writeback);
        log::info!("mounted {name} at {} in {:?}", dir.display(), started.elapsed());
        self.save_wanted();
        Ok(json!({"mountpoint": dir}))
    }

    /// A mount the user took away behind our back (`umount DIR`) whose session is still
    /// ending: waits for it (bounded) and forgets it, so a mount there right after works.
    fn settle_unmounted(&self, dir: &Path) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let ending = |mounts: &Vec<Mounted>| mounts.iter().any(|m| m.dir == dir && m.session.as_ref().is_some_and(|s| !s.guard.is_finished()));
        while ending(&*lock(&self.mounts)?) {
            if crate::sys::mount_fstype(dir)?.as_deref() == Some("fuse.clonefs") || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.reap();
        Ok(())
    }

    /// Finds the mount at `dir`, lets `check` refuse, and marks it busy, so the caller can
    /// work without the table lock; the caller clears `busy` when done.
    fn claim(&self, dir: &Path, check: impl FnOnce(&Mounted) -> Result<()>) -> Result<(PathBuf, Arc<Live>)> {
        let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        let mut mounts = lock(&self.mounts)?;
        let m = mounts
            .iter_mut()
            .find(|m| m.dir == dir)
            .ok_or_else(|| Error::NotFound(format!("{} is not a clonefs mountpoint", dir.display())))?;
        if m.busy {
            return Err(Error::Conflict(format!("{} is being mounted or unmounted; try again", dir.display())));
        }
        check(m)?;
        m.busy = true;
        Ok((dir, m.live.clone()))
    }

    pub(super) fn remount(&self, dir: &Path, read_only: bool) -> Result<Value> {
        let mut restrict = Restrict::default();
        let (dir, live) = self.claim(dir, |m| {
            restrict = m.restrict;
            match !read_only && m.live.get().read_only {
                true => Err(Error::Invalid(format!("{} is a read-only view of {:?}; it cannot be made writable", m.dir.display(), m.target))),
                false => Ok(()),
            }
        })?;
        // Write everything back before the kernel turns read-only, as a remount of a disk
        // filesystem does; then remount without the table lock (it waits for the kernel).
        let done = if read_only { live.get().flush_all().map_err(Error::from) } else { Ok(()) }.and_then(|()| {
            crate::sys::remount(&dir, read_only, restrict.mount_flags()).map_err(|e| {
                if e.raw_os_error() == Some(libc::EPERM) {
                    Error::Invalid(format!("remounting {} needs root (CAP_SYS_ADMIN)", dir.display()))
                } else if e.raw_os_error() == Some(libc::EBUSY) {
                    Error::Conflict(format!("{} has files open for writing; close them to remount read-only", dir.display()))
                } else {
                    Error::Io(e)
                }
            })
        });
        let mut mounts = lock(&self.mounts)?;
        if let Some(m) = mounts.iter_mut().find(|m| m.dir == dir && m.busy) {
            m.busy = false;
            if done.is_ok() {
                m.remounted_ro = read_only;
            }
        }
        drop(mounts);
        done?;
        log::info!("remounted {} {}", dir.display(), if read_only { "read-only" } else { "read-write" });
        self.save_wanted();
        Ok(json!({"mountpoint": dir, "read_only": read_only}))
    }

    pub(super) fn unmount(&self, dir: &Path) -> Result<Value> {
        // Flush and umount(2) run without the table lock.
        let (dir, live) = match self.claim(dir, |_| Ok(())) {
            // A mount a killed daemon left behind: nothing to flush, only the kernel's side.
            Err(Error::NotFound(m)) => return if clear_dead_mount(dir)? { Ok(Value::Null) } else { Err(Error::NotFound(m)) },
            r => r?,
        };
        let done = live.get().flush_all().map_err(Error::from).and_then(|()| {
            // umount(2) takes the topmost mount at the path: never another filesystem's.
            match crate::sys::mount_fstype(&dir)? {
                Some(fs) if fs != "fuse.clonefs" => {
                    return Err(Error::Conflict(format!("{} has a {fs} filesystem mounted over the volume; unmount that first", dir.display())))
                }
                _ => {}
            }
            crate::sys::umount(&dir, false).map_err(|e| {
                if e.raw_os_error() == Some(libc::EBUSY) {
                    Error::Conflict(format!("{} is busy: close the files and leave the directories open there", dir.display()))
                } else {
                    Error::Io(e)
                }
            })
        });
        let mut mounts = lock(&self.mounts)?;
        let i = mounts.iter().position(|m| m.dir == dir && m.busy);
        if let Err(e) = done {
            if let Some(i) = i {
                mounts[i].busy = false;
            }
            return Err(e);
        }
        let Some(i) = i else { return Ok(Value::Null) };
        let mut m = mounts.remove(i);
        drop(mounts);
        self.save_wanted();
        finish_session(&mut m);
        // A database volume's mountpoint is the daemon's own: it goes with the mount (else a
        // rename or destroy leaves it behind).
        if self.db.holds(&dir) {
            let _ = std::fs::remove_dir(&dir);
        }
        m.live.get().flush_all()?;
        Ok(Value::Null)
    }

    /// Saves the mount table in `STORE/mounts` for the next start, written whole and renamed
    /// into place. Database volumes' mounts are left out: their `DbConf` brings them back.
    /// A failure is logged: the mounts stay, only the next start may not make them all.
    pub(super) fn save_wanted(&self) {
        let Ok(ready) = self.saving.lock() else { return };
        if !*ready {
            return;
        }
        let wanted: Vec<Wanted> = match lock(&self.mounts) {
            Ok(mounts) => mounts
                .iter()
                .filter(|m| m.session.is_some() && !self.db.holds(&m.dir))
                .map(|m| Wanted {
                    target: m.target.clone(),
                    dir: m.dir.clone(),
                    read_only: m.live.get().read_only,
                    writeback: m.writeback,
                    fast_open: m.live.get().kernel_opens,
                    remounted_ro: m.remounted_ro,
                    restrict: m.restrict,
                    by: m.by,
                })
                .collect(),
            Err(_) => return,
        };
        // Written without the table's lock (a file write and two syncs); `saving` keeps the
        // last table taken the last written.
        let path = self.store.dir().join(WANTED_FILE);
        let tmp = path.with_extension("tmp");
        let r = serde_json::to_vec_pretty(&wanted).map_err(std::io::Error::other).and_then(|b| {
            let mut f = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut f, &b)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(self.store.dir())?.sync_all()
        });
        if let Err(e) = r {
            log::warn!("cannot save the mount table in {} ({e}): the next start may not mount everything again", path.display());
        }
    }

    /// At start: mounts again what `STORE/mounts` names (the mounts when the daemon last
    /// stopped, or was killed). One that cannot be made is logged and forgotten.
    pub(super) fn mount_wanted(&self) {
        let path = self.store.dir().join(WANTED_FILE);
        let wanted: Vec<Wanted> = match std::fs::read(&path) {
            Ok(b) => match serde_json::from_slice(&b) {
                Ok(w) => w,
                Err(e) => {
                    log::error!("{} is damaged ({e}): no volume is mounted again", path.display());
                    Vec::new()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                log::error!("cannot read {} ({e}): no volume is mounted again", path.display());
                Vec::new()
            }
        };
        for w in &wanted {
            let r = self.mount(&w.target, &w.dir, w.read_only, w.writeback, w.fast_open, w.restrict, w.by);
            let r = r.and_then(|_| if w.remounted_ro { self.remount(&w.dir, true).map(|_| ()) } else { Ok(()) });
            match r {
                Ok(()) => log::info!("mounted {} at {} again{}", w.target, w.dir.display(), if w.remounted_ro { ", read-only" } else { "" }),
                Err(e) => log::error!("not mounting {} at {} again as it was: {e}", w.target, w.dir.display()),
            }
        }
        // What failed is forgotten (`clonefs mount` makes it again).
        if let Ok(mut ready) = self.saving.lock() {
            *ready = true;
        }
        self.save_wanted();
    }

    /// Flushes and unmounts every volume (shutdown). Busy mounts are detached.
    pub(super) fn unmount_all(&self) -> Result<()> {
        let mut all: Vec<Mounted> = std::mem::take(&mut *lock(&self.mounts)?);
        let mut first_err = None;
        for m in &mut all {
            if let Err(e) = m.live.get().flush_all() {
                log::error!("{}: flush failed: {e}", m.target);
                first_err.get_or_insert(Error::from(e));
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
            if let Err(e) = m.live.get().flush_all() {
                first_err.get_or_insert(Error::from(e));
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

/// Lets the kernel hold more dirty pages for a writeback mount than the 1% a FUSE connection
/// gets by default, which throttles writers long before the daemon is busy. `strict_limit`
/// stays on, so the mount's dirty pages stay bounded by `max_bytes` (what a snapshot or fsync
/// may have to write back first).
fn tune_bdi(dir: &Path, writeback: bool) {
    use std::os::unix::fs::MetadataExt;
    if crate::sys::geteuid() != 0 {
        // /sys is root's: a user's mounts keep the kernel's knobs (README).
        return;
    }
    let Ok(dev) = std::fs::metadata(dir).map(|m| m.dev()) else { return };
    let (major, minor) = (((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff), (dev & 0xff) | ((dev >> 12) & !0xff));
    let bdi = PathBuf::from(format!("/sys/class/bdi/{major}:{minor}"));
    // FUSE_INIT caps readahead at the kernel's default (128 KiB); the BDI knob raises it to
    // what one request carries (max_write), so a sequential read is 1 MiB requests.
    let mut knobs = vec![("read_ahead_kb", READAHEAD_KB.to_string())];
    if writeback {
        knobs.push(("max_bytes", WRITEBACK_DIRTY_MAX.to_string()));
    }
    for (knob, value) in knobs {
        if let Err(e) = std::fs::write(bdi.join(knob), &value) {
            log::warn!("{}: cannot set {knob} to {value}: {e}", bdi.display());
        }
    }
}

/// Unmounts a clonefs mount at `dir` whose daemon died (kill -9, a crash): every access to
/// it fails with ENOTCONN until it is unmounted, so neither a restarted daemon's database
/// servers nor the user's `clonefs mount` could mount there again. A dead mount of another
/// filesystem is left alone (the mount then fails and says so). Returns whether it unmounted
/// one.
pub(super) fn clear_dead_mount(dir: &Path) -> Result<bool> {
    // statfs always asks the daemon (a stat may answer from the kernel's cached attributes).
    match crate::sys::statvfs(dir) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {}
        _ => return Ok(false),
    }
    // The mount point itself cannot be resolved: its parent can.
    let (Some(parent), Some(leaf)) = (dir.parent(), dir.file_name()) else { return Ok(false) };
    let path = parent.canonicalize()?.join(leaf);
    if crate::sys::mount_fstype(&path)?.as_deref() != Some("fuse.clonefs") {
        return Ok(false);
    }
    log::warn!("{}: a clonefs mount whose daemon died; unmounting it to mount there again", path.display());
    crate::sys::umount(&path, true).map(|()| true).map_err(|e| Error::Invalid(format!("{} is a clonefs mount whose daemon died, and unmounting it failed: {e}", path.display())))
}
