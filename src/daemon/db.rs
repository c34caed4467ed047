//! `clonefs db`: database volumes, their servers and their clones. The catalog keeps each
//! database volume's `DbConf` (engine, port, login, desired state); the daemon runs the
//! servers as children, mounted under `STORE.db/NAME`, and a supervisor thread starts the
//! ones that should run (after a restart too), marks dead ones failed with their log's last
//! lines, and destroys clones idle past their limit.

use super::{lock, Daemon};
use crate::db::{self, Check, DbConf, Engine};
use crate::error::{Error, Result};
use crate::volume::{parse_target, Catalog, Origins, VolumeRec};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a server may take to accept connections.
const READY_WITHIN: Duration = Duration::from_secs(120);
/// How long a fast shutdown may take before the server is killed.
const STOP_WITHIN: Duration = Duration::from_secs(60);
pub(super) const TICK: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
enum Status {
    Starting,
    Running,
    Failed(String),
}

struct Proc {
    child: Option<Child>,
    /// What stops it cleanly (`db::Server::stop_signal`).
    signal: i32,
    status: Status,
    /// Seconds since the epoch of the last connection or write seen.
    last_active: i64,
    writes: u64,
}

impl Proc {
    /// What stands for a volume whose server could not start or whose mount failed: no
    /// child, the reason for `db list`.
    fn failed(why: String) -> Proc {
        Proc { child: None, signal: 0, status: Status::Failed(why), last_active: now(), writes: 0 }
    }
}

/// The daemon's database state: where volumes mount, and the servers it runs by volume id.
pub(super) struct DbState {
    root: PathBuf,
    /// The servers' logs, `NAME.log`, in the store (its owner's only).
    logs: PathBuf,
    servers: Mutex<HashMap<u64, Proc>>,
    /// One db operation at a time (port choice, start, stop, destroy): they are rare and
    /// slow, and held across the servers' start and stop, which is what they order.
    ops: Mutex<()>,
}

impl DbState {
    /// Whether `dir` is where a database volume is mounted.
    pub(super) fn holds(&self, dir: &Path) -> bool {
        dir.starts_with(&self.root)
    }

    pub(super) fn new(store_dir: &Path) -> DbState {
        DbState { root: store_dir.with_extension("db"), logs: store_dir.join("db-logs"), servers: Mutex::new(HashMap::new()), ops: Mutex::new(()) }
    }
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn conf_of(v: &VolumeRec) -> Result<DbConf> {
    v.db.clone().ok_or_else(|| Error::Invalid(format!("{} is not a database volume (make one with `clonefs db init`)", v.name)))
}

/// Asks a server to stop with its engine's signal, then kills its whole process group (it
/// leads one: `start_server`) past `STOP_WITHIN`, so no worker of it keeps files open.
fn stop_child(c: &mut Child, signal: i32) {
    let pid = c.id() as i32;
    // SAFETY: kill(2) on the pid of our own child, which we have not reaped yet.
    unsafe { libc::kill(pid, signal) };
    let deadline = Instant::now() + STOP_WITHIN;
    while c.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            log::warn!("db: server {pid} did not stop within {STOP_WITHIN:?}: killing it");
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: the group the server led; anything of it still alive goes too.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    let _ = c.wait();
}

impl Daemon {
    fn db_guard(&self) -> Result<std::sync::MutexGuard<'_, ()>> {
        lock(&self.db.ops)
    }

    /// Where volume `name`'s head is mounted, mounting it under `STORE.db/` if it is not.
    fn db_mount(&self, v: &VolumeRec) -> Result<PathBuf> {
        if let Some(m) = lock(&self.mounts)?.iter().find(|m| m.volume == v.id && m.snapshot.is_none()) {
            return Ok(m.dir.clone());
        }
        let dir = self.db.root.join(&v.name);
        // Left dead by a daemon that was killed: a restart brings its server back here.
        super::mounts::clear_dead_mount(&dir)?;
        std::fs::create_dir_all(&dir).map_err(|e| Error::Invalid(format!("cannot make the mountpoint {}: {e}", dir.display())))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&self.db.root, std::fs::Permissions::from_mode(0o755))?;
        // A database needs no set-id programs or device files.
        let restrict = crate::control::Restrict { nosuid: true, nodev: true, noexec: false };
        self.mount(&v.name, &dir, false, false, false, restrict, crate::sys::geteuid())?;
        Ok(dir)
    }

    /// Unmounts `v`'s head, waiting a little for the last files of a stopped server to close.
    fn db_unmount(&self, v: &VolumeRec) -> Result<()> {
        let dir = lock(&self.mounts)?.iter().find(|m| m.volume == v.id && m.snapshot.is_none()).map(|m| m.dir.clone());
        let Some(d) = dir else { return Ok(()) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.unmount(&d) {
                Err(Error::Conflict(m)) if Instant::now() < deadline => {
                    log::debug!("db: {m}; trying again");
                    std::thread::sleep(Duration::from_millis(200));
                }
                r => return r.map(drop),
            }
        }
    }

    fn set_conf(&self, name: &str, conf: Option<DbConf>) -> Result<()> {
        self.catalog.set_db(&self.store, name, conf).map(drop)
    }

    /// A free port: `want` if free, else the first of the pool no database volume holds and
    /// nothing listens on.
    fn pick_port(&self, want: Option<u16>, except: Option<u64>) -> Result<u16> {
        let held: Vec<(u16, String)> = Catalog::list(&self.store)?
            .into_iter()
            .filter(|v| Some(v.id) != except)
            .filter_map(|v| Some((v.db.as_ref()?.port?, v.name.clone())))
            .collect();
        if let Some(p) = want {
            if let Some((_, n)) = held.iter().find(|h| h.0 == p) {
                return Err(Error::Conflict(format!("port {p} belongs to database volume {n}")));
            }
            if !db::port_free(p) {
                return Err(Error::Conflict(format!("port {p} is in use by another program")));
            }
            return Ok(p);
        }
        (db::PORTS.0..=db::PORTS.1)
            .find(|p| !held.iter().any(|h| h.0 == *p) && db::port_free(*p))
            .ok_or_else(|| Error::Conflict(format!("no free port left in the pool {}-{}", db::PORTS.0, db::PORTS.1)))
    }

    /// Starts the server of volume `v` (mounted at `dir`) and waits until it accepts
    /// connections; a server that exits first is reported with its log's last lines.
    fn log_path(&self, name: &str) -> PathBuf {
        self.db.logs.join(format!("{name}.log"))
    }

    fn start_server(&self, srv: &dyn db::Server, v: &VolumeRec, dir: &Path, port: u16) -> Result<()> {
        std::fs::create_dir_all(&self.db.logs)?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path(&v.name))?;
        use std::os::unix::process::CommandExt;
        if db::kill_strays(dir) > 0 {
            std::thread::sleep(Duration::from_millis(500));
        }
        let child = srv
            .command(dir, log)?
            .process_group(0)
            .spawn()
            .map_err(|e| Error::Invalid(format!("cannot start the server of {}: {e}", v.name)))?;
        let p = Proc { child: Some(child), signal: srv.stop_signal(), status: Status::Starting, last_active: now(), writes: 0 };
        lock(&self.db.servers)?.insert(v.id, p);
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some(st) = self.reap_server(v.id)? {
                return Err(Error::Invalid(self.mark_failed(v, st)?));
            }
            if srv.ready(dir, port) {
                if let Some(s) = lock(&self.db.servers)?.get_mut(&v.id) {
                    s.status = Status::Running;
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop_server(v.id);
                return Err(Error::Invalid(format!("the server of {} did not accept connections within {READY_WITHIN:?}", v.name)));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The exit status of volume `id`'s server if it has exited (waitpid without waiting).
    fn reap_server(&self, id: u64) -> Result<Option<std::process::ExitStatus>> {
        let mut servers = lock(&self.db.servers)?;
        let Some(s) = servers.get_mut(&id) else { return Err(Error::Conflict("the server went away".into())) };
        let st = s.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
        if st.is_some() {
            s.child = None;
        }
        Ok(st)
    }

    /// Marks `v`'s server failed with its exit and the last lines of its log (read without
    /// the lock); returns the reason.
    fn mark_failed(&self, v: &VolumeRec, st: std::process::ExitStatus) -> Result<String> {
        let why = format!("the server exited ({st}): {}", db::log_tail(&self.log_path(&v.name), 5));
        if let Some(s) = lock(&self.db.servers)?.get_mut(&v.id) {
            s.status = Status::Failed(why.clone());
        }
        Ok(why)
    }

    fn stop_server(&self, id: u64) {
        let s = lock(&self.db.servers).ok().and_then(|mut m| m.remove(&id));
        if let Some(mut s) = s {
            if let Some(c) = s.child.as_mut() {
                stop_child(c, s.signal);
            }
        }
    }

    /// Stops every server, all at once (daemon shutdown: before the unmounts).
    pub(super) fn stop_servers(&self) {
        let all: Vec<Proc> = match lock(&self.db.servers) {
            Ok(mut m) => m.drain().map(|(_, s)| s).collect(),
            Err(_) => return,
        };
        std::thread::scope(|sc| {
            for mut s in all {
                sc.spawn(move || {
                    if let Some(c) = s.child.as_mut() {
                        stop_child(c, s.signal);
                    }
                });
            }
        });
    }

    pub(super) fn db_init(&self, name: &str, engine: &str, import: Option<&Path>, block_size: Option<u32>, creator: Option<u32>) -> Result<Value> {
        let engine = Engine::parse(engine)?;
        let block_size = block_size.unwrap_or_else(|| engine.block_size(import));
        let _g = self.db_guard()?;
        let v = self.catalog.create(&self.store, name, block_size, 0, 0, creator)?;
        let made = (|| -> Result<PathBuf> {
            let dir = self.db_mount(&v)?;
            match engine {
                Engine::Sqlite => db::sqlite::init(&dir, import)?,
                e => e.server()?.init(&dir, import)?,
            }
            let conf = DbConf { engine, running: false, port: None, listen: "127.0.0.1".into(), user: None, password: None, origin: None, locked_login: None, idle: None, protect: false, created: now() };
            self.set_conf(name, Some(conf))?;
            Ok(dir)
        })();
        match made {
            Ok(dir) => Ok(json!({"name": name, "engine": engine.name(), "mountpoint": dir, "block_size": block_size})),
            Err(e) => {
                let _ = self.db_unmount(&v);
                let _ = self.catalog.destroy(&self.store, name);
                Err(e)
            }
        }
    }

    pub(super) fn db_start(&self, name: &str, port: Option<u16>) -> Result<Value> {
        let _g = self.db_guard()?;
        let v = Catalog::get(&self.store, name)?;
        let mut conf = conf_of(&v)?;
        if !conf.engine.serves() {
            return Err(Error::Invalid(format!("{name} is an SQLite database: it has no server (its file is {})", db::sqlite::path(&self.db_mount(&v)?).display())));
        }
        if lock(&self.db.servers)?.get(&v.id).is_some_and(|s| s.child.is_some()) {
            return Err(Error::Conflict(format!("the server of {name} is already running")));
        }
        let port = match (port, conf.port) {
            (Some(p), _) => self.pick_port(Some(p), Some(v.id))?,
            (None, Some(p)) => p,
            (None, None) => self.pick_port(None, Some(v.id))?,
        };
        let dir = self.db_mount(&v)?;
        let srv = conf.engine.server()?;
        srv.configure(&dir, name, port, &conf.listen)?;
        conf.port = Some(port);
        conf.running = true;
        self.set_conf(name, Some(conf))?;
        if let Err(e) = self.start_server(&*srv, &v, &dir, port) {
            if let Some(mut c) = Catalog::get(&self.store, name)?.db {
                c.running = false;
                self.set_conf(name, Some(c))?;
            }
            return Err(e);
        }
        Ok(json!({"name": name, "port": port, "mountpoint": dir}))
    }

    pub(super) fn db_stop(&self, name: &str) -> Result<Value> {
        let _g = self.db_guard()?;
        let v = Catalog::get(&self.store, name)?;
        let mut conf = conf_of(&v)?;
        if !conf.engine.serves() {
            return Err(Error::Invalid(format!("{name} is an SQLite database: it has no server to stop")));
        }
        self.stop_server(v.id);
        conf.running = false;
        self.set_conf(name, Some(conf))?;
        Ok(Value::Null)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn db_clone(
        &self,
        source: &str,
        name: &str,
        port: Option<u16>,
        user: Option<String>,
        password: Option<String>,
        idle: Option<&str>,
        protect: bool,
        quota: Option<&str>,
        listen: Option<String>,
        creator: Option<u32>,
    ) -> Result<Value> {
        crate::volume::check_name(name)?;
        let (src, snap) = parse_target(source)?;
        let _g = self.db_guard()?;
        let sv = Catalog::get(&self.store, &src)?;
        let sconf = conf_of(&sv)?;
        if Catalog::get(&self.store, name).is_ok() {
            return Err(Error::Conflict(format!("volume {name:?} already exists")));
        }
        let engine = sconf.engine;
        let user = user.unwrap_or_else(|| db::default_login(name));
        db::check_login(&user)?;
        let generated = password.is_none();
        let password = match password {
            Some(p) if p.len() < 8 => return Err(Error::Invalid("a password needs at least 8 characters".into())),
            Some(p) => p,
            None => db::password()?,
        };
        let idle = idle.map(db::parse_duration).transpose()?;
        let quota = quota.map(|q| crate::memory::parse_size(q).filter(|n| *n > 0).ok_or_else(|| Error::Invalid(format!("invalid quota {q:?}: use a size such as 10G")))).transpose()?;
        let listen = listen.unwrap_or_else(|| "127.0.0.1".into());
        if listen.parse::<std::net::IpAddr>().is_err() && listen != "*" {
            return Err(Error::Invalid(format!("--listen takes an IP address or *, not {listen:?}")));
        }
        let port = if engine.serves() { Some(self.pick_port(port, None)?) } else { None };
        // A running source is cloned live through a snapshot of its own: crash-consistent,
        // the server recovers on the clone; `db reset --to` and destroy know it by name.
        let (origin, took) = match &snap {
            Some(s) => {
                Catalog::snapshot(&self.store, &sv, s)?;
                (format!("{src}@{s}"), None)
            }
            None => {
                // A checkpoint first: the clone's recovery then replays only the WAL written
                // since, so its start does not grow with what the source wrote before.
                let running = lock(&self.db.servers)?.get(&sv.id).is_some_and(|s| matches!(s.status, Status::Running));
                if let (true, Some(sp), true) = (engine.serves(), sconf.port, running) {
                    let sdir = self.db_mount(&sv)?;
                    if let Err(e) = engine.server()?.checkpoint(&sdir, sp) {
                        log::warn!("db: a checkpoint of {src} before cloning it failed ({e}); the clone recovers from further back");
                    }
                }
                let o = format!("{src}@dbclone-{name}");
                self.snapshot(&o, creator)?;
                (o.clone(), Some(o))
            }
        };
        let started = Instant::now();
        let mut made_volume = false;
        let made = (|| -> Result<(VolumeRec, PathBuf)> {
            self.clone_volume(&origin, name, &[], &[], None, creator)?;
            made_volume = true;
            let v = Catalog::get(&self.store, name)?;
            let dir = self.db_mount(&v)?;
            if let Some(p) = port {
                engine.server()?.configure(&dir, name, p, &listen)?;
            }
            self.snapshot(&format!("{name}@{}", db::ORIGIN_SNAPSHOT), creator)?;
            if let Some(q) = quota {
                self.catalog.set_property(&self.store, name, "quota", &q.to_string())?;
            }
            let locked_login = match port {
                Some(_) => self.source_login(name, &user)?,
                None => None,
            };
            let conf = DbConf {
                engine,
                running: true,
                port,
                listen: listen.clone(),
                user: port.map(|_| user.clone()),
                password: port.map(|_| password.clone()),
                origin: Some(origin.clone()),
                locked_login: locked_login.clone(),
                idle,
                protect,
                created: now(),
            };
            self.set_conf(name, Some(conf))?;
            if let Some(p) = port {
                let srv = engine.server()?;
                self.start_server(&*srv, &v, &dir, p)?;
                srv.create_login(&dir, p, &user, &password)?;
                if let Some(su) = &locked_login {
                    srv.lock_login(&dir, p, su)?;
                }
            }
            Ok((v, dir))
        })();
        let (v, dir) = match made {
            Ok(x) => x,
            Err(e) => {
                if let Ok(v) = Catalog::get(&self.store, name) {
                    self.stop_server(v.id);
                    let _ = self.db_unmount(&v);
                }
                if made_volume {
                    let _ = self.destroy(name);
                }
                if let Some(o) = took {
                    let _ = self.destroy(&o);
                }
                return Err(e);
            }
        };
        let mut out = json!({
            "name": name,
            "engine": engine.name(),
            "origin": origin,
            "mountpoint": dir,
            "millis": started.elapsed().as_millis() as u64,
        });
        match port {
            Some(p) => {
                out["port"] = json!(p);
                out["user"] = json!(user);
                out["dsn"] = json!(engine.server()?.dsn(&user, Some(&password), p));
                if generated {
                    out["password"] = json!(password);
                }
            }
            None => out["path"] = json!(db::sqlite::path(&dir)),
        }
        log::info!("db: cloned {origin} as {name} in {} ms", started.elapsed().as_millis());
        drop(v);
        Ok(out)
    }

    pub(super) fn db_list(&self) -> Result<Value> {
        // UNIQUE and the origin (named as things are called now) of every volume.
        let listed: HashMap<String, (u64, Option<String>)> = self.list(&[])?.into_iter().map(|i| (i.name, (i.unique, i.origin))).collect();
        // (status, last active) by volume, copied out: the rest runs without the lock.
        let servers: HashMap<u64, (Status, i64)> = lock(&self.db.servers)?.iter().map(|(id, s)| (*id, (s.status.clone(), s.last_active))).collect();
        let mut out = Vec::new();
        for v in Catalog::list(&self.store)? {
            let Some(c) = &v.db else { continue };
            let s = servers.get(&v.id);
            let status = match (c.engine.serves(), c.running, s.map(|s| &s.0)) {
                (_, _, Some(Status::Failed(why))) => format!("failed: {why}"),
                (false, _, _) => "ready".to_string(),
                (true, true, Some(Status::Running)) => "running".into(),
                (true, true, _) => "starting".into(),
                (true, false, _) => "stopped".into(),
            };
            let last_active = s.map(|s| s.1);
            let expires = match (c.idle, c.protect, last_active) {
                (Some(i), false, Some(a)) => Some(a + i as i64),
                _ => None,
            };
            let mountpoint = lock(&self.mounts)?.iter().find(|m| m.volume == v.id && m.snapshot.is_none()).map(|m| m.dir.clone());
            out.push(json!({
                "name": v.name,
                "engine": c.engine.name(),
                "origin": listed.get(&v.name).map(|l| l.1.clone()).unwrap_or_else(|| c.origin.clone()),
                "port": c.port,
                "user": c.user,
                "dsn": match (c.port, &c.user, c.engine.server()) { (Some(p), Some(u), Ok(srv)) => Some(srv.dsn(u, None, p)), _ => None },
                "status": status,
                "created": c.created,
                "last_active": last_active,
                "expires": expires,
                "idle": c.idle,
                "protect": c.protect,
                "unique": listed.get(&v.name).map(|l| l.0).unwrap_or(0),
                "mountpoint": mountpoint,
            }));
        }
        Ok(Value::Array(out))
    }

    /// Back to the clone's first state (`--to`: to another snapshot of its source), same
    /// port and login. A reset to its own origin is a rollback: the clone's snapshots stay.
    pub(super) fn db_reset(&self, name: &str, to: Option<&str>) -> Result<Value> {
        let _g = self.db_guard()?;
        let v = Catalog::get(&self.store, name)?;
        let mut conf = conf_of(&v)?;
        let origin = conf.origin.clone().ok_or_else(|| Error::Invalid(format!("{name} is a source, not a clone: it has nothing to reset to")))?;
        self.stop_server(v.id);
        match to {
            None => {
                self.rollback(&format!("{name}@{}", db::ORIGIN_SNAPSHOT))?;
            }
            Some(snap) => {
                let target = match snap.contains('@') {
                    true => snap.to_string(),
                    // The source by its name now (it may have been renamed since the clone).
                    false => match Origins::load(&self.store)?.source(&v) {
                        Some(src) => format!("{src}@{snap}"),
                        None => return Err(Error::NotFound(format!("the source of {name} ({origin}) was destroyed: give --to VOL@SNAP"))),
                    },
                };
                Catalog::snapshot(&self.store, &Catalog::get(&self.store, &parse_target(&target)?.0)?, &parse_target(&target)?.1.unwrap_or_default())?;
                self.db_unmount(&v)?;
                self.destroy(name)?;
                self.clone_volume(&target, name, &[], &[], None, v.creator)?;
                let nv = Catalog::get(&self.store, name)?;
                let dir = self.db_mount(&nv)?;
                if let Some(p) = conf.port {
                    conf.engine.server()?.configure(&dir, name, p, &conf.listen)?;
                }
                self.snapshot(&format!("{name}@{}", db::ORIGIN_SNAPSHOT), v.creator)?;
                conf.origin = Some(target);
                conf.locked_login = match &conf.user {
                    Some(u) => self.source_login(name, u)?,
                    None => None,
                };
                self.set_conf(name, Some(conf.clone()))?;
            }
        }
        let v = Catalog::get(&self.store, name)?;
        let dir = self.db_mount(&v)?;
        if let (Some(p), true) = (conf.port, conf.running) {
            let srv = conf.engine.server()?;
            self.start_server(&*srv, &v, &dir, p)?;
            if let (Some(u), Some(pw)) = (&conf.user, &conf.password) {
                srv.create_login(&dir, p, u, pw)?;
                // A conf from before `locked_login` was kept names none: its source's now.
                let locked = match &conf.locked_login {
                    Some(l) => Some(l.clone()),
                    None => self.source_login(name, u)?,
                };
                if let Some(su) = locked {
                    srv.lock_login(&dir, p, &su)?;
                }
            }
        }
        Ok(json!({"name": name, "port": conf.port}))
    }

    /// The clone login of the volume `name` was cloned from, unless it is `user`: a clone
    /// of a clone carries its source's login in its data (and the logins its source locked,
    /// locked). Only that one: a role of the source's own is not another clone's login.
    fn source_login(&self, name: &str, user: &str) -> Result<Option<String>> {
        let v = Catalog::get(&self.store, name)?;
        let Some(src) = Origins::load(&self.store)?.source(&v) else { return Ok(None) };
        Ok(Catalog::get(&self.store, &src).ok().and_then(|s| s.db?.user).filter(|u| u != user))
    }

    pub(super) fn db_destroy(&self, name: &str) -> Result<Value> {
        let _g = self.db_guard()?;
        let v = Catalog::get(&self.store, name)?;
        let conf = conf_of(&v)?;
        self.db_destroy_locked(&v, &conf)
    }

    fn db_destroy_locked(&self, v: &VolumeRec, conf: &DbConf) -> Result<Value> {
        // The snapshot a live clone was made through goes with it (named as it is now: its
        // source may have been renamed).
        let made_through = conf.origin.as_ref().and_then(|_| Origins::load(&self.store).ok()?.name(v));
        self.stop_server(v.id);
        self.db_unmount(v)?;
        self.destroy(&v.name)?;
        if let Some(o) = &made_through {
            if o.ends_with(&format!("@dbclone-{}", v.name)) {
                if let Err(e) = self.destroy(o) {
                    log::warn!("db: keeping {o}: {e}");
                }
            }
        }
        let _ = std::fs::remove_dir(self.db.root.join(&v.name));
        let _ = std::fs::remove_file(self.log_path(&v.name));
        Ok(json!({"name": v.name}))
    }

    /// The isolation and integrity report of `names` (see `db::Check`).
    pub(super) fn db_verify(&self, names: &[String]) -> Result<Value> {
        let _g = self.db_guard()?;
        let all: Vec<(VolumeRec, DbConf)> = Catalog::list(&self.store)?.into_iter().filter_map(|v| Some((v.clone(), v.db?))).collect();
        let mut checks = Vec::new();
        let mut check = |clone: &str, what: &str, r: Result<String>| {
            let (ok, detail) = match r {
                Ok(d) => (true, d),
                Err(e) => (false, e.message()),
            };
            checks.push(Check { clone: clone.into(), check: what.into(), ok, detail });
        };
        let mount_of = |v: &VolumeRec| self.db_mount(v);
        for name in names {
            let Some((v, c)) = all.iter().find(|(v, _)| &v.name == name) else {
                return Err(Error::NotFound(format!("no database volume named {name:?}")));
            };
            let dir = mount_of(v)?;
            let marker = format!("clonefs-verify-{}-{}", name, db::password()?);
            match c.engine {
                Engine::Sqlite => {
                    let path = db::sqlite::path(&dir);
                    check(name, "integrity_check", db::sqlite::sql(&path, "PRAGMA integrity_check").and_then(|o| match o.trim() {
                        "ok" => Ok("ok".into()),
                        other => Err(Error::Corrupt(other.to_string())),
                    }));
                    check(
                        name,
                        "marker written",
                        db::sqlite::sql(&path, &format!("CREATE TABLE IF NOT EXISTS clonefs_verify(marker TEXT); INSERT INTO clonefs_verify VALUES ('{marker}');"))
                            .map(|_| format!("clonefs_verify: {marker}")),
                    );
                    for (ov, _) in all.iter().filter(|(ov, oc)| ov.id != v.id && oc.engine == Engine::Sqlite) {
                        let p = db::sqlite::path(&mount_of(ov)?);
                        let seen = db::sqlite::sql(&p, &format!("SELECT count(*) FROM clonefs_verify WHERE marker = '{marker}'")).unwrap_or_else(|_| "0".into());
                        check(name, &format!("marker absent from {}", ov.name), match seen.trim() {
                            "0" => Ok("absent".into()),
                            n => Err(Error::Conflict(format!("found {n} times"))),
                        });
                    }
                }
                engine => {
                    let srv = engine.server()?;
                    let (Some(port), Some(user), Some(pw)) = (c.port, c.user.as_deref(), c.password.as_deref()) else {
                        check(name, "is a clone with a login", Err(Error::Invalid("a source has no clone login; verify its clones".into())));
                        continue;
                    };
                    check(name, "integrity", srv.integrity(&dir, port));
                    check(name, "login connects", srv.as_login(port, user, pw, "SELECT current_user").map(|o| o.trim().to_string()));
                    check(name, "marker written with the login", srv.write_marker(port, user, pw, &marker).map(|_| format!("clonefs verify table: {marker}")));
                    let running = lock(&self.db.servers)?.iter().filter(|(_, s)| matches!(s.status, Status::Running)).map(|(id, _)| *id).collect::<Vec<u64>>();
                    for (ov, oc) in all.iter().filter(|(ov, oc)| ov.id != v.id && oc.engine.serves() && running.contains(&ov.id)) {
                        let Some(op) = oc.port else { continue };
                        let od = mount_of(ov)?;
                        if oc.engine == engine {
                            check(name, &format!("marker absent from {}", ov.name), srv.count_marker(&od, op, &marker).and_then(|n| match n {
                                0 => Ok("absent".into()),
                                n => Err(Error::Conflict(format!("found {n} times"))),
                            }));
                        }
                        let other = oc.engine.server()?;
                        check(name, &format!("login refused by {}", ov.name), match other.as_login(op, user, pw, "SELECT 1") {
                            Ok(_) => Err(Error::Conflict(format!("{user} logged in to {} (port {op})", ov.name))),
                            Err(_) => Ok("refused".into()),
                        });
                    }
                }
            }
        }
        let ok = checks.iter().all(|c| c.ok);
        Ok(json!({"ok": ok, "checks": checks}))
    }

    /// One round of supervision (`TICK`): start what should run, mark what died, expire
    /// idle clones. Skipped while a db operation runs.
    pub(super) fn db_tick(&self) -> Result<()> {
        let Ok(_g) = self.db.ops.try_lock() else { return Ok(()) };
        for v in Catalog::list(&self.store)? {
            let Some(c) = v.db.clone() else { continue };
            // An SQLite volume has no server to run: its file is there whenever the daemon is.
            if !c.running && c.engine.serves() {
                continue;
            }
            let state = lock(&self.db.servers)?.get(&v.id).map(|s| (s.child.is_some(), s.status.clone()));
            match (c.engine, c.port, state) {
                (Engine::Sqlite, _, failed) => {
                    // No server: mounted whenever the daemon runs. A failure is said once
                    // (`db list` shows it) and tried again each tick.
                    match (self.db_mount(&v), failed) {
                        (Ok(_), Some(_)) => {
                            lock(&self.db.servers)?.remove(&v.id);
                            log::info!("db: {} is mounted again", v.name);
                        }
                        (Err(e), None) => {
                            log::error!("db: cannot mount {}: {e}", v.name);
                            lock(&self.db.servers)?.insert(v.id, Proc::failed(e.to_string()));
                        }
                        _ => {}
                    }
                }
                (engine, Some(port), None) => {
                    // Not started since the daemon started: start it (a restart brings it back).
                    let r = self.db_mount(&v).and_then(|dir| {
                        let srv = engine.server()?;
                        srv.configure(&dir, &v.name, port, &c.listen)?;
                        self.start_server(&*srv, &v, &dir, port)
                    });
                    match r {
                        Ok(()) => log::info!("db: started the server of {} on port {port}", v.name),
                        Err(e) => {
                            log::error!("db: the server of {} did not start: {e}", v.name);
                            // As a server that exited: not tried again every tick (`db list`
                            // says why; `db start` tries again).
                            lock(&self.db.servers)?.entry(v.id).or_insert_with(|| Proc::failed(e.to_string()));
                        }
                    }
                }
                (engine, Some(port), Some((true, _))) => {
                    let srv = engine.server()?;
                    let dir = self.db_mount(&v)?;
                    if let Some(st) = self.reap_server(v.id)? {
                        let why = self.mark_failed(&v, st)?;
                        log::error!("db: {}: {why}", v.name);
                        continue;
                    }
                    let Some(limit) = c.idle.filter(|_| !c.protect) else { continue };
                    let (conns, writes) = match srv.activity(&dir, port) {
                        Ok(a) => a,
                        Err(e) => {
                            log::warn!("db: cannot read the activity of {}: {e}", v.name);
                            continue;
                        }
                    };
                    let expired = {
                        let mut servers = lock(&self.db.servers)?;
                        let Some(s) = servers.get_mut(&v.id) else { continue };
                        if conns > 0 || writes != s.writes {
                            s.last_active = now();
                            s.writes = writes;
                        }
                        now() - s.last_active > limit as i64
                    };
                    if expired {
                        log::info!("db: {} was idle for {limit} s: destroying it", v.name);
                        if let Err(e) = self.db_destroy_locked(&v, &c) {
                            log::error!("db: cannot destroy idle {}: {e}", v.name);
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}
