//! The error type of clonefs below the filesystem layer (store, engine, catalog, daemon, CLI).
//! Filesystem operations wrap it in `fs::FsError`; the CLI prints it as one line.

use std::fmt;
use std::io;

#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
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
    /// The disk under the store is full; nothing of the failed change was written.
    NoSpace(String),
    /// The change would take a volume past its `refquota`; nothing of it was written.
    Quota(String),
    /// The caller may not do this (the control socket is its owner's).
    Denied(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The errno the kernel sees for this error.
    pub fn to_errno(&self) -> i32 {
        match self {
            Error::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
            Error::NoSpace(_) => libc::ENOSPC,
            Error::Quota(_) => libc::EDQUOT,
            Error::Denied(_) => libc::EACCES,
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
            Error::Io(e) => write!(f, "{e}"),
            Error::Db(m) => write!(f, "store error: {m}"),
            Error::Corrupt(m) => write!(f, "store is damaged: {m}"),
            Error::NoSpace(m) => write!(f, "no space left on the store's disk: {m}"),
            Error::Invalid(m) | Error::NotFound(m) | Error::Conflict(m) | Error::NoDaemon(m) | Error::Denied(m) | Error::Quota(m) => {
                write!(f, "{m}")
            }
        }
    }
}

impl Error {
    /// The kind an error crosses the control socket with, so the CLI can tell them apart.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Io(_) => "io",
            Error::Db(_) => "store",
            Error::Corrupt(_) => "corrupt",
            Error::Invalid(_) => "invalid",
            Error::NotFound(_) => "not_found",
            Error::Conflict(_) => "conflict",
            Error::NoDaemon(_) => "no_daemon",
            Error::NoSpace(_) => "no_space",
            Error::Quota(_) => "quota",
            Error::Denied(_) => "denied",
        }
    }

    /// An error the daemon reported as `kind` with message `msg` (the message is kept as is).
    pub fn from_kind(kind: &str, msg: String) -> Error {
        match kind {
            "invalid" => Error::Invalid(msg),
            "not_found" => Error::NotFound(msg),
            "conflict" => Error::Conflict(msg),
            "no_daemon" => Error::NoDaemon(msg),
            "no_space" => Error::NoSpace(msg),
            "quota" => Error::Quota(msg),
            "denied" => Error::Denied(msg),
            "corrupt" => Error::Corrupt(msg),
            "store" => Error::Db(msg),
            _ => Error::Io(io::Error::other(msg)),
        }
    }

    /// The message without the prefix `Display` adds for the kind (the CLI adds it again).
    pub fn message(&self) -> String {
        match self {
            Error::Db(m) | Error::Corrupt(m) | Error::NoSpace(m) => m.clone(),
            other => other.to_string(),
        }
    }

    /// The CLI's exit status for this error: 2 for bad input (as for a usage error), 1 else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Invalid(_) => 2,
            _ => 1,
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
