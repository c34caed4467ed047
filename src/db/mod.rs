//! Database servers on volumes (`clonefs db`): what an engine needs to make a data
//! directory, run a server on a clone of one with its own port and login, and check it.
//! The daemon (`daemon/db.rs`) owns the processes and the desired state; nothing here
//! knows the daemon. Servers run as the engine's own user, never as root.

pub mod mariadb;
pub mod postgres;
pub mod sqlite;

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::process::Command;

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Postgres,
    Mariadb,
    Sqlite,
}

impl Engine {
    pub fn parse(s: &str) -> Result<Engine> {
        match s {
            "postgres" | "postgresql" | "pg" => Ok(Engine::Postgres),
            "sqlite" | "sqlite3" => Ok(Engine::Sqlite),
            "mariadb" | "mysql" => Ok(Engine::Mariadb),
            "mongodb" | "mongo" => Err(Error::Invalid("MongoDB is not packaged for Debian 12, so clonefs does not run it".into())),
            other => Err(Error::Invalid(format!("unknown engine {other:?}: use postgres, mariadb or sqlite"))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Engine::Postgres => "postgres",
            Engine::Mariadb => "mariadb",
            Engine::Sqlite => "sqlite",
        }
    }

    /// The block size of a volume of its data unless told otherwise: its page, so that a
    /// page write replaces whole blocks and reads none back (PostgreSQL's 8 KiB into 16 KiB
    /// blocks: a third more bytes written under pgbench, half the random writes). An
    /// imported SQLite file brings its own page size (at least 4K, the smallest block).
    pub fn block_size(self, import: Option<&Path>) -> u32 {
        match self {
            Engine::Postgres => 8 << 10,
            Engine::Mariadb => 16 << 10,
            Engine::Sqlite => import.and_then(sqlite::page_size).unwrap_or(4 << 10).max(4 << 10),
        }
    }

    /// Whether it runs a server (with a port and a login).
    pub fn serves(self) -> bool {
        self != Engine::Sqlite
    }

    /// Its server, for an engine that has one.
    pub fn server(self) -> Result<Box<dyn Server>> {
        match self {
            Engine::Postgres => Ok(Box::new(postgres::Pg::find()?)),
            Engine::Mariadb => Ok(Box::new(mariadb::Maria::find()?)),
            Engine::Sqlite => Err(Error::Invalid("SQLite has no server: a clone is its file".into())),
        }
    }
}

/// A database server the daemon runs on a volume mounted at `root`: everything the daemon
/// needs of an engine, so it knows none by name.
pub trait Server {
    /// A new data directory in `root`, or a copy of the stopped one at `import`.
    fn init(&self, root: &Path, import: Option<&Path>) -> Result<()>;
    /// Port, listen address, socket, authentication and identity (`name`) for a server on
    /// `root`; clears what a copy of a running server left (pid file, socket).
    fn configure(&self, root: &Path, name: &str, port: u16, listen: &str) -> Result<()>;
    /// The server in the foreground, as the engine's user, logging to `log` (a file the
    /// daemon keeps in the store, outside the volume: a clone does not inherit its source's
    /// log, and a full quota does not silence it).
    fn command(&self, root: &Path, log: std::fs::File) -> Result<Command>;
    /// The signal that makes it shut down cleanly and quickly.
    fn stop_signal(&self) -> i32;
    fn ready(&self, root: &Path, port: u16) -> bool;
    /// Before a live clone: makes the clone's crash recovery short.
    fn checkpoint(&self, root: &Path, port: u16) -> Result<()>;
    /// Makes (or resets) login `user` with `password`, with every right on this server.
    fn create_login(&self, root: &Path, port: u16, user: &str, password: &str) -> Result<()>;
    /// Keeps login `user` (a source clone's, copied with its data) from logging in to this
    /// server; nothing if it has no such login.
    fn lock_login(&self, root: &Path, port: u16, user: &str) -> Result<()>;
    /// (client connections now, rows written since the server started).
    fn activity(&self, root: &Path, port: u16) -> Result<(u64, u64)>;
    /// The engine's own integrity check of every database.
    fn integrity(&self, root: &Path, port: u16) -> Result<String>;
    /// Runs `sql` over TCP as `user` (how a user of the clone connects).
    fn as_login(&self, port: u16, user: &str, password: &str, sql: &str) -> Result<String>;
    /// Writes `marker` with the login (`verify`), and counts it as the administrator.
    fn write_marker(&self, port: u16, user: &str, password: &str, marker: &str) -> Result<()>;
    fn count_marker(&self, root: &Path, port: u16, marker: &str) -> Result<u64>;
    fn dsn(&self, user: &str, password: Option<&str>, port: u16) -> String;
}

/// What the catalog keeps of a database volume (`VolumeRec::db`): its engine and, for a
/// clone, its port, login and lifetime. Status (running, failed) lives in the daemon.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DbConf {
    pub engine: Engine,
    /// The server should run (after a daemon or host restart too).
    pub running: bool,
    pub port: Option<u16>,
    /// Where the server listens for TCP.
    pub listen: String,
    /// The clone's own login and its password. The store is readable by its owner only,
    /// and it holds the database's files anyway.
    pub user: Option<String>,
    pub password: Option<String>,
    /// `VOL@SNAP` it was cloned from (None for a source).
    pub origin: Option<String>,
    /// The source clone's login its data carries, locked by the clone and by every reset
    /// (kept here: the source may be destroyed before a reset).
    #[serde(default)]
    pub locked_login: Option<String>,
    /// Destroyed after this many seconds without connections or writes, unless protected.
    pub idle: Option<u64>,
    pub protect: bool,
    pub created: i64,
}

/// The default port pool of `db clone` and `db start`.
pub const PORTS: (u16, u16) = (6000, 6099);
/// A clone's own snapshot of its first state, which `db reset` goes back to.
pub const ORIGIN_SNAPSHOT: &str = "clonefs-origin";

/// True if nothing listens on `port` (TCP, any address).
pub fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
}

/// A random password of 20 letters and digits.
pub fn password() -> Result<String> {
    const A: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    Ok(crate::store::random_bytes(20)?.iter().map(|b| A[*b as usize % A.len()] as char).collect())
}

/// A login name: letters, digits and '_', starting with a letter (no quoting needed).
pub fn check_login(u: &str) -> Result<()> {
    let ok = !u.is_empty()
        && u.len() <= 63
        && u.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && u.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    match ok {
        true => Ok(()),
        false => Err(Error::Invalid(format!("invalid login {u:?}: letters, digits and '_', starting with a letter, at most 63"))),
    }
}

/// The login a clone gets when none is given: its name, made a valid login.
pub fn default_login(clone: &str) -> String {
    let mut s: String = clone.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    if !s.starts_with(|c: char| c.is_ascii_alphabetic()) {
        s.insert_str(0, "u_");
    }
    s.truncate(63);
    s
}

/// Parses a duration such as 90s, 30m, 2h, 1d.
pub fn parse_duration(s: &str) -> Result<u64> {
    let bad = || Error::Invalid(format!("invalid duration {s:?}: use e.g. 30m, 2h, 1d"));
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().map_err(|_| bad())?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(bad()),
    };
    Ok(n * mult).and_then(|v: u64| if v == 0 { Err(bad()) } else { Ok(v) })
}

/// Runs `cmd` as (uid, gid) and returns its stdout; a failure carries its stderr.
pub(crate) fn run_as(cmd: &mut Command, ids: (u32, u32), what: &str) -> Result<String> {
    use std::os::unix::process::CommandExt;
    cmd.uid(ids.0).gid(ids.1).env("HOME", "/tmp").current_dir("/");
    let out = cmd.output().map_err(|e| Error::Invalid(format!("{what}: cannot run {:?}: {e}", cmd.get_program())))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last: Vec<&str> = err.lines().rev().take(3).collect();
        return Err(Error::Invalid(format!("{what} failed: {}", last.into_iter().rev().collect::<Vec<_>>().join(" / "))));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Gives `path` and everything under it to (uid, gid).
pub(crate) fn chown_tree(path: &Path, ids: (u32, u32)) -> Result<()> {
    let st = Command::new("chown").arg("-R").arg(format!("{}:{}", ids.0, ids.1)).arg(path).status()?;
    match st.success() {
        true => Ok(()),
        false => Err(Error::Invalid(format!("cannot give {} to uid {}", path.display(), ids.0))),
    }
}

/// Kills what is left of a server on `root` from before (the daemon was killed and its
/// servers lived on): any process whose command line names `root`, with its group. Returns
/// how many.
pub fn kill_strays(root: &Path) -> usize {
    // With the slash: the volume `qa1` must not match `qa10`.
    let needle = format!("{}/", root.display()).into_bytes();
    let me = std::process::id();
    let mut n = 0;
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if pid as u32 == me {
            continue;
        }
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else { continue };
        if cmd.windows(needle.len()).any(|w| w == needle.as_slice()) {
            log::warn!("db: killing stray process {pid} of {}", root.display());
            // SAFETY: kill(2) of a process (and the group it leads) that runs on our volume.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
                libc::kill(pid, libc::SIGKILL);
            }
            n += 1;
        }
    }
    n
}

/// Copies the stopped data directory `src` into `data` and gives everything under `root`
/// to (uid, gid).
pub(crate) fn import_dir(src: &Path, data: &Path, root: &Path, ids: (u32, u32)) -> Result<()> {
    let st = Command::new("cp").arg("-a").arg(format!("{}/.", src.display())).arg(data).status()?;
    if !st.success() {
        return Err(Error::Invalid(format!("cannot copy {}", src.display())));
    }
    chown_tree(root, ids)
}

/// The last `n` lines of a log file.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(n).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" / ")
}

/// One check of `db verify`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Check {
    pub clone: String,
    pub check: String,
    pub ok: bool,
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_durations_and_engines() {
        assert_eq!(default_login("qa-1"), "qa_1");
        assert_eq!(default_login("1st"), "u_1st");
        assert!(check_login("alice_2").is_ok());
        assert!(check_login("2x").is_err() && check_login("a;drop").is_err() && check_login("").is_err());
        assert_eq!(parse_duration("2h").unwrap(), 7200);
        assert_eq!(parse_duration("90").unwrap(), 90);
        assert!(parse_duration("0m").is_err() && parse_duration("5y").is_err() && parse_duration("h").is_err());
        assert!(Engine::parse("mongodb").unwrap_err().to_string().contains("Debian 12"));
        assert_eq!(Engine::parse("postgresql").unwrap(), Engine::Postgres);
        let p = password().unwrap();
        assert_eq!(p.len(), 20);
        assert!(p.chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
