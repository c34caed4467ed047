//! MariaDB (and MySQL's data directories) on a volume. The volume's root holds `data/`
//! (the data directory, the `mysql` user's), `run/` (socket and pid file) and `my.cnf`
//! (written per server: port, bind address, socket, server id). The daemon reaches
//! the server as `root` over the socket (unix_socket authentication); users connect with
//! their own login and password over TCP.

use super::{chown_tree, run_as, Server};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub struct Maria {
    ids: (u32, u32),
}

impl Maria {
    pub fn find() -> Result<Maria> {
        let missing = || Error::Invalid("MariaDB is not installed (scripts/install-deps.sh db installs it)".into());
        if !Path::new("/usr/sbin/mariadbd").exists() {
            return Err(missing());
        }
        Ok(Maria { ids: crate::sys::user_by_name("mysql").ok_or_else(missing)? })
    }

    fn data(root: &Path) -> PathBuf {
        root.join("data")
    }

    fn socket(root: &Path) -> PathBuf {
        root.join("run").join("mysqld.sock")
    }

    fn cnf(root: &Path) -> PathBuf {
        root.join("my.cnf")
    }

    /// `mariadb` as the daemon's root over the socket.
    fn admin(&self, root: &Path, sql: &str) -> Result<String> {
        let out = Command::new("mariadb")
            .arg(format!("--socket={}", Self::socket(root).display()))
            .args(["-uroot", "-N", "-B", "-e", sql])
            .output()
            .map_err(|e| Error::Invalid(format!("cannot run mariadb: {e}")))?;
        if !out.status.success() {
            return Err(Error::Invalid(format!("mariadb failed: {}", String::from_utf8_lossy(&out.stderr).trim())));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Server for Maria {
    fn init(&self, root: &Path, import: Option<&Path>) -> Result<()> {
        let data = Self::data(root);
        std::fs::create_dir_all(&data)?;
        std::fs::create_dir_all(root.join("run"))?;
        match import {
            Some(src) => {
                if !src.join("mysql").is_dir() {
                    return Err(Error::Invalid(format!("{} is not a MariaDB/MySQL data directory (no mysql/)", src.display())));
                }
                super::import_dir(src, &data, root, self.ids)?;
            }
            None => {
                chown_tree(root, self.ids)?;
                let mut c = Command::new("mariadb-install-db");
                c.arg(format!("--datadir={}", data.display()))
                    .args(["--auth-root-authentication-method=socket", "--skip-test-db", "--skip-name-resolve"]);
                run_as(&mut c, self.ids, "mariadb-install-db")?;
            }
        }
        Ok(())
    }

    fn configure(&self, root: &Path, name: &str, port: u16, listen: &str) -> Result<()> {
        std::fs::create_dir_all(root.join("run"))?;
        for f in [root.join("run").join("mysqld.pid"), Self::socket(root)] {
            let _ = std::fs::remove_file(f);
        }
        // A server id of its own, so a clone can replicate from or to its source.
        let id = (xxhash_rust::xxh3::xxh3_64(name.as_bytes()) % 4_000_000_000) as u32 + 1;
        let bind = if listen == "*" { "0.0.0.0" } else { listen };
        std::fs::write(
            Self::cnf(root),
            format!(
                "# written by clonefs\n[mysqld]\ndatadir={}\nsocket={}\npid-file={}/run/mysqld.pid\nport={port}\nbind-address={bind}\nserver-id={id}\nskip-name-resolve\n",
                Self::data(root).display(),
                Self::socket(root).display(),
                root.display(),
            ),
        )?;
        for p in [Self::cnf(root), root.join("run")] {
            std::os::unix::fs::chown(&p, Some(self.ids.0), Some(self.ids.1))?;
        }
        Ok(())
    }

    fn command(&self, root: &Path, log: std::fs::File) -> Result<Command> {
        use std::os::unix::process::CommandExt;
        let mut c = Command::new("/usr/sbin/mariadbd");
        // Without `log-error`, the error log is stderr: the daemon's file.
        c.arg(format!("--defaults-file={}", Self::cnf(root).display()));
        c.uid(self.ids.0).gid(self.ids.1).env("HOME", "/tmp").current_dir("/");
        c.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        Ok(c)
    }

    fn stop_signal(&self) -> i32 {
        libc::SIGTERM
    }

    fn ready(&self, root: &Path, _port: u16) -> bool {
        self.admin(root, "SELECT 1").is_ok()
    }

    fn checkpoint(&self, _root: &Path, _port: u16) -> Result<()> {
        // InnoDB has no checkpoint statement; its redo log is bounded, so recovery is too.
        Ok(())
    }

    fn create_login(&self, root: &Path, _port: u16, user: &str, password: &str) -> Result<()> {
        super::check_login(user)?;
        let pw = password.replace('\\', "\\\\").replace('\'', "\\'");
        self.admin(
            root,
            &format!("CREATE OR REPLACE USER '{user}'@'%' IDENTIFIED BY '{pw}'; GRANT ALL PRIVILEGES ON *.* TO '{user}'@'%' WITH GRANT OPTION;"),
        )
        .map(drop)
    }

    fn lock_login(&self, root: &Path, _port: u16, user: &str) -> Result<()> {
        super::check_login(user)?;
        self.admin(root, &format!("ALTER USER IF EXISTS '{user}'@'%' ACCOUNT LOCK;")).map(drop)
    }

    fn activity(&self, root: &Path, _port: u16) -> Result<(u64, u64)> {
        let out = self.admin(
            root,
            "SELECT (SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE COMMAND NOT IN ('Daemon', 'Binlog Dump') AND ID <> CONNECTION_ID() AND USER <> 'system user'), \
             (SELECT SUM(VARIABLE_VALUE) FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME IN ('INNODB_ROWS_INSERTED', 'INNODB_ROWS_UPDATED', 'INNODB_ROWS_DELETED'))",
        )?;
        let mut it = out.split_whitespace().map(|x| x.parse::<u64>().unwrap_or(0));
        Ok((it.next().unwrap_or(0), it.next().unwrap_or(0)))
    }

    fn integrity(&self, root: &Path, _port: u16) -> Result<String> {
        let out = Command::new("mariadb-check")
            .arg(format!("--socket={}", Self::socket(root).display()))
            .args(["-uroot", "--all-databases", "--extended", "--silent"])
            .output()
            .map_err(|e| Error::Invalid(format!("cannot run mariadb-check: {e}")))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        if !out.status.success() || text.to_lowercase().contains("error") || text.to_lowercase().contains("corrupt") {
            return Err(Error::Corrupt(format!("mariadb-check: {}", text.trim())));
        }
        Ok("all tables OK".into())
    }

    fn as_login(&self, port: u16, user: &str, password: &str, sql: &str) -> Result<String> {
        let out = Command::new("mariadb")
            .args(["-h", "127.0.0.1", "-P", &port.to_string(), "-u", user, "--connect-timeout=5", "-N", "-B", "-e", sql])
            .env("MYSQL_PWD", password)
            .output()
            .map_err(|e| Error::Invalid(format!("cannot run mariadb: {e}")))?;
        if !out.status.success() {
            return Err(Error::Invalid(format!("mariadb failed: {}", String::from_utf8_lossy(&out.stderr).trim())));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn write_marker(&self, port: u16, user: &str, password: &str, marker: &str) -> Result<()> {
        self.as_login(
            port,
            user,
            password,
            &format!("CREATE DATABASE IF NOT EXISTS clonefs; CREATE TABLE IF NOT EXISTS clonefs.verify(marker TEXT); INSERT INTO clonefs.verify VALUES ('{marker}')"),
        )
        .map(drop)
    }

    fn count_marker(&self, root: &Path, _port: u16, marker: &str) -> Result<u64> {
        let t = self.admin(root, "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'clonefs' AND TABLE_NAME = 'verify'")?;
        if t.trim() == "0" {
            return Ok(0);
        }
        Ok(self.admin(root, &format!("SELECT COUNT(*) FROM clonefs.verify WHERE marker = '{marker}'"))?.trim().parse().unwrap_or(0))
    }

    fn dsn(&self, user: &str, password: Option<&str>, port: u16) -> String {
        match password {
            Some(p) => format!("mysql://{user}:{p}@127.0.0.1:{port}/"),
            None => format!("mysql://{user}@127.0.0.1:{port}/"),
        }
    }
}
