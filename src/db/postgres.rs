//! PostgreSQL on a volume. The volume's root holds `data/` (the data directory, the
//! `postgres` user's, 0700) and `run/` (the server's socket). A clone's server
//! gets its port, listen address and socket directory in `postgresql.auto.conf` and a
//! `pg_hba.conf` of its own: the `postgres` user by peer over the socket (the daemon's
//! way in), everyone else by scram-sha-256 password over TCP.

use super::{chown_tree, run_as, Server};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub struct Pg {
    bin: PathBuf,
    ids: (u32, u32),
}

/// Settings clonefs owns in `postgresql.auto.conf`.
const OWNED: &[&str] = &["port", "listen_addresses", "unix_socket_directories", "password_encryption"];

impl Pg {
    /// The newest installed server and the `postgres` user.
    pub fn find() -> Result<Pg> {
        let missing = || Error::Invalid("PostgreSQL is not installed (scripts/install-deps.sh db installs it)".into());
        let mut bins: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .map_err(|_| missing())?
            .filter_map(|e| e.ok())
            .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
            .filter(|(_, b)| b.join("postgres").exists())
            .collect();
        bins.sort();
        let bin = bins.pop().ok_or_else(missing)?.1;
        let ids = crate::sys::user_by_name("postgres").ok_or_else(missing)?;
        Ok(Pg { bin, ids })
    }

    fn cmd(&self, name: &str) -> Command {
        Command::new(self.bin.join(name))
    }

    fn data(root: &Path) -> PathBuf {
        root.join("data")
    }

    fn sockdir(root: &Path) -> PathBuf {
        root.join("run")
    }

    /// Runs `sql` as `postgres` over the socket; returns the rows, unaligned.
    pub fn sql(&self, root: &Path, port: u16, db: &str, sql: &str) -> Result<String> {
        let mut c = Command::new("psql");
        c.arg("-X").arg("-At").arg("-v").arg("ON_ERROR_STOP=1").arg("-h").arg(Self::sockdir(root)).arg("-p").arg(port.to_string());
        c.args(["-U", "postgres", "-d", db, "-c", sql]);
        run_as(&mut c, self.ids, "psql")
    }
}

impl Server for Pg {
    fn init(&self, root: &Path, import: Option<&Path>) -> Result<()> {
        let data = Self::data(root);
        std::fs::create_dir_all(&data)?;
        std::fs::create_dir_all(Self::sockdir(root))?;
        match import {
            Some(src) => {
                if !src.join("PG_VERSION").exists() {
                    return Err(Error::Invalid(format!("{} is not a PostgreSQL data directory (no PG_VERSION)", src.display())));
                }
                if src.join("postmaster.pid").exists() {
                    return Err(Error::Conflict(format!("{} has a postmaster.pid: stop its server first", src.display())));
                }
                super::import_dir(src, &data, root, self.ids)?;
            }
            None => {
                chown_tree(root, self.ids)?;
                let mut c = self.cmd("initdb");
                c.arg("-D").arg(&data).args(["-U", "postgres", "--auth-local=peer", "--auth-host=scram-sha-256", "-k", "-E", "UTF8"]);
                run_as(&mut c, self.ids, "initdb")?;
            }
        }
        set_mode(&data, 0o700)
    }

    fn configure(&self, root: &Path, _name: &str, port: u16, listen: &str) -> Result<()> {
        let data = Self::data(root);
        for f in ["postmaster.pid", "postmaster.opts"] {
            let _ = std::fs::remove_file(data.join(f));
        }
        std::fs::create_dir_all(Self::sockdir(root))?;
        let auto = data.join("postgresql.auto.conf");
        let old = std::fs::read_to_string(&auto).unwrap_or_default();
        let mut text: String = old
            .lines()
            .filter(|l| !OWNED.iter().any(|k| l.trim_start().starts_with(k)))
            .map(|l| format!("{l}\n"))
            .collect();
        text += &format!(
            "port = {port}\nlisten_addresses = '{listen}'\nunix_socket_directories = '{}'\npassword_encryption = 'scram-sha-256'\n",
            Self::sockdir(root).display()
        );
        std::fs::write(&auto, text)?;
        let remote = if listen == "127.0.0.1" || listen == "localhost" { "" } else { "host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n" };
        std::fs::write(
            data.join("pg_hba.conf"),
            format!("# written by clonefs\nlocal all postgres peer\nlocal replication postgres peer\nhost all all 127.0.0.1/32 scram-sha-256\nhost all all ::1/128 scram-sha-256\n{remote}"),
        )?;
        // Only what was written here: the rest already belongs to `postgres`, and a walk
        // of the whole data directory would make a clone's cost grow with its file count.
        for p in [data.join("postgresql.auto.conf"), data.join("pg_hba.conf"), Self::sockdir(root)] {
            std::os::unix::fs::chown(&p, Some(self.ids.0), Some(self.ids.1))?;
        }
        set_mode(&Self::sockdir(root), 0o700)?;
        for f in ["postgresql.auto.conf", "pg_hba.conf"] {
            set_mode(&data.join(f), 0o600)?;
        }
        Ok(())
    }

    fn command(&self, root: &Path, log: std::fs::File) -> Result<Command> {
        use std::os::unix::process::CommandExt;
        let mut c = self.cmd("postgres");
        c.arg("-D").arg(Self::data(root));
        c.uid(self.ids.0).gid(self.ids.1).env("HOME", "/tmp").current_dir("/");
        c.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        Ok(c)
    }

    /// Fast shutdown: clients are disconnected, the server checkpoints and exits.
    fn stop_signal(&self) -> i32 {
        libc::SIGINT
    }

    fn ready(&self, root: &Path, port: u16) -> bool {
        let mut c = self.cmd("pg_isready");
        c.arg("-q").arg("-h").arg(Self::sockdir(root)).arg("-p").arg(port.to_string());
        run_as(&mut c, self.ids, "pg_isready").is_ok()
    }

    fn checkpoint(&self, root: &Path, port: u16) -> Result<()> {
        self.sql(root, port, "postgres", "CHECKPOINT").map(drop)
    }

    /// A superuser of this clone only.
    fn create_login(&self, root: &Path, port: u16, user: &str, password: &str) -> Result<()> {
        super::check_login(user)?;
        let exists = self.sql(root, port, "postgres", &format!("SELECT 1 FROM pg_roles WHERE rolname = '{user}'"))?;
        let verb = if exists.trim() == "1" { "ALTER" } else { "CREATE" };
        let pw = password.replace('\'', "''");
        self.sql(root, port, "postgres", &format!("{verb} ROLE {user} LOGIN SUPERUSER PASSWORD '{pw}'"))?;
        Ok(())
    }

    fn lock_login(&self, root: &Path, port: u16, user: &str) -> Result<()> {
        super::check_login(user)?;
        let exists = self.sql(root, port, "postgres", &format!("SELECT 1 FROM pg_roles WHERE rolname = '{user}'"))?;
        if exists.trim() == "1" {
            self.sql(root, port, "postgres", &format!("ALTER ROLE {user} NOLOGIN"))?;
        }
        Ok(())
    }

    fn activity(&self, root: &Path, port: u16) -> Result<(u64, u64)> {
        let out = self.sql(
            root,
            port,
            "postgres",
            "SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()), \
             (SELECT coalesce(sum(tup_inserted + tup_updated + tup_deleted), 0) FROM pg_stat_database)",
        )?;
        let mut it = out.trim().split('|').map(|x| x.trim().parse::<u64>().unwrap_or(0));
        Ok((it.next().unwrap_or(0), it.next().unwrap_or(0)))
    }

    /// pg_amcheck of every database, heap and indexes.
    fn integrity(&self, root: &Path, port: u16) -> Result<String> {
        let mut c = self.cmd("pg_amcheck");
        c.arg("-h").arg(Self::sockdir(root)).arg("-p").arg(port.to_string());
        c.args(["-U", "postgres", "--all", "--install-missing", "--heapallindexed"]);
        run_as(&mut c, self.ids, "pg_amcheck").map(|_| "no corruption (pg_amcheck --heapallindexed)".into())
    }

    fn as_login(&self, port: u16, user: &str, password: &str, sql: &str) -> Result<String> {
        let mut c = Command::new("psql");
        c.arg("-X").arg("-At").arg("-v").arg("ON_ERROR_STOP=1").args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", user, "-d", "postgres", "-c", sql]);
        c.env("PGPASSWORD", password).env("PGCONNECT_TIMEOUT", "5");
        run_as(&mut c, self.ids, "psql")
    }

    fn write_marker(&self, port: u16, user: &str, password: &str, marker: &str) -> Result<()> {
        self.as_login(port, user, password, &format!("CREATE TABLE IF NOT EXISTS clonefs_verify(marker text); INSERT INTO clonefs_verify VALUES ('{marker}')")).map(drop)
    }

    fn count_marker(&self, root: &Path, port: u16, marker: &str) -> Result<u64> {
        let t = self.sql(root, port, "postgres", "SELECT count(*) FROM pg_tables WHERE tablename = 'clonefs_verify'")?;
        if t.trim() == "0" {
            return Ok(0);
        }
        Ok(self.sql(root, port, "postgres", &format!("SELECT count(*) FROM clonefs_verify WHERE marker = '{marker}'"))?.trim().parse().unwrap_or(0))
    }

    fn dsn(&self, user: &str, password: Option<&str>, port: u16) -> String {
        match password {
            Some(p) => format!("postgresql://{user}:{p}@127.0.0.1:{port}/postgres"),
            None => format!("postgresql://{user}@127.0.0.1:{port}/postgres"),
        }
    }
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    Ok(std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?)
}
