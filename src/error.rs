//! The one error type of clonefs. Filesystem operations return it; front ends turn it into an
//! errno (`to_errno`) or a one-line message for the CLI.

use std::fmt;
use std::io;

#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A POSIX error a filesystem operation reports to the kernel as is.
    Errno(i32),
    /// An I/O error outside the store (socket, mountpoint, files).
    Io(io::Error),
    /// RocksDB failed; the message is RocksDB's own.
    Db(String),
    /// The store's on-disk content is not what this version expects.
    Corrupt(String),
    /// Bad input from a user: a name, a size, a path. Nothing was changed.
    Invalid(String),
    /// A named thing (volume, mount) does not exist.
    NotFound(String),
    /// A named thing already exists or is in a state that forbids the request.
    Conflict(String),
    /// No daemon answers on the store's socket.
    NoDaemon(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn errno(code: i32) -> Self {
        Error::Errno(code)
    }

    /// The errno the kernel sees for this error.
    pub fn to_errno(&self) -> i32 {
        match self {
            Error::Errno(e) => *e,
            Error::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
            Error::Db(msg) if msg.contains("No space left") => libc::ENOSPC,
            Error::Db(_) | Error::Corrupt(_) => libc::EIO,
            Error::Invalid(_) => libc::EINVAL,
            Error::NotFound(_) => libc::ENOENT,
            Error::Conflict(_) => libc::EEXIST,
            Error::NoDaemon(_) => libc::ENOTCONN,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Errno(e) => write!(f, "{}", io::Error::from_raw_os_error(*e)),
            Error::Io(e) => write!(f, "{e}"),
            Error::Db(m) => write!(f, "store error: {m}"),
            Error::Corrupt(m) => write!(f, "store is damaged: {m}"),
            Error::Invalid(m) | Error::NotFound(m) | Error::Conflict(m) | Error::NoDaemon(m) => {
                write!(f, "{m}")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Corrupt(format!("bad record: {e}"))
    }
}
