//! `clonefs db` with the real PostgreSQL and sqlite3 from Debian: clones of a source under
//! pgbench, each with its own port and login, verified, reset, expired when idle (unless
//! protected), brought back after a daemon restart, held to a quota, and destroyed in any
//! order; failures half-way leave nothing behind.

use crate::util::{run_timeout, Daemon};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn psql(dsn: &str, sql: &str) -> Result<String, String> {
    let out = run_timeout(Command::new("psql").args(["-X", "-At", "-v", "ON_ERROR_STOP=1", dsn, "-c", sql]).env("PGCONNECT_TIMEOUT", "5"), 120);
    match out.status.success() {
        true => Ok(String::from_utf8_lossy(&out.stdout).trim().to_string()),
        false => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
    }
}

fn status(d: &Daemon, name: &str) -> Option<String> {
    let v = d.json(&["db", "list", "--json"]);
    v.as_array().unwrap().iter().find(|x| x["name"] == name).map(|x| x["status"].as_str().unwrap_or("").to_string())
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Runs a command as the postgres user against the source's socket.
fn as_postgres(d: &Daemon, args: &[&str]) -> std::process::Output {
    let sock = PathBuf::from(format!("{}.db/src/run", d.store.display()));
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).args(args).arg("-h").arg(&sock).args(["-p", "6150"]);
    run_timeout(&mut c, 300)
}

#[test]
fn postgres_clones_of_a_running_source() {
    let mut d = Daemon::start();
    d.ok(&["db", "init", "src", "--engine", "postgres"]);
    d.ok(&["db", "start", "src", "--port", "6150"]);
    let out = as_postgres(&d, &["pgbench", "-i", "-s", "3", "postgres"]);
    assert!(out.status.success(), "pgbench -i: {}", String::from_utf8_lossy(&out.stderr));
    // Three clones while pgbench writes to the source.
    let sock = format!("{}.db/src/run", d.store.display());
    let mut load = Command::new("runuser")
        .args(["-u", "postgres", "--", "pgbench", "-c", "2", "-T", "20", "-h", &sock, "-p", "6150", "postgres"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let c1 = d.json(&["db", "clone", "src", "qa1", "--port", "6151", "--json"]);
    // qa2's idle limit outlasts the load and the checks below (it expired before `db verify`
    // once, on a loaded machine, at 15 s); its last activity is that verify's marker.
    let c2 = d.json(&["db", "clone", "src", "qa2", "--port", "6152", "--idle", "40s", "--json"]);
    let c3 = d.json(&["db", "clone", "src", "qa3", "--port", "6153", "--idle", "3s", "--protect", "--user", "alice", "--password", "s3cret-pass", "--json"]);
    let _ = load.wait();
    for c in [&c1, &c2, &c3] {
        for k in ["name", "engine", "port", "user", "dsn", "mountpoint"] {
            assert!(!c[k].is_null(), "db clone --json lacks {k}: {c}");
        }
    }
    assert!(c1["password"].as_str().is_some_and(|p| p.len() >= 16), "a generated password is shown: {c1}");
    assert!(c3.get("password").is_none(), "a given password is not echoed: {c3}");
    assert_eq!(c3["dsn"], "postgresql://alice:s3cret-pass@127.0.0.1:6153/postgres");
    let (dsn1, dsn3) = (c1["dsn"].as_str().unwrap().to_string(), c3["dsn"].as_str().unwrap().to_string());
    // Each clone recovered and has the data.
    let n: u64 = psql(&dsn1, "SELECT count(*) FROM pgbench_accounts").unwrap().parse().unwrap();
    assert_eq!(n, 300_000);
    // Writes stay in their clone; logins do not work elsewhere; integrity holds.
    psql(&dsn1, "CREATE TABLE mine AS SELECT 1 AS x").unwrap();
    assert_eq!(psql(&dsn3, "SELECT count(*) FROM pg_tables WHERE tablename = 'mine'").unwrap(), "0");
    assert!(psql(&dsn1.replace(":6151/", ":6153/"), "SELECT 1").is_err(), "qa1's login works on qa3");
    let v = d.json(&["db", "verify", "qa1", "qa2", "qa3", "--json"]);
    assert_eq!(v["ok"], true, "{v:#}");
    assert!(v["checks"].as_array().unwrap().len() >= 12, "{v:#}");
    // The history does not keep the password.
    assert!(!d.ok(&["history"]).contains("s3cret-pass"));

    // Reset: back to the origin, same port and login, the clone's snapshots kept.
    d.ok(&["snapshot", "qa1@mine"]);
    d.ok(&["db", "reset", "qa1"]);
    assert_eq!(psql(&dsn1, "SELECT count(*) FROM pg_tables WHERE tablename = 'mine'").unwrap(), "0");
    assert!(d.ok(&["list", "-t", "snapshot", "-H", "-o", "name"]).contains("qa1@mine"));

    // A clone of a clone: its source's login is in its data, and does not log in there,
    // nor after a reset.
    let c5 = d.json(&["db", "clone", "qa1", "qa5", "--port", "6155", "--json"]);
    let dsn5 = c5["dsn"].as_str().unwrap().to_string();
    assert_eq!(psql(&dsn5, "SELECT count(*) FROM pgbench_branches").unwrap(), "3");
    assert!(psql(&dsn1.replace(":6151/", ":6155/"), "SELECT 1").is_err(), "qa1's login works on its clone qa5");
    d.ok(&["db", "reset", "qa5"]);
    assert!(psql(&dsn1.replace(":6151/", ":6155/"), "SELECT 1").is_err(), "qa1's login works on qa5 after a reset");
    assert_eq!(psql(&dsn5, "SELECT 1").unwrap(), "1");
    let v = d.json(&["db", "verify", "qa1", "qa5", "--json"]);
    assert_eq!(v["ok"], true, "{v:#}");

    // Idle: qa2 goes, qa3 (protected) stays.
    wait_for("qa2 to expire", 120, || status(&d, "qa2").is_none());
    assert_eq!(status(&d, "qa3").as_deref(), Some("running"));
    let list = d.ok(&["db", "list"]);
    assert!(list.contains("protected") && list.contains("PORT"), "{list}");

    // A daemon restart brings the running servers back.
    d.stop();
    d.restart();
    wait_for("qa1 to run again", 120, || status(&d, "qa1").as_deref() == Some("running"));
    wait_for("src to run again", 120, || status(&d, "src").as_deref() == Some("running"));
    assert_eq!(psql(&dsn1, "SELECT count(*) FROM pgbench_branches").unwrap(), "3");

    // A quota: the clone that fills it fails, the others go on.
    let c4 = d.json(&["db", "clone", "src", "qa4", "--port", "6154", "--quota", "120M", "--json"]);
    let dsn4 = c4["dsn"].as_str().unwrap();
    // The write fails (a data file cannot grow, or WAL cannot be written and the server
    // restarts itself); its log names the quota.
    psql(dsn4, "CREATE TABLE fill AS SELECT repeat(md5(g::text), 30) AS x FROM generate_series(1, 2000000) g").unwrap_err();
    let log = std::fs::read_to_string(d.store.join("db-logs/qa4.log")).unwrap();
    assert!(log.contains("Disk quota exceeded"), "{log}");
    assert_eq!(psql(&dsn1, "SELECT 1").unwrap(), "1");
    assert!(as_postgres(&d, &["psql", "-At", "-c", "SELECT count(*) FROM pgbench_tellers", "postgres"]).status.success());

    // Destroy in any order: the source first; its clones keep working.
    d.ok(&["db", "destroy", "src"]);
    assert_eq!(psql(&dsn1, "SELECT count(*) FROM pgbench_tellers").unwrap(), "30");
    for n in ["qa4", "qa1", "qa3"] {
        d.ok(&["db", "destroy", n]);
    }
    // qa5's source is gone; a reset still locks the login it carries.
    d.ok(&["db", "reset", "qa5"]);
    assert!(psql(&dsn1.replace(":6151/", ":6155/"), "SELECT 1").is_err(), "qa1's login works on qa5 after qa1 went and qa5 was reset");
    assert_eq!(psql(&dsn5, "SELECT count(*) FROM pgbench_branches").unwrap(), "3");
    d.ok(&["db", "destroy", "qa5"]);
    assert_eq!(d.json(&["db", "list", "--json"]), serde_json::json!([]));
    assert!(psql(&dsn1, "SELECT 1").is_err(), "a destroyed clone still answers");
    d.fsck_clean();
}

#[test]
fn sqlite_clones_and_failures_that_leave_nothing() {
    let d = Daemon::start();
    let file = d.tmp.path().join("app.db");
    let out = run_timeout(Command::new("sqlite3").arg(&file).arg("CREATE TABLE t(x); INSERT INTO t VALUES (1), (2), (3);"), 60);
    assert!(out.status.success());
    d.ok(&["db", "init", "lite", "--engine", "sqlite", "--import", file.to_str().unwrap()]);
    // A database volume's blocks are its engine's pages: an SQLite file's own page size.
    let block = |v: &str| d.json(&["get", "block_size", v, "--json"])["block_size"].as_str().unwrap().to_string();
    assert_eq!(block("lite"), "4096");
    let big = d.tmp.path().join("big.db");
    assert!(run_timeout(Command::new("sqlite3").arg(&big).arg("PRAGMA page_size=16384; CREATE TABLE t(x);"), 60).status.success());
    d.ok(&["db", "init", "lite16", "--engine", "sqlite", "--import", big.to_str().unwrap()]);
    assert_eq!(block("lite16"), "16384");
    d.ok(&["db", "destroy", "lite16"]);
    for op in ["start", "stop"] {
        assert!(d.fails(&["db", op, "lite"]).contains("it has no server"), "db {op} of an SQLite database");
    }
    // Unmounted and renamed, it is mounted under its new name, and its old mountpoint goes.
    let db_root = std::path::PathBuf::from(format!("{}.db", d.store.display()));
    d.ok(&["db", "init", "lite4", "--engine", "sqlite"]);
    d.ok(&["unmount", db_root.join("lite4").to_str().unwrap()]);
    d.ok(&["rename", "lite4", "lite5"]);
    wait_for("lite5 to be mounted", 30, || crate::util::is_mounted(&db_root.join("lite5")));
    assert!(!db_root.join("lite4").exists(), "a renamed database volume left its old mountpoint");
    d.ok(&["db", "destroy", "lite5"]);
    assert!(!db_root.join("lite5").exists(), "a destroyed database volume left its mountpoint");
    d.ok(&["db", "init", "lite8", "--engine", "sqlite", "--block-size", "8K"]);
    assert_eq!(block("lite8"), "8192", "--block-size is what the volume gets");
    d.ok(&["db", "destroy", "lite8"]);
    let c = d.json(&["db", "clone", "lite", "l1", "--json"]);
    let path = c["path"].as_str().unwrap().to_string();
    let q = |p: &str, sql: &str| String::from_utf8_lossy(&run_timeout(Command::new("sqlite3").arg(p).arg(sql), 60).stdout).trim().to_string();
    assert_eq!(q(&path, "SELECT count(*) FROM t"), "3");
    q(&path, "INSERT INTO t VALUES (4)");
    let src = format!("{}.db/lite/data/db.sqlite", d.store.display());
    assert_eq!(q(&src, "SELECT count(*) FROM t"), "3", "a clone's write shows in its source");
    let v = d.json(&["db", "verify", "l1", "--json"]);
    assert_eq!(v["ok"], true, "{v:#}");

    // Failures half-way leave no volume, snapshot, mount or port.
    let before = d.ok(&["list", "-t", "all", "-H", "-o", "name"]);
    d.ok(&["create", "plain"]);
    let before_plain = d.ok(&["list", "-t", "all", "-H", "-o", "name"]);
    assert!(d.fails(&["db", "clone", "plain", "x1"]).contains("not a database volume"));
    assert!(d.fails(&["db", "init", "m", "--engine", "mongodb"]).contains("Debian 12"));
    assert!(d.fails(&["db", "init", "p", "--engine", "postgres", "--import", "/nonexistent"]).contains("PG_VERSION"));
    assert!(d.fails(&["db", "init", "s", "--engine", "sqlite", "--import", "/etc/hostname"]).contains("not an SQLite database"));
    assert!(d.fails(&["db", "init", "s", "--engine", "sqlite", "--block-size", "3K"]).contains("invalid block size"));
    d.ok(&["db", "init", "pg", "--engine", "postgres"]);
    assert_eq!(block("pg"), "8192", "PostgreSQL's page");
    let busy = std::net::TcpListener::bind("0.0.0.0:6170").unwrap();
    assert!(d.fails(&["db", "start", "pg", "--port", "6170"]).contains("in use"));
    d.ok(&["db", "start", "pg", "--port", "6171"]);
    assert!(d.fails(&["db", "clone", "pg", "pgc", "--port", "6170"]).contains("in use"));
    assert!(d.fails(&["db", "clone", "pg", "pgc", "--port", "6171"]).contains("belongs to"));
    assert!(d.fails(&["db", "clone", "pg", "pgc", "--port", "6172", "--user", "bad;name"]).contains("invalid login"));
    drop(busy);
    d.ok(&["db", "destroy", "pg"]);
    let after = d.ok(&["list", "-t", "all", "-H", "-o", "name"]);
    assert_eq!(after, before_plain, "a failed db command left something");
    assert!(before_plain.contains("plain") && !before.contains("plain"));
    d.fsck_clean();
}

/// A database volume the daemon cannot mount after a restart shows `failed` with the reason
/// in `db list`, said once in the log rather than at every 2 s round, and comes back once
/// the cause is gone.
#[test]
fn a_database_volume_that_cannot_mount_is_failed_once_and_comes_back() {
    let mut d = Daemon::start();
    d.ok(&["db", "init", "lite", "--engine", "sqlite"]);
    d.stop();
    let dir = PathBuf::from(format!("{}.db/lite", d.store.display()));
    std::fs::remove_dir(&dir).unwrap();
    std::fs::write(&dir, b"in the way").unwrap();
    d.restart();
    wait_for("lite failed", 60, || status(&d, "lite").is_some_and(|s| s.starts_with("failed: cannot make the mountpoint")));
    // Three more rounds of the supervisor.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(d.log().matches("cannot mount lite").count(), 1, "said more than once:\n{}", d.log());
    std::fs::remove_file(&dir).unwrap();
    wait_for("lite back", 60, || status(&d, "lite").as_deref() == Some("ready"));
    let out = run_timeout(Command::new("sqlite3").arg(dir.join("data/db.sqlite")).arg("SELECT 1"), 60);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn mariadb(dsn_port: u16, user: &str, pw: &str, sql: &str) -> Result<String, String> {
    let out = run_timeout(
        Command::new("mariadb").args(["-h", "127.0.0.1", "-P", &dsn_port.to_string(), "-u", user, "-N", "-B", "-e", sql]).env("MYSQL_PWD", pw),
        120,
    );
    match out.status.success() {
        true => Ok(String::from_utf8_lossy(&out.stdout).trim().to_string()),
        false => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
    }
}

#[test]
fn mariadb_clones_of_a_running_source() {
    let d = Daemon::start();
    d.ok(&["db", "init", "msrc", "--engine", "mariadb"]);
    d.ok(&["db", "start", "msrc", "--port", "6160"]);
    let sock = format!("{}.db/msrc/run/mysqld.sock", d.store.display());
    let root = |sql: &str| run_timeout(Command::new("mariadb").args([&format!("--socket={sock}"), "-uroot", "-N", "-B", "-e", sql]), 120);
    let out = root("CREATE DATABASE app; USE app; CREATE TABLE t(id INT PRIMARY KEY AUTO_INCREMENT, v TEXT) ENGINE=InnoDB; INSERT INTO t(v) SELECT repeat('x', 100) FROM seq_1_to_20000");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Clones while mariadb-slap writes to the source.
    let mut load = Command::new("mariadb-slap")
        .args([&format!("--socket={sock}"), "-uroot", "--concurrency=2", "--iterations=5", "--auto-generate-sql", "--auto-generate-sql-load-type=write", "--number-of-queries=2000"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let c1 = d.json(&["db", "clone", "msrc", "mc1", "--port", "6161", "--json"]);
    d.json(&["db", "clone", "msrc", "mc2", "--port", "6162", "--user", "bob", "--password", "bobs-password", "--json"]);
    let _ = load.wait();
    assert!(c1["dsn"].as_str().unwrap().starts_with("mysql://mc1:"), "{c1}");
    let pw1 = c1["password"].as_str().unwrap();
    assert_eq!(mariadb(6161, "mc1", pw1, "SELECT COUNT(*) FROM app.t").unwrap(), "20000");
    // CHECK TABLE of every table, markers, logins: all in verify.
    let v = d.json(&["db", "verify", "mc1", "mc2", "--json"]);
    assert_eq!(v["ok"], true, "{v:#}");
    // Writes stay in their clone; a clone's login is refused by the source and the other clone.
    mariadb(6161, "mc1", pw1, "INSERT INTO app.t(v) VALUES ('only in mc1')").unwrap();
    assert_eq!(mariadb(6162, "bob", "bobs-password", "SELECT COUNT(*) FROM app.t WHERE v = 'only in mc1'").unwrap(), "0");
    assert!(mariadb(6160, "bob", "bobs-password", "SELECT 1").is_err());
    assert!(mariadb(6162, "mc1", pw1, "SELECT 1").is_err());
    // The clones have server ids of their own.
    let id = |port: u16, u: &str, p: &str| mariadb(port, u, p, "SELECT @@server_id").unwrap();
    assert_ne!(id(6161, "mc1", pw1), id(6162, "bob", "bobs-password"));
    d.ok(&["db", "reset", "mc1"]);
    assert_eq!(mariadb(6161, "mc1", pw1, "SELECT COUNT(*) FROM app.t WHERE v = 'only in mc1'").unwrap(), "0");
    // A clone of a clone: mc1's login is in its data, locked, also after a reset and after
    // mc1 is gone.
    d.json(&["db", "clone", "mc1", "mc3", "--port", "6163", "--user", "carol", "--password", "carols-password", "--json"]);
    assert_eq!(mariadb(6163, "carol", "carols-password", "SELECT COUNT(*) FROM app.t").unwrap(), "20000");
    assert!(mariadb(6163, "mc1", pw1, "SELECT 1").is_err(), "mc1's login works on its clone mc3");
    d.ok(&["db", "reset", "mc3"]);
    assert!(mariadb(6163, "mc1", pw1, "SELECT 1").is_err(), "mc1's login works on mc3 after a reset");
    for n in ["msrc", "mc2", "mc1"] {
        d.ok(&["db", "destroy", n]);
    }
    d.ok(&["db", "reset", "mc3"]);
    assert!(mariadb(6163, "mc1", pw1, "SELECT 1").is_err(), "mc1's login works on mc3 after mc1 went and mc3 was reset");
    assert_eq!(mariadb(6163, "carol", "carols-password", "SELECT COUNT(*) FROM app.t").unwrap(), "20000");
    d.ok(&["db", "destroy", "mc3"]);
    assert_eq!(d.json(&["db", "list", "--json"]), serde_json::json!([]));
    d.fsck_clean();
}
