//! SQLite on a volume: the database file `data/db.sqlite`; there is no server, so a clone
//! is its path, and `verify` runs `PRAGMA integrity_check` and the marker test on it.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn path(root: &Path) -> PathBuf {
    root.join("data").join("db.sqlite")
}

/// A new empty database in `root`, or a copy of the database file at `import` (with its
/// `-wal` file if it has one).
pub fn init(root: &Path, import: Option<&Path>) -> Result<()> {
    std::fs::create_dir_all(root.join("data"))?;
    let dst = path(root);
    match import {
        Some(src) => {
            let head = std::fs::read(src).map_err(|e| Error::Invalid(format!("cannot read {}: {e}", src.display())))?;
            if !head.starts_with(b"SQLite format 3\0") {
                return Err(Error::Invalid(format!("{} is not an SQLite database", src.display())));
            }
            std::fs::write(&dst, head)?;
            let wal = PathBuf::from(format!("{}-wal", src.display()));
            if wal.exists() {
                std::fs::copy(&wal, format!("{}-wal", dst.display()))?;
            }
        }
        None => {
            sql(&dst, "CREATE TABLE clonefs_init(x); DROP TABLE clonefs_init;")?;
        }
    }
    Ok(())
}

/// The page size an SQLite database file says in its header (None: not one, unreadable).
pub fn page_size(file: &Path) -> Option<u32> {
    use std::io::Read;
    let mut head = [0u8; 18];
    std::fs::File::open(file).ok()?.read_exact(&mut head).ok()?;
    if !head.starts_with(b"SQLite format 3\0") {
        return None;
    }
    match u16::from_be_bytes([head[16], head[17]]) {
        1 => Some(1 << 16),
        n if n >= 512 && n.is_power_of_two() => Some(n as u32),
        _ => None,
    }
}

pub fn sql(db: &Path, sql: &str) -> Result<String> {
    let out = Command::new("sqlite3")
        .arg("-batch")
        .arg(db)
        .arg(sql)
        .output()
        .map_err(|e| Error::Invalid(format!("cannot run sqlite3 (scripts/install-deps.sh db installs it): {e}")))?;
    if !out.status.success() {
        return Err(Error::Invalid(format!("sqlite3 failed: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
